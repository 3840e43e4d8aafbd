//! The `umbra` command line (clap derive): subcommands and their options.
//! `main.rs` runs them; this file only describes them.

use clap::{Args, Parser, Subcommand, ValueEnum};

use umbra::diff::forms::Class;
use umbra::diff::Mode;

#[derive(Debug, Parser)]
#[command(
    name = "umbra",
    version,
    about = "Full-virtualization engine for x86 by binary translation",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run guest programs on two engines and compare their state.
    ///
    /// With --random N, generates N random instruction streams (seeded by
    /// --seed, so a run repeats exactly), runs each on both engines, prints
    /// every divergence with a shrunk reproducer, and ends with one line:
    /// `N programs, M instructions, K divergences`. Exits non-zero on any
    /// divergence. With --code HEX, runs that one program instead.
    Diff(DiffArgs),
}

/// Which modes to generate programs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Real,
    Prot16,
    Prot32,
    Paging,
    /// All four, in turn.
    All,
}

impl ModeArg {
    pub fn modes(self) -> Vec<Mode> {
        match self {
            ModeArg::Real => vec![Mode::Real],
            ModeArg::Prot16 => vec![Mode::Prot16],
            ModeArg::Prot32 => vec![Mode::Prot32],
            ModeArg::Paging => vec![Mode::Paging],
            ModeArg::All => Mode::ALL.to_vec(),
        }
    }
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Number of random programs to generate and compare.
    #[arg(long, value_name = "N", conflicts_with = "code")]
    pub random: Option<u64>,

    /// Seed of the random programs (same seed, same programs).
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,

    /// The two engines to compare, A,B (interp, kvm).
    #[arg(
        long,
        value_name = "A,B",
        default_value = "interp,kvm",
        value_delimiter = ',',
        num_args = 1
    )]
    pub engines: Vec<String>,

    /// CPU mode of the programs.
    #[arg(long, value_enum, default_value_t = ModeArg::All)]
    pub mode: ModeArg,

    /// Compare after every instruction (and mask the flags each one leaves
    /// undefined) instead of at the end.
    #[arg(long)]
    pub lockstep: bool,

    /// Run this program (hex bytes, spaces allowed; append f4 = HLT)
    /// instead of random ones; --mode picks its mode (not `all`).
    #[arg(long, value_name = "HEX")]
    pub code: Option<String>,

    /// With --code in prot16: deliver exceptions through 16-bit interrupt
    /// gates (16-bit frames) instead of 32-bit ones.
    #[arg(long, requires = "code")]
    pub gate16: bool,

    /// Fewest items (instructions or small groups) per random program.
    #[arg(long, default_value_t = 5)]
    pub min_items: usize,

    /// Most items per random program.
    #[arg(long, default_value_t = 50)]
    pub max_items: usize,

    /// Most shrinking steps per divergent program (0 = report unshrunk).
    #[arg(long, default_value_t = 400)]
    pub shrink: u32,

    /// Instruction classes to leave out (e.g. bcd where the oracle cannot
    /// run them).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "CLASS,...")]
    pub exclude: Vec<Class>,

    /// Most instructions one program may run.
    #[arg(long, default_value_t = 200_000)]
    pub max_steps: u64,
}
