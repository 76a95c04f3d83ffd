//! Value aggregation without read-modify-writes, for value codebooks of at
//! most 16 centroids: `o += sum_t p_t C_V[m][vcode_t[m]]` computed with the
//! tokens in SIMD lanes.
//!
//! The codes come transposed in blocks of 64 tokens, two a byte in lane
//! nibbles ([`aqpim_pq::pack_lane_nibbles`]), so one 32-byte load holds a
//! subspace's codes for 64 tokens and a shift puts 16 of them in lanes. A subspace's
//! centroid component `j` (16 values, one per centroid) fits one register;
//! a `vpermps` by the codes gives the 16 tokens' decoded component and a
//! fused multiply-add weighs it by their softmax weights into a lane
//! accumulator that stays in a register for the whole block. The
//! accumulators are summed across lanes once a block. Nothing is stored per
//! token and no bin is read back, unlike the histogram of
//! [`crate::pq::histogram_u8_full`] (a scattered add a code), and the
//! per-centroid weights `W[m][j]` are never formed: the result equals
//! `sum_m W[m] x C_V[m]` up to float rounding.

use aqpim_pq::{LANE_ROW, SCAN_BLOCK};

/// The value codebook as centroid columns: `cols[(m * dsub + j) * 16 + c]`
/// = component `j` of centroid `c` of subspace `m` (`c < ksub <= 16`, the
/// rest zero). `centroids(m)` gives subspace `m`'s `ksub x dsub` values.
pub(crate) fn centroid_columns<'a>(
    m: usize,
    ksub: usize,
    dsub: usize,
    centroids: impl Fn(usize) -> &'a [f32],
) -> Vec<f32> {
    let mut cols = vec![0f32; m * dsub * 16];
    for s in 0..m {
        for (c, centroid) in centroids(s)
            .chunks_exact(dsub)
            .take(ksub.min(16))
            .enumerate()
        {
            for (j, &v) in centroid.iter().enumerate() {
                cols[(s * dsub + j) * 16 + c] = v;
            }
        }
    }
    cols
}

/// `o[m * dsub + j] += sum_t weights[t] cols[(m * dsub + j) * 16 + code(t, m)]`
/// over the tokens of `blocks` (`blocks.len() / (M x 32)` blocks of 64
/// tokens in lane nibbles, [`aqpim_pq::pack_lane_nibbles`]; `weights`: 64 a
/// block, zero past the last token; `cols` from [`centroid_columns`]; `o`:
/// `M x dsub`). `ahead`: bytes the caller reads next (the next chunk's key
/// blocks and value blocks), prefetched into L2 over the passes (the first
/// half of the passes the first region, the second half the second); they
/// do not change the result.
pub(crate) fn accumulate_values(
    blocks: &[u8],
    m: usize,
    dsub: usize,
    cols: &[f32],
    weights: &[f32],
    ahead: [&[u8]; 2],
    o: &mut [f32],
) {
    let block = m * LANE_ROW;
    if block == 0 || dsub == 0 {
        return;
    }
    let nb = (blocks.len() / block).min(weights.len() / SCAN_BLOCK);
    let blocks = &blocks[..nb * block];
    debug_assert!(cols.len() >= m * dsub * 16 && o.len() >= m * dsub);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        match dsub {
            // SAFETY: AVX-512F is available (checked above).
            1 => unsafe { avx512::accumulate::<1, 8>(blocks, m, cols, weights, ahead, o) },
            // SAFETY: as above.
            2 => unsafe { avx512::accumulate::<2, 4>(blocks, m, cols, weights, ahead, o) },
            // SAFETY: as above.
            4 => unsafe { avx512::accumulate::<4, 2>(blocks, m, cols, weights, ahead, o) },
            _ => accumulate_portable(blocks, m, dsub, cols, weights, o),
        }
        return;
    }
    accumulate_portable(blocks, m, dsub, cols, weights, o);
}

/// [`accumulate_values`] one token at a time.
fn accumulate_portable(
    blocks: &[u8],
    m: usize,
    dsub: usize,
    cols: &[f32],
    weights: &[f32],
    o: &mut [f32],
) {
    let n = SCAN_BLOCK;
    for (b, blk) in blocks.chunks_exact(m * LANE_ROW).enumerate() {
        let w = &weights[b * n..(b + 1) * n];
        for (s, row) in blk.chunks_exact(LANE_ROW).enumerate() {
            for j in 0..dsub {
                let col = &cols[(s * dsub + j) * 16..(s * dsub + j + 1) * 16];
                o[s * dsub + j] += w
                    .iter()
                    .enumerate()
                    .map(|(t, &p)| p * col[usize::from(aqpim_pq::lane_nibble(row, t))])
                    .sum::<f32>();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use aqpim_pq::{LANE_ROW, SCAN_BLOCK};

    /// [`super::accumulate_values`] for `DSUB` components a subspace, 16
    /// tokens a register: `S` subspaces a pass (`S x DSUB` centroid columns
    /// and as many accumulators in registers over all blocks), so that each
    /// 16 tokens' weights are loaded once for `S` subspaces and `S x DSUB`
    /// independent FMA chains hide the FMA latency (one subspace a pass has
    /// only `DSUB` chains and waits on them). Subspaces past the last whole
    /// pass go one at a time.
    ///
    /// A subspace's 32 bytes of a block are broadcast to both halves of a
    /// register; a variable shift per 16 tokens brings their codes to the
    /// low four bits of each lane, which are all `vpermps` reads.
    ///
    /// A safe `#[target_feature]` function: code compiled without AVX-512F
    /// calls it only after checking for it at run time (its `unsafe` call
    /// site). Needs `weights.len() >= 64 x blocks`, `cols.len() >= M x DSUB
    /// x 16` and `o.len() >= M x DSUB`; panics otherwise.
    #[target_feature(enable = "avx512f")]
    pub(super) fn accumulate<const DSUB: usize, const S: usize>(
        blocks: &[u8],
        m: usize,
        cols: &[f32],
        weights: &[f32],
        ahead: [&[u8]; 2],
        o: &mut [f32],
    ) {
        let nb = blocks.len() / (m * LANE_ROW);
        assert!(
            weights.len() >= nb * SCAN_BLOCK && cols.len() >= m * DSUB * 16 && o.len() >= m * DSUB
        );
        let full = m / S;
        for p in 0..full {
            let ahead = share(ahead, p, full);
            pass::<DSUB, S>(blocks, m, p * S, cols, weights, ahead, o);
        }
        for s in full * S..m {
            pass::<DSUB, 1>(blocks, m, s, cols, weights, &[], o);
        }
    }

    /// The part of `ahead` that pass `p` of `passes` prefetches: region 0
    /// over the first half of the passes, region 1 over the second, each
    /// cut in equal parts.
    fn share(ahead: [&[u8]; 2], p: usize, passes: usize) -> &[u8] {
        let r = p * 2 / passes;
        let first = (r * passes).div_ceil(2);
        let count = ((r + 1) * passes).div_ceil(2) - first;
        let bytes = ahead[r];
        let part = bytes.len().div_ceil(count.max(1));
        let at = ((p - first) * part).min(bytes.len());
        &bytes[at..(at + part).min(bytes.len())]
    }

    /// Subspaces `s0 .. s0 + S` of [`accumulate`], prefetching `ahead`
    /// into L2 over the blocks (a few lines a block).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn pass<const DSUB: usize, const S: usize>(
        blocks: &[u8],
        m: usize,
        s0: usize,
        cols: &[f32],
        weights: &[f32],
        ahead: &[u8],
        o: &mut [f32],
    ) {
        const LINE: usize = 64;
        let lines = ahead.len().div_ceil(LINE);
        let per = lines.div_ceil((blocks.len() / (m * LANE_ROW)).max(1));
        let n = SCAN_BLOCK;
        let load16 = |s: &[f32]| {
            let s: &[f32; 16] = s.try_into().expect("16 floats");
            // SAFETY: `s` holds exactly 16 readable floats.
            unsafe { _mm512_loadu_ps(s.as_ptr()) }
        };
        let tables: [[__m512; DSUB]; S] = std::array::from_fn(|k| {
            std::array::from_fn(|j| {
                let c = ((s0 + k) * DSUB + j) * 16;
                load16(&cols[c..c + 16])
            })
        });
        // Group `c` of 16 tokens: lanes 0..8 at bits 8c, lanes 8..16 at 8c + 4.
        let shifts: [__m512i; 4] = std::array::from_fn(|c| {
            let (lo, hi) = (8 * c as i32, 8 * c as i32 + 4);
            _mm512_setr_epi32(
                lo, lo, lo, lo, lo, lo, lo, lo, hi, hi, hi, hi, hi, hi, hi, hi,
            )
        });
        let mut acc = [[_mm512_setzero_ps(); DSUB]; S];
        for (b, blk) in blocks.chunks_exact(m * LANE_ROW).enumerate() {
            for j in b * per..((b + 1) * per).min(lines) {
                _mm_prefetch::<_MM_HINT_T1>(ahead.as_ptr().wrapping_add(j * LINE).cast());
            }
            let rows: [__m512i; S] = std::array::from_fn(|k| {
                let at = (s0 + k) * LANE_ROW;
                let bytes: &[u8; LANE_ROW] = blk[at..at + LANE_ROW].try_into().expect("32");
                // SAFETY: `bytes` holds exactly 32 readable bytes.
                _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) })
            });
            for (c, sh) in shifts.iter().enumerate() {
                let p = load16(&weights[b * n + 16 * c..b * n + 16 * c + 16]);
                for ((a, t), r) in acc.iter_mut().zip(&tables).zip(&rows) {
                    let idx = _mm512_srlv_epi32(*r, *sh);
                    for (a, t) in a.iter_mut().zip(t) {
                        *a = _mm512_fmadd_ps(p, _mm512_permutexvar_ps(idx, *t), *a);
                    }
                }
            }
        }
        for (k, a) in acc.iter().enumerate() {
            for (j, a) in a.iter().enumerate() {
                o[(s0 + k) * DSUB + j] += _mm512_reduce_add_ps(*a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn lanes_equal_the_histogram_path() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        for (m, dsub, ksub, nb) in [
            (1, 1, 2, 1),
            (3, 2, 16, 2),
            (8, 4, 16, 3),
            (5, 3, 8, 2),
            (64, 2, 16, 4),
            (7, 2, 16, 2),
            (11, 1, 16, 3),
            (5, 4, 16, 2),
        ] {
            let cents: Vec<Vec<f32>> = (0..m)
                .map(|_| {
                    (0..ksub * dsub)
                        .map(|_| rng.gen_range(-2.0f32..2.0))
                        .collect()
                })
                .collect();
            let cols = centroid_columns(m, ksub, dsub, |s| &cents[s]);
            let blocks: Vec<u8> = (0..nb * m * 64)
                .map(|_| rng.gen_range(0..ksub) as u8)
                .collect();
            let mut lanes = vec![0u8; blocks.len() / 2];
            aqpim_pq::pack_lane_nibbles(&blocks, &mut lanes).unwrap();
            let weights: Vec<f32> = (0..nb * 64).map(|_| rng.gen_range(0.0f32..1.0)).collect();
            let mut got = vec![0.5f32; m * dsub];
            accumulate_values(
                &lanes,
                m,
                dsub,
                &cols,
                &weights,
                [&lanes[..], &lanes[lanes.len() / 3..]],
                &mut got,
            );
            // Per-centroid bins, then bins times the codebook, in f64.
            let mut want = vec![0.5f64; m * dsub];
            for s in 0..m {
                let mut bins = vec![0f64; ksub];
                for b in 0..nb {
                    for t in 0..64 {
                        bins[usize::from(blocks[b * m * 64 + s * 64 + t])] +=
                            f64::from(weights[b * 64 + t]);
                    }
                }
                for (c, w) in bins.iter().enumerate() {
                    for j in 0..dsub {
                        want[s * dsub + j] += w * f64::from(cents[s][c * dsub + j]);
                    }
                }
            }
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (f64::from(*g) - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "m={m} dsub={dsub}: {g} vs {w}"
                );
            }
            let mut portable = vec![0.5f32; m * dsub];
            accumulate_portable(&lanes, m, dsub, &cols, &weights, &mut portable);
            for (g, w) in portable.iter().zip(&want) {
                assert!((f64::from(*g) - w).abs() <= 1e-4 * (1.0 + w.abs()));
            }
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
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x1A7E5),
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions")
            )),
            ..ProptestConfig::default()
        })]
        /// Every path (the AVX-512 passes of several subspaces and their
        /// remainder, the portable loop) against f64 with a relative
        /// tolerance of a few f32 roundings of the summed magnitudes.
        #[test]
        fn lanes_equal_f64(
            m in 1usize..80,
            dsub in prop::sample::select(vec![1usize, 2, 3, 4]),
            ksub in 1usize..=16,
            nb in 1usize..5,
            seed in 0u64..1_000_000,
        ) {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let cents: Vec<Vec<f32>> = (0..m)
                .map(|_| (0..ksub * dsub).map(|_| rng.gen_range(-3.0f32..3.0)).collect())
                .collect();
            let cols = centroid_columns(m, ksub, dsub, |s| &cents[s]);
            let codes: Vec<u8> = (0..nb * m * 64).map(|_| rng.gen_range(0..ksub) as u8).collect();
            let mut lanes = vec![0u8; codes.len() / 2];
            aqpim_pq::pack_lane_nibbles(&codes, &mut lanes).unwrap();
            let weights: Vec<f32> = (0..nb * 64).map(|_| rng.gen_range(0.0f32..1.0)).collect();
            let mut got = vec![0f32; m * dsub];
            accumulate_values(&lanes, m, dsub, &cols, &weights, [&lanes[..], &lanes[lanes.len() / 3..]], &mut got);
            let mut portable = vec![0f32; m * dsub];
            accumulate_portable(&lanes, m, dsub, &cols, &weights, &mut portable);
            for s in 0..m {
                for j in 0..dsub {
                    let (mut want, mut mag) = (0f64, 0f64);
                    for b in 0..nb {
                        for t in 0..64 {
                            let c = usize::from(codes[b * m * 64 + s * 64 + t]);
                            let term = f64::from(weights[b * 64 + t]) * f64::from(cents[s][c * dsub + j]);
                            want += term;
                            mag += term.abs();
                        }
                    }
                    for g in [got[s * dsub + j], portable[s * dsub + j]] {
                        prop_assert!(
                            (f64::from(g) - want).abs() <= 4e-6 * mag + 1e-30,
                            "m={} dsub={} s={} j={}: {} vs {}", m, dsub, s, j, g, want
                        );
                    }
                }
            }
        }
    }
}
