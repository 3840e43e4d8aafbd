//! Guest blocks: what a translation is keyed by, and decoding a block's
//! instructions from guest memory.
//!
//! A block is a straight run of guest instructions inside one guest page:
//! decoding stops after a control transfer or an instruction that ends
//! blocks (`umbra_core::interp::fetch::ends_block`: anything that may
//! change what fetching or translation depends on), at the page end or the
//! CS limit, or at `MAX_INSNS`. So invalidation is per frame.

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};
use umbra_core::cpu::{attr, CpuState, SegReg};
use umbra_core::interp::{fetch, Handler, Table};
use umbra_core::mem::PAGE_SIZE;

/// Most guest instructions in one block.
pub const MAX_INSNS: usize = 48;

/// Mode bits of `BlockKey::mode`.
pub mod mode {
    /// 32-bit code (CS.D in protected mode).
    pub const CODE32: u32 = 1 << 0;
    /// CPL, two bits.
    pub const CPL_SHIFT: u32 = 1;
    /// 32-bit stack (SS.B).
    pub const STACK32: u32 = 1 << 3;
    /// CR0.PE.
    pub const PE: u32 = 1 << 4;
    /// Virtual-8086 mode.
    pub const V86: u32 = 1 << 5;
    /// Per segment register (ES, CS, SS, DS, FS, GS at bits 8..14): the
    /// segment is usable, present, readable, expand-up with a 4 GiB limit,
    /// so that a read through it needs no limit or rights check.
    pub const FLAT_READ_SHIFT: u32 = 8;
    /// Likewise for writes (a writable data segment).
    pub const FLAT_WRITE_SHIFT: u32 = 16;
    /// Per segment register (bits 24..30): its base is zero, so that an
    /// offset through it is the linear address.
    pub const BASE0_SHIFT: u32 = 24;
}

/// Everything that changes the translation of the code at one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// Guest physical (RAM offset) address of the first byte.
    pub phys: u32,
    /// Linear address of the first byte.
    pub lin: u32,
    /// CS base (EIP = lin - cs_base).
    pub cs_base: u32,
    /// `mode::*`.
    pub mode: u32,
    /// CS limit: the block was decoded, and its exits chained, against
    /// it (a CS reload with another limit must not run it).
    pub cs_limit: u32,
}

/// The segment allows reads / writes anywhere in 4 GiB without checks.
fn flat(s: &umbra_core::cpu::Segment, write: bool) -> bool {
    if s.unusable() || !s.present() || s.limit != u32::MAX {
        return false;
    }
    let a = s.attr;
    if a & attr::S == 0 {
        return false;
    }
    if a & attr::CODE != 0 {
        // Code segments are never writable; readable if R.
        return !write && a & attr::RW != 0;
    }
    // Data: expand-down segments have their own limit rule.
    a & attr::DC == 0 && (!write || a & attr::RW != 0)
}

/// The mode bits of the CPU state `cpu`.
///
/// At CPL 0 GS has no bits (its accesses take the slow path): a kernel
/// that leaves the interrupted program's GS loaded while it runs (Linux
/// i386 does, and never addresses through it) would otherwise have every
/// kernel block keyed twice, once per kind of GS user programs have
/// (none, or a TLS segment), and each lookup by address would alternate
/// between the two.
pub fn mode_of(cpu: &CpuState) -> u32 {
    let mut m = 0;
    if cpu.code32() {
        m |= mode::CODE32;
    }
    m |= (cpu.cpl() as u32) << mode::CPL_SHIFT;
    if cpu.stack32() {
        m |= mode::STACK32;
    }
    if cpu.protected() {
        m |= mode::PE;
        if cpu.v86() {
            m |= mode::V86;
        } else {
            let kernel = cpu.cpl() == 0;
            for (i, s) in cpu.seg.iter().enumerate() {
                if kernel && i == SegReg::Gs as usize {
                    continue;
                }
                if flat(s, false) {
                    m |= 1 << (mode::FLAT_READ_SHIFT + i as u32);
                }
                if flat(s, true) {
                    m |= 1 << (mode::FLAT_WRITE_SHIFT + i as u32);
                }
                if s.base == 0 {
                    m |= 1 << (mode::BASE0_SHIFT + i as u32);
                }
            }
        }
    }
    m
}

/// Whether segment `s` is flat for reads (or writes) under `mode`.
pub fn seg_flat(mode: u32, s: SegReg, write: bool) -> bool {
    let shift = if write {
        mode::FLAT_WRITE_SHIFT
    } else {
        mode::FLAT_READ_SHIFT
    };
    mode & (1 << (shift + s as u32)) != 0
}

/// Whether segment `s` has base zero under `mode`.
pub fn seg_base0(mode: u32, s: SegReg) -> bool {
    mode & (1 << (mode::BASE0_SHIFT + s as u32)) != 0
}

/// One decoded guest instruction of a block, as monitor routines see it.
pub struct InsnMeta {
    pub ins: Instruction,
    /// The interpreter's handler (`None`: #UD).
    pub handler: Option<Handler>,
    /// EIP of this instruction.
    pub eip: u32,
    /// EIP of the next one (16-bit wrap applied).
    pub next_eip: u32,
    /// Instructions from this one to the end of the block, this included.
    pub rem: u32,
    /// It ends blocks (`fetch::ends_block`): after it runs in a monitor
    /// routine, control goes back to the dispatcher, which re-checks
    /// events and the mode.
    pub ends: bool,
}

/// The guest side of a block: its instructions and the bytes they were
/// decoded from.
pub struct GuestBlock {
    pub insns: Vec<InsnMeta>,
    /// The instruction bytes in order; with `cross`, the last
    /// instruction's bytes run on from the next linear page's frame.
    pub bytes: Vec<u8>,
    /// The last instruction crosses into the next linear page, which was
    /// mapped to this RAM offset (page aligned) when the block was
    /// decoded: generated code checks that mapping before it
    /// (`codegen::emit_cross_guard`), and the block is on both frames.
    pub cross: Option<u32>,
    /// The block ends with STI and the instruction in its interrupt
    /// shadow (`sti_shadow_ok`): STI runs inline, no event is checked
    /// between the two, as the shadow requires (SDM Vol. 2B STI), and
    /// after them the block leaves for the dispatcher if an event is
    /// deliverable (`helpers::event_pending`), else falls through.
    pub sti_shadow: bool,
}

/// An instruction that may follow an inline STI in its block: it falls
/// through (no control transfer, no REP iterations to come back to) and
/// does not end blocks itself.
fn sti_shadow_ok(ins: &Instruction) -> bool {
    ins.flow_control() == iced_x86::FlowControl::Next
        && !fetch::ends_block(ins)
        && !ins.has_rep_prefix()
        && !ins.has_repne_prefix()
}

/// Where the next linear page's bytes come from for an instruction that
/// crosses the page end: the RAM offset of that page's frame and its
/// first bytes (at least `MAX_INSN_LEN - 1` of them).
pub struct NextPage<'a> {
    pub ram: u32,
    pub bytes: &'a [u8],
}

/// Decode the block starting at `eip` (linear `lin`) from `code`, the
/// bytes from there to the end of its page. An instruction that runs
/// onto the next page ends the block, and is in it only when `next` gives
/// that page's bytes. `None` if not even the first instruction fits (it
/// crosses the page without `next` or the CS limit, or is invalid): the
/// dispatcher then lets the interpreter fetch it, which takes the fault
/// the architecture says.
pub fn decode(
    table: &Table,
    code: &[u8],
    eip: u32,
    lin: u32,
    key_mode: u32,
    cs_limit: u32,
    next: Option<NextPage>,
) -> Option<GuestBlock> {
    let code32 = key_mode & mode::CODE32 != 0;
    // STI cannot fault at CPL 0 outside virtual-8086 mode (CPL <= IOPL;
    // real mode has CPL 0): it may run inline.
    let sti_inline = (key_mode >> mode::CPL_SHIFT) & 3 == 0 && key_mode & mode::V86 == 0;
    let mut sti_shadow = false;
    let to_page = (PAGE_SIZE - (lin as u64 & (PAGE_SIZE - 1))) as usize;
    let to_limit = (cs_limit as u64 + 1).saturating_sub(eip as u64) as usize;
    let avail = to_page.min(to_limit).min(code.len());
    let bitness = if code32 { 32 } else { 16 };
    let mut d = Decoder::with_ip(bitness, &code[..avail], eip as u64, DecoderOptions::NONE);
    let mut insns: Vec<InsnMeta> = Vec::new();
    let mut used = 0;
    let mut bytes = Vec::new();
    let mut cross = None;
    let meta = |ins: Instruction| {
        let next = ins.next_ip32();
        let wraps = !code32 && next > 0xFFFF;
        let handler = table.lookup(&ins);
        let ends = fetch::ends_block(&ins);
        let last = handler.is_none() || wraps || ends;
        let m = InsnMeta {
            ins,
            handler,
            eip: ins.ip32(),
            next_eip: if code32 { next } else { next & 0xFFFF },
            rem: 0,
            ends,
        };
        (m, last)
    };
    while insns.len() < MAX_INSNS {
        let ins = d.decode();
        if d.last_error() != DecoderError::None || ins.code() == iced_x86::Code::INVALID {
            // Out of bytes at the page end (not the CS limit): the
            // instruction may be completed from the next page.
            let at_page_end = d.last_error() == DecoderError::NoMoreBytes && avail == to_page;
            if let (true, Some(np)) = (at_page_end, &next) {
                let mut buf = [0u8; fetch::MAX_INSN_LEN];
                let head = to_page - used;
                let room = to_limit.saturating_sub(used).min(fetch::MAX_INSN_LEN);
                let tail = room.saturating_sub(head).min(np.bytes.len());
                buf[..head].copy_from_slice(&code[used..to_page]);
                buf[head..head + tail].copy_from_slice(&np.bytes[..tail]);
                let ip = eip.wrapping_add(used as u32) as u64;
                let mut d2 =
                    Decoder::with_ip(bitness, &buf[..head + tail], ip, DecoderOptions::NONE);
                let ins = d2.decode();
                if d2.last_error() == DecoderError::None
                    && ins.code() != iced_x86::Code::INVALID
                    && ins.len() > head
                {
                    bytes.extend_from_slice(&code[..used]);
                    bytes.extend_from_slice(&buf[..ins.len()]);
                    insns.push(meta(ins).0);
                    cross = Some(np.ram & !0xFFF);
                }
            }
            break;
        }
        used += ins.len();
        let (m, last) = meta(ins);
        insns.push(m);
        if sti_inline && ins.mnemonic() == iced_x86::Mnemonic::Sti {
            // The instruction in its shadow joins the block if it can;
            // either way the block ends.
            let shadowed = d.decode();
            let (sm, _) = meta(shadowed);
            if d.last_error() == DecoderError::None
                && shadowed.code() != iced_x86::Code::INVALID
                && sm.handler.is_some()
                && sm.next_eip == shadowed.next_ip32()
                && sti_shadow_ok(&shadowed)
            {
                used += shadowed.len();
                insns.push(sm);
                sti_shadow = true;
            }
            break;
        }
        if last {
            break;
        }
    }
    if insns.is_empty() {
        return None;
    }
    if cross.is_none() {
        bytes.extend_from_slice(&code[..used]);
    }
    let n = insns.len() as u32;
    for (i, m) in insns.iter_mut().enumerate() {
        m.rem = n - i as u32;
    }
    Some(GuestBlock {
        insns,
        bytes,
        cross,
        sti_shadow,
    })
}
