//! AVX2 kernels for 8-bit activations (`quant::q8`), for CPUs without
//! AVX-512 VNNI: per weight block `vpmaddubsw` (unsigned bytes times signed
//! bytes, adjacent pairs summed into i16 lanes: at most 2 * 128 * 127, so
//! never saturated) then `vpmaddwd` by ones (adjacent i16 pairs into 8 i32
//! lanes), which gives the same 8 lanes as `vpdpbusd` in `vnni`; the lanes
//! are scaled by `d_w * d_x` and accumulated in f32, one row at a time.
//! Also the quantizer of the activations, 8 lanes at a time.
//!
//! Safe `#[target_feature]` functions: [`dot_rows`], [`quantize`] and
//! `block_isums` may be called only where `x86::has_avx2` holds (inside
//! `unsafe`, with that check as the SAFETY argument).

use std::arch::x86_64::*;

use super::q8::{layout, Q8Activations};
use super::x86::{half, load16};
use super::{GgmlType, QK};

/// The 32 codes of activation block `blk`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn codes(x: &Q8Activations, blk: usize) -> __m256i {
    let s = x.block(blk);
    // SAFETY: `s` holds exactly 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// The 32 4-bit codes of a Q4 block whose nibbles start at `b[off]`, one
/// per byte in element order (low nibbles, then high nibbles).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(b: &[u8], off: usize) -> __m256i {
    let mask = _mm_set1_epi8(15);
    let qs = load16(&b[off..]);
    let lo = _mm_and_si128(qs, mask);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(qs), mask);
    _mm256_set_m128i(hi, lo)
}

/// Lane `k` of the result: `sum_{j in 4k..4k+4} w_j a_j` for weight block
/// `b` of `ty` and activation codes `a`; the 8 lanes sum to the block's
/// exact integer dot product (`q8::block_isum`), and equal `vnni`'s lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lanes(ty: GgmlType, b: &[u8], a: __m256i) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    let dot = |u: __m256i, s: __m256i| _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), ones);
    match ty {
        GgmlType::Q4_1 => dot(nibbles(b, 4), a),
        GgmlType::Q4_0 => {
            // sum (q - 8) a = sum q a - sum 8 a, both exact.
            _mm256_sub_epi32(dot(nibbles(b, 2), a), dot(_mm256_set1_epi8(8), a))
        }
        _ => {
            // Signed times signed: |w| (unsigned, 128 for -128) times a
            // with w's sign.
            let w = {
                let s = &b[2..2 + QK];
                // SAFETY: `s` holds exactly 32 readable bytes.
                unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
            };
            dot(_mm256_abs_epi8(w), _mm256_sign_epi8(a, w))
        }
    }
}

/// The sum of the 8 lanes of `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// One row's `(acc, msum)` contribution of block `blk` (`b`, its bytes):
/// the block's lanes scaled by `d_w * d_x` into `acc`, Q4_1's `m_w * s_x`
/// into `msum`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn add_block(
    ty: GgmlType,
    b: &[u8],
    blk: usize,
    x: &Q8Activations,
    acc: &mut __m256,
    msum: &mut f32,
) {
    let l = _mm256_cvtepi32_ps(lanes(ty, b, codes(x, blk)));
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(half(b, 0) * x.scales()[blk]), l, *acc);
    if ty == GgmlType::Q4_1 {
        *msum += half(b, 2) * x.scaled_sums()[blk];
    }
}

/// One row: even and odd blocks go to two accumulators (two independent
/// chains of adds), summed at the end (see `vnni::dot_row`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_row(ty: GgmlType, row: &[u8], x: &Q8Activations) -> f32 {
    let (bb, _) = layout(ty);
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut msum = [0f32; 2];
    let mut pairs = row.chunks_exact(2 * bb);
    for (p, b2) in (&mut pairs).enumerate() {
        let (b0, b1) = b2.split_at(bb);
        add_block(ty, b0, 2 * p, x, &mut acc[0], &mut msum[0]);
        add_block(ty, b1, 2 * p + 1, x, &mut acc[1], &mut msum[1]);
    }
    let last = pairs.remainder();
    if !last.is_empty() {
        add_block(ty, last, row.len() / bb - 1, x, &mut acc[0], &mut msum[0]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1])) + (msum[0] + msum[1])
}

/// `y[i] = row_i . x` for the rows packed in `rows` (`row_bytes` each, a
/// block type `ty`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_rows(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    x: &Q8Activations,
    y: &mut [f32],
) {
    for (yi, row) in y.iter_mut().zip(rows.chunks_exact(row_bytes)) {
        *yi = dot_row(ty, row, x);
    }
}

/// One row's per-block integer sums as this kernel forms them (the lanes of
/// [`lanes`], added), for the tests' exact comparison.
#[cfg(test)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn block_isums(ty: GgmlType, row: &[u8], x: &Q8Activations) -> Vec<i32> {
    let (bb, _) = layout(ty);
    row.chunks_exact(bb)
        .enumerate()
        .map(|(blk, b)| {
            let mut v = [0i32; 8];
            // SAFETY: `v` holds exactly 8 writable i32 values.
            unsafe { _mm256_storeu_si256(v.as_mut_ptr().cast(), lanes(ty, b, codes(x, blk))) };
            v.iter().sum()
        })
        .collect()
}

/// [`Q8Activations::quantize`] for `x` (whole blocks; `out` sized for it),
/// 8 lanes at a time: the same IEEE operations as the portable quantizer
/// (`max |x|`, `x * (127 / amax)`, rounding to nearest even, a clamp to
/// +-127), so the same codes, scales and sums bit for bit.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quantize(x: &[f32], out: &mut Q8Activations) {
    let sign = _mm256_set1_ps(-0.0);
    let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
    // Undoes the lane interleaving of the two packs below.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (b, xb) in x.chunks_exact(QK).enumerate() {
        let v: [__m256; 4] = std::array::from_fn(|i| {
            let s = &xb[8 * i..8 * i + 8];
            // SAFETY: `s` holds exactly 8 readable f32 values.
            unsafe { _mm256_loadu_ps(s.as_ptr()) }
        });
        let m = v.iter().fold(_mm256_setzero_ps(), |m, &a| {
            _mm256_max_ps(m, _mm256_andnot_ps(sign, a))
        });
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let c: [__m256i; 4] = std::array::from_fn(|i| {
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(v[i], id),
            );
            _mm256_max_epi32(lo, _mm256_min_epi32(hi, _mm256_cvtps_epi32(r)))
        });
        let sum = _mm256_add_epi32(_mm256_add_epi32(c[0], c[1]), _mm256_add_epi32(c[2], c[3]));
        let sum = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256::<1>(sum),
        );
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b01_00_11_10>(sum));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum, _mm_shuffle_epi32::<0b10_11_00_01>(sum)));
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(c[0], c[1]),
            _mm256_packs_epi32(c[2], c[3]),
        );
        let q = &mut out.codes_mut()[b * QK..(b + 1) * QK];
        // SAFETY: `q` holds exactly 32 writable bytes; the store is unaligned.
        unsafe {
            _mm256_storeu_si256(
                q.as_mut_ptr().cast(),
                _mm256_permutevar8x32_epi32(packed, order),
            )
        };
        out.set_block(b, amax, sum);
    }
}
