//! Property tests of the product quantizer, with fixed seeds: exact round-trips,
//! ADC against brute force, monotonicity in bits, thread independence, files.

mod common;

use aqpim_pq::{
    pack_2bit, pack_4bit, unpack_2bit, FastScanCodes, Init, PqError, PqParams, ProductQuantizer,
    TrainOptions,
};
use common::config;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_codebook(params: PqParams, seed: u64) -> ProductQuantizer {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = (0..params.codebook_len())
        .map(|_| rng.gen_range(-4.0f32..4.0))
        .collect();
    ProductQuantizer::from_centroids(params, c).unwrap()
}

/// A codebook of distinct small-integer centroids in every subspace. The fast
/// distance formula `|x|^2 - 2 x.c + |c|^2` is exact on small integers, so the
/// nearest centroid of a centroid is itself, with no near-tie to blur it
/// (random float centroids can lie closer together than f32 rounding).
fn integer_codebook(params: PqParams, seed: u64) -> ProductQuantizer {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (dsub, ksub) = (params.dsub(), params.ksub());
    let mut c = Vec::with_capacity(params.codebook_len());
    for _ in 0..params.num_subspaces() {
        let mut seen = std::collections::HashSet::new();
        while seen.len() < ksub {
            let v: Vec<i32> = (0..dsub).map(|_| rng.gen_range(-200..200)).collect();
            if seen.insert(v.clone()) {
                c.extend(v.iter().map(|&x| x as f32));
            }
        }
    }
    ProductQuantizer::from_centroids(params, c).unwrap()
}

fn random_codes(params: PqParams, n: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * params.num_subspaces())
        .map(|_| rng.gen_range(0..params.ksub()) as u8)
        .collect()
}

/// (dsub, M, nbits) shapes, odd dsub included.
fn shapes() -> impl Strategy<Value = (usize, usize, u32)> {
    (1usize..=9, prop_oneof![1usize..=12, 13usize..=40], 1u32..=8)
}

proptest! {
    #![proptest_config(config(48, 0xA9F1))]

    /// Vectors built from centroids encode to their own codes and decode to themselves.
    #[test]
    fn centroid_built_vectors_round_trip_exactly((dsub, m, nbits) in shapes(), seed in 0u64..1000) {
        let params = PqParams::new(dsub * m, m, nbits).unwrap();
        let pq = integer_codebook(params, seed);
        let codes = random_codes(params, 17, seed + 1);
        let x = pq.decode(&codes).unwrap();
        let again = pq.encode(&x).unwrap();
        prop_assert_eq!(pq.decode(&again).unwrap(), x);
        prop_assert_eq!(again, codes);
    }

    /// The inner-product table is bit-for-bit the row-major dot product of the
    /// query's subspace with each centroid, summed in element order.
    #[test]
    fn inner_product_table_is_the_ordered_dot_product((dsub, m, nbits) in shapes(), seed in 0u64..1000) {
        let params = PqParams::new(dsub * m, m, nbits).unwrap();
        let pq = random_codebook(params, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed + 3);
        let q: Vec<f32> = (0..params.dim()).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        let lut = pq.inner_product_table(&q).unwrap();
        let want: Vec<f32> = q
            .chunks_exact(dsub)
            .enumerate()
            .flat_map(|(s, qm)| {
                pq.subspace_centroids(s)
                    .chunks_exact(dsub)
                    .map(|c| qm.iter().zip(c).map(|(x, y)| x * y).sum::<f32>())
                    .collect::<Vec<_>>()
            })
            .collect();
        prop_assert_eq!(lut.values().len(), want.len());
        for (i, (g, w)) in lut.values().iter().zip(&want).enumerate() {
            prop_assert_eq!(g.to_bits(), w.to_bits(), "entry {}", i);
        }
    }

    /// The weighted sum of a subspace's centroids equals the f64 sum, and bad
    /// shapes are errors.
    #[test]
    fn weighted_centroids_equal_the_f64_sum((dsub, m, nbits) in shapes(), seed in 0u64..1000) {
        let params = PqParams::new(dsub * m, m, nbits).unwrap();
        let pq = random_codebook(params, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed + 5);
        let ksub = params.ksub();
        for s in 0..m {
            let w: Vec<f32> = (0..ksub).map(|_| rng.gen_range(0.0f32..1.0)).collect();
            let mut out = vec![0.5f32; dsub];
            pq.add_weighted_centroids(s, &w, &mut out).unwrap();
            for (t, &got) in out.iter().enumerate() {
                let want: f64 = 0.5 + pq
                    .subspace_centroids(s)
                    .chunks_exact(dsub)
                    .zip(&w)
                    .map(|(c, &wj)| f64::from(wj) * f64::from(c[t]))
                    .sum::<f64>();
                let scale: f64 = 0.5 + w.iter().map(|&x| f64::from(x) * 4.0).sum::<f64>();
                prop_assert!((f64::from(got) - want).abs() <= 1e-6 * scale, "{} vs {}", got, want);
            }
        }
        let mut out = vec![0f32; dsub];
        prop_assert!(pq.add_weighted_centroids(m, &vec![0.0; ksub], &mut out).is_err());
        prop_assert!(pq.add_weighted_centroids(0, &vec![0.0; ksub + 1], &mut out).is_err());
        prop_assert!(pq.add_weighted_centroids(0, &vec![0.0; ksub], &mut [0.0; 10][..dsub + 1]).is_err());
    }

    /// ADC equals the dot product with the decoded vector (f64 brute force), for
    /// one-byte codes, packed 4-bit codes and the blocked fast-scan layout.
    #[test]
    fn adc_equals_brute_force((dsub, m, nbits) in shapes(), seed in 0u64..1000) {
        let params = PqParams::new(dsub * m, m, nbits).unwrap();
        let pq = random_codebook(params, seed);
        let n = 37;
        let codes = random_codes(params, n, seed + 7);
        let mut rng = ChaCha8Rng::seed_from_u64(seed + 9);
        let q: Vec<f32> = (0..params.dim()).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        let rec = pq.decode(&codes).unwrap();
        let exact: Vec<f64> = rec
            .chunks_exact(params.dim())
            .map(|v| v.iter().zip(&q).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum())
            .collect();
        let close = |got: &[f32]| got.iter().zip(&exact).all(|(g, e)| (f64::from(*g) - e).abs() <= 1e-4 * (1.0 + e.abs()));

        let lut = pq.inner_product_table(&q).unwrap();
        let mut out = vec![0f32; n];
        lut.scan_u8(&codes, &mut out).unwrap();
        prop_assert!(close(&out), "u8 scan {:?} vs {:?}", out, exact);
        if nbits <= 4 {
            let packed = pack_4bit(&codes, m).unwrap();
            lut.scan_packed4(&packed, &mut out).unwrap();
            prop_assert!(close(&out), "packed scan");
            FastScanCodes::from_codes(&codes, m).unwrap().scan(&lut, &mut out).unwrap();
            prop_assert!(close(&out), "fast scan");
        }
        if nbits <= 2 {
            let packed = pack_2bit(&codes, m).unwrap();
            lut.scan_packed2(&packed, &mut out).unwrap();
            prop_assert!(close(&out), "packed 2-bit scan");
        }
        // The L2 table gives squared distances to the decoded vectors.
        let l2 = pq.l2_table(&q).unwrap();
        for (i, v) in rec.chunks_exact(params.dim()).enumerate() {
            let want: f64 = v.iter().zip(&q).map(|(a, b)| f64::from(a - b).powi(2)).sum();
            let got = f64::from(l2.score(&codes[i * m..(i + 1) * m]));
            prop_assert!((got - want).abs() <= 1e-4 * (1.0 + want));
        }
    }
}

proptest! {
    #![proptest_config(config(64, 0x2B17))]

    /// Packed 2-bit rows round-trip, and their scan (vector path for 64
    /// tokens and more when `ceil(M / 4)` is a multiple of 4, portable
    /// otherwise) equals the row-by-row scores bit for bit; `M` runs over
    /// multiples of 4 and the rest.
    #[test]
    fn packed_scans_equal_row_scores_bit_for_bit(
        m in prop_oneof![1usize..=20, 120usize..=136],
        nbits in 1u32..=2,
        n in prop_oneof![0usize..=8, 60usize..=200],
        seed in 0u64..1000,
    ) {
        let params = PqParams::new(m, m, nbits).unwrap();
        let pq = random_codebook(params, seed);
        let codes = random_codes(params, n, seed + 3);
        let mut rng = ChaCha8Rng::seed_from_u64(seed + 5);
        let q: Vec<f32> = (0..m).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        let lut = pq.inner_product_table(&q).unwrap();
        let want: Vec<u32> = codes.chunks_exact(m).map(|c| lut.score(c).to_bits()).collect();

        let packed2 = pack_2bit(&codes, m).unwrap();
        prop_assert_eq!(packed2.len(), n * m.div_ceil(4));
        prop_assert_eq!(&unpack_2bit(&packed2, m).unwrap(), &codes);
        let mut out = vec![0f32; n];
        lut.scan_packed2(&packed2, &mut out).unwrap();
        prop_assert_eq!(out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
    }
}

/// More bits never raise the reconstruction error on the same data and seed.
#[test]
fn more_bits_never_raise_error() {
    let data = aqpim_pq::synth::kv_like(4096, 16, 5);
    let mut last = f64::INFINITY;
    for nbits in 1..=8 {
        let params = PqParams::new(16, 4, nbits).unwrap();
        let pq = ProductQuantizer::train(
            params,
            &data,
            &TrainOptions {
                iterations: 10,
                ..Default::default()
            },
        )
        .unwrap();
        let mse = pq.mse_per_vector(&data).unwrap();
        assert!(
            mse <= last,
            "nbits={nbits}: mse {mse} > {last} with fewer bits"
        );
        last = mse;
    }
}

/// Training gives identical codebooks on 1 and 2 threads.
#[test]
fn identical_codebooks_for_one_and_two_threads() {
    let data = aqpim_pq::synth::kv_like(3000, 32, 8);
    let params = PqParams::new(32, 8, 6).unwrap();
    let train = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| ProductQuantizer::train(params, &data, &TrainOptions::default()).unwrap())
    };
    let (a, b) = (train(1), train(2));
    assert_eq!(a.centroids(), b.centroids());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    assert_eq!(
        a.encode(&data).unwrap(),
        pool.install(|| b.encode(&data).unwrap())
    );
}

#[test]
fn file_round_trip_and_every_byte_corruption_detected() {
    let params = PqParams::new(6, 3, 3).unwrap();
    let pq = random_codebook(params, 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cb.pqcb");
    pq.save(&path).unwrap();
    assert_eq!(ProductQuantizer::load(&path).unwrap(), pq);

    let bytes = std::fs::read(&path).unwrap();
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[i] ^= flip;
            let e = ProductQuantizer::from_bytes(&bad, &path);
            assert!(
                matches!(e, Err(PqError::BadFile { .. })),
                "byte {i} ^ {flip:#x} was not detected"
            );
        }
    }
    for len in 0..bytes.len() {
        assert!(
            ProductQuantizer::from_bytes(&bytes[..len], &path).is_err(),
            "truncation to {len} loaded"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(ProductQuantizer::from_bytes(&longer, &path).is_err());
    // A missing file is an I/O error naming the path.
    let e = ProductQuantizer::load(&dir.path().join("missing")).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn saving_over_a_file_replaces_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cb.pqcb");
    random_codebook(PqParams::new(8, 2, 4).unwrap(), 1)
        .save(&path)
        .unwrap();
    let second = random_codebook(PqParams::new(4, 4, 2).unwrap(), 2);
    second.save(&path).unwrap();
    assert_eq!(ProductQuantizer::load(&path).unwrap(), second);
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn errors_name_what_is_wrong() {
    assert!(matches!(
        PqParams::new(10, 3, 8),
        Err(PqError::DimNotDivisible {
            dim: 10,
            num_subspaces: 3
        })
    ));
    assert!(matches!(
        PqParams::new(8, 2, 0),
        Err(PqError::OutOfRange { name: "nbits", .. })
    ));
    assert!(matches!(
        PqParams::new(8, 2, 9),
        Err(PqError::OutOfRange { name: "nbits", .. })
    ));
    let params = PqParams::new(4, 2, 8).unwrap();
    let few = vec![0.5f32; 4 * 100];
    assert!(matches!(
        ProductQuantizer::train(params, &few, &TrainOptions::default()),
        Err(PqError::TooFewPoints {
            needed: 256,
            got: 100
        })
    ));
    let mut data = aqpim_pq::synth::kv_like(300, 4, 1);
    data[4 * 123 + 2] = f32::INFINITY;
    let e = ProductQuantizer::train(params, &data, &TrainOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            PqError::NonFinite {
                row: 123,
                col: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("row 123, column 2"), "{e}");
    let pq = random_codebook(params, 3);
    assert!(matches!(pq.encode(&[1.0; 7]), Err(PqError::Shape { .. })));
    assert!(matches!(pq.decode(&[1, 2, 3]), Err(PqError::Shape { .. })));
    assert!(matches!(
        ProductQuantizer::from_centroids(params, vec![0.0; 5]),
        Err(PqError::Shape { .. })
    ));
    let p4 = PqParams::new(4, 2, 2).unwrap();
    let small = random_codebook(p4, 3);
    assert!(matches!(
        small.decode(&[0, 4]),
        Err(PqError::CodeOutOfRange {
            row: 0,
            subspace: 1,
            code: 4,
            ksub: 4
        })
    ));
}

#[test]
fn weighted_training_and_precomputed_init() {
    let data = aqpim_pq::synth::kv_like(2048, 8, 2);
    let params = PqParams::new(8, 2, 4).unwrap();
    let start = random_codebook(params, 5).centroids().to_vec();
    let opts = TrainOptions {
        init: Init::Precomputed(start),
        iterations: 5,
        ..Default::default()
    };
    let plain = ProductQuantizer::train(params, &data, &opts).unwrap();
    // Unit weights are the unweighted objective.
    let ones = vec![1.0f32; 2048];
    let weighted = ProductQuantizer::train_weighted(params, &data, &ones, &opts).unwrap();
    for (a, b) in plain.centroids().iter().zip(weighted.centroids()) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()));
    }
    // A wrongly sized initial codebook is a shape error.
    let bad = TrainOptions {
        init: Init::Precomputed(vec![0.0; 3]),
        ..Default::default()
    };
    assert!(matches!(
        ProductQuantizer::train(params, &data, &bad),
        Err(PqError::Shape { .. })
    ));
}
