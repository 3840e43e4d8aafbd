//! The ACPI tables of a direct boot (ACPI 6.4 chapter 5, written to the
//! ACPI 2.0 subset that Linux's ACPICA checks): RSDP (revision 0) -> RSDT
//! -> FADT (revision 3) -> FACS and DSDT. The FADT describes the PM1a
//! event/control blocks and the PM timer at `pm_base`, SCI on `sci_irq`,
//! and no SMI command port, so ACPI mode is already on. The DSDT holds only
//! `Name (_S5, Package () { 0, 0, 0, 0 })`: writing SLP_TYP 0 with SLP_EN
//! to PM1a_CNT powers off. No MADT: the machine has no APIC yet.
//!
//! Written by hand: the few fixed tables are smaller than any AML or table
//! builder crate's API, and every field is named below.

use umbra_core::mem::GuestMemory;

use crate::layout::{ACPI_TABLES_ADDR, ACPI_TABLES_END};

/// Where each table goes, in the ACPI area (RSDP first: 16-byte aligned
/// for the legacy scan; FACS 64-byte aligned as 5.2.10 requires).
pub const RSDP_ADDR: u64 = ACPI_TABLES_ADDR;
pub const RSDT_ADDR: u64 = ACPI_TABLES_ADDR + 0x40;
pub const FACS_ADDR: u64 = ACPI_TABLES_ADDR + 0xC0;
pub const FADT_ADDR: u64 = ACPI_TABLES_ADDR + 0x100;
pub const DSDT_ADDR: u64 = ACPI_TABLES_ADDR + 0x200;

/// OEM ID in every header.
pub const OEM_ID: &[u8; 6] = b"UMBRA ";
/// OEM table ID in every header.
pub const OEM_TABLE_ID: &[u8; 8] = b"UMBRAVM ";
/// Creator ID (the "ASL compiler" that made the tables).
pub const CREATOR_ID: &[u8; 4] = b"UMBR";

/// Size of the common system description table header (5.2.6).
pub const HEADER_SIZE: usize = 36;
/// RSDP size for revision 0 (ACPI 1.0), the span of its checksum.
pub const RSDP_V1_SIZE: usize = 20;
/// FADT size for revision 3 (ACPI 2.0).
pub const FADT_SIZE: usize = 244;
/// FACS size.
pub const FACS_SIZE: usize = 64;

/// FADT field offsets (5.2.9, Table 5.9).
pub mod fadt {
    pub const FIRMWARE_CTRL: usize = 36;
    pub const DSDT: usize = 40;
    pub const SCI_INT: usize = 46;
    pub const SMI_CMD: usize = 48;
    pub const PM1A_EVT_BLK: usize = 56;
    pub const PM1A_CNT_BLK: usize = 64;
    pub const PM_TMR_BLK: usize = 76;
    pub const PM1_EVT_LEN: usize = 88;
    pub const PM1_CNT_LEN: usize = 89;
    pub const PM_TMR_LEN: usize = 91;
    pub const P_LVL2_LAT: usize = 96;
    pub const P_LVL3_LAT: usize = 98;
    pub const CENTURY: usize = 108;
    pub const IAPC_BOOT_ARCH: usize = 109;
    pub const FLAGS: usize = 112;
    pub const X_DSDT: usize = 140;
    pub const X_PM1A_EVT_BLK: usize = 148;
    pub const X_PM1A_CNT_BLK: usize = 172;
    pub const X_PM_TMR_BLK: usize = 208;

    /// Generic Address Structure address space: system I/O (5.2.3.2).
    pub const GAS_SYSTEM_IO: u8 = 1;

    /// Flags bit 0: WBINVD works.
    pub const F_WBINVD: u32 = 1 << 0;
    /// Flags bit 2: C1 (HLT) supported on all processors.
    pub const F_PROC_C1: u32 = 1 << 2;
    /// Flags bit 5: no fixed-feature sleep button.
    pub const F_SLP_BUTTON: u32 = 1 << 5;

    /// IAPC_BOOT_ARCH bit 0: legacy ISA devices (LPC/ISA) present.
    pub const BOOT_LEGACY_DEVICES: u16 = 1 << 0;
    /// IAPC_BOOT_ARCH bit 1: an 8042 keyboard controller is present.
    pub const BOOT_8042: u16 = 1 << 1;

    /// C2 latency above 100 us: C2 not supported.
    pub const NO_C2_LATENCY: u16 = 101;
    /// C3 latency above 1000 us: C3 not supported.
    pub const NO_C3_LATENCY: u16 = 1001;
    /// CMOS index of the RTC century register.
    pub const CMOS_CENTURY: u8 = 0x32;
}

/// AML for `Name (_S5, Package () { 0, 0, 0, 0 })` (ACPI 6.4 20.2):
/// NameOp, NameSeg "_S5_", PackageOp, PkgLength 6 (itself, the count and
/// four elements), NumElements 4, four ZeroOp.
pub const S5_AML: [u8; 12] = [
    0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
];

/// A table with its header filled; the checksum is set by `finish`.
fn table(signature: &[u8; 4], len: usize, revision: u8) -> Vec<u8> {
    let mut t = vec![0u8; len];
    t[0..4].copy_from_slice(signature);
    t[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    t[8] = revision;
    t[10..16].copy_from_slice(OEM_ID);
    t[16..24].copy_from_slice(OEM_TABLE_ID);
    t[24..28].copy_from_slice(&1u32.to_le_bytes()); // OEM revision
    t[28..32].copy_from_slice(CREATOR_ID);
    t[32..36].copy_from_slice(&1u32.to_le_bytes()); // creator revision
    t
}

/// The byte that makes `bytes` sum to zero (modulo 256).
pub fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// Set the checksum byte at `at` so the whole of `t` sums to zero.
fn finish(t: &mut [u8], at: usize) {
    t[at] = 0;
    t[at] = checksum(t);
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// A Generic Address Structure for `len` bytes of I/O ports at `port`:
/// space ID, bit width, bit offset, access size (0: undefined, as in
/// ACPI 2.0), 64-bit address.
fn gas_io(port: u64, len: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = fadt::GAS_SYSTEM_IO;
    g[1] = len * 8;
    g[4..12].copy_from_slice(&port.to_le_bytes());
    g
}

/// Write the tables into guest memory; returns the RSDP address.
pub fn write_acpi_tables(mem: &mut GuestMemory, pm_base: u16, sci_irq: u8) -> u64 {
    // DSDT: header + AML (revision 1: 32-bit integers).
    let mut dsdt = table(b"DSDT", HEADER_SIZE + S5_AML.len(), 1);
    dsdt[HEADER_SIZE..].copy_from_slice(&S5_AML);
    finish(&mut dsdt, 9);

    // FACS: no checksum; waking vector 0, no global lock owner.
    let mut facs = vec![0u8; FACS_SIZE];
    facs[0..4].copy_from_slice(b"FACS");
    put32(&mut facs, 4, FACS_SIZE as u32);
    facs[32] = 1; // version (ACPI 2.0 FACS)

    // FADT revision 3. The 64-bit X_ fields repeat the 32-bit ones (equal
    // values: ACPICA takes either without a mismatch warning), except
    // X_FIRMWARE_CTRL, left zero: ACPICA installs the FACS once per
    // non-zero pointer and would list it twice.
    let mut f = table(b"FACP", FADT_SIZE, 3);
    put32(&mut f, fadt::FIRMWARE_CTRL, FACS_ADDR as u32);
    put32(&mut f, fadt::DSDT, DSDT_ADDR as u32);
    put16(&mut f, fadt::SCI_INT, sci_irq as u16);
    put32(&mut f, fadt::SMI_CMD, 0); // no SMI port: ACPI mode is fixed on
    put32(&mut f, fadt::PM1A_EVT_BLK, pm_base as u32);
    put32(&mut f, fadt::PM1A_CNT_BLK, pm_base as u32 + 4);
    put32(&mut f, fadt::PM_TMR_BLK, pm_base as u32 + 8);
    f[fadt::PM1_EVT_LEN] = 4;
    f[fadt::PM1_CNT_LEN] = 2;
    f[fadt::PM_TMR_LEN] = 4;
    put16(&mut f, fadt::P_LVL2_LAT, fadt::NO_C2_LATENCY);
    put16(&mut f, fadt::P_LVL3_LAT, fadt::NO_C3_LATENCY);
    f[fadt::CENTURY] = fadt::CMOS_CENTURY;
    put16(
        &mut f,
        fadt::IAPC_BOOT_ARCH,
        fadt::BOOT_LEGACY_DEVICES | fadt::BOOT_8042,
    );
    put32(
        &mut f,
        fadt::FLAGS,
        fadt::F_WBINVD | fadt::F_PROC_C1 | fadt::F_SLP_BUTTON,
    );
    f[fadt::X_DSDT..fadt::X_DSDT + 8].copy_from_slice(&DSDT_ADDR.to_le_bytes());
    for (off, port, len) in [
        (fadt::X_PM1A_EVT_BLK, pm_base as u64, 4u8),
        (fadt::X_PM1A_CNT_BLK, pm_base as u64 + 4, 2),
        (fadt::X_PM_TMR_BLK, pm_base as u64 + 8, 4),
    ] {
        f[off..off + 12].copy_from_slice(&gas_io(port, len));
    }
    finish(&mut f, 9);

    // RSDT: one entry, the FADT.
    let mut rsdt = table(b"RSDT", HEADER_SIZE + 4, 1);
    put32(&mut rsdt, HEADER_SIZE, FADT_ADDR as u32);
    finish(&mut rsdt, 9);

    // RSDP revision 0: signature, checksum, OEM ID, revision, RSDT address.
    let mut rsdp = vec![0u8; RSDP_V1_SIZE];
    rsdp[0..8].copy_from_slice(b"RSD PTR ");
    rsdp[9..15].copy_from_slice(OEM_ID);
    rsdp[15] = 0;
    put32(&mut rsdp, 16, RSDT_ADDR as u32);
    finish(&mut rsdp, 8);

    debug_assert!(DSDT_ADDR + dsdt.len() as u64 <= ACPI_TABLES_END);
    mem.write(DSDT_ADDR, &dsdt);
    mem.write(FACS_ADDR, &facs);
    mem.write(FADT_ADDR, &f);
    mem.write(RSDT_ADDR, &rsdt);
    mem.write(RSDP_ADDR, &rsdp);
    RSDP_ADDR
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> GuestMemory {
        let mut mem = GuestMemory::new(4 << 20).unwrap();
        assert_eq!(write_acpi_tables(&mut mem, 0xB000, 9), 0xE0000);
        mem
    }

    fn bytes(mem: &mut GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        mem.read(addr, &mut b);
        b
    }

    fn sums_to_zero(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x)) == 0
    }

    /// Read a table through its header length and check its checksum.
    fn table_at(mem: &mut GuestMemory, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        let len = mem.read_u32(addr + 4) as usize;
        let t = bytes(mem, addr, len);
        assert_eq!(&t[0..4], sig);
        assert!(
            sums_to_zero(&t),
            "{} checksum",
            String::from_utf8_lossy(sig)
        );
        t
    }

    #[test]
    fn legacy_scan_finds_the_rsdp() {
        let mut mem = tables();
        // What Linux does: 16-byte steps over 0xE0000-0xFFFFF, signature
        // and a 20-byte checksum.
        let found = (0xE0000u64..0x100000).step_by(16).find(|&a| {
            let b = bytes(&mut mem, a, 20);
            &b[0..8] == b"RSD PTR " && sums_to_zero(&b)
        });
        assert_eq!(found, Some(0xE0000));
        assert_eq!(mem.read_u8(0xE0000 + 15), 0); // revision 0
    }

    #[test]
    fn tables_chain_and_check() {
        let mut mem = tables();
        let rsdt_addr = mem.read_u32(0xE0000 + 16) as u64;
        let rsdt = table_at(&mut mem, rsdt_addr, b"RSDT");
        assert_eq!(rsdt.len(), 40);
        let fadt_addr = u32::from_le_bytes(rsdt[36..40].try_into().unwrap()) as u64;
        let f = table_at(&mut mem, fadt_addr, b"FACP");
        assert_eq!(f.len(), 244);
        assert_eq!(f[8], 3);
        let at = |o: usize| u32::from_le_bytes(f[o..o + 4].try_into().unwrap());
        assert_eq!(at(56), 0xB000); // PM1a_EVT_BLK
        assert_eq!(at(64), 0xB004); // PM1a_CNT_BLK
        assert_eq!(at(76), 0xB008); // PM_TMR_BLK
        assert_eq!(at(48), 0); // SMI_CMD
        assert_eq!((f[88], f[89], f[91]), (4, 2, 4));
        assert_eq!(u16::from_le_bytes([f[46], f[47]]), 9); // SCI_INT
        assert_eq!(u16::from_le_bytes([f[109], f[110]]), 3); // legacy + 8042
        assert_eq!(at(112) & 1, 1); // WBINVD
                                    // X_PM1a_CNT_BLK: system I/O, 16 bits, 0xB004.
        assert_eq!(&f[172..176], &[1, 16, 0, 0]);
        assert_eq!(u64::from_le_bytes(f[176..184].try_into().unwrap()), 0xB004);
        assert_eq!(
            u64::from_le_bytes(f[140..148].try_into().unwrap()),
            at(40) as u64
        );
        // FACS: 64-byte aligned, 64 bytes.
        let facs = at(36) as u64;
        assert_eq!(facs % 64, 0);
        assert_eq!(bytes(&mut mem, facs, 4), b"FACS");
        assert_eq!(mem.read_u32(facs + 4), 64);
        // DSDT with the _S5 package.
        let dsdt = table_at(&mut mem, at(40) as u64, b"DSDT");
        let s5 = [
            0x08, 0x5F, 0x53, 0x35, 0x5F, 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
        ];
        assert!(dsdt.windows(12).any(|w| w == s5));
        // Everything inside the reserved ACPI area.
        assert!(at(40) as u64 + dsdt.len() as u64 <= 0xE1000);
    }

    #[test]
    fn checksum_of_known_bytes() {
        assert_eq!(checksum(&[0x01, 0x02, 0xFF]), 0xFE);
        assert_eq!(checksum(&[]), 0);
    }
}
