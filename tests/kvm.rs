//! KVM engine integration tests: small guest programs assembled with
//! iced-x86, run under KvmEngine, final state checked against values
//! derived by hand. Each test skips (with a note on stderr) where /dev/kvm
//! is absent.

use std::cell::RefCell;
use std::rc::Rc;

use iced_x86::code_asm::*;
use umbra::kvm::KvmEngine;
use umbra_core::bus::PortIo;
use umbra_core::cpu::{attr, Segment, SegReg, EAX, EBX, ECX, EDX, ESP};
use umbra_core::mem::GuestMemory;
use umbra_core::{Budget, Engine, Exit, ShutdownReason, Vm};

macro_rules! need_kvm {
    () => {
        if let Err(e) = KvmEngine::available() {
            eprintln!("skipped: no /dev/kvm ({e})");
            return;
        }
    };
}

const BIG: Budget = Budget::insns(100_000_000);

fn assemble(bits: u32, org: u64, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).unwrap();
    f(&mut a).unwrap();
    a.assemble(org).unwrap()
}

fn new_vm() -> Vm {
    Vm::new(GuestMemory::new(0x20_0000).unwrap())
}

/// Real mode with CS = `cs`, IP = `ip`, stack at 0:0x8000.
fn real_mode(vm: &mut Vm, csel: u16, ip: u16) {
    let mut c = Segment::real(csel);
    c.attr |= attr::CODE;
    vm.cpu.seg[SegReg::Cs as usize] = c;
    vm.cpu.eip = ip as u32;
    vm.cpu.gpr[ESP] = 0x8000;
}

/// Records every byte written to its port.
#[derive(Clone, Default)]
struct Sink(Rc<RefCell<Vec<(u16, u8, u32)>>>);
impl PortIo for Sink {
    fn read(&mut self, port: u16, _size: u8) -> u32 {
        0x40 + port as u32
    }
    fn write(&mut self, port: u16, size: u8, value: u32) {
        self.0.borrow_mut().push((port, size, value));
    }
}

#[test]
fn real_mode_arith_io_hlt() {
    need_kvm!();
    let mut vm = new_vm();
    let code = assemble(16, 0x1000, |a| {
        a.mov(ax, 0x1234u32)?;
        a.add(ax, 0x1111u32)?;
        a.mov(bx, ax)?;
        a.out(0xE9, al)?;
        a.in_(al, 0x60)?;
        a.hlt()?;
        Ok(())
    });
    vm.mem.write(0x1000, &code);
    real_mode(&mut vm, 0x100, 0);
    let sink = Sink::default();
    vm.bus.add_ports(0xE9, 1, Box::new(sink.clone()));
    vm.bus.add_ports(0x60, 1, Box::new(sink.clone()));
    let mut k = KvmEngine::new(&mut vm).unwrap();
    let e = k.run(&mut vm, BIG);
    assert_eq!(e, Exit::Halted, "{}", k.last_exit_reason());
    assert_eq!(vm.cpu.gpr[EBX], 0x2345);
    // IN AL, 0x60 read 0x40 + 0x60 = 0xA0 into AL; AH stays 0x23.
    assert_eq!(vm.cpu.gpr[EAX], 0x23A0);
    assert_eq!(&*sink.0.borrow(), &[(0xE9, 1, 0x45)]);
    assert!(vm.cpu.halted);
    assert_eq!(vm.cpu.eip, code.len() as u32);
}
