//! The assembler: the assembly text form read into a [`Program`], and a
//! program written back as text (each line an instruction's canonical
//! [`Display`](std::fmt::Display) form, from the instruction table). One
//! instruction per line: a mnemonic
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

use crate::error::{PimError, Result};
use crate::isa::table::{
    by_mnemonic, check_value, Field, FieldValue, Kind, Values, BANK_PARTS, MAX_FIELDS, STRIDE_NAMES,
};
use crate::isa::{Instr, Program, Strides};

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
        let v = parse_uint(text).ok_or_else(|| {
            self.err(format!("`{key}={}` is not an unsigned integer", clip(text)))
        })?;
        if v > max {
            return Err(self.err(format!("`{key}={v}` exceeds {max}")));
        }
        Ok(v)
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

    /// The value of field `f` (its table value: see `table::Values`).
    fn field(&mut self, f: &Field, positional: &[&str]) -> Result<u128> {
        Ok(match f.kind {
            Kind::Uint | Kind::Channel => self.int(f.name, f.max)?.into(),
            Kind::Pow2 => {
                let v = self.int(f.name, f.max)?.into();
                check_value(f, v).map_err(|r| self.err(r))?;
                v
            }
            Kind::Count => {
                let text = positional
                    .first()
                    .ok_or_else(|| self.err(format!("the {} is missing", f.name)))?;
                let v = parse_uint(text).ok_or_else(|| {
                    self.err(format!("{} `{}` is not an integer", f.name, clip(text)))
                })?;
                check_value(f, v.into()).map_err(|r| self.err(r))?;
                v.into()
            }
            Kind::Flag | Kind::AltOpcode(_) => self.flag(f.name).into(),
            Kind::CodeBits => match f.default {
                Some(d) if !self.values.contains_key(f.name) => d.into(),
                _ => match self.int(f.name, 8)? {
                    v @ (4 | 8) => v.into(),
                    other => {
                        return Err(self.err(format!("`{}={other}`: codes are 4 or 8 bits", f.name)))
                    }
                },
            },
            Kind::Scale => {
                let text = self.take(f.name)?;
                let v: f32 = text.parse().map_err(|_| {
                    self.err(format!("`{}={}` is not a number", f.name, clip(text)))
                })?;
                let scale = f16::from_f32(v);
                if !scale.is_finite() {
                    return Err(self.err(format!(
                        "`{}={}` is not a finite FP16 value",
                        f.name,
                        clip(text)
                    )));
                }
                scale.raw()
            }
            Kind::Bank => {
                let mut packed = 0u128;
                for (name, _, max) in BANK_PARTS {
                    packed = (packed << 8) | u128::from(self.int(name, max)?);
                }
                packed
            }
            Kind::Strides => {
                let mut s = [0i16; 6];
                for (slot, key) in s.iter_mut().zip(STRIDE_NAMES) {
                    if let Some(t) = self.values.remove(key) {
                        *slot = match parse_int(t) {
                            Some(v) if (-512..=511).contains(&v) => v as i16,
                            _ => {
                                return Err(self.err(format!(
                                    "stride `{key}={}` is not an integer in -512..=511",
                                    clip(t)
                                )))
                            }
                        };
                    }
                }
                Strides::from_array(s).raw()
            }
        })
    }

    fn finish(self) -> Result<()> {
        if let Some((k, _)) = self.values.iter().next() {
            return Err(self.err(format!("unknown operand `{}=`", clip(k))));
        }
        if let Some(f) = self.flags.first() {
            return Err(self.err(format!("unknown operand `{}`", clip(f))));
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
fn parse_line(text: &str, line: usize) -> Result<Option<Instr>> {
    let code = text.split(['#', ';']).next().unwrap_or("");
    let mut words = code.split_whitespace();
    let Some(mnemonic) = words.next() else {
        return Ok(None);
    };
    let err = |reason: String| PimError::Asm { line, reason };
    let mnemonic = mnemonic.to_ascii_uppercase();
    let Some((row, spec)) = by_mnemonic(&mnemonic) else {
        return Err(err(format!("unknown mnemonic `{}`", clip(&mnemonic))));
    };
    let takes_positional = spec.fields.iter().any(|f| f.kind == Kind::Count);
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
                    return Err(err(format!("malformed operand `{}`", clip(w))));
                }
                if ops.values.insert(k, v).is_some() {
                    return Err(err(format!("operand `{}=` given twice", clip(k))));
                }
            }
            None if takes_positional && positional.is_empty() && ops.values.is_empty() => {
                positional.push(w)
            }
            None => ops.flags.push(w),
        }
    }
    let mut v: Values = [0; MAX_FIELDS];
    for (slot, f) in v.iter_mut().zip(spec.fields) {
        *slot = ops.field(f, &positional)?;
    }
    ops.finish()?;
    let ins = Instr::from_values(row, &v)
        .ok_or_else(|| err(format!("a {} operand is out of range", spec.mnemonic)))?;
    ins.check_fields().map_err(err)?;
    Ok(Some(ins))
}

/// `text` cut to a readable length for an error message.
fn clip(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

impl Program {
    /// Assembles text: one instruction per line (see the module's format).
    pub fn assemble(text: &str) -> Result<Program> {
        let mut instrs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if let Some(ins) = parse_line(line, i + 1)? {
                instrs.push(ins);
            }
        }
        Program::new(instrs)
    }

    /// Disassembles to text that [`Program::assemble`] reads back unchanged,
    /// indenting loop bodies by two spaces.
    pub fn disassemble(&self) -> String {
        let mut out = String::new();
        let mut depth = 0usize;
        for ins in self.instrs() {
            if matches!(ins, Instr::EndLoop) {
                depth = depth.saturating_sub(1);
            }
            out.push_str(&"  ".repeat(depth));
            out.push_str(&ins.to_string());
            out.push('\n');
            if matches!(ins, Instr::Loop { .. }) {
                depth += 1;
            }
        }
        out
    }
}
