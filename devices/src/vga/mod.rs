//! Standard VGA with the Bochs VBE extension, as the QEMU "stdvga" that
//! SeaBIOS's vgabios-stdvga.bin programs: the VGA register file
//! (`regs.rs`), 256 KiB of planar video memory behind the 0xA0000-0xBFFFF
//! window with the graphics controller's write modes, read modes and
//! latches, the VBE registers and the 16 MiB linear framebuffer with its
//! PCI function (`vbe.rs`), and turning all of it into a text screen or
//! RGBA pixels (`render.rs`). No terminal or window code lives here.
//!
//! Owns: the I/O ports 0x3B0-0x3DF and 0x1CE/0x1CF, video memory, the
//! retrace timing (derived from `now` only). Does not own: where the
//! window or the LFB is mapped on the bus (the machine asks `lfb_base()`).
//!
//! Memory model: the four planes are interleaved, plane p of plane
//! address a at byte `4 * a + p`. With chain 4 the CPU offset is then the
//! byte index itself (mode 13h and unchained "mode X" agree); odd/even
//! (text) writes send even CPU offsets to plane 0 and odd ones to plane 1
//! at plane address `offset & !1`, and the CRTC in word mode reads
//! character position n at plane address 2n, as on the real chip.
//!
//! State: `Vga` is serde-serializable; the 256 KiB planes are included,
//! the 16 MiB LFB is skipped (`#[serde(skip)]`, restored zeroed) and so is
//! the shared BAR cell (re-established by the PCI function, see `vbe.rs`).
//!
//! References: IBM VGA Technical Reference; FreeVGA (graphics controller
//! "write modes", "read modes", sequencer memory mode); Bochs VBE.

pub mod regs;
pub mod render;
pub mod vbe;

use std::cell::Cell;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use umbra_core::bus::PortIo;

pub use regs::*;
pub use render::{Rgba, TextScreen};
pub use vbe::{Vbe, VgaPciFunction, LFB_SIZE};
use vbe::{VbeEffect, PORT_VBE_DATA, PORT_VBE_DATA_ALT, PORT_VBE_INDEX, VBE_BANK_SIZE};

/// Size of the planar video memory: four 64 KiB planes.
pub const VRAM_SIZE: usize = 4 * PLANE_SIZE;
/// Size of one plane.
pub const PLANE_SIZE: usize = 0x10000;
/// First physical address of the legacy window.
pub const WINDOW_BASE: u64 = 0xa0000;
/// One past the last physical address of the legacy window.
pub const WINDOW_END: u64 = 0xc0000;

// Display timing used for input status 1: 640x480-ish at about 70 Hz
// (the 400-line modes' rate). A frame is 449 lines of 31.778 us; the
// last 49 lines are vertical blanking, lines 412-413 are retrace; each
// line ends with 6.356 us of horizontal blanking.
/// Length of one scan line in ns.
const LINE_NS: u64 = 31_778;
/// Lines per frame.
const FRAME_LINES: u64 = 449;
/// Lines displayed.
const ACTIVE_LINES: u64 = 400;
/// First line of vertical retrace.
const VRETRACE_START: u64 = 412;
/// Lines of vertical retrace.
const VRETRACE_LINES: u64 = 2;
/// Horizontal blanking at the end of each line, in ns.
const HBLANK_NS: u64 = 6_356;

fn new_vram() -> Vec<u8> {
    vec![0; VRAM_SIZE]
}

fn new_lfb() -> Vec<u8> {
    vec![0; LFB_SIZE]
}

/// The standard VGA plus Bochs VBE.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Vga {
    pub regs: VgaRegs,
    pub vbe: Vbe,
    /// Planar memory, interleaved (see the module doc).
    #[serde(default = "new_vram")]
    vram: Vec<u8>,
    /// VBE linear framebuffer (not serialized: 16 MiB).
    #[serde(skip, default = "new_lfb")]
    lfb: Vec<u8>,
    /// BAR0 address shared with the PCI function.
    #[serde(skip)]
    lfb_base: Rc<Cell<u32>>,
    /// Accesses to unimplemented ports or registers, for diagnostics.
    pub ignored: u64,
}

impl Default for Vga {
    fn default() -> Self {
        Self::new()
    }
}

impl Vga {
    pub fn new() -> Self {
        // Power-on: colour decode, RAM enabled, all planes writable.
        let mut regs = VgaRegs {
            misc: MISC_IOAS | MISC_RAM_ENABLE,
            ..Default::default()
        };
        regs.seq[SR_MAP_MASK] = 0x0f;
        regs.gc[GR_BIT_MASK] = 0xff;
        regs.attr[AR_PLANE_ENABLE] = 0x0f;
        Vga {
            regs,
            vbe: Vbe::default(),
            vram: new_vram(),
            lfb: new_lfb(),
            lfb_base: Rc::new(Cell::new(0)),
            ignored: 0,
        }
    }

    /// The PCI function 00:02.0 for this VGA; its BAR0 writes are visible
    /// through `lfb_base()`. Call once and hand it to the PCI host.
    pub fn pci_function(&self) -> VgaPciFunction {
        VgaPciFunction::new(self.lfb_base.clone())
    }

    /// Share BAR0 with an existing PCI function again (after restoring a
    /// serialized `Vga`, whose shared cell is not serialized).
    pub fn attach_pci_function(&mut self, f: &VgaPciFunction) {
        self.lfb_base = f.lfb_base_cell();
    }

    /// Physical address of the linear framebuffer (BAR0), 0 if unassigned.
    pub fn lfb_base(&self) -> u32 {
        self.lfb_base.get()
    }

    /// Planar memory (interleaved, see the module doc).
    pub fn vram(&self) -> &[u8] {
        &self.vram
    }

    /// The linear framebuffer.
    pub fn lfb(&self) -> &[u8] {
        &self.lfb
    }

    // ---- I/O ports 0x3B0-0x3DF -------------------------------------------

    /// Input status 1: display-disabled and vertical-retrace bits from the
    /// virtual time.
    fn status1(&self, now: u64) -> u8 {
        let frame_ns = LINE_NS * FRAME_LINES;
        let t = now % frame_ns;
        let line = t / LINE_NS;
        let in_line = t % LINE_NS;
        let mut v = 0;
        if line >= ACTIVE_LINES || in_line >= LINE_NS - HBLANK_NS {
            v |= STATUS1_DISPLAY_DISABLED;
        }
        if (VRETRACE_START..VRETRACE_START + VRETRACE_LINES).contains(&line) {
            v |= STATUS1_VRETRACE;
        }
        v
    }

    /// Read one VGA port.
    pub fn read(&mut self, port: u16, now: u64) -> u8 {
        let r = &mut self.regs;
        let crtc = r.crtc_base();
        match port {
            // Attribute controller: 0x3C0 reads the index (with PAS).
            PORT_ATTR_INDEX => r.attr_index,
            // 0x3C1 reads the register the index selects.
            PORT_ATTR_DATA_READ => r.ar((r.attr_index & AR_INDEX_MASK) as usize),
            // Input status 0: switch sense set (colour monitor present).
            PORT_MISC_WRITE => STATUS0_SWITCH_SENSE,
            PORT_VIDEO_ENABLE => r.video_enable,
            PORT_SEQ_INDEX => r.seq_index,
            PORT_SEQ_DATA => r.sr(r.seq_index as usize),
            PORT_DAC_MASK => r.dac_mask,
            // DAC state: which index register was written last.
            PORT_DAC_READ_INDEX => r.dac_state,
            PORT_DAC_WRITE_INDEX => r.dac_write_index,
            // DAC data: next component of the read entry; after blue the
            // read index advances.
            PORT_DAC_DATA => {
                let i = r.dac_read_index as usize * 3 + r.dac_component as usize;
                let mut v = r.dac[i];
                if !self.vbe.dac_8bit() {
                    v &= 0x3f;
                }
                r.dac_component += 1;
                if r.dac_component == 3 {
                    r.dac_component = 0;
                    r.dac_read_index = r.dac_read_index.wrapping_add(1);
                }
                v
            }
            PORT_FEATURE_READ => r.feature,
            PORT_MISC_READ => r.misc,
            PORT_GC_INDEX => r.gc_index,
            PORT_GC_DATA => r.gr(r.gc_index as usize),
            // CRTC, decoded only at the base misc bit 0 selects.
            p if p == crtc + 4 => r.crtc_index,
            p if p == crtc + 5 => r.cr(r.crtc_index as usize),
            // Input status 1: reading it also resets the attribute
            // flip-flop to "index".
            p if p == crtc + 0xa => {
                r.attr_flip_flop = false;
                self.status1(now)
            }
            // Ports of the other decode and unused ports float high.
            _ => {
                self.ignored += 1;
                0xff
            }
        }
    }

    /// Write one VGA port.
    pub fn write(&mut self, port: u16, value: u8, _now: u64) {
        let r = &mut self.regs;
        let crtc = r.crtc_base();
        match port {
            // Attribute controller: the flip-flop alternates index and data.
            PORT_ATTR_INDEX => {
                if !r.attr_flip_flop {
                    r.attr_index = value & (AR_INDEX_MASK | AR_INDEX_PAS);
                } else {
                    let i = (r.attr_index & AR_INDEX_MASK) as usize;
                    if let Some(a) = r.attr.get_mut(i) {
                        // Palette entries are 6 bits wide.
                        *a = if i < 16 { value & 0x3f } else { value };
                    } else {
                        self.ignored += 1;
                    }
                }
                r.attr_flip_flop = !r.attr_flip_flop;
            }
            // Misc output: clock select, CRTC decode, RAM enable, sync.
            PORT_MISC_WRITE => r.misc = value,
            PORT_VIDEO_ENABLE => r.video_enable = value,
            PORT_SEQ_INDEX => r.seq_index = value & 0x07,
            PORT_SEQ_DATA => {
                if let Some(s) = r.seq.get_mut(r.seq_index as usize) {
                    *s = value;
                } else {
                    self.ignored += 1;
                }
            }
            PORT_DAC_MASK => r.dac_mask = value,
            // DAC read index: start reading an entry at red.
            PORT_DAC_READ_INDEX => {
                r.dac_read_index = value;
                r.dac_component = 0;
                r.dac_state = DAC_STATE_READ;
            }
            // DAC write index: start writing an entry at red.
            PORT_DAC_WRITE_INDEX => {
                r.dac_write_index = value;
                r.dac_component = 0;
                r.dac_state = DAC_STATE_WRITE;
            }
            // DAC data: the entry is updated when blue arrives.
            PORT_DAC_DATA => {
                let c = r.dac_component as usize;
                r.dac_write_latch[c] = if self.vbe.dac_8bit() {
                    value
                } else {
                    value & 0x3f
                };
                r.dac_component += 1;
                if r.dac_component == 3 {
                    let i = r.dac_write_index as usize * 3;
                    r.dac[i..i + 3].copy_from_slice(&r.dac_write_latch);
                    r.dac_component = 0;
                    r.dac_write_index = r.dac_write_index.wrapping_add(1);
                }
            }
            PORT_GC_INDEX => r.gc_index = value & 0x0f,
            PORT_GC_DATA => {
                if let Some(g) = r.gc.get_mut(r.gc_index as usize) {
                    *g = value;
                } else {
                    self.ignored += 1;
                }
            }
            p if p == crtc + 4 => r.crtc_index = value,
            // CRTC data: CR00-CR07 are read-only while CR11 bit 7 is set,
            // except CR07 bit 4 (line compare bit 8).
            p if p == crtc + 5 => {
                let i = r.crtc_index as usize;
                let protect = r.crtc[CR_VRETRACE_END] & CR11_PROTECT != 0;
                if i >= CR_COUNT {
                    self.ignored += 1;
                } else if protect && i < CR_OVERFLOW {
                    // Protected: ignored.
                } else if protect && i == CR_OVERFLOW {
                    r.crtc[i] = (r.crtc[i] & !CR7_LINE_COMPARE8) | (value & CR7_LINE_COMPARE8);
                } else {
                    r.crtc[i] = value;
                }
            }
            // Feature control is written at 0x3xA of the current decode.
            p if p == crtc + 0xa => r.feature = value,
            _ => self.ignored += 1,
        }
    }

    // ---- VBE ports ------------------------------------------------------

    /// Read the VBE index (0x1CE) or data (0x1CF) port.
    pub fn vbe_read(&mut self, port: u16, _size: u8) -> u32 {
        match port {
            PORT_VBE_INDEX => self.vbe.index as u32,
            PORT_VBE_DATA | PORT_VBE_DATA_ALT => self.vbe.read_data() as u32,
            _ => {
                self.ignored += 1;
                0xffff
            }
        }
    }

    /// Write the VBE index or data port.
    pub fn vbe_write(&mut self, port: u16, _size: u8, value: u32) {
        match port {
            PORT_VBE_INDEX => self.vbe.index = value as u16,
            PORT_VBE_DATA | PORT_VBE_DATA_ALT => {
                if let VbeEffect::ClearMemory = self.vbe.write_data(value as u16) {
                    self.lfb.fill(0);
                }
            }
            _ => self.ignored += 1,
        }
    }

    // ---- Legacy window 0xA0000-0xBFFFF --------------------------------

    /// Translate a physical address to an offset in the window the GC
    /// misc register's memory map select decodes (GR06 bits 3:2).
    fn window_offset(&self, addr: u64) -> Option<usize> {
        let (base, size) = match (self.regs.gr(GR_MISC) >> GR6_MAP_SHIFT) & 3 {
            0 => (0xa0000, 0x20000),
            1 => (0xa0000, 0x10000),
            2 => (0xb0000, 0x8000),
            _ => (0xb8000, 0x8000),
        };
        let off = addr.checked_sub(base)?;
        (off < size).then_some(off as usize)
    }

    /// The VBE banked window: 0xA0000-0xAFFFF maps the selected 64 KiB of
    /// the LFB while a VBE mode is enabled (outer None: VBE off; inner
    /// None: address outside the bank window, decoded as legacy VGA).
    fn vbe_bank_offset(&self, addr: u64) -> Option<Option<usize>> {
        if !self.vbe.enabled() {
            return None;
        }
        let off = addr
            .checked_sub(WINDOW_BASE)
            .filter(|&o| o < VBE_BANK_SIZE as u64);
        Some(off.map(|o| self.vbe.bank_offset() + o as usize))
    }

    /// Read `size` bytes (little-endian) at a physical address in the
    /// legacy window. Unmapped bytes read 0xFF.
    pub fn mmio_read(&mut self, addr: u64, size: u8) -> u64 {
        let mut v = 0u64;
        for i in 0..size.min(8) as u64 {
            v |= (self.read_byte(addr.wrapping_add(i)) as u64) << (8 * i);
        }
        v
    }

    /// Write `size` bytes (little-endian) at a physical address in the
    /// legacy window.
    pub fn mmio_write(&mut self, addr: u64, size: u8, value: u64) {
        for i in 0..size.min(8) as u64 {
            self.write_byte(addr.wrapping_add(i), (value >> (8 * i)) as u8);
        }
    }

    /// Read `size` bytes at `offset` in the linear framebuffer.
    pub fn lfb_read(&self, offset: u64, size: u8) -> u64 {
        let mut v = 0u64;
        for i in 0..size.min(8) as u64 {
            let b = usize::try_from(offset.wrapping_add(i))
                .ok()
                .and_then(|o| self.lfb.get(o))
                .copied()
                .unwrap_or(0xff);
            v |= (b as u64) << (8 * i);
        }
        v
    }

    /// Write `size` bytes at `offset` in the linear framebuffer.
    pub fn lfb_write(&mut self, offset: u64, size: u8, value: u64) {
        for i in 0..size.min(8) as u64 {
            let o = usize::try_from(offset.wrapping_add(i)).ok();
            if let Some(b) = o.and_then(|o| self.lfb.get_mut(o)) {
                *b = (value >> (8 * i)) as u8;
            }
        }
    }

    /// Load the four latches from plane address `a`.
    fn load_latches(&mut self, a: usize) {
        let i = (a % PLANE_SIZE) * 4;
        self.regs.latch.copy_from_slice(&self.vram[i..i + 4]);
    }

    /// One CPU byte read through the graphics controller (FreeVGA "read
    /// modes"): chain 4, odd/even, or planar with read mode 0 or 1.
    pub fn read_byte(&mut self, addr: u64) -> u8 {
        if let Some(Some(o)) = self.vbe_bank_offset(addr) {
            return self.lfb.get(o).copied().unwrap_or(0xff);
        }
        if self.regs.misc & MISC_RAM_ENABLE == 0 {
            return 0xff;
        }
        let Some(off) = self.window_offset(addr) else {
            return 0xff;
        };
        let r = &self.regs;
        if r.sr(SR_MEMORY_MODE) & SR4_CHAIN4 != 0 {
            // Chain 4: address bits 1:0 select the plane.
            let i = off % VRAM_SIZE;
            self.load_latches(i / 4);
            return self.vram[i];
        }
        if r.gr(GR_MODE) & GR5_HOST_ODD_EVEN != 0 {
            // Odd/even: address bit 0 picks plane 0/1 or 2/3 (read map
            // select bit 1 chooses the pair).
            let plane = (r.gr(GR_READ_MAP) & 2) as usize | (off & 1);
            let a = (off & !1) % PLANE_SIZE;
            self.load_latches(a);
            return self.vram[a * 4 + plane];
        }
        let a = off % PLANE_SIZE;
        self.load_latches(a);
        let r = &self.regs;
        if r.gr(GR_MODE) & GR5_READ_MODE1 == 0 {
            // Read mode 0: the plane read map select names.
            r.latch[(r.gr(GR_READ_MAP) & 3) as usize]
        } else {
            // Read mode 1: a bit is 1 where every plane that is not
            // "don't care" matches the colour compare value.
            let cc = r.gr(GR_COLOR_COMPARE);
            let care = r.gr(GR_COLOR_DONT_CARE);
            let mut diff = 0u8;
            for p in 0..4 {
                if care & (1 << p) != 0 {
                    let want = if cc & (1 << p) != 0 { 0xff } else { 0 };
                    diff |= r.latch[p] ^ want;
                }
            }
            !diff
        }
    }

    /// One CPU byte write through the graphics controller (FreeVGA "write
    /// modes"): chain 4, odd/even, or planar write modes 0-3 with the
    /// set/reset, rotate, logical operation, bit mask and map mask.
    pub fn write_byte(&mut self, addr: u64, value: u8) {
        if let Some(Some(o)) = self.vbe_bank_offset(addr) {
            if let Some(b) = self.lfb.get_mut(o) {
                *b = value;
            }
            return;
        }
        if self.regs.misc & MISC_RAM_ENABLE == 0 {
            return;
        }
        let Some(off) = self.window_offset(addr) else {
            return;
        };
        let r = &self.regs;
        let map_mask = r.sr(SR_MAP_MASK);
        if r.sr(SR_MEMORY_MODE) & SR4_CHAIN4 != 0 {
            // Chain 4: the plane is address bits 1:0, if the map mask
            // enables it.
            let i = off % VRAM_SIZE;
            if map_mask & (1 << (i & 3)) != 0 {
                self.vram[i] = value;
            }
            return;
        }
        if r.sr(SR_MEMORY_MODE) & SR4_ODD_EVEN_DISABLE == 0 {
            // Odd/even: even addresses to plane 0 (or 2), odd to 1 (or 3).
            let a = (off & !1) % PLANE_SIZE;
            for plane in [off & 1, 2 | (off & 1)] {
                if map_mask & (1 << plane) != 0 {
                    self.vram[a * 4 + plane] = value;
                }
            }
            return;
        }
        let a = off % PLANE_SIZE;
        let mode = r.gr(GR_MODE) & GR5_WRITE_MODE_MASK;
        let rot = r.gr(GR_DATA_ROTATE) & GR3_ROTATE_MASK;
        let func = (r.gr(GR_DATA_ROTATE) >> GR3_FUNC_SHIFT) & 3;
        let set_reset = r.gr(GR_SET_RESET);
        let esr = r.gr(GR_ENABLE_SET_RESET);
        let mut bit_mask = r.gr(GR_BIT_MASK);
        let rotated = value.rotate_right(rot as u32);
        let expand = |bit: bool| if bit { 0xffu8 } else { 0 };
        let mut data = [0u8; 4];
        match mode {
            // Mode 0: rotated CPU byte, or set/reset where enabled.
            0 => {
                for (p, d) in data.iter_mut().enumerate() {
                    *d = if esr & (1 << p) != 0 {
                        expand(set_reset & (1 << p) != 0)
                    } else {
                        rotated
                    };
                }
            }
            // Mode 1: the latches are written unchanged.
            1 => {
                for (p, d) in data.iter_mut().enumerate() {
                    *d = self.regs.latch[p];
                }
                bit_mask = 0xff;
            }
            // Mode 2: CPU bits 3:0 expanded to fill each plane.
            2 => {
                for (p, d) in data.iter_mut().enumerate() {
                    *d = expand(value & (1 << p) != 0);
                }
            }
            // Mode 3: set/reset colour, bit mask ANDed with the rotated byte.
            _ => {
                for (p, d) in data.iter_mut().enumerate() {
                    *d = expand(set_reset & (1 << p) != 0);
                }
                bit_mask &= rotated;
            }
        }
        for (p, d) in data.iter_mut().enumerate() {
            let latch = self.regs.latch[p];
            if mode != 1 {
                // Logical operation with the latch, then the bit mask
                // chooses between the result and the latch.
                let v = match func {
                    0 => *d,
                    1 => *d & latch,
                    2 => *d | latch,
                    _ => *d ^ latch,
                };
                *d = (v & bit_mask) | (latch & !bit_mask);
            }
            if map_mask & (1 << p) != 0 {
                self.vram[a * 4 + p] = *d;
            }
        }
    }
}

/// The VGA and VBE ports on the I/O bus: multi-byte accesses to the VGA
/// ports are split into byte accesses (a 16-bit `out 0x3C4, ax` writes
/// the index then the data, as on the ISA bus); VBE ports take 16 bits.
impl PortIo for Vga {
    fn read(&mut self, port: u16, size: u8, now: u64) -> u32 {
        if (PORT_VBE_INDEX..=PORT_VBE_DATA_ALT).contains(&port) {
            return self.vbe_read(port, size);
        }
        let mut v = 0u32;
        for i in 0..size.min(4) {
            v |= (Vga::read(self, port.wrapping_add(i as u16), now) as u32) << (8 * i);
        }
        v
    }

    fn write(&mut self, port: u16, size: u8, value: u32, now: u64) {
        if (PORT_VBE_INDEX..=PORT_VBE_DATA_ALT).contains(&port) {
            return self.vbe_write(port, size, value);
        }
        for i in 0..size.min(4) {
            Vga::write(
                self,
                port.wrapping_add(i as u16),
                (value >> (8 * i)) as u8,
                now,
            );
        }
    }
}

#[cfg(test)]
mod tests;
