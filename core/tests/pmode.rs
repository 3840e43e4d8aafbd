//! Protected-mode control machinery of the interpreter: interrupt and
//! exception delivery (IVT, IDT gates, stack switches, V86), far transfers
//! through call gates, segment loads and their faults, double and triple
//! faults, hardware task switches. Every expected value is derived by hand
//! from the SDM rules named in each test.

use iced_x86::code_asm::{
    ax, ds, dword_ptr, eax, ebx, ecx, edx, es, esp, ptr, ss, word_ptr, CodeAssembler,
};
use umbra_core::cpu::{attr, cr0, flags, SegReg, Segment, EAX, EBX, ECX, ESP};
use umbra_core::exception::Fault;
use umbra_core::interp::{interrupt, Interpreter, Step};
use umbra_core::mem::GuestMemory;
use umbra_core::{Budget, Engine, Exit, ShutdownReason, Vm};

const GDT: u32 = 0x1000;
const IDT: u32 = 0x2000;
const TSS0: u32 = 0x3000;
const TSS_DF: u32 = 0x3100;
const TSS16: u32 = 0x3200;

const K_CODE: u16 = 0x08;
const K_DATA: u16 = 0x10;
const U_CODE: u16 = 0x1B;
const U_DATA: u16 = 0x23;
const TSS_SEL: u16 = 0x28;
const DF_TSS_SEL: u16 = 0x30;
const CALL_GATE: u16 = 0x3B;
const NP_DATA: u16 = 0x48;
const TSS16_SEL: u16 = 0x50;
const CONF_CODE: u16 = 0x58;

/// Kernel stack top in TSS0.ESP0.
const ESP0: u32 = 0x9000;

/// A code/data/system descriptor: `access` is byte 5, `fl` the G/D nibble.
fn desc(base: u32, limit: u32, access: u8, fl: u8) -> u64 {
    let lo = (limit & 0xFFFF) | (base << 16);
    let hi = ((base >> 16) & 0xFF)
        | ((access as u32) << 8)
        | (limit & 0xF_0000)
        | (((fl & 0xF) as u32) << 20)
        | (base & 0xFF00_0000);
    lo as u64 | (hi as u64) << 32
}

/// A gate descriptor (present).
fn gate(sel: u16, off: u32, typ: u8, dpl: u8, params: u8) -> u64 {
    let lo = (off & 0xFFFF) | ((sel as u32) << 16);
    let hi =
        (off & 0xFFFF_0000) | 0x8000 | ((dpl as u32) << 13) | ((typ as u32) << 8) | params as u32;
    lo as u64 | (hi as u64) << 32
}

fn asm(bits: u32, ip: u32, f: impl FnOnce(&mut CodeAssembler)) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).unwrap();
    f(&mut a);
    a.assemble(ip as u64).unwrap()
}

fn put(vm: &mut Vm, at: u32, bytes: &[u8]) {
    vm.mem.write(at as u64, bytes);
}

fn r32(vm: &mut Vm, at: u32) -> u32 {
    vm.mem.read_u32(at as u64)
}

fn r16(vm: &mut Vm, at: u32) -> u16 {
    vm.mem.read_u16(at as u64)
}

fn set_idt(vm: &mut Vm, v: u8, g: u64) {
    vm.mem.write_u64((IDT + 8 * v as u32) as u64, g);
}

/// Load a segment register's cache from the GDT the way hardware would.
fn set_seg(vm: &mut Vm, s: SegReg, sel: u16) {
    let d = vm.mem.read_u64((GDT + (sel & !7) as u32) as u64);
    vm.cpu.seg[s as usize] = Segment::from_descriptor(sel, d as u32, (d >> 32) as u32);
}

/// Flat protected mode at CPL 0 with the GDT above, an empty IDT, TR =
/// TSS0 (busy) whose ring-0 stack is K_DATA:ESP0.
fn pm_vm() -> Vm {
    let mut vm = Vm::new(GuestMemory::new(2 << 20).unwrap());
    let entries = write_tables(&mut vm);
    vm.cpu.cr0 |= cr0::PE;
    vm.cpu.gdtr.base = GDT;
    vm.cpu.gdtr.limit = (entries * 8 - 1) as u16;
    vm.cpu.idtr.base = IDT;
    vm.cpu.idtr.limit = 0x7FF;
    set_seg(&mut vm, SegReg::Cs, K_CODE);
    for s in [SegReg::Ss, SegReg::Ds, SegReg::Es, SegReg::Fs, SegReg::Gs] {
        set_seg(&mut vm, s, K_DATA);
    }
    let t = vm.mem.read_u64((GDT + TSS_SEL as u32) as u64);
    vm.cpu.tr = Segment::from_descriptor(TSS_SEL, t as u32, (t >> 32) as u32);
    vm.cpu.ldtr = Segment {
        attr: attr::UNUSABLE,
        ..Segment::default()
    };
    vm.cpu.eflags = flags::FIXED1 | flags::IF;
    vm.cpu.gpr[ESP] = 0x8000;
    vm.cpu.eip = 0x10000;
    vm
}

/// Write the GDT (TSS0 marked busy, as after LTR) and TSS0's ring-0
/// stack; returns the number of GDT entries.
fn write_tables(vm: &mut Vm) -> usize {
    let gdt = [
        0,
        desc(0, 0xFFFFF, 0x9A, 0xC),
        desc(0, 0xFFFFF, 0x92, 0xC),
        desc(0, 0xFFFFF, 0xFA, 0xC),
        desc(0, 0xFFFFF, 0xF2, 0xC),
        desc(TSS0, 0x67, 0x8B, 0),
        desc(TSS_DF, 0x67, 0x89, 0),
        gate(K_CODE, 0x22000, 0xC, 3, 2),
        desc(0, 0xFFFF, 0x9A, 0),
        desc(0, 0xFFFFF, 0x12 | 0x60, 0xC), // DPL 3 data, not present
        desc(TSS16, 0x2B, 0x81, 0),         // 16-bit TSS, available
        desc(0, 0xFFFFF, 0x9E, 0xC),        // DPL 0 conforming code
    ];
    for (i, d) in gdt.iter().enumerate() {
        vm.mem.write_u64((GDT + 8 * i as u32) as u64, *d);
    }
    vm.mem.write_u32((TSS0 + 4) as u64, ESP0);
    vm.mem.write_u16((TSS0 + 8) as u64, K_DATA);
    gdt.len()
}

/// Switch `vm` to CPL 3 with user segments and ESP `esp`.
fn to_ring3(vm: &mut Vm, top: u32) {
    set_seg(vm, SegReg::Cs, U_CODE);
    for s in [SegReg::Ss, SegReg::Ds, SegReg::Es, SegReg::Fs, SegReg::Gs] {
        set_seg(vm, s, U_DATA);
    }
    vm.cpu.gpr[ESP] = top as u64;
}

fn step(it: &mut Interpreter, vm: &mut Vm) {
    assert_eq!(it.step(vm), Step::Retired);
}

fn sel(vm: &Vm, s: SegReg) -> u16 {
    vm.cpu.seg(s).selector
}

fn sp_of(vm: &Vm) -> u32 {
    vm.cpu.gpr[ESP] as u32
}

#[test]
fn real_mode_int_and_iret() {
    let mut vm = Vm::new(GuestMemory::new(2 << 20).unwrap());
    let mut it = Interpreter::new();
    vm.cpu.seg[SegReg::Cs as usize] = Segment::real(0);
    vm.cpu.eip = 0x100;
    vm.cpu.gpr[ESP] = 0x8000;
    vm.cpu.eflags = flags::FIXED1 | flags::IF | flags::CF;
    // IVT[0x21] = 0050:0010.
    vm.mem.write_u32(0x21 * 4, 0x0050_0010);
    put(&mut vm, 0x100, &asm(16, 0x100, |a| a.int(0x21).unwrap()));
    put(&mut vm, 0x510, &asm(16, 0x10, |a| a.iret().unwrap()));
    step(&mut it, &mut vm);
    // Pushed FLAGS, CS, IP (return IP after the 2-byte INT); IF cleared.
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (0x50, 0x10));
    assert_eq!(vm.cpu.seg(SegReg::Cs).base, 0x500);
    assert_eq!(sp_of(&vm), 0x7FFA);
    assert_eq!(r16(&mut vm, 0x7FFA), 0x102);
    assert_eq!(r16(&mut vm, 0x7FFC), 0);
    assert_eq!(r16(&mut vm, 0x7FFE), 0x203);
    assert_eq!(vm.cpu.eflags, 0x3);
    step(&mut it, &mut vm);
    assert_eq!(
        (sel(&vm, SegReg::Cs), vm.cpu.eip, sp_of(&vm)),
        (0, 0x102, 0x8000)
    );
    assert_eq!(vm.cpu.eflags, 0x203);
}

#[test]
fn real_mode_vector_beyond_ivt_limit_shuts_down() {
    let mut vm = Vm::new(GuestMemory::new(2 << 20).unwrap());
    let mut it = Interpreter::new();
    vm.cpu.seg[SegReg::Cs as usize] = Segment::real(0);
    vm.cpu.eip = 0x100;
    vm.cpu.gpr[ESP] = 0x8000;
    // The IVT covers vectors 0..8: INT 0x21 beyond it is #GP; vector 13 is
    // beyond it too, a contributory fault during #GP delivery -> #DF, whose
    // vector 8 is inside: delivered.
    vm.cpu.idtr.limit = 4 * 9 - 1;
    vm.mem.write_u32(8 * 4, 0x0060_0000);
    put(&mut vm, 0x100, &asm(16, 0x100, |a| a.int(0x21).unwrap()));
    step(&mut it, &mut vm);
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (0x60, 0));
    // Return address of the #DF frame is the faulting INT.
    assert_eq!(r16(&mut vm, 0x7FFA), 0x100);
    // With vector 8 outside the IVT as well, the machine shuts down.
    let mut vm2 = Vm::new(GuestMemory::new(2 << 20).unwrap());
    vm2.cpu.seg[SegReg::Cs as usize] = Segment::real(0);
    vm2.cpu.eip = 0x100;
    vm2.cpu.idtr.limit = 4 * 8 - 1;
    put(&mut vm2, 0x100, &asm(16, 0x100, |a| a.int(0x21).unwrap()));
    assert_eq!(
        it.step(&mut vm2),
        Step::Shutdown(ShutdownReason::TripleFault)
    );
}

#[test]
fn de_through_idt_frame() {
    let mut vm = pm_vm();
    set_idt(&mut vm, 0, gate(K_CODE, 0x20000, 0xE, 0, 0));
    interrupt::deliver_exception(&mut vm, Fault::de()).unwrap();
    // Same privilege: EFLAGS (RF set for a fault), CS, EIP; no error code.
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (K_CODE, 0x20000));
    assert_eq!(sp_of(&vm), 0x8000 - 12);
    assert_eq!(r32(&mut vm, 0x7FF4), 0x10000);
    assert_eq!(r32(&mut vm, 0x7FF8), K_CODE as u32);
    assert_eq!(r32(&mut vm, 0x7FFC), 0x202 | flags::RF);
    assert_eq!(vm.cpu.eflags & flags::IF, 0);
}

#[test]
fn ring3_int_switches_stack_and_iret_returns() {
    let mut vm = pm_vm();
    let mut it = Interpreter::new();
    to_ring3(&mut vm, 0x7000);
    set_idt(&mut vm, 0x80, gate(K_CODE, 0x21000, 0xF, 3, 0));
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.int(0x80).unwrap()),
    );
    put(&mut vm, 0x21000, &asm(32, 0x21000, |a| a.iretd().unwrap()));
    step(&mut it, &mut vm);
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (K_CODE, 0x21000));
    assert_eq!(sel(&vm, SegReg::Ss), K_DATA);
    assert_eq!(sp_of(&vm), ESP0 - 20);
    let f = ESP0 - 20;
    assert_eq!(r32(&mut vm, f), 0x10002);
    assert_eq!(r32(&mut vm, f + 4), U_CODE as u32);
    assert_eq!(r32(&mut vm, f + 8), 0x202); // trap gate, software: no RF
    assert_eq!(r32(&mut vm, f + 12), 0x7000);
    assert_eq!(r32(&mut vm, f + 16), U_DATA as u32);
    assert_ne!(vm.cpu.eflags & flags::IF, 0, "trap gate keeps IF");
    // A ring-0 data segment in DS must be nulled by the return to ring 3.
    set_seg(&mut vm, SegReg::Ds, K_DATA);
    step(&mut it, &mut vm);
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (U_CODE, 0x10002));
    assert_eq!((sel(&vm, SegReg::Ss), sp_of(&vm)), (U_DATA, 0x7000));
    assert_eq!(vm.cpu.cpl(), 3);
    assert_eq!(sel(&vm, SegReg::Ds), 0);
    assert!(vm.cpu.seg(SegReg::Ds).unusable());
    assert_eq!(sel(&vm, SegReg::Es), U_DATA);
}

#[test]
fn int_through_dpl0_gate_from_ring3_is_gp_with_idt_code() {
    let mut vm = pm_vm();
    let mut it = Interpreter::new();
    to_ring3(&mut vm, 0x7000);
    set_idt(&mut vm, 0x81, gate(K_CODE, 0x21000, 0xE, 0, 0));
    set_idt(&mut vm, 13, gate(K_CODE, 0x23000, 0xE, 0, 0));
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.int(0x81).unwrap()),
    );
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x23000);
    let f = ESP0 - 24;
    assert_eq!(sp_of(&vm), f);
    // Error code: vector*8 + IDT bit, EXT clear (software interrupt).
    assert_eq!(r32(&mut vm, f), 0x81 * 8 + 2);
    // A fault returns to the INT itself.
    assert_eq!(r32(&mut vm, f + 4), 0x10000);
    assert_eq!(r32(&mut vm, f + 12), 0x202 | flags::RF);
}

#[test]
fn call_gate_copies_parameters_and_retf_returns_to_ring3() {
    let mut vm = pm_vm();
    let mut it = Interpreter::new();
    to_ring3(&mut vm, 0x6FF8);
    vm.mem.write_u32(0x6FF8, 0x2222_2222); // parameter 0 (top of stack)
    vm.mem.write_u32(0x6FFC, 0x1111_1111); // parameter 1
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.call_far(CALL_GATE, 0).unwrap()),
    );
    put(
        &mut vm,
        0x22000,
        &asm(32, 0x22000, |a| a.retf_1(8).unwrap()),
    );
    step(&mut it, &mut vm);
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (K_CODE, 0x22000));
    assert_eq!(vm.cpu.cpl(), 0);
    assert_eq!(sel(&vm, SegReg::Ss), K_DATA);
    let f = ESP0 - 24;
    assert_eq!(sp_of(&vm), f);
    assert_eq!(r32(&mut vm, f), 0x10007);
    assert_eq!(r32(&mut vm, f + 4), U_CODE as u32);
    assert_eq!(r32(&mut vm, f + 8), 0x2222_2222);
    assert_eq!(r32(&mut vm, f + 12), 0x1111_1111);
    assert_eq!(r32(&mut vm, f + 16), 0x6FF8);
    assert_eq!(r32(&mut vm, f + 20), U_DATA as u32);
    step(&mut it, &mut vm);
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (U_CODE, 0x10007));
    // RETF 8 releases the parameters on the outer stack too.
    assert_eq!((sel(&vm, SegReg::Ss), sp_of(&vm)), (U_DATA, 0x7000));
}

#[test]
fn iret_to_v86_and_interrupts_back_to_ring0() {
    let mut vm = pm_vm();
    let mut it = Interpreter::new();
    // IRETD frame: EIP CS EFLAGS ESP SS ES DS FS GS.
    let v86_flags = flags::FIXED1 | flags::IF | flags::VM;
    let frame = [
        0x100, 0x2000, v86_flags, 0x1000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000,
    ];
    for (i, v) in frame.iter().enumerate() {
        vm.mem.write_u32((0x7F00 + 4 * i) as u64, *v);
    }
    vm.cpu.gpr[ESP] = 0x7F00;
    put(&mut vm, 0x10000, &asm(32, 0x10000, |a| a.iretd().unwrap()));
    put(&mut vm, 0x20100, &asm(16, 0x100, |a| a.int(0x30).unwrap()));
    set_idt(&mut vm, 13, gate(K_CODE, 0x23000, 0xE, 0, 0));
    step(&mut it, &mut vm);
    assert!(vm.cpu.v86());
    assert_eq!(vm.cpu.cpl(), 3);
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (0x2000, 0x100));
    assert_eq!(vm.cpu.seg(SegReg::Cs).base, 0x20000);
    assert_eq!((sel(&vm, SegReg::Ss), sp_of(&vm)), (0x3000, 0x1000));
    assert_eq!(vm.cpu.seg(SegReg::Gs).base, 0x70000);
    assert_eq!(vm.cpu.seg(SegReg::Ds).dpl(), 3);

    // IOPL 0: INT n in V86 mode is #GP(0), taken on the ring-0 stack with
    // GS FS DS ES SS ESP EFLAGS CS EIP and the error code.
    step(&mut it, &mut vm);
    assert!(!vm.cpu.v86());
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (K_CODE, 0x23000));
    let f = ESP0 - 40;
    assert_eq!(sp_of(&vm), f);
    let want = [
        0,
        0x100,
        0x2000,
        v86_flags | flags::RF,
        0x1000,
        0x3000,
        0x4000,
        0x5000,
        0x6000,
        0x7000,
    ];
    for (i, w) in want.iter().enumerate() {
        assert_eq!(r32(&mut vm, f + 4 * i as u32), *w, "frame slot {i}");
    }
    for s in [SegReg::Es, SegReg::Ds, SegReg::Fs, SegReg::Gs] {
        assert_eq!(sel(&vm, s), 0);
        assert!(vm.cpu.seg(s).unusable());
    }
    assert_eq!(vm.cpu.eflags & (flags::VM | flags::IF), 0);
}

#[test]
fn v86_int_with_iopl3_round_trip() {
    let mut vm = pm_vm();
    let mut it = Interpreter::new();
    let v86_flags = flags::FIXED1 | flags::VM | flags::IOPL;
    let frame = [
        0x100, 0x2000, v86_flags, 0x1000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000,
    ];
    for (i, v) in frame.iter().enumerate() {
        vm.mem.write_u32((0x7F00 + 4 * i) as u64, *v);
    }
    vm.cpu.gpr[ESP] = 0x7F00;
    put(&mut vm, 0x10000, &asm(32, 0x10000, |a| a.iretd().unwrap()));
    put(&mut vm, 0x20100, &asm(16, 0x100, |a| a.int(0x31).unwrap()));
    set_idt(&mut vm, 0x31, gate(K_CODE, 0x24000, 0xE, 3, 0));
    put(&mut vm, 0x24000, &asm(32, 0x24000, |a| a.iretd().unwrap()));
    step(&mut it, &mut vm);
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x24000);
    assert_eq!(sp_of(&vm), ESP0 - 36);
    assert_eq!(r32(&mut vm, ESP0 - 36), 0x102);
    step(&mut it, &mut vm);
    assert!(vm.cpu.v86());
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (0x2000, 0x102));
    assert_eq!(
        (sel(&vm, SegReg::Ds), vm.cpu.seg(SegReg::Ds).base),
        (0x5000, 0x50000)
    );
    assert_eq!(vm.cpu.iopl(), 3);
}

/// (instruction, AX, vector, error code).
type Case = (fn(&mut CodeAssembler), u16, u32, u32);

#[test]
fn segment_load_faults_carry_selectors() {
    let mut it = Interpreter::new();
    let cases: [Case; 4] = [
        (|a| a.mov(ds, ax).unwrap(), NP_DATA, 11, NP_DATA as u32),
        (|a| a.mov(ss, ax).unwrap(), U_DATA, 13, (U_DATA & !3) as u32),
        (|a| a.mov(ds, ax).unwrap(), 0x1F8, 13, 0x1F8),
        (|a| a.mov(ss, ax).unwrap(), 0, 13, 0),
    ];
    for (i, (ins, sel_ax, vec, code)) in cases.into_iter().enumerate() {
        let mut vm = pm_vm();
        set_idt(&mut vm, 11, gate(K_CODE, 0x2B000, 0xE, 0, 0));
        set_idt(&mut vm, 13, gate(K_CODE, 0x2D000, 0xE, 0, 0));
        vm.cpu.gpr[EAX] = sel_ax as u64;
        put(&mut vm, 0x10000, &asm(32, 0x10000, ins));
        step(&mut it, &mut vm);
        let handler = if vec == 11 { 0x2B000 } else { 0x2D000 };
        assert_eq!(vm.cpu.eip, handler, "case {i}");
        assert_eq!(r32(&mut vm, 0x8000 - 16), code, "case {i}");
        assert_eq!(r32(&mut vm, 0x8000 - 12), 0x10000, "case {i}");
        assert_eq!(sel(&vm, SegReg::Ds), K_DATA, "case {i}: DS untouched");
    }
}

#[test]
fn mov_sreg_loads_and_sets_accessed() {
    let mut vm = pm_vm();
    let mut it = Interpreter::new();
    // Clear the accessed bit of the user data descriptor.
    let a = (GDT + 0x20 + 5) as u64;
    let b = vm.mem.read_u8(a);
    vm.mem.write_u8(a, b & !1);
    vm.cpu.gpr[EAX] = U_DATA as u64;
    vm.cpu.gpr[EBX] = 0xFFFF_FFFF;
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| {
            a.mov(es, ax).unwrap();
            a.mov(ebx, ds).unwrap();
            a.mov(word_ptr(0x5000), es).unwrap();
        }),
    );
    vm.mem.write_u32(0x5000, 0xAAAA_AAAA);
    for _ in 0..3 {
        step(&mut it, &mut vm);
    }
    assert_eq!(sel(&vm, SegReg::Es), U_DATA);
    assert_eq!(vm.cpu.seg(SegReg::Es).dpl(), 3);
    assert_eq!(vm.mem.read_u8(a) & 1, 1, "accessed bit set");
    assert_eq!(
        vm.cpu.gpr[EBX], K_DATA as u64,
        "32-bit destination zero-extends"
    );
    assert_eq!(
        r32(&mut vm, 0x5000),
        0xAAAA_0000 | U_DATA as u32,
        "memory gets 16 bits"
    );
}

#[test]
fn df_from_gp_during_np_delivery() {
    let mut vm = pm_vm();
    let mut it = Interpreter::new();
    // #NP's gate names a code selector beyond the GDT limit.
    set_idt(&mut vm, 11, gate(0x1F8, 0x2B000, 0xE, 0, 0));
    set_idt(&mut vm, 8, gate(K_CODE, 0x28000, 0xE, 0, 0));
    vm.cpu.gpr[EAX] = NP_DATA as u64;
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.mov(ds, ax).unwrap()),
    );
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x28000);
    assert_eq!(sp_of(&vm), 0x8000 - 16);
    assert_eq!(r32(&mut vm, 0x8000 - 16), 0, "#DF error code is 0");
    assert_eq!(r32(&mut vm, 0x8000 - 12), 0x10000);
}

#[test]
fn triple_fault_shuts_down() {
    let mut vm = pm_vm();
    let mut it = Interpreter::new();
    // Empty IDT: #GP -> gate invalid -> #GP -> #DF -> invalid -> shutdown.
    vm.cpu.gpr[EAX] = 0x1F8;
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.mov(ds, ax).unwrap()),
    );
    assert_eq!(
        it.run(&mut vm, Budget::insns(10)),
        Exit::Shutdown(ShutdownReason::TripleFault)
    );
}

#[test]
fn df_task_gate_and_iret_back() {
    let mut vm = pm_vm();
    let mut it = Interpreter::new();
    // #GP's gate is not present: #NP during #GP -> #DF through a task gate.
    vm.mem.write_u64(
        (IDT + 13 * 8) as u64,
        gate(K_CODE, 0x2D000, 0xE, 0, 0) & !(0x8000u64 << 32),
    );
    set_idt(&mut vm, 8, gate(DF_TSS_SEL, 0, 0x5, 0, 0));
    // The #DF task.
    vm.mem.write_u32((TSS_DF + 0x20) as u64, 0x25000); // EIP
    vm.mem.write_u32((TSS_DF + 0x24) as u64, 0x2); // EFLAGS
    vm.mem.write_u32((TSS_DF + 0x28 + 3 * 4) as u64, 0x5555); // EBX
    vm.mem.write_u32((TSS_DF + 0x28 + 4 * 4) as u64, 0xA000); // ESP
    for (i, s) in [K_DATA, K_CODE, K_DATA, K_DATA, K_DATA, K_DATA]
        .iter()
        .enumerate()
    {
        vm.mem.write_u16((TSS_DF + 0x48 + 4 * i as u32) as u64, *s);
    }
    put(&mut vm, 0x25000, &asm(32, 0x25000, |a| a.iretd().unwrap()));
    vm.cpu.gpr[EBX] = 0x1234;
    vm.cpu.gpr[EAX] = 0x1F8;
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.mov(ds, ax).unwrap()),
    );
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.tr.selector, DF_TSS_SEL);
    assert_eq!(vm.cpu.eip, 0x25000);
    assert_eq!(vm.cpu.gpr[EBX], 0x5555);
    assert_eq!(sp_of(&vm), 0xA000 - 4);
    assert_eq!(
        r32(&mut vm, 0xA000 - 4),
        0,
        "#DF error code on the new stack"
    );
    assert_ne!(vm.cpu.eflags & flags::NT, 0);
    assert_ne!(vm.cpu.cr0 & cr0::TS, 0);
    assert_eq!(r16(&mut vm, TSS_DF), TSS_SEL, "back link");
    assert_eq!(r32(&mut vm, TSS0 + 0x20), 0x10000, "old EIP saved");
    assert_eq!(r32(&mut vm, TSS0 + 0x28 + 12), 0x1234, "old EBX saved");
    let busy = |vm: &mut Vm, s: u16| (vm.mem.read_u8((GDT + s as u32 + 5) as u64) & 0xF) == 0xB;
    assert!(busy(&mut vm, TSS_SEL) && busy(&mut vm, DF_TSS_SEL));
    // IRET with NT returns to the interrupted task.
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.tr.selector, TSS_SEL);
    assert_eq!((vm.cpu.eip, vm.cpu.gpr[EBX]), (0x10000, 0x1234));
    assert_eq!(sp_of(&vm), 0x8000);
    assert!(!busy(&mut vm, DF_TSS_SEL) && busy(&mut vm, TSS_SEL));
    assert_eq!(
        r32(&mut vm, TSS_DF + 0x20),
        0x25001,
        "outgoing EIP after IRETD"
    );
    assert_eq!(
        r32(&mut vm, TSS_DF + 0x24) & flags::NT,
        0,
        "NT cleared in saved image"
    );
}

#[test]
fn mov_ss_shadow_holds_off_interrupt_one_instruction() {
    let mut vm = pm_vm();
    let mut it = Interpreter::new();
    set_idt(&mut vm, 0x40, gate(K_CODE, 0x26000, 0xE, 0, 0));
    vm.cpu.gpr[EAX] = K_DATA as u64;
    vm.mem.write_u32(0x5000, 0x7777);
    vm.mem.write_u16(0x5004, K_DATA);
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| {
            a.mov(ss, ax).unwrap(); // 66 8E D0
            a.mov(ds, ax).unwrap(); // 66 8E D8
            a.lss(esp, ptr(0x5000)).unwrap();
        }),
    );
    step(&mut it, &mut vm);
    assert!(vm.cpu.interrupt_shadow);
    // The IRQ arrives while the shadow of MOV SS is up.
    vm.cpu.pending_irq = Some(0x40);
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x10006, "instruction after MOV SS ran first");
    assert_eq!(vm.cpu.pending_irq, Some(0x40));
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x26000, "then the interrupt");
    assert_eq!(r32(&mut vm, 0x8000 - 12), 0x10006);
    // LSS loads SS:ESP and sets no shadow.
    let mut vm = pm_vm();
    vm.mem.write_u32(0x5000, 0x7777);
    vm.mem.write_u16(0x5004, K_DATA);
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.lss(esp, ptr(0x5000)).unwrap()),
    );
    vm.cpu.gpr[ESP] = 0;
    step(&mut it, &mut vm);
    assert_eq!((sp_of(&vm), sel(&vm, SegReg::Ss)), (0x7777, K_DATA));
    assert!(!vm.cpu.interrupt_shadow);
}

#[test]
fn pending_irq_wakes_halted_cpu() {
    let mut vm = pm_vm();
    let mut it = Interpreter::new();
    set_idt(&mut vm, 0x40, gate(K_CODE, 0x26000, 0xE, 0, 0));
    vm.cpu.halted = true;
    assert_eq!(it.step(&mut vm), Step::Halted);
    vm.cpu.pending_irq = Some(0x40);
    step(&mut it, &mut vm);
    assert!(!vm.cpu.halted);
    assert_eq!(vm.cpu.eip, 0x26000);
    // External interrupt: no RF, return to the halted EIP.
    assert_eq!(r32(&mut vm, 0x8000 - 12), 0x10000);
    assert_eq!(r32(&mut vm, 0x8000 - 4), 0x202);
}

#[test]
fn far_jmp_and_call_real_and_protected() {
    let mut it = Interpreter::new();
    // Real mode: JMP 1234:0010 keeps the limit, sets base.
    let mut vm = Vm::new(GuestMemory::new(2 << 20).unwrap());
    vm.cpu.seg[SegReg::Cs as usize] = Segment::real(0);
    vm.cpu.eip = 0x100;
    put(
        &mut vm,
        0x100,
        &asm(16, 0x100, |a| a.jmp_far(0x1234, 0x10).unwrap()),
    );
    step(&mut it, &mut vm);
    assert_eq!(
        (
            sel(&vm, SegReg::Cs),
            vm.cpu.seg(SegReg::Cs).base,
            vm.cpu.eip
        ),
        (0x1234, 0x12340, 0x10)
    );
    // Protected: far CALL to a non-conforming ring-0 code segment, then RETF.
    let mut vm = pm_vm();
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.call_far(0x40, 0x300).unwrap()),
    );
    step(&mut it, &mut vm);
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (0x40, 0x300));
    assert_eq!(r32(&mut vm, 0x8000 - 8), 0x10007);
    assert_eq!(r32(&mut vm, 0x8000 - 4), K_CODE as u32);
    // Far JMP to a ring-3 code segment from ring 0 is #GP(selector).
    let mut vm = pm_vm();
    set_idt(&mut vm, 13, gate(K_CODE, 0x2D000, 0xE, 0, 0));
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.jmp_far(U_CODE, 0).unwrap()),
    );
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x2D000);
    assert_eq!(r32(&mut vm, 0x8000 - 16), (U_CODE & !3) as u32);
}

#[test]
fn page_fault_sets_cr2_and_pf_during_pf_is_df() {
    let mut vm = pm_vm();
    set_idt(&mut vm, 14, gate(K_CODE, 0x2E000, 0xE, 0, 0));
    interrupt::deliver_exception(&mut vm, Fault::pf(0xDEAD_B000, 2)).unwrap();
    assert_eq!(vm.cpu.cr2, 0xDEAD_B000);
    assert_eq!(vm.cpu.eip, 0x2E000);
    assert_eq!(r32(&mut vm, 0x8000 - 16), 2);
    // #PF whose gate is not present: #NP during #PF is a double fault.
    let mut vm = pm_vm();
    vm.mem.write_u64(
        (IDT + 14 * 8) as u64,
        gate(K_CODE, 0x2E000, 0xE, 0, 0) & !(0x8000u64 << 32),
    );
    set_idt(&mut vm, 8, gate(K_CODE, 0x28000, 0xE, 0, 0));
    interrupt::deliver_exception(&mut vm, Fault::pf(0x1234, 0)).unwrap();
    assert_eq!(vm.cpu.eip, 0x28000);
    assert_eq!(r32(&mut vm, 0x8000 - 16), 0);
    // A benign exception (#UD) whose gate faults: the #NP is delivered
    // serially, with EXT set and the IDT bit: 6*8 + 2 + 1.
    let mut vm = pm_vm();
    vm.mem.write_u64(
        (IDT + 6 * 8) as u64,
        gate(K_CODE, 0x2E000, 0xE, 0, 0) & !(0x8000u64 << 32),
    );
    set_idt(&mut vm, 11, gate(K_CODE, 0x2B000, 0xE, 0, 0));
    interrupt::deliver_exception(&mut vm, Fault::ud()).unwrap();
    assert_eq!(vm.cpu.eip, 0x2B000);
    assert_eq!(r32(&mut vm, 0x8000 - 16), 6 * 8 + 3);
}

#[test]
fn iret_same_privilege_flag_rules() {
    let mut it = Interpreter::new();
    // At CPL 3 with IOPL 0, IRET may not change IF or IOPL.
    let mut vm = pm_vm();
    to_ring3(&mut vm, 0x7000);
    vm.cpu.eflags = flags::FIXED1 | flags::IF;
    vm.mem.write_u32(0x7000, 0x10100);
    vm.mem.write_u32(0x7004, U_CODE as u32);
    vm.mem
        .write_u32(0x7008, flags::FIXED1 | flags::IOPL | flags::CF | flags::DF);
    put(&mut vm, 0x10000, &asm(32, 0x10000, |a| a.iretd().unwrap()));
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x10100);
    assert_eq!(sp_of(&vm), 0x700C);
    assert_eq!(
        vm.cpu.eflags,
        flags::FIXED1 | flags::IF | flags::CF | flags::DF
    );
    // At CPL 0 both change.
    let mut vm = pm_vm();
    vm.mem.write_u32(0x8000, 0x10100);
    vm.mem.write_u32(0x8004, K_CODE as u32);
    vm.mem
        .write_u32(0x8008, flags::FIXED1 | flags::IOPL | flags::CF);
    put(&mut vm, 0x10000, &asm(32, 0x10000, |a| a.iretd().unwrap()));
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eflags, flags::FIXED1 | flags::IOPL | flags::CF);
    // Returning to a more privileged level (RPL < CPL) is #GP(selector).
    let mut vm = pm_vm();
    to_ring3(&mut vm, 0x7000);
    set_idt(&mut vm, 13, gate(K_CODE, 0x2D000, 0xE, 0, 0));
    vm.mem.write_u32(0x7000, 0x10100);
    vm.mem.write_u32(0x7004, K_CODE as u32);
    vm.mem.write_u32(0x7008, flags::FIXED1);
    put(&mut vm, 0x10000, &asm(32, 0x10000, |a| a.iretd().unwrap()));
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x2D000);
    assert_eq!(r32(&mut vm, ESP0 - 24), K_CODE as u32);
}

#[test]
fn jmp_to_tss_clears_old_busy_and_call_nests() {
    let mut it = Interpreter::new();
    let setup = |vm: &mut Vm| {
        vm.mem.write_u32((TSS_DF + 0x20) as u64, 0x25000);
        vm.mem.write_u32((TSS_DF + 0x24) as u64, 0x2);
        vm.mem.write_u32((TSS_DF + 0x28 + 4 * 4) as u64, 0xA000);
        for (i, s) in [K_DATA, K_CODE, K_DATA, K_DATA, K_DATA, K_DATA]
            .iter()
            .enumerate()
        {
            vm.mem.write_u16((TSS_DF + 0x48 + 4 * i as u32) as u64, *s);
        }
    };
    let typ = |vm: &mut Vm, s: u16| vm.mem.read_u8((GDT + s as u32 + 5) as u64) & 0xF;
    let mut vm = pm_vm();
    setup(&mut vm);
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.jmp_far(DF_TSS_SEL, 0).unwrap()),
    );
    step(&mut it, &mut vm);
    assert_eq!((vm.cpu.tr.selector, vm.cpu.eip), (DF_TSS_SEL, 0x25000));
    assert_eq!(
        (typ(&mut vm, TSS_SEL), typ(&mut vm, DF_TSS_SEL)),
        (0x9, 0xB)
    );
    assert_eq!(vm.cpu.eflags & flags::NT, 0, "JMP does not nest");
    assert_eq!(
        r32(&mut vm, TSS0 + 0x20),
        0x10007,
        "saved EIP is after the JMP"
    );
    // CALL nests: back link and NT; the old task stays busy.
    let mut vm = pm_vm();
    setup(&mut vm);
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.call_far(DF_TSS_SEL, 0).unwrap()),
    );
    step(&mut it, &mut vm);
    assert_eq!(
        (typ(&mut vm, TSS_SEL), typ(&mut vm, DF_TSS_SEL)),
        (0xB, 0xB)
    );
    assert_ne!(vm.cpu.eflags & flags::NT, 0);
    assert_eq!(r16(&mut vm, TSS_DF), TSS_SEL);
    // Calling a busy TSS is #GP(selector).
    let mut vm = pm_vm();
    set_idt(&mut vm, 13, gate(K_CODE, 0x2D000, 0xE, 0, 0));
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.call_far(TSS_SEL, 0).unwrap()),
    );
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x2D000);
    assert_eq!(r32(&mut vm, 0x8000 - 16), TSS_SEL as u32);
}

#[test]
fn sixteen_bit_interrupt_gate_pushes_words() {
    let mut vm = pm_vm();
    set_idt(&mut vm, 0x50, gate(0x40, 0x1234, 0x6, 0, 0));
    let mut it = Interpreter::new();
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.int(0x50).unwrap()),
    );
    step(&mut it, &mut vm);
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (0x40, 0x1234));
    assert_eq!(sp_of(&vm), 0x8000 - 6);
    assert_eq!(r16(&mut vm, 0x8000 - 6), 0x0002, "IP, truncated to 16 bits");
    assert_eq!(r16(&mut vm, 0x8000 - 4), K_CODE);
    assert_eq!(r16(&mut vm, 0x8000 - 2), 0x202);
    assert_eq!(vm.cpu.eflags & flags::IF, 0);
}

#[test]
fn vme_redirects_int_and_iret_restores_vif() {
    use umbra_core::cpu::cr4;
    let mut vm = pm_vm();
    let mut it = Interpreter::new();
    vm.cpu.cr4 |= cr4::VME;
    // Redirection bitmap at TSS+0x68 (I/O map base 0x88); only vector
    // 0x22 goes to the protected-mode handler.
    vm.cpu.tr.limit = 0x88 + 0x10;
    vm.mem.write_u16((TSS0 + 0x66) as u64, 0x88);
    vm.mem
        .write_u8((TSS0 + 0x68 + 0x22 / 8) as u64, 1 << (0x22 & 7));
    // 8086 IVT[0x21] = 0300:0040.
    vm.mem.write_u32(0x21 * 4, 0x0300_0040);
    let v86_flags = flags::FIXED1 | flags::VM | flags::VIF | flags::CF;
    let frame = [0x100, 0x2000, v86_flags, 0x1000, 0x3000, 0, 0, 0, 0];
    for (i, v) in frame.iter().enumerate() {
        vm.mem.write_u32((0x7F00 + 4 * i) as u64, *v);
    }
    vm.cpu.gpr[ESP] = 0x7F00;
    put(&mut vm, 0x10000, &asm(32, 0x10000, |a| a.iretd().unwrap()));
    put(
        &mut vm,
        0x20100,
        &asm(16, 0x100, |a| {
            a.int(0x21).unwrap();
            a.int(0x22).unwrap();
        }),
    );
    put(&mut vm, 0x3040, &asm(16, 0x40, |a| a.iret().unwrap()));
    set_idt(&mut vm, 13, gate(K_CODE, 0x2D000, 0xE, 0, 0));
    step(&mut it, &mut vm);
    step(&mut it, &mut vm);
    assert!(vm.cpu.v86());
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (0x300, 0x40));
    assert_eq!(sp_of(&vm), 0x1000 - 6);
    // FLAGS image: IOPL shown as 3, IF = VIF (1), CF kept.
    assert_eq!(
        r16(&mut vm, 0x30000 + 0x1000 - 2) as u32,
        0x2 | flags::IOPL | flags::IF | flags::CF
    );
    assert_eq!(r16(&mut vm, 0x30000 + 0x1000 - 4), 0x2000);
    assert_eq!(r16(&mut vm, 0x30000 + 0x1000 - 6), 0x102);
    assert_eq!(vm.cpu.eflags & flags::VIF, 0, "VIF cleared");
    assert_eq!(vm.cpu.iopl(), 0);
    // IRET (16-bit, IOPL 0, VME): IF from the image goes to VIF.
    step(&mut it, &mut vm);
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (0x2000, 0x102));
    assert_ne!(vm.cpu.eflags & flags::VIF, 0);
    assert_eq!(vm.cpu.eflags & (flags::IF | flags::IOPL), 0);
    // Vector 0x22 has its bit set and IOPL < 3: #GP(0).
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x2D000);
    assert_eq!(r32(&mut vm, ESP0 - 40), 0);
    assert_eq!(r32(&mut vm, ESP0 - 36), 0x102);
}

#[test]
fn boot_from_real_mode_to_ring3_and_back() {
    let mut vm = Vm::new(GuestMemory::new(2 << 20).unwrap());
    let mut it = Interpreter::new();
    let entries = write_tables(&mut vm);
    // TSS0 is available until LTR marks it busy.
    vm.mem.write_u8((GDT + TSS_SEL as u32 + 5) as u64, 0x89);
    vm.mem.write_u16(0x7B00, (entries * 8 - 1) as u16);
    vm.mem.write_u32(0x7B02, GDT);
    vm.mem.write_u16(0x7B08, 0x7FF);
    vm.mem.write_u32(0x7B0A, IDT);
    set_idt(&mut vm, 0, gate(K_CODE, 0x7D80, 0xE, 0, 0));
    set_idt(&mut vm, 0x80, gate(K_CODE, 0x7E80, 0xF, 3, 0));
    vm.cpu.seg[SegReg::Cs as usize] = Segment::real(0);
    vm.cpu.seg[SegReg::Cs as usize].attr |= attr::CODE;
    vm.cpu.eip = 0x7C00;
    let real = asm(16, 0x7C00, |a| {
        a.cli().unwrap();
        a.lgdt(ptr(0x7B00)).unwrap();
        a.lidt(ptr(0x7B08)).unwrap();
        // LMSW rather than MOV CR0 keeps this test to one other family.
        a.mov(ax, 1).unwrap();
        a.lmsw(ax).unwrap();
        a.jmp_far(K_CODE, 0x7D00).unwrap();
    });
    put(&mut vm, 0x7C00, &real);
    let pm = asm(32, 0x7D00, |a| {
        a.mov(ax, K_DATA as u32).unwrap();
        a.mov(ds, ax).unwrap();
        a.mov(es, ax).unwrap();
        a.mov(ss, ax).unwrap();
        a.mov(esp, 0x8000).unwrap();
        a.mov(ax, TSS_SEL as u32).unwrap();
        a.ltr(ax).unwrap();
        a.xor(edx, edx).unwrap();
        a.mov(eax, 1).unwrap();
        a.xor(ecx, ecx).unwrap();
        a.div(ecx).unwrap(); // F7 F1: #DE, the handler skips it
        a.push(U_DATA as u32).unwrap();
        a.push(0x7000).unwrap();
        a.pushfd().unwrap();
        a.push(U_CODE as u32).unwrap();
        a.push(0x7E00).unwrap();
        a.iretd().unwrap();
    });
    put(&mut vm, 0x7D00, &pm);
    let de = asm(32, 0x7D80, |a| {
        a.mov(ebx, 0xDE).unwrap();
        a.add(dword_ptr(esp), 2).unwrap();
        a.iretd().unwrap();
    });
    put(&mut vm, 0x7D80, &de);
    let user = asm(32, 0x7E00, |a| {
        a.mov(eax, 42).unwrap();
        a.int(0x80).unwrap();
    });
    put(&mut vm, 0x7E00, &user);
    let sys = asm(32, 0x7E80, |a| {
        a.mov(ecx, eax).unwrap();
        a.hlt().unwrap();
    });
    put(&mut vm, 0x7E80, &sys);
    let exit = it.run(&mut vm, Budget::insns(200));
    assert_eq!(exit, Exit::Halted, "stats: {:?}", it.stats.unimplemented);
    assert_eq!(vm.cpu.gpr[EBX], 0xDE, "#DE handler ran");
    assert_eq!(vm.cpu.gpr[ECX], 42, "system call from ring 3 arrived");
    assert_eq!(vm.cpu.cpl(), 0);
    assert_eq!(sel(&vm, SegReg::Ss), K_DATA);
    let f = ESP0 - 20;
    assert_eq!(sp_of(&vm), f);
    assert_eq!(r32(&mut vm, f + 4), U_CODE as u32);
    assert_eq!(r32(&mut vm, f + 12), 0x7000);
    // LTR marked TSS0 busy.
    assert_eq!(vm.mem.read_u8((GDT + TSS_SEL as u32 + 5) as u64) & 0xF, 0xB);
    assert_eq!(it.stats.exceptions[0], 1);
}

#[test]
fn call_16bit_tss_and_t_bit_trap() {
    let mut it = Interpreter::new();
    let mut vm = pm_vm();
    // 16-bit TSS: IP 0x0E, FLAGS 0x10, AX.. 0x12, ES CS SS DS 0x22.., LDT 0x2A.
    vm.mem.write_u16((TSS16 + 0x0E) as u64, 0x0500);
    vm.mem.write_u16((TSS16 + 0x10) as u64, 0x0002);
    vm.mem.write_u16((TSS16 + 0x12 + 3 * 2) as u64, 0xBEEF); // BX
    vm.mem.write_u16((TSS16 + 0x12 + 4 * 2) as u64, 0x6000); // SP
    for (i, s) in [K_DATA, 0x40, K_DATA, K_DATA].iter().enumerate() {
        vm.mem.write_u16((TSS16 + 0x22 + 2 * i as u32) as u64, *s);
    }
    vm.cpu.gpr[EBX] = 0x1234_5678;
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.call_far(TSS16_SEL, 0).unwrap()),
    );
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.tr.selector, TSS16_SEL);
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (0x40, 0x500));
    assert!(!vm.cpu.code32());
    // Only the low halves load from a 16-bit TSS.
    assert_eq!(vm.cpu.gpr[EBX], 0x1234_BEEF);
    assert_eq!(sel(&vm, SegReg::Fs), 0, "FS is not in a 16-bit TSS");
    assert_ne!(vm.cpu.eflags & flags::NT, 0);
    assert_eq!(r16(&mut vm, TSS16), TSS_SEL, "back link");
    assert_eq!(
        vm.mem.read_u8((GDT + TSS16_SEL as u32 + 5) as u64) & 0xF,
        0x3,
        "busy 16-bit TSS"
    );

    // A 32-bit TSS with its T bit: #DB before the new task's first
    // instruction, DR6.BT set, the frame on the new task's stack.
    let mut vm = pm_vm();
    vm.mem.write_u32((TSS_DF + 0x20) as u64, 0x25000);
    vm.mem.write_u32((TSS_DF + 0x24) as u64, 0x2);
    vm.mem.write_u32((TSS_DF + 0x28 + 4 * 4) as u64, 0xA000);
    for (i, s) in [K_DATA, K_CODE, K_DATA, K_DATA, K_DATA, K_DATA]
        .iter()
        .enumerate()
    {
        vm.mem.write_u16((TSS_DF + 0x48 + 4 * i as u32) as u64, *s);
    }
    vm.mem.write_u16((TSS_DF + 0x64) as u64, 1);
    set_idt(&mut vm, 1, gate(K_CODE, 0x21000, 0xE, 0, 0));
    vm.cpu.dr[7] = 0x0000_0403; // L0 | G0 | reserved bit 10
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.jmp_far(DF_TSS_SEL, 0).unwrap()),
    );
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x21000);
    assert_ne!(vm.cpu.dr[6] & (1 << 15), 0, "DR6.BT");
    assert_eq!(
        r32(&mut vm, 0xA000 - 12),
        0x25000,
        "returns to the new task's entry"
    );
    assert_eq!(vm.cpu.dr[7], 0x0000_0402, "task switch clears L0 only");
}

#[test]
fn nmi_blocks_nmis_until_iret() {
    let mut vm = pm_vm();
    let mut it = Interpreter::new();
    set_idt(&mut vm, 2, gate(K_CODE, 0x27000, 0xE, 0, 0));
    put(&mut vm, 0x27000, &asm(32, 0x27000, |a| a.iretd().unwrap()));
    vm.cpu.eflags = flags::FIXED1; // IF clear: NMIs are not maskable
    vm.cpu.pending_nmi = true;
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x27000);
    assert!(vm.cpu.nmi_blocked);
    // A second NMI waits while the handler runs: IRET executes instead.
    vm.cpu.pending_nmi = true;
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x10000, "IRET ran, not the NMI");
    assert!(!vm.cpu.nmi_blocked);
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x27000, "then the second NMI");
}

#[test]
fn single_step_traps_after_instructions_but_not_into_int_handlers() {
    let mut vm = pm_vm();
    let mut it = Interpreter::new();
    set_idt(&mut vm, 1, gate(K_CODE, 0x21000, 0xE, 0, 0));
    set_idt(&mut vm, 0x30, gate(K_CODE, 0x22000, 0xE, 0, 0));
    vm.cpu.eflags |= flags::TF;
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| {
            a.mov(ax, K_DATA as u32).unwrap(); // 66 B8 iw: 4 bytes
            a.int(0x30).unwrap();
        }),
    );
    step(&mut it, &mut vm);
    // #DB trap after MOV: return address is the next instruction, BS set.
    assert_eq!(vm.cpu.eip, 0x21000);
    assert_ne!(vm.cpu.dr[6] & (1 << 14), 0);
    assert_eq!(r32(&mut vm, 0x8000 - 12), 0x10004);
    assert_eq!(r32(&mut vm, 0x8000 - 4) & flags::TF, flags::TF);
    // From the trap's context, continue at INT 0x30 with TF set again.
    let mut vm2 = pm_vm();
    set_idt(&mut vm2, 1, gate(K_CODE, 0x21000, 0xE, 0, 0));
    set_idt(&mut vm2, 0x30, gate(K_CODE, 0x22000, 0xE, 0, 0));
    vm2.cpu.eflags |= flags::TF;
    put(
        &mut vm2,
        0x10000,
        &asm(32, 0x10000, |a| a.int(0x30).unwrap()),
    );
    step(&mut it, &mut vm2);
    assert_eq!(vm2.cpu.eip, 0x22000, "no #DB owed after INT n");
    assert_eq!(
        r32(&mut vm2, 0x8000 - 4) & flags::TF,
        flags::TF,
        "pushed image keeps TF"
    );
}

/// xorshift64*: a fixed-seed generator so that the robustness run below is
/// repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Random descriptor tables, TSS contents, modes and control transfers
/// must only ever produce architectural outcomes: never a host panic.
#[test]
fn random_tables_and_transfers_never_panic() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let mut it = Interpreter::new();
    let mut shutdowns = 0;
    for _ in 0..3000 {
        let mut vm = pm_vm();
        // Mostly plausible gates, so that deliveries go deep.
        for v in 0..=255u8 {
            let r = rng.next();
            if r.is_multiple_of(3) {
                continue;
            }
            let typ = [0x5, 0x6, 0x7, 0xE, 0xF, 0xE, 0xF][((r >> 4) % 7) as usize];
            let sels = [K_CODE, U_CODE, TSS_SEL, DF_TSS_SEL, 0x40, 0x1F8, 0];
            let gsel = sels[((r >> 8) % 7) as usize];
            let g = gate(
                gsel,
                (r >> 16) as u32 & 0xFFFF,
                typ,
                ((r >> 40) & 3) as u8,
                0,
            );
            set_idt(&mut vm, v, g);
        }
        for t in [TSS0, TSS_DF] {
            for (i, s) in [K_DATA, K_CODE, K_DATA, K_DATA, K_DATA, K_DATA]
                .iter()
                .enumerate()
            {
                vm.mem.write_u16((t + 0x48 + 4 * i as u32) as u64, *s);
            }
            vm.mem.write_u32((t + 0x38) as u64, 0x9000);
        }
        // Scribble over part of the GDT, the IDT and both TSSes.
        for _ in 0..24 {
            let r = rng.next();
            let base = [GDT, IDT, TSS0, TSS_DF][(r % 4) as usize];
            let off = ((r >> 8) % 0x100) as u32 & !3;
            vm.mem.write_u32((base + off) as u64, (r >> 32) as u32);
        }
        let r = rng.next();
        match r % 4 {
            0 => to_ring3(&mut vm, (rng.next() as u32) & 0xFFFF),
            1 => {
                vm.cpu.eflags |= flags::VM | (((r >> 8) & 3) as u32) << 12;
                for s in SegReg::ALL {
                    vm.cpu.seg[s as usize] = Segment::real((rng.next() as u16) & 0x1FFF);
                }
            }
            2 => vm.cpu.cr0 &= !cr0::PE,
            _ => {}
        }
        if r & 0x100 != 0 {
            vm.cpu.cr4 |= umbra_core::cpu::cr4::VME;
        }
        vm.cpu.gpr[ESP] = rng.next() & 0xFFFF_FFFF;
        vm.cpu.gpr[EAX] = rng.next() & 0xFFFF;
        let (sel, off) = (rng.next() as u16, rng.next() as u32);
        let pick = rng.next() % 10;
        let code = asm(if vm.cpu.code32() { 32 } else { 16 }, 0, |a| match pick {
            0 => a.jmp_far(sel, off & 0xFFFF).unwrap(),
            1 => a.call_far(sel, off & 0xFFFF).unwrap(),
            2 => a.retf().unwrap(),
            3 => a.retf_1(off & 0xFF).unwrap(),
            4 => a.iretd().unwrap(),
            5 => a.iret().unwrap(),
            6 => a.int(off & 0xFF).unwrap(),
            7 => a.mov(ss, ax).unwrap(),
            8 => a.mov(ds, ax).unwrap(),
            _ => a.int3().unwrap(),
        });
        let eip = vm.cpu.eip;
        let at = vm.cpu.seg(SegReg::Cs).base.wrapping_add(eip) & 0x1F_FFFF;
        put(&mut vm, at, &code);
        // Whatever happens is fine as long as it is a `Step`.
        for _ in 0..4 {
            if let Step::Shutdown(_) = it.step(&mut vm) {
                shutdowns += 1;
                break;
            }
        }
    }
    // Most rounds must get somewhere other than a triple fault, or this
    // test would exercise nothing.
    eprintln!(
        "random rounds: {shutdowns} of 3000 shut down; {:?}",
        it.stats.exceptions
    );
    assert!(shutdowns < 2000);
}

#[test]
fn conforming_targets_keep_cpl() {
    let mut it = Interpreter::new();
    // INT from ring 3 into conforming ring-0 code: same stack, CPL 3.
    let mut vm = pm_vm();
    to_ring3(&mut vm, 0x7000);
    set_idt(&mut vm, 0x60, gate(CONF_CODE, 0x21000, 0xF, 3, 0));
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.int(0x60).unwrap()),
    );
    step(&mut it, &mut vm);
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (CONF_CODE | 3, 0x21000));
    assert_eq!(vm.cpu.cpl(), 3);
    assert_eq!((sel(&vm, SegReg::Ss), sp_of(&vm)), (U_DATA, 0x7000 - 12));
    assert_eq!(r32(&mut vm, 0x7000 - 8), U_CODE as u32);
    // Far CALL from ring 3 to the same conforming segment.
    let mut vm = pm_vm();
    to_ring3(&mut vm, 0x7000);
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.call_far(CONF_CODE, 0x300).unwrap()),
    );
    step(&mut it, &mut vm);
    assert_eq!((sel(&vm, SegReg::Cs), vm.cpu.eip), (CONF_CODE | 3, 0x300));
    assert_eq!(sp_of(&vm), 0x7000 - 8);
    // From V86 mode a conforming handler is #GP(selector + EXT=0 for INT3).
    let mut vm = pm_vm();
    let frame = [
        0x100,
        0x2000,
        flags::FIXED1 | flags::VM,
        0x1000,
        0x3000,
        0,
        0,
        0,
        0,
    ];
    for (i, v) in frame.iter().enumerate() {
        vm.mem.write_u32((0x7F00 + 4 * i) as u64, *v);
    }
    vm.cpu.gpr[ESP] = 0x7F00;
    put(&mut vm, 0x10000, &asm(32, 0x10000, |a| a.iretd().unwrap()));
    put(&mut vm, 0x20100, &asm(16, 0x100, |a| a.int3().unwrap()));
    set_idt(&mut vm, 3, gate(CONF_CODE, 0x21000, 0xE, 3, 0));
    set_idt(&mut vm, 13, gate(K_CODE, 0x2D000, 0xE, 0, 0));
    step(&mut it, &mut vm);
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x2D000);
    assert_eq!(r32(&mut vm, ESP0 - 40), CONF_CODE as u32);
    assert_eq!(r32(&mut vm, ESP0 - 36), 0x100, "fault: returns to the INT3");
}

#[test]
fn kernel_stack_page_fault_becomes_df_through_task_gate() {
    let mut vm = pm_vm();
    let mut it = Interpreter::new();
    // Identity-map the first 2 MiB with user pages, except the ring-0
    // stack page 0x8000.
    let (pd, pt) = (0x80000u32, 0x81000u32);
    vm.mem.write_u32(pd as u64, pt | 0x7);
    for p in 0..512u32 {
        let pte = if p == 8 { 0 } else { (p << 12) | 0x7 };
        vm.mem.write_u32((pt + 4 * p) as u64, pte);
    }
    vm.cpu.cr3 = pd;
    vm.cpu.cr0 |= cr0::PG;
    vm.mmu.set_cr3(&vm.cpu);
    vm.mmu.flush_all(&vm.cpu);
    to_ring3(&mut vm, 0x7000);
    set_idt(&mut vm, 0x80, gate(K_CODE, 0x21000, 0xE, 3, 0));
    set_idt(&mut vm, 14, gate(K_CODE, 0x2E000, 0xE, 0, 0));
    set_idt(&mut vm, 8, gate(DF_TSS_SEL, 0, 0x5, 0, 0));
    vm.mem.write_u32((TSS_DF + 0x1C) as u64, pd); // CR3
    vm.mem.write_u32((TSS_DF + 0x20) as u64, 0x25000);
    vm.mem.write_u32((TSS_DF + 0x24) as u64, 0x2);
    vm.mem.write_u32((TSS_DF + 0x28 + 4 * 4) as u64, 0xA000);
    for (i, s) in [K_DATA, K_CODE, K_DATA, K_DATA, K_DATA, K_DATA]
        .iter()
        .enumerate()
    {
        vm.mem.write_u16((TSS_DF + 0x48 + 4 * i as u32) as u64, *s);
    }
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.int(0x80).unwrap()),
    );
    step(&mut it, &mut vm);
    // The INT's push faulted (supervisor write, not present), the #PF's
    // push faulted the same way: #DF, through the task gate.
    assert_eq!(vm.cpu.cr2, ESP0 - 4);
    assert_eq!(vm.cpu.tr.selector, DF_TSS_SEL);
    assert_eq!(vm.cpu.eip, 0x25000);
    assert_eq!(r32(&mut vm, 0xA000 - 4), 0);
    // The interrupted task is the ring-3 one, saved at the INT.
    assert_eq!(r32(&mut vm, TSS0 + 0x20), 0x10000);
    assert_eq!(r16(&mut vm, TSS0 + 0x4C), U_CODE);
    assert_eq!(it.stats.exceptions[14], 1);
}

#[test]
fn bad_tss_stack_is_ts_with_ext_per_source_and_16bit_tss_stacks_work() {
    let mut it = Interpreter::new();
    // TSS0.SS0 = null. #TS goes to a conforming handler (no stack switch).
    let setup = |vm: &mut Vm| {
        to_ring3(vm, 0x7000);
        vm.mem.write_u16((TSS0 + 8) as u64, 0);
        set_idt(vm, 0x80, gate(K_CODE, 0x21000, 0xE, 3, 0));
        set_idt(vm, 0x41, gate(K_CODE, 0x21000, 0xE, 0, 0));
        set_idt(vm, 10, gate(CONF_CODE, 0x2A000, 0xE, 0, 0));
        put(vm, 0x10000, &asm(32, 0x10000, |a| a.int(0x80).unwrap()));
    };
    let mut vm = pm_vm();
    setup(&mut vm);
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x2A000);
    assert_eq!(
        r32(&mut vm, 0x7000 - 16),
        0,
        "#TS(0): software INT, EXT clear"
    );
    // The same from an external interrupt: EXT set.
    let mut vm = pm_vm();
    setup(&mut vm);
    vm.cpu.pending_irq = Some(0x41);
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x2A000);
    assert_eq!(r32(&mut vm, 0x7000 - 16), 1, "#TS(EXT)");
    assert_eq!(
        r32(&mut vm, 0x7000 - 12),
        0x10000,
        "returns to the interrupted EIP"
    );

    // A 16-bit TSS supplies SS0:SP0 at offsets 4 and 2.
    let mut vm = pm_vm();
    to_ring3(&mut vm, 0x7000);
    vm.mem.write_u16((TSS16 + 2) as u64, 0x6000);
    vm.mem.write_u16((TSS16 + 4) as u64, K_DATA);
    let t = vm.mem.read_u64((GDT + TSS16_SEL as u32) as u64);
    vm.cpu.tr = Segment::from_descriptor(TSS16_SEL, t as u32, (t >> 32) as u32);
    set_idt(&mut vm, 0x80, gate(K_CODE, 0x21000, 0xE, 3, 0));
    put(
        &mut vm,
        0x10000,
        &asm(32, 0x10000, |a| a.int(0x80).unwrap()),
    );
    vm.cpu.gpr[ESP] |= 0xABCD_0000; // 32-bit stack: ESP is replaced whole
    step(&mut it, &mut vm);
    assert_eq!(vm.cpu.eip, 0x21000);
    assert_eq!(sp_of(&vm), 0x6000 - 20);
    assert_eq!(r32(&mut vm, 0x6000 - 8), 0xABCD_7000, "old ESP");
}
