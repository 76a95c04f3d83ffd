//! Checks a program against a device before it runs: every address, with
//! every loop offset it can take, stays inside the organisation, the buffers,
//! the registers, the buffer die and the host data. The run loop then works
//! on programs that cannot go out of range.

use crate::error::{PimError, Result};
use crate::isa::{asm::format_instr, Instr, Program};
use crate::resolve::Device;

/// Field kinds that loops stride, in [`Strides`](crate::Strides) order.
pub(crate) const ROW: usize = 0;
pub(crate) const COL: usize = 1;
pub(crate) const BUF: usize = 2;
pub(crate) const REG: usize = 3;
pub(crate) const DATA: usize = 4;
pub(crate) const DIE: usize = 5;

/// A program ready to run: every address checked for every loop offset.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub(crate) instrs: Vec<Instr>,
}

pub(crate) fn check_program(p: &Program, d: &Device, host_bytes: usize) -> Result<Checked> {
    let instrs = p.instrs().to_vec();
    // Offset range of each field kind under the enclosing loops.
    let mut stack: Vec<(usize, [i64; 6], [i64; 6])> = Vec::new();
    let mut lo = [0i64; 6];
    let mut hi = [0i64; 6];
    let o = &d.org;
    let banks = o.banks_per_channel as i64;
    let col_bytes = o.column_bytes as i64;
    let lanes = d.pim.lanes as i64;
    let buf_elems = d.pim.buffer_elements() as i64;
    let regs = d.pim.registers as i64;
    let die = d.pim.buffer_die_elements as i64;
    for (i, ins) in instrs.iter().enumerate() {
        let err = |reason: String| PimError::Program {
            index: i,
            instr: format_instr(ins),
            reason,
        };
        // `base + offsets` must lie in `0..=limit - extent` for every offset.
        let fits =
            |name: &str, base: u32, k: usize, extent: i64, limit: i64, what: &str| -> Result<()> {
                let (a, b) = (i64::from(base) + lo[k], i64::from(base) + hi[k]);
                if a < 0 {
                    return Err(err(format!(
                        "`{name}` goes negative ({a}) under the loop strides"
                    )));
                }
                if b + extent > limit {
                    return Err(err(format!(
                        "`{name}` reaches {b} (+{extent}) past the {what} ({limit})"
                    )));
                }
                Ok(())
            };
        let ch = |c: u8| -> Result<()> {
            if usize::from(c) >= o.channels {
                Err(err(format!(
                    "channel {c} does not exist ({} channels)",
                    o.channels
                )))
            } else {
                Ok(())
            }
        };
        let bank = |b: &crate::isa::BankSel| -> Result<()> {
            if usize::from(b.pc) >= o.pseudo_channels
                || usize::from(b.sid) >= o.sids
                || usize::from(b.bg) >= o.bank_groups
                || usize::from(b.bank) >= o.banks_per_group
            {
                Err(err(format!(
                    "bank pc={} sid={} bg={} bank={} is outside {}x{}x{}x{}",
                    b.pc,
                    b.sid,
                    b.bg,
                    b.bank,
                    o.pseudo_channels,
                    o.sids,
                    o.bank_groups,
                    o.banks_per_group
                )))
            } else {
                Ok(())
            }
        };
        // Programs built through `Program::new` are already checked; a
        // deserialized one may not be.
        ins.check_fields().map_err(err)?;
        let rows = o.rows as i64;
        let cols = o.columns as i64;
        match ins {
            Instr::Act {
                ch: c,
                bank: b,
                row,
            } => {
                ch(*c)?;
                bank(b)?;
                fits("row", *row, ROW, 1, rows, "rows")?;
            }
            Instr::Pre { ch: c, bank: b } => {
                ch(*c)?;
                bank(b)?;
            }
            Instr::ActAb { ch: c, row } => {
                ch(*c)?;
                fits("row", *row, ROW, 1, rows, "rows")?;
            }
            Instr::PreAb { ch: c } => ch(*c)?,
            Instr::Rd {
                ch: c,
                bank: b,
                col,
            } => {
                ch(*c)?;
                bank(b)?;
                fits("col", (*col).into(), COL, 1, cols, "columns")?;
            }
            Instr::Wr {
                ch: c,
                bank: b,
                col,
                data,
            } => {
                ch(*c)?;
                bank(b)?;
                fits("col", (*col).into(), COL, 1, cols, "columns")?;
                fits(
                    "data",
                    *data,
                    DATA,
                    col_bytes,
                    host_bytes as i64,
                    "host data",
                )?;
            }
            Instr::Wrgb { ch: c, buf, data } => {
                ch(*c)?;
                fits("buf", (*buf).into(), BUF, lanes, buf_elems, "bank buffer")?;
                fits(
                    "data",
                    *data,
                    DATA,
                    col_bytes,
                    host_bytes as i64,
                    "host data",
                )?;
            }
            Instr::Mac {
                ch: c,
                col,
                buf,
                reg,
                reduce,
                bcast,
            } => {
                ch(*c)?;
                fits("col", (*col).into(), COL, 1, cols, "columns")?;
                fits(
                    "buf",
                    (*buf).into(),
                    BUF,
                    if *bcast { 1 } else { lanes },
                    buf_elems,
                    "bank buffer",
                )?;
                fits(
                    "reg",
                    (*reg).into(),
                    REG,
                    if *reduce { 1 } else { lanes },
                    regs,
                    "registers",
                )?;
            }
            Instr::LutAcc {
                ch: c,
                col,
                bits,
                group,
                table,
                reg,
            } => {
                ch(*c)?;
                fits("col", (*col).into(), COL, 1, cols, "columns")?;
                let n = col_bytes * 8 / i64::from(bits.bits());
                let g = i64::from(*group);
                if g > n {
                    return Err(err(format!("group {g} exceeds the {n} codes of a column")));
                }
                fits(
                    "table",
                    (*table).into(),
                    BUF,
                    g * bits.table_len() as i64,
                    buf_elems,
                    "bank buffer",
                )?;
                fits(
                    "reg",
                    (*reg).into(),
                    REG,
                    (n + g - 1) / g,
                    regs,
                    "registers",
                )?;
            }
            Instr::HistAcc {
                ch: c,
                col,
                bits,
                group,
                weights,
                reg,
            } => {
                ch(*c)?;
                fits("col", (*col).into(), COL, 1, cols, "columns")?;
                let n = col_bytes * 8 / i64::from(bits.bits());
                let g = i64::from(*group);
                if g > n {
                    return Err(err(format!("group {g} exceeds the {n} codes of a column")));
                }
                fits(
                    "weights",
                    (*weights).into(),
                    BUF,
                    (n + g - 1) / g,
                    buf_elems,
                    "bank buffer",
                )?;
                fits(
                    "reg",
                    (*reg).into(),
                    REG,
                    g * bits.table_len() as i64,
                    regs,
                    "registers",
                )?;
            }
            Instr::ArgMin {
                ch: c,
                col,
                start,
                dsub,
                nbits,
                cb,
                reg,
            } => {
                ch(*c)?;
                fits("col", (*col).into(), COL, 1, cols, "columns")?;
                if i64::from(*start) + i64::from(*dsub) > lanes {
                    return Err(err(format!(
                        "lanes {start}..{} exceed the {lanes} lanes of a column",
                        start + dsub
                    )));
                }
                fits(
                    "cb",
                    (*cb).into(),
                    BUF,
                    (1i64 << nbits) * i64::from(*dsub),
                    buf_elems,
                    "bank buffer",
                )?;
                fits("reg", (*reg).into(), REG, 1, regs, "registers")?;
            }
            Instr::Mvd {
                ch: c,
                reg,
                len,
                die: dd,
            } => {
                ch(*c)?;
                fits("reg", (*reg).into(), REG, (*len).into(), regs, "registers")?;
                fits(
                    "die",
                    (*dd).into(),
                    DIE,
                    banks * i64::from(*len),
                    die,
                    "buffer die",
                )?;
            }
            Instr::Mvb {
                ch: c,
                die: dd,
                len,
                buf,
                broadcast,
            } => {
                ch(*c)?;
                let span = if *broadcast {
                    i64::from(*len)
                } else {
                    banks * i64::from(*len)
                };
                fits("die", (*dd).into(), DIE, span, die, "buffer die")?;
                fits(
                    "buf",
                    (*buf).into(),
                    BUF,
                    (*len).into(),
                    buf_elems,
                    "bank buffer",
                )?;
            }
            Instr::Sfm {
                ch: c,
                die: dd,
                len,
                stats,
                ..
            } => {
                ch(*c)?;
                let extra = if *stats { 2 } else { 0 };
                fits(
                    "die",
                    (*dd).into(),
                    DIE,
                    i64::from(*len) + extra,
                    die,
                    "buffer die",
                )?;
            }
            Instr::Clr {
                ch: c,
                off,
                len,
                die: to_die,
            } => {
                ch(*c)?;
                if *to_die {
                    fits("off", (*off).into(), DIE, (*len).into(), die, "buffer die")?;
                } else {
                    fits("off", (*off).into(), REG, (*len).into(), regs, "registers")?;
                }
            }
            Instr::BinMac {
                ch: c,
                col,
                dsub,
                bins,
                out,
            } => {
                ch(*c)?;
                fits("col", (*col).into(), COL, 1, cols, "columns")?;
                let dsub = i64::from(*dsub);
                if lanes % dsub != 0 {
                    return Err(err(format!(
                        "dsub={dsub} does not divide the {lanes} lanes of a column"
                    )));
                }
                fits("bins", (*bins).into(), REG, lanes / dsub, regs, "registers")?;
                // `out` is not strided.
                if i64::from(*out) + dsub > regs {
                    return Err(err(format!(
                        "`out` reaches {out} (+{dsub}) past the registers ({regs})"
                    )));
                }
            }
            Instr::Red {
                ch: c,
                src,
                len,
                dst,
            } => {
                ch(*c)?;
                fits(
                    "src",
                    (*src).into(),
                    DIE,
                    banks * i64::from(*len),
                    die,
                    "buffer die",
                )?;
                fits("dst", (*dst).into(), DIE, (*len).into(), die, "buffer die")?;
            }
            Instr::Rdd {
                ch: c,
                die: dd,
                len,
            } => {
                ch(*c)?;
                fits("die", (*dd).into(), DIE, (*len).into(), die, "buffer die")?;
            }
            Instr::Stc {
                ch: c,
                bank: b,
                col,
                reg,
                bits,
            } => {
                ch(*c)?;
                bank(b)?;
                fits("col", (*col).into(), COL, 1, cols, "columns")?;
                let n = col_bytes * 8 / i64::from(bits.bits());
                fits("reg", (*reg).into(), REG, n, regs, "registers")?;
            }
            Instr::Barrier => {}
            Instr::Loop { count, strides } => {
                stack.push((i, lo, hi));
                let n = i64::from(*count) - 1;
                for (k, s) in strides.to_array().iter().enumerate() {
                    let span = n * i64::from(*s);
                    lo[k] += span.min(0);
                    hi[k] += span.max(0);
                }
            }
            Instr::EndLoop => {
                let (_, l, h) = stack
                    .pop()
                    .ok_or_else(|| err("ENDLOOP without LOOP".into()))?;
                lo = l;
                hi = h;
            }
        }
    }
    if !stack.is_empty() {
        return Err(PimError::Program {
            index: instrs.len(),
            instr: String::new(),
            reason: "LOOP without ENDLOOP".into(),
        });
    }
    Ok(Checked { instrs })
}
