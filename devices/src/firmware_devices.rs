//! The devices a PC's own firmware (SeaBIOS and the VGA BIOS) talks to
//! beyond the base platform: fw_cfg, the standard VGA with Bochs VBE and the
//! PIIX IDE controller; and `FirmwareHook`, the platform work that must
//! happen synchronously after a port write: applying the i440FX PAM
//! registers to guest memory (SeaBIOS copies itself into shadow RAM and
//! write-protects it right away) and running the DMA a device was just
//! told to start. Devices never see guest memory themselves; the hook
//! lends it to them through their small DMA traits.
//!
//! PCI BARs follow the guest: the IDE bus-master block (BAR4) and the ACPI
//! PM block are decoded by `PciIoPorts` at each access from the registers
//! as last written, and so is the VBE linear framebuffer (the VGA's BAR0)
//! by `PciMemWindow`, which claims the whole PCI memory window; a BAR the
//! firmware or Linux moves answers at its new address at once, the old one
//! floats. IDE timing is instant.

use std::cell::RefCell;
use std::rc::Rc;

use umbra_core::bus::{Bus, IoHook, Mmio, PortIo};
use umbra_core::mem::{pam_segments, GuestMemory};
use umbra_core::vm::Vm;

use crate::acpi_hotplug::{self, AcpiHotplug};
use crate::acpi_pm::{self, AcpiPm};
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
/// The PCI memory window below 4 GiB: from the end of the RAM hole's
/// start (`layout::MMIO_HOLE_START` in umbra-firmware, where guest RAM
/// ends at the latest) up to the I/O APIC. SeaBIOS assigns memory BARs in
/// it (BUILD_PCIMEM_START..BUILD_PCIMEM_END).
pub const PCI_MEM_WINDOW: (u64, u64) = (0xE000_0000, 0xFEC0_0000 - 0xE000_0000);
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
        mem.add_mmio(PCI_MEM_WINDOW.0, PCI_MEM_WINDOW.1);
        bus.add_mmio(
            PCI_MEM_WINDOW.0,
            PCI_MEM_WINDOW.1,
            Box::new(PciMemWindow { vga: vga.clone() }),
        );
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
                hotplug: AcpiHotplug::new(1),
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

/// The PCI memory window: the VBE linear framebuffer where the VGA's BAR0
/// is now (while the BAR is assigned, i.e. not 0); the rest of the window
/// floats (reads all ones, writes dropped), as an unclaimed PCI memory
/// cycle ends in a master abort.
struct PciMemWindow {
    vga: Shared<Vga>,
}

impl PciMemWindow {
    /// Offset in the framebuffer of `addr`, if the LFB decodes it.
    fn lfb_offset(&self, addr: u64) -> Option<u64> {
        let base = u64::from(self.vga.borrow().lfb_base());
        let off = addr.wrapping_sub(base);
        (base != 0 && off < crate::vga::LFB_SIZE as u64).then_some(off)
    }
}

impl Mmio for PciMemWindow {
    fn read(&mut self, addr: u64, size: u8, _now: u64) -> u64 {
        match self.lfb_offset(addr) {
            Some(off) => self.vga.borrow().lfb_read(off, size),
            None => u64::MAX >> (64 - 8 * u32::from(size.clamp(1, 8))),
        }
    }
    fn write(&mut self, addr: u64, size: u8, value: u64, _now: u64) {
        if let Some(off) = self.lfb_offset(addr) {
            self.vga.borrow_mut().lfb_write(off, size, value);
        }
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
/// leave it, so a relocated access is translated there); and at fixed
/// ports the GPE0 block and hotplug registers SeaBIOS's ACPI tables name
/// (`acpi_hotplug`; the GPE0 registers are the PM block's). Anything else
/// in the PCI I/O range floats.
struct PciIoPorts {
    ide: Shared<Ide>,
    pci: Shared<PciHost>,
    acpi: Shared<AcpiPm>,
    hotplug: AcpiHotplug,
}

/// Ports of the ACPI PM block (PMBA is 64-byte aligned).
const PM_BLOCK_LEN: u16 = 64;

enum PciIo {
    BusMaster(u16),
    Acpi(u16),
    PciHotplug(u16),
    CpuPresence(u16),
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
            _ => match acpi_hotplug::decode(port) {
                Some(acpi_hotplug::Decoded::Gpe0(off)) => {
                    PciIo::Acpi(ACPI_PM_BASE + acpi_pm::GPE0_STS + off)
                }
                Some(acpi_hotplug::Decoded::PciHotplug(off)) => PciIo::PciHotplug(off),
                Some(acpi_hotplug::Decoded::CpuPresence(off)) => PciIo::CpuPresence(off),
                None => PciIo::Nothing,
            },
        }
    }
}

impl PortIo for PciIoPorts {
    fn read(&mut self, port: u16, size: u8, now: u64) -> u32 {
        match self.decode(port) {
            PciIo::BusMaster(off) => self.ide.borrow_mut().bm_read(off, size),
            PciIo::Acpi(p) => self.acpi.borrow_mut().read(p, size, now),
            PciIo::PciHotplug(off) => self.hotplug.pci_read(off, size),
            PciIo::CpuPresence(off) => self.hotplug.cpu_read(off, size),
            PciIo::Nothing => u32::MAX >> (32 - 8 * size.clamp(1, 4) as u32),
        }
    }
    fn write(&mut self, port: u16, size: u8, value: u32, now: u64) {
        match self.decode(port) {
            PciIo::BusMaster(off) => self.ide.borrow_mut().bm_write(off, size, value),
            PciIo::Acpi(p) => self.acpi.borrow_mut().write(p, size, value, now),
            PciIo::PciHotplug(off) => self.hotplug.pci_write(off, size, value),
            PciIo::CpuPresence(off) => self.hotplug.cpu_write(off, size, value),
            PciIo::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{CMD_IO, CMD_MEMORY};
    use crate::platform::PlatformConfig;
    use umbra_core::mem::Region;

    struct Pc {
        bus: Bus,
        mem: GuestMemory,
        devs: FirmwareDevices,
        _platform: Platform,
    }

    fn pc() -> Pc {
        let platform = Platform::new(PlatformConfig {
            ram_bytes: 16 << 20,
            serial_out: [None, None, None, None],
            debugcon: None,
            start_unix_secs: 0,
        });
        let mut bus = Bus::new();
        let mut mem = GuestMemory::new(16 << 20).unwrap();
        platform.attach(&mut bus);
        let (devs, _hook) = FirmwareDevices::attach(&platform, &mut bus, &mut mem);
        Pc {
            bus,
            mem,
            devs,
            _platform: platform,
        }
    }

    /// A dword write to bus 0 `slot`'s config register `reg` through
    /// configuration mechanism #1 (PCI 3.0 3.2.2.3.2).
    fn cfg_write(pc: &mut Pc, slot: (u8, u8), reg: u8, value: u32) {
        let addr = 0x8000_0000 | u32::from(slot.0) << 11 | u32::from(slot.1) << 8 | u32::from(reg);
        pc.bus.io_write(0xCF8, 4, addr, 0);
        pc.bus.io_write(0xCFC, 4, value, 0);
    }

    #[test]
    fn vbe_framebuffer_follows_bar0_and_memory_enable() {
        let mut pc = pc();
        let (a, b) = (0xE000_0000u64, 0xFD00_0000u64);
        assert_eq!(pc.mem.region(a), Region::Mmio);
        assert_eq!(pc.mem.region(b + 0x100), Region::Mmio);
        // Unassigned: the window floats.
        assert_eq!(pc.bus.mmio_read(a + 0x100, 4, 0), Some(0xFFFF_FFFF));
        cfg_write(&mut pc, VGA_SLOT, 0x10, a as u32);
        cfg_write(&mut pc, VGA_SLOT, 0x04, u32::from(CMD_MEMORY));
        assert!(pc.bus.mmio_write(a + 0x100, 4, 0xDEAD_BEEF, 0));
        assert_eq!(pc.devs.vga.borrow().lfb_read(0x100, 4), 0xDEAD_BEEF);
        // The guest moves the BAR: the pixels answer at the new address,
        // the old one floats and a write there reaches nothing.
        cfg_write(&mut pc, VGA_SLOT, 0x10, b as u32);
        assert_eq!(pc.bus.mmio_read(b + 0x100, 4, 0), Some(0xDEAD_BEEF));
        assert_eq!(pc.bus.mmio_read(a + 0x100, 4, 0), Some(0xFFFF_FFFF));
        pc.bus.mmio_write(a + 0x100, 4, 0x1234_5678, 0);
        assert_eq!(pc.devs.vga.borrow().lfb_read(0x100, 4), 0xDEAD_BEEF);
        // The last byte of the 16 MiB BAR decodes, the next one floats.
        let end = b + crate::vga::LFB_SIZE as u64;
        pc.bus.mmio_write(end - 1, 1, 0x5A, 0);
        assert_eq!(pc.bus.mmio_read(end - 1, 1, 0), Some(0x5A));
        assert_eq!(pc.bus.mmio_read(end, 1, 0), Some(0xFF));
        // Memory space disabled: nothing decodes.
        cfg_write(&mut pc, VGA_SLOT, 0x04, 0);
        assert_eq!(pc.bus.mmio_read(b + 0x100, 4, 0), Some(0xFFFF_FFFF));
    }

    #[test]
    fn ide_bus_master_block_follows_bar4() {
        let mut pc = pc();
        let (a, b) = (0xC000u16, 0xD040u16);
        // BAR4 (PIIX3 datasheet 2.3.9 BMIBA) at `a`, I/O space on.
        cfg_write(&mut pc, IDE_SLOT, 0x20, u32::from(a) | 1);
        cfg_write(&mut pc, IDE_SLOT, 0x04, u32::from(CMD_IO));
        // Primary PRD table address register, offset 4 (dword aligned).
        pc.bus.io_write(a + 4, 4, 0x0012_3400, 0);
        assert_eq!(pc.bus.io_read(a + 4, 4, 0), 0x0012_3400);
        cfg_write(&mut pc, IDE_SLOT, 0x20, u32::from(b) | 1);
        assert_eq!(pc.bus.io_read(b + 4, 4, 0), 0x0012_3400, "new base");
        assert_eq!(pc.bus.io_read(a + 4, 4, 0), 0xFFFF_FFFF, "old base floats");
        pc.bus.io_write(a + 4, 4, 0x0055_0000, 0);
        assert_eq!(pc.bus.io_read(b + 4, 4, 0), 0x0012_3400);
        cfg_write(&mut pc, IDE_SLOT, 0x04, 0);
        assert_eq!(pc.bus.io_read(b + 4, 4, 0), 0xFFFF_FFFF, "I/O space off");
    }

    #[test]
    fn seabios_acpi_blocks_show_no_pending_event() {
        // SeaBIOS's FADT puts GPE0_BLK at 0xAFE0 and its DSDT reads the
        // PCI hotplug block at 0xAE00 and the CPU bitmap at 0xAF00: no GPE
        // is pending, no slot comes or goes, CPU 0 alone is present.
        let mut pc = pc();
        assert_eq!(pc.bus.io_read(0xAFE0, 2, 0), 0, "GPE0_STS");
        pc.bus.io_write(0xAFE2, 2, 0x0006, 0);
        assert_eq!(pc.bus.io_read(0xAFE0, 4, 0), 0x0006_0000, "GPE0_EN kept");
        assert_eq!(
            pc._platform.acpi.borrow().state().gpe0_en,
            0x0006,
            "the PM block's own enables"
        );
        assert_eq!(pc.bus.io_read(0xAE00, 4, 0), 0, "slots up");
        assert_eq!(pc.bus.io_read(0xAE04, 4, 0), 0, "slots down");
        pc.bus.io_write(0xAE08, 4, 0b10, 0);
        assert_eq!(pc.bus.io_read(0xAE04, 4, 0), 0, "an eject changes nothing");
        assert_eq!(pc.bus.io_read(0xAF00, 1, 0), 0b1, "CPU 0");
        assert_eq!(pc.bus.io_read(0xAF01, 1, 0), 0);
        assert_eq!(pc.bus.io_read(0xAFE4, 1, 0), 0xFF, "past GPE0 floats");
    }
}
