//! The devices a PC's own firmware (SeaBIOS and the VGA BIOS) talks to
//! beyond the base platform: fw_cfg, the standard VGA with Bochs VBE and the
//! PIIX IDE controller; and `FirmwareHook`, the platform work that must
//! happen synchronously after a port write: applying the i440FX PAM
//! registers to guest memory (SeaBIOS copies itself into shadow RAM and
//! write-protects it right away) and running the DMA a device was just
//! told to start. Devices never see guest memory themselves; the hook
//! lends it to them through their small DMA traits.
//!
//! Not yet: the VBE linear framebuffer BAR is not mapped (the legacy
//! 0xA0000 window is), and IDE timing is instant.

use std::cell::RefCell;
use std::rc::Rc;

use umbra_core::bus::{Bus, IoHook, Mmio, PortIo};
use umbra_core::mem::{pam_segments, GuestMemory};
use umbra_core::vm::Vm;

use crate::acpi_pm::AcpiPm;
use crate::fw_cfg::{self, FwCfg};
use crate::ide::{self, BlockBackend, Ide};
use crate::pci::{PciHost, PIIX4_PMBA};
use crate::platform::{Platform, ACPI_PM_BASE};
use crate::vga::Vga;

type Shared<T> = Rc<RefCell<T>>;

/// fw_cfg selector/data/DMA ports.
pub const FW_CFG_PORTS: (u16, u16) = (0x510, 12);
/// SeaBIOS's debug output port (its builds for QEMU write there).
pub const SEABIOS_DEBUG_PORT: u16 = 0x402;
/// The legacy VGA memory window.
pub const VGA_WINDOW: (u64, u64) = (0xA_0000, 0x2_0000);
/// Lowest I/O port the firmware assigns to PCI I/O BARs: the IDE
/// bus-master block is looked for above it.
pub const PCI_IO_START: u16 = 0x1000;
/// PCI slots of the functions added here.
pub const IDE_SLOT: (u8, u8) = (1, 1);
pub const VGA_SLOT: (u8, u8) = (2, 0);
/// Where the platform puts the PIIX4 PM function.
pub const PIIX4_PM_SLOT: (u8, u8) = (1, 3);
/// i440FX PAM registers in the host bridge's config space.
const PAM_FIRST: u8 = 0x59;

pub struct FirmwareDevices {
    pub fw_cfg: Shared<FwCfg>,
    pub vga: Shared<Vga>,
    pub ide: Shared<Ide>,
}

impl FirmwareDevices {
    /// Create the devices, put them on `bus`, the PCI functions on the
    /// platform's host bridge and the VGA window in `mem`; returns them and
    /// the hook for `Vm::io_hook`.
    pub fn attach(
        platform: &Platform,
        bus: &mut Bus,
        mem: &mut GuestMemory,
    ) -> (FirmwareDevices, Box<dyn IoHook>) {
        let line = |n: u8| {
            let sink: Rc<RefCell<dyn crate::IrqSink>> = platform.pic.clone();
            crate::IrqLine::new(sink, n)
        };
        let fw_cfg = Rc::new(RefCell::new(FwCfg::new()));
        let vga = Rc::new(RefCell::new(Vga::new()));
        let ide = Rc::new(RefCell::new(Ide::new(line(14), line(15))));
        {
            let mut pci = platform.pci.borrow_mut();
            pci.add_function(
                IDE_SLOT.0,
                IDE_SLOT.1,
                Box::new(ide.borrow().pci_function()),
            );
            pci.add_function(
                VGA_SLOT.0,
                VGA_SLOT.1,
                Box::new(vga.borrow().pci_function()),
            );
        }
        bus.add_ports(
            FW_CFG_PORTS.0,
            FW_CFG_PORTS.1,
            Box::new(FwCfgPorts(fw_cfg.clone())),
        );
        let debug = platform.debug.clone();
        bus.add_ports(SEABIOS_DEBUG_PORT, 1, Box::new(DebugAlias(debug)));
        bus.add_ports(0x3B0, 0x30, Box::new(VgaPorts(vga.clone())));
        bus.add_ports(0x1CE, 3, Box::new(VgaPorts(vga.clone())));
        mem.add_mmio(VGA_WINDOW.0, VGA_WINDOW.1);
        bus.add_mmio(VGA_WINDOW.0, VGA_WINDOW.1, Box::new(VgaWindow(vga.clone())));
        for (base, n) in [(0x1F0, 8), (0x3F6, 1), (0x170, 8), (0x376, 1)] {
            bus.add_ports(base, n, Box::new(IdePorts(ide.clone())));
        }
        // Registered last: other devices in this range win.
        bus.add_ports(
            PCI_IO_START,
            u16::MAX - PCI_IO_START,
            Box::new(PciIoPorts {
                ide: ide.clone(),
                pci: platform.pci.clone(),
                acpi: platform.acpi.clone(),
            }),
        );
        let hook = FirmwareHook {
            pci: platform.pci.clone(),
            fw_cfg: fw_cfg.clone(),
            ide: ide.clone(),
            pam: [0; 7],
        };
        (FirmwareDevices { fw_cfg, vga, ide }, Box::new(hook))
    }

    /// Attach a disk (channel 0/1, master/slave).
    pub fn attach_disk(&self, channel: usize, slave: bool, b: Box<dyn BlockBackend>) {
        self.ide.borrow_mut().attach_disk(channel, slave, b);
    }

    /// Attach a CD-ROM drive.
    pub fn attach_cdrom(&self, channel: usize, slave: bool, b: Box<dyn BlockBackend>) {
        self.ide.borrow_mut().attach_cdrom(channel, slave, b);
    }
}

/// Synchronous platform work after a port write.
struct FirmwareHook {
    pci: Shared<PciHost>,
    fw_cfg: Shared<FwCfg>,
    ide: Shared<Ide>,
    /// PAM registers as last applied to memory.
    pam: [u8; 7],
}

impl IoHook for FirmwareHook {
    fn after_port_write(&mut self, vm: &mut Vm, port: u16) {
        if (0xCF8..=0xCFF).contains(&port) {
            let pam = self.pci.borrow().pam();
            if pam != self.pam {
                for (i, (&new, old)) in pam.iter().zip(self.pam.iter_mut()).enumerate() {
                    if new != *old {
                        for (base, len, r, w) in pam_segments(PAM_FIRST + i as u8, new) {
                            vm.mem.set_shadow(base, len, r, w);
                        }
                        *old = new;
                    }
                }
                // Cached translations and decoded code may name the old
                // mapping.
                vm.mmu.flush_all(&vm.cpu);
                vm.mem.code_written = true;
                vm.mem.code_gen += 1;
            }
        }
        if self.fw_cfg.borrow().dma_pending() {
            self.fw_cfg.borrow_mut().run_dma(&mut VmDma(vm));
        }
        if self.ide.borrow().dma_pending() {
            let now = vm.clock.now_ns();
            self.ide.borrow_mut().run_dma(&mut VmDma(vm), now);
        }
    }
}

/// Guest memory lent to a device's DMA engine: reads and writes go through
/// `GuestMemory` (ROM, MMIO holes and bounds respected) and writes that hit
/// page tables or code are reported as CPU writes are.
struct VmDma<'a>(&'a mut Vm);

impl VmDma<'_> {
    fn rd(&mut self, phys: u64, buf: &mut [u8]) {
        self.0.mem.read(phys, buf);
    }
    fn wr(&mut self, phys: u64, buf: &[u8]) {
        self.0.mem.write(phys, buf);
        if self.0.mem.has_watch_hits() {
            self.0.flush_watch_hits();
        }
        self.0.mem.code_written = true;
    }
}

impl fw_cfg::GuestMem for VmDma<'_> {
    fn read(&mut self, phys: u64, buf: &mut [u8]) {
        self.rd(phys, buf)
    }
    fn write(&mut self, phys: u64, buf: &[u8]) {
        self.wr(phys, buf)
    }
}

impl ide::DmaMemory for VmDma<'_> {
    fn read(&mut self, phys: u64, buf: &mut [u8]) {
        self.rd(phys, buf)
    }
    fn write(&mut self, phys: u64, buf: &[u8]) {
        self.wr(phys, buf)
    }
}

struct FwCfgPorts(Shared<FwCfg>);

impl PortIo for FwCfgPorts {
    fn read(&mut self, port: u16, size: u8, _now: u64) -> u32 {
        self.0.borrow_mut().read(port, size)
    }
    fn write(&mut self, port: u16, size: u8, value: u32, _now: u64) {
        self.0.borrow_mut().write(port, size, value)
    }
}

/// Port 0x402 prints like the 0xE9 debug console.
struct DebugAlias(Shared<crate::debug_port::DebugPorts>);

impl PortIo for DebugAlias {
    fn read(&mut self, _port: u16, _size: u8, _now: u64) -> u32 {
        self.0.borrow_mut().read(crate::debug_port::E9_PORT) as u32
    }
    fn write(&mut self, _port: u16, size: u8, value: u32, _now: u64) {
        let mut d = self.0.borrow_mut();
        for i in 0..size.min(4) {
            d.write(crate::debug_port::E9_PORT, (value >> (8 * i)) as u8);
        }
    }
}

struct VgaPorts(Shared<Vga>);

impl PortIo for VgaPorts {
    fn read(&mut self, port: u16, size: u8, now: u64) -> u32 {
        PortIo::read(&mut *self.0.borrow_mut(), port, size, now)
    }
    fn write(&mut self, port: u16, size: u8, value: u32, now: u64) {
        PortIo::write(&mut *self.0.borrow_mut(), port, size, value, now)
    }
}

struct VgaWindow(Shared<Vga>);

impl Mmio for VgaWindow {
    fn read(&mut self, addr: u64, size: u8, _now: u64) -> u64 {
        self.0.borrow_mut().mmio_read(addr, size)
    }
    fn write(&mut self, addr: u64, size: u8, value: u64, _now: u64) {
        self.0.borrow_mut().mmio_write(addr, size, value)
    }
}

struct IdePorts(Shared<Ide>);

impl PortIo for IdePorts {
    fn read(&mut self, port: u16, size: u8, _now: u64) -> u32 {
        self.0.borrow_mut().read(port, size)
    }
    fn write(&mut self, port: u16, size: u8, value: u32, _now: u64) {
        self.0.borrow_mut().write(port, size, value)
    }
}

/// I/O blocks the firmware places with PCI registers: the IDE bus-master
/// block at BAR4, and the ACPI PM block where the PIIX4's PMBA puts it (the
/// device decodes its ports relative to `ACPI_PM_BASE`, where direct boots
/// leave it, so a relocated access is translated there). Anything else in
/// the PCI I/O range floats.
struct PciIoPorts {
    ide: Shared<Ide>,
    pci: Shared<PciHost>,
    acpi: Shared<AcpiPm>,
}

/// Ports of the ACPI PM block (PMBA is 64-byte aligned).
const PM_BLOCK_LEN: u16 = 64;

enum PciIo {
    BusMaster(u16),
    Acpi(u16),
    Nothing,
}

impl PciIoPorts {
    fn decode(&self, port: u16) -> PciIo {
        if let Some(base) = self.ide.borrow().bmiba() {
            let off = port.wrapping_sub(base);
            if off < 16 {
                return PciIo::BusMaster(off);
            }
        }
        let pmba = self
            .pci
            .borrow()
            .function(PIIX4_PM_SLOT.0, PIIX4_PM_SLOT.1)
            .map(|f| {
                let b = &f.config().bytes;
                u16::from_le_bytes([b[PIIX4_PMBA as usize], b[PIIX4_PMBA as usize + 1]]) & 0xFFC0
            });
        match pmba {
            Some(base) if base != 0 && port.wrapping_sub(base) < PM_BLOCK_LEN => {
                PciIo::Acpi(ACPI_PM_BASE + (port - base))
            }
            _ => PciIo::Nothing,
        }
    }
}

impl PortIo for PciIoPorts {
    fn read(&mut self, port: u16, size: u8, now: u64) -> u32 {
        match self.decode(port) {
            PciIo::BusMaster(off) => self.ide.borrow_mut().bm_read(off, size),
            PciIo::Acpi(p) => self.acpi.borrow_mut().read(p, size, now),
            PciIo::Nothing => u32::MAX >> (32 - 8 * size.clamp(1, 4) as u32),
        }
    }
    fn write(&mut self, port: u16, size: u8, value: u32, now: u64) {
        match self.decode(port) {
            PciIo::BusMaster(off) => self.ide.borrow_mut().bm_write(off, size, value),
            PciIo::Acpi(p) => self.acpi.borrow_mut().write(p, size, value, now),
            PciIo::Nothing => {}
        }
    }
}
