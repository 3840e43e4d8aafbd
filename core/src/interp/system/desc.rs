//! Descriptor-table and selector instructions: LGDT, LIDT, SGDT, SIDT,
//! LLDT, SLDT, LTR, STR, SMSW, LMSW, LAR, LSL, VERR, VERW, ARPL, and the
//! fast system calls SYSENTER/SYSEXIT, which load flat segments from the
//! SYSENTER MSRs instead of descriptors.
//!
//! Descriptors are read through `segment::descriptor_addr` (owned by the
//! segment module); segment-register loads are not here.

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::super::operand::mask;
use super::super::segment::{descriptor_addr, SEL_TI};
use super::super::{Ctx, Table};
use super::{require_cpl0, write_cr0};
use crate::cpu::{attr, cr0, flags, CpuState, SegReg, Segment, ECX, EDX, ESP};
use crate::exception::Fault;
use crate::mmu::Access;

/// System-descriptor types (SDM Vol. 3 3.5, Table 3-2).
pub mod sys_type {
    /// 16-bit TSS (available).
    pub const TSS16_AVAIL: u8 = 1;
    /// LDT.
    pub const LDT: u8 = 2;
    /// 16-bit TSS (busy).
    pub const TSS16_BUSY: u8 = 3;
    /// 16-bit call gate.
    pub const CALL16: u8 = 4;
    /// Task gate.
    pub const TASK: u8 = 5;
    /// 32-bit TSS (available).
    pub const TSS32_AVAIL: u8 = 9;
    /// 32-bit TSS (busy).
    pub const TSS32_BUSY: u8 = 0xB;
    /// 32-bit call gate.
    pub const CALL32: u8 = 0xC;
    /// Type bit that marks a TSS busy.
    pub const BUSY: u8 = 2;
}

/// SGDT/SIDT with a 16-bit operand size store only 24 bits of the base,
/// the top byte as 0, as P6-family processors do (SDM Vol. 2B SGDT,
/// "IA-32 Architecture Compatibility"). Newer processors store all 32.
const SGDT16_BASE_MASK: u32 = 0x00FF_FFFF;

/// Flat 4 GiB code/data for SYSENTER/SYSEXIT (SDM Vol. 2B SYSENTER).
const FLAT_LIMIT: u32 = 0xFFFF_FFFF;

pub(super) fn register(t: &mut Table) {
    t.set(&[Mnemonic::Lgdt, Mnemonic::Lidt], lgdt_lidt);
    t.set(&[Mnemonic::Sgdt, Mnemonic::Sidt], sgdt_sidt);
    t.set(&[Mnemonic::Lldt], lldt);
    t.set(&[Mnemonic::Ltr], ltr);
    t.set(&[Mnemonic::Sldt, Mnemonic::Str], sldt_str);
    t.set(&[Mnemonic::Smsw], smsw);
    t.set(&[Mnemonic::Lmsw], lmsw);
    t.set(&[Mnemonic::Lar, Mnemonic::Lsl], lar_lsl);
    t.set(&[Mnemonic::Verr, Mnemonic::Verw], verr_verw);
    t.set(&[Mnemonic::Arpl], arpl);
    t.set(&[Mnemonic::Sysenter], sysenter);
    t.set(&[Mnemonic::Sysexit], sysexit);
}

/// #UD in real and V86 mode (instructions that exist only in protected
/// mode: LLDT, SLDT, LTR, STR, LAR, LSL, VERR, VERW, ARPL).
fn require_protected(cpu: &CpuState) -> Result<(), Fault> {
    if cpu.real() || cpu.v86() {
        return Err(Fault::ud());
    }
    Ok(())
}

/// Whether the instruction has a 16-bit operand size according to its
/// encoding.
fn osize16(ins: &Instruction) -> bool {
    ins.code().op_code().operand_size() == 16
}

/// LGDT/LIDT m16&32 (CPL 0): 2-byte limit, then 4-byte base; with a
/// 16-bit operand size only 24 bits of base are used.
fn lgdt_lidt(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    require_cpl0(&ctx.vm.cpu)?;
    if ins.op0_kind() != OpKind::Memory {
        return Err(Fault::ud());
    }
    let seg = ctx.mem_seg(ins);
    let off = ctx.ea(ins);
    let limit = ctx.read_mem(seg, off, 2)? as u16;
    let mut base = ctx.read_mem(seg, off.wrapping_add(2), 4)?;
    if osize16(ins) {
        base &= 0x00FF_FFFF;
    }
    let t = if ins.mnemonic() == Mnemonic::Lgdt {
        &mut ctx.vm.cpu.gdtr
    } else {
        &mut ctx.vm.cpu.idtr
    };
    t.base = base;
    t.limit = limit;
    Ok(())
}

/// SGDT/SIDT m: store limit and base at any CPL (no UMIP on a P6). Both
/// parts are checked for writing before either is stored.
fn sgdt_sidt(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    if ins.op0_kind() != OpKind::Memory {
        return Err(Fault::ud());
    }
    let t = if ins.mnemonic() == Mnemonic::Sgdt {
        ctx.vm.cpu.gdtr
    } else {
        ctx.vm.cpu.idtr
    };
    let base = if osize16(ins) {
        t.base & SGDT16_BASE_MASK
    } else {
        t.base
    };
    let seg = ctx.mem_seg(ins);
    let off = ctx.ea(ins);
    ctx.check_write(seg, off, 2)?;
    ctx.check_write(seg, off.wrapping_add(2), 4)?;
    ctx.write_mem(seg, off, 2, t.limit as u32)?;
    ctx.write_mem(seg, off.wrapping_add(2), 4, base)
}

/// The 16-bit selector operand of LLDT/LTR/LAR/LSL/VERR/VERW (a register
/// operand contributes its low 16 bits).
fn selector_op(ctx: &mut Ctx, ins: &Instruction, n: u32) -> Result<u16, Fault> {
    Ok(ctx.read_op(ins, n)? as u16)
}

/// Read the GDT descriptor of a system-segment selector for LLDT/LTR:
/// TI must be 0, else #GP(selector).
fn gdt_system_descriptor(ctx: &mut Ctx, sel: u16) -> Result<(u32, u32, u32), Fault> {
    let code = (sel & !3) as u32;
    if sel & SEL_TI != 0 {
        return Err(Fault::gp(code));
    }
    let lin = descriptor_addr(ctx.vm, sel)?;
    let raw = ctx.vm.read_lin(lin, 8, Access::READ)?;
    Ok((lin, raw as u32, (raw >> 32) as u32))
}

/// LLDT r/m16 (CPL 0). A null selector marks LDTR unusable; otherwise
/// the GDT entry must be a present LDT descriptor (SDM Vol. 2A LLDT).
fn lldt(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    require_protected(&ctx.vm.cpu)?;
    require_cpl0(&ctx.vm.cpu)?;
    let sel = selector_op(ctx, ins, 0)?;
    if sel & !3 == 0 {
        let l = &mut ctx.vm.cpu.ldtr;
        l.selector = sel;
        l.attr = attr::UNUSABLE;
        return Ok(());
    }
    let code = (sel & !3) as u32;
    let (_, lo, hi) = gdt_system_descriptor(ctx, sel)?;
    let seg = Segment::from_descriptor(sel, lo, hi);
    if seg.attr & attr::S != 0 || seg.sys_type() != sys_type::LDT {
        return Err(Fault::gp(code));
    }
    if !seg.present() {
        return Err(Fault::np(code));
    }
    ctx.vm.cpu.ldtr = seg;
    Ok(())
}

/// LTR r/m16 (CPL 0): the GDT entry must be a present available TSS; it
/// is marked busy in memory and in TR (SDM Vol. 2A LTR).
fn ltr(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    require_protected(&ctx.vm.cpu)?;
    require_cpl0(&ctx.vm.cpu)?;
    let sel = selector_op(ctx, ins, 0)?;
    if sel & !3 == 0 {
        return Err(Fault::gp(0));
    }
    let code = (sel & !3) as u32;
    let (lin, lo, hi) = gdt_system_descriptor(ctx, sel)?;
    let seg = Segment::from_descriptor(sel, lo, hi);
    let ty = seg.sys_type();
    if seg.attr & attr::S != 0 || (ty != sys_type::TSS16_AVAIL && ty != sys_type::TSS32_AVAIL) {
        return Err(Fault::gp(code));
    }
    if !seg.present() {
        return Err(Fault::np(code));
    }
    // The busy bit is type bit 1, bit 9 of the high dword.
    let hi = hi | (sys_type::BUSY as u32) << 8;
    ctx.vm
        .write_lin(lin.wrapping_add(4), 4, hi as u64, Access::WRITE)?;
    ctx.vm.cpu.tr = Segment::from_descriptor(sel, lo, hi);
    Ok(())
}

/// SLDT/STR r/m16 (any CPL): a 32-bit register gets the selector
/// zero-extended (P6 behaviour, SDM Vol. 2B SLDT); memory gets 16 bits.
fn sldt_str(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    require_protected(&ctx.vm.cpu)?;
    let sel = if ins.mnemonic() == Mnemonic::Sldt {
        ctx.vm.cpu.ldtr.selector
    } else {
        ctx.vm.cpu.tr.selector
    };
    ctx.write_op(ins, 0, sel as u32)
}

/// SMSW r/m (any CPL): memory gets CR0[15:0]; a 32-bit register gets all
/// of CR0, as current processors do (the SDM leaves bits 31:16
/// undefined).
fn smsw(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let v = ctx.vm.cpu.cr0;
    ctx.write_op(ins, 0, v)
}

/// LMSW r/m16 (CPL 0): loads PE, MP, EM, TS; it can set PE but never
/// clear it (SDM Vol. 2A LMSW).
fn lmsw(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    require_cpl0(&ctx.vm.cpu)?;
    let src = ctx.read_op(ins, 0)?;
    let low = cr0::PE | cr0::MP | cr0::EM | cr0::TS;
    let old = ctx.vm.cpu.cr0;
    let new = (old & !low) | (src & low) | (old & cr0::PE);
    write_cr0(ctx.vm, new)
}

/// The descriptor `sel` names for LAR/LSL/VERR/VERW (decoded, and its raw
/// high dword), or None when the selector is null or beyond the table
/// (those set ZF=0, no fault). A page fault reading the table is a real
/// fault.
fn probe(ctx: &mut Ctx, sel: u16) -> Result<Option<(Segment, u32)>, Fault> {
    if sel & !3 == 0 {
        return Ok(None);
    }
    let Ok(lin) = descriptor_addr(ctx.vm, sel) else {
        return Ok(None);
    };
    let raw = ctx.vm.read_lin(lin, 8, Access::READ)?;
    let (lo, hi) = (raw as u32, (raw >> 32) as u32);
    Ok(Some((Segment::from_descriptor(sel, lo, hi), hi)))
}

/// The privilege test of LAR/LSL/VERR/VERW: conforming code segments pass;
/// anything else needs DPL >= CPL and DPL >= RPL.
fn visible(cpu: &CpuState, s: &Segment) -> bool {
    let conforming = s.attr & (attr::S | attr::CODE | attr::DC) == attr::S | attr::CODE | attr::DC;
    conforming || (s.dpl() >= cpu.cpl() && s.dpl() >= s.rpl())
}

fn set_zf(cpu: &mut CpuState, on: bool) {
    if on {
        cpu.eflags |= flags::ZF;
    } else {
        cpu.eflags &= !flags::ZF;
    }
}

/// LAR/LSL r, r/m16 (SDM Vol. 2A LAR, LSL): ZF=1 and the access rights
/// (the high dword masked with 0x00FFFF00) or the byte-granular limit when the descriptor is
/// visible and of a valid type; else ZF=0 and the destination unchanged.
fn lar_lsl(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    require_protected(&ctx.vm.cpu)?;
    let sel = selector_op(ctx, ins, 1)?;
    let d = probe(ctx, sel)?;
    let lar = ins.mnemonic() == Mnemonic::Lar;
    let ok = d.filter(|(s, _)| {
        let ty_ok = s.attr & attr::S != 0
            || match s.sys_type() {
                sys_type::TSS16_AVAIL
                | sys_type::LDT
                | sys_type::TSS16_BUSY
                | sys_type::TSS32_AVAIL
                | sys_type::TSS32_BUSY => true,
                sys_type::CALL16 | sys_type::TASK | sys_type::CALL32 => lar,
                _ => false,
            };
        ty_ok && visible(&ctx.vm.cpu, s)
    });
    let Some((s, hi)) = ok else {
        set_zf(&mut ctx.vm.cpu, false);
        return Ok(());
    };
    let dst = ins.op0_register();
    let v = if lar {
        // The SDM's mask is 00FxFF00H with bits 16-19 (limit 19:16)
        // undefined; Intel hardware returns them, so keep them.
        hi & 0x00FF_FF00
    } else {
        s.limit
    };
    ctx.set_reg(dst, v & mask(dst.size()));
    set_zf(&mut ctx.vm.cpu, true);
    Ok(())
}

/// VERR/VERW r/m16 (SDM Vol. 2B VERR/VERW): ZF=1 when the segment is a
/// readable (VERR) or writable (VERW) code/data segment visible at the
/// current privilege; system segments never are.
fn verr_verw(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    require_protected(&ctx.vm.cpu)?;
    let sel = selector_op(ctx, ins, 0)?;
    let d = probe(ctx, sel)?;
    let write = ins.mnemonic() == Mnemonic::Verw;
    let ok = d.is_some_and(|(s, _)| {
        if s.attr & attr::S == 0 || !visible(&ctx.vm.cpu, &s) {
            return false;
        }
        let code = s.attr & attr::CODE != 0;
        let rw = s.attr & attr::RW != 0;
        if write {
            !code && rw
        } else {
            !code || rw
        }
    });
    set_zf(&mut ctx.vm.cpu, ok);
    Ok(())
}

/// ARPL r/m16, r16: raise the destination selector's RPL to the source's
/// (ZF=1), or leave it (ZF=0). #UD in real and V86 mode.
fn arpl(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    require_protected(&ctx.vm.cpu)?;
    let dst = ctx.read_rmw(ins)? as u16;
    let src = ctx.read_op(ins, 1)? as u16;
    if dst & 3 < src & 3 {
        ctx.write_op(ins, 0, ((dst & !3) | (src & 3)) as u32)?;
        set_zf(&mut ctx.vm.cpu, true);
    } else {
        set_zf(&mut ctx.vm.cpu, false);
    }
    Ok(())
}

/// A flat segment for SYSENTER/SYSEXIT: base 0, 4 GiB, 32-bit, present.
fn flat_segment(selector: u16, code: bool, dpl: u32) -> Segment {
    let ty = if code {
        // Execute/read, accessed (type 11).
        attr::CODE | attr::RW | attr::ACCESSED
    } else {
        // Read/write, accessed (type 3).
        attr::RW | attr::ACCESSED
    };
    Segment {
        selector,
        base: 0,
        limit: FLAT_LIMIT,
        attr: ty | attr::S | (dpl << attr::DPL_SHIFT) | attr::P | attr::DB | attr::G,
    }
}

/// SYSENTER (SDM Vol. 2B): #GP(0) in real mode or with SYSENTER_CS[15:2]
/// = 0. Clears VM, IF, RF; CS = SYSENTER_CS & ~3 and SS = CS + 8 as flat
/// CPL-0 segments; ESP and EIP from the MSRs.
fn sysenter(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    let cpu = &mut ctx.vm.cpu;
    let cs = cpu.msr.sysenter_cs as u16;
    if cpu.real() || cs & !3 == 0 {
        return Err(Fault::gp(0));
    }
    cpu.eflags &= !(flags::VM | flags::IF | flags::RF);
    let cs = cs & !3;
    *cpu.seg_mut(SegReg::Cs) = flat_segment(cs, true, 0);
    *cpu.seg_mut(SegReg::Ss) = flat_segment(cs.wrapping_add(8), false, 0);
    cpu.set_reg32(ESP, cpu.msr.sysenter_esp);
    ctx.next_eip = cpu.msr.sysenter_eip;
    Ok(())
}

/// SYSEXIT (SDM Vol. 2B): #GP(0) in real mode, outside CPL 0, or with
/// SYSENTER_CS[15:2] = 0. CS = (SYSENTER_CS + 16) | 3 and SS =
/// (SYSENTER_CS + 24) | 3 as flat CPL-3 segments; ESP = ECX, EIP = EDX.
fn sysexit(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    let cpu = &mut ctx.vm.cpu;
    let cs = cpu.msr.sysenter_cs as u16;
    if cpu.real() || cs & !3 == 0 || cpu.cpl() != 0 {
        return Err(Fault::gp(0));
    }
    *cpu.seg_mut(SegReg::Cs) = flat_segment(cs.wrapping_add(16) | 3, true, 3);
    *cpu.seg_mut(SegReg::Ss) = flat_segment(cs.wrapping_add(24) | 3, false, 3);
    let (esp, eip) = (cpu.reg32(ECX), cpu.reg32(EDX));
    cpu.set_reg32(ESP, esp);
    ctx.next_eip = eip;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::cpu::{EAX, EBX};
    use iced_x86::code_asm::*;

    const GDT: u32 = 0x2000;

    /// Put an 8-byte descriptor at GDT index `i` and point GDTR at it.
    fn gdt_entry(vm: &mut crate::vm::Vm, i: u32, lo: u32, hi: u32) {
        vm.cpu.gdtr.base = GDT;
        vm.cpu.gdtr.limit = 0xFF;
        vm.mem.write_u32((GDT + i * 8) as u64, lo);
        vm.mem.write_u32((GDT + i * 8 + 4) as u64, hi);
    }

    /// High dword of a descriptor: base 0, limit[19:16] = `lim_hi`,
    /// access byte `access`, flags nibble `fl`.
    fn hi(access: u32, lim_hi: u32, fl: u32) -> u32 {
        access << 8 | lim_hi << 16 | fl << 20
    }

    #[test]
    fn lgdt_16bit_operand_truncates_base_to_24_bits() {
        let mut vm = real();
        vm.mem.write_u16(0x500, 0x1234);
        vm.mem.write_u32(0x502, 0xAABB_CCDD);
        assert_eq!(run(&mut vm, 16, |a| a.lgdt(ptr(0x500))), Ok(()));
        assert_eq!(vm.cpu.gdtr.limit, 0x1234);
        assert_eq!(vm.cpu.gdtr.base, 0x00BB_CCDD);
        // 32-bit operand size (0x66 in 16-bit code): all 32 bits.
        let mut vm2 = flat0();
        vm2.mem.write_u16(0x500, 0x07FF);
        vm2.mem.write_u32(0x502, 0xAABB_CCDD);
        assert_eq!(run(&mut vm2, 32, |a| a.lidt(ptr(0x500))), Ok(()));
        assert_eq!(vm2.cpu.idtr.base, 0xAABB_CCDD);
        assert_eq!(vm2.cpu.idtr.limit, 0x07FF);
        // CPL 3: #GP(0), nothing loaded.
        let mut vm3 = ring3();
        assert_eq!(run(&mut vm3, 32, |a| a.lgdt(ptr(0x500))), Err(Fault::gp(0)));
    }

    #[test]
    fn sgdt_stores_limit_then_base() {
        let mut vm = ring3();
        vm.cpu.gdtr.base = 0x8877_6655;
        vm.cpu.gdtr.limit = 0x0123;
        assert_eq!(run(&mut vm, 32, |a| a.sgdt(ptr(0x600))), Ok(()));
        assert_eq!(vm.mem.read_u16(0x600), 0x0123);
        assert_eq!(vm.mem.read_u32(0x602), 0x8877_6655);
        // 16-bit operand size: top byte of the base stored as 0 (P6).
        let mut vm = real();
        vm.cpu.idtr.base = 0x8877_6655;
        vm.cpu.idtr.limit = 0x03FF;
        vm.mem.write_u32(0x702, 0xFFFF_FFFF);
        assert_eq!(run(&mut vm, 16, |a| a.sidt(ptr(0x700))), Ok(()));
        assert_eq!(vm.mem.read_u16(0x700), 0x03FF);
        assert_eq!(vm.mem.read_u32(0x702), 0x0077_6655);
    }

    #[test]
    fn smsw_and_lmsw() {
        let mut vm = flat0();
        vm.cpu.cr0 = cr0::PE | cr0::ET | cr0::WP | cr0::NE;
        // Register form: all of CR0.
        assert_eq!(run(&mut vm, 32, |a| a.smsw(eax)), Ok(()));
        assert_eq!(vm.cpu.reg32(EAX), 0x0001_0031);
        // 16-bit register: low word only, upper half of EBX kept.
        vm.cpu.set_reg32(EBX, 0xDEAD_0000);
        assert_eq!(run(&mut vm, 32, |a| a.smsw(bx)), Ok(()));
        assert_eq!(vm.cpu.reg32(EBX), 0xDEAD_0031);
        // Memory: 16 bits.
        vm.mem.write_u32(0x600, 0xFFFF_FFFF);
        assert_eq!(run(&mut vm, 32, |a| a.smsw(word_ptr(0x600))), Ok(()));
        assert_eq!(vm.mem.read_u32(0x600), 0xFFFF_0031);
        // LMSW cannot clear PE but sets MP/EM/TS, ignores bits 4+.
        vm.cpu.cr0 = cr0::PE | cr0::ET;
        vm.cpu.set_reg32(EAX, 0xFFFE);
        assert_eq!(run(&mut vm, 32, |a| a.lmsw(ax)), Ok(()));
        assert_eq!(vm.cpu.cr0, cr0::PE | cr0::ET | cr0::MP | cr0::EM | cr0::TS);
        // LMSW sets PE from real mode.
        let mut vm = real();
        vm.cpu.cr0 = cr0::ET;
        vm.cpu.set_reg32(EAX, 1);
        assert_eq!(run(&mut vm, 16, |a| a.lmsw(ax)), Ok(()));
        assert_eq!(vm.cpu.cr0, cr0::ET | cr0::PE);
        let mut vm = ring3();
        assert_eq!(run(&mut vm, 32, |a| a.lmsw(ax)), Err(Fault::gp(0)));
    }

    #[test]
    fn lldt_checks_type_presence_and_ti() {
        let mut vm = flat0();
        // Index 2: LDT at base 0, limit 0x57, present.
        gdt_entry(&mut vm, 2, 0x0000_0057, hi(0x82, 0, 0));
        // Index 3: LDT, not present.
        gdt_entry(&mut vm, 3, 0x0000_0057, hi(0x02, 0, 0));
        // Index 4: a data segment.
        gdt_entry(&mut vm, 4, 0x0000_FFFF, hi(0x92, 0xF, 0xC));
        vm.cpu.set_reg32(EAX, 0x10);
        assert_eq!(run(&mut vm, 32, |a| a.lldt(ax)), Ok(()));
        assert_eq!(vm.cpu.ldtr.selector, 0x10);
        assert_eq!(vm.cpu.ldtr.limit, 0x57);
        vm.cpu.set_reg32(EAX, 0x1B);
        assert_eq!(run(&mut vm, 32, |a| a.lldt(ax)), Err(Fault::np(0x18)));
        vm.cpu.set_reg32(EAX, 0x23);
        assert_eq!(run(&mut vm, 32, |a| a.lldt(ax)), Err(Fault::gp(0x20)));
        vm.cpu.set_reg32(EAX, 0x14);
        assert_eq!(run(&mut vm, 32, |a| a.lldt(ax)), Err(Fault::gp(0x14)));
        // Beyond the GDT limit.
        vm.cpu.set_reg32(EAX, 0x100);
        assert_eq!(run(&mut vm, 32, |a| a.lldt(ax)), Err(Fault::gp(0x100)));
        // Null: LDTR unusable.
        vm.cpu.set_reg32(EAX, 0x3);
        assert_eq!(run(&mut vm, 32, |a| a.lldt(ax)), Ok(()));
        assert!(vm.cpu.ldtr.unusable());
        // SLDT into a 32-bit register zero-extends.
        vm.cpu.set_reg32(EBX, 0xFFFF_FFFF);
        assert_eq!(run(&mut vm, 32, |a| a.sldt(ebx)), Ok(()));
        assert_eq!(vm.cpu.reg32(EBX), 3);
        // Real mode: #UD.
        let mut vm = real();
        assert_eq!(run(&mut vm, 16, |a| a.lldt(ax)), Err(Fault::ud()));
        assert_eq!(run(&mut vm, 16, |a| a.sldt(ax)), Err(Fault::ud()));
    }

    #[test]
    fn ltr_sets_busy_bit() {
        let mut vm = flat0();
        // Index 5: 32-bit available TSS at 0x3000, limit 0x67.
        gdt_entry(&mut vm, 5, 0x3000_0067, hi(0x89, 0, 0));
        // Index 6: busy TSS.
        gdt_entry(&mut vm, 6, 0x3000_0067, hi(0x8B, 0, 0));
        vm.cpu.set_reg32(EAX, 0x30);
        assert_eq!(run(&mut vm, 32, |a| a.ltr(ax)), Err(Fault::gp(0x30)));
        vm.cpu.set_reg32(EAX, 0x28);
        assert_eq!(run(&mut vm, 32, |a| a.ltr(ax)), Ok(()));
        assert_eq!(vm.mem.read_u32((GDT + 5 * 8 + 4) as u64), hi(0x8B, 0, 0));
        assert_eq!(vm.cpu.tr.selector, 0x28);
        assert_eq!(vm.cpu.tr.base, 0x3000);
        assert_eq!(vm.cpu.tr.sys_type(), 0xB);
        // Loading it again: it is busy now.
        assert_eq!(run(&mut vm, 32, |a| a.ltr(ax)), Err(Fault::gp(0x28)));
        vm.cpu.set_reg32(EAX, 0);
        assert_eq!(run(&mut vm, 32, |a| a.ltr(ax)), Err(Fault::gp(0)));
        assert_eq!(run(&mut vm, 32, |a| a.str(eax)), Ok(()));
        assert_eq!(vm.cpu.reg32(EAX), 0x28);
        let mut vm = ring3();
        assert_eq!(run(&mut vm, 32, |a| a.ltr(ax)), Err(Fault::gp(0)));
    }

    #[test]
    fn lar_lsl_verr_verw() {
        let mut vm = ring3();
        // 1: DPL 3 data, writable, limit 0xFFFFF with G.
        gdt_entry(&mut vm, 1, 0x0000_FFFF, hi(0xF2, 0xF, 0xC));
        // 2: DPL 0 data.
        gdt_entry(&mut vm, 2, 0x0000_FFFF, hi(0x92, 0xF, 0xC));
        // 3: DPL 0 conforming readable code.
        gdt_entry(&mut vm, 3, 0x0000_1234, hi(0x9E, 0, 0x4));
        // 4: DPL 3 interrupt gate (invalid for LAR).
        gdt_entry(&mut vm, 4, 0, hi(0xEE, 0, 0));
        // 5: DPL 3 call gate (LAR yes, LSL no).
        gdt_entry(&mut vm, 5, 0, hi(0xEC, 0, 0));
        // 6: DPL 3 execute-only code.
        gdt_entry(&mut vm, 6, 0x0000_00FF, hi(0xF8, 0, 0x4));
        let zf = |vm: &crate::vm::Vm| vm.cpu.eflags & flags::ZF != 0;

        vm.cpu.set_reg32(ECX, 0x0B);
        assert_eq!(run(&mut vm, 32, |a| a.lar(eax, ecx)), Ok(()));
        assert!(zf(&vm));
        assert_eq!(vm.cpu.reg32(EAX), 0x00CF_F200);
        assert_eq!(run(&mut vm, 32, |a| a.lsl(eax, ecx)), Ok(()));
        assert_eq!(vm.cpu.reg32(EAX), 0xFFFF_FFFF);
        vm.cpu.set_reg32(EBX, 0x5555_5555);
        assert_eq!(run(&mut vm, 32, |a| a.lsl(bx, cx)), Ok(()));
        assert_eq!(vm.cpu.reg32(EBX), 0x5555_FFFF);
        // DPL 0 data from CPL 3: ZF=0, destination unchanged.
        vm.cpu.set_reg32(ECX, 0x13);
        vm.cpu.set_reg32(EAX, 7);
        assert_eq!(run(&mut vm, 32, |a| a.lar(eax, ecx)), Ok(()));
        assert!(!zf(&vm));
        assert_eq!(vm.cpu.reg32(EAX), 7);
        // Conforming code: visible at any privilege.
        vm.cpu.set_reg32(ECX, 0x1B);
        assert_eq!(run(&mut vm, 32, |a| a.lsl(eax, ecx)), Ok(()));
        assert!(zf(&vm));
        assert_eq!(vm.cpu.reg32(EAX), 0x1234);
        assert_eq!(run(&mut vm, 32, |a| a.verr(cx)), Ok(()));
        assert!(zf(&vm));
        assert_eq!(run(&mut vm, 32, |a| a.verw(cx)), Ok(()));
        assert!(!zf(&vm));
        // Gate types.
        vm.cpu.set_reg32(ECX, 0x23);
        assert_eq!(run(&mut vm, 32, |a| a.lar(eax, ecx)), Ok(()));
        assert!(!zf(&vm));
        vm.cpu.set_reg32(ECX, 0x2B);
        assert_eq!(run(&mut vm, 32, |a| a.lar(eax, ecx)), Ok(()));
        assert!(zf(&vm));
        assert_eq!(vm.cpu.reg32(EAX), 0x0000_EC00);
        assert_eq!(run(&mut vm, 32, |a| a.lsl(eax, ecx)), Ok(()));
        assert!(!zf(&vm));
        // Execute-only code: not readable.
        vm.cpu.set_reg32(ECX, 0x33);
        assert_eq!(run(&mut vm, 32, |a| a.verr(cx)), Ok(()));
        assert!(!zf(&vm));
        // Writable DPL 3 data: VERW yes.
        vm.cpu.set_reg32(ECX, 0x0B);
        assert_eq!(run(&mut vm, 32, |a| a.verw(cx)), Ok(()));
        assert!(zf(&vm));
        // Null and beyond the limit: ZF=0, no fault.
        for sel in [0u32, 3, 0x1000] {
            vm.cpu.set_reg32(ECX, sel);
            vm.cpu.eflags |= flags::ZF;
            assert_eq!(run(&mut vm, 32, |a| a.lar(eax, ecx)), Ok(()));
            assert!(!zf(&vm));
        }
        let mut vm = v86();
        assert_eq!(run(&mut vm, 16, |a| a.lar(ax, cx)), Err(Fault::ud()));
    }

    #[test]
    fn arpl_adjusts_rpl() {
        let mut vm = flat0();
        vm.cpu.set_reg32(EAX, 0x0010);
        vm.cpu.set_reg32(EBX, 0x0003);
        assert_eq!(run(&mut vm, 32, |a| a.arpl(ax, bx)), Ok(()));
        assert_eq!(vm.cpu.reg32(EAX), 0x0013);
        assert_ne!(vm.cpu.eflags & flags::ZF, 0);
        assert_eq!(run(&mut vm, 32, |a| a.arpl(ax, bx)), Ok(()));
        assert_eq!(vm.cpu.eflags & flags::ZF, 0);
        let mut vm = real();
        assert_eq!(run(&mut vm, 16, |a| a.arpl(ax, bx)), Err(Fault::ud()));
        let mut vm = v86();
        assert_eq!(run(&mut vm, 16, |a| a.arpl(ax, bx)), Err(Fault::ud()));
    }

    #[test]
    fn sysenter_sysexit_flat_segments() {
        let mut vm = ring3();
        vm.cpu.eflags |= flags::IF;
        assert_eq!(run(&mut vm, 32, |a| a.sysenter()), Err(Fault::gp(0)));
        vm.cpu.msr.sysenter_cs = 0x0B;
        vm.cpu.msr.sysenter_esp = 0x9000;
        vm.cpu.msr.sysenter_eip = 0xC000_1000;
        assert_eq!(run(&mut vm, 32, |a| a.sysenter()), Ok(()));
        assert_eq!(vm.cpu.eip, 0xC000_1000);
        assert_eq!(vm.cpu.reg32(ESP), 0x9000);
        assert_eq!(vm.cpu.cpl(), 0);
        assert_eq!(vm.cpu.seg(SegReg::Cs).selector, 0x08);
        assert_eq!(vm.cpu.seg(SegReg::Ss).selector, 0x10);
        assert_eq!(vm.cpu.seg(SegReg::Cs).attr, 0xC09B);
        assert_eq!(vm.cpu.seg(SegReg::Ss).attr, 0xC093);
        assert_eq!(vm.cpu.eflags & flags::IF, 0);
        vm.cpu.eip = CODE;
        vm.cpu.set_reg32(ECX, 0x7000);
        vm.cpu.set_reg32(EDX, 0x4000);
        assert_eq!(run(&mut vm, 32, |a| a.sysexit()), Ok(()));
        assert_eq!(vm.cpu.seg(SegReg::Cs).selector, 0x1B);
        assert_eq!(vm.cpu.seg(SegReg::Ss).selector, 0x23);
        assert_eq!(vm.cpu.seg(SegReg::Cs).attr, 0xC0FB);
        assert_eq!(vm.cpu.cpl(), 3);
        assert_eq!(vm.cpu.eip, 0x4000);
        assert_eq!(vm.cpu.reg32(ESP), 0x7000);
        // SYSEXIT at CPL 3: #GP(0); SYSENTER in real mode: #GP(0).
        vm.cpu.eip = CODE;
        assert_eq!(run(&mut vm, 32, |a| a.sysexit()), Err(Fault::gp(0)));
        let mut vm = real();
        vm.cpu.msr.sysenter_cs = 0x08;
        assert_eq!(run(&mut vm, 16, |a| a.sysenter()), Err(Fault::gp(0)));
    }
}
