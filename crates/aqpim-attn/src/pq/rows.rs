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
//! and the pass's eight codebooks (4 KB each for `dsub = 4`) stay in L1
//! while the tokens stream; the accumulators are added into `o` once a
//! call. For `dsub = 4` the eight codes become byte offsets (times 16) by
//! two shifts and two masks, one field extraction a code ([`vex`]), not
//! three integer instructions a code. The passes after the first, which
//! read the rows from L2, prefetch what the kernel reads next into L2.
//!
//! Register-resident codebooks (the two-level histogram, or
//! `vpermi2ps` over 16-centroid chunks with tokens in lanes) need about 16
//! vector instructions per 16 tokens and centroid component, four times the
//! work per code of the loads above for `dsub = 4`, so they were not built.
//! Measured figures: `docs/results/attn-cpu.md` (issue 25's third and fourth
//! passes).

/// `o[s * dsub + j] += sum_t weights[t] centroids[(s * 256 + codes[t * m + s]) * dsub + j]`
/// over the `min(codes.len() / m, weights.len())` tokens of `codes` (`n x
/// M` one-byte codes, row-major), for every subspace `s < m`.
/// `centroids`: the value codebook, `M x 256 x dsub`, row-major
/// ([`aqpim_pq::ProductQuantizer::centroids`] with `ksub = 256`); `o`: at
/// least `M x dsub`. Each subspace's tokens are summed in token order, then
/// added to `o`; the result equals the per-centroid bins times the codebook
/// up to float rounding.
///
/// `ahead`: bytes the caller reads next (the next chunk's key blocks and
/// value rows), prefetched into L2 by the passes after the first, which
/// read only the L2 and leave the memory idle otherwise; they do not change
/// the result.
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
    ahead: [&[u8]; 2],
    o: &mut [f32],
) {
    accumulate_with(
        RowsKernel::detect(),
        codes,
        m,
        dsub,
        centroids,
        weights,
        ahead,
        o,
    );
}

/// The implementations of [`accumulate_rows`]; every one gives the same sums
/// up to float rounding (the tests run each this machine has).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowsKernel {
    /// One subspace at a time, one scalar chain a component.
    Portable,
    /// AVX2, FMA and BMI1: eight subspaces a pass, one fused multiply-add a
    /// code.
    Vex,
}

impl RowsKernel {
    /// The fastest implementation this CPU runs.
    pub(crate) fn detect() -> RowsKernel {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("bmi1")
        {
            return RowsKernel::Vex;
        }
        RowsKernel::Portable
    }

    /// Every implementation this CPU runs, the portable one first.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<RowsKernel> {
        let mut all = vec![RowsKernel::Portable];
        if RowsKernel::detect() == RowsKernel::Vex {
            all.push(RowsKernel::Vex);
        }
        all
    }
}

/// [`accumulate_rows`] with a chosen implementation.
///
/// # Panics
/// As [`accumulate_rows`]; also if `kernel` is [`RowsKernel::Vex`] on a CPU
/// without AVX2, FMA and BMI1.
#[allow(clippy::too_many_arguments)]
pub(crate) fn accumulate_with(
    kernel: RowsKernel,
    codes: &[u8],
    m: usize,
    dsub: usize,
    centroids: &[f32],
    weights: &[f32],
    ahead: [&[u8]; 2],
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
    if kernel == RowsKernel::Vex {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(
                RowsKernel::detect() == RowsKernel::Vex,
                "the AVX2 rows kernel on a CPU without AVX2, FMA and BMI1"
            );
            let rows = vex::Rows {
                codes,
                m,
                centroids,
                weights,
            };
            match dsub {
                // SAFETY: AVX2, FMA and BMI1 are available (checked above).
                1 => unsafe { vex::accumulate::<1>(&rows, ahead, o) },
                // SAFETY: as above.
                2 => unsafe { vex::accumulate::<2>(&rows, ahead, o) },
                // SAFETY: as above.
                4 => unsafe { vex::accumulate::<4>(&rows, ahead, o) },
                _ => accumulate_portable(codes, m, dsub, centroids, weights, o),
            }
            return;
        }
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
mod vex;

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
        /// with a vector path and one without, the portable loop; with and
        /// without bytes to prefetch) against f64 with a relative tolerance
        /// of a few f32 roundings of the summed magnitudes.
        #[test]
        fn rows_equal_f64(
            m in 1usize..40,
            dsub in prop::sample::select(vec![1usize, 2, 3, 4, 8]),
            n in 0usize..300,
            ahead_len in 0usize..20_000,
            seed in 0u64..1_000_000,
        ) {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let cents: Vec<f32> = (0..m * 256 * dsub).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
            let codes: Vec<u8> = (0..n * m).map(|_| rng.gen()).collect();
            let weights: Vec<f32> = (0..n).map(|_| rng.gen_range(0.0f32..1.0)).collect();
            let start: Vec<f32> = (0..m * dsub).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let ahead = vec![7u8; ahead_len];
            let mut outs = Vec::new();
            for kernel in RowsKernel::available() {
                for regions in [[&[][..], &[][..]], [&ahead[..], &ahead[ahead_len / 3..]]] {
                    let mut got = start.clone();
                    accumulate_with(kernel, &codes, m, dsub, &cents, &weights, regions, &mut got);
                    outs.push(got);
                }
            }
            let mut default = start.clone();
            accumulate_rows(&codes, m, dsub, &cents, &weights, [&ahead[..]; 2], &mut default);
            outs.push(default);
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
                    for g in outs.iter().map(|o| o[i]) {
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
