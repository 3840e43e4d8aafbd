//! Data movement and small state instructions: MOV between GPRs, memory and
//! immediates (MOV to or from segment, control and debug registers belongs
//! to the segment and system families), MOVZX/MOVSX, LEA, XCHG, CMPXCHG,
//! CMPXCHG8B, XADD, BSWAP, CMOVcc, SETcc, PUSH/POP of GPRs, memory,
//! immediates (and PUSH of a segment register), PUSHA/POPA, ENTER/LEAVE,
//! LAHF/SAHF, CBW/CWDE/CWD/CDQ, XLAT, the NOPs and PAUSE, the flag
//! instructions CLC/STC/CMC/CLD/STD, and BOUND.
//!
//! POP of a segment register is a segment load and is not here; it raises
//! #UD until the segment family registers it by `Code`.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::control::cond;
use super::operand::{mask, sext, sign_bit};
use super::{Ctx, Table};
use crate::cpu::{flags, SegReg, EAX, EBP, EBX, ECX, EDI, EDX, ESI, ESP};
use crate::exception::{vector, Fault};

// ---- status flags ------------------------------------------------------
//
// A private copy of the ADD/SUB flag rules (SDM Vol. 1 3.4.3.1) until the
// shared `interp::flags` helpers land on main; same signatures, so the
// switch is an import change.

/// PF of the low byte of `r`, SF and ZF of a `size`-byte result.
fn szp(r: u32, size: usize) -> u32 {
    let r = r & mask(size);
    let mut f = 0;
    if (r as u8).count_ones() % 2 == 0 {
        f |= flags::PF;
    }
    if r == 0 {
        f |= flags::ZF;
    }
    if r & sign_bit(size) != 0 {
        f |= flags::SF;
    }
    f
}

/// `a + b + carry_in` at `size` bytes: result and the six status flags.
pub(crate) fn add_flags(a: u32, b: u32, carry_in: u32, size: usize) -> (u32, u32) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let wide = a as u64 + b as u64 + (carry_in & 1) as u64;
    let r = wide as u32 & m;
    let mut f = szp(r, size);
    if wide > m as u64 {
        f |= flags::CF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= flags::AF;
    }
    if (a ^ r) & (b ^ r) & sign_bit(size) != 0 {
        f |= flags::OF;
    }
    (r, f)
}

/// `a - b - borrow_in` at `size` bytes: result and the six status flags.
pub(crate) fn sub_flags(a: u32, b: u32, borrow_in: u32, size: usize) -> (u32, u32) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let sub = b as u64 + (borrow_in & 1) as u64;
    let r = (a as u64).wrapping_sub(sub) as u32 & m;
    let mut f = szp(r, size);
    if (a as u64) < sub {
        f |= flags::CF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= flags::AF;
    }
    if (a ^ b) & (a ^ r) & sign_bit(size) != 0 {
        f |= flags::OF;
    }
    (r, f)
}

/// Merge the status bits of `value` under `m` into EFLAGS.
pub(crate) fn set_status(ctx: &mut Ctx, m: u32, value: u32) {
    let m = m & flags::STATUS;
    ctx.vm.cpu.eflags = (ctx.vm.cpu.eflags & !m) | (value & m);
}

// ---- shared small helpers ----------------------------------------------

/// The accumulator (AL, AX, EAX) of a `size`-byte operation.
pub(crate) fn accumulator(size: usize) -> Register {
    match size {
        1 => Register::AL,
        2 => Register::AX,
        _ => Register::EAX,
    }
}

/// LOCK is legal only on the read-modify-write instructions with a memory
/// destination (SDM Vol. 2 LOCK); anything else is #UD. iced-x86 already
/// rejects most illegal uses; this keeps the rule local and explicit.
fn check_lock(ins: &Instruction, lockable: bool) -> Result<(), Fault> {
    if ins.has_lock_prefix() && !(lockable && ins.op0_kind() == OpKind::Memory) {
        return Err(Fault::ud());
    }
    Ok(())
}

/// A stack offset wrapped to the stack size (SS.B).
#[inline]
pub(crate) fn stack_wrap(ctx: &Ctx, off: u32) -> u32 {
    if ctx.vm.cpu.stack32() {
        off
    } else {
        off & 0xFFFF
    }
}

/// Write the low `size` bytes of `v` into GPR `r` (2 = the 16-bit half).
fn set_gpr(ctx: &mut Ctx, r: usize, size: usize, v: u32) {
    if size == 2 {
        ctx.vm.cpu.set_reg16(r, v as u16);
    } else {
        ctx.vm.cpu.set_reg32(r, v);
    }
}

fn is_special(r: Register) -> bool {
    r.is_segment_register() || r.is_cr() || r.is_dr() || r.is_tr()
}

// ---- MOV and friends ---------------------------------------------------

/// MOV r/m, r / r, r/m / r/m, imm / moffs forms.
fn mov(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    for n in 0..ins.op_count() {
        if ins.op_kind(n) == OpKind::Register && is_special(ins.op_register(n)) {
            // Segment / control / debug register moves are registered by
            // their owners per Code; reaching here means none did.
            return Err(Fault::ud());
        }
    }
    let v = ctx.read_op(ins, 1)?;
    ctx.write_op(ins, 0, v)
}

/// MOVZX / MOVSX: widen a byte or word source into the destination.
fn movx(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let size = ctx.op_size(ins, 1);
    let v = ctx.read_op(ins, 1)?;
    let v = if ins.mnemonic() == Mnemonic::Movsx {
        sext(v, size)
    } else {
        v & mask(size)
    };
    ctx.set_reg(ins.op0_register(), v);
    Ok(())
}

/// LEA: the effective address at the address size, then truncated or
/// zero-extended to the operand size (SDM Vol. 2 LEA, Table 3-54).
fn lea(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    if ins.op1_kind() != OpKind::Memory {
        return Err(Fault::ud());
    }
    let ea = ctx.ea(ins);
    ctx.set_reg(ins.op0_register(), ea);
    Ok(())
}

/// XCHG: swap; with a memory operand the access is locked (SDM Vol. 2
/// XCHG), which for one CPU is just an atomic read-modify-write.
fn xchg(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, true)?;
    // A memory operand is always operand 0 in iced-x86's forms.
    let b = ctx.read_op(ins, 1)?;
    let a = ctx.read_rmw(ins)?;
    ctx.write_op(ins, 0, b)?;
    ctx.write_op(ins, 1, a)
}

/// CMPXCHG r/m, r: compare the accumulator with the destination (flags as
/// CMP acc, dest); equal: dest = src; else acc = dest. The destination is
/// always written (with its own value on failure), SDM Vol. 2 CMPXCHG.
fn cmpxchg(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, true)?;
    let size = ctx.op_size(ins, 0);
    let dest = ctx.read_rmw(ins)?;
    let src = ctx.read_op(ins, 1)?;
    let acc_reg = accumulator(size);
    let acc = ctx.reg(acc_reg);
    let (_, f) = sub_flags(acc, dest, 0, size);
    if f & flags::ZF != 0 {
        ctx.write_op(ins, 0, src)?;
    } else {
        ctx.write_op(ins, 0, dest)?;
        ctx.set_reg(acc_reg, dest);
    }
    set_status(ctx, flags::STATUS, f);
    Ok(())
}

/// CMPXCHG8B m64: compare EDX:EAX with m64; equal: ZF=1, m64 = ECX:EBX;
/// else ZF=0, EDX:EAX = m64 (m64 written back). Register operand: #UD.
fn cmpxchg8b(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, true)?;
    if ins.op0_kind() != OpKind::Memory {
        return Err(Fault::ud());
    }
    let seg = ctx.mem_seg(ins);
    let off = ctx.ea(ins);
    ctx.check_write(seg, off, 8)?;
    let m = ctx.read_mem64(seg, off)?;
    let cpu = &ctx.vm.cpu;
    let edx_eax = (cpu.reg32(EDX) as u64) << 32 | cpu.reg32(EAX) as u64;
    let ecx_ebx = (cpu.reg32(ECX) as u64) << 32 | cpu.reg32(EBX) as u64;
    if m == edx_eax {
        ctx.write_mem64(seg, off, ecx_ebx)?;
        ctx.vm.cpu.eflags |= flags::ZF;
    } else {
        ctx.write_mem64(seg, off, m)?;
        ctx.vm.cpu.set_reg32(EAX, m as u32);
        ctx.vm.cpu.set_reg32(EDX, (m >> 32) as u32);
        ctx.vm.cpu.eflags &= !flags::ZF;
    }
    Ok(())
}

/// XADD r/m, r: TEMP = SRC + DEST; SRC = DEST; DEST = TEMP; flags of ADD.
fn xadd(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, true)?;
    let size = ctx.op_size(ins, 0);
    let dest = ctx.read_rmw(ins)?;
    let src = ctx.read_op(ins, 1)?;
    let (r, f) = add_flags(dest, src, 0, size);
    if ins.op0_kind() == OpKind::Memory {
        ctx.write_op(ins, 0, r)?;
        ctx.set_reg(ins.op1_register(), dest);
    } else {
        // Register form: the destination is written last, so XADD r, r
        // with one register leaves the sum.
        ctx.set_reg(ins.op1_register(), dest);
        ctx.set_reg(ins.op0_register(), r);
    }
    set_status(ctx, flags::STATUS, f);
    Ok(())
}

/// BSWAP r32. With a 16-bit operand the SDM leaves the result undefined;
/// Intel hardware leaves zero in the low 16 bits, and so do we.
fn bswap(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let r = ins.op0_register();
    let v = ctx.reg(r);
    let v = if r.size() == 4 { v.swap_bytes() } else { 0 };
    ctx.set_reg(r, v);
    Ok(())
}

/// CMOVcc: the source is read (and may fault) whatever the condition; a
/// false condition writes nothing (SDM Vol. 2 CMOVcc).
fn cmov(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let v = ctx.read_op(ins, 1)?;
    if cond(ctx.vm.cpu.eflags, ins.condition_code()) {
        ctx.set_reg(ins.op0_register(), v);
    }
    Ok(())
}

/// SETcc r/m8.
fn setcc(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let v = cond(ctx.vm.cpu.eflags, ins.condition_code()) as u32;
    ctx.write_op(ins, 0, v)
}

// ---- stack -------------------------------------------------------------

/// PUSH r / m / imm / Sreg. The value is read before the stack pointer
/// moves, so PUSH ESP pushes the old ESP and PUSH [ESP+n] addresses with
/// the old ESP (SDM Vol. 2 PUSH).
fn push(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    match ins.op0_kind() {
        OpKind::Register if ins.op0_register().is_segment_register() => {
            // A 32-bit push of a segment register moves ESP by 4 but
            // writes only the 16-bit selector, as recent Intel processors
            // do (SDM Vol. 2 PUSH, Operation note).
            let size = ctx.osize(ins);
            let sel = ctx.reg(ins.op0_register());
            let sp = stack_wrap(ctx, ctx.vm.cpu.sp().wrapping_sub(size as u32));
            ctx.write_mem(SegReg::Ss, sp, 2, sel)?;
            ctx.vm.cpu.set_sp(sp);
            Ok(())
        }
        _ => {
            let size = ctx.op_size(ins, 0);
            let v = ctx.read_op(ins, 0)?;
            ctx.push(v, size)
        }
    }
}

/// POP r / m. POP ESP loads the popped value into ESP; POP m computes the
/// address with the incremented ESP and leaves ESP unchanged if the write
/// faults (SDM Vol. 2 POP).
fn pop(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    match ins.op0_kind() {
        OpKind::Register => {
            let r = ins.op0_register();
            if r.is_segment_register() {
                // A segment load: the segment family's (by Code).
                return Err(Fault::ud());
            }
            let v = ctx.pop(r.size())?;
            ctx.set_reg(r, v);
            Ok(())
        }
        OpKind::Memory => {
            let size = ins.memory_size().size();
            let v = ctx.peek(0, size)?;
            let old = ctx.vm.cpu.gpr[ESP];
            let sp = ctx.vm.cpu.sp().wrapping_add(size as u32);
            ctx.vm.cpu.set_sp(sp);
            let r = ctx.write_op(ins, 0, v);
            if r.is_err() {
                ctx.vm.cpu.gpr[ESP] = old;
            }
            r
        }
        _ => Err(Fault::ud()),
    }
}

/// PUSHA / PUSHAD: AX CX DX BX (original SP) BP SI DI. Every slot is
/// checked before anything is written, so a fault changes nothing.
fn pusha(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let size = ctx.osize(ins);
    let cpu = &ctx.vm.cpu;
    let sp0 = cpu.sp();
    let vals = [EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI].map(|r| cpu.reg32(r) & mask(size));
    let slot = |ctx: &Ctx, k: usize| stack_wrap(ctx, sp0.wrapping_sub((k * size) as u32));
    for k in 1..=8 {
        ctx.check_write(SegReg::Ss, slot(ctx, k), size)?;
    }
    for (k, &v) in vals.iter().enumerate() {
        ctx.write_mem(SegReg::Ss, slot(ctx, k + 1), size, v)?;
    }
    ctx.vm.cpu.set_sp(sp0.wrapping_sub(8 * size as u32));
    Ok(())
}

/// POPA / POPAD: DI SI BP (skip SP) BX DX CX AX; all read before any
/// register changes.
fn popa(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let size = ctx.osize(ins);
    let mut vals = [0u32; 8];
    for (k, v) in vals.iter_mut().enumerate() {
        *v = ctx.peek((k * size) as u32, size)?;
    }
    let sp0 = ctx.vm.cpu.sp();
    for (k, r) in [EDI, ESI, EBP, ESP, EBX, EDX, ECX, EAX]
        .into_iter()
        .enumerate()
    {
        if r != ESP {
            set_gpr(ctx, r, size, vals[k]);
        }
    }
    ctx.vm.cpu.set_sp(sp0.wrapping_add(8 * size as u32));
    Ok(())
}

/// ENTER imm16, imm8 (SDM Vol. 2 ENTER): push (E)BP, copy level-1 frame
/// pointers from the old frame, push the new frame pointer, allocate.
/// Every stack slot and the final stack pointer are checked for writing
/// before the first write (hardware probes the final SS:ESP too), so only
/// a fault reading the old frame can leave written stack bytes below ESP,
/// and never changes a register.
fn enter(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let size = ctx.osize(ins);
    let alloc = ins.immediate16() as u32;
    let level = (ins.immediate8_2nd() % 32) as usize;
    let sz = size as u32;
    let cpu = &ctx.vm.cpu;
    let sp0 = cpu.sp();
    let esp_reg = cpu.reg32(ESP);
    let ebp_reg = cpu.reg32(EBP);
    // Slots: old BP, level-1 copied frame pointers, the new frame pointer.
    let slots = if level == 0 { 1 } else { level + 1 };
    let slot = |ctx: &Ctx, k: usize| stack_wrap(ctx, sp0.wrapping_sub(k as u32 * sz));
    for k in 1..=slots {
        ctx.check_write(SegReg::Ss, slot(ctx, k), size)?;
    }
    let final_sp = stack_wrap(ctx, sp0.wrapping_sub(slots as u32 * sz).wrapping_sub(alloc));
    ctx.check_write(SegReg::Ss, final_sp, size)?;

    // FrameTemp: the stack pointer register after pushing BP.
    let after_push = sp0.wrapping_sub(sz);
    let frame_temp = if ctx.vm.cpu.stack32() {
        after_push
    } else {
        (esp_reg & 0xFFFF_0000) | (after_push & 0xFFFF)
    };
    ctx.write_mem(SegReg::Ss, slot(ctx, 1), size, ebp_reg & mask(size))?;
    if level > 0 {
        let mut bp = stack_wrap(ctx, ebp_reg);
        for k in 2..=level {
            bp = stack_wrap(ctx, bp.wrapping_sub(sz));
            let v = ctx.read_mem(SegReg::Ss, bp, size)?;
            ctx.write_mem(SegReg::Ss, slot(ctx, k), size, v)?;
        }
        ctx.write_mem(SegReg::Ss, slot(ctx, slots), size, frame_temp & mask(size))?;
    }
    set_gpr(ctx, EBP, size, frame_temp);
    ctx.vm.cpu.set_sp(final_sp);
    Ok(())
}

/// LEAVE: SP = BP (at the stack size), then pop BP (at the operand size).
fn leave(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let size = ctx.osize(ins);
    let bp = stack_wrap(ctx, ctx.vm.cpu.reg32(EBP));
    let v = ctx.read_mem(SegReg::Ss, bp, size)?;
    ctx.vm.cpu.set_sp(bp.wrapping_add(size as u32));
    set_gpr(ctx, EBP, size, v);
    Ok(())
}

// ---- flags and conversions ---------------------------------------------

/// The flags LAHF/SAHF move: SF ZF AF PF CF (AH bits 7 6 4 2 0).
const AH_FLAGS: u32 = flags::SF | flags::ZF | flags::AF | flags::PF | flags::CF;

fn lahf(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let ah = (ctx.vm.cpu.eflags & AH_FLAGS) | flags::FIXED1;
    ctx.set_reg(Register::AH, ah);
    Ok(())
}

fn sahf(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let ah = ctx.reg(Register::AH);
    ctx.vm.cpu.eflags = (ctx.vm.cpu.eflags & !AH_FLAGS) | (ah & AH_FLAGS);
    Ok(())
}

/// CBW / CWDE / CWD / CDQ.
fn convert(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    match ins.mnemonic() {
        Mnemonic::Cbw => {
            let v = sext(ctx.reg(Register::AL), 1);
            ctx.set_reg(Register::AX, v);
        }
        Mnemonic::Cwde => {
            let v = sext(ctx.reg(Register::AX), 2);
            ctx.set_reg(Register::EAX, v);
        }
        Mnemonic::Cwd => {
            let v = if ctx.reg(Register::AX) & 0x8000 != 0 {
                0xFFFF
            } else {
                0
            };
            ctx.set_reg(Register::DX, v);
        }
        _ => {
            let v = if ctx.reg(Register::EAX) & 0x8000_0000 != 0 {
                0xFFFF_FFFF
            } else {
                0
            };
            ctx.set_reg(Register::EDX, v);
        }
    }
    Ok(())
}

/// XLAT: AL = [seg:(E)BX + AL] (iced-x86 gives the operand as base BX or
/// EBX with index AL, so the ordinary effective address is right).
fn xlat(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let v = ctx.read_op(ins, 0)?;
    ctx.set_reg(Register::AL, v);
    Ok(())
}

/// NOP, multi-byte NOP (0F 1F /0 makes no memory access), the reserved
/// NOP space 0F 19-1F, PAUSE.
fn nop(_ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)
}

/// CLC STC CMC CLD STD.
fn flag_op(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let f = &mut ctx.vm.cpu.eflags;
    match ins.mnemonic() {
        Mnemonic::Clc => *f &= !flags::CF,
        Mnemonic::Stc => *f |= flags::CF,
        Mnemonic::Cmc => *f ^= flags::CF,
        Mnemonic::Cld => *f &= !flags::DF,
        _ => *f |= flags::DF,
    }
    Ok(())
}

/// BOUND r, m: signed index against [lower, upper] at m and m+size;
/// outside is #BR, a fault (SDM Vol. 2 BOUND). Register operand: #UD.
fn bound(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    if ins.op1_kind() != OpKind::Memory {
        return Err(Fault::ud());
    }
    let r = ins.op0_register();
    let size = r.size();
    let seg = ctx.mem_seg(ins);
    let off = ctx.ea(ins);
    let lower = sext(ctx.read_mem(seg, off, size)?, size) as i32;
    let upper = sext(
        ctx.read_mem(seg, off.wrapping_add(size as u32), size)?,
        size,
    ) as i32;
    let idx = sext(ctx.reg(r), size) as i32;
    if idx < lower || idx > upper {
        return Err(Fault::new(vector::BR));
    }
    Ok(())
}

pub(super) fn register(t: &mut Table) {
    use Mnemonic as M;
    t.set(&[M::Mov], mov);
    t.set(&[M::Movzx, M::Movsx], movx);
    t.set(&[M::Lea], lea);
    t.set(&[M::Xchg], xchg);
    t.set(&[M::Cmpxchg], cmpxchg);
    t.set(&[M::Cmpxchg8b], cmpxchg8b);
    t.set(&[M::Xadd], xadd);
    t.set(&[M::Bswap], bswap);
    t.set(
        &[
            M::Cmovo,
            M::Cmovno,
            M::Cmovb,
            M::Cmovae,
            M::Cmove,
            M::Cmovne,
            M::Cmovbe,
            M::Cmova,
            M::Cmovs,
            M::Cmovns,
            M::Cmovp,
            M::Cmovnp,
            M::Cmovl,
            M::Cmovge,
            M::Cmovle,
            M::Cmovg,
        ],
        cmov,
    );
    t.set(
        &[
            M::Seto,
            M::Setno,
            M::Setb,
            M::Setae,
            M::Sete,
            M::Setne,
            M::Setbe,
            M::Seta,
            M::Sets,
            M::Setns,
            M::Setp,
            M::Setnp,
            M::Setl,
            M::Setge,
            M::Setle,
            M::Setg,
        ],
        setcc,
    );
    t.set(&[M::Push], push);
    t.set(&[M::Pop], pop);
    t.set(&[M::Pusha, M::Pushad], pusha);
    t.set(&[M::Popa, M::Popad], popa);
    t.set(&[M::Enter], enter);
    t.set(&[M::Leave], leave);
    t.set(&[M::Lahf], lahf);
    t.set(&[M::Sahf], sahf);
    t.set(&[M::Cbw, M::Cwde, M::Cwd, M::Cdq], convert);
    t.set(&[M::Xlatb], xlat);
    t.set(&[M::Nop, M::Reservednop, M::Pause], nop);
    t.set(&[M::Clc, M::Stc, M::Cmc, M::Cld, M::Std], flag_op);
    t.set(&[M::Bound], bound);
}
