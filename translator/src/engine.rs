//! The translator as an `Engine`: the dispatcher loop that finds or
//! translates the block at CS:EIP and enters it, and the `Monitor` state
//! that monitor routines reach while generated code runs.
//!
//! The dispatcher hands an instruction to the interpreter whenever the
//! block path does not apply: an event to deliver, a halted CPU, TF or RF
//! set, alignment checking on (CR0.AM, EFLAGS.AC, CPL 3: native accesses
//! do not check alignment), an interrupt shadow, code outside RAM or an instruction crossing
//! a page, and the last instructions of a budget smaller than the next
//! block.
//!
//! After a block left through a chainable exit (`exit::CHAIN`), the
//! dispatcher chains that exit to the block it finds next when the cache
//! allows it (`Cache::chain`). Events are checked here before every entry;
//! chained blocks and indirect lookups only continue in the same mode and
//! only after instructions that cannot make an event deliverable.

use std::collections::BTreeMap;

use umbra_core::cpu::{SegReg, RF, TF};
use umbra_core::engine::{Budget, Engine, Exit, ShutdownReason};
use umbra_core::interp::{event_deliverable, fetch, Interpreter, Step, Table};
use umbra_core::mem::PAGE_SHIFT;
use umbra_core::mmu::Access;
use umbra_core::vm::Vm;

use crate::block::{self, BlockKey};
use crate::cache::Cache;
use crate::codegen::{self, stubs::Stubs};
use crate::ctx::{exit, JitCtx};
use crate::exec::ExecMem;

/// Default size of the code memory (QEMU reserves 1 GiB).
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Counters `umbra run --stats` prints.
#[derive(Clone, Debug, Default)]
pub struct TranslatorStats {
    /// Dispatcher lookups of a block by key.
    pub lookups: u64,
    /// Lookups that found a valid block.
    pub hits: u64,
    /// Blocks translated.
    pub translations: u64,
    /// Guest instructions translated.
    pub insns_translated: u64,
    /// Host code bytes written.
    pub host_bytes: u64,
    /// Blocks dropped because their frame was written.
    pub invalidations: u64,
    /// Full flushes of the code memory (only with a single region).
    pub flushes: u64,
    /// Regions of the code memory emptied to make room.
    pub region_evictions: u64,
    /// Blocks dropped with their region.
    pub evictions: u64,
    /// Block exits patched to jump straight to their target block.
    pub chains: u64,
    /// Patched exits pointed back to their stubs (target dropped).
    pub unchains: u64,
    /// Lookups of an indirect branch's target from generated code.
    pub indirect_lookups: u64,
    /// Those that found a valid block and jumped to it.
    pub indirect_hits: u64,
    /// Times the inline branch-target table was emptied because memory
    /// changed behind the write-watch (`GuestMemory::watched_code_gen`).
    pub ib_clears: u64,
    /// Misses of the inline branch-target lookup by what the target's
    /// table set held when the dispatcher found the block: the same
    /// address (under another key: physical page, mode or CS base; or the
    /// lookup found no shadow entry for the fetch), else an empty way,
    /// else two other addresses (a conflict).
    pub ib_miss_empty: u64,
    pub ib_miss_conflict: u64,
    pub ib_miss_other_key: u64,
    /// Calls from generated code into monitor routines.
    pub monitor_calls: u64,
    /// RDTSCs that read the clock through the light call
    /// (`helpers::rdtsc`) instead.
    pub inline_rdtsc: u64,
    /// Monitor calls by the mnemonic of the instruction they ran
    /// (`iced_x86::Mnemonic` as index).
    pub monitor_by_mnemonic: Vec<u64>,
    /// Those monitor calls that left generated code for the dispatcher.
    pub monitor_exits_by_mnemonic: Vec<u64>,
    /// Monitor calls of instructions that end blocks after which the
    /// block went on in generated code (`helpers::may_continue`).
    pub monitor_continues: u64,
    /// Blocks ending with STI and its shadow that went on in generated
    /// code (no event deliverable after the shadow).
    pub sti_continues: u64,
    /// Exceptions raised by instructions run in monitor routines.
    pub exceptions: u64,
    /// Entries into native x87 code that loaded the guest's x87 state
    /// into the host unit (`codegen::x87`).
    pub x87_loads: u64,
    /// Stores of it back to `CpuState` (monitor routines, exits).
    pub x87_spills: u64,
    /// Instructions the dispatcher gave to the interpreter.
    pub interp_steps: u64,
    /// Those by why, indexed by `step_why`.
    pub interp_why: [u64; step_why::NAMES.len()],
    /// Entries into generated code.
    pub entries: u64,
    /// Returns from generated code by `ctx::exit` code (NEXT, BUDGET,
    /// MONITOR, SHUTDOWN, CHAIN, INDIRECT).
    pub exits: [u64; 6],
    /// Decoded instructions with no handler (raised #UD), by code.
    pub unimplemented: BTreeMap<String, u64>,
}

impl TranslatorStats {
    /// Count a monitor call that runs an instruction with mnemonic `m`.
    #[inline]
    pub fn note_monitor_call(&mut self, m: iced_x86::Mnemonic) {
        self.monitor_calls += 1;
        let i = m as usize;
        if i >= self.monitor_by_mnemonic.len() {
            self.monitor_by_mnemonic.resize(i + 1, 0);
        }
        self.monitor_by_mnemonic[i] += 1;
    }

    /// Count a monitor call of mnemonic `m` that left generated code.
    #[inline]
    pub fn note_monitor_exit(&mut self, m: iced_x86::Mnemonic) {
        let i = m as usize;
        if i >= self.monitor_exits_by_mnemonic.len() {
            self.monitor_exits_by_mnemonic.resize(i + 1, 0);
        }
        self.monitor_exits_by_mnemonic[i] += 1;
    }

    /// The `n` mnemonics with the most monitor calls, most first.
    pub fn top_monitor_mnemonics(&self, n: usize) -> Vec<(String, u64)> {
        top_mnemonics(&self.monitor_by_mnemonic, n)
    }

    /// The `n` mnemonics whose monitor calls left generated code most.
    pub fn top_monitor_exit_mnemonics(&self, n: usize) -> Vec<(String, u64)> {
        top_mnemonics(&self.monitor_exits_by_mnemonic, n)
    }
}

/// The `n` largest counts of `by` (indexed by `iced_x86::Mnemonic`).
fn top_mnemonics(by: &[u64], n: usize) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = iced_x86::Mnemonic::values()
        .filter_map(|m| {
            let c = *by.get(m as usize)?;
            (c > 0).then(|| (format!("{m:?}"), c))
        })
        .collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.truncate(n);
    v
}

/// Why the dispatcher stepped the interpreter (`TranslatorStats::interp_why`).
pub mod step_why {
    /// An event to deliver, or a halted CPU.
    pub const EVENT: usize = 0;
    /// The interrupt shadow of STI or a load of SS.
    pub const SHADOW: usize = 1;
    /// EFLAGS.TF or RF.
    pub const TRAP_FLAGS: usize = 2;
    /// Alignment checking (CR0.AM, EFLAGS.AC, CPL 3).
    pub const ALIGNMENT: usize = 3;
    /// No block at CS:EIP: the fetch faults, the code is not in RAM, or
    /// the first instruction crosses into a page not yet in the shadow.
    pub const NO_BLOCK: usize = 4;
    /// A block whose length exceeds what is left of the budget, or one
    /// that left before its first instruction ran.
    pub const BUDGET: usize = 5;
    /// Names for `--stats`, by index.
    pub const NAMES: [&str; 6] = [
        "event",
        "shadow",
        "tf/rf",
        "alignment",
        "no block",
        "budget",
    ];
}

/// What monitor routines need while generated code runs, reached through
/// `JitCtx::engine`.
pub struct Monitor {
    pub stats: TranslatorStats,
    pub rep_batch: u32,
    /// Budget when generated code was entered, and `Clock::retired` then.
    pub budget_start: i64,
    pub retired_base: u64,
    /// Set by a routine whose exception delivery shut the machine down.
    pub shutdown: Option<ShutdownReason>,
    /// `block::mode_of` the CPU while generated code runs: fixed between
    /// entry and exit (instructions that change it leave the block).
    pub cur_mode: u32,
    /// `GuestMemory::watched_code_gen` the inline branch-target table and
    /// the running code are valid for: set on entry; a monitor routine
    /// that sees it change leaves for the dispatcher.
    pub ib_gen: u64,
    pub cache: Cache,
}

impl Monitor {
    pub(crate) fn note_unimplemented(&mut self, ins: &iced_x86::Instruction) {
        *self
            .stats
            .unimplemented
            .entry(format!("{:?}", ins.code()))
            .or_default() += 1;
    }

    /// Drop every block on the frames written since the last call
    /// (`Vm::ext_frames_written`) and stop watching those frames.
    pub fn invalidate_written(&mut self, vm: &mut Vm) {
        let frames = std::mem::take(&mut vm.ext_frames_written);
        for f in frames {
            self.invalidate_frame(vm, f);
        }
    }

    fn invalidate_frame(&mut self, vm: &mut Vm, frame: u64) {
        self.cache.invalidate_frame(vm, frame, &mut self.stats);
    }

    /// The host code of the valid block at the current CS:EIP in the
    /// running mode, after an indirect branch in generated code; `None`
    /// leaves it to the dispatcher. The fetch goes through the shadow
    /// lookup like the dispatcher's (same physical frame as the key).
    pub(crate) fn indirect_target(&mut self, vm: &mut Vm) -> Option<usize> {
        self.stats.indirect_lookups += 1;
        let cpu = &vm.cpu;
        let cs = cpu.seg(SegReg::Cs);
        let eip = cpu.eip;
        if eip > cs.limit {
            return None;
        }
        let lin = cs.base.wrapping_add(eip);
        let phys = vm.mmu.lookup_ram(lin, Access::FETCH.at_cpl(cpu.cpl()))?;
        let key = BlockKey {
            phys: phys as u32,
            lin,
            cs_base: cs.base,
            mode: self.cur_mode,
            cs_limit: cs.limit,
        };
        let id = self.cache.find(&key)?;
        let b = self.cache.block(id)?;
        if b.gen != vm.mem.watched_code_gen() {
            return None;
        }
        self.stats.indirect_hits += 1;
        let code = b.code;
        self.cache.ib_insert(id);
        Some(code)
    }
}

pub struct Translator {
    mon: Box<Monitor>,
    ctx: Box<JitCtx>,
    interp: Interpreter,
    table: Table,
    stubs: Stubs,
    /// The exit taken last if it can be chained: (block id, exit index,
    /// block serial).
    pending_chain: Option<(usize, usize, u64)>,
    /// The last exit was a miss of the inline branch-target lookup: record
    /// the block entered next there.
    pending_ib: bool,
    /// With `UMBRA_PERF_MAP` set in the environment: `/tmp/perf-<pid>.map`,
    /// one line per translated block (host address, size, guest linear
    /// address), so that `perf report` names generated code; and
    /// `/tmp/umbra-code-<pid>.bin`, each block's host code (records of
    /// address u64, length u32, guest linear address u32, then the bytes,
    /// little-endian), for `benches/jitprof.py`.
    perf_map: Option<(std::fs::File, std::fs::File)>,
}

impl Translator {
    /// A translator with `cache_bytes` of code memory.
    pub fn new(cache_bytes: usize) -> std::io::Result<Self> {
        let mut code = ExecMem::new(cache_bytes)?;
        let at = code.next_addr();
        let (bytes, stubs) = codegen::stubs::emit(at);
        let a = code
            .alloc(bytes.len())
            .ok_or_else(|| std::io::Error::other("code memory too small for the stubs"))?;
        debug_assert_eq!(a, at);
        code.write(a, &bytes);
        let stub_bytes = code.used();
        Ok(Translator {
            mon: Box::new(Monitor {
                stats: TranslatorStats {
                    monitor_by_mnemonic: vec![0; iced_x86::Mnemonic::values().count()],
                    monitor_exits_by_mnemonic: vec![0; iced_x86::Mnemonic::values().count()],
                    ..Default::default()
                },
                rep_batch: 256,
                budget_start: 0,
                retired_base: 0,
                shutdown: None,
                cur_mode: 0,
                ib_gen: 0,
                cache: Cache::new(code, stub_bytes),
            }),
            ctx: Box::new(JitCtx::new()),
            interp: Interpreter::new(),
            table: Table::build(),
            stubs,
            pending_chain: None,
            pending_ib: false,
            perf_map: std::env::var_os("UMBRA_PERF_MAP").and_then(|_| {
                let pid = std::process::id();
                let map = std::fs::File::create(format!("/tmp/perf-{pid}.map")).ok()?;
                let code = std::fs::File::create(format!("/tmp/umbra-code-{pid}.bin")).ok()?;
                Some((map, code))
            }),
        })
    }

    pub fn stats(&self) -> &TranslatorStats {
        &self.mon.stats
    }

    /// The interpreter the dispatcher falls back on, and its counters.
    pub fn interpreter(&self) -> &Interpreter {
        &self.interp
    }

    /// How many REP iterations one step of a string instruction may run,
    /// in generated code and in the interpreter it falls back on (1 in
    /// lockstep comparisons, as single-stepping hardware does).
    pub fn set_rep_batch(&mut self, n: u32) {
        self.mon.rep_batch = n.max(1);
        self.interp.rep_batch = n.max(1);
    }

    /// Find the block at the current CS:EIP, translating it on a miss, as
    /// the dispatcher does before entering one; whether there is one. For
    /// benchmarks of the lookup and of translation.
    pub fn lookup_block(&mut self, vm: &mut Vm) -> bool {
        self.block_here(vm).is_some()
    }

    /// Code memory in use and its size, in bytes.
    pub fn cache_usage(&self) -> (usize, usize) {
        let c = &self.mon.cache;
        (c.code.used(), c.code.size())
    }

    /// How code is written into the read-execute cache (`exec`).
    pub fn code_writes(&self) -> &'static str {
        if self.mon.cache.code.writes_through_proc_mem() {
            "through /proc/self/mem"
        } else {
            "by mprotect"
        }
    }

    /// The block for the current CS:EIP, translated if needed; `None` when
    /// the interpreter must fetch (fault, not RAM, crosses the page).
    fn block_here(&mut self, vm: &mut Vm) -> Option<usize> {
        let cpu = &vm.cpu;
        let cs = *cpu.seg(SegReg::Cs);
        let eip = cpu.eip;
        if eip > cs.limit {
            return None;
        }
        let lin = cs.base.wrapping_add(eip);
        let acc = Access::FETCH.at_cpl(cpu.cpl());
        let mode = block::mode_of(cpu);
        let phys = match vm.mmu.lookup_ram(lin, acc) {
            Some(p) => p,
            None => {
                // Walk and fill; a fault or non-RAM code goes to the
                // interpreter.
                vm.translate(lin, acc).ok()?;
                vm.mmu.lookup_ram(lin, acc)?
            }
        };
        let key = BlockKey {
            phys: phys as u32,
            lin,
            cs_base: cs.base,
            mode,
            cs_limit: cs.limit,
        };
        let mon = &mut *self.mon;
        mon.stats.lookups += 1;
        if let Some(id) = mon.cache.find(&key) {
            let gen = vm.mem.watched_code_gen();
            let b = mon.cache.block(id)?;
            if let Some(ram) = b.guest.cross {
                // Its last instruction's next page is mapped elsewhere
                // now: its guard would fail on every run.
                let lin2 = (lin | 0xFFF).wrapping_add(1);
                if vm
                    .mmu
                    .lookup_ram(lin2, acc)
                    .is_some_and(|p| p as u32 & !0xFFF != ram)
                {
                    mon.cache.discard(vm, id, &mut mon.stats);
                    return self.translate(vm, key);
                }
            }
            if b.gen == gen {
                mon.stats.hits += 1;
                return Some(id);
            }
            // Memory may have changed behind the watch (another engine, a
            // device). Blocks chained from this one are on its frame:
            // check them all, or drop every block of the frame.
            let frame = (phys >> PAGE_SHIFT) as u32;
            if mon.cache.revalidate_frame(vm, frame, gen) {
                mon.stats.hits += 1;
                return Some(id);
            }
            mon.invalidate_frame(vm, frame as u64);
        }
        self.translate(vm, key)
    }

    #[cold]
    fn translate(&mut self, vm: &mut Vm, key: BlockKey) -> Option<usize> {
        let cs_limit = key.cs_limit;
        let phys = key.phys as usize;
        let page_end = (phys | 0xFFF) + 1;
        // The next linear page, for an instruction that runs onto it: only
        // if the shadow already lets this CPL fetch from it (a lookup, not
        // a walk: the guest's page tables see no access the CPU might not
        // make).
        let lin2 = (key.lin | 0xFFF).wrapping_add(1);
        let cpl = (key.mode >> block::mode::CPL_SHIFT) & 3;
        let next = vm
            .mmu
            .lookup_ram(lin2, Access::FETCH.at_cpl(cpl as u8))
            .and_then(|p2| {
                let bytes = vm.mem.ram_slice(p2, fetch::MAX_INSN_LEN)?;
                Some(block::NextPage {
                    ram: p2 as u32,
                    bytes,
                })
            });
        let code = vm.mem.ram_slice(phys, page_end - phys)?;
        let eip = key.lin.wrapping_sub(key.cs_base);
        let guest = block::decode(&self.table, code, eip, key.lin, key.mode, cs_limit, next)?;
        let mon = &mut *self.mon;
        let emit = |c: &Cache| {
            let addr = c.code.next_addr();
            let id = c.next_id() as u32;
            let (bytes, sites) = codegen::emit_block(&guest, key, addr, &self.stubs, id, cs_limit);
            (addr, bytes, sites)
        };
        let (mut addr, mut bytes, mut sites) = emit(&mon.cache);
        if mon.cache.make_room(vm, bytes.len(), &mut mon.stats)? {
            (addr, bytes, sites) = emit(&mon.cache);
        }
        let at = mon.cache.alloc(bytes.len())?;
        debug_assert_eq!(at, addr);
        mon.cache.code.write(addr, &bytes);
        mon.stats.translations += 1;
        mon.stats.insns_translated += guest.insns.len() as u64;
        mon.stats.host_bytes += bytes.len() as u64;
        if let Some((map, code)) = self.perf_map.as_mut() {
            use std::io::Write;
            // Best effort: a profiling aid, never worth failing for.
            let _ = writeln!(map, "{addr:x} {:x} guest_{:08x}", bytes.len(), key.lin);
            let mut rec = Vec::with_capacity(16 + bytes.len());
            rec.extend_from_slice(&(addr as u64).to_le_bytes());
            rec.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            rec.extend_from_slice(&key.lin.to_le_bytes());
            rec.extend_from_slice(&bytes);
            let _ = code.write_all(&rec);
        }
        Some(mon.cache.insert(vm, key, addr, guest, sites))
    }

    /// Run generated code from block `id` until it exits. Returns the
    /// instructions it consumed.
    fn enter(&mut self, vm: &mut Vm, id: usize, left: u64) -> u64 {
        let Some(b) = self.mon.cache.block(id) else {
            return 0;
        };
        let (code, mode) = (b.code, b.key.mode);
        self.mon.cur_mode = mode;
        let ctx = &mut *self.ctx;
        ctx.load(&vm.cpu);
        ctx.budget = left as i64;
        let ram_base = vm.mem.ram_host_ptr_untracked() as u64;
        if vm.mmu.host_base() != ram_base {
            // Shadow entries' host addresses (which generated code adds
            // to the linear address) are made for another RAM mapping.
            vm.mmu.set_host_base(ram_base);
        }
        ctx.shadow = vm.mmu.active_table().as_ptr();
        ctx.exit = exit::NEXT;
        ctx.ib_table = self.mon.cache.ib_table().cast();
        ctx.vm = vm as *mut Vm;
        let mon: *mut Monitor = &mut *self.mon;
        ctx.engine = mon.cast();
        self.mon.budget_start = left as i64;
        self.mon.retired_base = vm.clock.retired;
        self.mon.stats.entries += 1;
        // SAFETY: `enter` is the stub generated by `stubs::emit` with this
        // signature; `ctx` is live and exclusively ours for the call, and
        // so are `vm` and the monitor behind the raw pointers in it, which
        // nothing else touches until the call returns. Generated code only
        // touches guest RAM through shadow entries (inside RAM) and calls
        // monitor routines with these pointers.
        unsafe {
            let f: extern "sysv64" fn(*mut JitCtx, usize) = core::mem::transmute::<
                usize,
                extern "sysv64" fn(*mut JitCtx, usize),
            >(self.stubs.enter);
            f(ctx, code);
        }
        let ctx = &mut *self.ctx;
        crate::helpers::spill_x87(ctx, vm, &mut self.mon);
        ctx.store(&mut vm.cpu);
        vm.cpu.eip = ctx.eip;
        self.mon.cache.reap();
        self.pending_chain = None;
        self.pending_ib = ctx.exit == exit::INDIRECT;
        if let Some(n) = self.mon.stats.exits.get_mut(ctx.exit as usize) {
            *n += 1;
        }
        if ctx.exit == exit::CHAIN {
            let (id, idx) = ((ctx.exit_site >> 2) as usize, (ctx.exit_site & 3) as usize);
            if let Some(b) = self.mon.cache.block(id) {
                self.pending_chain = Some((id, idx, b.serial));
            }
        }
        let consumed = (left as i64 - ctx.budget).max(0) as u64;
        vm.clock.retired = self.mon.retired_base + consumed;
        consumed
    }
}

impl Engine for Translator {
    fn name(&self) -> &'static str {
        "jit"
    }

    fn run(&mut self, vm: &mut Vm, budget: Budget) -> Exit {
        if vm.mem.has_watch_hits() {
            vm.flush_watch_hits();
        }
        if !vm.ext_frames_written.is_empty() {
            self.mon.invalidate_written(vm);
        }
        let mut left = budget.instructions;
        while left > 0 {
            let cpu = &vm.cpu;
            let mut why = if cpu.halted {
                step_why::EVENT
            } else if cpu.interrupt_shadow {
                step_why::SHADOW
            } else if cpu.eflags & (TF | RF) != 0 {
                step_why::TRAP_FLAGS
            } else if cpu.alignment_checked() {
                step_why::ALIGNMENT
            } else if event_deliverable(vm) {
                step_why::EVENT
            } else {
                step_why::NO_BLOCK
            };
            if why == step_why::NO_BLOCK {
                if let Some(id) = self.block_here(vm) {
                    let gen = vm.mem.watched_code_gen();
                    if gen != self.mon.ib_gen {
                        self.mon.cache.ib_clear();
                        self.mon.ib_gen = gen;
                        self.mon.stats.ib_clears += 1;
                    }
                    if std::mem::take(&mut self.pending_ib) {
                        let mon = &mut *self.mon;
                        let lin = mon.cache.block(id).map(|b| b.key.lin);
                        match mon.cache.ib_set_for(id) {
                            Some(s)
                                if s.ways
                                    .iter()
                                    .any(|e| Some(e.lin) == lin && e.mode != u32::MAX) =>
                            {
                                mon.stats.ib_miss_other_key += 1
                            }
                            Some(s) if s.ways.iter().any(|e| e.mode == u32::MAX) => {
                                mon.stats.ib_miss_empty += 1
                            }
                            Some(_) => mon.stats.ib_miss_conflict += 1,
                            None => {}
                        }
                        mon.cache.ib_insert(id);
                    }
                    if let Some((src, idx, serial)) = self.pending_chain.take() {
                        let limit = vm.cpu.seg(SegReg::Cs).limit;
                        let mon = &mut *self.mon;
                        mon.cache.chain(src, idx, serial, id, limit, &mut mon.stats);
                    }
                    let n = self.mon.cache.block(id).map_or(0, |b| b.guest.insns.len());
                    why = step_why::BUDGET;
                    if (n as u64) <= left || budget.overrun {
                        let used = self.enter(vm, id, left.max(n as u64));
                        left = left.saturating_sub(used);
                        if let Some(r) = self.mon.shutdown.take() {
                            return Exit::Shutdown(r);
                        }
                        if used > 0 {
                            continue;
                        }
                    }
                }
            }
            self.pending_chain = None;
            self.pending_ib = false;
            self.mon.stats.interp_steps += 1;
            self.mon.stats.interp_why[why] += 1;
            match self.interp.step(vm) {
                Step::Retired => {}
                Step::Halted => return Exit::Halted,
                Step::Shutdown(r) => return Exit::Shutdown(r),
            }
            left -= 1;
            // A device the instruction reached (MMIO) may have written a
            // code frame without flushing the watch log.
            if vm.mem.has_watch_hits() {
                vm.flush_watch_hits();
            }
            if !vm.ext_frames_written.is_empty() {
                self.mon.invalidate_written(vm);
            }
        }
        Exit::BudgetSpent
    }
}
