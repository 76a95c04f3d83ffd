//! f32 matrix products on row-major operands without packing, rounded as
//! matrixmultiply's `sgemm` rounds them, for the blocked attention of
//! calibration's forward pass.
//!
//! matrixmultiply copies ("packs") both operands of every call into panels
//! before its kernel runs. Attention multiplies each 256-key tile twice
//! (scores `Q K^T`, then `P V`), so it packed every query block and score
//! tile once per tile: a tenth of the whole calibration's time. Here the
//! operands are read where they lie: `A` (`m x k`, rows of stride `lda`)
//! element by element as broadcasts, `B` (`k x n`, rows of stride `ldb`,
//! unit column stride) 16 columns per vector, and each output tile of
//! 6 rows x 64 columns stays in 24 AVX-512 registers over the whole sum.
//!
//! Rounding, element by element, is matrixmultiply's: the sum over `k`
//! runs in blocks of [`KC`] terms, each a chain of fused multiply-adds in
//! index order starting from `+0`; the first block stores `alpha * sum`
//! ([`Store::Scale`]) or adds the sum to `C` ([`Store::Add`]), each later
//! block adds its sum to `C`. So these products give the bits matrixmultiply
//! gives (checked against it in the tests) whenever `alpha = 1` or `k <=
//! KC`, which is how calibration calls them. Without AVX-512 they call
//! matrixmultiply itself.

/// Terms of the sum per block (matrixmultiply's `KC` for `f32`).
pub(crate) const KC: usize = 256;

/// What a product does with `C`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Store {
    /// `C = alpha A B` (matrixmultiply's `beta = 0`); `alpha` must be 1
    /// when `k > KC`.
    Scale(f32),
    /// `C = C + A B` (`alpha = beta = 1`).
    Add,
}

/// `C (m x n) = alpha A B` or `C += A B` (see [`Store`]): `A` is `m x k`
/// with rows of stride `lda`, `B` is `k x n` with rows of stride `ldb` and
/// unit column stride, `C` is `m x n` with rows of stride `ldc`.
///
/// Panics when a slice is too short for its shape, or on `Store::Scale`
/// with `alpha != 1` and `k > KC`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    store: Store,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(a.len() >= (m - 1) * lda + k, "gemm: A too short");
    assert!(k == 0 || b.len() >= (k - 1) * ldb + n, "gemm: B too short");
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: C too short");
    assert!(k >= 1 && lda >= k && ldb >= n && ldc >= n, "gemm: strides");
    if let Store::Scale(alpha) = store {
        assert!(alpha == 1.0 || k <= KC, "gemm: alpha != 1 with k > KC");
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available (checked just above); the asserts
        // keep every element the kernels touch inside its slice.
        unsafe { avx512::gemm((m, k, n), a, lda, b, ldb, c, ldc, store) };
        return;
    }
    portable((m, k, n), a, lda, b, ldb, c, ldc, store);
}

/// matrixmultiply's `sgemm` on the same operands.
#[allow(clippy::too_many_arguments)]
fn portable(
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    store: Store,
) {
    let (alpha, beta) = match store {
        Store::Scale(alpha) => (alpha, 0.0),
        Store::Add => (1.0, 1.0),
    };
    // SAFETY: `gemm`'s asserts keep A (m x k, strides lda, 1), B (k x n,
    // strides ldb, 1) and C (m x n, strides ldc, 1) inside their slices; C
    // is a unique borrow and so aliases neither input.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            lda as isize,
            1,
            b.as_ptr(),
            ldb as isize,
            1,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Store, KC};
    use std::arch::x86_64::*;

    /// Rows of an output tile.
    const ROWS: usize = 6;
    /// 16-column vectors of an output tile.
    const VECS: usize = 4;
    /// Columns of an output tile.
    const COLS: usize = 16 * VECS;

    /// [`super::gemm`] for AVX-512: column strips of [`COLS`] (so that the
    /// strip of `B` stays in cache across the rows), then tiles of
    /// [`ROWS`] rows, each summed block by block of [`KC`] terms.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; the shapes must pass `gemm`'s asserts.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gemm(
        (m, k, n): (usize, usize, usize),
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        store: Store,
    ) {
        let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        for j0 in (0..n).step_by(COLS) {
            let cols = (n - j0).min(COLS);
            for k0 in (0..k).step_by(KC) {
                let kk = (k - k0).min(KC);
                let st = if k0 == 0 { store } else { Store::Add };
                for i0 in (0..m).step_by(ROWS) {
                    let rows = (m - i0).min(ROWS);
                    // SAFETY: rows i0..i0 + rows, terms k0..k0 + kk and
                    // columns j0..j0 + cols lie inside the shapes `gemm`
                    // checked.
                    unsafe {
                        tile_dispatch(
                            rows,
                            cols,
                            kk,
                            a.add(i0 * lda + k0),
                            lda,
                            b.add(k0 * ldb + j0),
                            ldb,
                            c.add(i0 * ldc + j0),
                            ldc,
                            st,
                        )
                    };
                }
            }
        }
    }

    /// Picks the tile kernel for `rows x cols` (`rows <= ROWS`, `cols <= COLS`).
    ///
    /// # Safety
    /// As [`tile`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_dispatch(
        rows: usize,
        cols: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        st: Store,
    ) {
        let vecs = cols.div_ceil(16);
        let rem = cols - 16 * (vecs - 1);
        let mask: __mmask16 = if rem == 16 { !0 } else { (1u16 << rem) - 1 };
        type Kernel = unsafe fn(
            usize,
            *const f32,
            usize,
            *const f32,
            usize,
            *mut f32,
            usize,
            __mmask16,
            Store,
        );
        macro_rules! pick {
            ($($r:literal)*) => {
                match (rows, vecs) {
                    $(
                        ($r, 1) => tile::<$r, 1> as Kernel,
                        ($r, 2) => tile::<$r, 2> as Kernel,
                        ($r, 3) => tile::<$r, 3> as Kernel,
                        ($r, 4) => tile::<$r, 4> as Kernel,
                    )*
                    _ => unreachable!("tile of {rows} x {cols}"),
                }
            };
        }
        let kernel = pick!(1 2 3 4 5 6);
        // SAFETY: the caller's contract is the kernel's, with `rows` and
        // `vecs` (and `mask` for the last vector) its shape.
        unsafe { kernel(k, a, lda, b, ldb, c, ldc, mask, st) };
    }

    /// One output tile of `R` rows and `V` vectors of 16 columns, the last
    /// vector's columns given by `mask`: `sum_t A[r][t] B[t][..]` for `t <
    /// k` (`k <= KC`), one fused multiply-add per term in order from `+0`,
    /// then stored per `st`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `a` must hold `R` rows of `k`
    /// readable values (stride `lda`), `b` `k` rows of the tile's columns
    /// (stride `ldb`), `c` `R` rows of them (stride `ldc`), and `c` must
    /// alias neither input.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const V: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        mask: __mmask16,
        st: Store,
    ) {
        debug_assert!(k <= KC);
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for t in 0..k {
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                // SAFETY: row t of the tile's B, its first 16 v columns
                // and, in the last vector, those `mask` selects.
                *x = unsafe {
                    let p = b.add(t * ldb + 16 * v);
                    if v + 1 == V {
                        _mm512_maskz_loadu_ps(mask, p)
                    } else {
                        _mm512_loadu_ps(p)
                    }
                };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: element t of row r of A.
                let av = _mm512_set1_ps(unsafe { *a.add(r * lda + t) });
                for (x, &y) in row.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, y, *x);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, &sum) in row.iter().enumerate() {
                let m = if v + 1 == V { mask } else { !0 };
                // SAFETY: row r of the tile's C, the columns `m` selects.
                unsafe {
                    let p = c.add(r * ldc + 16 * v);
                    let out = match st {
                        Store::Scale(alpha) => _mm512_mul_ps(_mm512_set1_ps(alpha), sum),
                        Store::Add => _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), sum),
                    };
                    _mm512_mask_storeu_ps(p, m, out);
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain reference: per element, blocks of `KC` fused multiply-adds
    /// in index order from `+0`, stored as [`Store`] says.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        (m, k, n): (usize, usize, usize),
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        store: Store,
    ) {
        for i in 0..m {
            for j in 0..n {
                for k0 in (0..k).step_by(KC) {
                    let mut s = 0.0f32;
                    for t in k0..(k0 + KC).min(k) {
                        s = a[i * lda + t].mul_add(b[t * ldb + j], s);
                    }
                    let o = &mut c[i * ldc + j];
                    *o = match (k0, store) {
                        (0, Store::Scale(alpha)) => alpha * s,
                        _ => *o + s,
                    };
                }
            }
        }
    }

    /// Values in `[-2, 2)` from a xorshift generator seeded by `seed`.
    pub(crate) fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    fn check(m: usize, k: usize, n: usize, pad: usize, store: Store, seed: u64) {
        let (lda, ldb, ldc) = (k + pad, n + 2 * pad, n + pad);
        let a = values(m * lda, seed);
        let b = values(k * ldb, seed + 1);
        let c0 = values(m * ldc, seed + 2);
        let mut got = c0.clone();
        gemm((m, k, n), &a, lda, &b, ldb, &mut got, ldc, store);
        let mut want = c0.clone();
        reference((m, k, n), &a, lda, &b, ldb, &mut want, ldc, store);
        let mut mm = c0.clone();
        portable((m, k, n), &a, lda, &b, ldb, &mut mm, ldc, store);
        // matrixmultiply has an FMA kernel where the CPU has FMA; without
        // AVX-512 `gemm` is matrixmultiply itself.
        #[cfg(target_arch = "x86_64")]
        let fused = std::arch::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let fused = false;
        for i in 0..m {
            for j in 0..ldc {
                let at = i * ldc + j;
                if j >= n {
                    assert_eq!(got[at].to_bits(), c0[at].to_bits(), "padding at {i},{j}");
                    continue;
                }
                if !fused {
                    // Without fused multiply-adds only closeness is owed
                    // (|a|, |b| <= 2, so a sum of k terms is below 4 k + |c|).
                    let tol = 1e-5 * (4.0 * k as f32 + c0[at].abs());
                    assert!((got[at] - want[at]).abs() <= tol, "({i},{j})");
                    continue;
                }
                assert_eq!(
                    got[at].to_bits(),
                    want[at].to_bits(),
                    "{m}x{k}x{n} {store:?}: ({i},{j}) {} vs reference {}",
                    got[at],
                    want[at]
                );
                assert_eq!(
                    got[at].to_bits(),
                    mm[at].to_bits(),
                    "{m}x{k}x{n} {store:?}: ({i},{j}) {} vs matrixmultiply {}",
                    got[at],
                    mm[at]
                );
            }
        }
    }

    #[test]
    fn attention_and_linear_shapes_match_bit_for_bit() {
        // Score tiles (k = head_dim), P V (k = keys), ragged edges, and a
        // linear layer's k over three blocks.
        check(384, 64, 256, 0, Store::Scale(0.125), 1);
        check(384, 256, 64, 0, Store::Add, 2);
        check(13, 64, 37, 3, Store::Scale(0.3), 3);
        check(7, 200, 80, 5, Store::Add, 4);
        check(20, 576, 70, 1, Store::Scale(1.0), 5);
        check(9, 600, 33, 0, Store::Add, 6);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, rng_seed: proptest::test_runner::RngSeed::Fixed(24), ..ProptestConfig::default() })]
        #[test]
        fn any_shape_matches_bit_for_bit(m in 1usize..20, k in 1usize..300, n in 1usize..140, pad in 0usize..4, add: bool, seed: u64) {
            let store = match (add, k <= KC) {
                (true, _) => Store::Add,
                (false, true) => Store::Scale(0.7),
                (false, false) => Store::Scale(1.0),
            };
            check(m, k, n, pad, store, seed);
        }
    }
}
