//! Flags liveness over a block: which of the guest's arithmetic flags a
//! later instruction may still read after each instruction, so that the
//! generator reloads RFLAGS before a native instruction only where the
//! flags it does not write are still needed.
//!
//! Bits are iced-x86's `RflagsBits` restricted to `ARITH` (OF, SF, ZF, AF,
//! CF, PF). Everything is live at the block's end (the next block may
//! read it). An instruction that runs in the monitor or may fault (any
//! memory access: its slow path may deliver a #PF, and the exception
//! frame holds EFLAGS) reads all of them, so flags are only ever found
//! dead across native register-only instructions. A shift or rotate whose
//! count may be zero leaves its flags as they were: it kills nothing and
//! reads what it may write.

use iced_x86::{Instruction, RflagsBits};

use super::native;
use crate::block::GuestBlock;

/// OF, SF, ZF, AF, CF, PF in `RflagsBits` numbering.
pub const ARITH: u32 = RflagsBits::OF
    | RflagsBits::SF
    | RflagsBits::ZF
    | RflagsBits::AF
    | RflagsBits::CF
    | RflagsBits::PF;

/// Flags `ins` may write (written, set, cleared or left undefined).
pub fn modified(ins: &Instruction) -> u32 {
    ins.rflags_modified() & ARITH
}

/// Flags `ins` surely replaces (none for a count that may be zero).
pub fn killed(ins: &Instruction) -> u32 {
    if native::count_may_be_zero(ins) {
        0
    } else {
        modified(ins)
    }
}

/// Flags `ins` needs in RFLAGS when it runs natively and `live` are
/// live after it: the ones it reads, and the live ones it may leave.
pub fn needed_before(ins: &Instruction, live: u32) -> u32 {
    let m = modified(ins);
    let keep = if m != 0 { live & !killed(ins) } else { 0 };
    (ins.rflags_read() & ARITH) | keep
}

/// For each instruction of `block`, the arithmetic flags live after it.
pub fn live_after(block: &GuestBlock) -> Vec<u32> {
    let n = block.insns.len();
    let mut out = vec![ARITH; n];
    let mut live = ARITH;
    for i in (0..n).rev() {
        out[i] = live;
        let ins = &block.insns[i].ins;
        live = if i + 1 == n || !native::is_register_native(ins) {
            ARITH
        } else {
            (live & !killed(ins)) | (ins.rflags_read() & ARITH)
        };
    }
    out
}
