//! Instruction forms by class: which iced-x86 `Code`s the generators draw
//! from, and how a form plus operand choices becomes an `Instruction`.
//!
//! Forms are selected from iced-x86's own tables (every legacy-encoded
//! `Code` of the class's mnemonics that Intel decodes in 16- and 32-bit
//! mode and whose operands are GPRs, r/m, immediates or fixed AL/AX/EAX/
//! CL/DX), so a new form in iced is covered without a list to maintain.
//!
//! Operand rules that keep results defined and addresses in the data area:
//! EBX (the data pointer) and ESP are never operands; memory operands are
//! `[ebx+disp]` (or `[bx+disp]` with 16-bit addressing); BT* with a
//! register bit offset never address memory (the offset would leave the
//! data area); 16-bit SHLD/SHRD counts stay <= 16 (larger ones are
//! undefined, SDM Vol. 2B SHLD); 16-bit BSWAP (undefined) is left out.
//! Forms that read CL as a count are `Form::by_cl` and are emitted only
//! after a `mov cl, n`.

use iced_x86::{
    Code, EncodingKind, Instruction, Mnemonic, OpCodeOperandKind as K, OpKind, Register, RflagsBits,
};

/// A class of instructions the generator mixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Class {
    Alu,
    Shift,
    Mul,
    Div,
    Bcd,
    Bit,
    CondMove,
    Exchange,
    Move,
    Stack,
    /// x87 data movement, arithmetic, comparisons and control words (not
    /// the transcendental instructions, which the interpreter computes
    /// to f64 accuracy only, nor the environment saves and loads).
    X87,
}

impl Class {
    /// Mnemonics of the class.
    pub fn mnemonics(self) -> &'static [Mnemonic] {
        use Mnemonic::*;
        match self {
            Class::Alu => &[
                Add, Or, Adc, Sbb, And, Sub, Xor, Cmp, Inc, Dec, Neg, Not, Test,
            ],
            Class::Shift => &[Rol, Ror, Rcl, Rcr, Shl, Shr, Sar, Shld, Shrd],
            Class::Mul => &[Mul, Imul],
            Class::Div => &[Div, Idiv],
            Class::Bcd => &[Daa, Das, Aaa, Aas, Aam, Aad],
            Class::Bit => &[Bt, Bts, Btr, Btc, Bsf, Bsr],
            Class::CondMove => &[
                Cmovo, Cmovno, Cmovb, Cmovae, Cmove, Cmovne, Cmovbe, Cmova, Cmovs, Cmovns, Cmovp,
                Cmovnp, Cmovl, Cmovge, Cmovle, Cmovg, Seto, Setno, Setb, Setae, Sete, Setne, Setbe,
                Seta, Sets, Setns, Setp, Setnp, Setl, Setge, Setle, Setg,
            ],
            Class::Exchange => &[Xchg, Cmpxchg, Xadd, Bswap, Cmpxchg8b],
            Class::Move => &[
                Mov, Lea, Movzx, Movsx, Cbw, Cwde, Cwd, Cdq, Lahf, Sahf, Clc, Stc, Cmc, Cld, Std,
                Nop,
            ],
            Class::Stack => &[Push, Pop],
            Class::X87 => &[
                Fninit, Fnclex, Fldcw, Fnstcw, Fnstsw, Wait, Fld, Fldz, Fld1, Fldpi, Fldl2e, Fild,
                Fist, Fistp, Fst, Fstp, Fxch, Fchs, Fabs, Ffree, Fincstp, Fdecstp, Fnop, Fadd,
                Faddp, Fiadd, Fsub, Fsubp, Fisub, Fsubr, Fsubrp, Fisubr, Fmul, Fmulp, Fimul, Fdiv,
                Fdivp, Fidiv, Fdivr, Fdivrp, Fidivr, Fsqrt, Frndint, Fprem, Fprem1, Fscale,
                Fxtract, Fcom, Fcomp, Fcompp, Fucom, Fucomp, Fucompp, Ficom, Ficomp, Ftst, Fxam,
                Fcomi, Fcomip, Fucomi, Fucomip, Fcmovb, Fcmove, Fcmovbe, Fcmovu, Fcmovnb, Fcmovne,
                Fcmovnbe, Fcmovnu,
            ],
        }
    }
}

/// One instruction form.
#[derive(Clone, Copy, Debug)]
pub struct Form {
    pub code: Code,
    /// Reads CL as a shift count.
    pub by_cl: bool,
    /// May take a memory operand in its r/m slot.
    pub mem_ok: bool,
}

/// Every usable form of `class`, in `Code` order.
pub fn forms(class: Class) -> Vec<Form> {
    let ms = class.mnemonics();
    Code::values()
        .filter(|c| ms.contains(&c.mnemonic()))
        .filter_map(form_of)
        .collect()
}

fn form_of(code: Code) -> Option<Form> {
    let op = code.op_code();
    if !op.is_instruction()
        || op.encoding() != EncodingKind::Legacy
        || !(op.intel_decoder16() && op.intel_decoder32())
        || op.operand_size() == 64
        || op.address_size() != 0
        || op.decoder_option() != iced_x86::DecoderOptions::NONE
    {
        return None;
    }
    // Undocumented aliases (TEST F6 /1, opcode 82) are left to dedicated
    // tests; BSWAP r16 is undefined.
    let name = format!("{code:?}");
    if name.ends_with("_F6r1") || name.ends_with("_F7r1") || name.ends_with("_82") {
        return None;
    }
    if code.mnemonic() == Mnemonic::Bswap && op.operand_size() == 16 {
        return None;
    }
    let mut by_cl = false;
    for i in 0..op.op_count() {
        match op.op_kind(i) {
            K::r8_or_mem | K::r16_or_mem | K::r32_or_mem | K::mem => {}
            K::r8_reg | K::r8_opcode | K::r16_reg | K::r16_opcode | K::r32_reg | K::r32_opcode => {}
            K::al | K::ax | K::eax | K::dx => {}
            K::cl => by_cl = true,
            K::st0 | K::sti_opcode => {}
            K::imm8 | K::imm8_const_1 | K::imm8sex16 | K::imm8sex32 | K::imm16 | K::imm32 => {}
            _ => return None,
        }
    }
    let bt_reg_offset = matches!(
        code.mnemonic(),
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc
    ) && matches!(op.op_kind(1), K::r16_reg | K::r32_reg);
    Some(Form {
        code,
        by_cl,
        mem_ok: !bt_reg_offset,
    })
}

/// Registers a generated instruction may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegSet {
    /// All but EBX (data pointer) and ESP.
    General,
    /// Also without ECX: loop bodies.
    NoCounter,
    /// Also without EBP: ENTER/LEAVE bodies.
    NoFrame,
}

impl RegSet {
    fn r8(self) -> &'static [Register] {
        use Register::*;
        match self {
            RegSet::General => &[AL, CL, DL, AH, CH, DH],
            RegSet::NoCounter => &[AL, DL, AH, DH],
            RegSet::NoFrame => &[AL, CL, DL, AH, CH, DH],
        }
    }
    fn r16(self) -> &'static [Register] {
        use Register::*;
        match self {
            RegSet::General => &[AX, CX, DX, BP, SI, DI],
            RegSet::NoCounter => &[AX, DX, BP, SI, DI],
            RegSet::NoFrame => &[AX, CX, DX, SI, DI],
        }
    }
    fn r32(self) -> &'static [Register] {
        use Register::*;
        match self {
            RegSet::General => &[EAX, ECX, EDX, EBP, ESI, EDI],
            RegSet::NoCounter => &[EAX, EDX, EBP, ESI, EDI],
            RegSet::NoFrame => &[EAX, ECX, EDX, ESI, EDI],
        }
    }
}

/// The generator's choices for one instruction, before encoding.
#[derive(Clone, Copy, Debug)]
pub struct Choices {
    /// Register picks per operand (taken modulo the register set).
    pub regs: [u8; 3],
    /// Use memory for the r/m operand.
    pub mem: bool,
    /// Displacement from the data pointer.
    pub disp: i32,
    /// Use 32-bit addressing in 16-bit code.
    pub addr32: bool,
    /// Immediate (truncated to the operand's width).
    pub imm: u32,
}

/// Build `form` with `choices` for code of `bitness`. `None` if the
/// choices cannot make this form (the generator then skips it).
pub fn build(form: Form, bitness: u32, set: RegSet, ch: &Choices) -> Option<Instruction> {
    let code = form.code;
    let op = code.op_code();
    let mut ins = Instruction::default();
    ins.set_code(code);
    for i in 0..op.op_count() {
        let pick = ch.regs[i as usize % 3] as usize;
        let reg = |regs: &[Register]| regs[pick % regs.len()];
        match op.op_kind(i) {
            K::r8_or_mem | K::r16_or_mem | K::r32_or_mem if ch.mem && form.mem_ok => {
                set_mem(&mut ins, i, bitness, ch)
            }
            K::mem => set_mem(&mut ins, i, bitness, ch),
            K::r8_or_mem | K::r8_reg | K::r8_opcode => set_reg(&mut ins, i, reg(set.r8())),
            K::r16_or_mem | K::r16_reg | K::r16_opcode => set_reg(&mut ins, i, reg(set.r16())),
            K::r32_or_mem | K::r32_reg | K::r32_opcode => set_reg(&mut ins, i, reg(set.r32())),
            K::al => set_reg(&mut ins, i, Register::AL),
            K::ax => set_reg(&mut ins, i, Register::AX),
            K::eax => set_reg(&mut ins, i, Register::EAX),
            K::cl => set_reg(&mut ins, i, Register::CL),
            K::dx => set_reg(&mut ins, i, Register::DX),
            K::st0 => set_reg(&mut ins, i, Register::ST0),
            K::sti_opcode => set_reg(&mut ins, i, ST[pick % ST.len()]),
            K::imm8_const_1 => {
                ins.set_op_kind(i, OpKind::Immediate8);
                ins.set_immediate8(1);
            }
            K::imm8 => {
                ins.set_op_kind(i, OpKind::Immediate8);
                ins.set_immediate8(imm8(code, ch.imm));
            }
            K::imm8sex16 => {
                ins.set_op_kind(i, OpKind::Immediate8to16);
                ins.set_immediate8to16(ch.imm as i8 as i16);
            }
            K::imm8sex32 => {
                ins.set_op_kind(i, OpKind::Immediate8to32);
                ins.set_immediate8to32(ch.imm as i8 as i32);
            }
            K::imm16 => {
                ins.set_op_kind(i, OpKind::Immediate16);
                ins.set_immediate16(ch.imm as u16);
            }
            K::imm32 => {
                ins.set_op_kind(i, OpKind::Immediate32);
                ins.set_immediate32(ch.imm);
            }
            _ => return None,
        }
    }
    Some(ins)
}

/// An 8-bit immediate or CL count, kept where the SDM defines the result:
/// 16-bit SHLD/SHRD counts (mod 32) above 16 are undefined, so they are
/// folded.
pub fn imm8(code: Code, imm: u32) -> u8 {
    let v = imm as u8;
    let m = code.mnemonic();
    if matches!(m, Mnemonic::Shld | Mnemonic::Shrd)
        && code.op_code().operand_size() == 16
        && v & 0x1F > 16
    {
        (v & 0x1F) % 17
    } else {
        v
    }
}

/// x87 stack registers ST(0)..ST(7).
const ST: [Register; 8] = [
    Register::ST0,
    Register::ST1,
    Register::ST2,
    Register::ST3,
    Register::ST4,
    Register::ST5,
    Register::ST6,
    Register::ST7,
];

fn set_reg(ins: &mut Instruction, i: u32, r: Register) {
    ins.set_op_kind(i, OpKind::Register);
    ins.set_op_register(i, r);
}

/// `[ebx+disp]` or, with 16-bit addressing, `[bx+disp]`.
fn set_mem(ins: &mut Instruction, i: u32, bitness: u32, ch: &Choices) {
    ins.set_op_kind(i, OpKind::Memory);
    if bitness == 16 && !ch.addr32 {
        ins.set_memory_base(Register::BX);
        ins.set_memory_displ_size(2);
    } else {
        ins.set_memory_base(Register::EBX);
        ins.set_memory_displ_size(4);
    }
    ins.set_memory_index(Register::None);
    ins.set_memory_index_scale(1);
    ins.set_memory_displacement64(ch.disp as i64 as u64);
}

/// iced-x86 `RflagsBits` as EFLAGS bits.
pub fn eflags_of(bits: u32) -> u32 {
    use umbra_core::cpu as f;
    let pairs = [
        (RflagsBits::OF, f::OF),
        (RflagsBits::SF, f::SF),
        (RflagsBits::ZF, f::ZF),
        (RflagsBits::AF, f::AF),
        (RflagsBits::CF, f::CF),
        (RflagsBits::PF, f::PF),
        (RflagsBits::DF, f::DF),
        (RflagsBits::IF, f::IF),
        (RflagsBits::AC, f::AC),
    ];
    pairs
        .iter()
        .filter(|(i, _)| bits & i != 0)
        .fold(0, |acc, (_, e)| acc | e)
}

/// EFLAGS bits that the KVM oracle of these machines gets wrong for `ins`,
/// so that they are not compared (they are treated like undefined ones).
///
/// AAM and AAD: the SDM defines SF, ZF and PF from the resulting AL. KVM's
/// instruction emulator, which runs real and legacy protected mode on this
/// nested (PVM) host, computes them from AX. The host CPU itself, run in a
/// compatibility-mode segment, agrees with the SDM and with the
/// interpreter (AAM 0AFh on AL=0AEh gives SF=1; AAD 0E3h on AL=9Ch gives
/// SF=1, PF=1), and the interpreter's unit tests pin those values.
pub fn oracle_blind_flags(ins: &Instruction) -> u32 {
    use umbra_core::cpu::{PF, SF, ZF};
    match ins.mnemonic() {
        Mnemonic::Aam | Mnemonic::Aad => SF | ZF | PF,
        _ => 0,
    }
}

/// EFLAGS bits that `ins` leaves undefined (SDM Vol. 1 Appendix A and each
/// instruction's "Flags Affected"), given CL when it is the count: iced's
/// table, plus
/// - CF of SHL/SHR when the count is at least the operand width (SDM Vol.
///   2B SAL/SAR/SHL/SHR: "undefined for SHL and SHR instructions where the
///   count is greater than or equal to the size");
/// - OF of RCL/RCR by any masked count but 0 and 1. iced says a byte
///   rotated by 9 or 18, or a word by 17, changes no flag (the rotation
///   modulo 9 or 17 is empty), but the SDM's pseudo-code tests the masked
///   count, not the remainder, and hosts differ: an Intel Xeon leaves OF
///   alone, an AMD EPYC sets it from the result as for a one-bit rotate.
pub fn undefined_flags(ins: &Instruction, cl: u8) -> u32 {
    let mut undef = eflags_of(ins.rflags_undefined()) | oracle_blind_flags(ins);
    let count = || {
        let raw = match ins.op1_kind() {
            OpKind::Register => cl,
            OpKind::Immediate8 => ins.immediate8(),
            _ => 1,
        };
        raw & 0x1F
    };
    match ins.mnemonic() {
        Mnemonic::Shl | Mnemonic::Shr | Mnemonic::Sal => {
            let width = match ins.op_code().operand_size() {
                16 => 16,
                32 => 32,
                _ => 8,
            };
            if count() as u32 >= width {
                undef |= umbra_core::cpu::CF;
            }
        }
        Mnemonic::Rcl | Mnemonic::Rcr if count() > 1 => undef |= umbra_core::cpu::OF,
        _ => {}
    }
    undef
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::Encoder;

    fn encode(ins: &Instruction, bitness: u32) -> Vec<u8> {
        let mut e = Encoder::new(bitness);
        e.encode(ins, 0).unwrap();
        e.take_buffer()
    }

    #[test]
    fn every_class_has_forms_and_they_encode() {
        let ch = Choices {
            regs: [0, 1, 2],
            mem: true,
            disp: -4,
            addr32: false,
            imm: 0x1234_5678,
        };
        for class in [
            Class::Alu,
            Class::Shift,
            Class::Mul,
            Class::Div,
            Class::Bcd,
            Class::Bit,
            Class::CondMove,
            Class::Exchange,
            Class::Move,
            Class::Stack,
        ] {
            let fs = forms(class);
            assert!(!fs.is_empty(), "{class:?}");
            for f in fs {
                for bits in [16, 32] {
                    let ins = build(f, bits, RegSet::General, &ch).unwrap();
                    encode(&ins, bits);
                }
            }
        }
    }

    #[test]
    fn alu_forms_include_the_classic_encodings() {
        let codes: Vec<Code> = forms(Class::Alu).iter().map(|f| f.code).collect();
        for c in [
            Code::Add_rm8_r8,
            Code::Add_EAX_imm32,
            Code::Sub_rm32_imm8,
            Code::Inc_r16,
            Code::Neg_rm32,
        ] {
            assert!(codes.contains(&c), "{c:?}");
        }
        assert!(!codes.contains(&Code::Test_rm8_imm8_F6r1));
    }

    #[test]
    fn memory_operand_is_data_pointer_relative() {
        let f = forms(Class::Alu)
            .into_iter()
            .find(|f| f.code == Code::Add_rm32_r32)
            .unwrap();
        let ch = Choices {
            regs: [0, 0, 0],
            mem: true,
            disp: 0x10,
            addr32: false,
            imm: 0,
        };
        // add [bx+0x10], eax in 16-bit code: 66 01 87 10 00
        assert_eq!(
            encode(&build(f, 16, RegSet::General, &ch).unwrap(), 16),
            [0x66, 0x01, 0x87, 0x10, 0x00]
        );
        // add [ebx+0x10], eax in 32-bit code: 01 83 10 00 00 00 (disp32)
        assert_eq!(
            encode(&build(f, 32, RegSet::General, &ch).unwrap(), 32)[..2],
            [0x01, 0x83]
        );
    }

    #[test]
    fn bt_with_register_offset_stays_in_registers() {
        let f = forms(Class::Bit)
            .into_iter()
            .find(|f| f.code == Code::Bts_rm32_r32)
            .unwrap();
        assert!(!f.mem_ok);
    }

    #[test]
    fn shl_count_at_least_width_makes_cf_undefined() {
        use umbra_core::cpu::{CF, OF};
        let shl8 = Instruction::with2(Code::Shl_rm8_imm8, Register::AL, 8u32).unwrap();
        assert_ne!(undefined_flags(&shl8, 0) & CF, 0);
        let shl8_7 = Instruction::with2(Code::Shl_rm8_imm8, Register::AL, 7u32).unwrap();
        assert_eq!(undefined_flags(&shl8_7, 0) & CF, 0);
        assert_ne!(
            undefined_flags(&shl8_7, 0) & OF,
            0,
            "OF undefined for count > 1"
        );
        let shr_cl = Instruction::with2(Code::Shr_rm16_CL, Register::AX, Register::CL).unwrap();
        assert_ne!(undefined_flags(&shr_cl, 16) & CF, 0);
        assert_eq!(undefined_flags(&shr_cl, 15) & CF, 0);
    }

    #[test]
    fn a_whole_turn_through_cf_leaves_of_undefined() {
        use umbra_core::cpu::OF;
        for (code, count) in [
            (Code::Rcl_rm8_imm8, 9u32),
            (Code::Rcr_rm8_imm8, 0x12),
            (Code::Rcl_rm16_imm8, 0x31),
            (Code::Rcr_rm16_imm8, 0x91),
        ] {
            let reg = if count < 0x20 {
                Register::DL
            } else {
                Register::DX
            };
            let ins = Instruction::with2(code, reg, count).unwrap();
            assert_ne!(undefined_flags(&ins, 0) & OF, 0, "{code:?} by {count:#x}");
        }
        let rcl_cl = Instruction::with2(Code::Rcl_rm8_CL, Register::DL, Register::CL).unwrap();
        assert_ne!(undefined_flags(&rcl_cl, 18) & OF, 0);
        let rcl_1 = Instruction::with2(Code::Rcl_rm8_imm8, Register::DL, 0x21u32).unwrap();
        assert_eq!(undefined_flags(&rcl_1, 0) & OF, 0, "OF is defined for 1");
    }

    #[test]
    fn shld16_counts_fold_below_17() {
        assert_eq!(imm8(Code::Shld_rm16_r16_imm8, 17), 0);
        assert_eq!(imm8(Code::Shld_rm16_r16_imm8, 16), 16);
        assert_eq!(imm8(Code::Shld_rm32_r32_imm8, 31), 31);
    }
}
