//! What the AVX2 and AVX-512 kernels share: the run-time feature checks that
//! pick a kernel, the f16 and 16-byte loads, and the per-row loop.
//!
//! The helpers are safe `#[target_feature]` functions: a kernel compiled
//! with (at least) the same features calls them directly; code without them
//! calls a kernel only inside `unsafe` after the matching `has_*` check.

use std::arch::x86_64::{__m128i, _mm_cvtph_ps, _mm_cvtsi32_si128, _mm_cvtss_f32, _mm_loadu_si128};

use std::slice::ChunksExact;

use super::{scalar, GgmlType};

/// Whether this CPU runs the [`super::avx2`] kernels (AVX2, FMA and F16C).
pub(super) fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// Whether this CPU runs the [`super::avx512`] kernels (AVX-512F and the
/// features of [`has_avx2`]).
pub(super) fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && has_avx2()
}

/// The little-endian f16 at `b[i..i + 2]`, as f32 (one F16C conversion).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn half(b: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Loads the first 16 bytes of `b` (panics if it is shorter).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load16(b: &[u8]) -> __m128i {
    let s = &b[..16];
    // SAFETY: `s` holds exactly 16 readable bytes; the load is unaligned.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

/// `y[i] = row_i . x` one row at a time over `rows` (a row of blocks of
/// `ty` each): `q4(q4_0, row)` for Q4_0 and Q4_1, `q8(row)` for Q8_0, the
/// portable kernel for F32 and F16. Inlined into each kernel, so the
/// closures and the portable kernel are compiled with the kernel's features.
#[inline(always)]
pub(super) fn each_row(
    ty: GgmlType,
    rows: ChunksExact<'_, u8>,
    x: &[f32],
    xsum: &[f32],
    y: &mut [f32],
    q4: impl Fn(bool, &[u8]) -> f32,
    q8: impl Fn(&[u8]) -> f32,
) {
    for (yi, row) in y.iter_mut().zip(rows) {
        *yi = match ty {
            GgmlType::Q4_0 => q4(true, row),
            GgmlType::Q4_1 => q4(false, row),
            GgmlType::Q8_0 => q8(row),
            GgmlType::F32 | GgmlType::F16 => scalar::dot_row(ty, row, x, xsum),
        };
    }
}
