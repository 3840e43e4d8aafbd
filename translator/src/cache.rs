//! The translation cache: the translated blocks, their lookup by key (a
//! direct-mapped table by linear EIP in front of a `HashMap`), the blocks
//! of each code frame, direct chaining between blocks and its undoing,
//! and the code memory's eviction policy.
//!
//! Eviction: the code memory above the shared stubs is split into
//! `regions` filled round-robin. When the current region has no room for
//! a block, the next one is emptied (only its blocks are dropped, with
//! every jump chained into them unpatched) and filling goes on there; so
//! a full cache drops its oldest 1/N instead of everything (QEMU flushes
//! all; this is the FIFO-of-regions scheme of e.g. Dynamo's fragment
//! cache).
//!
//! It does not decide when to translate or chain (the dispatcher in
//! `engine` does), nor what code a block holds (`codegen`).

use std::collections::HashMap;

use umbra_core::mmu::shadow::FrameHasherBuilder;

use umbra_core::mem::PAGE_SHIFT;
use umbra_core::vm::Vm;

use crate::block::{BlockKey, GuestBlock};
use crate::codegen::branch::ExitSite;
use crate::codegen::flow::{ib_set, IbEntry, IbSet, IB_EMPTY, IB_EMPTY_SET, IB_SETS};
use crate::engine::TranslatorStats;
use crate::exec::ExecMem;

/// Entries of the direct-mapped lookup table (a power of two).
const FAST_ENTRIES: usize = 16384;
/// No block in a direct-mapped entry.
const NO_BLOCK: u32 = u32::MAX;
/// Most regions of the code memory.
const MAX_REGIONS: usize = 16;
/// Fewest bytes in a region (a large block is a few KiB).
const MIN_REGION: usize = 16 << 10;

/// One chainable exit of a block and where it is chained to.
pub struct Exit {
    pub site: ExitSite,
    /// (block id, serial) its jump goes to, or `None` (to its stub).
    pub chained: Option<(usize, u64)>,
}

/// One translated block.
pub struct Block {
    pub key: BlockKey,
    /// Host address of its code.
    pub code: usize,
    /// `GuestMemory::watched_code_gen` when its bytes last matched memory
    /// (writes to its frame under the watch drop it instead).
    pub gen: u64,
    /// Unique over the cache's life: tells a reused id apart.
    pub serial: u64,
    pub guest: GuestBlock,
    pub exits: Vec<Exit>,
    /// Exits chained to this block: (block id, exit index, serial).
    incoming: Vec<(usize, usize, u64)>,
}

/// The blocks and the code memory they live in.
pub struct Cache {
    pub code: ExecMem,
    blocks: Vec<Option<Block>>,
    free: Vec<usize>,
    /// Keys are a few u32s: a multiply-and-fold hash, not SipHash (every
    /// dispatcher lookup that misses `fast` hashes one).
    map: HashMap<BlockKey, usize, FrameHasherBuilder>,
    /// Direct-mapped (key, id) by linear EIP, in front of `map`.
    fast: Box<[(BlockKey, u32)]>,
    /// RAM frame -> blocks decoded from it.
    by_frame: HashMap<u32, Vec<usize>, FrameHasherBuilder>,
    /// Blocks dropped while generated code may still run them (their
    /// code refers to their `InsnMeta`s), freed when it has returned.
    dead: Vec<Block>,
    next_serial: u64,
    /// Offset of the first region (above the stubs), and region size.
    region_base: usize,
    region_size: usize,
    regions: usize,
    /// The region being filled.
    cur: usize,
    /// Blocks of each region: (id, serial).
    region_blocks: Vec<Vec<(usize, u64)>>,
    /// The inline branch-target table generated code reads
    /// (`codegen::flow`): only live blocks, by full key.
    ib: Box<[IbSet]>,
}

fn fast_slot(lin: u32) -> usize {
    ((lin ^ (lin >> 12)) as usize) & (FAST_ENTRIES - 1)
}

const EMPTY_KEY: BlockKey = BlockKey {
    phys: 0,
    lin: 0,
    cs_base: 0,
    mode: 0,
    cs_limit: 0,
};

impl Cache {
    /// A cache over `code`, whose first `stub_bytes` hold the stubs.
    pub fn new(mut code: ExecMem, stub_bytes: usize) -> Self {
        let region_base = stub_bytes.next_multiple_of(16);
        let usable = code.size().saturating_sub(region_base);
        let regions = (usable / MIN_REGION).clamp(1, MAX_REGIONS);
        let region_size = (usable / regions) & !15;
        code.set_cursor(region_base);
        Cache {
            code,
            blocks: Vec::new(),
            free: Vec::new(),
            map: HashMap::default(),
            fast: vec![(EMPTY_KEY, NO_BLOCK); FAST_ENTRIES].into_boxed_slice(),
            by_frame: HashMap::default(),
            dead: Vec::new(),
            next_serial: 1,
            region_base,
            region_size,
            regions,
            cur: 0,
            region_blocks: vec![Vec::new(); regions],
            ib: vec![IB_EMPTY_SET; IB_SETS].into_boxed_slice(),
        }
    }

    pub fn block(&self, id: usize) -> Option<&Block> {
        self.blocks.get(id).and_then(|b| b.as_ref())
    }

    pub fn block_mut(&mut self, id: usize) -> Option<&mut Block> {
        self.blocks.get_mut(id).and_then(|b| b.as_mut())
    }

    /// Number of regions of the code memory.
    pub fn regions(&self) -> usize {
        self.regions
    }

    /// The block with `key`, if any (valid or not: the caller checks
    /// `gen`).
    #[inline]
    pub fn find(&mut self, key: &BlockKey) -> Option<usize> {
        let slot = fast_slot(key.lin);
        let (k, id) = self.fast[slot];
        if id != NO_BLOCK && k == *key {
            return Some(id as usize);
        }
        let id = *self.map.get(key)?;
        self.fast[slot] = (*key, id as u32);
        Some(id)
    }

    /// The inline branch-target table, for `JitCtx::ib_table`.
    pub fn ib_table(&self) -> *const IbSet {
        self.ib.as_ptr()
    }

    /// The inline table's set where block `id` would go.
    pub fn ib_set_for(&self, id: usize) -> Option<IbSet> {
        let b = self.block(id)?;
        Some(self.ib[ib_set(b.key.lin)])
    }

    /// Record live block `id` in the inline branch-target table (its
    /// bytes must match memory now: the caller checked `gen`).
    pub fn ib_insert(&mut self, id: usize) {
        let Some(b) = self.block(id) else {
            return;
        };
        let k = b.key;
        // Only blocks of a flat CS: the table's users all run under that
        // limit (`flow::goes_off_page`), and the key compare in generated
        // code does not look at the limit.
        if k.cs_limit != u32::MAX {
            return;
        }
        let entry = IbEntry {
            lin: k.lin,
            phys: k.phys,
            mode: k.mode,
            cs_base: k.cs_base,
            code: b.code as u64,
            pad: 0,
        };
        // Way 0 is the newest: an entry for the same key is replaced,
        // else the older of the two goes.
        let set = &mut self.ib[ib_set(k.lin)];
        let same = |e: &IbEntry| {
            (e.lin, e.phys, e.mode, e.cs_base) == (entry.lin, entry.phys, entry.mode, entry.cs_base)
        };
        if !same(&set.ways[0]) {
            set.ways[1] = set.ways[0];
        }
        set.ways[0] = entry;
    }

    /// Empty the inline branch-target table (memory changed behind the
    /// write-watch: no block is known valid any more).
    pub fn ib_clear(&mut self) {
        self.ib.fill(IB_EMPTY_SET);
    }

    /// The id the next `insert` uses.
    pub fn next_id(&self) -> usize {
        self.free.last().copied().unwrap_or(self.blocks.len())
    }

    /// Room for `len` bytes of code in the current region, emptying the
    /// next region when it is full. `None` if a block of `len` bytes can
    /// never fit. The room's address is `code.next_addr()` before the
    /// call if it returns `Some(false)`, or after it if `Some(true)` (a
    /// region was emptied: the caller emits again for the new address).
    pub fn make_room(
        &mut self,
        vm: &mut Vm,
        len: usize,
        stats: &mut TranslatorStats,
    ) -> Option<bool> {
        if len > self.region_size {
            return None;
        }
        let end = self.region_base + (self.cur + 1) * self.region_size;
        let start = self.code.used().next_multiple_of(16);
        if start + len <= end {
            return Some(false);
        }
        self.cur = (self.cur + 1) % self.regions;
        self.evict_region(vm, self.cur, stats);
        self.code
            .set_cursor(self.region_base + self.cur * self.region_size);
        Some(true)
    }

    /// Allocate what `make_room` found room for.
    pub fn alloc(&mut self, len: usize) -> Option<usize> {
        let end = self.region_base + (self.cur + 1) * self.region_size;
        self.code.alloc_below(len, end)
    }

    /// Add a block (its code already written at `code`), under id
    /// `next_id()`.
    pub fn insert(
        &mut self,
        vm: &mut Vm,
        key: BlockKey,
        code: usize,
        guest: GuestBlock,
        sites: Vec<ExitSite>,
    ) -> usize {
        let serial = self.next_serial;
        self.next_serial += 1;
        let cross = guest.cross;
        let b = Block {
            key,
            code,
            gen: vm.mem.watched_code_gen(),
            serial,
            guest,
            exits: sites
                .into_iter()
                .map(|site| Exit {
                    site,
                    chained: None,
                })
                .collect(),
            incoming: Vec::new(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.blocks[id] = Some(b);
                id
            }
            None => {
                self.blocks.push(Some(b));
                self.blocks.len() - 1
            }
        };
        self.map.insert(key, id);
        self.fast[fast_slot(key.lin)] = (key, id as u32);
        for frame in frames(key.phys, cross) {
            vm.mmu.watch_frame(&mut vm.mem, frame as u64);
            vm.mem.mark_code_frame(frame as usize);
            self.by_frame.entry(frame).or_default().push(id);
        }
        self.region_blocks[self.cur].push((id, serial));
        id
    }

    /// Chain exit `idx` of block `src` (with serial `serial`) to block
    /// `dst` if that is safe: both live, the target is the exit's EIP on
    /// the same guest linear page as `src`'s start (so the same mapping
    /// holds whenever `src` runs) with the same mode and CS base, within
    /// `cs_limit`. Returns whether it chained.
    pub fn chain(
        &mut self,
        src: usize,
        idx: usize,
        serial: u64,
        dst: usize,
        cs_limit: u32,
        stats: &mut TranslatorStats,
    ) -> bool {
        let Some(t) = self.block(dst) else {
            return false;
        };
        let (tkey, tcode, tserial) = (t.key, t.code, t.serial);
        let Some(s) = self.block(src).filter(|s| s.serial == serial) else {
            return false;
        };
        let Some(x) = s.exits.get(idx) else {
            return false;
        };
        let teip = tkey.lin.wrapping_sub(tkey.cs_base);
        let ok = x.chained.is_none()
            && teip == x.site.target_eip
            && teip <= cs_limit
            && (s.key.lin ^ tkey.lin) >> PAGE_SHIFT == 0
            && (s.key.phys ^ tkey.phys) >> PAGE_SHIFT == 0
            && s.key.mode == tkey.mode
            && s.key.cs_base == tkey.cs_base
            && s.key.cs_limit == tkey.cs_limit;
        if !ok {
            return false;
        }
        let site = x.site;
        patch(&mut self.code, site.rel_at, tcode);
        if let Some(s) = self.block_mut(src) {
            s.exits[idx].chained = Some((dst, tserial));
        }
        if let Some(t) = self.block_mut(dst) {
            t.incoming.push((src, idx, serial));
        }
        stats.chains += 1;
        true
    }

    /// Drop block `id`: out of the lookups and its frame's list, every
    /// jump into it back to its stub, its own chains forgotten by their
    /// targets. `running`: generated code may still be running it (keep
    /// its code and metadata until `reap`).
    fn drop_block(
        &mut self,
        vm: &mut Vm,
        id: usize,
        running: bool,
        stats: &mut TranslatorStats,
    ) -> Option<()> {
        let b = self.blocks.get_mut(id)?.take()?;
        self.free.push(id);
        if self.map.get(&b.key) == Some(&id) {
            self.map.remove(&b.key);
        }
        let slot = fast_slot(b.key.lin);
        if self.fast[slot].1 == id as u32 {
            self.fast[slot].1 = NO_BLOCK;
        }
        for way in self.ib[ib_set(b.key.lin)].ways.iter_mut() {
            if way.code == b.code as u64 {
                *way = IB_EMPTY;
            }
        }
        for &(src, idx, serial) in &b.incoming {
            let Some(s) = self.blocks.get_mut(src).and_then(|s| s.as_mut()) else {
                continue;
            };
            if s.serial != serial {
                continue;
            }
            let Some(x) = s.exits.get_mut(idx) else {
                continue;
            };
            if x.chained == Some((id, b.serial)) {
                x.chained = None;
                let site = x.site;
                patch(&mut self.code, site.rel_at, site.stub);
                stats.unchains += 1;
            }
        }
        for (idx, x) in b.exits.iter().enumerate() {
            if let Some((t, tserial)) = x.chained {
                if let Some(t) = self.blocks.get_mut(t).and_then(|t| t.as_mut()) {
                    if t.serial == tserial {
                        t.incoming.retain(|&e| e != (id, idx, b.serial));
                    }
                }
            }
        }
        for frame in frames(b.key.phys, b.guest.cross) {
            if let Some(ids) = self.by_frame.get_mut(&frame) {
                ids.retain(|&i| i != id);
                if ids.is_empty() {
                    self.by_frame.remove(&frame);
                    vm.mmu.unwatch_frame(&mut vm.mem, frame as u64);
                }
            }
        }
        if running {
            self.dead.push(b);
        }
        Some(())
    }

    /// Drop block `id` from the dispatcher (no generated code runs).
    pub fn discard(&mut self, vm: &mut Vm, id: usize, stats: &mut TranslatorStats) {
        if self.drop_block(vm, id, false, stats).is_some() {
            stats.invalidations += 1;
        }
    }

    /// Compare the bytes of every block on RAM frame `frame` with memory;
    /// if all match, mark them valid at `gen` and return true. Direct
    /// chains never leave a frame, so a block entered after this check
    /// only chains into checked blocks.
    pub fn revalidate_frame(&mut self, vm: &Vm, frame: u32, gen: u64) -> bool {
        let Some(ids) = self.by_frame.get(&frame) else {
            return false;
        };
        for &id in ids {
            let Some(b) = self.blocks.get(id).and_then(|b| b.as_ref()) else {
                return false;
            };
            let bytes = &b.guest.bytes[..];
            let phys = b.key.phys as usize;
            let (first, rest) = match b.guest.cross {
                Some(_) => bytes.split_at(((phys | 0xFFF) + 1 - phys).min(bytes.len())),
                None => (bytes, &[][..]),
            };
            if vm.mem.ram_slice(phys, first.len()) != Some(first) {
                return false;
            }
            if let Some(p2) = b.guest.cross {
                if vm.mem.ram_slice(p2 as usize, rest.len()) != Some(rest) {
                    return false;
                }
            }
        }
        for &id in ids {
            if let Some(b) = self.blocks.get_mut(id).and_then(|b| b.as_mut()) {
                b.gen = gen;
            }
        }
        true
    }

    /// Drop every block on RAM frame `frame` (it was written) and stop
    /// watching it.
    pub fn invalidate_frame(&mut self, vm: &mut Vm, frame: u64, stats: &mut TranslatorStats) {
        let Some(ids) = self.by_frame.get(&(frame as u32)).cloned() else {
            return;
        };
        for id in ids {
            if self.drop_block(vm, id, true, stats).is_some() {
                stats.invalidations += 1;
            }
        }
        if self.by_frame.remove(&(frame as u32)).is_some() {
            vm.mmu.unwatch_frame(&mut vm.mem, frame);
        }
    }

    /// Drop every block whose code is in region `r` (no generated code
    /// runs: called from the dispatcher).
    fn evict_region(&mut self, vm: &mut Vm, r: usize, stats: &mut TranslatorStats) {
        stats.region_evictions += 1;
        if self.regions == 1 {
            stats.flushes += 1;
        }
        let list = std::mem::take(&mut self.region_blocks[r]);
        for (id, serial) in list {
            if self.block(id).is_some_and(|b| b.serial == serial)
                && self.drop_block(vm, id, false, stats).is_some()
            {
                stats.evictions += 1;
            }
        }
    }

    /// Free what `drop_block` kept for code that has now returned.
    pub fn reap(&mut self) {
        self.dead.clear();
    }
}

/// The RAM frames a block's bytes come from: its first byte's, and the
/// next linear page's (RAM offset `cross`) where its last instruction
/// runs onto it.
fn frames(phys: u32, cross: Option<u32>) -> impl Iterator<Item = u32> {
    let first = phys >> PAGE_SHIFT;
    let second = cross.map(|p| p >> PAGE_SHIFT).filter(|&f| f != first);
    std::iter::once(first).chain(second)
}

/// Point the rel32 at `rel_at` to `target`.
fn patch(code: &mut ExecMem, rel_at: usize, target: usize) {
    let rel = (target as i64 - (rel_at as i64 + 4)) as i32;
    code.write(rel_at, &rel.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_core::mem::GuestMemory;

    #[test]
    fn regions_fill_round_robin() {
        // 64 KiB with 256 bytes of stubs: 65,280 bytes in three regions
        // of 21,760 (the 16 KiB minimum allows three).
        let mut c = Cache::new(ExecMem::new(64 << 10).unwrap(), 256);
        let mut vm = Vm::new(GuestMemory::new(1 << 20).unwrap());
        let mut st = TranslatorStats::default();
        assert_eq!(c.regions(), 3);
        assert_eq!(c.region_size, 21_760);
        let base = c.code.base();
        // Larger than a region: never fits.
        assert_eq!(c.make_room(&mut vm, 21_761, &mut st), None);
        // Region 0 is [256, 22,016): after 20,000 bytes at 256 (the next
        // start, 20,256, is 16-aligned), 1,760 bytes still fit, 1,761 not.
        assert_eq!(c.make_room(&mut vm, 20_000, &mut st), Some(false));
        assert_eq!(c.alloc(20_000), Some(base + 256));
        assert_eq!(c.make_room(&mut vm, 1_760, &mut st), Some(false));
        assert_eq!(c.make_room(&mut vm, 1_761, &mut st), Some(true));
        // Now filling region 1, which starts at 22,016.
        assert_eq!(c.alloc(1_761), Some(base + 22_016));
        assert_eq!(st.region_evictions, 1);
        // Two more wraps come back to region 0.
        assert_eq!(c.make_room(&mut vm, 21_000, &mut st), Some(true));
        assert_eq!(c.alloc(21_000), Some(base + 256 + 2 * 21_760));
        assert_eq!(st.region_evictions, 2);
        assert_eq!(c.make_room(&mut vm, 21_000, &mut st), Some(true));
        assert_eq!(c.alloc(21_000), Some(base + 256));
        assert_eq!(st.region_evictions, 3);
        assert_eq!(st.flushes, 0);
    }
}
