//! Unit-test harness for the interpreter families: a small `Vm` (1 MiB of
//! RAM) in real mode or flat 32-bit protected mode, code assembled with
//! iced-x86's `code_asm` at `CODE`, and a one-instruction executor that
//! returns the handler's `Result` so that tests can see faults directly
//! (exception delivery is not needed).

use iced_x86::code_asm::CodeAssembler;
use iced_x86::IcedError;

use super::fetch::Fetcher;
use super::{Ctx, Table};
use crate::cpu::{attr, cr0, SegReg, Segment, FIXED1};
use crate::exception::Fault;
use crate::mem::GuestMemory;
use crate::vm::Vm;

/// Where test code is placed (physical = linear = offset).
pub(crate) const CODE: u32 = 0x1000;
/// A data area tests may use.
pub(crate) const DATA: u32 = 0x8000;

/// A real-mode VM: every segment base 0 with a 64 KiB limit.
pub(crate) fn vm16() -> Vm {
    let mut vm = Vm::new(GuestMemory::new(1 << 20).expect("guest memory"));
    for s in SegReg::ALL {
        *vm.cpu.seg_mut(s) = Segment::real(0);
    }
    vm.cpu.seg_mut(SegReg::Cs).attr |= attr::CODE;
    vm.cpu.eflags = FIXED1;
    vm.cpu.set_reg32(crate::cpu::ESP, 0xF000);
    vm
}

/// A flat 32-bit protected-mode VM at CPL 0, paging off.
pub(crate) fn vm32() -> Vm {
    let mut vm = vm16();
    vm.cpu.cr0 |= cr0::PE;
    let data = Segment {
        selector: 0x10,
        base: 0,
        limit: 0xFFFF_FFFF,
        attr: attr::P | attr::S | attr::RW | attr::ACCESSED | attr::DB | attr::G,
    };
    for s in SegReg::ALL {
        *vm.cpu.seg_mut(s) = data;
    }
    let cs = vm.cpu.seg_mut(SegReg::Cs);
    cs.selector = 0x08;
    cs.attr |= attr::CODE;
    vm
}

/// Assemble `f` for `bits` (16 or 32) at `CODE`, copy it there and point
/// EIP at it. Returns the EIP just past the code.
pub(crate) fn load(
    vm: &mut Vm,
    bits: u32,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> u32 {
    let mut a = CodeAssembler::new(bits).expect("bitness");
    f(&mut a).expect("assemble");
    let bytes = a.assemble(CODE as u64).expect("assemble");
    load_bytes(vm, &bytes)
}

/// Copy raw code bytes to `CODE` and point EIP at them.
pub(crate) fn load_bytes(vm: &mut Vm, bytes: &[u8]) -> u32 {
    vm.mem.write(CODE as u64, bytes);
    vm.cpu.eip = CODE;
    CODE + bytes.len() as u32
}

/// Execute the one instruction at CS:EIP through the handler table; on
/// success commit EIP as `Interpreter::step` does, on a fault leave the
/// state untouched and return the fault. An instruction with no handler
/// (or that iced decodes as invalid) is #UD.
pub(crate) fn exec(vm: &mut Vm) -> Result<(), Fault> {
    let table = Table::build();
    let ins = Fetcher::new().fetch(vm)?;
    let mut ctx = Ctx::for_insn(vm, &ins, 1);
    let h = match table.lookup(&ins) {
        Some(h) if ins.code() != iced_x86::Code::INVALID => h,
        _ => return Err(Fault::ud()),
    };
    h(&mut ctx, &ins)?;
    let next = ctx.next_eip;
    vm.cpu.eip = next;
    Ok(())
}

/// Assemble and run `f` to its end (or the first fault).
pub(crate) fn run(
    vm: &mut Vm,
    bits: u32,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<(), Fault> {
    let end = load(vm, bits, f);
    for _ in 0..10_000 {
        if vm.cpu.eip == end {
            return Ok(());
        }
        exec(vm)?;
    }
    panic!("test code did not reach its end");
}
