//! The Intel 8254 programmable interval timer at ports 0x40-0x43, and the
//! parts of system control port B (0x61) that belong to it: the channel 2
//! gate (bit 0), channel 2's output (bit 5) and the refresh toggle (bit 4).
//!
//! It owns three counters driven by the 1.193182 MHz clock, all six modes,
//! the counter latch and read-back commands, and IRQ0 from channel 0's
//! output. It does not own the PC speaker sound (bit 1 of port 0x61 is kept
//! but makes no sound) nor NMI status (bits 6-7 of 0x61 read 0).
//!
//! Counts are not stepped: each counter remembers the clock tick at which
//! it was loaded (or triggered) and its value and output at any `now` are
//! computed from the ticks elapsed since then. Behaviour follows the Intel
//! 82C54 datasheet (order no. 231244), "Modes" and "Read-Back Command".
//! Known simplifications: a count written in mode 2 or 3 while the counter
//! runs takes effect at once instead of at the end of the current period;
//! one written in mode 1 or 5 waits for the next gate trigger; the status
//! byte reports modes 6/7 as 2/3.

use serde::{Deserialize, Serialize};

use crate::irq::IrqLine;

/// Input clock of every counter, in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// Channel 0 data port (IRQ0).
pub const PORT_CH0: u16 = 0x40;
/// Channel 1 data port (DRAM refresh on the original PC).
pub const PORT_CH1: u16 = 0x41;
/// Channel 2 data port (speaker, TSC calibration).
pub const PORT_CH2: u16 = 0x42;
/// Control word register (write only).
pub const PORT_CONTROL: u16 = 0x43;

/// Port 0x61: timer 2 gate.
pub const P61_GATE2: u8 = 1 << 0;
/// Port 0x61: speaker data enable.
pub const P61_SPEAKER: u8 = 1 << 1;
/// Port 0x61: parity check disable (kept, no effect).
pub const P61_PARITY_DIS: u8 = 1 << 2;
/// Port 0x61: channel check disable (kept, no effect).
pub const P61_IOCHK_DIS: u8 = 1 << 3;
/// Port 0x61: refresh request toggle (read only).
pub const P61_REFRESH: u8 = 1 << 4;
/// Port 0x61: timer 2 output (read only).
pub const P61_OUT2: u8 = 1 << 5;
/// Port 0x61 bits a write keeps.
const P61_WRITABLE: u8 = P61_GATE2 | P61_SPEAKER | P61_PARITY_DIS | P61_IOCHK_DIS;
/// Half-period of the refresh toggle in ns (the 15.085 µs refresh cycle).
const REFRESH_NS: u64 = 15_085;

/// Control word: select counter (bits 7:6); 3 = read-back.
const CW_SC_SHIFT: u8 = 6;
/// Control word: read/write access (bits 5:4); 0 = counter latch.
const CW_RW_SHIFT: u8 = 4;
/// Control word: mode (bits 3:1).
const CW_MODE_SHIFT: u8 = 1;
/// Control word: BCD counting.
const CW_BCD: u8 = 1 << 0;
/// Read-back: do NOT latch the count (active low).
const RB_NO_COUNT: u8 = 1 << 5;
/// Read-back: do NOT latch the status (active low).
const RB_NO_STATUS: u8 = 1 << 4;
/// Status byte: the counter's OUT pin.
const STATUS_OUT: u8 = 1 << 7;
/// Status byte: null count (a written count is not yet in the counter).
const STATUS_NULL: u8 = 1 << 6;

/// Access mode 1: low byte only.
const RW_LSB: u8 = 1;
/// Access mode 2: high byte only.
const RW_MSB: u8 = 2;
/// Access mode 3: low byte then high byte.
const RW_WORD: u8 = 3;

/// Clock ticks elapsed at virtual time `ns`.
fn ticks_at(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(PIT_HZ) / 1_000_000_000) as u64
}

/// The first virtual time at which `ticks_at` reaches `tick`.
fn ns_at(tick: u64) -> u64 {
    let ns = (u128::from(tick) * 1_000_000_000).div_ceil(u128::from(PIT_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

fn to_bcd(v: u32) -> u16 {
    let v = v % 10_000;
    (((v / 1000) << 12) | ((v / 100 % 10) << 8) | ((v / 10 % 10) << 4) | (v % 10)) as u16
}

fn from_bcd(v: u16) -> u32 {
    let d = |s: u16| u32::from((v >> s) & 0xF);
    d(12) * 1000 + d(8) * 100 + d(4) * 10 + d(0)
}

/// One 8254 counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitChannel {
    /// Mode 0-5.
    pub mode: u8,
    /// Access mode: 1 LSB, 2 MSB, 3 LSB then MSB.
    pub access: u8,
    /// Count in BCD (4 decades) instead of binary.
    pub bcd: bool,
    /// The count register as last written.
    pub reload: u16,
    /// GATE input level.
    pub gate: bool,
    /// A count has been written since the mode was set.
    pub armed: bool,
    /// Modes 1 and 5: a gate trigger has started counting.
    pub triggered: bool,
    /// Clock tick at which counting (re)started.
    pub load_tick: u64,
    /// Counting stopped by the gate: elapsed ticks held.
    pub frozen: Option<u64>,
    /// Access mode 3: the next data write is the high byte.
    pub write_high_next: bool,
    /// The low byte written, waiting for the high byte.
    pub write_low: u8,
    /// Access mode 3: the next unlatched read is the high byte.
    pub read_high_next: bool,
    /// Output latch from a counter latch or read-back command.
    pub latched: Option<u16>,
    /// Access mode 3: the next latched read is the high byte.
    pub latch_high_next: bool,
    /// Status byte latched by read-back.
    pub status: Option<u8>,
    /// Null count flag (status bit 6).
    pub null_count: bool,
    /// IRQ edges given for this load (periods in modes 2/3, 0/1 in 0/4).
    pub delivered: u64,
}

impl PitChannel {
    fn new(gate: bool) -> Self {
        PitChannel {
            mode: 0,
            access: RW_WORD,
            bcd: false,
            reload: 0,
            gate,
            armed: false,
            triggered: false,
            load_tick: 0,
            frozen: None,
            write_high_next: false,
            write_low: 0,
            read_high_next: false,
            latched: None,
            latch_high_next: false,
            status: None,
            null_count: true,
            delivered: 0,
        }
    }

    /// The counter's modulus: 65536 binary or 10000 BCD.
    fn modulus(&self) -> u64 {
        if self.bcd {
            10_000
        } else {
            65_536
        }
    }

    /// The initial count N; a written 0 is the modulus.
    fn period(&self) -> u64 {
        let n = if self.bcd {
            u64::from(from_bcd(self.reload))
        } else {
            u64::from(self.reload)
        };
        if n == 0 {
            self.modulus()
        } else {
            n
        }
    }

    /// Clock ticks counted at `tick`, or None if the counter is idle.
    fn elapsed(&self, tick: u64) -> Option<u64> {
        if !self.armed || (matches!(self.mode, 1 | 5) && !self.triggered) {
            return None;
        }
        Some(match self.frozen {
            Some(d) => d,
            None => tick.saturating_sub(self.load_tick),
        })
    }

    /// The counting element's value at `tick`, in binary.
    fn count(&self, tick: u64) -> u64 {
        let n = self.period();
        let m = self.modulus();
        let Some(d) = self.elapsed(tick) else {
            return u64::from(self.reload) % m;
        };
        match self.mode {
            // Modes 2/3 reload at each period; 3 counts down by two per
            // half period (an odd count loads N-1).
            2 => (n - d % n) % m,
            3 => {
                let phase = d % n;
                let high = n.div_ceil(2);
                let k = if phase < high { phase } else { phase - high };
                ((n & !1) - 2 * k) % m
            }
            // Modes 0, 1, 4, 5: count down once and wrap after zero.
            _ => (n + m - d % m) % m,
        }
    }

    /// The OUT pin at `tick`.
    fn out(&self, tick: u64) -> bool {
        let n = self.period();
        let Some(d) = self.elapsed(tick) else {
            // After a mode set OUT is low in mode 0 and high otherwise.
            return self.mode != 0;
        };
        match self.mode {
            // Interrupt on terminal count / hardware one-shot: low until
            // the count reaches zero.
            0 | 1 => d >= n,
            // Rate generator: low for one clock when the count is 1;
            // held high while the gate is low.
            2 => self.frozen.is_some() || d % n != n - 1,
            // Square wave: high for ceil(N/2) clocks, low for floor(N/2).
            3 => self.frozen.is_some() || d % n < n.div_ceil(2),
            // Strobes: low for one clock after the count reaches zero.
            _ => d != n,
        }
    }

    /// The value a read of the data port sees now (binary or BCD).
    fn shown(&self, tick: u64) -> u16 {
        let c = self.count(tick);
        if self.bcd {
            to_bcd(c as u32)
        } else {
            c as u16
        }
    }

    fn status_byte(&self, tick: u64) -> u8 {
        let mut s = (self.access << CW_RW_SHIFT) | (self.mode << CW_MODE_SHIFT);
        if self.bcd {
            s |= CW_BCD;
        }
        if self.out(tick) {
            s |= STATUS_OUT;
        }
        if self.null_count {
            s |= STATUS_NULL;
        }
        s
    }

    /// Counter latch command: the first latch holds until it is read.
    fn latch(&mut self, tick: u64) {
        if self.latched.is_none() {
            self.latched = Some(self.shown(tick));
            self.latch_high_next = false;
        }
    }

    /// Set a new mode (control word): the counter waits for a count.
    fn set_mode(&mut self, access: u8, mode: u8, bcd: bool) {
        self.access = access;
        self.mode = mode;
        self.bcd = bcd;
        self.armed = false;
        self.triggered = false;
        self.frozen = None;
        self.write_high_next = false;
        self.read_high_next = false;
        self.latched = None;
        self.status = None;
        self.null_count = true;
        self.delivered = 0;
    }

    /// A complete count was written: start (or wait for a trigger).
    fn load(&mut self, value: u16, tick: u64) {
        self.reload = value;
        self.armed = true;
        self.null_count = false;
        self.delivered = 0;
        self.triggered = false;
        self.load_tick = tick;
        self.frozen = if !self.gate && !matches!(self.mode, 1 | 5) {
            Some(0)
        } else {
            None
        };
    }

    fn write(&mut self, value: u8, tick: u64) {
        match self.access {
            RW_LSB => self.load(u16::from(value), tick),
            RW_MSB => self.load(u16::from(value) << 8, tick),
            _ => {
                if self.write_high_next {
                    self.write_high_next = false;
                    self.load(u16::from(value) << 8 | u16::from(self.write_low), tick);
                } else {
                    self.write_high_next = true;
                    self.write_low = value;
                    if self.mode == 0 {
                        // Mode 0: writing the first byte stops counting and
                        // sets OUT low at once.
                        self.armed = false;
                    }
                }
            }
        }
    }

    fn read(&mut self, tick: u64) -> u8 {
        if let Some(s) = self.status.take() {
            return s;
        }
        if let Some(l) = self.latched {
            let [lo, hi] = l.to_le_bytes();
            return match self.access {
                RW_LSB => {
                    self.latched = None;
                    lo
                }
                RW_MSB => {
                    self.latched = None;
                    hi
                }
                _ if self.latch_high_next => {
                    self.latched = None;
                    self.latch_high_next = false;
                    hi
                }
                _ => {
                    self.latch_high_next = true;
                    lo
                }
            };
        }
        let [lo, hi] = self.shown(tick).to_le_bytes();
        match self.access {
            RW_LSB => lo,
            RW_MSB => hi,
            _ => {
                self.read_high_next = !self.read_high_next;
                if self.read_high_next {
                    lo
                } else {
                    hi
                }
            }
        }
    }

    /// Drive the GATE input.
    fn set_gate(&mut self, level: bool, tick: u64) {
        if level == self.gate {
            return;
        }
        let live = self.elapsed(tick);
        self.gate = level;
        if !self.armed {
            return;
        }
        match self.mode {
            // Modes 0 and 4: gate low suspends counting.
            0 | 4 => {
                if level {
                    if let Some(d) = self.frozen.take() {
                        self.load_tick = tick.saturating_sub(d);
                    }
                } else {
                    self.frozen = live;
                }
            }
            // Modes 1 and 5: a rising gate edge (re)starts the count.
            1 | 5 => {
                if level {
                    self.triggered = true;
                    self.load_tick = tick;
                    self.delivered = 0;
                }
            }
            // Modes 2 and 3: gate low stops counting with OUT high; the
            // rising edge reloads the count.
            _ => {
                if level {
                    self.frozen = None;
                    self.load_tick = tick;
                    self.delivered = 0;
                } else {
                    self.frozen = Some(0);
                }
            }
        }
    }
}

/// The registers of the PIT and the timer bits of port 0x61.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitState {
    pub channels: [PitChannel; 3],
    /// Port 0x61 writable bits as last written.
    pub port61: u8,
    /// Level last driven on IRQ0.
    pub irq0_level: bool,
}

/// Counters for accesses the model ignores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitStats {
    /// Reads of the write-only control port.
    pub control_reads: u64,
    /// Accesses to ports this device does not decode.
    pub bad_port: u64,
}

/// The i8254 PIT with IRQ0 and port 0x61's timer bits.
pub struct Pit {
    pub state: PitState,
    pub stats: PitStats,
    irq0: IrqLine,
}

impl Pit {
    pub fn new(irq0: IrqLine) -> Self {
        Pit {
            state: PitState {
                // Channels 0 and 1 have GATE tied high; channel 2's comes
                // from port 0x61 bit 0.
                channels: [
                    PitChannel::new(true),
                    PitChannel::new(true),
                    PitChannel::new(false),
                ],
                port61: 0,
                irq0_level: false,
            },
            stats: PitStats::default(),
            irq0,
        }
    }

    pub fn read(&mut self, port: u16, now: u64) -> u8 {
        let tick = ticks_at(now);
        match port {
            // Data ports: status, latched count or live count.
            PORT_CH0..=PORT_CH2 => self.state.channels[usize::from(port - PORT_CH0)].read(tick),
            // The control word register cannot be read.
            PORT_CONTROL => {
                self.stats.control_reads += 1;
                0xFF
            }
            _ => {
                self.stats.bad_port += 1;
                0xFF
            }
        }
    }

    pub fn write(&mut self, port: u16, value: u8, now: u64) {
        let tick = ticks_at(now);
        match port {
            // Data ports: the count, in the programmed access mode.
            PORT_CH0..=PORT_CH2 => {
                self.state.channels[usize::from(port - PORT_CH0)].write(value, tick)
            }
            PORT_CONTROL => self.control(value, tick),
            _ => self.stats.bad_port += 1,
        }
        self.drive_irq0(tick);
    }

    /// A control word: read-back, counter latch or mode set.
    fn control(&mut self, value: u8, tick: u64) {
        let sc = value >> CW_SC_SHIFT;
        if sc == 3 {
            // Read-back (82C54 "Read-Back Command"): latch count and/or
            // status of each selected counter.
            for (i, ch) in self.state.channels.iter_mut().enumerate() {
                if value & (2 << i) == 0 {
                    continue;
                }
                if value & RB_NO_STATUS == 0 && ch.status.is_none() {
                    ch.status = Some(ch.status_byte(tick));
                }
                if value & RB_NO_COUNT == 0 {
                    ch.latch(tick);
                }
            }
            return;
        }
        let ch = &mut self.state.channels[usize::from(sc)];
        let access = (value >> CW_RW_SHIFT) & 3;
        if access == 0 {
            // Counter latch command.
            ch.latch(tick);
            return;
        }
        // Modes 6 and 7 are aliases of 2 and 3.
        let mut mode = (value >> CW_MODE_SHIFT) & 7;
        if mode >= 6 {
            mode -= 4;
        }
        ch.set_mode(access, mode, value & CW_BCD != 0);
    }

    pub fn read_port61(&mut self, now: u64) -> u8 {
        let tick = ticks_at(now);
        let mut v = self.state.port61 & P61_WRITABLE;
        if (now / REFRESH_NS) & 1 != 0 {
            v |= P61_REFRESH;
        }
        if self.state.channels[2].out(tick) {
            v |= P61_OUT2;
        }
        v
    }

    pub fn write_port61(&mut self, value: u8, now: u64) {
        let tick = ticks_at(now);
        self.state.port61 = value & P61_WRITABLE;
        self.state.channels[2].set_gate(value & P61_GATE2 != 0, tick);
    }

    /// Bring channel 0 to `now` and drive IRQ0.
    pub fn poll(&mut self, now: u64) {
        self.drive_irq0(ticks_at(now));
    }

    fn set_irq0(&mut self, level: bool) {
        if self.state.irq0_level != level {
            self.state.irq0_level = level;
            self.irq0.set(level);
        }
    }

    /// An edge on IRQ0 (low then high) whatever the line was.
    fn edge_irq0(&mut self) {
        self.set_irq0(false);
        self.set_irq0(true);
    }

    fn drive_irq0(&mut self, tick: u64) {
        let ch = &self.state.channels[0];
        let out = ch.out(tick);
        let n = ch.period();
        let live = ch.elapsed(tick).filter(|_| ch.frozen.is_none());
        match (ch.mode, live) {
            // Periodic modes: one rising edge if one or more periods
            // ended since the last poll; missed ticks are not replayed.
            (2 | 3, Some(d)) if d / n > ch.delivered => {
                self.state.channels[0].delivered = d / n;
                self.edge_irq0();
            }
            // Software strobe: one edge when OUT returns high after TC.
            (4, Some(d)) if d > n && ch.delivered == 0 => {
                self.state.channels[0].delivered = 1;
                self.edge_irq0();
            }
            _ => {}
        }
        self.set_irq0(out);
    }

    /// When channel 0's output next changes in a way that matters for
    /// IRQ0 (a rising edge), as absolute virtual ns; None if never.
    pub fn next_event(&self, now: u64) -> Option<u64> {
        let tick = ticks_at(now);
        let ch = &self.state.channels[0];
        let n = ch.period();
        ch.elapsed(tick)?;
        if ch.frozen.is_some() {
            return None;
        }
        let due = match ch.mode {
            0 | 1 => {
                if ch.out(tick) && self.state.irq0_level {
                    return None;
                }
                ch.load_tick.saturating_add(n)
            }
            2 | 3 => ch
                .load_tick
                .saturating_add(ch.delivered.saturating_add(1).saturating_mul(n)),
            4 => {
                if ch.delivered != 0 {
                    return None;
                }
                ch.load_tick.saturating_add(n + 1)
            }
            // Mode 5 needs a gate edge, which channel 0 never sees.
            _ => return None,
        };
        Some(ns_at(due).max(now))
    }
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
        fn set_irq(&mut self, _irq: u8, level: bool) {
            self.0.push(level);
        }
    }

    fn pit() -> (Pit, Rc<RefCell<Levels>>) {
        let sink = Rc::new(RefCell::new(Levels::default()));
        (Pit::new(IrqLine::new(sink.clone(), 0)), sink)
    }

    /// ns for `t` whole PIT clocks (rounded up to land inside the tick).
    fn at(t: u64) -> u64 {
        ns_at(t)
    }

    fn rising_edges(levels: &[bool]) -> usize {
        levels.windows(2).filter(|w| !w[0] && w[1]).count()
            + usize::from(levels.first() == Some(&true))
    }

    #[test]
    fn tick_conversion_round_trips() {
        assert_eq!(ticks_at(1_000_000_000), PIT_HZ);
        for t in [0, 1, 2, 1193, 65_536, 1_193_183, 10_000_000_000] {
            assert_eq!(ticks_at(ns_at(t)), t);
            assert_eq!(ticks_at(ns_at(t) - u64::from(t > 0)), t.saturating_sub(1));
        }
    }

    #[test]
    fn mode0_counts_down_and_out_rises_at_terminal_count() {
        let (mut p, sink) = pit();
        let t0 = at(1000);
        p.write(0x43, 0x30, t0); // ch0, LSB/MSB, mode 0
        p.write(0x40, 100, t0);
        p.write(0x40, 0, t0);
        assert!(!p.state.irq0_level);
        // 40 clocks later the counter shows 60.
        p.write(0x43, 0x00, at(1040));
        assert_eq!(p.read(0x40, at(1050)), 60);
        assert_eq!(p.read(0x40, at(1050)), 0);
        assert_eq!(p.next_event(at(1040)), Some(at(1100)));
        p.poll(at(1099));
        assert!(!p.state.irq0_level);
        p.poll(at(1100));
        assert!(p.state.irq0_level);
        assert_eq!(p.next_event(at(1200)), None);
        // Keeps counting: wraps to 0xFFFF after 0.
        p.write(0x43, 0x00, at(1101));
        assert_eq!(p.read(0x40, 0), 0xFF);
        assert_eq!(p.read(0x40, 0), 0xFF);
        assert_eq!(rising_edges(&sink.borrow().0), 1);
    }

    #[test]
    fn mode2_periodic_irq_one_edge_per_late_poll() {
        let (mut p, sink) = pit();
        // Linux's periodic tick at HZ=250: LATCH = 4773 (0x12A5).
        p.write(0x43, 0x34, 0);
        p.write(0x40, 0xA5, 0);
        p.write(0x40, 0x12, 0);
        assert_eq!(p.next_event(0), Some(at(4773)));
        // Mode set and count: OUT goes high (the one edge so far).
        p.poll(at(4772));
        assert_eq!(rising_edges(&sink.borrow().0), 1);
        let before = 1;
        p.poll(at(4773));
        assert_eq!(rising_edges(&sink.borrow().0), before + 1);
        // Counter value mid-period: N - (d mod N).
        p.write(0x43, 0x00, at(4773 + 10));
        assert_eq!(
            u16::from(p.read(0x40, 0)) | u16::from(p.read(0x40, 0)) << 8,
            4763
        );
        // Polled five periods late: one edge, then the next period.
        p.poll(at(6 * 4773 + 5));
        assert_eq!(rising_edges(&sink.borrow().0), before + 2);
        assert_eq!(p.next_event(at(6 * 4773 + 5)), Some(at(7 * 4773)));
        // OUT is low exactly when the count is 1.
        assert!(!p.state.channels[0].out(4773 * 8 - 1));
        assert!(p.state.channels[0].out(4773 * 8 - 2));
    }

    #[test]
    fn mode3_square_wave_on_channel2_out_bit() {
        let (mut p, _) = pit();
        p.write_port61(P61_GATE2 | P61_SPEAKER, 0);
        p.write(0x43, 0xB6, 0); // ch2, LSB/MSB, mode 3
        p.write(0x42, 10, 0);
        p.write(0x42, 0, 0);
        // High for 5 clocks, low for 5.
        for t in 0..5 {
            assert_ne!(p.read_port61(at(t)) & P61_OUT2, 0, "tick {t}");
        }
        for t in 5..10 {
            assert_eq!(p.read_port61(at(t)) & P61_OUT2, 0, "tick {t}");
        }
        assert_ne!(p.read_port61(at(10)) & P61_OUT2, 0);
        // Counts by two: 10, 8, 6 ... in each half.
        p.write(0x43, 0x80, at(2));
        assert_eq!(p.read(0x42, 0), 6);
        // Gate low forces OUT high.
        p.write_port61(0, at(7));
        assert_ne!(p.read_port61(at(8)) & P61_OUT2, 0);
    }

    #[test]
    fn mode4_strobe_gives_one_irq0_edge() {
        let (mut p, sink) = pit();
        p.write(0x43, 0x38, 0); // Linux oneshot: mode 4
        p.write(0x40, 50, 0);
        p.write(0x40, 0, 0);
        assert!(p.state.irq0_level, "mode 4 OUT starts high");
        assert_eq!(p.next_event(0), Some(at(51)));
        p.poll(at(50));
        let before = rising_edges(&sink.borrow().0);
        p.poll(at(51));
        assert_eq!(rising_edges(&sink.borrow().0), before + 1);
        p.poll(at(500));
        assert_eq!(rising_edges(&sink.borrow().0), before + 1);
        assert_eq!(p.next_event(at(500)), None);
    }

    #[test]
    fn mode0_set_without_count_keeps_irq0_low() {
        // Linux's clockevent shutdown writes 0x30 and no count.
        let (mut p, _) = pit();
        p.write(0x43, 0x34, 0);
        p.write(0x40, 0xA5, 0);
        p.write(0x40, 0x12, 0);
        p.write(0x43, 0x30, at(100));
        assert!(!p.state.irq0_level);
        assert_eq!(p.next_event(at(100)), None);
    }

    #[test]
    fn latch_holds_value_until_both_bytes_read() {
        let (mut p, _) = pit();
        p.write(0x43, 0x30, 0);
        p.write(0x40, 0x34, 0);
        p.write(0x40, 0x12, 0); // 0x1234
        p.write(0x43, 0x00, at(0x34));
        // A second latch before reading is ignored.
        p.write(0x43, 0x00, at(0x100));
        assert_eq!(p.read(0x40, at(0x200)), 0x00);
        assert_eq!(p.read(0x40, at(0x300)), 0x12);
        // Unlatched reads now follow the live count.
        assert_eq!(p.read(0x40, at(0x1234 - 0x0102)), 0x02);
        assert_eq!(p.read(0x40, at(0x1234 - 0x0102)), 0x01);
    }

    #[test]
    fn lsb_only_and_msb_only_access() {
        let (mut p, _) = pit();
        p.write(0x43, 0x10, 0); // ch0, LSB only, mode 0
        p.write(0x40, 0x80, 0);
        assert_eq!(p.read(0x40, at(0x10)), 0x70);
        p.write(0x43, 0x20, 0); // ch0, MSB only, mode 0
        p.write(0x40, 0x02, 0); // 0x0200
        assert_eq!(p.read(0x40, at(0x100)), 0x01);
    }

    #[test]
    fn read_back_status_then_count() {
        let (mut p, _) = pit();
        p.write(0x43, 0xB0, 0); // ch2, LSB/MSB, mode 0
                                // Status before the count is written: null count, OUT low.
        p.write(0x43, 0xE8, 0); // read-back status only, counter 2
        assert_eq!(p.read(0x42, 0), STATUS_NULL | 0x30);
        p.write_port61(P61_GATE2, 0);
        p.write(0x42, 0x00, 0);
        p.write(0x42, 0x01, 0); // 256
                                // Read-back both for counter 2 at tick 300 (past TC).
        p.write(0x43, 0xC8, at(300));
        assert_eq!(p.read(0x42, at(400)), STATUS_OUT | 0x30);
        let lo = p.read(0x42, at(500));
        let hi = p.read(0x42, at(500));
        assert_eq!(u16::from_le_bytes([lo, hi]), (256u32 + 65_536 - 300) as u16);
    }

    #[test]
    fn bcd_counting() {
        let (mut p, _) = pit();
        p.write(0x43, 0x31, 0); // ch0, LSB/MSB, mode 0, BCD
        p.write(0x40, 0x00, 0);
        p.write(0x40, 0x10, 0); // 1000 decimal
        p.write(0x43, 0x00, at(1));
        assert_eq!(p.read(0x40, 0), 0x99);
        assert_eq!(p.read(0x40, 0), 0x09);
        assert_eq!(p.next_event(0), Some(at(1000)));
    }

    #[test]
    fn channel2_gate_holds_mode0_count() {
        let (mut p, _) = pit();
        p.write(0x43, 0xB0, 0);
        p.write(0x42, 100, 0);
        p.write(0x42, 0, 0);
        // Gate low since reset: count does not move.
        p.write(0x43, 0x80, at(50));
        assert_eq!(p.read(0x42, 0), 100);
        p.read(0x42, 0);
        p.write_port61(P61_GATE2, at(50));
        p.write_port61(0, at(80));
        p.write_port61(P61_GATE2, at(200));
        p.write(0x43, 0x80, at(210));
        assert_eq!(p.read(0x42, 0), 100 - 30 - 10);
    }

    #[test]
    fn refresh_bit_toggles_every_15us() {
        let (mut p, _) = pit();
        let a = p.read_port61(1_000) & P61_REFRESH;
        let b = p.read_port61(1_000 + REFRESH_NS) & P61_REFRESH;
        assert_ne!(a, b);
        assert_eq!(p.read_port61(0) & P61_REFRESH, 0);
    }

    /// arch/x86/kernel/tsc.c pit_hpet_ptimer_calibrate_cpu's PIT loop: gate
    /// high via 0x61, channel 2 mode 0 with a 10 ms latch, spin on 0x61
    /// bit 5, then the quick_pit_calibrate MSB walk.
    #[test]
    fn linux_tsc_calibration_sequence() {
        let (mut p, _) = pit();
        let latch: u16 = (PIT_HZ / 100) as u16; // 11931
        let mut now = 5_000_000u64;
        let v = p.read_port61(now);
        p.write_port61((v & !P61_SPEAKER) | P61_GATE2, now);
        p.write(0x43, 0xB0, now);
        p.write(0x42, (latch & 0xFF) as u8, now);
        p.write(0x42, (latch >> 8) as u8, now);
        let start = now;
        let mut spins = 0u64;
        while p.read_port61(now) & P61_OUT2 == 0 {
            now += 500; // one loop iteration of virtual time
            spins += 1;
            assert!(spins < 1_000_000, "OUT2 never went high");
        }
        let ms = (now - start) as f64 / 1e6;
        assert!((ms - 10.0).abs() < 0.01, "took {ms} ms");

        // quick_pit_calibrate: start at 0xFFFF, each MSB value lasts 256
        // clocks (~214.6 µs); pit_expect_msb sees it and then the next.
        p.write_port61(P61_GATE2, now);
        p.write(0x43, 0xB0, now);
        p.write(0x42, 0xFF, now);
        p.write(0x42, 0xFF, now);
        let read_msb = |p: &mut Pit, now: u64| {
            p.read(0x42, now);
            p.read(0x42, now)
        };
        for expect in [0xFFu8, 0xFE, 0xFD, 0xFC] {
            let mut seen = 0;
            while read_msb(&mut p, now) == expect {
                seen += 1;
                now += 1_000;
            }
            assert!(seen > 5, "msb {expect:#x} seen {seen} times");
            assert_eq!(read_msb(&mut p, now), expect - 1);
        }
    }
}
