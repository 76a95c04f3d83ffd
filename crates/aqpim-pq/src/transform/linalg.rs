//! The linear algebra behind pre-transforms: channel means, second moments,
//! symmetric square roots (Jacobi), inverses, permutation matrices, products.

pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
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
pub(super) fn invert(a: &[f32], d: usize) -> Option<Vec<f32>> {
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
