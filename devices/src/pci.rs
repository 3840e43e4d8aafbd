//! PCI host bridge: configuration mechanism #1 (address at 0xCF8, data at
//! 0xCFC-0xCFF), the reset control register at 0xCF9, and the functions of
//! bus 0 on an i440FX/PIIX board: 00.0 host bridge (PAM and SMRAM
//! registers), 01.0 PIIX3 PCI-to-ISA bridge (PIRQ routing), 01.3 PIIX4
//! ACPI/power management (PMBA fixed at the platform's ACPI PM base).
//!
//! Owns: the configuration address register, the configuration spaces and
//! their write masks, reset control. Does not own: what PAM or PIRQ values
//! mean to memory or interrupts (the machine reads `pam()`), the I/O or
//! memory decoding of BARs (a function that owns BARs acts on its own
//! writes through the `PciFunction` trait).
//!
//! References: PCI Local Bus Specification 3.0, 3.2.2.3.2 (mechanism #1)
//! and 6.1-6.2 (configuration header); Intel 82441FX (i440FX) datasheet
//! 3.2 (PAM 0x59-0x5F, SMRAM 0x72); Intel 82371AB (PIIX4) datasheet 3.1
//! (PIRQRC 0x60-0x63), 3.4 (PMBA 0x40, PMREGMISC 0x80), 4.1.2 (RC 0xCF9).

use serde::{Deserialize, Serialize};

use crate::{PlatformRequest, Requests};

/// Configuration address register (32-bit accesses only).
pub const CONFIG_ADDRESS: u16 = 0xcf8;
/// Reset control register (byte accesses; PIIX).
pub const RESET_CONTROL: u16 = 0xcf9;
/// Configuration data window, 0xCFC-0xCFF.
pub const CONFIG_DATA: u16 = 0xcfc;

// CONFIG_ADDRESS fields.
/// Enable bit: a data access is a configuration cycle only when set.
pub const ADDR_ENABLE: u32 = 0x8000_0000;
/// Register number (dword aligned), bits 7:2.
pub const ADDR_REG_MASK: u32 = 0xfc;
/// The bits of CONFIG_ADDRESS that are stored (31, 23:2).
const ADDR_MASK: u32 = 0x80ff_fffc;

// Reset control register.
/// System reset: 1 = hard (full) reset when RST_CPU fires.
pub const RC_SYS_RST: u8 = 0x02;
/// Reset CPU: writing 1 starts the reset.
pub const RC_RST_CPU: u8 = 0x04;
/// Full reset (power cycle) on some chipsets; stored only.
pub const RC_FULL_RST: u8 = 0x08;

// Standard configuration header offsets (PCI 3.0 figure 6-1).
pub const CFG_VENDOR_ID: u8 = 0x00;
pub const CFG_DEVICE_ID: u8 = 0x02;
pub const CFG_COMMAND: u8 = 0x04;
pub const CFG_STATUS: u8 = 0x06;
pub const CFG_REVISION: u8 = 0x08;
pub const CFG_PROG_IF: u8 = 0x09;
pub const CFG_SUBCLASS: u8 = 0x0a;
pub const CFG_CLASS: u8 = 0x0b;
pub const CFG_LATENCY: u8 = 0x0d;
pub const CFG_HEADER_TYPE: u8 = 0x0e;
pub const CFG_BAR0: u8 = 0x10;
pub const CFG_INTERRUPT_LINE: u8 = 0x3c;
pub const CFG_INTERRUPT_PIN: u8 = 0x3d;

/// Header type bit 7: the device has more than one function.
pub const HEADER_MULTIFUNCTION: u8 = 0x80;

// Command register bits.
/// Respond to I/O space accesses.
pub const CMD_IO: u16 = 0x0001;
/// Respond to memory space accesses.
pub const CMD_MEMORY: u16 = 0x0002;
/// Bus master.
pub const CMD_MASTER: u16 = 0x0004;
/// Parity error response.
pub const CMD_PARITY: u16 = 0x0040;
/// SERR# enable.
pub const CMD_SERR: u16 = 0x0100;
/// Interrupt disable (PCI 2.3).
pub const CMD_INTX_DISABLE: u16 = 0x0400;

/// BAR bit 0: the BAR maps I/O space.
pub const BAR_IO: u32 = 0x1;

// i440FX host bridge registers.
/// First PAM register (PAM0, BIOS area 0xF0000-0xFFFFF); PAM1-6 follow.
pub const I440FX_PAM0: u8 = 0x59;
/// Number of PAM registers.
pub const I440FX_PAM_COUNT: usize = 7;
/// SMRAM control register.
pub const I440FX_SMRAM: u8 = 0x72;
/// SMRAM reset value: C_BASE_SEG = 010 (A0000 segment).
pub const I440FX_SMRAM_DEFAULT: u8 = 0x02;

// PIIX3 PCI-to-ISA bridge registers.
/// PIRQA-D route control registers 0x60-0x63.
pub const PIIX_PIRQRC: u8 = 0x60;
/// PIRQ route bit 7: routing disabled.
pub const PIRQRC_DISABLE: u8 = 0x80;

// PIIX4 power management function registers.
/// Power management base address (I/O, 64 bytes).
pub const PIIX4_PMBA: u8 = 0x40;
/// Miscellaneous power management: bit 0 enables PMBA decoding.
pub const PIIX4_PMREGMISC: u8 = 0x80;
/// PMREGMISC bit 0: PM I/O space enabled.
pub const PMREGMISC_PMIOSE: u8 = 0x01;
/// SMBus base address (not implemented: reads 0).
pub const PIIX4_SMBBA: u8 = 0x90;

/// 256 bytes of configuration space with a mask of guest-writable bits,
/// reusable by every function. BARs are writable only in their address
/// bits, so writing all ones reads back the size mask; an absent BAR has no
/// writable bits and reads 0 (PCI 3.0 6.2.5.1).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigSpace {
    #[serde(with = "bytes256")]
    pub bytes: [u8; 256],
    #[serde(with = "bytes256")]
    pub wmask: [u8; 256],
}

/// serde for [u8; 256] (serde's arrays stop at 32).
mod bytes256 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 256], s: S) -> Result<S::Ok, S::Error> {
        v.as_slice().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 256], D::Error> {
        let v = Vec::<u8>::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("configuration space must be 256 bytes"))
    }
}

impl ConfigSpace {
    /// A type 0 header with the identity fields set (all read-only), the
    /// command register's usual bits and the interrupt line writable.
    pub fn new(vendor: u16, device: u16, class: u8, subclass: u8, prog_if: u8, rev: u8) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; 256],
            wmask: [0; 256],
        };
        c.set_u16(CFG_VENDOR_ID, vendor);
        c.set_u16(CFG_DEVICE_ID, device);
        c.bytes[CFG_REVISION as usize] = rev;
        c.bytes[CFG_PROG_IF as usize] = prog_if;
        c.bytes[CFG_SUBCLASS as usize] = subclass;
        c.bytes[CFG_CLASS as usize] = class;
        c.set_wmask_u16(
            CFG_COMMAND,
            CMD_IO | CMD_MEMORY | CMD_MASTER | CMD_PARITY | CMD_SERR | CMD_INTX_DISABLE,
        );
        c.wmask[CFG_LATENCY as usize] = 0xff;
        c.wmask[CFG_INTERRUPT_LINE as usize] = 0xff;
        c
    }

    pub fn set_u16(&mut self, off: u8, v: u16) {
        let o = off as usize;
        self.bytes[o] = v as u8;
        if let Some(b) = self.bytes.get_mut(o + 1) {
            *b = (v >> 8) as u8;
        }
    }

    pub fn set_u32(&mut self, off: u8, v: u32) {
        for i in 0..4usize {
            if let Some(b) = self.bytes.get_mut(off as usize + i) {
                *b = (v >> (8 * i)) as u8;
            }
        }
    }

    pub fn set_wmask_u16(&mut self, off: u8, m: u16) {
        let o = off as usize;
        self.wmask[o] = m as u8;
        if let Some(b) = self.wmask.get_mut(o + 1) {
            *b = (m >> 8) as u8;
        }
    }

    pub fn set_wmask_u32(&mut self, off: u8, m: u32) {
        for i in 0..4usize {
            if let Some(b) = self.wmask.get_mut(off as usize + i) {
                *b = (m >> (8 * i)) as u8;
            }
        }
    }

    /// Declare BAR `index` (0-5) of `size` bytes (a power of two, at least 4
    /// for I/O and 16 for memory) in I/O or 32-bit memory space.
    pub fn set_bar(&mut self, index: u8, size: u32, io: bool) {
        if index > 5 || !size.is_power_of_two() {
            return;
        }
        let off = CFG_BAR0 + 4 * index;
        let (min, kind) = if io { (4, BAR_IO) } else { (16, 0) };
        let mask = !(size.max(min) - 1);
        self.set_u32(off, kind);
        self.set_wmask_u32(off, mask);
    }

    /// Read `size` (1, 2 or 4) bytes at `off`, little-endian; bytes past
    /// the end read 0xFF.
    pub fn read(&self, off: u8, size: u8) -> u32 {
        let mut v = 0u32;
        for i in 0..size.min(4) as usize {
            let b = self.bytes.get(off as usize + i).copied().unwrap_or(0xff);
            v |= (b as u32) << (8 * i);
        }
        v
    }

    /// Write `size` bytes at `off` through the write mask.
    pub fn write(&mut self, off: u8, size: u8, value: u32) {
        for i in 0..size.min(4) as usize {
            let o = off as usize + i;
            if o >= 256 {
                break;
            }
            let m = self.wmask[o];
            let b = (value >> (8 * i)) as u8;
            self.bytes[o] = (self.bytes[o] & !m) | (b & m);
        }
    }
}

/// One PCI function as the host bridge sees it. Functions with side
/// effects (BARs that move an I/O window, a VGA's legacy decode) override
/// `write_config`; plain ones use the defaults on their `ConfigSpace`.
/// Accesses never cross a dword: `offset + size <= (offset | 3) + 1`.
pub trait PciFunction {
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;

    fn read_config(&mut self, offset: u8, size: u8) -> u32 {
        self.config().read(offset, size)
    }

    fn write_config(&mut self, offset: u8, size: u8, value: u32) {
        self.config_mut().write(offset, size, value)
    }
}

/// A function whose behaviour is all in its configuration space.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BasicFunction {
    pub config: ConfigSpace,
}

impl PciFunction for BasicFunction {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}

/// 00.0: i440FX PCI and memory controller (82441FX).
/// Subsystem vendor and subsystem IDs in a type 0 header.
pub const SUBSYSTEM_VENDOR: u8 = 0x2C;
pub const SUBSYSTEM_ID: u8 = 0x2E;

pub fn i440fx_host_bridge() -> BasicFunction {
    // Class 06/00/00: host bridge; revision 02.
    let mut c = ConfigSpace::new(0x8086, 0x1237, 0x06, 0x00, 0x00, 0x02);
    // Subsystem IDs of QEMU's i440FX, by which SeaBIOS knows its platform.
    c.set_u16(SUBSYSTEM_VENDOR, 0x1af4);
    c.set_u16(SUBSYSTEM_ID, 0x1100);
    for i in 0..I440FX_PAM_COUNT as u8 {
        // PAM registers: read/write enables of the BIOS and option ROM areas
        // (PAM0 has only its high nibble).
        c.wmask[(I440FX_PAM0 + i) as usize] = if i == 0 { 0x30 } else { 0x33 };
    }
    // SMRAM: D_OPEN, D_CLS, D_LCK, G_SMRAME writable; C_BASE_SEG fixed.
    c.bytes[I440FX_SMRAM as usize] = I440FX_SMRAM_DEFAULT;
    c.wmask[I440FX_SMRAM as usize] = 0x78;
    // Interrupt line is meaningless for the host bridge but harmless.
    BasicFunction { config: c }
}

/// 01.0: PIIX3 PCI-to-ISA bridge (82371SB function 0).
pub fn piix3_isa_bridge() -> BasicFunction {
    // Class 06/01/00: ISA bridge.
    let mut c = ConfigSpace::new(0x8086, 0x7000, 0x06, 0x01, 0x00, 0x00);
    // Multifunction: the IDE and ACPI functions live at 01.1 and 01.3.
    c.bytes[CFG_HEADER_TYPE as usize] = HEADER_MULTIFUNCTION;
    for i in 0..4u8 {
        // PIRQ[A-D] route control: bit 7 disable, bits 3:0 IRQ number.
        c.bytes[(PIIX_PIRQRC + i) as usize] = PIRQRC_DISABLE;
        c.wmask[(PIIX_PIRQRC + i) as usize] = 0x8f;
    }
    BasicFunction { config: c }
}

/// 01.3: PIIX4 power management function (82371AB function 3), with PMBA
/// fixed at `acpi_pm_base` (the platform decodes the ACPI PM block there
/// whatever the guest writes).
/// PIIX4 PM device activity register B.
pub const PIIX4_DEVACTB: u8 = 0x58;
/// DEVACTB bit 25 as QEMU's PIIX4 without SMM shows it.
pub const DEVACTB_APMC_EN_OFF: u32 = 1 << 25;

pub fn piix4_pm(acpi_pm_base: u16) -> BasicFunction {
    // Class 06/80/00: other bridge; revision 03.
    let mut c = ConfigSpace::new(0x8086, 0x7113, 0x06, 0x80, 0x00, 0x03);
    // PMBA: I/O space indicator in bit 0, base in bits 15:6.
    c.set_u32(PIIX4_PMBA, (acpi_pm_base as u32 & 0xffc0) | BAR_IO);
    // PMREGMISC: PM I/O space enabled.
    c.bytes[PIIX4_PMREGMISC as usize] = PMREGMISC_PMIOSE;
    // PMBA bits 15:6 are writable: firmware places the PM block itself
    // (SeaBIOS at 0xb000); the platform decodes it where PMBA says.
    c.wmask[PIIX4_PMBA as usize] = 0xC0;
    c.wmask[PIIX4_PMBA as usize + 1] = 0xFF;
    // SMBus base stays 0: no SMBus controller.
    // DEVACTB (0x58) bit 25: SMI via APMC disabled, as a chipset without
    // SMM reports it; firmware then does not raise an SMI and wait for it.
    c.set_u32(PIIX4_DEVACTB, DEVACTB_APMC_EN_OFF);
    BasicFunction { config: c }
}

/// The state a snapshot needs beyond each function's config space.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PciHostState {
    pub config_address: u32,
    pub reset_control: u8,
}

struct Slot {
    device: u8,
    function: u8,
    f: Box<dyn PciFunction>,
}

/// The host bridge and the functions on bus 0.
pub struct PciHost {
    state: PciHostState,
    slots: Vec<Slot>,
    requests: Requests,
    /// Accesses ignored: odd sizes on 0xCF8, other buses, bad ports.
    ignored: u64,
}

impl PciHost {
    /// The i440FX/PIIX bus 0: 00.0, 01.0 and 01.3.
    pub fn new(acpi_pm_base: u16, requests: Requests) -> Self {
        let mut h = PciHost {
            state: PciHostState::default(),
            slots: Vec::new(),
            requests,
            ignored: 0,
        };
        h.add_function(0, 0, Box::new(i440fx_host_bridge()));
        h.add_function(1, 0, Box::new(piix3_isa_bridge()));
        h.add_function(1, 3, Box::new(piix4_pm(acpi_pm_base)));
        h
    }

    /// Put a function at bus 0 `device`.`function`, replacing any there.
    pub fn add_function(&mut self, device: u8, function: u8, f: Box<dyn PciFunction>) {
        let (device, function) = (device & 0x1f, function & 0x07);
        self.slots
            .retain(|s| !(s.device == device && s.function == function));
        self.slots.push(Slot {
            device,
            function,
            f,
        });
    }

    /// The function at bus 0 `device`.`function`, if present.
    pub fn function(&self, device: u8, function: u8) -> Option<&dyn PciFunction> {
        self.slots
            .iter()
            .find(|s| s.device == device && s.function == function)
            .map(|s| &*s.f)
    }

    pub fn state(&self) -> &PciHostState {
        &self.state
    }

    /// Put back the address and reset control registers of a snapshot
    /// (function config spaces are restored through `function_mut`).
    pub fn restore(&mut self, state: PciHostState) {
        self.state = state;
    }

    /// The function at bus 0 `device`.`function`, mutable.
    pub fn function_mut(&mut self, device: u8, function: u8) -> Option<&mut dyn PciFunction> {
        match self
            .slots
            .iter_mut()
            .find(|s| s.device == device && s.function == function)
        {
            Some(s) => Some(&mut *s.f),
            None => None,
        }
    }

    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// The seven i440FX PAM registers (0x59-0x5F).
    pub fn pam(&self) -> [u8; 7] {
        let mut p = [0; 7];
        if let Some(f) = self.function(0, 0) {
            let c = f.config();
            for (i, v) in p.iter_mut().enumerate() {
                *v = c.bytes[I440FX_PAM0 as usize + i];
            }
        }
        p
    }

    /// The function CONFIG_ADDRESS selects, with the register offset, if
    /// enabled, on bus 0 and present.
    fn selected(&mut self) -> Option<(&mut Box<dyn PciFunction>, u8)> {
        let a = self.state.config_address;
        if a & ADDR_ENABLE == 0 {
            return None;
        }
        let bus = (a >> 16) & 0xff;
        let device = ((a >> 11) & 0x1f) as u8;
        let function = ((a >> 8) & 0x07) as u8;
        if bus != 0 {
            return None;
        }
        let reg = (a & ADDR_REG_MASK) as u8;
        self.slots
            .iter_mut()
            .find(|s| s.device == device && s.function == function)
            .map(|s| (&mut s.f, reg))
    }

    /// Clamp a data window access to the dword: offset within the window
    /// and the number of bytes that stay inside 0xCFC-0xCFF.
    fn window(port: u16, size: u8) -> (u8, u8) {
        let lane = (port - CONFIG_DATA) as u8;
        (lane, size.min(4 - lane))
    }

    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        let all = size_mask(size);
        match port {
            // Configuration address register, 32-bit only.
            CONFIG_ADDRESS if size == 4 => self.state.config_address,
            // Reset control register.
            RESET_CONTROL if size == 1 => self.state.reset_control as u32,
            // Configuration data: a configuration read of the selected
            // function, or all ones (master abort) when none answers.
            CONFIG_DATA..=0xcff => {
                let (lane, n) = Self::window(port, size);
                match self.selected() {
                    Some((f, reg)) => {
                        let v = f.read_config(reg + lane, n);
                        // Bytes past the window read as ones.
                        (v | !size_mask(n)) & all
                    }
                    None => all,
                }
            }
            _ => {
                self.ignored += 1;
                all
            }
        }
    }

    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        match port {
            // Configuration address register, 32-bit only.
            CONFIG_ADDRESS if size == 4 => self.state.config_address = value & ADDR_MASK,
            // Reset control: RST_CPU going to 1 resets the system.
            RESET_CONTROL if size == 1 => {
                let v = value as u8 & (RC_SYS_RST | RC_RST_CPU | RC_FULL_RST);
                if v & RC_RST_CPU != 0 && self.state.reset_control & RC_RST_CPU == 0 {
                    self.requests.post(PlatformRequest::Reset);
                }
                // RST_CPU self-clears once the reset has happened.
                self.state.reset_control = v & !RC_RST_CPU;
            }
            // Configuration data: a configuration write (dropped when no
            // function answers).
            CONFIG_DATA..=0xcff => {
                let (lane, n) = Self::window(port, size);
                if let Some((f, reg)) = self.selected() {
                    f.write_config(reg + lane, n, value);
                }
            }
            // Byte writes to 0xCF8/0xCFA/0xCFB (Linux's type 1 probe writes
            // 0xCFB) are not configuration cycles: ignored.
            _ => self.ignored += 1,
        }
    }
}

fn size_mask(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(dev: u32, func: u32, reg: u32) -> u32 {
        0x8000_0000 | (dev << 11) | (func << 8) | reg
    }

    fn cfg_read(h: &mut PciHost, dev: u32, func: u32, reg: u32) -> u32 {
        h.write(0xcf8, 4, addr(dev, func, reg & !3));
        h.read(0xcfc, 4)
    }

    #[test]
    fn vendor_device_and_class() {
        let mut h = PciHost::new(0x600, Requests::new());
        assert_eq!(cfg_read(&mut h, 0, 0, 0), 0x1237_8086);
        assert_eq!(cfg_read(&mut h, 0, 0, 8) >> 16, 0x0600);
        assert_eq!(cfg_read(&mut h, 1, 0, 0), 0x7000_8086);
        assert_eq!(cfg_read(&mut h, 1, 0, 8) >> 16, 0x0601);
        assert_eq!((cfg_read(&mut h, 1, 0, 0x0c) >> 16) & 0xff, 0x80);
        assert_eq!(cfg_read(&mut h, 1, 3, 0), 0x7113_8086);
        assert_eq!(cfg_read(&mut h, 1, 3, 8) >> 16, 0x0680);
        // Sub-dword reads through the window lanes.
        h.write(0xcf8, 4, addr(1, 3, 0));
        assert_eq!(h.read(0xcfe, 2), 0x7113);
        assert_eq!(h.read(0xcfd, 1), 0x80);
    }

    #[test]
    fn absent_functions_and_disabled_cycles_read_ones() {
        let mut h = PciHost::new(0x600, Requests::new());
        assert_eq!(cfg_read(&mut h, 2, 0, 0), 0xffff_ffff);
        assert_eq!(cfg_read(&mut h, 1, 1, 0), 0xffff_ffff);
        // Bus 1.
        h.write(0xcf8, 4, 0x8001_0000);
        assert_eq!(h.read(0xcfc, 4), 0xffff_ffff);
        // Enable bit clear.
        h.write(0xcf8, 4, 0x0000_0000);
        assert_eq!(h.read(0xcfc, 2), 0xffff);
        // Linux's type 1 probe: the address register reads back.
        h.write(0xcfb, 1, 1);
        h.write(0xcf8, 4, 0x8000_0000);
        assert_eq!(h.read(0xcf8, 4), 0x8000_0000);
    }

    #[test]
    fn read_only_fields_and_bars() {
        let mut h = PciHost::new(0x600, Requests::new());
        h.write(0xcf8, 4, addr(0, 0, 0));
        h.write(0xcfc, 4, 0xdead_beef);
        assert_eq!(h.read(0xcfc, 4), 0x1237_8086);
        h.write(0xcf8, 4, addr(1, 0, 0x0c));
        h.write(0xcfe, 1, 0x00);
        assert_eq!(h.read(0xcfe, 1), 0x80, "header type is read-only");
        // Absent BAR: sizing reads 0.
        h.write(0xcf8, 4, addr(1, 0, 0x10));
        h.write(0xcfc, 4, 0xffff_ffff);
        assert_eq!(h.read(0xcfc, 4), 0);
        // Interrupt line is writable.
        h.write(0xcf8, 4, addr(1, 3, 0x3c));
        h.write(0xcfc, 1, 9);
        assert_eq!(h.read(0xcfc, 1), 9);
    }

    #[test]
    fn bar_sizing_on_a_declared_bar() {
        let mut c = ConfigSpace::new(0x8086, 0x7010, 0x01, 0x01, 0x80, 0);
        c.set_bar(4, 16, true);
        let mut h = PciHost::new(0x600, Requests::new());
        h.add_function(1, 1, Box::new(BasicFunction { config: c }));
        h.write(0xcf8, 4, addr(1, 1, 0x20));
        h.write(0xcfc, 4, 0xffff_ffff);
        // 16-byte I/O BAR: address bits 31:4 writable, bit 0 = I/O.
        assert_eq!(h.read(0xcfc, 4), 0xffff_fff1);
        h.write(0xcfc, 4, 0xc000);
        assert_eq!(h.read(0xcfc, 4), 0xc001);
    }

    #[test]
    fn pmba_pmregmisc_pirq() {
        let mut h = PciHost::new(0x600, Requests::new());
        assert_eq!(cfg_read(&mut h, 1, 3, 0x40), 0x601);
        assert_eq!(cfg_read(&mut h, 1, 3, 0x80) & 1, 1);
        assert_eq!(cfg_read(&mut h, 1, 3, 0x90), 0);
        // PMBA: firmware moves the block; bits 15:6 take the base, bit 0
        // (I/O space) stays set, bits 5:1 read 0 (PIIX4 datasheet 3.1.1).
        h.write(0xcf8, 4, addr(1, 3, 0x40));
        h.write(0xcfc, 4, 0xb0ff);
        assert_eq!(h.read(0xcfc, 4), 0xb0c1);
        assert_eq!(cfg_read(&mut h, 1, 0, 0x60), 0x8080_8080);
        h.write(0xcf8, 4, addr(1, 0, 0x60));
        h.write(0xcfd, 1, 0x0b);
        assert_eq!(h.read(0xcfc, 4), 0x8080_0b80);
    }

    #[test]
    fn pam_and_smram() {
        let mut h = PciHost::new(0x600, Requests::new());
        assert_eq!(h.pam(), [0; 7]);
        // PAM0 is at 0x59: dword 0x58, lane 1.
        h.write(0xcf8, 4, addr(0, 0, 0x58));
        h.write(0xcfd, 1, 0x30);
        h.write(0xcfe, 2, 0x3311);
        h.write(0xcf8, 4, addr(0, 0, 0x5c));
        h.write(0xcfc, 4, 0x3333_3333);
        assert_eq!(h.pam(), [0x30, 0x11, 0x33, 0x33, 0x33, 0x33, 0x33]);
        assert_eq!((cfg_read(&mut h, 0, 0, 0x70) >> 16) & 0xff, 0x02);
    }

    #[test]
    fn reset_control_register() {
        let r = Requests::new();
        let mut h = PciHost::new(0x600, r.clone());
        h.write(0xcf9, 1, 0x02);
        assert_eq!(r.peek(), None);
        assert_eq!(h.read(0xcf9, 1), 0x02);
        h.write(0xcf9, 1, 0x06);
        assert_eq!(r.take(), Some(PlatformRequest::Reset));
    }
}
