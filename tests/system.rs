//! Hand-written programs for the system-instruction paths, run on the
//! interpreter and on KVM through the differential harness (lockstep and
//! to completion): descriptor-table and control-register access, segment
//! loads and their faults, far transfers, IRET, software interrupts and
//! exceptions through the IDT/IVT, flags instructions, port I/O and MSRs.
//! Each program must give no divergence and must not be skipped. Without
//! /dev/kvm they print `skipped: no /dev/kvm` and run on the interpreter
//! alone, which then only checks that they halt.

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;
use umbra::diff::program::{layout, sel};
use umbra::diff::{self, Mode, Program, Session};
use umbra_core::Budget;

fn kvm() -> bool {
    if !std::path::Path::new("/dev/kvm").exists() || diff::engine_available("kvm").is_err() {
        eprintln!("skipped: no /dev/kvm");
        return false;
    }
    true
}

fn program(mode: Mode, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Program {
    let mut a = CodeAssembler::new(mode.bitness()).unwrap();
    f(&mut a).unwrap();
    a.hlt().unwrap();
    Program::new(mode, a.assemble(mode.entry_eip() as u64).unwrap())
}

/// Run `p` on the interpreter and KVM, in lockstep and to completion.
fn agree(name: &str, p: &Program) {
    let mut vm = p.build_vm().unwrap();
    let mut e = diff::make_engine("interp", &mut vm, false).unwrap();
    e.run(&mut vm, Budget::insns(10_000));
    assert!(vm.cpu.halted, "{name}: the interpreter did not halt");
    if !kvm() {
        return;
    }
    for lockstep in [true, false] {
        let out = Session::new("interp", "kvm", lockstep).check(p).unwrap();
        if let Some(d) = out.divergence {
            panic!("{name} (lockstep {lockstep}):\n{d}");
        }
        assert_eq!(out.skipped, None, "{name} (lockstep {lockstep})");
    }
}

#[test]
fn descriptor_tables_and_control_registers() {
    agree(
        "sgdt/sidt/sldt/str/smsw, cr reads, clts",
        &program(Mode::Prot32, |a| {
            a.sgdt(ptr(ebx))?;
            a.sidt(ptr(ebx + 8))?;
            a.sldt(ax)?;
            a.str(cx)?;
            a.smsw(dx)?;
            a.mov(esi, cr0)?;
            a.mov(edi, cr4)?;
            a.mov(eax, 0x1234_5000)?;
            a.mov(cr2, eax)?;
            a.mov(ebp, cr2)?;
            a.mov(eax, cr0)?;
            a.or(eax, 8)?; // TS
            a.mov(cr0, eax)?;
            a.clts()?;
            a.mov(ecx, cr0)
        }),
    );
}

#[test]
fn lar_lsl_verr_verw_on_gdt_selectors() {
    agree(
        "lar/lsl/verr/verw",
        &program(Mode::Prot32, |a| {
            for s in [sel::CODE32, sel::DATA32, sel::CODE16, 0x38, 0x0] {
                a.mov(ecx, s as u32)?;
                a.lar(eax, ecx)?;
                a.lsl(edx, ecx)?;
                a.pushfd()?;
                a.verr(cx)?;
                a.pushfd()?;
                a.verw(cx)?;
                a.pushfd()?;
            }
            Ok(())
        }),
    );
}

#[test]
fn segment_loads_and_their_faults() {
    agree(
        "mov sreg, lds, push/pop sreg",
        &program(Mode::Prot32, |a| {
            a.mov(eax, sel::DATA32 as u32)?;
            a.mov(es, ax)?;
            a.mov(fs, ax)?;
            a.push(gs)?;
            a.pop(gs)?;
            a.mov(dword_ptr(ebx), 0x20900)?;
            a.mov(word_ptr(ebx + 4), sel::DATA32 as u32)?;
            a.lds(esi, ptr(ebx))?;
            a.mov(edi, dword_ptr(esi))?;
            a.mov(ecx, 0)?;
            a.mov(fs, cx) // null into FS: allowed
        }),
    );
    agree(
        "selector beyond the GDT limit: #GP(sel)",
        &program(Mode::Prot32, |a| {
            a.mov(eax, 0x40)?;
            a.mov(ds, ax)
        }),
    );
    agree(
        "code selector into SS: #GP(sel)",
        &program(Mode::Prot32, |a| {
            a.mov(eax, sel::CODE32 as u32)?;
            a.mov(ss, ax)
        }),
    );
}

/// The far-transfer program; `t` holds the linear addresses of its three
/// targets (from a first assembly: `mov r32, imm32` has a fixed length, so
/// the second assembly has the same layout).
fn far_program(a: &mut CodeAssembler, t: [u32; 3]) -> Result<[CodeLabel; 3], IcedError> {
    let mut l1 = a.create_label();
    let mut l2 = a.create_label();
    let mut l3 = a.create_label();
    let mut done = a.create_label();
    // far JMP through memory to l1
    a.mov(eax, t[0])?;
    a.mov(dword_ptr(ebx), eax)?;
    a.mov(word_ptr(ebx + 4), sel::CODE32 as u32)?;
    a.jmp(fword_ptr(ebx))?;
    a.set_label(&mut l1)?;
    // far CALL through memory to l2, which returns with RETF
    a.mov(eax, t[1])?;
    a.mov(dword_ptr(ebx), eax)?;
    a.call(fword_ptr(ebx))?;
    a.jmp(done)?;
    a.set_label(&mut l2)?;
    a.mov(esi, 0x5a5a)?;
    a.retf()?;
    a.set_label(&mut done)?;
    // IRETD to l3 at the same privilege
    a.mov(eax, t[2])?;
    a.pushfd()?;
    a.push(sel::CODE32 as u32)?;
    a.push(eax)?;
    a.iretd()?;
    a.set_label(&mut l3)?;
    a.nop()?;
    a.hlt()?;
    Ok([l1, l2, l3])
}

#[test]
fn far_transfers_and_iret() {
    let base = Mode::Prot32.entry_eip() as u64;
    let mut a = CodeAssembler::new(32).unwrap();
    let labels = far_program(&mut a, [0; 3]).unwrap();
    let r = a
        .assemble_options(base, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
        .unwrap();
    let t = labels.map(|l| r.label_ip(&l).unwrap() as u32);
    let mut a = CodeAssembler::new(32).unwrap();
    far_program(&mut a, t).unwrap();
    let p = Program::new(Mode::Prot32, a.assemble(base).unwrap());
    agree("far jmp, far call/retf, iretd", &p);
}

#[test]
fn software_interrupts_and_exceptions_through_the_idt() {
    agree("int 30h", &program(Mode::Prot32, |a| a.int(0x30)));
    agree("int3", &program(Mode::Prot32, |a| a.int3()));
    agree(
        "into with OF",
        &program(Mode::Prot32, |a| {
            a.mov(eax, 0x7fff_ffff)?;
            a.add(eax, 1)?;
            a.into()
        }),
    );
    agree(
        "bound out of range: #BR",
        &program(Mode::Prot32, |a| {
            a.mov(dword_ptr(ebx), 10)?;
            a.mov(dword_ptr(ebx + 4), 20)?;
            a.mov(eax, 30)?;
            a.bound(eax, ptr(ebx))
        }),
    );
    agree("ud2: #UD", &program(Mode::Prot32, |a| a.ud2()));
    agree(
        "divide by zero: #DE",
        &program(Mode::Prot32, |a| {
            a.xor(ecx, ecx)?;
            a.div(ecx)
        }),
    );
    agree(
        "int 30h in real mode",
        &program(Mode::Real, |a| a.int(0x30)),
    );
    agree(
        "#DE in real mode",
        &program(Mode::Real, |a| {
            a.xor(cx, cx)?;
            a.div(cx)
        }),
    );
}

#[test]
fn flags_instructions() {
    agree(
        "cli/sti/pushfd/popfd/cld/std/lahf/sahf",
        &program(Mode::Prot32, |a| {
            a.cli()?;
            a.pushfd()?;
            a.sti()?;
            a.nop()?;
            a.pushfd()?;
            a.std()?;
            a.pushfd()?;
            a.cld()?;
            a.mov(eax, 0x0000_08d5)?;
            a.push(eax)?;
            a.popfd()?;
            a.lahf()?;
            a.pushfd()?;
            a.cli()
        }),
    );
    agree(
        "pushf/popf in real mode",
        &program(Mode::Real, |a| {
            a.pushf()?;
            a.mov(ax, 0x08d5)?;
            a.push(ax)?;
            a.popf()?;
            a.pushf()?;
            a.cli()
        }),
    );
}

#[test]
fn port_io_and_msrs() {
    agree(
        "in/out to an unclaimed port",
        &program(Mode::Prot32, |a| {
            a.mov(al, 0x55)?;
            a.out(0x80, al)?;
            a.in_(al, 0x81)?;
            a.mov(dx, 0x81)?;
            a.in_(eax, dx)
        }),
    );
    agree(
        "wrmsr/rdmsr SYSENTER_CS/ESP/EIP",
        &program(Mode::Prot32, |a| {
            for (msr, v) in [(0x174u32, 0x10u32), (0x175, 0x8000), (0x176, 0x1_2345)] {
                a.mov(ecx, msr)?;
                a.mov(eax, v)?;
                a.xor(edx, edx)?;
                a.wrmsr()?;
                a.xor(eax, eax)?;
                a.rdmsr()?;
                a.push(eax)?;
            }
            Ok(())
        }),
    );
    agree(
        "rdmsr of an unknown MSR: #GP(0)",
        &program(Mode::Prot32, |a| {
            a.mov(ecx, 0x1234_5678)?;
            a.rdmsr()
        }),
    );
}

#[test]
fn layout_is_what_the_programs_assume() {
    // The programs above address data through EBX = DATA_BASE + DATA_PTR.
    let p = program(Mode::Prot32, |a| a.nop());
    let vm = p.build_vm().unwrap();
    assert_eq!(vm.cpu.gpr[3] as u32, layout::DATA_BASE + layout::DATA_PTR);
}
