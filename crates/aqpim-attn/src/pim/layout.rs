//! Where a slice of a cache lives in a channel's banks, and the checks that
//! it fits.
//!
//! A *slice* is a run of `n` tokens of one (sequence, layer, KV head) cache
//! that one channel processes. Its tokens are dealt to the channel's `B`
//! banks bank-major: token `i` of the slice goes to bank `i / n_b`, slot
//! `i % n_b`, with `n_b = ceil(n / B)` slots per bank. Every bank but the
//! last non-empty one is full, so the padding slots sit at the end of the
//! buffer die after `MVD` (`die[b * n_b + s]`), where a softmax over the
//! first `n` elements leaves them out and one `CLR die` zeroes them.
//!
//! Per bank, a slice's keys and values occupy two row ranges: slot `s` at
//! byte `s * tb` of its range, `tb` the bytes per token (`M * bits / 8` for
//! codes, `2 d` for FP16). A token never straddles a row: `tb` divides the
//! column size or is a multiple of it. PQ slices also need the value
//! codebook (`ksub x d` FP16, subspace-major, centroid-major inside a
//! subspace) in every bank, shared by the slices of the same KV head on a
//! channel.

use aqpim_pim::{CodeBits, Device};
use aqpim_pq::CodeFormat;

use crate::error::{AttnError, Result};
use crate::pim::scalar_geom::{self as scalar, ScalarGeom};
use crate::pim::PimKind;

/// How one part (keys or values) of a slice lies in a bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Part {
    /// Bytes per token in a bank (codes or FP16).
    pub tb: usize,
    /// Tokens per column (`tb <= column bytes`), else 1.
    pub tpc: usize,
    /// Columns per token (`tb >= column bytes`), else 1.
    pub cpt: usize,
    /// Rows of this part per bank.
    pub rows: usize,
    /// PQ geometry, when the part holds codes.
    pub pq: Option<PqGeom>,
}

impl Part {
    /// Slots per row.
    pub fn slots_per_row(&self, columns: usize) -> usize {
        columns * self.tpc / self.cpt
    }
}

/// Geometry of one slice on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geom {
    /// Tokens in the slice.
    pub n: usize,
    /// Slots per bank: `ceil(n / banks)`, rounded up to whole columns of
    /// both parts.
    pub n_b: usize,
    /// Banks per channel.
    pub banks: usize,
    /// Head dimension.
    pub d: usize,
    /// Columns per row.
    pub columns: usize,
    /// The keys.
    pub k: Part,
    /// The values.
    pub v: Part,
    /// Scalar-code geometry, when the slice holds scalar codes.
    pub sc: Option<ScalarGeom>,
}

/// The PQ part of a slice's geometry (keys or values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PqGeom {
    /// Subspaces.
    pub m: usize,
    /// Sub-vector length.
    pub dsub: usize,
    /// Centroids per subspace.
    pub ksub: usize,
    /// Code width in the banks.
    pub bits: CodeBits,
    /// Table entries (and bins) per subspace: `2^bits` (16 or 256).
    pub stride: usize,
    /// Codes per LUTACC/HISTACC group: the subspaces of one column.
    pub group: usize,
    /// Column chunks a token's codes span (`cpt`); bins are built per chunk.
    pub chunks: usize,
    /// Codebook columns per subspace: `ksub * dsub * 2 / column bytes`.
    pub cb_cols_per_sub: usize,
    /// Codebook rows per bank.
    pub cb_rows: usize,
    /// Registers of bins for one chunk: `group * stride`.
    pub bins: usize,
}

impl PqGeom {
    /// Bytes of the whole codebook in FP16 (`M x ksub x dsub x 2`), as
    /// the quantization programs stream it.
    pub fn book_bytes(&self) -> usize {
        self.m * self.ksub * self.dsub * 2
    }
}

fn unfit(what: impl Into<String>) -> AttnError {
    AttnError::Placement(what.into())
}

/// Bytes per token and the PQ geometry of one part in `codes`' format.
fn pq_part(device: &Device, d: usize, codes: CodeFormat) -> Result<(usize, PqGeom)> {
    let org = &device.org;
    let cw = org.column_bytes;
    let lanes = device.pim.lanes;
    let CodeFormat { dsub, nbits, .. } = codes;
    if dsub == 0 || !d.is_multiple_of(dsub) {
        return Err(unfit(format!(
            "dsub {dsub} does not divide head dimension {d}"
        )));
    }
    // 4-bit codes lie in nibble columns; every other width up to 8 bits in
    // byte columns (a store's 2-bit rows are unpacked on the way in). Specs
    // reach the banks as 4- or 8-bit codes only (`BankFormat::of`).
    if nbits == 0 || nbits > 8 {
        return Err(unfit(format!(
            "{nbits}-bit codes: the PIM code columns hold 4- or 8-bit codes"
        )));
    }
    let m = d / dsub;
    let bits = if nbits == 4 {
        CodeBits::Four
    } else {
        CodeBits::Eight
    };
    let stride = bits.table_len();
    let ksub = codes.ksub();
    if nbits == 4 && !m.is_multiple_of(2) {
        return Err(unfit(format!(
            "{m} subspaces of 4-bit codes do not fill whole bytes"
        )));
    }
    let tb = m * bits.bits() as usize / 8;
    let codes_per_col = cw * 8 / bits.bits() as usize;
    let (group, chunks) = if tb <= cw {
        (m, 1)
    } else {
        (codes_per_col, tb / cw)
    };
    if !lanes.is_multiple_of(dsub) || !(ksub * dsub * 2).is_multiple_of(cw) {
        return Err(unfit(format!(
            "value codebook of {ksub} x {dsub} FP16 per subspace does not fill whole columns of {lanes} lanes"
        )));
    }
    if group > 64 {
        return Err(unfit(format!("{group} codes per group exceed LUTACC's 64")));
    }
    let cb_cols_per_sub = ksub * dsub * 2 / cw;
    let cb_rows = (m * cb_cols_per_sub).div_ceil(org.columns);
    Ok((
        tb,
        PqGeom {
            m,
            dsub,
            ksub,
            bits,
            stride,
            group,
            chunks,
            cb_cols_per_sub,
            cb_rows,
            bins: group * stride,
        },
    ))
}

/// A part of `tb`-byte tokens: its column tiling (rows are filled in once
/// the slots per bank are known).
fn part(device: &Device, tb: usize, pq: Option<PqGeom>) -> Result<Part> {
    let org = &device.org;
    let cw = org.column_bytes;
    if !(tb <= cw && cw.is_multiple_of(tb) || tb > cw && tb.is_multiple_of(cw)) {
        return Err(unfit(format!(
            "{tb}-byte tokens neither divide nor fill whole {cw}-byte columns"
        )));
    }
    let (tpc, cpt) = if tb <= cw { (cw / tb, 1) } else { (1, tb / cw) };
    if !org.columns.is_multiple_of(cpt) {
        return Err(unfit(format!(
            "{cpt}-column tokens do not tile {}-column rows",
            org.columns
        )));
    }
    Ok(Part {
        tb,
        tpc,
        cpt,
        rows: 0,
        pq,
    })
}

impl Geom {
    /// The geometry of an `n`-token slice of `kind` with head dimension `d`.
    pub fn new(device: &Device, kind: PimKind, d: usize, n: usize) -> Result<Geom> {
        let org = &device.org;
        let cw = org.column_bytes;
        let banks = org.banks_per_channel;
        if n == 0 {
            return Err(unfit("a slice needs at least one token"));
        }
        let mut sc = None;
        let (mut k, mut v) = match kind {
            PimKind::Fp16 => {
                if d == 0 || !(2 * d).is_multiple_of(cw) {
                    return Err(unfit(format!(
                        "FP16 tokens of head dimension {d} do not fill whole {cw}-byte columns"
                    )));
                }
                let p = part(device, 2 * d, None)?;
                (p, p)
            }
            PimKind::Pq { key, value } => {
                let (kt, kq) = pq_part(device, d, key)?;
                let (vt, vq) = pq_part(device, d, value)?;
                (part(device, kt, Some(kq))?, part(device, vt, Some(vq))?)
            }
            PimKind::Scalar(c) => {
                let (s, tb) = scalar::geom(device, d, c)?;
                sc = Some(s);
                // A part's tokens: `tb` bytes of codes each, columns from
                // the scalar geometry.
                let tokens = |p: &scalar::ScalarPart| Part {
                    tb,
                    tpc: 1,
                    cpt: p.cpt,
                    rows: 0,
                    pq: None,
                };
                (tokens(&s.k), tokens(&s.v))
            }
        };
        // Whole columns per bank for both parts: a column's every slot is a
        // real slot (its weight comes from the buffer die, zero for padding).
        // Tokens per column are powers of two, so the larger is a multiple;
        // scalar slices hold whole blocks of KIVI keys.
        let tpc = k.tpc.max(v.tpc).max(sc.map_or(1, |s| s.slot_multiple()));
        let n_b = n.div_ceil(banks).div_ceil(tpc) * tpc;
        let row_bytes = org.columns * cw;
        k.rows = (n_b * k.tb).div_ceil(row_bytes);
        v.rows = (n_b * v.tb).div_ceil(row_bytes);
        if let Some(s) = sc {
            // Codes and their parameters share rows.
            k.rows = s.k.rows(n_b);
            v.rows = s.v.rows(n_b);
        }
        let g = Geom {
            n,
            n_b,
            banks,
            d,
            columns: org.columns,
            k,
            v,
            sc,
        };
        g.check(device)?;
        Ok(g)
    }

    /// Register, buffer and buffer-die budgets.
    fn check(&self, device: &Device) -> Result<()> {
        let die = device.pim.buffer_die_elements;
        if self.banks * self.n_b + 2 > die {
            return Err(unfit(format!(
                "{} scores (+2 statistics) exceed the buffer die's {die} elements by {}",
                self.banks * self.n_b,
                self.banks * self.n_b + 2 - die
            )));
        }
        if self.banks * self.d + self.d > die {
            return Err(unfit(format!(
                "{} partial outputs exceed the buffer die's {die} elements",
                self.banks * self.d + self.d
            )));
        }
        self.check_one_head(device)
    }

    /// The per-head budgets of a pass over the slice that serves several
    /// query heads of a group at once, as `(elements one head needs,
    /// elements a bank has)`: per bank, the buffer holds every head's
    /// lookup table (`M x 2^bits`) or query (`d`) side by side during
    /// scoring, then every head's softmax weights (`n_b` each, times the
    /// banks sharing the buffer); the registers hold every head's scores
    /// (`n_b` each), then every head's bins (`group x 2^bits` per chunk) and
    /// outputs (`d`) for PQ, or its outputs (`d`) otherwise. Scalar slices
    /// also keep buffer and register operands within QMAC's 11-bit fields.
    fn budgets(&self, device: &Device) -> [(usize, usize); 5] {
        let pim = &device.pim;
        let (regs, buf) = (pim.registers, pim.buffer_elements());
        let share = pim.buffer_share.max(1);
        let (operand, out_regs) = match (self.k.pq, self.v.pq) {
            (Some(kp), Some(vp)) => (kp.m * kp.stride, vp.bins + self.d),
            _ => (self.d, self.d),
        };
        let qmac = if self.sc.is_some() {
            (self.n_b.max(self.d), scalar::QMAC_OPERANDS)
        } else {
            (0, 0)
        };
        [
            (self.n_b, regs),
            (self.n_b * share, buf),
            (operand, buf),
            (out_regs, regs),
            qmac,
        ]
    }

    /// The error of the first budget one head does not fit, if any.
    fn check_one_head(&self, device: &Device) -> Result<()> {
        let pim = &device.pim;
        let (regs, buf) = (pim.registers, pim.buffer_elements());
        let budgets = self.budgets(device);
        let Some(i) = budgets.iter().position(|&(need, limit)| need > limit) else {
            return Ok(());
        };
        let over = budgets[i].0 - budgets[i].1;
        Err(unfit(match (i, self.k.pq, self.v.pq) {
            (0, ..) => format!(
                "{} tokens per bank need {} score registers; a bank has {regs}",
                self.n_b, self.n_b
            ),
            (1, ..) => format!(
                "{} softmax weights per bank, for {} bank(s) sharing a buffer, exceed its {buf} elements",
                self.n_b,
                pim.buffer_share.max(1)
            ),
            (2, Some(kp), _) => format!(
                "a lookup table of {} x {} FP16 exceeds the {buf}-element buffer by {over}",
                kp.m, kp.stride
            ),
            (2, None, _) => format!(
                "a {}-element query exceeds the {buf}-element buffer",
                self.d
            ),
            (3, _, Some(vp)) => format!(
                "{} bins plus {} outputs exceed the {regs} registers by {over}",
                vp.bins, self.d
            ),
            (3, ..) => format!("{} outputs exceed the {regs} registers", self.d),
            _ => format!(
                "{} slots per bank reach beyond QMAC's {} buffer and register elements",
                self.n_b,
                scalar::QMAC_OPERANDS
            ),
        }))
    }

    /// Query heads of a group of `group` that one pass over the slice's
    /// rows serves (`g'`): the most, at most `group`, whose operands fit a
    /// bank's buffer and registers side by side (`Geom::budgets`); at least
    /// 1, which [`Geom::new`] checked.
    pub fn heads_per_pass(&self, device: &Device, group: usize) -> usize {
        self.budgets(device)
            .iter()
            .filter(|&&(need, _)| need > 0)
            .map(|&(need, limit)| limit / need)
            .min()
            .unwrap_or(group)
            .clamp(1, group.max(1))
    }

    /// The passes over the slice that serve a group of `group` query
    /// heads: runs of [`Geom::heads_per_pass`] consecutive heads, the last
    /// one shorter where that count does not divide the group.
    pub fn passes(&self, device: &Device, group: usize) -> Vec<std::ops::Range<usize>> {
        let per = self.heads_per_pass(device, group);
        (0..group)
            .step_by(per)
            .map(|q| q..(q + per).min(group))
            .collect()
    }

    /// The largest slice that fits a channel's registers, buffer and buffer
    /// die for this kind and head dimension.
    pub fn max_tokens(device: &Device, kind: PimKind, d: usize) -> Result<usize> {
        let banks = device.org.banks_per_channel;
        // Budgets are monotone in n: bisect on slots per bank.
        let fits = |n_b: usize| Geom::new(device, kind, d, n_b * banks).is_ok();
        if !fits(1) {
            // Report why a single-slot slice does not fit.
            Geom::new(device, kind, d, banks)?;
        }
        let (mut lo, mut hi) = (1usize, 1usize << 20);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok(lo * banks)
    }

    /// Bank and slot of token `i` of the slice.
    pub fn place(&self, i: usize) -> (usize, usize) {
        (i / self.n_b, i % self.n_b)
    }

    /// Rows of one bank that the slice's keys and values occupy (the value
    /// codebook is counted per channel and KV head, not per slice).
    pub fn rows(&self) -> usize {
        self.k.rows + self.v.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pim::{ScalarCodes, ScalarScale};

    /// `g'` for a group of 4 at d = 128, on a small slice (16 slots per
    /// bank) and on the largest one a channel holds: the figures
    /// `docs/design/pim-lowering.md` quotes.
    #[test]
    fn heads_per_pass_of_a_group_of_four_at_d_128() {
        let shipped = PimKind::Pq {
            key: CodeFormat::new(2, 8, true),
            value: CodeFormat::new(2, 4, true),
        };
        let kivi4 = PimKind::Scalar(ScalarCodes {
            bits: 4,
            group: 32,
            scale: ScalarScale::MinScale,
        });
        let cases = [
            ("hbm3-aqpim-5.2", PimKind::Fp16, 4, 4),
            ("hbm3-aqpim-5.2", shipped, 1, 1),
            ("hbm3-aqpim-5.2", PimKind::pq(2, 4), 4, 4),
            ("hbm3-aqpim-5.2", PimKind::pq(4, 8), 1, 1),
            ("hbm3-aqpim-equal-area", shipped, 1, 1),
            ("hbm3-aqpim-equal-area", PimKind::pq(2, 4), 1, 1),
            ("hbm3-attacc-5.2", PimKind::Fp16, 2, 1),
            ("hbm3-pimba-5.2", kivi4, 2, 1),
        ];
        let mut got = Vec::new();
        for (name, kind, _, _) in cases {
            let dev = Device::preset(name).unwrap();
            let small = Geom::new(&dev, kind, 128, 16 * dev.org.banks_per_channel).unwrap();
            let max = Geom::max_tokens(&dev, kind, 128).unwrap();
            let large = Geom::new(&dev, kind, 128, max).unwrap();
            got.push((
                name,
                kind,
                small.heads_per_pass(&dev, 4),
                large.heads_per_pass(&dev, 4),
            ));
        }
        let want: Vec<_> = cases.to_vec();
        assert_eq!(got, want);
    }
}
