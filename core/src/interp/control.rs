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
pub fn uses_ecx(code: Code) -> bool {
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

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;
    use iced_x86::ConditionCode as C;

    use super::cond;
    use crate::cpu::{flags, SegReg, Segment, EAX, ECX, ESP};
    use crate::exception::Fault;
    use crate::interp::data::testkit::{flat32, real, CODE};

    #[test]
    fn condition_table() {
        let none = flags::FIXED1;
        let all = [C::o, C::b, C::e, C::be, C::s, C::p, C::l, C::le];
        // With no flag set only the "not" forms, ge and g hold.
        for cc in all {
            assert!(!cond(none, cc), "{cc:?}");
        }
        for cc in [
            C::no,
            C::ae,
            C::ne,
            C::a,
            C::ns,
            C::np,
            C::ge,
            C::g,
            C::None,
        ] {
            assert!(cond(none, cc), "{cc:?}");
        }
        // SF=1 OF=0: less; SF=1 OF=1: greater-or-equal.
        assert!(cond(flags::SF, C::l));
        assert!(!cond(flags::SF | flags::OF, C::l));
        assert!(cond(flags::SF | flags::OF, C::g));
        assert!(!cond(flags::SF | flags::OF | flags::ZF, C::g));
        assert!(cond(flags::ZF, C::le));
        assert!(cond(flags::CF, C::be));
        assert!(!cond(flags::CF, C::a));
        assert!(cond(flags::OF, C::o));
        assert!(cond(flags::PF, C::p));
    }

    #[test]
    fn jcc_taken_and_not() {
        let mut m = flat32();
        m.vm.cpu.eflags |= flags::ZF;
        m.asm(|a| {
            let mut l = a.create_label();
            a.jne(l)?; // 2 bytes, not taken
            a.je(l)?; // taken
            a.nop()?;
            a.set_label(&mut l)?;
            a.nop()
        });
        m.step();
        assert_eq!(m.vm.cpu.eip, CODE + 2);
        m.step();
        assert_eq!(m.vm.cpu.eip, CODE + 5);
    }

    #[test]
    fn jmp_wraps_16bit_ip() {
        // CS base 0x10000; jmp short +0x10 at IP 0xFFFE: next IP 0x10000
        // wraps to 0, target 0x0010.
        let mut m = real();
        *m.vm.cpu.seg_mut(SegReg::Cs) = Segment::real(0x1000);
        m.vm.cpu.eip = 0xFFFE;
        m.bytes(&[0xEB, 0x10]);
        m.step();
        assert_eq!(m.vm.cpu.eip, 0x0010);
        // jz -0x10 at IP 0: target 2 - 0x10 = 0xFFF2.
        m.vm.cpu.eip = 0;
        m.vm.cpu.eflags |= flags::ZF;
        m.bytes(&[0x74, 0xF0]);
        m.step();
        assert_eq!(m.vm.cpu.eip, 0xFFF2);
        // Not taken at 0xFFFE: falls through to IP 0.
        m.vm.cpu.eip = 0xFFFE;
        m.vm.cpu.eflags &= !flags::ZF;
        m.bytes(&[0x74, 0x10]);
        m.step();
        assert_eq!(m.vm.cpu.eip, 0);
    }

    #[test]
    fn loop_counts_with_16bit_wrap() {
        let mut m = real();
        m.vm.cpu.eip = 0x0000;
        m.set(ECX, 0xABCD_0000);
        // loop -4 at IP 0: CX 0 -> FFFF, taken to (2 - 4) & 0xFFFF.
        m.bytes(&[0xE2, 0xFC]);
        m.step();
        assert_eq!(m.r(ECX), 0xABCD_FFFF);
        assert_eq!(m.vm.cpu.eip, 0xFFFE);
        // CX = 1: decremented to 0, not taken.
        m.vm.cpu.eip = 0x100;
        m.set(ECX, 0x0001_0001);
        m.bytes(&[0xE2, 0xFC]);
        m.step();
        assert_eq!(m.r(ECX), 0x0001_0000);
        assert_eq!(m.vm.cpu.eip, 0x102);
        // 67 loop: ECX = 0x10000 -> 0xFFFF, taken.
        m.vm.cpu.eip = 0x200;
        m.set(ECX, 0x0001_0000);
        m.bytes(&[0x67, 0xE2, 0x10]);
        m.step();
        assert_eq!(m.r(ECX), 0xFFFF);
        assert_eq!(m.vm.cpu.eip, 0x213);
    }

    #[test]
    fn loope_loopne() {
        let mut m = flat32();
        m.set(ECX, 5);
        m.vm.cpu.eflags &= !flags::ZF;
        m.asm(|a| {
            let mut l = a.create_label();
            a.set_label(&mut l)?;
            a.loope(l)
        });
        m.step();
        assert_eq!(m.r(ECX), 4);
        assert_eq!(m.vm.cpu.eip, CODE + 2, "ZF = 0: LOOPE falls through");
        m.vm.cpu.eip = CODE;
        m.bytes(&[0xE0, 0xFE]); // loopne self
        m.step();
        assert_eq!(m.r(ECX), 3);
        assert_eq!(m.vm.cpu.eip, CODE);
    }

    #[test]
    fn jcxz_by_address_size() {
        let mut m = flat32();
        m.set(ECX, 0x0001_0000);
        m.bytes(&[0xE3, 0x10]); // jecxz: ECX != 0
        m.step();
        assert_eq!(m.vm.cpu.eip, CODE + 2);
        m.bytes(&[0x67, 0xE3, 0x10]); // jcxz: CX == 0
        m.step();
        assert_eq!(m.vm.cpu.eip, CODE + 2 + 3 + 0x10);
    }

    #[test]
    fn call_ret_32() {
        let mut m = flat32();
        m.asm(|a| {
            let mut f = a.create_label();
            a.call(f)?; // 5 bytes
            a.nop()?;
            a.set_label(&mut f)?;
            a.ret_1(8i32)
        });
        m.step();
        assert_eq!(m.vm.cpu.eip, CODE + 6);
        assert_eq!(m.r(ESP), 0x7FFC);
        assert_eq!(m.rd(0x7FFC, 4), CODE + 5);
        m.step();
        assert_eq!(m.vm.cpu.eip, CODE + 5);
        assert_eq!(m.r(ESP), 0x8000 + 8);
    }

    #[test]
    fn call_16bit_operand_in_32bit_code() {
        // 66 E8 rel16: pushes IP (2 bytes), EIP truncated to 16 bits.
        let mut m = flat32();
        m.vm.cpu.eip = 0x1_0000;
        m.bytes(&[0x66, 0xE8, 0x00, 0x10]);
        m.step();
        assert_eq!(m.r(ESP), 0x7FFE);
        assert_eq!(m.rd(0x7FFE, 2), 0x0004);
        assert_eq!(m.vm.cpu.eip, 0x1004);
        // 66 C3: pops 2 bytes.
        m.bytes(&[0x66, 0xC3]);
        m.step();
        assert_eq!(m.vm.cpu.eip, 0x0004);
        assert_eq!(m.r(ESP), 0x8000);
    }

    #[test]
    fn call_32bit_operand_in_real_mode() {
        let mut m = real();
        m.bytes(&[0x66, 0xE8, 0x10, 0x00, 0x00, 0x00]);
        m.step();
        assert_eq!(m.r(ESP), 0x7FFC);
        assert_eq!(m.rd(0x7FFC, 4), CODE + 6);
        assert_eq!(m.vm.cpu.eip, CODE + 0x16);
    }

    #[test]
    fn indirect_jmp_call() {
        let mut m = flat32();
        m.set(EAX, 0x1234_5678);
        m.bytes(&[0x66, 0xFF, 0xE0]); // jmp ax
        m.step();
        assert_eq!(m.vm.cpu.eip, 0x5678);
        // call [esp]: the target is read with the old ESP.
        m.wr(0x8000, 4, 0x3000);
        m.asm(|a| a.call(dword_ptr(esp)));
        m.step();
        assert_eq!(m.vm.cpu.eip, 0x3000);
        assert_eq!(m.rd(0x7FFC, 4), 0x5678 + 3);
    }

    #[test]
    fn target_beyond_cs_limit_is_gp_before_push() {
        let mut m = flat32();
        m.vm.cpu.seg_mut(SegReg::Cs).limit = 0xFFFF;
        m.set(EAX, 0x2_0000);
        m.asm(|a| a.call(eax));
        assert_eq!(m.exec(), Err(Fault::gp(0)));
        assert_eq!(m.r(ESP), 0x8000);
        assert_eq!(m.rd(0x7FFC, 4), 0);
        assert_eq!(m.vm.cpu.eip, CODE);
        m.asm(|a| a.jmp(eax));
        assert_eq!(m.exec(), Err(Fault::gp(0)));
        // RET to beyond the limit: ESP unchanged.
        m.wr(0x8000, 4, 0x1_0000);
        m.asm(|a| a.ret());
        assert_eq!(m.exec(), Err(Fault::gp(0)));
        assert_eq!(m.r(ESP), 0x8000);
        // Real mode, 66 jmp rel32 past 0xFFFF.
        let mut m = real();
        m.bytes(&[0x66, 0xE9, 0x00, 0x00, 0x01, 0x00]);
        assert_eq!(m.exec(), Err(Fault::gp(0)));
        // LOOP taken past the limit leaves CX alone.
        let mut m = real();
        m.vm.cpu.seg_mut(SegReg::Cs).limit = 0x1FFF;
        m.set(ECX, 2);
        m.bytes(&[0x66, 0x67, 0xE2, 0x7F]);
        m.vm.cpu.eip = 0x1FF0;
        m.bytes(&[0xE2, 0x7F]);
        assert_eq!(m.exec(), Err(Fault::gp(0)));
        assert_eq!(m.r(ECX), 2);
    }

    #[test]
    fn recursive_factorial_real_mode() {
        // ax = fact(5) with ENTER/LEAVE frames, CALL/RET, Jcc, PUSH/POP.
        let mut m = real();
        m.asm(|a| {
            let mut fact = a.create_label();
            let mut done = a.create_label();
            let mut halt = a.create_label();
            a.mov(ax, 5u32)?;
            a.call(fact)?;
            a.set_label(&mut halt)?;
            a.jmp(halt)?;
            a.set_label(&mut fact)?;
            a.enter(0u32, 0u32)?;
            a.cmp(ax, 1u32)?;
            a.jbe(done)?;
            a.push(ax)?;
            a.dec(ax)?;
            a.call(fact)?;
            a.pop(cx)?;
            a.mul(cx)?;
            a.set_label(&mut done)?;
            a.leave()?;
            a.ret()
        });
        let halt = CODE + 6;
        for _ in 0..200 {
            if m.vm.cpu.eip == halt {
                break;
            }
            m.step();
        }
        assert_eq!(m.vm.cpu.eip, halt);
        assert_eq!(m.r(EAX) & 0xFFFF, 120);
        assert_eq!(m.r(ESP), 0x8000);
    }

    #[test]
    fn ret_imm_16bit_stack_wrap() {
        let mut m = real();
        m.set(ESP, 0xFFFE);
        m.wr(0xFFFE, 2, 0x2000);
        m.asm(|a| a.ret_1(4i32));
        m.step();
        assert_eq!(m.vm.cpu.eip, 0x2000);
        assert_eq!(m.r(ESP), 0x0004);
    }
}
