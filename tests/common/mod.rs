//! What the SeaBIOS boot tests share (tests/disk.rs, tests/display.rs): the
//! media built by guests/build-disk.sh and Debian's SeaBIOS.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The media from guests/build-disk.sh (it is cheap when they are
/// current): (disk image, ISO).
pub fn media() -> (PathBuf, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/build-disk.sh");
    let o = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("bash runs");
    assert!(
        o.status.success(),
        "guests/build-disk.sh failed (CI installs dosfstools, mtools, syslinux, isolinux, xorriso)"
    );
    let out = text(&o.stdout);
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| PathBuf::from(v.trim()))
            .unwrap_or_else(|| panic!("build-disk.sh printed no `{k}` line: {out}"))
    };
    (field("disk:"), field("iso:"))
}

pub fn bios() -> PathBuf {
    umbra_firmware::seabios::find_debian_seabios()
        .expect("Debian's SeaBIOS is missing: run guests/fetch-seabios.sh (CI does)")
        .join("bios.bin")
}
