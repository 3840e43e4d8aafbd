//! x87 basic arithmetic, exact to the SDM: FADD, FSUB, FSUBR, FMUL, FDIV,
//! FDIVR in every form (m32fp, m64fp, m16int, m32int, ST(0)/ST(i) both
//! ways, and the popping forms). Results are rounded once, to the
//! precision control (24, 53 or 64 bits) with the extended exponent range
//! and the rounding control, from an exact intermediate (SDM Vol. 1 4.8,
//! 8.1.5.2).
//!
//! Special operands follow SDM Vol. 1 4.8.3 and Table 4-7 (NaN
//! propagation for the x87: the larger significand wins), 8.5 (invalid
//! operation, denormal operand, zero divide, overflow, underflow,
//! precision) with the masked responses; unmasked invalid, denormal and
//! zero-divide leave the destination and TOP unchanged; unmasked overflow
//! and underflow deliver the result with the exponent adjusted by 24576
//! (SDM Vol. 1 8.5.4-8.5.5).
//!
//! Also FSQRT (correctly rounded) and FRNDINT. FPREM, FSCALE, FXTRACT
//! and BCD are in `exact`, the transcendentals in `transcend`.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use super::super::{Ctx, Table};
use super::load_store::{
    begin, empty, from_ieee, from_int, make, parts, pop, put, raise, set_c1, st, underflow, Reg,
    BIAS, DE, IE, INDEFINITE, OE, PE, UE,
};
use crate::cpu::FpuState;
use crate::exception::Fault;

/// Zero-divide flag.
pub(super) const ZE: u16 = 1 << 2;
/// Exponent adjust of an unmasked overflow/underflow result.
const WRAP_BIAS: i32 = 24576;
/// Smallest and largest unbiased exponents of a normal extended value.
pub(super) const EMIN: i32 = 1 - BIAS;
const EMAX: i32 = BIAS;

pub(super) fn register(t: &mut Table) {
    t.set(
        &[
            Mnemonic::Fadd,
            Mnemonic::Faddp,
            Mnemonic::Fiadd,
            Mnemonic::Fsub,
            Mnemonic::Fsubp,
            Mnemonic::Fisub,
            Mnemonic::Fsubr,
            Mnemonic::Fsubrp,
            Mnemonic::Fisubr,
            Mnemonic::Fmul,
            Mnemonic::Fmulp,
            Mnemonic::Fimul,
            Mnemonic::Fdiv,
            Mnemonic::Fdivp,
            Mnemonic::Fidiv,
            Mnemonic::Fdivr,
            Mnemonic::Fdivrp,
            Mnemonic::Fidivr,
        ],
        farith,
    );
    t.set_codes(&[Code::Fsqrt, Code::Frndint], funary);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

/// An operand after classification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Val {
    Zero(bool),
    /// sign, unbiased exponent e, significand with bit 63 set: the value
    /// is sig * 2^(e - 63).
    Fin(bool, i32, u64),
    Inf(bool),
    /// A NaN (the register image, and whether it is signalling).
    NaN(Reg, bool),
    /// Pseudo-NaN, pseudo-infinity, unnormal.
    Unsupported,
}

/// Classify a register; a denormal (or pseudo-denormal) is normalised
/// and reported.
pub(super) fn unpack(r: &Reg) -> (Val, bool) {
    let (sign, exp, mant) = parts(r);
    if exp == 0x7FFF {
        if mant >> 63 == 0 {
            return (Val::Unsupported, false);
        }
        if mant << 1 == 0 {
            return (Val::Inf(sign), false);
        }
        return (Val::NaN(*r, (mant >> 62) & 1 == 0), false);
    }
    if exp == 0 {
        if mant == 0 {
            return (Val::Zero(sign), false);
        }
        let lz = mant.leading_zeros() as i32;
        return (Val::Fin(sign, EMIN - lz, mant << lz), true);
    }
    if mant >> 63 == 0 {
        return (Val::Unsupported, false);
    }
    (Val::Fin(sign, exp as i32 - BIAS, mant), false)
}

/// Quiet a NaN (set significand bit 62).
pub(super) fn quiet(r: Reg) -> Reg {
    let mut r = r;
    r[7] |= 0x40;
    r
}

/// x87 NaN propagation (SDM Vol. 1 Table 4-7): an SNaN and a QNaN give
/// the QNaN; two of a kind, the larger significand (on a tie the
/// positive one), quietened.
pub(super) fn pick_nan(a: &Val, b: &Val) -> Reg {
    match (a, b) {
        (Val::NaN(x, sx), Val::NaN(y, sy)) if sx != sy => {
            if *sx {
                *y
            } else {
                *x
            }
        }
        (Val::NaN(x, _), Val::NaN(y, _)) => {
            let (_, _, mx) = parts(x);
            let (_, _, my) = parts(y);
            let (mx, my) = (mx | 1 << 62, my | 1 << 62);
            let pick = if mx != my {
                if mx > my {
                    x
                } else {
                    y
                }
            } else if x[9] & 0x80 == 0 {
                x
            } else {
                y
            };
            quiet(*pick)
        }
        (Val::NaN(x, _), _) | (_, Val::NaN(x, _)) => quiet(*x),
        _ => INDEFINITE,
    }
}

/// The outcome of an operation: the register image to deliver (when
/// allowed) and the exception flags.
pub(super) struct Outcome {
    pub(super) value: Reg,
    pub(super) flags: u16,
    pub(super) up: bool,
}

/// A result that was not rounded up (C1 clear).
fn plain(value: Reg, flags: u16) -> Outcome {
    Outcome {
        value,
        flags,
        up: false,
    }
}

/// Precision in bits from FCW.PC (SDM Vol. 1 8.1.5.2; 01B is reserved
/// and treated as 64 here).
fn precision(fcw: u16) -> i32 {
    match (fcw >> 8) & 3 {
        0 => 24,
        2 => 53,
        _ => 64,
    }
}

/// Round sign * sig * 2^(e - 127) (bit 127 of `sig` set; `sticky` for
/// any nonzero bits below) to the FCW's precision and rounding, in the
/// extended exponent range.
pub(super) fn round_pack(sign: bool, e: i32, sig: u128, sticky: bool, fcw: u16) -> Outcome {
    let p = precision(fcw);
    let rc = (fcw >> 10) & 3;
    let um = fcw & UE != 0;
    let om = fcw & OE != 0;
    let tiny = e < EMIN;
    // Weight of the last kept bit: p bits below the leading one, but no
    // lower than the smallest extended denormal (unless UE is unmasked:
    // then the result is kept normal and rescaled).
    let mut lsb = e - (p - 1);
    if tiny && um {
        lsb = lsb.max(EMIN - 63);
    }
    let shift = (lsb - e + 127) as u32;
    let (q, rem, half) = if shift >= 128 {
        (0u128, sig, u128::MAX)
    } else {
        (
            sig >> shift,
            sig & ((1u128 << shift) - 1),
            1u128 << (shift - 1),
        )
    };
    let inexact = rem != 0 || sticky;
    let rem_gt_half = rem > half || (rem == half && sticky);
    let up = inexact
        && match rc {
            0 => rem_gt_half || (rem == half && !sticky && q & 1 == 1),
            1 => sign,
            2 => !sign,
            _ => false,
        };
    let q = q + up as u128;
    let mut flags = if inexact { PE } else { 0 };
    if q == 0 {
        if tiny && (inexact || !um) {
            flags |= UE;
        }
        return Outcome {
            value: make(sign, 0, 0),
            flags,
            up,
        };
    }
    let top = 127 - q.leading_zeros() as i32;
    let ev = lsb + top;
    let mant = if top <= 63 {
        (q as u64) << (63 - top)
    } else {
        (q >> (top - 63)) as u64
    };
    if ev > EMAX {
        flags |= OE;
        if !om {
            return Outcome {
                value: make(sign, (ev - WRAP_BIAS + BIAS) as u16, mant),
                flags,
                up,
            };
        }
        flags |= PE;
        let to_inf = match rc {
            0 => true,
            1 => sign,
            2 => !sign,
            _ => false,
        };
        let value = if to_inf {
            make(sign, 0x7FFF, 1 << 63)
        } else {
            make(sign, 0x7FFE, u64::MAX << (64 - p))
        };
        return Outcome {
            value,
            flags,
            up: to_inf,
        };
    }
    if tiny {
        if !um {
            flags |= UE;
            return Outcome {
                value: make(sign, (ev + WRAP_BIAS + BIAS) as u16, mant),
                flags,
                up,
            };
        }
        if inexact {
            flags |= UE;
        }
    }
    let value = if ev >= EMIN {
        make(sign, (ev + BIAS) as u16, mant)
    } else {
        // Extended denormal: exponent field 0, value = mant * 2^(EMIN-63).
        make(sign, 0, (q as u64) << (lsb - (EMIN - 63)))
    };
    Outcome { value, flags, up }
}

/// Normalise an exact nonzero magnitude `m` (u128) with value
/// m * 2^(e0 - 127) and round it.
pub(super) fn normalise_round(sign: bool, e0: i32, m: u128, sticky: bool, fcw: u16) -> Outcome {
    let lz = m.leading_zeros() as i32;
    round_pack(sign, e0 - lz, m << lz, sticky, fcw)
}

/// a op b for finite nonzero operands.
fn finite(op: Op, a: (bool, i32, u64), b: (bool, i32, u64), fcw: u16) -> Outcome {
    let (sa, ea, ma) = a;
    let (sb, eb, mb) = b;
    match op {
        Op::Add | Op::Sub => {
            let sb = sb ^ (op == Op::Sub);
            // Larger magnitude first.
            let ((sx, ex, mx), (sy, ey, my)) = if (ea, ma) >= (eb, mb) {
                ((sa, ea, ma), (sb, eb, mb))
            } else {
                ((sb, eb, mb), (sa, ea, ma))
            };
            // Magnitudes as u128 with the leading bit at 126 (one bit of
            // headroom for a carry); value = x * 2^(ex - 126).
            let x = (mx as u128) << 63;
            let d = (ex - ey) as u32;
            let (y, sticky) = if d >= 127 {
                (0u128, true)
            } else {
                let y = (my as u128) << 63;
                (y >> d, y & ((1u128 << d) - 1) != 0)
            };
            if sx == sy {
                normalise_round(sx, ex + 1, x + y, sticky, fcw)
            } else {
                // x > y; subtract the sticky borrow as a jammed bit.
                let diff = x - y - sticky as u128;
                if diff == 0 && !sticky {
                    // Exact cancellation: +0, or -0 rounding down.
                    let rc = (fcw >> 10) & 3;
                    return Outcome {
                        value: make(rc == 1, 0, 0),
                        flags: 0,
                        up: false,
                    };
                }
                normalise_round(sx, ex + 1, diff, sticky, fcw)
            }
        }
        Op::Mul => {
            let m = ma as u128 * mb as u128;
            // value = m * 2^(ea + eb - 126).
            normalise_round(sa ^ sb, ea + eb + 1, m, false, fcw)
        }
        Op::Div => {
            // 128 quotient bits: q1 (64) then q2 (64), sticky from the rest.
            let (n, e) = if ma >= mb {
                ((ma as u128) << 63, ea - eb)
            } else {
                ((ma as u128) << 64, ea - eb - 1)
            };
            let d = mb as u128;
            let (q1, r1) = (n / d, n % d);
            let n2 = r1 << 64;
            let (q2, r2) = (n2 / d, n2 % d);
            let q = q1 << 64 | q2;
            normalise_round(sa ^ sb, e, q, r2 != 0, fcw)
        }
    }
}

/// dest op src with every special case; `op` already accounts for the
/// reversed forms by the caller swapping operands.
pub(super) fn compute(op: Op, a: &Reg, b: &Reg, fcw: u16) -> Outcome {
    let (va, da) = unpack(a);
    let (vb, db) = unpack(b);
    let invalid = Outcome {
        value: INDEFINITE,
        flags: IE,
        up: false,
    };
    // Invalid operation first: NaNs, unsupported formats, then the
    // operation-specific invalid pairs.
    if matches!(va, Val::Unsupported) || matches!(vb, Val::Unsupported) {
        return invalid;
    }
    if matches!(va, Val::NaN(..)) || matches!(vb, Val::NaN(..)) {
        let snan = matches!(va, Val::NaN(_, true)) || matches!(vb, Val::NaN(_, true));
        return Outcome {
            value: pick_nan(&va, &vb),
            flags: if snan { IE } else { 0 },
            up: false,
        };
    }
    let sub = op == Op::Sub;
    let bad = match (op, va, vb) {
        (Op::Add | Op::Sub, Val::Inf(x), Val::Inf(y)) => (x != y) != sub,
        (Op::Mul, Val::Inf(_), Val::Zero(_)) | (Op::Mul, Val::Zero(_), Val::Inf(_)) => true,
        (Op::Div, Val::Inf(_), Val::Inf(_)) | (Op::Div, Val::Zero(_), Val::Zero(_)) => true,
        _ => false,
    };
    if bad {
        return invalid;
    }
    let den = if da || db { DE } else { 0 };
    let with = |o: Outcome| Outcome {
        flags: o.flags | den,
        ..o
    };
    let sign_of = |v: &Val| match *v {
        Val::Zero(s) | Val::Inf(s) | Val::Fin(s, _, _) => s,
        _ => false,
    };
    let (sa, sb) = (sign_of(&va), sign_of(&vb));
    let rc = (fcw >> 10) & 3;
    let simple = |value: Reg, flags: u16| {
        with(Outcome {
            value,
            flags,
            up: false,
        })
    };
    match op {
        Op::Add | Op::Sub => {
            let sb = sb ^ sub;
            match (va, vb) {
                (Val::Inf(_), _) => simple(make(sa, 0x7FFF, 1 << 63), 0),
                (_, Val::Inf(_)) => simple(make(sb, 0x7FFF, 1 << 63), 0),
                (Val::Zero(_), Val::Zero(_)) => {
                    let s = if sa == sb { sa } else { rc == 1 };
                    simple(make(s, 0, 0), 0)
                }
                (Val::Zero(_), Val::Fin(_, e, m)) => {
                    with(round_pack(sb, e, (m as u128) << 64, false, fcw))
                }
                (Val::Fin(_, e, m), Val::Zero(_)) => {
                    with(round_pack(sa, e, (m as u128) << 64, false, fcw))
                }
                (Val::Fin(_, ea, ma), Val::Fin(_, eb, mb)) => {
                    with(finite(Op::Add, (sa, ea, ma), (sb, eb, mb), fcw))
                }
                _ => invalid,
            }
        }
        Op::Mul => {
            let s = sa ^ sb;
            match (va, vb) {
                (Val::Inf(_), _) | (_, Val::Inf(_)) => simple(make(s, 0x7FFF, 1 << 63), 0),
                (Val::Zero(_), _) | (_, Val::Zero(_)) => simple(make(s, 0, 0), 0),
                (Val::Fin(_, ea, ma), Val::Fin(_, eb, mb)) => {
                    with(finite(Op::Mul, (sa, ea, ma), (sb, eb, mb), fcw))
                }
                _ => invalid,
            }
        }
        Op::Div => {
            let s = sa ^ sb;
            match (va, vb) {
                (Val::Inf(_), _) => simple(make(s, 0x7FFF, 1 << 63), 0),
                (_, Val::Inf(_)) => simple(make(s, 0, 0), 0),
                (Val::Zero(_), _) => simple(make(s, 0, 0), 0),
                (_, Val::Zero(_)) => simple(make(s, 0x7FFF, 1 << 63), ZE),
                (Val::Fin(_, ea, ma), Val::Fin(_, eb, mb)) => {
                    with(finite(Op::Div, (sa, ea, ma), (sb, eb, mb), fcw))
                }
                _ => invalid,
            }
        }
    }
}

/// Integer square root of `m` and its remainder m - r^2.
fn isqrt(m: u128) -> (u128, u128) {
    let mut r: u128 = 0;
    let mut rem = m;
    let mut bit: u128 = 1 << 126;
    while bit > m {
        bit >>= 2;
    }
    while bit != 0 {
        if rem >= r + bit {
            rem -= r + bit;
            r = (r >> 1) + bit;
        } else {
            r >>= 1;
        }
        bit >>= 2;
    }
    (r, rem)
}

/// FSQRT of one operand (SDM Vol. 2A FSQRT): negative nonzero values
/// (and -infinity) are invalid; -0 stays -0; correctly rounded.
fn sqrt(a: &Reg, fcw: u16) -> Outcome {
    let (v, den) = unpack(a);
    let d = if den { DE } else { 0 };
    match v {
        Val::Unsupported => plain(INDEFINITE, IE),
        Val::NaN(r, s) => plain(quiet(r), if s { IE } else { 0 }),
        Val::Zero(s) => plain(make(s, 0, 0), 0),
        Val::Inf(false) => plain(*a, 0),
        Val::Inf(true) | Val::Fin(true, _, _) => plain(INDEFINITE, IE),
        Val::Fin(false, e, m) => {
            // value = M * 2^(2k) with M in [2^126, 2^128).
            let (mm, k) = if e.rem_euclid(2) == 1 {
                ((m as u128) << 64, (e - 127) / 2)
            } else {
                ((m as u128) << 63, (e - 126) / 2)
            };
            let (r, rem) = isqrt(mm);
            // Encode the discarded fraction for rounding: 0, below half
            // (0.25) or above half (0.75); exactly half cannot occur.
            let frac: u128 = if rem == 0 {
                0
            } else if rem > r {
                3 << 62
            } else {
                1 << 62
            };
            let o = round_pack(false, k + 63, r << 64 | frac, false, fcw);
            Outcome {
                flags: o.flags | d,
                ..o
            }
        }
    }
}

/// FRNDINT (SDM Vol. 2A): round ST(0) to an integer by RC; PE when
/// inexact. NaN, infinity and zero pass (an SNaN is quietened with IE).
fn rndint(a: &Reg, fcw: u16) -> Outcome {
    let (v, den) = unpack(a);
    let d = if den { DE } else { 0 };
    match v {
        Val::Unsupported => plain(INDEFINITE, IE),
        Val::NaN(r, s) => plain(quiet(r), if s { IE } else { 0 }),
        Val::Zero(_) | Val::Inf(_) => plain(*a, 0),
        Val::Fin(_, e, _) if e >= 63 => plain(*a, d),
        Val::Fin(sign, e, m) => {
            let sh = (63 - e) as u32;
            let (q, rem, half) = if sh >= 128 {
                (0u128, m as u128, u128::MAX)
            } else {
                let m = m as u128;
                (m >> sh, m & ((1u128 << sh) - 1), 1u128 << (sh - 1))
            };
            let rc = (fcw >> 10) & 3;
            let up = rem != 0
                && match rc {
                    0 => rem > half || (rem == half && q & 1 == 1),
                    1 => sign,
                    2 => !sign,
                    _ => false,
                };
            let q = (q + up as u128) as u64;
            let flags = d | if rem != 0 { PE } else { 0 };
            let value = if q == 0 {
                make(sign, 0, 0)
            } else {
                let lz = q.leading_zeros();
                make(sign, (BIAS + 63 - lz as i32) as u16, q << lz)
            };
            Outcome { value, flags, up }
        }
    }
}

/// FSQRT, FRNDINT on ST(0).
fn funary(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let f = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    let s0 = st(f, 0);
    if empty(f, s0) {
        return stack_fault(f, s0, false);
    }
    let o = if ins.code() == Code::Fsqrt {
        sqrt(&f.regs[s0], f.fcw)
    } else {
        rndint(&f.regs[s0], f.fcw)
    };
    deliver(f, s0, false, o);
    Ok(())
}

/// The operation and whether it is reversed / pops, from the mnemonic.
fn decode(m: Mnemonic) -> (Op, bool, bool) {
    use Mnemonic as M;
    match m {
        M::Fadd | M::Fiadd => (Op::Add, false, false),
        M::Faddp => (Op::Add, false, true),
        M::Fsub | M::Fisub => (Op::Sub, false, false),
        M::Fsubp => (Op::Sub, false, true),
        M::Fsubr | M::Fisubr => (Op::Sub, true, false),
        M::Fsubrp => (Op::Sub, true, true),
        M::Fmul | M::Fimul => (Op::Mul, false, false),
        M::Fmulp => (Op::Mul, false, true),
        M::Fdiv | M::Fidiv => (Op::Div, false, false),
        M::Fdivp => (Op::Div, false, true),
        M::Fdivr | M::Fidivr => (Op::Div, true, false),
        _ => (Op::Div, true, true),
    }
}

/// FADD/FSUB/FSUBR/FMUL/FDIV/FDIVR and their P and I forms.
fn farith(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let last = begin(ctx, ins)?;
    let (op, rev, pops) = decode(ins.mnemonic());
    // Source operand from memory, converted exactly (with the load's
    // own exceptions: IE for an SNaN, DE for a denormal).
    let mem = if ins.op_count() >= 1 && ins.op0_kind() == OpKind::Memory {
        let seg = ctx.mem_seg(ins);
        let off = ctx.ea(ins);
        Some(match ins.code() {
            Code::Fadd_m32fp
            | Code::Fsub_m32fp
            | Code::Fsubr_m32fp
            | Code::Fmul_m32fp
            | Code::Fdiv_m32fp
            | Code::Fdivr_m32fp => (ctx.read_mem(seg, off, 4)? as u64, Some((23u32, 8u32))),
            Code::Fadd_m64fp
            | Code::Fsub_m64fp
            | Code::Fsubr_m64fp
            | Code::Fmul_m64fp
            | Code::Fdiv_m64fp
            | Code::Fdivr_m64fp => (ctx.read_mem64(seg, off)?, Some((52, 11))),
            Code::Fiadd_m16int
            | Code::Fisub_m16int
            | Code::Fisubr_m16int
            | Code::Fimul_m16int
            | Code::Fidiv_m16int
            | Code::Fidivr_m16int => (ctx.read_mem(seg, off, 2)? as u16 as i16 as i64 as u64, None),
            _ => (ctx.read_mem(seg, off, 4)? as i32 as i64 as u64, None),
        })
    } else {
        None
    };
    let f: &mut FpuState = &mut ctx.vm.cpu.fpu;
    last.apply(f);
    // Destination and source physical registers.
    let (dst, src_reg) = match mem {
        Some(_) => (st(f, 0), None),
        None => {
            // op0 = destination ST(x), op1 = source ST(y).
            let d = sti_index_n(ins, 0);
            let s = sti_index_n(ins, 1);
            (st(f, d), Some(st(f, s)))
        }
    };
    let (src, load_flags) = match (mem, src_reg) {
        (Some((raw, Some((fb, eb)))), _) => {
            // An SNaN operand stays signalling for the NaN choice (the
            // load quietened it; only an SNaN raises IE on a load).
            let (mut v, fl) = from_ieee(raw, fb, eb);
            if fl & IE != 0 {
                v[7] &= !0x40;
            }
            (v, fl)
        }
        (Some((raw, None)), _) => (from_int(raw as i64), 0),
        (None, Some(s)) => {
            if empty(f, s) {
                return stack_fault(f, dst, pops);
            }
            (f.regs[s], 0)
        }
        (None, None) => (INDEFINITE, 0),
    };
    if empty(f, dst) {
        return stack_fault(f, dst, pops);
    }
    let d = f.regs[dst];
    let (a, b) = if rev { (src, d) } else { (d, src) };
    let mut o = compute(op, &a, &b, f.fcw);
    // An SNaN or denormal memory operand raises on the load; an
    // invalid load yields the QNaN, which compute then propagates.
    if load_flags & IE != 0 {
        o.flags |= IE;
    }
    // A NaN register operand decides the result before the denormal
    // memory operand is looked at: no DE (as with register operands).
    if load_flags & DE != 0 && o.flags & IE == 0 && !matches!(unpack(&d).0, Val::NaN(..)) {
        o.flags |= DE;
    }
    deliver(f, dst, pops, o);
    Ok(())
}

/// ST(i) index of register operand `n`.
fn sti_index_n(ins: &Instruction, n: u32) -> usize {
    (ins.op_register(n) as usize).wrapping_sub(iced_x86::Register::ST0 as usize) & 7
}

/// Stack underflow on an arithmetic operand: masked, the destination
/// gets the indefinite (and the P form pops); unmasked, nothing changes.
pub(super) fn stack_fault(f: &mut FpuState, dst: usize, pops: bool) -> Result<(), Fault> {
    if underflow(f) {
        put(f, dst, INDEFINITE);
        if pops {
            pop(f);
        }
    }
    Ok(())
}

/// Commit an outcome with the masked/unmasked rules: unmasked IE, DE or
/// ZE leave everything but the flags unchanged.
pub(super) fn deliver(f: &mut FpuState, dst: usize, pops: bool, o: Outcome) {
    let blocking = o.flags & (IE | DE | ZE) & !f.fcw;
    // Flags that a blocked operation still reports: the blocking ones
    // (and IE takes precedence over DE).
    if blocking != 0 {
        let fl = if o.flags & IE != 0 {
            IE
        } else {
            o.flags & (DE | ZE)
        };
        raise(f, fl);
        return;
    }
    set_c1(f, o.up && o.flags & PE != 0);
    if o.flags != 0 {
        raise(f, o.flags);
    }
    put(f, dst, o.value);
    if pops {
        pop(f);
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::system::testutil::*;
    use super::super::load_store::from_int;
    use super::*;
    use crate::cpu::cr0;
    use iced_x86::code_asm::*;

    const NEAREST: u16 = 0x037F;

    fn r(v: i64) -> Reg {
        from_int(v)
    }

    fn ext(sign: bool, e: i32, m: u64) -> Reg {
        make(sign, (e + BIAS) as u16, m)
    }

    #[test]
    fn exact_integer_results() {
        let c = |op, a, b| compute(op, &r(a), &r(b), NEAREST);
        assert_eq!(c(Op::Add, 2, 3).value, r(5));
        assert_eq!(c(Op::Sub, 2, 3).value, r(-1));
        assert_eq!(c(Op::Mul, -6, 7).value, r(-42));
        assert_eq!(c(Op::Div, 42, -6).value, r(-7));
        assert_eq!(c(Op::Add, 2, 3).flags, 0);
        // x - x = +0; -0 when rounding down.
        assert_eq!(c(Op::Sub, 5, 5).value, make(false, 0, 0));
        assert_eq!(
            compute(Op::Sub, &r(5), &r(5), 0x077F).value,
            make(true, 0, 0)
        );
    }

    #[test]
    fn division_rounding_by_precision_control() {
        // 1/3 = 0.0101...: significand 0xAAAA...AA(AB when rounded).
        let third = compute(Op::Div, &r(1), &r(3), NEAREST);
        assert_eq!(third.value, ext(false, -2, 0xAAAA_AAAA_AAAA_AAAB));
        assert_eq!(third.flags, PE);
        assert!(third.up);
        // Chop: ...AAAA.
        let t = compute(Op::Div, &r(1), &r(3), 0x0F7F);
        assert_eq!(t.value, ext(false, -2, 0xAAAA_AAAA_AAAA_AAAA));
        assert!(!t.up);
        // 53-bit precision: the double nearest 1/3 is 0x3FD5555555555555,
        // significand 0x15555555555555 << 11 = 0xAAAAAAAAAAAAA800.
        let t = compute(Op::Div, &r(1), &r(3), 0x027F);
        assert_eq!(t.value, ext(false, -2, 0xAAAA_AAAA_AAAA_A800));
        // 24-bit: single 1/3 = 0x3EAAAAAB, significand 0xAAAAAB << 40.
        let t = compute(Op::Div, &r(1), &r(3), 0x007F);
        assert_eq!(t.value, ext(false, -2, 0xAAAA_AB00_0000_0000));
    }

    #[test]
    fn pentium_fdiv_check_is_exact() {
        // Linux's check_fpu: x - (x / y) * y with x = 4195835, y = 3145727
        // in double precision via the double operands; on a correct FPU
        // at 64-bit precision the FISTP result is 0.
        let x = r(4_195_835);
        let y = r(3_145_727);
        let q = compute(Op::Div, &x, &y, NEAREST).value;
        let p = compute(Op::Mul, &q, &y, NEAREST).value;
        let d = compute(Op::Sub, &x, &p, NEAREST).value;
        let (_, exp, _) = parts(&d);
        // |d| is far below 0.5: it rounds to integer 0.
        assert!(exp < BIAS as u16 - 1 || d == make(false, 0, 0));
    }

    /// Linux's check_fpu sequence (arch/x86 FDIV-bug check) through the
    /// interpreter: fninit; fldl x; fdivl y; fmull y; fldl x; fsubp;
    /// fistpl z; fwait. A correct FPU leaves z = 0 (x = 4195835,
    /// y = 3145727).
    #[test]
    fn linux_fdiv_bug_check_sequence() {
        let mut vm = flat0();
        vm.mem.write_u64(0x600, 4_195_835f64.to_bits());
        vm.mem.write_u64(0x608, 3_145_727f64.to_bits());
        vm.mem.write_u32(0x610, 0xDEAD_BEEF);
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fld(qword_ptr(0x600))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fdiv(qword_ptr(0x608))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fmul(qword_ptr(0x608))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fld(qword_ptr(0x600))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fsubp(st1, st0)), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fistp(dword_ptr(0x610))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.wait()), Ok(()));
        assert_eq!(vm.mem.read_u32(0x610), 0);
        assert_eq!(vm.cpu.fpu.ftw, 0xFFFF);
    }

    /// With PC = 53 and round-to-nearest, x87 results on doubles are
    /// the IEEE binary64 results (one rounding, wider exponent range):
    /// compare against the host's f64 arithmetic on pseudo-random normal
    /// operands, including the rounding of FST m64fp. Same for PC = 24
    /// against f32.
    #[test]
    fn matches_host_ieee_arithmetic() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pc53 = 0x027F;
        let pc24 = 0x007F;
        for _ in 0..20_000 {
            // Exponents within +-200 so nothing overflows or underflows;
            // every other pair within +-2 of each other (cancellation).
            let mk = |r: u64, span: u64| {
                let e = 1023 - span / 2 + (r >> 52) % span;
                f64::from_bits((r & 0x800F_FFFF_FFFF_FFFF) | e << 52)
            };
            let span = if next() & 1 == 0 { 400 } else { 4 };
            let (a, b) = (mk(next(), span), mk(next(), span));
            let (xa, _) = from_ieee(a.to_bits(), 52, 11);
            let (xb, _) = from_ieee(b.to_bits(), 52, 11);
            for (op, want) in [
                (Op::Add, a + b),
                (Op::Sub, a - b),
                (Op::Mul, a * b),
                (Op::Div, a / b),
            ] {
                let o = compute(op, &xa, &xb, pc53);
                let (bits, _, _) = super::super::load_store::to_ieee(&o.value, pc53, 52, 11);
                assert_eq!(bits, want.to_bits(), "{a:e} {op:?} {b:e}");
            }
            // Singles: only where operands and result are normal (a
            // denormal result would be rounded twice on the x87).
            let (fa, fb) = (a as f32, b as f32);
            if !fa.is_normal() || !fb.is_normal() {
                continue;
            }
            let (ya, _) = from_ieee(fa.to_bits() as u64, 23, 8);
            let (yb, _) = from_ieee(fb.to_bits() as u64, 23, 8);
            for (op, want) in [
                (Op::Add, fa + fb),
                (Op::Sub, fa - fb),
                (Op::Mul, fa * fb),
                (Op::Div, fa / fb),
            ] {
                if !want.is_normal() {
                    continue;
                }
                let o = compute(op, &ya, &yb, pc24);
                let (bits, _, _) = super::super::load_store::to_ieee(&o.value, pc24, 23, 8);
                assert_eq!(bits as u32, want.to_bits(), "{fa:e} {op:?} {fb:e}");
            }
        }
    }

    #[test]
    fn sqrt_and_rndint() {
        let near = NEAREST;
        assert_eq!(sqrt(&r(16), near).value, r(4));
        assert_eq!(sqrt(&r(16), near).flags, 0);
        assert_eq!(sqrt(&r(2), near).flags, PE);
        assert_eq!(sqrt(&r(-4), near).flags, IE);
        assert_eq!(sqrt(&make(true, 0, 0), near).value, make(true, 0, 0));
        // 0.25 -> 0.5 (even exponent path).
        assert_eq!(
            sqrt(&ext(false, -2, 1 << 63), near).value,
            ext(false, -1, 1 << 63)
        );
        // rndint: 2.5 -> 2 (nearest even), 3 (up); -2.5 -> -3 (down).
        let v = ext(false, 1, 0xA000_0000_0000_0000);
        assert_eq!(rndint(&v, near).value, r(2));
        assert_eq!(rndint(&v, 0x0B7F).value, r(3));
        let nv = ext(true, 1, 0xA000_0000_0000_0000);
        assert_eq!(rndint(&nv, 0x077F).value, r(-3));
        assert_eq!(rndint(&nv, 0x0F7F).value, r(-2));
        // -0.3 chops to -0.
        let small = ext(true, -2, 0x9999_9999_9999_999A);
        assert_eq!(rndint(&small, 0x0F7F).value, make(true, 0, 0));
        assert_eq!(rndint(&r(7), near).flags, 0);
    }

    /// FSQRT at PC = 53 matches the host's correctly rounded f64 sqrt.
    #[test]
    fn sqrt_matches_host() {
        let mut seed = 0x1234_5678_9ABC_DEF1u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let e = 1023 - 300 + (seed >> 52) % 600;
            let a = f64::from_bits((seed & 0x000F_FFFF_FFFF_FFFF) | e << 52);
            let (x, _) = from_ieee(a.to_bits(), 52, 11);
            let o = sqrt(&x, 0x027F);
            let (bits, _, _) = super::super::load_store::to_ieee(&o.value, 0x027F, 52, 11);
            assert_eq!(bits, a.sqrt().to_bits(), "sqrt {a:e}");
        }
    }

    #[test]
    fn specials() {
        let inf = make(false, 0x7FFF, 1 << 63);
        let ninf = make(true, 0x7FFF, 1 << 63);
        let zero = make(false, 0, 0);
        let c = |op, a: &Reg, b: &Reg| compute(op, a, b, NEAREST);
        assert_eq!(c(Op::Add, &inf, &ninf).flags, IE);
        assert_eq!(c(Op::Add, &inf, &ninf).value, INDEFINITE);
        assert_eq!(c(Op::Sub, &inf, &inf).flags, IE);
        assert_eq!(c(Op::Sub, &inf, &ninf).value, inf);
        assert_eq!(c(Op::Mul, &zero, &inf).flags, IE);
        assert_eq!(c(Op::Div, &zero, &zero).flags, IE);
        assert_eq!(c(Op::Div, &inf, &ninf).flags, IE);
        let z = c(Op::Div, &r(-1), &zero);
        assert_eq!((z.value, z.flags), (ninf, ZE));
        assert_eq!(c(Op::Div, &r(1), &inf).value, zero);
        // NaNs: SNaN is quietened with IE; the larger significand wins.
        let snan = make(false, 0x7FFF, 0x8000_0000_0000_0001);
        let qnan = make(true, 0x7FFF, 0xC000_0000_0000_0002);
        let o = c(Op::Add, &snan, &r(1));
        assert_eq!(
            (o.value, o.flags),
            (make(false, 0x7FFF, 0xC000_0000_0000_0001), IE)
        );
        let o = c(Op::Mul, &snan, &qnan);
        assert_eq!((o.value, o.flags), (qnan, IE));
        // An SNaN and a QNaN give the QNaN even when the SNaN's
        // significand is larger (SDM Vol. 1 Table 4-7).
        let big_snan = make(false, 0x7FFF, 0xBFFF_FFFF_FFFF_FFFF);
        let o = c(Op::Sub, &qnan, &big_snan);
        assert_eq!((o.value, o.flags), (qnan, IE));
        // Unnormal operand: invalid.
        assert_eq!(c(Op::Add, &make(false, 0x3FFF, 1 << 62), &r(1)).flags, IE);
        // Denormal operand: DE, normalised value used.
        let den = make(false, 0, 1 << 62);
        let o = c(Op::Add, &den, &den);
        assert_eq!(o.flags, DE);
        assert_eq!(o.value, make(false, 1, 1 << 63));
    }

    #[test]
    fn overflow_and_underflow() {
        let big = ext(false, EMAX, 1 << 63);
        let o = compute(Op::Mul, &big, &r(2), NEAREST);
        assert_eq!((o.value, o.flags), (make(false, 0x7FFF, 1 << 63), OE | PE));
        let o = compute(Op::Mul, &big, &r(2), 0x0F7F);
        assert_eq!(o.value, make(false, 0x7FFE, u64::MAX));
        // Unmasked OE: exponent wrapped by 24576.
        let o = compute(Op::Mul, &big, &r(2), NEAREST & !OE);
        assert_eq!(
            o.value,
            make(false, (EMAX + 1 - WRAP_BIAS + BIAS) as u16, 1 << 63)
        );
        // 2^EMIN / 2 = 2^(EMIN-1): an exact extended denormal, no UE.
        let small = ext(false, EMIN, 1 << 63);
        let o = compute(Op::Div, &small, &r(2), NEAREST);
        assert_eq!((o.value, o.flags), (make(false, 0, 1 << 62), 0));
        // ...with UE unmasked, UE and the rescaled normal result.
        let o = compute(Op::Div, &small, &r(2), NEAREST & !UE);
        assert_eq!(o.flags, UE);
        assert_eq!(
            o.value,
            make(false, (EMIN - 1 + WRAP_BIAS + BIAS) as u16, 1 << 63)
        );
        // 2^EMIN / 3: tiny and inexact.
        let o = compute(Op::Div, &small, &r(3), NEAREST);
        assert_eq!(o.flags, UE | PE);
    }

    #[test]
    fn instruction_forms() {
        let mut vm = flat0();
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        // 10.0 and 4.0 as doubles.
        vm.mem.write_u64(0x600, 0x4024_0000_0000_0000);
        vm.mem.write_u64(0x608, 0x4010_0000_0000_0000);
        vm.mem.write_u16(0x610, 3);
        assert_eq!(run(&mut vm, 32, |a| a.fld(qword_ptr(0x600))), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fsub(qword_ptr(0x608))), Ok(()));
        assert_eq!(vm.cpu.fpu.regs[st(&vm.cpu.fpu, 0)], r(6));
        assert_eq!(run(&mut vm, 32, |a| a.fisubr(word_ptr(0x610))), Ok(()));
        assert_eq!(vm.cpu.fpu.regs[st(&vm.cpu.fpu, 0)], r(-3));
        assert_eq!(run(&mut vm, 32, |a| a.fld(qword_ptr(0x608))), Ok(()));
        // ST0 = 4, ST1 = -3: FDIVP ST(1), ST0 -> ST1 = -3 / 4, pop.
        assert_eq!(run(&mut vm, 32, |a| a.fdivp(st1, st0)), Ok(()));
        assert_eq!(
            vm.cpu.fpu.regs[st(&vm.cpu.fpu, 0)],
            ext(true, -1, 0xC000_0000_0000_0000)
        );
        assert_eq!(vm.cpu.fpu.ftw, 0x3FFF);
        // FDIVR ST(0), ST(0): x / x = 1.
        assert_eq!(run(&mut vm, 32, |a| a.fdivr_2(st0, st0)), Ok(()));
        assert_eq!(vm.cpu.fpu.regs[st(&vm.cpu.fpu, 0)], r(1));
        // Empty source register: masked underflow -> indefinite.
        assert_eq!(run(&mut vm, 32, |a| a.fadd_2(st0, st3)), Ok(()));
        assert_eq!(vm.cpu.fpu.regs[st(&vm.cpu.fpu, 0)], INDEFINITE);
        // Unmasked zero divide: destination kept, #MF at the next one.
        let mut vm = flat0();
        vm.cpu.cr0 |= cr0::NE;
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        vm.cpu.fpu.fcw = 0x037B;
        assert_eq!(run(&mut vm, 32, |a| a.fld1()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fldz()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fdivp(st1, st0)), Ok(()));
        assert_eq!(vm.cpu.fpu.regs[st(&vm.cpu.fpu, 1)], r(1));
        assert_eq!(vm.cpu.fpu.fsw & 0x80BF, 0x8084);
        assert_eq!(run(&mut vm, 32, |a| a.wait()), Err(Fault::mf()));
    }
}
