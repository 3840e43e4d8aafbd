//! Specialised handlers for the hottest 32-bit instruction forms, chosen
//! once when a block is decoded (`select`). Each does exactly what the
//! generic family handler does for that form (same operands, same flags,
//! same faults in the same order) with the operand-kind dispatch resolved
//! in advance: ALU and INC/DEC on 32-bit registers and immediates, and MOV
//! between 32-bit registers, immediates and memory. Anything else, and any
//! form with a LOCK prefix (which must raise #UD), keeps its generic
//! handler. The tests compare both on the same inputs.

use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, OpKind, Register};

use super::control::cond;
use super::flags::{
    add_flags, dec_flags, inc_flags, logic_flags, set_status, sub_flags, ARITH, INC_DEC,
};
use super::{Ctx, Handler};
use crate::cpu::CF;
use crate::exception::Fault;

/// Index of a 32-bit GPR (`EAX` = 0 .. `EDI` = 7).
#[inline]
fn gpr(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::EAX as usize) & 7
}

/// Binary operations, as const-generic selectors.
const ADD: u8 = 0;
const OR: u8 = 1;
const ADC: u8 = 2;
const SBB: u8 = 3;
const AND: u8 = 4;
const SUB: u8 = 5;
const XOR: u8 = 6;
const CMP: u8 = 7;
const TEST: u8 = 8;

/// `a OP b` at 32 bits with its status flags, as `alu::binary` computes
/// them.
#[inline(always)]
fn alu<const OP: u8>(ctx: &mut Ctx, a: u32, b: u32) -> (u32, u32) {
    let cf = ctx.vm.cpu.eflags & CF;
    match OP {
        ADD => add_flags(a, b, 0, 4),
        ADC => add_flags(a, b, cf, 4),
        SUB | CMP => sub_flags(a, b, 0, 4),
        SBB => sub_flags(a, b, cf, 4),
        AND | TEST => (a & b, logic_flags(a & b, 4)),
        OR => (a | b, logic_flags(a | b, 4)),
        _ => (a ^ b, logic_flags(a ^ b, 4)),
    }
}

/// `r32 OP= r32`.
fn alu_rr<const OP: u8>(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let d = gpr(ins.op0_register());
    let a = ctx.vm.cpu.gpr[d] as u32;
    let b = ctx.vm.cpu.gpr[gpr(ins.op1_register())] as u32;
    let (r, f) = alu::<OP>(ctx, a, b);
    if OP != CMP && OP != TEST {
        ctx.vm.cpu.set_reg32(d, r);
    }
    set_status(&mut ctx.vm.cpu, ARITH, f);
    Ok(())
}

/// `r32 OP= imm` (imm32 or sign-extended imm8).
fn alu_ri<const OP: u8>(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let d = gpr(ins.op0_register());
    let a = ctx.vm.cpu.gpr[d] as u32;
    let b = ins.immediate(1) as u32;
    let (r, f) = alu::<OP>(ctx, a, b);
    if OP != CMP && OP != TEST {
        ctx.vm.cpu.set_reg32(d, r);
    }
    set_status(&mut ctx.vm.cpu, ARITH, f);
    Ok(())
}

/// INC r32 / DEC r32 (CF unchanged).
fn incdec_r<const DEC: bool>(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let d = gpr(ins.op0_register());
    let a = ctx.vm.cpu.gpr[d] as u32;
    let (r, f) = if DEC {
        dec_flags(a, 4)
    } else {
        inc_flags(a, 4)
    };
    ctx.vm.cpu.set_reg32(d, r);
    set_status(&mut ctx.vm.cpu, INC_DEC, f);
    Ok(())
}

/// MOV r32, r32.
fn mov_rr(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let v = ctx.vm.cpu.gpr[gpr(ins.op1_register())] as u32;
    ctx.vm.cpu.set_reg32(gpr(ins.op0_register()), v);
    Ok(())
}

/// MOV r32, imm32.
fn mov_ri(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    ctx.vm
        .cpu
        .set_reg32(gpr(ins.op0_register()), ins.immediate32());
    Ok(())
}

/// MOV r32, m32.
fn mov_rm(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let seg = ctx.mem_seg(ins);
    let off = ctx.ea(ins);
    let v = ctx.read_mem(seg, off, 4)?;
    ctx.vm.cpu.set_reg32(gpr(ins.op0_register()), v);
    Ok(())
}

/// MOV m32, r32.
fn mov_mr(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let v = ctx.vm.cpu.gpr[gpr(ins.op1_register())] as u32;
    let seg = ctx.mem_seg(ins);
    let off = ctx.ea(ins);
    ctx.write_mem(seg, off, 4, v)
}

/// MOV m32, imm32.
fn mov_mi(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let seg = ctx.mem_seg(ins);
    let off = ctx.ea(ins);
    ctx.write_mem(seg, off, 4, ins.immediate32())
}

/// PUSH r32 (PUSH ESP pushes the value before the decrement).
fn push_r(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let v = ctx.vm.cpu.gpr[gpr(ins.op0_register())] as u32;
    ctx.push(v, 4)
}

/// POP r32 (POP ESP leaves the popped value in ESP).
fn pop_r(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let v = ctx.pop(4)?;
    ctx.vm.cpu.set_reg32(gpr(ins.op0_register()), v);
    Ok(())
}

/// CALL rel32 in 32-bit code, as `control::call`: target limit check,
/// then push the return EIP.
fn call_rel32(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let target = ins.near_branch32();
    if target > ctx.vm.cpu.seg(crate::cpu::SegReg::Cs).limit {
        return Err(Fault::gp(0));
    }
    let ret = ctx.next_eip;
    ctx.push(ret, 4)?;
    ctx.next_eip = target;
    Ok(())
}

/// RET (no immediate) with a 32-bit operand in 32-bit code, as
/// `control::ret`.
fn ret32(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    let target = ctx.peek(0, 4)?;
    if target > ctx.vm.cpu.seg(crate::cpu::SegReg::Cs).limit {
        return Err(Fault::gp(0));
    }
    let sp = ctx.vm.cpu.sp().wrapping_add(4);
    ctx.vm.cpu.set_sp(sp);
    ctx.next_eip = target;
    Ok(())
}

/// Condition codes by their encoding (the low nibble of 0x7x / 0x0F 8x).
const CCS: [ConditionCode; 16] = [
    ConditionCode::o,
    ConditionCode::no,
    ConditionCode::b,
    ConditionCode::ae,
    ConditionCode::e,
    ConditionCode::ne,
    ConditionCode::be,
    ConditionCode::a,
    ConditionCode::s,
    ConditionCode::ns,
    ConditionCode::p,
    ConditionCode::np,
    ConditionCode::l,
    ConditionCode::ge,
    ConditionCode::le,
    ConditionCode::g,
];

/// Jcc rel8/rel32 with a 32-bit operand size, as `control::jcc`: when
/// taken, the target is checked against the CS limit (#GP(0)).
fn jcc32<const CC: usize>(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    if cond(ctx.vm.cpu.eflags, CCS[CC]) {
        let target = ins.near_branch32();
        if target > ctx.vm.cpu.seg(crate::cpu::SegReg::Cs).limit {
            return Err(Fault::gp(0));
        }
        ctx.next_eip = target;
    }
    Ok(())
}

fn jcc_handler(cc: ConditionCode) -> Option<Handler> {
    macro_rules! pick {
        ($($n:literal)*) => {
            $(if CCS[$n] == cc {
                return Some(jcc32::<$n> as Handler);
            })*
        };
    }
    pick!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    None
}

fn is_r32(ins: &Instruction, n: u32) -> bool {
    ins.op_kind(n) == OpKind::Register && ins.op_register(n).is_gpr32()
}

fn alu_handler(m: Mnemonic, rr: bool) -> Option<Handler> {
    macro_rules! pick {
        ($op:expr) => {
            if rr {
                alu_rr::<$op> as Handler
            } else {
                alu_ri::<$op> as Handler
            }
        };
    }
    Some(match m {
        Mnemonic::Add => pick!(ADD),
        Mnemonic::Or => pick!(OR),
        Mnemonic::Adc => pick!(ADC),
        Mnemonic::Sbb => pick!(SBB),
        Mnemonic::And => pick!(AND),
        Mnemonic::Sub => pick!(SUB),
        Mnemonic::Xor => pick!(XOR),
        Mnemonic::Cmp => pick!(CMP),
        Mnemonic::Test => pick!(TEST),
        _ => return None,
    })
}

/// A specialised handler for `ins` if it has one of the forms above;
/// `generic` (the table's handler) otherwise.
pub fn select(ins: &Instruction, generic: Option<Handler>) -> Option<Handler> {
    generic?;
    if ins.has_lock_prefix() || ins.has_xacquire_prefix() || ins.has_xrelease_prefix() {
        return generic;
    }
    let code32 = ins.code_size() == iced_x86::CodeSize::Code32;
    let fast = match ins.code() {
        Code::Mov_r32_rm32 | Code::Mov_rm32_r32 => match (is_r32(ins, 0), is_r32(ins, 1)) {
            (true, true) => Some(mov_rr as Handler),
            (true, false) if ins.op1_kind() == OpKind::Memory => Some(mov_rm as Handler),
            (false, true) if ins.op0_kind() == OpKind::Memory => Some(mov_mr as Handler),
            _ => None,
        },
        Code::Push_r32 | Code::Push_rm32 if is_r32(ins, 0) => Some(push_r as Handler),
        Code::Pop_r32 | Code::Pop_rm32 if is_r32(ins, 0) => Some(pop_r as Handler),
        Code::Call_rel32_32 if code32 && ins.op0_kind() == OpKind::NearBranch32 => {
            Some(call_rel32 as Handler)
        }
        Code::Retnd if code32 && ins.op_count() == 0 => Some(ret32 as Handler),
        Code::Mov_EAX_moffs32 => Some(mov_rm as Handler),
        Code::Mov_moffs32_EAX => Some(mov_mr as Handler),
        Code::Mov_r32_imm32 | Code::Mov_rm32_imm32 if is_r32(ins, 0) => Some(mov_ri as Handler),
        Code::Mov_rm32_imm32 if ins.op0_kind() == OpKind::Memory => Some(mov_mi as Handler),
        Code::Inc_r32 | Code::Inc_rm32 if is_r32(ins, 0) => Some(incdec_r::<false> as Handler),
        Code::Dec_r32 | Code::Dec_rm32 if is_r32(ins, 0) => Some(incdec_r::<true> as Handler),
        _ if ins.op_count() == 1
            && ins.op0_kind() == OpKind::NearBranch32
            && ins.is_jcc_short_or_near() =>
        {
            jcc_handler(ins.condition_code())
        }
        _ if ins.op_count() == 2 && is_r32(ins, 0) => {
            if is_r32(ins, 1) {
                alu_handler(ins.mnemonic(), true)
            } else if matches!(ins.op1_kind(), OpKind::Immediate32 | OpKind::Immediate8to32) {
                alu_handler(ins.mnemonic(), false)
            } else {
                None
            }
        }
        _ => None,
    };
    fast.or(generic)
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;
    use iced_x86::{Decoder, DecoderOptions};

    use super::super::testutil::{load, vm32, CODE};
    use super::super::{Ctx, Table};
    use super::*;
    use crate::vm::Vm;

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 16) as u32
        }
        /// Values biased towards the edges where flags change.
        fn operand(&mut self) -> u32 {
            match self.next() % 6 {
                0 => 0,
                1 => 0xFFFF_FFFF,
                2 => 0x7FFF_FFFF,
                3 => 0x8000_0000,
                4 => self.next() & 0x1F,
                _ => self.next(),
            }
        }
    }

    /// Run the instruction at CODE with `h`; return the state and result.
    fn exec_with(vm: &mut Vm, ins: &Instruction, h: Handler) -> Result<(), Fault> {
        let mut ctx = Ctx {
            vm,
            eip: CODE,
            next_eip: ins.next_ip32(),
            shadow: false,
            rep_batch: 1,
        };
        h(&mut ctx, ins)
    }

    /// For each form, compare the fast handler with the generic one from
    /// many random register, flag and memory states.
    #[test]
    fn fast_handlers_match_the_generic_ones() {
        type Asm = fn(&mut CodeAssembler) -> Result<(), IcedError>;
        let forms: &[Asm] = &[
            |a| a.add(eax, ebx),
            |a| a.or(ecx, edx),
            |a| a.adc(esi, edi),
            |a| a.sbb(ebp, esp),
            |a| a.and(eax, eax),
            |a| a.sub(ebx, ecx),
            |a| a.xor(edx, eax),
            |a| a.cmp(edi, esi),
            |a| a.test(eax, ecx),
            |a| a.add(eax, 0x1234_5678u32),
            |a| a.adc(ebx, -3i32),
            |a| a.sbb(ecx, 0x8000_0000u32),
            |a| a.sub(edx, 1),
            |a| a.cmp(esi, -1i32),
            |a| a.and(edi, 0xF0F0_F0F0u32),
            |a| a.or(ebp, 0x80),
            |a| a.xor(esp, 0x7F),
            |a| a.test(eax, 0x8000_0001u32),
            |a| a.inc(eax),
            |a| a.dec(ebx),
            |a| a.inc(dword_ptr(0) + ecx),
            |a| a.mov(eax, ebx),
            |a| a.mov(edx, 0xDEAD_BEEFu32),
            |a| a.mov(esi, dword_ptr(ebx + 0x10)),
            |a| a.mov(dword_ptr(ecx * 4 + 0x8000), edi),
            |a| a.mov(dword_ptr(ecx), 0x1234_5678u32),
            |a| a.mov(dword_ptr(0x8004), eax),
            |a| a.mov(eax, dword_ptr(0x8008)),
            |a| a.push(ebx),
            |a| a.push(esp),
            |a| a.pop(ecx),
            |a| a.pop(esp),
            |a| a.ret(),
            |a| a.call(0x1_0000u64),
        ];
        let table = Table::build();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut specialised = 0;
        for (i, form) in forms.iter().enumerate() {
            let mut vm = vm32();
            load(&mut vm, 32, form);
            let mut bytes = [0u8; 15];
            vm.mem.read(CODE as u64, &mut bytes);
            let ins = Decoder::with_ip(32, &bytes, CODE as u64, DecoderOptions::NONE).decode();
            let generic = table.lookup(&ins).expect("generic handler");
            let fast = select(&ins, Some(generic)).expect("handler");
            if fast as usize != generic as usize {
                specialised += 1;
            }
            for _ in 0..300 {
                let mut a = vm32();
                for r in 0..8 {
                    // Keep addresses inside the 1 MiB of RAM most of the
                    // time; sometimes let them fault.
                    let v = if rng.next().is_multiple_of(8) {
                        rng.operand()
                    } else {
                        rng.operand() & 0x3FFF
                    };
                    a.cpu.set_reg32(r, v);
                }
                a.cpu.eflags = (a.cpu.eflags & !0x8D5) | (rng.next() & 0x8D5);
                for k in 0..16u64 {
                    a.mem.write_u32(0x8000 + 4 * k, rng.operand());
                }
                let mut b = vm32();
                b.cpu = a.cpu.clone();
                let mut ram = vec![0u8; 0x20000];
                a.mem.read(0, &mut ram);
                b.mem.write(0, &ram);
                let ra = exec_with(&mut a, &ins, generic);
                let rb = exec_with(&mut b, &ins, fast);
                assert_eq!(ra, rb, "form {i}: {ins}");
                assert_eq!(a.cpu, b.cpu, "form {i}: {ins}");
                let mut ram_b = vec![0u8; 0x20000];
                a.mem.read(0, &mut ram);
                b.mem.read(0, &mut ram_b);
                assert!(ram == ram_b, "form {i}: {ins}: memory differs");
            }
        }
        // All but INC m32 have a fast form.
        assert_eq!(specialised, forms.len() - 1);
    }

    #[test]
    fn fast_jcc_matches_the_generic_one() {
        let table = Table::build();
        let mut rng = Rng(0x1234_5678_9ABC_DEF1);
        for cc in 0..16u8 {
            // 7x 40: jcc short +0x40; 0F 8x: jcc near -0x2000.
            let forms: [&[u8]; 2] = [
                &[0x70 + cc, 0x40],
                &[0x0F, 0x80 + cc, 0x00, 0xE0, 0xFF, 0xFF],
            ];
            for bytes in forms {
                let ins = Decoder::with_ip(32, bytes, 0x3000, DecoderOptions::NONE).decode();
                let generic = table.lookup(&ins).expect("jcc handler");
                let fast = select(&ins, Some(generic)).expect("handler");
                assert_ne!(fast as usize, generic as usize, "{ins}");
                for _ in 0..64 {
                    let mut a = vm32();
                    a.cpu.eflags = (a.cpu.eflags & !0x8D5) | (rng.next() & 0x8D5);
                    if rng.next().is_multiple_of(4) {
                        a.cpu.seg_mut(crate::cpu::SegReg::Cs).limit = 0x1FFF;
                    }
                    let mut b = vm32();
                    b.cpu = a.cpu.clone();
                    let mut ca = Ctx {
                        vm: &mut a,
                        eip: 0x3000,
                        next_eip: ins.next_ip32(),
                        shadow: false,
                        rep_batch: 1,
                    };
                    let ra = generic(&mut ca, &ins);
                    let na = ca.next_eip;
                    let mut cb = Ctx {
                        vm: &mut b,
                        eip: 0x3000,
                        next_eip: ins.next_ip32(),
                        shadow: false,
                        rep_batch: 1,
                    };
                    let rb = fast(&mut cb, &ins);
                    let nb = cb.next_eip;
                    assert_eq!((ra, na), (rb, nb), "{ins}");
                    assert_eq!(a.cpu, b.cpu);
                }
            }
        }
    }

    #[test]
    fn parity_agrees_with_counting_bits() {
        use super::super::flags::parity;
        for v in 0..0x400u32 {
            let even = (v as u8).count_ones().is_multiple_of(2);
            assert_eq!(parity(v) != 0, even, "{v:#x}");
        }
    }

    #[test]
    fn lock_prefix_keeps_the_generic_handler() {
        // F0 01 D8: lock add eax, ebx (#UD, register destination).
        let ins = Decoder::with_ip(32, &[0xF0, 0x01, 0xD8], 0, DecoderOptions::NONE).decode();
        let table = Table::build();
        let generic = table.lookup(&ins);
        assert_eq!(
            select(&ins, generic).map(|h| h as usize),
            generic.map(|h| h as usize)
        );
    }
}
