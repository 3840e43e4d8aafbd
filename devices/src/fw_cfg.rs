//! QEMU's firmware configuration device (fw_cfg), the I/O-port variant as
//! SeaBIOS (src/fw/paravirt.c) uses it: a table of byte items addressed by
//! a 16-bit key, read either byte by byte through a data port or by DMA
//! into guest memory. QEMU docs/specs/fw_cfg.rst describes the interface.
//!
//! Ports:
//! - 0x510 selector (16-bit write): chooses the item, offset back to 0.
//! - 0x511 data (byte reads): the next byte of the item, 0 past its end.
//! - 0x514-0x51B DMA address, big-endian 64-bit: the high half at 0x514,
//!   the low half at 0x518; writing the low half starts a transfer. Reads
//!   return the signature "QEMU CFG" as a big-endian 64-bit value.
//!
//! It owns the item table and the file directory (key 0x0019, built from
//! `add_file`). It does not see guest memory: a write to 0x518 records a
//! pending request, and the machine then calls `run_dma` with a
//! `GuestMem`. Items are read-only to the guest: DMA writes set the error
//! bit, data-port writes are ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Selector register (16-bit).
pub const PORT_SELECTOR: u16 = 0x510;
/// Data register (8-bit).
pub const PORT_DATA: u16 = 0x511;
/// DMA address register, high 32 bits (big-endian); signature on read.
pub const PORT_DMA_HIGH: u16 = 0x514;
/// DMA address register, low 32 bits (big-endian); a write starts DMA.
pub const PORT_DMA_LOW: u16 = 0x518;
/// Size of the DMA address register window (0x514-0x51B).
pub const DMA_WINDOW: u16 = 8;

/// Key: the 4 bytes "QEMU".
pub const KEY_SIGNATURE: u16 = 0x0000;
/// Key: interface feature bits (u32, little-endian).
pub const KEY_ID: u16 = 0x0001;
/// Key: RAM size in bytes (u64, little-endian).
pub const KEY_RAM_SIZE: u16 = 0x0003;
/// Key: number of CPUs at boot (u16, little-endian).
pub const KEY_NB_CPUS: u16 = 0x0005;
/// Key: NUMA table: u64 node count, then per-CPU and per-node u64s.
pub const KEY_NUMA: u16 = 0x000d;
/// Key: whether to show the boot menu (u16, little-endian).
pub const KEY_BOOT_MENU: u16 = 0x000e;
/// Key: highest possible CPU count (u16, little-endian).
pub const KEY_MAX_CPUS: u16 = 0x000f;
/// Key: the file directory.
pub const KEY_FILE_DIR: u16 = 0x0019;
/// First key given to a named file.
pub const KEY_FILE_FIRST: u16 = 0x0020;

/// ID bit: the traditional selector/data interface exists.
pub const ID_TRADITIONAL: u32 = 1 << 0;
/// ID bit: the DMA interface exists.
pub const ID_DMA: u32 = 1 << 1;

/// The signature item contents.
pub const SIGNATURE: &[u8; 4] = b"QEMU";
/// What the DMA address register reads as (big-endian 64-bit "QEMU CFG").
pub const DMA_SIGNATURE: &[u8; 8] = b"QEMU CFG";

/// DMA control bit: the transfer failed (set by the device).
pub const DMA_CTL_ERROR: u32 = 1 << 0;
/// DMA control bit: copy item bytes into guest memory.
pub const DMA_CTL_READ: u32 = 1 << 1;
/// DMA control bit: advance the item offset without copying.
pub const DMA_CTL_SKIP: u32 = 1 << 2;
/// DMA control bit: select the item in bits 31:16 first.
pub const DMA_CTL_SELECT: u32 = 1 << 3;
/// DMA control bit: copy guest memory into the item.
pub const DMA_CTL_WRITE: u32 = 1 << 4;
/// Size of the DMA access structure: be32 control, be32 length, be64 address.
pub const DMA_ACCESS_SIZE: usize = 16;

/// Bytes of a file name in a directory entry (NUL-terminated).
pub const FILE_NAME_LEN: usize = 56;
/// Bytes of one directory entry: be32 size, be16 select, u16 reserved, name.
pub const FILE_ENTRY_SIZE: usize = 8 + FILE_NAME_LEN;

/// Guest-physical memory as the DMA engine sees it. Reads outside memory
/// should return all ones, writes there vanish: the device never fails.
pub trait GuestMem {
    fn read(&mut self, phys: u64, buf: &mut [u8]);
    fn write(&mut self, phys: u64, buf: &[u8]);
}

/// Counters of accesses the device ignores.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct FwCfgStats {
    /// Writes to the data port or of a bad width.
    pub ignored_writes: u64,
    /// DMA requests that ended with the error bit.
    pub dma_errors: u64,
}

/// The fw_cfg device.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FwCfg {
    /// Item contents by key.
    items: BTreeMap<u16, Vec<u8>>,
    /// Named files in the order they were added, with their keys.
    files: Vec<(String, u16)>,
    /// Currently selected key.
    selector: u16,
    /// Offset of the next byte of the selected item.
    offset: usize,
    /// High half of the DMA address, as last written.
    dma_high: u32,
    /// Address of a DMA access structure not yet processed.
    pending: Option<u64>,
    pub stats: FwCfgStats,
}

impl FwCfg {
    /// A device holding the signature, the ID (traditional + DMA), one CPU,
    /// an empty NUMA table, boot menu off and an empty file directory.
    pub fn new() -> Self {
        let mut f = FwCfg::default();
        f.add_item(KEY_SIGNATURE, SIGNATURE.to_vec());
        f.add_item(KEY_ID, (ID_TRADITIONAL | ID_DMA).to_le_bytes().to_vec());
        f.add_item(KEY_NB_CPUS, 1u16.to_le_bytes().to_vec());
        f.add_item(KEY_MAX_CPUS, 1u16.to_le_bytes().to_vec());
        f.add_item(KEY_NUMA, 0u64.to_le_bytes().to_vec());
        f.add_item(KEY_BOOT_MENU, 0u16.to_le_bytes().to_vec());
        f.rebuild_dir();
        f
    }

    /// Set (or replace) the item at `key`. The file directory key is
    /// managed by `add_file` and cannot be set here.
    pub fn add_item(&mut self, key: u16, bytes: Vec<u8>) {
        if key == KEY_FILE_DIR {
            tracing::debug!("fw_cfg: the file directory is built from add_file");
            return;
        }
        self.items.insert(key, bytes);
    }

    /// Add (or replace) the named file and list it in the directory. Names
    /// longer than 55 bytes are refused (they would not fit the entry);
    /// returns the key, or `None` when the name is bad or keys ran out.
    pub fn add_file(&mut self, name: &str, bytes: Vec<u8>) -> Option<u16> {
        if name.is_empty() || name.len() >= FILE_NAME_LEN || name.contains('\0') {
            return None;
        }
        let key = match self.files.iter().find(|(n, _)| n == name) {
            Some(&(_, k)) => k,
            None => {
                let k = KEY_FILE_FIRST.checked_add(u16::try_from(self.files.len()).ok()?)?;
                if k >= 0x4000 {
                    return None;
                }
                self.files.push((name.to_string(), k));
                k
            }
        };
        self.items.insert(key, bytes);
        self.rebuild_dir();
        Some(key)
    }

    /// Contents of the item at `key`, if any.
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        self.items.get(&key).map(|v| &v[..])
    }

    /// Rebuild the directory item: be32 count, then one entry per file.
    fn rebuild_dir(&mut self) {
        let mut d = Vec::with_capacity(4 + self.files.len() * FILE_ENTRY_SIZE);
        d.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        for (name, key) in &self.files {
            let size = self.items.get(key).map_or(0, |v| v.len()) as u32;
            d.extend_from_slice(&size.to_be_bytes());
            d.extend_from_slice(&key.to_be_bytes());
            d.extend_from_slice(&[0, 0]);
            let mut n = [0u8; FILE_NAME_LEN];
            n[..name.len()].copy_from_slice(name.as_bytes());
            d.extend_from_slice(&n);
        }
        self.items.insert(KEY_FILE_DIR, d);
    }

    /// Select `key` and rewind.
    fn select(&mut self, key: u16) {
        self.selector = key;
        self.offset = 0;
    }

    /// The next byte of the selected item (0 past its end or for an
    /// unknown key), advancing the offset.
    fn next_byte(&mut self) -> u8 {
        let b = self
            .items
            .get(&self.selector)
            .and_then(|v| v.get(self.offset))
            .copied()
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        b
    }

    /// Port read of `size` bytes.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        let size = size.clamp(1, 4) as usize;
        match port {
            // The selector is write-only: reads see 0.
            PORT_SELECTOR => 0,
            // Data: successive item bytes, in memory order for wider reads
            // (so that `insw`/`insl` store the item as it is).
            PORT_DATA => {
                let mut v = 0u32;
                for i in 0..size {
                    v |= (self.next_byte() as u32) << (8 * i);
                }
                v
            }
            // DMA address register: reads see the "QEMU CFG" signature,
            // a big-endian value, so byte k of the window is signature[k].
            p if p.wrapping_sub(PORT_DMA_HIGH) < DMA_WINDOW => {
                let off = (p - PORT_DMA_HIGH) as usize;
                let mut v = 0u32;
                for i in 0..size {
                    let b = DMA_SIGNATURE.get(off + i).copied().unwrap_or(0xFF);
                    v |= (b as u32) << (8 * i);
                }
                v
            }
            _ => u32::MAX >> (32 - 8 * size as u32),
        }
    }

    /// Port write of `size` bytes.
    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        match (port, size) {
            // Selector: choose the item, rewind to its first byte.
            (PORT_SELECTOR, 2) | (PORT_SELECTOR, 4) => self.select(value as u16),
            (PORT_SELECTOR, 1) => self.select(value as u8 as u16),
            // DMA address high half, big-endian on the bus: the guest's
            // `outl(cpu_to_be32(x))` arrives byte-swapped.
            (PORT_DMA_HIGH, 4) => self.dma_high = value.swap_bytes(),
            // DMA address low half: record the request for `run_dma`.
            (PORT_DMA_LOW, 4) => {
                let addr = ((self.dma_high as u64) << 32) | value.swap_bytes() as u64;
                self.pending = Some(addr);
                self.dma_high = 0;
            }
            // Data-port writes (the old write interface) and other widths
            // are ignored.
            _ => {
                self.stats.ignored_writes += 1;
                tracing::debug!(port, size, value, "fw_cfg: ignored write");
            }
        }
    }

    /// Whether a DMA request waits for `run_dma`.
    pub fn dma_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Process the pending DMA request, if any: read the access structure
    /// (be32 control, be32 length, be64 address) at the recorded address,
    /// select/read/skip as its control asks, and write the control word
    /// back: 0 when done, `DMA_CTL_ERROR` on failure (a write request;
    /// items are read-only). Reading an unknown key or past an item's end
    /// stores zeros, as QEMU does (SeaBIOS counts on it for absent legacy
    /// items).
    pub fn run_dma(&mut self, mem: &mut dyn GuestMem) {
        let Some(at) = self.pending.take() else {
            return;
        };
        let mut a = [0u8; DMA_ACCESS_SIZE];
        mem.read(at, &mut a);
        let control = u32::from_be_bytes([a[0], a[1], a[2], a[3]]);
        let length = u32::from_be_bytes([a[4], a[5], a[6], a[7]]) as usize;
        let mut addr = u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
        if control & DMA_CTL_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let mut status = 0u32;
        if control & DMA_CTL_READ != 0 {
            // Copy in chunks so a huge length costs no huge allocation.
            let mut left = length;
            let mut chunk = [0u8; 256];
            while left > 0 {
                let n = left.min(chunk.len());
                for b in chunk[..n].iter_mut() {
                    *b = self.next_byte();
                }
                mem.write(addr, &chunk[..n]);
                addr = addr.wrapping_add(n as u64);
                left -= n;
            }
        } else if control & DMA_CTL_WRITE != 0 {
            if length > 0 {
                status = DMA_CTL_ERROR;
            }
        } else if control & DMA_CTL_SKIP != 0 {
            self.offset = self.offset.saturating_add(length);
        }
        if status != 0 {
            self.stats.dma_errors += 1;
        }
        mem.write(at, &status.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flat 64 KiB guest memory.
    struct Flat(Vec<u8>);
    impl GuestMem for Flat {
        fn read(&mut self, phys: u64, buf: &mut [u8]) {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = self.0.get(phys as usize + i).copied().unwrap_or(0xFF);
            }
        }
        fn write(&mut self, phys: u64, buf: &[u8]) {
            for (i, &b) in buf.iter().enumerate() {
                if let Some(d) = self.0.get_mut(phys as usize + i) {
                    *d = b;
                }
            }
        }
    }

    fn read_item(f: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        f.write(PORT_SELECTOR, 2, key as u32);
        (0..len).map(|_| f.read(PORT_DATA, 1) as u8).collect()
    }

    /// Place a DMA access structure at `at` and start it as SeaBIOS does:
    /// high half 0, then the low half, each byte-swapped.
    fn start_dma(f: &mut FwCfg, m: &mut Flat, at: u64, control: u32, len: u32, addr: u64) {
        m.0[at as usize..at as usize + 4].copy_from_slice(&control.to_be_bytes());
        m.0[at as usize + 4..at as usize + 8].copy_from_slice(&len.to_be_bytes());
        m.0[at as usize + 8..at as usize + 16].copy_from_slice(&addr.to_be_bytes());
        f.write(PORT_DMA_HIGH, 4, 0u32.to_be());
        f.write(PORT_DMA_LOW, 4, (at as u32).swap_bytes());
        assert!(f.dma_pending());
        f.run_dma(m);
        assert!(!f.dma_pending());
    }

    #[test]
    fn signature_and_id() {
        let mut f = FwCfg::new();
        assert_eq!(read_item(&mut f, 0, 4), b"QEMU");
        // ID: traditional (bit 0) + DMA (bit 1) = 3, little-endian.
        assert_eq!(read_item(&mut f, 1, 4), vec![3, 0, 0, 0]);
        // Past the end and unknown keys read as 0.
        assert_eq!(f.read(PORT_DATA, 1), 0);
        assert_eq!(read_item(&mut f, 0x1234, 2), vec![0, 0]);
    }

    #[test]
    fn dma_register_reads_signature() {
        let mut f = FwCfg::new();
        // Byte 0x514 = 'Q' ... 0x51B = 'G'; a dword at 0x514 is "QEMU" in
        // memory order, i.e. 0x554D4551 as a little-endian value.
        assert_eq!(f.read(0x514, 1), b'Q' as u32);
        assert_eq!(f.read(0x514, 4), 0x554D_4551);
        assert_eq!(f.read(0x518, 4), u32::from_le_bytes(*b" CFG"));
    }

    #[test]
    fn file_directory_format() {
        let mut f = FwCfg::new();
        assert_eq!(f.add_file("etc/e820", vec![1; 40]), Some(0x20));
        assert_eq!(f.add_file("bootorder", b"/a\0".to_vec()), Some(0x21));
        let d = read_item(&mut f, 0x19, 4 + 2 * 64);
        assert_eq!(&d[0..4], &[0, 0, 0, 2]); // count, big-endian
        assert_eq!(&d[4..8], &[0, 0, 0, 40]); // size, big-endian
        assert_eq!(&d[8..10], &[0, 0x20]); // select, big-endian
        assert_eq!(&d[10..12], &[0, 0]); // reserved
        assert_eq!(&d[12..20], b"etc/e820");
        assert!(d[20..68].iter().all(|&b| b == 0));
        assert_eq!(&d[68..72], &[0, 0, 0, 3]);
        assert_eq!(&d[72..74], &[0, 0x21]);
        assert_eq!(&d[76..85], b"bootorder");
        // Replacing a file keeps its key and updates its size.
        assert_eq!(f.add_file("etc/e820", vec![2; 20]), Some(0x20));
        assert_eq!(read_item(&mut f, 0x19, 8)[7], 20);
        assert_eq!(f.add_file(&"x".repeat(56), vec![]), None);
    }

    #[test]
    fn file_read_by_selector() {
        let mut f = FwCfg::new();
        f.add_file("etc/boot-fail-wait", 5u32.to_le_bytes().to_vec());
        assert_eq!(read_item(&mut f, 0x20, 4), vec![5, 0, 0, 0]);
        // A 16-bit read returns two successive bytes in memory order.
        f.add_file("x", vec![0x11, 0x22, 0x33]);
        f.write(PORT_SELECTOR, 2, 0x21);
        assert_eq!(f.read(PORT_DATA, 2), 0x2211);
        assert_eq!(f.read(PORT_DATA, 1), 0x33);
    }

    #[test]
    fn dma_select_and_read() {
        let mut f = FwCfg::new();
        f.add_file("etc/show-boot-menu", vec![0xAB, 0xCD]);
        let mut m = Flat(vec![0xEE; 0x10000]);
        // Select 0x20 and read 4 bytes to 0x2000: 2 item bytes then zeros.
        let ctl = (0x20 << 16) | DMA_CTL_SELECT | DMA_CTL_READ;
        start_dma(&mut f, &mut m, 0x1000, ctl, 4, 0x2000);
        assert_eq!(&m.0[0x2000..0x2005], &[0xAB, 0xCD, 0, 0, 0xEE]);
        assert_eq!(&m.0[0x1000..0x1004], &[0, 0, 0, 0]); // control cleared
    }

    #[test]
    fn dma_read_continues_from_the_data_port_offset() {
        let mut f = FwCfg::new();
        let mut m = Flat(vec![0; 0x10000]);
        f.write(PORT_SELECTOR, 2, KEY_SIGNATURE as u32);
        assert_eq!(f.read(PORT_DATA, 1), b'Q' as u32);
        start_dma(&mut f, &mut m, 0x100, DMA_CTL_READ, 3, 0x200);
        assert_eq!(&m.0[0x200..0x203], b"EMU");
    }

    #[test]
    fn dma_skip_then_read() {
        let mut f = FwCfg::new();
        f.add_file("f", (0u8..16).collect());
        let mut m = Flat(vec![0; 0x10000]);
        f.write(PORT_SELECTOR, 2, 0x20);
        start_dma(&mut f, &mut m, 0x100, DMA_CTL_SKIP, 10, 0);
        start_dma(&mut f, &mut m, 0x100, DMA_CTL_READ, 2, 0x300);
        assert_eq!(&m.0[0x300..0x302], &[10, 11]);
    }

    #[test]
    fn dma_write_and_unknown_selector() {
        let mut f = FwCfg::new();
        let mut m = Flat(vec![0x55; 0x10000]);
        // Items are read-only: a write request ends with the error bit.
        let ctl = (0x20 << 16) | DMA_CTL_SELECT | DMA_CTL_WRITE;
        start_dma(&mut f, &mut m, 0x100, ctl, 4, 0x400);
        assert_eq!(&m.0[0x100..0x104], &[0, 0, 0, 1]);
        assert_eq!(f.stats.dma_errors, 1);
        // Reading an unknown key stores zeros and succeeds.
        let ctl = (0x7777 << 16) | DMA_CTL_SELECT | DMA_CTL_READ;
        start_dma(&mut f, &mut m, 0x100, ctl, 4, 0x400);
        assert_eq!(&m.0[0x400..0x405], &[0, 0, 0, 0, 0x55]);
        assert_eq!(&m.0[0x100..0x104], &[0, 0, 0, 0]);
    }

    #[test]
    fn dma_at_the_top_of_memory_never_panics() {
        let mut f = FwCfg::new();
        let mut m = Flat(vec![0; 0x100]);
        f.write(PORT_DMA_HIGH, 4, u32::MAX);
        f.write(PORT_DMA_LOW, 4, u32::MAX);
        f.run_dma(&mut m);
        // An access structure asking for 1 MiB into the top of the space.
        start_dma(&mut f, &mut m, 0x10, DMA_CTL_READ, 0x10_0000, u64::MAX - 8);
        assert!(!f.dma_pending());
    }
}
