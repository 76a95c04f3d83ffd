//! The dense and scalar stores: exact FP16 tokens, scalar error within its
//! scale and falling as bits rise, accounting equal to allocation.

mod common;

use aqpim_kvcache::{account, build, KvShape, KvSpec, Regions};
use common::{config, f16_round, feed, layer_input, SEED};
use proptest::prelude::*;

proptest! {
    #![proptest_config(config(32, SEED))]

    #[test]
    fn dense_is_exact(n in 0usize..40, prefill in 0usize..40, seed in 0u64..100) {
        let prefill = prefill.min(n);
        let shape = KvShape::with_query_heads(2, 2, 4, 8).unwrap();
        let mut store = build(shape, &KvSpec::Dense).unwrap();
        for layer in 0..2 {
            let (k, v) = layer_input(&shape, n, seed + layer as u64);
            feed(store.as_mut(), layer, &k, &v, n, prefill);
            let view = store.dense_view(layer).unwrap();
            prop_assert_eq!(view.keys, f16_round(&k));
            prop_assert_eq!(view.values, f16_round(&v));
            prop_assert_eq!(store.as_dense().unwrap().keys(layer, 1).unwrap().len(), n);
        }
        prop_assert_eq!(store.memory_report(), account(&shape, &KvSpec::Dense, n).unwrap());
        prop_assert_eq!(store.memory_report().total_bytes, store.heap_bytes().used);
        store.shrink_to_fit();
        prop_assert_eq!(store.heap_bytes().capacity, store.heap_bytes().used);
    }

    #[test]
    fn scalar_keeps_fp16_tokens_and_bounds_the_rest(
        bits in prop::sample::select(vec![2u32, 4, 8]), group in prop::sample::select(vec![2usize, 4, 8]),
        window in 0usize..10, sinks in 0usize..3, n in 0usize..50, prefill_frac in 0.0f64..1.0, seed in 0u64..100,
    ) {
        let shape = KvShape::new(2, 3, 8).unwrap();
        let spec: KvSpec = format!("scalar:bits={bits},group={group},window={window},sinks={sinks}").parse().unwrap();
        let mut store = build(shape, &spec).unwrap();
        let prefill = (n as f64 * prefill_frac) as usize;
        let d = 8;
        for layer in 0..2 {
            let (k, v) = layer_input(&shape, n, seed + layer as u64);
            feed(store.as_mut(), layer, &k, &v, n, prefill);
            let reg = store.regions(layer).unwrap();
            prop_assert_eq!(reg, Regions::nominal(&spec, n));
            for h in 0..3 {
                let rec = store.reconstruct(layer, h).unwrap();
                let view = store.as_scalar().unwrap().head(layer, h).unwrap();
                for (p, (input, out)) in [(&k, &rec.keys), (&v, &rec.values)].into_iter().enumerate() {
                    let x = f16_round(&input[h * n * d..(h + 1) * n * d]);
                    let params = if p == 0 { view.key_params } else { view.value_params };
                    for t in 0..n {
                        for c in 0..d {
                            let (want, got) = (x[t * d + c], out[t * d + c]);
                            if t < reg.sinks || t >= reg.sinks + reg.encoded {
                                prop_assert_eq!(got, want);
                            } else {
                                // Within half a step of the group's scale (plus FP16 rounding of min and scale).
                                let e = t - reg.sinks;
                                let i = if p == 0 { ((e / group) * d + c) * 2 } else { (e * (d / group) + c / group) * 2 };
                                let scale = params[i + 1].to_f32();
                                let tol = 0.5 * scale + 4e-3 * (1.0 + want.abs());
                                prop_assert!((got - want).abs() <= tol, "token {} channel {}: {} vs {} (scale {})", t, c, got, want, scale);
                            }
                        }
                    }
                }
            }
        }
        let report = store.memory_report();
        prop_assert_eq!(&report, &account(&shape, &spec, n).unwrap());
        prop_assert_eq!(report.total_bytes, store.heap_bytes().used);
        store.shrink_to_fit();
        prop_assert_eq!(store.heap_bytes().capacity, report.total_bytes);
    }
}

proptest! {
    #![proptest_config(config(32, SEED))]

    /// MX groups: every encoded element within half a step of its group's
    /// E8M0 scale (FP16 inputs always fit the exponent range), sinks and
    /// window exact, tokens leaving the window one by one, accounting exact.
    #[test]
    fn mx_round_trip_is_within_half_a_step(
        bits in prop::sample::select(vec![2u32, 4, 8]), group in prop::sample::select(vec![2usize, 4, 8]),
        window in 0usize..10, sinks in 0usize..3, n in 0usize..50, prefill_frac in 0.0f64..1.0, seed in 0u64..100,
    ) {
        let shape = KvShape::new(2, 3, 8).unwrap();
        let spec: KvSpec = format!("scalar:bits={bits},group={group},window={window},sinks={sinks},mx=true").parse().unwrap();
        let mut store = build(shape, &spec).unwrap();
        let prefill = (n as f64 * prefill_frac) as usize;
        let d = 8;
        for layer in 0..2 {
            let (k, v) = layer_input(&shape, n, seed + layer as u64);
            feed(store.as_mut(), layer, &k, &v, n, prefill);
            let reg = store.regions(layer).unwrap();
            prop_assert_eq!(reg, Regions::nominal(&spec, n));
            prop_assert_eq!(reg.encoded, n.saturating_sub(sinks + window));
            for h in 0..3 {
                let rec = store.reconstruct(layer, h).unwrap();
                let view = store.as_scalar().unwrap().head(layer, h).unwrap();
                prop_assert!(view.key_params.is_empty() && view.value_params.is_empty());
                for (input, out, exps) in [(&k, &rec.keys, view.key_exponents), (&v, &rec.values, view.value_exponents)] {
                    prop_assert_eq!(exps.len(), reg.encoded * (d / group));
                    let x = f16_round(&input[h * n * d..(h + 1) * n * d]);
                    for t in 0..n {
                        for c in 0..d {
                            let (want, got) = (x[t * d + c], out[t * d + c]);
                            if t < reg.sinks || t >= reg.sinks + reg.encoded {
                                prop_assert_eq!(got, want);
                            } else {
                                let e = exps[(t - reg.sinks) * (d / group) + c / group];
                                let scale = aqpim_kvcache::mx::e8m0_scale(e);
                                prop_assert!((got - want).abs() <= 0.5 * scale, "token {} channel {}: {} vs {} (scale {})", t, c, got, want, scale);
                            }
                        }
                    }
                }
            }
        }
        let report = store.memory_report();
        prop_assert_eq!(&report, &account(&shape, &spec, n).unwrap());
        prop_assert_eq!(report.total_bytes, store.heap_bytes().used);
        store.shrink_to_fit();
        prop_assert_eq!(store.heap_bytes().capacity, report.total_bytes);
    }
}

#[test]
fn mx_error_falls_as_bits_rise() {
    let shape = KvShape::new(1, 2, 64).unwrap();
    let n = 64;
    let (k, v) = layer_input(&shape, n, 12);
    let mut last = f64::INFINITY;
    for bits in [2, 4, 8] {
        let spec: KvSpec = format!("scalar:bits={bits},window=0,mx=true")
            .parse()
            .unwrap();
        let mut store = build(shape, &spec).unwrap();
        store.prefill(0, &k, &v).unwrap();
        let view = store.dense_view(0).unwrap();
        let x = f16_round(&[k.clone(), v.clone()].concat());
        let y = [view.keys, view.values].concat();
        let mse = x
            .iter()
            .zip(&y)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            / x.len() as f64;
        assert!(
            mse < last / 4.0,
            "bits {bits}: MSE {mse} does not fall from {last}"
        );
        last = mse;
    }
}

#[test]
fn scalar_error_falls_as_bits_rise() {
    let shape = KvShape::new(1, 2, 64).unwrap();
    let n = 256;
    let (k, v) = layer_input(&shape, n, 11);
    let mut last = [f64::INFINITY; 2];
    for bits in [2, 4, 8] {
        let spec: KvSpec = format!("scalar:bits={bits},group=32,window=0")
            .parse()
            .unwrap();
        let mut store = build(shape, &spec).unwrap();
        store.prefill(0, &k, &v).unwrap();
        assert_eq!(store.regions(0).unwrap().encoded, n);
        let view = store.dense_view(0).unwrap();
        for (p, (x, y)) in [(&k, &view.keys), (&v, &view.values)]
            .into_iter()
            .enumerate()
        {
            let x = f16_round(x);
            let mse = x
                .iter()
                .zip(y)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum::<f64>()
                / x.len() as f64;
            assert!(
                mse < last[p] / 4.0,
                "bits {bits}, part {p}: MSE {mse} does not fall from {}",
                last[p]
            );
            last[p] = mse;
        }
    }
}

#[test]
fn scalar_reserve_is_exact() {
    let shape = KvShape::new(1, 2, 8).unwrap();
    let spec: KvSpec = "scalar:bits=2,group=4,window=3,sinks=1".parse().unwrap();
    let mut store = build(shape, &spec).unwrap();
    store.reserve(29);
    let (k, v) = layer_input(&shape, 29, 1);
    feed(store.as_mut(), 0, &k, &v, 29, 10);
    let heap = store.heap_bytes();
    assert_eq!(heap.used, account(&shape, &spec, 29).unwrap().total_bytes);
    // Only the window's empty slots remain: at most G - 1 = 3 tokens per head and part.
    assert!(
        heap.capacity >= heap.used && heap.capacity - heap.used <= 3 * 8 * 2 * 2 * 2,
        "{heap:?}"
    );
    store.shrink_to_fit();
    assert_eq!(store.heap_bytes().capacity, heap.used);
    // MX: tokens leave one by one, the window holds exactly R tokens.
    let spec: KvSpec = "scalar:bits=4,group=4,window=3,sinks=1,mx=true"
        .parse()
        .unwrap();
    let mut store = build(shape, &spec).unwrap();
    store.reserve(29);
    feed(store.as_mut(), 0, &k, &v, 29, 10);
    let heap = store.heap_bytes();
    assert_eq!(heap.used, account(&shape, &spec, 29).unwrap().total_bytes);
    assert_eq!(heap.capacity, heap.used);
}
