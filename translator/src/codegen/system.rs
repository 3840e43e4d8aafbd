//! System instructions cheap enough to run inline where the block's mode
//! rules out their faults: CLD and STD, CLI at CPL 0, STI at CPL 0 when
//! its block ends after the instruction in its shadow, PUSHFD, and RDTSC
//! at CPL 0 through a light call that leaves the guest registers in the
//! host's. Everywhere else they stay monitor calls
//! (`helpers::exec_insn`).
//!
//! The guest's EFLAGS outside the six arithmetic flags live in
//! `CpuState::eflags`, which generated code reaches through `JitCtx::vm`
//! (as the string instructions read DF there); `JitCtx::load`/`store`
//! only move the arithmetic flags, so the other bits written here are
//! what every monitor routine and the dispatcher see.

use core::mem::offset_of;

use dynasmrt::{dynasm, DynasmApi};
use iced_x86::{Code, Mnemonic};
use umbra_core::cpu::{flags, CpuState, SegReg};
use umbra_core::vm::Vm;

use super::Emitter;
use crate::block::{mode, seg_flat, InsnMeta};
use crate::ctx::{off, JitCtx, ARITH_FLAGS};
use crate::helpers;

/// Offsets of `JitCtx::vm` and of the guest EFLAGS in `Vm`.
const CTX_VM: i32 = offset_of!(JitCtx, vm) as i32;
const VM_EFLAGS: i32 = (offset_of!(Vm, cpu) + offset_of!(CpuState, eflags)) as i32;

/// Index of ECX in the guest register file (`off::gpr`).
const ECX: usize = 1;

/// `m` inline if this module handles it in the block's mode.
pub fn emit(e: &mut Emitter, m: &InsnMeta) -> bool {
    let cpl0 = (e.key.mode >> mode::CPL_SHIFT) & 3 == 0 && e.key.mode & mode::V86 == 0;
    match m.ins.mnemonic() {
        Mnemonic::Cld => emit_eflags_bit(e, flags::DF, false),
        Mnemonic::Std => emit_eflags_bit(e, flags::DF, true),
        // CPL 0 <= IOPL always (and real mode has no IOPL check): CLI
        // cannot fault (SDM Vol. 2A CLI, Operation).
        Mnemonic::Cli if cpl0 => emit_eflags_bit(e, flags::IF, false),
        // CR4.TSD only faults outside CPL 0 (SDM Vol. 2B RDTSC).
        Mnemonic::Rdtsc if cpl0 => emit_rdtsc(e, m),
        Mnemonic::Pushfd => emit_pushfd(e, m),
        _ => false,
    }
}

/// Clear or set one bit of the guest EFLAGS outside the arithmetic
/// flags:
///
/// ```text
///   pushfq ; pop [rbp+hflags]                  (if dirty)
///   mov r10, [rbp+vm]
///   and dword [r10+eflags], ~bit  |  or dword [r10+eflags], bit
/// ```
fn emit_eflags_bit(e: &mut Emitter, bit: u32, set: bool) -> bool {
    e.clobber_flags();
    dynasm!(e.ops ; .arch x64 ; mov r10, QWORD [rbp + CTX_VM]);
    if set {
        dynasm!(e.ops ; .arch x64 ; or DWORD [r10 + VM_EFLAGS], bit as i32);
    } else {
        dynasm!(e.ops ; .arch x64 ; and DWORD [r10 + VM_EFLAGS], !bit as i32);
    }
    true
}

/// STI of a block that ends with the instruction in its shadow
/// (`GuestBlock::sti_shadow`, only at CPL 0 outside virtual-8086 mode):
/// set IF; the block leaves for the dispatcher after the next
/// instruction, and nothing checks events before.
pub fn emit_sti(e: &mut Emitter) {
    emit_eflags_bit(e, flags::IF, true);
}

/// RDTSC through `helpers::rdtsc`, which only reads the clock: ECX is the
/// one guest register in a caller-saved host register that RDTSC keeps
/// (EAX and EDX are its outputs), so it alone is saved.
///
/// ```text
///   pushfq ; pop [rbp+hflags]                  (if dirty)
///   mov [rbp+gpr(ECX)], ecx
///   mov rdi, rbp ; mov esi, rem ; mov rax, helpers::rdtsc ; call rax
///   mov rdx, rax ; shr rdx, 32 ; mov eax, eax
///   mov ecx, [rbp+gpr(ECX)] ; mov r8, [rbp+shadow]    (the pinned table)
/// ```
fn emit_rdtsc(e: &mut Emitter, m: &InsnMeta) -> bool {
    e.clobber_flags();
    dynasm!(e.ops
        ; .arch x64
        ; mov DWORD [rbp + off::gpr(ECX)], ecx
        ; mov rdi, rbp
        ; mov esi, m.rem as i32
        ; mov rax, QWORD helpers::rdtsc as *const () as i64
        ; call rax
        ; mov rdx, rax
        ; shr rdx, 32
        ; mov eax, eax
        ; mov ecx, DWORD [rbp + off::gpr(ECX)]
        ; mov r8, QWORD [rbp + off::SHADOW]
    );
    true
}

/// PUSHFD outside virtual-8086 mode (where it cannot fault for IOPL)
/// with a 32-bit flat stack: the EFLAGS image without VM and RF (SDM Vol.
/// 2B PUSHF) pushed like a register, or the whole instruction in the
/// monitor on a lookup miss.
///
/// ```text
///   pushfq ; pop [rbp+hflags]                  (if dirty)
///   mov r10, [rbp+vm] ; mov r11d, [r10+eflags] ; and r11d, ~(ARITH|VM|RF)
///   mov r9d, [rbp+hflags] ; and r9d, ARITH ; or r11d, r9d
///   <push r11d (`flow::emit_push32_r11`)>
/// ```
fn emit_pushfd(e: &mut Emitter, m: &InsnMeta) -> bool {
    if m.ins.code() != Code::Pushfd
        || e.key.mode & mode::V86 != 0
        || e.key.mode & mode::STACK32 == 0
        || !seg_flat(e.key.mode, SegReg::Ss, false)
        || !seg_flat(e.key.mode, SegReg::Ss, true)
    {
        return false;
    }
    e.clobber_flags();
    let slow = e.ops.new_dynamic_label();
    dynasm!(e.ops
        ; .arch x64
        ; mov r10, QWORD [rbp + CTX_VM]
        ; mov r11d, DWORD [r10 + VM_EFLAGS]
        ; and r11d, !(ARITH_FLAGS | flags::VM | flags::RF) as i32
        ; mov r9d, DWORD [rbp + off::HFLAGS]
        ; and r9d, ARITH_FLAGS as i32
        ; or r11d, r9d
    );
    super::flow::emit_push32_r11(e, m, slow);
    true
}

#[cfg(test)]
mod tests {
    //! The instructions run inline on the translator and through the
    //! interpreter; the values are also checked by hand.

    use iced_x86::code_asm::*;
    use umbra_core::cpu::{cr4, flags};

    use crate::codegen::native::tests::{asm32, assert_same, run_both_with};

    const EAX: usize = 0;
    const ECX: usize = 1;
    const EDX: usize = 2;
    const EBX: usize = 3;

    /// STD, then CLD, CLI and a PUSHFD after each flag change, no monitor
    /// call: the images on the stack carry DF and IF as each left them,
    /// the arithmetic flags of the last ALU instruction, never RF or VM.
    #[test]
    fn cld_std_cli_pushfd_inline() {
        let code = asm32(|a| {
            // The stack page's first write may fill the shadow through
            // the monitor: let a PUSH take it.
            a.push(eax)?;
            a.pop(eax)?;
            a.std()?;
            a.mov(eax, 0xFFFF_FFFFu32)?;
            a.add(eax, 1)?; // ZF CF AF PF, result 0
            a.pushfd()?;
            a.cld()?;
            a.cli()?;
            a.cmp(eax, 1)?; // 0 - 1: CF SF AF PF (0xFFFFFFFF has even parity)
            a.pushfd()?;
            a.pop(ebx)?;
            a.pop(edx)?;
            Ok(())
        });
        let setup = |vm: &mut umbra_core::vm::Vm| {
            vm.cpu.eflags = flags::FIXED1 | flags::IF | flags::RF;
        };
        let (mut j, mut i, calls) = run_both_with(setup, [0; 8], &code);
        assert_same(&mut j, &mut i, 0xFFFF_FFFF);
        let (cf, pf, af, zf, sf) = (1, 1 << 2, 1 << 4, 1 << 6, 1 << 7);
        let base = flags::FIXED1;
        assert_eq!(
            j.cpu.reg32(EDX),
            base | flags::IF | flags::DF | zf | cf | af | pf,
            "first image"
        );
        assert_eq!(j.cpu.reg32(EBX), base | cf | sf | af | pf, "second image");
        assert_eq!(j.cpu.eflags & (flags::DF | flags::IF), 0);
        assert_eq!(calls, 1, "monitor calls: HLT");
    }

    /// Flags spilled to the context before a memory access (its lookup
    /// clobbers RFLAGS) and at the block's exit keep all six arithmetic
    /// flags, OF (the one in the image's second byte) among them: a
    /// PUSHFD after each store reads the spilled image, and the HLT's
    /// exit carries the last one into EFLAGS.
    #[test]
    fn spilled_flags_keep_every_arithmetic_flag() {
        const DATA: u32 = 0x9000;
        let code = asm32(|a| {
            a.push(eax)?;
            a.pop(eax)?;
            a.mov(eax, 0x7FFF_FFFFu32)?;
            a.add(eax, 1)?; // 0x80000000: OF SF AF PF
            a.mov(dword_ptr(DATA), ecx)?;
            a.pushfd()?;
            a.pop(edx)?;
            a.mov(eax, 0x8000_0000u32)?;
            a.add(eax, eax)?; // 0 with a carry: OF CF ZF PF
            a.mov(dword_ptr(DATA), ecx)?;
            a.pushfd()?;
            a.pop(ebx)?;
            a.mov(eax, 0x4000_0000u32)?;
            a.add(eax, eax)?; // 0x80000000: OF SF PF
            a.mov(dword_ptr(DATA), ecx)?;
            Ok(())
        });
        let (mut j, mut i, _) = run_both_with(|_| {}, [0; 8], &code);
        assert_same(&mut j, &mut i, 0xFFFF_FFFF);
        let (cf, pf, af, zf, sf, of) = (1, 1 << 2, 1 << 4, 1 << 6, 1 << 7, 1 << 11);
        let base = flags::FIXED1;
        assert_eq!(j.cpu.reg32(EDX), base | of | sf | af | pf, "first image");
        assert_eq!(j.cpu.reg32(EBX), base | of | cf | zf | pf, "second image");
        assert_eq!(j.cpu.eflags & 0x8D5, of | sf | pf, "at the exit");
    }

    /// RDTSC at CPL 0 runs the light call: EDX:EAX from the clock, ECX
    /// and the flags of the CMP before it kept; the interpreter, run from
    /// the same state after the same number of instructions, reads a TSC
    /// of the same derivation (the TSC offset plus the clock).
    #[test]
    fn rdtsc_inline_keeps_ecx_and_the_flags() {
        let code = asm32(|a| {
            a.mov(ecx, 0x1234_5678u32)?;
            a.cmp(ecx, 0x1234_5679)?; // borrow: CF SF
            a.rdtsc()?;
            a.setb(bl)?;
            a.sets(bh)?;
            Ok(())
        });
        // A TSC offset far above any clock reading: EDX is then its high
        // half, on both engines, whatever the clock says.
        let setup = |vm: &mut umbra_core::vm::Vm| {
            vm.cpu.tsc = 0x0000_0777_0000_0000;
            vm.cpu.cr4 |= cr4::TSD;
        };
        let (j, _, calls) = run_both_with(setup, [0; 8], &code);
        assert_eq!(j.cpu.reg32(ECX), 0x1234_5678);
        assert_eq!(j.cpu.reg32(EBX) & 0xFFFF, 0x0101, "CF and SF after RDTSC");
        assert_eq!(j.cpu.reg32(EDX), 0x777);
        assert_ne!(j.cpu.reg32(EAX), 0, "the clock moved the low half");
        assert_eq!(calls, 1, "monitor calls: HLT");
    }
}
