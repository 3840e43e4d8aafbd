//! Instruction fetch and decode: reads the bytes at CS:EIP through the MMU
//! (instruction-fetch accesses, CS limit checked) and decodes them with
//! iced-x86. A second page is touched only when the instruction really
//! continues onto it, so a fault there is as precise as on hardware.

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};

use crate::cpu::SegReg;
use crate::exception::Fault;
use crate::mem::PAGE_SIZE;
use crate::mmu::Access;
use crate::vm::Vm;

/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

pub struct Fetcher {
    buf: [u8; MAX_INSN_LEN],
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Fetcher {
    pub fn new() -> Self {
        Fetcher {
            buf: [0; MAX_INSN_LEN],
        }
    }

    /// Decode the instruction at CS:EIP. An undecodable byte sequence comes
    /// back as `Code::INVALID` (the caller raises #UD).
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
