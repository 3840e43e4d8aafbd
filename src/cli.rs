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

    /// With --code: initial EAX..EDI in hex (EBX and ESP are set by the
    /// layout).
    #[arg(long, value_delimiter = ',', value_name = "HEX,...", requires = "code", value_parser = parse_hex_u32)]
    pub regs: Vec<u32>,

    /// With --code: initial EFLAGS in hex (status flags and DF are kept).
    #[arg(long, value_name = "HEX", requires = "code", value_parser = parse_hex_u32)]
    pub eflags: Option<u32>,

    /// With --code: fill the data area from this seed (as random programs
    /// do) instead of zeros.
    #[arg(long, value_name = "S", requires = "code")]
    pub data_seed: Option<u64>,

    /// With --code in paging mode: PTE bits (P=1, RW=2, US=4) of data
    /// pages 1-3.
    #[arg(long, value_delimiter = ',', value_name = "A,B,C", requires = "code")]
    pub data_pages: Vec<u32>,

    /// With --code in paging mode: CR0.WP off.
    #[arg(long, requires = "code")]
    pub no_wp: bool,

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

    /// Instruction classes to leave out. Against kvm the default leaves
    /// out bcd: this host's KVM fails to emulate AAA/AAS/DAA/DAS in
    /// protected mode and sets AAM/AAD's SF/ZF from AX instead of AL.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "CLASS,...")]
    pub exclude: Vec<Class>,

    /// Generate every class, even against kvm (overrides the bcd default).
    #[arg(long, conflicts_with = "exclude")]
    pub all_classes: bool,

    /// Most instructions one program may run.
    #[arg(long, default_value_t = 200_000)]
    pub max_steps: u64,
}

/// A u32 in hex, with or without 0x.
fn parse_hex_u32(s: &str) -> Result<u32, String> {
    let t = s.trim_start_matches("0x");
    u32::from_str_radix(t, 16).map_err(|e| format!("`{s}` is not a hex number: {e}"))
}
