//! The KVM engine: runs the guest on the host CPU through /dev/kvm, as the
//! oracle the interpreter and the translator are compared against.
//!
//! It owns one KVM VM with one vCPU whose guest-physical RAM is the very
//! mapping of `vm.mem` (no copy): what the guest writes under KVM is in
//! `vm.mem` when `run` returns. Each `run` loads the whole architectural
//! state from `vm.cpu` into the vCPU, runs, and stores it back, so engines
//! can be swapped at any instruction boundary.
//!
//! - Port I/O and MMIO exits are served through `vm.bus` (MMIO and ROM
//!   through `Vm::read_phys`/`write_phys`) and the guest continues.
//! - Larger budgets run until HLT (`Exit::Halted`, `cpu.halted` set, EIP
//!   past the HLT), shutdown (`Exit::Shutdown(TripleFault)`), the budget
//!   counted in exits, or a wall-clock limit proportional to the budget
//!   (`NS_PER_INSN`, or `time_limit`; a watchdog thread kicks the vCPU out
//!   of KVM_RUN), which returns `Exit::BudgetSpent` with a consistent state.
//! - `Budget::ONE` executes exactly one instruction, as the interpreter
//!   counts them: an exception or interrupt delivery is the whole step and
//!   ends at the handler's first instruction; one REP iteration is a step
//!   (`rep`); HLT retires as a step (`BudgetSpent`, `cpu.halted` set) and
//!   the next run returns `Halted`. Real mode steps with
//!   KVM_GUESTDBG_SINGLESTEP and a delivery catcher (`realstep`);
//!   protected mode steps as compatibility-mode code (`paging`).
//! - 2-level (non-PAE) paging, which this host's nested KVM cannot run, is
//!   run as compatibility-mode code under private 4-level tables, one
//!   instruction per entry: see `paging`.
//!
//! What this host (a PVM-based nested KVM) does, found by the tests here:
//! real mode and legacy protected mode run in KVM's instruction emulator,
//! not on the CPU. That emulator lacks some instructions (protected-mode
//! IRET, x87 arithmetic, ...): on its "emulation failure" exit the engine
//! runs that one instruction as a compatibility-mode step (or, in real
//! mode, with the interpreter) and goes on (`KvmStats::emulation_fallbacks`).
//! x87 arithmetic fails even in compatibility mode (the host hands it to
//! the same emulator), so it ends up interpreted: KVM is no oracle for
//! x87 on this host.
//! It runs a whole REP string instruction per single step. It drops
//! EFLAGS.VM, so virtual-8086 mode is refused with `Exit::Error`. It shuts
//! the guest down at a MOV CR0 that turns on 2-level paging: the engine
//! performs that MOV itself and continues under paging emulation. Entering
//! compatibility mode with EFLAGS.RF set fails, so RF is never loaded.
//!
//! CPUID: KVM gets the interpreter's table (KVM_SET_CPUID2), but this
//! host answers leaf 1 ECX/EDX with the host's feature bits anyway; other
//! leaves match. Single steps therefore interpret CPUID, so lockstep
//! comparisons see one CPU; free runs see the host's leaf-1 features.
//!
//! Known differences from the architecture, by design: KVM writes guest RAM
//! behind `GuestMemory`'s dirty and write-watch bitmaps (the engine flushes
//! the MMU's shadow state after each run instead), and ROM/MMIO ranges must
//! be declared on `vm.mem` before `KvmEngine::new`: MMIO ranges become
//! holes in KVM's memory map (accesses exit and go through `Vm`), ROM
//! ranges read-only slots with a copy of the ROM taken at `new` (writes
//! exit and are dropped by `Vm`). A ROM frame only partly covered stays a
//! hole. The A20 gate is not modelled (KVM has none).
//! External interrupts are taken only at `run` entry, through
//! `interp::interrupt::take_pending`, like the interpreter's step.

mod cpuid;
mod paging;
mod realstep;
mod rep;
mod state;
mod watchdog;

use std::time::Duration;

use kvm_bindings::{
    kvm_guest_debug, kvm_run, kvm_userspace_memory_region, CpuId, Msrs, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, KVM_INTERNAL_ERROR_EMULATION,
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SHADOW, KVM_X86_SHADOW_INT_MOV_SS,
    KVM_X86_SHADOW_INT_STI,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use umbra_core::cpu::CpuState;
use umbra_core::engine::{Budget, Engine, Exit, ShutdownReason};
use umbra_core::interp::{interrupt, Interpreter, Step};
use umbra_core::mem::{Region, PAGE_SIZE};
use umbra_core::Vm;

pub use cpuid::table_source as cpuid_table;

/// Where KVM puts the real-mode TSS (three pages) and the identity-map
/// page table it needs on VMX without unrestricted guest: just below the
/// 4 GiB boundary, outside any guest RAM this project allocates.
const TSS_ADDR: usize = 0xFFFB_D000;
const IDENTITY_MAP_ADDR: u64 = 0xFFFB_C000;

/// Memory slot numbers: guest RAM pieces count up from 0; the private
/// paging slot uses its own number.
const PRIVATE_SLOT: u32 = 500;

/// Wall-clock allowance per budgeted instruction, and its bounds.
const NS_PER_INSN: u64 = 10;
const MIN_TIME_LIMIT: Duration = Duration::from_millis(20);
const NS_PER_STEP: u64 = 100_000;
const MIN_STEP_TIME_LIMIT: Duration = Duration::from_secs(2);
const MAX_TIME_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("no /dev/kvm ({0}): load kvm_intel/kvm_amd or run where KVM is available")]
    Unavailable(String),
    #[error("KVM API version {0}, need 12: update the host kernel")]
    Version(i32),
    #[error("KVM {what} failed: {err} (the host KVM may lack this feature; try another host)")]
    Ioctl {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("guest RAM is cut into {0} pieces by ROM/MMIO ranges; KVM takes fewer memory slots: merge the holes")]
    Layout(usize),
    #[error("guest RAM of {0:#x} bytes reaches the KVM engine's private pages at 0xFFFBB000: use less than 4 GiB - 276 KiB of RAM")]
    RamTooLarge(u64),
    #[error("the host's KVM wants {0}-byte XSAVE images, more than the 4096 this engine exchanges: run where AMX is not enabled for this process")]
    XsaveSize(i32),
    #[error("cannot allocate the engine's private memory: {0}")]
    Alloc(std::io::Error),
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |err| KvmError::Ioctl { what, err }
}

/// Exit counters, for `--stats` and the harness.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmStats {
    pub runs: u64,
    pub exits: u64,
    pub io_exits: u64,
    pub mmio_exits: u64,
    pub debug_exits: u64,
    pub timeouts: u64,
    /// Exceptions caught by the private IDT in paging mode and delivered
    /// through the interpreter's routine.
    pub converted_exceptions: u64,
    /// Instructions KVM's emulator refused, run by a compatibility-mode
    /// step or the interpreter instead.
    pub emulation_fallbacks: u64,
}

pub struct KvmEngine {
    vm_fd: VmFd,
    vcpu: VcpuFd,
    /// Host address and size of the RAM we mapped, to detect a different
    /// `Vm` being passed to `run`.
    ram_host: usize,
    ram_size: u64,
    /// Private tables for the 2-level paging emulation.
    paging: paging::Private,
    stepping: Option<StepMode>,
    /// The state the vCPU holds as of the last load or store (None when
    /// unknown), to skip loading what did not change.
    known: Option<CpuState>,
    /// The last exit was I/O or MMIO: it completes on the next KVM_RUN.
    io_pending: bool,
    /// The vCPU's sregs after the last compatibility-mode step (the next
    /// step starts from them); None after anything else touched them.
    sregs_cache: Option<kvm_bindings::kvm_sregs>,
    /// KVM offers KVM_CAP_SYNC_REGS: registers and system registers
    /// travel through kvm_run's sync area instead of their own ioctls.
    sync: bool,
    /// The sync area holds the vCPU's (or the next entry's) registers /
    /// system registers: KVM copied them out on the last exit, or we put
    /// them there for the next entry.
    fresh_regs: bool,
    fresh_sregs: bool,
    /// Private IVT for exact real-mode steps (mapped into the VM).
    _ivt: realstep::PrivateIvt,
    /// Copies of the guest's ROMs, mapped read-only into the VM.
    _roms: Vec<memmap2::MmapMut>,
    /// Runs the instructions paging emulation cannot run natively.
    interp: Interpreter,
    watchdog: watchdog::Watchdog,
    last_exit: String,
    /// Overrides the budget-derived wall-clock limit of one `run`.
    pub time_limit: Option<Duration>,
    /// Run all protected mode (not only paging and single steps) as
    /// compatibility-mode steps on the CPU itself, instead of letting this
    /// host's KVM run legacy protected mode in its instruction emulator.
    /// Slower (one KVM entry per instruction); sensitive instructions then
    /// come from the interpreter (see `paging`). Off by default.
    pub hardware_protected_mode: bool,
    pub stats: KvmStats,
    // Kept last so that it is dropped after the VM and vCPU fds.
    _kvm: Kvm,
}

/// What a segment of `run` leads to.
enum Seg {
    Exit(Exit),
    /// Go on with another segment (the mode of running changed).
    Again,
}

/// How KVM's guest debugging is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StepMode {
    Off,
    Step,
    /// Step, with the real-mode delivery catcher (see `realstep`).
    StepCatch,
}

/// How one pass of the run loop ended.
enum End {
    /// Budget of steps done.
    Budget,
    Halted,
    Shutdown,
    Timeout,
    /// A private-IDT handler halted (paging emulation).
    PrivateTrap,
    /// A real-mode step stopped at the private IVT's catch address.
    Caught,
    /// KVM's instruction emulator gave up on an instruction (nothing of it
    /// was executed).
    EmuFail(String),
    Error(String),
}

impl KvmEngine {
    /// Ok(()) if /dev/kvm can be opened and speaks API version 12.
    pub fn available() -> Result<(), KvmError> {
        let kvm = Kvm::new().map_err(|e| KvmError::Unavailable(e.to_string()))?;
        match kvm.get_api_version() {
            12 => Ok(()),
            v => Err(KvmError::Version(v)),
        }
    }

    /// Create a VM and one vCPU whose guest-physical RAM is `vm.mem`'s RAM.
    ///
    /// The engine keeps the host address of that RAM mapping: the
    /// `GuestMemory` of `vm` must outlive the engine and must not be
    /// replaced while the engine exists (`run` refuses a `Vm` whose RAM is
    /// elsewhere). ROM and MMIO ranges must already be declared on
    /// `vm.mem`.
    pub fn new(vm: &mut Vm) -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(|e| KvmError::Unavailable(e.to_string()))?;
        let vm_fd = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        // The FPU state goes through KVM_{GET,SET}_XSAVE, whose buffer is
        // 4 KiB; the kernel copies the guest's XSAVE size, larger only
        // with dynamically enabled components (AMX), which this process
        // never requests.
        let xsave_size = vm_fd.check_extension_int(kvm_ioctls::Cap::Xsave2);
        if xsave_size as usize > std::mem::size_of::<kvm_bindings::kvm_xsave>() {
            return Err(KvmError::XsaveSize(xsave_size));
        }
        vm_fd
            .set_tss_address(TSS_ADDR)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        // Not every KVM needs (or has) the identity map; a failure here is
        // harmless where unrestricted guest is available.
        let _ = vm_fd.set_identity_map_address(IDENTITY_MAP_ADDR);

        let ram_size = vm.mem.ram_size();
        if ram_size > realstep::IVT_ADDR {
            return Err(KvmError::RamTooLarge(ram_size));
        }
        let ram_host = vm.mem.ram_host_ptr() as usize;
        let pieces = ram_pieces(vm);
        if pieces.len() >= PRIVATE_SLOT as usize {
            return Err(KvmError::Layout(pieces.len()));
        }
        let first_free_slot = pieces.len() as u32;
        for (slot, (start, end)) in pieces.into_iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: start,
                memory_size: end - start,
                userspace_addr: (ram_host as u64) + start,
            };
            // SAFETY: [start, end) lies inside vm.mem's RAM mapping, which
            // the caller keeps alive and in place for the engine's lifetime
            // (documented above); KVM only accesses it while we run.
            unsafe { vm_fd.set_user_memory_region(region) }
                .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        }

        // ROM: read-only slots holding a copy of each ROM range, so that
        // code runs from it; guest writes exit and are dropped by `Vm`.
        let mut roms = Vec::new();
        if kvm.check_extension(kvm_ioctls::Cap::ReadonlyMem) {
            let mut slot = PRIVATE_SLOT - 1;
            for (start, end) in rom_ranges(vm) {
                if slot < first_free_slot {
                    return Err(KvmError::Layout(slot as usize));
                }
                let len = (end - start) as usize;
                let mut map = memmap2::MmapMut::map_anon(len).map_err(KvmError::Alloc)?;
                vm.mem.read(start, &mut map);
                let region = kvm_userspace_memory_region {
                    slot,
                    flags: kvm_bindings::KVM_MEM_READONLY,
                    guest_phys_addr: start,
                    memory_size: len as u64,
                    userspace_addr: map.as_ptr() as u64,
                };
                // SAFETY: `map` is owned by the engine (kept in `roms`) and
                // outlives the VM fd; KVM only reads it.
                unsafe { vm_fd.set_user_memory_region(region) }
                    .map_err(ioctl("KVM_SET_USER_MEMORY_REGION (ROM)"))?;
                roms.push(map);
                slot -= 1;
            }
        }

        let paging = paging::Private::new().map_err(KvmError::Alloc)?;
        let region = kvm_userspace_memory_region {
            slot: PRIVATE_SLOT,
            flags: 0,
            guest_phys_addr: paging::BASE,
            memory_size: paging::SIZE as u64,
            userspace_addr: paging.host_addr(),
        };
        // SAFETY: the private mapping is owned by `paging`, which lives in
        // the engine next to the VM fd and is dropped after it.
        unsafe { vm_fd.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION (private)"))?;

        let ivt = realstep::PrivateIvt::new().map_err(KvmError::Alloc)?;
        let region = kvm_userspace_memory_region {
            slot: PRIVATE_SLOT + 1,
            flags: 0,
            guest_phys_addr: realstep::IVT_ADDR,
            memory_size: realstep::IVT_SIZE as u64,
            userspace_addr: ivt.host_addr(),
        };
        // SAFETY: the private IVT mapping is owned by the engine and
        // dropped after the VM fd.
        unsafe { vm_fd.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION (private IVT)"))?;

        let mut vcpu = vm_fd.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
        let ents = cpuid::entries();
        let cpuid = CpuId::from_entries(&ents).map_err(|_| KvmError::Ioctl {
            what: "building the CPUID table",
            err: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
        // Each vCPU ioctl costs a full vCPU load and put (on nested hosts
        // several microseconds); a single step needs the registers in and
        // out, so they ride along with KVM_RUN where KVM allows it.
        let sync = kvm.check_extension(kvm_ioctls::Cap::SyncRegs);
        if sync {
            vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
            vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::SystemRegister);
        }

        Ok(KvmEngine {
            vm_fd,
            vcpu,
            ram_host,
            ram_size,
            paging,
            stepping: None,
            known: None,
            io_pending: false,
            sregs_cache: None,
            sync,
            fresh_regs: false,
            fresh_sregs: false,
            _ivt: ivt,
            _roms: roms,
            interp: {
                // One REP iteration per interpreted step, as in lockstep.
                let mut i = Interpreter::new();
                i.rep_batch = 1;
                i
            },
            watchdog: watchdog::Watchdog::new(),
            last_exit: String::from("none"),
            time_limit: None,
            hardware_protected_mode: false,
            stats: KvmStats::default(),
            _kvm: kvm,
        })
    }

    /// What ended the last `run`, in words (KVM exit reason and detail).
    pub fn last_exit_reason(&self) -> &str {
        &self.last_exit
    }

    /// The VM file descriptor, for callers that add devices in KVM.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    fn set_stepping(&mut self, mode: StepMode) -> Result<(), KvmError> {
        if self.stepping == Some(mode) {
            return Ok(());
        }
        let mut dbg = kvm_guest_debug::default();
        match mode {
            StepMode::Off => {}
            StepMode::Step => dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP,
            StepMode::StepCatch => {
                dbg.control =
                    KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_USE_HW_BP;
                dbg.arch.debugreg[0] = realstep::CATCH;
                dbg.arch.debugreg[7] = realstep::DR7_L0;
            }
        }
        self.vcpu
            .set_guest_debug(&dbg)
            .map_err(ioctl("KVM_SET_GUEST_DEBUG"))?;
        self.stepping = Some(mode);
        Ok(())
    }

    /// Load every register of `cpu` into the vCPU.
    fn load(&mut self, cpu: &CpuState) -> Result<(), KvmError> {
        let mut sregs = self.get_sregs()?;
        state::to_kvm_sregs(cpu, &mut sregs);
        self.load_with_sregs(cpu, &sregs)
    }

    /// Load `cpu` except that the system registers come from `sregs`.
    fn load_with_sregs(
        &mut self,
        cpu: &CpuState,
        sregs: &kvm_bindings::kvm_sregs,
    ) -> Result<(), KvmError> {
        // What the vCPU already holds from the last load or store need not
        // be loaded again (each ioctl costs; single steps do this often).
        let known = self.known.take();
        let same = |f: &dyn Fn(&CpuState) -> bool| known.as_ref().is_some_and(f);
        // MSRs first: EFER goes with the sregs, the TSC here.
        if !same(&|k| k.msr == cpu.msr && k.tsc == cpu.tsc) {
            let ents = state::msr_entries(cpu);
            self.set_msrs_lenient(&ents);
        }
        self.set_sregs(sregs)?;
        self.set_regs(&state::to_kvm_regs(cpu))?;
        if !same(&|k| k.fpu == cpu.fpu && k.sse == cpu.sse) {
            self.set_fpu_state(cpu)?;
        }
        if !same(&|k| k.dr == cpu.dr) {
            self.load_debug_regs(cpu)?;
        }
        if !same(&|k| {
            k.interrupt_shadow == cpu.interrupt_shadow && k.pending_nmi == cpu.pending_nmi
        }) {
            self.load_events(cpu)?;
        }
        self.known = Some(cpu.clone());
        Ok(())
    }

    fn load_debug_regs(&mut self, cpu: &CpuState) -> Result<(), KvmError> {
        let mut dr = self
            .vcpu
            .get_debug_regs()
            .map_err(ioctl("KVM_GET_DEBUGREGS"))?;
        for i in 0..4 {
            dr.db[i] = cpu.dr[i] as u64;
        }
        dr.dr6 = cpu.dr[6] as u64;
        dr.dr7 = cpu.dr[7] as u64;
        // KVM refuses DR6/DR7 values with upper bits set; keep the rest.
        if self.vcpu.set_debug_regs(&dr).is_err() {
            dr.dr6 = 0xFFFF_0FF0;
            dr.dr7 = 0x400;
            let _ = self.vcpu.set_debug_regs(&dr);
        }
        Ok(())
    }

    fn load_events(&mut self, cpu: &CpuState) -> Result<(), KvmError> {
        let mut ev = self
            .vcpu
            .get_vcpu_events()
            .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
        ev.interrupt.shadow = if cpu.interrupt_shadow {
            (KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI) as u8
        } else {
            0
        };
        ev.nmi.pending = cpu.pending_nmi as u8;
        ev.flags = KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_NMI_PENDING;
        self.vcpu
            .set_vcpu_events(&ev)
            .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }

    /// KVM_SET_MSRS stops at the first MSR it refuses; skip that one and
    /// go on, so one unsupported MSR does not lose the others.
    fn set_msrs_lenient(&mut self, ents: &[kvm_bindings::kvm_msr_entry]) {
        let mut from = 0;
        while from < ents.len() {
            let Ok(m) = Msrs::from_entries(&ents[from..]) else {
                return;
            };
            match self.vcpu.set_msrs(&m) {
                Ok(n) if from + n < ents.len() => from += n + 1,
                _ => return,
            }
        }
    }

    /// Store every register of the vCPU into `cpu`.
    fn store(&mut self, cpu: &mut CpuState) -> Result<(), KvmError> {
        let regs = self.get_regs()?;
        state::from_kvm_regs(cpu, &regs);
        let sregs = self.get_sregs()?;
        state::from_kvm_sregs(cpu, &sregs);
        self.store_common(cpu, true)
    }

    /// The part of `store` that paging emulation shares: FPU, debug
    /// registers, MSRs, events.
    fn store_common(&mut self, cpu: &mut CpuState, all_msrs: bool) -> Result<(), KvmError> {
        self.get_fpu_state(cpu).map_err(ioctl("KVM_GET_XSAVE"))?;
        let dr = self
            .vcpu
            .get_debug_regs()
            .map_err(ioctl("KVM_GET_DEBUGREGS"))?;
        for i in 0..4 {
            cpu.dr[i] = dr.db[i] as u32;
        }
        cpu.dr[6] = dr.dr6 as u32;
        cpu.dr[7] = dr.dr7 as u32;
        // In compatibility-mode steps WRMSR is interpreted, so only the TSC
        // can have moved.
        let ents = if all_msrs {
            state::msr_entries(cpu)
        } else {
            vec![kvm_bindings::kvm_msr_entry {
                index: state::msr::TSC,
                ..Default::default()
            }]
        };
        self.get_msrs_lenient(&ents, cpu);
        let ev = self
            .vcpu
            .get_vcpu_events()
            .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
        cpu.interrupt_shadow = ev.interrupt.shadow != 0;
        cpu.pending_nmi = ev.nmi.pending != 0;
        self.known = Some(cpu.clone());
        Ok(())
    }

    /// KVM_GET_MSRS stops at the first MSR it refuses: skip it, read on.
    fn get_msrs_lenient(&mut self, ents: &[kvm_bindings::kvm_msr_entry], cpu: &mut CpuState) {
        let mut from = 0;
        while from < ents.len() {
            let Ok(mut m) = Msrs::from_entries(&ents[from..]) else {
                return;
            };
            match self.vcpu.get_msrs(&mut m) {
                Ok(n) => {
                    for e in m.as_slice().iter().take(n) {
                        state::store_msr(cpu, e.index, e.data);
                    }
                    from += n + 1;
                }
                Err(_) => return,
            }
        }
    }

    /// Wall-clock allowance of one `run`: proportional to the budget,
    /// larger per instruction when stepping (each step is several ioctls),
    /// never so short that a loaded host times out a single step.
    fn time_limit_for(&self, budget: Budget, stepping: bool) -> Duration {
        self.time_limit.unwrap_or_else(|| {
            let (per, min) = if stepping {
                (NS_PER_STEP, MIN_STEP_TIME_LIMIT)
            } else {
                (NS_PER_INSN, MIN_TIME_LIMIT)
            };
            let ns = budget.instructions.saturating_mul(per);
            Duration::from_nanos(ns).clamp(min, MAX_TIME_LIMIT)
        })
    }

    /// Enter the vCPU until one of: `steps` single steps (stepping mode) or
    /// exits (free-running mode) done, HLT, shutdown, timeout, a private
    /// trap, an error. `done` counts steps/exits; I/O and MMIO are served.
    fn enter(&mut self, vm: &mut Vm, steps: u64, done: &mut u64) -> End {
        // From here the vCPU's state may drift from what was loaded; a store
        // makes it known again.
        self.known = None;
        let stepping = matches!(self.stepping, Some(StepMode::Step | StepMode::StepCatch));
        let catching = self.stepping == Some(StepMode::StepCatch);
        loop {
            if self.watchdog.fired() {
                self.stats.timeouts += 1;
                self.last_exit = "timeout (wall-clock limit)".into();
                return End::Timeout;
            }
            self.stats.exits += 1;
            let run_ptr: *mut kvm_run = self.vcpu.get_kvm_run();
            self.io_pending = false;
            let exit = self.vcpu.run();
            // KVM copied the registers out on this exit unless it failed
            // (see `run_vcpu_raw`).
            let fresh = self.sync && exit.is_ok();
            self.fresh_regs = fresh;
            self.fresh_sregs = fresh;
            match exit {
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.io_pending = true;
                    // SAFETY: the exit reason is KVM_EXIT_IO, so the `io`
                    // member of the union is the valid one; the kvm_run
                    // mapping lives as long as the vCPU and we read only its
                    // header fields, not the data the slice covers.
                    let size = unsafe { (*run_ptr).__bindgen_anon_1.io.size } as usize;
                    self.stats.io_exits += 1;
                    let size = size.clamp(1, 4);
                    for chunk in data.chunks(size) {
                        let mut b = [0u8; 4];
                        b[..chunk.len()].copy_from_slice(chunk);
                        vm.port_out(port, chunk.len() as u8, u32::from_le_bytes(b));
                    }
                    self.last_exit = format!("io out port {port:#x}");
                    if stepping {
                        // The access completes on the next entry, and this
                        // host does not always raise the single-step exit
                        // after an emulated I/O instruction: complete it
                        // without running further; that ends the step.
                        self.complete_pending_io();
                    }
                    *done += 1;
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.io_pending = true;
                    // SAFETY: as for IoOut.
                    let size = unsafe { (*run_ptr).__bindgen_anon_1.io.size } as usize;
                    self.stats.io_exits += 1;
                    let size = size.clamp(1, 4);
                    for chunk in data.chunks_mut(size) {
                        let v = vm.port_in(port, chunk.len() as u8);
                        let n = chunk.len();
                        chunk.copy_from_slice(&v.to_le_bytes()[..n]);
                    }
                    self.last_exit = format!("io in port {port:#x}");
                    if stepping {
                        // The access completes on the next entry, and this
                        // host does not always raise the single-step exit
                        // after an emulated I/O instruction: complete it
                        // without running further; that ends the step.
                        self.complete_pending_io();
                    }
                    *done += 1;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.io_pending = true;
                    self.stats.mmio_exits += 1;
                    let n = data.len().min(8);
                    let v = if n > 0 { vm.read_phys(addr, n) } else { 0 };
                    data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
                    self.last_exit = format!("mmio read {addr:#x}");
                    if stepping {
                        // The access completes on the next entry, and this
                        // host does not always raise the single-step exit
                        // after an emulated I/O instruction: complete it
                        // without running further; that ends the step.
                        self.complete_pending_io();
                    }
                    *done += 1;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.io_pending = true;
                    self.stats.mmio_exits += 1;
                    let n = data.len().min(8);
                    let mut b = [0u8; 8];
                    b[..n].copy_from_slice(&data[..n]);
                    if n > 0 {
                        vm.write_phys(addr, n, u64::from_le_bytes(b));
                    }
                    self.last_exit = format!("mmio write {addr:#x}");
                    if stepping {
                        // The access completes on the next entry, and this
                        // host does not always raise the single-step exit
                        // after an emulated I/O instruction: complete it
                        // without running further; that ends the step.
                        self.complete_pending_io();
                    }
                    *done += 1;
                }
                Ok(VcpuExit::Hlt) => {
                    if self.paging.active() && self.rip_is_private() {
                        self.last_exit = "private exception handler".into();
                        return End::PrivateTrap;
                    }
                    self.last_exit = "hlt".into();
                    *done += 1;
                    return End::Halted;
                }
                Ok(VcpuExit::Shutdown) => {
                    self.last_exit = "shutdown (triple fault)".into();
                    return End::Shutdown;
                }
                Ok(VcpuExit::Debug(d)) => {
                    self.stats.debug_exits += 1;
                    if self.paging.active() && d.pc >= paging::BASE {
                        // Stepping through our own exception handler, until
                        // it reaches its HLT.
                        if paging::at_common(d.pc) {
                            self.last_exit = "private exception handler".into();
                            return End::PrivateTrap;
                        }
                        continue;
                    }
                    self.last_exit = format!(
                        "debug exception {} at {:#x} dr6 {:#x}",
                        d.exception, d.pc, d.dr6
                    );
                    // The catch breakpoint fired (B0), or, after a software
                    // INT n that this host's emulator completes with a
                    // single-step exit (BS), the step ended on the catch
                    // address itself; `caught_vector` then checks CS.
                    let at_catch = d.pc == realstep::CATCH;
                    if catching
                        && ((d.dr6 & realstep::DR6_B0 != 0 && d.dr6 & realstep::DR6_BS == 0)
                            || (at_catch && d.dr6 & (realstep::DR6_B0 | realstep::DR6_BS) != 0))
                    {
                        *done += 1;
                        return End::Caught;
                    }
                    *done += 1;
                }
                Ok(VcpuExit::Intr) | Err(_) if self.watchdog.fired() => {
                    self.stats.timeouts += 1;
                    self.last_exit = "timeout (wall-clock limit)".into();
                    return End::Timeout;
                }
                Ok(VcpuExit::Intr) => {}
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => return End::Error(format!("KVM_RUN failed: {e}")),
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return End::Error(format!(
                        "KVM entry failed: hardware reason {reason:#x} on cpu {cpu}"
                    ))
                }
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so
                    // the `internal` member of the union is the valid one;
                    // the kvm_run mapping lives as long as the vCPU.
                    let (sub, n, data) = unsafe {
                        let i = (*run_ptr).__bindgen_anon_1.internal;
                        (i.suberror, i.ndata, i.data)
                    };
                    let n = (n as usize).min(data.len());
                    let msg = format!(
                        "KVM internal error: suberror {sub} (1 = emulation failure) data {:x?}",
                        &data[..n]
                    );
                    if sub == KVM_INTERNAL_ERROR_EMULATION {
                        return End::EmuFail(msg);
                    }
                    return End::Error(msg);
                }
                Ok(other) => return End::Error(format!("unexpected KVM exit {other:?}")),
            }
            if *done >= steps {
                return End::Budget;
            }
        }
    }

    /// After an I/O or MMIO exit the instruction completes only on the
    /// next KVM_RUN: enter once with immediate_exit so that the registers
    /// we read back are final.
    fn complete_pending_io(&mut self) {
        if !self.io_pending {
            return;
        }
        self.io_pending = false;
        self.vcpu.set_kvm_immediate_exit(1);
        // EINTR is the expected answer to an immediate exit.
        let _ = self.run_vcpu_raw();
        self.vcpu.set_kvm_immediate_exit(0);
    }

    fn point_idt_at_private_ivt(&mut self) -> Result<(), KvmError> {
        let mut s = self.get_sregs()?;
        s.idt.base = realstep::IVT_ADDR;
        self.set_sregs(&s)
    }

    /// Whether the vCPU kept EFLAGS.VM as loaded (PVM hosts drop it): the
    /// vCPU's own copy, after the load really reached it.
    fn vm_flag_sticks(&mut self) -> bool {
        if self.flush_sync().is_err() {
            return false;
        }
        self.vcpu
            .get_regs()
            .map(|r| r.rflags & umbra_core::cpu::flags::VM as u64 != 0)
            .unwrap_or(false)
    }

    fn rip_is_private(&mut self) -> bool {
        self.get_regs()
            .map(|r| r.rip >= paging::BASE)
            .unwrap_or(false)
    }

    // ---- registers in and out -------------------------------------------
    //
    // With KVM_CAP_SYNC_REGS, KVM copies the registers and system
    // registers into kvm_run on every exit (kvm_valid_regs) and loads the
    // ones we mark dirty on the next entry (kvm_dirty_regs), so a step
    // costs one ioctl instead of five. A set is then deferred to the next
    // KVM_RUN; anything that must see the vCPU's own copy first makes it
    // current (`flush_sync`).

    /// KVM_RUN, keeping track of what the sync area holds.
    fn run_vcpu_raw(&mut self) -> Result<(), kvm_ioctls::Error> {
        let r = self.vcpu.run().map(|_| ());
        // On an error KVM may have left before copying out.
        let fresh = self.sync && r.is_ok();
        self.fresh_regs = fresh;
        self.fresh_sregs = fresh;
        r
    }

    /// Load registers still waiting in the sync area with their ioctls.
    fn flush_sync(&mut self) -> Result<(), KvmError> {
        if !self.sync {
            return Ok(());
        }
        let dirty = self.vcpu.get_kvm_run().kvm_dirty_regs;
        let regs_bit = kvm_ioctls::SyncReg::Register as u64;
        let sregs_bit = kvm_ioctls::SyncReg::SystemRegister as u64;
        if dirty & regs_bit != 0 {
            let r = self.vcpu.sync_regs().regs;
            self.vcpu.set_regs(&r).map_err(ioctl("KVM_SET_REGS"))?;
            self.vcpu
                .clear_sync_dirty_reg(kvm_ioctls::SyncReg::Register);
        }
        if dirty & sregs_bit != 0 {
            let r = self.vcpu.sync_regs().sregs;
            self.vcpu.set_sregs(&r).map_err(ioctl("KVM_SET_SREGS"))?;
            self.vcpu
                .clear_sync_dirty_reg(kvm_ioctls::SyncReg::SystemRegister);
        }
        Ok(())
    }

    /// Load the x87/SSE state through KVM_SET_XSAVE. KVM_SET_FPU writes
    /// the legacy region of the kernel's save buffer but not its
    /// XSTATE_BV, so where the CPU had last found the x87 unit in its
    /// initial state (XSAVES then clears that bit) the next XRSTORS
    /// ignores what was written.
    fn set_fpu_state(&mut self, cpu: &CpuState) -> Result<(), KvmError> {
        let xsave = state::to_kvm_xsave(cpu);
        // SAFETY: the kernel reads the guest's XSAVE size, which `new`
        // checked fits `kvm_xsave` (no dynamically enabled components).
        unsafe { self.vcpu.set_xsave(&xsave) }.map_err(ioctl("KVM_SET_XSAVE"))
    }

    /// Read the x87/SSE state back through KVM_GET_XSAVE (see
    /// `state::from_kvm_xsave` for why not KVM_GET_FPU).
    fn get_fpu_state(&mut self, cpu: &mut CpuState) -> Result<(), kvm_ioctls::Error> {
        state::from_kvm_xsave(cpu, &self.vcpu.get_xsave()?);
        Ok(())
    }

    fn get_regs(&mut self) -> Result<kvm_bindings::kvm_regs, KvmError> {
        if self.fresh_regs {
            return Ok(self.vcpu.sync_regs().regs);
        }
        self.flush_sync()?;
        self.vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))
    }

    fn get_sregs(&mut self) -> Result<kvm_bindings::kvm_sregs, KvmError> {
        if self.fresh_sregs {
            return Ok(self.vcpu.sync_regs().sregs);
        }
        self.flush_sync()?;
        self.vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))
    }

    fn set_regs(&mut self, r: &kvm_bindings::kvm_regs) -> Result<(), KvmError> {
        if !self.sync {
            return self.vcpu.set_regs(r).map_err(ioctl("KVM_SET_REGS"));
        }
        self.vcpu.sync_regs_mut().regs = *r;
        self.vcpu.set_sync_dirty_reg(kvm_ioctls::SyncReg::Register);
        self.fresh_regs = true;
        Ok(())
    }

    fn set_sregs(&mut self, r: &kvm_bindings::kvm_sregs) -> Result<(), KvmError> {
        if !self.sync {
            return self.vcpu.set_sregs(r).map_err(ioctl("KVM_SET_SREGS"));
        }
        self.vcpu.sync_regs_mut().sregs = *r;
        self.vcpu
            .set_sync_dirty_reg(kvm_ioctls::SyncReg::SystemRegister);
        self.fresh_sregs = true;
        Ok(())
    }

    fn run_inner(&mut self, vm: &mut Vm, budget: Budget) -> Exit {
        if vm.mem.ram_host_ptr() as usize != self.ram_host || vm.mem.ram_size() != self.ram_size {
            return Exit::Error(
                "KvmEngine::run: this Vm's RAM is not the one the engine mapped".into(),
            );
        }
        let mut done = 0u64;
        // External events at an instruction boundary, through the
        // interpreter's routine so that both engines take them alike.
        match interrupt::take_pending(vm) {
            Ok(true) => {
                done += 1;
                vm.cpu.halted = false;
            }
            Ok(false) => {}
            Err(r) => return Exit::Shutdown(r),
        }
        self.run_inner_from(vm, budget, done)
    }

    /// `run` after pending events, with `done` steps already used: runs
    /// segments (native, compatibility-mode, fallback steps) until one
    /// ends the run.
    fn run_inner_from(&mut self, vm: &mut Vm, budget: Budget, mut done: u64) -> Exit {
        loop {
            if let Seg::Exit(e) = self.run_segment(vm, budget, &mut done) {
                return e;
            }
        }
    }

    /// One stretch of `run` in one way of running the guest.
    fn run_segment(&mut self, vm: &mut Vm, budget: Budget, done: &mut u64) -> Seg {
        if *done >= budget.instructions {
            return Seg::Exit(Exit::BudgetSpent);
        }
        if vm.cpu.halted {
            self.last_exit = "halted on entry".into();
            return Seg::Exit(Exit::Halted);
        }
        if paging::compat_mode(&vm.cpu, budget, self.hardware_protected_mode) {
            return self.run_paged(vm, budget, done);
        }
        self.sregs_cache = None;
        let mode = match (budget.instructions == 1, vm.cpu.real()) {
            (false, _) => StepMode::Off,
            (true, false) => StepMode::Step,
            (true, true) => StepMode::StepCatch,
        };
        let ins = if mode == StepMode::Off {
            None
        } else {
            paging::decode_insn(vm, false)
        };
        if ins.is_some_and(|i| i.mnemonic() == iced_x86::Mnemonic::Cpuid) {
            // This host answers CPUID leaf 1 ECX/EDX with its own features
            // whatever KVM_SET_CPUID2 says; lockstep runs take the
            // interpreter's answer (see the module doc).
            self.last_exit = "cpuid (interpreted)".into();
            return Seg::Exit(match self.interp.step(vm) {
                Step::Retired => Exit::BudgetSpent,
                Step::Halted => Exit::Halted,
                Step::Shutdown(r) => Exit::Shutdown(r),
            });
        }
        let hlt_next = ins
            .filter(|i| i.mnemonic() == iced_x86::Mnemonic::Hlt)
            .map(|i| paging::next_eip(&vm.cpu, &i));
        let mut rep = match ins.and_then(|i| rep::prepare(vm, &i, paging::next_eip(&vm.cpu, &i))) {
            Some(rep::Rep::Skip(next)) => {
                rep::skip(vm, next);
                self.last_exit = "rep with count 0 (skipped)".into();
                return Seg::Exit(Exit::BudgetSpent);
            }
            Some(rep::Rep::Fix(f)) => Some(f),
            None => None,
        };
        if let Err(e) = self.set_stepping(mode).and_then(|_| self.load(&vm.cpu)) {
            if let Some(r) = &rep {
                r.restore(vm);
            }
            return Seg::Exit(Exit::Error(e.to_string()));
        }
        if vm.cpu.v86() && !self.vm_flag_sticks() {
            self.last_exit = "virtual-8086 mode unsupported by this host's KVM".into();
            if let Some(r) = &rep {
                r.restore(vm);
            }
            return Seg::Exit(Exit::Error(
                "this host's KVM cannot run virtual-8086 mode (EFLAGS.VM does not stick); use the interpreter".into(),
            ));
        }
        let guest_idtr = vm.cpu.idtr;
        if mode == StepMode::StepCatch {
            if let Err(e) = self.point_idt_at_private_ivt() {
                return Seg::Exit(Exit::Error(e.to_string()));
            }
        }
        self.watchdog
            .arm(self.time_limit_for(budget, mode != StepMode::Off));
        let mut end = self.enter(vm, budget.instructions, done);
        self.watchdog.disarm();
        self.complete_pending_io();
        if let Err(e) = self.store(&mut vm.cpu) {
            return Seg::Exit(Exit::Error(e.to_string()));
        }
        if mode != StepMode::Off && (matches!(end, End::Halted) || hlt_next == Some(vm.cpu.eip)) {
            // A single-stepped HLT ends with the step's debug exit. As in
            // the interpreter, the HLT retires as the step (BudgetSpent with
            // cpu.halted set); the next run returns Halted.
            vm.cpu.halted = true;
            end = End::Budget;
        }
        if mode == StepMode::StepCatch {
            if vm.cpu.idtr.base as u64 == realstep::IVT_ADDR {
                vm.cpu.idtr = guest_idtr;
            }
            if matches!(end, End::Caught) {
                match realstep::caught_vector(vm) {
                    Some(v) => {
                        realstep::redirect(vm, v);
                        // RF is the catch breakpoint's doing, not the guest's.
                        vm.cpu.eflags &= !umbra_core::cpu::flags::RF;
                        if let Some(r) = rep.take() {
                            r.finish(vm, true);
                        }
                        self.last_exit = format!("real-mode delivery of vector {v}");
                    }
                    None => {
                        self.last_exit =
                            "breakpoint at the catch address without a delivery".into();
                    }
                }
            }
        }
        if let Some(r) = rep.take() {
            r.finish(vm, !matches!(end, End::Budget | End::Halted));
        }
        if matches!(end, End::Shutdown) && paging::complete_paging_enable(vm) {
            self.last_exit = "mov cr0 enabling 2-level paging (emulated)".into();
            vm.mmu.flush_all(&vm.cpu);
            *done += 1;
            return Seg::Again;
        }
        if let End::EmuFail(why) = &end {
            // This host runs legacy modes in KVM's instruction emulator,
            // which lacks some instructions (protected-mode IRET, x87...).
            // Run that one instruction another way and go on.
            self.stats.emulation_fallbacks += 1;
            self.last_exit = format!("{why}; stepped another way");
            vm.mmu.flush_all(&vm.cpu);
            let r = if vm.cpu.protected() && !vm.cpu.v86() {
                match self.set_stepping(StepMode::Step) {
                    Ok(()) => self.paged_step(vm),
                    Err(e) => Err(e.to_string()),
                }
            } else {
                Ok(match self.interp.step(vm) {
                    Step::Retired => None,
                    Step::Halted => Some(Exit::Halted),
                    Step::Shutdown(r) => Some(Exit::Shutdown(r)),
                })
            };
            return match r {
                Ok(None) => {
                    *done += 1;
                    Seg::Again
                }
                Ok(Some(e)) => Seg::Exit(e),
                Err(e) => {
                    self.last_exit = e.clone();
                    Seg::Exit(Exit::Error(e))
                }
            };
        }
        Seg::Exit(self.finish(vm, end))
    }

    /// Common tail: halted flag, MMU coherence, the Exit.
    fn finish(&mut self, vm: &mut Vm, end: End) -> Exit {
        // KVM wrote RAM behind the MMU's back.
        vm.mmu.flush_all(&vm.cpu);
        match end {
            End::Budget | End::Timeout | End::Caught => Exit::BudgetSpent,
            End::Halted => {
                vm.cpu.halted = true;
                Exit::Halted
            }
            End::Shutdown => Exit::Shutdown(ShutdownReason::TripleFault),
            End::PrivateTrap => Exit::Error("private trap outside paging emulation".into()),
            End::Error(s) | End::EmuFail(s) => {
                self.last_exit = s.clone();
                Exit::Error(s)
            }
        }
    }
}

impl Engine for KvmEngine {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn run(&mut self, vm: &mut Vm, budget: Budget) -> Exit {
        self.stats.runs += 1;
        if budget.instructions == 0 {
            return Exit::BudgetSpent;
        }
        self.run_inner(vm, budget)
    }
}

/// The page-aligned ranges of the 32-bit physical space where `vm.mem`
/// has ROM (below RAM's end over RAM, or anywhere above it), except where
/// the engine's private pages lie.
fn rom_ranges(vm: &Vm) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let private = realstep::IVT_ADDR..(TSS_ADDR as u64 + 0x3000);
    let mut p = 0u64;
    while p < 1 << 32 {
        let rom = matches!(vm.mem.region(p), Region::Rom(..))
            && matches!(vm.mem.region(p + PAGE_SIZE - 1), Region::Rom(..))
            && !private.contains(&p);
        if rom {
            match out.last_mut() {
                Some(last) if last.1 == p => last.1 = p + PAGE_SIZE,
                _ => out.push((p, p + PAGE_SIZE)),
            }
        }
        p += PAGE_SIZE;
    }
    out
}

/// The pieces of guest RAM that are plain RAM frames (no ROM or MMIO on
/// top): each becomes one KVM memory slot; the rest exits to us.
fn ram_pieces(vm: &Vm) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let size = vm.mem.ram_size();
    let mut p = 0;
    while p < size {
        if vm.mem.frame_is_ram(p) {
            match out.last_mut() {
                Some(last) if last.1 == p => last.1 = p + PAGE_SIZE,
                _ => out.push((p, p + PAGE_SIZE)),
            }
        }
        p += PAGE_SIZE;
    }
    out
}
