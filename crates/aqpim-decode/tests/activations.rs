//! The activation precision of decode products on a tiny model (its
//! matrices Q4_0, Q4_1, Q8_0, F16 and F32): prefill is the same with either
//! precision, a decode step with 8-bit activations stays close to the f32
//! one and does not depend on the thread count.

mod common;

use aqpim_decode::gguf::GgufFile;
use aqpim_decode::{ActivationPrecision, DenseCache, DensePrecision, Llama, Logits};
use common::*;

fn model(seed: u64, tied: bool, activations: ActivationPrecision) -> Llama {
    let mut m = Llama::from_gguf(&GgufFile::parse(tiny_model(seed, tied)).unwrap()).unwrap();
    m.set_activations(activations);
    m
}

/// Prefill of `prompt`, then one token at a time: each step's logits.
fn decode(m: &Llama, prompt: &[u32], steps: &[u32]) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut cache = DenseCache::new(LAYERS, KV_HEADS, HEAD_DIM, DensePrecision::F16);
    let first = m.forward(prompt, &mut cache, Logits::All).unwrap();
    let rest = steps
        .iter()
        .map(|&t| m.forward(&[t], &mut cache, Logits::Last).unwrap())
        .collect();
    (first, rest)
}

#[test]
fn precision_names_parse_and_bad_ones_are_errors() {
    for p in [ActivationPrecision::F32, ActivationPrecision::Q8] {
        assert_eq!(p.name().parse::<ActivationPrecision>().unwrap(), p);
    }
    let err = "int8"
        .parse::<ActivationPrecision>()
        .unwrap_err()
        .to_string();
    assert!(err.contains("int8") && err.contains("q8"), "{err}");
    assert_eq!(ActivationPrecision::default(), ActivationPrecision::F32);
}

#[test]
fn q8_decode_is_close_to_f32_and_prefill_is_unchanged() {
    for (seed, tied) in [(1, true), (2, false)] {
        let vocab = vocab().0.len();
        let prompt = random_tokens(seed, 5, vocab);
        let steps = random_tokens(seed + 10, 12, vocab);
        let exact = model(seed, tied, ActivationPrecision::F32);
        let q8 = model(seed, tied, ActivationPrecision::Q8);
        let (pre_f, dec_f) = decode(&exact, &prompt, &steps);
        let (pre_q, dec_q) = decode(&q8, &prompt, &steps);
        assert_eq!(pre_f, pre_q, "seed {seed}: prefill is f32 either way");
        for (s, (f, q)) in dec_f.iter().zip(&dec_q).enumerate() {
            assert_ne!(f, q, "seed {seed} step {s}: q8 took the f32 path");
            // 8-bit activations move each logit by a few tenths of a
            // percent of the logits' range here; 5 % is a loose bound.
            let range = f.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (a, b) in f.iter().zip(q) {
                assert!(
                    (a - b).abs() <= 0.05 * range,
                    "seed {seed} step {s}: {a} vs {b}"
                );
            }
        }
        // Rows are split across threads, each computed the same way.
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let (_, dec_one) = one.install(|| decode(&q8, &prompt, &steps));
        assert_eq!(
            dec_one, dec_q,
            "seed {seed}: thread count changed q8 decode"
        );
    }
}
