//! Multiboot v1 (the Multiboot Specification 0.6.96): find the header in
//! the first 8192 bytes, load an ELF32 kernel's PT_LOAD segments or an
//! image described by the a.out kludge address fields, place the modules,
//! build the multiboot information structure (memory sizes, command line,
//! modules, memory map from E820, boot loader name) and hand over with
//! EAX = 0x2BADB002, EBX = info, flat 32-bit protected mode, paging and
//! interrupts off (spec 3.2, "Machine state").

use umbra_core::cpu::{CpuState, EAX, EBX};
use umbra_core::mem::GuestMemory;

use crate::e820::{e820_map, high_ram_end, E820_ENTRY_SIZE};
use crate::error::BootError;
use crate::gdt::enter_flat_protected_mode;
use crate::layout::{EBDA_START, HIGH_MEMORY_START, MULTIBOOT_INFO_ADDR, MULTIBOOT_INFO_END};

/// Header magic the kernel carries.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// Value in EAX at entry telling the kernel a multiboot loader ran.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header lies 32-bit aligned within this many bytes of the image.
pub const SEARCH_LEN: usize = 8192;
/// Boot loader name passed in the info structure.
pub const LOADER_NAME: &str = "umbra";

/// Header `flags` bits (spec 3.1.2).
pub mod hflags {
    /// Align modules on 4 KiB boundaries.
    pub const PAGE_ALIGN: u32 = 1 << 0;
    /// Pass mem_* (and the memory map).
    pub const MEMORY_INFO: u32 = 1 << 1;
    /// Pass a video mode table (ignored: no VBE).
    pub const VIDEO_MODE: u32 = 1 << 2;
    /// The a.out kludge address fields are valid.
    pub const AOUT_KLUDGE: u32 = 1 << 16;
    /// Bits 0-15 are requirements: a loader must refuse ones it lacks.
    pub const REQUIRED_MASK: u32 = 0xFFFF;
    /// Requirement bits this loader meets (or ignores with a warning).
    pub const SUPPORTED: u32 = PAGE_ALIGN | MEMORY_INFO | VIDEO_MODE;
}

/// Info `flags` bits (spec 3.3).
pub mod iflags {
    /// mem_lower / mem_upper valid.
    pub const MEMORY: u32 = 1 << 0;
    /// cmdline valid.
    pub const CMDLINE: u32 = 1 << 2;
    /// mods_count / mods_addr valid.
    pub const MODS: u32 = 1 << 3;
    /// mmap_length / mmap_addr valid.
    pub const MEM_MAP: u32 = 1 << 6;
    /// boot_loader_name valid.
    pub const BOOT_LOADER_NAME: u32 = 1 << 9;
}

/// Offsets in the multiboot information structure (spec 3.3).
pub mod info {
    pub const FLAGS: usize = 0;
    pub const MEM_LOWER: usize = 4;
    pub const MEM_UPPER: usize = 8;
    pub const CMDLINE: usize = 16;
    pub const MODS_COUNT: usize = 20;
    pub const MODS_ADDR: usize = 24;
    pub const MMAP_LENGTH: usize = 44;
    pub const MMAP_ADDR: usize = 48;
    pub const BOOT_LOADER_NAME: usize = 64;
    /// Room reserved for the structure (it is 116 bytes with the
    /// framebuffer fields).
    pub const SIZE: usize = 128;
    /// One module entry: mod_start, mod_end, string, reserved.
    pub const MOD_ENTRY: usize = 16;
    /// One memory-map entry: size (20) then an E820 entry.
    pub const MMAP_ENTRY: usize = 24;
}

/// The parsed multiboot header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultibootHeader {
    /// File offset of the magic.
    pub offset: usize,
    pub flags: u32,
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

/// Where things went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultibootInfo {
    pub header: MultibootHeader,
    pub entry: u32,
    /// Physical address of the information structure (EBX).
    pub info_addr: u64,
    /// Lowest and highest (exclusive) physical address the kernel occupies.
    pub kernel_start: u64,
    pub kernel_end: u64,
    /// (start, end exclusive) of each module.
    pub modules: Vec<(u64, u64)>,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off.checked_add(4)?)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..off.checked_add(2)?)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
}

/// Find and check the header (first valid one on a 4-byte boundary within
/// the first 8192 bytes).
pub fn find_header(image: &[u8]) -> Result<MultibootHeader, BootError> {
    let mut bad_checksum = None;
    let end = image.len().min(SEARCH_LEN);
    for off in (0..end.saturating_sub(11)).step_by(4) {
        if u32_at(image, off) != Some(HEADER_MAGIC) {
            continue;
        }
        let flags = u32_at(image, off + 4).unwrap_or(0);
        let sum = u32_at(image, off + 8).unwrap_or(0);
        if HEADER_MAGIC.wrapping_add(flags).wrapping_add(sum) != 0 {
            bad_checksum.get_or_insert(off);
            continue;
        }
        let f = |i: usize| u32_at(image, off + 12 + 4 * i).unwrap_or(0);
        return Ok(MultibootHeader {
            offset: off,
            flags,
            header_addr: f(0),
            load_addr: f(1),
            load_end_addr: f(2),
            bss_end_addr: f(3),
            entry_addr: f(4),
        });
    }
    Err(match bad_checksum {
        Some(offset) => BootError::MultibootChecksum { offset },
        None => BootError::NoMultibootHeader,
    })
}

/// Whether `image` carries a valid multiboot v1 header.
pub fn is_multiboot(image: &[u8]) -> bool {
    find_header(image).is_ok()
}

pub use crate::linux::is_bzimage;

/// One piece of the image to place: physical address, file bytes, and
/// memory size (the rest zero-filled).
struct Segment<'a> {
    paddr: u64,
    data: &'a [u8],
    memsz: u64,
}

fn bad(s: &str) -> BootError {
    BootError::BadImage(s.to_string())
}

/// ELF32 little-endian i386 executable: the PT_LOAD segments and the
/// entry point (translated from virtual to physical if a segment's p_vaddr
/// differs from its p_paddr).
fn elf_segments(image: &[u8]) -> Result<(Vec<Segment<'_>>, u32), BootError> {
    const PT_LOAD: u32 = 1;
    if image.get(0..4) != Some(b"\x7FELF") {
        return Err(bad(
            "no ELF signature and no a.out kludge (header flag bit 16)",
        ));
    }
    if image.get(4) != Some(&1) || image.get(5) != Some(&1) {
        return Err(bad(
            "not a 32-bit little-endian ELF (build the kernel for i386)",
        ));
    }
    if u16_at(image, 18) != Some(3) {
        return Err(bad("ELF machine is not i386 (EM_386)"));
    }
    if u16_at(image, 16) != Some(2) {
        return Err(bad("ELF file is not an executable (ET_EXEC)"));
    }
    let entry = u32_at(image, 24).unwrap_or(0);
    let phoff = u32_at(image, 28).unwrap_or(0) as usize;
    let phentsize = u16_at(image, 42).unwrap_or(0) as usize;
    let phnum = u16_at(image, 44).unwrap_or(0) as usize;
    if phentsize < 32 {
        return Err(bad("ELF program header entries are too small"));
    }
    let mut segs = Vec::new();
    let mut phys_entry = None;
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i * phentsize)
            .ok_or_else(|| bad("ELF program headers overflow"))?;
        let field = |k: usize| {
            u32_at(image, ph + 4 * k)
                .ok_or_else(|| bad("ELF program headers run past the end of the file"))
        };
        if field(0)? != PT_LOAD {
            continue;
        }
        let (offset, vaddr, paddr, filesz, memsz) =
            (field(1)?, field(2)?, field(3)?, field(4)?, field(5)?);
        if filesz > memsz {
            return Err(bad("an ELF segment's file size exceeds its memory size"));
        }
        let data = image
            .get(offset as usize..(offset as usize).saturating_add(filesz as usize))
            .ok_or_else(|| bad("an ELF segment runs past the end of the file"))?;
        if memsz == 0 {
            continue;
        }
        if phys_entry.is_none() && entry >= vaddr && (entry - vaddr) < memsz {
            phys_entry = Some(paddr.wrapping_add(entry - vaddr));
        }
        segs.push(Segment {
            paddr: paddr as u64,
            data,
            memsz: memsz as u64,
        });
    }
    if segs.is_empty() {
        return Err(bad("the ELF file has no loadable segment"));
    }
    Ok((segs, phys_entry.unwrap_or(entry)))
}

/// The a.out kludge (spec 3.1.3): the file from the header's position
/// back to `load_addr` goes to `load_addr`, up to `load_end_addr` (0: the
/// end of the file), then zeroes up to `bss_end_addr` (0: none).
fn aout_segments<'a>(
    image: &'a [u8],
    h: &MultibootHeader,
) -> Result<(Vec<Segment<'a>>, u32), BootError> {
    let back =
        h.header_addr
            .checked_sub(h.load_addr)
            .ok_or_else(|| bad("a.out kludge: load_addr is above header_addr"))? as usize;
    let start = h
        .offset
        .checked_sub(back)
        .ok_or_else(|| bad("a.out kludge: load_addr lies before the start of the file"))?;
    let len = if h.load_end_addr == 0 {
        image.len() - start
    } else {
        h.load_end_addr
            .checked_sub(h.load_addr)
            .ok_or_else(|| bad("a.out kludge: load_end_addr is below load_addr"))? as usize
    };
    let data = image
        .get(start..start.saturating_add(len))
        .ok_or_else(|| bad("a.out kludge: load_end_addr lies past the end of the file"))?;
    let load_end = h.load_addr as u64 + len as u64;
    let memsz = if h.bss_end_addr == 0 {
        len as u64
    } else if (h.bss_end_addr as u64) < load_end {
        return Err(bad(
            "a.out kludge: bss_end_addr is below the end of the loaded image",
        ));
    } else {
        h.bss_end_addr as u64 - h.load_addr as u64
    };
    Ok((
        vec![Segment {
            paddr: h.load_addr as u64,
            data,
            memsz,
        }],
        h.entry_addr,
    ))
}

/// Load a multiboot v1 kernel with its modules ((image, command line)
/// pairs) and set `cpu` to the multiboot entry state.
pub fn load_multiboot(
    mem: &mut GuestMemory,
    cpu: &mut CpuState,
    image: &[u8],
    cmdline: &str,
    modules: &[(Vec<u8>, String)],
) -> Result<MultibootInfo, BootError> {
    let h = find_header(image)?;
    let required = h.flags & hflags::REQUIRED_MASK;
    if required & !hflags::SUPPORTED != 0 {
        return Err(BootError::MultibootFlags {
            bits: required & !hflags::SUPPORTED,
        });
    }
    if h.flags & hflags::VIDEO_MODE != 0 {
        tracing::warn!(
            "multiboot: the kernel asks for a video mode; none is set (text console stays)"
        );
    }
    let (segs, entry) = if h.flags & hflags::AOUT_KLUDGE != 0 {
        aout_segments(image, &h)?
    } else {
        elf_segments(image)?
    };

    let ram_size = mem.ram_size();
    let ram_end = high_ram_end(ram_size);
    let ram_mib = ram_size >> 20;
    let mut kernel_start = u64::MAX;
    let mut kernel_end = 0u64;
    for s in &segs {
        let end = s.paddr + s.memsz;
        if s.paddr < HIGH_MEMORY_START || end > ram_end {
            return Err(BootError::OutsideRam {
                what: "a kernel segment",
                addr: s.paddr,
                end,
                ram_mib,
            });
        }
        kernel_start = kernel_start.min(s.paddr);
        kernel_end = kernel_end.max(end);
    }
    for s in &segs {
        mem.write(s.paddr, s.data);
        let zeros = vec![0u8; (s.memsz - s.data.len() as u64) as usize];
        mem.write(s.paddr + s.data.len() as u64, &zeros);
    }

    // Modules, page-aligned one after the other above the kernel.
    let mut placed = Vec::with_capacity(modules.len());
    let mut next = kernel_end.next_multiple_of(4096);
    for (data, _) in modules {
        let end = next + data.len() as u64;
        if end > ram_end {
            return Err(BootError::DoesNotFit {
                what: "the multiboot kernel and its modules",
                have_mib: ram_mib,
                need_mib: modules
                    .iter()
                    .fold(next, |a, (d, _)| {
                        a + (d.len() as u64).next_multiple_of(4096)
                    })
                    .div_ceil(1 << 20)
                    .max(end.div_ceil(1 << 20)),
            });
        }
        mem.write(next, data);
        placed.push((next, end));
        next = end.next_multiple_of(4096);
    }

    // Information area: the structure, the memory map, the module list,
    // then the strings.
    let base = MULTIBOOT_INFO_ADDR;
    let room = (MULTIBOOT_INFO_END - MULTIBOOT_INFO_ADDR) as usize;
    let map = e820_map(ram_size);
    let mmap_off = info::SIZE;
    let mods_off = mmap_off + map.len() * info::MMAP_ENTRY;
    let mut strings_off = mods_off + modules.len() * info::MOD_ENTRY;
    let string_len: usize = cmdline.len()
        + 1
        + LOADER_NAME.len()
        + 1
        + modules.iter().map(|(_, s)| s.len() + 1).sum::<usize>();
    if strings_off + string_len > room {
        return Err(BootError::MultibootInfoTooBig {
            len: strings_off + string_len,
            max: room,
        });
    }
    let mut area = vec![0u8; strings_off + string_len];
    let mut put_str = |area: &mut Vec<u8>, s: &str| -> u32 {
        let at = strings_off;
        area[at..at + s.len()].copy_from_slice(s.as_bytes());
        strings_off += s.len() + 1;
        (base + at as u64) as u32
    };
    let cmdline_addr = put_str(&mut area, cmdline);
    let name_addr = put_str(&mut area, LOADER_NAME);
    let mut mod_strings = Vec::with_capacity(modules.len());
    for (_, s) in modules {
        mod_strings.push(put_str(&mut area, s));
    }
    let put = |area: &mut Vec<u8>, off: usize, v: u32| {
        area[off..off + 4].copy_from_slice(&v.to_le_bytes())
    };
    put(
        &mut area,
        info::FLAGS,
        iflags::MEMORY
            | iflags::CMDLINE
            | iflags::MODS
            | iflags::MEM_MAP
            | iflags::BOOT_LOADER_NAME,
    );
    put(
        &mut area,
        info::MEM_LOWER,
        (EBDA_START.min(ram_size) >> 10) as u32,
    );
    put(
        &mut area,
        info::MEM_UPPER,
        ((ram_end - HIGH_MEMORY_START) >> 10) as u32,
    );
    put(&mut area, info::CMDLINE, cmdline_addr);
    put(&mut area, info::MODS_COUNT, modules.len() as u32);
    put(&mut area, info::MODS_ADDR, (base + mods_off as u64) as u32);
    put(
        &mut area,
        info::MMAP_LENGTH,
        (map.len() * info::MMAP_ENTRY) as u32,
    );
    put(&mut area, info::MMAP_ADDR, (base + mmap_off as u64) as u32);
    put(&mut area, info::BOOT_LOADER_NAME, name_addr);
    for (i, e) in map.iter().enumerate() {
        let o = mmap_off + i * info::MMAP_ENTRY;
        put(&mut area, o, E820_ENTRY_SIZE as u32);
        area[o + 4..o + 4 + E820_ENTRY_SIZE].copy_from_slice(&e.to_bytes());
    }
    for (i, (&(start, end), s)) in placed.iter().zip(&mod_strings).enumerate() {
        let o = mods_off + i * info::MOD_ENTRY;
        put(&mut area, o, start as u32);
        put(&mut area, o + 4, end as u32);
        put(&mut area, o + 8, *s);
    }
    mem.write(base, &area);

    enter_flat_protected_mode(mem, cpu, entry);
    cpu.gpr[EAX] = BOOTLOADER_MAGIC as u64;
    cpu.gpr[EBX] = base;
    tracing::debug!(
        entry = format_args!("{entry:#x}"),
        kernel = format_args!("{kernel_start:#x}..{kernel_end:#x}"),
        modules = placed.len(),
        "multiboot: loaded kernel"
    );
    Ok(MultibootInfo {
        header: h,
        entry,
        info_addr: base,
        kernel_start,
        kernel_end,
        modules: placed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkernel::{multiboot_aout_test_kernel, multiboot_test_kernel, TEST_BSS};
    use umbra_core::cpu::SegReg;

    fn read_str(mem: &mut GuestMemory, addr: u64) -> String {
        let mut s = Vec::new();
        for i in 0..256 {
            match mem.read_u8(addr + i) {
                0 => break,
                b => s.push(b),
            }
        }
        String::from_utf8(s).unwrap()
    }

    /// 16 MiB of RAM filled with 0xCC so that zeroed bss shows.
    fn dirty_mem() -> GuestMemory {
        let mut mem = GuestMemory::new(16 << 20).unwrap();
        mem.ram_mut().fill(0xCC);
        mem
    }

    #[test]
    fn finds_the_header() {
        let k = multiboot_test_kernel("x", 0);
        let h = find_header(&k).unwrap();
        assert_eq!(h.offset, 0x60);
        assert_eq!(h.flags, 3);
        assert!(is_multiboot(&k));
        assert!(!is_multiboot(&[0u8; 9000]));
        // Beyond 8192 bytes it does not count.
        let mut far = vec![0u8; 8192];
        far.extend_from_slice(&k[0x60..0x6C]);
        assert!(matches!(
            find_header(&far),
            Err(BootError::NoMultibootHeader)
        ));
        // Not on a 4-byte boundary: not found either.
        let mut odd = vec![0u8; 2];
        odd.extend_from_slice(&k[0x60..0x6C]);
        odd.extend_from_slice(&[0; 16]);
        assert!(matches!(
            find_header(&odd),
            Err(BootError::NoMultibootHeader)
        ));
    }

    #[test]
    fn bad_checksum_is_reported() {
        let mut k = multiboot_test_kernel("x", 0);
        k[0x68] ^= 1;
        assert!(matches!(
            find_header(&k),
            Err(BootError::MultibootChecksum { offset: 0x60 })
        ));
    }

    /// Rewrite the header flags of the ELF test kernel (and its checksum).
    fn with_flags(mut k: Vec<u8>, flags: u32) -> Vec<u8> {
        k[0x64..0x68].copy_from_slice(&flags.to_le_bytes());
        let sum = 0u32.wrapping_sub(0x1BAD_B002).wrapping_sub(flags);
        k[0x68..0x6C].copy_from_slice(&sum.to_le_bytes());
        k
    }

    #[test]
    fn refuses_unknown_required_flags_and_ignores_video() {
        let mut mem = dirty_mem();
        let mut cpu = CpuState::reset();
        let k = with_flags(multiboot_test_kernel("x", 0), 1 << 3 | 1);
        let e = load_multiboot(&mut mem, &mut cpu, &k, "", &[]).unwrap_err();
        assert!(matches!(e, BootError::MultibootFlags { bits: 8 }), "{e:?}");
        let k = with_flags(multiboot_test_kernel("x", 0), 1 << 2 | 1 << 20);
        assert!(load_multiboot(&mut mem, &mut cpu, &k, "", &[]).is_ok());
    }

    #[test]
    fn loads_the_elf_kernel_and_builds_the_info() {
        let mut mem = dirty_mem();
        let mut cpu = CpuState::reset();
        let k = multiboot_test_kernel("hello", 0x31);
        let mods = vec![
            (vec![0xAB; 5000], "first mod".to_string()),
            (vec![0xCD; 10], "second".to_string()),
        ];
        let mi = load_multiboot(&mut mem, &mut cpu, &k, "root=x quiet", &mods).unwrap();
        // Image copied at 1 MiB, bss zeroed after it.
        let mut loaded = vec![0u8; k.len()];
        mem.read(0x100000, &mut loaded);
        assert_eq!(loaded, k);
        let end = 0x100000 + k.len() as u64;
        assert_eq!(mem.read_u8(end), 0);
        assert_eq!(mem.read_u8(end + TEST_BSS as u64 - 1), 0);
        assert_eq!(mem.read_u8(end + TEST_BSS as u64), 0xCC);
        assert_eq!(mi.kernel_end, end + TEST_BSS as u64);
        // Entry state.
        assert_eq!(cpu.eip, 0x100080);
        assert_eq!(cpu.gpr[EAX], 0x2BAD_B002);
        assert_eq!(cpu.gpr[EBX], 0x9000);
        assert!(cpu.protected() && !cpu.paging());
        assert_eq!(cpu.eflags & umbra_core::cpu::IF, 0);
        assert!(cpu.seg(SegReg::Cs).big());
        // Info structure.
        let i = 0x9000;
        let flags = mem.read_u32(i);
        assert_eq!(flags, 1 | 4 | 8 | 64 | 512);
        assert_eq!(mem.read_u32(i + 4), 639); // mem_lower KiB
        assert_eq!(mem.read_u32(i + 8), 15 * 1024); // mem_upper KiB
        let cl = mem.read_u32(i + 16) as u64;
        assert_eq!(read_str(&mut mem, cl), "root=x quiet");
        let name = mem.read_u32(i + 64) as u64;
        assert_eq!(read_str(&mut mem, name), "umbra");
        // Modules: page-aligned above the kernel, in order.
        assert_eq!(mem.read_u32(i + 20), 2);
        let m = mem.read_u32(i + 24) as u64;
        let first = (end + TEST_BSS as u64).next_multiple_of(4096);
        assert_eq!(mem.read_u32(m) as u64, first);
        assert_eq!(mem.read_u32(m + 4) as u64, first + 5000);
        let s1 = mem.read_u32(m + 8) as u64;
        assert_eq!(read_str(&mut mem, s1), "first mod");
        assert_eq!(mem.read_u8(first + 4999), 0xAB);
        let second = (first + 5000).next_multiple_of(4096);
        assert_eq!(mem.read_u32(m + 16) as u64, second);
        assert_eq!(mem.read_u32(m + 20) as u64, second + 10);
        let s2 = mem.read_u32(m + 24) as u64;
        assert_eq!(read_str(&mut mem, s2), "second");
        assert_eq!(
            mi.modules,
            vec![(first, first + 5000), (second, second + 10)]
        );
        // Memory map: 3 entries of 24 bytes, size field 20.
        assert_eq!(mem.read_u32(i + 44), 72);
        let mm = mem.read_u32(i + 48) as u64;
        assert_eq!(mem.read_u32(mm), 20);
        assert_eq!(mem.read_u64(mm + 4), 0);
        assert_eq!(mem.read_u64(mm + 12), 0x9FC00);
        assert_eq!(mem.read_u32(mm + 20), 1);
        assert_eq!(mem.read_u64(mm + 48 + 4), 0x100000);
        assert_eq!(mem.read_u64(mm + 48 + 12), 15 << 20);
    }

    #[test]
    fn loads_the_aout_kludge_kernel() {
        let mut mem = dirty_mem();
        let mut cpu = CpuState::reset();
        let k = multiboot_aout_test_kernel("hey", 1);
        let mi = load_multiboot(&mut mem, &mut cpu, &k, "", &[]).unwrap();
        assert_eq!(mi.entry, 0x100020);
        assert_eq!(cpu.eip, 0x100020);
        let mut loaded = vec![0u8; k.len()];
        mem.read(0x100000, &mut loaded);
        assert_eq!(loaded, k);
        let end = 0x100000 + k.len() as u64;
        assert_eq!(mem.read_u8(end + TEST_BSS as u64 - 1), 0);
        assert_eq!(mem.read_u8(end + TEST_BSS as u64), 0xCC);
    }

    #[test]
    fn aout_header_past_the_image_start_is_an_error() {
        let mut k = multiboot_aout_test_kernel("hey", 1);
        // load_addr 64 bytes below header_addr, but the header is at offset 0.
        k[16..20].copy_from_slice(&(0x100000u32 - 64).to_le_bytes());
        let mut mem = dirty_mem();
        let mut cpu = CpuState::reset();
        assert!(matches!(
            load_multiboot(&mut mem, &mut cpu, &k, "", &[]),
            Err(BootError::BadImage(_))
        ));
    }

    #[test]
    fn segments_outside_ram_are_refused() {
        let mut k = multiboot_test_kernel("x", 0);
        // Move the segment to 64 MiB, beyond 16 MiB of RAM.
        k[0x34 + 12..0x34 + 16].copy_from_slice(&0x400_0000u32.to_le_bytes());
        let mut mem = dirty_mem();
        let mut cpu = CpuState::reset();
        let e = load_multiboot(&mut mem, &mut cpu, &k, "", &[]).unwrap_err();
        assert!(
            matches!(
                e,
                BootError::OutsideRam {
                    addr: 0x400_0000,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn entry_is_translated_to_physical() {
        let mut k = multiboot_test_kernel("x", 0);
        // Link at 0xC0100000 virtual, load at 1 MiB physical.
        k[0x34 + 8..0x34 + 12].copy_from_slice(&0xC010_0000u32.to_le_bytes());
        k[24..28].copy_from_slice(&0xC010_0080u32.to_le_bytes());
        let mut mem = dirty_mem();
        let mut cpu = CpuState::reset();
        let mi = load_multiboot(&mut mem, &mut cpu, &k, "", &[]).unwrap();
        assert_eq!(mi.entry, 0x100080);
    }

    #[test]
    fn truncated_elf_is_an_error() {
        let k = multiboot_test_kernel("x", 0);
        let mut mem = dirty_mem();
        let mut cpu = CpuState::reset();
        assert!(matches!(
            load_multiboot(&mut mem, &mut cpu, &k[..0x90], "", &[]),
            Err(BootError::BadImage(_))
        ));
    }

    #[test]
    fn modules_that_do_not_fit_say_how_much_memory() {
        let mut mem = dirty_mem();
        let mut cpu = CpuState::reset();
        let k = multiboot_test_kernel("x", 0);
        // Kernel + bss end below 0x102000; a 16 MiB module then needs
        // 0x102000 + 16 MiB: 18 MiB rounded up.
        let mods = vec![(vec![0u8; 16 << 20], "big".to_string())];
        let e = load_multiboot(&mut mem, &mut cpu, &k, "", &mods).unwrap_err();
        assert!(
            matches!(
                e,
                BootError::DoesNotFit {
                    have_mib: 16,
                    need_mib: 18,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn oversized_command_lines_are_refused() {
        let mut mem = dirty_mem();
        let mut cpu = CpuState::reset();
        let k = multiboot_test_kernel("x", 0);
        let long = "y".repeat(40_000);
        assert!(matches!(
            load_multiboot(&mut mem, &mut cpu, &k, &long, &[]),
            Err(BootError::MultibootInfoTooBig { .. })
        ));
    }
}
