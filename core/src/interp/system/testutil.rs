//! Test scaffolding shared by the system, I/O and x87 tests: machines in
//! each CPU mode and a one-instruction runner that returns the handler's
//! `Result` (so a test sees the exact fault, independent of delivery).

use iced_x86::code_asm::CodeAssembler;
use iced_x86::IcedError;

use crate::cpu::{attr, cr0, flags, CpuState, SegReg, Segment};
use crate::exception::Fault;
use crate::interp::{fetch::Fetcher, Ctx, Table};
use crate::mem::GuestMemory;
use crate::vm::Vm;

/// Where test code is placed (CS base 0).
pub const CODE: u32 = 0x1000;

fn machine() -> Vm {
    let mut vm = Vm::new(GuestMemory::new(1 << 20).expect("guest memory"));
    vm.cpu = CpuState::reset();
    vm.cpu.eip = CODE;
    vm
}

fn flat(selector: u16, code: bool, dpl: u32) -> Segment {
    let ty = if code {
        attr::CODE | attr::RW
    } else {
        attr::RW
    };
    Segment {
        selector,
        base: 0,
        limit: 0xFFFF_FFFF,
        attr: attr::P | attr::S | ty | attr::ACCESSED | attr::DB | attr::G | dpl << attr::DPL_SHIFT,
    }
}

/// Real mode, all segments 0.
pub fn real() -> Vm {
    let mut vm = machine();
    let mut cs = Segment::real(0);
    cs.attr |= attr::CODE;
    vm.cpu.seg = [Segment::real(0); 6];
    vm.cpu.seg[SegReg::Cs as usize] = cs;
    vm
}

/// Flat 32-bit protected mode at CPL 0 (CS 0x08, data 0x10), no paging.
pub fn flat0() -> Vm {
    let mut vm = machine();
    vm.cpu.cr0 = cr0::PE | cr0::ET;
    vm.cpu.seg = [flat(0x10, false, 0); 6];
    vm.cpu.seg[SegReg::Cs as usize] = flat(0x08, true, 0);
    vm
}

/// Flat 32-bit protected mode at CPL 3 (CS 0x1B, data 0x23), IOPL 0.
pub fn ring3() -> Vm {
    let mut vm = flat0();
    vm.cpu.seg = [flat(0x23, false, 3); 6];
    vm.cpu.seg[SegReg::Cs as usize] = flat(0x1B, true, 3);
    vm
}

/// Virtual-8086 mode, IOPL 0, all segments 0.
pub fn v86() -> Vm {
    let mut vm = real();
    vm.cpu.cr0 = cr0::PE | cr0::ET;
    vm.cpu.eflags = flags::FIXED1 | flags::VM;
    vm
}

/// Assemble one instruction with `f` at CS:EIP, execute it, and on
/// success commit EIP. Returns the handler's result and the shadow flag.
pub fn run_shadow(
    vm: &mut Vm,
    bits: u32,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<bool, Fault> {
    let mut a = CodeAssembler::new(bits).expect("bitness");
    f(&mut a).expect("assemble");
    let bytes = a.assemble(vm.cpu.eip as u64).expect("encode");
    let phys = vm.cpu.seg(SegReg::Cs).base.wrapping_add(vm.cpu.eip);
    vm.mem.write(phys as u64, &bytes);
    exec(vm)
}

/// Execute the instruction at CS:EIP.
pub fn exec(vm: &mut Vm) -> Result<bool, Fault> {
    let ins = Fetcher::new().fetch(vm)?;
    let table = Table::build();
    let mut ctx = Ctx::for_insn(vm, &ins, 256);
    let r = match table.lookup(&ins) {
        Some(h) if ins.code() != iced_x86::Code::INVALID => h(&mut ctx, &ins),
        _ => Err(Fault::ud()),
    };
    let (next, shadow) = (ctx.next_eip, ctx.shadow);
    r?;
    vm.cpu.eip = next;
    Ok(shadow)
}

/// `run_shadow` without the shadow flag.
pub fn run(
    vm: &mut Vm,
    bits: u32,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<(), Fault> {
    run_shadow(vm, bits, f).map(|_| ())
}
