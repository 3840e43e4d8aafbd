//! The flat 32-bit protected-mode state that both direct-boot protocols
//! hand over: a boot GDT in guest memory (null, unused, code 0x10, data
//! 0x18), segment registers loaded from it with their descriptor caches
//! filled as a far jump and MOV Sreg would fill them, paging off,
//! interrupts off.

use umbra_core::cpu::{attr, cr0, CpuState, DescTable, SegReg, Segment, EBP, EBX, EDI, ESP};
use umbra_core::mem::GuestMemory;

use crate::layout::{BOOT_GDT_ADDR, BOOT_GDT_ENTRIES, BOOT_STACK_TOP};

/// Selector of the flat 32-bit code segment (Linux's __BOOT_CS).
pub const BOOT_CS: u16 = 0x10;
/// Selector of the flat data segment (Linux's __BOOT_DS).
pub const BOOT_DS: u16 = 0x18;

/// Access byte + flags (descriptor bits 40-55, as `Segment::attr`) of the
/// code descriptor: present, DPL 0, code, execute/read, accessed; 32-bit,
/// 4 KiB granularity.
const CODE_ATTR: u32 =
    attr::P | attr::S | attr::CODE | attr::RW | attr::ACCESSED | attr::DB | attr::G;
/// The data descriptor: present, DPL 0, data, read/write, accessed; big,
/// 4 KiB granularity.
const DATA_ATTR: u32 = attr::P | attr::S | attr::RW | attr::ACCESSED | attr::DB | attr::G;

/// The two dwords of a flat (base 0, limit 4 GiB) descriptor with `attr`
/// (SDM Vol. 3 3.4.5, Figure 3-8).
fn flat_descriptor(attr: u32) -> (u32, u32) {
    let limit_low = 0xFFFF;
    let limit_high = 0xF << 16;
    let lo = limit_low;
    let hi = limit_high | ((attr & 0xF0FF) << 8);
    (lo, hi)
}

/// Write the boot GDT at `BOOT_GDT_ADDR` and put `cpu` in flat 32-bit
/// protected mode: CS = 0x10, DS/ES/SS/FS/GS = 0x18, CR0.PE set and PG
/// clear, EFLAGS.IF clear, ESP = `BOOT_STACK_TOP`, EBX/EBP/EDI zero,
/// EIP = `entry`. The caller sets the protocol's own registers afterwards.
pub fn enter_flat_protected_mode(mem: &mut GuestMemory, cpu: &mut CpuState, entry: u32) {
    let mut gdt = [0u8; (BOOT_GDT_ENTRIES * 8) as usize];
    for (sel, a) in [(BOOT_CS, CODE_ATTR), (BOOT_DS, DATA_ATTR)] {
        let (lo, hi) = flat_descriptor(a);
        let i = sel as usize;
        gdt[i..i + 4].copy_from_slice(&lo.to_le_bytes());
        gdt[i + 4..i + 8].copy_from_slice(&hi.to_le_bytes());
    }
    mem.write(BOOT_GDT_ADDR, &gdt);

    *cpu = CpuState::reset();
    cpu.gdtr = DescTable {
        base: BOOT_GDT_ADDR as u32,
        limit: (BOOT_GDT_ENTRIES * 8 - 1) as u16,
    };
    cpu.idtr = DescTable { base: 0, limit: 0 };
    let (clo, chi) = flat_descriptor(CODE_ATTR);
    let (dlo, dhi) = flat_descriptor(DATA_ATTR);
    for s in SegReg::ALL {
        *cpu.seg_mut(s) = if s == SegReg::Cs {
            Segment::from_descriptor(BOOT_CS, clo, chi)
        } else {
            Segment::from_descriptor(BOOT_DS, dlo, dhi)
        };
    }
    cpu.cr0 = (cpu.cr0 | cr0::PE) & !cr0::PG;
    cpu.eflags = umbra_core::cpu::FIXED1;
    cpu.gpr = [0; 8];
    cpu.gpr[ESP] = BOOT_STACK_TOP;
    cpu.gpr[EBX] = 0;
    cpu.gpr[EBP] = 0;
    cpu.gpr[EDI] = 0;
    cpu.eip = entry;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_the_classic_flat_ones() {
        // The well-known encodings: 0x00CF9B000000FFFF (code, accessed) and
        // 0x00CF93000000FFFF (data, accessed).
        assert_eq!(flat_descriptor(CODE_ATTR), (0x0000_FFFF, 0x00CF_9B00));
        assert_eq!(flat_descriptor(DATA_ATTR), (0x0000_FFFF, 0x00CF_9300));
    }

    #[test]
    fn cpu_state_is_flat_protected_mode() {
        let mut mem = GuestMemory::new(4 << 20).unwrap();
        let mut cpu = CpuState::reset();
        enter_flat_protected_mode(&mut mem, &mut cpu, 0x100000);
        assert_eq!(mem.read_u32(0x510), 0xFFFF);
        assert_eq!(mem.read_u32(0x514), 0x00CF_9B00);
        assert_eq!(mem.read_u32(0x51C), 0x00CF_9300);
        let cs = cpu.seg(SegReg::Cs);
        assert_eq!((cs.selector, cs.base, cs.limit), (0x10, 0, 0xFFFF_FFFF));
        assert!(cs.is_code() && cs.big() && cs.present());
        let ss = cpu.seg(SegReg::Ss);
        assert_eq!((ss.selector, ss.base, ss.limit), (0x18, 0, 0xFFFF_FFFF));
        assert!(!ss.is_code() && ss.big());
        assert!(cpu.protected() && !cpu.paging());
        assert_eq!(cpu.eflags & umbra_core::cpu::IF, 0);
        assert_eq!(cpu.eip, 0x100000);
        assert_eq!(cpu.gdtr.limit, 31);
    }
}
