//! The streaming pieces every CPU kernel shares: query checks and scaling,
//! the split of a layer's query heads by KV head, per-head accumulators with
//! an online softmax, and the full-precision token path (every token of a
//! dense cache; the sinks and the recent window of a compressed one).
//! Dependencies run one way: `layer` -> the kernels (`dense`, `pq`,
//! `scalar`) -> this module -> `math`.

use aqpim_kvcache::{KvShape, TokenSlices};
use rayon::prelude::*;

use crate::error::{check_queries, AttnError, Result};
use crate::math::{axpy, dot, f16_to_f32, OnlineSoftmax};

/// Tokens per block: scores of a block are computed, exponentiated and
/// accumulated before the next block is read.
pub(crate) const BLOCK: usize = 256;

/// Accumulators of one query head while its softmax streams over tokens:
/// the weighted sum of full-precision values `o` (`d`), the per-centroid
/// weights `w` of encoded values (`M * ksub`, empty for dense caches), both
/// relative to the running maximum of `softmax`.
#[derive(Debug, Clone)]
pub(crate) struct Acc {
    pub(crate) o: Vec<f32>,
    pub(crate) w: Vec<f32>,
    pub(crate) softmax: OnlineSoftmax,
}

impl Acc {
    pub(crate) fn new(d: usize, bins: usize) -> Self {
        Acc {
            o: vec![0.0; d],
            w: vec![0.0; bins],
            softmax: OnlineSoftmax::new(),
        }
    }

    /// Multiplies every accumulator by `f` (after the running maximum moved).
    pub(crate) fn rescale(&mut self, f: f32) {
        if f != 1.0 {
            self.o.iter_mut().for_each(|v| *v *= f);
            self.w.iter_mut().for_each(|v| *v *= f);
        }
    }
}

/// Scratch buffers reused across blocks.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub(crate) keys: Vec<f32>,
    pub(crate) values: Vec<f32>,
    pub(crate) scores: Vec<f32>,
    /// Key codes of a block transposed for the quantized-table scan
    /// (`ceil(block / 64)` blocks of `M x 64` bytes).
    pub(crate) codes: Vec<u8>,
    /// Value codes of a block transposed the same way, then packed into
    /// lane nibbles ([`aqpim_pq::pack_lane_nibbles`], in `vcodes`), for
    /// values weighed in SIMD lanes.
    pub(crate) vbytes: Vec<u8>,
    pub(crate) vcodes: Vec<u8>,
    /// The block's softmax weights, padded with zeros to whole 64-token
    /// blocks.
    pub(crate) weights: Vec<f32>,
}

/// Streams FP16 tokens (`keys`, `values`: the same number of tokens) into the
/// accumulators of every query head of a group (`queries`: `g x d`, already
/// multiplied by the softmax scale). K and V blocks are converted to f32 once
/// per block and shared by the group's query heads.
pub(crate) fn fp_tokens(
    queries: &[f32],
    keys: TokenSlices<'_>,
    values: TokenSlices<'_>,
    accs: &mut [Acc],
    scratch: &mut Scratch,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available (checked above).
        unsafe { fp_tokens_avx512(queries, keys, values, accs, scratch) };
        return;
    }
    fp_tokens_body(queries, keys, values, accs, scratch);
}

/// A safe `#[target_feature]` function: code compiled without AVX-512F
/// calls it only after checking for it at run time (its `unsafe` call site).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fp_tokens_avx512(
    queries: &[f32],
    keys: TokenSlices<'_>,
    values: TokenSlices<'_>,
    accs: &mut [Acc],
    scratch: &mut Scratch,
) {
    fp_tokens_body(queries, keys, values, accs, scratch);
}

#[inline(always)]
fn fp_tokens_body(
    queries: &[f32],
    keys: TokenSlices<'_>,
    values: TokenSlices<'_>,
    accs: &mut [Acc],
    scratch: &mut Scratch,
) {
    let d = keys.head_dim();
    let n = keys.len().min(values.len());
    let mut start = 0;
    while start < n {
        let b = BLOCK.min(n - start);
        scratch.keys.resize(b * d, 0.0);
        scratch.values.resize(b * d, 0.0);
        for t in 0..b {
            f16_to_f32(keys.token(start + t), &mut scratch.keys[t * d..(t + 1) * d]);
            f16_to_f32(
                values.token(start + t),
                &mut scratch.values[t * d..(t + 1) * d],
            );
        }
        block_body(queries, d, accs, scratch);
        start += b;
    }
}

/// Adds one block of f32 tokens (`scratch.keys`, `scratch.values`: `b x d`)
/// to the accumulators of every query head of a group.
pub(crate) fn f32_block(queries: &[f32], d: usize, accs: &mut [Acc], scratch: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available (checked above).
        unsafe { f32_block_avx512(queries, d, accs, scratch) };
        return;
    }
    block_body(queries, d, accs, scratch);
}

/// A safe `#[target_feature]` function: code compiled without AVX-512F
/// calls it only after checking for it at run time (its `unsafe` call site).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn f32_block_avx512(queries: &[f32], d: usize, accs: &mut [Acc], scratch: &mut Scratch) {
    block_body(queries, d, accs, scratch);
}

#[inline(always)]
fn block_body(queries: &[f32], d: usize, accs: &mut [Acc], scratch: &mut Scratch) {
    let b = scratch.keys.len() / d;
    scratch.scores.resize(b, 0.0);
    for (q, acc) in queries.chunks_exact(d).zip(accs.iter_mut()) {
        let scores = &mut scratch.scores[..b];
        for (s, k) in scores.iter_mut().zip(scratch.keys.chunks_exact(d)) {
            *s = dot(q, k);
        }
        let f = acc.softmax.absorb(scores);
        acc.rescale(f);
        for (p, v) in scores.iter().zip(scratch.values.chunks_exact(d)) {
            axpy(*p, v, &mut acc.o);
        }
    }
}

/// Writes `o / sum` of each accumulator into `out` (`g x d`).
pub(crate) fn finish(accs: &[Acc], out: &mut [f32]) {
    let d = out.len() / accs.len().max(1);
    for (acc, o) in accs.iter().zip(out.chunks_exact_mut(d)) {
        let inv = 1.0 / acc.softmax.sum;
        for (x, y) in o.iter_mut().zip(&acc.o) {
            *x = y * inv;
        }
    }
}

/// Scales a `g x d` block of queries by `scale` after checking it.
pub(crate) fn scaled_queries(
    queries: &[f32],
    heads: usize,
    d: usize,
    scale: f32,
) -> Result<Vec<f32>> {
    check_queries(queries, heads, d)?;
    Ok(queries.iter().map(|q| q * scale).collect())
}

/// Validates a layer's queries and output, scales the queries by
/// `1 / sqrt(d)`, and runs `kernel(kv_head, group_queries, group_out)` for
/// every KV head in parallel; `group_queries` and `group_out` are the
/// `(H / G) x d` rows of the query heads that read that KV head.
pub(crate) fn for_each_group<F>(
    shape: &KvShape,
    layer: usize,
    tokens: usize,
    queries: &[f32],
    out: &mut [f32],
    kernel: F,
) -> Result<()>
where
    F: Fn(usize, &[f32], &mut [f32]) -> Result<()> + Sync,
{
    let (h, d, g) = (shape.num_q_heads(), shape.head_dim(), shape.group_size());
    if layer >= shape.num_layers() {
        return Err(AttnError::shape(
            "layer",
            format!("< {}", shape.num_layers()),
            layer,
        ));
    }
    if out.len() != h * d {
        return Err(AttnError::shape(
            "attention output",
            format!("{h} heads x {d}"),
            format!("{} values", out.len()),
        ));
    }
    if tokens == 0 {
        return Err(AttnError::EmptyCache { layer });
    }
    let scaled = scaled_queries(queries, h, d, 1.0 / (d as f32).sqrt())?;
    out.par_chunks_mut(g * d)
        .zip(scaled.par_chunks(g * d))
        .enumerate()
        .try_for_each(|(kv_head, (o, q))| kernel(kv_head, q, o))
}
