//! Control-register and EFER bits (SDM Vol. 3 2.5, 2.2.1).

/// CR0 bits.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u32 = 1 << 0;
    /// Monitor coprocessor (WAIT honours TS).
    pub const MP: u32 = 1 << 1;
    /// x87 emulation: FPU instructions raise #NM.
    pub const EM: u32 = 1 << 2;
    /// Task switched: next FPU use raises #NM.
    pub const TS: u32 = 1 << 3;
    /// Extension type (387 present), hard-wired to 1.
    pub const ET: u32 = 1 << 4;
    /// Native x87 error reporting.
    pub const NE: u32 = 1 << 5;
    /// Supervisor writes honour read-only pages.
    pub const WP: u32 = 1 << 16;
    /// Alignment mask.
    pub const AM: u32 = 1 << 18;
    /// Not write-through.
    pub const NW: u32 = 1 << 29;
    /// Cache disable.
    pub const CD: u32 = 1 << 30;
    /// Paging.
    pub const PG: u32 = 1 << 31;
    /// Bits that exist; writing 1 to any other bit raises #GP(0).
    pub const VALID: u32 = PE | MP | EM | TS | ET | NE | WP | AM | NW | CD | PG;
}

/// CR4 bits.
pub mod cr4 {
    /// Virtual-8086 mode extensions.
    pub const VME: u32 = 1 << 0;
    /// Protected-mode virtual interrupts.
    pub const PVI: u32 = 1 << 1;
    /// RDTSC restricted to CPL 0.
    pub const TSD: u32 = 1 << 2;
    /// Debugging extensions (DR4/DR5 fault).
    pub const DE: u32 = 1 << 3;
    /// 4 MiB pages in 2-level paging.
    pub const PSE: u32 = 1 << 4;
    /// Physical address extension (3-level paging).
    pub const PAE: u32 = 1 << 5;
    /// Machine-check enable.
    pub const MCE: u32 = 1 << 6;
    /// Global pages.
    pub const PGE: u32 = 1 << 7;
    /// RDPMC at any CPL.
    pub const PCE: u32 = 1 << 8;
    /// FXSAVE/FXRSTOR save SSE state; SSE instructions enabled.
    pub const OSFXSR: u32 = 1 << 9;
    /// Unmasked SIMD FP exceptions raise #XM.
    pub const OSXMMEXCPT: u32 = 1 << 10;
}

/// EFER (MSR 0xC000_0080) bits.
pub mod efer {
    /// SYSCALL enable.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
    /// No-execute enable (PAE/long-mode paging).
    pub const NXE: u64 = 1 << 11;
}
