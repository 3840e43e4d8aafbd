//! Virtual time. In deterministic mode time is derived from the count of
//! retired instructions, so that runs repeat exactly; in real-time mode it
//! follows the host's monotonic clock. The device event queue comes with
//! the platform devices.

use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockMode {
    RealTime,
    /// Nanoseconds of virtual time per retired instruction.
    Deterministic {
        ns_per_insn: u64,
    },
}

pub struct Clock {
    mode: ClockMode,
    start: Instant,
    /// Instructions retired by all engines.
    pub retired: u64,
}

impl Clock {
    pub fn new(mode: ClockMode) -> Self {
        Clock {
            mode,
            start: Instant::now(),
            retired: 0,
        }
    }

    pub fn mode(&self) -> ClockMode {
        self.mode
    }

    /// Virtual nanoseconds since the machine started.
    pub fn now_ns(&self) -> u64 {
        match self.mode {
            ClockMode::RealTime => self.start.elapsed().as_nanos() as u64,
            ClockMode::Deterministic { ns_per_insn } => self.retired.saturating_mul(ns_per_insn),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new(ClockMode::Deterministic { ns_per_insn: 1 })
    }
}
