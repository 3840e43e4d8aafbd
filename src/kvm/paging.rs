//! stub
use umbra_core::cpu::CpuState;
use umbra_core::engine::{Budget, Exit};
use umbra_core::Vm;
use super::KvmEngine;
pub(super) const BASE: u64 = 0x1_0000_0000;
pub(super) const SIZE: usize = 0x50_0000;
pub(super) struct Private { map: memmap2::MmapMut, active: bool }
impl Private {
    pub(super) fn new() -> std::io::Result<Self> { Ok(Private { map: memmap2::MmapMut::map_anon(SIZE)?, active: false }) }
    pub(super) fn host_addr(&self) -> u64 { self.map.as_ptr() as u64 }
    pub(super) fn active(&self) -> bool { self.active }
    pub(super) fn trapped(&self) -> bool { false }
}
pub(super) fn native(_c: &CpuState) -> bool { false }
impl KvmEngine {
    pub(super) fn run_paged(&mut self, _vm: &mut Vm, _b: Budget, _done: u64) -> Exit { Exit::Error("todo".into()) }
}
