//! Perplexity with sliding windows, teacher-forced decode through the cache,
//! and sampled or greedy generation.
//!
//! Perplexity protocol (Hugging Face's strided evaluation, plus an optional
//! document-start token): windows of `window` text tokens start at
//! `0, stride, 2 stride, ...` until one reaches the end of the text. Each
//! window runs on a fresh cache, preceded by the document-start token when
//! one is set. A window scores only the tokens the previous window did not
//! score (with `stride = window` the windows are disjoint and all their tokens
//! are scored; the first text token is scored only when a document-start
//! token precedes it). Of each window's inputs, the first `prefill` go through
//! one batched forward pass; every later one is decoded one step at a time
//! through the KV cache (teacher forcing). `NLL = mean over scored tokens of
//! -log p(token | context)`, `perplexity = exp(NLL)`.
//!
//! [`perplexity_against`] also runs a reference cache (FP16) over the same
//! windows, in step with the evaluated one, and compares the two next-token
//! distributions of every scored token ([`divergence`](super::divergence):
//! llama.cpp's KL divergence statistics). No logits are stored beyond one
//! window's prefill rows.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{DecodeError, Result};
use crate::model::cache::AttentionCache;
pub use crate::model::divergence::{argmax, nll_of};
use crate::model::divergence::{Divergence, DivergenceAccumulator};
use crate::model::llama::{Llama, Logits};

/// Options of [`perplexity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PplOptions {
    /// Text tokens per window (W).
    pub window: usize,
    /// Start-to-start distance of windows (1..=W).
    pub stride: usize,
    /// Inputs of each window run as one batched prefill (at least 1); the
    /// rest are decoded one token at a time.
    pub prefill: usize,
    /// Token placed before each window (a document start), or none.
    pub doc_start: Option<u32>,
}

/// One evaluation window over the text tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First text token of the window.
    pub begin: usize,
    /// One past its last text token.
    pub end: usize,
    /// First text token whose prediction is scored.
    pub score_from: usize,
}

/// The windows that [`perplexity`] evaluates over `n_tokens` text tokens.
pub fn windows(n_tokens: usize, opts: &PplOptions) -> Result<Vec<Window>> {
    let bad = |name, reason: String| Err(DecodeError::InvalidArgument { name, reason });
    let min_window = if opts.doc_start.is_some() { 1 } else { 2 };
    if opts.window < min_window {
        return bad(
            "window",
            format!("{} tokens; at least {min_window} needed", opts.window),
        );
    }
    if opts.stride == 0 || opts.stride > opts.window {
        return bad(
            "stride",
            format!("{} is not in 1..={}", opts.stride, opts.window),
        );
    }
    if opts.prefill == 0 {
        return bad("prefill", "at least one token must be prefilled".into());
    }
    if n_tokens < min_window {
        return bad(
            "tokens",
            format!("the text has {n_tokens} tokens; at least {min_window} needed"),
        );
    }
    let mut out = Vec::new();
    let (mut begin, mut prev_end) = (0, 0);
    loop {
        let end = (begin + opts.window).min(n_tokens);
        let first = if opts.doc_start.is_some() {
            begin
        } else {
            begin + 1
        };
        out.push(Window {
            begin,
            end,
            score_from: first.max(prev_end),
        });
        if end == n_tokens {
            return Ok(out);
        }
        prev_end = end;
        begin += opts.stride;
    }
}

/// Result of [`perplexity`].
#[derive(Debug, Clone, PartialEq)]
pub struct PplReport {
    /// Mean negative log-likelihood per scored token (nats).
    pub nll: f64,
    /// `exp(nll)`.
    pub perplexity: f64,
    /// Tokens scored.
    pub scored_tokens: usize,
    /// Windows evaluated.
    pub windows: usize,
    /// Inputs run through batched prefill.
    pub prefill_tokens: usize,
    /// Inputs run one at a time through the cache.
    pub decode_tokens: usize,
    /// Seconds spent in prefill.
    pub prefill_seconds: f64,
    /// Seconds spent in single-token decode.
    pub decode_seconds: f64,
    /// Largest cache size reached in a window (bytes).
    pub cache_bytes: usize,
    /// The cache's effective bits per element.
    pub bits_per_element: f64,
    /// Next-token distributions against the reference (`None` without one).
    pub divergence: Option<Divergence>,
    /// Seconds spent running the reference cache.
    pub reference_seconds: f64,
}

/// A maker of empty caches, one per window.
pub type CacheFactory<'a> = &'a mut dyn FnMut() -> Result<Box<dyn AttentionCache>>;

/// What [`perplexity_against`] compares each scored token's next-token
/// distribution with.
pub enum Reference<'a> {
    /// Nothing: no divergence statistics.
    None,
    /// The evaluated cache is the reference format itself: every token
    /// scores KL 0 and agrees, without a second pass.
    Itself,
    /// A second pass over the same windows through caches from this maker.
    Cache(CacheFactory<'a>),
}

/// Evaluates perplexity of `model` on `tokens` (see the module docs for the
/// protocol). `new_cache` makes an empty cache for each window; `progress`
/// receives (inputs run so far, inputs in total).
pub fn perplexity(
    model: &Llama,
    tokens: &[u32],
    opts: &PplOptions,
    new_cache: CacheFactory<'_>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PplReport> {
    perplexity_against(model, tokens, opts, new_cache, Reference::None, progress)
}

/// [`perplexity`], with each scored token's next-token distribution
/// compared with `reference`'s on the same window and context
/// ([`PplReport::divergence`]).
pub fn perplexity_against(
    model: &Llama,
    tokens: &[u32],
    opts: &PplOptions,
    new_cache: CacheFactory<'_>,
    mut reference: Reference<'_>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PplReport> {
    let wins = windows(tokens.len(), opts)?;
    let lead = usize::from(opts.doc_start.is_some());
    // Inputs of a window: the document start and every text token but the last.
    let total: usize = wins.iter().map(|w| lead + w.end - w.begin - 1).sum();
    let mut r = PplReport {
        nll: 0.0,
        perplexity: 0.0,
        scored_tokens: 0,
        windows: wins.len(),
        prefill_tokens: 0,
        decode_tokens: 0,
        prefill_seconds: 0.0,
        decode_seconds: 0.0,
        cache_bytes: 0,
        bits_per_element: 0.0,
        divergence: None,
        reference_seconds: 0.0,
    };
    let mut div = DivergenceAccumulator::default();
    let mut nll_sum = 0.0;
    let mut done = 0;
    let vocab = model.config().vocab_size;
    for w in &wins {
        let mut seq: Vec<u32> = opts.doc_start.into_iter().collect();
        seq.extend_from_slice(&tokens[w.begin..w.end]);
        // Input i predicts seq[i + 1], i.e. text token w.begin + i + 1 - lead.
        let inputs = &seq[..seq.len() - 1];
        let first_scored = w.score_from + lead - w.begin - 1;
        if first_scored >= inputs.len() {
            // A one-token tail window without a document start predicts nothing.
            continue;
        }
        let mut cache = new_cache()?;
        let mut ref_cache = match &mut reference {
            Reference::Cache(make) => Some(make()?),
            _ => None,
        };
        let p = opts.prefill.min(inputs.len());
        let t0 = Instant::now();
        let logits = model.forward(&inputs[..p], cache.as_mut(), Logits::All)?;
        r.prefill_seconds += t0.elapsed().as_secs_f64();
        r.prefill_tokens += p;
        let t0 = Instant::now();
        let ref_logits = match ref_cache.as_mut() {
            Some(c) => Some(model.forward(&inputs[..p], c.as_mut(), Logits::All)?),
            None => None,
        };
        r.reference_seconds += t0.elapsed().as_secs_f64();
        for (i, row) in logits.chunks_exact(vocab).enumerate().skip(first_scored) {
            nll_sum += nll_of(row, seq[i + 1]);
            r.scored_tokens += 1;
            let ref_row = ref_logits.as_ref().map(|l| &l[i * vocab..(i + 1) * vocab]);
            compare(&mut div, &reference, ref_row, row, seq[i + 1]);
        }
        done += p;
        progress(done, total);
        for i in p..inputs.len() {
            let t0 = Instant::now();
            let row = model.forward(&inputs[i..i + 1], cache.as_mut(), Logits::Last)?;
            r.decode_seconds += t0.elapsed().as_secs_f64();
            r.decode_tokens += 1;
            let t0 = Instant::now();
            let ref_row = match ref_cache.as_mut() {
                Some(c) => Some(model.forward(&inputs[i..i + 1], c.as_mut(), Logits::Last)?),
                None => None,
            };
            r.reference_seconds += t0.elapsed().as_secs_f64();
            if i >= first_scored {
                nll_sum += nll_of(&row, seq[i + 1]);
                r.scored_tokens += 1;
                compare(&mut div, &reference, ref_row.as_deref(), &row, seq[i + 1]);
            }
            done += 1;
            if done % 16 == 0 || done == total {
                progress(done, total);
            }
        }
        r.cache_bytes = r.cache_bytes.max(cache.bytes());
        r.bits_per_element = cache.bits_per_element();
    }
    r.nll = nll_sum / r.scored_tokens.max(1) as f64;
    r.perplexity = r.nll.exp();
    r.divergence = div.finish();
    Ok(r)
}

/// Adds one scored token (next token `target`) to `div` as `reference`
/// asks: `ref_row` is the reference cache's logits when it runs a second pass.
fn compare(
    div: &mut DivergenceAccumulator,
    reference: &Reference<'_>,
    ref_row: Option<&[f32]>,
    row: &[f32],
    target: u32,
) {
    match (reference, ref_row) {
        (Reference::Itself, _) => div.push_identical(nll_of(row, target)),
        (_, Some(r)) => div.push(r, row, target),
        _ => {}
    }
}

/// How [`generate`] picks each next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (lowest id on ties).
    Greedy,
    /// Nucleus sampling: softmax of `logits / temperature`, keep the most
    /// likely tokens until their mass reaches `top_p`, renormalize, draw with
    /// a ChaCha8 generator seeded by `seed`.
    TopP {
        /// Softmax temperature (> 0).
        temperature: f32,
        /// Probability mass kept (0 < top_p <= 1).
        top_p: f32,
        /// Random seed.
        seed: u64,
    },
}

fn sample_top_p(logits: &[f32], temperature: f32, top_p: f32, rng: &mut ChaCha8Rng) -> u32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, (((l - max) / temperature) as f64).exp()))
        .collect();
    let z: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        mass += p.1 / z;
        kept += 1;
        if mass >= top_p as f64 {
            break;
        }
    }
    let kept = &probs[..kept];
    let total: f64 = kept.iter().map(|p| p.1).sum();
    let mut u = rng.gen::<f64>() * total;
    for p in kept {
        u -= p.1;
        if u <= 0.0 {
            return p.0;
        }
    }
    kept[kept.len() - 1].0
}

/// Result of [`generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateReport {
    /// Generated token ids (the stop token excluded).
    pub tokens: Vec<u32>,
    /// Seconds of prompt prefill.
    pub prefill_seconds: f64,
    /// Seconds of decode steps.
    pub decode_seconds: f64,
}

/// Generates up to `max_tokens` tokens after `prompt`, calling `on_token`
/// with each as soon as it is chosen; stops early at any of `stop`.
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    max_tokens: usize,
    sampling: Sampling,
    stop: &[u32],
    cache: &mut dyn AttentionCache,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<GenerateReport> {
    if let Sampling::TopP {
        temperature, top_p, ..
    } = sampling
    {
        let valid = temperature > 0.0 && top_p > 0.0 && top_p <= 1.0;
        if !valid {
            return Err(DecodeError::InvalidArgument {
                name: "sampling",
                reason: format!(
                    "temperature {temperature} must be > 0 and top-p {top_p} in (0, 1]"
                ),
            });
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(match sampling {
        Sampling::TopP { seed, .. } => seed,
        Sampling::Greedy => 0,
    });
    let pick = |logits: &[f32], rng: &mut ChaCha8Rng| match sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::TopP {
            temperature, top_p, ..
        } => sample_top_p(logits, temperature, top_p, rng),
    };
    let mut report = GenerateReport {
        tokens: Vec::new(),
        prefill_seconds: 0.0,
        decode_seconds: 0.0,
    };
    if max_tokens == 0 {
        return Ok(report);
    }
    let t0 = Instant::now();
    let mut logits = model.forward(prompt, cache, Logits::Last)?;
    report.prefill_seconds = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    loop {
        let next = pick(&logits, &mut rng);
        if stop.contains(&next) {
            break;
        }
        report.tokens.push(next);
        on_token(next)?;
        if report.tokens.len() == max_tokens {
            break;
        }
        logits = model.forward(&[next], cache, Logits::Last)?;
    }
    report.decode_seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(window: usize, stride: usize, doc: bool) -> PplOptions {
        PplOptions {
            window,
            stride,
            prefill: window,
            doc_start: doc.then_some(0),
        }
    }

    #[test]
    fn windows_score_every_token_once() {
        for n in [2usize, 7, 64, 65, 100] {
            for (w, s) in [(8, 8), (8, 3), (8, 1), (16, 5)] {
                for doc in [false, true] {
                    let ws = windows(n, &opts(w, s, doc)).unwrap();
                    let mut scored = vec![0; n];
                    for win in &ws {
                        assert!(win.end - win.begin <= w && win.score_from >= win.begin);
                        (win.score_from..win.end).for_each(|t| scored[t] += 1);
                    }
                    assert!(scored.iter().all(|&c| c <= 1));
                    for (t, &c) in scored.iter().enumerate() {
                        // Without a document start a token is unscored only
                        // where it opens a window that no earlier window covered.
                        let unscored_ok = !doc && (t == 0 || (s == w && t % w == 0));
                        assert!(c == 1 || unscored_ok, "n={n} w={w} s={s} doc={doc} t={t}");
                    }
                    assert_eq!(ws.last().unwrap().end, n);
                }
            }
        }
        assert!(windows(10, &opts(8, 9, false)).is_err());
        assert!(windows(10, &opts(1, 1, false)).is_err());
        assert!(windows(1, &opts(8, 8, false)).is_err());
    }

    #[test]
    fn nll_and_sampling() {
        let l = [1.0f32, 3.0, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        assert!((nll_of(&l, 2) - (z.ln() - 2.0)).abs() < 1e-12);
        assert_eq!(argmax(&l), 1);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // A tiny top-p keeps only the most likely token.
        for _ in 0..10 {
            assert_eq!(sample_top_p(&l, 1.0, 1e-6, &mut rng), 1);
        }
        // Full mass: every token can appear.
        let mut seen = [false; 4];
        for _ in 0..400 {
            seen[sample_top_p(&l, 1.0, 1.0, &mut rng) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
