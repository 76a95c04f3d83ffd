//! The dense FP16 baseline kernel: every token through the shared
//! full-precision streaming path of [`crate::stream`].

use aqpim_kvcache::{DenseStore, KvStore};

use crate::error::Result;
use crate::stream::{finish, for_each_group, fp_tokens, Acc, Scratch};

/// Decode attention over a dense FP16 cache for one layer: `queries` holds
/// `H x d` (H query heads), `out` receives `H x d`. Query head `h` reads KV
/// head `h / (H / G)`. Parallel over KV heads.
pub fn attend_dense(
    store: &DenseStore,
    layer: usize,
    queries: &[f32],
    out: &mut [f32],
) -> Result<()> {
    for_each_group(
        store.shape(),
        layer,
        store.num_tokens(layer)?,
        queries,
        out,
        |g, qs, outs| dense_head_attention(store, layer, g, qs, outs),
    )
}

/// Attention of a group of query heads (`queries`: `g x d`, already scaled)
/// over one KV head of a dense cache, into `out` (`g x d`).
pub fn dense_head_attention(
    store: &DenseStore,
    layer: usize,
    kv_head: usize,
    queries: &[f32],
    out: &mut [f32],
) -> Result<()> {
    let keys = store.keys(layer, kv_head)?;
    let values = store.values(layer, kv_head)?;
    let d = keys.head_dim();
    let mut accs = vec![Acc::new(d, 0); queries.len() / d];
    fp_tokens(queries, keys, values, &mut accs, &mut Scratch::default());
    finish(&accs, out);
    Ok(())
}
