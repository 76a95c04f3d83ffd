//! Plain, obviously-correct attention in f64: the witness every kernel is
//! checked against.

/// Attention of one query `q` (`d` values) over `t` tokens: `keys` and
/// `values` are `t x d`, row-major. Returns `sum_i softmax_i(scale q.k_i) v_i`
/// computed in f64 with the maximum subtracted before `exp`.
pub fn attention_f64(q: &[f32], keys: &[f32], values: &[f32], scale: f64) -> Vec<f64> {
    let d = q.len();
    let scores: Vec<f64> = keys
        .chunks_exact(d)
        .map(|k| {
            scale
                * q.iter()
                    .zip(k)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum::<f64>()
        })
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut out = vec![0f64; d];
    for (w, v) in weights.iter().zip(values.chunks_exact(d)) {
        for (o, x) in out.iter_mut().zip(v) {
            *o += w / total * f64::from(*x);
        }
    }
    out
}

/// Relative error `|a - b| / |b|` (Euclidean norms) of an f32 result against
/// an f64 reference.
pub fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (f64::from(*g) - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}
