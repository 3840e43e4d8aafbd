//! Native translation: guest instructions that run as the same host
//! instruction, re-encoded with iced-x86 after renaming guest registers to
//! their host registers (`ctx::HOST_REG`), so that the host computes the
//! guest's flags itself. Memory forms go through `mem` (address, inline
//! shadow lookup, slow path) and run with their operand replaced by
//! `[rsi]`.
//!
//! What runs natively: MOV, the eight ALU operations, TEST, INC DEC NEG
//! NOT, the shifts and rotates (SHLD/SHRD too), IMUL (all forms), MUL,
//! MOVZX MOVSX, LEA, XCHG XADD CMPXCHG, CMOVcc, SETcc, BT BTS BTR BTC
//! (register offset only with a register base), BSWAP r32, CBW CWDE CWD
//! CDQ, CLC STC CMC, LAHF SAHF (where the host has them in 64-bit mode:
//! CPUID 8000_0001h ECX bit 0), NOP and PAUSE (nothing to run: a
//! spin-wait hint), LOCK on the lockable ones with a memory destination;
//! PUSH/POP of registers and immediates (`mem::emit_stack`). What never
//! does: DIV/IDIV (a host #DE
//! would end the process), REP prefixes, any other LOCK (#UD),
//! instructions invalid in 64-bit mode other than the INC/DEC short forms
//! and MOV moffs (rewritten to their ModRM forms), BSF/BSR and their
//! TZCNT/LZCNT encodings (the guest's F3 0F BC/BD is BSF/BSR: its CPUID
//! has no BMI1/LZCNT, while the host would run them as TZCNT/LZCNT).
//! An AH..BH operand next to a renamed R12-R15 register cannot be
//! encoded: the encoder refuses and the instruction falls back.

use iced_x86::{Code, Encoder, Instruction, Mnemonic, OpKind, Register};

use super::{flags, mem, Emitter};
use crate::block::InsnMeta;

/// Host 16-bit registers of guest AX..DI.
const HOST16: [Register; 8] = [
    Register::AX,
    Register::CX,
    Register::DX,
    Register::BX,
    Register::R12W,
    Register::R13W,
    Register::R14W,
    Register::R15W,
];
/// Host 32-bit registers of guest EAX..EDI.
pub const HOST32: [Register; 8] = [
    Register::EAX,
    Register::ECX,
    Register::EDX,
    Register::EBX,
    Register::R12D,
    Register::R13D,
    Register::R14D,
    Register::R15D,
];

/// Host register of guest general register `r` (AL..BH keep theirs: the
/// legacy byte registers are the same without REX).
pub fn host_reg(r: Register) -> Option<Register> {
    if r.is_gpr8() {
        return (r.number() < 8).then_some(r);
    }
    if r.is_gpr16() {
        return HOST16.get(r.number()).copied();
    }
    if r.is_gpr32() {
        return HOST32.get(r.number()).copied();
    }
    None
}

/// The host runs LAHF and SAHF in 64-bit mode (CPUID 8000_0001h ECX bit
/// 0, "LAHF/SAHF available in 64-bit mode"; early x86-64 CPUs lack it).
pub(super) fn host_has_lahf_sahf() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        // Leaf 8000_0001h exists when the maximum extended leaf reaches it.
        let max = core::arch::x86_64::__cpuid(0x8000_0000).eax;
        max >= 0x8000_0001 && core::arch::x86_64::__cpuid(0x8000_0001).ecx & 1 != 0
    })
}

/// How a native instruction touches its memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemUse {
    Read,
    Write,
    ReadWrite,
}

fn is_cmov(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Cmovo
            | Cmovno
            | Cmovb
            | Cmovae
            | Cmove
            | Cmovne
            | Cmovbe
            | Cmova
            | Cmovs
            | Cmovns
            | Cmovp
            | Cmovnp
            | Cmovl
            | Cmovge
            | Cmovle
            | Cmovg
    )
}

fn is_setcc(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Seto | Setno
            | Setb
            | Setae
            | Sete
            | Setne
            | Setbe
            | Seta
            | Sets
            | Setns
            | Setp
            | Setnp
            | Setl
            | Setge
            | Setle
            | Setg
    )
}

fn is_shift(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(m, Shl | Shr | Sar | Rol | Ror | Rcl | Rcr)
}

/// A shift or rotate whose count (CL, or an immediate that masks to 0)
/// may be zero: it then leaves every flag as it was.
pub fn count_may_be_zero(ins: &Instruction) -> bool {
    let m = ins.mnemonic();
    // The count is the last operand: SHLD/SHRD have three.
    let count_op = match m {
        Mnemonic::Shld | Mnemonic::Shrd => 2,
        _ if is_shift(m) => 1,
        _ => return false,
    };
    if ins.op_count() <= count_op {
        return false;
    }
    match ins.op_kind(count_op) {
        OpKind::Immediate8 => ins.immediate8() & 31 == 0,
        _ => true,
    }
}

/// How `ins` uses its memory operand, if it is an instruction this
/// module runs natively at all (`None`: not native). For register-only
/// forms the answer is irrelevant (`Read`).
fn native_use(ins: &Instruction) -> Option<MemUse> {
    use Mnemonic::*;
    if ins.has_rep_prefix() || ins.has_repne_prefix() {
        return None;
    }
    let m = ins.mnemonic();
    let op0_mem = ins.op0_kind() == OpKind::Memory;
    // LOCK is valid only on these with a memory destination (SDM Vol. 2
    // LOCK); anything else is #UD, which the monitor raises.
    let lockable = matches!(
        m,
        Add | Or
            | Adc
            | Sbb
            | And
            | Sub
            | Xor
            | Inc
            | Dec
            | Neg
            | Not
            | Xchg
            | Bts
            | Btr
            | Btc
            | Xadd
            | Cmpxchg
    );
    if ins.has_lock_prefix() && !(op0_mem && lockable) {
        return None;
    }
    let u = match m {
        Mov => {
            if op0_mem {
                MemUse::Write
            } else {
                MemUse::Read
            }
        }
        Add | Or | Adc | Sbb | And | Sub | Xor => {
            if op0_mem {
                MemUse::ReadWrite
            } else {
                MemUse::Read
            }
        }
        Cmp | Test | Imul | Mul | Movzx | Movsx => MemUse::Read,
        Inc | Dec | Neg | Not | Xchg | Xadd | Cmpxchg => MemUse::ReadWrite,
        Shl | Shr | Sar | Rol | Ror | Rcl | Rcr | Shld | Shrd => MemUse::ReadWrite,
        Bt | Bts | Btr | Btc => {
            // A register bit offset with a memory base addresses beyond
            // the operand (SDM Vol. 2 BT): monitor only.
            if op0_mem && ins.op1_kind() == OpKind::Register {
                return None;
            }
            if m == Bt {
                MemUse::Read
            } else {
                MemUse::ReadWrite
            }
        }
        Bswap => {
            // BSWAP r16 is undefined (SDM Vol. 2 BSWAP).
            if ins.code() != Code::Bswap_r32 {
                return None;
            }
            MemUse::Read
        }
        Cbw | Cwde | Cwd | Cdq | Lea | Nop | Pause => MemUse::Read,
        // AH and the five low status flags (SAHF keeps OF), CF alone:
        // the same bits in the host's AH and RFLAGS.
        Lahf | Sahf if !host_has_lahf_sahf() => return None,
        Lahf | Sahf | Clc | Stc | Cmc => MemUse::Read,
        _ if is_cmov(m) => MemUse::Read,
        _ if is_setcc(m) => MemUse::Write,
        _ => return None,
    };
    Some(u)
}

/// Codes valid only outside 64-bit mode, and their 64-bit equivalents.
fn code_for_64(c: Code) -> Code {
    match c {
        Code::Inc_r16 => Code::Inc_rm16,
        Code::Inc_r32 => Code::Inc_rm32,
        Code::Dec_r16 => Code::Dec_rm16,
        Code::Dec_r32 => Code::Dec_rm32,
        Code::Mov_AL_moffs8 => Code::Mov_r8_rm8,
        Code::Mov_AX_moffs16 => Code::Mov_r16_rm16,
        Code::Mov_EAX_moffs32 => Code::Mov_r32_rm32,
        Code::Mov_moffs8_AL => Code::Mov_rm8_r8,
        Code::Mov_moffs16_AX => Code::Mov_rm16_r16,
        Code::Mov_moffs32_EAX => Code::Mov_rm32_r32,
        c => c,
    }
}

/// Host bytes of `ins` with guest registers renamed and its memory
/// operand (if any) replaced by `[rsi]`; `None` if it has an operand this
/// module does not handle or the host cannot encode it.
pub fn host_bytes(ins: &Instruction) -> Option<Vec<u8>> {
    let mut h = *ins;
    h.set_code(code_for_64(ins.code()));
    for i in 0..ins.op_count() {
        match ins.op_kind(i) {
            OpKind::Register => h
                .try_set_op_register(i, host_reg(ins.op_register(i))?)
                .ok()?,
            OpKind::Memory => {
                h.set_memory_base(Register::RSI);
                h.set_memory_index(Register::None);
                h.set_memory_index_scale(1);
                h.set_memory_displacement64(0);
                h.set_memory_displ_size(0);
                h.set_segment_prefix(Register::None);
            }
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32 => {}
            _ => return None,
        }
    }
    let mut enc = Encoder::new(64);
    enc.encode(&h, 0).ok()?;
    Some(enc.take_buffer())
}

/// What `emit` would do with `ins`.
enum Plan {
    /// Nothing to run (NOP, including 0F 1F with a memory operand).
    Nothing,
    /// LEA: address arithmetic only.
    Lea,
    /// Register and immediate operands only: these host bytes.
    Register(Vec<u8>),
    /// One memory operand.
    Memory(MemUse, Vec<u8>),
}

fn plan(ins: &Instruction) -> Option<Plan> {
    let u = native_use(ins)?;
    match ins.mnemonic() {
        Mnemonic::Nop | Mnemonic::Pause => return Some(Plan::Nothing),
        Mnemonic::Lea => {
            return (ins.op0_kind() == OpKind::Register && host_reg(ins.op0_register()).is_some())
                .then_some(Plan::Lea)
        }
        _ => {}
    }
    let mems = (0..ins.op_count())
        .filter(|&i| ins.op_kind(i) == OpKind::Memory)
        .count();
    let bytes = host_bytes(ins)?;
    match mems {
        0 => Some(Plan::Register(bytes)),
        1 => Some(Plan::Memory(u, bytes)),
        _ => None,
    }
}

/// `ins` runs natively without touching memory (so it cannot fault).
pub fn is_register_native(ins: &Instruction) -> bool {
    matches!(
        plan(ins),
        Some(Plan::Nothing | Plan::Lea | Plan::Register(_))
    )
}

/// Emit `m` natively if it has a native form; false to fall back.
/// `live_after`: arithmetic flags live after it (`flags::live_after`).
///
/// ```text
///   push [rbp+hflags] ; popfq     (if it needs flags not in RFLAGS)
///   <the instruction, registers renamed>
/// ```
pub fn emit(e: &mut Emitter, m: &InsnMeta, live_after: u32) -> bool {
    let ins = &m.ins;
    if matches!(ins.mnemonic(), Mnemonic::Push | Mnemonic::Pop) {
        return mem::emit_stack(e, m);
    }
    match plan(ins) {
        None => false,
        Some(Plan::Nothing) => true,
        Some(Plan::Lea) => mem::emit_lea(e, ins),
        Some(Plan::Register(bytes)) => {
            if flags::needed_before(ins, live_after) != 0 {
                e.restore_flags();
            }
            e.ops.extend(bytes);
            if flags::modified(ins) != 0 {
                e.flags.in_host = true;
                e.flags.dirty = true;
            }
            true
        }
        Some(Plan::Memory(u, bytes)) => mem::emit_access(e, m, u, &bytes, live_after),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Small guest programs run on the translator and on the interpreter;
    //! registers, flags and memory must agree, and the expected values
    //! are computed by hand where a test names them.

    use iced_x86::code_asm::*;
    use umbra_core::cpu::{attr, cr0, SegReg, Segment, FIXED1};
    use umbra_core::engine::{Budget, Engine};
    use umbra_core::interp::Interpreter;
    use umbra_core::mem::GuestMemory;
    use umbra_core::vm::Vm;

    use crate::Translator;

    /// Where test code goes (physical = linear).
    pub const CODE: u32 = 0x1000;
    /// CF PF AF ZF SF OF in EFLAGS.
    pub const ARITH_EFLAGS: u32 = 0x8D5;

    /// Flat 32-bit protected mode at CPL 0, paging off; DS based at
    /// `ds_base`.
    pub fn vm32(ds_base: u32) -> Vm {
        let mut vm = Vm::new(GuestMemory::new(1 << 20).expect("guest memory"));
        vm.cpu.cr0 |= cr0::PE;
        vm.cpu.eflags = FIXED1;
        let data = Segment {
            selector: 0x10,
            base: 0,
            limit: 0xFFFF_FFFF,
            attr: attr::P | attr::S | attr::RW | attr::ACCESSED | attr::DB | attr::G,
        };
        for s in SegReg::ALL {
            *vm.cpu.seg_mut(s) = data;
        }
        vm.cpu.seg_mut(SegReg::Ds).base = ds_base;
        let code_seg = vm.cpu.seg_mut(SegReg::Cs);
        code_seg.selector = 0x08;
        code_seg.attr |= attr::CODE;
        vm.cpu.set_reg32(4, 0xF000);
        vm
    }

    /// Run `code` (HLT appended) from `CODE` with `regs` (ESP stays
    /// 0xF000) on the translator and on the interpreter. Returns both
    /// machines and the translator's monitor calls.
    pub fn run_both(ds_base: u32, regs: [u32; 8], code: &[u8]) -> (Vm, Vm, u64) {
        run_both_with(|vm| vm.cpu.seg_mut(SegReg::Ds).base = ds_base, regs, code)
    }

    /// `run_both` with `setup` applied to both machines after the
    /// registers are set.
    pub fn run_both_with(setup: impl Fn(&mut Vm), regs: [u32; 8], code: &[u8]) -> (Vm, Vm, u64) {
        let mut vms = [vm32(0), vm32(0)];
        for vm in vms.iter_mut() {
            let mut bytes = code.to_vec();
            bytes.push(0xF4);
            vm.mem.write(CODE as u64, &bytes);
            vm.cpu.eip = CODE;
            for (i, &r) in regs.iter().enumerate() {
                if i != 4 {
                    vm.cpu.set_reg32(i, r);
                }
            }
            setup(vm);
        }
        let [mut a, mut b] = vms;
        let mut t = Translator::new(1 << 20).expect("code memory");
        t.run(&mut a, Budget::insns(10_000));
        Interpreter::new().run(&mut b, Budget::insns(10_000));
        (a, b, t.stats().monitor_calls)
    }

    /// Registers, EIP and the flags in `flag_mask` agree, and the first
    /// 64 KiB of memory.
    pub fn assert_same(jit: &mut Vm, int: &mut Vm, flag_mask: u32) {
        for i in 0..8 {
            assert_eq!(
                jit.cpu.reg32(i),
                int.cpu.reg32(i),
                "GPR {i}: jit {:#x} interp {:#x}",
                jit.cpu.reg32(i),
                int.cpu.reg32(i)
            );
        }
        assert_eq!(jit.cpu.eip, int.cpu.eip, "EIP");
        assert_eq!(
            jit.cpu.eflags & flag_mask,
            int.cpu.eflags & flag_mask,
            "flags jit {:#x} interp {:#x}",
            jit.cpu.eflags,
            int.cpu.eflags
        );
        let (mut x, mut y) = (vec![0u8; 0x10000], vec![0u8; 0x10000]);
        jit.mem.read(0, &mut x);
        int.mem.read(0, &mut y);
        if let Some(p) = (0..x.len()).find(|&p| x[p] != y[p]) {
            panic!("memory at {p:#x}: jit {:#x} interp {:#x}", x[p], y[p]);
        }
    }

    pub fn asm32(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
        let mut a = CodeAssembler::new(32).expect("bitness");
        f(&mut a).expect("assemble");
        a.assemble(CODE as u64).expect("assemble")
    }

    #[test]
    fn register_alu_block_runs_natively() {
        let code = asm32(|a| {
            a.mov(eax, 0x1234_5678u32)?;
            a.mov(ecx, 5u32)?;
            a.add(eax, ecx)?;
            a.adc(ebx, eax)?;
            a.sub(edx, 3)?;
            a.xor(esi, esi)?;
            a.inc(edi)?;
            a.dec(ebp)?;
            a.neg(ecx)?;
            a.not(edx)?;
            a.shl(eax, 3)?;
            a.shr(ebx, cl)?;
            a.sar(edx, 1)?;
            a.rol(esi, 4)?;
            a.imul_3(eax, ecx, 7)?;
            a.mul(ecx)?;
            a.movzx(ecx, ah)?;
            a.movsx(edx, bl)?;
            a.lea(esi, dword_ptr(eax + ecx * 4 + 0x100))?;
            a.xchg(eax, ebx)?;
            a.cmp(eax, ebx)?;
            a.cmove(ecx, edx)?;
            a.setb(al)?;
            a.bt(eax, 3)?;
            a.bts(ecx, 5)?;
            a.bswap(edx)?;
            a.cdq()?;
            a.cwde()?;
            a.nop()?;
            a.cmp(eax, 0x80)?;
            Ok(())
        });
        let (mut j, mut i, calls) = run_both(0, [1, 2, 3, 4, 0, 6, 7, 8], &code);
        assert_same(&mut j, &mut i, ARITH_EFLAGS);
        // Only the HLT ran in the monitor.
        assert_eq!(calls, 1);
    }

    #[test]
    fn partial_flag_writers_keep_the_others() {
        // STC ; INC keeps CF ; ADC reads it: EBX = 0 + 0xFFFF_FFFF + 1,
        // which carries out again.
        let code = asm32(|a| {
            a.stc()?;
            a.inc(eax)?;
            a.adc(ebx, ecx)?;
            a.mov(ecx, 0u32)?;
            a.shl(edx, cl)?; // count 0: flags stay
            a.setb(cl)?;
            Ok(())
        });
        let (mut j, mut i, _) = run_both(0, [7, 0xFFFF_FFFF, 1, 0, 0, 0, 0, 0], &code);
        assert_same(&mut j, &mut i, ARITH_EFLAGS);
        assert_eq!(j.cpu.reg32(0), 8);
        assert_eq!(j.cpu.reg32(3), 0, "0 + 0xFFFFFFFF + CF wraps to 0");
        assert_eq!(j.cpu.reg32(1), 1, "CF from ADC survives SHL by 0");
    }

    #[test]
    fn byte_and_word_registers() {
        // AH..BH with R12-R15 cannot be encoded: those fall back.
        let code = asm32(|a| {
            a.mov(ah, 0x12)?;
            a.add(ah, bh)?;
            a.mov(si, ax)?;
            a.add(si, 0x7FFF)?;
            a.xchg(cl, dh)?;
            a.movzx(edi, ch)?; // falls back
            a.mov(bp, 0xFFFF)?;
            a.inc(bp)?;
            Ok(())
        });
        let (mut j, mut i, calls) = run_both(
            0,
            [
                0x1111_1111,
                0x2222_3344,
                0x5566_7788,
                0x0000_4000,
                0,
                0xAAAA_0000,
                0,
                0,
            ],
            &code,
        );
        assert_same(&mut j, &mut i, ARITH_EFLAGS);
        // AH = 0x12 + 0x40.
        assert_eq!(j.cpu.reg32(0), 0x1111_5211);
        // BP wraps at 16 bits, the upper half of EBP stays.
        assert_eq!(j.cpu.reg32(5), 0xAAAA_0000);
        assert_eq!(calls, 2);
    }

    #[test]
    fn lea_wraps_at_its_address_size() {
        // 67 8D 40 FE: lea eax, [bx+si-2] (16-bit address).
        // 8D 44 CB 10: lea eax, [ebx+ecx*8+0x10]... into EDX: 8D 54 CB 10.
        let code = [0x67, 0x8D, 0x40, 0xFE, 0x8D, 0x54, 0xCB, 0x10];
        let (mut j, mut i, _) = run_both(
            0,
            [0, 0x2000_0001, 0, 0xFFFF_0001, 0, 0, 0x0000_FFFF, 0],
            &code,
        );
        assert_same(&mut j, &mut i, ARITH_EFLAGS);
        // 0x0001 + 0xFFFF - 2 = 0xFFFE (mod 2^16).
        assert_eq!(j.cpu.reg32(0), 0xFFFE);
        // 0xFFFF0001 + 0x100000008 + 0x10 = 0xFFFF0019 (mod 2^32).
        assert_eq!(j.cpu.reg32(2), 0xFFFF_0019);
    }
}
