//! Unit tests for the VGA (kept in their own file: `mod.rs` is long).
//! Mode tables are the standard IBM VGA parameter values for modes 03h,
//! 12h and 13h (IBM VGA Technical Reference / FreeVGA mode tables).

use super::vbe::*;
use super::*;
use umbra_core::bus::PortIo;

struct ModeTable {
    misc: u8,
    seq: [u8; 4],
    crtc: [u8; 25],
    attr: [u8; 20],
    gc: [u8; 9],
}

/// Mode 03h: 80x25 text, 9x16 cells, 720x400.
const MODE_03: ModeTable = ModeTable {
    misc: 0x67,
    seq: [0x00, 0x03, 0x00, 0x02],
    crtc: [
        0x5f, 0x4f, 0x50, 0x82, 0x55, 0x81, 0xbf, 0x1f, 0x00, 0x4f, 0x0d, 0x0e, 0x00, 0x00, 0x00,
        0x00, 0x9c, 0x8e, 0x8f, 0x28, 0x1f, 0x96, 0xb9, 0xa3, 0xff,
    ],
    attr: [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e,
        0x3f, 0x0c, 0x00, 0x0f, 0x08,
    ],
    gc: [0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0e, 0x00, 0xff],
};

/// Mode 12h: 640x480 16 colours, planar.
const MODE_12: ModeTable = ModeTable {
    misc: 0xe3,
    seq: [0x01, 0x0f, 0x00, 0x06],
    crtc: [
        0x5f, 0x4f, 0x50, 0x82, 0x54, 0x80, 0x0b, 0x3e, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0xea, 0x8c, 0xdf, 0x28, 0x00, 0xe7, 0x04, 0xe3, 0xff,
    ],
    attr: [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e,
        0x3f, 0x01, 0x00, 0x0f, 0x00,
    ],
    gc: [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x0f, 0xff],
};

/// Mode 13h: 320x200 256 colours, chain 4.
const MODE_13: ModeTable = ModeTable {
    misc: 0x63,
    seq: [0x01, 0x0f, 0x00, 0x0e],
    crtc: [
        0x5f, 0x4f, 0x50, 0x82, 0x54, 0x80, 0xbf, 0x1f, 0x00, 0x41, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x9c, 0x8e, 0x8f, 0x28, 0x40, 0x96, 0xb9, 0xa3, 0xff,
    ],
    attr: [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
        0x0f, 0x41, 0x00, 0x0f, 0x00,
    ],
    gc: [0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x05, 0x0f, 0xff],
};

/// Program a mode the way a VGA BIOS does: sequencer in reset, misc,
/// sequencer, unprotect CR00-07, CRTC, attribute controller (flip-flop
/// reset through 0x3DA, then PAS set), graphics controller.
fn set_mode(v: &mut Vga, m: &ModeTable) {
    v.write(0x3c4, 0x00, 0);
    v.write(0x3c5, 0x01, 0);
    v.write(0x3c2, m.misc, 0);
    for (i, &x) in m.seq.iter().enumerate() {
        v.write(0x3c4, i as u8 + 1, 0);
        v.write(0x3c5, x, 0);
    }
    v.write(0x3c4, 0x00, 0);
    v.write(0x3c5, 0x03, 0);
    v.write(0x3d4, 0x11, 0);
    v.write(0x3d5, m.crtc[0x11] & 0x7f, 0);
    for (i, &x) in m.crtc.iter().enumerate() {
        v.write(0x3d4, i as u8, 0);
        v.write(0x3d5, x, 0);
    }
    v.read(0x3da, 0);
    for (i, &x) in m.attr.iter().enumerate() {
        v.write(0x3c0, i as u8, 0);
        v.write(0x3c0, x, 0);
    }
    v.write(0x3c0, 0x20, 0);
    for (i, &x) in m.gc.iter().enumerate() {
        v.write(0x3ce, i as u8, 0);
        v.write(0x3cf, x, 0);
    }
}

fn gc(v: &mut Vga, i: u8, x: u8) {
    v.write(0x3ce, i, 0);
    v.write(0x3cf, x, 0);
}

fn sr(v: &mut Vga, i: u8, x: u8) {
    v.write(0x3c4, i, 0);
    v.write(0x3c5, x, 0);
}

fn cr(v: &mut Vga, i: u8, x: u8) {
    v.write(0x3d4, i, 0);
    v.write(0x3d5, x, 0);
}

fn set_dac(v: &mut Vga, i: u8, rgb: [u8; 3]) {
    v.write(0x3c8, i, 0);
    for c in rgb {
        v.write(0x3c9, c, 0);
    }
}

fn pixel(img: &(u32, u32, Vec<u8>), x: u32, y: u32) -> [u8; 4] {
    let o = ((y * img.0 + x) * 4) as usize;
    img.2[o..o + 4].try_into().unwrap()
}

/// Read plane `p` at plane address `a` through read mode 0 (planar).
fn read_plane(v: &mut Vga, p: u8, a: u64) -> u8 {
    gc(v, 4, p);
    v.mmio_read(0xa0000 + a, 1) as u8
}

#[test]
fn renders_vga_text_memory_to_a_string() {
    let mut v = Vga::new();
    set_mode(&mut v, &MODE_03);
    for (i, b) in b"Hello".iter().enumerate() {
        let attr = if i == 0 { 0x1f } else { 0x07 };
        v.mmio_write(0xb8000 + 2 * i as u64, 2, (attr << 8) | *b as u64);
    }
    // Row 1: "World" then the CP437 box corner 0xC9 and smiley 0x01.
    for (i, b) in b"World\xc9\x01".iter().enumerate() {
        v.mmio_write(0xb8000 + 160 + 2 * i as u64, 1, *b as u64);
        v.mmio_write(0xb8000 + 160 + 2 * i as u64 + 1, 1, 0x07);
    }
    let t = v.text_screen().expect("mode 3 is a text mode");
    assert_eq!((t.cols, t.rows), (80, 25));
    assert_eq!(t.cell(0, 0), Some((b'H', 0x1f)));
    assert_eq!(t.cell(0, 1), Some((b'e', 0x07)));
    let s = t.to_string();
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], "Hello");
    assert_eq!(lines[1], "World╔☺");
    assert_eq!(s.split('\n').count(), 25);
    // Reading back through odd/even addressing returns the same bytes.
    assert_eq!(v.mmio_read(0xb8000, 2), 0x1f48);
}

#[test]
fn text_start_address_scrolls() {
    let mut v = Vga::new();
    set_mode(&mut v, &MODE_03);
    v.mmio_write(0xb8000 + 160, 1, b'X' as u64);
    // Start address 80 (one row down): 'X' becomes row 0.
    cr(&mut v, 0x0c, 0);
    cr(&mut v, 0x0d, 80);
    assert_eq!(v.text_screen().unwrap().line(0), "X");
}

#[test]
fn cursor_position_and_shape() {
    let mut v = Vga::new();
    set_mode(&mut v, &MODE_03);
    // Cursor at row 2, column 5: location 2 * 80 + 5 = 165.
    cr(&mut v, 0x0e, 0);
    cr(&mut v, 0x0f, 165);
    let t = v.text_screen().unwrap();
    assert_eq!(t.cursor, Some((2, 5)));
    assert_eq!((t.cursor_start, t.cursor_end), (0x0d, 0x0e));
    // CR0A bit 5 hides it.
    cr(&mut v, 0x0a, 0x2d);
    assert_eq!(v.text_screen().unwrap().cursor, None);
}

#[test]
fn text_render_uses_font_in_plane_2_and_palette() {
    let mut v = Vga::new();
    set_mode(&mut v, &MODE_03);
    // Load a glyph for 'A' as the BIOS does: plane 2 only, sequential
    // addressing, A0000 64 KiB map, write mode 0.
    sr(&mut v, 2, 0x04);
    sr(&mut v, 4, 0x06);
    gc(&mut v, 5, 0x00);
    gc(&mut v, 6, 0x04);
    v.mmio_write(0xa0000 + 0x41 * 32, 1, 0x81);
    set_mode(&mut v, &MODE_03);
    // Attribute 0x1F: foreground 15 -> palette 0x3F, background 1 -> 0x01.
    set_dac(&mut v, 0x3f, [63, 63, 63]);
    set_dac(&mut v, 0x01, [0, 0, 42]);
    v.mmio_write(0xb8000, 2, 0x1f41);
    let img = v.render_rgba();
    assert_eq!((img.0, img.1), (720, 400));
    assert_eq!(pixel(&img, 0, 0), [255, 255, 255, 255]);
    // 42 in 6 bits -> 42 * 4 + 42 / 16 = 170.
    assert_eq!(pixel(&img, 1, 0), [0, 0, 170, 255]);
    assert_eq!(pixel(&img, 7, 0), [255, 255, 255, 255]);
    // Ninth column is background for 'A' (not a line-drawing character).
    assert_eq!(pixel(&img, 8, 0), [0, 0, 170, 255]);
    assert_eq!(pixel(&img, 0, 1), [0, 0, 170, 255]);
}

/// Planar mode with sequential addressing for the write/read mode tests.
fn planar() -> Vga {
    let mut v = Vga::new();
    set_mode(&mut v, &MODE_12);
    v
}

/// Fill the four planes at plane address `a` with the given bytes.
fn fill_planes(v: &mut Vga, a: u64, bytes: [u8; 4]) {
    gc(v, 5, 0x00);
    gc(v, 1, 0x00);
    gc(v, 3, 0x00);
    gc(v, 8, 0xff);
    for (p, b) in bytes.iter().enumerate() {
        sr(v, 2, 1 << p);
        v.mmio_write(0xa0000 + a, 1, *b as u64);
    }
    sr(v, 2, 0x0f);
}

fn planes(v: &mut Vga, a: u64) -> [u8; 4] {
    gc(v, 5, 0x00);
    [0, 1, 2, 3].map(|p| read_plane(v, p, a))
}

#[test]
fn write_mode_0_set_reset_rotate_logic_and_bit_mask() {
    let mut v = planar();
    // Plain write: all four planes get the byte.
    fill_planes(&mut v, 0, [0; 4]);
    v.mmio_write(0xa0000, 1, 0xa5);
    assert_eq!(planes(&mut v, 0), [0xa5; 4]);
    // Enable set/reset on all planes, set/reset = 0101b: CPU data ignored.
    gc(&mut v, 1, 0x0f);
    gc(&mut v, 0, 0x05);
    v.mmio_write(0xa0001, 1, 0x12);
    gc(&mut v, 1, 0x00);
    assert_eq!(planes(&mut v, 1), [0xff, 0x00, 0xff, 0x00]);
    // Rotate right by 4: 0x12 -> 0x21.
    gc(&mut v, 3, 0x04);
    v.mmio_write(0xa0002, 1, 0x12);
    gc(&mut v, 3, 0x00);
    assert_eq!(planes(&mut v, 2), [0x21; 4]);
    // XOR with the latches: 0x3C ^ 0xFF = 0xC3.
    fill_planes(&mut v, 3, [0x3c; 4]);
    v.mmio_read(0xa0003, 1);
    gc(&mut v, 3, 0x18);
    v.mmio_write(0xa0003, 1, 0xff);
    gc(&mut v, 3, 0x00);
    assert_eq!(planes(&mut v, 3), [0xc3; 4]);
    // Bit mask 0xF0: (0x00 & 0xF0) | (0x3C & 0x0F) = 0x0C.
    fill_planes(&mut v, 4, [0x3c; 4]);
    v.mmio_read(0xa0004, 1);
    gc(&mut v, 8, 0xf0);
    v.mmio_write(0xa0004, 1, 0x00);
    gc(&mut v, 8, 0xff);
    assert_eq!(planes(&mut v, 4), [0x0c; 4]);
    // Map mask 0x02: only plane 1 written.
    fill_planes(&mut v, 5, [0; 4]);
    sr(&mut v, 2, 0x02);
    v.mmio_write(0xa0005, 1, 0x77);
    sr(&mut v, 2, 0x0f);
    assert_eq!(planes(&mut v, 5), [0, 0x77, 0, 0]);
}

#[test]
fn write_modes_1_2_3() {
    let mut v = planar();
    // Mode 1 copies the latches: read address 0, write address 1.
    fill_planes(&mut v, 0, [0x11, 0x22, 0x33, 0x44]);
    fill_planes(&mut v, 1, [0; 4]);
    v.mmio_read(0xa0000, 1);
    gc(&mut v, 5, 0x01);
    v.mmio_write(0xa0001, 1, 0x99);
    assert_eq!(planes(&mut v, 1), [0x11, 0x22, 0x33, 0x44]);
    // Mode 2: colour 1001b expands to planes 0 and 3.
    fill_planes(&mut v, 2, [0; 4]);
    v.mmio_read(0xa0002, 1);
    gc(&mut v, 5, 0x02);
    v.mmio_write(0xa0002, 1, 0x09);
    assert_eq!(planes(&mut v, 2), [0xff, 0x00, 0x00, 0xff]);
    // Mode 3: set/reset 0110b, CPU byte 0xF0 ANDed with bit mask 0x3C
    // gives mask 0x30 over zero latches.
    fill_planes(&mut v, 3, [0; 4]);
    v.mmio_read(0xa0003, 1);
    gc(&mut v, 0, 0x06);
    gc(&mut v, 8, 0x3c);
    gc(&mut v, 5, 0x03);
    v.mmio_write(0xa0003, 1, 0xf0);
    gc(&mut v, 8, 0xff);
    gc(&mut v, 0, 0x00);
    assert_eq!(planes(&mut v, 3), [0x00, 0x30, 0x30, 0x00]);
}

#[test]
fn read_mode_1_colour_compare() {
    let mut v = planar();
    fill_planes(&mut v, 7, [0xf0, 0xcc, 0xaa, 0x00]);
    // Compare with 0101b on all planes: p0 & !p1 & p2 & !p3 = 0x20.
    gc(&mut v, 5, 0x08);
    gc(&mut v, 2, 0x05);
    gc(&mut v, 7, 0x0f);
    assert_eq!(v.mmio_read(0xa0007, 1), 0x20);
    // Only plane 0 cared about: the bits set in plane 0.
    gc(&mut v, 7, 0x01);
    assert_eq!(v.mmio_read(0xa0007, 1), 0xf0);
    // No plane cared about: every bit matches.
    gc(&mut v, 7, 0x00);
    assert_eq!(v.mmio_read(0xa0007, 1), 0xff);
}

#[test]
fn planar_mode_12h_renders_16_colours() {
    let mut v = planar();
    // Colour 9 -> palette register 9 = 0x39 -> DAC 0x39.
    set_dac(&mut v, 0x39, [10, 20, 30]);
    // Pixel (0, 1): plane address 80, bit 7, write mode 2.
    gc(&mut v, 5, 0x02);
    gc(&mut v, 8, 0x80);
    v.mmio_read(0xa0000 + 80, 1);
    v.mmio_write(0xa0000 + 80, 1, 9);
    let img = v.render_rgba();
    assert_eq!((img.0, img.1), (640, 480));
    // 6-bit to 8-bit: 10 -> 40, 20 -> 81, 30 -> 121.
    assert_eq!(pixel(&img, 0, 1), [40, 81, 121, 255]);
    assert_eq!(pixel(&img, 1, 1), [0, 0, 0, 255]);
}

#[test]
fn chain4_mode_13h() {
    let mut v = Vga::new();
    set_mode(&mut v, &MODE_13);
    assert!(v.text_screen().is_none());
    set_dac(&mut v, 0x2a, [63, 0, 32]);
    let off = 320 * 10 + 7;
    v.mmio_write(0xa0000 + off, 1, 0x2a);
    assert_eq!(v.mmio_read(0xa0000 + off, 1), 0x2a);
    let img = v.render_rgba();
    assert_eq!((img.0, img.1), (320, 200));
    // 32 in 6 bits -> 130.
    assert_eq!(pixel(&img, 7, 10), [255, 0, 130, 255]);
    assert_eq!(pixel(&img, 8, 10), [0, 0, 0, 255]);
    // Offset 3207 is plane 3; a map mask without plane 3 blocks it.
    sr(&mut v, 2, 0x07);
    v.mmio_write(0xa0000 + off, 1, 0x55);
    assert_eq!(v.mmio_read(0xa0000 + off, 1), 0x2a);
    // Plane 0 (offset 3208) is still written.
    v.mmio_write(0xa0000 + off + 1, 1, 0x55);
    assert_eq!(v.mmio_read(0xa0000 + off + 1, 1), 0x55);
}

#[test]
fn memory_map_select() {
    let mut v = Vga::new();
    set_mode(&mut v, &MODE_03);
    // Map 3 (B8000, 32 KiB): A0000 and B0000 are not decoded.
    assert_eq!(v.mmio_read(0xa0000, 1), 0xff);
    v.mmio_write(0xb0000, 1, 0x12);
    assert_eq!(v.mmio_read(0xb0000, 1), 0xff);
    assert_eq!(v.mmio_read(0xb8000, 1), 0x00);
}

#[test]
fn dac_write_read_round_trip() {
    let mut v = Vga::new();
    v.write(0x3c8, 5, 0);
    for c in [10, 20, 30, 0xff, 1, 2] {
        v.write(0x3c9, c, 0);
    }
    assert_eq!(v.read(0x3c8, 0), 7);
    v.write(0x3c7, 5, 0);
    assert_eq!(v.read(0x3c7, 0), 0x03);
    let got: Vec<u8> = (0..6).map(|_| v.read(0x3c9, 0)).collect();
    // 0xFF is stored as its 6 significant bits.
    assert_eq!(got, [10, 20, 30, 0x3f, 1, 2]);
    v.write(0x3c8, 0, 0);
    assert_eq!(v.read(0x3c7, 0), 0x00);
    v.write(0x3c6, 0x0f, 0);
    assert_eq!(v.read(0x3c6, 0), 0x0f);
}

#[test]
fn attribute_flip_flop_reset_by_input_status_1() {
    let mut v = Vga::new();
    v.read(0x3da, 0);
    v.write(0x3c0, 0x01, 0); // index 1; flip-flop now at data
    v.read(0x3da, 0); // back to index
    v.write(0x3c0, 0x32, 0); // index 0x12 with PAS
    assert_eq!(v.read(0x3c0, 0), 0x32);
    v.write(0x3c0, 0x05, 0); // data for AR12
    assert_eq!(v.read(0x3c1, 0), 0x05);
    v.write(0x3c0, 0x01, 0);
    assert_eq!(v.read(0x3c1, 0), 0x00);
}

#[test]
fn crtc_decode_follows_misc_and_cr11_protects() {
    let mut v = Vga::new();
    set_mode(&mut v, &MODE_03);
    // Colour decode: 0x3B5 is not decoded.
    v.write(0x3b4, 0x0e, 0);
    assert_eq!(v.read(0x3b5, 0), 0xff);
    v.write(0x3c2, 0x66, 0);
    v.write(0x3b4, 0x13, 0);
    assert_eq!(v.read(0x3b5, 0), 0x28);
    v.write(0x3c2, 0x67, 0);
    // CR11 bit 7 set by the table: CR01 is protected, CR07 bit 4 is not.
    cr(&mut v, 0x01, 0x00);
    v.write(0x3d4, 0x01, 0);
    assert_eq!(v.read(0x3d5, 0), 0x4f);
    cr(&mut v, 0x07, 0x00);
    v.write(0x3d4, 0x07, 0);
    assert_eq!(v.read(0x3d5, 0), 0x0f);
}

#[test]
fn retrace_bits_toggle_at_60_to_70_hz() {
    let mut v = Vga::new();
    let (mut edges, mut prev, mut de_seen) = (0, false, [false; 2]);
    // 100 ms sampled every 5 us.
    for t in (0..100_000_000u64).step_by(5_000) {
        let s = v.read(0x3da, t);
        let vr = s & 0x08 != 0;
        if vr && !prev {
            edges += 1;
        }
        prev = vr;
        de_seen[(s & 1) as usize] = true;
    }
    // 60-70 Hz gives 6 or 7 retrace starts in 100 ms.
    assert!((6..=7).contains(&edges), "{edges} retraces in 100 ms");
    assert_eq!(de_seen, [true, true]);
}

#[test]
fn vbe_id_negotiation_and_caps() {
    let mut v = Vga::new();
    v.vbe_write(0x1ce, 2, 0);
    v.vbe_write(0x1cf, 2, 0xb0c0);
    assert_eq!(v.vbe_read(0x1cf, 2), 0xb0c0);
    v.vbe_write(0x1cf, 2, 0xb0c5);
    assert_eq!(v.vbe_read(0x1cf, 2), 0xb0c5);
    // An interface newer than implemented is refused.
    v.vbe_write(0x1cf, 2, 0xb0c6);
    assert_eq!(v.vbe_read(0x1cf, 2), 0xb0c5);
    // 16 MiB in 64 KiB units.
    v.vbe_write(0x1ce, 2, 0xa);
    assert_eq!(v.vbe_read(0x1cf, 2), 256);
    // GETCAPS: XRES reads a maximum of at least 1024.
    v.vbe_write(0x1ce, 2, 4);
    v.vbe_write(0x1cf, 2, 0x02);
    v.vbe_write(0x1ce, 2, 1);
    assert!(v.vbe_read(0x1cf, 2) >= 1024);
    v.vbe_write(0x1ce, 2, 3);
    assert_eq!(v.vbe_read(0x1cf, 2), 32);
}

fn vbe_set(v: &mut Vga, index: u16, value: u16) {
    v.vbe_write(0x1ce, 2, index as u32);
    v.vbe_write(0x1cf, 2, value as u32);
}

#[test]
fn vbe_640x480x32_lfb_is_rendered() {
    let mut v = Vga::new();
    vbe_set(&mut v, 4, 0);
    vbe_set(&mut v, 1, 640);
    vbe_set(&mut v, 2, 480);
    vbe_set(&mut v, 3, 32);
    vbe_set(&mut v, 4, 0x41);
    // Pixel (3, 2): offset (2 * 640 + 3) * 4, stored B, G, R, X.
    v.lfb_write((2 * 640 + 3) * 4, 4, 0x0011_2233);
    assert_eq!(v.lfb_read((2 * 640 + 3) * 4, 4), 0x0011_2233);
    let img = v.render_rgba();
    assert_eq!((img.0, img.1), (640, 480));
    assert_eq!(pixel(&img, 3, 2), [0x11, 0x22, 0x33, 255]);
    assert_eq!(pixel(&img, 4, 2), [0, 0, 0, 255]);
    assert!(v.text_screen().is_none());
    // Virtual width defaults to XRES; Y offset pans by whole lines.
    vbe_set(&mut v, 9, 2);
    assert_eq!(pixel(&v.render_rgba(), 3, 0), [0x11, 0x22, 0x33, 255]);
}

#[test]
fn vbe_16bpp_and_banked_window() {
    let mut v = Vga::new();
    vbe_set(&mut v, 1, 320);
    vbe_set(&mut v, 2, 200);
    vbe_set(&mut v, 3, 16);
    vbe_set(&mut v, 4, 0x01);
    // Bank 1: 0xA0000 + 4 is framebuffer offset 0x10004.
    vbe_set(&mut v, 5, 1);
    v.mmio_write(0xa0004, 2, 0xf800);
    assert_eq!(v.lfb_read(0x10004, 2), 0xf800);
    assert_eq!(v.mmio_read(0xa0004, 2), 0xf800);
    // Offset 0x10004 / 2 = pixel 32770 = (130, 102); 0xF800 is pure red.
    let img = v.render_rgba();
    assert_eq!(pixel(&img, 130, 102), [255, 0, 0, 255]);
    // Enabling again without NOCLEARMEM clears memory.
    vbe_set(&mut v, 4, 0);
    vbe_set(&mut v, 4, 0x01);
    assert_eq!(v.lfb_read(0x10004, 2), 0);
}

#[test]
fn pci_function_identity_and_bar() {
    use crate::pci::PciFunction;
    let v = Vga::new();
    let mut f = v.pci_function();
    assert_eq!(f.read_config(0x00, 4), 0x1111_1234);
    assert_eq!(f.read_config(0x08, 4) >> 8, 0x03_0000);
    // Sizing: 16 MiB prefetchable memory.
    f.write_config(0x10, 4, 0xffff_ffff);
    assert_eq!(f.read_config(0x10, 4), 0xff00_0008);
    f.write_config(0x10, 4, 0xfd00_0000);
    assert_eq!(f.read_config(0x10, 4), 0xfd00_0008);
    assert_eq!(v.lfb_base(), 0, "memory space still disabled");
    // Command register bit 1, Memory Space Enable (PCI 3.0 6.2.2).
    f.write_config(0x04, 2, 0x0002);
    assert_eq!(v.lfb_base(), 0xfd00_0000);
    f.write_config(0x04, 2, 0x0000);
    assert_eq!(v.lfb_base(), 0, "decoding off again");
    f.write_config(0x04, 2, 0x0002);
    // A fresh Vga (as after deserializing) adopts the function's BAR.
    let mut w = Vga::new();
    w.attach_pci_function(&f);
    assert_eq!(w.lfb_base(), 0xfd00_0000);
}

#[test]
fn port_io_trait_splits_word_writes() {
    let mut v = Vga::new();
    // out 0x3C4, ax with AX = 0x0F02: index 2, data 0x0F.
    PortIo::write(&mut v, 0x3c4, 2, 0x0e02, 0);
    v.write(0x3c4, 2, 0);
    assert_eq!(v.read(0x3c5, 0), 0x0e);
    PortIo::write(&mut v, 0x1ce, 2, 0, 0);
    assert_eq!(PortIo::read(&mut v, 0x1cf, 2, 0), 0xb0c5);
}

#[test]
fn random_accesses_never_panic() {
    let mut v = Vga::new();
    let mut s: u64 = 0x1234_5678_9abc_def0;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for i in 0..200_000u64 {
        let r = next();
        let val = next();
        match r % 6 {
            0 | 1 => v.write(0x3b0 + (r >> 8) as u16 % 0x30, val as u8, i),
            2 => {
                v.read(0x3b0 + (r >> 8) as u16 % 0x30, i);
            }
            3 => v.vbe_write(0x1ce + (r >> 8) as u16 % 3, 2, val as u32),
            4 => {
                let a = 0xa0000 + (r >> 8) % 0x20010;
                let size = [1, 2, 4, 8][(r >> 40) as usize % 4];
                if r & 0x80 != 0 {
                    v.mmio_write(a, size, val);
                } else {
                    v.mmio_read(a, size);
                }
            }
            _ => {
                let o = (r >> 8) % (LFB_SIZE as u64 + 16);
                v.lfb_write(o, 4, val);
                v.lfb_read(o, 8);
            }
        }
        if i % 20_000 == 0 {
            let (w, h, px) = v.render_rgba();
            assert_eq!(px.len(), w as usize * h as usize * 4);
            let _ = v.text_screen().map(|t| t.to_string());
        }
    }
}
