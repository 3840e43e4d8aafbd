//! umbra: machine assembly, the CLI's engines (KVM), and the differential
//! harness that runs guest programs on several engines and compares them.

pub use umbra_core as core;

pub mod diff;
pub mod guests;
pub mod kvm;
pub mod machine;
