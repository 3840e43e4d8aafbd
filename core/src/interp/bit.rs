//! Bit test and scan: BT BTS BTR BTC (register or immediate bit offset)
//! and BSF BSR.
//!
//! SDM Vol. 2 BT: with a register bit base the offset is taken modulo
//! the operand width; with a memory bit base and an immediate offset too;
//! with a memory bit base and a register offset the offset is a signed
//! 16- or 32-bit integer that may address any bit in the segment: the
//! operand-sized word holding it is at EA + (offset >> 4 or 5) * size.
//! CF receives the selected bit; OF SF AF PF are undefined and ZF is
//! unaffected: all five are left as they are, which is what Intel parts
//! are reported to do for the four that may change.
//!
//! SDM Vol. 2 BSF/BSR: a zero source sets ZF and leaves the destination
//! undefined; Intel hardware leaves it unchanged, and so does this file.
//! CF OF SF AF PF are undefined: see `scan_flags`.

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::alu::check_lock;
use super::flags::{parity, set_status};
use super::operand::{mask, sext};
use super::{Ctx, Table};
use crate::cpu::{CF, PF, STATUS, ZF};
use crate::exception::Fault;

/// What BTS BTR BTC do to the selected bit (BT leaves it).
fn modify(m: Mnemonic, v: u32, bit: u32) -> u32 {
    let b = 1u32 << bit;
    match m {
        Mnemonic::Bts => v | b,
        Mnemonic::Btr => v & !b,
        Mnemonic::Btc => v ^ b,
        _ => v,
    }
}

/// BT BTS BTR BTC r/m, reg|imm8.
fn bit_test(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let m = ins.mnemonic();
    let writes = m != Mnemonic::Bt;
    check_lock(ins, writes)?;
    let size = ctx.op_size(ins, 0);
    let bits = size as u32 * 8;
    let offset = ctx.read_op(ins, 1)?;
    let (v, bit) = if ins.op0_kind() == OpKind::Memory {
        let seg = ctx.mem_seg(ins);
        let mut off = ctx.ea(ins);
        let bit = offset & (bits - 1);
        if ins.op1_kind() == OpKind::Register {
            // Signed offset: step whole operand-sized words (arithmetic
            // shift) from the effective address, wrapping at the address
            // size like the rest of the EA computation.
            let words = (sext(offset, size) as i32) >> bits.trailing_zeros();
            off = off.wrapping_add((words as u32).wrapping_mul(size as u32));
            if !ctx.addr32(ins) {
                off &= 0xFFFF;
            }
        }
        if writes {
            ctx.check_write(seg, off, size)?;
        }
        let v = ctx.read_mem(seg, off, size)?;
        if writes {
            ctx.write_mem(seg, off, size, modify(m, v, bit))?;
        }
        (v, bit)
    } else {
        let v = ctx.read_op(ins, 0)?;
        let bit = offset & (bits - 1);
        if writes {
            ctx.write_op(ins, 0, modify(m, v, bit))?;
        }
        (v, bit)
    };
    let cf = if (v >> bit) & 1 != 0 { CF } else { 0 };
    set_status(&mut ctx.vm.cpu, CF, cf);
    Ok(())
}

/// Status flags after BSF/BSR that found bit `index` (`None`: zero
/// source). ZF is the architectural result; the undefined five are what
/// an Intel Xeon host was measured to produce: CF OF SF AF cleared, PF the
/// parity of the index (set for a zero source).
pub fn scan_flags(index: Option<u32>) -> u32 {
    match index {
        None => ZF | PF,
        Some(i) => parity(i),
    }
}

/// BSF BSR reg, r/m (and TZCNT/LZCNT encodings, which execute as BSF/BSR
/// on processors without BMI1/LZCNT: the F3 prefix is ignored).
fn bit_scan(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let size = ctx.op_size(ins, 0);
    let src = ctx.read_op(ins, 1)? & mask(size);
    if src == 0 {
        set_status(&mut ctx.vm.cpu, STATUS, scan_flags(None));
        return Ok(());
    }
    let index = match ins.mnemonic() {
        Mnemonic::Bsf | Mnemonic::Tzcnt => src.trailing_zeros(),
        _ => 31 - src.leading_zeros(),
    };
    ctx.write_op(ins, 0, index)?;
    set_status(&mut ctx.vm.cpu, STATUS, scan_flags(Some(index)));
    Ok(())
}

pub(super) fn register(t: &mut Table) {
    t.set(
        &[Mnemonic::Bt, Mnemonic::Bts, Mnemonic::Btr, Mnemonic::Btc],
        bit_test,
    );
    t.set(
        &[
            Mnemonic::Bsf,
            Mnemonic::Bsr,
            Mnemonic::Tzcnt,
            Mnemonic::Lzcnt,
        ],
        bit_scan,
    );
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use crate::cpu::{EAX, EBX, ECX, EDX, FIXED1, OF, SF};
    use crate::exception::vector;
    use crate::interp::testutil::{exec, load_bytes, run, vm16, vm32, DATA};

    use super::*;

    #[test]
    fn bt_register_modulo_width() {
        let mut vm = vm32();
        vm.cpu.set_reg32(EAX, 0x8000_0001);
        vm.cpu.set_reg32(ECX, 63); // 63 mod 32 = 31
        vm.cpu.eflags = FIXED1 | ZF | SF;
        run(&mut vm, 32, |a| a.bt(eax, ecx)).unwrap();
        assert_eq!(vm.cpu.eflags, FIXED1 | ZF | SF | CF);
        run(&mut vm, 32, |a| a.btr(eax, 0)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x8000_0000);
        assert_eq!(vm.cpu.eflags & CF, CF);
        run(&mut vm, 32, |a| a.bts(ax, 17)).unwrap(); // 17 mod 16 = 1
        assert_eq!(vm.cpu.reg32(EAX), 0x8000_0002);
        assert_eq!(vm.cpu.eflags & CF, 0);
        run(&mut vm, 32, |a| a.btc(eax, 31)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x0000_0002);
        assert_eq!(vm.cpu.eflags & CF, CF);
    }

    #[test]
    fn bt_memory_register_offset_reaches_beyond() {
        let mut vm = vm32();
        vm.cpu.set_reg32(EBX, DATA);
        // Bit 35 from DATA is bit 3 of the dword at DATA + 4.
        vm.cpu.set_reg32(ECX, 35);
        run(&mut vm, 32, |a| a.bts(dword_ptr(ebx), ecx)).unwrap();
        assert_eq!(vm.mem.read_u32(DATA as u64), 0);
        assert_eq!(vm.mem.read_u32(DATA as u64 + 4), 8);
        assert_eq!(vm.cpu.eflags & CF, 0);
        // Negative: -1 is bit 31 of the dword at DATA - 4.
        vm.mem.write_u32(DATA as u64 - 4, 0x8000_0000);
        vm.cpu.set_reg32(ECX, 0xFFFF_FFFF);
        run(&mut vm, 32, |a| a.btr(dword_ptr(ebx), ecx)).unwrap();
        assert_eq!(vm.mem.read_u32(DATA as u64 - 4), 0);
        assert_eq!(vm.cpu.eflags & CF, CF);
        // -33 = bit 31 of the dword at DATA - 8.
        vm.mem.write_u32(DATA as u64 - 8, 0x8000_0000);
        vm.cpu.set_reg32(ECX, (-33i32) as u32);
        run(&mut vm, 32, |a| a.bt(dword_ptr(ebx), ecx)).unwrap();
        assert_eq!(vm.cpu.eflags & CF, CF);
        // 16-bit: offset -17 in CX = bit 15 of the word at DATA - 4.
        vm.mem.write_u16(DATA as u64 - 4, 0x8000);
        vm.cpu.set_reg32(ECX, 0x1234_FFEF);
        run(&mut vm, 32, |a| a.btc(word_ptr(ebx), cx)).unwrap();
        assert_eq!(vm.mem.read_u16(DATA as u64 - 4), 0);
        assert_eq!(vm.cpu.eflags & CF, CF);
    }

    #[test]
    fn bt_memory_immediate_stays_in_operand() {
        let mut vm = vm32();
        vm.mem.write_u32(DATA as u64, 0x0000_0100);
        // imm 40 on a dword = bit 8 of the same dword.
        run(&mut vm, 32, |a| a.btc(dword_ptr(DATA), 40)).unwrap();
        assert_eq!(vm.mem.read_u32(DATA as u64), 0);
        assert_eq!(vm.mem.read_u32(DATA as u64 + 4), 0);
        assert_eq!(vm.cpu.eflags & CF, CF);
    }

    #[test]
    fn bt_16bit_addressing_wraps() {
        // Real mode: BX = 2, offset -32 (two words back) -> 0xFFFE.
        let mut vm = vm16();
        vm.mem.write_u16(0xFFFE, 0x0001);
        vm.cpu.set_reg32(EBX, 2);
        vm.cpu.set_reg32(ECX, (-32i16) as u16 as u32);
        run(&mut vm, 16, |a| a.bt(word_ptr(bx), cx)).unwrap();
        assert_eq!(vm.cpu.eflags & CF, CF);
    }

    #[test]
    fn bt_lock_rules() {
        let mut vm = vm32();
        vm.cpu.set_reg32(EBX, DATA);
        vm.cpu.set_reg32(ECX, 1);
        // LOCK BTS [EBX], ECX: legal.
        load_bytes(&mut vm, &[0xF0, 0x0F, 0xAB, 0x0B]);
        exec(&mut vm).unwrap();
        assert_eq!(vm.mem.read_u32(DATA as u64), 2);
        // LOCK BT [EBX], ECX: #UD.
        load_bytes(&mut vm, &[0xF0, 0x0F, 0xA3, 0x0B]);
        assert_eq!(exec(&mut vm).unwrap_err().vector, vector::UD);
    }

    #[test]
    fn bsf_bsr() {
        let mut vm = vm32();
        vm.cpu.set_reg32(EAX, 0xDEAD_BEEF);
        vm.cpu.set_reg32(EBX, 0);
        vm.cpu.eflags = FIXED1 | CF | OF | SF | PF;
        run(&mut vm, 32, |a| a.bsf(eax, ebx)).unwrap();
        // Zero source: ZF, destination unchanged; PF set, CF OF SF AF
        // cleared (the measured Intel behaviour of the undefined flags).
        assert_eq!(vm.cpu.reg32(EAX), 0xDEAD_BEEF);
        assert_eq!(vm.cpu.eflags & STATUS, ZF | PF);
        vm.cpu.set_reg32(EBX, 0x0001_8000);
        vm.cpu.eflags = FIXED1 | CF | OF | SF | ZF;
        run(&mut vm, 32, |a| a.bsf(eax, ebx)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 15);
        // 15 = 0b1111: even parity.
        assert_eq!(vm.cpu.eflags & STATUS, PF);
        run(&mut vm, 32, |a| a.bsr(eax, ebx)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 16);
        assert_eq!(vm.cpu.eflags & STATUS, 0);
        // 16-bit: only the low word of the source counts.
        vm.cpu.set_reg32(EDX, 0xFFFF_0000);
        vm.cpu.set_reg32(EAX, 0x1234_5678);
        run(&mut vm, 32, |a| a.bsr(ax, dx)).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x1234_5678);
        assert_eq!(vm.cpu.eflags & ZF, ZF);
        vm.mem.write_u16(DATA as u64, 0x4000);
        run(&mut vm, 32, |a| a.bsr(ax, word_ptr(DATA))).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x1234_000E);
        // F3 0F BC (TZCNT encoding) executes as BSF.
        vm.cpu.set_reg32(ECX, 0x10);
        load_bytes(&mut vm, &[0xF3, 0x0F, 0xBC, 0xC1]);
        exec(&mut vm).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 4);
    }
}
