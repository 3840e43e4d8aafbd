//! Executable memory for translated code: one fixed mapping reserved up
//! front (so that every block can reach every other and the shared stubs
//! with a rel32), filled from the bottom. The mapping is read-execute and
//! never writable and executable at once (the W^X rule of STYLE.md); code
//! is written, then published, in one of two ways:
//!
//! - through `/proc/self/mem`, where the kernel allows it (Linux's default
//!   `proc_mem.force_override`): the kernel copies the bytes into the
//!   read-execute pages and the mapping's protection never changes. One
//!   `pwrite` per write. The workload guest writes code or patches a
//!   chain some 120,000 times, and each `mprotect` pair of the other way
//!   splits and merges the mapping and flushes the TLB, which the guest
//!   code then refills: on the AMD EPYC host of the measurement the
//!   workload took 16% less time this way;
//! - else the pages being written are made read-write and not
//!   executable, and read-execute again before anything can run them.
//!
//! It owns the mapping and the bump pointer; what lives where (blocks,
//! stubs, eviction) is the cache's business.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const PAGE: usize = 4096;

pub struct ExecMem {
    base: *mut u8,
    size: usize,
    /// Offset of the first free byte.
    used: usize,
    /// `/proc/self/mem` open for writing, when writes through it work.
    mem_file: Option<File>,
}

impl ExecMem {
    /// Reserve `size` bytes (rounded up to pages) of read-execute memory.
    pub fn new(size: usize) -> io::Result<Self> {
        let size = size.div_ceil(PAGE).max(1) * PAGE;
        // SAFETY: a fresh anonymous private mapping at an address the
        // kernel chooses; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut m = ExecMem {
            base: p.cast(),
            size,
            used: 0,
            mem_file: None,
        };
        m.mem_file = m.open_proc_mem();
        Ok(m)
    }

    /// `/proc/self/mem` if a write through it lands in the mapping (a
    /// hardened kernel may refuse it, or not expose /proc).
    fn open_proc_mem(&self) -> Option<File> {
        let f = File::options().write(true).open("/proc/self/mem").ok()?;
        let last = self.base as usize + self.size - 1;
        f.write_all_at(&[0xCC], last as u64).ok()?;
        // SAFETY: `last` is the mapping's last byte, readable.
        let landed = unsafe { core::ptr::read_volatile(last as *const u8) } == 0xCC;
        f.write_all_at(&[0], last as u64).ok()?;
        landed.then_some(f)
    }

    /// Whether writes go through `/proc/self/mem` (else `mprotect`).
    pub fn writes_through_proc_mem(&self) -> bool {
        self.mem_file.is_some()
    }

    /// Host address of the first byte.
    pub fn base(&self) -> usize {
        self.base as usize
    }
    pub fn size(&self) -> usize {
        self.size
    }
    pub fn used(&self) -> usize {
        self.used
    }
    /// Address the next `alloc` returns (16-byte aligned).
    pub fn next_addr(&self) -> usize {
        self.base as usize + self.used.next_multiple_of(16)
    }

    /// Room for `len` bytes (16-byte aligned start), or `None` when full.
    pub fn alloc(&mut self, len: usize) -> Option<usize> {
        self.alloc_below(len, self.size)
    }

    /// Like `alloc`, but the room must end at or before offset `limit`
    /// (the end of the cache's current region).
    pub fn alloc_below(&mut self, len: usize, limit: usize) -> Option<usize> {
        let start = self.used.next_multiple_of(16);
        let end = start.checked_add(len)?;
        if end > limit.min(self.size) {
            return None;
        }
        self.used = end;
        Some(self.base as usize + start)
    }

    /// Move the bump pointer to offset `at` (the start of a region whose
    /// blocks were just evicted): what lies above it is free again.
    pub fn set_cursor(&mut self, at: usize) {
        self.used = at.min(self.size);
    }

    /// Forget everything written after offset `keep` (a full flush keeps
    /// the shared stubs at the bottom).
    pub fn reset_to(&mut self, keep: usize) {
        self.used = keep.min(self.used);
    }

    /// Copy `bytes` to `addr` (inside what `alloc` handed out): by the
    /// kernel through `/proc/self/mem`, or with the pages writable, not
    /// executable, while the copy runs.
    pub fn write(&mut self, addr: usize, bytes: &[u8]) {
        let start = addr.wrapping_sub(self.base as usize);
        assert!(
            start <= self.size && bytes.len() <= self.size - start,
            "write outside the code memory"
        );
        if let Some(f) = &self.mem_file {
            if f.write_all_at(bytes, addr as u64).is_ok() {
                return;
            }
            // Refused after it worked at start (a changed policy): the
            // other way from now on.
            self.mem_file = None;
        }
        let first = start & !(PAGE - 1);
        let last = (start + bytes.len()).next_multiple_of(PAGE);
        self.protect(first, last - first, libc::PROT_READ | libc::PROT_WRITE);
        // SAFETY: [addr, addr + len) is inside the mapping (asserted
        // above) and was just made writable; `bytes` is host memory that
        // cannot overlap the code mapping.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
        self.protect(first, last - first, libc::PROT_READ | libc::PROT_EXEC);
    }

    fn protect(&mut self, off: usize, len: usize, prot: i32) {
        // SAFETY: [off, off + len) is page-aligned and inside the mapping.
        let r = unsafe { libc::mprotect(self.base.add(off).cast(), len, prot) };
        // Changing the protection of our own mapping fails only when the
        // kernel is out of memory for the split mapping: nothing to
        // recover there.
        assert_eq!(
            r,
            0,
            "mprotect of code memory: {}",
            io::Error::last_os_error()
        );
    }
}

impl Drop for ExecMem {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; no code from it runs any more
        // (the engine that owns it is being dropped).
        unsafe { libc::munmap(self.base.cast(), self.size) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_code_runs() {
        let mut m = ExecMem::new(1 << 16).unwrap();
        let a = m.alloc(6).unwrap();
        // mov eax, 42 ; ret
        m.write(a, &[0xB8, 42, 0, 0, 0, 0xC3]);
        // SAFETY: `a` holds a complete function in the System V ABI.
        let f: extern "sysv64" fn() -> u32 = unsafe { core::mem::transmute(a) };
        assert_eq!(f(), 42);
    }

    /// Both ways of writing: code written and then overwritten in place
    /// (a chain patch) runs as written, the mapping never writable.
    #[test]
    fn code_is_written_and_patched_either_way() {
        for proc_mem in [true, false] {
            let mut m = ExecMem::new(1 << 16).unwrap();
            if !proc_mem {
                m.mem_file = None;
            } else if !m.writes_through_proc_mem() {
                eprintln!("skipped: /proc/self/mem refuses writes here");
                continue;
            }
            let a = m.alloc(6).unwrap();
            // mov eax, 42 ; ret
            m.write(a, &[0xB8, 42, 0, 0, 0, 0xC3]);
            // SAFETY: `a` holds a complete function in the System V ABI.
            let f: extern "sysv64" fn() -> u32 = unsafe { core::mem::transmute(a) };
            assert_eq!(f(), 42);
            m.write(a + 1, &7u32.to_le_bytes());
            assert_eq!(f(), 7, "patched (proc_mem {proc_mem})");
            // The protection as the kernel reports it.
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            let base = format!("{:x}-", m.base());
            let line = maps.lines().find(|l| l.starts_with(&base)).unwrap();
            assert!(line.contains(" r-xp "), "still read-execute: {line}");
        }
    }

    #[test]
    fn alloc_stops_at_the_end() {
        let mut m = ExecMem::new(4096).unwrap();
        assert!(m.alloc(4000).is_some());
        assert!(m.alloc(200).is_none());
        m.reset_to(0);
        assert!(m.alloc(200).is_some());
    }
}
