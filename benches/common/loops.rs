//! The guest loops both criterion benches run (benches/interp.rs and
//! benches/translator.rs), laid out by the differential harness's
//! `Program` (flat 32-bit protected mode): an ALU loop (also with 2-level
//! paging on), a MOV-based memory copy, REP MOVSD, a CALL/RET loop and an
//! x87 loop, each with the number of instructions it retires.

use iced_x86::code_asm::*;
use umbra::diff::program::layout;
use umbra::diff::{Mode, Program};

/// Iterations of the single loops.
pub const LOOP: u32 = 20_000;
/// Dwords per copy and copies for the memory loops.
pub const DWORDS: u32 = 512;
pub const COPIES: u32 = 40;

/// A guest loop and the instructions it retires.
pub struct Workload {
    pub name: &'static str,
    pub program: Program,
    pub instructions: u64,
}

pub fn assemble(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).expect("32-bit assembler");
    f(&mut a).expect("benchmark program assembles");
    a.assemble(layout::CODE_BASE as u64)
        .expect("benchmark program encodes")
}

/// mov ecx, N; L: add eax, ebx; xor edx, eax; sub esi, 3; dec ecx; jnz L; hlt
pub fn alu_loop(mode: Mode) -> Workload {
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
pub fn mov_copy() -> Workload {
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

/// COPIES times: REP MOVSD of DWORDS dwords (an iteration counts as one
/// instruction, as a single-stepping CPU retires it).
pub fn rep_movsd() -> Workload {
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
pub fn call_ret() -> Workload {
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

/// The workload's awk step `x = (16807 * x) % 2147483647` as i386 GCC
/// compiles it (FPREM loop on C2), then the double stored and converted
/// to an int with the truncating control word:
///
/// ```text
///   <x = 20260101.0, k = 16807, m = 2147483647.0 into the data> ; fninit
///   mov ecx, N
/// L: fld qword [m] ; fld qword [x] ; fimul dword [k]
/// R: fprem ; fnstsw ax ; test ah, 4 ; jnz R
///   fstp st1 ; fst qword [x]
///   fnstcw [cw] ; movzx eax, word [cw] ; or ah, 0Ch ; mov [cw2], ax
///   fldcw [cw2] ; fistp dword [i] ; fldcw [cw]
///   dec ecx ; jnz L ; hlt
/// ```
/// FPREM finishes in one pass (the exponents differ by less than 64).
pub fn x87_lcg() -> Workload {
    let d = layout::DATA_BASE;
    let x = 20260101.0f64.to_bits();
    let m = 2147483647.0f64.to_bits();
    let code = assemble(|a| {
        let mut top = a.create_label();
        let mut rem = a.create_label();
        a.mov(dword_ptr(d), x as u32)?;
        a.mov(dword_ptr(d + 4), (x >> 32) as u32)?;
        a.mov(dword_ptr(d + 8), 16807u32)?;
        a.mov(dword_ptr(d + 16), m as u32)?;
        a.mov(dword_ptr(d + 20), (m >> 32) as u32)?;
        a.fninit()?;
        a.mov(ecx, LOOP)?;
        a.set_label(&mut top)?;
        a.fld(qword_ptr(d + 16))?;
        a.fld(qword_ptr(d))?;
        a.fimul(dword_ptr(d + 8))?;
        a.set_label(&mut rem)?;
        a.fprem()?;
        a.fnstsw(ax)?;
        a.test(ah, 4)?;
        a.jnz(rem)?;
        a.fstp(st1)?;
        a.fst(qword_ptr(d))?;
        a.fnstcw(word_ptr(d + 24))?;
        a.movzx(eax, word_ptr(d + 24))?;
        a.or(ah, 0x0C)?;
        a.mov(word_ptr(d + 26), ax)?;
        a.fldcw(word_ptr(d + 26))?;
        a.fistp(dword_ptr(d + 28))?;
        a.fldcw(word_ptr(d + 24))?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    Workload {
        name: "x87_lcg",
        program: Program::new(Mode::Prot32, code),
        instructions: 7 + 18 * LOOP as u64 + 1,
    }
}

/// All of them, in report order.
pub fn all() -> [Workload; 6] {
    [
        alu_loop(Mode::Prot32),
        mov_copy(),
        rep_movsd(),
        call_ret(),
        alu_loop(Mode::Paging),
        x87_lcg(),
    ]
}
