//! A tiny random Llama written as GGUF by the test, read back and run: the
//! forward pass against a naive f64 reference, and decode through the KV
//! cache against full recomputation.

mod common;

use aqpim_decode::eval::{self, PplOptions, Sampling};
use aqpim_decode::gguf::GgufFile;
use aqpim_decode::{AttentionCache, DenseCache, DensePrecision};
use aqpim_decode::{Llama, Logits};
use aqpim_decode::{LlamaConfig, RopeMode};
use common::*;

fn cache(precision: DensePrecision) -> DenseCache {
    DenseCache::new(LAYERS, KV_HEADS, HEAD_DIM, precision)
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: logit {i}: {g} vs {w}"
        );
    }
}

#[test]
fn config_is_read_from_metadata() {
    let file = GgufFile::parse(tiny_model(1, true)).unwrap();
    let c = LlamaConfig::from_gguf(&file).unwrap();
    assert_eq!(
        (
            c.n_layers,
            c.dim,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            c.ffn_dim
        ),
        (LAYERS, DIM, HEADS, KV_HEADS, HEAD_DIM, FFN)
    );
    assert_eq!(c.rope_mode, RopeMode::Normal);
    assert!(c.tied_embeddings);
    assert_eq!(c.vocab_size, vocab().0.len());
    assert_eq!(c.context_length, CONTEXT);
    let untied = GgufFile::parse(tiny_model(1, false)).unwrap();
    assert!(!LlamaConfig::from_gguf(&untied).unwrap().tied_embeddings);
}

#[test]
fn forward_equals_naive_f64_reference() {
    for (seed, tied, mode) in [
        (1, true, RopeMode::Normal),
        (2, false, RopeMode::Normal),
        (3, true, RopeMode::Neox),
    ] {
        let file = GgufFile::parse(tiny_model(seed, tied)).unwrap();
        let mut config = LlamaConfig::from_gguf(&file).unwrap();
        config.rope_mode = mode;
        let model = Llama::from_gguf_with(&file, config.clone()).unwrap();
        let tokens = random_tokens(seed + 10, 23, config.vocab_size);
        let want = reference_forward(&file, &tokens, mode);
        let got = model
            .forward(&tokens, &mut cache(DensePrecision::F32), Logits::All)
            .unwrap();
        for (t, row) in got.chunks_exact(config.vocab_size).enumerate() {
            assert_close(
                row,
                &want[t],
                1e-4,
                &format!("seed {seed} {mode:?} token {t}"),
            );
        }
        let last = model
            .forward(&tokens, &mut cache(DensePrecision::F32), Logits::Last)
            .unwrap();
        assert_close(&last, &want[tokens.len() - 1], 1e-4, "last row");
    }
}

#[test]
fn prefill_then_decode_equals_full_recomputation() {
    let file = GgufFile::parse(tiny_model(4, true)).unwrap();
    let model = Llama::from_gguf(&file).unwrap();
    let v = model.config().vocab_size;
    let tokens = random_tokens(5, 40, v);
    for precision in [DensePrecision::F32, DensePrecision::F16] {
        // Full recomputation also attends through the cache, so both sides
        // see the same (for F16, rounded) keys and values.
        let full = model
            .forward(&tokens, &mut cache(precision), Logits::All)
            .unwrap();
        for prefill in [1usize, 2, 17] {
            let mut c = cache(precision);
            let head = model
                .forward(&tokens[..prefill], &mut c, Logits::All)
                .unwrap();
            assert_eq!(c.len(LAYERS - 1, KV_HEADS - 1), prefill);
            let mut rows: Vec<f32> = head;
            for t in prefill..tokens.len() {
                rows.extend(
                    model
                        .forward(&tokens[t..t + 1], &mut c, Logits::Last)
                        .unwrap(),
                );
            }
            let want: Vec<f64> = full.iter().map(|&x| x as f64).collect();
            // Batched and single-token products round differently in the last
            // bit, which can move an FP16-rounded key by one f16 ulp.
            let tol = if precision == DensePrecision::F32 {
                1e-4
            } else {
                5e-3
            };
            assert_close(
                &rows,
                &want,
                tol,
                &format!("{precision:?} prefill {prefill}"),
            );
        }
    }
}

#[test]
fn perplexity_is_the_same_prefilled_or_decoded() {
    let file = GgufFile::parse(tiny_model(6, true)).unwrap();
    let model = Llama::from_gguf(&file).unwrap();
    let tokens = random_tokens(7, 50, model.config().vocab_size);
    let run = |prefill, stride, doc_start| {
        let opts = PplOptions {
            window: 16,
            stride,
            prefill,
            doc_start,
        };
        let mut new_cache = || Ok(Box::new(cache(DensePrecision::F32)) as Box<dyn AttentionCache>);
        eval::perplexity(&model, &tokens, &opts, &mut new_cache, &mut |_, _| {}).unwrap()
    };
    let a = run(16, 16, Some(0));
    let b = run(1, 16, Some(0));
    assert_eq!(a.scored_tokens, 50);
    assert_eq!(b.decode_tokens, a.prefill_tokens - b.prefill_tokens);
    assert!((a.nll - b.nll).abs() < 1e-5, "{} vs {}", a.nll, b.nll);
    // The same NLL from the f64 reference, window by window.
    let mut sum = 0.0;
    for w in tokens.chunks(16) {
        let mut seq = vec![0u32];
        seq.extend_from_slice(w);
        let logits = reference_forward(&file, &seq[..seq.len() - 1], RopeMode::Normal);
        for (i, row) in logits.iter().enumerate() {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|x| (x - m).exp()).sum();
            sum += m + z.ln() - row[seq[i + 1] as usize];
        }
    }
    assert!(
        (a.nll - sum / 50.0).abs() < 1e-4,
        "{} vs reference {}",
        a.nll,
        sum / 50.0
    );
    assert!((a.perplexity - a.nll.exp()).abs() < 1e-9);
    // Overlapping windows without a document start score all but the first token.
    let c = run(16, 5, None);
    assert_eq!(c.scored_tokens, 49);
    // Disjoint windows without one lose each window's first token; 50 = 3 x 16 + 2.
    let d = run(16, 16, None);
    assert_eq!(d.scored_tokens, 50 - 4);
    let opts = PplOptions {
        window: 16,
        stride: 16,
        prefill: 16,
        doc_start: None,
    };
    let mut new_cache = || Ok(Box::new(cache(DensePrecision::F32)) as Box<dyn AttentionCache>);
    // 33 tokens: the last window holds one token and predicts nothing.
    let e = eval::perplexity(&model, &tokens[..33], &opts, &mut new_cache, &mut |_, _| {}).unwrap();
    assert_eq!(e.scored_tokens, 30);
}

#[test]
fn greedy_generation_follows_recomputed_argmax() {
    let file = GgufFile::parse(tiny_model(8, true)).unwrap();
    let model = Llama::from_gguf(&file).unwrap();
    let prompt = random_tokens(9, 6, model.config().vocab_size);
    let mut streamed = Vec::new();
    let mut c = cache(DensePrecision::F32);
    let report = eval::generate(
        &model,
        &prompt,
        8,
        Sampling::Greedy,
        &[],
        &mut c,
        &mut |t| {
            streamed.push(t);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(report.tokens, streamed);
    assert_eq!(report.tokens.len(), 8);
    let mut seq = prompt.clone();
    for &t in &report.tokens {
        let logits = model
            .forward(&seq, &mut cache(DensePrecision::F32), Logits::Last)
            .unwrap();
        assert_eq!(eval::argmax(&logits), t);
        seq.push(t);
    }
    // Sampling is reproducible under a seed.
    let sample = |seed| {
        let s = Sampling::TopP {
            temperature: 1.5,
            top_p: 0.9,
            seed,
        };
        eval::generate(
            &model,
            &prompt,
            8,
            s,
            &[],
            &mut cache(DensePrecision::F32),
            &mut |_| Ok(()),
        )
        .unwrap()
        .tokens
    };
    assert_eq!(sample(3), sample(3));
    let bad = Sampling::TopP {
        temperature: 0.0,
        top_p: 0.9,
        seed: 1,
    };
    assert!(eval::generate(
        &model,
        &prompt,
        8,
        bad,
        &[],
        &mut cache(DensePrecision::F32),
        &mut |_| Ok(())
    )
    .is_err());
}

#[test]
fn bad_inputs_are_errors() {
    let file = GgufFile::parse(tiny_model(10, true)).unwrap();
    let model = Llama::from_gguf(&file).unwrap();
    let v = model.config().vocab_size as u32;
    let mut c = cache(DensePrecision::F32);
    assert!(model.forward(&[], &mut c, Logits::All).is_err());
    assert!(model.forward(&[v], &mut c, Logits::All).is_err());
    let long = vec![0u32; CONTEXT + 1];
    assert!(model.forward(&long, &mut c, Logits::Last).is_err());
}

#[test]
fn divergence_against_a_reference_follows_its_definition() {
    use aqpim_decode::divergence::kl_divergence;
    let file = GgufFile::parse(tiny_model(13, true)).unwrap();
    let model = Llama::from_gguf(&file).unwrap();
    let vocab = model.config().vocab_size;
    let tokens = random_tokens(14, 40, vocab);
    let opts = |prefill| PplOptions {
        window: 20,
        stride: 20,
        prefill,
        doc_start: Some(0),
    };
    let mut f32_cache = || Ok(Box::new(cache(DensePrecision::F32)) as Box<dyn AttentionCache>);
    let mut f16_cache = || Ok(Box::new(cache(DensePrecision::F16)) as Box<dyn AttentionCache>);
    let mut f16_ref = || Ok(Box::new(cache(DensePrecision::F16)) as Box<dyn AttentionCache>);
    let run = |prefill,
               new: &mut dyn FnMut() -> aqpim_decode::Result<Box<dyn AttentionCache>>,
               reference: eval::Reference<'_>| {
        eval::perplexity_against(
            &model,
            &tokens,
            &opts(prefill),
            new,
            reference,
            &mut |_, _| {},
        )
        .unwrap()
        .divergence
    };
    // Without a reference there are no statistics.
    assert!(run(8, &mut f32_cache, eval::Reference::None).is_none());
    // A cache against itself, by declaration or by a second identical pass:
    // exactly 0, 0 and 1.
    for d in [
        run(8, &mut f16_cache, eval::Reference::Itself),
        run(8, &mut f16_cache, eval::Reference::Cache(&mut f16_ref)),
    ] {
        let d = d.unwrap();
        assert_eq!(
            (d.tokens, d.kld_mean, d.kld_p99, d.top1_agreement),
            (40, 0.0, 0.0, 1.0)
        );
    }
    // f32 against FP16: the per-token divergences of the two caches'
    // logits, recomputed here window by window with every input prefilled.
    let mut want = Vec::new();
    let mut same = 0;
    for w in tokens.chunks(20) {
        let mut seq = vec![0u32];
        seq.extend_from_slice(w);
        let inputs = &seq[..seq.len() - 1];
        let p = model
            .forward(inputs, &mut cache(DensePrecision::F16), Logits::All)
            .unwrap();
        let q = model
            .forward(inputs, &mut cache(DensePrecision::F32), Logits::All)
            .unwrap();
        for (pr, qr) in p.chunks_exact(vocab).zip(q.chunks_exact(vocab)) {
            want.push(kl_divergence(pr, qr));
            same += usize::from(eval::argmax(pr) == eval::argmax(qr));
        }
    }
    let mean = want.iter().sum::<f64>() / want.len() as f64;
    want.sort_by(f64::total_cmp);
    assert!(mean > 0.0, "FP16 rounding changes the logits");
    // Every input prefilled: the same computation, the same numbers.
    let all = run(20, &mut f32_cache, eval::Reference::Cache(&mut f16_ref)).unwrap();
    assert_eq!(all.tokens, want.len());
    assert!(
        (all.kld_mean - mean).abs() <= 1e-12 * mean,
        "{} vs {mean}",
        all.kld_mean
    );
    let p99 = aqpim_decode::divergence::percentile_sorted(&want, 0.99);
    assert!((all.kld_p99 - p99).abs() <= 1e-12 * p99);
    assert_eq!(all.top1_agreement, same as f64 / want.len() as f64);
    // Most inputs decoded one at a time: equal to rounding.
    let dec = run(8, &mut f32_cache, eval::Reference::Cache(&mut f16_ref)).unwrap();
    assert!(
        (dec.kld_mean - mean).abs() <= 0.05 * mean,
        "{} vs {mean}",
        dec.kld_mean
    );
    assert!(dec.kld_p99 >= dec.kld_mean);
}
