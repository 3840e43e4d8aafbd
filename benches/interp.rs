//! Interpreter throughput on guest loops, in guest instructions per second
//! (criterion `Throughput::Elements`): an ALU loop, a MOV-based memory
//! copy, REP MOVSD (each iteration counted as one instruction, as a
//! single-stepping CPU retires it), a CALL/RET loop, and the ALU loop with
//! 2-level paging on. Programs are laid out by the differential harness's
//! `Program` (flat 32-bit protected mode).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use iced_x86::code_asm::*;
use umbra::diff::program::layout;
use umbra::diff::{Mode, Program};
use umbra_core::interp::Interpreter;
use umbra_core::{Budget, Engine, Exit};

/// Iterations of the single loops.
const LOOP: u32 = 20_000;
/// Dwords per copy and copies for the memory loops.
const DWORDS: u32 = 512;
const COPIES: u32 = 40;

/// A guest loop and the instructions it retires.
struct Workload {
    name: &'static str,
    program: Program,
    instructions: u64,
}

fn assemble(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).expect("32-bit assembler");
    f(&mut a).expect("benchmark program assembles");
    a.assemble(layout::CODE_BASE as u64)
        .expect("benchmark program encodes")
}

/// mov ecx, N; L: add eax, ebx; xor edx, eax; sub esi, 3; dec ecx; jnz L; hlt
fn alu_loop(mode: Mode) -> Workload {
    let code = assemble(|a| {
        let mut top = a.create_label();
        a.mov(ecx, LOOP)?;
        a.set_label(&mut top)?;
        a.add(eax, ebx)?;
        a.xor(edx, eax)?;
        a.sub(esi, 3)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    Workload {
        name: if mode == Mode::Paging {
            "alu_loop_paging"
        } else {
            "alu_loop"
        },
        program: Program::new(mode, code),
        instructions: 2 + 5 * LOOP as u64,
    }
}

/// COPIES times: copy DWORDS dwords with MOV through EAX.
fn mov_copy() -> Workload {
    let code = assemble(|a| {
        let mut outer = a.create_label();
        let mut inner = a.create_label();
        a.mov(edx, COPIES)?;
        a.set_label(&mut outer)?;
        a.mov(esi, layout::DATA_BASE)?;
        a.mov(edi, layout::DATA_BASE + 4 * DWORDS)?;
        a.mov(ecx, DWORDS)?;
        a.set_label(&mut inner)?;
        a.mov(eax, dword_ptr(esi))?;
        a.mov(dword_ptr(edi), eax)?;
        a.add(esi, 4)?;
        a.add(edi, 4)?;
        a.dec(ecx)?;
        a.jnz(inner)?;
        a.dec(edx)?;
        a.jnz(outer)?;
        a.hlt()
    });
    Workload {
        name: "mov_copy",
        program: Program::new(Mode::Prot32, code),
        instructions: 2 + COPIES as u64 * (3 + 6 * DWORDS as u64 + 2),
    }
}

/// COPIES times: REP MOVSD of DWORDS dwords.
fn rep_movsd() -> Workload {
    let code = assemble(|a| {
        let mut outer = a.create_label();
        a.mov(edx, COPIES)?;
        a.set_label(&mut outer)?;
        a.mov(esi, layout::DATA_BASE)?;
        a.mov(edi, layout::DATA_BASE + 4 * DWORDS)?;
        a.mov(ecx, DWORDS)?;
        a.cld()?;
        a.rep().movsd()?;
        a.dec(edx)?;
        a.jnz(outer)?;
        a.hlt()
    });
    Workload {
        name: "rep_movsd",
        program: Program::new(Mode::Prot32, code),
        instructions: 2 + COPIES as u64 * (4 + DWORDS as u64 + 2),
    }
}

/// mov ecx, N; L: call F; dec ecx; jnz L; hlt; F: ret
fn call_ret() -> Workload {
    let code = assemble(|a| {
        let mut top = a.create_label();
        let mut func = a.create_label();
        a.mov(ecx, LOOP)?;
        a.set_label(&mut top)?;
        a.call(func)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()?;
        a.set_label(&mut func)?;
        a.ret()
    });
    Workload {
        name: "call_ret",
        program: Program::new(Mode::Prot32, code),
        instructions: 2 + 4 * LOOP as u64,
    }
}

/// Run once and check it halts on the program's HLT: a workload the
/// interpreter cannot run yet is reported and left out, not timed.
fn runs_to_hlt(w: &Workload) -> bool {
    let mut vm = match w.program.build_vm() {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("{}: skipped: {e}", w.name);
            return false;
        }
    };
    let mut interp = Interpreter::new();
    // One REP iteration per step, so the count matches `instructions`.
    interp.rep_batch = 1;
    let exit = interp.run(&mut vm, Budget::insns(10 * w.instructions));
    let at = vm.cpu.seg[1].base.wrapping_add(vm.cpu.eip);
    let in_code = (layout::CODE_BASE..layout::CODE_BASE + layout::CODE_MAX).contains(&at);
    if exit != Exit::Halted || !in_code {
        eprintln!(
            "{}: skipped: the interpreter stopped with {exit:?} at {at:#x}",
            w.name
        );
        return false;
    }
    if interp.stats.instructions != w.instructions {
        eprintln!(
            "{}: retired {} instructions, the throughput counts {}",
            w.name, interp.stats.instructions, w.instructions
        );
    }
    true
}

fn bench_interp(c: &mut Criterion) {
    let workloads = [
        alu_loop(Mode::Prot32),
        mov_copy(),
        rep_movsd(),
        call_ret(),
        alu_loop(Mode::Paging),
    ];
    let mut group = c.benchmark_group("interp");
    for w in workloads.iter().filter(|w| runs_to_hlt(w)) {
        group.throughput(Throughput::Elements(w.instructions));
        group.bench_function(w.name, |b| {
            b.iter_batched(
                || {
                    (
                        w.program.build_vm().expect("guest memory"),
                        Interpreter::new(),
                    )
                },
                |(mut vm, mut interp)| {
                    let exit = interp.run(&mut vm, Budget::insns(10 * w.instructions));
                    black_box(exit);
                    vm
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_interp);
criterion_main!(benches);
