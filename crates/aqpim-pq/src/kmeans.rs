//! Lloyd's k-means with fast assignment, sampling, k-means++ and empty-cluster repair.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::borrow::Cow;

use crate::error::{PqError, Result};
use crate::nearest::CentroidTable;

/// How the initial centroids are chosen.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Init {
    /// `k` distinct training points drawn uniformly (faiss's default).
    RandomSample,
    /// k-means++: each next centroid drawn with probability proportional to
    /// (weight times) its squared distance to the nearest centroid chosen so far.
    #[default]
    KMeansPlusPlus,
    /// Given centroids, `k * d` values, row-major.
    Precomputed(Vec<f32>),
}

/// Options of a k-means run.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansOptions {
    /// Lloyd iterations (assignment + update), default 25.
    pub iterations: usize,
    /// Seed of every random choice (sampling, initialization).
    pub seed: u64,
    /// How centroids start.
    pub init: Init,
    /// At most `k * max_points_per_centroid` points are used (a seeded uniform
    /// sample of the input), default 256 as in faiss.
    pub max_points_per_centroid: usize,
}

impl Default for KMeansOptions {
    fn default() -> Self {
        KMeansOptions {
            iterations: 25,
            seed: 1234,
            init: Init::default(),
            max_points_per_centroid: 256,
        }
    }
}

/// The outcome of a k-means run.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansResult {
    /// `k * d` values, row-major.
    pub centroids: Vec<f32>,
    /// Objective (weighted sum of squared distances to the assigned centroid)
    /// at the assignment step of each iteration.
    pub objective_per_iteration: Vec<f64>,
    /// Objective of the final centroids on the training points used.
    pub final_objective: f64,
    /// Number of points used after sampling.
    pub points_used: usize,
    /// How many empty clusters were repaired over the run.
    pub empty_cluster_repairs: usize,
}

/// Trains `k` centroids on `data` (`n * d` values, row-major).
///
/// `weights`, if given, has one non-negative finite weight per point and makes
/// the objective `sum_i w_i |x_i - c(i)|^2`. Deterministic for a given seed.
pub fn kmeans(
    data: &[f32],
    d: usize,
    k: usize,
    weights: Option<&[f32]>,
    opts: &KMeansOptions,
) -> Result<KMeansResult> {
    run(data, d, k, weights, opts, true)
}

/// [`kmeans`]'s centroids alone: the same centroids, bit for bit, without
/// the assignment pass that only the final objective needs (a
/// twenty-sixth of a default run).
pub(crate) fn kmeans_centroids(
    data: &[f32],
    d: usize,
    k: usize,
    weights: Option<&[f32]>,
    opts: &KMeansOptions,
) -> Result<Vec<f32>> {
    Ok(run(data, d, k, weights, opts, false)?.centroids)
}

/// [`kmeans`], with the final objective (NaN without `final_pass`).
fn run(
    data: &[f32],
    d: usize,
    k: usize,
    weights: Option<&[f32]>,
    opts: &KMeansOptions,
    final_pass: bool,
) -> Result<KMeansResult> {
    check_inputs(data, d, k, weights)?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);

    let (points, wts) = sample(
        data,
        d,
        weights,
        k.saturating_mul(opts.max_points_per_centroid.max(1)),
        &mut rng,
    );
    let n = points.len() / d;
    let wts = wts.as_deref();
    if let Some(w) = wts {
        if w.iter().all(|&v| v == 0.0) {
            return Err(PqError::OutOfRange {
                name: "total sample weight",
                value: 0,
                allowed: "> 0",
            });
        }
    }

    let mut centroids = initial_centroids(&opts.init, &points, d, k, wts, &mut rng)?;

    let mut idx = vec![0u32; n];
    let mut dist = vec![0f32; n];
    let mut sums = vec![0f64; k * d];
    let mut mass = vec![0f64; k];
    let mut objective_per_iteration = Vec::with_capacity(opts.iterations);
    let mut empty_cluster_repairs = 0;
    for _ in 0..opts.iterations {
        CentroidTable::new(&centroids, d, k).assign(&points, &mut idx, &mut dist);
        objective_per_iteration.push(objective(&dist, wts));

        accumulate(&points, d, wts, &idx, &mut sums, &mut mass);
        empty_cluster_repairs +=
            repair_empty(&points, d, wts, &idx, &mut dist, &mut sums, &mut mass);
        for j in 0..k {
            if mass[j] > 0.0 {
                for t in 0..d {
                    centroids[j * d + t] = (sums[j * d + t] / mass[j]) as f32;
                }
            }
        }
    }
    let final_objective = if final_pass {
        CentroidTable::new(&centroids, d, k).assign(&points, &mut idx, &mut dist);
        objective(&dist, wts)
    } else {
        f64::NAN
    };
    Ok(KMeansResult {
        centroids,
        objective_per_iteration,
        final_objective,
        points_used: n,
        empty_cluster_repairs,
    })
}

/// Checks `kmeans`'s inputs: positive `d` and `k`, whole rows, at least
/// `k` points, finite values and non-negative finite weights, one a point.
/// Returns the number of points.
fn check_inputs(data: &[f32], d: usize, k: usize, weights: Option<&[f32]>) -> Result<usize> {
    if d == 0 {
        return Err(PqError::OutOfRange {
            name: "d",
            value: 0,
            allowed: "d >= 1",
        });
    }
    if k == 0 {
        return Err(PqError::OutOfRange {
            name: "k",
            value: 0,
            allowed: "k >= 1",
        });
    }
    if !data.len().is_multiple_of(d) {
        return Err(PqError::shape(
            "kmeans",
            format!("a multiple of d = {d} values"),
            format!("{} values", data.len()),
        ));
    }
    let n = data.len() / d;
    if n < k {
        return Err(PqError::TooFewPoints { needed: k, got: n });
    }
    crate::check_finite(data, d, "training data")?;
    if let Some(w) = weights {
        if w.len() != n {
            return Err(PqError::shape(
                "kmeans weights",
                format!("{n} weights"),
                format!("{}", w.len()),
            ));
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite() || *v < 0.0) {
            return Err(PqError::NonFinite {
                what: "sample weights (must be finite and >= 0)",
                row: i,
                col: 0,
                value: w[i],
            });
        }
    }
    Ok(n)
}

/// Training points and their weights, borrowed or drawn.
type Sample<'a> = (Cow<'a, [f32]>, Option<Cow<'a, [f32]>>);

/// At most `cap` points of `data` (and their weights), drawn without
/// replacement in their original order (faiss's `max_points_per_centroid`);
/// all of them, borrowed, when there are no more.
fn sample<'a>(
    data: &'a [f32],
    d: usize,
    weights: Option<&'a [f32]>,
    cap: usize,
    rng: &mut ChaCha8Rng,
) -> Sample<'a> {
    let n = data.len() / d;
    if n > cap {
        let mut perm: Vec<usize> = (0..n).collect();
        for i in 0..cap {
            let j = rng.gen_range(i..n);
            perm.swap(i, j);
        }
        let chosen = &mut perm[..cap];
        chosen.sort_unstable();
        let mut p = Vec::with_capacity(cap * d);
        for &i in chosen.iter() {
            p.extend_from_slice(&data[i * d..(i + 1) * d]);
        }
        let w = weights.map(|w| chosen.iter().map(|&i| w[i]).collect::<Vec<_>>().into());
        (p.into(), w)
    } else {
        (data.into(), weights.map(Into::into))
    }
}

/// The starting centroids (`k x d`): given, `k` distinct random points, or
/// k-means++ seeding.
fn initial_centroids(
    init: &Init,
    points: &[f32],
    d: usize,
    k: usize,
    wts: Option<&[f32]>,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<f32>> {
    let n = points.len() / d;
    Ok(match init {
        Init::Precomputed(c) => {
            if c.len() != k * d {
                return Err(PqError::shape(
                    "kmeans initial centroids",
                    format!("{} values (k * d)", k * d),
                    c.len(),
                ));
            }
            crate::check_finite(c, d, "initial centroids")?;
            c.clone()
        }
        Init::RandomSample => {
            let mut perm: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = rng.gen_range(i..n);
                perm.swap(i, j);
            }
            perm[..k]
                .iter()
                .flat_map(|&i| points[i * d..(i + 1) * d].iter().copied())
                .collect()
        }
        Init::KMeansPlusPlus => kmeans_plus_plus(points, d, k, wts, rng),
    })
}

/// The Lloyd update's sums: `mass[j] = sum_{i: idx_i = j} w_i` and
/// `sums[j] = sum_{i: idx_i = j} w_i x_i` (f64, points in order, so the
/// centroids do not depend on how the work is split). Without weights
/// `w_i = 1` and the products are skipped (`1 * x` is `x`, bit for bit); a
/// copy per small `d` lets the compiler keep the sums' row in registers.
fn accumulate(
    points: &[f32],
    d: usize,
    wts: Option<&[f32]>,
    idx: &[u32],
    sums: &mut [f64],
    mass: &mut [f64],
) {
    sums.fill(0.0);
    mass.fill(0.0);
    if let Some(w) = wts {
        for ((x, &a), &wi) in points.chunks_exact(d).zip(idx).zip(w) {
            let (a, wi) = (a as usize, f64::from(wi));
            mass[a] += wi;
            for (s, &v) in sums[a * d..(a + 1) * d].iter_mut().zip(x) {
                *s += wi * f64::from(v);
            }
        }
        return;
    }
    fn fixed<const D: usize>(points: &[f32], idx: &[u32], sums: &mut [f64], mass: &mut [f64]) {
        let (rows, _) = points.as_chunks::<D>();
        let (cells, _) = sums.as_chunks_mut::<D>();
        for (x, &a) in rows.iter().zip(idx) {
            let a = a as usize;
            mass[a] += 1.0;
            let s = &mut cells[a];
            for t in 0..D {
                s[t] += f64::from(x[t]);
            }
        }
    }
    match d {
        1 => fixed::<1>(points, idx, sums, mass),
        2 => fixed::<2>(points, idx, sums, mass),
        3 => fixed::<3>(points, idx, sums, mass),
        4 => fixed::<4>(points, idx, sums, mass),
        8 => fixed::<8>(points, idx, sums, mass),
        _ => {
            for (x, &a) in points.chunks_exact(d).zip(idx) {
                let a = a as usize;
                mass[a] += 1.0;
                for (s, &v) in sums[a * d..(a + 1) * d].iter_mut().zip(x) {
                    *s += f64::from(v);
                }
            }
        }
    }
}

/// The objective `sum_i w_i dist_i`, in f64 over 8 interleaved partial
/// sums (a single running sum is bound by the latency of each addition).
fn objective(dist: &[f32], w: Option<&[f32]>) -> f64 {
    const PARTS: usize = 8;
    let mut acc = [0f64; PARTS];
    match w {
        None => {
            let (c, rest) = dist.as_chunks::<PARTS>();
            for c in c {
                for (a, &v) in acc.iter_mut().zip(c) {
                    *a += f64::from(v);
                }
            }
            acc[0] += rest.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        Some(w) => {
            let (c, rest) = dist.as_chunks::<PARTS>();
            let (wc, wrest) = w.as_chunks::<PARTS>();
            for (c, wc) in c.iter().zip(wc) {
                for ((a, &v), &wi) in acc.iter_mut().zip(c).zip(wc) {
                    *a += f64::from(v) * f64::from(wi);
                }
            }
            acc[0] += rest
                .iter()
                .zip(wrest)
                .map(|(&v, &wi)| f64::from(v) * f64::from(wi))
                .sum::<f64>();
        }
    }
    acc.iter().sum()
}

/// Gives every empty cluster (zero mass) a point: the point farthest from its
/// centroid within the currently heaviest cluster, which that cluster loses.
/// Never leaves a dead centroid while some cluster holds two or more points.
fn repair_empty(
    points: &[f32],
    d: usize,
    wts: Option<&[f32]>,
    idx: &[u32],
    dist: &mut [f32],
    sums: &mut [f64],
    mass: &mut [f64],
) -> usize {
    let k = mass.len();
    let mut repaired = 0;
    for e in 0..k {
        if mass[e] > 0.0 {
            continue;
        }
        // The heaviest cluster (smallest index among equals).
        let (big, _) =
            mass.iter().enumerate().fold(
                (0, f64::MIN),
                |acc, (j, &m)| if m > acc.1 { (j, m) } else { acc },
            );
        let far = (0..idx.len())
            .filter(|&i| idx[i] as usize == big && dist[i] >= 0.0 && wts.is_none_or(|w| w[i] > 0.0))
            .fold(None, |acc: Option<(usize, f32)>, i| match acc {
                Some((_, best)) if best >= dist[i] => acc,
                _ => Some((i, dist[i])),
            });
        let Some((i, _)) = far else { continue };
        if mass[big] <= wts.map_or(1.0, |w| f64::from(w[i])) {
            // The heaviest cluster holds a single point: nothing to split.
            continue;
        }
        let w = wts.map_or(1.0, |w| f64::from(w[i]));
        let x = &points[i * d..(i + 1) * d];
        for t in 0..d {
            sums[big * d + t] -= w * f64::from(x[t]);
            sums[e * d + t] = w * f64::from(x[t]);
        }
        mass[big] -= w;
        mass[e] = w;
        dist[i] = -1.0; // moved: never chosen again this iteration
        repaired += 1;
    }
    repaired
}

/// k-means++ seeding. Points are copied dimension-major once so that updating
/// every point's distance to the newest centroid is a vectorizable pass per
/// dimension; each step then costs a few passes over the points.
fn kmeans_plus_plus(
    points: &[f32],
    d: usize,
    k: usize,
    w: Option<&[f32]>,
    rng: &mut ChaCha8Rng,
) -> Vec<f32> {
    let n = points.len() / d;
    let mut soa = vec![0f32; n * d];
    for (i, x) in points.chunks_exact(d).enumerate() {
        for (t, &v) in x.iter().enumerate() {
            soa[t * n + i] = v;
        }
    }
    let first = match w {
        None => rng.gen_range(0..n),
        Some(w) => sample_weighted(w.iter().map(|&v| f64::from(v)), rng).unwrap_or(0),
    };
    let mut centroids = Vec::with_capacity(k * d);
    let mut best = vec![f32::INFINITY; n];
    let mut block_sums = vec![0f64; n.div_ceil(SAMPLE_BLOCK)];
    let mut next = first;
    loop {
        let c = &points[next * d..(next + 1) * d];
        centroids.extend_from_slice(c);
        if centroids.len() == k * d {
            return centroids;
        }
        // Sampling proportional to (weighted) best distance: block sums first,
        // then a scan inside the chosen block only.
        pp_step(&soa, n, c, &mut best, &mut block_sums);
        let score = |i: usize| f64::from(best[i]) * w.map_or(1.0, |w| f64::from(w[i]));
        if w.is_some() {
            for (bi, s) in block_sums.iter_mut().enumerate() {
                let range = bi * SAMPLE_BLOCK..((bi + 1) * SAMPLE_BLOCK).min(n);
                *s = range.map(score).sum();
            }
        }
        next = match sample_weighted(block_sums.iter().copied(), rng) {
            Some(bi) => {
                let start = bi * SAMPLE_BLOCK;
                let end = (start + SAMPLE_BLOCK).min(n);
                start + sample_weighted((start..end).map(score), rng).unwrap_or(0)
            }
            // All points coincide with chosen centroids: fall back to a uniform pick.
            None => rng.gen_range(0..n),
        };
    }
}

/// One k-means++ step over blocks of [`SAMPLE_BLOCK`] points:
/// `best[i] = min(best[i], |x_i - c|^2)` (the squared distance summed over
/// dimensions in order, from `soa`, `d x n` dimension-major) and
/// `block_sums[b]` = the sum of block `b` of `best`, in 16 f32 lanes (f32
/// is ample for one sampling block) then f64. The AVX-512 build of the same
/// code where the CPU has it (element-wise operations in the same order,
/// so the same bits).
fn pp_step(soa: &[f32], n: usize, c: &[f32], best: &mut [f32], block_sums: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available (checked just above).
        unsafe { pp_step_avx512(soa, n, c, best, block_sums) };
        return;
    }
    pp_step_body(soa, n, c, best, block_sums);
}

/// [`pp_step`] compiled for AVX-512.
///
/// A safe `#[target_feature]` function: code compiled without AVX-512F
/// calls it only after checking for it at run time (its `unsafe` call site).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn pp_step_avx512(soa: &[f32], n: usize, c: &[f32], best: &mut [f32], block_sums: &mut [f64]) {
    pp_step_body(soa, n, c, best, block_sums);
}

#[inline(always)]
fn pp_step_body(soa: &[f32], n: usize, c: &[f32], best: &mut [f32], block_sums: &mut [f64]) {
    for (bi, (bb, s)) in best
        .chunks_mut(SAMPLE_BLOCK)
        .zip(block_sums.iter_mut())
        .enumerate()
    {
        let i0 = bi * SAMPLE_BLOCK;
        // Whole 16-point chunks in registers, each point's distance summed
        // into lane `i % 16`; the ragged end of the last block one by one.
        let mut acc = [0f32; 16];
        let (chunks, tail) = bb.as_chunks_mut::<16>();
        for (j, b) in chunks.iter_mut().enumerate() {
            let mut v = [0f32; 16];
            for (t, &ct) in c.iter().enumerate() {
                let at = t * n + i0 + 16 * j;
                let xs = &soa[at..at + 16];
                for (vl, &x) in v.iter_mut().zip(xs) {
                    let diff = x - ct;
                    *vl += diff * diff;
                }
            }
            for l in 0..16 {
                b[l] = if v[l] < b[l] { v[l] } else { b[l] };
                acc[l] += b[l];
            }
        }
        let done = chunks.len() * 16;
        let mut rest = 0f64;
        for (r, b) in tail.iter_mut().enumerate() {
            let mut v = 0f32;
            for (t, &ct) in c.iter().enumerate() {
                let diff = soa[t * n + i0 + done + r] - ct;
                v += diff * diff;
            }
            *b = if v < *b { v } else { *b };
            rest += f64::from(*b);
        }
        *s = acc.iter().map(|&v| f64::from(v)).sum::<f64>() + rest;
    }
}

/// Points per block in k-means++ sampling.
const SAMPLE_BLOCK: usize = 256;

/// Index drawn with probability proportional to its score; `None` if all are zero.
fn sample_weighted(
    scores: impl Iterator<Item = f64> + Clone,
    rng: &mut ChaCha8Rng,
) -> Option<usize> {
    let total: f64 = scores.clone().sum();
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let mut r = rng.gen_range(0.0..total);
    let mut last = None;
    for (i, s) in scores.enumerate() {
        if s > 0.0 {
            last = Some(i);
            if r < s {
                return Some(i);
            }
            r -= s;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(n_per: usize, seed: u64) -> (Vec<f32>, Vec<[f32; 2]>) {
        let centers = vec![[0.0f32, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut v = Vec::new();
        for c in &centers {
            for _ in 0..n_per {
                v.push(c[0] + rng.gen_range(-0.5..0.5));
                v.push(c[1] + rng.gen_range(-0.5..0.5));
            }
        }
        (v, centers)
    }

    #[test]
    fn finds_separated_blobs() {
        let (data, centers) = blobs(100, 3);
        let r = kmeans(&data, 2, 4, None, &KMeansOptions::default()).unwrap();
        for c in &centers {
            let near = r
                .centroids
                .chunks_exact(2)
                .any(|x| (x[0] - c[0]).abs() < 0.3 && (x[1] - c[1]).abs() < 0.3);
            assert!(near, "no centroid near {c:?}: {:?}", r.centroids);
        }
        // Lloyd never increases the objective.
        for w in r.objective_per_iteration.windows(2) {
            assert!(
                w[1] <= w[0] * (1.0 + 1e-6),
                "{:?}",
                r.objective_per_iteration
            );
        }
    }

    #[test]
    fn repairs_empty_clusters() {
        // All initial centroids on one blob's far side: three start empty.
        let (data, _) = blobs(50, 5);
        let init = Init::Precomputed(vec![5.0, 5.0, 100.0, 100.0, 200.0, 200.0, 300.0, 300.0]);
        let opts = KMeansOptions {
            init,
            ..Default::default()
        };
        let r = kmeans(&data, 2, 4, None, &opts).unwrap();
        assert!(r.empty_cluster_repairs >= 3);
        let (idx, _) = crate::nearest_centroids(&data, &r.centroids, 2);
        for j in 0..4u32 {
            assert!(idx.contains(&j), "centroid {j} is dead: {:?}", r.centroids);
        }
    }

    #[test]
    fn weights_pull_centroids() {
        let data = vec![0.0f32, 1.0, 10.0, 11.0];
        let w = vec![1.0f32, 3.0, 1.0, 1.0];
        let init = Init::Precomputed(vec![0.0, 10.0]);
        let r = kmeans(
            &data,
            1,
            2,
            Some(&w),
            &KMeansOptions {
                init,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            (r.centroids[0] - 0.75).abs() < 1e-6 && (r.centroids[1] - 10.5).abs() < 1e-6,
            "{:?}",
            r.centroids
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            kmeans(&[1.0, 2.0], 1, 3, None, &KMeansOptions::default()),
            Err(PqError::TooFewPoints { needed: 3, got: 2 })
        ));
        let e = kmeans(
            &[1.0, f32::NAN, 2.0, 3.0],
            2,
            1,
            None,
            &KMeansOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(e, PqError::NonFinite { row: 0, col: 1, .. }),
            "{e}"
        );
        assert!(kmeans(&[1.0, 2.0, 3.0], 2, 1, None, &KMeansOptions::default()).is_err());
    }

    #[test]
    fn unweighted_sums_equal_the_weighted_loop_with_unit_weights() {
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        for d in [1usize, 2, 3, 4, 5, 8] {
            let (n, k) = (500, 7);
            let points: Vec<f32> = (0..n * d).map(|_| rng.gen_range(-5.0..5.0)).collect();
            let idx: Vec<u32> = (0..n).map(|_| rng.gen_range(0..k as u32)).collect();
            let ones = vec![1.0f32; n];
            let (mut s1, mut m1) = (vec![1.0; k * d], vec![1.0; k]);
            let (mut s2, mut m2) = (vec![0.0; k * d], vec![0.0; k]);
            accumulate(&points, d, None, &idx, &mut s1, &mut m1);
            accumulate(&points, d, Some(&ones), &idx, &mut s2, &mut m2);
            assert_eq!(s1, s2, "d={d}");
            assert_eq!(m1, m2, "d={d}");
        }
    }

    #[test]
    fn sampling_caps_points() {
        let (data, _) = blobs(100, 9);
        let opts = KMeansOptions {
            max_points_per_centroid: 10,
            ..Default::default()
        };
        let r = kmeans(&data, 2, 4, None, &opts).unwrap();
        assert_eq!(r.points_used, 40);
    }
}
