//! Decode attention of one query token on PQ caches (4-bit and 8-bit codes),
//! on the CPU kernels, next to the same attention on an exact FP16 cache of
//! the same tokens.
//!
//! Run with `cargo run -p aqpim-attn --example attend_pq --release`.

use aqpim_kvcache::{build, KvShape, KvSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One layer, 2 KV heads of dimension 64, 4 query heads (grouped-query
    // attention), 1024 tokens of key/value-like synthetic data laid out
    // `KV heads x tokens x head_dim`.
    let (kv_heads, heads, dim, tokens) = (2, 4, 64, 1024);
    let shape = KvShape::with_query_heads(1, kv_heads, heads, dim)?;
    let keys = aqpim_pq::synth::kv_like(kv_heads * tokens, dim, 1);
    let values = aqpim_pq::synth::kv_like(kv_heads * tokens, dim, 2);
    let queries = aqpim_pq::synth::kv_like(heads, dim, 3);

    let specs = [
        "dense",
        "pq:dsub=4,nbits=4,sinks=4,window=32",
        "pq:dsub=2,nbits=8,sinks=4,window=32",
    ];
    let mut outputs = Vec::new();
    for spec in specs {
        let spec: KvSpec = spec.parse()?;
        let mut cache = build(shape, &spec)?;
        cache.prefill(0, &keys, &values)?;
        let mut o = vec![0f32; heads * dim];
        // `attend` picks the kernel of the store: dense, PQ or scalar.
        aqpim_attn::attend(cache.as_ref(), 0, &queries, &mut o)?;
        outputs.push(o);
    }
    let dense = &outputs[0];
    let norm = dense.iter().map(|a| a * a).sum::<f32>().sqrt();
    for (spec, o) in specs.iter().zip(&outputs).skip(1) {
        let err = dense
            .iter()
            .zip(o)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            .sqrt();
        println!(
            "{spec}: relative L2 error of the attention output {:.4} ({heads} heads x {tokens} tokens, |o| = {norm:.3})",
            err / norm
        );
    }
    Ok(())
}
