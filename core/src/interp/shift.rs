//! Shifts and rotates: SHL/SAL SHR SAR ROL ROR RCL RCR (count 1, CL or
//! imm8) and the double shifts SHLD SHRD. The pure functions `shift` and
//! `double_shift` compute result and flags so that other engines can reuse
//! them; the handlers only move operands.
//!
//! SDM Vol. 2 SAL/SAR/SHL/SHR, RCL/RCR/ROL/ROR, SHLD, SHRD:
//! - the count is masked to 5 bits; a masked count of 0 changes nothing,
//!   flags included;
//! - RCL/RCR rotate through CF, so 8- and 16-bit operands rotate modulo 9
//!   and 17;
//! - OF is defined for a count of 1 only, CF is undefined for SHL/SHR
//!   counts >= the operand width, AF is undefined for any nonzero count.
//!
//! For the SDM-undefined cases this file does what an Intel Xeon host
//! was measured to do (exhaustively for bytes, sampled for words and
//! dwords; the differential harness masks these flags anyway):
//! - OF for any count is the OF of the first one-bit step, i.e. computed
//!   from the original operand: SHL/ROL/RCL/SHLD: MSB XOR the next bit;
//!   SHR: MSB; SAR: 0; ROR: LSB XOR MSB; RCR: MSB XOR CF in; SHRD: MSB
//!   XOR bit 0 of the source;
//! - AF is cleared by the shifts (SHL SHR SAR SHLD SHRD) and left alone
//!   by the rotates;
//! - CF of a shift past the width is the bit the wide shift leaves there
//!   (0 for SHL/SHR, the sign for SAR);
//! - RCL/RCR of a byte by 9 or 18, or a word by 17, change no flag (an
//!   AMD EPYC host sets OF there from the result, as for a one-bit
//!   rotate; the interpreter keeps one behaviour on every host so that a
//!   deterministic run replays anywhere, and the harness treats that OF
//!   as undefined, which the SDM's pseudo-code makes it);
//! - a 16-bit SHLD/SHRD by more than 16 shifts dst:src:dst (below).

use iced_x86::{Instruction, Mnemonic};

use super::alu::check_lock;
use super::flags::{carry, set_status, szp};
use super::operand::{mask, sext, sign_bit};
use super::{Ctx, Table};
use crate::cpu::{CF, OF, STATUS};
use crate::exception::Fault;

/// Counts are masked to 5 bits outside 64-bit mode.
pub const COUNT_MASK: u32 = 0x1F;

/// Flags a rotate may change: rotates leave SF ZF AF PF alone.
const ROTATE_FLAGS: u32 = CF | OF;

/// Result, new status flags and which flags they replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shifted {
    pub value: u32,
    pub flags: u32,
    pub mask: u32,
}

/// MSB of a `size`-byte value as 0 or 1.
#[inline]
fn msb(v: u32, size: usize) -> u32 {
    (v & sign_bit(size) != 0) as u32
}

/// The bit just below the MSB, as 0 or 1.
#[inline]
fn msb1(v: u32, size: usize) -> u32 {
    (v & (sign_bit(size) >> 1) != 0) as u32
}

/// Rotate the `width`-bit value `x` left by `c` (0 <= c < width <= 33).
#[inline]
fn rotl_n(x: u64, c: u32, width: u32) -> u64 {
    let wm = (1u64 << width) - 1;
    if c == 0 {
        x & wm
    } else {
        ((x << c) | (x >> (width - c))) & wm
    }
}

/// Rotate the `width`-bit value `x` right by `c` (0 <= c < width <= 33).
#[inline]
fn rotr_n(x: u64, c: u32, width: u32) -> u64 {
    let wm = (1u64 << width) - 1;
    if c == 0 {
        x & wm
    } else {
        ((x >> c) | (x << (width - c))) & wm
    }
}

/// Execute the shift or rotate `op` on the `size`-byte `v` by the raw
/// `count` (masked here), with incoming carry `cf` (0 or 1). `None` when
/// the masked count is 0: nothing changes.
pub fn shift(op: Mnemonic, v: u32, count: u32, cf: u32, size: usize) -> Option<Shifted> {
    let count = count & COUNT_MASK;
    if count == 0 {
        return None;
    }
    let bits = size as u32 * 8;
    let m = mask(size);
    let v = v & m;
    let flag = |b: u32, f: u32| if b != 0 { f } else { 0 };
    // OF of a one-bit left shift or rotate: the two top bits differ.
    let of_left = msb(v, size) ^ msb1(v, size);
    let out = match op {
        Mnemonic::Shl | Mnemonic::Sal => {
            let wide = (v as u64) << count;
            let r = wide as u32 & m;
            let c = ((wide >> bits) & 1) as u32;
            Shifted {
                value: r,
                flags: szp(r, size) | flag(c, CF) | flag(of_left, OF),
                mask: STATUS,
            }
        }
        Mnemonic::Shr => {
            let r = v >> count;
            let c = (v >> (count - 1)) & 1;
            Shifted {
                value: r,
                flags: szp(r, size) | flag(c, CF) | flag(msb(v, size), OF),
                mask: STATUS,
            }
        }
        Mnemonic::Sar => {
            let s = sext(v, size) as i32;
            let r = (s >> count) as u32 & m;
            let c = ((s >> (count - 1)) & 1) as u32;
            // OF = 0: the two top bits of an arithmetic right shift agree.
            Shifted {
                value: r,
                flags: szp(r, size) | flag(c, CF),
                mask: STATUS,
            }
        }
        Mnemonic::Rol => {
            let r = rotl_n(v as u64, count % bits, bits) as u32;
            let c = r & 1;
            Shifted {
                value: r,
                flags: flag(c, CF) | flag(of_left, OF),
                mask: ROTATE_FLAGS,
            }
        }
        Mnemonic::Ror => {
            let r = rotr_n(v as u64, count % bits, bits) as u32;
            let c = msb(r, size);
            Shifted {
                value: r,
                flags: flag(c, CF) | flag((v & 1) ^ msb(v, size), OF),
                mask: ROTATE_FLAGS,
            }
        }
        Mnemonic::Rcl | Mnemonic::Rcr => {
            // Rotate the (bits + 1)-bit value CF:v (SDM RCL/RCR: 8- and
            // 16-bit counts are taken modulo 9 and 17).
            let width = bits + 1;
            if count.is_multiple_of(width) {
                // A whole turn: the value is unchanged and, as measured on
                // Intel hardware, no flag changes either (OF included).
                return Some(Shifted {
                    value: v,
                    flags: 0,
                    mask: 0,
                });
            }
            let x = ((cf as u64 & 1) << bits) | v as u64;
            let t = if op == Mnemonic::Rcl {
                rotl_n(x, count % width, width)
            } else {
                rotr_n(x, count % width, width)
            };
            let r = t as u32 & m;
            let c = ((t >> bits) & 1) as u32;
            let o = if op == Mnemonic::Rcl {
                of_left
            } else {
                msb(v, size) ^ (cf & 1)
            };
            Shifted {
                value: r,
                flags: flag(c, CF) | flag(o, OF),
                mask: ROTATE_FLAGS,
            }
        }
        _ => return None,
    };
    Some(out)
}

/// SHLD (`left`) or SHRD of the `size`-byte (2 or 4) `dst` with bits from
/// `src` by the raw `count` (masked here). `None` when the masked count is
/// 0. A 16-bit count above 16 has an undefined result (SDM SHLD/SHRD):
/// here the operands repeat as dst:src:dst, so the bits entering after
/// `src` is used up are `dst`'s own, as Bochs models Intel parts.
pub fn double_shift(left: bool, dst: u32, src: u32, count: u32, size: usize) -> Option<Shifted> {
    let count = count & COUNT_MASK;
    if count == 0 {
        return None;
    }
    let m = mask(size);
    let (d, s) = ((dst & m) as u64, (src & m) as u64);
    let (r, c) = if size == 4 {
        if left {
            let t = (d << 32) | s;
            (
                ((t << count) >> 32) as u32,
                ((t >> (64 - count)) & 1) as u32,
            )
        } else {
            let t = (s << 32) | d;
            ((t >> count) as u32, ((t >> (count - 1)) & 1) as u32)
        }
    } else {
        // 48 bits: dst in 47..32, src in 31..16, dst again in 15..0.
        let t = (d << 32) | (s << 16) | d;
        if left {
            (
                ((t << count) >> 32) as u32 & m,
                ((t >> (48 - count)) & 1) as u32,
            )
        } else {
            ((t >> count) as u32 & m, ((t >> (count - 1)) & 1) as u32)
        }
    };
    // OF of the first one-bit step (see `shift`).
    let dst = dst & m;
    let o = if left {
        msb(dst, size) ^ msb1(dst, size)
    } else {
        msb(dst, size) ^ (src & 1)
    };
    let mut flags = szp(r, size);
    if c != 0 {
        flags |= CF;
    }
    if o != 0 {
        flags |= OF;
    }
    Some(Shifted {
        value: r,
        flags,
        mask: STATUS,
    })
}

/// SHL SAL SHR SAR ROL ROR RCL RCR r/m, 1|CL|imm8.
fn shift_rotate(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let size = ctx.op_size(ins, 0);
    let count = ctx.read_op(ins, 1)?;
    // The destination is accessed for writing even when the count is 0.
    let v = ctx.read_rmw(ins)?;
    let Some(out) = shift(ins.mnemonic(), v, count, carry(&ctx.vm.cpu), size) else {
        return Ok(());
    };
    ctx.write_op(ins, 0, out.value)?;
    // Shifts clear AF (undefined in the SDM: their mask includes it and
    // their flags never set it); rotates do not touch it.
    set_status(&mut ctx.vm.cpu, out.mask, out.flags);
    Ok(())
}

/// SHLD SHRD r/m, reg, CL|imm8.
fn shld_shrd(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let size = ctx.op_size(ins, 0);
    let src = ctx.read_op(ins, 1)?;
    let count = ctx.read_op(ins, 2)?;
    let dst = ctx.read_rmw(ins)?;
    let left = ins.mnemonic() == Mnemonic::Shld;
    let Some(out) = double_shift(left, dst, src, count, size) else {
        return Ok(());
    };
    ctx.write_op(ins, 0, out.value)?;
    set_status(&mut ctx.vm.cpu, out.mask, out.flags);
    Ok(())
}

pub(super) fn register(t: &mut Table) {
    t.set(
        &[
            Mnemonic::Shl,
            Mnemonic::Sal,
            Mnemonic::Shr,
            Mnemonic::Sar,
            Mnemonic::Rol,
            Mnemonic::Ror,
            Mnemonic::Rcl,
            Mnemonic::Rcr,
        ],
        shift_rotate,
    );
    t.set(&[Mnemonic::Shld, Mnemonic::Shrd], shld_shrd);
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;
    use iced_x86::Mnemonic as M;

    use super::*;
    use crate::cpu::{AF, EAX, EBX, ECX, EDX, FIXED1, PF, SF, ZF};
    use crate::interp::testutil::{exec, load_bytes, run, vm32, DATA};

    fn sh(op: M, v: u32, count: u32, cf: u32, size: usize) -> (u32, u32) {
        let s = shift(op, v, count, cf, size).expect("nonzero count");
        (s.value, s.flags)
    }

    #[test]
    fn count_zero_and_masking() {
        assert_eq!(shift(M::Shl, 0x81, 0, 1, 1), None);
        // 32 masks to 0: nothing happens even for an 8-bit operand.
        assert_eq!(shift(M::Rcl, 0x81, 32, 1, 1), None);
        // 33 masks to 1.
        assert_eq!(sh(M::Shl, 0x81, 33, 0, 1), (0x02, CF | OF));
    }

    #[test]
    fn shl_cf_of_at_sizes() {
        // 0x40 << 1 = 0x80: CF 0, OF = MSB ^ CF = 1, SF.
        assert_eq!(sh(M::Shl, 0x40, 1, 0, 1), (0x80, OF | SF));
        // 0xC0 << 1 = 0x80 with CF 1: OF 0.
        assert_eq!(sh(M::Shl, 0xC0, 1, 0, 1), (0x80, CF | SF));
        // 8-bit count 8: CF = old bit 0; result 0. Past count 1, OF is
        // the first step's: old bit 7 ^ bit 6.
        assert_eq!(sh(M::Shl, 0x01, 8, 0, 1), (0, CF | ZF | PF));
        // Count 9 on a byte shifts everything out, CF 0.
        assert_eq!(sh(M::Shl, 0xFF, 9, 0, 1), (0, ZF | PF));
        // 16-bit: 0x8001 << 4 = 0x0010, CF = bit 12 = 0, OF = 1 ^ 0.
        assert_eq!(sh(M::Shl, 0x8001, 4, 0, 2), (0x0010, OF));
        // 16-bit count 16: CF = bit 0.
        assert_eq!(sh(M::Shl, 0x0001, 16, 0, 2), (0, CF | ZF | PF));
        // 32-bit count 31.
        assert_eq!(sh(M::Shl, 3, 31, 0, 4), (0x8000_0000, CF | SF | PF));
    }

    #[test]
    fn shr_sar() {
        // SHR 1: OF = old MSB.
        assert_eq!(sh(M::Shr, 0x81, 1, 0, 1), (0x40, CF | OF));
        // Any count: OF = the old MSB.
        assert_eq!(sh(M::Shr, 0x8000_0000, 31, 0, 4), (1, OF));
        assert_eq!(sh(M::Shr, 0x4000_0000, 31, 0, 4), (0, CF | ZF | PF));
        // Byte shifted by 8: CF = old bit 7.
        assert_eq!(sh(M::Shr, 0x80, 8, 0, 1), (0, CF | ZF | PF | OF));
        // SAR keeps the sign; OF 0 for count 1.
        assert_eq!(sh(M::Sar, 0x81, 1, 0, 1), (0xC0, CF | SF | PF));
        // SAR past the width: result and CF are the sign.
        assert_eq!(sh(M::Sar, 0x80, 20, 0, 1), (0xFF, CF | SF | PF));
        assert_eq!(sh(M::Sar, 0x7FFF, 17, 0, 2), (0, ZF | PF));
        // CF is the last bit out: bit 30, which is 0.
        assert_eq!(sh(M::Sar, 0x8000_0000, 31, 0, 4), (0xFFFF_FFFF, SF | PF));
        assert_eq!(
            sh(M::Sar, 0xC000_0000, 31, 0, 4),
            (0xFFFF_FFFF, CF | SF | PF)
        );
    }

    #[test]
    fn rol_ror() {
        assert_eq!(sh(M::Rol, 0x81, 1, 0, 1), (0x03, CF | OF));
        assert_eq!(sh(M::Rol, 0x40, 1, 1, 1), (0x80, OF));
        // Count 8 on a byte: value unchanged, CF = LSB; OF = bit 7 ^ 6.
        assert_eq!(sh(M::Rol, 0x81, 8, 0, 1), (0x81, CF | OF));
        assert_eq!(sh(M::Rol, 0x1234, 4, 0, 2), (0x2341, CF));
        assert_eq!(sh(M::Ror, 0x01, 1, 0, 1), (0x80, CF | OF));
        assert_eq!(sh(M::Ror, 0x02, 1, 1, 1), (0x01, 0));
        // OF = old bit 0 ^ old bit 31.
        assert_eq!(sh(M::Ror, 0x1234_5678, 8, 0, 4), (0x7812_3456, 0));
        assert_eq!(sh(M::Ror, 0x1234_5678, 4, 0, 4), (0x8123_4567, CF));
        assert_eq!(sh(M::Ror, 0x8000_0000, 4, 0, 4), (0x0800_0000, OF));
    }

    #[test]
    fn rcl_rcr_modulo() {
        // RCL 1 with CF in: 0x80 -> 0x01 with CF out 1; OF = 0 ^ 1.
        assert_eq!(sh(M::Rcl, 0x80, 1, 1, 1), (0x01, CF | OF));
        // Byte RCL by 9 or 18 is the identity (modulo 9) and changes no
        // flag at all.
        let whole = Shifted {
            value: 0x5A,
            flags: 0,
            mask: 0,
        };
        assert_eq!(shift(M::Rcl, 0x5A, 9, 1, 1), Some(whole));
        assert_eq!(shift(M::Rcl, 0x5A, 18, 0, 1), Some(whole));
        assert_eq!(shift(M::Rcr, 0x5A, 9, 0, 1), Some(whole));
        // Byte RCL by 10 == by 1.
        assert_eq!(sh(M::Rcl, 0x80, 10, 0, 1), (0x00, CF | OF));
        // Word RCR by 17 is the identity; by 18 == by 1.
        assert_eq!(shift(M::Rcr, 0x0001, 17, 0, 2).map(|s| s.mask), Some(0));
        assert_eq!(sh(M::Rcr, 0x0001, 18, 1, 2), (0x8000, CF | OF));
        // Dword RCR by 31 == RCL by 2 in 33 bits: CF:v = 1:0x80000001.
        // RCL 2 moves bit 31 to 0, CF to 1 and bit 0 to 2: v' = 7, CF' = 0.
        assert_eq!(sh(M::Rcr, 0x8000_0001, 31, 1, 4), (0x0000_0007, 0));
        // RCR 1: OF = old MSB ^ old CF.
        assert_eq!(sh(M::Rcr, 0x81, 1, 0, 1), (0x40, CF | OF));
        assert_eq!(sh(M::Rcr, 0x81, 1, 1, 1), (0xC0, CF));
    }

    #[test]
    fn double_shifts() {
        let d = |l, a, b, c, s| {
            let r = double_shift(l, a, b, c, s).expect("nonzero");
            (r.value, r.flags)
        };
        assert_eq!(double_shift(true, 1, 2, 32, 4), None);
        // SHLD 0x12345678, 0x9ABCDEF0, 8 = 0x3456789A; CF = bit 24 = 0.
        assert_eq!(d(true, 0x1234_5678, 0x9ABC_DEF0, 8, 4), (0x3456_789A, PF));
        // SHRD same: 0xF0123456, CF = bit 7 of dst = 0, OF = 1 ^ 1.
        assert_eq!(
            d(false, 0x1234_5678, 0x9ABC_DEF0, 8, 4),
            (0xF012_3456, SF | PF)
        );
        // SHLD 1 changing the sign: OF.
        assert_eq!(d(true, 0x4000_0000, 0, 1, 4), (0x8000_0000, OF | SF | PF));
        // 16-bit, count 4.
        // OF (first step): SHLD bit 15 ^ bit 14 = 0; SHRD bit 15 of dst
        // ^ bit 0 of src = 1.
        assert_eq!(d(true, 0x1234, 0xABCD, 4, 2), (0x234A, CF));
        assert_eq!(d(false, 0x1234, 0xABCD, 4, 2), (0xD123, SF | OF));
        // 16-bit count 20 (undefined): dst:src:dst = 1234:ABCD:1234 << 20
        // -> top 16 bits are BCD1; CF = bit 28 of the 48 = 0xA's bit 0.
        assert_eq!(d(true, 0x1234, 0xABCD, 20, 2), (0xBCD1, SF | PF));
        // SHRD 20: bits 35..20 of 1234ABCD1234 = 0x4ABC; CF = bit 19 = 1.
        assert_eq!(d(false, 0x1234, 0xABCD, 20, 2), (0x4ABC, CF | OF));
    }

    #[test]
    fn handlers_memory_and_cl() {
        let mut vm = vm32();
        vm.mem.write_u32(DATA as u64, 0x8000_0001);
        vm.cpu.set_reg32(ECX, 0x21); // masks to 1
        vm.cpu.eflags = FIXED1 | AF;
        run(&mut vm, 32, |a| a.shl(dword_ptr(DATA), cl)).unwrap();
        assert_eq!(vm.mem.read_u32(DATA as u64), 2);
        assert_eq!(vm.cpu.eflags & STATUS, CF | OF);
        // Count 0 leaves flags alone.
        vm.cpu.set_reg32(ECX, 0x20);
        vm.cpu.eflags = FIXED1 | ZF | SF;
        run(&mut vm, 32, |a| a.sar(dword_ptr(DATA), cl)).unwrap();
        assert_eq!(vm.mem.read_u32(DATA as u64), 2);
        assert_eq!(vm.cpu.eflags, FIXED1 | ZF | SF);
        // Rotates keep SF ZF PF AF.
        vm.cpu.set_reg32(EAX, 0x80);
        run(&mut vm, 32, |a| a.rol(al, 1)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x01);
        assert_eq!(vm.cpu.eflags & STATUS, ZF | SF | CF | OF);
        // RCR through CF.
        run(&mut vm, 32, |a| a.rcr(eax, 1)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x8000_0000);
        assert_eq!(vm.cpu.eflags & STATUS, ZF | SF | CF | OF);
        // SHLD with CL and a register.
        vm.cpu.set_reg32(EBX, 0xF000_0000);
        vm.cpu.set_reg32(ECX, 4);
        run(&mut vm, 32, |a| a.shld(eax, ebx, cl)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x0000_000F);
        // D0 /6 (SAL alias) executes as SHL.
        vm.cpu.set_reg32(EAX, 0x41);
        load_bytes(&mut vm, &[0xD0, 0xF0]);
        exec(&mut vm).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x82);
    }

    #[test]
    fn encodings_by_one_cl_imm() {
        let mut vm = vm32();
        vm.cpu.set_reg32(EAX, 0x8000_0001);
        vm.cpu.set_reg32(ECX, 4);
        vm.cpu.set_reg32(EDX, 0x1234);
        load_bytes(
            &mut vm,
            &[
                0xD1, 0xE0, // shl eax, 1
                0xD3, 0xE8, // shr eax, cl
                0xC1, 0xF8, 0x1F, // sar eax, 31
                0x66, 0xC1, 0xC2, 0x04, // rol dx, 4
                0xD0, 0xD2, // rcl dl, 1
                0x66, 0x0F, 0xA4, 0xD0, 0x10, // shld ax, dx, 16
                0x0F, 0xAD, 0xD0, // shrd eax, edx, cl
            ],
        );
        exec(&mut vm).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 2);
        assert_eq!(vm.cpu.eflags & (CF | OF), CF | OF);
        exec(&mut vm).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0);
        // Last bit out of 2 >> 4 is bit 3 = 0.
        assert_eq!(vm.cpu.eflags & (CF | ZF), ZF);
        exec(&mut vm).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0);
        exec(&mut vm).unwrap();
        assert_eq!(vm.cpu.reg32(EDX), 0x2341);
        // ROL sets CF = LSB = 1; RCL DL,1: 0x41 -> 0x83, CF out 0.
        exec(&mut vm).unwrap();
        assert_eq!(vm.cpu.reg32(EDX), 0x2383);
        assert_eq!(vm.cpu.eflags & CF, 0);
        // SHLD AX, DX, 16: AX becomes DX; CF = old bit 0 of AX.
        exec(&mut vm).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x2383);
        // SHRD EAX, EDX, 4: 0x00002383 >> 4 | 0x3 << 28.
        exec(&mut vm).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x3000_0238);
        assert_eq!(vm.cpu.eflags & CF, 0);
    }

    /// The SDM's Operation pseudo-code for the shifts and rotates, one bit
    /// per loop iteration, written out literally. Returns the result and
    /// the flags the SDM defines for this count, with the mask of those.
    fn sdm_loop(op: M, v: u32, count: u32, cf_in: u32, size: usize) -> (u32, u32, u32) {
        let bits = size as u32 * 8;
        let m = mask(size);
        let top = |d: u32| (d >> (bits - 1)) & 1;
        let masked = count & 0x1F;
        let mut d = v & m;
        let mut cf = cf_in;
        let mut defined = 0;
        let mut of = 0;
        match op {
            M::Shl | M::Shr | M::Sar => {
                let orig = d;
                for _ in 0..masked {
                    if op == M::Shl {
                        cf = top(d);
                        d = (d << 1) & m;
                    } else {
                        cf = d & 1;
                        d = if op == M::Sar {
                            (d >> 1) | (d & sign_bit(size))
                        } else {
                            d >> 1
                        };
                    }
                }
                if masked == 1 {
                    of = match op {
                        M::Shl => top(d) ^ cf,
                        M::Shr => top(orig),
                        _ => 0,
                    };
                    defined |= OF;
                }
                if masked != 0 {
                    defined |= SF | ZF | PF;
                    if op == M::Sar || masked < bits {
                        defined |= CF;
                    }
                }
            }
            M::Rol | M::Ror => {
                for _ in 0..masked % bits {
                    d = if op == M::Rol {
                        ((d << 1) & m) | top(d)
                    } else {
                        (d >> 1) | ((d & 1) << (bits - 1))
                    };
                }
                if masked != 0 {
                    cf = if op == M::Rol { d & 1 } else { top(d) };
                    defined |= CF;
                }
                if masked == 1 {
                    of = if op == M::Rol {
                        top(d) ^ cf
                    } else {
                        top(d) ^ ((d >> (bits - 2)) & 1)
                    };
                    defined |= OF;
                }
            }
            _ => {
                let turn = if size == 4 {
                    masked
                } else {
                    masked % (bits + 1)
                };
                if masked == 1 && op == M::Rcr {
                    of = top(d) ^ cf;
                }
                for _ in 0..turn {
                    if op == M::Rcl {
                        let t = top(d);
                        d = ((d << 1) & m) | cf;
                        cf = t;
                    } else {
                        let t = d & 1;
                        d = (d >> 1) | (cf << (bits - 1));
                        cf = t;
                    }
                }
                if masked == 1 {
                    if op == M::Rcl {
                        of = top(d) ^ cf;
                    }
                    defined |= OF;
                }
                defined |= CF;
            }
        }
        let mut f = if of != 0 { OF } else { 0 } | if cf != 0 { CF } else { 0 };
        f |= szp(d, size);
        (d, f & defined, defined)
    }

    #[test]
    fn matches_sdm_pseudocode_on_defined_flags() {
        let ops = [M::Shl, M::Shr, M::Sar, M::Rol, M::Ror, M::Rcl, M::Rcr];
        let mut seed = 0x2545_F491u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for op in ops {
            for size in [1usize, 2, 4] {
                for i in 0..4096u32 {
                    let v = if size == 1 {
                        i & 0xFF
                    } else {
                        next() & mask(size)
                    };
                    let count = if size == 1 { i >> 8 } else { next() & 0x3F };
                    for cf in [0, 1] {
                        let (rv, rf, defined) = sdm_loop(op, v, count, cf, size);
                        let fin = if cf != 0 { CF } else { 0 };
                        let (gv, gf) = match shift(op, v, count, cf, size) {
                            None => (v, fin),
                            Some(s) => (s.value, (fin & !s.mask) | s.flags),
                        };
                        let what = format!("{op:?} size {size} v {v:#x} count {count} cf {cf}");
                        assert_eq!(gv, rv, "{what}");
                        assert_eq!(gf & defined, rf, "{what}");
                    }
                }
            }
        }
    }

    /// SHLD/SHRD by the SDM's bit-by-bit Operation, for counts up to the
    /// operand size (beyond it the result is undefined): (result, CF).
    fn sdm_double(left: bool, d: u32, src: u32, count: u32, size: usize) -> (u32, u32) {
        let bits = size as u32 * 8;
        let bit = |x: u32, i: u32| (x >> i) & 1;
        let mut r = 0;
        let cf;
        if left {
            cf = bit(d, bits - count);
            for i in (count..bits).rev() {
                r |= bit(d, i - count) << i;
            }
            for i in (0..count).rev() {
                r |= bit(src, i + bits - count) << i;
            }
        } else {
            cf = bit(d, count - 1);
            for i in 0..bits - count {
                r |= bit(d, i + count) << i;
            }
            for i in bits - count..bits {
                r |= bit(src, i + count - bits) << i;
            }
        }
        (r, cf)
    }

    #[test]
    fn double_shift_matches_sdm_pseudocode() {
        let mut seed = 0x9E37_79B9u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for size in [2usize, 4] {
            let bits = size as u32 * 8;
            for _ in 0..20_000 {
                let (d, src) = (next() & mask(size), next() & mask(size));
                let count = next() & 0x1F;
                for left in [true, false] {
                    let got = double_shift(left, d, src, count, size);
                    if count == 0 {
                        assert_eq!(got, None);
                        continue;
                    }
                    if count > bits {
                        continue;
                    }
                    let s = got.expect("nonzero count");
                    let (r, cf) = sdm_double(left, d, src, count, size);
                    let what = format!("left {left} size {size} {d:#x} {src:#x} by {count}");
                    assert_eq!(s.value, r, "{what}");
                    assert_eq!(s.flags & CF, if cf != 0 { CF } else { 0 }, "{what}");
                    assert_eq!(s.flags & (SF | ZF | PF), szp(r, size), "{what}");
                    if count == 1 {
                        // OF: the sign changed.
                        let changed = (r ^ d) & sign_bit(size) != 0;
                        assert_eq!(s.flags & OF != 0, changed, "{what}");
                    }
                }
            }
        }
    }
}
