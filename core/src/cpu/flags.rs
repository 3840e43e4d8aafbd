//! EFLAGS bits (SDM Vol. 1 3.4.3).

/// Carry.
pub const CF: u32 = 1 << 0;
/// Reserved, always 1.
pub const FIXED1: u32 = 1 << 1;
/// Parity of the low byte of the result.
pub const PF: u32 = 1 << 2;
/// Auxiliary carry (BCD carry out of bit 3).
pub const AF: u32 = 1 << 4;
/// Zero.
pub const ZF: u32 = 1 << 6;
/// Sign.
pub const SF: u32 = 1 << 7;
/// Trap (single-step).
pub const TF: u32 = 1 << 8;
/// Interrupt enable.
pub const IF: u32 = 1 << 9;
/// Direction of string instructions.
pub const DF: u32 = 1 << 10;
/// Signed overflow.
pub const OF: u32 = 1 << 11;
/// I/O privilege level (2 bits).
pub const IOPL: u32 = 3 << 12;
pub const IOPL_SHIFT: u32 = 12;
/// Nested task.
pub const NT: u32 = 1 << 14;
/// Resume (suppress instruction breakpoints once).
pub const RF: u32 = 1 << 16;
/// Virtual-8086 mode.
pub const VM: u32 = 1 << 17;
/// Alignment check.
pub const AC: u32 = 1 << 18;
/// Virtual interrupt flag.
pub const VIF: u32 = 1 << 19;
/// Virtual interrupt pending.
pub const VIP: u32 = 1 << 20;
/// CPUID instruction available (toggleable).
pub const ID: u32 = 1 << 21;

/// The six arithmetic status flags.
pub const STATUS: u32 = CF | PF | AF | ZF | SF | OF;
/// Every bit software can ever see set.
pub const DEFINED: u32 = STATUS | FIXED1 | TF | IF | DF | IOPL | NT | RF | VM | AC | VIF | VIP | ID;
