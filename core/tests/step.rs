//! Instruction-boundary rules of `Interpreter::step`: EFLAGS.RF and the
//! PDPTE load of MOV CR3 under PAE paging.

use iced_x86::code_asm::{eax, CodeAssembler};
use iced_x86::Register;
use umbra_core::cpu::{cr0, cr4, flags, Segment, ESP};
use umbra_core::interp::{system, Interpreter};
use umbra_core::mem::GuestMemory;
use umbra_core::{Budget, Engine, Exit, Fault, Vm};

/// A flat ring-0 32-bit machine with `code` at 0x1000 and ESP = 0x8000.
fn flat(code: impl FnOnce(&mut CodeAssembler)) -> Vm {
    let mut a = CodeAssembler::new(32).unwrap();
    code(&mut a);
    let bytes = a.assemble(0x1000).unwrap();
    let mut mem = GuestMemory::new(1 << 20).unwrap();
    mem.write(0x1000, &bytes);
    let mut vm = Vm::new(mem);
    // A GDT that matches the caches: 8 = flat code, 16 = flat data.
    vm.enter_flat_protected(0x20000);
    vm.cpu.eip = 0x1000;
    vm.cpu.gpr[ESP] = 0x8000;
    vm
}

#[test]
fn rf_is_cleared_after_an_instruction_completes() {
    let mut vm = flat(|a| {
        a.nop().unwrap();
        a.nop().unwrap();
    });
    vm.cpu.eflags |= flags::RF;
    let mut i = Interpreter::new();
    i.step(&mut vm);
    assert_eq!(vm.cpu.eflags & flags::RF, 0, "RF survives a completed NOP");
    assert_eq!(vm.cpu.eip, 0x1001);
}

#[test]
fn iretd_that_pops_rf_keeps_it_for_one_instruction() {
    // IRETD back to 0x1001 with RF set in the popped EFLAGS.
    let mut vm = flat(|a| {
        a.iretd().unwrap();
        a.nop().unwrap();
        a.nop().unwrap();
    });
    let frame = [0x1001u32, 8, flags::FIXED1 | flags::RF];
    for (k, v) in frame.iter().enumerate() {
        vm.mem.write_u32(0x8000 + 4 * k as u64, *v);
    }
    let mut i = Interpreter::new();
    i.step(&mut vm);
    assert_eq!(vm.cpu.eip, 0x1001);
    assert_ne!(vm.cpu.eflags & flags::RF, 0, "IRETD must load RF");
    i.step(&mut vm);
    assert_eq!(
        vm.cpu.eflags & flags::RF,
        0,
        "RF must clear after the next instruction"
    );
}

#[test]
fn mov_cr3_with_a_reserved_pdpte_bit_is_gp0_and_changes_nothing() {
    let mut vm = flat(|a| a.mov(eax, eax).unwrap());
    // Identity PAE tables: PDPT at 0x10000 -> PD at 0x11000 with a 2 MiB page.
    let good_pdpt = 0x10000u64;
    vm.mem.write_u64(good_pdpt, 0x11000 | 1);
    vm.mem.write_u64(0x11000, 0x83); // P | RW | PS
    vm.cpu.cr4 |= cr4::PAE;
    vm.cpu.cr3 = good_pdpt as u32;
    let on = vm.cpu.cr0 | cr0::PG;
    system::write_cr0(&mut vm, on).unwrap();
    // A second PDPT whose entry 1 sets reserved bit 1 (SDM Vol. 3 4.4.1).
    let bad_pdpt = 0x12000u64;
    vm.mem.write_u64(bad_pdpt, 0x11000 | 1);
    vm.mem.write_u64(bad_pdpt + 8, 0x11000 | 1 | 2);
    let r = system::write_cr(&mut vm, Register::CR3, bad_pdpt as u32);
    assert_eq!(r, Err(Fault::gp(0)));
    assert_eq!(vm.cpu.cr3, good_pdpt as u32);
    // The same PDPT without the reserved bit loads.
    vm.mem.write_u64(bad_pdpt + 8, 0x11000 | 1);
    assert_eq!(
        system::write_cr(&mut vm, Register::CR3, bad_pdpt as u32),
        Ok(())
    );
    assert_eq!(vm.cpu.cr3, bad_pdpt as u32);
}

#[test]
fn an_unimplemented_instruction_raises_ud_and_is_counted() {
    // Real mode at 0000:1000: ADDPS xmm0, xmm1 (SSE, not implemented; CPUID
    // does not advertise SSE), then HLT. IVT vector 6 -> 0000:2000 (HLT).
    let mut mem = GuestMemory::new(1 << 20).unwrap();
    mem.write(0x1000, &[0x0F, 0x58, 0xC1, 0xF4]);
    mem.write(0x2000, &[0xF4]);
    mem.write_u32(4 * 6, 0x0000_2000);
    let mut vm = Vm::new(mem);
    vm.cpu.seg[1] = Segment::real(0);
    vm.cpu.eip = 0x1000;
    vm.cpu.gpr[ESP] = 0x8000;
    let mut i = Interpreter::new();
    i.step(&mut vm);
    assert_eq!(vm.cpu.eip, 0x2000, "#UD delivered through IVT vector 6");
    // The pushed return address is the faulting instruction's.
    assert_eq!(vm.mem.read_u16(0x8000 - 6), 0x1000);
    assert_eq!(i.stats.exceptions[6], 1);
    assert_eq!(i.stats.unimplemented.values().sum::<u64>(), 1);
    assert!(
        i.stats.unimplemented.keys().any(|k| k.contains("Addps")),
        "{:?}",
        i.stats.unimplemented
    );
}

#[test]
fn rf_is_cleared_on_the_block_path_too() {
    // Engine::run (the block fast path) after an IRETD that loads RF: the
    // instruction after it runs with RF and clears it.
    let mut vm = flat(|a| {
        a.iretd().unwrap();
        a.nop().unwrap();
        a.nop().unwrap();
        a.nop().unwrap();
        a.hlt().unwrap();
    });
    let frame = [0x1001u32, 8, flags::FIXED1 | flags::RF];
    for (k, v) in frame.iter().enumerate() {
        vm.mem.write_u32(0x8000 + 4 * k as u64, *v);
    }
    let mut i = Interpreter::new();
    assert_eq!(i.run(&mut vm, Budget::insns(100)), Exit::Halted);
    assert_eq!(
        vm.cpu.eflags & flags::RF,
        0,
        "RF must not survive the block path"
    );
}
