//! Guest memory operands in generated code: effective address with
//! 16/32-bit wrap, segment base, the inline shadow lookup (DESIGN.md
//! "Shadow paging") and the host pointer on a hit; a miss takes the slow
//! path.
