//! umbra-firmware: what stands where a PC's firmware would: the guest
//! memory map, the Linux and multiboot boot protocols, the E820 map and the
//! ACPI tables. It writes into `GuestMemory` and `CpuState`; it never sees
//! an engine or a device.

#![forbid(unsafe_code)]
