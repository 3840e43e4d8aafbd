//! Translator benchmarks (criterion):
//!
//! - `lookup`: the dispatcher's block lookup on a hit, per lookup (ns).
//! - `translate`: translation throughput, guest instructions translated
//!   per second (fresh code memory, 256 blocks of 8 instructions).
//! - `invalidate`: dropping every block of a code frame (32 blocks) after
//!   a write to it, per frame.
//! - `chain`: a two-instruction loop run in one `run` call (blocks chained
//!   to each other once the translator chains them) against one `run` call
//!   per pass (a dispatcher round trip per block), per loop pass.
//! - `engines`: the interpreter and the translator side by side on the
//!   guest loops of `benches/interp.rs` (ALU, MOV copy, REP MOVSD,
//!   CALL/RET, ALU with 2-level paging), in guest instructions per second.
//!
//! Programs are laid out by the differential harness's `Program` (flat
//! 32-bit protected mode, or paging).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;
use umbra::diff::program::layout;
use umbra::diff::{Mode, Program};
use umbra_core::interp::Interpreter;
use umbra_core::{Budget, Engine, Exit, Vm};
use umbra_translator::Translator;

/// Code memory for benchmark translators: room for every block here.
const CACHE: usize = 4 << 20;

fn translator() -> Translator {
    Translator::new(CACHE).expect("code memory")
}

#[path = "common/loops.rs"]
mod loops;
use loops::{assemble, Workload};

// ---- lookup, translation, invalidation ----------------------------------

/// Instructions per block of `many_blocks`.
const BLOCK_INSNS: u64 = 8;

/// `n` blocks of 8 instructions (ALU, loads, a store, LEA, a shift), each
/// ending with a JMP to the next; returns the code and each block's EIP.
fn many_blocks(n: usize) -> (Vec<u8>, Vec<u32>) {
    let mut a = CodeAssembler::new(32).expect("32-bit assembler");
    let mut labels: Vec<CodeLabel> = (0..=n).map(|_| a.create_label()).collect();
    let body = |a: &mut CodeAssembler, next: CodeLabel| -> Result<(), IcedError> {
        a.add(eax, ebx)?;
        a.mov(edx, dword_ptr(ebx + 8))?;
        a.xor(esi, edx)?;
        a.lea(edi, dword_ptr(esi + eax * 2 + 4))?;
        a.shl(eax, 3)?;
        a.mov(dword_ptr(ebx + 16), edi)?;
        a.inc(ecx)?;
        a.jmp(next)
    };
    for i in 0..n {
        a.set_label(&mut labels[i]).unwrap();
        body(&mut a, labels[i + 1]).unwrap();
    }
    a.set_label(&mut labels[n]).unwrap();
    a.hlt().unwrap();
    let r = a
        .assemble_options(
            layout::CODE_BASE as u64,
            BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )
        .expect("benchmark program encodes");
    let starts = labels[..n]
        .iter()
        .map(|l| r.label_ip(l).expect("label") as u32)
        .collect();
    (r.inner.code_buffer, starts)
}

fn bench_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    for mode in [Mode::Prot32, Mode::Paging] {
        let (code, _) = many_blocks(1);
        let p = Program::new(mode, code);
        let mut vm = p.build_vm().expect("guest memory");
        let mut t = translator();
        assert!(t.lookup_block(&mut vm), "the block translates");
        g.bench_function(format!("hit_{mode}"), |b| {
            b.iter(|| black_box(t.lookup_block(&mut vm)))
        });
    }
    g.finish();
}

fn bench_translate(c: &mut Criterion) {
    let mut g = c.benchmark_group("translate");
    let (code, starts) = many_blocks(256);
    let p = Program::new(Mode::Prot32, code);
    g.throughput(Throughput::Elements(starts.len() as u64 * BLOCK_INSNS));
    g.bench_function("blocks_of_8", |b| {
        b.iter_batched(
            || (p.build_vm().expect("guest memory"), translator()),
            |(mut vm, mut t)| {
                for &eip in &starts {
                    vm.cpu.eip = eip;
                    black_box(t.lookup_block(&mut vm));
                }
                (vm, t)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn bench_invalidate(c: &mut Criterion) {
    let mut g = c.benchmark_group("invalidate");
    // 32 blocks of ~30 bytes: all on the first code frame.
    let (code, starts) = many_blocks(32);
    assert!(starts.iter().all(|&e| e >> 12 == layout::CODE_BASE >> 12));
    let p = Program::new(Mode::Prot32, code);
    let frame = (layout::CODE_BASE >> 12) as u64;
    g.bench_function("frame_of_32_blocks", |b| {
        b.iter_batched(
            || {
                let mut vm = p.build_vm().expect("guest memory");
                let mut t = translator();
                for &eip in &starts {
                    vm.cpu.eip = eip;
                    assert!(t.lookup_block(&mut vm));
                }
                (vm, t)
            },
            |(mut vm, mut t)| {
                // What a store into the watched frame reports; the next
                // `run` drops the frame's blocks before anything else.
                vm.ext_frames_written.push(frame);
                black_box(t.run(&mut vm, Budget::insns(0)));
                (vm, t)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

// ---- chaining ----------------------------------------------------------------

/// Passes of the chained loop per iteration of the benchmark.
const PASSES: u64 = 10_000;

fn bench_chain(c: &mut Criterion) {
    // L: dec ecx; jnz L  (ECX large: never ends within a benchmark)
    let code = assemble(|a| {
        let mut top = a.create_label();
        a.mov(ecx, 0xFFFF_FFFFu32)?;
        a.set_label(&mut top)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    let p = Program::new(Mode::Prot32, code);
    let mut g = c.benchmark_group("chain");
    g.throughput(Throughput::Elements(PASSES));
    let mut vm = p.build_vm().expect("guest memory");
    let mut t = translator();
    t.run(&mut vm, Budget::insns(1001));
    g.bench_function("loop_in_one_run", |b| {
        b.iter(|| black_box(t.run(&mut vm, Budget::insns(2 * PASSES))))
    });
    g.bench_function("one_run_per_pass", |b| {
        b.iter(|| {
            for _ in 0..PASSES {
                black_box(t.run(&mut vm, Budget::insns(2)));
            }
        })
    });
    g.finish();
}

// ---- interpreter vs translator on guest loops --------------------------------

/// Run `w` to its HLT on a fresh machine with engine `e`.
fn run_once(w: &Workload, vm: &mut Vm, e: &mut dyn Engine) -> Exit {
    e.run(vm, Budget::insns(10 * w.instructions))
}

/// Both engines reach the program's HLT with the same registers: a
/// workload one of them cannot run is reported and left out, not timed.
fn runs_alike(w: &Workload) -> bool {
    let mut finals = Vec::new();
    for (name, mut e) in [
        ("interp", Box::new(Interpreter::new()) as Box<dyn Engine>),
        ("jit", Box::new(translator())),
    ] {
        let mut vm = w.program.build_vm().expect("guest memory");
        let exit = run_once(w, &mut vm, &mut *e);
        let at = vm.cpu.seg[1].base.wrapping_add(vm.cpu.eip);
        let in_code = (layout::CODE_BASE..layout::CODE_BASE + layout::CODE_MAX).contains(&at);
        if exit != Exit::Halted || !in_code {
            eprintln!(
                "{}: skipped: {name} stopped with {exit:?} at {at:#x}",
                w.name
            );
            return false;
        }
        finals.push((vm.cpu.gpr, vm.cpu.eip));
    }
    if finals[0] != finals[1] {
        eprintln!("{}: skipped: interp and jit end differently", w.name);
        return false;
    }
    true
}

fn bench_engines(c: &mut Criterion) {
    let workloads = loops::all();
    let mut g = c.benchmark_group("engines");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    for w in workloads.iter().filter(|w| runs_alike(w)) {
        g.throughput(Throughput::Elements(w.instructions));
        g.bench_function(format!("{}/interp", w.name), |b| {
            b.iter_batched(
                || {
                    (
                        w.program.build_vm().expect("guest memory"),
                        Interpreter::new(),
                    )
                },
                |(mut vm, mut i)| {
                    black_box(run_once(w, &mut vm, &mut i));
                    (vm, i)
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_function(format!("{}/jit", w.name), |b| {
            b.iter_batched(
                || (w.program.build_vm().expect("guest memory"), translator()),
                |(mut vm, mut t)| {
                    black_box(run_once(w, &mut vm, &mut t));
                    (vm, t)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_lookup, bench_translate, bench_invalidate, bench_chain, bench_engines
}
criterion_main!(benches);
