//! The PC boot path end to end (issue 5), on the translator: Debian's
//! unmodified SeaBIOS boots the syslinux disk image and the isolinux ISO
//! built by guests/build-disk.sh, syslinux loads the Debian kernel and
//! initramfs, and Linux drives the disk with its own ATA driver (ata_piix,
//! loaded from the initramfs). The tests pick a boot menu entry by replacing
//! syslinux.cfg in a copy of the image with mtools, as a user would, and
//! read what the guest wrote back out of the image with mtools. The
//! workload test leaves out --bios: the firmware is then the default one,
//! Debian's SeaBIOS.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{bios, media};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-disk-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of the disk image whose syslinux boots menu entry `label` at
/// once.
fn disk_booting(label: &str, dir: &Path) -> PathBuf {
    let (disk, _) = media();
    let copy = dir.join("disk.img");
    std::fs::copy(&disk, &copy).unwrap();
    let cfg = Command::new("mtype")
        .args(["-i"])
        .arg(&copy)
        .arg("::/syslinux.cfg")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .expect("mtools installed");
    assert!(cfg.status.success(), "mtype syslinux.cfg");
    let cfg: String = text(&cfg.stdout)
        .lines()
        .map(|l| {
            if l.starts_with("DEFAULT ") {
                format!("DEFAULT {label}")
            } else if l.starts_with("TIMEOUT ") {
                "TIMEOUT 1".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let new = dir.join("syslinux.cfg");
    std::fs::write(&new, cfg + "\n").unwrap();
    let st = Command::new("mcopy")
        .args(["-o", "-i"])
        .arg(&copy)
        .arg(&new)
        .arg("::/syslinux.cfg")
        .env("MTOOLS_SKIP_CHECK", "1")
        .status()
        .unwrap();
    assert!(st.success(), "mcopy syslinux.cfg");
    copy
}

fn umbra_bios(media_args: &[&str], serial: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_umbra"));
    c.arg("run")
        .arg("--bios")
        .arg(bios())
        .args(media_args)
        .args(["--memory", "256M", "--engine", "jit", "--stats"])
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null());
    c
}

#[test]
fn plain_run_boots_the_default_guests_disk_through_seabios() {
    let (disk, _) = media();
    let before = std::fs::read(&disk).unwrap();
    let dir = tmpdir("plain");
    let (serial, debug) = (dir.join("serial.txt"), dir.join("debugcon.txt"));
    // No --kernel, --bios, --disk: SeaBIOS boots the default guest's disk.
    // Stop in syslinux's menu: the point is what boots, not Linux.
    let o = Command::new(env!("CARGO_BIN_EXE_umbra"))
        .args(["run", "--deterministic", "--max-instructions", "150000000"])
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .arg("--debugcon")
        .arg(format!("file:{}", debug.display()))
        .stdin(Stdio::null())
        .output()
        .expect("umbra runs");
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    let dbg = std::fs::read_to_string(&debug).unwrap_or_default();
    eprintln!("{dbg}\n{log}\n{}", text(&o.stderr));
    assert!(
        dbg.contains("ata0-0: UMBRA HARDDISK"),
        "SeaBIOS found the disk"
    );
    assert!(dbg.contains("Booting from Hard Disk"), "and booted it");
    assert!(log.contains("SYSLINUX"), "syslinux ran");
    assert!(log.contains("Umbra test guest"), "its menu is the guest's");
    assert_eq!(o.status.code(), Some(0), "stopped by --max-instructions");
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "the cached image is unchanged (snapshot)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn disk_image_runs_the_workload_with_the_native_results() {
    let g = umbra::guests::default_guest().expect("the default guest (guests/build.sh)");
    let want = umbra::guests::read_expected(g.expected.as_ref().expect("guest.env EXPECTED"))
        .expect("expected.txt");
    assert_eq!(want.len(), 5, "five workload results");
    let dir = tmpdir("workload");
    let disk = disk_booting("workload", &dir);
    let serial = dir.join("serial.txt");
    let o = Command::new(env!("CARGO_BIN_EXE_umbra"))
        .args(["run", "--disk"])
        .arg(&disk)
        .args(["--memory", "256M", "--engine", "jit", "--stats"])
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .output()
        .expect("umbra runs");
    let log = std::fs::read_to_string(&serial)
        .unwrap_or_default()
        .replace('\r', "");
    eprintln!("{log}\n{}", text(&o.stderr));
    assert!(log.contains("SYSLINUX"), "syslinux ran");
    assert!(log.contains("BOOT-OK"), "Linux reached user space");
    for (name, result) in &want {
        let prefix = format!("WORKLOAD {name} ");
        let line = log
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line"));
        let got = &line[prefix.len()..];
        assert!(
            got.starts_with(result.as_str()),
            "{name}: got `{got}`, native `{result}`"
        );
    }
    assert!(log.contains("WORK-DONE"), "the workload finished");
    assert_modules_and_no_gpe(&log, "sda");
    assert_eq!(o.status.code(), Some(0), "power off ends with status 0");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What /init printed after loading the modules: the block devices Linux
/// found and how many ACPI general-purpose events it dispatched. The
/// machine raises none: each one would have run a firmware handler (with
/// the GPE registers floating, SeaBIOS's ejected the PCI slots, and the
/// disk vanished in about one boot in three).
fn assert_modules_and_no_gpe(log: &str, device: &str) {
    let line = |p: &str| log.lines().find(|l| l.starts_with(p)).unwrap_or("").trim();
    let (modules, gpes) = (line("MODULES-OK"), line("ACPI-GPES"));
    assert!(
        modules.split_whitespace().any(|d| d == device),
        "Linux found {device}: `{modules}`, `{gpes}`"
    );
    assert_eq!(
        gpes.split_whitespace().nth(1),
        Some("0"),
        "no ACPI GPE was dispatched: `{gpes}`"
    );
}

/// `seq 1 N` as the guest's busybox writes it.
fn seq(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

#[test]
fn guest_writes_a_file_to_the_disk_that_mtools_reads_back() {
    let dir = tmpdir("write");
    let disk = disk_booting("disktest", &dir);
    let serial = dir.join("serial.txt");
    let o = umbra_bios(&["--disk", disk.to_str().unwrap()], &serial)
        .output()
        .expect("umbra runs");
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    eprintln!("{}\n{}", log.replace('\r', ""), text(&o.stderr));
    assert!(log.contains("SYSLINUX"), "syslinux ran");
    assert!(log.contains("BOOT-OK"), "Linux reached user space");
    assert_modules_and_no_gpe(&log.replace('\r', ""), "sda");
    assert!(log.contains("DISKTEST-DONE"), "the guest wrote its file");
    assert_eq!(o.status.code(), Some(0), "power off ends with status 0");
    let got = Command::new("mtype")
        .args(["-i"])
        .arg(&disk)
        .arg("::/UMBRA.TXT")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(got.status.success(), "mtype: {}", text(&got.stderr));
    assert!(
        text(&got.stdout) == seq(20000),
        "UMBRA.TXT holds seq 1 20000"
    );
    let fsck = Command::new("fsck.fat")
        .arg("-n")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "fsck.fat -n is clean: {}",
        text(&fsck.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn linux_cannot_change_a_write_protected_image() {
    let dir = tmpdir("ro");
    let disk = disk_booting("disktest", &dir);
    let before = std::fs::read(&disk).unwrap();
    let mut perm = std::fs::metadata(&disk).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&disk, perm).unwrap();
    let serial = dir.join("serial.txt");
    let o = umbra_bios(&["--disk", disk.to_str().unwrap()], &serial)
        .output()
        .expect("umbra runs");
    let log = std::fs::read_to_string(&serial)
        .unwrap_or_default()
        .replace('\r', "");
    let err = text(&o.stderr);
    eprintln!("{log}\n{err}");
    assert!(err.contains("write-protected"), "the user is told: {err}");
    assert!(log.contains("BOOT-OK"), "Linux reached user space");
    assert_modules_and_no_gpe(&log, "sda");
    // Linux's ATA driver sees the drive abort each write (ERR, ABRT) and
    // reports an I/O error; the guest carries on and powers off.
    assert!(
        log.contains("error: { ABRT }"),
        "the drive aborted the writes"
    );
    assert!(log.contains("I/O error, dev sda"), "Linux saw I/O errors");
    assert_eq!(o.status.code(), Some(0), "power off ends with status 0");
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "not one byte of the image changed"
    );
    // Unlinking needs only the directory's write permission.
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn image_survives_sigkill_while_the_guest_writes() {
    let dir = tmpdir("kill");
    let disk = disk_booting("diskloop", &dir);
    let serial = dir.join("serial.txt");
    let mut child = umbra_bios(&["--disk", disk.to_str().unwrap()], &serial)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("umbra runs");
    // Wait until the guest has written a few files, then kill -9.
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(&serial).unwrap_or_default();
        if log.contains("DISKLOOP 3") {
            break;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("umbra ended ({st}) before the guest wrote: {log}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(1500),
            "the guest never started writing: {log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The file system is consistent or only the file being written is
    // affected: fsck.fat -n reports no errors outside LOOPn.TXT.
    let fsck = Command::new("fsck.fat")
        .arg("-n")
        .arg(&disk)
        .output()
        .unwrap();
    let report = text(&fsck.stdout);
    eprintln!("{report}");
    if !fsck.status.success() {
        // The dirty bit of a file system that was mounted when the power
        // went is expected (a real disk shows the same); any other finding
        // must be about a file the guest was writing.
        let image = disk.display().to_string();
        for l in report.lines().map(str::trim) {
            let expected = l.is_empty()
                || l.starts_with("fsck.fat ")
                || l.starts_with("Dirty bit is set")
                || l.starts_with("Automatically removing dirty bit")
                || l.starts_with("Leaving filesystem unchanged")
                || (l.starts_with(&image) && l.contains(" files, "));
            assert!(
                expected || l.contains("LOOP"),
                "damage outside the file being written: {l}"
            );
        }
    }
    // The files are all there, and the ones the guest finished before the
    // kill read back whole: at most one (the one being rewritten) differs.
    let ls = Command::new("mdir")
        .args(["-b", "-i"])
        .arg(&disk)
        .arg("::/")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(ls.status.success(), "mdir: {}", text(&ls.stderr));
    let names = text(&ls.stdout).to_lowercase();
    assert!(
        names.contains("vmlinuz"),
        "the kernel is still there: {names}"
    );
    let want = seq(5000);
    let whole = (0..3)
        .filter(|i| {
            let o = Command::new("mtype")
                .args(["-i"])
                .arg(&disk)
                .arg(format!("::/LOOP{i}.TXT"))
                .env("MTOOLS_SKIP_CHECK", "1")
                .output()
                .unwrap();
            o.status.success() && text(&o.stdout) == want
        })
        .count();
    assert!(whole >= 2, "LOOP0..2.TXT: only {whole} read back whole");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn isolinux_iso_boots_from_the_cdrom() {
    let (_, iso) = media();
    let dir = tmpdir("iso");
    let serial = dir.join("serial.txt");
    // An ISO cannot be edited in place like the FAT image: build-disk.sh
    // writes a second one whose menu defaults to the power-off entry.
    let iso_poweroff = iso.with_file_name("boot-poweroff.iso");
    let o = umbra_bios(&["--cdrom", iso_poweroff.to_str().unwrap()], &serial)
        .output()
        .expect("umbra runs");
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    eprintln!("{}\n{}", log.replace('\r', ""), text(&o.stderr));
    assert!(log.contains("ISOLINUX"), "isolinux ran");
    assert!(log.contains("BOOT-OK"), "Linux reached user space");
    assert_modules_and_no_gpe(&log.replace('\r', ""), "sr0");
    assert_eq!(o.status.code(), Some(0), "power off ends with status 0");
    let _ = std::fs::remove_dir_all(&dir);
}
