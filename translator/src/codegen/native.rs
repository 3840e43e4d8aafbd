//! Native translation: guest instructions that run as the same host
//! instruction, re-encoded with iced-x86 after renaming guest registers to
//! their host registers (`ctx::HOST_REG`), so that the host computes the
//! guest's flags itself.

use super::Emitter;
use crate::block::InsnMeta;

/// Emit `m` natively if it has a native form; false to fall back.
/// `live_after`: arithmetic flags live after it (`flags::live_after`).
pub fn emit(_e: &mut Emitter, _m: &InsnMeta, _live_after: u32) -> bool {
    false
}
