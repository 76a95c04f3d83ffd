//! AVX-512 VNNI kernels for 8-bit activations (`quant::q8`): one `vpdpbusd`
//! (unsigned bytes times signed bytes, four products summed into each of
//! 8 i32 lanes) per weight block, the lanes scaled by `d_w * d_x` and
//! accumulated in f32, one row at a time.
//!
//! Safe `#[target_feature]` functions: [`dot_rows`] and `block_isums`
//! may be called only where [`available`] holds (inside `unsafe`, with that
//! check as the SAFETY argument).

use std::arch::x86_64::*;

use super::q8::{layout, Q8Activations};
use super::x86::{half, load16};
use super::{GgmlType, QK};

/// Whether this CPU runs these kernels (AVX-512 VNNI with 256-bit forms,
/// and the features of `x86::has_avx2`).
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512vnni")
        && super::x86::has_avx2()
}

/// The 32 codes of activation block `blk`.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
fn codes(x: &Q8Activations, blk: usize) -> __m256i {
    let s = x.block(blk);
    // SAFETY: `s` holds exactly 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// The 32 4-bit codes of a Q4 block whose nibbles start at `b[off]`, one
/// per byte in element order (low nibbles, then high nibbles).
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
fn nibbles(b: &[u8], off: usize) -> __m256i {
    let mask = _mm_set1_epi8(15);
    let qs = load16(&b[off..]);
    let lo = _mm_and_si128(qs, mask);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(qs), mask);
    _mm256_set_m128i(hi, lo)
}

/// Lane `k` of the result: `sum_{j in 4k..4k+4} w_j a_j` for weight block
/// `b` of `ty` and activation codes `a`; the 8 lanes sum to the block's
/// exact integer dot product (`q8::block_isum`).
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
fn lanes(ty: GgmlType, b: &[u8], a: __m256i) -> __m256i {
    let zero = _mm256_setzero_si256();
    match ty {
        GgmlType::Q4_1 => _mm256_dpbusd_epi32(zero, nibbles(b, 4), a),
        GgmlType::Q4_0 => {
            // sum (q - 8) a = sum q a - sum 8 a, both exact.
            let qa = _mm256_dpbusd_epi32(zero, nibbles(b, 2), a);
            _mm256_sub_epi32(qa, _mm256_dpbusd_epi32(zero, _mm256_set1_epi8(8), a))
        }
        _ => {
            // Signed times signed: |w| (unsigned, 128 for -128) times a
            // with w's sign.
            let w = {
                let s = &b[2..2 + QK];
                // SAFETY: `s` holds exactly 32 readable bytes.
                unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
            };
            _mm256_dpbusd_epi32(zero, _mm256_abs_epi8(w), _mm256_sign_epi8(a, w))
        }
    }
}

/// The sum of the 8 lanes of `v`.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
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
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
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
/// chains of adds), summed at the end. Rows are read one after another, a
/// single sequential stream, which the hardware prefetcher follows (four
/// rows interleaved streamed at half the rate from DRAM here).
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
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
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
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
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
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
