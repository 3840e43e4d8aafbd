//! Booting through Debian's unmodified SeaBIOS (`bios.bin`, 128 KiB, or
//! `bios-256k.bin`): where its image goes, and the fw_cfg files it reads.
//!
//! The image is mapped as the i440FX decodes its flash: all of it ending at
//! 4 GiB (the reset vector at 0xFFFFFFF0 jumps to F000:E05B), and its last
//! 128 KiB also at 0xE0000-0xFFFFF as the PAM-shadowable ROM
//! (`GuestMemory::add_shadow_rom`). SeaBIOS itself turns the PAM registers
//! to read/write RAM and copies itself from the 4 GiB alias into the RAM
//! beneath (src/fw/shadow.c), so the high copy must stay the plain ROM.
//!
//! Option ROMs: SeaBIOS built for QEMU does not scan 0xC0000 for a VGA BIOS
//! already there; it copies one in from the VGA's PCI ROM BAR, from a fw_cfg
//! file `pciVVVV,DDDD.rom` matching the VGA's vendor/device, or from any
//! fw_cfg file under `vgaroms/` (src/optionroms.c, `vgarom_setup`). The
//! simplest is `vga_rom_file`, a `vgaroms/` file. `load_seabios` still puts
//! a VGA BIOS at 0xC0000 in the shadowable ROM, which is what a board with
//! the VGA BIOS in its flash would show; SeaBIOS overwrites that RAM.
//!
//! It does not build the fw_cfg device (umbra-devices) nor set PAM or CMOS:
//! the machine loads the `fw_cfg_items` into the device and fills CMOS.

use std::path::{Path, PathBuf};

use umbra_core::cpu::CpuState;
use umbra_core::mem::GuestMemory;

use crate::bios::{BIOS_LOW_WINDOW, BIOS_MAX_SIZE, BIOS_SIZE_UNIT};
use crate::e820::E820Entry;
use crate::error::BootError;
use crate::layout::{FOUR_GIB, HIGH_MEMORY_START, MMIO_HOLE_START, OPTION_ROM_START};

/// Largest VGA BIOS accepted: 0xC0000-0xDFFFF.
pub const VGA_ROM_MAX: usize = 128 << 10;
/// fw_cfg name under which SeaBIOS finds a VGA BIOS with no PCI ROM BAR.
pub const VGA_ROM_FILE: &str = "vgaroms/vgabios-stdvga.bin";
/// `etc/boot-fail-wait` value meaning "never reboot after a failed boot"
/// (SeaBIOS compares it with (u32)-1).
pub const BOOT_FAIL_NEVER_REBOOT: u32 = u32::MAX;
/// Directory of SeaBIOS images in Debian's `seabios` package.
pub const DEBIAN_SEABIOS_DIR: &str = "usr/share/seabios";

/// Map `bios` (SeaBIOS `bios.bin`) below 4 GiB and, its last 128 KiB, as
/// the shadowable ROM at 0xE0000-0xFFFFF; put `vgabios` at 0xC0000 in the
/// shadowable ROM; put `cpu` in its RESET state (F000:FFF0, CS base
/// 0xFFFF0000).
pub fn load_seabios(
    mem: &mut GuestMemory,
    cpu: &mut CpuState,
    bios: &[u8],
    vgabios: Option<&[u8]>,
) -> Result<(), BootError> {
    let len = bios.len();
    if len == 0 || len > BIOS_MAX_SIZE || !len.is_multiple_of(BIOS_SIZE_UNIT) {
        return Err(BootError::BadBiosSize { len });
    }
    if let Some(v) = vgabios {
        if v.is_empty() || v.len() > VGA_ROM_MAX {
            return Err(BootError::BadOptionRomSize { len: v.len() });
        }
    }
    mem.add_rom(FOUR_GIB - len as u64, bios.to_vec())?;
    let low = len.min(BIOS_LOW_WINDOW);
    mem.add_shadow_rom(HIGH_MEMORY_START - low as u64, &bios[len - low..])?;
    if let Some(v) = vgabios {
        mem.add_shadow_rom(OPTION_ROM_START, v)?;
    }
    *cpu = CpuState::reset();
    Ok(())
}

/// The fw_cfg files SeaBIOS reads, as (name, contents):
/// - `etc/e820`: `e820` (or, if empty, RAM from 0 to the end of RAM below
///   the MMIO hole), 20-byte little-endian entries. SeaBIOS takes the RAM
///   size below 4 GiB from CMOS; from this file it uses reserved entries
///   and RAM entries above that size.
/// - `etc/boot-fail-wait`: never reboot after a failed boot (u32).
/// - `etc/show-boot-menu`: 0, no boot menu and no wait for a key (u16).
///
/// Absent on purpose: `etc/table-loader` (SeaBIOS then builds its own
/// ACPI tables), `etc/smbios/*` (its own SMBIOS), `bootorder` (an empty
/// one would match every device path).
pub fn fw_cfg_items(ram: u64, e820: &[E820Entry]) -> Vec<(String, Vec<u8>)> {
    let mut map = Vec::with_capacity(e820.len().max(1) * 20);
    if e820.is_empty() {
        let end = ram.min(MMIO_HOLE_START);
        map.extend_from_slice(&0u64.to_le_bytes());
        map.extend_from_slice(&end.to_le_bytes());
        map.extend_from_slice(&1u32.to_le_bytes());
    }
    for e in e820 {
        map.extend_from_slice(&e.to_bytes());
    }
    vec![
        ("etc/e820".to_string(), map),
        (
            "etc/boot-fail-wait".to_string(),
            BOOT_FAIL_NEVER_REBOOT.to_le_bytes().to_vec(),
        ),
        (
            "etc/show-boot-menu".to_string(),
            0u16.to_le_bytes().to_vec(),
        ),
    ]
}

/// The fw_cfg file that makes SeaBIOS copy `vgabios` to 0xC0000 and run it
/// (a `vgaroms/` file: used whatever the VGA's PCI IDs).
pub fn vga_rom_file(vgabios: &[u8]) -> (String, Vec<u8>) {
    (VGA_ROM_FILE.to_string(), vgabios.to_vec())
}

/// The directory holding Debian's SeaBIOS images: /usr/share/seabios if
/// it has `bios.bin`, else the one that guests/fetch-seabios.sh extracts
/// into the guest cache ($UMBRA_GUEST_CACHE or ~/.cache/umbra/guests,
/// then seabios/usr/share/seabios).
pub fn find_debian_seabios() -> Option<PathBuf> {
    let mut dirs = vec![Path::new("/").join(DEBIAN_SEABIOS_DIR)];
    let cache = std::env::var_os("UMBRA_GUEST_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/umbra/guests")));
    if let Some(c) = cache {
        dirs.push(c.join("seabios").join(DEBIAN_SEABIOS_DIR));
    }
    dirs.into_iter().find(|d| d.join("bios.bin").is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e820::E820Kind;
    use umbra_core::cpu::SegReg;

    /// A 128 KiB image whose 4 KiB pages are tagged 1..=32.
    fn image() -> Vec<u8> {
        (0..128 << 10).map(|i: usize| (i >> 12) as u8 + 1).collect()
    }

    #[test]
    fn maps_high_and_shadowable_low() {
        let mut mem = GuestMemory::new(4 << 20).unwrap();
        let mut cpu = CpuState::reset();
        cpu.eip = 0;
        load_seabios(&mut mem, &mut cpu, &image(), None).unwrap();
        // High copy: 0xFFFE0000 is page 1, the reset vector page is 32.
        assert_eq!(mem.read_u8(0xFFFE_0000), 1);
        assert_eq!(mem.read_u8(0xFFFF_FFF0), 32);
        // Low copy: 0xE0000 is page 1, 0xFFFFF page 32; below is RAM.
        assert_eq!(mem.read_u8(0xE0000), 1);
        assert_eq!(mem.read_u8(0xFFFFF), 32);
        assert_eq!(mem.read_u8(0xDFFFF), 0xFF); // empty ISA window
        assert_eq!(mem.shadow_mode(0xF0000), Some((false, false)));
        // SeaBIOS's shadowing: PAM to read/write RAM, copy from 4 GiB.
        mem.set_shadow(0xE0000, 0x20000, true, true);
        assert_eq!(mem.read_u8(0xE0000), 0);
        let mut hi = vec![0; 0x20000];
        mem.read(0xFFFE_0000, &mut hi);
        mem.write(0xE0000, &hi);
        mem.set_shadow(0xE0000, 0x20000, true, false);
        mem.write_u8(0xE0000, 0x99);
        assert_eq!(mem.read_u8(0xE0000), 1);
        assert_eq!(mem.read_u8(0xF0000), 17);
        assert_eq!(
            cpu.seg(SegReg::Cs).base as u64 + cpu.eip as u64,
            0xFFFF_FFF0
        );
    }

    #[test]
    fn vga_bios_and_sizes() {
        let mut mem = GuestMemory::new(4 << 20).unwrap();
        let mut cpu = CpuState::reset();
        load_seabios(&mut mem, &mut cpu, &image(), Some(&[0x55, 0xAA, 0x40][..])).unwrap();
        assert_eq!(mem.read_u16(0xC0000), 0xAA55);
        assert_eq!(mem.read_u8(0xC0003), 0xFF);
        for bad in [0usize, 1000, 320 << 10] {
            let mut mem = GuestMemory::new(4 << 20).unwrap();
            let r = load_seabios(&mut mem, &mut cpu, &vec![0; bad], None);
            assert!(matches!(r, Err(BootError::BadBiosSize { .. })));
        }
        let mut mem = GuestMemory::new(4 << 20).unwrap();
        let big = vec![0; 129 << 10];
        let r = load_seabios(&mut mem, &mut cpu, &image(), Some(&big));
        assert!(matches!(r, Err(BootError::BadOptionRomSize { .. })));
    }

    #[test]
    fn fw_cfg_files() {
        let e820 = [
            E820Entry {
                addr: 0,
                size: 0x9FC00,
                kind: E820Kind::Ram,
            },
            E820Entry {
                addr: 0xFEFFC000,
                size: 0x4000,
                kind: E820Kind::Reserved,
            },
        ];
        let items = fw_cfg_items(64 << 20, &e820);
        let get = |n: &str| items.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let map = get("etc/e820").unwrap();
        assert_eq!(map.len(), 40);
        // Second entry: addr FEFFC000, len 4000, type 2, little-endian.
        assert_eq!(&map[20..28], &[0x00, 0xC0, 0xFF, 0xFE, 0, 0, 0, 0]);
        assert_eq!(&map[28..36], &[0x00, 0x40, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&map[36..40], &[2, 0, 0, 0]);
        assert_eq!(get("etc/boot-fail-wait").unwrap(), vec![0xFF; 4]);
        assert_eq!(get("etc/show-boot-menu").unwrap(), vec![0, 0]);
        assert!(get("etc/table-loader").is_none());
        // No map given: one RAM entry 0..64 MiB.
        let items = fw_cfg_items(64 << 20, &[]);
        let map = &items[0].1;
        assert_eq!(&map[8..16], &(64u64 << 20).to_le_bytes());
        assert_eq!(&map[16..20], &[1, 0, 0, 0]);
        assert_eq!(vga_rom_file(&[1]).0, "vgaroms/vgabios-stdvga.bin");
    }

    #[test]
    fn debian_bios_reset_vector_is_a_far_jump() {
        let Some(dir) = find_debian_seabios() else {
            eprintln!("skipped: no Debian SeaBIOS (run guests/fetch-seabios.sh)");
            return;
        };
        let bios = std::fs::read(dir.join("bios.bin")).unwrap();
        let mut mem = GuestMemory::new(4 << 20).unwrap();
        let mut cpu = CpuState::reset();
        load_seabios(&mut mem, &mut cpu, &bios, None).unwrap();
        // JMP ptr16:16 (opcode EA) to segment F000 in the BIOS.
        assert_eq!(mem.read_u8(0xFFFF_FFF0), 0xEA);
        assert_eq!(mem.read_u16(0xFFFF_FFF3), 0xF000);
        // The same bytes through the low alias at 0xFFFF0.
        assert_eq!(mem.read_u8(0xFFFF0), 0xEA);
    }
}
