//! Synthetic caches for benchmarks, examples and tests: calibrated codebooks
//! trained on KV-like data ([`aqpim_pq::synth::kv_like`]), and layers filled
//! with KV-like tokens.

use aqpim_pq::{ProductQuantizer, TrainOptions};

use crate::error::{KvPart, Result};
use crate::pq_store::PqStore;
use crate::shape::KvShape;
use crate::spec::PqSpec;
use crate::store::KvStore;

/// One key and one value codebook for `spec` and head size `head_dim`,
/// trained on `points` KV-like vectors with `iterations` Lloyd iterations
/// (standing in for offline calibration).
pub fn calibrated_codebooks(
    head_dim: usize,
    spec: &PqSpec,
    points: usize,
    iterations: usize,
    seed: u64,
) -> Result<(ProductQuantizer, ProductQuantizer)> {
    let opts = TrainOptions {
        iterations,
        seed,
        ..TrainOptions::default()
    };
    let keys = aqpim_pq::synth::kv_like(points, head_dim, seed);
    let values = aqpim_pq::synth::kv_like(points, head_dim, seed ^ 0x5a5a);
    Ok((
        ProductQuantizer::train(spec.params(head_dim, KvPart::Keys)?, &keys, &opts)?,
        ProductQuantizer::train(spec.params(head_dim, KvPart::Values)?, &values, &opts)?,
    ))
}

/// An empty PQ store whose every codebook group holds its own copy of
/// `codebooks` (separate allocations, as per-head codebooks would be).
pub fn store_with_codebooks(
    shape: KvShape,
    spec: PqSpec,
    codebooks: &(ProductQuantizer, ProductQuantizer),
) -> Result<PqStore> {
    let mut store = PqStore::new(shape, spec)?;
    for layer in 0..shape.num_layers() {
        for head in 0..shape.num_kv_heads() {
            if store.codebook(layer, head, KvPart::Keys)?.is_none() {
                store.set_codebooks(layer, head, codebooks.0.clone(), codebooks.1.clone())?;
            }
        }
    }
    Ok(store)
}

/// KV-like keys and values for one step or prompt: `H x tokens x d` each.
pub fn layer_tokens(shape: &KvShape, tokens: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let (h, d) = (shape.num_kv_heads(), shape.head_dim());
    (
        aqpim_pq::synth::kv_like(h * tokens, d, seed),
        aqpim_pq::synth::kv_like(h * tokens, d, seed ^ 0xdead_beef),
    )
}

/// Prefills `tokens` KV-like tokens into `layer`, `chunk` tokens per call.
pub fn fill_layer(
    store: &mut dyn KvStore,
    layer: usize,
    tokens: usize,
    chunk: usize,
    seed: u64,
) -> Result<()> {
    let shape = *store.shape();
    let mut done = 0;
    while done < tokens {
        let n = chunk.max(1).min(tokens - done);
        let (k, v) = layer_tokens(&shape, n, seed.wrapping_add(done as u64));
        store.prefill(layer, &k, &v)?;
        done += n;
    }
    Ok(())
}
