//! Native near control flow: CALL rel, RET / RET imm16, JMP r/m and
//! CALL r/m run in generated code, and the next block is found by an
//! inline lookup (`emit_goto`) instead of a trip through the dispatcher.
//!
//! The inline lookup: the target's linear address (the block's CS base
//! plus the guest EIP), the shadow lookup of it for a fetch at the
//! block's CPL (its RAM offset), then a 2-way set-associative table of
//! (linear, RAM offset, mode, CS base) -> host code (`IbSet`s of two
//! `IbEntry`s, one cache line each, in the cache, reached through
//! `JitCtx::ib_table`; two hot targets whose addresses share a set both
//! stay, where a direct-mapped table had them evict each other). A hit jumps to the block's
//! entry, which takes its length from the budget like any entry; a miss
//! leaves with `exit::INDIRECT` and the guest state after the branch, and
//! the dispatcher enters (and records in the table) the block it finds.
//! The table holds only live blocks whose key matches completely: the
//! cache clears an entry when it drops the block, and the dispatcher
//! clears the table when memory changed behind the write-watch
//! (`GuestMemory::watched_code_gen`).
//!
//! Dynamic targets (RET, JMP/CALL r/m) are only taken inline with a flat
//! CS in the block's mode (`block::mode`, limit 4 GiB - 1: no limit check
//! can fail). Nothing is committed until every memory access of the
//! instruction has hit: a miss there runs the whole instruction in the
//! monitor (`helpers::exec_indirect` or `exec_call`), which faults
//! precisely.

use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi};
use iced_x86::{Code, OpKind, Register};
use umbra_core::cpu::SegReg;
use umbra_core::mmu::shadow::perm;

use super::mem::{
    addr_reg, emit_ea, emit_linear, emit_lookup, emit_probe, emit_probed_ram, perm_bit, seg_index,
};
use super::native::host_reg;
use super::{Emitter, FlagState};
use crate::block::{mode, seg_flat, InsnMeta};
use crate::ctx::{exit, off, HOST_REG};
use crate::helpers;

/// Sets of the inline lookup table (a power of two), and entries per
/// set.
pub const IB_SETS: usize = 8192;
pub const IB_WAYS: usize = 2;

/// One entry of the inline lookup table: the block key fields and the
/// host code. 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IbEntry {
    pub lin: u32,
    /// RAM offset of the first byte (`BlockKey::phys`).
    pub phys: u32,
    /// `BlockKey::mode`; `u32::MAX` (never a mode) in an empty entry.
    pub mode: u32,
    pub cs_base: u32,
    /// Host address of the block's entry.
    pub code: u64,
    pub pad: u64,
}

/// An entry no lookup matches.
pub const IB_EMPTY: IbEntry = IbEntry {
    lin: 0,
    phys: 0,
    mode: u32::MAX,
    cs_base: 0,
    code: 0,
    pad: 0,
};

/// One set of the inline lookup table: 64 bytes, one cache line
/// (generated code shifts the set number by 6). Way 0 holds the most
/// recently inserted entry.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IbSet {
    pub ways: [IbEntry; IB_WAYS],
}

/// A set no lookup matches.
pub const IB_EMPTY_SET: IbSet = IbSet {
    ways: [IB_EMPTY; IB_WAYS],
};

/// Set of linear address `lin` (generated code computes the same).
pub const fn ib_set(lin: u32) -> usize {
    ((lin ^ (lin >> 12)) as usize) & (IB_SETS - 1)
}

/// The block's CS is flat in its mode: any EIP is within the limit.
fn cs_flat(e: &Emitter) -> bool {
    seg_flat(e.key.mode, SegReg::Cs, false)
}

/// Continue at the guest EIP in R11D in the block's mode, the guest's
/// flags in `hflags` (a block entry). Clobbers RSI, RDI, R9, R10, RFLAGS.
///
/// ```text
///   lea edi, [r11+cs_base]                 (linear address)
///   <shadow probe for a fetch (`mem::emit_probe`)>
///   mov esi, [r8+rsi+ram] ; mov r10d, edi ; and r10d, 0xFFF
///   or esi, r10d ; shl rsi, 32 ; or rsi, rdi     (phys:lin)
///   mov r10d, edi ; shr r10d, 12 ; xor r10d, edi
///   and r10d, IB_SETS-1 ; shl r10d, 6 ; add r10, [rbp+ib_table]
///   mov r9, cs_base:mode
///   cmp rsi, [r10] ; jne way1 ; cmp r9, [r10+8] ; jne way1
///   jmp [r10+16]
/// way1:
///   cmp rsi, [r10+32] ; jne miss ; cmp r9, [r10+40] ; jne miss
///   jmp [r10+48]
/// miss:
///   mov [rbp+eip], r11d ; mov dword [rbp+exit], INDIRECT
///   jmp exit_store
/// ```
pub fn emit_goto(e: &mut Emitter) {
    let cs_base = e.key.cs_base;
    let user = (e.key.mode >> mode::CPL_SHIFT) & 3 == 3;
    let fetch = if user {
        perm::USER_FETCH
    } else {
        perm::SUP_FETCH
    };
    let tag = e.key.mode as u64 | ((cs_base as u64) << 32);
    let miss = e.ops.new_dynamic_label();
    let way1 = e.ops.new_dynamic_label();
    let exit_store = e.stubs.exit_store;
    if cs_base == 0 {
        dynasm!(e.ops ; .arch x64 ; mov edi, r11d);
    } else {
        dynasm!(e.ops ; .arch x64 ; lea edi, [r11 + cs_base as i32]);
    }
    emit_probe(e, fetch, miss);
    emit_probed_ram(e);
    dynasm!(e.ops
        ; .arch x64
        ; mov r10d, edi
        ; and r10d, 0xFFF
        ; or esi, r10d
        ; shl rsi, 32
        ; or rsi, rdi
        ; mov r10d, edi
        ; shr r10d, 12
        ; xor r10d, edi
        ; and r10d, (IB_SETS - 1) as i32
        ; shl r10d, 6
        ; add r10, QWORD [rbp + off::IB_TABLE]
        ; mov r9, QWORD tag as i64
        ; cmp rsi, QWORD [r10]
        ; jne =>way1
        ; cmp r9, QWORD [r10 + 8]
        ; jne =>way1
        ; jmp QWORD [r10 + 16]
        ; =>way1
        ; cmp rsi, QWORD [r10 + 32]
        ; jne =>miss
        ; cmp r9, QWORD [r10 + 40]
        ; jne =>miss
        ; jmp QWORD [r10 + 48]
        ; =>miss
        ; mov DWORD [rbp + off::EIP], r11d
        ; mov DWORD [rbp + off::EXIT], exit::INDIRECT as i32
        ; jmp extern exit_store
    );
}

/// Continue at the static guest EIP `target`: `mov r11d, target ; <goto>`.
pub fn emit_goto_static(e: &mut Emitter, target: u32) {
    dynasm!(e.ops ; .arch x64 ; mov r11d, target as i32);
    emit_goto(e);
}

/// Whether a static exit to `target` leaves the block's linear page (it
/// can never be chained, `Cache::chain`) and may use the inline lookup:
/// only from a block with a flat CS, whose limit (4 GiB - 1) every block
/// in the table shares (`Cache::ib_insert`), so that no block runs under
/// a CS limit other than the one it was translated under.
pub fn goes_off_page(e: &Emitter, target: u32) -> bool {
    let lin = e.key.cs_base.wrapping_add(target);
    (lin ^ e.key.lin) >> 12 != 0 && cs_flat(e) && target <= e.exits.cs_limit
}

/// Push the 2- or 4-byte `value` through the flat SS without committing
/// ESP, or jump to `slow`. Clobbers RSI, RDI, R8-R10, RFLAGS.
///
/// ```text
///   lea edi, [r12-size]
///   movzx edi, di ; cmp edi, 0x10000-size ; ja slow   (16-bit stack)
///   <linear address in edi (`mem::emit_linear` through SS)>
///   <shadow lookup for a write: host pointer in rsi>
///   mov dword|word [rsi], value
/// ```
fn emit_push_value(e: &mut Emitter, size: i32, value: u32, slow: DynamicLabel) {
    let stack32 = e.key.mode & mode::STACK32 != 0;
    dynasm!(e.ops ; .arch x64 ; lea edi, [r12 - size]);
    if !stack32 {
        dynasm!(e.ops
            ; .arch x64
            ; movzx edi, di
            ; cmp edi, 0x10000 - size
            ; ja =>slow
        );
    }
    emit_linear(e, SegReg::Ss, stack32, size, slow);
    let bit = perm_bit(e, true);
    emit_lookup(e, size, bit, slow);
    if size == 4 {
        dynasm!(e.ops ; .arch x64 ; mov DWORD [rsi], value as i32);
    } else {
        dynasm!(e.ops ; .arch x64 ; mov WORD [rsi], value as u16 as i16);
    }
}

/// ESP (or SP with a 16-bit stack) plus `delta`, committed:
/// `lea r12d, [r12+delta]` | `lea edi, [r12+delta] ; mov r12w, di`
fn emit_adjust_sp(e: &mut Emitter, delta: i32) {
    if e.key.mode & mode::STACK32 != 0 {
        dynasm!(e.ops ; .arch x64 ; lea r12d, [r12 + delta]);
    } else {
        dynasm!(e.ops
            ; .arch x64
            ; lea edi, [r12 + delta]
            ; mov r12w, di
        );
    }
}

/// Both SS accesses of a CALL or RET can run inline in this mode.
fn stack_ok(e: &Emitter, write: bool) -> bool {
    seg_flat(e.key.mode, SegReg::Ss, false) && (!write || seg_flat(e.key.mode, SegReg::Ss, true))
}

/// A near CALL rel whose exit to `target` follows (chained or inline):
/// the return address pushed natively, or the whole CALL in the monitor
/// (`exec_call`) on a miss.
///
/// ```text
///   pushfq ; pop [rbp+hflags]          (if dirty)
///   <push next_eip, or jmp slow>
///   <commit ESP>
/// resume:
///   <exit to target>
/// slow:
///   <monitor call exec_call> ; jmp resume
/// ```
pub fn emit_call_rel(e: &mut Emitter, m: &InsnMeta, exit: impl FnOnce(&mut Emitter)) -> bool {
    let size = match m.ins.code() {
        Code::Call_rel32_32 => 4,
        Code::Call_rel16 => 2,
        _ => return false,
    };
    if !cs_flat(e) || !stack_ok(e, true) {
        return false;
    }
    e.clobber_flags();
    let slow = e.ops.new_dynamic_label();
    let resume = e.ops.new_dynamic_label();
    emit_push_value(e, size, m.next_eip, slow);
    emit_adjust_sp(e, -size);
    dynasm!(e.ops ; .arch x64 ; =>resume);
    exit(e);
    dynasm!(e.ops ; .arch x64 ; =>slow);
    e.flags = FlagState {
        in_host: false,
        dirty: false,
    };
    e.call_monitor(
        helpers::exec_call as *const () as usize,
        m as *const InsnMeta as u64,
    );
    dynasm!(e.ops ; .arch x64 ; jmp =>resume);
    true
}

/// The target of JMP/CALL r/m into R11D (zero-extended from 16 bits), or
/// a jump to `slow` (the memory form missed). Memory forms need a segment
/// flat for reads.
///
/// ```text
///   mov r11d, r32 | movzx r11d, r16                      (register)
///   <ea into edi> ; <linear address (`mem::emit_linear`)>  (memory)
///   <shadow lookup for a read> ; mov r11d, [rsi] | movzx r11d, word [rsi]
/// ```
fn emit_rm_target(e: &mut Emitter, m: &InsnMeta, size: i32, slow: DynamicLabel) -> bool {
    let ins = &m.ins;
    match ins.op0_kind() {
        OpKind::Register => {
            let g = ins.op0_register();
            if !(g.is_gpr16() || g.is_gpr32()) || g.number() >= 8 {
                return false;
            }
            let r = HOST_REG[g.number()];
            if size == 4 {
                dynasm!(e.ops ; .arch x64 ; mov r11d, Rd(r));
            } else {
                dynasm!(e.ops ; .arch x64 ; movzx r11d, Rw(r));
            }
            true
        }
        OpKind::Memory => {
            let Some(seg) = seg_index(ins.memory_segment()) else {
                return false;
            };
            if !seg_flat(e.key.mode, seg, false)
                || addr_reg(ins.memory_base()).is_none()
                || addr_reg(ins.memory_index()).is_none()
            {
                return false;
            }
            let a32 = ins.memory_base().is_gpr32()
                || ins.memory_index().is_gpr32()
                || (ins.memory_base() == Register::None
                    && ins.memory_index() == Register::None
                    && ins.memory_displ_size() == 4);
            if !emit_ea(e, ins) {
                return false;
            }
            emit_linear(e, seg, a32, size, slow);
            let bit = perm_bit(e, false);
            emit_lookup(e, size, bit, slow);
            if size == 4 {
                dynasm!(e.ops ; .arch x64 ; mov r11d, DWORD [rsi]);
            } else {
                dynasm!(e.ops ; .arch x64 ; movzx r11d, WORD [rsi]);
            }
            true
        }
        _ => false,
    }
}

/// RET, RET imm16, JMP r/m, CALL r/m (near) as the block's last
/// instruction: run natively, then the inline lookup of the target. The
/// slow path (`slow_path`, the monitor) runs the whole instruction when
/// one of its memory accesses misses. False if this mode or form is not
/// handled (nothing emitted).
///
/// ```text
///   pushfq ; pop [rbp+hflags]                    (if dirty)
///   RET:   <SS:ESP shadow lookup, or jmp slow> ; mov r11d, [rsi]
///          <ESP += size + imm>
///   JMP:   <target into r11d, or jmp slow>
///   CALL:  <target into r11d, or jmp slow> ; <push next_eip, or jmp slow>
///          <ESP -= size>
///   <goto r11d>
/// slow:
///   <slow_path>
/// ```
pub fn emit_indirect(e: &mut Emitter, m: &InsnMeta, slow_path: impl FnOnce(&mut Emitter)) -> bool {
    let ins = &m.ins;
    enum Kind {
        Ret(u32),
        Jmp,
        Call,
    }
    let (kind, size) = match ins.code() {
        Code::Retnd => (Kind::Ret(0), 4),
        Code::Retnw => (Kind::Ret(0), 2),
        Code::Retnd_imm16 => (Kind::Ret(ins.immediate16() as u32), 4),
        Code::Retnw_imm16 => (Kind::Ret(ins.immediate16() as u32), 2),
        Code::Jmp_rm32 => (Kind::Jmp, 4),
        Code::Jmp_rm16 => (Kind::Jmp, 2),
        Code::Call_rm32 => (Kind::Call, 4),
        Code::Call_rm16 => (Kind::Call, 2),
        _ => return false,
    };
    if !cs_flat(e) {
        return false;
    }
    match kind {
        Kind::Ret(_) if !stack_ok(e, false) => return false,
        Kind::Call if !stack_ok(e, true) => return false,
        _ => {}
    }
    // Memory forms need their segment flat; check before emitting.
    if ins.op_count() > 0 && ins.op0_kind() == OpKind::Memory {
        let ok = seg_index(ins.memory_segment()).is_some_and(|s| seg_flat(e.key.mode, s, false))
            && addr_reg(ins.memory_base()).is_some()
            && addr_reg(ins.memory_index()).is_some();
        if !ok {
            return false;
        }
    }
    if !matches!(kind, Kind::Ret(_)) && host_reg_ok(ins).is_none() {
        return false;
    }
    e.clobber_flags();
    let slow = e.ops.new_dynamic_label();
    match kind {
        Kind::Ret(imm) => {
            let stack32 = e.key.mode & mode::STACK32 != 0;
            if stack32 {
                dynasm!(e.ops ; .arch x64 ; mov edi, r12d);
            } else {
                dynasm!(e.ops
                    ; .arch x64
                    ; movzx edi, r12w
                    ; cmp edi, 0x10000 - size
                    ; ja =>slow
                );
            }
            emit_linear(e, SegReg::Ss, stack32, size, slow);
            let bit = perm_bit(e, false);
            emit_lookup(e, size, bit, slow);
            if size == 4 {
                dynasm!(e.ops ; .arch x64 ; mov r11d, DWORD [rsi]);
            } else {
                dynasm!(e.ops ; .arch x64 ; movzx r11d, WORD [rsi]);
            }
            emit_adjust_sp(e, size + imm as i32);
        }
        Kind::Jmp => {
            if !emit_rm_target(e, m, size, slow) {
                // Checked above; should it fail anyway, the monitor runs
                // the instruction.
                dynasm!(e.ops ; .arch x64 ; jmp =>slow);
            }
        }
        Kind::Call => {
            if !emit_rm_target(e, m, size, slow) {
                // Checked above; should it fail anyway, the monitor runs
                // the instruction.
                dynasm!(e.ops ; .arch x64 ; jmp =>slow);
            }
            emit_push_value(e, size, m.next_eip, slow);
            emit_adjust_sp(e, -size);
        }
    }
    emit_goto(e);
    dynasm!(e.ops ; .arch x64 ; =>slow);
    e.flags = FlagState {
        in_host: false,
        dirty: false,
    };
    slow_path(e);
    true
}

/// The register form's operand is a guest GPR; the memory form is
/// checked by the caller.
fn host_reg_ok(ins: &iced_x86::Instruction) -> Option<()> {
    match ins.op0_kind() {
        OpKind::Register => host_reg(ins.op0_register()).map(|_| ()),
        OpKind::Memory => Some(()),
        _ => None,
    }
}

/// LEAVE with a 32-bit operand and stack (ESP = EBP, then EBP = pop)
/// through a flat SS; the slow path runs it in the monitor. Nothing is
/// committed before the read hit.
///
/// ```text
///   pushfq ; pop [rbp+hflags]              (if dirty)
///   mov edi, r13d ; <linear address (`mem::emit_linear` through SS)>
///   <shadow lookup for a read: host pointer in rsi>
///   lea r12d, [r13+4] ; mov r13d, [rsi]
/// resume:
/// ```
pub fn emit_leave(e: &mut Emitter, m: &InsnMeta) -> bool {
    if m.ins.code() != Code::Leaved
        || m.ins.has_lock_prefix()
        || e.key.mode & mode::STACK32 == 0
        || !stack_ok(e, false)
    {
        return false;
    }
    e.clobber_flags();
    let slow = e.ops.new_dynamic_label();
    let resume = e.ops.new_dynamic_label();
    dynasm!(e.ops
        ; .arch x64
        ; mov edi, r13d
    );
    emit_linear(e, SegReg::Ss, true, 4, slow);
    let bit = perm_bit(e, false);
    emit_lookup(e, 4, bit, slow);
    dynasm!(e.ops
        ; .arch x64
        ; lea r12d, [r13 + 4]
        ; mov r13d, DWORD [rsi]
        ; =>resume
    );
    e.cold.push(super::mem::ColdPath {
        slow,
        resume,
        meta: m as *const InsnMeta,
        flags_in_host: false,
    });
    true
}

/// PUSH r/m32 with a memory operand, a 32-bit stack and flat segments:
/// the operand is read (its address computed with ESP before the push),
/// then stored below ESP; ESP changes last. A miss of either access runs
/// the instruction in the monitor (the block's cold path).
///
/// ```text
///   pushfq ; pop [rbp+hflags]              (if dirty)
///   <operand into r11d, or jmp slow>
///   lea edi, [r12-4] ; <linear address (`mem::emit_linear` through SS)>
///   <shadow lookup for a write: host pointer in rsi>
///   mov [rsi], r11d ; lea r12d, [r12-4]
/// resume:
/// ```
pub fn emit_push_mem(e: &mut Emitter, m: &InsnMeta) -> bool {
    let ins = &m.ins;
    if ins.code() != Code::Push_rm32
        || ins.op0_kind() != OpKind::Memory
        || ins.has_lock_prefix()
        || e.key.mode & mode::STACK32 == 0
        || !stack_ok(e, true)
    {
        return false;
    }
    let ok = seg_index(ins.memory_segment()).is_some_and(|s| seg_flat(e.key.mode, s, false))
        && addr_reg(ins.memory_base()).is_some()
        && addr_reg(ins.memory_index()).is_some();
    if !ok {
        return false;
    }
    e.clobber_flags();
    let slow = e.ops.new_dynamic_label();
    if !emit_rm_target(e, m, 4, slow) {
        dynasm!(e.ops ; .arch x64 ; jmp =>slow);
    }
    emit_push32_r11(e, m, slow);
    true
}

/// Push R11D through the flat 32-bit SS for instruction `m` and commit
/// ESP, or (from a miss here or a jump to `slow` before) run the whole
/// instruction in the monitor. The flags are in `hflags`.
///
/// ```text
///   lea edi, [r12-4] ; <linear through SS> ; <write lookup: rsi or slow>
///   mov [rsi], r11d ; lea r12d, [r12-4]
/// resume:
/// ```
pub(super) fn emit_push32_r11(e: &mut Emitter, m: &InsnMeta, slow: DynamicLabel) {
    let resume = e.ops.new_dynamic_label();
    dynasm!(e.ops ; .arch x64 ; lea edi, [r12 - 4]);
    emit_linear(e, SegReg::Ss, true, 4, slow);
    let bit = perm_bit(e, true);
    emit_lookup(e, 4, bit, slow);
    dynasm!(e.ops
        ; .arch x64
        ; mov DWORD [rsi], r11d
        ; lea r12d, [r12 - 4]
        ; =>resume
    );
    e.cold.push(super::mem::ColdPath {
        slow,
        resume,
        meta: m as *const InsnMeta,
        flags_in_host: false,
    });
}
