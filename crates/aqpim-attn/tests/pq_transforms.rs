//! The accuracy options of the PQ store keep attention on codes exact with
//! respect to the cache they describe: with centering, per-channel scaling, a
//! permuted subspace layout, a query metric (whitening), outlier tokens and
//! FP16 codebooks, attention computed on the codes (transforms folded into
//! the lookup tables and undone on the output) equals f64 attention on the
//! `reconstruct`ed cache. Fixed seeds.

mod common;

use aqpim_attn::attend;
use aqpim_attn::reference::{attention_f64, relative_error};
use aqpim_kvcache::{build, fit_transform, KvPart, KvShape, KvSpec};
use aqpim_pq::{ProductQuantizer, TrainOptions};
use common::config;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// KV-like data with a per-channel offset and scale, as real keys have.
fn data(n: usize, d: usize, seed: u64) -> Vec<f32> {
    aqpim_pq::synth::kv_like(n, d, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| 0.15 * v * (1.0 + (i % d) as f32 * 0.1) + 0.3 * ((i % d) as f32 * 0.7).sin())
        .collect()
}

/// Fills a one-layer cache (prefill, then appends) and compares attention on
/// codes with the f64 reference on the reconstructed cache. With
/// `calibrated`, codebooks and transforms are fit outside the store (with a
/// random query second moment for `whiten=`), as `aqpim pq calibrate` does.
fn check(
    shape: KvShape,
    spec: &str,
    ctx: usize,
    seed: u64,
    calibrated: bool,
) -> Result<(), TestCaseError> {
    let kv: KvSpec = spec.parse().unwrap();
    let KvSpec::Pq(p) = kv else { unreachable!() };
    let (g, d, h) = (shape.num_kv_heads(), shape.head_dim(), shape.num_q_heads());
    let mut cache = build(shape, &kv).unwrap();
    let x = data(g * ctx, d, seed);
    let per_head = |t0: usize, t1: usize| -> Vec<f32> {
        (0..g)
            .flat_map(|hh| x[(hh * ctx + t0) * d..(hh * ctx + t1) * d].iter().copied())
            .collect()
    };
    let val = |k: &[f32]| k.iter().map(|v| -0.5 * v + 0.1).collect::<Vec<f32>>();
    if calibrated {
        let train = data(600, d, seed + 99);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 5);
        let qs: Vec<f32> = (0..200 * d)
            .map(|_| rng.gen_range(-2.0f32..2.0) * (1.0 + rng.gen_range(0.0f32..1.0)))
            .collect();
        let moment = aqpim_pq::transform::second_moment(&qs, d);
        let opts = TrainOptions {
            iterations: 4,
            ..TrainOptions::default()
        };
        let pq = cache.as_pq_mut().unwrap();
        for head in 0..g {
            let mut parts = Vec::new();
            for (part, rows) in [(KvPart::Keys, train.clone()), (KvPart::Values, val(&train))] {
                let t = fit_transform(&p, part, &rows, d, Some(&moment)).unwrap();
                let rows = t.as_ref().map_or(rows.clone(), |t| t.apply(&rows).unwrap());
                let q = ProductQuantizer::train(p.params(d, part).unwrap(), &rows, &opts).unwrap();
                parts.push((q, t));
            }
            let (vq, vt) = parts.pop().unwrap();
            let (kq, kt) = parts.pop().unwrap();
            pq.set_codebooks(0, head, kq, vq).unwrap();
            pq.set_transforms(0, head, kt, vt).unwrap();
        }
    }
    let prompt = ctx - 3;
    let k0 = per_head(0, prompt);
    cache.prefill(0, &k0, &val(&k0)).unwrap();
    for t in prompt..ctx {
        let k = per_head(t, t + 1);
        cache.append(0, &k, &val(&k)).unwrap();
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
            err <= 5e-5,
            "{spec} ctx={ctx} head {qh}: relative error {err:e}"
        );
    }
    // Outliers are counted as FP16 tokens.
    let r = cache.memory_report();
    let encoded = cache.regions(0).unwrap().encoded;
    prop_assert_eq!(
        r.bytes.outliers,
        (2 * p.outlier_budget(encoded) * g * d * 2) as u64
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(24, 0x7A5F_0001))]

    #[test]
    fn online_options_keep_attention_on_codes_exact(
        kv_heads in 1usize..=2,
        group in 1usize..=3,
        kdsub in prop_oneof![Just(1usize), Just(2), Just(4)],
        vdsub in prop_oneof![Just(1usize), Just(2), Just(4)],
        nbits in prop_oneof![Just(2u32), Just(4), Just(8)],
        center in any::<bool>(),
        scale in any::<bool>(),
        halves in any::<bool>(),
        outliers in prop_oneof![Just(0usize), Just(10), Just(100)],
        cb16 in any::<bool>(),
        ctx in 300usize..=700,
        seed in 0u64..10_000,
    ) {
        let shape = KvShape::with_query_heads(1, kv_heads, kv_heads * group, 16).unwrap();
        let layout = if halves { "halves" } else { "contig" };
        let spec = format!("pq:kdsub={kdsub},vdsub={vdsub},nbits={nbits},sinks=2,window=16,iters=4,center={center},scale={scale},layout={layout},outliers={outliers},cb16={cb16}");
        check(shape, &spec, ctx, seed, false)?;
    }

    #[test]
    fn calibrated_query_metric_keeps_attention_on_codes_exact(
        whiten in prop_oneof![Just("diag"), Just("full")],
        center in any::<bool>(),
        halves in any::<bool>(),
        dsub in prop_oneof![Just(2usize), Just(4)],
        outliers in prop_oneof![Just(0usize), Just(20)],
        ctx in 100usize..=500,
        seed in 0u64..10_000,
    ) {
        let shape = KvShape::with_query_heads(1, 2, 4, 16).unwrap();
        let layout = if halves { "halves" } else { "contig" };
        let spec = format!("pq:dsub={dsub},nbits=4,sinks=2,window=8,whiten={whiten},center={center},layout={layout},outliers={outliers}");
        check(shape, &spec, ctx, seed, true)?;
    }
}

#[test]
fn calibration_only_options_refuse_online_training() {
    let shape = KvShape::new(1, 1, 8).unwrap();
    for spec in [
        "pq:dsub=2,nbits=4,whiten=full,sinks=0,window=0",
        "pq:dsub=2,nbits=4,vweight=true,sinks=0,window=0",
    ] {
        let mut cache = build(shape, &spec.parse().unwrap()).unwrap();
        let x = data(64, 8, 1);
        let e = cache.prefill(0, &x, &x).unwrap_err().to_string();
        assert!(e.contains("calibrat"), "{spec}: {e}");
    }
}
