//! Debug and test ports: 0x80 (POST code latch), 0xE9 (Bochs/QEMU debug
//! console) and 0xF4 (test exit port, as QEMU's isa-debug-exit).
//!
//! Owns: the latched POST code and the debug console sink. Does not own:
//! what an exit status means to the process (the machine takes the
//! `PlatformRequest::Exit`).

use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::{PlatformRequest, Requests};

/// POST diagnostic code port (latched, read back).
pub const POST_PORT: u16 = 0x80;
/// Debug console: bytes written appear on the host; reads return 0xE9.
pub const E9_PORT: u16 = 0xe9;
/// Exit port: a byte V written ends the run with status (V << 1) | 1.
pub const EXIT_PORT: u16 = 0xf4;

/// What port 0xE9 reads as: its own number, so a guest can detect it
/// (Bochs "port E9 hack").
pub const E9_SIGNATURE: u8 = 0xe9;

/// State a snapshot needs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DebugPortsState {
    pub post_code: u8,
}

/// The debug and test ports.
pub struct DebugPorts {
    state: DebugPortsState,
    e9_out: Option<Box<dyn Write>>,
    requests: Requests,
    /// Accesses ignored (other ports, failed console writes).
    ignored: u64,
}

impl DebugPorts {
    /// `e9_out`: where the debug console goes (None discards it).
    pub fn new(e9_out: Option<Box<dyn Write>>, requests: Requests) -> Self {
        DebugPorts {
            state: DebugPortsState::default(),
            e9_out,
            requests,
            ignored: 0,
        }
    }

    /// The last POST code written to port 0x80.
    pub fn post_code(&self) -> u8 {
        self.state.post_code
    }

    pub fn state(&self) -> &DebugPortsState {
        &self.state
    }

    pub fn restore(&mut self, state: DebugPortsState) {
        self.state = state;
    }

    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            // POST latch reads back (as on boards with a POST display).
            POST_PORT => self.state.post_code,
            // Debug console present.
            E9_PORT => E9_SIGNATURE,
            // Exit port: nothing to read.
            EXIT_PORT => 0xff,
            _ => {
                self.ignored += 1;
                0xff
            }
        }
    }

    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            // POST code: latched and logged. Linux also writes port 0x80 as
            // an I/O delay, so this is debug level.
            POST_PORT => {
                self.state.post_code = value;
                tracing::debug!(code = value, "POST code");
            }
            // Debug console byte, flushed at once.
            E9_PORT => {
                if let Some(out) = self.e9_out.as_mut() {
                    if out.write_all(&[value]).and_then(|_| out.flush()).is_err() {
                        self.ignored += 1;
                    }
                }
            }
            // Test exit.
            EXIT_PORT => self.requests.post(PlatformRequest::Exit(value)),
            _ => self.ignored += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::SharedBuf as Sink;

    #[test]
    fn post_e9_exit() {
        let sink = Sink::default();
        let r = Requests::new();
        let mut d = DebugPorts::new(Some(Box::new(sink.clone())), r.clone());
        d.write(0x80, 0x42);
        assert_eq!(d.post_code(), 0x42);
        assert_eq!(d.read(0x80), 0x42);
        for b in b"ok\n" {
            d.write(0xe9, *b);
        }
        assert_eq!(&*sink.0.borrow(), b"ok\n");
        assert_eq!(d.read(0xe9), 0xe9);
        assert_eq!(r.peek(), None);
        d.write(0xf4, 3);
        assert_eq!(r.take(), Some(PlatformRequest::Exit(3)));
        d.write(0x81, 1);
        assert_eq!(d.ignored(), 1);
    }

    #[test]
    fn e9_without_sink_is_silent() {
        let mut d = DebugPorts::new(None, Requests::new());
        d.write(0xe9, b'x');
        assert_eq!(d.ignored(), 0);
    }
}
