//! `--bios FILE`: map a system BIOS image (SeaBIOS `bios.bin`, 128 KiB, or
//! `bios-256k.bin`) the way the i440FX board decodes its flash: the whole
//! image ends at 4 GiB, where the reset vector at 0xFFFFFFF0 lies, and its
//! last 128 KiB (or all of a smaller image) also end at 1 MiB, in the
//! legacy 0xE0000-0xFFFFF window. The CPU is put in its RESET state, so it
//! starts at F000:FFF0 with CS base 0xFFFF0000, inside the high copy.
//!
//! Both copies are read-only here; PAM shadowing (copying to RAM and
//! write-enabling the low window) is the chipset's job, not this module's.

use umbra_core::cpu::CpuState;
use umbra_core::mem::GuestMemory;

use crate::error::BootError;
use crate::layout::{FOUR_GIB, HIGH_MEMORY_START};

/// Image sizes must be a multiple of this.
pub const BIOS_SIZE_UNIT: usize = 64 << 10;
/// Largest image accepted.
pub const BIOS_MAX_SIZE: usize = 256 << 10;
/// Most of the image that appears below 1 MiB (0xE0000-0xFFFFF).
pub const BIOS_LOW_WINDOW: usize = 128 << 10;

/// Map `rom` below 4 GiB and below 1 MiB and reset `cpu`.
pub fn load_bios(mem: &mut GuestMemory, cpu: &mut CpuState, rom: &[u8]) -> Result<(), BootError> {
    let len = rom.len();
    if len == 0 || len > BIOS_MAX_SIZE || !len.is_multiple_of(BIOS_SIZE_UNIT) {
        return Err(BootError::BadBiosSize { len });
    }
    mem.add_rom(FOUR_GIB - len as u64, rom.to_vec())?;
    let low = len.min(BIOS_LOW_WINDOW);
    mem.add_rom(HIGH_MEMORY_START - low as u64, rom[len - low..].to_vec())?;
    *cpu = CpuState::reset();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_core::cpu::SegReg;

    fn rom(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i / BIOS_SIZE_UNIT) as u8 + 1).collect()
    }

    #[test]
    fn maps_at_4g_and_1m() {
        let mut mem = GuestMemory::new(4 << 20).unwrap();
        let mut cpu = CpuState::reset();
        cpu.eip = 0;
        load_bios(&mut mem, &mut cpu, &rom(256 << 10)).unwrap();
        // Four 64 KiB chunks tagged 1..4: the high copy has them all.
        assert_eq!(mem.read_u8(0xFFFC_0000), 1);
        assert_eq!(mem.read_u8(0xFFFF_FFF0), 4);
        // The low window holds the last 128 KiB (chunks 3 and 4).
        assert_eq!(mem.read_u8(0xE0000), 3);
        assert_eq!(mem.read_u8(0xFFFFF), 4);
        assert_eq!(mem.read_u8(0xDFFFF), 0); // RAM below stays
                                             // Reset vector: CS base + EIP = 0xFFFFFFF0.
        assert_eq!(
            cpu.seg(SegReg::Cs).base as u64 + cpu.eip as u64,
            0xFFFF_FFF0
        );
    }

    #[test]
    fn small_image_is_mapped_whole_below_1m() {
        let mut mem = GuestMemory::new(4 << 20).unwrap();
        let mut cpu = CpuState::reset();
        load_bios(&mut mem, &mut cpu, &rom(64 << 10)).unwrap();
        assert_eq!(mem.read_u8(0xF0000), 1);
        assert_eq!(mem.read_u8(0xEFFFF), 0);
        assert_eq!(mem.read_u8(0xFFFF_0000), 1);
    }

    #[test]
    fn bad_sizes_are_refused() {
        let mut mem = GuestMemory::new(4 << 20).unwrap();
        let mut cpu = CpuState::reset();
        for len in [0, 1000, 65 << 10, 320 << 10] {
            let e = load_bios(&mut mem, &mut cpu, &vec![0; len]).unwrap_err();
            assert!(matches!(e, BootError::BadBiosSize { .. }), "{len}");
            assert!(e.to_string().contains("KiB"));
        }
    }
}
