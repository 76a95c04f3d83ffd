//! Exact causal self-attention of a whole sequence at once, blocked for the
//! CPU caches: the recording forward pass of calibration runs it instead of
//! one query at a time through a KV cache.
//!
//! For each KV head `g` and each block of [`QUERY_BLOCK`] positions, the
//! group's query heads form one `(QUERY_BLOCK * group) x d` matrix `Q`.
//! Key tiles of [`KEY_TILE`] tokens, up to the block's last position, give
//! scores `S = scale Q K^T` (an SGEMM); an online softmax keeps per row the
//! running maximum `m` and sum `l` of `exp(s - m)`, rescaling the output
//! accumulator by `exp(m_old - m_new)` when a tile raises the maximum; and
//! `O += P V` (an SGEMM). At the end `out = O / l`. Row `i` at position `p`
//! sees keys `0..=p` (causal).
//!
//! Query blocks run in parallel (rayon), each over every KV head, writing
//! its own output rows, so the result does not depend on the thread count. On request a block also returns the
//! query statistics calibration fits transforms to: the second moment of
//! its queries (`sum q q^T`, f64) and, per key, the attention it received
//! from queries at least `window` positions later (a second pass over the
//! tiles with the final `m` and `l`). Partial statistics are summed in block
//! order, so they are deterministic too.

use rayon::prelude::*;

use crate::error::{DecodeError, Result};
use crate::model::quant::gemm::{gemm, Store};

/// Query positions per block.
pub const QUERY_BLOCK: usize = 128;
/// Keys per score tile.
pub const KEY_TILE: usize = 256;

/// Shapes of one [`causal_attention`] call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dims {
    /// Tokens of the sequence (positions `0..n`).
    pub n: usize,
    /// Query heads.
    pub n_heads: usize,
    /// KV heads (each shared by `n_heads / n_kv_heads` adjacent query heads).
    pub n_kv_heads: usize,
    /// Elements per head (d).
    pub head_dim: usize,
    /// Score scale (`1 / sqrt(d)`).
    pub scale: f32,
}

/// Which query statistics [`causal_attention`] gathers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsRequest {
    /// `sum q q^T` over the group's query heads and positions.
    pub moments: bool,
    /// `Some(window)`: per key, the attention received from queries at least
    /// `window` positions later, and how many such queries there were.
    pub mass_window: Option<usize>,
}

/// The statistics of one KV head's query group over the sequence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeadStats {
    /// `sum q q^T`, `d x d` row-major (empty unless asked for).
    pub moment: Vec<f64>,
    /// Queries summed into `moment`.
    pub queries: usize,
    /// Per key position (`n` entries when asked for): summed attention
    /// from the queries at least `window` positions later, and their count.
    pub mass: Vec<(f64, u32)>,
}

impl HeadStats {
    fn add(&mut self, other: HeadStats) {
        if self.moment.is_empty() {
            self.moment = other.moment;
        } else {
            self.moment
                .iter_mut()
                .zip(&other.moment)
                .for_each(|(a, b)| *a += b);
        }
        self.queries += other.queries;
        if self.mass.len() < other.mass.len() {
            self.mass.resize(other.mass.len(), (0.0, 0));
        }
        for (a, b) in self.mass.iter_mut().zip(&other.mass) {
            a.0 += b.0;
            a.1 += b.1;
        }
    }
}

/// Causal attention of a whole sequence: `q` is `n x n_heads*d`, `k` and
/// `v` are `n x n_kv_heads*d` (rows by position, heads adjacent), `out` is
/// `n x n_heads*d`. Returns one [`HeadStats`] per KV head (empty ones unless
/// `stats` asks).
pub fn causal_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: Dims,
    stats: StatsRequest,
    out: &mut [f32],
) -> Result<Vec<HeadStats>> {
    let Dims {
        n,
        n_heads,
        n_kv_heads,
        head_dim: d,
        ..
    } = dims;
    let shapes_ok = n_kv_heads > 0
        && d > 0
        && n_heads.is_multiple_of(n_kv_heads)
        && q.len() == n * n_heads * d
        && out.len() == q.len()
        && k.len() == n * n_kv_heads * d
        && v.len() == k.len();
    if !shapes_ok {
        return Err(DecodeError::InvalidArgument {
            name: "attention",
            reason: format!(
                "{n} tokens of {n_heads} query / {n_kv_heads} KV heads of {d}: q {}, k {}, v {}, out {} values",
                q.len(),
                k.len(),
                v.len(),
                out.len()
            ),
        });
    }
    // One task per query block, all KV heads: it owns the block's output
    // rows, so it writes them in place.
    let group = n_heads / n_kv_heads;
    let kt = keys_transposed(k, n, n_kv_heads, d);
    let results: Vec<Vec<HeadStats>> = out
        .par_chunks_mut(QUERY_BLOCK * n_heads * d)
        .enumerate()
        .map(|(b, out_rows)| {
            (0..n_kv_heads)
                .map(|g| {
                    let ktg = &kt[g * d * n..(g + 1) * d * n];
                    let (o, st) = block(q, ktg, v, &dims, stats, g, b);
                    // `o` rows are (position, head of the group), as the output's.
                    for (t, row) in o.chunks_exact(group * d).enumerate() {
                        let at = t * n_heads * d + g * group * d;
                        out_rows[at..at + group * d].copy_from_slice(row);
                    }
                    st
                })
                .collect()
        })
        .collect();
    let mut per_head = vec![HeadStats::default(); n_kv_heads];
    for block_stats in results {
        for (acc, st) in per_head.iter_mut().zip(block_stats) {
            acc.add(st);
        }
    }
    Ok(per_head)
}

/// Each KV head's keys transposed, `n_kv_heads` matrices of `d x n` (row
/// `j` holds element `j` of every key), so that a score tile reads 16 keys'
/// element `j` as one vector. Formed once per call instead of once per
/// (query block, key tile), which is what packing them for a general SGEMM
/// cost.
fn keys_transposed(k: &[f32], n: usize, n_kv_heads: usize, d: usize) -> Vec<f32> {
    let mut kt = vec![0f32; k.len()];
    kt.par_chunks_mut(d * n.max(1))
        .enumerate()
        .for_each(|(g, ktg)| {
            for (t, row) in k.chunks_exact(n_kv_heads * d).enumerate() {
                for (j, &x) in row[g * d..(g + 1) * d].iter().enumerate() {
                    ktg[j * n + t] = x;
                }
            }
        });
    kt
}

/// One (KV head, query block) task: the block's output rows (`rows x
/// group*d`, rows by position) and its statistics.
fn block(
    q: &[f32],
    ktg: &[f32],
    v: &[f32],
    dims: &Dims,
    stats: StatsRequest,
    g: usize,
    b: usize,
) -> (Vec<f32>, HeadStats) {
    let Dims {
        n,
        n_heads,
        n_kv_heads,
        head_dim: d,
        scale,
    } = *dims;
    let group = n_heads / n_kv_heads;
    let r0 = b * QUERY_BLOCK;
    let r1 = (r0 + QUERY_BLOCK).min(n);
    let rows = (r1 - r0) * group;
    // Q rows ordered (position, head of the group): row i is position
    // r0 + i / group.
    let mut qb = Vec::with_capacity(rows * d);
    for t in r0..r1 {
        let at = t * n_heads * d + g * group * d;
        qb.extend_from_slice(&q[at..at + group * d]);
    }
    let kv_stride = n_kv_heads * d;
    let vg = &v[g * d..];
    let mut o = vec![0f32; rows * d];
    let mut m = vec![f32::NEG_INFINITY; rows];
    let mut l = vec![0f32; rows];
    let mut s = vec![0f32; rows * KEY_TILE];
    for c0 in (0..r1).step_by(KEY_TILE) {
        let c1 = (c0 + KEY_TILE).min(r1);
        let w = c1 - c0;
        let st = &mut s[..rows * w];
        // S = scale Q K^T: K^T of the tile is columns c0..c1 of `ktg`.
        gemm(
            (rows, d, w),
            &qb,
            d,
            &ktg[c0..],
            n,
            st,
            w,
            Store::Scale(scale),
        );
        for (i, srow) in st.chunks_exact_mut(w).enumerate() {
            let pos = r0 + i / group;
            let valid = (pos + 1).saturating_sub(c0).min(w);
            let (live, masked) = srow.split_at_mut(valid);
            masked.fill(0.0);
            if live.is_empty() {
                continue;
            }
            let tile_max = live.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
            if tile_max > m[i] {
                let alpha = if m[i] == f32::NEG_INFINITY {
                    0.0
                } else {
                    (m[i] - tile_max).exp()
                };
                l[i] *= alpha;
                o[i * d..(i + 1) * d].iter_mut().for_each(|x| *x *= alpha);
                m[i] = tile_max;
            }
            l[i] += exp_shifted(live, m[i]);
        }
        // O += P V: the tile of V is w x d with rows of stride kv_stride.
        gemm(
            (rows, w, d),
            st,
            w,
            &vg[c0 * kv_stride..],
            kv_stride,
            &mut o,
            d,
            Store::Add,
        );
    }
    for (orow, &li) in o.chunks_exact_mut(d).zip(&l) {
        let inv = 1.0 / li;
        orow.iter_mut().for_each(|x| *x *= inv);
    }
    let mut hs = HeadStats::default();
    if stats.moments {
        hs.moment = moment(&qb, d);
        hs.queries = rows;
    }
    if let Some(window) = stats.mass_window {
        hs.mass = mass(&qb, ktg, dims, r0, r1, window, &m, &l);
    }
    (o, hs)
}

/// `sum_i q_i q_i^T` over the rows of `qb` (`rows x d`), in f64.
fn moment(qb: &[f32], d: usize) -> Vec<f64> {
    let mut acc = vec![0f64; d * d];
    for row in qb.chunks_exact(d) {
        for (i, &qi) in row.iter().enumerate() {
            let qi = f64::from(qi);
            for (a, &qj) in acc[i * d..(i + 1) * d].iter_mut().zip(row) {
                *a += qi * f64::from(qj);
            }
        }
    }
    acc
}

/// Per key `0..r1`: the attention the block's queries give it when they
/// are at least `window` positions later (query at `p` counts keys `t < p
/// + 1 - window`), with the final row maxima `m` and sums `l`.
#[allow(clippy::too_many_arguments)]
fn mass(
    qb: &[f32],
    ktg: &[f32],
    dims: &Dims,
    r0: usize,
    r1: usize,
    window: usize,
    m: &[f32],
    l: &[f32],
) -> Vec<(f64, u32)> {
    let d = dims.head_dim;
    let group = dims.n_heads / dims.n_kv_heads;
    let rows = m.len();
    let mut out = vec![(0f64, 0u32); r1];
    let mut s = vec![0f32; rows * KEY_TILE];
    for c0 in (0..r1).step_by(KEY_TILE) {
        let c1 = (c0 + KEY_TILE).min(r1);
        let w = c1 - c0;
        let st = &mut s[..rows * w];
        gemm(
            (rows, d, w),
            qb,
            d,
            &ktg[c0..],
            dims.n,
            st,
            w,
            Store::Scale(dims.scale),
        );
        for (i, srow) in st.chunks_exact(w).enumerate() {
            let seen = (r0 + i / group + 1).saturating_sub(window);
            let upto = seen.saturating_sub(c0).min(w);
            for (t, &x) in srow[..upto].iter().enumerate() {
                let e = &mut out[c0 + t];
                e.0 += f64::from((x - m[i]).exp() / l[i]);
                e.1 += 1;
            }
        }
    }
    out
}

/// `x_i <- exp(x_i - max)` over the slice, returning the sum: the AVX-512
/// build of the same code where the CPU has it.
fn exp_shifted(x: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { exp_shifted_avx512(x, max) };
        }
    }
    exp_shifted_portable(x, max)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted_avx512(x: &mut [f32], max: f32) -> f32 {
    exp_shifted_portable(x, max)
}

/// Sixteen partial sums, so that the loop vectorizes without reassociating
/// one scalar sum.
#[inline(always)]
fn exp_shifted_portable(x: &mut [f32], max: f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        for j in 0..16 {
            c[j] = exp_approx(c[j] - max);
            acc[j] += c[j];
        }
    }
    let mut tail = 0.0;
    for e in chunks.into_remainder() {
        *e = exp_approx(*e - max);
        tail += *e;
    }
    acc.iter().sum::<f32>() + tail
}

/// `e^x` for `x <= 0` (Cephes `expf`: `x = n ln 2 + r`, a degree-6
/// polynomial in `r`, `2^n` by exponent bits), relative error below 1e-6
/// (checked against f64 `exp` in the tests); 0 below -87.3, where `e^x`
/// leaves the normal range.
///
/// `n = round(x log2 e)` comes from adding and subtracting `1.5 * 2^23`
/// (round to nearest even), and its integer value from the sum's low
/// mantissa bits, so that every step is a plain vector instruction: a
/// saturating `as i32` cast would be done lane by lane.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// `1.5 * 2^23`: adding it to `|y| < 2^22` rounds `y` to an integer
    /// held in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let under = x < -87.3;
    let x = x.max(-87.3);
    let t = x * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    // n is in -126..=0 here, so the biased exponent n + 127 is in 1..=127.
    let biased = t
        .to_bits()
        .wrapping_sub(SHIFTER.to_bits())
        .wrapping_add(127);
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    let scaled = y * f32::from_bits(biased << 23);
    if under {
        0.0
    } else {
        scaled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Causal attention and statistics in f64, one query at a time.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dims: &Dims,
        window: usize,
    ) -> (Vec<f64>, Vec<HeadStats>) {
        let Dims {
            n,
            n_heads,
            n_kv_heads,
            head_dim: d,
            scale,
        } = *dims;
        let group = n_heads / n_kv_heads;
        let mut out = vec![0f64; n * n_heads * d];
        let mut stats = vec![
            HeadStats {
                moment: vec![0.0; d * d],
                queries: 0,
                mass: vec![(0.0, 0); n],
            };
            n_kv_heads
        ];
        for t in 0..n {
            for h in 0..n_heads {
                let g = h / group;
                let qv = &q[(t * n_heads + h) * d..][..d];
                let key = |s: usize| &k[(s * n_kv_heads + g) * d..][..d];
                let sc: Vec<f64> = (0..=t)
                    .map(|s| {
                        f64::from(scale)
                            * qv.iter()
                                .zip(key(s))
                                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                                .sum::<f64>()
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
                for (s, x) in sc.iter().enumerate() {
                    let p = (x - mx).exp() / z;
                    for j in 0..d {
                        out[(t * n_heads + h) * d + j] +=
                            p * f64::from(v[(s * n_kv_heads + g) * d + j]);
                    }
                    if s + window < t + 1 {
                        stats[g].mass[s].0 += p;
                        stats[g].mass[s].1 += 1;
                    }
                }
                for i in 0..d {
                    for j in 0..d {
                        stats[g].moment[i * d + j] += f64::from(qv[i]) * f64::from(qv[j]);
                    }
                }
                stats[g].queries += 1;
            }
        }
        (out, stats)
    }

    fn check(seed: u64, n: usize, n_kv_heads: usize, group: usize, d: usize, window: usize) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n_heads = n_kv_heads * group;
        let mut gen = |len: usize, amp: f32| -> Vec<f32> {
            (0..len).map(|_| rng.gen_range(-amp..amp)).collect()
        };
        let (q, k, v) = (
            gen(n * n_heads * d, 3.0),
            gen(n * n_kv_heads * d, 3.0),
            gen(n * n_kv_heads * d, 1.0),
        );
        let dims = Dims {
            n,
            n_heads,
            n_kv_heads,
            head_dim: d,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let mut out = vec![0f32; q.len()];
        let req = StatsRequest {
            moments: true,
            mass_window: Some(window),
        };
        let got = causal_attention(&q, &k, &v, dims, req, &mut out).unwrap();
        let (want, want_stats) = reference(&q, &k, &v, &dims, window);
        for (i, (&a, &b)) in out.iter().zip(&want).enumerate() {
            assert!((f64::from(a) - b).abs() < 1e-4, "out {i}: {a} vs {b}");
        }
        for (g, (a, b)) in got.iter().zip(&want_stats).enumerate() {
            assert_eq!(a.queries, b.queries);
            for (x, y) in a.moment.iter().zip(&b.moment) {
                assert!(
                    (x - y).abs() <= 1e-9 * (1.0 + y.abs()),
                    "moment of head {g}"
                );
            }
            assert_eq!(a.mass.len(), n);
            for (t, (x, y)) in a.mass.iter().zip(&b.mass).enumerate() {
                assert_eq!(x.1, y.1, "head {g} key {t}: count");
                assert!(
                    (x.0 - y.0).abs() < 1e-4,
                    "head {g} key {t}: {} vs {}",
                    x.0,
                    y.0
                );
            }
        }
        // Without statistics: the same output, no statistics.
        let mut again = vec![0f32; q.len()];
        let plain =
            causal_attention(&q, &k, &v, dims, StatsRequest::default(), &mut again).unwrap();
        assert_eq!(out, again);
        assert!(plain
            .iter()
            .all(|s| s.moment.is_empty() && s.mass.is_empty()));
    }

    #[test]
    fn equals_f64_attention_across_blocks_and_tiles() {
        // Several query blocks and key tiles, ragged ends.
        check(1, 2 * KEY_TILE + 37, 2, 3, 16, 5);
        check(2, 1, 1, 1, 8, 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, rng_seed: proptest::test_runner::RngSeed::Fixed(24), ..ProptestConfig::default() })]
        #[test]
        fn equals_f64_attention(seed in 0u64..1000, n in 1usize..300, kv in 1usize..3, group in 1usize..4, d in 1usize..20, window in 0usize..40) {
            check(seed, n, kv, group, d, window);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]
        /// The polynomial `exp` within 1e-6 relative of f64 `exp` over the
        /// whole range softmax feeds it (`x - max <= 0`), and exactly 0 where
        /// `e^x` is below the normal range.
        #[test]
        fn exp_matches_f64(x in -87.3f32..=0.0, far in -1e30f32..-87.31) {
            let want = f64::from(x).exp();
            let got = f64::from(exp_approx(x));
            prop_assert!((got - want).abs() <= 1e-6 * want, "{x}: {got} vs {want}");
            prop_assert_eq!(exp_approx(far), 0.0);
        }
    }

    #[test]
    fn exp_is_accurate_and_vector_paths_agree() {
        let xs: Vec<f32> = (0..4000).map(|i| -(i as f32) * 0.025).collect();
        for &x in &xs {
            let want = f64::from(x).exp();
            let got = f64::from(exp_approx(x));
            assert!(
                (got - want).abs() <= 1e-6 * want + 2e-38,
                "{x}: {got} vs {want}"
            );
        }
        assert_eq!(exp_approx(-100.0), 0.0);
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        let (mut a, mut b) = (xs.clone(), xs.clone());
        let sa = exp_shifted(&mut a, 0.5);
        let sb = exp_shifted_portable(&mut b, 0.5);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        // 3 query heads cannot share 2 KV heads.
        let dims = Dims {
            n: 1,
            n_heads: 3,
            n_kv_heads: 2,
            head_dim: 4,
            scale: 1.0,
        };
        let r = causal_attention(
            &[0.0; 12],
            &[0.0; 8],
            &[0.0; 8],
            dims,
            StatsRequest::default(),
            &mut [0.0; 12],
        );
        assert!(r.is_err());
    }
}
