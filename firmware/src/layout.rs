//! The guest-physical memory map of a direct boot (no BIOS), in address
//! order. Every address the loaders, the E820 map and the ACPI tables use
//! comes from here; nothing else in the crate hard-codes one.
//!
//! ```text
//! 0x0000_0000  real-mode IVT and BIOS data area (left zero)
//! 0x0000_0500  boot GDT (flat CS 0x10 / DS 0x18)
//! 0x0000_1000  initial stack, grows down from 0x8000
//! 0x0000_9000  multiboot information area (info, mmap, modules, strings)
//! 0x0001_0000  Linux zero page (struct boot_params)
//! 0x0002_0000  kernel command line
//! 0x0009_FC00  EBDA, VGA window, option ROMs, BIOS   (E820 reserved)
//! 0x000E_0000    ACPI tables, RSDP first (16-byte aligned, legacy scan)
//! 0x0010_0000  kernel load address (1 MiB); RAM up to the end
//! 0xE000_0000  MMIO hole (PCI, APIC, BIOS at the top): never RAM
//! ```

/// Start of the real-mode interrupt vector table; the direct boot leaves
/// it (and the BIOS data area after it) zero.
pub const IVT_START: u64 = 0x0;

/// The boot GDT: null, unused, flat code at selector 0x10, flat data at
/// 0x18 (the selectors the Linux 32-bit boot protocol names __BOOT_CS and
/// __BOOT_DS).
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// Number of descriptors in the boot GDT.
pub const BOOT_GDT_ENTRIES: u64 = 4;

/// Lowest address of the initial stack.
pub const BOOT_STACK_BOTTOM: u64 = 0x1000;
/// Initial ESP (the stack grows down to `BOOT_STACK_BOTTOM`).
pub const BOOT_STACK_TOP: u64 = 0x8000;

/// Multiboot information structure; the memory map, module list and
/// strings follow it up to `MULTIBOOT_INFO_END`.
pub const MULTIBOOT_INFO_ADDR: u64 = 0x9000;
/// End (exclusive) of the multiboot information area.
pub const MULTIBOOT_INFO_END: u64 = 0x1_0000;

/// Linux zero page: `struct boot_params`, one 4 KiB page.
pub const ZERO_PAGE_ADDR: u64 = 0x1_0000;

/// Kernel command line (NUL-terminated).
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Room for the command line, including its NUL.
pub const CMDLINE_MAX: u64 = 0x1_0000;

/// Start of the extended BIOS data area: conventional memory ends here
/// (639 KiB), the rest of the first megabyte is reserved in E820.
pub const EBDA_START: u64 = 0x9_FC00;
/// Legacy VGA window (0xA0000-0xBFFFF).
pub const VGA_WINDOW_START: u64 = 0xA_0000;
/// Option ROM area (VGA BIOS first).
pub const OPTION_ROM_START: u64 = 0xC_0000;

/// The ACPI tables. Linux finds the RSDP by scanning 0xE0000-0xFFFFF on
/// 16-byte boundaries (ACPI 6.4 5.2.5.1), so the RSDP sits at the start.
pub const ACPI_TABLES_ADDR: u64 = 0xE_0000;
/// End (exclusive) of the room for ACPI tables.
pub const ACPI_TABLES_END: u64 = 0xE_1000;

/// System BIOS area (the last 64 KiB of the first megabyte).
pub const BIOS_AREA_START: u64 = 0xF_0000;

/// First byte above the first megabyte ("high memory").
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Where protected-mode kernels (bzImage, multiboot) are loaded: 1 MiB.
pub const KERNEL_LOAD_ADDR: u64 = HIGH_MEMORY_START;

/// Start of the MMIO hole below 4 GiB (PCI BARs, I/O APIC, local APIC,
/// BIOS flash). RAM the E820 map reports stops here.
pub const MMIO_HOLE_START: u64 = 0xE000_0000;

/// End of the 32-bit physical address space.
pub const FOUR_GIB: u64 = 0x1_0000_0000;

/// Smallest RAM a direct boot accepts: the low areas above plus one
/// megabyte of high memory.
pub const MIN_RAM: u64 = 2 << 20;
/// Largest RAM the E820 map can report (everything below the MMIO hole).
pub const MAX_RAM: u64 = MMIO_HOLE_START;
