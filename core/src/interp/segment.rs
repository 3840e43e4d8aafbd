//! Segment registers and far control transfers: descriptor-table access,
//! segment-register loads with their protection checks (MOV/POP/LxS),
//! far JMP/CALL/RET directly and through call gates, and the dispatch of
//! JMP/CALL to a TSS or task gate into `task`.
//!
//! It does not own event delivery or IRET (`interrupt`) nor the task
//! switch itself (`task`); both reuse the descriptor helpers here.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use super::operand::seg_of;
use super::task::{self, TaskSource};
use super::{Ctx, Table};
use crate::cpu::{attr, CpuState, SegReg, Segment, ESP};
use crate::exception::Fault;
use crate::mmu::Access;
use crate::vm::Vm;

/// Selector bit: table indicator (1 = LDT).
pub const SEL_TI: u16 = 1 << 2;
/// Selector bits: requested privilege level.
pub const SEL_RPL: u16 = 3;

/// System-descriptor types (S = 0), SDM Vol. 3 3.5, Table 3-2.
pub mod sys {
    /// 16-bit TSS, available.
    pub const TSS16_AVAIL: u8 = 0x1;
    /// Local descriptor table.
    pub const LDT: u8 = 0x2;
    /// 16-bit TSS, busy.
    pub const TSS16_BUSY: u8 = 0x3;
    /// 16-bit call gate.
    pub const CALL_GATE16: u8 = 0x4;
    /// Task gate.
    pub const TASK_GATE: u8 = 0x5;
    /// 16-bit interrupt gate.
    pub const INT_GATE16: u8 = 0x6;
    /// 16-bit trap gate.
    pub const TRAP_GATE16: u8 = 0x7;
    /// 32-bit TSS, available.
    pub const TSS32_AVAIL: u8 = 0x9;
    /// 32-bit TSS, busy.
    pub const TSS32_BUSY: u8 = 0xB;
    /// 32-bit call gate.
    pub const CALL_GATE32: u8 = 0xC;
    /// 32-bit interrupt gate.
    pub const INT_GATE32: u8 = 0xE;
    /// 32-bit trap gate.
    pub const TRAP_GATE32: u8 = 0xF;
    /// Type bit 1 of a TSS descriptor: busy.
    pub const TSS_BUSY_BIT: u8 = 0x2;
}

/// Descriptor high dword: type bit 0, accessed (code/data).
const HI_ACCESSED: u32 = 1 << 8;
/// Descriptor high dword: S (1 = code/data).
const HI_S: u32 = 1 << 12;
/// Descriptor high dword: present.
const HI_P: u32 = 1 << 15;
/// Access rights of every segment register in V86 mode: present, DPL 3,
/// read/write data, accessed (SDM Vol. 3 20.1.1; what VMX requires too).
pub const V86_ATTR: u32 = attr::P | attr::DPL_MASK | attr::S | attr::RW | attr::ACCESSED;

/// A raw 8-byte segment or gate descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    pub lo: u32,
    pub hi: u32,
}

impl Desc {
    /// The 4-bit type field.
    pub fn typ(self) -> u8 {
        ((self.hi >> 8) & 0xF) as u8
    }
    /// S = 0: a system descriptor (TSS, LDT, gate).
    pub fn system(self) -> bool {
        self.hi & HI_S == 0
    }
    pub fn dpl(self) -> u8 {
        ((self.hi >> 13) & 3) as u8
    }
    pub fn present(self) -> bool {
        self.hi & HI_P != 0
    }
    pub fn is_code(self) -> bool {
        !self.system() && self.typ() & 8 != 0
    }
    pub fn is_data(self) -> bool {
        !self.system() && self.typ() & 8 == 0
    }
    pub fn conforming(self) -> bool {
        self.is_code() && self.typ() & 4 != 0
    }
    pub fn readable(self) -> bool {
        self.is_code() && self.typ() & 2 != 0
    }
    pub fn writable(self) -> bool {
        self.is_data() && self.typ() & 2 != 0
    }
    /// Gate: the target selector.
    pub fn gate_selector(self) -> u16 {
        (self.lo >> 16) as u16
    }
    /// Gate: the target offset (16-bit gates use the low half only).
    pub fn gate_offset(self) -> u32 {
        let off = (self.lo & 0xFFFF) | (self.hi & 0xFFFF_0000);
        if self.typ() & 8 != 0 {
            off
        } else {
            off & 0xFFFF
        }
    }
    /// Call gate: number of stack parameters to copy.
    pub fn param_count(self) -> u32 {
        self.hi & 0x1F
    }
    /// The descriptor cache a segment register loaded with `sel` holds.
    pub fn segment(self, sel: u16) -> Segment {
        Segment::from_descriptor(sel, self.lo, self.hi)
    }
    /// The byte limit (scaled by G).
    pub fn limit(self) -> u32 {
        self.segment(0).limit
    }
    pub fn base(self) -> u32 {
        self.segment(0).base
    }
}

/// Linear address of the descriptor `sel` names, checked against the
/// GDT or LDT limit (SDM Vol. 3 3.4.2). A selector beyond the limit, or a
/// TI=1 selector with no usable LDT, is #GP(selector & ~3).
pub fn descriptor_addr(vm: &Vm, sel: u16) -> Result<u32, Fault> {
    let cpu = &vm.cpu;
    let index = (sel & !7) as u32;
    let (base, limit) = if sel & SEL_TI != 0 {
        if cpu.ldtr.unusable() || cpu.ldtr.selector & !3 == 0 {
            return Err(Fault::gp((sel & !3) as u32));
        }
        (cpu.ldtr.base, cpu.ldtr.limit)
    } else {
        (cpu.gdtr.base, cpu.gdtr.limit as u32)
    };
    if index + 7 > limit {
        return Err(Fault::gp((sel & !3) as u32));
    }
    Ok(base.wrapping_add(index))
}

/// Read the two dwords (low, high) of the descriptor `sel` names, with a
/// supervisor access (descriptor-table reads are implicit supervisor
/// accesses even at CPL 3, SDM Vol. 3 4.6.1).
pub fn descriptor(vm: &mut Vm, sel: u16) -> Result<(u32, u32), Fault> {
    let lin = descriptor_addr(vm, sel)?;
    let raw = vm.read_lin(lin, 8, Access::READ)?;
    Ok((raw as u32, (raw >> 32) as u32))
}

/// Read the descriptor `sel` names; a selector outside its table raises
/// `bad` instead of #GP (task switches raise #TS, deliveries add EXT).
pub fn fetch_desc(vm: &mut Vm, sel: u16, bad: Fault) -> Result<Desc, Fault> {
    let lin = descriptor_addr(vm, sel).map_err(|_| bad)?;
    let raw = vm.read_lin(lin, 8, Access::READ)?;
    Ok(Desc {
        lo: raw as u32,
        hi: (raw >> 32) as u32,
    })
}

/// Set the accessed bit of a code/data descriptor in its table (the
/// processor does so on every load, SDM Vol. 3 3.4.5.1).
pub fn set_accessed(vm: &mut Vm, sel: u16, d: &mut Desc) -> Result<(), Fault> {
    if d.system() || d.hi & HI_ACCESSED != 0 {
        return Ok(());
    }
    d.hi |= HI_ACCESSED;
    let lin = descriptor_addr(vm, sel)?;
    vm.write_lin(
        lin.wrapping_add(5),
        1,
        (d.hi >> 8) as u8 as u64,
        Access::WRITE,
    )
}

/// Error code naming selector `sel` (index and TI) with the EXT bit.
#[inline]
pub fn sel_err(sel: u16, ext: bool) -> u32 {
    (sel & !3) as u32 | ext as u32
}

/// The cache a real-mode load leaves: only selector and base change, the
/// limit and attributes stay (so "big real mode" survives, SDM Vol. 3
/// 20.1.1 and every implementation).
/// A register that held a null selector becomes a present 64 KiB
/// read/write data segment again.
pub fn real_segment(old: &Segment, sel: u16) -> Segment {
    let (limit, attr) = if old.unusable() {
        (0xFFFF, attr::P | attr::S | attr::RW | attr::ACCESSED)
    } else {
        (old.limit, old.attr | attr::P | attr::S)
    };
    Segment {
        selector: sel,
        base: (sel as u32) << 4,
        limit,
        attr,
    }
}

/// The CS cache a far transfer to `sel` loads in real or V86 mode.
pub fn real_or_v86_cs(cpu: &CpuState, sel: u16) -> Segment {
    if cpu.real() {
        real_segment(cpu.seg(SegReg::Cs), sel)
    } else {
        v86_segment(sel)
    }
}

/// The cache a V86-mode load leaves: base sel<<4, 64 KiB, DPL 3 data.
pub fn v86_segment(sel: u16) -> Segment {
    Segment {
        selector: sel,
        base: (sel as u32) << 4,
        limit: 0xFFFF,
        attr: V86_ATTR,
    }
}

/// A segment register holding the null selector `sel`.
pub fn null_segment(sel: u16) -> Segment {
    Segment {
        selector: sel,
        base: 0,
        limit: 0,
        attr: attr::UNUSABLE,
    }
}

/// Whether `[off, off+size)` is inside segment `s`, expand-down aware
/// (SDM Vol. 3 5.3). The cache decides: real-mode and V86 loads leave
/// expand-up attributes, so this holds in every mode.
pub fn offset_ok(s: &Segment, off: u32, size: u32) -> bool {
    let last = off as u64 + size as u64 - 1;
    if s.attr & (attr::CODE | attr::DC) == attr::DC {
        let top: u64 = if s.big() { 0xFFFF_FFFF } else { 0xFFFF };
        return off as u64 > s.limit as u64 && last <= top;
    }
    last <= s.limit as u64
}

/// Push `items` (first pushed first) of `size` bytes each on the stack
/// `ss` whose pointer is `sp`, atomically: every slot is checked against
/// the segment and translated before the first byte is written. A slot
/// outside the segment raises `fault`. Returns the new stack pointer.
#[allow(clippy::too_many_arguments)]
pub fn push_frame(
    vm: &mut Vm,
    ss: &Segment,
    sp: u32,
    big: bool,
    items: &[u32],
    size: u32,
    acc: Access,
    fault: Fault,
) -> Result<u32, Fault> {
    let mut slots = Vec::with_capacity(items.len());
    let mut p = sp;
    for &v in items {
        p = p.wrapping_sub(size);
        if !big {
            p &= 0xFFFF;
        }
        if !offset_ok(ss, p, size) {
            return Err(fault);
        }
        let lin = ss.base.wrapping_add(p);
        let wacc = Access(acc.0 | Access::WRITE.0);
        vm.translate(lin, wacc)?;
        if (lin & 0xFFF) + size > 0x1000 {
            vm.translate(lin.wrapping_add(size - 1), wacc)?;
        }
        slots.push((lin, v));
    }
    for (lin, v) in slots {
        vm.write_lin(lin, size as usize, v as u64, acc)?;
    }
    Ok(p)
}

/// Set the stack pointer as a stack of size `big` sees it (a 16-bit stack
/// changes SP only).
pub fn set_sp_sized(cpu: &mut CpuState, sp: u32, big: bool) {
    if big {
        cpu.set_reg32(ESP, sp);
    } else {
        cpu.set_reg16(ESP, sp as u16);
    }
}

/// Load a data or stack segment register with `sel` with every check of
/// MOV Sreg / POP Sreg / LxS (SDM Vol. 2 MOV, Vol. 3 5.10): real mode and
/// V86 set base = sel << 4; protected mode checks type, RPL, DPL and
/// presence, sets the accessed bit, and loads the cache. CS cannot be
/// loaded this way (#UD, as MOV CS is).
pub fn load_segment(vm: &mut Vm, seg: SegReg, sel: u16) -> Result<(), Fault> {
    if seg == SegReg::Cs {
        return Err(Fault::ud());
    }
    let cpu = &vm.cpu;
    if cpu.real() {
        let s = real_segment(cpu.seg(seg), sel);
        *vm.cpu.seg_mut(seg) = s;
        return Ok(());
    }
    if cpu.v86() {
        *vm.cpu.seg_mut(seg) = v86_segment(sel);
        return Ok(());
    }
    let cpl = cpu.cpl();
    let rpl = (sel & SEL_RPL) as u8;
    let code = sel_err(sel, false);
    if sel & !SEL_RPL == 0 {
        if seg == SegReg::Ss {
            return Err(Fault::gp(0));
        }
        // A null selector is fine in a data register; using it faults.
        *vm.cpu.seg_mut(seg) = null_segment(sel);
        return Ok(());
    }
    let mut d = fetch_desc(vm, sel, Fault::gp(code))?;
    if seg == SegReg::Ss {
        if rpl != cpl || !d.writable() || d.dpl() != cpl {
            return Err(Fault::gp(code));
        }
        if !d.present() {
            return Err(Fault::ss(code));
        }
    } else {
        if !(d.is_data() || d.readable()) {
            return Err(Fault::gp(code));
        }
        if !d.conforming() && (rpl > d.dpl() || cpl > d.dpl()) {
            return Err(Fault::gp(code));
        }
        if !d.present() {
            return Err(Fault::np(code));
        }
    }
    set_accessed(vm, sel, &mut d)?;
    *vm.cpu.seg_mut(seg) = d.segment(sel);
    Ok(())
}

/// After a return to an outer privilege level, data segment registers
/// the new CPL may not use are nulled (SDM Vol. 2 RET/IRET: data or
/// non-conforming code with DPL < CPL).
pub fn null_inaccessible(cpu: &mut CpuState, cpl: u8) {
    for seg in [SegReg::Es, SegReg::Ds, SegReg::Fs, SegReg::Gs] {
        let s = cpu.seg(seg);
        if s.unusable() {
            // A null selector with a non-zero RPL becomes 0 as well.
            *cpu.seg_mut(seg) = null_segment(0);
            continue;
        }
        let data_or_nc = s.attr & attr::CODE == 0 || s.attr & attr::DC == 0;
        if data_or_nc && s.dpl() < cpl {
            *cpu.seg_mut(seg) = null_segment(0);
        }
    }
}

/// Checks on the CS a far RET or IRET returns to (SDM Vol. 2 RET, IRET):
/// returns the descriptor.
pub fn check_return_cs(vm: &mut Vm, sel: u16) -> Result<Desc, Fault> {
    if sel & !SEL_RPL == 0 {
        return Err(Fault::gp(0));
    }
    let code = sel_err(sel, false);
    let d = fetch_desc(vm, sel, Fault::gp(code))?;
    let rpl = (sel & SEL_RPL) as u8;
    if !d.is_code() || rpl < vm.cpu.cpl() {
        return Err(Fault::gp(code));
    }
    if (d.conforming() && d.dpl() > rpl) || (!d.conforming() && d.dpl() != rpl) {
        return Err(Fault::gp(code));
    }
    if !d.present() {
        return Err(Fault::np(code));
    }
    Ok(d)
}

/// Checks on the SS popped by a return to outer privilege `rpl`.
pub fn check_return_ss(vm: &mut Vm, sel: u16, rpl: u8) -> Result<Desc, Fault> {
    if sel & !SEL_RPL == 0 {
        return Err(Fault::gp(0));
    }
    let code = sel_err(sel, false);
    let d = fetch_desc(vm, sel, Fault::gp(code))?;
    if (sel & SEL_RPL) as u8 != rpl || !d.writable() || d.dpl() != rpl {
        return Err(Fault::gp(code));
    }
    if !d.present() {
        return Err(Fault::ss(code));
    }
    Ok(d)
}

/// Load CS with a checked code descriptor at privilege `cpl`.
fn commit_cs(vm: &mut Vm, sel: u16, mut d: Desc, cpl: u8) -> Result<(), Fault> {
    set_accessed(vm, sel, &mut d)?;
    vm.cpu.seg[SegReg::Cs as usize] = d.segment((sel & !SEL_RPL) | cpl as u16);
    Ok(())
}

/// Read the stack pointer for privilege `dpl` from the current TSS
/// (SDM Vol. 3 7.2.1; 16-bit TSS holds SP/SS pairs). The slot must lie
/// inside the TSS limit, else #TS(TR selector).
pub fn tss_stack(vm: &mut Vm, dpl: u8, ext: bool) -> Result<(u16, u32), Fault> {
    let tr = vm.cpu.tr;
    let bad = Fault::ts(sel_err(tr.selector, ext));
    let dpl = dpl as u32;
    if tr.sys_type() & 8 != 0 {
        let off = 4 + 8 * dpl;
        // SS is read as 2 bytes: the check covers ESP and SS only.
        if off + 5 > tr.limit {
            return Err(bad);
        }
        let esp = vm.read_lin(tr.base.wrapping_add(off), 4, Access::READ)? as u32;
        let ss = vm.read_lin(tr.base.wrapping_add(off + 4), 2, Access::READ)? as u16;
        Ok((ss, esp))
    } else {
        let off = 2 + 4 * dpl;
        if off + 3 > tr.limit {
            return Err(bad);
        }
        let sp = vm.read_lin(tr.base.wrapping_add(off), 2, Access::READ)? as u32;
        let ss = vm.read_lin(tr.base.wrapping_add(off + 2), 2, Access::READ)? as u16;
        Ok((ss, sp))
    }
}

/// Checks on a stack segment taken from the TSS for privilege `cpl`
/// (inner-privilege CALL and interrupts): faults are #TS(SS), not
/// present #SS(SS). A null selector is #TS(`null_code`).
pub fn check_tss_ss(
    vm: &mut Vm,
    sel: u16,
    cpl: u8,
    ext: bool,
    null_code: u32,
) -> Result<Desc, Fault> {
    if sel & !SEL_RPL == 0 {
        return Err(Fault::ts(null_code));
    }
    let code = sel_err(sel, ext);
    let d = fetch_desc(vm, sel, Fault::ts(code))?;
    if (sel & SEL_RPL) as u8 != cpl || d.dpl() != cpl || !d.writable() {
        return Err(Fault::ts(code));
    }
    if !d.present() {
        return Err(Fault::ss(code));
    }
    Ok(d)
}

/// Far transfer kinds that share the checks below.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Far {
    Jmp,
    Call,
}

/// Far JMP or CALL to `sel:off` with operand size `osz` (2 or 4),
/// in any mode (SDM Vol. 2 JMP, CALL).
fn far_transfer(ctx: &mut Ctx, kind: Far, sel: u16, off: u32, osz: u32) -> Result<(), Fault> {
    let cpu = &ctx.vm.cpu;
    if cpu.real() || cpu.v86() {
        let new_cs = real_or_v86_cs(cpu, sel);
        if off > new_cs.limit {
            return Err(Fault::gp(0));
        }
        if kind == Far::Call {
            let old_cs = cpu.seg(SegReg::Cs).selector as u32;
            let ret = ctx.next_eip;
            push_current(ctx, &[old_cs, ret], osz)?;
        }
        ctx.vm.cpu.seg[SegReg::Cs as usize] = new_cs;
        ctx.next_eip = off;
        return Ok(());
    }
    if sel & !SEL_RPL == 0 {
        return Err(Fault::gp(0));
    }
    let cpl = cpu.cpl();
    let rpl = (sel & SEL_RPL) as u8;
    let code = sel_err(sel, false);
    let d = fetch_desc(ctx.vm, sel, Fault::gp(code))?;
    if !d.system() {
        if !d.is_code() {
            return Err(Fault::gp(code));
        }
        if d.conforming() {
            if d.dpl() > cpl {
                return Err(Fault::gp(code));
            }
        } else if rpl > cpl || d.dpl() != cpl {
            return Err(Fault::gp(code));
        }
        if !d.present() {
            return Err(Fault::np(code));
        }
        if off > d.limit() {
            return Err(Fault::gp(0));
        }
        if kind == Far::Call {
            let old_cs = ctx.vm.cpu.seg(SegReg::Cs).selector as u32;
            let ret = ctx.next_eip;
            push_current(ctx, &[old_cs, ret], osz)?;
        }
        commit_cs(ctx.vm, sel, d, cpl)?;
        ctx.next_eip = off;
        return Ok(());
    }
    match d.typ() {
        sys::CALL_GATE16 | sys::CALL_GATE32 => call_gate(ctx, kind, sel, d),
        sys::TASK_GATE => {
            if d.dpl() < cpl || d.dpl() < rpl {
                return Err(Fault::gp(code));
            }
            if !d.present() {
                return Err(Fault::np(code));
            }
            let tsel = d.gate_selector();
            let td = task::target_tss(ctx.vm, tsel, sel_err(tsel, false), false, Fault::gp)?;
            switch_from(ctx, kind, tsel, td)
        }
        sys::TSS16_AVAIL | sys::TSS32_AVAIL => {
            // A TSS descriptor must be in the GDT.
            if sel & SEL_TI != 0 || d.dpl() < cpl || d.dpl() < rpl {
                return Err(Fault::gp(code));
            }
            if !d.present() {
                return Err(Fault::np(code));
            }
            switch_from(ctx, kind, sel, d)
        }
        _ => Err(Fault::gp(code)),
    }
}

/// JMP/CALL into a task (SDM Vol. 3 7.3).
fn switch_from(ctx: &mut Ctx, kind: Far, sel: u16, d: Desc) -> Result<(), Fault> {
    let src = match kind {
        Far::Jmp => TaskSource::Jmp,
        Far::Call => TaskSource::Call,
    };
    let r = task::task_switch(ctx.vm, sel, d, src, ctx.next_eip, false);
    // Whatever happened after the switch committed happens in the new task.
    ctx.next_eip = ctx.vm.cpu.eip;
    r
}

/// Push `items` on the current stack, all or nothing.
fn push_current(ctx: &mut Ctx, items: &[u32], size: u32) -> Result<(), Fault> {
    let cpu = &ctx.vm.cpu;
    let ss = *cpu.seg(SegReg::Ss);
    let big = cpu.stack32();
    let sp = cpu.sp();
    let acc = Access::WRITE.at_cpl(cpu.cpl());
    let sp = push_frame(ctx.vm, &ss, sp, big, items, size, acc, Fault::ss(0))?;
    ctx.vm.cpu.set_sp(sp);
    Ok(())
}

/// JMP/CALL through a call gate (SDM Vol. 2 CALL "CALL-GATE"; Vol. 3 5.8).
fn call_gate(ctx: &mut Ctx, kind: Far, gsel: u16, g: Desc) -> Result<(), Fault> {
    let cpl = ctx.vm.cpu.cpl();
    let rpl = (gsel & SEL_RPL) as u8;
    let gcode = sel_err(gsel, false);
    if g.dpl() < cpl || g.dpl() < rpl {
        return Err(Fault::gp(gcode));
    }
    if !g.present() {
        return Err(Fault::np(gcode));
    }
    let csel = g.gate_selector();
    if csel & !SEL_RPL == 0 {
        return Err(Fault::gp(0));
    }
    let ccode = sel_err(csel, false);
    let cd = fetch_desc(ctx.vm, csel, Fault::gp(ccode))?;
    if !cd.is_code() || cd.dpl() > cpl {
        return Err(Fault::gp(ccode));
    }
    if kind == Far::Jmp && !cd.conforming() && cd.dpl() != cpl {
        return Err(Fault::gp(ccode));
    }
    if !cd.present() {
        return Err(Fault::np(ccode));
    }
    let off = g.gate_offset();
    let gsize: u32 = if g.typ() == sys::CALL_GATE32 { 4 } else { 2 };
    if kind == Far::Jmp {
        if off > cd.limit() {
            return Err(Fault::gp(0));
        }
        commit_cs(ctx.vm, csel, cd, cpl)?;
        ctx.next_eip = off;
        return Ok(());
    }
    let old_cs = ctx.vm.cpu.seg(SegReg::Cs).selector as u32;
    let ret = ctx.next_eip;
    if cd.conforming() || cd.dpl() == cpl {
        // Same privilege: the gate's size sets the push size.
        if off > cd.limit() {
            return Err(Fault::gp(0));
        }
        push_current(ctx, &[old_cs, ret], gsize)?;
        commit_cs(ctx.vm, csel, cd, cpl)?;
        ctx.next_eip = off;
        return Ok(());
    }
    // More privilege: stack from the TSS, parameters copied.
    let new_cpl = cd.dpl();
    let (ss_sel, new_sp) = tss_stack(ctx.vm, new_cpl, false)?;
    let mut sd = check_tss_ss(ctx.vm, ss_sel, new_cpl, false, 0)?;
    let count = g.param_count();
    let old_ss = ctx.vm.cpu.seg(SegReg::Ss).selector as u32;
    let old_sp = ctx.vm.cpu.gpr[ESP] as u32;
    let mut items = vec![old_ss, old_sp];
    // Parameters are read from the old stack top, highest address first,
    // so that they keep their order on the new stack.
    for i in (0..count).rev() {
        items.push(ctx.peek(i * gsize, gsize as usize)?);
    }
    items.push(old_cs);
    items.push(ret);
    if off > cd.limit() {
        return Err(Fault::gp(0));
    }
    let ss_seg = sd.segment(ss_sel);
    let acc = Access::WRITE.at_cpl(new_cpl);
    let sp = push_frame(
        ctx.vm,
        &ss_seg,
        new_sp,
        ss_seg.big(),
        &items,
        gsize,
        acc,
        Fault::ss(sel_err(ss_sel, false)),
    )?;
    set_accessed(ctx.vm, ss_sel, &mut sd)?;
    commit_cs(ctx.vm, csel, cd, new_cpl)?;
    let cpu = &mut ctx.vm.cpu;
    cpu.seg[SegReg::Ss as usize] = sd.segment(ss_sel);
    set_sp_sized(cpu, sp, sd.segment(ss_sel).big());
    ctx.next_eip = off;
    Ok(())
}

/// Far RET (RETF [imm16]) in any mode (SDM Vol. 2 RET).
fn retf(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let osz: u32 = match ins.code() {
        Code::Retfw | Code::Retfw_imm16 => 2,
        Code::Retfd | Code::Retfd_imm16 => 4,
        _ => return Err(Fault::ud()),
    };
    let imm = if ins.op_count() > 0 {
        ins.immediate16() as u32
    } else {
        0
    };
    let eip = ctx.peek(0, osz as usize)?;
    let sel = ctx.peek(osz, osz as usize)? as u16;
    let cpu = &ctx.vm.cpu;
    if cpu.real() || cpu.v86() {
        let new_cs = real_or_v86_cs(cpu, sel);
        if eip > new_cs.limit {
            return Err(Fault::gp(0));
        }
        let sp = cpu.sp().wrapping_add(2 * osz + imm);
        ctx.vm.cpu.set_sp(sp);
        ctx.vm.cpu.seg[SegReg::Cs as usize] = new_cs;
        ctx.next_eip = eip;
        return Ok(());
    }
    let cpl = cpu.cpl();
    let d = check_return_cs(ctx.vm, sel)?;
    let rpl = (sel & SEL_RPL) as u8;
    if rpl == cpl {
        if eip > d.limit() {
            return Err(Fault::gp(0));
        }
        commit_cs(ctx.vm, sel, d, cpl)?;
        let sp = ctx.vm.cpu.sp().wrapping_add(2 * osz + imm);
        ctx.vm.cpu.set_sp(sp);
        ctx.next_eip = eip;
        return Ok(());
    }
    // Return to an outer level: SS:ESP follow the parameters.
    let new_sp = ctx.peek(2 * osz + imm, osz as usize)?;
    let ss_sel = ctx.peek(3 * osz + imm, osz as usize)? as u16;
    let mut sd = check_return_ss(ctx.vm, ss_sel, rpl)?;
    if eip > d.limit() {
        return Err(Fault::gp(0));
    }
    set_accessed(ctx.vm, ss_sel, &mut sd)?;
    commit_cs(ctx.vm, sel, d, rpl)?;
    let ss = sd.segment(ss_sel);
    let cpu = &mut ctx.vm.cpu;
    cpu.seg[SegReg::Ss as usize] = ss;
    set_sp_sized(cpu, new_sp.wrapping_add(imm), ss.big());
    null_inaccessible(cpu, rpl);
    ctx.next_eip = eip;
    Ok(())
}

/// Far pointer operand of JMP/CALL: (selector, offset, operand size).
fn far_target(ctx: &mut Ctx, ins: &Instruction) -> Result<(u16, u32, u32), Fault> {
    match ins.op0_kind() {
        OpKind::FarBranch16 => Ok((ins.far_branch_selector(), ins.far_branch16() as u32, 2)),
        OpKind::FarBranch32 => Ok((ins.far_branch_selector(), ins.far_branch32(), 4)),
        OpKind::Memory => {
            let osz: u32 = match ins.code() {
                Code::Jmp_m1616 | Code::Call_m1616 => 2,
                Code::Jmp_m1632 | Code::Call_m1632 => 4,
                _ => return Err(Fault::ud()),
            };
            let seg = ctx.mem_seg(ins);
            let ea = ctx.ea(ins);
            let off = ctx.read_mem(seg, ea, osz as usize)?;
            let sel = ctx.read_mem(seg, ea.wrapping_add(osz), 2)? as u16;
            Ok((sel, off, osz))
        }
        _ => Err(Fault::ud()),
    }
}

fn jmp_far(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let (sel, off, osz) = far_target(ctx, ins)?;
    far_transfer(ctx, Far::Jmp, sel, off, osz)
}

fn call_far(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let (sel, off, osz) = far_target(ctx, ins)?;
    far_transfer(ctx, Far::Call, sel, off, osz)
}

/// MOV Sreg, r/m16 (MOV SS inhibits interrupts for one instruction).
fn mov_to_sreg(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let seg = seg_of(ins.op0_register());
    if seg == SegReg::Cs {
        return Err(Fault::ud());
    }
    let sel = match ins.op1_kind() {
        OpKind::Memory => {
            let s = ctx.mem_seg(ins);
            let ea = ctx.ea(ins);
            ctx.read_mem(s, ea, 2)? as u16
        }
        _ => ctx.reg(ins.op1_register()) as u16,
    };
    load_segment(ctx.vm, seg, sel)?;
    if seg == SegReg::Ss {
        ctx.shadow = true;
    }
    Ok(())
}

/// MOV r/m, Sreg: a memory destination gets 16 bits, a 32-bit register
/// the zero-extended selector (SDM Vol. 2 MOV).
fn mov_from_sreg(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let sel = ctx.vm.cpu.seg(seg_of(ins.op1_register())).selector as u32;
    match ins.op0_kind() {
        OpKind::Memory => {
            let s = ctx.mem_seg(ins);
            let ea = ctx.ea(ins);
            ctx.write_mem(s, ea, 2, sel)
        }
        _ => {
            ctx.set_reg(ins.op0_register(), sel);
            Ok(())
        }
    }
}

/// POP Sreg: the stack pointer moves by the operand size of the old
/// stack; POP SS inhibits interrupts for one instruction.
fn pop_sreg(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let (seg, size) = match ins.code() {
        Code::Popw_ES => (SegReg::Es, 2),
        Code::Popd_ES => (SegReg::Es, 4),
        Code::Popw_SS => (SegReg::Ss, 2),
        Code::Popd_SS => (SegReg::Ss, 4),
        Code::Popw_DS => (SegReg::Ds, 2),
        Code::Popd_DS => (SegReg::Ds, 4),
        Code::Popw_FS => (SegReg::Fs, 2),
        Code::Popd_FS => (SegReg::Fs, 4),
        Code::Popw_GS => (SegReg::Gs, 2),
        Code::Popd_GS => (SegReg::Gs, 4),
        _ => return Err(Fault::ud()),
    };
    let sel = ctx.peek(0, size)? as u16;
    let big = ctx.vm.cpu.stack32();
    let sp = ctx.vm.cpu.sp().wrapping_add(size as u32);
    load_segment(ctx.vm, seg, sel)?;
    set_sp_sized(&mut ctx.vm.cpu, sp, big);
    if seg == SegReg::Ss {
        ctx.shadow = true;
    }
    Ok(())
}

/// PUSH Sreg: a 32-bit push writes only the selector's 16 bits into the
/// 4-byte slot, as current Intel processors do (SDM Vol. 2 PUSH).
fn push_sreg(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let size = match ins.code() {
        Code::Pushd_ES
        | Code::Pushd_CS
        | Code::Pushd_SS
        | Code::Pushd_DS
        | Code::Pushd_FS
        | Code::Pushd_GS => 4,
        _ => 2,
    };
    let sel = ctx.vm.cpu.seg(seg_of(ins.op0_register())).selector as u32;
    let cpu = &ctx.vm.cpu;
    let mut sp = cpu.sp().wrapping_sub(size);
    if !cpu.stack32() {
        sp &= 0xFFFF;
    }
    ctx.check_write(SegReg::Ss, sp, size as usize)?;
    ctx.write_mem(SegReg::Ss, sp, 2, sel)?;
    ctx.vm.cpu.set_sp(sp);
    Ok(())
}

/// LDS/LES/LFS/LGS/LSS r, m16:16/m16:32.
fn load_far_pointer(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let seg = match ins.mnemonic() {
        Mnemonic::Lds => SegReg::Ds,
        Mnemonic::Les => SegReg::Es,
        Mnemonic::Lfs => SegReg::Fs,
        Mnemonic::Lgs => SegReg::Gs,
        Mnemonic::Lss => SegReg::Ss,
        _ => return Err(Fault::ud()),
    };
    if ins.op1_kind() != OpKind::Memory {
        return Err(Fault::ud());
    }
    let osz = ins.op0_register().size();
    if osz != 2 && osz != 4 {
        return Err(Fault::ud());
    }
    let ms = ctx.mem_seg(ins);
    let ea = ctx.ea(ins);
    let off = ctx.read_mem(ms, ea, osz)?;
    let sel = ctx.read_mem(ms, ea.wrapping_add(osz as u32), 2)? as u16;
    // LSS sets no interrupt shadow: only MOV SS and POP SS do (SDM Vol. 3
    // 6.8.3).
    load_segment(ctx.vm, seg, sel)?;
    ctx.set_reg(ins.op0_register(), off);
    Ok(())
}

pub(super) fn register(t: &mut Table) {
    t.set_codes(&[Code::Mov_Sreg_rm16, Code::Mov_Sreg_r32m16], mov_to_sreg);
    t.set_codes(&[Code::Mov_rm16_Sreg, Code::Mov_r32m16_Sreg], mov_from_sreg);
    t.set_codes(
        &[
            Code::Popw_ES,
            Code::Popd_ES,
            Code::Popw_SS,
            Code::Popd_SS,
            Code::Popw_DS,
            Code::Popd_DS,
            Code::Popw_FS,
            Code::Popd_FS,
            Code::Popw_GS,
            Code::Popd_GS,
        ],
        pop_sreg,
    );
    t.set_codes(
        &[
            Code::Pushw_ES,
            Code::Pushd_ES,
            Code::Pushw_CS,
            Code::Pushd_CS,
            Code::Pushw_SS,
            Code::Pushd_SS,
            Code::Pushw_DS,
            Code::Pushd_DS,
            Code::Pushw_FS,
            Code::Pushd_FS,
            Code::Pushw_GS,
            Code::Pushd_GS,
        ],
        push_sreg,
    );
    t.set(
        &[
            Mnemonic::Lds,
            Mnemonic::Les,
            Mnemonic::Lfs,
            Mnemonic::Lgs,
            Mnemonic::Lss,
        ],
        load_far_pointer,
    );
    t.set_codes(
        &[
            Code::Jmp_ptr1616,
            Code::Jmp_ptr1632,
            Code::Jmp_m1616,
            Code::Jmp_m1632,
        ],
        jmp_far,
    );
    t.set_codes(
        &[
            Code::Call_ptr1616,
            Code::Call_ptr1632,
            Code::Call_m1616,
            Code::Call_m1632,
        ],
        call_far,
    );
    t.set(&[Mnemonic::Retf], retf);
}
