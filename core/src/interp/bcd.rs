//! Decimal adjust instructions: DAA DAS (packed BCD), AAA AAS AAM AAD
//! (unpacked BCD; AAM and AAD with any immediate base). All work on AL/AH
//! and exist only outside 64-bit mode.
//!
//! The SDM (Vol. 2, each instruction's Operation section) leaves some
//! flags undefined; this file sets them the way they are reported on
//! Intel hardware where that is known, otherwise sensibly:
//! - DAA/DAS: OF = signed overflow of the whole adjustment (AL +/- 0x06,
//!   0x60 or 0x66);
//! - AAA/AAS: SF ZF PF from the final AL, OF = 0;
//! - AAM: CF AF OF = 0;
//! - AAD: CF AF OF as the 8-bit ADD AL + AH * base that computes AL.

use iced_x86::{Instruction, Mnemonic};

use super::alu::check_lock;
use super::flags::{add_flags, set_status, szp};
use super::{Ctx, Table};
use crate::cpu::{CpuState, AF, CF, EAX, OF, STATUS};
use crate::exception::Fault;

/// Result of an AL/AH adjustment: the new AX and the six status flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adjusted {
    pub ax: u16,
    pub flags: u32,
}

#[inline]
fn bit(c: bool, f: u32) -> u32 {
    if c {
        f
    } else {
        0
    }
}

/// DAA on AX with the incoming flags (SDM Vol. 2 DAA).
pub fn daa(ax: u16, flags: u32) -> Adjusted {
    let old_al = ax as u8;
    let old_cf = flags & CF != 0;
    let af = (old_al & 0x0F) > 9 || flags & AF != 0;
    let mut al = old_al;
    if af {
        al = al.wrapping_add(6);
    }
    // The SDM also ORs in the carry out of AL + 6, but that carry needs
    // AL >= 0xFA, which the second condition already covers.
    let cf = old_al > 0x99 || old_cf;
    if cf {
        al = al.wrapping_add(0x60);
    }
    // Adding a positive adjustment overflows when the sign goes 0 -> 1.
    let of = old_al & 0x80 == 0 && al & 0x80 != 0;
    Adjusted {
        ax: (ax & 0xFF00) | al as u16,
        flags: szp(al as u32, 1) | bit(cf, CF) | bit(af, AF) | bit(of, OF),
    }
}

/// DAS on AX with the incoming flags (SDM Vol. 2 DAS).
pub fn das(ax: u16, flags: u32) -> Adjusted {
    let old_al = ax as u8;
    let old_cf = flags & CF != 0;
    let mut al = old_al;
    let mut cf = false;
    let af = (old_al & 0x0F) > 9 || flags & AF != 0;
    if af {
        let (r, borrow) = al.overflowing_sub(6);
        al = r;
        cf = old_cf || borrow;
    }
    // No ELSE here: a borrow from the low adjustment stays in CF.
    if old_al > 0x99 || old_cf {
        al = al.wrapping_sub(0x60);
        cf = true;
    }
    // Subtracting a positive adjustment overflows when the sign goes 1 -> 0.
    let of = old_al & 0x80 != 0 && al & 0x80 == 0;
    Adjusted {
        ax: (ax & 0xFF00) | al as u16,
        flags: szp(al as u32, 1) | bit(cf, CF) | bit(af, AF) | bit(of, OF),
    }
}

/// AAA (SDM Vol. 2 AAA: AX += 0x106 when adjusting, then AL &= 0x0F).
pub fn aaa(ax: u16, flags: u32) -> Adjusted {
    let adjust = (ax & 0x0F) > 9 || flags & AF != 0;
    let ax = if adjust { ax.wrapping_add(0x106) } else { ax };
    let ax = ax & 0xFF0F;
    Adjusted {
        ax,
        flags: szp(ax as u32 & 0xFF, 1) | bit(adjust, CF | AF),
    }
}

/// AAS (SDM Vol. 2 AAS: AX -= 6 and AH -= 1 when adjusting, then
/// AL &= 0x0F).
pub fn aas(ax: u16, flags: u32) -> Adjusted {
    let adjust = (ax & 0x0F) > 9 || flags & AF != 0;
    let ax = if adjust {
        ax.wrapping_sub(6).wrapping_sub(0x100)
    } else {
        ax
    };
    let ax = ax & 0xFF0F;
    Adjusted {
        ax,
        flags: szp(ax as u32 & 0xFF, 1) | bit(adjust, CF | AF),
    }
}

/// AAM base: AH = AL / base, AL = AL % base; #DE for base 0.
pub fn aam(ax: u16, base: u8) -> Result<Adjusted, Fault> {
    if base == 0 {
        return Err(Fault::de());
    }
    let al = ax as u8;
    let (q, r) = (al / base, al % base);
    Ok(Adjusted {
        ax: ((q as u16) << 8) | r as u16,
        flags: szp(r as u32, 1),
    })
}

/// AAD base: AL = (AL + AH * base) & 0xFF, AH = 0.
pub fn aad(ax: u16, base: u8) -> Adjusted {
    let al = ax as u8 as u32;
    let ah = (ax >> 8) as u8 as u32;
    let (r, f) = add_flags(al, (ah * base as u32) & 0xFF, 0, 1);
    Adjusted {
        ax: r as u16,
        flags: f,
    }
}

fn commit(cpu: &mut CpuState, a: Adjusted) {
    cpu.set_reg16(EAX, a.ax);
    set_status(cpu, STATUS, a.flags);
}

/// DAA DAS AAA AAS AAM AAD.
fn adjust(ctx: &mut Ctx, ins: &Instruction) -> Result<(), Fault> {
    check_lock(ins, false)?;
    let cpu = &ctx.vm.cpu;
    let ax = cpu.reg16(EAX);
    let fl = cpu.eflags;
    let a = match ins.mnemonic() {
        Mnemonic::Daa => daa(ax, fl),
        Mnemonic::Das => das(ax, fl),
        Mnemonic::Aaa => aaa(ax, fl),
        Mnemonic::Aas => aas(ax, fl),
        Mnemonic::Aam => aam(ax, ins.immediate8())?,
        Mnemonic::Aad => aad(ax, ins.immediate8()),
        _ => return Err(Fault::ud()),
    };
    commit(&mut ctx.vm.cpu, a);
    Ok(())
}

pub(super) fn register(t: &mut Table) {
    t.set(
        &[
            Mnemonic::Daa,
            Mnemonic::Das,
            Mnemonic::Aaa,
            Mnemonic::Aas,
            Mnemonic::Aam,
            Mnemonic::Aad,
        ],
        adjust,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{FIXED1, PF, SF, ZF};
    use crate::exception::vector;
    use crate::interp::testutil::{exec, load_bytes, vm16, vm32};

    const CF_AF: u32 = CF | AF;

    const VECTORS: &str = include_str!("vectors/bcd.txt");

    fn parse_flags(s: &str) -> u32 {
        let mut f = 0;
        for ch in s.chars() {
            match ch {
                'C' => f |= CF,
                'A' => f |= AF,
                '-' => {}
                _ => panic!("bad flag letter {ch}"),
            }
        }
        f
    }

    #[test]
    fn vectors_from_file() {
        let mut n = 0;
        for (ln, line) in VECTORS.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let w: Vec<&str> = line.split_whitespace().collect();
            let at = format!("bcd.txt line {}: {line}", ln + 1);
            assert!(w.len() >= 5 && w[3] == "=>", "{at}");
            let ax = u16::from_str_radix(w[1], 16).expect(&at);
            let fin = parse_flags(w[2]);
            let (op, base) = w[0].split_at(3);
            let base = if base.is_empty() {
                0
            } else {
                u8::from_str_radix(base, 16).expect(&at)
            };
            let got = match op {
                "daa" => Ok(daa(ax, fin)),
                "das" => Ok(das(ax, fin)),
                "aaa" => Ok(aaa(ax, fin)),
                "aas" => Ok(aas(ax, fin)),
                "aam" => aam(ax, base),
                "aad" => Ok(aad(ax, base)),
                _ => panic!("{at}: unknown op"),
            };
            n += 1;
            if w[4] == "de" {
                assert_eq!(got.map_err(|f| f.vector), Err(vector::DE), "{at}");
                continue;
            }
            let got = got.expect(&at);
            let want_ax = u16::from_str_radix(w[4], 16).expect(&at);
            assert_eq!(got.ax, want_ax, "{at}");
            if matches!(op, "daa" | "das" | "aaa" | "aas") {
                let want = parse_flags(w.get(5).copied().unwrap_or("-"));
                assert_eq!(got.flags & (CF | AF), want, "{at}");
            }
            if op != "aaa" && op != "aas" {
                assert_eq!(
                    got.flags & (SF | ZF | PF),
                    szp(want_ax as u32 & 0xFF, 1),
                    "{at}"
                );
            }
        }
        assert!(n >= 40, "only {n} vectors parsed");
    }

    #[test]
    fn daa_das_overflow() {
        // OF (undefined): 0x7A -> 0x80 goes positive to negative.
        assert_eq!(daa(0x7A, 0).flags & OF, OF);
        assert_eq!(daa(0x45, 0).flags & OF, 0);
        // DAS: 0x8A -> 0x84 keeps the sign; 0x80 with CF -> 0x20 leaves
        // the negatives.
        assert_eq!(das(0x8A, 0).flags & OF, 0);
        assert_eq!(das(0x80, CF).flags & OF, OF);
    }

    #[test]
    fn aaa_aas() {
        // 0x0009 + 0x0003 = 0x000C -> AAA -> 0x0102.
        assert_eq!(
            aaa(0x000C, 0),
            Adjusted {
                ax: 0x0102,
                flags: CF_AF
            }
        );
        // AF in from 9 + 9 = 0x12: 0x0012 + 0x106 = 0x0118 -> 0x0108.
        assert_eq!(aaa(0x0012, AF).ax, 0x0108);
        // AX + 0x106 carries from AL into AH: AL 0xFA -> 0x0200 | 0x00.
        assert_eq!(aaa(0x00FA, 0).ax, 0x0200);
        // No adjust: AL masked, CF AF cleared.
        assert_eq!(aaa(0x0537, CF).ax, 0x0507);
        assert_eq!(aaa(0x0537, CF).flags & CF_AF, 0);
        // AAS: 0x0000 with AF: AX - 6 = 0xFFFA, AH - 1 = 0xFE -> 0xFE0A.
        assert_eq!(
            aas(0x0000, AF),
            Adjusted {
                ax: 0xFE0A,
                flags: CF_AF | PF
            }
        );
        // 0x0203 - 0x0005 = 0x01FE -> AL low nibble 0xE > 9: 0x01F8 -
        // 0x100 = 0x00F8 -> 0x0008.
        assert_eq!(aas(0x01FE, 0).ax, 0x0008);
        assert_eq!(
            aas(0x0105, 0),
            Adjusted {
                ax: 0x0105,
                flags: PF
            }
        );
    }

    #[test]
    fn aam_aad() {
        // AAM 10: 63 = 0x3F -> AH 6, AL 3.
        assert_eq!(aam(0x003F, 10).unwrap().ax, 0x0603);
        // AAM 16 splits nibbles.
        assert_eq!(
            aam(0x77AB, 16).unwrap(),
            Adjusted {
                ax: 0x0A0B,
                flags: 0
            }
        );
        assert_eq!(aam(0x0000, 7).unwrap().flags, ZF | PF);
        assert_eq!(aam(0x1234, 0).unwrap_err().vector, vector::DE);
        // AAD 10: AH 6, AL 3 -> 63.
        assert_eq!(aad(0x0603, 10).ax, 0x003F);
        // AAD 16 with overflow of the byte: 0x0F * 16 + 0x1F = 0x10F ->
        // AL = 0xF0 + 0x1F = 0x0F with carry out.
        let a = aad(0x0F1F, 16);
        assert_eq!(a.ax, 0x000F);
        assert_eq!(a.flags & CF, CF);
    }

    #[test]
    fn handlers() {
        let mut vm = vm16();
        vm.cpu.set_reg32(EAX, 0xABCD_0041);
        vm.cpu.eflags = FIXED1 | AF;
        // DAA; AAM 10 (D4 0A); AAD 7 (D5 07); AAM 0 (D4 00).
        load_bytes(&mut vm, &[0x27, 0xD4, 0x0A, 0xD5, 0x07, 0xD4, 0x00]);
        exec(&mut vm).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0xABCD_0047);
        assert_eq!(vm.cpu.eflags & STATUS, AF | PF);
        exec(&mut vm).unwrap();
        // 0x47 = 71 -> AH 7, AL 1.
        assert_eq!(vm.cpu.reg32(EAX), 0xABCD_0701);
        exec(&mut vm).unwrap();
        // 1 + 7 * 7 = 50 = 0x32.
        assert_eq!(vm.cpu.reg32(EAX), 0xABCD_0032);
        let eip = vm.cpu.eip;
        assert_eq!(exec(&mut vm).unwrap_err().vector, vector::DE);
        assert_eq!(vm.cpu.eip, eip);
        assert_eq!(vm.cpu.reg32(EAX), 0xABCD_0032);
        // In 32-bit code too.
        let mut vm = vm32();
        vm.cpu.set_reg32(EAX, 0x0000_000C);
        load_bytes(&mut vm, &[0x37]);
        exec(&mut vm).unwrap();
        assert_eq!(vm.cpu.reg32(EAX), 0x0102);
    }
}
