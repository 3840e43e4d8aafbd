//! The x87 control subset: FNINIT, FNCLEX, FNSTSW, FNSTCW, FLDCW,
//! WAIT/FWAIT, FNSTENV/FLDENV, FNSAVE/FRSTOR (real- and protected-mode
//! layouts, 16- and 32-bit operand size) and FXSAVE/FXRSTOR. The waiting
//! forms (FINIT, FSTSW, ...) decode as WAIT followed by the FN* form.
//!
//! Exact data movement (FLD, FILD, FIST/FISTP, FSTP m80, FXCH, ...) is in
//! `load_store`, FADD/FSUB/FMUL/FDIV and their forms in `arith`,
//! FCOM/FUCOM/FCOMI/FTST/FXAM/FCMOVcc in `compare`, FPREM/FPREM1/
//! FSCALE/FXTRACT/FBLD/FBSTP in `exact`, F2XM1/FYL2X/FYL2XP1/FPTAN/
//! FPATAN/FSIN/FCOS/FSINCOS in `transcend` (accurate to f64, the one
//! place not bit-exact with hardware). Every x87 opcode of the P6 is
//! handled (a test in `exact` checks the table). The registers
//! are kept as raw 80-bit encodings so that save/restore is exact; the
//! tag word is recomputed from them as hardware does (SDM Vol. 1 8.1.7).
//!
//! #NM follows CR0.EM/TS (SDM Vol. 3 2.5, Table 2-2); a pending unmasked
//! exception (FSW.ES) raises #MF at the next waiting instruction when
//! CR0.NE is set. With NE clear the PC's FERR#/IRQ 13 path is not
//! modelled and the instruction proceeds.

pub mod arith;
pub mod compare;
pub mod exact;
pub mod load_store;
pub mod transcend;

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::{Ctx, Table};
use crate::cpu::{cr0, cr4, FpuState};
use crate::exception::Fault;

/// FSW bits (SDM Vol. 1 8.1.3).
pub mod fsw {
    /// Exception flags IE DE ZE OE UE PE.
    pub const EXC: u16 = 0x3F;
    /// Stack fault.
    pub const SF: u16 = 1 << 6;
    /// Exception summary: an unmasked exception is pending.
    pub const ES: u16 = 1 << 7;
    /// TOP of stack (3 bits).
    pub const TOP_SHIFT: u16 = 11;
    pub const TOP_MASK: u16 = 7 << 11;
    /// Busy: mirrors ES on 387 and later.
    pub const B: u16 = 1 << 15;
}

/// FCW bits (SDM Vol. 1 8.1.5).
pub mod fcw {
    /// Exception masks IM DM ZM OM UM PM.
    pub const MASKS: u16 = 0x3F;
    /// Bit 6 is reserved and reads as 1.
    pub const FIXED1: u16 = 1 << 6;
    /// Bits that hold what was written: masks, PC (8-9), RC (10-11), X (12).
    pub const WRITABLE: u16 = 0x1F3F;
    /// The value FNINIT loads: all exceptions masked, 64-bit precision,
    /// round to nearest.
    pub const INIT: u16 = 0x037F;
}

/// Tag values (2 bits per register).
pub mod tag {
    pub const VALID: u16 = 0;
    pub const ZERO: u16 = 1;
    pub const SPECIAL: u16 = 2;
    pub const EMPTY: u16 = 3;
}

/// MXCSR bits this CPU accepts in FXRSTOR (no DAZ): the MXCSR_MASK value
/// FXSAVE stores.
pub const MXCSR_MASK: u32 = 0xFFBF;

/// FXSAVE area size and alignment.
pub const FXSAVE_SIZE: usize = 512;
const FXSAVE_ALIGN: u32 = 16;

pub(super) fn register(t: &mut Table) {
    t.set(&[Mnemonic::Fninit], fninit);
    t.set(&[Mnemonic::Fnclex], fnclex);
    t.set(&[Mnemonic::Fnstsw], fnstsw);
    t.set(&[Mnemonic::Fnstcw], fnstcw);
    t.set(&[Mnemonic::Fldcw], fldcw);
    t.set(&[Mnemonic::Wait], fwait);
    t.set(&[Mnemonic::Fnstenv], fnstenv);
    t.set(&[Mnemonic::Fldenv], fldenv);
    t.set(&[Mnemonic::Fnsave], fnsave);
    t.set(&[Mnemonic::Frstor], frstor);
    t.set(&[Mnemonic::Fxsave], fxsave);
    t.set(&[Mnemonic::Fxrstor], fxrstor);
    load_store::register(t);
    arith::register(t);
    compare::register(t);
    exact::register(t);
    transcend::register(t);
}

// ---- checks ---------------------------------------------------------------

/// #NM for an x87 instruction with CR0.EM or CR0.TS set.
fn check_nm(ctx: &Ctx) -> Result<(), Fault> {
    if ctx.vm.cpu.cr0 & (cr0::EM | cr0::TS) != 0 {
        return Err(Fault::nm());
    }
    Ok(())
}

/// A waiting instruction with an unmasked exception pending: #MF when
/// CR0.NE (SDM Vol. 1 8.6).
fn check_pending(ctx: &Ctx) -> Result<(), Fault> {
    let cpu = &ctx.vm.cpu;
    if cpu.fpu.fsw & fsw::ES != 0 && cpu.cr0 & cr0::NE != 0 {
        return Err(Fault::mf());
    }
    Ok(())
}

// ---- state helpers ----------------------------------------------------------

/// TOP field of the status word.
fn top(f: &FpuState) -> usize {
    ((f.fsw & fsw::TOP_MASK) >> fsw::TOP_SHIFT) as usize
}

/// The tag hardware derives from an 80-bit register's contents.
pub fn classify(r: &[u8; 10]) -> u16 {
    let exp = u16::from_le_bytes([r[8], r[9]]) & 0x7FFF;
    let mut m = [0u8; 8];
    m.copy_from_slice(&r[..8]);
    let mant = u64::from_le_bytes(m);
    match exp {
        0x7FFF => tag::SPECIAL,
        0 if mant == 0 => tag::ZERO,
        0 => tag::SPECIAL,
        _ if mant >> 63 == 0 => tag::SPECIAL,
        _ => tag::VALID,
    }
}

/// Full tag word: empty where marked empty, else from the contents.
pub fn tag_word(f: &FpuState) -> u16 {
    (0..8).fold(0, |w, i| {
        let t = if (f.ftw >> (2 * i)) & 3 == tag::EMPTY {
            tag::EMPTY
        } else {
            classify(&f.regs[i])
        };
        w | t << (2 * i)
    })
}

/// FXSAVE's abridged tag byte: bit i set when physical register i is not
/// empty.
pub fn abridged_tags(f: &FpuState) -> u8 {
    (0..8).fold(0, |b, i| {
        if (f.ftw >> (2 * i)) & 3 == tag::EMPTY {
            b
        } else {
            b | 1 << i
        }
    })
}

/// Recompute ES and B from the exception flags and masks: ES is set
/// exactly when some exception flag is unmasked (SDM Vol. 1 8.1.3.1).
fn update_es(f: &mut FpuState) {
    if f.fsw & fsw::EXC & !f.fcw != 0 {
        f.fsw |= fsw::ES | fsw::B;
    } else {
        f.fsw &= !(fsw::ES | fsw::B);
    }
}

/// FNINIT state (SDM Vol. 2A FINIT/FNINIT).
fn init(f: &mut FpuState) {
    f.fcw = fcw::INIT;
    f.fsw = 0;
    f.ftw = 0xFFFF;
    f.fop = 0;
    f.fip = 0;
    f.fcs = 0;
    f.fdp = 0;
    f.fds = 0;
}

// ---- memory helpers ---------------------------------------------------------

/// Linear address of the memory operand, segment-checked for `len` bytes.
fn operand_lin(ctx: &Ctx, ins: &Instruction, len: usize, write: bool) -> Result<u32, Fault> {
    if ins.op0_kind() != OpKind::Memory {
        return Err(Fault::ud());
    }
    ctx.linear(ctx.mem_seg(ins), ctx.ea(ins), len, write)
}

fn store_bytes(ctx: &mut Ctx, lin: u32, b: &[u8]) -> Result<(), Fault> {
    let acc = ctx.data_access(true);
    ctx.vm.write_lin_bytes(lin, b, acc)
}

fn load_bytes(ctx: &mut Ctx, lin: u32, b: &mut [u8]) -> Result<(), Fault> {
    let acc = ctx.data_access(false);
    ctx.vm.read_lin_bytes(lin, b, acc)
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

// ---- environment images -----------------------------------------------------

/// Layout of an FNSTENV/FNSAVE image.
#[derive(Clone, Copy)]
struct EnvFormat {
    /// 16-bit operand size: 14 bytes; else 28.
    small: bool,
    /// Real-address or V86 mode: linear pointers, no selectors.
    real: bool,
}

impl EnvFormat {
    fn of(ctx: &Ctx, ins: &Instruction) -> Self {
        let cpu = &ctx.vm.cpu;
        EnvFormat {
            small: ins.code().op_code().operand_size() == 16,
            real: cpu.real() || cpu.v86(),
        }
    }
    fn len(self) -> usize {
        if self.small {
            14
        } else {
            28
        }
    }
}

/// The environment image (SDM Vol. 1 8.1.10, Figures 8-9 to 8-12). The
/// reserved upper halves of the 32-bit forms are stored as ones. The
/// real-mode forms hold 20/32-bit linear pointers: selector * 16 + offset.
fn env_image(f: &FpuState, fm: EnvFormat, out: &mut [u8]) {
    let tw = tag_word(f);
    let fop = f.fop & 0x7FF;
    let (rip, rdp) = (
        f.fip.wrapping_add((f.fcs as u32) << 4),
        f.fdp.wrapping_add((f.fds as u32) << 4),
    );
    if fm.small {
        put16(out, 0, f.fcw);
        put16(out, 2, f.fsw);
        put16(out, 4, tw);
        if fm.real {
            put16(out, 6, rip as u16);
            put16(out, 8, ((rip >> 4) & 0xF000) as u16 | fop);
            put16(out, 10, rdp as u16);
            put16(out, 12, ((rdp >> 4) & 0xF000) as u16);
        } else {
            put16(out, 6, f.fip as u16);
            put16(out, 8, f.fcs);
            put16(out, 10, f.fdp as u16);
            put16(out, 12, f.fds);
        }
        return;
    }
    put32(out, 0, 0xFFFF_0000 | f.fcw as u32);
    put32(out, 4, 0xFFFF_0000 | f.fsw as u32);
    put32(out, 8, 0xFFFF_0000 | tw as u32);
    if fm.real {
        put32(out, 12, 0xFFFF_0000 | (rip & 0xFFFF));
        put32(out, 16, ((rip >> 4) & 0x0FFF_F000) | fop as u32);
        put32(out, 20, 0xFFFF_0000 | (rdp & 0xFFFF));
        put32(out, 24, (rdp >> 4) & 0x0FFF_F000);
    } else {
        put32(out, 12, f.fip);
        put32(out, 16, f.fcs as u32 | (fop as u32) << 16);
        put32(out, 20, f.fdp);
        put32(out, 24, 0xFFFF_0000 | f.fds as u32);
    }
}

/// Load an environment image into `f` (registers untouched; the caller
/// normalises tags and ES afterwards). A real-mode image gives linear
/// pointers, kept as offsets with selector 0.
fn load_env(f: &mut FpuState, fm: EnvFormat, b: &[u8]) {
    let (fcw_v, fsw_v, ftw_v);
    if fm.small {
        fcw_v = get16(b, 0);
        fsw_v = get16(b, 2);
        ftw_v = get16(b, 4);
        if fm.real {
            let w8 = get16(b, 8) as u32;
            f.fip = get16(b, 6) as u32 | (w8 & 0xF000) << 4;
            f.fop = (w8 & 0x7FF) as u16;
            f.fdp = get16(b, 10) as u32 | (get16(b, 12) as u32 & 0xF000) << 4;
            f.fcs = 0;
            f.fds = 0;
        } else {
            f.fip = get16(b, 6) as u32;
            f.fcs = get16(b, 8);
            f.fdp = get16(b, 10) as u32;
            f.fds = get16(b, 12);
        }
    } else {
        fcw_v = get16(b, 0);
        fsw_v = get16(b, 4);
        ftw_v = get16(b, 8);
        if fm.real {
            let d16 = get32(b, 16);
            f.fip = (get32(b, 12) & 0xFFFF) | (d16 << 4) & 0xFFFF_0000;
            f.fop = (d16 & 0x7FF) as u16;
            f.fdp = (get32(b, 20) & 0xFFFF) | (get32(b, 24) << 4) & 0xFFFF_0000;
            f.fcs = 0;
            f.fds = 0;
        } else {
            let d16 = get32(b, 16);
            f.fip = get32(b, 12);
            f.fcs = d16 as u16;
            f.fop = ((d16 >> 16) & 0x7FF) as u16;
            f.fdp = get32(b, 20);
            f.fds = get16(b, 24);
        }
    }
    f.fcw = (fcw_v & fcw::WRITABLE) | fcw::FIXED1;
    f.fsw = fsw_v;
    f.ftw = ftw_v;
}

/// After a load: tags other than empty follow the contents, ES/B follow
/// the flags and masks.
fn normalise(f: &mut FpuState) {
    f.ftw = tag_word(f);
    update_es(f);
}

// ---- handlers -----------------------------------------------------------------

/// FNINIT (no pending-exception check).
fn fninit(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    check_nm(ctx)?;
    init(&mut ctx.vm.cpu.fpu);
    Ok(())
}

/// FNCLEX: clear the exception flags, SF, ES and B.
fn fnclex(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    check_nm(ctx)?;
    ctx.vm.cpu.fpu.fsw &= !(fsw::EXC | fsw::SF | fsw::ES | fsw::B);
    Ok(())
}

/// FNSTSW AX / m16.
fn fnstsw(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_nm(ctx)?;
    let v = ctx.vm.cpu.fpu.fsw as u32;
    ctx.write_op(ins, 0, v)
}

/// FNSTCW m16.
fn fnstcw(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_nm(ctx)?;
    let v = ctx.vm.cpu.fpu.fcw as u32;
    ctx.write_op(ins, 0, v)
}

/// FLDCW m16 (waiting). Unmasking a flagged exception makes it pending.
fn fldcw(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_nm(ctx)?;
    check_pending(ctx)?;
    let v = ctx.read_op(ins, 0)? as u16;
    let f = &mut ctx.vm.cpu.fpu;
    f.fcw = (v & fcw::WRITABLE) | fcw::FIXED1;
    update_es(f);
    Ok(())
}

/// WAIT/FWAIT: #NM only when both CR0.MP and CR0.TS are set; then any
/// pending unmasked exception.
fn fwait(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    let c = ctx.vm.cpu.cr0;
    if c & cr0::MP != 0 && c & cr0::TS != 0 {
        return Err(Fault::nm());
    }
    check_pending(ctx)
}

/// FNSTENV m14/28byte: store the environment, then mask all exceptions.
fn fnstenv(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_nm(ctx)?;
    let fm = EnvFormat::of(ctx, ins);
    let lin = operand_lin(ctx, ins, fm.len(), true)?;
    let mut b = [0u8; 28];
    env_image(&ctx.vm.cpu.fpu, fm, &mut b);
    store_bytes(ctx, lin, &b[..fm.len()])?;
    let f = &mut ctx.vm.cpu.fpu;
    f.fcw |= fcw::MASKS;
    update_es(f);
    Ok(())
}

/// FLDENV m14/28byte (waiting).
fn fldenv(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_nm(ctx)?;
    check_pending(ctx)?;
    let fm = EnvFormat::of(ctx, ins);
    let lin = operand_lin(ctx, ins, fm.len(), false)?;
    let mut b = [0u8; 28];
    load_bytes(ctx, lin, &mut b[..fm.len()])?;
    let f = &mut ctx.vm.cpu.fpu;
    load_env(f, fm, &b);
    normalise(f);
    Ok(())
}

/// FNSAVE m94/108byte: environment, then ST(0)..ST(7) as 10-byte
/// registers, then FNINIT.
fn fnsave(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_nm(ctx)?;
    let fm = EnvFormat::of(ctx, ins);
    let len = fm.len() + 80;
    let lin = operand_lin(ctx, ins, len, true)?;
    let mut b = [0u8; 108];
    let f = &ctx.vm.cpu.fpu;
    env_image(f, fm, &mut b);
    let t = top(f);
    for i in 0..8 {
        let at = fm.len() + 10 * i;
        b[at..at + 10].copy_from_slice(&f.regs[(t + i) & 7]);
    }
    store_bytes(ctx, lin, &b[..len])?;
    init(&mut ctx.vm.cpu.fpu);
    Ok(())
}

/// FRSTOR m94/108byte (waiting).
fn frstor(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_nm(ctx)?;
    check_pending(ctx)?;
    let fm = EnvFormat::of(ctx, ins);
    let len = fm.len() + 80;
    let lin = operand_lin(ctx, ins, len, false)?;
    let mut b = [0u8; 108];
    load_bytes(ctx, lin, &mut b[..len])?;
    let f = &mut ctx.vm.cpu.fpu;
    load_env(f, fm, &b);
    let t = top(f);
    for i in 0..8 {
        let at = fm.len() + 10 * i;
        f.regs[(t + i) & 7].copy_from_slice(&b[at..at + 10]);
    }
    normalise(f);
    Ok(())
}

/// FXSAVE/FXRSTOR checks: CR0.EM is #UD, CR0.TS is #NM (SDM Vol. 2A
/// FXSAVE); the operand must be 16-byte aligned (#GP(0)). Returns the
/// linear address of the 512-byte area.
fn fx_operand(ctx: &Ctx, ins: &Instruction, write: bool) -> Result<u32, Fault> {
    let c = ctx.vm.cpu.cr0;
    if c & cr0::EM != 0 {
        return Err(Fault::ud());
    }
    if c & cr0::TS != 0 {
        return Err(Fault::nm());
    }
    if ins.op0_kind() != OpKind::Memory {
        return Err(Fault::ud());
    }
    let seg = ctx.mem_seg(ins);
    let off = ctx.ea(ins);
    if !ctx
        .vm
        .cpu
        .seg(seg)
        .base
        .wrapping_add(off)
        .is_multiple_of(FXSAVE_ALIGN)
    {
        return Err(Fault::gp(0));
    }
    ctx.linear(seg, off, FXSAVE_SIZE, write)
}

/// FXSAVE m512byte (32-bit layout, SDM Vol. 2A Table 3-53). MXCSR,
/// MXCSR_MASK and XMM0-7 are stored only with CR4.OSFXSR; reserved and
/// software-available bytes are left as they are.
fn fxsave(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let lin = fx_operand(ctx, ins, true)?;
    // Check every page of the area for writing before storing any part.
    let acc = ctx.data_access(true);
    let mut p = lin & !0xFFF;
    let end = lin.wrapping_add(FXSAVE_SIZE as u32 - 1) & !0xFFF;
    loop {
        ctx.vm.translate(p.max(lin), acc)?;
        if p == end {
            break;
        }
        p = p.wrapping_add(0x1000);
    }
    let cpu = &ctx.vm.cpu;
    let f = &cpu.fpu;
    let sse = cpu.cr4 & cr4::OSFXSR != 0;
    let mut b = [0u8; 288];
    put16(&mut b, 0, f.fcw);
    put16(&mut b, 2, f.fsw);
    b[4] = abridged_tags(f);
    put16(&mut b, 6, f.fop & 0x7FF);
    put32(&mut b, 8, f.fip);
    put16(&mut b, 12, f.fcs);
    put32(&mut b, 16, f.fdp);
    put16(&mut b, 20, f.fds);
    put32(&mut b, 24, cpu.sse.mxcsr);
    put32(&mut b, 28, MXCSR_MASK);
    let t = top(f);
    for i in 0..8 {
        let at = 32 + 16 * i;
        b[at..at + 10].copy_from_slice(&f.regs[(t + i) & 7]);
    }
    for (i, x) in cpu.sse.xmm.iter().enumerate() {
        let at = 160 + 16 * i;
        b[at..at + 16].copy_from_slice(&x.to_le_bytes());
    }
    if sse {
        store_bytes(ctx, lin, &b)
    } else {
        store_bytes(ctx, lin, &b[..24])?;
        store_bytes(ctx, lin.wrapping_add(32), &b[32..160])
    }
}

/// FXRSTOR m512byte. With CR4.OSFXSR, an MXCSR with bits outside
/// MXCSR_MASK is #GP(0) and nothing is loaded.
fn fxrstor(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let lin = fx_operand(ctx, ins, false)?;
    let mut b = [0u8; FXSAVE_SIZE];
    load_bytes(ctx, lin, &mut b)?;
    let sse = ctx.vm.cpu.cr4 & cr4::OSFXSR != 0;
    let mxcsr = get32(&b, 24);
    if sse && mxcsr & !MXCSR_MASK != 0 {
        return Err(Fault::gp(0));
    }
    let cpu = &mut ctx.vm.cpu;
    let f = &mut cpu.fpu;
    f.fcw = (get16(&b, 0) & fcw::WRITABLE) | fcw::FIXED1;
    f.fsw = get16(&b, 2);
    let ab = b[4];
    f.fop = get16(&b, 6) & 0x7FF;
    f.fip = get32(&b, 8);
    f.fcs = get16(&b, 12);
    f.fdp = get32(&b, 16);
    f.fds = get16(&b, 20);
    let t = top(f);
    for i in 0..8 {
        let at = 32 + 16 * i;
        f.regs[(t + i) & 7].copy_from_slice(&b[at..at + 10]);
    }
    f.ftw = (0..8).fold(0, |w, i| {
        let tg = if ab & (1 << i) == 0 {
            tag::EMPTY
        } else {
            tag::VALID
        };
        w | tg << (2 * i)
    });
    normalise(f);
    if sse {
        cpu.sse.mxcsr = mxcsr;
        for (i, x) in cpu.sse.xmm.iter_mut().enumerate() {
            let at = 160 + 16 * i;
            let mut v = [0u8; 16];
            v.copy_from_slice(&b[at..at + 16]);
            *x = u128::from_le_bytes(v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::system::testutil::*;
    use super::*;
    use crate::cpu::{EAX, EBX};
    use crate::vm::Vm;
    use iced_x86::code_asm::*;

    /// 1.0 as an 80-bit extended value.
    const ONE: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 0x80, 0xFF, 0x3F];
    /// -2.5: mantissa 0xA000..., exponent 0x4000, sign.
    const M2_5: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 0xA0, 0x00, 0xC0];

    /// An FPU with two values pushed: ST(0) = -2.5 in R6, ST(1) = 1.0
    /// in R7 (TOP = 6), a zero in R5 marked empty.
    fn loaded(vm: &mut Vm) {
        let f = &mut vm.cpu.fpu;
        f.fcw = 0x027F;
        f.fsw = 6 << 11 | 0x0001 | 0x0100;
        f.regs[7] = ONE;
        f.regs[6] = M2_5;
        // R7, R6 valid; others empty.
        f.ftw = 0x0FFF;
        f.fip = 0x0012_3456;
        f.fcs = 0x08;
        f.fop = 0x1D9;
        f.fdp = 0x0065_4321;
        f.fds = 0x10;
    }

    #[test]
    fn fninit_fnstsw_fnstcw_fldcw() {
        let mut vm = flat0();
        loaded(&mut vm);
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Ok(()));
        let f = vm.cpu.fpu;
        assert_eq!(
            (f.fcw, f.fsw, f.ftw, f.fip, f.fop),
            (0x037F, 0, 0xFFFF, 0, 0)
        );
        vm.cpu.set_reg32(EAX, 0xFFFF_FFFF);
        vm.cpu.fpu.fsw = 0x3800;
        assert_eq!(run(&mut vm, 32, |a| a.fnstsw(ax)), Ok(()));
        assert_eq!(vm.cpu.reg32(EAX), 0xFFFF_3800);
        assert_eq!(run(&mut vm, 32, |a| a.fnstcw(word_ptr(0x600))), Ok(()));
        assert_eq!(vm.mem.read_u16(0x600), 0x037F);
        // FLDCW: bit 6 reads 1, bits 13-15 0.
        vm.mem.write_u16(0x600, 0xE03F & !0x40);
        assert_eq!(run(&mut vm, 32, |a| a.fldcw(word_ptr(0x600))), Ok(()));
        assert_eq!(vm.cpu.fpu.fcw, 0x007F);
        // Unmasking a flagged exception (ZE) sets ES and B.
        vm.cpu.fpu.fsw = 0x0004;
        vm.mem.write_u16(0x600, 0x037B);
        assert_eq!(run(&mut vm, 32, |a| a.fldcw(word_ptr(0x600))), Ok(()));
        assert_eq!(vm.cpu.fpu.fsw, 0x8084);
        // FNCLEX clears the flags, ES and B, keeps condition codes/TOP.
        vm.cpu.fpu.fsw |= 0x4700;
        assert_eq!(run(&mut vm, 32, |a| a.fnclex()), Ok(()));
        assert_eq!(vm.cpu.fpu.fsw, 0x4700);
    }

    #[test]
    fn nm_rules() {
        let mut vm = flat0();
        vm.cpu.cr0 |= cr0::EM;
        assert_eq!(run(&mut vm, 32, |a| a.fninit()), Err(Fault::nm()));
        // WAIT ignores EM.
        assert_eq!(run(&mut vm, 32, |a| a.wait()), Ok(()));
        vm.cpu.cr0 = cr0::PE | cr0::ET | cr0::TS;
        assert_eq!(run(&mut vm, 32, |a| a.fnstsw(ax)), Err(Fault::nm()));
        // WAIT with TS but not MP: no fault; with both: #NM.
        assert_eq!(run(&mut vm, 32, |a| a.wait()), Ok(()));
        vm.cpu.cr0 |= cr0::MP;
        assert_eq!(run(&mut vm, 32, |a| a.wait()), Err(Fault::nm()));
        // FXSAVE: TS is #NM, EM is #UD.
        assert_eq!(run(&mut vm, 32, |a| a.fxsave(ptr(0x800))), Err(Fault::nm()));
        vm.cpu.cr0 |= cr0::EM;
        assert_eq!(run(&mut vm, 32, |a| a.fxsave(ptr(0x800))), Err(Fault::ud()));
    }

    #[test]
    fn pending_exception_raises_mf_with_ne() {
        let mut vm = flat0();
        vm.cpu.fpu.fsw = 0x8081;
        assert_eq!(run(&mut vm, 32, |a| a.wait()), Ok(()));
        vm.cpu.cr0 |= cr0::NE;
        assert_eq!(run(&mut vm, 32, |a| a.wait()), Err(Fault::mf()));
        assert_eq!(
            run(&mut vm, 32, |a| a.fldcw(word_ptr(0x600))),
            Err(Fault::mf())
        );
        // The non-waiting forms do not check.
        assert_eq!(run(&mut vm, 32, |a| a.fnstsw(ax)), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.fnclex()), Ok(()));
        assert_eq!(run(&mut vm, 32, |a| a.wait()), Ok(()));
    }

    #[test]
    fn fnsave_protected_32_layout_and_frstor_round_trip() {
        let mut vm = flat0();
        loaded(&mut vm);
        let saved = vm.cpu.fpu;
        assert_eq!(run(&mut vm, 32, |a| a.fnsave(ptr(0x700))), Ok(()));
        // FNSAVE re-initialised.
        assert_eq!(vm.cpu.fpu.fcw, 0x037F);
        assert_eq!(vm.cpu.fpu.ftw, 0xFFFF);
        let m = |vm: &mut Vm, a: u32| vm.mem.read_u32(a as u64);
        assert_eq!(m(&mut vm, 0x700), 0xFFFF_027F);
        assert_eq!(m(&mut vm, 0x704), 0xFFFF_3101);
        // Tags: R7 valid (00), R6 valid (00), R5..R0 empty.
        assert_eq!(m(&mut vm, 0x708), 0xFFFF_0FFF);
        assert_eq!(m(&mut vm, 0x70C), 0x0012_3456);
        assert_eq!(m(&mut vm, 0x710), 0x01D9_0008);
        assert_eq!(m(&mut vm, 0x714), 0x0065_4321);
        assert_eq!(m(&mut vm, 0x718), 0xFFFF_0010);
        // ST(0) = R6 = -2.5 at byte 28, ST(1) = R7 = 1.0 at byte 38.
        let mut st = [0u8; 20];
        vm.mem.read(0x700 + 28, &mut st);
        assert_eq!(st[..10], M2_5);
        assert_eq!(st[10..], ONE);
        assert_eq!(run(&mut vm, 32, |a| a.frstor(ptr(0x700))), Ok(()));
        assert_eq!(vm.cpu.fpu, saved);
    }

    #[test]
    fn fnsave_real_16_layout() {
        let mut vm = real();
        loaded(&mut vm);
        vm.cpu.fpu.fip = 0x000F_1234;
        vm.cpu.fpu.fdp = 0x0008_9ABC;
        // Linear pointers: 0x08 * 16 + 0xF1234 = 0xF12B4 and
        // 0x10 * 16 + 0x89ABC = 0x89BBC.
        let saved = vm.cpu.fpu;
        // 16-bit operand size in real mode: 94 bytes, real layout.
        assert_eq!(run(&mut vm, 16, |a| a.fnsave(ptr(0x700))), Ok(()));
        let w = |vm: &mut Vm, a: u32| vm.mem.read_u16(a as u64);
        assert_eq!(w(&mut vm, 0x700), 0x027F);
        assert_eq!(w(&mut vm, 0x702), 0x3101);
        assert_eq!(w(&mut vm, 0x704), 0x0FFF);
        assert_eq!(w(&mut vm, 0x706), 0x12B4);
        assert_eq!(w(&mut vm, 0x708), 0xF1D9);
        assert_eq!(w(&mut vm, 0x70A), 0x9BBC);
        assert_eq!(w(&mut vm, 0x70C), 0x8000);
        let mut st = [0u8; 10];
        vm.mem.read(0x700 + 14, &mut st);
        assert_eq!(st, M2_5);
        assert_eq!(run(&mut vm, 16, |a| a.frstor(ptr(0x700))), Ok(()));
        // Selectors are folded into the real-mode image's pointers.
        let mut want = saved;
        want.fcs = 0;
        want.fds = 0;
        want.fip = 0xF12B4;
        want.fdp = 0x89BBC;
        assert_eq!(vm.cpu.fpu, want);
    }

    #[test]
    fn fnstenv_masks_exceptions_and_fldenv_recomputes_tags() {
        let mut vm = flat0();
        loaded(&mut vm);
        assert_eq!(run(&mut vm, 32, |a| a.fnstenv(ptr(0x900))), Ok(()));
        assert_eq!(vm.cpu.fpu.fcw, 0x027F);
        vm.cpu.fpu.fcw = 0x0270;
        assert_eq!(run(&mut vm, 32, |a| a.fnstenv(ptr(0x900))), Ok(()));
        assert_eq!(vm.cpu.fpu.fcw, 0x027F);
        assert_eq!(vm.mem.read_u16(0x900), 0x0270);
        // Load a tag word claiming R7 is "zero" and R6 "special": the
        // contents decide (both valid); empties stay empty.
        vm.mem.write_u16(0x908, 0x9FFF);
        assert_eq!(run(&mut vm, 32, |a| a.fldenv(ptr(0x900))), Ok(()));
        assert_eq!(vm.cpu.fpu.ftw, 0x0FFF);
        // FCW 0x0270 unmasks IE, which FSW has flagged: ES and B.
        assert_eq!(vm.cpu.fpu.fsw, 0xB181);
    }

    #[test]
    fn tag_classes() {
        assert_eq!(classify(&ONE), tag::VALID);
        assert_eq!(classify(&[0; 10]), tag::ZERO);
        // Denormal, infinity/NaN, unnormal.
        assert_eq!(classify(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]), tag::SPECIAL);
        assert_eq!(
            classify(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0xFF, 0x7F]),
            tag::SPECIAL
        );
        assert_eq!(
            classify(&[0, 0, 0, 0, 0, 0, 0, 0x40, 0xFF, 0x3F]),
            tag::SPECIAL
        );
    }

    #[test]
    fn fxsave_alignment_layout_and_round_trip() {
        let mut vm = flat0();
        loaded(&mut vm);
        vm.cpu.sse.mxcsr = 0x1F80;
        vm.cpu.sse.xmm[3] = 0x0011_2233_4455_6677_8899_AABB_CCDD_EEFF;
        vm.cpu.set_reg32(EBX, 0x1008);
        assert_eq!(run(&mut vm, 32, |a| a.fxsave(ptr(ebx))), Err(Fault::gp(0)));
        // Without OSFXSR: MXCSR and XMM bytes untouched.
        for i in 0..512 {
            vm.mem.write_u8(0x2000 + i, 0xEE);
        }
        assert_eq!(run(&mut vm, 32, |a| a.fxsave(ptr(0x2000))), Ok(()));
        assert_eq!(vm.mem.read_u16(0x2000), 0x027F);
        assert_eq!(vm.mem.read_u16(0x2002), 0x3101);
        // Abridged tags: R6 and R7 in use.
        assert_eq!(vm.mem.read_u8(0x2004), 0xC0);
        assert_eq!(vm.mem.read_u8(0x2005), 0);
        assert_eq!(vm.mem.read_u16(0x2006), 0x1D9);
        assert_eq!(vm.mem.read_u32(0x2008), 0x0012_3456);
        assert_eq!(vm.mem.read_u32(0x2010), 0x0065_4321);
        assert_eq!(vm.mem.read_u32(0x2018), 0xEEEE_EEEE);
        let mut st = [0u8; 16];
        vm.mem.read(0x2020, &mut st);
        assert_eq!(st[..10], M2_5);
        assert_eq!(st[10..], [0; 6]);
        assert_eq!(vm.mem.read_u32(0x20A0), 0xEEEE_EEEE);
        // FXSAVE does not reinitialise; FXRSTOR restores.
        let saved = vm.cpu.fpu;
        vm.cpu.fpu = FpuState::default();
        assert_eq!(run(&mut vm, 32, |a| a.fxrstor(ptr(0x2000))), Ok(()));
        assert_eq!(vm.cpu.fpu, saved);
        // With OSFXSR: MXCSR, mask and XMM stored.
        vm.cpu.cr4 |= cr4::OSFXSR;
        assert_eq!(run(&mut vm, 32, |a| a.fxsave(ptr(0x2000))), Ok(()));
        assert_eq!(vm.mem.read_u32(0x2018), 0x1F80);
        assert_eq!(vm.mem.read_u32(0x201C), 0xFFBF);
        assert_eq!(vm.mem.read_u64(0x20A0 + 0x30), 0x8899_AABB_CCDD_EEFF);
        // A reserved MXCSR bit (DAZ, bit 6) on restore: #GP(0).
        vm.mem.write_u32(0x2018, 0x1FC0);
        vm.cpu.sse.xmm[3] = 0;
        assert_eq!(
            run(&mut vm, 32, |a| a.fxrstor(ptr(0x2000))),
            Err(Fault::gp(0))
        );
        assert_eq!(vm.cpu.sse.xmm[3], 0);
        vm.mem.write_u32(0x2018, 0x1F81);
        assert_eq!(run(&mut vm, 32, |a| a.fxrstor(ptr(0x2000))), Ok(()));
        assert_eq!(vm.cpu.sse.mxcsr, 0x1F81);
        assert_eq!(vm.cpu.sse.xmm[3], 0x0011_2233_4455_6677_8899_AABB_CCDD_EEFF);
    }
}
