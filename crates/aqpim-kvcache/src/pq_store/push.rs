//! Appending tokens to a [`PqStore`]: the first `S` become FP16 sinks, the
//! others enter the recent window, and the window's oldest tokens beyond `R`
//! (at the layer's flush points) are encoded, with the worst-encoded kept
//! as FP16 outliers under `outliers=`.

use aqpim_pq::transform::PreTransform;
use aqpim_pq::{CodeWidth, ProductQuantizer};
use half::f16;
use rayon::prelude::*;

use super::{blocks, OutlierToken, PqHead, PqStore};
use crate::error::Result;
use crate::shape::KvShape;
use crate::spec::PqSpec;
use crate::tokens::{check_layer_input, extend_f16, round_f16};

/// Tokens a head that a push must encode before its heads are encoded in
/// parallel (the same codes either way).
const PARALLEL_ENCODE: usize = 16;

/// Where one push's `n` tokens per head go, the same for every head of the
/// layer.
#[derive(Debug, Clone, Copy)]
struct Split {
    layer: usize,
    /// New tokens per head.
    n: usize,
    /// New tokens that become sinks.
    to_sinks: usize,
    /// Tokens encoded by this push: the window's oldest, then new ones.
    overflow: usize,
    /// Of `overflow`, tokens taken from the window.
    from_ring: usize,
    /// Of `overflow`, new tokens encoded without entering the window.
    from_new: usize,
    /// Encoded tokens of the layer before this push.
    first_encoded: usize,
}

/// What every head of one push reads.
struct Shared<'a> {
    shape: KvShape,
    spec: PqSpec,
    keep: [bool; 2],
    widths: [CodeWidth; 2],
    codebooks: &'a [Vec<Option<ProductQuantizer>>; 2],
    transforms: &'a [Vec<Option<PreTransform>>; 2],
    split: Split,
}

impl PqStore {
    /// Appends `keys` and `values` (`H x n x d`) to `layer`, training the
    /// layer's codebooks first when tokens are due to be encoded and none
    /// are there yet.
    pub(super) fn push(
        &mut self,
        layer: usize,
        keys: &[f32],
        values: &[f32],
        op: &'static str,
    ) -> Result<()> {
        let n = check_layer_input(&self.shape, layer, keys, values, op)?;
        if n == 0 {
            return Ok(());
        }
        let reg = self.layers[layer].regions;
        let to_sinks = self.pq.regions.sinks.saturating_sub(reg.sinks).min(n);
        let target = self
            .pq
            .encoded_target(reg.total() + n, layer, self.shape.num_layers());
        let need = target.saturating_sub(reg.encoded);
        if need > 0 && !self.layer_ready(layer) && reg.total() + n >= self.pq.train_threshold() {
            self.train_layer(layer, keys, values, n)?;
        }
        let overflow = if need > 0 && self.layer_ready(layer) {
            need
        } else {
            0
        };
        let from_ring = overflow.min(reg.recent);
        let split = Split {
            layer,
            n,
            to_sinks,
            overflow,
            from_ring,
            from_new: overflow - from_ring,
            first_encoded: reg.encoded,
        };
        let shared = Shared {
            shape: self.shape,
            spec: self.pq,
            keep: self.keeps_blocks(self.class(layer)),
            widths: self.widths[self.class(layer)],
            codebooks: &self.codebooks,
            transforms: &self.transforms,
            split,
        };
        let work = |(h, head): (usize, &mut PqHead)| push_head(&shared, h, head, keys, values);
        let heads = &mut self.layers[layer].heads;
        let encoded = if overflow >= PARALLEL_ENCODE {
            // A block to encode: nearest-centroid searches, worth spreading
            // over threads.
            heads
                .par_iter_mut()
                .enumerate()
                .map(work)
                .collect::<Result<Vec<_>>>()?
        } else {
            // Copies, or a decode step's few tokens a head (microseconds of
            // encoding): cheaper than waking the thread pool, whose threads
            // would also wait on a decode loop's busy workers for the cores.
            heads
                .iter_mut()
                .enumerate()
                .map(work)
                .collect::<Result<Vec<_>>>()?
        };
        if overflow > 0 {
            self.refine_codebooks(layer, encoded)?;
        }
        let r = &mut self.layers[layer].regions;
        r.sinks += to_sinks;
        r.encoded += overflow;
        r.recent = r.recent - from_ring + (n - to_sinks - split.from_new);
        Ok(())
    }
}

/// One head's part of a push: sinks, encoding, the window and outliers.
fn push_head(
    c: &Shared<'_>,
    h: usize,
    head: &mut PqHead,
    keys: &[f32],
    values: &[f32],
) -> Result<[Encoded; 2]> {
    let Split {
        layer,
        n,
        to_sinks,
        overflow,
        from_new,
        ..
    } = c.split;
    let d = c.shape.head_dim();
    let mut rows: [Vec<f32>; 2] = Default::default();
    let mut encoded: [Encoded; 2] = Default::default();
    let mut errors = vec![0f32; overflow];
    for p in 0..2 {
        let x = &[keys, values][p][h * n * d..(h + 1) * n * d];
        extend_f16(&mut head.sinks[p], &x[..to_sinks * d]);
        let fresh = &x[to_sinks * d..];
        if overflow > 0 {
            let g = c.spec.training.share.group_of(&c.shape, layer, h);
            let (buf, e) = encode_part(c, p, g, head, &fresh[..from_new * d], &mut errors)?;
            rows[p] = buf;
            encoded[p] = e;
        }
        head.recent[p].push_f32(&fresh[from_new * d..]);
    }
    if c.spec.regions.outliers_per_mille > 0 {
        keep_outliers(c, head, &errors, &rows);
    }
    Ok(encoded)
}

/// Encodes part `p` of the split's overflow (the window's oldest tokens,
/// then `fresh`) with group `g`'s codebook, appends the codes (and whole
/// transposed blocks), adds each token's relative error to `errors` under
/// `outliers=`, and returns the encoded rows (FP16-exact) and what was
/// encoded.
fn encode_part(
    c: &Shared<'_>,
    p: usize,
    g: usize,
    head: &mut PqHead,
    fresh: &[f32],
    errors: &mut [f32],
) -> Result<(Vec<f32>, Encoded)> {
    let d = c.shape.head_dim();
    let pq = c.codebooks[p][g]
        .as_ref()
        .expect("layer_ready checked every group");
    let mut buf = Vec::with_capacity(c.split.overflow * d);
    head.recent[p].pop_front_f32(c.split.from_ring, &mut buf);
    buf.extend(round_f16(fresh));
    let xt = match &c.transforms[p][g] {
        Some(t) => t.apply(&buf)?,
        None => buf.clone(),
    };
    let codes = encode_append(pq, &xt, c.widths[p], &mut head.codes[p])?;
    if c.keep[p] {
        let m = pq.params().num_subspaces();
        let lanes = blocks::lane_nibbles(p);
        blocks::sync(&head.codes[p], c.widths[p], m, lanes, &mut head.blocks[p])?;
    }
    if c.spec.regions.outliers_per_mille > 0 {
        let approx = pq.decode(&codes)?;
        for ((e, x), a) in errors
            .iter_mut()
            .zip(xt.chunks_exact(d))
            .zip(approx.chunks_exact(d))
        {
            let err: f32 = x.iter().zip(a).map(|(u, v)| (u - v) * (u - v)).sum();
            let norm: f32 = x.iter().map(|u| u * u).sum();
            *e += err / norm.max(f32::MIN_POSITIVE);
        }
    }
    Ok((buf, Encoded { inputs: xt, codes }))
}

/// What one head's push encoded for one part: the codebook's inputs (after
/// the pre-transform, `k x d`) and their codes (one per byte).
#[derive(Debug, Default)]
pub(super) struct Encoded {
    inputs: Vec<f32>,
    codes: Vec<u8>,
}

impl PqStore {
    /// Refines (`refine=W`) the codebooks of `layer`'s heads with what this
    /// push encoded, head by head in order (the same result for any thread
    /// count): every centroid a code names moves to the mean of its prior
    /// weight `W` and the tokens encoded with it ([`ProductQuantizer::refine`]).
    fn refine_codebooks(&mut self, layer: usize, encoded: Vec<[Encoded; 2]>) -> Result<()> {
        let refine = self.pq.refine_at(layer);
        if refine == [0, 0] {
            return Ok(());
        }
        let round = self.pq.training.fp16_codebooks;
        for (h, parts) in encoded.into_iter().enumerate() {
            let g = self.pq.training.share.group_of(&self.shape, layer, h);
            for (p, e) in parts.into_iter().enumerate() {
                if refine[p] == 0 || e.codes.is_empty() || self.codebooks[p][g].is_none() {
                    continue;
                }
                if self.refine_counts[p][g].is_empty() {
                    self.refine_counts[p][g] = self.initial_counts(p, g, layer, &e)?;
                }
                let counts = &mut self.refine_counts[p][g];
                if let Some(pq) = self.codebooks[p][g].as_mut() {
                    pq.refine(&e.inputs, &e.codes, counts, round)?;
                }
            }
        }
        Ok(())
    }

    /// Each centroid's weight before group `g`'s first refinement in this
    /// store: the prior `W`, plus one for every code that names it among the
    /// tokens the group encoded before this push (a store read from a file
    /// goes on as if it had never been saved). The codes of the push being
    /// refined (as many a head as `now` holds, in every head of `layer`) are
    /// left out: each head's refinement counts its own.
    fn initial_counts(&self, p: usize, g: usize, layer: usize, now: &Encoded) -> Result<Vec<f32>> {
        // A group never spans format classes, so `layer`'s is the group's.
        let c = self.class(layer);
        let params = self.params[c][p];
        let (m_all, ksub) = (params.num_subspaces(), params.ksub());
        let mut counts = vec![self.pq.refine_at(layer)[p] as f32; m_all * ksub];
        for (l, held) in self.layers.iter().enumerate() {
            for (h, head) in held.heads.iter().enumerate() {
                if self.pq.training.share.group_of(&self.shape, l, h) != g {
                    continue;
                }
                let codes = self.widths[c][p].unpack(&head.codes[p], m_all)?;
                let fresh = if l == layer { now.codes.len() } else { 0 };
                for row in codes[..codes.len().saturating_sub(fresh)].chunks_exact(m_all) {
                    for (m, &j) in row.iter().enumerate() {
                        counts[m * ksub + usize::from(j)] += 1.0;
                    }
                }
            }
        }
        Ok(counts)
    }
}

/// Keeps the worst-encoded tokens of this push as FP16 outliers, within the
/// budget each encoded count allows, replacing weaker ones.
fn keep_outliers(c: &Shared<'_>, head: &mut PqHead, errors: &[f32], rows: &[Vec<f32>; 2]) {
    let d = c.shape.head_dim();
    for (i, &e) in errors.iter().enumerate() {
        let index = c.split.first_encoded + i;
        let budget = c.spec.outlier_budget(index + 1);
        let token = || OutlierToken {
            index,
            error: e,
            key: rows[0][i * d..(i + 1) * d]
                .iter()
                .map(|&v| f16::from_f32(v))
                .collect(),
            value: rows[1][i * d..(i + 1) * d]
                .iter()
                .map(|&v| f16::from_f32(v))
                .collect(),
        };
        if head.outliers.len() < budget {
            head.outliers.push(token());
        } else if budget > 0 {
            let (weakest, _) = head
                .outliers
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.error.total_cmp(&b.1.error))
                .expect("budget > 0 and the list is full");
            if e > head.outliers[weakest].error {
                head.outliers.remove(weakest);
                head.outliers.push(token());
            }
        }
    }
}

/// Encodes `data` (`k x d`, FP16-exact) with `pq` and appends the codes to
/// `out` in the `width` layout; returns the codes, one per byte.
fn encode_append(
    pq: &ProductQuantizer,
    data: &[f32],
    width: CodeWidth,
    out: &mut Vec<u8>,
) -> Result<Vec<u8>> {
    let m = pq.params().num_subspaces();
    let k = data.len() / pq.params().dim();
    let codes = if k == 1 {
        let mut c = vec![0u8; m];
        pq.encode_one(data, &mut c)?;
        c
    } else {
        pq.encode(data)?
    };
    width.pack_into(&codes, m, out)?;
    Ok(codes)
}
