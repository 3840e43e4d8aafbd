//! Event delivery: exceptions, software and external interrupts through the
//! IVT (real mode) or IDT (protected and V86 mode), with double and triple
//! fault rules.

use crate::engine::ShutdownReason;
use crate::exception::Fault;
use crate::vm::Vm;

/// Deliver a pending NMI or external interrupt if one may be taken now.
/// Returns whether one was delivered.
pub fn take_pending(_vm: &mut Vm) -> Result<bool, ShutdownReason> {
    Ok(false)
}

/// Deliver an exception raised by the instruction at `vm.cpu.eip`.
pub fn deliver_exception(_vm: &mut Vm, _f: Fault) -> Result<(), ShutdownReason> {
    Err(ShutdownReason::TripleFault)
}

/// The single-step trap after an instruction executed with TF set.
pub fn single_step_trap(_vm: &mut Vm) -> Result<(), ShutdownReason> {
    Ok(())
}
