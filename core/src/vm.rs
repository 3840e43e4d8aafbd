//! `Vm`: the state every engine works on (CPU, guest memory, MMU, bus,
//! clock), and the linear-address memory operations that all engines share:
//! shadow fast path, page walk on a miss, MMIO through the bus, accesses
//! split at page boundaries with both pages checked before any byte is
//! written.

use crate::bus::{Bus, InterruptController, IoHook};
use crate::clock::Clock;
use crate::cpu::CpuState;
use crate::exception::Fault;
use crate::mem::{GuestMemory, Region, PAGE_SIZE};
use crate::mmu::{Access, Mmu};

pub struct Vm {
    pub cpu: CpuState,
    pub mem: GuestMemory,
    pub mmu: Mmu,
    pub bus: Bus,
    pub clock: Clock,
    /// The interrupt controller behind the CPU's INTR pin, if the machine
    /// has one (bare test programs do not).
    pub intc: Option<Box<dyn InterruptController>>,
    /// Run after every port write (see `IoHook`), if the machine has one.
    pub io_hook: Option<Box<dyn IoHook>>,
    /// Frames watched for another owner (`Mmu::watch_frame`: the
    /// translator's code frames) that were written since that owner last
    /// drained this list.
    pub ext_frames_written: Vec<u64>,
}

impl Vm {
    /// Flat ring-0 32-bit protected mode for test programs: CR0.PE, a GDT
    /// at `gdt` (RAM) whose descriptors 8 (code) and 16 (data) are flat
    /// 4 GiB segments, and every segment cache loaded to match (CS = 8,
    /// the others 16).
    pub fn enter_flat_protected(&mut self, gdt: u64) {
        use crate::cpu::{attr, cr0, DescTable, Segment};
        self.cpu.cr0 |= cr0::PE;
        for (i, s) in self.cpu.seg.iter_mut().enumerate() {
            let code = if i == 1 { attr::CODE } else { 0 };
            *s = Segment {
                selector: if i == 1 { 8 } else { 16 },
                base: 0,
                limit: 0xFFFF_FFFF,
                attr: attr::P | attr::S | attr::RW | attr::ACCESSED | attr::DB | attr::G | code,
            };
        }
        self.mem.write_u64(gdt + 8, 0x00CF_9A00_0000_FFFF);
        self.mem.write_u64(gdt + 16, 0x00CF_9200_0000_FFFF);
        self.cpu.gdtr = DescTable {
            base: gdt as u32,
            limit: 0x17,
        };
    }

    pub fn new(mut mem: GuestMemory) -> Self {
        let mut mmu = Mmu::new();
        mmu.set_host_base(mem.ram_host_ptr_untracked() as u64);
        Vm {
            cpu: CpuState::reset(),
            mem,
            mmu,
            bus: Bus::new(),
            clock: Clock::default(),
            intc: None,
            io_hook: None,
            ext_frames_written: Vec::new(),
        }
    }

    /// RAM frames written since the last call (by any engine, including
    /// the translator's direct stores), cleared on return; writes after
    /// it are seen again because every shadow write permission is taken
    /// away with the bits.
    pub fn take_dirty(&mut self) -> Vec<u64> {
        self.mmu.revoke_all_writes();
        self.mem.take_dirty()
    }

    /// IN: read `size` bytes from `port` at the current virtual time.
    #[inline]
    pub fn port_in(&mut self, port: u16, size: u8) -> u32 {
        let now = self.clock.now_ns();
        self.bus.io_read(port, size, now)
    }

    /// OUT: write `size` bytes to `port` at the current virtual time.
    #[inline]
    pub fn port_out(&mut self, port: u16, size: u8, value: u32) {
        let now = self.clock.now_ns();
        self.bus.io_write(port, size, value, now);
        if let Some(mut hook) = self.io_hook.take() {
            hook.after_port_write(self, port);
            self.io_hook = Some(hook);
        }
    }

    /// The interrupt controller asserts INTR.
    #[inline]
    pub fn intr(&self) -> bool {
        self.intc.as_ref().is_some_and(|c| c.intr())
    }

    /// Translate one linear address (no access is made).
    #[inline]
    pub fn translate(&mut self, lin: u32, acc: Access) -> Result<u64, Fault> {
        self.mmu.translate(&self.cpu, &mut self.mem, lin, acc)
    }

    /// Read `size` (1, 2, 4 or 8) bytes at linear `lin`, little-endian.
    #[inline]
    pub fn read_lin(&mut self, lin: u32, size: usize, acc: Access) -> Result<u64, Fault> {
        let in_page = (lin as u64 & (PAGE_SIZE - 1)) + size as u64 <= PAGE_SIZE;
        if in_page {
            if let Some(off) = self.mmu.lookup_ram(lin, acc) {
                if let Some(s) = self.mem.ram_slice(off, size) {
                    return Ok(le_load(s));
                }
            }
            let p = self.translate(lin, acc)?;
            return Ok(self.read_phys(p, size));
        }
        let mut b = [0u8; 8];
        self.read_lin_bytes(lin, &mut b[..size], acc)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Write `size` bytes of `val` at linear `lin`.
    #[inline]
    pub fn write_lin(&mut self, lin: u32, size: usize, val: u64, acc: Access) -> Result<(), Fault> {
        let acc = Access(acc.0 | Access::WRITE.0);
        let in_page = (lin as u64 & (PAGE_SIZE - 1)) + size as u64 <= PAGE_SIZE;
        if in_page {
            if let Some(off) = self.mmu.lookup_ram(lin, acc) {
                if let Some(s) = self.mem.ram_slice_mut(off, size) {
                    le_store(s, val);
                    return Ok(());
                }
            }
            let p = self.translate(lin, acc)?;
            self.write_phys(p, size, val);
            return Ok(());
        }
        self.write_lin_bytes(lin, &val.to_le_bytes()[..size], acc)
    }

    /// Read any number of bytes at `lin`; every page is translated before
    /// the first byte is read.
    pub fn read_lin_bytes(&mut self, lin: u32, buf: &mut [u8], acc: Access) -> Result<(), Fault> {
        let pages = self.translate_span(lin, buf.len(), acc)?;
        let mut done = 0;
        for (p, n) in pages {
            for i in 0..n {
                buf[done + i] = self.read_phys(p + i as u64, 1) as u8;
            }
            done += n;
        }
        Ok(())
    }

    /// Write any number of bytes at `lin`; every page is translated (and
    /// checked for write permission) before the first byte is written.
    pub fn write_lin_bytes(&mut self, lin: u32, buf: &[u8], acc: Access) -> Result<(), Fault> {
        let acc = Access(acc.0 | Access::WRITE.0);
        let pages = self.translate_span(lin, buf.len(), acc)?;
        let mut done = 0;
        for (p, n) in pages {
            for i in 0..n {
                self.write_phys(p + i as u64, 1, buf[done + i] as u64);
            }
            done += n;
        }
        Ok(())
    }

    /// Physical address and byte count of each page piece of [lin, lin+len).
    fn translate_span(
        &mut self,
        lin: u32,
        len: usize,
        acc: Access,
    ) -> Result<Vec<(u64, usize)>, Fault> {
        let mut out = Vec::with_capacity(2);
        let mut l = lin;
        let mut left = len;
        while left > 0 {
            let n = ((PAGE_SIZE - (l as u64 & (PAGE_SIZE - 1))) as usize).min(left);
            out.push((self.translate(l, acc)?, n));
            l = l.wrapping_add(n as u32);
            left -= n;
        }
        Ok(out)
    }

    /// Read `size` bytes at a physical address: RAM, ROM, MMIO through the
    /// bus, or all ones.
    pub fn read_phys(&mut self, p: u64, size: usize) -> u64 {
        match self.mem.region(p) {
            Region::Mmio => {
                // A device access may change anything (DMA, remapping):
                // the interpreter must re-validate the code it runs.
                self.mem.code_written = true;
                let now = self.clock.now_ns();
                self.bus
                    .mmio_read(p, size as u8, now)
                    .unwrap_or(u64::MAX >> (64 - 8 * size as u32))
            }
            _ => {
                let mut b = [0u8; 8];
                self.mem.read(p, &mut b[..size]);
                u64::from_le_bytes(b)
            }
        }
    }

    /// Write `size` bytes at a physical address, then let the MMU act on
    /// any write-watched frame that was hit.
    pub fn write_phys(&mut self, p: u64, size: usize, val: u64) {
        match self.mem.region(p) {
            Region::Mmio => {
                self.mem.code_written = true;
                let now = self.clock.now_ns();
                self.bus.mmio_write(p, size as u8, val, now);
            }
            _ => {
                self.mem.write(p, &val.to_le_bytes()[..size]);
                if self.mem.has_watch_hits() {
                    self.flush_watch_hits();
                }
            }
        }
    }

    /// Hand the frames written under watch to the MMU.
    pub fn flush_watch_hits(&mut self) {
        // Page tables changed: the code being run may be mapped elsewhere.
        self.mem.code_written = true;
        for f in self.mem.take_watch_hits() {
            self.mmu.stats.write_watch_faults += 1;
            if self.mmu.is_ext_watched(f) {
                self.ext_frames_written.push(f);
            }
            self.mmu.on_watched_write(&mut self.mem, f);
        }
    }
}

/// `s` (1, 2, 4 or 8 bytes) as a little-endian value, with fixed-size
/// loads for the common sizes.
#[inline(always)]
fn le_load(s: &[u8]) -> u64 {
    match *s {
        [a] => a as u64,
        [a, b] => u16::from_le_bytes([a, b]) as u64,
        [a, b, c, d] => u32::from_le_bytes([a, b, c, d]) as u64,
        _ => {
            let mut b = [0u8; 8];
            let n = s.len().min(8);
            b[..n].copy_from_slice(&s[..n]);
            u64::from_le_bytes(b)
        }
    }
}

/// Store the low `s.len()` bytes of `val` into `s`, little-endian.
#[inline(always)]
fn le_store(s: &mut [u8], val: u64) {
    match s.len() {
        1 => s[0] = val as u8,
        2 => s.copy_from_slice(&(val as u16).to_le_bytes()),
        4 => s.copy_from_slice(&(val as u32).to_le_bytes()),
        n => {
            let n = n.min(8);
            s[..n].copy_from_slice(&val.to_le_bytes()[..n]);
        }
    }
}
