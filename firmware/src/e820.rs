//! The E820 memory map (ACPI 6.4 chapter 15, "System Address Map
//! Interfaces") that the Linux zero page and the multiboot `mmap` report
//! for a given RAM size. It owns only the list; the loaders copy it into
//! their own formats.

use crate::layout::{EBDA_START, HIGH_MEMORY_START, MMIO_HOLE_START};

/// Address range type, as the E820 call returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    /// AddressRangeMemory: usable RAM.
    Ram = 1,
    /// AddressRangeReserved: not for the OS.
    Reserved = 2,
    /// AddressRangeACPI: ACPI tables, reclaimable after they are read.
    Acpi = 3,
    /// AddressRangeNVS: ACPI NVS, must be preserved.
    Nvs = 4,
}

/// One range of the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// Size of one entry in the binary E820 layout: u64 addr, u64 size, u32 type.
pub const E820_ENTRY_SIZE: usize = 20;

impl E820Entry {
    /// The 20-byte binary form (as in `boot_params.e820_table` and, after
    /// the size field, the multiboot memory map).
    pub fn to_bytes(&self) -> [u8; E820_ENTRY_SIZE] {
        let mut b = [0u8; E820_ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..20].copy_from_slice(&(self.kind as u32).to_le_bytes());
        b
    }
}

/// The map for `ram_size` bytes of RAM at physical 0: conventional memory
/// up to the EBDA, the rest of the first megabyte reserved (EBDA, VGA,
/// option ROMs, ACPI tables, BIOS), then RAM from 1 MiB to the end of RAM
/// or the MMIO hole, whichever comes first.
pub fn e820_map(ram_size: u64) -> Vec<E820Entry> {
    let mut map = Vec::with_capacity(3);
    map.push(E820Entry {
        addr: 0,
        size: EBDA_START.min(ram_size),
        kind: E820Kind::Ram,
    });
    map.push(E820Entry {
        addr: EBDA_START,
        size: HIGH_MEMORY_START - EBDA_START,
        kind: E820Kind::Reserved,
    });
    let high_end = ram_size.min(MMIO_HOLE_START);
    if high_end > HIGH_MEMORY_START {
        map.push(E820Entry {
            addr: HIGH_MEMORY_START,
            size: high_end - HIGH_MEMORY_START,
            kind: E820Kind::Ram,
        });
    }
    map
}

/// End of usable RAM above 1 MiB (exclusive) for `ram_size` bytes of RAM.
pub fn high_ram_end(ram_size: u64) -> u64 {
    ram_size.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_for_128_mib() {
        let m = e820_map(128 << 20);
        assert_eq!(
            m,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9FC00,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: 0x9FC00,
                    size: 0x60400,
                    kind: E820Kind::Reserved
                },
                E820Entry {
                    addr: 0x100000,
                    size: 0x7F0_0000,
                    kind: E820Kind::Ram
                },
            ]
        );
    }

    #[test]
    fn ram_stops_at_the_mmio_hole() {
        let m = e820_map(0xF000_0000);
        let last = m.last().unwrap();
        assert_eq!(last.addr + last.size, 0xE000_0000);
    }

    #[test]
    fn binary_form() {
        let e = E820Entry {
            addr: 0x1122_3344_5566_7788,
            size: 0x10,
            kind: E820Kind::Acpi,
        };
        let b = e.to_bytes();
        assert_eq!(&b[0..8], &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[8..16], &[0x10, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[16..20], &[3, 0, 0, 0]);
    }
}
