//! Hand-written AVX2 + FMA + F16C kernels for the block types (the compiler
//! does not vectorize the nibble unpacking well on its own): one row at a
//! time, 8 lanes wide.
//!
//! Safe `#[target_feature]` functions: [`dot_rows`] may be called only where
//! [`x86::has_avx2`] holds (inside `unsafe`, with that check as the SAFETY
//! argument).

use std::arch::x86_64::*;

use super::x86::{self, half, load16};
use super::{GgmlType, QK};

/// The sum of the 8 lanes of `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Loads 8 f32 from `x[i..i + 8]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load8(x: &[f32], i: usize) -> __m256 {
    let s = &x[i..i + 8];
    // SAFETY: `s` holds exactly 8 readable f32 values.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

/// One Q4_0 (`q4_0`) or Q4_1 row.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4(q4_0: bool, row: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
    let (off, bb) = if q4_0 { (2, 18) } else { (4, 20) };
    let mask = _mm_set1_epi8(15);
    let mut acc = _mm256_setzero_ps();
    let mut msum = 0f32;
    for ((b, xb), &xs) in row.chunks_exact(bb).zip(x.chunks_exact(QK)).zip(xsum) {
        let d = half(b, 0);
        let m = if q4_0 { -8.0 * d } else { half(b, 2) };
        let qs = load16(&b[off..]);
        let lo = _mm_and_si128(qs, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(qs), mask);
        let f = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
        let mut s = _mm256_mul_ps(f(lo), load8(xb, 0));
        s = _mm256_fmadd_ps(f(_mm_srli_si128::<8>(lo)), load8(xb, 8), s);
        s = _mm256_fmadd_ps(f(hi), load8(xb, 16), s);
        s = _mm256_fmadd_ps(f(_mm_srli_si128::<8>(hi)), load8(xb, 24), s);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
        msum += m * xs;
    }
    hsum(acc) + msum
}

/// One Q8_0 row.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, xb) in row.chunks_exact(34).zip(x.chunks_exact(QK)) {
        let d = half(b, 0);
        let q0 = load16(&b[2..]);
        let q1 = load16(&b[18..]);
        let f = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
        let mut s = _mm256_mul_ps(f(q0), load8(xb, 0));
        s = _mm256_fmadd_ps(f(_mm_srli_si128::<8>(q0)), load8(xb, 8), s);
        s = _mm256_fmadd_ps(f(q1), load8(xb, 16), s);
        s = _mm256_fmadd_ps(f(_mm_srli_si128::<8>(q1)), load8(xb, 24), s);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
    }
    hsum(acc)
}

/// `y[i] = row_i . x` for the rows packed in `rows` (`row_bytes` each).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_rows(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    x: &[f32],
    xsum: &[f32],
    y: &mut [f32],
) {
    x86::each_row(
        ty,
        rows.chunks_exact(row_bytes),
        x,
        xsum,
        y,
        |q4_0, row| dot_q4(q4_0, row, x, xsum),
        |row| dot_q8_0(row, x),
    );
}
