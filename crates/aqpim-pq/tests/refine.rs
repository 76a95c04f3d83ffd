//! Online refinement of a codebook ([`ProductQuantizer::refine`]) against a
//! plain reference: every centroid ends at the mean of its prior and of the
//! vectors assigned to it, however the vectors are batched, and encoding
//! afterwards finds the nearest of the moved centroids.

mod common;

use aqpim_pq::{PqError, PqParams, ProductQuantizer};
use common::config;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-4.0f32..4.0)).collect()
}

/// `(w0 c0 + sum x) / (w0 + n_j)` per centroid, in f64.
fn reference(params: PqParams, c0: &[f32], w0: f64, data: &[f32], codes: &[u8]) -> Vec<f64> {
    let (m_all, ksub, dsub) = (params.num_subspaces(), params.ksub(), params.dsub());
    let mut sum: Vec<f64> = c0.iter().map(|&c| w0 * f64::from(c)).collect();
    let mut count = vec![w0; m_all * ksub];
    for (x, row) in data
        .chunks_exact(params.dim())
        .zip(codes.chunks_exact(m_all))
    {
        for (m, &j) in row.iter().enumerate() {
            let k = m * ksub + usize::from(j);
            count[k] += 1.0;
            for t in 0..dsub {
                sum[k * dsub + t] += f64::from(x[m * dsub + t]);
            }
        }
    }
    sum.iter()
        .enumerate()
        .map(|(i, s)| s / count[i / dsub])
        .collect()
}

proptest! {
    #![proptest_config(config(32, 0x5EF1))]

    /// Refined centroids are the prior-weighted means, in one batch or
    /// token by token, and encoding then picks the nearest moved centroid.
    #[test]
    fn refined_centroids_are_prior_weighted_means(
        dsub in 1usize..=4,
        m in 1usize..=6,
        nbits in 1u32..=8,
        n in 1usize..=60,
        prior in prop_oneof![Just(1.0f32), Just(0.5f32), Just(8.0f32)],
        seed in 0u64..1000,
    ) {
        let params = PqParams::new(dsub * m, m, nbits).unwrap();
        let c0 = random(params.codebook_len(), seed);
        let data = random(n * params.dim(), seed + 1);
        let mut pq = ProductQuantizer::from_centroids(params, c0.clone()).unwrap();
        let codes = pq.encode(&data).unwrap();
        let mut counts = vec![prior; m * params.ksub()];
        pq.refine(&data, &codes, &mut counts, false).unwrap();
        let want = reference(params, &c0, f64::from(prior), &data, &codes);
        for (got, want) in pq.centroids().iter().zip(&want) {
            prop_assert!((f64::from(*got) - want).abs() <= 1e-4 * (1.0 + want.abs()));
        }
        // Token by token gives the same centroids (the same updates in the same order).
        let mut one = ProductQuantizer::from_centroids(params, c0.clone()).unwrap();
        let mut ones = vec![prior; m * params.ksub()];
        for (x, c) in data.chunks_exact(params.dim()).zip(codes.chunks_exact(m)) {
            one.refine(x, c, &mut ones, false).unwrap();
        }
        prop_assert_eq!(one.centroids(), pq.centroids());
        prop_assert_eq!(&ones, &counts);
        // Encoding sees the moved centroids: it equals a codebook built
        // from them afresh.
        let fresh = ProductQuantizer::from_centroids(params, pq.centroids().to_vec()).unwrap();
        prop_assert_eq!(pq.encode(&data).unwrap(), fresh.encode(&data).unwrap());
        // FP16 codebooks stay FP16.
        let c16 = c0.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let mut h = ProductQuantizer::from_centroids(params, c16).unwrap();
        let mut hc = vec![prior; m * params.ksub()];
        h.refine(&data, &codes, &mut hc, true).unwrap();
        for &v in h.centroids() {
            prop_assert_eq!(half::f16::from_f32(v).to_f32(), v);
        }
    }
}

#[test]
fn refinement_of_the_wrong_shape_is_an_error() {
    let params = PqParams::new(4, 2, 2).unwrap();
    let mut pq =
        ProductQuantizer::from_centroids(params, random(params.codebook_len(), 1)).unwrap();
    let data = random(8, 2);
    let mut counts = vec![1.0; 8];
    let short = pq.refine(&data, &[0, 1, 2], &mut counts, false);
    assert!(matches!(short, Err(PqError::Shape { .. })), "{short:?}");
    let wrong_code = pq.refine(&data, &[0, 1, 2, 4], &mut counts, false);
    let msg = wrong_code.unwrap_err().to_string();
    assert!(msg.contains("code"), "{msg}");
    let ragged = pq.refine(&data[..5], &[0, 1], &mut counts, false);
    assert!(ragged.is_err());
    let no_counts = pq.refine(&data, &[0, 1, 2, 3], &mut [], false);
    assert!(no_counts.is_err());
}
