//! String instructions MOVS, STOS, LODS, CMPS, SCAS (byte, word, dword)
//! with REP/REPE/REPNE, 16- or 32-bit addressing (SI/DI/CX or
//! ESI/EDI/ECX), EFLAGS.DF, and a segment override on the source (the
//! destination is always ES, SDM Vol. 2 MOVS).
//!
//! A REP instruction runs at most `ctx.rep_batch` iterations per step (one
//! when EFLAGS.TF is set) and, if not finished, leaves EIP on itself so the
//! next step continues it (interruptible between iterations, as on
//! hardware, SDM Vol. 2 REP).
//! Each iteration commits its memory write, index registers and count
//! before the next starts, so a fault in iteration k leaves the state as
//! after iteration k-1, with EIP at the instruction.
//!
//! INS/OUTS live in `io`; they reuse the `pub(crate)` addressing and
//! iteration helpers here.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use super::data::accumulator;
use super::flags::{set_status, sub_flags};
use super::operand::mask;
use super::{Ctx, Table};
use crate::cpu::{flags, SegReg, ECX, EDI, ESI};
use crate::exception::Fault;

/// Whether a string instruction uses 32-bit addressing (ESI/EDI/ECX),
/// read from its implicit memory operands.
pub(crate) fn addr32(ins: &Instruction) -> bool {
    for n in 0..ins.op_count() {
        match ins.op_kind(n) {
            OpKind::MemorySegESI | OpKind::MemorySegEDI | OpKind::MemoryESEDI => return true,
            OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI => return false,
            _ => {}
        }
    }
    false
}

/// The element size in bytes (1, 2, 4), or #UD for anything else.
pub(crate) fn elem_size(ins: &Instruction) -> Result<usize, Fault> {
    match ins.memory_size().size() {
        s @ (1 | 2 | 4) => Ok(s),
        _ => Err(Fault::ud()),
    }
}

/// Segment of the source operand DS:(E)SI, honouring an override.
pub(crate) fn src_seg(ctx: &Ctx, ins: &Instruction) -> SegReg {
    ctx.mem_seg(ins)
}

/// Current value of index register `r` (ESI or EDI) at the address size.
#[inline]
pub(crate) fn index(ctx: &Ctx, r: usize, a32: bool) -> u32 {
    if a32 {
        ctx.vm.cpu.reg32(r)
    } else {
        ctx.vm.cpu.reg16(r) as u32
    }
}

/// Step index register `r` by `size` in the direction EFLAGS.DF says; with
/// 16-bit addressing only SI/DI change and they wrap at 64 KiB.
#[inline]
pub(crate) fn advance(ctx: &mut Ctx, r: usize, a32: bool, size: usize) {
    let v = index(ctx, r, a32);
    let v = if ctx.vm.cpu.eflags & flags::DF != 0 {
        v.wrapping_sub(size as u32)
    } else {
        v.wrapping_add(size as u32)
    };
    if a32 {
        ctx.vm.cpu.set_reg32(r, v);
    } else {
        ctx.vm.cpu.set_reg16(r, v as u16);
    }
}

/// The REP count register (CX or ECX by the address size).
#[inline]
pub(crate) fn count(ctx: &Ctx, a32: bool) -> u32 {
    index(ctx, ECX, a32)
}

#[inline]
pub(crate) fn set_count(ctx: &mut Ctx, a32: bool, v: u32) {
    if a32 {
        ctx.vm.cpu.set_reg32(ECX, v);
    } else {
        ctx.vm.cpu.set_reg16(ECX, v as u16);
    }
}

/// How a repeated instruction ends besides the count reaching zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Until {
    /// MOVS STOS LODS INS OUTS: only the count (F2 and F3 both mean REP).
    Count,
    /// CMPS SCAS: F3 stops when ZF = 0 (REPE), F2 when ZF = 1 (REPNE).
    Zf,
}

/// Run one string instruction: once without a REP prefix; with one, up to
/// `ctx.rep_batch` iterations, each of which `body` performs and commits.
/// A REP with count 0 does nothing. If the count (or ZF condition) does not
/// end it within the batch, `ctx.next_eip` is set back to the instruction.
pub(crate) fn run_string(
    ctx: &mut Ctx,
    ins: &Instruction,
    until: Until,
    mut body: impl FnMut(&mut Ctx) -> Result<(), Fault>,
) -> Result<(), Fault> {
    if ins.has_lock_prefix() {
        return Err(Fault::ud());
    }
    let repe = ins.has_rep_prefix();
    let repne = ins.has_repne_prefix();
    if !repe && !repne {
        return body(ctx);
    }
    let a32 = addr32(ins);
    let mut n = count(ctx, a32);
    if n == 0 {
        return Ok(());
    }
    // With EFLAGS.TF the single-step trap follows every iteration (SDM
    // Vol. 3 17.3.1.4), so a step runs one.
    let batch = if ctx.vm.cpu.eflags & flags::TF != 0 {
        1
    } else {
        ctx.rep_batch.max(1)
    };
    for _ in 0..batch {
        body(ctx)?;
        n = n.wrapping_sub(1) & if a32 { u32::MAX } else { 0xFFFF };
        set_count(ctx, a32, n);
        if n == 0 {
            return Ok(());
        }
        if until == Until::Zf {
            let zf = ctx.vm.cpu.eflags & flags::ZF != 0;
            if (repe && !zf) || (repne && zf) {
                return Ok(());
            }
        }
    }
    ctx.next_eip = ctx.eip;
    Ok(())
}

/// MOVS: ES:[DI] = seg:[SI].
fn movs(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let size = elem_size(ins)?;
    let a32 = addr32(ins);
    let seg = src_seg(ctx, ins);
    run_string(ctx, ins, Until::Count, |ctx| {
        let v = ctx.read_mem(seg, index(ctx, ESI, a32), size)?;
        ctx.write_mem(SegReg::Es, index(ctx, EDI, a32), size, v)?;
        advance(ctx, ESI, a32, size);
        advance(ctx, EDI, a32, size);
        Ok(())
    })
}

/// STOS: ES:[DI] = AL/AX/EAX.
fn stos(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let size = elem_size(ins)?;
    let a32 = addr32(ins);
    run_string(ctx, ins, Until::Count, |ctx| {
        let v = ctx.reg(accumulator(size));
        ctx.write_mem(SegReg::Es, index(ctx, EDI, a32), size, v)?;
        advance(ctx, EDI, a32, size);
        Ok(())
    })
}

/// LODS: AL/AX/EAX = seg:[SI].
fn lods(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let size = elem_size(ins)?;
    let a32 = addr32(ins);
    let seg = src_seg(ctx, ins);
    run_string(ctx, ins, Until::Count, |ctx| {
        let v = ctx.read_mem(seg, index(ctx, ESI, a32), size)?;
        ctx.set_reg(accumulator(size), v & mask(size));
        advance(ctx, ESI, a32, size);
        Ok(())
    })
}

/// CMPS: flags of seg:[SI] - ES:[DI] (SDM Vol. 2 CMPS: the first operand
/// is the source).
fn cmps(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let size = elem_size(ins)?;
    let a32 = addr32(ins);
    let seg = src_seg(ctx, ins);
    run_string(ctx, ins, Until::Zf, |ctx| {
        let a = ctx.read_mem(seg, index(ctx, ESI, a32), size)?;
        let b = ctx.read_mem(SegReg::Es, index(ctx, EDI, a32), size)?;
        let (_, f) = sub_flags(a, b, 0, size);
        set_status(&mut ctx.vm.cpu, flags::STATUS, f);
        advance(ctx, ESI, a32, size);
        advance(ctx, EDI, a32, size);
        Ok(())
    })
}

/// SCAS: flags of AL/AX/EAX - ES:[DI].
fn scas(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let size = elem_size(ins)?;
    let a32 = addr32(ins);
    run_string(ctx, ins, Until::Zf, |ctx| {
        let b = ctx.read_mem(SegReg::Es, index(ctx, EDI, a32), size)?;
        let a = ctx.reg(accumulator(size));
        let (_, f) = sub_flags(a, b, 0, size);
        set_status(&mut ctx.vm.cpu, flags::STATUS, f);
        advance(ctx, EDI, a32, size);
        Ok(())
    })
}

pub(super) fn register(t: &mut Table) {
    use Mnemonic as M;
    t.set(&[M::Movsb, M::Movsw], movs);
    t.set(&[M::Stosb, M::Stosw, M::Stosd], stos);
    t.set(&[M::Lodsb, M::Lodsw, M::Lodsd], lods);
    t.set(&[M::Cmpsb, M::Cmpsw], cmps);
    t.set(&[M::Scasb, M::Scasw, M::Scasd], scas);
    // MOVSD and CMPSD share their mnemonics with the SSE2 instructions:
    // register the string encodings by code only.
    t.set_codes(&[Code::Movsd_m32_m32], movs);
    t.set_codes(&[Code::Cmpsd_m32_m32], cmps);
}

#[cfg(test)]
mod tests {
    use crate::cpu::{flags, SegReg, Segment, EAX, ECX, EDI, ESI};
    use crate::exception::Fault;
    use crate::interp::data::testkit::{flat32, real, CODE};

    fn put(m: &mut crate::interp::data::testkit::Machine, addr: u32, s: &[u8]) {
        m.vm.mem.write(addr as u64, s);
    }
    fn get(m: &mut crate::interp::data::testkit::Machine, addr: u32, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        m.vm.mem.read(addr as u64, &mut b);
        b
    }

    #[test]
    fn rep_movsb_overlap_backward() {
        // memmove 8 bytes from 0x2000 to 0x2002 going down (DF = 1).
        let mut m = flat32();
        put(&mut m, 0x2000, b"ABCDEFGHij");
        m.vm.cpu.eflags |= flags::DF;
        m.set(ESI, 0x2007);
        m.set(EDI, 0x2009);
        m.set(ECX, 8);
        m.asm(|a| a.rep().movsb());
        m.step();
        assert_eq!(get(&mut m, 0x2000, 10), b"ABABCDEFGH");
        assert_eq!(m.r(ESI), 0x1FFF);
        assert_eq!(m.r(EDI), 0x2001);
        assert_eq!(m.r(ECX), 0);
        assert_eq!(m.vm.cpu.eip, CODE + 2);
    }

    #[test]
    fn rep_movsb_overlap_forward_replicates() {
        // Forward copy onto itself one byte up: each iteration reads the
        // byte the previous one wrote.
        let mut m = flat32();
        put(&mut m, 0x2000, b"ABCDEF");
        m.set(ESI, 0x2000);
        m.set(EDI, 0x2001);
        m.set(ECX, 4);
        m.asm(|a| a.rep().movsb());
        m.step();
        assert_eq!(get(&mut m, 0x2000, 6), b"AAAAAF");
    }

    #[test]
    fn rep_movsd_dwords() {
        let mut m = flat32();
        for i in 0..4u32 {
            m.wr(0x2000 + 4 * i, 4, 0x1111_1111 * (i + 1));
        }
        m.set(ESI, 0x2000);
        m.set(EDI, 0x3000);
        m.set(ECX, 4);
        m.asm(|a| a.rep().movsd());
        m.step();
        assert_eq!(m.rd(0x300C, 4), 0x4444_4444);
        assert_eq!(m.r(ESI), 0x2010);
        assert_eq!(m.r(EDI), 0x3010);
    }

    #[test]
    fn repe_cmpsb_stops_at_difference() {
        let mut m = flat32();
        put(&mut m, 0x2000, b"ABCX");
        put(&mut m, 0x3000, b"ABCY");
        m.set(ESI, 0x2000);
        m.set(EDI, 0x3000);
        m.set(ECX, 10);
        m.asm(|a| a.repe().cmpsb());
        m.step();
        assert_eq!(m.r(ECX), 6);
        assert_eq!(m.r(ESI), 0x2004);
        assert_eq!(m.r(EDI), 0x3004);
        // 'X' - 'Y' = -1: borrow, negative, not zero.
        let f = m.vm.cpu.eflags;
        assert_eq!(f & flags::ZF, 0);
        assert_ne!(f & flags::CF, 0);
        assert_ne!(f & flags::SF, 0);
        assert_eq!(m.vm.cpu.eip, CODE + 2);
    }

    #[test]
    fn repne_scasb_finds_zero() {
        let mut m = flat32();
        put(&mut m, 0x3000, b"abc\0zz");
        m.set(EAX, 0xFFFF_FF00);
        m.set(EDI, 0x3000);
        m.set(ECX, 100);
        m.asm(|a| a.repne().scasb());
        m.step();
        assert_eq!(m.r(ECX), 96);
        assert_eq!(m.r(EDI), 0x3004);
        assert_ne!(m.vm.cpu.eflags & flags::ZF, 0);
    }

    #[test]
    fn rep_with_zero_count_does_nothing() {
        let mut m = flat32();
        m.vm.cpu.seg_mut(SegReg::Es).limit = 0; // would fault if touched
        m.set(EDI, 0x3000);
        m.set(ECX, 0);
        m.vm.cpu.eflags |= flags::ZF;
        m.asm(|a| a.rep().stosd());
        m.step();
        assert_eq!(m.r(EDI), 0x3000);
        assert_eq!(m.r(ECX), 0);
        assert_eq!(m.vm.cpu.eip, CODE + 2);
        // A 16-bit count register: CX = 0 with ECX != 0 does nothing.
        let mut m = real();
        m.set(ECX, 0x0001_0000);
        m.set(EDI, 0x100);
        m.asm(|a| a.rep().stosb());
        m.step();
        assert_eq!(m.r(EDI), 0x100);
        assert_eq!(m.r(ECX), 0x0001_0000);
    }

    #[test]
    fn si_di_wrap_at_64k() {
        // DS base 0x20000, ES base 0x30000; SI = DI = 0xFFFF, CX = 2.
        let mut m = real();
        *m.vm.cpu.seg_mut(SegReg::Ds) = Segment::real(0x2000);
        *m.vm.cpu.seg_mut(SegReg::Es) = Segment::real(0x3000);
        m.wr(0x2FFFF, 1, 0x11);
        m.wr(0x20000, 1, 0x22);
        m.set(ESI, 0x1234_FFFF);
        m.set(EDI, 0x5678_FFFF);
        m.set(ECX, 2);
        m.asm(|a| a.rep().movsb());
        m.step();
        assert_eq!(m.rd(0x3FFFF, 1), 0x11);
        assert_eq!(m.rd(0x30000, 1), 0x22);
        assert_eq!(m.r(ESI), 0x1234_0001);
        assert_eq!(m.r(EDI), 0x5678_0001);
    }

    #[test]
    fn address_size_prefix_uses_esi_edi_ecx() {
        // 16-bit code, 67 F3 A4: rep movsb with ESI/EDI/ECX.
        let mut m = real();
        *m.vm.cpu.seg_mut(SegReg::Ds) = Segment {
            limit: 0xFFFFF,
            ..Segment::real(0)
        };
        *m.vm.cpu.seg_mut(SegReg::Es) = Segment {
            limit: 0xFFFFF,
            ..Segment::real(0)
        };
        m.wr(0x1_2000, 2, 0xBBAA);
        m.set(ESI, 0x1_2000);
        m.set(EDI, 0x1_3000);
        m.set(ECX, 0x2);
        m.bytes(&[0x67, 0xF3, 0xA4]);
        m.step();
        assert_eq!(m.rd(0x1_3000, 2), 0xBBAA);
        assert_eq!(m.r(ESI), 0x1_2002);
        assert_eq!(m.r(ECX), 0);
        assert_eq!(m.vm.cpu.eip, CODE + 3);
    }

    #[test]
    fn address_size_prefix_in_32bit_code_uses_si_di_cx() {
        // 32-bit code, 67 F3 AA: rep stosb with DI/CX; upper halves kept.
        let mut m = flat32();
        m.set(EAX, 0x33);
        m.set(EDI, 0xABCD_3000);
        m.set(ECX, 0x0005_0002);
        m.bytes(&[0x67, 0xF3, 0xAA]);
        m.step();
        assert_eq!(m.rd(0x3000, 4), 0x3333);
        assert_eq!(m.r(EDI), 0xABCD_3002);
        assert_eq!(m.r(ECX), 0x0005_0000);
    }

    #[test]
    fn batch_continuation() {
        let mut m = flat32();
        m.it.rep_batch = 1;
        m.set(EAX, 0x5A);
        m.set(EDI, 0x3000);
        m.set(ECX, 3);
        m.asm(|a| a.rep().stosb());
        m.step();
        assert_eq!((m.r(ECX), m.vm.cpu.eip), (2, CODE));
        m.step();
        assert_eq!((m.r(ECX), m.vm.cpu.eip), (1, CODE));
        m.step();
        assert_eq!((m.r(ECX), m.vm.cpu.eip), (0, CODE + 2));
        assert_eq!(get(&mut m, 0x3000, 4), [0x5A, 0x5A, 0x5A, 0]);
        // REPE CMPS that stops inside a batch ends the instruction.
        let mut m = flat32();
        m.it.rep_batch = 2;
        put(&mut m, 0x2000, b"AAB");
        put(&mut m, 0x3000, b"AAC");
        m.set(ESI, 0x2000);
        m.set(EDI, 0x3000);
        m.set(ECX, 10);
        m.asm(|a| a.repe().cmpsb());
        m.step();
        assert_eq!((m.r(ECX), m.vm.cpu.eip), (8, CODE));
        m.step();
        assert_eq!((m.r(ECX), m.vm.cpu.eip), (7, CODE + 2));
    }

    #[test]
    fn single_step_traps_after_each_iteration() {
        // Real mode, TF = 1, IVT[1] -> 0000:2000: one STOSB iteration,
        // then #DB with the REP instruction's IP stacked.
        let mut m = real();
        m.wr(4, 2, 0x2000);
        m.wr(6, 2, 0);
        m.vm.cpu.eflags |= flags::TF;
        m.set(EDI, 0x3000);
        m.set(ECX, 3);
        m.asm(|a| a.rep().stosb());
        m.step();
        assert_eq!(m.r(ECX), 2);
        assert_eq!(m.vm.cpu.eip, 0x2000);
        assert_eq!(m.rd(0x8000 - 6, 2), CODE, "stacked IP");
    }

    #[test]
    fn fault_mid_rep_is_precise() {
        // ES limit 0x3007: the third dword (at 0x3008) faults.
        let mut m = flat32();
        m.vm.cpu.seg_mut(SegReg::Es).limit = 0x3007;
        m.set(ESI, 0x2000);
        m.set(EDI, 0x3000);
        m.set(ECX, 4);
        m.wr(0x2000, 4, 1);
        m.wr(0x2004, 4, 2);
        m.asm(|a| a.rep().movsd());
        assert_eq!(m.exec(), Err(Fault::gp(0)));
        assert_eq!(m.r(ECX), 2);
        assert_eq!(m.r(ESI), 0x2008);
        assert_eq!(m.r(EDI), 0x3008);
        assert_eq!(m.rd(0x3004, 4), 2);
        assert_eq!(m.vm.cpu.eip, CODE);
    }

    #[test]
    fn source_override_destination_always_es() {
        let mut m = real();
        *m.vm.cpu.seg_mut(SegReg::Fs) = Segment::real(0x4000);
        *m.vm.cpu.seg_mut(SegReg::Es) = Segment::real(0x5000);
        m.wr(0x40010, 2, 0x1234);
        m.set(ESI, 0x10);
        m.set(EDI, 0x20);
        // fs movsw
        m.bytes(&[0x64, 0xA5]);
        m.step();
        assert_eq!(m.rd(0x50020, 2), 0x1234);
        // fs lodsw (reads FS:SI = FS:0x12)
        m.wr(0x40012, 2, 0x7777);
        m.bytes(&[0x64, 0xAD]);
        m.step();
        assert_eq!(m.r(EAX) & 0xFFFF, 0x7777);
        assert_eq!(m.r(ESI), 0x14);
    }

    #[test]
    fn lods_stos_scas_sizes_and_df() {
        let mut m = flat32();
        m.vm.cpu.eflags |= flags::DF;
        m.wr(0x2000, 4, 0xCAFE_BABE);
        m.set(ESI, 0x2000);
        m.set(EDI, 0x3000);
        m.asm(|a| {
            a.lodsd()?;
            a.stosw()?;
            a.scasd()
        });
        m.step();
        assert_eq!(m.r(EAX), 0xCAFE_BABE);
        assert_eq!(m.r(ESI), 0x1FFC);
        m.step();
        assert_eq!(m.rd(0x3000, 4), 0xBABE);
        assert_eq!(m.r(EDI), 0x2FFE);
        // scasd at 0x2FFE: bytes 0, 0, BE, BA -> 0xBABE0000.
        m.step();
        assert_eq!(m.r(EDI), 0x2FFA);
        assert_eq!(m.vm.cpu.eflags & flags::ZF, 0);
    }
}
