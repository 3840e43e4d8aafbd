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
//! The legacy BIOS window 0xC0000-0xFFFFF may hold a *shadowable* ROM
//! (`add_shadow_rom`): per 16 KiB segment (0xF0000-0xFFFFF is one 64 KiB
//! segment) reads come from that ROM or from the RAM underneath, and writes
//! go to the RAM or nowhere, as the i440FX PAM registers choose
//! (`set_shadow`, `pam_segments`; 82441FX datasheet, PAM[6:0]).
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

/// First byte of the PAM-controlled window.
pub const SHADOW_BASE: u64 = 0xC_0000;
/// Size of the PAM-controlled window (0xC0000-0xFFFFF).
pub const SHADOW_LEN: u64 = 0x4_0000;
/// Granule of the PAM decode below 0xF0000 (one register nibble each).
pub const SHADOW_SEGMENT: u64 = 0x4000;
/// PAM nibble bit: reads of the segment go to DRAM (RE).
pub const PAM_READ_ENABLE: u8 = 1 << 0;
/// PAM nibble bit: writes to the segment go to DRAM (WE).
pub const PAM_WRITE_ENABLE: u8 = 1 << 1;
/// PCI config offset of PAM0 (0xF0000-0xFFFFF in bits 7:4).
pub const PAM0: u8 = 0x59;
/// PCI config offset of PAM6, the last PAM register.
pub const PAM6: u8 = 0x5F;

/// The segments one PAM register controls, each as (base, len, read_ram,
/// write_ram), for `GuestMemory::set_shadow`. PAM0 controls only
/// 0xF0000-0xFFFFF (high nibble; its low nibble is reserved); PAMn (n=1..6)
/// controls 0xC0000 + (n-1)*32 KiB in its low nibble and the next 16 KiB in
/// its high nibble. Other offsets yield nothing.
pub fn pam_segments(reg: u8, value: u8) -> Vec<(u64, u64, bool, bool)> {
    let mode = |n: u8| (n & PAM_READ_ENABLE != 0, n & PAM_WRITE_ENABLE != 0);
    match reg {
        PAM0 => {
            let (r, w) = mode(value >> 4);
            vec![(0xF_0000, 0x1_0000, r, w)]
        }
        0x5A..=PAM6 => {
            let base = SHADOW_BASE + (reg - 0x5A) as u64 * 2 * SHADOW_SEGMENT;
            let (lr, lw) = mode(value & 0xF);
            let (hr, hw) = mode(value >> 4);
            vec![
                (base, SHADOW_SEGMENT, lr, lw),
                (base + SHADOW_SEGMENT, SHADOW_SEGMENT, hr, hw),
            ]
        }
        _ => Vec::new(),
    }
}

/// PAM state of the shadowable ROM: one bit per 16 KiB of 0xC0000-0xFFFFF.
#[derive(Clone, Copy, Debug)]
struct Shadow {
    /// Index into `roms` of the 256 KiB ROM covering the window.
    rom: usize,
    /// Bit n set: reads of 0xC0000 + n*16 KiB come from RAM.
    read_ram: u16,
    /// Bit n set: writes there go to RAM (else they are dropped).
    write_ram: u16,
}

impl Shadow {
    /// Bit of the 16 KiB piece holding `paddr`, if it lies in the window.
    #[inline]
    fn bit(paddr: u64) -> Option<u16> {
        let o = paddr.wrapping_sub(SHADOW_BASE);
        (o < SHADOW_LEN).then(|| 1u16 << (o / SHADOW_SEGMENT))
    }
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
    /// The bumps of `code_gen` by writes to unwatched frames or logged as
    /// write-watch hits (`watched_code_gen`).
    seen_code_writes: u64,
    /// A frame whose dirty bit is known set and that holds no decoded code
    /// (`usize::MAX`: none), so that repeated writes to it skip the bitmap
    /// and the code checks.
    last_dirty: usize,
    pub stats: MemStats,
    /// The PAM-controlled ROM, if `add_shadow_rom` was called.
    shadow: Option<Shadow>,
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
            seen_code_writes: 0,
            stats: MemStats::default(),
            shadow: None,
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
    /// `code_gen` without the bumps by writes that an engine watching
    /// every frame it holds code from learns of anyway: writes to frames
    /// nobody watches, and writes logged as watch hits (`take_watch_hits`).
    /// What is left are the changes behind the watch: raw host writes
    /// (`ram_mut`, `ram_host_ptr`), ROM and PAM changes, unlogged page-table
    /// updates in a watched code frame, and direct bumps of `code_gen`.
    pub fn watched_code_gen(&self) -> u64 {
        self.code_gen - self.seen_code_writes
    }

    /// Host address of RAM offset 0 (for KVM's user memory region and the
    /// translator's fast path; every use bounds-checks against `ram_size`).
    pub fn ram_host_ptr(&mut self) -> *mut u8 {
        self.code_written = true;
        self.code_gen += 1;
        self.ram.as_mut_ptr()
    }

    /// Host address of RAM offset 0 for an engine that writes RAM only
    /// through shadow entries that allow writes (translated code): such
    /// writes never reach a write-watched frame, so nothing needs to be
    /// invalidated, unlike `ram_host_ptr`. They do not set dirty bits.
    pub fn ram_host_ptr_untracked(&mut self) -> *mut u8 {
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

    /// Put `data` into the shadowable ROM at `base`, inside 0xC0000-0xFFFFF.
    /// The first call creates that ROM (256 KiB, all ones where nothing is
    /// loaded: an empty ISA window) with every segment in the PAM reset
    /// state (reads see the ROM, writes are dropped); later calls fill in
    /// more of it. It must not overlap a ROM added with `add_rom`.
    pub fn add_shadow_rom(&mut self, base: u64, data: &[u8]) -> Result<(), MemError> {
        let len = data.len() as u64;
        let bad = MemError::BadRom { base, len };
        let off = base.wrapping_sub(SHADOW_BASE);
        if len == 0 || off >= SHADOW_LEN || len > SHADOW_LEN - off {
            return Err(bad);
        }
        let idx = match self.shadow {
            Some(s) => s.rom,
            None => {
                let (b, l) = (SHADOW_BASE, SHADOW_LEN);
                if self
                    .roms
                    .iter()
                    .any(|r| b < r.base + r.data.len() as u64 && r.base < b + l)
                {
                    return Err(bad);
                }
                self.roms.push(Rom {
                    base: SHADOW_BASE,
                    data: vec![0xFF; SHADOW_LEN as usize],
                });
                let rom = self.roms.len() - 1;
                self.shadow = Some(Shadow {
                    rom,
                    read_ram: 0,
                    write_ram: 0,
                });
                rom
            }
        };
        let o = off as usize;
        self.roms[idx].data[o..o + data.len()].copy_from_slice(data);
        self.code_gen += 1;
        self.code_written = true;
        Ok(())
    }

    /// Set where reads and writes of every PAM segment overlapping
    /// [base, base+len) go: reads to RAM (`read_ram`) or to the shadowable
    /// ROM; writes to RAM (`write_ram`) or nowhere. Does nothing without a
    /// shadowable ROM or outside 0xC0000-0xFFFFF. Decoded code is
    /// invalidated (`code_gen`); the caller must also flush the MMU's
    /// cached translations (`Mmu::flush_all`), which may point at the RAM
    /// of a segment that is no longer read/write RAM.
    pub fn set_shadow(&mut self, base: u64, len: u64, read_ram: bool, write_ram: bool) {
        let Some(s) = self.shadow.as_mut() else {
            return;
        };
        let end = base.saturating_add(len);
        for n in 0..(SHADOW_LEN / SHADOW_SEGMENT) {
            let sb = SHADOW_BASE + n * SHADOW_SEGMENT;
            if sb < end && base < sb + SHADOW_SEGMENT {
                let bit = 1u16 << n;
                s.read_ram = if read_ram {
                    s.read_ram | bit
                } else {
                    s.read_ram & !bit
                };
                s.write_ram = if write_ram {
                    s.write_ram | bit
                } else {
                    s.write_ram & !bit
                };
            }
        }
        self.code_gen += 1;
        self.code_written = true;
        self.last_dirty = usize::MAX;
    }

    /// (read_ram, write_ram) of the PAM segment holding `paddr`, or `None`
    /// outside the window or without a shadowable ROM.
    pub fn shadow_mode(&self, paddr: u64) -> Option<(bool, bool)> {
        let s = self.shadow?;
        let bit = Shadow::bit(paddr)?;
        Some((s.read_ram & bit != 0, s.write_ram & bit != 0))
    }

    /// True when `paddr` lies in a shadow segment whose writes are dropped.
    #[inline]
    fn shadow_drops_write(&self, paddr: u64) -> bool {
        match (self.shadow, Shadow::bit(paddr)) {
            (Some(s), Some(bit)) => s.write_ram & bit == 0,
            _ => false,
        }
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
                    // A shadow segment reading RAM: what follows decides.
                    if let Some(s) = self.shadow.filter(|s| s.rom == i) {
                        if Shadow::bit(paddr).is_some_and(|b| s.read_ram & b != 0) {
                            break;
                        }
                    }
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
        // A shadow segment counts as RAM only in read/write-RAM mode.
        let shadow_rw = self.shadow_mode(f) == Some((true, true));
        let shadow = self.shadow.map(|s| s.rom);
        !self
            .roms
            .iter()
            .enumerate()
            .any(|(i, r)| hit(r.base, r.data.len() as u64) && !(shadow == Some(i) && shadow_rw))
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
            Region::Ram(_) if self.shadow_drops_write(paddr) => self.stats.rom_writes += 1,
            Region::Ram(o) => {
                self.ram[o] = v;
                self.mark_written(o);
            }
            // A shadow segment in write-RAM mode: the write lands in the
            // RAM under the ROM that reads still see.
            Region::Rom(i, _)
                if self.shadow.is_some_and(|s| s.rom == i)
                    && !self.shadow_drops_write(paddr)
                    && paddr < self.ram.len() as u64 =>
            {
                let o = paddr as usize;
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
                    && matches!(self.region(paddr + 3), Region::Ram(_))
                    && !self.shadow_drops_write(paddr)
                    && !self.shadow_drops_write(paddr + 3) =>
            {
                let o = paddr as usize;
                self.ram[o..o + 4].copy_from_slice(&v.to_le_bytes());
                self.dirty.set(o >> PAGE_SHIFT, true);
                self.dirty.set((o + 3) >> PAGE_SHIFT, true);
                self.note_code_write(o, o + 3, false);
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
            self.note_code_write(off, last, false);
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
        self.note_code_write(off, off, true);
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
    /// against the code frames; `logged`: a write to a watched frame is
    /// logged as a watch hit.
    #[inline]
    fn note_code_write(&mut self, first: usize, last: usize, logged: bool) {
        let (f0, f1) = (first >> PAGE_SHIFT, last >> PAGE_SHIFT);
        self.note_code_frame(f0, logged);
        if f1 != f0 {
            self.note_code_frame(f1, logged);
        }
    }

    #[inline]
    fn note_code_frame(&mut self, f: usize, logged: bool) {
        if self.code_frames.get(f).copied().unwrap_or(false) {
            self.code_gen += 1;
            if logged || !self.watched.get(f).is_some_and(|b| *b) {
                self.seen_code_writes += 1;
            }
            if f == self.code_frame {
                self.code_written = true;
            }
        }
    }

    // ---- dirty bitmap -------------------------------------------------

    pub fn is_dirty(&self, frame: u64) -> bool {
        self.dirty.get(frame as usize).map(|b| *b).unwrap_or(false)
    }
    /// Mark RAM frame `frame` written (the MMU does it when it lets an
    /// engine store to the frame directly).
    pub fn mark_dirty(&mut self, frame: u64) {
        if let Some(mut b) = self.dirty.get_mut(frame as usize) {
            *b = true;
        }
    }

    /// Frames written through this object since the last call, cleared on
    /// return. With an engine running, use `Vm::take_dirty`, which also
    /// covers stores the engine made through the shadow page table.
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
    fn watched_code_gen_counts_only_changes_behind_the_watch() {
        let mut m = GuestMemory::new(0x10000).unwrap();
        m.mark_code_frame(2);
        m.mark_code_frame(3);
        m.set_watched(3, true);
        let (gen, watched) = (m.code_gen, m.watched_code_gen());
        // A code frame nobody watches, and a watched one (logged as a
        // hit): both bump code_gen, neither the watched generation.
        m.write_u8(0x2004, 7);
        m.write_u8(0x3004, 7);
        assert_eq!(m.code_gen, gen + 2);
        assert_eq!(m.watched_code_gen(), watched);
        // An unlogged page-table update in the watched code frame, and a
        // raw host write: both are changes behind the watch.
        m.write_u32_unlogged(0x3010, 5);
        assert_eq!(m.watched_code_gen(), watched + 1);
        m.ram_mut()[0x3020] = 1;
        assert_eq!(m.watched_code_gen(), watched + 2);
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(GuestMemory::new(0).is_err());
        assert!(GuestMemory::new(4097).is_err());
    }
}

#[cfg(test)]
mod shadow_tests {
    use super::*;

    /// 2 MiB of RAM with a 128 KiB shadowable ROM at 0xE0000 whose bytes
    /// are 0xA5, and RAM under it holding 0x11 (written while write-RAM).
    fn machine() -> GuestMemory {
        let mut m = GuestMemory::new(2 << 20).unwrap();
        m.add_shadow_rom(0xE0000, &[0xA5; 0x20000]).unwrap();
        m
    }

    #[test]
    fn reset_state_reads_rom_and_drops_writes() {
        let mut m = machine();
        assert_eq!(m.shadow_mode(0xF0000), Some((false, false)));
        assert_eq!(m.read_u8(0xFFFF0), 0xA5);
        // Nothing loaded at 0xC0000: the empty window reads all ones.
        assert_eq!(m.read_u8(0xC0000), 0xFF);
        m.write_u8(0xFFFF0, 0x11);
        assert_eq!(m.read_u8(0xFFFF0), 0xA5);
        assert_eq!(m.stats.rom_writes, 1);
        assert_eq!(m.ram()[0xFFFF0], 0);
        assert!(!m.frame_is_ram(0xF0000));
        assert!(matches!(m.region(0xF0000), Region::Rom(..)));
    }

    #[test]
    fn write_only_mode_writes_ram_under_the_rom() {
        let mut m = machine();
        m.set_shadow(0xF0000, 0x10000, false, true);
        m.write_u8(0xF1234, 0x11);
        assert_eq!(m.read_u8(0xF1234), 0xA5); // reads still see the ROM
        assert_eq!(m.ram()[0xF1234], 0x11);
        assert!(!m.frame_is_ram(0xF1000));
    }

    #[test]
    fn read_write_mode_is_plain_ram() {
        let mut m = machine();
        m.set_shadow(0xF0000, 0x10000, true, true);
        m.write_u32(0xF0010, 0xDEADBEEF);
        assert_eq!(m.read_u32(0xF0010), 0xDEADBEEF);
        assert_eq!(m.region(0xF0010), Region::Ram(0xF0010));
        assert!(m.frame_is_ram(0xF0000));
        assert!(m.is_dirty(0xF0));
        // The E segments were not touched: still ROM.
        assert_eq!(m.read_u8(0xEFFFF), 0xA5);
        assert!(!m.frame_is_ram(0xEF000));
    }

    #[test]
    fn read_only_mode_reads_ram_and_drops_writes() {
        let mut m = machine();
        m.set_shadow(0xE4000, 0x4000, true, true);
        m.write_u8(0xE4000, 0x22);
        m.set_shadow(0xE4000, 0x4000, true, false);
        m.write_u8(0xE4000, 0x33);
        m.write_u32_unlogged(0xE4010, 0x4444_4444);
        assert_eq!(m.read_u8(0xE4000), 0x22);
        assert_eq!(m.read_u32(0xE4010), 0);
        assert_eq!(m.stats.rom_writes, 5);
        assert!(!m.frame_is_ram(0xE4000));
        // 16 KiB granule: 0xE8000 is another segment, still ROM.
        assert_eq!(m.read_u8(0xE8000), 0xA5);
        assert_eq!(m.read_u8(0xE3FFF), 0xA5);
    }

    #[test]
    fn pam_registers_decode_per_datasheet() {
        // PAM0 = 0x30: 0xF0000-0xFFFFF read/write DRAM.
        assert_eq!(
            pam_segments(0x59, 0x30),
            vec![(0xF0000, 0x10000, true, true)]
        );
        // PAM1 = 0x12: C0000-C3FFF write-only, C4000-C7FFF read-only.
        assert_eq!(
            pam_segments(0x5A, 0x12),
            vec![
                (0xC0000, 0x4000, false, true),
                (0xC4000, 0x4000, true, false)
            ]
        );
        // PAM6 covers E8000-EFFFF.
        assert_eq!(pam_segments(0x5F, 0)[1].0, 0xEC000);
        assert!(pam_segments(0x58, 0xFF).is_empty());
        let mut m = machine();
        for (b, l, r, w) in pam_segments(0x5E, 0x33) {
            m.set_shadow(b, l, r, w);
        }
        assert_eq!(m.shadow_mode(0xE0000), Some((true, true)));
        assert_eq!(m.shadow_mode(0xE7FFF), Some((true, true)));
        assert_eq!(m.shadow_mode(0xE8000), Some((false, false)));
    }

    #[test]
    fn bad_shadow_roms_are_refused() {
        let mut m = GuestMemory::new(2 << 20).unwrap();
        assert!(m.add_shadow_rom(0xBFFFF, &[0; 2]).is_err());
        assert!(m.add_shadow_rom(0xFFFFF, &[0; 2]).is_err());
        assert!(m.add_shadow_rom(u64::MAX, &[0; 2]).is_err());
        m.add_rom(0xF0000, vec![0; 0x10000]).unwrap();
        assert!(m.add_shadow_rom(0xC0000, &[0; 2]).is_err());
        // Without a shadow ROM, set_shadow is a no-op.
        m.set_shadow(0xF0000, 0x10000, true, true);
        assert_eq!(m.shadow_mode(0xF0000), None);
    }
}
