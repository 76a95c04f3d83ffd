//! Synthetic KV-like data for tests, examples and benchmarks.
//!
//! Real keys have a few channels with much larger variance than the rest
//! (outlier channels) and strong correlation between channels; this generator
//! mimics both: `x = mu + sigma * z + U h`, with per-channel scales `sigma`
//! (channels `0, 37, 74, ...` about 10x the others, ~3 % of channels), a
//! per-channel offset `mu`, and a rank-8 shared component `U h`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n * d` KV-like values, row-major, deterministic for a seed.
pub fn kv_like(n: usize, d: usize, seed: u64) -> Vec<f32> {
    const RANK: usize = 8;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let sigma: Vec<f32> = (0..d)
        .map(|c| {
            if c % 37 == 0 {
                10.0
            } else {
                rng.gen_range(0.5..1.5)
            }
        })
        .collect();
    let mu: Vec<f32> = (0..d).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let u: Vec<f32> = (0..d * RANK).map(|_| normal(&mut rng) * 0.7).collect();
    let mut out = Vec::with_capacity(n * d);
    let mut h = [0f32; RANK];
    for _ in 0..n {
        h.iter_mut().for_each(|v| *v = normal(&mut rng));
        for c in 0..d {
            let shared: f32 = (0..RANK).map(|r| u[c * RANK + r] * h[r]).sum();
            out.push(mu[c] + sigma[c] * normal(&mut rng) + shared);
        }
    }
    out
}

/// A standard normal sample (Box-Muller).
pub fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}
