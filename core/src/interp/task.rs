//! Hardware task switching (SDM Vol. 3 7.3): from JMP/CALL to a TSS or
//! task gate, from IRET with NT set, and from an interrupt or exception
//! through a task gate. 32-bit and 16-bit TSS formats.
//!
//! Callers (`segment` for JMP/CALL, `interrupt` for gates and IRET) do the
//! checks on the gate and on the new TSS descriptor's type and presence;
//! this module checks the TSS limit, saves the outgoing state, handles the
//! busy bits, back link and NT, and loads the new state. Faults raised
//! while loading the new segments are returned after the switch has
//! committed, so they are delivered in the new task's context.

use super::segment::{
    descriptor_addr, fetch_desc, null_segment, sel_err, set_accessed, sys, v86_segment, Desc,
    SEL_RPL, SEL_TI,
};
use super::Table;
use crate::cpu::{cr0, flags, SegReg};
use crate::exception::{vector, Fault};
use crate::mmu::Access;
use crate::vm::Vm;

/// What caused the switch; it decides the busy bits, back link and NT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskSource {
    Jmp,
    Call,
    Iret,
    /// Interrupt or exception through a task gate.
    Int,
}

/// Smallest limit of a 32-bit TSS (SDM Vol. 3 7.2.2).
const TSS32_MIN_LIMIT: u32 = 0x67;
/// Smallest limit of a 16-bit TSS (SDM Vol. 3 7.6).
const TSS16_MIN_LIMIT: u32 = 0x2B;
/// Descriptor high dword: TSS busy bit (type bit 1).
const HI_BUSY: u32 = 1 << 9;
/// DR7 bits a task switch clears: the local enables L0-L3.
const DR7_LOCAL: u32 = 0x55;
/// DR6.BT: the #DB was raised by the T bit of the new TSS.
const DR6_BT: u32 = 1 << 15;

/// 32-bit TSS field offsets (SDM Vol. 3 Figure 7-2).
mod tss32 {
    pub const CR3: u32 = 0x1C;
    pub const EIP: u32 = 0x20;
    pub const EFLAGS: u32 = 0x24;
    /// EAX; the other GPRs follow in encoding order, 4 bytes apart.
    pub const GPR: u32 = 0x28;
    /// ES; CS, SS, DS, FS, GS follow, 4 bytes apart.
    pub const SEG: u32 = 0x48;
    pub const LDT: u32 = 0x60;
    /// Bit 0: debug trap on entry.
    pub const TRAP: u32 = 0x64;
}

/// 16-bit TSS field offsets (SDM Vol. 3 Figure 7-11).
mod tss16 {
    pub const IP: u32 = 0x0E;
    pub const FLAGS: u32 = 0x10;
    /// AX; the other GPRs follow in encoding order, 2 bytes apart.
    pub const GPR: u32 = 0x12;
    /// ES; CS, SS, DS follow, 2 bytes apart.
    pub const SEG: u32 = 0x22;
    pub const LDT: u32 = 0x2A;
}

/// The dynamic state read from the incoming TSS.
struct TaskState {
    cr3: Option<u32>,
    eip: u32,
    eflags: u32,
    gpr: [u32; 8],
    sel: [u16; 6],
    ldt: u16,
    trap: bool,
}

fn rd(vm: &mut Vm, lin: u32, size: usize) -> Result<u32, Fault> {
    Ok(vm.read_lin(lin, size, Access::READ)? as u32)
}

fn read_state(vm: &mut Vm, base: u32, is32: bool) -> Result<TaskState, Fault> {
    let mut st = TaskState {
        cr3: None,
        eip: 0,
        eflags: 0,
        gpr: [0; 8],
        sel: [0; 6],
        ldt: 0,
        trap: false,
    };
    if is32 {
        st.cr3 = Some(rd(vm, base.wrapping_add(tss32::CR3), 4)?);
        st.eip = rd(vm, base.wrapping_add(tss32::EIP), 4)?;
        st.eflags = rd(vm, base.wrapping_add(tss32::EFLAGS), 4)?;
        for i in 0..8 {
            st.gpr[i] = rd(vm, base.wrapping_add(tss32::GPR + 4 * i as u32), 4)?;
        }
        for i in 0..6 {
            st.sel[i] = rd(vm, base.wrapping_add(tss32::SEG + 4 * i as u32), 2)? as u16;
        }
        st.ldt = rd(vm, base.wrapping_add(tss32::LDT), 2)? as u16;
        st.trap = rd(vm, base.wrapping_add(tss32::TRAP), 2)? & 1 != 0;
    } else {
        // The upper halves of EIP, EFLAGS and the GPRs keep their values;
        // FS and GS do not exist in a 16-bit TSS and become null.
        st.eip = rd(vm, base.wrapping_add(tss16::IP), 2)?;
        st.eflags = (vm.cpu.eflags & 0xFFFF_0000) | rd(vm, base.wrapping_add(tss16::FLAGS), 2)?;
        for i in 0..8 {
            let lo = rd(vm, base.wrapping_add(tss16::GPR + 2 * i as u32), 2)?;
            st.gpr[i] = (vm.cpu.gpr[i] as u32 & 0xFFFF_0000) | lo;
        }
        for i in 0..4 {
            st.sel[i] = rd(vm, base.wrapping_add(tss16::SEG + 2 * i as u32), 2)? as u16;
        }
        st.ldt = rd(vm, base.wrapping_add(tss16::LDT), 2)? as u16;
    }
    Ok(st)
}

/// Check that `[lin, lin+len)` can be written by a supervisor access.
fn probe_write(vm: &mut Vm, lin: u32, len: u32) -> Result<(), Fault> {
    let mut off = 0;
    while off < len {
        vm.translate(lin.wrapping_add(off), Access::WRITE)?;
        off = (off + 0x1000) & !0xFFF;
    }
    vm.translate(lin.wrapping_add(len - 1), Access::WRITE)?;
    Ok(())
}

/// Set or clear the busy bit of the TSS descriptor `sel` in the GDT.
fn set_busy(vm: &mut Vm, sel: u16, busy: bool) -> Result<(), Fault> {
    let lin = descriptor_addr(vm, sel)?.wrapping_add(4);
    let hi = rd(vm, lin, 4)?;
    let hi = if busy { hi | HI_BUSY } else { hi & !HI_BUSY };
    vm.write_lin(lin, 4, hi as u64, Access::WRITE)
}

/// The TSS descriptor a task switch goes to, with the checks every source
/// makes before switching (SDM Vol. 3 7.3 steps 1-2): a GDT selector
/// (TI = 0), a TSS type that is busy for an IRET task return and available
/// otherwise (else `bad(code)`, #GP or #TS by source), present (else
/// #NP(code)). `code` is the selector's error code.
pub fn target_tss(
    vm: &mut Vm,
    sel: u16,
    code: u32,
    busy: bool,
    bad: fn(u32) -> Fault,
) -> Result<Desc, Fault> {
    if sel & SEL_TI != 0 {
        return Err(bad(code));
    }
    let d = fetch_desc(vm, sel, bad(code))?;
    let ok = if busy {
        matches!(d.typ(), sys::TSS16_BUSY | sys::TSS32_BUSY)
    } else {
        matches!(d.typ(), sys::TSS16_AVAIL | sys::TSS32_AVAIL)
    };
    if !d.system() || !ok {
        return Err(bad(code));
    }
    if !d.present() {
        return Err(Fault::np(code));
    }
    Ok(d)
}

/// Switch to the task whose TSS descriptor is `d` (selector `sel`).
/// `ret_eip` is the EIP saved for the outgoing task; `ext` sets EXT in
/// the error codes of faults raised here (delivery of an external event).
pub fn task_switch(
    vm: &mut Vm,
    sel: u16,
    d: Desc,
    src: TaskSource,
    ret_eip: u32,
    ext: bool,
) -> Result<(), Fault> {
    let code = sel_err(sel, ext);
    let new32 = d.typ() & 8 != 0;
    let min = if new32 {
        TSS32_MIN_LIMIT
    } else {
        TSS16_MIN_LIMIT
    };
    if d.limit() < min {
        return Err(Fault::ts(code));
    }
    let new_base = d.base();
    let tr = vm.cpu.tr;
    let old32 = tr.sys_type() & 8 != 0;
    let old_min = if old32 {
        TSS32_MIN_LIMIT
    } else {
        TSS16_MIN_LIMIT
    };
    if tr.limit < old_min {
        return Err(Fault::ts(sel_err(tr.selector, ext)));
    }
    // Everything that can fault on the old task's side comes first.
    let st = read_state(vm, new_base, new32)?;
    if old32 {
        probe_write(
            vm,
            tr.base.wrapping_add(tss32::EIP),
            tss32::LDT - tss32::EIP,
        )?;
    } else {
        probe_write(vm, tr.base.wrapping_add(tss16::IP), tss16::LDT - tss16::IP)?;
    }
    let nests = matches!(src, TaskSource::Call | TaskSource::Int);
    if nests {
        probe_write(vm, new_base, 2)?;
    }

    // Outgoing task: busy bit, NT, saved state (SDM Vol. 3 7.3 steps 7-9).
    if matches!(src, TaskSource::Jmp | TaskSource::Iret) {
        set_busy(vm, tr.selector, false)?;
    }
    let mut old_flags = vm.cpu.eflags;
    if src == TaskSource::Iret {
        old_flags &= !flags::NT;
    }
    let cpu = vm.cpu.clone();
    if old32 {
        let b = tr.base;
        vm.write_lin(b.wrapping_add(tss32::EIP), 4, ret_eip as u64, Access::WRITE)?;
        vm.write_lin(
            b.wrapping_add(tss32::EFLAGS),
            4,
            old_flags as u64,
            Access::WRITE,
        )?;
        for i in 0..8 {
            let a = b.wrapping_add(tss32::GPR + 4 * i as u32);
            vm.write_lin(a, 4, cpu.gpr[i] as u32 as u64, Access::WRITE)?;
        }
        for i in 0..6 {
            let a = b.wrapping_add(tss32::SEG + 4 * i as u32);
            vm.write_lin(a, 2, cpu.seg[i].selector as u64, Access::WRITE)?;
        }
    } else {
        let b = tr.base;
        vm.write_lin(
            b.wrapping_add(tss16::IP),
            2,
            ret_eip as u16 as u64,
            Access::WRITE,
        )?;
        vm.write_lin(
            b.wrapping_add(tss16::FLAGS),
            2,
            old_flags as u16 as u64,
            Access::WRITE,
        )?;
        for i in 0..8 {
            let a = b.wrapping_add(tss16::GPR + 2 * i as u32);
            vm.write_lin(a, 2, cpu.gpr[i] as u16 as u64, Access::WRITE)?;
        }
        for i in 0..4 {
            let a = b.wrapping_add(tss16::SEG + 2 * i as u32);
            vm.write_lin(a, 2, cpu.seg[i].selector as u64, Access::WRITE)?;
        }
    }

    // Incoming task: back link, NT, busy bit, TR, CR0.TS.
    let mut new_flags = st.eflags;
    if nests {
        vm.write_lin(new_base, 2, tr.selector as u64, Access::WRITE)?;
        new_flags |= flags::NT;
    }
    let mut nd = d;
    if src != TaskSource::Iret {
        set_busy(vm, sel, true)?;
    }
    nd.hi |= HI_BUSY;
    vm.cpu.tr = nd.segment(sel);
    vm.cpu.cr0 |= cr0::TS;
    // Local breakpoint enables belong to the old task (SDM Vol. 3 17.2.4).
    vm.cpu.dr[7] &= !DR7_LOCAL;

    // From here on faults belong to the new task (SDM Vol. 3 7.3 step 12).
    if let Some(cr3) = st.cr3 {
        if vm.cpu.paging() {
            vm.cpu.cr3 = cr3;
            vm.mmu.set_cr3(&vm.cpu);
        }
    }
    vm.cpu.eip = st.eip;
    vm.cpu.eflags = (new_flags & flags::DEFINED) | flags::FIXED1;
    for i in 0..8 {
        if new32 {
            vm.cpu.set_reg32(i, st.gpr[i]);
        } else {
            vm.cpu.gpr[i] = (vm.cpu.gpr[i] & !0xFFFF_FFFF) | st.gpr[i] as u64;
        }
    }
    // Selectors are visible before their descriptors load.
    for i in 0..6 {
        vm.cpu.seg[i] = null_segment(st.sel[i]);
    }
    vm.cpu.ldtr = null_segment(st.ldt);
    load_task_segments(vm, &st, ext)?;
    if vm.cpu.eip > vm.cpu.seg(SegReg::Cs).limit {
        return Err(Fault::gp(ext as u32));
    }
    if st.trap {
        vm.cpu.dr[6] |= DR6_BT;
        return Err(Fault::new(vector::DB));
    }
    Ok(())
}

/// Load LDTR and the six segment registers of the new task with the
/// checks of SDM Vol. 3 7.3 (faults are #TS(selector), not present #NP or
/// #SS).
fn load_task_segments(vm: &mut Vm, st: &TaskState, ext: bool) -> Result<(), Fault> {
    // LDT.
    let ldt = st.ldt;
    if ldt & !SEL_RPL != 0 {
        let c = sel_err(ldt, ext);
        if ldt & SEL_TI != 0 {
            return Err(Fault::ts(c));
        }
        let d = fetch_desc(vm, ldt, Fault::ts(c))?;
        if !d.system() || d.typ() != sys::LDT || !d.present() {
            return Err(Fault::ts(c));
        }
        vm.cpu.ldtr = d.segment(ldt);
    }
    if vm.cpu.eflags & flags::VM != 0 {
        for i in 0..6 {
            vm.cpu.seg[i] = v86_segment(st.sel[i]);
        }
        return Ok(());
    }
    // CS sets the new CPL.
    let cs = st.sel[SegReg::Cs as usize];
    let c = sel_err(cs, ext);
    if cs & !SEL_RPL == 0 {
        return Err(Fault::ts(c));
    }
    let mut d = fetch_desc(vm, cs, Fault::ts(c))?;
    let cpl = (cs & SEL_RPL) as u8;
    if !d.is_code() || (d.conforming() && d.dpl() > cpl) || (!d.conforming() && d.dpl() != cpl) {
        return Err(Fault::ts(c));
    }
    if !d.present() {
        return Err(Fault::np(c));
    }
    set_accessed(vm, cs, &mut d)?;
    vm.cpu.seg[SegReg::Cs as usize] = d.segment(cs);
    // SS.
    let ss = st.sel[SegReg::Ss as usize];
    let c = sel_err(ss, ext);
    if ss & !SEL_RPL == 0 {
        return Err(Fault::ts(c));
    }
    let mut d = fetch_desc(vm, ss, Fault::ts(c))?;
    if (ss & SEL_RPL) as u8 != cpl || d.dpl() != cpl || !d.writable() {
        return Err(Fault::ts(c));
    }
    if !d.present() {
        return Err(Fault::ss(c));
    }
    set_accessed(vm, ss, &mut d)?;
    vm.cpu.seg[SegReg::Ss as usize] = d.segment(ss);
    // Data segments.
    for seg in [SegReg::Es, SegReg::Ds, SegReg::Fs, SegReg::Gs] {
        let s = st.sel[seg as usize];
        if s & !SEL_RPL == 0 {
            continue;
        }
        let c = sel_err(s, ext);
        let mut d = fetch_desc(vm, s, Fault::ts(c))?;
        let rpl = (s & SEL_RPL) as u8;
        if !(d.is_data() || d.readable()) {
            return Err(Fault::ts(c));
        }
        if !d.conforming() && (d.dpl() < cpl || d.dpl() < rpl) {
            return Err(Fault::ts(c));
        }
        if !d.present() {
            return Err(Fault::np(c));
        }
        set_accessed(vm, s, &mut d)?;
        vm.cpu.seg[seg as usize] = d.segment(s);
    }
    Ok(())
}

pub(super) fn register(_t: &mut Table) {}
