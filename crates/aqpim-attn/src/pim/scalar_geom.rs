//! The geometry of scalar codes in PIM banks (a Pimba-style design): where
//! a slice's codes and group parameters lie in a bank's rows, and the
//! commands each row issues (`LDP` of its parameter columns, `QMAC` per
//! code column); [`super::scalar`] lowers a slice to its program. The layout and
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

use aqpim_pim::Device;

use crate::error::{AttnError, Result};
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

/// The geometry of scalar codes `c` with head dimension `d`, and the bytes
/// of one token's codes in each part (`d bits / 8`).
pub(crate) fn geom(device: &Device, d: usize, c: ScalarCodes) -> Result<(ScalarGeom, usize)> {
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
    Ok((ScalarGeom { codes: c, k, v }, d * c.bits as usize / 8))
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
