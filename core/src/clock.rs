//! Virtual time. In deterministic mode time is derived from the count of
//! retired instructions, so that runs repeat exactly; in real-time mode it
//! follows the host's monotonic clock. The TSC counts virtual nanoseconds
//! (a 1 GHz counter). Device timers live in the devices; the machine loop
//! asks them for their next deadline.

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
    /// Deterministic mode: virtual time skipped while the CPU was halted
    /// (the machine jumps to the next timer event instead of spinning).
    skipped_ns: u64,
}

impl Clock {
    pub fn new(mode: ClockMode) -> Self {
        Clock {
            mode,
            start: Instant::now(),
            retired: 0,
            skipped_ns: 0,
        }
    }

    pub fn mode(&self) -> ClockMode {
        self.mode
    }

    /// Virtual nanoseconds since the machine started.
    pub fn now_ns(&self) -> u64 {
        match self.mode {
            ClockMode::RealTime => self.start.elapsed().as_nanos() as u64,
            ClockMode::Deterministic { ns_per_insn } => self
                .retired
                .saturating_mul(ns_per_insn)
                .saturating_add(self.skipped_ns),
        }
    }

    /// Deterministic mode: advance virtual time to `ns` (if it is ahead)
    /// without retiring instructions, as a halted CPU does while it waits.
    /// Real time needs no help: it passes by itself.
    pub fn skip_to(&mut self, ns: u64) {
        let now = self.now_ns();
        if matches!(self.mode, ClockMode::Deterministic { .. }) && ns > now {
            self.skipped_ns += ns - now;
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new(ClockMode::Deterministic { ns_per_insn: 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_time_counts_instructions_and_skips() {
        let mut c = Clock::new(ClockMode::Deterministic { ns_per_insn: 10 });
        c.retired = 5;
        assert_eq!(c.now_ns(), 50);
        c.skip_to(40); // behind: no effect
        assert_eq!(c.now_ns(), 50);
        c.skip_to(1_000);
        assert_eq!(c.now_ns(), 1_000);
        c.retired += 2;
        assert_eq!(c.now_ns(), 1_020);
    }
}
