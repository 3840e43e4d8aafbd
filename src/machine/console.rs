//! The serial console on the terminal: raw mode while the guest runs
//! (restored on drop, also on error paths), a thread that reads stdin into
//! a channel, and QEMU's escape keys: Ctrl-A X quits, Ctrl-A H lists the
//! keys, Ctrl-A C prints the statistics line, Ctrl-A S writes the
//! `--screenshot` file, Ctrl-A Ctrl-A sends Ctrl-A.

use std::io::{Read, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

/// The escape prefix, Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// What the user asked for on the console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// Bytes for the guest's serial port.
    Input(Vec<u8>),
    /// Ctrl-A X.
    Quit,
    /// Ctrl-A C: print statistics.
    Stats,
    /// Ctrl-A S: write the screenshot file.
    Screenshot,
}

/// Splits raw terminal bytes into guest input and escape commands.
#[derive(Default)]
pub struct EscapeParser {
    pending_escape: bool,
}

impl EscapeParser {
    /// Feed bytes; returns the events they make, in order. Ctrl-A H is
    /// answered by writing the key list to `help`.
    pub fn feed(&mut self, bytes: &[u8], help: &mut dyn Write) -> Vec<ConsoleEvent> {
        let mut out = Vec::new();
        let mut input = Vec::new();
        for &b in bytes {
            if self.pending_escape {
                self.pending_escape = false;
                match b.to_ascii_lowercase() {
                    b'x' => {
                        flush_input(&mut out, &mut input);
                        out.push(ConsoleEvent::Quit);
                    }
                    b'h' | b'?' => {
                        let _ = help.write_all(HELP.as_bytes());
                        let _ = help.flush();
                    }
                    b'c' => {
                        flush_input(&mut out, &mut input);
                        out.push(ConsoleEvent::Stats);
                    }
                    b's' => {
                        flush_input(&mut out, &mut input);
                        out.push(ConsoleEvent::Screenshot);
                    }
                    ESCAPE => input.push(ESCAPE),
                    // Anything else after Ctrl-A is dropped, as QEMU does.
                    _ => {}
                }
            } else if b == ESCAPE {
                self.pending_escape = true;
            } else {
                input.push(b);
            }
        }
        flush_input(&mut out, &mut input);
        out
    }
}

fn flush_input(out: &mut Vec<ConsoleEvent>, input: &mut Vec<u8>) {
    if !input.is_empty() {
        out.push(ConsoleEvent::Input(std::mem::take(input)));
    }
}

const HELP: &str = "\r\nC-a h    print this help\r\n\
C-a x    exit umbra\r\n\
C-a c    print statistics\r\n\
C-a s    write the --screenshot PNG\r\n\
C-a C-a  send C-a to the guest\r\n";

/// The terminal side of the console: stdin bytes arrive on a channel.
pub struct Console {
    rx: Option<Receiver<Vec<u8>>>,
    raw: Option<RawMode>,
    parser: EscapeParser,
}

impl Console {
    /// Read stdin (raw mode when it is a terminal).
    pub fn stdin() -> Self {
        let raw = RawMode::enable();
        let (tx, rx) = mpsc::channel();
        // The reader thread ends at EOF or when the receiver is gone.
        let spawned = std::thread::Builder::new()
            .name("umbra-stdin".into())
            .spawn(move || {
                let mut stdin = std::io::stdin();
                let mut buf = [0u8; 256];
                loop {
                    match stdin.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.send(buf[..n].to_vec()).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        Console {
            rx: spawned.ok().map(|_| rx),
            raw,
            parser: EscapeParser::default(),
        }
    }

    /// No input at all (`--serial none`, file output, tests).
    pub fn none() -> Self {
        Console {
            rx: None,
            raw: None,
            parser: EscapeParser::default(),
        }
    }

    /// Whether the terminal is in raw mode (then `\n` needs a `\r`).
    pub fn is_raw(&self) -> bool {
        self.raw.is_some()
    }

    /// Events typed so far, waiting at most `wait` for the first one.
    pub fn poll(&mut self, wait: Duration) -> Vec<ConsoleEvent> {
        let Some(rx) = &self.rx else {
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            return Vec::new();
        };
        let mut bytes = match rx.recv_timeout(wait) {
            Ok(b) => b,
            Err(RecvTimeoutError::Timeout) => return Vec::new(),
            Err(RecvTimeoutError::Disconnected) => {
                // stdin ended: no more input, but the guest runs on.
                self.rx = None;
                return Vec::new();
            }
        };
        while let Ok(more) = rx.try_recv() {
            bytes.extend(more);
        }
        let mut err = std::io::stderr();
        self.parser.feed(&bytes, &mut err)
    }

    /// Leave raw mode now (before printing a final report).
    pub fn restore(&mut self) {
        self.raw = None;
    }
}

/// The terminal in raw mode; the saved settings come back on drop.
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    fn enable() -> Option<RawMode> {
        let fd = libc::STDIN_FILENO;
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid
        // terminal descriptor and we check its result.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid, writable termios.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut t) };
        // Keep output processing so that host-side messages still start
        // at the left margin.
        t.c_oflag |= libc::OPOST | libc::ONLCR;
        // SAFETY: `t` is a valid termios for this descriptor.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
            return None;
        }
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read from this same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keys_split_input() {
        let mut p = EscapeParser::default();
        let mut help = Vec::new();
        let ev = p.feed(b"ls\r\x01h\x01\x01a\x01x", &mut help);
        assert_eq!(
            ev,
            vec![
                ConsoleEvent::Input(b"ls\r\x01a".to_vec()),
                ConsoleEvent::Quit
            ]
        );
        assert!(String::from_utf8_lossy(&help).contains("C-a x"));
        // An escape split across two reads still works.
        assert_eq!(p.feed(b"\x01", &mut help), vec![]);
        assert_eq!(p.feed(b"X", &mut help), vec![ConsoleEvent::Quit]);
    }
}
