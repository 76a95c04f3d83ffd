//! The binary encoding: one little-endian 64-bit word per instruction, two
//! for `LOOP`. The opcode is bits 63..56; the channel, where there is one,
//! bits 55..48; reserved bits must be zero. The full layout is in
//! `docs/pim.md` and in the table at each arm below.

use super::table::{
    bank_parts, by_opcode, stride_parts, FieldValue, Kind, Values, BANK_PARTS, MAX_FIELDS,
};
use super::{Instr, Program, Strides};
use crate::error::{PimError, Result};

const MAGIC: &[u8; 8] = b"AQPIMPRG";
const VERSION: u32 = 1;

/// `v` placed at bits `lo..lo + width`.
#[inline]
fn put(v: u64, lo: u32, width: u32) -> u64 {
    v.checked_shl(lo).map_or(0, |v| v & mask(lo, width))
}

/// Bits `lo..lo + width` of `w`.
#[inline]
fn get(w: u64, lo: u32, width: u32) -> u64 {
    (w & mask(lo, width)) >> lo
}

/// Mask of bits `lo..lo + width`.
fn mask(lo: u32, width: u32) -> u64 {
    let ones = if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    ones << lo
}

/// Strides word: row 63..54, col 53..44, buf 43..34, reg 33..24, data 23..14,
/// die 13..4, each signed 10-bit two's complement; bits 3..0 zero.
fn put_strides(s: [i16; 6]) -> u64 {
    s.iter()
        .enumerate()
        .map(|(i, &v)| put(v as u16 as u64, 54 - 10 * i as u32, 10))
        .fold(0, |a, b| a | b)
}

fn get_strides(w: u64) -> Strides {
    // Sign-extend each 10-bit field.
    Strides::from_array(std::array::from_fn(|i| {
        ((get(w, 54 - 10 * i as u32, 10) as i16) << 6) >> 6
    }))
}

/// Encodes one instruction into one or two words (fields must be in range:
/// [`Instr::check_fields`]). The layout of every field is its row of the
/// instruction table.
fn encode_instr(ins: &Instr, out: &mut Vec<u64>) {
    let spec = ins.spec();
    let mut opcode = spec.opcode;
    let mut w = 0u64;
    let mut second = None;
    for (f, &v) in spec.fields.iter().zip(&ins.values()) {
        let raw = v as u64;
        w |= match f.kind {
            Kind::Uint | Kind::Channel | Kind::Count => {
                put(raw.wrapping_sub(f.bias), f.lo, f.width)
            }
            Kind::Flag => put(raw, f.lo, 1),
            Kind::CodeBits => put(u64::from(raw == 4), f.lo, 1),
            Kind::Pow2 => put(
                u64::from((raw / f.min.max(1)).trailing_zeros()),
                f.lo,
                f.width,
            ),
            Kind::Scale => put(raw, f.lo, 16),
            Kind::Bank => {
                let mut lo = f.lo + f.width;
                let mut bits = 0;
                for ((_, width, _), part) in BANK_PARTS.iter().zip(bank_parts(v)) {
                    lo -= width;
                    bits |= put(part, lo, *width);
                }
                bits
            }
            Kind::AltOpcode(alt) => {
                if raw != 0 {
                    opcode = alt;
                }
                0
            }
            Kind::Strides => {
                second = Some(put_strides(stride_parts(v)));
                0
            }
        };
    }
    out.push(w | put(opcode.into(), 56, 8));
    out.extend(second);
}

/// Decodes one instruction at `words[i]`; returns it and the number of words used.
fn decode_instr(words: &[u64], i: usize) -> Result<(Instr, usize)> {
    let err = |reason: String| PimError::Decode { word: i, reason };
    let Some(&w) = words.get(i) else {
        return Err(err("past the end of the program".into()));
    };
    let opcode = get(w, 56, 8) as u8;
    let Some((row, spec, alt)) = by_opcode(opcode) else {
        return Err(err(format!("unknown opcode {opcode:#04x}")));
    };
    // `used` is the mask of bits the opcode defines; anything else must be zero.
    let mut used = mask(56, 8);
    let mut n = 1;
    let mut v: Values = [0; MAX_FIELDS];
    for (slot, f) in v.iter_mut().zip(spec.fields) {
        used |= mask(f.lo, f.width);
        *slot = match f.kind {
            Kind::Uint | Kind::Channel | Kind::Count => {
                u128::from(get(w, f.lo, f.width)) + u128::from(f.bias)
            }
            Kind::Flag => get(w, f.lo, 1).into(),
            Kind::CodeBits => {
                if get(w, f.lo, 1) == 1 {
                    4
                } else {
                    8
                }
            }
            Kind::Pow2 => u128::from(f.min.max(1)) << get(w, f.lo, f.width),
            Kind::Scale => get(w, f.lo, 16).into(),
            Kind::Bank => {
                let mut lo = f.lo + f.width;
                let mut packed = 0u32;
                for (_, width, _) in BANK_PARTS {
                    lo -= width;
                    packed = (packed << 8) | get(w, lo, width) as u32;
                }
                packed.into()
            }
            Kind::AltOpcode(_) => alt.into(),
            Kind::Strides => {
                let Some(&s) = words.get(i + 1) else {
                    return Err(err(format!("{} without its strides word", spec.mnemonic)));
                };
                if s & 0xF != 0 {
                    return Err(PimError::Decode {
                        word: i + 1,
                        reason: "reserved bits 3..0 of the strides word are set".into(),
                    });
                }
                n = 2;
                get_strides(s).raw()
            }
        };
    }
    let Some(ins) = Instr::from_values(row, &v) else {
        return Err(err(format!("a {} field is out of range", spec.mnemonic)));
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

/// Whether `bytes` start with the binary program magic (`AQPIMPRG`): a
/// file for [`Program::from_bytes`] rather than [`Program::assemble`].
pub fn is_binary(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[..8] == MAGIC
}

impl Program {
    /// Encodes to 64-bit words: one per instruction, two for `LOOP`.
    pub fn encode(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.instrs().len());
        for ins in self.instrs() {
            encode_instr(ins, &mut out);
        }
        out
    }

    /// Decodes 64-bit words.
    pub fn decode(words: &[u64]) -> Result<Program> {
        let mut instrs = Vec::with_capacity(words.len());
        let mut i = 0;
        while i < words.len() {
            let (ins, n) = decode_instr(words, i)?;
            instrs.push(ins);
            i += n;
        }
        Program::new(instrs)
    }

    /// The binary file form: magic `AQPIMPRG`, version 1 (u32 LE), word
    /// count (u32 LE), then the words (u64 LE).
    pub fn to_bytes(&self) -> Vec<u8> {
        let words = self.encode();
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
        Program::decode(&words)
    }
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
        assert_eq!(get_strides(put_strides(s.to_array())), s);
    }

    #[test]
    fn zero_word_is_rejected() {
        assert!(Program::decode(&[0]).is_err());
    }
}
