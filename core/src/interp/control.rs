//! Near control transfers: JMP (relative and indirect r/m), Jcc, CALL
//! (relative and indirect), RET and RET imm16, LOOP/LOOPE/LOOPNE and
//! JCXZ/JECXZ; and `cond`, the condition-code test that Jcc, CMOVcc and
//! SETcc share.
//!
//! Far JMP/CALL/RET (segment loads, gates) belong to the segment family;
//! the far forms that share the JMP and CALL mnemonics raise #UD here until
//! that family registers them by `Code`.
//!
//! The operand size decides how wide the pushed/popped return address is
//! and whether the new EIP is truncated to 16 bits (SDM Vol. 2 JMP, CALL,
//! RET). A target beyond the CS limit is #GP(0), raised before anything is
//! committed.

use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, OpKind};

use super::{Ctx, Table};
use crate::cpu::{flags, SegReg, ECX};
use crate::exception::Fault;

/// Whether condition `cc` holds under `eflags` (SDM Vol. 1 Appendix B,
/// Table B-1). `ConditionCode::None` (an unconditional form) holds.
pub fn cond(eflags: u32, cc: ConditionCode) -> bool {
    let cf = eflags & flags::CF != 0;
    let zf = eflags & flags::ZF != 0;
    let sf = eflags & flags::SF != 0;
    let of = eflags & flags::OF != 0;
    let pf = eflags & flags::PF != 0;
    match cc {
        ConditionCode::None => true,
        ConditionCode::o => of,
        ConditionCode::no => !of,
        ConditionCode::b => cf,
        ConditionCode::ae => !cf,
        ConditionCode::e => zf,
        ConditionCode::ne => !zf,
        ConditionCode::be => cf || zf,
        ConditionCode::a => !cf && !zf,
        ConditionCode::s => sf,
        ConditionCode::ns => !sf,
        ConditionCode::p => pf,
        ConditionCode::np => !pf,
        ConditionCode::l => sf != of,
        ConditionCode::ge => sf == of,
        ConditionCode::le => zf || sf != of,
        ConditionCode::g => !zf && sf == of,
    }
}

/// #GP(0) unless `target` is within the CS limit (SDM Vol. 2 JMP: "If
/// the target operand is beyond the code segment limit").
#[inline]
pub(crate) fn check_target(ctx: &Ctx, target: u32) -> Result<(), Fault> {
    if target > ctx.vm.cpu.seg(SegReg::Cs).limit {
        return Err(Fault::gp(0));
    }
    Ok(())
}

/// Transfer to `target` within CS after the limit check.
#[inline]
pub(crate) fn branch(ctx: &mut Ctx, target: u32) -> Result<(), Fault> {
    check_target(ctx, target)?;
    ctx.next_eip = target;
    Ok(())
}

/// Target of a relative branch. iced-x86 computes it from the EIP it was
/// given (the offset in CS), wrapped to 16 bits for a 16-bit operand size.
#[inline]
fn rel_target(ins: &Instruction) -> u32 {
    match ins.op0_kind() {
        OpKind::NearBranch16 => ins.near_branch16() as u32,
        OpKind::NearBranch32 => ins.near_branch32(),
        _ => ins.near_branch64() as u32,
    }
}

/// The target of a near JMP/CALL and the operand size in bytes. An
/// indirect operand is read here (before any push), zero-extended from
/// 16 bits for a 16-bit operand.
fn near_target(ctx: &mut Ctx, ins: &Instruction) -> Result<(u32, usize), Fault> {
    if ins.has_lock_prefix() {
        return Err(Fault::ud());
    }
    match ins.op0_kind() {
        OpKind::NearBranch16 => Ok((rel_target(ins), 2)),
        OpKind::NearBranch32 | OpKind::NearBranch64 => Ok((rel_target(ins), 4)),
        OpKind::Register | OpKind::Memory => {
            let size = ctx.op_size(ins, 0);
            if size != 2 && size != 4 {
                return Err(Fault::ud());
            }
            Ok((ctx.read_op(ins, 0)?, size))
        }
        _ => Err(Fault::ud()),
    }
}

/// JMP rel / JMP r/m (near).
fn jmp(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    if ins.is_jmp_far() || ins.is_jmp_far_indirect() {
        // Far JMP: the segment family's (by Code).
        return Err(Fault::ud());
    }
    let (target, _) = near_target(ctx, ins)?;
    branch(ctx, target)
}

/// Jcc rel.
fn jcc(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    if ins.has_lock_prefix() {
        return Err(Fault::ud());
    }
    if cond(ctx.vm.cpu.eflags, ins.condition_code()) {
        branch(ctx, rel_target(ins))?;
    }
    Ok(())
}

/// CALL rel / CALL r/m (near): limit check, then push the return EIP (IP
/// for a 16-bit operand), then transfer.
fn call(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    if ins.is_call_far() || ins.is_call_far_indirect() {
        // Far CALL: the segment family's (by Code).
        return Err(Fault::ud());
    }
    let (target, size) = near_target(ctx, ins)?;
    check_target(ctx, target)?;
    let ret = ctx.next_eip;
    ctx.push(ret, size)?;
    ctx.next_eip = target;
    Ok(())
}

/// RET / RET imm16 (near): pop EIP (IP zero-extended for a 16-bit
/// operand), limit check, then release imm16 more bytes of stack.
fn ret(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    if ins.has_lock_prefix() {
        return Err(Fault::ud());
    }
    let size = ctx.osize(ins);
    let target = ctx.peek(0, size)?;
    check_target(ctx, target)?;
    let imm = if ins.op_count() > 0 {
        ins.immediate16() as u32
    } else {
        0
    };
    let sp = ctx.vm.cpu.sp().wrapping_add(size as u32).wrapping_add(imm);
    ctx.vm.cpu.set_sp(sp);
    ctx.next_eip = target;
    Ok(())
}

/// Whether a LOOPcc/JrCXZ uses ECX (32-bit address size) rather than CX.
fn uses_ecx(code: Code) -> bool {
    matches!(
        code,
        Code::Loop_rel8_16_ECX
            | Code::Loop_rel8_32_ECX
            | Code::Loope_rel8_16_ECX
            | Code::Loope_rel8_32_ECX
            | Code::Loopne_rel8_16_ECX
            | Code::Loopne_rel8_32_ECX
            | Code::Jecxz_rel8_16
            | Code::Jecxz_rel8_32
    )
}

/// LOOP / LOOPE / LOOPNE: decrement the count register (CX or ECX by the
/// address size, flags untouched) and branch while it is non-zero (and
/// ZF matches). A taken branch past the CS limit faults with the count
/// unchanged.
fn loop_(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    if ins.has_lock_prefix() {
        return Err(Fault::ud());
    }
    let ecx = uses_ecx(ins.code());
    let cpu = &ctx.vm.cpu;
    let count = if ecx {
        cpu.reg32(ECX).wrapping_sub(1)
    } else {
        cpu.reg16(ECX).wrapping_sub(1) as u32
    };
    let zf = cpu.eflags & flags::ZF != 0;
    let take = count != 0
        && match ins.mnemonic() {
            Mnemonic::Loope => zf,
            Mnemonic::Loopne => !zf,
            _ => true,
        };
    let target = rel_target(ins);
    if take {
        check_target(ctx, target)?;
        ctx.next_eip = target;
    }
    if ecx {
        ctx.vm.cpu.set_reg32(ECX, count);
    } else {
        ctx.vm.cpu.set_reg16(ECX, count as u16);
    }
    Ok(())
}

/// JCXZ / JECXZ: branch if the count register is zero.
fn jcxz(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    if ins.has_lock_prefix() {
        return Err(Fault::ud());
    }
    let count = if uses_ecx(ins.code()) {
        ctx.vm.cpu.reg32(ECX)
    } else {
        ctx.vm.cpu.reg16(ECX) as u32
    };
    if count == 0 {
        branch(ctx, rel_target(ins))?;
    }
    Ok(())
}

pub(super) fn register(t: &mut Table) {
    use Mnemonic as M;
    t.set(&[M::Jmp], jmp);
    t.set(
        &[
            M::Jo,
            M::Jno,
            M::Jb,
            M::Jae,
            M::Je,
            M::Jne,
            M::Jbe,
            M::Ja,
            M::Js,
            M::Jns,
            M::Jp,
            M::Jnp,
            M::Jl,
            M::Jge,
            M::Jle,
            M::Jg,
        ],
        jcc,
    );
    t.set(&[M::Call], call);
    t.set(&[M::Ret], ret);
    t.set(&[M::Loop, M::Loope, M::Loopne], loop_);
    t.set(&[M::Jcxz, M::Jecxz], jcxz);
}
