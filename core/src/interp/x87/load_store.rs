//! x87 data movement that needs no floating-point arithmetic, exact to the
//! SDM: FLD (m32fp, m64fp, m80fp, ST(i)), FILD, FIST/FISTP (with the
//! rounding control), FST/FSTP to ST(i) and FSTP m80fp, FLDZ, FLD1, FXCH,
//! FCHS, FABS, FFREE/FFREEP, FINCSTP, FDECSTP, FNOP, and the undocumented
//! aliases of FXCH and FSTP.
//!
//! Arithmetic is in `arith` and comparisons in `compare`.
//!
//! Stack faults follow SDM Vol. 1 8.5.1.1: with IE masked the result is
//! the QNaN floating-point indefinite (or the integer indefinite); with
//! it unmasked the destination and TOP are unchanged and ES makes the
//! next waiting instruction raise #MF.

use iced_x86::{Code, Instruction, OpKind};

use super::super::{Ctx, Table};
use super::{check_nm, check_pending, classify, fsw, tag, top, update_es};
use crate::cpu::{FpuState, SegReg};
use crate::exception::Fault;
use crate::mmu::Access;

/// Exception flags (FSW bits 0-5; the FCW masks sit at the same bits).
pub(super) const IE: u16 = 1 << 0;
pub(super) const DE: u16 = 1 << 1;
pub(super) const OE: u16 = 1 << 3;
pub(super) const UE: u16 = 1 << 4;
pub(super) const PE: u16 = 1 << 5;
/// Condition code C1 (FSW bit 9).
const C1: u16 = 1 << 9;

/// An 80-bit register image.
pub(super) type Reg = [u8; 10];

/// The QNaN floating-point indefinite: sign 1, exponent all ones,
/// significand 1100...0.
pub const INDEFINITE: Reg = [0, 0, 0, 0, 0, 0, 0, 0xC0, 0xFF, 0xFF];
/// +0.0 and +1.0.
const ZERO: Reg = [0; 10];
pub(super) const ONE: Reg = [0, 0, 0, 0, 0, 0, 0, 0x80, 0xFF, 0x3F];

/// Bias of the extended exponent.
pub(super) const BIAS: i32 = 16383;

pub(super) fn register(t: &mut Table) {
    t.set_codes(
        &[Code::Fld_m32fp, Code::Fld_m64fp, Code::Fld_m80fp],
        fld_mem,
    );
    t.set_codes(&[Code::Fld_sti], fld_sti);
    t.set_codes(
        &[
            Code::Fldz,
            Code::Fld1,
            Code::Fldpi,
            Code::Fldl2t,
            Code::Fldl2e,
            Code::Fldlg2,
            Code::Fldln2,
        ],
        fld_const,
    );
    t.set_codes(
        &[Code::Fild_m16int, Code::Fild_m32int, Code::Fild_m64int],
        fild,
    );
    t.set_codes(
        &[
            Code::Fist_m16int,
            Code::Fist_m32int,
            Code::Fistp_m16int,
            Code::Fistp_m32int,
            Code::Fistp_m64int,
        ],
        fist,
    );
    t.set_codes(&[Code::Fstp_m80fp], fstp_m80);
    t.set_codes(
        &[
            Code::Fst_m32fp,
            Code::Fstp_m32fp,
            Code::Fst_m64fp,
            Code::Fstp_m64fp,
        ],
        fst_mem,
    );
    t.set_codes(
        &[
            Code::Fst_sti,
            Code::Fstp_sti,
            Code::Fstpnce_sti,
            Code::Fstp_sti_DFD0,
            Code::Fstp_sti_DFD8,
        ],
        fst_sti,
    );
    t.set_codes(
        &[
            Code::Fxch_st0_sti,
            Code::Fxch_st0_sti_DDC8,
            Code::Fxch_st0_sti_DFC8,
        ],
        fxch,
    );
    t.set_codes(&[Code::Fchs, Code::Fabs], fchs_fabs);
    t.set_codes(&[Code::Ffree_sti, Code::Ffreep_sti], ffree);
    t.set_codes(&[Code::Fincstp, Code::Fdecstp], fincdec);
    t.set_codes(&[Code::Fnop], fnop);
}

// ---- stack helpers ------------------------------------------------------------

/// Physical register of ST(i).
pub(super) fn st(f: &FpuState, i: usize) -> usize {
    (top(f) + i) & 7
}

pub(super) fn empty(f: &FpuState, phys: usize) -> bool {
    (f.ftw >> (2 * phys)) & 3 == tag::EMPTY
}

fn set_tag(f: &mut FpuState, phys: usize, t: u16) {
    f.ftw = (f.ftw & !(3 << (2 * phys))) | t << (2 * phys);
}

/// Write a register and its tag from its contents.
pub(super) fn put(f: &mut FpuState, phys: usize, v: Reg) {
    f.regs[phys] = v;
    set_tag(f, phys, classify(&v));
}

fn set_top(f: &mut FpuState, t: usize) {
    f.fsw = (f.fsw & !fsw::TOP_MASK) | ((t as u16 & 7) << fsw::TOP_SHIFT);
}

pub(super) fn set_c1(f: &mut FpuState, on: bool) {
    if on {
        f.fsw |= C1;
    } else {
        f.fsw &= !C1;
    }
}

/// Raise x87 exception flags; returns whether all of them are masked
/// (so the masked response applies).
pub(super) fn raise(f: &mut FpuState, flags: u16) -> bool {
    f.fsw |= flags;
    update_es(f);
    flags & fsw::EXC & !f.fcw == 0
}

/// Stack overflow on a push (#IS, C1 = 1). Returns whether masked.
pub(super) fn overflow(f: &mut FpuState) -> bool {
    set_c1(f, true);
    raise(f, IE | fsw::SF)
}

/// Stack underflow (#IS, C1 = 0). Returns whether masked.
pub(super) fn underflow(f: &mut FpuState) -> bool {
    set_c1(f, false);
    raise(f, IE | fsw::SF)
}

/// Push `v`: with ST(7) in use this is a stack overflow, which pushes
/// the indefinite when masked and leaves the stack alone otherwise.
pub(super) fn push(f: &mut FpuState, v: Reg) {
    let t = (top(f) + 7) & 7;
    if !empty(f, t) {
        if overflow(f) {
            set_top(f, t);
            put(f, t, INDEFINITE);
        }
        return;
    }
    set_c1(f, false);
    set_top(f, t);
    put(f, t, v);
}

pub(super) fn pop(f: &mut FpuState) {
    let t = top(f);
    set_tag(f, t, tag::EMPTY);
    set_top(f, t + 1);
}

/// The last-instruction pointers of a non-control instruction (SDM Vol. 1
/// 8.1.8-8.1.9): FCS:FIP, the 11-bit opcode (low 3 bits of the escape
/// byte and the ModR/M byte) and, for a memory operand, FDS:FDP.
pub(super) struct Last {
    fip: u32,
    fcs: u16,
    fop: u16,
    mem: Option<(u32, u16)>,
}

impl Last {
    /// Computed before anything is committed (re-reading the instruction
    /// bytes, which were just fetched).
    fn of(ctx: &mut Ctx, ins: &Instruction) -> Result<Last, Fault> {
        let cpu = &ctx.vm.cpu;
        let cs = cpu.seg(SegReg::Cs);
        let lin = cs.base.wrapping_add(ctx.eip);
        let fcs = cs.selector;
        let acc = Access::FETCH.at_cpl(cpu.cpl());
        let mut b = [0u8; 15];
        let n = ins.len().min(15);
        ctx.vm.read_lin_bytes(lin, &mut b[..n], acc)?;
        let esc = b[..n].iter().position(|&x| (0xD8..=0xDF).contains(&x));
        let fop = match esc {
            Some(i) if i + 1 < n => ((b[i] as u16 & 7) << 8) | b[i + 1] as u16,
            _ => 0,
        };
        let mem = (ins.op_count() > 0 && ins.op0_kind() == OpKind::Memory)
            .then(|| (ctx.ea(ins), ctx.vm.cpu.seg(ctx.mem_seg(ins)).selector));
        Ok(Last {
            fip: ctx.eip,
            fcs,
            fop,
            mem,
        })
    }

    pub(super) fn apply(&self, f: &mut FpuState) {
        f.fip = self.fip;
        f.fcs = self.fcs;
        f.fop = self.fop;
        if let Some((ea, sel)) = self.mem {
            f.fdp = ea;
            f.fds = sel;
        }
    }
}

/// The common start of every instruction here: #NM, pending #MF, then
/// the last-instruction pointers to record once nothing can fault.
pub(super) fn begin(ctx: &mut Ctx, ins: &Instruction) -> Result<Last, Fault> {
    check_nm(ctx)?;
    check_pending(ctx)?;
    Last::of(ctx, ins)
}

// ---- conversions ------------------------------------------------------------

/// Assemble an 80-bit register from sign, biased exponent, significand.
pub(super) fn make(sign: bool, exp: u16, mant: u64) -> Reg {
    let mut r = [0u8; 10];
    r[..8].copy_from_slice(&mant.to_le_bytes());
    let se = (exp & 0x7FFF) | if sign { 0x8000 } else { 0 };
    r[8..].copy_from_slice(&se.to_le_bytes());
    r
}

pub(super) fn parts(r: &Reg) -> (bool, u16, u64) {
    let se = u16::from_le_bytes([r[8], r[9]]);
    let mut m = [0u8; 8];
    m.copy_from_slice(&r[..8]);
    (se & 0x8000 != 0, se & 0x7FFF, u64::from_le_bytes(m))
}

/// A signed integer as an extended value (always exact).
pub(super) fn from_int(v: i64) -> Reg {
    if v == 0 {
        return ZERO;
    }
    let m = v.unsigned_abs();
    let lz = m.leading_zeros();
    make(v < 0, (BIAS + 63 - lz as i32) as u16, m << lz)
}

/// Convert a binary32/binary64 image (`fbits` fraction bits, `ebits`
/// exponent bits) to extended. Returns the value and the exceptions the
/// load raises: IE for an SNaN (quietened), DE for a denormal.
pub(super) fn from_ieee(raw: u64, fbits: u32, ebits: u32) -> (Reg, u16) {
    let sign = raw >> (fbits + ebits) & 1 != 0;
    let emax = (1u64 << ebits) - 1;
    let e = (raw >> fbits) & emax;
    let frac = raw & ((1u64 << fbits) - 1);
    let bias = (1i32 << (ebits - 1)) - 1;
    if e == emax {
        let mut mant = 1u64 << 63 | frac << (63 - fbits);
        if frac == 0 {
            return (make(sign, 0x7FFF, mant), 0);
        }
        let quiet = frac >> (fbits - 1) & 1 != 0;
        mant |= 1 << 62;
        return (make(sign, 0x7FFF, mant), if quiet { 0 } else { IE });
    }
    if e == 0 {
        if frac == 0 {
            return (make(sign, 0, 0), 0);
        }
        // Denormal: frac * 2^(1 - bias - fbits), normalised.
        let lz = frac.leading_zeros() as i32;
        let exp = BIAS + 63 + (1 - bias - fbits as i32) - lz;
        return (make(sign, exp as u16, frac << lz), DE);
    }
    let mant = (1u64 << fbits | frac) << (63 - fbits);
    (make(sign, (e as i32 - bias + BIAS) as u16, mant), 0)
}

/// Round an extended value to a signed integer of `bits` bits with the
/// FCW rounding control. `None`: invalid (NaN, infinity, unsupported,
/// out of range). `Some((value, inexact, rounded_up))`.
pub(super) fn to_int(r: &Reg, rc: u16, bits: u32) -> Option<(i64, bool, bool)> {
    let (sign, exp, mant) = parts(r);
    if exp == 0x7FFF || (exp != 0 && mant >> 63 == 0) {
        return None;
    }
    if mant == 0 {
        return Some((0, false, false));
    }
    // value = mant * 2^(e2), e2 = max(exp, 1) - BIAS - 63.
    let e2 = (exp.max(1) as i32) - BIAS - 63;
    let (q, rem_nonzero, up) = if e2 >= 0 {
        if e2 >= 64 {
            return None;
        }
        let q = (mant as u128) << e2;
        (q, false, false)
    } else {
        let sh = (-e2) as u32;
        let (q, rem, half) = if sh >= 128 {
            (0u128, mant as u128, u128::MAX)
        } else {
            let q = (mant as u128) >> sh;
            let rem = (mant as u128) & ((1u128 << sh) - 1);
            (q, rem, 1u128 << (sh - 1))
        };
        // half for sh >= 128 is "more than any remainder": never nearest-up.
        let inc = round_up(rc, sign, q, rem, half);
        (q + inc as u128, rem != 0, inc)
    };
    let limit = 1u128 << (bits - 1);
    if (sign && q > limit) || (!sign && q >= limit) {
        return None;
    }
    let v = if sign {
        (q as i128).wrapping_neg()
    } else {
        q as i128
    };
    Some((v as i64, rem_nonzero, up))
}

/// Round `inc` decision for a magnitude remainder `rem` against `half`
/// with rounding control `rc` (0 nearest-even, 1 down, 2 up, 3 chop).
fn round_up(rc: u16, sign: bool, q: u128, rem: u128, half: u128) -> bool {
    rem != 0
        && match rc {
            0 => rem > half || (rem == half && q & 1 == 1),
            1 => sign,
            2 => !sign,
            _ => false,
        }
}

/// Convert an extended value to a binary32/binary64 image for FST m32fp
/// / m64fp (SDM Vol. 1 4.9.1.4-4.9.1.6, 8.5). Returns the image of the
/// masked response, the exceptions raised and whether the significand
/// was rounded up. Tininess is detected before rounding; with UE masked
/// it is only flagged when the result is also inexact.
pub(super) fn to_ieee(r: &Reg, fcw: u16, fbits: u32, ebits: u32) -> (u64, u16, bool) {
    let (sign, exp, mant) = parts(r);
    let sbit = (sign as u64) << (fbits + ebits);
    let emax_b = (1u64 << ebits) - 1;
    let inf = sbit | emax_b << fbits;
    let frac_mask = (1u64 << fbits) - 1;
    let indefinite = 1u64 << (fbits + ebits) | emax_b << fbits | 1 << (fbits - 1);
    let bias = (1i32 << (ebits - 1)) - 1;
    if exp == 0x7FFF {
        if mant >> 63 == 0 {
            // Pseudo-infinity / pseudo-NaN: unsupported.
            return (indefinite, IE, false);
        }
        if mant << 1 == 0 {
            return (inf, 0, false);
        }
        let snan = (mant >> 62) & 1 == 0;
        let frac = ((mant | 1 << 62) >> (63 - fbits)) & frac_mask;
        return (inf | frac, if snan { IE } else { 0 }, false);
    }
    if exp != 0 && mant >> 63 == 0 {
        // Unnormal: unsupported.
        return (indefinite, IE, false);
    }
    if mant == 0 {
        return (sbit, 0, false);
    }
    let lz = mant.leading_zeros() as i32;
    let m = (mant << lz) as u128;
    // The value lies in [2^e, 2^(e+1)).
    let e = exp.max(1) as i32 - BIAS - lz;
    let p = fbits as i32 + 1;
    let emin = 1 - bias;
    let tiny = e < emin;
    let shift = 64 - p + if tiny { emin - e } else { 0 };
    let (q, rem, half) = if shift >= 128 {
        (0, m, u128::MAX)
    } else {
        (m >> shift, m & ((1u128 << shift) - 1), 1u128 << (shift - 1))
    };
    let rc = (fcw >> 10) & 3;
    let up = round_up(rc, sign, q, rem, half);
    let inexact = rem != 0;
    let mut q = q + up as u128;
    let mut e = if tiny { emin } else { e };
    if q >> p != 0 {
        q >>= 1;
        e += 1;
    }
    let mut flags = 0;
    if tiny && (inexact || fcw & UE == 0) {
        flags |= UE;
    }
    if e > bias {
        // Overflow: infinity or the largest finite value by RC.
        let to_inf = match rc {
            0 => true,
            1 => sign,
            2 => !sign,
            _ => false,
        };
        let img = if to_inf {
            inf
        } else {
            sbit | (emax_b - 1) << fbits | frac_mask
        };
        return (img, flags | OE | PE, to_inf);
    }
    if inexact {
        flags |= PE;
    }
    let img = if q >> (p - 1) == 0 {
        sbit | q as u64
    } else {
        sbit | ((e + bias) as u64) << fbits | (q as u64 & frac_mask)
    };
    (img, flags, up)
}

// ---- handlers -----------------------------------------------------------------

/// FLD m32fp/m64fp/m80fp.
fn fld_mem(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let seg = ctx.mem_seg(ins);
    let off = ctx.ea(ins);
    let (v, exc) = match ins.code() {
        Code::Fld_m32fp => from_ieee(ctx.read_mem(seg, off, 4)? as u64, 23, 8),
        Code::Fld_m64fp => from_ieee(ctx.read_mem64(seg, off)?, 52, 11),
        _ => {
            let lo = ctx.read_mem64(seg, off)?;
            let hi = ctx.read_mem(seg, off.wrapping_add(8), 2)? as u16;
            let mut r = [0u8; 10];
            r[..8].copy_from_slice(&lo.to_le_bytes());
            r[8..].copy_from_slice(&hi.to_le_bytes());
            (r, 0)
        }
    };
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    if !empty(f, (top(f) + 7) & 7) {
        push(f, v);
        return Ok(());
    }
    if exc != 0 && !raise(f, exc) {
        return Ok(());
    }
    push(f, v);
    Ok(())
}

/// FLD ST(i): push a copy of ST(i) (read before the push). An empty
/// ST(i) is a stack underflow (C1 = 0) even when ST(7) is in use too: the
/// source is read first, and the masked response pushes the indefinite
/// over the occupied register without a second (overflow) report. That
/// is what the hardware does (the translator runs FLD on the host's x87
/// unit, and the random x87 diff found the difference); the SDM's FLD
/// page leaves the order open.
fn fld_sti(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let i = sti_index(ins);
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let src = st(f, i);
    if empty(f, src) {
        if underflow(f) {
            let t = (top(f) + 7) & 7;
            set_top(f, t);
            put(f, t, INDEFINITE);
        }
        return Ok(());
    }
    let v = f.regs[src];
    push(f, v);
    Ok(())
}

/// The `i` of an ST(i) operand (the last register operand).
pub(super) fn sti_index(ins: &Instruction) -> usize {
    let r = ins.op_register(ins.op_count().saturating_sub(1));
    (r as usize).wrapping_sub(iced_x86::Register::ST0 as usize) & 7
}

/// FLDZ, FLD1.
fn fld_const(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let rc = (ctx.vm.cpu.fpu.fcw >> 10) & 3;
    // The transcendental constants: biased exponent, truncated 64-bit
    // significand, and whether the exact value's next bits exceed half
    // an ulp. All are inexact and positive, so round-up adds one ulp and
    // down/chop truncate; no precision exception is raised (SDM Vol. 2A
    // FLD1/FLDL2T/...: "rounded per RC").
    let konst = |exp: u16, trunc: u64, above_half: bool| {
        let up = match rc {
            0 => above_half,
            2 => true,
            _ => false,
        };
        make(false, exp, trunc + up as u64)
    };
    let v = match ins.code() {
        Code::Fldz => ZERO,
        Code::Fld1 => ONE,
        // pi = 0xC90FDAA22168C234_C4C6... * 2^(1-63)
        Code::Fldpi => konst(0x4000, 0xC90F_DAA2_2168_C234, true),
        // log2(10) = 0xD49A784BCD1B8AFE_492B... * 2^(1-63)
        Code::Fldl2t => konst(0x4000, 0xD49A_784B_CD1B_8AFE, false),
        // log2(e) = 0xB8AA3B295C17F0BB_BE87... * 2^(0-63)
        Code::Fldl2e => konst(0x3FFF, 0xB8AA_3B29_5C17_F0BB, true),
        // log10(2) = 0x9A209A84FBCFF798_8F89... * 2^(-2-63)
        Code::Fldlg2 => konst(0x3FFD, 0x9A20_9A84_FBCF_F798, true),
        // ln(2) = 0xB17217F7D1CF79AB_C9E3... * 2^(-1-63)
        _ => konst(0x3FFE, 0xB172_17F7_D1CF_79AB, true),
    };
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    push(f, v);
    Ok(())
}

/// FILD m16int/m32int/m64int: exact.
fn fild(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let seg = ctx.mem_seg(ins);
    let off = ctx.ea(ins);
    let v = match ins.code() {
        Code::Fild_m16int => ctx.read_mem(seg, off, 2)? as u16 as i16 as i64,
        Code::Fild_m32int => ctx.read_mem(seg, off, 4)? as i32 as i64,
        _ => ctx.read_mem64(seg, off)? as i64,
    };
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    push(f, from_int(v));
    Ok(())
}

/// FIST/FISTP m16int/m32int/m64int with the rounding control. Invalid
/// (empty, NaN, infinity, unsupported, out of range) stores the integer
/// indefinite when IE is masked; inexact sets PE and C1 = rounded up.
fn fist(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let (size, pops) = match ins.code() {
        Code::Fist_m16int => (2, false),
        Code::Fist_m32int => (4, false),
        Code::Fistp_m16int => (2, true),
        Code::Fistp_m32int => (4, true),
        _ => (8, true),
    };
    let seg = ctx.mem_seg(ins);
    let off = ctx.ea(ins);
    let mut f = ctx.vm.cpu.fpu;
    let indefinite = 1u64 << (8 * size - 1);
    let s0 = st(&f, 0);
    let store = if empty(&f, s0) {
        underflow(&mut f).then_some(indefinite)
    } else {
        let rc = (f.fcw >> 10) & 3;
        match to_int(&f.regs[s0], rc, 8 * size as u32) {
            None => {
                set_c1(&mut f, false);
                raise(&mut f, IE).then_some(indefinite)
            }
            Some((v, inexact, up)) => {
                set_c1(&mut f, inexact && up);
                if inexact {
                    raise(&mut f, PE);
                }
                Some(v as u64)
            }
        }
    };
    if let Some(v) = store {
        if size == 8 {
            ctx.write_mem64(seg, off, v)?;
        } else {
            ctx.write_mem(seg, off, size, v as u32)?;
        }
        if pops {
            pop(&mut f);
        }
    }
    last.apply(&mut f);
    ctx.vm.cpu.fpu = f;
    Ok(())
}

/// FST/FSTP m32fp/m64fp. An unmasked invalid, overflow or underflow
/// stores nothing and does not pop; an unmasked precision exception
/// still stores (SDM Vol. 1 4.9.2).
fn fst_mem(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let (single, pops) = match ins.code() {
        Code::Fst_m32fp => (true, false),
        Code::Fstp_m32fp => (true, true),
        Code::Fst_m64fp => (false, false),
        _ => (false, true),
    };
    let (fbits, ebits) = if single { (23, 8) } else { (52, 11) };
    let seg = ctx.mem_seg(ins);
    let off = ctx.ea(ins);
    let mut f = ctx.vm.cpu.fpu;
    let s0 = st(&f, 0);
    let store = if empty(&f, s0) {
        let indefinite =
            1u64 << (fbits + ebits) | ((1u64 << ebits) - 1) << fbits | 1 << (fbits - 1);
        underflow(&mut f).then_some(indefinite)
    } else {
        let (img, flags, up) = to_ieee(&f.regs[s0], f.fcw, fbits, ebits);
        set_c1(&mut f, up && flags & PE != 0);
        let blocked = flags & (IE | OE | UE) & !f.fcw != 0;
        if flags != 0 {
            raise(&mut f, flags);
        }
        (!blocked).then_some(img)
    };
    if let Some(v) = store {
        if single {
            ctx.write_mem(seg, off, 4, v as u32)?;
        } else {
            ctx.write_mem64(seg, off, v)?;
        }
        if pops {
            pop(&mut f);
        }
    }
    last.apply(&mut f);
    ctx.vm.cpu.fpu = f;
    Ok(())
}

/// FSTP m80fp: store ST(0) unchanged, pop.
fn fstp_m80(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let seg = ctx.mem_seg(ins);
    let off = ctx.ea(ins);
    let mut f = ctx.vm.cpu.fpu;
    let s0 = st(&f, 0);
    let v = if empty(&f, s0) {
        if !underflow(&mut f) {
            last.apply(&mut f);
            ctx.vm.cpu.fpu = f;
            return Ok(());
        }
        INDEFINITE
    } else {
        set_c1(&mut f, false);
        f.regs[s0]
    };
    ctx.check_write(seg, off, 8)?;
    ctx.check_write(seg, off.wrapping_add(8), 2)?;
    let mut lo = [0u8; 8];
    lo.copy_from_slice(&v[..8]);
    ctx.write_mem64(seg, off, u64::from_le_bytes(lo))?;
    ctx.write_mem(
        seg,
        off.wrapping_add(8),
        2,
        u16::from_le_bytes([v[8], v[9]]) as u32,
    )?;
    pop(&mut f);
    last.apply(&mut f);
    ctx.vm.cpu.fpu = f;
    Ok(())
}

/// FST/FSTP ST(i) (and the FSTP aliases): ST(i) = ST(0), pop for FSTP.
fn fst_sti(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let pops = ins.code() != Code::Fst_sti;
    let i = sti_index(ins);
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let s0 = st(f, 0);
    let v = if empty(f, s0) {
        if !underflow(f) {
            return Ok(());
        }
        INDEFINITE
    } else {
        set_c1(f, false);
        f.regs[s0]
    };
    let d = st(f, i);
    put(f, d, v);
    if pops {
        pop(f);
    }
    Ok(())
}

/// FXCH ST(i) (and its aliases). An empty operand is an underflow; when
/// masked it is replaced by the indefinite first.
fn fxch(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let i = sti_index(ins);
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let (a, b) = (st(f, 0), st(f, i));
    if empty(f, a) || empty(f, b) {
        if !underflow(f) {
            return Ok(());
        }
        for p in [a, b] {
            if empty(f, p) {
                put(f, p, INDEFINITE);
            }
        }
    } else {
        set_c1(f, false);
    }
    let (va, vb) = (f.regs[a], f.regs[b]);
    put(f, a, vb);
    put(f, b, va);
    Ok(())
}

/// FCHS (flip the sign) and FABS (clear it) of ST(0).
fn fchs_fabs(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let s0 = st(f, 0);
    if empty(f, s0) {
        if underflow(f) {
            put(f, s0, INDEFINITE);
        }
        return Ok(());
    }
    set_c1(f, false);
    if ins.code() == Code::Fchs {
        f.regs[s0][9] ^= 0x80;
    } else {
        f.regs[s0][9] &= 0x7F;
    }
    Ok(())
}

/// FFREE ST(i): tag it empty (FFREEP also pops).
fn ffree(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let i = sti_index(ins);
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let p = st(f, i);
    set_tag(f, p, tag::EMPTY);
    if ins.code() == Code::Ffreep_sti {
        pop(f);
    }
    Ok(())
}

/// FINCSTP / FDECSTP: rotate TOP, tags unchanged, C1 = 0.
fn fincdec(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let d = if ins.code() == Code::Fincstp { 1 } else { 7 };
    set_top(f, top(f) + d);
    set_c1(f, false);
    Ok(())
}

/// FNOP.
fn fnop(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    last.apply(&mut ctx.vm.cpu.fpu);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::super::system::testutil::*;
    use super::*;
    use crate::cpu::cr0;
    use crate::vm::Vm;
    use iced_x86::code_asm::*;

    fn reg_of(vm: &Vm, i: usize) -> Reg {
        vm.cpu.fpu.regs[st(&vm.cpu.fpu, i)]
    }

    #[test]
    fn int_conversions() {
        assert_eq!(from_int(1), ONE);
        assert_eq!(from_int(0), ZERO);
        // -3 = -1.5 * 2^1: significand 0xC000..., exponent 0x4000.
        assert_eq!(from_int(-3), make(true, 0x4000, 0xC000_0000_0000_0000));
        assert_eq!(from_int(i64::MIN), make(true, 0x403E, 1 << 63));
        // 2.5 with each rounding control.
        let v = make(false, 0x4000, 0xA000_0000_0000_0000);
        assert_eq!(to_int(&v, 0, 32), Some((2, true, false)));
        assert_eq!(to_int(&v, 1, 32), Some((2, true, false)));
        assert_eq!(to_int(&v, 2, 32), Some((3, true, true)));
        assert_eq!(to_int(&v, 3, 32), Some((2, true, false)));
        // -3.5: nearest-even gives -4, down -4, up -3, chop -3.
        let v = make(true, 0x4000, 0xE000_0000_0000_0000);
        assert_eq!(to_int(&v, 0, 16), Some((-4, true, true)));
        assert_eq!(to_int(&v, 1, 16), Some((-4, true, true)));
        assert_eq!(to_int(&v, 2, 16), Some((-3, true, false)));
        assert_eq!(to_int(&v, 3, 16), Some((-3, true, false)));
        // 32768 does not fit in 16 bits; -32768 does.
        assert_eq!(to_int(&from_int(32768), 0, 16), None);
        assert_eq!(
            to_int(&from_int(-32768), 0, 16),
            Some((-32768, false, false))
        );
        assert_eq!(
            to_int(&from_int(i64::MIN), 0, 64),
            Some((i64::MIN, false, false))
        );
        // Tiny values round by RC: 2^-100 up = 1, nearest = 0.
        let tiny = make(false, (BIAS - 100) as u16, 1 << 63);
        assert_eq!(to_int(&tiny, 0, 32), Some((0, true, false)));
        assert_eq!(to_int(&tiny, 2, 32), Some((1, true, true)));
        // NaN, infinity, unnormal.
        assert_eq!(to_int(&INDEFINITE, 0, 32), None);
        assert_eq!(to_int(&make(false, 0x7FFF, 1 << 63), 0, 32), None);
        assert_eq!(to_int(&make(false, 0x3FFF, 1 << 62), 0, 32), None);
    }

    #[test]
    fn ieee_conversions() {
        // 1.0f = 0x3F800000, -2.5 (double) = 0xC004000000000000.
        assert_eq!(from_ieee(0x3F80_0000, 23, 8), (ONE, 0));
        assert_eq!(
            from_ieee(0xC004_0000_0000_0000, 52, 11),
            (make(true, 0x4000, 0xA000_0000_0000_0000), 0)
        );
        // Smallest single denormal 2^-149.
        assert_eq!(
            from_ieee(1, 23, 8),
            (make(false, (BIAS - 149) as u16, 1 << 63), DE)
        );
        // Smallest double denormal 2^-1074.
        assert_eq!(
            from_ieee(1, 52, 11),
            (make(false, (BIAS - 1074) as u16, 1 << 63), DE)
        );
        // Single SNaN 0x7F800001 -> QNaN with IE.
        assert_eq!(
            from_ieee(0x7F80_0001, 23, 8),
            (make(false, 0x7FFF, 0xC000_0100_0000_0000), IE)
        );
        // -infinity, -0.
        assert_eq!(
            from_ieee(0xFF80_0000, 23, 8),
            (make(true, 0x7FFF, 1 << 63), 0)
        );
        assert_eq!(from_ieee(0x8000_0000, 23, 8), (make(true, 0, 0), 0));
    }

    /// FNINIT; FADD ST(7), ST: both empty, so a masked underflow writes
    /// the indefinite to ST(7) (TOP stays 0). FLD ST(0) then reads an
    /// empty ST(0) while ST(7) is in use: an underflow, C1 = 0 (not the
    /// overflow's C1 = 1), TOP 7, the indefinite in ST(0). FSW = TOP 7
    /// (0x3800) | SF (0x40) | IE (0x01) = 0x3841.
    #[test]
    fn fld_of_an_empty_register_onto_a_full_slot_is_an_underflow() {
        let mut vm = flat0();
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fadd_2(st7, st0)), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fld(st0)), Ok(()));
        let f = vm.cpu.fpu;
        assert_eq!(f.fsw, 0x3841);
        assert_eq!(f.regs[7], INDEFINITE);
    }

    #[test]
    fn fild_fistp_round_trip_and_pointers() {
        let mut vm = flat0();
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        vm.mem.write_u32(0x600, (-123_456i32) as u32);
        assert_eq!(run(&mut vm, 32, |a| a.fild(dword_ptr(0x600))), Ok(()));
        let f = vm.cpu.fpu;
        assert_eq!(top(&f), 7);
        assert_eq!(f.ftw, 0x3FFF);
        // FNINIT (DB E3) ran first, so FILD is at CODE + 2.
        assert_eq!(f.fip, CODE + 2);
        assert_eq!(f.fcs, 0x08);
        // DB /0 with ModR/M 0x05: opcode 0x305.
        assert_eq!(f.fop, 0x305);
        assert_eq!((f.fdp, f.fds), (0x600, 0x10));
        assert_eq!(run(&mut vm, 32, |a| a.fistp(word_ptr(0x700))), Ok(()));
        // -123456 does not fit in 16 bits: IE masked -> 0x8000, popped.
        assert_eq!(vm.mem.read_u16(0x700), 0x8000);
        assert_eq!(vm.cpu.fpu.fsw & 0x3F, IE);
        assert_eq!(vm.cpu.fpu.ftw, 0xFFFF);
        vm.mem.write_u16(0x600, 0xFFFE);
        assert_eq!(run(&mut vm, 32, |a| a.fild(word_ptr(0x600))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fistp(qword_ptr(0x700))), Ok(()));
        assert_eq!(vm.mem.read_u64(0x700), (-2i64) as u64);
    }

    #[test]
    fn fist_rounding_control_and_precision() {
        let mut vm = flat0();
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        // 2.5 as a double.
        vm.mem.write_u64(0x600, 0x4004_0000_0000_0000);
        assert_eq!(run(&mut vm, 32, |a| a.fld(qword_ptr(0x600))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fist(dword_ptr(0x700))), Ok(()));
        assert_eq!(vm.mem.read_u32(0x700), 2);
        assert_eq!(vm.cpu.fpu.fsw & (PE | C1), PE);
        vm.cpu.fpu.fcw |= 2 << 10;
        assert_eq!(run(&mut vm, 32, |a| a.fist(dword_ptr(0x700))), Ok(()));
        assert_eq!(vm.mem.read_u32(0x700), 3);
        assert_eq!(vm.cpu.fpu.fsw & (PE | C1), PE | C1);
    }

    #[test]
    fn narrowing_to_single_and_double() {
        let nearest = 0x037F;
        let chop = 0x0F7F;
        let pi = make(false, 0x4000, 0xC90F_DAA2_2168_C235);
        assert_eq!(
            to_ieee(&pi, nearest, 52, 11),
            (0x4009_21FB_5444_2D18, PE, false)
        );
        assert_eq!(to_ieee(&pi, nearest, 23, 8), (0x4049_0FDB, PE, true));
        assert_eq!(to_ieee(&pi, chop, 23, 8), (0x4049_0FDA, PE, false));
        assert_eq!(to_ieee(&ONE, nearest, 23, 8), (0x3F80_0000, 0, false));
        assert_eq!(
            to_ieee(&make(true, 0, 0), nearest, 23, 8),
            (0x8000_0000, 0, false)
        );
        // 2^200 overflows a single: +inf when rounding to nearest, the
        // largest finite value when chopping.
        let big = make(false, (BIAS + 200) as u16, 1 << 63);
        assert_eq!(to_ieee(&big, nearest, 23, 8), (0x7F80_0000, OE | PE, true));
        assert_eq!(to_ieee(&big, chop, 23, 8), (0x7F7F_FFFF, OE | PE, false));
        // 2^-149 is the smallest single denormal: exact, no UE when masked.
        let d = make(false, (BIAS - 149) as u16, 1 << 63);
        assert_eq!(to_ieee(&d, nearest, 23, 8), (0x0000_0001, 0, false));
        // ...but UE when unmasked (tiny, exact).
        assert_eq!(to_ieee(&d, nearest & !UE, 23, 8), (0x0000_0001, UE, false));
        // 2^-150 is a tie between 0 and 2^-149: nearest-even gives 0.
        let t = make(false, (BIAS - 150) as u16, 1 << 63);
        assert_eq!(to_ieee(&t, nearest, 23, 8), (0, UE | PE, false));
        // 1.5 * 2^-150 rounds up to 2^-149.
        let t = make(false, (BIAS - 150) as u16, 0xC000_0000_0000_0000);
        assert_eq!(to_ieee(&t, nearest, 23, 8), (1, UE | PE, true));
        // Largest single denormal + rounding up carries into the normal range.
        let t = make(false, (BIAS - 127) as u16, u64::MAX);
        assert_eq!(to_ieee(&t, nearest, 23, 8), (0x0080_0000, UE | PE, true));
        // An extended SNaN becomes a single QNaN with IE; infinity passes.
        let snan = make(true, 0x7FFF, 0x8000_0100_0000_0000);
        assert_eq!(to_ieee(&snan, nearest, 23, 8), (0xFFC0_0001, IE, false));
        let inf = make(false, 0x7FFF, 1 << 63);
        assert_eq!(
            to_ieee(&inf, nearest, 52, 11),
            (0x7FF0_0000_0000_0000, 0, false)
        );
        // Unnormal: invalid, indefinite.
        let un = make(false, 0x3FFF, 1 << 62);
        assert_eq!(to_ieee(&un, nearest, 23, 8), (0xFFC0_0000, IE, false));
    }

    #[test]
    fn fst_memory_forms() {
        let mut vm = flat0();
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        // Empty stack: masked underflow stores the single indefinite.
        assert_eq!(run(&mut vm, 32, |a| a.fst(dword_ptr(0x700))), Ok(()));
        assert_eq!(vm.mem.read_u32(0x700), 0xFFC0_0000);
        vm.mem.write_u64(0x600, 0xC004_0000_0000_0000);
        assert_eq!(run(&mut vm, 32, |a| a.fld(qword_ptr(0x600))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fst(dword_ptr(0x700))), Ok(()));
        assert_eq!(vm.mem.read_u32(0x700), 0xC020_0000);
        assert_eq!(run(&mut vm, 32, |a| a.fstp(qword_ptr(0x708))), Ok(()));
        assert_eq!(vm.mem.read_u64(0x708), 0xC004_0000_0000_0000);
        assert_eq!(vm.cpu.fpu.ftw, 0xFFFF);
        // Unmasked overflow: nothing stored, no pop, ES set.
        let big: Reg = make(false, (BIAS + 200) as u16, 1 << 63);
        vm.mem.write(0x610, &big);
        assert_eq!(run(&mut vm, 32, |a| a.fld(tword_ptr(0x610))), Ok(()));
        vm.cpu.fpu.fcw = 0x0377;
        vm.mem.write_u32(0x700, 0x1234_5678);
        assert_eq!(run(&mut vm, 32, |a| a.fstp(dword_ptr(0x700))), Ok(()));
        assert_eq!(vm.mem.read_u32(0x700), 0x1234_5678);
        assert_eq!(vm.cpu.fpu.ftw & 0xC000, 0);
        assert_ne!(vm.cpu.fpu.fsw & fsw::ES, 0);
    }

    #[test]
    fn constants_follow_rounding_control() {
        let mut vm = flat0();
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fldpi()), Ok(()));
        assert_eq!(reg_of(&vm, 0), make(false, 0x4000, 0xC90F_DAA2_2168_C235));
        assert_eq!(run(&mut vm, 32, |a| a.fldl2t()), Ok(()));
        assert_eq!(reg_of(&vm, 0), make(false, 0x4000, 0xD49A_784B_CD1B_8AFE));
        // Round up: every constant gains an ulp over the truncation.
        vm.cpu.fpu.fcw = 0x0B7F;
        assert_eq!(run(&mut vm, 32, |a| a.fldl2t()), Ok(()));
        assert_eq!(reg_of(&vm, 0), make(false, 0x4000, 0xD49A_784B_CD1B_8AFF));
        assert_eq!(run(&mut vm, 32, |a| a.fldln2()), Ok(()));
        assert_eq!(reg_of(&vm, 0), make(false, 0x3FFE, 0xB172_17F7_D1CF_79AC));
        // Chop: truncated.
        vm.cpu.fpu.fcw = 0x0F7F;
        assert_eq!(run(&mut vm, 32, |a| a.fldpi()), Ok(()));
        assert_eq!(reg_of(&vm, 0), make(false, 0x4000, 0xC90F_DAA2_2168_C234));
        assert_eq!(run(&mut vm, 32, |a| a.fldl2e()), Ok(()));
        assert_eq!(reg_of(&vm, 0), make(false, 0x3FFF, 0xB8AA_3B29_5C17_F0BB));
        assert_eq!(vm.cpu.fpu.fsw & 0x3F, 0);
    }

    #[test]
    fn stack_overflow_and_underflow() {
        let mut vm = flat0();
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        for _ in 0..8 {
            assert_eq!(run(&mut vm, 32, |a| a.fld1()), Ok(()));
        }
        assert_eq!(vm.cpu.fpu.ftw, 0);
        // Ninth push: masked overflow, indefinite pushed, C1 = 1.
        assert_eq!(run(&mut vm, 32, |a| a.fldz()), Ok(()));
        assert_eq!(reg_of(&vm, 0), INDEFINITE);
        assert_eq!(vm.cpu.fpu.fsw & (IE | fsw::SF | C1), IE | fsw::SF | C1);
        // Unmasked: stack unchanged, ES set; the next waiting x87
        // instruction raises #MF with CR0.NE.
        let mut vm = flat0();
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        vm.cpu.fpu.fcw = 0x037E;
        vm.cpu.cr0 |= cr0::NE;
        assert_eq!(run(&mut vm, 32, |a| a.fxch(st0, st1)), Ok(()));
        assert_eq!(vm.cpu.fpu.ftw, 0xFFFF);
        assert_eq!(vm.cpu.fpu.fsw & 0x80FF, 0x80C1);
        assert_eq!(run(&mut vm, 32, |a| a.fld1()), Err(Fault::mf()));
    }

    #[test]
    fn fld_fstp_m80_fxch_fchs_fabs() {
        let mut vm = flat0();
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        let pi80: Reg = [0x35, 0xC2, 0x68, 0x21, 0xA2, 0xDA, 0x0F, 0xC9, 0x00, 0x40];
        vm.mem.write(0x600, &pi80);
        assert_eq!(run(&mut vm, 32, |a| a.fld(tword_ptr(0x600))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fld1()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fxch(st0, st1)), Ok(()));
        assert_eq!(reg_of(&vm, 0), pi80);
        assert_eq!(reg_of(&vm, 1), ONE);
        assert_eq!(run(&mut vm, 32, |a| a.fchs()), Ok(()));
        assert_eq!(reg_of(&vm, 0)[9], 0xC0);
        assert_eq!(run(&mut vm, 32, |a| a.fabs()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fstp(tword_ptr(0x700))), Ok(()));
        let mut out = [0u8; 10];
        vm.mem.read(0x700, &mut out);
        assert_eq!(out, pi80);
        assert_eq!(reg_of(&vm, 0), ONE);
        // FST ST(3) copies into an empty register; FSTP ST(0) pops.
        assert_eq!(run(&mut vm, 32, |a| a.fst(st3)), Ok(()));
        assert_eq!(reg_of(&vm, 3), ONE);
        assert_eq!(run(&mut vm, 32, |a| a.fstp(st0)), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fincstp()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.ffree(st1)), Ok(()));
        assert_eq!(vm.cpu.fpu.ftw, 0xFFFF);
        assert_eq!(run(&mut vm, 32, |a| a.fnop()), Ok(()));
        // D9 D0.
        assert_eq!(vm.cpu.fpu.fop, 0x1D0);
    }
}
