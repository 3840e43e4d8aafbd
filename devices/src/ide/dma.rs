//! Bus-master IDE DMA (SFF-8038i, PIIX3 datasheet 2.7) and the PCI
//! function 00:01.1 (PIIX3 IDE, 8086:7010).
//!
//! The bus-master window (BMIBA, BAR4, 16 bytes) holds per channel a
//! command register (+0), a status register (+2) and the PRD table address
//! (+4); the secondary channel's copy starts at +8. A PRD entry is two
//! dwords: the physical base of a buffer and, in the second, the byte count
//! (bits 15:0, 0 = 64 KiB) and EOT (bit 31).

use std::cell::Cell;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::{atapi, Channel, Ide, Phase, ERR_ABRT, ERR_UNC};
use crate::pci::{ConfigSpace, PciFunction, CFG_BAR0, CFG_COMMAND, CMD_IO, CMD_MASTER};

/// Bus-master register offsets within a channel's 8 bytes.
pub const BM_COMMAND: u16 = 0;
pub const BM_STATUS: u16 = 2;
pub const BM_PRDT: u16 = 4;

// Command register bits.
/// Start/stop bus master: 1 starts the transfer, 0 aborts it.
pub const BM_CMD_START: u8 = 0x01;
/// Read/write control: 1 = the bus master writes memory (device to host).
pub const BM_CMD_WRITE_MEM: u8 = 0x08;

// Status register bits.
/// Bus master IDE active (read-only).
pub const BM_ST_ACTIVE: u8 = 0x01;
/// IDE DMA error (write 1 to clear).
pub const BM_ST_ERROR: u8 = 0x02;
/// IDE interrupt: the drive asserted INTRQ (write 1 to clear).
pub const BM_ST_INTR: u8 = 0x04;
/// Drive 0 DMA capable (software-set flag).
pub const BM_ST_DRV0_DMA: u8 = 0x20;
/// Drive 1 DMA capable (software-set flag).
pub const BM_ST_DRV1_DMA: u8 = 0x40;

/// PRD second dword bit 31: end of table.
pub const PRD_EOT: u32 = 0x8000_0000;
/// A PRD table lies within one 64 KiB region: at most 8192 entries.
pub const PRD_MAX_ENTRIES: u32 = 8192;

/// Size of the bus-master window (BAR4).
pub const BMIBA_SIZE: u32 = 16;

// PIIX3 IDE configuration registers (datasheet 2.3).
/// IDE timing, primary (16 bits); bit 15 enables the legacy decode.
pub const PIIX_IDETIM_PRI: u8 = 0x40;
/// IDE timing, secondary.
pub const PIIX_IDETIM_SEC: u8 = 0x42;
/// IDETIM bit 15: IDE decode enable.
pub const IDETIM_IDE: u16 = 0x8000;
/// Slave IDE timing.
pub const PIIX_SIDETIM: u8 = 0x44;

/// Guest physical memory as the bus master sees it. The machine passes an
/// implementation to `Ide::run_dma`.
pub trait DmaMemory {
    /// Read `buf.len()` bytes at `phys`.
    fn read(&mut self, phys: u64, buf: &mut [u8]);
    /// Write `buf` at `phys`.
    fn write(&mut self, phys: u64, buf: &[u8]);
}

/// What the controller needs of its PCI configuration: BAR4 and the
/// command register, shared with `IdePciFunction`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciView {
    pub bar4: u32,
    pub command: u16,
}

/// The PCI function 00:01.1; hand it to `PciHost::add_function(1, 1, ..)`.
pub struct IdePciFunction {
    config: ConfigSpace,
    view: Rc<Cell<PciView>>,
}

impl IdePciFunction {
    fn new(view: Rc<Cell<PciView>>) -> Self {
        // Class 01/01, prog-if 80h: mass storage, IDE, bus-master capable,
        // both channels in fixed legacy mode (PIIX3 datasheet 2.3.3).
        let mut c = ConfigSpace::new(0x8086, 0x7010, 0x01, 0x01, 0x80, 0x00);
        // BAR4: bus-master base, 16 bytes of I/O space.
        c.set_bar(4, BMIBA_SIZE, true);
        // IDETIM: decode enabled on both channels, timings writable.
        c.set_u16(PIIX_IDETIM_PRI, IDETIM_IDE);
        c.set_u16(PIIX_IDETIM_SEC, IDETIM_IDE);
        c.set_wmask_u16(PIIX_IDETIM_PRI, 0xffff);
        c.set_wmask_u16(PIIX_IDETIM_SEC, 0xffff);
        c.wmask[PIIX_SIDETIM as usize] = 0xff;
        let f = IdePciFunction { config: c, view };
        f.publish();
        f
    }

    fn publish(&self) {
        self.view.set(PciView {
            bar4: self.config.read(CFG_BAR0 + 16, 4),
            command: self.config.read(CFG_COMMAND, 2) as u16,
        });
    }
}

impl PciFunction for IdePciFunction {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn write_config(&mut self, offset: u8, size: u8, value: u32) {
        self.config.write(offset, size, value);
        self.publish();
    }
}

impl Ide {
    /// The PCI function sharing this controller's BAR4 view. Call once and
    /// give the result to the PCI host.
    pub fn pci_function(&self) -> IdePciFunction {
        IdePciFunction::new(self.pci.clone())
    }

    /// The bus-master I/O base the guest programmed in BAR4, when I/O
    /// decoding is enabled; the platform routes `base..base+16` to
    /// `bm_read`/`bm_write`.
    pub fn bmiba(&self) -> Option<u16> {
        let v = self.pci.get();
        let base = (v.bar4 & 0xfff0) as u16;
        (v.command & CMD_IO != 0 && base != 0).then_some(base)
    }

    /// Read `size` bytes of the bus-master window at `offset` (0-15).
    pub fn bm_read(&mut self, offset: u16, size: u8) -> u32 {
        let mut v = 0u32;
        for i in 0..u16::from(size.clamp(1, 4)) {
            v |= u32::from(self.bm_read_byte(offset.wrapping_add(i))) << (8 * i);
        }
        v
    }

    /// Write `size` bytes of the bus-master window at `offset`.
    pub fn bm_write(&mut self, offset: u16, size: u8, value: u32) {
        for i in 0..u16::from(size.clamp(1, 4)) {
            self.bm_write_byte(offset.wrapping_add(i), (value >> (8 * i)) as u8);
        }
    }

    fn bm_read_byte(&mut self, offset: u16) -> u8 {
        let Some(ch) = self.channels.get((offset / 8) as usize) else {
            self.ignored += 1;
            return 0xff;
        };
        match offset % 8 {
            // Command register.
            BM_COMMAND => ch.bm.command & (BM_CMD_START | BM_CMD_WRITE_MEM),
            // Status register.
            BM_STATUS => ch.bm.status,
            // PRD table pointer, dword aligned.
            r @ BM_PRDT..=7 => (ch.bm.prdt >> (8 * (r - BM_PRDT))) as u8,
            // Reserved bytes read 0.
            _ => 0,
        }
    }

    fn bm_write_byte(&mut self, offset: u16, v: u8) {
        let Some(ch) = self.channels.get_mut((offset / 8) as usize) else {
            self.ignored += 1;
            return;
        };
        match offset % 8 {
            // Command: the start bit starts or aborts the bus master; the
            // direction bit is stored.
            BM_COMMAND => {
                let old = ch.bm.command;
                ch.bm.command = v & (BM_CMD_START | BM_CMD_WRITE_MEM);
                if v & BM_CMD_START != 0 && old & BM_CMD_START == 0 {
                    ch.bm.status |= BM_ST_ACTIVE;
                } else if v & BM_CMD_START == 0 {
                    ch.bm.status &= !BM_ST_ACTIVE;
                }
            }
            // Status: ERROR and INTR are write-1-to-clear, the DMA capable
            // flags are read/write, ACTIVE is read-only.
            BM_STATUS => {
                let keep = ch.bm.status & BM_ST_ACTIVE;
                let w1c = ch.bm.status & (BM_ST_ERROR | BM_ST_INTR) & !v;
                ch.bm.status = keep | w1c | (v & (BM_ST_DRV0_DMA | BM_ST_DRV1_DMA));
            }
            // PRD table pointer bytes (bits 1:0 are always 0).
            r @ BM_PRDT..=7 => {
                let sh = 8 * u32::from(r - BM_PRDT);
                let p = (ch.bm.prdt & !(0xff << sh)) | (u32::from(v) << sh);
                ch.bm.prdt = p & !3;
            }
            // Reserved.
            _ => ch.ignored += 1,
        }
    }

    fn channel_dma_pending(&self, ch: &Channel) -> bool {
        self.pci.get().command & CMD_MASTER != 0
            && ch.bm.command & BM_CMD_START != 0
            && ch.bm.status & BM_ST_ACTIVE != 0
            && ch.xfer.phase == Phase::Dma
    }

    /// True when a channel has a DMA command and a started bus master:
    /// the machine should call `run_dma`.
    pub fn dma_pending(&self) -> bool {
        self.channels.iter().any(|c| self.channel_dma_pending(c))
    }

    /// Run every pending DMA transfer to completion through `mem`, update
    /// the bus-master status and raise the channels' interrupts.
    pub fn run_dma(&mut self, mem: &mut dyn DmaMemory, _now: u64) {
        for i in 0..self.channels.len() {
            if self.channel_dma_pending(&self.channels[i]) {
                transfer(&mut self.channels[i], mem);
            }
        }
        self.update_irqs();
    }
}

/// Walk the PRD table of `ch` and move the data of its DMA command.
fn transfer(ch: &mut Channel, mem: &mut dyn DmaMemory) {
    let sel = ch.sel();
    let atapi = ch.xfer.atapi;
    let to_host = ch.xfer.to_host;
    let mut prd = ch.bm.prdt;
    // PRD table larger than the transfer: ACTIVE stays set.
    let mut prd_left_over = false;
    let mut io_error = false;
    for _ in 0..PRD_MAX_ENTRIES {
        if ch.xfer.source.remaining() == 0 {
            prd_left_over = true;
            break;
        }
        let mut e = [0u8; 8];
        mem.read(u64::from(prd), &mut e);
        let base = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) & !1;
        let ctl = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let count = match ctl & 0xfffe {
            0 => 0x10000,
            n => n as usize,
        };
        let Some(d) = ch.drives[sel].as_mut() else {
            break;
        };
        let n = (ch.xfer.source.remaining() as usize).min(count);
        let r = if to_host {
            ch.xfer
                .source
                .take(d.backend.as_mut(), n)
                .map(|data| mem.write(u64::from(base), &data))
        } else {
            let mut data = vec![0u8; n];
            mem.read(u64::from(base), &mut data);
            ch.xfer.source.put(d.backend.as_mut(), &data)
        };
        if let Err(e) = r {
            tracing::debug!("ide: DMA backend access failed: {e}");
            io_error = true;
            break;
        }
        if n < count {
            prd_left_over = true;
            break;
        }
        if ctl & PRD_EOT != 0 {
            break;
        }
        prd = prd.wrapping_add(8);
    }
    if !prd_left_over {
        ch.bm.status &= !BM_ST_ACTIVE;
    }
    if io_error {
        if atapi {
            atapi::fail_sense(ch, atapi::SK_MEDIUM_ERROR, atapi::ASC_READ_ERROR, 0);
        } else {
            ch.fail(if to_host { ERR_UNC } else { ERR_ABRT });
        }
    } else if ch.xfer.source.remaining() != 0 {
        // PRD table exhausted before the command's data: DMA error.
        ch.bm.status |= BM_ST_ERROR;
        if atapi {
            atapi::fail_sense(ch, atapi::SK_ILLEGAL_REQUEST, atapi::ASC_INVALID_FIELD, 0);
        } else {
            ch.fail(ERR_ABRT);
        }
    } else if atapi {
        atapi::finish_ok(ch);
    } else {
        ch.complete();
    }
}
