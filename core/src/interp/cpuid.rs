//! CPUID: the identity and feature set the CPU reports (SDM Vol. 2A,
//! CPUID). It reports exactly the features the interpreter implements, no
//! more, so that a guest never uses an instruction or a control bit that
//! Umbra does not have. The KVM engine programs the same table into KVM
//! (`KVM_SET_CPUID2`) from `cpuid()` over `LEAVES`, so both engines show
//! the guest one CPU.
//!
//! It owns the table only; the CPUID instruction handler is in `system`.

/// Processor signature (family 6, model 1, stepping 9: a Pentium Pro class
/// P6), also left in EDX at reset.
pub const SIGNATURE: u32 = 0x0000_0619;

/// Highest basic leaf.
pub const MAX_BASIC: u32 = 1;
/// Highest extended leaf (brand string through 0x8000_0004).
pub const MAX_EXTENDED: u32 = 0x8000_0004;

/// Whether NX (and with it the EFER MSR) is advertised. Off: the MMU's NX
/// support is not relied on, so EFER reads and writes raise #GP(0).
pub const ADVERTISE_NX: bool = false;

/// The twelve-byte vendor string (EBX, EDX, ECX order in leaf 0).
pub const VENDOR: &[u8; 12] = b"UmbraUmbraUm";

/// The 48-byte brand string of leaves 0x8000_0002..=0x8000_0004.
pub const BRAND: &[u8; 48] = b"Umbra virtual CPU (P6 class, interpreter)\0\0\0\0\0\0\0";

/// Leaf 1 EDX feature bits (SDM Vol. 2A Table 3-11).
pub mod edx1 {
    /// x87 FPU on chip: every P6 x87 instruction (`interp::x87`).
    pub const FPU: u32 = 1 << 0;
    /// Virtual-8086 mode extensions (CR4.VME/PVI). Not implemented.
    pub const VME: u32 = 1 << 1;
    /// Debugging extensions: CR4.DE, DR4/DR5 #UD.
    pub const DE: u32 = 1 << 2;
    /// 4 MiB pages (CR4.PSE).
    pub const PSE: u32 = 1 << 3;
    /// RDTSC and CR4.TSD.
    pub const TSC: u32 = 1 << 4;
    /// RDMSR/WRMSR.
    pub const MSR: u32 = 1 << 5;
    /// Physical address extension (CR4.PAE).
    pub const PAE: u32 = 1 << 6;
    /// Machine-check exception (CR4.MCE). Not implemented.
    pub const MCE: u32 = 1 << 7;
    /// CMPXCHG8B.
    pub const CX8: u32 = 1 << 8;
    /// On-chip local APIC. Not implemented.
    pub const APIC: u32 = 1 << 9;
    /// SYSENTER/SYSEXIT and their MSRs.
    pub const SEP: u32 = 1 << 11;
    /// Memory type range registers (MTRRcap, fixed and variable MTRRs).
    pub const MTRR: u32 = 1 << 12;
    /// Global pages (CR4.PGE).
    pub const PGE: u32 = 1 << 13;
    /// CMOVcc (and FCMOV with the FPU).
    pub const CMOV: u32 = 1 << 15;
    /// Page attribute table. Not advertised (see the module doc of
    /// `system::msr`).
    pub const PAT: u32 = 1 << 16;
    /// MMX. Not implemented.
    pub const MMX: u32 = 1 << 23;
    /// FXSAVE/FXRSTOR and CR4.OSFXSR.
    pub const FXSR: u32 = 1 << 24;
    /// SSE. Not implemented.
    pub const SSE: u32 = 1 << 25;
}

/// Extended leaf 0x8000_0001 EDX: execute-disable.
pub const EXT_EDX_NX: u32 = 1 << 20;

/// Leaf 1 EDX: everything the interpreter implements.
pub const FEATURES_EDX: u32 = edx1::FPU
    | edx1::DE
    | edx1::PSE
    | edx1::TSC
    | edx1::MSR
    | edx1::PAE
    | edx1::CX8
    | edx1::SEP
    | edx1::MTRR
    | edx1::PGE
    | edx1::CMOV
    | edx1::FXSR;

/// Every leaf the table defines (subleaf 0 each), for programming KVM.
pub const LEAVES: [u32; 7] = [
    0,
    1,
    0x8000_0000,
    0x8000_0001,
    0x8000_0002,
    0x8000_0003,
    0x8000_0004,
];

fn dword(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// CPUID for `leaf` (EAX) and `subleaf` (ECX): `[EAX, EBX, ECX, EDX]`.
///
/// A leaf above the highest basic or extended leaf returns the highest
/// basic leaf's data, as Intel processors do (SDM Vol. 2A, CPUID, "If a
/// value entered for CPUID.EAX is higher than the maximum input value").
/// No leaf here has subleaves.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let _ = subleaf;
    let leaf = if leaf <= MAX_BASIC || (0x8000_0000..=MAX_EXTENDED).contains(&leaf) {
        leaf
    } else {
        MAX_BASIC
    };
    match leaf {
        0 => [
            MAX_BASIC,
            dword(VENDOR, 0),
            dword(VENDOR, 8),
            dword(VENDOR, 4),
        ],
        // EBX: brand index 0, no CLFLUSH line size, one logical CPU,
        // initial APIC ID 0. ECX: no extended features.
        1 => [SIGNATURE, 0, 0, FEATURES_EDX],
        0x8000_0000 => [MAX_EXTENDED, 0, 0, 0],
        0x8000_0001 => [0, 0, 0, if ADVERTISE_NX { EXT_EDX_NX } else { 0 }],
        0x8000_0002..=0x8000_0004 => {
            let base = (leaf - 0x8000_0002) as usize * 16;
            [
                dword(BRAND, base),
                dword(BRAND, base + 4),
                dword(BRAND, base + 8),
                dword(BRAND, base + 12),
            ]
        }
        _ => [0; 4],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_string_in_ebx_edx_ecx_order() {
        let r = cpuid(0, 0);
        assert_eq!(r[0], 1);
        let mut v = Vec::new();
        v.extend_from_slice(&r[1].to_le_bytes());
        v.extend_from_slice(&r[3].to_le_bytes());
        v.extend_from_slice(&r[2].to_le_bytes());
        assert_eq!(&v, b"UmbraUmbraUm");
    }

    #[test]
    fn leaf1_is_p6_with_exactly_the_implemented_features() {
        let r = cpuid(1, 0);
        // Family in bits 8-11.
        assert_eq!((r[0] >> 8) & 0xF, 6);
        assert_eq!(r[0], SIGNATURE);
        assert_eq!(r[2], 0);
        // FPU DE PSE TSC MSR PAE CX8 SEP MTRR PGE CMOV FXSR by bit number.
        let want: u32 = [0, 2, 3, 4, 5, 6, 8, 11, 12, 13, 15, 24]
            .iter()
            .map(|b| 1u32 << b)
            .sum();
        assert_eq!(r[3], want);
        for absent in [1, 7, 9, 16, 17, 19, 23, 25, 26, 28] {
            assert_eq!(r[3] & (1 << absent), 0, "bit {absent}");
        }
    }

    #[test]
    fn out_of_range_leaves_return_highest_basic() {
        assert_eq!(cpuid(2, 0), cpuid(1, 0));
        assert_eq!(cpuid(0x4000_0000, 0), cpuid(1, 0));
        assert_eq!(cpuid(0x8000_0005, 0), cpuid(1, 0));
        assert_eq!(cpuid(0x8000_0000, 0)[0], 0x8000_0004);
    }

    #[test]
    fn brand_string_spans_three_leaves() {
        let mut s = Vec::new();
        for l in 0x8000_0002..=0x8000_0004u32 {
            for d in cpuid(l, 0) {
                s.extend_from_slice(&d.to_le_bytes());
            }
        }
        assert!(s.starts_with(b"Umbra virtual CPU"));
        assert_eq!(s.len(), 48);
        assert_eq!(*LEAVES.last().unwrap(), MAX_EXTENDED);
    }
}
