//! Block exits and the translation cache, end to end: chained loops, code
//! written under a chained loop, eviction under a tiny cache, indirect
//! returns, a CS limit on a direct jump. Every program runs on the
//! translator and on the interpreter; results are checked against hand
//! computation and against each other.

use iced_x86::code_asm::*;
use umbra_core::cpu::SegReg;
use umbra_core::interp::Interpreter;
use umbra_core::{Budget, Engine, Exit, Vm};
use umbra_translator::Translator;

mod common;
use common::{run, CODE};

/// A machine with `bytes` at `CODE` (`common::machine`).
fn machine(bits: u32, bytes: &[u8]) -> Vm {
    common::machine(bits, &[(CODE, bytes)])
}

fn assemble(bits: u32, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).unwrap();
    f(&mut a).unwrap();
    a.assemble(CODE as u64).unwrap()
}

/// The program on both engines: (translator's vm and exit, its stats
/// owner, interpreter's vm and exit). Asserts they agree.
fn both(bits: u32, bytes: &[u8], cache: usize, slice: u64, total: u64) -> (Vm, Exit, Translator) {
    let mut vj = machine(bits, bytes);
    let mut t = Translator::new(cache).unwrap();
    let xj = run(&mut t, &mut vj, slice, total);
    let mut vi = machine(bits, bytes);
    let mut i = Interpreter::new();
    let xi = run(&mut i, &mut vi, slice, total);
    assert_eq!(xj, xi, "exits differ");
    assert_eq!(vj.cpu.gpr, vi.cpu.gpr, "GPRs differ");
    assert_eq!(vj.cpu.eip, vi.cpu.eip, "EIP differs");
    assert_eq!(vj.cpu.eflags, vi.cpu.eflags, "EFLAGS differ");
    assert_eq!(vj.clock.retired, vi.clock.retired, "retired counts differ");
    (vj, xj, t)
}

#[test]
fn loop_is_chained_and_gives_the_sum() {
    // eax = 1000 + 999 + ... + 1 = 500500.
    let code = assemble(32, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 1000)?;
        a.xor(eax, eax)?;
        a.set_label(&mut top)?;
        a.add(eax, ecx)?;
        a.dec(ecx)?;
        a.jne(top)?;
        a.hlt()
    });
    let (vm, x, t) = both(32, &code, 1 << 20, 100_000, 1_000_000);
    assert_eq!(x, Exit::Halted);
    assert_eq!(vm.cpu.gpr[0] as u32, 500_500);
    assert!(
        t.stats().chains >= 1,
        "the loop's back edge was never chained"
    );
    // One block for the entry, one for the loop, one for HLT: the loop
    // body is translated once and then runs chained.
    assert!(t.stats().translations <= 4, "{:?}", t.stats());
}

#[test]
fn chained_loop_is_bounded_by_the_budget() {
    // An endless chained loop: each run returns after exactly its budget.
    let code = assemble(32, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.inc(eax)?;
        a.jmp(top)
    });
    let (vm, x, _) = both(32, &code, 1 << 20, 1000, 10_000);
    assert_eq!(x, Exit::BudgetSpent);
    // 10,000 instructions are 5,000 iterations of INC; JMP.
    assert_eq!(vm.clock.retired, 10_000);
    assert_eq!(vm.cpu.gpr[0] as u32, 5_000);
}

#[test]
fn written_code_under_a_chained_loop_runs_new() {
    // The loop adds 1 a hundred times; then code on another page patches
    // its ADD's immediate to 2 and runs it again: 100 + 200 = 300.
    let code = assemble(32, |a| {
        let mut start = a.create_label();
        let mut top = a.create_label();
        a.set_label(&mut start)?;
        a.mov(ecx, 100)?;
        a.set_label(&mut top)?;
        a.add(eax, 0x1111)?; // imm32 at top+1
        a.dec(ecx)?;
        a.jne(top)?;
        a.jmp(0x3000u64)
    });
    // `mov ecx, 100` is 5 bytes: the ADD is at CODE+5, its imm at +6.
    assert_eq!(&code[5..7], &[0x05, 0x11], "layout assumption");
    let patcher = {
        let mut a = CodeAssembler::new(32).unwrap();
        let mut fin = a.create_label();
        a.test(ebx, ebx).unwrap();
        a.jne(fin).unwrap();
        a.mov(ebx, 1).unwrap();
        a.mov(dword_ptr(CODE + 6), 2).unwrap();
        a.jmp(CODE as u64).unwrap();
        a.set_label(&mut fin).unwrap();
        a.hlt().unwrap();
        a.assemble(0x3000).unwrap()
    };
    let mut both_code = code.clone();
    both_code.resize(0x2000, 0x90);
    both_code.extend_from_slice(&patcher);
    // The first ADD is 0x1111 before patching: 100 * 0x1111 + 100 * 2.
    let (vm, x, t) = both(32, &both_code, 1 << 20, 50_000, 1_000_000);
    assert_eq!(x, Exit::Halted);
    assert_eq!(vm.cpu.gpr[0] as u32, 100 * 0x1111 + 100 * 2);
    assert!(t.stats().invalidations >= 1, "{:?}", t.stats());
    assert!(t.stats().chains >= 2, "{:?}", t.stats());
}

/// `n` blocks of `add eax, i ; jmp next` run `rounds` times.
fn many_blocks(n: u32, rounds: u32) -> Vec<u8> {
    assemble(32, |a| {
        let mut outer = a.create_label();
        a.mov(edx, rounds)?;
        a.set_label(&mut outer)?;
        for i in 0..n {
            let mut next = a.create_label();
            a.add(eax, i)?;
            a.jmp(next)?;
            a.set_label(&mut next)?;
        }
        a.dec(edx)?;
        a.jne(outer)?;
        a.hlt()
    })
}

#[test]
fn tiny_cache_evicts_and_still_agrees() {
    let (n, rounds) = (1500u32, 3u32);
    let code = many_blocks(n, rounds);
    let (vm, x, t) = both(32, &code, 64 << 10, 10_000, 10_000_000);
    assert_eq!(x, Exit::Halted);
    // rounds * (0 + 1 + ... + n-1)
    assert_eq!(vm.cpu.gpr[0] as u32, rounds * n * (n - 1) / 2);
    let s = t.stats();
    assert!(s.evictions > 0, "nothing evicted in a 64 KiB cache: {s:?}");
    assert!(s.region_evictions > 0 && s.flushes == 0, "{s:?}");
    let (used, size) = t.cache_usage();
    assert!(used <= size);
}

#[test]
fn eviction_unchains_jumps_into_evicted_blocks() {
    // A hot loop of 120 blocks (its back edge, translated last, chains to
    // its first block), then 1000 cold blocks that wrap the tiny cache's
    // regions and evict the loop's first blocks while the back edge
    // lives; three rounds.
    let code = assemble(32, |a| {
        let mut outer = a.create_label();
        let mut hot = a.create_label();
        a.mov(edx, 3)?;
        a.set_label(&mut outer)?;
        a.mov(ecx, 5)?;
        a.set_label(&mut hot)?;
        for i in 0..120 {
            let mut next = a.create_label();
            a.add(eax, i)?;
            a.jmp(next)?;
            a.set_label(&mut next)?;
        }
        a.dec(ecx)?;
        a.jne(hot)?;
        for i in 0..1000 {
            let mut next = a.create_label();
            a.add(ebx, i)?;
            a.jmp(next)?;
            a.set_label(&mut next)?;
        }
        a.dec(edx)?;
        a.jne(outer)?;
        a.hlt()
    });
    let (vm, x, t) = both(32, &code, 64 << 10, 10_000, 10_000_000);
    assert_eq!(x, Exit::Halted);
    // 3 rounds * 5 * (0 + ... + 119) and 3 * (0 + ... + 999).
    assert_eq!(vm.cpu.gpr[0] as u32, 15 * 7140);
    assert_eq!(vm.cpu.gpr[3] as u32, 3 * 499_500);
    let s = t.stats();
    assert!(s.unchains > 0 && s.evictions > 0, "{s:?}");
}

#[test]
fn returns_stay_in_generated_code_32() {
    // 200 calls of a function adding 3: eax = 600.
    let code = assemble(32, |a| {
        let mut top = a.create_label();
        let mut f = a.create_label();
        a.mov(ecx, 200)?;
        a.set_label(&mut top)?;
        a.call(f)?;
        a.dec(ecx)?;
        a.jne(top)?;
        a.hlt()?;
        a.set_label(&mut f)?;
        a.add(eax, 3)?;
        a.ret()
    });
    let (vm, x, t) = both(32, &code, 1 << 20, 100_000, 1_000_000);
    assert_eq!(x, Exit::Halted);
    assert_eq!(vm.cpu.gpr[0] as u32, 600);
    // The returns are looked up inline (`codegen::flow`): after the first
    // few misses nothing goes back to the dispatcher.
    let s = t.stats();
    assert!(s.entries < 20, "{s:?}");
}

#[test]
fn returns_are_looked_up_inline_16() {
    let code = assemble(16, |a| {
        let mut top = a.create_label();
        let mut f = a.create_label();
        a.mov(cx, 200)?;
        a.set_label(&mut top)?;
        a.call(f)?;
        a.dec(cx)?;
        a.jne(top)?;
        a.hlt()?;
        a.set_label(&mut f)?;
        a.add(ax, 3)?;
        a.ret()
    });
    let (vm, x, t) = both(16, &code, 1 << 20, 100_000, 1_000_000);
    assert_eq!(x, Exit::Halted);
    assert_eq!(vm.cpu.gpr[0] as u16, 600);
    assert!(t.stats().indirect_hits >= 150, "{:?}", t.stats());
}

#[test]
fn jump_beyond_the_cs_limit_faults_on_the_jump() {
    // CS limit 0x1FFF: `jmp 0x2800` must raise #GP at the JMP. With no
    // IDT the machine shuts down; both engines must stop at the same EIP.
    let code = assemble(32, |a| {
        a.inc(eax)?;
        a.jmp(0x2800u64)
    });
    let mut vj = machine(32, &code);
    vj.cpu.seg_mut(SegReg::Cs).limit = 0x1FFF;
    let mut vi = machine(32, &code);
    vi.cpu.seg_mut(SegReg::Cs).limit = 0x1FFF;
    let mut t = Translator::new(1 << 20).unwrap();
    let xj = run(&mut t, &mut vj, 1000, 1000);
    let xi = run(&mut Interpreter::new(), &mut vi, 1000, 1000);
    assert!(matches!(xi, Exit::Shutdown(_)), "{xi:?}");
    assert_eq!(xj, xi);
    assert_eq!(vj.cpu.gpr, vi.cpu.gpr);
    assert_eq!(vj.cpu.eip, vi.cpu.eip);
}

#[test]
fn loop_counts_cx_only_in_16_bit_code() {
    // CX = 0 with ECX's high half set: CX wraps to FFFF, so 65,536
    // iterations, and the high half stays (SDM LOOP: the count is CX for
    // a 16-bit address size).
    let code = assemble(16, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 0xABCD_0000u32)?;
        a.xor(eax, eax)?;
        a.set_label(&mut top)?;
        a.inc(eax)?;
        a.loop_(top)?;
        a.hlt()
    });
    let (vm, x, t) = both(16, &code, 1 << 20, 100_000, 1_000_000);
    assert_eq!(x, Exit::Halted);
    assert_eq!(vm.cpu.gpr[0] as u32, 65_536);
    assert_eq!(vm.cpu.gpr[1] as u32, 0xABCD_0000);
    assert!(t.stats().chains >= 1, "{:?}", t.stats());
}

#[test]
fn loopne_stops_on_zf_and_jecxz_branches_on_zero() {
    // LOOPNE: EAX 1, 2, 3 go round (ECX 9, 8, 7); at EAX = 4 ZF stops it
    // with ECX = 6. Then JECXZ with ECX = 0 skips `mov ebx, 1`.
    let code = assemble(32, |a| {
        let mut top = a.create_label();
        let mut skip = a.create_label();
        a.mov(ecx, 10)?;
        a.xor(eax, eax)?;
        a.set_label(&mut top)?;
        a.inc(eax)?;
        a.cmp(eax, 4)?;
        a.loopne(top)?;
        a.mov(edx, ecx)?;
        a.xor(ecx, ecx)?;
        a.jecxz(skip)?;
        a.mov(ebx, 1)?;
        a.set_label(&mut skip)?;
        a.hlt()
    });
    let (vm, x, _) = both(32, &code, 1 << 20, 100_000, 1_000_000);
    assert_eq!(x, Exit::Halted);
    assert_eq!(vm.cpu.gpr[0] as u32, 4);
    assert_eq!(vm.cpu.gpr[2] as u32, 6);
    assert_eq!(vm.cpu.gpr[3] as u32, 0);
}

#[test]
fn code_changed_behind_the_watch_is_seen_through_chains() {
    // Two blocks chained into a loop on one frame. Between runs the
    // second block's immediate is changed through `ram_mut` (as a device
    // or another engine would, unseen by the write watch): the chained
    // jump into it must not run the old code.
    let code = assemble(32, |a| {
        let mut l = a.create_label();
        let mut m = a.create_label();
        a.set_label(&mut l)?;
        a.add(eax, 1)?; // 05 imm32: 5 bytes
        a.jmp(m)?; // EB 00: 2 bytes
        a.set_label(&mut m)?;
        a.add(ebx, 1)?; // 83 C3 01 at +7, imm at +9
        a.jmp(l)
    });
    assert_eq!(&code[7..10], &[0x83, 0xC3, 0x01], "layout assumption");
    let mut vj = machine(32, &code);
    let mut vi = machine(32, &code);
    let mut t = Translator::new(1 << 20).unwrap();
    let mut i = Interpreter::new();
    assert_eq!(t.run(&mut vj, Budget::insns(1000)), Exit::BudgetSpent);
    assert_eq!(i.run(&mut vi, Budget::insns(1000)), Exit::BudgetSpent);
    for vm in [&mut vj, &mut vi] {
        vm.mem.ram_mut()[CODE as usize + 9] = 2;
    }
    assert_eq!(t.run(&mut vj, Budget::insns(1000)), Exit::BudgetSpent);
    assert_eq!(i.run(&mut vi, Budget::insns(1000)), Exit::BudgetSpent);
    // 250 iterations adding 1, then 250 adding 2 to EBX.
    assert_eq!(vi.cpu.gpr[3] as u32, 750);
    assert_eq!(vj.cpu.gpr, vi.cpu.gpr);
    assert!(t.stats().chains >= 2, "{:?}", t.stats());
}
