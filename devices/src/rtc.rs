//! The Motorola MC146818 real-time clock and its 128 bytes of CMOS RAM at
//! ports 0x70 (index; bit 7 masks NMI) and 0x71 (data).
//!
//! It owns the calendar registers (0x00-0x09 and the PC century byte
//! 0x32), registers A-D (update-in-progress, divider, rate select,
//! periodic/alarm/update-ended interrupts and their flags, valid RAM and
//! time), IRQ8, and the rest of CMOS as plain NVRAM that the platform fills
//! (`set_memory_size`). It does not own the NMI itself: the mask bit is
//! only recorded.
//!
//! The clock is a pure function of the `start_unix_secs` given at
//! construction and the virtual `now`: the device keeps "unix seconds at
//! virtual time base_ns" and derives the calendar with a civil-from-days
//! conversion (Gregorian, proleptic, UTC), written here to keep the device
//! free of a calendar dependency. Time registers are stored as seconds, so
//! switching BCD/binary or 12/24 h in register B re-encodes the current
//! time (the real chip would leave stale bytes). Behaviour follows the
//! MC146818A datasheet: "Update Cycle", "Register A-D", "Interrupts".

use serde::{Deserialize, Serialize};

use crate::irq::IrqLine;

/// Index port (write only): bits 6:0 select the CMOS byte.
pub const PORT_INDEX: u16 = 0x70;
/// Data port: the selected byte.
pub const PORT_DATA: u16 = 0x71;
/// Index port bit 7: NMI disabled.
pub const INDEX_NMI_MASK: u8 = 1 << 7;

/// Seconds.
pub const REG_SECONDS: u8 = 0x00;
/// Seconds alarm.
pub const REG_SECONDS_ALARM: u8 = 0x01;
/// Minutes.
pub const REG_MINUTES: u8 = 0x02;
/// Minutes alarm.
pub const REG_MINUTES_ALARM: u8 = 0x03;
/// Hours (bit 7 = PM in 12-hour mode).
pub const REG_HOURS: u8 = 0x04;
/// Hours alarm.
pub const REG_HOURS_ALARM: u8 = 0x05;
/// Day of week, 1 = Sunday.
pub const REG_DAY_OF_WEEK: u8 = 0x06;
/// Day of month.
pub const REG_DAY_OF_MONTH: u8 = 0x07;
/// Month.
pub const REG_MONTH: u8 = 0x08;
/// Year within the century.
pub const REG_YEAR: u8 = 0x09;
/// Register A: UIP, divider, rate select.
pub const REG_A: u8 = 0x0A;
/// Register B: SET, interrupt enables, data mode.
pub const REG_B: u8 = 0x0B;
/// Register C: interrupt flags (read only, cleared by reading).
pub const REG_C: u8 = 0x0C;
/// Register D: valid RAM and time (read only).
pub const REG_D: u8 = 0x0D;
/// PC convention: the century (ACPI FADT "century" field points here).
pub const REG_CENTURY: u8 = 0x32;

/// A: update in progress (read only).
pub const A_UIP: u8 = 1 << 7;
/// A: divider select bits 6:4.
pub const A_DV_MASK: u8 = 0x70;
/// A: divider value 010, the 32.768 kHz time base.
pub const A_DV_32K: u8 = 0x20;
/// A: divider values 11x hold the divider chain in reset.
pub const A_DV_RESET: u8 = 0x60;
/// A: rate select bits 3:0.
pub const A_RS_MASK: u8 = 0x0F;
/// B: SET, updates inhibited so the time can be written.
pub const B_SET: u8 = 1 << 7;
/// B: periodic interrupt enable.
pub const B_PIE: u8 = 1 << 6;
/// B: alarm interrupt enable.
pub const B_AIE: u8 = 1 << 5;
/// B: update-ended interrupt enable.
pub const B_UIE: u8 = 1 << 4;
/// B: square wave enable (no SQW pin here; kept).
pub const B_SQWE: u8 = 1 << 3;
/// B: data mode binary (clear = BCD).
pub const B_DM_BINARY: u8 = 1 << 2;
/// B: 24-hour mode (clear = 12-hour).
pub const B_24H: u8 = 1 << 1;
/// B: daylight saving enable (kept, not applied).
pub const B_DSE: u8 = 1 << 0;
/// C: an enabled interrupt flag is set (IRQ asserted).
pub const C_IRQF: u8 = 1 << 7;
/// C: periodic interrupt flag.
pub const C_PF: u8 = 1 << 6;
/// C: alarm flag.
pub const C_AF: u8 = 1 << 5;
/// C: update-ended flag.
pub const C_UF: u8 = 1 << 4;
/// D: valid RAM and time (the battery is good).
pub const D_VRT: u8 = 1 << 7;
/// Alarm register "don't care" code: both top bits set.
const ALARM_DONT_CARE: u8 = 0xC0;

/// UIP is set for this long before each update (datasheet t_BUC).
pub const UIP_NS: u64 = 244_000;
const NS_PER_SEC: i128 = 1_000_000_000;
/// The divider's time base in Hz.
const TIME_BASE_HZ: i128 = 32_768;
/// The first update after the divider leaves reset comes half a second later.
const HALF_SEC_NS: i128 = 500_000_000;
/// Alarm checks a late poll replays at most (one day covers every match).
const MAX_ALARM_REPLAY: i64 = 86_400;

/// NVRAM: base memory in KiB, low byte (high at +1).
pub const NV_BASE_MEM_KB: u8 = 0x15;
/// NVRAM: extended memory (above 1 MiB) in KiB, low byte (high at +1).
pub const NV_EXT_MEM_KB: u8 = 0x17;
/// NVRAM: checksum of 0x10-0x2D, high byte (low at 0x2F).
pub const NV_CHECKSUM: u8 = 0x2E;
/// NVRAM: extended memory in KiB as found by POST, low byte.
pub const NV_EXT_MEM_KB_POST: u8 = 0x30;
/// NVRAM: memory 16 MiB-4 GiB in 64 KiB units, low byte (SeaBIOS, QEMU).
pub const NV_MEM_ABOVE_16M: u8 = 0x34;
/// NVRAM: memory above 4 GiB in 64 KiB units, 3 bytes (SeaBIOS, QEMU).
pub const NV_MEM_ABOVE_4G: u8 = 0x5B;
/// RAM above this address is mapped above 4 GiB (the PCI hole starts here).
pub const BELOW_4G_LIMIT: u64 = 0xE000_0000;

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1-12).
/// Counts in eras of 400 years starting each 1 March so that the leap
/// day falls at the end of the year.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    /// 0 = Sunday.
    weekday: i64,
}

impl Civil {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            // 1970-01-01 was a Thursday (4).
            weekday: (days + 4).rem_euclid(7),
        }
    }

    fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day)
            .saturating_mul(86_400)
            .saturating_add(self.hour * 3600 + self.minute * 60 + self.second)
    }
}

fn to_bcd(v: i64) -> u8 {
    let v = v.rem_euclid(100) as u8;
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> i64 {
    i64::from(v >> 4) * 10 + i64::from(v & 0xF)
}

/// The MC146818 registers and the clock's reference point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcState {
    /// All 128 CMOS bytes; the clock registers are served from the clock.
    pub cmos: Vec<u8>,
    /// Selected CMOS byte (index port bits 6:0).
    pub index: u8,
    /// Index port bit 7 as last written.
    pub nmi_masked: bool,
    /// Register A bits 6:0.
    pub reg_a: u8,
    /// Register B.
    pub reg_b: u8,
    /// Register C flags PF/AF/UF, set independently of their enables.
    pub flags: u8,
    /// Unix seconds shown at virtual time `base_ns` (while running) or
    /// held (while stopped).
    pub base_secs: i64,
    /// Virtual ns of the last update (second boundary) reference.
    pub base_ns: i64,
    /// Virtual ns at which the divider chain last left reset (periodic
    /// interrupt phase).
    pub div_base_ns: i64,
    /// Virtual ns up to which flags have been computed.
    pub last_sync: u64,
    /// Level driven on IRQ8.
    pub irq_level: bool,
}

/// Counters for accesses the model ignores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcStats {
    /// Writes to read-only registers C and D and to the day of week.
    pub read_only_writes: u64,
    /// Reads of the write-only index port.
    pub index_reads: u64,
    /// Accesses to ports this device does not decode.
    pub bad_port: u64,
}

/// The PC's MC146818 RTC with CMOS RAM and IRQ8.
pub struct Rtc {
    pub state: RtcState,
    pub stats: RtcStats,
    irq8: IrqLine,
}

fn signed(now: u64) -> i128 {
    i128::from(now)
}

impl Rtc {
    pub fn new(irq8: IrqLine, start_unix_secs: i64) -> Self {
        Rtc {
            state: RtcState {
                cmos: vec![0; 128],
                index: 0,
                nmi_masked: false,
                // 32.768 kHz time base, 1024 Hz periodic rate (PC BIOS).
                reg_a: A_DV_32K | 0x06,
                // 24-hour BCD, no interrupts (PC BIOS).
                reg_b: B_24H,
                flags: 0,
                base_secs: start_unix_secs,
                base_ns: 0,
                div_base_ns: 0,
                last_sync: 0,
                irq_level: false,
            },
            stats: RtcStats::default(),
            irq8,
        }
    }

    /// Store a CMOS byte for the platform (index 0-127).
    pub fn set_nvram(&mut self, index: u8, value: u8) {
        if let Some(b) = self.state.cmos.get_mut(usize::from(index & 0x7F)) {
            *b = value;
        }
    }

    fn nvram(&self, index: u8) -> u8 {
        self.state
            .cmos
            .get(usize::from(index & 0x7F))
            .copied()
            .unwrap_or(0)
    }

    /// Fill the standard memory-size bytes for `ram_bytes` of RAM, all of
    /// it below 4 GiB up to `BELOW_4G_LIMIT` and the rest above 4 GiB.
    pub fn set_memory_size(&mut self, ram_bytes: u64) {
        let below = ram_bytes.min(BELOW_4G_LIMIT);
        self.set_memory_layout(below, ram_bytes - below);
    }

    /// Fill the memory-size bytes for RAM `below_4g` bytes from 0 and
    /// `above_4g` bytes from 4 GiB, and the standard checksum.
    pub fn set_memory_layout(&mut self, below_4g: u64, above_4g: u64) {
        const MIB: u64 = 1 << 20;
        let put16 = |rtc: &mut Rtc, at: u8, v: u64| {
            let v = v.min(0xFFFF);
            rtc.set_nvram(at, v as u8);
            rtc.set_nvram(at + 1, (v >> 8) as u8);
        };
        put16(self, NV_BASE_MEM_KB, 640);
        let ext_kb = below_4g.saturating_sub(MIB) / 1024;
        put16(self, NV_EXT_MEM_KB, ext_kb);
        put16(self, NV_EXT_MEM_KB_POST, ext_kb);
        put16(
            self,
            NV_MEM_ABOVE_16M,
            below_4g.saturating_sub(16 * MIB) / 65_536,
        );
        let high = (above_4g / 65_536).min(0xFF_FFFF);
        for i in 0..3u8 {
            self.set_nvram(NV_MEM_ABOVE_4G + i, (high >> (8 * i)) as u8);
        }
        let sum: u16 = (0x10..=0x2D).map(|i| u16::from(self.nvram(i))).sum();
        self.set_nvram(NV_CHECKSUM, (sum >> 8) as u8);
        self.set_nvram(NV_CHECKSUM + 1, sum as u8);
    }

    fn divider_running(&self) -> bool {
        self.state.reg_a & A_DV_RESET != A_DV_RESET
    }

    /// The calendar does not advance: divider in reset or SET.
    fn stopped(&self) -> bool {
        !self.divider_running() || self.state.reg_b & B_SET != 0
    }

    /// Whole seconds since `base_ns` at `now` (floor).
    fn seconds_since_base(&self, now: u64) -> i64 {
        (signed(now) - i128::from(self.state.base_ns)).div_euclid(NS_PER_SEC) as i64
    }

    /// Unix seconds the clock shows at `now`.
    fn current_secs(&self, now: u64) -> i64 {
        if self.stopped() {
            self.state.base_secs
        } else {
            self.state
                .base_secs
                .saturating_add(self.seconds_since_base(now))
        }
    }

    /// Periodic interrupt period in 32.768 kHz cycles (0 = none).
    /// Datasheet table 5: RS 1 and 2 repeat RS 8 and 9.
    fn periodic_cycles(&self) -> i128 {
        match self.state.reg_a & A_RS_MASK {
            0 => 0,
            rs @ 1..=2 => 1 << (rs + 6),
            rs => 1 << (rs - 1),
        }
    }

    /// Periodic edges since the divider left reset, at `now`.
    fn periodic_index(&self, now: u64, cycles: i128) -> i128 {
        let ns = signed(now) - i128::from(self.state.div_base_ns);
        (ns * TIME_BASE_HZ)
            .div_euclid(NS_PER_SEC)
            .div_euclid(cycles)
    }

    fn binary(&self) -> bool {
        self.state.reg_b & B_DM_BINARY != 0
    }

    fn encode(&self, v: i64) -> u8 {
        if self.binary() {
            v.rem_euclid(256) as u8
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> i64 {
        if self.binary() {
            i64::from(v)
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, hour: i64) -> u8 {
        if self.state.reg_b & B_24H != 0 {
            self.encode(hour)
        } else {
            // 12-hour mode: 12, 1..11 with bit 7 for PM.
            let h12 = if hour % 12 == 0 { 12 } else { hour % 12 };
            self.encode(h12) | if hour >= 12 { 0x80 } else { 0 }
        }
    }

    fn decode_hour(&self, v: u8) -> i64 {
        if self.state.reg_b & B_24H != 0 {
            self.decode(v)
        } else {
            self.decode(v & 0x7F) % 12 + if v & 0x80 != 0 { 12 } else { 0 }
        }
    }

    /// A calendar register's value for time `secs`.
    fn time_register(&self, index: u8, secs: i64) -> u8 {
        let c = Civil::from_unix(secs);
        match index {
            REG_SECONDS => self.encode(c.second),
            REG_MINUTES => self.encode(c.minute),
            REG_HOURS => self.encode_hour(c.hour),
            REG_DAY_OF_WEEK => self.encode(c.weekday + 1),
            REG_DAY_OF_MONTH => self.encode(c.day),
            REG_MONTH => self.encode(c.month),
            REG_YEAR => self.encode(c.year.rem_euclid(100)),
            _ => self.encode(c.year.div_euclid(100)),
        }
    }

    /// Does time `secs` match the alarm registers (don't-care aware)?
    fn alarm_matches(&self, secs: i64) -> bool {
        [
            (REG_SECONDS_ALARM, REG_SECONDS),
            (REG_MINUTES_ALARM, REG_MINUTES),
            (REG_HOURS_ALARM, REG_HOURS),
        ]
        .iter()
        .all(|&(alarm, reg)| {
            let a = self.nvram(alarm);
            a & ALARM_DONT_CARE == ALARM_DONT_CARE || a == self.time_register(reg, secs)
        })
    }

    /// Set the flags for every periodic edge and update cycle in
    /// (last_sync, now], then drive IRQ8.
    fn advance(&mut self, now: u64) {
        let last = self.state.last_sync;
        if now > last {
            let cycles = self.periodic_cycles();
            if self.divider_running()
                && cycles != 0
                && self.periodic_index(now, cycles) > self.periodic_index(last, cycles)
            {
                self.state.flags |= C_PF;
            }
            if !self.stopped() {
                let from = self.seconds_since_base(last);
                let to = self.seconds_since_base(now);
                if to > from {
                    self.state.flags |= C_UF;
                    let first = (from + 1).max(to - MAX_ALARM_REPLAY);
                    if (first..=to).any(|k| self.alarm_matches(self.state.base_secs + k)) {
                        self.state.flags |= C_AF;
                    }
                }
            }
            self.state.last_sync = now;
        }
        self.update_irq();
    }

    fn update_irq(&mut self) {
        // Flags and enables share bit positions (PF/PIE, AF/AIE, UF/UIE).
        let level = self.state.flags & self.state.reg_b & (C_PF | C_AF | C_UF) != 0;
        if level != self.state.irq_level {
            self.state.irq_level = level;
            self.irq8.set(level);
        }
    }

    /// Change register A or B with the clock kept consistent: stopping
    /// holds the current second, restarting counts from `now` (half a
    /// second early when the divider leaves reset, datasheet "Divider
    /// Control").
    fn change_control(&mut self, now: u64, reg_a: u8, reg_b: u8) {
        let was_stopped = self.stopped();
        let was_running = self.divider_running();
        let secs = self.current_secs(now);
        let now_i = signed(now);
        self.state.reg_a = reg_a;
        self.state.reg_b = reg_b;
        let is_running = self.divider_running();
        if !was_running && is_running {
            self.state.div_base_ns = clamp_i64(now_i);
        }
        if !was_stopped && self.stopped() {
            self.state.base_secs = secs;
        } else if was_stopped && !self.stopped() {
            let early = if !was_running { HALF_SEC_NS } else { 0 };
            self.state.base_secs = secs;
            self.state.base_ns = clamp_i64(now_i - early);
        }
    }

    /// A guest write to a calendar register: the clock keeps its phase
    /// within the second.
    fn write_time(&mut self, index: u8, value: u8, now: u64) {
        let secs = self.current_secs(now);
        let mut c = Civil::from_unix(secs);
        match index {
            REG_SECONDS => c.second = self.decode(value),
            REG_MINUTES => c.minute = self.decode(value),
            REG_HOURS => c.hour = self.decode_hour(value),
            REG_DAY_OF_MONTH => c.day = self.decode(value),
            REG_MONTH => c.month = self.decode(value),
            REG_YEAR => c.year = c.year.div_euclid(100) * 100 + self.decode(value),
            _ => c.year = self.decode(value) * 100 + c.year.rem_euclid(100),
        }
        let new_secs = c.to_unix();
        self.state.base_secs = self.state.base_secs.saturating_add(new_secs - secs);
    }

    pub fn read(&mut self, port: u16, now: u64) -> u8 {
        self.advance(now);
        match port {
            // The index register is write only.
            PORT_INDEX => {
                self.stats.index_reads += 1;
                0xFF
            }
            PORT_DATA => self.read_register(self.state.index, now),
            _ => {
                self.stats.bad_port += 1;
                0xFF
            }
        }
    }

    fn read_register(&mut self, index: u8, now: u64) -> u8 {
        match index {
            // Calendar: the clock at `now` in the data mode of register B.
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_WEEK | REG_DAY_OF_MONTH
            | REG_MONTH | REG_YEAR | REG_CENTURY => {
                self.time_register(index, self.current_secs(now))
            }
            // A: UIP during the last 244 µs before each update.
            REG_A => {
                let phase = (signed(now) - i128::from(self.state.base_ns)).rem_euclid(NS_PER_SEC);
                let uip = !self.stopped() && phase >= NS_PER_SEC - i128::from(UIP_NS);
                self.state.reg_a | if uip { A_UIP } else { 0 }
            }
            REG_B => self.state.reg_b,
            // C: the flags, cleared by the read, which releases IRQ8.
            REG_C => {
                let irqf = if self.state.irq_level { C_IRQF } else { 0 };
                let v = self.state.flags | irqf;
                self.state.flags = 0;
                self.update_irq();
                v
            }
            // D: the battery is good.
            REG_D => D_VRT,
            // Alarms and the rest of CMOS: plain RAM.
            _ => self.nvram(index),
        }
    }

    pub fn write(&mut self, port: u16, value: u8, now: u64) {
        self.advance(now);
        match port {
            // Index register: the byte to access and the NMI mask.
            PORT_INDEX => {
                self.state.index = value & 0x7F;
                self.state.nmi_masked = value & INDEX_NMI_MASK != 0;
            }
            PORT_DATA => self.write_register(self.state.index, value, now),
            _ => self.stats.bad_port += 1,
        }
        self.update_irq();
    }

    fn write_register(&mut self, index: u8, value: u8, now: u64) {
        match index {
            // Calendar registers set the clock.
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_MONTH | REG_MONTH | REG_YEAR
            | REG_CENTURY => self.write_time(index, value, now),
            // The day of week follows from the date.
            REG_DAY_OF_WEEK => self.stats.read_only_writes += 1,
            // A: divider and rate; UIP is read only.
            REG_A => self.change_control(now, value & !A_UIP, self.state.reg_b),
            // B: SET also clears UIE (datasheet "Register B").
            REG_B => {
                let b = if value & B_SET != 0 {
                    value & !B_UIE
                } else {
                    value
                };
                self.change_control(now, self.state.reg_a, b);
            }
            // C and D are read only.
            REG_C | REG_D => self.stats.read_only_writes += 1,
            // Alarms and the rest of CMOS: plain RAM.
            _ => self.set_nvram(index, value),
        }
    }

    /// Bring the interrupt flags to `now` and drive IRQ8.
    pub fn poll(&mut self, now: u64) {
        self.advance(now);
    }

    /// When IRQ8 could next be raised, as absolute virtual ns; None while
    /// it is asserted (nothing changes until register C is read) or no
    /// interrupt is enabled.
    pub fn next_event(&self, now: u64) -> Option<u64> {
        if self.state.irq_level {
            return None;
        }
        let from = self.state.last_sync;
        let mut next: Option<i128> = None;
        let cycles = self.periodic_cycles();
        if self.state.reg_b & B_PIE != 0 && self.divider_running() && cycles != 0 {
            let k = self.periodic_index(from, cycles) + 1;
            let t = i128::from(self.state.div_base_ns)
                + (k * cycles * NS_PER_SEC + TIME_BASE_HZ - 1).div_euclid(TIME_BASE_HZ);
            next = Some(t);
        }
        if self.state.reg_b & (B_AIE | B_UIE) != 0 && !self.stopped() {
            let k = i128::from(self.seconds_since_base(from)) + 1;
            let t = i128::from(self.state.base_ns) + k * NS_PER_SEC;
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next.map(|t| u64::try_from(t.max(signed(now))).unwrap_or(u64::MAX))
    }
}

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::IrqSink;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[derive(Default)]
    struct Levels(Vec<bool>);
    impl IrqSink for Levels {
        fn set_irq(&mut self, irq: u8, level: bool) {
            assert_eq!(irq, 8);
            self.0.push(level);
        }
    }

    /// 2023-11-14 22:13:20 UTC, a Tuesday.
    const T0: i64 = 1_700_000_000;
    const SEC: u64 = 1_000_000_000;

    fn rtc(start: i64) -> (Rtc, Rc<RefCell<Levels>>) {
        let sink = Rc::new(RefCell::new(Levels::default()));
        (Rtc::new(IrqLine::new(sink.clone(), 8), start), sink)
    }

    fn reg(r: &mut Rtc, index: u8, now: u64) -> u8 {
        r.write(PORT_INDEX, index, now);
        r.read(PORT_DATA, now)
    }

    fn set(r: &mut Rtc, index: u8, value: u8, now: u64) {
        r.write(PORT_INDEX, index, now);
        r.write(PORT_DATA, value, now);
    }

    #[test]
    fn civil_conversion_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(
            days_from_civil(2100, 3, 1) - days_from_civil(2100, 2, 28),
            1
        );
        for d in [-800_000, -1, 0, 59, 10_957, 19_675, 2_932_896] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn bcd_time_decode_at_known_unix_time() {
        let (mut r, _) = rtc(T0);
        let now = SEC / 2;
        assert_eq!(reg(&mut r, REG_SECONDS, now), 0x20);
        assert_eq!(reg(&mut r, REG_MINUTES, now), 0x13);
        assert_eq!(reg(&mut r, REG_HOURS, now), 0x22);
        assert_eq!(reg(&mut r, REG_DAY_OF_WEEK, now), 0x03);
        assert_eq!(reg(&mut r, REG_DAY_OF_MONTH, now), 0x14);
        assert_eq!(reg(&mut r, REG_MONTH, now), 0x11);
        assert_eq!(reg(&mut r, REG_YEAR, now), 0x23);
        assert_eq!(reg(&mut r, REG_CENTURY, now), 0x20);
        assert_eq!(reg(&mut r, REG_D, now), D_VRT);
        // 100 s later: 22:15:00.
        assert_eq!(reg(&mut r, REG_SECONDS, 100 * SEC + 1), 0x00);
        assert_eq!(reg(&mut r, REG_MINUTES, 100 * SEC + 1), 0x15);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let (mut r, _) = rtc(T0);
        set(&mut r, REG_B, B_DM_BINARY | B_24H, 0);
        assert_eq!(reg(&mut r, REG_HOURS, 0), 22);
        assert_eq!(reg(&mut r, REG_MINUTES, 0), 13);
        assert_eq!(reg(&mut r, REG_YEAR, 0), 23);
        set(&mut r, REG_B, B_DM_BINARY, 0);
        assert_eq!(reg(&mut r, REG_HOURS, 0), 0x80 | 10, "10 PM");
        set(&mut r, REG_B, 0, 0);
        assert_eq!(reg(&mut r, REG_HOURS, 0), 0x90, "BCD 10 PM");
        // Midnight in 12-hour mode reads 12 AM.
        let (mut m, _) = rtc(0);
        set(&mut m, REG_B, 0, 0);
        assert_eq!(reg(&mut m, REG_HOURS, 0), 0x12);
    }

    #[test]
    fn uip_set_only_in_last_244us_of_each_second() {
        let (mut r, _) = rtc(T0);
        assert_eq!(reg(&mut r, REG_A, 5 * SEC - UIP_NS - 1) & A_UIP, 0);
        assert_ne!(reg(&mut r, REG_A, 5 * SEC - UIP_NS) & A_UIP, 0);
        assert_ne!(reg(&mut r, REG_A, 5 * SEC - 1) & A_UIP, 0);
        assert_eq!(reg(&mut r, REG_A, 5 * SEC) & A_UIP, 0);
        assert_eq!(reg(&mut r, REG_A, 0), 0x26);
    }

    #[test]
    fn periodic_flag_rate_1024hz() {
        let (mut r, sink) = rtc(T0);
        // RS = 6: 1024 Hz, period 976.5625 µs.
        set(&mut r, REG_B, B_24H | B_PIE, 0);
        let mut now = 0;
        let mut count = 0;
        while let Some(t) = r.next_event(now) {
            if t > SEC {
                break;
            }
            now = t;
            r.poll(now);
            assert!(r.state.irq_level, "IRQ8 asserted at {now}");
            let c = reg(&mut r, REG_C, now);
            assert_eq!(c & (C_IRQF | C_PF), C_IRQF | C_PF);
            assert!(!r.state.irq_level);
            count += 1;
        }
        assert_eq!(count, 1024);
        assert_eq!(now, SEC);
        assert_eq!(sink.borrow().0.len(), 2 * 1024);
        // RS = 15: 2 Hz; the flag is set without an enable, no IRQ.
        let (mut s, _) = rtc(T0);
        set(&mut s, REG_A, A_DV_32K | 0x0F, 0);
        assert_eq!(reg(&mut s, REG_C, SEC / 2 - 1), 0);
        assert_eq!(reg(&mut s, REG_C, SEC / 2), C_PF);
        assert_eq!(reg(&mut s, REG_C, SEC / 2 + 1), 0, "read cleared it");
    }

    #[test]
    fn update_ended_and_alarm_interrupts() {
        let (mut r, sink) = rtc(T0);
        // No periodic rate, so PF stays clear (flags ignore enables).
        set(&mut r, REG_A, A_DV_32K, 0);
        // Alarm at 22:13:25 (BCD), update and alarm interrupts on.
        set(&mut r, REG_SECONDS_ALARM, 0x25, 0);
        set(&mut r, REG_MINUTES_ALARM, 0x13, 0);
        set(&mut r, REG_HOURS_ALARM, ALARM_DONT_CARE, 0);
        set(&mut r, REG_B, B_24H | B_UIE, 0);
        assert_eq!(r.next_event(0), Some(SEC));
        r.poll(SEC);
        assert_eq!(reg(&mut r, REG_C, SEC), C_IRQF | C_UF);
        set(&mut r, REG_B, B_24H | B_AIE, SEC);
        r.poll(4 * SEC);
        assert!(!r.state.irq_level);
        assert_eq!(reg(&mut r, REG_C, 4 * SEC), C_UF, "no alarm yet");
        r.poll(5 * SEC);
        assert!(r.state.irq_level);
        assert_eq!(reg(&mut r, REG_C, 5 * SEC), C_IRQF | C_AF | C_UF);
        assert_eq!(sink.borrow().0.last(), Some(&false));
    }

    #[test]
    fn set_bit_holds_time_and_writes_take_effect() {
        let (mut r, _) = rtc(T0);
        set(&mut r, REG_B, B_24H | B_SET, SEC / 4);
        set(&mut r, REG_HOURS, 0x07, SEC / 4);
        set(&mut r, REG_YEAR, 0x99, SEC / 4);
        set(&mut r, REG_CENTURY, 0x19, SEC / 4);
        // Held while SET: 10 s later still 13:20.
        assert_eq!(reg(&mut r, REG_SECONDS, 10 * SEC), 0x20);
        assert_eq!(reg(&mut r, REG_A, 10 * SEC - 1) & A_UIP, 0);
        set(&mut r, REG_B, B_24H, 10 * SEC);
        assert_eq!(reg(&mut r, REG_SECONDS, 12 * SEC), 0x22);
        assert_eq!(reg(&mut r, REG_HOURS, 12 * SEC), 0x07);
        assert_eq!(reg(&mut r, REG_YEAR, 12 * SEC), 0x99);
        assert_eq!(reg(&mut r, REG_CENTURY, 12 * SEC), 0x19);
        // 1999-11-14 was a Sunday.
        assert_eq!(reg(&mut r, REG_DAY_OF_WEEK, 12 * SEC), 0x01);
    }

    #[test]
    fn divider_reset_stops_clock_and_restart_updates_half_second_later() {
        let (mut r, _) = rtc(T0);
        set(&mut r, REG_A, 0x70, SEC / 4);
        assert_eq!(reg(&mut r, REG_SECONDS, 3 * SEC), 0x20);
        set(&mut r, REG_A, 0x26, 3 * SEC);
        assert_eq!(reg(&mut r, REG_SECONDS, 3 * SEC + SEC / 2 - 1), 0x20);
        assert_eq!(reg(&mut r, REG_SECONDS, 3 * SEC + SEC / 2), 0x21);
    }

    #[test]
    fn index_port_nmi_bit_and_nvram() {
        let (mut r, _) = rtc(T0);
        r.write(PORT_INDEX, 0x80 | 0x40, 0);
        assert!(r.state.nmi_masked);
        r.write(PORT_DATA, 0xAB, 0);
        assert_eq!(reg(&mut r, 0x40, 0), 0xAB);
        assert_eq!(r.read(PORT_INDEX, 0), 0xFF);
        set(&mut r, REG_C, 0xFF, 0);
        assert_eq!(reg(&mut r, REG_C, 0), 0);
        assert_eq!(r.stats.read_only_writes, 1);
    }

    #[test]
    fn memory_size_bytes() {
        let (mut r, _) = rtc(T0);
        r.set_memory_size(128 << 20);
        // 640 KiB base; 127 MiB extended = 130048 KiB, capped at 0xFFFF.
        assert_eq!((r.nvram(0x15), r.nvram(0x16)), (0x80, 0x02));
        assert_eq!((r.nvram(0x17), r.nvram(0x18)), (0xFF, 0xFF));
        assert_eq!((r.nvram(0x30), r.nvram(0x31)), (0xFF, 0xFF));
        // (128 - 16) MiB / 64 KiB = 1792 = 0x0700.
        assert_eq!((r.nvram(0x34), r.nvram(0x35)), (0x00, 0x07));
        assert_eq!((r.nvram(0x5B), r.nvram(0x5C), r.nvram(0x5D)), (0, 0, 0));
        // Checksum over 0x10-0x2D: 0x80+0x02+0xFF+0xFF = 0x0280.
        assert_eq!((r.nvram(0x2E), r.nvram(0x2F)), (0x02, 0x80));
        r.set_memory_size(0x1_2000_0000 + (1 << 16));
        // 0x1_2000_0000 + 64 KiB - 0xE000_0000 = 1 GiB + 64 KiB above 4 GiB.
        assert_eq!(
            (r.nvram(0x5B), r.nvram(0x5C), r.nvram(0x5D)),
            (0x01, 0x40, 0x00)
        );
        // 8 MiB: (8 MiB - 1 MiB) / 1 KiB = 7168 = 0x1C00; nothing above 16M.
        r.set_memory_size(8 << 20);
        assert_eq!((r.nvram(0x17), r.nvram(0x18)), (0x00, 0x1C));
        assert_eq!((r.nvram(0x34), r.nvram(0x35)), (0x00, 0x00));
    }
}
