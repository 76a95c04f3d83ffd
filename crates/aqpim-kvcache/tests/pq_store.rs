//! The PQ store: exact full-precision tokens, encoded tokens equal to their
//! codebook's decode, accounting equal to allocation, GQA, sharing, calibrated
//! codebooks and errors.

mod common;

use aqpim_kvcache::{account, build, KvError, KvPart, KvShape, KvSpec, KvStore, PqStore, Regions};
use aqpim_pq::{PqParams, ProductQuantizer, TrainOptions};
use common::{config, f16_round, feed, layer_input, SEED};
use proptest::prelude::*;

fn spec(s: &str) -> KvSpec {
    s.parse().unwrap()
}

/// Checks every token of every head of `layer` against the input it came from.
fn check_layer(store: &PqStore, layer: usize, keys: &[f32], values: &[f32], n: usize) {
    let shape = *store.shape();
    let (h_count, d) = (shape.num_kv_heads(), shape.head_dim());
    let reg = store.regions(layer).unwrap();
    assert_eq!(reg.total(), n);
    for h in 0..h_count {
        let view = store.head(layer, h).unwrap();
        let rec = store.reconstruct(layer, h).unwrap();
        assert_eq!(
            (
                view.sink_keys.len(),
                view.key_codes.tokens(),
                view.recent_keys.len()
            ),
            (reg.sinks, reg.encoded, reg.recent)
        );
        for (input, out, pq) in [
            (keys, &rec.keys, view.key_codebook),
            (values, &rec.values, view.value_codebook),
        ] {
            let x = f16_round(&input[h * n * d..(h + 1) * n * d]);
            for t in 0..n {
                let (want, got) = (&x[t * d..(t + 1) * d], &out[t * d..(t + 1) * d]);
                if t < reg.sinks || t >= reg.sinks + reg.encoded {
                    assert_eq!(
                        got, want,
                        "FP16 token {t} of head {h} must come back exactly"
                    );
                    continue;
                }
                // Encoded: the decode of the nearest centroid in each subspace.
                let pq = pq.expect("encoded tokens have a codebook");
                let p = pq.params();
                for (m, (xs, gs)) in want
                    .chunks_exact(p.dsub())
                    .zip(got.chunks_exact(p.dsub()))
                    .enumerate()
                {
                    let err =
                        |c: &[f32]| xs.iter().zip(c).map(|(a, b)| (a - b).powi(2)).sum::<f32>();
                    let best = pq
                        .subspace_centroids(m)
                        .chunks_exact(p.dsub())
                        .map(err)
                        .fold(f32::INFINITY, f32::min);
                    assert!(
                        pq.subspace_centroids(m)
                            .chunks_exact(p.dsub())
                            .any(|c| c == gs),
                        "token {t} subspace {m}: not a centroid"
                    );
                    assert!(
                        (err(gs) - best).abs() <= 1e-5 * (1.0 + best),
                        "token {t} subspace {m}: error {} but the nearest centroid gives {best}",
                        err(gs)
                    );
                }
                let mut codes = vec![0u8; p.num_subspaces()];
                pq.encode_one(want, &mut codes).unwrap();
                assert_eq!(
                    pq.decode(&codes).unwrap(),
                    got,
                    "token {t}: reconstruct != decode(encode(x))"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(config(24, SEED))]

    #[test]
    fn tokens_come_back_as_stored(
        sinks in 0usize..4, window in 0usize..12, n in 0usize..60, prefill_frac in 0.0f64..1.0,
        kbits in 1u32..5, vbits in 1u32..5, pack: bool, gqa: bool, flush in 1usize..5, seed in 0u64..1000,
    ) {
        let shape = if gqa { KvShape::with_query_heads(2, 2, 6, 8).unwrap() } else { KvShape::new(2, 3, 8).unwrap() };
        let s = spec(&format!("pq:dsub=2,kbits={kbits},vbits={vbits},sinks={sinks},window={window},pack={pack},flush={flush},iters=4,seed={seed}"));
        let mut store = build(shape, &s).unwrap();
        let prefill = (n as f64 * prefill_frac) as usize;
        for layer in 0..2 {
            let (k, v) = layer_input(&shape, n, seed + layer as u64);
            feed(store.as_mut(), layer, &k, &v, n, prefill);
            check_layer(store.as_pq().unwrap(), layer, &k, &v, n);
        }
        // Accounting equals what is held, and equals the unallocated accounting for this ctx.
        let report = store.memory_report();
        prop_assert_eq!(report.total_bytes, store.heap_bytes().used);
        prop_assert_eq!(&report, &account(&shape, &s, n).unwrap());
        store.shrink_to_fit();
        prop_assert_eq!(store.heap_bytes().capacity, report.total_bytes);
    }
}

#[test]
fn reserved_cache_allocates_exactly_the_report() {
    let shape = KvShape::new(1, 2, 8).unwrap();
    let s = spec("pq:dsub=2,nbits=4,sinks=2,window=5,iters=3");
    let mut store = build(shape, &s).unwrap();
    let n = 70;
    store.reserve(n);
    let (k, v) = layer_input(&shape, n, 3);
    feed(store.as_mut(), 0, &k, &v, n, 40);
    let heap = store.heap_bytes();
    assert_eq!(heap.capacity, heap.used, "no slack after an exact reserve");
    assert_eq!(heap.used, account(&shape, &s, n).unwrap().total_bytes);
}

#[test]
fn short_prompts_wait_for_enough_tokens_to_train() {
    let shape = KvShape::new(1, 1, 8).unwrap();
    let s = spec("pq:dsub=2,nbits=4,sinks=1,window=4,iters=3,train_min=20");
    let mut store = build(shape, &s).unwrap();
    let (k, v) = layer_input(&shape, 30, 5);
    feed(store.as_mut(), 0, &k, &v, 19, 6);
    assert_eq!(
        store.regions(0).unwrap(),
        Regions {
            sinks: 1,
            encoded: 0,
            recent: 18
        }
    );
    assert!(store
        .as_pq()
        .unwrap()
        .codebook(0, 0, KvPart::Keys)
        .unwrap()
        .is_none());
    let (k, v) = layer_input(&shape, 30, 5);
    let mut store = build(shape, &s).unwrap();
    feed(store.as_mut(), 0, &k, &v, 30, 6);
    assert_eq!(
        store.regions(0).unwrap(),
        Regions {
            sinks: 1,
            encoded: 25,
            recent: 4
        }
    );
    check_layer(store.as_pq().unwrap(), 0, &k, &v, 30);
}

#[test]
fn sharing_counts_codebooks() {
    let shape = KvShape::new(3, 2, 8).unwrap();
    for (share, groups) in [("none", 6), ("heads", 3), ("layers", 2), ("all", 1)] {
        let s = spec(&format!(
            "pq:dsub=4,nbits=4,sinks=0,window=2,share={share},iters=2"
        ));
        let mut store = build(shape, &s).unwrap();
        for layer in 0..3 {
            let (k, v) = layer_input(&shape, 24, layer as u64);
            feed(store.as_mut(), layer, &k, &v, 24, 24);
            check_layer(store.as_pq().unwrap(), layer, &k, &v, 24);
        }
        let pq = store.as_pq().unwrap();
        let report = store.memory_report();
        let cb = pq.params(KvPart::Keys).codebook_len() as u64 * 4;
        assert_eq!(report.bytes.key_codebooks, groups * cb, "share={share}");
        assert_eq!(report.bytes.value_codebooks, groups * cb, "share={share}");
        let same = |a: (usize, usize), b: (usize, usize)| {
            std::ptr::eq(
                pq.codebook(a.0, a.1, KvPart::Values).unwrap().unwrap(),
                pq.codebook(b.0, b.1, KvPart::Values).unwrap().unwrap(),
            )
        };
        assert_eq!(same((0, 0), (0, 1)), share == "heads" || share == "all");
        assert_eq!(same((0, 1), (2, 1)), share == "layers" || share == "all");
    }
}

fn trained(d: usize, m: usize, nbits: u32, seed: u64) -> ProductQuantizer {
    let p = PqParams::new(d, m, nbits).unwrap();
    let data = aqpim_pq::synth::kv_like(256, d, seed);
    ProductQuantizer::train(
        p,
        &data,
        &TrainOptions {
            iterations: 3,
            ..TrainOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn calibrated_codebooks_are_used_and_checked() {
    let shape = KvShape::new(2, 2, 8).unwrap();
    let s = spec("pq:dsub=2,kbits=4,vbits=3,sinks=1,window=2");
    let mut store = build(shape, &s).unwrap();
    let pq = store.as_pq_mut().unwrap();
    // Wrong shapes, named.
    let e = pq
        .set_codebooks(0, 0, trained(8, 4, 3, 1), trained(8, 4, 3, 2))
        .unwrap_err();
    assert!(
        matches!(
            e,
            KvError::CodebookShape {
                part: KvPart::Keys,
                layer: 0,
                head: 0,
                ..
            }
        ),
        "{e}"
    );
    let e = pq
        .set_codebooks(0, 1, trained(8, 4, 4, 1), trained(8, 2, 3, 2))
        .unwrap_err();
    assert!(
        matches!(
            e,
            KvError::CodebookShape {
                part: KvPart::Values,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        pq.set_codebooks(0, 2, trained(8, 4, 4, 1), trained(8, 4, 3, 2)),
        Err(KvError::HeadOutOfRange { head: 2, .. })
    ));
    for h in 0..2 {
        pq.set_codebooks(0, h, trained(8, 4, 4, h as u64), trained(8, 4, 3, 9))
            .unwrap();
    }
    // Five tokens: below ksub, yet encoded with the supplied codebooks (no training).
    let (k, v) = layer_input(&shape, 5, 7);
    feed(store.as_mut(), 0, &k, &v, 5, 5);
    assert_eq!(
        store.regions(0).unwrap(),
        Regions {
            sinks: 1,
            encoded: 2,
            recent: 2
        }
    );
    check_layer(store.as_pq().unwrap(), 0, &k, &v, 5);
    assert_eq!(
        store.as_pq().unwrap().codebook(0, 1, KvPart::Keys).unwrap(),
        Some(&trained(8, 4, 4, 1))
    );
    // Replacing a codebook that encoded tokens is refused.
    let e = store
        .as_pq_mut()
        .unwrap()
        .set_codebooks(0, 0, trained(8, 4, 4, 1), trained(8, 4, 3, 2))
        .unwrap_err();
    assert!(matches!(e, KvError::CodebookInUse { tokens: 2, .. }), "{e}");
}

#[test]
fn bad_inputs_say_what_and_where() {
    let shape = KvShape::new(2, 2, 8).unwrap();
    let mut store = build(shape, &spec("pq:dsub=2,nbits=4")).unwrap();
    let (mut k, v) = layer_input(&shape, 3, 1);
    assert!(matches!(
        store.prefill(2, &k, &v),
        Err(KvError::LayerOutOfRange {
            layer: 2,
            num_layers: 2
        })
    ));
    assert!(matches!(
        store.prefill(0, &k[..40], &v[..40]),
        Err(KvError::Shape { .. })
    ));
    assert!(matches!(
        store.append(0, &k[..16], &v[..15]),
        Err(KvError::Shape { .. })
    ));
    assert!(matches!(
        store.append(0, &k[..8], &v[..8]),
        Err(KvError::Shape { .. })
    ));
    k[(3 + 2) * 8 + 6] = f32::INFINITY;
    let e = store.prefill(1, &k, &v).unwrap_err();
    assert!(
        matches!(
            e,
            KvError::NonFinite {
                part: KvPart::Keys,
                layer: 1,
                head: 1,
                token: 2,
                channel: 6,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("not finite"));
    assert_eq!(
        store.num_tokens(1).unwrap(),
        0,
        "a rejected call changes nothing"
    );
    assert!(matches!(
        store.reconstruct(0, 5),
        Err(KvError::HeadOutOfRange { head: 5, .. })
    ));
    assert!(matches!(
        store.as_pq().unwrap().head(9, 0),
        Err(KvError::LayerOutOfRange { .. })
    ));
    assert!(matches!(
        build(shape, &spec("pq:dsub=3")),
        Err(KvError::Incompatible { .. })
    ));
}

#[test]
fn batched_flushes_are_staggered_across_layers() {
    // flush = 4 over 4 layers: layer l encodes when (n + l) % 4 == 0.
    let shape = KvShape::new(4, 1, 8).unwrap();
    let s = spec("pq:dsub=2,nbits=4,sinks=1,window=2,flush=4,iters=2");
    let KvSpec::Pq(p) = &s else { unreachable!() };
    let mut store = build(shape, &s).unwrap();
    let (k, v) = layer_input(&shape, 40, 2);
    let first = |x: &[f32]| common::tokens(x, 1, 40, 8, 0, 20);
    for layer in 0..4 {
        store.prefill(layer, &first(&k), &first(&v)).unwrap();
    }
    for n in 20..40 {
        let flushing: Vec<usize> = (0..4).filter(|&l| (n + l) % 4 == 0).collect();
        assert_eq!(flushing.len(), 1, "one layer flushes per step");
        for layer in 0..4 {
            let reg = store.regions(layer).unwrap();
            assert_eq!(reg.encoded, p.encoded_target(n, layer, 4));
            assert!(reg.recent >= 2 && reg.recent <= 2 + 3, "{reg:?}");
            let t = n - 20;
            let one = |x: &[f32]| common::tokens(x, 1, 40, 8, 20 + t, 21 + t);
            if n < 39 {
                store.append(layer, &one(&k), &one(&v)).unwrap();
            }
        }
    }
    for layer in 0..4 {
        check_layer(
            store.as_pq().unwrap(),
            layer,
            &common::tokens(&k, 1, 40, 8, 0, 39),
            &common::tokens(&v, 1, 40, 8, 0, 39),
            39,
        );
    }
    assert_eq!(store.memory_report(), account(&shape, &s, 39).unwrap());
}
