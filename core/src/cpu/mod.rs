//! The architectural state of one x86 CPU: registers, segment descriptor
//! caches, control/debug registers, MSRs, x87/SSE state and the run state
//! (halted, interrupt shadow). Plain data: every engine reads and writes it,
//! snapshots serialize it, the differential harness compares it.
//!
//! It owns no behaviour beyond small accessors; what instructions do lives
//! in `interp`, how addresses translate lives in `mmu`.

pub mod flags;
pub mod regs;

pub use flags::*;
pub use regs::*;

use serde::{Deserialize, Serialize};

/// Index of a general-purpose register in `CpuState::gpr`, in encoding order.
pub const EAX: usize = 0;
pub const ECX: usize = 1;
pub const EDX: usize = 2;
pub const EBX: usize = 3;
pub const ESP: usize = 4;
pub const EBP: usize = 5;
pub const ESI: usize = 6;
pub const EDI: usize = 7;

/// A segment register with its hidden descriptor cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The visible selector.
    pub selector: u16,
    /// Cached linear base.
    pub base: u32,
    /// Cached limit in bytes (already scaled by G).
    pub limit: u32,
    /// Access rights in the VMX layout: bits 0-7 the descriptor's access
    /// byte (type, S, DPL, P), bits 12-15 its flags (AVL, L, D/B, G), bit 16
    /// set when the register holds a null selector (unusable).
    pub attr: u32,
}

/// Access-rights bits of `Segment::attr` (descriptor bytes 5 and 6).
pub mod attr {
    /// Type bit 0: accessed.
    pub const ACCESSED: u32 = 1 << 0;
    /// Type bit 1: data writable / code readable.
    pub const RW: u32 = 1 << 1;
    /// Type bit 2: data expand-down / code conforming.
    pub const DC: u32 = 1 << 2;
    /// Type bit 3: code segment.
    pub const CODE: u32 = 1 << 3;
    /// Descriptor type: 1 = code/data, 0 = system.
    pub const S: u32 = 1 << 4;
    /// Descriptor privilege level (2 bits).
    pub const DPL_SHIFT: u32 = 5;
    pub const DPL_MASK: u32 = 3 << 5;
    /// Segment present.
    pub const P: u32 = 1 << 7;
    /// Available for software.
    pub const AVL: u32 = 1 << 12;
    /// 64-bit code segment (long mode only).
    pub const L: u32 = 1 << 13;
    /// Default operation size 32 bits / big stack.
    pub const DB: u32 = 1 << 14;
    /// Granularity: limit in 4 KiB units.
    pub const G: u32 = 1 << 15;
    /// Null selector loaded; any access faults.
    pub const UNUSABLE: u32 = 1 << 16;
}

impl Segment {
    /// A real-mode style segment: base = selector << 4, 64 KiB limit,
    /// read/write data, present. Used at reset and for real/V86 loads.
    pub fn real(selector: u16) -> Self {
        Segment {
            selector,
            base: (selector as u32) << 4,
            limit: 0xFFFF,
            attr: attr::P | attr::S | attr::RW | attr::ACCESSED,
        }
    }

    /// Decode the cache from the two dwords of a GDT/LDT descriptor.
    pub fn from_descriptor(selector: u16, lo: u32, hi: u32) -> Self {
        let base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF00_0000);
        let raw_limit = (lo & 0xFFFF) | (hi & 0x000F_0000);
        let attr = (hi >> 8) & 0xF0FF;
        let limit = if attr & attr::G != 0 {
            (raw_limit << 12) | 0xFFF
        } else {
            raw_limit
        };
        Segment {
            selector,
            base,
            limit,
            attr,
        }
    }

    pub fn dpl(&self) -> u8 {
        ((self.attr & attr::DPL_MASK) >> attr::DPL_SHIFT) as u8
    }
    pub fn rpl(&self) -> u8 {
        (self.selector & 3) as u8
    }
    pub fn present(&self) -> bool {
        self.attr & attr::P != 0
    }
    pub fn is_code(&self) -> bool {
        self.attr & attr::S != 0 && self.attr & attr::CODE != 0
    }
    /// D/B bit: 32-bit default operand size (code) or ESP stack (SS).
    pub fn big(&self) -> bool {
        self.attr & attr::DB != 0
    }
    pub fn unusable(&self) -> bool {
        self.attr & attr::UNUSABLE != 0
    }
    /// System-descriptor type (attr bits 0-3) when S = 0.
    pub fn sys_type(&self) -> u8 {
        (self.attr & 0xF) as u8
    }
}

/// Index of a segment register in `CpuState::seg`, in encoding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum SegReg {
    Es = 0,
    Cs = 1,
    Ss = 2,
    Ds = 3,
    Fs = 4,
    Gs = 5,
}

impl SegReg {
    pub const ALL: [SegReg; 6] = [
        SegReg::Es,
        SegReg::Cs,
        SegReg::Ss,
        SegReg::Ds,
        SegReg::Fs,
        SegReg::Gs,
    ];
    pub fn from_index(i: usize) -> SegReg {
        SegReg::ALL[i % 6]
    }
}

/// GDTR / IDTR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescTable {
    pub base: u32,
    pub limit: u16,
}

/// x87 FPU state (also what FNSAVE/FXSAVE store). Registers are kept as
/// their 80-bit encodings so that save/restore is exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    /// Control word.
    pub fcw: u16,
    /// Status word (TOP in bits 11-13).
    pub fsw: u16,
    /// Full tag word (2 bits per physical register).
    pub ftw: u16,
    /// Last opcode (11 bits).
    pub fop: u16,
    pub fip: u32,
    pub fcs: u16,
    pub fdp: u32,
    pub fds: u16,
    /// Physical registers R0-R7, 80-bit little-endian encodings.
    pub regs: [[u8; 10]; 8],
}

impl Default for FpuState {
    /// The state after RESET (SDM Vol. 3 9.1.1, Table 9-1): FCW 0x0040,
    /// FSW 0, all tags empty.
    fn default() -> Self {
        FpuState {
            fcw: 0x0040,
            fsw: 0,
            ftw: 0xFFFF,
            fop: 0,
            fip: 0,
            fcs: 0,
            fdp: 0,
            fds: 0,
            regs: [[0; 10]; 8],
        }
    }
}

/// SSE state saved by FXSAVE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SseState {
    pub mxcsr: u32,
    pub xmm: [u128; 8],
}

impl Default for SseState {
    fn default() -> Self {
        SseState {
            mxcsr: 0x1F80,
            xmm: [0; 8],
        }
    }
}

/// The model-specific registers the CPU implements (see `interp::system`
/// for which indices map here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msrs {
    pub sysenter_cs: u32,
    pub sysenter_esp: u32,
    pub sysenter_eip: u32,
    pub apic_base: u64,
    pub pat: u64,
    pub misc_enable: u64,
    pub mtrr_def_type: u64,
    pub mtrr_fixed: [u64; 11],
    pub mtrr_var: [u64; 16],
}

/// Everything architectural about one CPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuState {
    /// EAX..EDI in encoding order, 64 bits wide so that long mode can come.
    pub gpr: [u64; 8],
    pub eip: u32,
    pub eflags: u32,
    /// ES, CS, SS, DS, FS, GS in encoding order.
    pub seg: [Segment; 6],
    pub ldtr: Segment,
    pub tr: Segment,
    pub gdtr: DescTable,
    pub idtr: DescTable,
    pub cr0: u32,
    pub cr2: u32,
    pub cr3: u32,
    pub cr4: u32,
    pub efer: u64,
    pub dr: [u32; 8],
    pub msr: Msrs,
    pub tsc: u64,
    pub fpu: FpuState,
    pub sse: SseState,
    /// Halted by HLT until an interrupt (or NMI/reset).
    pub halted: bool,
    /// Interrupts are inhibited for one instruction (after STI or a load
    /// of SS), SDM Vol. 3 6.8.3.
    pub interrupt_shadow: bool,
    /// An external interrupt vector waiting for EFLAGS.IF (set by the
    /// platform, taken by the engine at an instruction boundary).
    pub pending_irq: Option<u8>,
    /// An NMI is waiting.
    pub pending_nmi: bool,
    /// NMIs are blocked: an NMI handler runs and no IRET has executed
    /// since (SDM Vol. 3 6.7.1).
    #[serde(default)]
    pub nmi_blocked: bool,
}

impl Default for CpuState {
    fn default() -> Self {
        Self::reset()
    }
}

impl CpuState {
    /// The state after RESET (SDM Vol. 3 9.1.1): real mode, CS:IP =
    /// F000:FFF0 with CS base FFFF0000, EDX = processor signature.
    pub fn reset() -> Self {
        let mut cs = Segment::real(0xF000);
        cs.base = 0xFFFF_0000;
        cs.attr = attr::P | attr::S | attr::CODE | attr::RW | attr::ACCESSED;
        let mut seg = [Segment::real(0); 6];
        seg[SegReg::Cs as usize] = cs;
        let mut gpr = [0u64; 8];
        gpr[EDX] = crate::interp::cpuid::SIGNATURE as u64;
        CpuState {
            gpr,
            eip: 0xFFF0,
            eflags: flags::FIXED1,
            seg,
            ldtr: Segment {
                selector: 0,
                base: 0,
                limit: 0xFFFF,
                attr: attr::P | 0x2,
            },
            tr: Segment {
                selector: 0,
                base: 0,
                limit: 0xFFFF,
                attr: attr::P | 0xB,
            },
            gdtr: DescTable {
                base: 0,
                limit: 0xFFFF,
            },
            idtr: DescTable {
                base: 0,
                limit: 0xFFFF,
            },
            cr0: cr0::ET | cr0::CD | cr0::NW,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            efer: 0,
            dr: [0, 0, 0, 0, 0xFFFF0FF0, 0x400, 0xFFFF0FF0, 0x400],
            msr: Msrs {
                apic_base: 0xFEE0_0900,
                pat: 0x0007_0406_0007_0406,
                ..Msrs::default()
            },
            tsc: 0,
            fpu: FpuState::default(),
            sse: SseState::default(),
            halted: false,
            interrupt_shadow: false,
            pending_irq: None,
            pending_nmi: false,
            nmi_blocked: false,
        }
    }

    #[inline]
    pub fn seg(&self, s: SegReg) -> &Segment {
        &self.seg[s as usize]
    }
    #[inline]
    pub fn seg_mut(&mut self, s: SegReg) -> &mut Segment {
        &mut self.seg[s as usize]
    }

    /// Current privilege level: CS.RPL in protected mode (SS.DPL equals it
    /// architecturally), 0 in real mode, 3 in V86 mode.
    #[inline]
    pub fn cpl(&self) -> u8 {
        if self.cr0 & cr0::PE == 0 {
            0
        } else if self.eflags & flags::VM != 0 {
            3
        } else {
            (self.seg[SegReg::Cs as usize].selector & 3) as u8
        }
    }

    /// Misaligned data accesses raise #AC (SDM Vol. 3 6.15, interrupt 17):
    /// CR0.AM, EFLAGS.AC and CPL 3 together.
    #[inline]
    pub fn alignment_checked(&self) -> bool {
        self.cr0 & cr0::AM != 0 && self.eflags & flags::AC != 0 && self.cpl() == 3
    }

    #[inline]
    pub fn protected(&self) -> bool {
        self.cr0 & cr0::PE != 0
    }
    #[inline]
    pub fn v86(&self) -> bool {
        self.eflags & flags::VM != 0 && self.protected()
    }
    #[inline]
    pub fn real(&self) -> bool {
        self.cr0 & cr0::PE == 0
    }
    #[inline]
    pub fn paging(&self) -> bool {
        self.cr0 & cr0::PG != 0
    }
    /// 32-bit default operand size for code (CS.D).
    #[inline]
    pub fn code32(&self) -> bool {
        self.protected() && !self.v86() && self.seg[SegReg::Cs as usize].big()
    }
    /// 32-bit stack (SS.B).
    #[inline]
    pub fn stack32(&self) -> bool {
        self.protected() && !self.v86() && self.seg[SegReg::Ss as usize].big()
    }
    #[inline]
    pub fn iopl(&self) -> u8 {
        ((self.eflags >> 12) & 3) as u8
    }

    #[inline]
    pub fn reg32(&self, r: usize) -> u32 {
        self.gpr[r] as u32
    }
    #[inline]
    pub fn set_reg32(&mut self, r: usize, v: u32) {
        // Writes of 32-bit registers zero-extend (as in long mode).
        self.gpr[r] = v as u64;
    }
    #[inline]
    pub fn reg16(&self, r: usize) -> u16 {
        self.gpr[r] as u16
    }
    #[inline]
    pub fn set_reg16(&mut self, r: usize, v: u16) {
        self.gpr[r] = (self.gpr[r] & !0xFFFF) | v as u64;
    }
    /// 8-bit register by encoding: 0-3 = AL,CL,DL,BL; 4-7 = AH,CH,DH,BH.
    #[inline]
    pub fn reg8(&self, r: usize) -> u8 {
        if r < 4 {
            self.gpr[r] as u8
        } else {
            (self.gpr[r - 4] >> 8) as u8
        }
    }
    #[inline]
    pub fn set_reg8(&mut self, r: usize, v: u8) {
        if r < 4 {
            self.gpr[r] = (self.gpr[r] & !0xFF) | v as u64;
        } else {
            self.gpr[r - 4] = (self.gpr[r - 4] & !0xFF00) | ((v as u64) << 8);
        }
    }

    /// Stack pointer as the current stack size sees it.
    #[inline]
    pub fn sp(&self) -> u32 {
        if self.stack32() {
            self.gpr[ESP] as u32
        } else {
            self.gpr[ESP] as u16 as u32
        }
    }
    /// Set the stack pointer, touching only SP when the stack is 16-bit.
    #[inline]
    pub fn set_sp(&mut self, v: u32) {
        if self.stack32() {
            self.set_reg32(ESP, v);
        } else {
            self.set_reg16(ESP, v as u16);
        }
    }
}
