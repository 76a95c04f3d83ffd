//! Which value path the kernel takes for a head: with quantized score
//! tables, lanes for at most 16 centroids, rows for one-byte codes of 256
//! centroids, bins otherwise and with exact tables. That each path computes
//! attention is checked against the f64 reference in `tests/score_tables.rs`.

use aqpim_kvcache::{build, KvShape, KvSpec};

use super::{value_path, Values};
use crate::ScoreTables;

/// The path of head 0 of a one-layer cache of `spec` holding 300 tokens.
fn path_of(spec: &str, tables: ScoreTables) -> &'static str {
    let shape = KvShape::new(1, 1, 16).unwrap();
    let mut cache = build(shape, &spec.parse::<KvSpec>().unwrap()).unwrap();
    let keys = aqpim_pq::synth::kv_like(300, 16, 1);
    let values = aqpim_pq::synth::kv_like(300, 16, 2);
    cache.prefill(0, &keys, &values).unwrap();
    let view = cache.as_pq().unwrap().head(0, 0).unwrap();
    match value_path(&view, view.value_codebook.unwrap(), tables) {
        Values::Bins => "bins",
        Values::Lanes { .. } => "lanes",
        Values::Rows { .. } => "rows",
    }
}

#[test]
fn value_paths_follow_the_code_width_and_the_tables() {
    let byte = "pq:dsub=4,nbits=8,sinks=2,window=8,iters=2";
    let nibble = "pq:dsub=2,kbits=8,vbits=4,sinks=2,window=8,iters=2";
    let crumb = "pq:dsub=2,kbits=8,vbits=2,sinks=2,window=8,iters=2";
    assert_eq!(path_of(byte, ScoreTables::U8), "rows");
    assert_eq!(path_of(byte, ScoreTables::U16), "rows");
    assert_eq!(path_of(byte, ScoreTables::Exact), "bins");
    assert_eq!(path_of(nibble, ScoreTables::U8), "lanes");
    assert_eq!(path_of(nibble, ScoreTables::Exact), "bins");
    assert_eq!(path_of(crumb, ScoreTables::U8), "bins");
}
