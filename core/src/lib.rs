//! umbra-core: the CPU core shared by every Umbra engine: CPU state, guest
//! memory, the MMU with shadow paging, architectural faults, the bus
//! traits, the virtual clock and the reference interpreter.
//!
//! It knows nothing about devices, firmware or the translator; those crates
//! depend on it, never the other way.

pub mod bus;
pub mod clock;
pub mod cpu;
pub mod engine;
pub mod exception;
pub mod interp;
pub mod mem;
pub mod mmu;
pub mod vm;

pub use engine::{Budget, Engine, Exit, ShutdownReason};
pub use exception::Fault;
pub use vm::Vm;
