//! `--screenshot` end to end (issue 5): Debian's SeaBIOS boots the
//! syslinux disk image from guests/build-disk.sh until the syslinux menu
//! is on the VGA text screen, and umbra writes that screen as a PNG at
//! exit.

use std::process::{Command, Stdio};

/// Instructions (under --deterministic) by which syslinux has drawn its
/// menu: the SeaBIOS banner is up at ~8 M, syslinux's banner by 20 M, the
/// menu (blue box) by 40 M, measured.
mod common;
use common::bios;

const MENU_BUDGET: &str = "40000000";

#[test]
fn screenshot_of_the_syslinux_menu() {
    let dir = std::env::temp_dir().join(format!("umbra-display-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png_path = dir.join("screen.png");
    let o = Command::new(env!("CARGO_BIN_EXE_umbra"))
        .arg("run")
        .arg("--bios")
        .arg(bios())
        .arg("--disk")
        .arg(common::media().0)
        .args(["--engine", "jit", "--deterministic", "--serial", "none"])
        .args(["--max-instructions", MENU_BUDGET])
        .arg("--screenshot")
        .arg(&png_path)
        .stdin(Stdio::null())
        .output()
        .expect("umbra runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "umbra failed: {err}");
    assert!(err.contains("screenshot written"), "{err}");

    let dec = png::Decoder::new(std::fs::File::open(&png_path).expect("the PNG exists"));
    let mut r = dec.read_info().expect("a PNG header");
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).expect("PNG data");
    // 80x25 text with 9- or 8-dot glyphs, 16 scan lines each.
    assert!(
        matches!((info.width, info.height), (720, 400) | (640, 400)),
        "{}x{}",
        info.width,
        info.height
    );
    assert_eq!(info.color_type, png::ColorType::Rgba);
    let px: Vec<&[u8]> = buf.chunks_exact(4).collect();
    assert!(px.iter().any(|p| *p != px[0]), "the screen is one colour");
    // The menu box is VGA blue (DAC 0,0,2Ah -> 0,0,AAh): many pixels with
    // blue high and red/green low.
    let blue = px
        .iter()
        .filter(|p| p[0] < 0x40 && p[1] < 0x40 && p[2] > 0x80)
        .count();
    assert!(blue > 10_000, "no syslinux menu box: {blue} blue pixels");
    std::fs::remove_dir_all(&dir).unwrap();
}
