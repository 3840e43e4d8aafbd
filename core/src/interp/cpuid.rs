//! CPUID: the identity and feature set the CPU reports. It reports
//! exactly the features the interpreter implements, no more.

/// Processor signature (family 6, model 1, stepping 9: a Pentium Pro class
/// P6), also left in EDX at reset.
pub const SIGNATURE: u32 = 0x0000_0619;
