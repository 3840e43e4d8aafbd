//! Paging end to end through the interpreter: MOV CR3 / CR0.PG, guest
//! edits of its own page tables seen at once, INVLPG, #PF delivery with
//! CR2 and the error code, A/D bits, user/supervisor checks, PAE. Expected
//! values follow SDM Vol. 3 chapter 4 by hand.

use iced_x86::code_asm::{cr0, cr2, cr3, cr4, dword_ptr, eax, ebx, ecx, edx, CodeAssembler};
use umbra_core::cpu::{attr, flags, SegReg, Segment, EBX, ECX, EDX, ESP};
use umbra_core::interp::Interpreter;
use umbra_core::mem::GuestMemory;
use umbra_core::{Budget, Engine, Exit, Vm};

const GDT: u32 = 0x1000;
const IDT: u32 = 0x2000;
const CODE: u32 = 0x3000;
const PF_HANDLER: u32 = 0x4000;
const PD: u32 = 0x10000;
/// Identity-maps linear 0..4 MiB.
const PT0: u32 = 0x11000;
/// Maps linear 0x40_0000.. (PDE 1).
const PT1: u32 = 0x12000;
const PAGE_A: u32 = 0x20000;
const PAGE_B: u32 = 0x21000;
const WIN: u32 = 0x40_0000;

/// P | RW (supervisor).
const KRW: u32 = 0x3;
const A: u32 = 1 << 5;
const D: u32 = 1 << 6;

fn desc(base: u32, limit: u32, access: u8, fl: u8) -> u64 {
    let lo = (limit & 0xFFFF) | (base << 16);
    let hi = ((base >> 16) & 0xFF)
        | ((access as u32) << 8)
        | (limit & 0xF_0000)
        | (((fl & 0xF) as u32) << 20)
        | (base & 0xFF00_0000);
    lo as u64 | (hi as u64) << 32
}

/// Flat ring-0 protected mode, paging off, IDT[14] -> PF_HANDLER, and the
/// page tables above written (not yet in CR3).
fn vm() -> Vm {
    let mut vm = Vm::new(GuestMemory::new(8 << 20).unwrap());
    let gdt = [0, desc(0, 0xFFFFF, 0x9A, 0xC), desc(0, 0xFFFFF, 0x92, 0xC)];
    for (i, d) in gdt.iter().enumerate() {
        vm.mem.write_u64((GDT + 8 * i as u32) as u64, *d);
    }
    // 32-bit interrupt gate, DPL 0, CS 0x08.
    let g = (PF_HANDLER & 0xFFFF) as u64
        | 0x08 << 16
        | ((PF_HANDLER & 0xFFFF_0000) as u64 | 0x8E00) << 32;
    vm.mem.write_u64((IDT + 8 * 14) as u64, g);
    vm.cpu.cr0 |= 1;
    vm.cpu.gdtr.base = GDT;
    vm.cpu.gdtr.limit = 23;
    vm.cpu.idtr.base = IDT;
    vm.cpu.idtr.limit = 0x7FF;
    for (s, sel) in [
        (SegReg::Cs, 0x08u16),
        (SegReg::Ss, 0x10),
        (SegReg::Ds, 0x10),
        (SegReg::Es, 0x10),
        (SegReg::Fs, 0x10),
        (SegReg::Gs, 0x10),
    ] {
        let d = gdt[sel as usize >> 3];
        vm.cpu.seg[s as usize] = Segment::from_descriptor(sel, d as u32, (d >> 32) as u32);
        vm.cpu.seg[s as usize].attr |= attr::ACCESSED;
    }
    vm.cpu.eflags = flags::FIXED1;
    vm.cpu.gpr[ESP] = 0x9000;
    vm.cpu.eip = CODE;
    // PD: PDE 0 -> PT0 (identity), PDE 1 -> PT1.
    vm.mem.write_u32(PD as u64, PT0 | KRW);
    vm.mem.write_u32(PD as u64 + 4, PT1 | KRW);
    for i in 0..1024u32 {
        vm.mem.write_u32((PT0 + 4 * i) as u64, (i << 12) | KRW);
    }
    vm.mem.write_u32(PT1 as u64, PAGE_A | KRW);
    vm.mem.write_u32(PAGE_B as u64, 0x2222_2222);
    // #PF handler: ECX = CR2, EDX = error code, HLT.
    put(&mut vm, PF_HANDLER, |a| {
        a.mov(ecx, cr2)?;
        a.pop(edx)?;
        a.hlt()
    });
    vm
}

fn put(
    vm: &mut Vm,
    at: u32,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
) {
    let mut a = CodeAssembler::new(32).unwrap();
    f(&mut a).unwrap();
    let bytes = a.assemble(at as u64).unwrap();
    vm.mem.write(at as u64, &bytes);
}

fn run(vm: &mut Vm) {
    let mut it = Interpreter::new();
    assert_eq!(it.run(vm, Budget::insns(1000)), Exit::Halted);
}

fn reg(vm: &Vm, r: usize) -> u32 {
    vm.cpu.gpr[r] as u32
}

#[test]
fn guest_edits_its_pte_and_sees_the_new_mapping() {
    let mut vm = vm();
    put(&mut vm, CODE, |a| {
        a.mov(eax, PD)?;
        a.mov(cr3, eax)?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8001_0000u32 as i32)?; // PG | WP
        a.mov(cr0, eax)?;
        a.mov(dword_ptr(WIN), 0x1111_1111)?;
        // Remap the window to PAGE_B through the identity map of PT1.
        a.mov(dword_ptr(PT1), (PAGE_B | KRW) as i32)?;
        a.invlpg(dword_ptr(WIN))?;
        a.mov(ebx, dword_ptr(WIN))?;
        // Unmap it: the next read faults (not present, read, ring 0).
        a.mov(dword_ptr(PT1), 0)?;
        a.mov(eax, dword_ptr(WIN + 0x10))?;
        a.hlt()
    });
    run(&mut vm);
    assert_eq!(vm.mem.read_u32(PAGE_A as u64), 0x1111_1111);
    assert_eq!(reg(&vm, EBX), 0x2222_2222);
    assert_eq!(reg(&vm, ECX), WIN + 0x10);
    assert_eq!(vm.cpu.cr2, WIN + 0x10);
    assert_eq!(reg(&vm, EDX), 0);
    // A was set in PDE 1 by the walks; PDE 0 and the code's PTE too.
    assert_ne!(vm.mem.read_u32(PD as u64 + 4) & A, 0);
    assert_ne!(vm.mem.read_u32(PD as u64) & A, 0);
    assert_ne!(vm.mem.read_u32((PT0 + 4 * (CODE >> 12)) as u64) & A, 0);
    assert!(vm.mmu.stats.write_watch_faults >= 2);
    assert!(vm.mmu.stats.shadow_hits > 0);
}

#[test]
fn write_to_read_only_page_faults_with_wp_and_sets_dirty_without() {
    for wp in [false, true] {
        let mut vm = vm();
        // The window is read-only: P only.
        vm.mem.write_u32(PT1 as u64, PAGE_A | 1);
        put(&mut vm, CODE, |a| {
            a.mov(eax, PD)?;
            a.mov(cr3, eax)?;
            a.mov(eax, cr0)?;
            a.or(eax, if wp { 0x8001_0000u32 } else { 0x8000_0000 } as i32)?;
            a.mov(cr0, eax)?;
            a.mov(eax, dword_ptr(WIN))?;
            a.mov(dword_ptr(WIN + 4), 0x5555_5555)?;
            a.mov(ecx, 0xC0FFEE)?;
            a.hlt()
        });
        run(&mut vm);
        let pte = vm.mem.read_u32(PT1 as u64);
        if wp {
            // SDM 4.6: supervisor write to a read-only page with WP=1;
            // error code P | W. The read before set A, not D.
            assert_eq!((reg(&vm, ECX), reg(&vm, EDX)), (WIN + 4, 3));
            assert_eq!(pte & (A | D), A);
            assert_eq!(vm.mem.read_u32(PAGE_A as u64 + 4), 0);
        } else {
            assert_eq!(reg(&vm, ECX), 0xC0FFEE);
            assert_eq!(pte & (A | D), A | D);
            assert_eq!(vm.mem.read_u32(PAGE_A as u64 + 4), 0x5555_5555);
        }
    }
}

#[test]
fn pae_paging_with_2mib_page() {
    let mut vm = vm();
    // PDPT at 0x13000: PDPTE 0 -> PD 0x14000. PDE 0 maps 0..2 MiB as a
    // 2 MiB page; PDE 2 (linear 0x40_0000) a 2 MiB page at 0x60_0000.
    vm.mem.write_u64(0x13000, 0x14001);
    vm.mem.write_u64(0x14000, 0x83);
    vm.mem.write_u64(0x14010, 0x60_0083);
    vm.mem.write_u32(0x60_1234, 0x7777_7777);
    put(&mut vm, CODE, |a| {
        a.mov(eax, cr4)?;
        a.or(eax, 0x20)?; // PAE
        a.mov(cr4, eax)?;
        a.mov(eax, 0x13000)?;
        a.mov(cr3, eax)?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32 as i32)?;
        a.mov(cr0, eax)?;
        a.mov(ebx, dword_ptr(WIN + 0x1234))?;
        a.mov(dword_ptr(WIN + 0x1238), 1)?;
        // Linear 0x80_0000 (PDE 4) is not present: #PF, W.
        a.mov(dword_ptr(0x80_0000), 1)?;
        a.hlt()
    });
    run(&mut vm);
    assert_eq!(reg(&vm, EBX), 0x7777_7777);
    assert_eq!(vm.mem.read_u32(0x60_1238), 1);
    assert_eq!(vm.mem.read_u64(0x14010) & (A | D) as u64, (A | D) as u64);
    assert_eq!((reg(&vm, ECX), reg(&vm, EDX)), (0x80_0000, 2));
}
