//! Code generation: one guest block into host x86-64 with dynasmrt.
//!
//! Conventions of all generated code (see `ctx` for the register map):
//! at a block's entry and at every exit the guest GPRs are in their host
//! registers and the guest's arithmetic flags are in `JitCtx::hflags`
//! (not in RFLAGS); inside a block the flags live in RFLAGS once a native
//! instruction has computed them, and `FlagState` tracks where the current
//! value is. Host RSP is 16-byte aligned inside blocks, so monitor
//! routines are called directly.
//!
//! Every instruction without a native translation becomes a call to the
//! monitor routine `helpers::exec_insn`, which runs the interpreter's
//! handler for it on the synchronised `CpuState`: exact by construction,
//! and the fallback that native paths are measured against.

pub mod branch;
pub mod flags;
pub mod flow;
pub mod mem;
pub mod native;
pub mod string;
pub mod stubs;
pub mod system;
pub mod x87;

use dynasmrt::x64::X64Relocation;
use dynasmrt::{dynasm, DynasmApi, DynasmLabelApi, VecAssembler};

use crate::block::{BlockKey, GuestBlock, InsnMeta};
use crate::ctx::{exit, off, HOST_REG};
use crate::helpers;
use stubs::Stubs;

pub type Asm = VecAssembler<X64Relocation>;

/// Where the guest's arithmetic flags are while a block is generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlagState {
    /// RFLAGS holds them.
    pub in_host: bool,
    /// RFLAGS is newer than `JitCtx::hflags`.
    pub dirty: bool,
}

/// The generator of one block.
pub struct Emitter<'a> {
    pub ops: Asm,
    pub stubs: &'a Stubs,
    pub key: BlockKey,
    pub flags: FlagState,
    /// Slow paths of native memory accesses, emitted after the block.
    pub cold: Vec<mem::ColdPath>,
    /// The block's chainable exits (`branch`).
    pub exits: branch::Exits,
    /// Native x87 code (`x87`): what is known, and its slow paths.
    pub x87: x87::X87State,
}

impl<'a> Emitter<'a> {
    pub fn new(addr: usize, stubs: &'a Stubs, key: BlockKey) -> Self {
        Emitter {
            ops: VecAssembler::new(addr),
            stubs,
            key,
            flags: FlagState {
                in_host: false,
                dirty: false,
            },
            cold: Vec::new(),
            exits: branch::Exits {
                addr,
                ..Default::default()
            },
            x87: Default::default(),
        }
    }

    /// Flags to `hflags` if RFLAGS is newer, leaving RFLAGS as it is.
    /// PUSHFQ is microcoded on some hosts (on an AMD EPYC a PUSHFQ/POP
    /// pair costs several times the sequence below), so where the host
    /// has LAHF in 64-bit mode the two low bytes of the image are written
    /// by plain instructions, with RAX kept in R9 (free at every point
    /// this is emitted); the image stays what PUSHFQ would store in user
    /// mode (bit 1 and IF set; TF, DF, IOPL, NT clear), of which readers
    /// use only the arithmetic flags:
    ///
    /// ```text
    ///   mov r9, rax
    ///   lahf ; mov [rbp+hflags], ah             (SF ZF AF PF CF, bit 1)
    ///   seto al ; movzx eax, al
    ///   lea eax, [rax*8+2] ; mov [rbp+hflags+1], al   (OF, IF)
    ///   mov rax, r9
    /// ```
    ///
    /// else `pushfq ; pop qword [rbp+hflags]`.
    pub fn spill_flags(&mut self) {
        if self.flags.in_host && self.flags.dirty {
            if native::host_has_lahf_sahf() {
                dynasm!(self.ops
                    ; .arch x64
                    ; mov r9, rax
                    ; lahf
                    ; mov BYTE [rbp + off::HFLAGS], ah
                    ; seto al
                    ; movzx eax, al
                    ; lea eax, [rax * 8 + 2]
                    ; mov BYTE [rbp + off::HFLAGS + 1], al
                    ; mov rax, r9
                );
            } else {
                dynasm!(self.ops
                    ; .arch x64
                    ; pushfq
                    ; pop QWORD [rbp + off::HFLAGS]
                );
            }
            self.flags.dirty = false;
        }
    }

    /// Flags into RFLAGS if they are only in `hflags`. POPFQ is
    /// microcoded and serialising (tens of cycles); where the host has
    /// LAHF/SAHF in 64-bit mode the six flags are set by plain
    /// instructions instead, with RAX kept in R9 (free at every point
    /// this is emitted):
    ///
    /// ```text
    ///   mov r9, rax
    ///   mov al, [rbp+hflags+1] ; and al, 8 ; add al, 0x78   (OF: 8+0x78 overflows)
    ///   mov ah, [rbp+hflags] ; sahf                        (SF ZF AF PF CF)
    ///   mov rax, r9
    /// ```
    ///
    /// else `push qword [rbp+hflags] ; popfq`.
    pub fn restore_flags(&mut self) {
        if !self.flags.in_host {
            if native::host_has_lahf_sahf() {
                dynasm!(self.ops
                    ; .arch x64
                    ; mov r9, rax
                    ; mov al, BYTE [rbp + off::HFLAGS + 1]
                    ; and al, 8
                    ; add al, 0x78
                    ; mov ah, BYTE [rbp + off::HFLAGS]
                    ; sahf
                    ; mov rax, r9
                );
            } else {
                dynasm!(self.ops
                    ; .arch x64
                    ; push QWORD [rbp + off::HFLAGS]
                    ; popfq
                );
            }
            self.flags.in_host = true;
            self.flags.dirty = false;
        }
    }

    /// Host code is about to clobber RFLAGS: keep the guest's flags.
    pub fn clobber_flags(&mut self) {
        self.spill_flags();
        self.flags.in_host = false;
    }

    /// All guest GPRs to the context: `mov [rbp+gpr(i)], r32(i)` x8
    pub fn store_regs(&mut self) {
        for (i, &r) in HOST_REG.iter().enumerate() {
            dynasm!(self.ops ; .arch x64 ; mov DWORD [rbp + off::gpr(i)], Rd(r));
        }
    }

    /// All guest GPRs from the context: `mov r32(i), [rbp+gpr(i)]` x8
    pub fn load_regs(&mut self) {
        for (i, &r) in HOST_REG.iter().enumerate() {
            dynasm!(self.ops ; .arch x64 ; mov Rd(r), DWORD [rbp + off::gpr(i)]);
        }
    }

    /// Call a monitor routine `f(ctx, arg) -> u32` with the guest state
    /// synchronised; a non-zero result leaves the block (the routine set
    /// `eip` and `exit`). The shared stub stores and reloads the guest
    /// registers (`Stubs::monitor_call`):
    ///
    /// ```text
    ///   pushfq ; pop [rbp+hflags]         (if the flags are dirty)
    ///   mov rsi, arg ; mov r11, f ; call monitor_call
    /// ```
    pub fn call_monitor(&mut self, f: usize, arg: u64) {
        self.clobber_flags();
        let monitor_call = self.stubs.monitor_call;
        dynasm!(self.ops
            ; .arch x64
            ; mov rsi, QWORD arg as i64
            ; mov r11, QWORD f as i64
            ; call extern monitor_call
        );
    }

    /// The instruction `m` through the interpreter's handler.
    pub fn emit_fallback(&mut self, m: &InsnMeta) {
        self.call_monitor(
            helpers::exec_insn as *const () as usize,
            m as *const InsnMeta as u64,
        );
    }

    /// Leave the block for the dispatcher, to continue at `eip`:
    ///
    /// ```text
    ///   pushfq ; pop [rbp+hflags]     (if dirty)
    ///   mov dword [rbp+eip], eip ; mov dword [rbp+exit], NEXT
    ///   jmp exit_store
    /// ```
    pub fn emit_exit(&mut self, eip: u32) {
        self.spill_flags();
        let exit_store = self.stubs.exit_store;
        dynasm!(self.ops
            ; .arch x64
            ; mov DWORD [rbp + off::EIP], eip as i32
            ; mov DWORD [rbp + off::EXIT], exit::NEXT as i32
            ; jmp extern exit_store
        );
    }
}

/// Host code of `block` (keyed `key`) for placement at host address
/// `addr`, and its chainable exits. `block` must stay where it is while
/// the code can run: the code refers to its `InsnMeta`s. `id` and
/// `cs_limit` go to `branch::Exits`.
///
/// ```text
/// entry:  sub qword [rbp+budget], n ; jl budget_out
///         <each instruction>
///         <exit to the fall-through EIP>
///         <slow paths of native memory accesses (`mem::emit_cold_paths`)>
/// budget_out:
///         add qword [rbp+budget], n
///         mov dword [rbp+eip], block_eip ; mov dword [rbp+exit], BUDGET
///         jmp exit_store
/// ```
pub fn emit_block(
    block: &GuestBlock,
    key: BlockKey,
    addr: usize,
    stubs: &Stubs,
    id: u32,
    cs_limit: u32,
) -> (Vec<u8>, Vec<branch::ExitSite>) {
    let mut e = Emitter::new(addr, stubs, key);
    e.exits.block_id = id;
    e.exits.cs_limit = cs_limit;
    let n = block.insns.len() as i32;
    let first_eip = key.lin.wrapping_sub(key.cs_base);
    let budget_out = e.ops.new_dynamic_label();
    dynasm!(e.ops
        ; .arch x64
        ; sub QWORD [rbp + off::BUDGET], n
        ; jl =>budget_out
    );
    let live = flags::live_after(block);
    let n_insns = block.insns.len();
    let mut cross_fail = None;
    for (i, m) in block.insns.iter().enumerate() {
        let is_last = i + 1 == n_insns;
        if let (true, Some(ram)) = (is_last, block.cross) {
            cross_fail = Some((mem::emit_cross_guard(&mut e, m, ram), m.eip));
        }
        if block.sti_shadow && i + 2 == n_insns {
            system::emit_sti(&mut e);
            continue;
        }
        if is_last && branch::emit(&mut e, m) {
            // The branch emitted the block's exits.
            return finish(e, budget_out, n, first_eip, stubs, cross_fail);
        }
        let at = m.eip.wrapping_sub(first_eip) as usize;
        let bytes = block.bytes.get(at..at + m.ins.len()).unwrap_or(&[]);
        if x87::emit(&mut e, m, bytes)
            || native::emit(&mut e, m, live[i])
            || string::emit(&mut e, m)
            || string::emit_single(&mut e, m)
            || flow::emit_leave(&mut e, m)
            || flow::emit_push_mem(&mut e, m)
            || system::emit(&mut e, m)
        {
            continue;
        }
        e.emit_fallback(m);
    }
    let last = block.insns.last().map_or(first_eip, |m| m.next_eip);
    if block.sti_shadow {
        // The shadow is over: an event deliverable now goes to the
        // dispatcher, else the block falls through like any other.
        e.clobber_flags();
        let event = e.ops.new_dynamic_label();
        let event_check = e.stubs.event_check;
        dynasm!(e.ops
            ; .arch x64
            ; call extern event_check
            ; test r11d, r11d
            ; jnz =>event
        );
        branch::emit_fallthrough(&mut e, last);
        dynasm!(e.ops ; .arch x64 ; =>event);
        e.flags = FlagState {
            in_host: false,
            dirty: false,
        };
        e.emit_exit(last);
    } else {
        branch::emit_fallthrough(&mut e, last);
    }
    finish(e, budget_out, n, first_eip, stubs, cross_fail)
}

/// The budget exit, the exit of a failed `mem::emit_cross_guard` (label
/// and EIP of the last instruction, which does not run) and the final
/// bytes:
///
/// ```text
/// cross_fail:
///         add qword [rbp+budget], 1
///         mov dword [rbp+eip], last_eip ; mov dword [rbp+exit], NEXT
///         jmp exit_store
/// ```
fn finish(
    mut e: Emitter,
    budget_out: dynasmrt::DynamicLabel,
    n: i32,
    first_eip: u32,
    stubs: &Stubs,
    cross_fail: Option<(dynasmrt::DynamicLabel, u32)>,
) -> (Vec<u8>, Vec<branch::ExitSite>) {
    mem::emit_cold_paths(&mut e);
    x87::emit_cold(&mut e);
    let exit_store = stubs.exit_store;
    if let Some((label, eip)) = cross_fail {
        // The guard spilled the flags before it compared.
        dynasm!(e.ops
            ; .arch x64
            ; =>label
            ; add QWORD [rbp + off::BUDGET], 1
            ; mov DWORD [rbp + off::EIP], eip as i32
            ; mov DWORD [rbp + off::EXIT], exit::NEXT as i32
            ; jmp extern exit_store
        );
    }
    dynasm!(e.ops
        ; .arch x64
        ; =>budget_out
        ; add QWORD [rbp + off::BUDGET], n
        ; mov DWORD [rbp + off::EIP], first_eip as i32
        ; mov DWORD [rbp + off::EXIT], exit::BUDGET as i32
        ; jmp extern exit_store
    );
    let sites = std::mem::take(&mut e.exits.sites);
    (
        e.ops.finalize().expect("block labels are all defined"),
        sites,
    )
}
