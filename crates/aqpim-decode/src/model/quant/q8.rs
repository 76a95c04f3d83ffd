//! 8-bit activations for the single-token GEMV, llama.cpp's CPU arithmetic:
//! the activation vector is quantized per block of [`QK`] and each block's
//! dot product with a weight block is an integer sum.
//!
//! For an activation block `x` (32 values) [`Q8Activations::quantize`]
//! computes, as ggml's x86 `quantize_row_q8_1` does:
//!
//! ```text
//! amax = max_j |x_j|        d = amax / 127        id = 127 / amax (0 if amax = 0)
//! q_j  = round_half_even(x_j * id)                 (i8, in [-127, 127])
//! stored: d16 = f16(d), s16 = f16(d * sum_j q_j)  (Q8_1's sum term)
//! ```
//!
//! (Q8_0 activations, which ggml pairs with Q8_0 and Q4_0 weights, are the
//! same codes and scale without `s`.) A row of weight blocks `w` then gives
//!
//! ```text
//! Q4_1:  sum_b  (d_w d16) * isum_b + m_w * s16     isum_b = sum_j q4_j q_j
//! Q4_0:  sum_b  (d_w d16) * isum_b                 isum_b = sum_j (q4_j - 8) q_j
//! Q8_0:  sum_b  (d_w d16) * isum_b                 isum_b = sum_j q8_j q_j
//! ```
//!
//! (`ggml_vec_dot_q4_1_q8_1`, `ggml_vec_dot_q4_0_q8_0`,
//! `ggml_vec_dot_q8_0_q8_0`). This file holds the activations, the
//! portable quantizer and the portable kernel (the reference of the
//! others); `q8_gemv` picks among the kernels. The integer sums are exact
//! on every path; the
//! SIMD paths (`vnni`: AVX-512 VNNI `vpdpbusd`; `q8_avx2`: `vpmaddubsw` +
//! `vpmaddwd`) keep each block's sum as 8 lanes of 4 products each and
//! accumulate the scaled lanes in f32 (as llama.cpp does), so a row's float
//! result differs from the portable one here only in the order of the f32
//! additions.

use half::f16;

use super::{f16_at, GgmlType, QK};

/// An activation vector quantized to 8 bits per block of [`QK`] (see the
/// module docs): `qs` (`len` codes), and per block `d` (the f16-rounded
/// scale, as f32), `s` (the f16-rounded `d * sum(q)`, as f32) and `qsum`
/// (`sum(q)`, exact).
#[derive(Debug, Clone)]
pub struct Q8Activations {
    pub(super) qs: Vec<i8>,
    pub(super) d: Vec<f32>,
    pub(super) s: Vec<f32>,
    pub(super) qsum: Vec<i32>,
}

impl Q8Activations {
    /// The portable quantizer and the reference of the SIMD one: fills
    /// every field from `x` (`len` values).
    pub(super) fn quantize_portable(&mut self, x: &[f32]) {
        for (b, xb) in x.chunks_exact(QK).enumerate() {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in self.qs[b * QK..(b + 1) * QK].iter_mut().zip(xb) {
                // `as` saturates (and maps NaN to 0); the clamp only guards
                // the contract of at most 127 in magnitude.
                let r = ((v * id).round_ties_even() as i32).clamp(-127, 127);
                *q = r as i8;
                sum += r;
            }
            self.set_block(b, amax, sum);
        }
    }

    /// Stores block `b`'s scale, `s` and code sum from its `amax` and `sum(q)`.
    #[inline(always)]
    pub(super) fn set_block(&mut self, b: usize, amax: f32, sum: i32) {
        let d = amax / 127.0;
        self.d[b] = f16::from_f32(d).to_f32();
        self.s[b] = f16::from_f32(d * sum as f32).to_f32();
        self.qsum[b] = sum;
    }

    /// The codes of blocks, writable, for the SIMD quantizer.
    pub(super) fn codes_mut(&mut self) -> &mut [i8] {
        &mut self.qs
    }

    /// Values quantized.
    pub fn len(&self) -> usize {
        self.qs.len()
    }

    /// Whether no value was quantized.
    pub fn is_empty(&self) -> bool {
        self.qs.is_empty()
    }

    /// The codes, `len` values in `[-127, 127]`.
    pub fn codes(&self) -> &[i8] {
        &self.qs
    }

    /// The 32 codes of block `b`.
    #[inline(always)]
    pub(super) fn block(&self, b: usize) -> &[i8] {
        &self.qs[b * QK..(b + 1) * QK]
    }

    /// Per-block scales `d` (f16-rounded).
    pub fn scales(&self) -> &[f32] {
        &self.d
    }

    /// Per-block `s = d * sum(q)` (f16-rounded).
    pub fn scaled_sums(&self) -> &[f32] {
        &self.s
    }

    /// Per-block `sum(q)`.
    pub fn code_sums(&self) -> &[i32] {
        &self.qsum
    }
}

impl GgmlType {
    /// Whether products with this type take 8-bit activations
    /// ([`super::QMatrix::gemv_q8`]): the block types.
    pub fn takes_q8_activations(self) -> bool {
        matches!(self, Self::Q4_0 | Self::Q4_1 | Self::Q8_0)
    }
}

/// The weight block layout of a block type: `(bytes per block, offset of
/// the codes)`.
#[inline(always)]
pub(super) fn layout(ty: GgmlType) -> (usize, usize) {
    match ty {
        GgmlType::Q4_0 => (18, 2),
        GgmlType::Q4_1 => (20, 4),
        _ => (34, 2),
    }
}

/// The exact integer dot product of one weight block `b` of `ty` with the
/// activation codes `q` of the same block (`qsum = sum(q)`, used by Q4_0's
/// offset of 8). The portable reference of every path's per-block sum.
#[inline(always)]
pub(super) fn block_isum(ty: GgmlType, b: &[u8], q: &[i8], qsum: i32) -> i32 {
    let (_, off) = layout(ty);
    match ty {
        GgmlType::Q8_0 => b[off..off + QK]
            .iter()
            .zip(q)
            .map(|(&w, &a)| (w as i8) as i32 * a as i32)
            .sum(),
        _ => {
            let (lo, hi) = q.split_at(QK / 2);
            let s: i32 = b[off..off + QK / 2]
                .iter()
                .zip(lo.iter().zip(hi))
                .map(|(&w, (&a, &c))| (w & 15) as i32 * a as i32 + (w >> 4) as i32 * c as i32)
                .sum();
            if ty == GgmlType::Q4_0 {
                s - 8 * qsum
            } else {
                s
            }
        }
    }
}

/// The portable kernel and the reference of the others: per block the
/// exact integer sum ([`block_isum`]), scaled by `d_w * d_x` and added in
/// block order; the `m_w * s_x` terms of Q4_1 summed apart and added last.
pub(super) fn portable_dot_rows(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    x: &Q8Activations,
    y: &mut [f32],
) {
    let (bb, _) = layout(ty);
    for (yi, row) in y.iter_mut().zip(rows.chunks_exact(row_bytes)) {
        let mut acc = 0f32;
        let mut msum = 0f32;
        for (blk, b) in row.chunks_exact(bb).enumerate() {
            let isum = block_isum(ty, b, x.block(blk), x.qsum[blk]);
            acc += (f16_at(b, 0) * x.d[blk]) * isum as f32;
            if ty == GgmlType::Q4_1 {
                msum += f16_at(b, 2) * x.s[blk];
            }
        }
        *yi = acc + msum;
    }
}
