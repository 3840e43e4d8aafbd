//! Debian's unmodified SeaBIOS on the interpreter: it finds the i440FX,
//! fw_cfg (with DMA), the PCI functions, runs the VGA BIOS from fw_cfg,
//! switches to text mode 3 and prints its banner on the screen, which the
//! test reads back by rendering VGA text memory to a string; then it boots
//! a disk whose boot sector reports through the debug and exit ports. The BIOS
//! comes from /usr/share/seabios or from guests/fetch-seabios.sh's cache.

use umbra::machine::console::Console;
use umbra::machine::{Boot, CharTarget, EngineKind, Machine, MachineConfig};

#[test]
fn seabios_prints_its_banner_on_the_vga_text_screen() {
    let Some(dir) = umbra_firmware::seabios::find_debian_seabios() else {
        panic!("Debian's SeaBIOS is missing: run guests/fetch-seabios.sh (CI does)");
    };
    let log = std::env::temp_dir().join(format!("umbra-seabios-{}.log", std::process::id()));
    let cfg = MachineConfig {
        memory: 64 << 20,
        boot: Boot::Bios(dir.join("bios.bin")),
        engine: EngineKind::Interp,
        deterministic: true,
        serial: CharTarget::None,
        debugcon: CharTarget::File(log.clone()),
        max_instructions: Some(8_000_000),
        code_cache: umbra_translator::DEFAULT_CACHE_BYTES,
        disk: None,
        cdrom: None,
        snapshot: false,
    };
    let mut m = Machine::new(&cfg).expect("machine");
    let outcome = m.run(&mut Console::none());
    let debug = std::fs::read_to_string(&log).unwrap_or_default();
    let fw = m
        .firmware
        .as_ref()
        .expect("firmware devices on the --bios path");
    let screen = fw
        .vga
        .borrow()
        .text_screen()
        .map(|s| s.to_string())
        .unwrap_or_default();
    eprintln!("outcome {outcome:?}\n--- debug port ---\n{debug}\n--- screen ---\n{screen}");
    for want in [
        "Running on QEMU (i440fx)",
        "QEMU fw_cfg DMA interface supported",
        "PCI: init bdf=00:01.1 id=8086:7010",
        "Start SeaVGABIOS",
    ] {
        assert!(debug.contains(want), "debug output lacks `{want}`");
    }
    assert!(
        screen
            .lines()
            .next()
            .unwrap_or("")
            .starts_with("SeaBIOS (version"),
        "the banner is the first line of the text screen"
    );
}

/// Offset of the message in the boot sector.
const MSG_OFF: usize = 0x100;

/// A one-sector MBR that prints `msg` on the debug console (port 0xE9) and
/// writes `status` to the exit port, assembled for 0000:7C00.
fn boot_sector(msg: &str, status: u8) -> Vec<u8> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(16).unwrap();
    let mut next = a.create_label();
    let mut done = a.create_label();
    a.cli().unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(si, 0x7C00u32 + MSG_OFF as u32).unwrap();
    a.mov(dx, 0xE9u32).unwrap();
    a.set_label(&mut next).unwrap();
    a.lodsb().unwrap();
    a.test(al, al).unwrap();
    a.jz(done).unwrap();
    a.out(dx, al).unwrap();
    a.jmp(next).unwrap();
    a.set_label(&mut done).unwrap();
    a.mov(al, status as u32).unwrap();
    a.out(0xF4u32, al).unwrap();
    a.hlt().unwrap();
    let mut code = a.assemble(0x7C00).unwrap();
    assert!(
        code.len() <= MSG_OFF && MSG_OFF + msg.len() < 446,
        "fits before the partition table"
    );
    code.resize(512, 0);
    code[MSG_OFF..MSG_OFF + msg.len()].copy_from_slice(msg.as_bytes());
    code[510] = 0x55;
    code[511] = 0xAA;
    code
}

#[test]
fn seabios_boots_a_disk_through_int19_and_the_ata_driver() {
    let Some(dir) = umbra_firmware::seabios::find_debian_seabios() else {
        panic!("Debian's SeaBIOS is missing: run guests/fetch-seabios.sh (CI does)");
    };
    let tmp = std::env::temp_dir().join(format!("umbra-seabios-disk-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let disk = tmp.join("disk.img");
    let mut image = boot_sector("BOOTSECTOR-OK\n", 0x2A);
    image.resize(8 << 20, 0);
    std::fs::write(&disk, image).unwrap();
    let log = tmp.join("debugcon.log");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_umbra"))
        .args(["run", "--bios"])
        .arg(dir.join("bios.bin"))
        .arg("--disk")
        .arg(&disk)
        .args(["--serial", "none", "--memory", "64M", "--deterministic"])
        .arg("--debugcon")
        .arg(format!("file:{}", log.display()))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("umbra runs");
    let debug = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("{debug}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        debug.contains("ata0-0: UMBRA HARDDISK"),
        "SeaBIOS found the disk"
    );
    assert!(debug.contains("Booting from Hard Disk..."));
    assert!(debug.contains("BOOTSECTOR-OK"), "the boot sector ran");
    assert_eq!(o.status.code(), Some((0x2A << 1) | 1));
}
