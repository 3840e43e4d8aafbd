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

use umbra_core::cpu::{cr0, CpuState, SegReg};
use umbra_core::interp::x87::{classify, fcw, fsw, tag};
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
/// stack, RBP holds `&JitCtx`, R8 holds `JitCtx::shadow` (the active
/// shadow table: loaded on entry and after every call out of generated
/// code, which may switch it), RSI, RDI and R9-R11 are scratch.
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
    /// Non-zero while the host x87 unit holds the guest's x87 state
    /// (`codegen::x87`): `CpuState::fpu` is then stale until
    /// `x87_spill`.
    pub x87_live: u8,
    /// The segment (`SegReg` + 1) of the last native x87 instruction
    /// with a memory operand since the last spill, 0 if none; its offset
    /// is `x87_fdp`.
    pub x87_fds_seg: u8,
    /// Scratch word for FLDCW (the normalised control word).
    pub x87_cw: u16,
    /// Offset (FDP) of that memory operand.
    pub x87_fdp: u32,
    /// The last native non-control x87 instruction since the last spill:
    /// FIP in bits 0-31, FOP in 32-42, `X87_LAST_VALID` set; 0 if none.
    pub x87_last: u64,
    /// FNSAVE/FRSTOR image (32-bit protected-mode layout, SDM Vol. 1
    /// 8.1.10) through which the guest state enters and leaves the host
    /// unit.
    pub x87_img: [u8; X87_IMG_LEN],
    /// FNSTENV scratch (28 bytes, 32-bit layout) for the stack checks of
    /// native code (`codegen::x87`).
    pub x87_env: [u8; 28],
}

/// `JitCtx::x87_last` holds an instruction.
pub const X87_LAST_VALID: u64 = 1 << 48;
/// Size of an FNSAVE image with the 32-bit environment.
pub const X87_IMG_LEN: usize = 108;
/// Offset of ST(0) in it.
const IMG_REGS: usize = 28;

impl JitCtx {
    pub fn new() -> Self {
        JitCtx {
            gpr: [0; 8],
            hflags: HOST_FLAGS_BASE,
            eip: 0,
            exit: 0,
            budget: 0,
            shadow: core::ptr::null(),
            seg_base: [0; 6],
            vm: core::ptr::null_mut(),
            engine: core::ptr::null_mut(),
            exit_site: 0,
            ib_table: core::ptr::null(),
            x87_live: 0,
            x87_fds_seg: 0,
            x87_cw: 0,
            x87_fdp: 0,
            x87_last: 0,
            x87_img: [0; X87_IMG_LEN],
            x87_env: [0; 28],
        }
    }

    /// Whether the guest's x87 state may run on the host unit (checked on
    /// entry to native x87 code): no #NM (CR0.EM/TS clear, SDM Vol. 3
    /// Table 2-2), every exception masked and none pending (a host
    /// exception would trap in this process; masked responses are what
    /// the host computes), and a precision control other than the
    /// reserved 01B (the interpreter's choice for it need not be the
    /// host's). If so, put the state into `x87_img` for FRSTOR.
    pub fn x87_prepare(&mut self, cpu: &CpuState) -> bool {
        let f = &cpu.fpu;
        if cpu.cr0 & (cr0::EM | cr0::TS) != 0
            || f.fcw & fcw::MASKS != fcw::MASKS
            || (f.fcw >> 8) & 3 == 1
            || f.fsw & fsw::ES != 0
        {
            return false;
        }
        let img = &mut self.x87_img;
        img.fill(0);
        img[0..2].copy_from_slice(&f.fcw.to_le_bytes());
        img[4..6].copy_from_slice(&f.fsw.to_le_bytes());
        img[8..10].copy_from_slice(&f.ftw.to_le_bytes());
        let top = ((f.fsw & fsw::TOP_MASK) >> fsw::TOP_SHIFT) as usize;
        for i in 0..8 {
            let at = IMG_REGS + 10 * i;
            img[at..at + 10].copy_from_slice(&f.regs[(top + i) & 7]);
        }
        self.x87_last = 0;
        self.x87_fds_seg = 0;
        true
    }

    /// If the host unit holds the guest's x87 state, store it (FNSAVE,
    /// which also re-initialises the host unit to the state Rust code
    /// expects) and give it back to `cpu.fpu`, with the last-instruction
    /// pointers of the native instructions run since it was loaded. The
    /// selectors (FCS, FDS) are the current ones: segment loads and far
    /// transfers run in the monitor, which spills first.
    #[inline]
    pub fn x87_spill(&mut self, cpu: &mut CpuState) {
        if self.x87_live == 0 {
            return;
        }
        self.x87_live = 0;
        let img = &mut self.x87_img;
        // SAFETY: FNSAVE writes the 108 bytes of `img` (32-bit layout: no
        // REX.W) and re-initialises the x87 unit, whose registers are
        // declared clobbered. The host unit holds the guest's state loaded
        // by generated code (`x87_live`), which nothing else uses.
        unsafe {
            core::arch::asm!(
                "fnsave [{img}]",
                img = in(reg) img.as_mut_ptr(),
                out("st(0)") _, out("st(1)") _, out("st(2)") _, out("st(3)") _,
                out("st(4)") _, out("st(5)") _, out("st(6)") _, out("st(7)") _,
                options(nostack),
            );
        }
        let g16 = |at: usize| u16::from_le_bytes([img[at], img[at + 1]]);
        let f = &mut cpu.fpu;
        f.fcw = (g16(0) & fcw::WRITABLE) | fcw::FIXED1;
        f.fsw = g16(4);
        // ES and B follow the flags and the masks (SDM Vol. 1 8.1.3.1),
        // as the interpreter keeps them: set after an FLDCW that unmasked
        // a flagged exception.
        if f.fsw & fsw::EXC & !f.fcw != 0 {
            f.fsw |= fsw::ES | fsw::B;
        } else {
            f.fsw &= !(fsw::ES | fsw::B);
        }
        let ftw = g16(8);
        let top = ((f.fsw & fsw::TOP_MASK) >> fsw::TOP_SHIFT) as usize;
        for i in 0..8 {
            let at = IMG_REGS + 10 * i;
            f.regs[(top + i) & 7].copy_from_slice(&img[at..at + 10]);
        }
        f.ftw = (0..8).fold(0, |w, p| {
            let t = if (ftw >> (2 * p)) & 3 == tag::EMPTY {
                tag::EMPTY
            } else {
                classify(&f.regs[p])
            };
            w | t << (2 * p)
        });
        if self.x87_last & X87_LAST_VALID != 0 {
            f.fip = self.x87_last as u32;
            f.fop = (self.x87_last >> 32) as u16 & 0x7FF;
            f.fcs = cpu.seg[SegReg::Cs as usize].selector;
        }
        let seg = self.x87_fds_seg as usize;
        if (1..=cpu.seg.len()).contains(&seg) {
            f.fdp = self.x87_fdp;
            f.fds = cpu.seg[seg - 1].selector;
        }
        self.x87_last = 0;
        self.x87_fds_seg = 0;
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
    pub const SHADOW: i32 = offset_of!(JitCtx, shadow) as i32;
    pub const EXIT_SITE: i32 = offset_of!(JitCtx, exit_site) as i32;
    pub const IB_TABLE: i32 = offset_of!(JitCtx, ib_table) as i32;
    pub const X87_LIVE: i32 = offset_of!(JitCtx, x87_live) as i32;
    pub const X87_FDS_SEG: i32 = offset_of!(JitCtx, x87_fds_seg) as i32;
    pub const X87_CW: i32 = offset_of!(JitCtx, x87_cw) as i32;
    pub const X87_FDP: i32 = offset_of!(JitCtx, x87_fdp) as i32;
    pub const X87_LAST: i32 = offset_of!(JitCtx, x87_last) as i32;
    pub const X87_IMG: i32 = offset_of!(JitCtx, x87_img) as i32;
    pub const X87_ENV: i32 = offset_of!(JitCtx, x87_env) as i32;
    pub const fn seg_base(i: usize) -> i32 {
        (offset_of!(JitCtx, seg_base) + 4 * i) as i32
    }
}
