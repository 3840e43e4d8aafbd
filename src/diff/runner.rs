//! Running one program on two engines and comparing them, to completion
//! or in lockstep, and the random campaign: seeded generation, a check per
//! program, shrinking of every divergent case to a minimal reproducer.

use std::time::{Duration, Instant};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use umbra_core::cpu::ECX;
use umbra_core::{Budget, Engine, Vm};

use super::compare::{self, At, Divergence, End, Regs};
use super::forms::{undefined_flags, Class};
use super::gen::{Case, FormTable, GenConfig, Item};
use super::program::{Mode, Program};
use super::{make_engine, DiffError};

/// How to run the two engines.
#[derive(Clone, Debug)]
pub struct Session {
    pub engines: (String, String),
    /// Compare after every instruction instead of at the end.
    pub lockstep: bool,
    /// Most instructions (steps) one program may run.
    pub max_steps: u64,
    /// Makes an engine by name (`make_engine`; tests plug in others).
    pub factory: EngineFactory,
}

/// A loaded guest and the engine that runs it.
type Machine = (Vm, Box<dyn Engine>);

/// Makes an engine by name for a `Vm`, for lockstep or not.
pub type EngineFactory = fn(&str, &mut Vm, bool) -> Result<Box<dyn Engine>, DiffError>;

/// The result of checking one program.
#[derive(Debug)]
pub struct Outcome {
    /// Instructions retired (the larger count of the two engines; steps
    /// in lockstep).
    pub instructions: u64,
    pub divergence: Option<Box<Divergence>>,
    /// An engine could not run the program (a host-side limit such as a
    /// KVM emulation failure, not a guest event): nothing was compared
    /// past that point. The reason, without per-run details.
    pub skipped: Option<String>,
}

/// Skip reason for the one known deviation of this host's KVM from the
/// architecture that random programs reach: a store or read-modify-write
/// that crosses into a page where it faults. The SDM makes a faulting
/// instruction change nothing, and the host CPU writes nothing (a store
/// across an mprotect'ed page boundary leaves the first page intact), but
/// KVM's instruction emulator writes the first page's bytes before it
/// raises the #PF. Both engines must agree on everything else, CR2 (the
/// second page) included.
pub const SPLIT_STORE: &str =
    "kvm wrote the first page of a page-split store that faulted on the second (KVM emulator deviation; the CPU writes nothing)";

/// Skip reason for the second known deviation on page-split writes: when
/// both pages would fault, the CPU reports the first page's fault (checked
/// on the host CPU for CMPXCHG8B, MOV, ROL and XADD across a read-only page
/// into a PROT_NONE one: the fault address is the access's start), KVM's
/// emulator the second page's.
pub const SPLIT_FAULT_ORDER: &str =
    "kvm reported the second page's #PF of a page-split write whose first page faults too (KVM emulator deviation; the CPU reports the first page)";

/// Whether A and B differ in memory only by the #PF error code at SS:ESP
/// (A's frame) and by B's bytes in [lin, page2): copies both from B into A
/// and compares again. Flat programs: SS base 0.
fn error_code_only(va: &mut Vm, vb: &Vm, lin: u32, page2: u32, ranges: &[(u32, u32)]) -> bool {
    let esp = va.cpu.gpr[umbra_core::cpu::ESP] as u32;
    if esp != vb.cpu.gpr[umbra_core::cpu::ESP] as u32 {
        return false;
    }
    let code = vb
        .mem
        .ram()
        .get(esp as usize..esp as usize + 4)
        .map(<[u8]>::to_vec);
    match code {
        Some(c) if esp as usize + 4 <= va.mem.ram().len() => {
            va.mem.ram_mut()[esp as usize..esp as usize + 4].copy_from_slice(&c);
            first_page_only(va, vb, lin, page2, ranges)
        }
        _ => false,
    }
}

/// Linear address and second-page start of `at`'s memory destination when
/// it crosses a page boundary (flat, identity-mapped programs only).
fn split_store(at: &At, vm: &Vm) -> Option<(u32, u32)> {
    use iced_x86::{OpKind, Register};
    let ins = &at.ins;
    if ins.op_count() == 0 || ins.op0_kind() != OpKind::Memory {
        return None;
    }
    let reg = |r: Register| -> u32 {
        if r == Register::None {
            return 0;
        }
        let full = r.full_register32();
        let n = (full as u32).wrapping_sub(Register::EAX as u32) as usize;
        let v = vm.cpu.gpr.get(n).copied().unwrap_or(0) as u32;
        if r.is_gpr16() {
            v & 0xFFFF
        } else {
            v
        }
    };
    let mut ea = ins
        .memory_displacement32()
        .wrapping_add(reg(ins.memory_base()))
        .wrapping_add(reg(ins.memory_index()).wrapping_mul(ins.memory_index_scale()));
    if ins.memory_base().is_gpr16() || ins.memory_index().is_gpr16() {
        ea &= 0xFFFF;
    }
    let seg = umbra_core::interp::operand::seg_of(ins.memory_segment());
    let lin = vm.cpu.seg(seg).base.wrapping_add(ea);
    let size = ins.memory_size().size() as u32;
    if size == 0 || (lin & 0xFFF) + size <= 0x1000 {
        return None;
    }
    Some((lin, (lin | 0xFFF).wrapping_add(1)))
}

/// Whether A and B differ only in [lin, page2): copies B's bytes there into
/// A and compares again.
fn first_page_only(va: &mut Vm, vb: &Vm, lin: u32, page2: u32, ranges: &[(u32, u32)]) -> bool {
    let (lo, hi) = (lin as usize, page2 as usize);
    match (vb.mem.ram().get(lo..hi), hi <= va.mem.ram().len()) {
        (Some(src), true) => {
            let src = src.to_vec();
            va.mem.ram_mut()[lo..hi].copy_from_slice(&src);
            compare::mem_equal(va, vb, ranges)
        }
        _ => false,
    }
}

/// The reason an engine failed, with the run-specific details cut off so
/// that equal causes count together.
fn skip_reason(name: &str, e: &End) -> Option<String> {
    match e {
        End::Error(msg) => {
            let short = msg.split(" data [").next().unwrap_or(msg);
            Some(format!("{name}: {short}"))
        }
        _ => None,
    }
}

/// Everything but the arithmetic flags: those are masked per instruction.
const ALL_FLAGS: u32 = !0;

impl Session {
    pub fn new(a: &str, b: &str, lockstep: bool) -> Self {
        Session {
            engines: (a.to_string(), b.to_string()),
            lockstep,
            max_steps: 200_000,
            factory: make_engine,
        }
    }

    /// The compared registers of both machines (see
    /// `Regs::without_x87_pointers` for what KVM leaves out).
    fn regs(&self, va: &Vm, vb: &Vm) -> (Regs, Regs) {
        let (ra, rb) = (Regs::of(va), Regs::of(vb));
        if self.engines.0 == "kvm" || self.engines.1 == "kvm" {
            (ra.without_x87_pointers(), rb.without_x87_pointers())
        } else {
            (ra, rb)
        }
    }

    fn setup(&self, p: &Program) -> Result<[Machine; 2], DiffError> {
        let mut va = p.build_vm()?;
        let ea = (self.factory)(&self.engines.0, &mut va, self.lockstep)?;
        let mut vb = p.build_vm()?;
        let eb = (self.factory)(&self.engines.1, &mut vb, self.lockstep)?;
        Ok([(va, ea), (vb, eb)])
    }

    /// Run `p` on both engines and compare; a divergence at the end of a
    /// run is then located by a lockstep rerun.
    pub fn check(&self, p: &Program) -> Result<Outcome, DiffError> {
        let mut out = self.check_quick(p)?;
        if let Some(d) = &mut out.divergence {
            self.locate(d);
        }
        Ok(out)
    }

    /// Find the first differing step of a run-to-completion divergence,
    /// where both engines can step.
    pub fn locate(&self, d: &mut Divergence) {
        if d.step.is_none() && d.located.is_none() {
            d.located = self
                .clone_lockstep()
                .check_lockstep(&d.program)
                .ok()
                .and_then(|o| o.divergence);
        }
    }

    /// `check` without the lockstep localisation. A run-to-completion
    /// difference that a lockstep rerun shows to be a known oracle
    /// deviation (`SPLIT_STORE`) comes back as skipped with that reason.
    pub fn check_quick(&self, p: &Program) -> Result<Outcome, DiffError> {
        let mut out = self.check_run(p)?;
        // KVM's runs are bounded by wall-clock time: on a loaded host a
        // run can be cut off before its HLT. That is no verdict on the
        // guest, so such a run is repeated before it counts.
        for _ in 0..TIMEOUT_RETRIES {
            match &out.divergence {
                Some(d) if cut_off(d) => out = self.check_run(p)?,
                _ => break,
            }
        }
        if out.divergence.is_some() && !self.lockstep {
            if let Ok(rerun) = self.clone_lockstep().check_lockstep(p) {
                let known = [SPLIT_STORE, SPLIT_FAULT_ORDER];
                if rerun.divergence.is_none()
                    && rerun.skipped.as_deref().is_some_and(|w| known.contains(&w))
                {
                    return Ok(Outcome {
                        instructions: out.instructions,
                        divergence: None,
                        skipped: rerun.skipped,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Run both engines (to completion, or in lockstep) and compare.
    fn check_run(&self, p: &Program) -> Result<Outcome, DiffError> {
        if self.lockstep {
            return self.check_lockstep(p);
        }
        let [(mut va, mut ea), (mut vb, mut eb)] = self.setup(p)?;
        let budget = Budget::insns(self.max_steps);
        let xa = ea.run(&mut va, budget);
        let xb = eb.run(&mut vb, budget);
        let end_a = End::of(&xa, va.cpu.halted, false);
        let end_b = End::of(&xb, vb.cpu.halted, false);
        let instructions = va.clock.retired.max(vb.clock.retired);
        let skipped = skip_reason(&self.engines.0, &end_a).or(skip_reason(&self.engines.1, &end_b));
        if skipped.is_some() {
            return Ok(Outcome {
                instructions: 0,
                divergence: None,
                skipped,
            });
        }
        let (ra, rb) = self.regs(&va, &vb);
        let ranges = compare::compared_ranges(p);
        let mut mismatches = compare::diff_regs(&ra, &rb, ALL_FLAGS, &end_a, &end_b);
        mismatches.extend(compare::diff_mem(&va, &vb, &ranges, 16));
        let divergence = if mismatches.is_empty() {
            None
        } else {
            Some(Box::new(Divergence {
                engines: self.engines.clone(),
                mode: p.mode,
                step: None,
                at: None,
                regs: (ra, rb),
                ends: (end_a, end_b),
                mismatches,
                program: p.clone(),
                located: None,
            }))
        };
        Ok(Outcome {
            instructions,
            divergence,
            skipped: None,
        })
    }

    fn clone_lockstep(&self) -> Session {
        Session {
            lockstep: true,
            ..self.clone()
        }
    }

    /// Step both engines one instruction at a time; compare after each.
    fn check_lockstep(&self, p: &Program) -> Result<Outcome, DiffError> {
        let [(mut va, mut ea), (mut vb, mut eb)] = self.setup(p)?;
        let ranges = compare::compared_ranges(p);
        let mut end_a = End::Running;
        let mut end_b = End::Running;
        for step in 0..self.max_steps {
            let at = At::decode(&mut va);
            let cl = va.cpu.gpr[ECX] as u8;
            // Only KVM as engine B has the known page-split deviation, and
            // engine A must have left the first page untouched.
            let split = split_store(&at, &va)
                .filter(|_| self.engines.1 == "kvm")
                .map(|(lin, page2)| {
                    let before = va
                        .mem
                        .ram()
                        .get(lin as usize..page2 as usize)
                        .map(<[u8]>::to_vec);
                    (lin, page2, before)
                });
            if !end_a.done() {
                let x = ea.run(&mut va, Budget::ONE);
                end_a = End::of(&x, va.cpu.halted, true);
            }
            if !end_b.done() {
                let x = eb.run(&mut vb, Budget::ONE);
                end_b = End::of(&x, vb.cpu.halted, true);
            }
            // Flags the instruction left undefined: mask them in the
            // comparison, then give A B's values so they cannot leak into
            // later comparisons (PUSHF, ADC, SETcc...).
            let skipped = skip_reason(&self.engines.0, &end_a)
                .or(skip_reason(&self.engines.1, &end_b))
                .map(|why| format!("{why} at {:?}", at.ins.mnemonic()));
            if skipped.is_some() {
                return Ok(Outcome {
                    instructions: step,
                    divergence: None,
                    skipped,
                });
            }
            let undef = undefined_flags(&at.ins, cl);
            va.cpu.eflags = (va.cpu.eflags & !undef) | (vb.cpu.eflags & undef);
            let (ra, rb) = self.regs(&va, &vb);
            let mut mismatches = compare::diff_regs(&ra, &rb, ALL_FLAGS, &end_a, &end_b);
            if let Some((lin, page2, Some(before))) = split {
                let untouched = va.mem.ram().get(lin as usize..page2 as usize) == Some(&before[..]);
                // Both pages fault: the CPU reports the first page's fault
                // (CR2 = the access's start), KVM's emulator the second's.
                // Only CR2 and the pushed #PF error code may differ.
                if untouched
                    && va.cpu.cr2 == lin
                    && vb.cpu.cr2 == page2
                    && va.cpu.eip == vb.cpu.eip
                    && va.cpu.eip != at.ins.next_ip32()
                    && mismatches.iter().all(|m| m.what == "cr2")
                    && error_code_only(&mut va, &vb, lin, page2, &ranges)
                {
                    return Ok(Outcome {
                        instructions: step + 1,
                        divergence: None,
                        skipped: Some(SPLIT_FAULT_ORDER.to_string()),
                    });
                }
                if mismatches.is_empty()
                    && untouched
                    && va.cpu.cr2 == page2
                    && vb.cpu.cr2 == page2
                    && va.cpu.eip != at.ins.next_ip32()
                    && !compare::mem_equal(&va, &vb, &ranges)
                    && first_page_only(&mut va, &vb, lin, page2, &ranges)
                {
                    return Ok(Outcome {
                        instructions: step + 1,
                        divergence: None,
                        skipped: Some(SPLIT_STORE.to_string()),
                    });
                }
            }
            if !compare::mem_equal(&va, &vb, &ranges) {
                mismatches.extend(compare::diff_mem(&va, &vb, &ranges, 16));
            }
            if !mismatches.is_empty() {
                return Ok(Outcome {
                    instructions: step + 1,
                    divergence: Some(Box::new(Divergence {
                        engines: self.engines.clone(),
                        mode: p.mode,
                        step: Some(step),
                        at: Some(at),
                        regs: (ra, rb),
                        ends: (end_a, end_b),
                        mismatches,
                        program: p.clone(),
                        located: None,
                    })),
                    skipped: None,
                });
            }
            if end_a.done() && end_b.done() {
                return Ok(Outcome {
                    instructions: step + 1,
                    divergence: None,
                    skipped: None,
                });
            }
        }
        Ok(Outcome {
            instructions: self.max_steps,
            divergence: None,
            skipped: None,
        })
    }
}

/// A random differential campaign.
#[derive(Clone, Debug)]
pub struct Campaign {
    pub programs: u64,
    pub seed: u64,
    pub modes: Vec<Mode>,
    pub session: Session,
    pub gen: GenConfig,
    /// Most shrink steps per divergent case (0: no shrinking).
    pub max_shrink: u32,
    /// Instruction classes left out of the programs.
    pub exclude: Vec<Class>,
}

/// What a campaign did.
#[derive(Debug, Default)]
pub struct Summary {
    pub programs: u64,
    pub instructions: u64,
    /// Programs per mode, for the record.
    pub per_mode: [u64; 4],
    pub divergences: Vec<Box<Divergence>>,
    /// Programs an engine could not run, by reason (not divergences).
    pub skipped: std::collections::BTreeMap<String, u64>,
}

impl Summary {
    /// The one-line summary the CLI prints.
    pub fn line(&self) -> String {
        format!(
            "{} programs, {} instructions, {} divergences",
            self.programs,
            self.instructions,
            self.divergences.len()
        )
    }
}

/// A proptest runner whose random stream depends only on `seed`.
pub fn seeded_runner(seed: u64) -> TestRunner {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let v = seed
            .wrapping_add(i as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    TestRunner::new_with_rng(
        Config {
            failure_persistence: None,
            ..Config::default()
        },
        rng,
    )
}

impl Campaign {
    /// Run the campaign. `report` sees each (shrunk) divergence as it is
    /// found; `progress` gets the running summary every couple of seconds.
    pub fn run(
        &self,
        report: impl FnMut(&Divergence),
        progress: impl FnMut(&Summary),
    ) -> Result<Summary, DiffError> {
        self.run_from(0, report, progress)
    }

    /// `run`, but only programs `first..programs` are run: the ones before
    /// are generated (the random stream is one sequence) and dropped, so a
    /// long campaign can be split over several runs that together check
    /// exactly the programs of one `run`.
    pub fn run_from(
        &self,
        first: u64,
        mut report: impl FnMut(&Divergence),
        mut progress: impl FnMut(&Summary),
    ) -> Result<Summary, DiffError> {
        let table = FormTable::new(&self.exclude);
        let strategies: Vec<_> = self
            .modes
            .iter()
            .map(|&m| table.case(m, &self.gen))
            .collect();
        let mut runner = seeded_runner(self.seed);
        let mut sum = Summary::default();
        let mut last = Instant::now();
        for i in 0..self.programs {
            let k = (i % self.modes.len().max(1) as u64) as usize;
            let Some(strategy) = strategies.get(k) else {
                break;
            };
            let mut tree = strategy
                .new_tree(&mut runner)
                .map_err(|e| DiffError::Generate(e.to_string()))?;
            if i < first {
                continue;
            }
            let case = tree.current();
            let program = case.assemble(&self.gen)?;
            let out = self.session.check_quick(&program)?;
            sum.programs += 1;
            if let Some(why) = out.skipped {
                *sum.skipped.entry(why).or_default() += 1;
            }
            sum.instructions += out.instructions;
            sum.per_mode[Mode::ALL.iter().position(|&m| m == case.mode).unwrap_or(0)] += 1;
            if let Some(d) = out.divergence {
                let mut d = self.shrink(&mut tree, case, d);
                self.session.locate(&mut d);
                report(&d);
                sum.divergences.push(d);
            }
            if last.elapsed() > Duration::from_secs(2) {
                progress(&sum);
                last = Instant::now();
            }
        }
        Ok(sum)
    }

    /// The divergence of `case`, if it still has one.
    fn diverges(&self, case: &Case) -> Option<Box<Divergence>> {
        let p = case.assemble(&self.gen).ok()?;
        self.session.check_quick(&p).ok()?.divergence
    }

    /// Proptest's shrinking loop (simplify while the case still diverges,
    /// complicate back when it stops), then a greedy pass that drops
    /// whole items and body instructions: proptest keeps at least
    /// `min_items` items.
    fn shrink(
        &self,
        tree: &mut impl ValueTree<Value = Case>,
        case: Case,
        first: Box<Divergence>,
    ) -> Box<Divergence> {
        let mut best = (case, first);
        if self.max_shrink == 0 {
            return best.1;
        }
        if tree.simplify() {
            for _ in 0..self.max_shrink {
                let cur = tree.current();
                let more = match self.diverges(&cur) {
                    Some(d) => {
                        best = (cur, d);
                        tree.simplify()
                    }
                    None => tree.complicate(),
                };
                if !more {
                    break;
                }
            }
        }
        let (mut case, mut div) = best;
        let mut i = case.items.len();
        while i > 0 {
            i -= 1;
            let mut fewer = case.clone();
            fewer.items.remove(i);
            if let Some(d) = self.diverges(&fewer) {
                (case, div) = (fewer, d);
                continue;
            }
            // Then the body of a loop, call, PUSHA or ENTER.
            let mut j = body_len(&case.items[i]);
            while j > 0 {
                j -= 1;
                let mut fewer = case.clone();
                if let Some(body) = body_mut(&mut fewer.items[i]) {
                    body.remove(j);
                }
                if let Some(d) = self.diverges(&fewer) {
                    (case, div) = (fewer, d);
                }
            }
        }
        div
    }
}

fn body_mut(item: &mut Item) -> Option<&mut Vec<iced_x86::Instruction>> {
    match item {
        Item::Loop { body, .. }
        | Item::Call { body, .. }
        | Item::Pusha { body }
        | Item::Enter { body, .. } => Some(body),
        _ => None,
    }
}

fn body_len(item: &Item) -> usize {
    let mut it = item.clone();
    body_mut(&mut it).map_or(0, |b| b.len())
}

/// How often a run-to-completion comparison cut off by KVM's wall-clock
/// limit is repeated.
const TIMEOUT_RETRIES: usize = 3;

/// One engine ran out of budget (KVM: of time) while the other halted.
fn cut_off(d: &Divergence) -> bool {
    let (a, b) = &d.ends;
    a != b && (*a == End::BudgetSpent || *b == End::BudgetSpent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::program::HLT;
    use umbra_core::interp::Interpreter;

    #[test]
    fn same_seed_same_programs() {
        let table = FormTable::default();
        let s = table.case(Mode::Prot32, &GenConfig::default());
        let gen = |seed| {
            let mut r = seeded_runner(seed);
            let c = s.new_tree(&mut r).unwrap().current();
            c.assemble(&GenConfig::default()).unwrap().code
        };
        assert_eq!(gen(7), gen(7));
        assert_ne!(gen(7), gen(8));
    }

    #[test]
    fn interp_against_itself_never_diverges() {
        for lockstep in [false, true] {
            let c = Campaign {
                programs: 8,
                seed: 1,
                modes: Mode::ALL.to_vec(),
                session: Session::new("interp", "interp", lockstep),
                gen: GenConfig {
                    sanitize: !lockstep,
                    ..GenConfig::default()
                },
                max_shrink: 0,
                exclude: Vec::new(),
            };
            let s = c.run(|d| panic!("{d}"), |_| {}).unwrap();
            assert_eq!(s.programs, 8);
            assert!(s.divergences.is_empty());
        }
    }

    #[test]
    fn a_campaign_split_with_run_from_checks_the_same_programs() {
        let campaign = |programs| Campaign {
            programs,
            seed: 5,
            modes: Mode::ALL.to_vec(),
            session: Session::new("interp", "interp", false),
            gen: GenConfig::default(),
            max_shrink: 0,
            exclude: Vec::new(),
        };
        let whole = campaign(12).run(|d| panic!("{d}"), |_| {}).unwrap();
        let head = campaign(5).run(|d| panic!("{d}"), |_| {}).unwrap();
        let tail = campaign(12).run_from(5, |d| panic!("{d}"), |_| {}).unwrap();
        assert_eq!(tail.programs, 7);
        assert_eq!(head.instructions + tail.instructions, whole.instructions);
        for m in 0..4 {
            assert_eq!(head.per_mode[m] + tail.per_mode[m], whole.per_mode[m]);
        }
    }

    /// The interpreter with a planted bug: every executed XOR also flips
    /// bit 0 of EAX.
    struct NotBug(Interpreter);

    impl Engine for NotBug {
        fn name(&self) -> &'static str {
            "notbug"
        }
        fn run(&mut self, vm: &mut Vm, budget: Budget) -> umbra_core::Exit {
            for _ in 0..budget.instructions {
                let is_not = At::decode(vm).ins.mnemonic() == iced_x86::Mnemonic::Xor;
                let x = self.0.run(vm, Budget::ONE);
                if is_not {
                    vm.cpu.gpr[0] ^= 1;
                }
                if x != umbra_core::Exit::BudgetSpent || vm.cpu.halted {
                    return x;
                }
            }
            umbra_core::Exit::BudgetSpent
        }
    }

    fn with_bug(name: &str, vm: &mut Vm, lockstep: bool) -> Result<Box<dyn Engine>, DiffError> {
        match name {
            "notbug" => Ok(Box::new(NotBug(Interpreter::new()))),
            _ => make_engine(name, vm, lockstep),
        }
    }

    #[test]
    fn a_planted_bug_is_found_located_and_shrunk_to_one_item() {
        let mut session = Session::new("interp", "notbug", false);
        session.factory = with_bug;
        let c = Campaign {
            programs: 40,
            seed: 3,
            modes: vec![Mode::Prot32],
            session,
            gen: GenConfig::default(),
            max_shrink: 2000,
            exclude: Vec::new(),
        };
        let s = c.run(|_| {}, |_| {}).unwrap();
        assert!(!s.divergences.is_empty(), "no program executed an XOR");
        for d in &s.divergences {
            let text = d.to_string();
            // Minimal: one item holding the one XOR (with at most a loop
            // or a division around it, sanitisers after), then HLT.
            let listing = d.program.listing();
            assert_eq!(listing.matches("xor ").count(), 1, "{text}");
            assert!(listing.lines().count() <= 10, "{text}");
            assert!(listing.trim_end().ends_with("hlt"), "{text}");
            // Lockstep localisation names the NOT as the diverging step.
            let located = d.located.as_ref().expect("lockstep localisation");
            assert!(
                located.at.as_ref().unwrap().text.starts_with("xor "),
                "{text}"
            );
            assert!(d.mismatches.iter().any(|m| m.what == "eax"), "{text}");
        }
    }

    #[test]
    fn unknown_engine_is_a_typed_error() {
        let s = Session::new("interp", "bochs", false);
        let p = Program::new(Mode::Real, vec![HLT]);
        assert!(matches!(s.check(&p), Err(DiffError::UnknownEngine(_))));
    }
}
