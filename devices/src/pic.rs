//! The cascaded Intel 8259A programmable interrupt controller pair of the
//! PC: master at ports 0x20/0x21, slave at 0xA0/0xA1 wired to master IR2,
//! and the PIIX edge/level control registers (ELCR) at 0x4D0/0x4D1.
//!
//! It owns the ISA IRQ lines 0-15 (through `IrqSink`), the IRR/ISR/IMR of
//! both chips, the ICW1-ICW4 initialisation sequence, the OCW1-OCW3
//! commands (EOI, rotation, special mask, poll, register read select) and
//! the INTA cycle that hands a vector to the CPU. It does not own the local
//! APIC or I/O APIC, nor 8080/8085 call-address mode (the µPM bit is
//! recorded; a PC always runs the chips in 8086 mode).
//!
//! Behaviour follows the Intel 8259A datasheet (order no. 231468) and the
//! PIIX4 datasheet section 4.1 (ELCR). Edge-triggered requests are latched
//! in IRR on the rising edge and stay latched until INTA, so a device may
//! pulse its line; level-triggered requests follow the line. A poll
//! command acknowledges on the polled chip only (a master poll answering
//! IR2 does not also acknowledge the slave).

use serde::{Deserialize, Serialize};
use umbra_core::bus::InterruptController;

use crate::irq::IrqSink;

/// Master command port (ICW1, OCW2, OCW3; reads IRR/ISR/poll).
pub const MASTER_CMD: u16 = 0x20;
/// Master data port (ICW2-ICW4, OCW1; reads IMR).
pub const MASTER_DATA: u16 = 0x21;
/// Slave command port.
pub const SLAVE_CMD: u16 = 0xA0;
/// Slave data port.
pub const SLAVE_DATA: u16 = 0xA1;
/// ELCR for IRQ0-7 (PIIX).
pub const ELCR_MASTER: u16 = 0x4D0;
/// ELCR for IRQ8-15 (PIIX).
pub const ELCR_SLAVE: u16 = 0x4D1;

/// The master IR input the slave's INT output drives.
pub const CASCADE_IR: u8 = 2;

/// ICW1: this write is ICW1 (on the command port).
const ICW1_INIT: u8 = 1 << 4;
/// ICW1: level-triggered mode for all inputs.
const ICW1_LTIM: u8 = 1 << 3;
/// ICW1: single chip (no ICW3).
const ICW1_SNGL: u8 = 1 << 1;
/// ICW1: ICW4 follows.
const ICW1_IC4: u8 = 1 << 0;

/// ICW4: special fully nested mode.
const ICW4_SFNM: u8 = 1 << 4;
/// ICW4: automatic end of interrupt.
const ICW4_AEOI: u8 = 1 << 1;
/// ICW4: 8086/8088 mode (clear = 8080/8085 call mode).
const ICW4_UPM: u8 = 1 << 0;

/// OCW3 marker: bit 3 set, bit 4 clear on the command port.
const OCW3_SELECT: u8 = 1 << 3;
/// OCW3: ESMM, the SMM bit is valid.
const OCW3_ESMM: u8 = 1 << 6;
/// OCW3: SMM, special mask mode on.
const OCW3_SMM: u8 = 1 << 5;
/// OCW3: poll command.
const OCW3_POLL: u8 = 1 << 2;
/// OCW3: RR, the RIS bit is valid.
const OCW3_RR: u8 = 1 << 1;
/// OCW3: RIS, read ISR (clear = read IRR).
const OCW3_RIS: u8 = 1 << 0;

/// Poll byte: an interrupt was pending (bits 2:0 give its level).
const POLL_INT: u8 = 1 << 7;

/// ELCR bits that are hard-wired to edge on PIIX: IRQ0, 1, 2.
const ELCR_MASTER_MASK: u8 = 0xF8;
/// ELCR bits that are hard-wired to edge on PIIX: IRQ8, 13.
const ELCR_SLAVE_MASK: u8 = 0xDE;

/// Where the chip is in its initialisation sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitStep {
    /// Initialised: data-port writes are OCW1.
    #[default]
    Ready,
    /// Next data-port write is ICW2.
    Icw2,
    /// Next data-port write is ICW3.
    Icw3,
    /// Next data-port write is ICW4.
    Icw4,
}

/// The registers of one 8259A.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pic8259State {
    /// Interrupt request register.
    pub irr: u8,
    /// In-service register.
    pub isr: u8,
    /// Interrupt mask register (OCW1).
    pub imr: u8,
    /// Current input line levels (for edge detection and level mode).
    pub lines: u8,
    /// PIIX edge/level control: set bits are level triggered.
    pub elcr: u8,
    /// ICW1 as last written.
    pub icw1: u8,
    /// Vector base (ICW2 with bits 2:0 clear).
    pub vector_base: u8,
    /// ICW3 as last written (master: slave map; slave: its ID).
    pub icw3: u8,
    /// ICW4 as last written (zero when ICW1 said none follows).
    pub icw4: u8,
    /// Initialisation sequence position.
    pub init: InitStep,
    /// OCW3 register read select: true = ISR, false = IRR.
    pub read_isr: bool,
    /// OCW3 poll command pending: next command-port read is the poll byte.
    pub poll: bool,
    /// OCW3 special mask mode.
    pub special_mask: bool,
    /// Rotate in automatic EOI mode (OCW2 R=1, SL=0, EOI=0).
    pub rotate_on_aeoi: bool,
    /// The IR level with the lowest priority is `(priority_add + 7) & 7`:
    /// IR `priority_add` has the highest priority (rotation, OCW2).
    pub priority_add: u8,
}

impl Pic8259State {
    fn level_triggered(&self) -> u8 {
        if self.icw1 & ICW1_LTIM != 0 {
            0xFF
        } else {
            self.elcr
        }
    }

    fn auto_eoi(&self) -> bool {
        self.icw4 & ICW4_AEOI != 0
    }

    /// Drive IR input `ir` to `level`. Edge mode latches IRR on a rising
    /// edge and keeps it latched; level mode makes IRR follow the line.
    fn set_line(&mut self, ir: u8, level: bool) {
        let bit = 1u8 << (ir & 7);
        let was = self.lines & bit != 0;
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        if self.level_triggered() & bit != 0 {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if level && !was {
            self.irr |= bit;
        }
    }

    /// The priority rank (0 = highest) of the highest-priority bit in
    /// `mask`, or 8 if none is set.
    fn best_rank(&self, mask: u8) -> u8 {
        (0..8)
            .find(|rank| mask & (1 << ((rank + self.priority_add) & 7)) != 0)
            .unwrap_or(8)
    }

    fn rank_to_ir(&self, rank: u8) -> u8 {
        (rank + self.priority_add) & 7
    }

    /// The IR level this chip would present at INTA, if its INT output is
    /// asserted: the highest-priority unmasked request that outranks every
    /// in-service level (datasheet: priority resolver; special mask mode
    /// lets lower levels through past masked in-service ones; SFNM on the
    /// master lets a cascade input interrupt its own in-service level).
    fn pending(&self, is_master: bool) -> Option<u8> {
        let req = self.irr & !self.imr;
        let rank = self.best_rank(req);
        if rank == 8 {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if is_master && self.icw4 & ICW4_SFNM != 0 {
            in_service &= !(1 << CASCADE_IR);
        }
        if rank < self.best_rank(in_service) {
            Some(self.rank_to_ir(rank))
        } else {
            None
        }
    }

    /// INTA for level `ir`: set ISR (unless AEOI), clear an edge IRR bit.
    fn acknowledge(&mut self, ir: u8) {
        let bit = 1u8 << (ir & 7);
        if self.auto_eoi() {
            if self.rotate_on_aeoi {
                self.priority_add = (ir + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
        if self.level_triggered() & bit == 0 {
            self.irr &= !bit;
        }
    }

    /// ICW1: reset the chip's mode as the datasheet lists (IMR cleared, IR7
    /// lowest priority, special mask off, read IRR, edge sense reset).
    fn icw1(&mut self, value: u8) {
        self.icw1 = value;
        self.init = InitStep::Icw2;
        self.imr = 0;
        self.isr = 0;
        // Edge sense reset: an edge request needs a new rising edge; level
        // requests still follow their lines.
        self.irr = self.lines & self.level_triggered();
        self.priority_add = 0;
        self.special_mask = false;
        self.read_isr = false;
        self.poll = false;
        self.rotate_on_aeoi = false;
        if value & ICW1_IC4 == 0 {
            self.icw4 = 0;
        }
    }
}

/// Counters for accesses the model ignores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicStats {
    /// ICW4 written without the 8086 mode bit.
    pub mode_8080: u64,
    /// Accesses to ports this device does not decode.
    pub bad_port: u64,
    /// OCW2 no-operation commands.
    pub ocw2_nop: u64,
}

/// The master and slave 8259A of the PC.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pic8259Pair {
    pub master: Pic8259State,
    pub slave: Pic8259State,
    pub stats: PicStats,
}

impl Pic8259Pair {
    pub fn new() -> Self {
        Self::default()
    }

    /// INTR to the CPU: the master has a request that beats its ISR.
    pub fn intr(&self) -> bool {
        self.master.pending(true).is_some()
    }

    /// An INTA cycle: the vector of the highest-priority request, marking
    /// it in service. With nothing pending the chip answers with IR7 of
    /// its base (spurious, no ISR bit). A master IR2 request whose slave
    /// has nothing pending sets master ISR2 and returns the slave's IR7
    /// vector, as the 8259A does (datasheet: "spurious interrupt").
    pub fn ack(&mut self) -> u8 {
        let vector = match self.master.pending(true) {
            Some(CASCADE_IR) => {
                self.master.acknowledge(CASCADE_IR);
                match self.slave.pending(false) {
                    Some(ir) => {
                        self.slave.acknowledge(ir);
                        self.slave.vector_base | ir
                    }
                    None => self.slave.vector_base | 7,
                }
            }
            Some(ir) => {
                self.master.acknowledge(ir);
                self.master.vector_base | ir
            }
            None => self.master.vector_base | 7,
        };
        self.update_cascade();
        vector
    }

    /// Bring the master's IR2 input to the slave's INT output.
    fn update_cascade(&mut self) {
        let slave_int = self.slave.pending(false).is_some();
        self.master.set_line(CASCADE_IR, slave_int);
    }

    pub fn read(&mut self, port: u16) -> u8 {
        let value = match port {
            // Command port: the poll byte if a poll command is pending,
            // else IRR or ISR as OCW3 selected.
            MASTER_CMD => self.read_cmd(true),
            SLAVE_CMD => self.read_cmd(false),
            // Data port: the interrupt mask register.
            MASTER_DATA => self.master.imr,
            SLAVE_DATA => self.slave.imr,
            // ELCR: which inputs are level triggered.
            ELCR_MASTER => self.master.elcr,
            ELCR_SLAVE => self.slave.elcr,
            _ => {
                self.stats.bad_port += 1;
                0xFF
            }
        };
        self.update_cascade();
        value
    }

    fn read_cmd(&mut self, is_master: bool) -> u8 {
        let chip = if is_master {
            &mut self.master
        } else {
            &mut self.slave
        };
        if chip.poll {
            // Poll mode (datasheet "The Poll Command"): the read is the
            // interrupt acknowledge; bit 7 says whether one was pending.
            chip.poll = false;
            match chip.pending(is_master) {
                Some(ir) => {
                    chip.acknowledge(ir);
                    POLL_INT | ir
                }
                None => 0,
            }
        } else if chip.read_isr {
            chip.isr
        } else {
            chip.irr
        }
    }

    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            MASTER_CMD => self.write_cmd(true, value),
            SLAVE_CMD => self.write_cmd(false, value),
            MASTER_DATA => self.write_data(true, value),
            SLAVE_DATA => self.write_data(false, value),
            // ELCR: set bits make the input level triggered (IRQ0-2 and
            // IRQ8/13 are always edge on PIIX).
            ELCR_MASTER => {
                self.master.elcr = value & ELCR_MASTER_MASK;
                self.master.irr = self.refresh_level_irr(true);
            }
            ELCR_SLAVE => {
                self.slave.elcr = value & ELCR_SLAVE_MASK;
                self.slave.irr = self.refresh_level_irr(false);
            }
            _ => self.stats.bad_port += 1,
        }
        self.update_cascade();
    }

    /// After a trigger-mode change, level inputs' IRR bits follow their
    /// lines; edge inputs keep what they latched.
    fn refresh_level_irr(&self, is_master: bool) -> u8 {
        let chip = if is_master { &self.master } else { &self.slave };
        let level = chip.level_triggered();
        (chip.irr & !level) | (chip.lines & level)
    }

    fn write_cmd(&mut self, is_master: bool, value: u8) {
        let chip = if is_master {
            &mut self.master
        } else {
            &mut self.slave
        };
        if value & ICW1_INIT != 0 {
            // ICW1: start initialisation.
            chip.icw1(value);
        } else if value & OCW3_SELECT != 0 {
            // OCW3: special mask mode, poll, register read select.
            if value & OCW3_ESMM != 0 {
                chip.special_mask = value & OCW3_SMM != 0;
            }
            if value & OCW3_RR != 0 {
                chip.read_isr = value & OCW3_RIS != 0;
            }
            chip.poll = value & OCW3_POLL != 0;
        } else {
            // OCW2: R, SL, EOI in bits 7:5, level in bits 2:0.
            let level = value & 7;
            match value >> 5 {
                // Non-specific EOI: clear the highest-priority ISR bit.
                0b001 | 0b101 => {
                    let rank = chip.best_rank(chip.isr);
                    if rank < 8 {
                        let ir = chip.rank_to_ir(rank);
                        chip.isr &= !(1 << ir);
                        if value >> 5 == 0b101 {
                            // Rotate on non-specific EOI: it becomes lowest.
                            chip.priority_add = (ir + 1) & 7;
                        }
                    }
                }
                // Specific EOI: clear ISR bit `level`.
                0b011 => chip.isr &= !(1 << level),
                // Rotate on specific EOI.
                0b111 => {
                    chip.isr &= !(1 << level);
                    chip.priority_add = (level + 1) & 7;
                }
                // Set priority: `level` becomes the lowest.
                0b110 => chip.priority_add = (level + 1) & 7,
                // Rotate in automatic EOI mode: set.
                0b100 => chip.rotate_on_aeoi = true,
                // Rotate in automatic EOI mode: clear.
                0b000 => chip.rotate_on_aeoi = false,
                // 0b010: no operation.
                _ => self.stats.ocw2_nop += 1,
            }
        }
    }

    fn write_data(&mut self, is_master: bool, value: u8) {
        let chip = if is_master {
            &mut self.master
        } else {
            &mut self.slave
        };
        match chip.init {
            // OCW1: the interrupt mask.
            InitStep::Ready => chip.imr = value,
            // ICW2: vector base (T7-T3; the low bits come from the level).
            InitStep::Icw2 => {
                chip.vector_base = value & 0xF8;
                chip.init = if chip.icw1 & ICW1_SNGL == 0 {
                    InitStep::Icw3
                } else if chip.icw1 & ICW1_IC4 != 0 {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            // ICW3: cascade wiring. The PC's is fixed (slave on IR2), so
            // this is recorded only.
            InitStep::Icw3 => {
                chip.icw3 = value;
                chip.init = if chip.icw1 & ICW1_IC4 != 0 {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            // ICW4: µPM, AEOI, buffered mode, SFNM.
            InitStep::Icw4 => {
                chip.icw4 = value;
                chip.init = InitStep::Ready;
                if value & ICW4_UPM == 0 {
                    self.stats.mode_8080 += 1;
                    tracing::debug!("8259: ICW4 without 8086 mode ignored");
                }
            }
        }
    }
}

impl IrqSink for Pic8259Pair {
    fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            0..=7 => self.master.set_line(irq, level),
            8..=15 => self.slave.set_line(irq - 8, level),
            _ => return,
        }
        self.update_cascade();
    }
}

impl InterruptController for Pic8259Pair {
    fn intr(&self) -> bool {
        Pic8259Pair::intr(self)
    }

    fn ack(&mut self) -> u8 {
        Pic8259Pair::ack(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's init_8259A sequence: master base 0x30, slave 0x38, master
    /// ICW3 = 0x04 (slave on IR2), slave ICW3 = 2, 8086 mode, normal EOI.
    fn linux_init(auto_eoi: bool) -> Pic8259Pair {
        let mut p = Pic8259Pair::new();
        p.write(0x21, 0xFF);
        p.write(0xA1, 0xFF);
        p.write(0x20, 0x11);
        p.write(0x21, 0x30);
        p.write(0x21, 0x04);
        p.write(0x21, if auto_eoi { 0x03 } else { 0x01 });
        p.write(0xA0, 0x11);
        p.write(0xA1, 0x38);
        p.write(0xA1, 0x02);
        p.write(0xA1, 0x01);
        p
    }

    #[test]
    fn init_sequence_clears_imr_and_sets_base() {
        let mut p = linux_init(false);
        assert_eq!(p.read(0x21), 0x00, "ICW1 clears IMR");
        p.write(0x21, 0xFB);
        assert_eq!(p.read(0x21), 0xFB, "OCW1 after ICW4");
        p.set_irq(0, true);
        assert!(!p.intr(), "IRQ0 masked");
        p.write(0x21, 0xFA);
        assert!(p.intr());
        assert_eq!(p.ack(), 0x30);
        assert!(!p.intr());
    }

    #[test]
    fn icw_sequence_without_icw3_in_single_mode() {
        let mut p = Pic8259Pair::new();
        // ICW1: single, ICW4 needed; then ICW2 and straight to ICW4.
        p.write(0x20, 0x13);
        p.write(0x21, 0x08);
        p.write(0x21, 0x01);
        p.write(0x21, 0x5A);
        assert_eq!(p.read(0x21), 0x5A, "third data write is OCW1");
    }

    #[test]
    fn edge_request_stays_latched_after_pulse_and_eoi_lets_next_in() {
        let mut p = linux_init(false);
        p.set_irq(1, true);
        p.set_irq(1, false);
        p.set_irq(0, true);
        p.set_irq(0, false);
        assert_eq!(p.read(0x20), 0x03, "IRR holds both edges");
        assert_eq!(p.ack(), 0x30, "IR0 beats IR1");
        assert!(!p.intr(), "IR1 is below in-service IR0");
        p.write(0x22, 0); // a port this device does not decode
        p.write(0x20, 0x0B);
        assert_eq!(p.read(0x20), 0x01, "ISR read via OCW3");
        p.write(0x20, 0x20); // non-specific EOI
        assert_eq!(p.read(0x20), 0x00);
        assert!(p.intr());
        assert_eq!(p.ack(), 0x31);
        p.write(0x20, 0x61); // specific EOI IR1
        assert_eq!(p.read(0x20), 0x00);
        assert_eq!(p.stats.bad_port, 1);
    }

    #[test]
    fn higher_priority_nests_over_in_service() {
        let mut p = linux_init(false);
        p.set_irq(4, true);
        assert_eq!(p.ack(), 0x34);
        p.set_irq(3, true);
        assert!(p.intr(), "IR3 outranks in-service IR4");
        assert_eq!(p.ack(), 0x33);
        p.write(0x20, 0x0B);
        assert_eq!(p.read(0x20), 0x18);
        p.write(0x20, 0x20); // clears IR3, the highest in service
        assert_eq!(p.read(0x20), 0x10);
    }

    #[test]
    fn spurious_irq7_when_request_went_away() {
        let mut p = linux_init(false);
        p.write(0x4D0, 0x20); // IRQ5 level triggered
        p.set_irq(5, true);
        assert!(p.intr());
        p.set_irq(5, false);
        assert!(!p.intr());
        assert_eq!(p.ack(), 0x37, "spurious IR7");
        p.write(0x20, 0x0B);
        assert_eq!(p.read(0x20), 0x00, "spurious sets no ISR bit");
    }

    #[test]
    fn level_triggered_request_reasserts_after_eoi() {
        let mut p = linux_init(false);
        p.write(0x4D1, 0x02); // IRQ9 level
        assert_eq!(p.read(0x4D1), 0x02);
        p.write(0x4D0, 0xFF);
        assert_eq!(p.read(0x4D0), 0xF8, "IRQ0-2 are edge only");
        p.write(0x4D0, 0x00);
        p.set_irq(9, true);
        assert!(p.intr());
        assert_eq!(p.ack(), 0x39);
        p.write(0xA0, 0x20);
        p.write(0x20, 0x20);
        assert!(p.intr(), "line still high: request again");
        assert_eq!(p.ack(), 0x39);
        p.set_irq(9, false);
        p.write(0xA0, 0x20);
        p.write(0x20, 0x20);
        assert!(!p.intr());
    }

    #[test]
    fn edge_needs_a_new_rising_edge() {
        let mut p = linux_init(false);
        p.set_irq(3, true);
        assert_eq!(p.ack(), 0x33);
        p.write(0x20, 0x20);
        assert!(!p.intr(), "held-high edge input does not re-request");
        p.set_irq(3, false);
        p.set_irq(3, true);
        assert!(p.intr());
    }

    #[test]
    fn cascade_delivers_slave_vector_and_sets_both_isr() {
        let mut p = linux_init(false);
        p.set_irq(14, true);
        p.set_irq(14, false);
        assert!(p.intr());
        assert_eq!(p.ack(), 0x3E);
        p.write(0x20, 0x0B);
        p.write(0xA0, 0x0B);
        assert_eq!(p.read(0x20), 0x04, "master ISR2");
        assert_eq!(p.read(0xA0), 0x40, "slave ISR6");
        // Linux's EOI order: slave specific, then master cascade.
        p.write(0xA0, 0x66);
        p.write(0x20, 0x62);
        assert_eq!(p.read(0x20), 0);
        assert_eq!(p.read(0xA0), 0);
        // IRQ8 on the slave outranks IRQ3 on the master (IR2 < IR3).
        p.set_irq(3, true);
        p.set_irq(8, true);
        assert_eq!(p.ack(), 0x38);
    }

    #[test]
    fn slave_spurious_gives_irq15_vector_and_master_cascade_isr() {
        let mut p = linux_init(false);
        p.write(0x4D1, 0x80); // IRQ15 level
        p.set_irq(15, true);
        assert!(p.intr());
        // Master IR2 latched the slave's INT edge; the request goes away.
        p.set_irq(15, false);
        assert!(p.intr(), "master still holds the latched cascade edge");
        assert_eq!(p.ack(), 0x3F, "slave spurious vector");
        p.write(0x20, 0x0B);
        p.write(0xA0, 0x0B);
        assert_eq!(p.read(0x20), 0x04, "master ISR2 set");
        assert_eq!(p.read(0xA0), 0x00, "slave ISR clear");
    }

    #[test]
    fn auto_eoi_leaves_isr_clear() {
        let mut p = linux_init(true);
        p.set_irq(6, true);
        assert_eq!(p.ack(), 0x36);
        p.write(0x20, 0x0B);
        assert_eq!(p.read(0x20), 0);
    }

    #[test]
    fn masked_irq_does_not_block_and_special_mask_mode() {
        let mut p = linux_init(false);
        p.set_irq(1, true);
        assert_eq!(p.ack(), 0x31);
        p.set_irq(5, true);
        assert!(!p.intr(), "IR5 below in-service IR1");
        // Special mask mode: mask IR1 and lower levels get through.
        p.write(0x21, 0x02);
        p.write(0x20, 0x68);
        assert!(p.intr());
        assert_eq!(p.ack(), 0x35);
        p.write(0x20, 0x48); // special mask off
        p.write(0x21, 0x00);
        assert!(!p.intr());
    }

    #[test]
    fn poll_command_returns_level_and_acknowledges() {
        let mut p = linux_init(false);
        p.set_irq(6, true);
        p.write(0x20, 0x0C);
        assert_eq!(p.read(0x20), 0x86);
        p.write(0x20, 0x0B);
        assert_eq!(p.read(0x20), 0x40, "poll set ISR6");
        p.write(0x20, 0x20);
        p.write(0x20, 0x0C);
        assert_eq!(p.read(0x20), 0x00, "nothing pending");
    }

    #[test]
    fn rotation_makes_serviced_level_lowest() {
        let mut p = linux_init(false);
        p.set_irq(0, true);
        assert_eq!(p.ack(), 0x30);
        p.write(0x20, 0xA0); // rotate on non-specific EOI: IR0 lowest
        p.set_irq(0, false);
        p.set_irq(0, true);
        p.set_irq(4, true);
        assert_eq!(p.ack(), 0x34, "IR4 now outranks IR0");
        p.write(0x20, 0xC3); // set priority: IR3 lowest, IR4 highest
        p.write(0x20, 0x64);
        assert_eq!(p.ack(), 0x30);
    }

    #[test]
    fn interrupt_controller_trait_reaches_the_pair() {
        let mut p = linux_init(false);
        p.set_irq(12, true);
        let ic: &mut dyn InterruptController = &mut p;
        assert!(ic.intr());
        assert_eq!(ic.ack(), 0x3C);
        assert!(!ic.intr());
    }

    #[test]
    fn irq_above_15_is_ignored() {
        let mut p = linux_init(false);
        p.set_irq(16, true);
        p.set_irq(200, true);
        assert!(!p.intr());
    }
}
