//! i8042 keyboard controller (ports 0x60 data, 0x64 status/command) with a
//! PS/2 keyboard behind it. The controller owns the status register, the
//! command byte and its internal RAM, the output port (A20 gate and the
//! reset line), the one-byte output buffer with its IRQ1/IRQ12 wiring, and
//! the set 2 -> set 1 translation. The keyboard owns its command protocol
//! (reset, identify, LEDs, typematic, scan code set, enable/disable) and its
//! queue of scan codes, always generated in set 2.
//!
//! There is no mouse: the aux port itself works (enable/disable, interface
//! test, the "write aux output buffer" loop command Linux uses to test IRQ12)
//! but a byte sent to the aux device comes back as 0xFE with the status
//! timeout bit set, the way a controller with nothing on its aux port
//! answers; psmouse then gives up at once.
//!
//! Not owned: the host keyboard mapping (the machine hands set 2 bytes to
//! `key`), the machine's handling of reset and A20.
//!
//! References: IBM PS/2 Technical Reference (8042 commands and status),
//! the "Keyboard controller" command tables in the Linux i8042 driver's
//! documentation of the protocol (i8042.h), and the PS/2 keyboard command set.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{IrqLine, PlatformRequest, Requests};

/// Data port: output buffer (read), input buffer for data (write).
pub const DATA_PORT: u16 = 0x60;
/// Status register (read), command register (write).
pub const CMD_STATUS_PORT: u16 = 0x64;

// Status register.
/// Output buffer full: a byte waits at port 0x60.
pub const STS_OBF: u8 = 0x01;
/// Input buffer full: the controller has not taken the last write (never,
/// here: writes are taken at once).
pub const STS_IBF: u8 = 0x02;
/// System flag: copy of command byte bit 2 (set after a successful POST).
pub const STS_SYS: u8 = 0x04;
/// Last write was to the command port (1) or the data port (0).
pub const STS_CMD: u8 = 0x08;
/// Keyboard not inhibited (the keylock switch is open).
pub const STS_UNLOCKED: u8 = 0x10;
/// The byte in the output buffer came from the aux (mouse) port.
pub const STS_AUXDATA: u8 = 0x20;
/// Timeout: the device did not answer.
pub const STS_TIMEOUT: u8 = 0x40;
/// Parity error on the byte from the device.
pub const STS_PARITY: u8 = 0x80;

// Command byte (controller RAM byte 0).
/// Raise IRQ1 when a keyboard byte is in the output buffer.
pub const CTR_KBDINT: u8 = 0x01;
/// Raise IRQ12 when an aux byte is in the output buffer.
pub const CTR_AUXINT: u8 = 0x02;
/// System flag (mirrored in the status register).
pub const CTR_SYS: u8 = 0x04;
/// Ignore the keylock (AT); unused here.
pub const CTR_IGNKEYLOCK: u8 = 0x08;
/// Keyboard interface disabled (clock held low).
pub const CTR_KBDDIS: u8 = 0x10;
/// Aux interface disabled.
pub const CTR_AUXDIS: u8 = 0x20;
/// Translate keyboard bytes from set 2 to set 1.
pub const CTR_XLATE: u8 = 0x40;

/// The command byte a PC BIOS leaves: keyboard interrupt, system flag,
/// aux disabled, translation on.
pub const CTR_DEFAULT: u8 = CTR_KBDINT | CTR_SYS | CTR_AUXDIS | CTR_XLATE;

// Output port (commands 0xD0/0xD1).
/// System reset line: active low, 0 resets the CPU.
pub const OUTPORT_RESET: u8 = 0x01;
/// A20 gate: 1 lets address line 20 through.
pub const OUTPORT_A20: u8 = 0x02;
/// Aux data line (output); only stored.
pub const OUTPORT_AUX_DATA: u8 = 0x04;
/// Aux clock line (output); only stored.
pub const OUTPORT_AUX_CLOCK: u8 = 0x08;
/// Output buffer full with a keyboard byte (IRQ1 line).
pub const OUTPORT_IRQ1: u8 = 0x10;
/// Output buffer full with an aux byte (IRQ12 line).
pub const OUTPORT_IRQ12: u8 = 0x20;
/// Keyboard clock line (output); only stored.
pub const OUTPORT_KBD_CLOCK: u8 = 0x40;
/// Keyboard data line (output); only stored.
pub const OUTPORT_KBD_DATA: u8 = 0x80;

// Controller commands (port 0x64).
/// Read internal RAM byte 0 (the command byte); 0x21-0x3F read bytes 1-31.
pub const CMD_READ_RAM: u8 = 0x20;
/// Write internal RAM byte 0 (command byte); 0x61-0x7F write bytes 1-31.
pub const CMD_WRITE_RAM: u8 = 0x60;
/// Is a password installed? 0xF1 = no.
pub const CMD_PASSWORD_TEST: u8 = 0xa4;
/// Disable the aux interface.
pub const CMD_AUX_DISABLE: u8 = 0xa7;
/// Enable the aux interface.
pub const CMD_AUX_ENABLE: u8 = 0xa8;
/// Aux interface test: 0x00 = ok.
pub const CMD_AUX_TEST: u8 = 0xa9;
/// Controller self-test: 0x55 = ok.
pub const CMD_SELF_TEST: u8 = 0xaa;
/// Keyboard interface test: 0x00 = ok.
pub const CMD_KBD_TEST: u8 = 0xab;
/// Disable the keyboard interface.
pub const CMD_KBD_DISABLE: u8 = 0xad;
/// Enable the keyboard interface.
pub const CMD_KBD_ENABLE: u8 = 0xae;
/// Read the input port.
pub const CMD_READ_INPUT: u8 = 0xc0;
/// Read the output port.
pub const CMD_READ_OUTPUT: u8 = 0xd0;
/// Write the output port (next data byte).
pub const CMD_WRITE_OUTPUT: u8 = 0xd1;
/// Write the keyboard output buffer (next data byte appears from the keyboard).
pub const CMD_WRITE_KBD_OBUF: u8 = 0xd2;
/// Write the aux output buffer (next data byte appears from the aux port).
pub const CMD_WRITE_AUX_OBUF: u8 = 0xd3;
/// Write the next data byte to the aux device.
pub const CMD_WRITE_AUX: u8 = 0xd4;
/// Disable A20 (HP Vectra style, widely supported).
pub const CMD_A20_DISABLE: u8 = 0xdd;
/// Enable A20.
pub const CMD_A20_ENABLE: u8 = 0xdf;
/// Read test inputs.
pub const CMD_READ_TEST_INPUTS: u8 = 0xe0;
/// First of the "pulse output port" commands 0xF0-0xFF: bits 0-3 low pulse
/// the matching output port lines; bit 0 low pulses reset.
pub const CMD_PULSE_BASE: u8 = 0xf0;

// Keyboard commands and replies.
/// Acknowledge.
pub const KBD_ACK: u8 = 0xfa;
/// Basic assurance test passed (after reset).
pub const KBD_BAT_OK: u8 = 0xaa;
/// Resend / not acknowledged.
pub const KBD_RESEND: u8 = 0xfe;
/// Echo.
pub const KBD_ECHO: u8 = 0xee;
/// Set LEDs (one parameter byte).
pub const KBD_CMD_SET_LEDS: u8 = 0xed;
/// Get/set scan code set (one parameter byte).
pub const KBD_CMD_SCANCODE_SET: u8 = 0xf0;
/// Identify: replies ACK 0xAB 0x83 (MF2 keyboard).
pub const KBD_CMD_IDENTIFY: u8 = 0xf2;
/// Set typematic rate and delay (one parameter byte).
pub const KBD_CMD_TYPEMATIC: u8 = 0xf3;
/// Enable scanning.
pub const KBD_CMD_ENABLE: u8 = 0xf4;
/// Disable scanning and restore defaults.
pub const KBD_CMD_DISABLE: u8 = 0xf5;
/// Restore defaults.
pub const KBD_CMD_DEFAULTS: u8 = 0xf6;
/// Resend the last byte.
pub const KBD_CMD_RESEND: u8 = 0xfe;
/// Reset and self-test.
pub const KBD_CMD_RESET: u8 = 0xff;

/// Bytes a keyboard can hold before it starts dropping keystrokes.
const KBD_QUEUE_MAX: usize = 64;
/// Set 2 break prefix.
const SET2_BREAK: u8 = 0xf0;
/// Default typematic byte: 10.9 characters/s, 500 ms delay.
const TYPEMATIC_DEFAULT: u8 = 0x2b;

/// Set 2 -> set 1 translation done by the 8042 when the command byte's
/// XLATE bit is set, for bytes 0x00-0x7F; 0x83 -> 0x41 and 0x84 -> 0x54
/// above that, all other bytes pass unchanged. A preceding 0xF0 instead sets
/// bit 7 of the translated byte (a set 1 break code).
const SET2_TO_SET1: [u8; 128] = [
    0xff, 0x43, 0x41, 0x3f, 0x3d, 0x3b, 0x3c, 0x58, // 0x00
    0x64, 0x44, 0x42, 0x40, 0x3e, 0x0f, 0x29, 0x59, // 0x08
    0x65, 0x38, 0x2a, 0x70, 0x1d, 0x10, 0x02, 0x5a, // 0x10
    0x66, 0x71, 0x2c, 0x1f, 0x1e, 0x11, 0x03, 0x5b, // 0x18
    0x67, 0x2e, 0x2d, 0x20, 0x12, 0x05, 0x04, 0x5c, // 0x20
    0x68, 0x39, 0x2f, 0x21, 0x14, 0x13, 0x06, 0x5d, // 0x28
    0x69, 0x31, 0x30, 0x23, 0x22, 0x15, 0x07, 0x5e, // 0x30
    0x6a, 0x72, 0x32, 0x24, 0x16, 0x08, 0x09, 0x5f, // 0x38
    0x6b, 0x33, 0x25, 0x17, 0x18, 0x0b, 0x0a, 0x60, // 0x40
    0x6c, 0x34, 0x35, 0x26, 0x27, 0x19, 0x0c, 0x61, // 0x48
    0x6d, 0x73, 0x28, 0x74, 0x1a, 0x0d, 0x62, 0x6e, // 0x50
    0x3a, 0x36, 0x1c, 0x1b, 0x75, 0x2b, 0x63, 0x76, // 0x58
    0x55, 0x56, 0x77, 0x78, 0x79, 0x7a, 0x0e, 0x7b, // 0x60
    0x7c, 0x4f, 0x7d, 0x4b, 0x47, 0x7e, 0x7f, 0x6f, // 0x68
    0x52, 0x53, 0x50, 0x4c, 0x4d, 0x48, 0x01, 0x45, // 0x70
    0x57, 0x4e, 0x51, 0x4a, 0x37, 0x49, 0x46, 0x54, // 0x78
];

/// One byte through the 8042's translation.
fn translate(b: u8) -> u8 {
    match b {
        0x00..=0x7f => SET2_TO_SET1[b as usize],
        0x83 => 0x41,
        0x84 => 0x54,
        _ => b,
    }
}

/// Where the byte in the output buffer came from.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Source {
    /// The controller itself or the keyboard (IRQ1 side).
    Keyboard,
    /// The aux port (IRQ12 side).
    Aux,
}

/// The PS/2 keyboard's state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ps2KeyboardState {
    /// Bytes waiting to be sent to the controller (replies and scan codes).
    pub queue: VecDeque<u8>,
    /// Scanning enabled (0xF4) or disabled (0xF5).
    pub scanning: bool,
    /// The command waiting for its parameter byte, if any.
    pub pending: Option<u8>,
    /// Scan code set the host selected (1-3). Codes are generated in set 2
    /// whatever is selected; only the reported number changes.
    pub scancode_set: u8,
    pub leds: u8,
    pub typematic: u8,
    /// Last byte sent, for 0xFE resend.
    pub last: u8,
}

impl Default for Ps2KeyboardState {
    fn default() -> Self {
        Ps2KeyboardState {
            queue: VecDeque::new(),
            scanning: true,
            pending: None,
            scancode_set: 2,
            leds: 0,
            typematic: TYPEMATIC_DEFAULT,
            last: 0,
        }
    }
}

impl Ps2KeyboardState {
    fn send(&mut self, b: u8) {
        if self.queue.len() < KBD_QUEUE_MAX {
            self.queue.push_back(b);
            self.last = b;
        }
    }

    fn defaults(&mut self) {
        self.scancode_set = 2;
        self.typematic = TYPEMATIC_DEFAULT;
        self.leds = 0;
    }

    /// A byte from the host to the keyboard.
    fn command(&mut self, b: u8) {
        if let Some(cmd) = self.pending.take() {
            match cmd {
                // LED state: scroll/num/caps lock in bits 0-2.
                KBD_CMD_SET_LEDS => {
                    self.leds = b & 0x07;
                    self.send(KBD_ACK);
                }
                // Typematic rate/delay byte.
                KBD_CMD_TYPEMATIC => {
                    self.typematic = b & 0x7f;
                    self.send(KBD_ACK);
                }
                // 0 = report the current set, 1-3 = select a set.
                KBD_CMD_SCANCODE_SET => match b {
                    0 => {
                        self.send(KBD_ACK);
                        self.send(self.scancode_set);
                    }
                    1..=3 => {
                        self.scancode_set = b;
                        self.send(KBD_ACK);
                    }
                    _ => self.send(KBD_RESEND),
                },
                _ => self.send(KBD_ACK),
            }
            return;
        }
        match b {
            // Reset: clear the queue, ACK, then pass the self-test.
            KBD_CMD_RESET => {
                self.queue.clear();
                self.defaults();
                self.scanning = true;
                self.send(KBD_ACK);
                self.send(KBD_BAT_OK);
            }
            // Resend the last byte.
            KBD_CMD_RESEND => self.send(self.last),
            // Identify: MF2 keyboard, 0xAB 0x83.
            KBD_CMD_IDENTIFY => {
                self.send(KBD_ACK);
                self.send(0xab);
                self.send(0x83);
            }
            // Commands with a parameter byte: ACK now, act on the parameter.
            KBD_CMD_SET_LEDS | KBD_CMD_TYPEMATIC | KBD_CMD_SCANCODE_SET => {
                self.pending = Some(b);
                self.send(KBD_ACK);
            }
            // Enable scanning.
            KBD_CMD_ENABLE => {
                self.scanning = true;
                self.send(KBD_ACK);
            }
            // Disable scanning and restore defaults.
            KBD_CMD_DISABLE => {
                self.scanning = false;
                self.defaults();
                self.send(KBD_ACK);
            }
            // Restore defaults.
            KBD_CMD_DEFAULTS => {
                self.defaults();
                self.send(KBD_ACK);
            }
            // Echo.
            KBD_ECHO => self.send(KBD_ECHO),
            // Set 3 key-type commands and anything else: acknowledged.
            _ => self.send(KBD_ACK),
        }
    }
}

/// The controller's state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct I8042State {
    /// Internal RAM; byte 0 is the command byte.
    pub ram: [u8; 32],
    pub outport: u8,
    /// The output buffer: one byte and where it came from.
    pub obuf: Option<(u8, Source)>,
    /// Status flags that travel with the byte in the output buffer
    /// (timeout, parity).
    pub obuf_flags: u8,
    /// Controller replies waiting for the output buffer (they take
    /// precedence over device bytes).
    pub replies: VecDeque<(u8, Source, u8)>,
    /// Controller command waiting for its data byte on port 0x60.
    pub pending: Option<u8>,
    /// Last write went to port 0x64.
    pub last_was_cmd: bool,
    /// Last byte read from port 0x60 (read again when the buffer is empty).
    pub last_read: u8,
    /// A set 2 break prefix was seen while translating.
    pub xlate_break: bool,
    pub irq1_level: bool,
    pub irq12_level: bool,
    pub kbd: Ps2KeyboardState,
}

impl Default for I8042State {
    fn default() -> Self {
        let mut ram = [0; 32];
        ram[0] = CTR_DEFAULT;
        I8042State {
            ram,
            outport: OUTPORT_RESET | OUTPORT_A20,
            obuf: None,
            obuf_flags: 0,
            replies: VecDeque::new(),
            pending: None,
            last_was_cmd: false,
            last_read: 0,
            xlate_break: false,
            irq1_level: false,
            irq12_level: false,
            kbd: Ps2KeyboardState::default(),
        }
    }
}

/// The i8042 with its keyboard, IRQ lines and a way to ask for reset.
pub struct I8042 {
    state: I8042State,
    irq1: IrqLine,
    irq12: IrqLine,
    requests: Requests,
    /// Accesses the hardware ignores (unknown commands, bad ports).
    ignored: u64,
}

impl I8042 {
    pub fn new(irq1: IrqLine, irq12: IrqLine, requests: Requests) -> Self {
        I8042 {
            state: I8042State::default(),
            irq1,
            irq12,
            requests,
            ignored: 0,
        }
    }

    pub fn state(&self) -> &I8042State {
        &self.state
    }

    /// Put back a snapshot's state and drive both lines to its levels.
    pub fn restore(&mut self, state: I8042State) {
        self.state = state;
        self.irq1.set(self.state.irq1_level);
        self.irq12.set(self.state.irq12_level);
    }

    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// The A20 gate (output port bit 1).
    pub fn a20(&self) -> bool {
        self.state.outport & OUTPORT_A20 != 0
    }

    /// Key make/break bytes in scan code set 2, from the host keyboard.
    /// Dropped while the keyboard is not scanning.
    pub fn key(&mut self, set2_bytes: &[u8]) {
        if !self.state.kbd.scanning {
            return;
        }
        for &b in set2_bytes {
            if self.state.kbd.queue.len() >= KBD_QUEUE_MAX {
                break;
            }
            self.state.kbd.queue.push_back(b);
        }
        self.refill();
    }

    fn ctr(&self) -> u8 {
        self.state.ram[0]
    }

    fn reply(&mut self, b: u8) {
        self.state.replies.push_back((b, Source::Keyboard, 0));
    }

    fn status(&self) -> u8 {
        let mut s = self.state.obuf_flags & (STS_TIMEOUT | STS_PARITY);
        if let Some((_, src)) = self.state.obuf {
            s |= STS_OBF;
            if src == Source::Aux {
                s |= STS_AUXDATA;
            }
        }
        if self.ctr() & CTR_SYS != 0 {
            s |= STS_SYS;
        }
        if self.state.last_was_cmd {
            s |= STS_CMD;
        }
        s | STS_UNLOCKED
    }

    /// Move the next byte into an empty output buffer: controller replies
    /// first, then the keyboard (unless its interface is disabled), with
    /// translation applied as the byte leaves the keyboard.
    fn refill(&mut self) {
        while self.state.obuf.is_none() {
            if let Some((b, src, flags)) = self.state.replies.pop_front() {
                self.state.obuf = Some((b, src));
                self.state.obuf_flags = flags;
                break;
            }
            if self.ctr() & CTR_KBDDIS != 0 {
                break;
            }
            let Some(b) = self.state.kbd.queue.pop_front() else {
                break;
            };
            let out = if self.ctr() & CTR_XLATE != 0 {
                if b == SET2_BREAK {
                    self.state.xlate_break = true;
                    continue;
                }
                let t = translate(b);
                if std::mem::take(&mut self.state.xlate_break) {
                    t | 0x80
                } else {
                    t
                }
            } else {
                b
            };
            self.state.obuf = Some((out, Source::Keyboard));
            self.state.obuf_flags = 0;
        }
        self.update_irq();
    }

    fn update_irq(&mut self) {
        let ctr = self.ctr();
        let (l1, l12) = match self.state.obuf {
            Some((_, Source::Keyboard)) => (ctr & CTR_KBDINT != 0, false),
            Some((_, Source::Aux)) => (false, ctr & CTR_AUXINT != 0),
            None => (false, false),
        };
        if l1 != self.state.irq1_level {
            self.state.irq1_level = l1;
            self.irq1.set(l1);
        }
        if l12 != self.state.irq12_level {
            self.state.irq12_level = l12;
            self.irq12.set(l12);
        }
    }

    /// The output port as read by 0xD0: stored lines plus the live IRQ bits.
    fn outport(&self) -> u8 {
        let mut v = self.state.outport & !(OUTPORT_IRQ1 | OUTPORT_IRQ12);
        match self.state.obuf {
            Some((_, Source::Keyboard)) => v |= OUTPORT_IRQ1,
            Some((_, Source::Aux)) => v |= OUTPORT_IRQ12,
            None => {}
        }
        v
    }

    fn write_outport(&mut self, v: u8) {
        self.state.outport = v;
        if v & OUTPORT_RESET == 0 {
            // The reset line is active low: driving it low resets the CPU.
            self.requests.post(PlatformRequest::Reset);
            self.state.outport |= OUTPORT_RESET;
        }
    }

    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            // Output buffer: the waiting byte (the last one again if empty);
            // reading empties it and lets the next byte in.
            DATA_PORT => {
                let v = match self.state.obuf.take() {
                    Some((b, _)) => {
                        self.state.last_read = b;
                        b
                    }
                    None => self.state.last_read,
                };
                self.state.obuf_flags = 0;
                // The interrupt request follows the output buffer: it drops
                // with the read and rises again when the next byte comes
                // in, so an edge-triggered PIC sees one edge per byte.
                self.update_irq();
                self.refill();
                v
            }
            // Status register.
            CMD_STATUS_PORT => self.status(),
            _ => {
                self.ignored += 1;
                0xff
            }
        }
    }

    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            // Data: the parameter of a pending controller command, or a byte
            // for the keyboard.
            DATA_PORT => {
                self.state.last_was_cmd = false;
                match self.state.pending.take() {
                    Some(cmd) => self.command_data(cmd, value),
                    None => {
                        // Sending to the keyboard re-enables its interface.
                        self.state.ram[0] &= !CTR_KBDDIS;
                        self.state.kbd.command(value);
                    }
                }
            }
            // Command register.
            CMD_STATUS_PORT => {
                self.state.last_was_cmd = true;
                self.state.pending = None;
                self.command(value);
            }
            _ => self.ignored += 1,
        }
        self.refill();
    }

    /// A controller command written to port 0x64.
    fn command(&mut self, cmd: u8) {
        match cmd {
            // Read internal RAM byte (0x20 = command byte).
            0x20..=0x3f => {
                let v = self.state.ram[(cmd & 0x1f) as usize];
                self.reply(v);
            }
            // Write internal RAM byte: the data byte follows on 0x60.
            0x60..=0x7f => self.state.pending = Some(cmd),
            // No password installed.
            CMD_PASSWORD_TEST => self.reply(0xf1),
            // Aux interface disable/enable (command byte bit 5).
            CMD_AUX_DISABLE => self.state.ram[0] |= CTR_AUXDIS,
            CMD_AUX_ENABLE => self.state.ram[0] &= !CTR_AUXDIS,
            // Aux interface test: no fault on the lines.
            CMD_AUX_TEST => self.reply(0x00),
            // Self-test passed.
            CMD_SELF_TEST => self.reply(0x55),
            // Keyboard interface test: no fault.
            CMD_KBD_TEST => self.reply(0x00),
            // Keyboard interface disable/enable (command byte bit 4).
            CMD_KBD_DISABLE => self.state.ram[0] |= CTR_KBDDIS,
            CMD_KBD_ENABLE => self.state.ram[0] &= !CTR_KBDDIS,
            // Input port: keyboard not inhibited (bit 7), colour display.
            CMD_READ_INPUT => self.reply(0x80),
            // Output port.
            CMD_READ_OUTPUT => {
                let v = self.outport();
                self.reply(v);
            }
            // Commands whose data byte follows on 0x60.
            CMD_WRITE_OUTPUT | CMD_WRITE_KBD_OBUF | CMD_WRITE_AUX_OBUF | CMD_WRITE_AUX => {
                self.state.pending = Some(cmd)
            }
            // A20 gate off/on.
            CMD_A20_DISABLE => self.state.outport &= !OUTPORT_A20,
            CMD_A20_ENABLE => self.state.outport |= OUTPORT_A20,
            // Test inputs: clock and data lines low.
            CMD_READ_TEST_INPUTS => self.reply(0x00),
            // Pulse output port lines whose bit is 0 for ~6 us; bit 0 is
            // the reset line (0xFE is the classic reboot).
            0xf0..=0xff => {
                if cmd & OUTPORT_RESET == 0 {
                    self.requests.post(PlatformRequest::Reset);
                }
            }
            _ => {
                self.ignored += 1;
                tracing::debug!(cmd, "i8042: unsupported controller command");
            }
        }
    }

    /// The data byte of a controller command.
    fn command_data(&mut self, cmd: u8, v: u8) {
        match cmd {
            // Command byte or other RAM byte.
            0x60..=0x7f => {
                self.state.ram[(cmd & 0x1f) as usize] = v;
            }
            // Output port: A20 and reset lines.
            CMD_WRITE_OUTPUT => self.write_outport(v),
            // Byte appears in the output buffer as if from the keyboard.
            CMD_WRITE_KBD_OBUF => self.state.replies.push_back((v, Source::Keyboard, 0)),
            // Byte appears as if from the aux device (Linux's IRQ12 test).
            CMD_WRITE_AUX_OBUF => self.state.replies.push_back((v, Source::Aux, 0)),
            // Byte for the aux device: nothing is attached, so the
            // controller reports a timeout with 0xFE.
            CMD_WRITE_AUX => {
                self.state.ram[0] &= !CTR_AUXDIS;
                self.state
                    .replies
                    .push_back((KBD_RESEND, Source::Aux, STS_TIMEOUT));
            }
            _ => self.ignored += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IrqSink;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[derive(Default)]
    struct Levels([bool; 16]);
    impl IrqSink for Levels {
        fn set_irq(&mut self, irq: u8, level: bool) {
            self.0[irq as usize] = level;
        }
    }

    fn kbc() -> (I8042, Rc<RefCell<Levels>>, Requests) {
        let l = Rc::new(RefCell::new(Levels::default()));
        let r = Requests::new();
        let k = I8042::new(
            IrqLine::new(l.clone(), 1),
            IrqLine::new(l.clone(), 12),
            r.clone(),
        );
        (k, l, r)
    }

    /// Counts rising edges per IRQ line.
    #[derive(Default)]
    struct Edges {
        level: [bool; 16],
        rises: [u32; 16],
    }
    impl IrqSink for Edges {
        fn set_irq(&mut self, irq: u8, level: bool) {
            let i = irq as usize;
            if level && !self.level[i] {
                self.rises[i] += 1;
            }
            self.level[i] = level;
        }
    }

    #[test]
    fn every_queued_key_byte_raises_its_own_irq1_edge() {
        let e = Rc::new(RefCell::new(Edges::default()));
        let mut k = I8042::new(
            IrqLine::new(e.clone(), 1),
            IrqLine::new(e.clone(), 12),
            Requests::new(),
        );
        // Command byte: keyboard interrupt on, translation on.
        k.write(0x64, 0x60);
        k.write(0x60, CTR_KBDINT | CTR_XLATE);
        // Up arrow, make and break in set 2: E0 75 E0 F0 75, which the
        // controller translates to E0 48 E0 C8 (four bytes out).
        k.key(&[0xE0, 0x75, 0xE0, 0xF0, 0x75]);
        let mut got = Vec::new();
        while k.read(0x64) & STS_OBF != 0 {
            got.push(k.read(0x60));
        }
        assert_eq!(got, vec![0xE0, 0x48, 0xE0, 0xC8]);
        // A PC's 8259 is edge triggered on IRQ1: one rising edge a byte.
        assert_eq!(e.borrow().rises[1], 4);
        assert!(!e.borrow().level[1]);
    }

    /// All bytes currently readable from port 0x60.
    fn drain(k: &mut I8042) -> Vec<u8> {
        let mut v = Vec::new();
        while k.read(0x64) & STS_OBF != 0 {
            v.push(k.read(0x60));
        }
        v
    }

    #[test]
    fn self_test_and_interface_tests() {
        let (mut k, _, _) = kbc();
        assert_eq!(k.read(0x64) & STS_OBF, 0);
        k.write(0x64, 0xaa);
        assert_eq!(k.read(0x64) & (STS_OBF | STS_CMD), STS_OBF | STS_CMD);
        assert_eq!(k.read(0x60), 0x55);
        k.write(0x64, 0xab);
        k.write(0x64, 0xa9);
        assert_eq!(drain(&mut k), vec![0x00, 0x00]);
    }

    #[test]
    fn command_byte_read_write_and_sys_flag() {
        let (mut k, _, _) = kbc();
        k.write(0x64, 0x20);
        assert_eq!(k.read(0x60), 0x65);
        k.write(0x64, 0x60);
        k.write(0x60, 0x00);
        k.write(0x64, 0x20);
        assert_eq!(k.read(0x60), 0x00);
        assert_eq!(k.read(0x64) & STS_SYS, 0);
        k.write(0x64, 0x60);
        k.write(0x60, 0x04);
        assert_eq!(k.read(0x64) & STS_SYS, STS_SYS);
    }

    #[test]
    fn translation_of_set2_make_break() {
        let (mut k, l, _) = kbc();
        // 'a': set 2 make 0x1C, break 0xF0 0x1C -> set 1 0x1E, 0x9E.
        k.key(&[0x1c, 0xf0, 0x1c]);
        assert!(l.borrow().0[1], "IRQ1 with KBDINT set");
        assert_eq!(drain(&mut k), vec![0x1e, 0x9e]);
        assert!(!l.borrow().0[1]);
        // Translation off: raw set 2.
        k.write(0x64, 0x60);
        k.write(0x60, CTR_KBDINT);
        k.key(&[0x1c, 0xf0, 0x1c]);
        assert_eq!(drain(&mut k), vec![0x1c, 0xf0, 0x1c]);
        // Esc (0x76) -> 0x01, Enter (0x5A) -> 0x1C with translation.
        k.write(0x64, 0x60);
        k.write(0x60, CTR_KBDINT | CTR_XLATE);
        k.key(&[0x76, 0x5a]);
        assert_eq!(drain(&mut k), vec![0x01, 0x1c]);
    }

    #[test]
    fn keyboard_commands() {
        let (mut k, _, _) = kbc();
        k.write(0x64, 0x60);
        k.write(0x60, CTR_KBDINT); // no translation
        k.write(0x60, 0xff);
        assert_eq!(drain(&mut k), vec![0xfa, 0xaa]);
        k.write(0x60, 0xf2);
        assert_eq!(drain(&mut k), vec![0xfa, 0xab, 0x83]);
        k.write(0x60, 0xf0);
        k.write(0x60, 0x00);
        assert_eq!(drain(&mut k), vec![0xfa, 0xfa, 0x02]);
        k.write(0x60, 0xed);
        k.write(0x60, 0x07);
        assert_eq!(drain(&mut k), vec![0xfa, 0xfa]);
        assert_eq!(k.state().kbd.leds, 7);
        k.write(0x60, 0xf5);
        k.key(&[0x1c]);
        assert_eq!(drain(&mut k), vec![0xfa], "scanning disabled");
        k.write(0x60, 0xf4);
        k.key(&[0x1c]);
        assert_eq!(drain(&mut k), vec![0xfa, 0x1c]);
        // Identify through translation: 0xAB 0x83 -> 0xAB 0x41.
        k.write(0x64, 0x60);
        k.write(0x60, CTR_KBDINT | CTR_XLATE);
        k.write(0x60, 0xf2);
        assert_eq!(drain(&mut k), vec![0xfa, 0xab, 0x41]);
    }

    #[test]
    fn keyboard_disable_holds_bytes() {
        let (mut k, _, _) = kbc();
        k.write(0x64, 0xad);
        k.key(&[0x1c]);
        assert_eq!(k.read(0x64) & STS_OBF, 0);
        k.write(0x64, 0xae);
        assert_eq!(drain(&mut k), vec![0x1e]);
    }

    #[test]
    fn aux_loop_raises_irq12_and_aux_device_times_out() {
        let (mut k, l, _) = kbc();
        k.write(0x64, 0x60);
        k.write(0x60, CTR_KBDINT | CTR_AUXINT | CTR_XLATE);
        k.write(0x64, 0xd3);
        k.write(0x60, 0x5a);
        assert_eq!(
            k.read(0x64) & (STS_OBF | STS_AUXDATA),
            STS_OBF | STS_AUXDATA
        );
        assert!(l.borrow().0[12]);
        assert!(!l.borrow().0[1]);
        assert_eq!(k.read(0x60), 0x5a);
        assert!(!l.borrow().0[12]);
        k.write(0x64, 0xd4);
        k.write(0x60, 0xff);
        let s = k.read(0x64);
        assert_eq!(s & (STS_OBF | STS_AUXDATA | STS_TIMEOUT), 0x61);
        assert_eq!(k.read(0x60), 0xfe);
        assert_eq!(k.read(0x64) & STS_TIMEOUT, 0);
    }

    /// Linux's i8042 probe: flush, self-test, stable CTR reads, MUX
    /// detection (must fail: a plain controller echoes the third loop byte),
    /// then the AUX IRQ delivery test through 0xD3.
    #[test]
    fn linux_probe_sequence() {
        let (mut k, l, _) = kbc();
        k.key(&[0x1c]);
        drain(&mut k);
        k.write(0x64, 0xaa);
        assert_eq!(drain(&mut k), vec![0x55]);
        k.write(0x64, 0x20);
        let a = drain(&mut k);
        k.write(0x64, 0x20);
        assert_eq!(drain(&mut k), a);
        // MUX: loop 0xF0, 0x56, 0xA4; a MUX controller would answer the
        // last with its version, a plain one echoes it.
        for v in [0xf0, 0x56, 0xa4] {
            k.write(0x64, 0xd3);
            k.write(0x60, v);
            assert_eq!(k.read(0x64) & STS_AUXDATA, STS_AUXDATA);
            assert_eq!(k.read(0x60), v);
        }
        // Enable the aux port with its interrupt, then the IRQ12 test.
        k.write(0x64, 0x60);
        k.write(0x60, CTR_KBDINT | CTR_AUXINT | CTR_SYS | CTR_XLATE);
        k.write(0x64, 0xd3);
        k.write(0x60, 0xa5);
        assert!(l.borrow().0[12]);
        assert_eq!(k.read(0x60), 0xa5);
        // The keyboard answers its reset and ID through translation.
        k.write(0x60, 0xff);
        assert!(l.borrow().0[1]);
        assert_eq!(drain(&mut k), vec![0xfa, 0xaa]);
    }

    #[test]
    fn output_port_a20_and_reset() {
        let (mut k, _, r) = kbc();
        assert!(k.a20());
        k.write(0x64, 0xd1);
        k.write(0x60, 0x01); // reset high, A20 off
        assert!(!k.a20());
        assert_eq!(r.peek(), None);
        k.write(0x64, 0xd0);
        assert_eq!(k.read(0x60), 0x01);
        k.write(0x64, 0xdf);
        assert!(k.a20());
        k.write(0x64, 0xd1);
        k.write(0x60, 0x02); // bit 0 low: reset
        assert_eq!(r.take(), Some(PlatformRequest::Reset));
    }

    #[test]
    fn reset_pulse() {
        let (mut k, _, r) = kbc();
        k.write(0x64, 0xff); // pulses nothing
        assert_eq!(r.peek(), None);
        k.write(0x64, 0xfd); // pulses bit 1 only (A20 line)
        assert_eq!(r.peek(), None);
        k.write(0x64, 0xfe);
        assert_eq!(r.take(), Some(PlatformRequest::Reset));
    }
}
