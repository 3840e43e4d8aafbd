//! `JitCtx`: the block of state that translated code reaches through its
//! one pinned host register (RBP), and its exchange with `CpuState`.
//!
//! While translated code runs, the guest GPRs live in fixed host registers
//! (`HOST_REG`) and the guest's arithmetic flags in the host's RFLAGS; at
//! every block boundary and around every call into the monitor they are in
//! `gpr` and `hflags` here. `hflags` is always a host RFLAGS image (as
//! `pushfq` stores it), so `popfq` of it can only set the six arithmetic
//! flags: the guest's TF, DF, IF, IOPL and the rest stay in
//! `CpuState::eflags`.

use umbra_core::cpu::CpuState;
use umbra_core::mmu::shadow::Entry;
use umbra_core::vm::Vm;

/// CF, PF, AF, ZF, SF, OF: the flags translated code keeps in RFLAGS.
pub const ARITH_FLAGS: u32 = 0x8D5;
/// The host RFLAGS bits that are not arithmetic flags in a user-mode
/// `pushfq` image: bit 1 (always one) and IF.
pub const HOST_FLAGS_BASE: u64 = 0x202;

/// Host register number (x86-64 encoding) of guest GPR `i` (EAX..EDI).
/// EAX..EBX keep their numbers so that AH..BH stay encodable (no REX);
/// ESP..EDI go to R12..R15, which calls preserve. RSP stays the host
/// stack, RBP holds `&JitCtx`, RSI, RDI and R8-R11 are scratch.
pub const HOST_REG: [u8; 8] = [0, 1, 2, 3, 12, 13, 14, 15];
/// The pinned register holding `*mut JitCtx`.
pub const CTX_REG: u8 = 5;

/// Why translated code returned to the dispatcher.
pub mod exit {
    /// Reached the end of a block that does not chain: continue at `eip`.
    pub const NEXT: u32 = 0;
    /// Not enough budget for the next block: `eip` is its start and the
    /// budget is as before it.
    pub const BUDGET: u32 = 1;
    /// A monitor routine ended the block (control transfer, fault
    /// delivered, code written, mode change): continue at `eip`.
    pub const MONITOR: u32 = 2;
    /// The machine shut down (triple fault); the reason is in the engine.
    pub const SHUTDOWN: u32 = 3;
    /// A block exit whose jump can be chained: continue at `eip`;
    /// `JitCtx::exit_site` names the exit (`branch::site_code`).
    pub const CHAIN: u32 = 4;
    /// The inline lookup of a branch target (`codegen::flow`) missed: the
    /// branch is done, continue at `eip`; the dispatcher records the block
    /// it enters there in the lookup table.
    pub const INDIRECT: u32 = 5;
}

/// The state translated code works on. `#[repr(C)]`: generated code uses
/// the field offsets (`offset_of!`).
#[repr(C)]
pub struct JitCtx {
    /// Guest EAX..EDI (low 32 bits).
    pub gpr: [u32; 8],
    /// Host RFLAGS image carrying the guest's arithmetic flags.
    pub hflags: u64,
    /// Guest EIP at the last exit.
    pub eip: u32,
    /// `exit::*`.
    pub exit: u32,
    /// Instructions the engine may still retire once the current block is
    /// done (each block subtracts its length on entry).
    pub budget: i64,
    /// Host address of guest RAM offset 0.
    pub ram_base: *mut u8,
    /// The active shadow lookup table (`Mmu::active_table`).
    pub shadow: *const Entry,
    /// Segment bases (ES, CS, SS, DS, FS, GS), for effective addresses.
    pub seg_base: [u32; 6],
    /// The machine, for monitor routines.
    pub vm: *mut Vm,
    /// The engine, for monitor routines.
    pub engine: *mut core::ffi::c_void,
    /// With `exit::CHAIN`: which block exit was taken (block id * 4 +
    /// exit index).
    pub exit_site: u32,
    /// The inline branch-target table (`codegen::flow::IbEntry`s).
    pub ib_table: *const core::ffi::c_void,
}

impl JitCtx {
    pub fn new() -> Self {
        JitCtx {
            gpr: [0; 8],
            hflags: HOST_FLAGS_BASE,
            eip: 0,
            exit: 0,
            budget: 0,
            ram_base: core::ptr::null_mut(),
            shadow: core::ptr::null(),
            seg_base: [0; 6],
            vm: core::ptr::null_mut(),
            engine: core::ptr::null_mut(),
            exit_site: 0,
            ib_table: core::ptr::null(),
        }
    }

    /// Take the guest state translated code keeps here from `cpu`.
    #[inline]
    pub fn load(&mut self, cpu: &CpuState) {
        for i in 0..8 {
            self.gpr[i] = cpu.gpr[i] as u32;
        }
        self.hflags = HOST_FLAGS_BASE | (cpu.eflags & ARITH_FLAGS) as u64;
        self.eip = cpu.eip;
        for (b, s) in self.seg_base.iter_mut().zip(cpu.seg.iter()) {
            *b = s.base;
        }
    }

    /// Give it back to `cpu` (EIP is left to the caller).
    #[inline]
    pub fn store(&self, cpu: &mut CpuState) {
        for i in 0..8 {
            cpu.gpr[i] = self.gpr[i] as u64;
        }
        cpu.eflags = (cpu.eflags & !ARITH_FLAGS) | (self.hflags as u32 & ARITH_FLAGS);
    }
}

impl Default for JitCtx {
    fn default() -> Self {
        Self::new()
    }
}

/// Offsets of the fields generated code reaches, as i32 displacements.
pub mod off {
    use super::JitCtx;
    use core::mem::offset_of;

    pub const fn gpr(i: usize) -> i32 {
        (offset_of!(JitCtx, gpr) + 4 * i) as i32
    }
    pub const HFLAGS: i32 = offset_of!(JitCtx, hflags) as i32;
    pub const EIP: i32 = offset_of!(JitCtx, eip) as i32;
    pub const EXIT: i32 = offset_of!(JitCtx, exit) as i32;
    pub const BUDGET: i32 = offset_of!(JitCtx, budget) as i32;
    pub const RAM_BASE: i32 = offset_of!(JitCtx, ram_base) as i32;
    pub const SHADOW: i32 = offset_of!(JitCtx, shadow) as i32;
    pub const EXIT_SITE: i32 = offset_of!(JitCtx, exit_site) as i32;
    pub const IB_TABLE: i32 = offset_of!(JitCtx, ib_table) as i32;
    pub const fn seg_base(i: usize) -> i32 {
        (offset_of!(JitCtx, seg_base) + 4 * i) as i32
    }
}
