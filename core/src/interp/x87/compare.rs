//! x87 comparisons and conditional moves: FCOM/FCOMP/FCOMPP, FUCOM/
//! FUCOMP/FUCOMPP, FICOM/FICOMP, FTST, FXAM, and the P6 additions that
//! CPUID's CMOV+FPU bits promise: FCOMI/FCOMIP/FUCOMI/FUCOMIP (result in
//! EFLAGS) and FCMOVcc (SDM Vol. 2A; Vol. 1 8.3.6-8.3.7).
//!
//! FCOM* raise IE for any NaN, FUCOM* only for an SNaN; an unmasked IE
//! leaves the condition codes (or EFLAGS) and the stack unchanged.

use std::cmp::Ordering;

use iced_x86::{Code, Instruction, OpKind, Register};

use super::super::{Ctx, Table};
use super::arith::{unpack, Val};
use super::load_store::{
    begin, empty, from_ieee, from_int, pop, put, raise, set_c1, st, underflow, Reg, DE, IE,
    INDEFINITE,
};
use crate::cpu::{flags, FpuState};
use crate::exception::Fault;

/// Condition codes C0, C2, C3 (FSW bits 8, 10, 14) and C1 (bit 9).
const C0: u16 = 1 << 8;
const C1: u16 = 1 << 9;
const C2: u16 = 1 << 10;
const C3: u16 = 1 << 14;

pub(super) fn register(t: &mut Table) {
    t.set_codes(
        &[
            Code::Fcom_m32fp,
            Code::Fcom_m64fp,
            Code::Fcom_st0_sti,
            Code::Fcom_st0_sti_DCD0,
            Code::Fcomp_m32fp,
            Code::Fcomp_m64fp,
            Code::Fcomp_st0_sti,
            Code::Fcomp_st0_sti_DCD8,
            Code::Fcomp_st0_sti_DED0,
            Code::Fcompp,
            Code::Fucom_st0_sti,
            Code::Fucomp_st0_sti,
            Code::Fucompp,
            Code::Ficom_m16int,
            Code::Ficom_m32int,
            Code::Ficomp_m16int,
            Code::Ficomp_m32int,
            Code::Ftst,
        ],
        fcom,
    );
    t.set_codes(
        &[
            Code::Fcomi_st0_sti,
            Code::Fcomip_st0_sti,
            Code::Fucomi_st0_sti,
            Code::Fucomip_st0_sti,
        ],
        fcomi,
    );
    t.set_codes(&[Code::Fxam], fxam);
    t.set_codes(
        &[
            Code::Fcmovb_st0_sti,
            Code::Fcmove_st0_sti,
            Code::Fcmovbe_st0_sti,
            Code::Fcmovu_st0_sti,
            Code::Fcmovnb_st0_sti,
            Code::Fcmovne_st0_sti,
            Code::Fcmovnbe_st0_sti,
            Code::Fcmovnu_st0_sti,
        ],
        fcmov,
    );
}

/// Result of comparing ST(0) with a source: an ordering or unordered,
/// with the exceptions raised.
fn compare(a: &Reg, b: &Reg, unordered_ok: bool) -> (Option<Ordering>, u16) {
    let (va, da) = unpack(a);
    let (vb, db) = unpack(b);
    let nan = |v: &Val| matches!(v, Val::NaN(..));
    let snan = |v: &Val| matches!(v, Val::NaN(_, true));
    let unsup = |v: &Val| matches!(v, Val::Unsupported);
    if unsup(&va) || unsup(&vb) {
        return (None, IE);
    }
    if nan(&va) || nan(&vb) {
        let ie = !unordered_ok || snan(&va) || snan(&vb);
        return (None, if ie { IE } else { 0 });
    }
    let den = if da || db { DE } else { 0 };
    // Order key: sign, then magnitude class and value.
    let key = |v: &Val| -> (bool, i32, u64, u8) {
        match *v {
            Val::Zero(_) => (false, 0, 0, 0),
            Val::Fin(s, e, m) => (s, e, m, 1),
            Val::Inf(s) => (s, 0, 0, 2),
            _ => (false, 0, 0, 0),
        }
    };
    let (sa, ea, ma, ca) = key(&va);
    let (sb, eb, mb, cb) = key(&vb);
    let mag = (ca, ea, ma).cmp(&(cb, eb, mb));
    let ord = match (ca == 0, cb == 0) {
        (true, true) => Ordering::Equal,
        _ => match (sa && ca != 0, sb && cb != 0) {
            (false, false) => mag,
            (true, true) => mag.reverse(),
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
        },
    };
    (Some(ord), den)
}

/// The comparison's source: memory operand, ST(i), or 0.0 for FTST.
fn source(ctx: &mut Ctx, ins: &Instruction) -> Result<Option<(Reg, u16)>, Fault> {
    if ins.code() == Code::Ftst {
        return Ok(Some(([0; 10], 0)));
    }
    let last_op = ins.op_count().saturating_sub(1);
    if ins.op_count() > 0 && ins.op_kind(last_op) == OpKind::Memory {
        let seg = ctx.mem_seg(ins);
        let off = ctx.ea(ins);
        let v = match ins.code() {
            Code::Fcom_m32fp | Code::Fcomp_m32fp => {
                from_ieee(ctx.read_mem(seg, off, 4)? as u64, 23, 8)
            }
            Code::Fcom_m64fp | Code::Fcomp_m64fp => from_ieee(ctx.read_mem64(seg, off)?, 52, 11),
            Code::Ficom_m16int | Code::Ficomp_m16int => {
                (from_int(ctx.read_mem(seg, off, 2)? as u16 as i16 as i64), 0)
            }
            _ => (from_int(ctx.read_mem(seg, off, 4)? as i32 as i64), 0),
        };
        return Ok(Some(v));
    }
    Ok(None)
}

/// ST(i) index of the last register operand, or 1 for the implicit
/// FCOMPP/FUCOMPP/no-operand forms.
fn sti_of(ins: &Instruction) -> usize {
    if ins.op_count() == 0 {
        return 1;
    }
    let r = ins.op_register(ins.op_count() - 1);
    if r == Register::None {
        1
    } else {
        (r as usize).wrapping_sub(Register::ST0 as usize) & 7
    }
}

/// Pops after a comparison.
fn pops_of(c: Code) -> u32 {
    match c {
        Code::Fcompp | Code::Fucompp => 2,
        Code::Fcomp_m32fp
        | Code::Fcomp_m64fp
        | Code::Fcomp_st0_sti
        | Code::Fcomp_st0_sti_DCD8
        | Code::Fcomp_st0_sti_DED0
        | Code::Fucomp_st0_sti
        | Code::Ficomp_m16int
        | Code::Ficomp_m32int
        | Code::Fcomip_st0_sti
        | Code::Fucomip_st0_sti => 1,
        _ => 0,
    }
}

/// Compare ST(0) with the instruction's source, with stack underflow
/// and exception handling. `None`: unmasked exception, nothing to set.
fn do_compare(
    f: &mut FpuState,
    ins: &Instruction,
    mem: Option<(Reg, u16)>,
) -> Option<Option<Ordering>> {
    let unordered_ok = matches!(
        ins.code(),
        Code::Fucom_st0_sti
            | Code::Fucomp_st0_sti
            | Code::Fucompp
            | Code::Fucomi_st0_sti
            | Code::Fucomip_st0_sti
    );
    let s0 = st(f, 0);
    let (src, load_flags) = match mem {
        Some(v) => v,
        None => {
            let s = st(f, sti_of(ins));
            if empty(f, s) {
                return underflow(f).then_some(None);
            }
            (f.regs[s], 0)
        }
    };
    if empty(f, s0) {
        return underflow(f).then_some(None);
    }
    let (ord, mut fl) = compare(&f.regs[s0], &src, unordered_ok);
    if load_flags & IE != 0 {
        fl = IE;
    } else if load_flags & DE != 0 && fl & IE == 0 {
        fl |= DE;
    }
    set_c1(f, false);
    if fl != 0 {
        let masked = raise(f, fl);
        if !masked {
            return None;
        }
    }
    Some(ord)
}

/// FCOM family, FICOM, FTST: C3/C2/C0 = 000 (>), 001 (<), 100 (=),
/// 111 (unordered).
fn fcom(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let mem = source(ctx, ins)?;
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let Some(ord) = do_compare(f, ins, mem) else {
        return Ok(());
    };
    let cc = match ord {
        Some(Ordering::Greater) => 0,
        Some(Ordering::Less) => C0,
        Some(Ordering::Equal) => C3,
        None => C3 | C2 | C0,
    };
    f.fsw = (f.fsw & !(C3 | C2 | C0)) | cc;
    for _ in 0..pops_of(ins.code()) {
        pop(f);
    }
    Ok(())
}

/// FCOMI/FCOMIP/FUCOMI/FUCOMIP: ZF/PF/CF = 000 (>), 001 (<), 100 (=),
/// 111 (unordered); OF, SF, AF cleared.
fn fcomi(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let cpu = &mut ctx.vm.cpu;
    last.apply(&mut cpu.fpu);
    let Some(ord) = do_compare(&mut cpu.fpu, ins, None) else {
        return Ok(());
    };
    let v = match ord {
        Some(Ordering::Greater) => 0,
        Some(Ordering::Less) => flags::CF,
        Some(Ordering::Equal) => flags::ZF,
        None => flags::ZF | flags::PF | flags::CF,
    };
    cpu.eflags = (cpu.eflags & !flags::STATUS) | v;
    for _ in 0..pops_of(ins.code()) {
        pop(&mut cpu.fpu);
    }
    Ok(())
}

/// FXAM: classify ST(0) into C3/C2/C0, its sign into C1. No exceptions,
/// an empty register included (SDM Vol. 2A FXAM, Table 3-42).
fn fxam(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let s0 = st(f, 0);
    let r = f.regs[s0];
    let cc = if empty(f, s0) {
        C3 | C0
    } else {
        let (exp, mant) = (
            u16::from_le_bytes([r[8], r[9]]) & 0x7FFF,
            u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]),
        );
        match unpack(&r).0 {
            Val::Unsupported => 0,
            Val::NaN(..) => C0,
            Val::Inf(_) => C2 | C0,
            Val::Zero(_) => C3,
            Val::Fin(..) if exp == 0 && mant != 0 => C3 | C2,
            Val::Fin(..) => C2,
        }
    };
    let c1 = if r[9] & 0x80 != 0 { C1 } else { 0 };
    f.fsw = (f.fsw & !(C3 | C2 | C1 | C0)) | cc | c1;
    Ok(())
}

/// FCMOVcc ST(0), ST(i): copy when the EFLAGS condition holds. Either
/// register empty is a stack underflow whatever the condition.
fn fcmov(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let e = ctx.vm.cpu.eflags;
    let (cf, zf, pf) = (e & flags::CF != 0, e & flags::ZF != 0, e & flags::PF != 0);
    let cond = match ins.code() {
        Code::Fcmovb_st0_sti => cf,
        Code::Fcmove_st0_sti => zf,
        Code::Fcmovbe_st0_sti => cf || zf,
        Code::Fcmovu_st0_sti => pf,
        Code::Fcmovnb_st0_sti => !cf,
        Code::Fcmovne_st0_sti => !zf,
        Code::Fcmovnbe_st0_sti => !cf && !zf,
        _ => !pf,
    };
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let (d, s) = (st(f, 0), st(f, sti_of(ins)));
    if empty(f, d) || empty(f, s) {
        if underflow(f) {
            put(f, d, INDEFINITE);
        }
        return Ok(());
    }
    if cond {
        let v = f.regs[s];
        put(f, d, v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::super::system::testutil::*;
    use super::super::load_store::make;
    use super::*;
    use iced_x86::code_asm::*;

    fn cc(vm: &crate::vm::Vm) -> u16 {
        vm.cpu.fpu.fsw & (C3 | C2 | C0)
    }

    #[test]
    fn ordering_rules() {
        let one = from_int(1);
        let m_two = from_int(-2);
        let zero = make(false, 0, 0);
        let nzero = make(true, 0, 0);
        let inf = make(false, 0x7FFF, 1 << 63);
        let qnan = make(false, 0x7FFF, 0xC000_0000_0000_0000);
        let snan = make(false, 0x7FFF, 0x8000_0000_0000_0001);
        assert_eq!(compare(&one, &m_two, false), (Some(Ordering::Greater), 0));
        assert_eq!(compare(&m_two, &one, false), (Some(Ordering::Less), 0));
        assert_eq!(
            compare(&m_two, &from_int(-3), false),
            (Some(Ordering::Greater), 0)
        );
        assert_eq!(compare(&zero, &nzero, false), (Some(Ordering::Equal), 0));
        assert_eq!(compare(&inf, &one, false), (Some(Ordering::Greater), 0));
        assert_eq!(compare(&one, &zero, false), (Some(Ordering::Greater), 0));
        assert_eq!(compare(&nzero, &one, false), (Some(Ordering::Less), 0));
        assert_eq!(compare(&qnan, &one, false), (None, IE));
        assert_eq!(compare(&qnan, &one, true), (None, 0));
        assert_eq!(compare(&snan, &one, true), (None, IE));
    }

    #[test]
    fn fcom_fucomi_fcmov_fxam() {
        let mut vm = flat0();
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        vm.mem.write_u64(0x600, 2.5f64.to_bits());
        assert_eq!(run(&mut vm, 32, |a| a.fld1()), Ok(()));
        // 1.0 < 2.5: C0.
        assert_eq!(run(&mut vm, 32, |a| a.fcom(qword_ptr(0x600))), Ok(()));
        assert_eq!(cc(&vm), C0);
        assert_eq!(run(&mut vm, 32, |a| a.fld(qword_ptr(0x600))), Ok(()));
        // ST0 = 2.5 > ST1 = 1.0.
        assert_eq!(run(&mut vm, 32, |a| a.fucomi(st0, st1)), Ok(()));
        assert_eq!(vm.cpu.eflags & (flags::ZF | flags::PF | flags::CF), 0);
        vm.cpu.eflags |= flags::CF;
        assert_eq!(run(&mut vm, 32, |a| a.fcmovb(st0, st1)), Ok(()));
        assert_eq!(vm.cpu.fpu.regs[st(&vm.cpu.fpu, 0)], from_int(1));
        // Equal now: FCOMIP sets ZF and pops.
        assert_eq!(run(&mut vm, 32, |a| a.fcomip(st0, st1)), Ok(()));
        assert_eq!(
            vm.cpu.eflags & (flags::ZF | flags::PF | flags::CF),
            flags::ZF
        );
        assert_eq!(vm.cpu.fpu.ftw, 0x3FFF);
        // FTST on 1.0: greater. FXAM: normal, positive.
        assert_eq!(run(&mut vm, 32, |a| a.ftst()), Ok(()));
        assert_eq!(cc(&vm), 0);
        assert_eq!(run(&mut vm, 32, |a| a.fchs()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fxam()), Ok(()));
        assert_eq!(vm.cpu.fpu.fsw & (C3 | C2 | C1 | C0), C2 | C1);
        // FCOMPP with ST1 empty: masked underflow -> unordered, two pops.
        assert_eq!(run(&mut vm, 32, |a| a.fcompp()), Ok(()));
        assert_eq!(cc(&vm), C3 | C2 | C0);
        assert_eq!(vm.cpu.fpu.ftw, 0xFFFF);
        // FXAM on an empty register: C3|C0, no exception.
        let before = vm.cpu.fpu.fsw & 0x3F;
        assert_eq!(run(&mut vm, 32, |a| a.fxam()), Ok(()));
        assert_eq!(cc(&vm), C3 | C0);
        assert_eq!(vm.cpu.fpu.fsw & 0x3F, before);
        // FUCOMPP of two QNaNs: unordered without IE.
        let mut vm = flat0();
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        vm.mem
            .write(0x700, &make(false, 0x7FFF, 0xC000_0000_0000_0000));
        assert_eq!(run(&mut vm, 32, |a| a.fld(tword_ptr(0x700))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fld(tword_ptr(0x700))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fucompp()), Ok(()));
        assert_eq!(cc(&vm), C3 | C2 | C0);
        assert_eq!(vm.cpu.fpu.fsw & IE, 0);
    }
}
