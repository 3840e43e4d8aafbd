//! Boot tests through the `umbra` binary, as a user runs it: a multiboot
//! test kernel that reports through the serial port and the exit port, and
//! Debian's i386 kernel with the busybox workload initramfs (built by
//! guests/build.sh from Debian packages; see guests/README.md).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use umbra_firmware::testkernel;

fn umbra() -> Command {
    Command::new(env!("CARGO_BIN_EXE_umbra"))
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("umbra-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn run(args: &[&str]) -> Output {
    umbra()
        .arg("run")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("umbra runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn multiboot_elf_kernel_prints_and_exits_with_its_status() {
    let k = tmp("mb-elf");
    std::fs::write(
        &k,
        testkernel::multiboot_test_kernel("hello from multiboot\n", 0x15),
    )
    .unwrap();
    let out = tmp("mb-elf.serial");
    let o = run(&[
        "--kernel",
        k.to_str().unwrap(),
        "--serial",
        &format!("file:{}", out.display()),
        "--memory",
        "16M",
    ]);
    assert_eq!(
        o.status.code(),
        Some((0x15 << 1) | 1),
        "stderr: {}",
        text(&o.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "hello from multiboot\n"
    );
}

#[test]
fn multiboot_aout_kernel_prints_and_exits_with_its_status() {
    let k = tmp("mb-aout");
    std::fs::write(
        &k,
        testkernel::multiboot_aout_test_kernel("a.out kludge\n", 0),
    )
    .unwrap();
    let o = run(&["--kernel", k.to_str().unwrap(), "--memory", "16M"]);
    assert_eq!(o.status.code(), Some(1), "stderr: {}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "a.out kludge\n");
}

#[test]
fn triple_fault_prints_the_cpu_state_and_fails() {
    // The ELF test kernel with its first instruction replaced by UD2: with
    // no IDT set up (the IDTR still covers the zeroed real-mode IVT), #UD
    // finds an empty gate, #GP too, #DF too: a triple fault.
    let mut image = testkernel::multiboot_test_kernel("", 0);
    let entry = u32::from_le_bytes(image[24..28].try_into().unwrap());
    let off = (entry - 0x10_0000) as usize; // one PT_LOAD of the file at 1 MiB
    image[off..off + 2].copy_from_slice(&[0x0F, 0x0B]);
    let k = tmp("mb-ud2");
    std::fs::write(&k, image).unwrap();
    let o = run(&["--kernel", k.to_str().unwrap(), "--memory", "16M"]);
    assert_eq!(o.status.code(), Some(2));
    let e = text(&o.stderr);
    assert!(e.contains("triple fault"), "{e}");
    assert!(e.contains(&format!("EIP={entry:08x}")), "{e}");
}

#[test]
fn user_errors_get_one_line_and_a_nonzero_status() {
    let missing = run(&["--kernel", "/nonexistent/vmlinuz"]);
    assert_eq!(missing.status.code(), Some(2));
    let e = text(&missing.stderr);
    assert!(e.contains("/nonexistent/vmlinuz"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");

    let junk = tmp("junk");
    std::fs::write(&junk, vec![0x90u8; 10_000]).unwrap();
    let o = run(&["--kernel", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("neither a Linux bzImage nor a multiboot"));

    let o = run(&["--kernel", junk.to_str().unwrap(), "--memory", "12Q"]);
    assert_eq!(o.status.code(), Some(2), "clap rejects a bad size");
    assert!(text(&o.stderr).contains("12Q"));
}

/// The default guest (kernel, initramfs, expected results), built on
/// demand by guests/build.sh.
fn guest() -> umbra::guests::Guest {
    umbra::guests::default_guest().unwrap_or_else(|e| {
        panic!("cannot build the Debian guest ({e}); CI installs what guests/build.sh needs")
    })
}

/// Expected workload lines (`name result...`) computed natively.
fn expected(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .expect("expected.txt")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// `umbra run` on the default guest's kernel and initramfs, with `extra`
/// options.
fn run_guest(extra: &[&str]) -> Output {
    let g = guest();
    let mut args = vec![
        "--kernel",
        g.kernel.to_str().unwrap(),
        "--initrd",
        g.initrd.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn debian_kernel_runs_the_workload_on_the_interpreter() {
    workload_gives_the_native_results("interp");
}

#[test]
fn debian_kernel_runs_the_workload_on_the_translator() {
    workload_gives_the_native_results("jit");
}

/// Boot the default guest with the workload on `engine`: every result
/// equals the natively computed one, and the guest powers off.
fn workload_gives_the_native_results(engine: &str) {
    let g = guest();
    let o = run_guest(&[
        "--append",
        "console=ttyS0 umbra.workload=1 cryptomgr.notests",
        "--memory",
        "256M",
        "--engine",
        engine,
        "--stats",
    ]);
    let serial = text(&o.stdout);
    eprintln!("{serial}\n{}", text(&o.stderr));
    assert!(serial.contains("BOOT-OK"), "no BOOT-OK");
    let expected = expected(g.expected.as_ref().expect("expected.txt"));
    assert_eq!(expected.len(), 5, "five workload results");
    for (name, want) in &expected {
        let line = serial
            .lines()
            .find(|l| l.starts_with(&format!("WORKLOAD {name} ")))
            .unwrap_or_else(|| panic!("no WORKLOAD {name} line"));
        let got = line.trim_start_matches(&format!("WORKLOAD {name} "));
        assert!(
            got.starts_with(want.as_str()),
            "{name}: got `{got}`, native `{want}`"
        );
    }
    assert!(serial.contains("WORK-DONE"));
    assert_eq!(
        o.status.code(),
        Some(0),
        "ACPI power off ends with status 0"
    );
}

#[test]
fn deterministic_boots_print_identical_output() {
    let boot = || {
        let o = run_guest(&[
            "--append",
            "console=ttyS0 umbra.poweroff=1 cryptomgr.notests",
            "--deterministic",
        ]);
        assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
        o.stdout
    };
    let (a, b) = (boot(), boot());
    assert!(text(&a).contains("BOOT-OK"));
    assert!(a == b, "two --deterministic boots printed different output");
}

#[test]
fn too_little_memory_for_the_kernel_is_refused_with_the_size_needed() {
    let o = run_guest(&["--memory", "16M"]);
    assert_eq!(o.status.code(), Some(2));
    let e = text(&o.stderr);
    assert!(e.contains("MiB"), "says how much memory is needed: {e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}
