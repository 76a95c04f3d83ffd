//! [`KvStore`]: the trait every cache implements, and how to build or load one.

use std::fmt;
use std::path::Path;

use crate::accounting::{HeapBytes, MemoryReport, Regions};
use crate::error::Result;
use crate::shape::KvShape;
use crate::spec::KvSpec;
use crate::{DenseStore, PqStore, ScalarStore};

/// Keys and values as f32, `heads x tokens x head_dim` each (one head for
/// [`KvStore::reconstruct`], every KV head for [`KvStore::dense_view`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DenseKv {
    /// Number of heads held.
    pub heads: usize,
    /// Tokens per head.
    pub tokens: usize,
    /// Elements per token (d).
    pub head_dim: usize,
    /// Keys, `heads x tokens x head_dim`.
    pub keys: Vec<f32>,
    /// Values, `heads x tokens x head_dim`.
    pub values: Vec<f32>,
}

/// A model's KV cache: `layers x KV heads x tokens x head_dim` keys and values.
///
/// Inputs of one layer are laid out `KV heads x tokens x head_dim`
/// (row-major), as attention kernels hold them; [`KvStore::append`] takes
/// `KV heads x head_dim`. Every input value must be finite and within the
/// FP16 range. Layers fill independently (decode appends layer by layer), so
/// token counts are per layer.
pub trait KvStore: Send + Sync + fmt::Debug {
    /// The cache's shape.
    fn shape(&self) -> &KvShape;
    /// The cache's spec.
    fn spec(&self) -> &KvSpec;
    /// Tokens held by `layer`.
    fn num_tokens(&self, layer: usize) -> Result<usize>;
    /// How `layer`'s tokens are split between sink, encoded and recent regions.
    fn regions(&self, layer: usize) -> Result<Regions>;
    /// Appends a prompt's keys and values to `layer` (`KV heads x tokens x
    /// head_dim` each). The PQ store trains its codebooks here if it has none
    /// (see [`PqStore`]).
    fn prefill(&mut self, layer: usize, keys: &[f32], values: &[f32]) -> Result<()>;
    /// Appends one token to `layer` (`KV heads x head_dim` each): the decode step.
    fn append(&mut self, layer: usize, key: &[f32], value: &[f32]) -> Result<()>;
    /// What attention sees of one head: every token, decoded, `tokens x head_dim`.
    fn reconstruct(&self, layer: usize, head: usize) -> Result<DenseKv>;
    /// Every head of `layer`, decoded: `KV heads x tokens x head_dim`.
    fn dense_view(&self, layer: usize) -> Result<DenseKv> {
        let shape = *self.shape();
        let mut out = DenseKv {
            heads: shape.num_kv_heads(),
            tokens: self.num_tokens(layer)?,
            head_dim: shape.head_dim(),
            keys: Vec::new(),
            values: Vec::new(),
        };
        for h in 0..shape.num_kv_heads() {
            let one = self.reconstruct(layer, h)?;
            out.keys.extend_from_slice(&one.keys);
            out.values.extend_from_slice(&one.values);
        }
        Ok(out)
    }
    /// The memory the cache holds, from [`crate::account_regions`].
    fn memory_report(&self) -> MemoryReport;
    /// The heap bytes the cache holds, counted buffer by buffer.
    fn heap_bytes(&self) -> HeapBytes;
    /// Reserves room for `tokens` tokens per layer (exactly, so that a cache
    /// filled up to it allocates what [`KvStore::memory_report`] says).
    fn reserve(&mut self, tokens: usize);
    /// Releases every byte not holding data.
    fn shrink_to_fit(&mut self);
    /// Serializes the whole cache (format in `docs/kvcache.md`).
    fn to_bytes(&self) -> Vec<u8>;
    /// Writes the cache to `path` atomically.
    fn save(&self, path: &Path) -> Result<()> {
        Ok(aqpim_pq::io::write_atomic(path, &self.to_bytes())?)
    }
    /// The dense store, if this is one.
    fn as_dense(&self) -> Option<&DenseStore> {
        None
    }
    /// The scalar store, if this is one.
    fn as_scalar(&self) -> Option<&ScalarStore> {
        None
    }
    /// The PQ store, if this is one (kernels on codes use its accessors).
    fn as_pq(&self) -> Option<&PqStore> {
        None
    }
    /// The PQ store, mutably (to supply calibrated codebooks).
    fn as_pq_mut(&mut self) -> Option<&mut PqStore> {
        None
    }
}

/// Builds an empty cache of `shape` as `spec` says.
pub fn build(shape: KvShape, spec: &KvSpec) -> Result<Box<dyn KvStore>> {
    Ok(match spec {
        KvSpec::Dense => Box::new(DenseStore::new(shape)),
        KvSpec::Scalar(s) => Box::new(ScalarStore::new(shape, *s)?),
        KvSpec::Pq(p) => Box::new(PqStore::new(shape, *p)?),
    })
}

/// Parses a cache saved with [`KvStore::save`] / [`KvStore::to_bytes`]; `path` only names the source in errors.
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Box<dyn KvStore>> {
    let (spec, shape, mut body) = crate::persist::open(bytes, path)?;
    let store: Box<dyn KvStore> = match spec {
        KvSpec::Dense => Box::new(DenseStore::read_body(shape, &mut body)?),
        KvSpec::Scalar(s) => Box::new(ScalarStore::read_body(shape, s, &mut body)?),
        KvSpec::Pq(p) => Box::new(PqStore::read_body(shape, p, &mut body)?),
    };
    body.finish()?;
    Ok(store)
}

/// Loads a cache file written by [`KvStore::save`].
pub fn load(path: &Path) -> Result<Box<dyn KvStore>> {
    from_bytes(&aqpim_pq::io::read_all(path)?, path)
}
