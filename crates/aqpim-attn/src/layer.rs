//! One decode step of one layer: queries checked and scaled, split by KV head
//! (grouped-query attention), kernels run in parallel, dispatch by cache kind.

use aqpim_kvcache::KvStore;

use crate::error::{AttnError, Result};

/// Decode attention of one layer on any cache: `queries` holds `H x d`
/// (H query heads of the cache's shape), `out` receives `H x d`. The softmax
/// scale is `1 / sqrt(d)`. Dense caches use [`crate::attend_dense`], PQ caches
/// [`crate::attend_pq`] (on the codes, never decoding them), scalar caches
/// [`crate::attend_scalar`].
pub fn attend(cache: &dyn KvStore, layer: usize, queries: &[f32], out: &mut [f32]) -> Result<()> {
    if let Some(pq) = cache.as_pq() {
        crate::attend_pq(pq, layer, queries, out)
    } else if let Some(dense) = cache.as_dense() {
        crate::attend_dense(dense, layer, queries, out)
    } else if let Some(scalar) = cache.as_scalar() {
        crate::attend_scalar(scalar, layer, queries, out)
    } else {
        Err(AttnError::Unsupported("this kind of"))
    }
}

/// Attention of the query heads of one KV head's group: `queries` holds
/// `g x d` (unscaled; `g` any number of query heads reading `kv_head`), `out`
/// receives `g x d`, with softmax scale `scale` (usually `1 / sqrt(d)`). The
/// per-head entry point for harnesses that drive attention head by head.
pub fn attend_head(
    cache: &dyn KvStore,
    layer: usize,
    kv_head: usize,
    queries: &[f32],
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    let shape = cache.shape();
    let d = shape.head_dim();
    if layer >= shape.num_layers() || kv_head >= shape.num_kv_heads() {
        return Err(AttnError::shape(
            "layer and KV head",
            format!("< {} and < {}", shape.num_layers(), shape.num_kv_heads()),
            format!("{layer} and {kv_head}"),
        ));
    }
    if out.len() != queries.len() || queries.is_empty() || !queries.len().is_multiple_of(d) {
        return Err(AttnError::shape(
            "attend_head",
            format!("g x {d} queries and outputs"),
            format!("{} and {}", queries.len(), out.len()),
        ));
    }
    if cache.num_tokens(layer)? == 0 {
        return Err(AttnError::EmptyCache { layer });
    }
    let scaled = crate::stream::scaled_queries(queries, queries.len() / d, d, scale)?;
    if let Some(pq) = cache.as_pq() {
        crate::pq_head_attention(&pq.head(layer, kv_head)?, &scaled, out)
    } else if let Some(dense) = cache.as_dense() {
        crate::dense::dense_head_attention(dense, layer, kv_head, &scaled, out)
    } else if let Some(scalar) = cache.as_scalar() {
        crate::scalar::scalar_head_attention(scalar, layer, kv_head, &scaled, out)
    } else {
        Err(AttnError::Unsupported("this kind of"))
    }
}
