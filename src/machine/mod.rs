//! `Machine`: a PC built from a configuration (RAM, firmware or a directly
//! booted kernel, the platform devices, an engine) and the loop that runs
//! it: the engine runs guest code for a slice of instructions, then the
//! loop brings the timers to the current virtual time, feeds console input
//! to COM1, takes the platform's requests (power off, reset, exit port) and
//! waits while the CPU is halted.

pub mod console;
pub mod display;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use umbra_core::clock::{Clock, ClockMode};
use umbra_core::cpu::{CpuState, SegReg, IF};
use umbra_core::engine::{Budget, Engine, Exit, ShutdownReason};
use umbra_core::interp::Interpreter;
use umbra_core::mem::{GuestMemory, MemError};
use umbra_core::vm::Vm;
use umbra_devices::firmware_devices::FirmwareDevices;
use umbra_devices::ide::{BackendError, BlockBackend, RawFile, Snapshot};
use umbra_devices::platform::{Platform, PlatformConfig, ACPI_PM_BASE, SCI_IRQ};
use umbra_devices::PlatformRequest;
use umbra_firmware::BootError;

use console::{Console, ConsoleEvent};
use display::{Display, DisplayConfig};

/// Most instructions an engine runs before the loop looks at the devices
/// and the console again.
const SLICE: u64 = 50_000;
/// Virtual nanoseconds per instruction under `--deterministic`: a CPU of
/// 100 M instructions per second, the order of what the interpreter runs,
/// so that the guest's busy-wait delays cost about as many instructions as
/// in real time (at 1 ns a boot took twice as long). The TSC still counts
/// virtual nanoseconds.
pub const DETERMINISTIC_NS_PER_INSN: u64 = 10;
/// Wall-clock time the RTC shows at power-on under `--deterministic`
/// (2024-01-01 00:00:00 UTC), so that two runs print the same dates.
pub const DETERMINISTIC_EPOCH: i64 = 1_704_067_200;
/// The VGA BIOS looked for beside a `--bios` image (Debian's seabios
/// package ships both in /usr/share/seabios).
pub const VGA_BIOS_NAME: &str = "vgabios-stdvga.bin";
/// Longest real-time sleep of a halted CPU before the console is polled.
const MAX_IDLE: Duration = Duration::from_millis(10);

/// Where a character device's output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CharTarget {
    Stdio,
    File(PathBuf),
    None,
}

/// The execution engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// The reference interpreter.
    Interp,
    /// The binary translator (umbra-translator).
    Jit,
}

/// The engine a machine runs, as built from `EngineKind`.
enum MachineEngine {
    Interp(Box<Interpreter>),
    Jit(Box<umbra_translator::Translator>),
}

impl MachineEngine {
    fn run(&mut self, vm: &mut Vm, budget: Budget) -> Exit {
        match self {
            MachineEngine::Interp(i) => i.run(vm, budget),
            MachineEngine::Jit(t) => t.run(vm, budget),
        }
    }
    /// The interpreter's counters (the translator's fallback interpreter).
    fn interp(&self) -> &Interpreter {
        match self {
            MachineEngine::Interp(i) => i,
            MachineEngine::Jit(t) => t.interpreter(),
        }
    }
}

/// How the machine starts.
#[derive(Clone, Debug)]
pub enum Boot {
    /// A Linux bzImage or a multiboot kernel, loaded directly (no BIOS).
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        append: String,
    },
    /// A ROM image started at the reset vector.
    Bios(PathBuf),
}

#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// Guest RAM in bytes.
    pub memory: u64,
    pub boot: Boot,
    pub engine: EngineKind,
    pub deterministic: bool,
    pub serial: CharTarget,
    pub debugcon: CharTarget,
    /// Stop after this many guest instructions (benchmarks, bisecting).
    pub max_instructions: Option<u64>,
    /// Bytes of translated code the jit keeps (`--code-cache`).
    pub code_cache: usize,
    /// Raw disk image on the primary IDE master (firmware boot).
    pub disk: Option<PathBuf>,
    /// ISO image in the secondary IDE master CD-ROM drive (firmware boot).
    pub cdrom: Option<PathBuf>,
    /// Keep the guest's disk writes in memory (`Snapshot`): the image file
    /// is opened read-only and never changes.
    pub snapshot: bool,
}

/// Host-side failures while building the machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("cannot read {what} {path}: {err}")]
    Read {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("cannot create {path}: {err}")]
    Create { path: PathBuf, err: std::io::Error },
    #[error(transparent)]
    Memory(#[from] MemError),
    #[error("{path}: {err}")]
    Boot { path: PathBuf, err: BootError },
    #[error("{0} is neither a Linux bzImage nor a multiboot kernel")]
    NotAKernel(PathBuf),
    #[error("{0}")]
    Image(String),
    #[error("{0}")]
    Engine(String),
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// ACPI power off.
    PowerOff,
    /// A byte V written to the exit port 0xF4.
    ExitPort(u8),
    /// The guest reset the machine.
    Reset,
    /// The user pressed Ctrl-A X.
    Quit,
    /// Triple fault; the CPU state at that point.
    TripleFault(String),
    /// The CPU halted with interrupts off and nothing can wake it.
    Dead(String),
    /// The engine failed (a host-side problem).
    EngineError(String),
    /// `--max-instructions` reached.
    InstructionLimit,
}

impl Outcome {
    /// The process exit status for this outcome.
    pub fn exit_status(&self) -> u8 {
        match self {
            Outcome::PowerOff | Outcome::Quit | Outcome::Reset | Outcome::InstructionLimit => 0,
            Outcome::ExitPort(v) => (v << 1) | 1,
            Outcome::TripleFault(_) | Outcome::Dead(_) | Outcome::EngineError(_) => 2,
        }
    }
}

pub struct Machine {
    pub vm: Vm,
    pub platform: Platform,
    /// fw_cfg, VGA and IDE, present on the firmware (`--bios`) path.
    pub firmware: Option<FirmwareDevices>,
    engine: MachineEngine,
    max_instructions: Option<u64>,
    /// Console bytes not yet taken by COM1's receive FIFO.
    input: std::collections::VecDeque<u8>,
    /// Host time the run started, for the statistics.
    started: Option<Instant>,
    /// Host time spent waiting while the guest was halted.
    idle: Duration,
    /// `--profile`: guest EIP at the end of each slice, counted.
    profile: Option<std::collections::HashMap<u32, u64>>,
    /// `--display` / `--screenshot` (firmware path only).
    display: Option<Display>,
    /// Things the user should know about the configuration (an image
    /// attached write-protected, an ISO given as a disk), for the CLI to
    /// print before the run.
    pub notes: Vec<String>,
}

fn open_target(t: &CharTarget) -> Result<Option<Box<dyn Write>>, MachineError> {
    Ok(match t {
        CharTarget::Stdio => Some(Box::new(std::io::stdout())),
        CharTarget::None => None,
        CharTarget::File(p) => Some(Box::new(File::create(p).map_err(|err| {
            MachineError::Create {
                path: p.clone(),
                err,
            }
        })?)),
    })
}

/// Open the `--disk` image: read-write; with `snapshot`, read-only under a
/// `Snapshot` overlay. A file the user may not write is attached
/// write-protected, as a drive with its write-protect jumper set: the
/// guest reads it, and every write command ends with ERR and ABRT in the
/// status (ATA-6 7.15.6; ata.rs), which Linux reports as an I/O error. Adds
/// to `notes` what the user should know.
fn open_disk(
    path: &std::path::Path,
    snapshot: bool,
    notes: &mut Vec<String>,
) -> Result<Box<dyn BlockBackend>, MachineError> {
    let image = |e: BackendError| MachineError::Image(e.to_string());
    let mut disk: Box<dyn BlockBackend> = if snapshot {
        Box::new(Snapshot::new(Box::new(
            RawFile::open_disk(path, true).map_err(image)?,
        )))
    } else {
        match RawFile::open_disk(path, false) {
            Ok(f) => Box::new(f),
            Err(BackendError::ReadOnlyFile { .. }) => {
                notes.push(format!(
                    "{} is not writable: the disk is attached write-protected (the guest's writes fail); make it writable (chmod u+w) or add --snapshot to keep the writes in memory",
                    path.display()
                ));
                Box::new(RawFile::open_disk(path, true).map_err(image)?)
            }
            Err(e) => return Err(image(e)),
        }
    };
    if umbra_devices::ide::backend::looks_like_iso(disk.as_mut()) {
        notes.push(format!(
            "{} is an ISO 9660 image attached as a raw hard disk; to boot it from the CD-ROM drive, give it with --cdrom",
            path.display()
        ));
    }
    Ok(disk)
}

fn read_file(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, MachineError> {
    std::fs::read(path).map_err(|err| MachineError::Read {
        what,
        path: path.clone(),
        err,
    })
}

impl Machine {
    pub fn new(cfg: &MachineConfig) -> Result<Self, MachineError> {
        let mem = GuestMemory::new(cfg.memory)?;
        let mut vm = Vm::new(mem);
        let (mode, epoch) = if cfg.deterministic {
            (
                ClockMode::Deterministic {
                    ns_per_insn: DETERMINISTIC_NS_PER_INSN,
                },
                DETERMINISTIC_EPOCH,
            )
        } else {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            (ClockMode::RealTime, now)
        };
        vm.clock = Clock::new(mode);
        let platform = Platform::new(PlatformConfig {
            ram_bytes: cfg.memory,
            serial_out: [open_target(&cfg.serial)?, None, None, None],
            debugcon: open_target(&cfg.debugcon)?,
            start_unix_secs: epoch,
        });
        platform.attach(&mut vm.bus);
        vm.intc = Some(platform.interrupt_controller());
        let mut firmware = None;
        let mut notes = Vec::new();
        match &cfg.boot {
            Boot::Kernel {
                kernel,
                initrd,
                append,
            } => {
                let image = read_file("kernel", kernel)?;
                let initrd = match initrd {
                    Some(p) => Some(read_file("initrd", p)?),
                    None => None,
                };
                let boot_err = |err| MachineError::Boot {
                    path: kernel.clone(),
                    err,
                };
                if umbra_firmware::is_bzimage(&image) {
                    let rsdp =
                        umbra_firmware::acpi::write_acpi_tables(&mut vm.mem, ACPI_PM_BASE, SCI_IRQ);
                    umbra_firmware::linux::load_linux(
                        &mut vm.mem,
                        &mut vm.cpu,
                        &image,
                        initrd.as_deref(),
                        append,
                        Some(rsdp),
                    )
                    .map_err(boot_err)?;
                } else if umbra_firmware::is_multiboot(&image) {
                    let modules: Vec<(Vec<u8>, String)> = initrd
                        .into_iter()
                        .map(|m| (m, String::from("initrd")))
                        .collect();
                    umbra_firmware::multiboot::load_multiboot(
                        &mut vm.mem,
                        &mut vm.cpu,
                        &image,
                        append,
                        &modules,
                    )
                    .map_err(boot_err)?;
                } else {
                    return Err(MachineError::NotAKernel(kernel.clone()));
                }
            }
            Boot::Bios(path) => {
                let rom = read_file("BIOS image", path)?;
                // The VGA BIOS of Debian's seabios package beside it, if any.
                let vgabios = path
                    .parent()
                    .map(|d| d.join(VGA_BIOS_NAME))
                    .and_then(|p| std::fs::read(p).ok());
                umbra_firmware::seabios::load_seabios(
                    &mut vm.mem,
                    &mut vm.cpu,
                    &rom,
                    vgabios.as_deref(),
                )
                .map_err(|err| MachineError::Boot {
                    path: path.clone(),
                    err,
                })?;
                let (devs, hook) = FirmwareDevices::attach(&platform, &mut vm.bus, &mut vm.mem);
                vm.io_hook = Some(hook);
                {
                    let mut f = devs.fw_cfg.borrow_mut();
                    f.add_item(
                        umbra_devices::fw_cfg::KEY_RAM_SIZE,
                        cfg.memory.to_le_bytes().to_vec(),
                    );
                    let e820 = umbra_firmware::e820::e820_map(cfg.memory);
                    for (name, bytes) in umbra_firmware::seabios::fw_cfg_items(cfg.memory, &e820) {
                        f.add_file(&name, bytes);
                    }
                    if let Some(v) = &vgabios {
                        let (name, bytes) = umbra_firmware::seabios::vga_rom_file(v);
                        f.add_file(&name, bytes);
                    }
                }
                if let Some(d) = &cfg.disk {
                    devs.attach_disk(0, false, open_disk(d, cfg.snapshot, &mut notes)?);
                }
                if let Some(c) = &cfg.cdrom {
                    let b = RawFile::open_iso(c).map_err(|e| MachineError::Image(e.to_string()))?;
                    devs.attach_cdrom(1, false, Box::new(b));
                }
                firmware = Some(devs);
            }
        }
        let engine = match cfg.engine {
            EngineKind::Interp => MachineEngine::Interp(Box::new(Interpreter::new())),
            EngineKind::Jit => MachineEngine::Jit(Box::new(
                umbra_translator::Translator::new(cfg.code_cache)
                    .map_err(|e| MachineError::Engine(format!("cannot map the code cache: {e}")))?,
            )),
        };
        Ok(Machine {
            vm,
            platform,
            firmware,
            engine,
            max_instructions: cfg.max_instructions,
            input: Default::default(),
            started: None,
            idle: Duration::ZERO,
            profile: None,
            display: None,
            notes,
        })
    }

    /// Run until the guest powers off, exits, resets, dies or the user
    /// quits.
    pub fn run(&mut self, console: &mut Console) -> Outcome {
        self.started.get_or_insert_with(Instant::now);
        loop {
            let now = self.vm.clock.now_ns();
            self.platform.poll(now);
            if let Some(d) = &mut self.display {
                d.tick();
            }
            if let Some(o) = self.take_request() {
                return o;
            }
            for ev in console.poll(Duration::ZERO) {
                if let Some(o) = self.console_event(ev) {
                    return o;
                }
            }
            self.feed_serial();
            let next = self.platform.next_event(now);
            // Time from the host clock: the slice only paces polling, and
            // may end a block late. Time from instructions: exact.
            let (mut budget, overrun) = match self.vm.clock.mode() {
                ClockMode::Deterministic { ns_per_insn } => {
                    let n = next.map_or(SLICE, |t| {
                        (t.saturating_sub(now) / ns_per_insn.max(1)).clamp(1, SLICE)
                    });
                    (n, false)
                }
                // --max-instructions is exact.
                ClockMode::RealTime => (SLICE, self.max_instructions.is_none()),
            };
            if let Some(max) = self.max_instructions {
                let done = self.vm.clock.retired;
                if done >= max {
                    return Outcome::InstructionLimit;
                }
                budget = budget.min(max - done);
            }
            let budget = if overrun {
                Budget::about(budget)
            } else {
                Budget::insns(budget)
            };
            match self.engine.run(&mut self.vm, budget) {
                Exit::BudgetSpent => {
                    if let Some(p) = &mut self.profile {
                        *p.entry(self.vm.cpu.eip).or_default() += 1;
                    }
                }
                Exit::Halted => {
                    if let Some(o) = self.take_request() {
                        return o;
                    }
                    if let Some(o) = self.wait_halted(console) {
                        return o;
                    }
                }
                Exit::Shutdown(ShutdownReason::TripleFault) => {
                    return Outcome::TripleFault(cpu_dump(&self.vm.cpu));
                }
                Exit::Shutdown(ShutdownReason::Platform(why)) => {
                    return Outcome::EngineError(why);
                }
                Exit::Error(e) => return Outcome::EngineError(e),
            }
        }
    }

    /// The CPU is halted: let time pass to the next timer event (or the
    /// next console input), or report a machine that can never wake.
    fn wait_halted(&mut self, console: &mut Console) -> Option<Outcome> {
        let cpu = &self.vm.cpu;
        let now = self.vm.clock.now_ns();
        let next = self.platform.next_event(now);
        if cpu.eflags & IF == 0 && !cpu.pending_nmi {
            return Some(Outcome::Dead(format!(
                "the CPU halted with interrupts disabled at {:04x}:{:08x}",
                cpu.seg(SegReg::Cs).selector,
                cpu.eip
            )));
        }
        match self.vm.clock.mode() {
            ClockMode::Deterministic { .. } => match next {
                Some(t) => self.vm.clock.skip_to(t),
                None => {
                    return Some(Outcome::Dead(
                        "the CPU halted and no timer is armed to wake it".into(),
                    ))
                }
            },
            ClockMode::RealTime => {
                let wait = next.map_or(MAX_IDLE, |t| {
                    Duration::from_nanos(t.saturating_sub(now)).min(MAX_IDLE)
                });
                let t0 = Instant::now();
                let events = console.poll(wait);
                self.idle += t0.elapsed();
                for ev in events {
                    if let Some(o) = self.console_event(ev) {
                        return Some(o);
                    }
                }
            }
        }
        None
    }

    fn console_event(&mut self, ev: ConsoleEvent) -> Option<Outcome> {
        match ev {
            ConsoleEvent::Input(b) => match &mut self.display {
                Some(d) if d.takes_keys() => d.type_bytes(&b),
                _ => self.input.extend(b),
            },
            ConsoleEvent::Screenshot => self.screenshot(),
            ConsoleEvent::Quit => return Some(Outcome::Quit),
            ConsoleEvent::Stats => eprint!("\r\n{}\r\n", self.stats().replace('\n', "\r\n")),
        }
        None
    }

    /// Show the screen and take the keyboard as `cfg` asks (see
    /// display.rs); an error without the firmware path's VGA.
    pub fn attach_display(&mut self, cfg: DisplayConfig) -> Result<(), MachineError> {
        display::check_config(&cfg, self.firmware.is_some())?;
        if let Some(f) = &self.firmware {
            let i8042 = self.platform.i8042.clone();
            self.display = Some(Display::new(cfg, f.vga.clone(), i8042));
        }
        Ok(())
    }

    /// Write the `--screenshot` file now and say so on stderr.
    pub fn screenshot(&mut self) {
        match self.display.as_ref().and_then(|d| d.screenshot()) {
            Some(Ok(p)) => eprint!("\r\numbra: screenshot written to {}\r\n", p.display()),
            Some(Err(e)) => eprint!("\r\numbra: {e}\r\n"),
            None => eprint!("\r\numbra: no --screenshot FILE was given\r\n"),
        }
    }

    /// At exit: give the terminal back and write the `--screenshot` file.
    pub fn finish_display(&mut self) {
        if let Some(d) = &mut self.display {
            d.restore();
            match d.screenshot() {
                Some(Ok(p)) => eprintln!("umbra: screenshot written to {}", p.display()),
                Some(Err(e)) => eprintln!("umbra: {e}"),
                None => {}
            }
        }
    }

    /// Move pending console bytes into COM1 as its FIFO has room.
    fn feed_serial(&mut self) {
        if self.input.is_empty() {
            return;
        }
        let (a, _) = self.input.as_slices();
        let n = self.platform.serial_input(0, a);
        self.input.drain(..n);
    }

    fn take_request(&mut self) -> Option<Outcome> {
        self.platform.requests.take().map(|r| match r {
            PlatformRequest::PowerOff => Outcome::PowerOff,
            PlatformRequest::Reset => Outcome::Reset,
            PlatformRequest::Exit(v) => Outcome::ExitPort(v),
        })
    }

    /// Sample the guest EIP at the end of every slice (`--profile`).
    pub fn enable_profile(&mut self) {
        self.profile = Some(Default::default());
    }

    /// The most frequent sampled EIPs, most frequent first.
    pub fn profile(&self, top: usize) -> Vec<(u32, u64)> {
        let mut v: Vec<(u32, u64)> = self
            .profile
            .iter()
            .flat_map(|p| p.iter().map(|(a, n)| (*a, *n)))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(top);
        v
    }

    /// Statistics for `--stats` and Ctrl-A C.
    pub fn stats(&self) -> String {
        let s = &self.engine.interp().stats;
        let retired = self.vm.clock.retired;
        let secs = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let m = &self.vm.mmu.stats;
        let mut out = format!(
            "instructions {} in {:.2} s ({:.1} M/s while running, {:.2} s idle), virtual time {:.3} s\n\
             shadow hits {} misses {} fills {}, CR3 switches {} (found {}), write-watch faults {}, page faults {}",
            retired,
            secs,
            retired as f64 / (secs - self.idle.as_secs_f64()).max(1e-9) / 1e6,
            self.idle.as_secs_f64(),
            self.vm.clock.now_ns() as f64 / 1e9,
            m.shadow_hits,
            m.shadow_misses,
            m.shadow_fills,
            m.cr3_switches,
            m.cr3_switch_hits,
            m.write_watch_faults,
            m.page_faults,
        );
        let f = self.engine.interp().fetch_stats();
        out += &format!(
            "\ninterpreter: instructions {}, blocks {} hits {} misses (decoded instructions {} hits {} misses)",
            s.instructions, f.block_hits, f.block_misses, f.hits, f.misses
        );
        if let MachineEngine::Jit(t) = &self.engine {
            let j = t.stats();
            let (used, size) = t.cache_usage();
            out += &format!(
                "\ntranslator: lookups {} hits {}, translations {} ({} guest instructions, {} host bytes), \
                 invalidations {}, flushes {}, entries {}, monitor calls {} (and RDTSC light calls {}), \
                 interpreter steps {}, \
                 code cache {:.1}/{} MiB (written {})",
                j.lookups,
                j.hits,
                j.translations,
                j.insns_translated,
                j.host_bytes,
                j.invalidations,
                j.flushes,
                j.entries,
                j.monitor_calls,
                j.inline_rdtsc,
                j.interp_steps,
                used as f64 / (1 << 20) as f64,
                size >> 20,
                t.code_writes(),
            );
            out += &format!(
                "\ntranslation cache: chains {} unchains {}, evictions {} ({} regions emptied), \
                 indirect lookups {} hits {}, inline table emptied {}",
                j.chains,
                j.unchains,
                j.evictions,
                j.region_evictions,
                j.indirect_lookups,
                j.indirect_hits,
                j.ib_clears,
            );
            let why: Vec<String> = j
                .interp_why
                .iter()
                .zip(umbra_translator::engine::step_why::NAMES)
                .map(|(n, name)| format!("{name} {n}"))
                .collect();
            out += &format!("\ninterpreter steps by why: {}", why.join(", "));
            let [next, budget, monitor, shutdown, chain, indirect] = j.exits;
            out += &format!(
                "\ntranslated code exits: next {next} budget {budget} monitor {monitor} \
                 shutdown {shutdown} chain {chain} inline-lookup misses {indirect} \
                 (set had an empty way {}, two other addresses {}, same address other key {})",
                j.ib_miss_empty, j.ib_miss_conflict, j.ib_miss_other_key,
            );
            let top: Vec<String> = j
                .top_monitor_mnemonics(16)
                .iter()
                .map(|(k, n)| format!("{k}:{n}"))
                .collect();
            if !top.is_empty() {
                out += &format!("\nmonitor calls by instruction: {}", top.join(" "));
            }
            let top: Vec<String> = j
                .top_monitor_exit_mnemonics(16)
                .iter()
                .map(|(k, n)| format!("{k}:{n}"))
                .collect();
            if !top.is_empty() {
                out += &format!(
                    "\nof those, leaving generated code: {} (went on in generated code after \
                     an instruction that ends blocks: {}; after STI and its shadow: {})",
                    top.join(" "),
                    j.monitor_continues,
                    j.sti_continues
                );
            }
            out += &format!(
                "\nx87: loads into the host unit {}, spills {}",
                j.x87_loads, j.x87_spills,
            );
            if !j.unimplemented.is_empty() {
                let u: Vec<String> = j
                    .unimplemented
                    .iter()
                    .map(|(k, n)| format!("{k}:{n}"))
                    .collect();
                out += &format!("\ntranslated code: unimplemented (#UD) {}", u.join(" "));
            }
        }
        let exc: Vec<String> = s
            .exceptions
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(v, n)| format!("#{v}:{n}"))
            .collect();
        if !exc.is_empty() {
            out += &format!("\nexceptions {}", exc.join(" "));
        }
        if !s.unimplemented.is_empty() {
            let u: Vec<String> = s
                .unimplemented
                .iter()
                .map(|(k, n)| format!("{k}:{n}"))
                .collect();
            out += &format!("\nunimplemented (#UD) {}", u.join(" "));
        }
        out
    }
}

/// The CPU state a user needs after a triple fault.
pub fn cpu_dump(cpu: &CpuState) -> String {
    let g = |i: usize| cpu.gpr[i] as u32;
    let mut s = format!(
        "EAX={:08x} EBX={:08x} ECX={:08x} EDX={:08x}\n\
         ESI={:08x} EDI={:08x} EBP={:08x} ESP={:08x}\n\
         EIP={:08x} EFLAGS={:08x} CR0={:08x} CR2={:08x} CR3={:08x} CR4={:08x}\n",
        g(0),
        g(3),
        g(1),
        g(2),
        g(6),
        g(7),
        g(5),
        g(4),
        cpu.eip,
        cpu.eflags,
        cpu.cr0,
        cpu.cr2,
        cpu.cr3,
        cpu.cr4
    );
    for (name, r) in [
        ("ES", SegReg::Es),
        ("CS", SegReg::Cs),
        ("SS", SegReg::Ss),
        ("DS", SegReg::Ds),
        ("FS", SegReg::Fs),
        ("GS", SegReg::Gs),
    ] {
        let sg = cpu.seg(r);
        s += &format!(
            "{name}={:04x} base={:08x} limit={:08x}\n",
            sg.selector, sg.base, sg.limit
        );
    }
    s += &format!(
        "GDTR={:08x}/{:04x} IDTR={:08x}/{:04x} TR={:04x}",
        cpu.gdtr.base, cpu.gdtr.limit, cpu.idtr.base, cpu.idtr.limit, cpu.tr.selector
    );
    s
}
