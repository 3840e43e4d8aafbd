//! The machine the translator's end-to-end tests start from.

use umbra_core::cpu::{attr, SegReg, Segment, ESP};
use umbra_core::mem::GuestMemory;
use umbra_core::{Budget, Engine, Exit, Vm};

/// Where programs start (physical = linear).
pub const CODE: u32 = 0x1000;

/// 1 MiB of RAM with `parts` (address, bytes) written, EIP = `CODE`,
/// ESP = 0x8000: flat ring-0 32-bit protected mode (`bits` 32, with a GDT
/// at 0x20000 holding the code and data descriptors 8 and 16) or real
/// mode with every base 0 (`bits` 16).
pub fn machine(bits: u32, parts: &[(u32, &[u8])]) -> Vm {
    let mut mem = GuestMemory::new(1 << 20).unwrap();
    for (at, b) in parts {
        mem.write(*at as u64, b);
    }
    let mut vm = Vm::new(mem);
    if bits == 32 {
        vm.enter_flat_protected(0x20000);
    } else {
        for s in SegReg::ALL {
            *vm.cpu.seg_mut(s) = Segment::real(0);
        }
        vm.cpu.seg_mut(SegReg::Cs).attr |= attr::CODE;
    }
    vm.cpu.eip = CODE;
    vm.cpu.gpr[ESP] = 0x8000;
    vm
}

/// Run `vm` on `e` in slices of `slice` instructions until it stops or
/// `total` instructions ran.
pub fn run(e: &mut dyn Engine, vm: &mut Vm, slice: u64, total: u64) -> Exit {
    let mut done = 0;
    loop {
        let before = vm.clock.retired;
        let x = e.run(vm, Budget::insns(slice));
        done += vm.clock.retired - before;
        if x != Exit::BudgetSpent || done >= total {
            return x;
        }
    }
}
