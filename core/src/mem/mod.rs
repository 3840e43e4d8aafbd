//! `GuestMemory`: the guest-physical address space.
//!
//! RAM is one anonymous mapping (memmap2) from physical 0 up to its size.
//! ROM ranges lie on top of it (reads see the ROM, writes are dropped and
//! counted) and MMIO holes are ranges that the bus serves. Every access is
//! bounds-checked against the mapping: nothing a guest does reaches host
//! memory outside its RAM. A per-4 KiB-frame dirty bitmap serves snapshots
//! and migration; a write-watch bitmap marks the frames that hold page
//! tables or translated code, and writes that land on them are logged for
//! the MMU and the translator to act on.
//!
//! It does not know about paging or devices: the MMU turns linear into
//! physical addresses, the bus serves MMIO.

use bitvec::vec::BitVec;
use memmap2::MmapMut;

/// Page/frame size.
pub const PAGE_SIZE: u64 = 4096;
pub const PAGE_SHIFT: u32 = 12;

/// What lives at a physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// RAM at this offset into the RAM mapping.
    Ram(usize),
    /// ROM `index` at this offset into it.
    Rom(usize, usize),
    /// An MMIO hole: the bus serves it.
    Mmio,
    /// Nothing: reads see all ones, writes vanish.
    Unmapped,
}

#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("cannot allocate {0} MiB of guest RAM: {1} (try a smaller --memory)")]
    Alloc(u64, std::io::Error),
    #[error("guest RAM size must be a non-zero multiple of 4 KiB below 4 GiB, got {0:#x}")]
    BadSize(u64),
    #[error(
        "ROM at {base:#x} of {len:#x} bytes overlaps another ROM or leaves the 4 GiB address space"
    )]
    BadRom { base: u64, len: u64 },
}

struct Rom {
    base: u64,
    data: Vec<u8>,
}

/// Counters of accesses the hardware would ignore.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemStats {
    pub rom_writes: u64,
    pub unmapped_reads: u64,
    pub unmapped_writes: u64,
}

pub struct GuestMemory {
    ram: MmapMut,
    roms: Vec<Rom>,
    mmio: Vec<(u64, u64)>,
    dirty: BitVec,
    watched: BitVec,
    watch_hits: Vec<u64>,
    /// RAM frame holding the code block the interpreter is executing
    /// (`usize::MAX`: none); see `watch_code_frame`.
    code_frame: usize,
    /// Set when RAM in `code_frame` was written since it was chosen.
    pub code_written: bool,
    /// Frames the interpreter has decoded code from (one byte a frame).
    code_frames: Vec<bool>,
    /// Bumped by every write into a frame of `code_frames`: decoded code
    /// from before the last bump must be checked against memory again.
    pub code_gen: u64,
    /// A frame whose dirty bit is known set and that holds no decoded code
    /// (`usize::MAX`: none), so that repeated writes to it skip the bitmap
    /// and the code checks.
    last_dirty: usize,
    pub stats: MemStats,
}

impl GuestMemory {
    /// Allocate `size` bytes of zeroed RAM at physical 0.
    pub fn new(size: u64) -> Result<Self, MemError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || size > 0xFFFF_F000 {
            return Err(MemError::BadSize(size));
        }
        let ram = MmapMut::map_anon(size as usize).map_err(|e| MemError::Alloc(size >> 20, e))?;
        let frames = (size / PAGE_SIZE) as usize;
        Ok(GuestMemory {
            ram,
            roms: Vec::new(),
            mmio: Vec::new(),
            dirty: BitVec::repeat(false, frames),
            watched: BitVec::repeat(false, frames),
            watch_hits: Vec::new(),
            code_frame: usize::MAX,
            code_written: false,
            last_dirty: usize::MAX,
            code_frames: vec![false; frames],
            code_gen: 0,
            stats: MemStats::default(),
        })
    }

    pub fn ram_size(&self) -> u64 {
        self.ram.len() as u64
    }

    /// The whole of RAM, for engines that map it elsewhere (KVM) and for
    /// snapshots.
    pub fn ram(&self) -> &[u8] {
        &self.ram
    }
    pub fn ram_mut(&mut self) -> &mut [u8] {
        // Anything may be written through this: treat it as a code write.
        self.code_written = true;
        self.code_gen += 1;
        &mut self.ram
    }
    /// Host address of RAM offset 0 (for KVM's user memory region and the
    /// translator's fast path; every use bounds-checks against `ram_size`).
    pub fn ram_host_ptr(&mut self) -> *mut u8 {
        self.code_written = true;
        self.code_gen += 1;
        self.ram.as_mut_ptr()
    }

    /// Map a ROM image at `base` (reads see it, writes are dropped).
    pub fn add_rom(&mut self, base: u64, data: Vec<u8>) -> Result<(), MemError> {
        let len = data.len() as u64;
        let end = base.checked_add(len).filter(|&e| e <= 1 << 32);
        let overlaps = self
            .roms
            .iter()
            .any(|r| base < r.base + r.data.len() as u64 && r.base < base + len);
        if end.is_none() || overlaps || len == 0 {
            return Err(MemError::BadRom { base, len });
        }
        self.roms.push(Rom { base, data });
        Ok(())
    }

    /// Declare [base, base+len) an MMIO hole served by the bus.
    pub fn add_mmio(&mut self, base: u64, len: u64) {
        self.mmio.push((base, len));
    }

    /// What lives at `paddr`.
    #[inline]
    pub fn region(&self, paddr: u64) -> Region {
        if !self.roms.is_empty() || !self.mmio.is_empty() {
            for (i, r) in self.roms.iter().enumerate() {
                if paddr >= r.base && paddr - r.base < r.data.len() as u64 {
                    return Region::Rom(i, (paddr - r.base) as usize);
                }
            }
            for &(b, l) in &self.mmio {
                if paddr >= b && paddr - b < l {
                    return Region::Mmio;
                }
            }
        }
        if paddr < self.ram.len() as u64 {
            Region::Ram(paddr as usize)
        } else {
            Region::Unmapped
        }
    }

    /// Whether the whole frame holding `paddr` is plain RAM (no ROM or MMIO
    /// overlaps it), so that a shadow entry may point straight at it.
    pub fn frame_is_ram(&self, paddr: u64) -> bool {
        let f = paddr & !(PAGE_SIZE - 1);
        if f + PAGE_SIZE > self.ram.len() as u64 {
            return false;
        }
        let hit = |b: u64, l: u64| f < b + l && b < f + PAGE_SIZE;
        !self.roms.iter().any(|r| hit(r.base, r.data.len() as u64))
            && !self.mmio.iter().any(|&(b, l)| hit(b, l))
    }

    /// Read one byte of physical memory (RAM or ROM; MMIO and unmapped
    /// read all ones here: MMIO goes through the bus before this).
    #[inline]
    pub fn read_u8(&mut self, paddr: u64) -> u8 {
        match self.region(paddr) {
            Region::Ram(o) => self.ram[o],
            Region::Rom(i, o) => self.roms[i].data[o],
            Region::Mmio | Region::Unmapped => {
                self.stats.unmapped_reads += 1;
                0xFF
            }
        }
    }

    /// Write one byte of physical memory.
    #[inline]
    pub fn write_u8(&mut self, paddr: u64, v: u8) {
        match self.region(paddr) {
            Region::Ram(o) => {
                self.ram[o] = v;
                self.mark_written(o);
            }
            Region::Rom(..) => self.stats.rom_writes += 1,
            Region::Mmio | Region::Unmapped => self.stats.unmapped_writes += 1,
        }
    }

    /// Read `buf.len()` bytes starting at `paddr`, byte by byte across any
    /// region boundaries.
    pub fn read(&mut self, paddr: u64, buf: &mut [u8]) {
        if let Region::Ram(o) = self.region(paddr) {
            if let Some(src) = self.ram.get(o..o + buf.len()) {
                if self.roms.is_empty() && self.mmio.is_empty() {
                    buf.copy_from_slice(src);
                    return;
                }
            }
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.read_u8(paddr.wrapping_add(i as u64));
        }
    }

    /// Write `buf` starting at `paddr`.
    pub fn write(&mut self, paddr: u64, buf: &[u8]) {
        for (i, &b) in buf.iter().enumerate() {
            self.write_u8(paddr.wrapping_add(i as u64), b);
        }
    }

    pub fn read_u16(&mut self, paddr: u64) -> u16 {
        let mut b = [0; 2];
        self.read(paddr, &mut b);
        u16::from_le_bytes(b)
    }
    pub fn read_u32(&mut self, paddr: u64) -> u32 {
        let mut b = [0; 4];
        self.read(paddr, &mut b);
        u32::from_le_bytes(b)
    }
    pub fn read_u64(&mut self, paddr: u64) -> u64 {
        let mut b = [0; 8];
        self.read(paddr, &mut b);
        u64::from_le_bytes(b)
    }
    pub fn write_u16(&mut self, paddr: u64, v: u16) {
        self.write(paddr, &v.to_le_bytes());
    }
    pub fn write_u32(&mut self, paddr: u64, v: u32) {
        self.write(paddr, &v.to_le_bytes());
    }
    pub fn write_u64(&mut self, paddr: u64, v: u64) {
        self.write(paddr, &v.to_le_bytes());
    }

    /// Write a dword without logging a write-watch hit: the MMU's own
    /// accessed/dirty updates to page-table entries, which must not
    /// invalidate the shadow entry being filled. Marks the frame dirty;
    /// outside RAM it behaves like `write_u32` (ROM/unmapped writes are
    /// dropped and counted).
    pub fn write_u32_unlogged(&mut self, paddr: u64, v: u32) {
        match paddr.checked_add(4) {
            Some(end)
                if end <= self.ram.len() as u64
                    && matches!(self.region(paddr), Region::Ram(_))
                    && matches!(self.region(paddr + 3), Region::Ram(_)) =>
            {
                let o = paddr as usize;
                self.ram[o..o + 4].copy_from_slice(&v.to_le_bytes());
                self.dirty.set(o >> PAGE_SHIFT, true);
                self.dirty.set((o + 3) >> PAGE_SHIFT, true);
                self.note_code_write(o, o + 3);
            }
            _ => self.write_u32(paddr, v),
        }
    }

    /// Fast RAM access for the MMU's shadow entries: `len` bytes at RAM
    /// offset `off`, or `None` if that leaves RAM.
    #[inline]
    pub fn ram_slice(&self, off: usize, len: usize) -> Option<&[u8]> {
        self.ram.get(off..off.checked_add(len)?)
    }
    /// Mutable RAM access at a RAM offset. The caller is responsible for
    /// write-watch: use it only through a shadow entry that allows writes.
    #[inline]
    pub fn ram_slice_mut(&mut self, off: usize, len: usize) -> Option<&mut [u8]> {
        let end = off.checked_add(len)?;
        if end > self.ram.len() {
            return None;
        }
        let f = off >> PAGE_SHIFT;
        let last = end.saturating_sub(1);
        if f != self.last_dirty || last >> PAGE_SHIFT != f {
            self.dirty.set(f, true);
            self.dirty.set(last >> PAGE_SHIFT, true);
            self.note_code_write(off, last);
            // Remember a plain (non-code) frame: writes to it again need
            // neither the bitmap nor the code checks.
            let plain =
                last >> PAGE_SHIFT == f && !self.code_frames.get(f).copied().unwrap_or(true);
            self.last_dirty = if plain { f } else { usize::MAX };
        }
        self.ram.get_mut(off..end)
    }

    #[inline]
    fn mark_written(&mut self, off: usize) {
        let f = off >> PAGE_SHIFT;
        self.dirty.set(f, true);
        self.note_code_write(off, off);
        if self.watched[f] {
            self.watch_hits.push(f as u64);
        }
    }

    /// Watch RAM frame `frame` for writes (self-modifying code): any write
    /// into it from now on sets `code_written`. The interpreter points this
    /// at the frame of the decoded block it runs, and ends the block when a
    /// store hits it. `usize::MAX` watches nothing.
    #[inline]
    pub fn watch_code_frame(&mut self, frame: usize) {
        self.code_frame = frame;
        self.code_written = false;
    }

    /// Record that the interpreter decoded code from RAM frame `frame`:
    /// writes into it bump `code_gen` from now on.
    pub fn mark_code_frame(&mut self, frame: usize) {
        if let Some(c) = self.code_frames.get_mut(frame) {
            *c = true;
        }
        if self.last_dirty == frame {
            self.last_dirty = usize::MAX;
        }
    }

    /// Record a write of RAM offsets `first..=last` (at most two frames)
    /// against the code frames.
    #[inline]
    fn note_code_write(&mut self, first: usize, last: usize) {
        let (f0, f1) = (first >> PAGE_SHIFT, last >> PAGE_SHIFT);
        self.note_code_frame(f0);
        if f1 != f0 {
            self.note_code_frame(f1);
        }
    }

    #[inline]
    fn note_code_frame(&mut self, f: usize) {
        if self.code_frames.get(f).copied().unwrap_or(false) {
            self.code_gen += 1;
            if f == self.code_frame {
                self.code_written = true;
            }
        }
    }

    // ---- dirty bitmap -------------------------------------------------

    pub fn is_dirty(&self, frame: u64) -> bool {
        self.dirty.get(frame as usize).map(|b| *b).unwrap_or(false)
    }
    /// Frames written since the last call, cleared on return.
    pub fn take_dirty(&mut self) -> Vec<u64> {
        let v = self.dirty.iter_ones().map(|f| f as u64).collect();
        self.dirty.fill(false);
        self.last_dirty = usize::MAX;
        v
    }

    // ---- write watch --------------------------------------------------

    /// Watch (or stop watching) writes to a RAM frame.
    pub fn set_watched(&mut self, frame: u64, on: bool) {
        if let Some(mut b) = self.watched.get_mut(frame as usize) {
            *b = on;
        }
    }
    #[inline]
    pub fn is_watched(&self, frame: u64) -> bool {
        self.watched
            .get(frame as usize)
            .map(|b| *b)
            .unwrap_or(false)
    }
    /// Watched frames written through `write*` since the last call.
    pub fn take_watch_hits(&mut self) -> Vec<u64> {
        let mut v = std::mem::take(&mut self.watch_hits);
        v.sort_unstable();
        v.dedup();
        v
    }
    pub fn has_watch_hits(&self) -> bool {
        !self.watch_hits.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_round_trip_and_bounds() {
        let mut m = GuestMemory::new(0x10000).unwrap();
        m.write_u32(0x1000, 0xDEADBEEF);
        assert_eq!(m.read_u32(0x1000), 0xDEADBEEF);
        assert!(m.is_dirty(1));
        // A dword straddling the end of RAM: the part outside reads as ones.
        m.write_u32(0xFFFE, 0x11223344);
        assert_eq!(m.read_u32(0xFFFE), 0xFFFF_3344);
        assert_eq!(m.read_u8(0xFFFF_FFFF), 0xFF);
        m.write_u8(0xFFFF_FFFF, 1);
        assert_eq!(m.stats.unmapped_writes, 3);
    }

    #[test]
    fn rom_is_read_only() {
        let mut m = GuestMemory::new(0x100000).unwrap();
        m.add_rom(0xF0000, vec![0xAA; 0x10000]).unwrap();
        m.write_u8(0xF0010, 1);
        assert_eq!(m.read_u8(0xF0010), 0xAA);
        assert_eq!(m.stats.rom_writes, 1);
        assert!(!m.frame_is_ram(0xF0000));
        assert!(m.frame_is_ram(0xE0000));
        assert!(m.add_rom(0xF8000, vec![0; 16]).is_err());
    }

    #[test]
    fn watch_hits_are_logged() {
        let mut m = GuestMemory::new(0x10000).unwrap();
        m.set_watched(2, true);
        m.write_u8(0x2004, 7);
        m.write_u8(0x3004, 7);
        assert_eq!(m.take_watch_hits(), vec![2]);
        assert!(!m.has_watch_hits());
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(GuestMemory::new(0).is_err());
        assert!(GuestMemory::new(4097).is_err());
    }
}
