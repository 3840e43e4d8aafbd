//! The reference interpreter: decodes guest code with iced-x86 and executes
//! it with exact architectural behaviour, flags included. It is the oracle
//! for the translator and the translator's fallback for what it does not
//! compile; it also hosts the routines (interrupt delivery, segment loads,
//! task switches, system instructions) that every engine reuses.
//!
//! One instruction family per file; each registers its handlers in a
//! table indexed by mnemonic. An instruction with no handler raises #UD in
//! the guest and is counted (`InterpStats::unimplemented`), never a panic.

pub mod alu;
pub mod bcd;
pub mod bit;
pub mod control;
pub mod cpuid;
pub mod data;
pub mod fast;
pub mod fetch;
pub mod flags;
pub mod interrupt;
pub mod io;
pub mod muldiv;
pub mod operand;
pub mod segment;
pub mod shift;
pub mod string;
pub mod system;
pub mod task;
#[cfg(test)]
pub(crate) mod testutil;
pub mod x87;

use std::collections::BTreeMap;

use iced_x86::{Code, Instruction, Mnemonic};

use crate::engine::{Budget, Engine, Exit, ShutdownReason};
use crate::exception::Fault;
use crate::vm::Vm;

/// An instruction handler: executes `ins` on the state behind `ctx`. It
/// must not commit any architectural state before it can no longer fault,
/// so that a fault leaves the guest exactly at the instruction's start.
pub type Handler = fn(&mut Ctx, &Instruction) -> Result<(), Fault>;

/// Handlers indexed by `Mnemonic as usize`, with per-`Code` overrides for
/// mnemonics that several families share (MOV to a segment register vs
/// MOV between GPRs, string MOVSD vs SSE MOVSD, near vs far JMP/CALL).
pub struct Table {
    handlers: Vec<Option<Handler>>,
    by_code: Vec<Option<Handler>>,
}

impl Table {
    fn new() -> Self {
        Table {
            handlers: vec![None; Mnemonic::values().count()],
            by_code: vec![None; Code::values().count()],
        }
    }
    /// Register `h` for exactly the encodings `cs`; these win over a
    /// handler registered for their mnemonic.
    pub fn set_codes(&mut self, cs: &[Code], h: Handler) {
        for &c in cs {
            self.by_code[c as usize] = Some(h);
        }
    }
    /// The handler for `ins`: its code's, else its mnemonic's.
    #[inline]
    pub fn lookup(&self, ins: &Instruction) -> Option<Handler> {
        self.by_code[ins.code() as usize].or(self.handlers[ins.mnemonic() as usize])
    }
    /// Register `h` for every mnemonic in `ms`.
    pub fn set(&mut self, ms: &[Mnemonic], h: Handler) {
        for &m in ms {
            self.handlers[m as usize] = Some(h);
        }
    }
    #[inline]
    pub fn get(&self, m: Mnemonic) -> Option<Handler> {
        self.handlers[m as usize]
    }
    /// The full table, every family registered.
    pub fn build() -> Self {
        let mut t = Table::new();
        alu::register(&mut t);
        bcd::register(&mut t);
        bit::register(&mut t);
        control::register(&mut t);
        data::register(&mut t);
        interrupt::register(&mut t);
        io::register(&mut t);
        muldiv::register(&mut t);
        segment::register(&mut t);
        shift::register(&mut t);
        string::register(&mut t);
        system::register(&mut t);
        task::register(&mut t);
        x87::register(&mut t);
        t
    }
}

/// Counters the interpreter keeps.
#[derive(Clone, Debug, Default)]
pub struct InterpStats {
    /// Instructions retired.
    pub instructions: u64,
    /// Exceptions delivered, by vector.
    pub exceptions: [u64; 32],
    /// Decoded instructions that have no handler, by mnemonic: each raised
    /// #UD in the guest.
    pub unimplemented: BTreeMap<String, u64>,
}

/// What one instruction sees: the machine, and where execution goes next.
pub struct Ctx<'a> {
    pub vm: &'a mut Vm,
    /// EIP of the instruction being executed.
    pub eip: u32,
    /// EIP of the next instruction; control transfers overwrite it.
    pub next_eip: u32,
    /// Set by STI / MOV SS / POP SS: inhibit interrupts after this one.
    pub shadow: bool,
    /// Most iterations a REP string instruction may run in this step
    /// (at least 1). Hardware completes one iteration per single-step
    /// trap, so lockstep comparison sets 1.
    pub rep_batch: u32,
}

impl<'a> Ctx<'a> {
    /// The context for executing `ins` at the current CS:EIP: the next EIP
    /// is the instruction's end, wrapped to 16 bits in 16-bit code.
    pub fn for_insn(vm: &'a mut Vm, ins: &Instruction, rep_batch: u32) -> Self {
        let next = ins.next_ip32();
        Ctx {
            eip: vm.cpu.eip,
            next_eip: if vm.cpu.code32() { next } else { next & 0xFFFF },
            vm,
            shadow: false,
            rep_batch: rep_batch.max(1),
        }
    }
}

/// What `step` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// An instruction retired (or an exception/interrupt was delivered).
    Retired,
    /// The CPU is halted and nothing woke it.
    Halted,
    /// Triple fault or other shutdown.
    Shutdown(ShutdownReason),
}

pub struct Interpreter {
    table: Table,
    /// See `Ctx::rep_batch`.
    pub rep_batch: u32,
    pub stats: InterpStats,
    fetcher: fetch::Fetcher,
}

impl Default for Interpreter {
    fn default() -> Self {
        Self::new()
    }
}

impl Interpreter {
    pub fn new() -> Self {
        Interpreter {
            table: Table::build(),
            rep_batch: 256,
            stats: InterpStats::default(),
            fetcher: fetch::Fetcher::new(),
        }
    }

    /// Counters of the decode and block caches.
    pub fn fetch_stats(&self) -> fetch::FetchStats {
        self.fetcher.stats
    }

    /// Execute one instruction (or deliver one pending event).
    pub fn step(&mut self, vm: &mut Vm) -> Step {
        // External events at an instruction boundary (SDM Vol. 3 6.9).
        match interrupt::take_pending(vm) {
            Ok(true) => return Step::Retired,
            Ok(false) => {}
            Err(r) => return Step::Shutdown(r),
        }
        if vm.cpu.halted {
            return Step::Halted;
        }
        let had_shadow = vm.cpu.interrupt_shadow;
        let tf = vm.cpu.eflags & crate::cpu::TF != 0;
        let rf = vm.cpu.eflags & crate::cpu::RF != 0;
        let tr = vm.cpu.tr.selector;
        let ins = match self.fetcher.fetch(vm) {
            Ok(i) => i,
            Err(f) => return self.fault(vm, f),
        };
        let mut ctx = Ctx::for_insn(vm, &ins, self.rep_batch);
        let r = match self.table.lookup(&ins) {
            Some(h) if ins.code() != iced_x86::Code::INVALID => h(&mut ctx, &ins),
            _ => {
                *self
                    .stats
                    .unimplemented
                    .entry(format!("{:?}", ins.code()))
                    .or_default() += 1;
                Err(Fault::ud())
            }
        };
        let Ctx {
            next_eip, shadow, ..
        } = ctx;
        match r {
            Ok(()) => {
                self.stats.instructions += 1;
                vm.clock.retired += 1;
                vm.cpu.eip = next_eip;
                // A shadow lasts exactly one instruction and two in a row do
                // not chain (SDM Vol. 3 6.8.3).
                vm.cpu.interrupt_shadow = shadow && !had_shadow;
                // RF is cleared once an instruction completes, unless that
                // instruction loaded EFLAGS whole: IRET or a task switch
                // (SDM Vol. 3 17.3.1.1).
                if rf
                    && !matches!(ins.mnemonic(), Mnemonic::Iret | Mnemonic::Iretd)
                    && vm.cpu.tr.selector == tr
                {
                    vm.cpu.eflags &= !crate::cpu::RF;
                }
                if tf && !interrupt::delivered_software_interrupt(&ins, &vm.cpu) {
                    if let Err(r) = interrupt::single_step_trap(vm) {
                        return Step::Shutdown(r);
                    }
                }
                Step::Retired
            }
            Err(f) => self.fault(vm, f),
        }
    }

    fn fault(&mut self, vm: &mut Vm, f: Fault) -> Step {
        fault(&mut self.stats, vm, f)
    }

    /// Run at most `left` instructions of the cached block at CS:EIP.
    /// Returns how many instructions (or delivered exceptions) it counted,
    /// 0 if the block fast path does not apply here, and the shutdown that
    /// ended it if any.
    ///
    /// The caller has checked that no event is deliverable, the CPU is not
    /// halted, neither TF, RF nor an interrupt shadow is set (an
    /// instruction that runs with RF goes through `step`, which clears it). Instructions
    /// that could change any of that, or what fetching depends on, end
    /// their block (`fetch::ends_block`); what the block cannot see
    /// statically is checked after each instruction: a control transfer
    /// or REP continuation (EIP not the fall-through), an interrupt shadow,
    /// a store into the block's frame or a device access.
    #[inline]
    fn run_block(&mut self, vm: &mut Vm, left: u64) -> (u64, Option<ShutdownReason>) {
        let Some(insns) = self.fetcher.block(vm, &self.table) else {
            return (0, None);
        };
        let rep_batch = self.rep_batch.max(1);
        let mut done = 0u64;
        let mut retired = 0u64;
        let mut end = None;
        'block: loop {
            let n = insns
                .len()
                .min(usize::try_from(left - done).unwrap_or(usize::MAX));
            for d in &insns[..n] {
                let eip = vm.cpu.eip;
                let mut ctx = Ctx {
                    vm,
                    eip,
                    next_eip: d.next_eip,
                    shadow: false,
                    rep_batch,
                };
                let r = match d.handler {
                    Some(h) => h(&mut ctx, &d.ins),
                    None => {
                        *self
                            .stats
                            .unimplemented
                            .entry(format!("{:?}", d.ins.code()))
                            .or_default() += 1;
                        Err(Fault::ud())
                    }
                };
                let Ctx {
                    next_eip, shadow, ..
                } = ctx;
                done += 1;
                match r {
                    Ok(()) => {
                        retired += 1;
                        vm.clock.retired += 1;
                        vm.cpu.eip = next_eip;
                        // Events cannot become deliverable inside a block:
                        // IF changes and I/O end blocks, and an MMIO access
                        // (the only other way to reach a device) sets
                        // `code_written` (`Vm::read_phys`/`write_phys`).
                        if next_eip != d.next_eip || shadow || vm.mem.code_written {
                            // No shadow at block entry, so this one starts
                            // one (SDM Vol. 3 6.8.3).
                            vm.cpu.interrupt_shadow = shadow;
                            // A tight loop branching back to its own start
                            // with nothing written to its frame: the block
                            // is still valid (same CS, mode and mapping,
                            // since nothing in it may change them), so run
                            // it again.
                            if d.loops && !shadow && !vm.mem.code_written && done < left {
                                continue 'block;
                            }
                            break 'block;
                        }
                    }
                    Err(f) => {
                        if let Step::Shutdown(r) = fault(&mut self.stats, vm, f) {
                            end = Some(r);
                        }
                        break 'block;
                    }
                }
            }
            break;
        }
        self.stats.instructions += retired;
        (done, end)
    }
}

/// Count and deliver the fault `f` raised by the instruction at CS:EIP.
fn fault(stats: &mut InterpStats, vm: &mut Vm, f: Fault) -> Step {
    if let Some(c) = stats.exceptions.get_mut(f.vector as usize) {
        *c += 1;
    }
    vm.clock.retired += 1;
    match interrupt::deliver_exception(vm, f) {
        Ok(()) => Step::Retired,
        Err(r) => Step::Shutdown(r),
    }
}

/// Whether `interrupt::take_pending` would deliver something now.
#[inline]
pub fn event_deliverable(vm: &Vm) -> bool {
    let cpu = &vm.cpu;
    !cpu.interrupt_shadow
        && ((cpu.pending_nmi && !cpu.nmi_blocked)
            || (cpu.eflags & crate::cpu::IF != 0 && (cpu.pending_irq.is_some() || vm.intr())))
}

impl Engine for Interpreter {
    fn name(&self) -> &'static str {
        "interp"
    }

    fn run(&mut self, vm: &mut Vm, budget: Budget) -> Exit {
        // Between runs another engine (the translator's code, KVM) may have
        // written RAM through the host pointer, which `GuestMemory` cannot
        // see: make every cached block compare its bytes once more.
        vm.mem.code_gen += 1;
        let mut left = budget.instructions;
        while left > 0 {
            let cpu = &vm.cpu;
            if !cpu.halted
                && !cpu.interrupt_shadow
                && cpu.eflags & (crate::cpu::TF | crate::cpu::RF) == 0
                && !event_deliverable(vm)
            {
                let (n, end) = self.run_block(vm, left);
                if let Some(r) = end {
                    return Exit::Shutdown(r);
                }
                if n > 0 {
                    left -= n;
                    continue;
                }
            }
            match self.step(vm) {
                Step::Retired => {}
                Step::Halted => return Exit::Halted,
                Step::Shutdown(r) => return Exit::Shutdown(r),
            }
            left -= 1;
        }
        Exit::BudgetSpent
    }
}

#[cfg(test)]
mod tests {
    //! The block fast path of `run` against the architecture: self-modifying
    //! code, precise faults, REP continuation, single-step, events.

    use iced_x86::code_asm::*;

    use super::testutil::{load, vm16, vm32, CODE};
    use super::*;
    use crate::cpu::{cr0, EAX, EBX, ECX, EDX, IF, TF};

    fn run_n(vm: &mut Vm, n: u64) -> (Interpreter, Exit) {
        let mut it = Interpreter::new();
        let e = it.run(vm, Budget::insns(n));
        (it, e)
    }

    /// Fill the shadow entry for fetching from the code page, so that the
    /// very first instruction already runs from a cached block.
    fn warm(vm: &mut Vm) {
        let lin = vm.cpu.seg(crate::cpu::SegReg::Cs).base.wrapping_add(CODE);
        vm.translate(lin, crate::mmu::Access::FETCH)
            .expect("code mapped");
    }

    /// Point real-mode vector `v` at `0:handler`.
    fn ivt(vm: &mut Vm, v: u8, handler: u16) {
        vm.mem.write_u16(v as u64 * 4, handler);
        vm.mem.write_u16(v as u64 * 4 + 2, 0);
    }

    #[test]
    fn store_into_next_instruction_of_the_block_is_seen() {
        let mut vm = vm32();
        // 1000: C6 05 08 10 00 00 42   mov byte [0x1008], 0x42
        // 1007: B8 11 11 11 11         mov eax, 0x11111111 (imm at 1008)
        // 100C: F4                     hlt
        let code = [
            0xC6, 0x05, 0x08, 0x10, 0x00, 0x00, 0x42, 0xB8, 0x11, 0x11, 0x11, 0x11, 0xF4,
        ];
        vm.mem.write(CODE as u64, &code);
        vm.cpu.eip = CODE;
        warm(&mut vm);
        let (_, e) = run_n(&mut vm, 100);
        assert_eq!(e, Exit::Halted);
        assert_eq!(vm.cpu.reg32(EAX), 0x1111_1142);
    }

    #[test]
    fn store_into_the_current_instruction_takes_effect_next_time() {
        let mut vm = vm32();
        // A loop whose body rewrites its own INC into a NOP-like DEC after
        // the first pass: inc ebx (43) -> dec ebx (4B).
        // 1000: 43                     inc ebx
        // 1001: C6 05 00 10 00 00 4B   mov byte [0x1000], 0x4B
        // 1008: 49                     dec ecx
        // 1009: 75 F5                  jnz 1000
        // 100B: F4                     hlt
        let code = [
            0x43, 0xC6, 0x05, 0x00, 0x10, 0x00, 0x00, 0x4B, 0x49, 0x75, 0xF5, 0xF4,
        ];
        vm.mem.write(CODE as u64, &code);
        vm.cpu.eip = CODE;
        vm.cpu.set_reg32(ECX, 5);
        warm(&mut vm);
        let (_, e) = run_n(&mut vm, 1000);
        assert_eq!(e, Exit::Halted);
        // +1 on the first pass, -1 on the four others.
        assert_eq!(vm.cpu.reg32(EBX), (-3i32) as u32);
    }

    #[test]
    fn store_through_another_linear_alias_is_seen() {
        let mut vm = vm32();
        // Paging: linear 0-1 MiB identity, linear 0x400000 -> frame 0x1000.
        const PD: u32 = 0x10000;
        const PT: u32 = 0x11000;
        const PT2: u32 = 0x12000;
        const P_RW: u32 = 3;
        vm.mem.write_u32(PD as u64, PT | P_RW);
        vm.mem.write_u32(PD as u64 + 4, PT2 | P_RW);
        for i in 0..256u32 {
            vm.mem.write_u32((PT + 4 * i) as u64, (i << 12) | P_RW);
        }
        vm.mem.write_u32(PT2 as u64, 0x1000 | P_RW);
        vm.cpu.cr3 = PD;
        vm.cpu.cr0 |= cr0::PG;
        vm.mmu.flush_all(&vm.cpu);
        // 1000: C6 05 08 00 40 00 42   mov byte [0x400008], 0x42
        // 1007: B8 11 11 11 11         mov eax, 0x11111111 (imm at 1008)
        // 100C: F4                     hlt
        let code = [
            0xC6, 0x05, 0x08, 0x00, 0x40, 0x00, 0x42, 0xB8, 0x11, 0x11, 0x11, 0x11, 0xF4,
        ];
        vm.mem.write(CODE as u64, &code);
        vm.cpu.eip = CODE;
        warm(&mut vm);
        let (_, e) = run_n(&mut vm, 100);
        assert_eq!(e, Exit::Halted);
        assert_eq!(vm.cpu.reg32(EAX), 0x1111_1142);
    }

    #[test]
    fn store_into_a_data_page_that_later_holds_a_block_is_seen() {
        let mut vm = vm32();
        // 1000: A3 00 31 00 00        mov [0x3100], eax  (frame 3 written
        //                             as plain data first)
        // 1005: E9 F6 1F 00 00        jmp 0x3000
        vm.mem.write(
            CODE as u64,
            &[0xA3, 0x00, 0x31, 0x00, 0x00, 0xE9, 0xF6, 0x1F, 0x00, 0x00],
        );
        // 3000: C6 05 08 30 00 00 42  mov byte [0x3008], 0x42
        // 3007: B8 11 11 11 11        mov eax, 0x11111111 (imm at 3008)
        // 300C: F4                    hlt
        vm.mem.write(
            0x3000,
            &[
                0xC6, 0x05, 0x08, 0x30, 0x00, 0x00, 0x42, 0xB8, 0x11, 0x11, 0x11, 0x11, 0xF4,
            ],
        );
        vm.cpu.eip = CODE;
        warm(&mut vm);
        vm.translate(0x3000, crate::mmu::Access::FETCH)
            .expect("mapped");
        vm.translate(0x3100, crate::mmu::Access::WRITE)
            .expect("mapped");
        let (_, e) = run_n(&mut vm, 100);
        assert_eq!(e, Exit::Halted);
        assert_eq!(vm.cpu.reg32(EAX), 0x1111_1142);
    }

    #[test]
    fn code_changed_between_runs_is_redecoded() {
        let mut vm = vm32();
        load(&mut vm, 32, |a| {
            a.mov(eax, 1u32)?;
            a.hlt()
        });
        let mut it = Interpreter::new();
        assert_eq!(it.run(&mut vm, Budget::insns(10)), Exit::Halted);
        assert_eq!(vm.cpu.reg32(EAX), 1);
        load(&mut vm, 32, |a| {
            a.mov(eax, 2u32)?;
            a.hlt()
        });
        vm.cpu.halted = false;
        assert_eq!(it.run(&mut vm, Budget::insns(10)), Exit::Halted);
        assert_eq!(vm.cpu.reg32(EAX), 2);
    }

    #[test]
    fn ram_written_behind_the_interpreters_back_between_runs_is_seen() {
        let mut vm = vm32();
        load(&mut vm, 32, |a| {
            a.mov(eax, 1u32)?;
            a.hlt()
        });
        warm(&mut vm);
        // Taken once and kept, as generated code or KVM would.
        let ram = vm.mem.ram_host_ptr();
        let mut it = Interpreter::new();
        assert_eq!(it.run(&mut vm, Budget::insns(10)), Exit::Halted);
        // Written with no tracking (the MOV's immediate is at CODE + 1).
        // SAFETY: CODE + 1 is inside the 1 MiB of guest RAM and nothing
        // else borrows the RAM while this byte is written.
        unsafe { *ram.add(CODE as usize + 1) = 2 };
        vm.cpu.eip = CODE;
        vm.cpu.halted = false;
        assert_eq!(it.run(&mut vm, Budget::insns(10)), Exit::Halted);
        assert_eq!(vm.cpu.reg32(EAX), 2);
    }

    #[test]
    fn fault_on_third_instruction_is_precise() {
        let mut vm = vm16();
        ivt(&mut vm, 0, 0x3000);
        vm.mem.write(0x3000, &[0xF4]); // hlt
        let div_at = {
            let end = load(&mut vm, 16, |a| {
                a.inc(ax)?;
                a.inc(bx)?;
                a.div(cl)?;
                a.inc(dx)
            });
            end - 3 // div cl (2 bytes) + inc dx (1 byte)
        };
        vm.cpu.set_reg32(ECX, 0);
        vm.cpu.set_reg32(EDX, 0); // reset leaves the CPU signature there
        warm(&mut vm);
        let (it, e) = run_n(&mut vm, 100);
        assert_eq!(e, Exit::Halted);
        assert_eq!(vm.cpu.reg32(EAX) & 0xFFFF, 1);
        assert_eq!(vm.cpu.reg32(EBX) & 0xFFFF, 1);
        assert_eq!(vm.cpu.reg32(EDX) & 0xFFFF, 0);
        // #DE is a fault: the pushed IP is the DIV's (SDM Vol. 3 6.15).
        let top = vm.cpu.reg32(crate::cpu::ESP) as u64;
        assert_eq!(vm.mem.read_u16(top) as u32, div_at);
        assert_eq!(it.stats.exceptions[0], 1);
        assert_eq!(it.stats.instructions, 3); // inc, inc, hlt
    }

    #[test]
    fn rep_continues_across_batches() {
        let mut vm = vm32();
        for i in 0..1000u64 {
            vm.mem.write_u8(0x20000 + i, i as u8);
        }
        load(&mut vm, 32, |a| {
            a.mov(esi, 0x20000u32)?;
            a.mov(edi, 0x30000u32)?;
            a.mov(ecx, 1000u32)?;
            a.rep().movsb()?;
            a.mov(ebx, 7u32)?;
            a.hlt()
        });
        let (_, e) = run_n(&mut vm, 1000);
        assert_eq!(e, Exit::Halted);
        assert_eq!(vm.cpu.reg32(ECX), 0);
        assert_eq!(vm.cpu.reg32(EBX), 7);
        for i in 0..1000u64 {
            assert_eq!(vm.mem.read_u8(0x30000 + i), i as u8);
        }
    }

    #[test]
    fn single_step_traps_after_every_instruction() {
        let mut vm = vm16();
        ivt(&mut vm, 1, 0x3000);
        // #DB handler: inc word [0x500]; iret
        vm.mem.write(0x3000, &[0xFF, 0x06, 0x00, 0x05, 0xCF]);
        let end = load(&mut vm, 16, |a| {
            a.inc(ax)?;
            a.inc(ax)?;
            a.inc(ax)?;
            a.hlt()
        });
        vm.cpu.eflags |= TF;
        // Each INC and the trap it raises is one step, the handler two.
        let (_, e) = run_n(&mut vm, 9);
        assert_eq!(e, Exit::BudgetSpent);
        assert_eq!(vm.cpu.reg32(EAX) & 0xFFFF, 3);
        assert_eq!(vm.mem.read_u16(0x500), 3);
        assert_eq!(vm.cpu.eip, end - 1);
    }

    #[test]
    fn budget_is_exact_inside_a_block() {
        let mut vm = vm32();
        load(&mut vm, 32, |a| {
            for _ in 0..10 {
                a.inc(eax)?;
            }
            a.hlt()
        });
        warm(&mut vm);
        let mut it = Interpreter::new();
        assert_eq!(it.run(&mut vm, Budget::insns(7)), Exit::BudgetSpent);
        assert_eq!(vm.cpu.reg32(EAX), 7);
        assert_eq!(vm.clock.retired, 7);
        assert_eq!(it.run(&mut vm, Budget::insns(2)), Exit::BudgetSpent);
        assert_eq!(vm.cpu.reg32(EAX), 9);
    }

    #[test]
    fn budget_is_exact_in_a_tight_loop() {
        let mut vm = vm32();
        let mut top = CodeLabel::default();
        load(&mut vm, 32, |a| {
            top = a.create_label();
            a.set_label(&mut top)?;
            a.inc(eax)?;
            a.inc(ebx)?;
            a.jmp(top)
        });
        warm(&mut vm);
        let mut it = Interpreter::new();
        // 3 instructions an iteration: 10 passes and one more INC.
        assert_eq!(it.run(&mut vm, Budget::insns(31)), Exit::BudgetSpent);
        assert_eq!(vm.cpu.reg32(EAX), 11);
        assert_eq!(vm.cpu.reg32(EBX), 10);
        assert_eq!(vm.cpu.eip, CODE + 1);
        assert_eq!(it.stats.instructions, 31);
    }

    #[test]
    fn interrupt_made_deliverable_by_sti_is_taken_after_the_shadow() {
        let mut vm = vm16();
        ivt(&mut vm, 0x20, 0x3000);
        vm.mem.write(0x3000, &[0xF4]); // hlt
        let mut top = CodeLabel::default();
        load(&mut vm, 16, |a| {
            top = a.create_label();
            a.set_label(&mut top)?;
            a.inc(ax)?;
            a.inc(ax)?;
            a.sti()?;
            a.inc(cx)?;
            a.inc(dx)?;
            a.jmp(top)
        });
        vm.cpu.eflags &= !IF;
        vm.cpu.set_reg32(EDX, 0);
        warm(&mut vm);
        vm.cpu.pending_irq = Some(0x20);
        let (_, e) = run_n(&mut vm, 100);
        assert_eq!(e, Exit::Halted);
        assert_eq!(vm.cpu.reg32(EAX) & 0xFFFF, 2);
        assert_eq!(vm.cpu.reg32(ECX) & 0xFFFF, 1);
        assert_eq!(vm.cpu.reg32(EDX) & 0xFFFF, 0);
        assert_eq!(vm.cpu.pending_irq, None);
    }

    #[test]
    fn interrupt_pending_in_a_hot_loop_is_taken() {
        let mut vm = vm16();
        ivt(&mut vm, 0x21, 0x3000);
        vm.mem.write(0x3000, &[0xF4]); // hlt
        let mut top = CodeLabel::default();
        load(&mut vm, 16, |a| {
            top = a.create_label();
            a.set_label(&mut top)?;
            a.inc(ax)?;
            a.jmp(top)
        });
        vm.cpu.eflags |= IF;
        let mut it = Interpreter::new();
        assert_eq!(it.run(&mut vm, Budget::insns(101)), Exit::BudgetSpent);
        assert_eq!(vm.cpu.reg32(EAX) & 0xFFFF, 51);
        vm.cpu.pending_irq = Some(0x21);
        assert_eq!(it.run(&mut vm, Budget::insns(100)), Exit::Halted);
        assert_eq!(vm.cpu.reg32(EAX) & 0xFFFF, 51);
    }
}
