//! Monitor routines: what translated code calls for everything it does
//! not do inline. Each takes the context and one argument, works on the
//! synchronised `CpuState` with the interpreter's own implementation, and
//! returns 0 to go on with the block or 1 to leave it (with `JitCtx::eip`
//! and `exit` set); `exec_indirect` returns host code to jump to instead.

use umbra_core::exception::Fault;
use umbra_core::interp::{event_deliverable, interrupt, Ctx};

use umbra_core::cpu::{RF, TF};

use crate::block::InsnMeta;
use crate::ctx::{exit, JitCtx};
use crate::engine::Monitor;

/// Run one guest instruction through the interpreter's handler.
///
/// The block subtracted its whole length from the budget on entry, so the
/// retired count at this instruction is the dispatcher's base plus what
/// was consumed minus the instructions not yet run (`rem`). It leaves the
/// block when execution does not fall through to the next instruction (a
/// control transfer, a REP instruction with iterations left, a fault
/// delivered), when an interrupt shadow starts, when the instruction ends
/// blocks (I/O, mode and flag changes: the dispatcher re-checks events),
/// or when a write hit a frame holding translated code.
///
/// # Safety
/// Only generated code calls it, with the running context and an
/// `InsnMeta` of the running block.
pub unsafe extern "sysv64" fn exec_insn(ctx: *mut JitCtx, meta: *const InsnMeta) -> u32 {
    // SAFETY: as `run_insn` requires (the caller's contract).
    unsafe { run_insn(ctx, meta, false) as u32 }
}

/// RDTSC at CPL 0 (CR4.TSD cannot fault there): the time-stamp counter,
/// with the retired count brought up to this instruction (`rem`: as in
/// `exec_insn`) for a clock derived from it. Reads the clock and the TSC
/// offset only: the guest registers stay in the host's, and generated
/// code puts the value into EDX:EAX (`codegen::system`).
///
/// # Safety
/// Only generated code calls it, with the running context.
pub unsafe extern "sysv64" fn rdtsc(ctx: *mut JitCtx, rem: u64) -> u64 {
    // SAFETY: `ctx` is the running context (the caller's contract).
    let ctx = unsafe { &mut *ctx };
    // SAFETY: `vm` and `engine` were set by the dispatcher from live
    // exclusive borrows that it does not use while generated code runs.
    let (vm, mon) = unsafe { (&mut *ctx.vm, &mut *(ctx.engine as *mut Monitor)) };
    let consumed = (mon.budget_start - ctx.budget) as u64 - rem;
    vm.clock.retired = mon.retired_base + consumed;
    mon.stats.inline_rdtsc += 1;
    umbra_core::interp::system::tsc(vm)
}

/// Whether an event is deliverable now (1) or not (0), for a block that
/// ran STI and the instruction in its shadow (`codegen::emit_block`):
/// the state it reads (EFLAGS.IF, which inline STI sets in `CpuState`,
/// the pending events and the interrupt controller) needs no guest
/// register.
///
/// # Safety
/// Only generated code calls it, with the running context.
pub unsafe extern "sysv64" fn event_pending(ctx: *mut JitCtx) -> u32 {
    // SAFETY: `ctx` is the running context (the caller's contract).
    let ctx = unsafe { &mut *ctx };
    // SAFETY: `vm` and `engine` were set by the dispatcher from live
    // exclusive borrows that it does not use while generated code runs.
    let (vm, mon) = unsafe { (&*ctx.vm, &mut *(ctx.engine as *mut Monitor)) };
    let pending = event_deliverable(vm);
    if !pending {
        mon.stats.sti_continues += 1;
    }
    pending as u32
}

/// A near CALL rel as the block's last instruction: like `exec_insn`, but
/// the transfer itself does not leave the block (its exit to the target
/// follows, chainable). Faults and code writes still leave.
///
/// # Safety
/// As `exec_insn`.
pub unsafe extern "sysv64" fn exec_call(ctx: *mut JitCtx, meta: *const InsnMeta) -> u32 {
    // SAFETY: as `run_insn` requires (the caller's contract).
    unsafe { run_insn(ctx, meta, true) as u32 }
}

/// A near indirect branch (RET, JMP/CALL r/m) as the block's last
/// instruction: run it, then look up the block at the new CS:EIP in the
/// same mode (`Monitor::indirect_target`). Returns the host code to jump
/// to with the guest state in the context (a block entry), or 0 after
/// setting `eip` and `exit` to leave for the dispatcher (a fault, a code
/// write, an event to check, no valid block there).
///
/// # Safety
/// As `exec_insn`.
pub unsafe extern "sysv64" fn exec_indirect(ctx: *mut JitCtx, meta: *const InsnMeta) -> usize {
    // SAFETY: as `run_insn` requires (the caller's contract).
    if unsafe { run_insn(ctx, meta, true) } {
        return 0;
    }
    // SAFETY: as in `run_insn`; its borrows ended.
    let (ctx, vm, mon) = unsafe {
        let ctx = &mut *ctx;
        (
            ctx as *mut JitCtx,
            &mut *ctx.vm,
            &mut *(ctx.engine as *mut Monitor),
        )
    };
    // SAFETY: `ctx` is the live context (above).
    let ctx = unsafe { &mut *ctx };
    let cpu = &vm.cpu;
    let clear = !cpu.halted
        && !cpu.interrupt_shadow
        && cpu.eflags & (TF | RF) == 0
        && !event_deliverable(vm);
    if clear {
        if let Some(code) = mon.indirect_target(vm) {
            return code;
        }
    }
    ctx.eip = vm.cpu.eip;
    ctx.exit = exit::MONITOR;
    0
}

/// Entry into native x87 code (`codegen::x87`) while the host unit does
/// not hold the guest's state: 1 if the state may run there, with the
/// FRSTOR image prepared in the context (`JitCtx::x87_prepare`), else 0
/// (the instructions then run in the monitor). Called without the guest
/// registers synchronised: it reads only CR0 and the x87 state, which
/// change only in monitor routines.
///
/// # Safety
/// Only generated code calls it, with the running context.
pub unsafe extern "sysv64" fn x87_enter(ctx: *mut JitCtx) -> u32 {
    // SAFETY: as in `run_insn`: the live context, and the machine and
    // monitor it points to, not otherwise borrowed while this runs.
    let (ctx, vm, mon) = unsafe {
        let ctx = &mut *ctx;
        let vm = &*ctx.vm;
        let mon = &mut *(ctx.engine as *mut Monitor);
        (ctx, vm, mon)
    };
    let ok = ctx.x87_prepare(&vm.cpu);
    if ok {
        mon.stats.x87_loads += 1;
    }
    ok as u32
}

/// FLDCW in native x87 code left a control word the host must not run
/// with (an exception unmasked, the reserved precision): give the state
/// back to `CpuState`, so that the next x87 instruction checks again.
/// Returns 0.
///
/// # Safety
/// As `x87_enter`.
pub unsafe extern "sysv64" fn x87_drop(ctx: *mut JitCtx) -> u32 {
    // SAFETY: as in `x87_enter`.
    let (ctx, vm, mon) = unsafe {
        let ctx = &mut *ctx;
        let vm = &mut *ctx.vm;
        let mon = &mut *(ctx.engine as *mut Monitor);
        (ctx, vm, mon)
    };
    spill_x87(ctx, vm, mon);
    0
}

/// The body of the routines above. `branch_ok`: a transfer of control by
/// the instruction (or its ending blocks) does not by itself leave the
/// block. Returns whether to leave (with `eip`, `exit` and the budget of
/// the instructions not run set).
///
/// # Safety
/// `ctx` is the running context and `meta` an `InsnMeta` of the running
/// block (generated code passes both).
unsafe fn run_insn(ctx: *mut JitCtx, meta: *const InsnMeta, branch_ok: bool) -> bool {
    // SAFETY: generated code passes the context the dispatcher entered it
    // with (live for the whole run, not otherwise borrowed while generated
    // code runs) and a pointer to an `InsnMeta` of the running block,
    // which the cache keeps alive until the dispatcher runs again.
    let (ctx, meta) = unsafe { (&mut *ctx, &*meta) };
    // SAFETY: `vm` and `engine` were set by the dispatcher from live
    // exclusive borrows that it does not use while generated code runs.
    let (vm, mon) = unsafe { (&mut *ctx.vm, &mut *(ctx.engine as *mut Monitor)) };
    if !branch_ok {
        // The handler may use the x87 state or the CR0 bits native x87
        // code depends on. Near branches use neither: the host unit keeps
        // the state across them (and into the next block).
        spill_x87(ctx, vm, mon);
    }
    ctx.store(&mut vm.cpu);
    vm.cpu.eip = meta.eip;
    let consumed = (mon.budget_start - ctx.budget) as u64 - meta.rem as u64;
    vm.clock.retired = mon.retired_base + consumed;
    mon.stats.note_monitor_call(meta.ins.mnemonic());
    let mut c = Ctx {
        vm,
        eip: meta.eip,
        next_eip: meta.next_eip,
        shadow: false,
        rep_batch: mon.rep_batch,
    };
    let r = match meta.handler {
        Some(h) if meta.ins.code() != iced_x86::Code::INVALID => h(&mut c, &meta.ins),
        _ => {
            mon.note_unimplemented(&meta.ins);
            Err(Fault::ud())
        }
    };
    let (next, shadow) = (c.next_eip, c.shadow);
    // SAFETY: as above; the `Ctx` borrow ended.
    let vm = unsafe { &mut *ctx.vm };
    vm.clock.retired += 1;
    let mut leave = match r {
        Ok(()) => {
            vm.cpu.eip = next;
            vm.cpu.interrupt_shadow = shadow;
            let ends_only = !shadow && !branch_ok && next == meta.next_eip && meta.ends;
            if ends_only && may_continue(vm, mon, &meta.ins) {
                mon.stats.monitor_continues += 1;
                false
            } else {
                shadow || (!branch_ok && (next != meta.next_eip || meta.ends))
            }
        }
        Err(f) => {
            // Delivery changes CS (the spill records FCS from it).
            spill_x87(ctx, vm, mon);
            mon.stats.exceptions += 1;
            if let Err(reason) = interrupt::deliver_exception(vm, f) {
                mon.shutdown = Some(reason);
            }
            true
        }
    };
    if vm.mem.has_watch_hits() {
        vm.flush_watch_hits();
    }
    if !vm.ext_frames_written.is_empty() {
        mon.invalidate_written(vm);
        leave = true;
    }
    // Memory changed behind the write-watch (an unlogged page-table
    // update in a code frame): the dispatcher checks the blocks again.
    if vm.mem.watched_code_gen() != mon.ib_gen {
        leave = true;
    }
    ctx.load(&vm.cpu);
    ctx.shadow = vm.mmu.active_table().as_ptr();
    if leave {
        mon.stats.note_monitor_exit(meta.ins.mnemonic());
        // The rest of the block does not run: give its budget back.
        ctx.budget += meta.rem as i64 - 1;
        ctx.eip = vm.cpu.eip;
        ctx.exit = if mon.shutdown.is_some() {
            exit::SHUTDOWN
        } else {
            exit::MONITOR
        };
    }
    leave
}

/// After an instruction that ends blocks and fell through: whether the
/// block may go on to its fall-through exit (chained within its mode)
/// instead of leaving for the dispatcher, because nothing the dispatcher
/// re-checks has changed. Only for instructions that cannot change how
/// code is fetched (no control, debug or paging register; port writes
/// only to the interrupt controllers, timer, CMOS/RTC, COM1 and the POST
/// port: others may move A20, the PAM shadowing or reset), with no event
/// deliverable, no TF/RF or alignment checking, and the block's mode
/// still that of the CPU (a data segment load often reloads what was
/// there).
fn may_continue(vm: &umbra_core::vm::Vm, mon: &Monitor, ins: &iced_x86::Instruction) -> bool {
    use iced_x86::{Mnemonic, OpKind, Register};
    let data_seg =
        |r: Register| matches!(r, Register::DS | Register::ES | Register::FS | Register::GS);
    let ok = match ins.mnemonic() {
        Mnemonic::Mov | Mnemonic::Pop => {
            ins.op0_kind() == OpKind::Register && data_seg(ins.op0_register())
        }
        // PUSH of a segment register ends blocks only for its operand.
        Mnemonic::Push => true,
        Mnemonic::Lds | Mnemonic::Les | Mnemonic::Lfs | Mnemonic::Lgs => true,
        Mnemonic::In | Mnemonic::Popf | Mnemonic::Popfd | Mnemonic::Cli => true,
        Mnemonic::Out => {
            let port = match ins.op0_kind() {
                OpKind::Immediate8 => ins.immediate8() as u16,
                _ => vm.cpu.reg32(2) as u16,
            };
            matches!(port, 0x20 | 0x21 | 0xA0 | 0xA1 | 0x40..=0x43 | 0x70 | 0x71 | 0x80 | 0x3F8..=0x3FF)
        }
        _ => false,
    };
    ok && mon.shutdown.is_none()
        && !vm.cpu.halted
        && vm.cpu.eflags & (TF | RF) == 0
        && !vm.cpu.alignment_checked()
        && !event_deliverable(vm)
        && crate::block::mode_of(&vm.cpu) == mon.cur_mode
}

/// `JitCtx::x87_spill`, counted.
#[inline]
pub(crate) fn spill_x87(ctx: &mut JitCtx, vm: &mut umbra_core::vm::Vm, mon: &mut Monitor) {
    if ctx.x87_live != 0 {
        mon.stats.x87_spills += 1;
        ctx.x87_spill(&mut vm.cpu);
    }
}
