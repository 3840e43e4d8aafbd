//! REP MOVS and REP STOS in generated code: with a 32-bit address size,
//! EFLAGS.DF clear, flat segments and both ranges of a batch inside one
//! page each, a batch runs as the host's own `rep movs` / `rep stos`.
//!
//! A batch is what the interpreter runs in one execution of the
//! instruction (`interp::string::run_string`): min(ECX, rep_batch)
//! iterations, read at run time from the monitor (`Monitor::rep_batch`).
//! Each further execution while ECX is not zero costs one instruction of
//! the budget, as a re-executed instruction does in the interpreter; when
//! the budget is out the block leaves with EIP at the instruction. Host
//! RFLAGS.DF is always clear in generated code (the guest's DF lives in
//! `CpuState::eflags`), so the host copy runs forwards like the guest's.
//!
//! Anything else (DF set, a range crossing a page or wrapping, a shadow
//! miss: not present, watched for writes, MMIO) runs the instruction in
//! the monitor, which commits iteration by iteration and faults
//! precisely. Nothing is committed before both lookups hit.

use core::mem::offset_of;

use dynasmrt::{dynasm, DynasmApi, DynasmLabelApi};
use iced_x86::{Mnemonic, OpKind};
use umbra_core::cpu::{flags, CpuState, SegReg};
use umbra_core::vm::Vm;

use super::mem::{emit_linear, emit_lookup, perm_bit, seg_index};
use super::{Emitter, FlagState};
use crate::block::{seg_flat, InsnMeta};
use crate::ctx::{exit, off, JitCtx};
use crate::engine::Monitor;
use crate::helpers;

/// Offset of `JitCtx::vm`, of the guest EFLAGS in `Vm`, of
/// `JitCtx::engine` and of `Monitor::rep_batch`.
const CTX_VM: i32 = offset_of!(JitCtx, vm) as i32;
const VM_EFLAGS: i32 = (offset_of!(Vm, cpu) + offset_of!(CpuState, eflags)) as i32;
const CTX_ENGINE: i32 = offset_of!(JitCtx, engine) as i32;
const MON_REP_BATCH: i32 = offset_of!(Monitor, rep_batch) as i32;

/// Range check and lookup of `[index, index + bytes)` (index register
/// `idx`: 14 = ESI, 15 = EDI; bytes = R11 << `shift`) through segment
/// `seg`: host pointer in RSI, or a jump to `miss`. Clobbers RDI, R8-R10.
///
/// ```text
///   mov r9d, r11d ; shl r9, shift
///   mov r10d, idx ; lea r10, [r10+r9-1] ; shr r10, 32 ; jnz miss  (wraps)
///   mov edi, idx ; add edi, [rbp+seg_base(seg)]                   (linear)
///   mov r10d, edi ; and r10d, 0xFFF ; add r10, r9
///   cmp r10, 0x1000 ; ja miss                                     (page)
///   <shadow lookup of edi for the access: host pointer in rsi>
/// ```
fn emit_range(
    e: &mut Emitter,
    idx: u8,
    shift: i8,
    seg: SegReg,
    write: bool,
    miss: dynasmrt::DynamicLabel,
) {
    dynasm!(e.ops
        ; .arch x64
        ; mov r9d, r11d
        ; shl r9, shift
        ; mov r10d, Rd(idx)
        ; lea r10, [r10 + r9 - 1]
        ; shr r10, 32
        ; jnz =>miss
        ; mov edi, Rd(idx)
        ; add edi, DWORD [rbp + off::seg_base(seg as usize)]
        ; mov r10d, edi
        ; and r10d, 0xFFF
        ; add r10, r9
        ; cmp r10, 0x1000
        ; ja =>miss
    );
    let bit = perm_bit(e, write);
    emit_lookup(e, 1, bit, miss);
}

/// REP MOVS / REP STOS (F2 or F3) with a 32-bit address size in a block
/// whose ES (and MOVS source segment) is flat: emitted and true, or false
/// (nothing emitted).
///
/// ```text
///   pushfq ; pop [rbp+hflags]                 (if dirty)
/// top:
///   mov r8, [rbp+vm] ; test dword [r8+eflags], DF ; jnz slow
///   test ecx, ecx ; jz done
///   mov r8, [rbp+engine] ; mov r11d, [r8+rep_batch]
///   cmp r11d, ecx ; cmova r11d, ecx           (n = min(batch, ECX))
///   <range EDI through ES for a write> ; push rsi
///   MOVS: <range ESI through seg for a read, or src_miss>
///   pop rdi ; mov r8, rcx ; mov ecx, r11d
///   rep movs|stos <size>
///   mov rcx, r8 ; sub ecx, r11d
///   mov r9d, r11d ; shl r9, log2(size) ; add r15d, r9d ; (MOVS) add r14d, r9d
///   test ecx, ecx ; jz done
///   sub qword [rbp+budget], 1 ; jge top       (one more execution)
///   add qword [rbp+budget], rem               (undo it, give back the rest)
///   mov dword [rbp+eip], eip ; mov dword [rbp+exit], NEXT ; jmp exit_store
/// src_miss:
///   add rsp, 8
/// slow:
///   <monitor call exec_insn>                  (one batch; leaves if ECX left)
/// done:
/// ```
pub fn emit(e: &mut Emitter, m: &InsnMeta) -> bool {
    let ins = &m.ins;
    let movs = match ins.mnemonic() {
        Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd => true,
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd => false,
        _ => return false,
    };
    if !(ins.has_rep_prefix() || ins.has_repne_prefix()) || ins.has_lock_prefix() {
        return false;
    }
    // MOVSD is also the SSE2 move (F2 0F 10): only the string form here.
    if ins.op0_kind() != OpKind::MemoryESEDI {
        return false;
    }
    let size = ins.memory_size().size();
    let shift: i8 = match size {
        1 => 0,
        2 => 1,
        4 => 2,
        _ => return false,
    };
    let mode = e.key.mode;
    if !seg_flat(mode, SegReg::Es, true) || !seg_flat(mode, SegReg::Es, false) {
        return false;
    }
    let src = if movs {
        if ins.op1_kind() != OpKind::MemorySegESI {
            return false;
        }
        match seg_index(ins.memory_segment()) {
            Some(s) if seg_flat(mode, s, false) => Some(s),
            _ => return false,
        }
    } else {
        None
    };
    e.clobber_flags();
    let top = e.ops.new_dynamic_label();
    let slow = e.ops.new_dynamic_label();
    let src_miss = e.ops.new_dynamic_label();
    let done = e.ops.new_dynamic_label();
    let exit_store = e.stubs.exit_store;
    dynasm!(e.ops
        ; .arch x64
        ; =>top
        ; mov r10, QWORD [rbp + CTX_VM]
        ; test DWORD [r10 + VM_EFLAGS], flags::DF as i32
        ; jnz =>slow
        ; test ecx, ecx
        ; jz =>done
        ; mov r10, QWORD [rbp + CTX_ENGINE]
        ; mov r11d, DWORD [r10 + MON_REP_BATCH]
        ; cmp r11d, ecx
        ; cmova r11d, ecx
    );
    emit_range(e, 15, shift, SegReg::Es, true, slow);
    dynasm!(e.ops ; .arch x64 ; push rsi);
    if let Some(s) = src {
        emit_range(e, 14, shift, s, false, src_miss);
    }
    dynasm!(e.ops
        ; .arch x64
        ; pop rdi
        ; mov r10, rcx
        ; mov ecx, r11d
    );
    match (movs, size) {
        (true, 1) => dynasm!(e.ops ; .arch x64 ; rep movsb),
        (true, 2) => dynasm!(e.ops ; .arch x64 ; rep movsw),
        (true, _) => dynasm!(e.ops ; .arch x64 ; rep movsd),
        (false, 1) => dynasm!(e.ops ; .arch x64 ; rep stosb),
        (false, 2) => dynasm!(e.ops ; .arch x64 ; rep stosw),
        (false, _) => dynasm!(e.ops ; .arch x64 ; rep stosd),
    }
    dynasm!(e.ops
        ; .arch x64
        ; mov rcx, r10
        ; sub ecx, r11d
        ; mov r9d, r11d
        ; shl r9, shift
        ; add r15d, r9d
    );
    if movs {
        dynasm!(e.ops ; .arch x64 ; add r14d, r9d);
    }
    dynasm!(e.ops
        ; .arch x64
        ; test ecx, ecx
        ; jz =>done
        ; sub QWORD [rbp + off::BUDGET], 1
        ; jge =>top
        ; add QWORD [rbp + off::BUDGET], m.rem as i32
        ; mov DWORD [rbp + off::EIP], m.eip as i32
        ; mov DWORD [rbp + off::EXIT], exit::NEXT as i32
        ; jmp extern exit_store
        ; =>src_miss
        ; add rsp, 8
        ; =>slow
    );
    e.flags = FlagState {
        in_host: false,
        dirty: false,
    };
    e.call_monitor(
        helpers::exec_insn as *const () as usize,
        m as *const InsnMeta as u64,
    );
    dynasm!(e.ops ; .arch x64 ; =>done);
    e.flags = FlagState {
        in_host: false,
        dirty: false,
    };
    true
}

/// LODS, SCAS and STOS without a REP prefix, with a 32-bit address size
/// and a flat segment: one element through the inline shadow lookup. The
/// host's own CMP computes SCAS's flags (AL/AX/EAX minus the element, as
/// SCAS defines them); the index register steps with a flag-free LEA. DF
/// set or a miss runs the instruction in the monitor (the block's cold
/// path), which faults precisely.
///
/// ```text
///   pushfq ; pop [rbp+hflags]                 (if dirty)
///   mov r8, [rbp+vm] ; test dword [r8+eflags], DF ; jnz slow
///   mov edi, idx ; <linear address (`mem::emit_linear`)>
///   <shadow lookup for the access: host pointer in rsi>
///   LODS: mov al|ax|eax, [rsi]   SCAS: cmp al|ax|eax, [rsi]
///   STOS: mov [rsi], al|ax|eax
///   lea idx, [idx+size]
/// resume:
/// ```
pub fn emit_single(e: &mut Emitter, m: &InsnMeta) -> bool {
    let ins = &m.ins;
    #[derive(PartialEq)]
    enum Op {
        Lods,
        Scas,
        Stos,
    }
    let op = match ins.mnemonic() {
        Mnemonic::Lodsb | Mnemonic::Lodsw | Mnemonic::Lodsd => Op::Lods,
        Mnemonic::Scasb | Mnemonic::Scasw | Mnemonic::Scasd => Op::Scas,
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd => Op::Stos,
        _ => return false,
    };
    if ins.has_rep_prefix() || ins.has_repne_prefix() || ins.has_lock_prefix() {
        return false;
    }
    let (mem_kind, idx, seg) = match op {
        Op::Lods => (ins.op1_kind(), 14u8, seg_index(ins.memory_segment())),
        Op::Scas => (ins.op1_kind(), 15u8, Some(SegReg::Es)),
        Op::Stos => (ins.op0_kind(), 15u8, Some(SegReg::Es)),
    };
    let want = if op == Op::Lods {
        OpKind::MemorySegESI
    } else {
        OpKind::MemoryESEDI
    };
    let Some(seg) = seg else {
        return false;
    };
    let write = op == Op::Stos;
    if mem_kind != want
        || !seg_flat(e.key.mode, seg, false)
        || (write && !seg_flat(e.key.mode, seg, true))
    {
        return false;
    }
    let size = ins.memory_size().size() as i32;
    if !matches!(size, 1 | 2 | 4) {
        return false;
    }
    e.clobber_flags();
    let slow = e.ops.new_dynamic_label();
    let resume = e.ops.new_dynamic_label();
    dynasm!(e.ops
        ; .arch x64
        ; mov r10, QWORD [rbp + CTX_VM]
        ; test DWORD [r10 + VM_EFLAGS], flags::DF as i32
        ; jnz =>slow
        ; mov edi, Rd(idx)
    );
    emit_linear(e, seg, true, size, slow);
    let bit = perm_bit(e, write);
    emit_lookup(e, size, bit, slow);
    match (&op, size) {
        (Op::Lods, 1) => dynasm!(e.ops ; .arch x64 ; mov al, BYTE [rsi]),
        (Op::Lods, 2) => dynasm!(e.ops ; .arch x64 ; mov ax, WORD [rsi]),
        (Op::Lods, _) => dynasm!(e.ops ; .arch x64 ; mov eax, DWORD [rsi]),
        (Op::Scas, 1) => dynasm!(e.ops ; .arch x64 ; cmp al, BYTE [rsi]),
        (Op::Scas, 2) => dynasm!(e.ops ; .arch x64 ; cmp ax, WORD [rsi]),
        (Op::Scas, _) => dynasm!(e.ops ; .arch x64 ; cmp eax, DWORD [rsi]),
        (Op::Stos, 1) => dynasm!(e.ops ; .arch x64 ; mov BYTE [rsi], al),
        (Op::Stos, 2) => dynasm!(e.ops ; .arch x64 ; mov WORD [rsi], ax),
        (Op::Stos, _) => dynasm!(e.ops ; .arch x64 ; mov DWORD [rsi], eax),
    }
    dynasm!(e.ops
        ; .arch x64
        ; lea Rd(idx), [Rq(idx) + size]
        ; =>resume
    );
    let flags_in_host = op == Op::Scas;
    e.flags = FlagState {
        in_host: flags_in_host,
        dirty: flags_in_host,
    };
    e.cold.push(super::mem::ColdPath {
        slow,
        resume,
        meta: m as *const InsnMeta,
        flags_in_host,
    });
    true
}
