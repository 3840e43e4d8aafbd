//! State comparison between two engines' `Vm`s and the divergence report.
//!
//! Compared: GPRs, EIP, EFLAGS (minus the bits the last instruction left
//! undefined), the six segment registers with their descriptor caches,
//! CR0/CR2/CR3/CR4, how the run ended, and the memory a program can touch:
//! the IVT/GDT/IDT/stub pages, the stack page, the code and the data area.
//! Page-table frames are never compared: KVM runs paging guests under its
//! own tables, so their accessed/dirty bits differ.

use std::fmt;

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter};
use umbra_core::cpu::{SegReg, Segment, EBX, ESP};
use umbra_core::{Exit, Vm};

use super::program::{hex, layout, Mode, Program};

/// How a run (or step) ended, as far as comparison cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Still running (lockstep, mid-program).
    Running,
    /// HLT executed.
    Halted,
    /// Triple fault or platform shutdown.
    Shutdown(String),
    /// The budget ran out before HLT.
    BudgetSpent,
    /// The engine failed (host side).
    Error(String),
}

impl End {
    /// Classify an engine's exit; `halted` is the CPU's halt state after it.
    pub fn of(exit: &Exit, halted: bool, lockstep: bool) -> End {
        match exit {
            Exit::Halted => End::Halted,
            Exit::Shutdown(r) => End::Shutdown(format!("{r:?}")),
            Exit::Error(e) => End::Error(e.clone()),
            Exit::BudgetSpent if halted => End::Halted,
            Exit::BudgetSpent if lockstep => End::Running,
            Exit::BudgetSpent => End::BudgetSpent,
        }
    }
    pub fn done(&self) -> bool {
        *self != End::Running
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Running => f.write_str("running"),
            End::Halted => f.write_str("halted"),
            End::Shutdown(r) => write!(f, "shutdown ({r})"),
            End::BudgetSpent => f.write_str("budget spent"),
            End::Error(e) => write!(f, "engine error: {e}"),
        }
    }
}

/// The compared registers of one CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Regs {
    pub gpr: [u32; 8],
    pub eip: u32,
    pub eflags: u32,
    pub seg: [Segment; 6],
    pub cr: [u32; 4],
    /// The x87 state (registers as 80-bit encodings, pointers included).
    pub fpu: umbra_core::cpu::FpuState,
}

impl Regs {
    pub fn of(vm: &Vm) -> Regs {
        let c = &vm.cpu;
        let mut gpr = [0u32; 8];
        for (g, v) in gpr.iter_mut().zip(c.gpr.iter()) {
            *g = *v as u32;
        }
        Regs {
            gpr,
            eip: c.eip,
            eflags: c.eflags,
            seg: c.seg,
            cr: [c.cr0, c.cr2, c.cr3, c.cr4],
            fpu: c.fpu,
        }
    }
}

impl Regs {
    /// The state without the x87 last-instruction pointers (FOP, FIP:FCS,
    /// FDP:FDS), for comparisons with KVM: what KVM reads back there
    /// depends on the host CPU, not on the guest. An AMD EPYC's XSAVE
    /// stores them only while an x87 exception is pending (zeros
    /// otherwise), and Intel parts that deprecate FCS and FDS store 0
    /// for those two.
    pub fn without_x87_pointers(mut self) -> Regs {
        let f = &mut self.fpu;
        (f.fop, f.fip, f.fcs, f.fdp, f.fds) = (0, 0, 0, 0, 0);
        self
    }
}

const GPR_NAMES: [&str; 8] = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];
const SEG_NAMES: [&str; 6] = ["es", "cs", "ss", "ds", "fs", "gs"];
const CR_NAMES: [&str; 4] = ["cr0", "cr2", "cr3", "cr4"];

/// The memory ranges compared: [start, end) physical.
pub fn compared_ranges(p: &Program) -> Vec<(u32, u32)> {
    vec![
        (layout::IVT_BASE, layout::PD_BASE),
        (layout::STACK_BASE, layout::STACK_BASE + layout::STACK_SIZE),
        (
            layout::CODE_BASE,
            layout::CODE_BASE + (p.code.len() as u32).min(layout::CODE_MAX),
        ),
        (layout::DATA_BASE, layout::DATA_BASE + layout::DATA_SIZE),
    ]
}

/// One differing item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub what: String,
    pub a: String,
    pub b: String,
}

/// Compare registers and end state; `flag_mask` are the EFLAGS bits that
/// count.
pub fn diff_regs(a: &Regs, b: &Regs, flag_mask: u32, ea: &End, eb: &End) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut push = |what: &str, x: String, y: String| {
        out.push(Mismatch {
            what: what.to_string(),
            a: x,
            b: y,
        })
    };
    if ea != eb {
        push("end", ea.to_string(), eb.to_string());
    }
    for (i, name) in GPR_NAMES.iter().enumerate() {
        if a.gpr[i] != b.gpr[i] {
            push(name, hex32(a.gpr[i]), hex32(b.gpr[i]));
        }
    }
    if a.eip != b.eip {
        push("eip", hex32(a.eip), hex32(b.eip));
    }
    if (a.eflags ^ b.eflags) & flag_mask != 0 {
        push(
            "eflags",
            format!("{} {}", hex32(a.eflags), flag_names(a.eflags)),
            format!("{} {}", hex32(b.eflags), flag_names(b.eflags)),
        );
    }
    for (i, name) in SEG_NAMES.iter().enumerate() {
        if a.seg[i] != b.seg[i] {
            push(name, seg_str(&a.seg[i]), seg_str(&b.seg[i]));
        }
    }
    for (i, name) in CR_NAMES.iter().enumerate() {
        if a.cr[i] != b.cr[i] {
            push(name, hex32(a.cr[i]), hex32(b.cr[i]));
        }
    }
    let (fa, fb) = (&a.fpu, &b.fpu);
    let words = [
        ("fcw", fa.fcw, fb.fcw),
        ("fsw", fa.fsw, fb.fsw),
        ("ftw", fa.ftw, fb.ftw),
        ("fop", fa.fop, fb.fop),
        ("fcs", fa.fcs, fb.fcs),
        ("fds", fa.fds, fb.fds),
    ];
    for (name, x, y) in words {
        if x != y {
            push(name, format!("{x:04x}"), format!("{y:04x}"));
        }
    }
    if fa.fip != fb.fip {
        push("fip", hex32(fa.fip), hex32(fb.fip));
    }
    if fa.fdp != fb.fdp {
        push("fdp", hex32(fa.fdp), hex32(fb.fdp));
    }
    let r80 = |r: &[u8; 10]| {
        let se = u16::from_le_bytes([r[8], r[9]]);
        let mut m = [0u8; 8];
        m.copy_from_slice(&r[..8]);
        format!("{se:04x}:{:016x}", u64::from_le_bytes(m))
    };
    for i in 0..8 {
        if fa.regs[i] != fb.regs[i] {
            push(&format!("r{i}"), r80(&fa.regs[i]), r80(&fb.regs[i]));
        }
    }
    out
}

/// Compare the touched memory; at most `limit` byte runs are reported.
pub fn diff_mem(va: &Vm, vb: &Vm, ranges: &[(u32, u32)], limit: usize) -> Vec<Mismatch> {
    let (ra, rb) = (va.mem.ram(), vb.mem.ram());
    let mut out = Vec::new();
    for &(s, e) in ranges {
        let (s, e) = (s as usize, e as usize);
        let (Some(x), Some(y)) = (ra.get(s..e), rb.get(s..e)) else {
            continue;
        };
        if x == y {
            continue;
        }
        // Report differing dwords.
        let mut i = 0;
        while i < x.len() && out.len() < limit {
            let j = (i + 4).min(x.len());
            if x[i..j] != y[i..j] {
                out.push(Mismatch {
                    what: format!("mem[{:#07x}]", s + i),
                    a: hex(&x[i..j]),
                    b: hex(&y[i..j]),
                });
            }
            i = j;
        }
    }
    out
}

/// Whether the touched memory is equal (fast path for lockstep).
pub fn mem_equal(va: &Vm, vb: &Vm, ranges: &[(u32, u32)]) -> bool {
    let (ra, rb) = (va.mem.ram(), vb.mem.ram());
    ranges.iter().all(|&(s, e)| {
        let r = s as usize..e as usize;
        ra.get(r.clone()) == rb.get(r)
    })
}

fn hex32(v: u32) -> String {
    format!("{v:08x}")
}

fn seg_str(s: &Segment) -> String {
    format!(
        "{:04x} base={:08x} limit={:08x} attr={:05x}",
        s.selector, s.base, s.limit, s.attr
    )
}

/// Set status flags and DF by name, e.g. `[CF ZF]`.
pub fn flag_names(fl: u32) -> String {
    use umbra_core::cpu as f;
    let names = [
        (f::CF, "CF"),
        (f::PF, "PF"),
        (f::AF, "AF"),
        (f::ZF, "ZF"),
        (f::SF, "SF"),
        (f::TF, "TF"),
        (f::IF, "IF"),
        (f::DF, "DF"),
        (f::OF, "OF"),
        (f::RF, "RF"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(b, _)| fl & b != 0)
        .map(|(_, n)| *n)
        .collect();
    format!("[{}]", set.join(" "))
}

/// The instruction an engine was about to execute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct At {
    pub cs_base: u32,
    pub eip: u32,
    pub bytes: Vec<u8>,
    pub text: String,
    pub ins: Instruction,
}

impl At {
    /// Decode the instruction at CS:EIP. Reads physical memory at the
    /// linear address: every program's memory is identity-mapped.
    pub fn decode(vm: &mut Vm) -> At {
        let cs = vm.cpu.seg[SegReg::Cs as usize];
        let bitness = if vm.cpu.code32() { 32 } else { 16 };
        let eip = vm.cpu.eip;
        let lin = cs.base.wrapping_add(eip) as usize;
        let mut buf = [0u8; 15];
        if let Some(s) = vm.mem.ram().get(lin..lin + 15) {
            buf.copy_from_slice(s);
        }
        let mut d = Decoder::with_ip(bitness, &buf, eip as u64, DecoderOptions::NONE);
        let ins = d.decode();
        let mut text = String::new();
        IntelFormatter::new().format(&ins, &mut text);
        At {
            cs_base: cs.base,
            eip,
            bytes: buf[..ins.len().max(1)].to_vec(),
            text,
            ins,
        }
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}: {}  [{}]", self.eip, self.text, hex(&self.bytes))
    }
}

/// A divergence between engine A and engine B on one program.
#[derive(Clone, Debug)]
pub struct Divergence {
    pub engines: (String, String),
    pub mode: Mode,
    /// Lockstep: the step (0-based) after which the states differed, and
    /// the instruction that step executed.
    pub step: Option<u64>,
    pub at: Option<At>,
    pub regs: (Regs, Regs),
    pub ends: (End, End),
    pub mismatches: Vec<Mismatch>,
    /// The program (shrunk when the report comes from a random run).
    pub program: Program,
    /// Lockstep localisation of a run-to-completion divergence.
    pub located: Option<Box<Divergence>>,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (na, nb) = (&self.engines.0, &self.engines.1);
        match (self.step, &self.at) {
            (Some(s), Some(at)) => writeln!(
                f,
                "DIVERGENCE ({} mode) {na} vs {nb} after step {s}: {at}",
                self.mode
            )?,
            _ => writeln!(
                f,
                "DIVERGENCE ({} mode) {na} vs {nb} at the end of the run",
                self.mode
            )?,
        }
        writeln!(f, "  {:<12} {:<44} {}", "differs", na, nb)?;
        for m in &self.mismatches {
            writeln!(f, "  {:<12} {:<44} {}", m.what, m.a, m.b)?;
        }
        writeln!(f, "  state:")?;
        let (a, b) = &self.regs;
        for (i, name) in GPR_NAMES.iter().enumerate() {
            let mark = if a.gpr[i] != b.gpr[i] { " <-" } else { "" };
            writeln!(f, "    {name:<6} {:08x}   {:08x}{mark}", a.gpr[i], b.gpr[i])?;
        }
        writeln!(f, "    {:<6} {:08x}   {:08x}", "eip", a.eip, b.eip)?;
        writeln!(
            f,
            "    {:<6} {:08x}   {:08x}   {} / {}",
            "eflags",
            a.eflags,
            b.eflags,
            flag_names(a.eflags),
            flag_names(b.eflags)
        )?;
        writeln!(f, "    {:<6} {}   {}", "end", self.ends.0, self.ends.1)?;
        if let Some(l) = &self.located {
            writeln!(f, "  lockstep localisation:")?;
            for line in l
                .to_string()
                .lines()
                .take_while(|l| !l.starts_with("  reproducer"))
            {
                writeln!(f, "  {line}")?;
            }
        }
        writeln!(
            f,
            "  reproducer ({} mode, {} bytes): {}",
            self.program.mode,
            self.program.code.len(),
            hex(&self.program.code)
        )?;
        write!(f, "{}", self.program.listing())?;
        let nz: Vec<String> = self
            .program
            .gpr
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != EBX && i != ESP)
            .map(|(i, v)| format!("{}={v:08x}", GPR_NAMES[i]))
            .collect();
        writeln!(
            f,
            "  initial: {} eflags={:08x} data_pages={:?} wp={}",
            nz.join(" "),
            self.program.eflags,
            self.program.data_pages,
            self.program.wp
        )?;
        if let Some(args) = self.program.rerun_args() {
            writeln!(f, "  rerun: umbra diff --engines {na},{nb} {args}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::program::HLT;

    #[test]
    fn regs_diff_honours_the_flag_mask_and_end() {
        let vm = Program::new(Mode::Prot32, vec![HLT]).build_vm().unwrap();
        let a = Regs::of(&vm);
        let mut b = a.clone();
        b.eflags ^= umbra_core::cpu::AF;
        assert!(diff_regs(&a, &b, !umbra_core::cpu::AF, &End::Halted, &End::Halted).is_empty());
        let d = diff_regs(&a, &b, !0, &End::Halted, &End::Running);
        let what: Vec<&str> = d.iter().map(|m| m.what.as_str()).collect();
        assert_eq!(what, ["end", "eflags"]);
        b.gpr[2] = 7;
        b.seg[1].attr ^= 1;
        let d = diff_regs(&a, &b, 0, &End::Halted, &End::Halted);
        let what: Vec<&str> = d.iter().map(|m| m.what.as_str()).collect();
        assert_eq!(what, ["edx", "cs"]);
    }

    #[test]
    fn memory_diff_reports_the_differing_dword() {
        let p = Program::new(Mode::Real, vec![HLT]);
        let va = p.build_vm().unwrap();
        let mut vb = p.build_vm().unwrap();
        let ranges = compared_ranges(&p);
        assert!(mem_equal(&va, &vb, &ranges));
        vb.mem.write_u8((layout::DATA_BASE + 5) as u64, 0xAA);
        // Page tables are not compared.
        vb.mem.write_u8(layout::PT_BASE as u64, 0xAA);
        assert!(!mem_equal(&va, &vb, &ranges));
        let d = diff_mem(&va, &vb, &ranges, 10);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].what, "mem[0x20004]");
    }

    #[test]
    fn decode_reads_at_cs_eip() {
        let mut vm = Program::new(Mode::Real, vec![0x90, HLT])
            .build_vm()
            .unwrap();
        let at = At::decode(&mut vm);
        assert_eq!(at.text, "nop");
        assert_eq!(at.bytes, [0x90]);
    }
}
