//! Exact single steps in real mode. KVM's single-step on this host runs
//! the first instruction of an interrupt handler together with the
//! delivery (the step after a faulting instruction ends one instruction
//! late). The interpreter ends such a step at the handler's first
//! instruction, so the engine catches deliveries itself.
//!
//! While stepping in real mode, IDTR points at a private IVT (in a private
//! page outside guest RAM) whose entry `n` is `SEG0 + n : CATCH - 16 *
//! (SEG0 + n)`: every vector lands at the same linear address `CATCH`, on
//! which a hardware instruction breakpoint stops the vCPU before anything
//! there runs. The delivery itself (FLAGS, CS, IP pushed, IF/TF/AC
//! cleared) was done by the CPU; the engine only replaces CS:IP with the
//! guest's own IVT entry `n` and restores the guest's IDTR. A guest that
//! runs real code at linear `CATCH` is told apart by the single-step bit
//! of DR6; SIDT during such a step would show the private base.

use memmap2::MmapMut;
use umbra_core::cpu::SegReg;
use umbra_core::Vm;

/// Guest-physical address of the private IVT page (below the real-mode TSS
/// KVM may use, outside guest RAM).
pub(super) const IVT_ADDR: u64 = 0xFFFB_B000;
pub(super) const IVT_SIZE: usize = 0x1000;
/// Segment of the private entry for vector 0.
const SEG0: u16 = 0x1000;
/// The linear address every private entry leads to.
pub(super) const CATCH: u64 = 0x1FFF0;

/// DR6 bits (SDM Vol. 3 17.2.3).
pub(super) const DR6_B0: u64 = 1 << 0;
pub(super) const DR6_BS: u64 = 1 << 14;
/// DR7: local enable of breakpoint 0 (execute, length 1).
pub(super) const DR7_L0: u64 = 1 << 0;

pub(super) struct PrivateIvt {
    map: MmapMut,
}

impl PrivateIvt {
    pub(super) fn new() -> std::io::Result<Self> {
        let mut map = MmapMut::map_anon(IVT_SIZE)?;
        for n in 0..256usize {
            let seg = SEG0 + n as u16;
            let off = (CATCH - 16 * seg as u64) as u16;
            map[4 * n..4 * n + 2].copy_from_slice(&off.to_le_bytes());
            map[4 * n + 2..4 * n + 4].copy_from_slice(&seg.to_le_bytes());
        }
        Ok(PrivateIvt { map })
    }

    pub(super) fn host_addr(&self) -> u64 {
        self.map.as_ptr() as u64
    }
}

/// After a step stopped at `CATCH`: the vector whose delivery brought the
/// CPU there, if it was one of ours.
pub(super) fn caught_vector(vm: &Vm) -> Option<u8> {
    let cs = vm.cpu.seg(SegReg::Cs);
    let n = cs.selector.wrapping_sub(SEG0);
    let lin = cs.base as u64 + (vm.cpu.eip & 0xFFFF) as u64;
    (n < 256 && lin == CATCH).then_some(n as u8)
}

/// Point CS:IP at the guest's own IVT entry for `vector`.
pub(super) fn redirect(vm: &mut Vm, vector: u8) {
    let at = vm.cpu.idtr.base as u64 + 4 * vector as u64;
    let off = vm.mem.read_u16(at);
    let seg = vm.mem.read_u16(at + 2);
    let cs = vm.cpu.seg_mut(SegReg::Cs);
    cs.selector = seg;
    cs.base = (seg as u32) << 4;
    vm.cpu.eip = off as u32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_private_vector_lands_on_the_catch_address() {
        let ivt = PrivateIvt::new().unwrap();
        for n in 0..256usize {
            let off = u16::from_le_bytes([ivt.map[4 * n], ivt.map[4 * n + 1]]) as u64;
            let seg = u16::from_le_bytes([ivt.map[4 * n + 2], ivt.map[4 * n + 3]]);
            assert_eq!(16 * seg as u64 + off, CATCH, "vector {n}");
            assert_eq!(seg.wrapping_sub(SEG0), n as u16);
        }
    }

    #[test]
    fn redirect_uses_the_guest_ivt() {
        let mut vm = Vm::new(umbra_core::mem::GuestMemory::new(0x10000).unwrap());
        // Guest IVT entry 0x21 -> 1234:5678.
        vm.mem.write_u32(4 * 0x21, 0x1234_5678);
        let cs = vm.cpu.seg_mut(SegReg::Cs);
        cs.selector = SEG0 + 0x21;
        cs.base = (SEG0 as u32 + 0x21) << 4;
        vm.cpu.eip = (CATCH - 16 * (SEG0 as u64 + 0x21)) as u32;
        vm.cpu.idtr.base = 0;
        assert_eq!(caught_vector(&vm), Some(0x21));
        redirect(&mut vm, 0x21);
        assert_eq!(vm.cpu.seg(SegReg::Cs).selector, 0x1234);
        assert_eq!(vm.cpu.seg(SegReg::Cs).base, 0x12340);
        assert_eq!(vm.cpu.eip, 0x5678);
        assert_eq!(caught_vector(&vm), None);
    }
}
