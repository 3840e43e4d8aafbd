//! Interpreter throughput on guest loops, in guest instructions per second
//! (criterion `Throughput::Elements`): an ALU loop, a MOV-based memory
//! copy, REP MOVSD (each iteration counted as one instruction, as a
//! single-stepping CPU retires it), a CALL/RET loop, and the ALU loop with
//! 2-level paging on. Programs are laid out by the differential harness's
//! `Program` (flat 32-bit protected mode).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use umbra::diff::program::layout;
use umbra_core::interp::Interpreter;
use umbra_core::{Budget, Engine, Exit};

#[path = "common/loops.rs"]
mod loops;
use loops::Workload;

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
    let workloads = loops::all();
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
