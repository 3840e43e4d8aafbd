//! Segment registers and far control transfers: descriptor-table access,
//! segment loads with their protection checks, far JMP/CALL/RET, call
//! gates, IRET and INT (to be filled in).

use super::Table;
use crate::exception::Fault;
use crate::mmu::Access;
use crate::vm::Vm;

/// Selector bit: table indicator (1 = LDT).
pub const SEL_TI: u16 = 1 << 2;
/// Selector bits: requested privilege level.
pub const SEL_RPL: u16 = 3;

/// Linear address of the descriptor `sel` names, checked against the
/// GDT or LDT limit (SDM Vol. 3 3.4.2). A selector beyond the limit, or a
/// TI=1 selector with no usable LDT, is #GP(selector & ~3).
pub fn descriptor_addr(vm: &Vm, sel: u16) -> Result<u32, Fault> {
    let cpu = &vm.cpu;
    let index = (sel & !7) as u32;
    let (base, limit) = if sel & SEL_TI != 0 {
        if cpu.ldtr.unusable() || cpu.ldtr.selector & !3 == 0 {
            return Err(Fault::gp((sel & !3) as u32));
        }
        (cpu.ldtr.base, cpu.ldtr.limit)
    } else {
        (cpu.gdtr.base, cpu.gdtr.limit as u32)
    };
    if index + 7 > limit {
        return Err(Fault::gp((sel & !3) as u32));
    }
    Ok(base.wrapping_add(index))
}

/// Read the two dwords (low, high) of the descriptor `sel` names, with a
/// supervisor access (descriptor-table reads are implicit supervisor
/// accesses even at CPL 3, SDM Vol. 3 4.6.1).
pub fn descriptor(vm: &mut Vm, sel: u16) -> Result<(u32, u32), Fault> {
    let lin = descriptor_addr(vm, sel)?;
    let raw = vm.read_lin(lin, 8, Access::READ)?;
    Ok((raw as u32, (raw >> 32) as u32))
}

pub(super) fn register(_t: &mut Table) {}
