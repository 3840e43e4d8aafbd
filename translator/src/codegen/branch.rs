//! Block exits: the fall-through exit, direct and conditional jumps,
//! calls and returns, indirect branches.

use super::Emitter;
use crate::block::InsnMeta;

/// Emit the block's last instruction `m` if it is a branch this module
/// translates, with all of the block's exits; false otherwise.
pub fn emit(_e: &mut Emitter, _m: &InsnMeta) -> bool {
    false
}

/// The exit after the block's last instruction, to `eip`.
pub fn emit_fallthrough(e: &mut Emitter, eip: u32) {
    e.emit_exit(eip);
}
