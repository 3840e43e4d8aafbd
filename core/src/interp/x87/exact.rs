//! The x87 operations that are exact by definition, done in integer
//! arithmetic on the 64-bit significand so that every result is
//! bit-identical to hardware: FPREM and FPREM1 (partial remainder,
//! SDM Vol. 2A FPREM/FPREM1 and Vol. 1 8.3.10), FSCALE, FXTRACT, and the
//! packed-BCD transfers FBLD/FBSTP (SDM Vol. 1 4.7 and Vol. 2A
//! FBLD/FBSTP). Also the 8087/287 control opcodes FNENI,
//! FNDISI and FNSETPM, which a 387 or later executes as FNOP.
//!
//! The precision control does not apply to any of these (SDM Vol. 1
//! 8.1.5.2 lists only FADD, FSUB(R), FMUL, FDIV(R) and FSQRT): results
//! are formed at 64 bits with the rounding control.

use iced_x86::{Code, Instruction};

use super::super::{Ctx, Table};
use super::arith::{
    deliver, normalise_round, pick_nan, quiet, round_pack, stack_fault, unpack, Outcome, Val, ZE,
};
use super::check_nm;
use super::load_store::{
    begin, empty, from_int, make, overflow, parts, pop, push, put, raise, set_c1, st, to_int,
    underflow, Reg, BIAS, DE, IE, INDEFINITE, PE,
};
use super::top;
use crate::cpu::FpuState;
use crate::exception::Fault;

/// Condition codes C0, C1, C2, C3 (FSW bits 8, 9, 10, 14).
const C0: u16 = 1 << 8;
const C1: u16 = 1 << 9;
const C2: u16 = 1 << 10;
const C3: u16 = 1 << 14;
/// FCW with the precision control forced to 64 bits.
const PC64: u16 = 3 << 8;
/// Largest magnitude FBSTP can store: 18 nines.
const BCD_MAX: u64 = 999_999_999_999_999_999;
/// The packed-BCD integer indefinite (SDM Vol. 1 4.7): sign and
/// byte 8 all ones, byte 7 = 0xC0, digits zero.
pub const BCD_INDEFINITE: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 0xC0, 0xFF, 0xFF];

pub(super) fn register(t: &mut Table) {
    t.set_codes(&[Code::Fprem, Code::Fprem1], fprem);
    t.set_codes(&[Code::Fscale], fscale);
    t.set_codes(&[Code::Fxtract], fxtract);
    t.set_codes(&[Code::Fbld_m80bcd], fbld);
    t.set_codes(&[Code::Fbstp_m80bcd], fbstp);
    t.set_codes(&[Code::Fneni, Code::Fndisi, Code::Fnsetpm], fnop_287);
}

/// Invalid or NaN operands shared by the two-operand operations:
/// unsupported formats give the indefinite with IE; NaNs propagate
/// (SNaN with IE).
pub(super) fn nan_pair(va: &Val, vb: &Val) -> Option<Outcome> {
    if matches!(va, Val::Unsupported) || matches!(vb, Val::Unsupported) {
        return Some(invalid());
    }
    if matches!(va, Val::NaN(..)) || matches!(vb, Val::NaN(..)) {
        let snan = matches!(va, Val::NaN(_, true)) || matches!(vb, Val::NaN(_, true));
        return Some(Outcome {
            value: pick_nan(va, vb),
            flags: if snan { IE } else { 0 },
            up: false,
        });
    }
    None
}

/// The same for one operand.
pub(super) fn nan_one(v: &Val) -> Option<Outcome> {
    match *v {
        Val::Unsupported => Some(invalid()),
        Val::NaN(r, s) => Some(Outcome {
            value: quiet(r),
            flags: if s { IE } else { 0 },
            up: false,
        }),
        _ => None,
    }
}

/// The masked invalid-operation response: the indefinite with IE.
pub(super) fn invalid() -> Outcome {
    Outcome {
        value: INDEFINITE,
        flags: IE,
        up: false,
    }
}

/// An exact value delivered as is.
pub(super) fn exact(value: Reg, flags: u16) -> Outcome {
    Outcome {
        value,
        flags,
        up: false,
    }
}

pub(super) fn den_flag(a: bool, b: bool) -> u16 {
    if a || b {
        DE
    } else {
        0
    }
}

// ---- FPREM / FPREM1 -----------------------------------------------------------

/// The result of a partial remainder: the new ST(0), the low three
/// quotient bits and whether the reduction is incomplete (C2).
pub(super) struct Remainder {
    pub(super) out: Outcome,
    pub(super) q: u64,
    pub(super) incomplete: bool,
}

/// ST(0) rem ST(1) (SDM Vol. 2A FPREM/FPREM1 "Operation"). `nearest`
/// selects FPREM1 (IEEE remainder: the quotient rounded to nearest even)
/// over FPREM (truncated). When the exponent difference D is 64 or more
/// the reduction is partial: with N = 32 + D mod 32 (the SDM leaves N
/// implementation-dependent between 32 and 63; this is the choice of
/// QEMU), QQ = trunc((ST0 / ST1) / 2^(D-N)) and ST0 -= ST1 * QQ *
/// 2^(D-N), C2 = 1. Everything is exact integer arithmetic.
pub(super) fn remainder(a: &Reg, b: &Reg, nearest: bool, fcw: u16) -> Remainder {
    let fcw = fcw | PC64;
    let (va, da) = unpack(a);
    let (vb, db) = unpack(b);
    let done = |out| Remainder {
        out,
        q: 0,
        incomplete: false,
    };
    if let Some(o) = nan_pair(&va, &vb) {
        return done(o);
    }
    let den = den_flag(da, db);
    let (sa, ea, ma, sb_e, mb) = match (va, vb) {
        // inf rem anything, anything rem 0: invalid (not ZE).
        (Val::Inf(_), _) | (_, Val::Zero(_)) => return done(invalid()),
        // 0 rem finite/inf and finite rem inf: ST(0) unchanged.
        (Val::Zero(_), _) | (Val::Fin(..), Val::Inf(_)) => return done(exact(*a, den)),
        (Val::Fin(sa, ea, ma), Val::Fin(_, eb, mb)) => (sa, ea, ma, eb, mb),
        _ => return done(invalid()),
    };
    let eb = sb_e;
    let d = ea - eb;
    // |a| < 2^(ea+1) <= |b| / 2 when d <= -2: the result is a itself
    // for both forms (with a denormal a, the value is exact so the
    // normalised form is re-packed to the same encoding).
    if d < -1 || (d == -1 && !nearest) {
        let o = round_pack(sa, ea, (ma as u128) << 64, false, fcw);
        return done(Outcome {
            flags: o.flags | den,
            ..o
        });
    }
    // Integers A, B with |a| = A * 2^(u - 63), |b| = B * 2^(u - 63).
    let (num, div, unit, incomplete) = if d >= 64 {
        let n = 32 + d % 32;
        // b' = b * 2^(d - n); then a, b' differ by n < 64.
        ((ma as u128) << n, mb as u128, eb + (d - n), true)
    } else if d >= 0 {
        ((ma as u128) << d, mb as u128, eb, false)
    } else {
        (ma as u128, (mb as u128) << 1, ea, false)
    };
    let mut q = num / div;
    let mut r = num % div;
    let mut sign = sa;
    if nearest && !incomplete && (2 * r > div || (2 * r == div && q & 1 == 1)) {
        q += 1;
        r = div - r;
        sign = !sa;
    }
    let out = if r == 0 {
        exact(make(sa, 0, 0), 0)
    } else {
        // r * 2^(unit - 63) = r * 2^(e0 - 127).
        normalise_round(sign, unit + 64, r, false, fcw)
    };
    Remainder {
        out: Outcome {
            flags: out.flags | den,
            ..out
        },
        q: q as u64,
        incomplete,
    }
}

/// FPREM, FPREM1: ST(0) = partial remainder of ST(0) / ST(1); C0, C3,
/// C1 = quotient bits Q2, Q1, Q0, C2 = reduction incomplete.
fn fprem(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let (s0, s1) = (st(f, 0), st(f, 1));
    if empty(f, s0) || empty(f, s1) {
        f.fsw &= !(C0 | C2 | C3);
        return stack_fault(f, s0, false);
    }
    let r = remainder(&f.regs[s0], &f.regs[s1], ins.code() == Code::Fprem1, f.fcw);
    let blocked = r.out.flags & (IE | DE) & !f.fcw != 0;
    deliver(f, s0, false, r.out);
    if blocked {
        return Ok(());
    }
    let bit = |on: bool, c: u16| if on { c } else { 0 };
    // An incomplete reduction sets C2 alone: the quotient bits are not
    // defined then (SDM Vol. 2A FPREM), and the hardware clears them.
    let cc = if r.incomplete {
        C2
    } else {
        bit(r.q & 4 != 0, C0) | bit(r.q & 2 != 0, C3) | bit(r.q & 1 != 0, C1)
    };
    f.fsw = (f.fsw & !(C0 | C1 | C2 | C3)) | cc;
    Ok(())
}

// ---- FSCALE -------------------------------------------------------------------

/// ST(0) * 2^trunc(ST(1)) (SDM Vol. 2A FSCALE and its table of results).
pub(super) fn scale(a: &Reg, b: &Reg, fcw: u16) -> Outcome {
    let fcw = fcw | PC64;
    let (va, da) = unpack(a);
    let (vb, db) = unpack(b);
    if let Some(o) = nan_pair(&va, &vb) {
        return o;
    }
    let den = den_flag(da, db);
    let inf = |s: bool| exact(make(s, 0x7FFF, 1 << 63), den);
    let zero = |s: bool| exact(make(s, 0, 0), den);
    match (va, vb) {
        // 0 * 2^+inf and inf * 2^-inf are undefined.
        (Val::Zero(_), Val::Inf(false)) | (Val::Inf(_), Val::Inf(true)) => invalid(),
        (Val::Zero(s), _) => zero(s),
        (Val::Inf(s), _) => inf(s),
        (Val::Fin(s, _, _), Val::Inf(false)) => inf(s),
        (Val::Fin(s, _, _), Val::Inf(true)) => zero(s),
        (Val::Fin(s, e, m), Val::Zero(_)) => {
            let o = round_pack(s, e, (m as u128) << 64, false, fcw);
            Outcome {
                flags: o.flags | den,
                ..o
            }
        }
        (Val::Fin(s, e, m), Val::Fin(sb, eb, mb)) => {
            // trunc(|ST1|): beyond 2^20 every result over/underflows,
            // so the scale is clamped there.
            let n: i32 = if eb < 0 {
                0
            } else if eb >= 20 {
                1 << 20
            } else {
                (mb >> (63 - eb)) as i32
            };
            let n = if sb { -n } else { n };
            let o = round_pack(s, e + n, (m as u128) << 64, false, fcw);
            Outcome {
                flags: o.flags | den,
                ..o
            }
        }
        _ => invalid(),
    }
}

/// FSCALE.
fn fscale(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let (s0, s1) = (st(f, 0), st(f, 1));
    if empty(f, s0) || empty(f, s1) {
        return stack_fault(f, s0, false);
    }
    let o = scale(&f.regs[s0], &f.regs[s1], f.fcw);
    deliver(f, s0, false, o);
    Ok(())
}

// ---- FXTRACT ------------------------------------------------------------------

/// Split into (exponent, significand) as FXTRACT leaves them in ST(1)
/// and ST(0), with the flags (SDM Vol. 2A FXTRACT): zero gives -inf and
/// ZE, infinity gives +inf and the infinity, NaNs propagate to both.
pub(super) fn extract(a: &Reg) -> (Reg, Reg, u16) {
    let (v, den) = unpack(a);
    if let Some(o) = nan_one(&v) {
        return (o.value, o.value, o.flags);
    }
    match v {
        Val::Zero(s) => (make(true, 0x7FFF, 1 << 63), make(s, 0, 0), ZE),
        Val::Inf(s) => (make(false, 0x7FFF, 1 << 63), make(s, 0x7FFF, 1 << 63), 0),
        Val::Fin(s, e, m) => (
            from_int(e as i64),
            make(s, BIAS as u16, m),
            den_flag(den, false),
        ),
        _ => (INDEFINITE, INDEFINITE, IE),
    }
}

/// FXTRACT: ST(0) = exponent, then push the significand. A full stack
/// (ST(7) in use) or an empty ST(0) is a stack fault: masked, both
/// results are the indefinite.
fn fxtract(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let s0 = st(f, 0);
    let full = !empty(f, (top(f) + 7) & 7);
    if empty(f, s0) || full {
        // An empty ST(0) is reported as the underflow (C1 = 0) even
        // when the push would overflow too, as the hardware does.
        let masked = if empty(f, s0) {
            underflow(f)
        } else {
            overflow(f)
        };
        if masked {
            put(f, s0, INDEFINITE);
            force_push(f, INDEFINITE);
        }
        return Ok(());
    }
    let (e, sig, fl) = extract(&f.regs[s0]);
    if fl & (IE | DE | ZE) & !f.fcw != 0 {
        raise(f, if fl & IE != 0 { IE } else { fl });
        return Ok(());
    }
    set_c1(f, false);
    if fl != 0 {
        raise(f, fl);
    }
    put(f, s0, e);
    push(f, sig);
    Ok(())
}

/// Push over a register that may be in use (the masked stack-overflow
/// response writes the indefinite there).
pub(super) fn force_push(f: &mut FpuState, v: Reg) {
    let t = (top(f) + 7) & 7;
    f.fsw = (f.fsw & !super::fsw::TOP_MASK) | ((t as u16) << super::fsw::TOP_SHIFT);
    put(f, t, v);
}

// ---- FBLD / FBSTP -------------------------------------------------------------

/// Decode 18 packed-BCD digits and the sign byte (SDM Vol. 1 4.7):
/// byte i holds digits 2i (low nibble) and 2i+1 (high nibble), bit 7 of
/// byte 9 is the sign. Invalid nibbles (A-F) are undefined on hardware;
/// here they simply weigh their binary value.
pub(super) fn bcd_to_ext(b: &[u8; 10]) -> Reg {
    let v = b[..9].iter().rev().fold(0u64, |acc, &byte| {
        acc * 100 + (byte >> 4) as u64 * 10 + (byte & 0xF) as u64
    });
    let sign = b[9] & 0x80 != 0;
    if v == 0 {
        return make(sign, 0, 0);
    }
    let r = from_int(v as i64);
    if sign {
        let (_, e, m) = parts(&r);
        make(true, e, m)
    } else {
        r
    }
}

/// Encode |v| <= BCD_MAX with `sign`.
pub(super) fn to_bcd(v: u64, sign: bool) -> [u8; 10] {
    let mut b = [0u8; 10];
    let mut v = v;
    for byte in b.iter_mut().take(9) {
        let lo = (v % 10) as u8;
        v /= 10;
        let hi = (v % 10) as u8;
        v /= 10;
        *byte = hi << 4 | lo;
    }
    if sign {
        b[9] = 0x80;
    }
    b
}

/// FBSTP conversion of a register: the BCD image (the indefinite when
/// invalid), the flags and whether the value was rounded up.
pub(super) fn ext_to_bcd(r: &Reg, fcw: u16) -> ([u8; 10], u16, bool) {
    let (sign, _, _) = parts(r);
    let rc = (fcw >> 10) & 3;
    match to_int(r, rc, 64) {
        Some((v, inexact, up)) if v.unsigned_abs() <= BCD_MAX => (
            to_bcd(v.unsigned_abs(), sign),
            if inexact { PE } else { 0 },
            up,
        ),
        _ => (BCD_INDEFINITE, IE, false),
    }
}

/// FBLD m80bcd: push the exact integer.
fn fbld(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let seg = ctx.mem_seg(ins);
    let off = ctx.ea(ins);
    let lo = ctx.read_mem64(seg, off)?;
    let hi = ctx.read_mem(seg, off.wrapping_add(8), 2)? as u16;
    let mut b = [0u8; 10];
    b[..8].copy_from_slice(&lo.to_le_bytes());
    b[8..].copy_from_slice(&hi.to_le_bytes());
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    push(f, bcd_to_ext(&b));
    Ok(())
}

/// FBSTP m80bcd: round ST(0) by RC, store as BCD, pop. Invalid (NaN,
/// infinity, unsupported, out of range, empty): IE; masked, the BCD
/// indefinite is stored; unmasked, nothing is stored or popped.
fn fbstp(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let seg = ctx.mem_seg(ins);
    let off = ctx.ea(ins);
    let mut f = ctx.vm.cpu.fpu;
    let s0 = st(&f, 0);
    let (img, fl, up) = if empty(&f, s0) {
        if !underflow(&mut f) {
            last.apply(&mut f);
            ctx.vm.cpu.fpu = f;
            return Ok(());
        }
        (BCD_INDEFINITE, 0, false)
    } else {
        ext_to_bcd(&f.regs[s0], f.fcw)
    };
    if fl & IE != 0 && !raise(&mut f, IE) {
        last.apply(&mut f);
        ctx.vm.cpu.fpu = f;
        return Ok(());
    }
    ctx.check_write(seg, off, 8)?;
    ctx.check_write(seg, off.wrapping_add(8), 2)?;
    let mut lo = [0u8; 8];
    lo.copy_from_slice(&img[..8]);
    ctx.write_mem64(seg, off, u64::from_le_bytes(lo))?;
    ctx.write_mem(
        seg,
        off.wrapping_add(8),
        2,
        u16::from_le_bytes([img[8], img[9]]) as u32,
    )?;
    if fl & PE != 0 {
        set_c1(&mut f, up);
        raise(&mut f, PE);
    } else if fl & IE == 0 {
        set_c1(&mut f, false);
    }
    pop(&mut f);
    last.apply(&mut f);
    ctx.vm.cpu.fpu = f;
    Ok(())
}

/// FNENI, FNDISI, FNSETPM: 8087/287 controls that a 387 and later
/// treat as FNOP (SDM Vol. 1 8.3.11 and the 80387 manual).
fn fnop_287(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    check_nm(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEAREST: u16 = 0x037F;

    fn ext(sign: bool, e: i32, m: u64) -> Reg {
        make(sign, (e + BIAS) as u16, m)
    }
    fn r(v: i64) -> Reg {
        from_int(v)
    }

    #[test]
    fn fprem_small_quotients() {
        // 7.5 rem 2: q = 3 (Q2 Q1 Q0 = 0 1 1), remainder 1.5.
        let x = ext(false, 2, 0xF000_0000_0000_0000);
        let rr = remainder(&x, &r(2), false, NEAREST);
        assert_eq!(rr.out.value, ext(false, 0, 0xC000_0000_0000_0000));
        assert_eq!((rr.q & 7, rr.incomplete, rr.out.flags), (3, false, 0));
        // FPREM1: 7.5 / 2 = 3.75 -> q = 4, remainder -0.5.
        let rr = remainder(&x, &r(2), true, NEAREST);
        assert_eq!(rr.out.value, ext(true, -1, 1 << 63));
        assert_eq!(rr.q & 7, 4);
        // -7 rem 2 = -1 (sign of the dividend), q = 3.
        let rr = remainder(&r(-7), &r(2), false, NEAREST);
        assert_eq!((rr.out.value, rr.q), (r(-1), 3));
        // FPREM1 5 rem 2: 2.5 ties to even q = 2, remainder +1; 7 rem 2:
        // 3.5 -> 4, remainder -1.
        let rr = remainder(&r(5), &r(2), true, NEAREST);
        assert_eq!((rr.out.value, rr.q), (r(1), 2));
        let rr = remainder(&r(7), &r(2), true, NEAREST);
        assert_eq!((rr.out.value, rr.q), (r(-1), 4));
        // Exact multiple: +0 with the dividend's sign.
        let rr = remainder(&r(-6), &r(3), false, NEAREST);
        assert_eq!((rr.out.value, rr.q), (make(true, 0, 0), 2));
        // 1 rem 3 = 1 (q 0); FPREM1 2 rem 3 = -1 (q 1); 1.5 rem1 4 = 1.5.
        assert_eq!(remainder(&r(1), &r(3), false, NEAREST).out.value, r(1));
        let rr = remainder(&r(2), &r(3), true, NEAREST);
        assert_eq!((rr.out.value, rr.q), (r(-1), 1));
        let x = ext(false, 0, 0xC000_0000_0000_0000);
        assert_eq!(remainder(&x, &r(4), true, NEAREST).out.value, x);
        // Precision control does not apply.
        let big = ext(false, 63, 0xFFFF_FFFF_FFFF_FFFF);
        let rr = remainder(&big, &ext(false, 70, 1 << 63), false, 0x007F);
        assert_eq!(rr.out.value, big);
    }

    /// A complete FPREM is exactly C's fmod (the host's `%` on f64,
    /// which is exact): compare on random doubles whose exponents differ
    /// by less than 64.
    #[test]
    fn fprem_matches_host_fmod() {
        use super::super::load_store::{from_ieee, to_ieee};
        let mut seed = 0x0123_4567_89AB_CDEFu64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mk = |r: u64| {
                let e = 1023 - 30 + (r >> 52) % 60;
                f64::from_bits((r & 0x800F_FFFF_FFFF_FFFF) | e << 52)
            };
            let (a, b) = (mk(next()), mk(next()));
            let rr = remainder(
                &from_ieee(a.to_bits(), 52, 11).0,
                &from_ieee(b.to_bits(), 52, 11).0,
                false,
                NEAREST,
            );
            assert!(!rr.incomplete);
            assert_eq!(rr.out.flags, 0);
            let (bits, _, _) = to_ieee(&rr.out.value, NEAREST, 52, 11);
            assert_eq!(bits, (a % b).to_bits(), "{a:e} rem {b:e}");
        }
    }

    #[test]
    fn fprem_partial_reduction() {
        // 2^100 rem 3: D = 100 - 1 = 99 >= 64: N = 32 + 99 % 32 = 35,
        // QQ = trunc(2^100 / (3 * 2^64)) = trunc(2^36 / 3), remainder
        // 2^100 - 3 * 2^64 * QQ = 2^64 * (2^36 mod 3) = 2^64 (2^36 = 1 mod 3).
        let x = ext(false, 100, 1 << 63);
        let rr = remainder(&x, &r(3), false, NEAREST);
        assert!(rr.incomplete);
        assert_eq!(rr.out.value, ext(false, 64, 1 << 63));
        assert_eq!(rr.q, (1u64 << 36) / 3);
        // Finishing: 2^64 rem 3 = 1 (D = 63 < 64).
        let rr = remainder(&rr.out.value, &r(3), false, NEAREST);
        assert!(!rr.incomplete);
        assert_eq!(rr.out.value, r(1));
    }

    #[test]
    fn fprem_specials() {
        let inf = make(false, 0x7FFF, 1 << 63);
        let zero = make(false, 0, 0);
        assert_eq!(remainder(&inf, &r(2), false, NEAREST).out.flags, IE);
        let z = remainder(&r(2), &zero, false, NEAREST);
        assert_eq!((z.out.value, z.out.flags), (INDEFINITE, IE));
        assert_eq!(remainder(&r(5), &inf, false, NEAREST).out.value, r(5));
        let nz = make(true, 0, 0);
        assert_eq!(remainder(&nz, &r(5), true, NEAREST).out.value, nz);
    }

    #[test]
    fn fscale_values() {
        // 1.5 * 2^3 = 12.
        let x = ext(false, 0, 0xC000_0000_0000_0000);
        assert_eq!(scale(&x, &r(3), NEAREST).value, r(12));
        // The scale truncates toward zero: 12 * 2^-2.9 = 12 / 4 = 3.
        let m29 = ext(true, 1, 0xB99A_0000_0000_0000);
        assert_eq!(scale(&r(12), &m29, NEAREST).value, r(3));
        // Overflow to infinity, underflow to denormal (exact: no UE).
        let o = scale(&r(1), &r(20000), NEAREST);
        assert_eq!(o.value, make(false, 0x7FFF, 1 << 63));
        assert_eq!(o.flags & 0x3F, 0x28);
        let d = scale(&r(1), &r(-16383), NEAREST);
        assert_eq!((d.value, d.flags), (make(false, 0, 1 << 62), 0));
        // Specials.
        let pinf = make(false, 0x7FFF, 1 << 63);
        let ninf = make(true, 0x7FFF, 1 << 63);
        assert_eq!(scale(&make(false, 0, 0), &pinf, NEAREST).flags, IE);
        assert_eq!(scale(&r(-3), &ninf, NEAREST).value, make(true, 0, 0));
        assert_eq!(scale(&r(-3), &pinf, NEAREST).value, ninf);
    }

    #[test]
    fn fxtract_values() {
        // 12 = 1.5 * 2^3.
        let (e, s, fl) = extract(&r(12));
        assert_eq!((e, s, fl), (r(3), ext(false, 0, 0xC000_0000_0000_0000), 0));
        // -0: -inf exponent, -0 significand, ZE.
        let (e, s, fl) = extract(&make(true, 0, 0));
        assert_eq!(
            (e, s, fl),
            (make(true, 0x7FFF, 1 << 63), make(true, 0, 0), ZE)
        );
        // Denormal 2^62 * 2^(-16382 - 63) = 2^-16383: exponent -16383, DE.
        let (e, s, fl) = extract(&make(false, 0, 1 << 62));
        assert_eq!((e, s, fl), (r(-16383), r(1), DE));
    }

    #[test]
    fn bcd_round_trip() {
        let v: i64 = -123_456_789_012_345_678;
        let b = to_bcd(v.unsigned_abs(), true);
        assert_eq!(
            b,
            [0x78, 0x56, 0x34, 0x12, 0x90, 0x78, 0x56, 0x34, 0x12, 0x80]
        );
        assert_eq!(bcd_to_ext(&b), r(v));
        assert_eq!(ext_to_bcd(&r(v), NEAREST), (b, 0, false));
        // Rounding by RC: 2.5 -> 2 (nearest), 3 (up), and PE.
        let x = ext(false, 1, 0xA000_0000_0000_0000);
        let (b, fl, up) = ext_to_bcd(&x, NEAREST);
        assert_eq!((b[0], fl, up), (0x02, PE, false));
        let (b, _, up) = ext_to_bcd(&x, 0x0B7F);
        assert_eq!((b[0], up), (0x03, true));
        // Out of range and NaN: the BCD indefinite.
        assert_eq!(
            ext_to_bcd(&r(1_000_000_000_000_000_000), NEAREST).0,
            BCD_INDEFINITE
        );
        assert_eq!(
            ext_to_bcd(&INDEFINITE, NEAREST),
            (BCD_INDEFINITE, IE, false)
        );
        assert_eq!(ext_to_bcd(&r(BCD_MAX as i64), NEAREST).1, 0);
        // -0 keeps its sign.
        assert_eq!(bcd_to_ext(&to_bcd(0, true)), make(true, 0, 0));
    }

    /// Every x87 opcode of the P6 decodes to a handler: the legacy-
    /// encoded F* instructions iced knows, less the later or foreign
    /// ones (FISTTP is SSE3, FEMMS 3DNow!, FRSTPM the 287XL's, FSTDW/
    /// FSTSG the 386SL's, FRINEAR/FRINT2/FRICHOP/FTSTP/FRSTPM Cyrix).
    #[test]
    fn every_p6_x87_opcode_is_handled() {
        use iced_x86::{EncodingKind, Mnemonic};
        let t = super::super::super::Table::build();
        let later = [
            Mnemonic::Fisttp,
            Mnemonic::Femms,
            Mnemonic::Frstpm,
            Mnemonic::Fnstdw,
            Mnemonic::Fnstsg,
            Mnemonic::Fstdw,
            Mnemonic::Fstsg,
            Mnemonic::Frinear,
            Mnemonic::Frint2,
            Mnemonic::Frichop,
            Mnemonic::Ftstp,
        ];
        let mut missing = Vec::new();
        for code in Code::values() {
            let m = code.mnemonic();
            let name = format!("{m:?}");
            // The waiting forms (FINIT, FSTSW, ...) decode as WAIT and
            // the FN* form.
            if code.encoding() != EncodingKind::Legacy
                || code.op_code().fwait()
                || !name.starts_with('F')
                || later.contains(&m)
                || m == Mnemonic::Fxsave64
                || m == Mnemonic::Fxrstor64
            {
                continue;
            }
            let ins = Instruction::with(code);
            if t.lookup(&ins).is_none() {
                missing.push(format!("{code:?}"));
            }
        }
        assert!(missing.is_empty(), "unhandled: {missing:?}");
    }

    /// FPREM through the interpreter: 7.5 rem 2 = 1.5, q = 3 = 011b:
    /// C0 = Q2 = 0, C3 = Q1 = 1, C1 = Q0 = 1, C2 = 0; ST(1) kept.
    #[test]
    fn fprem_condition_codes() {
        use super::super::super::system::testutil::*;
        use iced_x86::code_asm::*;
        let mut vm = flat0();
        vm.mem.write_u64(0x600, 2.0f64.to_bits());
        vm.mem.write_u64(0x608, 7.5f64.to_bits());
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fld(qword_ptr(0x600))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fld(qword_ptr(0x608))), Ok(()));
        vm.cpu.fpu.fsw |= C0 | C2;
        assert_eq!(run(&mut vm, 32, |a| a.fprem()), Ok(()));
        let f = vm.cpu.fpu;
        assert_eq!(f.regs[st(&f, 0)], ext(false, 0, 0xC000_0000_0000_0000));
        assert_eq!(f.regs[st(&f, 1)], r(2));
        assert_eq!(f.fsw & (C0 | C1 | C2 | C3), C3 | C1);
        // FPREM1 of 1.5 by 2: 0.75 -> q = 1, remainder -0.5: C1 only.
        assert_eq!(run(&mut vm, 32, |a| a.fprem1()), Ok(()));
        let f = vm.cpu.fpu;
        assert_eq!(f.regs[st(&f, 0)], ext(true, -1, 1 << 63));
        assert_eq!(f.fsw & (C0 | C1 | C2 | C3), C1);
        // Divisor zero: IE, indefinite.
        assert_eq!(run(&mut vm, 32, |a| a.fldz()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fxch(st0, st1)), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fprem()), Ok(()));
        let f = vm.cpu.fpu;
        assert_eq!(f.regs[st(&f, 0)], INDEFINITE);
        assert_eq!(f.fsw & IE, IE);
    }

    /// FBLD / FBSTP through memory, FXTRACT and FSCALE on the stack.
    #[test]
    fn bcd_and_fxtract_instructions() {
        use super::super::super::system::testutil::*;
        use iced_x86::code_asm::*;
        let mut vm = flat0();
        let img = [0x78, 0x56, 0x34, 0x12, 0x90, 0x78, 0x56, 0x34, 0x12, 0x80];
        vm.mem.write(0x700, &img);
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fbld(ptr(0x700))), Ok(()));
        let f = vm.cpu.fpu;
        assert_eq!(f.regs[st(&f, 0)], r(-123_456_789_012_345_678));
        assert_eq!(run(&mut vm, 32, |a| a.fbstp(ptr(0x710))), Ok(()));
        let mut out = [0u8; 10];
        vm.mem.read(0x710, &mut out);
        assert_eq!(out, img);
        assert_eq!(vm.cpu.fpu.ftw, 0xFFFF);
        // Empty stack, IE masked: the BCD indefinite is stored.
        assert_eq!(run(&mut vm, 32, |a| a.fbstp(ptr(0x710))), Ok(()));
        vm.mem.read(0x710, &mut out);
        assert_eq!(out, BCD_INDEFINITE);
        // FXTRACT 12: ST(0) = 1.5, ST(1) = 3; FSCALE puts 12 back.
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        vm.mem.write_u32(0x720, 12);
        assert_eq!(run(&mut vm, 32, |a| a.fild(dword_ptr(0x720))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fxtract()), Ok(()));
        let f = vm.cpu.fpu;
        assert_eq!(f.regs[st(&f, 0)], ext(false, 0, 0xC000_0000_0000_0000));
        assert_eq!(f.regs[st(&f, 1)], r(3));
        assert_eq!(run(&mut vm, 32, |a| a.fscale()), Ok(()));
        let f = vm.cpu.fpu;
        assert_eq!(f.regs[st(&f, 0)], r(12));
        // FXTRACT of 0 with ZE unmasked: nothing changes, ZE and ES.
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        vm.cpu.fpu.fcw &= !ZE;
        assert_eq!(run(&mut vm, 32, |a| a.fldz()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fxtract()), Ok(()));
        let f = vm.cpu.fpu;
        assert_eq!(f.ftw, 0x7FFF);
        assert_eq!(f.fsw & 0x80BF, 0x8084);
    }

    /// FXAM classes (SDM Vol. 2A FXAM): C3 C2 C0 = 100 zero,
    /// 110 denormal, 010 normal, 011 infinity, 001 NaN, 000 unsupported,
    /// 101 empty; C1 = sign.
    #[test]
    fn fxam_classes() {
        use super::super::super::system::testutil::*;
        use iced_x86::code_asm::*;
        let cases: [(Reg, u16); 7] = [
            (make(true, 0, 0), C3 | C1),
            (make(false, 0, 1), C3 | C2),
            (r(-5), C2 | C1),
            (make(false, 0x7FFF, 1 << 63), C2 | C0),
            (INDEFINITE, C0 | C1),
            (make(false, 0x3FFF, 1 << 62), 0),
            (make(false, 0x7FFF, 1 << 62), 0),
        ];
        for (v, want) in cases {
            let mut vm = flat0();
            vm.mem.write(0x700, &v);
            assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
            assert_eq!(run(&mut vm, 32, |a| a.fld(tword_ptr(0x700))), Ok(()));
            assert_eq!(run(&mut vm, 32, |a| a.fxam()), Ok(()));
            assert_eq!(vm.cpu.fpu.fsw & (C0 | C1 | C2 | C3), want, "{v:x?}");
        }
        let mut vm = flat0();
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fxam()), Ok(()));
        assert_eq!(vm.cpu.fpu.fsw & (C0 | C1 | C2 | C3), C3 | C0);
    }
}
