//! x87 instructions (to be filled in).

use super::Table;

pub(super) fn register(_t: &mut Table) {}
