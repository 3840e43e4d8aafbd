//! Block exits: the fall-through exit, direct and conditional jumps,
//! near calls and returns, indirect branches.
//!
//! Every exit to a static guest EIP is a patchable `jmp rel32` (or the
//! `jcc rel32` of a conditional branch) that first goes to its own exit
//! stub right behind it; the stub tells the dispatcher which exit was
//! taken (`exit::CHAIN`, `JitCtx::exit_site`), and the dispatcher patches
//! the rel32 to the target block's entry once that block exists (direct
//! chaining, `cache`). Unchaining writes the stub's address back.
//!
//! Exits to another linear page (never chainable) and, with flat
//! segments, near CALL, RET and JMP/CALL r/m run natively with an inline
//! lookup of the next block (`flow`). Otherwise indirect branches run in
//! the monitor (`helpers::exec_indirect`), which then looks the new
//! CS:EIP up and returns the host code to jump to, or 0 to leave for the
//! dispatcher. Far transfers stay with the generic fallback (they end
//! blocks).

use dynasmrt::{dynasm, DynasmApi, DynasmLabelApi};
use iced_x86::{ConditionCode, Mnemonic, OpKind};

use umbra_core::interp::control::uses_ecx;

use super::{flow, Emitter};
use crate::block::InsnMeta;
use crate::ctx::{exit, off};
use crate::helpers;

/// Most chainable exits of one block (`site_code` keeps two bits).
pub const MAX_EXITS: usize = 4;

/// `JitCtx::exit_site` of exit `idx` of block `id`.
pub const fn site_code(id: u32, idx: usize) -> u32 {
    (id << 2) | idx as u32
}

/// One chainable exit of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitSite {
    /// Host address of the rel32 to patch (it ends at `rel_at + 4`).
    pub rel_at: usize,
    /// Host address of the exit stub (what the rel32 targets unchained).
    pub stub: usize,
    /// Guest EIP the exit continues at.
    pub target_eip: u32,
}

/// What the block generator needs for its exits, and the exits made.
#[derive(Clone, Debug, Default)]
pub struct Exits {
    /// Host address the block's code is emitted for.
    pub addr: usize,
    /// Id of the block in the cache (for `site_code`).
    pub block_id: u32,
    /// CS limit when the block was translated: a static target beyond it
    /// is left to the interpreter's handler (#GP on the branch).
    pub cs_limit: u32,
    pub sites: Vec<ExitSite>,
}

/// The target of a relative branch as the interpreter computes it
/// (`interp::control::rel_target`): wrapped to 16 bits for a 16-bit
/// operand size.
fn rel_target(m: &InsnMeta) -> Option<u32> {
    match m.ins.op0_kind() {
        OpKind::NearBranch16 => Some(m.ins.near_branch16() as u32),
        OpKind::NearBranch32 => Some(m.ins.near_branch32()),
        _ => None,
    }
}

/// Emit the block's last instruction `m` if it is a branch this module
/// translates, with all of the block's exits; false otherwise.
pub fn emit(e: &mut Emitter, m: &InsnMeta) -> bool {
    if m.handler.is_none() || m.ins.has_lock_prefix() {
        return false;
    }
    let ins = &m.ins;
    if ins.is_jmp_short_or_near() {
        let Some(t) = rel_target(m).filter(|&t| t <= e.exits.cs_limit) else {
            return false;
        };
        if e.exits.sites.len() + 1 > MAX_EXITS {
            return false;
        }
        e.spill_flags();
        emit_chain_exit(e, t);
        return true;
    }
    if ins.is_jcc_short_or_near() {
        let Some(t) = rel_target(m).filter(|&t| t <= e.exits.cs_limit) else {
            return false;
        };
        if e.exits.sites.len() + 2 > MAX_EXITS {
            return false;
        }
        emit_jcc(e, ins.condition_code(), t, m.next_eip);
        return true;
    }
    if ins.is_call_near() {
        let Some(t) = rel_target(m) else {
            return false;
        };
        if e.exits.sites.len() + 1 > MAX_EXITS {
            return false;
        }
        if flow::emit_call_rel(e, m, |e| emit_chain_exit(e, t)) {
            return true;
        }
        // The push (and the limit check, #GP on the CALL) in the monitor;
        // it leaves the block itself on a fault.
        e.call_monitor(
            helpers::exec_call as *const () as usize,
            m as *const InsnMeta as u64,
        );
        emit_chain_exit(e, t);
        return true;
    }
    if matches!(
        ins.mnemonic(),
        Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne | Mnemonic::Jcxz | Mnemonic::Jecxz
    ) {
        let Some(t) = rel_target(m).filter(|&t| t <= e.exits.cs_limit) else {
            return false;
        };
        if e.exits.sites.len() + 2 > MAX_EXITS {
            return false;
        }
        emit_loop(e, m, t);
        return true;
    }
    let near_ret = ins.mnemonic() == Mnemonic::Ret;
    if near_ret || ins.is_jmp_near_indirect() || ins.is_call_near_indirect() {
        if !flow::emit_indirect(e, m, |e| emit_indirect(e, m)) {
            emit_indirect(e, m);
        }
        return true;
    }
    false
}

/// The exit after the block's last instruction, to `eip`.
pub fn emit_fallthrough(e: &mut Emitter, eip: u32) {
    if e.exits.sites.len() < MAX_EXITS || flow::goes_off_page(e, eip) {
        e.spill_flags();
        emit_chain_exit(e, eip);
    } else {
        e.emit_exit(eip);
    }
}

/// The exit stub of the site being emitted, recorded with it.
///
/// ```text
/// stub:  mov dword [rbp+eip], target
///        mov dword [rbp+exit], CHAIN
///        mov dword [rbp+exit_site], site_code(block, idx)
///        jmp exit_store
/// ```
///
/// A target on another linear page can never be chained: the stub is the
/// inline lookup instead (`flow::emit_goto_static`), and no site.
fn emit_stub(e: &mut Emitter, rel_end: usize, target: u32) {
    if flow::goes_off_page(e, target) {
        flow::emit_goto_static(e, target);
        return;
    }
    let idx = e.exits.sites.len();
    let code = site_code(e.exits.block_id, idx);
    let stub = e.exits.addr + e.ops.offset().0;
    let exit_store = e.stubs.exit_store;
    dynasm!(e.ops
        ; .arch x64
        ; mov DWORD [rbp + off::EIP], target as i32
        ; mov DWORD [rbp + off::EXIT], exit::CHAIN as i32
        ; mov DWORD [rbp + off::EXIT_SITE], code as i32
        ; jmp extern exit_store
    );
    e.exits.sites.push(ExitSite {
        rel_at: e.exits.addr + rel_end - 4,
        stub,
        target_eip: target,
    });
}

/// A chainable exit to `target` (the guest flags are in `hflags`):
///
/// ```text
///        jmp rel32 stub       ; patched to the target block's entry
/// stub:  <emit_stub>
/// ```
fn emit_chain_exit(e: &mut Emitter, target: u32) {
    if flow::goes_off_page(e, target) {
        flow::emit_goto_static(e, target);
        return;
    }
    let stub = e.ops.new_dynamic_label();
    dynasm!(e.ops ; .arch x64 ; jmp =>stub);
    let rel_end = e.ops.offset().0;
    dynasm!(e.ops ; .arch x64 ; =>stub);
    emit_stub(e, rel_end, target);
}

/// A conditional branch with both exits chainable. The flags go to
/// `hflags` (the target blocks expect them there) and into RFLAGS for the
/// host Jcc on the same condition:
///
/// ```text
///        pushfq ; pop [rbp+hflags]        (if RFLAGS is newer)
///        push [rbp+hflags] ; popfq        (if RFLAGS is not current)
///        jcc rel32 taken_stub             ; patched: taken target block
///        jmp rel32 fall_stub              ; patched: fall-through block
/// fall_stub:  <emit_stub next_eip>
/// taken_stub: <emit_stub target>
/// ```
fn emit_jcc(e: &mut Emitter, cc: ConditionCode, target: u32, next_eip: u32) {
    e.spill_flags();
    e.restore_flags();
    let taken = e.ops.new_dynamic_label();
    macro_rules! jcc {
        ($($c:ident => $m:ident),*) => {
            match cc {
                $(ConditionCode::$c => dynasm!(e.ops ; .arch x64 ; $m =>taken),)*
                ConditionCode::None => dynasm!(e.ops ; .arch x64 ; jmp =>taken),
            }
        };
    }
    jcc!(o => jo, no => jno, b => jb, ae => jae, e => je, ne => jne, be => jbe, a => ja,
         s => js, ns => jns, p => jp, np => jnp, l => jl, ge => jge, le => jle, g => jg);
    let jcc_end = e.ops.offset().0;
    // Sites in the order of their stubs: fall-through first.
    emit_chain_exit(e, next_eip);
    dynasm!(e.ops ; .arch x64 ; =>taken);
    emit_stub(e, jcc_end, target);
}

/// LOOP/LOOPE/LOOPNE/JCXZ/JECXZ with both exits chainable. Nothing here
/// touches RFLAGS (LEA, MOV, MOVZX, JECXZ), so the guest's ZF is read by
/// the host Jcc and the flags stay valid in `hflags` for the exits:
///
/// ```text
///   pushfq ; pop [rbp+hflags]         (if RFLAGS is newer)
///   push [rbp+hflags] ; popfq         (LOOPE/LOOPNE, if not current)
///   lea ecx, [rcx-1]                  (LOOPcc, ECX)  | lea cx, [rcx-1] (CX)
///   -- ECX:                           -- CX:
///   jecxz zero                        mov esi, ecx ; movzx ecx, cx
///                                     jecxz zero_cx ; mov ecx, esi
///   jne/je fall                       (LOOPE/LOOPNE: ZF does not allow)
///   jmp rel32 taken_stub              (site; JrCXZ: swapped with fall)
///   [zero_cx: mov ecx, esi]
/// zero / fall:
///   jmp rel32 fall_stub               (site)
///   <stubs>
/// ```
fn emit_loop(e: &mut Emitter, m: &InsnMeta, target: u32) {
    let mn = m.ins.mnemonic();
    let ecx = uses_ecx(m.ins.code());
    let jcxz = matches!(mn, Mnemonic::Jcxz | Mnemonic::Jecxz);
    e.spill_flags();
    if matches!(mn, Mnemonic::Loope | Mnemonic::Loopne) {
        e.restore_flags();
    }
    // For JrCXZ "zero" means taken; for LOOPcc it means fall through.
    let (on_zero, other) = if jcxz {
        (target, m.next_eip)
    } else {
        (m.next_eip, target)
    };
    let zero = e.ops.new_dynamic_label();
    if !jcxz {
        if ecx {
            dynasm!(e.ops ; .arch x64 ; lea ecx, [rcx - 1]);
        } else {
            dynasm!(e.ops ; .arch x64 ; lea cx, [rcx - 1]);
        }
    }
    if ecx {
        dynasm!(e.ops ; .arch x64 ; jecxz =>zero);
    } else {
        let zero_cx = e.ops.new_dynamic_label();
        let go = e.ops.new_dynamic_label();
        dynasm!(e.ops
            ; .arch x64
            ; mov esi, ecx
            ; movzx ecx, cx
            ; jecxz =>zero_cx
            ; mov ecx, esi
            ; jmp =>go
            ; =>zero_cx
            ; mov ecx, esi
            ; jmp =>zero
            ; =>go
        );
    }
    match mn {
        Mnemonic::Loope => dynasm!(e.ops ; .arch x64 ; jne =>zero),
        Mnemonic::Loopne => dynasm!(e.ops ; .arch x64 ; je =>zero),
        _ => {}
    }
    emit_chain_exit(e, other);
    dynasm!(e.ops ; .arch x64 ; =>zero);
    emit_chain_exit(e, on_zero);
}

/// An indirect branch through the monitor, then the lookup of its
/// target:
///
/// ```text
///   pushfq ; pop [rbp+hflags]         (if dirty)
///   mov [rbp+gpr(i)], r(i)            x8
///   mov rdi, rbp ; mov rsi, meta ; mov rax, exec_indirect ; call rax
///   test rax, rax ; jz exit_nostore   (it set eip and exit)
///   mov rsi, rax ; mov r8, [rbp+shadow]
///   mov r(i), [rbp+gpr(i)]            x8
///   jmp rsi                           (a block entry: flags in hflags)
/// ```
fn emit_indirect(e: &mut Emitter, m: &InsnMeta) {
    e.clobber_flags();
    e.store_regs();
    let exit_nostore = e.stubs.exit_nostore;
    dynasm!(e.ops
        ; .arch x64
        ; mov rdi, rbp
        ; mov rsi, QWORD m as *const InsnMeta as i64
        ; mov rax, QWORD helpers::exec_indirect as *const () as i64
        ; call rax
        ; test rax, rax
        ; jz extern exit_nostore
        ; mov rsi, rax
        ; mov r8, QWORD [rbp + off::SHADOW]
    );
    e.load_regs();
    dynasm!(e.ops ; .arch x64 ; jmp rsi);
}
