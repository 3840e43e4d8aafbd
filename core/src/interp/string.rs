//! String instructions MOVS, STOS, LODS, CMPS, SCAS (byte, word, dword)
//! with REP/REPE/REPNE, 16- or 32-bit addressing (SI/DI/CX or
//! ESI/EDI/ECX), EFLAGS.DF, and a segment override on the source (the
//! destination is always ES, SDM Vol. 2 MOVS).
//!
//! A REP instruction runs at most `ctx.rep_batch` iterations per step and,
//! if not finished, leaves EIP on itself so the next step continues it
//! (interruptible between iterations, as on hardware, SDM Vol. 2 REP).
//! Each iteration commits its memory write, index registers and count
//! before the next starts, so a fault in iteration k leaves the state as
//! after iteration k-1, with EIP at the instruction.
//!
//! INS/OUTS live in `io`; they reuse the `pub(crate)` addressing and
//! iteration helpers here.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use super::data::{accumulator, set_status, sub_flags};
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
    for _ in 0..ctx.rep_batch.max(1) {
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
        set_status(ctx, flags::STATUS, f);
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
        set_status(ctx, flags::STATUS, f);
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
