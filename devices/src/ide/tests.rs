//! Unit tests of the IDE controller. Expected values come from ATA-6,
//! MMC-2/SPC-2 and the PIIX3 datasheet, not from the code.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use super::dma::*;
use super::*;
use crate::pci::{PciFunction, CMD_IO, CMD_MASTER};
use crate::IrqSink;

struct Levels([bool; 16]);

impl IrqSink for Levels {
    fn set_irq(&mut self, irq: u8, level: bool) {
        if let Some(l) = self.0.get_mut(irq as usize) {
            *l = level;
        }
    }
}

fn setup() -> (Ide, Rc<RefCell<Levels>>) {
    let l = Rc::new(RefCell::new(Levels([false; 16])));
    let ide = Ide::new(IrqLine::new(l.clone(), 14), IrqLine::new(l.clone(), 15));
    (ide, l)
}

/// Byte `i` of sector `s` of the test pattern.
fn pat(s: u64, i: usize) -> u8 {
    (s as u8).wrapping_mul(7).wrapping_add(i as u8) ^ 0x5a
}

fn disk(sectors: u64, ro: bool) -> MemBackend {
    let mut v = vec![0u8; sectors as usize * 512];
    for (k, b) in v.iter_mut().enumerate() {
        *b = pat(k as u64 / 512, k % 512);
    }
    MemBackend::new(v, ro)
}

fn iso(sectors: u64) -> MemBackend {
    let mut v = vec![0u8; sectors as usize * 2048];
    for (k, b) in v.iter_mut().enumerate() {
        *b = pat(k as u64 / 2048, k % 2048);
    }
    MemBackend::new(v, true)
}

/// A large sparse disk for 48-bit addresses.
struct Sparse(BTreeMap<u64, u8>);

impl BlockBackend for Sparse {
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.0.get(&(off + i as u64)).copied().unwrap_or(0);
        }
        Ok(())
    }
    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<()> {
        for (i, b) in buf.iter().enumerate() {
            self.0.insert(off + i as u64, *b);
        }
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> u64 {
        1 << 41
    }
    fn read_only(&self) -> bool {
        false
    }
}

const P: u16 = PRIMARY_BASE;
const S: u16 = SECONDARY_BASE;

fn out(ide: &mut Ide, port: u16, v: u8) {
    ide.write(port, 1, u32::from(v));
}

fn inb(ide: &mut Ide, port: u16) -> u8 {
    ide.read(port, 1) as u8
}

/// Issue a 28-bit LBA command on the primary master.
fn cmd28(ide: &mut Ide, cmd: u8, lba: u32, count: u8) {
    out(ide, P + 6, 0xe0 | ((lba >> 24) as u8 & 0x0f));
    out(ide, P + 2, count);
    out(ide, P + 3, lba as u8);
    out(ide, P + 4, (lba >> 8) as u8);
    out(ide, P + 5, (lba >> 16) as u8);
    out(ide, P + 7, cmd);
}

/// Issue a 48-bit LBA command on the primary master (high bytes first).
fn cmd48(ide: &mut Ide, cmd: u8, lba: u64, count: u16) {
    out(ide, P + 6, 0x40);
    out(ide, P + 2, (count >> 8) as u8);
    out(ide, P + 3, (lba >> 24) as u8);
    out(ide, P + 4, (lba >> 32) as u8);
    out(ide, P + 5, (lba >> 40) as u8);
    out(ide, P + 2, count as u8);
    out(ide, P + 3, lba as u8);
    out(ide, P + 4, (lba >> 8) as u8);
    out(ide, P + 5, (lba >> 16) as u8);
    out(ide, P + 7, cmd);
}

fn read_words(ide: &mut Ide, base: u16, n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..n {
        let w = ide.read(base, 2) as u16;
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

fn identify(ide: &mut Ide, base: u16, cmd: u8) -> Vec<u16> {
    out(ide, base + 7, cmd);
    (0..256).map(|_| ide.read(base, 2) as u16).collect()
}

#[test]
fn identify_device_words() {
    let (mut ide, irq) = setup();
    ide.attach_disk(0, false, Box::new(disk(2048, false)));
    out(&mut ide, P + 6, 0xa0);
    out(&mut ide, P + 7, ata::CMD_IDENTIFY);
    assert!(irq.borrow().0[14], "IDENTIFY interrupts before its block");
    assert_eq!(inb(&mut ide, PRIMARY_CTRL), ST_DRDY | ST_DSC | ST_DRQ);
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC | ST_DRQ);
    assert!(!irq.borrow().0[14], "status read acknowledges");
    let w: Vec<u16> = (0..256).map(|_| ide.read(P, 2) as u16).collect();
    assert_eq!(inb(&mut ide, P + 7) & ST_DRQ, 0);
    assert_eq!(w[0], 0x0040);
    // "UM" "BR" "A " "HA": first character in the high byte.
    assert_eq!(&w[27..31], &[0x554d, 0x4252, 0x4120, 0x4841]);
    assert_eq!(w[46], 0x2020);
    assert_eq!(w[47], 0x8010);
    assert_eq!(w[49] & 0x0300, 0x0300);
    assert_eq!(w[53], 0x0007);
    assert_eq!((w[60], w[61]), (2048, 0));
    assert_eq!(w[63] & 0x07, 0x07);
    assert_eq!(w[83] & 0xf400, 0x7400, "valid; FLUSH EXT, FLUSH, 48-bit");
    assert_eq!((w[82] & 0x20, w[85] & 0x20), (0x20, 0x20), "write cache on");
    assert_eq!(w[86] & 0x0400, 0x0400, "48-bit enabled");
    assert_eq!(w[88] & 0x3f, 0x3f);
    assert_eq!(&w[100..104], &[2048, 0, 0, 0]);
    // SET FEATURES: MWDMA2 shows as selected in word 63 bit 10.
    out(&mut ide, P + 1, 0x03);
    out(&mut ide, P + 2, 0x22);
    out(&mut ide, P + 7, ata::CMD_SET_FEATURES);
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC);
    // A later PIO mode (PIO4 = 0Ch) keeps the DMA selection.
    out(&mut ide, P + 2, 0x0c);
    out(&mut ide, P + 7, ata::CMD_SET_FEATURES);
    let w = identify(&mut ide, P, ata::CMD_IDENTIFY);
    assert_eq!(w[63], 0x0407);
    assert_eq!(w[88] & 0xff00, 0);
    // An invalid mode aborts.
    out(&mut ide, P + 2, 0x50);
    out(&mut ide, P + 7, ata::CMD_SET_FEATURES);
    assert_eq!(inb(&mut ide, P + 1), ERR_ABRT);
}

#[test]
fn pio_lba28_round_trip() {
    let (mut ide, irq) = setup();
    ide.attach_disk(0, false, Box::new(disk(64, false)));
    cmd28(&mut ide, ata::CMD_WRITE_SECTORS, 5, 2);
    assert_eq!(inb(&mut ide, PRIMARY_CTRL), ST_DRDY | ST_DSC | ST_DRQ);
    assert!(
        !irq.borrow().0[14],
        "no interrupt before the first write block"
    );
    for k in 0..256u32 {
        ide.write(P, 2, 0xa000 + k);
    }
    assert!(irq.borrow().0[14], "interrupt asking for the second block");
    // 32-bit data accesses move 4 bytes.
    for k in 0..128u32 {
        ide.write(P, 4, 0xb000_0000 + k);
    }
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC);
    cmd28(&mut ide, ata::CMD_READ_SECTORS, 4, 3);
    let d = read_words(&mut ide, P, 768);
    assert_eq!(d[0], pat(4, 0), "sector 4 untouched");
    assert_eq!(d[511], pat(4, 511));
    assert_eq!(&d[512..514], &[0x00, 0xa0]);
    assert_eq!(&d[1022..1024], &[0xff, 0xa0]);
    assert_eq!(&d[1024..1028], &[0x00, 0x00, 0x00, 0xb0]);
    assert_eq!(&d[1536 - 4..1536], &[0x7f, 0x00, 0x00, 0xb0]);
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC);
}

#[test]
fn snapshot_restores_a_transfer_in_progress() {
    let (mut ide, _irq) = setup();
    ide.attach_disk(0, false, Box::new(disk(8, false)));
    cmd28(&mut ide, ata::CMD_READ_SECTORS, 2, 1);
    let first = read_words(&mut ide, P, 10);
    let snap = ide.state();
    let (mut other, _) = setup();
    other.attach_disk(0, false, Box::new(disk(8, false)));
    other.restore(snap.clone());
    assert_eq!(other.state(), snap);
    let rest = read_words(&mut other, P, 246);
    assert_eq!(first[0], pat(2, 0));
    assert_eq!((rest[0], rest[491]), (pat(2, 20), pat(2, 511)));
    assert_eq!(inb(&mut other, P + 7), ST_DRDY | ST_DSC);
}

#[test]
fn pio_lba48_round_trip() {
    let (mut ide, _irq) = setup();
    ide.attach_disk(0, false, Box::new(Sparse(BTreeMap::new())));
    let lba = 0x8765_4321u64;
    cmd48(&mut ide, ata::CMD_WRITE_SECTORS_EXT, lba, 1);
    for k in 0..256u32 {
        ide.write(P, 2, k * 3);
    }
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC);
    // HOB reads return the previous (high) bytes.
    out(&mut ide, PRIMARY_CTRL, CTL_HOB);
    assert_eq!(inb(&mut ide, P + 3), 0x87);
    assert_eq!(inb(&mut ide, P + 4), 0x00);
    out(&mut ide, PRIMARY_CTRL, 0);
    // The 28-bit command would address another sector: read both.
    cmd48(&mut ide, ata::CMD_READ_SECTORS_EXT, lba, 1);
    let d = read_words(&mut ide, P, 256);
    assert_eq!(u16::from_le_bytes([d[2], d[3]]), 3);
    assert_eq!(u16::from_le_bytes([d[510], d[511]]), 255 * 3);
    cmd48(&mut ide, ata::CMD_READ_SECTORS_EXT, lba & 0x0fff_ffff, 1);
    let d = read_words(&mut ide, P, 256);
    assert_eq!(d[2], 0);
}

#[test]
fn read_write_multiple() {
    let (mut ide, irq) = setup();
    ide.attach_disk(0, false, Box::new(disk(64, false)));
    cmd28(&mut ide, ata::CMD_READ_MULTIPLE, 0, 4);
    assert_eq!(
        inb(&mut ide, P + 7) & (ST_ERR | ST_DRQ),
        ST_ERR,
        "mode not set"
    );
    assert_eq!(inb(&mut ide, P + 1), ERR_ABRT);
    out(&mut ide, P + 2, 4);
    out(&mut ide, P + 7, ata::CMD_SET_MULTIPLE);
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC);
    cmd28(&mut ide, ata::CMD_READ_MULTIPLE, 8, 4);
    assert!(irq.borrow().0[14]);
    // One DRQ block of four sectors, then done.
    let d = read_words(&mut ide, P, 1024);
    assert_eq!(d[3 * 512 + 9], pat(11, 9));
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC);
}

#[test]
fn flush_reaches_backend() {
    let (mut ide, irq) = setup();
    let b = disk(8, false);
    let flushes = b.flushes.clone();
    ide.attach_disk(0, false, Box::new(b));
    out(&mut ide, P + 7, ata::CMD_FLUSH_CACHE);
    assert_eq!(flushes.get(), 1);
    assert!(irq.borrow().0[14]);
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC);
    out(&mut ide, P + 7, ata::CMD_FLUSH_CACHE_EXT);
    assert_eq!(flushes.get(), 2);
}

#[test]
fn read_only_write_aborts() {
    let (mut ide, irq) = setup();
    ide.attach_disk(0, false, Box::new(disk(8, true)));
    cmd28(&mut ide, ata::CMD_WRITE_SECTORS, 0, 1);
    assert!(irq.borrow().0[14]);
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC | ST_ERR);
    assert_eq!(inb(&mut ide, P + 1), ERR_ABRT);
    cmd28(&mut ide, ata::CMD_WRITE_DMA, 0, 1);
    assert_eq!(inb(&mut ide, P + 1), ERR_ABRT);
}

#[test]
fn out_of_range_is_idnf() {
    let (mut ide, _irq) = setup();
    ide.attach_disk(0, false, Box::new(disk(8, false)));
    cmd28(&mut ide, ata::CMD_READ_SECTORS, 7, 2);
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC | ST_ERR);
    assert_eq!(inb(&mut ide, P + 1), ERR_IDNF);
    cmd28(&mut ide, ata::CMD_READ_SECTORS, 7, 1);
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC | ST_DRQ);
}

#[test]
fn unknown_command_aborts_and_nien_masks() {
    let (mut ide, irq) = setup();
    ide.attach_disk(0, false, Box::new(disk(8, false)));
    out(&mut ide, PRIMARY_CTRL, CTL_NIEN);
    out(&mut ide, P + 7, 0xff);
    assert!(!irq.borrow().0[14], "nIEN masks INTRQ");
    out(&mut ide, PRIMARY_CTRL, 0);
    assert!(irq.borrow().0[14], "pending interrupt shows once unmasked");
    assert_eq!(inb(&mut ide, P + 1), ERR_ABRT);
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC | ST_ERR);
}

#[test]
fn soft_reset_signatures() {
    let (mut ide, _irq) = setup();
    ide.attach_disk(0, false, Box::new(disk(8, false)));
    ide.attach_cdrom(1, false, Box::new(iso(4)));
    for (base, ctl) in [(P, PRIMARY_CTRL), (S, SECONDARY_CTRL)] {
        out(&mut ide, base + 3, 0x77);
        out(&mut ide, ctl, CTL_SRST);
        assert_eq!(inb(&mut ide, ctl) & ST_BSY, ST_BSY);
        out(&mut ide, ctl, 0);
        // Select the (absent) slave, then reset again: SRST selects device 0.
        out(&mut ide, base + 6, 0xb0);
        out(&mut ide, ctl, CTL_SRST);
        out(&mut ide, ctl, 0);
    }
    assert_eq!(inb(&mut ide, P + 6) & DEV_SLAVE, 0, "master selected");
    let sig = |ide: &mut Ide, b: u16| [1, 2, 3, 4, 5].map(|r| inb(ide, b + r));
    assert_eq!(sig(&mut ide, P), [0x01, 1, 1, 0x00, 0x00]);
    assert_eq!(sig(&mut ide, S), [0x01, 1, 1, 0x14, 0xeb]);
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC);
    // IDENTIFY DEVICE to an ATAPI device aborts and keeps the signature.
    out(&mut ide, S + 7, ata::CMD_IDENTIFY);
    assert_eq!(inb(&mut ide, S + 1), ERR_ABRT);
    assert_eq!((inb(&mut ide, S + 4), inb(&mut ide, S + 5)), (0x14, 0xeb));
    // EXECUTE DEVICE DIAGNOSTIC: error 01h (passed).
    out(&mut ide, P + 7, ata::CMD_DIAGNOSTIC);
    assert_eq!(inb(&mut ide, P + 1), 0x01);
    // The absent slave reads 0 and ignores commands.
    out(&mut ide, P + 6, 0xb0);
    assert_eq!(inb(&mut ide, P + 7), 0);
    // A channel without drives floats.
    let (mut empty, _) = setup();
    assert_eq!(inb(&mut empty, S + 7), 0xff);
}

/// Run a packet command on the secondary master; returns the error
/// register (0 on success) and the data.
fn packet(ide: &mut Ide, cdb: &[u8], bcl: u16) -> (u8, Vec<u8>) {
    out(ide, S + 6, 0xa0);
    out(ide, S + 1, 0);
    out(ide, S + 4, bcl as u8);
    out(ide, S + 5, (bcl >> 8) as u8);
    out(ide, S + 7, ata::CMD_PACKET);
    assert_eq!(inb(ide, S + 7) & ST_DRQ, ST_DRQ);
    assert_eq!(inb(ide, S + 2), IR_COD);
    let mut p = [0u8; 12];
    p[..cdb.len()].copy_from_slice(cdb);
    for c in p.chunks(2) {
        ide.write(S, 2, u32::from(u16::from_le_bytes([c[0], c[1]])));
    }
    let mut data = Vec::new();
    while inb(ide, S + 7) & ST_DRQ != 0 {
        assert_eq!(inb(ide, S + 2), IR_IO);
        let n = usize::from(inb(ide, S + 4)) | usize::from(inb(ide, S + 5)) << 8;
        let limit = if bcl == 0 { 0xfffe } else { usize::from(bcl) };
        assert!(n <= limit && n > 0);
        data.extend(read_words(ide, S, n.div_ceil(2)).into_iter().take(n));
    }
    assert_eq!(inb(ide, S + 2), IR_COD | IR_IO);
    let st = inb(ide, S + 7);
    let err = if st & ST_ERR != 0 { inb(ide, S + 1) } else { 0 };
    (err, data)
}

fn sense(ide: &mut Ide) -> (u8, u8) {
    let (e, d) = packet(ide, &[atapi::SCSI_REQUEST_SENSE, 0, 0, 0, 18], 0xfffe);
    assert_eq!(e, 0);
    assert_eq!(d.len(), 18);
    assert_eq!(d[0], 0x70);
    (d[2], d[12])
}

#[test]
fn atapi_commands() {
    let (mut ide, _irq) = setup();
    ide.attach_cdrom(1, false, Box::new(iso(100)));
    let w = identify(&mut ide, S, ata::CMD_IDENTIFY_PACKET);
    assert_eq!(w[0], 0x85c0);
    // Unit attention after power on, then ready.
    let (e, _) = packet(&mut ide, &[atapi::SCSI_TEST_UNIT_READY], 0);
    assert_eq!(e, 0x60);
    assert_eq!(sense(&mut ide), (0x06, 0x29));
    assert_eq!(packet(&mut ide, &[atapi::SCSI_TEST_UNIT_READY], 0).0, 0);
    // INQUIRY.
    let (e, d) = packet(&mut ide, &[atapi::SCSI_INQUIRY, 0, 0, 0, 36], 0xfffe);
    assert_eq!(e, 0);
    assert_eq!((d.len(), d[0], d[1] & 0x80), (36, 0x05, 0x80));
    assert_eq!(&d[8..13], b"UMBRA");
    // READ CAPACITY: last LBA 99, 2048-byte blocks.
    let (_, d) = packet(&mut ide, &[atapi::SCSI_READ_CAPACITY], 0xfffe);
    assert_eq!(d, [0, 0, 0, 99, 0, 0, 8, 0]);
    // READ(10) of two sectors with a 2048-byte limit: two DRQ blocks.
    let (e, d) = packet(
        &mut ide,
        &[atapi::SCSI_READ_10, 0, 0, 0, 0, 3, 0, 0, 2],
        2048,
    );
    assert_eq!(e, 0);
    assert_eq!(d.len(), 4096);
    assert_eq!(
        (d[0], d[2047], d[2048]),
        (pat(3, 0), pat(3, 2047), pat(4, 0))
    );
    // READ(12).
    let (_, d) = packet(
        &mut ide,
        &[atapi::SCSI_READ_12, 0, 0, 0, 0, 99, 0, 0, 0, 1],
        0,
    );
    assert_eq!((d.len(), d[5]), (2048, pat(99, 5)));
    // READ TOC format 0 in LBA: track 1 at 0, lead-out at 100.
    let toc = [atapi::SCSI_READ_TOC, 0, 0, 0, 0, 0, 0, 0, 100];
    let (_, d) = packet(&mut ide, &toc, 0xfffe);
    assert_eq!(&d[..4], &[0, 18, 1, 1]);
    assert_eq!(&d[4..12], &[0, 0x14, 1, 0, 0, 0, 0, 0]);
    assert_eq!(&d[12..20], &[0, 0x14, 0xaa, 0, 0, 0, 0, 100]);
    // MSF: lead-out = 100 + 150 frames = 0:03:25; track 1 at 0:02:00.
    let (_, d) = packet(
        &mut ide,
        &[atapi::SCSI_READ_TOC, 2, 0, 0, 0, 0, 0, 0, 100],
        0xfffe,
    );
    assert_eq!(&d[8..12], &[0, 0, 2, 0]);
    assert_eq!(&d[16..20], &[0, 0, 3, 25]);
    // Out of range: ILLEGAL REQUEST / LBA out of range.
    let (e, _) = packet(&mut ide, &[atapi::SCSI_READ_10, 0, 0, 0, 0, 99, 0, 0, 2], 0);
    assert_eq!(e >> 4, 0x05);
    assert_eq!(sense(&mut ide), (0x05, 0x21));
    // Unknown opcode: invalid command operation code.
    let (e, _) = packet(&mut ide, &[0xff], 0);
    assert_eq!(e >> 4, 0x05);
    assert_eq!(sense(&mut ide), (0x05, 0x20));
    assert_eq!(sense(&mut ide), (0x00, 0x00), "sense clears once read");
    // GET CONFIGURATION: current profile CD-ROM.
    let (_, d) = packet(
        &mut ide,
        &[atapi::SCSI_GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 0, 16],
        0xfffe,
    );
    assert_eq!(&d[6..8], &[0, 8]);
    // GET EVENT STATUS NOTIFICATION, polled, media class: no change.
    let gesn = [atapi::SCSI_GET_EVENT_STATUS, 1, 0, 0, 0x10, 0, 0, 0, 8];
    let (_, d) = packet(&mut ide, &gesn, 0xfffe);
    assert_eq!(&d[..6], &[0, 6, 4, 0x10, 0, 2]);
    // MODE SENSE(10) capabilities page.
    let (_, d) = packet(
        &mut ide,
        &[atapi::SCSI_MODE_SENSE_10, 0, 0x2a, 0, 0, 0, 0, 0, 64],
        0xfffe,
    );
    assert_eq!(d[8], 0x2a);
    assert_eq!(usize::from(d[1]) + 2, d.len());
    for op in [atapi::SCSI_START_STOP, atapi::SCSI_PREVENT_ALLOW] {
        assert_eq!(packet(&mut ide, &[op], 0).0, 0);
    }
}

#[test]
fn atapi_no_medium() {
    let (mut ide, _irq) = setup();
    ide.attach_cdrom(1, false, Box::new(MemBackend::new(Vec::new(), true)));
    packet(&mut ide, &[atapi::SCSI_TEST_UNIT_READY], 0);
    sense(&mut ide);
    let (e, _) = packet(&mut ide, &[atapi::SCSI_TEST_UNIT_READY], 0);
    assert_eq!(e >> 4, 0x02);
    assert_eq!(sense(&mut ide), (0x02, 0x3a));
}

struct FakeMem(Vec<u8>);

impl DmaMemory for FakeMem {
    fn read(&mut self, phys: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.0.get(phys as usize + i).copied().unwrap_or(0xff);
        }
    }
    fn write(&mut self, phys: u64, buf: &[u8]) {
        for (i, b) in buf.iter().enumerate() {
            if let Some(m) = self.0.get_mut(phys as usize + i) {
                *m = *b;
            }
        }
    }
}

/// PCI set-up: BAR4 at 0xC000, I/O and bus master enabled. Returns the
/// function so it stays alive.
fn enable_pci(ide: &Ide) -> IdePciFunction {
    let mut f = ide.pci_function();
    f.write_config(0x20, 4, 0xc000);
    f.write_config(0x04, 2, u32::from(CMD_IO | CMD_MASTER));
    f
}

/// Two-entry PRD table at 0x1000: 512 bytes at 0x2000, 512 at 0x3000.
fn prd(mem: &mut FakeMem, second_len: u32) {
    let t = [0x2000u32, 512, 0x3000, PRD_EOT | second_len];
    for (i, v) in t.iter().enumerate() {
        mem.write(0x1000 + 4 * i as u64, &v.to_le_bytes());
    }
}

#[test]
fn dma_read_and_write() {
    let (mut ide, irq) = setup();
    ide.attach_disk(0, false, Box::new(disk(64, false)));
    let _f = enable_pci(&ide);
    assert_eq!(ide.bmiba(), Some(0xc000));
    let mut mem = FakeMem(vec![0; 0x10000]);
    prd(&mut mem, 512);
    cmd28(&mut ide, ata::CMD_READ_DMA, 1, 2);
    assert!(!ide.dma_pending(), "bus master not started yet");
    ide.bm_write(BM_PRDT, 4, 0x1000);
    ide.bm_write(BM_COMMAND, 1, u32::from(BM_CMD_START | BM_CMD_WRITE_MEM));
    assert_eq!(ide.bm_read(BM_STATUS, 1) as u8 & BM_ST_ACTIVE, BM_ST_ACTIVE);
    assert!(ide.dma_pending());
    ide.run_dma(&mut mem, 0);
    assert!(!ide.dma_pending());
    assert!(irq.borrow().0[14]);
    assert_eq!(
        ide.bm_read(BM_STATUS, 1) as u8 & 7,
        BM_ST_INTR,
        "done, table used up"
    );
    assert_eq!((mem.0[0x2000], mem.0[0x21ff]), (pat(1, 0), pat(1, 511)));
    assert_eq!((mem.0[0x3000], mem.0[0x31ff]), (pat(2, 0), pat(2, 511)));
    assert_eq!(mem.0[0x3200], 0);
    ide.bm_write(BM_COMMAND, 1, 0);
    ide.bm_write(BM_STATUS, 1, u32::from(BM_ST_INTR));
    assert_eq!(
        ide.bm_read(BM_STATUS, 1) as u8 & BM_ST_INTR,
        0,
        "write 1 clears"
    );
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC);

    // WRITE DMA of two sectors from the same table, then read back by PIO.
    mem.0[0x2000..0x2200].fill(0x11);
    mem.0[0x3000..0x3200].fill(0x22);
    cmd28(&mut ide, ata::CMD_WRITE_DMA, 10, 2);
    ide.bm_write(BM_COMMAND, 1, u32::from(BM_CMD_START));
    ide.run_dma(&mut mem, 0);
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC);
    cmd28(&mut ide, ata::CMD_READ_SECTORS, 10, 2);
    let d = read_words(&mut ide, P, 512);
    assert_eq!((d[0], d[511], d[512], d[1023]), (0x11, 0x11, 0x22, 0x22));

    // A PRD table larger than the transfer leaves ACTIVE set.
    ide.bm_write(BM_COMMAND, 1, 0);
    prd(&mut mem, 1024);
    cmd48(&mut ide, ata::CMD_READ_DMA_EXT, 0, 2);
    ide.bm_write(BM_COMMAND, 1, u32::from(BM_CMD_START | BM_CMD_WRITE_MEM));
    ide.run_dma(&mut mem, 0);
    assert_eq!(
        ide.bm_read(BM_STATUS, 1) as u8 & 7,
        BM_ST_INTR | BM_ST_ACTIVE
    );
}

#[test]
fn atapi_dma_read() {
    let (mut ide, irq) = setup();
    ide.attach_cdrom(1, false, Box::new(iso(10)));
    let _f = enable_pci(&ide);
    packet(&mut ide, &[atapi::SCSI_TEST_UNIT_READY], 0);
    let mut mem = FakeMem(vec![0; 0x10000]);
    // One 2048-byte entry at 0x4000.
    mem.write(0x1000, &0x4000u32.to_le_bytes());
    mem.write(0x1004, &(PRD_EOT | 2048).to_le_bytes());
    out(&mut ide, S + 1, atapi::FEAT_DMA);
    out(&mut ide, S + 7, ata::CMD_PACKET);
    let cdb = [atapi::SCSI_READ_10, 0, 0, 0, 0, 7, 0, 0, 1, 0, 0, 0];
    for c in cdb.chunks(2) {
        ide.write(S, 2, u32::from(u16::from_le_bytes([c[0], c[1]])));
    }
    ide.bm_write(8 + BM_PRDT, 4, 0x1000);
    ide.bm_write(
        8 + BM_COMMAND,
        1,
        u32::from(BM_CMD_START | BM_CMD_WRITE_MEM),
    );
    assert!(ide.dma_pending());
    ide.run_dma(&mut mem, 0);
    assert!(irq.borrow().0[15]);
    assert_eq!((mem.0[0x4000], mem.0[0x47ff]), (pat(7, 0), pat(7, 2047)));
    assert_eq!(inb(&mut ide, S + 2), IR_COD | IR_IO);
    assert_eq!(inb(&mut ide, S + 7), ST_DRDY | ST_DSC);
}

#[test]
fn pci_function_ids_and_bar4() {
    let (ide, _) = setup();
    let mut f = ide.pci_function();
    assert_eq!(f.read_config(0x00, 4), 0x7010_8086);
    // Class 01 (mass storage), subclass 01 (IDE), prog-if 80h, rev 0.
    assert_eq!(f.read_config(0x08, 4), 0x0101_8000);
    assert_eq!(f.read_config(0x20, 4), 0x0000_0001, "BAR4 is I/O");
    f.write_config(0x20, 4, 0xffff_ffff);
    assert_eq!(f.read_config(0x20, 4), 0xffff_fff1, "16 bytes of I/O");
    assert_eq!(f.read_config(0x10, 4), 0, "legacy channels: no BAR0");
    // IDETIM decode enable bits.
    assert_eq!(f.read_config(0x41, 1) & 0x80, 0x80);
    assert_eq!(f.read_config(0x43, 1) & 0x80, 0x80);
    assert_eq!(ide.bmiba(), None, "I/O decode off");
    f.write_config(0x20, 4, 0xc040);
    f.write_config(0x04, 2, u32::from(CMD_IO));
    assert_eq!(ide.bmiba(), Some(0xc040));
}

#[test]
fn fuzz_ports_never_panic() {
    let (mut ide, _) = setup();
    ide.attach_disk(0, false, Box::new(disk(64, false)));
    ide.attach_disk(0, true, Box::new(disk(16, true)));
    ide.attach_cdrom(1, false, Box::new(iso(8)));
    ide.attach_cdrom(1, true, Box::new(MemBackend::new(Vec::new(), true)));
    let _f = enable_pci(&ide);
    let mut mem = FakeMem(vec![0; 0x10000]);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let cmds: [u8; 21] = [
        0x20, 0x24, 0x25, 0x29, 0x30, 0x34, 0x35, 0x39, 0x90, 0x91, 0xa0, 0xa1, 0xc4, 0xc5, 0xc6,
        0xc8, 0xca, 0xe7, 0xea, 0xec, 0xef,
    ];
    let ports = [
        P,
        P + 1,
        P + 2,
        P + 3,
        P + 4,
        P + 5,
        P + 6,
        P + 7,
        PRIMARY_CTRL,
        S,
        S + 1,
        S + 2,
        S + 3,
        S + 4,
        S + 5,
        S + 6,
        S + 7,
        SECONDARY_CTRL,
        0x3f7,
        0x1234,
    ];
    for i in 0..50_000 {
        let r = next();
        let size = [1u8, 2, 4, 3][(r >> 8) as usize % 4];
        let v = (r >> 16) as u32;
        match r % 8 {
            0 => {
                let p = ports[(r >> 40) as usize % ports.len()];
                ide.read(p, size);
            }
            1 => ide.bm_write((r >> 40) as u16 % 18, size, v),
            2 => {
                ide.bm_read((r >> 40) as u16 % 18, size);
            }
            3 => {
                let base = if r & (1 << 50) != 0 { P } else { S };
                ide.write(
                    base + 7,
                    1,
                    u32::from(cmds[(r >> 40) as usize % cmds.len()]),
                );
            }
            4 => ide.run_dma(&mut mem, i),
            5 => {
                let base = if r & (1 << 50) != 0 { P } else { S };
                ide.write(base, size, v);
                ide.read(base, size);
            }
            _ => {
                let p = ports[(r >> 40) as usize % ports.len()];
                // Keep SRST from being stuck on most of the time.
                let v = if p == PRIMARY_CTRL || p == SECONDARY_CTRL {
                    v & 0x82
                } else {
                    v
                };
                ide.write(p, size, v);
            }
        }
        if i % 97 == 0 {
            // Random PRD tables.
            let a = (next() % 0xfff8) as usize;
            let b = next().to_le_bytes();
            mem.0[a..a + 8].copy_from_slice(&b);
        }
    }
    ide.reset();
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC);
}

#[test]
fn chs_addressing_and_init_params() {
    let (mut ide, _) = setup();
    ide.attach_disk(0, false, Box::new(disk(2048, false)));
    let chs = |ide: &mut Ide, c: u16, h: u8, s: u8| {
        out(ide, P + 6, 0xa0 | h);
        out(ide, P + 2, 1);
        out(ide, P + 3, s);
        out(ide, P + 4, c as u8);
        out(ide, P + 5, (c >> 8) as u8);
        out(ide, P + 7, ata::CMD_READ_SECTORS);
    };
    // Default 16 heads x 63 sectors: C1 H0 S1 = LBA 1008.
    chs(&mut ide, 1, 0, 1);
    assert_eq!(read_words(&mut ide, P, 256)[0], pat(1008, 0));
    // INITIALIZE DEVICE PARAMETERS: 4 heads (device 03h), 8 sectors.
    out(&mut ide, P + 6, 0xa3);
    out(&mut ide, P + 2, 8);
    out(&mut ide, P + 7, ata::CMD_INIT_PARAMS);
    assert_eq!(inb(&mut ide, P + 7), ST_DRDY | ST_DSC);
    // C1 H1 S2 = (1 * 4 + 1) * 8 + 1 = 41.
    chs(&mut ide, 1, 1, 2);
    assert_eq!(read_words(&mut ide, P, 256)[0], pat(41, 0));
    // Sector 0 does not exist.
    chs(&mut ide, 0, 0, 0);
    assert_eq!(inb(&mut ide, P + 1), ERR_IDNF);
}
