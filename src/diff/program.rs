//! A differential test case (`Program`) and the guest memory it runs in.
//!
//! A program is a mode, code bytes, initial registers and the contents of
//! a data area. `Program::build_vm` lays out guest memory for the mode from
//! Rust: GDT with flat 16/32-bit code and data segments, an IDT (or the
//! real-mode IVT) whose every vector points to its own one-byte `HLT` stub,
//! a stack, the code, the data area and, in `paging` mode, 2-level page
//! tables that map everything identity with some data pages not present,
//! read-only or user-only so that #PF happens mid-stream.
//!
//! Since each vector has its own stub, the final EIP (stub + vector + 1)
//! says which exception ended the program; the exception frame on the
//! stack holds the faulting EIP and error code, and CR2 the #PF address.
//!
//! It does not generate programs (`gen`) nor run them (`runner`).

use std::fmt;

use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use umbra_core::cpu::{attr, cr0, DescTable, Segment, EBX, ESP};
use umbra_core::mem::GuestMemory;
use umbra_core::Vm;

/// The guest memory map every program runs in (all modes; physical =
/// linear, paging maps identity).
pub mod layout {
    /// Real-mode interrupt vector table (256 far pointers).
    pub const IVT_BASE: u32 = 0x0000;
    /// Global descriptor table (see `sel` for its entries).
    pub const GDT_BASE: u32 = 0x1000;
    /// Interrupt descriptor table, 256 gates.
    pub const IDT_BASE: u32 = 0x2000;
    /// One `HLT` byte per vector: vector v halts at `STUB_BASE + v`.
    pub const STUB_BASE: u32 = 0x3000;
    /// Page directory (paging mode); never compared.
    pub const PD_BASE: u32 = 0x4000;
    /// The one page table (maps 0-4 MiB); never compared.
    pub const PT_BASE: u32 = 0x5000;
    /// Stack page.
    pub const STACK_BASE: u32 = 0x8000;
    pub const STACK_SIZE: u32 = 0x1000;
    /// Initial ESP: some room above for pops the program did not push.
    pub const STACK_INIT: u32 = 0x8F00;
    /// Code: the program starts here.
    pub const CODE_BASE: u32 = 0x1_0000;
    /// Largest program.
    pub const CODE_MAX: u32 = 0x8000;
    /// Data area that memory operands address through the base register.
    pub const DATA_BASE: u32 = 0x2_0000;
    /// Four pages; in paging mode pages 1-3 get random attributes.
    pub const DATA_SIZE: u32 = 0x4000;
    /// Offset of the base register's value inside the data area.
    pub const DATA_PTR: u32 = 0x800;
    /// Guest RAM.
    pub const RAM_SIZE: u64 = 0x20_0000;
}

/// GDT selectors.
pub mod sel {
    /// Flat 32-bit code, base 0, limit 4 GiB.
    pub const CODE32: u16 = 0x08;
    /// Flat 32-bit data, base 0, limit 4 GiB, big.
    pub const DATA32: u16 = 0x10;
    /// 16-bit code, base 0, limit 64 KiB (prot16 exception stubs with
    /// 16-bit gates).
    pub const CODE16_LOW: u16 = 0x18;
    /// 16-bit data, base 0, limit 64 KiB (prot16 stack).
    pub const DATA16_LOW: u16 = 0x20;
    /// 16-bit code, base CODE_BASE (prot16 program).
    pub const CODE16: u16 = 0x28;
    /// 16-bit data, base DATA_BASE (prot16 DS/ES/FS/GS).
    pub const DATA16: u16 = 0x30;
    /// Number of GDT entries (including the null one).
    pub const COUNT: usize = 7;
}

/// Page-table entry bits (SDM Vol. 3 4.3, Table 4-6).
pub mod pte {
    /// Present.
    pub const P: u32 = 1 << 0;
    /// Writable.
    pub const RW: u32 = 1 << 1;
    /// User accessible.
    pub const US: u32 = 1 << 2;
    /// The bits a generator may vary.
    pub const VARIABLE: u32 = P | RW | US;
}

/// Real-mode segment values.
pub mod real_seg {
    /// CS: the program starts at CS:0.
    pub const CODE: u16 = (super::layout::CODE_BASE >> 4) as u16;
    /// DS/ES/FS/GS: the data area.
    pub const DATA: u16 = (super::layout::DATA_BASE >> 4) as u16;
    /// IVT segment of the HLT stubs.
    pub const STUB: u16 = (super::layout::STUB_BASE >> 4) as u16;
}

/// The CPU mode a program runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Mode {
    /// Real mode, 16-bit code, IVT.
    Real,
    /// Protected mode, 16-bit code and stack.
    Prot16,
    /// Protected mode, flat 32-bit segments.
    Prot32,
    /// Protected mode with 2-level paging (identity map, some data pages
    /// not present / read-only / user-only), flat 32-bit segments.
    Paging,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Real, Mode::Prot16, Mode::Prot32, Mode::Paging];

    /// Default operand/address size of the code.
    pub fn bitness(self) -> u32 {
        match self {
            Mode::Real | Mode::Prot16 => 16,
            Mode::Prot32 | Mode::Paging => 32,
        }
    }

    /// Linear address of the first code byte.
    pub fn code_start(self) -> u32 {
        layout::CODE_BASE
    }

    /// Initial EIP (relative to CS base).
    pub fn entry_eip(self) -> u32 {
        match self {
            Mode::Real | Mode::Prot16 => 0,
            Mode::Prot32 | Mode::Paging => layout::CODE_BASE,
        }
    }

    /// Value of the data base register (EBX): the data pointer as an offset
    /// from DS base.
    pub fn data_ptr(self) -> u32 {
        match self {
            Mode::Real | Mode::Prot16 => layout::DATA_PTR,
            Mode::Prot32 | Mode::Paging => layout::DATA_BASE + layout::DATA_PTR,
        }
    }

    /// Offset from DS base of the data area's first byte.
    pub fn data_offset(self) -> u32 {
        self.data_ptr() - layout::DATA_PTR
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Real => "real",
            Mode::Prot16 => "prot16",
            Mode::Prot32 => "prot32",
            Mode::Paging => "paging",
        })
    }
}

/// One test case, ready to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub mode: Mode,
    /// Code bytes at `layout::CODE_BASE`; should end with HLT.
    pub code: Vec<u8>,
    /// Initial EAX..EDI. EBX (the data pointer) and ESP are set by
    /// `build_vm` whatever this says.
    pub gpr: [u32; 8],
    /// Initial EFLAGS (bit 1 is forced on, TF/IF/VM off).
    pub eflags: u32,
    /// Contents of the data area (`layout::DATA_SIZE` bytes, shorter is
    /// zero-padded).
    pub data: Vec<u8>,
    /// Paging mode: PTE bits (`pte::VARIABLE`) of data pages 1-3; page 0
    /// is always present and writable.
    pub data_pages: [u32; 3],
    /// Paging mode: CR0.WP (supervisor writes honour read-only pages).
    pub wp: bool,
    /// prot16: deliver exceptions through 16-bit interrupt gates (16-bit
    /// frames) instead of 32-bit ones.
    pub gate16: bool,
    /// The seed `data` was filled from (`fill_data`), if it was.
    pub data_seed: Option<u64>,
    /// Instructions the generator emitted (for statistics only).
    pub insns: usize,
}

/// Failure to lay out a program.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("program is {0} bytes, the code area holds {max}", max = layout::CODE_MAX)]
    TooLong(usize),
    #[error("cannot allocate guest memory: {0}")]
    Memory(String),
}

impl Program {
    /// A program with zeroed registers (EFLAGS = 2) and data.
    pub fn new(mode: Mode, code: Vec<u8>) -> Self {
        Program {
            mode,
            code,
            gpr: [0; 8],
            eflags: umbra_core::cpu::FIXED1,
            data: Vec::new(),
            data_pages: [pte::P | pte::RW; 3],
            wp: true,
            gate16: false,
            data_seed: None,
            insns: 0,
        }
    }

    /// A fresh `Vm` with this program loaded and the CPU at its entry.
    pub fn build_vm(&self) -> Result<Vm, LayoutError> {
        if self.code.len() > layout::CODE_MAX as usize {
            return Err(LayoutError::TooLong(self.code.len()));
        }
        let mem =
            GuestMemory::new(layout::RAM_SIZE).map_err(|e| LayoutError::Memory(e.to_string()))?;
        let mut vm = Vm::new(mem);
        self.write_tables(&mut vm);
        vm.mem.write(layout::CODE_BASE as u64, &self.code);
        let n = self.data.len().min(layout::DATA_SIZE as usize);
        vm.mem.write(layout::DATA_BASE as u64, &self.data[..n]);
        self.set_cpu(&mut vm);
        Ok(vm)
    }

    fn write_tables(&self, vm: &mut Vm) {
        // HLT stubs: one byte per vector.
        vm.mem.write(layout::STUB_BASE as u64, &[HLT; 256]);
        // Real-mode IVT: vector v -> STUB_SEG:v.
        for v in 0..256u32 {
            let entry = ((real_seg::STUB as u32) << 16) | v;
            vm.mem.write_u32((layout::IVT_BASE + 4 * v) as u64, entry);
        }
        for (i, &(lo, hi)) in gdt_entries().iter().enumerate() {
            let at = (layout::GDT_BASE + 8 * i as u32) as u64;
            vm.mem.write_u32(at, lo);
            vm.mem.write_u32(at + 4, hi);
        }
        // IDT: 32-bit interrupt gates (DPL 0, present) to the stubs in
        // the flat 32-bit code segment, in prot16 too: 16-bit code taking
        // exceptions through 32-bit gates pushes a 32-bit frame on its
        // 16-bit stack (SDM Vol. 3 6.12.1). `Program::gate16` selects
        // 16-bit gates into a 16-bit code segment instead.
        let (gate_type, cs) = if self.mode == Mode::Prot16 && self.gate16 {
            (GATE_INT16, sel::CODE16_LOW)
        } else {
            (GATE_INT32, sel::CODE32)
        };
        for v in 0..256u32 {
            let off = layout::STUB_BASE + v;
            let lo = (off & 0xFFFF) | ((cs as u32) << 16);
            let hi = (off & 0xFFFF_0000) | GATE_P | gate_type;
            let at = (layout::IDT_BASE + 8 * v) as u64;
            vm.mem.write_u32(at, lo);
            vm.mem.write_u32(at + 4, hi);
        }
        if self.mode == Mode::Paging {
            self.write_page_tables(vm);
        }
    }

    /// Identity-map the system pages, stack, code and data; data pages 1-3
    /// get the program's attributes.
    fn write_page_tables(&self, vm: &mut Vm) {
        let sup = pte::P | pte::RW;
        let mut map = |page: u32, flags: u32| {
            let at = (layout::PT_BASE + 4 * (page >> 12)) as u64;
            vm.mem.write_u32(at, (page & !0xFFF) | flags);
        };
        for page in (layout::GDT_BASE..layout::PD_BASE).step_by(0x1000) {
            map(page, sup);
        }
        map(layout::STACK_BASE, sup);
        for page in (layout::CODE_BASE..layout::CODE_BASE + layout::CODE_MAX).step_by(0x1000) {
            map(page, sup);
        }
        map(layout::DATA_BASE, sup);
        for (i, &f) in self.data_pages.iter().enumerate() {
            map(
                layout::DATA_BASE + 0x1000 * (i as u32 + 1),
                f & pte::VARIABLE,
            );
        }
        vm.mem.write_u32(
            layout::PD_BASE as u64,
            layout::PT_BASE | pte::P | pte::RW | pte::US,
        );
    }

    fn set_cpu(&self, vm: &mut Vm) {
        let cpu = &mut vm.cpu;
        for (i, &v) in self.gpr.iter().enumerate() {
            cpu.gpr[i] = v as u64;
        }
        cpu.gpr[EBX] = self.mode.data_ptr() as u64;
        cpu.gpr[ESP] = layout::STACK_INIT as u64;
        cpu.eflags = (self.eflags & EFLAGS_PROGRAM) | umbra_core::cpu::FIXED1;
        // The x87 state FNINIT leaves (what an OS gives a process: all
        // exceptions masked), so x87 code runs as in user programs; FLDCW
        // from the random data unmasks some.
        cpu.fpu.fcw = 0x037F;
        cpu.gdtr = DescTable {
            base: layout::GDT_BASE,
            limit: (8 * sel::COUNT - 1) as u16,
        };
        cpu.cr2 = 0;
        cpu.cr3 = 0;
        cpu.cr4 = 0;
        let gdt = gdt_entries();
        let load = |s: u16| {
            let (lo, hi) = gdt[(s >> 3) as usize];
            Segment::from_descriptor(s, lo, hi)
        };
        let segs: [Segment; 6] = match self.mode {
            Mode::Real => {
                cpu.cr0 = cr0::ET;
                cpu.idtr = DescTable {
                    base: layout::IVT_BASE,
                    limit: 0x3FF,
                };
                let d = Segment::real(real_seg::DATA);
                let mut c = Segment::real(real_seg::CODE);
                c.attr |= attr::CODE;
                // ES, CS, SS, DS, FS, GS
                [d, c, Segment::real(0), d, d, d]
            }
            Mode::Prot16 => {
                cpu.cr0 = cr0::ET | cr0::PE;
                let d = load(sel::DATA16);
                [d, load(sel::CODE16), load(sel::DATA16_LOW), d, d, d]
            }
            Mode::Prot32 | Mode::Paging => {
                cpu.cr0 = cr0::ET | cr0::PE;
                if self.mode == Mode::Paging {
                    cpu.cr0 |= cr0::PG | if self.wp { cr0::WP } else { 0 };
                    cpu.cr3 = layout::PD_BASE;
                }
                let d = load(sel::DATA32);
                [d, load(sel::CODE32), d, d, d, d]
            }
        };
        if self.mode != Mode::Real {
            cpu.idtr = DescTable {
                base: layout::IDT_BASE,
                limit: 0x7FF,
            };
        }
        cpu.seg = segs;
        cpu.eip = self.mode.entry_eip();
        cpu.halted = false;
        let cpu_snapshot = cpu.clone();
        vm.mmu.set_cr3(&cpu_snapshot);
        vm.mmu.flush_all(&cpu_snapshot);
    }

    /// Fill the data area from `seed` (a xorshift64* stream), as random
    /// programs do.
    pub fn fill_data(&mut self, seed: u64) {
        let mut data = vec![0u8; layout::DATA_SIZE as usize];
        let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
        for chunk in data.chunks_mut(8) {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let v = s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        self.data = data;
        self.data_seed = Some(seed);
    }

    /// The `umbra diff` options that rebuild this program (with --code),
    /// when its data is empty or came from a seed.
    pub fn rerun_args(&self) -> Option<String> {
        if self.data_seed.is_none() && self.data.iter().any(|&b| b != 0) {
            return None;
        }
        let regs: Vec<String> = self.gpr.iter().map(|r| format!("{r:x}")).collect();
        let mut s = format!(
            "--mode {} --code {} --regs {} --eflags {:x}",
            self.mode,
            hex(&self.code).replace(' ', ""),
            regs.join(","),
            self.eflags
        );
        if let Some(seed) = self.data_seed {
            s.push_str(&format!(" --data-seed {seed}"));
        }
        if self.mode == Mode::Paging {
            let p: Vec<String> = self.data_pages.iter().map(|v| v.to_string()).collect();
            s.push_str(&format!(" --data-pages {}", p.join(",")));
            if !self.wp {
                s.push_str(" --no-wp");
            }
        }
        if self.gate16 {
            s.push_str(" --gate16");
        }
        Some(s)
    }

    /// Disassembly of the code, one instruction a line with address and
    /// bytes.
    pub fn listing(&self) -> String {
        disassemble(self.mode, &self.code)
    }
}

/// `HLT`.
pub const HLT: u8 = 0xF4;
/// IDT gate: present.
const GATE_P: u32 = 1 << 15;
/// IDT gate type: 16-bit interrupt gate.
const GATE_INT16: u32 = 0x6 << 8;
/// IDT gate type: 32-bit interrupt gate.
const GATE_INT32: u32 = 0xE << 8;
/// EFLAGS bits a program may start with: the status flags and DF.
pub const EFLAGS_PROGRAM: u32 = umbra_core::cpu::STATUS | umbra_core::cpu::DF;

/// The GDT as (low, high) dwords, indexed by selector >> 3. Accessed bits
/// are preset so that no segment load writes the table.
fn gdt_entries() -> [(u32, u32); sel::COUNT] {
    const DATA: u32 = 0x93; // present, DPL 0, data read/write, accessed
    const CODE: u32 = 0x9B; // present, DPL 0, code execute/read, accessed
    const BIG_4K: u32 = 0xC; // G=1, D/B=1
    [
        (0, 0),
        descriptor(0, 0xF_FFFF, CODE, BIG_4K),
        descriptor(0, 0xF_FFFF, DATA, BIG_4K),
        descriptor(0, 0xFFFF, CODE, 0),
        descriptor(0, 0xFFFF, DATA, 0),
        descriptor(layout::CODE_BASE, 0xFFFF, CODE, 0),
        descriptor(layout::DATA_BASE, 0xFFFF, DATA, 0),
    ]
}

/// Encode a code/data descriptor (SDM Vol. 3 3.4.5, Figure 3-8).
fn descriptor(base: u32, limit: u32, access: u32, flags: u32) -> (u32, u32) {
    let lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16);
    let hi = ((base >> 16) & 0xFF)
        | (access << 8)
        | (limit & 0xF_0000)
        | (flags << 20)
        | (base & 0xFF00_0000);
    (lo, hi)
}

/// Disassemble `code` as it sits at `CODE_BASE` in `mode`.
pub fn disassemble(mode: Mode, code: &[u8]) -> String {
    let ip = mode.entry_eip() as u64;
    let mut dec = Decoder::with_ip(mode.bitness(), code, ip, DecoderOptions::NONE);
    let mut fmt = IntelFormatter::new();
    let mut out = String::new();
    let mut text = String::new();
    while dec.can_decode() {
        let ins = dec.decode();
        text.clear();
        fmt.format(&ins, &mut text);
        let start = (ins.ip() - ip) as usize;
        let bytes = &code[start..start + ins.len()];
        out.push_str(&format!(
            "  {:08x}  {:<30} {}\n",
            ins.ip(),
            hex(bytes),
            text
        ));
    }
    out
}

/// Bytes as space-separated hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_core::cpu::SegReg;

    #[test]
    fn descriptor_round_trips_through_the_segment_cache() {
        // Flat 4 GiB code: limit 0xFFFFF pages -> 0xFFFFFFFF bytes.
        let (lo, hi) = descriptor(0, 0xF_FFFF, 0x9B, 0xC);
        assert_eq!((lo, hi), (0x0000_FFFF, 0x00CF_9B00));
        let s = Segment::from_descriptor(8, lo, hi);
        assert_eq!(s.limit, 0xFFFF_FFFF);
        assert!(s.big() && s.is_code());
        let (lo, hi) = descriptor(0x2_0000, 0xFFFF, 0x93, 0);
        let s = Segment::from_descriptor(0x30, lo, hi);
        assert_eq!((s.base, s.limit, s.big()), (0x2_0000, 0xFFFF, false));
    }

    #[test]
    fn vm_layout_per_mode() {
        for mode in Mode::ALL {
            let p = Program::new(mode, vec![HLT]);
            let mut vm = p.build_vm().unwrap();
            let cs = vm.cpu.seg[SegReg::Cs as usize];
            assert_eq!(cs.base.wrapping_add(vm.cpu.eip), layout::CODE_BASE);
            let ds = vm.cpu.seg[SegReg::Ds as usize];
            assert_eq!(
                ds.base.wrapping_add(vm.cpu.gpr[EBX] as u32),
                layout::DATA_BASE + layout::DATA_PTR
            );
            assert_eq!(vm.mem.read_u8(layout::CODE_BASE as u64), HLT);
            assert_eq!(vm.mem.read_u8((layout::STUB_BASE + 14) as u64), HLT);
            assert_eq!(vm.cpu.code32(), mode.bitness() == 32);
        }
    }

    #[test]
    fn page_tables_map_data_pages_with_given_attributes() {
        let mut p = Program::new(Mode::Paging, vec![HLT]);
        p.data_pages = [0, pte::P, pte::P | pte::RW | pte::US];
        let mut vm = p.build_vm().unwrap();
        let pte_of =
            |vm: &mut Vm, lin: u32| vm.mem.read_u32((layout::PT_BASE + 4 * (lin >> 12)) as u64);
        assert_eq!(pte_of(&mut vm, layout::DATA_BASE), layout::DATA_BASE | 3);
        assert_eq!(pte_of(&mut vm, layout::DATA_BASE + 0x1000), 0x21000);
        assert_eq!(pte_of(&mut vm, layout::DATA_BASE + 0x2000), 0x22001);
        assert_eq!(pte_of(&mut vm, layout::DATA_BASE + 0x3000), 0x23007);
        assert_eq!(pte_of(&mut vm, 0), 0, "page 0 stays unmapped");
        assert_eq!(vm.cpu.cr0 & (cr0::PG | cr0::WP), cr0::PG | cr0::WP);
    }
}
