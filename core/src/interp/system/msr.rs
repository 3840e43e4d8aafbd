//! Model-specific registers: RDMSR/WRMSR and the MSR map (SDM Vol. 4).
//! Exactly the MSRs `CpuState::msr` holds exist, plus the TSC (and EFER
//! only when `cpuid::ADVERTISE_NX`); any other index is #GP(0), as is a
//! write of a reserved bit or an invalid memory type.
//!
//! IA32_PAT is readable and writable but not advertised in CPUID: the MMU
//! models no memory types, and Linux only touches PAT when CPUID says so.
//! The MTRRs are advertised (CPUID.1:EDX.MTRR) with eight variable
//! ranges, fixed ranges and write-combining.

use iced_x86::{Instruction, Mnemonic};

use super::super::{cpuid, Ctx, Table};
use super::{require_cpl0, set_tsc, tsc};
use crate::cpu::{efer, EAX, ECX, EDX};
use crate::exception::Fault;
use crate::vm::Vm;

/// MSR indices.
pub mod index {
    /// Time-stamp counter.
    pub const TSC: u32 = 0x10;
    /// Local APIC base and enable.
    pub const APIC_BASE: u32 = 0x1B;
    /// MTRR capabilities (read-only).
    pub const MTRRCAP: u32 = 0xFE;
    /// SYSENTER target CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// SYSENTER target ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// SYSENTER target EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// Miscellaneous feature enables.
    pub const MISC_ENABLE: u32 = 0x1A0;
    /// First variable-range MTRR (PHYSBASE0; PHYSMASKn = base + 2n + 1).
    pub const MTRR_PHYSBASE0: u32 = 0x200;
    /// Fixed-range MTRR for 0x00000-0x7FFFF (64 KiB ranges).
    pub const MTRR_FIX64K_00000: u32 = 0x250;
    /// Fixed-range MTRR for 0x80000-0x9FFFF (16 KiB ranges).
    pub const MTRR_FIX16K_80000: u32 = 0x258;
    /// Fixed-range MTRR for 0xA0000-0xBFFFF (16 KiB ranges).
    pub const MTRR_FIX16K_A0000: u32 = 0x259;
    /// First of the eight 4 KiB fixed-range MTRRs (0xC0000-0xFFFFF).
    pub const MTRR_FIX4K_C0000: u32 = 0x268;
    /// Page attribute table.
    pub const PAT: u32 = 0x277;
    /// MTRR default type.
    pub const MTRR_DEF_TYPE: u32 = 0x2FF;
    /// Extended feature enables.
    pub const EFER: u32 = 0xC000_0080;
}

/// Variable-range MTRR pairs.
pub const MTRR_VAR_COUNT: usize = 8;
/// MTRRcap: VCNT = 8, FIX (bit 8), WC (bit 10).
pub const MTRRCAP_VALUE: u64 = MTRR_VAR_COUNT as u64 | 1 << 8 | 1 << 10;

/// Physical address bits (PAE without CPUID leaf 0x8000_0008: 36).
const PHYS_BITS: u32 = 36;
/// Bits 12..PHYS_BITS: a page-aligned physical address.
const PHYS_PAGE_MASK: u64 = ((1u64 << PHYS_BITS) - 1) & !0xFFF;

/// APIC_BASE: BSP flag (read-only).
const APIC_BSP: u64 = 1 << 8;
/// APIC_BASE: global enable.
const APIC_ENABLE: u64 = 1 << 11;
/// MTRR_DEF_TYPE: fixed-range enable, MTRR enable, type field.
const MTRR_DEF_WRITABLE: u64 = 1 << 10 | 1 << 11 | 0xFF;
/// PHYSMASKn valid bit.
const MTRR_MASK_VALID: u64 = 1 << 11;

pub(super) fn register(t: &mut Table) {
    t.set(&[Mnemonic::Rdmsr], rdmsr_insn);
    t.set(&[Mnemonic::Wrmsr], wrmsr_insn);
}

/// A memory type valid in an MTRR: UC, WC, WT, WP, WB.
fn mtrr_type_ok(t: u64) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6)
}

/// A memory type valid in the PAT: UC, WC, WT, WP, WB, UC-.
fn pat_type_ok(t: u64) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6 | 7)
}

/// Index into `Msrs::mtrr_fixed` of a fixed-range MTRR.
fn fixed_slot(idx: u32) -> Option<usize> {
    match idx {
        index::MTRR_FIX64K_00000 => Some(0),
        index::MTRR_FIX16K_80000 => Some(1),
        index::MTRR_FIX16K_A0000 => Some(2),
        0x268..=0x26F => Some(3 + (idx - index::MTRR_FIX4K_C0000) as usize),
        _ => None,
    }
}

/// Index into `Msrs::mtrr_var` of a variable-range MTRR register.
fn var_slot(idx: u32) -> Option<usize> {
    let n = idx.wrapping_sub(index::MTRR_PHYSBASE0) as usize;
    (n < 2 * MTRR_VAR_COUNT).then_some(n)
}

/// RDMSR semantics without the privilege check: the value or #GP(0).
pub fn read_msr(vm: &Vm, idx: u32) -> Result<u64, Fault> {
    let m = &vm.cpu.msr;
    Ok(match idx {
        index::TSC => tsc(vm),
        index::APIC_BASE => m.apic_base,
        index::MTRRCAP => MTRRCAP_VALUE,
        index::SYSENTER_CS => m.sysenter_cs as u64,
        index::SYSENTER_ESP => m.sysenter_esp as u64,
        index::SYSENTER_EIP => m.sysenter_eip as u64,
        index::MISC_ENABLE => m.misc_enable,
        index::PAT => m.pat,
        index::MTRR_DEF_TYPE => m.mtrr_def_type,
        index::EFER if cpuid::ADVERTISE_NX => vm.cpu.efer,
        _ => {
            if let Some(i) = fixed_slot(idx) {
                m.mtrr_fixed[i]
            } else if let Some(i) = var_slot(idx) {
                m.mtrr_var[i]
            } else {
                return Err(Fault::gp(0));
            }
        }
    })
}

/// WRMSR semantics without the privilege check: stores `v` or #GP(0) for
/// an unknown MSR, a read-only one, or a reserved bit / bad type.
pub fn write_msr(vm: &mut Vm, idx: u32, v: u64) -> Result<(), Fault> {
    let gp = Err(Fault::gp(0));
    match idx {
        index::TSC => set_tsc(vm, v),
        index::APIC_BASE => {
            if v & !(PHYS_PAGE_MASK | APIC_ENABLE | APIC_BSP) != 0 {
                return gp;
            }
            let m = &mut vm.cpu.msr;
            m.apic_base = (v & !APIC_BSP) | (m.apic_base & APIC_BSP);
        }
        // SYSENTER MSRs are 32 bits wide on a 32-bit CPU: EDX is ignored.
        index::SYSENTER_CS => vm.cpu.msr.sysenter_cs = v as u32,
        index::SYSENTER_ESP => vm.cpu.msr.sysenter_esp = v as u32,
        index::SYSENTER_EIP => vm.cpu.msr.sysenter_eip = v as u32,
        index::MISC_ENABLE => vm.cpu.msr.misc_enable = v,
        index::PAT => {
            if !(0..8).all(|i| pat_type_ok((v >> (8 * i)) & 0xFF)) {
                return gp;
            }
            vm.cpu.msr.pat = v;
        }
        index::MTRR_DEF_TYPE => {
            if v & !MTRR_DEF_WRITABLE != 0 || !mtrr_type_ok(v & 0xFF) {
                return gp;
            }
            vm.cpu.msr.mtrr_def_type = v;
        }
        index::EFER if cpuid::ADVERTISE_NX => {
            if v & !efer::NXE != 0 {
                return gp;
            }
            vm.cpu.efer = v;
            vm.mmu.flush_all(&vm.cpu);
        }
        _ => {
            if let Some(i) = fixed_slot(idx) {
                if !(0..8).all(|b| mtrr_type_ok((v >> (8 * b)) & 0xFF)) {
                    return gp;
                }
                vm.cpu.msr.mtrr_fixed[i] = v;
            } else if let Some(i) = var_slot(idx) {
                let ok = if i % 2 == 0 {
                    // PHYSBASE: type in bits 0-7, base in 12..PHYS_BITS.
                    v & !(PHYS_PAGE_MASK | 0xFF) == 0 && mtrr_type_ok(v & 0xFF)
                } else {
                    // PHYSMASK: valid bit 11, mask in 12..PHYS_BITS.
                    v & !(PHYS_PAGE_MASK | MTRR_MASK_VALID) == 0
                };
                if !ok {
                    return gp;
                }
                vm.cpu.msr.mtrr_var[i] = v;
            } else {
                return gp;
            }
        }
    }
    Ok(())
}

/// RDMSR (CPL 0): EDX:EAX = MSR[ECX].
fn rdmsr_insn(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    require_cpl0(&ctx.vm.cpu)?;
    let v = read_msr(ctx.vm, ctx.vm.cpu.reg32(ECX))?;
    ctx.vm.cpu.set_reg32(EAX, v as u32);
    ctx.vm.cpu.set_reg32(EDX, (v >> 32) as u32);
    Ok(())
}

/// WRMSR (CPL 0): MSR[ECX] = EDX:EAX.
fn wrmsr_insn(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    require_cpl0(&ctx.vm.cpu)?;
    let cpu = &ctx.vm.cpu;
    let v = (cpu.reg32(EDX) as u64) << 32 | cpu.reg32(EAX) as u64;
    write_msr(ctx.vm, cpu.reg32(ECX), v)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn wr(vm: &mut Vm, idx: u32, v: u64) -> Result<(), Fault> {
        vm.cpu.set_reg32(ECX, idx);
        vm.cpu.set_reg32(EAX, v as u32);
        vm.cpu.set_reg32(EDX, (v >> 32) as u32);
        run(vm, 32, |a| a.wrmsr())
    }

    fn rd(vm: &mut Vm, idx: u32) -> Result<u64, Fault> {
        vm.cpu.set_reg32(ECX, idx);
        run(vm, 32, |a| a.rdmsr())?;
        Ok((vm.cpu.reg32(EDX) as u64) << 32 | vm.cpu.reg32(EAX) as u64)
    }

    #[test]
    fn sysenter_msrs_round_trip() {
        let mut vm = flat0();
        assert_eq!(wr(&mut vm, 0x174, 0x1_0000_0010), Ok(()));
        assert_eq!(vm.cpu.msr.sysenter_cs, 0x10);
        assert_eq!(rd(&mut vm, 0x174), Ok(0x10));
        assert_eq!(wr(&mut vm, 0x176, 0xC010_0000), Ok(()));
        assert_eq!(rd(&mut vm, 0x176), Ok(0xC010_0000));
    }

    #[test]
    fn unknown_msrs_and_privilege() {
        let mut vm = flat0();
        for idx in [0x8B, 0x3A, 0x1D9, 0xC000_0080, 0x210, 0x1FF] {
            assert_eq!(rd(&mut vm, idx), Err(Fault::gp(0)), "{idx:#x}");
            assert_eq!(wr(&mut vm, idx, 0), Err(Fault::gp(0)), "{idx:#x}");
        }
        // MTRRcap is read-only.
        assert_eq!(rd(&mut vm, 0xFE), Ok(0x508));
        assert_eq!(wr(&mut vm, 0xFE, 0x508), Err(Fault::gp(0)));
        let mut vm = ring3();
        assert_eq!(rd(&mut vm, 0x10), Err(Fault::gp(0)));
    }

    #[test]
    fn tsc_msr_sets_the_counter() {
        let mut vm = flat0();
        vm.clock.retired = 100;
        assert_eq!(wr(&mut vm, 0x10, 0x1_0000_0000), Ok(()));
        vm.clock.retired = 150;
        assert_eq!(rd(&mut vm, 0x10), Ok(0x1_0000_0032));
    }

    #[test]
    fn mtrr_and_pat_validity() {
        let mut vm = flat0();
        // Type 2 and 3 are reserved memory types.
        assert_eq!(wr(&mut vm, 0x2FF, 0xC02), Err(Fault::gp(0)));
        assert_eq!(wr(&mut vm, 0x2FF, 0x1006), Err(Fault::gp(0)));
        assert_eq!(wr(&mut vm, 0x2FF, 0xC06), Ok(()));
        assert_eq!(rd(&mut vm, 0x2FF), Ok(0xC06));
        assert_eq!(wr(&mut vm, 0x250, 0x0606_0606_0606_0606), Ok(()));
        assert_eq!(wr(&mut vm, 0x26F, 0x0606_0606_0606_0306), Err(Fault::gp(0)));
        assert_eq!(wr(&mut vm, 0x26F, 0x0505_0505_0505_0505), Ok(()));
        assert_eq!(vm.cpu.msr.mtrr_fixed[10], 0x0505_0505_0505_0505);
        // PHYSBASE1 (0x202) and PHYSMASK1 (0x203).
        assert_eq!(wr(&mut vm, 0x202, 0xF_0000_0006), Ok(()));
        assert_eq!(wr(&mut vm, 0x202, 0x10_0000_0006), Err(Fault::gp(0)));
        assert_eq!(wr(&mut vm, 0x203, 0xF_F000_0800), Ok(()));
        assert_eq!(wr(&mut vm, 0x203, 0xF_F000_0400), Err(Fault::gp(0)));
        assert_eq!(vm.cpu.msr.mtrr_var[2], 0xF_0000_0006);
        assert_eq!(vm.cpu.msr.mtrr_var[3], 0xF_F000_0800);
        // PAT: 7 is valid (UC-), 2 is not.
        assert_eq!(wr(&mut vm, 0x277, 0x0007_0406_0007_0406), Ok(()));
        assert_eq!(wr(&mut vm, 0x277, 0x0207_0406_0007_0406), Err(Fault::gp(0)));
        // APIC_BASE: BSP read-only, reserved bits fault.
        assert_eq!(wr(&mut vm, 0x1B, 0xFEE0_0000), Ok(()));
        assert_eq!(rd(&mut vm, 0x1B), Ok(0xFEE0_0100));
        assert_eq!(wr(&mut vm, 0x1B, 0xFEE0_0001), Err(Fault::gp(0)));
    }
}
