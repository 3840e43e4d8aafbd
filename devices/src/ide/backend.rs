//! Block backends for the IDE drives: the `BlockBackend` trait, a raw image
//! file (`RawFile`) and an in-memory image for tests (`MemBackend`).
//!
//! Owns: byte-addressed reads and writes of an image, flushing it to stable
//! storage, and the host-side checks made when an image is opened. Does not
//! own: sectors, geometry or what a guest may ask for (the drive models
//! range-check every request before it reaches a backend).

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
    #[error("cannot open image file {path}: {source}")]
    Open { path: String, source: io::Error },
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
        // Refuse a write-protected file up front: the open would succeed for
        // root and the guest's writes would then fail one by one.
        if let Ok(m) = std::fs::metadata(path) {
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

    /// A CD-ROM ISO image (2048-byte sectors, always read-only).
    pub fn open_iso(path: &Path) -> Result<Self, BackendError> {
        Self::open(path, true, 2048)
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
