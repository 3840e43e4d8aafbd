//! umbra-firmware: what stands where a PC's firmware would: the guest
//! memory map, the Linux and multiboot boot protocols, the E820 map and the
//! ACPI tables. It writes into `GuestMemory` and `CpuState`; it never sees
//! an engine or a device.

#![forbid(unsafe_code)]

pub mod acpi;
pub mod bios;
pub mod e820;
pub mod error;
pub mod gdt;
pub mod layout;
pub mod linux;
pub mod multiboot;
pub mod seabios;
pub mod testkernel;

pub use acpi::write_acpi_tables;
pub use bios::load_bios;
pub use e820::{e820_map, E820Entry, E820Kind};
pub use error::BootError;
pub use linux::{is_bzimage, load_linux, LinuxBootInfo};
pub use multiboot::{is_multiboot, load_multiboot, MultibootInfo};
pub use testkernel::{multiboot_aout_test_kernel, multiboot_test_kernel};
