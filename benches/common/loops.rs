//! The guest loops both criterion benches run (benches/interp.rs and
//! benches/translator.rs), laid out by the differential harness's
//! `Program` (flat 32-bit protected mode): an ALU loop (also with 2-level
//! paging on), a MOV-based memory copy, REP MOVSD and a CALL/RET loop,
//! each with the number of instructions it retires.

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

/// All of them, in report order.
pub fn all() -> [Workload; 5] {
    [
        alu_loop(Mode::Prot32),
        mov_copy(),
        rep_movsd(),
        call_ret(),
        alu_loop(Mode::Paging),
    ]
}
