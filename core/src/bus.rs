//! Port I/O and MMIO dispatch. Devices implement `PortIo` / `Mmio` and are
//! registered on address ranges; engines call `Bus` synchronously from
//! inside an instruction. An access nobody claims reads all ones and is
//! counted, as on a PC's floating bus.

/// A device reachable through IN/OUT. `now` is the virtual time of the
/// access in nanoseconds (`Clock::now_ns`): devices take time from it and
/// never from the host clock.
pub trait PortIo {
    /// Read `size` (1, 2 or 4) bytes at `port`.
    fn read(&mut self, port: u16, size: u8, now: u64) -> u32;
    /// Write `size` bytes at `port`.
    fn write(&mut self, port: u16, size: u8, value: u32, now: u64);
}

/// A device reachable through memory-mapped registers.
pub trait Mmio {
    fn read(&mut self, addr: u64, size: u8, now: u64) -> u64;
    fn write(&mut self, addr: u64, size: u8, value: u64, now: u64);
}

/// The CPU's INTR input and interrupt acknowledge (the i8259 pair on a
/// PC). Engines ask `intr` at instruction boundaries while EFLAGS.IF is
/// set, and call `ack` to run the INTA cycle that yields the vector.
pub trait InterruptController {
    /// INTR is asserted.
    fn intr(&self) -> bool;
    /// INTA: the vector of the highest-priority request (marking it in
    /// service), or the spurious vector if the request went away.
    fn ack(&mut self) -> u8;
}

/// Platform work that must happen synchronously after a port write, with
/// the whole machine at hand: memory remapping by a chipset register (PAM),
/// DMA a device just started. Devices themselves never see guest memory;
/// the platform does this on their behalf.
pub trait IoHook {
    fn after_port_write(&mut self, vm: &mut crate::vm::Vm, port: u16);
}

/// Counters for accesses no device claimed.
#[derive(Clone, Copy, Debug, Default)]
pub struct BusStats {
    pub unclaimed_port_reads: u64,
    pub unclaimed_port_writes: u64,
    pub unclaimed_mmio: u64,
}

#[derive(Default)]
pub struct Bus {
    ports: Vec<(u16, u16, Box<dyn PortIo>)>,
    mmio: Vec<(u64, u64, Box<dyn Mmio>)>,
    pub stats: BusStats,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claim ports [first, first + count).
    pub fn add_ports(&mut self, first: u16, count: u16, dev: Box<dyn PortIo>) {
        self.ports.push((first, count, dev));
    }

    /// Claim physical [base, base + len).
    pub fn add_mmio(&mut self, base: u64, len: u64, dev: Box<dyn Mmio>) {
        self.mmio.push((base, len, dev));
    }

    pub fn io_read(&mut self, port: u16, size: u8, now: u64) -> u32 {
        for (first, count, dev) in &mut self.ports {
            if port.wrapping_sub(*first) < *count {
                return dev.read(port, size, now);
            }
        }
        self.stats.unclaimed_port_reads += 1;
        match size {
            1 => 0xFF,
            2 => 0xFFFF,
            _ => 0xFFFF_FFFF,
        }
    }

    pub fn io_write(&mut self, port: u16, size: u8, value: u32, now: u64) {
        for (first, count, dev) in &mut self.ports {
            if port.wrapping_sub(*first) < *count {
                dev.write(port, size, value, now);
                return;
            }
        }
        self.stats.unclaimed_port_writes += 1;
    }

    pub fn mmio_read(&mut self, addr: u64, size: u8, now: u64) -> Option<u64> {
        for (base, len, dev) in &mut self.mmio {
            if addr.wrapping_sub(*base) < *len {
                return Some(dev.read(addr, size, now));
            }
        }
        None
    }

    pub fn mmio_write(&mut self, addr: u64, size: u8, value: u64, now: u64) -> bool {
        for (base, len, dev) in &mut self.mmio {
            if addr.wrapping_sub(*base) < *len {
                dev.write(addr, size, value, now);
                return true;
            }
        }
        self.stats.unclaimed_mmio += 1;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Latch(u32);
    impl PortIo for Latch {
        fn read(&mut self, _p: u16, _s: u8, _now: u64) -> u32 {
            self.0
        }
        fn write(&mut self, _p: u16, _s: u8, v: u32, _now: u64) {
            self.0 = v;
        }
    }

    #[test]
    fn dispatch_and_floating_bus() {
        let mut b = Bus::new();
        b.add_ports(0x80, 1, Box::new(Latch(0)));
        b.io_write(0x80, 1, 0x42, 0);
        assert_eq!(b.io_read(0x80, 1, 0), 0x42);
        assert_eq!(b.io_read(0x81, 2, 0), 0xFFFF);
        assert_eq!(b.stats.unclaimed_port_reads, 1);
    }
}
