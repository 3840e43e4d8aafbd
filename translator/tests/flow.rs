//! Native near CALL/RET/JMP r/m and the inline lookup of the next block
//! (`codegen::flow`), end to end: every program runs on the translator
//! and on the interpreter, with results checked against hand computation
//! and against each other (registers, EIP, EFLAGS, retired count).

use iced_x86::code_asm::*;
use umbra_core::cpu::{attr, SegReg, ESP};
use umbra_core::interp::Interpreter;
use umbra_core::{Exit, Vm};
use umbra_translator::Translator;

mod common;
use common::{run, CODE};

/// A second and a third code page.
const PAGE2: u32 = 0x2000;
const PAGE3: u32 = 0x3000;
/// A data page.
const DATA: u32 = 0x6000;

/// Flat ring-0 32-bit protected mode with `parts` (address, bytes)
/// written (`common::machine`).
fn machine(parts: &[(u32, Vec<u8>)]) -> Vm {
    let parts: Vec<(u32, &[u8])> = parts.iter().map(|(a, b)| (*a, &b[..])).collect();
    common::machine(32, &parts)
}

fn assemble(at: u32, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    f(&mut a).unwrap();
    a.assemble(at as u64).unwrap()
}

/// The program on both engines, `setup` applied to each machine first;
/// asserts they agree and returns the translator's machine, exit and
/// engine.
fn both(parts: &[(u32, Vec<u8>)], setup: impl Fn(&mut Vm), slice: u64) -> (Vm, Exit, Translator) {
    let mut vj = machine(parts);
    setup(&mut vj);
    let mut t = Translator::new(1 << 20).unwrap();
    let xj = run(&mut t, &mut vj, slice, 1_000_000);
    let mut vi = machine(parts);
    setup(&mut vi);
    let xi = run(&mut Interpreter::new(), &mut vi, slice, 1_000_000);
    assert_eq!(xj, xi, "exits differ");
    assert_eq!(vj.cpu.gpr, vi.cpu.gpr, "GPRs differ");
    assert_eq!(vj.cpu.eip, vi.cpu.eip, "EIP differs");
    assert_eq!(vj.cpu.eflags, vi.cpu.eflags, "EFLAGS differ");
    assert_eq!(vj.clock.retired, vi.clock.retired, "retired counts differ");
    assert_eq!(
        vj.mem.ram_slice(0, 1 << 20),
        vi.mem.ram_slice(0, 1 << 20),
        "memory differs"
    );
    (vj, xj, t)
}

#[test]
fn calls_and_returns_across_pages_stay_in_generated_code() {
    // main (page 1) calls f (page 2) 300 times; f calls g (page 3), which
    // adds 5 to EAX; f adds 1 more: EAX = 300 * 6 = 1800.
    let main = assemble(CODE, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 300)?;
        a.set_label(&mut top)?;
        a.call(PAGE2 as u64)?;
        a.dec(ecx)?;
        a.jne(top)?;
        a.hlt()
    });
    let f = assemble(PAGE2, |a| {
        a.call(PAGE3 as u64)?;
        a.inc(eax)?;
        a.ret()
    });
    let g = assemble(PAGE3, |a| {
        a.add(eax, 5)?;
        a.ret()
    });
    let (vm, x, t) = both(&[(CODE, main), (PAGE2, f), (PAGE3, g)], |_| {}, 100_000);
    assert_eq!(x, Exit::Halted);
    assert_eq!(vm.cpu.gpr[0] as u32, 1800);
    assert_eq!(vm.cpu.gpr[ESP] as u32, 0x8000);
    let s = t.stats();
    // 1,500 cross-page transfers; only the first of each target (and
    // the HLT) goes through the dispatcher.
    assert!(s.entries < 20, "{s:?}");
    assert!(s.monitor_calls < 5, "{s:?}");
}

#[test]
fn budget_is_exact_in_a_call_loop() {
    // An endless call/ret loop across pages, run in slices of 777: the
    // retired counts must agree exactly with the interpreter's (`both`).
    let main = assemble(CODE, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.call(PAGE2 as u64)?;
        a.jmp(top)
    });
    let f = assemble(PAGE2, |a| {
        a.inc(eax)?;
        a.ret()
    });
    let (vm, x, _) = both(&[(CODE, main), (PAGE2, f)], |_| {}, 777);
    assert_eq!(x, Exit::BudgetSpent);
    // 1,000,776 instructions (1,288 slices of 777) in rounds of four.
    assert_eq!(vm.clock.retired, 1_000_776);
    assert_eq!(vm.cpu.gpr[0] as u32, 1_000_776 / 4);
}

#[test]
fn return_into_a_block_that_was_rewritten() {
    // f (page 2) increments the imm8 of `add ebx, imm8` at the return
    // site on page 1 before returning: the return must run the new code
    // every time, never the block translated for the old byte. imm8
    // goes 2, 3, ..., 11: EBX = 65.
    let mut site = 0u32;
    let main = assemble(CODE, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 10)?;
        a.set_label(&mut top)?;
        a.call(PAGE2 as u64)?;
        a.add(ebx, 1)?;
        a.dec(ecx)?;
        a.jne(top)?;
        a.hlt()
    });
    // mov ecx, imm32 (5 bytes), call rel32 (5), then 83 C3 ib.
    assert_eq!(&main[10..13], &[0x83, 0xC3, 0x01], "layout assumption");
    site += CODE + 12;
    let f = assemble(PAGE2, |a| {
        a.inc(byte_ptr(site as u64))?;
        a.ret()
    });
    let (vm, x, t) = both(&[(CODE, main), (PAGE2, f)], |_| {}, 100_000);
    assert_eq!(x, Exit::Halted);
    assert_eq!(vm.cpu.gpr[3] as u32, 65);
    assert!(t.stats().invalidations >= 10, "{:?}", t.stats());
}

#[test]
fn sixteen_bit_return_pops_two_bytes() {
    // push word L ; o16 ret: pops 2 bytes, EIP = L; 100 rounds.
    //   CODE+0:  B9 64 00 00 00    mov ecx, 100
    //   CODE+5:  66 68 lo hi       push word L
    //   CODE+9:  66 C3             o16 ret
    //   CODE+11: 40 49 75 F6 F4    L: inc eax ; dec ecx ; jne CODE+5 ; hlt
    let l = (CODE + 11) as u16;
    let [lo, hi] = l.to_le_bytes();
    let main = vec![
        0xB9, 100, 0, 0, 0, 0x66, 0x68, lo, hi, 0x66, 0xC3, 0x40, 0x49, 0x75, 0xF6, 0xF4,
    ];
    let (vm, x, _) = both(&[(CODE, main)], |_| {}, 100_000);
    assert_eq!(x, Exit::Halted);
    assert_eq!(vm.cpu.gpr[0] as u32, 100);
    assert_eq!(vm.cpu.gpr[ESP] as u32, 0x8000);
}

#[test]
fn return_with_immediate_releases_the_arguments() {
    // push 7 ; push 9 ; call f ; f: mov edx, [esp+4] ; add eax, edx ;
    // ret 8. 50 rounds: EAX = 50 * 9 = 450, ESP back at 0x8000.
    let main = assemble(CODE, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 50)?;
        a.set_label(&mut top)?;
        a.push(7)?;
        a.push(9)?;
        a.call(PAGE2 as u64)?;
        a.dec(ecx)?;
        a.jne(top)?;
        a.hlt()
    });
    let f = assemble(PAGE2, |a| {
        a.mov(edx, dword_ptr(esp + 4))?;
        a.add(eax, edx)?;
        a.ret_1(8)
    });
    let (vm, x, _) = both(&[(CODE, main), (PAGE2, f)], |_| {}, 100_000);
    assert_eq!(x, Exit::Halted);
    assert_eq!(vm.cpu.gpr[0] as u32, 450);
    assert_eq!(vm.cpu.gpr[ESP] as u32, 0x8000);
}

#[test]
fn overwritten_return_address_is_followed() {
    // f replaces its return address with `other`: the code after the
    // CALL never runs. 50 rounds: EAX = 50, EBX = 0.
    let main = assemble(CODE, |a| {
        let mut top = a.create_label();
        let mut other = a.create_label();
        a.mov(ecx, 50)?;
        a.set_label(&mut top)?;
        a.call(PAGE2 as u64)?;
        a.add(ebx, 100)?;
        a.set_label(&mut other)?;
        a.inc(eax)?;
        a.dec(ecx)?;
        a.jne(top)?;
        a.hlt()
    });
    // mov ecx (5), call (5), add ebx, 100 (3): `other` at +13.
    let other = CODE + 13;
    let f = assemble(PAGE2, |a| {
        a.mov(dword_ptr(esp), other)?;
        a.ret()
    });
    let (vm, x, _) = both(&[(CODE, main), (PAGE2, f)], |_| {}, 100_000);
    assert_eq!(x, Exit::Halted);
    assert_eq!(vm.cpu.gpr[0] as u32, 50);
    assert_eq!(vm.cpu.gpr[3] as u32, 0);
}

#[test]
fn indirect_calls_and_jumps_through_registers_and_memory() {
    // A table of two handlers at DATA: h0 adds 1, h1 adds 10. Each round
    // calls h0 through ESI, h1 through [DATA+4], and jumps through
    // [DATA + (ecx & 1) * 4] to one of two tails on page 3 that jump
    // back. 40 rounds: EAX = 40 * 11 = 440; EBX counts 20 odd and 20
    // even tails: 20 * 1 + 20 * 1000 = 20020.
    let main = assemble(CODE, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 40)?;
        a.mov(esi, PAGE2)?;
        a.set_label(&mut top)?;
        a.call(esi)?;
        a.call(dword_ptr(DATA + 4))?;
        a.mov(edx, ecx)?;
        a.and(edx, 1)?;
        a.jmp(dword_ptr(edx * 4 + DATA + 8))?;
        Ok(())
    });
    // Back to here from the tails: dec ecx ; jne top ; hlt.
    let back = CODE + main.len() as u32;
    let main2 = assemble(back, |a| {
        a.dec(ecx)?;
        a.jne((CODE + 10) as u64)?;
        a.hlt()
    });
    let mut handlers = assemble(PAGE2, |a| {
        a.add(eax, 1)?;
        a.ret()
    });
    // h1 at PAGE2 + 0x10.
    handlers.resize(0x10, 0xCC);
    handlers.extend(assemble(PAGE2 + 0x10, |a| {
        a.add(eax, 10)?;
        a.ret()
    }));
    let tails = assemble(PAGE3, |a| {
        a.add(ebx, 1000)?;
        a.jmp(back as u64)?;
        a.add(ebx, 1)?;
        a.jmp(back as u64)
    });
    // add ebx, imm32 (6 bytes) ; jmp rel32 (5): the second at +11.
    assert_eq!(
        tails[11..14],
        [0x83, 0xC3, 0x01],
        "layout assumption {tails:02x?}"
    );
    let mut table = Vec::new();
    for v in [PAGE2, PAGE2 + 0x10, PAGE3, PAGE3 + 11] {
        table.extend_from_slice(&v.to_le_bytes());
    }
    let mut m = main;
    m.extend_from_slice(&main2);
    let (vm, x, _) = both(
        &[(CODE, m), (PAGE2, handlers), (PAGE3, tails), (DATA, table)],
        |_| {},
        100_000,
    );
    assert_eq!(x, Exit::Halted);
    assert_eq!(vm.cpu.gpr[0] as u32, 440);
    assert_eq!(vm.cpu.gpr[3] as u32, 20_020);
}

#[test]
fn sixteen_bit_stack_wraps_sp_on_call_and_return() {
    // SS.B = 0 and ESP = 0x1234_0004: the CALL pushes at SS:0000, the
    // callee's CALL at SS:FFFC (SP wraps, ESP's upper half stays), and
    // both returns come back. 20 rounds: EAX = 20 * 3 = 60.
    let main = assemble(CODE, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 20)?;
        a.set_label(&mut top)?;
        a.call(PAGE2 as u64)?;
        a.dec(ecx)?;
        a.jne(top)?;
        a.hlt()
    });
    let f = assemble(PAGE2, |a| {
        a.call(PAGE3 as u64)?;
        a.inc(eax)?;
        a.ret()
    });
    let g = assemble(PAGE3, |a| {
        a.add(eax, 2)?;
        a.ret()
    });
    let setup = |vm: &mut Vm| {
        vm.cpu.seg_mut(SegReg::Ss).attr &= !attr::DB;
        vm.cpu.gpr[ESP] = 0x1234_0004;
    };
    let (mut vm, x, _) = both(&[(CODE, main), (PAGE2, f), (PAGE3, g)], setup, 100_000);
    assert_eq!(x, Exit::Halted);
    assert_eq!(vm.cpu.gpr[0] as u32, 60);
    assert_eq!(vm.cpu.gpr[ESP] as u32, 0x1234_0004);
    // The inner return address went to SS:FFFC (no 64 KiB crossing).
    assert_eq!(vm.mem.read_u32(0xFFFC), PAGE2 + 5);
}

/// The REP string tests' program: fill 0x9000.. with a byte pattern
/// (REP STOSB in pieces), copy it with REP MOVSD / MOVSW / MOVSB across
/// page boundaries, smear it with an overlapping forward MOVSB, and run
/// one copy with DF set (the monitor's path).
fn string_program() -> Vec<u8> {
    assemble(CODE, |a| {
        a.cld()?;
        // 5,000 bytes of 0x5A at 0x9000 (crosses into 0xA000 and 0xB000).
        a.mov(edi, 0x9000u32)?;
        a.mov(ecx, 5000u32)?;
        a.mov(al, 0x5Au32)?;
        a.rep().stosb()?;
        // A zero count does nothing.
        a.xor(ecx, ecx)?;
        a.rep().stosd()?;
        // Words 0x1234 over 0x9100..0x9300.
        a.mov(edi, 0x9100u32)?;
        a.mov(ecx, 0x100u32)?;
        a.mov(eax, 0x1234u32)?;
        a.rep().stosw()?;
        // Copy 3,001 dwords from 0x9000 to 0x10004 (unaligned pages).
        a.mov(esi, 0x9000u32)?;
        a.mov(edi, 0x10004u32)?;
        a.mov(ecx, 3001u32)?;
        a.rep().movsd()?;
        // Words and bytes with a DS override on the source.
        a.mov(esi, 0x9101u32)?;
        a.mov(edi, 0x14000u32)?;
        a.mov(ecx, 777u32)?;
        a.rep().movsw()?;
        a.mov(ecx, 33u32)?;
        a.rep().movsb()?;
        // Overlapping forward copy: each byte copies the one before.
        a.mov(byte_ptr(0x15000), 0x77u32)?;
        a.mov(esi, 0x15000u32)?;
        a.mov(edi, 0x15001u32)?;
        a.mov(ecx, 300u32)?;
        a.rep().movsb()?;
        // DF set: backwards, through the monitor.
        a.std()?;
        a.mov(esi, 0x90FFu32)?;
        a.mov(edi, 0x160FFu32)?;
        a.mov(ecx, 0x100u32)?;
        a.rep().movsb()?;
        a.cld()?;
        a.hlt()
    })
}

#[test]
fn rep_movs_and_stos_agree_with_the_interpreter() {
    let (mut vm, x, t) = both(&[(CODE, string_program())], |_| {}, 100_000);
    assert_eq!(x, Exit::Halted);
    // The first copied dword (bytes 5A 5A 5A 5A) and one from the words.
    assert_eq!(vm.mem.read_u32(0x10004), 0x5A5A_5A5A);
    assert_eq!(vm.mem.read_u16(0x10004 + 0x100), 0x1234);
    // The smear: 301 bytes of 0x77, then untouched memory (zero).
    assert_eq!(vm.mem.read_u8(0x15000 + 300), 0x77);
    assert_eq!(vm.mem.read_u8(0x15000 + 301), 0);
    // The backwards copy reached 0x16000 from 0x9000: 0x5A.
    assert_eq!(vm.mem.read_u8(0x16000), 0x5A);
    // ESI/EDI/ECX after the last (backwards) copy.
    assert_eq!(vm.cpu.gpr[1] as u32, 0);
    assert_eq!(vm.cpu.gpr[6] as u32, 0x8FFF);
    assert_eq!(vm.cpu.gpr[7] as u32, 0x15FFF);
    // Most batches ran natively: few monitor calls (first touches of
    // pages, crossings, the DF copy).
    assert!(t.stats().monitor_calls < 40, "{:?}", t.stats());
}

#[test]
fn rep_batches_follow_the_budget_exactly() {
    // Budgets of 3 instructions: batches of a long REP MOVSD re-execute
    // across run boundaries; retired counts and state must match the
    // interpreter's after every slice (`both` compares at the end, the
    // slices make every batch boundary a budget boundary too).
    let (_, x, _) = both(&[(CODE, string_program())], |_| {}, 3);
    assert_eq!(x, Exit::Halted);
}

#[test]
fn rep_batch_of_one_is_one_iteration_per_instruction() {
    // As in lockstep comparisons: one iteration per execution.
    let code = string_program();
    let mut vj = machine(&[(CODE, code.clone())]);
    let mut t = Translator::new(1 << 20).unwrap();
    t.set_rep_batch(1);
    let xj = run(&mut t, &mut vj, 50, 1_000_000);
    let mut vi = machine(&[(CODE, code)]);
    let mut i = Interpreter::new();
    i.rep_batch = 1;
    let xi = run(&mut i, &mut vi, 50, 1_000_000);
    assert_eq!((xj, xi), (Exit::Halted, Exit::Halted));
    assert_eq!(vj.cpu.gpr, vi.cpu.gpr);
    assert_eq!(vj.clock.retired, vi.clock.retired);
    // 5,000 + 256 + 3,001 + 777 + 33 + 300 + 256 iterations, each one
    // instruction; 25 other instructions (HLT included) and the REP
    // STOSD with a zero count, which retires once.
    assert_eq!(vj.clock.retired, 9_623 + 26);
}

#[test]
fn leave_restores_the_frame() {
    // f: push ebp ; mov ebp, esp ; sub esp, 16 ; mov [ebp-4], eax ;
    // add eax, [ebp-4] ; leave ; ret. 30 calls double EAX's low bits.
    let main = assemble(CODE, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 30)?;
        a.mov(eax, 1)?;
        a.mov(ebp, 0x1234_5678u32)?;
        a.set_label(&mut top)?;
        a.call(PAGE2 as u64)?;
        a.dec(ecx)?;
        a.jne(top)?;
        a.hlt()
    });
    let f = assemble(PAGE2, |a| {
        a.push(ebp)?;
        a.mov(ebp, esp)?;
        a.sub(esp, 16)?;
        a.mov(dword_ptr(ebp - 4), eax)?;
        a.add(eax, dword_ptr(ebp - 4))?;
        a.leave()?;
        a.ret()
    });
    let (vm, x, _) = both(&[(CODE, main), (PAGE2, f)], |_| {}, 100_000);
    assert_eq!(x, Exit::Halted);
    assert_eq!(vm.cpu.gpr[0] as u32, 1 << 30);
    assert_eq!(vm.cpu.gpr[5] as u32, 0x1234_5678);
    assert_eq!(vm.cpu.gpr[ESP] as u32, 0x8000);
}

#[test]
fn lods_scas_stos_one_element_at_a_time() {
    // The i386 kernel's strcmp: LODSB ; SCASB ; JNE ; TEST AL, AL ; JNE.
    // The strings differ at index 40 ('x' > 'a'); the second crosses a
    // page (0x6FF0..). Then STOSW/LODSD forwards and backwards (DF set:
    // the monitor's path).
    let mut s1 = vec![b'a'; 40];
    s1.extend_from_slice(b"x\0");
    let mut s2 = vec![b'a'; 41];
    s2.push(0);
    let main = assemble(CODE, |a| {
        let mut l = a.create_label();
        let mut diff = a.create_label();
        let mut done = a.create_label();
        a.cld()?;
        a.mov(esi, DATA)?;
        a.mov(edi, DATA + 0xFF0)?;
        a.set_label(&mut l)?;
        a.lodsb()?;
        a.scasb()?;
        a.jne(diff)?;
        a.test(al, al)?;
        a.jne(l)?;
        a.xor(eax, eax)?;
        a.jmp(done)?;
        a.set_label(&mut diff)?;
        a.sbb(eax, eax)?;
        a.or(al, 1)?;
        a.set_label(&mut done)?;
        a.mov(ebx, eax)?;
        a.mov(edx, esi)?;
        // 16 words of 0xBEEF at 0x9000, then read two dwords back.
        a.mov(edi, 0x9000u32)?;
        a.mov(eax, 0xBEEFu32)?;
        for _ in 0..16 {
            a.stosw()?;
        }
        a.mov(esi, 0x9000u32)?;
        a.lodsd()?;
        a.std()?;
        a.lodsd()?;
        a.lodsd()?;
        a.cld()?;
        a.hlt()
    });
    let (vm, x, t) = both(
        &[(CODE, main), (DATA, s1), (DATA + 0xFF0, s2)],
        |_| {},
        100_000,
    );
    assert_eq!(x, Exit::Halted);
    // 'x' (0x78) - 'a' (0x61) borrows nothing: EAX = 0 | 1 = 1.
    assert_eq!(vm.cpu.gpr[3] as u32, 1);
    // ESI after 41 LODSBs.
    assert_eq!(vm.cpu.gpr[2] as u32, DATA + 41);
    // 0x9000 + 4, then back 4 twice: 0x8FFC; EAX = the dword at 0x9000.
    assert_eq!(vm.cpu.gpr[6] as u32, 0x8FFC);
    assert_eq!(vm.cpu.gpr[0] as u32, 0xBEEF_BEEF);
    assert_eq!(vm.cpu.gpr[7] as u32, 0x9020);
    // The 82 string instructions of the loop ran natively: the monitor
    // saw CLD/STD, first touches of pages, the DF-set LODSDs and HLT.
    assert!(t.stats().monitor_calls < 30, "{:?}", t.stats());
}

#[test]
fn push_memory_operand() {
    // push dword [DATA] ; push dword [esp] (address taken before the
    // push) ; push dword [esi+4] ; pop x3; 20 rounds summing into EAX.
    let main = assemble(CODE, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 20)?;
        a.mov(esi, DATA)?;
        a.set_label(&mut top)?;
        a.push(dword_ptr(DATA))?;
        a.push(dword_ptr(esp))?;
        a.push(dword_ptr(esi + 4))?;
        a.pop(edx)?;
        a.add(eax, edx)?;
        a.pop(edx)?;
        a.add(eax, edx)?;
        a.pop(edx)?;
        a.add(eax, edx)?;
        a.dec(ecx)?;
        a.jne(top)?;
        a.hlt()
    });
    let mut data = 7u32.to_le_bytes().to_vec();
    data.extend_from_slice(&100u32.to_le_bytes());
    let (vm, x, t) = both(&[(CODE, main), (DATA, data)], |_| {}, 100_000);
    assert_eq!(x, Exit::Halted);
    // Each round: 100 + 7 + 7.
    assert_eq!(vm.cpu.gpr[0] as u32, 20 * 114);
    assert_eq!(vm.cpu.gpr[ESP] as u32, 0x8000);
    assert!(t.stats().monitor_calls < 10, "{:?}", t.stats());
}
