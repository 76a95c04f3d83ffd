//! The 8-bit activation GEMV's entry points ([`Q8Activations::quantize`],
//! [`QMatrix::gemv_q8`]): each picks the widest kernel this CPU runs among
//! `vnni` (AVX-512 VNNI), `q8_avx2` and the portable code of `q8`.

#[cfg(test)]
use super::q8::{block_isum, layout};
use super::q8::{portable_dot_rows, Q8Activations};
use super::{GgmlType, QMatrix, QK};
use crate::error::{DecodeError, Result};

impl Q8Activations {
    /// Quantizes `x`; fails when `x` is not a whole number of blocks.
    pub fn quantize(x: &[f32]) -> Result<Self> {
        if !x.len().is_multiple_of(QK) {
            return Err(DecodeError::InvalidArgument {
                name: "activations",
                reason: format!(
                    "{} values are not whole blocks of {QK} for 8-bit activations",
                    x.len()
                ),
            });
        }
        let blocks = x.len() / QK;
        let mut out = Self {
            qs: vec![0; x.len()],
            d: vec![0.0; blocks],
            s: vec![0.0; blocks],
            qsum: vec![0; blocks],
        };
        #[cfg(target_arch = "x86_64")]
        if super::x86::has_avx2() {
            // SAFETY: the CPU supports every feature the kernel enables
            // (`has_avx2`).
            unsafe { super::q8_avx2::quantize(x, &mut out) };
            return Ok(out);
        }
        out.quantize_portable(x);
        Ok(out)
    }
}

impl QMatrix {
    /// `y = W x` with `x` quantized to 8 bits ([`Q8Activations`]): each
    /// block's dot product is an integer sum, blocks are accumulated in f32.
    /// Rows are split across threads as in [`QMatrix::gemv`]; each row's
    /// result does not depend on the thread count.
    ///
    /// Fails when `x` does not have `cols` values, `y` does not have `rows`,
    /// or the storage type has no integer dot product
    /// ([`GgmlType::takes_q8_activations`]).
    pub fn gemv_q8(&self, x: &Q8Activations, y: &mut [f32]) -> Result<()> {
        if !self.ty.takes_q8_activations() {
            return Err(DecodeError::InvalidArgument {
                name: "activations",
                reason: format!(
                    "a {:?} matrix has no 8-bit activation product (Q4_0, Q4_1, Q8_0 have)",
                    self.ty
                ),
            });
        }
        if x.len() != self.cols || y.len() != self.rows {
            return Err(DecodeError::InvalidArgument {
                name: "activations",
                reason: format!(
                    "a {} x {} matrix times {} values into {} outputs",
                    self.rows,
                    self.cols,
                    x.len(),
                    y.len()
                ),
            });
        }
        let rb = self.row_bytes();
        let chunk = self.gemv_rows_per_task();
        crate::model::spin::for_each_chunk_mut(y, chunk, &|c, yc| {
            let r0 = c * chunk;
            let rows = &self.bytes[r0 * rb..(r0 + yc.len()) * rb];
            dot_rows(self.ty, rows, rb, x, yc);
        });
        Ok(())
    }
}

/// `y[i] = row_i . x` for the rows packed in `rows` (`row_bytes` each, a
/// block type), by the widest kernel this CPU runs.
fn dot_rows(ty: GgmlType, rows: &[u8], row_bytes: usize, x: &Q8Activations, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::vnni::available() {
            // SAFETY: the CPU supports every feature the kernel enables
            // (`vnni::available`).
            unsafe { super::vnni::dot_rows(ty, rows, row_bytes, x, y) };
            return;
        }
        if super::x86::has_avx2() {
            // SAFETY: the CPU supports every feature the kernel enables
            // (`has_avx2`).
            unsafe { super::q8_avx2::dot_rows(ty, rows, row_bytes, x, y) };
            return;
        }
    }
    portable_dot_rows(ty, rows, row_bytes, x, y)
}

/// Every 8-bit activation kernel this CPU can run, for tests: `(name, y)`
/// pairs, the portable one first.
#[cfg(test)]
pub(super) fn all_variants(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    x: &Q8Activations,
    n: usize,
) -> Vec<(&'static str, Vec<f32>)> {
    let mut out = Vec::new();
    let mut y = vec![0f32; n];
    portable_dot_rows(ty, rows, row_bytes, x, &mut y);
    out.push(("portable", y.clone()));
    #[cfg(target_arch = "x86_64")]
    {
        if super::x86::has_avx2() {
            // SAFETY: the CPU supports every feature the kernel enables.
            unsafe { super::q8_avx2::dot_rows(ty, rows, row_bytes, x, &mut y) };
            out.push(("avx2", y.clone()));
        }
        if super::vnni::available() {
            // SAFETY: the CPU supports every feature the kernel enables.
            unsafe { super::vnni::dot_rows(ty, rows, row_bytes, x, &mut y) };
            out.push(("avx512-vnni", y.clone()));
        }
    }
    out
}

/// Every path's per-block integer sums of one row, for tests: `(name,
/// sums)` pairs, the portable reference first.
#[cfg(test)]
pub(super) fn all_block_isums(
    ty: GgmlType,
    row: &[u8],
    x: &Q8Activations,
) -> Vec<(&'static str, Vec<i32>)> {
    let (bb, _) = layout(ty);
    let reference = row
        .chunks_exact(bb)
        .enumerate()
        .map(|(blk, b)| block_isum(ty, b, x.block(blk), x.qsum[blk]))
        .collect();
    let mut out = vec![("portable", reference)];
    #[cfg(target_arch = "x86_64")]
    {
        if super::x86::has_avx2() {
            // SAFETY: the CPU supports every feature the kernel enables.
            out.push(("avx2", unsafe { super::q8_avx2::block_isums(ty, row, x) }));
        }
        if super::vnni::available() {
            // SAFETY: the CPU supports every feature the kernel enables.
            out.push(("avx512-vnni", unsafe {
                super::vnni::block_isums(ty, row, x)
            }));
        }
    }
    out
}

#[cfg(test)]
#[path = "q8_tests.rs"]
mod tests;
