//! Value aggregation without bins for one-byte codes of 256 centroids:
//! `o[m * dsub + j] += sum_t p_t C_V[m][vcode_t[m]][j]`, read straight from
//! the stored rows (token-major, `M` bytes a token).
//!
//! The per-centroid histogram `W[m][vcode_t[m]] += p_t`
//! ([`crate::pq::histogram_u8_full`]) is a scattered read-modify-write a
//! code, about one a cycle on the project machine whatever its layout
//! (bins kept in L1 by processing a few subspaces at a time ran no faster).
//! Here each (token, subspace) pair is one load of its centroid (`dsub`
//! floats, 16 bytes for `dsub = 4`) and one fused multiply-add into an
//! accumulator that stays in a register: nothing is stored per token. Eight
//! subspaces go a pass, so that one 64-bit load brings a token's eight codes
//! (split by shifts) and the pass's eight codebooks (8 KB each for
//! `dsub = 4`) stay in L1 while the tokens stream; the accumulators are added
//! into `o` once a call. About 0.64 of the histogram's time per code in
//! isolation (4,096 tokens, `M = 32`, `dsub = 4`, best of 5: 0.21 ns against
//! 0.33 ns a code on the project machine, loaded).
//!
//! Register-resident codebooks (the two-level histogram, or
//! `vpermi2ps` over 16-centroid chunks with tokens in lanes) need about 16
//! vector instructions per 16 tokens and centroid component, four times the
//! work per code of the loads above for `dsub = 4`, so they were not built.

/// `o[s * dsub + j] += sum_t weights[t] centroids[(s * 256 + codes[t * m + s]) * dsub + j]`
/// over the `min(codes.len() / m, weights.len())` tokens of `codes` (`n x
/// M` one-byte codes, row-major), for every subspace `s < m`.
/// `centroids`: the value codebook, `M x 256 x dsub`, row-major
/// ([`aqpim_pq::ProductQuantizer::centroids`] with `ksub = 256`); `o`: at
/// least `M x dsub`. Each subspace's tokens are summed in token order, then
/// added to `o`; the result equals the per-centroid bins times the codebook
/// up to float rounding.
///
/// # Panics
/// If `centroids` or `o` is shorter than stated (an internal invariant: the
/// kernel passes a codebook of 256 centroids and its own outputs).
pub(crate) fn accumulate_rows(
    codes: &[u8],
    m: usize,
    dsub: usize,
    centroids: &[f32],
    weights: &[f32],
    o: &mut [f32],
) {
    if m == 0 || dsub == 0 {
        return;
    }
    assert!(
        centroids.len() >= m * 256 * dsub && o.len() >= m * dsub,
        "value codebook of {m} x 256 x {dsub} and {m} x {dsub} outputs"
    );
    let n = (codes.len() / m).min(weights.len());
    let (codes, weights) = (&codes[..n * m], &weights[..n]);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        match dsub {
            // SAFETY: AVX2 and FMA are available (checked above).
            1 => unsafe { vex::accumulate::<1>(codes, m, centroids, weights, o) },
            // SAFETY: as above.
            2 => unsafe { vex::accumulate::<2>(codes, m, centroids, weights, o) },
            // SAFETY: as above.
            4 => unsafe { vex::accumulate::<4>(codes, m, centroids, weights, o) },
            _ => accumulate_portable(codes, m, dsub, centroids, weights, o),
        }
        return;
    }
    accumulate_portable(codes, m, dsub, centroids, weights, o);
}

/// [`accumulate_rows`] one subspace at a time, one scalar chain a component
/// (every `dsub`; the path without AVX2 and FMA).
pub(crate) fn accumulate_portable(
    codes: &[u8],
    m: usize,
    dsub: usize,
    centroids: &[f32],
    weights: &[f32],
    o: &mut [f32],
) {
    let mut acc = vec![0f32; dsub];
    for s in 0..m {
        let cents = &centroids[s * 256 * dsub..(s + 1) * 256 * dsub];
        acc.fill(0.0);
        for (row, &p) in codes.chunks_exact(m).zip(weights) {
            let c = usize::from(row[s]) * dsub;
            for (a, &v) in acc.iter_mut().zip(&cents[c..c + dsub]) {
                *a += p * v;
            }
        }
        for (o, a) in o[s * dsub..(s + 1) * dsub].iter_mut().zip(&acc) {
            *o += a;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vex {
    use std::arch::x86_64::*;

    /// Subspaces a pass: one 64-bit load holds a token's codes.
    const PASS: usize = 8;

    /// How far ahead the first pass prefetches the rows, in bytes: the
    /// hardware prefetcher alone left the loads of a stream from DRAM
    /// exposed (32 KV heads' rows at 32K tokens, `M = 32`, one thread:
    /// 0.36 ns a code without, 0.27-0.29 with 1-8 KB ahead, 2 KB the best,
    /// on the project machine).
    const PREFETCH: usize = 2048;

    /// [`super::accumulate_rows`] for `DSUB` (1, 2 or 4) floats a centroid,
    /// each in the low lanes of a 128-bit register: passes of eight
    /// subspaces, then the rest one at a time.
    ///
    /// A safe `#[target_feature]` function: code compiled without AVX2 and
    /// FMA calls it only after checking for them at run time (its `unsafe`
    /// call site). Needs `centroids.len() >= M x 256 x DSUB`, `o.len() >= M
    /// x DSUB` and `weights.len() >= codes.len() / M`; panics otherwise.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn accumulate<const DSUB: usize>(
        codes: &[u8],
        m: usize,
        centroids: &[f32],
        weights: &[f32],
        o: &mut [f32],
    ) {
        let mut s = 0;
        while s + PASS <= m {
            pass::<DSUB, PASS>(codes, m, s, centroids, weights, o);
            s += PASS;
        }
        while s < m {
            pass::<DSUB, 1>(codes, m, s, centroids, weights, o);
            s += 1;
        }
    }

    /// Subspaces `s0 .. s0 + G` (`G` 8 or 1) of [`accumulate`]: `G`
    /// accumulators, one a subspace, over every token. The first pass
    /// (`s0 == 0`) reads the rows from memory and prefetches them
    /// [`PREFETCH`] bytes ahead; the later passes find them in L2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn pass<const DSUB: usize, const G: usize>(
        codes: &[u8],
        m: usize,
        s0: usize,
        centroids: &[f32],
        weights: &[f32],
        o: &mut [f32],
    ) {
        // Each subspace's codebook as 256 centroids: a byte code indexes it
        // without a bounds check.
        let books: [&[[f32; DSUB]; 256]; G] = std::array::from_fn(|k| {
            let at = (s0 + k) * 256 * DSUB;
            let rows = centroids[at..at + 256 * DSUB].as_chunks::<DSUB>().0;
            rows.try_into().expect("256 centroids")
        });
        let mut acc = [_mm_setzero_ps(); G];
        let first = s0 == 0;
        for (row, &p) in codes.chunks_exact(m).zip(weights) {
            if first {
                // A prefetch never faults, past the end of the rows too.
                let ahead = row.as_ptr().wrapping_add(PREFETCH);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            }
            let p = _mm_set1_ps(p);
            let word = codes_word::<G>(&row[s0..s0 + G]);
            for (k, (a, book)) in acc.iter_mut().zip(&books).enumerate() {
                let c = usize::from((word >> (8 * k)) as u8);
                *a = _mm_fmadd_ps(p, load::<DSUB>(&book[c]), *a);
            }
        }
        for (k, a) in acc.iter().enumerate() {
            let mut v = [0f32; 4];
            // SAFETY: `v` holds 4 floats.
            unsafe { _mm_storeu_ps(v.as_mut_ptr(), *a) };
            let out = &mut o[(s0 + k) * DSUB..(s0 + k + 1) * DSUB];
            for (o, x) in out.iter_mut().zip(v) {
                *o += x;
            }
        }
    }

    /// The `G` (at most 8) codes of `bytes`, little-endian in one word.
    #[inline(always)]
    fn codes_word<const G: usize>(bytes: &[u8]) -> u64 {
        match <&[u8; 8]>::try_from(bytes) {
            Ok(b) => u64::from_le_bytes(*b),
            Err(_) => bytes
                .iter()
                .take(G)
                .enumerate()
                .fold(0, |w, (i, &b)| w | u64::from(b) << (8 * i)),
        }
    }

    /// One centroid of `DSUB` (1, 2 or 4) floats in the low lanes of a
    /// register, the others zero.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn load<const DSUB: usize>(c: &[f32; DSUB]) -> __m128 {
        match DSUB {
            // SAFETY: `c` holds DSUB readable floats: 4, 2 (8 bytes) or 1.
            4 => unsafe { _mm_loadu_ps(c.as_ptr()) },
            // SAFETY: as above.
            2 => unsafe { _mm_castpd_ps(_mm_load_sd(c.as_ptr().cast())) },
            // SAFETY: as above.
            _ => unsafe { _mm_load_ss(c.as_ptr()) },
        }
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 64,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x256C0DE),
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions")
            )),
            ..ProptestConfig::default()
        })]
        /// Every path (passes of eight subspaces and the rest, each `dsub`
        /// with a vector path and one without, the portable loop) against
        /// f64 with a relative tolerance of a few f32 roundings of the
        /// summed magnitudes.
        #[test]
        fn rows_equal_f64(
            m in 1usize..40,
            dsub in prop::sample::select(vec![1usize, 2, 3, 4, 8]),
            n in 0usize..300,
            seed in 0u64..1_000_000,
        ) {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let cents: Vec<f32> = (0..m * 256 * dsub).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
            let codes: Vec<u8> = (0..n * m).map(|_| rng.gen()).collect();
            let weights: Vec<f32> = (0..n).map(|_| rng.gen_range(0.0f32..1.0)).collect();
            let start: Vec<f32> = (0..m * dsub).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let mut got = start.clone();
            accumulate_rows(&codes, m, dsub, &cents, &weights, &mut got);
            let mut portable = start.clone();
            accumulate_portable(&codes, m, dsub, &cents, &weights, &mut portable);
            for s in 0..m {
                for j in 0..dsub {
                    let i = s * dsub + j;
                    let (mut want, mut mag) = (f64::from(start[i]), f64::from(start[i]).abs());
                    for t in 0..n {
                        let c = usize::from(codes[t * m + s]);
                        let term = f64::from(weights[t]) * f64::from(cents[(s * 256 + c) * dsub + j]);
                        want += term;
                        mag += term.abs();
                    }
                    for g in [got[i], portable[i]] {
                        prop_assert!(
                            (f64::from(g) - want).abs() <= 4e-6 * mag + 1e-30,
                            "m={} dsub={} n={} s={} j={}: {} vs {}", m, dsub, n, s, j, g, want
                        );
                    }
                }
            }
        }
    }
}
