//! The interface every execution engine implements (interpreter,
//! translator, KVM), so that the CLI and the differential harness can swap
//! them.

use crate::vm::Vm;

/// How much an engine may run before returning to the machine loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Retired guest instructions (an exception or interrupt delivery
    /// counts as one step).
    pub instructions: u64,
    /// The engine may run past `instructions` to the end of the block of
    /// generated code it is about to enter (at most one block's
    /// instructions more) rather than run the rest one by one: for a
    /// machine loop whose slices only pace device polling.
    pub overrun: bool,
}

impl Budget {
    /// Exactly `n` instructions.
    pub const fn insns(n: u64) -> Self {
        Budget {
            instructions: n,
            overrun: false,
        }
    }
    /// About `n` instructions (`overrun`).
    pub const fn about(n: u64) -> Self {
        Budget {
            instructions: n,
            overrun: true,
        }
    }
    /// Exactly one instruction: lockstep.
    pub const ONE: Budget = Budget::insns(1);
}

/// Why the guest stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// A fault during double-fault delivery.
    TripleFault,
    /// The platform asked for a reset or power off.
    Platform(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The budget ran out; the machine loop should service events.
    BudgetSpent,
    /// HLT executed; the CPU waits for an interrupt (`cpu.halted` is set).
    Halted,
    /// The machine shut down.
    Shutdown(ShutdownReason),
    /// The engine cannot go on (a host-side failure, not a guest event).
    Error(String),
}

pub trait Engine {
    fn name(&self) -> &'static str;
    /// Run guest code until something needs the machine loop.
    fn run(&mut self, vm: &mut Vm, budget: Budget) -> Exit;
}
