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
        let eip = vm.cpu.eip;
        let code32 = vm.cpu.code32();
        let mut ctx = Ctx {
            vm,
            eip,
            next_eip: if code32 {
                ins.next_ip32()
            } else {
                ins.next_ip32() & 0xFFFF
            },
            shadow: false,
            rep_batch: self.rep_batch.max(1),
        };
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
        if let Some(c) = self.stats.exceptions.get_mut(f.vector as usize) {
            *c += 1;
        }
        vm.clock.retired += 1;
        match interrupt::deliver_exception(vm, f) {
            Ok(()) => Step::Retired,
            Err(r) => Step::Shutdown(r),
        }
    }
}

impl Engine for Interpreter {
    fn name(&self) -> &'static str {
        "interp"
    }

    fn run(&mut self, vm: &mut Vm, budget: Budget) -> Exit {
        for _ in 0..budget.instructions {
            match self.step(vm) {
                Step::Retired => {}
                Step::Halted => return Exit::Halted,
                Step::Shutdown(r) => return Exit::Shutdown(r),
            }
        }
        Exit::BudgetSpent
    }
}
