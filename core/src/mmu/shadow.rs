//! Shadow paging: the cached results of guest page walks that engines use
//! instead of walking (DESIGN.md "Shadow paging and the shadow CR3").
//!
//! It owns the shadow contexts (one per guest address space, cached by
//! guest CR3, least recently used recycled), the shared part holding global
//! mappings, the direct-mapped lookup table of each context and the
//! bookkeeping that keeps it coherent: for every entry the page-table
//! frames it was derived from, and per context a reverse map from such a
//! frame to the slots derived from it, so that a guest write to a
//! page-table frame drops exactly the entries derived from it. It does not walk (`walk.rs`) and does not decide when
//! to flush (`Mmu` does, following the architecture).
//!
//! Entry layout (32 bytes, read inline by generated code):
//!
//! ```text
//! tag:    bits 31:12 linear page, bits 11:0 permission bits (perm::*),
//!         one per access kind; 0 = empty
//! ram:    RAM offset of the 4 KiB frame (only frames that are plain RAM)
//! hit:    ((tag ^ lin) & !0xFFF) | (!tag >> perm_shift(acc) & 1) == 0
//! pages:  for translated code, per data access kind (supervisor read,
//!         supervisor write, user read, user write): the linear page if
//!         `tag` grants that access, else NO_PAGE (never page aligned),
//!         so that one compare with the page of an access tests both
//! host:   host address of the frame minus the linear page (wrapping):
//!         host address of `lin` = host + lin, valid only on a hit
//! ```

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use super::Access;

/// Entries per context's lookup table (covers 16 MiB of linear space
/// without conflicts in any aligned 16 MiB region).
pub const SLOTS: usize = 4096;
/// Size of an `Entry` (generated code scales slots by it).
pub const ENTRY_BYTES: usize = 32;
/// `Entry::pages` value of an access kind the entry does not grant.
pub const NO_PAGE: u32 = 1;
/// Contexts cached by guest CR3.
pub const CONTEXTS: usize = 8;

/// Table slot of linear address `lin`: the low 12 bits of the page number
/// (three host instructions in generated code, which computes it for
/// every memory access). Two consecutive pages (0xFFFFF and 0 included)
/// never share a slot, which the translator's inline lookup relies on.
#[inline(always)]
pub fn slot(lin: u32) -> usize {
    (lin >> 12) as usize & (SLOTS - 1)
}

/// Bit index in `Entry::tag` of the permission for `acc`: the #PF-code
/// bits W (1), U (2) and I/D (4) shifted down by one.
#[inline(always)]
pub fn perm_shift(acc: Access) -> u32 {
    (acc.0 & 0x16) >> 1
}

/// Permission bits in the low 12 bits of `Entry::tag`.
pub mod perm {
    /// Supervisor data read.
    pub const SUP_READ: u32 = 1 << 0;
    /// Supervisor data write.
    pub const SUP_WRITE: u32 = 1 << 1;
    /// User data read.
    pub const USER_READ: u32 = 1 << 2;
    /// User data write.
    pub const USER_WRITE: u32 = 1 << 3;
    /// Supervisor instruction fetch.
    pub const SUP_FETCH: u32 = 1 << 8;
    /// User instruction fetch.
    pub const USER_FETCH: u32 = 1 << 10;
    /// Both write permissions.
    pub const WRITES: u32 = SUP_WRITE | USER_WRITE;
    /// Everything (identity mapping with paging off).
    pub const ALL: u32 = SUP_READ | SUP_WRITE | USER_READ | USER_WRITE | SUP_FETCH | USER_FETCH;
}

/// One lookup-table entry. `pages` and `host` are derived from `tag` and
/// `ram` (`Entry::new`, `revoke_writes`); nothing else writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct Entry {
    pub tag: u32,
    pub ram: u32,
    pub pages: [u32; 4],
    pub host: u64,
}

impl Default for Entry {
    /// The empty entry: no tag grants anything, no page matches.
    fn default() -> Self {
        Entry {
            tag: 0,
            ram: 0,
            pages: [NO_PAGE; 4],
            host: 0,
        }
    }
}

/// The permission bit of each `Entry::pages` slot, in order.
pub const PAGE_KINDS: [u32; 4] = [
    perm::SUP_READ,
    perm::SUP_WRITE,
    perm::USER_READ,
    perm::USER_WRITE,
];

impl Entry {
    /// The entry for linear page `lin` with permission bits `perms`,
    /// mapped to RAM offset `ram`, guest RAM starting at host address
    /// `host_base`.
    pub fn new(lin: u32, perms: u32, ram: u32, host_base: u64) -> Self {
        let page = lin & !0xFFF;
        let ram = ram & !0xFFF;
        let mut e = Entry {
            tag: page | (perms & 0xFFF),
            ram,
            pages: [NO_PAGE; 4],
            host: host_base.wrapping_add(ram as u64).wrapping_sub(page as u64),
        };
        e.derive_pages();
        e
    }

    fn derive_pages(&mut self) {
        let page = self.tag & !0xFFF;
        for (p, bit) in self.pages.iter_mut().zip(PAGE_KINDS) {
            *p = if self.tag & bit != 0 { page } else { NO_PAGE };
        }
    }

    /// Take both write permissions away.
    pub fn revoke_writes(&mut self) {
        self.tag &= !perm::WRITES;
        self.derive_pages();
    }

    /// RAM offset of `lin` if this entry maps it for `acc`.
    #[inline(always)]
    pub fn hit(self, lin: u32, acc: Access) -> Option<usize> {
        let miss = ((self.tag ^ lin) & !0xFFF) | ((!self.tag >> perm_shift(acc)) & 1);
        if miss == 0 {
            Some(self.ram as usize | (lin & 0xFFF) as usize)
        } else {
            None
        }
    }
    #[inline]
    fn page_is(self, lin: u32) -> bool {
        self.tag != 0 && (self.tag ^ lin) & !0xFFF == 0
    }
}

/// Hasher for frame numbers: a multiply and a fold. They are small
/// integers looked up on every write-watch hit, where SipHash would cost
/// more than the lookup it serves.
#[derive(Default)]
pub struct FrameHasher(u64);

impl Hasher for FrameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ b as u64);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

/// Builds `FrameHasher`s.
pub type FrameHasherBuilder = BuildHasherDefault<FrameHasher>;
/// A set of frame numbers.
pub type FrameSet = HashSet<u32, FrameHasherBuilder>;

type Table = [Entry; SLOTS];
/// Page-table frames each entry was derived from.
type Deps = [[u32; 2]; SLOTS];
/// Filler for an unused dependency.
pub const NO_DEP: u32 = u32::MAX;

/// Reverse map: page-table frame -> slots whose entries were derived from
/// it. Lists may hold stale slots (entries since overwritten); users check
/// `Deps` before dropping, and `add` compacts what grows too long.
#[derive(Default)]
struct Rmap(HashMap<u32, Vec<u16>, FrameHasherBuilder>);

impl Rmap {
    fn add(&mut self, deps: [u32; 2], slot: usize, all: &Deps) {
        for f in deps {
            if f == NO_DEP {
                continue;
            }
            let v = self.0.entry(f).or_default();
            v.push(slot as u16);
            if v.len() > SLOTS {
                v.sort_unstable();
                v.dedup();
                v.retain(|&s| all[s as usize & (SLOTS - 1)].contains(&f));
            }
        }
        if self.0.len() > 2 * SLOTS {
            self.rebuild(all);
        }
    }

    /// Rebuild from `Deps`, dropping stale frames and slots.
    fn rebuild(&mut self, all: &Deps) {
        self.0.clear();
        for (s, d) in all.iter().enumerate() {
            for &f in d.iter().filter(|&&f| f != NO_DEP) {
                self.0.entry(f).or_default().push(s as u16);
            }
        }
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    /// Drop from `table` every entry derived from `frame`; whether the
    /// map knew the frame.
    fn drop_frame(&mut self, frame: u32, table: &mut Table, deps: &mut Deps) -> bool {
        let Some(slots) = self.0.remove(&frame) else {
            return false;
        };
        for s in slots {
            let s = s as usize & (SLOTS - 1);
            if deps[s].contains(&frame) {
                table[s] = Entry::default();
                deps[s] = [NO_DEP; 2];
            }
        }
        true
    }
}

fn new_table() -> Box<Table> {
    Box::new([Entry::default(); SLOTS])
}
fn new_deps() -> Box<Deps> {
    Box::new([[NO_DEP; 2]; SLOTS])
}

/// One guest address space's cached translations.
struct Context {
    /// The guest CR3 (masked) this context belongs to; `None` when free.
    key: Option<u32>,
    /// PAE: the PDPTE registers its entries were derived with.
    pdptes: [u64; 4],
    /// The lookup table; for the active context this holds a spare and
    /// the real one lives in `Shadow::cur`.
    table: Box<Table>,
    deps: Box<Deps>,
    /// Page-table frame -> slots derived from it.
    rmap: Rmap,
    last_use: u64,
}

impl Context {
    fn new() -> Self {
        Context {
            key: None,
            pdptes: [0; 4],
            table: new_table(),
            deps: new_deps(),
            rmap: Rmap::default(),
            last_use: 0,
        }
    }
}

/// `Wmap` table number of the global part (contexts are 0..CONTEXTS).
const GLOBAL_TABLE: u8 = CONTEXTS as u8;

/// Entries that grant writes, by the RAM frame they map: (table, slot)
/// pairs, the table a context number or `GLOBAL_TABLE`. Pairs may be
/// stale (the entry since emptied, refilled or revoked): users check the
/// entry. It spares `revoke_write` a scan of every table, which made each
/// newly watched page-table frame (a fork copies many) cost a pass over
/// all contexts.
#[derive(Default)]
struct Wmap {
    map: HashMap<u32, Vec<(u8, u16)>, FrameHasherBuilder>,
    /// Pairs added since the last rebuild.
    pairs: usize,
}

/// Pairs the write map may accumulate before it is rebuilt from the
/// tables (dropping stale ones).
const WMAP_REBUILD: usize = 8 * SLOTS * (CONTEXTS + 1);

/// All shadow contexts plus the global part.
pub struct Shadow {
    /// The active context's table: the one engines probe.
    pub(super) cur: Box<Table>,
    active: usize,
    ctxs: Vec<Context>,
    global: Box<Table>,
    global_deps: Box<Deps>,
    global_rmap: Rmap,
    tick: u64,
    /// Host address of guest RAM offset 0 (`Entry::host`).
    host_base: u64,
    wmap: Wmap,
    /// Times the write map was rebuilt from the tables.
    wmap_rebuilds: u64,
}

impl Default for Shadow {
    fn default() -> Self {
        Self::new()
    }
}

impl Shadow {
    pub fn new() -> Self {
        let mut ctxs: Vec<Context> = (0..CONTEXTS).map(|_| Context::new()).collect();
        ctxs[0].key = Some(0);
        Shadow {
            cur: new_table(),
            active: 0,
            ctxs,
            global: new_table(),
            global_deps: new_deps(),
            global_rmap: Rmap::default(),
            tick: 0,
            host_base: 0,
            wmap: Wmap::default(),
            wmap_rebuilds: 0,
        }
    }

    /// Table `t` of the write map: a context's (the active one is in
    /// `cur`) or the global part.
    fn table_mut(&mut self, t: u8) -> &mut Table {
        if t == GLOBAL_TABLE {
            &mut self.global
        } else if t as usize == self.active {
            &mut self.cur
        } else {
            &mut self.ctxs[t as usize].table
        }
    }

    /// Entry `slot` of table `t` was just set to `e`: remember it if it
    /// grants writes.
    fn wmap_note(&mut self, t: u8, slot: usize, e: &Entry) {
        if e.tag & perm::WRITES == 0 {
            return;
        }
        self.wmap
            .map
            .entry(e.ram >> 12)
            .or_default()
            .push((t, slot as u16));
        self.wmap.pairs += 1;
        if self.wmap.pairs > WMAP_REBUILD {
            self.wmap_rebuild();
        }
    }

    /// The write map from the tables themselves.
    fn wmap_rebuild(&mut self) {
        let mut map: HashMap<u32, Vec<(u8, u16)>, FrameHasherBuilder> = HashMap::default();
        let mut pairs = 0;
        for t in 0..=GLOBAL_TABLE {
            if t != GLOBAL_TABLE && self.ctxs[t as usize].key.is_none() {
                continue;
            }
            for (s, e) in self.table_mut(t).iter().enumerate() {
                if e.tag & perm::WRITES != 0 {
                    map.entry(e.ram >> 12).or_default().push((t, s as u16));
                    pairs += 1;
                }
            }
        }
        self.wmap = Wmap { map, pairs };
        self.wmap_rebuilds += 1;
    }

    /// Host address of guest RAM offset 0, which entries' `host` fields
    /// are relative to.
    pub fn host_base(&self) -> u64 {
        self.host_base
    }

    /// Guest RAM now starts at host address `base`: entries made for
    /// another base are dropped (every context, the global part).
    pub fn set_host_base(&mut self, base: u64) {
        if base != self.host_base {
            self.host_base = base;
            let key = self.active_key().unwrap_or(0);
            self.clear_all(key);
        }
    }

    /// Probe the active table.
    #[inline(always)]
    pub fn probe(&self, lin: u32, acc: Access) -> Option<usize> {
        self.cur[slot(lin)].hit(lin, acc)
    }

    /// Probe the global part; on a hit copy the entry into the active
    /// table so the next access hits there.
    pub fn probe_global(&mut self, lin: u32, acc: Access) -> Option<usize> {
        let s = slot(lin);
        let e = self.global[s];
        let r = e.hit(lin, acc)?;
        let d = self.global_deps[s];
        self.cur[s] = e;
        self.wmap_note(self.active as u8, s, &e);
        let ctx = &mut self.ctxs[self.active];
        ctx.deps[s] = d;
        ctx.rmap.add(d, s, &ctx.deps);
        Some(r)
    }

    /// Record a translation of the page of `lin` to RAM offset `ram` (page
    /// aligned) with `perms`, derived from the page-table frames `deps`.
    pub fn fill(&mut self, lin: u32, perms: u32, ram: u32, deps: [u32; 2], global: bool) {
        let s = slot(lin);
        let e = Entry::new(lin, perms, ram, self.host_base);
        self.cur[s] = e;
        self.wmap_note(self.active as u8, s, &e);
        let ctx = &mut self.ctxs[self.active];
        ctx.deps[s] = deps;
        ctx.rmap.add(deps, s, &ctx.deps);
        if global {
            self.global[s] = e;
            self.wmap_note(GLOBAL_TABLE, s, &e);
            self.global_deps[s] = deps;
            self.global_rmap.add(deps, s, &self.global_deps);
        }
    }

    /// The active context's key (masked guest CR3).
    pub fn active_key(&self) -> Option<u32> {
        self.ctxs[self.active].key
    }

    /// Make the context for `key` (with PAE PDPTEs `pdptes`, if known)
    /// active, reusing a cached one or recycling the least recently used.
    /// Returns whether a cached context was found.
    pub fn select(&mut self, key: u32, pdptes: Option<&[u64; 4]>) -> bool {
        self.tick += 1;
        let found = self.ctxs.iter().position(|c| c.key == Some(key));
        let idx = match found {
            Some(i) => i,
            None => self
                .ctxs
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| (c.key.is_some(), c.last_use))
                .map_or(0, |(i, _)| i),
        };
        if idx != self.active {
            // Put the active table back, take the new one out.
            std::mem::swap(&mut self.cur, &mut self.ctxs[self.active].table);
            std::mem::swap(&mut self.cur, &mut self.ctxs[idx].table);
            self.active = idx;
        }
        let hit = found.is_some();
        if !hit {
            self.clear_active();
            self.ctxs[idx].key = Some(key);
        }
        self.ctxs[idx].last_use = self.tick;
        if let Some(p) = pdptes {
            self.check_pdptes(p);
        }
        hit
    }

    /// The PDPTE registers are now `pdptes`: if the active context was
    /// built with others, its entries are stale (SDM Vol. 3 4.4.1: the
    /// walk uses the registers, not memory).
    pub fn check_pdptes(&mut self, pdptes: &[u64; 4]) {
        if self.ctxs[self.active].pdptes != *pdptes {
            self.clear_active();
            self.ctxs[self.active].pdptes = *pdptes;
        }
    }

    fn clear_active(&mut self) {
        self.cur.fill(Entry::default());
        let c = &mut self.ctxs[self.active];
        c.deps.fill([NO_DEP; 2]);
        c.rmap.clear();
    }

    /// Drop every entry of every context and the global part; contexts
    /// are forgotten except the active one, which keeps `key`.
    pub fn clear_all(&mut self, key: u32) {
        for (i, c) in self.ctxs.iter_mut().enumerate() {
            if c.key.is_some() && i != self.active {
                c.table.fill(Entry::default());
                c.deps.fill([NO_DEP; 2]);
                c.rmap.clear();
                c.key = None;
            }
        }
        self.clear_active();
        self.ctxs[self.active].key = Some(key);
        self.global.fill(Entry::default());
        self.global_deps.fill([NO_DEP; 2]);
        self.global_rmap.clear();
        self.wmap = Wmap::default();
    }

    /// INVLPG: drop the page of `lin` everywhere it is cached (the active
    /// context, the global part, and copies of global entries in the
    /// other contexts).
    pub fn invlpg(&mut self, lin: u32) {
        let s = slot(lin);
        if self.cur[s].page_is(lin) {
            self.cur[s] = Entry::default();
            self.ctxs[self.active].deps[s] = [NO_DEP; 2];
        }
        for (i, c) in self.ctxs.iter_mut().enumerate() {
            if i != self.active && c.table[s].page_is(lin) {
                c.table[s] = Entry::default();
                c.deps[s] = [NO_DEP; 2];
            }
        }
        if self.global[s].page_is(lin) {
            self.global[s] = Entry::default();
            self.global_deps[s] = [NO_DEP; 2];
        }
    }

    /// A guest write hit page-table frame `frame`: drop every entry
    /// derived from it. Returns whether any context had such entries.
    pub fn drop_frame(&mut self, frame: u32) -> bool {
        let mut found = false;
        let active = self.active;
        for (i, c) in self.ctxs.iter_mut().enumerate() {
            let table = if i == active {
                &mut self.cur
            } else {
                &mut c.table
            };
            found |= c.rmap.drop_frame(frame, table, &mut c.deps);
        }
        found |= self
            .global_rmap
            .drop_frame(frame, &mut self.global, &mut self.global_deps);
        found
    }

    /// `ram_frame` became write-watched: no entry may grant writes to it.
    pub fn revoke_write(&mut self, ram_frame: u32) {
        let Some(pairs) = self.wmap.map.remove(&ram_frame) else {
            return;
        };
        for (t, s) in pairs {
            let e = &mut self.table_mut(t)[s as usize];
            if e.tag & perm::WRITES != 0 && e.ram >> 12 == ram_frame {
                e.revoke_writes();
            }
        }
    }

    /// No entry of any table grants writes any more (the dirty bitmap was
    /// cleared: the next store to each frame must be seen again).
    pub fn revoke_all_writes(&mut self) {
        let clear = |t: &mut Table| {
            t.iter_mut()
                .filter(|e| e.tag & perm::WRITES != 0)
                .for_each(|e| e.revoke_writes())
        };
        clear(&mut self.cur);
        for (i, c) in self.ctxs.iter_mut().enumerate() {
            if i != self.active && c.key.is_some() {
                clear(&mut c.table);
            }
        }
        clear(&mut self.global);
        self.wmap = Wmap::default();
    }

    /// Whether any entry of any table maps `ram_frame` writable (tests).
    #[cfg(test)]
    pub fn grants_write(&self, ram_frame: u32) -> bool {
        let w = |t: &Table| {
            t.iter()
                .any(|e| e.tag & perm::WRITES != 0 && e.ram >> 12 == ram_frame)
        };
        w(&self.cur)
            || w(&self.global)
            || self
                .ctxs
                .iter()
                .enumerate()
                .any(|(i, c)| i != self.active && w(&c.table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exception::pf;

    #[test]
    fn perm_bits_match_access_kinds() {
        // Each access kind selects its own permission bit.
        let u = Access::USER;
        assert_eq!(1 << perm_shift(Access::READ), perm::SUP_READ);
        assert_eq!(1 << perm_shift(Access::WRITE), perm::SUP_WRITE);
        assert_eq!(1 << perm_shift(Access(u)), perm::USER_READ);
        assert_eq!(1 << perm_shift(Access(pf::W | u)), perm::USER_WRITE);
        assert_eq!(1 << perm_shift(Access::FETCH), perm::SUP_FETCH);
        assert_eq!(1 << perm_shift(Access(pf::ID | u)), perm::USER_FETCH);
    }

    #[test]
    fn empty_entry_never_hits() {
        let s = Shadow::new();
        assert_eq!(s.probe(0, Access::READ), None);
        assert_eq!(s.probe(0x123, Access(pf::W | pf::U)), None);
    }

    #[test]
    fn consecutive_pages_never_share_a_slot() {
        // The translator's inline lookup relies on it (it compares the
        // tag of the first byte's slot with the last byte's page).
        for page in 0..=0xF_FFFFu32 {
            let next = (page + 1) & 0xF_FFFF;
            assert_ne!(slot(page << 12), slot(next << 12), "page {page:#x}");
        }
    }

    #[test]
    fn entries_carry_a_page_per_access_kind_and_the_host_address() {
        let base = 0x7F00_0000_0000u64;
        let mut s = Shadow::new();
        s.set_host_base(base);
        s.fill(
            0xC010_2345,
            perm::SUP_READ | perm::SUP_WRITE,
            0x9000,
            [1, 2],
            false,
        );
        let e = s.cur[slot(0xC010_2000)];
        assert_eq!(e.pages, [0xC010_2000, 0xC010_2000, NO_PAGE, NO_PAGE]);
        // host + lin = host address of RAM offset 0x9000 + (lin & 0xFFF).
        assert_eq!(e.host.wrapping_add(0xC010_2345), base + 0x9345);
        s.revoke_write(9);
        let e = s.cur[slot(0xC010_2000)];
        assert_eq!(e.pages, [0xC010_2000, NO_PAGE, NO_PAGE, NO_PAGE]);
        assert_eq!(s.probe(0xC010_2345, Access::READ), Some(0x9345));
        assert_eq!(s.probe(0xC010_2345, Access::WRITE), None);
        // No page address ever equals NO_PAGE, and empty entries grant
        // nothing.
        assert_ne!(NO_PAGE & 0xFFF, 0);
        assert_eq!(Entry::default().pages, [NO_PAGE; 4]);
        // A new host base drops what was made for the old one.
        s.set_host_base(base + 0x1000_0000);
        assert_eq!(s.probe(0xC010_2345, Access::READ), None);
    }

    #[test]
    fn revoke_write_finds_every_writable_entry_of_every_table() {
        // Fills (some global) across address spaces, context switches,
        // global copies and revokes in a pseudo-random order; after each
        // revoke no table may grant writes to that frame (checked by a
        // scan of all tables). Enough fills to force write-map rebuilds.
        let mut s = Shadow::new();
        let mut x = 0x1234_5678u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for step in 0..800_000u32 {
            let r = next();
            match r % 16 {
                0 => {
                    s.select(next() % 12, None);
                }
                1 => {
                    let f = next() % 64;
                    s.revoke_write(f);
                    // (A scan of all tables: not after every revoke.)
                    if r & 0x700 == 0 {
                        assert!(!s.grants_write(f), "step {step}: frame {f}");
                    }
                }
                2 => {
                    let _ = s.probe_global(next() & 0x00FF_F000, Access::WRITE);
                }
                _ => {
                    let lin = next() & 0x00FF_F000;
                    let perms = if r & 32 != 0 {
                        perm::ALL
                    } else {
                        perm::SUP_READ
                    };
                    let ram = (next() % 64) << 12;
                    let dep = 100 + next() % 64;
                    s.fill(lin, perms, ram, [dep, NO_DEP], r & 64 != 0);
                }
            }
        }
        for f in 0..64 {
            s.revoke_write(f);
            assert!(!s.grants_write(f), "frame {f}");
        }
        assert!(s.wmap_rebuilds > 0, "the write map was never rebuilt");
    }

    #[test]
    fn entry_size_is_what_generated_code_scales_by() {
        assert_eq!(std::mem::size_of::<Entry>(), ENTRY_BYTES);
        assert_eq!(ENTRY_BYTES, 32);
    }

    #[test]
    fn fill_hit_and_permission_miss() {
        let mut s = Shadow::new();
        s.fill(
            0x4000_1000,
            perm::SUP_READ | perm::USER_READ,
            0x7000,
            [1, 2],
            false,
        );
        assert_eq!(s.probe(0x4000_1234, Access::READ), Some(0x7234));
        assert_eq!(s.probe(0x4000_1234, Access(pf::U)), Some(0x7234));
        assert_eq!(s.probe(0x4000_1234, Access::WRITE), None);
        assert_eq!(s.probe(0x4000_1234, Access::FETCH), None);
        // Same slot, other page.
        assert_eq!(s.probe(0x4000_1234 ^ 0x0100_0000, Access::READ), None);
        s.drop_frame(2);
        assert_eq!(s.probe(0x4000_1234, Access::READ), None);
    }

    #[test]
    fn revoke_write_keeps_reads() {
        let mut s = Shadow::new();
        s.fill(0x1000, perm::ALL, 0x5000, [NO_DEP; 2], false);
        assert!(s.grants_write(5));
        s.revoke_write(5);
        assert!(!s.grants_write(5));
        assert_eq!(s.probe(0x1008, Access::WRITE), None);
        assert_eq!(s.probe(0x1008, Access::READ), Some(0x5008));
    }

    #[test]
    fn contexts_are_kept_by_key_and_recycled_lru() {
        let mut s = Shadow::new();
        let p = [0; 4];
        assert!(!s.select(0x1000, Some(&p)));
        s.fill(0x2000, perm::SUP_READ, 0x3000, [1, NO_DEP], false);
        for k in 1..CONTEXTS as u32 {
            assert!(!s.select(0x1000 + k * 0x1000, Some(&p)));
        }
        assert!(s.select(0x1000, Some(&p)));
        assert_eq!(s.probe(0x2000, Access::READ), Some(0x3000));
        // One more key recycles the least recently used (0x2000), not
        // 0x1000 which was just used.
        assert!(!s.select(0x100_0000, Some(&p)));
        assert!(!s.select(0x2000, Some(&p)));
        assert!(s.select(0x1000, Some(&p)));
        assert_eq!(s.probe(0x2000, Access::READ), Some(0x3000));
    }

    #[test]
    fn drop_frame_is_exact_and_rmap_stays_bounded() {
        let mut s = Shadow::new();
        s.fill(0x1000, perm::SUP_READ, 0x5000, [1, 2], false);
        s.fill(0x2000, perm::SUP_READ, 0x6000, [1, 3], false);
        // Refill one slot many times from frame 4: the list compacts.
        for i in 0..3 * SLOTS as u32 {
            s.fill(0x3000, perm::SUP_READ, i << 12, [1, 4], false);
        }
        let c = &s.ctxs[s.active];
        assert!(c.rmap.0.get(&4).is_some_and(|v| v.len() <= SLOTS));
        assert!(s.drop_frame(3));
        assert_eq!(s.probe(0x1000, Access::READ), Some(0x5000));
        assert_eq!(s.probe(0x2000, Access::READ), None);
        assert!(!s.drop_frame(3));
        assert!(s.drop_frame(1));
        assert_eq!(s.probe(0x1000, Access::READ), None);
        assert_eq!(s.probe(0x3000, Access::READ), None);
    }
}
