//! Offline codebook calibration: run the model over calibration text, collect
//! every layer's and KV head's post-RoPE keys and values, and train one K and
//! one V product quantizer per (layer, KV head), as a serving system would do
//! once per model. Codebooks are saved as `aqpim-pq` codebook files in a
//! directory, `layer{L:03}_head{H:02}_{k|v}.pqcb`, and loaded into a PQ store
//! before it sees any token.
//!
//! The recording forward pass runs layer by layer over every chunk at once
//! (whole-sequence causal attention, `causal`), and a
//! layer's codebooks train while the next layer runs: the keys and values of
//! two layers are held at a time, not of the whole model.
//!
//! Specs with pre-transforms (`center`, `scale`, `layout`, `whiten`) also
//! save one `layer{L:03}_head{H:02}_{k|v}.pqxf` per codebook. `whiten=` fits
//! the key metric to the second moment of the calibration queries of the KV
//! head's query group; `vweight=true` weights each value in k-means by the
//! mean attention it receives from the calibration queries that would see it
//! encoded (those at least `window` positions later), leaving out each
//! chunk's first `sinks` tokens, which the store keeps in FP16.

use std::path::{Path, PathBuf};

use aqpim_kvcache::{fit_transform, KvPart, PqSpec, PqStore};
use aqpim_pq::transform::PreTransform;
use aqpim_pq::{Init, ProductQuantizer, TrainOptions};
use rayon::prelude::*;

use crate::error::{DecodeError, Result};
use crate::model::causal::{self, Dims, HeadStats, StatsRequest};
use crate::model::llama::Llama;

/// The calibrated codebooks of one (layer, KV head), with their pre-transforms.
#[derive(Debug, Clone)]
pub struct HeadBooks {
    /// Key codebook (over transformed keys if `key_transform` is set).
    pub keys: ProductQuantizer,
    /// Value codebook.
    pub values: ProductQuantizer,
    /// Key pre-transform (`None`: identity).
    pub key_transform: Option<PreTransform>,
    /// Value pre-transform.
    pub value_transform: Option<PreTransform>,
}

/// Calibrated codebooks of a whole model: `[layer][kv_head]`.
pub type Codebooks = Vec<Vec<HeadBooks>>;

/// The chunks of the calibration passes, and the sequences the forward
/// pass actually runs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    /// `(start, len)` of every chunk, pass by pass: the order of the
    /// calibration sample.
    chunks: Vec<(usize, usize)>,
    /// `(start, len)` of each sequence run through the model.
    sequences: Vec<(usize, usize)>,
    /// Per chunk, the sequence whose first `len` positions it is.
    chunk_sequence: Vec<usize>,
}

impl Plan {
    /// Cuts `n_tokens` into chunks of each length (capped at `context`),
    /// one pass per length. With `share_prefixes`, chunks that start at
    /// the same token run once, as the longest of them: a causal model gives
    /// a chunk's prefix the same keys and values as the prefix alone.
    fn new(n_tokens: usize, chunk_lengths: &[usize], context: usize, share_prefixes: bool) -> Self {
        let chunks: Vec<(usize, usize)> = chunk_lengths
            .iter()
            .flat_map(|&len| {
                let len = len.min(context);
                (0..n_tokens)
                    .step_by(len)
                    .map(move |s| (s, len.min(n_tokens - s)))
            })
            .collect();
        let mut sequences: Vec<(usize, usize)> = Vec::new();
        let mut chunk_sequence = Vec::with_capacity(chunks.len());
        for &(start, len) in &chunks {
            match sequences
                .iter()
                .position(|s| share_prefixes && s.0 == start)
            {
                Some(i) => {
                    sequences[i].1 = sequences[i].1.max(len);
                    chunk_sequence.push(i);
                }
                None => {
                    chunk_sequence.push(sequences.len());
                    sequences.push((start, len));
                }
            }
        }
        Self {
            chunks,
            sequences,
            chunk_sequence,
        }
    }
}

/// One layer's recording: per sequence its post-RoPE keys and values (`len
/// x n_kv_heads*d`, rows by position), and per KV head the query
/// statistics of every chunk, in chunk order.
struct LayerRecord {
    kv: Vec<(Vec<f32>, Vec<f32>)>,
    stats: Vec<HeadStats>,
}

/// Collects post-RoPE keys and values of `tokens` and trains the codebooks
/// that `spec` asks for (`dsub`, key and value bits, iterations, seed).
///
/// `chunk_lengths` lists one pass over `tokens` per entry: a pass cuts them
/// into chunks of at most that many tokens, each run as a fresh sequence, so
/// the calibration sample holds keys at the positions those lengths reach
/// (`[2048, 8192]`: every token twice, at a position below 2,048 and at its
/// place in an 8K sequence). The sample is the chunks' keys and values in
/// pass and chunk order.
///
/// The model runs layer by layer over every sequence at once (blocked
/// causal attention, `causal`), and the codebooks of layer `l` train while
/// layer `l + 1` runs, so only two layers' keys and values are held at a
/// time. Chunks that start at the same token run once when no query
/// statistics are needed (the 2K pass's first chunk is the 8K chunk's
/// prefix). Everything is split so that the codebooks do not depend on the
/// thread count. `progress(what, done, total)` is called after each layer.
pub fn calibrate(
    model: &Llama,
    tokens: &[u32],
    spec: &PqSpec,
    chunk_lengths: &[usize],
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Codebooks> {
    let c = model.config();
    let (layers, d) = (c.n_layers, c.head_dim);
    // A spec the model cannot hold (a `wide_layers=` or `fp16_layers=`
    // layer it lacks, a dsub that does not divide the head) is refused
    // before the forward pass, not after it.
    let shape = aqpim_kvcache::KvShape::with_query_heads(layers, c.n_kv_heads, c.n_heads, d)?;
    aqpim_kvcache::KvSpec::Pq(*spec).validate(&shape)?;
    if tokens.is_empty() {
        return Err(DecodeError::InvalidArgument {
            name: "tokens",
            reason: "no calibration tokens".into(),
        });
    }
    if chunk_lengths.is_empty() || chunk_lengths.contains(&0) {
        return Err(DecodeError::InvalidArgument {
            name: "chunk_lengths",
            reason: format!("{chunk_lengths:?}: give at least one positive chunk length"),
        });
    }
    let request = StatsRequest {
        moments: spec.transforms.whiten != aqpim_kvcache::KeyMetric::Euclidean,
        mass_window: spec
            .transforms
            .value_weighting
            .then_some(spec.regions.window),
    };
    let plan = Plan::new(
        tokens.len(),
        chunk_lengths,
        c.context_length,
        request == StatsRequest::default(),
    );
    let mut hidden: Vec<Vec<f32>> = plan
        .sequences
        .iter()
        .map(|&(s, len)| model.embed(&tokens[s..s + len]))
        .collect::<Result<_>>()?;
    let longest = plan.sequences.iter().map(|s| s.1).max().unwrap_or(0);
    model.check_positions(0, longest)?;
    let rot = model.rope_table(0, longest);
    let trainer = Trainer {
        spec,
        d,
        plan: &plan,
        opts: TrainOptions {
            iterations: spec.training.iterations,
            seed: spec.training.seed,
            init: Init::KMeansPlusPlus,
            ..TrainOptions::default()
        },
    };
    let mut books = Vec::with_capacity(layers);
    let mut pending: Option<(usize, LayerRecord)> = None;
    for l in 0..=layers {
        // Layer l runs while layer l - 1 trains.
        let (trained, record) = rayon::join(
            || pending.take().map(|(pl, rec)| trainer.layer(pl, rec)),
            || (l < layers).then(|| record_layer(model, l, &plan, &mut hidden, &rot, request)),
        );
        if let Some(t) = trained {
            books.push(t?);
        }
        if let Some(rec) = record {
            pending = Some((l, rec?));
        }
        progress("calibrating", l, layers);
    }
    Ok(books)
}

/// Runs layer `l` over every sequence's hidden rows (in place), recording
/// keys, values and the requested query statistics.
fn record_layer(
    model: &Llama,
    l: usize,
    plan: &Plan,
    hidden: &mut [Vec<f32>],
    rot: &[(f64, f64)],
    request: StatsRequest,
) -> Result<LayerRecord> {
    let c = model.config();
    let half = c.n_rot / 2;
    let mut kv = Vec::with_capacity(plan.sequences.len());
    let mut seq_stats = Vec::with_capacity(plan.sequences.len());
    for (x, &(_, len)) in hidden.iter_mut().zip(&plan.sequences) {
        let dims = Dims {
            n: len,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
        };
        let rot = &rot[..len * half];
        if l + 1 == c.n_layers && request == StatsRequest::default() {
            // Nothing reads the last block's output: its keys and values
            // are all calibration needs.
            let [_, k, v] = model.qkv(l, x, len, rot)?;
            kv.push((k, v));
            continue;
        }
        model.block(l, x, len, rot, &mut |q, k, v, out| {
            kv.push((k.to_vec(), v.to_vec()));
            seq_stats.push(causal::causal_attention(q, k, v, dims, request, out)?);
            Ok(())
        })?;
    }
    // Statistics per KV head over the chunks in sample order; with
    // statistics asked for, every chunk is its own sequence.
    let mut stats = vec![HeadStats::default(); c.n_kv_heads];
    if request != StatsRequest::default() {
        for per_head in seq_stats {
            for (acc, s) in stats.iter_mut().zip(per_head) {
                acc.moment = if acc.moment.is_empty() {
                    s.moment
                } else {
                    acc.moment
                        .iter()
                        .zip(&s.moment)
                        .map(|(a, b)| a + b)
                        .collect()
                };
                acc.queries += s.queries;
                acc.mass.extend(s.mass);
            }
        }
    }
    Ok(LayerRecord { kv, stats })
}

/// What every codebook of a calibration is trained with.
struct Trainer<'a> {
    spec: &'a PqSpec,
    d: usize,
    plan: &'a Plan,
    opts: TrainOptions,
}

impl Trainer<'_> {
    /// The codebooks of every KV head of layer `l`: the keys and the values
    /// of each head are separate jobs, all in parallel.
    fn layer(&self, l: usize, rec: LayerRecord) -> Result<Vec<HeadBooks>> {
        let heads = rec.stats.len();
        let parts: Vec<Result<PartBooks>> = (0..2 * heads)
            .into_par_iter()
            .map(|job| {
                let (h, part) = (job / 2, [KvPart::Keys, KvPart::Values][job % 2]);
                let rows = self.sample(&rec, h, part);
                self.part(l, &rows, &rec.stats[h], part)
                    .map_err(|e| DecodeError::Calibration {
                        layer: l,
                        kv_head: h,
                        source: Box::new(e),
                    })
            })
            .collect();
        let mut parts = parts.into_iter();
        let mut out = Vec::with_capacity(heads);
        while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
            let (k, v) = (k?, v?);
            out.push(HeadBooks {
                keys: k.0,
                values: v.0,
                key_transform: k.1,
                value_transform: v.1,
            });
        }
        Ok(out)
    }

    /// Head `h`'s keys or values of every chunk, in sample order (`tokens x d`).
    fn sample(&self, rec: &LayerRecord, h: usize, part: KvPart) -> Vec<f32> {
        let d = self.d;
        let stride = rec.stats.len() * d;
        let total: usize = self.plan.chunks.iter().map(|c| c.1).sum();
        let mut rows = Vec::with_capacity(total * d);
        for (&(_, len), &s) in self.plan.chunks.iter().zip(&self.plan.chunk_sequence) {
            let (k, v) = &rec.kv[s];
            let src = if part == KvPart::Keys { k } else { v };
            for t in 0..len {
                rows.extend_from_slice(&src[t * stride + h * d..t * stride + (h + 1) * d]);
            }
        }
        rows
    }

    /// The codebook and transform of one part of layer `l` from its sample,
    /// in the layer's format (`wide_layers=` gives some layers their own).
    fn part(&self, l: usize, rows: &[f32], st: &HeadStats, part: KvPart) -> Result<PartBooks> {
        let (spec, d) = (self.spec, self.d);
        let params = spec.params_at(d, l, part)?;
        if part == KvPart::Keys {
            let moment: Option<Vec<f64>> = (!st.moment.is_empty() && st.queries > 0)
                .then(|| st.moment.iter().map(|m| m / st.queries as f64).collect());
            let kt = fit_transform(spec, KvPart::Keys, rows, d, moment.as_deref())?;
            let k_in = match &kt {
                Some(t) => t.apply(rows)?,
                None => rows.to_vec(),
            };
            let keys = ProductQuantizer::train(params, &k_in, &self.opts)?;
            return Ok((keys, kt));
        }
        // Values: with `vweight`, only tokens a decode step would see
        // encoded, weighted by the mean attention they received.
        let (v_rows, weights) = if spec.transforms.value_weighting {
            let mut kept = Vec::new();
            let mut w = Vec::new();
            let mut start = 0;
            for &(_, len) in &self.plan.chunks {
                for t in start + spec.regions.sinks.min(len)..start + len {
                    if let Some(&(m, c)) = st.mass.get(t) {
                        if c > 0 {
                            kept.extend_from_slice(&rows[t * d..(t + 1) * d]);
                            w.push((m / f64::from(c)) as f32);
                        }
                    }
                }
                start += len;
            }
            let mean = w.iter().sum::<f32>() / w.len().max(1) as f32;
            w.iter_mut().for_each(|x| *x = x.max(0.01 * mean));
            (kept, Some(w))
        } else {
            (rows.to_vec(), None)
        };
        let vt = fit_transform(spec, KvPart::Values, &v_rows, d, None)?;
        let v_in = match &vt {
            Some(t) => t.apply(&v_rows)?,
            None => v_rows,
        };
        let values = match &weights {
            Some(w) => ProductQuantizer::train_weighted(params, &v_in, w, &self.opts),
            None => ProductQuantizer::train(params, &v_in, &self.opts),
        }?;
        Ok((values, vt))
    }
}

/// A codebook and its pre-transform.
type PartBooks = (ProductQuantizer, Option<PreTransform>);

fn file_name(dir: &Path, layer: usize, head: usize, part: KvPart) -> PathBuf {
    let p = if part == KvPart::Keys { "k" } else { "v" };
    dir.join(format!("layer{layer:03}_head{head:02}_{p}.pqcb"))
}

fn transform_name(dir: &Path, layer: usize, head: usize, part: KvPart) -> PathBuf {
    file_name(dir, layer, head, part).with_extension("pqxf")
}

/// Saves codebooks into `dir` (created if missing), one atomic file each.
pub fn save(books: &Codebooks, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| DecodeError::Io {
        op: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    for (l, layer) in books.iter().enumerate() {
        for (h, b) in layer.iter().enumerate() {
            for (part, pq, xf) in [
                (KvPart::Keys, &b.keys, &b.key_transform),
                (KvPart::Values, &b.values, &b.value_transform),
            ] {
                pq.save(&file_name(dir, l, h, part))?;
                let xpath = transform_name(dir, l, h, part);
                match xf {
                    Some(t) => t.save(&xpath)?,
                    // A stale transform from an earlier calibration must not be loaded.
                    None if xpath.exists() => {
                        std::fs::remove_file(&xpath).map_err(|source| DecodeError::Io {
                            op: "removing",
                            path: xpath.clone(),
                            source,
                        })?
                    }
                    None => {}
                }
            }
        }
    }
    Ok(())
}

/// Loads the codebooks of every (layer, KV head) of `store` from `dir` and
/// hands them to the store. A missing, corrupted or wrongly shaped file is an
/// error naming it.
pub fn load_into(dir: &Path, store: &mut PqStore) -> Result<()> {
    let shape = *aqpim_kvcache::KvStore::shape(store);
    for l in 0..shape.num_layers() {
        for h in 0..shape.num_kv_heads() {
            let load = |part| {
                let path = file_name(dir, l, h, part);
                ProductQuantizer::load(&path)
            };
            let (k, v) = (load(KvPart::Keys)?, load(KvPart::Values)?);
            let spec = *store.pq_spec();
            let load_xf = |part| -> Result<Option<PreTransform>> {
                let path = transform_name(dir, l, h, part);
                if !spec.transforms(part) {
                    if path.exists() {
                        return Err(DecodeError::InvalidArgument {
                            name: "codebooks",
                            reason: format!(
                                "{} exists, but the spec asks for no {part} transform: these codebooks were calibrated for another spec",
                                path.display()
                            ),
                        });
                    }
                    return Ok(None);
                }
                PreTransform::load(&path)
                    .map(Some)
                    .map_err(|e| DecodeError::Codebooks {
                        dir: dir.to_path_buf(),
                        hint: format!(
                            " (the spec asks for a {part} transform: calibrate with the same spec)"
                        ),
                        source: Box::new(e.into()),
                    })
            };
            let (kt, vt) = (load_xf(KvPart::Keys)?, load_xf(KvPart::Values)?);
            let err = |e: aqpim_kvcache::KvError| DecodeError::Codebooks {
                dir: dir.to_path_buf(),
                hint: String::new(),
                source: Box::new(e.into()),
            };
            store.set_codebooks(l, h, k, v).map_err(err)?;
            store.set_transforms(l, h, kt, vt).map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_that_start_together_run_once() {
        // The default passes over 8K tokens of an 8K-context model.
        let p = Plan::new(8192, &[2048, 8192], 8192, true);
        let quarters = [(0, 2048), (2048, 2048), (4096, 2048), (6144, 2048)];
        assert_eq!(p.chunks[..4], quarters);
        assert_eq!(p.chunks[4], (0, 8192));
        assert_eq!(
            p.sequences,
            vec![(0, 8192), (2048, 2048), (4096, 2048), (6144, 2048)]
        );
        assert_eq!(p.chunk_sequence, vec![0, 1, 2, 3, 0]);
        // Without sharing every chunk is its own sequence.
        let q = Plan::new(8192, &[2048, 8192], 8192, false);
        assert_eq!(q.sequences, q.chunks);
        assert_eq!(q.chunk_sequence, vec![0, 1, 2, 3, 4]);
        // Lengths are capped at the context; a ragged last chunk is kept.
        let r = Plan::new(250, &[100, 300], 256, true);
        assert_eq!(r.chunks, vec![(0, 100), (100, 100), (200, 50), (0, 250)]);
        assert_eq!(r.sequences, vec![(0, 250), (100, 100), (200, 50)]);
    }
}
