//! Integer ALU instructions: ADD ADC SUB SBB AND OR XOR CMP TEST (two
//! operands), INC DEC NEG NOT (one operand) and the undocumented SALC.
//! Flag arithmetic lives in `flags`; shifts, multiply/divide, BCD and bit
//! instructions have their own files.
//!
//! LOCK is legal only on the read-modify-write forms with a memory
//! destination (SDM Vol. 2 LOCK); anywhere else it is #UD.

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::flags::{
    add_flags, carry, dec_flags, inc_flags, logic_flags, neg_flags, set_status, sub_flags, ARITH,
    INC_DEC,
};
use super::operand::mask;
use super::{Ctx, Table};
use crate::cpu::CF;
use crate::exception::Fault;

/// #UD for a LOCK prefix unless the instruction is lockable and its
/// destination (operand 0) is memory (SDM Vol. 2 LOCK: "#UD if the LOCK
/// prefix is used with an instruction not listed or the destination is not
/// a memory operand").
#[inline]
pub fn check_lock(ins: &Instruction, lockable: bool) -> Result<(), Fault> {
    if ins.has_lock_prefix() && !(lockable && ins.op0_kind() == OpKind::Memory) {
        return Err(Fault::ud());
    }
    Ok(())
}

/// ADD ADC SUB SBB AND OR XOR CMP TEST: `dst op= src`.
fn binary(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let m = ins.mnemonic();
    let writes = !matches!(m, Mnemonic::Cmp | Mnemonic::Test);
    check_lock(ins, writes)?;
    let size = ctx.op_size(ins, 0);
    let a = if writes {
        ctx.read_rmw(ins)?
    } else {
        ctx.read_op(ins, 0)?
    };
    let b = ctx.read_op(ins, 1)? & mask(size);
    let cf = carry(&ctx.vm.cpu);
    let (r, f) = match m {
        Mnemonic::Add => add_flags(a, b, 0, size),
        Mnemonic::Adc => add_flags(a, b, cf, size),
        Mnemonic::Sub | Mnemonic::Cmp => sub_flags(a, b, 0, size),
        Mnemonic::Sbb => sub_flags(a, b, cf, size),
        Mnemonic::And | Mnemonic::Test => (a & b, logic_flags(a & b, size)),
        Mnemonic::Or => (a | b, logic_flags(a | b, size)),
        Mnemonic::Xor => (a ^ b, logic_flags(a ^ b, size)),
        _ => return Err(Fault::ud()),
    };
    if writes {
        ctx.write_op(ins, 0, r)?;
    }
    set_status(&mut ctx.vm.cpu, ARITH, f);
    Ok(())
}

/// INC DEC NEG NOT on operand 0.
fn unary(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, true)?;
    let size = ctx.op_size(ins, 0);
    let a = ctx.read_rmw(ins)?;
    let (r, fmask, f) = match ins.mnemonic() {
        Mnemonic::Inc => {
            let (r, f) = inc_flags(a, size);
            (r, INC_DEC, f)
        }
        Mnemonic::Dec => {
            let (r, f) = dec_flags(a, size);
            (r, INC_DEC, f)
        }
        Mnemonic::Neg => {
            let (r, f) = neg_flags(a, size);
            (r, ARITH, f)
        }
        // NOT affects no flags.
        Mnemonic::Not => (!a & mask(size), 0, 0),
        _ => return Err(Fault::ud()),
    };
    ctx.write_op(ins, 0, r)?;
    set_status(&mut ctx.vm.cpu, fmask, f);
    Ok(())
}

/// SALC (D6, undocumented): AL = CF ? 0xFF : 0x00; no flags change.
fn salc(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let al = if ctx.vm.cpu.eflags & CF != 0 { 0xFF } else { 0 };
    ctx.vm.cpu.set_reg8(crate::cpu::EAX, al);
    Ok(())
}

pub(super) fn register(t: &mut Table) {
    t.set(
        &[
            Mnemonic::Add,
            Mnemonic::Adc,
            Mnemonic::Sub,
            Mnemonic::Sbb,
            Mnemonic::And,
            Mnemonic::Or,
            Mnemonic::Xor,
            Mnemonic::Cmp,
            Mnemonic::Test,
        ],
        binary,
    );
    t.set(
        &[Mnemonic::Inc, Mnemonic::Dec, Mnemonic::Neg, Mnemonic::Not],
        unary,
    );
    t.set(&[Mnemonic::Salc], salc);
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::super::testutil::{exec, load_bytes, run, vm16, vm32, DATA};
    use crate::cpu::{AF, CF, EAX, EBX, ECX, EDX, FIXED1, OF, PF, SF, STATUS, ZF};
    use crate::exception::vector;

    fn status(vm: &crate::vm::Vm) -> u32 {
        vm.cpu.eflags & STATUS
    }

    #[test]
    fn add_sizes_and_flags() {
        let mut vm = vm32();
        vm.cpu.set_reg32(EAX, 0x1234_56FF);
        vm.cpu.set_reg32(EBX, 0xFFFF_FF01);
        run(&mut vm, 32, |a| a.add(al, bl)).unwrap();
        // 0xFF + 0x01 = 0x100: AL = 0, upper bytes of EAX untouched.
        assert_eq!(vm.cpu.reg32(EAX), 0x1234_5600);
        assert_eq!(status(&vm), CF | ZF | AF | PF);

        run(&mut vm, 32, |a| a.add(ax, 0x7FFF)).unwrap();
        // 0x5600 + 0x7FFF = 0xD5FF: SF, OF (pos + pos = neg), PF (0xFF).
        assert_eq!(vm.cpu.reg32(EAX), 0x1234_D5FF);
        assert_eq!(status(&vm), SF | OF | PF);

        vm.cpu.set_reg32(ECX, 0x8000_0000);
        run(&mut vm, 32, |a| a.add(ecx, ecx)).unwrap();
        assert_eq!(vm.cpu.reg32(ECX), 0);
        assert_eq!(status(&vm), CF | OF | ZF | PF);
    }

    #[test]
    fn adc_sbb_use_carry() {
        let mut vm = vm32();
        vm.cpu.eflags = FIXED1 | CF;
        vm.cpu.set_reg32(EAX, 0xFFFF_FFFF);
        run(&mut vm, 32, |a| a.adc(eax, 0)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0);
        assert_eq!(status(&vm), CF | ZF | PF | AF);
        // CF still 1: 0 - 0 - 1 = 0xFFFF at 16 bits.
        run(&mut vm, 32, |a| a.sbb(ax, 0)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0xFFFF);
        assert_eq!(status(&vm), CF | SF | AF | PF);
        // SBB with CF=0: 0x10 - 0x01 = 0x0F, AF (borrow from bit 4).
        vm.cpu.eflags = FIXED1;
        vm.cpu.set_reg32(EDX, 0x10);
        run(&mut vm, 32, |a| a.sbb(dl, 1)).unwrap();
        assert_eq!(vm.cpu.reg32(EDX), 0x0F);
        assert_eq!(status(&vm), AF | PF);
    }

    #[test]
    fn sub_cmp_and_memory_forms() {
        let mut vm = vm32();
        vm.mem.write_u32(DATA as u64, 5);
        vm.cpu.set_reg32(EBX, DATA);
        run(&mut vm, 32, |a| a.sub(dword_ptr(ebx), 6)).unwrap();
        assert_eq!(vm.mem.read_u32(DATA as u64), 0xFFFF_FFFF);
        assert_eq!(status(&vm), CF | SF | AF | PF);
        // CMP leaves the destination alone.
        vm.cpu.set_reg32(EAX, 0x80);
        run(&mut vm, 32, |a| a.cmp(byte_ptr(ebx), al)).unwrap();
        assert_eq!(vm.mem.read_u32(DATA as u64), 0xFFFF_FFFF);
        // 0xFF - 0x80 = 0x7F: no borrow; OF clear (neg - neg).
        assert_eq!(status(&vm), 0);
        vm.cpu.set_reg32(EAX, 0x7F);
        run(&mut vm, 32, |a| a.cmp(al, byte_ptr(ebx))).unwrap();
        // 0x7F - 0xFF = 0x80: borrow, OF (pos - neg = neg), SF.
        assert_eq!(status(&vm), CF | OF | SF);
        assert_eq!(vm.cpu.reg32(EAX), 0x7F);
    }

    #[test]
    fn logic_clears_cf_of() {
        let mut vm = vm32();
        vm.cpu.eflags = FIXED1 | CF | OF | AF;
        vm.cpu.set_reg32(EAX, 0xF0F0_F0F0);
        run(&mut vm, 32, |a| a.and(eax, 0x0F0F_0F0F)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0);
        assert_eq!(status(&vm), ZF | PF);
        run(&mut vm, 32, |a| a.or(ax, 0x8001)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x8001);
        assert_eq!(status(&vm), SF);
        run(&mut vm, 32, |a| a.xor(al, 0x02)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x8003);
        assert_eq!(status(&vm), PF);
        vm.cpu.eflags |= CF;
        run(&mut vm, 32, |a| a.test(eax, 0x8000)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x8003);
        // 0x8000 & 0x8003 = 0x8000: not SF at 32 bits, low byte 0 -> PF.
        assert_eq!(status(&vm), PF);
    }

    #[test]
    fn inc_dec_keep_cf() {
        let mut vm = vm32();
        vm.cpu.eflags = FIXED1 | CF;
        vm.cpu.set_reg32(EAX, 0x7F);
        run(&mut vm, 32, |a| a.inc(al)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x80);
        assert_eq!(status(&vm), CF | OF | SF | AF);
        vm.cpu.eflags = FIXED1;
        run(&mut vm, 32, |a| a.dec(eax)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x7F);
        assert_eq!(status(&vm), AF);
        // 16-bit INC in 16-bit code (one-byte 0x40 form).
        let mut vm = vm16();
        vm.cpu.set_reg32(EAX, 0x1_FFFF);
        run(&mut vm, 16, |a| a.inc(ax)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x1_0000);
        assert_eq!(status(&vm), ZF | PF | AF);
    }

    #[test]
    fn neg_not() {
        let mut vm = vm32();
        vm.cpu.set_reg32(EAX, 0);
        run(&mut vm, 32, |a| a.neg(eax)).unwrap();
        assert_eq!(status(&vm), ZF | PF);
        vm.cpu.set_reg32(EAX, 0x8000);
        run(&mut vm, 32, |a| a.neg(ax)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x8000);
        assert_eq!(status(&vm), CF | OF | SF | PF);
        vm.cpu.set_reg32(EAX, 5);
        run(&mut vm, 32, |a| a.neg(al)).unwrap();
        // 0 - 5 = 0xFB: CF, SF, AF; 0xFB has seven ones -> no PF.
        assert_eq!(vm.cpu.reg32(EAX), 0xFB);
        assert_eq!(status(&vm), CF | SF | AF);
        let before = vm.cpu.eflags;
        vm.mem.write_u32(DATA as u64, 0x1234_5678);
        run(&mut vm, 32, |a| a.not(dword_ptr(DATA))).unwrap();
        assert_eq!(vm.mem.read_u32(DATA as u64), 0xEDCB_A987);
        assert_eq!(vm.cpu.eflags, before);
    }

    #[test]
    fn salc_copies_cf() {
        let mut vm = vm32();
        vm.cpu.set_reg32(EAX, 0x1234_5600);
        vm.cpu.eflags = FIXED1 | CF;
        let end = load_bytes(&mut vm, &[0xD6, 0xD6]);
        exec(&mut vm).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x1234_56FF);
        vm.cpu.eflags = FIXED1;
        exec(&mut vm).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x1234_5600);
        assert_eq!(vm.cpu.eip, end);
    }

    #[test]
    fn lock_rules() {
        let mut vm = vm32();
        vm.cpu.set_reg32(EBX, DATA);
        vm.mem.write_u32(DATA as u64, 1);
        // LOCK ADD [EBX], EAX is legal.
        vm.cpu.set_reg32(EAX, 2);
        load_bytes(&mut vm, &[0xF0, 0x01, 0x03]);
        exec(&mut vm).unwrap();
        assert_eq!(vm.mem.read_u32(DATA as u64), 3);
        // LOCK ADD EBX, EAX (register destination) is #UD.
        load_bytes(&mut vm, &[0xF0, 0x01, 0xC3]);
        assert_eq!(exec(&mut vm).unwrap_err().vector, vector::UD);
        // LOCK CMP [EBX], EAX is #UD.
        load_bytes(&mut vm, &[0xF0, 0x39, 0x03]);
        assert_eq!(exec(&mut vm).unwrap_err().vector, vector::UD);
        assert_eq!(vm.mem.read_u32(DATA as u64), 3);
    }

    #[test]
    fn memory_fault_commits_nothing() {
        // Real mode, DS limit 0xFFFF: a word at 0xFFFF crosses the limit.
        let mut vm = vm16();
        vm.cpu.eflags = FIXED1 | CF;
        vm.cpu.set_reg32(EBX, 0xFFFF);
        vm.cpu.set_reg32(EAX, 1);
        let r = run(&mut vm, 16, |a| a.add(word_ptr(bx), ax));
        assert_eq!(r.unwrap_err().vector, vector::GP);
        assert_eq!(vm.cpu.eflags, FIXED1 | CF);
        assert_eq!(vm.cpu.eip, super::super::testutil::CODE);
    }

    #[test]
    fn program_through_interpreter_step() {
        use crate::interp::{testutil::load, Interpreter, Step};
        // 64-bit add and subtract with carry chains, in 16-bit real mode
        // with 32-bit operands (0x66 prefixes).
        let mut vm = vm16();
        vm.mem.write_u32(DATA as u64, 0xFFFF_FFFF);
        vm.mem.write_u32(DATA as u64 + 4, 0x0000_0001);
        vm.cpu.set_reg32(EAX, 1);
        vm.cpu.set_reg32(EDX, 0x5555_5555);
        let end = load(&mut vm, 16, |a| {
            a.xor(edx, edx)?;
            a.add(eax, dword_ptr(DATA))?; // 1 + 0xFFFFFFFF: CF
            a.adc(edx, dword_ptr(DATA + 4))?; // 0 + 1 + 1
            a.sub(eax, 1)?; // 0 - 1: borrow
            a.sbb(edx, 0)?; // 2 - 0 - 1
            a.cmp(edx, 1)
        });
        let mut interp = Interpreter::new();
        while vm.cpu.eip != end {
            assert_eq!(interp.step(&mut vm), Step::Retired);
        }
        assert_eq!(vm.cpu.reg32(EAX), 0xFFFF_FFFF);
        assert_eq!(vm.cpu.reg32(EDX), 1);
        assert_eq!(status(&vm), ZF | PF);
        assert_eq!(interp.stats.instructions, 6);
    }
}
