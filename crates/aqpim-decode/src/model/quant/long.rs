//! `Y = X W^T` for many input rows (prefill and calibration blocks of
//! [`LONG_BLOCK_TOKENS`] rows or more): `W` is dequantized once into
//! panels of `W^T`, and blocks of rows of `X` are multiplied by them in
//! parallel with [`gemm`](super::gemm).
//!
//! A panel is `cols x PANEL` values, row major (row `t` holds element `t`
//! of up to [`PANEL`] consecutive rows of `W`, zero past the last), so the
//! product reads each panel along contiguous rows; reading `W^T` whole
//! strode a full output row (up to 6 KB) between the terms of a sum.
//! Panels never straddle a part of a stacked matrix ([`QMatrix::matmul_parts`]):
//! each part's columns of `Y` go straight into its own matrix. Every output
//! is the same sum, in the same order, as a single product over `W^T`
//! (`gemm` sums each element over blocks of its terms, whatever the
//! column strip), so the parts are bit for bit the columns of one product.

use rayon::prelude::*;

use super::gemm::{self, Store};
use super::{dequantize, QMatrix};

/// Input rows from which [`QMatrix::matmul`] takes this path.
pub(super) const LONG_BLOCK_TOKENS: usize = 256;

/// Rows of X per task. A task of 512 rows reads each panel half as often
/// per token as one of 256; a 2,048-token chunk still gives four tasks.
pub(super) const LONG_TASK_TOKENS: usize = 512;

/// Columns of a panel: [`gemm`]'s output strip (4 vectors of 16).
const PANEL: usize = 64;

/// One panel: rows `r0..r0 + width` of `W`, which are columns `col..col +
/// width` of part `part`'s output.
struct Panel {
    part: usize,
    col: usize,
    width: usize,
    r0: usize,
}

impl QMatrix {
    /// `[X W_i^T]` for the parts of a matrix stacked by rows: `x` is `n x
    /// cols`, part `i` is the next `parts[i]` rows of `W` and its result is
    /// `n x parts[i]` row major. Requires `n >= LONG_BLOCK_TOKENS` and
    /// `parts` summing to `rows`.
    pub(super) fn matmul_long(&self, x: &[f32], n: usize, parts: &[usize]) -> Vec<Vec<f32>> {
        let k = self.cols;
        let mut panels = Vec::new();
        let mut r0 = 0;
        for (part, &rows) in parts.iter().enumerate() {
            for col in (0..rows).step_by(PANEL) {
                let width = (rows - col).min(PANEL);
                panels.push(Panel {
                    part,
                    col,
                    width,
                    r0: r0 + col,
                });
            }
            r0 += rows;
        }
        let wt = self.panels(&panels);
        let mut outs: Vec<Vec<f32>> = parts.iter().map(|&rows| vec![0f32; n * rows]).collect();
        // Per task, its rows of every part's output.
        let mut tasks: Vec<Vec<&mut [f32]>> = (0..n.div_ceil(LONG_TASK_TOKENS))
            .map(|_| Vec::new())
            .collect();
        for (out, &rows) in outs.iter_mut().zip(parts) {
            for (task, chunk) in tasks
                .iter_mut()
                .zip(out.chunks_mut(LONG_TASK_TOKENS * rows.max(1)))
            {
                task.push(chunk);
            }
        }
        tasks
            .into_par_iter()
            .zip(x.par_chunks(LONG_TASK_TOKENS * k))
            .for_each(|(mut task, xc)| {
                let m = xc.len() / k;
                for (p, panel) in panels.iter().zip(wt.chunks_exact(k * PANEL)) {
                    let ldc = parts[p.part];
                    gemm::gemm(
                        (m, k, p.width),
                        xc,
                        k,
                        panel,
                        PANEL,
                        &mut task[p.part][p.col..],
                        ldc,
                        Store::Scale(1.0),
                    );
                }
            });
        outs
    }

    /// The panels of `W^T`, one `cols x PANEL` matrix each, in order, in
    /// parallel.
    fn panels(&self, panels: &[Panel]) -> Vec<f32> {
        let (k, rb) = (self.cols, self.row_bytes());
        let mut wt = vec![0f32; panels.len() * k * PANEL];
        wt.par_chunks_mut(k * PANEL)
            .zip(panels)
            .for_each(|(dst, p)| {
                let mut row = vec![0f32; k];
                for c in 0..p.width {
                    let r = p.r0 + c;
                    // Sizes were validated in `QMatrix::new`, so this cannot fail.
                    let _ = dequantize(self.ty, &self.bytes[r * rb..(r + 1) * rb], &mut row);
                    for (t, &v) in row.iter().enumerate() {
                        dst[t * PANEL + c] = v;
                    }
                }
            });
        wt
    }
}

#[cfg(test)]
mod tests {
    use super::super::gemm::tests::values;
    use super::super::GgmlType;
    use super::*;

    #[test]
    fn parts_equal_their_own_matrices_products_bit_for_bit() {
        // Each part of a stacked matrix against the same rows as a matrix
        // of their own (blocks lie within rows, so quantizing a part alone
        // gives the same bytes): parts narrower than a panel, not a
        // multiple of one, and whole panels; terms over two of gemm's
        // blocks; a ragged last task; both the row-chunk and the panel path.
        let (cols, parts) = (320, [70usize, 16, 64, 129]);
        let rows: usize = parts.iter().sum();
        let w = values(rows * cols, 7);
        for ty in [GgmlType::F32, GgmlType::Q4_1, GgmlType::Q8_0] {
            let stacked = QMatrix::from_f32(ty, rows, cols, &w).unwrap();
            let mut r0 = 0;
            let alone: Vec<QMatrix> = parts
                .iter()
                .map(|&p| {
                    r0 += p;
                    QMatrix::from_f32(ty, p, cols, &w[(r0 - p) * cols..r0 * cols]).unwrap()
                })
                .collect();
            for n in [5, LONG_BLOCK_TOKENS, LONG_TASK_TOKENS + 37] {
                let x = values(n * cols, n as u64);
                let split = stacked.matmul_parts(&x, n, &parts);
                assert_eq!(split.len(), parts.len());
                for (i, (got, m)) in split.iter().zip(&alone).enumerate() {
                    let want = m.matmul(&x, n);
                    assert_eq!(got.len(), want.len());
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{ty:?} n={n}: part {i}"
                    );
                }
            }
        }
    }
}
