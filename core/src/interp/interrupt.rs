//! Event delivery: exceptions, software and external interrupts through the
//! IVT (real mode) or IDT (protected and V86 mode) with interrupt, trap and
//! task gates, stack switches from the TSS, error codes with EXT/IDT bits
//! (SDM Vol. 3 6.13), the double- and triple-fault rules (6.15), and the
//! instructions that raise or return from them: INT n, INT3, INTO, INT1,
//! IRET.
//!
//! Segment-descriptor checks and stack frames come from `segment`, task
//! switches from `task`.

use iced_x86::{Code, Instruction, Mnemonic};

use super::segment::{
    check_return_cs, check_return_ss, check_tss_ss, fetch_desc, null_inaccessible, null_segment,
    push_frame, real_or_v86_cs, real_segment, sel_err, set_accessed, set_sp_sized, sys, tss_stack,
    v86_segment, Desc, SEL_RPL,
};
use super::task::{self, TaskSource};
use super::{Ctx, Table};
use crate::cpu::{cr4, flags, CpuState, SegReg, ESP};
use crate::engine::ShutdownReason;
use crate::exception::{vector, Fault};
use crate::mmu::Access;
use crate::vm::Vm;

/// DR6.BS: the #DB was a single-step trap.
const DR6_BS: u32 = 1 << 14;
/// Real-mode IRETD keeps these EFLAGS bits from the popped image (SDM
/// Vol. 2 IRET, real-address mode: AND 257FD5H).
const REAL_IRETD_MASK: u32 = 0x0025_7FD5;
/// ... and these from the current EFLAGS (VIP, VIF, VM: 1A0000H).
const REAL_IRETD_KEEP: u32 = 0x001A_0000;

/// Most deliveries one event may chain through before the machine is
/// declared shut down (see `deliver_chain`).
const MAX_CHAIN: usize = 64;

/// Where an event comes from; it decides the gate DPL check and EXT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An exception raised by the processor (fault, trap or abort).
    Exception,
    /// An external interrupt or NMI.
    External,
    /// INT n, INT3, INTO: gate DPL checked against CPL, EXT = 0.
    Software,
    /// INT1 (ICEBP): no gate DPL check, EXT = 1.
    Icebp,
}

/// Which software-interrupt instruction raised the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftKind {
    /// INT n (CD ib): IOPL-sensitive in V86 mode.
    IntN,
    Int3,
    Into,
    Int1,
}

/// One event to deliver.
#[derive(Clone, Copy, Debug)]
struct Event {
    vector: u8,
    error_code: Option<u32>,
    kind: EventKind,
    /// EIP the handler returns to.
    ret_eip: u32,
}

impl Event {
    fn ext(&self) -> bool {
        self.kind != EventKind::Software
    }
    /// Fault-class exceptions push EFLAGS with RF set so that the
    /// restarted instruction does not hit an instruction breakpoint
    /// again (SDM Vol. 3 17.3.1.1).
    fn sets_rf(&self) -> bool {
        self.kind == EventKind::Exception
            && matches!(
                self.vector,
                0 | 5 | 6 | 7 | 10 | 11 | 12 | 13 | 14 | 16 | 17 | 19
            )
    }
}

/// Double-fault classes (SDM Vol. 3 6.15, Table 6-4).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Benign,
    Contributory,
    PageFault,
}

fn class(kind: EventKind, vector: u8) -> Class {
    if kind != EventKind::Exception {
        return Class::Benign;
    }
    match vector {
        0 | 10 | 11 | 12 | 13 => Class::Contributory,
        14 => Class::PageFault,
        _ => Class::Benign,
    }
}

/// Deliver a pending NMI or external interrupt if one may be taken now.
/// Returns whether one was delivered. A delivered event wakes a halted
/// CPU.
pub fn take_pending(vm: &mut Vm) -> Result<bool, ShutdownReason> {
    if vm.cpu.interrupt_shadow {
        return Ok(false);
    }
    let vector = if vm.cpu.pending_nmi && !vm.cpu.nmi_blocked {
        vm.cpu.pending_nmi = false;
        // Blocked from delivery until the next IRET (SDM Vol. 3 6.7.1).
        vm.cpu.nmi_blocked = true;
        vector::NMI
    } else if vm.cpu.eflags & flags::IF != 0 {
        match vm.cpu.pending_irq.take() {
            Some(v) => v,
            None => match vm.intc.as_mut() {
                // INTA: the controller hands over the vector now.
                Some(c) if c.intr() => c.ack(),
                _ => return Ok(false),
            },
        }
    } else {
        return Ok(false);
    };
    let ev = Event {
        vector,
        error_code: None,
        kind: EventKind::External,
        ret_eip: vm.cpu.eip,
    };
    deliver_chain(vm, ev)?;
    Ok(true)
}

/// Deliver an exception raised by the instruction at `vm.cpu.eip`.
pub fn deliver_exception(vm: &mut Vm, f: Fault) -> Result<(), ShutdownReason> {
    let ev = Event {
        vector: f.vector,
        error_code: f.error_code,
        kind: EventKind::Exception,
        ret_eip: vm.cpu.eip,
    };
    if let Some(a) = f.cr2 {
        vm.cpu.cr2 = a;
    }
    deliver_chain(vm, ev)
}

/// The single-step trap after an instruction executed with TF set.
pub fn single_step_trap(vm: &mut Vm) -> Result<(), ShutdownReason> {
    vm.cpu.dr[6] |= DR6_BS;
    let ev = Event {
        vector: vector::DB,
        error_code: None,
        kind: EventKind::Exception,
        ret_eip: vm.cpu.eip,
    };
    deliver_chain(vm, ev)
}

/// Whether `ins`, which just retired, delivered a software interrupt:
/// the single-step trap it would owe is then discarded, as hardware does
/// for the handler's new context (TF was cleared on delivery; an INTO
/// that did not trap left TF alone).
pub fn delivered_software_interrupt(ins: &Instruction, cpu: &CpuState) -> bool {
    matches!(
        ins.mnemonic(),
        Mnemonic::Int | Mnemonic::Int3 | Mnemonic::Into | Mnemonic::Int1
    ) && cpu.eflags & flags::TF == 0
}

/// Deliver `first`, and whatever its delivery raises, by the double-fault
/// rules (SDM Vol. 3 6.15 Table 6-5): a contributory fault during a
/// contributory one, or a contributory/#PF during a #PF, becomes #DF with
/// error code 0; anything else is delivered in turn; a fault while
/// delivering #DF shuts the machine down.
fn deliver_chain(vm: &mut Vm, first: Event) -> Result<(), ShutdownReason> {
    let mut ev = first;
    for _ in 0..MAX_CHAIN {
        let err = match deliver(vm, &ev) {
            Ok(()) => {
                // The handler starts with no shadow and awake.
                vm.cpu.halted = false;
                vm.cpu.interrupt_shadow = false;
                return Ok(());
            }
            Err(f) => f,
        };
        if ev.kind == EventKind::Exception && ev.vector == vector::DF {
            return Err(ShutdownReason::TripleFault);
        }
        let a = class(ev.kind, ev.vector);
        let b = class(EventKind::Exception, err.vector);
        let double = matches!(
            (a, b),
            (Class::Contributory, Class::Contributory)
                | (Class::PageFault, Class::Contributory)
                | (Class::PageFault, Class::PageFault)
        );
        ev = if double {
            Event {
                vector: vector::DF,
                error_code: Some(0),
                kind: EventKind::Exception,
                ret_eip: vm.cpu.eip,
            }
        } else {
            if let Some(a) = err.cr2 {
                vm.cpu.cr2 = a;
            }
            Event {
                vector: err.vector,
                error_code: err.error_code,
                kind: EventKind::Exception,
                ret_eip: vm.cpu.eip,
            }
        };
    }
    // Only benign exceptions raised by task switches (#DB from a T bit)
    // can chain without reaching #DF; a guest that loops them forever is
    // as dead as one that triple-faults.
    Err(ShutdownReason::TripleFault)
}

/// One delivery attempt. Commits nothing unless it succeeds, except for
/// what a task switch commits before its own faults.
fn deliver(vm: &mut Vm, ev: &Event) -> Result<(), Fault> {
    if vm.cpu.real() {
        deliver_real(vm, ev)
    } else {
        deliver_protected(vm, ev)
    }
}

/// Real mode: through the IVT at IDTR.base (SDM Vol. 3 20.1.4).
fn deliver_real(vm: &mut Vm, ev: &Event) -> Result<(), Fault> {
    let v = ev.vector as u32;
    if v * 4 + 3 > vm.cpu.idtr.limit as u32 {
        return Err(Fault::gp(0));
    }
    let entry = vm.read_lin(vm.cpu.idtr.base.wrapping_add(v * 4), 4, Access::READ)? as u32;
    let (ip, cs) = (entry & 0xFFFF, (entry >> 16) as u16);
    let cpu = &vm.cpu;
    let ss = *cpu.seg(SegReg::Ss);
    let items = [
        cpu.eflags & 0xFFFF,
        cpu.seg(SegReg::Cs).selector as u32,
        ev.ret_eip & 0xFFFF,
    ];
    let sp = push_frame(
        vm,
        &ss,
        cpu.sp(),
        false,
        &items,
        2,
        Access::WRITE,
        Fault::ss(0),
    )?;
    let cpu = &mut vm.cpu;
    cpu.set_sp(sp);
    let new_cs = real_segment(cpu.seg(SegReg::Cs), cs);
    cpu.seg[SegReg::Cs as usize] = new_cs;
    cpu.eip = ip;
    cpu.eflags &= !(flags::IF | flags::TF | flags::AC);
    Ok(())
}

/// Protected and V86 mode: through the IDT (SDM Vol. 2 INT n operation,
/// Vol. 3 6.12).
fn deliver_protected(vm: &mut Vm, ev: &Event) -> Result<(), Fault> {
    let ext = ev.ext();
    let v = ev.vector as u32;
    let idt_code = v * 8 + 2 + ext as u32;
    if v * 8 + 7 > vm.cpu.idtr.limit as u32 {
        return Err(Fault::gp(idt_code));
    }
    let raw = vm.read_lin(vm.cpu.idtr.base.wrapping_add(v * 8), 8, Access::READ)?;
    let gate = Desc {
        lo: raw as u32,
        hi: (raw >> 32) as u32,
    };
    let typ = gate.typ();
    let valid = matches!(
        typ,
        sys::TASK_GATE | sys::INT_GATE16 | sys::TRAP_GATE16 | sys::INT_GATE32 | sys::TRAP_GATE32
    );
    if !gate.system() || !valid {
        return Err(Fault::gp(idt_code));
    }
    let cpl = vm.cpu.cpl();
    if ev.kind == EventKind::Software && gate.dpl() < cpl {
        return Err(Fault::gp(v * 8 + 2));
    }
    if !gate.present() {
        return Err(Fault::np(idt_code));
    }
    if typ == sys::TASK_GATE {
        return through_task_gate(vm, ev, gate);
    }

    // Interrupt or trap gate: checks on the target code segment.
    let csel = gate.gate_selector();
    if csel & !SEL_RPL == 0 {
        return Err(Fault::gp(ext as u32));
    }
    let ccode = sel_err(csel, ext);
    let mut cd = fetch_desc(vm, csel, Fault::gp(ccode))?;
    if !cd.is_code() || cd.dpl() > cpl {
        return Err(Fault::gp(ccode));
    }
    if !cd.present() {
        return Err(Fault::np(ccode));
    }
    let from_v86 = vm.cpu.v86();
    let inner = !cd.conforming() && cd.dpl() < cpl;
    if from_v86 && (!inner || cd.dpl() != 0) {
        // A V86 handler must be non-conforming ring 0 code.
        return Err(Fault::gp(ccode));
    }
    let off = gate.gate_offset();
    if off > cd.limit() {
        return Err(Fault::gp(ext as u32));
    }
    let size: u32 = if typ & 8 != 0 { 4 } else { 2 };
    let mut eflags = vm.cpu.eflags;
    if ev.sets_rf() {
        eflags |= flags::RF;
    }
    let cpu = &vm.cpu;
    let old_cs = cpu.seg(SegReg::Cs).selector as u32;
    let mut items = Vec::with_capacity(10);
    let new_cpl;
    if inner {
        new_cpl = cd.dpl();
        let (ss_sel, sp) = tss_stack(vm, new_cpl, ext)?;
        let mut sd = check_tss_ss(vm, ss_sel, new_cpl, ext, ext as u32)?;
        let ss = sd.segment(ss_sel);
        let cpu = &vm.cpu;
        if from_v86 {
            for s in [SegReg::Gs, SegReg::Fs, SegReg::Ds, SegReg::Es] {
                items.push(cpu.seg(s).selector as u32);
            }
        }
        items.push(cpu.seg(SegReg::Ss).selector as u32);
        items.push(cpu.gpr[ESP] as u32);
        items.extend([eflags, old_cs, ev.ret_eip]);
        items.extend(ev.error_code);
        let acc = Access::WRITE.at_cpl(new_cpl);
        let fault = Fault::ss(sel_err(ss_sel, ext));
        let sp = push_frame(vm, &ss, sp, ss.big(), &items, size, acc, fault)?;
        set_accessed(vm, ss_sel, &mut sd)?;
        set_accessed(vm, csel, &mut cd)?;
        let cpu = &mut vm.cpu;
        cpu.seg[SegReg::Ss as usize] = sd.segment(ss_sel);
        set_sp_sized(cpu, sp, ss.big());
        if from_v86 {
            for s in [SegReg::Es, SegReg::Ds, SegReg::Fs, SegReg::Gs] {
                *cpu.seg_mut(s) = null_segment(0);
            }
        }
    } else {
        new_cpl = cpl;
        items.extend([eflags, old_cs, ev.ret_eip]);
        items.extend(ev.error_code);
        let ss = *cpu.seg(SegReg::Ss);
        let (sp, big) = (cpu.sp(), cpu.stack32());
        let acc = Access::WRITE.at_cpl(cpl);
        let sp = push_frame(vm, &ss, sp, big, &items, size, acc, Fault::ss(ext as u32))?;
        set_accessed(vm, csel, &mut cd)?;
        vm.cpu.set_sp(sp);
    }
    let cpu = &mut vm.cpu;
    cpu.seg[SegReg::Cs as usize] = cd.segment((csel & !SEL_RPL) | new_cpl as u16);
    cpu.eip = off;
    cpu.eflags &= !(flags::TF | flags::NT | flags::RF | flags::VM);
    if matches!(typ, sys::INT_GATE16 | sys::INT_GATE32) {
        cpu.eflags &= !flags::IF;
    }
    Ok(())
}

/// Delivery through a task gate: switch tasks, then push the error code on
/// the new task's stack (SDM Vol. 3 6.12.2).
fn through_task_gate(vm: &mut Vm, ev: &Event, gate: Desc) -> Result<(), Fault> {
    let ext = ev.ext();
    let tsel = gate.gate_selector();
    let td = task::target_tss(vm, tsel, sel_err(tsel, ext), false, Fault::gp)?;
    task::task_switch(vm, tsel, td, TaskSource::Int, ev.ret_eip, ext)?;
    if let Some(code) = ev.error_code {
        let size = if td.typ() & 8 != 0 { 4 } else { 2 };
        let cpu = &vm.cpu;
        let ss = *cpu.seg(SegReg::Ss);
        let (sp, big) = (cpu.sp(), cpu.stack32());
        let acc = Access::WRITE.at_cpl(cpu.cpl());
        let sp = push_frame(vm, &ss, sp, big, &[code], size, acc, Fault::ss(ext as u32))?;
        vm.cpu.set_sp(sp);
    }
    Ok(())
}

/// INT n / INT3 / INTO / INT1 from an instruction whose return address is
/// `ctx.next_eip` (SDM Vol. 2 INT n). On success `ctx.next_eip` is the
/// handler's entry; a fault leaves the guest at the instruction.
pub fn deliver_software(ctx: &mut Ctx, vector: u8, kind: SoftKind) -> Result<(), Fault> {
    let vm = &mut *ctx.vm;
    if vm.cpu.v86() && kind == SoftKind::IntN {
        let redirect = if vm.cpu.cr4 & cr4::VME != 0 {
            vme_redirected(vm, vector)?
        } else {
            false
        };
        if redirect {
            return v86_redirect(ctx, vector);
        }
        if vm.cpu.iopl() < 3 {
            return Err(Fault::gp(0));
        }
    }
    let ev = Event {
        vector,
        error_code: None,
        kind: if kind == SoftKind::Int1 {
            EventKind::Icebp
        } else {
            EventKind::Software
        },
        ret_eip: ctx.next_eip,
    };
    let r = deliver(vm, &ev);
    // A task switch commits before its own faults: continue from the
    // new task either way.
    ctx.next_eip = vm.cpu.eip;
    r?;
    vm.cpu.halted = false;
    Ok(())
}

/// Offset of the I/O map base field in a 32-bit TSS; the 32-byte
/// interrupt redirection bitmap sits just below the I/O map (SDM Vol. 3
/// 20.3.3.5).
const TSS_IOMAP_BASE: u32 = 0x66;
const REDIRECTION_BITMAP_LEN: u32 = 32;

/// With CR4.VME, whether INT `vector` in V86 mode is redirected to the
/// 8086 handler (its bit in the TSS redirection bitmap is clear). A bitmap
/// outside the TSS limit is #GP(0).
fn vme_redirected(vm: &mut Vm, vector: u8) -> Result<bool, Fault> {
    let tr = vm.cpu.tr;
    if tr.sys_type() & 8 == 0 || tr.limit < TSS_IOMAP_BASE + 1 {
        return Err(Fault::gp(0));
    }
    let map = vm.read_lin(tr.base.wrapping_add(TSS_IOMAP_BASE), 2, Access::READ)? as u32;
    let off = (map + vector as u32 / 8).wrapping_sub(REDIRECTION_BITMAP_LEN);
    if off > tr.limit {
        return Err(Fault::gp(0));
    }
    let byte = vm.read_lin(tr.base.wrapping_add(off), 1, Access::READ)? as u8;
    Ok(byte & (1 << (vector & 7)) == 0)
}

/// VME interrupt redirection: deliver INT n through the V86 task's own
/// IVT at linear 0 like real mode; with IOPL < 3 the pushed FLAGS show
/// IOPL 3 and VIF in place of IF, and VIF is cleared instead of IF (SDM
/// Vol. 2 INT n, Vol. 3 20.3.3.5 method 5).
fn v86_redirect(ctx: &mut Ctx, vector: u8) -> Result<(), Fault> {
    let vm = &mut *ctx.vm;
    let entry = vm.read_lin(vector as u32 * 4, 4, Access::READ)? as u32;
    let cpu = &vm.cpu;
    let iopl3 = cpu.iopl() == 3;
    let mut image = cpu.eflags & 0xFFFF;
    if !iopl3 {
        image = (image & !flags::IF) | flags::IOPL;
        if cpu.eflags & flags::VIF != 0 {
            image |= flags::IF;
        }
    }
    let items = [
        image,
        cpu.seg(SegReg::Cs).selector as u32,
        ctx.next_eip & 0xFFFF,
    ];
    let ss = *cpu.seg(SegReg::Ss);
    let sp = push_frame(
        vm,
        &ss,
        cpu.sp(),
        false,
        &items,
        2,
        Access::WRITE.at_cpl(3),
        Fault::ss(0),
    )?;
    let cpu = &mut vm.cpu;
    cpu.set_sp(sp);
    cpu.seg[SegReg::Cs as usize] = v86_segment((entry >> 16) as u16);
    cpu.eflags &= !(flags::TF | if iopl3 { flags::IF } else { flags::VIF });
    ctx.next_eip = entry & 0xFFFF;
    Ok(())
}

fn int_n(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    deliver_software(ctx, ins.immediate8(), SoftKind::IntN)
}

fn int3(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    deliver_software(ctx, vector::BP, SoftKind::Int3)
}

fn into(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    if ctx.vm.cpu.eflags & flags::OF == 0 {
        return Ok(());
    }
    deliver_software(ctx, vector::OF, SoftKind::Into)
}

fn int1(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    deliver_software(ctx, vector::DB, SoftKind::Int1)
}

/// EFLAGS after a protected-mode IRET that stays out of V86 mode (SDM
/// Vol. 2 IRET): IOPL only at CPL 0, IF only if CPL <= IOPL, VIF/VIP only
/// at CPL 0 with a 32-bit operand; VM never set here.
fn iret_flags(old: u32, popped: u32, osz: u32, cpl: u8, iopl: u8) -> u32 {
    let mut m = flags::STATUS | flags::TF | flags::DF | flags::NT;
    if osz == 4 {
        m |= flags::RF | flags::AC | flags::ID;
        if cpl == 0 {
            m |= flags::VIF | flags::VIP;
        }
    }
    if cpl == 0 {
        m |= flags::IOPL;
    }
    if cpl <= iopl {
        m |= flags::IF;
    }
    (old & !m) | (popped & m) | flags::FIXED1
}

/// IRET/IRETD in every mode (SDM Vol. 2 IRET).
fn iret(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let osz: u32 = match ins.code() {
        Code::Iretw => 2,
        Code::Iretd => 4,
        _ => return Err(Fault::ud()),
    };
    // IRET unblocks NMIs as it starts, even if it then faults.
    ctx.vm.cpu.nmi_blocked = false;
    let cpu = &ctx.vm.cpu;
    if cpu.protected() && !cpu.v86() && cpu.eflags & flags::NT != 0 {
        return task_return(ctx);
    }
    if cpu.v86() && cpu.iopl() < 3 {
        if cpu.cr4 & cr4::VME != 0 && osz == 2 {
            return iret_vme(ctx);
        }
        return Err(Fault::gp(0));
    }
    let u = osz as usize;
    let eip = ctx.peek(0, u)?;
    let sel = ctx.peek(osz, u)? as u16;
    let fl = ctx.peek(2 * osz, u)?;
    let cpu = &ctx.vm.cpu;
    let old = cpu.eflags;
    if cpu.real() || cpu.v86() {
        let new_cs = real_or_v86_cs(cpu, sel);
        if eip > new_cs.limit {
            return Err(Fault::gp(0));
        }
        let keep = match (cpu.real(), osz) {
            // Real mode: IOPL and NT load too.
            (true, 4) => REAL_IRETD_KEEP,
            (true, _) => 0xFFFF_0000,
            // V86 with IOPL 3: IOPL, VM, VIF, VIP stay.
            (false, 4) => flags::VM | flags::IOPL | flags::VIF | flags::VIP,
            (false, _) => 0xFFFF_0000 | flags::IOPL,
        };
        let take = if osz == 4 {
            REAL_IRETD_MASK & !keep
        } else {
            0xFFFF & !keep
        };
        let new_flags = ((old & keep) | (fl & take) | flags::FIXED1) & flags::DEFINED;
        let sp = cpu.sp().wrapping_add(3 * osz);
        let cpu = &mut ctx.vm.cpu;
        cpu.set_sp(sp);
        cpu.seg[SegReg::Cs as usize] = new_cs;
        cpu.eflags = new_flags;
        ctx.next_eip = eip;
        return Ok(());
    }
    let cpl = cpu.cpl();
    let iopl = cpu.iopl();
    if osz == 4 && fl & flags::VM != 0 && cpl == 0 {
        return return_to_v86(ctx, eip, sel, fl);
    }
    let d = check_return_cs(ctx.vm, sel)?;
    let rpl = (sel & SEL_RPL) as u8;
    let new_flags = iret_flags(old, fl, osz, cpl, iopl);
    if rpl == cpl {
        if eip > d.limit() {
            return Err(Fault::gp(0));
        }
        let mut d = d;
        set_accessed(ctx.vm, sel, &mut d)?;
        let cpu = &mut ctx.vm.cpu;
        let sp = cpu.sp().wrapping_add(3 * osz);
        cpu.set_sp(sp);
        cpu.seg[SegReg::Cs as usize] = d.segment(sel);
        cpu.eflags = new_flags;
        ctx.next_eip = eip;
        return Ok(());
    }
    // Return to an outer privilege level.
    let new_sp = ctx.peek(3 * osz, u)?;
    let ss_sel = ctx.peek(4 * osz, u)? as u16;
    let mut sd = check_return_ss(ctx.vm, ss_sel, rpl)?;
    if eip > d.limit() {
        return Err(Fault::gp(0));
    }
    let mut d = d;
    set_accessed(ctx.vm, sel, &mut d)?;
    set_accessed(ctx.vm, ss_sel, &mut sd)?;
    let ss = sd.segment(ss_sel);
    let cpu = &mut ctx.vm.cpu;
    cpu.seg[SegReg::Cs as usize] = d.segment(sel);
    cpu.seg[SegReg::Ss as usize] = ss;
    set_sp_sized(cpu, new_sp, ss.big());
    cpu.eflags = new_flags;
    null_inaccessible(cpu, rpl);
    ctx.next_eip = eip;
    Ok(())
}

/// 16-bit IRET in V86 mode with IOPL < 3 and CR4.VME (SDM Vol. 3
/// 20.3.3.5, 20.4): the popped IF goes to VIF, IOPL and IF stay; a
/// popped TF, or IF with VIP pending, is #GP(0) for the monitor.
fn iret_vme(ctx: &mut Ctx) -> Result<(), Fault> {
    let ip = ctx.peek(0, 2)?;
    let cs = ctx.peek(2, 2)? as u16;
    let fl = ctx.peek(4, 2)?;
    let old = ctx.vm.cpu.eflags;
    if fl & flags::TF != 0 || (fl & flags::IF != 0 && old & flags::VIP != 0) {
        return Err(Fault::gp(0));
    }
    let keep = 0xFFFF_0000 | flags::IOPL | flags::IF;
    let mut new_flags = ((old & keep) | (fl & !keep & 0xFFFF) | flags::FIXED1) & flags::DEFINED;
    new_flags &= !flags::VIF;
    if fl & flags::IF != 0 {
        new_flags |= flags::VIF;
    }
    let cpu = &mut ctx.vm.cpu;
    let sp = cpu.sp().wrapping_add(6);
    cpu.set_sp(sp);
    cpu.seg[SegReg::Cs as usize] = v86_segment(cs);
    cpu.eflags = new_flags;
    ctx.next_eip = ip;
    Ok(())
}

/// IRETD from CPL 0 with VM set in the popped EFLAGS: pop ESP, SS, ES, DS,
/// FS, GS and enter V86 mode (SDM Vol. 2 IRET "RETURN-TO-VIRTUAL-8086-MODE").
fn return_to_v86(ctx: &mut Ctx, eip: u32, cs: u16, fl: u32) -> Result<(), Fault> {
    let mut v = [0u32; 6];
    for (i, slot) in v.iter_mut().enumerate() {
        *slot = ctx.peek(12 + 4 * i as u32, 4)?;
    }
    let [esp, ss, es, ds, fs, gs] = v;
    if eip & 0xFFFF != eip {
        return Err(Fault::gp(0));
    }
    let cpu = &mut ctx.vm.cpu;
    cpu.eflags = (fl & flags::DEFINED) | flags::FIXED1;
    cpu.seg[SegReg::Cs as usize] = v86_segment(cs);
    cpu.seg[SegReg::Ss as usize] = v86_segment(ss as u16);
    cpu.seg[SegReg::Es as usize] = v86_segment(es as u16);
    cpu.seg[SegReg::Ds as usize] = v86_segment(ds as u16);
    cpu.seg[SegReg::Fs as usize] = v86_segment(fs as u16);
    cpu.seg[SegReg::Gs as usize] = v86_segment(gs as u16);
    cpu.set_reg32(ESP, esp);
    ctx.next_eip = eip;
    Ok(())
}

/// IRET with NT set: return to the task named by the back link of the
/// current TSS (SDM Vol. 2 IRET "TASK-RETURN", Vol. 3 7.3).
fn task_return(ctx: &mut Ctx) -> Result<(), Fault> {
    let tr = ctx.vm.cpu.tr;
    let back = ctx.vm.read_lin(tr.base, 2, Access::READ)? as u16;
    let d = task::target_tss(ctx.vm, back, sel_err(back, false), true, Fault::ts)?;
    let r = task::task_switch(ctx.vm, back, d, TaskSource::Iret, ctx.next_eip, false);
    ctx.next_eip = ctx.vm.cpu.eip;
    r
}

pub(super) fn register(t: &mut Table) {
    t.set(&[Mnemonic::Int], int_n);
    t.set(&[Mnemonic::Int3], int3);
    t.set(&[Mnemonic::Into], into);
    t.set(&[Mnemonic::Int1], int1);
    t.set(&[Mnemonic::Iret, Mnemonic::Iretd], iret);
}
