//! Attention on codes equals dense attention on the decoded cache (f64
//! reference), for random shapes, contexts and PQ settings, with fixed seeds.

mod common;

use aqpim_attn::reference::{attention_f64, relative_error};
use aqpim_attn::{attend, AttnError};
use aqpim_kvcache::{build, KvShape, KvSpec, Regions};
use common::config;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// Fills a one-layer cache with `ctx` tokens (a prefill then `steps` appends)
/// and checks every query head's output against the f64 reference on
/// `reconstruct`ed (decoded) keys and values.
fn check(
    shape: KvShape,
    spec: &str,
    ctx: usize,
    steps: usize,
    seed: u64,
    tol: f64,
) -> Result<Regions, TestCaseError> {
    let spec: KvSpec = spec.parse().unwrap();
    let (g, d, h) = (shape.num_kv_heads(), shape.head_dim(), shape.num_q_heads());
    let mut cache = build(shape, &spec).unwrap();
    let prompt = ctx - steps;
    // KV-like values, scaled into a range where softmax is neither flat nor one-hot.
    let data: Vec<f32> = aqpim_pq::synth::kv_like(g * ctx, d, seed)
        .iter()
        .map(|v| v * 0.15)
        .collect();
    let per_head = |t0: usize, t1: usize| -> Vec<f32> {
        (0..g)
            .flat_map(|hh| {
                data[(hh * ctx + t0) * d..(hh * ctx + t1) * d]
                    .iter()
                    .copied()
            })
            .collect()
    };
    let (k0, v0) = (
        per_head(0, prompt),
        per_head(0, prompt)
            .iter()
            .map(|v| -0.5 * v + 0.1)
            .collect::<Vec<_>>(),
    );
    cache.prefill(0, &k0, &v0).unwrap();
    for t in prompt..ctx {
        let k = per_head(t, t + 1);
        let v: Vec<f32> = k.iter().map(|v| -0.5 * v + 0.1).collect();
        cache.append(0, &k, &v).unwrap();
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 1);
    let queries: Vec<f32> = (0..h * d).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let mut out = vec![0f32; h * d];
    attend(cache.as_ref(), 0, &queries, &mut out).unwrap();
    for qh in 0..h {
        let kv = cache.reconstruct(0, shape.kv_head_of(qh)).unwrap();
        let want = attention_f64(
            &queries[qh * d..(qh + 1) * d],
            &kv.keys,
            &kv.values,
            1.0 / (d as f64).sqrt(),
        );
        let err = relative_error(&out[qh * d..(qh + 1) * d], &want);
        prop_assert!(
            err <= tol,
            "{spec} ctx={ctx} head {qh}: relative error {err:e}"
        );
    }
    Ok(cache.regions(0).unwrap())
}

proptest! {
    #![proptest_config(config(40, 0x05EE_DA77))]

    #[test]
    fn pq_attention_equals_reference_on_decoded_cache(
        kv_heads in 1usize..=3,
        group in 1usize..=3,
        dsub in prop_oneof![Just(1usize), Just(2), Just(4)],
        m in 2usize..=8,
        nbits in prop_oneof![Just(1u32), Just(2), Just(4), Just(5), Just(8)],
        sinks in 0usize..=4,
        window in 0usize..=40,
        ctx in 1usize..=900,
        steps in 0usize..=5,
        seed in 0u64..10_000,
    ) {
        let d = dsub * m;
        let shape = KvShape::with_query_heads(1, kv_heads, kv_heads * group, d).unwrap();
        let spec = format!("pq:dsub={dsub},nbits={nbits},sinks={sinks},window={window}");
        check(shape, &spec, ctx, steps.min(ctx - 1), seed, 2e-5)?;
    }

    #[test]
    fn dense_attention_equals_reference(kv_heads in 1usize..=3, group in 1usize..=4, d in 1usize..=40, ctx in 1usize..=700, seed in 0u64..10_000) {
        let shape = KvShape::with_query_heads(1, kv_heads, kv_heads * group, d).unwrap();
        check(shape, "fp16", ctx, 1.min(ctx - 1), seed, 2e-5)?;
    }
}

proptest! {
    #![proptest_config(config(24, 0x0005_CA1A))]

    #[test]
    fn scalar_attention_equals_reference_on_dequantized_cache(
        kv_heads in 1usize..=2,
        group_q in 1usize..=3,
        bits in prop_oneof![Just(2u32), Just(4), Just(8)],
        group in prop_oneof![Just(8usize), Just(16), Just(32)],
        sinks in 0usize..=3,
        window in 0usize..=40,
        ctx in 1usize..=700,
        seed in 0u64..10_000,
    ) {
        let shape = KvShape::with_query_heads(1, kv_heads, kv_heads * group_q, 32).unwrap();
        let spec = format!("scalar:bits={bits},group={group},sinks={sinks},window={window}");
        check(shape, &spec, ctx, 2.min(ctx - 1), seed, 2e-5)?;
    }
}

proptest! {
    #![proptest_config(config(24, 0x0005_CA1B))]

    /// MX-style groups (shared E8M0 exponent per `group` channels of a token):
    /// the kernel's dequantization equals the store's, whatever the bits,
    /// group, sinks, window and context.
    #[test]
    fn mx_attention_equals_reference_on_dequantized_cache(
        kv_heads in 1usize..=2,
        group_q in 1usize..=3,
        bits in prop_oneof![Just(2u32), Just(4), Just(8)],
        group in prop_oneof![Just(8usize), Just(16), Just(32)],
        sinks in 0usize..=3,
        window in 0usize..=40,
        ctx in 1usize..=700,
        seed in 0u64..10_000,
    ) {
        let shape = KvShape::with_query_heads(1, kv_heads, kv_heads * group_q, 32).unwrap();
        let spec = format!("scalar:bits={bits},group={group},sinks={sinks},window={window},mx=true");
        let r = check(shape, &spec, ctx, 2.min(ctx - 1), seed, 2e-5)?;
        prop_assert_eq!(r.encoded, ctx.saturating_sub(sinks + window));
    }
}

#[test]
fn long_context_with_every_region() {
    // 8-bit codes, sinks and a window, GQA; several blocks of encoded tokens.
    let shape = KvShape::with_query_heads(1, 2, 6, 32).unwrap();
    let r = check(
        shape,
        "pq:dsub=4,nbits=8,sinks=4,window=64",
        3000,
        20,
        9,
        2e-5,
    )
    .unwrap();
    assert_eq!((r.sinks, r.encoded, r.recent), (4, 3000 - 68, 64));
    let r = check(
        shape,
        "pq:dsub=2,nbits=4,sinks=0,window=0",
        2000,
        3,
        10,
        2e-5,
    )
    .unwrap();
    assert_eq!(r.encoded, 2000);
}

#[test]
fn bad_queries_and_empty_caches_are_errors() {
    let shape = KvShape::with_query_heads(2, 1, 2, 8).unwrap();
    let mut cache = build(shape, &"fp16".parse().unwrap()).unwrap();
    let mut out = vec![0f32; 16];
    assert!(matches!(
        attend(cache.as_ref(), 0, &[0.0; 16], &mut out),
        Err(AttnError::EmptyCache { layer: 0 })
    ));
    cache.prefill(0, &[0.5; 8], &[0.5; 8]).unwrap();
    let mut q = vec![0.1f32; 16];
    q[11] = f32::NAN;
    let e = attend(cache.as_ref(), 0, &q, &mut out).unwrap_err();
    assert!(
        matches!(
            e,
            AttnError::NonFiniteQuery {
                head: 1,
                index: 3,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        attend(cache.as_ref(), 0, &[0.0; 15], &mut out),
        Err(AttnError::Shape { .. })
    ));
    assert!(matches!(
        attend(cache.as_ref(), 0, &[0.0; 16], &mut out[..8]),
        Err(AttnError::Shape { .. })
    ));
    assert!(attend(cache.as_ref(), 5, &[0.0; 16], &mut out).is_err());
}

#[test]
fn head_by_head_equals_whole_layer() {
    for spec in [
        "fp16",
        "pq:dsub=2,nbits=4,sinks=2,window=16",
        "scalar:bits=2,group=16,window=16",
        "scalar:bits=4,group=8,window=16,mx=true",
    ] {
        let shape = KvShape::with_query_heads(1, 2, 4, 16).unwrap();
        let mut cache = build(shape, &spec.parse().unwrap()).unwrap();
        let data = aqpim_pq::synth::kv_like(2 * 300, 16, 4);
        cache.prefill(0, &data, &data).unwrap();
        let queries: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut whole = vec![0f32; 64];
        attend(cache.as_ref(), 0, &queries, &mut whole).unwrap();
        let mut by_head = vec![0f32; 64];
        for g in 0..2 {
            let (q, o) = (
                &queries[g * 32..(g + 1) * 32],
                &mut by_head[g * 32..(g + 1) * 32],
            );
            aqpim_attn::attend_head(cache.as_ref(), 0, g, q, 0.25, o).unwrap();
        }
        assert_eq!(whole, by_head, "{spec}");
        assert!(aqpim_attn::attend_head(
            cache.as_ref(),
            0,
            2,
            &queries[..16],
            0.25,
            &mut by_head[..16]
        )
        .is_err());
    }
}
