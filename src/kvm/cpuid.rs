//! The CPUID table given to KVM (KVM_SET_CPUID2), built from the
//! interpreter's `interp::cpuid::cpuid` over its `LEAVES`, so that the
//! instruction answers identically on both engines. (KVM still adjusts a
//! few bits at run time, e.g. OSXSAVE from CR4 and APIC from the APIC base
//! MSR; the interpreter's table advertises neither.)

use kvm_bindings::kvm_cpuid_entry2;
use umbra_core::interp::cpuid;

/// The interpreter's CPUID, re-exported for the harness.
pub fn table_source(leaf: u32, subleaf: u32) -> [u32; 4] {
    cpuid::cpuid(leaf, subleaf)
}

/// Every leaf the table answers, as KVM entries (no leaf has subleaves).
pub(super) fn entries() -> Vec<kvm_cpuid_entry2> {
    cpuid::LEAVES
        .iter()
        .map(|&leaf| {
            let r = table_source(leaf, 0);
            kvm_cpuid_entry2 {
                function: leaf,
                index: 0,
                flags: 0,
                eax: r[0],
                ebx: r[1],
                ecx: r[2],
                edx: r[3],
                ..Default::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_interpreter() {
        let e = entries();
        assert_eq!(e.len(), cpuid::LEAVES.len());
        let l1 = e.iter().find(|x| x.function == 1).unwrap();
        assert_eq!(l1.eax, cpuid::SIGNATURE);
        assert_eq!(l1.edx, cpuid::cpuid(1, 0)[3]);
    }
}
