//! Executable memory for translated code: one fixed mapping reserved up
//! front (so that every block can reach every other and the shared stubs
//! with a rel32), filled from the bottom. Code is written, then published:
//! the pages being written are made read-write and not executable, and
//! made read-execute again before anything can run them, so no page is
//! ever writable and executable at once (the W^X rule of STYLE.md).
//!
//! It owns the mapping and the bump pointer; what lives where (blocks,
//! stubs, eviction) is the cache's business.

use std::io;

const PAGE: usize = 4096;

pub struct ExecMem {
    base: *mut u8,
    size: usize,
    /// Offset of the first free byte.
    used: usize,
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
        Ok(ExecMem {
            base: p.cast(),
            size,
            used: 0,
        })
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

    /// Copy `bytes` to `addr` (inside what `alloc` handed out): the pages
    /// are writable, not executable, while the copy runs.
    pub fn write(&mut self, addr: usize, bytes: &[u8]) {
        let start = addr.wrapping_sub(self.base as usize);
        assert!(
            start <= self.size && bytes.len() <= self.size - start,
            "write outside the code memory"
        );
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

    #[test]
    fn alloc_stops_at_the_end() {
        let mut m = ExecMem::new(4096).unwrap();
        assert!(m.alloc(4000).is_some());
        assert!(m.alloc(200).is_none());
        m.reset_to(0);
        assert!(m.alloc(200).is_some());
    }
}
