//! The ATAPI CD-ROM: IDENTIFY PACKET DEVICE, the PACKET protocol (PIO by
//! byte count limit, or DMA when the features register asks) and the SCSI
//! MMC commands a BIOS and Linux's sr driver use, with sense data.
//!
//! References: SFF-8020i 2.6 (packet protocol, interrupt reason), MMC-2
//! (READ TOC, GET CONFIGURATION, GET EVENT STATUS NOTIFICATION), SPC-2
//! (INQUIRY, REQUEST SENSE, sense keys and additional sense codes).

use super::ata::{dma_words, put_string, serial, start_dma, FIRMWARE};
use super::ST_ERR;
use super::{Channel, Phase, Sense, Source, Transfer, IR_COD, IR_IO, ST_DRDY, ST_DRQ, ST_DSC};

/// CD-ROM sector size.
pub const CD_SECTOR: u64 = 2048;
/// Length of an ATAPI command packet.
pub const PACKET_LEN: usize = 12;

/// PACKET features bit 0: the data phase uses DMA.
pub const FEAT_DMA: u8 = 0x01;

// SCSI operation codes.
/// TEST UNIT READY.
pub const SCSI_TEST_UNIT_READY: u8 = 0x00;
/// REQUEST SENSE.
pub const SCSI_REQUEST_SENSE: u8 = 0x03;
/// INQUIRY.
pub const SCSI_INQUIRY: u8 = 0x12;
/// MODE SENSE(6).
pub const SCSI_MODE_SENSE_6: u8 = 0x1a;
/// START STOP UNIT.
pub const SCSI_START_STOP: u8 = 0x1b;
/// PREVENT ALLOW MEDIUM REMOVAL.
pub const SCSI_PREVENT_ALLOW: u8 = 0x1e;
/// READ CAPACITY.
pub const SCSI_READ_CAPACITY: u8 = 0x25;
/// READ(10).
pub const SCSI_READ_10: u8 = 0x28;
/// SEEK(10).
pub const SCSI_SEEK_10: u8 = 0x2b;
/// READ TOC/PMA/ATIP.
pub const SCSI_READ_TOC: u8 = 0x43;
/// GET CONFIGURATION.
pub const SCSI_GET_CONFIGURATION: u8 = 0x46;
/// GET EVENT STATUS NOTIFICATION.
pub const SCSI_GET_EVENT_STATUS: u8 = 0x4a;
/// MODE SENSE(10).
pub const SCSI_MODE_SENSE_10: u8 = 0x5a;
/// READ(12).
pub const SCSI_READ_12: u8 = 0xa8;

// Sense keys (SPC-2 table 107).
/// No sense.
pub const SK_NO_SENSE: u8 = 0x00;
/// Not ready.
pub const SK_NOT_READY: u8 = 0x02;
/// Medium error.
pub const SK_MEDIUM_ERROR: u8 = 0x03;
/// Illegal request.
pub const SK_ILLEGAL_REQUEST: u8 = 0x05;
/// Unit attention.
pub const SK_UNIT_ATTENTION: u8 = 0x06;

// Additional sense codes.
/// Unrecovered read error.
pub const ASC_READ_ERROR: u8 = 0x11;
/// Invalid command operation code.
pub const ASC_INVALID_COMMAND: u8 = 0x20;
/// Logical block address out of range.
pub const ASC_LBA_OUT_OF_RANGE: u8 = 0x21;
/// Invalid field in CDB.
pub const ASC_INVALID_FIELD: u8 = 0x24;
/// Power on, reset or bus device reset occurred.
pub const ASC_RESET: u8 = 0x29;
/// Medium not present.
pub const ASC_NO_MEDIUM: u8 = 0x3a;

/// MMC profile: CD-ROM.
pub const PROFILE_CDROM: u16 = 0x0008;

/// IDENTIFY PACKET DEVICE data (ATA-6 8.16, table 19).
pub(super) fn identify_packet(ch: &Channel) -> [u16; 256] {
    let mut w = [0u16; 256];
    let mode = ch.drives[ch.sel()]
        .as_ref()
        .map(|d| d.state.xfer_mode)
        .unwrap_or(0);
    // 0: ATAPI (10b), CD-ROM (05h), removable, DRQ within 50 us, 12-byte
    // packets.
    w[0] = 0x85c0;
    put_string(&mut w, 10, 10, &serial(ch));
    put_string(&mut w, 23, 4, FIRMWARE);
    put_string(&mut w, 27, 20, "UMBRA CD-ROM");
    // 49: LBA and DMA supported.
    w[49] = 0x0300;
    // 53: words 64-70 and 88 valid.
    w[53] = 0x0006;
    dma_words(&mut w, mode);
    // 64: PIO 3 and 4; 65-68 cycle times.
    w[64] = 0x0003;
    w[65] = 120;
    w[66] = 120;
    w[67] = 120;
    w[68] = 120;
    // 71-72: typical release and service times (ns), 0 = not given.
    // 80: ATA/ATAPI-4 to -6.
    w[80] = 0x0070;
    // 82: PACKET (bit 4) and DEVICE RESET (bit 9) supported; 83/84 valid.
    w[82] = 0x0210;
    w[83] = 0x4000;
    w[84] = 0x4000;
    w[85] = 0x0210;
    w[86] = 0x0000;
    w[87] = 0x4000;
    w[93] = 0x6001;
    w
}

/// PACKET command: wait for the 12-byte packet (CoD=1, IO=0, DRQ).
pub(super) fn start_packet(ch: &mut Channel) {
    ch.xfer = Transfer {
        phase: Phase::Packet,
        source: Source::Buffer {
            data: Vec::new(),
            pos: 0,
        },
        block: PACKET_LEN,
        to_host: false,
        atapi: true,
        buf: vec![0; PACKET_LEN],
        pos: 0,
    };
    ch.tf.nsect[0] = IR_COD;
    ch.tf.status = ST_DRDY | ST_DSC | ST_DRQ;
}

/// Command completed with GOOD status: interrupt reason CoD|IO.
pub(super) fn finish_ok(ch: &mut Channel) {
    ch.xfer = Transfer::default();
    ch.tf.nsect[0] = IR_COD | IR_IO;
    ch.tf.error = 0;
    ch.tf.status = ST_DRDY | ST_DSC;
    if let Some(d) = ch.drives[ch.sel()].as_mut() {
        d.state.sense = Sense::default();
    }
    ch.raise();
}

/// CHECK CONDITION with the given sense: the error register holds the
/// sense key in bits 7:4 (SFF-8020i 7.1.4; ABRT stays for ATA-level aborts,
/// which is what SeaBIOS expects when it compares the error with 20h for
/// NOT READY).
pub(super) fn fail_sense(ch: &mut Channel, key: u8, asc: u8, ascq: u8) {
    ch.xfer = Transfer::default();
    if let Some(d) = ch.drives[ch.sel()].as_mut() {
        d.state.sense = Sense { key, asc, ascq };
    }
    ch.tf.nsect[0] = IR_COD | IR_IO;
    ch.tf.error = key << 4;
    ch.tf.status = ST_DRDY | ST_DSC | ST_ERR;
    ch.raise();
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from(b[i]) << 8 | u16::from(b[i + 1])
}

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from(be16(b, i)) << 16 | u32::from(be16(b, i + 2))
}

/// Reply with `data`, cut to the command's allocation length.
fn reply(ch: &mut Channel, mut data: Vec<u8>, alloc: usize) {
    data.truncate(alloc);
    send(ch, Source::Buffer { data, pos: 0 });
}

/// Start the data phase of `src` by PIO or DMA as the PACKET asked.
fn send(ch: &mut Channel, src: Source) {
    if src.remaining() == 0 {
        finish_ok(ch);
        return;
    }
    if ch.tf.feature[0] & FEAT_DMA != 0 {
        start_dma(ch, src, true, true);
        return;
    }
    // Byte count limit from LBA mid/high at PACKET time; 0 means the
    // largest even count (SFF-8020i 5.2.3); always even.
    let limit = usize::from(u16::from(ch.tf.lbam[0]) | u16::from(ch.tf.lbah[0]) << 8);
    let limit = if limit == 0 { 0xfffe } else { limit & !1 }.max(2);
    ch.start_pio_in(src, limit, true);
}

/// The 12-byte packet arrived: run the SCSI command.
pub(super) fn packet_received(ch: &mut Channel) {
    let p: [u8; PACKET_LEN] = {
        let mut a = [0u8; PACKET_LEN];
        for (d, s) in a.iter_mut().zip(ch.xfer.buf.iter()) {
            *d = *s;
        }
        a
    };
    ch.xfer = Transfer::default();
    let sel = ch.sel();
    let Some(d) = ch.drives[sel].as_mut() else {
        return;
    };
    let op = p[0];
    let sectors = d.backend.len() / CD_SECTOR;
    let medium = sectors > 0;
    // A pending unit attention answers every command except those that
    // report status (SPC-2 5.6.5; MMC GET CONFIGURATION / GESN too).
    let reports = matches!(
        op,
        SCSI_INQUIRY | SCSI_REQUEST_SENSE | SCSI_GET_CONFIGURATION | SCSI_GET_EVENT_STATUS
    );
    if d.state.unit_attention && !reports {
        d.state.unit_attention = false;
        fail_sense(ch, SK_UNIT_ATTENTION, ASC_RESET, 0);
        return;
    }
    let needs_medium = matches!(
        op,
        SCSI_TEST_UNIT_READY | SCSI_READ_CAPACITY | SCSI_READ_10 | SCSI_READ_12 | SCSI_READ_TOC
    );
    if needs_medium && !medium {
        fail_sense(ch, SK_NOT_READY, ASC_NO_MEDIUM, 0);
        return;
    }
    match op {
        SCSI_TEST_UNIT_READY | SCSI_START_STOP | SCSI_PREVENT_ALLOW | SCSI_SEEK_10 => finish_ok(ch),
        SCSI_REQUEST_SENSE => {
            // Fixed-format sense data, then the sense is cleared.
            let s = d.state.sense;
            let s = if d.state.unit_attention {
                d.state.unit_attention = false;
                Sense {
                    key: SK_UNIT_ATTENTION,
                    asc: ASC_RESET,
                    ascq: 0,
                }
            } else {
                s
            };
            d.state.sense = Sense::default();
            let mut r = vec![0u8; 18];
            r[0] = 0x70;
            r[2] = s.key;
            r[7] = 10;
            r[12] = s.asc;
            r[13] = s.ascq;
            reply(ch, r, usize::from(p[4]));
        }
        SCSI_INQUIRY => {
            let mut r = vec![0u8; 36];
            // CD-ROM device, removable, ATAPI response format.
            r[0] = 0x05;
            r[1] = 0x80;
            r[2] = 0x00;
            r[3] = 0x21;
            r[4] = 31;
            r[8..16].copy_from_slice(b"UMBRA   ");
            r[16..32].copy_from_slice(b"UMBRA CD-ROM    ");
            r[32..36].copy_from_slice(b"1.0 ");
            reply(ch, r, usize::from(p[4]));
        }
        SCSI_READ_CAPACITY => {
            let last = (sectors - 1).min(u64::from(u32::MAX)) as u32;
            let mut r = last.to_be_bytes().to_vec();
            r.extend_from_slice(&(CD_SECTOR as u32).to_be_bytes());
            reply(ch, r, 8);
        }
        SCSI_READ_10 | SCSI_READ_12 => {
            let lba = u64::from(be32(&p, 2));
            let count = if op == SCSI_READ_10 {
                u64::from(be16(&p, 7))
            } else {
                u64::from(be32(&p, 6))
            };
            if lba + count > sectors {
                fail_sense(ch, SK_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE, 0);
                return;
            }
            send(
                ch,
                Source::Image {
                    offset: lba * CD_SECTOR,
                    end: (lba + count) * CD_SECTOR,
                },
            );
        }
        SCSI_READ_TOC => read_toc(ch, &p, sectors),
        SCSI_MODE_SENSE_10 => mode_sense(ch, &p),
        SCSI_GET_CONFIGURATION => {
            let current = if medium { PROFILE_CDROM } else { 0 };
            let mut r = vec![0u8; 16];
            // Header: data length (after this field), current profile.
            r[3] = 12;
            r[6..8].copy_from_slice(&current.to_be_bytes());
            // Feature 0000h Profile List: persistent, current; one profile.
            r[10] = 0x03;
            r[11] = 4;
            r[12..14].copy_from_slice(&PROFILE_CDROM.to_be_bytes());
            r[14] = u8::from(medium);
            reply(ch, r, usize::from(be16(&p, 7)));
        }
        SCSI_GET_EVENT_STATUS => {
            // Only polled mode is supported (MMC-2 6.1.7).
            if p[1] & 1 == 0 {
                fail_sense(ch, SK_ILLEGAL_REQUEST, ASC_INVALID_FIELD, 0);
                return;
            }
            let r = if p[4] & 0x10 != 0 {
                // Media class, no change; media present bit.
                vec![0, 6, 0x04, 0x10, 0x00, if medium { 0x02 } else { 0 }, 0, 0]
            } else {
                // No event available (NEA), media class supported.
                vec![0, 2, 0x80, 0x10]
            };
            reply(ch, r, usize::from(be16(&p, 7)));
        }
        _ => {
            tracing::debug!("ide: unsupported ATAPI command {op:#04x}");
            fail_sense(ch, SK_ILLEGAL_REQUEST, ASC_INVALID_COMMAND, 0);
        }
    }
}

/// An address for READ TOC: LBA, or MSF (00 M S F with 150 frames of
/// pregap, 75 frames a second).
fn toc_addr(lba: u64, msf: bool) -> [u8; 4] {
    if msf {
        let f = lba + 150;
        [
            0,
            (f / (75 * 60)).min(255) as u8,
            (f / 75 % 60) as u8,
            (f % 75) as u8,
        ]
    } else {
        (lba as u32).to_be_bytes()
    }
}

/// READ TOC formats 0 (TOC: one data track and the lead-out) and 1
/// (session information).
fn read_toc(ch: &mut Channel, p: &[u8; PACKET_LEN], sectors: u64) {
    let msf = p[1] & 0x02 != 0;
    let format = if p[2] & 0x0f != 0 {
        p[2] & 0x0f
    } else {
        p[9] >> 6
    };
    let track = p[6];
    let alloc = usize::from(be16(p, 7));
    let mut r = vec![0u8; 4];
    r[2] = 1;
    r[3] = 1;
    match format {
        0 => {
            if track > 1 && track != 0xaa {
                fail_sense(ch, SK_ILLEGAL_REQUEST, ASC_INVALID_FIELD, 0);
                return;
            }
            if track <= 1 {
                // Track 1: data track (control 4, ADR 1), starts at 0.
                r.extend_from_slice(&[0, 0x14, 1, 0]);
                r.extend_from_slice(&toc_addr(0, msf));
            }
            // Lead-out (track AAh) starts after the last sector.
            r.extend_from_slice(&[0, 0x14, 0xaa, 0]);
            r.extend_from_slice(&toc_addr(sectors, msf));
        }
        1 => {
            // One complete session whose first track starts at 0.
            r.extend_from_slice(&[0, 0x14, 1, 0]);
            r.extend_from_slice(&toc_addr(0, msf));
        }
        _ => {
            fail_sense(ch, SK_ILLEGAL_REQUEST, ASC_INVALID_FIELD, 0);
            return;
        }
    }
    let len = (r.len() - 2) as u16;
    r[0..2].copy_from_slice(&len.to_be_bytes());
    reply(ch, r, alloc);
}

/// MODE SENSE(10): the error recovery page (01h) and the capabilities page
/// (2Ah), alone or through 3Fh.
fn mode_sense(ch: &mut Channel, p: &[u8; PACKET_LEN]) {
    let page = p[2] & 0x3f;
    let alloc = usize::from(be16(p, 7));
    let mut r = vec![0u8; 8];
    // Medium type 01h: 120 mm CD-ROM data only.
    r[2] = 0x01;
    let recovery = [0x01, 0x06, 0, 5, 0, 0, 0, 0];
    let mut caps = [0u8; 20];
    caps[0] = 0x2a;
    caps[1] = 18;
    // Reads CD-R media; audio play, tray loader, eject, lock supported.
    caps[2] = 0x01;
    caps[4] = 0x71;
    caps[5] = 0x00;
    caps[6] = 0x29;
    // Maximum and current read speed (kB/s), 4x.
    caps[8..10].copy_from_slice(&706u16.to_be_bytes());
    caps[14..16].copy_from_slice(&706u16.to_be_bytes());
    match page {
        0x01 => r.extend_from_slice(&recovery),
        0x2a => r.extend_from_slice(&caps),
        0x3f => {
            r.extend_from_slice(&recovery);
            r.extend_from_slice(&caps);
        }
        _ => {
            fail_sense(ch, SK_ILLEGAL_REQUEST, ASC_INVALID_FIELD, 0);
            return;
        }
    }
    let len = (r.len() - 2) as u16;
    r[0..2].copy_from_slice(&len.to_be_bytes());
    reply(ch, r, alloc);
}
