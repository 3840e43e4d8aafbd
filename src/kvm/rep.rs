//! One REP string iteration per single step. This host's KVM runs a whole
//! REP string instruction in one single step, while the interpreter (and
//! hardware single-stepping, SDM Vol. 3 17.3.1.4) retires one iteration
//! per step. (It also stops before the final count check, so a count of 1
//! would take two steps.) For a step on a REP string instruction the
//! engine loads a count of 1, lets KVM run that one iteration, then puts
//! back `count - 1` and sets EIP: past the instruction if it terminated
//! (count exhausted, or the REPE/REPNE condition failed), else at it again.
//! A faulting iteration decremented nothing: the old count returns. A
//! count of 0 runs nothing: the engine only moves EIP past it.

use iced_x86::{Instruction, Mnemonic, OpKind};
use umbra_core::cpu::{flags, ECX};
use umbra_core::Vm;

/// What to undo after the step.
pub(super) struct RepFix {
    count: u32,
    a16: bool,
    start: u32,
    next: u32,
    cond: Cond,
}

/// What a step on a REP string instruction needs.
pub(super) enum Rep {
    /// The count is 0: nothing runs, EIP moves past (see `skip`).
    Skip(u32),
    /// The count was replaced by 1; undo with `RepFix::finish`.
    Fix(RepFix),
}

enum Cond {
    None,
    /// REPE: go on while ZF = 1.
    WhileEqual,
    /// REPNE: go on while ZF = 0.
    WhileNotEqual,
}

/// Prepare a step on `ins` (decoded at the current EIP, ending at `next`).
pub(super) fn prepare(vm: &mut Vm, ins: &Instruction, next: u32) -> Option<Rep> {
    use Mnemonic::*;
    let m = ins.mnemonic();
    let compares = matches!(m, Cmpsb | Cmpsw | Cmpsd | Scasb | Scasw | Scasd);
    let moves = matches!(
        m,
        Movsb
            | Movsw
            | Movsd
            | Stosb
            | Stosw
            | Stosd
            | Lodsb
            | Lodsw
            | Lodsd
            | Insb
            | Insw
            | Insd
            | Outsb
            | Outsw
            | Outsd
    );
    if !(compares || moves) || !(ins.has_rep_prefix() || ins.has_repne_prefix()) {
        return None;
    }
    // MOVSD with operands is the SSE2 scalar move, not a string op.
    let mut a16 = None;
    for i in 0..ins.op_count() {
        match ins.op_kind(i) {
            OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI => a16 = Some(true),
            OpKind::MemorySegESI | OpKind::MemorySegEDI | OpKind::MemoryESEDI => a16 = Some(false),
            _ => {}
        }
    }
    let a16 = a16?;
    let count = if a16 {
        vm.cpu.gpr[ECX] as u16 as u32
    } else {
        vm.cpu.gpr[ECX] as u32
    };
    if count == 0 {
        return Some(Rep::Skip(next));
    }
    let cond = match (compares, ins.has_repne_prefix()) {
        (false, _) => Cond::None,
        (true, false) => Cond::WhileEqual,
        (true, true) => Cond::WhileNotEqual,
    };
    set_count(vm, a16, 1);
    Some(Rep::Fix(RepFix {
        count,
        a16,
        start: vm.cpu.eip,
        next,
        cond,
    }))
}

/// Retire a REP string instruction whose count is 0 (SDM Vol. 2B, REP: no
/// iteration, flags unchanged).
pub(super) fn skip(vm: &mut Vm, next: u32) {
    vm.cpu.eip = next;
    vm.cpu.eflags &= !flags::RF;
    vm.cpu.interrupt_shadow = false;
    vm.clock.retired += 1;
}

fn set_count(vm: &mut Vm, a16: bool, v: u32) {
    if a16 {
        vm.cpu.set_reg16(ECX, v as u16);
    } else {
        vm.cpu.set_reg32(ECX, v);
    }
}

impl RepFix {
    /// After the step: `faulted` when an exception was delivered instead
    /// of the iteration retiring.
    pub(super) fn finish(self, vm: &mut Vm, faulted: bool) {
        if faulted {
            set_count(vm, self.a16, self.count);
            return;
        }
        let left = self.count - 1;
        set_count(vm, self.a16, left);
        let zf = vm.cpu.eflags & flags::ZF != 0;
        let stop = left == 0
            || match self.cond {
                Cond::None => false,
                Cond::WhileEqual => !zf,
                Cond::WhileNotEqual => zf,
            };
        vm.cpu.eip = if stop { self.next } else { self.start };
        // The host leaves RF set after the shortened instruction; between
        // iterations of a single-stepped REP the interpreter has it clear.
        vm.cpu.eflags &= !flags::RF;
    }

    /// Before an exception is delivered from the pre-step state.
    pub(super) fn restore(&self, vm: &mut Vm) {
        set_count(vm, self.a16, self.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::code_asm::*;

    fn decode32(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Instruction {
        let mut a = CodeAssembler::new(32).unwrap();
        f(&mut a).unwrap();
        let bytes = a.assemble(0x1000).unwrap();
        iced_x86::Decoder::with_ip(32, &bytes, 0x1000, iced_x86::DecoderOptions::NONE).decode()
    }

    fn vm() -> Vm {
        let mut vm = Vm::new(umbra_core::mem::GuestMemory::new(0x10000).unwrap());
        vm.cpu.eip = 0x1000;
        vm
    }

    #[test]
    fn rep_movsd_one_iteration_then_back() {
        let ins = decode32(|a| a.rep().movsd());
        let mut vm = vm();
        vm.cpu.gpr[ECX] = 0xAAAA_0000_0000_0003;
        let Some(Rep::Fix(f)) = prepare(&mut vm, &ins, 0x1002) else {
            panic!("expected a fix");
        };
        assert_eq!(vm.cpu.gpr[ECX] as u32, 1);
        // What KVM leaves after the single iteration: count 0.
        vm.cpu.set_reg32(ECX, 0);
        vm.cpu.eflags |= flags::RF;
        f.finish(&mut vm, false);
        assert_eq!(vm.cpu.gpr[ECX] as u32, 2);
        assert_eq!(vm.cpu.eip, 0x1000);
        assert_eq!(vm.cpu.eflags & flags::RF, 0);
    }

    #[test]
    fn last_iteration_moves_past_and_fault_restores() {
        let ins = decode32(|a| a.rep().stosb());
        let mut vm = vm();
        vm.cpu.set_reg32(ECX, 1);
        let Some(Rep::Fix(f)) = prepare(&mut vm, &ins, 0x1002) else {
            panic!("expected a fix");
        };
        f.finish(&mut vm, false);
        assert_eq!((vm.cpu.gpr[ECX], vm.cpu.eip), (0, 0x1002));
        let mut vm2 = self::vm();
        vm2.cpu.set_reg32(ECX, 5);
        let Some(Rep::Fix(f)) = prepare(&mut vm2, &ins, 0x1002) else {
            panic!("expected a fix");
        };
        f.finish(&mut vm2, true);
        assert_eq!((vm2.cpu.gpr[ECX], vm2.cpu.eip), (5, 0x1000));
    }

    #[test]
    fn repe_cmps_stops_on_mismatch_and_zero_count_skips() {
        let ins = decode32(|a| a.repe().cmpsb());
        let mut vm = vm();
        vm.cpu.set_reg32(ECX, 9);
        let Some(Rep::Fix(f)) = prepare(&mut vm, &ins, 0x1002) else {
            panic!("expected a fix");
        };
        vm.cpu.eflags &= !flags::ZF; // bytes differed
        f.finish(&mut vm, false);
        assert_eq!((vm.cpu.gpr[ECX], vm.cpu.eip), (8, 0x1002));
        let mut vm = self::vm();
        vm.cpu.set_reg32(ECX, 0);
        assert!(matches!(
            prepare(&mut vm, &ins, 0x1002),
            Some(Rep::Skip(0x1002))
        ));
        // Not a string instruction: nothing to do.
        let add = decode32(|a| a.add(eax, 1));
        assert!(prepare(&mut vm, &add, 0x1003).is_none());
    }
}
