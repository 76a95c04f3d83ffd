//! The assignment step of Lloyd's k-means with Hamerly's bounds: points
//! whose nearest centroid provably cannot have changed skip the search, and
//! the result is that of a full search bit for bit.
//!
//! Each point keeps an upper bound `u` on its true distance to its assigned
//! centroid and a lower bound `l` on its true distance to every other one.
//! When centroids move by `delta_j`, `u += delta_a` and `l -= max_{j != a}
//! delta_j` (triangle inequality). The search kernel computes squared
//! distances as `|c|^2 - 2 x.c + |x|^2` in f32, within `E` of the true
//! value ([`rounding_margin`]); if `l^2 - u^2 > 2 E`, every other centroid's
//! kernel value is strictly above the assigned one's, so the full search
//! would return the same index, and [`CentroidTable::distance`] gives its
//! distance with the same rounding. Otherwise `u` is tightened to the exact
//! distance and, if the test still fails, the point is searched in full
//! (which also yields a fresh `l` from the second-nearest centroid).
//!
//! Bounds are kept in f64 and widened by a relative `1e-9`, so their own
//! rounding cannot make them wrong; `E` covers the kernel's.

use crate::nearest::CentroidTable;

/// Relative widening of every bound computed in f64.
const WIDEN: f64 = 1e-9;

/// Bounds and scratch of one k-means run (`n` points of `d` elements).
#[derive(Debug)]
pub(crate) struct BoundedAssign {
    d: usize,
    /// Per point: upper bound on the true distance to its assigned centroid.
    upper: Vec<f64>,
    /// Per point: lower bound on the true distance to every other centroid.
    lower: Vec<f64>,
    /// The centroids of the previous assignment (`k * d`; empty before the first).
    prev: Vec<f32>,
    /// `max_i |x_i|^2`.
    max_norm_points: f64,
    /// Points searched in full over the run (for tests and tuning).
    pub(crate) searched: usize,
    /// Scratch: indices of the points to search, and their gathered rows.
    todo: Vec<usize>,
    rows: Vec<f32>,
}

impl BoundedAssign {
    /// Bounds for `points` (`n * d`, row-major), none known yet.
    pub(crate) fn new(points: &[f32], d: usize) -> Self {
        let n = points.len() / d;
        let max_norm_points = points
            .chunks_exact(d)
            .map(|x| x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>())
            .fold(0.0, f64::max);
        BoundedAssign {
            d,
            upper: vec![0.0; n],
            lower: vec![0.0; n],
            prev: Vec::new(),
            max_norm_points,
            searched: 0,
            todo: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// Writes every point's nearest centroid (`k` centroids, `k * d`
    /// row-major) to `idx` and its squared distance to `dist`: the same
    /// values, bit for bit, as [`CentroidTable::assign`]. `idx` must hold the
    /// previous call's result (it is the assignment the bounds refer to).
    pub(crate) fn assign(
        &mut self,
        centroids: &[f32],
        k: usize,
        points: &[f32],
        idx: &mut [u32],
        dist: &mut [f32],
    ) {
        let d = self.d;
        let n = idx.len();
        let table = CentroidTable::new(centroids, d, k);
        let max_norm_centroids = centroids
            .chunks_exact(d)
            .map(|c| c.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>())
            .fold(0.0, f64::max);
        let margin = rounding_margin(d, self.max_norm_points, max_norm_centroids);
        self.todo.clear();
        if self.prev.len() != centroids.len() {
            self.todo.extend(0..n);
        } else {
            let shifts = shifts(&self.prev, centroids, d);
            let (first, arg_first, runner_up) = two_largest(&shifts);
            for (i, x) in points.chunks_exact(d).enumerate() {
                let a = idx[i] as usize;
                let others = if a == arg_first { runner_up } else { first };
                self.upper[i] += shifts[a];
                self.lower[i] = (self.lower[i] - others).max(0.0);
                if separated(self.lower[i], self.upper[i], margin) {
                    dist[i] = table.distance(x, a);
                    continue;
                }
                self.upper[i] = exact_distance(x, &centroids[a * d..(a + 1) * d]);
                if separated(self.lower[i], self.upper[i], margin) {
                    dist[i] = table.distance(x, a);
                } else {
                    self.todo.push(i);
                }
            }
        }
        self.search(&table, margin, points, idx, dist);
        self.prev.clear();
        self.prev.extend_from_slice(centroids);
    }

    /// Full search of the points in `todo`, refreshing their bounds.
    fn search(
        &mut self,
        table: &CentroidTable,
        margin: f64,
        points: &[f32],
        idx: &mut [u32],
        dist: &mut [f32],
    ) {
        let d = self.d;
        let m = self.todo.len();
        if m == 0 {
            return;
        }
        self.searched += m;
        self.rows.clear();
        for &i in &self.todo {
            self.rows.extend_from_slice(&points[i * d..(i + 1) * d]);
        }
        let mut sub_idx = vec![0u32; m];
        let mut sub_dist = vec![0f32; m];
        let mut second = vec![0f32; m];
        table.assign_with_second(&self.rows, &mut sub_idx, &mut sub_dist, &mut second);
        for (t, &i) in self.todo.iter().enumerate() {
            idx[i] = sub_idx[t];
            dist[i] = sub_dist[t];
            let best = f64::from(sub_dist[t]);
            self.upper[i] = (best + margin).sqrt() * (1.0 + WIDEN);
            self.lower[i] = (f64::from(second[t]) - margin).max(0.0).sqrt() * (1.0 - WIDEN);
        }
    }
}

/// A bound `E` on the difference between the search kernel's squared
/// distance (f32: `|c|^2`, `d` fused or separate multiply-adds, `+ |x|^2`)
/// and the true one, for points with `|x|^2 <= x2` and centroids with
/// `|c|^2 <= c2`. Every intermediate is at most `2 (x2 + c2)` in magnitude
/// and each of the `d + 3` roundings (and the `d` of `|c|^2` and `|x|^2`)
/// errs by at most half an f32 epsilon of it; four times the sum of those
/// is ample.
fn rounding_margin(d: usize, x2: f64, c2: f64) -> f64 {
    let ops = (2 * d + 3) as f64;
    4.0 * ops * f64::from(f32::EPSILON) * 2.0 * (x2 + c2)
}

/// Whether a point whose true distances are at most `upper` to its centroid
/// and at least `lower` to every other one keeps its centroid in the f32
/// search: the kernel values then differ by more than the rounding `2 E`.
fn separated(lower: f64, upper: f64, margin: f64) -> bool {
    lower > upper && lower * lower - upper * upper > 2.0 * margin
}

/// `|c_new_j - c_old_j|` per centroid, widened upward.
fn shifts(old: &[f32], new: &[f32], d: usize) -> Vec<f64> {
    old.chunks_exact(d)
        .zip(new.chunks_exact(d))
        .map(|(a, b)| exact_distance(a, b))
        .collect()
}

/// The Euclidean distance of two f32 vectors, computed in f64 and widened
/// upward (an upper bound on the true distance).
fn exact_distance(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let t = f64::from(x) - f64::from(y);
            t * t
        })
        .sum();
    s.sqrt() * (1.0 + WIDEN)
}

/// The largest value, its index, and the largest of the others (0 if none).
fn two_largest(v: &[f64]) -> (f64, usize, f64) {
    let (mut first, mut arg, mut second) = (0.0, usize::MAX, 0.0);
    for (j, &x) in v.iter().enumerate() {
        if x > first {
            second = first;
            first = x;
            arg = j;
        } else if x > second {
            second = x;
        }
    }
    (first, arg, second)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Lloyd-like moves: every assignment of a bounded run equals a full
    /// search, bit for bit, while centroids drift by steps of every size.
    fn check(seed: u64, n: usize, d: usize, k: usize, steps: usize, drift: f32) -> usize {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Clustered points, some far from the origin, with exact ties.
        let centers: Vec<f32> = (0..4 * d).map(|_| rng.gen_range(-20.0..20.0)).collect();
        let mut points: Vec<f32> = (0..n)
            .flat_map(|i| {
                let c = &centers[(i % 4) * d..(i % 4 + 1) * d];
                c.iter()
                    .map(|&v| v + rng.gen_range(-1.0..1.0))
                    .collect::<Vec<_>>()
            })
            .collect();
        points[..d].fill(0.0);
        let mut cents: Vec<f32> = points[..k * d].to_vec();
        if k > 1 {
            cents[d..2 * d].fill(0.0); // centroid 1 equals centroid 0: a tie
        }
        let mut bounded = BoundedAssign::new(&points, d);
        let (mut idx, mut dist) = (vec![0u32; n], vec![0f32; n]);
        for step in 0..steps {
            bounded.assign(&cents, k, &points, &mut idx, &mut dist);
            let (want_idx, want_dist) = crate::nearest_centroids(&points, &cents, d);
            assert_eq!(idx, want_idx, "step {step}: indices");
            let (a, b): (Vec<u32>, Vec<u32>) = dist
                .iter()
                .zip(&want_dist)
                .map(|(x, y)| (x.to_bits(), y.to_bits()))
                .unzip();
            assert_eq!(a, b, "step {step}: distances");
            // Move centroids: mostly small drifts, sometimes one big jump.
            let scale = if step % 3 == 2 { drift * 50.0 } else { drift };
            let j = rng.gen_range(0..k);
            for (c, v) in cents.iter_mut().enumerate() {
                let s = if c / d == j { scale } else { drift };
                *v += rng.gen_range(-s..=s);
            }
        }
        bounded.searched
    }

    #[test]
    fn equals_full_search_and_skips_settled_points() {
        let n = 2000;
        let steps = 12;
        let searched = check(3, n, 2, 64, steps, 0.01);
        // The point of the bounds: far fewer than every point every step.
        assert!(searched < n * steps / 2, "searched {searched}");
        check(4, 500, 1, 1, 4, 0.5);
        check(5, 500, 16, 20, 6, 0.1);
        check(6, 300, 9, 17, 6, 0.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, rng_seed: proptest::test_runner::RngSeed::Fixed(31), ..ProptestConfig::default() })]
        #[test]
        fn bounded_assignment_equals_full_search(seed in 0u64..1000, n in 20usize..400, d in 1usize..10, k in 1usize..20, drift in 0.0f32..2.0) {
            check(seed, n, d, k, 5, drift);
        }
    }

    #[test]
    fn two_largest_handles_short_and_tied_input() {
        assert_eq!(two_largest(&[]), (0.0, usize::MAX, 0.0));
        assert_eq!(two_largest(&[2.0]), (2.0, 0, 0.0));
        assert_eq!(two_largest(&[1.0, 3.0, 3.0]), (3.0, 1, 3.0));
    }
}
