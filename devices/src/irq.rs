//! Interrupt lines from devices to the interrupt controller, and the
//! requests a device can make of the machine (power off, reset, exit).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// What receives interrupt request levels: the i8259 pair on a PC.
pub trait IrqSink {
    /// Drive ISA line `irq` (0-15) to `level` (true = asserted).
    fn set_irq(&mut self, irq: u8, level: bool);
}

/// One interrupt request line, given to a device at construction.
#[derive(Clone)]
pub struct IrqLine {
    sink: Rc<RefCell<dyn IrqSink>>,
    irq: u8,
}

impl IrqLine {
    pub fn new(sink: Rc<RefCell<dyn IrqSink>>, irq: u8) -> Self {
        IrqLine { sink, irq }
    }

    /// The ISA IRQ number this line drives.
    pub fn number(&self) -> u8 {
        self.irq
    }

    pub fn set(&self, level: bool) {
        self.sink.borrow_mut().set_irq(self.irq, level);
    }

    pub fn raise(&self) {
        self.set(true);
    }

    pub fn lower(&self) {
        self.set(false);
    }

    /// An edge: assert then deassert (an edge-triggered request).
    pub fn pulse(&self) {
        self.set(true);
        self.set(false);
    }
}

/// What a device can ask of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformRequest {
    /// ACPI S5: the guest powered off (process exit status 0).
    PowerOff,
    /// System reset (i8042 pulse, port 0xCF9).
    Reset,
    /// A byte written to the test exit port: exit status (v << 1) | 1.
    Exit(u8),
}

/// A mailbox for the first `PlatformRequest` of a run, shared between
/// devices and the machine loop.
#[derive(Clone, Default)]
pub struct Requests(Rc<Cell<Option<PlatformRequest>>>);

impl Requests {
    pub fn new() -> Self {
        Self::default()
    }

    /// Post a request; the first one stands until the machine takes it.
    pub fn post(&self, r: PlatformRequest) {
        if self.0.get().is_none() {
            self.0.set(Some(r));
        }
    }

    pub fn peek(&self) -> Option<PlatformRequest> {
        self.0.get()
    }

    pub fn take(&self) -> Option<PlatformRequest> {
        self.0.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Levels(Vec<(u8, bool)>);
    impl IrqSink for Levels {
        fn set_irq(&mut self, irq: u8, level: bool) {
            self.0.push((irq, level));
        }
    }

    #[test]
    fn line_drives_its_irq_and_requests_keep_the_first() {
        let sink = Rc::new(RefCell::new(Levels::default()));
        let line = IrqLine::new(sink.clone(), 4);
        line.pulse();
        assert_eq!(sink.borrow().0, vec![(4, true), (4, false)]);
        let r = Requests::new();
        r.post(PlatformRequest::Exit(3));
        r.post(PlatformRequest::PowerOff);
        assert_eq!(r.take(), Some(PlatformRequest::Exit(3)));
        assert_eq!(r.take(), None);
    }
}
