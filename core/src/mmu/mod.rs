//! Address translation: linear -> guest physical.
//!
//! Owns the guest page walk (2-level with PSE, PAE with NX; accessed and
//! dirty bits; every #PF error-code bit) and shadow paging: contexts cached
//! by guest CR3 (the shadow CR3 names the active one), a direct-mapped
//! lookup by linear page that engines check inline, and write-watched
//! page-table frames that keep the shadow coherent.
//!
//! Segmentation is not here: callers hand in linear addresses (see
//! `interp::operand` for the segment checks).

use crate::cpu::CpuState;
use crate::exception::{pf, Fault};
use crate::mem::GuestMemory;

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

pub struct Mmu {
    /// A20 gate: when false, physical bit 20 is forced to 0 (PC platform).
    pub a20: bool,
    pub stats: MmuStats,
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

    /// Fast path: RAM offset of `lin` if a shadow entry allows `acc`.
    #[inline]
    pub fn lookup_ram(&mut self, _lin: u32, _acc: Access) -> Option<usize> {
        None
    }

    /// Translate `lin` for `acc`, walking the guest tables when paging is
    /// on (setting accessed/dirty bits) and filling the shadow.
    pub fn translate(
        &mut self,
        cpu: &CpuState,
        _mem: &mut GuestMemory,
        lin: u32,
        acc: Access,
    ) -> Result<u64, Fault> {
        if !cpu.paging() {
            return Ok(self.a20_mask(lin as u64));
        }
        // Paging is not implemented yet: report a not-present fault so the
        // guest sees an architectural event, never a host panic.
        self.stats.page_faults += 1;
        Err(Fault::pf(lin, acc.0))
    }

    /// MOV to CR3 (and task switches): select the context for `cpu.cr3`.
    pub fn set_cr3(&mut self, _cpu: &CpuState) {
        self.stats.cr3_switches += 1;
    }

    /// INVLPG: drop what the architecture says the page's entry drops.
    pub fn invlpg(&mut self, _cpu: &CpuState, _lin: u32) {}

    /// CR0.PG/WP or CR4.PSE/PAE/PGE changed: drop everything derived from
    /// the old paging mode.
    pub fn flush_all(&mut self, _cpu: &CpuState) {}

    /// A write landed on a write-watched frame: drop the shadow entries
    /// derived from it.
    pub fn on_watched_write(&mut self, _mem: &mut GuestMemory, _frame: u64) {}
}
