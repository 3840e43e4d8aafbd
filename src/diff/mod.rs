//! The differential harness: runs the same guest program on two engines
//! (interpreter, KVM, later the translator) and compares their state, to
//! completion or in lockstep, and reports the first divergence with a
//! minimal reproducer.
//!
//! - `program`: a test case and the guest memory layout it runs in.
//! - `forms`: instruction forms by class (from iced-x86's tables) and the
//!   flags each leaves undefined.
//! - `gen`: proptest strategies for random programs and their encoding.
//! - `compare`: state comparison and the divergence report.
//! - `runner`: one program on two engines; seeded random campaigns with
//!   shrinking.
//!
//! It owns no engine: `make_engine` picks one by name.

pub mod compare;
pub mod forms;
pub mod gen;
pub mod program;
pub mod runner;

pub use compare::Divergence;
pub use gen::{Case, FormTable, GenConfig, Item};
pub use program::{Mode, Program};
pub use runner::{Campaign, Session, Summary};

use umbra_core::interp::Interpreter;
use umbra_core::{Engine, Vm};

/// Engines `make_engine` knows.
pub const ENGINES: &[&str] = &["interp", "jit", "kvm"];

/// Host-side failures of the harness (guest behaviour is never an error:
/// it is compared).
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("unknown engine `{0}` (known: interp, jit, kvm)")]
    UnknownEngine(String),
    #[error("the KVM engine is unavailable: {0}")]
    KvmUnavailable(String),
    #[error(transparent)]
    Layout(#[from] program::LayoutError),
    #[error(transparent)]
    Encode(#[from] gen::GenError),
    #[error("cannot generate a program: {0}")]
    Generate(String),
}

/// Make the engine called `name` for `vm`. In lockstep the interpreter
/// runs one REP iteration per step, as hardware single-stepping does.
pub fn make_engine(name: &str, vm: &mut Vm, lockstep: bool) -> Result<Box<dyn Engine>, DiffError> {
    match name {
        "interp" => {
            let mut i = Interpreter::new();
            if lockstep {
                i.rep_batch = 1;
            }
            Ok(Box::new(i))
        }
        "jit" => {
            let mut t = umbra_translator::Translator::new(umbra_translator::DEFAULT_CACHE_BYTES)
                .map_err(|e| DiffError::Generate(format!("code memory: {e}")))?;
            if lockstep {
                t.set_rep_batch(1);
            }
            Ok(Box::new(t))
        }
        "kvm" => crate::kvm::KvmEngine::new(vm)
            .map(|e| Box::new(e) as Box<dyn Engine>)
            .map_err(|e| DiffError::KvmUnavailable(e.to_string())),
        other => Err(DiffError::UnknownEngine(other.to_string())),
    }
}

/// Check that `name` can be made on this host before a long run starts.
pub fn engine_available(name: &str) -> Result<(), DiffError> {
    match name {
        "interp" | "jit" => Ok(()),
        "kvm" => {
            crate::kvm::KvmEngine::available().map_err(|e| DiffError::KvmUnavailable(e.to_string()))
        }
        other => Err(DiffError::UnknownEngine(other.to_string())),
    }
}
