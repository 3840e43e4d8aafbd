//! Turning video memory into data: the text screen of an alphanumeric mode
//! (characters and attributes, with a CP437-to-Unicode string form) and an
//! RGBA image of text modes (glyphs from plane 2), 16-colour planar modes,
//! 256-colour chain-4 modes and VBE 8/15/16/24/32 bpp modes. No terminal
//! or window code: callers decide how to show the result.
//!
//! Not rendered: CGA-compatible modes 4-6 (GR05 shift interleave) are drawn
//! as planar, horizontal panning and the line compare split are ignored,
//! the cursor and blinking do not blink (the cursor is always drawn), the
//! attribute palette address source bit (screen blanked while the palette
//! is being loaded) is ignored; SR01 screen-off renders black.

use std::fmt;

use super::regs::*;
use super::vbe::*;
use super::{Vga, PLANE_SIZE, VRAM_SIZE};

/// An RGBA image: width, height, and 4 bytes per pixel, rows top down.
pub type Rgba = (u32, u32, Vec<u8>);

/// The characters of an alphanumeric mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextScreen {
    pub cols: usize,
    pub rows: usize,
    /// `rows * cols` cells, row-major: (character code, attribute).
    pub cells: Vec<(u8, u8)>,
    /// Cursor (row, column) when it is enabled and on screen.
    pub cursor: Option<(usize, usize)>,
    /// Cursor start and end scan lines (CR0A/CR0B bits 4:0).
    pub cursor_start: u8,
    pub cursor_end: u8,
}

impl TextScreen {
    /// The cell at (row, col).
    pub fn cell(&self, row: usize, col: usize) -> Option<(u8, u8)> {
        if col >= self.cols {
            return None;
        }
        self.cells.get(row * self.cols + col).copied()
    }

    /// One row as Unicode, trailing blanks removed.
    pub fn line(&self, row: usize) -> String {
        let s: String = (0..self.cols)
            .filter_map(|c| self.cell(row, c))
            .map(|(ch, _)| cp437_to_char(ch))
            .collect();
        s.trim_end_matches([' ', '\u{a0}']).to_string()
    }
}

/// Rows joined by '\n', each trimmed of trailing blanks, CP437 mapped to
/// Unicode (NUL shown as a space).
impl fmt::Display for TextScreen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for row in 0..self.rows {
            if row > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&self.line(row))?;
        }
        Ok(())
    }
}

/// Code page 437 glyphs 0x00-0x1F (0x00 shown as a space).
const CP437_LOW: &str = " ☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼";
/// Code page 437 glyphs 0x80-0xFF (0xFF is a no-break space).
const CP437_HIGH: &str = concat!(
    "ÇüéâäàåçêëèïîìÄÅ",
    "ÉæÆôöòûùÿÖÜ¢£¥₧ƒ",
    "áíóúñÑªº¿⌐¬½¼¡«»",
    "░▒▓│┤╡╢╖╕╣║╗╝╜╛┐",
    "└┴┬├─┼╞╟╚╔╩╦╠═╬╧",
    "╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀",
    "αßΓπΣσµτΦΘΩδ∞φε∩",
    "≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}",
);

/// The Unicode character the IBM PC font draws for a CP437 code.
pub fn cp437_to_char(b: u8) -> char {
    match b {
        0x00..=0x1f => CP437_LOW.chars().nth(b as usize).unwrap_or(' '),
        0x7f => '⌂',
        0x20..=0x7e => b as char,
        _ => CP437_HIGH.chars().nth(b as usize - 0x80).unwrap_or(' '),
    }
}

impl Vga {
    /// Displayed scan lines (vertical display end + 1) divided by the
    /// scan doubling and maximum scan line repetition as `per_row` asks.
    fn display_lines(&self) -> usize {
        let r = &self.regs;
        let ov = r.cr(CR_OVERFLOW);
        let vde = r.cr(CR_V_DISPLAY_END) as usize
            | (((ov & CR7_VDE8) != 0) as usize) << 8
            | (((ov & CR7_VDE9) != 0) as usize) << 9;
        let mut lines = vde + 1;
        if r.cr(CR_MAX_SCAN) & CR9_DOUBLE_SCAN != 0 {
            lines /= 2;
        }
        lines
    }

    fn is_text(&self) -> bool {
        !self.vbe.enabled() && self.regs.ar(AR_MODE) & AR10_GRAPHICS == 0
    }

    /// Plane address of character position `n` (word mode doubles it,
    /// doubleword mode quadruples it).
    fn text_address(&self, n: usize) -> usize {
        let r = &self.regs;
        let a = if r.cr(CR_UNDERLINE) & 0x40 != 0 {
            n * 4
        } else if r.cr(CR_MODE) & CR17_BYTE_MODE == 0 {
            n * 2
        } else {
            n
        };
        a % PLANE_SIZE
    }

    /// The text screen when an alphanumeric mode is displayed (attribute
    /// mode control bit 0 clear and no VBE mode), else None.
    pub fn text_screen(&self) -> Option<TextScreen> {
        if !self.is_text() {
            return None;
        }
        let r = &self.regs;
        let cols = r.cr(CR_H_DISPLAY_END) as usize + 1;
        let char_h = (r.cr(CR_MAX_SCAN) & CR9_SCAN_MASK) as usize + 1;
        let rows = self.display_lines() / char_h;
        let stride = match r.cr(CR_OFFSET) as usize * 2 {
            0 => cols,
            s => s,
        };
        let start = ((r.cr(CR_START_HI) as usize) << 8) | r.cr(CR_START_LO) as usize;
        let mut cells = Vec::with_capacity(rows * cols);
        for row in 0..rows {
            for col in 0..cols {
                let a = self.text_address(start + row * stride + col);
                cells.push((self.vram[a * 4], self.vram[a * 4 + 1]));
            }
        }
        let pos = ((r.cr(CR_CURSOR_HI) as usize) << 8) | r.cr(CR_CURSOR_LO) as usize;
        let rel = pos.wrapping_sub(start) & 0xffff;
        let (crow, ccol) = (rel / stride, rel % stride);
        let cursor = (r.cr(CR_CURSOR_START) & CRA_CURSOR_OFF == 0 && crow < rows && ccol < cols)
            .then_some((crow, ccol));
        Some(TextScreen {
            cols,
            rows,
            cells,
            cursor,
            cursor_start: r.cr(CR_CURSOR_START) & CR9_SCAN_MASK,
            cursor_end: r.cr(CR_CURSOR_END) & CR9_SCAN_MASK,
        })
    }

    /// DAC entry as 8-bit RGB, through the pixel mask.
    fn dac_rgb(&self, index: u8) -> [u8; 3] {
        let i = (index & self.regs.dac_mask) as usize * 3;
        let mut c = [0u8; 3];
        for (k, v) in c.iter_mut().enumerate() {
            let raw = self.regs.dac[i + k];
            *v = if self.vbe.dac_8bit() {
                raw
            } else {
                let six = raw & 0x3f;
                (six << 2) | (six >> 4)
            };
        }
        c
    }

    /// A 4-bit colour through the attribute palette and colour select to
    /// a DAC index (IBM VGA, attribute controller "colour select").
    fn attr_to_dac(&self, c4: u8) -> u8 {
        let r = &self.regs;
        let pal = r.ar((c4 & 0x0f) as usize);
        let cs = r.ar(AR_COLOR_SELECT);
        let low = if r.ar(AR_MODE) & AR10_P54S != 0 {
            (pal & 0x0f) | ((cs & 0x03) << 4)
        } else {
            pal & 0x3f
        };
        low | ((cs & 0x0c) << 4)
    }

    /// Plane 2 offset of character map `n` (SR03 map numbers 0-7).
    fn font_offset(n: u8) -> usize {
        (n as usize & 3) * 0x4000 + (n as usize >> 2) * 0x2000
    }

    /// Render the displayed picture as RGBA.
    pub fn render_rgba(&self) -> Rgba {
        if self.vbe.enabled() {
            return self.render_vbe();
        }
        let (w, h, mut px) = if self.is_text() {
            self.render_text()
        } else if self.regs.gr(GR_MODE) & GR5_SHIFT256 != 0 {
            self.render_256()
        } else {
            self.render_planar()
        };
        if self.regs.sr(SR_CLOCKING) & SR1_SCREEN_OFF != 0 {
            // Screen off: the sequencer sends no pixels.
            px.chunks_exact_mut(4)
                .for_each(|p| p.copy_from_slice(&[0, 0, 0, 255]));
        }
        (w, h, px)
    }

    fn render_text(&self) -> Rgba {
        let Some(t) = self.text_screen() else {
            return (0, 0, Vec::new());
        };
        let r = &self.regs;
        let gw = if r.sr(SR_CLOCKING) & SR1_DOT8 != 0 {
            8
        } else {
            9
        };
        let char_h = (r.cr(CR_MAX_SCAN) & CR9_SCAN_MASK) as usize + 1;
        let (w, h) = (t.cols * gw, t.rows * char_h);
        let mode = r.ar(AR_MODE);
        let sr3 = r.sr(SR_CHAR_MAP);
        let map_a = ((sr3 >> 5) & 1) << 2 | ((sr3 >> 2) & 3);
        let map_b = ((sr3 >> 4) & 1) << 2 | (sr3 & 3);
        let mut px = vec![0u8; w * h * 4];
        for row in 0..t.rows {
            for col in 0..t.cols {
                let (ch, at) = t.cells[row * t.cols + col];
                let fg = self.dac_rgb(self.attr_to_dac(at & 0x0f));
                let bgc = if mode & AR10_BLINK != 0 {
                    (at >> 4) & 7
                } else {
                    at >> 4
                };
                let bg = self.dac_rgb(self.attr_to_dac(bgc));
                let map = if at & 0x08 != 0 { map_a } else { map_b };
                let font = Self::font_offset(map) + ch as usize * 32;
                let cursor_here = t.cursor == Some((row, col));
                for line in 0..char_h {
                    let mut bits = self.vram[((font + line) % PLANE_SIZE) * 4 + 2] as u16;
                    bits <<= 1;
                    // Ninth column: copies column 8 for line-drawing chars.
                    if gw == 9 && mode & AR10_LINE_GRAPHICS != 0 && (0xc0..=0xdf).contains(&ch) {
                        bits |= bits >> 1 & 1;
                    }
                    let in_cursor =
                        cursor_here && line as u8 >= t.cursor_start && line as u8 <= t.cursor_end;
                    for x in 0..gw {
                        let on = in_cursor || (bits >> (8 - x)) & 1 != 0;
                        let c = if on { fg } else { bg };
                        let o = ((row * char_h + line) * w + col * gw + x) * 4;
                        px[o..o + 4].copy_from_slice(&[c[0], c[1], c[2], 255]);
                    }
                }
            }
        }
        (w as u32, h as u32, px)
    }

    /// Scan lines per memory row in graphics modes (CR09 max scan line).
    fn graphics_height(&self) -> usize {
        let rep = (self.regs.cr(CR_MAX_SCAN) & CR9_SCAN_MASK) as usize + 1;
        self.display_lines() / rep
    }

    fn start_address(&self) -> usize {
        let r = &self.regs;
        ((r.cr(CR_START_HI) as usize) << 8) | r.cr(CR_START_LO) as usize
    }

    /// 256-colour mode (GR05 bit 6): one byte per pixel, interleaved
    /// memory read linearly, DAC used directly.
    fn render_256(&self) -> Rgba {
        let r = &self.regs;
        let w = (r.cr(CR_H_DISPLAY_END) as usize + 1) * 4;
        let h = self.graphics_height();
        let stride = r.cr(CR_OFFSET) as usize * 8;
        let start = self.start_address() * 4;
        let mut px = vec![0u8; w * h * 4];
        for y in 0..h {
            for x in 0..w {
                let idx = self.vram[(start + y * stride + x) % VRAM_SIZE];
                let c = self.dac_rgb(idx);
                let o = (y * w + x) * 4;
                px[o..o + 4].copy_from_slice(&[c[0], c[1], c[2], 255]);
            }
        }
        (w as u32, h as u32, px)
    }

    /// 16-colour planar mode: bit 7-x of each plane gives one bit of the
    /// colour, masked by the colour plane enable register.
    fn render_planar(&self) -> Rgba {
        let r = &self.regs;
        let w = (r.cr(CR_H_DISPLAY_END) as usize + 1) * 8;
        let h = self.graphics_height();
        let stride = r.cr(CR_OFFSET) as usize * 2;
        let start = self.start_address();
        let enable = r.ar(AR_PLANE_ENABLE) & 0x0f;
        let mut px = vec![0u8; w * h * 4];
        for y in 0..h {
            for x in 0..w {
                let a = (start + y * stride + x / 8) % PLANE_SIZE;
                let bit = 7 - (x % 8);
                let mut c4 = 0u8;
                for p in 0..4 {
                    c4 |= ((self.vram[a * 4 + p] >> bit) & 1) << p;
                }
                let c = self.dac_rgb(self.attr_to_dac(c4 & enable));
                let o = (y * w + x) * 4;
                px[o..o + 4].copy_from_slice(&[c[0], c[1], c[2], 255]);
            }
        }
        (w as u32, h as u32, px)
    }

    /// VBE mode from the linear framebuffer: 8 bpp through the DAC, 15/16
    /// bpp 5-5-5/5-6-5, 24/32 bpp B, G, R(, X) in memory order.
    fn render_vbe(&self) -> Rgba {
        let v = &self.vbe;
        let w = v.reg(VBE_INDEX_XRES) as usize;
        let h = v.reg(VBE_INDEX_YRES) as usize;
        let bpp = v.reg(VBE_INDEX_BPP);
        let bytes = v.bytes_per_pixel();
        let stride = v.reg(VBE_INDEX_VIRT_WIDTH).max(v.reg(VBE_INDEX_XRES)) as usize * bytes;
        let start = v.reg(VBE_INDEX_Y_OFFSET) as usize * stride
            + v.reg(VBE_INDEX_X_OFFSET) as usize * bytes;
        let lfb = self.lfb();
        let byte = |o: usize| lfb.get(o).copied().unwrap_or(0);
        let mut px = vec![0u8; w * h * 4];
        for y in 0..h {
            for x in 0..w {
                let o = start + y * stride + x * bytes;
                let c = match bpp {
                    8 => self.dac_rgb(byte(o)),
                    15 | 16 => {
                        let p = byte(o) as u16 | (byte(o + 1) as u16) << 8;
                        let e5 = |c: u16| ((c << 3) | (c >> 2)) as u8;
                        let e6 = |c: u16| ((c << 2) | (c >> 4)) as u8;
                        if bpp == 15 {
                            [e5((p >> 10) & 0x1f), e5((p >> 5) & 0x1f), e5(p & 0x1f)]
                        } else {
                            [e5((p >> 11) & 0x1f), e6((p >> 5) & 0x3f), e5(p & 0x1f)]
                        }
                    }
                    24 | 32 => [byte(o + 2), byte(o + 1), byte(o)],
                    // 4 bpp planar VBE modes are not rendered.
                    _ => [0, 0, 0],
                };
                let q = (y * w + x) * 4;
                px[q..q + 4].copy_from_slice(&[c[0], c[1], c[2], 255]);
            }
        }
        (w as u32, h as u32, px)
    }
}
