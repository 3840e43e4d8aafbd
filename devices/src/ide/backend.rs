//! Block backends for the IDE drives: the `BlockBackend` trait, a raw image
//! file (`RawFile`), a copy-on-write overlay that keeps the guest's writes
//! in memory (`Snapshot`, `--snapshot`) and an in-memory image for tests
//! (`MemBackend`).
//!
//! Owns: byte-addressed reads and writes of an image, flushing it to stable
//! storage, and the host-side checks made when an image is opened (exists,
//! is a regular file or block device, not empty, whole sectors, an ISO 9660
//! volume for a CD-ROM). None of them writes to the file: an image that is
//! refused is left as it was. Does not
//! own: sectors, geometry or what a guest may ask for (the drive models
//! range-check every request before it reaches a backend).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use thiserror::Error;

/// Storage behind one drive. Offsets and lengths are in bytes; callers
/// never read or write past `len()`.
pub trait BlockBackend {
    /// Fill `buf` from the image at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Store `buf` in the image at `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Make every completed write durable (FLUSH CACHE).
    fn flush(&mut self) -> io::Result<()>;
    /// Image size in bytes.
    fn len(&self) -> u64;
    /// True when writes must be refused.
    fn read_only(&self) -> bool;
    /// True for an image of zero bytes (a CD-ROM drive with no medium).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Host-side failures opening an image; each message says what to do.
#[derive(Debug, Error)]
pub enum BackendError {
    #[error("image file {path} does not exist: check the path, or create a disk with `truncate -s 1G {path}`")]
    Missing { path: String },
    #[error("image file {path} is read-only but was asked for read-write: make it writable (chmod u+w {path}) or attach it read-only")]
    ReadOnlyFile { path: String },
    #[error("image file {path} is {size} bytes, not a multiple of {sector} bytes: the image is truncated or not a raw image (convert it with `qemu-img convert -O raw`)")]
    Truncated {
        path: String,
        size: u64,
        sector: u64,
    },
    #[error(
        "{path} is a directory, not an image file: give the path of a raw disk image or an ISO"
    )]
    NotAFile { path: String },
    #[error("image file {path} is empty (0 bytes): check the path, or give it a size first (`truncate -s 64M {path}`)")]
    Empty { path: String },
    #[error("{path} is not an ISO 9660 CD image (no volume descriptor at sector 16): give --cdrom an .iso file, or attach a raw disk image with --disk")]
    NotIso { path: String },
    #[error("cannot open image file {path}: {source}")]
    Open { path: String, source: io::Error },
}

/// Byte offset of the first ISO 9660 volume descriptor (sector 16 of
/// 2048 bytes, ECMA-119 6.2.1 and 8.1); its identifier follows the type
/// byte.
pub const ISO_VD_OFFSET: u64 = 16 * 2048;
/// Standard identifiers of a volume descriptor at sector 16: ISO 9660
/// (`CD001`, ECMA-119 8.1.2) or the UDF volume recognition sequence
/// (`BEA01`, ECMA-167 2/9.2).
pub const ISO_VD_IDS: [&[u8; 5]; 2] = [b"CD001", b"BEA01"];

/// True when `b` (a file read from offset 0) holds an ISO 9660 or UDF
/// volume descriptor at sector 16.
pub fn looks_like_iso(b: &mut dyn BlockBackend) -> bool {
    let mut id = [0u8; 5];
    b.len() >= ISO_VD_OFFSET + 6
        && b.read_at(ISO_VD_OFFSET + 1, &mut id).is_ok()
        && ISO_VD_IDS.iter().any(|v| **v == id)
}

/// A raw image in a host file (one byte of file per byte of disk).
#[derive(Debug)]
pub struct RawFile {
    file: File,
    len: u64,
    read_only: bool,
}

impl RawFile {
    /// Open `path` as an image whose size must be a multiple of `sector`
    /// bytes (512 for a disk, 2048 for a CD-ROM ISO).
    pub fn open(path: &Path, read_only: bool, sector: u64) -> Result<Self, BackendError> {
        let name = path.display().to_string();
        if let Ok(m) = std::fs::metadata(path) {
            // Opening a directory read-only succeeds on Linux; reads of it
            // would then fail one by one.
            if m.is_dir() {
                return Err(BackendError::NotAFile { path: name });
            }
            // Refuse a write-protected file up front: the open would
            // succeed for root and the guest's writes would then fail one
            // by one.
            if !read_only && m.permissions().readonly() {
                return Err(BackendError::ReadOnlyFile { path: name });
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => BackendError::Missing { path: name.clone() },
                io::ErrorKind::PermissionDenied if !read_only && path.exists() => {
                    BackendError::ReadOnlyFile { path: name.clone() }
                }
                _ => BackendError::Open {
                    path: name.clone(),
                    source: e,
                },
            })?;
        let len = file
            .metadata()
            .map_err(|e| BackendError::Open {
                path: name.clone(),
                source: e,
            })?
            .len();
        if len == 0 {
            return Err(BackendError::Empty { path: name });
        }
        if sector != 0 && len % sector != 0 {
            return Err(BackendError::Truncated {
                path: name,
                size: len,
                sector,
            });
        }
        Ok(RawFile {
            file,
            len,
            read_only,
        })
    }

    /// A hard disk image (512-byte sectors).
    pub fn open_disk(path: &Path, read_only: bool) -> Result<Self, BackendError> {
        Self::open(path, read_only, 512)
    }

    /// A CD-ROM ISO image (2048-byte sectors, always read-only), which
    /// must hold an ISO 9660 (or UDF) volume descriptor at sector 16.
    pub fn open_iso(path: &Path) -> Result<Self, BackendError> {
        let name = || path.display().to_string();
        // The signature first: a non-ISO file is more often the wrong file
        // than a truncated ISO.
        let mut f = match Self::open(path, true, 0) {
            Ok(f) => f,
            Err(BackendError::Empty { .. }) => return Err(BackendError::NotIso { path: name() }),
            Err(e) => return Err(e),
        };
        if !looks_like_iso(&mut f) {
            return Err(BackendError::NotIso { path: name() });
        }
        if f.len % 2048 != 0 {
            return Err(BackendError::Truncated {
                path: name(),
                size: f.len,
                sector: 2048,
            });
        }
        Ok(f)
    }
}

impl BlockBackend for RawFile {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}

/// Bytes per block of the `Snapshot` overlay (one ATA sector).
const SNAPSHOT_BLOCK: u64 = 512;

/// A copy-on-write view of another backend: reads come from the blocks the
/// guest wrote, else from the base; writes go to memory only, so the base
/// image (opened read-only) is never changed and the writes are lost when
/// the machine ends (`umbra run --snapshot`, QEMU's `-snapshot`). FLUSH
/// CACHE has nothing durable to do.
pub struct Snapshot {
    base: Box<dyn BlockBackend>,
    /// Written blocks by block number, each `SNAPSHOT_BLOCK` bytes.
    blocks: HashMap<u64, Box<[u8]>>,
}

impl Snapshot {
    pub fn new(base: Box<dyn BlockBackend>) -> Self {
        Snapshot {
            base,
            blocks: HashMap::new(),
        }
    }

    /// Blocks the guest has written so far.
    pub fn dirty_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Check that `len` bytes at `offset` lie inside the image.
    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.base.len() => Ok(()),
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

impl BlockBackend for Snapshot {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (blk, within) = (pos / SNAPSHOT_BLOCK, (pos % SNAPSHOT_BLOCK) as usize);
            let n = (SNAPSHOT_BLOCK as usize - within).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.blocks.get(&blk) {
                Some(b) => out.copy_from_slice(&b[within..within + n]),
                None => self.base.read_at(pos, out)?,
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (blk, within) = (pos / SNAPSHOT_BLOCK, (pos % SNAPSHOT_BLOCK) as usize);
            let n = (SNAPSHOT_BLOCK as usize - within).min(buf.len() - done);
            if !self.blocks.contains_key(&blk) {
                // A partial block starts as the base's bytes (the image
                // length is whole sectors, so the block is inside it).
                let mut fresh = vec![0u8; SNAPSHOT_BLOCK as usize].into_boxed_slice();
                if n < SNAPSHOT_BLOCK as usize {
                    let start = blk * SNAPSHOT_BLOCK;
                    let avail = (self.base.len() - start).min(SNAPSHOT_BLOCK) as usize;
                    self.base.read_at(start, &mut fresh[..avail])?;
                }
                self.blocks.insert(blk, fresh);
            }
            if let Some(b) = self.blocks.get_mut(&blk) {
                b[within..within + n].copy_from_slice(&buf[done..done + n]);
            }
            done += n;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> u64 {
        self.base.len()
    }

    fn read_only(&self) -> bool {
        false
    }
}

/// An image held in memory (tests, scratch disks). Counts flushes so tests
/// can see that FLUSH CACHE reached the backend.
#[derive(Clone, Debug, Default)]
pub struct MemBackend {
    pub data: Vec<u8>,
    pub read_only: bool,
    pub flushes: std::rc::Rc<std::cell::Cell<u64>>,
}

impl MemBackend {
    pub fn new(data: Vec<u8>, read_only: bool) -> Self {
        MemBackend {
            data,
            read_only,
            flushes: Default::default(),
        }
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start.checked_add(len).ok_or(io::ErrorKind::InvalidInput)?;
        if end > self.data.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(start..end)
    }
}

impl BlockBackend for MemBackend {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        let r = self.range(offset, buf.len())?;
        self.data[r].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes.set(self.flushes.get() + 1);
        Ok(())
    }

    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str, size: usize) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("umbra-ide-{}-{name}", std::process::id()));
        std::fs::write(&p, vec![0u8; size]).unwrap();
        p
    }

    #[test]
    fn missing_file_is_reported() {
        let e = RawFile::open_disk(Path::new("/nonexistent/umbra.img"), false).unwrap_err();
        assert!(matches!(e, BackendError::Missing { .. }));
        assert!(e.to_string().contains("does not exist"));
    }

    #[test]
    fn truncated_image_is_reported() {
        let p = tmp("trunc", 1000);
        let e = RawFile::open_disk(&p, true).unwrap_err();
        assert!(e.to_string().contains("not a multiple of 512"));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn read_only_file_asked_read_write() {
        let p = tmp("ro", 512);
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        perm.set_readonly(true);
        std::fs::set_permissions(&p, perm).unwrap();
        let e = RawFile::open_disk(&p, false).unwrap_err();
        assert!(matches!(e, BackendError::ReadOnlyFile { .. }), "{e}");
        assert!(e.to_string().contains("attach it read-only"));
        assert!(RawFile::open_disk(&p, true).is_ok());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn directory_empty_file_and_non_iso_are_refused_untouched() {
        let dir = std::env::temp_dir().join(format!("umbra-ide-{}-dir", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for ro in [true, false] {
            let e = RawFile::open_disk(&dir, ro).unwrap_err();
            assert!(matches!(e, BackendError::NotAFile { .. }), "{e}");
        }
        assert!(matches!(
            RawFile::open_iso(&dir).unwrap_err(),
            BackendError::NotAFile { .. }
        ));
        std::fs::remove_dir(&dir).unwrap();

        let empty = tmp("empty", 0);
        let e = RawFile::open_disk(&empty, false).unwrap_err();
        assert!(matches!(e, BackendError::Empty { .. }), "{e}");
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
        std::fs::remove_file(empty).unwrap();

        // 64 KiB of zeros: whole 2048-byte sectors, but no CD001 at 0x8001.
        let zeros = tmp("zeros", 64 << 10);
        let e = RawFile::open_iso(&zeros).unwrap_err();
        assert!(matches!(e, BackendError::NotIso { .. }), "{e}");
        assert!(e.to_string().contains("--disk"));
        // A raw disk image with these bytes is fine.
        assert!(RawFile::open_disk(&zeros, false).is_ok());
        assert_eq!(std::fs::read(&zeros).unwrap(), vec![0u8; 64 << 10]);
        std::fs::remove_file(zeros).unwrap();
    }

    #[test]
    fn iso_signature_is_found_at_sector_16() {
        // ECMA-119 8.1: type byte 1 (primary volume descriptor), `CD001`.
        let mut iso = vec![0u8; 18 * 2048];
        iso[0x8000] = 1;
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        let p = tmp("iso", 0);
        std::fs::write(&p, &iso).unwrap();
        let mut f = RawFile::open_iso(&p).unwrap();
        assert!(f.read_only());
        assert!(looks_like_iso(&mut f));
        // The same bytes cut short of a 2048-byte sector: truncated.
        std::fs::write(&p, &iso[..iso.len() - 512]).unwrap();
        let e = RawFile::open_iso(&p).unwrap_err();
        assert!(
            matches!(e, BackendError::Truncated { sector: 2048, .. }),
            "{e}"
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn snapshot_keeps_writes_in_memory_and_the_base_unchanged() {
        let base: Vec<u8> = (0..2048u32).map(|i| (i % 251) as u8).collect();
        let mut s = Snapshot::new(Box::new(MemBackend::new(base.clone(), true)));
        assert!(!s.read_only());
        assert_eq!(s.len(), 2048);
        // A write straddling blocks 0 and 1, not block-aligned.
        s.write_at(510, &[0xAA; 4]).unwrap();
        assert_eq!(s.dirty_blocks(), 2);
        let mut got = vec![0u8; 2048];
        s.read_at(0, &mut got).unwrap();
        let mut want = base.clone();
        want[510..514].fill(0xAA);
        assert_eq!(got, want, "overlay bytes over the base's");
        assert!(s.write_at(2046, &[0; 4]).is_err(), "past the end");
        assert!(s.read_at(2047, &mut [0; 2]).is_err(), "past the end");
        s.flush().unwrap();
        // The base is read-only: had the overlay written through, the
        // write above would have failed.
        let p = tmp("snap", 1024);
        let mut s = Snapshot::new(Box::new(RawFile::open_disk(&p, true).unwrap()));
        s.write_at(0, &[7; 512]).unwrap();
        let mut b = [0u8; 512];
        s.read_at(0, &mut b).unwrap();
        assert_eq!(b, [7; 512]);
        assert_eq!(
            std::fs::read(&p).unwrap(),
            vec![0u8; 1024],
            "file untouched"
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn raw_file_round_trip_and_flush() {
        let p = tmp("rt", 1024);
        let mut f = RawFile::open_disk(&p, false).unwrap();
        assert_eq!(f.len(), 1024);
        f.write_at(512, &[1, 2, 3]).unwrap();
        f.flush().unwrap();
        let mut b = [0u8; 3];
        f.read_at(512, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3]);
        let mut ro = RawFile::open_disk(&p, true).unwrap();
        assert!(ro.read_only());
        assert!(ro.write_at(0, &[1]).is_err());
        std::fs::remove_file(p).unwrap();
    }
}
