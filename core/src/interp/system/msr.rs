//! MSRs (to be filled in).
use super::super::Table;
pub(super) fn register(_t: &mut Table) {}
