//! Flag computation shared by the arithmetic families.
