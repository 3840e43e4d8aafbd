//! Test doubles shared by the device tests: an output sink whose bytes the
//! test can read back, and one interrupt line's level.

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

use crate::IrqSink;

/// A `Write` sink; clones share the buffer, so the test keeps one.
#[derive(Clone, Default)]
pub struct SharedBuf(pub Rc<RefCell<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The level of one interrupt line; a device driving any other IRQ fails
/// the test.
#[derive(Default)]
pub struct LineLevel<const IRQ: u8>(pub bool);

impl<const IRQ: u8> IrqSink for LineLevel<IRQ> {
    fn set_irq(&mut self, irq: u8, level: bool) {
        assert_eq!(irq, IRQ);
        self.0 = level;
    }
}
