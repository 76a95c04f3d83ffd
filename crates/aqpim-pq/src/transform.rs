//! Affine pre-transforms of PQ inputs, `x' = A (x - mu)`, that attention on
//! codes can fold away: a key's score is `q . k = q . mu + (A^-T q) . k'`, so
//! a query's lookup table is built from `A^-T q` and every encoded score gets
//! the one offset `q . mu`; a weighted sum of values is
//! `sum_t w_t v_t = (sum_t w_t) mu + A^-1 sum_t w_t v'_t`, so the weights are
//! binned on the codes as before and the transform is undone once on the
//! output. Mean centering, per-channel scaling, whitening and channel
//! permutations (subspace layouts) are all of this form.
//!
//! Transform files (`.pqxf`), little-endian, written atomically:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `AQPIMXF\0` |
//! | 8 | 4 | version, `u32` (1) |
//! | 12 | 4 | `d`, `u32` |
//! | 16 | 4 | flags, `u32`: 1 = has a matrix |
//! | 20 | 4 d | `mu`, f32 |
//! | then | 4 d^2 each | `A` and `A^-1`, f32 row-major, if flagged |
//! | end - 4 | 4 | CRC-32 of every byte before it |

use std::path::Path;

use crate::error::{PqError, Result};
use crate::sealed::Frame;

/// Magic of transform files.
pub const TRANSFORM_MAGIC: &[u8; 8] = b"AQPIMXF\0";
const VERSION: u32 = 1;

/// The transform file's frame (magic, version, CRC-32).
const FRAME: Frame = Frame {
    magic: TRANSFORM_MAGIC,
    kind: "aqpim transform",
    versions: VERSION..=VERSION,
};

/// `x' = A (x - mu)`; `A = None` is the identity.
#[derive(Debug, Clone, PartialEq)]
pub struct PreTransform {
    dim: usize,
    mean: Vec<f32>,
    /// `(A, A^-1)`, `d x d` row-major each.
    matrix: Option<(Vec<f32>, Vec<f32>)>,
}

impl PreTransform {
    /// The identity of dimension `dim`.
    pub fn identity(dim: usize) -> Self {
        PreTransform {
            dim,
            mean: vec![0.0; dim],
            matrix: None,
        }
    }

    /// `x' = A (x - mean)`; `a` is `d x d` row-major and must be invertible.
    pub fn new(mean: Vec<f32>, a: Option<Vec<f32>>) -> Result<Self> {
        let dim = mean.len();
        crate::check_finite(&mean, dim.max(1), "transform mean")?;
        let matrix = match a {
            None => None,
            Some(a) => {
                if a.len() != dim * dim {
                    return Err(PqError::shape("transform matrix", dim * dim, a.len()));
                }
                crate::check_finite(&a, dim.max(1), "transform matrix")?;
                let inv = invert(&a, dim).ok_or_else(|| {
                    PqError::shape("transform matrix", "an invertible matrix", "a singular one")
                })?;
                Some((a, inv))
            }
        };
        Ok(PreTransform { dim, mean, matrix })
    }

    /// Dimension `d`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The mean `mu`.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// `A` (row-major), or `None` for the identity.
    pub fn matrix(&self) -> Option<&[f32]> {
        self.matrix.as_ref().map(|(a, _)| a.as_slice())
    }

    /// Whether this is the identity (no mean, no matrix).
    pub fn is_identity(&self) -> bool {
        self.matrix.is_none() && self.mean.iter().all(|&m| m == 0.0)
    }

    /// Bytes the transform takes as f32 (mean, and `A` and `A^-1` if any).
    pub fn bytes(&self) -> usize {
        4 * (self.dim + self.matrix.as_ref().map_or(0, |_| 2 * self.dim * self.dim))
    }

    fn check(&self, op: &'static str, len: usize) -> Result<()> {
        if self.dim == 0 || !len.is_multiple_of(self.dim) {
            return Err(PqError::shape(op, format!("rows of {}", self.dim), len));
        }
        Ok(())
    }

    /// `x' = A (x - mu)` for every row of `data` (`n x d`).
    pub fn apply(&self, data: &[f32]) -> Result<Vec<f32>> {
        self.check("PreTransform::apply", data.len())?;
        let d = self.dim;
        let mut out = Vec::with_capacity(data.len());
        let mut c = vec![0f32; d];
        for row in data.chunks_exact(d) {
            for ((c, &x), &m) in c.iter_mut().zip(row).zip(&self.mean) {
                *c = x - m;
            }
            match &self.matrix {
                None => out.extend_from_slice(&c),
                Some((a, _)) => out.extend(a.chunks_exact(d).map(|r| dot(r, &c))),
            }
        }
        Ok(out)
    }

    /// `x = A^-1 x' + mu` for every row of `data` (`n x d`).
    pub fn undo(&self, data: &[f32]) -> Result<Vec<f32>> {
        self.check("PreTransform::undo", data.len())?;
        let mut out = vec![0f32; data.len()];
        for (o, x) in out
            .chunks_exact_mut(self.dim)
            .zip(data.chunks_exact(self.dim))
        {
            self.undo_sum(x, 1.0, o)?;
        }
        Ok(out)
    }

    /// The query a lookup table over transformed codes needs, `A^-T q`, and the
    /// score offset `q . mu`: `q . x = offset + query . A (x - mu)`.
    pub fn query(&self, q: &[f32]) -> Result<(Vec<f32>, f32)> {
        if q.len() != self.dim {
            return Err(PqError::shape("PreTransform::query", self.dim, q.len()));
        }
        let offset = dot(q, &self.mean);
        let d = self.dim;
        let tq = match &self.matrix {
            None => q.to_vec(),
            Some((_, inv)) => {
                // (A^-T q)_i = sum_j inv[j][i] q_j
                let mut out = vec![0f32; d];
                for (row, &qj) in inv.chunks_exact(d).zip(q) {
                    for (o, &v) in out.iter_mut().zip(row) {
                        *o += v * qj;
                    }
                }
                out
            }
        };
        Ok((tq, offset))
    }

    /// `out += A^-1 s + w mu`: undoes the transform on a weighted sum `s` of
    /// transformed vectors whose weights sum to `w`.
    pub fn undo_sum(&self, s: &[f32], w: f32, out: &mut [f32]) -> Result<()> {
        if s.len() != self.dim || out.len() != self.dim {
            return Err(PqError::shape(
                "PreTransform::undo_sum",
                self.dim,
                format!("{} and {}", s.len(), out.len()),
            ));
        }
        match &self.matrix {
            None => out.iter_mut().zip(s).for_each(|(o, &v)| *o += v),
            Some((_, inv)) => {
                for (o, row) in out.iter_mut().zip(inv.chunks_exact(self.dim)) {
                    *o += dot(row, s);
                }
            }
        }
        out.iter_mut()
            .zip(&self.mean)
            .for_each(|(o, &m)| *o += w * m);
        Ok(())
    }

    /// Serializes the transform (format in the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = FRAME.start();
        for v in [self.dim as u32, u32::from(self.matrix.is_some())] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let mut put = |xs: &[f32]| {
            xs.iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()))
        };
        put(&self.mean);
        if let Some((a, inv)) = &self.matrix {
            put(a);
            put(inv);
        }
        Frame::seal(out)
    }

    /// Parses a transform; `path` only names the source in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |reason: String| PqError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let (_, body) = FRAME.open(bytes, 24, |_, _| Ok(())).map_err(bad)?;
        let word = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().expect("4 bytes"));
        let (d, flags) = (word(12) as usize, word(16));
        if flags > 1 {
            return Err(bad(format!("flags {flags} (expected 0 or 1)")));
        }
        let floats = d + if flags == 1 { 2 * d * d } else { 0 };
        if body.len() != 20 + 4 * floats {
            return Err(bad(format!(
                "{} bytes of data for d = {d} (expected {})",
                body.len() - 20,
                4 * floats
            )));
        }
        let vals: Vec<f32> = body[20..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        crate::check_finite(&vals, d.max(1), "transform file").map_err(|e| bad(e.to_string()))?;
        let mean = vals[..d].to_vec();
        let matrix =
            (flags == 1).then(|| (vals[d..d + d * d].to_vec(), vals[d + d * d..].to_vec()));
        Ok(PreTransform {
            dim: d,
            mean,
            matrix,
        })
    }

    /// Writes the transform to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::io::write_atomic(path, &self.to_bytes())
    }

    /// Reads a transform file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_bytes(&crate::io::read_all(path)?, path)
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Per-channel mean of `n x d` rows (f64 sums), weighted if `weights` is given.
pub fn channel_mean(data: &[f32], d: usize, weights: Option<&[f32]>) -> Vec<f32> {
    let mut s = vec![0f64; d];
    let mut total = 0f64;
    for (i, row) in data.chunks_exact(d.max(1)).enumerate() {
        let w = weights.map_or(1.0, |w| f64::from(w[i]));
        total += w;
        s.iter_mut()
            .zip(row)
            .for_each(|(a, &x)| *a += w * f64::from(x));
    }
    s.iter()
        .map(|&a| if total > 0.0 { (a / total) as f32 } else { 0.0 })
        .collect()
}

/// Second moment `E[x x^T]` of `n x d` rows, `d x d` row-major, f64.
pub fn second_moment(data: &[f32], d: usize) -> Vec<f64> {
    let mut m = vec![0f64; d * d];
    let mut n = 0usize;
    for row in data.chunks_exact(d.max(1)) {
        n += 1;
        for (i, &xi) in row.iter().enumerate() {
            let xi = f64::from(xi);
            for (mij, &xj) in m[i * d..(i + 1) * d].iter_mut().zip(row) {
                *mij += xi * f64::from(xj);
            }
        }
    }
    m.iter_mut().for_each(|v| *v /= n.max(1) as f64);
    m
}

/// The symmetric square root `S^(1/2)` of a symmetric positive semi-definite
/// `d x d` matrix, with eigenvalues floored at `ridge * max eigenvalue` so that
/// the result is invertible (cyclic Jacobi eigendecomposition, f64).
pub fn sym_sqrt(s: &[f64], d: usize, ridge: f64) -> Vec<f32> {
    let (vals, vecs) = jacobi_eigen(s, d);
    let top = vals.iter().cloned().fold(0f64, f64::max).max(1e-30);
    let roots: Vec<f64> = vals.iter().map(|&l| l.max(ridge * top).sqrt()).collect();
    let mut out = vec![0f32; d * d];
    for i in 0..d {
        for j in 0..d {
            let v: f64 = (0..d)
                .map(|k| vecs[i * d + k] * roots[k] * vecs[j * d + k])
                .sum();
            out[i * d + j] = v as f32;
        }
    }
    out
}

/// Eigenvalues and eigenvectors (columns of the returned `d x d` row-major
/// matrix) of a symmetric matrix, by cyclic Jacobi rotations.
fn jacobi_eigen(s: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = s.to_vec();
    let mut v = vec![0f64; d * d];
    (0..d).for_each(|i| v[i * d + i] = 1.0);
    for _sweep in 0..60 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j] * a[i * d + j])
            .sum();
        let diag: f64 = (0..d).map(|i| a[i * d + i] * a[i * d + i]).sum();
        if off <= 1e-22 * diag.max(1e-300) {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let sn = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - sn * akq;
                    a[k * d + q] = sn * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - sn * aqk;
                    a[q * d + k] = sn * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - sn * vkq;
                    v[k * d + q] = sn * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// Inverse of a `d x d` row-major matrix (Gauss-Jordan with partial
/// pivoting, f64), or `None` if it is singular.
fn invert(a: &[f32], d: usize) -> Option<Vec<f32>> {
    let w = 2 * d;
    let mut m = vec![0f64; d * w];
    for i in 0..d {
        for j in 0..d {
            m[i * w + j] = f64::from(a[i * d + j]);
        }
        m[i * w + d + i] = 1.0;
    }
    let scale = a.iter().fold(0f64, |s, &x| s.max(f64::from(x).abs()));
    for col in 0..d {
        let piv =
            (col..d).max_by(|&x, &y| m[x * w + col].abs().total_cmp(&m[y * w + col].abs()))?;
        if m[piv * w + col].abs() <= 1e-12 * scale {
            return None;
        }
        if piv != col {
            for j in 0..w {
                m.swap(piv * w + j, col * w + j);
            }
        }
        let p = m[col * w + col];
        for j in 0..w {
            m[col * w + j] /= p;
        }
        for r in 0..d {
            if r != col {
                let f = m[r * w + col];
                if f != 0.0 {
                    for j in 0..w {
                        m[r * w + j] -= f * m[col * w + j];
                    }
                }
            }
        }
    }
    Some(
        (0..d)
            .flat_map(|i| (0..d).map(move |j| (i, j)))
            .map(|(i, j)| m[i * w + d + j] as f32)
            .collect(),
    )
}

/// `P`, the permutation matrix that puts channel `perm[i]` at position `i`.
pub fn permutation_matrix(perm: &[usize]) -> Vec<f32> {
    let d = perm.len();
    let mut p = vec![0f32; d * d];
    for (i, &j) in perm.iter().enumerate() {
        p[i * d + j] = 1.0;
    }
    p
}

/// `a x b`, both `d x d` row-major.
pub fn matmul(a: &[f32], b: &[f32], d: usize) -> Vec<f32> {
    let mut out = vec![0f32; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            if aik != 0.0 {
                for j in 0..d {
                    out[i * d + j] += aik * b[k * d + j];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn scores_and_weighted_sums_fold_through_the_transform() {
        for seed in 0..8 {
            let d = 8;
            let data = random(40 * d, seed);
            let s = second_moment(&random(200 * d, seed + 100), d);
            let a = matmul(
                &permutation_matrix(&[1, 0, 3, 2, 5, 4, 7, 6]),
                &sym_sqrt(&s, d, 1e-6),
                d,
            );
            let t = PreTransform::new(channel_mean(&data, d, None), Some(a)).unwrap();
            let x = t.apply(&data).unwrap();
            let back = t.undo(&x).unwrap();
            for (p, q) in back.iter().zip(&data) {
                assert!((p - q).abs() < 1e-4, "{p} vs {q}");
            }
            let q = random(d, seed + 7);
            let (tq, off) = t.query(&q).unwrap();
            for (row, xr) in data.chunks_exact(d).zip(x.chunks_exact(d)) {
                let want = dot(&q, row);
                let got = off + dot(&tq, xr);
                assert!((want - got).abs() < 1e-4, "{want} vs {got}");
            }
            let w = random(40, seed + 9)
                .iter()
                .map(|v| v.abs())
                .collect::<Vec<_>>();
            let mut s_t = vec![0f32; d];
            let mut want = vec![0f32; d];
            for ((row, xr), &wi) in data.chunks_exact(d).zip(x.chunks_exact(d)).zip(&w) {
                s_t.iter_mut().zip(xr).for_each(|(a, &v)| *a += wi * v);
                want.iter_mut().zip(row).for_each(|(a, &v)| *a += wi * v);
            }
            let mut got = vec![0f32; d];
            t.undo_sum(&s_t, w.iter().sum(), &mut got).unwrap();
            for (p, q) in got.iter().zip(&want) {
                assert!((p - q).abs() < 1e-3, "{p} vs {q}");
            }
        }
    }

    #[test]
    fn whitening_makes_the_query_second_moment_the_identity() {
        let d = 6;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        // Correlated queries with unequal channel scales.
        let q: Vec<f32> = (0..4000)
            .flat_map(|_| {
                let z: Vec<f32> = (0..d).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                (0..d).map(move |i| z[i] * (i + 1) as f32 + 0.5 * z[(i + 1) % d])
            })
            .collect();
        let s = second_moment(&q, d);
        let t = PreTransform::new(vec![0.0; d], Some(sym_sqrt(&s, d, 0.0))).unwrap();
        // Queries of the folded table: A^-T q; their second moment is I.
        let tq: Vec<f32> = q
            .chunks_exact(d)
            .flat_map(|r| t.query(r).unwrap().0)
            .collect();
        let m = second_moment(&tq, d);
        for i in 0..d {
            for j in 0..d {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (m[i * d + j] - want).abs() < 1e-3,
                    "{i},{j}: {}",
                    m[i * d + j]
                );
            }
        }
    }

    #[test]
    fn centering_alone_leaves_per_subspace_kmeans_unchanged() {
        // k-means (k-means++ init, Lloyd steps) is translation-equivariant, so
        // training on x - mu gives the centroids of x shifted by mu and the same
        // codes, up to float rounding: mean centering only matters combined
        // with scaling or whitening.
        use crate::{PqParams, ProductQuantizer, TrainOptions};
        let d = 8;
        let data: Vec<f32> = crate::synth::kv_like(2000, d, 5)
            .iter()
            .enumerate()
            .map(|(i, v)| v + (i % d) as f32 * 0.75)
            .collect();
        let t = PreTransform::new(channel_mean(&data, d, None), None).unwrap();
        let opts = TrainOptions {
            iterations: 10,
            ..TrainOptions::default()
        };
        let p = PqParams::with_dsub(d, 2, 4).unwrap();
        let a = ProductQuantizer::train(p, &data, &opts).unwrap();
        let centered = t.apply(&data).unwrap();
        let b = ProductQuantizer::train(p, &centered, &opts).unwrap();
        let (ca, cb) = (a.encode(&data).unwrap(), b.encode(&centered).unwrap());
        let same = ca.iter().zip(&cb).filter(|(x, y)| x == y).count();
        assert!(same * 100 >= ca.len() * 99, "{same} of {}", ca.len());
    }

    #[test]
    fn files_round_trip_and_corruption_is_detected() {
        let d = 4;
        let t = PreTransform::new(
            vec![0.5, -1.0, 2.0, 0.0],
            Some(permutation_matrix(&[3, 2, 1, 0])),
        )
        .unwrap();
        let p = Path::new("x.pqxf");
        let bytes = t.to_bytes();
        assert_eq!(PreTransform::from_bytes(&bytes, p).unwrap(), t);
        let plain = PreTransform::identity(d);
        assert_eq!(
            PreTransform::from_bytes(&plain.to_bytes(), p).unwrap(),
            plain
        );
        for i in [0, 9, 13, 30, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(PreTransform::from_bytes(&b, p).is_err(), "byte {i}");
        }
        assert!(PreTransform::new(vec![0.0; 2], Some(vec![1.0, 2.0, 2.0, 4.0])).is_err());
        assert!(PreTransform::new(vec![0.0; 2], Some(vec![1.0; 3])).is_err());
    }
}
