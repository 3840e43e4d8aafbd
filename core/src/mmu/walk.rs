//! The guest page walk (Intel SDM Vol. 3 chapter 4): 32-bit 2-level
//! paging with 4 MiB pages under CR4.PSE (no PSE-36), and PAE paging with
//! the four PDPTE registers, 2 MiB pages and NX under EFER.NXE.
//!
//! It owns the translation of one linear address for one access: reading
//! the entries, the reserved-bit checks, the access-rights rules of SDM
//! 4.6, the #PF error code of SDM 4.7 and the accessed/dirty updates of
//! SDM 4.8. It caches nothing: the shadow (`shadow.rs`) keeps the results,
//! and `Mmu` holds the PDPTE registers that `load_pdptes` fills at MOV CR3.

use crate::cpu::regs::{cr0, cr4, efer};
use crate::exception::{pf, Fault};
use crate::mem::GuestMemory;

use super::Access;

/// Physical-address width this CPU reports (CPUID 8000_0008h EAX[7:0]).
pub const MAXPHYADDR: u32 = 36;

/// Paging-structure entry bits common to every format (SDM Vol. 3 4.3,
/// 4.4).
pub mod pte {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Read/write: 0 makes the region read-only.
    pub const RW: u64 = 1 << 1;
    /// User/supervisor: 0 makes the region supervisor-only.
    pub const US: u64 = 1 << 2;
    /// Page-level write-through.
    pub const PWT: u64 = 1 << 3;
    /// Page-level cache disable.
    pub const PCD: u64 = 1 << 4;
    /// Accessed: set by the walk on every entry it uses.
    pub const A: u64 = 1 << 5;
    /// Dirty: set in the entry that maps the page on a write.
    pub const D: u64 = 1 << 6;
    /// Page size (in a PDE): the entry maps a 4 MiB / 2 MiB page.
    pub const PS: u64 = 1 << 7;
    /// Global (in an entry that maps a page, with CR4.PGE).
    pub const G: u64 = 1 << 8;
    /// Execute-disable (PAE with EFER.NXE; reserved otherwise).
    pub const XD: u64 = 1 << 63;
}

/// Bits 21:13 of a 32-bit PDE mapping a 4 MiB page: reserved on a CPU
/// without PSE-36 (SDM Vol. 3 4.3, Table 4-4).
const PDE4M_RSVD: u64 = 0x003F_E000;
/// Bits 20:13 of a PAE PDE mapping a 2 MiB page (SDM Vol. 3 Table 4-9).
const PDE2M_RSVD: u64 = 0x001F_E000;
/// Bits 62:MAXPHYADDR of a PAE entry.
const PAE_HIGH_RSVD: u64 = ((1u64 << 63) - 1) & !((1u64 << MAXPHYADDR) - 1);
/// Address field of a PAE entry, bits MAXPHYADDR-1:12.
const PAE_ADDR: u64 = ((1u64 << MAXPHYADDR) - 1) & !0xFFF;
/// PDPTE bits reserved under PAE paging: 2:1, 8:5 and 63:MAXPHYADDR
/// (SDM Vol. 3 Table 4-8).
pub const PDPTE_RSVD: u64 = 0x1E6 | PAE_HIGH_RSVD | pte::XD;
/// PDPTE address field (the page directory).
const PDPTE_ADDR: u64 = PAE_ADDR;

/// Which paging structures the walk uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    /// 32-bit paging, two levels, 4 MiB pages when `pse`.
    Legacy { pse: bool },
    /// PAE paging, PDPTE registers + two levels, NX when `nxe`.
    Pae { nxe: bool },
}

/// The paging controls a walk depends on, taken from CR0/CR4/EFER.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkCtl {
    pub mode: PagingMode,
    /// CR0.WP: supervisor writes honour read-only pages.
    pub wp: bool,
    /// CR4.PGE: the G bit makes a mapping global.
    pub pge: bool,
    /// A20 gate: when false, bit 20 of every physical address is 0.
    pub a20: bool,
    /// Set accessed/dirty bits (false: a debugger's side-effect-free
    /// look).
    pub set_ad: bool,
}

impl WalkCtl {
    /// The controls in `cr0`, `cr4`, `efer` (paging assumed on).
    pub fn from_regs(cr0v: u32, cr4v: u32, eferv: u64, a20: bool) -> Self {
        let mode = if cr4v & cr4::PAE != 0 {
            PagingMode::Pae {
                nxe: eferv & efer::NXE != 0,
            }
        } else {
            PagingMode::Legacy {
                pse: cr4v & cr4::PSE != 0,
            }
        };
        WalkCtl {
            mode,
            wp: cr0v & cr0::WP != 0,
            pge: cr4v & cr4::PGE != 0,
            a20,
            set_ad: true,
        }
    }

    /// Whether fetches are checked against XD and reported with I/D
    /// (SDM Vol. 3 4.7: PAE with EFER.NXE; SMEP is not supported).
    #[inline]
    fn nx_active(&self) -> bool {
        matches!(self.mode, PagingMode::Pae { nxe: true })
    }

    #[inline]
    fn phys(&self, p: u64) -> u64 {
        if self.a20 {
            p
        } else {
            p & !(1 << 20)
        }
    }
}

/// Effective access rights of a translation, combined across the levels
/// (SDM Vol. 3 4.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rights {
    /// U/S = 1 in every entry: user accesses allowed.
    pub user: bool,
    /// R/W = 1 in every entry: writes allowed (always for supervisor
    /// writes when CR0.WP = 0).
    pub write: bool,
    /// XD = 1 in some entry while NX is active: fetches forbidden.
    pub nx: bool,
}

impl Rights {
    /// Whether `acc` is allowed under these rights (SDM Vol. 3 4.6.1).
    #[inline]
    pub fn allows(&self, acc: Access, wp: bool) -> bool {
        if acc.is_user() && !self.user {
            return false;
        }
        if acc.is_write() && !self.write && (acc.is_user() || wp) {
            return false;
        }
        !(acc.is_fetch() && self.nx)
    }
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    /// Physical address of the byte at the linear address.
    pub phys: u64,
    pub rights: Rights,
    /// The mapping entry's D bit after the walk (writes set it).
    pub dirty: bool,
    /// The mapping is global (G with CR4.PGE).
    pub global: bool,
    /// Frames (physical >> 12) that the walk read a PDE/PTE from, the
    /// page directory first; `NO_FRAME` where unused. The PDPTEs come from
    /// registers, not memory, and are not listed.
    pub tables: [u64; 2],
}

/// Filler for unused `Walk::tables` slots.
pub const NO_FRAME: u64 = u64::MAX;

/// One entry read by the walk: where it is, what it holds, its width.
#[derive(Clone, Copy)]
struct Used {
    addr: u64,
    val: u64,
}

/// Read a paging entry (4 or 8 bytes) at physical `addr`.
fn read_entry(mem: &mut GuestMemory, addr: u64, wide: bool) -> u64 {
    if wide {
        mem.read_u64(addr)
    } else {
        mem.read_u32(addr) as u64
    }
}

/// Load the four PDPTEs of the PDPT at `cr3` (SDM Vol. 3 4.4.1). A
/// present PDPTE with a reserved bit set is #GP(0), and nothing is loaded.
pub fn read_pdptes(mem: &mut GuestMemory, cr3: u32, a20: bool) -> Result<[u64; 4], Fault> {
    let base = (cr3 & 0xFFFF_FFE0) as u64;
    let mut out = [0u64; 4];
    for (i, e) in out.iter_mut().enumerate() {
        let mut a = base + 8 * i as u64;
        if !a20 {
            a &= !(1 << 20);
        }
        *e = mem.read_u64(a);
        if *e & pte::P != 0 && *e & PDPTE_RSVD != 0 {
            return Err(Fault::gp(0));
        }
    }
    Ok(out)
}

/// Translate `lin` for `acc`. On success the accessed bits of every entry
/// used and, for a write, the dirty bit of the mapping entry are set in
/// guest memory (without write-watch logging, see
/// `GuestMemory::write_u32_unlogged`); on failure nothing is written and
/// the #PF error code is returned.
pub fn walk(
    ctl: &WalkCtl,
    pdptes: &[u64; 4],
    cr3: u32,
    mem: &mut GuestMemory,
    lin: u32,
    acc: Access,
) -> Result<Walk, u32> {
    // Error code bits that describe the access (SDM Vol. 3 4.7).
    let mut code = acc.0 & (pf::W | pf::U);
    if acc.is_fetch() && ctl.nx_active() {
        code |= pf::ID;
    }
    let lin64 = lin as u64;
    let mut used = [Used { addr: 0, val: 0 }; 2];
    let mut tables = [NO_FRAME; 2];
    let (phys, leaf, rights) = match ctl.mode {
        PagingMode::Legacy { pse } => {
            // SDM Vol. 3 4.3: CR3[31:12] -> PD, lin[31:22] -> PDE.
            let pde_addr = ctl.phys((cr3 & 0xFFFF_F000) as u64 | (lin64 >> 22) << 2);
            let pde = read_entry(mem, pde_addr, false);
            if pde & pte::P == 0 {
                return Err(code);
            }
            used[0] = Used {
                addr: pde_addr,
                val: pde,
            };
            tables[0] = pde_addr >> 12;
            if pse && pde & pte::PS != 0 {
                if pde & PDE4M_RSVD != 0 {
                    return Err(code | pf::P | pf::RSVD);
                }
                let phys = (pde & 0xFFC0_0000) | (lin64 & 0x003F_FFFF);
                (phys, 0, combine(&[pde], false))
            } else {
                let pte_addr = ctl.phys((pde & 0xFFFF_F000) | ((lin64 >> 12) & 0x3FF) << 2);
                let pte = read_entry(mem, pte_addr, false);
                if pte & pte::P == 0 {
                    return Err(code);
                }
                used[1] = Used {
                    addr: pte_addr,
                    val: pte,
                };
                tables[1] = pte_addr >> 12;
                let phys = (pte & 0xFFFF_F000) | (lin64 & 0xFFF);
                (phys, 1, combine(&[pde, pte], false))
            }
        }
        PagingMode::Pae { nxe } => {
            // SDM Vol. 3 4.4.2: PDPTE register lin[31:30], PD lin[29:21],
            // PT lin[20:12]. Reserved: 62:MAXPHYADDR, and XD without NXE.
            let rsvd = PAE_HIGH_RSVD | if nxe { 0 } else { pte::XD };
            let pdpte = pdptes[(lin >> 30) as usize & 3];
            if pdpte & pte::P == 0 {
                return Err(code);
            }
            let pde_addr = ctl.phys((pdpte & PDPTE_ADDR) | ((lin64 >> 21) & 0x1FF) << 3);
            let pde = read_entry(mem, pde_addr, true);
            if pde & pte::P == 0 {
                return Err(code);
            }
            let big = pde & pte::PS != 0;
            if pde & rsvd != 0 || (big && pde & PDE2M_RSVD != 0) {
                return Err(code | pf::P | pf::RSVD);
            }
            used[0] = Used {
                addr: pde_addr,
                val: pde,
            };
            tables[0] = pde_addr >> 12;
            if big {
                let phys = (pde & PAE_ADDR & !0x1F_FFFF) | (lin64 & 0x1F_FFFF);
                (phys, 0, combine(&[pde], nxe))
            } else {
                let pte_addr = ctl.phys((pde & PAE_ADDR) | ((lin64 >> 12) & 0x1FF) << 3);
                let pte = read_entry(mem, pte_addr, true);
                if pte & pte::P == 0 {
                    return Err(code);
                }
                if pte & rsvd != 0 {
                    return Err(code | pf::P | pf::RSVD);
                }
                used[1] = Used {
                    addr: pte_addr,
                    val: pte,
                };
                tables[1] = pte_addr >> 12;
                let phys = (pte & PAE_ADDR) | (lin64 & 0xFFF);
                (phys, 1, combine(&[pde, pte], nxe))
            }
        }
    };
    if !rights.allows(acc, ctl.wp) {
        return Err(code | pf::P);
    }
    // SDM Vol. 3 4.8: A in every entry used, D in the mapping entry on a
    // write; like hardware, only once the access is known to succeed.
    // A and D live in the low dword of both entry widths.
    let mut leaf_val = used[leaf].val;
    for (i, u) in used.iter().enumerate().take(leaf + 1) {
        let mut v = u.val;
        v |= pte::A;
        if i == leaf && acc.is_write() {
            v |= pte::D;
        }
        if v != u.val && ctl.set_ad {
            mem.write_u32_unlogged(u.addr, v as u32);
        }
        if i == leaf {
            leaf_val = v;
        }
    }
    Ok(Walk {
        phys: ctl.phys(phys),
        rights,
        dirty: leaf_val & pte::D != 0,
        global: ctl.pge && leaf_val & pte::G != 0,
        tables,
    })
}

/// Combine U/S, R/W and XD across the entries of one translation.
fn combine(entries: &[u64], nxe: bool) -> Rights {
    let all = entries.iter().fold(u64::MAX, |a, &e| a & e);
    let any = entries.iter().fold(0, |a, &e| a | e);
    Rights {
        user: all & pte::US != 0,
        write: all & pte::RW != 0,
        nx: nxe && any & pte::XD != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuState;
    use crate::exception::vector;
    use crate::mmu::Mmu;

    const VECTORS: &str = include_str!("vectors/walk.txt");
    const CR3: u32 = 0x1000;

    fn num(s: &str) -> u64 {
        let h = s.strip_prefix("0x").unwrap_or(s);
        u64::from_str_radix(h, 16).unwrap_or_else(|_| panic!("bad number {s}"))
    }

    /// One parsed vector line.
    struct Case {
        line: usize,
        mode: String,
        wp: bool,
        lin: u32,
        acc: Access,
        entries: Vec<(String, u64)>,
        result: String,
        after: Vec<(String, u64)>,
        /// CR4.PGE (mode suffix `+pge`).
        pge: bool,
        /// The translation is global (result token `global`).
        global: bool,
    }

    fn parse(line: usize, text: &str) -> Case {
        let (l, r) = text.split_once("=>").expect("missing =>");
        let l: Vec<&str> = l.split_whitespace().collect();
        let r: Vec<&str> = r.split_whitespace().collect();
        let acc = match l[3] {
            "rs" => Access::READ,
            "ws" => Access::WRITE,
            "xs" => Access::FETCH,
            "ru" => Access(pf::U),
            "wu" => Access(pf::W | pf::U),
            "xu" => Access(pf::ID | pf::U),
            a => panic!("line {line}: bad access {a}"),
        };
        let kv = |t: &&str| {
            let (k, v) = t.split_once('=').expect("key=value");
            (k.to_string(), v.to_string())
        };
        let entries = l[4..].iter().map(kv).map(|(k, v)| (k, num(&v))).collect();
        let flags = |v: &str| {
            v.chars().fold(0u64, |a, c| match c {
                'A' => a | pte::A,
                'D' => a | pte::D,
                '-' => a,
                c => panic!("line {line}: bad flag {c}"),
            })
        };
        let global = r.contains(&"global");
        let after = r[1..]
            .iter()
            .filter(|t| **t != "global")
            .map(kv)
            .map(|(k, v)| (k, flags(&v)))
            .collect();
        let (mode, pge) = match l[0].strip_suffix("+pge") {
            Some(m) => (m, true),
            None => (l[0], false),
        };
        Case {
            line,
            mode: mode.to_string(),
            pge,
            global,
            wp: match l[1] {
                "wp0" => false,
                "wp1" => true,
                w => panic!("line {line}: bad wp {w}"),
            },
            lin: num(l[2]) as u32,
            acc,
            entries,
            result: r[0].to_string(),
            after,
        }
    }

    fn cpu_for(c: &Case) -> CpuState {
        let mut cpu = CpuState::reset();
        cpu.cr0 = cr0::PE | cr0::PG | if c.wp { cr0::WP } else { 0 };
        cpu.cr3 = CR3;
        cpu.cr4 = match c.mode.as_str() {
            "2level" => 0,
            "pse" => cr4::PSE,
            "pae" | "pae-nx" => cr4::PAE,
            m => panic!("line {}: bad mode {m}", c.line),
        };
        if c.mode == "pae-nx" {
            cpu.efer = efer::NXE;
        }
        if c.pge {
            cpu.cr4 |= cr4::PGE;
        }
        cpu
    }

    /// Store the entries where the SDM says the walk reads them; returns
    /// (name, address, width) of each.
    fn store(c: &Case, mem: &mut GuestMemory) -> Vec<(String, u64, bool)> {
        let pae = c.mode.starts_with("pae");
        let lin = c.lin as u64;
        let mut at = Vec::new();
        let mut next_table = CR3 as u64;
        for (name, v) in &c.entries {
            let (addr, wide) = match (pae, name.as_str()) {
                (true, "pdpte") => (next_table + 8 * (lin >> 30), true),
                (true, "pde") => (next_table + 8 * ((lin >> 21) & 0x1FF), true),
                (true, "pte") => (next_table + 8 * ((lin >> 12) & 0x1FF), true),
                (false, "pde") => (next_table + 4 * (lin >> 22), false),
                (false, "pte") => (next_table + 4 * ((lin >> 12) & 0x3FF), false),
                (_, n) => panic!("line {}: entry {n} not in mode {}", c.line, c.mode),
            };
            if wide {
                mem.write_u64(addr, *v);
                next_table = v & 0xF_FFFF_F000;
            } else {
                mem.write_u32(addr, *v as u32);
                next_table = v & 0xFFFF_F000;
            }
            at.push((name.clone(), addr, wide));
        }
        at
    }

    fn check_after(c: &Case, mem: &mut GuestMemory, at: &[(String, u64, bool)], who: &str) {
        for ((name, addr, wide), (_, orig)) in at.iter().zip(&c.entries) {
            let now = if *wide {
                mem.read_u64(*addr)
            } else {
                mem.read_u32(*addr) as u64
            };
            let add = c
                .after
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, f)| *f);
            assert_eq!(
                now,
                orig | add,
                "line {} ({who}): {name} after the walk",
                c.line
            );
        }
    }

    /// What the vector expects: Ok(phys), Err(#PF code), or None for #GP.
    fn expected(c: &Case) -> Option<Result<u64, u32>> {
        if c.result == "gp" {
            None
        } else if let Some(code) = c.result.strip_prefix("pf=") {
            Some(Err(num(code) as u32))
        } else {
            Some(Ok(num(&c.result)))
        }
    }

    fn run_walk(c: &Case) {
        let mut mem = GuestMemory::new(16 << 20).unwrap();
        let at = store(c, &mut mem);
        let cpu = cpu_for(c);
        let ctl = WalkCtl::from_regs(cpu.cr0, cpu.cr4, cpu.efer, true);
        let pdptes = if c.mode.starts_with("pae") {
            match read_pdptes(&mut mem, CR3, true) {
                Ok(p) => p,
                Err(f) => {
                    assert_eq!(expected(c), None, "line {}: PDPTE load {f}", c.line);
                    assert_eq!(f, Fault::gp(0), "line {}", c.line);
                    return;
                }
            }
        } else {
            [0; 4]
        };
        let want = expected(c).unwrap_or_else(|| panic!("line {}: no #GP", c.line));
        let got = walk(&ctl, &pdptes, CR3, &mut mem, c.lin, c.acc);
        assert_eq!(got.map(|w| w.phys), want, "line {}: walk", c.line);
        if let Ok(w) = got {
            assert_eq!(w.global, c.global, "line {}: global", c.line);
        }
        check_after(c, &mut mem, &at, "walk");
    }

    /// The same case through `Mmu` (load_pdptes + translate), on fresh
    /// memory, twice: the second time may come from the shadow.
    fn run_mmu(c: &Case) {
        let mut mem = GuestMemory::new(16 << 20).unwrap();
        let at = store(c, &mut mem);
        let cpu = cpu_for(c);
        let mut mmu = Mmu::new();
        if c.mode.starts_with("pae") {
            if let Err(f) = mmu.load_pdptes(&mut mem, CR3) {
                assert_eq!(expected(c), None, "line {}: PDPTE load {f}", c.line);
                return;
            }
        }
        mmu.flush_all(&cpu);
        let want = expected(c).unwrap_or_else(|| panic!("line {}: no #GP", c.line));
        for round in 0..2 {
            let got = match mmu.lookup_ram(c.lin, c.acc) {
                Some(off) => Ok(off as u64),
                None => mmu.translate(&cpu, &mut mem, c.lin, c.acc).map_err(|f| {
                    assert_eq!(f.vector, vector::PF);
                    assert_eq!(f.cr2, Some(c.lin));
                    f.error_code.unwrap_or(u32::MAX)
                }),
            };
            assert_eq!(got, want, "line {}: mmu round {round}", c.line);
        }
        check_after(c, &mut mem, &at, "mmu");
    }

    #[test]
    fn walk_vectors() {
        let mut n = 0;
        for (i, text) in VECTORS.lines().enumerate() {
            let text = text.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let c = parse(i + 1, text);
            run_walk(&c);
            run_mmu(&c);
            n += 1;
        }
        assert!(n > 90, "only {n} vectors");
    }

    #[test]
    fn every_error_code_bit_is_covered() {
        let mut seen = 0;
        for text in VECTORS.lines().filter(|t| !t.starts_with('#')) {
            if let Some(p) = text.split_whitespace().find_map(|t| t.strip_prefix("pf=")) {
                seen |= num(p) as u32;
            }
        }
        assert_eq!(seen, pf::P | pf::W | pf::U | pf::RSVD | pf::ID);
    }

    #[test]
    fn rights_follow_sdm_4_6() {
        let all = Rights {
            user: true,
            write: true,
            nx: false,
        };
        let ro_sup = Rights {
            user: false,
            write: false,
            nx: true,
        };
        let u = pf::U;
        assert!(all.allows(Access(pf::W | u), true));
        assert!(!ro_sup.allows(Access(u), false));
        assert!(ro_sup.allows(Access::WRITE, false));
        assert!(!ro_sup.allows(Access::WRITE, true));
        assert!(!ro_sup.allows(Access::FETCH, false));
        assert!(ro_sup.allows(Access::READ, true));
    }
}
