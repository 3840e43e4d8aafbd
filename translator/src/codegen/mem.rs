//! Guest memory operands in generated code: effective address with
//! 16/32-bit wrap, segment base, the inline shadow lookup (DESIGN.md
//! "Shadow paging") and the host pointer on a hit; a miss takes the slow
//! path.
//!
//! Only segments that are flat for the access (`block::seg_flat`: no limit
//! or rights check needed) are accessed inline; anything else runs in the
//! monitor. The slow path is out of line at the end of the block: it runs
//! the whole instruction through `helpers::exec_insn` (page walk, faults,
//! MMIO, watched frames, #AC) and comes back after it. A hit is only taken
//! for an access that stays inside one page and whose offset does not
//! wrap past 4 GiB (the interpreter faults there), so the host access
//! stays inside the guest RAM frame the shadow entry names.
//!
//! Not handled here: CR0.AM/EFLAGS.AC alignment checks at CPL 3 (a hit
//! does not check alignment) and the RAM dirty bitmap (native stores do
//! not mark frames dirty).

use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi};
use iced_x86::{Code, Encoder, Instruction, MemoryOperand, Register};
use umbra_core::cpu::SegReg;
use umbra_core::mmu::shadow::{perm, Entry, ENTRY_BYTES, PAGE_KINDS, SLOTS};

use super::native::{host_reg, MemUse, HOST32};
use super::{flags, Emitter, FlagState};
use crate::block::{mode, seg_base0, seg_flat, InsnMeta};
use crate::ctx::{off, HOST_REG};
use crate::helpers;

/// An out-of-line slow path, emitted after the block's code.
pub struct ColdPath {
    /// Where the fast path jumps on a miss.
    pub slow: DynamicLabel,
    /// Where execution continues after the instruction.
    pub resume: DynamicLabel,
    /// The instruction the monitor runs.
    pub meta: *const InsnMeta,
    /// The fast path leaves the flags in RFLAGS at `resume`: reload them
    /// from `hflags` after the monitor call.
    pub flags_in_host: bool,
}

/// Guest segment register index of `r` (ES..GS).
pub(super) fn seg_index(r: Register) -> Option<SegReg> {
    Some(match r {
        Register::ES => SegReg::Es,
        Register::CS => SegReg::Cs,
        Register::SS => SegReg::Ss,
        Register::DS => SegReg::Ds,
        Register::FS => SegReg::Fs,
        Register::GS => SegReg::Gs,
        _ => return None,
    })
}

/// 32-bit host register of a guest 16- or 32-bit address register.
pub(super) fn addr_reg(r: Register) -> Option<Register> {
    if r == Register::None {
        return Some(Register::None);
    }
    if r.is_gpr16() || r.is_gpr32() {
        return HOST32.get(r.number()).copied();
    }
    None
}

/// The shadow permission bit of a data access at the block's CPL.
pub(super) fn perm_bit(e: &Emitter, write: bool) -> u32 {
    let user = (e.key.mode >> mode::CPL_SHIFT) & 3 == 3;
    match (user, write) {
        (false, false) => perm::SUP_READ,
        (false, true) => perm::SUP_WRITE,
        (true, false) => perm::USER_READ,
        (true, true) => perm::USER_WRITE,
    }
}

/// The effective address (offset in the segment) of `ins`'s memory
/// operand into EDI, wrapped to its address size. Flag-free:
///
/// ```text
///   mov edi, disp                          (no base, no index)
///   lea edi, [base32 + index32*scale + disp]   (67 prefix: 32-bit wrap)
///   movzx edi, di                          (16-bit address size)
/// ```
pub(super) fn emit_ea(e: &mut Emitter, ins: &Instruction) -> bool {
    let (Some(base), Some(index)) = (addr_reg(ins.memory_base()), addr_reg(ins.memory_index()))
    else {
        return false;
    };
    let a16 = ins.memory_base().is_gpr16() || ins.memory_index().is_gpr16() || {
        // moffs and [disp16] forms: the address size says it.
        ins.memory_base() == Register::None
            && ins.memory_index() == Register::None
            && ins.memory_displ_size() == 2
    };
    let disp = ins.memory_displacement32();
    if base == Register::None && index == Register::None {
        let disp = if a16 { disp & 0xFFFF } else { disp };
        dynasm!(e.ops ; .arch x64 ; mov edi, disp as i32);
        return true;
    }
    let disp = disp as i32;
    let size = if disp == 0 {
        0
    } else if disp as i8 as i32 == disp {
        1
    } else {
        4
    };
    let scale = ins.memory_index_scale();
    let mo = MemoryOperand::with_base_index_scale_displ_size(base, index, scale, disp as i64, size);
    let Ok(lea) = Instruction::with2(Code::Lea_r32_m, Register::EDI, mo) else {
        return false;
    };
    let mut enc = Encoder::new(64);
    if enc.encode(&lea, 0).is_err() {
        return false;
    }
    e.ops.extend(enc.take_buffer());
    if a16 {
        dynasm!(e.ops ; .arch x64 ; movzx edi, di);
    }
    true
}

/// The offset in EDI through segment `seg` into the linear address, for
/// an access of `size` bytes with a 32-bit offset (`a32`; a 16-bit offset
/// cannot wrap past 4 GiB):
///
/// ```text
///   cmp edi, -(size-1) ; jae slow           (a32 and size > 1)
///   mov esi, [rbp+seg_base(seg)] ; lea edi, [rdi+rsi]   (32-bit wrap)
/// ```
///
/// Nothing where the block key says the base is zero: the linear address
/// is then the offset, and an access whose offset wraps at 4 GiB crosses
/// from page 0xFFFFF to page 0, which `emit_lookup` sends to `slow`.
pub(super) fn emit_linear(e: &mut Emitter, seg: SegReg, a32: bool, size: i32, slow: DynamicLabel) {
    if seg_base0(e.key.mode, seg) {
        return;
    }
    if a32 && size > 1 {
        dynasm!(e.ops ; .arch x64 ; cmp edi, 1 - size ; jae =>slow);
    }
    dynasm!(e.ops
        ; .arch x64
        ; mov esi, DWORD [rbp + off::seg_base(seg as usize)]
        ; lea edi, [rdi + rsi]
    );
}

/// LEA: the effective address with the instruction's address size, then
/// the destination's operand size:
///
/// ```text
///   <ea into edi>
///   mov r32, edi | mov r16, di
/// ```
pub fn emit_lea(e: &mut Emitter, ins: &Instruction) -> bool {
    let dst = ins.op0_register();
    let Some(h) = host_reg(dst) else {
        return false;
    };
    let src = if dst.is_gpr16() {
        Register::DI
    } else if dst.is_gpr32() {
        Register::EDI
    } else {
        return false;
    };
    let Ok(mov) = Instruction::with2(
        if dst.is_gpr16() {
            Code::Mov_r16_rm16
        } else {
            Code::Mov_r32_rm32
        },
        h,
        src,
    ) else {
        return false;
    };
    let mut enc = Encoder::new(64);
    if enc.encode(&mov, 0).is_err() {
        return false;
    }
    let bytes = enc.take_buffer();
    if !emit_ea(e, ins) {
        return false;
    }
    e.ops.extend(bytes);
    true
}

/// A native memory instruction (`host` = its bytes with the operand at
/// `[rsi]`):
///
/// ```text
///   pushfq ; pop [rbp+hflags]               (flags dirty in RFLAGS)
///   <ea into edi>
///   <linear address in edi (`emit_linear`; nothing for a zero base)>
///   <lookup (`emit_lookup`): host pointer in rsi, or jmp slow>
///   <flags into RFLAGS (`Emitter::restore_flags`), if it needs them>
///   <instruction with [rsi]>
/// resume:
/// ```
pub fn emit_access(e: &mut Emitter, m: &InsnMeta, u: MemUse, host: &[u8], live_after: u32) -> bool {
    let ins = &m.ins;
    let Some(seg) = seg_index(ins.memory_segment()) else {
        return false;
    };
    let write = u != MemUse::Read;
    if !seg_flat(e.key.mode, seg, write) || (write && !seg_flat(e.key.mode, seg, false)) {
        return false;
    }
    let size = ins.memory_size().size() as i32;
    if !(1..=4).contains(&size) {
        return false;
    }
    if addr_reg(ins.memory_base()).is_none() || addr_reg(ins.memory_index()).is_none() {
        return false;
    }
    let a32 = ins.memory_base().is_gpr32()
        || ins.memory_index().is_gpr32()
        || (ins.memory_base() == Register::None
            && ins.memory_index() == Register::None
            && ins.memory_displ_size() == 4);
    let bit = perm_bit(e, write);
    // The slow path may fault: the guest's flags must be in `hflags`.
    e.clobber_flags();
    if !emit_ea(e, ins) {
        // Nothing emitted by a failing `emit_ea`; the flags were only
        // spilled, which the fallback does anyway.
        return false;
    }
    let slow = e.ops.new_dynamic_label();
    let resume = e.ops.new_dynamic_label();
    emit_linear(e, seg, a32, size, slow);
    emit_lookup(e, size, bit, slow);
    if flags::needed_before(ins, live_after) != 0 {
        e.restore_flags();
    }
    e.ops.extend(host.iter().copied());
    let flags_in_host = flags::modified(ins) != 0;
    e.flags = FlagState {
        in_host: flags_in_host,
        dirty: flags_in_host,
    };
    dynasm!(e.ops ; .arch x64 ; =>resume);
    e.cold.push(ColdPath {
        slow,
        resume,
        meta: m as *const InsnMeta,
        flags_in_host,
    });
    true
}

/// What a native PUSH stores.
enum Pushed {
    Reg(u8),
    Imm(i32),
}

/// PUSH r16/r32/imm and POP r16/r32 (not POP (E)SP) through a flat SS:
/// the stack pointer is ESP with a 32-bit stack (`mode::STACK32`), else
/// SP (16-bit wrap, ESP's upper half kept). ESP changes only after the
/// access succeeded, so a fault leaves it as it was (the slow path runs
/// the whole instruction in the monitor).
///
/// ```text
///   pushfq ; pop [rbp+hflags]          (flags dirty)
///   lea edi, [r12-size] | lea edi, [r12+0]     (push | pop)
///   movzx edi, di                      (16-bit stack)
///   mov r11d, edi                      (push: new SP)
///   lea r11d, [rdi+size]               (pop: new SP)
///   <linear address in edi (`emit_linear` through SS)>
///   <lookup: host pointer into rsi>
///   mov [rsi], reg|imm                 (push)
///   mov reg, [rsi]                     (pop)
///   mov r12d, r11d | mov r12w, r11w
/// resume:
/// ```
pub fn emit_stack(e: &mut Emitter, m: &InsnMeta) -> bool {
    let ins = &m.ins;
    if ins.has_lock_prefix() || !seg_flat(e.key.mode, SegReg::Ss, true) {
        return false;
    }
    let (push, size, what) = match ins.code() {
        Code::Push_r32 | Code::Push_r16 | Code::Pop_r32 | Code::Pop_r16 => {
            let r = ins.op0_register();
            let n = r.number();
            let push = matches!(ins.code(), Code::Push_r32 | Code::Push_r16);
            if n >= 8 || (!push && n == 4) {
                return false;
            }
            (push, r.size() as i32, Pushed::Reg(HOST_REG[n]))
        }
        Code::Pushd_imm32 | Code::Pushd_imm8 => (true, 4, Pushed::Imm(ins.immediate(0) as i32)),
        Code::Push_imm16 | Code::Pushw_imm8 => {
            (true, 2, Pushed::Imm(ins.immediate(0) as i16 as i32))
        }
        _ => return false,
    };
    let stack32 = e.key.mode & mode::STACK32 != 0;
    let bit = perm_bit(e, push);
    e.clobber_flags();
    let slow = e.ops.new_dynamic_label();
    let resume = e.ops.new_dynamic_label();
    let delta = if push { -size } else { 0 };
    dynasm!(e.ops ; .arch x64 ; lea edi, [r12 + delta]);
    if !stack32 {
        dynasm!(e.ops ; .arch x64 ; movzx edi, di);
    }
    if push {
        dynasm!(e.ops ; .arch x64 ; mov r11d, edi);
    } else {
        dynasm!(e.ops ; .arch x64 ; lea r11d, [rdi + size]);
    }
    emit_linear(e, SegReg::Ss, stack32, size, slow);
    emit_lookup(e, size, bit, slow);
    match (push, size, what) {
        (true, 4, Pushed::Reg(r)) => dynasm!(e.ops ; .arch x64 ; mov DWORD [rsi], Rd(r)),
        (true, _, Pushed::Reg(r)) => dynasm!(e.ops ; .arch x64 ; mov WORD [rsi], Rw(r)),
        (true, 4, Pushed::Imm(v)) => dynasm!(e.ops ; .arch x64 ; mov DWORD [rsi], v),
        (true, _, Pushed::Imm(v)) => dynasm!(e.ops ; .arch x64 ; mov WORD [rsi], v as i16),
        (false, 4, Pushed::Reg(r)) => dynasm!(e.ops ; .arch x64 ; mov Rd(r), DWORD [rsi]),
        (false, _, Pushed::Reg(r)) => dynasm!(e.ops ; .arch x64 ; mov Rw(r), WORD [rsi]),
        (false, _, Pushed::Imm(_)) => {}
    }
    if stack32 {
        dynasm!(e.ops ; .arch x64 ; mov r12d, r11d);
    } else {
        dynasm!(e.ops ; .arch x64 ; mov r12w, r11w);
    }
    dynasm!(e.ops ; .arch x64 ; =>resume);
    e.cold.push(ColdPath {
        slow,
        resume,
        meta: m as *const InsnMeta,
        flags_in_host: false,
    });
    true
}

/// Byte offset of the shadow slot of the linear address in EDI, into
/// Before an instruction `m` that runs onto the next linear page (the
/// block's last, `GuestBlock::cross`): check that the active shadow table
/// still lets this CPL fetch from that page and maps it to RAM offset
/// `ram`, the frame its bytes were decoded from (the block is on that
/// frame too, so a write to it drops the block). Returns the label to
/// jump to when not; the instruction then runs from the dispatcher (which
/// walks the page, or raises the fault). The slot is a constant:
///
/// ```text
///   pushfq ; pop [rbp+hflags]                  (if the flags are dirty)
///   mov r10d, [r8+slot*32+tag] ; and r10d, ~0xFFF | fetch_bit
///   cmp r10d, page | fetch_bit ; jne fail
///   cmp dword [r8+slot*32+ram], ram ; jne fail
/// ```
pub(super) fn emit_cross_guard(e: &mut Emitter, m: &InsnMeta, ram: u32) -> DynamicLabel {
    let fail = e.ops.new_dynamic_label();
    let page = (m.eip.wrapping_add(e.key.cs_base) | 0xFFF).wrapping_add(1);
    let user = (e.key.mode >> mode::CPL_SHIFT) & 3 == 3;
    let fetch = if user {
        perm::USER_FETCH
    } else {
        perm::SUP_FETCH
    };
    let at = (umbra_core::mmu::shadow::slot(page) * ENTRY_BYTES) as i32;
    e.clobber_flags();
    dynasm!(e.ops
        ; .arch x64
        ; mov r10d, DWORD [r8 + at + ENTRY_TAG]
        ; and r10d, (!0xFFF | fetch) as i32
        ; cmp r10d, (page | fetch) as i32
        ; jne =>fail
        ; cmp DWORD [r8 + at + ENTRY_RAM], ram as i32
        ; jne =>fail
    );
    fail
}

/// ESI: `slot(lin) * ENTRY_BYTES` = `(lin >> 7) & 0x1FFE0`
/// (`shadow::slot` is bits 23:12, an entry is 32 bytes).
const SLOT_SHIFT: i8 = 12 - ENTRY_BYTES.trailing_zeros() as i8;
const SLOT_MASK: i32 = ((SLOTS - 1) * ENTRY_BYTES) as i32;
/// Offsets in `shadow::Entry`.
const ENTRY_PAGES: i32 = std::mem::offset_of!(Entry, pages) as i32;
const ENTRY_HOST: i32 = std::mem::offset_of!(Entry, host) as i32;
const ENTRY_RAM: i32 = std::mem::offset_of!(Entry, ram) as i32;
const ENTRY_TAG: i32 = std::mem::offset_of!(Entry, tag) as i32;

/// The byte offset of the shadow slot of the linear address in EDI, into
/// ESI: `mov esi, edi ; shr esi, 7 ; and esi, 0x1FFE0`
fn emit_slot(e: &mut Emitter) {
    dynasm!(e.ops
        ; .arch x64
        ; mov esi, edi
        ; shr esi, SLOT_SHIFT
        ; and esi, SLOT_MASK
    );
}

/// The shadow-table probe of the linear page in EDI for permission bit
/// `bit` (any kind, fetches too): on a hit, RSI = the slot's byte offset
/// in the table (R8; the entry's RAM offset is at [r8+rsi+ram]); else a
/// jump to `miss`. Clobbers RFLAGS, R9, R10.
///
/// ```text
///   mov esi, edi ; shr esi, 7 ; and esi, 0x1FFE0       (slot * 32)
///   mov r9d, [r8+rsi]                                  (tag)
///   mov r10d, r9d ; xor r10d, edi ; test r10d, ~0xFFF ; jnz miss
///   test r9d, bit ; jz miss
/// ```
pub(super) fn emit_probe(e: &mut Emitter, bit: u32, miss: DynamicLabel) {
    emit_slot(e);
    dynasm!(e.ops
        ; .arch x64
        ; mov r9d, DWORD [r8 + rsi]
        ; mov r10d, r9d
        ; xor r10d, edi
        ; test r10d, 0xFFFF_F000u32 as i32
        ; jnz =>miss
        ; test r9d, bit as i32
        ; jz =>miss
    );
}

/// The RAM offset of the entry `emit_probe` hit, into ESI:
/// `mov esi, [r8+rsi+ram]`
pub(super) fn emit_probed_ram(e: &mut Emitter) {
    dynasm!(e.ops ; .arch x64 ; mov esi, DWORD [r8 + rsi + ENTRY_RAM]);
}

/// The inline shadow lookup of the linear address in EDI for a data
/// access of `size` bytes needing permission bit `bit`: host pointer into
/// RSI, or a jump to `slow`. Clobbers RFLAGS, R10.
///
/// The entry's page for this access kind (`Entry::pages`: the linear page,
/// or a value no page equals where the kind is not granted) is compared
/// with the page of the access's last byte, in the first byte's slot: an
/// entry sits only in its own page's slot and `shadow::slot` never gives
/// two consecutive pages (nor pages 0xFFFFF and 0) the same slot, so a
/// hit means both bytes are in the entry's page, and an access that
/// crosses a page (or wraps at 4 GiB) misses without a check of its own.
///
/// ```text
///   mov esi, edi ; shr esi, 7 ; and esi, 0x1FFE0       (slot * 32)
///   lea r10d, [rdi+size-1] ; and r10d, ~0xFFF          (last byte's page)
///   cmp r10d, [r8+rsi+pages+4*kind] ; jne slow
///   mov rsi, [r8+rsi+host] ; add rsi, rdi              (host address)
/// ```
pub(super) fn emit_lookup(e: &mut Emitter, size: i32, bit: u32, slow: DynamicLabel) {
    let kind = PAGE_KINDS.iter().position(|&k| k == bit).unwrap_or(0) as i32;
    debug_assert_eq!(PAGE_KINDS[kind as usize], bit, "a data access kind");
    emit_slot(e);
    dynasm!(e.ops
        ; .arch x64
        ; lea r10d, [rdi + size - 1]
        ; and r10d, 0xFFFF_F000u32 as i32
        ; cmp r10d, DWORD [r8 + rsi + ENTRY_PAGES + 4 * kind]
        ; jne =>slow
        ; mov rsi, QWORD [r8 + rsi + ENTRY_HOST]
        ; add rsi, rdi
    );
}

/// The slow paths of the block, after its code:
///
/// ```text
/// slow:   <monitor call: exec_insn(ctx, meta)>   (leaves on fault etc.)
///         push [rbp+hflags] ; popfq              (if the fast path left
///                                                 the flags in RFLAGS)
///         jmp resume
/// ```
pub fn emit_cold_paths(e: &mut Emitter) {
    let cold = std::mem::take(&mut e.cold);
    for c in cold {
        dynasm!(e.ops ; .arch x64 ; =>c.slow);
        // On every jump here the flags are in `hflags` (spilled before
        // the lookup).
        e.flags = FlagState {
            in_host: false,
            dirty: false,
        };
        e.call_monitor(helpers::exec_insn as *const () as usize, c.meta as u64);
        if c.flags_in_host {
            e.restore_flags();
        }
        dynasm!(e.ops ; .arch x64 ; jmp =>c.resume);
    }
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use umbra_core::cpu::{attr, SegReg};

    use super::super::native::tests::{asm32, assert_same, run_both, run_both_with, ARITH_EFLAGS};

    const DATA: u32 = 0x8000;

    fn program() -> Vec<u8> {
        asm32(|a| {
            a.mov(dword_ptr(DATA), 0x1122_3344u32)?;
            a.add(dword_ptr(DATA), eax)?;
            a.mov(ecx, dword_ptr(DATA))?;
            a.inc(byte_ptr(DATA + 1))?;
            a.cmp(dword_ptr(DATA), ecx)?;
            a.setne(dl)?;
            a.shl(word_ptr(DATA + 2), 1)?;
            a.xchg(dword_ptr(DATA + 4), ebx)?;
            a.movzx(esi, byte_ptr(DATA + 4))?;
            a.test(dword_ptr(DATA), eax)?;
            a.adc(dword_ptr(DATA + 8), edx)?;
            a.bts(dword_ptr(DATA), 7)?;
            a.mov(byte_ptr(edi + 0x10), ah)?;
            a.imul_2(ebp, dword_ptr(edi + ebx * 1 - 0x8000))?;
            // Crosses into the next page: slow path.
            a.mov(dword_ptr(DATA + 0xFFE), eax)?;
            a.sub(eax, dword_ptr(DATA + 0xFFE))?;
            Ok(())
        })
    }

    #[test]
    fn memory_forms_agree_with_the_interpreter() {
        let regs = [0x0102_0304, 5, 6, 0x8004, 0, 3, 0, DATA];
        let (mut j, mut i, calls) = run_both(0, regs, &program());
        assert_same(&mut j, &mut i, ARITH_EFLAGS);
        // 0x11223344 + 0x01020304 = 0x12243648; the byte at +1 goes
        // 0x36 -> 0x37.
        assert_eq!(j.mem.read_u8(DATA as u64 + 1), 0x37);
        // Monitor calls: first touches of the data page and of page 0
        // (the IMUL reads [0x8000 + 0 - 0x8000]: EBX is 0 after the
        // XCHG), the page-crossing store and load, and the HLT.
        assert_eq!(calls, 5);
    }

    #[test]
    fn segment_base_is_added() {
        let regs = [0x0102_0304, 5, 6, 0x8004, 0, 3, 0, DATA];
        let (mut j, mut i, _) = run_both(0x100, regs, &program());
        assert_same(&mut j, &mut i, ARITH_EFLAGS);
        // 0x11223344 + 0x01020304 = 0x12243648; INC of byte 1 gives
        // 0x12243748; SHL of the high word 0x1224 gives 0x24483748; BTS
        // bit 7 gives 0x244837C8.
        assert_eq!(j.mem.read_u32(DATA as u64 + 0x100), 0x2448_37C8);
    }

    #[test]
    fn moffs_forms() {
        // A1 moffs32: mov eax, [DATA] ; A2 moffs8: mov [DATA+12], al.
        let d = DATA.to_le_bytes();
        let e = (DATA + 12).to_le_bytes();
        let code = [
            0xC7, 0x05, d[0], d[1], d[2], d[3], 0x78, 0x56, 0x34, 0x12, // mov [DATA], imm32
            0xA1, d[0], d[1], d[2], d[3], // mov eax, [DATA]
            0xA2, e[0], e[1], e[2], e[3], // mov [DATA+12], al
        ];
        let (mut j, mut i, _) = run_both(0, [0; 8], &code);
        assert_same(&mut j, &mut i, ARITH_EFLAGS);
        assert_eq!(j.cpu.reg32(0), 0x1234_5678);
        assert_eq!(j.mem.read_u8(DATA as u64 + 12), 0x78);
    }

    #[test]
    fn push_and_pop() {
        let code = asm32(|a| {
            a.push(eax)?;
            a.push(0x1234_5678u32)?;
            a.push(-5i32)?;
            a.push(esp)?;
            a.push(sp)?;
            a.pop(cx)?;
            a.pop(edx)?;
            a.pop(ebx)?;
            a.pop(esi)?;
            a.pop(edi)?;
            Ok(())
        });
        let (mut j, mut i, calls) = run_both(0, [0xAABB_CCDD, 0, 0, 0, 0, 0, 0, 0], &code);
        assert_same(&mut j, &mut i, ARITH_EFLAGS);
        // ESP starts at 0xF000: PUSH ESP stores 0xEFF4, PUSH SP 0xEFF0.
        assert_eq!(j.cpu.reg32(1) & 0xFFFF, 0xEFF0);
        assert_eq!(j.cpu.reg32(2), 0xEFF4);
        assert_eq!(j.cpu.reg32(3), 0xFFFF_FFFB);
        assert_eq!(j.cpu.reg32(6), 0x1234_5678);
        assert_eq!(j.cpu.reg32(7), 0xAABB_CCDD);
        assert_eq!(j.cpu.reg32(4), 0xF000);
        // The stack page is touched first by the slow path; then the HLT.
        assert_eq!(calls, 2);
    }

    #[test]
    fn sixteen_bit_stack_wraps_sp() {
        let code = asm32(|a| {
            a.push(eax)?;
            a.pop(ebx)?;
            a.push(eax)?;
            Ok(())
        });
        let regs = [0x0102_0304, 0, 0, 0, 0, 0, 0, 0];
        let (mut j, mut i, _) = run_both_with(
            |vm| {
                vm.cpu.seg_mut(SegReg::Ss).attr &= !attr::DB;
                vm.cpu.set_reg32(4, 0x0001_0002);
            },
            regs,
            &code,
        );
        assert_same(&mut j, &mut i, ARITH_EFLAGS);
        // SP 2 - 4 wraps to 0xFFFE; ESP's upper half stays.
        assert_eq!(j.cpu.reg32(4), 0x0001_FFFE);
        assert_eq!(j.cpu.reg32(3), 0x0102_0304);
        assert_eq!(j.mem.read_u32(0xFFFE), 0x0102_0304);
    }

    #[test]
    fn locked_read_modify_write() {
        let code = asm32(|a| {
            a.mov(dword_ptr(DATA), 10u32)?;
            a.lock().add(dword_ptr(DATA), ecx)?;
            a.lock().xadd(dword_ptr(DATA), edx)?;
            // EAX (0) differs from [DATA] (17): EAX takes it, ZF clear.
            a.lock().cmpxchg(dword_ptr(DATA), ebx)?;
            a.setne(cl)?;
            // Now equal: [DATA] takes EBX, ZF set.
            a.lock().cmpxchg(dword_ptr(DATA), ebx)?;
            a.sete(ch)?;
            a.xadd(esi, edi)?;
            Ok(())
        });
        let regs = [0, 3, 4, 99, 0, 0, 1, 2];
        let (mut j, mut i, _) = run_both(0, regs, &code);
        assert_same(&mut j, &mut i, ARITH_EFLAGS);
        // 10 + 3 = 13; XADD: EDX = 13, [DATA] = 17.
        assert_eq!(j.cpu.reg32(2), 13);
        assert_eq!(j.cpu.reg32(0), 17);
        assert_eq!(j.cpu.reg32(1), 0x0101);
        assert_eq!(j.mem.read_u32(DATA as u64), 99);
        // XADD ESI, EDI: ESI = 3, EDI = 1.
        assert_eq!((j.cpu.reg32(6), j.cpu.reg32(7)), (3, 1));
    }

    #[test]
    fn sixteen_bit_addresses_wrap() {
        // mov dword [0x8010], 0xCAFEF00D ; 67 8B 07: mov eax, [bx] ;
        // 67 89 4A FE: mov [bp+si-2], ecx (SS).
        let mut code = asm32(|a| {
            a.mov(dword_ptr(0x8010), 0xCAFE_F00Du32)?;
            Ok(())
        });
        code.extend_from_slice(&[0x67, 0x8B, 0x07, 0x67, 0x89, 0x4A, 0xFE]);
        let regs = [
            0,
            0x5555_AAAA,
            0,
            0x1234_8010,
            0,
            0x0001_8000,
            0x0000_8022,
            0,
        ];
        let (mut j, mut i, _) = run_both(0, regs, &code);
        assert_same(&mut j, &mut i, ARITH_EFLAGS);
        // BX = 0x8010: the upper half of EBX is not part of the address.
        assert_eq!(j.cpu.reg32(0), 0xCAFE_F00D);
        // BP + SI - 2 = 0x8000 + 0x8022 - 2 = 0x10020, wrapped to 0x0020.
        assert_eq!(j.mem.read_u32(0x20), 0x5555_AAAA);
    }
}
