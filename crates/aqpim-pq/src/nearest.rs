//! Nearest-centroid search, the kernel that dominates k-means and encoding.
//!
//! Distances are computed the fast way, `|x - c|^2 = |x|^2 - 2 x.c + |c|^2`,
//! with the centroids stored dimension-major so that one vector instruction
//! scores 16 centroids against one point. On x86-64 with AVX-512 an explicit
//! SIMD kernel runs; elsewhere a portable kernel with the same lane structure
//! (and so the same tie-breaking: the smallest index among equal distances).

/// Centroids prepared for nearest-neighbour search.
///
/// `ct` holds `dsub * k_padded` values, dimension-major (`ct[t * k_padded + j]`
/// is element `t` of centroid `j`); `norms` holds `|c_j|^2` for `j < k` and
/// `+inf` for the padding lanes, so padding is never the nearest.
///
/// `lane_ct` and `lane_norms` hold the same values grouped by SIMD lane:
/// with `blocks = k_padded / 16`, centroid `j = b * 16 + l` sits at
/// `lane_norms[l * blocks + b]` and `lane_ct[t * k_padded + l * blocks + b]`,
/// so that the centroids one lane of the search visited are adjacent (the
/// AVX-512 search finds the lane of the minimum first, then its block).
#[derive(Debug, Clone)]
pub(crate) struct CentroidTable {
    dsub: usize,
    k: usize,
    k_padded: usize,
    ct: Vec<f32>,
    norms: Vec<f32>,
    lane_ct: Vec<f32>,
    lane_norms: Vec<f32>,
}

const LANES: usize = 16;
/// Points scored together, sharing each loaded block of centroids.
const GROUP: usize = 4;

impl CentroidTable {
    /// Prepares `k` centroids of `dsub` elements (`centroids`: `k * dsub`, row-major).
    pub(crate) fn new(centroids: &[f32], dsub: usize, k: usize) -> Self {
        debug_assert_eq!(centroids.len(), k * dsub);
        let k_padded = k.div_ceil(LANES) * LANES;
        let mut ct = vec![0.0f32; dsub * k_padded];
        let mut norms = vec![f32::INFINITY; k_padded];
        for j in 0..k {
            let c = &centroids[j * dsub..(j + 1) * dsub];
            for (t, &v) in c.iter().enumerate() {
                ct[t * k_padded + j] = v;
            }
            norms[j] = c.iter().map(|v| v * v).sum();
        }
        let blocks = k_padded / LANES;
        let mut lane_ct = vec![0.0f32; dsub * k_padded];
        let mut lane_norms = vec![f32::INFINITY; k_padded];
        for j in 0..k_padded {
            let at = (j % LANES) * blocks + j / LANES;
            lane_norms[at] = norms[j];
            for t in 0..dsub {
                lane_ct[t * k_padded + at] = ct[t * k_padded + j];
            }
        }
        CentroidTable {
            dsub,
            k,
            k_padded,
            ct,
            norms,
            lane_ct,
            lane_norms,
        }
    }

    /// `out[j] = q . c_j` for every real centroid (`q`: `dsub`, `out`: `k`),
    /// summed in element order like `q.iter().zip(c).map(|(x, y)| x * y).sum()`,
    /// so the result is bit-for-bit that of the row-major loop. The
    /// transposed layout lets the centroid loop vectorize.
    pub(crate) fn inner_products(&self, q: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is available (checked above).
            unsafe { self.inner_products_avx512(q, out) };
            return;
        }
        self.inner_products_body(q, out);
    }

    /// [`Self::inner_products`] compiled for AVX-512 (the same operations in
    /// the same order, so the same bits).
    ///
    /// A safe `#[target_feature]` function: code compiled without AVX-512F
    /// calls it only after checking for it at run time (its `unsafe` call site).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn inner_products_avx512(&self, q: &[f32], out: &mut [f32]) {
        self.inner_products_body(q, out);
    }

    #[inline(always)]
    fn inner_products_body(&self, q: &[f32], out: &mut [f32]) {
        debug_assert_eq!(q.len(), self.dsub);
        debug_assert_eq!(out.len(), self.k);
        let kp = self.k_padded;
        let Some((&q0, rest)) = q.split_first() else {
            // An empty sum is -0.0, as `Sum` for f32 gives.
            out.fill(-0.0);
            return;
        };
        for (o, &c) in out.iter_mut().zip(&self.ct[..kp]) {
            *o = q0 * c;
        }
        for (t, &qt) in rest.iter().enumerate() {
            let row = &self.ct[(t + 1) * kp..(t + 2) * kp];
            for (o, &c) in out.iter_mut().zip(row) {
                *o += qt * c;
            }
        }
    }

    /// `out[t] += sum_j w[j] c_j[t]` (`w`: `k` weights, `out`: `dsub`): the
    /// weighted sum of the centroids, in 16 interleaved partial sums per
    /// element so that the loop over centroids vectorizes.
    pub(crate) fn add_weighted_sum(&self, w: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is available (checked above).
            unsafe { self.add_weighted_sum_avx512(w, out) };
            return;
        }
        self.add_weighted_sum_body(w, out);
    }

    /// [`Self::add_weighted_sum`] compiled for AVX-512.
    ///
    /// A safe `#[target_feature]` function: code compiled without AVX-512F
    /// calls it only after checking for it at run time (its `unsafe` call site).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn add_weighted_sum_avx512(&self, w: &[f32], out: &mut [f32]) {
        self.add_weighted_sum_body(w, out);
    }

    #[inline(always)]
    fn add_weighted_sum_body(&self, w: &[f32], out: &mut [f32]) {
        debug_assert_eq!(w.len(), self.k);
        debug_assert_eq!(out.len(), self.dsub);
        let kp = self.k_padded;
        let (wc, wr) = w.as_chunks::<LANES>();
        for (t, o) in out.iter_mut().enumerate() {
            let row = &self.ct[t * kp..(t + 1) * kp];
            let (rc, _) = row.as_chunks::<LANES>();
            let mut acc = [0f32; LANES];
            for (a, b) in wc.iter().zip(rc) {
                for l in 0..LANES {
                    acc[l] += a[l] * b[l];
                }
            }
            let tail = &row[wc.len() * LANES..];
            for (l, (a, b)) in wr.iter().zip(tail).enumerate() {
                acc[l] += a * b;
            }
            *o += acc.iter().sum::<f32>();
        }
    }

    /// Replaces centroid `j` (`c`: `dsub` values), as [`new`](Self::new)
    /// would have prepared it.
    pub(crate) fn set(&mut self, j: usize, c: &[f32]) {
        debug_assert!(j < self.k && c.len() == self.dsub);
        let kp = self.k_padded;
        // The lane-major copy holds centroid `j` at lane `j % LANES` of
        // block `j / LANES`, as `new` lays it out.
        let at = (j % LANES) * (kp / LANES) + j / LANES;
        for (t, &v) in c.iter().enumerate() {
            self.ct[t * kp + j] = v;
            self.lane_ct[t * kp + at] = v;
        }
        self.norms[j] = c.iter().map(|v| v * v).sum();
        self.lane_norms[at] = self.norms[j];
    }

    /// Number of real centroids.
    #[cfg(test)]
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// For each point of `points` (`n * dsub`, row-major) writes the index of
    /// its nearest centroid to `idx[i]` and the squared distance to `dist[i]`.
    pub(crate) fn assign(&self, points: &[f32], idx: &mut [u32], dist: &mut [f32]) {
        let n = idx.len();
        debug_assert_eq!(points.len(), n * self.dsub);
        debug_assert_eq!(dist.len(), n);
        if n == 0 || self.k == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            macro_rules! go {
                ($($d:literal)*) => {
                    match self.dsub {
                        $($d => {
                            // SAFETY: the CPU supports AVX-512F (checked above).
                            unsafe { avx512::assign::<$d>(self, points, idx, dist) };
                            return;
                        })*
                        _ => {}
                    }
                };
            }
            go!(1 2 3 4 5 6 7 8 16);
        }
        portable_assign(self, points, idx, dist);
    }
}

/// Nearest centroid of each point.
///
/// `points`: `n * dsub`, row-major; `centroids`: `k * dsub`, row-major.
/// Returns, for each point, the index of its nearest centroid (smallest index
/// among ties) and the squared L2 distance to it.
pub fn nearest_centroids(points: &[f32], centroids: &[f32], dsub: usize) -> (Vec<u32>, Vec<f32>) {
    assert!(dsub > 0, "dsub must be positive");
    let k = centroids.len() / dsub;
    let n = points.len() / dsub;
    let table = CentroidTable::new(&centroids[..k * dsub], dsub, k);
    let mut idx = vec![0u32; n];
    let mut dist = vec![0f32; n];
    table.assign(&points[..n * dsub], &mut idx, &mut dist);
    (idx, dist)
}

fn portable_assign(tab: &CentroidTable, points: &[f32], idx: &mut [u32], dist: &mut [f32]) {
    let d = tab.dsub;
    let kp = tab.k_padded;
    let mut xs = vec![0f32; d];
    for (i, x) in points.chunks_exact(d).enumerate() {
        for (m2, &v) in xs.iter_mut().zip(x) {
            *m2 = -2.0 * v;
        }
        let mut best = [f32::INFINITY; LANES];
        let mut bidx = [0u32; LANES];
        for c in (0..kp).step_by(LANES) {
            let mut acc = [0f32; LANES];
            acc.copy_from_slice(&tab.norms[c..c + LANES]);
            for (t, &xt) in xs.iter().enumerate() {
                let row = &tab.ct[t * kp + c..t * kp + c + LANES];
                for l in 0..LANES {
                    acc[l] += xt * row[l];
                }
            }
            for l in 0..LANES {
                if acc[l] < best[l] {
                    best[l] = acc[l];
                    bidx[l] = (c + l) as u32;
                }
            }
        }
        let (j, partial) = reduce_lanes(&best, &bidx);
        let xn: f32 = x.iter().map(|v| v * v).sum();
        idx[i] = j;
        dist[i] = (partial + xn).max(0.0);
    }
}

/// Picks the smallest value over lanes, and among equal values the smallest index.
fn reduce_lanes(best: &[f32; LANES], bidx: &[u32; LANES]) -> (u32, f32) {
    let mut v = f32::INFINITY;
    let mut j = u32::MAX;
    for l in 0..LANES {
        if best[l] < v || (best[l] == v && bidx[l] < j) {
            v = best[l];
            j = bidx[l];
        }
    }
    (j, v)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{CentroidTable, GROUP, LANES};
    use std::arch::x86_64::*;

    /// AVX-512 nearest-centroid search for sub-vectors of `D` elements:
    /// `GROUP` points at a time so that each block of 16 centroids is loaded
    /// once per group, and the last `n % GROUP` points one at a time.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn assign<const D: usize>(
        tab: &CentroidTable,
        points: &[f32],
        idx: &mut [u32],
        dist: &mut [f32],
    ) {
        let n = idx.len();
        let full = n / GROUP * GROUP;
        let mut i = 0;
        while i < full {
            // SAFETY: AVX-512F is available (this function's contract).
            unsafe { assign_group::<D, GROUP>(tab, points, i, idx, dist) };
            i += GROUP;
        }
        while i < n {
            // SAFETY: as above.
            unsafe { assign_group::<D, 1>(tab, points, i, idx, dist) };
            i += 1;
        }
    }

    /// Points `i..i + P` against every centroid, in two passes. The first
    /// keeps, per lane, the smallest of `|c_j|^2 - 2 x.c_j` over the blocks
    /// of 16 centroids (one `min` a block instead of a compare and two
    /// blends); the second finds the smallest index `j` whose value equals
    /// the minimum, recomputing the values of the lanes that hold it with
    /// the same fused multiply-adds in the same order (so the same bits).
    /// The result is that of a strict `<` scan: the smallest index among
    /// equal distances.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `i + P <= idx.len()`.
    #[target_feature(enable = "avx512f")]
    unsafe fn assign_group<const D: usize, const P: usize>(
        tab: &CentroidTable,
        points: &[f32],
        i: usize,
        idx: &mut [u32],
        dist: &mut [f32],
    ) {
        let kp = tab.k_padded;
        let mut xs = [[_mm512_setzero_ps(); D]; P];
        for (p, x) in xs.iter_mut().enumerate() {
            for (t, v) in x.iter_mut().enumerate() {
                *v = _mm512_set1_ps(-2.0 * points[(i + p) * D + t]);
            }
        }
        let mut best = [_mm512_set1_ps(f32::INFINITY); P];
        let mut c = 0;
        while c < kp {
            // SAFETY: `c + LANES <= kp`, and `norms` has `kp` values and
            // `ct` has `D * kp` values (CentroidTable::new).
            let norm = unsafe { _mm512_loadu_ps(tab.norms.as_ptr().add(c)) };
            let mut cv = [_mm512_setzero_ps(); D];
            for (t, v) in cv.iter_mut().enumerate() {
                // SAFETY: `t < D` and `c + LANES <= kp`, inside `ct` (above).
                *v = unsafe { _mm512_loadu_ps(tab.ct.as_ptr().add(t * kp + c)) };
            }
            for p in 0..P {
                let mut d = norm;
                for t in 0..D {
                    d = _mm512_fmadd_ps(xs[p][t], cv[t], d);
                }
                // `min(d, best)` returns `best` on equal values, so a lane
                // keeps its first minimum (and never takes a NaN).
                best[p] = _mm512_min_ps(d, best[p]);
            }
            c += LANES;
        }
        for p in 0..P {
            let mn = _mm512_reduce_min_ps(best[p]);
            let j = if mn == f32::INFINITY {
                // No finite distance: the strict scan never moves off 0.
                0
            } else {
                // SAFETY: AVX-512F is available (this function's contract),
                // and `mn` is the value of some centroid (the first pass's
                // minimum, recomputed the same way).
                unsafe { first_index_of::<D>(tab, &xs[p], best[p], mn) }
            };
            let x = &points[(i + p) * D..(i + p + 1) * D];
            let xn: f32 = x.iter().map(|v| v * v).sum();
            idx[i + p] = j;
            dist[i + p] = (mn + xn).max(0.0);
        }
    }

    /// The smallest centroid index `j` with `|c_j|^2 - 2 x.c_j == mn`
    /// (`xs`: `-2 x` broadcast), given the per-lane minima `best` of the
    /// first pass: over the lanes whose minimum is `mn`, in lane order, the
    /// first block where the recomputed value equals `mn`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; some centroid's value equals `mn`.
    #[target_feature(enable = "avx512f")]
    unsafe fn first_index_of<const D: usize>(
        tab: &CentroidTable,
        xs: &[__m512; D],
        best: __m512,
        mn: f32,
    ) -> u32 {
        let kp = tab.k_padded;
        let blocks = kp / LANES;
        let target = _mm512_set1_ps(mn);
        let mut lanes = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(best, target);
        let mut found = u32::MAX;
        while lanes != 0 {
            let l = lanes.trailing_zeros() as usize;
            lanes &= lanes - 1;
            let base = l * blocks;
            let mut b0 = 0;
            while b0 < blocks {
                let take = (blocks - b0).min(LANES);
                let mask: __mmask16 = if take == LANES {
                    !0
                } else {
                    (1u16 << take) - 1
                };
                // SAFETY: `base + b0 + take <= (l + 1) * blocks <= kp`, inside
                // `lane_norms` (`kp` values) and each `lane_ct` row (`kp`
                // values); masked-off lanes are not read.
                let mut d =
                    unsafe { _mm512_maskz_loadu_ps(mask, tab.lane_norms.as_ptr().add(base + b0)) };
                for (t, x) in xs.iter().enumerate() {
                    // SAFETY: as above.
                    let cv = unsafe {
                        _mm512_maskz_loadu_ps(mask, tab.lane_ct.as_ptr().add(t * kp + base + b0))
                    };
                    d = _mm512_fmadd_ps(*x, cv, d);
                }
                let hit = _mm512_mask_cmp_ps_mask::<_CMP_EQ_OQ>(mask, d, target);
                if hit != 0 {
                    let b = b0 + hit.trailing_zeros() as usize;
                    found = found.min((b * LANES + l) as u32);
                    break;
                }
                b0 += LANES;
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn brute(points: &[f32], cents: &[f32], d: usize) -> Vec<(u32, f32)> {
        points
            .chunks_exact(d)
            .map(|x| {
                let mut best = (0u32, f32::INFINITY);
                for (j, c) in cents.chunks_exact(d).enumerate() {
                    let dd: f32 = x.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum();
                    if dd < best.1 {
                        best = (j as u32, dd);
                    }
                }
                best
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_for_many_shapes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for &d in &[1usize, 2, 3, 4, 5, 7, 8, 9, 16] {
            for &k in &[1usize, 3, 16, 17, 64, 256] {
                let n = 37;
                let pts: Vec<f32> = (0..n * d).map(|_| rng.gen_range(-3.0..3.0)).collect();
                let cents: Vec<f32> = (0..k * d).map(|_| rng.gen_range(-3.0..3.0)).collect();
                let table = CentroidTable::new(&cents, d, k);
                assert_eq!(table.k(), k);
                let (idx, dist) = nearest_centroids(&pts, &cents, d);
                for (i, &(bj, bd)) in brute(&pts, &cents, d).iter().enumerate() {
                    let j = idx[i] as usize;
                    let dj: f32 = pts[i * d..(i + 1) * d]
                        .iter()
                        .zip(&cents[j * d..(j + 1) * d])
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum();
                    // The fast formula may pick a different centroid only at a near-tie.
                    assert!(
                        dj <= bd + 1e-4 * (1.0 + bd),
                        "d={d} k={k} i={i}: got {j} ({dj}), brute {bj} ({bd})"
                    );
                    assert!(
                        (dist[i] - dj).abs() <= 1e-3 * (1.0 + dj),
                        "distance {} vs {dj}",
                        dist[i]
                    );
                }
            }
        }
    }

    /// The search's own formula, one centroid at a time with a strict `<`:
    /// `|c_j|^2 + sum_t (-2 x_t) c_jt`, fused where the AVX-512 kernel runs.
    fn same_formula(x: &[f32], cents: &[f32], d: usize) -> (u32, f32) {
        #[cfg(target_arch = "x86_64")]
        let fused = std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let fused = false;
        let mut best = (0u32, f32::INFINITY);
        for (j, c) in cents.chunks_exact(d).enumerate() {
            let mut v: f32 = c.iter().map(|v| v * v).sum();
            for (&xt, &ct) in x.iter().zip(c) {
                v = if fused {
                    (-2.0 * xt).mul_add(ct, v)
                } else {
                    v + -2.0 * xt * ct
                };
            }
            if v < best.1 {
                best = (j as u32, v);
            }
        }
        let xn: f32 = x.iter().map(|v| v * v).sum();
        (best.0, (best.1 + xn).max(0.0))
    }

    #[test]
    fn equals_a_scalar_scan_bit_for_bit_with_ties() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(29);
        for &d in &[1usize, 2, 3, 4, 8, 16] {
            for &k in &[1usize, 2, 16, 17, 40, 256] {
                // Coarse values, so that distances tie often, and
                // duplicated centroids at indices in different lanes and blocks.
                let mut cents: Vec<f32> = (0..k * d)
                    .map(|_| rng.gen_range(-3i32..=3) as f32)
                    .collect();
                for (from, to) in [(0usize, 35usize), (3, 19), (5, 250), (1, 16)] {
                    if to < k {
                        let c = cents[from * d..(from + 1) * d].to_vec();
                        cents[to * d..(to + 1) * d].copy_from_slice(&c);
                    }
                }
                let n = 23;
                let pts: Vec<f32> = (0..n * d)
                    .map(|_| rng.gen_range(-4i32..=4) as f32 * 0.5)
                    .collect();
                let (idx, dist) = nearest_centroids(&pts, &cents, d);
                for (i, x) in pts.chunks_exact(d).enumerate() {
                    let (j, dd) = same_formula(x, &cents, d);
                    assert_eq!(idx[i], j, "d={d} k={k} point {i}");
                    assert_eq!(dist[i].to_bits(), dd.to_bits(), "d={d} k={k} point {i}");
                }
            }
        }
    }

    #[test]
    fn ties_pick_the_smallest_index() {
        let cents = vec![1.0f32, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
        let (idx, _) = nearest_centroids(&[0.0, 0.0, 1.0, 1.0], &cents, 2);
        assert_eq!(idx, vec![1, 0]);
    }
}
