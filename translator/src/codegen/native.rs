//! Native translation: guest instructions that run as the same host
//! instruction, re-encoded with iced-x86 after renaming guest registers to
//! their host registers (`ctx::HOST_REG`), so that the host computes the
//! guest's flags itself. Memory forms go through `mem` (address, inline
//! shadow lookup, slow path) and run with their operand replaced by
//! `[rsi]`.
//!
//! What runs natively: MOV, the eight ALU operations, TEST, INC DEC NEG
//! NOT, the shifts and rotates, IMUL (all forms), MUL, MOVZX MOVSX, LEA,
//! XCHG, CMOVcc, SETcc, BT BTS BTR BTC (register offset only with a
//! register base), BSWAP r32, CBW CWDE CWD CDQ, NOP. What never does:
//! DIV/IDIV (a host #DE would end the process), anything with LOCK or
//! REP prefixes, instructions invalid in 64-bit mode other than the
//! INC/DEC short forms (rewritten to their ModRM forms), BSF/BSR and their
//! TZCNT/LZCNT encodings (the guest's F3 0F BC/BD is BSF/BSR: its CPUID
//! has no BMI1/LZCNT, while the host would run them as TZCNT/LZCNT).
//! An AH..BH operand next to a renamed R12-R15 register cannot be
//! encoded: the encoder refuses and the instruction falls back.

use iced_x86::{Code, Encoder, Instruction, Mnemonic, OpKind, Register};

use super::{flags, mem, Emitter};
use crate::block::InsnMeta;

/// Host 16-bit registers of guest AX..DI.
const HOST16: [Register; 8] = [
    Register::AX,
    Register::CX,
    Register::DX,
    Register::BX,
    Register::R12W,
    Register::R13W,
    Register::R14W,
    Register::R15W,
];
/// Host 32-bit registers of guest EAX..EDI.
pub const HOST32: [Register; 8] = [
    Register::EAX,
    Register::ECX,
    Register::EDX,
    Register::EBX,
    Register::R12D,
    Register::R13D,
    Register::R14D,
    Register::R15D,
];

/// Host register of guest general register `r` (AL..BH keep theirs: the
/// legacy byte registers are the same without REX).
pub fn host_reg(r: Register) -> Option<Register> {
    if r.is_gpr8() {
        return (r.number() < 8).then_some(r);
    }
    if r.is_gpr16() {
        return HOST16.get(r.number()).copied();
    }
    if r.is_gpr32() {
        return HOST32.get(r.number()).copied();
    }
    None
}

/// How a native instruction touches its memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemUse {
    Read,
    Write,
    ReadWrite,
}

fn is_cmov(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Cmovo
            | Cmovno
            | Cmovb
            | Cmovae
            | Cmove
            | Cmovne
            | Cmovbe
            | Cmova
            | Cmovs
            | Cmovns
            | Cmovp
            | Cmovnp
            | Cmovl
            | Cmovge
            | Cmovle
            | Cmovg
    )
}

fn is_setcc(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Seto | Setno
            | Setb
            | Setae
            | Sete
            | Setne
            | Setbe
            | Seta
            | Sets
            | Setns
            | Setp
            | Setnp
            | Setl
            | Setge
            | Setle
            | Setg
    )
}

fn is_shift(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(m, Shl | Shr | Sar | Rol | Ror | Rcl | Rcr)
}

/// A shift or rotate whose count (CL, or an immediate that masks to 0)
/// may be zero: it then leaves every flag as it was.
pub fn count_may_be_zero(ins: &Instruction) -> bool {
    if !is_shift(ins.mnemonic()) || ins.op_count() < 2 {
        return false;
    }
    match ins.op1_kind() {
        OpKind::Immediate8 => ins.immediate8() & 31 == 0,
        _ => true,
    }
}

/// How `ins` uses its memory operand, if it is an instruction this
/// module runs natively at all (`None`: not native). For register-only
/// forms the answer is irrelevant (`Read`).
fn native_use(ins: &Instruction) -> Option<MemUse> {
    use Mnemonic::*;
    if ins.has_lock_prefix() || ins.has_rep_prefix() || ins.has_repne_prefix() {
        return None;
    }
    let m = ins.mnemonic();
    let op0_mem = ins.op0_kind() == OpKind::Memory;
    let u = match m {
        Mov => {
            if op0_mem {
                MemUse::Write
            } else {
                MemUse::Read
            }
        }
        Add | Or | Adc | Sbb | And | Sub | Xor => {
            if op0_mem {
                MemUse::ReadWrite
            } else {
                MemUse::Read
            }
        }
        Cmp | Test | Imul | Mul | Movzx | Movsx => MemUse::Read,
        Inc | Dec | Neg | Not | Xchg => MemUse::ReadWrite,
        Shl | Shr | Sar | Rol | Ror | Rcl | Rcr => MemUse::ReadWrite,
        Bt | Bts | Btr | Btc => {
            // A register bit offset with a memory base addresses beyond
            // the operand (SDM Vol. 2 BT): monitor only.
            if op0_mem && ins.op1_kind() == OpKind::Register {
                return None;
            }
            if m == Bt {
                MemUse::Read
            } else {
                MemUse::ReadWrite
            }
        }
        Bswap => {
            // BSWAP r16 is undefined (SDM Vol. 2 BSWAP).
            if ins.code() != Code::Bswap_r32 {
                return None;
            }
            MemUse::Read
        }
        Cbw | Cwde | Cwd | Cdq | Lea | Nop => MemUse::Read,
        _ if is_cmov(m) => MemUse::Read,
        _ if is_setcc(m) => MemUse::Write,
        _ => return None,
    };
    Some(u)
}

/// Codes valid only outside 64-bit mode, and their 64-bit equivalents.
fn code_for_64(c: Code) -> Code {
    match c {
        Code::Inc_r16 => Code::Inc_rm16,
        Code::Inc_r32 => Code::Inc_rm32,
        Code::Dec_r16 => Code::Dec_rm16,
        Code::Dec_r32 => Code::Dec_rm32,
        Code::Mov_AL_moffs8 => Code::Mov_r8_rm8,
        Code::Mov_AX_moffs16 => Code::Mov_r16_rm16,
        Code::Mov_EAX_moffs32 => Code::Mov_r32_rm32,
        Code::Mov_moffs8_AL => Code::Mov_rm8_r8,
        Code::Mov_moffs16_AX => Code::Mov_rm16_r16,
        Code::Mov_moffs32_EAX => Code::Mov_rm32_r32,
        c => c,
    }
}

/// Host bytes of `ins` with guest registers renamed and its memory
/// operand (if any) replaced by `[rsi]`; `None` if it has an operand this
/// module does not handle or the host cannot encode it.
pub fn host_bytes(ins: &Instruction) -> Option<Vec<u8>> {
    let mut h = *ins;
    h.set_code(code_for_64(ins.code()));
    for i in 0..ins.op_count() {
        match ins.op_kind(i) {
            OpKind::Register => h
                .try_set_op_register(i, host_reg(ins.op_register(i))?)
                .ok()?,
            OpKind::Memory => {
                h.set_memory_base(Register::RSI);
                h.set_memory_index(Register::None);
                h.set_memory_index_scale(1);
                h.set_memory_displacement64(0);
                h.set_memory_displ_size(0);
                h.set_segment_prefix(Register::None);
            }
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32 => {}
            _ => return None,
        }
    }
    let mut enc = Encoder::new(64);
    enc.encode(&h, 0).ok()?;
    Some(enc.take_buffer())
}

/// What `emit` would do with `ins`.
enum Plan {
    /// Nothing to run (NOP, including 0F 1F with a memory operand).
    Nothing,
    /// LEA: address arithmetic only.
    Lea,
    /// Register and immediate operands only: these host bytes.
    Register(Vec<u8>),
    /// One memory operand.
    Memory(MemUse, Vec<u8>),
}

fn plan(ins: &Instruction) -> Option<Plan> {
    let u = native_use(ins)?;
    match ins.mnemonic() {
        Mnemonic::Nop => return Some(Plan::Nothing),
        Mnemonic::Lea => {
            return (ins.op0_kind() == OpKind::Register && host_reg(ins.op0_register()).is_some())
                .then_some(Plan::Lea)
        }
        _ => {}
    }
    let mems = (0..ins.op_count())
        .filter(|&i| ins.op_kind(i) == OpKind::Memory)
        .count();
    let bytes = host_bytes(ins)?;
    match mems {
        0 => Some(Plan::Register(bytes)),
        1 => Some(Plan::Memory(u, bytes)),
        _ => None,
    }
}

/// `ins` runs natively without touching memory (so it cannot fault).
pub fn is_register_native(ins: &Instruction) -> bool {
    matches!(
        plan(ins),
        Some(Plan::Nothing | Plan::Lea | Plan::Register(_))
    )
}

/// Emit `m` natively if it has a native form; false to fall back.
/// `live_after`: arithmetic flags live after it (`flags::live_after`).
///
/// ```text
///   push [rbp+hflags] ; popfq     (if it needs flags not in RFLAGS)
///   <the instruction, registers renamed>
/// ```
pub fn emit(e: &mut Emitter, m: &InsnMeta, live_after: u32) -> bool {
    let ins = &m.ins;
    match plan(ins) {
        None => false,
        Some(Plan::Nothing) => true,
        Some(Plan::Lea) => mem::emit_lea(e, ins),
        Some(Plan::Register(bytes)) => {
            if flags::needed_before(ins, live_after) != 0 {
                e.restore_flags();
            }
            e.ops.extend(bytes);
            if flags::modified(ins) != 0 {
                e.flags.in_host = true;
                e.flags.dirty = true;
            }
            true
        }
        Some(Plan::Memory(u, bytes)) => mem::emit_access(e, m, u, &bytes, live_after),
    }
}
