//! The ATA command set of a disk (and the ATA commands an ATAPI device
//! accepts): IDENTIFY, PIO and DMA reads and writes in 28- and 48-bit
//! addressing, multiple mode, cache flush, SET FEATURES, power commands and
//! diagnostics (ATA/ATAPI-6 section 8).

use super::Phase;
use super::{
    atapi, Channel, DriveKind, Source, Transfer, DEV_LBA, DEV_SLAVE, ERR_ABRT, ERR_IDNF, ST_DRDY,
    ST_DRQ, ST_DSC,
};

// Command codes (ATA-6 table 29).
/// DEVICE RESET (ATAPI only).
pub const CMD_DEVICE_RESET: u8 = 0x08;
/// RECALIBRATE (obsolete, 0x10-0x1F).
pub const CMD_RECALIBRATE: u8 = 0x10;
/// READ SECTORS (PIO, 28-bit).
pub const CMD_READ_SECTORS: u8 = 0x20;
/// READ SECTORS EXT (PIO, 48-bit).
pub const CMD_READ_SECTORS_EXT: u8 = 0x24;
/// READ DMA EXT.
pub const CMD_READ_DMA_EXT: u8 = 0x25;
/// READ MULTIPLE EXT.
pub const CMD_READ_MULTIPLE_EXT: u8 = 0x29;
/// WRITE SECTORS.
pub const CMD_WRITE_SECTORS: u8 = 0x30;
/// WRITE SECTORS EXT.
pub const CMD_WRITE_SECTORS_EXT: u8 = 0x34;
/// WRITE DMA EXT.
pub const CMD_WRITE_DMA_EXT: u8 = 0x35;
/// WRITE MULTIPLE EXT.
pub const CMD_WRITE_MULTIPLE_EXT: u8 = 0x39;
/// READ VERIFY SECTORS.
pub const CMD_VERIFY: u8 = 0x40;
/// SEEK (obsolete 0x70-0x7F).
pub const CMD_SEEK: u8 = 0x70;
/// EXECUTE DEVICE DIAGNOSTIC.
pub const CMD_DIAGNOSTIC: u8 = 0x90;
/// INITIALIZE DEVICE PARAMETERS (CHS geometry).
pub const CMD_INIT_PARAMS: u8 = 0x91;
/// PACKET (ATAPI).
pub const CMD_PACKET: u8 = 0xa0;
/// IDENTIFY PACKET DEVICE (ATAPI).
pub const CMD_IDENTIFY_PACKET: u8 = 0xa1;
/// READ MULTIPLE.
pub const CMD_READ_MULTIPLE: u8 = 0xc4;
/// WRITE MULTIPLE.
pub const CMD_WRITE_MULTIPLE: u8 = 0xc5;
/// SET MULTIPLE MODE.
pub const CMD_SET_MULTIPLE: u8 = 0xc6;
/// READ DMA.
pub const CMD_READ_DMA: u8 = 0xc8;
/// WRITE DMA.
pub const CMD_WRITE_DMA: u8 = 0xca;
/// STANDBY IMMEDIATE.
pub const CMD_STANDBY_IMMEDIATE: u8 = 0xe0;
/// IDLE IMMEDIATE.
pub const CMD_IDLE_IMMEDIATE: u8 = 0xe1;
/// STANDBY.
pub const CMD_STANDBY: u8 = 0xe2;
/// IDLE.
pub const CMD_IDLE: u8 = 0xe3;
/// CHECK POWER MODE.
pub const CMD_CHECK_POWER: u8 = 0xe5;
/// SLEEP.
pub const CMD_SLEEP: u8 = 0xe6;
/// FLUSH CACHE.
pub const CMD_FLUSH_CACHE: u8 = 0xe7;
/// FLUSH CACHE EXT.
pub const CMD_FLUSH_CACHE_EXT: u8 = 0xea;
/// IDENTIFY DEVICE.
pub const CMD_IDENTIFY: u8 = 0xec;
/// SET FEATURES.
pub const CMD_SET_FEATURES: u8 = 0xef;

/// SET FEATURES subcommand: set transfer mode from the sector count.
pub const SF_XFER_MODE: u8 = 0x03;
/// SET FEATURES subcommands that only toggle caches / defaults.
const SF_NOOPS: [u8; 6] = [0x02, 0x82, 0x55, 0xaa, 0x66, 0xcc];

/// Largest READ/WRITE MULTIPLE block (IDENTIFY word 47).
pub const MAX_MULTIPLE: u8 = 16;

/// Execute ATA command `cmd` on the selected drive of `ch`.
pub(super) fn command(ch: &mut Channel, cmd: u8) {
    let sel = ch.sel();
    let Some(kind) = ch.drives[sel].as_ref().map(|d| d.kind) else {
        return;
    };
    ch.xfer = Transfer::default();
    if kind == DriveKind::Cdrom {
        atapi_ata_command(ch, cmd);
        return;
    }
    match cmd {
        CMD_IDENTIFY => {
            let words = identify_disk(ch);
            ch.start_pio_in(buffer(&words), 512, false);
        }
        CMD_READ_SECTORS | CMD_READ_SECTORS_EXT => {
            if let Some(src) = range(ch, cmd == CMD_READ_SECTORS_EXT, false) {
                ch.start_pio_in(src, 512, false);
            }
        }
        CMD_READ_MULTIPLE | CMD_READ_MULTIPLE_EXT => {
            let m = multiple(ch);
            if m == 0 {
                ch.fail(ERR_ABRT);
            } else if let Some(src) = range(ch, cmd == CMD_READ_MULTIPLE_EXT, false) {
                ch.start_pio_in(src, 512 * m, false);
            }
        }
        CMD_WRITE_SECTORS | CMD_WRITE_SECTORS_EXT => {
            if let Some(sink) = range(ch, cmd == CMD_WRITE_SECTORS_EXT, true) {
                ch.start_pio_out(sink, 512);
            }
        }
        CMD_WRITE_MULTIPLE | CMD_WRITE_MULTIPLE_EXT => {
            let m = multiple(ch);
            if m == 0 {
                ch.fail(ERR_ABRT);
            } else if let Some(sink) = range(ch, cmd == CMD_WRITE_MULTIPLE_EXT, true) {
                ch.start_pio_out(sink, 512 * m);
            }
        }
        CMD_READ_DMA | CMD_READ_DMA_EXT | CMD_WRITE_DMA | CMD_WRITE_DMA_EXT => {
            let write = matches!(cmd, CMD_WRITE_DMA | CMD_WRITE_DMA_EXT);
            let ext = matches!(cmd, CMD_READ_DMA_EXT | CMD_WRITE_DMA_EXT);
            if let Some(src) = range(ch, ext, write) {
                start_dma(ch, src, !write, false);
            }
        }
        CMD_VERIFY => {
            if range(ch, false, false).is_some() {
                ch.complete();
            }
        }
        CMD_SET_MULTIPLE => {
            let n = ch.tf.nsect[0];
            // Block sizes are powers of two up to MAX_MULTIPLE; 0 disables.
            if n > MAX_MULTIPLE || (n != 0 && !n.is_power_of_two()) {
                ch.fail(ERR_ABRT);
            } else {
                if let Some(d) = ch.drives[sel].as_mut() {
                    d.state.multiple = n;
                }
                ch.complete();
            }
        }
        CMD_FLUSH_CACHE | CMD_FLUSH_CACHE_EXT => {
            let r = ch.drives[sel].as_mut().map(|d| d.backend.flush());
            match r {
                Some(Err(e)) => {
                    tracing::warn!("ide: flush of disk image failed: {e}");
                    ch.fail(ERR_ABRT);
                }
                _ => ch.complete(),
            }
        }
        CMD_INIT_PARAMS => {
            let heads = (ch.tf.device & 0x0f) + 1;
            let spt = ch.tf.nsect[0];
            if spt == 0 {
                ch.fail(ERR_ABRT);
            } else {
                if let Some(d) = ch.drives[sel].as_mut() {
                    d.state.heads = heads;
                    d.state.spt = spt;
                }
                ch.complete();
            }
        }
        CMD_SET_FEATURES => set_features(ch),
        CMD_DIAGNOSTIC => diagnostic(ch),
        CMD_CHECK_POWER => {
            // Active or idle: sector count FFh.
            ch.complete();
            ch.tf.nsect[0] = 0xff;
        }
        CMD_STANDBY_IMMEDIATE | CMD_IDLE_IMMEDIATE | CMD_STANDBY | CMD_IDLE | CMD_SLEEP => {
            // Power management has no effect on an image.
            ch.complete();
        }
        c if (CMD_RECALIBRATE..=0x1f).contains(&c) || (CMD_SEEK..=0x7f).contains(&c) => {
            ch.complete();
        }
        _ => {
            tracing::debug!("ide: unsupported ATA command {cmd:#04x}");
            ch.fail(ERR_ABRT);
        }
    }
}

/// The ATA commands an ATAPI device accepts (ATA-6 8, "PACKET command
/// feature set"); everything else aborts with the signature in place.
fn atapi_ata_command(ch: &mut Channel, cmd: u8) {
    match cmd {
        CMD_IDENTIFY_PACKET => {
            let words = atapi::identify_packet(ch);
            ch.start_pio_in(buffer(&words), 512, false);
        }
        CMD_PACKET => atapi::start_packet(ch),
        CMD_DEVICE_RESET => {
            // No interrupt; the signature says what we are.
            ch.signature();
        }
        CMD_DIAGNOSTIC => diagnostic(ch),
        CMD_SET_FEATURES => set_features(ch),
        CMD_CHECK_POWER => {
            ch.complete();
            ch.tf.nsect[0] = 0xff;
        }
        CMD_STANDBY_IMMEDIATE | CMD_IDLE_IMMEDIATE | CMD_STANDBY | CMD_IDLE | CMD_SLEEP => {
            ch.complete()
        }
        _ => {
            // IDENTIFY DEVICE and friends: abort and leave the ATAPI
            // signature for the host to find (ATA-6 8.15).
            ch.fail(ERR_ABRT);
            ch.tf.nsect[0] = 1;
            ch.tf.lbal[0] = 1;
            ch.tf.lbam[0] = 0x14;
            ch.tf.lbah[0] = 0xeb;
        }
    }
}

/// EXECUTE DEVICE DIAGNOSTIC: both drives pass (error 01h), signatures of
/// device 0 in the task file, interrupt.
fn diagnostic(ch: &mut Channel) {
    ch.tf.device &= !DEV_SLAVE;
    ch.signature();
    ch.raise();
}

fn set_features(ch: &mut Channel) {
    let sel = ch.sel();
    let sub = ch.tf.feature[0];
    let v = ch.tf.nsect[0];
    if sub == SF_XFER_MODE {
        // Mode byte: 00h/01h PIO default, 08h+n PIO n, 20h+n MWDMA n,
        // 40h+n UDMA n (ATA-6 table 44).
        let ok = matches!(v, 0x00 | 0x01 | 0x08..=0x0c | 0x20..=0x22 | 0x40..=0x45);
        if !ok {
            ch.fail(ERR_ABRT);
            return;
        }
        // PIO modes need no state; the DMA mode shows in IDENTIFY.
        if v >= 0x20 {
            if let Some(d) = ch.drives[sel].as_mut() {
                d.state.xfer_mode = v;
            }
        }
        ch.complete();
    } else if SF_NOOPS.contains(&sub) {
        ch.complete();
    } else {
        ch.fail(ERR_ABRT);
    }
}

fn multiple(ch: &Channel) -> usize {
    ch.drives[ch.sel()]
        .as_ref()
        .map(|d| usize::from(d.state.multiple))
        .unwrap_or(0)
}

/// The byte range of a read/write command from the task file; fails the
/// command (IDNF out of range, ABRT writing a read-only image) and returns
/// None when it cannot run.
fn range(ch: &mut Channel, ext: bool, write: bool) -> Option<Source> {
    let d = ch.drives[ch.sel()].as_ref()?;
    let tf = &ch.tf;
    let (lba, count) = if ext {
        let lba = u64::from(tf.lbal[0])
            | u64::from(tf.lbam[0]) << 8
            | u64::from(tf.lbah[0]) << 16
            | u64::from(tf.lbal[1]) << 24
            | u64::from(tf.lbam[1]) << 32
            | u64::from(tf.lbah[1]) << 40;
        let n = u64::from(tf.nsect[0]) | u64::from(tf.nsect[1]) << 8;
        (lba, if n == 0 { 65536 } else { n })
    } else {
        let n = u64::from(tf.nsect[0]);
        let n = if n == 0 { 256 } else { n };
        if tf.device & DEV_LBA != 0 {
            let lba = u64::from(tf.lbal[0])
                | u64::from(tf.lbam[0]) << 8
                | u64::from(tf.lbah[0]) << 16
                | u64::from(tf.device & 0x0f) << 24;
            (lba, n)
        } else {
            // CHS: LBA = (C * heads + H) * spt + S - 1 (ATA-6 6.2.1).
            let c = u64::from(tf.lbam[0]) | u64::from(tf.lbah[0]) << 8;
            let h = u64::from(tf.device & 0x0f);
            let s = u64::from(tf.lbal[0]);
            let heads = u64::from(d.state.heads);
            let spt = u64::from(d.state.spt);
            if s == 0 || s > spt || h >= heads {
                ch.fail(ERR_IDNF);
                return None;
            }
            ((c * heads + h) * spt + s - 1, n)
        }
    };
    if write && d.backend.read_only() {
        ch.fail(ERR_ABRT);
        return None;
    }
    if lba.checked_add(count).is_none_or(|end| end > d.sectors()) {
        ch.fail(ERR_IDNF);
        return None;
    }
    Some(Source::Image {
        offset: lba * 512,
        end: (lba + count) * 512,
    })
}

/// Leave a DMA command waiting for the bus master (DRQ set, no interrupt).
pub(super) fn start_dma(ch: &mut Channel, source: Source, to_host: bool, atapi: bool) {
    ch.xfer = Transfer {
        phase: Phase::Dma,
        source,
        block: 0,
        to_host,
        atapi,
        buf: Vec::new(),
        pos: 0,
    };
    ch.tf.status = ST_DRDY | ST_DSC | ST_DRQ;
}

/// Words as the little-endian bytes the data register returns.
pub(super) fn buffer(words: &[u16; 256]) -> Source {
    let mut data = Vec::with_capacity(512);
    for w in words {
        data.extend_from_slice(&w.to_le_bytes());
    }
    Source::Buffer { data, pos: 0 }
}

/// Store an ATA string: two characters per word, first in the high byte,
/// padded with spaces (ATA-6 3.2.9).
pub(super) fn put_string(words: &mut [u16; 256], first: usize, nwords: usize, s: &str) {
    let b = s.as_bytes();
    for i in 0..nwords {
        let hi = b.get(2 * i).copied().unwrap_or(b' ');
        let lo = b.get(2 * i + 1).copied().unwrap_or(b' ');
        if let Some(w) = words.get_mut(first + i) {
            *w = u16::from(hi) << 8 | u16::from(lo);
        }
    }
}

/// Serial number of a drive from its position on the controller.
pub(super) fn serial(ch: &Channel) -> String {
    format!("UMBRA{:015}", ch.sel() + 1)
}

/// Firmware revision string.
pub(super) const FIRMWARE: &str = "1.0";

/// DMA-mode words 63 and 88 with the mode selected by SET FEATURES.
pub(super) fn dma_words(words: &mut [u16; 256], mode: u8) {
    // Multiword DMA 0-2 supported (bits 2:0), selected in bits 10:8.
    words[63] = 0x0007;
    // Ultra DMA 0-5 supported (bits 5:0), selected in bits 13:8.
    words[88] = 0x003f;
    match mode {
        0x20..=0x22 => words[63] |= 1 << (8 + (mode & 7)),
        0x40..=0x45 => words[88] |= 1 << (8 + (mode & 7)),
        _ => {}
    }
}

/// IDENTIFY DEVICE data of the selected disk (ATA-6 8.15, table 16).
fn identify_disk(ch: &Channel) -> [u16; 256] {
    let mut w = [0u16; 256];
    let Some(d) = ch.drives[ch.sel()].as_ref() else {
        return w;
    };
    let sectors = d.sectors();
    let lba28 = sectors.min(0x0fff_ffff);
    let heads = u64::from(d.state.heads.max(1));
    let spt = u64::from(d.state.spt.max(1));
    let cyls = (sectors / (16 * 63)).clamp(1, 16383);
    // 0: fixed, non-removable ATA device.
    w[0] = 0x0040;
    // 1, 3, 6: default CHS geometry (16 heads, 63 sectors).
    w[1] = cyls as u16;
    w[3] = 16;
    w[6] = 63;
    put_string(&mut w, 10, 10, &serial(ch));
    put_string(&mut w, 23, 4, FIRMWARE);
    put_string(&mut w, 27, 20, "UMBRA HARDDISK");
    // 47: READ/WRITE MULTIPLE up to 16 sectors (bit 15 must be 1).
    w[47] = 0x8000 | u16::from(MAX_MULTIPLE);
    // 49: LBA (bit 9) and DMA (bit 8) supported.
    w[49] = 0x0300;
    // 50: bit 14 must be one.
    w[50] = 0x4000;
    // 51: PIO data transfer cycle timing mode 2 (obsolete).
    w[51] = 0x0200;
    // 53: words 54-58 (bit 0), 64-70 (bit 1) and 88 (bit 2) are valid.
    w[53] = 0x0007;
    // 54-58: current CHS translation and its capacity.
    let cur_cyls = (lba28 / (heads * spt)).min(65535);
    w[54] = cur_cyls as u16;
    w[55] = heads as u16;
    w[56] = spt as u16;
    let cur_cap = cur_cyls * heads * spt;
    w[57] = cur_cap as u16;
    w[58] = (cur_cap >> 16) as u16;
    // 59: multiple sector setting valid (bit 8) and its value.
    if d.state.multiple != 0 {
        w[59] = 0x0100 | u16::from(d.state.multiple);
    }
    // 60-61: addressable sectors in 28-bit mode.
    w[60] = lba28 as u16;
    w[61] = (lba28 >> 16) as u16;
    dma_words(&mut w, d.state.xfer_mode);
    // 64: PIO modes 3 and 4 supported.
    w[64] = 0x0003;
    // 65-68: minimum cycle times (ns): MWDMA, recommended, PIO, PIO IORDY.
    w[65] = 120;
    w[66] = 120;
    w[67] = 120;
    w[68] = 120;
    // 80: major version: ATA-1 through ATA-6.
    w[80] = 0x007e;
    // 82-84: command sets supported. 82: bit 5 write cache (writes reach
    // the host page cache; FLUSH CACHE makes them durable, so the guest
    // must be told to flush). 83: bit 14 valid, 13 FLUSH CACHE EXT, 12
    // FLUSH CACHE, 10 48-bit address.
    w[82] = 0x0020;
    w[83] = 0x7400;
    w[84] = 0x4000;
    // 85-87: command sets enabled (same features, write cache on).
    w[85] = 0x0020;
    w[86] = 0x3400;
    w[87] = 0x4000;
    // 93: hardware reset result: bit 14 valid, 13 80-conductor cable
    // detected, bit 0 set (device 0 determined by jumper).
    w[93] = 0x6001;
    // 100-103: addressable sectors in 48-bit mode.
    w[100] = sectors as u16;
    w[101] = (sectors >> 16) as u16;
    w[102] = (sectors >> 32) as u16;
    w[103] = (sectors >> 48) as u16;
    w
}
