//! How far a cache's next-token distributions stray from a reference cache's:
//! the statistics of llama.cpp's `perplexity --kl-divergence`.
//!
//! Per scored token, with `P = softmax(reference logits)` and
//! `Q = softmax(evaluated logits)` over the whole vocabulary:
//!
//! ```text
//! KL(P || Q) = sum_i P_i (log P_i - log Q_i)        (nats, >= 0)
//! same top-1  = argmax_i P_i == argmax_i Q_i        (lowest index on ties)
//! ```
//!
//! Over the scored tokens: the mean KL divergence, its 99th percentile
//! (sorted values, linear interpolation at `0.99 (n - 1)`, as llama.cpp's
//! `percentile`), and the share of tokens whose top-1 token agrees. The
//! reference is the FP16 cache on the same windows; a cache compared with
//! itself scores exactly 0, 0 and 1.

/// `(max, ln sum_i exp(l_i - max))` of a row of logits, in f64: `log
/// softmax(l)_i = l_i - max - ln_z`.
fn log_normalizer(logits: &[f32]) -> (f64, f64) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    (max, z.ln())
}

/// `KL(softmax(reference) || softmax(test))` in nats, in f64. Both rows hold
/// one logit per vocabulary entry.
pub fn kl_divergence(reference: &[f32], test: &[f32]) -> f64 {
    debug_assert_eq!(reference.len(), test.len());
    let (rm, rz) = log_normalizer(reference);
    let (tm, tz) = log_normalizer(test);
    let kld: f64 = reference
        .iter()
        .zip(test)
        .map(|(&r, &t)| {
            let lp = r as f64 - rm - rz;
            let lq = t as f64 - tm - tz;
            lp.exp() * (lp - lq)
        })
        .sum();
    // Rounding can leave a tiny negative sum where the rows nearly agree;
    // the divergence itself is never negative.
    kld.max(0.0)
}

/// The value at `fraction` (0..=1) of `sorted` (ascending): linear
/// interpolation between the two values around `fraction (n - 1)`, as
/// llama.cpp's `percentile`; 0 for no values.
pub fn percentile_sorted(sorted: &[f64], fraction: f64) -> f64 {
    let (Some(&first), Some(&last)) = (sorted.first(), sorted.last()) else {
        return 0.0;
    };
    if fraction <= 0.0 {
        return first;
    }
    if fraction >= 1.0 {
        return last;
    }
    let p = fraction * (sorted.len() - 1) as f64;
    let i = p.floor() as usize;
    let f = p - i as f64;
    let next = sorted[(i + 1).min(sorted.len() - 1)];
    (1.0 - f) * sorted[i] + f * next
}

/// The divergence statistics of a run (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Divergence {
    /// Tokens compared.
    pub tokens: usize,
    /// Mean `KL(P_reference || Q_evaluated)` per token (nats).
    pub kld_mean: f64,
    /// 99th percentile of the per-token KL divergence (nats).
    pub kld_p99: f64,
    /// Share of tokens whose most likely next token is the reference's.
    pub top1_agreement: f64,
    /// The reference's own mean NLL over the same tokens (nats): its
    /// perplexity is `exp` of it.
    pub reference_nll: f64,
}

/// Accumulates per-token divergences.
#[derive(Debug, Clone, Default)]
pub struct DivergenceAccumulator {
    kld: Vec<f64>,
    same_top1: usize,
    reference_nll: f64,
}

impl DivergenceAccumulator {
    /// Adds one scored token's two rows of logits; `target` is the token
    /// that came next.
    pub fn push(&mut self, reference: &[f32], test: &[f32], target: u32) {
        self.kld.push(kl_divergence(reference, test));
        self.same_top1 += usize::from(argmax(reference) == argmax(test));
        self.reference_nll += nll_of(reference, target);
    }

    /// Adds a token whose evaluated distribution is the reference's own
    /// (the cache under test is the reference format; `nll` its NLL): 0
    /// and agreement, without a second pass.
    pub fn push_identical(&mut self, nll: f64) {
        self.kld.push(0.0);
        self.same_top1 += 1;
        self.reference_nll += nll;
    }

    /// The statistics over every token added (`None` when none was).
    pub fn finish(mut self) -> Option<Divergence> {
        if self.kld.is_empty() {
            return None;
        }
        let n = self.kld.len();
        let mean = self.kld.iter().sum::<f64>() / n as f64;
        self.kld.sort_by(f64::total_cmp);
        Some(Divergence {
            tokens: n,
            kld_mean: mean,
            kld_p99: percentile_sorted(&self.kld, 0.99),
            top1_agreement: self.same_top1 as f64 / n as f64,
            reference_nll: self.reference_nll / n as f64,
        })
    }
}

/// `-log softmax(logits)[target]`, in f64.
pub fn nll_of(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + z.ln() - logits[target as usize] as f64
}

/// The index of the largest logit (lowest index on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KL divergence straight from its definition, probabilities first.
    fn kl_reference(p_logits: &[f32], q_logits: &[f32]) -> f64 {
        let softmax = |l: &[f32]| {
            let e: Vec<f64> = l.iter().map(|&x| (x as f64).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|x| x / z).collect::<Vec<_>>()
        };
        let (p, q) = (softmax(p_logits), softmax(q_logits));
        p.iter()
            .zip(&q)
            .map(|(&a, &b)| if a > 0.0 { a * (a / b).ln() } else { 0.0 })
            .sum()
    }

    #[test]
    fn kl_matches_the_definition_and_is_zero_on_itself() {
        let p = [1.0f32, 3.0, -2.0, 0.5];
        let q = [1.5f32, 2.0, -1.0, 0.0];
        assert!((kl_divergence(&p, &q) - kl_reference(&p, &q)).abs() < 1e-12);
        assert_eq!(kl_divergence(&p, &p), 0.0);
        // Shifting logits leaves the distribution, and so the divergence, unchanged.
        let shifted: Vec<f32> = q.iter().map(|x| x + 7.0).collect();
        assert!((kl_divergence(&p, &shifted) - kl_divergence(&p, &q)).abs() < 1e-9);
        // Large logits do not overflow.
        let big: Vec<f32> = p.iter().map(|x| x * 100.0).collect();
        assert!(kl_divergence(&big, &q).is_finite());
    }

    #[test]
    fn percentile_interpolates_like_llama_cpp() {
        let v: Vec<f64> = (0..=100).map(f64::from).collect();
        assert_eq!(percentile_sorted(&v, 0.99), 99.0);
        assert_eq!(percentile_sorted(&v, 0.0), 0.0);
        assert_eq!(percentile_sorted(&v, 1.0), 100.0);
        // Between two values: 0.99 * 2 = 1.98 -> 0.02 * 1 + 0.98 * 3.
        assert!((percentile_sorted(&[0.0, 1.0, 3.0], 0.99) - 2.96).abs() < 1e-12);
        assert_eq!(percentile_sorted(&[5.0], 0.99), 5.0);
        assert_eq!(percentile_sorted(&[], 0.99), 0.0);
    }

    #[test]
    fn accumulator_counts_agreement() {
        let mut a = DivergenceAccumulator::default();
        assert!(a.clone().finish().is_none());
        a.push(&[0.0, 2.0, 1.0], &[0.0, 2.0, 1.5], 1);
        a.push(&[0.0, 2.0, 1.0], &[0.0, 1.0, 2.0], 1);
        a.push_identical(0.5);
        a.push(&[4.0, 1.0], &[4.0, 1.0], 0);
        let d = a.finish().unwrap();
        assert_eq!(d.tokens, 4);
        assert_eq!(d.top1_agreement, 0.75);
        let want = (2.0 * nll_of(&[0.0, 2.0, 1.0], 1) + 0.5 + nll_of(&[4.0, 1.0], 0)) / 4.0;
        assert!((d.reference_nll - want).abs() < 1e-12);
        assert!(d.kld_mean > 0.0 && d.kld_p99 >= d.kld_mean);
    }
}
