//! x87 instructions on the host's own x87 unit.
//!
//! The interpreter's x87 is bit-exact with hardware for data movement and
//! arithmetic (80-bit registers kept as raw encodings), so running those
//! instructions on the host unit gives the same results, flags and
//! condition codes, provided the host starts from the guest's state and no
//! host exception can trap. The guest state enters the host unit lazily:
//! the first native x87 instruction after a monitor call or a block entry
//! from the dispatcher finds `JitCtx::x87_live` clear and calls
//! `helpers::x87_enter`, which checks that the state may run natively
//! (`JitCtx::x87_prepare`: CR0.EM/TS clear, every exception masked and
//! none pending, a defined precision control) and builds an FRSTOR image;
//! the generated code loads it. From then on the host unit is the guest's
//! x87 until a monitor routine or the dispatcher spills it
//! (`JitCtx::x87_spill`: FNSAVE, back to `CpuState::fpu`), which every
//! path that reads the guest's x87 state does first.
//!
//! The last-instruction pointers the interpreter records (FIP, FOP and,
//! with a memory operand, FDP; SDM Vol. 1 8.1.8-8.1.9) are stored by each
//! native non-control instruction into the context and applied at the
//! spill, since the host unit's own pointers are host addresses.
//!
//! Native here: FLD/FST/FSTP (m32, m64, m80, ST(i)), FILD, FIST/FISTP,
//! the constants, FXCH, FCHS, FABS, FINCSTP, FDECSTP, FNOP, the
//! four arithmetic operations in every form, FSQRT, FRNDINT, FPREM,
//! FPREM1, FSCALE, FXTRACT, the comparisons (FCOM*, FUCOM*, FICOM*,
//! FCOMI*, FUCOMI*, FTST, FXAM), FCMOVcc, FNSTSW, FNSTCW, FLDCW and WAIT.
//! In the monitor always: the transcendental instructions (the
//! interpreter's are accurate to f64 only, and the translator must agree
//! with it), FNINIT, FNCLEX, the environment and state saves and loads
//! (FNSTENV, FLDENV, FNSAVE, FRSTOR, FXSAVE, FXRSTOR), FBLD/FBSTP,
//! FFREE (its condition codes are undefined; the host clears C1, the
//! interpreter keeps it), the undocumented aliases, and any form with a memory operand through a
//! segment that is not flat. FLDCW that unmasks an exception or selects
//! the reserved precision spills at once, so the next x87 instruction
//! runs in the monitor.

use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi};
use iced_x86::{Code, Encoder, Instruction, MemoryOperand, Mnemonic, OpKind, Register};

use super::{mem, Emitter, FlagState};
use crate::block::{seg_flat, InsnMeta};
use crate::ctx::{off, X87_LAST_VALID};
use crate::helpers;

/// What the generator knows across instructions, and the out-of-line
/// paths emitted after the block.
#[derive(Default)]
pub struct X87State {
    /// Host code offset right after the last native x87 instruction: an
    /// x87 instruction starting there finds the host unit loaded.
    pub live_at: Option<usize>,
    pub cold: Vec<Cold>,
}

/// The out-of-line paths of one native x87 instruction.
pub struct Cold {
    /// Load the state (`x87_enter`), then `ok`; else `slow`.
    enter: DynamicLabel,
    ok: DynamicLabel,
    /// The instruction in the monitor.
    slow: DynamicLabel,
    /// FLDCW left a state the host must not run: spill.
    drop: Option<DynamicLabel>,
    /// Where the paths above continue (with the host unit not loaded):
    /// after the instruction, or the `enter` of the next one when it
    /// follows directly (its fast path assumes the unit loaded).
    resume: DynamicLabel,
    meta: *const InsnMeta,
    /// The fast path leaves the guest's flags in RFLAGS (FCOMI, FCMOVcc).
    flags_in_host: bool,
}

/// How an instruction is run natively.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Records the last-instruction pointers.
    Data,
    /// FCMOVcc: reads the guest's flags.
    ReadsFlags,
    /// FCOMI and friends: writes the guest's arithmetic flags.
    WritesFlags,
    /// FNSTSW, FNSTCW: no pointers recorded.
    Control,
    /// FLDCW: loads a normalised copy, then checks the new masks.
    Fldcw,
    /// WAIT: nothing to do once the state runs natively (no #NM, nothing
    /// pending).
    Wait,
}

fn kind(ins: &Instruction) -> Option<Kind> {
    use Mnemonic::*;
    let m = ins.mnemonic();
    let k = match m {
        Fld | Fldz | Fld1 | Fldpi | Fldl2t | Fldl2e | Fldlg2 | Fldln2 | Fild | Fist | Fistp
        | Fst | Fstp | Fxch | Fchs | Fabs | Fincstp | Fdecstp | Fnop | Fadd | Faddp | Fiadd
        | Fsub | Fsubp | Fisub | Fsubr | Fsubrp | Fisubr | Fmul | Fmulp | Fimul | Fdiv | Fdivp
        | Fidiv | Fdivr | Fdivrp | Fidivr | Fsqrt | Frndint | Fprem | Fprem1 | Fscale | Fxtract
        | Fcom | Fcomp | Fcompp | Fucom | Fucomp | Fucompp | Ficom | Ficomp | Ftst | Fxam => {
            Kind::Data
        }
        Fcmovb | Fcmove | Fcmovbe | Fcmovu | Fcmovnb | Fcmovne | Fcmovnbe | Fcmovnu => {
            Kind::ReadsFlags
        }
        Fcomi | Fcomip | Fucomi | Fucomip => Kind::WritesFlags,
        Fnstsw | Fnstcw => Kind::Control,
        Fldcw => Kind::Fldcw,
        Wait => Kind::Wait,
        _ => return None,
    };
    // The undocumented aliases (FXCH DD C8+i, FCOM DC D0+i, FSTP DF D0+i,
    // ...) carry their opcode in iced's name: left to the monitor.
    let name = format!("{:?}", ins.code());
    let alias = name.rsplit('_').next().is_some_and(|t| {
        t.len() == 4 && t.starts_with('D') && t.chars().all(|c| c.is_ascii_hexdigit())
    });
    if alias || ins.has_lock_prefix() || ins.has_rep_prefix() || ins.has_repne_prefix() {
        return None;
    }
    Some(k)
}

/// Whether the memory operand is written.
fn writes_memory(ins: &Instruction) -> bool {
    use Mnemonic::*;
    matches!(ins.mnemonic(), Fst | Fstp | Fist | Fistp | Fnstsw | Fnstcw)
}

/// Host bytes of `ins` with its memory operand (if any) at `[rsi]`; the
/// other operands (ST(i), AX) are the same on the host.
fn host_bytes(ins: &Instruction) -> Option<Vec<u8>> {
    let mut h = *ins;
    for i in 0..ins.op_count() {
        match ins.op_kind(i) {
            OpKind::Memory => {
                h.set_memory_base(Register::RSI);
                h.set_memory_index(Register::None);
                h.set_memory_index_scale(1);
                h.set_memory_displacement64(0);
                h.set_memory_displ_size(0);
                h.set_segment_prefix(Register::None);
            }
            OpKind::Register => {
                let r = ins.op_register(i);
                if !(r.is_st() || r == Register::AX) {
                    return None;
                }
            }
            _ => return None,
        }
    }
    encode(&h)
}

fn encode(ins: &Instruction) -> Option<Vec<u8>> {
    let mut enc = Encoder::new(64);
    enc.encode(ins, 0).ok()?;
    Some(enc.take_buffer())
}

/// An instruction with a `[rbp+disp]` operand (the context).
fn ctx_op(code: Code, disp: i32) -> Vec<u8> {
    let mo = MemoryOperand::with_base_displ(Register::RBP, disp as i64);
    Instruction::with1(code, mo)
        .ok()
        .and_then(|i| encode(&i))
        .expect("x87 context operands encode")
}

/// FOP of the instruction `bytes` (SDM Vol. 1 8.1.9): the low three bits
/// of the escape opcode byte and the ModR/M byte, as the interpreter
/// records it.
fn fop_of(bytes: &[u8]) -> u16 {
    match bytes.iter().position(|&b| (0xD8..=0xDF).contains(&b)) {
        Some(i) if i + 1 < bytes.len() => ((bytes[i] as u16 & 7) << 8) | bytes[i + 1] as u16,
        _ => 0,
    }
}

/// Emit `m` on the host x87 unit if it has a native form here; false to
/// fall back. `bytes`: the guest bytes of the instruction (for FOP).
///
/// ```text
///   pushfq ; pop [rbp+hflags]                (flags dirty)
///   cmp byte [rbp+x87_live], 0 ; je enter    (unless the previous x87
///                                             instruction just ran here)
/// ok:
///   <ea into edi> ; mov r11d, edi             (memory operand)
///   <linear address (`mem::emit_linear`)>
///   <shadow lookup: host pointer into rsi, or jmp slow>
///   <operand tag check, or jmp slow>          (FPREM, FPREM1)
///   push [rbp+hflags] ; popfq                 (FCMOVcc)
///   <the instruction with [rsi]>
///   mov r10, VALID | fop << 32 | eip ; mov [rbp+x87_last], r10
///   mov [rbp+x87_fdp], r11d ; mov byte [rbp+x87_fds_seg], seg+1  (memory)
/// after:
/// ```
/// FLDCW instead of the instruction and the pointers:
/// ```text
///   movzx r10d, word [rsi] ; and r10d, 0x1F3F ; or r10d, 0x40
///   mov [rbp+x87_cw], r10w ; fldcw [rbp+x87_cw]
///   mov r11d, r10d ; and r11d, 0x3F ; cmp r11d, 0x3F ; jne drop
///   and r10d, 0x300 ; cmp r10d, 0x100 ; je drop
/// ```
pub fn emit(e: &mut Emitter, m: &InsnMeta, bytes: &[u8]) -> bool {
    let ins = &m.ins;
    let Some(k) = kind(ins) else {
        return false;
    };
    let Some(host) = host_bytes(ins) else {
        return false;
    };
    let has_mem = (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory);
    let mut access = None;
    if has_mem {
        let Some(seg) = mem::seg_index(ins.memory_segment()) else {
            return false;
        };
        let write = writes_memory(ins);
        if !seg_flat(e.key.mode, seg, false) || (write && !seg_flat(e.key.mode, seg, true)) {
            return false;
        }
        if mem::addr_reg(ins.memory_base()).is_none() || mem::addr_reg(ins.memory_index()).is_none()
        {
            return false;
        }
        let size = ins.memory_size().size() as i32;
        if !(2..=10).contains(&size) {
            return false;
        }
        access = Some((seg, write, size));
    }
    let known_live = e.x87.live_at == Some(e.ops.offset().0);
    e.clobber_flags();
    let enter = e.ops.new_dynamic_label();
    let ok = e.ops.new_dynamic_label();
    let slow = e.ops.new_dynamic_label();
    let after = e.ops.new_dynamic_label();
    if known_live {
        // The paths of the previous instruction that leave the unit
        // unloaded continue with this one's load.
        if let Some(prev) = e.x87.cold.last_mut() {
            prev.resume = enter;
        }
    } else {
        dynasm!(e.ops
            ; .arch x64
            ; cmp BYTE [rbp + off::X87_LIVE], 0
            ; je =>enter
        );
    }
    dynasm!(e.ops ; .arch x64 ; =>ok);
    if let Some((seg, write, size)) = access {
        let a32 = ins.memory_base().is_gpr32()
            || ins.memory_index().is_gpr32()
            || (ins.memory_base() == Register::None
                && ins.memory_index() == Register::None
                && ins.memory_displ_size() == 4);
        if !mem::emit_ea(e, ins) {
            // `emit_ea` fails only before emitting anything (an address
            // the host cannot encode): the labels are in use, so run the
            // instruction through the monitor from here.
            e.emit_fallback(m);
            dynasm!(e.ops ; .arch x64 ; =>after);
            e.x87.live_at = None;
            e.x87.cold.push(Cold {
                enter,
                ok,
                slow,
                drop: None,
                resume: after,
                meta: m as *const InsnMeta,
                flags_in_host: false,
            });
            return true;
        }
        dynasm!(e.ops ; .arch x64 ; mov r11d, edi);
        mem::emit_linear(e, seg, a32, size, slow);
        let bit = mem::perm_bit(e, write);
        mem::emit_lookup(e, size, bit, slow);
    }
    if matches!(ins.mnemonic(), Mnemonic::Fprem | Mnemonic::Fprem1) {
        emit_stack_check(e, slow);
    }
    if k == Kind::WritesFlags {
        emit_clear_c1(e);
    }
    if k == Kind::ReadsFlags {
        e.restore_flags();
    }
    let mut drop = None;
    match k {
        Kind::Wait => {}
        Kind::Fldcw => {
            let d = e.ops.new_dynamic_label();
            drop = Some(d);
            dynasm!(e.ops
                ; .arch x64
                ; movzx r10d, WORD [rsi]
                ; and r10d, 0x1F3F
                ; or r10d, 0x40
                ; mov WORD [rbp + off::X87_CW], r10w
            );
            e.ops.extend(ctx_op(Code::Fldcw_m2byte, off::X87_CW));
            dynasm!(e.ops
                ; .arch x64
                ; mov r11d, r10d
                ; and r11d, 0x3F
                ; cmp r11d, 0x3F
                ; jne =>d
                ; and r10d, 0x300
                ; cmp r10d, 0x100
                ; je =>d
            );
        }
        _ => e.ops.extend(host),
    }
    if matches!(k, Kind::Data | Kind::ReadsFlags | Kind::WritesFlags) {
        let last = X87_LAST_VALID | (fop_of(bytes) as u64) << 32 | m.eip as u64;
        dynasm!(e.ops
            ; .arch x64
            ; mov r10, QWORD last as i64
            ; mov QWORD [rbp + off::X87_LAST], r10
        );
        if let Some((seg, _, _)) = access {
            dynasm!(e.ops
                ; .arch x64
                ; mov DWORD [rbp + off::X87_FDP], r11d
                ; mov BYTE [rbp + off::X87_FDS_SEG], seg as i8 + 1
            );
        }
    }
    if k == Kind::WritesFlags {
        e.flags = FlagState {
            in_host: true,
            dirty: true,
        };
    }
    // FCMOVcc reloaded RFLAGS, FCOMI wrote it: the slow paths must leave
    // the flags where the fast path does.
    let flags_in_host = e.flags.in_host;
    dynasm!(e.ops ; .arch x64 ; =>after);
    e.x87.live_at = Some(e.ops.offset().0);
    e.x87.cold.push(Cold {
        enter,
        ok,
        slow,
        drop,
        resume: after,
        meta: m as *const InsnMeta,
        flags_in_host,
    });
    true
}

/// FPREM/FPREM1 whose result is not a remainder (an operand empty, NaN,
/// infinite, denormal or unsupported: stack underflow or an invalid
/// operation) leave C0 and C3 as they were on the host CPU, while the
/// interpreter (and the KVM oracle it is checked against) sets them from
/// a quotient of 0 (the SDM does not define them there; the diff harness
/// found both cases). Natively only with ST(0) valid or zero and ST(1)
/// valid (tags 00/01 and 00), read from an FNSTENV image (which also
/// masks every exception: they are all masked while the host runs the
/// state); anything else runs in the monitor:
///
/// ```text
///   fnstenv [rbp+x87_env]
///   movzx r10d, word [rbp+x87_env+4] ; shr r10d, 10 ; and r10d, 0xE  (2*TOP)
///   movzx r11d, word [rbp+x87_env+8] ; mov r9d, r11d ; shl r9d, 16
///   or r11d, r9d                              (tag word twice: no wrap)
///   mov r9, rcx ; mov ecx, r10d ; shr r11d, cl ; mov rcx, r9
///   test r11d, 0xE ; jnz slow       (ST(0) tag bit 1, ST(1) tag bits)
/// ```
fn emit_stack_check(e: &mut Emitter, slow: DynamicLabel) {
    e.ops.extend(ctx_op(Code::Fnstenv_m28byte, off::X87_ENV));
    dynasm!(e.ops
        ; .arch x64
        ; movzx r10d, WORD [rbp + off::X87_ENV + 4]
        ; shr r10d, 10
        ; and r10d, 0xE
        ; movzx r11d, WORD [rbp + off::X87_ENV + 8]
        ; mov r9d, r11d
        ; shl r9d, 16
        ; or r11d, r9d
        ; mov r9, rcx
        ; mov ecx, r10d
        ; shr r11d, cl
        ; mov rcx, r9
        ; test r11d, 0xE
        ; jnz =>slow
    );
}

/// FCOMI and FUCOMI set C1 to 0 (SDM Vol. 2A FCOMI), as the interpreter
/// does; the host CPU leaves it as it was. Clear it first when set (C1
/// is also the round-up indicator, so it often is):
///
/// ```text
///   fnstsw [rbp+x87_cw] ; test byte [rbp+x87_cw+1], 2 ; jz go
///   fnstenv [rbp+x87_env] ; and byte [rbp+x87_env+5], 0xFD
///   fldenv [rbp+x87_env]
/// go:
/// ```
/// (FNSTENV masks every exception: they are all masked here already.)
fn emit_clear_c1(e: &mut Emitter) {
    let go = e.ops.new_dynamic_label();
    e.ops.extend(ctx_op(Code::Fnstsw_m2byte, off::X87_CW));
    dynasm!(e.ops
        ; .arch x64
        ; test BYTE [rbp + off::X87_CW + 1], 2
        ; jz =>go
    );
    e.ops.extend(ctx_op(Code::Fnstenv_m28byte, off::X87_ENV));
    dynasm!(e.ops ; .arch x64 ; and BYTE [rbp + off::X87_ENV + 5], 0xFDu8 as i8);
    e.ops.extend(ctx_op(Code::Fldenv_m28byte, off::X87_ENV));
    dynasm!(e.ops ; .arch x64 ; =>go);
}

/// Call `f(ctx) -> u32` keeping the guest registers a call clobbers
/// (EAX, ECX, EDX are RAX, RCX, RDX); the result is left in ESI. RFLAGS
/// is clobbered (the guest's flags are in `hflags` on these paths).
///
/// ```text
///   push rax ; push rcx ; push rdx ; sub rsp, 8
///   mov rdi, rbp ; mov rax, f ; call rax
///   add rsp, 8 ; mov esi, eax ; pop rdx ; pop rcx ; pop rax
///   mov r8, [rbp+shadow]                       (the pinned table)
/// ```
fn emit_light_call(e: &mut Emitter, f: usize) {
    dynasm!(e.ops
        ; .arch x64
        ; push rax
        ; push rcx
        ; push rdx
        ; sub rsp, 8
        ; mov rdi, rbp
        ; mov rax, QWORD f as i64
        ; call rax
        ; add rsp, 8
        ; mov esi, eax
        ; pop rdx
        ; pop rcx
        ; pop rax
        ; mov r8, QWORD [rbp + off::SHADOW]
    );
}

/// The out-of-line paths of the block's native x87 instructions:
///
/// ```text
/// enter:  <light call x87_enter> ; test esi, esi ; jz slow
///         frstor [rbp+x87_img] ; mov byte [rbp+x87_live], 1 ; jmp ok
/// slow:   <monitor call: exec_insn(ctx, meta)>   (spills; leaves on fault)
///         push [rbp+hflags] ; popfq              (FCOMI, FCMOVcc: flags
///                                                 in RFLAGS after it)
///         jmp resume
/// drop:   <light call x87_drop> ; jmp resume     (FLDCW)
/// ```
pub fn emit_cold(e: &mut Emitter) {
    let cold = std::mem::take(&mut e.x87.cold);
    let frstor = ctx_op(Code::Frstor_m108byte, off::X87_IMG);
    for c in cold {
        dynasm!(e.ops ; .arch x64 ; =>c.enter);
        emit_light_call(e, helpers::x87_enter as *const () as usize);
        dynasm!(e.ops
            ; .arch x64
            ; test esi, esi
            ; jz =>c.slow
        );
        e.ops.extend(frstor.iter().copied());
        dynasm!(e.ops
            ; .arch x64
            ; mov BYTE [rbp + off::X87_LIVE], 1
            ; jmp =>c.ok
            ; =>c.slow
        );
        // Every jump here has the guest's flags in `hflags`.
        e.flags = FlagState {
            in_host: false,
            dirty: false,
        };
        e.call_monitor(helpers::exec_insn as *const () as usize, c.meta as u64);
        if c.flags_in_host {
            e.restore_flags();
        }
        dynasm!(e.ops ; .arch x64 ; jmp =>c.resume);
        if let Some(d) = c.drop {
            dynasm!(e.ops ; .arch x64 ; =>d);
            emit_light_call(e, helpers::x87_drop as *const () as usize);
            dynasm!(e.ops ; .arch x64 ; jmp =>c.resume);
        }
    }
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;
    use umbra_core::vm::Vm;

    use super::super::native::tests::{asm32, assert_same, run_both_with, ARITH_EFLAGS};
    use super::*;

    const D: u32 = 0x8000;

    /// Doubles, integers and control words the programs load, at `D`.
    fn data(vm: &mut Vm) {
        let mut put = |at: u32, b: &[u8]| vm.mem.write((D + at) as u64, b);
        put(0x00, &1.5f64.to_le_bytes());
        put(0x08, &16807i32.to_le_bytes());
        put(0x10, &2147483647.0f64.to_le_bytes());
        // The smallest positive double (a denormal).
        put(0x18, &1u64.to_le_bytes());
        // A quiet NaN and +infinity.
        put(0x20, &0x7FF8_0000_0000_0001u64.to_le_bytes());
        put(0x28, &f64::INFINITY.to_le_bytes());
        // FCW: masks set, PC = 24 bits, RC = up; then PC = 64, RC = chop.
        put(0x30, &0x087Fu16.to_le_bytes());
        put(0x32, &0x0F7Fu16.to_le_bytes());
        // FCW with IM clear; FCW 0x037F.
        put(0x34, &0x037Eu16.to_le_bytes());
        put(0x36, &0x037Fu16.to_le_bytes());
        put(0x38, &(-2.5f64).to_le_bytes());
        put(0x40, &20260101.0f64.to_le_bytes());
        // Another value on the next page (first touched mid-run).
        vm.mem.write((D + 0x1000) as u64, &3.0f64.to_le_bytes());
        vm.mem.write((D + 0x2000) as u64, &0.1f64.to_le_bytes());
    }

    /// Run `code` on both engines with `data`; x87 state, registers,
    /// flags and memory must agree. Returns the jit VM and its monitor
    /// calls.
    fn check(code: &[u8]) -> (Vm, u64) {
        let (mut j, mut i, calls) = run_both_with(data, [0, 0, 0, 0, 0, 0, 0, 0], code);
        assert_same(&mut j, &mut i, ARITH_EFLAGS);
        assert_eq!(j.cpu.fpu, i.cpu.fpu, "x87 state");
        (j, calls)
    }

    fn f64_at(vm: &mut Vm, at: u32) -> f64 {
        let mut b = [0u8; 8];
        vm.mem.read((D + at) as u64, &mut b);
        f64::from_le_bytes(b)
    }

    #[test]
    fn fop_is_escape_and_modrm() {
        // dd 45 f8: fld qword [ebp-8] -> 0x545.
        assert_eq!(fop_of(&[0xDD, 0x45, 0xF8]), 0x545);
        // 66 d9 c9 (prefix first): fxch st1 -> 0x1C9.
        assert_eq!(fop_of(&[0x66, 0xD9, 0xC9]), 0x1C9);
    }

    #[test]
    fn lcg_step_and_conversions_run_natively() {
        // x = (16807 * x) % 2147483647 as the awk part computes it, then
        // stores in every width.
        let code = asm32(|a| {
            a.fninit()?;
            a.fld(qword_ptr(D + 0x10))?;
            a.fld(qword_ptr(D + 0x40))?;
            a.fimul(dword_ptr(D + 0x08))?;
            a.fprem()?;
            a.fnstsw(ax)?;
            a.fst(qword_ptr(D + 0x100))?;
            a.fist(dword_ptr(D + 0x108))?;
            a.fld(st0)?;
            a.fstp(tword_ptr(D + 0x110))?;
            a.fst(dword_ptr(D + 0x11C))?;
            a.fistp(qword_ptr(D + 0x120))?;
            a.fstp(st0)?;
            a.fld(qword_ptr(D))?;
            a.fadd(qword_ptr(D + 0x38))?;
            a.fchs()?;
            a.fabs()?;
            a.fsqrt()?;
            a.frndint()?;
            a.fistp(word_ptr(D + 0x128))?;
            Ok(())
        });
        let (mut j, calls) = check(&code);
        // 16807 * 20260101 = 340511517507 = 158 * 2147483647 + 1209101281
        // (integer arithmetic).
        assert_eq!(f64_at(&mut j, 0x100), 1209101281.0);
        let mut b = [0u8; 4];
        j.mem.read((D + 0x108) as u64, &mut b);
        assert_eq!(i32::from_le_bytes(b), 1209101281);
        // FNINIT and HLT in the monitor, and the first touches of the
        // data page (a read and a write): everything else native.
        assert!(calls <= 4, "monitor calls {calls}");
    }

    #[test]
    fn precision_and_rounding_control() {
        let code = asm32(|a| {
            a.fninit()?;
            a.fnstcw(word_ptr(D + 0x130))?;
            a.fldcw(word_ptr(D + 0x30))?;
            a.fld1()?;
            a.fld(qword_ptr(D + 0x10))?;
            a.fdivr_2(st0, st1)?;
            a.fst(qword_ptr(D + 0x138))?;
            a.fldpi()?;
            a.fstp(tword_ptr(D + 0x140))?;
            a.fldcw(word_ptr(D + 0x32))?;
            a.fld(qword_ptr(D + 0x38))?;
            a.fist(dword_ptr(D + 0x150))?;
            a.fldl2e()?;
            a.fmul_2(st0, st2)?;
            a.fstp(qword_ptr(D + 0x158))?;
            a.fnstcw(word_ptr(D + 0x160))?;
            a.fldcw(word_ptr(D + 0x36))?;
            Ok(())
        });
        let (mut j, _) = check(&code);
        // RC = chop: -2.5 -> -2.
        let mut b = [0u8; 4];
        j.mem.read((D + 0x150) as u64, &mut b);
        assert_eq!(i32::from_le_bytes(b), -2);
        assert_eq!(j.cpu.fpu.fcw, 0x037F);
    }

    #[test]
    fn specials_and_stack_faults_with_masked_exceptions() {
        let code = asm32(|a| {
            a.fninit()?;
            // Denormal squared underflows to zero; 1/0 is +inf (ZE).
            a.fld(qword_ptr(D + 0x18))?;
            a.fmul_2(st0, st0)?;
            a.fstp(qword_ptr(D + 0x100))?;
            a.fldz()?;
            a.fld1()?;
            a.fdiv_2(st0, st1)?;
            a.fstp(tword_ptr(D + 0x108))?;
            // NaN and infinity compares: unordered, then inf > 0.
            a.fld(qword_ptr(D + 0x20))?;
            a.fcomi(st0, st1)?;
            a.setp(bl)?;
            a.fstp(st0)?;
            a.fld(qword_ptr(D + 0x28))?;
            a.fucomip(st0, st1)?;
            a.seta(bh)?;
            a.fxam()?;
            a.ftst()?;
            a.fnstsw(word_ptr(D + 0x118))?;
            // inf - inf: invalid, the indefinite.
            a.fld(qword_ptr(D + 0x28))?;
            a.fsub(qword_ptr(D + 0x28))?;
            a.fistp(dword_ptr(D + 0x11C))?;
            // Nine pushes: the ninth overflows (C1 = 1, indefinite).
            for _ in 0..9 {
                a.fld1()?;
            }
            a.fnstsw(ax)?;
            a.fxtract()?;
            a.fscale()?;
            a.fxch(st0, st3)?;
            a.fcompp()?;
            a.ffree(st1)?;
            a.fincstp()?;
            a.fdecstp()?;
            // Underflow: add from an empty register.
            a.fninit()?;
            a.fadd_2(st0, st3)?;
            a.fnop()?;
            Ok(())
        });
        let (j, _) = check(&code);
        // Unordered sets PF; +inf > 0 clears CF and ZF.
        assert_eq!(j.cpu.reg32(3) & 0xFFFF, 0x0101);
    }

    #[test]
    fn fcmov_and_integer_flags() {
        let code = asm32(|a| {
            a.fninit()?;
            a.fld1()?;
            a.fldz()?;
            a.cmp(ecx, edx)?;
            a.fcmovb(st0, st1)?;
            a.fcmovnbe(st0, st1)?;
            a.fcom_2(st0, st1)?;
            a.fcomp(qword_ptr(D))?;
            a.ficom(dword_ptr(D + 8))?;
            a.fucom(st0, st1)?;
            a.fst(qword_ptr(D + 0x100))?;
            a.adc(eax, 0)?;
            Ok(())
        });
        check(&code);
    }

    #[test]
    fn monitor_instructions_and_page_misses_inside_a_run() {
        // FSIN runs in the monitor between native ones; the loads from
        // the second and third pages miss the shadow on first touch
        // (slow path inside a run of x87 instructions); FNSTENV stores
        // the last-instruction pointers the native ones recorded.
        let code = asm32(|a| {
            a.fninit()?;
            a.fld(qword_ptr(D))?;
            a.fld(qword_ptr(D + 0x1000))?;
            a.faddp(st1, st0)?;
            a.fsin()?;
            a.fld(qword_ptr(D + 0x2000))?;
            a.fmulp(st1, st0)?;
            a.fmul(qword_ptr(D + 0x2000))?;
            a.fst(qword_ptr(D + 0x1100))?;
            a.fnstenv(ptr(D + 0x200))?;
            a.fld(qword_ptr(D))?;
            a.fnsave(ptr(D + 0x300))?;
            a.frstor(ptr(D + 0x300))?;
            a.fxch(st0, st1)?;
            a.fdivp(st1, st0)?;
            Ok(())
        });
        check(&code);
    }

    #[test]
    fn unmasked_exceptions_run_in_the_monitor() {
        // After FLDCW unmasks IE the host must not run the state: sqrt(-1)
        // then sets IE and ES (CR0.NE clear: no #MF), exactly as the
        // interpreter does; FNCLEX and a masking FLDCW return to native.
        let code = asm32(|a| {
            a.fninit()?;
            a.fld(qword_ptr(D + 0x38))?;
            a.fldcw(word_ptr(D + 0x34))?;
            a.fld(st0)?;
            a.fsqrt()?;
            a.fnstsw(ax)?;
            a.fnclex()?;
            a.fldcw(word_ptr(D + 0x36))?;
            a.fsqrt()?;
            a.fstp(qword_ptr(D + 0x100))?;
            Ok(())
        });
        let (j, _) = check(&code);
        // IE (bit 0) and ES (bit 7) after the first FSQRT.
        assert_eq!(j.cpu.reg32(0) & 0x81, 0x81);
    }

    #[test]
    fn fcmov_in_the_monitor_keeps_the_flags() {
        // RESET FCW (unmasked): FCMOVcc runs in the monitor, and the flags
        // it read must still be in RFLAGS for the ADC after it (the diff
        // harness found them lost). CF = 1 from the CMP: EAX = 2 + 0 + 1.
        let code = asm32(|a| {
            a.mov(eax, 2u32)?;
            a.cmp(ecx, edx)?;
            a.fcmovnb(st0, st0)?;
            a.adc(eax, 0)?;
            a.setp(bl)?;
            Ok(())
        });
        let (mut j, mut i, _) = run_both_with(data, [0, 1, 2, 0, 0, 0, 0, 0], &code);
        assert_same(&mut j, &mut i, ARITH_EFLAGS);
        assert_eq!(j.cpu.reg32(0), 3);
    }

    #[test]
    fn fprem_stack_underflow_runs_in_the_monitor() {
        // FCOM ST(0) with an empty stack sets C3 C2 C0 (unordered, masked
        // #IS); FPREM1/FPREM on the empty stack then clear C0 C2 C3 in the
        // interpreter (the host keeps C0 and C3: the diff harness found
        // it). FSW = IE | SF = 0x41. Then with one register only (ST(1)
        // empty), with a NaN divisor (F2XM1 of the empty stack leaves the
        // indefinite), and with both valid (native).
        let code = asm32(|a| {
            a.fninit()?;
            a.fcom_2(st0, st0)?;
            a.fprem1()?;
            a.fnstsw(word_ptr(D + 0x100))?;
            a.fld1()?;
            a.fcom_2(st0, st1)?;
            a.fprem()?;
            a.fnstsw(word_ptr(D + 0x102))?;
            a.fninit()?;
            a.f2xm1()?;
            a.fld1()?;
            a.fcom_2(st0, st1)?;
            a.fprem()?;
            a.fninit()?;
            a.fld(qword_ptr(D + 0x10))?;
            a.fld(qword_ptr(D + 0x40))?;
            a.fprem()?;
            a.fnstsw(word_ptr(D + 0x104))?;
            Ok(())
        });
        let (mut j, _) = check(&code);
        let mut b = [0u8; 6];
        j.mem.read((D + 0x100) as u64, &mut b);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0x0041);
        // 20260101 rem 2147483647: quotient 0, complete; TOP = 6.
        assert_eq!(u16::from_le_bytes([b[4], b[5]]), 6 << 11);
    }

    #[test]
    fn snan_memory_operand_against_a_qnan() {
        // FXTRACT of the empty stack leaves the indefinite (a QNaN) in
        // ST(0); FSUB m32 with an SNaN (0x7FB84F00: quiet bit clear)
        // gives the QNaN operand, IE set (SDM Vol. 1 Table 4-7; the diff
        // harness found the interpreter taking the larger significand).
        let code = asm32(|a| {
            a.fninit()?;
            a.mov(dword_ptr(D + 0x100), 0x7FB8_4F00u32)?;
            a.fxtract()?;
            a.fsub(dword_ptr(D + 0x100))?;
            a.fstp(qword_ptr(D + 0x108))?;
            Ok(())
        });
        let (mut j, _) = check(&code);
        // The double indefinite: 0xFFF8_0000_0000_0000.
        assert_eq!(f64_at(&mut j, 0x108).to_bits(), 0xFFF8_0000_0000_0000);
    }

    #[test]
    fn fcomi_clears_c1_and_nan_hides_a_denormal_load() {
        // 3 rem 2: quotient 1, so C1 = 1; FUCOMI and FCOMI then clear it
        // (SDM Vol. 2A FCOMI; the host CPU keeps it). Then a QNaN in
        // ST(0) plus a denormal m32 (1): QNaN, no DE (the diff harness
        // found both).
        let code = asm32(|a| {
            a.fninit()?;
            a.mov(dword_ptr(D + 0x100), 2u32)?;
            a.mov(dword_ptr(D + 0x104), 3u32)?;
            a.mov(dword_ptr(D + 0x108), 1u32)?;
            a.fild(dword_ptr(D + 0x100))?;
            a.fild(dword_ptr(D + 0x104))?;
            a.fprem()?;
            a.fnstsw(word_ptr(D + 0x110))?;
            a.fucomi(st0, st1)?;
            a.fnstsw(word_ptr(D + 0x112))?;
            a.fprem()?;
            a.fcomi(st0, st1)?;
            a.fnstsw(word_ptr(D + 0x114))?;
            a.fninit()?;
            a.fld(qword_ptr(D + 0x20))?;
            a.fadd(dword_ptr(D + 0x108))?;
            a.fnstsw(word_ptr(D + 0x116))?;
            Ok(())
        });
        let (mut j, _) = check(&code);
        let mut b = [0u8; 8];
        j.mem.read((D + 0x110) as u64, &mut b);
        let w = |i: usize| u16::from_le_bytes([b[2 * i], b[2 * i + 1]]);
        // TOP = 6; C1 after FPREM, cleared by FUCOMI (1 < 2: CF only).
        assert_eq!(w(0), 6 << 11 | 0x200);
        assert_eq!(w(1), 6 << 11);
        assert_eq!(w(2), 6 << 11);
        // TOP = 7, no exception flags at all.
        assert_eq!(w(3), 7 << 11);
    }

    #[test]
    fn incomplete_fprem_and_fxtract_stack_faults() {
        // 1 rem 1e-300: the exponents differ by ~1000, so FPREM reduces
        // partially: C2 alone (TOP 6): 0x3400, as the host CPU stores it.
        // FXTRACT with ST(0) empty and ST(7) in use: the underflow (C1 =
        // 0) with IE SF, TOP 7 after the push: 0x3841.
        let code = asm32(|a| {
            a.fninit()?;
            a.mov(dword_ptr(D + 0x100), 0xC2F8_F359u32)?;
            a.mov(dword_ptr(D + 0x104), 0x01A5_6E1Fu32)?; // 1e-300
            a.fld(qword_ptr(D + 0x100))?;
            a.fld1()?;
            a.fprem()?;
            a.fnstsw(word_ptr(D + 0x110))?;
            a.fninit()?;
            a.fld1()?;
            a.fincstp()?;
            a.fxtract()?;
            a.fnstsw(word_ptr(D + 0x112))?;
            Ok(())
        });
        let (mut j, _) = check(&code);
        let mut b = [0u8; 4];
        j.mem.read((D + 0x110) as u64, &mut b);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0x3400);
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 0x3841);
    }

    #[test]
    fn reset_state_is_unmasked_and_stays_in_the_monitor() {
        // Without FNINIT the FCW is the RESET value 0x0040: all unmasked.
        let code = asm32(|a| {
            a.fld1()?;
            a.fld1()?;
            a.faddp(st1, st0)?;
            a.fstp(qword_ptr(D + 0x100))?;
            Ok(())
        });
        let (mut j, calls) = check(&code);
        assert_eq!(f64_at(&mut j, 0x100), 2.0);
        assert_eq!(calls, 5, "four x87 instructions and HLT in the monitor");
    }
}
