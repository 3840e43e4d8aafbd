//! Focused tests of the translator (`umbra_translator::Translator`): small
//! guest programs that stress what a block cache can get wrong —
//! self-modifying code (same block, next block, a block reached by a
//! direct jump, a store through another linear alias of the code frame,
//! a device rewriting code between runs),
//! a page fault in the middle of a hot block, an interrupt that must stop
//! a loop that never ends, a CR3 switch under shared code, REP string
//! instructions across a page boundary, code across a page boundary, and a
//! budget that ends inside a block.
//!
//! Each program runs on the translator and on the interpreter; the final
//! state of each is checked against values computed by hand from the
//! program and the SDM, and the two engines' states (registers, retired
//! instructions, all of RAM) must be equal.
//!
//! Programs are laid out by the differential harness (`Program`): code at
//! `layout::CODE_BASE`, every exception vector v halts at
//! `layout::STUB_BASE + v`, 2-level paging maps identity.

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;
use umbra::diff::program::{layout, pte};
use umbra::diff::{Mode, Program};
use umbra_core::bus::InterruptController;
use umbra_core::cpu::{SegReg, IF, RF};
use umbra_core::interp::Interpreter;
use umbra_core::{Budget, Engine, Exit, Vm};
use umbra_translator::{Translator, DEFAULT_CACHE_BYTES};

const EAX: usize = 0;
const ECX: usize = 1;
const EDX: usize = 2;
const ESP: usize = 4;
const ESI: usize = 6;
const EDI: usize = 7;

/// Vector of #PF (SDM Vol. 3 6.15).
const PF: u32 = 14;
/// #PF error code bits (SDM Vol. 3 4.7): the page was present.
const PF_P: u32 = 1 << 0;
/// #PF error code: the access was a write.
const PF_W: u32 = 1 << 1;

/// Assemble 32-bit code at `ip`.
fn asm32(ip: u32, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    f(&mut a).unwrap();
    a.assemble(ip as u64).unwrap()
}

/// Assemble 32-bit code at `ip` that needs the address of one of its own
/// labels as an immediate or displacement: `f` gets that address (a
/// placeholder on the first pass) and returns the label. Returns the code
/// and the label's address.
fn asm32_self(
    ip: u32,
    f: impl Fn(&mut CodeAssembler, u32) -> Result<CodeLabel, IcedError>,
) -> (Vec<u8>, u32) {
    let pass = |addr: u32| {
        let mut a = CodeAssembler::new(32).unwrap();
        let l = f(&mut a, addr).unwrap();
        let r = a
            .assemble_options(
                ip as u64,
                BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
            )
            .unwrap();
        (r.inner.code_buffer.clone(), r.label_ip(&l).unwrap() as u32)
    };
    let (_, at) = pass(ip);
    let (code, at2) = pass(at);
    assert_eq!(at, at2, "label moved between passes");
    (code, at)
}

/// Code pieces placed at fixed linear addresses from `CODE_BASE` on, the
/// gaps filled with HLT.
fn place(pieces: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let end = pieces
        .iter()
        .map(|(at, c)| at - layout::CODE_BASE + c.len() as u32)
        .max()
        .unwrap_or(0);
    let mut code = vec![0xF4u8; end as usize];
    for (at, c) in pieces {
        let o = (at - layout::CODE_BASE) as usize;
        assert!(
            code[o..o + c.len()].iter().all(|&b| b == 0xF4),
            "pieces overlap"
        );
        code[o..o + c.len()].copy_from_slice(c);
    }
    code
}

fn r32(vm: &Vm, i: usize) -> u32 {
    vm.cpu.gpr[i] as u32
}

/// Linear address of the HLT the CPU stopped on.
fn hlt_at(vm: &Vm) -> u32 {
    vm.cpu.seg[SegReg::Cs as usize]
        .base
        .wrapping_add(vm.cpu.eip)
        .wrapping_sub(1)
}

fn jit() -> Box<dyn Engine> {
    Box::new(Translator::new(DEFAULT_CACHE_BYTES).expect("code memory"))
}

fn interp() -> Box<dyn Engine> {
    Box::new(Interpreter::new())
}

/// Run until HLT (or 10 M instructions, then fail).
fn run_to_hlt(name: &str, e: &mut dyn Engine, vm: &mut Vm) {
    for _ in 0..10 {
        match e.run(vm, Budget::insns(1_000_000)) {
            Exit::Halted => return,
            Exit::BudgetSpent if vm.cpu.halted => return,
            Exit::BudgetSpent => {}
            x => panic!("{name}: stopped with {x:?} at {:#x}", vm.cpu.eip),
        }
    }
    panic!(
        "{name}: no HLT after 10 M instructions, EIP {:#x}",
        vm.cpu.eip
    );
}

/// The two engines' machines must be equal: registers, control registers,
/// retired instructions and every byte of RAM.
fn assert_same(a: &Vm, b: &Vm) {
    let regs = |vm: &Vm| {
        let g: Vec<u32> = vm.cpu.gpr.iter().map(|&r| r as u32).collect();
        (
            g,
            vm.cpu.eip,
            vm.cpu.eflags,
            vm.cpu.cr0,
            vm.cpu.cr2,
            vm.cpu.cr3,
            vm.cpu.halted,
        )
    };
    assert_eq!(regs(a), regs(b), "registers: jit (left) vs interp (right)");
    let segs = |vm: &Vm| {
        vm.cpu
            .seg
            .iter()
            .map(|s| (s.selector, s.base, s.limit, s.attr))
            .collect::<Vec<_>>()
    };
    assert_eq!(segs(a), segs(b), "segments: jit vs interp");
    assert_eq!(
        a.clock.retired, b.clock.retired,
        "retired instructions: jit vs interp"
    );
    let (ra, rb) = (a.mem.ram(), b.mem.ram());
    if let Some(i) = (0..ra.len().min(rb.len())).find(|&i| ra[i] != rb[i]) {
        panic!(
            "RAM differs first at {i:#x}: jit {:#04x}, interp {:#04x}",
            ra[i], rb[i]
        );
    }
}

/// Run `p` (after `setup` on its fresh machine) to HLT on the translator
/// and on the interpreter, check both with `check`, compare them; return
/// the translator's machine.
fn both(p: &Program, setup: impl Fn(&mut Vm), check: impl Fn(&str, &mut Vm)) -> Vm {
    let mut t = Translator::new(DEFAULT_CACHE_BYTES).expect("code memory");
    let mut vj = p.build_vm().unwrap();
    setup(&mut vj);
    run_to_hlt("jit", &mut t, &mut vj);
    assert!(t.stats().entries > 0, "jit: no block ran as generated code");
    check("jit", &mut vj);
    let mut vi = p.build_vm().unwrap();
    setup(&mut vi);
    run_to_hlt("interp", &mut Interpreter::new(), &mut vi);
    check("interp", &mut vi);
    assert_same(&vj, &vi);
    vj
}

fn no_setup(_: &mut Vm) {}

/// Drop cached translations of the page tables after writing them.
fn flush_tlb(vm: &mut Vm) {
    let cpu = vm.cpu.clone();
    vm.mmu.set_cr3(&cpu);
    vm.mmu.flush_all(&cpu);
}

/// Set the page-table entry of linear `lin` in the table at `pt`.
fn map(vm: &mut Vm, pt: u32, lin: u32, frame: u32, flags: u32) {
    vm.mem
        .write_u32((pt + 4 * ((lin >> 12) & 0x3FF)) as u64, frame | flags);
}

// ---- self-modifying code --------------------------------------------------

/// A store into the block that is running, to an instruction after the
/// store: the patched immediate must be the one that executes (SDM Vol. 3
/// 11.6: a write to code is seen by the next instruction fetched).
#[test]
fn smc_store_into_the_current_block() {
    let (code, target) = asm32_self(layout::CODE_BASE, |a, t| {
        let mut l = a.create_label();
        a.mov(ecx, 3u32)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        // Patch the low immediate byte of the MOV below with CL.
        a.mov(byte_ptr(t + 1), cl)?;
        a.set_label(&mut l)?;
        a.mov(eax, 0x1111_1111u32)?;
        a.add(esi, eax)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()?;
        Ok(l)
    });
    let p = Program::new(Mode::Prot32, code);
    both(&p, no_setup, |n, vm| {
        // Three passes with CL = 3, 2, 1 patched in before the MOV runs.
        let want = (0x1111_1103u32)
            .wrapping_add(0x1111_1102)
            .wrapping_add(0x1111_1101);
        assert_eq!(r32(vm, ESI), want, "{n}");
        assert_eq!(vm.mem.read_u8(target as u64 + 1), 1, "{n}");
    });
}

/// Loop body for the next-block and jumped-to-block tests: `top` patches
/// the immediate of `mov ecx, imm32` at `target` with AL (0x22, 0x23, ...)
/// then jumps there; `target` adds ECX to ESI and jumps `back`. Returns
/// the expected ESI after `n` passes.
fn patched_sum(n: u32) -> u32 {
    (0..n).fold(0u32, |s, k| s.wrapping_add(0x1111_1100 | (0x22 + k)))
}

/// A store into the block that follows the running one in memory, already
/// translated and run by the previous pass.
#[test]
fn smc_store_into_the_next_block() {
    const N: u32 = 10;
    let (code, target) = asm32_self(layout::CODE_BASE, |a, t| {
        let mut top = a.create_label();
        let mut l = a.create_label();
        a.xor(esi, esi)?;
        a.mov(edi, N)?;
        a.mov(al, 0x22u32)?;
        a.set_label(&mut top)?;
        a.mov(byte_ptr(t + 1), al)?;
        a.inc(al)?;
        a.jmp(l)?; // ends the block; `l` starts the next one
        a.set_label(&mut l)?;
        a.mov(ecx, 0x1111_1111u32)?;
        a.add(esi, ecx)?;
        a.dec(edi)?;
        a.jnz(top)?;
        a.hlt()?;
        Ok(l)
    });
    let p = Program::new(Mode::Prot32, code);
    both(&p, no_setup, |n, vm| {
        assert_eq!(r32(vm, ESI), patched_sum(N), "{n}");
        assert_eq!(vm.mem.read_u8(target as u64 + 1), 0x22 + N as u8 - 1, "{n}");
    });
}

/// Code for the jumped-to-block tests: the loop at CODE_BASE stores into
/// `store_at` (the target's immediate through some linear address), the
/// target block sits on the next page and jumps back.
fn jump_target_program(mode: Mode, store_at: u32, n: u32) -> Program {
    let target = layout::CODE_BASE + 0x1000;
    let (a_code, back) = asm32_self(layout::CODE_BASE, |a, _| {
        let mut top = a.create_label();
        let mut back = a.create_label();
        a.xor(esi, esi)?;
        a.mov(edi, n)?;
        a.mov(al, 0x22u32)?;
        a.set_label(&mut top)?;
        a.mov(byte_ptr(store_at), al)?;
        a.inc(al)?;
        a.jmp(target as u64)?;
        a.set_label(&mut back)?;
        a.dec(edi)?;
        a.jnz(top)?;
        a.hlt()?;
        Ok(back)
    });
    let b_code = asm32(target, |a| {
        a.mov(ecx, 0x1111_1111u32)?;
        a.add(esi, ecx)?;
        a.jmp(back as u64)
    });
    Program::new(
        mode,
        place(&[(layout::CODE_BASE, a_code), (target, b_code)]),
    )
}

/// A store into a block on another page that the loop reaches by a direct
/// jump (a chained edge once blocks chain): each pass must see the new
/// immediate.
#[test]
fn smc_store_into_a_block_reached_by_a_direct_jump() {
    const N: u32 = 40;
    let imm = layout::CODE_BASE + 0x1000 + 1;
    for mode in [Mode::Prot32, Mode::Paging] {
        let p = jump_target_program(mode, imm, N);
        both(&p, no_setup, |n, vm| {
            assert_eq!(r32(vm, ESI), patched_sum(N), "{n} {mode}");
            assert_eq!(vm.mem.read_u8(imm as u64), 0x22 + N as u8 - 1, "{n}");
        });
    }
}

/// The same through another linear page mapped to the code frame (paging):
/// the translation is keyed by the frame, so a write through any alias
/// must drop it.
#[test]
fn smc_store_through_another_linear_alias_of_the_code_frame() {
    const N: u32 = 40;
    const ALIAS: u32 = 0x30_0000;
    let frame = layout::CODE_BASE + 0x1000;
    let p = jump_target_program(Mode::Paging, ALIAS + 1, N);
    both(
        &p,
        |vm| {
            map(vm, layout::PT_BASE, ALIAS, frame, pte::P | pte::RW);
            flush_tlb(vm);
        },
        |n, vm| {
            assert_eq!(r32(vm, ESI), patched_sum(N), "{n}");
            assert_eq!(vm.mem.read_u8(frame as u64 + 1), 0x22 + N as u8 - 1, "{n}");
        },
    );
}

// ---- faults and interrupts ------------------------------------------------

/// A read on the third instruction of a hot loop body faults on its fifth
/// pass (the data pointer walks into a not-present page): the state is the
/// one before that instruction, the frame holds its EIP and the error
/// code, CR2 the address (SDM Vol. 3 6.15 #PF, 4.7).
#[test]
fn page_fault_on_the_third_instruction_of_a_hot_block() {
    let (code, load) = asm32_self(layout::CODE_BASE, |a, _| {
        let mut top = a.create_label();
        let mut load = a.create_label();
        a.xor(edi, edi)?;
        a.mov(ecx, 5u32)?;
        a.set_label(&mut top)?;
        a.mov(eax, ecx)?;
        a.add(eax, 7)?;
        a.set_label(&mut load)?;
        a.mov(edx, dword_ptr(ebx + edi))?;
        a.add(edi, 0x200)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()?;
        Ok(load)
    });
    let mut p = Program::new(Mode::Paging, code);
    // EBX = DATA_BASE + 0x800; passes read +0, +0x200, ... +0x800 = the
    // first byte of data page 1, which is not present.
    p.data_pages = [0, pte::P | pte::RW, pte::P | pte::RW];
    p.data = vec![0; 0x1000];
    p.data[0xE00..0xE04].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    both(&p, no_setup, |n, vm| {
        assert_eq!(hlt_at(vm), layout::STUB_BASE + PF, "{n}: #PF stub");
        assert_eq!(vm.cpu.cr2, layout::DATA_BASE + 0x1000, "{n}");
        // Fifth pass: ECX = 1, EAX = 1 + 7, EDX from the fourth pass.
        assert_eq!(r32(vm, ECX), 1, "{n}");
        assert_eq!(r32(vm, EAX), 8, "{n}");
        assert_eq!(r32(vm, EDI), 0x800, "{n}");
        assert_eq!(r32(vm, EDX), 0xDEAD_BEEF, "{n}");
        // Frame: error code, EIP, CS, EFLAGS (no privilege change).
        let top = layout::STACK_INIT - 16;
        assert_eq!(r32(vm, ESP), top, "{n}");
        let f: Vec<u32> = (0..4)
            .map(|i| vm.mem.read_u32(top as u64 + 4 * i))
            .collect();
        // Not present, read, supervisor: error code 0. EFLAGS after
        // 1 + 7 = 8: no CF/AF/ZF/SF/OF, PF clear (08h has one bit set);
        // RF set in the image, as for every fault (SDM Vol. 3 17.3.1.1).
        let flags = 0x2 | RF;
        assert_eq!(
            f,
            vec![0, load, 0x08, flags],
            "{n}: error code, EIP, CS, EFLAGS"
        );
    });
}

/// `sti; L: inc eax; jmp L` never ends by itself. After exactly 10,000
/// instructions the platform raises an IRQ between two runs: it must be
/// taken before any further instruction.
#[test]
fn an_irq_stops_a_hot_loop_that_never_exits() {
    const VEC: u8 = 0x40;
    let (code, jmp_at) = asm32_self(layout::CODE_BASE, |a, _| {
        let mut top = a.create_label();
        let mut j = a.create_label();
        a.sti()?;
        a.set_label(&mut top)?;
        a.inc(eax)?;
        a.set_label(&mut j)?;
        a.jmp(top)?;
        Ok(j)
    });
    let p = Program::new(Mode::Prot32, code);
    /// INTR always asserted, vector VEC + 1.
    struct Line;
    impl InterruptController for Line {
        fn intr(&self) -> bool {
            true
        }
        fn ack(&mut self) -> u8 {
            VEC + 1
        }
    }
    for by_intc in [false, true] {
        let mut out = Vec::new();
        for (name, mut e) in [("jit", jit()), ("interp", interp())] {
            let mut vm = p.build_vm().unwrap();
            // Warm up (translated and hot), then stop exactly at 10,000.
            assert_eq!(e.run(&mut vm, Budget::insns(5_000)), Exit::BudgetSpent);
            assert_eq!(e.run(&mut vm, Budget::insns(5_000)), Exit::BudgetSpent);
            assert_eq!(vm.clock.retired, 10_000, "{name}");
            // STI, then 9,999 alternating INC/JMP from the INC: 5,000 INCs,
            // the next instruction is the JMP.
            assert_eq!(r32(&vm, EAX), 5_000, "{name}");
            assert_eq!(vm.cpu.eip, jmp_at, "{name}");
            let vector = if by_intc {
                vm.intc = Some(Box::new(Line));
                VEC + 1
            } else {
                vm.cpu.pending_irq = Some(VEC);
                VEC
            };
            let x = e.run(&mut vm, Budget::insns(1_000_000));
            assert!(x == Exit::Halted || vm.cpu.halted, "{name}: {x:?}");
            vm.intc = None;
            assert_eq!(hlt_at(&vm), layout::STUB_BASE + vector as u32, "{name}");
            assert_eq!(r32(&vm, EAX), 5_000, "{name}: no INC after the IRQ");
            let top = layout::STACK_INIT - 12;
            let f: Vec<u32> = (0..3)
                .map(|i| vm.mem.read_u32(top as u64 + 4 * i))
                .collect();
            // EFLAGS of INC 5,000 (1388h): PF (88h has two bits set), IF.
            assert_eq!(f, vec![jmp_at, 0x08, 0x2 | 0x4 | IF], "{name}: frame");
            assert_eq!(vm.cpu.eflags & IF, 0, "{name}: interrupt gate clears IF");
            out.push(vm);
        }
        assert_same(&out[0], &out[1]);
    }
}

/// `L: cli ; inc ecx ; sti ; inc eax ; inc edx ; jmp L`, hot, then an IRQ
/// pending after the CLI: it is taken after the instruction in STI's shadow
/// (INC EAX) and before the next (SDM Vol. 2B STI). The translator runs
/// STI and its shadow in one block, without the interpreter, and with no
/// event pending goes on in generated code after it.
#[test]
fn an_irq_waits_for_the_instruction_after_sti_and_no_longer() {
    const VEC: u8 = 0x40;
    let (code, inc_edx) = asm32_self(layout::CODE_BASE, |a, _| {
        let mut top = a.create_label();
        let mut d = a.create_label();
        a.set_label(&mut top)?;
        a.cli()?;
        a.inc(ecx)?;
        a.sti()?;
        a.inc(eax)?;
        a.set_label(&mut d)?;
        a.inc(edx)?;
        a.jmp(top)?;
        Ok(d)
    });
    let p = Program::new(Mode::Prot32, code);
    let mut out = Vec::new();
    for (name, mut e) in [("jit", jit()), ("interp", interp())] {
        let mut vm = p.build_vm().unwrap();
        // 1,000 whole passes and the CLI of the next: IF clear.
        assert_eq!(e.run(&mut vm, Budget::insns(3_000)), Exit::BudgetSpent);
        assert_eq!(e.run(&mut vm, Budget::insns(3_001)), Exit::BudgetSpent);
        assert_eq!(vm.cpu.eip, layout::CODE_BASE + 1, "{name}");
        assert_eq!(vm.cpu.eflags & IF, 0, "{name}");
        vm.cpu.pending_irq = Some(VEC);
        let x = e.run(&mut vm, Budget::insns(1_000_000));
        assert!(x == Exit::Halted || vm.cpu.halted, "{name}: {x:?}");
        assert_eq!(hlt_at(&vm), layout::STUB_BASE + VEC as u32, "{name}");
        let regs = (r32(&vm, EAX), r32(&vm, ECX), r32(&vm, EDX));
        assert_eq!(regs, (1_001, 1_001, 1_000), "{name}: EAX, ECX, EDX");
        let top = layout::STACK_INIT - 12;
        assert_eq!(vm.mem.read_u32(top as u64), inc_edx, "{name}: return EIP");
        out.push(vm);
    }
    assert_same(&out[0], &out[1]);
    // The translator alone: no instruction of the loop was interpreted
    // for the shadow.
    let mut t = Translator::new(DEFAULT_CACHE_BYTES).expect("code memory");
    let mut vm = p.build_vm().unwrap();
    assert_eq!(t.run(&mut vm, Budget::insns(6_000)), Exit::BudgetSpent);
    let shadow = t.stats().interp_why[umbra_translator::engine::step_why::SHADOW];
    assert!(shadow < 5, "{shadow} instructions interpreted in a shadow");
    // With no event pending after the shadow, the block went on in
    // generated code (chained) instead of leaving for the dispatcher.
    let next = t.stats().exits[umbra_translator::ctx::exit::NEXT as usize];
    assert!(next < 5, "{next} exits to the dispatcher after the shadow");
    assert!(
        t.stats().sti_continues >= 990,
        "{}",
        t.stats().sti_continues
    );
}

/// A data segment load ends its block, but when it leaves the block's mode
/// as it was (the same flat selector again), the block goes on in
/// generated code instead of leaving for the dispatcher; one that changes
/// the mode (to or from DS based at DATA_BASE with a 64 KiB limit) leaves,
/// and the loads after it go through the new base.
#[test]
fn a_segment_load_that_keeps_the_mode_stays_in_generated_code() {
    use umbra::diff::program::sel;
    let code = asm32(layout::CODE_BASE, |a| {
        let mut top = a.create_label();
        a.xor(ebx, ebx)?;
        a.xor(edx, edx)?;
        a.mov(edi, 100u32)?;
        a.set_label(&mut top)?;
        a.mov(ecx, sel::DATA32 as u32)?;
        a.mov(ds, cx)?;
        a.mov(ds, cx)?;
        a.add(ebx, dword_ptr(layout::DATA_BASE + 0x10))?;
        a.mov(ecx, sel::DATA16 as u32)?;
        a.mov(ds, cx)?;
        a.add(edx, dword_ptr(0x10))?;
        a.dec(edi)?;
        a.jnz(top)?;
        a.mov(ecx, sel::DATA32 as u32)?;
        a.mov(ds, cx)?;
        a.hlt()
    });
    let mut p = Program::new(Mode::Prot32, code);
    p.data = vec![0; 0x20];
    p.data[0x10..0x14].copy_from_slice(&7u32.to_le_bytes());
    both(&p, no_setup, |n, vm| {
        assert_eq!((r32(vm, 3), r32(vm, EDX)), (700, 700), "{n}: EBX, EDX");
    });
    let mut t = Translator::new(DEFAULT_CACHE_BYTES).expect("code memory");
    let mut vm = p.build_vm().unwrap();
    run_to_hlt("jit", &mut t, &mut vm);
    let s = t.stats();
    // Each pass: the first flat load changes the mode (DS was DATA16; on
    // the first pass it was flat already) and leaves, the second keeps it
    // and goes on, the DATA16 load changes it and leaves.
    assert!(
        s.monitor_continues >= 100,
        "{} went on",
        s.monitor_continues
    );
    let exits = s.exits[umbra_translator::ctx::exit::MONITOR as usize];
    assert!((199..210).contains(&exits), "{exits} monitor exits");
}

/// Two address spaces share the code page but map the data page 0x300000
/// to different frames; the loop switches CR3 twice a pass. Loads and a
/// store must go where the current CR3 says, the code keep running.
#[test]
fn cr3_switch_between_spaces_sharing_the_code_page() {
    const DATA: u32 = 0x30_0000;
    const PD_B: u32 = 0x6000;
    const PT_B: u32 = 0x7000;
    let (frame_a, frame_b) = (layout::DATA_BASE, layout::DATA_BASE + 0x1000);
    let code = asm32(layout::CODE_BASE, |a| {
        let mut top = a.create_label();
        a.mov(edi, 3u32)?;
        a.set_label(&mut top)?;
        a.mov(ecx, layout::PD_BASE)?;
        a.mov(cr3, ecx)?;
        a.add(eax, dword_ptr(DATA))?;
        a.mov(ecx, PD_B)?;
        a.mov(cr3, ecx)?;
        a.add(edx, dword_ptr(DATA))?;
        a.mov(dword_ptr(DATA + 8), edi)?;
        a.dec(edi)?;
        a.jnz(top)?;
        a.hlt()
    });
    let mut p = Program::new(Mode::Paging, code);
    p.data = vec![0; 0x2000];
    p.data[0..4].copy_from_slice(&0x1111_1111u32.to_le_bytes());
    p.data[0x1000..0x1004].copy_from_slice(&0x2222_2222u32.to_le_bytes());
    both(
        &p,
        |vm| {
            // Space B: a copy of A's table with DATA -> frame B.
            for i in 0..1024u64 {
                let e = vm.mem.read_u32(layout::PT_BASE as u64 + 4 * i);
                vm.mem.write_u32(PT_B as u64 + 4 * i, e);
            }
            map(vm, layout::PT_BASE, DATA, frame_a, pte::P | pte::RW);
            map(vm, PT_B, DATA, frame_b, pte::P | pte::RW);
            vm.mem
                .write_u32(PD_B as u64, PT_B | pte::P | pte::RW | pte::US);
            flush_tlb(vm);
        },
        |n, vm| {
            assert_eq!(r32(vm, EAX), 0x3333_3333, "{n}");
            assert_eq!(r32(vm, EDX), 0x6666_6666, "{n}");
            assert_eq!(vm.cpu.cr3, PD_B, "{n}");
            // The store went to B's frame on every pass (last EDI = 1).
            assert_eq!(vm.mem.read_u32(frame_b as u64 + 8), 1, "{n}");
            assert_eq!(vm.mem.read_u32(frame_a as u64 + 8), 0, "{n}");
        },
    );
}

/// An access whose offset runs past 4 GiB in a flat base-0 segment
/// exceeds the segment limit (#GP(0), SDM Vol. 3 5.3), even when the last
/// page and page 0 are both mapped and the last page is hot in the
/// shadow table: the inline lookup must not take it as a hit in the
/// first page. The flags set before it must reach the handler's frame.
#[test]
fn an_offset_wrapping_at_4_gib_faults_with_both_pages_mapped() {
    const GP: u32 = 13;
    const PT_TOP: u32 = 0x7000;
    let top = layout::DATA_BASE + 0x1000;
    let code = asm32(layout::CODE_BASE, |a| {
        a.mov(ecx, dword_ptr(0xFFFF_FFF0u32))?;
        a.mov(ebx, 0xFFFF_FFFEu32)?;
        a.cmp(ecx, 0x5566_7788)?;
        a.mov(edx, dword_ptr(ebx))?;
        a.hlt()
    });
    let mut p = Program::new(Mode::Paging, code);
    p.data = vec![0; 0x2000];
    p.data[0x1FF0..0x1FF4].copy_from_slice(&0x5566_7788u32.to_le_bytes());
    p.data[0x1FFC..0x2000].copy_from_slice(&0x1122_3344u32.to_le_bytes());
    let setup = |vm: &mut Vm| {
        // 0xFFFFF000 -> the data area's page 1; page 0 is mapped identity.
        vm.mem
            .write_u32(layout::PD_BASE as u64 + 4 * 1023, PT_TOP | pte::P | pte::RW);
        for i in 0..1024u64 {
            vm.mem.write_u32(PT_TOP as u64 + 4 * i, 0);
        }
        map(vm, PT_TOP, 0xFFFF_F000, top, pte::P | pte::RW);
        flush_tlb(vm);
    };
    both(&p, setup, |n, vm| {
        assert_eq!(hlt_at(vm), layout::STUB_BASE + GP, "{n}: #GP");
        assert_eq!(r32(vm, ECX), 0x5566_7788, "{n}: the first load");
        assert_eq!(r32(vm, EDX), 0, "{n}: nothing loaded");
        // Frame: error code 0, EIP of the faulting MOV, CS, EFLAGS with
        // ZF from the CMP.
        let frame = r32(vm, ESP) as u64;
        assert_eq!(vm.mem.read_u32(frame), 0, "{n}: error code");
        assert_ne!(
            vm.mem.read_u32(frame + 12) & 0x40,
            0,
            "{n}: ZF in the frame"
        );
    });
}

// ---- string instructions and page boundaries -----------------------------

/// REP MOVSB whose destination crosses from data page 0 into page 1.
#[test]
fn rep_movsb_across_a_page_boundary() {
    let code = asm32(layout::CODE_BASE, |a| {
        a.mov(esi, layout::DATA_BASE)?;
        a.mov(edi, layout::DATA_BASE + 0xF80)?;
        a.mov(ecx, 0x100u32)?;
        a.cld()?;
        a.rep().movsb()?;
        a.hlt()
    });
    let mut p = Program::new(Mode::Paging, code);
    p.data = (0..0x100u32).map(|i| (i * 7 + 3) as u8).collect();
    both(&p, no_setup, |n, vm| {
        assert_eq!(r32(vm, ECX), 0, "{n}");
        assert_eq!(r32(vm, ESI), layout::DATA_BASE + 0x100, "{n}");
        assert_eq!(r32(vm, EDI), layout::DATA_BASE + 0x1080, "{n}");
        let mut got = vec![0u8; 0x100];
        vm.mem.read((layout::DATA_BASE + 0xF80) as u64, &mut got);
        let want: Vec<u8> = (0..0x100u32).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(got, want, "{n}");
    });
}

/// REP STOSD of 0x100 dwords from 0x100 bytes before a not-present page:
/// the 64 dwords on the present page are stored, then #PF with ECX/EDI at the
/// faulting iteration and the pushed EIP at the REP STOSD (SDM Vol. 2
/// "REP": a fault leaves the registers at the iteration that faulted).
#[test]
fn rep_stosd_faults_on_the_second_page() {
    let (code, rep_at) = asm32_self(layout::CODE_BASE, |a, _| {
        let mut r = a.create_label();
        a.mov(eax, 0xA5A5_A5A5u32)?;
        a.mov(edi, layout::DATA_BASE + 0x1F00)?;
        a.mov(ecx, 0x100u32)?;
        a.cld()?;
        a.set_label(&mut r)?;
        a.rep().stosd()?;
        a.hlt()?;
        Ok(r)
    });
    let mut p = Program::new(Mode::Paging, code);
    // Data page 1 writable, page 2 not present.
    p.data_pages = [pte::P | pte::RW, 0, pte::P | pte::RW];
    let page2 = layout::DATA_BASE + 0x2000;
    both(&p, no_setup, |n, vm| {
        assert_eq!(hlt_at(vm), layout::STUB_BASE + PF, "{n}");
        assert_eq!(vm.cpu.cr2, page2, "{n}");
        assert_eq!(r32(vm, ECX), 0x100 - 0x40, "{n}");
        assert_eq!(r32(vm, EDI), page2, "{n}");
        let top = layout::STACK_INIT - 16;
        let err = vm.mem.read_u32(top as u64);
        let eip = vm.mem.read_u32(top as u64 + 4);
        // Write to a not-present page from supervisor mode.
        assert_eq!((err, eip), (PF_W, rep_at), "{n}");
        let mut got = vec![0u8; 0x100];
        vm.mem.read((page2 - 0x100) as u64, &mut got);
        assert!(got.iter().all(|&b| b == 0xA5), "{n}: first page filled");
    });
}

/// REP MOVSB faulting: (1) its source runs from data page 1 into the
/// not-present page 2 after 16 bytes (read, not present: error code 0);
/// (2) its destination page is read-only under CR0.WP, so the first write
/// faults (present, write: error code 3). ECX counts the bytes not moved.
#[test]
fn rep_movsb_faults_on_read_and_on_write() {
    let data = layout::DATA_BASE;
    let rw = pte::P | pte::RW;
    for (src, dst, pages, want_cr2, err, left) in [
        (data + 0x1FF0, data, [rw, 0, rw], data + 0x2000, 0, 0x10u32),
        (
            data,
            data + 0x1000,
            [pte::P, rw, rw],
            data + 0x1000,
            PF_P | PF_W,
            0x20,
        ),
    ] {
        let code = asm32(layout::CODE_BASE, |a| {
            a.mov(esi, src)?;
            a.mov(edi, dst)?;
            a.mov(ecx, 0x20u32)?;
            a.cld()?;
            a.rep().movsb()?;
            a.hlt()
        });
        let mut p = Program::new(Mode::Paging, code);
        p.data_pages = pages;
        p.data = (0..0x4000u32).map(|i| i as u8 ^ 0x5A).collect();
        both(&p, no_setup, |n, vm| {
            assert_eq!(hlt_at(vm), layout::STUB_BASE + PF, "{n}");
            assert_eq!(vm.cpu.cr2, want_cr2, "{n}");
            assert_eq!(r32(vm, ECX), left, "{n}");
            assert_eq!(r32(vm, ESI), src + 0x20 - left, "{n}");
            assert_eq!(r32(vm, EDI), dst + 0x20 - left, "{n}");
            let got = vm.mem.read_u32((layout::STACK_INIT - 16) as u64);
            assert_eq!(got, err, "{n}: error code");
        });
    }
}

/// An instruction whose bytes span two code pages, run hot, then patched
/// on its second page; and a block that ends exactly at a page end.
#[test]
fn code_across_a_page_boundary() {
    // X: mov eax, imm32 at page end - 3: opcode and 2 bytes on page 0,
    // imm bytes 2-3 on page 1.
    let x = layout::CODE_BASE + 0xFFD;
    // Y: two 3-byte ADDs ending at the page end, RET on the next page.
    let y = layout::CODE_BASE + 0x1FFA;
    let imm_hi = x + 4;
    let main = asm32(layout::CODE_BASE, |a| {
        let mut top = a.create_label();
        let mut skip = a.create_label();
        a.xor(esi, esi)?;
        a.mov(edi, 4u32)?;
        a.set_label(&mut top)?;
        a.call(x as u64)?;
        a.call(y as u64)?;
        a.cmp(edi, 2)?;
        a.jne(skip)?;
        a.mov(byte_ptr(imm_hi), 0u32)?;
        a.set_label(&mut skip)?;
        a.dec(edi)?;
        a.jnz(top)?;
        a.hlt()
    });
    let xs = asm32(x, |a| {
        a.mov(eax, 0x1234_5678u32)?;
        a.add(esi, eax)?;
        a.ret()
    });
    assert_eq!(xs[0], 0xB8, "MOV EAX, imm32 is 5 bytes");
    let ys = asm32(y, |a| {
        a.add(esi, 1)?;
        a.add(esi, 2)?;
        a.ret()
    });
    assert_eq!(ys.len(), 7, "two 3-byte ADDs and RET");
    for mode in [Mode::Prot32, Mode::Paging] {
        let p = Program::new(
            mode,
            place(&[
                (layout::CODE_BASE, main.clone()),
                (x, xs.clone()),
                (y, ys.clone()),
            ]),
        );
        both(&p, no_setup, |n, vm| {
            // Passes with EDI = 4, 3, 2 see 12345678h; the patch after
            // the third call makes the fourth see 00345678h.
            let want = (0x1234_5678u32 * 3)
                .wrapping_add(0x0034_5678)
                .wrapping_add(4 * 3);
            assert_eq!(r32(vm, ESI), want, "{n} {mode}");
            assert_eq!(r32(vm, EAX), 0x0034_5678, "{n} {mode}");
        });
    }
}

/// The code of `cross_page_program`, from `page2 - 6`: `add esi, 1`,
/// then `mov eax, 12345678h` (5 bytes: B8 and two immediate bytes before
/// `page2`, the other two from it), then `add esi, eax ; ret`. Returns the
/// bytes before `page2` and those from it.
fn cross_page_code(page2: u32) -> (Vec<u8>, Vec<u8>) {
    let xs = asm32(page2 - 6, |a| {
        a.add(esi, 1)?;
        a.mov(eax, 0x1234_5678u32)?;
        a.add(esi, eax)?;
        a.ret()
    });
    assert_eq!(
        &xs[3..6],
        &[0xB8, 0x78, 0x56],
        "MOV EAX, imm32 at page end - 3"
    );
    (xs[..6].to_vec(), xs[6..].to_vec())
}

/// A loop that calls `cross_page_code(page2)` `calls` times (EDI counts
/// down from `calls`); before the call with EDI = `at`, set the PTE of
/// `page2` to `pte_val` and INVLPG it. Run it with `map_page_table`.
fn cross_page_program(page2: u32, calls: u32, at: u32, pte_val: u32) -> Program {
    let x = page2 - 6;
    let pte_at = layout::PT_BASE + 4 * ((page2 >> 12) & 0x3FF);
    let main = asm32(layout::CODE_BASE, |a| {
        let mut top = a.create_label();
        let mut call = a.create_label();
        a.xor(esi, esi)?;
        a.mov(edi, calls)?;
        a.set_label(&mut top)?;
        a.cmp(edi, at)?;
        a.jne(call)?;
        a.mov(dword_ptr(pte_at), pte_val)?;
        a.invlpg(byte_ptr(page2))?;
        // The alias's shadow entry takes the slot `page2`'s had, with
        // the frame `page2` had.
        a.mov(ebx, dword_ptr(page2 + ALIAS_DISTANCE))?;
        a.set_label(&mut call)?;
        a.call(x as u64)?;
        a.dec(edi)?;
        a.jnz(top)?;
        a.hlt()
    });
    let (head, tail) = cross_page_code(page2);
    let mut p = Program::new(
        Mode::Paging,
        place(&[(layout::CODE_BASE, main), (x, head), (page2, tail.clone())]),
    );
    // The frame the page may be pointed to instead: the immediate's top
    // bytes 00 00, the same ADD and RET.
    p.data = vec![0; 0x2000];
    p.data_pages = [pte::P | pte::RW; 3];
    p.data[0x1002..0x1000 + tail.len()].copy_from_slice(&tail[2..]);
    p
}

/// Where `cross_page_program` reads the code frame of `page2` through
/// another linear page: 16 MiB on, the same shadow slot
/// (`umbra_core::mmu::shadow::slot`).
const ALIAS_DISTANCE: u32 = 0x100_0000;

/// Map the page table at `layout::PT_BASE` (identity, writable) so that
/// the program can change its entries, and `CODE_BASE + 0x2000 +
/// ALIAS_DISTANCE` to the frame of `CODE_BASE + 0x2000` (page table at
/// 0x6000).
fn map_page_table(vm: &mut Vm) {
    const PT_ALIAS: u32 = 0x6000;
    map(
        vm,
        layout::PT_BASE,
        layout::PT_BASE,
        layout::PT_BASE,
        pte::P | pte::RW,
    );
    let alias = layout::CODE_BASE + 0x2000 + ALIAS_DISTANCE;
    vm.mem.write_u32(
        (layout::PD_BASE + 4 * (alias >> 22)) as u64,
        PT_ALIAS | pte::P | pte::RW,
    );
    map(
        vm,
        PT_ALIAS,
        alias,
        layout::CODE_BASE + 0x2000,
        pte::P | pte::RW,
    );
    flush_tlb(vm);
}

/// An instruction whose bytes span two pages runs as generated code (the
/// block ends with it, after a check that the next page is still mapped
/// to the frame it was decoded from), hot, and sees a remap of that page
/// to another frame with other bytes (SDM Vol. 3 4.10.4: after INVLPG the
/// fetch uses the new translation).
#[test]
fn code_across_a_page_runs_translated_and_follows_a_remap_of_its_second_page() {
    let page2 = layout::CODE_BASE + 0x2000;
    let other = (layout::DATA_BASE + 0x1000) | pte::P | pte::RW;
    let p = cross_page_program(page2, 200, 100, other);
    let vm = both(&p, map_page_table, |n, vm| {
        // 100 calls (EDI = 200 .. 101) with 12345678h, 100 with 5678h,
        // each also adding 1.
        let want = (0x1234_5678u32.wrapping_mul(100))
            .wrapping_add(0x5678 * 100)
            .wrapping_add(200);
        assert_eq!(r32(vm, ESI), want, "{n}");
        assert_eq!(r32(vm, EAX), 0x5678, "{n}");
        // The old frame's first bytes through the alias: 34 12, then
        // ADD ESI, EAX (01 C6).
        assert_eq!(r32(vm, 3), 0xC601_1234, "{n}: EBX");
    });
    drop(vm);
    // The same on the translator alone: the crossing MOV ran in
    // generated code, not once per call in the interpreter.
    let mut t = Translator::new(DEFAULT_CACHE_BYTES).expect("code memory");
    let mut vm = p.build_vm().unwrap();
    map_page_table(&mut vm);
    run_to_hlt("jit", &mut t, &mut vm);
    let steps = t.stats().interp_steps;
    assert!(steps < 20, "{steps} instructions interpreted for 200 calls");
}

/// The next page of a hot page-crossing instruction becomes not present:
/// the fetch faults (#PF, CR2 = that page, EIP of the instruction) instead
/// of running the bytes the block was made from.
#[test]
fn code_across_a_page_faults_when_its_second_page_goes_away() {
    let page2 = layout::CODE_BASE + 0x2000;
    let p = cross_page_program(page2, 50, 20, 0);
    both(&p, map_page_table, |n, vm| {
        assert_eq!(hlt_at(vm), layout::STUB_BASE + PF, "{n}: #PF stub");
        assert_eq!(vm.cpu.cr2, page2, "{n}: the next page");
        // 30 whole calls (EDI = 50 .. 21), then the ADD ESI, 1 of the
        // 31st before the MOV faulted.
        assert_eq!(
            r32(vm, ESI),
            0x1234_5678u32.wrapping_mul(30).wrapping_add(31),
            "{n}"
        );
        // Frame: error code 0 (not present, read, supervisor), EIP of the
        // MOV, CS.
        let frame = r32(vm, ESP) as u64;
        assert_eq!(vm.mem.read_u32(frame), 0, "{n}: error code");
        assert_eq!(vm.mem.read_u32(frame + 4), page2 - 3, "{n}: EIP");
        assert_eq!(vm.mem.read_u32(frame + 8), 0x08, "{n}: CS");
    });
}

/// Two hot branch targets on other pages whose addresses share a set of
/// the inline branch-target table (`codegen::flow::ib_set`): called in
/// turn, both stay in the table, so the calls do not leave generated code
/// for the dispatcher after the first few.
#[test]
fn two_targets_sharing_an_inline_table_set_both_hit() {
    use umbra_translator::codegen::flow::ib_set;
    use umbra_translator::ctx::exit;
    let a = layout::CODE_BASE + 0x2100;
    let b = layout::CODE_BASE + 0x4106;
    assert_eq!(ib_set(a), ib_set(b), "the two targets share a set");
    let main = asm32(layout::CODE_BASE, |asm| {
        let mut top = asm.create_label();
        asm.xor(eax, eax)?;
        asm.xor(edx, edx)?;
        asm.mov(edi, 200u32)?;
        asm.set_label(&mut top)?;
        asm.call(a as u64)?;
        asm.call(b as u64)?;
        asm.dec(edi)?;
        asm.jnz(top)?;
        asm.hlt()
    });
    let fa = asm32(a, |asm| {
        asm.inc(eax)?;
        asm.ret()
    });
    let fb = asm32(b, |asm| {
        asm.inc(edx)?;
        asm.ret()
    });
    let p = Program::new(
        Mode::Prot32,
        place(&[(layout::CODE_BASE, main), (a, fa), (b, fb)]),
    );
    both(&p, no_setup, |n, vm| {
        assert_eq!((r32(vm, EAX), r32(vm, EDX)), (200, 200), "{n}");
    });
    let mut t = Translator::new(DEFAULT_CACHE_BYTES).expect("code memory");
    let mut vm = p.build_vm().unwrap();
    run_to_hlt("jit", &mut t, &mut vm);
    let misses = t.stats().exits[exit::INDIRECT as usize];
    assert!(misses < 20, "{misses} inline-lookup misses in 400 calls");
}

// ---- budgets ----------------------------------------------------------------

/// `L: inc eax; inc ecx; inc edx; jmp L`: any budget stops after exactly
/// that many instructions, inside the block or not, fresh or hot.
#[test]
fn a_budget_that_ends_inside_a_block_is_exact() {
    let code = asm32(layout::CODE_BASE, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.inc(eax)?;
        a.inc(ecx)?;
        a.inc(edx)?;
        a.jmp(top)
    });
    let p = Program::new(Mode::Prot32, code);
    // After `n` instructions: n / 4 full passes, then the first n % 4
    // instructions of the next; INCs are 1 byte, so EIP = top + n % 4.
    let check = |name: &str, vm: &Vm, n: u64| {
        let (full, r) = ((n / 4) as u32, (n % 4) as u32);
        assert_eq!(vm.clock.retired, n, "{name}: retired after {n}");
        assert_eq!(r32(vm, EAX), full + (r >= 1) as u32, "{name} at {n}");
        assert_eq!(r32(vm, ECX), full + (r >= 2) as u32, "{name} at {n}");
        assert_eq!(r32(vm, EDX), full + (r >= 3) as u32, "{name} at {n}");
        assert_eq!(vm.cpu.eip, layout::CODE_BASE + r, "{name} at {n}");
    };
    // Fresh machines, one run each.
    for n in [1u64, 2, 3, 4, 5, 7, 1001, 1002, 1003] {
        let mut out = Vec::new();
        for (name, mut e) in [("jit", jit()), ("interp", interp())] {
            let mut vm = p.build_vm().unwrap();
            assert_eq!(e.run(&mut vm, Budget::insns(n)), Exit::BudgetSpent);
            check(name, &vm, n);
            out.push(vm);
        }
        assert_same(&out[0], &out[1]);
    }
    // One machine, many runs of odd sizes after the block is hot.
    let mut e = jit();
    let mut vm = p.build_vm().unwrap();
    let mut total = 0;
    for n in [400u64, 1, 2, 3, 5, 6, 7, 9, 11, 13, 1, 1, 1, 2, 999] {
        assert_eq!(e.run(&mut vm, Budget::insns(n)), Exit::BudgetSpent);
        total += n;
        check("jit", &vm, total);
    }
}

/// `Budget::about(n)` lets the translator finish the block it enters
/// instead of running the budget's last instructions one by one: on the
/// 4-instruction loop of `a_budget_that_ends_inside_a_block_is_exact`, a
/// run of about 1 instruction from the loop's top retires the whole pass,
/// in generated code; one from inside the block (no block starts there
/// yet) runs exactly 1 in the interpreter. The interpreter runs exactly n.
#[test]
fn an_approximate_budget_finishes_the_block() {
    let code = asm32(layout::CODE_BASE, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.inc(eax)?;
        a.inc(ecx)?;
        a.inc(edx)?;
        a.jmp(top)
    });
    let p = Program::new(Mode::Prot32, code);
    let mut t = Translator::new(DEFAULT_CACHE_BYTES).expect("code memory");
    let mut vm = p.build_vm().unwrap();
    assert_eq!(t.run(&mut vm, Budget::insns(400)), Exit::BudgetSpent);
    let steps = t.stats().interp_steps;
    assert_eq!(t.run(&mut vm, Budget::about(1)), Exit::BudgetSpent);
    assert_eq!(vm.clock.retired, 404, "one whole pass");
    assert_eq!(
        (r32(&vm, EAX), r32(&vm, ECX), r32(&vm, EDX)),
        (101, 101, 101)
    );
    assert_eq!(vm.cpu.eip, layout::CODE_BASE);
    assert_eq!(t.stats().interp_steps, steps, "no instruction interpreted");
    let mut vi = p.build_vm().unwrap();
    let mut i = Interpreter::new();
    assert_eq!(i.run(&mut vi, Budget::insns(401)), Exit::BudgetSpent);
    assert_eq!(i.run(&mut vi, Budget::about(2)), Exit::BudgetSpent);
    assert_eq!(vi.clock.retired, 403, "the interpreter runs exactly n");
    // From the middle of the pass (EIP = top + 3: the JMP), about 1 is
    // exactly the JMP.
    let mut vm = p.build_vm().unwrap();
    let mut t = Translator::new(DEFAULT_CACHE_BYTES).expect("code memory");
    assert_eq!(t.run(&mut vm, Budget::insns(403)), Exit::BudgetSpent);
    assert_eq!(t.run(&mut vm, Budget::about(1)), Exit::BudgetSpent);
    assert_eq!(vm.clock.retired, 404);
    assert_eq!(vm.cpu.eip, layout::CODE_BASE);
}

/// A device (DMA) rewrites code between two runs, through `Vm::write_phys`
/// or plain `GuestMemory::write`: the next run must execute the new bytes.
#[test]
fn code_rewritten_by_the_host_between_runs() {
    let (code, mov_at) = asm32_self(layout::CODE_BASE, |a, _| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.mov(eax, 0x1111_1111u32)?;
        a.inc(ecx)?;
        a.jmp(top)?;
        Ok(top)
    });
    let p = Program::new(Mode::Prot32, code);
    for via_phys in [false, true] {
        let mut out = Vec::new();
        for (name, mut e) in [("jit", jit()), ("interp", interp())] {
            let mut vm = p.build_vm().unwrap();
            // 300 passes of 3 instructions: back at the MOV, hot.
            e.run(&mut vm, Budget::insns(900));
            assert_eq!((r32(&vm, ECX), vm.cpu.eip), (300, mov_at), "{name}");
            let imm = mov_at as u64 + 1;
            if via_phys {
                vm.write_phys(imm, 4, 0x5555_5555);
            } else {
                vm.mem.write(imm, &0x6666_6666u32.to_le_bytes());
            }
            // One more pass: the MOV runs with the new immediate.
            e.run(&mut vm, Budget::insns(3));
            let want = if via_phys { 0x5555_5555 } else { 0x6666_6666 };
            assert_eq!(
                r32(&vm, EAX),
                want,
                "{name}: new code (write_phys {via_phys})"
            );
            assert_eq!(r32(&vm, ECX), 301, "{name}");
            out.push(vm);
        }
        assert_same(&out[0], &out[1]);
    }
}

/// The dirty bitmap (`Vm::take_dirty`) sees every store, including the
/// translator's native stores through the shadow page table, and sees a
/// frame again after it was taken: a hot loop stores to data page 0 and
/// only loads from data page 2.
#[test]
fn dirty_bitmap_sees_native_stores_after_each_take() {
    let store = layout::DATA_BASE as u64 >> 12;
    let loaded = (layout::DATA_BASE as u64 + 0x2000) >> 12;
    let code = asm32(layout::CODE_BASE, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.mov(dword_ptr(layout::DATA_BASE + 0x100), ecx)?;
        a.mov(edx, dword_ptr(layout::DATA_BASE + 0x2100))?;
        a.inc(ecx)?;
        a.jmp(top)?;
        Ok(())
    });
    for mode in [Mode::Prot32, Mode::Paging] {
        let p = Program::new(mode, code.clone());
        for (name, mut e) in [("jit", jit()), ("interp", interp())] {
            let mut vm = p.build_vm().unwrap();
            vm.take_dirty(); // the harness's own writes
            for round in 1..=3u32 {
                // 100 passes of 4 instructions: the loop is hot and chained.
                e.run(&mut vm, Budget::insns(400));
                assert_eq!(r32(&vm, ECX), 100 * round, "{name} {mode:?}");
                let d = vm.take_dirty();
                assert!(
                    d.contains(&store),
                    "{name} {mode:?} round {round}: stored frame {store:#x} not dirty: {d:x?}"
                );
                assert!(
                    !d.contains(&loaded),
                    "{name} {mode:?} round {round}: loaded-only frame {loaded:#x} dirty"
                );
                assert!(vm.take_dirty().is_empty(), "{name} {mode:?}: taken twice");
            }
        }
    }
}

/// With CR0.AM and EFLAGS.AC set at CPL 3, a misaligned load in a hot
/// loop raises #AC (SDM Vol. 3 6.15, vector 17) on the translator as on
/// the interpreter: the loop counts 49 aligned passes, then faults on the
/// load. (The layout has no TSS for the switch to CPL 0, so the delivery
/// ends in a triple fault with EIP still at the load.)
#[test]
fn alignment_check_at_cpl3_faults_on_both_engines() {
    let (code, load_at) = asm32_self(layout::CODE_BASE, |a, _| {
        let mut top = a.create_label();
        let mut aligned = a.create_label();
        a.set_label(&mut top)?;
        a.inc(ecx)?;
        // Aligned until ECX reaches 50, then 1 byte off.
        a.mov(edx, layout::DATA_BASE + 0x100)?;
        a.cmp(ecx, 50)?;
        a.jb(aligned)?;
        a.inc(edx)?;
        a.set_label(&mut aligned)?;
        a.mov(eax, dword_ptr(edx))?;
        a.jmp(top)?;
        Ok(aligned)
    });
    let p = Program::new(Mode::Prot32, code);
    let mut out = Vec::new();
    for (name, mut e) in [("jit", jit()), ("interp", interp())] {
        let mut vm = p.build_vm().unwrap();
        vm.cpu.cr0 |= 1 << 18; // CR0.AM
        vm.cpu.eflags |= 1 << 18; // EFLAGS.AC
                                  // CPL 3 on the flat segments (RPL and DPL 3 in the caches).
        for s in [SegReg::Cs, SegReg::Ss] {
            let seg = &mut vm.cpu.seg[s as usize];
            seg.selector |= 3;
            seg.attr |= 3 << 5;
        }
        let x = e.run(&mut vm, Budget::insns(2_000));
        assert!(matches!(x, Exit::Shutdown(_)), "{name}: {x:?}");
        assert_eq!(
            (r32(&vm, ECX), vm.cpu.eip),
            (50, load_at),
            "{name}: faulted on the first misaligned load"
        );
        out.push(vm);
    }
    assert_same(&out[0], &out[1]);
}

/// A block translated under one CS limit does not run under a smaller
/// one: after the loop is hot, the limit is cut to its first byte, and the
/// next instruction fetched past it raises #GP(0) (SDM Vol. 3 5.3).
#[test]
fn a_smaller_cs_limit_is_not_run_past() {
    const GP: u32 = 13;
    let code = asm32(layout::CODE_BASE, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.inc(ecx)?;
        a.inc(edx)?;
        a.jmp(top)?;
        Ok(())
    });
    let p = Program::new(Mode::Prot32, code);
    let mut out = Vec::new();
    for (name, mut e) in [("jit", jit()), ("interp", interp())] {
        let mut vm = p.build_vm().unwrap();
        // 100 passes of 3 instructions: hot, back at the top.
        e.run(&mut vm, Budget::insns(300));
        assert_eq!(
            (r32(&vm, ECX), vm.cpu.eip),
            (100, layout::CODE_BASE),
            "{name}"
        );
        // Only the INC ECX at CODE_BASE stays inside CS.
        vm.cpu.seg[SegReg::Cs as usize].limit = layout::CODE_BASE;
        run_to_hlt(name, &mut *e, &mut vm);
        assert_eq!(hlt_at(&vm), layout::STUB_BASE + GP, "{name}: #GP taken");
        assert_eq!((r32(&vm, ECX), r32(&vm, EDX)), (101, 100), "{name}");
        out.push(vm);
    }
    assert_same(&out[0], &out[1]);
}
