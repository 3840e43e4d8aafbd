//! PIIX3 IDE controller (PCI 00:01.1): two legacy channels with a master
//! and a slave drive each, ATA disks and ATAPI CD-ROMs, and bus-master DMA.
//!
//! Owns: the task-file registers of both channels (primary 0x1F0-0x1F7 and
//! 0x3F6, IRQ 14; secondary 0x170-0x177 and 0x376, IRQ 15), the PIO data
//! path, the ATA command set (`ata.rs`), the ATAPI packet interface and its
//! SCSI commands (`atapi.rs`), the bus-master registers and PRD walking
//! (`dma.rs`), the PCI function and the block backends (`backend.rs`).
//! Does not own: the port decoding (the platform routes the legacy ports
//! and the BMIBA window to `read`/`write` and `bm_read`/`bm_write`), guest
//! memory, time.
//!
//! DMA protocol: devices cannot see guest memory. A DMA command (ATA READ/
//! WRITE DMA, an ATAPI PACKET with the DMA feature bit) leaves the drive
//! waiting with DRQ set; when the guest also sets the start bit of the
//! channel's bus-master command register, `dma_pending()` becomes true.
//! The machine then calls `run_dma(mem, now)` right after that port write
//! (or between engine runs): it walks the PRD table through the
//! `DmaMemory` the machine passes, moves the data, updates the bus-master
//! status and raises the channel's IRQ.
//!
//! BMIBA: `pci_function()` returns the `PciFunction` to give to
//! `PciHost::add_function(1, 1, ..)`; it shares a small cell with the
//! controller, so `Ide::bmiba()` returns the bus-master base the guest
//! programmed into BAR4 (None while I/O decoding is off or BAR4 is 0).
//!
//! References: ATA/ATAPI-6 (T13 1410D rev 3b) for commands, status and
//! IDENTIFY words; SFF-8020i / MMC-2 for the ATAPI packet commands; Intel
//! 82371SB (PIIX3) datasheet 2.3 (IDE configuration) and 2.7 (bus master
//! registers); SFF-8038i for the bus-master programming model.

pub mod ata;
pub mod atapi;
pub mod backend;
pub mod dma;

use serde::{Deserialize, Serialize};

use crate::IrqLine;
pub use backend::{BackendError, BlockBackend, MemBackend, RawFile, Snapshot};
pub use dma::{DmaMemory, IdePciFunction};

/// Legacy command block base of the primary channel.
pub const PRIMARY_BASE: u16 = 0x1f0;
/// Legacy control block (alternate status / device control), primary.
pub const PRIMARY_CTRL: u16 = 0x3f6;
/// Legacy command block base of the secondary channel.
pub const SECONDARY_BASE: u16 = 0x170;
/// Legacy control block, secondary.
pub const SECONDARY_CTRL: u16 = 0x376;

// Command block register offsets (ATA-6 7.1).
/// Data register (16-bit PIO data).
pub const REG_DATA: u16 = 0;
/// Error (read) / Features (write).
pub const REG_ERROR: u16 = 1;
/// Sector count; ATAPI interrupt reason on read.
pub const REG_NSECT: u16 = 2;
/// LBA low / sector number.
pub const REG_LBAL: u16 = 3;
/// LBA mid / cylinder low; ATAPI byte count low.
pub const REG_LBAM: u16 = 4;
/// LBA high / cylinder high; ATAPI byte count high.
pub const REG_LBAH: u16 = 5;
/// Device / head.
pub const REG_DEVICE: u16 = 6;
/// Status (read, clears the pending interrupt) / Command (write).
pub const REG_STATUS: u16 = 7;

// Status register bits (ATA-6 7.15.6).
/// Busy.
pub const ST_BSY: u8 = 0x80;
/// Device ready.
pub const ST_DRDY: u8 = 0x40;
/// Device fault.
pub const ST_DF: u8 = 0x20;
/// Device seek complete (obsolete, set by convention).
pub const ST_DSC: u8 = 0x10;
/// Data request: the data register expects or holds data.
pub const ST_DRQ: u8 = 0x08;
/// Error: see the error register.
pub const ST_ERR: u8 = 0x01;

// Error register bits (ATA-6 7.9).
/// Command aborted (unsupported command or parameter, write protect).
pub const ERR_ABRT: u8 = 0x04;
/// ID not found: address out of range.
pub const ERR_IDNF: u8 = 0x10;
/// Uncorrectable data error (backend read failure).
pub const ERR_UNC: u8 = 0x40;

// Device register bits.
/// Selects the slave (device 1).
pub const DEV_SLAVE: u8 = 0x10;
/// LBA addressing (else CHS).
pub const DEV_LBA: u8 = 0x40;
/// Obsolete bits 7 and 5, read as ones on old drives.
pub const DEV_OBS: u8 = 0xa0;

// Device control register bits (ATA-6 7.8).
/// nIEN: interrupt disable.
pub const CTL_NIEN: u8 = 0x02;
/// SRST: software reset of both drives of the channel.
pub const CTL_SRST: u8 = 0x04;
/// HOB: reads of the command block return the previous (high) bytes.
pub const CTL_HOB: u8 = 0x80;

// ATAPI interrupt reason (sector count register) bits.
/// CoD: 1 = command packet / status, 0 = data.
pub const IR_COD: u8 = 0x01;
/// IO: 1 = transfer to the host.
pub const IR_IO: u8 = 0x02;

/// Kind of drive on a channel position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriveKind {
    Disk,
    Cdrom,
}

/// SCSI sense data of an ATAPI drive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

/// Per-drive settings the guest changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveState {
    /// Sectors per DRQ block for READ/WRITE MULTIPLE (0 = not set).
    pub multiple: u8,
    /// CHS translation: heads and sectors per track.
    pub heads: u8,
    pub spt: u8,
    /// DMA mode set by SET FEATURES 03h (ATA-6 table 44 encoding: 20h+n
    /// multiword DMA n, 40h+n Ultra DMA n; 0 = none selected).
    pub xfer_mode: u8,
    /// ATAPI sense of the last command.
    pub sense: Sense,
    /// ATAPI: a unit attention (power on / reset) is waiting.
    pub unit_attention: bool,
}

/// One attached drive.
pub struct Drive {
    pub kind: DriveKind,
    pub backend: Box<dyn BlockBackend>,
    pub state: DriveState,
}

impl Drive {
    fn new(kind: DriveKind, backend: Box<dyn BlockBackend>) -> Self {
        Drive {
            kind,
            backend,
            state: DriveState {
                heads: 16,
                spt: 63,
                unit_attention: kind == DriveKind::Cdrom,
                ..Default::default()
            },
        }
    }

    /// 512-byte sectors of a disk.
    fn sectors(&self) -> u64 {
        self.backend.len() / 512
    }
}

/// The task file of a channel: current and previous ("HOB") bytes of each
/// 48-bit register, status, error and device control.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFile {
    pub feature: [u8; 2],
    pub nsect: [u8; 2],
    pub lbal: [u8; 2],
    pub lbam: [u8; 2],
    pub lbah: [u8; 2],
    pub device: u8,
    pub status: u8,
    pub error: u8,
    pub control: u8,
    /// The drive asserts INTRQ (cleared by a status read).
    pub irq_pending: bool,
}

/// Bus-master registers of one channel (SFF-8038i).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusMaster {
    pub command: u8,
    pub status: u8,
    pub prdt: u32,
}

/// Where the data of a transfer comes from or goes to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// A byte range of the image.
    Image { offset: u64, end: u64 },
    /// Bytes produced by a command (IDENTIFY, INQUIRY...).
    Buffer { data: Vec<u8>, pos: usize },
}

impl Source {
    fn remaining(&self) -> u64 {
        match self {
            Source::Image { offset, end } => end.saturating_sub(*offset),
            Source::Buffer { data, pos } => data.len().saturating_sub(*pos) as u64,
        }
    }

    /// Take up to `n` bytes toward the host.
    fn take(&mut self, backend: &mut dyn BlockBackend, n: usize) -> std::io::Result<Vec<u8>> {
        let n = (n as u64).min(self.remaining()) as usize;
        match self {
            Source::Image { offset, .. } => {
                let mut v = vec![0u8; n];
                backend.read_at(*offset, &mut v)?;
                *offset += n as u64;
                Ok(v)
            }
            Source::Buffer { data, pos } => {
                let v = data.get(*pos..*pos + n).unwrap_or(&[]).to_vec();
                *pos += n;
                Ok(v)
            }
        }
    }

    /// Store `bytes` from the host (image sinks only).
    fn put(&mut self, backend: &mut dyn BlockBackend, bytes: &[u8]) -> std::io::Result<()> {
        if let Source::Image { offset, .. } = self {
            backend.write_at(*offset, bytes)?;
            *offset += bytes.len() as u64;
        }
        Ok(())
    }
}

/// What the data register is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// No data transfer.
    #[default]
    Idle,
    /// PIO to the host: `buf` holds the current DRQ block.
    PioIn,
    /// PIO from the host: `buf` fills up to one DRQ block.
    PioOut,
    /// ATAPI: receiving the 12-byte command packet.
    Packet,
    /// A DMA command waits for the bus master.
    Dma,
}

/// The data transfer in progress on a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub phase: Phase,
    pub source: Source,
    /// Bytes per DRQ block.
    pub block: usize,
    /// Direction: true = device to host.
    pub to_host: bool,
    /// ATAPI: completion reports through the interrupt reason.
    pub atapi: bool,
    pub buf: Vec<u8>,
    pub pos: usize,
}

impl Default for Transfer {
    fn default() -> Self {
        Transfer {
            phase: Phase::Idle,
            source: Source::Buffer {
                data: Vec::new(),
                pos: 0,
            },
            block: 0,
            to_host: true,
            atapi: false,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

/// One IDE channel: task file, bus master, two drive positions.
pub struct Channel {
    pub tf: TaskFile,
    pub bm: BusMaster,
    pub xfer: Transfer,
    pub drives: [Option<Drive>; 2],
    /// Level last driven on the IRQ line.
    line: bool,
    /// Accesses ignored (no drive, wrong phase, bad sizes).
    pub ignored: u64,
}

impl Channel {
    fn new() -> Self {
        let mut c = Channel {
            tf: TaskFile::default(),
            bm: BusMaster::default(),
            xfer: Transfer::default(),
            drives: [None, None],
            line: false,
            ignored: 0,
        };
        c.tf.device = DEV_OBS;
        c
    }

    fn sel(&self) -> usize {
        usize::from(self.tf.device & DEV_SLAVE != 0)
    }

    fn has_any(&self) -> bool {
        self.drives.iter().any(|d| d.is_some())
    }

    fn selected_present(&self) -> bool {
        self.drives[self.sel()].is_some()
    }

    /// Assert INTRQ (shown in the bus-master status too).
    fn raise(&mut self) {
        self.tf.irq_pending = true;
        self.bm.status |= dma::BM_ST_INTR;
    }

    /// End a command with ERR and `error`, interrupting.
    fn fail(&mut self, error: u8) {
        self.xfer = Transfer::default();
        self.tf.error = error;
        self.tf.status = ST_DRDY | ST_DSC | ST_ERR;
        self.raise();
    }

    /// End a command successfully, interrupting.
    fn complete(&mut self) {
        self.xfer = Transfer::default();
        self.tf.error = 0;
        self.tf.status = ST_DRDY | ST_DSC;
        self.raise();
    }

    /// Set the reset signature of each drive (ATA-6 9.12); the selected
    /// drive's values end up in the shared task file.
    fn signature(&mut self) {
        self.tf.nsect[0] = 1;
        self.tf.lbal[0] = 1;
        self.tf.error = 0x01;
        let kind = self.drives[self.sel()].as_ref().map(|d| d.kind);
        match kind {
            Some(DriveKind::Cdrom) => {
                // ATAPI signature 14h/EBh; DRDY stays clear until a packet
                // command is issued.
                self.tf.lbam[0] = 0x14;
                self.tf.lbah[0] = 0xeb;
                self.tf.status = 0;
            }
            _ => {
                self.tf.lbam[0] = 0;
                self.tf.lbah[0] = 0;
                self.tf.status = ST_DRDY | ST_DSC;
            }
        }
    }

    /// SRST or hardware reset: abort transfers, select the master, post
    /// the signatures.
    fn soft_reset(&mut self) {
        self.xfer = Transfer::default();
        self.tf.device = DEV_OBS;
        self.tf.irq_pending = false;
        for d in self.drives.iter_mut().flatten() {
            d.state.multiple = 0;
        }
        self.signature();
    }

    /// Start a PIO transfer to the host from `source` in blocks of `block`.
    fn start_pio_in(&mut self, source: Source, block: usize, atapi: bool) {
        self.xfer = Transfer {
            phase: Phase::PioIn,
            source,
            block: block.max(2),
            to_host: true,
            atapi,
            buf: Vec::new(),
            pos: 0,
        };
        self.next_in_block();
    }

    /// Load the next block toward the host, or finish the command.
    fn next_in_block(&mut self) {
        let sel = self.sel();
        if self.xfer.source.remaining() == 0 {
            if self.xfer.atapi {
                atapi::finish_ok(self);
            } else {
                // ATA PIO in: no interrupt after the last block.
                self.xfer = Transfer::default();
                self.tf.status = ST_DRDY | ST_DSC;
            }
            return;
        }
        let Some(drive) = self.drives[sel].as_mut() else {
            self.fail(ERR_ABRT);
            return;
        };
        let block = self.xfer.block;
        match self.xfer.source.take(drive.backend.as_mut(), block) {
            Ok(data) => {
                if self.xfer.atapi {
                    let n = data.len() as u16;
                    self.tf.lbam[0] = n as u8;
                    self.tf.lbah[0] = (n >> 8) as u8;
                    self.tf.nsect[0] = IR_IO;
                }
                self.xfer.buf = data;
                self.xfer.pos = 0;
                self.tf.status = ST_DRDY | ST_DSC | ST_DRQ;
                self.raise();
            }
            Err(e) => {
                tracing::debug!("ide: backend read failed: {e}");
                if self.xfer.atapi {
                    atapi::fail_sense(self, atapi::SK_MEDIUM_ERROR, atapi::ASC_READ_ERROR, 0);
                } else {
                    self.fail(ERR_UNC);
                }
            }
        }
    }

    /// Start a PIO transfer from the host into the image range of `sink`.
    fn start_pio_out(&mut self, sink: Source, block: usize) {
        let first = (sink.remaining() as usize).min(block);
        self.xfer = Transfer {
            phase: Phase::PioOut,
            source: sink,
            block,
            to_host: false,
            atapi: false,
            buf: vec![0; first],
            pos: 0,
        };
        // The first block is requested without an interrupt (ATA-6 9.8).
        self.tf.status = ST_DRDY | ST_DSC | ST_DRQ;
    }

    /// A PIO-out block is full: store it and ask for more or finish.
    fn out_block_done(&mut self) {
        if self.xfer.phase == Phase::Packet {
            atapi::packet_received(self);
            return;
        }
        let sel = self.sel();
        let Some(drive) = self.drives[sel].as_mut() else {
            self.fail(ERR_ABRT);
            return;
        };
        let buf = std::mem::take(&mut self.xfer.buf);
        if let Err(e) = self.xfer.source.put(drive.backend.as_mut(), &buf) {
            tracing::debug!("ide: backend write failed: {e}");
            self.fail(ERR_ABRT);
            return;
        }
        let left = self.xfer.source.remaining() as usize;
        if left == 0 {
            self.complete();
        } else {
            self.xfer.buf = vec![0; left.min(self.xfer.block)];
            self.xfer.pos = 0;
            self.tf.status = ST_DRDY | ST_DSC | ST_DRQ;
            self.raise();
        }
    }

    /// Move up to `n` bytes (1, 2 or 4) through the data register, to the
    /// host.
    fn data_read(&mut self, n: usize) -> u32 {
        if self.xfer.phase != Phase::PioIn {
            self.ignored += 1;
            return 0;
        }
        let mut v = 0u32;
        for i in 0..n {
            let b = self.xfer.buf.get(self.xfer.pos).copied().unwrap_or(0);
            v |= u32::from(b) << (8 * i);
            self.xfer.pos += 1;
            if self.xfer.pos >= self.xfer.buf.len() {
                self.next_in_block();
                break;
            }
        }
        v
    }

    /// Move up to `n` bytes through the data register, from the host.
    fn data_write(&mut self, n: usize, value: u32) {
        if !matches!(self.xfer.phase, Phase::PioOut | Phase::Packet) {
            self.ignored += 1;
            return;
        }
        for i in 0..n {
            if let Some(b) = self.xfer.buf.get_mut(self.xfer.pos) {
                *b = (value >> (8 * i)) as u8;
            }
            self.xfer.pos += 1;
            if self.xfer.pos >= self.xfer.buf.len() {
                self.out_block_done();
                break;
            }
        }
    }

    /// Read a command block register (not data).
    fn reg_read(&mut self, reg: u16) -> u8 {
        if !self.selected_present() {
            // An absent device: nothing drives the bus (ATA-6 9.16: the
            // host sees 00h from a missing device 1 when device 0 answers).
            return 0;
        }
        let hob = usize::from(self.tf.control & CTL_HOB != 0);
        match reg {
            // Error register of the last command.
            REG_ERROR => self.tf.error,
            // Sector count / ATAPI interrupt reason.
            REG_NSECT => self.tf.nsect[hob],
            // LBA bytes (HOB selects the previous write).
            REG_LBAL => self.tf.lbal[hob],
            REG_LBAM => self.tf.lbam[hob],
            REG_LBAH => self.tf.lbah[hob],
            // Device register.
            REG_DEVICE => self.tf.device | DEV_OBS,
            // Status: reading it acknowledges the interrupt.
            REG_STATUS => {
                self.tf.irq_pending = false;
                self.tf.status
            }
            _ => 0,
        }
    }

    /// Write a command block register (not data).
    fn reg_write(&mut self, reg: u16, v: u8) {
        // Writing any command block register clears HOB (ATA-6 7.8).
        self.tf.control &= !CTL_HOB;
        if self.tf.status & ST_BSY != 0 && reg != REG_STATUS {
            self.ignored += 1;
            return;
        }
        fn push(r: &mut [u8; 2], v: u8) {
            r[1] = r[0];
            r[0] = v;
        }
        match reg {
            // Features (two-deep FIFO for 48-bit commands).
            REG_ERROR => push(&mut self.tf.feature, v),
            // Sector count.
            REG_NSECT => push(&mut self.tf.nsect, v),
            // LBA low/mid/high.
            REG_LBAL => push(&mut self.tf.lbal, v),
            REG_LBAM => push(&mut self.tf.lbam, v),
            REG_LBAH => push(&mut self.tf.lbah, v),
            // Device/head: selects master or slave.
            REG_DEVICE => self.tf.device = v,
            // Command: executed by the selected drive, if present.
            REG_STATUS => {
                if !self.selected_present() || self.tf.status & ST_BSY != 0 {
                    self.ignored += 1;
                    return;
                }
                self.tf.irq_pending = false;
                ata::command(self, v);
            }
            _ => self.ignored += 1,
        }
    }

    /// Write the device control register.
    fn control_write(&mut self, v: u8) {
        let was_reset = self.tf.control & CTL_SRST != 0;
        self.tf.control = v;
        if v & CTL_SRST != 0 {
            // SRST asserted: drives busy until it is released.
            self.xfer = Transfer::default();
            self.tf.status = ST_BSY;
            self.tf.irq_pending = false;
        } else if was_reset {
            self.soft_reset();
        }
    }
}

/// Snapshot of one channel: registers, transfer in progress, the drives'
/// settings (the images themselves are not part of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    pub tf: TaskFile,
    pub bm: BusMaster,
    pub xfer: Transfer,
    pub drives: [Option<DriveState>; 2],
    pub line: bool,
}

/// Snapshot of the controller (see `Ide::state`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdeState {
    pub channels: [ChannelState; 2],
    pub pci: dma::PciView,
}

/// The two-channel PIIX IDE controller.
pub struct Ide {
    channels: [Channel; 2],
    irqs: [IrqLine; 2],
    pci: std::rc::Rc<std::cell::Cell<dma::PciView>>,
    ignored: u64,
}

impl Ide {
    /// A controller with no drives; `irq14`/`irq15` are the ISA lines of
    /// the primary and secondary channel.
    pub fn new(irq14: IrqLine, irq15: IrqLine) -> Self {
        Ide {
            channels: [Channel::new(), Channel::new()],
            irqs: [irq14, irq15],
            pci: Default::default(),
            ignored: 0,
        }
    }

    fn attach(&mut self, channel: usize, slave: bool, kind: DriveKind, b: Box<dyn BlockBackend>) {
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        ch.drives[usize::from(slave)] = Some(Drive::new(kind, b));
        // Advertise DMA capability of the position (SFF-8038i status 5/6).
        ch.bm.status |= if slave {
            dma::BM_ST_DRV1_DMA
        } else {
            dma::BM_ST_DRV0_DMA
        };
        ch.soft_reset();
    }

    /// Attach an ATA disk at `channel` (0 primary, 1 secondary), master or
    /// slave. Out-of-range channels are ignored.
    pub fn attach_disk(&mut self, channel: usize, slave: bool, backend: Box<dyn BlockBackend>) {
        self.attach(channel, slave, DriveKind::Disk, backend);
    }

    /// Attach an ATAPI CD-ROM (2048-byte sectors, read-only) with `backend`
    /// as its medium; an empty backend is a drive with no disc.
    pub fn attach_cdrom(&mut self, channel: usize, slave: bool, backend: Box<dyn BlockBackend>) {
        self.attach(channel, slave, DriveKind::Cdrom, backend);
    }

    /// Hardware reset (machine reset): both channels reset, CD-ROMs report
    /// a unit attention.
    pub fn reset(&mut self) {
        for ch in self.channels.iter_mut() {
            ch.tf.control = 0;
            ch.bm.command = 0;
            ch.bm.status &= dma::BM_ST_DRV0_DMA | dma::BM_ST_DRV1_DMA;
            for d in ch.drives.iter_mut().flatten() {
                d.state.unit_attention = d.kind == DriveKind::Cdrom;
                d.state.sense = Sense::default();
            }
            ch.soft_reset();
        }
        self.update_irqs();
    }

    /// Channel and register of a legacy port, if it is one of ours.
    fn decode(port: u16) -> Option<(usize, u16)> {
        match port {
            PRIMARY_BASE..=0x1f7 => Some((0, port - PRIMARY_BASE)),
            SECONDARY_BASE..=0x177 => Some((1, port - SECONDARY_BASE)),
            PRIMARY_CTRL => Some((0, 8)),
            SECONDARY_CTRL => Some((1, 8)),
            _ => None,
        }
    }

    fn update_irqs(&mut self) {
        for (ch, line) in self.channels.iter_mut().zip(self.irqs.iter()) {
            let level = ch.tf.irq_pending && ch.tf.control & CTL_NIEN == 0;
            if level != ch.line {
                ch.line = level;
                line.set(level);
            }
        }
    }

    /// Read a legacy port: 0x1F0-0x1F7/0x3F6 or 0x170-0x177/0x376. Data
    /// port accesses move `size` bytes; other registers are bytes.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        let Some((c, reg)) = Self::decode(port) else {
            self.ignored += 1;
            return u32::MAX >> (32 - 8 * u32::from(size.clamp(1, 4)));
        };
        let ch = &mut self.channels[c];
        let v = if !ch.has_any() {
            // No drive on the channel: the bus floats high.
            u32::MAX >> (32 - 8 * u32::from(size.clamp(1, 4)))
        } else {
            match reg {
                // Data register: 1, 2 or 4 bytes of the PIO block.
                REG_DATA => ch.data_read(usize::from(size.clamp(1, 4))),
                // Alternate status: status without acknowledging.
                8 => {
                    if ch.selected_present() {
                        u32::from(ch.tf.status)
                    } else {
                        0
                    }
                }
                _ => u32::from(ch.reg_read(reg)),
            }
        };
        self.update_irqs();
        v
    }

    /// Write a legacy port.
    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        let Some((c, reg)) = Self::decode(port) else {
            self.ignored += 1;
            return;
        };
        let ch = &mut self.channels[c];
        match reg {
            // Data register: 1, 2 or 4 bytes of the PIO block or packet.
            REG_DATA => ch.data_write(usize::from(size.clamp(1, 4)), value),
            // Device control: nIEN, SRST, HOB.
            8 => ch.control_write(value as u8),
            _ => ch.reg_write(reg, value as u8),
        }
        self.update_irqs();
    }

    /// The register state for a snapshot.
    pub fn state(&self) -> IdeState {
        let ch = |c: &Channel| ChannelState {
            tf: c.tf.clone(),
            bm: c.bm.clone(),
            xfer: c.xfer.clone(),
            drives: [0, 1].map(|i| c.drives[i].as_ref().map(|d| d.state.clone())),
            line: c.line,
        };
        IdeState {
            channels: [ch(&self.channels[0]), ch(&self.channels[1])],
            pci: self.pci.get(),
        }
    }

    /// Restore a snapshot taken with the same drives attached; drive
    /// settings for positions without a drive are dropped. The PCI
    /// function's own configuration space is restored by the PCI host.
    pub fn restore(&mut self, s: IdeState) {
        for (c, st) in self.channels.iter_mut().zip(s.channels) {
            c.tf = st.tf;
            c.bm = st.bm;
            c.xfer = st.xfer;
            c.line = st.line;
            for (d, ds) in c.drives.iter_mut().zip(st.drives) {
                if let (Some(d), Some(ds)) = (d.as_mut(), ds) {
                    d.state = ds;
                }
            }
        }
        self.pci.set(s.pci);
        for (c, line) in self.channels.iter().zip(self.irqs.iter()) {
            line.set(c.line);
        }
    }

    /// Accesses ignored so far (unknown ports, wrong phase, no drive).
    pub fn ignored(&self) -> u64 {
        self.ignored + self.channels.iter().map(|c| c.ignored).sum::<u64>()
    }

    /// The task file of `channel` (debugging, snapshots).
    pub fn task_file(&self, channel: usize) -> Option<&TaskFile> {
        self.channels.get(channel).map(|c| &c.tf)
    }
}

#[cfg(test)]
mod tests;
