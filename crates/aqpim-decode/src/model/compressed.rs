//! [`CompressedCache`]: any `aqpim-kvcache` store (`fp16`, `scalar:...`,
//! `pq:...`) behind the model's [`AttentionCache`] interface, with decode-time
//! attention through the `aqpim-attn` kernels, so the accuracy measured is
//! that of the computation the PIM programs mirror.
//!
//! Protocol (the usual one for KV-cache compression studies):
//!
//! - a prompt forwarded as one block into an empty cache attends *exactly*
//!   within itself (causal, f32), and the whole block then enters the store in
//!   one `prefill`, which trains the PQ codebooks online on it (or encodes with
//!   calibrated ones);
//! - every later token is appended to the store one step at a time and attends
//!   over the whole compressed cache (codes, FP16 sinks and recent window).
//!
//! Tokens arrive per (layer, KV head) and are staged until the forward pass
//! commits the layer ([`AttentionCache::commit`]), which stores them for
//! every head at once; attention reads the store and never writes.

use aqpim_kvcache::{build, KvShape, KvSpec, KvStore};

use crate::error::{DecodeError, Result};
use crate::model::cache::{AttentionCache, DenseCache, DensePrecision};

fn cache_err(reason: impl Into<String>) -> DecodeError {
    DecodeError::Cache {
        reason: reason.into(),
    }
}

/// A compressed KV cache for the model (see the module docs).
#[derive(Debug)]
pub struct CompressedCache {
    shape: KvShape,
    store: Box<dyn KvStore>,
    /// `[layer][kv_head]`: staged keys and values, `tokens x head_dim` each.
    staged: Vec<Vec<(Vec<f32>, Vec<f32>)>>,
    /// `[layer]`: queries seeing at most this many tokens attend exactly
    /// (the first prefill block).
    exact_until: Vec<usize>,
    /// The first prefill block of every layer, exact, for its own attention.
    exact: DenseCache,
}

impl CompressedCache {
    /// An empty cache of `shape` stored as `spec` says.
    pub fn new(shape: KvShape, spec: &KvSpec) -> Result<Self> {
        let store = build(shape, spec)?;
        Ok(Self::from_store(store))
    }

    /// Wraps an empty store (for example one holding calibrated codebooks).
    pub fn from_store(store: Box<dyn KvStore>) -> Self {
        let shape = *store.shape();
        let (l, g, d) = (shape.num_layers(), shape.num_kv_heads(), shape.head_dim());
        CompressedCache {
            shape,
            store,
            staged: vec![vec![(Vec::new(), Vec::new()); g]; l],
            exact_until: vec![0; l],
            exact: DenseCache::new(l, g, d, DensePrecision::F32),
        }
    }

    /// Runs `f` on the store (after committing every staged token).
    pub fn with_store<T>(&mut self, f: impl FnOnce(&dyn KvStore) -> T) -> Result<T> {
        for l in 0..self.shape.num_layers() {
            self.commit(l)?;
        }
        Ok(f(self.store.as_ref()))
    }

    /// Tokens of `layer` appended but not yet committed.
    fn staged_tokens(&self, layer: usize) -> usize {
        self.staged[layer]
            .iter()
            .map(|(k, _)| k.len() / self.shape.head_dim())
            .max()
            .unwrap_or(0)
    }
}

impl AttentionCache for CompressedCache {
    fn append(&mut self, layer: usize, kv_head: usize, key: &[f32], value: &[f32]) -> Result<()> {
        let (d, g) = (self.shape.head_dim(), self.shape.num_kv_heads());
        if layer >= self.shape.num_layers() || kv_head >= g || key.len() != d || value.len() != d {
            return Err(cache_err(format!(
                "append to layer {layer}, KV head {kv_head} of {} values (cache: {} layers, {g} KV heads, head_dim {d})",
                key.len(),
                self.shape.num_layers()
            )));
        }
        // Tokens of a block that starts an empty layer are also kept exactly,
        // for the block's own (causal) attention.
        if self.store.num_tokens(layer)? == 0 {
            self.exact.append(layer, kv_head, key, value)?;
        }
        let (k, v) = &mut self.staged[layer][kv_head];
        k.extend_from_slice(key);
        v.extend_from_slice(value);
        Ok(())
    }

    /// Moves `layer`'s staged tokens into the store: one `prefill` for a
    /// block, one `append` for a single token, every KV head at once.
    fn commit(&mut self, layer: usize) -> Result<()> {
        if layer >= self.shape.num_layers() {
            return Err(cache_err(format!(
                "commit of layer {layer} out of range ({} layers)",
                self.shape.num_layers()
            )));
        }
        let d = self.shape.head_dim();
        let counts: Vec<usize> = self.staged[layer]
            .iter()
            .map(|(k, _)| k.len() / d)
            .collect();
        let n = counts[0];
        if counts.iter().all(|&c| c == 0) {
            return Ok(());
        }
        if counts.iter().any(|&c| c != n) {
            return Err(cache_err(format!(
                "layer {layer}: KV heads hold different numbers of staged tokens {counts:?}"
            )));
        }
        let was_empty = self.store.num_tokens(layer)? == 0;
        let mut keys = Vec::with_capacity(counts.len() * n * d);
        let mut values = Vec::with_capacity(counts.len() * n * d);
        for (k, v) in &mut self.staged[layer] {
            keys.append(k);
            values.append(v);
        }
        if n == 1 {
            self.store.append(layer, &keys, &values)?;
        } else {
            self.store.prefill(layer, &keys, &values)?;
        }
        self.exact_until[layer] = if was_empty && n > 1 { n } else { 0 };
        Ok(())
    }

    fn len(&self, layer: usize, kv_head: usize) -> usize {
        let staged = self
            .staged
            .get(layer)
            .and_then(|h| h.get(kv_head))
            .map_or(0, |(k, _)| k.len() / self.shape.head_dim());
        self.store.num_tokens(layer).unwrap_or(0) + staged
    }

    /// The whole group goes to one kernel call, which builds each KV head's
    /// tables (PQ) or dequantizes its tokens (scalar) once for all its
    /// query heads.
    fn attend_group(
        &self,
        layer: usize,
        kv_head: usize,
        query: &[f32],
        visible: usize,
        scale: f32,
        out: &mut [f32],
    ) -> Result<()> {
        if layer >= self.shape.num_layers() {
            return Err(cache_err(format!(
                "layer {layer} out of range ({} layers)",
                self.shape.num_layers()
            )));
        }
        let staged = self.staged_tokens(layer);
        if staged > 0 {
            return Err(cache_err(format!(
                "layer {layer} holds {staged} appended tokens not yet committed: commit the layer before attending"
            )));
        }
        let len = self.store.num_tokens(layer)?;
        if visible <= self.exact_until[layer] {
            return self
                .exact
                .attend_group(layer, kv_head, query, visible, scale, out);
        }
        if visible != len {
            return Err(cache_err(format!(
                "a compressed KV cache can only add one token at a time after the prompt (it holds {len} tokens, this step asked for {visible}); feed later text one token per step, or use --kv fp16"
            )));
        }
        Ok(aqpim_attn::attend_head(
            self.store.as_ref(),
            layer,
            kv_head,
            query,
            scale,
            out,
        )?)
    }

    fn bytes(&self) -> usize {
        self.store.memory_report().total_bytes as usize
    }

    fn bits_per_element(&self) -> f64 {
        self.store.memory_report().bits_per_element.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    /// Drives a cache like the forward pass does: a prefill block appended for
    /// every head, then attended causally; then single-token steps.
    fn drive(
        cache: &mut dyn AttentionCache,
        layers: usize,
        heads: usize,
        d: usize,
        prefill: usize,
        steps: usize,
    ) -> Vec<f32> {
        let mut outs = Vec::new();
        let mut t = 0;
        for (block, n) in [(0, prefill)]
            .into_iter()
            .chain((0..steps).map(|s| (s + 1, 1)))
        {
            for l in 0..layers {
                for i in 0..n {
                    for g in 0..heads {
                        let seed = (((block * 1000 + i) * 10 + l) * 10 + g) as u64;
                        cache
                            .append(l, g, &random(d, seed), &random(d, seed + 7))
                            .unwrap();
                    }
                }
                cache.commit(l).unwrap();
                for i in 0..n {
                    for g in 0..heads {
                        let q = random(d, 99 + (t + i) as u64);
                        let mut o = vec![0f32; d];
                        cache.attend(l, g, &q, t + i + 1, 0.5, &mut o).unwrap();
                        outs.extend(o);
                    }
                }
            }
            t += n;
        }
        outs
    }

    #[test]
    fn fp16_store_matches_the_exact_cache() {
        let shape = KvShape::new(2, 2, 8).unwrap();
        let mut exact = DenseCache::new(2, 2, 8, DensePrecision::F16);
        let mut comp = CompressedCache::new(shape, &KvSpec::Dense).unwrap();
        let a = drive(&mut exact, 2, 2, 8, 20, 5);
        let b = drive(&mut comp, 2, 2, 8, 20, 5);
        // Prefill rows are exact f32 in the compressed cache, FP16 in the dense one.
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 2e-3, "{x} vs {y}");
        }
        assert_eq!(comp.len(1, 1), 25);
        assert!((comp.bits_per_element() - 16.0).abs() < 1e-9);
    }

    #[test]
    fn pq_store_decodes_through_codes() {
        let shape = KvShape::new(1, 2, 8).unwrap();
        let spec: KvSpec = "pq:dsub=2,nbits=4,sinks=1,window=4".parse().unwrap();
        let mut comp = CompressedCache::new(shape, &spec).unwrap();
        let outs = drive(&mut comp, 1, 2, 8, 64, 3);
        assert!(outs.iter().all(|v| v.is_finite()));
        let regions = comp.with_store(|s| s.regions(0).unwrap()).unwrap();
        assert_eq!((regions.sinks, regions.recent), (1, 4));
        assert_eq!(regions.encoded, 67 - 5);
        assert!(comp.bits_per_element() < 16.0);
        // A query that does not see every token after the prefill is refused.
        let mut o = vec![0f32; 8];
        let e = comp.attend(0, 0, &[0.1; 8], 66, 0.5, &mut o).unwrap_err();
        assert!(e.to_string().contains("one token per step"), "{e}");
    }

    #[test]
    fn store_errors_are_kept_as_sources() {
        let shape = KvShape::new(1, 1, 4).unwrap();
        let spec: KvSpec = "pq:dsub=3,nbits=4".parse().unwrap();
        let e = CompressedCache::new(shape, &spec).unwrap_err();
        assert!(matches!(e, DecodeError::Kv(_)), "{e:?}");
        assert!(!e.to_string().is_empty());
    }

    #[test]
    fn bad_appends_are_errors() {
        let mut comp =
            CompressedCache::new(KvShape::new(1, 1, 4).unwrap(), &KvSpec::Dense).unwrap();
        assert!(comp.append(1, 0, &[0.0; 4], &[0.0; 4]).is_err());
        assert!(comp.append(0, 0, &[0.0; 3], &[0.0; 4]).is_err());
        comp.append(0, 0, &[f32::NAN; 4], &[0.0; 4]).unwrap();
        let mut o = vec![0f32; 4];
        let e = comp.attend(0, 0, &[0.0; 4], 1, 1.0, &mut o).unwrap_err();
        assert!(e.to_string().contains("not yet committed"), "{e}");
        assert!(comp.commit(0).is_err(), "NaN keys are refused at commit");
    }
}
