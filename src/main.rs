//! `umbra`: the command-line entry. Parses the command line (`cli`), runs
//! the subcommand and turns host-side errors into one message and a
//! non-zero exit status, never a backtrace.

mod cli;

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

#[cfg(test)]
use cli::ModeArg;
use cli::{Cli, Command, DiffArgs, DisplayArg, EngineArg, RunArgs};
use umbra::diff::forms::Class;
use umbra::diff::{self, Campaign, DiffError, GenConfig, Program, Session};
use umbra::guests;
use umbra::machine::console::Console;
use umbra::machine::display::{DisplayConfig, DisplayKind};
use umbra::machine::{Boot, CharTarget, EngineKind, Machine, MachineConfig, MachineError, Outcome};

/// Exit status when a comparison found divergences.
const EXIT_DIVERGED: u8 = 1;
/// Exit status of a host-side error (bad option, engine unavailable).
const EXIT_ERROR: u8 = 2;

/// Host-side failures of a subcommand.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("--engines takes two engines, A,B (got {0})")]
    Engines(usize),
    #[error("give --random N or --code HEX")]
    NothingToRun,
    #[error("--code needs one mode, not --mode all")]
    CodeNeedsMode,
    #[error("--code: {0}")]
    BadHex(String),
    #[error("--min-items must not exceed --max-items")]
    ItemRange,
    #[error(transparent)]
    Diff(#[from] DiffError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error(transparent)]
    Guest(#[from] guests::GuestError),
}

/// Logging on stderr, off unless UMBRA_LOG says otherwise (e.g.
/// `UMBRA_LOG=debug` shows POST codes and ignored device accesses,
/// `UMBRA_LOG=umbra_devices=debug` only the devices').
fn init_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("UMBRA_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let command = match cli.command {
        Some(c) => c,
        // Plain `umbra`: boot the default guest.
        None => match Cli::parse_from(["umbra", "run"]).command {
            Some(c) => c,
            None => unreachable!("`umbra run` parses to the run subcommand"),
        },
    };
    let r = match command {
        Command::Diff(args) => run_diff(&args),
        Command::Run(args) => run_machine(&args),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("umbra: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// What `umbra run` boots and from which disk: the kernel directly with
/// --kernel; otherwise the firmware (--bios, else Debian's SeaBIOS) with the
/// --disk/--cdrom given, or with none of them the default guest's disk
/// image as a snapshot (the cached image stays as built, and the tests'
/// copies of it stay consistent).
fn boot_choice(args: &RunArgs) -> Result<(Boot, Option<std::path::PathBuf>, bool), CliError> {
    if let Some(k) = &args.kernel {
        let boot = Boot::Kernel {
            kernel: k.clone(),
            initrd: args.initrd.clone(),
            append: args.append.clone().unwrap_or_default(),
        };
        return Ok((boot, None, false));
    }
    let default_guest = args.bios.is_none() && args.disk.is_none() && args.cdrom.is_none();
    let (disk, snapshot) = if default_guest {
        (Some(guests::default_disk()?), true)
    } else {
        (args.disk.clone(), args.snapshot)
    };
    let bios = match &args.bios {
        Some(b) => b.clone(),
        None => guests::seabios(default_guest)?,
    };
    Ok((Boot::Bios(bios), disk, snapshot))
}

fn run_machine(args: &RunArgs) -> Result<ExitCode, CliError> {
    let (boot, disk, snapshot) = boot_choice(args)?;
    let display = DisplayConfig {
        kind: match args.display {
            DisplayArg::None => DisplayKind::None,
            DisplayArg::Terminal => DisplayKind::Terminal,
        },
        screenshot: args.screenshot.clone(),
    };
    // The terminal shows the screen: COM1 only to a file.
    let serial = match (&args.serial, display.kind) {
        (CharTarget::Stdio, DisplayKind::Terminal) => CharTarget::None,
        (s, _) => s.clone(),
    };
    let cfg = MachineConfig {
        memory: args.memory,
        boot,
        engine: match args.engine {
            EngineArg::Interp => EngineKind::Interp,
            EngineArg::Jit => EngineKind::Jit,
        },
        deterministic: args.deterministic,
        serial: serial.clone(),
        debugcon: args.debugcon.clone(),
        max_instructions: args.max_instructions,
        code_cache: args.code_cache as usize,
        disk,
        cdrom: args.cdrom.clone(),
        snapshot,
    };
    let mut console = if serial == CharTarget::Stdio || display.kind == DisplayKind::Terminal {
        Console::stdin()
    } else {
        Console::none()
    };
    // A guest reset starts the machine anew from the same configuration,
    // as a PC's reset line does (QEMU's default too).
    let mut noted = false;
    let (mut machine, outcome) = loop {
        let mut machine = Machine::new(&cfg)?;
        if !noted {
            for n in &machine.notes {
                eprintln!("umbra: {n}");
            }
            noted = true;
        }
        machine.attach_display(display.clone())?;
        if args.profile {
            machine.enable_profile();
        }
        let outcome = machine.run(&mut console);
        if outcome != Outcome::Reset {
            break (machine, outcome);
        }
        eprint!("\r\numbra: the guest reset the machine; starting again\r\n");
    };
    machine.finish_display();
    console.restore();
    let _ = std::io::stdout().flush();
    match &outcome {
        Outcome::Quit => eprintln!(),
        Outcome::PowerOff | Outcome::ExitPort(_) | Outcome::Reset => {}
        Outcome::InstructionLimit => eprintln!("umbra: --max-instructions reached"),
        Outcome::TripleFault(dump) => {
            eprintln!("umbra: triple fault, the machine shut down\n{dump}")
        }
        Outcome::Dead(why) => eprintln!("umbra: {why}; stopping"),
        Outcome::EngineError(e) => eprintln!("umbra: engine error: {e}"),
    }
    if args.stats {
        eprintln!("{}", machine.stats());
    }
    if args.profile {
        eprintln!("hottest guest EIPs (samples):");
        for (eip, n) in machine.profile(40) {
            eprintln!("  {eip:08x} {n}");
        }
    }
    Ok(ExitCode::from(outcome.exit_status()))
}

fn run_diff(args: &DiffArgs) -> Result<ExitCode, CliError> {
    let [a, b] = args.engines.as_slice() else {
        return Err(CliError::Engines(args.engines.len()));
    };
    diff::engine_available(a)?;
    diff::engine_available(b)?;
    let mut session = Session::new(a, b, args.lockstep);
    session.max_steps = args.max_steps;
    if let Some(hex) = &args.code {
        return run_one(&session, args, hex);
    }
    let Some(n) = args.random else {
        return Err(CliError::NothingToRun);
    };
    if args.min_items > args.max_items {
        return Err(CliError::ItemRange);
    }
    let campaign = Campaign {
        programs: n,
        seed: args.seed,
        modes: args.mode.modes(),
        session,
        gen: GenConfig {
            min_items: args.min_items,
            max_items: args.max_items,
            // Lockstep masks undefined flags per instruction instead.
            sanitize: !args.lockstep,
        },
        max_shrink: args.shrink,
        exclude: excluded_classes(args),
    };
    let start = Instant::now();
    let summary = campaign.run_from(
        args.from,
        |d| say(&d.to_string()),
        |s| {
            eprintln!(
                "[{:>5.1}s] {}/{n} programs, {} instructions, {} divergences",
                start.elapsed().as_secs_f64(),
                s.programs,
                s.instructions,
                s.divergences.len()
            );
        },
    )?;
    for (why, count) in &summary.skipped {
        eprintln!("skipped {count} programs: {why}");
    }
    say(&summary.line());
    Ok(if summary.divergences.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIVERGED)
    })
}

/// The classes to leave out: as given, or bcd by default against kvm.
fn excluded_classes(args: &DiffArgs) -> Vec<Class> {
    args.exclude.clone()
}

/// Compare one hand-given program.
fn run_one(session: &Session, args: &DiffArgs, hex: &str) -> Result<ExitCode, CliError> {
    let [mode] = args.mode.modes()[..] else {
        return Err(CliError::CodeNeedsMode);
    };
    let code = parse_hex(hex)?;
    let mut program = Program::new(mode, code);
    program.gate16 = args.gate16;
    for (r, v) in program.gpr.iter_mut().zip(args.regs.iter()) {
        *r = *v;
    }
    if let Some(fl) = args.eflags {
        program.eflags = fl;
    }
    if let Some(seed) = args.data_seed {
        program.fill_data(seed);
    }
    for (p, v) in program.data_pages.iter_mut().zip(args.data_pages.iter()) {
        *p = *v;
    }
    program.wp = !args.no_wp;
    let out = session.check(&program)?;
    let k = usize::from(out.divergence.is_some());
    if let Some(why) = &out.skipped {
        eprintln!("skipped: {why}");
    }
    if let Some(d) = &out.divergence {
        println!("{d}");
    }
    println!(
        "1 programs, {} instructions, {k} divergences",
        out.instructions
    );
    Ok(if k == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIVERGED)
    })
}

/// Print a report line on stdout; a closed pipe (`| head`) is not an
/// error worth a panic.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", text.trim_end_matches('\n'));
    let _ = out.flush();
}

fn parse_hex(s: &str) -> Result<Vec<u8>, CliError> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(CliError::BadHex("odd number of hex digits".into()));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .map_err(|_| CliError::BadHex(format!("`{}` is not hex", &digits[i..i + 2])))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_parses_with_spaces_and_rejects_junk() {
        assert_eq!(parse_hex("f6 f0 F4").unwrap(), [0xF6, 0xF0, 0xF4]);
        assert!(matches!(parse_hex("f6 f"), Err(CliError::BadHex(_))));
        assert!(matches!(parse_hex("zz"), Err(CliError::BadHex(_))));
    }

    #[test]
    fn cli_parses_the_documented_invocation() {
        let cli = Cli::try_parse_from([
            "umbra",
            "diff",
            "--random",
            "10",
            "--seed",
            "3",
            "--engines",
            "interp,kvm",
            "--mode",
            "paging",
            "--lockstep",
        ])
        .unwrap();
        let Some(Command::Diff(a)) = cli.command else {
            panic!("parsed as diff")
        };
        assert_eq!(a.random, Some(10));
        assert_eq!(a.seed, 3);
        assert_eq!(a.engines, ["interp", "kvm"]);
        assert_eq!(a.mode, ModeArg::Paging);
        assert!(a.lockstep);
    }
}
