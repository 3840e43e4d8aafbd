//! Multiply and divide: MUL, IMUL (one, two and three operands), DIV,
//! IDIV at 8, 16 and 32 bits.
//!
//! SDM Vol. 2 MUL/IMUL: CF = OF = 1 when the upper half of the product is
//! significant (MUL: nonzero; IMUL: not the sign extension of the lower
//! half). SF ZF AF PF are undefined: here SF and PF follow the lower half
//! of the product and ZF and AF are cleared, which is what an Intel Xeon
//! host was measured to do.
//! SDM Vol. 2 DIV/IDIV: #DE when the divisor is 0 or the quotient does not
//! fit the destination (IDIV of the most negative dividend by -1
//! included); all six flags are undefined and are left unchanged here, as
//! measured on the same host.

use iced_x86::{Instruction, Mnemonic};

use super::alu::check_lock;
use super::flags::{set_status, szp};
use super::operand::{mask, sext};
use super::{Ctx, Table};
use crate::cpu::{CpuState, CF, EAX, EDX, OF, STATUS, ZF};
use crate::exception::Fault;

/// Read the implicit accumulator of `size` bytes (AL, AX, EAX).
fn acc(cpu: &CpuState, size: usize) -> u32 {
    cpu.reg32(EAX) & mask(size)
}

/// The implicit double-width dividend / product register pair value:
/// AX, DX:AX or EDX:EAX.
fn wide_acc(cpu: &CpuState, size: usize) -> u64 {
    match size {
        1 => cpu.reg16(EAX) as u64,
        2 => ((cpu.reg16(EDX) as u64) << 16) | cpu.reg16(EAX) as u64,
        _ => ((cpu.reg32(EDX) as u64) << 32) | cpu.reg32(EAX) as u64,
    }
}

/// Store a double-width value into AX, DX:AX or EDX:EAX.
fn set_wide_acc(cpu: &mut CpuState, size: usize, v: u64) {
    match size {
        1 => cpu.set_reg16(EAX, v as u16),
        2 => {
            cpu.set_reg16(EAX, v as u16);
            cpu.set_reg16(EDX, (v >> 16) as u16);
        }
        _ => {
            cpu.set_reg32(EAX, v as u32);
            cpu.set_reg32(EDX, (v >> 32) as u32);
        }
    }
}

/// Flags of a product whose lower half is `low` and whose upper half is
/// significant when `overflow`.
fn mul_flags(low: u32, size: usize, overflow: bool) -> u32 {
    let mut f = szp(low, size) & !ZF;
    if overflow {
        f |= CF | OF;
    }
    f
}

/// Unsigned product of `a` and `b` at `size` bytes: (full product, flags).
pub fn mul(a: u32, b: u32, size: usize) -> (u64, u32) {
    let m = mask(size);
    let p = (a & m) as u64 * (b & m) as u64;
    let bits = size as u32 * 8;
    (p, mul_flags(p as u32 & m, size, p >> bits != 0))
}

/// Signed product of `a` and `b` at `size` bytes: (full product as the
/// two's complement of 2*size bytes, flags).
pub fn imul(a: u32, b: u32, size: usize) -> (u64, u32) {
    let p = sext(a, size) as i32 as i64 * sext(b, size) as i32 as i64;
    let low = p as u32 & mask(size);
    let fits = sext(low, size) as i32 as i64 == p;
    (p as u64, mul_flags(low, size, !fits))
}

/// Unsigned division of the 2*size-byte `n` by `d`: (quotient,
/// remainder), or #DE.
pub fn div(n: u64, d: u32, size: usize) -> Result<(u32, u32), Fault> {
    let d = (d & mask(size)) as u64;
    if d == 0 {
        return Err(Fault::de());
    }
    let q = n / d;
    if q > mask(size) as u64 {
        return Err(Fault::de());
    }
    Ok((q as u32, (n % d) as u32))
}

/// Signed division of the 2*size-byte two's-complement `n` by `d`:
/// (quotient, remainder) masked to `size`, or #DE. The remainder has the
/// dividend's sign (truncating division).
pub fn idiv(n: u64, d: u32, size: usize) -> Result<(u32, u32), Fault> {
    let bits = size as u32 * 8;
    // Sign-extend the 2*size-byte dividend to 128 bits so that even
    // 0x8000_0000_0000_0000 / -1 is computed exactly.
    let shift = 128 - 2 * bits;
    let n = ((n as i128) << shift) >> shift;
    let d = sext(d, size) as i32 as i128;
    if d == 0 {
        return Err(Fault::de());
    }
    let q = n / d;
    let r = n % d;
    let lim = 1i128 << (bits - 1);
    if q < -lim || q >= lim {
        return Err(Fault::de());
    }
    Ok((q as u32 & mask(size), r as u32 & mask(size)))
}

/// MUL r/m and one-operand IMUL r/m.
fn mul_acc(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let size = ctx.op_size(ins, 0);
    let src = ctx.read_op(ins, 0)?;
    let a = acc(&ctx.vm.cpu, size);
    let (p, f) = if ins.mnemonic() == Mnemonic::Mul {
        mul(a, src, size)
    } else {
        imul(a, src, size)
    };
    let cpu = &mut ctx.vm.cpu;
    set_wide_acc(cpu, size, p);
    set_status(cpu, STATUS, f);
    Ok(())
}

/// IMUL: one operand (implicit accumulator), two (reg *= r/m) or three
/// (reg = r/m * imm).
fn imul_any(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    if ins.op_count() == 1 {
        return mul_acc(ctx, ins);
    }
    check_lock(ins, false)?;
    let size = ctx.op_size(ins, 0);
    let (a, b) = if ins.op_count() == 2 {
        (ctx.read_op(ins, 0)?, ctx.read_op(ins, 1)?)
    } else {
        (ctx.read_op(ins, 1)?, ctx.read_op(ins, 2)?)
    };
    let (p, f) = imul(a, b, size);
    ctx.write_op(ins, 0, p as u32)?;
    set_status(&mut ctx.vm.cpu, STATUS, f);
    Ok(())
}

/// DIV r/m and IDIV r/m.
fn divide(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let size = ctx.op_size(ins, 0);
    let d = ctx.read_op(ins, 0)?;
    let n = wide_acc(&ctx.vm.cpu, size);
    let (q, r) = if ins.mnemonic() == Mnemonic::Div {
        div(n, d, size)?
    } else {
        idiv(n, d, size)?
    };
    let cpu = &mut ctx.vm.cpu;
    match size {
        1 => cpu.set_reg16(EAX, ((r as u16) << 8) | q as u16 & 0xFF),
        2 => {
            cpu.set_reg16(EAX, q as u16);
            cpu.set_reg16(EDX, r as u16);
        }
        _ => {
            cpu.set_reg32(EAX, q);
            cpu.set_reg32(EDX, r);
        }
    }
    Ok(())
}

pub(super) fn register(t: &mut Table) {
    t.set(&[Mnemonic::Mul], mul_acc);
    t.set(&[Mnemonic::Imul], imul_any);
    t.set(&[Mnemonic::Div, Mnemonic::Idiv], divide);
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::*;
    use crate::cpu::{ECX, FIXED1, PF, SF};
    use crate::exception::vector;
    use crate::interp::testutil::{run, vm16, vm32, DATA};

    #[test]
    fn mul_pure() {
        assert_eq!(mul(0xFF, 0xFF, 1).0, 0xFE01);
        assert_eq!(mul(0xFF, 0xFF, 1).1 & (CF | OF), CF | OF);
        assert_eq!(mul(0x10, 0x0F, 1), (0xF0, PF | SF));
        assert_eq!(mul(0xFFFF, 2, 2).0, 0x1_FFFE);
        assert_eq!(mul(0xFFFF_FFFF, 0xFFFF_FFFF, 4).0, 0xFFFF_FFFE_0000_0001);
        assert_eq!(mul(0x8000, 2, 2).1 & (CF | OF), CF | OF);
    }

    #[test]
    fn imul_pure() {
        // -1 * -1 = 1 fits.
        assert_eq!(imul(0xFF, 0xFF, 1), (1, 0));
        // -128 * -1 = 128 does not fit a byte.
        let (p, f) = imul(0x80, 0xFF, 1);
        assert_eq!(p as u16, 0x0080);
        assert_eq!(f & (CF | OF), CF | OF);
        // 0x4000 * 2 = 0x8000: does not fit signed 16.
        assert_eq!(imul(0x4000, 2, 2).1 & (CF | OF), CF | OF);
        // -0x4000 * 2 = -0x8000 fits.
        assert_eq!(imul(0xC000, 2, 2).1 & (CF | OF), 0);
        assert_eq!(imul(0x8000_0000, 0xFFFF_FFFF, 4).0, 0x0000_0000_8000_0000);
        assert_eq!(imul(0x8000_0000, 0x8000_0000, 4).0, 0x4000_0000_0000_0000);
        assert_eq!(imul(0xFFFF_FFFE, 3, 4).0, (-6i64) as u64);
    }

    #[test]
    fn div_pure() {
        assert_eq!(div(0x1234, 0x40, 1), Ok((0x48, 0x34)));
        assert_eq!(div(0x1234, 0, 1).unwrap_err().vector, vector::DE);
        // 0x1234 / 0x12 = 0x102 > 0xFF: #DE.
        assert_eq!(div(0x1234, 0x12, 1).unwrap_err().vector, vector::DE);
        assert_eq!(div(0xFFFF_FFFF, 0xFFFF, 2).unwrap_err().vector, vector::DE);
        assert_eq!(div(0xFFFE_FFFF, 0xFFFF, 2), Ok((0xFFFF, 0xFFFE)));
        assert_eq!(
            div(0x1_0000_0000, 0xFFFF, 2).unwrap_err().vector,
            vector::DE
        );
        assert_eq!(
            div(0xFFFF_FFFE_0000_0001, 0xFFFF_FFFF, 4),
            Ok((0xFFFF_FFFF, 0))
        );
        assert_eq!(div(0x1_0000_0000, 1, 4).unwrap_err().vector, vector::DE);
    }

    #[test]
    fn idiv_pure() {
        // -7 / 2 = -3 remainder -1.
        assert_eq!(idiv(0xFFF9, 2, 1), Ok((0xFD, 0xFF)));
        // 7 / -2 = -3 remainder 1.
        assert_eq!(idiv(7, 0xFE, 1), Ok((0xFD, 1)));
        // -128 * 1 fits: -256 / 2 = -128.
        assert_eq!(idiv(0xFF00, 2, 1), Ok((0x80, 0)));
        // 128 does not: 256 / 2.
        assert_eq!(idiv(0x0100, 2, 1).unwrap_err().vector, vector::DE);
        // Most negative by -1 at every size.
        assert_eq!(idiv(0xFF80, 0xFF, 1).unwrap_err().vector, vector::DE);
        assert_eq!(idiv(0xFFFF_8000, 0xFFFF, 2).unwrap_err().vector, vector::DE);
        assert_eq!(
            idiv(0xFFFF_FFFF_8000_0000, 0xFFFF_FFFF, 4)
                .unwrap_err()
                .vector,
            vector::DE
        );
        assert_eq!(
            idiv(0x8000_0000_0000_0000, 0xFFFF_FFFF, 4)
                .unwrap_err()
                .vector,
            vector::DE
        );
        assert_eq!(idiv(5, 0, 4).unwrap_err().vector, vector::DE);
        assert_eq!(
            idiv((-100i64) as u64, 7, 4),
            Ok(((-14i32) as u32, (-2i32) as u32))
        );
    }

    /// Byte DIV/IDIV against the definition: truncating quotient, #DE
    /// exactly when the divisor is 0 or the quotient leaves the range.
    #[test]
    fn byte_division_against_definition() {
        for n in (0..=0xFFFFu32).step_by(5) {
            for d in 0..=0xFFu32 {
                let got = div(n as u64, d, 1);
                if d == 0 || n / d > 0xFF {
                    assert_eq!(got, Err(Fault::de()), "{n:#x} / {d:#x}");
                } else {
                    assert_eq!(got, Ok((n / d, n % d)), "{n:#x} / {d:#x}");
                }
                let (sn, sd) = (n as u16 as i16 as i32, d as u8 as i8 as i32);
                let got = idiv(n as u64, d, 1);
                if sd == 0 || !(-128..=127).contains(&(sn / sd)) {
                    assert_eq!(got, Err(Fault::de()), "{sn} / {sd}");
                } else {
                    let want = ((sn / sd) as u32 & 0xFF, (sn % sd) as u32 & 0xFF);
                    assert_eq!(got, Ok(want), "{sn} / {sd}");
                }
            }
        }
    }

    #[test]
    fn handlers() {
        let mut vm = vm32();
        vm.cpu.set_reg32(EAX, 0x1234_00FF);
        vm.cpu.set_reg32(ECX, 0x0000_0002);
        run(&mut vm, 32, |a| a.mul(cl)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x1234_01FE);
        assert_eq!(vm.cpu.eflags & (CF | OF), CF | OF);
        // MUL r/m16 writes DX:AX.
        vm.cpu.set_reg32(EAX, 0xFFFF);
        vm.cpu.set_reg32(EDX, 0xAAAA_5555);
        vm.mem.write_u16(DATA as u64, 0x0100);
        run(&mut vm, 32, |a| a.mul(word_ptr(DATA))).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0xFF00);
        assert_eq!(vm.cpu.reg32(EDX), 0xAAAA_00FF);
        // IMUL reg, r/m, imm8 (sign-extended immediate).
        vm.cpu.set_reg32(ECX, 1000);
        run(&mut vm, 32, |a| a.imul_3(eax, ecx, -3)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), (-3000i32) as u32);
        assert_eq!(vm.cpu.eflags & (CF | OF), 0);
        // IMUL reg16, r/m16 overflowing.
        vm.cpu.set_reg32(EAX, 0x0001_0100);
        vm.cpu.set_reg32(ECX, 0x0000_0100);
        run(&mut vm, 32, |a| a.imul_2(ax, cx)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x0001_0000);
        // A zero product still clears ZF (Intel hardware).
        assert_eq!(vm.cpu.eflags & (CF | OF | ZF), CF | OF);
        // IDIV EDX:EAX.
        vm.cpu.set_reg32(EDX, 0xFFFF_FFFF);
        vm.cpu.set_reg32(EAX, (-100i32) as u32);
        vm.cpu.set_reg32(ECX, 7);
        vm.cpu.eflags = FIXED1 | ZF;
        run(&mut vm, 32, |a| a.idiv(ecx)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), (-14i32) as u32);
        assert_eq!(vm.cpu.reg32(EDX), (-2i32) as u32);
        // Flags untouched by division.
        assert_eq!(vm.cpu.eflags, FIXED1 | ZF);
    }

    #[test]
    fn divide_faults_commit_nothing() {
        let mut vm = vm16();
        vm.cpu.set_reg32(EAX, 0x8000);
        vm.cpu.set_reg32(EDX, 0xFFFF);
        vm.cpu.set_reg32(ECX, 0xFFFF);
        let (gpr, flags) = (vm.cpu.gpr, vm.cpu.eflags);
        let r = run(&mut vm, 16, |a| a.idiv(cx));
        assert_eq!(r.unwrap_err().vector, vector::DE);
        assert_eq!((vm.cpu.gpr, vm.cpu.eflags), (gpr, flags));
        assert_eq!(vm.cpu.eip, crate::interp::testutil::CODE);
        // DIV by zero in 8 bits.
        vm.cpu.set_reg32(ECX, 0);
        let r = run(&mut vm, 16, |a| a.div(cl));
        assert_eq!(r.unwrap_err().vector, vector::DE);
        assert_eq!(vm.cpu.reg32(EAX), 0x8000);
        // AAM-style quotient overflow: 8-bit DIV, AX = 0xFFFF / 0x10.
        vm.cpu.set_reg32(EAX, 0xFFFF);
        vm.cpu.set_reg32(ECX, 0x10);
        let r = run(&mut vm, 16, |a| a.div(cl));
        assert_eq!(r.unwrap_err().vector, vector::DE);
        vm.cpu.set_reg32(EAX, 0x0FFF);
        run(&mut vm, 16, |a| a.div(cl)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x0FFF);
    }

    #[test]
    fn divide_error_is_delivered_as_a_fault() {
        use crate::interp::testutil::{load, CODE};
        use crate::interp::{Interpreter, Step};
        // Real mode: IVT vector 0 -> 0000:2000. #DE is a fault, so the
        // pushed return address is the DIV itself (SDM Vol. 3 6.15).
        let mut vm = vm16();
        vm.mem.write_u32(0, 0x0000_2000);
        vm.cpu.set_reg32(EAX, 0x1234);
        vm.cpu.set_reg32(ECX, 0);
        load(&mut vm, 16, |a| a.div(cl));
        let mut interp = Interpreter::new();
        assert_eq!(interp.step(&mut vm), Step::Retired);
        assert_eq!(vm.cpu.eip, 0x2000);
        assert_eq!(vm.cpu.reg32(EAX), 0x1234);
        let top = vm.cpu.reg32(crate::cpu::ESP);
        assert_eq!(top, 0xF000 - 6);
        assert_eq!(vm.mem.read_u16(top as u64) as u32, CODE);
        assert_eq!(interp.stats.exceptions[vector::DE as usize], 1);
    }
}
