//! Online refinement (`refine=W`): a cache's centroids end at the mean of
//! their calibrated value (weight `W`) and of the tokens encoded with them,
//! a saved and reloaded cache refines on as if it had never been saved, and
//! `refine=0` (the default) leaves calibrated codebooks untouched.

mod common;

use aqpim_kvcache::{build, from_bytes, KvPart, KvShape, KvSpec, KvStore, PqStore};
use aqpim_pq::{PqParams, ProductQuantizer, TrainOptions};
use common::{f16_round, feed, layer_input, tokens};
use std::path::Path;

fn trained(d: usize, m: usize, nbits: u32, seed: u64) -> ProductQuantizer {
    let p = PqParams::new(d, m, nbits).unwrap();
    let data = aqpim_pq::synth::kv_like(256, d, seed);
    let opts = TrainOptions {
        iterations: 3,
        ..TrainOptions::default()
    };
    ProductQuantizer::train(p, &data, &opts).unwrap()
}

const SHAPE: (usize, usize, usize) = (2, 2, 8);

/// A store of `spec` with calibrated codebooks (keys 8-bit `dsub=2`, values
/// 3-bit `dsub=2`) for every head.
fn calibrated(spec: &str) -> Box<dyn KvStore> {
    let shape = KvShape::new(SHAPE.0, SHAPE.1, SHAPE.2).unwrap();
    let mut store = build(shape, &spec.parse::<KvSpec>().unwrap()).unwrap();
    let pq = store.as_pq_mut().unwrap();
    for l in 0..SHAPE.0 {
        for h in 0..SHAPE.1 {
            let seed = (l * 2 + h) as u64;
            pq.set_codebooks(l, h, trained(8, 4, 8, seed), trained(8, 4, 3, seed + 10))
                .unwrap();
        }
    }
    store
}

/// `(w c0 + sum x) / (w + n_j)` per centroid over head `h`'s encoded tokens
/// of `layer`, in f64.
fn expected(
    pq: &PqStore,
    layer: usize,
    h: usize,
    part: KvPart,
    c0: &ProductQuantizer,
    x: &[f32],
    w: f64,
) -> Vec<f64> {
    let view = pq.head(layer, h).unwrap();
    let codes = if part == KvPart::Keys {
        view.key_codes
    } else {
        view.value_codes
    };
    let p = c0.params();
    let (m_all, ksub, dsub) = (p.num_subspaces(), p.ksub(), p.dsub());
    let mut sum: Vec<f64> = c0.centroids().iter().map(|&c| w * f64::from(c)).collect();
    let mut count = vec![w; m_all * ksub];
    let first = view.regions.sinks;
    for t in 0..codes.tokens() {
        let tok = &x[(first + t) * p.dim()..(first + t + 1) * p.dim()];
        for m in 0..m_all {
            let k = m * ksub + usize::from(codes.code(t, m));
            count[k] += 1.0;
            for e in 0..dsub {
                sum[k * dsub + e] += f64::from(tok[m * dsub + e]);
            }
        }
    }
    sum.iter()
        .enumerate()
        .map(|(i, s)| s / count[i / dsub])
        .collect()
}

#[test]
fn refined_centroids_are_means_of_prior_and_encoded_tokens() {
    for w in [1u32, 4] {
        let mut store = calibrated(&format!(
            "pq:dsub=2,kbits=8,vbits=3,sinks=1,window=2,refine={w}"
        ));
        let shape = *store.shape();
        let n = 40;
        let (k, v) = layer_input(&shape, n, 3);
        // A prefill of 16 tokens, then one token at a time.
        feed(store.as_mut(), 0, &k, &v, n, 16);
        let pq = store.as_pq().unwrap();
        assert_eq!(pq.regions(0).unwrap().encoded, n - 3);
        for h in 0..2 {
            for (part, input, c0) in [
                (KvPart::Keys, &k, trained(8, 4, 8, h as u64)),
                (KvPart::Values, &v, trained(8, 4, 3, h as u64 + 10)),
            ] {
                let x = f16_round(&tokens(input, 2, n, 8, 0, n)[h * n * 8..(h + 1) * n * 8]);
                let want = expected(pq, 0, h, part, &c0, &x, f64::from(w));
                let got = pq.codebook(0, h, part).unwrap().unwrap();
                assert_ne!(
                    got, &c0,
                    "refine={w} moved no centroid of {part:?} head {h}"
                );
                for (g, e) in got.centroids().iter().zip(&want) {
                    assert!(
                        (f64::from(*g) - e).abs() <= 1e-4 * (1.0 + e.abs()),
                        "{g} vs {e}"
                    );
                }
            }
        }
        // Layer 1 saw no tokens: its codebooks are as calibrated.
        assert_eq!(
            pq.codebook(1, 0, KvPart::Keys).unwrap(),
            Some(&trained(8, 4, 8, 2))
        );
    }
}

#[test]
fn a_reloaded_cache_refines_as_if_never_saved() {
    let spec = "pq:dsub=2,kbits=8,vbits=3,sinks=1,window=2,refine=1";
    let shape = KvShape::new(SHAPE.0, SHAPE.1, SHAPE.2).unwrap();
    let (k, v) = layer_input(&shape, 30, 5);
    let (h, d) = (2, 8);
    let part = |t0, t1, x: &[f32]| tokens(x, h, 30, d, t0, t1);
    let mut straight = calibrated(spec);
    let mut saved = calibrated(spec);
    for s in [&mut straight, &mut saved] {
        s.prefill(0, &part(0, 12, &k), &part(0, 12, &v)).unwrap();
    }
    let mut reloaded = from_bytes(&saved.to_bytes(), Path::new("in memory")).unwrap();
    for t in 12..30 {
        for s in [&mut straight, &mut reloaded] {
            s.append(0, &part(t, t + 1, &k), &part(t, t + 1, &v))
                .unwrap();
        }
    }
    assert_eq!(straight.to_bytes(), reloaded.to_bytes());
}

#[test]
fn vrefine_moves_value_centroids_only() {
    let mut store = calibrated("pq:dsub=2,kbits=8,vbits=3,sinks=1,window=2,vrefine=1");
    let shape = *store.shape();
    let (k, v) = layer_input(&shape, 20, 4);
    feed(store.as_mut(), 0, &k, &v, 20, 8);
    let pq = store.as_pq().unwrap();
    assert_eq!(
        pq.codebook(0, 0, KvPart::Keys).unwrap(),
        Some(&trained(8, 4, 8, 0))
    );
    assert_ne!(
        pq.codebook(0, 0, KvPart::Values).unwrap(),
        Some(&trained(8, 4, 3, 10))
    );
}

#[test]
fn without_refine_calibrated_codebooks_stay_as_given() {
    let mut store = calibrated("pq:dsub=2,kbits=8,vbits=3,sinks=1,window=2");
    let shape = *store.shape();
    let (k, v) = layer_input(&shape, 20, 9);
    feed(store.as_mut(), 0, &k, &v, 20, 8);
    let pq = store.as_pq().unwrap();
    assert_eq!(pq.regions(0).unwrap().encoded, 17);
    assert_eq!(
        pq.codebook(0, 1, KvPart::Keys).unwrap(),
        Some(&trained(8, 4, 8, 1))
    );
    assert_eq!(
        pq.codebook(0, 1, KvPart::Values).unwrap(),
        Some(&trained(8, 4, 3, 11))
    );
}

#[test]
fn refine_is_parsed_printed_and_bounded() {
    let s: KvSpec = "pq:dsub=2,nbits=4,refine=3".parse().unwrap();
    assert!(s.to_string().contains(",refine=3"), "{s}");
    assert_eq!(s.to_string().parse::<KvSpec>().unwrap(), s);
    let v: KvSpec = "pq:dsub=2,nbits=4,vrefine=2".parse().unwrap();
    assert!(v.to_string().contains(",krefine=0,vrefine=2"), "{v}");
    assert_eq!(v.to_string().parse::<KvSpec>().unwrap(), v);
    let both: KvSpec = "pq:dsub=2,nbits=4,refine=2,krefine=1".parse().unwrap();
    assert!(both.to_string().contains(",krefine=1,vrefine=2"), "{both}");
    let off: KvSpec = "pq:dsub=2,nbits=4".parse().unwrap();
    assert!(!off.to_string().contains("refine"), "{off}");
    for bad in ["refine=-1", "refine=x", "refine=99999999"] {
        let e = format!("pq:dsub=2,nbits=4,{bad}")
            .parse::<KvSpec>()
            .unwrap_err();
        assert!(e.to_string().contains("refine"), "{bad}: {e}");
    }
}
