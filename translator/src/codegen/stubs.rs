//! The code shared by all blocks, generated once at the bottom of the code
//! memory: the entry trampoline from Rust into a block and the exits back.

use dynasmrt::x64::X64Relocation;
use dynasmrt::{dynasm, DynasmApi, DynasmLabelApi, VecAssembler};

use crate::ctx::{off, CTX_REG, HOST_REG};

/// Host addresses of the shared stubs.
#[derive(Clone, Copy, Debug)]
pub struct Stubs {
    /// `extern "sysv64" fn(ctx: *mut JitCtx, code: usize)`: run
    /// translated code from `code` until it exits.
    pub enter: usize,
    /// Store the guest GPRs to the context, then return to Rust.
    pub exit_store: usize,
    /// Return to Rust (the GPRs are already in the context).
    pub exit_nostore: usize,
    /// Called from a block with the monitor routine in R11 and its
    /// argument in RSI: store the guest GPRs, call `r11(ctx, rsi)`, and
    /// either reload them and return to the block (result 0) or leave
    /// for Rust (any other result). One copy of what every monitor call
    /// needs, instead of one per call site.
    pub monitor_call: usize,
    /// Called from a block: R11D = 1 if an event is deliverable now
    /// (`helpers::event_pending`), else 0. Keeps every guest register.
    pub event_check: usize,
}

/// The stubs for placement at `addr`, and their addresses.
///
/// ```text
/// enter:        push rbx, rbp, r12-r15 ; sub rsp, 8   (RSP 16-aligned)
///               mov rbp, rdi ; mov r8, [rbp+shadow]
///               mov r(i), [rbp+gpr(i)] x8 ; jmp rsi
/// exit_store:   mov [rbp+gpr(i)], r(i) x8
/// exit_nostore: add rsp, 8 ; pop r15-r12, rbp, rbx ; ret
/// monitor_call: mov [rbp+gpr(i)], r(i) x8
///               mov rdi, rbp ; sub rsp, 8 ; call r11 ; add rsp, 8
///               test eax, eax ; jnz leave
///               mov r8, [rbp+shadow] ; mov r(i), [rbp+gpr(i)] x8 ; ret
/// leave:        add rsp, 8 ; jmp exit_nostore   (drop the return address)
/// event_check:  push rax ; push rcx ; push rdx    (RSP 16-aligned again)
///               mov rdi, rbp ; mov rax, event_pending ; call rax
///               mov r11d, eax ; pop rdx ; pop rcx ; pop rax
///               mov r8, [rbp+shadow] ; ret
/// ```
pub fn emit(addr: usize) -> (Vec<u8>, Stubs) {
    debug_assert_eq!(CTX_REG, 5);
    let mut ops: VecAssembler<X64Relocation> = VecAssembler::new(addr);
    let enter = ops.offset().0;
    dynasm!(ops
        ; .arch x64
        ; push rbx
        ; push rbp
        ; push r12
        ; push r13
        ; push r14
        ; push r15
        ; sub rsp, 8
        ; mov rbp, rdi
        ; mov r8, QWORD [rbp + off::SHADOW]
    );
    for (i, &r) in HOST_REG.iter().enumerate() {
        dynasm!(ops ; .arch x64 ; mov Rd(r), DWORD [rbp + off::gpr(i)]);
    }
    dynasm!(ops ; .arch x64 ; jmp rsi);
    let exit_store = ops.offset().0;
    for (i, &r) in HOST_REG.iter().enumerate() {
        dynasm!(ops ; .arch x64 ; mov DWORD [rbp + off::gpr(i)], Rd(r));
    }
    let exit_nostore = ops.offset().0;
    dynasm!(ops
        ; .arch x64
        ; add rsp, 8
        ; pop r15
        ; pop r14
        ; pop r13
        ; pop r12
        ; pop rbp
        ; pop rbx
        ; ret
    );
    let monitor_call = ops.offset().0;
    for (i, &r) in HOST_REG.iter().enumerate() {
        dynasm!(ops ; .arch x64 ; mov DWORD [rbp + off::gpr(i)], Rd(r));
    }
    let leave = ops.new_dynamic_label();
    dynasm!(ops
        ; .arch x64
        ; mov rdi, rbp
        ; sub rsp, 8
        ; call r11
        ; add rsp, 8
        ; test eax, eax
        ; jnz =>leave
        ; mov r8, QWORD [rbp + off::SHADOW]
    );
    for (i, &r) in HOST_REG.iter().enumerate() {
        dynasm!(ops ; .arch x64 ; mov Rd(r), DWORD [rbp + off::gpr(i)]);
    }
    dynasm!(ops
        ; .arch x64
        ; ret
        ; =>leave
        ; add rsp, 8
        ; jmp extern addr + exit_nostore
    );
    let event_check = ops.offset().0;
    dynasm!(ops
        ; .arch x64
        ; push rax
        ; push rcx
        ; push rdx
        ; mov rdi, rbp
        ; mov rax, QWORD crate::helpers::event_pending as *const () as i64
        ; call rax
        ; mov r11d, eax
        ; pop rdx
        ; pop rcx
        ; pop rax
        ; mov r8, QWORD [rbp + off::SHADOW]
        ; ret
    );
    let code = ops.finalize().expect("labels defined");
    (
        code,
        Stubs {
            enter: addr + enter,
            exit_store: addr + exit_store,
            exit_nostore: addr + exit_nostore,
            monitor_call: addr + monitor_call,
            event_check: addr + event_check,
        },
    )
}
