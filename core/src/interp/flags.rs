//! Status-flag computation (CF PF AF ZF SF OF) shared by every family that
//! does arithmetic: the ALU, shifts, multiply/divide, BCD, and the data
//! helpers (CMPXCHG, XADD). Pure functions of the operands and the operand
//! size in bytes (1, 2, 4); they return the result and the new status bits,
//! and `set_status` merges them into EFLAGS. Which flags an instruction
//! defines is the caller's business (pass the right mask).
//!
//! Flag definitions follow SDM Vol. 1 3.4.3.1 and Appendix A.

use super::operand::{mask, sign_bit};
use crate::cpu::{CpuState, AF, CF, OF, PF, SF, STATUS, ZF};

/// The status flags an ADD/SUB-like instruction defines.
pub const ARITH: u32 = STATUS;
/// INC and DEC leave CF alone (SDM Vol. 2 INC/DEC).
pub const INC_DEC: u32 = STATUS & !CF;
/// SF, ZF and PF: the "result" flags.
pub const SZP: u32 = SF | ZF | PF;

/// PF: set when the low byte of `v` has an even number of 1 bits.
#[inline]
pub fn parity(v: u32) -> u32 {
    // Fold the byte to a nibble; 0x6996 has bit n set when n has odd
    // parity.
    let n = (v ^ (v >> 4)) & 0xF;
    if (0x6996u32 >> n) & 1 == 0 {
        PF
    } else {
        0
    }
}

/// SF, ZF and PF of a `size`-byte result (bits above `size` ignored).
#[inline]
pub fn szp(r: u32, size: usize) -> u32 {
    let r = r & mask(size);
    let mut f = parity(r);
    if r == 0 {
        f |= ZF;
    }
    if r & sign_bit(size) != 0 {
        f |= SF;
    }
    f
}

/// `a + b + carry_in` at `size` bytes (ADD, ADC): the result and all six
/// status flags. `carry_in` is 0 or 1.
#[inline]
pub fn add_flags(a: u32, b: u32, carry_in: u32, size: usize) -> (u32, u32) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let wide = a as u64 + b as u64 + (carry_in & 1) as u64;
    let r = wide as u32 & m;
    let mut f = szp(r, size);
    if wide > m as u64 {
        f |= CF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= AF;
    }
    // Overflow: both operands have the same sign and the result differs.
    if (a ^ r) & (b ^ r) & sign_bit(size) != 0 {
        f |= OF;
    }
    (r, f)
}

/// `a - b - borrow_in` at `size` bytes (SUB, SBB, CMP, NEG as 0 - b): the
/// result and all six status flags. `borrow_in` is 0 or 1.
#[inline]
pub fn sub_flags(a: u32, b: u32, borrow_in: u32, size: usize) -> (u32, u32) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let sub = b as u64 + (borrow_in & 1) as u64;
    let r = (a as u64).wrapping_sub(sub) as u32 & m;
    let mut f = szp(r, size);
    if (a as u64) < sub {
        f |= CF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= AF;
    }
    // Overflow: operands of different sign and the result's sign is b's.
    if (a ^ b) & (a ^ r) & sign_bit(size) != 0 {
        f |= OF;
    }
    (r, f)
}

/// Flags of a logical result (AND, OR, XOR, TEST): CF = OF = 0, SF ZF PF
/// from the result. AF is undefined in the SDM; Intel hardware clears it.
#[inline]
pub fn logic_flags(r: u32, size: usize) -> u32 {
    szp(r, size)
}

/// INC: `a + 1`, flags other than CF (merge with `INC_DEC`).
#[inline]
pub fn inc_flags(a: u32, size: usize) -> (u32, u32) {
    let (r, f) = add_flags(a, 1, 0, size);
    (r, f & INC_DEC)
}

/// DEC: `a - 1`, flags other than CF (merge with `INC_DEC`).
#[inline]
pub fn dec_flags(a: u32, size: usize) -> (u32, u32) {
    let (r, f) = sub_flags(a, 1, 0, size);
    (r, f & INC_DEC)
}

/// NEG: `0 - a`; CF = (a != 0), the rest as a subtraction.
#[inline]
pub fn neg_flags(a: u32, size: usize) -> (u32, u32) {
    sub_flags(0, a, 0, size)
}

/// Merge `value` into EFLAGS under `mask` (only status bits are touched
/// whatever the mask says).
#[inline]
pub fn set_status(cpu: &mut CpuState, mask: u32, value: u32) {
    let m = mask & STATUS;
    cpu.eflags = (cpu.eflags & !m) | (value & m);
}

/// Current CF as 0 or 1.
#[inline]
pub fn carry(cpu: &CpuState) -> u32 {
    cpu.eflags & CF
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_counts_low_byte_only() {
        assert_eq!(parity(0), PF);
        assert_eq!(parity(1), 0);
        assert_eq!(parity(3), PF);
        assert_eq!(parity(0x7F), 0); // seven ones
        assert_eq!(parity(0xFF), PF);
        assert_eq!(parity(0x100), PF); // bit 8 ignored
        assert_eq!(parity(0xFFFF_FF01), 0);
    }

    #[test]
    fn add_carry_overflow_at_each_size() {
        // 8-bit: 0x7F + 1 = 0x80: OF, SF, AF; no CF; PF (0x80 has one bit).
        assert_eq!(add_flags(0x7F, 1, 0, 1), (0x80, OF | SF | AF));
        // 0xFF + 1 = 0x00: CF, ZF, AF, PF.
        assert_eq!(add_flags(0xFF, 1, 0, 1), (0, CF | ZF | AF | PF));
        // 0x80 + 0x80 = 0: CF, OF, ZF, PF.
        assert_eq!(add_flags(0x80, 0x80, 0, 1), (0, CF | OF | ZF | PF));
        // 16-bit: 0x7FFF + 1.
        assert_eq!(add_flags(0x7FFF, 1, 0, 2), (0x8000, OF | SF | AF | PF));
        assert_eq!(add_flags(0xFFFF, 0xFFFF, 1, 2), (0xFFFF, CF | SF | AF | PF));
        // 32-bit.
        assert_eq!(add_flags(0xFFFF_FFFF, 0, 1, 4), (0, CF | ZF | AF | PF));
        assert_eq!(
            add_flags(0x7FFF_FFF0, 0x10, 0, 4),
            (0x8000_0000, OF | SF | PF)
        );
        // Operand bits above the size are ignored.
        assert_eq!(add_flags(0x1_01, 0x2_01, 0, 1), (2, 0));
    }

    #[test]
    fn sub_borrow_overflow_at_each_size() {
        // 0 - 1 = 0xFF: CF, SF, AF, PF.
        assert_eq!(sub_flags(0, 1, 0, 1), (0xFF, CF | SF | AF | PF));
        // 0x80 - 1 = 0x7F: OF, AF.
        assert_eq!(sub_flags(0x80, 1, 0, 1), (0x7F, OF | AF));
        // 5 - 5 = 0: ZF PF.
        assert_eq!(sub_flags(5, 5, 0, 1), (0, ZF | PF));
        // SBB with borrow: 5 - 5 - 1 = 0xFFFF at 16 bits.
        assert_eq!(sub_flags(5, 5, 1, 2), (0xFFFF, CF | SF | AF | PF));
        // 0 - 0xFFFF - 1 at 16 bits: borrow out, result 0.
        assert_eq!(sub_flags(0, 0xFFFF, 1, 2), (0, CF | ZF | PF | AF));
        // 32-bit: 0x7FFFFFFF - 0xFFFFFFFF = 0x80000000 with OF and CF.
        assert_eq!(
            sub_flags(0x7FFF_FFFF, 0xFFFF_FFFF, 0, 4),
            (0x8000_0000, CF | OF | SF | PF)
        );
    }

    #[test]
    fn inc_dec_neg() {
        assert_eq!(inc_flags(0xFF, 1), (0, ZF | AF | PF));
        assert_eq!(inc_flags(0x7FFF, 2), (0x8000, OF | SF | AF | PF));
        assert_eq!(dec_flags(0, 4), (0xFFFF_FFFF, SF | AF | PF));
        assert_eq!(dec_flags(0x8000_0000, 4), (0x7FFF_FFFF, OF | AF | PF));
        assert_eq!(neg_flags(0, 1), (0, ZF | PF));
        assert_eq!(neg_flags(0x80, 1), (0x80, CF | OF | SF));
        assert_eq!(neg_flags(1, 2), (0xFFFF, CF | SF | AF | PF));
    }

    #[test]
    fn set_status_merges_only_status_bits() {
        let mut cpu = CpuState::reset();
        cpu.eflags = 0x202 | CF | OF;
        set_status(&mut cpu, INC_DEC, ZF);
        assert_eq!(cpu.eflags, 0x202 | CF | ZF);
        set_status(&mut cpu, 0xFFFF_FFFF, 0);
        assert_eq!(cpu.eflags, 0x202);
    }

    /// ADD/ADC/SUB/SBB against a second, independent formulation of each
    /// flag (signed range for OF, nibble arithmetic for AF), exhaustively
    /// for bytes with and without carry in.
    #[test]
    fn add_sub_exhaustive_bytes() {
        for a in 0..256u32 {
            for b in 0..256u32 {
                for c in 0..2u32 {
                    let bit = |x: bool, f: u32| if x { f } else { 0 };
                    let sum = a + b + c;
                    let ssum = a as u8 as i8 as i32 + b as u8 as i8 as i32 + c as i32;
                    let want = szp(sum, 1)
                        | bit(sum > 0xFF, CF)
                        | bit(!(-128..=127).contains(&ssum), OF)
                        | bit((a & 15) + (b & 15) + c > 15, AF);
                    assert_eq!(add_flags(a, b, c, 1), (sum & 0xFF, want), "{a} + {b} + {c}");
                    let diff = a as i32 - b as i32 - c as i32;
                    let sdiff = a as u8 as i8 as i32 - b as u8 as i8 as i32 - c as i32;
                    let want = szp(diff as u32, 1)
                        | bit(diff < 0, CF)
                        | bit(!(-128..=127).contains(&sdiff), OF)
                        | bit(((a & 15) as i32) - ((b & 15) as i32) - (c as i32) < 0, AF);
                    assert_eq!(
                        sub_flags(a, b, c, 1),
                        (diff as u32 & 0xFF, want),
                        "{a} - {b} - {c}"
                    );
                }
            }
        }
    }
}
