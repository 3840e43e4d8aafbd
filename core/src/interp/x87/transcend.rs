//! The x87 transcendental instructions: F2XM1, FYL2X, FYL2XP1, FPTAN,
//! FPATAN, FSIN, FCOS, FSINCOS (SDM Vol. 2A, Vol. 1 8.3.8-8.3.9).
//!
//! Accuracy: the special cases (zeros, infinities, NaNs, the invalid and
//! zero-divide operands of the SDM's result tables) are exact, and so
//! are the stack, tag and condition-code effects (C2 = 1 with the operand
//! left alone when |ST(0)| >= 2^63 for FSIN/FCOS/FSINCOS/FPTAN; FPTAN
//! pushes 1.0; FSINCOS leaves the cosine in ST(0) and the sine in ST(1)).
//! The values themselves are computed with the host's f64 libm (std's
//! sin, cos, atan2, ln_1p, exp_m1, ...) on operands split so that no
//! extended bits are lost before the f64 step, then widened to extended
//! and rounded by RC. They are therefore accurate to about 1 ulp of
//! double precision, not of extended precision: this is the one place
//! where the interpreter is not bit-exact with hardware (whose results
//! are within 1 ulp of extended). PE is set for every inexact result, as
//! hardware does; UE/OE follow the rounded result. Precision control
//! does not apply (SDM Vol. 1 8.1.5.2 limits it to FADD, FSUB(R), FMUL,
//! FDIV(R) and FSQRT): results are formed at 64 bits.

use std::f64::consts::{LN_2, LOG2_E};

use iced_x86::{Code, Instruction};

use super::super::{Ctx, Table};
use super::arith::{
    compute, deliver, normalise_round, round_pack, stack_fault, unpack, Op, Outcome, Val, ZE,
};
use super::exact::{den_flag, exact, force_push, invalid, nan_one, nan_pair};
use super::load_store::{
    begin, empty, make, overflow, push, put, raise, set_c1, st, underflow, Reg, BIAS, DE, IE,
    INDEFINITE, ONE, PE,
};
use super::top;
use crate::cpu::FpuState;
use crate::exception::Fault;

/// Condition code C2 (FSW bit 10): operand out of range.
const C2: u16 = 1 << 10;
/// FCW with the precision control forced to 64 bits.
const PC64: u16 = 3 << 8;
/// ln(2) rounded to 64 bits: 0xB17217F7D1CF79AB_C9E3... * 2^(-1-63).
const LN2_EXT: Reg = [0xAC, 0x79, 0xCF, 0xD1, 0xF7, 0x17, 0x72, 0xB1, 0xFE, 0x3F];
/// Trigonometric operands must satisfy |x| < 2^63 (unbiased exponent
/// at most 62).
const TRIG_MAX_EXP: i32 = 63;

pub(super) fn register(t: &mut Table) {
    t.set_codes(&[Code::F2xm1, Code::Fsin, Code::Fcos], unary);
    t.set_codes(&[Code::Fyl2x, Code::Fyl2xp1, Code::Fpatan], binary);
    t.set_codes(&[Code::Fptan, Code::Fsincos], two_results);
}

// ---- f64 helpers ----------------------------------------------------------------

/// 2^k for k in the normal f64 range.
fn pow2(k: i32) -> f64 {
    f64::from_bits(((k.clamp(-1022, 1023) + 1023) as u64) << 52)
}

/// x * 2^k without intermediate overflow for |k| up to a few thousand.
fn ldexp(x: f64, k: i32) -> f64 {
    let mut x = x;
    let mut k = k;
    while k > 1000 {
        x *= pow2(1000);
        k -= 1000;
    }
    while k < -1000 {
        x *= pow2(-1000);
        k += 1000;
    }
    x * pow2(k)
}

/// The significand as an f64 in [1, 2] (rounded to 53 bits), signed.
fn sig_f64(sign: bool, m: u64) -> f64 {
    let v = m as f64 * pow2(-63);
    if sign {
        -v
    } else {
        v
    }
}

/// Widen x * 2^scale (x a finite f64) to extended, rounding by RC; the
/// low bits are marked inexact so PE is raised. A NaN or infinite x
/// (only from operands where the SDM leaves the result undefined) gives
/// the invalid response.
fn from_f64(x: f64, scale: i32, fcw: u16) -> Outcome {
    if !x.is_finite() {
        return invalid();
    }
    if x == 0.0 {
        return exact(make(x.is_sign_negative(), 0, 0), PE);
    }
    let bits = x.to_bits();
    let sign = bits >> 63 != 0;
    let be = ((bits >> 52) & 0x7FF) as i32;
    let frac = bits & ((1 << 52) - 1);
    let (e, m) = if be == 0 {
        let lz = frac.leading_zeros() as i32;
        (-1022 - (lz - 11), frac << lz)
    } else {
        (be - 1023, (frac | 1 << 52) << 11)
    };
    round_pack(sign, e + scale, (m as u128) << 64, true, fcw | PC64)
}

/// A value just beside ±x (1 + 2^-64 of an ulp, with sticky bits): for
/// the tiny-argument limits sin(x) -> x (below), tan(x) -> x (above)
/// where the f64 path would lose the direction.
fn beside(sign: bool, e: i32, m: u64, above: bool, fcw: u16) -> Outcome {
    let sig = (m as u128) << 64;
    let sig = if above { sig | 1 } else { sig - 1 };
    normalise_round(sign, e, sig, true, fcw | PC64)
}

/// Split a finite extended x = m * 2^(e-63) (|x| < 2^63) into f64 hi + lo
/// with hi holding the top 53 bits and lo the exact rest.
fn split(sign: bool, e: i32, m: u64) -> (f64, f64) {
    let hi_int = ((m as u128 + (1 << 10)) >> 11) << 11;
    let lo_int = m as i128 - hi_int as i128;
    let s = if sign { -1.0 } else { 1.0 };
    (
        s * ldexp(hi_int as f64, e - 63),
        s * ldexp(lo_int as f64, e - 63),
    )
}

/// sin and cos of hi + lo: sin(hi) + cos(hi) lo, cos(hi) - sin(hi) lo
/// (lo is below 2^-52 of hi, so the second-order terms vanish).
fn sin_cos(sign: bool, e: i32, m: u64) -> (f64, f64) {
    let (hi, lo) = split(sign, e, m);
    let (s, c) = hi.sin_cos();
    (s + c * lo, c - s * lo)
}

/// log2 of a positive finite x = m * 2^(e-63), keeping relative accuracy
/// near 1 (where x - 1 is formed exactly).
fn log2_pos(e: i32, m: u64) -> f64 {
    match e {
        0 => ((m - (1 << 63)) as f64 * pow2(-63)).ln_1p() * LOG2_E,
        -1 => (-(((1u128 << 64) - m as u128) as f64) * pow2(-64)).ln_1p() * LOG2_E,
        _ => e as f64 + (m as f64 * pow2(-63)).log2(),
    }
}

// ---- the operations -------------------------------------------------------------

/// The x87 operations with one operand and result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unary {
    F2xm1,
    Sin,
    Cos,
    Tan,
}

/// One-operand result; `None` when the operand is out of range (C2 = 1,
/// nothing changes).
pub(super) fn eval_unary(op: Unary, a: &Reg, fcw: u16) -> Option<Outcome> {
    let (v, den) = unpack(a);
    if let Some(o) = nan_one(&v) {
        return Some(o);
    }
    let d = den_flag(den, false);
    let with = |o: Outcome| Outcome {
        flags: o.flags | d,
        ..o
    };
    Some(match (op, v) {
        // 2^+-0 - 1 = +-0, sin(+-0) = +-0, tan(+-0) = +-0: exact.
        (Unary::F2xm1 | Unary::Sin | Unary::Tan, Val::Zero(s)) => exact(make(s, 0, 0), 0),
        (Unary::Cos, Val::Zero(_)) => exact(ONE, 0),
        (Unary::F2xm1, Val::Inf(false)) => exact(*a, 0),
        (Unary::F2xm1, Val::Inf(true)) => exact(make(true, BIAS as u16, 1 << 63), 0),
        (_, Val::Inf(_)) => invalid(),
        (Unary::F2xm1, Val::Fin(s, e, m)) => {
            if e < -60 {
                // 2^x - 1 = x ln 2 (1 + x ln2 / 2 + ...): relative error
                // below 2^-60.
                let o = compute(Op::Mul, a, &LN2_EXT, fcw | PC64);
                with(Outcome {
                    flags: o.flags | PE,
                    ..o
                })
            } else if e >= 11 {
                // Outside the defined domain (-1, 1): 2^x - 1 for
                // |x| >= 2048 overflows to +inf or is -1 to f64 accuracy.
                let x = sig_f64(s, m) * pow2(e.min(15));
                if s {
                    with(from_f64(-1.0, 0, fcw))
                } else {
                    let k = x.floor();
                    with(from_f64((x - k).exp2(), k as i32, fcw))
                }
            } else {
                let x = ldexp(sig_f64(s, m), e);
                with(from_f64((x * LN_2).exp_m1(), 0, fcw))
            }
        }
        (_, Val::Fin(_, e, _)) if e >= TRIG_MAX_EXP => return None,
        (Unary::Sin, Val::Fin(s, e, m)) if e < -40 => with(beside(s, e, m, false, fcw)),
        (Unary::Tan, Val::Fin(s, e, m)) if e < -40 => with(beside(s, e, m, true, fcw)),
        (Unary::Cos, Val::Fin(_, e, _)) if e < -40 => {
            // 1 - x^2/2: just below 1.
            with(round_pack(false, -1, u128::MAX, true, fcw | PC64))
        }
        (_, Val::Fin(s, e, m)) => {
            let (sn, cs) = sin_cos(s, e, m);
            let r = match op {
                Unary::Sin => sn,
                Unary::Cos => cs,
                _ => sn / cs,
            };
            with(from_f64(r, 0, fcw))
        }
        _ => invalid(),
    })
}

/// The two-operand operations that leave their result in ST(1) and pop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Binary {
    /// ST(1) * log2(ST(0)).
    Yl2x,
    /// ST(1) * log2(ST(0) + 1).
    Yl2xp1,
    /// arctan(ST(1) / ST(0)).
    Atan,
}

/// ST(1) op ST(0) (`y` = ST(1), `x` = ST(0)) with the SDM's tables of
/// special results (FYL2X, FYL2XP1, FPATAN in Vol. 2A).
pub(super) fn eval_binary(op: Binary, y: &Reg, x: &Reg, fcw: u16) -> Outcome {
    let (vy, dy) = unpack(y);
    let (vx, dx) = unpack(x);
    if let Some(o) = nan_pair(&vx, &vy) {
        return o;
    }
    let d = den_flag(dx, dy);
    let with = |o: Outcome| Outcome {
        flags: o.flags | d,
        ..o
    };
    let inf = |s: bool| exact(make(s, 0x7FFF, 1 << 63), d);
    let zero = |s: bool| exact(make(s, 0, 0), d);
    let sign = |v: &Val| matches!(v, Val::Zero(true) | Val::Inf(true) | Val::Fin(true, _, _));
    let (sx, sy) = (sign(&vx), sign(&vy));
    match op {
        Binary::Yl2x => match (vx, vy) {
            // log of a negative number, 0 * log 0, inf * log 1, 0 * log inf.
            (Val::Inf(true) | Val::Fin(true, _, _), _) => invalid(),
            (Val::Zero(_), Val::Zero(_)) | (Val::Inf(false), Val::Zero(_)) => invalid(),
            (Val::Zero(_), Val::Fin(..)) => Outcome {
                flags: ZE | d,
                ..inf(!sy)
            },
            (Val::Zero(_), _) => inf(!sy),
            (Val::Inf(false), _) => inf(sy),
            (Val::Fin(false, 0, m), _) if m == 1 << 63 => match vy {
                Val::Inf(_) => invalid(),
                _ => zero(sy),
            },
            (Val::Fin(false, e, m), _) => {
                let below_one = e < 0;
                match vy {
                    Val::Inf(_) => inf(sy ^ below_one),
                    Val::Zero(_) => zero(sy ^ below_one),
                    Val::Fin(_, ey, my) => {
                        with(from_f64(sig_f64(sy, my) * log2_pos(e, m), ey, fcw))
                    }
                    _ => invalid(),
                }
            }
            _ => invalid(),
        },
        Binary::Yl2xp1 => match (vx, vy) {
            (Val::Zero(_), Val::Inf(_)) => invalid(),
            (Val::Zero(_), _) => zero(sx ^ sy),
            // Outside the SDM's domain: log2(+inf) = +inf, log2(-inf + 1)
            // undefined.
            (Val::Inf(true), _) => invalid(),
            (Val::Inf(false), Val::Zero(_)) => invalid(),
            (Val::Inf(false), _) => inf(sy),
            (Val::Fin(s, e, m), _) => {
                if s && e >= 0 {
                    // x <= -1: log2 of a non-positive number.
                    return invalid();
                }
                match vy {
                    Val::Inf(_) => inf(sy ^ s),
                    Val::Zero(_) => zero(sy ^ s),
                    Val::Fin(_, ey, my) => {
                        let (l, le) = if e < -100 {
                            // log2(1 + x) = x log2(e) (1 - x/2 + ...).
                            (sig_f64(s, m) * LOG2_E, e)
                        } else {
                            (ldexp(sig_f64(s, m), e).ln_1p() * LOG2_E, 0)
                        };
                        with(from_f64(sig_f64(sy, my) * l, ey + le, fcw))
                    }
                    _ => invalid(),
                }
            }
            _ => invalid(),
        },
        Binary::Atan => {
            if let (Val::Fin(_, ey, _), Val::Fin(false, ex, _)) = (vy, vx) {
                if ey - ex < -60 {
                    // arctan(t) = t (1 - t^2/3 + ...) with t < 2^-59.
                    let o = compute(Op::Div, y, x, fcw | PC64);
                    return with(Outcome {
                        flags: o.flags | PE,
                        ..o
                    });
                }
            }
            // Zeros and infinities follow IEEE atan2, as the SDM's
            // FPATAN table does; finite pairs are scaled to a common
            // exponent.
            let val = |v: &Val, scale: i32| match *v {
                Val::Zero(s) => make_f(s, 0.0),
                Val::Inf(s) => make_f(s, f64::INFINITY),
                Val::Fin(s, e, m) => ldexp(sig_f64(s, m), (e - scale).clamp(-1100, 1100)),
                _ => f64::NAN,
            };
            let ex = match vx {
                Val::Fin(_, e, _) => e,
                _ => 0,
            };
            let r = val(&vy, ex).atan2(val(&vx, ex));
            if r == 0.0 {
                return zero(r.is_sign_negative());
            }
            with(from_f64(r, 0, fcw))
        }
    }
}

fn make_f(sign: bool, v: f64) -> f64 {
    if sign {
        -v
    } else {
        v
    }
}

// ---- handlers -------------------------------------------------------------------

fn set_c2(f: &mut FpuState, on: bool) {
    if on {
        f.fsw |= C2;
    } else {
        f.fsw &= !C2;
    }
}

/// F2XM1, FSIN, FCOS on ST(0).
fn unary(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let op = match ins.code() {
        Code::F2xm1 => Unary::F2xm1,
        Code::Fsin => Unary::Sin,
        _ => Unary::Cos,
    };
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let s0 = st(f, 0);
    if empty(f, s0) {
        set_c2(f, false);
        return stack_fault(f, s0, false);
    }
    match eval_unary(op, &f.regs[s0], f.fcw) {
        None => set_c2(f, true),
        Some(o) => {
            set_c2(f, false);
            deliver(f, s0, false, o);
        }
    }
    Ok(())
}

/// FYL2X, FYL2XP1, FPATAN: ST(1) = result, pop.
fn binary(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let op = match ins.code() {
        Code::Fyl2x => Binary::Yl2x,
        Code::Fyl2xp1 => Binary::Yl2xp1,
        _ => Binary::Atan,
    };
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let (s0, s1) = (st(f, 0), st(f, 1));
    if empty(f, s0) || empty(f, s1) {
        return stack_fault(f, s1, true);
    }
    let o = eval_binary(op, &f.regs[s1], &f.regs[s0], f.fcw);
    deliver(f, s1, true, o);
    Ok(())
}

/// FPTAN (ST(0) = tan, push 1.0) and FSINCOS (ST(0) = sin, push cos).
/// An empty ST(0) or a full stack is a stack fault: masked, ST(0) and
/// the pushed register get the indefinite. A NaN operand gives the NaN
/// in both. Out of range (|x| >= 2^63): C2 = 1, nothing else changes.
fn two_results(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let tan = ins.code() == Code::Fptan;
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let s0 = st(f, 0);
    let full = !empty(f, (top(f) + 7) & 7);
    if empty(f, s0) || full {
        set_c2(f, false);
        let masked = if full { overflow(f) } else { underflow(f) };
        if masked {
            put(f, s0, INDEFINITE);
            force_push(f, INDEFINITE);
        }
        return Ok(());
    }
    let a = f.regs[s0];
    let first = eval_unary(if tan { Unary::Tan } else { Unary::Sin }, &a, f.fcw);
    let Some(first) = first else {
        set_c2(f, true);
        return Ok(());
    };
    set_c2(f, false);
    let second = if matches!(unpack(&a).0, Val::NaN(..) | Val::Unsupported | Val::Inf(_)) {
        exact(first.value, 0)
    } else if tan {
        exact(ONE, 0)
    } else {
        eval_unary(Unary::Cos, &a, f.fcw).unwrap_or_else(invalid)
    };
    let fl = first.flags | second.flags;
    if fl & (IE | DE) & !f.fcw != 0 {
        raise(f, if fl & IE != 0 { IE } else { DE });
        return Ok(());
    }
    set_c1(f, (first.up || second.up) && fl & PE != 0);
    if fl != 0 {
        raise(f, fl);
    }
    put(f, s0, first.value);
    push(f, second.value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::super::system::testutil::*;
    use super::super::load_store::{from_ieee, from_int, to_ieee};
    use super::*;
    use iced_x86::code_asm::*;

    const NEAREST: u16 = 0x037F;

    fn ext(sign: bool, e: i32, m: u64) -> Reg {
        make(sign, (e + BIAS) as u16, m)
    }
    fn of(x: f64) -> Reg {
        from_ieee(x.to_bits(), 52, 11).0
    }
    /// The extended result as f64 (rounded to nearest double).
    fn as_f64(r: &Reg) -> f64 {
        f64::from_bits(to_ieee(r, 0x037F, 52, 11).0)
    }
    fn close(got: f64, want: f64) {
        let ulp = (want.abs() * f64::EPSILON).max(f64::MIN_POSITIVE);
        assert!((got - want).abs() <= 2.0 * ulp, "got {got:e} want {want:e}");
    }

    #[test]
    fn trig_exact_cases() {
        let pz = make(false, 0, 0);
        let nz = make(true, 0, 0);
        let s = eval_unary(Unary::Sin, &nz, NEAREST).unwrap();
        assert_eq!((s.value, s.flags), (nz, 0));
        let s = eval_unary(Unary::Sin, &pz, NEAREST).unwrap();
        assert_eq!((s.value, s.flags), (pz, 0));
        let c = eval_unary(Unary::Cos, &pz, NEAREST).unwrap();
        assert_eq!((c.value, c.flags), (ONE, 0));
        // |x| >= 2^63: out of range.
        assert!(eval_unary(Unary::Sin, &ext(false, 64, 1 << 63), NEAREST).is_none());
        assert!(eval_unary(Unary::Tan, &ext(true, 63, 1 << 63), NEAREST).is_none());
        // Just below 2^63 is in range.
        assert!(eval_unary(Unary::Cos, &ext(false, 62, u64::MAX), NEAREST).is_some());
        let inf = make(false, 0x7FFF, 1 << 63);
        assert_eq!(eval_unary(Unary::Sin, &inf, NEAREST).unwrap().flags, IE);
        // F2XM1(-inf) = -1 exactly; F2XM1(1) = 1 (inexact by f64).
        let m1 = eval_unary(Unary::F2xm1, &make(true, 0x7FFF, 1 << 63), NEAREST).unwrap();
        assert_eq!((m1.value, m1.flags), (from_int(-1), 0));
    }

    #[test]
    fn trig_values_to_f64_accuracy() {
        for x in [0.5f64, 1.0, -2.0, 3.0, 10.0, 1e5, -123.456] {
            let r = of(x);
            let s = eval_unary(Unary::Sin, &r, NEAREST).unwrap();
            close(as_f64(&s.value), x.sin());
            assert_eq!(s.flags, PE);
            close(
                as_f64(&eval_unary(Unary::Cos, &r, NEAREST).unwrap().value),
                x.cos(),
            );
            close(
                as_f64(&eval_unary(Unary::Tan, &r, NEAREST).unwrap().value),
                x.tan(),
            );
        }
        // F2XM1(0.5) = sqrt(2) - 1; F2XM1(-1) = -0.5.
        let o = eval_unary(Unary::F2xm1, &of(0.5), NEAREST).unwrap();
        close(as_f64(&o.value), std::f64::consts::SQRT_2 - 1.0);
        let o = eval_unary(Unary::F2xm1, &of(-1.0), NEAREST).unwrap();
        close(as_f64(&o.value), -0.5);
        // Tiny argument: sin(2^-100) rounds to 2^-100 to nearest, just
        // below it when chopping.
        let t = ext(false, -100, 1 << 63);
        assert_eq!(eval_unary(Unary::Sin, &t, NEAREST).unwrap().value, t);
        assert_eq!(
            eval_unary(Unary::Sin, &t, 0x0F7F).unwrap().value,
            ext(false, -101, u64::MAX)
        );
    }

    #[test]
    fn log_and_atan() {
        let c = |op, y: f64, x: f64| as_f64(&eval_binary(op, &of(y), &of(x), NEAREST).value);
        // 3 * log2(8) = 9; 1 * log2(0.5) = -1; 2 * log2(1 + 1) = 2.
        close(c(Binary::Yl2x, 3.0, 8.0), 9.0);
        close(c(Binary::Yl2x, 1.0, 0.5), -1.0);
        close(c(Binary::Yl2x, 1.0, 10.0), 10f64.log2());
        close(c(Binary::Yl2xp1, 2.0, 1.0), 2.0);
        close(c(Binary::Yl2xp1, 1.0, 1e-10), (1e-10f64).ln_1p() * LOG2_E);
        // atan(1/1) = pi/4; atan2(1, -1) = 3pi/4; atan2(-0, -1) = -pi.
        close(c(Binary::Atan, 1.0, 1.0), std::f64::consts::FRAC_PI_4);
        close(
            c(Binary::Atan, 1.0, -1.0),
            3.0 * std::f64::consts::FRAC_PI_4,
        );
        close(c(Binary::Atan, -0.0, -1.0), -std::f64::consts::PI);
        // Specials: log2(1) = +0 exact; 1 * log2(0) = -inf with ZE;
        // log2(-1) invalid; atan2(+0, +5) = +0 exact.
        let o = eval_binary(Binary::Yl2x, &of(3.0), &of(1.0), NEAREST);
        assert_eq!((o.value, o.flags), (make(false, 0, 0), 0));
        let o = eval_binary(Binary::Yl2x, &of(1.0), &of(0.0), NEAREST);
        assert_eq!((o.value, o.flags), (make(true, 0x7FFF, 1 << 63), ZE));
        assert_eq!(
            eval_binary(Binary::Yl2x, &of(1.0), &of(-1.0), NEAREST).flags,
            IE
        );
        let o = eval_binary(Binary::Atan, &of(0.0), &of(5.0), NEAREST);
        assert_eq!((o.value, o.flags), (make(false, 0, 0), 0));
    }

    /// Through the interpreter: FPTAN(0) leaves 0 then pushes 1; FSINCOS
    /// order; FSIN of 2^64 sets C2 and leaves ST(0); FPATAN(1, 1) = pi/4.
    #[test]
    fn instruction_forms() {
        let mut vm = flat0();
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fldz()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fptan()), Ok(()));
        let f = vm.cpu.fpu;
        assert_eq!(f.regs[st(&f, 0)], ONE);
        assert_eq!(f.regs[st(&f, 1)], make(false, 0, 0));
        assert_eq!(f.fsw & (C2 | 0x3F), 0);
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        vm.mem.write_u64(0x600, 0.5f64.to_bits());
        assert_eq!(run(&mut vm, 32, |a| a.fld(qword_ptr(0x600))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fsincos()), Ok(()));
        let f = vm.cpu.fpu;
        close(as_f64(&f.regs[st(&f, 0)]), 0.5f64.cos());
        close(as_f64(&f.regs[st(&f, 1)]), 0.5f64.sin());
        assert_eq!(f.fsw & 0x3F, PE);
        // FSIN of 2^64: C2 = 1, ST(0) unchanged.
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        vm.mem.write_u64(0x600, 2f64.powi(64).to_bits());
        assert_eq!(run(&mut vm, 32, |a| a.fld(qword_ptr(0x600))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fsin()), Ok(()));
        let f = vm.cpu.fpu;
        assert_eq!(f.regs[st(&f, 0)], ext(false, 64, 1 << 63));
        assert_eq!(f.fsw & C2, C2);
        // FPATAN: ST(1) = 1, ST(0) = 1 -> pi/4, one register left.
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fld1()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fld1()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fpatan()), Ok(()));
        let f = vm.cpu.fpu;
        close(as_f64(&f.regs[st(&f, 0)]), std::f64::consts::FRAC_PI_4);
        assert_eq!(f.ftw, 0x3FFF);
        // FYL2X on an empty stack: masked underflow, ST(1) indefinite
        // written... both empty here: the pop leaves one indefinite.
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fyl2x()), Ok(()));
        assert_eq!(vm.cpu.fpu.fsw & 0x41, 0x41);
    }

    /// No operand pattern makes any of the new operations panic: random
    /// 80-bit images (every class, including unsupported encodings and
    /// extreme exponents) with every control word setting.
    #[test]
    fn random_operands_never_panic() {
        use super::super::exact::{ext_to_bcd, extract, remainder, scale};
        let mut seed = 0xDEAD_BEEF_1234_5678u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200_000 {
            let mut pick = || {
                let (a, b) = (next(), next());
                let exp = match b % 6 {
                    0 => 0,
                    1 => 0x7FFF,
                    2 => 0x3FFF + (b >> 8) as u16 % 128,
                    3 => 0x3FFF - (b >> 8) as u16 % 128,
                    _ => (b >> 16) as u16,
                };
                let mant = if b & 0x40 != 0 { a | 1 << 63 } else { a };
                make(b & 0x80 != 0, exp, mant)
            };
            let (x, y) = (pick(), pick());
            let fcw = 0x0040 | (next() as u16 & 0x0F3F);
            for op in [Unary::F2xm1, Unary::Sin, Unary::Cos, Unary::Tan] {
                let _ = eval_unary(op, &x, fcw);
            }
            for op in [Binary::Yl2x, Binary::Yl2xp1, Binary::Atan] {
                let _ = eval_binary(op, &y, &x, fcw);
            }
            let _ = remainder(&x, &y, false, fcw);
            let _ = remainder(&x, &y, true, fcw);
            let _ = scale(&x, &y, fcw);
            let _ = extract(&x);
            let _ = ext_to_bcd(&x, fcw);
        }
    }
}
