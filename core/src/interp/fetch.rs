//! Instruction fetch and decode: reads the bytes at CS:EIP through the MMU
//! (instruction-fetch accesses, CS limit checked) and decodes them with
//! iced-x86. A second page is touched only when the instruction really
//! continues onto it, so a fault there is as precise as on hardware.
//!
//! Decoding dominates an interpreter's time, so decoded instructions are
//! cached in a small direct-mapped table. An entry is used only if the
//! bytes now in guest memory equal the bytes it was decoded from, so the
//! cache needs no invalidation and self-modifying code is always exact.
//!
//! The fast path caches whole blocks: a straight-line run of decoded
//! instructions with their handlers resolved, inside one page and the CS
//! limit, keyed by linear EIP, EIP and code size, handlers specialised by
//! `fast::select`. A block is validated once at entry: shadow fetch lookup
//! (permissions, mapping), then its bytes are compared with memory unless
//! no code frame was written since the last check (`GuestMemory::code_gen`
//! unchanged and the same RAM offset). While it runs, `GuestMemory`
//! watches its frame so that a store into it ends the block before the
//! next instruction (`GuestMemory::watch_code_frame`). Instructions that
//! may change what fetching depends on end their block (`ends_block`).

use iced_x86::{Decoder, DecoderError, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind};

use super::{Handler, Table};
use crate::cpu::SegReg;
use crate::exception::Fault;
use crate::mem::{PAGE_SHIFT, PAGE_SIZE};
use crate::mmu::Access;
use crate::vm::Vm;

/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// Entries in the decoded-instruction cache (a power of two).
const CACHE_ENTRIES: usize = 4096;

#[derive(Clone, Copy)]
struct Entry {
    /// Linear address of the instruction; `u32::MAX` with len 0 = empty.
    lin: u32,
    eip: u32,
    bitness: u32,
    len: u8,
    bytes: [u8; MAX_INSN_LEN],
    ins: Instruction,
}

/// Blocks in the block cache (a power of two).
const BLOCK_ENTRIES: usize = 16384;
/// Most instructions in one block.
const MAX_BLOCK_INSNS: usize = 64;

/// One decoded instruction of a block, its handler already looked up.
pub struct Decoded {
    pub ins: Instruction,
    /// `None`: no handler (or undecodable): #UD.
    pub handler: Option<Handler>,
    /// EIP of the next instruction (wrapped to 16 bits in 16-bit code).
    pub next_eip: u32,
    /// A direct near JMP/Jcc back to the start of its own block (the last
    /// instruction of a tight loop).
    pub loops: bool,
}

/// A straight-line run of instructions inside one page.
struct Block {
    /// Linear address of the first byte; `u32::MAX` with no bytes = empty.
    lin: u32,
    eip: u32,
    bitness: u32,
    /// RAM offset of the first byte when last validated.
    off: usize,
    /// `GuestMemory::code_gen` when last validated: while it is
    /// unchanged no code frame was written and the bytes need no compare.
    gen: u64,
    /// The bytes the block was decoded from.
    bytes: Vec<u8>,
    insns: Vec<Decoded>,
}

/// Counters of the decode caches.
#[derive(Clone, Copy, Debug, Default)]
pub struct FetchStats {
    pub hits: u64,
    pub misses: u64,
    pub block_hits: u64,
    pub block_misses: u64,
}

pub struct Fetcher {
    buf: [u8; MAX_INSN_LEN],
    cache: Vec<Entry>,
    blocks: Vec<Block>,
    pub stats: FetchStats,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        let tables = (
            std::mem::take(&mut self.cache),
            std::mem::take(&mut self.blocks),
        );
        // `try_with`: the thread's spares may be gone already at its exit.
        let _ = SPARE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                if s.len() < SPARE_MAX {
                    s.push(tables);
                }
            }
        });
    }
}

#[inline]
fn slot(lin: u32) -> usize {
    ((lin ^ (lin >> 12)) as usize) & (CACHE_ENTRIES - 1)
}

/// Tables of dropped fetchers, kept for the next one made on the same
/// thread: a differential campaign makes two engines per program, and
/// faulting in and dropping fresh tables took a third of its time.
type SpareTables = (Vec<Entry>, Vec<Block>);
thread_local! {
    static SPARE: std::cell::RefCell<Vec<SpareTables>> = const { std::cell::RefCell::new(Vec::new()) };
}
/// Most spare table sets kept per thread.
const SPARE_MAX: usize = 4;

fn empty_entry() -> Entry {
    Entry {
        lin: u32::MAX,
        eip: 0,
        bitness: 0,
        len: 0,
        bytes: [0; MAX_INSN_LEN],
        ins: Instruction::default(),
    }
}

impl Block {
    fn empty() -> Self {
        Block {
            lin: u32::MAX,
            eip: 0,
            bitness: 0,
            off: usize::MAX,
            gen: 0,
            bytes: Vec::new(),
            insns: Vec::new(),
        }
    }

    /// Make it `empty()` again, keeping its allocations.
    fn clear(&mut self) {
        self.lin = u32::MAX;
        self.eip = 0;
        self.bitness = 0;
        self.off = usize::MAX;
        self.gen = 0;
        self.bytes.clear();
        self.insns.clear();
    }
}

impl Fetcher {
    pub fn new() -> Self {
        let (cache, blocks) = match SPARE.with(|s| s.borrow_mut().pop()) {
            Some((mut cache, mut blocks)) => {
                cache.fill(empty_entry());
                blocks.iter_mut().for_each(Block::clear);
                (cache, blocks)
            }
            None => (
                vec![empty_entry(); CACHE_ENTRIES],
                (0..BLOCK_ENTRIES).map(|_| Block::empty()).collect(),
            ),
        };
        Fetcher {
            buf: [0; MAX_INSN_LEN],
            cache,
            blocks,
            stats: FetchStats::default(),
        }
    }

    /// The decoded instructions of the block starting at CS:EIP, validated
    /// against guest memory now, with `vm.mem` watching its frame. `None`
    /// when the fast path does not apply (no RAM shadow entry for the
    /// fetch, the first instruction crosses the page or the CS limit):
    /// the caller then steps one instruction through `fetch`, which takes
    /// the architectural faults.
    #[inline]
    pub fn block(&mut self, vm: &mut Vm, table: &Table) -> Option<&[Decoded]> {
        let cpu = &vm.cpu;
        let cs = cpu.seg(SegReg::Cs);
        let eip = cpu.eip;
        let bitness = if cpu.code32() { 32 } else { 16 };
        let limit = cs.limit;
        let lin = cs.base.wrapping_add(eip);
        let acc = Access::FETCH.at_cpl(cpu.cpl());
        let off = vm.mmu.lookup_ram(lin, acc)?;
        let slot = block_slot(lin);
        let b = &mut self.blocks[slot];
        let len = b.bytes.len();
        let gen = vm.mem.code_gen;
        let hit = b.lin == lin
            && b.eip == eip
            && b.bitness == bitness
            && len != 0
            && eip as u64 + len as u64 - 1 <= limit as u64
            && ((b.gen == gen && b.off == off)
                || (vm.mem.ram_slice(off, len) == Some(&b.bytes[..]) && {
                    b.gen = gen;
                    b.off = off;
                    true
                }));
        if hit {
            self.stats.block_hits += 1;
        } else {
            self.stats.block_misses += 1;
            if !self.build(vm, table, slot, off, lin, eip, bitness, limit) {
                return None;
            }
        }
        vm.mem.watch_code_frame(off >> PAGE_SHIFT);
        Some(&self.blocks[slot].insns)
    }

    /// Decode the block at `lin` (RAM offset `off`) into `slot`. False if
    /// not even its first instruction fits in the page and the CS limit.
    #[allow(clippy::too_many_arguments)]
    #[cold]
    fn build(
        &mut self,
        vm: &mut Vm,
        table: &Table,
        slot: usize,
        off: usize,
        lin: u32,
        eip: u32,
        bitness: u32,
        limit: u32,
    ) -> bool {
        let to_page = (PAGE_SIZE - (lin as u64 & (PAGE_SIZE - 1))) as usize;
        let to_limit = (limit as u64 + 1).saturating_sub(eip as u64) as usize;
        let avail = to_page.min(to_limit).min(MAX_BLOCK_INSNS * MAX_INSN_LEN);
        let Some(bytes) = vm.mem.ram_slice(off, avail) else {
            return false;
        };
        let b = &mut self.blocks[slot];
        b.lin = u32::MAX;
        b.bytes.clear();
        b.insns.clear();
        let mut d = Decoder::with_ip(bitness, bytes, eip as u64, DecoderOptions::NONE);
        let mut used = 0;
        while b.insns.len() < MAX_BLOCK_INSNS {
            let ins = d.decode();
            if d.last_error() != DecoderError::None || ins.code() == iced_x86::Code::INVALID {
                // Runs past the page or the limit, or is invalid: the slow
                // path fetches it and raises what the architecture says.
                break;
            }
            used += ins.len();
            let next_ip = ins.next_ip32();
            let wraps = bitness == 16 && next_ip > 0xFFFF;
            let handler = super::fast::select(&ins, table.lookup(&ins));
            let last = handler.is_none() || wraps || ends_block(&ins);
            let loops = matches!(
                ins.flow_control(),
                FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch
            ) && matches!(ins.op0_kind(), OpKind::NearBranch16 | OpKind::NearBranch32)
                && ins.near_branch_target() == eip as u64;
            b.insns.push(Decoded {
                ins,
                handler,
                loops,
                next_eip: if bitness == 16 {
                    next_ip & 0xFFFF
                } else {
                    next_ip
                },
            });
            if last {
                break;
            }
        }
        if b.insns.is_empty() {
            return false;
        }
        b.bytes.extend_from_slice(&bytes[..used]);
        b.lin = lin;
        b.eip = eip;
        b.bitness = bitness;
        b.off = off;
        vm.mem.mark_code_frame(off >> PAGE_SHIFT);
        b.gen = vm.mem.code_gen;
        true
    }

    /// Decode the instruction at CS:EIP. An undecodable byte sequence comes
    /// back as `Code::INVALID` (the caller raises #UD).
    #[inline]
    pub fn fetch(&mut self, vm: &mut Vm) -> Result<Instruction, Fault> {
        let cpu = &vm.cpu;
        let cs = *cpu.seg(SegReg::Cs);
        let eip = cpu.eip;
        let bitness = if cpu.code32() { 32 } else { 16 };
        let acc = Access::FETCH.at_cpl(cpu.cpl());
        // Bytes allowed by the CS limit (SDM Vol. 3 5.3).
        let by_limit =
            ((cs.limit as u64 + 1).saturating_sub(eip as u64) as usize).min(MAX_INSN_LEN);
        if by_limit == 0 {
            return Err(Fault::gp(0));
        }
        let lin = cs.base.wrapping_add(eip);
        // Cache hit: same place, same mode, same bytes in memory now, and
        // the whole instruction inside its page and the CS limit.
        let e = &self.cache[slot(lin)];
        let len = e.len as usize;
        if e.lin == lin
            && e.eip == eip
            && e.bitness == bitness
            && len <= by_limit
            && (lin as u64 & (PAGE_SIZE - 1)) + len as u64 <= PAGE_SIZE
        {
            if let Some(off) = vm.mmu.lookup_ram(lin, acc) {
                if vm.mem.ram_slice(off, len) == Some(&e.bytes[..len]) {
                    self.stats.hits += 1;
                    return Ok(e.ins);
                }
            }
        }
        self.stats.misses += 1;
        let ins = self.fetch_slow(vm, lin, eip, bitness, by_limit, acc)?;
        let len = ins.len();
        if (lin as u64 & (PAGE_SIZE - 1)) + len as u64 <= PAGE_SIZE && len > 0 {
            let e = &mut self.cache[slot(lin)];
            e.lin = lin;
            e.eip = eip;
            e.bitness = bitness;
            e.len = len as u8;
            e.bytes[..len].copy_from_slice(&self.buf[..len]);
            e.ins = ins;
        }
        Ok(ins)
    }

    fn fetch_slow(
        &mut self,
        vm: &mut Vm,
        lin: u32,
        eip: u32,
        bitness: u32,
        by_limit: usize,
        acc: Access,
    ) -> Result<Instruction, Fault> {
        let first = ((PAGE_SIZE - (lin as u64 & (PAGE_SIZE - 1))) as usize).min(by_limit);
        vm.read_lin_bytes(lin, &mut self.buf[..first], acc)?;
        let ins = decode(bitness, &self.buf[..first], eip);
        if ins.code() != iced_x86::Code::INVALID || ins.len() != 0 || first == by_limit {
            return finish(ins, first, by_limit);
        }
        // The instruction runs onto the next page: fetch the rest.
        vm.read_lin_bytes(
            lin.wrapping_add(first as u32),
            &mut self.buf[first..by_limit],
            acc,
        )?;
        let ins = decode(bitness, &self.buf[..by_limit], eip);
        finish(ins, by_limit, by_limit)
    }
}

#[inline]
fn block_slot(lin: u32) -> usize {
    ((lin ^ (lin >> 11)) as usize) & (BLOCK_ENTRIES - 1)
}

/// Whether a block must end after `ins`: control transfers, and any
/// instruction that may change what the next fetch depends on (CS, CPL,
/// CR0/CR3/CR4 and paging, EFLAGS.TF, the interrupt shadow, A20 and
/// devices through I/O) or that stops the CPU. The run loop re-checks
/// events and re-validates the next block after it.
pub fn ends_block(ins: &Instruction) -> bool {
    if ins.flow_control() != FlowControl::Next {
        return true;
    }
    if ins.op0_kind() == OpKind::Register {
        let r = ins.op0_register();
        if r.is_segment_register() || r.is_cr() || r.is_dr() || r.is_tr() {
            return true;
        }
    }
    matches!(
        ins.mnemonic(),
        Mnemonic::Hlt
            | Mnemonic::Sti
            | Mnemonic::Cli
            | Mnemonic::Popf
            | Mnemonic::Popfd
            | Mnemonic::Popfq
            | Mnemonic::Lmsw
            | Mnemonic::Clts
            | Mnemonic::Invlpg
            | Mnemonic::Invd
            | Mnemonic::Wbinvd
            | Mnemonic::Wrmsr
            | Mnemonic::Rdmsr
            | Mnemonic::Lgdt
            | Mnemonic::Lidt
            | Mnemonic::Lldt
            | Mnemonic::Ltr
            | Mnemonic::Lss
            | Mnemonic::Lds
            | Mnemonic::Les
            | Mnemonic::Lfs
            | Mnemonic::Lgs
            | Mnemonic::Rsm
            | Mnemonic::In
            | Mnemonic::Out
            | Mnemonic::Insb
            | Mnemonic::Insw
            | Mnemonic::Insd
            | Mnemonic::Outsb
            | Mnemonic::Outsw
            | Mnemonic::Outsd
            | Mnemonic::Monitor
            | Mnemonic::Mwait
            | Mnemonic::Xsetbv
            | Mnemonic::Sysenter
            | Mnemonic::Sysexit
            | Mnemonic::Syscall
            | Mnemonic::Sysret
            | Mnemonic::Iret
            | Mnemonic::Iretd
            | Mnemonic::Int
            | Mnemonic::Int1
            | Mnemonic::Int3
            | Mnemonic::Into
            | Mnemonic::Ud0
            | Mnemonic::Ud1
            | Mnemonic::Ud2
    )
}

fn decode(bitness: u32, bytes: &[u8], eip: u32) -> Instruction {
    let mut d = Decoder::with_ip(bitness, bytes, eip as u64, DecoderOptions::NONE);
    let ins = d.decode();
    if d.last_error() == DecoderError::NoMoreBytes {
        // Signal "needs more bytes" as INVALID with length 0.
        let mut i = Instruction::default();
        i.set_len(0);
        return i;
    }
    ins
}

fn finish(ins: Instruction, have: usize, by_limit: usize) -> Result<Instruction, Fault> {
    if ins.code() == iced_x86::Code::INVALID && ins.len() == 0 {
        // Ran out of bytes: at the CS limit that is #GP(0); at 15 bytes
        // the instruction is too long, which is #GP(0) too (SDM Vol. 2
        // 2.3.11).
        let _ = (have, by_limit);
        return Err(Fault::gp(0));
    }
    Ok(ins)
}
