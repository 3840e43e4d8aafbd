//! ACPI fixed-hardware power management registers of a PIIX4-style
//! chipset at one I/O base (the platform uses 0x600): PM1a event block
//! (PM1_STS, PM1_EN), PM1a control block (SCI_EN, SLP_TYP, SLP_EN) and the
//! 24-bit ACPI PM timer, with the SCI they raise.
//!
//! Owns: those registers and the SCI level. Does not own: the ACPI tables
//! (the firmware crate writes FADT/DSDT naming these ports and \_S5 = 0),
//! general-purpose events, or what power off means to the machine (it gets a
//! `PlatformRequest::PowerOff`).
//!
//! Layout, from the base: 0x00 PM1_STS (16), 0x02 PM1_EN (16), 0x04
//! PM1_CNT (16), 0x08 PM_TMR (32, read-only), 0x0C GPE0_STS (16), 0x0E
//! GPE0_EN (16) (a GPE0 block with no event sources, so a FADT may point
//! GPE0_BLK at base+0x0C with length 4). Accesses of 1, 2 or 4 bytes
//! at any offset are split into the registers they cover.
//!
//! Reference: ACPI 6.5, 4.8.3 (PM1 event/control registers, PM timer).

use serde::{Deserialize, Serialize};

use crate::{IrqLine, PlatformRequest, Requests};

/// The PM timer's frequency (ACPI 4.8.3.3).
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// Register offsets from the base.
pub const PM1_STS: u16 = 0x00;
pub const PM1_EN: u16 = 0x02;
pub const PM1_CNT: u16 = 0x04;
pub const PM_TMR: u16 = 0x08;
/// General-purpose event status (write 1 to clear; nothing sets it).
pub const GPE0_STS: u16 = 0x0c;
/// General-purpose event enables.
pub const GPE0_EN: u16 = 0x0e;
/// Bytes decoded from the base.
pub const BLOCK_LEN: u16 = 0x10;

// PM1_STS (write 1 to clear) and PM1_EN share bit positions.
/// PM timer's bit 23 changed.
pub const TMR_STS: u16 = 0x0001;
/// Bus master activity (status only).
pub const BM_STS: u16 = 0x0010;
/// The BIOS released the global lock.
pub const GBL_STS: u16 = 0x0020;
/// Power button pressed.
pub const PWRBTN_STS: u16 = 0x0100;
/// Sleep button pressed.
pub const SLPBTN_STS: u16 = 0x0200;
/// RTC alarm.
pub const RTC_STS: u16 = 0x0400;
/// Woken from a sleep state.
pub const WAK_STS: u16 = 0x8000;
/// The status bits that exist.
const STS_MASK: u16 = TMR_STS | BM_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS | WAK_STS;

/// PM timer overflow interrupt enable (PM1_EN).
pub const TMR_EN: u16 = 0x0001;
/// Global lock release interrupt enable.
pub const GBL_EN: u16 = 0x0020;
/// Power button interrupt enable.
pub const PWRBTN_EN: u16 = 0x0100;
/// Sleep button interrupt enable.
pub const SLPBTN_EN: u16 = 0x0200;
/// RTC alarm interrupt enable.
pub const RTC_EN: u16 = 0x0400;
/// The enable bits that exist.
const EN_MASK: u16 = TMR_EN | GBL_EN | PWRBTN_EN | SLPBTN_EN | RTC_EN;

// PM1_CNT.
/// Power management events go to the SCI (1) rather than SMI (0). Set from
/// reset: the FADT has no SMI_CMD, so the OS finds ACPI mode already on.
pub const SCI_EN: u16 = 0x0001;
/// Bus master activity wakes from C3.
pub const BM_RLD: u16 = 0x0002;
/// Release the global lock (write-only, signals the BIOS).
pub const GBL_RLS: u16 = 0x0004;
/// Sleep type field, bits 12:10.
pub const SLP_TYP_MASK: u16 = 0x1c00;
pub const SLP_TYP_SHIFT: u16 = 10;
/// Enter the sleep state in SLP_TYP (write-only, reads 0).
pub const SLP_EN: u16 = 0x2000;
/// The SLP_TYP value the DSDT's \_S5 package names (soft off).
pub const SLP_TYP_S5: u16 = 0;

/// The PM timer counts 24 bits (FADT TMR_VAL_EXT = 0).
const TMR_MASK: u64 = 0x00ff_ffff;
/// The timer bit whose every change sets TMR_STS.
const TMR_STS_BIT: u32 = 23;

/// Register state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AcpiPmState {
    pub pm1_sts: u16,
    pub pm1_en: u16,
    /// PM1_CNT as read (SLP_EN and GBL_RLS never stored).
    pub pm1_cnt: u16,
    /// Timer period count (ticks >> 23) when TMR_STS was last brought up
    /// to date.
    pub tmr_period: u64,
    pub gpe0_sts: u16,
    pub gpe0_en: u16,
    pub sci_level: bool,
}

/// The ACPI PM register block.
pub struct AcpiPm {
    base: u16,
    state: AcpiPmState,
    sci: IrqLine,
    requests: Requests,
    /// Accesses ignored (outside the block, read-only targets).
    ignored: u64,
}

/// PM timer ticks elapsed at virtual time `now` (ns).
fn ticks(now: u64) -> u64 {
    ((now as u128 * PM_TIMER_HZ as u128) / 1_000_000_000) as u64
}

/// The first virtual time (ns) at which `ticks` reaches `t`.
fn time_of_tick(t: u64) -> u64 {
    let ns = (t as u128 * 1_000_000_000).div_ceil(PM_TIMER_HZ as u128);
    ns.min(u64::MAX as u128) as u64
}

/// The part of a `size`-byte access at `off` that falls in the register at
/// `reg` of `len` bytes: (byte mask in register terms, value shifted into
/// register position).
fn overlap(off: u16, size: u8, value: u32, reg: u16, len: u16) -> Option<(u32, u32)> {
    let (a0, a1) = (off as i32, off as i32 + size.min(4) as i32);
    let (r0, r1) = (reg as i32, (reg + len) as i32);
    let (lo, hi) = (a0.max(r0), a1.min(r1));
    if lo >= hi {
        return None;
    }
    let mut mask = 0u32;
    let mut val = 0u32;
    for byte in lo..hi {
        let src = (byte - a0) as u32;
        let dst = (byte - r0) as u32;
        mask |= 0xff << (8 * dst);
        val |= ((value >> (8 * src)) & 0xff) << (8 * dst);
    }
    Some((mask, val))
}

impl AcpiPm {
    pub fn new(base: u16, sci: IrqLine, requests: Requests) -> Self {
        AcpiPm {
            base,
            state: AcpiPmState {
                pm1_sts: 0,
                pm1_en: 0,
                pm1_cnt: SCI_EN,
                tmr_period: 0,
                gpe0_sts: 0,
                gpe0_en: 0,
                sci_level: false,
            },
            sci,
            requests,
            ignored: 0,
        }
    }

    pub fn base(&self) -> u16 {
        self.base
    }

    pub fn state(&self) -> &AcpiPmState {
        &self.state
    }

    /// Put back a snapshot's state and drive the SCI to its level.
    pub fn restore(&mut self, state: AcpiPmState) {
        self.state = state;
        self.sci.set(self.state.sci_level);
    }

    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// The 24-bit PM timer value at `now`.
    pub fn timer(&self, now: u64) -> u32 {
        (ticks(now) & TMR_MASK) as u32
    }

    /// Bring TMR_STS up to date: set when bit 23 has changed since the last
    /// look, then drive the SCI.
    pub fn poll(&mut self, now: u64) {
        let period = ticks(now) >> TMR_STS_BIT;
        if period != self.state.tmr_period {
            self.state.tmr_period = period;
            self.state.pm1_sts |= TMR_STS;
        }
        self.update_sci();
    }

    /// When `poll` next has something to do: the next bit 23 transition,
    /// if the timer interrupt is enabled.
    pub fn next_event(&self, now: u64) -> Option<u64> {
        if self.state.pm1_en & TMR_EN == 0 || self.state.pm1_cnt & SCI_EN == 0 {
            return None;
        }
        let next = ((ticks(now) >> TMR_STS_BIT) + 1) << TMR_STS_BIT;
        Some(time_of_tick(next))
    }

    /// SCI: any enabled status bit, when SCI_EN routes events to it.
    fn update_sci(&mut self) {
        let s = &self.state;
        let level = s.pm1_cnt & SCI_EN != 0
            && (s.pm1_sts & s.pm1_en & EN_MASK != 0 || s.gpe0_sts & s.gpe0_en != 0);
        if level != self.state.sci_level {
            self.state.sci_level = level;
            self.sci.set(level);
        }
    }

    /// Press the power button (sets PWRBTN_STS; SCI if enabled).
    pub fn power_button(&mut self) {
        self.state.pm1_sts |= PWRBTN_STS;
        self.update_sci();
    }

    pub fn read(&mut self, port: u16, size: u8, now: u64) -> u32 {
        let Some(off) = port.checked_sub(self.base).filter(|o| *o < BLOCK_LEN) else {
            self.ignored += 1;
            return 0xffff_ffff >> (8 * (4 - size.clamp(1, 4) as u32));
        };
        self.poll(now);
        let regs: [(u16, u16, u32); 6] = [
            // PM1_STS: event status.
            (PM1_STS, 2, self.state.pm1_sts as u32),
            // PM1_EN: event enables.
            (PM1_EN, 2, self.state.pm1_en as u32),
            // PM1_CNT: SLP_EN and GBL_RLS read as 0.
            (PM1_CNT, 2, self.state.pm1_cnt as u32),
            // PM_TMR: free-running 24-bit count, upper byte 0.
            (PM_TMR, 4, self.timer(now)),
            // GPE0 status and enables.
            (GPE0_STS, 2, self.state.gpe0_sts as u32),
            (GPE0_EN, 2, self.state.gpe0_en as u32),
        ];
        // Bytes of the block that are no register (0x06-0x07) read 0.
        let mut v = 0u32;
        for (reg, len, val) in regs {
            for i in 0..size.min(4) as u16 {
                let byte = off + i;
                if byte >= reg && byte < reg + len {
                    let b = (val >> (8 * (byte - reg))) & 0xff;
                    v |= b << (8 * i);
                }
            }
        }
        v
    }

    pub fn write(&mut self, port: u16, size: u8, value: u32, now: u64) {
        let Some(off) = port.checked_sub(self.base).filter(|o| *o < BLOCK_LEN) else {
            self.ignored += 1;
            return;
        };
        self.poll(now);
        // PM1_STS: write 1 to clear.
        if let Some((mask, val)) = overlap(off, size, value, PM1_STS, 2) {
            self.state.pm1_sts &= !((val & mask) as u16 & STS_MASK);
        }
        // PM1_EN: plain read/write.
        if let Some((mask, val)) = overlap(off, size, value, PM1_EN, 2) {
            let m = mask as u16;
            self.state.pm1_en = (self.state.pm1_en & !m) | (val as u16 & m & EN_MASK);
        }
        // PM1_CNT: SCI_EN, BM_RLD and SLP_TYP are stored; SLP_EN starts the
        // sleep state named by SLP_TYP (ACPI 4.8.3.2.1).
        if let Some((mask, val)) = overlap(off, size, value, PM1_CNT, 2) {
            let m = mask as u16;
            let new = (self.state.pm1_cnt & !m) | (val as u16 & m);
            self.state.pm1_cnt = new & (SCI_EN | BM_RLD | SLP_TYP_MASK);
            if new & SLP_EN != 0 {
                let typ = (new & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
                if typ == SLP_TYP_S5 {
                    self.requests.post(PlatformRequest::PowerOff);
                } else {
                    self.ignored += 1;
                    tracing::debug!(typ, "acpi_pm: sleep type not supported, ignored");
                }
            }
        }
        // PM_TMR is read-only.
        if overlap(off, size, value, PM_TMR, 4).is_some() {
            self.ignored += 1;
        }
        // GPE0_STS: write 1 to clear.
        if let Some((mask, val)) = overlap(off, size, value, GPE0_STS, 2) {
            self.state.gpe0_sts &= !((val & mask) as u16);
        }
        // GPE0_EN: plain read/write.
        if let Some((mask, val)) = overlap(off, size, value, GPE0_EN, 2) {
            let m = mask as u16;
            self.state.gpe0_en = (self.state.gpe0_en & !m) | (val as u16 & m);
        }
        self.update_sci();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// The SCI on IRQ 9.
    type Level = crate::testutil::LineLevel<9>;

    fn pm() -> (AcpiPm, Rc<RefCell<Level>>, Requests) {
        let l = Rc::new(RefCell::new(Level::default()));
        let r = Requests::new();
        (
            AcpiPm::new(0x600, IrqLine::new(l.clone(), 9), r.clone()),
            l,
            r,
        )
    }

    #[test]
    fn sci_en_from_reset_and_s5_power_off() {
        let (mut p, _, r) = pm();
        assert_eq!(p.read(0x604, 2, 0), 1);
        // SLP_TYP = 5 with SLP_EN: not S5 here, ignored.
        p.write(0x604, 2, (5 << 10) | 0x2000 | 1, 0);
        assert_eq!(r.peek(), None);
        assert_eq!(p.read(0x604, 2, 0), (5 << 10) | 1, "SLP_EN reads 0");
        // Linux: SLP_TYP = 0 written first, then SLP_EN.
        p.write(0x604, 2, 1, 0);
        assert_eq!(r.peek(), None);
        p.write(0x604, 2, 0x2001, 0);
        assert_eq!(r.take(), Some(PlatformRequest::PowerOff));
    }

    #[test]
    fn slp_en_by_byte_write_to_high_half() {
        let (mut p, _, r) = pm();
        p.write(0x605, 1, 0x20, 0);
        assert_eq!(r.take(), Some(PlatformRequest::PowerOff));
    }

    #[test]
    fn timer_rate_and_width() {
        let (mut p, _, _) = pm();
        // One second is 3,579,545 ticks.
        assert_eq!(p.read(0x608, 4, 1_000_000_000), 3_579_545);
        // 1 ms: 3579.545 -> 3579.
        assert_eq!(p.read(0x608, 4, 1_000_000), 3579);
        // 24-bit wrap: 2^24 ticks = 4.6869 s; at 5 s the count is
        // 17,897,725 - 16,777,216 = 1,120,509.
        assert_eq!(p.read(0x608, 4, 5_000_000_000), 1_120_509);
        // Byte read of the low byte of 3579 (0x0DFB).
        assert_eq!(p.read(0x608, 1, 1_000_000), 0xfb);
        p.write(0x608, 4, 0, 1_000_000);
        assert_eq!(p.read(0x608, 4, 1_000_000), 3579, "read-only");
    }

    #[test]
    fn tmr_sts_on_bit23_with_sci() {
        let (mut p, l, _) = pm();
        assert_eq!(p.next_event(0), None, "TMR_EN clear");
        p.write(0x602, 2, TMR_EN as u32, 0);
        // 2^23 ticks = 2,343,484,437.3 ns -> first ns at or past it.
        let t = p.next_event(0).unwrap();
        assert_eq!(t, 2_343_484_438);
        p.poll(t - 1);
        assert_eq!(p.read(0x600, 2, t - 1) & 1, 0);
        assert!(!l.borrow().0);
        p.poll(t);
        assert!(l.borrow().0);
        assert_eq!(p.read(0x600, 2, t) & 1, 1);
        // Write 1 to clear.
        p.write(0x600, 2, 1, t);
        assert_eq!(p.read(0x600, 2, t) & 1, 0);
        assert!(!l.borrow().0);
        assert_eq!(p.next_event(t), Some(2 * 2_343_484_437 + 1));
    }

    #[test]
    fn power_button_and_enable_register() {
        let (mut p, l, _) = pm();
        p.power_button();
        assert!(!l.borrow().0);
        p.write(0x602, 2, 0xffff, 0);
        assert_eq!(p.read(0x602, 2, 0), 0x0721);
        assert!(l.borrow().0);
        // A 32-bit write at the base clears status and enables at once.
        p.write(0x600, 4, 0x0000_0100, 0);
        assert_eq!(p.read(0x600, 4, 0), 0);
        assert!(!l.borrow().0);
        assert_eq!(p.read(0x5ff, 1, 0), 0xff);
        assert_eq!(p.read(0x610, 2, 0), 0xffff);
    }

    #[test]
    fn gpe0_block() {
        let (mut p, l, _) = pm();
        p.write(0x60c, 4, 0xffff_ffff, 0);
        assert_eq!(
            p.read(0x60c, 4, 0),
            0xffff_0000,
            "status clear, enables set"
        );
        assert!(!l.borrow().0);
    }
}
