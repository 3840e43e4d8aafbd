//! The CPUID table given to KVM (KVM_SET_CPUID2), built from the
//! interpreter's CPUID so that the instruction answers identically on both
//! engines.
//!
//! Until `umbra_core::interp::cpuid::cpuid(leaf, subleaf)` exists in main,
//! `table_source` is a local stand-in with the same signature (a P6-class
//! CPU with the features the interpreter will implement); switch it over
//! when the interpreter's function lands.

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaves whose answer depends on ECX (SDM Vol. 2A, CPUID).
const INDEXED_LEAVES: [u32; 4] = [4, 7, 0xB, 0xD];
/// Most subleaves emitted per indexed leaf.
const MAX_SUBLEAVES: u32 = 8;
/// Most leaves per range (guards against a nonsense maximum leaf).
const MAX_LEAVES: u32 = 64;

/// CPUID leaf 1 EDX feature bits (SDM Vol. 2A, Table 3-11).
mod edx1 {
    pub const FPU: u32 = 1 << 0;
    pub const VME: u32 = 1 << 1;
    pub const DE: u32 = 1 << 2;
    pub const PSE: u32 = 1 << 3;
    pub const TSC: u32 = 1 << 4;
    pub const MSR: u32 = 1 << 5;
    pub const CX8: u32 = 1 << 8;
    pub const SEP: u32 = 1 << 11;
    pub const MTRR: u32 = 1 << 12;
    pub const PGE: u32 = 1 << 13;
    pub const CMOV: u32 = 1 << 15;
    pub const PAT: u32 = 1 << 16;
}

/// Local stand-in for `umbra_core::interp::cpuid::cpuid`.
fn fallback_cpuid(leaf: u32, _subleaf: u32) -> [u32; 4] {
    const VENDOR: &[u8; 12] = b"GenuineIntel";
    let w = |i: usize| u32::from_le_bytes([VENDOR[i], VENDOR[i + 1], VENDOR[i + 2], VENDOR[i + 3]]);
    match leaf {
        // EAX = highest basic leaf; vendor in EBX, EDX, ECX.
        0 => [1, w(0), w(8), w(4)],
        1 => {
            use edx1::*;
            let edx = FPU | VME | DE | PSE | TSC | MSR | CX8 | SEP | MTRR | PGE | CMOV | PAT;
            [umbra_core::interp::cpuid::SIGNATURE, 0, 0, edx]
        }
        0x8000_0000 => [0x8000_0000, 0, 0, 0],
        _ => [0; 4],
    }
}

/// The interpreter's CPUID (see the module doc).
pub fn table_source(leaf: u32, subleaf: u32) -> [u32; 4] {
    fallback_cpuid(leaf, subleaf)
}

/// Every leaf (and subleaf of the indexed ones) the table answers, as KVM
/// entries.
pub(super) fn entries() -> Vec<kvm_cpuid_entry2> {
    let mut out = Vec::new();
    for base in [0u32, 0x8000_0000] {
        let max = table_source(base, 0)[0];
        if max < base {
            continue;
        }
        let last = max.min(base + MAX_LEAVES - 1);
        for leaf in base..=last {
            if INDEXED_LEAVES.contains(&leaf) {
                for sub in 0..MAX_SUBLEAVES {
                    let r = table_source(leaf, sub);
                    if sub > 0 && r == [0; 4] {
                        break;
                    }
                    out.push(make(leaf, sub, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, r));
                }
            } else {
                out.push(make(leaf, 0, 0, table_source(leaf, 0)));
            }
        }
    }
    out
}

fn make(function: u32, index: u32, flags: u32, r: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags,
        eax: r[0],
        ebx: r[1],
        ecx: r[2],
        edx: r[3],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_vendor_and_features() {
        let e = entries();
        let l0 = e.iter().find(|x| x.function == 0).unwrap();
        // "Genu" little-endian in EBX.
        assert_eq!(l0.ebx, 0x756E_6547);
        assert!(e.iter().any(|x| x.function == 1 && x.eax == 0x619));
        assert!(e.iter().any(|x| x.function == 0x8000_0000));
    }
}
