//! `BootError`: why an image could not be loaded, worded so that the user
//! knows what to change (another file, more memory, a shorter command line).

use umbra_core::mem::MemError;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("the kernel is not a bzImage: {0} (pass a Linux bzImage such as /boot/vmlinuz-*, or a multiboot kernel)")]
    NotBzImage(&'static str),
    #[error("the kernel speaks Linux boot protocol {major}.{minor:02}; umbra needs 2.06 or later (use a Linux 2.6.22 or newer kernel)")]
    ProtocolTooOld { major: u8, minor: u8 },
    #[error("the kernel command line is {len} bytes; this kernel accepts at most {max} (shorten --append)")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the kernel command line contains a NUL byte; remove it from --append")]
    CmdlineHasNul,
    #[error("{what} does not fit in {have_mib} MiB of guest RAM; it needs at least {need_mib} MiB (raise --memory)")]
    DoesNotFit {
        what: &'static str,
        have_mib: u64,
        need_mib: u64,
    },
    #[error("guest RAM of {have_mib} MiB is too small for a direct boot; give at least {need_mib} MiB with --memory")]
    RamTooSmall { have_mib: u64, need_mib: u64 },
    #[error("no multiboot header (magic 0x1BADB002) in the first 8192 bytes of the kernel: pass a multiboot v1 kernel or a Linux bzImage")]
    NoMultibootHeader,
    #[error("the multiboot header at offset {offset:#x} has a bad checksum (magic + flags + checksum must be 0): the image is damaged")]
    MultibootChecksum { offset: usize },
    #[error("the multiboot kernel requires features umbra does not provide (header flag bits {bits:#x}); rebuild it without them")]
    MultibootFlags { bits: u32 },
    #[error("the multiboot kernel is not a loadable image: {0}")]
    BadImage(String),
    #[error("the kernel wants {what} at {addr:#x}..{end:#x}, outside the {ram_mib} MiB of guest RAM above 1 MiB (raise --memory or relink the kernel)")]
    OutsideRam {
        what: &'static str,
        addr: u64,
        end: u64,
        ram_mib: u64,
    },
    #[error("the multiboot command lines and module names take {len} bytes, more than the {max} bytes of room; shorten them")]
    MultibootInfoTooBig { len: usize, max: usize },
    #[error("the BIOS image is {len} bytes; it must be 64, 128, 192 or 256 KiB (a SeaBIOS bios.bin or bios-256k.bin)")]
    BadBiosSize { len: usize },
    #[error("the VGA BIOS image is {len} bytes; it must be 1..=128 KiB to fit 0xC0000-0xDFFFF (pass a SeaBIOS vgabios-*.bin)")]
    BadOptionRomSize { len: usize },
    #[error("cannot map the BIOS image: {0}")]
    Mem(#[from] MemError),
}
