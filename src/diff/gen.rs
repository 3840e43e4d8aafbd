//! Random programs: proptest strategies that produce a `Case` (mode, a list
//! of `Item`s, initial registers, data, page attributes), and the emitter
//! that turns a case into a `Program`.
//!
//! An item is the unit that shrinking removes: one instruction, or a short
//! self-contained group that keeps its own preconditions (a shift by CL
//! with the `mov cl, n` before it; a string instruction with ESI/EDI/ECX
//! set; a bounded loop; a call to a local function; a forward jump). So
//! any sub-list of items is still a program that ends with HLT, and
//! proptest's shrinking of the list (and of each item's numbers) finds a
//! minimal reproducer.
//!
//! In run-to-completion mode the emitter puts a sanitiser after every
//! instruction that leaves flags undefined (`pushf; and [esp], ~undef;
//! popf`) so that undefined bits never reach compared state; lockstep
//! compares EFLAGS masked per instruction instead.

use std::sync::Arc;

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Instruction, InstructionBlock, Mnemonic, OpKind,
    Register, RepPrefixKind,
};
use proptest::prelude::*;
use umbra_core::cpu as f;

use super::forms::{self, Choices, Class, Form, RegSet};
use super::program::{layout, pte, Mode, Program};

/// One unit of a generated program.
#[derive(Clone, Debug)]
pub enum Item {
    /// One instruction without control flow.
    Insn(Instruction),
    /// `mov cl, count` then a shift/rotate that reads CL.
    ShiftCl { count: u8, ins: Instruction },
    /// A division, after an optional instruction that prepares the high
    /// half of the dividend (`xor edx, edx`, `cdq`, ...); without it #DE is
    /// likely.
    Div {
        prep: Option<Instruction>,
        ins: Instruction,
    },
    /// Set ESI, EDI (data-area offsets), ECX (bounded count) and DF, then
    /// one string instruction, maybe with a REP prefix.
    Str {
        esi: u32,
        edi: u32,
        ecx: u32,
        df: bool,
        ins: Instruction,
    },
    /// A forward conditional or unconditional jump over the next `skip`
    /// items (or to the final HLT).
    Jump { mnemonic: Mnemonic, skip: u8 },
    /// `mov (e)cx, count; L: body; loopcc L` with 1 <= count <= 8.
    Loop {
        mnemonic: Mnemonic,
        count: u8,
        body: Vec<Instruction>,
    },
    /// `[push imm;] call F; jmp E; F: body; ret [imm]; E:`.
    Call {
        body: Vec<Instruction>,
        ret_imm: bool,
    },
    /// `push imm; popf`: loads the status flags, DF, IOPL, NT, AC and ID.
    Popf { value: u32 },
    /// `pushad; body; popad` (or the 16-bit forms).
    Pusha { body: Vec<Instruction> },
    /// `enter size, 0; body; leave`.
    Enter { size: u16, body: Vec<Instruction> },
}

/// A generated test case, before encoding.
#[derive(Clone, Debug)]
pub struct Case {
    pub mode: Mode,
    pub items: Vec<Item>,
    pub gpr: [u32; 8],
    pub eflags: u32,
    /// Seed of the data area's contents.
    pub data_seed: u64,
    pub data_pages: [u32; 3],
    pub wp: bool,
}

/// Generator knobs.
#[derive(Clone, Copy, Debug)]
pub struct GenConfig {
    /// Items per program (each one to a few instructions).
    pub min_items: usize,
    pub max_items: usize,
    /// Put sanitisers after instructions with undefined flags.
    pub sanitize: bool,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            min_items: 5,
            max_items: 50,
            sanitize: true,
        }
    }
}

/// Failure to encode a generated case (a generator bug, reported as such).
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("cannot encode the generated program: {0}")]
    Encode(String),
}

impl Case {
    /// Encode the case into a program.
    pub fn assemble(&self, cfg: &GenConfig) -> Result<Program, GenError> {
        let mut em = Emitter::new(self.mode.bitness(), cfg.sanitize);
        let end = em.label();
        let starts: Vec<Label> = (0..self.items.len()).map(|_| em.label()).collect();
        for (i, item) in self.items.iter().enumerate() {
            em.bind(starts[i]);
            let target = |skip: u8| starts.get(i + 1 + skip as usize).copied().unwrap_or(end);
            em.item(item, &target);
        }
        em.bind(end);
        em.push(bare(Code::Hlt));
        let insns = em.out.len();
        let code = em.encode(self.mode.entry_eip() as u64)?;
        let mut p = Program {
            mode: self.mode,
            code,
            gpr: self.gpr,
            eflags: self.eflags,
            data: Vec::new(),
            data_pages: self.data_pages,
            wp: self.wp,
            gate16: false,
            data_seed: None,
            insns,
        };
        p.fill_data(self.data_seed);
        Ok(p)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Label(usize);

/// Accumulates instructions with virtual IPs and resolves labels; the
/// block encoder then lays them out at the real address.
struct Emitter {
    bitness: u32,
    sanitize: bool,
    out: Vec<Instruction>,
    /// Label -> index of the instruction it is bound to.
    labels: Vec<Option<usize>>,
    /// Labels waiting for the next instruction.
    pending: Vec<Label>,
    /// (instruction index, target label) of every branch.
    fixups: Vec<(usize, Label)>,
}

/// An instruction with `code` and no operands set yet.
fn bare(code: Code) -> Instruction {
    let mut i = Instruction::default();
    i.set_code(code);
    i
}

/// Virtual IP of instruction `i` (unique, fits 16-bit code).
fn vip(i: usize) -> u64 {
    2 * i as u64
}

impl Emitter {
    fn new(bitness: u32, sanitize: bool) -> Self {
        Emitter {
            bitness,
            sanitize,
            out: Vec::new(),
            labels: Vec::new(),
            pending: Vec::new(),
            fixups: Vec::new(),
        }
    }

    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, l: Label) {
        self.pending.push(l);
    }

    fn raw(&mut self, mut ins: Instruction) {
        let i = self.out.len();
        for l in self.pending.drain(..) {
            self.labels[l.0] = Some(i);
        }
        ins.set_ip(vip(i));
        self.out.push(ins);
    }

    /// Emit `ins`, followed by a sanitiser when it leaves flags undefined.
    fn push(&mut self, ins: Instruction) {
        self.push_cl(ins, 0);
    }

    fn push_cl(&mut self, ins: Instruction, cl: u8) {
        let undef = forms::undefined_flags(&ins, cl);
        self.raw(ins);
        if self.sanitize && undef != 0 {
            self.sanitizer(undef);
        }
    }

    /// `pushf; and [esp], ~undef; popf` in the code's operand size.
    fn sanitizer(&mut self, undef: u32) {
        let mut and = if self.bitness == 32 {
            self.raw(bare(Code::Pushfd));
            let mut a = bare(Code::And_rm32_imm32);
            a.set_op1_kind(OpKind::Immediate32);
            a.set_immediate32(!undef);
            a
        } else {
            self.raw(bare(Code::Pushfw));
            let mut a = bare(Code::And_rm16_imm16);
            a.set_op1_kind(OpKind::Immediate16);
            a.set_immediate16(!undef as u16);
            a
        };
        // [esp]: SP's upper half is 0 in 16-bit modes, so this is SS:SP.
        and.set_op0_kind(OpKind::Memory);
        and.set_memory_base(Register::ESP);
        and.set_memory_index(Register::None);
        and.set_memory_index_scale(1);
        and.set_memory_displ_size(0);
        self.raw(and);
        self.raw(bare(if self.bitness == 32 {
            Code::Popfd
        } else {
            Code::Popfw
        }));
    }

    fn branch(&mut self, code: Code, target: Label) {
        let mut ins = bare(code);
        ins.set_op0_kind(if self.bitness == 32 {
            OpKind::NearBranch32
        } else {
            OpKind::NearBranch16
        });
        self.fixups.push((self.out.len(), target));
        self.raw(ins);
    }

    fn bits_code(&self, c16: Code, c32: Code) -> Code {
        if self.bitness == 32 {
            c32
        } else {
            c16
        }
    }

    fn mov_imm(&mut self, r32: Register, v: u32) {
        let ins = Instruction::with2(Code::Mov_r32_imm32, r32, v).expect("mov r32, imm32");
        self.raw(ins);
    }

    fn item(&mut self, item: &Item, target: &dyn Fn(u8) -> Label) {
        match item {
            Item::Insn(ins) => self.push(*ins),
            Item::ShiftCl { count, ins } => {
                let mov = Instruction::with2(Code::Mov_r8_imm8, Register::CL, *count as u32)
                    .expect("mov cl, imm8");
                self.raw(mov);
                self.push_cl(*ins, *count);
            }
            Item::Div { prep, ins } => {
                if let Some(p) = prep {
                    self.push(*p);
                }
                self.push(*ins);
            }
            Item::Str {
                esi,
                edi,
                ecx,
                df,
                ins,
            } => {
                self.mov_imm(Register::ESI, *esi);
                self.mov_imm(Register::EDI, *edi);
                self.mov_imm(Register::ECX, *ecx);
                self.raw(bare(if *df { Code::Std } else { Code::Cld }));
                self.push(*ins);
            }
            Item::Jump { mnemonic, skip } => {
                let code = branch_code(*mnemonic, self.bitness, self.bitness);
                self.branch(code, target(*skip));
            }
            Item::Loop {
                mnemonic,
                count,
                body,
            } => {
                // The loop counts in CX with 16-bit addressing, ECX with 32.
                self.mov_imm(Register::ECX, *count as u32);
                let top = self.label();
                self.bind(top);
                for ins in body {
                    self.push(*ins);
                }
                if body.is_empty() {
                    self.raw(bare(Code::Nopd));
                }
                let code = branch_code(*mnemonic, self.bitness, self.bitness);
                self.branch(code, top);
            }
            Item::Call { body, ret_imm } => {
                let func = self.label();
                let end = self.label();
                if *ret_imm {
                    let push = self.bits_code(Code::Push_imm16, Code::Pushd_imm32);
                    let mut p = bare(push);
                    if self.bitness == 32 {
                        p.set_op0_kind(OpKind::Immediate32);
                        p.set_immediate32(0x5A5A_5A5A);
                    } else {
                        p.set_op0_kind(OpKind::Immediate16);
                        p.set_immediate16(0x5A5A);
                    }
                    self.raw(p);
                }
                self.branch(self.bits_code(Code::Call_rel16, Code::Call_rel32_32), func);
                self.branch(self.bits_code(Code::Jmp_rel16, Code::Jmp_rel32_32), end);
                self.bind(func);
                for ins in body {
                    self.push(*ins);
                }
                if *ret_imm {
                    let mut r = bare(self.bits_code(Code::Retnw_imm16, Code::Retnd_imm16));
                    r.set_op0_kind(OpKind::Immediate16);
                    r.set_immediate16((self.bitness / 8) as u16);
                    self.raw(r);
                } else {
                    self.raw(bare(self.bits_code(Code::Retnw, Code::Retnd)));
                }
                self.bind(end);
            }
            Item::Popf { value } => {
                let v = (value & POPF_BITS) | f::FIXED1;
                if self.bitness == 32 {
                    let mut p = bare(Code::Pushd_imm32);
                    p.set_op0_kind(OpKind::Immediate32);
                    p.set_immediate32(v);
                    self.raw(p);
                    self.raw(bare(Code::Popfd));
                } else {
                    let mut p = bare(Code::Push_imm16);
                    p.set_op0_kind(OpKind::Immediate16);
                    p.set_immediate16(v as u16);
                    self.raw(p);
                    self.raw(bare(Code::Popfw));
                }
            }
            Item::Pusha { body } => {
                self.raw(bare(self.bits_code(Code::Pushaw, Code::Pushad)));
                for ins in body {
                    self.push(*ins);
                }
                self.raw(bare(self.bits_code(Code::Popaw, Code::Popad)));
            }
            Item::Enter { size, body } => {
                let mut e = bare(self.bits_code(Code::Enterw_imm16_imm8, Code::Enterd_imm16_imm8));
                e.set_op0_kind(OpKind::Immediate16);
                e.set_immediate16(*size);
                e.set_op1_kind(OpKind::Immediate8_2nd);
                e.set_immediate8_2nd(0);
                self.raw(e);
                for ins in body {
                    self.push(*ins);
                }
                self.raw(bare(self.bits_code(Code::Leavew, Code::Leaved)));
            }
        }
    }

    /// Resolve branches and lay the code out at `ip`.
    fn encode(mut self, ip: u64) -> Result<Vec<u8>, GenError> {
        for &(i, l) in &self.fixups {
            let t =
                self.labels[l.0].ok_or_else(|| GenError::Encode(format!("unbound label {l:?}")))?;
            let ins = &mut self.out[i];
            if self.bitness == 32 {
                ins.set_near_branch32(vip(t) as u32);
            } else {
                ins.set_near_branch16(vip(t) as u16);
            }
        }
        let block = InstructionBlock::new(&self.out, ip);
        BlockEncoder::encode(self.bitness, block, BlockEncoderOptions::NONE)
            .map(|r| r.code_buffer)
            .map_err(|e| GenError::Encode(e.to_string()))
    }
}

/// EFLAGS bits a generated POPF loads (IF and TF stay clear: no
/// interrupts, no single-step traps).
pub const POPF_BITS: u32 = f::STATUS | f::DF | f::IOPL | f::NT | f::ID;

/// The rel8/rel16/rel32 form of a branch mnemonic for code of `bitness`;
/// LOOP/JCXZ count with the code's address size.
fn branch_code(m: Mnemonic, bitness: u32, addr: u32) -> Code {
    use iced_x86::OpCodeOperandKind as K;
    let want = if bitness == 32 { K::br32_1 } else { K::br16_1 };
    // JCXZ/JECXZ name their own address size.
    let any_addr = matches!(m, Mnemonic::Jcxz | Mnemonic::Jecxz);
    Code::values()
        .find(|c| {
            let op = c.op_code();
            c.mnemonic() == m
                && op.op_count() >= 1
                && op.op_kind(0) == want
                && (any_addr || op.address_size() == 0 || op.address_size() == addr)
        })
        .unwrap_or(if bitness == 32 {
            Code::Jmp_rel8_32
        } else {
            Code::Jmp_rel8_16
        })
}

/// Conditional and unconditional forward jumps.
const JUMPS: &[Mnemonic] = &[
    Mnemonic::Jmp,
    Mnemonic::Jo,
    Mnemonic::Jno,
    Mnemonic::Jb,
    Mnemonic::Jae,
    Mnemonic::Je,
    Mnemonic::Jne,
    Mnemonic::Jbe,
    Mnemonic::Ja,
    Mnemonic::Js,
    Mnemonic::Jns,
    Mnemonic::Jp,
    Mnemonic::Jnp,
    Mnemonic::Jl,
    Mnemonic::Jge,
    Mnemonic::Jle,
    Mnemonic::Jg,
    Mnemonic::Jcxz,
    Mnemonic::Jecxz,
];

/// Classes of plain instructions.
const PLAIN: &[Class] = &[
    Class::Alu,
    Class::Shift,
    Class::Mul,
    Class::Bcd,
    Class::Bit,
    Class::CondMove,
    Class::Exchange,
    Class::Move,
    Class::Stack,
    Class::X87,
];

/// Displacements from the data pointer: mostly its own page, sometimes
/// anywhere in the 4-page data area (the pages paging mode varies), and
/// sometimes straddling a page boundary.
fn disp() -> impl Strategy<Value = i32> {
    let lo = -(layout::DATA_PTR as i32);
    let page0 = 0x1000 - layout::DATA_PTR as i32;
    let all = (layout::DATA_SIZE - layout::DATA_PTR) as i32 - 8;
    prop_oneof![
        6 => lo..page0 - 8,
        2 => lo..all,
        1 => (1..4i32).prop_flat_map(move |p| (p * 0x1000 - layout::DATA_PTR as i32 - 7)
            ..(p * 0x1000 - layout::DATA_PTR as i32)),
    ]
}

fn choices() -> impl Strategy<Value = Choices> {
    (
        any::<[u8; 3]>(),
        prop::bool::weighted(0.35),
        disp(),
        prop::bool::weighted(0.3),
        prop_oneof![3 => any::<u32>(), 1 => 0u32..40],
    )
        .prop_map(|(regs, mem, disp, addr32, imm)| Choices {
            regs,
            mem,
            disp,
            addr32,
            imm,
        })
}

/// The forms of the classes, shared by all strategies of one generator.
#[derive(Clone)]
pub struct FormTable {
    /// Per class: forms that do not read CL.
    plain: Vec<(Class, Arc<Vec<Form>>)>,
    /// Shifts that read CL.
    by_cl: Arc<Vec<Form>>,
    div: Arc<Vec<Form>>,
}

impl Default for FormTable {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl FormTable {
    /// The forms of every class but those in `exclude` (at least one
    /// class of plain instructions must remain).
    pub fn new(exclude: &[Class]) -> Self {
        let keep = |c: &Class| !exclude.contains(c);
        let plain = PLAIN
            .iter()
            .filter(|c| keep(c))
            .map(|&c| {
                let v: Vec<Form> = forms::forms(c).into_iter().filter(|f| !f.by_cl).collect();
                (c, Arc::new(v))
            })
            .collect();
        let by_cl = forms::forms(Class::Shift)
            .into_iter()
            .filter(|f| f.by_cl && keep(&Class::Shift))
            .collect();
        let div = forms::forms(Class::Div)
            .into_iter()
            .filter(|_| keep(&Class::Div))
            .collect();
        FormTable {
            plain,
            by_cl: Arc::new(by_cl),
            div: Arc::new(div),
        }
    }

    /// One instruction from `forms`.
    fn insn_from(
        forms: Arc<Vec<Form>>,
        bitness: u32,
        set: RegSet,
    ) -> impl Strategy<Value = Instruction> {
        let n = forms.len().max(1);
        (0..n, choices()).prop_filter_map("form needs other operands", move |(i, ch)| {
            forms
                .get(i)
                .and_then(|&f| forms::build(f, bitness, set, &ch))
        })
    }

    /// One plain instruction of any class (stack pushes and pops only if
    /// `stack`).
    pub fn plain(&self, bitness: u32, set: RegSet, stack: bool) -> BoxedStrategy<Instruction> {
        let weight = |c: Class| match c {
            Class::Alu | Class::Move => 4,
            Class::Shift | Class::Bit | Class::CondMove => 3,
            _ => 2,
        };
        let arms: Vec<(u32, BoxedStrategy<Instruction>)> = self
            .plain
            .iter()
            .filter(|(c, _)| stack || *c != Class::Stack)
            .map(|(c, fs)| {
                (
                    weight(*c),
                    Self::insn_from(fs.clone(), bitness, set).boxed(),
                )
            })
            .collect();
        proptest::strategy::Union::new_weighted(arms).boxed()
    }

    /// Up to three plain instructions for a loop, call, PUSHA or ENTER
    /// body; pushes and pops only where the body's end restores ESP.
    fn body(
        &self,
        bitness: u32,
        set: RegSet,
        stack: bool,
    ) -> impl Strategy<Value = Vec<Instruction>> {
        prop::collection::vec(self.plain(bitness, set, stack), 0..4)
    }

    /// One item for code of `bitness`.
    pub fn item(&self, mode: Mode) -> BoxedStrategy<Item> {
        let bits = mode.bitness();
        let shift_cl = (
            Self::insn_from(self.by_cl.clone(), bits, RegSet::General),
            prop_oneof![3 => 0u8..34, 1 => any::<u8>()],
        )
            .prop_map(|(ins, count)| Item::ShiftCl {
                count: forms::imm8(ins.code(), count as u32),
                ins,
            });
        let div = (
            Self::insn_from(self.div.clone(), bits, RegSet::General),
            prop_oneof![1 => Just(None), 9 => any::<bool>().prop_map(Some)],
        )
            .prop_map(|(ins, prep)| Item::Div {
                prep: prep.map(|signed| div_prep(&ins, signed)),
                ins,
            });
        let string = (
            string_insn(bits),
            str_offset(),
            str_offset(),
            0u32..17,
            any::<bool>(),
        )
            .prop_map(move |(ins, esi, edi, ecx, df)| Item::Str {
                esi: esi + mode.data_offset(),
                edi: edi + mode.data_offset(),
                ecx,
                df,
                ins,
            });
        let jump = (prop::sample::select(JUMPS), 0u8..4)
            .prop_map(|(mnemonic, skip)| Item::Jump { mnemonic, skip });
        let looping = (
            prop::sample::select(&[Mnemonic::Loop, Mnemonic::Loope, Mnemonic::Loopne][..]),
            1u8..9,
            self.body(bits, RegSet::NoCounter, true),
        )
            .prop_map(|(mnemonic, count, body)| Item::Loop {
                mnemonic,
                count,
                body,
            });
        let call = (self.body(bits, RegSet::General, false), any::<bool>())
            .prop_map(|(body, ret_imm)| Item::Call { body, ret_imm });
        let popf = any::<u32>().prop_map(|value| Item::Popf { value });
        let pusha = self
            .body(bits, RegSet::General, false)
            .prop_map(|body| Item::Pusha { body });
        let enter = (0u16..64, self.body(bits, RegSet::NoFrame, true))
            .prop_map(|(size, body)| Item::Enter { size, body });
        let mut arms: Vec<(u32, BoxedStrategy<Item>)> = vec![
            (
                30,
                self.plain(bits, RegSet::General, true)
                    .prop_map(Item::Insn)
                    .boxed(),
            ),
            (3, string.boxed()),
            (3, jump.boxed()),
            (2, looping.boxed()),
            (1, call.boxed()),
            (1, popf.boxed()),
            (1, pusha.boxed()),
            (1, enter.boxed()),
        ];
        if !self.by_cl.is_empty() {
            arms.push((3, shift_cl.boxed()));
        }
        if !self.div.is_empty() {
            arms.push((1, div.boxed()));
        }
        proptest::strategy::Union::new_weighted(arms).boxed()
    }

    /// A whole test case in `mode`.
    pub fn case(&self, mode: Mode, cfg: &GenConfig) -> BoxedStrategy<Case> {
        let pages = if mode == Mode::Paging {
            prop::array::uniform3(prop_oneof![
                3 => Just(pte::P | pte::RW),
                1 => (0..8u32).prop_map(|v| v & pte::VARIABLE),
            ])
            .boxed()
        } else {
            Just([pte::P | pte::RW; 3]).boxed()
        };
        (
            prop::collection::vec(self.item(mode), cfg.min_items..=cfg.max_items),
            any::<[u32; 8]>(),
            any::<u32>(),
            any::<u64>(),
            pages,
            any::<bool>(),
        )
            .prop_map(
                move |(items, gpr, eflags, data_seed, data_pages, wp)| Case {
                    mode,
                    items,
                    gpr,
                    eflags: eflags & super::program::EFLAGS_PROGRAM,
                    data_seed,
                    data_pages,
                    wp,
                },
            )
            .boxed()
    }
}

/// The instruction that makes the dividend of `div` sensible: clear or
/// sign-extend its high half.
fn div_prep(div: &Instruction, signed: bool) -> Instruction {
    let size = div.op_code().operand_size();
    let code = match (size, signed) {
        (16, false) => return xor_self(Code::Xor_r16_rm16, Register::DX),
        (32, false) => return xor_self(Code::Xor_r32_rm32, Register::EDX),
        (16, true) => Code::Cwd,
        (32, true) => Code::Cdq,
        (_, false) => return xor_self(Code::Xor_r8_rm8, Register::AH),
        (_, true) => Code::Cbw,
    };
    bare(code)
}

fn xor_self(code: Code, r: Register) -> Instruction {
    Instruction::with2(code, r, r).expect("xor r, r")
}

/// ESI/EDI for string items: anywhere in data page 0 with room for 16
/// dwords either way.
fn str_offset() -> impl Strategy<Value = u32> {
    0x40u32..0xFC0
}

/// MOVS/CMPS/STOS/LODS/SCAS, byte/word/dword, with or without REP, with
/// the code's address size.
fn string_insn(bitness: u32) -> impl Strategy<Value = Instruction> {
    (0usize..15, 0usize..3).prop_map(move |(op, rep)| {
        let a = bitness;
        let rep = [
            RepPrefixKind::None,
            RepPrefixKind::Repe,
            RepPrefixKind::Repne,
        ][rep];
        // MOVS/STOS/LODS take REP (encoded as REPE); CMPS/SCAS both kinds.
        let plain_rep = if rep == RepPrefixKind::None {
            RepPrefixKind::None
        } else {
            RepPrefixKind::Repe
        };
        let ds = Register::None;
        let r = match op {
            0 => Instruction::with_movsb(a, ds, plain_rep),
            1 => Instruction::with_movsw(a, ds, plain_rep),
            2 => Instruction::with_movsd(a, ds, plain_rep),
            3 => Instruction::with_stosb(a, plain_rep),
            4 => Instruction::with_stosw(a, plain_rep),
            5 => Instruction::with_stosd(a, plain_rep),
            6 => Instruction::with_lodsb(a, ds, plain_rep),
            7 => Instruction::with_lodsw(a, ds, plain_rep),
            8 => Instruction::with_lodsd(a, ds, plain_rep),
            9 => Instruction::with_cmpsb(a, ds, rep),
            10 => Instruction::with_cmpsw(a, ds, rep),
            11 => Instruction::with_cmpsd(a, ds, rep),
            12 => Instruction::with_scasb(a, rep),
            13 => Instruction::with_scasw(a, rep),
            _ => Instruction::with_scasd(a, rep),
        };
        r.expect("string instruction")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::Decoder;
    use proptest::test_runner::TestRunner;

    fn decode_all(p: &Program) -> Vec<Instruction> {
        let mut d = Decoder::with_ip(
            p.mode.bitness(),
            &p.code,
            p.mode.entry_eip() as u64,
            iced_x86::DecoderOptions::NONE,
        );
        let mut v = Vec::new();
        while d.can_decode() {
            v.push(d.decode());
        }
        v
    }

    #[test]
    fn generated_programs_decode_and_end_with_hlt() {
        let table = FormTable::default();
        let mut runner = TestRunner::deterministic();
        for mode in Mode::ALL {
            let s = table.case(mode, &GenConfig::default());
            for _ in 0..30 {
                let case = s.new_tree(&mut runner).unwrap().current();
                let p = case.assemble(&GenConfig::default()).unwrap();
                let insns = decode_all(&p);
                assert!(insns.iter().all(|i| !i.is_invalid()), "{}", p.listing());
                assert_eq!(insns.last().unwrap().code(), Code::Hlt);
            }
        }
    }

    #[test]
    fn shld16_by_cl_counts_stay_defined() {
        let table = FormTable::default();
        let mut runner = TestRunner::deterministic();
        let s = table.item(Mode::Real);
        let mut seen = 0;
        for _ in 0..4000 {
            if let Item::ShiftCl { count, ins } = s.new_tree(&mut runner).unwrap().current() {
                let m = ins.mnemonic();
                if matches!(m, Mnemonic::Shld | Mnemonic::Shrd)
                    && ins.op_code().operand_size() == 16
                {
                    seen += 1;
                    assert!(count & 0x1F <= 16, "{m:?} count {count}");
                }
            }
        }
        assert!(seen > 0);
    }

    #[test]
    fn sanitizer_follows_undefined_flags() {
        // mul ecx leaves SF, ZF, AF, PF undefined (SDM Vol. 2B MUL).
        let mul = Instruction::with1(Code::Mul_rm32, Register::ECX).unwrap();
        let case = Case {
            mode: Mode::Prot32,
            items: vec![Item::Insn(mul)],
            gpr: [0; 8],
            eflags: 0,
            data_seed: 0,
            data_pages: [3; 3],
            wp: true,
        };
        let p = case.assemble(&GenConfig::default()).unwrap();
        let insns = decode_all(&p);
        let codes: Vec<Code> = insns.iter().map(|i| i.code()).collect();
        assert_eq!(
            codes,
            [
                Code::Mul_rm32,
                Code::Pushfd,
                Code::And_rm32_imm32,
                Code::Popfd,
                Code::Hlt
            ]
        );
        let undef = f::SF | f::ZF | f::AF | f::PF;
        assert_eq!(insns[2].immediate32(), !undef);
        let no_sanitize = GenConfig {
            sanitize: false,
            ..GenConfig::default()
        };
        assert_eq!(decode_all(&case.assemble(&no_sanitize).unwrap()).len(), 2);
    }

    #[test]
    fn forward_jump_lands_on_the_item_after_the_skipped_ones() {
        let nop = bare(Code::Nopw);
        let case = Case {
            mode: Mode::Real,
            items: vec![
                Item::Jump {
                    mnemonic: Mnemonic::Jmp,
                    skip: 1,
                },
                Item::Insn(nop),
                Item::Insn(bare(Code::Cmc)),
            ],
            gpr: [0; 8],
            eflags: 0,
            data_seed: 0,
            data_pages: [3; 3],
            wp: true,
        };
        let p = case.assemble(&GenConfig::default()).unwrap();
        // jmp short +1 (over the one-byte NOP) lands on CMC at offset 3.
        assert_eq!(p.code, [0xEB, 0x01, 0x90, 0xF5, 0xF4]);
    }

    #[test]
    fn loop_branches_back_to_its_body() {
        let inc = Instruction::with1(Code::Inc_r32, Register::EAX).unwrap();
        let case = Case {
            mode: Mode::Prot32,
            items: vec![Item::Loop {
                mnemonic: Mnemonic::Loop,
                count: 3,
                body: vec![inc],
            }],
            gpr: [0; 8],
            eflags: 0,
            data_seed: 0,
            data_pages: [3; 3],
            wp: true,
        };
        let p = case.assemble(&GenConfig::default()).unwrap();
        // mov ecx, 3; inc eax; loop -3; hlt
        assert_eq!(p.code, [0xB9, 3, 0, 0, 0, 0x40, 0xE2, 0xFD, 0xF4]);
    }
}
