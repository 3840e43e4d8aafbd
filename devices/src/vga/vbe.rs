//! Bochs VBE extension ("DISPI" interface) as programmed by the Bochs/QEMU
//! VGA BIOS and SeaBIOS's bochsvga driver: the index/data port pair at
//! 0x1CE/0x1CF, the mode registers, and the PCI function 00:02.0 (QEMU
//! "stdvga": vendor 0x1234, device 0x1111) whose BAR0 exposes the linear
//! framebuffer. Owns the register state; the framebuffer bytes live in
//! `Vga` (`mod.rs`), and rendering in `render.rs`.
//!
//! Reference: Bochs `iodev/display/vga.cc`/`vbe.h` register definitions
//! (read for the register meanings only).

use std::cell::Cell;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::pci::{ConfigSpace, PciFunction, CFG_BAR0, CFG_COMMAND, CMD_MEMORY};

/// VBE index port.
pub const PORT_VBE_INDEX: u16 = 0x1ce;
/// VBE data port.
pub const PORT_VBE_DATA: u16 = 0x1cf;
/// Some guests use 0x1D0 as the data port on non-x86 layouts; accepted too.
pub const PORT_VBE_DATA_ALT: u16 = 0x1d0;

// Register indexes.
/// Interface version ID (0xB0C0-0xB0C5).
pub const VBE_INDEX_ID: u16 = 0x0;
/// Horizontal resolution in pixels.
pub const VBE_INDEX_XRES: u16 = 0x1;
/// Vertical resolution in pixels.
pub const VBE_INDEX_YRES: u16 = 0x2;
/// Bits per pixel (4, 8, 15, 16, 24, 32).
pub const VBE_INDEX_BPP: u16 = 0x3;
/// Enable register (see `VBE_ENABLED` etc.).
pub const VBE_INDEX_ENABLE: u16 = 0x4;
/// Bank number of the 64 KiB window at 0xA0000.
pub const VBE_INDEX_BANK: u16 = 0x5;
/// Virtual (line) width in pixels.
pub const VBE_INDEX_VIRT_WIDTH: u16 = 0x6;
/// Virtual height in lines.
pub const VBE_INDEX_VIRT_HEIGHT: u16 = 0x7;
/// Display start X offset.
pub const VBE_INDEX_X_OFFSET: u16 = 0x8;
/// Display start Y offset.
pub const VBE_INDEX_Y_OFFSET: u16 = 0x9;
/// Video memory size in 64 KiB units (read-only).
pub const VBE_INDEX_VIDEO_MEMORY_64K: u16 = 0xa;
/// Number of VBE registers.
pub const VBE_REG_COUNT: usize = 11;

/// Oldest interface ID accepted.
pub const VBE_ID0: u16 = 0xb0c0;
/// Newest interface ID (adds VIDEO_MEMORY_64K).
pub const VBE_ID5: u16 = 0xb0c5;

// ENABLE register bits.
/// Display the VBE mode instead of the VGA.
pub const VBE_ENABLED: u16 = 0x01;
/// While set, XRES/YRES/BPP read their maximums.
pub const VBE_GETCAPS: u16 = 0x02;
/// DAC entries are 8 bits per component instead of 6.
pub const VBE_8BIT_DAC: u16 = 0x20;
/// Linear framebuffer enabled (informational; the BAR always decodes).
pub const VBE_LFB_ENABLED: u16 = 0x40;
/// Do not clear video memory when enabling.
pub const VBE_NOCLEARMEM: u16 = 0x80;

/// Maximum horizontal resolution reported and accepted.
pub const VBE_MAX_XRES: u16 = 2560;
/// Maximum vertical resolution reported and accepted.
pub const VBE_MAX_YRES: u16 = 1600;
/// Maximum bits per pixel.
pub const VBE_MAX_BPP: u16 = 32;

/// Framebuffer size: 16 MiB (BAR0 size, a power of two).
pub const LFB_SIZE: usize = 16 << 20;
/// Banked window size at 0xA0000.
pub const VBE_BANK_SIZE: usize = 0x10000;

/// PCI identity of the QEMU standard VGA.
pub const PCI_VENDOR_QEMU: u16 = 0x1234;
/// PCI device ID of the QEMU standard VGA.
pub const PCI_DEVICE_STDVGA: u16 = 0x1111;
/// Subsystem vendor (Red Hat, as QEMU sets it).
pub const PCI_SUBSYS_VENDOR: u16 = 0x1af4;
/// Subsystem ID (QEMU).
pub const PCI_SUBSYS_ID: u16 = 0x1100;
/// Configuration offset of the subsystem vendor ID.
const CFG_SUBSYS_VENDOR: u8 = 0x2c;
/// Configuration offset of the subsystem ID.
const CFG_SUBSYS_ID: u8 = 0x2e;
/// BAR bit 3: prefetchable memory.
pub const BAR_PREFETCHABLE: u32 = 0x08;
/// Address bits of a memory BAR.
const BAR_MEM_ADDR_MASK: u32 = !0xf;

/// The VBE register state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Vbe {
    pub index: u16,
    pub regs: [u16; VBE_REG_COUNT],
}

impl Default for Vbe {
    fn default() -> Self {
        let mut regs = [0; VBE_REG_COUNT];
        regs[VBE_INDEX_ID as usize] = VBE_ID5;
        regs[VBE_INDEX_VIDEO_MEMORY_64K as usize] = (LFB_SIZE / VBE_BANK_SIZE) as u16;
        Vbe { index: 0, regs }
    }
}

/// What a data-port write asks the owner of video memory to do.
pub enum VbeEffect {
    None,
    /// The mode was just enabled without NOCLEARMEM: clear the framebuffer.
    ClearMemory,
}

impl Vbe {
    pub fn reg(&self, index: u16) -> u16 {
        self.regs.get(index as usize).copied().unwrap_or(0)
    }

    /// A VBE mode is displayed.
    pub fn enabled(&self) -> bool {
        self.reg(VBE_INDEX_ENABLE) & VBE_ENABLED != 0
    }

    /// DAC components are 8 bits wide.
    pub fn dac_8bit(&self) -> bool {
        self.reg(VBE_INDEX_ENABLE) & VBE_8BIT_DAC != 0
    }

    /// Bytes per pixel of the current mode (0 for 4 bpp planar, unsupported).
    pub fn bytes_per_pixel(&self) -> usize {
        (self.reg(VBE_INDEX_BPP) as usize).div_ceil(8)
    }

    /// Offset of the banked window in the framebuffer.
    pub fn bank_offset(&self) -> usize {
        self.reg(VBE_INDEX_BANK) as usize * VBE_BANK_SIZE
    }

    /// Read the data port: the register at the current index.
    pub fn read_data(&self) -> u16 {
        let getcaps = self.reg(VBE_INDEX_ENABLE) & VBE_GETCAPS != 0;
        match self.index {
            // With GETCAPS set the mode registers report the maximums.
            VBE_INDEX_XRES if getcaps => VBE_MAX_XRES,
            VBE_INDEX_YRES if getcaps => VBE_MAX_YRES,
            VBE_INDEX_BPP if getcaps => VBE_MAX_BPP,
            // Everything else reads back its value; unknown indexes read 0.
            i => self.reg(i),
        }
    }

    /// Write the data port.
    pub fn write_data(&mut self, value: u16) -> VbeEffect {
        let i = self.index as usize;
        match self.index {
            // ID: the guest names the interface version it speaks; only
            // versions we implement stick, so a probe for a newer one fails.
            VBE_INDEX_ID if (VBE_ID0..=VBE_ID5).contains(&value) => self.regs[i] = value,
            // Mode registers: ignored while enabled (as Bochs does), clamped
            // to the maximums.
            VBE_INDEX_XRES | VBE_INDEX_YRES | VBE_INDEX_BPP => {
                if self.enabled() {
                    return VbeEffect::None;
                }
                let v = match self.index {
                    VBE_INDEX_XRES => value.min(VBE_MAX_XRES) & !7,
                    VBE_INDEX_YRES => value.min(VBE_MAX_YRES),
                    _ => match value {
                        0 => 8,
                        4 | 8 | 15 | 16 | 24 | 32 => value,
                        _ => return VbeEffect::None,
                    },
                };
                self.regs[i] = v;
            }
            // Enable: on the 0->1 edge the virtual size and offsets reset.
            VBE_INDEX_ENABLE => {
                let was = self.enabled();
                self.regs[i] = value;
                if value & VBE_ENABLED != 0 && !was {
                    let xres = self.reg(VBE_INDEX_XRES);
                    self.regs[VBE_INDEX_VIRT_WIDTH as usize] = xres;
                    let line = (xres as usize * self.bytes_per_pixel()).max(1);
                    let vh = (LFB_SIZE / line).min(u16::MAX as usize) as u16;
                    self.regs[VBE_INDEX_VIRT_HEIGHT as usize] = vh;
                    self.regs[VBE_INDEX_X_OFFSET as usize] = 0;
                    self.regs[VBE_INDEX_Y_OFFSET as usize] = 0;
                    if value & VBE_NOCLEARMEM == 0 {
                        return VbeEffect::ClearMemory;
                    }
                }
            }
            // Bank: selects the 64 KiB of the framebuffer seen at 0xA0000.
            VBE_INDEX_BANK if (value as usize) < LFB_SIZE / VBE_BANK_SIZE => self.regs[i] = value,
            // Virtual width: the line pitch; the virtual height follows.
            VBE_INDEX_VIRT_WIDTH => {
                let w = value.max(self.reg(VBE_INDEX_XRES));
                self.regs[i] = w;
                let line = (w as usize * self.bytes_per_pixel()).max(1);
                self.regs[VBE_INDEX_VIRT_HEIGHT as usize] =
                    (LFB_SIZE / line).min(u16::MAX as usize) as u16;
            }
            // Display start offsets (panning).
            VBE_INDEX_X_OFFSET | VBE_INDEX_Y_OFFSET => self.regs[i] = value,
            // Virtual height and memory size are read-only; refused IDs and
            // banks past the framebuffer are ignored.
            _ => {}
        }
        VbeEffect::None
    }
}

/// PCI function 00:02.0 of the standard VGA. BAR0 (prefetchable, 16 MiB)
/// maps the linear framebuffer; its address is shared with the `Vga` that
/// made this function through an `Rc<Cell<u32>>`, updated on every config
/// write, so the machine can ask `Vga::lfb_base()` where to route the LFB.
/// No expansion ROM BAR: the VGA BIOS is loaded by the platform.
#[derive(Clone, Debug)]
pub struct VgaPciFunction {
    pub config: ConfigSpace,
    lfb_base: Rc<Cell<u32>>,
}

impl VgaPciFunction {
    pub(crate) fn new(lfb_base: Rc<Cell<u32>>) -> Self {
        // Class 03/00/00: VGA-compatible display controller; revision 2.
        let mut config =
            ConfigSpace::new(PCI_VENDOR_QEMU, PCI_DEVICE_STDVGA, 0x03, 0x00, 0x00, 0x02);
        config.set_bar(0, LFB_SIZE as u32, false);
        config.set_u32(CFG_BAR0, BAR_PREFETCHABLE);
        config.set_u16(CFG_SUBSYS_VENDOR, PCI_SUBSYS_VENDOR);
        config.set_u16(CFG_SUBSYS_ID, PCI_SUBSYS_ID);
        lfb_base.set(0);
        VgaPciFunction { config, lfb_base }
    }

    /// The shared cell holding the BAR0 address.
    pub(crate) fn lfb_base_cell(&self) -> Rc<Cell<u32>> {
        self.lfb_base.clone()
    }

    /// Current BAR0 address (0 = not yet assigned).
    pub fn lfb_base(&self) -> u32 {
        self.lfb_base.get()
    }
}

impl PciFunction for VgaPciFunction {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn write_config(&mut self, offset: u8, size: u8, value: u32) {
        self.config.write(offset, size, value);
        // The BAR decodes only while memory space is enabled in the
        // command register (PCI 3.0 6.2.2); 0 = not decoded.
        let bar = self.config.read(CFG_BAR0, 4) & BAR_MEM_ADDR_MASK;
        let on = self.config.read(CFG_COMMAND, 2) as u16 & CMD_MEMORY != 0;
        self.lfb_base.set(if on { bar } else { 0 });
    }
}
