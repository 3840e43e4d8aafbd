//! umbra-translator: runs guest code by translating it into host x86-64
//! (DESIGN.md "translator").
//!
//! - `block`: what a translation is keyed by, decoding a guest block.
//! - `cache`: the translated blocks, their lookup, chaining and eviction.
//! - `codegen`: host code for a block (dynasmrt), the shared stubs.
//! - `ctx`: the state generated code works on, the register map.
//! - `exec`: the executable memory (written, then published).
//! - `helpers`: monitor routines generated code calls.
//! - `engine`: the dispatcher and the block cache, as an `Engine`.

// dynasm!'s register operands expand to `.into()` on plain integers.
#![allow(clippy::useless_conversion)]

pub mod block;
pub mod cache;
pub mod codegen;
pub mod ctx;
pub mod engine;
pub mod exec;
pub mod helpers;

pub use engine::{Translator, TranslatorStats, DEFAULT_CACHE_BYTES};
