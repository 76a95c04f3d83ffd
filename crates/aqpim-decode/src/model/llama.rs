//! The Llama-family forward pass: RMSNorm, RoPE, grouped-query attention
//! through a [`AttentionCache`], SwiGLU feed-forward, (tied) output projection.
//!
//! For a block of `n` tokens at positions `p0 .. p0 + n` (`p0` = tokens
//! already cached), each layer computes, per token row `x` (`dim` values):
//!
//! ```text
//! h = rmsnorm(x) * w_attn_norm            rmsnorm(x) = x / sqrt(mean(x^2) + eps)
//! q = Wq h, k = Wk h, v = Wv h            n_heads / n_kv_heads heads of head_dim
//! q, k = rope(q, pos), rope(k, pos)
//! cache.append(k, v); o_h = attend(q_h, visible = pos + 1)   (causal)
//! x += Wo o
//! h = rmsnorm(x) * w_ffn_norm
//! x += Wdown (silu(Wgate h) * (Wup h))    silu(a) = a / (1 + e^-a)
//! ```
//!
//! and finally `logits = Wout (rmsnorm(x) * w_out_norm)`, `Wout` being the
//! token embedding when embeddings are tied.

use rayon::prelude::*;

use crate::error::{DecodeError, Result};
use crate::model::cache::AttentionCache;
use crate::model::config::{ActivationPrecision, LlamaConfig, RopeMode};
use crate::model::gguf::GgufFile;
use crate::model::quant::{split_columns, Q8Activations, QMatrix};
use crate::model::weights::{Weight, WeightSource};

/// Weights of one transformer block.
#[derive(Debug, Clone)]
struct Layer {
    attn_norm: Vec<f32>,
    /// `Wq`, `Wk`, `Wv`, applied to the same input.
    wqkv: Stacked<3>,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    /// `Wgate`, `Wup`, applied to the same input.
    w_gate_up: Stacked<2>,
    w_down: QMatrix,
}

/// Matrices applied to the same input. When they share a storage type they
/// are stacked by rows into one matrix, so that one parallel product (one
/// pass over the input, one thread hand-off) serves them all.
#[derive(Debug, Clone)]
struct Stacked<const N: usize> {
    parts: [QMatrix; N],
    fused: Option<QMatrix>,
}

impl<const N: usize> Stacked<N> {
    fn new(parts: [QMatrix; N]) -> Self {
        let fused = QMatrix::concat_rows(&parts.each_ref());
        Self { parts, fused }
    }

    /// Bytes of weight storage (the fused copy replaces the parts at run time).
    fn bytes(&self) -> usize {
        self.parts.iter().map(QMatrix::bytes).sum()
    }

    /// `X W_i^T` for each part: `x` is `n x cols`, result `i` is `n x rows_i`
    /// (a single row with `activations`' arithmetic, see [`product`]).
    fn apply(
        &self,
        x: &[f32],
        n: usize,
        activations: ActivationPrecision,
    ) -> Result<[Vec<f32>; N]> {
        let Some(f) = &self.fused else {
            let mut out: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
            for (o, part) in out.iter_mut().zip(&self.parts) {
                *o = product(part, x, n, activations)?;
            }
            return Ok(out);
        };
        let rows: [usize; N] = std::array::from_fn(|i| self.parts[i].rows());
        // A single row may take the 8-bit product, cut into the parts
        // after; longer inputs write the parts directly.
        let outs = if n == 1 {
            split_columns(&product(f, x, n, activations)?, &rows)
        } else {
            f.matmul_parts(x, n, &rows)
        };
        let mut outs = outs.into_iter();
        Ok(std::array::from_fn(|_| outs.next().unwrap_or_default()))
    }
}

/// `X W^T` for `n` rows of `x` (`n x cols`): [`QMatrix::matmul`], except
/// that a single row with [`ActivationPrecision::Q8`] goes through
/// [`QMatrix::gemv_q8`] (8-bit activations, integer block dot products)
/// when `w`'s storage type has such a product. Prefill (`n > 1`) is f32
/// either way.
fn product(w: &QMatrix, x: &[f32], n: usize, activations: ActivationPrecision) -> Result<Vec<f32>> {
    if n == 1 && activations == ActivationPrecision::Q8 && w.ty().takes_q8_activations() {
        let mut y = vec![0f32; w.rows()];
        w.gemv_q8(&Q8Activations::quantize(x)?, &mut y)?;
        return Ok(y);
    }
    Ok(w.matmul(x, n))
}

/// The attention of [`Llama::block`]: `(q, k, v, out)`, see there.
pub(crate) type BlockAttention<'a> =
    dyn FnMut(&[f32], &[f32], &[f32], &mut [f32]) -> Result<()> + 'a;

/// Which rows of logits [`Llama::forward`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// One row per input token (`n x vocab`).
    All,
    /// Only the last token's row (`vocab`).
    Last,
}

/// A Llama-family model with its weights in their compact storage types.
#[derive(Debug, Clone)]
pub struct Llama {
    config: LlamaConfig,
    token_embd: QMatrix,
    output: Option<QMatrix>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// `inv_freq[i] = base^(-2i / n_rot)`, `n_rot / 2` values.
    inv_freq: Vec<f64>,
    /// The arithmetic of single-token products (f32 unless set).
    activations: ActivationPrecision,
}

impl Llama {
    /// Loads the model from a GGUF file (tensor names as llama.cpp writes them).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let config = LlamaConfig::from_gguf(file)?;
        Self::from_gguf_with(file, config)
    }

    /// Loads the weights of `file` under an explicit configuration (for
    /// example with another [`RopeMode`]).
    pub fn from_gguf_with(file: &GgufFile, config: LlamaConfig) -> Result<Self> {
        Self::from_weights(file, config)
    }

    /// Loads the weights of any [`WeightSource`] (a GGUF file, a Hugging
    /// Face checkpoint) under `config`, checking every shape against it.
    pub fn from_weights(src: &dyn WeightSource, config: LlamaConfig) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let (dim, hd) = (c.dim, c.head_dim);
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            layers.push(Layer {
                attn_norm: src.vector(Weight::AttnNorm(l), dim)?,
                wqkv: Stacked::new([
                    src.matrix(Weight::Q(l), c.n_heads * hd, dim)?,
                    src.matrix(Weight::K(l), c.n_kv_heads * hd, dim)?,
                    src.matrix(Weight::V(l), c.n_kv_heads * hd, dim)?,
                ]),
                wo: src.matrix(Weight::AttnOutput(l), dim, c.n_heads * hd)?,
                ffn_norm: src.vector(Weight::FfnNorm(l), dim)?,
                w_gate_up: Stacked::new([
                    src.matrix(Weight::Gate(l), c.ffn_dim, dim)?,
                    src.matrix(Weight::Up(l), c.ffn_dim, dim)?,
                ]),
                w_down: src.matrix(Weight::Down(l), dim, c.ffn_dim)?,
            });
        }
        let token_embd = src.matrix(Weight::TokenEmbd, c.vocab_size, dim)?;
        let output = if c.tied_embeddings {
            None
        } else {
            Some(src.matrix(Weight::Output, c.vocab_size, dim)?)
        };
        let inv_freq = (0..c.n_rot / 2)
            .map(|i| c.rope_base.powf(-2.0 * i as f64 / c.n_rot as f64))
            .collect();
        Ok(Self {
            output_norm: src.vector(Weight::OutputNorm, dim)?,
            config,
            token_embd,
            output,
            layers,
            inv_freq,
            activations: ActivationPrecision::F32,
        })
    }

    /// The arithmetic of single-token (decode) matrix-vector products.
    pub fn activations(&self) -> ActivationPrecision {
        self.activations
    }

    /// Sets the arithmetic of single-token (decode) matrix-vector products;
    /// prefill blocks of several tokens stay f32.
    pub fn set_activations(&mut self, activations: ActivationPrecision) {
        self.activations = activations;
    }

    /// The architecture.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Bytes of weight storage.
    pub fn weight_bytes(&self) -> usize {
        let mats = self.layers.iter().map(|l| {
            l.wqkv.bytes()
                + l.w_gate_up.bytes()
                + l.wo.bytes()
                + l.w_down.bytes()
                + 4 * (l.attn_norm.len() + l.ffn_norm.len())
        });
        mats.sum::<usize>()
            + self.token_embd.bytes()
            + self.output.as_ref().map_or(0, QMatrix::bytes)
            + 4 * self.output_norm.len()
    }

    /// Rotates one head (`head_dim` values) in place for position `pos`.
    pub fn rope(&self, x: &mut [f32], pos: usize) {
        self.rope_with(x, &self.rotations(pos, 1));
    }

    /// `(sin, cos)` of `pos * inv_freq[i]` for positions `pos .. pos + n`:
    /// `n x n_rot/2` pairs, computed once per forward and shared by every
    /// head and layer.
    fn rotations(&self, pos: usize, n: usize) -> Vec<(f64, f64)> {
        (pos..pos + n)
            .flat_map(|p| self.inv_freq.iter().map(move |&f| (p as f64 * f).sin_cos()))
            .collect()
    }

    /// Rotates one head with the `n_rot/2` `(sin, cos)` pairs of its position.
    fn rope_with(&self, x: &mut [f32], rot: &[(f64, f64)]) {
        let half = self.config.n_rot / 2;
        for (i, &(sin, cos)) in rot.iter().enumerate().take(half) {
            let (a, b) = match self.config.rope_mode {
                RopeMode::Normal => (2 * i, 2 * i + 1),
                RopeMode::Neox => (i, i + half),
            };
            let (x0, x1) = (x[a] as f64, x[b] as f64);
            x[a] = (x0 * cos - x1 * sin) as f32;
            x[b] = (x0 * sin + x1 * cos) as f32;
        }
    }

    fn rmsnorm(&self, x: &[f32], w: &[f32]) -> Vec<f32> {
        let d = self.config.dim;
        let mut out = vec![0f32; x.len()];
        each_rows(&mut out, d, |t0, rows| {
            for (t, or) in rows.chunks_exact_mut(d).enumerate() {
                let xr = &x[(t0 + t) * d..(t0 + t + 1) * d];
                let ms = xr.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>() / d as f64;
                let inv = (1.0 / (ms + self.config.norm_eps).sqrt()) as f32;
                for ((o, &a), &g) in or.iter_mut().zip(xr).zip(w) {
                    *o = a * inv * g;
                }
            }
        });
        out
    }

    /// Runs `tokens` through the model at positions following what `cache`
    /// already holds, appending their keys and values to it, and returns
    /// logits (`n x vocab` for [`Logits::All`], `vocab` for [`Logits::Last`]).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut dyn AttentionCache,
        which: Logits,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let n = tokens.len();
        if n == 0 {
            return Err(DecodeError::InvalidArgument {
                name: "tokens",
                reason: "no tokens to run".into(),
            });
        }
        let p0 = cache.len(0, 0);
        self.check_positions(p0, n)?;
        let (dim, hd, nkv) = (c.dim, c.head_dim, c.n_kv_heads);
        let mut x = self.embed(tokens)?;
        let scale = 1.0 / (hd as f32).sqrt();
        let gd = c.group_size() * hd;
        let rot = self.rotations(p0, n);
        for l in 0..c.n_layers {
            self.block(l, &mut x, n, &rot, &mut |q, k, v, attn| {
                for t in 0..n {
                    for g in 0..nkv {
                        let s = (t * nkv + g) * hd;
                        cache.append(l, g, &k[s..s + hd], &v[s..s + hd])?;
                    }
                }
                cache.commit(l)?;
                let cache_ref: &dyn AttentionCache = cache;
                // One task per (token, KV head): the group's query heads are
                // adjacent in `q` and read their KV head together.
                let failed = std::sync::Mutex::new(None);
                super::spin::for_each_chunk_mut(attn, gd, &|i, out| {
                    let (t, g) = (i / nkv, i % nkv);
                    if let Err(e) = cache_ref.attend_group(
                        l,
                        g,
                        &q[i * gd..(i + 1) * gd],
                        p0 + t + 1,
                        scale,
                        out,
                    ) {
                        *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    }
                });
                match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            })?;
        }
        let rows = match which {
            Logits::All => &x[..],
            Logits::Last => &x[(n - 1) * dim..],
        };
        self.logits(rows)
    }

    /// Refuses `n` tokens after `p0` cached ones when they pass the context.
    pub(crate) fn check_positions(&self, p0: usize, n: usize) -> Result<()> {
        let context = self.config.context_length;
        if p0 + n > context {
            return Err(DecodeError::InvalidArgument {
                name: "tokens",
                reason: format!(
                    "positions up to {} exceed the model's context of {context}",
                    p0 + n
                ),
            });
        }
        Ok(())
    }

    /// The token embeddings of `tokens`, `n x dim`; an id outside the
    /// vocabulary is an error.
    pub(crate) fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let c = &self.config;
        let mut x = vec![0f32; tokens.len() * c.dim];
        for (row, &t) in x.chunks_exact_mut(c.dim).zip(tokens) {
            if t as usize >= c.vocab_size {
                return Err(DecodeError::TokenOutOfRange {
                    id: t,
                    vocab: c.vocab_size,
                });
            }
            self.token_embd.dequantize_row(t as usize, row)?;
        }
        Ok(x)
    }

    /// `(sin, cos)` pairs of positions `pos .. pos + n` (see [`Llama::block`]).
    pub(crate) fn rope_table(&self, pos: usize, n: usize) -> Vec<(f64, f64)> {
        self.rotations(pos, n)
    }

    /// The post-RoPE queries, keys and values of block `l` for the `n` rows
    /// of `x` (`n x dim`), as [`Llama::block`] hands them to its attention.
    pub(crate) fn qkv(
        &self,
        l: usize,
        x: &[f32],
        n: usize,
        rot: &[(f64, f64)],
    ) -> Result<[Vec<f32>; 3]> {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let layer = &self.layers[l];
        let half = self.inv_freq.len();
        let h = self.rmsnorm(x, &layer.attn_norm);
        let [mut q, mut k, v] = layer.wqkv.apply(&h, n, self.activations)?;
        for (m, heads) in [(&mut q, nh), (&mut k, nkv)] {
            each_rows(m, heads * hd, |t0, rows| {
                for (t, row) in rows.chunks_exact_mut(heads * hd).enumerate() {
                    let r = &rot[(t0 + t) * half..(t0 + t + 1) * half];
                    for head in row.chunks_exact_mut(hd) {
                        self.rope_with(head, r);
                    }
                }
            });
        }
        Ok([q, k, v])
    }

    /// Transformer block `l` on the `n` rows of `x` (`n x dim`), in place.
    /// `rot` holds the RoPE pairs of the rows' positions
    /// ([`Llama::rope_table`]). `attention(q, k, v, out)` receives the
    /// post-RoPE queries (`n x n_heads*head_dim`), keys and values (`n x
    /// n_kv_heads*head_dim`, rows by token, heads adjacent) and writes the
    /// attention output into `out` (`n x n_heads*head_dim`, zeroed).
    pub(crate) fn block(
        &self,
        l: usize,
        x: &mut [f32],
        n: usize,
        rot: &[(f64, f64)],
        attention: &mut BlockAttention<'_>,
    ) -> Result<()> {
        let c = &self.config;
        let (hd, nh) = (c.head_dim, c.n_heads);
        let layer = &self.layers[l];
        let [q, k, v] = self.qkv(l, x, n, rot)?;
        let mut attn = vec![0f32; n * nh * hd];
        attention(&q, &k, &v, &mut attn)?;
        drop((q, k, v));
        let o = product(&layer.wo, &attn, n, self.activations)?;
        add_rows(x, &o, c.dim);
        let h = self.rmsnorm(x, &layer.ffn_norm);
        let [mut gate, up] = layer.w_gate_up.apply(&h, n, self.activations)?;
        let ffn = up.len() / n.max(1);
        each_rows(&mut gate, ffn, |t0, rows| {
            for (g, u) in rows.iter_mut().zip(&up[t0 * ffn..]) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        });
        drop(up);
        let down = product(&layer.w_down, &gate, n, self.activations)?;
        add_rows(x, &down, c.dim);
        Ok(())
    }

    /// Logits of the final hidden rows `rows` (`m x dim`): `m x vocab`.
    pub(crate) fn logits(&self, rows: &[f32]) -> Result<Vec<f32>> {
        let h = self.rmsnorm(rows, &self.output_norm);
        let out = self.output.as_ref().unwrap_or(&self.token_embd);
        product(out, &h, h.len() / self.config.dim, self.activations)
    }
}

/// Rows from which a block's per-row steps (norms, RoPE, SwiGLU, residual
/// adds) run in parallel, and rows per task there. A decode step's few rows
/// stay on the calling thread, where a hand-off would cost more than the
/// work; the long blocks of prefill and calibration use every thread.
const PAR_MIN_ROWS: usize = 256;
const ROW_TASK: usize = 64;

/// `f(first_row, rows)` over `data` (rows of `width` values) cut into tasks
/// of [`ROW_TASK`] rows, in parallel from [`PAR_MIN_ROWS`] rows. Each row is
/// computed the same way either way, so the result does not depend on it.
fn each_rows(data: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if width == 0 || data.len() < PAR_MIN_ROWS * width {
        f(0, data);
        return;
    }
    data.par_chunks_mut(ROW_TASK * width)
        .enumerate()
        .for_each(|(c, rows)| f(c * ROW_TASK, rows));
}

/// `x += y` (both rows of `width` values), rows in parallel as [`each_rows`].
fn add_rows(x: &mut [f32], y: &[f32], width: usize) {
    each_rows(x, width, |t0, rows| {
        let ys = &y[t0 * width..t0 * width + rows.len()];
        rows.iter_mut().zip(ys).for_each(|(a, b)| *a += b);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_steps_see_every_row_once_with_its_index() {
        // Below, at and well past the parallel threshold, with a ragged last task.
        for n in [1, PAR_MIN_ROWS - 1, PAR_MIN_ROWS, 3 * PAR_MIN_ROWS + 17] {
            let width = 5;
            let mut data = vec![0f32; n * width];
            each_rows(&mut data, width, |t0, rows| {
                for (t, row) in rows.chunks_exact_mut(width).enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v += ((t0 + t) * width + j) as f32;
                    }
                }
            });
            let want: Vec<f32> = (0..n * width).map(|i| i as f32).collect();
            assert_eq!(data, want, "n = {n}");
            let mut x = want.clone();
            add_rows(&mut x, &want, width);
            assert!(x.iter().zip(&want).all(|(a, b)| *a == 2.0 * b), "n = {n}");
        }
    }
}
