//! Scalar-quantized attention lowered to dequantize-and-MAC programs (a
//! Pimba-style design): where a slice's codes and group parameters lie in a
//! bank's rows, the commands each row issues (`LDP` of its parameter
//! columns, `QMAC` per code column), and the slice program. The layout and
//! its rationale are in `docs/design/pim-lowering.md` ("Scalar codes").
//!
//! Every part (keys, values) of a slice is a sequence of code columns per
//! bank, `j = 0 .. n_b d / n` (`n` codes per column). Column `j` uses the
//! group parameters ("entries") `E(j) = floor(j n / G)` onwards, `ceil(n /
//! G)` of them, for every layout below; a row holds `per_row` code columns
//! then the `param_cols` columns of the entries its code columns use (from
//! `E` of its first column), so one activation serves both.
//!
//! - KIVI keys (min/scale over `G` tokens of a channel) are channel-major
//!   within each block of `B = max(n, G)` slots of a bank: block `b`,
//!   channel `c` holds the codes of slots `bB .. bB + B` in `B / n`
//!   columns, and their entries `(b d + c) B / G ..` are the groups of that
//!   channel in slot order. Scores: `QMAC bcast` with the query element `c`
//!   from the buffer into the registers of the column's slots.
//! - MX keys and all values are token-major: slot `s` holds its `d` codes
//!   in `d / n` columns, entries `s d / G ..` the groups of its channels.
//!   MX scores: `QMAC reduce` of a column against its query lanes into the
//!   slot's register; values: `QMAC bcast` of the slot's softmax weight into
//!   the output registers of the column's channels.

use aqpim_pim::{Device, Instr};

use crate::error::{AttnError, Result};
use crate::pim::layout::{Geom, Part};
use crate::pim::program::{reduce_out, softmax, write_heads, Out, Phase, Rows};
use crate::pim::{ScalarCodes, ScalarScale};

/// The largest `pslot` a QMAC encodes (7 bits).
const MAX_PSLOT: usize = 127;

/// Buffer and register elements QMAC's 11-bit `buf` and `reg` fields reach.
pub(crate) const QMAC_OPERANDS: usize = 1 << 11;

/// How a part's code columns map to buffer and registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// KIVI keys, channel-major in blocks of `block` slots: `QMAC bcast`.
    KeysByChannel {
        /// Slots per block, `max(n, G)`.
        block: usize,
    },
    /// MX keys, token-major: `QMAC reduce`.
    KeysByToken,
    /// Values, token-major: `QMAC bcast` of the slot's weight.
    Values,
}

/// One part (keys or values) of a scalar slice in a bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScalarPart {
    /// Codes per column (`n = column bytes x 8 / bits`).
    pub n: usize,
    /// Elements per parameter group (`G`).
    pub group: usize,
    /// Bytes per entry: 4 (FP16 min, scale) or 1 (MX exponent).
    pub entry_bytes: usize,
    /// Code columns per row.
    pub per_row: usize,
    /// Parameter columns per row, after the code columns.
    pub param_cols: usize,
    /// Code columns per token (`d / n`).
    pub cpt: usize,
    /// The head dimension.
    pub d: usize,
    /// How its columns are read.
    pub role: Role,
}

/// What a row of a part issues, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowOp {
    /// Latch slot `slot` = the row's column `col`.
    Ldp { col: usize, slot: usize },
    /// Dequantize-and-MAC of the row's column `col`.
    QMac {
        col: usize,
        buf: usize,
        reg: usize,
        pslot: usize,
    },
}

fn unfit(what: impl Into<String>) -> AttnError {
    AttnError::Placement(what.into())
}

impl ScalarPart {
    /// Entries per column: `ceil(n / G)`.
    pub fn entries_per_col(&self) -> usize {
        self.n.div_ceil(self.group)
    }

    /// First entry column `j` uses: `floor(j n / G)`.
    pub fn entry(&self, j: usize) -> usize {
        j * self.n / self.group
    }

    /// QMAC's `group`: codes per entry within one column.
    pub fn qmac_group(&self) -> usize {
        self.group.min(self.n)
    }

    /// Code columns of `n_b` slots.
    pub fn columns(&self, n_b: usize) -> usize {
        n_b * self.cpt
    }

    /// Rows of `n_b` slots.
    pub fn rows(&self, n_b: usize) -> usize {
        self.columns(n_b).div_ceil(self.per_row)
    }

    /// Buffer element and first register of code column `j`.
    pub fn operands(&self, j: usize) -> (usize, usize) {
        match self.role {
            Role::KeysByChannel { block } => {
                let cpb = block / self.n;
                let per_block = self.d * cpb;
                let (b, c, k) = (j / per_block, j % per_block / cpb, j % cpb);
                (c, b * block + k * self.n)
            }
            Role::KeysByToken => (j % self.cpt * self.n, j / self.cpt),
            Role::Values => (j / self.cpt, j % self.cpt * self.n),
        }
    }

    /// Latch columns one window loads: the latch, and no more entries than
    /// `pslot` reaches.
    fn window_cols(&self, device: &Device) -> usize {
        let cw = device.org.column_bytes;
        let by_pslot = ((MAX_PSLOT + 1) * self.entry_bytes / cw).max(1);
        (device.pim.latch_bytes / cw).min(by_pslot)
    }

    /// The commands of row `r` of `total` code columns: per window of
    /// parameter columns, `LDP` of each into latch slots from 0, then `QMAC`
    /// of every code column whose entries lie in the window.
    pub fn row_ops(&self, device: &Device, r: usize, total: usize) -> Vec<RowOp> {
        let cw = device.org.column_bytes;
        let per_col = cw / self.entry_bytes;
        let win = self.window_cols(device);
        let (j0, j1) = (r * self.per_row, ((r + 1) * self.per_row).min(total));
        let base = self.entry(j0);
        let mut ops = Vec::new();
        let mut j = j0;
        while j < j1 {
            let a = (self.entry(j) - base) / per_col;
            let cols = win.min(self.param_cols - a);
            for s in 0..cols {
                ops.push(RowOp::Ldp {
                    col: self.per_row + a + s,
                    slot: s,
                });
            }
            let (lo, hi) = (a * per_col, (a + cols) * per_col);
            while j < j1 {
                let rel = self.entry(j) - base;
                if rel + self.entries_per_col() > hi || rel - lo > MAX_PSLOT {
                    break;
                }
                let (buf, reg) = self.operands(j);
                ops.push(RowOp::QMac {
                    col: j - j0,
                    buf,
                    reg,
                    pslot: rel - lo,
                });
                j += 1;
            }
        }
        ops
    }
}

/// The scalar geometry of a slice: its two parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScalarGeom {
    /// The format.
    pub codes: ScalarCodes,
    /// The keys.
    pub k: ScalarPart,
    /// The values.
    pub v: ScalarPart,
}

impl ScalarGeom {
    /// Slots per bank come in multiples of this (whole KIVI key blocks).
    pub fn slot_multiple(&self) -> usize {
        match self.k.role {
            Role::KeysByChannel { block } => block,
            _ => 1,
        }
    }
}

/// One part's geometry: the code columns per row, and the parameter
/// columns that follow them, so that a row holds every entry its code
/// columns use.
fn part(device: &Device, d: usize, c: ScalarCodes, role: Role) -> Result<ScalarPart> {
    let cw = device.org.column_bytes;
    let n = cw * 8 / c.bits as usize;
    let entry_bytes = match c.scale {
        ScalarScale::MinScale => 4,
        ScalarScale::SharedExp => 1,
    };
    let mut p = ScalarPart {
        n,
        group: c.group,
        entry_bytes,
        per_row: 0,
        param_cols: 0,
        cpt: d / n,
        d,
        role,
    };
    let epc = p.entries_per_col();
    let per_col = cw / entry_bytes;
    let win = p.window_cols(device);
    if win == 0 || epc + per_col > (win * per_col).min(MAX_PSLOT + 1) {
        return Err(unfit(format!(
            "{epc} group parameters per code column do not fit a window of the {} B parameter latch",
            device.pim.latch_bytes
        )));
    }
    // Entries a row of `k` code columns may use: from `E(j0)` through
    // `E(j0 + k - 1) + epc`, at most `ceil(k n / G) + epc`.
    let param_cols = |k: usize| ((k * n).div_ceil(c.group) + epc).div_ceil(per_col);
    let columns = device.org.columns;
    p.per_row = (1..columns)
        .rev()
        .find(|&k| k + param_cols(k) <= columns)
        .ok_or_else(|| unfit("a row cannot hold one code column and its parameters"))?;
    p.param_cols = param_cols(p.per_row);
    Ok(p)
}

/// The geometry of scalar codes `c` with head dimension `d`, and the FP16
/// size of each part's tokens for [`Part`] (codes: `d bits / 8` bytes).
pub(crate) fn geom(device: &Device, d: usize, c: ScalarCodes) -> Result<(Part, Part, ScalarGeom)> {
    let cw = device.org.column_bytes;
    if device.pim.latch_bytes == 0 {
        return Err(unfit(format!(
            "device `{}` has no dequantize-and-MAC unit's latch for scalar codes (use hbm3-pimba-5.2)",
            device.name
        )));
    }
    if ![2, 4, 8].contains(&c.bits) {
        return Err(unfit(format!(
            "{}-bit scalar codes: QMAC reads 2-, 4- or 8-bit codes",
            c.bits
        )));
    }
    let n = cw * 8 / c.bits as usize;
    let g = c.group;
    if g == 0 || !(n.is_multiple_of(g) || g.is_multiple_of(n)) {
        return Err(unfit(format!(
            "groups of {g} neither divide nor fill whole columns of {n} codes"
        )));
    }
    if d == 0 || !d.is_multiple_of(n) {
        return Err(unfit(format!(
            "a token's {d} codes do not fill whole columns of {n} codes"
        )));
    }
    // Values are grouped over channels in both formats (and MX keys too).
    if !d.is_multiple_of(g) {
        return Err(unfit(format!("groups of {g} channels do not divide {d}")));
    }
    let key_role = match c.scale {
        ScalarScale::MinScale => Role::KeysByChannel { block: n.max(g) },
        ScalarScale::SharedExp => Role::KeysByToken,
    };
    let k = part(device, d, c, key_role)?;
    let v = part(device, d, c, Role::Values)?;
    let tb = d * c.bits as usize / 8;
    let tokens = |p: &ScalarPart| Part {
        tb,
        tpc: 1,
        cpt: p.cpt,
        rows: 0,
        pq: None,
    };
    Ok((tokens(&k), tokens(&v), ScalarGeom { codes: c, k, v }))
}

/// The instructions of one part's rows, from row `base`, for a pass of
/// `heads` query heads: each row's `LDP`s once, each of its `QMAC`s once
/// per head, head `i`'s operands `i` times `stride` (buffer, registers)
/// further on.
fn part_rows(
    out: &mut Out,
    device: &Device,
    p: &ScalarPart,
    (n_b, ch, base): (usize, u8, u32),
    heads: usize,
    stride: (usize, usize),
) {
    let total = p.columns(n_b);
    let (bits, mx) = (
        (device.org.column_bytes * 8 / p.n) as u8,
        p.entry_bytes == 1,
    );
    let reduce = p.role == Role::KeysByToken;
    for r in 0..p.rows(n_b) {
        out.push(Instr::ActAb {
            ch,
            row: base + r as u32,
        });
        for op in p.row_ops(device, r, total) {
            match op {
                RowOp::Ldp { col, slot } => out.push(Instr::Ldp {
                    ch,
                    col: col as u8,
                    slot: slot as u8,
                }),
                RowOp::QMac {
                    col,
                    buf,
                    reg,
                    pslot,
                } => {
                    for i in 0..heads {
                        out.push(Instr::QMac {
                            ch,
                            col: col as u8,
                            buf: (buf + i * stride.0) as u16,
                            reg: (reg + i * stride.1) as u16,
                            bits,
                            group: p.qmac_group() as u8,
                            pslot: pslot as u8,
                            reduce,
                            mx,
                        })
                    }
                }
            }
        }
        out.push(Instr::PreAb { ch });
    }
}

/// Scalar-code attention for a pass of query heads whose scaled FP16
/// queries sit in host data at bytes `heads`: `WRGB` the queries, `QMAC`
/// scores over the key rows (with `LDP` of their parameters), softmax on
/// the buffer die, `QMAC bcast` of each value column by its token's weight,
/// cross-bank reduction. Each row is activated and its parameters latched
/// once for the pass, each code column read by one `QMAC` per head: head
/// `i`'s query at buffer `i d`, its scores at registers `i n_b`, its weights
/// at buffer `i n_b`, its outputs at registers `i d`.
pub(crate) fn scalar_slice(
    out: &mut Out,
    device: &Device,
    g: &Geom,
    ch: u8,
    rows: Rows,
    heads: &[u32],
) {
    let Some(sc) = g.sc else {
        unreachable!("scalar_slice on a scalar geometry")
    };
    let (h, n_b, d) = (heads.len(), g.n_b, g.d);
    out.phase(Phase::Broadcast);
    let (lanes, cw) = (device.pim.lanes, device.org.column_bytes);
    write_heads(out, ch, d, heads, lanes, cw);
    out.phase(Phase::Scoring);
    out.push(Instr::Clr {
        ch,
        off: 0,
        len: (h * n_b) as u16,
        die: false,
    });
    part_rows(out, device, &sc.k, (n_b, ch, rows.k), h, (d, n_b));
    out.phase(Phase::Softmax);
    softmax(out, g, ch, h);
    out.phase(Phase::Values);
    out.push(Instr::Clr {
        ch,
        off: 0,
        len: (h * d) as u16,
        die: false,
    });
    part_rows(out, device, &sc.v, (n_b, ch, rows.v), h, (n_b, d));
    out.phase(Phase::Reduction);
    reduce_out(out, g, ch, 0, h);
}

/// The all-bank column commands of each row of a part, as `(LDPs,
/// QMACs)`, for the closed form.
pub(crate) fn row_counts(device: &Device, p: &ScalarPart, n_b: usize) -> Vec<(u64, u64)> {
    let total = p.columns(n_b);
    (0..p.rows(n_b))
        .map(|r| {
            p.row_ops(device, r, total)
                .iter()
                .fold((0, 0), |(l, q), op| match op {
                    RowOp::Ldp { .. } => (l + 1, q),
                    RowOp::QMac { .. } => (l, q + 1),
                })
        })
        .collect()
}
