//! Tiny multiboot test kernels, assembled with iced-x86's `code_asm`: they
//! print a message on COM1 and report a status byte on the test exit port,
//! so that boot tests can check the whole path from loader to serial port
//! without any prebuilt binary. One variant is an ELF32 executable, the
//! other a flat image described by the multiboot a.out kludge.
//!
//! The code, at the entry point:
//!
//! ```text
//!     cli
//!     mov esi, message
//!     mov ecx, length
//!     test ecx, ecx
//!     jz done
//! next:
//!     mov dx, 0x3FD          ; COM1 line status register
//! wait:
//!     in al, dx
//!     test al, 0x20          ; THRE: transmit holding register empty
//!     jz wait
//!     mov dx, 0x3F8          ; COM1 transmit holding register
//!     lodsb
//!     out dx, al
//!     dec ecx
//!     jnz next
//! done:
//!     mov al, status
//!     out 0xF4, al           ; test exit port
//! halt:
//!     hlt
//!     jmp halt
//! ```

use iced_x86::code_asm::*;

use crate::layout::KERNEL_LOAD_ADDR;
use crate::multiboot::{hflags, HEADER_MAGIC};

/// COM1 transmit holding register.
pub const COM1_THR: u16 = 0x3F8;
/// COM1 line status register.
pub const COM1_LSR: u16 = 0x3FD;
/// LSR bit 5: transmit holding register empty.
pub const LSR_THRE: u8 = 1 << 5;
/// Port the test kernels write their status byte to.
pub const EXIT_PORT: u8 = 0xF4;

/// Bytes of zeroed memory (bss) after each test kernel's image.
pub const TEST_BSS: u32 = 0x1000;

/// ELF layout: ELF header, one program header, multiboot header, code.
const ELF_PHDR_OFF: usize = 0x34;
const ELF_MB_HEADER_OFF: usize = 0x60;
const ELF_CODE_OFF: usize = 0x80;
/// a.out kludge layout: the 32-byte header, then the code.
const AOUT_CODE_OFF: usize = 0x20;

/// Assemble the code above at `ip`, with the message at `msg`.
fn code(ip: u32, msg: u32, len: u32, status: u8) -> Vec<u8> {
    let assemble = || -> Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(32)?;
        let mut next = a.create_label();
        let mut wait = a.create_label();
        let mut done = a.create_label();
        let mut halt = a.create_label();
        a.cli()?;
        a.mov(esi, msg)?;
        a.mov(ecx, len)?;
        a.test(ecx, ecx)?;
        a.jz(done)?;
        a.set_label(&mut next)?;
        a.mov(dx, COM1_LSR as u32)?;
        a.set_label(&mut wait)?;
        a.in_(al, dx)?;
        a.test(al, LSR_THRE as u32)?;
        a.jz(wait)?;
        a.mov(dx, COM1_THR as u32)?;
        a.lodsb()?;
        a.out(dx, al)?;
        a.dec(ecx)?;
        a.jnz(next)?;
        a.set_label(&mut done)?;
        a.mov(al, status as u32)?;
        a.out(EXIT_PORT as u32, al)?;
        a.set_label(&mut halt)?;
        a.hlt()?;
        a.jmp(halt)?;
        a.assemble(ip as u64)
    };
    // Only fixed, valid instructions: assembling cannot fail.
    assemble().unwrap_or_default()
}

/// The code followed by the message, placed at `ip`. `mov esi, imm32` has
/// one size whatever the address, so the first pass fixes the length.
fn code_and_message(ip: u32, message: &str, status: u8) -> Vec<u8> {
    let len = message.len() as u32;
    let first = code(ip, 0, len, status);
    let msg_addr = ip + first.len() as u32;
    let mut out = code(ip, msg_addr, len, status);
    out.extend_from_slice(message.as_bytes());
    out
}

/// The 12-byte multiboot header with `flags`.
fn mb_header(flags: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0..4].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    let sum = 0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags);
    h[8..12].copy_from_slice(&sum.to_le_bytes());
    h
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// A multiboot ELF32 kernel loaded at 1 MiB (one PT_LOAD segment covering
/// the whole file plus `TEST_BSS` bytes of bss) that prints `message` on
/// COM1 and writes `status` to port 0xF4.
pub fn multiboot_test_kernel(message: &str, status: u8) -> Vec<u8> {
    let base = KERNEL_LOAD_ADDR as u32;
    let entry = base + ELF_CODE_OFF as u32;
    let mut f = vec![0u8; ELF_CODE_OFF];
    f.extend(code_and_message(entry, message, status));
    let filesz = f.len() as u32;

    // ELF header (System V ABI, i386 supplement).
    f[0..4].copy_from_slice(b"\x7FELF");
    f[4] = 1; // ELFCLASS32
    f[5] = 1; // ELFDATA2LSB
    f[6] = 1; // EV_CURRENT
    put16(&mut f, 16, 2); // e_type ET_EXEC
    put16(&mut f, 18, 3); // e_machine EM_386
    put32(&mut f, 20, 1); // e_version
    put32(&mut f, 24, entry); // e_entry
    put32(&mut f, 28, ELF_PHDR_OFF as u32); // e_phoff
    put16(&mut f, 40, 52); // e_ehsize
    put16(&mut f, 42, 32); // e_phentsize
    put16(&mut f, 44, 1); // e_phnum

    // Program header: PT_LOAD of the whole file at 1 MiB, R+X.
    let p = ELF_PHDR_OFF;
    put32(&mut f, p, 1); // p_type PT_LOAD
    put32(&mut f, p + 4, 0); // p_offset
    put32(&mut f, p + 8, base); // p_vaddr
    put32(&mut f, p + 12, base); // p_paddr
    put32(&mut f, p + 16, filesz); // p_filesz
    put32(&mut f, p + 20, filesz + TEST_BSS); // p_memsz
    put32(&mut f, p + 24, 5); // p_flags PF_R | PF_X
    put32(&mut f, p + 28, 0x1000); // p_align

    f[ELF_MB_HEADER_OFF..ELF_MB_HEADER_OFF + 12]
        .copy_from_slice(&mb_header(hflags::PAGE_ALIGN | hflags::MEMORY_INFO));
    f
}

/// The same kernel as a flat image with the a.out kludge: the header at
/// offset 0 gives header_addr = load_addr = 1 MiB, load_end_addr = end of
/// file, bss_end_addr = `TEST_BSS` further, entry right after the header.
pub fn multiboot_aout_test_kernel(message: &str, status: u8) -> Vec<u8> {
    let base = KERNEL_LOAD_ADDR as u32;
    let entry = base + AOUT_CODE_OFF as u32;
    let mut f = vec![0u8; AOUT_CODE_OFF];
    f.extend(code_and_message(entry, message, status));
    let end = base + f.len() as u32;
    f[0..12].copy_from_slice(&mb_header(hflags::MEMORY_INFO | hflags::AOUT_KLUDGE));
    put32(&mut f, 12, base); // header_addr
    put32(&mut f, 16, base); // load_addr
    put32(&mut f, 20, end); // load_end_addr
    put32(&mut f, 24, end + TEST_BSS); // bss_end_addr
    put32(&mut f, 28, entry); // entry_addr
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
    use std::cell::RefCell;
    use std::rc::Rc;
    use umbra_core::bus::PortIo;
    use umbra_core::interp::Interpreter;
    use umbra_core::mem::GuestMemory;
    use umbra_core::{Budget, Engine, Exit, Vm};

    fn disassemble(code: &[u8], ip: u64) -> Vec<String> {
        let mut d = Decoder::with_ip(32, code, ip, DecoderOptions::NONE);
        let mut f = IntelFormatter::new();
        let mut out = Vec::new();
        for insn in &mut d {
            let mut s = String::new();
            f.format(&insn, &mut s);
            out.push(s);
            if insn.mnemonic() == iced_x86::Mnemonic::Jmp {
                break;
            }
        }
        out
    }

    #[test]
    fn code_is_the_documented_loop() {
        let c = code(0x100080, 0x100100, 5, 0x42);
        let text = disassemble(&c, 0x100080);
        let expect = [
            "cli",
            "mov esi,100100h",
            "mov ecx,5",
            "test ecx,ecx",
            "je short",
            "mov dx,3FDh",
            "in al,dx",
            "test al,20h",
            "je short",
            "mov dx,3F8h",
            "lodsb",
            "out dx,al",
            "dec ecx",
            "jne short",
            "mov al,42h",
            "out 0F4h,al",
            "hlt",
            "jmp short",
        ];
        assert_eq!(text.len(), expect.len(), "{text:?}");
        for (t, e) in text.iter().zip(expect) {
            assert!(t.starts_with(e), "{t} vs {e}");
        }
    }

    #[test]
    fn message_follows_the_code() {
        let k = multiboot_aout_test_kernel("hi!", 7);
        assert!(k.ends_with(b"hi!"));
        // mov esi, imm32 at entry + 1 (after cli) holds the message address.
        let msg = u32::from_le_bytes(k[0x22..0x26].try_into().unwrap());
        assert_eq!(msg, 0x100000 + (k.len() as u32 - 3));
    }

    /// COM1 whose LSR reports "busy" every other read, capturing what is
    /// sent; and the exit port, capturing the status.
    struct Ports {
        out: Rc<RefCell<Vec<u8>>>,
        status: Rc<RefCell<Option<u8>>>,
        lsr_reads: u32,
    }
    impl PortIo for Ports {
        fn read(&mut self, port: u16, _size: u8, _now: u64) -> u32 {
            if port == COM1_LSR {
                self.lsr_reads += 1;
                if self.lsr_reads.is_multiple_of(2) {
                    return LSR_THRE as u32;
                }
            }
            0
        }
        fn write(&mut self, port: u16, _size: u8, value: u32, _now: u64) {
            match port {
                COM1_THR => self.out.borrow_mut().push(value as u8),
                0xF4 => *self.status.borrow_mut() = Some(value as u8),
                _ => {}
            }
        }
    }

    /// Boot `image` with the multiboot loader on the interpreter; return
    /// what reached COM1 and the exit port.
    fn boot(image: &[u8]) -> (Vec<u8>, Option<u8>) {
        let mut vm = Vm::new(GuestMemory::new(8 << 20).unwrap());
        let out = Rc::new(RefCell::new(Vec::new()));
        let status = Rc::new(RefCell::new(None));
        let ports = |out: &Rc<RefCell<Vec<u8>>>, status: &Rc<RefCell<Option<u8>>>| {
            Box::new(Ports {
                out: out.clone(),
                status: status.clone(),
                lsr_reads: 0,
            })
        };
        vm.bus.add_ports(0x3F8, 8, ports(&out, &status));
        vm.bus.add_ports(0xF4, 1, ports(&out, &status));
        crate::multiboot::load_multiboot(&mut vm.mem, &mut vm.cpu, image, "", &[]).unwrap();
        let exit = Interpreter::new().run(&mut vm, Budget::insns(100_000));
        assert_eq!(exit, Exit::Halted);
        let o = out.borrow().clone();
        let s = *status.borrow();
        (o, s)
    }

    #[test]
    fn elf_kernel_runs_on_the_interpreter() {
        assert_eq!(
            boot(&multiboot_test_kernel("Hello, COM1\n", 0x5A)),
            (b"Hello, COM1\n".to_vec(), Some(0x5A))
        );
    }

    #[test]
    fn aout_kernel_runs_on_the_interpreter() {
        assert_eq!(
            boot(&multiboot_aout_test_kernel("a.out", 3)),
            (b"a.out".to_vec(), Some(3))
        );
        assert_eq!(
            boot(&multiboot_aout_test_kernel("", 9)),
            (Vec::new(), Some(9))
        );
    }
}
