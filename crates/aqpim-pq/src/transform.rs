//! Affine pre-transforms of PQ inputs, `x' = A (x - mu)`, that attention on
//! codes can fold away: a key's score is `q . k = q . mu + (A^-T q) . k'`, so
//! a query's lookup table is built from `A^-T q` and every encoded score gets
//! the one offset `q . mu`; a weighted sum of values is
//! `sum_t w_t v_t = (sum_t w_t) mu + A^-1 sum_t w_t v'_t`, so the weights are
//! binned on the codes as before and the transform is undone once on the
//! output. Mean centering, per-channel scaling, whitening and channel
//! permutations (subspace layouts) are all of this form.
//!
//! `A` is held in one of two forms. Scaling, a diagonal query metric and a
//! subspace layout, alone or together, give a *monomial* matrix `A = D P`
//! (a permutation `P`, then a diagonal `D`: exactly one nonzero per row and
//! column), held as the permutation (`u16` per channel, so `d <=`
//! [`crate::limits::MAX_DIM`]) and the diagonal (`f32` per channel), and
//! applied in `O(d)`; `A^-1 = P^T D^-1` is derived, not held. Any other
//! matrix (a full query metric, `whiten=full`) is held dense, `A` and `A^-1`
//! as `d x d` f32. [`PreTransform::new`] picks the form: a monomial matrix
//! is held compactly. Both forms compute the same single products, so they
//! give equal results for finite inputs (up to the sign of a zero).
//!
//! Transform files (`.pqxf`), little-endian, written atomically:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `AQPIMXF\0` |
//! | 8 | 4 | version, `u32`: 1 without a matrix or with a dense one, 2 with a monomial one |
//! | 12 | 4 | `d`, `u32` (at most [`crate::limits::MAX_DIM`]) |
//! | 16 | 4 | flags, `u32`: 0 = mean only, 1 = dense matrix, 2 = monomial matrix (version 2 only) |
//! | 20 | 4 d | `mu`, f32 |
//! | then | 4 d^2 each | flag 1: `A` and `A^-1`, f32 row-major |
//! | then | 4 d, then 2 d | flag 2: the diagonal `D`, f32, then the permutation, `u16` (`(A x)_i = D_i x_{perm_i}`) |
//! | end - 4 | 4 | CRC-32 of every byte before it |
//!
//! A transform without a monomial matrix is written as version 1, byte for
//! byte as before version 2 existed, so older readers still load it; a
//! version-1 file whose dense matrix is monomial loads in the compact form.

mod file;
mod linalg;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

pub use file::TRANSFORM_MAGIC;
pub use linalg::{channel_mean, matmul, permutation_matrix, second_moment, sym_sqrt};

use crate::error::{PqError, Result};
use linalg::{dot, invert};

/// `x' = A (x - mu)`; no matrix is the identity.
#[derive(Debug, Clone, PartialEq)]
pub struct PreTransform {
    dim: usize,
    mean: Vec<f32>,
    matrix: Option<Matrix>,
}

/// How `A` is held (module docs).
#[derive(Debug, Clone, PartialEq)]
enum Matrix {
    /// `A = D P`: `(A x)_i = diag[i] * x[perm[i]]`, the one nonzero of row
    /// `i` being `A[i][perm[i]] = diag[i]`; `perm` is a permutation of
    /// `0..d` and every `diag[i]` finite and nonzero.
    Monomial { perm: Vec<u16>, diag: Vec<f32> },
    /// `A` and `A^-1`, `d x d` row-major each.
    Dense { a: Vec<f32>, inv: Vec<f32> },
}

/// `1 / x` as the dense inverse holds it: Gauss-Jordan elimination in f64
/// divides the pivot row by `x`, and the result is rounded to f32.
fn reciprocal(x: f32) -> f32 {
    (1.0 / f64::from(x)) as f32
}

/// The permutation and diagonal of `a` (`d x d` row-major) if it is
/// monomial (exactly one nonzero per row and per column) and `d` fits the
/// `u16` permutation; `None` otherwise.
fn find_monomial(a: &[f32], d: usize) -> Option<(Vec<u16>, Vec<f32>)> {
    if d > crate::limits::MAX_DIM || a.len() != d * d {
        return None;
    }
    let mut used = vec![false; d];
    let mut perm = Vec::with_capacity(d);
    let mut diag = Vec::with_capacity(d);
    for row in a.chunks_exact(d.max(1)) {
        let mut nonzero = row.iter().enumerate().filter(|(_, &v)| v != 0.0);
        let (j, &v) = nonzero.next()?;
        if nonzero.next().is_some() || std::mem::replace(&mut used[j], true) {
            return None;
        }
        perm.push(u16::try_from(j).ok()?);
        diag.push(v);
    }
    Some((perm, diag))
}

/// Checks that `perm` is a permutation of `0..d` (`d = perm.len()`).
fn check_permutation(perm: &[u16]) -> std::result::Result<(), String> {
    let d = perm.len();
    let mut seen: Vec<Option<usize>> = vec![None; d];
    for (i, &p) in perm.iter().enumerate() {
        let j = usize::from(p);
        let slot = seen
            .get_mut(j)
            .ok_or_else(|| format!("entry {i} is channel {j}, out of range for d = {d}"))?;
        if let Some(first) = slot.replace(i) {
            return Err(format!(
                "channel {j} appears twice (entries {first} and {i})"
            ));
        }
    }
    Ok(())
}

/// Checks that a diagonal is finite, nonzero and no smaller than `1e-12`
/// of its largest entry (the dense inverse's test of a singular pivot).
fn check_diagonal(diag: &[f32]) -> std::result::Result<(), String> {
    if let Some(i) = diag.iter().position(|v| !v.is_finite()) {
        return Err(format!("diagonal entry {i} is {}", diag[i]));
    }
    let scale = diag.iter().fold(0f64, |s, &x| s.max(f64::from(x).abs()));
    if let Some(i) = diag
        .iter()
        .position(|&x| f64::from(x).abs() <= 1e-12 * scale)
    {
        return Err(format!(
            "diagonal entry {i} is {} (the matrix is singular)",
            diag[i]
        ));
    }
    Ok(())
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
    /// A monomial `a` (exactly one nonzero per row and column) is held
    /// compactly, as [`PreTransform::monomial`] holds it; any other, dense.
    pub fn new(mean: Vec<f32>, a: Option<Vec<f32>>) -> Result<Self> {
        let dim = mean.len();
        crate::check_finite(&mean, dim.max(1), "transform mean")?;
        let Some(a) = a else {
            return Ok(PreTransform {
                dim,
                mean,
                matrix: None,
            });
        };
        if a.len() != dim * dim {
            return Err(PqError::shape("transform matrix", dim * dim, a.len()));
        }
        crate::check_finite(&a, dim.max(1), "transform matrix")?;
        if let Some((perm, diag)) = find_monomial(&a, dim) {
            return Self::monomial(mean, perm, diag);
        }
        let inv = invert(&a, dim).ok_or_else(|| {
            PqError::shape("transform matrix", "an invertible matrix", "a singular one")
        })?;
        Ok(PreTransform {
            dim,
            mean,
            matrix: Some(Matrix::Dense { a, inv }),
        })
    }

    /// `x' = D P (x - mean)`: `x'_i = diag[i] * (x - mean)[perm[i]]`. `perm`
    /// must be a permutation of `0..d` and `diag` finite and nonzero (no
    /// entry at or below `1e-12` of the largest, the test a dense inverse
    /// applies), both of length `d = mean.len() <= MAX_DIM`.
    pub fn monomial(mean: Vec<f32>, perm: Vec<u16>, diag: Vec<f32>) -> Result<Self> {
        let dim = mean.len();
        crate::check_finite(&mean, dim.max(1), "transform mean")?;
        if dim > crate::limits::MAX_DIM {
            return Err(PqError::shape(
                "transform permutation",
                format!("d <= {}", crate::limits::MAX_DIM),
                dim,
            ));
        }
        if perm.len() != dim || diag.len() != dim {
            return Err(PqError::shape(
                "transform permutation and diagonal",
                dim,
                format!("{} and {}", perm.len(), diag.len()),
            ));
        }
        check_permutation(&perm)
            .map_err(|why| PqError::shape("transform permutation", "a permutation", why))?;
        check_diagonal(&diag)
            .map_err(|why| PqError::shape("transform diagonal", "an invertible one", why))?;
        Ok(PreTransform {
            dim,
            mean,
            matrix: Some(Matrix::Monomial { perm, diag }),
        })
    }

    /// Dimension `d`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The mean `mu`.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// `A` (row-major, `d x d`; built on the fly from a monomial form), or
    /// `None` for the identity.
    pub fn matrix(&self) -> Option<Cow<'_, [f32]>> {
        Some(match self.matrix.as_ref()? {
            Matrix::Dense { a, .. } => Cow::Borrowed(a.as_slice()),
            Matrix::Monomial { perm, diag } => {
                let d = self.dim;
                let mut a = vec![0f32; d * d];
                for (i, (&p, &v)) in perm.iter().zip(diag).enumerate() {
                    a[i * d + usize::from(p)] = v;
                }
                Cow::Owned(a)
            }
        })
    }

    /// The permutation and diagonal of a monomial `A = D P`
    /// (`A[i][perm[i]] = diag[i]`), or `None` (identity or dense).
    pub fn monomial_parts(&self) -> Option<(&[u16], &[f32])> {
        match &self.matrix {
            Some(Matrix::Monomial { perm, diag }) => Some((perm, diag)),
            _ => None,
        }
    }

    /// Whether this is the identity (no mean, no matrix).
    pub fn is_identity(&self) -> bool {
        self.matrix.is_none() && self.mean.iter().all(|&m| m == 0.0)
    }

    /// Bytes the transform takes as held: `4 d` for the mean, plus `6 d`
    /// for a monomial matrix (`u16` permutation and f32 diagonal) or `8 d^2`
    /// for a dense one (`A` and `A^-1`, f32).
    pub fn bytes(&self) -> usize {
        4 * self.dim
            + match &self.matrix {
                None => 0,
                Some(Matrix::Monomial { .. }) => 6 * self.dim,
                Some(Matrix::Dense { .. }) => 8 * self.dim * self.dim,
            }
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
                Some(Matrix::Dense { a, .. }) => out.extend(a.chunks_exact(d).map(|r| dot(r, &c))),
                Some(Matrix::Monomial { perm, diag }) => {
                    out.extend(perm.iter().zip(diag).map(|(&p, &v)| v * c[usize::from(p)]))
                }
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
            Some(Matrix::Dense { inv, .. }) => {
                // (A^-T q)_i = sum_j inv[j][i] q_j
                let mut out = vec![0f32; d];
                for (row, &qj) in inv.chunks_exact(d).zip(q) {
                    for (o, &v) in out.iter_mut().zip(row) {
                        *o += v * qj;
                    }
                }
                out
            }
            // A^-1 = P^T D^-1 has its nonzero of column i at row perm[i].
            Some(Matrix::Monomial { perm, diag }) => perm
                .iter()
                .zip(diag)
                .map(|(&p, &v)| reciprocal(v) * q[usize::from(p)])
                .collect(),
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
            Some(Matrix::Dense { inv, .. }) => {
                for (o, row) in out.iter_mut().zip(inv.chunks_exact(self.dim)) {
                    *o += dot(row, s);
                }
            }
            // (A^-1 s)_{perm[i]} = s_i / diag[i].
            Some(Matrix::Monomial { perm, diag }) => {
                for ((&p, &v), &si) in perm.iter().zip(diag).zip(s) {
                    out[usize::from(p)] += reciprocal(v) * si;
                }
            }
        }
        out.iter_mut()
            .zip(&self.mean)
            .for_each(|(o, &m)| *o += w * m);
        Ok(())
    }
}
