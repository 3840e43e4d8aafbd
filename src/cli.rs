//! The `umbra` command line (clap derive): subcommands and their options.
//! `main.rs` runs them; this file only describes them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use umbra::machine::CharTarget;

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
    /// Without a subcommand, `umbra` boots the default guest (as `umbra run`).
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a PC guest. Without --kernel it boots as a PC does: the
    /// firmware (--bios, by default Debian's SeaBIOS from
    /// /usr/share/seabios) starts from the reset vector and boots the
    /// --disk image or the --cdrom ISO; with neither, the default Debian
    /// i386 guest's syslinux disk image (fetched and built on first use,
    /// attached as a --snapshot). With --kernel, a Linux bzImage or
    /// multiboot kernel is loaded directly, without a BIOS.
    ///
    /// The serial console (COM1) is the terminal in raw mode: Ctrl-A X
    /// quits, Ctrl-A H lists the keys, Ctrl-A C prints statistics, Ctrl-A S
    /// writes the --screenshot PNG. The process exits with 0 when the guest
    /// powers off through ACPI, with
    /// (V << 1) | 1 when it writes V to port 0xF4, and with 2 on a triple
    /// fault (the CPU state is printed) or a host-side error.
    Run(RunArgs),
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

    /// Start at program K of the N (the first K are generated, not run):
    /// a long campaign split over several runs checks the same programs
    /// as one run.
    #[arg(long, value_name = "K", default_value_t = 0, requires = "random")]
    pub from: u64,

    /// The two engines to compare, A,B (interp, jit, kvm).
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

    /// Instruction classes to leave out (all are generated by default).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "CLASS,...")]
    pub exclude: Vec<Class>,

    /// Most instructions one program may run.
    #[arg(long, default_value_t = 200_000)]
    pub max_steps: u64,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kernel to boot directly, without a BIOS: a Linux bzImage or a
    /// multiboot (v1) ELF or a.out-kludge kernel. Without it the machine
    /// boots through the firmware (--bios).
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,

    /// Initial RAM disk for Linux (a module for a multiboot kernel).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,

    /// With --kernel: the kernel command line (empty by default; the
    /// default guest's is `console=ttyS0 cryptomgr.notests`, add
    /// `umbra.workload=1` to run the workload). On the firmware path the
    /// boot loader's menu gives the command line.
    #[arg(long, value_name = "ARGS", requires = "kernel")]
    pub append: Option<String>,

    /// Guest RAM, with a K, M or G suffix (default MiB).
    #[arg(long, short = 'm', value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub memory: u64,

    /// Execution engine: jit (the binary translator) or interp (the
    /// reference interpreter, slower, the translator's oracle).
    #[arg(long, value_enum, default_value_t = EngineArg::Jit)]
    pub engine: EngineArg,

    /// Derive time from retired instructions instead of the host clock, and
    /// start the RTC at 2024-01-01: two runs give byte-identical output.
    #[arg(long)]
    pub deterministic: bool,

    /// The firmware ROM (64 KiB to 256 KiB; default: Debian's SeaBIOS,
    /// /usr/share/seabios/bios.bin from the `seabios` package) mapped below
    /// 4 GiB and, its last 128 KiB, as the PAM-shadowed ROM below 1 MiB,
    /// started at the reset vector. The machine has fw_cfg, VGA (with
    /// vgabios-stdvga.bin from the ROM's folder) and IDE. With --bios and
    /// no --disk or --cdrom, no drive is attached.
    #[arg(long, value_name = "FILE", conflicts_with = "kernel")]
    pub bios: Option<PathBuf>,

    /// A raw disk image on the primary IDE master, booted by the firmware.
    /// It is written in place (FLUSH CACHE syncs it to the host disk); an
    /// image the user may not write is attached write-protected.
    #[arg(long, value_name = "FILE", conflicts_with = "kernel")]
    pub disk: Option<PathBuf>,

    /// An ISO 9660 image in the CD-ROM drive (secondary master), booted by
    /// the firmware when there is no bootable --disk.
    #[arg(long, value_name = "FILE", conflicts_with = "kernel")]
    pub cdrom: Option<PathBuf>,

    /// Keep the guest's writes to the --disk image in memory and drop them
    /// at exit: the image file is opened read-only and never changes (the
    /// default guest's disk is always attached this way).
    #[arg(long, conflicts_with = "kernel")]
    pub snapshot: bool,

    /// Where COM1 goes: stdio (the terminal, raw mode), file:PATH (output
    /// only) or none. With --display terminal the terminal shows the
    /// screen, so COM1 goes nowhere unless file:PATH is given.
    #[arg(long, value_name = "TARGET", default_value = "stdio", value_parser = parse_target)]
    pub serial: CharTarget,

    /// Where the port 0xE9 debug console goes: stdio, file:PATH or none.
    #[arg(long, value_name = "TARGET", default_value = "none", value_parser = parse_target)]
    pub debugcon: CharTarget,

    /// Where the guest's screen is shown. `terminal` (not with --kernel): VGA
    /// text modes are drawn on the terminal (a graphics mode shows one
    /// status line) and typed keys go to the PS/2 keyboard instead of
    /// COM1; Ctrl-A X still quits.
    #[arg(long, value_enum, default_value_t = DisplayArg::None)]
    pub display: DisplayArg,

    /// Write the screen as a PNG to FILE at exit, and when Ctrl-A S is
    /// pressed (not with --kernel: there is no VGA).
    #[arg(long, value_name = "FILE")]
    pub screenshot: Option<PathBuf>,

    /// Print execution statistics (instructions, shadow paging, exceptions)
    /// on stderr at exit.
    #[arg(long)]
    pub stats: bool,

    /// Sample the guest's EIP every slice of instructions and print the
    /// hottest addresses on stderr at exit (match them against the
    /// kernel's System.map).
    #[arg(long)]
    pub profile: bool,

    /// Stop after N guest instructions (exit status 0), e.g. to time a
    /// fixed amount of work with --stats.
    #[arg(long, value_name = "N")]
    pub max_instructions: Option<u64>,

    /// Size of the translator's code cache (4M to 1G; K, M or G suffix,
    /// default MiB). When it is full the oldest sixteenth is evicted.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_code_cache)]
    pub code_cache: u64,
}

/// Execution engines of `umbra run`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// The reference interpreter.
    Interp,
    /// The binary translator.
    #[default]
    Jit,
}

/// Displays of `umbra run`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DisplayArg {
    /// No screen shown.
    #[default]
    None,
    /// VGA text on the terminal, keys to the PS/2 keyboard.
    Terminal,
}

/// `stdio`, `none` or `file:PATH`.
fn parse_target(s: &str) -> Result<CharTarget, String> {
    match s {
        "stdio" => Ok(CharTarget::Stdio),
        "none" => Ok(CharTarget::None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(CharTarget::File(PathBuf::from(p))),
            _ => Err(format!("`{s}`: use stdio, none or file:PATH")),
        },
    }
}

/// A size such as 256M, 1G, 65536K or 512 (MiB).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1 << 20),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (examples: 256M, 1G)"))?;
    n.checked_mul(mult)
        .filter(|b| (1 << 20..=(3u64 << 30)).contains(b))
        .ok_or_else(|| format!("`{s}`: the memory size must be between 1M and 3G"))
}

/// `--code-cache`: a size as for `--memory`, from 4 MiB to 1 GiB.
fn parse_code_cache(s: &str) -> Result<u64, String> {
    parse_size(s)
        .ok()
        .filter(|b| (4 << 20..=1 << 30).contains(b))
        .ok_or_else(|| format!("`{s}`: the code cache must be between 4M and 1G (example: 256M)"))
}

/// A u32 in hex, with or without 0x.
fn parse_hex_u32(s: &str) -> Result<u32, String> {
    let t = s.trim_start_matches("0x");
    u32::from_str_radix(t, 16).map_err(|e| format!("`{s}` is not a hex number: {e}"))
}
