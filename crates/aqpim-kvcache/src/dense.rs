//! [`DenseStore`]: every key and value in FP16, the exact baseline.

use half::f16;

use crate::accounting::{account_regions, HeapBytes, MemoryReport, Regions};
use crate::error::Result;
use crate::persist::{self, Reader};
use crate::shape::KvShape;
use crate::spec::KvSpec;
use crate::store::{DenseKv, KvStore};
use crate::tokens::{check_layer_input, extend_f16, extend_f32, TokenSlices};

/// The FP16 cache: per (layer, KV head), keys and values `tokens x head_dim`.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseStore {
    shape: KvShape,
    spec: KvSpec,
    /// Tokens per layer.
    tokens: Vec<usize>,
    /// `[layer * H + head]`: keys, `tokens x d` FP16.
    keys: Vec<Vec<f16>>,
    /// `[layer * H + head]`: values, `tokens x d` FP16.
    values: Vec<Vec<f16>>,
}

impl DenseStore {
    /// An empty cache of `shape`.
    pub fn new(shape: KvShape) -> Self {
        let n = shape.num_layers() * shape.num_kv_heads();
        DenseStore {
            shape,
            spec: KvSpec::Dense,
            tokens: vec![0; shape.num_layers()],
            keys: vec![Vec::new(); n],
            values: vec![Vec::new(); n],
        }
    }

    /// Keys of one head, `tokens x head_dim`, borrowed.
    pub fn keys(&self, layer: usize, head: usize) -> Result<TokenSlices<'_>> {
        self.shape.check_head(layer, head)?;
        Ok(TokenSlices::new(
            &self.keys[layer * self.shape.num_kv_heads() + head],
            &[],
            self.shape.head_dim(),
        ))
    }

    /// Values of one head, `tokens x head_dim`, borrowed.
    pub fn values(&self, layer: usize, head: usize) -> Result<TokenSlices<'_>> {
        self.shape.check_head(layer, head)?;
        Ok(TokenSlices::new(
            &self.values[layer * self.shape.num_kv_heads() + head],
            &[],
            self.shape.head_dim(),
        ))
    }

    fn push(&mut self, layer: usize, keys: &[f32], values: &[f32], op: &'static str) -> Result<()> {
        let n = check_layer_input(&self.shape, layer, keys, values, op)?;
        let (h, d) = (self.shape.num_kv_heads(), self.shape.head_dim());
        for head in 0..h {
            let src = head * n * d..(head + 1) * n * d;
            extend_f16(&mut self.keys[layer * h + head], &keys[src.clone()]);
            extend_f16(&mut self.values[layer * h + head], &values[src]);
        }
        self.tokens[layer] += n;
        Ok(())
    }

    pub(crate) fn read_body(shape: KvShape, r: &mut Reader<'_>) -> Result<Self> {
        let mut s = DenseStore::new(shape);
        let (h, d) = (shape.num_kv_heads(), shape.head_dim());
        for layer in 0..shape.num_layers() {
            let n = r.u64("layer token count")?;
            let elems = r.mul(n, d, "layer tokens")?;
            for head in 0..h {
                s.keys[layer * h + head] = r.f16s(elems, "keys")?;
                s.values[layer * h + head] = r.f16s(elems, "values")?;
            }
            s.tokens[layer] = n;
        }
        Ok(s)
    }
}

impl KvStore for DenseStore {
    fn shape(&self) -> &KvShape {
        &self.shape
    }
    fn spec(&self) -> &KvSpec {
        &self.spec
    }
    fn num_tokens(&self, layer: usize) -> Result<usize> {
        self.shape.check_layer(layer)?;
        Ok(self.tokens[layer])
    }
    fn regions(&self, layer: usize) -> Result<Regions> {
        Ok(Regions {
            sinks: 0,
            encoded: 0,
            recent: self.num_tokens(layer)?,
        })
    }
    fn prefill(&mut self, layer: usize, keys: &[f32], values: &[f32]) -> Result<()> {
        self.push(layer, keys, values, "prefill")
    }
    fn append(&mut self, layer: usize, key: &[f32], value: &[f32]) -> Result<()> {
        if key.len() != self.shape.token_elems() {
            return Err(crate::KvError::shape(
                "append",
                format!("KV heads x head_dim = {} values", self.shape.token_elems()),
                key.len(),
            ));
        }
        self.push(layer, key, value, "append")
    }
    fn reconstruct(&self, layer: usize, head: usize) -> Result<DenseKv> {
        self.shape.check_head(layer, head)?;
        let i = layer * self.shape.num_kv_heads() + head;
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        extend_f32(&mut keys, &self.keys[i]);
        extend_f32(&mut values, &self.values[i]);
        Ok(DenseKv {
            heads: 1,
            tokens: self.tokens[layer],
            head_dim: self.shape.head_dim(),
            keys,
            values,
        })
    }
    fn memory_report(&self) -> MemoryReport {
        let layers: Vec<Regions> = self
            .tokens
            .iter()
            .map(|&n| Regions {
                sinks: 0,
                encoded: 0,
                recent: n,
            })
            .collect();
        account_regions(&self.shape, &self.spec, &layers, 0, 0)
            .expect("the dense spec fits every shape")
    }
    fn heap_bytes(&self) -> HeapBytes {
        let mut b = HeapBytes::default();
        self.keys.iter().chain(&self.values).for_each(|v| b.add(v));
        b
    }
    fn reserve(&mut self, tokens: usize) {
        let d = self.shape.head_dim();
        for v in self.keys.iter_mut().chain(self.values.iter_mut()) {
            v.reserve_exact((tokens * d).saturating_sub(v.len()));
        }
    }
    fn shrink_to_fit(&mut self) {
        self.keys
            .iter_mut()
            .chain(self.values.iter_mut())
            .for_each(Vec::shrink_to_fit);
    }
    fn to_bytes(&self) -> Vec<u8> {
        let mut w = persist::header(&self.spec, &self.shape);
        let h = self.shape.num_kv_heads();
        for layer in 0..self.shape.num_layers() {
            w.u64(self.tokens[layer]);
            for head in 0..h {
                w.f16s(&self.keys[layer * h + head]);
                w.f16s(&self.values[layer * h + head]);
            }
        }
        persist::finish(w)
    }
    fn as_dense(&self) -> Option<&DenseStore> {
        Some(self)
    }
}
