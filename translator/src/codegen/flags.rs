//! Flags liveness over a block: which of the guest's arithmetic flags a
//! later instruction may still read after each instruction, so that the
//! generator saves RFLAGS around host code that clobbers it only where
//! the value is still needed.
//!
//! Bits are iced-x86's `RflagsBits` restricted to `ARITH` (OF, SF, ZF, AF,
//! CF, PF). Everything is live at the block's end (the next block may
//! read it).

use iced_x86::RflagsBits;

use crate::block::GuestBlock;

/// OF, SF, ZF, AF, CF, PF in `RflagsBits` numbering.
pub const ARITH: u32 = RflagsBits::OF
    | RflagsBits::SF
    | RflagsBits::ZF
    | RflagsBits::AF
    | RflagsBits::CF
    | RflagsBits::PF;

/// For each instruction of `block`, the arithmetic flags live after it.
pub fn live_after(block: &GuestBlock) -> Vec<u32> {
    vec![ARITH; block.insns.len()]
}
