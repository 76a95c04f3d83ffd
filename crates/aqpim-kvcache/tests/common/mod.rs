//! Helpers shared by the integration tests: inputs, feeding a store, references.
#![allow(dead_code)]

use aqpim_kvcache::{KvShape, KvStore};

/// Keys and values of one layer, `H x n x d` each, KV-like, deterministic.
pub fn layer_input(shape: &KvShape, n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let (h, d) = (shape.num_kv_heads(), shape.head_dim());
    let k = aqpim_pq::synth::kv_like(h * n, d, seed);
    let v: Vec<f32> = aqpim_pq::synth::kv_like(h * n, d, seed ^ 0xABCD)
        .iter()
        .map(|x| 0.5 * x)
        .collect();
    (k, v)
}

/// Tokens `[t0, t1)` of a `H x n x d` input, as `H x (t1 - t0) x d`.
pub fn tokens(x: &[f32], h: usize, n: usize, d: usize, t0: usize, t1: usize) -> Vec<f32> {
    (0..h)
        .flat_map(|head| x[(head * n + t0) * d..(head * n + t1) * d].iter().copied())
        .collect()
}

/// Feeds `n` tokens to `layer`: a prefill of the first `prefill` tokens, then
/// one `append` per remaining token.
pub fn feed(
    store: &mut dyn KvStore,
    layer: usize,
    keys: &[f32],
    values: &[f32],
    n: usize,
    prefill: usize,
) {
    let shape = *store.shape();
    let (h, d) = (shape.num_kv_heads(), shape.head_dim());
    if prefill > 0 {
        store
            .prefill(
                layer,
                &tokens(keys, h, n, d, 0, prefill),
                &tokens(values, h, n, d, 0, prefill),
            )
            .unwrap();
    }
    for t in prefill..n {
        store
            .append(
                layer,
                &tokens(keys, h, n, d, t, t + 1),
                &tokens(values, h, n, d, t, t + 1),
            )
            .unwrap();
    }
}

/// `x` rounded to FP16.
pub fn f16_round(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()
}

/// The seed of the property tests that need no other.
pub const SEED: u64 = 0x5eed_cafe;

/// A proptest config: `cases` cases from the fixed seed `seed`, no
/// persistence files (so every run is the same run).
pub fn config(cases: u32, seed: u64) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..proptest::test_runner::Config::default()
    }
}
