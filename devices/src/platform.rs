//! The PC platform assembled: every device of this crate at its ISA port,
//! shared between the port adapters on the `Bus` and the machine loop (which
//! polls timers, feeds console input and takes platform requests). The
//! i8259 pair sits behind the CPU's INTR pin as the `InterruptController`.
//!
//! Port map (a PC/AT with the i440FX/PIIX layout):
//! 0x20-0x21, 0xA0-0xA1, 0x4D0-0x4D1 PIC pair and ELCR; 0x40-0x43 PIT;
//! 0x60, 0x64 i8042; 0x61 system control port B (PIT gate/speaker);
//! 0x70-0x71 CMOS/RTC; 0x80 POST; 0xE9 debug console; 0xF4 exit port;
//! 0x3F8, 0x2F8, 0x3E8, 0x2E8 COM1-4; 0xCF8-0xCFF PCI; 0xCF9 reset;
//! `ACPI_PM_BASE`.. ACPI PM1 blocks, PM timer and GPE0 (16 ports).

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

use umbra_core::bus::{Bus, InterruptController, PortIo};

use crate::acpi_pm::AcpiPm;
use crate::debug_port::DebugPorts;
use crate::i8042::I8042;
use crate::irq::{IrqLine, IrqSink, Requests};
use crate::pci::PciHost;
use crate::pic::Pic8259Pair;
use crate::pit::Pit;
use crate::rtc::Rtc;
use crate::serial::Serial16550;

/// I/O base of the ACPI PM1 event/control blocks and the PM timer (the
/// firmware's FADT must say the same).
pub const ACPI_PM_BASE: u16 = 0x600;
/// The ACPI system control interrupt.
pub const SCI_IRQ: u8 = 9;
/// Base ports and IRQs of COM1-COM4.
pub const COM_PORTS: [(u16, u8); 4] = [(0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3)];

/// What the platform is built from.
pub struct PlatformConfig {
    /// Guest RAM size, for the CMOS memory-size bytes.
    pub ram_bytes: u64,
    /// Where each UART's output goes (None: discarded).
    pub serial_out: [Option<Box<dyn Write>>; 4],
    /// Port 0xE9 output (None: discarded).
    pub debugcon: Option<Box<dyn Write>>,
    /// Wall-clock seconds since 1970 at power-on, for the RTC.
    pub start_unix_secs: i64,
}

type Shared<T> = Rc<RefCell<T>>;

pub struct Platform {
    pub pic: Shared<Pic8259Pair>,
    pub pit: Shared<Pit>,
    pub rtc: Shared<Rtc>,
    pub i8042: Shared<I8042>,
    pub serial: [Shared<Serial16550>; 4],
    pub pci: Shared<PciHost>,
    pub acpi: Shared<AcpiPm>,
    pub debug: Shared<DebugPorts>,
    pub requests: Requests,
}

fn shared<T>(v: T) -> Shared<T> {
    Rc::new(RefCell::new(v))
}

impl Platform {
    pub fn new(cfg: PlatformConfig) -> Self {
        let requests = Requests::new();
        let pic = shared(Pic8259Pair::new());
        let sink: Rc<RefCell<dyn IrqSink>> = pic.clone();
        let line = |n: u8| IrqLine::new(sink.clone(), n);
        let mut rtc = Rtc::new(line(8), cfg.start_unix_secs);
        rtc.set_memory_size(cfg.ram_bytes);
        let [o0, o1, o2, o3] = cfg.serial_out;
        let outs = [o0, o1, o2, o3];
        let serial = outs.into_iter().zip(COM_PORTS).map(|(o, (_, irq))| {
            let out: Box<dyn Write> = o.unwrap_or_else(|| Box::new(std::io::sink()));
            shared(Serial16550::new(line(irq), out))
        });
        let serial: Vec<_> = serial.collect();
        let serial: [Shared<Serial16550>; 4] = match serial.try_into() {
            Ok(a) => a,
            Err(_) => unreachable!("four UARTs from four configurations"),
        };
        Platform {
            pit: shared(Pit::new(line(0))),
            rtc: shared(rtc),
            i8042: shared(I8042::new(line(1), line(12), requests.clone())),
            serial,
            pci: shared(PciHost::new(ACPI_PM_BASE, requests.clone())),
            acpi: shared(AcpiPm::new(ACPI_PM_BASE, line(SCI_IRQ), requests.clone())),
            debug: shared(DebugPorts::new(cfg.debugcon, requests.clone())),
            pic,
            requests,
        }
    }

    /// Put every device on `bus`.
    pub fn attach(&self, bus: &mut Bus) {
        // PIC master, slave and ELCR: byte registers without time.
        for base in [0x20, 0xA0, 0x4D0] {
            let rd = |d: &mut Pic8259Pair, p, _| d.read(p);
            let wr = |d: &mut Pic8259Pair, p, v, _| d.write(p, v);
            bus.add_ports(base, 2, bytes(&self.pic, rd, wr));
        }
        let pit = &self.pit;
        bus.add_ports(
            0x40,
            4,
            bytes(pit, |d, p, t| d.read(p, t), |d, p, v, t| d.write(p, v, t)),
        );
        bus.add_ports(
            0x61,
            1,
            bytes(
                pit,
                |d, _, t| d.read_port61(t),
                |d, _, v, t| d.write_port61(v, t),
            ),
        );
        // i8042 data and command/status ports.
        for port in [0x60, 0x64] {
            let rd = |d: &mut I8042, p, _| d.read(p);
            let wr = |d: &mut I8042, p, v, _| d.write(p, v);
            bus.add_ports(port, 1, bytes(&self.i8042, rd, wr));
        }
        let rtc = &self.rtc;
        bus.add_ports(
            0x70,
            2,
            bytes(rtc, |d, p, t| d.read(p, t), |d, p, v, t| d.write(p, v, t)),
        );
        let dbg = &self.debug;
        for port in [0x80, 0xE9, 0xF4] {
            bus.add_ports(
                port,
                1,
                bytes(dbg, |d, p, _| d.read(p), |d, p, v, _| d.write(p, v)),
            );
        }
        for (uart, (base, _)) in self.serial.iter().zip(COM_PORTS) {
            bus.add_ports(
                base,
                8,
                bytes(
                    uart,
                    move |d, p, _| d.read((p - base) as u8),
                    move |d, p, v, _| d.write((p - base) as u8, v),
                ),
            );
        }
        bus.add_ports(0xCF8, 8, Box::new(PciPorts(self.pci.clone())));
        bus.add_ports(ACPI_PM_BASE, 16, Box::new(AcpiPorts(self.acpi.clone())));
    }

    /// The i8259 pair as the CPU's interrupt controller.
    pub fn interrupt_controller(&self) -> Box<dyn InterruptController> {
        Box::new(SharedIntc(self.pic.clone()))
    }

    /// Bring every timer to `now`, raising the interrupts that fell due.
    pub fn poll(&self, now: u64) {
        self.pit.borrow_mut().poll(now);
        self.rtc.borrow_mut().poll(now);
        self.acpi.borrow_mut().poll(now);
    }

    /// The earliest virtual time at which a timer needs `poll`.
    pub fn next_event(&self, now: u64) -> Option<u64> {
        [
            self.pit.borrow().next_event(now),
            self.rtc.borrow().next_event(now),
            self.acpi.borrow().next_event(now),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Feed console input to COM `n` (0-3); returns how many bytes fit.
    pub fn serial_input(&self, n: usize, bytes: &[u8]) -> usize {
        self.serial
            .get(n)
            .map_or(0, |s| s.borrow_mut().push_input(bytes))
    }
}

/// An interrupt controller the platform also keeps on the bus: the CPU's
/// INTR/INTA go to the controller's own `InterruptController` impl.
struct SharedIntc<T>(Shared<T>);

impl<T: InterruptController> InterruptController for SharedIntc<T> {
    fn intr(&self) -> bool {
        InterruptController::intr(&*self.0.borrow())
    }
    fn ack(&mut self) -> u8 {
        InterruptController::ack(&mut *self.0.borrow_mut())
    }
}

type ByteRead<T> = Box<dyn Fn(&mut T, u16, u64) -> u8>;
type ByteWrite<T> = Box<dyn Fn(&mut T, u16, u8, u64)>;

/// An 8-bit device on the bus: a wider access is split into byte accesses
/// at consecutive ports, as the ISA bus does.
struct BytePorts<T> {
    dev: Shared<T>,
    rd: ByteRead<T>,
    wr: ByteWrite<T>,
}

fn bytes<T: 'static>(
    dev: &Shared<T>,
    rd: impl Fn(&mut T, u16, u64) -> u8 + 'static,
    wr: impl Fn(&mut T, u16, u8, u64) + 'static,
) -> Box<dyn PortIo> {
    Box::new(BytePorts {
        dev: dev.clone(),
        rd: Box::new(rd),
        wr: Box::new(wr),
    })
}

impl<T> PortIo for BytePorts<T> {
    fn read(&mut self, port: u16, size: u8, now: u64) -> u32 {
        let mut d = self.dev.borrow_mut();
        (0..size as u16).fold(0u32, |acc, i| {
            acc | ((self.rd)(&mut d, port.wrapping_add(i), now) as u32) << (8 * i)
        })
    }
    fn write(&mut self, port: u16, size: u8, value: u32, now: u64) {
        let mut d = self.dev.borrow_mut();
        for i in 0..size as u16 {
            (self.wr)(&mut d, port.wrapping_add(i), (value >> (8 * i)) as u8, now);
        }
    }
}

/// 0xCF8-0xCFF: the PCI host takes sized accesses itself.
struct PciPorts(Shared<PciHost>);

impl PortIo for PciPorts {
    fn read(&mut self, port: u16, size: u8, _now: u64) -> u32 {
        self.0.borrow_mut().read(port, size)
    }
    fn write(&mut self, port: u16, size: u8, value: u32, _now: u64) {
        self.0.borrow_mut().write(port, size, value)
    }
}

/// The ACPI PM block takes sized accesses itself.
struct AcpiPorts(Shared<AcpiPm>);

impl PortIo for AcpiPorts {
    fn read(&mut self, port: u16, size: u8, now: u64) -> u32 {
        self.0.borrow_mut().read(port, size, now)
    }
    fn write(&mut self, port: u16, size: u8, value: u32, now: u64) {
        self.0.borrow_mut().write(port, size, value, now)
    }
}
