//! The binary encoding: one little-endian 64-bit word per instruction, two
//! for `LOOP`. The opcode is bits 63..56; the channel, where there is one,
//! bits 55..48; reserved bits must be zero. The full layout is in
//! `docs/pim.md` and in the table at each arm below.

use half::f16;

use super::{BankSel, CodeBits, Instr, Program, Strides};
use crate::error::{PimError, Result};

const MAGIC: &[u8; 8] = b"AQPIMPRG";
const VERSION: u32 = 1;

mod op {
    pub const ACT: u64 = 0x01;
    pub const PRE: u64 = 0x02;
    pub const ACTAB: u64 = 0x03;
    pub const PREAB: u64 = 0x04;
    pub const RD: u64 = 0x05;
    pub const WR: u64 = 0x06;
    pub const WRGB: u64 = 0x07;
    pub const MAC: u64 = 0x08;
    pub const LUTACC: u64 = 0x09;
    pub const HISTACC: u64 = 0x0A;
    pub const ARGMIN: u64 = 0x0B;
    pub const MVD: u64 = 0x0C;
    pub const MVB: u64 = 0x0D;
    pub const SFM: u64 = 0x0E;
    pub const BARRIER: u64 = 0x0F;
    pub const LOOP: u64 = 0x10;
    pub const ENDLOOP: u64 = 0x11;
    pub const CLR: u64 = 0x12;
    pub const BINMAC: u64 = 0x13;
    pub const SFM_STATS: u64 = 0x14;
    pub const RED: u64 = 0x15;
    pub const RDD: u64 = 0x16;
    pub const STC: u64 = 0x17;
}

/// `v` placed at bits `lo..lo + width`.
#[inline]
fn put(v: u64, lo: u32, width: u32) -> u64 {
    (v & ((1u64 << width) - 1)) << lo
}

/// Bits `lo..lo + width` of `w`.
#[inline]
fn get(w: u64, lo: u32, width: u32) -> u64 {
    (w >> lo) & ((1u64 << width) - 1)
}

fn head(opcode: u64, ch: u8) -> u64 {
    put(opcode, 56, 8) | put(ch.into(), 48, 8)
}

/// Bank select at bits 47..36: pc 47..46, sid 45..44, bg 43..40, bank 39..36.
fn put_bank(b: BankSel) -> u64 {
    put(b.pc.into(), 46, 2)
        | put(b.sid.into(), 44, 2)
        | put(b.bg.into(), 40, 4)
        | put(b.bank.into(), 36, 4)
}

fn get_bank(w: u64) -> BankSel {
    BankSel {
        pc: get(w, 46, 2) as u8,
        sid: get(w, 44, 2) as u8,
        bg: get(w, 40, 4) as u8,
        bank: get(w, 36, 4) as u8,
    }
}

fn bits_flag(b: CodeBits) -> u64 {
    match b {
        CodeBits::Eight => 0,
        CodeBits::Four => 1,
    }
}

fn flag_bits(f: u64) -> CodeBits {
    if f == 0 {
        CodeBits::Eight
    } else {
        CodeBits::Four
    }
}

/// Strides word: row 63..54, col 53..44, buf 43..34, reg 33..24, data 23..14,
/// die 13..4, each signed 10-bit two's complement; bits 3..0 zero.
fn put_strides(s: Strides) -> u64 {
    s.to_array()
        .iter()
        .enumerate()
        .map(|(i, &v)| put(v as u16 as u64, 54 - 10 * i as u32, 10))
        .fold(0, |a, b| a | b)
}

fn get_strides(w: u64) -> Strides {
    let f = |i: u32| -> i16 {
        let raw = get(w, 54 - 10 * i, 10) as i16;
        (raw << 6) >> 6
    };
    Strides {
        row: f(0),
        col: f(1),
        buf: f(2),
        reg: f(3),
        data: f(4),
        die: f(5),
    }
}

/// Encodes one instruction into one or two words (fields must be in range:
/// [`Instr::check_fields`]).
pub fn encode_instr(ins: &Instr, out: &mut Vec<u64>) {
    let w = match *ins {
        // ACT: row 35..12.
        Instr::Act { ch, bank, row } => {
            head(op::ACT, ch) | put_bank(bank) | put(row.into(), 12, 24)
        }
        Instr::Pre { ch, bank } => head(op::PRE, ch) | put_bank(bank),
        // ACTAB: row 47..24.
        Instr::ActAb { ch, row } => head(op::ACTAB, ch) | put(row.into(), 24, 24),
        Instr::PreAb { ch } => head(op::PREAB, ch),
        // RD: col 35..28.
        Instr::Rd { ch, bank, col } => head(op::RD, ch) | put_bank(bank) | put(col.into(), 28, 8),
        // WR: col 35..28, data 27..0.
        Instr::Wr {
            ch,
            bank,
            col,
            data,
        } => head(op::WR, ch) | put_bank(bank) | put(col.into(), 28, 8) | put(data.into(), 0, 28),
        // WRGB: buf 47..32, data 31..0.
        Instr::Wrgb { ch, buf, data } => {
            head(op::WRGB, ch) | put(buf.into(), 32, 16) | put(data.into(), 0, 32)
        }
        // MAC: col 47..40, buf 39..24, reg 23..8, reduce 7, bcast 6.
        Instr::Mac {
            ch,
            col,
            buf,
            reg,
            reduce,
            bcast,
        } => {
            head(op::MAC, ch)
                | put(col.into(), 40, 8)
                | put(buf.into(), 24, 16)
                | put(reg.into(), 8, 16)
                | put(reduce.into(), 7, 1)
                | put(bcast.into(), 6, 1)
        }
        // LUTACC / HISTACC: col 47..40, bits 39 (1 = 4-bit), group 38..32, table|weights 31..16, reg 15..0.
        Instr::LutAcc {
            ch,
            col,
            bits,
            group,
            table,
            reg,
        } => {
            head(op::LUTACC, ch)
                | put(col.into(), 40, 8)
                | put(bits_flag(bits), 39, 1)
                | put(group.into(), 32, 7)
                | put(table.into(), 16, 16)
                | put(reg.into(), 0, 16)
        }
        Instr::HistAcc {
            ch,
            col,
            bits,
            group,
            weights,
            reg,
        } => {
            head(op::HISTACC, ch)
                | put(col.into(), 40, 8)
                | put(bits_flag(bits), 39, 1)
                | put(group.into(), 32, 7)
                | put(weights.into(), 16, 16)
                | put(reg.into(), 0, 16)
        }
        // ARGMIN: col 47..40, start 39..36, dsub-1 35..32, nbits 31..28, cb 27..12, reg 11..0.
        Instr::ArgMin {
            ch,
            col,
            start,
            dsub,
            nbits,
            cb,
            reg,
        } => {
            head(op::ARGMIN, ch)
                | put(col.into(), 40, 8)
                | put(start.into(), 36, 4)
                | put(u64::from(dsub.wrapping_sub(1)), 32, 4)
                | put(nbits.into(), 28, 4)
                | put(cb.into(), 12, 16)
                | put(reg.into(), 0, 12)
        }
        // MVD: reg 47..32, len 31..16, die 15..0.
        Instr::Mvd { ch, reg, len, die } => {
            head(op::MVD, ch)
                | put(reg.into(), 32, 16)
                | put(len.into(), 16, 16)
                | put(die.into(), 0, 16)
        }
        // MVB: die 47..32, broadcast 31, len 30..16, buf 15..0.
        Instr::Mvb {
            ch,
            die,
            len,
            buf,
            broadcast,
        } => {
            head(op::MVB, ch)
                | put(die.into(), 32, 16)
                | put(broadcast.into(), 31, 1)
                | put(len.into(), 16, 15)
                | put(buf.into(), 0, 16)
        }
        // SFM (0x0E) and SFM stats (0x14): die 47..32, len 31..16, scale (FP16 bits) 15..0.
        Instr::Sfm {
            ch,
            die,
            len,
            scale,
            stats,
        } => {
            head(if stats { op::SFM_STATS } else { op::SFM }, ch)
                | put(die.into(), 32, 16)
                | put(len.into(), 16, 16)
                | put(scale.to_bits().into(), 0, 16)
        }
        // CLR: off 47..32, len 31..16, die 15.
        Instr::Clr { ch, off, len, die } => {
            head(op::CLR, ch)
                | put(off.into(), 32, 16)
                | put(len.into(), 16, 16)
                | put(die.into(), 15, 1)
        }
        // BINMAC: col 47..40, dsub-1 39..36, bins 35..20, out 19..4.
        Instr::BinMac {
            ch,
            col,
            dsub,
            bins,
            out,
        } => {
            head(op::BINMAC, ch)
                | put(col.into(), 40, 8)
                | put(u64::from(dsub.wrapping_sub(1)), 36, 4)
                | put(bins.into(), 20, 16)
                | put(out.into(), 4, 16)
        }
        // RED: src 47..32, len 31..16, dst 15..0.
        Instr::Red { ch, src, len, dst } => {
            head(op::RED, ch)
                | put(src.into(), 32, 16)
                | put(len.into(), 16, 16)
                | put(dst.into(), 0, 16)
        }
        // RDD: die 47..32, len 31..16.
        Instr::Rdd { ch, die, len } => {
            head(op::RDD, ch) | put(die.into(), 32, 16) | put(len.into(), 16, 16)
        }
        // STC: B 47..36, col 35..28, reg 27..12, bits 11 (1 = 4-bit).
        Instr::Stc {
            ch,
            bank,
            col,
            reg,
            bits,
        } => {
            head(op::STC, ch)
                | put_bank(bank)
                | put(col.into(), 28, 8)
                | put(reg.into(), 12, 16)
                | put(bits_flag(bits), 11, 1)
        }
        Instr::Barrier => put(op::BARRIER, 56, 8),
        // LOOP: count 55..32; a second word holds the strides.
        Instr::Loop { count, strides } => {
            out.push(put(op::LOOP, 56, 8) | put(count.into(), 32, 24));
            put_strides(strides)
        }
        Instr::EndLoop => put(op::ENDLOOP, 56, 8),
    };
    out.push(w);
}

/// Encodes a program.
pub fn encode_program(p: &Program) -> Vec<u64> {
    let mut out = Vec::with_capacity(p.instrs().len());
    for ins in p.instrs() {
        encode_instr(ins, &mut out);
    }
    out
}

/// Decodes one instruction at `words[i]`; returns it and the number of words used.
pub fn decode_instr(words: &[u64], i: usize) -> Result<(Instr, usize)> {
    let err = |reason: String| PimError::Decode { word: i, reason };
    let w = words[i];
    let opcode = get(w, 56, 8);
    let ch = get(w, 48, 8) as u8;
    // `used` is the mask of bits the opcode defines; anything else must be zero.
    let (ins, used, n): (Instr, u64, usize) = match opcode {
        op::ACT => (
            Instr::Act {
                ch,
                bank: get_bank(w),
                row: get(w, 12, 24) as u32,
            },
            mask(12, 52),
            1,
        ),
        op::PRE => (
            Instr::Pre {
                ch,
                bank: get_bank(w),
            },
            mask(36, 28),
            1,
        ),
        op::ACTAB => (
            Instr::ActAb {
                ch,
                row: get(w, 24, 24) as u32,
            },
            mask(24, 40),
            1,
        ),
        op::PREAB => (Instr::PreAb { ch }, mask(48, 16), 1),
        op::RD => (
            Instr::Rd {
                ch,
                bank: get_bank(w),
                col: get(w, 28, 8) as u8,
            },
            mask(28, 36),
            1,
        ),
        op::WR => (
            Instr::Wr {
                ch,
                bank: get_bank(w),
                col: get(w, 28, 8) as u8,
                data: get(w, 0, 28) as u32,
            },
            u64::MAX,
            1,
        ),
        op::WRGB => (
            Instr::Wrgb {
                ch,
                buf: get(w, 32, 16) as u16,
                data: get(w, 0, 32) as u32,
            },
            u64::MAX,
            1,
        ),
        op::MAC => (
            Instr::Mac {
                ch,
                col: get(w, 40, 8) as u8,
                buf: get(w, 24, 16) as u16,
                reg: get(w, 8, 16) as u16,
                reduce: get(w, 7, 1) == 1,
                bcast: get(w, 6, 1) == 1,
            },
            mask(6, 58),
            1,
        ),
        op::LUTACC => (
            Instr::LutAcc {
                ch,
                col: get(w, 40, 8) as u8,
                bits: flag_bits(get(w, 39, 1)),
                group: get(w, 32, 7) as u8,
                table: get(w, 16, 16) as u16,
                reg: get(w, 0, 16) as u16,
            },
            u64::MAX,
            1,
        ),
        op::HISTACC => (
            Instr::HistAcc {
                ch,
                col: get(w, 40, 8) as u8,
                bits: flag_bits(get(w, 39, 1)),
                group: get(w, 32, 7) as u8,
                weights: get(w, 16, 16) as u16,
                reg: get(w, 0, 16) as u16,
            },
            u64::MAX,
            1,
        ),
        op::ARGMIN => (
            Instr::ArgMin {
                ch,
                col: get(w, 40, 8) as u8,
                start: get(w, 36, 4) as u8,
                dsub: get(w, 32, 4) as u8 + 1,
                nbits: get(w, 28, 4) as u8,
                cb: get(w, 12, 16) as u16,
                reg: get(w, 0, 12) as u16,
            },
            u64::MAX,
            1,
        ),
        op::MVD => (
            Instr::Mvd {
                ch,
                reg: get(w, 32, 16) as u16,
                len: get(w, 16, 16) as u16,
                die: get(w, 0, 16) as u16,
            },
            u64::MAX,
            1,
        ),
        op::MVB => (
            Instr::Mvb {
                ch,
                die: get(w, 32, 16) as u16,
                broadcast: get(w, 31, 1) == 1,
                len: get(w, 16, 15) as u16,
                buf: get(w, 0, 16) as u16,
            },
            u64::MAX,
            1,
        ),
        op::SFM | op::SFM_STATS => (
            Instr::Sfm {
                ch,
                die: get(w, 32, 16) as u16,
                len: get(w, 16, 16) as u16,
                scale: f16::from_bits(get(w, 0, 16) as u16),
                stats: opcode == op::SFM_STATS,
            },
            u64::MAX,
            1,
        ),
        op::CLR => (
            Instr::Clr {
                ch,
                off: get(w, 32, 16) as u16,
                len: get(w, 16, 16) as u16,
                die: get(w, 15, 1) == 1,
            },
            mask(15, 49),
            1,
        ),
        op::BINMAC => (
            Instr::BinMac {
                ch,
                col: get(w, 40, 8) as u8,
                dsub: get(w, 36, 4) as u8 + 1,
                bins: get(w, 20, 16) as u16,
                out: get(w, 4, 16) as u16,
            },
            mask(4, 60),
            1,
        ),
        op::RED => (
            Instr::Red {
                ch,
                src: get(w, 32, 16) as u16,
                len: get(w, 16, 16) as u16,
                dst: get(w, 0, 16) as u16,
            },
            u64::MAX,
            1,
        ),
        op::RDD => (
            Instr::Rdd {
                ch,
                die: get(w, 32, 16) as u16,
                len: get(w, 16, 16) as u16,
            },
            mask(16, 48),
            1,
        ),
        op::STC => (
            Instr::Stc {
                ch,
                bank: get_bank(w),
                col: get(w, 28, 8) as u8,
                reg: get(w, 12, 16) as u16,
                bits: flag_bits(get(w, 11, 1)),
            },
            mask(11, 53),
            1,
        ),
        op::BARRIER => (Instr::Barrier, mask(56, 8), 1),
        op::LOOP => {
            let Some(&s) = words.get(i + 1) else {
                return Err(err("LOOP without its strides word".into()));
            };
            if s & 0xF != 0 {
                return Err(PimError::Decode {
                    word: i + 1,
                    reason: "reserved bits 3..0 of the strides word are set".into(),
                });
            }
            (
                Instr::Loop {
                    count: get(w, 32, 24) as u32,
                    strides: get_strides(s),
                },
                mask(32, 32),
                2,
            )
        }
        op::ENDLOOP => (Instr::EndLoop, mask(56, 8), 1),
        other => return Err(err(format!("unknown opcode {other:#04x}"))),
    };
    if w & !used != 0 {
        return Err(err(format!(
            "reserved bits set in {} word {w:#018x}",
            ins.mnemonic()
        )));
    }
    ins.check_fields().map_err(err)?;
    Ok((ins, n))
}

/// Mask of bits `lo..lo + width`.
fn mask(lo: u32, width: u32) -> u64 {
    if width >= 64 {
        u64::MAX
    } else {
        ((1u64 << width) - 1) << lo
    }
}

/// Decodes a program.
pub fn decode_program(words: &[u64]) -> Result<Program> {
    let mut instrs = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let (ins, n) = decode_instr(words, i)?;
        instrs.push(ins);
        i += n;
    }
    Program::new(instrs)
}

/// The binary file form (see [`Program::to_bytes`]).
pub fn to_bytes(p: &Program) -> Vec<u8> {
    let words = encode_program(p);
    let mut out = Vec::with_capacity(16 + 8 * words.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(words.len() as u32).to_le_bytes());
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// Reads the binary file form.
pub fn from_bytes(bytes: &[u8]) -> Result<Program> {
    let err = |reason: String| PimError::Decode { word: 0, reason };
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(err(
            "not an aqpim PIM program (magic `AQPIMPRG` missing)".into()
        ));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(err(format!(
            "version {version}; this build reads version {VERSION}"
        )));
    }
    let n = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    let body = &bytes[16..];
    if body.len() != n.saturating_mul(8) {
        return Err(err(format!(
            "header says {n} words, file holds {} bytes after the header",
            body.len()
        )));
    }
    let words: Vec<u64> = body
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    decode_program(&words)
}

/// Whether `bytes` start with the binary program magic.
pub fn is_binary(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[..8] == MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_sign_extend() {
        let s = Strides {
            row: -512,
            col: 511,
            buf: -1,
            reg: 0,
            data: 32,
            die: -7,
        };
        assert_eq!(get_strides(put_strides(s)), s);
    }

    #[test]
    fn zero_word_is_rejected() {
        assert!(decode_program(&[0]).is_err());
    }
}
