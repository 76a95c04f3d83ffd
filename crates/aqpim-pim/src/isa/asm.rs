//! The assembly text form. One instruction per line: a mnemonic
//! (case-insensitive) then `key=value` operands in any order, plus bare flags
//! (`reduce`, `bcast`, `stats`, `die`); `#` or `;` start a comment. Numbers are decimal or
//! `0x` hex; strides may be negative; `scale` is a decimal float.
//!
//! ```text
//! ACTAB ch=0 row=7
//! LOOP 32 col=1 reg=1        # strides: row col buf reg data die
//!   LUTACC ch=0 col=0 bits=8 group=32 table=0 reg=0
//! ENDLOOP
//! ```

use std::collections::BTreeMap;

use half::f16;

use super::{BankSel, CodeBits, Instr, Program, Strides};
use crate::error::{PimError, Result};

/// Formats one instruction in canonical form (operands in a fixed order,
/// strides and flags only when set).
pub fn format_instr(ins: &Instr) -> String {
    let m = ins.mnemonic();
    let b = |b: &BankSel| format!("pc={} sid={} bg={} bank={}", b.pc, b.sid, b.bg, b.bank);
    let bits = |c: CodeBits| c.bits();
    match ins {
        Instr::Act { ch, bank, row } => format!("{m} ch={ch} {} row={row}", b(bank)),
        Instr::Pre { ch, bank } => format!("{m} ch={ch} {}", b(bank)),
        Instr::ActAb { ch, row } => format!("{m} ch={ch} row={row}"),
        Instr::PreAb { ch } => format!("{m} ch={ch}"),
        Instr::Rd { ch, bank, col } => format!("{m} ch={ch} {} col={col}", b(bank)),
        Instr::Wr {
            ch,
            bank,
            col,
            data,
        } => format!("{m} ch={ch} {} col={col} data={data}", b(bank)),
        Instr::Wrgb { ch, buf, data } => format!("{m} ch={ch} buf={buf} data={data}"),
        Instr::Mac {
            ch,
            col,
            buf,
            reg,
            reduce,
            bcast,
        } => {
            format!(
                "{m} ch={ch} col={col} buf={buf} reg={reg}{}{}",
                if *reduce { " reduce" } else { "" },
                if *bcast { " bcast" } else { "" }
            )
        }
        Instr::LutAcc {
            ch,
            col,
            bits: c,
            group,
            table,
            reg,
        } => {
            format!(
                "{m} ch={ch} col={col} bits={} group={group} table={table} reg={reg}",
                bits(*c)
            )
        }
        Instr::HistAcc {
            ch,
            col,
            bits: c,
            group,
            weights,
            reg,
        } => {
            format!(
                "{m} ch={ch} col={col} bits={} group={group} weights={weights} reg={reg}",
                bits(*c)
            )
        }
        Instr::ArgMin {
            ch,
            col,
            start,
            dsub,
            nbits,
            cb,
            reg,
        } => {
            format!(
                "{m} ch={ch} col={col} start={start} dsub={dsub} nbits={nbits} cb={cb} reg={reg}"
            )
        }
        Instr::Mvd { ch, reg, len, die } => format!("{m} ch={ch} reg={reg} len={len} die={die}"),
        Instr::Mvb {
            ch,
            die,
            len,
            buf,
            broadcast,
        } => {
            format!(
                "{m} ch={ch} die={die} len={len} buf={buf}{}",
                if *broadcast { " bcast" } else { "" }
            )
        }
        // f32's Display is the shortest text that parses back to the same
        // f32, and every f16 is exact in f32, so the scale round-trips.
        Instr::Sfm {
            ch,
            die,
            len,
            scale,
            stats,
        } => format!(
            "{m} ch={ch} die={die} len={len} scale={}{}",
            scale.to_f32(),
            if *stats { " stats" } else { "" }
        ),
        Instr::Clr { ch, off, len, die } => format!(
            "{m} ch={ch} off={off} len={len}{}",
            if *die { " die" } else { "" }
        ),
        Instr::BinMac {
            ch,
            col,
            dsub,
            bins,
            out,
        } => format!("{m} ch={ch} col={col} dsub={dsub} bins={bins} out={out}"),
        Instr::Red { ch, src, len, dst } => format!("{m} ch={ch} src={src} len={len} dst={dst}"),
        Instr::Rdd { ch, die, len } => format!("{m} ch={ch} die={die} len={len}"),
        Instr::Stc {
            ch,
            bank,
            col,
            reg,
            bits: c,
        } => format!(
            "{m} ch={ch} {} col={col} reg={reg} bits={}",
            b(bank),
            bits(*c)
        ),
        Instr::Barrier | Instr::EndLoop => m.to_string(),
        Instr::Loop { count, strides } => {
            let mut s = format!("{m} {count}");
            let names = ["row", "col", "buf", "reg", "data", "die"];
            for (n, v) in names.iter().zip(strides.to_array()) {
                if v != 0 {
                    s.push_str(&format!(" {n}={v}"));
                }
            }
            s
        }
    }
}

/// Disassembles a program, indenting loop bodies by two spaces.
pub fn disassemble(p: &Program) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for ins in p.instrs() {
        if matches!(ins, Instr::EndLoop) {
            depth = depth.saturating_sub(1);
        }
        out.push_str(&"  ".repeat(depth));
        out.push_str(&format_instr(ins));
        out.push('\n');
        if matches!(ins, Instr::Loop { .. }) {
            depth += 1;
        }
    }
    out
}

/// Operands of one line: `key=value` pairs and bare flags.
struct Operands<'a> {
    line: usize,
    values: BTreeMap<&'a str, &'a str>,
    flags: Vec<&'a str>,
}

impl<'a> Operands<'a> {
    fn err(&self, reason: impl Into<String>) -> PimError {
        PimError::Asm {
            line: self.line,
            reason: reason.into(),
        }
    }

    fn take(&mut self, key: &str) -> Result<&'a str> {
        self.values
            .remove(key)
            .ok_or_else(|| self.err(format!("missing operand `{key}=`")))
    }

    fn int(&mut self, key: &str, max: u64) -> Result<u64> {
        let text = self.take(key)?;
        let v = parse_uint(text)
            .ok_or_else(|| self.err(format!("`{key}={text}` is not an unsigned integer")))?;
        if v > max {
            return Err(self.err(format!("`{key}={v}` exceeds {max}")));
        }
        Ok(v)
    }

    fn u8(&mut self, key: &str, max: u64) -> Result<u8> {
        Ok(self.int(key, max.min(255))? as u8)
    }

    fn u16(&mut self, key: &str) -> Result<u16> {
        Ok(self.int(key, 65535)? as u16)
    }

    fn flag(&mut self, name: &str) -> bool {
        match self.flags.iter().position(|f| *f == name) {
            Some(i) => {
                self.flags.remove(i);
                true
            }
            None => false,
        }
    }

    fn bank(&mut self) -> Result<BankSel> {
        Ok(BankSel {
            pc: self.u8("pc", 3)?,
            sid: self.u8("sid", 3)?,
            bg: self.u8("bg", 15)?,
            bank: self.u8("bank", 15)?,
        })
    }

    fn code_bits(&mut self) -> Result<CodeBits> {
        match self.int("bits", 8)? {
            8 => Ok(CodeBits::Eight),
            4 => Ok(CodeBits::Four),
            other => Err(self.err(format!("`bits={other}`: codes are 4 or 8 bits"))),
        }
    }

    fn finish(self) -> Result<()> {
        if let Some((k, _)) = self.values.iter().next() {
            return Err(self.err(format!("unknown operand `{k}=`")));
        }
        if let Some(f) = self.flags.first() {
            return Err(self.err(format!("unknown operand `{f}`")));
        }
        Ok(())
    }
}

fn parse_uint(text: &str) -> Option<u64> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

fn parse_int(text: &str) -> Option<i64> {
    match text.strip_prefix('-') {
        Some(rest) => parse_uint(rest)
            .and_then(|v| i64::try_from(v).ok())
            .map(|v| -v),
        None => parse_uint(text).and_then(|v| i64::try_from(v).ok()),
    }
}

/// Parses one line; `None` for blank and comment-only lines.
pub fn parse_line(text: &str, line: usize) -> Result<Option<Instr>> {
    let code = text.split(['#', ';']).next().unwrap_or("");
    let mut words = code.split_whitespace();
    let Some(mnemonic) = words.next() else {
        return Ok(None);
    };
    let err = |reason: String| PimError::Asm { line, reason };
    let mnemonic = mnemonic.to_ascii_uppercase();
    let mut positional = Vec::new();
    let mut ops = Operands {
        line,
        values: BTreeMap::new(),
        flags: Vec::new(),
    };
    for w in words {
        match w.split_once('=') {
            Some((k, v)) => {
                if k.is_empty() || v.is_empty() {
                    return Err(err(format!("malformed operand `{w}`")));
                }
                if ops.values.insert(k, v).is_some() {
                    return Err(err(format!("operand `{k}=` given twice")));
                }
            }
            None if mnemonic == "LOOP" && positional.is_empty() && ops.values.is_empty() => {
                positional.push(w)
            }
            None => ops.flags.push(w),
        }
    }
    let ins = match mnemonic.as_str() {
        "ACT" => Instr::Act {
            ch: ops.u8("ch", 255)?,
            bank: ops.bank()?,
            row: ops.int("row", (1 << 24) - 1)? as u32,
        },
        "PRE" => Instr::Pre {
            ch: ops.u8("ch", 255)?,
            bank: ops.bank()?,
        },
        "ACTAB" => Instr::ActAb {
            ch: ops.u8("ch", 255)?,
            row: ops.int("row", (1 << 24) - 1)? as u32,
        },
        "PREAB" => Instr::PreAb {
            ch: ops.u8("ch", 255)?,
        },
        "RD" => Instr::Rd {
            ch: ops.u8("ch", 255)?,
            bank: ops.bank()?,
            col: ops.u8("col", 255)?,
        },
        "WR" => Instr::Wr {
            ch: ops.u8("ch", 255)?,
            bank: ops.bank()?,
            col: ops.u8("col", 255)?,
            data: ops.int("data", (1 << 28) - 1)? as u32,
        },
        "WRGB" => Instr::Wrgb {
            ch: ops.u8("ch", 255)?,
            buf: ops.u16("buf")?,
            data: ops.int("data", u32::MAX.into())? as u32,
        },
        "MAC" => Instr::Mac {
            ch: ops.u8("ch", 255)?,
            col: ops.u8("col", 255)?,
            buf: ops.u16("buf")?,
            reg: ops.u16("reg")?,
            reduce: ops.flag("reduce"),
            bcast: ops.flag("bcast"),
        },
        "LUTACC" => Instr::LutAcc {
            ch: ops.u8("ch", 255)?,
            col: ops.u8("col", 255)?,
            bits: ops.code_bits()?,
            group: ops.u8("group", 64)?,
            table: ops.u16("table")?,
            reg: ops.u16("reg")?,
        },
        "HISTACC" => Instr::HistAcc {
            ch: ops.u8("ch", 255)?,
            col: ops.u8("col", 255)?,
            bits: ops.code_bits()?,
            group: ops.u8("group", 64)?,
            weights: ops.u16("weights")?,
            reg: ops.u16("reg")?,
        },
        "ARGMIN" => Instr::ArgMin {
            ch: ops.u8("ch", 255)?,
            col: ops.u8("col", 255)?,
            start: ops.u8("start", 15)?,
            dsub: ops.u8("dsub", 16)?,
            nbits: ops.u8("nbits", 8)?,
            cb: ops.u16("cb")?,
            reg: ops.int("reg", 4095)? as u16,
        },
        "MVD" => Instr::Mvd {
            ch: ops.u8("ch", 255)?,
            reg: ops.u16("reg")?,
            len: ops.u16("len")?,
            die: ops.u16("die")?,
        },
        "MVB" => Instr::Mvb {
            ch: ops.u8("ch", 255)?,
            die: ops.u16("die")?,
            len: ops.int("len", 32767)? as u16,
            buf: ops.u16("buf")?,
            broadcast: ops.flag("bcast"),
        },
        "SFM" => {
            let ch = ops.u8("ch", 255)?;
            let die = ops.u16("die")?;
            let len = ops.u16("len")?;
            let text = ops.take("scale")?;
            let v: f32 = text
                .parse()
                .map_err(|_| err(format!("`scale={text}` is not a number")))?;
            let scale = f16::from_f32(v);
            if !scale.is_finite() {
                return Err(err(format!("`scale={text}` is not a finite FP16 value")));
            }
            Instr::Sfm {
                ch,
                die,
                len,
                scale,
                stats: ops.flag("stats"),
            }
        }
        "CLR" => Instr::Clr {
            ch: ops.u8("ch", 255)?,
            off: ops.u16("off")?,
            len: ops.u16("len")?,
            die: ops.flag("die"),
        },
        "BINMAC" => Instr::BinMac {
            ch: ops.u8("ch", 255)?,
            col: ops.u8("col", 255)?,
            dsub: ops.u8("dsub", 16)?,
            bins: ops.u16("bins")?,
            out: ops.u16("out")?,
        },
        "RED" => Instr::Red {
            ch: ops.u8("ch", 255)?,
            src: ops.u16("src")?,
            len: ops.u16("len")?,
            dst: ops.u16("dst")?,
        },
        "RDD" => Instr::Rdd {
            ch: ops.u8("ch", 255)?,
            die: ops.u16("die")?,
            len: ops.u16("len")?,
        },
        "STC" => Instr::Stc {
            ch: ops.u8("ch", 255)?,
            bank: ops.bank()?,
            col: ops.u8("col", 255)?,
            reg: ops.u16("reg")?,
            bits: if ops.values.contains_key("bits") {
                ops.code_bits()?
            } else {
                CodeBits::Eight
            },
        },
        "BARRIER" => Instr::Barrier,
        "ENDLOOP" => Instr::EndLoop,
        "LOOP" => {
            let count_text = positional
                .first()
                .ok_or_else(|| err("LOOP needs a count".into()))?;
            let count = parse_uint(count_text)
                .ok_or_else(|| err(format!("LOOP count `{count_text}` is not an integer")))?;
            if count == 0 || count >= 1 << 24 {
                return Err(err(format!("LOOP count {count} is outside 1..2^24")));
            }
            let mut stride = |key: &str| -> Result<i16> {
                match ops.values.remove(key) {
                    None => Ok(0),
                    Some(t) => match parse_int(t) {
                        Some(v) if (-512..=511).contains(&v) => Ok(v as i16),
                        _ => Err(err(format!(
                            "stride `{key}={t}` is not an integer in -512..=511"
                        ))),
                    },
                }
            };
            let strides = Strides {
                row: stride("row")?,
                col: stride("col")?,
                buf: stride("buf")?,
                reg: stride("reg")?,
                data: stride("data")?,
                die: stride("die")?,
            };
            Instr::Loop {
                count: count as u32,
                strides,
            }
        }
        other => return Err(err(format!("unknown mnemonic `{other}`"))),
    };
    ops.finish()?;
    ins.check_fields().map_err(err)?;
    Ok(Some(ins))
}

/// Assembles a program from text.
pub fn assemble(text: &str) -> Result<Program> {
    let mut instrs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(ins) = parse_line(line, i + 1)? {
            instrs.push(ins);
        }
    }
    Program::new(instrs)
}
