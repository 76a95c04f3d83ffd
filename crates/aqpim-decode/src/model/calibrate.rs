//! Offline codebook calibration: run the model over calibration text, collect
//! every layer's and KV head's post-RoPE keys and values, and train one K and
//! one V product quantizer per (layer, KV head), as a serving system would do
//! once per model. Codebooks are saved as `aqpim-pq` codebook files in a
//! directory, `layer{L:03}_head{H:02}_{k|v}.pqcb`, and loaded into a PQ store
//! before it sees any token.

use std::path::{Path, PathBuf};

use aqpim_kvcache::{KvPart, PqSpec, PqStore};
use aqpim_pq::{Init, ProductQuantizer, TrainOptions};
use rayon::prelude::*;

use crate::error::{DecodeError, Result};
use crate::model::cache::{DenseCache, DensePrecision, KvCache};
use crate::model::llama::{Llama, Logits};

/// A dense f32 cache that also keeps every appended key and value.
struct RecordingCache {
    inner: DenseCache,
    n_kv_heads: usize,
    /// `[layer * n_kv_heads + head]`: keys and values, `tokens x head_dim`.
    recorded: Vec<(Vec<f32>, Vec<f32>)>,
}

impl KvCache for RecordingCache {
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
            .attend_group(layer, kv_head, queries, visible, scale, out)
    }
    fn bytes(&self) -> usize {
        self.inner.bytes()
    }
    fn bits_per_element(&self) -> f64 {
        self.inner.bits_per_element()
    }
}

/// Calibrated codebooks of a whole model: `[layer][kv_head] = (K, V)`.
pub type Codebooks = Vec<Vec<(ProductQuantizer, ProductQuantizer)>>;

/// Collects post-RoPE keys and values of `tokens`, run in chunks of at most
/// `chunk` tokens (each a fresh sequence), and trains the codebooks that
/// `spec` asks for (`dsub`, key and value bits, iterations, seed).
/// `progress(done, total)` is called after each chunk and each trained layer.
pub fn calibrate(
    model: &Llama,
    tokens: &[u32],
    spec: &PqSpec,
    chunk: usize,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Codebooks> {
    let c = model.config();
    let (layers, heads, d) = (c.n_layers, c.n_kv_heads, c.head_dim);
    let chunk = chunk.clamp(1, c.context_length);
    if tokens.is_empty() {
        return Err(DecodeError::InvalidArgument {
            name: "tokens",
            reason: "no calibration tokens".into(),
        });
    }
    let mut recorded = vec![(Vec::new(), Vec::new()); layers * heads];
    let chunks: Vec<&[u32]> = tokens.chunks(chunk).collect();
    for (i, ids) in chunks.iter().enumerate() {
        let mut cache = RecordingCache {
            inner: DenseCache::new(layers, heads, d, DensePrecision::F32),
            n_kv_heads: heads,
            recorded: std::mem::take(&mut recorded),
        };
        model.forward(ids, &mut cache, Logits::Last)?;
        recorded = cache.recorded;
        progress("running the model", i + 1, chunks.len());
    }
    let params = |bits| {
        aqpim_pq::PqParams::with_dsub(d, spec.dsub, bits).map_err(|e| {
            DecodeError::InvalidArgument {
                name: "kv",
                reason: e.to_string(),
            }
        })
    };
    let (kp, vp) = (params(spec.key_bits)?, params(spec.value_bits)?);
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
                let train = |p, x: &[f32]| {
                    ProductQuantizer::train(p, x, &opts).map_err(|e| DecodeError::InvalidArgument {
                        name: "calibration",
                        reason: format!("layer {l}, KV head {h}: {e}"),
                    })
                };
                Ok((train(kp, k)?, train(vp, v)?))
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

/// Saves codebooks into `dir` (created if missing), one atomic file each.
pub fn save(books: &Codebooks, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| DecodeError::Io {
        op: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    for (l, layer) in books.iter().enumerate() {
        for (h, (k, v)) in layer.iter().enumerate() {
            for (part, pq) in [(KvPart::Keys, k), (KvPart::Values, v)] {
                let path = file_name(dir, l, h, part);
                pq.save(&path).map_err(|e| DecodeError::InvalidArgument {
                    name: "codebooks",
                    reason: e.to_string(),
                })?;
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
                ProductQuantizer::load(&path).map_err(|e| DecodeError::InvalidArgument {
                    name: "codebooks",
                    reason: e.to_string(),
                })
            };
            let (k, v) = (load(KvPart::Keys)?, load(KvPart::Values)?);
            store
                .set_codebooks(l, h, k, v)
                .map_err(|e| DecodeError::InvalidArgument {
                    name: "codebooks",
                    reason: format!("{}: {e}", dir.display()),
                })?;
        }
    }
    Ok(())
}
