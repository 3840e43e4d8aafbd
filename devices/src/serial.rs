//! 16550A UART (one COM port): the eight registers at base+0..=7, the
//! 16-byte receive FIFO with its trigger levels, interrupt identification
//! with the datasheet's priorities, loopback, modem status deltas, and the PC
//! wiring in which MCR.OUT2 gates the interrupt line.
//!
//! Owns: register state and the receive FIFO. Does not own: the host side
//! (the terminal or file behind the sink, where input comes from) or timing.
//! Transmission is instantaneous: a byte written to THR goes straight to the
//! sink, so THR and the transmitter are always empty when the guest looks.
//! Without time there is no 4-character receive timeout either: data below
//! the trigger level is reported as a character timeout (IIR 0xC) at once,
//! which is what a driver sees once the timeout would have elapsed.
//!
//! Reference: TI/National PC16550D datasheet, sections 8.4-8.7 (registers,
//! FIFO operation, IIR priorities).

use std::collections::VecDeque;
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::IrqLine;

/// Register offsets from the base port.
pub const RBR_THR_DLL: u8 = 0;
pub const IER_DLM: u8 = 1;
pub const IIR_FCR: u8 = 2;
pub const LCR: u8 = 3;
pub const MCR: u8 = 4;
pub const LSR: u8 = 5;
pub const MSR: u8 = 6;
pub const SCR: u8 = 7;

/// Receive and transmit FIFO depth on the 16550A.
pub const FIFO_SIZE: usize = 16;

// IER: interrupt enable register.
/// Received data available (and character timeout) interrupt.
pub const IER_ERBFI: u8 = 0x01;
/// Transmitter holding register empty interrupt.
pub const IER_ETBEI: u8 = 0x02;
/// Receiver line status interrupt.
pub const IER_ELSI: u8 = 0x04;
/// Modem status interrupt.
pub const IER_EDSSI: u8 = 0x08;
/// The bits of IER that exist on a 16550A (the upper nibble reads 0).
const IER_MASK: u8 = 0x0f;

// IIR: interrupt identification register.
/// No interrupt pending (active low "interrupt pending" bit).
pub const IIR_NO_INT: u8 = 0x01;
/// Identification: receiver line status (priority 1, highest).
pub const IIR_RLS: u8 = 0x06;
/// Identification: received data available (priority 2).
pub const IIR_RDA: u8 = 0x04;
/// Identification: character timeout (priority 2, FIFO mode only).
pub const IIR_CTI: u8 = 0x0c;
/// Identification: transmitter holding register empty (priority 3).
pub const IIR_THRE: u8 = 0x02;
/// Identification: modem status (priority 4, lowest).
pub const IIR_MSI: u8 = 0x00;
/// Both bits set when the FIFOs are enabled (FCR bit 0).
pub const IIR_FIFO_ENABLED: u8 = 0xc0;

// FCR: FIFO control register (write only).
/// Enable both FIFOs; changing it clears them.
pub const FCR_ENABLE: u8 = 0x01;
/// Clear the receive FIFO (self-clearing).
pub const FCR_CLEAR_RX: u8 = 0x02;
/// Clear the transmit FIFO (self-clearing).
pub const FCR_CLEAR_TX: u8 = 0x04;
/// DMA mode select (no effect here, kept for read-back through state).
pub const FCR_DMA_MODE: u8 = 0x08;
/// Receive trigger level field: 00 = 1, 01 = 4, 10 = 8, 11 = 14 bytes.
pub const FCR_TRIGGER_MASK: u8 = 0xc0;

// LCR: line control register.
/// Word length select (bits 0-1), stop bits (bit 2), parity (bits 3-5).
pub const LCR_FORMAT_MASK: u8 = 0x3f;
/// Set break: the transmit line is forced to spacing.
pub const LCR_BREAK: u8 = 0x40;
/// Divisor latch access bit: offsets 0/1 address DLL/DLM.
pub const LCR_DLAB: u8 = 0x80;

// MCR: modem control register.
/// Data terminal ready output.
pub const MCR_DTR: u8 = 0x01;
/// Request to send output.
pub const MCR_RTS: u8 = 0x02;
/// User output 1.
pub const MCR_OUT1: u8 = 0x04;
/// User output 2: on a PC it enables the UART's interrupt onto the ISA bus.
pub const MCR_OUT2: u8 = 0x08;
/// Local loopback: TX to RX, modem outputs to modem inputs.
pub const MCR_LOOP: u8 = 0x10;
/// The bits of MCR that exist on a 16550A.
const MCR_MASK: u8 = 0x1f;

// LSR: line status register.
/// Data ready: at least one byte in RBR/the receive FIFO.
pub const LSR_DR: u8 = 0x01;
/// Overrun error: a byte arrived with the receive FIFO full.
pub const LSR_OE: u8 = 0x02;
/// Parity error (never produced here).
pub const LSR_PE: u8 = 0x04;
/// Framing error (never produced here).
pub const LSR_FE: u8 = 0x08;
/// Break interrupt (never produced here).
pub const LSR_BI: u8 = 0x10;
/// Transmitter holding register (or transmit FIFO) empty.
pub const LSR_THRE: u8 = 0x20;
/// Transmitter empty: THR and the shift register both empty.
pub const LSR_TEMT: u8 = 0x40;
/// Error in the receive FIFO (FIFO mode; never produced here).
pub const LSR_FIFO_ERR: u8 = 0x80;
/// The line status bits that raise a receiver line status interrupt.
const LSR_ERRORS: u8 = LSR_OE | LSR_PE | LSR_FE | LSR_BI;

// MSR: modem status register.
/// Delta clear to send.
pub const MSR_DCTS: u8 = 0x01;
/// Delta data set ready.
pub const MSR_DDSR: u8 = 0x02;
/// Trailing edge ring indicator (RI went from on to off).
pub const MSR_TERI: u8 = 0x04;
/// Delta data carrier detect.
pub const MSR_DDCD: u8 = 0x08;
/// Clear to send input.
pub const MSR_CTS: u8 = 0x10;
/// Data set ready input.
pub const MSR_DSR: u8 = 0x20;
/// Ring indicator input.
pub const MSR_RI: u8 = 0x40;
/// Data carrier detect input.
pub const MSR_DCD: u8 = 0x80;
/// All delta bits.
const MSR_DELTAS: u8 = MSR_DCTS | MSR_DDSR | MSR_TERI | MSR_DDCD;

/// The modem inputs of a port with a terminal attached: carrier, data set
/// ready and clear to send all on, no ring.
pub const MSR_CONNECTED: u8 = MSR_DCD | MSR_DSR | MSR_CTS;

/// The registers and receive FIFO of a 16550A: everything a snapshot needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SerialState {
    pub ier: u8,
    /// The last value written to FCR, with the self-clearing bits dropped.
    pub fcr: u8,
    pub lcr: u8,
    pub mcr: u8,
    /// LSR error bits (OE and friends); DR/THRE/TEMT are derived.
    pub lsr_errors: u8,
    /// MSR: modem inputs (upper nibble) and deltas (lower nibble).
    pub msr: u8,
    pub scr: u8,
    pub dll: u8,
    pub dlm: u8,
    /// Receive FIFO (a single holding register when FIFOs are disabled).
    pub rx: VecDeque<u8>,
    /// The THR-empty interrupt is pending (cleared by reading IIR while it is
    /// the identified source, or by writing THR).
    pub thre_pending: bool,
    /// Level last driven on the interrupt line.
    pub irq_level: bool,
    /// The modem inputs the outside world drives when not in loopback.
    pub external_msr: u8,
}

impl Default for SerialState {
    fn default() -> Self {
        SerialState {
            ier: 0,
            fcr: 0,
            lcr: 0,
            mcr: 0,
            lsr_errors: 0,
            msr: MSR_CONNECTED,
            scr: 0,
            // 115200 / 12 = 9600 baud, as a BIOS leaves it.
            dll: 12,
            dlm: 0,
            rx: VecDeque::with_capacity(FIFO_SIZE),
            thre_pending: false,
            irq_level: false,
            external_msr: MSR_CONNECTED,
        }
    }
}

/// One 16550A UART with its interrupt line and output sink.
pub struct Serial16550 {
    state: SerialState,
    irq: IrqLine,
    out: Box<dyn Write>,
    /// Accesses the hardware ignores (offsets past 7) and sink write errors.
    ignored: u64,
}

impl Serial16550 {
    pub fn new(irq: IrqLine, out: Box<dyn Write>) -> Self {
        Serial16550 {
            state: SerialState::default(),
            irq,
            out,
            ignored: 0,
        }
    }

    /// The register state (for snapshots and debugging).
    pub fn state(&self) -> &SerialState {
        &self.state
    }

    /// Put back a snapshot's state and drive the line to its level.
    pub fn restore(&mut self, state: SerialState) {
        self.state = state;
        self.irq.set(self.state.irq_level);
    }

    /// Accesses that were ignored (bad offsets) or output that failed.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    fn fifo_enabled(&self) -> bool {
        self.state.fcr & FCR_ENABLE != 0
    }

    fn dlab(&self) -> bool {
        self.state.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.state.mcr & MCR_LOOP != 0
    }

    /// Receive capacity: the FIFO, or the single RBR in 16450 mode.
    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled() {
            FIFO_SIZE
        } else {
            1
        }
    }

    /// Receive FIFO trigger level from FCR bits 6-7 (datasheet table: 1, 4,
    /// 8, 14 bytes).
    fn rx_trigger(&self) -> usize {
        match self.state.fcr >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    /// Free room in the receive FIFO.
    pub fn rx_space(&self) -> usize {
        self.rx_capacity().saturating_sub(self.state.rx.len())
    }

    /// Queue received bytes from the outside world; returns how many fit.
    /// In loopback mode the line is disconnected and nothing is accepted.
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        if self.loopback() {
            return 0;
        }
        let n = bytes.len().min(self.rx_space());
        self.state.rx.extend(&bytes[..n]);
        if n > 0 {
            self.update_irq();
        }
        n
    }

    /// A byte arriving on the receiver: into the FIFO, or an overrun when it
    /// is full (the byte is lost, PC16550D 8.6.3).
    fn receive(&mut self, byte: u8) {
        if self.state.rx.len() < self.rx_capacity() {
            self.state.rx.push_back(byte);
        } else {
            self.state.lsr_errors |= LSR_OE;
        }
    }

    fn lsr(&self) -> u8 {
        let mut v = self.state.lsr_errors | LSR_THRE | LSR_TEMT;
        if !self.state.rx.is_empty() {
            v |= LSR_DR;
        }
        v
    }

    /// The highest-priority pending interrupt's identification (the IIR low
    /// nibble), PC16550D table "Interrupt Control Functions".
    fn interrupt_id(&self) -> u8 {
        let s = &self.state;
        if s.ier & IER_ELSI != 0 && s.lsr_errors & LSR_ERRORS != 0 {
            return IIR_RLS;
        }
        if s.ier & IER_ERBFI != 0 && !s.rx.is_empty() {
            if !self.fifo_enabled() || s.rx.len() >= self.rx_trigger() {
                return IIR_RDA;
            }
            return IIR_CTI;
        }
        if s.ier & IER_ETBEI != 0 && s.thre_pending {
            return IIR_THRE;
        }
        if s.ier & IER_EDSSI != 0 && s.msr & MSR_DELTAS != 0 {
            return IIR_MSI;
        }
        IIR_NO_INT
    }

    /// Drive the interrupt line: the UART's INTRPT output, passed onto the
    /// ISA bus only while MCR.OUT2 is set (the PC's tri-state buffer).
    fn update_irq(&mut self) {
        let level = self.interrupt_id() != IIR_NO_INT && self.state.mcr & MCR_OUT2 != 0;
        if level != self.state.irq_level {
            self.state.irq_level = level;
            self.irq.set(level);
        }
    }

    /// Recompute MSR's inputs from MCR (loopback) or the outside, setting the
    /// delta bits for whatever changed.
    fn set_modem_inputs(&mut self, inputs: u8) {
        let old = self.state.msr;
        let changed = (old ^ inputs) & 0xf0;
        let mut deltas = old & MSR_DELTAS;
        if changed & MSR_CTS != 0 {
            deltas |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            deltas |= MSR_DDSR;
        }
        if changed & MSR_DCD != 0 {
            deltas |= MSR_DDCD;
        }
        // TERI: only the trailing edge of RI (on -> off).
        if old & MSR_RI != 0 && inputs & MSR_RI == 0 {
            deltas |= MSR_TERI;
        }
        self.state.msr = (inputs & 0xf0) | deltas;
    }

    /// The modem inputs as loopback wires them: DTR->DSR, RTS->CTS,
    /// OUT1->RI, OUT2->DCD (PC16550D 8.6.5).
    fn loopback_inputs(mcr: u8) -> u8 {
        let mut v = 0;
        if mcr & MCR_DTR != 0 {
            v |= MSR_DSR;
        }
        if mcr & MCR_RTS != 0 {
            v |= MSR_CTS;
        }
        if mcr & MCR_OUT1 != 0 {
            v |= MSR_RI;
        }
        if mcr & MCR_OUT2 != 0 {
            v |= MSR_DCD;
        }
        v
    }

    /// Set the modem inputs the outside world drives (carrier, ring...).
    /// Takes effect when not in loopback.
    pub fn set_external_modem_inputs(&mut self, msr_inputs: u8) {
        self.state.external_msr = msr_inputs & 0xf0;
        if !self.loopback() {
            self.set_modem_inputs(self.state.external_msr);
            self.update_irq();
        }
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        let v = match offset {
            // DLAB set: divisor latch low byte.
            RBR_THR_DLL if self.dlab() => self.state.dll,
            // Receiver buffer: the oldest byte of the FIFO (0 when empty).
            RBR_THR_DLL => self.state.rx.pop_front().unwrap_or(0),
            // DLAB set: divisor latch high byte.
            IER_DLM if self.dlab() => self.state.dlm,
            // Interrupt enable register.
            IER_DLM => self.state.ier,
            // Interrupt identification; reading it acknowledges a THRE
            // interrupt when that is what it reports (PC16550D table 4).
            IIR_FCR => {
                let id = self.interrupt_id();
                if id == IIR_THRE {
                    self.state.thre_pending = false;
                }
                let fifo = if self.fifo_enabled() {
                    IIR_FIFO_ENABLED
                } else {
                    0
                };
                id | fifo
            }
            // Line control register.
            LCR => self.state.lcr,
            // Modem control register.
            MCR => self.state.mcr,
            // Line status; reading clears the error bits.
            LSR => {
                let v = self.lsr();
                self.state.lsr_errors = 0;
                v
            }
            // Modem status; reading clears the delta bits.
            MSR => {
                let v = self.state.msr;
                self.state.msr &= !MSR_DELTAS;
                v
            }
            // Scratch register.
            SCR => self.state.scr,
            _ => {
                self.ignored += 1;
                0xff
            }
        };
        self.update_irq();
        v
    }

    pub fn write(&mut self, offset: u8, value: u8) {
        match offset {
            // DLAB set: divisor latch low byte.
            RBR_THR_DLL if self.dlab() => self.state.dll = value,
            // Transmitter holding register: the byte leaves at once (to the
            // sink, or back into the receiver in loopback), so THR is empty
            // again and its interrupt re-arms.
            RBR_THR_DLL => {
                if self.loopback() {
                    self.receive(value);
                } else if self
                    .out
                    .write_all(&[value])
                    .and_then(|_| self.out.flush())
                    .is_err()
                {
                    self.ignored += 1;
                }
                self.state.thre_pending = true;
            }
            // DLAB set: divisor latch high byte.
            IER_DLM if self.dlab() => self.state.dlm = value,
            // Interrupt enable: setting ETBEI while THR is empty (always, as
            // transmission is instantaneous) makes a THRE interrupt pending;
            // Linux's start_tx and its THRE test rely on this.
            IER_DLM => {
                let old = self.state.ier;
                self.state.ier = value & IER_MASK;
                if old & IER_ETBEI == 0 && value & IER_ETBEI != 0 {
                    self.state.thre_pending = true;
                }
            }
            // FIFO control: enable (a change clears both FIFOs), clear RX/TX,
            // trigger level.
            IIR_FCR => {
                let toggled = (self.state.fcr ^ value) & FCR_ENABLE != 0;
                if toggled || value & FCR_CLEAR_RX != 0 {
                    self.state.rx.clear();
                }
                // TX FIFO clear: nothing is ever queued for transmission.
                self.state.fcr = value & (FCR_ENABLE | FCR_DMA_MODE | FCR_TRIGGER_MASK);
                if self.state.fcr & FCR_ENABLE == 0 {
                    // In 16450 mode the trigger field has no meaning.
                    self.state.fcr = 0;
                }
            }
            // Line control: data format, break, DLAB.
            LCR => self.state.lcr = value,
            // Modem control: outputs, loopback.
            MCR => {
                self.state.mcr = value & MCR_MASK;
                let inputs = if self.loopback() {
                    Self::loopback_inputs(self.state.mcr)
                } else {
                    self.state.external_msr
                };
                self.set_modem_inputs(inputs);
            }
            // Line status is read-only (factory test writes are ignored).
            LSR => self.ignored += 1,
            // Modem status is read-only.
            MSR => self.ignored += 1,
            // Scratch register.
            SCR => self.state.scr = value,
            _ => self.ignored += 1,
        }
        self.update_irq();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    use crate::testutil::{LineLevel, SharedBuf as Sink};

    /// COM1's IRQ 4.
    type Level = LineLevel<4>;

    fn uart() -> (Serial16550, Rc<RefCell<Level>>, Sink) {
        let level = Rc::new(RefCell::new(Level::default()));
        let sink = Sink::default();
        let u = Serial16550::new(IrqLine::new(level.clone(), 4), Box::new(sink.clone()));
        (u, level, sink)
    }

    #[test]
    fn thr_goes_to_sink_and_lsr_shows_empty() {
        let (mut u, _, sink) = uart();
        for b in b"hi" {
            u.write(0, *b);
        }
        assert_eq!(&*sink.0.borrow(), b"hi");
        // THRE | TEMT, no data.
        assert_eq!(u.read(LSR), 0x60);
    }

    #[test]
    fn dlab_switches_offsets_0_and_1() {
        let (mut u, _, sink) = uart();
        u.write(LCR, 0x83); // DLAB, 8N1
        u.write(0, 0x01);
        u.write(1, 0x00);
        assert_eq!(u.read(0), 0x01);
        assert_eq!(u.read(1), 0x00);
        u.write(LCR, 0x03);
        assert!(sink.0.borrow().is_empty(), "DLL write must not transmit");
        u.write(1, 0xff);
        assert_eq!(u.read(1), 0x0f, "IER has four bits");
        u.write(LCR, 0x83);
        assert_eq!(u.read(0), 0x01, "divisor kept");
    }

    #[test]
    fn thre_interrupt_rearm_rules() {
        let (mut u, level, _) = uart();
        u.write(MCR, MCR_OUT2);
        assert_eq!(u.read(IIR_FCR), 0x01);
        // Enabling ETBEI with THR empty: THRE interrupt pending at once.
        u.write(IER_DLM, IER_ETBEI);
        assert!(level.borrow().0);
        assert_eq!(u.read(IIR_FCR), 0x02);
        // Reading IIR while THRE was the source cleared it.
        assert_eq!(u.read(IIR_FCR), 0x01);
        assert!(!level.borrow().0);
        // Writing THR: empty again after instant transmit, so it re-arms.
        u.write(0, b'x');
        assert_eq!(u.read(IIR_FCR), 0x02);
        // Linux's THRE test: IER=0 then IER=ETBEI re-asserts.
        u.write(IER_DLM, 0);
        assert_eq!(u.read(IIR_FCR), 0x01);
        u.write(IER_DLM, IER_ETBEI);
        assert_eq!(u.read(IIR_FCR), 0x02);
    }

    #[test]
    fn out2_gates_the_irq_line() {
        let (mut u, level, _) = uart();
        u.write(IER_DLM, IER_ERBFI);
        assert_eq!(u.push_input(b"a"), 1);
        assert_eq!(u.read(IIR_FCR) & 0x0f, 0x04);
        assert!(!level.borrow().0, "OUT2 clear: line not driven");
        u.write(MCR, MCR_OUT2);
        assert!(level.borrow().0);
        assert_eq!(u.read(0), b'a');
        assert!(!level.borrow().0);
    }

    #[test]
    fn fifo_trigger_levels_and_timeout() {
        let (mut u, _, _) = uart();
        u.write(IER_DLM, IER_ERBFI);
        // Enable FIFO with a trigger of 4 bytes (FCR bits 7:6 = 01).
        u.write(IIR_FCR, 0x41);
        assert_eq!(u.rx_space(), 16);
        u.push_input(b"abc");
        // Below trigger: character timeout (0xC), FIFO bits set.
        assert_eq!(u.read(IIR_FCR), 0xcc);
        u.push_input(b"d");
        assert_eq!(u.read(IIR_FCR), 0xc4);
        // Only 16 bytes fit.
        assert_eq!(u.push_input(&[0u8; 20]), 12);
        assert_eq!(u.rx_space(), 0);
        // Trigger 14 (11): 16 >= 14.
        u.write(IIR_FCR, 0xc1);
        assert_eq!(u.read(IIR_FCR), 0xc4);
        // FIFO reset empties it.
        u.write(IIR_FCR, 0xc3);
        assert_eq!(u.read(LSR) & LSR_DR, 0);
        assert_eq!(u.read(IIR_FCR), 0xc1);
        // Disabling the FIFO: one-byte holding register, IIR bits 7:6 = 0.
        u.write(IIR_FCR, 0);
        assert_eq!(u.rx_space(), 1);
        assert_eq!(u.push_input(b"xy"), 1);
        assert_eq!(u.read(IIR_FCR), 0x04);
    }

    #[test]
    fn priorities_line_status_over_data_over_thre_over_modem() {
        let (mut u, _, _) = uart();
        u.write(IIR_FCR, 0x01);
        u.write(IER_DLM, 0x0f);
        // Loopback with RTS only: CTS stays on, DSR and DCD (on from the
        // connected terminal) drop, so DDSR and DDCD are pending.
        u.write(MCR, MCR_LOOP | MCR_RTS);
        // THRE is pending from enabling ETBEI.
        assert_eq!(u.read(IIR_FCR) & 0x0f, 0x02);
        // Now only modem status remains.
        assert_eq!(u.read(IIR_FCR) & 0x0f, 0x00);
        // Overflow the FIFO through loopback: 17 bytes -> OE.
        for i in 0..17 {
            u.write(0, i);
        }
        assert_eq!(u.read(IIR_FCR) & 0x0f, 0x06, "line status first");
        let lsr = u.read(LSR);
        assert_eq!(lsr & (LSR_OE | LSR_DR), LSR_OE | LSR_DR);
        assert_eq!(u.read(IIR_FCR) & 0x0f, 0x04, "then received data");
        for i in 0..16 {
            assert_eq!(u.read(0), i);
        }
        assert_eq!(
            u.read(IIR_FCR) & 0x0f,
            0x02,
            "then THRE (re-armed by THR writes)"
        );
        assert_eq!(u.read(IIR_FCR) & 0x0f, 0x00, "then modem status");
        assert_eq!(u.read(MSR), MSR_CTS | MSR_DDSR | MSR_DDCD);
        assert_eq!(u.read(IIR_FCR), 0xc1, "reading MSR cleared the delta");
    }

    #[test]
    fn loopback_routes_tx_and_modem_outputs() {
        let (mut u, _, sink) = uart();
        // Linux's autoconfig check: MCR = LOOP | RTS | OUT2 -> MSR high
        // nibble = CTS | DCD = 0x90.
        u.write(MCR, MCR_LOOP | MCR_RTS | MCR_OUT2);
        assert_eq!(u.read(MSR) & 0xf0, 0x90);
        u.write(0, 0x5a);
        assert!(sink.0.borrow().is_empty());
        assert_eq!(u.read(LSR) & LSR_DR, LSR_DR);
        assert_eq!(u.read(0), 0x5a);
        // DTR -> DSR, OUT1 -> RI; dropping OUT1 later sets TERI.
        u.write(MCR, MCR_LOOP | MCR_DTR | MCR_OUT1);
        assert_eq!(u.read(MSR) & 0xf0, MSR_DSR | MSR_RI);
        u.write(MCR, MCR_LOOP | MCR_DTR);
        assert_eq!(u.read(MSR), MSR_DSR | MSR_TERI);
        // Leaving loopback: inputs of a connected terminal come back.
        u.write(MCR, 0);
        assert_eq!(u.read(MSR) & 0xf0, 0xb0);
        assert_eq!(u.push_input(b"z"), 1);
    }

    /// The checks Linux's 8250 autoconfig makes, in order, and what a
    /// 16550A must answer for it to be detected as PORT_16550A.
    #[test]
    fn linux_autoconfig_sees_a_16550a() {
        let (mut u, _, _) = uart();
        // IER test: 0 reads 0, 0x0F reads 0x0F.
        u.write(IER_DLM, 0);
        assert_eq!(u.read(IER_DLM) & 0x0f, 0);
        u.write(IER_DLM, 0x0f);
        assert_eq!(u.read(IER_DLM) & 0x0f, 0x0f);
        u.write(IER_DLM, 0);
        // Loopback test: MCR = LOOP | 0x0A -> MSR high nibble 0x90.
        u.write(MCR, MCR_LOOP | 0x0a);
        assert_eq!(u.read(MSR) & 0xf0, 0x90);
        u.write(MCR, 0);
        // FIFO: IIR >> 6 == 3 means 16550A.
        u.write(LCR, 0xbf);
        u.write(IIR_FCR, 0);
        u.write(LCR, 0);
        u.write(IIR_FCR, FCR_ENABLE);
        assert_eq!(u.read(IIR_FCR) >> 6, 3);
        // No EFR under LCR = 0x80 or 0xBF: offset 2 must not read 0.
        u.write(LCR, 0x80);
        assert_ne!(u.read(IIR_FCR), 0);
        u.write(LCR, 0xbf);
        assert_ne!(u.read(IIR_FCR), 0);
        // National SuperIO check: IIR bit 4 must not follow MCR.LOOP.
        u.write(LCR, 0);
        u.write(MCR, MCR_LOOP);
        u.write(LCR, 0xe0);
        assert_eq!(u.read(IIR_FCR) & 0x10, 0);
        u.write(LCR, 0);
        u.write(MCR, 0);
        // Not a 16750: 64-byte FIFO bit (FCR/IIR bit 5) stays clear, with
        // and without DLAB.
        u.write(IIR_FCR, FCR_ENABLE | 0x20);
        assert_eq!(u.read(IIR_FCR) & 0x20, 0);
        u.write(LCR, LCR_DLAB);
        u.write(IIR_FCR, FCR_ENABLE | 0x20);
        u.write(LCR, 0);
        assert_eq!(u.read(IIR_FCR) & 0x20, 0);
        // Not an XScale: IER bit 6 (UUE) does not stick.
        u.write(IER_DLM, 0x40);
        assert_eq!(u.read(IER_DLM) & 0x40, 0);
        // LSR safety check: LSR must not read 0xFF.
        assert_ne!(u.read(LSR), 0xff);
    }

    #[test]
    fn scratch_and_bad_offsets() {
        let (mut u, _, _) = uart();
        u.write(SCR, 0xa5);
        assert_eq!(u.read(SCR), 0xa5);
        assert_eq!(u.read(8), 0xff);
        u.write(200, 1);
        assert_eq!(u.ignored(), 2);
    }
}
