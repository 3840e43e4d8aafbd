//! 2-level paging emulation. This host's nested KVM shuts the guest down as
//! soon as legacy 32-bit or PAE paging is switched on, while long mode with
//! 32-bit compatibility-mode code runs. So when `vm.cpu` has CR0.PG with
//! 2-level (non-PAE) tables, the engine runs the guest as compatibility-mode
//! code (CS stays L=0, D as the guest set it) under private 4-level tables
//! that map exactly the guest's linear pages, with the same U/S and R/W
//! (4 MiB PSE pages become pairs of 2 MiB pages).
//!
//! PAE paging (CR4.PAE) is run the same way with less work: its page
//! directories and tables already have the 4-level format, so the private
//! PML4 and PDPT sit above the guest's own PDs (the four PDPTEs copied with
//! R/W and U/S added) and the CPU walks, and sets A/D bits in, the guest's
//! tables. (A guest PAE entry pointing at or above `BASE` would reach the
//! private slot; guest RAM never lies there. A PDPTE that does is dropped.)
//!
//! Everything private lives in one memory slot at guest-physical (and
//! linear) `BASE`, above the guest's 32-bit reach, so guest RAM is never
//! touched behind the guest's back:
//!
//! - the 4-level tables (rebuilt from the guest's tables on every step);
//! - a GDT: a copy of the guest's GDT with the engine's 64-bit code segment
//!   and 64-bit TSS in its last four slots (GDTR.limit becomes 0xFFFF; a
//!   guest selector beyond its own limit finds a zero descriptor there and
//!   faults with the same #GP(selector));
//! - a 64-bit IDT whose 256 handlers push the vector and HLT on an IST
//!   stack. Such a HLT ends the step: the engine takes the guest state from
//!   before the step (the instruction faulted, so it committed nothing),
//!   CR2 from KVM, and delivers the exception architecturally with
//!   `interp::interrupt::deliver_exception` on the guest's own IDT.
//!
//! The same machinery, with identity tables, runs single steps of
//! protected mode without paging (see `compat_mode`).
//!
//! Paging mode always single-steps (one KVM_RUN per instruction), so that
//! the private tables follow the guest's: a change of the guest's tables is
//! seen by the next instruction, as after an INVLPG. Instructions whose
//! behaviour would differ in compatibility mode (MOV to/from control
//! registers, descriptor-table loads and stores, INT n/INT3/INTO, IRET,
//! far CALL/JMP (gates, TSS targets), LAR/LSL (system-descriptor types),
//! SMSW/STR (they would show the private CR0.PG or TR), MOV to/from debug
//! registers (so a step never has to read them back), SYSENTER/SYSEXIT,
//! RDMSR/WRMSR, port I/O at CPL > IOPL (the guest TSS's I/O bitmap)), and
//! CPUID (see `KvmEngine`), are executed by the interpreter instead.
//!
//! Accessed and dirty bits that the CPU sets land in the private tables;
//! after each step the engine copies newly set ones into the guest's
//! entries, and likewise accessed/busy bits written to the GDT copy. The
//! differential harness should still not compare the guest's page-table
//! frames bit for bit: the order and timing of A/D updates within one
//! instruction (and on faulting accesses) can differ from the interpreter.
//! Known gaps: PSE-36 bits of 4 MiB pages are not supported (such a page is
//! left unmapped).

use iced_x86::{Code, Decoder, DecoderOptions, Mnemonic, Register};
use kvm_bindings::kvm_sregs;
use memmap2::MmapMut;
use umbra_core::cpu::{cr0, cr4, CpuState, SegReg};
use umbra_core::engine::{Budget, Exit};
use umbra_core::exception::Fault;
use umbra_core::interp::{interrupt, Step};
use umbra_core::Vm;

use super::{End, KvmEngine, Seg};

/// Guest-physical and linear base of the private slot (below 2^36, the
/// physical-address width KVM assumes without CPUID leaf 0x80000008).
pub(super) const BASE: u64 = 0x1_0000_0000;
/// Size of the private slot: a multiple of 2 MiB.
pub(super) const SIZE: usize = 0xA0_0000;

// Layout of the private slot (offsets from BASE).
const PML4: usize = 0x0000;
const PDPT: usize = 0x1000;
/// Four page directories for the guest's 4 GiB of linear space.
const PD0: usize = 0x2000;
/// Page directory mapping the private slot itself (2 MiB pages).
const PD_PRIV: usize = 0x6000;
const IDT: usize = 0x7000;
const TSS: usize = 0x8000;
const TSS_LIMIT: u32 = 0x67;
const STUBS: usize = 0x9000;
const STUB_SIZE: usize = 16;
const COMMON: usize = STUBS + 256 * STUB_SIZE;
/// IST1 stack, growing down from STACK_TOP.
const STACK_TOP: usize = 0xD000;
const GDT: usize = 0x10000;
const GDT_SIZE: usize = 0x10000;
const _: () = assert!(GDT + GDT_SIZE <= PT_POOL && PT_POOL + PT_MAX * 0x1000 <= SIZE);
/// Page tables for the guest's linear space: one 4 KiB table per 2 MiB.
const PT_POOL: usize = 0x20000;
const PT_MAX: usize = 2048;

/// The engine's selectors, in the last slots of the GDT copy.
const SEL_CODE64: u16 = 0xFFE0;
const SEL_TSS: u16 = 0xFFF0;

/// Page-table entry bits (SDM Vol. 3 4.3, 4.5).
mod pte {
    pub const P: u64 = 1 << 0;
    pub const RW: u64 = 1 << 1;
    pub const US: u64 = 1 << 2;
    pub const PWT: u64 = 1 << 3;
    pub const PCD: u64 = 1 << 4;
    pub const A: u64 = 1 << 5;
    pub const D: u64 = 1 << 6;
    pub const PS: u64 = 1 << 7;
    /// PSE-36 physical-address bits of a 4 MiB PDE (bits 13-20).
    pub const PSE36_MASK: u32 = 0xFF << 13;
}

/// EFER bits.
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Vectors that push an error code (SDM Vol. 3 6.13).
fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// A guest entry whose A/D bits the CPU may set in our copy.
struct Watch {
    /// Guest-physical address of the guest's 32-bit entry.
    guest: u64,
    /// Offsets of our 64-bit entries that mirror it.
    ours: [usize; 2],
    n: usize,
    /// The guest entry's value when we built ours.
    value: u32,
}

pub(super) struct Private {
    map: MmapMut,
    active: bool,
    watches: Vec<Watch>,
    /// Bytes of the guest GDT copied into the private GDT.
    gdt_len: usize,
    gdt_snapshot: Vec<u8>,
    /// What the private tables were last built from (see `fingerprint`).
    fingerprint: Option<Vec<u8>>,
}

impl Private {
    pub(super) fn new() -> std::io::Result<Self> {
        let mut p = Private {
            map: MmapMut::map_anon(SIZE)?,
            active: false,
            watches: Vec::new(),
            gdt_len: 0,
            gdt_snapshot: Vec::new(),
            fingerprint: None,
        };
        p.build_static();
        Ok(p)
    }

    pub(super) fn host_addr(&self) -> u64 {
        self.map.as_ptr() as u64
    }
    pub(super) fn active(&self) -> bool {
        self.active
    }

    fn put64(&mut self, off: usize, v: u64) {
        self.map[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn get64(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.map[off..off + 8]);
        u64::from_le_bytes(b)
    }

    /// What never changes: the upper paging levels, the private mapping,
    /// the IDT, TSS and handler stubs.
    fn build_static(&mut self) {
        let phys = |off: usize| BASE + off as u64;
        let dir = pte::P | pte::RW | pte::US;
        self.put64(PML4, phys(PDPT) | dir);
        for i in 0..4 {
            self.put64(PDPT + 8 * i, phys(PD0 + 0x1000 * i) | dir);
        }
        // PDPT entry 4 covers linear [4 GiB, 5 GiB): the private slot,
        // supervisor-only.
        self.put64(PDPT + 8 * 4, phys(PD_PRIV) | pte::P | pte::RW);
        for i in 0..SIZE >> 21 {
            self.put64(
                PD_PRIV + 8 * i,
                (BASE + ((i as u64) << 21)) | pte::P | pte::RW | pte::PS | pte::A | pte::D,
            );
        }
        // 64-bit interrupt gates, DPL 0, IST 1 (SDM Vol. 3 6.14.1).
        for v in 0..256usize {
            let off = phys(STUBS + v * STUB_SIZE);
            let lo = (off & 0xFFFF)
                | ((SEL_CODE64 as u64) << 16)
                | (1u64 << 32)
                | (0x8Eu64 << 40)
                | (((off >> 16) & 0xFFFF) << 48);
            self.put64(IDT + 16 * v, lo);
            self.put64(IDT + 16 * v + 8, off >> 32);
            // Stub: [push 0;] push imm32 vector; jmp rel32 common.
            let mut code = Vec::with_capacity(STUB_SIZE);
            if !has_error_code(v as u8) {
                code.extend_from_slice(&[0x6A, 0x00]);
            }
            code.push(0x68);
            code.extend_from_slice(&(v as u32).to_le_bytes());
            let here = STUBS + v * STUB_SIZE + code.len() + 5;
            code.push(0xE9);
            code.extend_from_slice(&((COMMON as i64 - here as i64) as i32).to_le_bytes());
            code.resize(STUB_SIZE, 0x90);
            let s = STUBS + v * STUB_SIZE;
            self.map[s..s + STUB_SIZE].copy_from_slice(&code);
        }
        // common: hlt; jmp common.
        self.map[COMMON..COMMON + 3].copy_from_slice(&[0xF4, 0xEB, 0xFD]);
        // 64-bit TSS: RSP0 and IST1 at the private stack.
        let top = phys(STACK_TOP);
        self.map[TSS + 4..TSS + 12].copy_from_slice(&top.to_le_bytes());
        self.map[TSS + 0x24..TSS + 0x2C].copy_from_slice(&top.to_le_bytes());
        // No I/O bitmap: its offset lies past the limit.
        self.map[TSS + 0x66..TSS + 0x68].copy_from_slice(&((TSS_LIMIT as u16) + 1).to_le_bytes());
    }

    /// Rebuild the GDT copy and the 4-level tables from the guest's state.
    /// Everything `build` reads from the guest: control-register bits,
    /// GDTR, the GDT bytes, the page directory and each page table it
    /// points to. Equal fingerprints mean equal private tables.
    fn fingerprint(vm: &mut Vm) -> Vec<u8> {
        let c = &vm.cpu;
        let mut fp = Vec::with_capacity(0x3000);
        fp.extend_from_slice(&c.cr3.to_le_bytes());
        fp.extend_from_slice(&(c.cr4 & (cr4::PSE | cr4::PAE)).to_le_bytes());
        fp.push(c.paging() as u8);
        fp.extend_from_slice(&c.gdtr.base.to_le_bytes());
        fp.extend_from_slice(&c.gdtr.limit.to_le_bytes());
        let glen = (c.gdtr.limit as usize + 1).min(SEL_CODE64 as usize);
        let (gbase, paging, cr3) = (c.gdtr.base as u64, c.paging(), c.cr3);
        let at = fp.len();
        fp.resize(at + glen, 0);
        vm.mem.read(gbase, &mut fp[at..]);
        if !paging {
            return fp;
        }
        if vm.cpu.cr4 & cr4::PAE != 0 {
            let mut pdpt = [0u8; 32];
            vm.mem.read((cr3 & 0xFFFF_FFE0) as u64, &mut pdpt);
            fp.extend_from_slice(&pdpt);
            return fp;
        }
        let mut pd = [0u8; 4096];
        vm.mem.read((cr3 & 0xFFFF_F000) as u64, &mut pd);
        fp.extend_from_slice(&pd);
        for i in 0..1024 {
            let pde = u32::from_le_bytes([pd[4 * i], pd[4 * i + 1], pd[4 * i + 2], pd[4 * i + 3]]);
            if pde as u64 & pte::P != 0 && pde as u64 & pte::PS == 0 {
                let at = fp.len();
                fp.resize(at + 4096, 0);
                vm.mem.read((pde & 0xFFFF_F000) as u64, &mut fp[at..]);
            }
        }
        fp
    }

    fn build(&mut self, vm: &mut Vm) -> Result<(), String> {
        let fp = Self::fingerprint(vm);
        if self.fingerprint.as_ref() == Some(&fp) {
            return Ok(());
        }
        self.fingerprint = None;
        self.watches.clear();
        // GDT: the guest's bytes, then zeros, then our descriptors.
        let glen = (vm.cpu.gdtr.limit as usize + 1).min(SEL_CODE64 as usize);
        let mut g = vec![0u8; glen];
        vm.mem.read(vm.cpu.gdtr.base as u64, &mut g);
        self.map[GDT..GDT + self.gdt_len.max(glen)].fill(0);
        self.map[GDT..GDT + glen].copy_from_slice(&g);
        self.gdt_len = glen;
        self.gdt_snapshot = g;
        // 64-bit code: P, DPL 0, S, type execute/read accessed; L.
        self.put64(GDT + SEL_CODE64 as usize, 0x0020_9B00_0000_0000);
        // 64-bit busy TSS (type 0xB), 16 bytes.
        let tss = BASE + TSS as u64;
        let lo = (TSS_LIMIT as u64)
            | ((tss & 0xFF_FFFF) << 16)
            | (0x8Bu64 << 40)
            | (((tss >> 24) & 0xFF) << 56);
        self.put64(GDT + SEL_TSS as usize, lo);
        self.put64(GDT + SEL_TSS as usize + 8, tss >> 32);

        let dir = pte::P | pte::RW | pte::US;
        if vm.cpu.paging() && vm.cpu.cr4 & cr4::PAE != 0 {
            // PAE: the guest's page directories are already in the 4-level
            // format; only the four PDPTEs need a private level above them
            // (with R/W and U/S, which PAE PDPTEs lack). The CPU then walks
            // the guest's own PDs and PTs and sets their A/D bits itself.
            let base = (vm.cpu.cr3 & 0xFFFF_FFE0) as u64;
            for i in 0..4u64 {
                let e = vm.mem.read_u64(base + 8 * i);
                let addr = e & 0x000F_FFFF_FFFF_F000;
                let v = if e & pte::P == 0 || addr >= BASE {
                    0
                } else {
                    addr | dir | (e & (pte::PWT | pte::PCD))
                };
                self.put64(PDPT + 8 * i as usize, v);
            }
            self.fingerprint = Some(fp);
            return Ok(());
        }
        for i in 0..4 {
            self.put64(PDPT + 8 * i, (BASE + (PD0 + 0x1000 * i) as u64) | dir);
        }
        if !vm.cpu.paging() {
            // Protected mode without paging: linear = physical, all
            // accessible (2 MiB pages, A/D preset: nothing to copy back).
            for j in 0..2048usize {
                let e = ((j as u64) << 21) | pte::P | pte::RW | pte::US | pte::PS | pte::A | pte::D;
                self.put64(PD0 + 8 * j, e);
            }
            self.fingerprint = Some(fp);
            return Ok(());
        }
        // Page tables.
        let pse = vm.cpu.cr4 & cr4::PSE != 0;
        let pd_base = (vm.cpu.cr3 & 0xFFFF_F000) as u64;
        let mut next_pt = 0usize;
        for i in 0..1024u64 {
            let pde_addr = pd_base + 4 * i;
            let pde = vm.mem.read_u32(pde_addr);
            // Our two 2 MiB entries for guest PDE i.
            let j0 = 2 * i as usize;
            let ours = |j: usize| PD0 + 8 * j;
            if pde as u64 & pte::P == 0 {
                self.put64(ours(j0), 0);
                self.put64(ours(j0 + 1), 0);
                continue;
            }
            let perm = pde as u64 & (pte::RW | pte::US | pte::PWT | pte::PCD);
            let ad = pde as u64 & (pte::A | pte::D);
            if pse && pde as u64 & pte::PS != 0 {
                if pde & pte::PSE36_MASK != 0 {
                    self.put64(ours(j0), 0);
                    self.put64(ours(j0 + 1), 0);
                    continue;
                }
                let frame = (pde & 0xFFC0_0000) as u64;
                for h in 0..2 {
                    let e = (frame + ((h as u64) << 21)) | pte::P | pte::PS | perm | ad;
                    self.put64(ours(j0 + h), e);
                }
                if ad != pte::A | pte::D {
                    self.watches.push(Watch {
                        guest: pde_addr,
                        ours: [ours(j0), ours(j0 + 1)],
                        n: 2,
                        value: pde,
                    });
                }
                continue;
            }
            // A page table: two private tables of 512 entries each.
            if next_pt + 2 > PT_MAX {
                return Err("paging emulation: private page-table pool exhausted".into());
            }
            let pt_guest = (pde & 0xFFFF_F000) as u64;
            let mut raw = [0u8; 4096];
            vm.mem.read(pt_guest, &mut raw);
            for h in 0..2usize {
                let pt = PT_POOL + 0x1000 * next_pt;
                next_pt += 1;
                let e = (BASE + pt as u64) | pte::P | perm | (pde as u64 & pte::A);
                self.put64(ours(j0 + h), e);
                for k in 0..512usize {
                    let idx = h * 512 + k;
                    let g = u32::from_le_bytes([
                        raw[4 * idx],
                        raw[4 * idx + 1],
                        raw[4 * idx + 2],
                        raw[4 * idx + 3],
                    ]);
                    let v = if g as u64 & pte::P == 0 {
                        0
                    } else {
                        let bits = g as u64
                            & (pte::P | pte::RW | pte::US | pte::PWT | pte::PCD | pte::A | pte::D);
                        let e = (g & 0xFFFF_F000) as u64 | bits;
                        if g as u64 & (pte::A | pte::D) != pte::A | pte::D {
                            self.watches.push(Watch {
                                guest: pt_guest + 4 * idx as u64,
                                ours: [pt + 8 * k, 0],
                                n: 1,
                                value: g,
                            });
                        }
                        e
                    };
                    self.put64(pt + 8 * k, v);
                }
            }
            if pde as u64 & pte::A == 0 {
                self.watches.push(Watch {
                    guest: pde_addr,
                    ours: [ours(j0), ours(j0 + 1)],
                    n: 2,
                    value: pde,
                });
            }
        }
        self.fingerprint = Some(fp);
        Ok(())
    }

    /// Copy A/D bits the CPU set in our tables, and bytes it wrote into the
    /// GDT copy (accessed and busy bits), into guest memory.
    fn sync_back(&mut self, vm: &mut Vm) {
        for w in &self.watches {
            let mut set = 0u64;
            for &o in &w.ours[..w.n] {
                set |= self.get64(o) & (pte::A | pte::D);
            }
            let new = set & !(w.value as u64);
            if new != 0 {
                // Re-read: the guest may have rewritten the entry itself.
                let cur = vm.mem.read_u32(w.guest);
                if cur & !(pte::A | pte::D) as u32 == w.value & !(pte::A | pte::D) as u32 {
                    vm.mem.write_u32(w.guest, cur | new as u32);
                }
            }
        }
        for i in 0..self.gdt_len {
            let b = self.map[GDT + i];
            if b != self.gdt_snapshot[i] {
                vm.mem.write_u8(vm.cpu.gdtr.base as u64 + i as u64, b);
            }
        }
        vm.flush_watch_hits();
    }

    /// The system registers that run the guest under the private tables.
    fn sregs(&self, cpu: &CpuState, s: &mut kvm_sregs) {
        super::state::to_kvm_sregs(cpu, s);
        s.cr0 = (cpu.cr0 | cr0::PG | cr0::PE) as u64;
        s.cr3 = BASE + PML4 as u64;
        s.cr4 = (cpu.cr4 | cr4::PAE) as u64;
        s.efer = cpu.efer | EFER_LME | EFER_LMA;
        s.gdt.base = BASE + GDT as u64;
        s.gdt.limit = 0xFFFF;
        s.idt.base = BASE + IDT as u64;
        s.idt.limit = 0xFFF;
        s.tr.base = BASE + TSS as u64;
        s.tr.limit = TSS_LIMIT;
        s.tr.selector = SEL_TSS;
        s.tr.type_ = 0xB;
        s.tr.present = 1;
        s.tr.s = 0;
        s.tr.dpl = 0;
        s.tr.db = 0;
        s.tr.l = 0;
        s.tr.g = 0;
        s.tr.unusable = 0;
        // A 32-bit guest segment must not look like 64-bit code.
        s.cs.l = 0;
    }

    /// Read the vector and error code our handler left on the IST stack.
    fn trap_frame(&self) -> (u8, u32) {
        let err = self.get64(STACK_TOP - 48) as u32;
        let vec = self.get64(STACK_TOP - 56) as u8;
        (vec, err)
    }
}

/// This host's KVM shuts the guest down at a MOV to CR0 that turns paging
/// on. When the shutdown happened at such an instruction (paging
/// off, CS:EIP at `mov cr0, r32` whose value sets PG with PE), perform it
/// here and return true: the engine then goes on under paging emulation.
pub(super) fn complete_paging_enable(vm: &mut Vm) -> bool {
    if vm.cpu.paging() || vm.cpu.v86() || !vm.cpu.protected() {
        return false;
    }
    let lin = vm.cpu.seg(SegReg::Cs).base.wrapping_add(vm.cpu.eip);
    let mut buf = [0u8; 15];
    vm.mem.read(lin as u64, &mut buf);
    let bits = if vm.cpu.code32() { 32 } else { 16 };
    let ins = Decoder::with_ip(bits, &buf, vm.cpu.eip as u64, DecoderOptions::NONE).decode();
    if ins.code() != Code::Mov_cr_r32 || ins.op0_register() != Register::CR0 {
        return false;
    }
    let idx = (ins.op1_register() as u32).wrapping_sub(Register::EAX as u32) as usize;
    let Some(&val) = vm.cpu.gpr.get(idx) else {
        return false;
    };
    let val = val as u32;
    if val & cr0::PG == 0 || val & cr0::PE == 0 || val & !cr0::VALID != 0 {
        return false;
    }
    vm.cpu.cr0 = val | cr0::ET;
    vm.cpu.eip = if bits == 32 {
        ins.next_ip32()
    } else {
        ins.next_ip32() & 0xFFFF
    };
    vm.clock.retired += 1;
    true
}

/// Whether `pc` is in the handlers' common tail (the vector is pushed).
pub(super) fn at_common(pc: u64) -> bool {
    (BASE + COMMON as u64..BASE + COMMON as u64 + 4).contains(&pc)
}

/// Whether `run` with `budget` runs `c` as compatibility-mode code: always
/// under paging (2-level or PAE); for single steps in protected mode without
/// paging too (with identity tables), so that an exception delivery ends
/// the step exactly at the handler (KVM's own single-step runs the
/// handler's first instruction with it); with `always`
/// (`KvmEngine::hardware_protected_mode`) for every protected-mode run.
/// V86 and real mode never.
pub(super) fn compat_mode(c: &CpuState, budget: Budget, always: bool) -> bool {
    if !c.protected() || c.v86() {
        return false;
    }
    c.paging() || budget.instructions == 1 || always
}

/// Guest-physical address of `lin` under the guest's 2-level tables, or
/// None when not mapped. No A/D bits are set (this is only for decoding).
fn walk(vm: &mut Vm, lin: u32) -> Option<u64> {
    if vm.cpu.cr4 & cr4::PAE != 0 {
        return walk_pae(vm, lin);
    }
    let pde = vm
        .mem
        .read_u32((vm.cpu.cr3 & 0xFFFF_F000) as u64 + 4 * (lin >> 22) as u64);
    if pde & 1 == 0 {
        return None;
    }
    if vm.cpu.cr4 & cr4::PSE != 0 && pde as u64 & pte::PS != 0 {
        return Some(((pde & 0xFFC0_0000) | (lin & 0x3F_FFFF)) as u64);
    }
    let p = vm
        .mem
        .read_u32((pde & 0xFFFF_F000) as u64 + 4 * ((lin >> 12) & 0x3FF) as u64);
    if p & 1 == 0 {
        return None;
    }
    Some(((p & 0xFFFF_F000) | (lin & 0xFFF)) as u64)
}

/// EIP after `ins` in the current code size.
pub(super) fn next_eip(cpu: &CpuState, ins: &iced_x86::Instruction) -> u32 {
    if cpu.code32() {
        ins.next_ip32()
    } else {
        ins.next_ip32() & 0xFFFF
    }
}

/// Decode the instruction at CS:EIP without side effects: through the
/// guest's 2-level tables when `paged`, else linear = physical. Bytes that
/// are not mapped end the buffer early (the decode may then fail: None).
pub(super) fn decode_insn(vm: &mut Vm, paged: bool) -> Option<iced_x86::Instruction> {
    let cs = *vm.cpu.seg(SegReg::Cs);
    let eip = if vm.cpu.code32() {
        vm.cpu.eip
    } else {
        vm.cpu.eip & 0xFFFF
    };
    let lin = cs.base.wrapping_add(eip);
    let mut buf = [0u8; 15];
    let mut n = 0;
    while n < buf.len() {
        let l = lin.wrapping_add(n as u32);
        let p = if paged { walk(vm, l) } else { Some(l as u64) };
        let Some(p) = p else {
            break;
        };
        buf[n] = vm.mem.read_u8(p);
        n += 1;
    }
    let bits = if vm.cpu.code32() { 32 } else { 16 };
    let ins = Decoder::with_ip(bits, &buf[..n], eip as u64, DecoderOptions::NONE).decode();
    (ins.code() != Code::INVALID).then_some(ins)
}

/// `walk` for PAE tables (SDM Vol. 3 4.4).
fn walk_pae(vm: &mut Vm, lin: u32) -> Option<u64> {
    const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
    let pdpte = vm
        .mem
        .read_u64((vm.cpu.cr3 & 0xFFFF_FFE0) as u64 + 8 * (lin >> 30) as u64);
    if pdpte & pte::P == 0 {
        return None;
    }
    let pde = vm
        .mem
        .read_u64((pdpte & ADDR) + 8 * ((lin >> 21) & 0x1FF) as u64);
    if pde & pte::P == 0 {
        return None;
    }
    if pde & pte::PS != 0 {
        return Some((pde & ADDR & !0x1F_FFFF) | (lin & 0x1F_FFFF) as u64);
    }
    let p = vm
        .mem
        .read_u64((pde & ADDR) + 8 * ((lin >> 12) & 0x1FF) as u64);
    if p & pte::P == 0 {
        return None;
    }
    Some((p & ADDR) | (lin & 0xFFF) as u64)
}

/// Whether the instruction at CS:EIP must be interpreted rather than run
/// in compatibility mode (see the module doc). Port I/O at CPL > IOPL is
/// checked against the guest's TSS I/O bitmap, which the private TSS does
/// not have, so it is interpreted too.
fn needs_interpreter(cpu: &CpuState, ins: &iced_x86::Instruction) -> bool {
    let io = matches!(
        ins.mnemonic(),
        Mnemonic::In
            | Mnemonic::Out
            | Mnemonic::Insb
            | Mnemonic::Insw
            | Mnemonic::Insd
            | Mnemonic::Outsb
            | Mnemonic::Outsw
            | Mnemonic::Outsd
    );
    if io && cpu.cpl() > cpu.iopl() {
        return true;
    }
    matches!(
        ins.mnemonic(),
        Mnemonic::Lgdt
            | Mnemonic::Lidt
            | Mnemonic::Sgdt
            | Mnemonic::Sidt
            | Mnemonic::Lldt
            | Mnemonic::Ltr
            | Mnemonic::Int
            | Mnemonic::Int3
            | Mnemonic::Into
            | Mnemonic::Int1
            | Mnemonic::Sysenter
            | Mnemonic::Sysexit
            | Mnemonic::Rdmsr
            | Mnemonic::Wrmsr
            | Mnemonic::Cpuid
            | Mnemonic::Iret
            | Mnemonic::Iretd
            | Mnemonic::Lar
            | Mnemonic::Lsl
            | Mnemonic::Smsw
            | Mnemonic::Str
    ) || matches!(
        ins.code(),
        Code::Mov_r32_cr
            | Code::Mov_cr_r32
            | Code::Mov_r32_dr
            | Code::Mov_dr_r32
            | Code::Call_ptr1616
            | Code::Call_ptr1632
            | Code::Call_m1616
            | Code::Call_m1632
            | Code::Jmp_ptr1616
            | Code::Jmp_ptr1632
            | Code::Jmp_m1616
            | Code::Jmp_m1632
    )
}

/// Whether `ins` may change x87/MMX/SSE state (None: unknown, assume so).
fn touches_fpu(ins: Option<&iced_x86::Instruction>) -> bool {
    use iced_x86::CpuidFeature as F;
    let Some(ins) = ins else {
        return true;
    };
    matches!(ins.mnemonic(), Mnemonic::Wait | Mnemonic::Emms)
        || ins.cpuid_features().iter().any(|f| {
            matches!(
                f,
                F::FPU
                    | F::FPU287
                    | F::FPU287XL_ONLY
                    | F::FPU387
                    | F::FPU387SL_ONLY
                    | F::MMX
                    | F::SSE
                    | F::SSE2
                    | F::SSE3
                    | F::SSSE3
                    | F::SSE4_1
                    | F::SSE4_2
                    | F::FXSR
                    | F::XSAVE
                    | F::AVX
            )
        })
}

/// Whether `ins` can leave an interrupt shadow (SDM Vol. 3 6.8.3).
fn makes_shadow(ins: Option<&iced_x86::Instruction>) -> bool {
    let Some(ins) = ins else {
        return true;
    };
    ins.mnemonic() == Mnemonic::Sti
        || (matches!(ins.mnemonic(), Mnemonic::Mov | Mnemonic::Pop)
            && ins.op0_kind() == iced_x86::OpKind::Register
            && ins.op0_register() == Register::SS)
}

impl KvmEngine {
    /// After a compatibility-mode step: read back only what the step can
    /// have changed beyond the registers (the caller stored those).
    fn store_compat(
        &mut self,
        cpu: &mut CpuState,
        ins: Option<&iced_x86::Instruction>,
    ) -> Result<(), kvm_ioctls::Error> {
        if touches_fpu(ins) {
            self.get_fpu_state(cpu)?;
        }
        cpu.interrupt_shadow = if makes_shadow(ins) {
            self.vcpu.get_vcpu_events()?.interrupt.shadow != 0
        } else {
            false
        };
        self.known = Some(cpu.clone());
        Ok(())
    }

    /// Run a guest with 2-level paging, one instruction per KVM entry (see
    /// the module doc).
    pub(super) fn run_paged(&mut self, vm: &mut Vm, budget: Budget, done: &mut u64) -> Seg {
        if let Err(e) = self.set_stepping(super::StepMode::Step) {
            return Seg::Exit(Exit::Error(e.to_string()));
        }
        self.watchdog.arm(self.time_limit_for(budget, true));
        let exit = loop {
            if *done >= budget.instructions {
                break Exit::BudgetSpent;
            }
            if self.watchdog.fired() {
                self.stats.timeouts += 1;
                self.last_exit = "timeout (wall-clock limit)".into();
                break Exit::BudgetSpent;
            }
            if !compat_mode(&vm.cpu, budget, self.hardware_protected_mode) {
                // The guest left 2-level paging: go on in the normal path.
                self.watchdog.disarm();
                return Seg::Again;
            }
            if vm.cpu.halted {
                break Exit::Halted;
            }
            match self.paged_step(vm) {
                Ok(None) => *done += 1,
                Ok(Some(e)) => break e,
                Err(e) => {
                    self.last_exit = e.clone();
                    break Exit::Error(e);
                }
            }
        };
        self.watchdog.disarm();
        self.paging.active = false;
        vm.mmu.flush_all(&vm.cpu);
        Seg::Exit(exit)
    }

    /// One instruction (or one exception delivery) of a 2-level paging
    /// guest. `Ok(None)` when it retired and the guest goes on.
    pub(super) fn paged_step(&mut self, vm: &mut Vm) -> Result<Option<Exit>, String> {
        let ins = decode_insn(vm, vm.cpu.paging());
        if ins.as_ref().is_some_and(|i| needs_interpreter(&vm.cpu, i)) {
            self.last_exit = "interpreted (compatibility-mode sensitive)".into();
            return Ok(match self.interp.step(vm) {
                Step::Retired => None,
                Step::Halted => Some(Exit::Halted),
                Step::Shutdown(r) => Some(Exit::Shutdown(r)),
            });
        }
        self.paging.build(vm)?;
        let mut sregs = match self.sregs_cache.take() {
            Some(s) => s,
            None => self.get_sregs().map_err(|e| e.to_string())?,
        };
        self.paging.sregs(&vm.cpu, &mut sregs);
        let hlt_next = ins
            .filter(|i| i.mnemonic() == Mnemonic::Hlt)
            .map(|i| next_eip(&vm.cpu, &i));
        let mut rep = match ins.and_then(|i| super::rep::prepare(vm, &i, next_eip(&vm.cpu, &i))) {
            Some(super::rep::Rep::Skip(next)) => {
                super::rep::skip(vm, next);
                self.last_exit = "rep with count 0 (skipped)".into();
                return Ok(None);
            }
            Some(super::rep::Rep::Fix(f)) => Some(f),
            None => None,
        };
        if let Err(e) = self.load_with_sregs(&vm.cpu, &sregs) {
            if let Some(r) = rep.take() {
                r.restore(vm);
            }
            return Err(e.to_string());
        }
        self.paging.active = true;
        let mut n = 0;
        let end = self.enter(vm, 1, &mut n);
        self.complete_pending_io();
        self.paging.active = false;
        match end {
            End::PrivateTrap => {
                // The instruction faulted: the guest state is the one we
                // loaded (nothing committed), plus CR2 for a #PF.
                let s = self.get_sregs().map_err(|e| e.to_string())?;
                self.paging.sync_back(vm);
                let (vector, code) = self.paging.trap_frame();
                let cr2 = s.cr2 as u32;
                let fault = Fault {
                    vector,
                    error_code: has_error_code(vector).then_some(code),
                    cr2: (vector == umbra_core::exception::vector::PF).then_some(cr2),
                };
                if let Some(a) = fault.cr2 {
                    vm.cpu.cr2 = a;
                }
                if let Some(r) = rep.take() {
                    r.finish(vm, true);
                }
                self.stats.converted_exceptions += 1;
                self.last_exit = format!("exception {fault} converted");
                vm.clock.retired += 1;
                Ok(match interrupt::deliver_exception(vm, fault) {
                    Ok(()) => None,
                    Err(r) => Some(Exit::Shutdown(r)),
                })
            }
            End::Budget | End::Halted | End::Timeout | End::Caught => {
                let regs = self.get_regs().map_err(|e| e.to_string())?;
                let s = self.get_sregs().map_err(|e| e.to_string())?;
                self.sregs_cache = Some(s);
                self.paging.sync_back(vm);
                super::state::from_kvm_regs(&mut vm.cpu, &regs);
                let keep = vm.cpu.clone();
                super::state::from_kvm_sregs(&mut vm.cpu, &s);
                // The guest's own view of what we replaced.
                vm.cpu.cr3 = keep.cr3;
                vm.cpu.cr4 = keep.cr4;
                vm.cpu.efer = keep.efer;
                vm.cpu.gdtr = keep.gdtr;
                vm.cpu.idtr = keep.idtr;
                vm.cpu.tr = keep.tr;
                vm.cpu.cr0 = (s.cr0 as u32 & !cr0::PG) | (keep.cr0 & cr0::PG);
                self.store_compat(&mut vm.cpu, ins.as_ref())
                    .map_err(|e| e.to_string())?;
                if let Some(r) = rep.take() {
                    r.finish(vm, false);
                }
                // A HLT retires as this step (the single-stepped HLT ends
                // with a debug exit); the run loop then returns Halted when
                // budget remains, as the interpreter does.
                if matches!(end, End::Halted) || hlt_next == Some(vm.cpu.eip) {
                    vm.cpu.halted = true;
                }
                match end {
                    End::Timeout => Ok(Some(Exit::BudgetSpent)),
                    _ => Ok(None),
                }
            }
            End::Shutdown => Ok(Some(Exit::Shutdown(
                umbra_core::engine::ShutdownReason::TripleFault,
            ))),
            End::EmuFail(why) => {
                // This host's KVM turned the instruction over to its
                // emulator even in compatibility mode (seen with x87
                // arithmetic) and the emulator gave up: the instruction did
                // nothing, so the interpreter runs it.
                if let Some(r) = rep.take() {
                    r.restore(vm);
                }
                self.stats.emulation_fallbacks += 1;
                self.last_exit = format!("{why}; interpreted");
                Ok(match self.interp.step(vm) {
                    Step::Retired => None,
                    Step::Halted => Some(Exit::Halted),
                    Step::Shutdown(r) => Some(Exit::Shutdown(r)),
                })
            }
            End::Error(s) => Err(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_core::mem::GuestMemory;

    fn vm_2level() -> Vm {
        let mut vm = Vm::new(GuestMemory::new(0x40_0000).unwrap());
        vm.cpu.cr0 |= cr0::PE | cr0::PG;
        vm.cpu.cr4 |= cr4::PSE;
        vm.cpu.cr3 = 0x10000;
        vm.cpu.gdtr.base = 0x800;
        vm.cpu.gdtr.limit = 0x17;
        // PDE 0 -> PT 0x11000 (user, read-only); PDE 2 a 4 MiB page at
        // 12 MiB (supervisor, writable); PDE 3 a PSE-36 page.
        vm.mem.write_u32(0x10000, 0x11000 | 0x5);
        vm.mem.write_u32(0x10008, 0x00C0_0000 | 0x83);
        vm.mem.write_u32(0x1000C, 0x00C0_0000 | 0x83 | (1 << 13));
        // PTE 1: page 0x5000, user, writable, accessed; PTE 2: not present.
        vm.mem.write_u32(0x11004, 0x5000 | 0x27);
        vm.mem.write_u32(0x11008, 0x6000);
        vm.mem.write_u64(0x808, 0x00CF_9A00_0000_FFFF);
        vm
    }

    #[test]
    fn private_tables_mirror_the_guest() {
        let mut vm = vm_2level();
        let mut p = Private::new().unwrap();
        p.build(&mut vm).unwrap();
        // PD entries 0 and 1 (2 MiB each) point at private PTs, keeping
        // the guest PDE's U/S and R/W.
        let pd0 = p.get64(PD0);
        assert_eq!(
            pd0 & (pte::P | pte::RW | pte::US | pte::PS),
            pte::P | pte::US
        );
        let pt = (pd0 & !0xFFF) - BASE;
        assert_eq!(p.get64(pt as usize + 8), 0x5000 | 0x27);
        assert_eq!(p.get64(pt as usize + 16), 0);
        // Guest PDE 2 -> our 2 MiB entries 4 and 5 at 12 MiB and 14 MiB.
        assert_eq!(p.get64(PD0 + 8 * 4), 0x00C0_0000 | 0x83);
        assert_eq!(p.get64(PD0 + 8 * 5), 0x00E0_0000 | 0x83);
        // PSE-36 bits: left unmapped.
        assert_eq!(p.get64(PD0 + 8 * 6), 0);
        // GDT copied, engine descriptors on top.
        assert_eq!(p.get64(GDT + 8), 0x00CF_9A00_0000_FFFF);
        assert_eq!(p.get64(GDT + SEL_CODE64 as usize) >> 40 & 0xFF, 0x9B);
        // Unchanged guest state: the fingerprint says so.
        let fp = p.fingerprint.clone();
        p.build(&mut vm).unwrap();
        assert_eq!(p.fingerprint, fp);
    }

    #[test]
    fn accessed_and_dirty_bits_flow_back() {
        let mut vm = vm_2level();
        let mut p = Private::new().unwrap();
        p.build(&mut vm).unwrap();
        let pt = ((p.get64(PD0) & !0xFFF) - BASE) as usize;
        // The CPU sets D on PTE 1 and A on the (4 KiB-page) PDE 0.
        p.put64(pt + 8, p.get64(pt + 8) | pte::D);
        p.put64(PD0, p.get64(PD0) | pte::A);
        p.sync_back(&mut vm);
        assert_eq!(vm.mem.read_u32(0x11004), 0x5000 | 0x67);
        assert_eq!(vm.mem.read_u32(0x10000), 0x11000 | 0x25);
    }

    #[test]
    fn handlers_push_the_vector() {
        let p = Private::new().unwrap();
        // #PF (14) has an error code: push imm32 14; jmp common.
        let s = STUBS + 14 * STUB_SIZE;
        assert_eq!(&p.map[s..s + 5], &[0x68, 14, 0, 0, 0]);
        // #UD (6) has none: push 0 first.
        let s = STUBS + 6 * STUB_SIZE;
        assert_eq!(&p.map[s..s + 7], &[0x6A, 0, 0x68, 6, 0, 0, 0]);
        assert!(at_common(BASE + COMMON as u64));
    }
}
