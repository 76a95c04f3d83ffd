//! Packing is lossless: a PQ cache with 2-bit codes stored four per byte
//! (`pack=true`) gives bit for bit the attention outputs and decoded vectors
//! of the same cache with one byte per code (`pack=false`), fixed seeds.

mod common;

use aqpim_attn::attend;
use aqpim_kvcache::{build, KvPart, KvShape, KvSpec, KvStore};
use aqpim_pq::CodeWidth;
use common::config;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// A one-layer cache of `spec` holding `ctx` tokens (a prefill, then 3 appends).
fn filled(shape: KvShape, spec: &str, ctx: usize, seed: u64) -> Box<dyn KvStore> {
    let (g, d) = (shape.num_kv_heads(), shape.head_dim());
    let mut cache = build(shape, &spec.parse::<KvSpec>().unwrap()).unwrap();
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
    let values = |k: &[f32]| k.iter().map(|v| -0.5 * v + 0.1).collect::<Vec<_>>();
    let prompt = ctx.saturating_sub(3);
    if prompt > 0 {
        let k = per_head(0, prompt);
        cache.prefill(0, &k, &values(&k)).unwrap();
    }
    for t in prompt..ctx {
        let k = per_head(t, t + 1);
        cache.append(0, &k, &values(&k)).unwrap();
    }
    cache
}

/// Checks `spec` with `pack=true` against `pack=false`: same outputs and
/// decoded vectors bit for bit, 2-bit rows of `ceil(M / 4)` bytes. Returns
/// the number of encoded tokens.
fn check(shape: KvShape, spec: &str, ctx: usize, seed: u64) -> Result<u64, TestCaseError> {
    let packed = filled(shape, &format!("{spec},pack=true"), ctx, seed);
    let loose = filled(shape, &format!("{spec},pack=false"), ctx, seed);
    let (h, d) = (shape.num_q_heads(), shape.head_dim());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 1);
    let queries: Vec<f32> = (0..h * d).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let (mut a, mut b) = (vec![0f32; h * d], vec![0f32; h * d]);
    attend(packed.as_ref(), 0, &queries, &mut a).unwrap();
    attend(loose.as_ref(), 0, &queries, &mut b).unwrap();
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    prop_assert_eq!(bits(&a), bits(&b), "{} ctx={}: outputs differ", spec, ctx);
    let pq = packed.as_pq().unwrap();
    for g in 0..shape.num_kv_heads() {
        prop_assert_eq!(
            packed.reconstruct(0, g).unwrap(),
            loose.reconstruct(0, g).unwrap()
        );
        let view = pq.head(0, g).unwrap();
        for codes in [view.key_codes, view.value_codes] {
            prop_assert_eq!(codes.width(), CodeWidth::Crumb);
            prop_assert_eq!(
                codes.data().len(),
                codes.tokens() * codes.num_subspaces().div_ceil(4)
            );
        }
    }
    let e = (pq.regions(0).unwrap().encoded * shape.num_kv_heads()) as u64;
    let m = pq.params(KvPart::Keys).num_subspaces() as u64;
    prop_assert_eq!(packed.memory_report().bytes.key_codes, e * m.div_ceil(4));
    prop_assert_eq!(loose.memory_report().bytes.key_codes, e * m);
    Ok(e)
}

#[test]
fn llama_head_dim_two_bit_codes_over_two_blocks() {
    // d = 128, dsub = 1: M = 128, 32 bytes a row (the vector scan), more
    // encoded tokens than one block of the kernel (4,096), GQA 2 x 4.
    let shape = KvShape::with_query_heads(1, 2, 8, 128).unwrap();
    let e = check(
        shape,
        "pq:dsub=1,nbits=2,sinks=4,window=64,iters=3",
        4300,
        7,
    )
    .unwrap();
    assert_eq!(e, 2 * (4300 - 68));
    // With outliers and centering (the value transform's weight sum).
    let e = check(
        shape,
        "pq:dsub=1,nbits=2,sinks=4,window=16,iters=3,outliers=5,center=true",
        900,
        8,
    )
    .unwrap();
    assert_eq!(e, 2 * (900 - 20));
}

proptest! {
    #![proptest_config(config(16, 0x2B17_0002))]

    #[test]
    fn two_bit_packing_changes_no_output_bit(
        kv_heads in 1usize..=2,
        group in 1usize..=3,
        d in 1usize..=40,
        kdsub in prop_oneof![Just(1usize), Just(2)],
        kbits in 1u32..=2,
        vbits in 1u32..=2,
        sinks in 0usize..=4,
        window in 0usize..=20,
        ctx in 1usize..=400,
        seed in 0u64..10_000,
    ) {
        let d = d * kdsub;
        let shape = KvShape::with_query_heads(1, kv_heads, kv_heads * group, d).unwrap();
        let spec = format!("pq:kdsub={kdsub},vdsub=1,kbits={kbits},vbits={vbits},sinks={sinks},window={window},iters=3");
        check(shape, &spec, ctx, seed)?;
    }
}
