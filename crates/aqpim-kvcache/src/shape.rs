//! [`KvShape`]: layers, KV heads, query heads and head size of a model's cache.

use std::fmt;

use crate::error::{KvError, Result};
use crate::limits::{MAX_HEAD_DIM, MAX_KV_HEADS, MAX_LAYERS};

/// The shape of a model's KV cache: `num_layers x num_kv_heads x tokens x head_dim`
/// for keys and again for values.
///
/// Grouped-query attention: `num_q_heads` query heads share the
/// `num_kv_heads` KV heads, `num_q_heads / num_kv_heads` per KV head (query
/// head `h` reads KV head `h / group_size`). The cache stores KV heads only;
/// the query-head count is carried for the kernels and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct KvShape {
    num_layers: usize,
    num_kv_heads: usize,
    num_q_heads: usize,
    head_dim: usize,
}

impl KvShape {
    /// A multi-head-attention shape (as many query heads as KV heads).
    pub fn new(num_layers: usize, num_kv_heads: usize, head_dim: usize) -> Result<Self> {
        Self::with_query_heads(num_layers, num_kv_heads, num_kv_heads, head_dim)
    }

    /// A grouped-query shape: `num_q_heads` must be a positive multiple of `num_kv_heads`.
    pub fn with_query_heads(
        num_layers: usize,
        num_kv_heads: usize,
        num_q_heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        for (name, v, max) in [
            ("layers", num_layers, MAX_LAYERS),
            ("KV heads", num_kv_heads, MAX_KV_HEADS),
            ("query heads", num_q_heads, MAX_KV_HEADS),
            ("head_dim", head_dim, MAX_HEAD_DIM),
        ] {
            if v == 0 {
                return Err(KvError::BadShape(format!("{name} must be at least 1")));
            }
            if v > max {
                return Err(KvError::BadShape(format!(
                    "{name} = {v} is more than the limit of {max}"
                )));
            }
        }
        if !num_q_heads.is_multiple_of(num_kv_heads) {
            return Err(KvError::BadShape(format!(
                "{num_q_heads} query heads are not a multiple of {num_kv_heads} KV heads"
            )));
        }
        Ok(KvShape {
            num_layers,
            num_kv_heads,
            num_q_heads,
            head_dim,
        })
    }

    /// The Llama-2-7B cache shape: 32 layers, 32 KV heads (no GQA), head size 128
    /// (Touvron et al. 2023, Table 1: d_model 4096, 32 heads).
    pub fn llama2_7b() -> Self {
        KvShape {
            num_layers: 32,
            num_kv_heads: 32,
            num_q_heads: 32,
            head_dim: 128,
        }
    }

    /// Number of layers (L).
    pub fn num_layers(&self) -> usize {
        self.num_layers
    }
    /// Number of KV heads per layer (H_kv).
    pub fn num_kv_heads(&self) -> usize {
        self.num_kv_heads
    }
    /// Number of query heads per layer (H_q, a multiple of H_kv).
    pub fn num_q_heads(&self) -> usize {
        self.num_q_heads
    }
    /// Elements per head vector (d).
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// Query heads per KV head (`H_q / H_kv`).
    pub fn group_size(&self) -> usize {
        self.num_q_heads / self.num_kv_heads
    }
    /// The KV head that query head `q` reads (`q / group_size`).
    pub fn kv_head_of(&self, q: usize) -> usize {
        q / self.group_size()
    }
    /// Elements of one layer's keys (or values) for one token: `H_kv * d`.
    pub fn token_elems(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    pub(crate) fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.num_layers {
            return Err(KvError::LayerOutOfRange {
                layer,
                num_layers: self.num_layers,
            });
        }
        Ok(())
    }

    pub(crate) fn check_head(&self, layer: usize, head: usize) -> Result<()> {
        self.check_layer(layer)?;
        if head >= self.num_kv_heads {
            return Err(KvError::HeadOutOfRange {
                head,
                num_kv_heads: self.num_kv_heads,
            });
        }
        Ok(())
    }
}

impl fmt::Display for KvShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} layers x {} KV heads ({} query heads) x head_dim {}",
            self.num_layers, self.num_kv_heads, self.num_q_heads, self.head_dim
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gqa_groups() {
        let s = KvShape::with_query_heads(30, 3, 9, 64).unwrap();
        assert_eq!(s.group_size(), 3);
        assert_eq!(s.kv_head_of(5), 1);
        assert!(KvShape::with_query_heads(1, 3, 8, 64).is_err());
        assert!(KvShape::new(0, 1, 1).is_err());
        assert!(KvShape::new(4_294_967_295, 1, 128).is_err());
        assert!(KvShape::with_query_heads(1, 1_048_576, 1_048_576, 128).is_err());
        assert!(KvShape::new(MAX_LAYERS, MAX_KV_HEADS, MAX_HEAD_DIM).is_ok());
        assert!(matches!(
            s.check_head(30, 0),
            Err(KvError::LayerOutOfRange { layer: 30, .. })
        ));
        assert!(matches!(
            s.check_head(0, 3),
            Err(KvError::HeadOutOfRange { head: 3, .. })
        ));
    }
}
