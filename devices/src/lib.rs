//! umbra-devices: the PC platform devices. Each device is one file: a plain
//! struct with its registers and behaviour, with no knowledge of buses or
//! engines; `platform.rs` puts them on the `Bus`. Interrupts go through the
//! `IrqLine` a device is given; time comes only from the `now` (virtual
//! nanoseconds) passed to every access and poll, never from the host clock.

#![forbid(unsafe_code)]

pub mod acpi_hotplug;
pub mod acpi_pm;
pub mod debug_port;
pub mod firmware_devices;
pub mod fw_cfg;
pub mod i8042;
pub mod ide;
pub mod irq;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod platform;
pub mod rtc;
pub mod serial;
#[cfg(test)]
mod testutil;
pub mod vga;

pub use irq::{IrqLine, IrqSink, PlatformRequest, Requests};
pub use pic::Pic8259Pair;
pub use pit::Pit;
pub use rtc::Rtc;
