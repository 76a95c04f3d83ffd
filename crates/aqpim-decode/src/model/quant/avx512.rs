//! AVX-512 kernels for the block types: one 16-lane conversion per half
//! block instead of two 8-lane ones, and 4-bit rows four at a time so that
//! each block of activations is loaded once for all four.
//!
//! Safe `#[target_feature]` functions: [`dot_rows`] may be called only where
//! [`x86::has_avx512`] holds (inside `unsafe`, with that check as the SAFETY
//! argument).

use std::arch::x86_64::*;

use super::x86::{self, half, load16};
use super::{GgmlType, QK};

/// Loads 16 f32 from `x[i..i + 16]`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn load16f(x: &[f32], i: usize) -> __m512 {
    let s = &x[i..i + 16];
    // SAFETY: `s` holds exactly 16 readable f32 values.
    unsafe { _mm512_loadu_ps(s.as_ptr()) }
}

/// The 32 4-bit codes of a Q4 block whose nibbles start at `b[off]`, as
/// f32: elements 0..16 (low nibbles) and 16..32 (high nibbles).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn nibbles(b: &[u8], off: usize) -> (__m512, __m512) {
    let mask = _mm_set1_epi8(15);
    let qs = load16(&b[off..]);
    let lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(qs, mask)));
    let hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(
        _mm_srli_epi16::<4>(qs),
        mask,
    )));
    (lo, hi)
}

/// The 32 signed 8-bit codes of a Q8_0 block, as f32: elements 0..16 and
/// 16..32.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn bytes_i8(b: &[u8]) -> (__m512, __m512) {
    let q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(&b[2..])));
    let q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(&b[18..])));
    (q0, q1)
}

/// One Q4_0 (`q4_0`) or Q4_1 row.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn dot_q4(q4_0: bool, row: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
    let (off, bb) = if q4_0 { (2, 18) } else { (4, 20) };
    let mut acc = _mm512_setzero_ps();
    let mut msum = 0f32;
    for ((b, xb), &xs) in row.chunks_exact(bb).zip(x.chunks_exact(QK)).zip(xsum) {
        let d = half(b, 0);
        let m = if q4_0 { -8.0 * d } else { half(b, 2) };
        let (lo, hi) = nibbles(b, off);
        let s = _mm512_fmadd_ps(hi, load16f(xb, 16), _mm512_mul_ps(lo, load16f(xb, 0)));
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), s, acc);
        msum += m * xs;
    }
    _mm512_reduce_add_ps(acc) + msum
}

/// One Q8_0 row.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = _mm512_setzero_ps();
    for (b, xb) in row.chunks_exact(34).zip(x.chunks_exact(QK)) {
        let d = half(b, 0);
        let (q0, q1) = bytes_i8(b);
        let s = _mm512_fmadd_ps(q1, load16f(xb, 16), _mm512_mul_ps(q0, load16f(xb, 0)));
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), s, acc);
    }
    _mm512_reduce_add_ps(acc)
}

/// Four Q4_0/Q4_1 rows at once: the activations are loaded once per block
/// for all four, and four independent accumulators keep more loads in
/// flight. Each row's sum is formed in the same order as in [`dot_q4`].
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn dot_q4_x4(q4_0: bool, rows: [&[u8]; 4], x: &[f32], xsum: &[f32]) -> [f32; 4] {
    let (off, bb) = if q4_0 { (2, 18) } else { (4, 20) };
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut msum = [0f32; 4];
    for (blk, (xb, &xs)) in x.chunks_exact(QK).zip(xsum).enumerate() {
        let (x0, x1) = (load16f(xb, 0), load16f(xb, 16));
        for r in 0..4 {
            let b = &rows[r][blk * bb..(blk + 1) * bb];
            let d = half(b, 0);
            let m = if q4_0 { -8.0 * d } else { half(b, 2) };
            let (lo, hi) = nibbles(b, off);
            let s = _mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0));
            acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(d), s, acc[r]);
            msum[r] += m * xs;
        }
    }
    [0, 1, 2, 3].map(|r| _mm512_reduce_add_ps(acc[r]) + msum[r])
}

/// `y[i] = row_i . x` for the rows packed in `rows` (`row_bytes` each):
/// the 4-bit types four rows at a time, the rest one at a time.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) fn dot_rows(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    x: &[f32],
    xsum: &[f32],
    y: &mut [f32],
) {
    // Q8_0 rows go one at a time: four interleaved rows of 34-byte blocks
    // streamed from DRAM at less than half the rate of one sequential row
    // on the project machine (the 49,152-row output projection: 10.2 ms
    // against 4.6 ms on one thread), and the sums are the same either way.
    // The 4-bit rows gain from sharing the activation loads.
    let done = if matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1) {
        for (q, yq) in y.chunks_exact_mut(4).enumerate() {
            let r = |i: usize| &rows[(4 * q + i) * row_bytes..(4 * q + i + 1) * row_bytes];
            let four = [r(0), r(1), r(2), r(3)];
            yq.copy_from_slice(&dot_q4_x4(ty == GgmlType::Q4_0, four, x, xsum));
        }
        4 * (y.len() / 4)
    } else {
        0
    };
    x86::each_row(
        ty,
        rows[done * row_bytes..].chunks_exact(row_bytes),
        x,
        xsum,
        &mut y[done..],
        |q4_0, row| dot_q4(q4_0, row, x, xsum),
        |row| dot_q8_0(row, x),
    );
}
