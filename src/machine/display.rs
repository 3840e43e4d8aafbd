//! The guest's screen and keyboard on the host: `--display terminal` draws
//! the VGA text screen on the terminal with ANSI escapes (CP437 mapped to
//! Unicode, the 16 VGA colours, the cursor), redrawing changed rows at most
//! `REDRAW_PERIOD` apart in host time, and turns the bytes typed on the
//! terminal into PS/2 make/break codes (scan code set 2, which the i8042
//! translates to set 1 when the guest asks for it). `--screenshot` writes
//! the rendered screen as a PNG at exit and on Ctrl-A S.
//!
//! Not here: rendering video memory (devices/src/vga/render.rs), the
//! console's raw mode and escape keys (console.rs), a window for graphics
//! modes (graphics modes get one status line on the terminal).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use umbra_devices::i8042::I8042;
use umbra_devices::vga::{TextScreen, Vga};

use super::MachineError;

/// Shortest host time between two terminal redraws (20 per second).
pub const REDRAW_PERIOD: Duration = Duration::from_millis(50);

/// Where the guest's screen is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DisplayKind {
    /// Not shown (a screenshot can still be taken).
    #[default]
    None,
    /// VGA text drawn on the terminal; typed keys go to the PS/2 keyboard.
    Terminal,
}

/// The display options of `umbra run`.
#[derive(Clone, Debug, Default)]
pub struct DisplayConfig {
    pub kind: DisplayKind,
    /// `--screenshot`: PNG written at exit and on Ctrl-A S.
    pub screenshot: Option<PathBuf>,
}

/// What the terminal shows now.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Shown {
    Text(TextScreen),
    /// The status line of a graphics mode.
    Graphics(String),
}

/// The display of a machine booted through firmware (it needs the VGA).
pub struct Display {
    cfg: DisplayConfig,
    vga: Rc<RefCell<Vga>>,
    i8042: Rc<RefCell<I8042>>,
    out: Box<dyn Write>,
    /// Whether the terminal's alternate screen is in use.
    entered: bool,
    last_draw: Option<Instant>,
    shown: Option<Shown>,
    /// Set 2 bytes not yet given to the keyboard.
    keys: VecDeque<u8>,
}

impl Display {
    /// A display of `vga`, typing into `i8042`, drawing on stdout.
    pub fn new(cfg: DisplayConfig, vga: Rc<RefCell<Vga>>, i8042: Rc<RefCell<I8042>>) -> Self {
        Display {
            cfg,
            vga,
            i8042,
            out: Box::new(std::io::stdout()),
            entered: false,
            last_draw: None,
            shown: None,
            keys: VecDeque::new(),
        }
    }

    /// Whether typed bytes go to the PS/2 keyboard (not COM1).
    pub fn takes_keys(&self) -> bool {
        self.cfg.kind == DisplayKind::Terminal
    }

    /// Called often by the machine loop: queue waiting keys and, with a
    /// terminal display and `REDRAW_PERIOD` passed, redraw what changed.
    pub fn tick(&mut self) {
        self.feed_keys();
        if self.cfg.kind != DisplayKind::Terminal {
            return;
        }
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|t| now.duration_since(t) < REDRAW_PERIOD)
        {
            return;
        }
        self.last_draw = Some(now);
        self.draw();
    }

    fn draw(&mut self) {
        let shown = {
            let vga = self.vga.borrow();
            match vga.text_screen() {
                Some(t) => Shown::Text(t),
                None => Shown::Graphics(graphics_line(&vga)),
            }
        };
        if self.shown.as_ref() == Some(&shown) {
            return;
        }
        let mut s = String::new();
        if !self.entered {
            // Alternate screen, cleared.
            s.push_str("\x1b[?1049h\x1b[2J");
            self.entered = true;
        }
        match (&shown, &self.shown) {
            (Shown::Text(t), Some(Shown::Text(prev))) => s += &render_ansi(t, Some(prev)),
            (Shown::Text(t), _) => {
                s.push_str("\x1b[0m\x1b[2J");
                s += &render_ansi(t, None);
            }
            (Shown::Graphics(line), _) => {
                let _ = write!(s, "\x1b[0m\x1b[2J\x1b[H\x1b[?25l{line}");
            }
        }
        let _ = self.out.write_all(s.as_bytes());
        let _ = self.out.flush();
        self.shown = Some(shown);
    }

    /// Bytes typed on the terminal, as PS/2 keys.
    pub fn type_bytes(&mut self, bytes: &[u8]) {
        self.keys.extend(terminal_keys(bytes).into_iter().flatten());
        self.feed_keys();
    }

    /// Give the keyboard the next waiting byte once the controller's
    /// output buffer and the keyboard's queue are empty. One byte at a
    /// time, as a real keyboard clocks them out: the i8042 refills its
    /// output buffer in the same port read that empties it, so bytes
    /// queued together reach the guest without a new IRQ1 edge and the
    /// BIOS's IRQ handler sees only the first. A paste waits here.
    fn feed_keys(&mut self) {
        let mut kbd = self.i8042.borrow_mut();
        let st = kbd.state();
        if st.obuf.is_some() || !st.kbd.queue.is_empty() {
            return;
        }
        if let Some(b) = self.keys.pop_front() {
            kbd.key(&[b]);
        }
    }

    /// Write the screen to the `--screenshot` file, if one was given.
    pub fn screenshot(&self) -> Option<Result<PathBuf, String>> {
        let path = self.cfg.screenshot.as_ref()?;
        let rgba = self.vga.borrow().render_rgba();
        Some(
            write_png(path, &rgba)
                .map(|_| path.clone())
                .map_err(|e| format!("cannot write the screenshot {}: {e}", path.display())),
        )
    }

    /// Leave the alternate screen (before the final messages).
    pub fn restore(&mut self) {
        if self.entered {
            let _ = self.out.write_all(b"\x1b[0m\x1b[?25h\x1b[?1049l");
            let _ = self.out.flush();
            self.entered = false;
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.restore();
    }
}

/// A display needs the VGA of the firmware path.
pub fn check_config(cfg: &DisplayConfig, has_vga: bool) -> Result<(), MachineError> {
    let wants = cfg.kind != DisplayKind::None || cfg.screenshot.is_some();
    if wants && !has_vga {
        return Err(MachineError::Image(
            "--display terminal and --screenshot need the VGA of the firmware path: \
             boot with --bios (e.g. /usr/share/seabios/bios.bin), not --kernel"
                .into(),
        ));
    }
    Ok(())
}

/// One line describing a graphics mode, e.g. `graphics mode 640x480 (VBE
/// 32 bpp)`.
fn graphics_line(vga: &Vga) -> String {
    use umbra_devices::vga::vbe::{VBE_INDEX_BPP, VBE_INDEX_XRES, VBE_INDEX_YRES};
    if vga.vbe.enabled() {
        format!(
            "umbra: the guest shows graphics mode {}x{} (VBE {} bpp); use --screenshot \
             and Ctrl-A S to see it",
            vga.vbe.reg(VBE_INDEX_XRES),
            vga.vbe.reg(VBE_INDEX_YRES),
            vga.vbe.reg(VBE_INDEX_BPP)
        )
    } else {
        let (w, h, _) = vga.render_rgba();
        format!(
            "umbra: the guest shows a VGA graphics mode {w}x{h}; use --screenshot \
             and Ctrl-A S to see it"
        )
    }
}

/// VGA colour number (IRGB order: blue is 1, red 4) to the ANSI colour
/// number (red is 1, blue 4).
const VGA_TO_ANSI: [u8; 8] = [0, 4, 2, 6, 1, 5, 3, 7];

/// The SGR sequence for a VGA attribute byte: foreground bits 3:0 (bit 3
/// bright, ANSI 90-97), background bits 6:4 (bit 7 is blink in the BIOS's
/// default mode and is not shown).
pub fn sgr(attr: u8) -> String {
    let fg = attr & 0x0f;
    let fg_code = if fg & 8 != 0 { 90 } else { 30 } + VGA_TO_ANSI[(fg & 7) as usize];
    let bg_code = 40 + VGA_TO_ANSI[((attr >> 4) & 7) as usize];
    format!("\x1b[0;{fg_code};{bg_code}m")
}

/// ANSI text drawing `screen`: every row (or, given the screen shown
/// before with the same size, the rows that changed) positioned with CUP,
/// colours as SGR, CP437 as Unicode; then the cursor placed and shown, or
/// hidden.
pub fn render_ansi(screen: &TextScreen, prev: Option<&TextScreen>) -> String {
    let prev = prev.filter(|p| p.cols == screen.cols && p.rows == screen.rows);
    let mut s = String::new();
    for row in 0..screen.rows {
        let cells = |t: &TextScreen| {
            let a = (row * t.cols).min(t.cells.len());
            let b = ((row + 1) * t.cols).min(t.cells.len());
            t.cells[a..b].to_vec()
        };
        let now = cells(screen);
        if prev.is_some_and(|p| cells(p) == now) {
            continue;
        }
        let _ = write!(s, "\x1b[{};1H", row + 1);
        let mut attr = None;
        for (ch, at) in now {
            if attr != Some(at) {
                s += &sgr(at);
                attr = Some(at);
            }
            s.push(umbra_devices::vga::render::cp437_to_char(ch));
        }
    }
    s.push_str("\x1b[0m");
    match screen.cursor {
        Some((r, c)) => {
            let _ = write!(s, "\x1b[{};{}H\x1b[?25h", r + 1, c + 1);
        }
        None => s.push_str("\x1b[?25l"),
    }
    s
}

/// Scan code set 2 make codes of the keys this module types.
mod set2 {
    pub const LSHIFT: u8 = 0x12;
    pub const LCTRL: u8 = 0x14;
    pub const ENTER: u8 = 0x5a;
    pub const BACKSPACE: u8 = 0x66;
    pub const TAB: u8 = 0x0d;
    pub const ESC: u8 = 0x76;
    pub const SPACE: u8 = 0x29;
    /// Break codes are the make code after this prefix.
    pub const BREAK: u8 = 0xf0;
    /// Prefix of the extended keys (arrows, Home, End, ...).
    pub const EXT: u8 = 0xe0;
    pub const UP: u8 = 0x75;
    pub const DOWN: u8 = 0x72;
    pub const LEFT: u8 = 0x6b;
    pub const RIGHT: u8 = 0x74;
    pub const HOME: u8 = 0x6c;
    pub const END: u8 = 0x69;
    pub const INSERT: u8 = 0x70;
    pub const DELETE: u8 = 0x71;
    pub const PGUP: u8 = 0x7d;
    pub const PGDN: u8 = 0x7a;
    /// Letters a-z.
    pub const LETTERS: [u8; 26] = [
        0x1c, 0x32, 0x21, 0x23, 0x24, 0x2b, 0x34, 0x33, 0x43, 0x3b, 0x42, 0x4b, 0x3a, 0x31, 0x44,
        0x4d, 0x15, 0x2d, 0x1b, 0x2c, 0x3c, 0x2a, 0x1d, 0x22, 0x35, 0x1a,
    ];
    /// Digits 0-9.
    pub const DIGITS: [u8; 10] = [0x45, 0x16, 0x1e, 0x26, 0x25, 0x2e, 0x36, 0x3d, 0x3e, 0x46];
}

/// The US layout key and shift state of a printable ASCII character.
fn ascii_key(c: u8) -> Option<(u8, bool)> {
    use set2::*;
    const SHIFTED_DIGITS: &[u8; 10] = b")!@#$%^&*(";
    const PUNCT: [(u8, u8, u8); 11] = [
        // (unshifted, shifted, key)
        (b'`', b'~', 0x0e),
        (b'-', b'_', 0x4e),
        (b'=', b'+', 0x55),
        (b'[', b'{', 0x54),
        (b']', b'}', 0x5b),
        (b'\\', b'|', 0x5d),
        (b';', b':', 0x4c),
        (b'\'', b'"', 0x52),
        (b',', b'<', 0x41),
        (b'.', b'>', 0x49),
        (b'/', b'?', 0x4a),
    ];
    match c {
        b'a'..=b'z' => Some((LETTERS[(c - b'a') as usize], false)),
        b'A'..=b'Z' => Some((LETTERS[(c - b'A') as usize], true)),
        b'0'..=b'9' => Some((DIGITS[(c - b'0') as usize], false)),
        b' ' => Some((SPACE, false)),
        _ => {
            if let Some(i) = SHIFTED_DIGITS.iter().position(|&d| d == c) {
                return Some((DIGITS[i], true));
            }
            PUNCT.iter().find_map(|&(u, s, k)| {
                (c == u)
                    .then_some((k, false))
                    .or((c == s).then_some((k, true)))
            })
        }
    }
}

/// Make and break of one key, with optional modifier around it.
fn press(key: u8, extended: bool, modifier: Option<u8>) -> Vec<u8> {
    use set2::*;
    let mut v = Vec::with_capacity(8);
    if let Some(m) = modifier {
        v.push(m);
    }
    if extended {
        v.extend([EXT, key, EXT, BREAK, key]);
    } else {
        v.extend([key, BREAK, key]);
    }
    if let Some(m) = modifier {
        v.extend([BREAK, m]);
    }
    v
}

/// Terminal bytes (raw mode, UTF-8 and VT100 escape sequences) to PS/2
/// keys, one set 2 make+break group per key. Bytes with no US key (non-
/// ASCII, unknown sequences) are dropped. An ESC not followed by `[` or
/// `O` in the same read is the Escape key.
pub fn terminal_keys(bytes: &[u8]) -> Vec<Vec<u8>> {
    use set2::*;
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        match b {
            0x1b => {
                let intro = bytes.get(i).copied();
                if !matches!(intro, Some(b'[') | Some(b'O')) {
                    out.push(press(ESC, false, None));
                    continue;
                }
                // CSI or SS3: parameters, then one final byte 0x40-0x7E.
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && !(0x40..=0x7e).contains(&bytes[j]) {
                    j += 1;
                }
                let Some(&fin) = bytes.get(j) else {
                    i = bytes.len();
                    continue;
                };
                let param = &bytes[start..j];
                i = j + 1;
                let key = match (fin, param) {
                    (b'A', _) => Some(UP),
                    (b'B', _) => Some(DOWN),
                    (b'C', _) => Some(RIGHT),
                    (b'D', _) => Some(LEFT),
                    (b'H', _) => Some(HOME),
                    (b'F', _) => Some(END),
                    (b'~', b"1") | (b'~', b"7") => Some(HOME),
                    (b'~', b"4") | (b'~', b"8") => Some(END),
                    (b'~', b"2") => Some(INSERT),
                    (b'~', b"3") => Some(DELETE),
                    (b'~', b"5") => Some(PGUP),
                    (b'~', b"6") => Some(PGDN),
                    _ => None,
                };
                if let Some(k) = key {
                    out.push(press(k, true, None));
                }
            }
            b'\r' | b'\n' => out.push(press(ENTER, false, None)),
            0x7f | 0x08 => out.push(press(BACKSPACE, false, None)),
            b'\t' => out.push(press(TAB, false, None)),
            // Ctrl-letter (Ctrl-A arrives only as Ctrl-A Ctrl-A).
            0x01..=0x1a => out.push(press(LETTERS[(b - 1) as usize], false, Some(LCTRL))),
            _ => {
                if let Some((k, shift)) = ascii_key(b) {
                    out.push(press(k, false, shift.then_some(LSHIFT)));
                }
            }
        }
    }
    out
}

/// Write an RGBA image as an 8-bit RGBA PNG.
pub fn write_png(path: &Path, rgba: &(u32, u32, Vec<u8>)) -> std::io::Result<()> {
    let (w, h, px) = rgba;
    if *w == 0 || *h == 0 {
        return Err(std::io::Error::other("the screen is empty (no mode set)"));
    }
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, *w, *h);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(std::io::Error::other)?;
    writer.write_image_data(px).map_err(std::io::Error::other)?;
    writer.finish().map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen() -> TextScreen {
        // 4x2: "Hi" white on blue, then 0xC9 (double top-left corner)
        // light grey on black; row 1 all blanks.
        let mut cells = vec![(b' ', 0x07); 8];
        cells[0] = (b'H', 0x1f);
        cells[1] = (b'i', 0x1f);
        cells[2] = (0xc9, 0x07);
        TextScreen {
            cols: 4,
            rows: 2,
            cells,
            cursor: Some((1, 2)),
            cursor_start: 14,
            cursor_end: 15,
        }
    }

    #[test]
    fn text_screen_to_ansi() {
        let s = render_ansi(&screen(), None);
        // Bright white (97) on blue (44), then light grey (37) on black.
        assert!(
            s.starts_with("\x1b[1;1H\x1b[0;97;44mHi\x1b[0;37;40m╔ "),
            "{s:?}"
        );
        assert!(s.contains("\x1b[2;1H\x1b[0;37;40m    "), "{s:?}");
        // Cursor at row 2, column 3 (1-based), shown.
        assert!(s.ends_with("\x1b[0m\x1b[2;3H\x1b[?25h"), "{s:?}");
    }

    #[test]
    fn only_changed_rows_are_redrawn() {
        let a = screen();
        let mut b = screen();
        b.cells[5] = (b'x', 0x04); // red on black
        let s = render_ansi(&b, Some(&a));
        assert!(!s.contains("\x1b[1;1H"), "{s:?}");
        assert!(s.contains("\x1b[2;1H\x1b[0;37;40m \x1b[0;31;40mx"), "{s:?}");
    }

    #[test]
    fn keys_to_set2() {
        // 'a' = 1C, 'A' = shift + 1C, Enter = 5A, up arrow = E0 75,
        // Esc = 76 (PC AT keyboard, scan code set 2).
        let k = terminal_keys(b"aA\r\x1b[A\x1b");
        assert_eq!(
            k,
            vec![
                vec![0x1c, 0xf0, 0x1c],
                vec![0x12, 0x1c, 0xf0, 0x1c, 0xf0, 0x12],
                vec![0x5a, 0xf0, 0x5a],
                vec![0xe0, 0x75, 0xe0, 0xf0, 0x75],
                vec![0x76, 0xf0, 0x76],
            ]
        );
        // '!' is shift+1 (16), backspace (DEL) is 66, Tab 0D.
        assert_eq!(
            terminal_keys(b"!\x7f\t"),
            vec![
                vec![0x12, 0x16, 0xf0, 0x16, 0xf0, 0x12],
                vec![0x66, 0xf0, 0x66],
                vec![0x0d, 0xf0, 0x0d],
            ]
        );
    }

    #[test]
    fn png_round_trip() {
        let dir = std::env::temp_dir().join(format!("umbra-png-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.png");
        let px = vec![10, 20, 30, 255, 40, 50, 60, 255];
        write_png(&p, &(2, 1, px.clone())).unwrap();
        let dec = png::Decoder::new(std::fs::File::open(&p).unwrap());
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (2, 1));
        assert_eq!(&buf[..8], &px[..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
