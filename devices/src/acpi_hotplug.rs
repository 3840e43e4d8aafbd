//! The hotplug and general-purpose-event I/O registers that SeaBIOS's
//! built-in ACPI tables name (the QEMU PIIX4 layout; not PIIX4 hardware):
//! a GPE0 block at 0xAFE0 (the FADT's GPE0_BLK), the PCI hotplug block at
//! 0xAE00 (slots come up, go down, eject, removable) and the CPU presence
//! bitmap at 0xAF00. The DSDT's GPE methods read them: \_GPE._E01 walks
//! the PCI slots and sends "device check" for each bit of the up register
//! and "eject request" for each bit of the down register, \_GPE._E02
//! compares the CPU bitmap with the CPUs it believes are on.
//!
//! Owns: the decoding and values of the hotplug registers. Nothing is ever
//! hot-plugged on this machine, so the slot registers read 0 and ejects
//! are ignored (counted), and the CPU bitmap shows the one CPU. The GPE0
//! registers themselves are the ACPI PM block's (`acpi_pm`, which raises
//! the SCI); `decode` only says where an access lands.
//!
//! Why it matters: left floating, these ports read all ones, and Linux's
//! ACPI core saw every GPE pending as it enabled them; \_E01 then asked it
//! to eject every PCI slot, slot 1 (the PIIX: ISA bridge, IDE, PM) among
//! them, and depending on when that work ran, the IDE controller and the
//! ISA devices vanished before their drivers bound to them.

use serde::{Deserialize, Serialize};

/// The FADT's GPE0 block: status (16 bits) then enables (16 bits).
pub const GPE0_BASE: u16 = 0xAFE0;
/// Bytes of the GPE0 block.
pub const GPE0_LEN: u16 = 4;
/// PCI hotplug registers.
pub const PCI_HP_BASE: u16 = 0xAE00;
/// Bytes decoded from `PCI_HP_BASE`.
pub const PCI_HP_LEN: u16 = 0x14;
/// Offsets from `PCI_HP_BASE`, each a 32-bit register with one bit per
/// slot of bus 0.
/// Slots that came up (read; the guest sends "device check").
pub const PCI_UP: u16 = 0x00;
/// Slots going down (read; the guest sends "eject request").
pub const PCI_DOWN: u16 = 0x04;
/// Eject the slots whose bits are written (write).
pub const PCI_EJECT: u16 = 0x08;
/// Slots whose devices may be removed (read).
pub const PCI_REMOVABLE: u16 = 0x0C;
/// Bus selector of the newer layout (read/write; bus 0 only here).
pub const PCI_BUS_SEL: u16 = 0x10;
/// CPU presence bitmap: bit n of the 256-bit map (byte n / 8) is CPU n.
pub const CPU_HP_BASE: u16 = 0xAF00;
/// Bytes of the CPU presence bitmap.
pub const CPU_HP_LEN: u16 = 32;

/// Where a port of these blocks lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Offset into the GPE0 block (status at 0, enables at 2).
    Gpe0(u16),
    /// Offset into the PCI hotplug block.
    PciHotplug(u16),
    /// Offset into the CPU presence bitmap.
    CpuPresence(u16),
}

/// Which block, if any, `port` belongs to.
pub fn decode(port: u16) -> Option<Decoded> {
    let off = |base: u16, len: u16| port.checked_sub(base).filter(|o| *o < len);
    if let Some(o) = off(GPE0_BASE, GPE0_LEN) {
        Some(Decoded::Gpe0(o))
    } else if let Some(o) = off(PCI_HP_BASE, PCI_HP_LEN) {
        Some(Decoded::PciHotplug(o))
    } else {
        off(CPU_HP_BASE, CPU_HP_LEN).map(Decoded::CpuPresence)
    }
}

/// The hotplug registers of a machine that never hot-plugs anything.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AcpiHotplug {
    /// CPUs present (bits 0..cpus set in the bitmap).
    cpus: u16,
    /// The bus selector as last written.
    bus_sel: u32,
    /// Ejects and writes to read-only registers, ignored.
    ignored: u64,
}

impl AcpiHotplug {
    /// Registers of a machine with `cpus` CPUs (at most 256).
    pub fn new(cpus: u16) -> Self {
        AcpiHotplug {
            cpus: cpus.min(256),
            ..Default::default()
        }
    }

    /// Writes that had no effect.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Byte `i` of the CPU presence bitmap.
    fn cpu_byte(&self, i: u16) -> u32 {
        let first = i * 8;
        let n = self.cpus.saturating_sub(first).min(8);
        (0xFFu32 >> (8 - n)) & 0xFF
    }

    /// Read `size` bytes at offset `off` of the PCI hotplug block.
    pub fn pci_read(&self, off: u16, size: u8) -> u32 {
        let mut v = 0u32;
        for i in 0..size.clamp(1, 4) as u16 {
            let byte = off + i;
            let b = match byte & !3 {
                // No slot ever comes up, goes down or may be removed.
                PCI_UP | PCI_DOWN | PCI_REMOVABLE => 0,
                // Eject is write-only.
                PCI_EJECT => 0,
                // The selector reads back.
                PCI_BUS_SEL => (self.bus_sel >> (8 * (byte & 3))) & 0xFF,
                _ => 0,
            };
            v |= b << (8 * i);
        }
        v
    }

    /// Write `size` bytes of `value` at offset `off` of the PCI hotplug
    /// block.
    pub fn pci_write(&mut self, off: u16, size: u8, value: u32) {
        for i in 0..size.clamp(1, 4) as u16 {
            let byte = off + i;
            let b = (value >> (8 * i)) & 0xFF;
            match byte & !3 {
                PCI_BUS_SEL => {
                    let sh = 8 * (byte & 3);
                    self.bus_sel = (self.bus_sel & !(0xFF << sh)) | (b << sh);
                }
                // Nothing is removable: an eject (or a write to a read-only
                // register) does nothing.
                _ => {
                    if b != 0 {
                        self.ignored += 1;
                        tracing::debug!(off = byte, value = b, "acpi hotplug: write ignored");
                    }
                }
            }
        }
    }

    /// Read `size` bytes at offset `off` of the CPU presence bitmap.
    pub fn cpu_read(&self, off: u16, size: u8) -> u32 {
        let mut v = 0u32;
        for i in 0..size.clamp(1, 4) as u16 {
            if off + i < CPU_HP_LEN {
                v |= self.cpu_byte(off + i) << (8 * i);
            }
        }
        v
    }

    /// A write to the CPU presence bitmap: read-only here (no CPU comes or
    /// goes).
    pub fn cpu_write(&mut self, _off: u16, _size: u8, _value: u32) {
        self.ignored += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_three_blocks_and_nothing_beside_them() {
        assert_eq!(decode(0xAFE0), Some(Decoded::Gpe0(0)));
        assert_eq!(decode(0xAFE3), Some(Decoded::Gpe0(3)));
        assert_eq!(decode(0xAFE4), None);
        assert_eq!(decode(0xAFDF), None);
        assert_eq!(decode(0xAE00), Some(Decoded::PciHotplug(0)));
        assert_eq!(decode(0xAE13), Some(Decoded::PciHotplug(0x13)));
        assert_eq!(decode(0xAE14), None);
        assert_eq!(decode(0xAF00), Some(Decoded::CpuPresence(0)));
        assert_eq!(decode(0xAF1F), Some(Decoded::CpuPresence(31)));
        assert_eq!(decode(0xAF20), None);
    }

    #[test]
    fn no_slot_ever_changes_and_ejects_are_ignored() {
        let mut hp = AcpiHotplug::new(1);
        for off in [PCI_UP, PCI_DOWN, PCI_EJECT, PCI_REMOVABLE] {
            assert_eq!(hp.pci_read(off, 4), 0, "register {off:#x}");
        }
        // Eject slot 1 (the PIIX): nothing happens, the write is counted.
        hp.pci_write(PCI_EJECT, 4, 1 << 1);
        assert_eq!(hp.ignored(), 1);
        assert_eq!(hp.pci_read(PCI_DOWN, 4), 0);
        // The bus selector reads back, byte by byte too.
        hp.pci_write(PCI_BUS_SEL, 4, 0x0000_0000);
        hp.pci_write(PCI_BUS_SEL + 1, 1, 0x12);
        assert_eq!(hp.pci_read(PCI_BUS_SEL, 4), 0x1200);
    }

    #[test]
    fn cpu_bitmap_shows_the_cpus_present() {
        let hp = AcpiHotplug::new(1);
        assert_eq!(hp.cpu_read(0, 1), 0b1);
        assert_eq!(hp.cpu_read(0, 4), 0b1);
        assert_eq!(hp.cpu_read(4, 4), 0);
        let hp = AcpiHotplug::new(10);
        // CPUs 0-7 in byte 0, 8-9 in byte 1.
        assert_eq!(hp.cpu_read(0, 2), 0x03FF);
        assert_eq!(hp.cpu_read(30, 4), 0, "bytes past the map read 0");
    }
}
