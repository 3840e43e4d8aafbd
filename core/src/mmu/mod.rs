//! Address translation: linear -> guest physical.
//!
//! Owns the guest page walk (2-level with PSE, PAE with NX; accessed and
//! dirty bits; every #PF error-code bit) and shadow paging: contexts cached
//! by guest CR3 (the shadow CR3 names the active one), a direct-mapped
//! lookup by linear page that engines check inline, and write-watched
//! page-table frames that keep the shadow coherent.
//!
//! Who calls what (the contract that keeps the shadow exact):
//! - MOV CR3 (and a task switch that loads CR3): with PAE paging on,
//!   `load_pdptes(mem, new_cr3)?` first (its `Err` is the #GP(0) of SDM
//!   Vol. 3 4.4.1; commit nothing then), then store CR3 and `set_cr3`.
//! - MOV CR0/CR4 that changes PG, WP, PSE, PAE or PGE, and WRMSR EFER that
//!   changes NXE: when PAE paging is on afterwards, `load_pdptes(mem,
//!   cpu.cr3)?` before committing (SDM 4.4.1), then `flush_all`.
//! - INVLPG: `invlpg`. A20 gate changes: `set_a20`. ROM/MMIO/PAM layout
//!   changes: `flush_all`.
//! - Anyone else who write-watches a frame (translated code): `watch_frame`,
//!   so that no shadow entry keeps write access to it.
//!
//! `translate` re-checks the paging controls and CR3 against what the
//! shadow was built with, so a missed call costs at most stale hits until
//! the next miss; `lookup_ram` trusts the contract.
//!
//! Segmentation is not here: callers hand in linear addresses (see
//! `interp::operand` for the segment checks).

pub mod shadow;
pub mod walk;

use crate::cpu::regs::{cr0, cr4, efer};
use crate::cpu::CpuState;
use crate::exception::{pf, Fault};
use crate::mem::{GuestMemory, PAGE_SHIFT};

use shadow::{perm, Shadow, NO_DEP};
use walk::{Rights, WalkCtl, NO_FRAME};

/// Kind of a memory access, in the bit layout of the #PF error code so
/// that a fault's code is `Access` bits plus P/RSVD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access(pub u32);

impl Access {
    /// Supervisor data read.
    pub const READ: Access = Access(0);
    /// Supervisor data write.
    pub const WRITE: Access = Access(pf::W);
    /// Supervisor instruction fetch.
    pub const FETCH: Access = Access(pf::ID);
    /// Access made at CPL 3.
    pub const USER: u32 = pf::U;

    #[inline]
    pub fn is_write(self) -> bool {
        self.0 & pf::W != 0
    }
    #[inline]
    pub fn is_user(self) -> bool {
        self.0 & pf::U != 0
    }
    #[inline]
    pub fn is_fetch(self) -> bool {
        self.0 & pf::ID != 0
    }
    /// This access as made at `cpl` (CPL 3 accesses are user accesses).
    #[inline]
    pub fn at_cpl(self, cpl: u8) -> Access {
        if cpl == 3 {
            Access(self.0 | pf::U)
        } else {
            self
        }
    }
}

/// Counters printed by `--stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmuStats {
    pub shadow_hits: u64,
    pub shadow_misses: u64,
    pub shadow_fills: u64,
    pub cr3_switches: u64,
    pub cr3_switch_hits: u64,
    pub write_watch_faults: u64,
    pub page_faults: u64,
}

/// Paging controls a shadow was built under, packed for a cheap compare:
/// CR0.PG/WP, CR4.PSE/PAE/PGE, EFER.NXE.
fn mode_sig(cpu: &CpuState) -> u64 {
    let c0 = (cpu.cr0 & (cr0::PG | cr0::WP)) as u64;
    let c4 = (cpu.cr4 & (cr4::PSE | cr4::PAE | cr4::PGE)) as u64;
    c0 | c4 << 32 | (cpu.efer & efer::NXE) << 40
}

/// Shadow permission bits for a guest translation with `rights`; writes
/// only when the mapping is dirty (so the first write walks and sets D)
/// and the frame is not write-watched.
fn shadow_perms(r: Rights, wp: bool, write_ok: bool) -> u32 {
    let mut p = perm::SUP_READ;
    if !wp || r.write {
        p |= perm::SUP_WRITE;
    }
    if !r.nx {
        p |= perm::SUP_FETCH;
    }
    if r.user {
        p |= perm::USER_READ;
        if r.write {
            p |= perm::USER_WRITE;
        }
        if !r.nx {
            p |= perm::USER_FETCH;
        }
    }
    if !write_ok {
        p &= !perm::WRITES;
    }
    p
}

pub struct Mmu {
    /// A20 gate: when false, physical bit 20 is forced to 0 (PC platform).
    /// Change it with `set_a20` so that the shadow follows.
    pub a20: bool,
    pub stats: MmuStats,
    shadow: Shadow,
    /// PAE PDPTE registers (SDM Vol. 3 4.4.1), loaded by `load_pdptes`.
    pdptes: [u64; 4],
    /// `mode_sig` and A20 of the CPU state the shadow was built under.
    sig: u64,
    built_a20: bool,
    /// Masked CR3 of the active context.
    cr3_key: u32,
}

impl Default for Mmu {
    fn default() -> Self {
        Self::new()
    }
}

impl Mmu {
    pub fn new() -> Self {
        Mmu {
            a20: true,
            stats: MmuStats::default(),
            shadow: Shadow::new(),
            pdptes: [0; 4],
            sig: 0,
            built_a20: true,
            cr3_key: 0,
        }
    }

    #[inline]
    fn a20_mask(&self, p: u64) -> u64 {
        if self.a20 {
            p
        } else {
            p & !(1 << 20)
        }
    }

    /// The PAE PDPTE registers.
    pub fn pdptes(&self) -> [u64; 4] {
        self.pdptes
    }

    /// Fast path: RAM offset of `lin` if a shadow entry allows `acc`.
    #[inline]
    pub fn lookup_ram(&mut self, lin: u32, acc: Access) -> Option<usize> {
        if let Some(off) = self.shadow.probe(lin, acc) {
            self.stats.shadow_hits += 1;
            return Some(off);
        }
        self.lookup_slow(lin, acc)
    }

    #[cold]
    fn lookup_slow(&mut self, lin: u32, acc: Access) -> Option<usize> {
        let r = self.shadow.probe_global(lin, acc);
        if r.is_some() {
            self.stats.shadow_hits += 1;
        } else {
            self.stats.shadow_misses += 1;
        }
        r
    }

    /// Translate `lin` for `acc`, walking the guest tables when paging is
    /// on (setting accessed/dirty bits) and filling the shadow.
    pub fn translate(
        &mut self,
        cpu: &CpuState,
        mem: &mut GuestMemory,
        lin: u32,
        acc: Access,
    ) -> Result<u64, Fault> {
        if mode_sig(cpu) != self.sig || self.a20 != self.built_a20 {
            self.flush_all(cpu);
        }
        if !cpu.paging() {
            let p = self.a20_mask(lin as u64);
            if mem.frame_is_ram(p) {
                let write_ok = !mem.is_watched(p >> PAGE_SHIFT);
                let perms = if write_ok {
                    perm::ALL
                } else {
                    perm::ALL & !perm::WRITES
                };
                self.shadow.fill(lin, perms, p as u32, [NO_DEP; 2], false);
                self.stats.shadow_fills += 1;
            }
            return Ok(p);
        }
        if self.cr3_key(cpu) != self.cr3_key {
            self.set_cr3(cpu);
        }
        let ctl = WalkCtl::from_regs(cpu.cr0, cpu.cr4, cpu.efer, self.a20);
        let w = match walk::walk(&ctl, &self.pdptes, cpu.cr3, mem, lin, acc) {
            Ok(w) => w,
            Err(code) => {
                self.stats.page_faults += 1;
                return Err(Fault::pf(lin, code));
            }
        };
        if mem.frame_is_ram(w.phys) {
            let mut deps = [NO_DEP; 2];
            for (d, &t) in deps.iter_mut().zip(w.tables.iter()) {
                if t != NO_FRAME {
                    self.watch_frame(mem, t);
                    *d = t as u32;
                }
            }
            let frame = w.phys >> PAGE_SHIFT;
            let write_ok = w.dirty && !mem.is_watched(frame);
            let perms = shadow_perms(w.rights, ctl.wp, write_ok);
            self.shadow
                .fill(lin, perms, w.phys as u32 & !0xFFF, deps, w.global);
            self.stats.shadow_fills += 1;
        }
        Ok(w.phys)
    }

    /// Write-watch `frame` (a page table, or translated code) and take
    /// every shadow write permission to it away.
    pub fn watch_frame(&mut self, mem: &mut GuestMemory, frame: u64) {
        if !mem.is_watched(frame) {
            mem.set_watched(frame, true);
            if mem.is_watched(frame) {
                self.shadow.revoke_write(frame as u32);
            }
        }
    }

    /// Context key of the CPU's CR3: the PDPT address under PAE, the page
    /// directory address otherwise (PWT/PCD do not select a context).
    fn cr3_key(&self, cpu: &CpuState) -> u32 {
        if cpu.cr4 & cr4::PAE != 0 {
            cpu.cr3 & 0xFFFF_FFE0
        } else {
            cpu.cr3 & 0xFFFF_F000
        }
    }

    /// Load the four PAE PDPTE registers from the PDPT at `cr3` (SDM Vol.
    /// 3 4.4.1). `Err(#GP(0))` if a present PDPTE sets a reserved bit; the
    /// registers are unchanged then. Call it for MOV CR3 under PAE paging
    /// before committing CR3, and for MOV CR0/CR4 that leaves PAE paging
    /// on while changing PG, PAE, PGE or PSE.
    pub fn load_pdptes(&mut self, mem: &mut GuestMemory, cr3: u32) -> Result<(), Fault> {
        self.pdptes = walk::read_pdptes(mem, cr3, self.a20)?;
        self.shadow.check_pdptes(&self.pdptes);
        Ok(())
    }

    /// MOV to CR3 (and task switches): select the context for `cpu.cr3`.
    pub fn set_cr3(&mut self, cpu: &CpuState) {
        self.stats.cr3_switches += 1;
        if mode_sig(cpu) != self.sig || self.a20 != self.built_a20 {
            self.flush_all(cpu);
            return;
        }
        self.cr3_key = self.cr3_key(cpu);
        if !cpu.paging() {
            return;
        }
        if self.shadow.select(self.cr3_key, &self.pdptes) {
            self.stats.cr3_switch_hits += 1;
        }
    }

    /// INVLPG: drop the shadow entry of the page, global or not (SDM Vol.
    /// 3 4.10.4.1).
    pub fn invlpg(&mut self, _cpu: &CpuState, lin: u32) {
        self.shadow.invlpg(lin);
    }

    /// CR0.PG/WP or CR4.PSE/PAE/PGE (or EFER.NXE, A20, the ROM/MMIO
    /// layout) changed: drop everything derived from the old state.
    pub fn flush_all(&mut self, cpu: &CpuState) {
        self.sig = mode_sig(cpu);
        self.built_a20 = self.a20;
        self.cr3_key = self.cr3_key(cpu);
        self.shadow.clear_all(self.cr3_key);
        self.shadow.check_pdptes(&self.pdptes);
    }

    /// Open or close the A20 gate (i8042 output port, port 92h).
    pub fn set_a20(&mut self, on: bool) {
        if on != self.a20 {
            self.a20 = on;
            self.built_a20 = on;
            self.shadow.clear_all(self.cr3_key);
        }
    }

    /// A write landed on a write-watched frame: drop the shadow entries
    /// derived from it.
    pub fn on_watched_write(&mut self, _mem: &mut GuestMemory, frame: u64) {
        if let Ok(f) = u32::try_from(frame) {
            self.shadow.drop_frame(f);
        }
    }
}
