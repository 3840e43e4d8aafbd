//! System instructions: control and debug registers (MOV CRn/DRn, CLTS,
//! LMSW/SMSW), the interrupt flag and EFLAGS image (CLI, STI, PUSHF,
//! POPF), HLT, cache and TLB maintenance (INVD, WBINVD, INVLPG), RDTSC,
//! RDPMC, CPUID and UD0/UD1/UD2. Submodules hold the descriptor-table
//! family (`desc`: LGDT..ARPL, SYSENTER/SYSEXIT) and the MSRs (`msr`).
//!
//! It does not own segment loads or far transfers (`segment`), task
//! switches (`task`), or the CPUID table itself (`cpuid`).
//!
//! MOV to/from CRn/DRn share the mnemonic `Mov` with ordinary moves, so
//! they are registered by `Code` (`Table::set_codes`).

pub mod desc;
pub mod msr;
#[cfg(test)]
pub(crate) mod testutil;

use iced_x86::{Code, Instruction, Mnemonic, Register};

use super::{Ctx, Table};
use crate::cpu::{cr0, cr4, flags, CpuState, EAX, EBX, ECX, EDX};
use crate::exception::{vector, Fault};
use crate::vm::Vm;

/// DR6 bits (SDM Vol. 3 17.2.3).
pub mod dr6 {
    /// B0-B3: breakpoint conditions detected.
    pub const B0_3: u32 = 0xF;
    /// BD: the next instruction accesses a debug register (DR7.GD).
    pub const BD: u32 = 1 << 13;
    /// BS: single step.
    pub const BS: u32 = 1 << 14;
    /// BT: task switch.
    pub const BT: u32 = 1 << 15;
    /// Bits that always read as 1 on a P6 (4-11, 12, 16-31).
    pub const FIXED1: u32 = 0xFFFF_0FF0;
}

/// DR7 bits (SDM Vol. 3 17.2.4).
pub mod dr7 {
    /// GD: general detect; MOV DRn raises #DB.
    pub const GD: u32 = 1 << 13;
    /// Bit 10 always reads as 1.
    pub const FIXED1: u32 = 1 << 10;
    /// Writable bits: L0-G3, LE, GE, GD, R/W0-LEN3.
    pub const WRITABLE: u32 = 0xFFFF_23FF;
}

/// CR4 bits this CPU implements; writing 1 to any other bit is #GP(0)
/// (SDM Vol. 2A MOV CRn, "write a 1 to any reserved bit in CR4"). VME,
/// PVI and MCE are absent and not advertised by CPUID.
pub const CR4_VALID: u32 =
    cr4::TSD | cr4::DE | cr4::PSE | cr4::PAE | cr4::PGE | cr4::PCE | cr4::OSFXSR;

/// CR4 bits whose change alters how linear addresses translate.
const CR4_PAGING: u32 = cr4::PSE | cr4::PAE | cr4::PGE;

/// CR0 bits whose change alters how linear addresses translate.
const CR0_PAGING: u32 = cr0::PG | cr0::WP | cr0::PE;

pub(super) fn register(t: &mut Table) {
    t.set_codes(
        &[
            Code::Mov_r32_cr,
            Code::Mov_cr_r32,
            Code::Mov_r32_dr,
            Code::Mov_dr_r32,
        ],
        mov_cr_dr,
    );
    t.set(&[Mnemonic::Clts], clts);
    t.set(&[Mnemonic::Hlt], hlt);
    t.set(&[Mnemonic::Cli], cli);
    t.set(&[Mnemonic::Sti], sti);
    t.set(&[Mnemonic::Pushf, Mnemonic::Pushfd], pushf);
    t.set(&[Mnemonic::Popf, Mnemonic::Popfd], popf);
    t.set(&[Mnemonic::Invlpg], invlpg);
    t.set(&[Mnemonic::Invd, Mnemonic::Wbinvd], invd);
    t.set(&[Mnemonic::Rdtsc], rdtsc);
    t.set(&[Mnemonic::Rdpmc], rdpmc);
    t.set(&[Mnemonic::Cpuid], cpuid);
    t.set(&[Mnemonic::Ud0, Mnemonic::Ud1, Mnemonic::Ud2], ud);
    desc::register(t);
    msr::register(t);
}

/// #GP(0) unless at CPL 0 (real mode counts as CPL 0, V86 mode as 3).
#[inline]
pub fn require_cpl0(cpu: &CpuState) -> Result<(), Fault> {
    if cpu.cpl() != 0 {
        return Err(Fault::gp(0));
    }
    Ok(())
}

// ---- MOV CRn / DRn ----------------------------------------------------

/// Whether `code` is MOV to/from a control or debug register.
pub fn is_mov_cr_dr(code: Code) -> bool {
    matches!(
        code,
        Code::Mov_r32_cr | Code::Mov_cr_r32 | Code::Mov_r32_dr | Code::Mov_dr_r32
    )
}

/// MOV r32, CRn / MOV CRn, r32 / MOV r32, DRn / MOV DRn, r32
/// (SDM Vol. 2B MOV—Move to/from Control Registers, Debug Registers).
pub fn mov_cr_dr(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    require_cpl0(&ctx.vm.cpu)?;
    match ins.code() {
        Code::Mov_r32_cr => {
            let v = read_cr(&ctx.vm.cpu, ins.op1_register())?;
            ctx.set_reg(ins.op0_register(), v);
            Ok(())
        }
        Code::Mov_cr_r32 => {
            let v = ctx.reg(ins.op1_register());
            write_cr(ctx.vm, ins.op0_register(), v)
        }
        Code::Mov_r32_dr => {
            let n = dr_index(&ctx.vm.cpu, ins.op1_register())?;
            general_detect(&mut ctx.vm.cpu)?;
            let v = ctx.vm.cpu.dr[n];
            ctx.set_reg(ins.op0_register(), v);
            Ok(())
        }
        Code::Mov_dr_r32 => {
            let n = dr_index(&ctx.vm.cpu, ins.op0_register())?;
            general_detect(&mut ctx.vm.cpu)?;
            let v = ctx.reg(ins.op1_register());
            ctx.vm.cpu.dr[n] = match n {
                6 => (v & (dr6::B0_3 | dr6::BD | dr6::BS | dr6::BT)) | dr6::FIXED1,
                7 => (v & dr7::WRITABLE) | dr7::FIXED1,
                _ => v,
            };
            Ok(())
        }
        _ => Err(Fault::ud()),
    }
}

/// Value of CR0/CR2/CR3/CR4; any other control register is #UD.
pub fn read_cr(cpu: &CpuState, r: Register) -> Result<u32, Fault> {
    match r {
        Register::CR0 => Ok(cpu.cr0),
        Register::CR2 => Ok(cpu.cr2),
        Register::CR3 => Ok(cpu.cr3),
        Register::CR4 => Ok(cpu.cr4),
        _ => Err(Fault::ud()),
    }
}

/// Write a control register with every check and side effect of MOV CRn
/// (the CPL check is the caller's). Also used by other engines.
pub fn write_cr(vm: &mut Vm, r: Register, v: u32) -> Result<(), Fault> {
    match r {
        Register::CR0 => write_cr0(vm, v),
        Register::CR2 => {
            vm.cpu.cr2 = v;
            Ok(())
        }
        Register::CR3 => {
            // In 32-bit paging and PAE paging the low bits of CR3 are
            // ignored, never faulted on (SDM Vol. 3 4.3, 4.4.1). Under PAE
            // paging the load reads the PDPTEs, and a reserved bit in one
            // is #GP(0) with nothing committed.
            if vm.cpu.paging() && vm.cpu.cr4 & cr4::PAE != 0 {
                vm.mmu.load_pdptes(&mut vm.mem, v)?;
            }
            vm.cpu.cr3 = v;
            vm.mmu.set_cr3(&vm.cpu);
            Ok(())
        }
        Register::CR4 => write_cr4(vm, v),
        _ => Err(Fault::ud()),
    }
}

/// MOV CR0 (and the CR0 part of task switches). PG without PE and NW
/// without CD are #GP(0). Bits of CR0 that do not exist are ignored, ET
/// reads as 1 (SDM Vol. 3 2.5: only CR4 faults on reserved bits in
/// 32-bit mode).
pub fn write_cr0(vm: &mut Vm, v: u32) -> Result<(), Fault> {
    let new = (v & cr0::VALID) | cr0::ET;
    if new & cr0::PG != 0 && new & cr0::PE == 0 {
        return Err(Fault::gp(0));
    }
    if new & cr0::NW != 0 && new & cr0::CD == 0 {
        return Err(Fault::gp(0));
    }
    let old = vm.cpu.cr0;
    // Turning paging on with CR4.PAE loads the PDPTEs first; a reserved
    // bit faults before anything changes (SDM Vol. 3 4.4.1).
    if new & !old & cr0::PG != 0 && vm.cpu.cr4 & cr4::PAE != 0 {
        vm.mmu.load_pdptes(&mut vm.mem, vm.cpu.cr3)?;
    }
    vm.cpu.cr0 = new;
    if (old ^ new) & CR0_PAGING != 0 {
        vm.mmu.flush_all(&vm.cpu);
    }
    // Enabling paging with CR4.PAE loads the PDPTEs (SDM Vol. 3 4.4.1).
    if new & !old & cr0::PG != 0 && vm.cpu.cr4 & cr4::PAE != 0 {
        vm.mmu.set_cr3(&vm.cpu);
    }
    Ok(())
}

/// MOV CR4: reserved (unimplemented) bits are #GP(0); a change of PSE,
/// PAE or PGE flushes all translations, and with PAE paging on reloads
/// the PDPTEs (SDM Vol. 3 4.4.1).
pub fn write_cr4(vm: &mut Vm, v: u32) -> Result<(), Fault> {
    if v & !CR4_VALID != 0 {
        return Err(Fault::gp(0));
    }
    let old = vm.cpu.cr4;
    if (old ^ v) & CR4_PAGING != 0 && v & cr4::PAE != 0 && vm.cpu.paging() {
        vm.mmu.load_pdptes(&mut vm.mem, vm.cpu.cr3)?;
    }
    vm.cpu.cr4 = v;
    if (old ^ v) & CR4_PAGING != 0 {
        vm.mmu.flush_all(&vm.cpu);
        if v & cr4::PAE != 0 && vm.cpu.paging() {
            vm.mmu.set_cr3(&vm.cpu);
        }
    }
    Ok(())
}

/// Debug-register number for `r`: DR4/DR5 alias DR6/DR7 unless CR4.DE,
/// which makes them #UD (SDM Vol. 3 17.2.2).
fn dr_index(cpu: &CpuState, r: Register) -> Result<usize, Fault> {
    let n = (r as u32).wrapping_sub(Register::DR0 as u32) as usize;
    match n {
        0..=3 | 6 | 7 => Ok(n),
        4 | 5 if cpu.cr4 & cr4::DE == 0 => Ok(n + 2),
        _ => Err(Fault::ud()),
    }
}

/// DR7.GD: any debug-register access raises #DB with DR6.BD set; GD is
/// cleared so that the handler can use the registers (SDM Vol. 3 17.2.4).
fn general_detect(cpu: &mut CpuState) -> Result<(), Fault> {
    if cpu.dr[7] & dr7::GD != 0 {
        cpu.dr[6] |= dr6::BD;
        cpu.dr[7] &= !dr7::GD;
        return Err(Fault::new(vector::DB));
    }
    Ok(())
}

// ---- simple privileged instructions -----------------------------------

/// CLTS: clear CR0.TS (CPL 0).
fn clts(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    require_cpl0(&ctx.vm.cpu)?;
    ctx.vm.cpu.cr0 &= !cr0::TS;
    Ok(())
}

/// HLT (CPL 0): stop until an interrupt; EIP already points after it.
fn hlt(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    require_cpl0(&ctx.vm.cpu)?;
    ctx.vm.cpu.halted = true;
    Ok(())
}

/// INVD, WBINVD (CPL 0): no caches are modelled.
fn invd(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    require_cpl0(&ctx.vm.cpu)
}

/// INVLPG m (CPL 0): drop the translation of the operand's linear
/// address. No segment limit check and no fault from the page tables.
fn invlpg(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    require_cpl0(&ctx.vm.cpu)?;
    let seg = ctx.mem_seg(ins);
    let lin = ctx.vm.cpu.seg(seg).base.wrapping_add(ctx.ea(ins));
    ctx.vm.mmu.invlpg(&ctx.vm.cpu, lin);
    Ok(())
}

/// UD0/UD1/UD2: always #UD.
fn ud(_ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    Err(Fault::ud())
}

// ---- time stamp counter, performance counters, CPUID -------------------

/// Current TSC. `cpu.tsc` holds the offset from virtual time, so the
/// counter runs at 1 GHz of virtual time (one per retired instruction in
/// the default deterministic clock).
pub fn tsc(vm: &Vm) -> u64 {
    vm.cpu.tsc.wrapping_add(vm.clock.now_ns())
}

/// Set the TSC (WRMSR 0x10).
pub fn set_tsc(vm: &mut Vm, v: u64) {
    vm.cpu.tsc = v.wrapping_sub(vm.clock.now_ns());
}

/// RDTSC: EDX:EAX = TSC; #GP(0) with CR4.TSD outside CPL 0.
fn rdtsc(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    let cpu = &ctx.vm.cpu;
    if cpu.cr4 & cr4::TSD != 0 && cpu.cpl() != 0 {
        return Err(Fault::gp(0));
    }
    let t = tsc(ctx.vm);
    ctx.vm.cpu.set_reg32(EAX, t as u32);
    ctx.vm.cpu.set_reg32(EDX, (t >> 32) as u32);
    Ok(())
}

/// RDPMC: no performance counters exist, so every ECX is an invalid
/// counter: #GP(0) (SDM Vol. 2B RDPMC).
fn rdpmc(_ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    Err(Fault::gp(0))
}

/// CPUID: EAX/EBX/ECX/EDX from the table in `interp::cpuid`.
fn cpuid(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    let cpu = &mut ctx.vm.cpu;
    let r = super::cpuid::cpuid(cpu.reg32(EAX), cpu.reg32(ECX));
    cpu.set_reg32(EAX, r[0]);
    cpu.set_reg32(EBX, r[1]);
    cpu.set_reg32(ECX, r[2]);
    cpu.set_reg32(EDX, r[3]);
    Ok(())
}

// ---- interrupt flag and EFLAGS image ------------------------------------

/// Whether CLI/STI may change IF: always in real mode, CPL <= IOPL in
/// protected mode, IOPL = 3 in V86 mode (SDM Vol. 2A CLI/STI; CR4.PVI and
/// VME are not implemented, so the other cases are #GP(0)).
fn may_change_if(cpu: &CpuState) -> bool {
    if cpu.real() {
        true
    } else if cpu.v86() {
        cpu.iopl() == 3
    } else {
        cpu.cpl() <= cpu.iopl()
    }
}

/// CLI.
fn cli(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    if !may_change_if(&ctx.vm.cpu) {
        return Err(Fault::gp(0));
    }
    ctx.vm.cpu.eflags &= !flags::IF;
    Ok(())
}

/// STI: interrupts stay inhibited for one more instruction, but only when
/// IF was 0 (SDM Vol. 2B STI).
fn sti(ctx: &mut Ctx, _ins: &Instruction) -> Result<(), Fault> {
    if !may_change_if(&ctx.vm.cpu) {
        return Err(Fault::gp(0));
    }
    if ctx.vm.cpu.eflags & flags::IF == 0 {
        ctx.shadow = true;
    }
    ctx.vm.cpu.eflags |= flags::IF;
    Ok(())
}

/// Operand size of PUSHF/POPF from the mnemonic iced gives the form.
fn flags_size(ins: &Instruction) -> usize {
    match ins.mnemonic() {
        Mnemonic::Pushfd | Mnemonic::Popfd => 4,
        _ => 2,
    }
}

/// PUSHF/PUSHFD: the image has VM and RF clear (SDM Vol. 2B PUSHF). In
/// V86 mode IOPL < 3 is #GP(0).
fn pushf(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let cpu = &ctx.vm.cpu;
    if cpu.v86() && cpu.iopl() < 3 {
        return Err(Fault::gp(0));
    }
    let size = flags_size(ins);
    let v = cpu.eflags & !(flags::VM | flags::RF);
    ctx.push(v & super::operand::mask(size), size)
}

/// The EFLAGS bits POPF may change at the current privilege (SDM Vol. 2B
/// POPF, Operation): VIP, VIF, VM and RF never; IOPL only at CPL 0 (real
/// mode included); IF only when CPL <= IOPL.
pub fn popf_mask(cpu: &CpuState, size: usize) -> u32 {
    let mut m = flags::DEFINED & !(flags::VIP | flags::VIF | flags::VM | flags::RF);
    if cpu.v86() {
        m &= !flags::IOPL;
    } else if cpu.protected() && cpu.cpl() > 0 {
        m &= !flags::IOPL;
        if cpu.cpl() > cpu.iopl() {
            m &= !flags::IF;
        }
    }
    if size == 2 {
        m &= 0xFFFF;
    }
    m
}

/// POPF/POPFD. The 32-bit forms clear RF. In V86 mode IOPL < 3 is #GP(0).
fn popf(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    let cpu = &ctx.vm.cpu;
    if cpu.v86() && cpu.iopl() < 3 {
        return Err(Fault::gp(0));
    }
    let size = flags_size(ins);
    let m = popf_mask(cpu, size);
    let v = ctx.pop(size)?;
    let cpu = &mut ctx.vm.cpu;
    let mut f = (cpu.eflags & !m) | (v & m) | flags::FIXED1;
    if size == 4 {
        f &= !flags::RF;
    }
    cpu.eflags = f;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::cpu::{SegReg, ESP};
    use iced_x86::code_asm::*;

    #[test]
    fn mov_cr0_requires_cpl0() {
        let mut vm = ring3();
        let r = run(&mut vm, 32, |a| a.mov(eax, cr0));
        assert_eq!(r, Err(Fault::gp(0)));
        let mut vm = v86();
        let r = run(&mut vm, 16, |a| a.mov(cr0, eax));
        assert_eq!(r, Err(Fault::gp(0)));
    }

    #[test]
    fn mov_cr0_rules() {
        let mut vm = real();
        // PG without PE.
        vm.cpu.set_reg32(EAX, cr0::PG | cr0::ET);
        assert_eq!(run(&mut vm, 16, |a| a.mov(cr0, eax)), Err(Fault::gp(0)));
        // NW without CD.
        vm.cpu.set_reg32(EAX, cr0::NW | cr0::ET);
        assert_eq!(run(&mut vm, 16, |a| a.mov(cr0, eax)), Err(Fault::gp(0)));
        assert_eq!(vm.cpu.cr0, cr0::ET | cr0::CD | cr0::NW);
        // Undefined bits ignored, ET forced to 1.
        vm.cpu.set_reg32(EAX, cr0::PE | 0x0000_FF00);
        assert_eq!(run(&mut vm, 16, |a| a.mov(cr0, eax)), Ok(()));
        assert_eq!(vm.cpu.cr0, cr0::PE | cr0::ET);
        // Read back in (now) protected mode with a 16-bit CS at CPL 0.
        assert_eq!(run(&mut vm, 16, |a| a.mov(ebx, cr0)), Ok(()));
        assert_eq!(vm.cpu.reg32(EBX), 0x11);
    }

    #[test]
    fn mov_cr4_reserved_bits_fault() {
        let mut vm = flat0();
        for bad in [cr4::VME, cr4::PVI, cr4::MCE, cr4::OSXMMEXCPT, 1 << 11] {
            vm.cpu.set_reg32(EAX, bad);
            assert_eq!(run(&mut vm, 32, |a| a.mov(cr4, eax)), Err(Fault::gp(0)));
        }
        vm.cpu.set_reg32(EAX, cr4::PSE | cr4::PGE | cr4::OSFXSR);
        assert_eq!(run(&mut vm, 32, |a| a.mov(cr4, eax)), Ok(()));
        assert_eq!(vm.cpu.cr4, 0x290);
        vm.cpu.set_reg32(ECX, 0x1234_5FFF);
        assert_eq!(run(&mut vm, 32, |a| a.mov(cr3, ecx)), Ok(()));
        assert_eq!(vm.cpu.cr3, 0x1234_5FFF);
        assert_eq!(run(&mut vm, 32, |a| a.mov(edx, cr3)), Ok(()));
        assert_eq!(vm.cpu.reg32(EDX), 0x1234_5FFF);
    }

    #[test]
    fn debug_registers() {
        let mut vm = flat0();
        vm.cpu.set_reg32(EAX, 0);
        // DR7 bit 10 reads 1, reserved bits 0.
        assert_eq!(run(&mut vm, 32, |a| a.mov(dr7, eax)), Ok(()));
        assert_eq!(vm.cpu.dr[7], 0x400);
        // DR4 aliases DR6 without CR4.DE.
        vm.cpu.set_reg32(EAX, 0xFFFF_FFFF);
        assert_eq!(run(&mut vm, 32, |a| a.mov(dr4, eax)), Ok(()));
        assert_eq!(vm.cpu.dr[6], !(1u32 << 12));
        // With CR4.DE, DR4/DR5 are #UD.
        vm.cpu.cr4 = cr4::DE;
        assert_eq!(run(&mut vm, 32, |a| a.mov(ebx, dr5)), Err(Fault::ud()));
        // GD: #DB, DR6.BD set, GD cleared.
        vm.cpu.dr[6] = dr6::FIXED1;
        vm.cpu.dr[7] = dr7::FIXED1 | dr7::GD;
        let r = run(&mut vm, 32, |a| a.mov(ebx, dr0));
        assert_eq!(r, Err(Fault::new(vector::DB)));
        assert_eq!(vm.cpu.dr[6], dr6::FIXED1 | dr6::BD);
        assert_eq!(vm.cpu.dr[7], dr7::FIXED1);
        // CPL 3: #GP(0).
        let mut vm = ring3();
        assert_eq!(run(&mut vm, 32, |a| a.mov(ebx, dr0)), Err(Fault::gp(0)));
    }

    #[test]
    fn privileged_simple_instructions() {
        let mut vm = ring3();
        assert_eq!(run(&mut vm, 32, |a| a.hlt()), Err(Fault::gp(0)));
        assert_eq!(run(&mut vm, 32, |a| a.clts()), Err(Fault::gp(0)));
        assert_eq!(run(&mut vm, 32, |a| a.wbinvd()), Err(Fault::gp(0)));
        assert_eq!(run(&mut vm, 32, |a| a.invlpg(ptr(0))), Err(Fault::gp(0)));
        assert_eq!(run(&mut vm, 32, |a| a.rdpmc()), Err(Fault::gp(0)));
        assert_eq!(run(&mut vm, 32, |a| a.ud2()), Err(Fault::ud()));
        let mut vm = real();
        vm.cpu.cr0 |= cr0::TS;
        assert_eq!(run(&mut vm, 16, |a| a.clts()), Ok(()));
        assert_eq!(vm.cpu.cr0 & cr0::TS, 0);
        let before = vm.cpu.eip;
        assert_eq!(run(&mut vm, 16, |a| a.hlt()), Ok(()));
        assert!(vm.cpu.halted);
        assert_eq!(vm.cpu.eip, before + 1);
    }

    #[test]
    fn rdtsc_counts_retired_and_honours_tsd() {
        let mut vm = ring3();
        vm.cpu.tsc = 1000;
        vm.clock.retired = 5;
        assert_eq!(run(&mut vm, 32, |a| a.rdtsc()), Ok(()));
        assert_eq!(vm.cpu.reg32(EAX), 1005);
        assert_eq!(vm.cpu.reg32(EDX), 0);
        vm.cpu.cr4 = cr4::TSD;
        assert_eq!(run(&mut vm, 32, |a| a.rdtsc()), Err(Fault::gp(0)));
        let mut vm = flat0();
        vm.cpu.cr4 = cr4::TSD;
        assert_eq!(run(&mut vm, 32, |a| a.rdtsc()), Ok(()));
    }

    #[test]
    fn cpuid_instruction_reads_the_table() {
        let mut vm = ring3();
        vm.cpu.set_reg32(EAX, 1);
        assert_eq!(run(&mut vm, 32, |a| a.cpuid()), Ok(()));
        assert_eq!(vm.cpu.reg32(EAX), crate::interp::cpuid::SIGNATURE);
        assert_eq!(vm.cpu.reg32(EDX), crate::interp::cpuid::FEATURES_EDX);
        // FXSR (bit 24) advertised; MMX, SSE, APIC, VME not.
        assert_ne!(vm.cpu.reg32(EDX) & (1 << 24), 0);
        assert_eq!(vm.cpu.reg32(EDX) & (1 << 23 | 1 << 25 | 1 << 9 | 1 << 1), 0);
    }

    #[test]
    fn cli_sti_iopl_rules() {
        // CPL 3, IOPL 0: #GP.
        let mut vm = ring3();
        assert_eq!(run(&mut vm, 32, |a| a.cli()), Err(Fault::gp(0)));
        // CPL 3, IOPL 3: allowed.
        vm.cpu.eflags |= 3 << flags::IOPL_SHIFT | flags::IF;
        assert_eq!(run(&mut vm, 32, |a| a.cli()), Ok(()));
        assert_eq!(vm.cpu.eflags & flags::IF, 0);
        // V86, IOPL 2: #GP; IOPL 3: allowed.
        let mut vm = v86();
        vm.cpu.eflags |= 2 << flags::IOPL_SHIFT;
        assert_eq!(run(&mut vm, 16, |a| a.sti()), Err(Fault::gp(0)));
        vm.cpu.eflags |= 3 << flags::IOPL_SHIFT;
        assert_eq!(run(&mut vm, 16, |a| a.sti()), Ok(()));
        // STI from IF=0 sets the shadow; from IF=1 it does not.
        let mut vm = flat0();
        assert_eq!(run_shadow(&mut vm, 32, |a| a.sti()), Ok(true));
        assert_eq!(run_shadow(&mut vm, 32, |a| a.sti()), Ok(false));
    }

    #[test]
    fn pushf_image_clears_vm_and_rf() {
        let mut vm = flat0();
        vm.cpu.eflags = flags::FIXED1 | flags::RF | flags::CF | flags::AC;
        vm.cpu.set_reg32(ESP, 0x8000);
        assert_eq!(run(&mut vm, 32, |a| a.pushfd()), Ok(()));
        assert_eq!(vm.cpu.reg32(ESP), 0x7FFC);
        assert_eq!(vm.mem.read_u32(0x7FFC), 0x0004_0003);
        assert_eq!(run(&mut vm, 32, |a| a.pushf()), Ok(()));
        assert_eq!(vm.cpu.reg32(ESP), 0x7FFA);
        assert_eq!(vm.mem.read_u16(0x7FFA), 0x0003);
        // V86 with IOPL < 3.
        let mut vm = v86();
        assert_eq!(run(&mut vm, 16, |a| a.pushf()), Err(Fault::gp(0)));
    }

    /// Through `Interpreter::step`: a #GP(0) from RDPMC at CPL 0 is
    /// delivered through IDT gate 13 with error code 0 and the faulting
    /// EIP (SDM Vol. 3 6.12.1, no stack switch at the same privilege).
    #[test]
    fn step_delivers_gp_through_the_idt() {
        let mut vm = flat0();
        // GDT: 1 = flat code (0x08), 2 = flat data (0x10).
        vm.cpu.gdtr.base = 0x2000;
        vm.cpu.gdtr.limit = 0x17;
        vm.mem.write_u64(0x2008, 0x00CF_9A00_0000_FFFF);
        vm.mem.write_u64(0x2010, 0x00CF_9200_0000_FFFF);
        // IDT gate 13: 32-bit interrupt gate to 0x08:0x4000, DPL 0.
        vm.cpu.idtr.base = 0x3000;
        vm.cpu.idtr.limit = 0xFF;
        vm.mem.write_u64(0x3000 + 13 * 8, 0x0000_8E00_0008_4000);
        vm.cpu.set_reg32(ESP, 0x8000);
        vm.mem.write(CODE as u64, &[0x0F, 0x33]);
        let mut it = crate::interp::Interpreter::new();
        assert_eq!(it.step(&mut vm), crate::interp::Step::Retired);
        assert_eq!(vm.cpu.eip, 0x4000);
        assert_eq!(vm.cpu.reg32(ESP), 0x8000 - 16);
        assert_eq!(vm.mem.read_u32(0x8000 - 16), 0);
        assert_eq!(vm.mem.read_u32(0x8000 - 12), CODE);
        assert_eq!(vm.mem.read_u32(0x8000 - 8), 0x08);
        assert_eq!(it.stats.exceptions[13], 1);
    }

    /// POPFD of all ones at (CPL, IOPL): the resulting EFLAGS.
    fn popfd_all_ones(cpl: u16, iopl: u32) -> u32 {
        let mut vm = flat0();
        if cpl == 3 {
            vm = ring3();
        } else {
            vm.cpu.seg_mut(SegReg::Cs).selector |= cpl;
        }
        vm.cpu.eflags = flags::FIXED1 | (iopl << flags::IOPL_SHIFT) | flags::RF;
        vm.cpu.set_reg32(ESP, 0x8000);
        vm.mem.write_u32(0x8000, 0xFFFF_FFFF);
        assert_eq!(run(&mut vm, 32, |a| a.popfd()), Ok(()));
        assert_eq!(vm.cpu.reg32(ESP), 0x8004);
        vm.cpu.eflags
    }

    #[test]
    fn popf_by_privilege() {
        // Writable by everyone: CF PF AF ZF SF TF DF OF NT AC ID = 0x244DD5;
        // plus bit 1. VIP VIF VM RF never (RF cleared).
        let base = 0x0024_4DD7;
        assert_eq!(popfd_all_ones(0, 0), base | flags::IF | flags::IOPL);
        assert_eq!(popfd_all_ones(1, 1), base | flags::IF | 1 << 12);
        assert_eq!(popfd_all_ones(2, 1), base | 1 << 12);
        assert_eq!(popfd_all_ones(3, 0), base);
        assert_eq!(popfd_all_ones(3, 3), base | flags::IF | flags::IOPL);
    }

    #[test]
    fn popf_16bit_and_real_and_v86() {
        // Real mode 16-bit: IOPL and NT writable, upper half untouched.
        let mut vm = real();
        vm.cpu.eflags = flags::FIXED1 | flags::AC;
        vm.cpu.set_reg32(ESP, 0x800);
        vm.mem.write_u16(0x800, 0xFFFF);
        assert_eq!(run(&mut vm, 16, |a| a.popf()), Ok(()));
        assert_eq!(vm.cpu.eflags, 0x0004_7FD7);
        // V86 IOPL 3: IOPL not writable; IOPL < 3: #GP.
        let mut vm = v86();
        vm.cpu.eflags |= flags::IOPL;
        vm.cpu.set_reg32(ESP, 0x800);
        vm.mem.write_u16(0x800, 0x0202);
        assert_eq!(run(&mut vm, 16, |a| a.popf()), Ok(()));
        assert_eq!(vm.cpu.eflags, flags::VM | flags::IOPL | 0x202);
        vm.cpu.eflags &= !(1 << 12);
        assert_eq!(run(&mut vm, 16, |a| a.popf()), Err(Fault::gp(0)));
    }
}
