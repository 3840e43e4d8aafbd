//! The Linux x86 boot protocol, 32-bit entry (Linux
//! Documentation/arch/x86/boot.rst): parse a bzImage's setup header, load
//! the protected-mode kernel at 1 MiB, the initrd as high as the kernel
//! allows, the command line, and fill the zero page (`struct
//! boot_params`) with the setup header, the E820 map and the pointers;
//! then hand over in flat protected mode with ESI = zero page.
//!
//! Written by hand rather than with `linux-loader`: its `bootparam` structs
//! are generated for x86_64 and its loaders write through `vm-memory`,
//! while what i386 needs is a few dozen byte offsets, named below.

use umbra_core::cpu::{CpuState, ESI};
use umbra_core::mem::GuestMemory;

use crate::e820::{e820_map, high_ram_end, E820_ENTRY_SIZE};
use crate::error::BootError;
use crate::gdt::enter_flat_protected_mode;
use crate::layout::{CMDLINE_ADDR, CMDLINE_MAX, KERNEL_LOAD_ADDR, MIN_RAM, ZERO_PAGE_ADDR};

/// Offsets into the zero page (`struct boot_params`,
/// arch/x86/include/uapi/asm/bootparam.h, Documentation/arch/x86/zero-page.rst).
pub mod bp {
    /// `screen_info.orig_video_isVGA` (u8): 0 = no VGA text console.
    pub const ORIG_VIDEO_IS_VGA: usize = 0x00F;
    /// `acpi_rsdp_addr` (u64), honoured from protocol 2.14.
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    /// `alt_mem_k` (u32): KiB of memory above 1 MiB (fallback for E820).
    pub const ALT_MEM_K: usize = 0x1E0;
    /// `e820_entries` (u8).
    pub const E820_ENTRIES: usize = 0x1E8;
    /// Start of the setup header copy (`hdr`).
    pub const HDR: usize = 0x1F1;
    /// `e820_table[128]`, 20 bytes each.
    pub const E820_TABLE: usize = 0x2D0;
    /// Entries `e820_table` holds.
    pub const E820_MAX_ENTRIES: usize = 128;
    /// Size of the zero page.
    pub const SIZE: usize = 4096;
}

/// Offsets of setup-header fields, the same in the bzImage file and in the
/// zero page (boot.rst, "The Real-Mode Kernel Header").
pub mod hdr {
    /// `setup_sects` (u8): 512-byte sectors of real-mode setup (0 means 4).
    pub const SETUP_SECTS: usize = 0x1F1;
    /// `syssize` (u32): protected-mode code size in 16-byte paragraphs.
    pub const SYSSIZE: usize = 0x1F4;
    /// `vid_mode` (u16).
    pub const VID_MODE: usize = 0x1FA;
    /// `boot_flag` (u16): 0xAA55.
    pub const BOOT_FLAG: usize = 0x1FE;
    /// `jump` (u16); its high byte + 0x202 is the end of the header.
    pub const JUMP: usize = 0x200;
    /// `header` (u32): "HdrS".
    pub const HEADER: usize = 0x202;
    /// `version` (u16): protocol major.minor.
    pub const VERSION: usize = 0x206;
    /// `type_of_loader` (u8).
    pub const TYPE_OF_LOADER: usize = 0x210;
    /// `loadflags` (u8).
    pub const LOADFLAGS: usize = 0x211;
    /// `code32_start` (u32).
    pub const CODE32_START: usize = 0x214;
    /// `ramdisk_image` (u32).
    pub const RAMDISK_IMAGE: usize = 0x218;
    /// `ramdisk_size` (u32).
    pub const RAMDISK_SIZE: usize = 0x21C;
    /// `heap_end_ptr` (u16).
    pub const HEAP_END_PTR: usize = 0x224;
    /// `cmd_line_ptr` (u32).
    pub const CMD_LINE_PTR: usize = 0x228;
    /// `initrd_addr_max` (u32): highest address the initrd may occupy.
    pub const INITRD_ADDR_MAX: usize = 0x22C;
    /// `kernel_alignment` (u32).
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    /// `relocatable_kernel` (u8).
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    /// `cmdline_size` (u32): maximum command line length without the NUL.
    pub const CMDLINE_SIZE: usize = 0x238;
    /// `pref_address` (u64): preferred load address (2.10+).
    pub const PREF_ADDRESS: usize = 0x258;
    /// `init_size` (u32): memory the kernel needs from its run address (2.10+).
    pub const INIT_SIZE: usize = 0x260;
    /// Largest header end the zero page has room for (the E820 table
    /// starts at 0x2D0).
    pub const MAX_END: usize = 0x290;
}

/// `loadflags` bits.
pub mod loadflags {
    /// LOADED_HIGH: the protected-mode code is loaded at 1 MiB.
    pub const LOADED_HIGH: u8 = 1 << 0;
    /// KEEP_SEGMENTS: the kernel must not reload segment registers.
    pub const KEEP_SEGMENTS: u8 = 1 << 6;
    /// CAN_USE_HEAP: `heap_end_ptr` is valid.
    pub const CAN_USE_HEAP: u8 = 1 << 7;
}

/// "HdrS", little-endian.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `boot_flag` value.
pub const BOOT_FLAG_MAGIC: u16 = 0xAA55;
/// Oldest protocol accepted: 2.06 (cmdline_size, 32-bit entry as documented).
pub const MIN_PROTOCOL: u16 = 0x0206;
/// Protocol from which `acpi_rsdp_addr` is read.
pub const RSDP_PROTOCOL: u16 = 0x020E;
/// Protocol from which `pref_address` and `init_size` exist.
pub const INIT_SIZE_PROTOCOL: u16 = 0x020A;
/// `type_of_loader` for a boot loader without an assigned ID.
pub const LOADER_UNDEFINED: u8 = 0xFF;
/// `vid_mode` "normal" (80x25); nothing reads it on the 32-bit path.
pub const VID_MODE_NORMAL: u16 = 0xFFFF;
/// `initrd_addr_max` assumed by protocols before 2.03.
pub const DEFAULT_INITRD_ADDR_MAX: u32 = 0x37FF_FFFF;
const PAGE: u64 = 4096;

/// What the setup header says, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    pub setup_sects: u8,
    pub syssize: u32,
    pub version: u16,
    pub loadflags: u8,
    pub code32_start: u32,
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub relocatable: bool,
    pub cmdline_size: u32,
    pub pref_address: u64,
    pub init_size: u32,
    /// End (file offset, exclusive) of the setup header.
    pub header_end: usize,
}

impl SetupHeader {
    /// File offset of the protected-mode kernel.
    pub fn kernel_offset(&self) -> usize {
        let sects = if self.setup_sects == 0 {
            4
        } else {
            self.setup_sects as usize
        };
        (sects + 1) * 512
    }
}

/// Where things went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxBootInfo {
    pub header: SetupHeader,
    /// Boot protocol as (major, minor).
    pub protocol: (u8, u8),
    pub kernel_addr: u64,
    pub kernel_size: u64,
    pub zero_page: u64,
    pub cmdline_addr: u64,
    /// Initrd (address, size), if any.
    pub initrd: Option<(u64, u64)>,
    pub entry: u32,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u32_at(b, off) as u64 | (u32_at(b, off + 4) as u64) << 32
}

/// Whether `image` looks like a bzImage (boot flag and "HdrS" present).
pub fn is_bzimage(image: &[u8]) -> bool {
    image.len() > hdr::HEADER + 4
        && u16_at(image, hdr::BOOT_FLAG) == BOOT_FLAG_MAGIC
        && u32_at(image, hdr::HEADER) == HDRS_MAGIC
}

/// Parse and check the setup header of a bzImage.
pub fn parse_header(image: &[u8]) -> Result<SetupHeader, BootError> {
    if image.len() < 1024 {
        return Err(BootError::NotBzImage(
            "it is smaller than the 1 KiB setup header",
        ));
    }
    if u16_at(image, hdr::BOOT_FLAG) != BOOT_FLAG_MAGIC {
        return Err(BootError::NotBzImage("no 0xAA55 boot flag at offset 0x1FE"));
    }
    if u32_at(image, hdr::HEADER) != HDRS_MAGIC {
        return Err(BootError::NotBzImage(
            "no \"HdrS\" signature at offset 0x202",
        ));
    }
    let version = u16_at(image, hdr::VERSION);
    if version < MIN_PROTOCOL {
        return Err(BootError::ProtocolTooOld {
            major: (version >> 8) as u8,
            minor: version as u8,
        });
    }
    let loadflags = image[hdr::LOADFLAGS];
    if loadflags & loadflags::LOADED_HIGH == 0 {
        return Err(BootError::NotBzImage(
            "it is a zImage (loaded at 0x10000), not a bzImage",
        ));
    }
    let header_end = (0x202 + image[hdr::JUMP + 1] as usize).min(hdr::MAX_END);
    let new = version >= INIT_SIZE_PROTOCOL;
    let h = SetupHeader {
        setup_sects: image[hdr::SETUP_SECTS],
        syssize: u32_at(image, hdr::SYSSIZE),
        version,
        loadflags,
        code32_start: u32_at(image, hdr::CODE32_START),
        initrd_addr_max: match u32_at(image, hdr::INITRD_ADDR_MAX) {
            0 => DEFAULT_INITRD_ADDR_MAX,
            v => v,
        },
        kernel_alignment: u32_at(image, hdr::KERNEL_ALIGNMENT),
        relocatable: image[hdr::RELOCATABLE_KERNEL] != 0,
        cmdline_size: u32_at(image, hdr::CMDLINE_SIZE),
        pref_address: if new {
            u64_at(image, hdr::PREF_ADDRESS)
        } else {
            0
        },
        init_size: if new {
            u32_at(image, hdr::INIT_SIZE)
        } else {
            0
        },
        header_end,
    };
    if h.kernel_offset() >= image.len() {
        return Err(BootError::NotBzImage(
            "it ends before its protected-mode code (setup_sects too large)",
        ));
    }
    Ok(h)
}

fn mib_up(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// Load a bzImage (and initrd) for the 32-bit boot protocol and set `cpu`
/// to its entry state.
pub fn load_linux(
    mem: &mut GuestMemory,
    cpu: &mut CpuState,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    acpi_rsdp: Option<u64>,
) -> Result<LinuxBootInfo, BootError> {
    let h = parse_header(kernel)?;
    let ram_size = mem.ram_size();
    if ram_size < MIN_RAM {
        return Err(BootError::RamTooSmall {
            have_mib: ram_size >> 20,
            need_mib: MIN_RAM >> 20,
        });
    }
    let ram_end = high_ram_end(ram_size);

    // Command line: must fit cmdline_size (without NUL) and our room.
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineHasNul);
    }
    let max = (h.cmdline_size as u64).min(CMDLINE_MAX - 1) as usize;
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }

    // The protected-mode kernel at 1 MiB; from there it decompresses
    // itself to its run address (pref_address for a relocatable kernel
    // loaded below it) and needs init_size bytes there.
    let pm = &kernel[h.kernel_offset()..];
    let kernel_addr = KERNEL_LOAD_ADDR;
    let kernel_end = kernel_addr + pm.len() as u64;
    let run_addr = if h.pref_address > kernel_addr {
        h.pref_address
    } else {
        kernel_addr
    };
    let run_end = run_addr + h.init_size as u64;
    let busy_end = kernel_end.max(run_end);
    if busy_end > ram_end {
        return Err(BootError::DoesNotFit {
            what: "the kernel",
            have_mib: ram_size >> 20,
            need_mib: mib_up(busy_end),
        });
    }
    mem.write(kernel_addr, pm);

    // Initrd: page-aligned, as high as allowed, above everything the
    // kernel uses.
    let initrd_place = match initrd {
        None => None,
        Some(rd) => {
            let size = rd.len() as u64;
            let limit = (h.initrd_addr_max as u64 + 1).min(ram_end);
            let top = limit.checked_sub(size).map(|a| a & !(PAGE - 1));
            match top {
                Some(addr) if addr >= busy_end.next_multiple_of(PAGE) => {
                    mem.write(addr, rd);
                    Some((addr, size))
                }
                _ => {
                    let need = busy_end.next_multiple_of(PAGE) + size.next_multiple_of(PAGE);
                    // Beyond initrd_addr_max more RAM does not help.
                    let need_mib = mib_up(need);
                    return Err(BootError::DoesNotFit {
                        what: if need > h.initrd_addr_max as u64 + 1 {
                            "the kernel plus the initrd (below the kernel's initrd_addr_max)"
                        } else {
                            "the kernel plus the initrd"
                        },
                        have_mib: ram_size >> 20,
                        need_mib,
                    });
                }
            }
        }
    };

    // Command line with its NUL.
    let mut cl = cmdline.as_bytes().to_vec();
    cl.push(0);
    mem.write(CMDLINE_ADDR, &cl);

    // Zero page.
    let mut zp = vec![0u8; bp::SIZE];
    zp[bp::HDR..h.header_end].copy_from_slice(&kernel[bp::HDR..h.header_end]);
    zp[bp::ORIG_VIDEO_IS_VGA] = 0;
    put16(&mut zp, hdr::VID_MODE, VID_MODE_NORMAL);
    zp[hdr::TYPE_OF_LOADER] = LOADER_UNDEFINED;
    zp[hdr::LOADFLAGS] = (h.loadflags | loadflags::LOADED_HIGH | loadflags::CAN_USE_HEAP)
        & !loadflags::KEEP_SEGMENTS;
    // heap_end_ptr only matters to the real-mode setup we skip; point it
    // below the setup code's 64 KiB the way loaders do.
    put16(&mut zp, hdr::HEAP_END_PTR, 0xFE00);
    put32(&mut zp, hdr::CODE32_START, kernel_addr as u32);
    put32(&mut zp, hdr::CMD_LINE_PTR, CMDLINE_ADDR as u32);
    let (rd_addr, rd_size) = initrd_place.unwrap_or((0, 0));
    put32(&mut zp, hdr::RAMDISK_IMAGE, rd_addr as u32);
    put32(&mut zp, hdr::RAMDISK_SIZE, rd_size as u32);
    if let (Some(rsdp), true) = (acpi_rsdp, h.version >= RSDP_PROTOCOL) {
        zp[bp::ACPI_RSDP_ADDR..bp::ACPI_RSDP_ADDR + 8].copy_from_slice(&rsdp.to_le_bytes());
    }
    put32(
        &mut zp,
        bp::ALT_MEM_K,
        ((ram_end - KERNEL_LOAD_ADDR) >> 10) as u32,
    );
    let map = e820_map(ram_size);
    let n = map.len().min(bp::E820_MAX_ENTRIES);
    zp[bp::E820_ENTRIES] = n as u8;
    for (i, e) in map.iter().take(n).enumerate() {
        let off = bp::E820_TABLE + i * E820_ENTRY_SIZE;
        zp[off..off + E820_ENTRY_SIZE].copy_from_slice(&e.to_bytes());
    }
    mem.write(ZERO_PAGE_ADDR, &zp);

    // 32-bit entry: flat CS 0x10 / DS 0x18, ESI = zero page, EBP = EDI =
    // EBX = 0, EIP = code32_start (boot.rst, "32-bit Boot Protocol").
    let entry = kernel_addr as u32;
    enter_flat_protected_mode(mem, cpu, entry);
    cpu.gpr[ESI] = ZERO_PAGE_ADDR;

    tracing::debug!(
        version = format_args!("{:#x}", h.version),
        kernel_end = format_args!("{:#x}", busy_end),
        initrd = ?initrd_place,
        "linux: loaded bzImage"
    );
    Ok(LinuxBootInfo {
        header: h,
        protocol: ((h.version >> 8) as u8, h.version as u8),
        kernel_addr,
        kernel_size: pm.len() as u64,
        zero_page: ZERO_PAGE_ADDR,
        cmdline_addr: CMDLINE_ADDR,
        initrd: initrd_place,
        entry,
    })
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_core::cpu::{SegReg, EBP, EBX, EDI};

    /// A bzImage by hand per boot.rst: one setup sector after the boot
    /// sector, protocol `version`, then `pm_len` bytes of "kernel".
    fn bzimage(version: u16, pm_len: usize) -> Vec<u8> {
        let mut k = vec![0u8; 1024 + pm_len];
        k[0x1F1] = 1; // setup_sects
        k[0x1F4..0x1F8].copy_from_slice(&((pm_len as u32).div_ceil(16)).to_le_bytes());
        k[0x1FE] = 0x55;
        k[0x1FF] = 0xAA;
        k[0x200] = 0xEB; // jmp short
        k[0x201] = 0x6A; // header ends at 0x202 + 0x6A = 0x26C
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        k[0x211] = 0x01; // LOADED_HIGH
        k[0x214..0x218].copy_from_slice(&0x100000u32.to_le_bytes());
        k[0x22C..0x230].copy_from_slice(&0x37FF_FFFFu32.to_le_bytes());
        k[0x230..0x234].copy_from_slice(&0x100000u32.to_le_bytes());
        k[0x234] = 1;
        k[0x238..0x23C].copy_from_slice(&2047u32.to_le_bytes());
        k[0x258..0x260].copy_from_slice(&0x100000u64.to_le_bytes());
        k[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes()); // init_size 4 MiB
        for (i, b) in k[1024..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        k
    }

    #[test]
    fn parses_the_header() {
        let h = parse_header(&bzimage(0x020F, 8192)).unwrap();
        assert_eq!(h.setup_sects, 1);
        assert_eq!(h.kernel_offset(), 1024);
        assert_eq!(h.syssize, 512);
        assert_eq!(h.version, 0x020F);
        assert_eq!(h.initrd_addr_max, 0x37FF_FFFF);
        assert_eq!(h.kernel_alignment, 0x100000);
        assert!(h.relocatable);
        assert_eq!(h.cmdline_size, 2047);
        assert_eq!(h.init_size, 0x40_0000);
        assert_eq!(h.header_end, 0x26C);
        assert!(is_bzimage(&bzimage(0x020F, 16)));
    }

    #[test]
    fn setup_sects_zero_means_four() {
        let mut k = bzimage(0x020F, 4096);
        k[0x1F1] = 0;
        assert_eq!(parse_header(&k).unwrap().kernel_offset(), 5 * 512);
    }

    #[test]
    fn rejects_bad_images() {
        let mut k = bzimage(0x020F, 16);
        k[0x202] = b'X';
        assert!(matches!(parse_header(&k), Err(BootError::NotBzImage(_))));
        assert!(!is_bzimage(&k));
        assert!(matches!(
            parse_header(&[0u8; 100]),
            Err(BootError::NotBzImage(_))
        ));
        let old = bzimage(0x0205, 16);
        match parse_header(&old) {
            Err(e @ BootError::ProtocolTooOld { major: 2, minor: 5 }) => {
                assert!(e.to_string().contains("2.05"), "{e}")
            }
            r => panic!("{r:?}"),
        }
        let mut big_setup = bzimage(0x020F, 16);
        big_setup[0x1F1] = 200;
        assert!(matches!(
            parse_header(&big_setup),
            Err(BootError::NotBzImage(_))
        ));
    }

    #[test]
    fn fills_the_zero_page_and_cpu() {
        let mut mem = GuestMemory::new(128 << 20).unwrap();
        let mut cpu = CpuState::reset();
        let k = bzimage(0x020F, 8192);
        let info =
            load_linux(&mut mem, &mut cpu, &k, None, "console=ttyS0", Some(0xE0000)).unwrap();
        assert_eq!(info.protocol, (2, 15));
        let zp = 0x10000;
        // Setup header copied: "HdrS" and version at their offsets.
        assert_eq!(mem.read_u32(zp + 0x202), 0x5372_6448);
        assert_eq!(mem.read_u16(zp + 0x206), 0x020F);
        assert_eq!(mem.read_u32(zp + 0x238), 2047);
        assert_eq!(mem.read_u8(zp + 0x210), 0xFF); // type_of_loader
        assert_eq!(mem.read_u8(zp + 0x211) & 0x41, 0x01); // LOADED_HIGH, no KEEP_SEGMENTS
        assert_eq!(mem.read_u32(zp + 0x228), 0x20000); // cmd_line_ptr
        assert_eq!(mem.read_u32(zp + 0x218), 0); // no ramdisk
        assert_eq!(mem.read_u64(zp + 0x70), 0xE0000); // acpi_rsdp_addr
        assert_eq!(mem.read_u8(zp + 0x0F), 0); // orig_video_isVGA
                                               // E820: 3 entries; the third is RAM from 1 MiB to 128 MiB.
        assert_eq!(mem.read_u8(zp + 0x1E8), 3);
        assert_eq!(mem.read_u64(zp + 0x2D0 + 8), 0x9FC00);
        assert_eq!(mem.read_u32(zp + 0x2D0 + 16), 1);
        assert_eq!(mem.read_u32(zp + 0x2D0 + 20 + 16), 2);
        assert_eq!(mem.read_u64(zp + 0x2D0 + 40), 0x100000);
        assert_eq!(mem.read_u64(zp + 0x2D0 + 48), 127 << 20);
        assert_eq!(mem.read_u32(zp + 0x2D0 + 56), 1);
        // Command line with NUL.
        let mut cl = [0u8; 14];
        mem.read(0x20000, &mut cl);
        assert_eq!(&cl, b"console=ttyS0\0");
        // Kernel at 1 MiB: byte i is i % 251.
        assert_eq!(mem.read_u8(0x100000 + 300), (300 % 251) as u8);
        assert_eq!(mem.read_u8(0x100000 + 8191), (8191 % 251) as u8);
        // CPU.
        assert_eq!(cpu.eip, 0x100000);
        assert_eq!(cpu.gpr[ESI], 0x10000);
        assert_eq!((cpu.gpr[EBP], cpu.gpr[EDI], cpu.gpr[EBX]), (0, 0, 0));
        assert_eq!(cpu.seg(SegReg::Cs).selector, 0x10);
        assert_eq!(cpu.seg(SegReg::Ds).selector, 0x18);
        assert!(cpu.protected() && !cpu.paging());
    }

    #[test]
    fn rsdp_only_from_protocol_2_14() {
        let mut mem = GuestMemory::new(32 << 20).unwrap();
        let mut cpu = CpuState::reset();
        load_linux(
            &mut mem,
            &mut cpu,
            &bzimage(0x020D, 64),
            None,
            "",
            Some(0xE0000),
        )
        .unwrap();
        assert_eq!(mem.read_u64(0x10000 + 0x70), 0);
    }

    #[test]
    fn initrd_goes_high_page_aligned() {
        let mut mem = GuestMemory::new(128 << 20).unwrap();
        let mut cpu = CpuState::reset();
        let rd = vec![0x5Au8; 10000];
        let info = load_linux(
            &mut mem,
            &mut cpu,
            &bzimage(0x020F, 64),
            Some(&rd),
            "",
            None,
        )
        .unwrap();
        // 0x8000000 - 10000 = 0x7FFD8F0, rounded down to a page.
        assert_eq!(info.initrd, Some((0x7FFD000, 10000)));
        assert_eq!(mem.read_u32(0x10000 + 0x218), 0x7FFD000);
        assert_eq!(mem.read_u32(0x10000 + 0x21C), 10000);
        assert_eq!(mem.read_u8(0x7FFD000 + 9999), 0x5A);
    }

    #[test]
    fn initrd_respects_initrd_addr_max() {
        let mut mem = GuestMemory::new(128 << 20).unwrap();
        let mut cpu = CpuState::reset();
        let mut k = bzimage(0x020F, 64);
        k[0x22C..0x230].copy_from_slice(&0x01FF_FFFFu32.to_le_bytes());
        let rd = vec![1u8; 0x1800];
        let info = load_linux(&mut mem, &mut cpu, &k, Some(&rd), "", None).unwrap();
        // Ends at or below 32 MiB: 0x2000000 - 0x1800 = 0x1FFE800 -> 0x1FFE000.
        assert_eq!(info.initrd, Some((0x1FFE000, 0x1800)));
    }

    #[test]
    fn says_how_much_memory_is_needed() {
        let mut mem = GuestMemory::new(8 << 20).unwrap();
        let mut cpu = CpuState::reset();
        // Kernel uses 1 MiB..5 MiB (init_size 4 MiB); a 6 MiB initrd needs 11 MiB.
        let rd = vec![0u8; 6 << 20];
        let e = load_linux(
            &mut mem,
            &mut cpu,
            &bzimage(0x020F, 64),
            Some(&rd),
            "",
            None,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                BootError::DoesNotFit {
                    have_mib: 8,
                    need_mib: 11,
                    ..
                }
            ),
            "{e:?}"
        );
        // Kernel alone needing more than RAM.
        let mut k = bzimage(0x020F, 64);
        k[0x260..0x264].copy_from_slice(&(16u32 << 20).to_le_bytes());
        let e = load_linux(&mut mem, &mut cpu, &k, None, "", None).unwrap_err();
        assert!(
            matches!(e, BootError::DoesNotFit { need_mib: 17, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn command_line_limits() {
        let mut mem = GuestMemory::new(32 << 20).unwrap();
        let mut cpu = CpuState::reset();
        let long = "x".repeat(2048);
        let e =
            load_linux(&mut mem, &mut cpu, &bzimage(0x020F, 64), None, &long, None).unwrap_err();
        assert!(matches!(
            e,
            BootError::CmdlineTooLong {
                len: 2048,
                max: 2047
            }
        ));
        assert!(load_linux(
            &mut mem,
            &mut cpu,
            &bzimage(0x020F, 64),
            None,
            &long[1..],
            None
        )
        .is_ok());
    }

    /// A real Debian i386 kernel, if one is at hand: $UMBRA_TEST_BZIMAGE,
    /// the guest cache of guests/fetch.sh, or /boot.
    fn real_kernel() -> Option<std::path::PathBuf> {
        if let Some(p) = std::env::var_os("UMBRA_TEST_BZIMAGE") {
            return Some(p.into());
        }
        let cache = std::env::var_os("UMBRA_GUEST_CACHE")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|h| std::path::PathBuf::from(h).join(".cache/umbra/guests"))
            });
        let dirs = cache
            .map(|c| c.join("linux/boot"))
            .into_iter()
            .chain([std::path::PathBuf::from("/boot")]);
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if n.starts_with("vmlinuz") && n.ends_with("-686") {
                    return Some(p);
                }
            }
        }
        None
    }

    #[test]
    fn real_debian_kernel_if_present() {
        let Some(path) = real_kernel() else {
            eprintln!("skipped: no i386 bzImage (run guests/fetch.sh or set UMBRA_TEST_BZIMAGE)");
            return;
        };
        let k = std::fs::read(&path).unwrap();
        let h = parse_header(&k).unwrap();
        assert!(h.version >= 0x020A, "{path:?}: protocol {:#x}", h.version);
        assert!(h.relocatable);
        let mut mem = GuestMemory::new(256 << 20).unwrap();
        let mut cpu = CpuState::reset();
        let rd = vec![0x42u8; 1 << 20];
        let info = load_linux(
            &mut mem,
            &mut cpu,
            &k,
            Some(&rd),
            "console=ttyS0",
            Some(0xE0000),
        )
        .unwrap();
        let (rd_addr, _) = info.initrd.unwrap();
        // Top of RAM (initrd_addr_max is far above 256 MiB): 256 MiB - 1 MiB.
        assert_eq!(rd_addr, 255 << 20);
        assert!(rd_addr >= h.pref_address.max(0x100000) + h.init_size as u64);
        assert_eq!(mem.read_u8(0x100000), k[h.kernel_offset()]);
        assert_eq!(mem.read_u64(0x10000 + 0x70), 0xE0000);
        // Too little RAM: the message names what is needed.
        let mut small = GuestMemory::new(16 << 20).unwrap();
        let e = load_linux(&mut small, &mut cpu, &k, None, "", None).unwrap_err();
        let need = (h.pref_address + h.init_size as u64).div_ceil(1 << 20);
        assert!(
            matches!(e, BootError::DoesNotFit { need_mib, .. } if need_mib == need),
            "{e}"
        );
    }
}
