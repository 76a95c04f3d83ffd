//! The KV-cache interface the forward pass reads attention through, and the
//! exact dense cache (f32 or FP16 storage) behind it.
//!
//! The interface is deliberately small so that a compressed store (the
//! `KvStore` caches of `aqpim-kvcache`) can sit behind it: the model appends
//! one post-RoPE key and value per token, layer and KV head, and asks for the
//! attention output of one query over the first `visible` cached tokens.

use half::f16;

use crate::error::{DecodeError, Result};

/// A per-layer, per-KV-head key/value cache with attention: what the
/// forward pass reads attention through. Not to be confused with
/// `aqpim_kvcache::KvStore`, the compressed storage format one
/// implementation ([`CompressedCache`](super::compressed::CompressedCache))
/// wraps.
pub trait AttentionCache: Sync {
    /// Appends one token's key and value (`head_dim` values each, keys after
    /// RoPE) for `(layer, kv_head)`.
    fn append(&mut self, layer: usize, kv_head: usize, key: &[f32], value: &[f32]) -> Result<()>;

    /// Makes every token appended to `layer` visible to attention. The
    /// forward pass calls it once a layer's tokens are appended for every KV
    /// head, before attending. Caches that store an append at once need not
    /// do anything (the default); [`CompressedCache`](super::compressed::CompressedCache)
    /// stages appends and stores the layer's tokens here, all heads together.
    fn commit(&mut self, layer: usize) -> Result<()> {
        let _ = layer;
        Ok(())
    }

    /// Tokens cached for `(layer, kv_head)`.
    fn len(&self, layer: usize, kv_head: usize) -> usize;

    /// Whether nothing is cached for `(layer, kv_head)`.
    fn is_empty(&self, layer: usize, kv_head: usize) -> bool {
        self.len(layer, kv_head) == 0
    }

    /// Attention of the `g` query heads that share `kv_head` (grouped-query
    /// attention) over cached tokens `0..visible`: for each query head `i`,
    /// `out_i = sum_t p_t v_t`, `p = softmax_t(scale * query_i . k_t)`.
    /// `queries` and `out` hold `g x head_dim` values, head `i` in rows
    /// `i * head_dim..`. Caches read each key/value tile (or build each
    /// table) once for the whole group.
    fn attend_group(
        &self,
        layer: usize,
        kv_head: usize,
        queries: &[f32],
        visible: usize,
        scale: f32,
        out: &mut [f32],
    ) -> Result<()>;

    /// [`AttentionCache::attend_group`] for one query (`head_dim` values).
    fn attend(
        &self,
        layer: usize,
        kv_head: usize,
        query: &[f32],
        visible: usize,
        scale: f32,
        out: &mut [f32],
    ) -> Result<()> {
        self.attend_group(layer, kv_head, query, visible, scale, out)
    }

    /// Bytes the cache holds for keys and values.
    fn bytes(&self) -> usize;

    /// Effective bits per cached key/value element.
    fn bits_per_element(&self) -> f64;
}

/// Storage precision of a [`DenseCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DensePrecision {
    /// Exact f32.
    F32,
    /// IEEE half precision (the `fp16` baseline).
    F16,
}

/// Keys or values of one `(layer, kv_head)`, held as f32. With
/// [`DensePrecision::F16`] every value is rounded to FP16 on the way in, so
/// the cache holds exactly the FP16 values (`bytes` counts 2 bytes each, the
/// storage a real system would use) while attention reads them without a
/// conversion per step.
#[derive(Debug, Clone)]
struct Store {
    values: Vec<f32>,
    half: bool,
}

impl Store {
    fn len(&self) -> usize {
        self.values.len()
    }

    fn push(&mut self, x: &[f32]) {
        if self.half {
            self.values
                .extend(x.iter().map(|&a| f16::from_f32(a).to_f32()));
        } else {
            self.values.extend_from_slice(x);
        }
    }

    /// Elements `start..start + len`.
    fn rows(&self, start: usize, len: usize) -> &[f32] {
        &self.values[start..start + len]
    }
}

/// The exact dense cache: keys and values of each `(layer, kv_head)` in a
/// row-major `tokens x head_dim` buffer.
#[derive(Debug, Clone)]
pub struct DenseCache {
    n_kv_heads: usize,
    head_dim: usize,
    precision: DensePrecision,
    /// `keys[layer * n_kv_heads + kv_head]`, `tokens x head_dim`.
    keys: Vec<Store>,
    /// Same layout as `keys`.
    values: Vec<Store>,
}

/// Tokens converted per block in [`DenseCache::attend`].
const TILE: usize = 64;

impl DenseCache {
    /// An empty cache for `n_layers x n_kv_heads` heads of `head_dim` channels.
    pub fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        precision: DensePrecision,
    ) -> Self {
        let empty = || match precision {
            DensePrecision::F32 => Store {
                values: Vec::new(),
                half: false,
            },
            DensePrecision::F16 => Store {
                values: Vec::new(),
                half: true,
            },
        };
        let n = n_layers * n_kv_heads;
        Self {
            n_kv_heads,
            head_dim,
            precision,
            keys: (0..n).map(|_| empty()).collect(),
            values: (0..n).map(|_| empty()).collect(),
        }
    }

    /// Storage precision.
    pub fn precision(&self) -> DensePrecision {
        self.precision
    }

    fn slot(&self, layer: usize, kv_head: usize) -> Result<usize> {
        let i = layer * self.n_kv_heads + kv_head;
        if kv_head >= self.n_kv_heads || i >= self.keys.len() {
            return Err(DecodeError::Cache {
                reason: format!("no head ({layer}, {kv_head}) in this cache"),
            });
        }
        Ok(i)
    }
}

impl AttentionCache for DenseCache {
    fn append(&mut self, layer: usize, kv_head: usize, key: &[f32], value: &[f32]) -> Result<()> {
        let i = self.slot(layer, kv_head)?;
        if key.len() != self.head_dim || value.len() != self.head_dim {
            return Err(DecodeError::Cache {
                reason: format!(
                    "key/value of {}/{} values, head_dim is {}",
                    key.len(),
                    value.len(),
                    self.head_dim
                ),
            });
        }
        self.keys[i].push(key);
        self.values[i].push(value);
        Ok(())
    }

    fn len(&self, layer: usize, kv_head: usize) -> usize {
        self.slot(layer, kv_head)
            .map_or(0, |i| self.keys[i].len() / self.head_dim)
    }

    /// Every query of the group reads each tile of keys and values after
    /// one conversion to f32; per query, the scores, the softmax and the
    /// weighted sum are formed in the same order as for a single query.
    fn attend_group(
        &self,
        layer: usize,
        kv_head: usize,
        queries: &[f32],
        visible: usize,
        scale: f32,
        out: &mut [f32],
    ) -> Result<()> {
        let i = self.slot(layer, kv_head)?;
        let d = self.head_dim;
        let len = self.keys[i].len() / d;
        if visible == 0
            || visible > len
            || queries.is_empty()
            || !queries.len().is_multiple_of(d)
            || out.len() != queries.len()
        {
            return Err(DecodeError::Cache {
                reason: format!(
                    "attend over {visible} of {len} tokens with queries {} / out {} (head_dim {d})",
                    queries.len(),
                    out.len()
                ),
            });
        }
        let g = queries.len() / d;
        let mut scores = vec![0f32; g * visible];
        let (keys, values) = (&self.keys[i], &self.values[i]);
        for t0 in (0..visible).step_by(TILE) {
            let n = TILE.min(visible - t0);
            let tile = keys.rows(t0 * d, n * d);
            for (q, sq) in queries
                .chunks_exact(d)
                .zip(scores.chunks_exact_mut(visible))
            {
                for (s, k) in sq[t0..t0 + n].iter_mut().zip(tile.chunks_exact(d)) {
                    *s = scale * dot(q, k);
                }
            }
        }
        let mut sums = vec![0f32; g];
        for (sq, sum) in scores.chunks_exact_mut(visible).zip(&mut sums) {
            let max = sq.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            for s in sq.iter_mut() {
                *s = (*s - max).exp();
                *sum += *s;
            }
        }
        out.fill(0.0);
        for t0 in (0..visible).step_by(TILE) {
            let n = TILE.min(visible - t0);
            let tile = values.rows(t0 * d, n * d);
            for ((sq, &sum), o) in scores
                .chunks_exact(visible)
                .zip(&sums)
                .zip(out.chunks_exact_mut(d))
            {
                for (&p, v) in sq[t0..t0 + n].iter().zip(tile.chunks_exact(d)) {
                    let w = p / sum;
                    for (o, &x) in o.iter_mut().zip(v) {
                        *o += w * x;
                    }
                }
            }
        }
        Ok(())
    }

    fn bytes(&self) -> usize {
        let per = match self.precision {
            DensePrecision::F32 => 4,
            DensePrecision::F16 => 2,
        };
        self.keys
            .iter()
            .chain(&self.values)
            .map(|s| s.len() * per)
            .sum()
    }

    fn bits_per_element(&self) -> f64 {
        match self.precision {
            DensePrecision::F32 => 32.0,
            DensePrecision::F16 => 16.0,
        }
    }
}

/// `a . b` with eight lanes of partial sums (vectorizable without
/// reassociating one scalar sum).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attend_equals_softmax_reference() {
        let d = 8;
        for precision in [DensePrecision::F32, DensePrecision::F16] {
            let mut c = DenseCache::new(2, 2, d, precision);
            let mut keys = Vec::new();
            let mut vals = Vec::new();
            for t in 0..100 {
                let k: Vec<f32> = (0..d)
                    .map(|j| ((t * 7 + j * 3) % 11) as f32 / 11.0 - 0.5)
                    .collect();
                let v: Vec<f32> = (0..d).map(|j| ((t * 5 + j) % 13) as f32 / 13.0).collect();
                c.append(1, 1, &k, &v).unwrap();
                keys.push(k);
                vals.push(v);
            }
            assert_eq!(c.len(1, 1), 100);
            assert_eq!(c.len(0, 0), 0);
            assert_eq!(
                c.bytes(),
                2 * 100
                    * d
                    * if precision == DensePrecision::F32 {
                        4
                    } else {
                        2
                    }
            );
            let q: Vec<f32> = (0..d).map(|j| j as f32 * 0.3 - 1.0).collect();
            let visible = 77;
            let mut out = vec![0f32; d];
            c.attend(1, 1, &q, visible, 0.5, &mut out).unwrap();
            let s: Vec<f64> = keys[..visible]
                .iter()
                .map(|k| 0.5 * k.iter().zip(&q).map(|(a, b)| (a * b) as f64).sum::<f64>())
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for j in 0..d {
                let want: f64 = (0..visible)
                    .map(|t| (s[t] - m).exp() / z * vals[t][j] as f64)
                    .sum();
                let tol = if precision == DensePrecision::F32 {
                    1e-5
                } else {
                    2e-3
                };
                assert!(
                    (want - out[j] as f64).abs() < tol,
                    "{precision:?} {j}: {want} vs {}",
                    out[j]
                );
            }
            assert!(c.attend(1, 1, &q, 101, 0.5, &mut out).is_err());
            assert!(c.attend(0, 2, &q, 1, 0.5, &mut out).is_err());
            assert!(c.append(0, 0, &q[..3], &q).is_err());
        }
    }
}
