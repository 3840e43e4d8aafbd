//! Conversion between `CpuState` and KVM's register structures: general
//! registers, segment caches (VMX access-rights layout <-> `kvm_segment`),
//! descriptor tables, control registers, x87/SSE state (the full tag word
//! <-> FXSAVE's abridged one) and the MSRs `CpuState` keeps.

use kvm_bindings::{kvm_dtable, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_xsave};
use umbra_core::cpu::flags;
use umbra_core::cpu::{
    attr, CpuState, DescTable, SegReg, Segment, EAX, EBP, EBX, ECX, EDI, EDX, ESI, ESP,
};

/// MSR indices (SDM Vol. 4, Table 2-2).
pub(super) mod msr {
    pub const TSC: u32 = 0x10;
    pub const APIC_BASE: u32 = 0x1B;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const MISC_ENABLE: u32 = 0x1A0;
    pub const MTRR_PHYS_BASE0: u32 = 0x200;
    pub const MTRR_FIX64K: u32 = 0x250;
    pub const MTRR_FIX16K: [u32; 2] = [0x258, 0x259];
    pub const MTRR_FIX4K: u32 = 0x268;
    pub const PAT: u32 = 0x277;
    pub const MTRR_DEF_TYPE: u32 = 0x2FF;
}

/// `CpuState` segment -> `kvm_segment`.
pub(super) fn to_kvm_seg(s: &Segment) -> kvm_segment {
    let a = s.attr;
    kvm_segment {
        base: s.base as u64,
        limit: s.limit,
        selector: s.selector,
        type_: (a & 0xF) as u8,
        present: (a & attr::P != 0) as u8,
        dpl: ((a & attr::DPL_MASK) >> attr::DPL_SHIFT) as u8,
        db: (a & attr::DB != 0) as u8,
        s: (a & attr::S != 0) as u8,
        l: (a & attr::L != 0) as u8,
        g: (a & attr::G != 0) as u8,
        avl: (a & attr::AVL != 0) as u8,
        unusable: (a & attr::UNUSABLE != 0) as u8,
        padding: 0,
    }
}

/// `kvm_segment` -> `CpuState` segment.
pub(super) fn from_kvm_seg(k: &kvm_segment) -> Segment {
    let mut a = (k.type_ as u32) & 0xF;
    let bit = |v: u8, b: u32| if v != 0 { b } else { 0 };
    a |= bit(k.s, attr::S);
    a |= ((k.dpl as u32) & 3) << attr::DPL_SHIFT;
    a |= bit(k.present, attr::P);
    a |= bit(k.avl, attr::AVL);
    a |= bit(k.l, attr::L);
    a |= bit(k.db, attr::DB);
    a |= bit(k.g, attr::G);
    a |= bit(k.unusable, attr::UNUSABLE);
    Segment {
        selector: k.selector,
        base: k.base as u32,
        limit: k.limit,
        attr: a,
    }
}

pub(super) fn to_kvm_dt(d: &DescTable) -> kvm_dtable {
    kvm_dtable {
        base: d.base as u64,
        limit: d.limit,
        padding: [0; 3],
    }
}

pub(super) fn from_kvm_dt(d: &kvm_dtable) -> DescTable {
    DescTable {
        base: d.base as u32,
        limit: d.limit,
    }
}

pub(super) fn to_kvm_regs(c: &CpuState) -> kvm_regs {
    kvm_regs {
        rax: c.gpr[EAX],
        rbx: c.gpr[EBX],
        rcx: c.gpr[ECX],
        rdx: c.gpr[EDX],
        rsi: c.gpr[ESI],
        rdi: c.gpr[EDI],
        rsp: c.gpr[ESP],
        rbp: c.gpr[EBP],
        rip: c.eip as u64,
        // RF is left out: this host's KVM fails to enter a compatibility-
        // mode guest with RF set. RF only suppresses instruction
        // breakpoints for one instruction and is clear after any retired
        // instruction, so only a guest's DR7 breakpoint at the very next
        // instruction could tell.
        rflags: ((c.eflags & flags::DEFINED & !flags::RF) | flags::FIXED1) as u64,
        ..Default::default()
    }
}

pub(super) fn from_kvm_regs(c: &mut CpuState, r: &kvm_regs) {
    // The guest runs 16/32-bit code: the upper halves are zero or left over
    // from the state we loaded, and CpuState keeps only what 32-bit code
    // can produce.
    let lo = |v: u64| v & 0xFFFF_FFFF;
    c.gpr[EAX] = lo(r.rax);
    c.gpr[EBX] = lo(r.rbx);
    c.gpr[ECX] = lo(r.rcx);
    c.gpr[EDX] = lo(r.rdx);
    c.gpr[ESI] = lo(r.rsi);
    c.gpr[EDI] = lo(r.rdi);
    c.gpr[ESP] = lo(r.rsp);
    c.gpr[EBP] = lo(r.rbp);
    c.eip = r.rip as u32;
    c.eflags = (r.rflags as u32 & flags::DEFINED) | flags::FIXED1;
}

/// Fill the segment, table and control-register part of `s` from `c`
/// (other fields, such as apic_base and the interrupt bitmap, stay).
pub(super) fn to_kvm_sregs(c: &CpuState, s: &mut kvm_sregs) {
    s.es = to_kvm_seg(c.seg(SegReg::Es));
    s.cs = to_kvm_seg(c.seg(SegReg::Cs));
    s.ss = to_kvm_seg(c.seg(SegReg::Ss));
    s.ds = to_kvm_seg(c.seg(SegReg::Ds));
    s.fs = to_kvm_seg(c.seg(SegReg::Fs));
    s.gs = to_kvm_seg(c.seg(SegReg::Gs));
    s.ldt = to_kvm_seg(&c.ldtr);
    s.tr = to_kvm_seg(&c.tr);
    s.gdt = to_kvm_dt(&c.gdtr);
    s.idt = to_kvm_dt(&c.idtr);
    s.cr0 = c.cr0 as u64;
    s.cr2 = c.cr2 as u64;
    s.cr3 = c.cr3 as u64;
    s.cr4 = c.cr4 as u64;
    s.efer = c.efer;
}

pub(super) fn from_kvm_sregs(c: &mut CpuState, s: &kvm_sregs) {
    c.seg[SegReg::Es as usize] = from_kvm_seg(&s.es);
    c.seg[SegReg::Cs as usize] = from_kvm_seg(&s.cs);
    c.seg[SegReg::Ss as usize] = from_kvm_seg(&s.ss);
    c.seg[SegReg::Ds as usize] = from_kvm_seg(&s.ds);
    c.seg[SegReg::Fs as usize] = from_kvm_seg(&s.fs);
    c.seg[SegReg::Gs as usize] = from_kvm_seg(&s.gs);
    c.ldtr = from_kvm_seg(&s.ldt);
    c.tr = from_kvm_seg(&s.tr);
    c.gdtr = from_kvm_dt(&s.gdt);
    c.idtr = from_kvm_dt(&s.idt);
    c.cr0 = s.cr0 as u32;
    c.cr2 = s.cr2 as u32;
    c.cr3 = s.cr3 as u32;
    c.cr4 = s.cr4 as u32;
    c.efer = s.efer;
}

/// Tag values of the full x87 tag word (SDM Vol. 1 8.1.7).
const TAG_VALID: u16 = 0;
const TAG_ZERO: u16 = 1;
const TAG_SPECIAL: u16 = 2;
const TAG_EMPTY: u16 = 3;

/// Full tag of a non-empty 80-bit register from its contents.
fn classify(r: &[u8; 10]) -> u16 {
    let mant = u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]);
    let exp = u16::from_le_bytes([r[8], r[9]]) & 0x7FFF;
    if exp == 0x7FFF {
        TAG_SPECIAL
    } else if exp == 0 {
        if mant == 0 {
            TAG_ZERO
        } else {
            TAG_SPECIAL
        }
    } else if mant >> 63 == 0 {
        // Unnormal: the explicit integer bit is clear.
        TAG_SPECIAL
    } else {
        TAG_VALID
    }
}

/// Byte offsets in the XSAVE area's legacy (FXSAVE) region and header
/// (SDM Vol. 1 10.5.1 and 13.4); FIP and FDP are stored as KVM keeps them,
/// offset in the low and selector in the high half of a quadword.
mod xs {
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    pub const FTWX: usize = 4;
    pub const FOP: usize = 6;
    pub const FIP: usize = 8;
    pub const FDP: usize = 16;
    pub const MXCSR: usize = 24;
    pub const ST0: usize = 32;
    pub const XMM0: usize = 160;
    pub const XSTATE_BV: usize = 512;
    /// The legacy region and the header: all of the image the engine
    /// reads or writes (the rest stays zero: components in initial state).
    pub const USED: usize = 576;
    /// XSTATE_BV bits of the x87 and SSE components.
    pub const FP_SSE: u64 = 3;
}

/// `CpuState`'s x87/SSE state -> a KVM_SET_XSAVE image that holds the x87
/// and SSE components (XSTATE_BV says so; every other component takes
/// its initial state, which is what the guest model has).
pub(super) fn to_kvm_xsave(c: &CpuState) -> kvm_xsave {
    let f = &c.fpu;
    let top = ((f.fsw >> 11) & 7) as usize;
    let mut b = [0u8; xs::USED];
    let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
    put(xs::FCW, &f.fcw.to_le_bytes());
    put(xs::FSW, &f.fsw.to_le_bytes());
    // Abridged tag: one bit per physical register, set when not empty.
    let mut ftwx = 0u8;
    for i in 0..8 {
        if (f.ftw >> (2 * i)) & 3 != TAG_EMPTY {
            ftwx |= 1 << i;
        }
    }
    put(xs::FTWX, &[ftwx]);
    put(xs::FOP, &(f.fop & 0x7FF).to_le_bytes());
    put(
        xs::FIP,
        &(f.fip as u64 | ((f.fcs as u64) << 32)).to_le_bytes(),
    );
    put(
        xs::FDP,
        &(f.fdp as u64 | ((f.fds as u64) << 32)).to_le_bytes(),
    );
    put(xs::MXCSR, &c.sse.mxcsr.to_le_bytes());
    // The image stores ST(i), i.e. physical register (TOP + i) mod 8.
    for i in 0..8 {
        put(xs::ST0 + 16 * i, &f.regs[(top + i) & 7]);
    }
    for (i, x) in c.sse.xmm.iter().enumerate() {
        put(xs::XMM0 + 16 * i, &x.to_le_bytes());
    }
    put(xs::XSTATE_BV, &xs::FP_SSE.to_le_bytes());
    let mut k = kvm_xsave::default();
    for (w, q) in k.region.iter_mut().zip(b.chunks_exact(4)) {
        *w = u32::from_le_bytes([q[0], q[1], q[2], q[3]]);
    }
    k
}

/// A KVM_GET_XSAVE image -> `CpuState`'s x87/SSE state. The kernel fills
/// in the initial values of a component the CPU did not save because it
/// was in its initial configuration (XSTATE_BV clear), which KVM_GET_FPU
/// does not: it copies its buffer's legacy region as it finds it.
pub(super) fn from_kvm_xsave(c: &mut CpuState, k: &kvm_xsave) {
    let mut b = [0u8; xs::USED];
    for (q, w) in b.chunks_exact_mut(4).zip(&k.region) {
        q.copy_from_slice(&w.to_le_bytes());
    }
    let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let f = &mut c.fpu;
    f.fcw = u16_at(xs::FCW);
    f.fsw = u16_at(xs::FSW);
    f.fop = u16_at(xs::FOP) & 0x7FF;
    let (ip, dp) = (u64_at(xs::FIP), u64_at(xs::FDP));
    f.fip = ip as u32;
    f.fcs = (ip >> 32) as u16;
    f.fdp = dp as u32;
    f.fds = (dp >> 32) as u16;
    let top = ((f.fsw >> 11) & 7) as usize;
    for i in 0..8 {
        let at = xs::ST0 + 16 * i;
        f.regs[(top + i) & 7].copy_from_slice(&b[at..at + 10]);
    }
    let ftwx = b[xs::FTWX];
    let mut ftw = 0u16;
    for i in 0..8 {
        let tag = if ftwx & (1 << i) == 0 {
            TAG_EMPTY
        } else {
            classify(&f.regs[i])
        };
        ftw |= tag << (2 * i);
    }
    f.ftw = ftw;
    c.sse.mxcsr = u32::from_le_bytes(b[xs::MXCSR..xs::MXCSR + 4].try_into().unwrap());
    for (i, x) in c.sse.xmm.iter_mut().enumerate() {
        let at = xs::XMM0 + 16 * i;
        *x = u128::from_le_bytes(b[at..at + 16].try_into().unwrap());
    }
}

fn entry(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// The MSRs of `CpuState` (and the TSC) as KVM entries.
pub(super) fn msr_entries(c: &CpuState) -> Vec<kvm_msr_entry> {
    let m = &c.msr;
    let mut v = vec![
        entry(msr::SYSENTER_CS, m.sysenter_cs as u64),
        entry(msr::SYSENTER_ESP, m.sysenter_esp as u64),
        entry(msr::SYSENTER_EIP, m.sysenter_eip as u64),
        entry(msr::PAT, m.pat),
        entry(msr::MISC_ENABLE, m.misc_enable),
        entry(msr::MTRR_DEF_TYPE, m.mtrr_def_type),
        entry(msr::APIC_BASE, m.apic_base),
    ];
    for (i, &idx) in fixed_mtrr_indices().iter().enumerate() {
        v.push(entry(idx, m.mtrr_fixed[i]));
    }
    for (i, &val) in m.mtrr_var.iter().enumerate() {
        v.push(entry(msr::MTRR_PHYS_BASE0 + i as u32, val));
    }
    v.push(entry(msr::TSC, c.tsc));
    v
}

/// MSR index of each `Msrs::mtrr_fixed` element, in order.
pub(super) fn fixed_mtrr_indices() -> [u32; 11] {
    let mut a = [0u32; 11];
    a[0] = msr::MTRR_FIX64K;
    a[1] = msr::MTRR_FIX16K[0];
    a[2] = msr::MTRR_FIX16K[1];
    for (i, x) in a[3..].iter_mut().enumerate() {
        *x = msr::MTRR_FIX4K + i as u32;
    }
    a
}

/// Store one MSR value read back from KVM into `c`.
pub(super) fn store_msr(c: &mut CpuState, index: u32, data: u64) {
    let m = &mut c.msr;
    match index {
        msr::SYSENTER_CS => m.sysenter_cs = data as u32,
        msr::SYSENTER_ESP => m.sysenter_esp = data as u32,
        msr::SYSENTER_EIP => m.sysenter_eip = data as u32,
        msr::PAT => m.pat = data,
        msr::MISC_ENABLE => m.misc_enable = data,
        msr::MTRR_DEF_TYPE => m.mtrr_def_type = data,
        msr::APIC_BASE => m.apic_base = data,
        msr::TSC => c.tsc = data,
        i if (msr::MTRR_PHYS_BASE0..msr::MTRR_PHYS_BASE0 + 16).contains(&i) => {
            m.mtrr_var[(i - msr::MTRR_PHYS_BASE0) as usize] = data;
        }
        i => {
            if let Some(p) = fixed_mtrr_indices().iter().position(|&x| x == i) {
                m.mtrr_fixed[p] = data;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_round_trip() {
        // A flat 32-bit ring-3 code segment, conforming and accessed.
        let s = Segment {
            selector: 0x1B,
            base: 0x1234_5000,
            limit: 0xFFFF_FFFF,
            attr: attr::CODE
                | attr::DC
                | attr::ACCESSED
                | attr::S
                | (3 << attr::DPL_SHIFT)
                | attr::P
                | attr::DB
                | attr::G,
        };
        let k = to_kvm_seg(&s);
        assert_eq!(
            (k.type_, k.s, k.dpl, k.present, k.db, k.g, k.l),
            (0xD, 1, 3, 1, 1, 1, 0)
        );
        assert_eq!(from_kvm_seg(&k), s);
        let null = Segment {
            attr: attr::UNUSABLE,
            ..Segment::default()
        };
        assert_eq!(to_kvm_seg(&null).unusable, 1);
        assert_eq!(from_kvm_seg(&to_kvm_seg(&null)), null);
    }

    #[test]
    fn fpu_tags_round_trip() {
        let mut c = CpuState::reset();
        // TOP = 6; R6 = 1.0 (valid), R7 = +0 (zero), the rest empty.
        c.fpu.fsw = 6 << 11;
        c.fpu.regs[6] = [0, 0, 0, 0, 0, 0, 0, 0x80, 0xFF, 0x3F];
        c.fpu.regs[7] = [0; 10];
        c.fpu.ftw = 0x0FFF | (TAG_VALID << 12) | (TAG_ZERO << 14);
        c.fpu.fcw = 0x027F;
        c.fpu.fip = 0x1234;
        c.fpu.fcs = 0x08;
        c.sse.mxcsr = 0x1F80;
        c.sse.xmm[7] = 0x0123_4567_89AB_CDEF_0011_2233_4455_6677;
        let k = to_kvm_xsave(&c);
        // Abridged tag byte 4, FCW bytes 0-1, XSTATE_BV x87|SSE.
        assert_eq!(k.region[1] & 0xFF, 0xC0);
        assert_eq!(k.region[0] & 0xFFFF, 0x027F);
        assert_eq!(k.region[128], 3);
        // ST(0) (bytes 32..) is R6: its integer bit is byte 39.
        assert_eq!(k.region[9] >> 24, 0x80);
        let mut d = CpuState::reset();
        from_kvm_xsave(&mut d, &k);
        assert_eq!(d.fpu, c.fpu);
        assert_eq!(d.sse, c.sse);
    }

    #[test]
    fn msrs_round_trip() {
        let mut c = CpuState::reset();
        c.msr.mtrr_fixed[4] = 0x0606_0606_0606_0606;
        c.msr.mtrr_var[15] = 0xFF;
        c.msr.sysenter_eip = 0xC000_1000;
        c.tsc = 12345;
        let mut d = CpuState::reset();
        for e in msr_entries(&c) {
            store_msr(&mut d, e.index, e.data);
        }
        assert_eq!(d.msr, c.msr);
        assert_eq!(d.tsc, 12345);
        assert_eq!(fixed_mtrr_indices()[10], 0x26F);
    }
}
