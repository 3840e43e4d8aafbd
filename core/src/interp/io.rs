//! Port I/O instructions: IN, OUT (immediate and DX ports; 8, 16, 32 bits)
//! and the string forms INS/OUTS with REP, all through `Vm::bus`. Owns the
//! I/O protection check (IOPL and the TSS I/O permission bitmap, SDM
//! Vol. 1 19.5) that every engine reuses through `check_io`.
//!
//! It does not own the devices (they sit on the bus) nor the other string
//! instructions (`string`).

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::operand::mask;
use super::{Ctx, Table};
use crate::cpu::{attr, flags, SegReg, ECX, EDI, ESI};
use crate::exception::Fault;
use crate::mmu::Access;
use crate::vm::Vm;

/// Offset in a 32-bit TSS of the 16-bit I/O map base (SDM Vol. 3 8.2.1,
/// Figure 8-2).
pub const TSS_IOMAP_BASE: u32 = 0x66;

/// System-descriptor types of a 32-bit TSS (available, busy): only these
/// have an I/O permission bitmap.
const TSS32_AVAIL: u32 = 9;
const TSS32_BUSY: u32 = 0xB;

pub(super) fn register(t: &mut Table) {
    t.set(&[Mnemonic::In], in_insn);
    t.set(&[Mnemonic::Out], out_insn);
    t.set(&[Mnemonic::Insb, Mnemonic::Insw, Mnemonic::Insd], ins_insn);
    t.set(
        &[Mnemonic::Outsb, Mnemonic::Outsw, Mnemonic::Outsd],
        outs_insn,
    );
}

/// I/O protection (SDM Vol. 1 19.5.1-19.5.2): in protected mode with
/// CPL > IOPL, and always in V86 mode, every bit of the TSS I/O
/// permission bitmap covering `port..port+size` must be 0. The processor
/// reads two bitmap bytes at `iomap_base + port / 8`; both must lie
/// within the TSS limit. A 16-bit TSS has no bitmap. Any failure: #GP(0).
pub fn check_io(vm: &mut Vm, port: u16, size: usize) -> Result<(), Fault> {
    let cpu = &vm.cpu;
    if !cpu.protected() || (!cpu.v86() && cpu.cpl() <= cpu.iopl()) {
        return Ok(());
    }
    let tr = cpu.tr;
    let ty = tr.attr & 0xF;
    if tr.unusable() || tr.attr & attr::S != 0 || (ty != TSS32_AVAIL && ty != TSS32_BUSY) {
        return Err(Fault::gp(0));
    }
    if tr.limit < TSS_IOMAP_BASE + 1 {
        return Err(Fault::gp(0));
    }
    // TSS reads are implicit supervisor accesses.
    let base = vm.read_lin(tr.base.wrapping_add(TSS_IOMAP_BASE), 2, Access::READ)? as u32;
    let byte = base + port as u32 / 8;
    if byte + 1 > tr.limit {
        return Err(Fault::gp(0));
    }
    let bits = vm.read_lin(tr.base.wrapping_add(byte), 2, Access::READ)? as u32;
    let want = ((1u32 << size) - 1) << (port & 7);
    if bits & want != 0 {
        return Err(Fault::gp(0));
    }
    Ok(())
}

/// The port operand `n` of IN/OUT: an immediate byte or DX.
fn port_op(ctx: &Ctx, ins: &Instruction, n: u32) -> u16 {
    match ins.op_kind(n) {
        OpKind::Immediate8 => ins.immediate8() as u16,
        _ => ctx.reg(Register::DX) as u16,
    }
}

/// IN AL/AX/EAX, imm8/DX.
fn in_insn(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let dst = ins.op0_register();
    let size = dst.size();
    let port = port_op(ctx, ins, 1);
    check_io(ctx.vm, port, size)?;
    let v = ctx.vm.port_in(port, size as u8);
    ctx.set_reg(dst, v & mask(size));
    Ok(())
}

/// OUT imm8/DX, AL/AX/EAX.
fn out_insn(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let src = ins.op1_register();
    let size = src.size();
    let port = port_op(ctx, ins, 0);
    check_io(ctx.vm, port, size)?;
    let v = ctx.reg(src);
    ctx.vm.port_out(port, size as u8, v);
    Ok(())
}

/// Element size of INS/OUTS from the mnemonic.
fn string_size(m: Mnemonic) -> usize {
    match m {
        Mnemonic::Insb | Mnemonic::Outsb => 1,
        Mnemonic::Insw | Mnemonic::Outsw => 2,
        _ => 4,
    }
}

/// Index and count registers of a string instruction at its address
/// size.
struct StrRegs {
    a32: bool,
}

impl StrRegs {
    fn get(&self, ctx: &Ctx, r: usize) -> u32 {
        let v = ctx.vm.cpu.reg32(r);
        if self.a32 {
            v
        } else {
            v & 0xFFFF
        }
    }
    fn set(&self, ctx: &mut Ctx, r: usize, v: u32) {
        if self.a32 {
            ctx.vm.cpu.set_reg32(r, v);
        } else {
            ctx.vm.cpu.set_reg16(r, v as u16);
        }
    }
    /// Advance index register `r` by one element in the DF direction.
    fn step(&self, ctx: &mut Ctx, r: usize, size: usize) {
        let v = self.get(ctx, r);
        let v = if ctx.vm.cpu.eflags & flags::DF != 0 {
            v.wrapping_sub(size as u32)
        } else {
            v.wrapping_add(size as u32)
        };
        self.set(ctx, r, v);
    }
}

/// Whether a REP (or REPNE, which INS/OUTS treat the same) prefix is
/// present.
fn has_rep(ins: &Instruction) -> bool {
    ins.has_rep_prefix() || ins.has_repne_prefix()
}

/// Run `one` once, or with REP up to `ctx.rep_batch` times while the
/// count register is non-zero; an unfinished REP re-executes (next EIP =
/// this EIP). Registers are committed per iteration, so a fault leaves
/// the completed iterations done (SDM Vol. 2B REP).
fn repeat(
    ctx: &mut Ctx,
    ins: &Instruction,
    r: &StrRegs,
    mut one: impl FnMut(&mut Ctx) -> Result<(), Fault>,
) -> Result<(), Fault> {
    if !has_rep(ins) {
        return one(ctx);
    }
    for _ in 0..ctx.rep_batch {
        let count = r.get(ctx, ECX);
        if count == 0 {
            return Ok(());
        }
        one(ctx)?;
        r.set(ctx, ECX, count - 1);
    }
    if r.get(ctx, ECX) != 0 {
        ctx.next_eip = ctx.eip;
    }
    Ok(())
}

/// INS m, DX: port DX -> ES:[(E)DI] (ES cannot be overridden). The
/// destination is checked for writing before the port is read, so a
/// fault never loses a device read.
fn ins_insn(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let size = string_size(ins.mnemonic());
    let r = StrRegs {
        a32: ins.op0_kind() == OpKind::MemoryESEDI,
    };
    repeat(ctx, ins, &r, |ctx| {
        let port = ctx.reg(Register::DX) as u16;
        let di = r.get(ctx, EDI);
        check_io(ctx.vm, port, size)?;
        ctx.check_write(SegReg::Es, di, size)?;
        let v = ctx.vm.port_in(port, size as u8);
        ctx.write_mem(SegReg::Es, di, size, v)?;
        r.step(ctx, EDI, size);
        Ok(())
    })
}

/// OUTS DX, m: seg:[(E)SI] -> port DX (DS by default, overridable).
fn outs_insn(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let size = string_size(ins.mnemonic());
    let seg = ctx.mem_seg(ins);
    let r = StrRegs {
        a32: ins.op1_kind() == OpKind::MemorySegESI,
    };
    repeat(ctx, ins, &r, |ctx| {
        let port = ctx.reg(Register::DX) as u16;
        let si = r.get(ctx, ESI);
        check_io(ctx.vm, port, size)?;
        let v = ctx.read_mem(seg, si, size)?;
        ctx.vm.port_out(port, size as u8, v);
        r.step(ctx, ESI, size);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::super::system::testutil::*;
    use super::*;
    use crate::bus::PortIo;
    use crate::cpu::{Segment, EAX, EDX};
    use iced_x86::code_asm::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Logs every access (reads as value 0xFFFFFFFF); the n-th read
    /// returns 0x40302010 + n.
    struct Probe {
        log: Rc<RefCell<Vec<(u16, u8, u32)>>>,
        reads: u32,
    }
    impl PortIo for Probe {
        fn read(&mut self, port: u16, size: u8, _now: u64) -> u32 {
            self.reads += 1;
            self.log.borrow_mut().push((port, size, 0xFFFF_FFFF));
            0x4030_2010u32.wrapping_add(self.reads)
        }
        fn write(&mut self, port: u16, size: u8, v: u32, _now: u64) {
            self.log.borrow_mut().push((port, size, v));
        }
    }

    fn with_probe(vm: &mut Vm) -> Rc<RefCell<Vec<(u16, u8, u32)>>> {
        let log = Rc::new(RefCell::new(Vec::new()));
        vm.bus.add_ports(
            0,
            0xFFFF,
            Box::new(Probe {
                log: log.clone(),
                reads: 0,
            }),
        );
        log
    }

    const TSS: u32 = 0x3000;

    /// A ring-3 machine with a 32-bit TSS whose bitmap starts at TSS+0x68
    /// and covers ports 0..0x400 (0x80 bytes); ports 0x20-0x2F and 0x64
    /// are allowed (bits 0), all else denied.
    fn ring3_with_bitmap() -> Vm {
        let mut vm = ring3();
        vm.cpu.tr = Segment {
            selector: 0x28,
            base: TSS,
            limit: 0x68 + 0x80 - 1,
            attr: attr::P | TSS32_BUSY,
        };
        vm.mem.write_u16((TSS + 0x66) as u64, 0x68);
        for i in 0..0x80u32 {
            vm.mem.write_u8((TSS + 0x68 + i) as u64, 0xFF);
        }
        // Ports 0x20-0x2F: bytes 4 and 5 of the map.
        vm.mem.write_u8((TSS + 0x68 + 4) as u64, 0);
        vm.mem.write_u8((TSS + 0x68 + 5) as u64, 0);
        // Port 0x64: byte 12, bit 4.
        vm.mem.write_u8((TSS + 0x68 + 12) as u64, 0xEF);
        vm
    }

    #[test]
    fn in_out_imm_and_dx_in_real_mode() {
        let mut vm = real();
        let log = with_probe(&mut vm);
        vm.cpu.set_reg32(EAX, 0xAABB_CCDD);
        assert_eq!(run(&mut vm, 16, |a| a.out(0x80, al)), Ok(()));
        vm.cpu.set_reg32(EDX, 0x3F8);
        assert_eq!(run(&mut vm, 16, |a| a.out(dx, eax)), Ok(()));
        assert_eq!(run(&mut vm, 16, |a| a.in_(ax, dx)), Ok(()));
        assert_eq!(vm.cpu.reg32(EAX), 0xAABB_2011);
        assert_eq!(
            *log.borrow(),
            vec![
                (0x80, 1, 0xDD),
                (0x3F8, 4, 0xAABB_CCDD),
                (0x3F8, 2, 0xFFFF_FFFF)
            ]
        );
    }

    #[test]
    fn bitmap_allows_and_denies_at_byte_boundaries() {
        let mut vm = ring3_with_bitmap();
        let _log = with_probe(&mut vm);
        let io = |vm: &mut Vm, port: u16, size: usize| check_io(vm, port, size);
        // Port 0x1F (last bit of byte 3) denied; 0x20 allowed.
        assert_eq!(io(&mut vm, 0x1F, 1), Err(Fault::gp(0)));
        assert_eq!(io(&mut vm, 0x20, 1), Ok(()));
        // A word at 0x1F spans bytes 3 and 4: denied by byte 3.
        assert_eq!(io(&mut vm, 0x1F, 2), Err(Fault::gp(0)));
        // A dword at 0x2C..0x2F allowed; at 0x2D it reaches 0x30: denied.
        assert_eq!(io(&mut vm, 0x2C, 4), Ok(()));
        assert_eq!(io(&mut vm, 0x2D, 4), Err(Fault::gp(0)));
        // A word at 0x27 spans bytes 4 and 5, both clear: allowed.
        assert_eq!(io(&mut vm, 0x27, 2), Ok(()));
        // Single bit in the middle of a byte.
        assert_eq!(io(&mut vm, 0x64, 1), Ok(()));
        assert_eq!(io(&mut vm, 0x63, 1), Err(Fault::gp(0)));
        assert_eq!(io(&mut vm, 0x64, 2), Err(Fault::gp(0)));
        // Through the instructions.
        vm.cpu.set_reg32(EDX, 0x64);
        assert_eq!(run(&mut vm, 32, |a| a.in_(al, dx)), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.out(0x60, al)), Err(Fault::gp(0)));
        // With IOPL 3 the bitmap is not consulted at CPL 3.
        vm.cpu.eflags |= flags::IOPL;
        assert_eq!(run(&mut vm, 32, |a| a.out(0x60, al)), Ok(()));
    }

    #[test]
    fn bitmap_limit_and_tss_type() {
        let mut vm = ring3_with_bitmap();
        // Map bytes 0x00..0x7F exist; port 0x3F8 is byte 0x7F: the
        // processor reads bytes 0x7F and 0x80, and 0x80 is past the limit.
        for i in 0x7E..0x80u32 {
            vm.mem.write_u8((TSS + 0x68 + i) as u64, 0);
        }
        assert_eq!(check_io(&mut vm, 0x3F0, 1), Ok(()));
        assert_eq!(check_io(&mut vm, 0x3F8, 1), Err(Fault::gp(0)));
        vm.cpu.tr.limit += 1;
        assert_eq!(check_io(&mut vm, 0x3F8, 1), Ok(()));
        // Map base beyond the limit: no bitmap, everything denied.
        vm.mem.write_u16((TSS + 0x66) as u64, 0x1000);
        assert_eq!(check_io(&mut vm, 0x20, 1), Err(Fault::gp(0)));
        // A 16-bit TSS has no bitmap.
        let mut vm = ring3_with_bitmap();
        vm.cpu.tr.attr = attr::P | 3;
        assert_eq!(check_io(&mut vm, 0x20, 1), Err(Fault::gp(0)));
        // V86 mode consults the bitmap even with IOPL 3.
        let mut vm = ring3_with_bitmap();
        vm.cpu.seg = super::super::system::testutil::real().cpu.seg;
        vm.cpu.eflags = flags::FIXED1 | flags::VM | flags::IOPL;
        assert_eq!(check_io(&mut vm, 0x20, 1), Ok(()));
        assert_eq!(check_io(&mut vm, 0x60, 1), Err(Fault::gp(0)));
        // CPL 0 never checks.
        let mut vm = flat0();
        vm.cpu.tr.attr = attr::P | 3;
        assert_eq!(check_io(&mut vm, 0x60, 4), Ok(()));
    }

    #[test]
    fn rep_insb_and_outsw() {
        let mut vm = flat0();
        let log = with_probe(&mut vm);
        vm.cpu.set_reg32(EDX, 0x1F0);
        vm.cpu.set_reg32(EDI, 0x5000);
        vm.cpu.set_reg32(ECX, 3);
        assert_eq!(run(&mut vm, 32, |a| a.rep().insb()), Ok(()));
        assert_eq!(vm.cpu.reg32(ECX), 0);
        assert_eq!(vm.cpu.reg32(EDI), 0x5003);
        assert_eq!(vm.mem.read_u32(0x5000), 0x0013_1211);
        // OUTSW backwards (DF=1), from DS:ESI.
        vm.cpu.eflags |= flags::DF;
        vm.mem.write_u32(0x6000, 0xBEEF_CAFE);
        vm.cpu.set_reg32(ESI, 0x6002);
        vm.cpu.set_reg32(ECX, 2);
        assert_eq!(run(&mut vm, 32, |a| a.rep().outsw()), Ok(()));
        assert_eq!(vm.cpu.reg32(ESI), 0x5FFE);
        let l = log.borrow();
        assert_eq!(l[3..], [(0x1F0, 2, 0xBEEF), (0x1F0, 2, 0xCAFE)]);
    }

    #[test]
    fn rep_batch_leaves_eip_and_count_zero_is_a_no_op() {
        let mut vm = real();
        let log = with_probe(&mut vm);
        vm.cpu.set_reg32(ECX, 0x0001_0000);
        // 16-bit address size: CX = 0 means no iteration.
        assert_eq!(run(&mut vm, 16, |a| a.rep().insb()), Ok(()));
        assert!(log.borrow().is_empty());
        assert_eq!(vm.cpu.eip, CODE + 2);
        vm.cpu.eip = CODE;
        vm.cpu.set_reg32(ECX, 300);
        vm.cpu.set_reg32(EDI, 0xFFFF);
        // The runner uses a batch of 256: 44 left, EIP unchanged.
        assert_eq!(run(&mut vm, 16, |a| a.rep().insb()), Ok(()));
        assert_eq!(vm.cpu.reg32(ECX), 44);
        assert_eq!(vm.cpu.eip, CODE);
        // DI wrapped at 16 bits: 0xFFFF + 256 = 0x00FF.
        assert_eq!(vm.cpu.reg32(EDI), 0x00FF);
        assert_eq!(log.borrow().len(), 256);
    }

    #[test]
    fn ins_denied_port_reads_nothing() {
        let mut vm = ring3_with_bitmap();
        let log = with_probe(&mut vm);
        vm.cpu.set_reg32(EDX, 0x60);
        vm.cpu.set_reg32(EDI, 0x5000);
        assert_eq!(run(&mut vm, 32, |a| a.insb()), Err(Fault::gp(0)));
        assert!(log.borrow().is_empty());
        assert_eq!(vm.cpu.reg32(EDI), 0x5000);
    }
}
