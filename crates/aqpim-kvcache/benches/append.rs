//! Criterion benchmark of one decode step's appends: one token into every
//! layer of the Llama-2-7B cache shape (32 layers x 32 KV heads x 128) with
//! `pq:dsub=4,nbits=8,sinks=4,window=128`, the window full, so that each
//! append encodes the token leaving it (2 x 1,024 heads x 32 subspaces x 256
//! centroids of nearest-centroid search per step).
//!
//! Per-head codebooks (`share=none`, the default) make the step memory-bound:
//! every step reads every head's search tables (2,048 codebooks x 32 x 256
//! centroids). `share=heads` (one codebook per layer) and `share=all` run
//! the same searches on tables that stay in cache, isolating the compute.
//! `flush=16` (tokens leave the window 16 at a time, layers staggered) reads
//! each codebook once per 16 tokens instead of once per token.
//! `AQPIM_KV_BENCH_VARIANTS="share=none;share=all"` picks the variants
//! (default: `share=none`, `share=none,flush=16`, `share=heads`, `share=all`).

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use aqpim_kvcache::{synth, KvShape, KvSpec, KvStore};
use criterion::{criterion_group, criterion_main, Criterion};

/// Whether criterion runs as a benchmark (`cargo bench`) rather than as a
/// smoke test (`cargo test --all-targets`), which gets a small shape.
fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn append_step(c: &mut Criterion) {
    let variants = std::env::var("AQPIM_KV_BENCH_VARIANTS")
        .unwrap_or_else(|_| "share=none;share=none,flush=16;share=heads;share=all".into());
    for variant in variants.split(';') {
        bench_variant(c, variant.trim());
    }
}

fn bench_variant(c: &mut Criterion, variant: &str) {
    let shape = if benchmarking() {
        KvShape::llama2_7b()
    } else {
        KvShape::new(2, 2, 128).expect("shape")
    };
    let text = format!("pq:dsub=4,nbits=8,sinks=4,window=128,{variant}");
    let KvSpec::Pq(spec) = text.parse::<KvSpec>().expect("valid spec") else {
        unreachable!("a pq spec")
    };
    let points = if benchmarking() { 4096 } else { 256 };
    let codebooks =
        synth::calibrated_codebooks(shape.head_dim(), &spec, points, 4, 1).expect("training");
    let mut store = synth::store_with_codebooks(shape, spec, &codebooks).expect("store");
    for layer in 0..shape.num_layers() {
        synth::fill_layer(&mut store, layer, 256, 256, layer as u64).expect("prefill");
    }
    let (k, v) = synth::layer_tokens(&shape, 1, 99);
    let before = store.regions(0).expect("layer 0");
    let flush = spec.regions.flush;
    c.bench_function(
        &format!(
            "append/{}x{}x{}/pq-dsub4-nbits8/{variant}",
            shape.num_layers(),
            shape.num_kv_heads(),
            shape.head_dim()
        ),
        |b| {
            b.iter(|| {
                for layer in 0..shape.num_layers() {
                    store.append(layer, &k, &v).expect("append");
                }
            })
        },
    );
    // The benchmark timed real work: every step appended a token, and without
    // batched flushing (`flush=1`) every step encoded one (with `flush=B` a
    // layer encodes only every B steps, which a one-step smoke run may miss).
    let after = store.regions(0).expect("layer 0");
    assert!(
        after.total() > before.total() && after.recent >= 128,
        "appends did not land: {after:?}"
    );
    if flush == 1 {
        assert!(
            after.encoded > before.encoded,
            "appends did not encode: {after:?}"
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = append_step
}
criterion_main!(benches);
