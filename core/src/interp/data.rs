//! Data movement and small state instructions: MOV between GPRs, memory and
//! immediates (MOV to or from segment, control and debug registers belongs
//! to the segment and system families; CRn/DRn moves are forwarded to
//! `system::mov_cr_dr`), MOVZX/MOVSX, LEA, XCHG, CMPXCHG,
//! CMPXCHG8B, XADD, BSWAP, CMOVcc, SETcc, PUSH/POP of GPRs, memory and
//! immediates, PUSHA/POPA, ENTER/LEAVE, LAHF/SAHF, CBW/CWDE/CWD/CDQ, XLAT,
//! the NOPs and PAUSE, the flag instructions CLC/STC/CMC/CLD/STD, and
//! BOUND. Status flags come from `interp::flags`.
//!
//! PUSH/POP of a segment register belong to the segment family, which
//! registers them by `Code`; the shared PUSH/POP handlers here raise #UD
//! for them should they ever arrive.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::control::cond;
use super::flags::{add_flags, set_status, sub_flags};
use super::operand::{mask, sext};
use super::system;
use super::{Ctx, Table};
use crate::cpu::{flags, SegReg, EAX, EBP, EBX, ECX, EDI, EDX, ESI, ESP};
use crate::exception::{vector, Fault};

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
    if system::is_mov_cr_dr(ins.code()) {
        // MOV to/from CRn/DRn: the system family's, which asks the MOV
        // handler to forward them.
        return system::mov_cr_dr(ctx, ins);
    }
    check_lock(ins, false)?;
    for n in 0..ins.op_count() {
        if ins.op_kind(n) == OpKind::Register && is_special(ins.op_register(n)) {
            // Segment register moves are registered by the segment family
            // per Code; reaching here means nobody handles this form.
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
    set_status(&mut ctx.vm.cpu, flags::STATUS, f);
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
    set_status(&mut ctx.vm.cpu, flags::STATUS, f);
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

/// PUSH r / m / imm. The value is read before the stack pointer
/// moves, so PUSH ESP pushes the old ESP and PUSH [ESP+n] addresses with
/// the old ESP (SDM Vol. 2 PUSH).
fn push(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    if ins.op0_kind() == OpKind::Register && ins.op0_register().is_segment_register() {
        // PUSH Sreg is the segment family's (registered by Code).
        return Err(Fault::ud());
    }
    let size = ctx.op_size(ins, 0);
    let v = ctx.read_op(ins, 0)?;
    ctx.push(v, size)
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

/// NOP, multi-byte NOP (0F 1F /0 makes no memory access), the hint-NOP
/// space 0F 18-1F (PREFETCHh and ENDBR32/64 included: no access, no
/// fault, SDM Vol. 2 PREFETCHh, NOP), PAUSE.
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
    t.set(
        &[
            M::Nop,
            M::Reservednop,
            M::Pause,
            M::Prefetchnta,
            M::Prefetcht0,
            M::Prefetcht1,
            M::Prefetcht2,
            M::Endbr32,
            M::Endbr64,
        ],
        nop,
    );
    t.set(&[M::Clc, M::Stc, M::Cmc, M::Cld, M::Std], flag_op);
    t.set(&[M::Bound], bound);
}

/// Machines and helpers shared by the unit tests of the data, control and
/// string families: a real-mode or flat 32-bit protected-mode CPU on 1 MiB
/// of RAM, code assembled with iced-x86 at CS:EIP.
#[cfg(test)]
pub(crate) mod testkit {
    use iced_x86::code_asm::CodeAssembler;
    use iced_x86::IcedError;

    use crate::cpu::{attr, cr0, SegReg, Segment};
    use crate::exception::Fault;
    use crate::interp::fetch::Fetcher;
    use crate::interp::{Ctx, Interpreter, Step, Table};
    use crate::mem::GuestMemory;
    use crate::vm::Vm;

    /// Where test code starts (offset in CS).
    pub const CODE: u32 = 0x1000;

    pub struct Machine {
        pub vm: Vm,
        pub it: Interpreter,
    }

    /// Real mode, every segment at base 0, SP = 0x8000, IP = CODE.
    pub fn real() -> Machine {
        let mut vm = Vm::new(GuestMemory::new(1 << 20).unwrap());
        vm.cpu.cr0 = cr0::ET;
        for s in SegReg::ALL {
            *vm.cpu.seg_mut(s) = Segment::real(0);
        }
        vm.cpu.eip = CODE;
        vm.cpu.gpr = [0; 8];
        vm.cpu.set_sp(0x8000);
        Machine {
            vm,
            it: Interpreter::new(),
        }
    }

    /// A flat 4 GiB data segment (read/write, B = 1).
    pub fn flat_data(selector: u16) -> Segment {
        Segment {
            selector,
            base: 0,
            limit: 0xFFFF_FFFF,
            attr: attr::P | attr::S | attr::RW | attr::ACCESSED | attr::DB | attr::G,
        }
    }

    /// Flat 32-bit protected mode at CPL 0, ESP = 0x8000, EIP = CODE.
    pub fn flat32() -> Machine {
        let mut m = real();
        let cpu = &mut m.vm.cpu;
        cpu.cr0 = cr0::ET | cr0::PE;
        for s in SegReg::ALL {
            *cpu.seg_mut(s) = flat_data(0x10);
        }
        let cs = cpu.seg_mut(SegReg::Cs);
        cs.selector = 0x08;
        cs.attr |= attr::CODE;
        cpu.set_reg32(crate::cpu::ESP, 0x8000);
        m
    }

    impl Machine {
        fn bits(&self) -> u32 {
            if self.vm.cpu.code32() {
                32
            } else {
                16
            }
        }

        /// Assemble `f` at CS:EIP.
        pub fn asm(&mut self, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) {
            let mut a = CodeAssembler::new(self.bits()).unwrap();
            f(&mut a).unwrap();
            let bytes = a.assemble(self.vm.cpu.eip as u64).unwrap();
            self.bytes(&bytes);
        }

        /// Place raw code bytes at CS:EIP.
        pub fn bytes(&mut self, b: &[u8]) {
            let lin = self
                .vm
                .cpu
                .seg(SegReg::Cs)
                .base
                .wrapping_add(self.vm.cpu.eip);
            self.vm.mem.write(lin as u64, b);
        }

        /// One `Interpreter::step` that must retire an instruction.
        pub fn step(&mut self) {
            assert_eq!(self.it.step(&mut self.vm), Step::Retired);
        }

        pub fn steps(&mut self, n: usize) {
            for _ in 0..n {
                self.step();
            }
        }

        /// Execute the instruction at CS:EIP as `step` does but hand back
        /// its fault instead of delivering it (state is left as the
        /// handler left it; EIP moves only on success).
        pub fn exec(&mut self) -> Result<(), Fault> {
            let ins = Fetcher::new().fetch(&mut self.vm)?;
            if ins.code() == iced_x86::Code::INVALID {
                return Err(Fault::ud());
            }
            let h = Table::build().lookup(&ins).ok_or(Fault::ud())?;
            let mut ctx = Ctx::for_insn(&mut self.vm, &ins, self.it.rep_batch);
            h(&mut ctx, &ins)?;
            let next = ctx.next_eip;
            self.vm.cpu.eip = next;
            Ok(())
        }

        pub fn r(&self, i: usize) -> u32 {
            self.vm.cpu.reg32(i)
        }
        pub fn set(&mut self, i: usize, v: u32) {
            self.vm.cpu.set_reg32(i, v);
        }
        /// Read `size` bytes of guest-physical memory.
        pub fn rd(&mut self, addr: u32, size: usize) -> u32 {
            let mut b = [0u8; 4];
            self.vm.mem.read(addr as u64, &mut b[..size]);
            u32::from_le_bytes(b)
        }
        pub fn wr(&mut self, addr: u32, size: usize, v: u32) {
            self.vm.mem.write(addr as u64, &v.to_le_bytes()[..size]);
        }
    }
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::testkit::{flat32, real, CODE};
    use crate::cpu::{flags, SegReg, Segment, EAX, EBP, EBX, ECX, EDI, EDX, ESI, ESP};
    use crate::exception::{vector, Fault};

    #[test]
    fn mov_forms_32() {
        let mut m = flat32();
        m.asm(|a| {
            a.mov(eax, 0x1234_5678u32)?;
            a.mov(dword_ptr(0x2000), eax)?;
            a.mov(bl, byte_ptr(0x2001))?;
            a.mov(al, byte_ptr(0x2003))?; // moffs form (A0)
            a.mov(word_ptr(ebx + 0x2000 - 0x56), 0xBEEFu32)?;
            a.mov(cx, word_ptr(0x2000))
        });
        m.set(ECX, 0xAAAA_0000);
        m.steps(6);
        assert_eq!(m.rd(0x2000, 4), 0x1234_BEEF);
        assert_eq!(m.r(EBX) & 0xFF, 0x56);
        assert_eq!(m.r(EAX), 0x1234_5612);
        // EBX = 0x56, so the word went to 0x2000.
        assert_eq!(m.r(ECX), 0xAAAA_BEEF);
        assert_eq!(m.vm.cpu.eip, CODE + 5 + 5 + 6 + 5 + 9 + 7);
    }

    #[test]
    fn mov_cr_forwarded_to_system() {
        let mut m = flat32();
        m.asm(|a| a.mov(eax, cr0));
        m.step();
        assert_eq!(m.r(EAX), m.vm.cpu.cr0);
    }

    #[test]
    fn mov_segment_override_real_mode() {
        let mut m = real();
        *m.vm.cpu.seg_mut(SegReg::Es) = Segment::real(0x3000);
        m.wr(0x30010, 2, 0xCAFE);
        m.asm(|a| a.mov(ax, word_ptr(0x10).es()));
        m.step();
        assert_eq!(m.r(EAX) & 0xFFFF, 0xCAFE);
    }

    #[test]
    fn moffs_with_address_size_prefix() {
        // 16-bit code: 67 A0 disp32 = mov al, [dword 0x00000200].
        let mut m = real();
        m.wr(0x200, 1, 0x42);
        m.bytes(&[0x67, 0xA0, 0x00, 0x02, 0x00, 0x00]);
        m.step();
        assert_eq!(m.r(EAX), 0x42);
        assert_eq!(m.vm.cpu.eip, CODE + 6);
        // 32-bit code: 67 A3 disp16 = mov [word 0x0300], eax.
        let mut m = flat32();
        m.set(EAX, 0x0102_0304);
        m.bytes(&[0x67, 0xA3, 0x00, 0x03]);
        m.step();
        assert_eq!(m.rd(0x300, 4), 0x0102_0304);
    }

    #[test]
    fn movzx_movsx() {
        let mut m = flat32();
        m.wr(0x2000, 2, 0x8081);
        m.set(ECX, 0xFFFF_FFFF);
        m.set(EDX, 0x5555_5555);
        m.asm(|a| {
            a.movsx(eax, byte_ptr(0x2000))?;
            a.movzx(ecx, word_ptr(0x2000))?;
            a.movsx(dx, byte_ptr(0x2001))?;
            a.movzx(ebx, al)
        });
        m.steps(4);
        assert_eq!(m.r(EAX), 0xFFFF_FF81);
        assert_eq!(m.r(ECX), 0x0000_8081);
        assert_eq!(m.r(EDX), 0x5555_FF80);
        assert_eq!(m.r(EBX), 0x81);
    }

    #[test]
    fn lea_address_and_operand_sizes() {
        let mut m = flat32();
        m.set(EBX, 0xFFFF_0000);
        m.set(ECX, 0x10);
        m.set(EAX, 0x7777_7777);
        m.asm(|a| a.lea(ax, ptr(ebx + ecx * 4 + 0x10)));
        m.step();
        // 0xFFFF0000 + 0x40 + 0x10 = 0xFFFF0050; 16-bit destination.
        assert_eq!(m.r(EAX), 0x7777_0050);
        // 32-bit operand, 16-bit address: lea eax, [bx+0xFFFF] wraps.
        m.set(EBX, 0x1234_0002);
        m.bytes(&[0x67, 0x8D, 0x87, 0xFF, 0xFF]);
        m.step();
        assert_eq!(m.r(EAX), 0x0001);
        // 16-bit code: lea eax, [esi+edi] (66 67) keeps 32 bits.
        let mut m = real();
        m.set(ESI, 0x8000_0000);
        m.set(EDI, 0x10);
        m.asm(|a| a.lea(eax, ptr(esi + edi)));
        m.step();
        assert_eq!(m.r(EAX), 0x8000_0010);
        // 16-bit code, 16/16: [bx+si+0x10] wraps at 64 KiB.
        m.set(EBX, 0xFFF0);
        m.set(ESI, 0x10);
        m.set(ECX, 0xCCCC_CCCC);
        m.asm(|a| a.lea(cx, ptr(bx + si + 0x10)));
        m.step();
        assert_eq!(m.r(ECX), 0xCCCC_0010);
        // 16-bit code, o32 a16: zero-extended to 32 bits.
        m.set(EDX, 0xFFFF_FFFF);
        m.asm(|a| a.lea(edx, ptr(bx + si + 0x10)));
        m.step();
        assert_eq!(m.r(EDX), 0x0000_0010);
    }

    #[test]
    fn lea_register_source_is_ud() {
        let mut m = flat32();
        m.bytes(&[0x8D, 0xC0]);
        assert_eq!(m.exec(), Err(Fault::ud()));
    }

    #[test]
    fn xchg_memory_and_registers() {
        let mut m = flat32();
        m.wr(0x2000, 4, 0x1111_1111);
        m.set(EAX, 0x2222_2222);
        m.set(EBX, 0x3333_3333);
        m.asm(|a| {
            a.xchg(dword_ptr(0x2000), eax)?;
            a.xchg(bx, ax)
        });
        m.steps(2);
        assert_eq!(m.rd(0x2000, 4), 0x2222_2222);
        assert_eq!(m.r(EAX), 0x1111_3333);
        assert_eq!(m.r(EBX), 0x3333_1111);
    }

    #[test]
    fn lock_rules() {
        let mut m = flat32();
        m.set(EAX, 0x2000);
        // lock mov [eax], ebx
        m.bytes(&[0xF0, 0x89, 0x18]);
        assert_eq!(m.exec(), Err(Fault::ud()));
        // lock xchg [eax], ebx is legal
        m.set(EBX, 7);
        m.bytes(&[0xF0, 0x87, 0x18]);
        assert_eq!(m.exec(), Ok(()));
        assert_eq!(m.rd(0x2000, 4), 7);
        // LOCK with a register destination: lock xchg eax, ebx; lock
        // cmpxchg eax, ebx; lock xadd eax, ebx.
        for b in [
            &[0xF0, 0x87, 0xD8][..],
            &[0xF0, 0x0F, 0xB1, 0xD8],
            &[0xF0, 0x0F, 0xC1, 0xD8],
        ] {
            m.bytes(b);
            assert_eq!(m.exec(), Err(Fault::ud()), "{b:02x?}");
        }
    }

    #[test]
    fn cmpxchg_both_outcomes() {
        let mut m = flat32();
        m.wr(0x2000, 4, 100);
        m.set(EAX, 100);
        m.set(ECX, 555);
        m.asm(|a| a.cmpxchg(dword_ptr(0x2000), ecx));
        m.step();
        assert_eq!(m.rd(0x2000, 4), 555);
        assert_eq!(m.r(EAX), 100);
        assert_ne!(m.vm.cpu.eflags & flags::ZF, 0);
        // Again: now 100 != 555: EAX gets the memory value, flags of
        // 100 - 555 (borrow, negative).
        m.vm.cpu.eip = super::testkit::CODE;
        m.step();
        assert_eq!(m.rd(0x2000, 4), 555);
        assert_eq!(m.r(EAX), 555);
        let f = m.vm.cpu.eflags;
        assert_eq!(f & flags::ZF, 0);
        assert_ne!(f & flags::CF, 0);
        assert_ne!(f & flags::SF, 0);
        // Byte form with AL.
        let mut m = flat32();
        m.set(EAX, 0xAB01);
        m.set(EBX, 0x02);
        m.wr(0x2000, 1, 0x01);
        m.asm(|a| a.cmpxchg(byte_ptr(0x2000), bl));
        m.step();
        assert_eq!(m.rd(0x2000, 1), 0x02);
        assert_ne!(m.vm.cpu.eflags & flags::ZF, 0);
    }

    #[test]
    fn cmpxchg8b_both_outcomes() {
        let mut m = flat32();
        m.wr(0x2000, 4, 0x1111_1111);
        m.wr(0x2004, 4, 0x2222_2222);
        m.set(EAX, 0x1111_1111);
        m.set(EDX, 0x2222_2222);
        m.set(EBX, 0xAAAA_AAAA);
        m.set(ECX, 0xBBBB_BBBB);
        m.vm.cpu.eflags |= flags::CF;
        m.asm(|a| a.cmpxchg8b(qword_ptr(0x2000)));
        m.step();
        assert_eq!(m.rd(0x2000, 4), 0xAAAA_AAAA);
        assert_eq!(m.rd(0x2004, 4), 0xBBBB_BBBB);
        assert_ne!(m.vm.cpu.eflags & flags::ZF, 0);
        assert_ne!(m.vm.cpu.eflags & flags::CF, 0, "only ZF changes");
        // Mismatch: EDX:EAX = m64, ZF = 0, memory unchanged.
        m.vm.cpu.eip = CODE;
        m.step();
        assert_eq!(m.r(EAX), 0xAAAA_AAAA);
        assert_eq!(m.r(EDX), 0xBBBB_BBBB);
        assert_eq!(m.vm.cpu.eflags & flags::ZF, 0);
        assert_eq!(m.rd(0x2000, 4), 0xAAAA_AAAA);
        // Register operand (0F C7 C9): #UD.
        m.vm.cpu.eip = CODE;
        m.bytes(&[0x0F, 0xC7, 0xC9]);
        assert_eq!(m.exec(), Err(Fault::ud()));
    }

    #[test]
    fn xadd_memory_and_same_register() {
        let mut m = flat32();
        m.wr(0x2000, 2, 0xFFFF);
        m.set(ECX, 0x9999_0001);
        m.asm(|a| {
            a.xadd(word_ptr(0x2000), cx)?;
            a.xadd(eax, eax)
        });
        m.set(EAX, 0x10);
        m.step();
        assert_eq!(m.rd(0x2000, 2), 0x0000);
        assert_eq!(m.r(ECX), 0x9999_FFFF);
        let f = m.vm.cpu.eflags;
        assert_ne!(f & flags::CF, 0);
        assert_ne!(f & flags::ZF, 0);
        assert_ne!(f & flags::AF, 0);
        assert_eq!(f & flags::OF, 0);
        m.step();
        assert_eq!(m.r(EAX), 0x20);
    }

    #[test]
    fn bswap_32_and_16() {
        let mut m = flat32();
        m.set(EAX, 0x1122_3344);
        m.set(EBX, 0x1122_3344);
        m.bytes(&[0x0F, 0xC8, 0x66, 0x0F, 0xCB]); // bswap eax; bswap bx
        m.steps(2);
        assert_eq!(m.r(EAX), 0x4433_2211);
        assert_eq!(m.r(EBX), 0x1122_0000);
    }

    #[test]
    fn cmov_false_still_reads_memory() {
        // Real mode, ZF = 0: cmove eax, dword [0xFFFF] reads past the
        // 64 KiB limit, so #GP(0) although nothing would be written.
        let mut m = real();
        m.vm.cpu.eflags &= !flags::ZF;
        m.set(EAX, 0x1234_5678);
        m.asm(|a| a.cmove(eax, dword_ptr(0xFFFF)));
        assert_eq!(m.exec(), Err(Fault::gp(0)));
        assert_eq!(m.vm.cpu.eip, CODE);
        // In range and false: nothing written, not even the upper half.
        m.wr(0x100, 4, 0xDEAD_BEEF);
        m.asm(|a| {
            a.cmove(eax, dword_ptr(0x100))?;
            a.cmovne(bx, word_ptr(0x100))
        });
        m.steps(2);
        assert_eq!(m.r(EAX), 0x1234_5678);
        assert_eq!(m.r(EBX) & 0xFFFF, 0xBEEF);
    }

    #[test]
    fn cmov_true_loads() {
        let mut m = flat32();
        m.vm.cpu.eflags |= flags::CF;
        m.wr(0x2000, 4, 0xDEAD_BEEF);
        m.set(EAX, 0x1111_1111);
        m.asm(|a| {
            a.cmovb(eax, dword_ptr(0x2000))?;
            a.cmovae(ecx, eax)
        });
        m.steps(2);
        assert_eq!(m.r(EAX), 0xDEAD_BEEF);
        assert_eq!(m.r(ECX), 0);
    }

    #[test]
    fn setcc_writes_byte() {
        let mut m = flat32();
        m.vm.cpu.eflags |= flags::SF; // SF != OF: "less"
        m.wr(0x2000, 4, 0xFFFF_FFFF);
        m.set(EAX, 0xFFFF_FFFF);
        m.asm(|a| {
            a.setl(byte_ptr(0x2000))?;
            a.setg(al)
        });
        m.steps(2);
        assert_eq!(m.rd(0x2000, 4), 0xFFFF_FF01);
        assert_eq!(m.r(EAX), 0xFFFF_FF00);
    }

    #[test]
    fn push_pop_widths_real_mode() {
        let mut m = real();
        m.set(EAX, 0xAABB_CCDD);
        m.asm(|a| {
            a.push(ax)?; // SP 8000 -> 7FFE
            a.push(eax)?; // 66: 7FFE -> 7FFA
            a.push(-1i32)?; // 6A FF: 16-bit 0xFFFF at 7FF8
            a.pop(ebx)?; // EBX = FFFF:CCDD? no: dword at 7FF8 = FFFF CCDD
            a.pop(cx) // at 7FFC = AABB
        });
        m.steps(5);
        assert_eq!(m.rd(0x7FFE, 2), 0xCCDD);
        assert_eq!(m.rd(0x7FFA, 4), 0xAABB_CCDD);
        assert_eq!(m.r(EBX), 0xCCDD_FFFF);
        assert_eq!(m.r(ECX) & 0xFFFF, 0xAABB);
        assert_eq!(m.r(ESP), 0x7FFE);
    }

    #[test]
    fn push_wraps_16bit_stack() {
        let mut m = real();
        m.set(ESP, 0x1234_0000);
        m.set(EAX, 0x4455);
        m.asm(|a| a.push(ax));
        m.step();
        assert_eq!(m.r(ESP), 0x1234_FFFE, "only SP changes, with wrap");
        assert_eq!(m.rd(0xFFFE, 2), 0x4455);
    }

    #[test]
    fn push_esp_and_memory_use_old_esp() {
        let mut m = flat32();
        m.wr(0x8000, 4, 0x0BAD_F00D);
        m.asm(|a| {
            a.push(esp)?;
            a.push(dword_ptr(esp + 4))
        });
        m.steps(2);
        assert_eq!(m.rd(0x7FFC, 4), 0x8000);
        // [esp+4] with ESP = 0x7FFC is 0x8000.
        assert_eq!(m.rd(0x7FF8, 4), 0x0BAD_F00D);
        assert_eq!(m.r(ESP), 0x7FF8);
    }

    #[test]
    fn pop_into_esp_relative_memory_uses_new_esp() {
        let mut m = flat32();
        m.wr(0x8000, 4, 0xAABB_CCDD);
        m.asm(|a| a.pop(dword_ptr(esp + 4)));
        m.step();
        // ESP becomes 0x8004 first; the address is 0x8004 + 4.
        assert_eq!(m.r(ESP), 0x8004);
        assert_eq!(m.rd(0x8008, 4), 0xAABB_CCDD);
        // POP [ESP]: the word lands at the new top.
        let mut m = flat32();
        m.wr(0x8000, 4, 0x1122_3344);
        m.asm(|a| a.pop(dword_ptr(esp)));
        m.step();
        assert_eq!(m.rd(0x8004, 4), 0x1122_3344);
        // POP ESP: ESP = the popped value.
        let mut m = flat32();
        m.wr(0x8000, 4, 0x0000_5000);
        m.asm(|a| a.pop(esp));
        m.step();
        assert_eq!(m.r(ESP), 0x5000);
    }

    #[test]
    fn pop_memory_fault_leaves_esp() {
        // DS limit 0xFFF: pop [0x2000] faults, ESP is unchanged.
        let mut m = flat32();
        m.vm.cpu.seg_mut(SegReg::Ds).limit = 0xFFF;
        m.asm(|a| a.pop(dword_ptr(0x2000)));
        assert_eq!(m.exec(), Err(Fault::gp(0)));
        assert_eq!(m.r(ESP), 0x8000);
    }

    #[test]
    fn push_segment_register_32() {
        let mut m = flat32();
        m.wr(0x7FFC, 4, 0xFFFF_FFFF);
        m.asm(|a| a.push(cs));
        m.step();
        assert_eq!(m.r(ESP), 0x7FFC);
        assert_eq!(m.rd(0x7FFC, 4), 0xFFFF_0008, "16-bit store");
    }

    #[test]
    fn push_imm_32() {
        let mut m = flat32();
        m.asm(|a| {
            a.push(-2i32)?; // 6A FE: dword 0xFFFFFFFE
            a.push(0x1234_5678u32)
        });
        m.steps(2);
        assert_eq!(m.rd(0x7FFC, 4), 0xFFFF_FFFE);
        assert_eq!(m.rd(0x7FF8, 4), 0x1234_5678);
    }

    #[test]
    fn pusha_popa_16_and_32() {
        let mut m = real();
        for (i, r) in [EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI]
            .into_iter()
            .enumerate()
        {
            if r != ESP {
                m.set(r, 0x1000_0000 * (i as u32 + 1) + i as u32 + 1);
            }
        }
        m.asm(|a| a.pusha());
        m.step();
        assert_eq!(m.r(ESP) & 0xFFFF, 0x8000 - 16);
        // Order from high to low: AX CX DX BX SP BP SI DI.
        assert_eq!(m.rd(0x7FFE, 2), 1);
        assert_eq!(m.rd(0x7FFC, 2), 2);
        assert_eq!(m.rd(0x7FF6, 2), 0x8000);
        assert_eq!(m.rd(0x7FF0, 2), 8);
        // Scramble and POPA back; the SP slot is skipped.
        m.wr(0x7FF6, 2, 0x1111);
        m.set(EAX, 0xFFFF_FFFF);
        m.set(EDI, 0xFFFF_FFFF);
        m.asm(|a| a.popa());
        m.step();
        assert_eq!(m.r(EAX), 0xFFFF_0001, "16-bit POPA keeps upper halves");
        assert_eq!(m.r(EDI), 0xFFFF_0008);
        assert_eq!(m.r(EBP), 0x6000_0006);
        assert_eq!(m.r(ESP), 0x8000);

        let mut m = flat32();
        m.set(EAX, 0xA);
        m.set(EDI, 0xD);
        m.asm(|a| a.pushad());
        m.step();
        assert_eq!(m.r(ESP), 0x8000 - 32);
        assert_eq!(m.rd(0x7FFC, 4), 0xA);
        assert_eq!(m.rd(0x7FEC, 4), 0x8000);
        assert_eq!(m.rd(0x7FE0, 4), 0xD);
        m.set(EAX, 0);
        m.asm(|a| a.popad());
        m.step();
        assert_eq!(m.r(EAX), 0xA);
        assert_eq!(m.r(ESP), 0x8000);
    }

    #[test]
    fn pusha_fault_changes_nothing() {
        // SS limit so that only the first four slots fit.
        let mut m = flat32();
        m.vm.cpu.seg_mut(SegReg::Ss).limit = 0x8FFF;
        m.set(ESP, 0x9010);
        m.set(EAX, 0x1234);
        m.asm(|a| a.pushad());
        assert_eq!(m.exec(), Err(Fault::ss(0)));
        assert_eq!(m.r(ESP), 0x9010);
        assert_eq!(m.rd(0x900C, 4), 0, "no slot written");
    }

    #[test]
    fn enter_levels_32() {
        let mut m = flat32();
        m.set(EBP, 0x9000);
        m.asm(|a| a.enter(8u32, 0u32));
        m.step();
        assert_eq!(m.rd(0x7FFC, 4), 0x9000);
        assert_eq!(m.r(EBP), 0x7FFC);
        assert_eq!(m.r(ESP), 0x7FF4);

        // Level 3: two frame pointers copied from the old frame.
        let mut m = flat32();
        m.set(EBP, 0x9000);
        m.wr(0x8FFC, 4, 0x111);
        m.wr(0x8FF8, 4, 0x222);
        m.asm(|a| a.enter(4u32, 3u32));
        m.step();
        assert_eq!(m.rd(0x7FFC, 4), 0x9000);
        assert_eq!(m.rd(0x7FF8, 4), 0x111);
        assert_eq!(m.rd(0x7FF4, 4), 0x222);
        assert_eq!(m.rd(0x7FF0, 4), 0x7FFC);
        assert_eq!(m.r(EBP), 0x7FFC);
        assert_eq!(m.r(ESP), 0x7FEC);

        // Level 33 is level 1 (mod 32).
        let mut m = flat32();
        m.set(EBP, 0x9000);
        m.asm(|a| a.enter(0u32, 33u32));
        m.step();
        assert_eq!(m.rd(0x7FF8, 4), 0x7FFC);
        assert_eq!(m.r(EBP), 0x7FFC);
        assert_eq!(m.r(ESP), 0x7FF8);
    }

    #[test]
    fn enter_leave_16() {
        let mut m = real();
        m.set(ESP, 0x100);
        m.set(EBP, 0xABCD_0200);
        m.wr(0x1FE, 2, 0xBEEF);
        m.asm(|a| a.enter(2u32, 2u32));
        m.step();
        assert_eq!(m.rd(0xFE, 2), 0x0200);
        assert_eq!(m.rd(0xFC, 2), 0xBEEF);
        assert_eq!(m.rd(0xFA, 2), 0x00FE);
        assert_eq!(m.r(EBP), 0xABCD_00FE);
        assert_eq!(m.r(ESP), 0xF8);
        m.asm(|a| a.leave());
        m.step();
        assert_eq!(m.r(ESP), 0x100);
        assert_eq!(m.r(EBP), 0xABCD_0200);
    }

    #[test]
    fn enter_16bit_operand_on_32bit_stack() {
        // 66 C8 04 00 01: enter 4, 1 with a 16-bit operand size.
        let mut m = flat32();
        m.set(EBP, 0xAAAA_9000);
        m.bytes(&[0x66, 0xC8, 0x04, 0x00, 0x01]);
        m.step();
        assert_eq!(m.rd(0x7FFE, 2), 0x9000);
        assert_eq!(m.rd(0x7FFC, 2), 0x7FFE);
        assert_eq!(m.r(EBP), 0xAAAA_7FFE, "only BP is written");
        assert_eq!(m.r(ESP), 0x7FFC - 4);
    }

    #[test]
    fn enter_probes_final_stack_pointer() {
        // SS limit 0x7FF0 (expand-up): the pushes fit, the allocation
        // does not... it lands below, so use an expand-down stack: valid
        // offsets are above the limit.
        let mut m = flat32();
        let stack = m.vm.cpu.seg_mut(SegReg::Ss);
        stack.attr |= crate::cpu::attr::DC;
        stack.limit = 0x7F00;
        m.set(EBP, 0x9000);
        m.asm(|a| a.enter(0x100u32, 0u32));
        assert_eq!(m.exec(), Err(Fault::ss(0)));
        assert_eq!(m.r(ESP), 0x8000);
        assert_eq!(m.r(EBP), 0x9000);
    }

    #[test]
    fn leave_32() {
        let mut m = flat32();
        m.set(EBP, 0x7000);
        m.wr(0x7000, 4, 0x1234_5678);
        m.asm(|a| a.leave());
        m.step();
        assert_eq!(m.r(ESP), 0x7004);
        assert_eq!(m.r(EBP), 0x1234_5678);
    }

    #[test]
    fn lahf_sahf() {
        let mut m = flat32();
        m.vm.cpu.eflags = flags::FIXED1 | flags::SF | flags::ZF | flags::CF | flags::OF;
        m.set(EAX, 0);
        m.asm(|a| {
            a.lahf()?;
            a.mov(ah, 0xFFu32)?;
            a.sahf()
        });
        m.step();
        assert_eq!(m.r(EAX), 0xC300);
        m.vm.cpu.eflags = flags::FIXED1;
        m.steps(2);
        assert_eq!(
            m.vm.cpu.eflags,
            flags::FIXED1 | flags::SF | flags::ZF | flags::AF | flags::PF | flags::CF
        );
    }

    #[test]
    fn conversions() {
        let mut m = flat32();
        m.set(EAX, 0x1234_5680);
        m.set(EDX, 0x1111_1111);
        m.asm(|a| {
            a.cbw()?; // AX = FF80
            a.cwd()?; // DX = FFFF
            a.cwde()?; // EAX = FFFFFF80
            a.cdq()
        });
        m.step();
        assert_eq!(m.r(EAX), 0x1234_FF80);
        m.step();
        assert_eq!(m.r(EDX), 0x1111_FFFF);
        m.set(EDX, 0);
        m.steps(2);
        assert_eq!(m.r(EAX), 0xFFFF_FF80);
        assert_eq!(m.r(EDX), 0xFFFF_FFFF);
    }

    #[test]
    fn xlat_default_and_override() {
        let mut m = real();
        m.set(EBX, 0x3000);
        m.set(EAX, 0x05);
        m.wr(0x3005, 1, 0x77);
        m.wr(0x13005, 1, 0x99);
        *m.vm.cpu.seg_mut(SegReg::Es) = Segment::real(0x1000);
        m.bytes(&[0xD7, 0x26, 0xD7]); // xlat; es xlat
        m.step();
        assert_eq!(m.r(EAX), 0x77);
        m.set(EAX, 0x05);
        m.step();
        assert_eq!(m.r(EAX), 0x99);
    }

    #[test]
    fn nops_touch_nothing() {
        let mut m = flat32();
        m.vm.cpu.seg_mut(SegReg::Ds).limit = 0;
        // nop dword [eax+0] (0F 1F 40 00), 66 nop, pause, 0F 1F 84 00 ...
        m.bytes(&[
            0x0F, 0x1F, 0x40, 0x00, 0x66, 0x90, 0xF3, 0x90, 0x0F, 0x1F, 0x84, 0, 0, 0, 0, 0x10,
        ]);
        let before = m.vm.cpu.clone();
        m.steps(4);
        assert_eq!(m.vm.cpu.eip, CODE + 16);
        // prefetcht0 [eax] (0F 18 08), endbr32 (F3 0F 1E FB).
        m.bytes(&[0x0F, 0x18, 0x08, 0xF3, 0x0F, 0x1E, 0xFB]);
        m.steps(2);
        assert_eq!(m.vm.cpu.eip, CODE + 23);
        assert_eq!(m.vm.cpu.gpr, before.gpr);
        assert_eq!(m.vm.cpu.eflags, before.eflags);
    }

    #[test]
    fn flag_instructions() {
        let mut m = flat32();
        m.vm.cpu.eflags = flags::FIXED1;
        m.asm(|a| {
            a.stc()?;
            a.cmc()?;
            a.cmc()?;
            a.std()?;
            a.clc()?;
            a.cld()
        });
        m.step();
        assert_eq!(m.vm.cpu.eflags, flags::FIXED1 | flags::CF);
        m.step();
        assert_eq!(m.vm.cpu.eflags, flags::FIXED1);
        m.steps(2);
        assert_eq!(m.vm.cpu.eflags, flags::FIXED1 | flags::CF | flags::DF);
        m.steps(2);
        assert_eq!(m.vm.cpu.eflags, flags::FIXED1);
    }

    #[test]
    fn bound_delivers_br_as_fault_through_ivt() {
        // Real mode: IVT entry 5 -> 0000:2000. The stacked IP is the BOUND
        // instruction's own (a fault, not a trap).
        let mut m = real();
        m.wr(5 * 4, 2, 0x2000);
        m.wr(5 * 4 + 2, 2, 0);
        m.wr(0x300, 2, 0);
        m.wr(0x302, 2, 4);
        m.set(EAX, 5);
        m.asm(|a| a.bound(ax, dword_ptr(0x300)));
        m.step();
        assert_eq!(m.vm.cpu.eip, 0x2000);
        assert_eq!(m.r(ESP), 0x8000 - 6);
        assert_eq!(m.rd(0x8000 - 6, 2), CODE, "stacked IP");
    }

    #[test]
    fn bound_in_and_out_of_range() {
        let mut m = flat32();
        m.wr(0x2000, 4, (-5i32) as u32);
        m.wr(0x2004, 4, 10);
        m.set(EAX, (-5i32) as u32);
        m.asm(|a| a.bound(eax, qword_ptr(0x2000)));
        assert_eq!(m.exec(), Ok(()));
        m.vm.cpu.eip = CODE;
        m.set(EAX, 11);
        assert_eq!(m.exec(), Err(Fault::new(vector::BR)));
        assert_eq!(m.vm.cpu.eip, CODE);
        m.set(EAX, (-6i32) as u32);
        assert_eq!(m.exec(), Err(Fault::new(vector::BR)));
        // 16-bit form in real mode: signed words.
        let mut m = real();
        m.wr(0x200, 2, 0xFFF0);
        m.wr(0x202, 2, 0x0010);
        m.set(EBX, 0xFFF8);
        m.asm(|a| a.bound(bx, dword_ptr(0x200)));
        assert_eq!(m.exec(), Ok(()));
    }
}
