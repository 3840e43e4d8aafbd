//! VGA register file: port numbers, register indexes and bits, and the
//! serializable state of the sequencer, graphics controller, attribute
//! controller, CRT controller and DAC. Owns no memory and no timing; the
//! port decoding lives in `mod.rs`.
//!
//! References: IBM VGA Technical Reference (registers chapter), FreeVGA
//! "VGA/SVGA Video Programming" register pages.

use serde::{Deserialize, Serialize};

// I/O ports.
/// CRTC index, monochrome decode (misc output bit 0 clear).
pub const PORT_CRTC_INDEX_MONO: u16 = 0x3b4;
/// CRTC data, monochrome decode.
pub const PORT_CRTC_DATA_MONO: u16 = 0x3b5;
/// Input status 1 (read) / feature control (write), monochrome decode.
pub const PORT_STATUS1_MONO: u16 = 0x3ba;
/// Attribute controller index/data write (flip-flop), index read.
pub const PORT_ATTR_INDEX: u16 = 0x3c0;
/// Attribute controller data read.
pub const PORT_ATTR_DATA_READ: u16 = 0x3c1;
/// Misc output write / input status 0 read.
pub const PORT_MISC_WRITE: u16 = 0x3c2;
/// Video subsystem enable (motherboard VGA); stored only.
pub const PORT_VIDEO_ENABLE: u16 = 0x3c3;
/// Sequencer index.
pub const PORT_SEQ_INDEX: u16 = 0x3c4;
/// Sequencer data.
pub const PORT_SEQ_DATA: u16 = 0x3c5;
/// DAC pixel mask.
pub const PORT_DAC_MASK: u16 = 0x3c6;
/// DAC read index (write) / DAC state (read).
pub const PORT_DAC_READ_INDEX: u16 = 0x3c7;
/// DAC write index.
pub const PORT_DAC_WRITE_INDEX: u16 = 0x3c8;
/// DAC data (three 6-bit components per entry).
pub const PORT_DAC_DATA: u16 = 0x3c9;
/// Feature control read.
pub const PORT_FEATURE_READ: u16 = 0x3ca;
/// Misc output read.
pub const PORT_MISC_READ: u16 = 0x3cc;
/// Graphics controller index.
pub const PORT_GC_INDEX: u16 = 0x3ce;
/// Graphics controller data.
pub const PORT_GC_DATA: u16 = 0x3cf;
/// CRTC index, colour decode (misc output bit 0 set).
pub const PORT_CRTC_INDEX_COLOR: u16 = 0x3d4;
/// CRTC data, colour decode.
pub const PORT_CRTC_DATA_COLOR: u16 = 0x3d5;
/// Input status 1 (read) / feature control (write), colour decode.
pub const PORT_STATUS1_COLOR: u16 = 0x3da;

// Miscellaneous output register.
/// I/O address select: 1 = CRTC at 0x3Dx (colour), 0 = 0x3Bx (mono).
pub const MISC_IOAS: u8 = 0x01;
/// RAM enable: CPU access to video memory allowed.
pub const MISC_RAM_ENABLE: u8 = 0x02;

// Input status 0.
/// Switch sense (reads 1 on a colour monitor with the usual switch value).
pub const STATUS0_SWITCH_SENSE: u8 = 0x10;

// Input status 1.
/// Display disabled: horizontal or vertical blanking in progress.
pub const STATUS1_DISPLAY_DISABLED: u8 = 0x01;
/// Vertical retrace in progress.
pub const STATUS1_VRETRACE: u8 = 0x08;

// Sequencer registers (indexes).
/// SR00 reset.
pub const SR_RESET: usize = 0x00;
/// SR01 clocking mode.
pub const SR_CLOCKING: usize = 0x01;
/// SR02 map mask (planes written).
pub const SR_MAP_MASK: usize = 0x02;
/// SR03 character map select.
pub const SR_CHAR_MAP: usize = 0x03;
/// SR04 memory mode.
pub const SR_MEMORY_MODE: usize = 0x04;
/// Number of sequencer registers.
pub const SR_COUNT: usize = 5;

/// SR01 bit 0: 8-dot character clock (clear = 9 dots).
pub const SR1_DOT8: u8 = 0x01;
/// SR01 bit 5: screen off.
pub const SR1_SCREEN_OFF: u8 = 0x20;
/// SR04 bit 1: extended memory (more than 64 KiB).
pub const SR4_EXT_MEM: u8 = 0x02;
/// SR04 bit 2: odd/even disable (1 = sequential addressing for CPU writes).
pub const SR4_ODD_EVEN_DISABLE: u8 = 0x04;
/// SR04 bit 3: chain 4 (CPU address bits 0-1 select the plane).
pub const SR4_CHAIN4: u8 = 0x08;

// Graphics controller registers (indexes).
/// GR00 set/reset value per plane.
pub const GR_SET_RESET: usize = 0x00;
/// GR01 enable set/reset per plane.
pub const GR_ENABLE_SET_RESET: usize = 0x01;
/// GR02 colour compare.
pub const GR_COLOR_COMPARE: usize = 0x02;
/// GR03 data rotate and logical operation.
pub const GR_DATA_ROTATE: usize = 0x03;
/// GR04 read map select.
pub const GR_READ_MAP: usize = 0x04;
/// GR05 graphics mode.
pub const GR_MODE: usize = 0x05;
/// GR06 miscellaneous (memory map select, alphanumeric disable).
pub const GR_MISC: usize = 0x06;
/// GR07 colour don't care.
pub const GR_COLOR_DONT_CARE: usize = 0x07;
/// GR08 bit mask.
pub const GR_BIT_MASK: usize = 0x08;
/// Number of graphics controller registers.
pub const GR_COUNT: usize = 9;

/// GR03 bits 2:0: rotate count.
pub const GR3_ROTATE_MASK: u8 = 0x07;
/// GR03 bits 4:3: logical operation (0 none, 1 AND, 2 OR, 3 XOR).
pub const GR3_FUNC_SHIFT: u8 = 3;
/// GR05 bits 1:0: write mode.
pub const GR5_WRITE_MODE_MASK: u8 = 0x03;
/// GR05 bit 3: read mode 1 (colour compare).
pub const GR5_READ_MODE1: u8 = 0x08;
/// GR05 bit 4: host odd/even (reads use odd/even addressing).
pub const GR5_HOST_ODD_EVEN: u8 = 0x10;
/// GR05 bit 5: shift register interleave (CGA 4-colour modes).
pub const GR5_SHIFT_INTERLEAVE: u8 = 0x20;
/// GR05 bit 6: 256-colour shift mode.
pub const GR5_SHIFT256: u8 = 0x40;
/// GR06 bit 0: alphanumeric mode disable (graphics).
pub const GR6_GRAPHICS: u8 = 0x01;
/// GR06 bits 3:2: memory map select.
pub const GR6_MAP_SHIFT: u8 = 2;

// Attribute controller.
/// Number of attribute registers (16 palette + 5).
pub const AR_COUNT: usize = 0x15;
/// AR10 mode control.
pub const AR_MODE: usize = 0x10;
/// AR11 overscan colour.
pub const AR_OVERSCAN: usize = 0x11;
/// AR12 colour plane enable.
pub const AR_PLANE_ENABLE: usize = 0x12;
/// AR13 horizontal pixel panning.
pub const AR_HPAN: usize = 0x13;
/// AR14 colour select.
pub const AR_COLOR_SELECT: usize = 0x14;
/// Attribute index bits 4:0: register number.
pub const AR_INDEX_MASK: u8 = 0x1f;
/// Attribute index bit 5: palette address source (1 = display uses palette).
pub const AR_INDEX_PAS: u8 = 0x20;
/// AR10 bit 0: graphics mode (clear = text).
pub const AR10_GRAPHICS: u8 = 0x01;
/// AR10 bit 2: line graphics enable (9th column copies column 8 for 0xC0-0xDF).
pub const AR10_LINE_GRAPHICS: u8 = 0x04;
/// AR10 bit 3: blink enable (attribute bit 7 blinks instead of bright background).
pub const AR10_BLINK: u8 = 0x08;
/// AR10 bit 7: palette bits 5-4 come from the colour select register.
pub const AR10_P54S: u8 = 0x80;

// CRT controller registers (indexes).
/// CR01 horizontal display end (characters - 1).
pub const CR_H_DISPLAY_END: usize = 0x01;
/// CR07 overflow.
pub const CR_OVERFLOW: usize = 0x07;
/// CR09 maximum scan line.
pub const CR_MAX_SCAN: usize = 0x09;
/// CR0A cursor start.
pub const CR_CURSOR_START: usize = 0x0a;
/// CR0B cursor end.
pub const CR_CURSOR_END: usize = 0x0b;
/// CR0C start address high.
pub const CR_START_HI: usize = 0x0c;
/// CR0D start address low.
pub const CR_START_LO: usize = 0x0d;
/// CR0E cursor location high.
pub const CR_CURSOR_HI: usize = 0x0e;
/// CR0F cursor location low.
pub const CR_CURSOR_LO: usize = 0x0f;
/// CR11 vertical retrace end (bit 7 protects CR00-CR07).
pub const CR_VRETRACE_END: usize = 0x11;
/// CR12 vertical display end (low 8 bits).
pub const CR_V_DISPLAY_END: usize = 0x12;
/// CR13 offset (logical line width).
pub const CR_OFFSET: usize = 0x13;
/// CR14 underline location (bit 6 doubleword mode).
pub const CR_UNDERLINE: usize = 0x14;
/// CR17 mode control (bit 6 byte mode).
pub const CR_MODE: usize = 0x17;
/// Number of CRTC registers.
pub const CR_COUNT: usize = 0x19;

/// CR07 bit 1: vertical display end bit 8.
pub const CR7_VDE8: u8 = 0x02;
/// CR07 bit 4: line compare bit 8 (writable even when CR00-07 are protected).
pub const CR7_LINE_COMPARE8: u8 = 0x10;
/// CR07 bit 6: vertical display end bit 9.
pub const CR7_VDE9: u8 = 0x40;
/// CR09 bits 4:0: maximum scan line (character height - 1).
pub const CR9_SCAN_MASK: u8 = 0x1f;
/// CR09 bit 7: scan doubling.
pub const CR9_DOUBLE_SCAN: u8 = 0x80;
/// CR0A bit 5: cursor disable.
pub const CRA_CURSOR_OFF: u8 = 0x20;
/// CR11 bit 7: protect CR00-CR07.
pub const CR11_PROTECT: u8 = 0x80;
/// CR17 bit 6: byte mode (clear = word mode addressing).
pub const CR17_BYTE_MODE: u8 = 0x40;

// DAC.
/// DAC state read at 0x3C7: the DAC is in read mode.
pub const DAC_STATE_READ: u8 = 0x03;
/// DAC state read at 0x3C7: the DAC is in write mode.
pub const DAC_STATE_WRITE: u8 = 0x00;

/// The VGA register file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VgaRegs {
    /// Miscellaneous output register.
    pub misc: u8,
    /// Feature control register (stored only).
    pub feature: u8,
    /// Video subsystem enable (stored only).
    pub video_enable: u8,
    pub seq_index: u8,
    pub seq: [u8; SR_COUNT],
    pub gc_index: u8,
    pub gc: [u8; GR_COUNT],
    /// Attribute index including the palette address source bit.
    pub attr_index: u8,
    /// Attribute flip-flop: false = next 0x3C0 write is an index.
    pub attr_flip_flop: bool,
    pub attr: [u8; AR_COUNT],
    pub crtc_index: u8,
    pub crtc: [u8; CR_COUNT],
    pub dac_mask: u8,
    /// Entry the next 0x3C9 read returns.
    pub dac_read_index: u8,
    /// Entry the next 0x3C9 write fills.
    pub dac_write_index: u8,
    /// Component (0 red, 1 green, 2 blue) of the next data access.
    pub dac_component: u8,
    /// Last index register written (0x3C7 or 0x3C8) for the DAC state.
    pub dac_state: u8,
    /// Components buffered by writes until the third arrives.
    pub dac_write_latch: [u8; 3],
    /// The palette, 3 bytes (R, G, B) per entry, 6 significant bits unless
    /// the VBE 8-bit DAC bit is set.
    #[serde(with = "palette_serde")]
    pub dac: [u8; 768],
    /// The four plane latches loaded by every CPU read.
    pub latch: [u8; 4],
}

/// serde for [u8; 768].
mod palette_serde {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 768], s: S) -> Result<S::Ok, S::Error> {
        v.as_slice().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 768], D::Error> {
        let v = Vec::<u8>::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("DAC palette must be 768 bytes"))
    }
}

impl Default for VgaRegs {
    fn default() -> Self {
        VgaRegs {
            misc: 0,
            feature: 0,
            video_enable: 0,
            seq_index: 0,
            seq: [0; SR_COUNT],
            gc_index: 0,
            gc: [0; GR_COUNT],
            attr_index: 0,
            attr_flip_flop: false,
            attr: [0; AR_COUNT],
            crtc_index: 0,
            crtc: [0; CR_COUNT],
            dac_mask: 0xff,
            dac_read_index: 0,
            dac_write_index: 0,
            dac_component: 0,
            dac_state: DAC_STATE_WRITE,
            dac_write_latch: [0; 3],
            dac: [0; 768],
            latch: [0; 4],
        }
    }
}

impl VgaRegs {
    /// CRTC base port (0x3B0 or 0x3D0) selected by misc output bit 0.
    pub fn crtc_base(&self) -> u16 {
        if self.misc & MISC_IOAS != 0 {
            0x3d0
        } else {
            0x3b0
        }
    }

    /// Sequencer register, 0 for an index past the end.
    pub fn sr(&self, i: usize) -> u8 {
        self.seq.get(i).copied().unwrap_or(0)
    }

    /// Graphics controller register, 0 for an index past the end.
    pub fn gr(&self, i: usize) -> u8 {
        self.gc.get(i).copied().unwrap_or(0)
    }

    /// Attribute controller register, 0 for an index past the end.
    pub fn ar(&self, i: usize) -> u8 {
        self.attr.get(i).copied().unwrap_or(0)
    }

    /// CRTC register, 0 for an index past the end.
    pub fn cr(&self, i: usize) -> u8 {
        self.crtc.get(i).copied().unwrap_or(0)
    }
}
