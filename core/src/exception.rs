//! Architectural faults as values. Every instruction and every memory
//! access returns `Result<T, Fault>`; nothing a guest does panics the host.
//! Delivery through the IVT/IDT (and task gates, double and triple fault)
//! lives in `interp::interrupt`, which every engine reuses.

use serde::{Deserialize, Serialize};

/// Exception vectors (SDM Vol. 3 6.3.1, Table 6-1).
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BP: u8 = 3;
    pub const OF: u8 = 4;
    pub const BR: u8 = 5;
    pub const UD: u8 = 6;
    pub const NM: u8 = 7;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const MF: u8 = 16;
    pub const AC: u8 = 17;
    pub const MC: u8 = 18;
    pub const XM: u8 = 19;
}

/// A fault, trap or abort raised by an instruction, ready for delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub vector: u8,
    /// Pushed on the stack for vectors that take one (8, 10-14, 17).
    pub error_code: Option<u32>,
    /// For #PF: the linear address that goes into CR2.
    pub cr2: Option<u32>,
}

/// #PF error-code bits (SDM Vol. 3 4.7).
pub mod pf {
    /// The fault was a protection violation (page was present).
    pub const P: u32 = 1 << 0;
    /// The access was a write.
    pub const W: u32 = 1 << 1;
    /// The access was made at CPL 3 (a user access).
    pub const U: u32 = 1 << 2;
    /// A reserved bit was set in a paging-structure entry.
    pub const RSVD: u32 = 1 << 3;
    /// The access was an instruction fetch (with NX or SMEP).
    pub const ID: u32 = 1 << 4;
}

impl Fault {
    pub const fn new(vector: u8) -> Self {
        Fault {
            vector,
            error_code: None,
            cr2: None,
        }
    }
    pub const fn with_code(vector: u8, code: u32) -> Self {
        Fault {
            vector,
            error_code: Some(code),
            cr2: None,
        }
    }
    /// #DE divide error.
    pub const fn de() -> Self {
        Self::new(vector::DE)
    }
    /// #UD invalid opcode.
    pub const fn ud() -> Self {
        Self::new(vector::UD)
    }
    /// #NM device not available.
    pub const fn nm() -> Self {
        Self::new(vector::NM)
    }
    /// #GP with an error code (a selector index or 0).
    pub const fn gp(code: u32) -> Self {
        Self::with_code(vector::GP, code)
    }
    /// #SS stack fault.
    pub const fn ss(code: u32) -> Self {
        Self::with_code(vector::SS, code)
    }
    /// #NP segment not present.
    pub const fn np(code: u32) -> Self {
        Self::with_code(vector::NP, code)
    }
    /// #TS invalid TSS.
    pub const fn ts(code: u32) -> Self {
        Self::with_code(vector::TS, code)
    }
    /// #PF at `addr` with the given error code.
    pub const fn pf(addr: u32, code: u32) -> Self {
        Fault {
            vector: vector::PF,
            error_code: Some(code),
            cr2: Some(addr),
        }
    }
    /// #AC alignment check (error code 0).
    pub const fn ac() -> Self {
        Self::with_code(vector::AC, 0)
    }
    /// #MF x87 floating-point error.
    pub const fn mf() -> Self {
        Self::new(vector::MF)
    }

    /// Whether this vector is a contributory exception for the double-fault
    /// rules (SDM Vol. 3 6.15, Table 6-4).
    pub fn contributory(&self) -> bool {
        matches!(self.vector, 0 | 10 | 11 | 12 | 13)
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const NAMES: [&str; 20] = [
            "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#MF9", "#TS", "#NP",
            "#SS", "#GP", "#PF", "15", "#MF", "#AC", "#MC", "#XM",
        ];
        match NAMES.get(self.vector as usize) {
            Some(n) => write!(f, "{n}")?,
            None => write!(f, "vector {}", self.vector)?,
        }
        if let Some(c) = self.error_code {
            write!(f, "({c:#x})")?;
        }
        if let Some(a) = self.cr2 {
            write!(f, " at {a:#010x}")?;
        }
        Ok(())
    }
}
