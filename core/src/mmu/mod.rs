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
//! - MOV CR0/CR4 that changes PG, WP, PSE, PAE or PGE: when PAE paging is
//!   on afterwards, `load_pdptes(mem, cpu.cr3)?` before committing (SDM
//!   4.4.1), then `flush_all`. WRMSR EFER changing NXE: `flush_all`.
//!   (Without `load_pdptes` the PDPTEs are read at the next walk: right
//!   unless the guest edits its PDPT in between, and no #GP(0).)
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

use shadow::{perm, FrameSet, Shadow, NO_DEP};
use walk::{Rights, WalkCtl};

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
/// Whether a shadow entry filled for `acc` may grant writes to RAM frame
/// `frame`, and the dirty bitmap's part in that: engines store through a
/// writable entry without telling `GuestMemory` (the translator's native
/// stores), so an entry grants writes only to a frame already marked
/// dirty, and a fill for a write marks it. `Vm::take_dirty` takes every
/// write permission away when it clears the bitmap, so the next store to
/// each frame comes back here. Write-watched frames never get one.
fn grant_write(mem: &mut GuestMemory, frame: u64, acc: Access) -> bool {
    if mem.is_watched(frame) {
        return false;
    }
    if acc.is_write() {
        mem.mark_dirty(frame);
        return true;
    }
    mem.is_dirty(frame)
}

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
    /// Masked CR3 the PDPTE registers were loaded from; `None` when they
    /// must be loaded (lazily, by `translate`) before the next PAE walk.
    pdptes_src: Option<u32>,
    /// `mode_sig` and A20 of the CPU state the shadow was built under.
    sig: u64,
    built_a20: bool,
    /// Masked CR3 of the active context.
    cr3_key: u32,
    /// Frames write-watched because a walk read entries from them.
    pt_watched: FrameSet,
    /// Frames write-watched for others through `watch_frame`.
    ext_watched: FrameSet,
    /// Page-table frames written with nothing derived from them since
    /// the last such write: how many times. At `UNWATCH_AFTER` the frame
    /// is taken for data (a freed page table) and no longer watched.
    idle_writes: std::collections::HashMap<u32, u8, shadow::FrameHasherBuilder>,
}

/// Writes to a page-table frame with no walk through it in between after
/// which the MMU stops watching it.
const UNWATCH_AFTER: u8 = 8;

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
            pdptes_src: None,
            sig: 0,
            built_a20: true,
            cr3_key: 0,
            pt_watched: FrameSet::default(),
            ext_watched: FrameSet::default(),
            idle_writes: Default::default(),
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

    /// The active context's lookup table, for engines that probe it
    /// inline: index with `shadow::slot(lin)`, test with `Entry::hit`'s
    /// formula (layout in `shadow`). The table moves on a context switch
    /// (`set_cr3`, `flush_all`), so re-read it after those.
    pub fn active_table(&self) -> &[shadow::Entry; shadow::SLOTS] {
        &self.shadow.cur
    }

    /// Host address of guest RAM offset 0 that shadow entries' `host`
    /// fields are made for.
    pub fn host_base(&self) -> u64 {
        self.shadow.host_base()
    }

    /// Guest RAM is at host address `base` (`Vm::new`; an engine that
    /// finds another RAM mapping calls it again, dropping every entry).
    pub fn set_host_base(&mut self, base: u64) {
        self.shadow.set_host_base(base);
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
                let write_ok = grant_write(mem, p >> PAGE_SHIFT, acc);
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
        if cpu.cr4 & cr4::PAE != 0 && self.pdptes_src != Some(self.cr3_key) {
            self.load_pdptes_lazily(mem);
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
                if let Ok(t) = u32::try_from(t) {
                    self.pt_watched.insert(t);
                    self.watch(mem, t);
                    *d = t;
                }
            }
            let frame = w.phys >> PAGE_SHIFT;
            let write_ok = w.dirty && grant_write(mem, frame, acc);
            let perms = shadow_perms(w.rights, ctl.wp, write_ok);
            self.shadow
                .fill(lin, perms, w.phys as u32 & !0xFFF, deps, w.global);
            self.stats.shadow_fills += 1;
        }
        Ok(w.phys)
    }

    /// Translate `lin` for `acc` the way `translate` would, without any
    /// side effect: no accessed/dirty bits, no shadow fill, no counters
    /// (debuggers, the differential harness). `Err` is the #PF error code.
    pub fn peek(
        &self,
        cpu: &CpuState,
        mem: &mut GuestMemory,
        lin: u32,
        acc: Access,
    ) -> Result<u64, u32> {
        if !cpu.paging() {
            return Ok(self.a20_mask(lin as u64));
        }
        let mut ctl = WalkCtl::from_regs(cpu.cr0, cpu.cr4, cpu.efer, self.a20);
        ctl.set_ad = false;
        let key = self.cr3_key(cpu);
        let pdptes = if cpu.cr4 & cr4::PAE != 0 && self.pdptes_src != Some(key) {
            let mut p = [0u64; 4];
            for (i, e) in p.iter_mut().enumerate() {
                *e = mem.read_u64(self.a20_mask(key as u64 + 8 * i as u64));
            }
            p
        } else {
            self.pdptes
        };
        walk::walk(&ctl, &pdptes, cpu.cr3, mem, lin, acc).map(|w| w.phys)
    }

    /// Write-watch `frame` for another owner (the translator's code
    /// frames) and take every shadow write permission to it away. Watch
    /// through here, not `GuestMemory::set_watched`, so that the shadow
    /// never keeps write access and the MMU never unwatches it.
    pub fn watch_frame(&mut self, mem: &mut GuestMemory, frame: u64) {
        if let Ok(f) = u32::try_from(frame) {
            self.ext_watched.insert(f);
            self.watch(mem, f);
        }
    }

    /// Whether `frame` is watched for the other owner (`watch_frame`).
    pub fn is_ext_watched(&self, frame: u64) -> bool {
        u32::try_from(frame).is_ok_and(|f| self.ext_watched.contains(&f))
    }

    /// Stop watching `frame` for the other owner (the MMU keeps watching
    /// it if it holds page tables).
    pub fn unwatch_frame(&mut self, mem: &mut GuestMemory, frame: u64) {
        if let Ok(f) = u32::try_from(frame) {
            self.ext_watched.remove(&f);
            if !self.pt_watched.contains(&f) {
                mem.set_watched(frame, false);
            }
        }
    }

    fn watch(&mut self, mem: &mut GuestMemory, f: u32) {
        let frame = f as u64;
        if !mem.is_watched(frame) {
            mem.set_watched(frame, true);
            if mem.is_watched(frame) {
                self.shadow.revoke_write(f);
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
        let key = cr3 & 0xFFFF_FFE0;
        self.pdptes_src = Some(key);
        // Loading for another CR3 (before the MOV commits) must not touch
        // the active context; `set_cr3` applies them to the new one.
        if self.shadow.active_key() == Some(key) {
            self.shadow.check_pdptes(&self.pdptes);
        }
        Ok(())
    }

    /// Fallback when CR3 or the paging mode changed without `load_pdptes`:
    /// load the PDPTEs now. A reserved bit cannot raise the #GP(0) of the
    /// load any more; the entry is used without its reserved bits.
    #[cold]
    fn load_pdptes_lazily(&mut self, mem: &mut GuestMemory) {
        let base = self.cr3_key as u64;
        for i in 0..4 {
            let mut a = base + 8 * i as u64;
            if !self.a20 {
                a &= !(1 << 20);
            }
            self.pdptes[i] = mem.read_u64(a);
        }
        self.pdptes_src = Some(self.cr3_key);
        self.shadow.check_pdptes(&self.pdptes);
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
        let pdptes = self.pdptes_for_active();
        if self.shadow.select(self.cr3_key, pdptes.as_ref()) {
            self.stats.cr3_switch_hits += 1;
        }
    }

    /// INVLPG: drop the shadow entry of the page, global or not (SDM Vol.
    /// 3 4.10.4.1).
    pub fn invlpg(&mut self, _cpu: &CpuState, lin: u32) {
        self.shadow.invlpg(lin);
    }

    /// The dirty bitmap was cleared: no shadow entry may grant writes
    /// until the next write fill marks its frame again (`grant_write`).
    pub fn revoke_all_writes(&mut self) {
        self.shadow.revoke_all_writes();
    }

    /// CR0.PG/WP or CR4.PSE/PAE/PGE (or EFER.NXE, A20, the ROM/MMIO
    /// layout) changed: drop everything derived from the old state.
    pub fn flush_all(&mut self, cpu: &CpuState) {
        self.sig = mode_sig(cpu);
        self.built_a20 = self.a20;
        self.cr3_key = self.cr3_key(cpu);
        if !(cpu.paging() && cpu.cr4 & cr4::PAE != 0) {
            // Leaving PAE paging: entering it again loads the PDPTEs.
            self.pdptes_src = None;
        }
        self.shadow.clear_all(self.cr3_key);
        if let Some(p) = self.pdptes_for_active() {
            self.shadow.check_pdptes(&p);
        }
    }

    /// The PDPTE registers if they belong to the active CR3.
    fn pdptes_for_active(&self) -> Option<[u64; 4]> {
        (self.pdptes_src == Some(self.cr3_key)).then_some(self.pdptes)
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
    pub fn on_watched_write(&mut self, mem: &mut GuestMemory, frame: u64) {
        let Ok(f) = u32::try_from(frame) else {
            return;
        };
        if self.shadow.drop_frame(f) {
            self.idle_writes.remove(&f);
        } else if self.pt_watched.contains(&f) {
            let n = self.idle_writes.entry(f).or_insert(0);
            *n += 1;
            if *n >= UNWATCH_AFTER {
                self.idle_writes.remove(&f);
                self.pt_watched.remove(&f);
                if !self.ext_watched.contains(&f) {
                    mem.set_watched(frame, false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::walk::pte;
    use super::*;
    use crate::vm::Vm;

    const PD: u32 = 0x1000;
    const PT: u32 = 0x2000;
    const RW_USER: u32 = (pte::P | pte::RW | pte::US) as u32;

    /// A VM with 32-bit paging on: PD at 0x1000, one PT at 0x2000 for
    /// linear 0x0040_0000..0x0080_0000, where page 0 maps frame 0x5000,
    /// page 1 maps the PT itself (so the guest can edit its PTEs at linear
    /// 0x0040_1000) and page 2 maps the PD.
    fn paged_vm() -> Vm {
        let mut vm = Vm::new(GuestMemory::new(16 << 20).unwrap());
        vm.mem.write_u32(PD as u64 + 4, PT | RW_USER);
        vm.mem.write_u32(PT as u64, 0x5000 | RW_USER);
        vm.mem.write_u32(PT as u64 + 4, PT | RW_USER);
        vm.mem.write_u32(PT as u64 + 8, PD | RW_USER);
        vm.mem.write_u32(0x5000, 0x1111_1111);
        vm.mem.write_u32(0x6000, 0x2222_2222);
        vm.cpu.cr0 |= cr0::PE | cr0::PG | cr0::WP;
        vm.cpu.cr3 = PD;
        vm.mmu.flush_all(&vm.cpu);
        vm
    }

    fn pte_at(vm: &mut Vm, i: u32) -> u32 {
        vm.mem.read_u32(PT as u64 + 4 * i as u64)
    }

    #[test]
    fn hit_after_fill() {
        let mut vm = paged_vm();
        assert_eq!(vm.mmu.lookup_ram(0x40_0010, Access::READ), None);
        assert_eq!(vm.read_lin(0x40_0010, 4, Access::READ), Ok(0));
        assert_eq!(vm.mmu.stats.shadow_fills, 1);
        assert_eq!(vm.mmu.lookup_ram(0x40_0010, Access::READ), Some(0x5010));
        // The user read permission was folded in too.
        assert_eq!(vm.mmu.lookup_ram(0x40_0004, Access(pf::U)), Some(0x5004));
        assert_eq!(vm.read_lin(0x40_0000, 4, Access::READ), Ok(0x1111_1111));
        assert!(vm.mmu.stats.shadow_hits >= 3);
        assert_eq!(vm.mmu.stats.shadow_fills, 1);
        // The walk set A in both entries and watched the two table frames.
        assert_ne!(pte_at(&mut vm, 0) as u64 & pte::A, 0);
        assert!(vm.mem.is_watched(1) && vm.mem.is_watched(2));
    }

    #[test]
    fn pte_write_through_write_lin_invalidates() {
        let mut vm = paged_vm();
        assert_eq!(vm.read_lin(0x40_0000, 4, Access::READ), Ok(0x1111_1111));
        assert!(vm.mmu.lookup_ram(0x40_0000, Access::READ).is_some());
        // The guest remaps page 0 to frame 0x6000 by writing its PTE.
        vm.write_lin(0x40_1000, 4, (0x6000 | RW_USER) as u64, Access::WRITE)
            .unwrap();
        assert_eq!(vm.mmu.stats.write_watch_faults, 1);
        assert_eq!(vm.mmu.lookup_ram(0x40_0000, Access::READ), None);
        assert_eq!(vm.read_lin(0x40_0000, 4, Access::READ), Ok(0x2222_2222));
        // Clearing P makes the page fault.
        vm.write_lin(0x40_1000, 4, 0, Access::WRITE).unwrap();
        assert_eq!(
            vm.read_lin(0x40_0000, 4, Access::READ),
            Err(Fault::pf(0x40_0000, 0))
        );
        // A PDE write (through page 2, the PD) drops the PT's mappings.
        vm.write_lin(0x40_1000, 4, (0x5000 | RW_USER) as u64, Access::WRITE)
            .unwrap();
        assert_eq!(vm.read_lin(0x40_0000, 4, Access::READ), Ok(0x1111_1111));
        vm.write_lin(0x40_2004, 4, 0, Access::WRITE).unwrap();
        assert_eq!(
            vm.read_lin(0x40_0000, 4, Access(pf::U)),
            Err(Fault::pf(0x40_0000, pf::U))
        );
    }

    #[test]
    fn invlpg_drops_the_page() {
        let mut vm = paged_vm();
        vm.read_lin(0x40_0000, 4, Access::READ).unwrap();
        vm.read_lin(0x40_1000, 4, Access::READ).unwrap();
        vm.mmu.invlpg(&vm.cpu, 0x40_0ABC);
        assert_eq!(vm.mmu.lookup_ram(0x40_0000, Access::READ), None);
        assert_eq!(vm.mmu.lookup_ram(0x40_1000, Access::READ), Some(0x2000));
    }

    #[test]
    fn cr3_switch_back_to_cached_context_hits() {
        let mut vm = paged_vm();
        // A second address space: PD at 0x8000 maps the same linear page
        // to frame 0x6000 through PT 0x9000.
        vm.mem.write_u32(0x8004, 0x9000 | RW_USER);
        vm.mem.write_u32(0x9000, 0x6000 | RW_USER);
        assert_eq!(vm.read_lin(0x40_0000, 4, Access::READ), Ok(0x1111_1111));
        vm.cpu.cr3 = 0x8000;
        vm.mmu.set_cr3(&vm.cpu);
        assert_eq!(vm.mmu.lookup_ram(0x40_0000, Access::READ), None);
        assert_eq!(vm.read_lin(0x40_0000, 4, Access::READ), Ok(0x2222_2222));
        assert_eq!(vm.mmu.stats.cr3_switch_hits, 0);
        vm.cpu.cr3 = PD;
        vm.mmu.set_cr3(&vm.cpu);
        assert_eq!(vm.mmu.stats.cr3_switches, 2);
        assert_eq!(vm.mmu.stats.cr3_switch_hits, 1);
        let fills = vm.mmu.stats.shadow_fills;
        assert_eq!(vm.mmu.lookup_ram(0x40_0000, Access::READ), Some(0x5000));
        assert_eq!(vm.read_lin(0x40_0000, 4, Access::READ), Ok(0x1111_1111));
        assert_eq!(vm.mmu.stats.shadow_fills, fills);
        // PWT/PCD in CR3 select the same context.
        vm.cpu.cr3 = PD | 0x18;
        vm.mmu.set_cr3(&vm.cpu);
        assert_eq!(vm.mmu.stats.cr3_switch_hits, 2);
        // A cached context stays coherent while inactive: edit its PTE
        // from the other address space's view of physical memory.
        vm.cpu.cr3 = 0x8000;
        vm.mmu.set_cr3(&vm.cpu);
        vm.write_phys(PT as u64, 4, (0x6000 | RW_USER) as u64);
        vm.cpu.cr3 = PD;
        vm.mmu.set_cr3(&vm.cpu);
        assert_eq!(vm.read_lin(0x40_0000, 4, Access::READ), Ok(0x2222_2222));
    }

    #[test]
    fn global_entry_survives_cr3_switch_not_flush_all() {
        let mut vm = paged_vm();
        vm.cpu.cr4 |= cr4::PGE;
        vm.mmu.flush_all(&vm.cpu);
        vm.mem
            .write_u32(PT as u64, 0x5000 | RW_USER | pte::G as u32);
        // A non-global neighbour for contrast.
        vm.mem.write_u32(PT as u64 + 12, 0x7000 | RW_USER);
        vm.read_lin(0x40_0000, 4, Access::READ).unwrap();
        vm.read_lin(0x40_3000, 4, Access::READ).unwrap();
        // An address space that maps nothing.
        vm.cpu.cr3 = 0x8000;
        vm.mmu.set_cr3(&vm.cpu);
        assert_eq!(vm.mmu.lookup_ram(0x40_0000, Access::READ), Some(0x5000));
        assert_eq!(vm.read_lin(0x40_0000, 4, Access::READ), Ok(0x1111_1111));
        assert_eq!(vm.mmu.lookup_ram(0x40_3000, Access::READ), None);
        assert_eq!(
            vm.read_lin(0x40_3000, 4, Access::READ),
            Err(Fault::pf(0x40_3000, 0))
        );
        // INVLPG drops global pages too.
        vm.mmu.invlpg(&vm.cpu, 0x40_0000);
        assert_eq!(vm.mmu.lookup_ram(0x40_0000, Access::READ), None);
        // Back in the first space, refill, then flush_all (CR4 write).
        vm.cpu.cr3 = PD;
        vm.mmu.set_cr3(&vm.cpu);
        vm.read_lin(0x40_0000, 4, Access::READ).unwrap();
        vm.cpu.cr3 = 0x8000;
        vm.mmu.set_cr3(&vm.cpu);
        assert!(vm.mmu.lookup_ram(0x40_0000, Access::READ).is_some());
        vm.mmu.flush_all(&vm.cpu);
        assert_eq!(vm.mmu.lookup_ram(0x40_0000, Access::READ), None);
        assert_eq!(
            vm.read_lin(0x40_0000, 4, Access::READ),
            Err(Fault::pf(0x40_0000, 0))
        );
    }

    #[test]
    fn dirty_bit_set_on_first_write_after_read_fill() {
        let mut vm = paged_vm();
        vm.read_lin(0x40_0000, 4, Access::READ).unwrap();
        assert_eq!(pte_at(&mut vm, 0) as u64 & pte::D, 0);
        assert_eq!(vm.mmu.lookup_ram(0x40_0000, Access::WRITE), None);
        vm.write_lin(0x40_0000, 4, 0x3333_3333, Access::WRITE)
            .unwrap();
        assert_ne!(pte_at(&mut vm, 0) as u64 & pte::D, 0);
        assert_eq!(vm.mem.read_u32(0x5000), 0x3333_3333);
        // The walk's own A/D update did not count as a guest write.
        assert_eq!(vm.mmu.stats.write_watch_faults, 0);
        assert_eq!(vm.mmu.lookup_ram(0x40_0000, Access::WRITE), Some(0x5000));
        let u = Access(pf::W | pf::U);
        assert_eq!(vm.mmu.lookup_ram(0x40_0008, u), Some(0x5008));
    }

    #[test]
    fn never_write_to_a_watched_frame() {
        let mut vm = paged_vm();
        // The PT's own page: RW, D already set, yet watched.
        vm.mem
            .write_u32(PT as u64 + 4, PT | RW_USER | (pte::D | pte::A) as u32);
        vm.read_lin(0x40_1000, 4, Access::READ).unwrap();
        assert!(vm.mmu.lookup_ram(0x40_1000, Access::READ).is_some());
        assert_eq!(vm.mmu.lookup_ram(0x40_1000, Access::WRITE), None);
        // A frame mapped writable becomes a page table later: the write
        // permission goes away at that moment.
        let d_a = (pte::D | pte::A) as u32;
        vm.write_phys(PT as u64 + 12, 4, (0x7000 | RW_USER | d_a) as u64);
        vm.write_lin(0x40_3000, 4, 0, Access::WRITE).unwrap();
        assert_eq!(vm.mmu.lookup_ram(0x40_3000, Access::WRITE), Some(0x7000));
        vm.write_phys(PD as u64 + 8, 4, (0x7000 | RW_USER) as u64);
        vm.mem.write_u32(0x7000, 0x5000 | RW_USER);
        assert_eq!(vm.read_lin(0x80_0000, 4, Access::READ), Ok(0x1111_1111));
        assert!(vm.mem.is_watched(7));
        assert_eq!(vm.mmu.lookup_ram(0x40_3000, Access::WRITE), None);
        assert!(!vm.mmu.shadow.grants_write(7));
        // Writing the new table through the old mapping invalidates.
        vm.write_lin(0x40_3000, 4, (0x6000 | RW_USER) as u64, Access::WRITE)
            .unwrap();
        assert_eq!(vm.read_lin(0x80_0000, 4, Access::READ), Ok(0x2222_2222));
    }

    #[test]
    fn paging_off_is_identity_and_respects_watch() {
        let mut vm = Vm::new(GuestMemory::new(4 << 20).unwrap());
        vm.write_lin(0x3000, 4, 0xABCD, Access::WRITE).unwrap();
        assert_eq!(vm.mmu.lookup_ram(0x3000, Access::WRITE), Some(0x3000));
        vm.mmu.watch_frame(&mut vm.mem, 3);
        assert_eq!(vm.mmu.lookup_ram(0x3000, Access::WRITE), None);
        assert_eq!(vm.mmu.lookup_ram(0x3000, Access::READ), Some(0x3000));
        vm.write_lin(0x3000, 4, 0x1234, Access::WRITE).unwrap();
        assert_eq!(vm.mmu.stats.write_watch_faults, 1);
        assert_eq!(vm.read_lin(0x3000, 4, Access::READ), Ok(0x1234));
        // A20 off folds bit 20 (the 1 MiB wrap).
        vm.mem.write_u32(0x10, 0x5555);
        vm.mmu.set_a20(false);
        assert_eq!(vm.read_lin(0x10_0010, 4, Access::READ), Ok(0x5555));
        vm.mmu.set_a20(true);
        assert_eq!(vm.read_lin(0x10_0010, 4, Access::READ), Ok(0));
    }

    #[test]
    fn pae_pdpte_reload_and_context_reuse() {
        let mut vm = Vm::new(GuestMemory::new(16 << 20).unwrap());
        let rw = pte::P | pte::RW;
        // PDPT at 0x1000: PDPTE 0 -> PD 0x2000 -> PT 0x3000 -> 0x5000.
        vm.mem.write_u64(0x1000, 0x2000 | pte::P);
        vm.mem.write_u64(0x2000, 0x3000 | rw);
        vm.mem.write_u64(0x3000, 0x5000 | rw);
        vm.mem.write_u32(0x5010, 0x1111_1111);
        vm.cpu.cr0 |= cr0::PE | cr0::PG;
        vm.cpu.cr4 |= cr4::PAE;
        vm.cpu.cr3 = 0x1000;
        vm.mmu.load_pdptes(&mut vm.mem, 0x1000).unwrap();
        vm.mmu.flush_all(&vm.cpu);
        assert_eq!(vm.read_lin(0x10, 4, Access::READ), Ok(0x1111_1111));
        // The PDPT in memory changes; the registers do not until reload
        // (even once the shadow entry is gone).
        vm.mem.write_u64(0x1000, 0x7000 | pte::P);
        vm.mem.write_u64(0x7000, 0x8000 | rw);
        vm.mem.write_u64(0x8000, 0x6000 | rw);
        vm.mem.write_u32(0x6010, 0x2222_2222);
        vm.mmu.invlpg(&vm.cpu, 0);
        assert_eq!(vm.read_lin(0x10, 4, Access::READ), Ok(0x1111_1111));
        // MOV CR3 with the same value reloads them; the context is found
        // by CR3 but its entries built from the old PDPTEs are dropped.
        vm.mmu.load_pdptes(&mut vm.mem, 0x1000).unwrap();
        vm.mmu.set_cr3(&vm.cpu);
        assert_eq!(vm.mmu.stats.cr3_switch_hits, 1);
        assert_eq!(vm.mmu.lookup_ram(0x10, Access::READ), None);
        assert_eq!(vm.read_lin(0x10, 4, Access::READ), Ok(0x2222_2222));
        // A bad PDPTE faults the load and keeps the old registers.
        vm.mem.write_u64(0x1008, 0x2000 | pte::P | pte::RW);
        assert_eq!(vm.mmu.load_pdptes(&mut vm.mem, 0x1000), Err(Fault::gp(0)));
        assert_eq!(vm.mmu.pdptes()[0], 0x7000 | pte::P);
    }

    /// Two PAE address spaces: PDPT 0x1000 maps linear 0 to 0x5000, PDPT
    /// 0x1100 maps it to 0x6000 (PD 0x2000 / 0x7000, PT 0x3000 / 0x8000).
    fn two_pae_spaces() -> Vm {
        let mut vm = Vm::new(GuestMemory::new(16 << 20).unwrap());
        let rw = pte::P | pte::RW;
        vm.mem.write_u64(0x1000, 0x2000 | pte::P);
        vm.mem.write_u64(0x2000, 0x3000 | rw);
        vm.mem.write_u64(0x3000, 0x5000 | rw);
        vm.mem.write_u64(0x1100, 0x7000 | pte::P);
        vm.mem.write_u64(0x7000, 0x8000 | rw);
        vm.mem.write_u64(0x8000, 0x6000 | rw);
        vm.mem.write_u32(0x5000, 0x1111_1111);
        vm.mem.write_u32(0x6000, 0x2222_2222);
        vm
    }

    #[test]
    fn pae_context_switch_with_pdpte_loads_keeps_both() {
        let mut vm = two_pae_spaces();
        vm.cpu.cr0 |= cr0::PE | cr0::PG;
        vm.cpu.cr4 |= cr4::PAE;
        vm.cpu.cr3 = 0x1000;
        vm.mmu.load_pdptes(&mut vm.mem, 0x1000).unwrap();
        vm.mmu.flush_all(&vm.cpu);
        assert_eq!(vm.read_lin(0, 4, Access::READ), Ok(0x1111_1111));
        for (cr3, val) in [(0x1100, 0x2222_2222), (0x1000, 0x1111_1111)] {
            // MOV CR3 in the documented order: load, commit, select.
            vm.mmu.load_pdptes(&mut vm.mem, cr3).unwrap();
            vm.cpu.cr3 = cr3;
            vm.mmu.set_cr3(&vm.cpu);
            assert_eq!(vm.read_lin(0, 4, Access::READ), Ok(val));
        }
        // Back in 0x1000: its entry survived the excursion.
        assert_eq!(vm.mmu.stats.cr3_switch_hits, 1);
        assert_eq!(vm.mmu.stats.shadow_fills, 2);
    }

    #[test]
    fn pae_without_load_pdptes_loads_them_lazily() {
        // The order a MOV CR0 handler that only calls flush_all/set_cr3
        // produces: PAE, CR3, then PG.
        let mut vm = two_pae_spaces();
        vm.cpu.cr4 |= cr4::PAE;
        vm.cpu.cr3 = 0x1000;
        vm.cpu.cr0 |= cr0::PE | cr0::PG;
        vm.mmu.flush_all(&vm.cpu);
        vm.mmu.set_cr3(&vm.cpu);
        assert_eq!(vm.read_lin(0, 4, Access::READ), Ok(0x1111_1111));
        vm.cpu.cr3 = 0x1100;
        vm.mmu.set_cr3(&vm.cpu);
        assert_eq!(vm.read_lin(0, 4, Access::READ), Ok(0x2222_2222));
        vm.cpu.cr3 = 0x1000;
        vm.mmu.set_cr3(&vm.cpu);
        assert_eq!(vm.read_lin(0, 4, Access::READ), Ok(0x1111_1111));
    }

    #[test]
    fn freed_page_table_is_unwatched_after_idle_writes() {
        let mut vm = paged_vm();
        // PDE 2 -> PT2 at 0x9000 (page 0x80_0000 -> 0x5000); PT page 3
        // maps PT2 at linear 0x40_3000 so the guest can reuse it as data.
        vm.mem.write_u32(PD as u64 + 8, 0x9000 | RW_USER);
        vm.mem.write_u32(0x9000, 0x5000 | RW_USER);
        vm.mem.write_u32(PT as u64 + 12, 0x9000 | RW_USER);
        assert_eq!(vm.read_lin(0x80_0000, 4, Access::READ), Ok(0x1111_1111));
        assert!(vm.mem.is_watched(9));
        // The guest frees PT2 (clears PDE 2) and fills the page with data.
        vm.write_lin(0x40_2008, 4, 0, Access::WRITE).unwrap();
        for i in 0..=UNWATCH_AFTER as u32 {
            vm.write_lin(0x40_3800 + 4 * i, 4, 0xAA, Access::WRITE)
                .unwrap();
        }
        assert!(!vm.mem.is_watched(9));
        vm.write_lin(0x40_3100, 4, 0xBB, Access::WRITE).unwrap();
        assert_eq!(vm.mmu.lookup_ram(0x40_3100, Access::WRITE), Some(0x9100));
        // Walking through it again watches it again.
        vm.write_lin(0x40_2008, 4, (0x9000 | RW_USER) as u64, Access::WRITE)
            .unwrap();
        assert_eq!(vm.read_lin(0x80_0000, 4, Access::READ), Ok(0x1111_1111));
        assert!(vm.mem.is_watched(9));
        assert_eq!(vm.mmu.lookup_ram(0x40_3100, Access::WRITE), None);
    }

    #[test]
    fn frames_watched_for_others_stay_watched() {
        let mut vm = paged_vm();
        vm.read_lin(0x40_0000, 4, Access::READ).unwrap();
        vm.mmu.watch_frame(&mut vm.mem, 2);
        // Drop every mapping derived from the PT, then write it as data.
        // (The PD is reached through the PT, so restore it physically.)
        vm.write_lin(0x40_2004, 4, 0, Access::WRITE).unwrap();
        vm.write_phys(PD as u64 + 4, 4, (PT | RW_USER) as u64);
        for i in 0..2 * UNWATCH_AFTER as u32 {
            vm.write_phys(PT as u64 + 0x800 + 4 * i as u64, 4, 0);
        }
        assert!(vm.mem.is_watched(2));
        vm.mmu.unwatch_frame(&mut vm.mem, 2);
        assert!(!vm.mem.is_watched(2));
        // A frame the MMU still uses as a page table stays watched.
        vm.read_lin(0x40_0000, 4, Access::READ).unwrap();
        vm.mmu.watch_frame(&mut vm.mem, 2);
        vm.mmu.unwatch_frame(&mut vm.mem, 2);
        assert!(vm.mem.is_watched(2));
    }

    #[test]
    fn non_ram_targets_are_translated_but_not_cached() {
        let mut vm = paged_vm();
        vm.mem.add_mmio(0xFEC0_0000, 0x1000);
        vm.mem.write_u32(PT as u64 + 16, 0xFEC0_0000 | RW_USER);
        // A page table outside RAM reads as all ones: a present, writable
        // user PTE naming frame 0xFFFFF. Nothing panics, nothing is cached.
        vm.mem.write_u32(PD as u64 + 12, 0xFFFF_F000 | RW_USER);
        for _ in 0..2 {
            assert_eq!(vm.translate(0x40_4010, Access::WRITE), Ok(0xFEC0_0010));
            assert_eq!(vm.mmu.lookup_ram(0x40_4010, Access::READ), None);
            assert_eq!(vm.translate(0xC0_0123, Access(pf::U)), Ok(0xFFFF_F123));
            assert_eq!(vm.mmu.lookup_ram(0xC0_0123, Access(pf::U)), None);
        }
        assert_eq!(vm.mmu.stats.shadow_fills, 0);
        // The PTE of the MMIO page still got A and D.
        assert_eq!(
            pte_at(&mut vm, 4) as u64 & (pte::A | pte::D),
            pte::A | pte::D
        );
    }

    #[test]
    fn peek_has_no_side_effects() {
        let mut vm = paged_vm();
        let before = (pte_at(&mut vm, 0), vm.mem.read_u32(PD as u64 + 4));
        assert_eq!(
            vm.mmu.peek(&vm.cpu, &mut vm.mem, 0x40_0123, Access::WRITE),
            Ok(0x5123)
        );
        assert_eq!(
            vm.mmu.peek(&vm.cpu, &mut vm.mem, 0x80_0000, Access::READ),
            Err(0)
        );
        assert_eq!((pte_at(&mut vm, 0), vm.mem.read_u32(PD as u64 + 4)), before);
        assert_eq!(vm.mmu.stats, MmuStats::default());
        assert_eq!(vm.mmu.lookup_ram(0x40_0123, Access::READ), None);
        assert!(!vm.mem.is_watched(2));
    }

    /// Coherence under random guest activity: every access through the
    /// shadow must agree with a fresh walk of the tables as they are now
    /// (`peek`), whatever was written to them, through which path.
    ///
    /// Layout: two address spaces A and B share page tables 0x3000 and
    /// 0x4000 for linear 0x40_0000.. (in opposite order), and identity-map
    /// the low memory so the tables are reachable at their own addresses.
    /// 2-level: PDs 0x1000 (A) / 0x5000 (B), identity PT 0x2000. PAE: PDPTs
    /// 0x1000 / 0x5000 -> PDs 0x7000 / 0x8000, identity by a 2 MiB page.
    fn fuzz_coherence(pae: bool, nx: bool) {
        let mut vm = Vm::new(GuestMemory::new(4 << 20).unwrap());
        let (w, span): (usize, u32) = if pae { (8, 21) } else { (4, 22) };
        let pds: [u32; 2] = if pae {
            [0x7000, 0x8000]
        } else {
            [0x1000, 0x5000]
        };
        let put = |vm: &mut Vm, at: u32, v: u64| vm.write_phys(at as u64, w, v);
        let ident = if pae { 0x87 } else { 0x2000 | RW_USER as u64 };
        for (i, &pd) in pds.iter().enumerate() {
            if pae {
                put(&mut vm, [0x1000, 0x5000][i], pd as u64 | 1);
                // (PDPTEs are 8 bytes wide like the rest.)
            }
            put(&mut vm, pd, ident);
            let (x, y) = if i == 0 {
                (0x3000, 0x4000)
            } else {
                (0x4000, 0x3000)
            };
            let first = (0x40_0000u32 >> span) * w as u32;
            put(&mut vm, pd + first, x | RW_USER as u64);
            put(&mut vm, pd + first + w as u32, y | RW_USER as u64);
        }
        if !pae {
            for i in 0..1024u32 {
                put(&mut vm, 0x2000 + 4 * i, ((i << 12) | RW_USER) as u64);
            }
        }
        vm.cpu.cr0 |= cr0::PE | cr0::PG;
        if pae {
            vm.cpu.cr4 |= cr4::PAE;
        }
        if nx {
            vm.cpu.efer |= efer::NXE;
        }
        vm.cpu.cr3 = 0x1000;
        vm.mmu.flush_all(&vm.cpu);
        let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (pae as u64) << 7 ^ (nx as u64);
        let mut rnd = |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 32) as u32 % n
        };
        // Targets: data frames, the tables themselves, and frame 6, a data
        // page that PDE edits sometimes turn into a table.
        let pd_frames = pds.map(|p| p >> 12);
        let frames = [
            0x10,
            0x11,
            0x12,
            0x13,
            0x1F,
            0x3,
            0x4,
            0x6,
            0x6,
            pd_frames[0],
            pd_frames[1],
        ];
        let xd = |r: u32| if nx && r == 0 { pte::XD } else { 0 };
        let (mut hits_ok, mut faults) = (0, 0);
        for step in 0..40_000 {
            match rnd(32) {
                0 | 1 => {
                    // A PTE edit (flags at random, A/D included), through
                    // the identity map or physically.
                    let pt = [0x3000u32, 0x4000][rnd(2) as usize];
                    let at = pt + w as u32 * rnd(8);
                    let f = frames[rnd(frames.len() as u32) as usize];
                    let p = (rnd(4) != 0) as u64;
                    let v = ((f as u64) << 12) | (rnd(0x80) as u64 & 0x66) | p | xd(rnd(4));
                    if rnd(2) == 0 {
                        vm.write_lin(at, w, v, Access::WRITE).unwrap_or(());
                    } else {
                        put(&mut vm, at, v);
                    }
                }
                2 => {
                    // A PDE edit: present or not, any table, R/W, U/S.
                    let pd = pds[rnd(2) as usize];
                    let pt = [0x3000u32, 0x4000, 0x6000][rnd(3) as usize];
                    let mut v = (pt | 1 | rnd(8) << 1) as u64 | xd(rnd(4));
                    if rnd(4) == 0 {
                        v &= !1;
                    }
                    let first = (0x40_0000u32 >> span) * w as u32;
                    put(&mut vm, pd + first + w as u32 * rnd(2), v);
                }
                3 => {
                    let cr3 = [0x1000, 0x5000][rnd(2) as usize];
                    if pae && rnd(2) == 0 {
                        vm.mmu.load_pdptes(&mut vm.mem, cr3).unwrap();
                    }
                    vm.cpu.cr3 = cr3;
                    vm.mmu.set_cr3(&vm.cpu);
                }
                4 => {
                    vm.cpu.cr0 ^= cr0::WP;
                    vm.mmu.flush_all(&vm.cpu);
                }
                5 => vm.mmu.invlpg(&vm.cpu, 0x40_0000 + (rnd(2048) << 12)),
                _ => {
                    let lin = 0x40_0000 + (rnd(2) << span) + (rnd(8) << 12) + 4 * rnd(1024);
                    let kind = [0, pf::W, pf::ID][rnd(if nx { 3 } else { 2 }) as usize];
                    let acc = Access(kind | (rnd(2) * pf::U));
                    let want = vm.mmu.peek(&vm.cpu, &mut vm.mem, lin, acc);
                    let hit = vm.mmu.lookup_ram(lin, acc);
                    if acc.is_write() {
                        let val = step as u64;
                        let got = vm.write_lin(lin, 4, val, acc);
                        match want {
                            Ok(p) => {
                                assert_eq!(got, Ok(()), "step {step}");
                                assert_eq!(vm.mem.read_u32(p), val as u32, "step {step}");
                            }
                            Err(code) => {
                                assert_eq!(got, Err(Fault::pf(lin, code)), "step {step}");
                                faults += 1;
                            }
                        }
                    } else {
                        let got = vm.read_lin(lin, 4, acc);
                        match want {
                            Ok(p) => {
                                let v = vm.mem.read_u32(p) as u64;
                                assert_eq!(got, Ok(v), "step {step}");
                            }
                            Err(code) => {
                                assert_eq!(got, Err(Fault::pf(lin, code)), "step {step}");
                                faults += 1;
                            }
                        }
                    }
                    if let Some(off) = hit {
                        assert_eq!(want.map(|p| p as usize), Ok(off), "step {step}");
                        hits_ok += 1;
                    }
                }
            }
            // Never a writable shadow entry on a watched frame.
            if step % 100 == 0 {
                for f in 1..8 {
                    assert!(
                        !vm.mem.is_watched(f) || !vm.mmu.shadow.grants_write(f as u32),
                        "step {step}: frame {f}"
                    );
                }
            }
        }
        // The run exercised both outcomes and the fast path.
        assert!(
            hits_ok > 500 && faults > 1000,
            "{hits_ok} hits, {faults} faults"
        );
    }

    #[test]
    fn shadow_agrees_with_fresh_walks_2level() {
        fuzz_coherence(false, false);
    }

    #[test]
    fn shadow_agrees_with_fresh_walks_pae() {
        fuzz_coherence(true, false);
    }

    #[test]
    fn shadow_agrees_with_fresh_walks_pae_nx() {
        fuzz_coherence(true, true);
    }
}
