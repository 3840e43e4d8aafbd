//! Instruction fetch and decode: reads the bytes at CS:EIP through the MMU
//! (instruction-fetch accesses, CS limit checked) and decodes them with
//! iced-x86. A second page is touched only when the instruction really
//! continues onto it, so a fault there is as precise as on hardware.
//!
//! Decoding dominates an interpreter's time, so decoded instructions are
//! cached in a small direct-mapped table. An entry is used only if the
//! bytes now in guest memory equal the bytes it was decoded from, so the
//! cache needs no invalidation and self-modifying code is always exact.

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};

use crate::cpu::SegReg;
use crate::exception::Fault;
use crate::mem::PAGE_SIZE;
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

/// Counters of the decode cache.
#[derive(Clone, Copy, Debug, Default)]
pub struct FetchStats {
    pub hits: u64,
    pub misses: u64,
}

pub struct Fetcher {
    buf: [u8; MAX_INSN_LEN],
    cache: Vec<Entry>,
    pub stats: FetchStats,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

#[inline]
fn slot(lin: u32) -> usize {
    ((lin ^ (lin >> 12)) as usize) & (CACHE_ENTRIES - 1)
}

impl Fetcher {
    pub fn new() -> Self {
        let empty = Entry {
            lin: u32::MAX,
            eip: 0,
            bitness: 0,
            len: 0,
            bytes: [0; MAX_INSN_LEN],
            ins: Instruction::default(),
        };
        Fetcher {
            buf: [0; MAX_INSN_LEN],
            cache: vec![empty; CACHE_ENTRIES],
            stats: FetchStats::default(),
        }
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
