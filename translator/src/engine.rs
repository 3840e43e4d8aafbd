//! The translator as an `Engine`: the dispatcher loop that finds or
//! translates the block at CS:EIP and enters it, and the `Monitor` state
//! that monitor routines reach while generated code runs.
//!
//! The dispatcher hands an instruction to the interpreter whenever the
//! block path does not apply: an event to deliver, a halted CPU, TF or RF
//! set, an interrupt shadow, code outside RAM or an instruction crossing
//! a page, and the last instructions of a budget smaller than the next
//! block.

use std::collections::{BTreeMap, HashMap};

use umbra_core::cpu::{SegReg, RF, TF};
use umbra_core::engine::{Budget, Engine, Exit, ShutdownReason};
use umbra_core::interp::{event_deliverable, Interpreter, Step, Table};
use umbra_core::mem::PAGE_SHIFT;
use umbra_core::mmu::Access;
use umbra_core::vm::Vm;

use crate::block::{self, BlockKey, GuestBlock};
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
    /// Full flushes of the code memory when it filled up.
    pub flushes: u64,
    /// Calls from generated code into monitor routines.
    pub monitor_calls: u64,
    /// Exceptions raised by instructions run in monitor routines.
    pub exceptions: u64,
    /// Instructions the dispatcher gave to the interpreter.
    pub interp_steps: u64,
    /// Entries into generated code.
    pub entries: u64,
    /// Decoded instructions with no handler (raised #UD), by code.
    pub unimplemented: BTreeMap<String, u64>,
}

/// One translated block.
struct Block {
    key: BlockKey,
    /// Host address of its code.
    code: usize,
    /// `GuestMemory::code_gen` when its bytes last matched memory.
    gen: u64,
    guest: GuestBlock,
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
    blocks: Vec<Option<Block>>,
    free: Vec<usize>,
    map: HashMap<BlockKey, usize>,
    /// RAM frame -> blocks decoded from it.
    by_frame: HashMap<u32, Vec<usize>>,
    /// Invalidated blocks, kept until generated code has returned (one of
    /// them may be running, and its code refers to its `InsnMeta`s).
    dead: Vec<Block>,
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
        let Some(ids) = self.by_frame.remove(&(frame as u32)) else {
            return;
        };
        for id in ids {
            if let Some(b) = self.blocks[id].take() {
                self.map.remove(&b.key);
                self.free.push(id);
                self.stats.invalidations += 1;
                // The code stays in memory until the next flush: it may be
                // the block running now.
                self.dead.push(b);
            }
        }
        vm.mmu.unwatch_frame(&mut vm.mem, frame);
    }
}

pub struct Translator {
    mon: Box<Monitor>,
    ctx: Box<JitCtx>,
    interp: Interpreter,
    table: Table,
    code: ExecMem,
    stubs: Stubs,
    /// Bytes at the bottom of `code` that hold the stubs.
    stub_bytes: usize,
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
                stats: TranslatorStats::default(),
                rep_batch: 256,
                budget_start: 0,
                retired_base: 0,
                shutdown: None,
                blocks: Vec::new(),
                free: Vec::new(),
                map: HashMap::new(),
                by_frame: HashMap::new(),
                dead: Vec::new(),
            }),
            ctx: Box::new(JitCtx::new()),
            interp: Interpreter::new(),
            table: Table::build(),
            code,
            stubs,
            stub_bytes,
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
        (self.code.used(), self.code.size())
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
        };
        let mon = &mut *self.mon;
        mon.stats.lookups += 1;
        if let Some(&id) = mon.map.get(&key) {
            let gen = vm.mem.code_gen;
            let b = mon.blocks[id].as_mut().expect("mapped blocks are live");
            if b.gen == gen {
                mon.stats.hits += 1;
                return Some(id);
            }
            let n = b.guest.bytes.len();
            if vm.mem.ram_slice(phys, n) == Some(&b.guest.bytes[..]) {
                b.gen = gen;
                mon.stats.hits += 1;
                return Some(id);
            }
            // Changed behind the watch (another engine, a device): drop
            // every block of the frame.
            let frame = (phys >> PAGE_SHIFT) as u64;
            mon.invalidate_frame(vm, frame);
        }
        self.translate(vm, key, cs.limit)
    }

    #[cold]
    fn translate(&mut self, vm: &mut Vm, key: BlockKey, cs_limit: u32) -> Option<usize> {
        let phys = key.phys as usize;
        let page_end = (phys | 0xFFF) + 1;
        let code = vm.mem.ram_slice(phys, page_end - phys)?;
        let eip = key.lin.wrapping_sub(key.cs_base);
        let guest = block::decode(
            &self.table,
            code,
            eip,
            key.lin,
            key.mode & block::mode::CODE32 != 0,
            cs_limit,
        )?;
        let mut addr = self.code.next_addr();
        let mut bytes = codegen::emit_block(&guest, key, addr, &self.stubs);
        if self.code.alloc(bytes.len()).is_none() {
            self.flush(vm);
            addr = self.code.next_addr();
            bytes = codegen::emit_block(&guest, key, addr, &self.stubs);
            self.code.alloc(bytes.len())?;
        }
        self.code.write(addr, &bytes);
        let frame = key.phys >> PAGE_SHIFT;
        vm.mmu.watch_frame(&mut vm.mem, frame as u64);
        vm.mem.mark_code_frame(frame as usize);
        let mon = &mut *self.mon;
        mon.stats.translations += 1;
        mon.stats.insns_translated += guest.insns.len() as u64;
        mon.stats.host_bytes += bytes.len() as u64;
        let b = Block {
            key,
            code: addr,
            gen: vm.mem.code_gen,
            guest,
        };
        let id = match mon.free.pop() {
            Some(id) => {
                mon.blocks[id] = Some(b);
                id
            }
            None => {
                mon.blocks.push(Some(b));
                mon.blocks.len() - 1
            }
        };
        mon.map.insert(key, id);
        mon.by_frame.entry(frame).or_default().push(id);
        Some(id)
    }

    /// Drop every block and reuse the code memory (it filled up).
    fn flush(&mut self, vm: &mut Vm) {
        let mon = &mut *self.mon;
        mon.stats.flushes += 1;
        for (&f, _) in mon.by_frame.iter() {
            vm.mmu.unwatch_frame(&mut vm.mem, f as u64);
        }
        mon.by_frame.clear();
        mon.map.clear();
        mon.blocks.clear();
        mon.free.clear();
        self.code.reset_to(self.stub_bytes);
    }

    /// Run generated code from block `id` until it exits. Returns the
    /// instructions it consumed.
    fn enter(&mut self, vm: &mut Vm, id: usize, left: u64) -> u64 {
        let code = self.mon.blocks[id].as_ref().expect("live block").code;
        let ctx = &mut *self.ctx;
        ctx.load(&vm.cpu);
        ctx.budget = left as i64;
        ctx.ram_base = vm.mem.ram_host_ptr_untracked();
        ctx.shadow = vm.mmu.active_table().as_ptr();
        ctx.exit = exit::NEXT;
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
        let ctx = &*self.ctx;
        ctx.store(&mut vm.cpu);
        vm.cpu.eip = ctx.eip;
        self.mon.dead.clear();
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
            let blocked = cpu.halted
                || cpu.interrupt_shadow
                || cpu.eflags & (TF | RF) != 0
                || event_deliverable(vm);
            if !blocked {
                if let Some(id) = self.block_here(vm) {
                    let n = self.mon.blocks[id]
                        .as_ref()
                        .map_or(0, |b| b.guest.insns.len());
                    if (n as u64) <= left {
                        let used = self.enter(vm, id, left);
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
            self.mon.stats.interp_steps += 1;
            match self.interp.step(vm) {
                Step::Retired => {}
                Step::Halted => return Exit::Halted,
                Step::Shutdown(r) => return Exit::Shutdown(r),
            }
            left -= 1;
            if !vm.ext_frames_written.is_empty() {
                self.mon.invalidate_written(vm);
            }
        }
        Exit::BudgetSpent
    }
}
