//! Tests of pre-transforms: folding through scores and weighted sums,
//! whitening, centering, the compact (monomial) form against the dense one,
//! and transform files of both versions.

use std::path::Path;

use super::linalg::invert;
use super::*;
use rand::{Rng, SeedableRng};

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

#[test]
fn scores_and_weighted_sums_fold_through_the_transform() {
    for seed in 0..8 {
        let d = 8;
        let data = random(40 * d, seed);
        let s = second_moment(&random(200 * d, seed + 100), d);
        let a = matmul(
            &permutation_matrix(&[1, 0, 3, 2, 5, 4, 7, 6]),
            &sym_sqrt(&s, d, 1e-6),
            d,
        );
        let t = PreTransform::new(channel_mean(&data, d, None), Some(a)).unwrap();
        let x = t.apply(&data).unwrap();
        let back = t.undo(&x).unwrap();
        for (p, q) in back.iter().zip(&data) {
            assert!((p - q).abs() < 1e-4, "{p} vs {q}");
        }
        let q = random(d, seed + 7);
        let (tq, off) = t.query(&q).unwrap();
        for (row, xr) in data.chunks_exact(d).zip(x.chunks_exact(d)) {
            let want = dot(&q, row);
            let got = off + dot(&tq, xr);
            assert!((want - got).abs() < 1e-4, "{want} vs {got}");
        }
        let w = random(40, seed + 9)
            .iter()
            .map(|v| v.abs())
            .collect::<Vec<_>>();
        let mut s_t = vec![0f32; d];
        let mut want = vec![0f32; d];
        for ((row, xr), &wi) in data.chunks_exact(d).zip(x.chunks_exact(d)).zip(&w) {
            s_t.iter_mut().zip(xr).for_each(|(a, &v)| *a += wi * v);
            want.iter_mut().zip(row).for_each(|(a, &v)| *a += wi * v);
        }
        let mut got = vec![0f32; d];
        t.undo_sum(&s_t, w.iter().sum(), &mut got).unwrap();
        for (p, q) in got.iter().zip(&want) {
            assert!((p - q).abs() < 1e-3, "{p} vs {q}");
        }
    }
}

#[test]
fn whitening_makes_the_query_second_moment_the_identity() {
    let d = 6;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    // Correlated queries with unequal channel scales.
    let q: Vec<f32> = (0..4000)
        .flat_map(|_| {
            let z: Vec<f32> = (0..d).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            (0..d).map(move |i| z[i] * (i + 1) as f32 + 0.5 * z[(i + 1) % d])
        })
        .collect();
    let s = second_moment(&q, d);
    let t = PreTransform::new(vec![0.0; d], Some(sym_sqrt(&s, d, 0.0))).unwrap();
    // Queries of the folded table: A^-T q; their second moment is I.
    let tq: Vec<f32> = q
        .chunks_exact(d)
        .flat_map(|r| t.query(r).unwrap().0)
        .collect();
    let m = second_moment(&tq, d);
    for i in 0..d {
        for j in 0..d {
            let want = if i == j { 1.0 } else { 0.0 };
            assert!(
                (m[i * d + j] - want).abs() < 1e-3,
                "{i},{j}: {}",
                m[i * d + j]
            );
        }
    }
}

#[test]
fn centering_alone_leaves_per_subspace_kmeans_unchanged() {
    // k-means (k-means++ init, Lloyd steps) is translation-equivariant, so
    // training on x - mu gives the centroids of x shifted by mu and the same
    // codes, up to float rounding: mean centering only matters combined
    // with scaling or whitening.
    use crate::{PqParams, ProductQuantizer, TrainOptions};
    let d = 8;
    let data: Vec<f32> = crate::synth::kv_like(2000, d, 5)
        .iter()
        .enumerate()
        .map(|(i, v)| v + (i % d) as f32 * 0.75)
        .collect();
    let t = PreTransform::new(channel_mean(&data, d, None), None).unwrap();
    let opts = TrainOptions {
        iterations: 10,
        ..TrainOptions::default()
    };
    let p = PqParams::with_dsub(d, 2, 4).unwrap();
    let a = ProductQuantizer::train(p, &data, &opts).unwrap();
    let centered = t.apply(&data).unwrap();
    let b = ProductQuantizer::train(p, &centered, &opts).unwrap();
    let (ca, cb) = (a.encode(&data).unwrap(), b.encode(&centered).unwrap());
    let same = ca.iter().zip(&cb).filter(|(x, y)| x == y).count();
    assert!(same * 100 >= ca.len() * 99, "{same} of {}", ca.len());
}

#[test]
fn files_round_trip_and_corruption_is_detected() {
    let d = 4;
    let t = PreTransform::new(
        vec![0.5, -1.0, 2.0, 0.0],
        Some(permutation_matrix(&[3, 2, 1, 0])),
    )
    .unwrap();
    let p = Path::new("x.pqxf");
    let bytes = t.to_bytes();
    assert_eq!(PreTransform::from_bytes(&bytes, p).unwrap(), t);
    let plain = PreTransform::identity(d);
    assert_eq!(
        PreTransform::from_bytes(&plain.to_bytes(), p).unwrap(),
        plain
    );
    for i in [0, 9, 13, 30, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[i] ^= 0x40;
        assert!(PreTransform::from_bytes(&b, p).is_err(), "byte {i}");
    }
    assert!(PreTransform::new(vec![0.0; 2], Some(vec![1.0, 2.0, 2.0, 4.0])).is_err());
    assert!(PreTransform::new(vec![0.0; 2], Some(vec![1.0; 3])).is_err());
}

/// The same transform held dense, `A` and `A^-1` as `d x d` f32, as every
/// matrix was held before the monomial form existed.
fn dense_of(t: &PreTransform) -> PreTransform {
    let a = t.matrix().expect("a matrix").into_owned();
    let inv = invert(&a, t.dim()).expect("invertible");
    PreTransform {
        dim: t.dim(),
        mean: t.mean().to_vec(),
        matrix: Some(Matrix::Dense { a, inv }),
    }
}

/// A random permutation of `0..d` and a diagonal with magnitudes spread
/// over four decades (negative entries too when `signed`).
fn random_monomial(d: usize, seed: u64, signed: bool) -> (Vec<u16>, Vec<f32>) {
    use rand::seq::SliceRandom;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut perm: Vec<u16> = (0..d as u16).collect();
    perm.shuffle(&mut rng);
    let diag = (0..d)
        .map(|_| {
            let v = 10f32.powf(rng.gen_range(-2.0f32..2.0));
            if signed && rng.gen_bool(0.5) {
                -v
            } else {
                v
            }
        })
        .collect();
    (perm, diag)
}

/// Asserts `a == b` element by element (`==`: `+0` and `-0` agree, the one
/// difference the two forms can show, where a dense row sums its zeros).
fn assert_same(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(x == y, "{what}[{i}]: monomial {x} vs dense {y}");
    }
}

/// Every operation of the monomial form against the dense form of the same
/// matrix: the same single product per output, so equal results.
fn check_monomial_against_dense(d: usize, seed: u64, signed: bool) {
    let (perm, diag) = random_monomial(d, seed, signed);
    let mean: Vec<f32> = random(d, seed + 1).iter().map(|v| 3.0 * v).collect();
    let compact = PreTransform::monomial(mean.clone(), perm, diag).unwrap();
    let dense = dense_of(&compact);
    assert!(compact.monomial_parts().is_some() && dense.monomial_parts().is_none());
    assert_eq!(
        (compact.bytes(), dense.bytes()),
        (10 * d, 4 * d + 8 * d * d)
    );
    // The constructor recognises the dense matrix as monomial.
    let detected = PreTransform::new(mean, compact.matrix().map(|a| a.into_owned())).unwrap();
    assert_eq!(detected, compact);
    let data: Vec<f32> = random(17 * d, seed + 2).iter().map(|v| 50.0 * v).collect();
    let x = compact.apply(&data).unwrap();
    assert_same(&x, &dense.apply(&data).unwrap(), "apply");
    assert_same(&compact.undo(&x).unwrap(), &dense.undo(&x).unwrap(), "undo");
    let q = random(d, seed + 3);
    let ((qc, oc), (qd, od)) = (compact.query(&q).unwrap(), dense.query(&q).unwrap());
    assert_same(&qc, &qd, "query");
    assert_eq!(oc, od, "score offset");
    let s = random(d, seed + 4);
    let (mut oc, mut od) = (random(d, seed + 5), vec![0f32; d]);
    od.copy_from_slice(&oc);
    compact.undo_sum(&s, 0.75, &mut oc).unwrap();
    dense.undo_sum(&s, 0.75, &mut od).unwrap();
    assert_same(&oc, &od, "undo_sum");
}

#[test]
fn monomial_form_equals_dense_form_on_fixed_cases() {
    for (d, seed) in [(1, 1), (2, 2), (8, 3), (64, 4), (128, 5)] {
        check_monomial_against_dense(d, seed, false);
        check_monomial_against_dense(d, seed + 100, true);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 64,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x7F0A),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions")
        )),
        ..proptest::prelude::ProptestConfig::default()
    })]
    #[test]
    fn edited_files_with_a_valid_crc_load_or_fail_without_panicking(
        edits in proptest::collection::vec((0usize..96, proptest::num::u8::ANY), 1..6),
        cut in 0usize..48,
        dense in proptest::bool::ANY,
    ) {
        let (perm, diag) = random_monomial(4, 21, true);
        let t = PreTransform::monomial(random(4, 22), perm, diag).unwrap();
        let mut b = if dense { dense_of(&t) } else { t }.to_bytes();
        b.truncate(b.len() - 4);
        for (at, v) in edits {
            if at < b.len() {
                b[at] = v;
            }
        }
        let keep = b.len().saturating_sub(cut);
        for bytes in [b.clone(), b[..keep].to_vec()] {
            let sealed = crate::sealed::Frame::seal(bytes);
            if let Ok(t) = PreTransform::from_bytes(&sealed, Path::new("edited.pqxf")) {
                // Whatever loads is usable.
                let x = t.apply(&vec![1.0; t.dim().max(1)]);
                proptest::prop_assert!(t.dim() == 0 || x.is_ok());
            }
        }
    }

    #[test]
    fn monomial_form_equals_dense_form(
        d in 1usize..160,
        seed in 0u64..1_000_000,
        signed in proptest::bool::ANY,
    ) {
        check_monomial_against_dense(d, seed, signed);
    }
}

#[test]
fn the_fitted_layouts_and_scalings_are_held_compactly_and_full_whitening_dense() {
    let d = 16;
    let perm: Vec<usize> = (0..d).map(|i| (i % 2) * d / 2 + i / 2).collect();
    let scale: Vec<f32> = (0..d).map(|i| 0.5 + i as f32).collect();
    let mut m = vec![0f32; d * d];
    scale
        .iter()
        .enumerate()
        .for_each(|(i, &v)| m[i * d + i] = v);
    let pm = matmul(&permutation_matrix(&perm), &m, d);
    let t = PreTransform::new(vec![0.0; d], Some(pm)).unwrap();
    let (p, diag) = t.monomial_parts().expect("monomial");
    for i in 0..d {
        assert_eq!((usize::from(p[i]), diag[i]), (perm[i], scale[perm[i]]));
    }
    let full = sym_sqrt(&second_moment(&random(64 * d, 9), d), d, 1e-6);
    let t = PreTransform::new(vec![0.0; d], Some(full)).unwrap();
    assert!(t.monomial_parts().is_none());
    assert_eq!(t.bytes(), 4 * d + 8 * d * d);
    // One nonzero per row but a column twice: not monomial, and singular.
    assert!(PreTransform::new(vec![0.0; 2], Some(vec![1.0, 0.0, 2.0, 0.0])).is_err());
    // Constructor checks of the compact form.
    let e = |perm: Vec<u16>, diag: Vec<f32>| {
        PreTransform::monomial(vec![0.0; 3], perm, diag)
            .unwrap_err()
            .to_string()
    };
    assert!(e(vec![0, 1, 1], vec![1.0; 3]).contains("twice"));
    assert!(e(vec![0, 1, 3], vec![1.0; 3]).contains("out of range"));
    assert!(e(vec![0, 1, 2], vec![1.0, 0.0, 1.0]).contains("singular"));
    assert!(e(vec![0, 1, 2], vec![1.0, f32::NAN, 1.0]).contains("NaN"));
    assert!(e(vec![0, 1], vec![1.0; 3]).contains("2 and 3"));
}

/// A transform file as bytes, built by hand: magic, `version`, `d`,
/// `flags`, `data`, and a valid CRC (so that only the checks after the
/// checksum can reject it).
fn image(version: u32, d: u32, flags: u32, data: &[u8]) -> Vec<u8> {
    let mut out = TRANSFORM_MAGIC.to_vec();
    for w in [version, d, flags] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(data);
    crate::sealed::Frame::seal(out)
}

fn le_f32s(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn version_1_files_keep_their_bytes_and_still_load() {
    let p = Path::new("v1.pqxf");
    // A dense (full-metric) transform is written as version 1, byte for byte.
    let d = 3;
    let mean = vec![0.25, -1.0, 2.0];
    let a = vec![2.0, 0.5, 0.0, 0.5, 1.0, 0.25, 0.0, 0.25, 3.0];
    let t = PreTransform::new(mean.clone(), Some(a.clone())).unwrap();
    let inv = invert(&a, d).unwrap();
    let v1 = image(1, 3, 1, &le_f32s(&[mean.clone(), a, inv].concat()));
    assert_eq!(t.to_bytes(), v1);
    assert_eq!(PreTransform::from_bytes(&v1, p).unwrap(), t);
    let plain = PreTransform::new(mean.clone(), None).unwrap();
    assert_eq!(plain.to_bytes(), image(1, 3, 0, &le_f32s(&mean)));
    // A version-1 file of a permutation times a diagonal (as `layout=halves`
    // with `scale` or `whiten=diag` wrote them) loads in the compact form.
    let (perm, diag) = (vec![2u16, 0, 1], vec![0.5f32, 4.0, -2.0]);
    let t = PreTransform::monomial(mean.clone(), perm, diag).unwrap();
    let dense = dense_of(&t);
    let Some(Matrix::Dense { a, inv }) = &dense.matrix else {
        panic!("dense form expected")
    };
    let old = image(
        1,
        3,
        1,
        &le_f32s(&[mean.clone(), a.clone(), inv.clone()].concat()),
    );
    let loaded = PreTransform::from_bytes(&old, p).unwrap();
    assert_eq!(loaded, t);
    // ... and is written back as version 2.
    let v2 = loaded.to_bytes();
    assert_eq!(u32::from_le_bytes(v2[8..12].try_into().unwrap()), 2);
    assert_eq!(v2.len(), 20 + 4 * d + 6 * d + 4);
    assert_eq!(PreTransform::from_bytes(&v2, p).unwrap(), t);
}

#[test]
fn version_2_files_round_trip_and_every_corruption_is_detected() {
    let p = Path::new("v2.pqxf");
    let (perm, diag) = random_monomial(8, 11, true);
    let t = PreTransform::monomial(random(8, 12), perm, diag).unwrap();
    let bytes = t.to_bytes();
    assert_eq!(PreTransform::from_bytes(&bytes, p).unwrap(), t);
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        assert!(PreTransform::from_bytes(&b, p).is_err(), "byte {i}");
    }
    for n in 0..bytes.len() {
        assert!(
            PreTransform::from_bytes(&bytes[..n], p).is_err(),
            "{n} bytes"
        );
    }
    // Sealed files (valid CRC) whose contents are wrong.
    let ok_perm: Vec<u8> = [1u16, 0, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    let body =
        |diag: &[f32], perm: &[u8]| [le_f32s(&[0.0; 3]), le_f32s(diag), perm.to_vec()].concat();
    let err = |bytes: Vec<u8>| PreTransform::from_bytes(&bytes, p).unwrap_err().to_string();
    let good = image(2, 3, 2, &body(&[1.0, 2.0, 3.0], &ok_perm));
    assert!(PreTransform::from_bytes(&good, p).is_ok());
    let cases: [(Vec<u8>, &str); 10] = [
        (
            image(1, 3, 2, &body(&[1.0; 3], &ok_perm)),
            "need format version 2",
        ),
        (image(2, 3, 3, &body(&[1.0; 3], &ok_perm)), "flags 3"),
        (image(3, 3, 2, &body(&[1.0; 3], &ok_perm)), "version 3"),
        (
            image(2, 3, 2, &body(&[1.0; 3], &ok_perm)[2..]),
            "bytes of data",
        ),
        (
            image(2, 70_000, 2, &body(&[1.0; 3], &ok_perm)),
            "larger than",
        ),
        (
            image(2, 3, 2, &body(&[1.0; 3], &[1, 0, 1, 0, 2, 0])),
            "appears twice",
        ),
        (
            image(2, 3, 2, &body(&[1.0; 3], &[1, 0, 0, 0, 9, 0])),
            "out of range",
        ),
        (
            image(2, 3, 2, &body(&[1.0, 0.0, 3.0], &ok_perm)),
            "singular",
        ),
        (
            image(2, 3, 2, &body(&[1.0, f32::INFINITY, 3.0], &ok_perm)),
            "inf",
        ),
        (
            {
                let mut b = good.clone();
                b[0] = b'X';
                b
            },
            "bad magic",
        ),
    ];
    for (bytes, needle) in cases {
        let e = err(bytes);
        assert!(e.contains(needle) && e.contains("v2.pqxf"), "{needle}: {e}");
    }
    let mut b = good.clone();
    b[30] ^= 1;
    assert!(err(b).contains("checksum"));
}
