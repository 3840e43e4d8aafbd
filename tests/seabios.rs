//! Debian's unmodified SeaBIOS on the interpreter: it finds the i440FX,
//! fw_cfg (with DMA), the PCI functions, runs the VGA BIOS from fw_cfg,
//! switches to text mode 3 and prints its banner on the screen, which the
//! test reads back by rendering VGA text memory to a string. The BIOS
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
        max_instructions: Some(400_000_000),
        disk: None,
        cdrom: None,
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
