//! Bad and unusual disk media through the `umbra` binary, as a user gives
//! them: a missing, empty, truncated or unwritable image, a directory, an
//! ISO given as a disk, a non-ISO file given as a CD. Each one either gets
//! one clear line saying what to do (exit status 2) or the behaviour a real
//! drive has; none panics, and no image is truncated or rewritten.
//!
//! The boots use Debian's SeaBIOS (the default firmware) and a one-sector
//! boot program that drives the ATA registers itself, so they take seconds,
//! not a Linux boot.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use iced_x86::code_asm::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-media-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `umbra run` with `args`, no console input, COM1 nowhere.
fn umbra(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_umbra"))
        .arg("run")
        .args(args)
        .args(["--serial", "none", "--memory", "32M", "--deterministic"])
        .stdin(Stdio::null())
        .output()
        .expect("umbra runs")
}

/// A host-side error: exit status 2 and one line on stderr that names
/// `path` and contains `says`.
fn assert_refused(o: &Output, path: &Path, says: &str) {
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "exit status 2: {e}");
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    assert!(
        e.contains(&path.display().to_string()),
        "names the file: {e}"
    );
    assert!(e.contains(says), "says `{says}`: {e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn missing_disk_image_is_one_clear_error() {
    let p = tmpdir("missing").join("missing.img");
    let o = umbra(&["--disk", p.to_str().unwrap()]);
    assert_refused(&o, &p, "does not exist");
    assert!(!p.exists(), "no image is created behind the user's back");
}

#[test]
fn empty_and_truncated_images_are_refused_and_left_alone() {
    let dir = tmpdir("trunc");
    let empty = dir.join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let o = umbra(&["--disk", empty.to_str().unwrap()]);
    assert_refused(&o, &empty, "is empty");
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);

    // 1000 bytes: not whole 512-byte sectors.
    let cut = dir.join("cut.img");
    let bytes: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    std::fs::write(&cut, &bytes).unwrap();
    let o = umbra(&["--disk", cut.to_str().unwrap()]);
    assert_refused(&o, &cut, "not a multiple of 512");
    assert_eq!(std::fs::read(&cut).unwrap(), bytes, "image unchanged");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_directory_is_not_an_image() {
    let dir = tmpdir("dir");
    for opt in ["--disk", "--cdrom"] {
        let o = umbra(&[opt, dir.to_str().unwrap()]);
        assert_refused(&o, &dir, "is a directory");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cdrom_refuses_a_file_that_is_not_an_iso() {
    let dir = tmpdir("notiso");
    let p = dir.join("disk.img");
    // A raw disk (boot signature, no CD001 at sector 16), 64 KiB.
    let mut bytes = vec![0u8; 64 << 10];
    bytes[510] = 0x55;
    bytes[511] = 0xAA;
    std::fs::write(&p, &bytes).unwrap();
    let o = umbra(&["--cdrom", p.to_str().unwrap()]);
    assert_refused(&o, &p, "not an ISO 9660");
    assert!(
        text(&o.stderr).contains("--disk"),
        "says what to do instead"
    );
    assert_eq!(std::fs::read(&p).unwrap(), bytes);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn options_that_need_a_kernel_or_firmware_are_refused_by_the_parser() {
    let o = umbra(&["--append", "console=ttyS0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--kernel"), "{}", text(&o.stderr));
    let o = umbra(&["--kernel", "/nonexistent/k", "--disk", "/nonexistent/d"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("cannot be used with"));
}

/// Sector the boot program writes (LBA 1, just after itself).
const TARGET_LBA: u8 = 1;
/// Word the boot program writes 256 times.
const PATTERN: u16 = 0xA5C3;
/// Exit-port value when the drive took the data and ended without error.
const WROTE: u8 = 0x55;
/// Offset in the boot sector of the message the program prints.
const MSG_OFF: usize = 0x180;

/// A boot sector (assembled for 0000:7C00) that prints `msg` on port 0xE9,
/// then issues ATA WRITE SECTORS (ATA-6 8.62) by PIO for one sector at
/// LBA `TARGET_LBA` of the primary master: if the drive asks for the data
/// (DRQ) it sends `PATTERN` words and waits for the end of the command.
/// It writes to the exit port the ERROR register if the status then has
/// ERR, else `WROTE`.
fn write_probe(msg: &str) -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    let mut next = a.create_label();
    let mut printed = a.create_label();
    let mut busy1 = a.create_label();
    let mut busy2 = a.create_label();
    let mut send = a.create_label();
    let mut finish = a.create_label();
    let mut failed = a.create_label();
    a.cli().unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(si, 0x7C00u32 + MSG_OFF as u32).unwrap();
    a.mov(dx, 0xE9u32).unwrap();
    a.set_label(&mut next).unwrap();
    a.lodsb().unwrap();
    a.test(al, al).unwrap();
    a.jz(printed).unwrap();
    a.out(dx, al).unwrap();
    a.jmp(next).unwrap();
    a.set_label(&mut printed).unwrap();
    // Task file: LBA mode, master; 1 sector at TARGET_LBA.
    for (port, v) in [
        (0x1F6u32, 0xE0u32),
        (0x1F2, 1),
        (0x1F3, TARGET_LBA as u32),
        (0x1F4, 0),
        (0x1F5, 0),
        (0x1F7, 0x30), // WRITE SECTORS
    ] {
        a.mov(dx, port).unwrap();
        a.mov(al, v).unwrap();
        a.out(dx, al).unwrap();
    }
    a.mov(dx, 0x1F7u32).unwrap();
    a.set_label(&mut busy1).unwrap();
    a.in_(al, dx).unwrap();
    a.test(al, 0x80u32).unwrap(); // BSY
    a.jnz(busy1).unwrap();
    a.test(al, 0x01u32).unwrap(); // ERR: refused before any data
    a.jnz(failed).unwrap();
    a.test(al, 0x08u32).unwrap(); // DRQ: send the sector
    a.jz(finish).unwrap();
    a.mov(cx, 256u32).unwrap();
    a.mov(dx, 0x1F0u32).unwrap();
    a.mov(ax, PATTERN as u32).unwrap();
    a.set_label(&mut send).unwrap();
    a.out(dx, ax).unwrap();
    a.loop_(send).unwrap();
    a.mov(dx, 0x1F7u32).unwrap();
    a.set_label(&mut busy2).unwrap();
    a.in_(al, dx).unwrap();
    a.test(al, 0x80u32).unwrap();
    a.jnz(busy2).unwrap();
    a.test(al, 0x01u32).unwrap();
    a.jnz(failed).unwrap();
    a.set_label(&mut finish).unwrap();
    a.mov(al, WROTE as u32).unwrap();
    a.out(0xF4u32, al).unwrap();
    a.hlt().unwrap();
    a.set_label(&mut failed).unwrap();
    a.mov(dx, 0x1F1u32).unwrap(); // ERROR register
    a.in_(al, dx).unwrap();
    a.out(0xF4u32, al).unwrap();
    a.hlt().unwrap();
    let mut code = a.assemble(0x7C00).unwrap();
    assert!(code.len() <= MSG_OFF && MSG_OFF + msg.len() < 446);
    code.resize(512, 0);
    code[MSG_OFF..MSG_OFF + msg.len()].copy_from_slice(msg.as_bytes());
    code[510] = 0x55;
    code[511] = 0xAA;
    code
}

/// A 1 MiB disk: the write probe, then bytes that are not the pattern.
fn probe_disk(path: &Path, msg: &str) -> Vec<u8> {
    let mut image = write_probe(msg);
    image.extend((512..1u32 << 20).map(|i| (i % 253) as u8));
    std::fs::write(path, &image).unwrap();
    image
}

/// Boot `disk` with `extra` options; (exit status, debug console, stderr).
fn boot_probe(disk: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let log = disk.with_extension("debugcon");
    let mut args = vec!["--disk", disk.to_str().unwrap()];
    args.extend_from_slice(extra);
    let debugcon = format!("file:{}", log.display());
    args.extend_from_slice(&["--debugcon", &debugcon]);
    let o = umbra(&args);
    let debug = std::fs::read_to_string(&log).unwrap_or_default();
    let err = text(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    (o.status.code(), debug, err)
}

/// Exit status for a value V written to port 0xF4.
fn exit_status(v: u8) -> Option<i32> {
    Some(((v as i32) << 1) | 1)
}

#[test]
fn a_writable_image_takes_the_write_and_a_snapshot_keeps_it_in_memory() {
    let dir = tmpdir("rw");
    let disk = dir.join("disk.img");
    let image = probe_disk(&disk, "PROBE-RW\n");
    let (st, debug, err) = boot_probe(&disk, &[]);
    assert!(
        debug.contains("PROBE-RW"),
        "the boot sector ran: {debug}{err}"
    );
    assert_eq!(st, exit_status(WROTE), "{err}");
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(after.len(), image.len());
    assert!(after[512..1024]
        .chunks(2)
        .all(|w| w == PATTERN.to_le_bytes()));
    assert_eq!(after[..512], image[..512]);
    assert_eq!(after[1024..], image[1024..]);

    // The same write with --snapshot: the guest sees it succeed, the file
    // does not change.
    std::fs::write(&disk, &image).unwrap();
    let (st, _, err) = boot_probe(&disk, &["--snapshot"]);
    assert_eq!(st, exit_status(WROTE), "{err}");
    assert!(std::fs::read(&disk).unwrap() == image, "file unchanged");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unwritable_image_is_write_protected_the_drive_aborts_writes() {
    let dir = tmpdir("ro");
    let disk = dir.join("disk.img");
    let image = probe_disk(&disk, "PROBE-RO\n");
    let mut perm = std::fs::metadata(&disk).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&disk, perm).unwrap();
    let (st, debug, err) = boot_probe(&disk, &[]);
    assert!(debug.contains("PROBE-RO"), "the image boots: {debug}{err}");
    // ATA-6 7.15.6 / 8.62: a write the device cannot do ends with ERR in
    // the status and ABRT (bit 2) in the error register.
    assert_eq!(st, exit_status(0x04), "ERROR = ABRT: {err}");
    assert!(
        err.contains("not writable") && err.contains("write-protected"),
        "the user is told: {err}"
    );
    assert!(std::fs::read(&disk).unwrap() == image, "file unchanged");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_iso_given_as_a_disk_is_a_raw_disk_with_a_hint() {
    let dir = tmpdir("isodisk");
    let disk = dir.join("cd.iso");
    // The probe image with an ISO 9660 primary volume descriptor at
    // sector 16 (ECMA-119 8.1: type 1, `CD001`, version 1).
    let mut image = probe_disk(&disk, "PROBE-ISO\n");
    image[0x8000] = 1;
    image[0x8001..0x8006].copy_from_slice(b"CD001");
    image[0x8006] = 1;
    std::fs::write(&disk, &image).unwrap();
    let (st, debug, err) = boot_probe(&disk, &["--snapshot"]);
    assert!(
        debug.contains("PROBE-ISO"),
        "booted as a disk: {debug}{err}"
    );
    assert_eq!(st, exit_status(WROTE), "{err}");
    assert!(err.contains("--cdrom"), "hints at --cdrom: {err}");
    assert!(std::fs::read(&disk).unwrap() == image, "file unchanged");
    let _ = std::fs::remove_dir_all(&dir);
}
