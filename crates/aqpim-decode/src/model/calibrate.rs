//! Offline codebook calibration: run the model over calibration text, collect
//! every layer's and KV head's post-RoPE keys and values, and train one K and
//! one V product quantizer per (layer, KV head), as a serving system would do
//! once per model. Codebooks are saved as `aqpim-pq` codebook files in a
//! directory, `layer{L:03}_head{H:02}_{k|v}.pqcb`, and loaded into a PQ store
//! before it sees any token.
//!
//! Specs with pre-transforms (`center`, `scale`, `layout`, `whiten`) also
//! save one `layer{L:03}_head{H:02}_{k|v}.pqxf` per codebook. `whiten=` fits
//! the key metric to the second moment of the calibration queries of the KV
//! head's query group; `vweight=true` weights each value in k-means by the
//! mean attention it receives from the calibration queries that would see it
//! encoded (those at least `window` positions later), leaving out each
//! chunk's first `sinks` and last `window` tokens, which the store keeps in FP16.

use std::path::{Path, PathBuf};

use std::sync::Mutex;

use aqpim_kvcache::{fit_transform, KvPart, PqSpec, PqStore};
use aqpim_pq::{Init, PreTransform, ProductQuantizer, TrainOptions};
use rayon::prelude::*;

use crate::error::{DecodeError, Result};
use crate::model::cache::{AttentionCache, DenseCache, DensePrecision};
use crate::model::llama::{Llama, Logits};

/// Query statistics of one (layer, KV head).
#[derive(Debug, Clone, Default)]
struct QueryStats {
    /// `sum q q^T` over the group's query heads and positions, `d x d`.
    moment: Vec<f64>,
    queries: usize,
    /// Per recorded token: summed attention from queries at least `window`
    /// positions later, and how many such queries saw it.
    mass: Vec<(f64, u32)>,
}

/// A dense f32 cache that also keeps every appended key and value (and, if
/// asked, query statistics).
struct RecordingCache {
    inner: DenseCache,
    n_kv_heads: usize,
    head_dim: usize,
    /// `[layer * n_kv_heads + head]`: keys and values, `tokens x head_dim`.
    recorded: Vec<(Vec<f32>, Vec<f32>)>,
    /// Recorded tokens before this chunk.
    base: usize,
    moments: bool,
    /// `Some(window)`: record attention mass.
    mass_window: Option<usize>,
    stats: Vec<Mutex<QueryStats>>,
}

impl AttentionCache for RecordingCache {
    fn append(&mut self, layer: usize, kv_head: usize, key: &[f32], value: &[f32]) -> Result<()> {
        self.inner.append(layer, kv_head, key, value)?;
        let (k, v) = &mut self.recorded[layer * self.n_kv_heads + kv_head];
        k.extend_from_slice(key);
        v.extend_from_slice(value);
        Ok(())
    }
    fn len(&self, layer: usize, kv_head: usize) -> usize {
        self.inner.len(layer, kv_head)
    }
    fn attend_group(
        &self,
        layer: usize,
        kv_head: usize,
        queries: &[f32],
        visible: usize,
        scale: f32,
        out: &mut [f32],
    ) -> Result<()> {
        self.inner
            .attend_group(layer, kv_head, queries, visible, scale, out)?;
        if !self.moments && self.mass_window.is_none() {
            return Ok(());
        }
        let idx = layer * self.n_kv_heads + kv_head;
        let d = self.head_dim;
        let keys = &self.recorded[idx].0;
        let mut st = self.stats[idx].lock().unwrap_or_else(|e| e.into_inner());
        let base = self.base;
        for q in queries.chunks_exact(d) {
            if self.moments {
                if st.moment.is_empty() {
                    st.moment = vec![0.0; d * d];
                }
                for (i, &qi) in q.iter().enumerate() {
                    let qi = f64::from(qi);
                    for (m, &qj) in st.moment[i * d..(i + 1) * d].iter_mut().zip(q) {
                        *m += qi * f64::from(qj);
                    }
                }
                st.queries += 1;
            }
            if let Some(window) = self.mass_window {
                // The query at position `visible - 1` sees encoded tokens `< visible - window`.
                let seen = visible.saturating_sub(window);
                if seen == 0 {
                    continue;
                }
                let scores: Vec<f32> = keys[base * d..(base + visible) * d]
                    .chunks_exact(d)
                    .map(|k| scale * k.iter().zip(q).map(|(a, b)| a * b).sum::<f32>())
                    .collect();
                let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let z: f64 = scores.iter().map(|&s| f64::from(s - max).exp()).sum();
                if st.mass.len() < base + visible {
                    st.mass.resize(base + visible, (0.0, 0));
                }
                for (t, &s) in scores[..seen].iter().enumerate() {
                    let m = &mut st.mass[base + t];
                    m.0 += f64::from(s - max).exp() / z;
                    m.1 += 1;
                }
            }
        }
        Ok(())
    }
    fn bytes(&self) -> usize {
        self.inner.bytes()
    }
    fn bits_per_element(&self) -> f64 {
        self.inner.bits_per_element()
    }
}

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

/// Collects post-RoPE keys and values of `tokens` and trains the codebooks
/// that `spec` asks for (`dsub`, key and value bits, iterations, seed).
///
/// `chunk_lengths` lists one pass over `tokens` per entry: a pass cuts them
/// into chunks of at most that many tokens, each run as a fresh sequence, so
/// the calibration sample holds keys at the positions those lengths reach
/// (`[2048, 8192]`: every token twice, at a position below 2,048 and at its
/// place in an 8K sequence). `progress(done, total)` is called after each
/// chunk and each trained layer.
pub fn calibrate(
    model: &Llama,
    tokens: &[u32],
    spec: &PqSpec,
    chunk_lengths: &[usize],
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Codebooks> {
    let c = model.config();
    let (layers, heads, d) = (c.n_layers, c.n_kv_heads, c.head_dim);
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
    let mut recorded = vec![(Vec::new(), Vec::new()); layers * heads];
    let moments = spec.whiten != aqpim_kvcache::KeyMetric::Euclidean;
    let mass_window = spec.value_weighting.then_some(spec.window);
    let mut stats: Vec<Mutex<QueryStats>> = (0..layers * heads).map(|_| Mutex::default()).collect();
    // Per chunk: where it starts among the recorded tokens, and its length.
    let mut spans = Vec::new();
    let chunks: Vec<&[u32]> = chunk_lengths
        .iter()
        .flat_map(|&len| tokens.chunks(len.min(c.context_length)))
        .collect();
    let mut base = 0;
    for (i, ids) in chunks.iter().enumerate() {
        let mut cache = RecordingCache {
            inner: DenseCache::new(layers, heads, d, DensePrecision::F32),
            n_kv_heads: heads,
            head_dim: d,
            recorded: std::mem::take(&mut recorded),
            base,
            moments,
            mass_window,
            stats: std::mem::take(&mut stats),
        };
        model.forward(ids, &mut cache, Logits::Last)?;
        recorded = cache.recorded;
        stats = cache.stats;
        spans.push((base, ids.len()));
        base += ids.len();
        progress("running the model", i + 1, chunks.len());
    }
    let stats: Vec<QueryStats> = stats
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect();
    let (kp, vp) = (
        spec.params(d, KvPart::Keys)?,
        spec.params(d, KvPart::Values)?,
    );
    let opts = TrainOptions {
        iterations: spec.iterations,
        seed: spec.seed,
        init: Init::KMeansPlusPlus,
        ..TrainOptions::default()
    };
    let mut books = Vec::with_capacity(layers);
    for l in 0..layers {
        let layer: Result<Vec<_>> = (0..heads)
            .into_par_iter()
            .map(|h| {
                let (k, v) = &recorded[l * heads + h];
                let st = &stats[l * heads + h];
                let err = |e: DecodeError| DecodeError::Calibration {
                    layer: l,
                    kv_head: h,
                    source: Box::new(e),
                };
                let moment: Option<Vec<f64>> = (moments && st.queries > 0)
                    .then(|| st.moment.iter().map(|m| m / st.queries as f64).collect());
                let kt = fit_transform(spec, KvPart::Keys, k, d, moment.as_deref())
                    .map_err(|e| err(e.into()))?;
                let k_in = match &kt {
                    Some(t) => t.apply(k).map_err(|e| err(e.into()))?,
                    None => k.clone(),
                };
                let keys = ProductQuantizer::train(kp, &k_in, &opts).map_err(|e| err(e.into()))?;
                // Values: with `vweight`, only tokens a decode step would see
                // encoded, weighted by the mean attention they received.
                let (v_rows, weights) = if spec.value_weighting {
                    let mut rows = Vec::new();
                    let mut w = Vec::new();
                    for &(start, len) in &spans {
                        for t in start + spec.sinks.min(len)..start + len {
                            if let Some(&(m, c)) = st.mass.get(t) {
                                if c > 0 {
                                    rows.extend_from_slice(&v[t * d..(t + 1) * d]);
                                    w.push((m / f64::from(c)) as f32);
                                }
                            }
                        }
                    }
                    let mean = w.iter().sum::<f32>() / w.len().max(1) as f32;
                    w.iter_mut().for_each(|x| *x = x.max(0.01 * mean));
                    (rows, Some(w))
                } else {
                    (v.clone(), None)
                };
                let vt = fit_transform(spec, KvPart::Values, &v_rows, d, None)
                    .map_err(|e| err(e.into()))?;
                let v_in = match &vt {
                    Some(t) => t.apply(&v_rows).map_err(|e| err(e.into()))?,
                    None => v_rows,
                };
                let values = match &weights {
                    Some(w) => ProductQuantizer::train_weighted(vp, &v_in, w, &opts),
                    None => ProductQuantizer::train(vp, &v_in, &opts),
                }
                .map_err(|e| err(e.into()))?;
                Ok(HeadBooks {
                    keys,
                    values,
                    key_transform: kt,
                    value_transform: vt,
                })
            })
            .collect();
        books.push(layer?);
        progress("training codebooks", l + 1, layers);
    }
    Ok(books)
}

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
