//! Operand access for instruction handlers: registers by iced-x86 name,
//! effective addresses (16- and 32-bit addressing, wrapped), segment checks
//! (limit, expand-down, type, null; SDM Vol. 3 5.3-5.4), memory reads and
//! writes at the current privilege, and the stack.
//!
//! Handlers use only these to reach the guest so that every access gets
//! the same checks.

use iced_x86::{Instruction, OpKind, Register};

use super::Ctx;
use crate::cpu::{attr, SegReg};
use crate::exception::Fault;
use crate::mmu::Access;

/// Map an iced-x86 segment register.
#[inline]
pub fn seg_of(r: Register) -> SegReg {
    match r {
        Register::ES => SegReg::Es,
        Register::CS => SegReg::Cs,
        Register::SS => SegReg::Ss,
        Register::FS => SegReg::Fs,
        Register::GS => SegReg::Gs,
        _ => SegReg::Ds,
    }
}

/// Mask of the low `size` bytes.
#[inline]
pub fn mask(size: usize) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

/// Sign bit of a `size`-byte value.
#[inline]
pub fn sign_bit(size: usize) -> u32 {
    1u32 << (size * 8 - 1)
}

/// Sign-extend the low `size` bytes of `v`.
#[inline]
pub fn sext(v: u32, size: usize) -> u32 {
    match size {
        1 => v as u8 as i8 as i32 as u32,
        2 => v as u16 as i16 as i32 as u32,
        _ => v,
    }
}

impl Ctx<'_> {
    // ---- registers ----------------------------------------------------

    /// Read a general-purpose or segment register, zero-extended.
    #[inline]
    pub fn reg(&self, r: Register) -> u32 {
        let n = r as u32;
        let cpu = &self.vm.cpu;
        if (Register::EAX as u32..=Register::EDI as u32).contains(&n) {
            cpu.reg32((n - Register::EAX as u32) as usize)
        } else if (Register::AX as u32..=Register::DI as u32).contains(&n) {
            cpu.reg16((n - Register::AX as u32) as usize) as u32
        } else if (Register::AL as u32..=Register::BH as u32).contains(&n) {
            cpu.reg8((n - Register::AL as u32) as usize) as u32
        } else if r.is_segment_register() {
            cpu.seg(seg_of(r)).selector as u32
        } else {
            0
        }
    }

    /// Write a general-purpose register (segment registers are loaded
    /// through `segment::load`, never here).
    #[inline]
    pub fn set_reg(&mut self, r: Register, v: u32) {
        let n = r as u32;
        let cpu = &mut self.vm.cpu;
        if (Register::EAX as u32..=Register::EDI as u32).contains(&n) {
            cpu.set_reg32((n - Register::EAX as u32) as usize, v)
        } else if (Register::AX as u32..=Register::DI as u32).contains(&n) {
            cpu.set_reg16((n - Register::AX as u32) as usize, v as u16)
        } else if (Register::AL as u32..=Register::BH as u32).contains(&n) {
            cpu.set_reg8((n - Register::AL as u32) as usize, v as u8)
        }
    }

    // ---- effective addresses -------------------------------------------

    /// Whether the memory operand uses 32-bit addressing.
    #[inline]
    pub fn addr32(&self, ins: &Instruction) -> bool {
        let b = ins.memory_base();
        let i = ins.memory_index();
        if b != Register::None {
            b.is_gpr32()
        } else if i != Register::None {
            i.is_gpr32()
        } else {
            ins.memory_displ_size() == 4
        }
    }

    /// Effective address (offset within the segment) of the memory operand.
    #[inline]
    pub fn ea(&self, ins: &Instruction) -> u32 {
        let mut ea = ins.memory_displacement32();
        let b = ins.memory_base();
        if b != Register::None {
            ea = ea.wrapping_add(self.reg(b));
        }
        let i = ins.memory_index();
        if i != Register::None {
            ea = ea.wrapping_add(self.reg(i).wrapping_mul(ins.memory_index_scale()));
        }
        if self.addr32(ins) {
            ea
        } else {
            ea & 0xFFFF
        }
    }

    /// Segment of the memory operand (prefix or default).
    #[inline]
    pub fn mem_seg(&self, ins: &Instruction) -> SegReg {
        seg_of(ins.memory_segment())
    }

    // ---- segment checks -----------------------------------------------

    /// Check an access of `size` bytes at `seg:off` and return its linear
    /// address (SDM Vol. 3 5.3 limit checking, 5.4 type checking). Faults
    /// on SS are #SS(0), on the others #GP(0).
    #[inline]
    pub fn linear(&self, seg: SegReg, off: u32, size: usize, write: bool) -> Result<u32, Fault> {
        let cpu = &self.vm.cpu;
        let s = cpu.seg(seg);
        let fault = || {
            if seg == SegReg::Ss {
                Fault::ss(0)
            } else {
                Fault::gp(0)
            }
        };
        let last = off as u64 + size as u64 - 1;
        if cpu.protected() && !cpu.v86() {
            if s.attr & attr::UNUSABLE != 0 {
                return Err(fault());
            }
            if s.attr & attr::CODE != 0 {
                // Code: never writable; readable only with R.
                if write || s.attr & attr::RW == 0 {
                    return Err(fault());
                }
            } else if write && s.attr & attr::RW == 0 {
                return Err(fault());
            }
            if s.attr & (attr::CODE | attr::DC) == attr::DC {
                // Expand-down data: valid offsets are (limit, top].
                let top: u64 = if s.big() { 0xFFFF_FFFF } else { 0xFFFF };
                if (off as u64) <= s.limit as u64 || last > top {
                    return Err(fault());
                }
                return Ok(s.base.wrapping_add(off));
            }
        }
        if last > s.limit as u64 {
            return Err(fault());
        }
        Ok(s.base.wrapping_add(off))
    }

    /// The access kind for a data access at the current privilege.
    #[inline]
    pub fn data_access(&self, write: bool) -> Access {
        let a = if write { Access::WRITE } else { Access::READ };
        a.at_cpl(self.vm.cpu.cpl())
    }

    /// Alignment check (SDM Vol. 3 6.15, #AC): CR0.AM, EFLAGS.AC, CPL 3.
    #[inline]
    fn align_check(&self, lin: u32, size: usize) -> Result<(), Fault> {
        if size > 1 && lin as usize & (size - 1) != 0 && self.vm.cpu.alignment_checked() {
            return Err(Fault::ac());
        }
        Ok(())
    }

    // ---- memory -------------------------------------------------------

    /// Read `size` (1, 2, 4) bytes at `seg:off`.
    #[inline]
    pub fn read_mem(&mut self, seg: SegReg, off: u32, size: usize) -> Result<u32, Fault> {
        let lin = self.linear(seg, off, size, false)?;
        self.align_check(lin, size)?;
        let acc = self.data_access(false);
        Ok(self.vm.read_lin(lin, size, acc)? as u32)
    }

    /// Read 8 bytes at `seg:off` (CMPXCHG8B, far pointers, descriptors).
    pub fn read_mem64(&mut self, seg: SegReg, off: u32) -> Result<u64, Fault> {
        let lin = self.linear(seg, off, 8, false)?;
        self.align_check(lin, 8)?;
        let acc = self.data_access(false);
        self.vm.read_lin(lin, 8, acc)
    }

    /// Write `size` bytes at `seg:off`.
    #[inline]
    pub fn write_mem(&mut self, seg: SegReg, off: u32, size: usize, v: u32) -> Result<(), Fault> {
        let lin = self.linear(seg, off, size, true)?;
        self.align_check(lin, size)?;
        let acc = self.data_access(true);
        self.vm.write_lin(lin, size, v as u64, acc)
    }

    pub fn write_mem64(&mut self, seg: SegReg, off: u32, v: u64) -> Result<(), Fault> {
        let lin = self.linear(seg, off, 8, true)?;
        self.align_check(lin, 8)?;
        let acc = self.data_access(true);
        self.vm.write_lin(lin, 8, v, acc)
    }

    /// Check that `seg:off` can be written (segment and page) without
    /// writing, so a read-modify-write faults as a write before it reads.
    pub fn check_write(&mut self, seg: SegReg, off: u32, size: usize) -> Result<(), Fault> {
        let lin = self.linear(seg, off, size, true)?;
        self.align_check(lin, size)?;
        let acc = self.data_access(true);
        self.vm.translate(lin, acc)?;
        if (lin & 0xFFF) as usize + size > 0x1000 {
            // The second page is faulted at its first byte (that is the
            // address the CPU reports in CR2), not at the access's end.
            self.vm.translate((lin | 0xFFF).wrapping_add(1), acc)?;
        }
        Ok(())
    }

    // ---- operands -----------------------------------------------------

    /// Size in bytes of operand `n`.
    #[inline]
    pub fn op_size(&self, ins: &Instruction, n: u32) -> usize {
        match ins.op_kind(n) {
            OpKind::Register => ins.op_register(n).size(),
            OpKind::Memory => ins.memory_size().size(),
            OpKind::Immediate8 => 1,
            OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
            _ => 4,
        }
    }

    /// Read operand `n` (register, memory or immediate), zero-extended
    /// from its size (immediates sign-extended as encoded, then masked).
    #[inline]
    pub fn read_op(&mut self, ins: &Instruction, n: u32) -> Result<u32, Fault> {
        match ins.op_kind(n) {
            OpKind::Register => Ok(self.reg(ins.op_register(n))),
            OpKind::Memory => {
                let seg = self.mem_seg(ins);
                let off = self.ea(ins);
                self.read_mem(seg, off, ins.memory_size().size())
            }
            OpKind::Immediate8 => Ok(ins.immediate8() as u32),
            OpKind::Immediate16 => Ok(ins.immediate16() as u32),
            OpKind::Immediate8to16 => Ok(ins.immediate8to16() as u16 as u32),
            OpKind::Immediate8to32 => Ok(ins.immediate8to32() as u32),
            OpKind::Immediate32 => Ok(ins.immediate32()),
            OpKind::Immediate8_2nd => Ok(ins.immediate8_2nd() as u32),
            _ => Ok(ins.immediate(n) as u32),
        }
    }

    /// Read the destination operand 0 of a read-modify-write instruction:
    /// a memory destination is checked for writing first.
    #[inline]
    pub fn read_rmw(&mut self, ins: &Instruction) -> Result<u32, Fault> {
        if ins.op0_kind() == OpKind::Memory {
            let seg = self.mem_seg(ins);
            let off = self.ea(ins);
            let size = ins.memory_size().size();
            self.check_write(seg, off, size)?;
            self.read_mem(seg, off, size)
        } else {
            self.read_op(ins, 0)
        }
    }

    /// Write operand `n` (register or memory) with the low bytes of `v`.
    #[inline]
    pub fn write_op(&mut self, ins: &Instruction, n: u32, v: u32) -> Result<(), Fault> {
        match ins.op_kind(n) {
            OpKind::Register => {
                self.set_reg(ins.op_register(n), v);
                Ok(())
            }
            OpKind::Memory => {
                let seg = self.mem_seg(ins);
                let off = self.ea(ins);
                self.write_mem(seg, off, ins.memory_size().size(), v)
            }
            _ => Err(Fault::ud()),
        }
    }

    // ---- stack --------------------------------------------------------

    /// Push `size` bytes; ESP/SP changes only if the write succeeds.
    #[inline]
    pub fn push(&mut self, v: u32, size: usize) -> Result<(), Fault> {
        let sp = self.vm.cpu.sp().wrapping_sub(size as u32);
        let sp = if self.vm.cpu.stack32() {
            sp
        } else {
            sp & 0xFFFF
        };
        self.write_mem(SegReg::Ss, sp, size, v)?;
        self.vm.cpu.set_sp(sp);
        Ok(())
    }

    /// Pop `size` bytes; ESP/SP changes only if the read succeeds.
    #[inline]
    pub fn pop(&mut self, size: usize) -> Result<u32, Fault> {
        let v = self.peek(0, size)?;
        let sp = self.vm.cpu.sp().wrapping_add(size as u32);
        self.vm.cpu.set_sp(sp);
        Ok(v)
    }

    /// Read `size` bytes at SS:[SP + `delta`] without popping.
    #[inline]
    pub fn peek(&mut self, delta: u32, size: usize) -> Result<u32, Fault> {
        let sp = self.vm.cpu.sp().wrapping_add(delta);
        let sp = if self.vm.cpu.stack32() {
            sp
        } else {
            sp & 0xFFFF
        };
        self.read_mem(SegReg::Ss, sp, size)
    }

    /// Operand size in bytes of the instruction (2 or 4), from the code
    /// size and the 0x66 prefix, for instructions whose operands do not
    /// say it (PUSHF, IRET, far transfers, string ops).
    #[inline]
    pub fn osize(&self, ins: &Instruction) -> usize {
        let code32 = self.vm.cpu.code32();
        if code32 != ins.has_op_size_prefix() {
            4
        } else {
            2
        }
    }
}

trait Op {
    fn has_op_size_prefix(&self) -> bool;
}
impl Op for Instruction {
    /// Whether a 0x66 prefix was present: iced reports it through the
    /// operand sizes of the `Code`, so derive it from the code's op size.
    fn has_op_size_prefix(&self) -> bool {
        let cs32 = matches!(self.code_size(), iced_x86::CodeSize::Code32);
        let ops32 = match self.code().op_code().operand_size() {
            32 => true,
            16 => false,
            _ => cs32,
        };
        ops32 != cs32
    }
}
