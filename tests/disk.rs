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

/// The names of the files in the root directory of a FAT image.
fn root_files(disk: &Path) -> Vec<String> {
    let o = Command::new("mdir")
        .args(["-b", "-i"])
        .arg(disk)
        .arg("::/")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "mdir: {}", text(&o.stderr));
    text(&o.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("::/"))
        .filter(|n| !n.is_empty() && !n.ends_with('/'))
        .map(str::to_string)
        .collect()
}

/// The bytes of file `name` in the root directory of a FAT image, if
/// mtools can read it.
fn mtype(disk: &Path, name: &str) -> Option<Vec<u8>> {
    let o = Command::new("mtype")
        .args(["-i"])
        .arg(disk)
        .arg(format!("::/{name}"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    o.status.success().then_some(o.stdout)
}

/// The findings of `fsck.fat -n` on `image` that a power cut while Linux
/// rewrites one of the guest's LOOPn.TXT files does not explain. fsck.fat
/// prints a finding as a line, with its details indented below it; a
/// finding about a file starts with the file's path. Explained are:
/// - anything about a /LOOPn.TXT (its chain or size cut short);
/// - "FATs differ but appear to be intact": Linux writes the two FAT
///   copies one after the other, so a cut between the two leaves them
///   different, each of them consistent;
/// - "Reclaimed N unused clusters": clusters allocated to the file being
///   written that no directory entry reached yet;
/// - the dirty bit of a file system that was mounted, and the banner and
///   summary lines.
fn unexplained_fsck_findings(report: &str, image: &str) -> Vec<String> {
    let mut unexplained = Vec::new();
    let mut explained_heading = true;
    for line in report.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            // A detail belongs to the finding above it.
            if !explained_heading {
                unexplained.push(line.trim().to_string());
            }
            continue;
        }
        let loop_file = line
            .strip_prefix("/LOOP")
            .and_then(|r| r.strip_suffix(".TXT"))
            .is_some_and(|n| n.parse::<u32>().is_ok());
        let reclaimed = line
            .strip_prefix("Reclaimed ")
            .and_then(|r| r.split_once(" unused cluster"))
            .is_some_and(|(n, _)| n.parse::<u32>().is_ok());
        explained_heading = loop_file
            || reclaimed
            || line.starts_with("fsck.fat ")
            || line == "FATs differ but appear to be intact."
            || line.starts_with("Dirty bit is set.")
            || line == "Automatically removing dirty bit."
            || line == "Leaving filesystem unchanged."
            || (line.starts_with(image) && line.contains(" files, "));
        if !explained_heading {
            unexplained.push(line.to_string());
        }
    }
    unexplained
}

#[test]
fn fsck_findings_outside_the_file_being_written_are_caught() {
    // What fsck.fat 4.2 printed after a kill in a CI run: the two FATs
    // caught between their writes, LOOP1.TXT's new chain not yet linked.
    let image = "/tmp/umbra-disk-21500-kill/disk.img";
    let cut = "fsck.fat 4.2 (2021-01-31)
FATs differ but appear to be intact.
  Using first FAT.
/LOOP1.TXT
  Contains a free cluster (3730). Assuming EOF.
/LOOP1.TXT
  File size is 23893 bytes, cluster chain length is 0 bytes.
  Truncating file to 0 bytes.
Reclaimed 12 unused clusters (24576 bytes).
Dirty bit is set. Fs was not properly unmounted and some data may be corrupt.
 Automatically removing dirty bit.

Leaving filesystem unchanged.
/tmp/umbra-disk-21500-kill/disk.img: 13 files, 3752/24519 clusters
";
    assert_eq!(unexplained_fsck_findings(cut, image), Vec::<String>::new());
    // The same findings about the kernel, or any other finding about the
    // FATs than the benign difference, are not explained by the write.
    let kernel = cut.replace("/LOOP1.TXT", "/VMLINUZ");
    assert_eq!(
        unexplained_fsck_findings(&kernel, image),
        [
            "/VMLINUZ",
            "Contains a free cluster (3730). Assuming EOF.",
            "/VMLINUZ",
            "File size is 23893 bytes, cluster chain length is 0 bytes.",
            "Truncating file to 0 bytes."
        ]
    );
    let fats = cut.replace(
        "FATs differ but appear to be intact.\n  Using first FAT.",
        "FATs differ - using first FAT.\n  Bad FAT entry.",
    );
    assert_eq!(
        unexplained_fsck_findings(&fats, image),
        ["FATs differ - using first FAT.", "Bad FAT entry."]
    );
    let other = cut.replace("/LOOP1.TXT", "/LOOP1.TXT.OLD");
    assert_eq!(unexplained_fsck_findings(&other, image).len(), 5);
}

#[test]
fn image_survives_sigkill_while_the_guest_writes() {
    let dir = tmpdir("kill");
    let disk = disk_booting("diskloop", &dir);
    let untouched: Vec<(String, Vec<u8>)> = root_files(&disk)
        .into_iter()
        .filter(|n| !n.to_uppercase().starts_with("LOOP"))
        .map(|n| {
            let bytes = mtype(&disk, &n).expect("the file reads back");
            (n, bytes)
        })
        .collect();
    assert!(
        untouched
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("vmlinuz")),
        "the image holds the kernel: {untouched:?}"
    );
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
    // affected: fsck.fat -n finds nothing that a power cut in the middle of
    // rewriting a LOOPn.TXT does not explain.
    let fsck = Command::new("fsck.fat")
        .arg("-n")
        .arg(&disk)
        .output()
        .unwrap();
    let report = text(&fsck.stdout);
    eprintln!("{report}");
    let unexplained = unexplained_fsck_findings(&report, &disk.display().to_string());
    assert!(
        unexplained.is_empty(),
        "damage outside the file being written: {unexplained:?}"
    );
    // Every file the guest did not write reads back as it was.
    for (name, bytes) in &untouched {
        assert!(
            mtype(&disk, name).as_deref() == Some(&bytes[..]),
            "{name} changed"
        );
    }
    // The files the guest finished before the kill read back whole: at
    // most one of LOOP0..2 (the one being rewritten) differs.
    let want = seq(5000);
    let whole = (0..3)
        .filter(|i| mtype(&disk, &format!("LOOP{i}.TXT")).as_deref() == Some(want.as_bytes()))
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
