//! A tiny random Llama, written as GGUF in memory, decodes the same tokens
//! through an exact FP16 cache and through a 4-bit PQ cache, and prints how
//! far the PQ cache moves the next-token distribution.
//!
//! Run with `cargo run -p aqpim-decode --example tiny_decode`.

use aqpim_decode::gguf::{string_array, GgufFile, GgufWriter, MetaValue};
use aqpim_decode::quant::{quantize, GgmlType};
use aqpim_decode::CompressedCache;
use aqpim_decode::{DenseCache, DensePrecision};
use aqpim_decode::{Llama, Logits};
use aqpim_kvcache::{KvShape, KvSpec};

const LAYERS: usize = 2;
const DIM: usize = 32;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 8;
const FFN: usize = 48;
const VOCAB: usize = 40;

/// Deterministic pseudo-random values in `-scale..scale` (a small LCG keeps
/// the example free of extra dependencies).
fn values(seed: &mut u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The tiny model as GGUF bytes: F32 matrices, a 40-token vocabulary.
fn tiny_model() -> Vec<u8> {
    let mut seed = 7u64;
    let mut w = GgufWriter::new();
    let u32v = |x: usize| MetaValue::U32(x as u32);
    let tokens: Vec<String> = (0..VOCAB).map(|i| format!("t{i}")).collect();
    w.meta("general.architecture", MetaValue::String("llama".into()))
        .meta("llama.block_count", u32v(LAYERS))
        .meta("llama.context_length", u32v(256))
        .meta("llama.embedding_length", u32v(DIM))
        .meta("llama.feed_forward_length", u32v(FFN))
        .meta("llama.attention.head_count", u32v(HEADS))
        .meta("llama.attention.head_count_kv", u32v(KV_HEADS))
        .meta("llama.rope.freq_base", MetaValue::F32(10000.0))
        .meta(
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(1e-5),
        )
        .meta("llama.rope.dimension_count", u32v(HEAD_DIM))
        .meta("tokenizer.ggml.tokens", string_array(&tokens));
    // A matrix of `rows x cols` random values (GGUF lists dimensions
    // innermost first), or with `rows == 0` a norm vector of ones.
    let mut tensor = |w: &mut GgufWriter, name: &str, rows: usize, cols: usize, scale: f32| {
        let (v, dims) = if rows == 0 {
            (vec![1.0; cols], vec![cols as u64])
        } else {
            let v = values(&mut seed, rows * cols, scale);
            (v, vec![cols as u64, rows as u64])
        };
        let bytes = quantize(GgmlType::F32, &v).expect("F32 stores any value");
        w.tensor(name, &dims, GgmlType::F32, bytes);
    };
    tensor(&mut w, "token_embd.weight", VOCAB, DIM, 1.0);
    for l in 0..LAYERS {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        tensor(&mut w, &n("attn_q"), HEADS * HEAD_DIM, DIM, 0.3);
        tensor(&mut w, &n("attn_k"), KV_HEADS * HEAD_DIM, DIM, 0.3);
        tensor(&mut w, &n("attn_v"), KV_HEADS * HEAD_DIM, DIM, 0.3);
        tensor(&mut w, &n("attn_output"), DIM, HEADS * HEAD_DIM, 0.2);
        tensor(&mut w, &n("ffn_gate"), FFN, DIM, 0.3);
        tensor(&mut w, &n("ffn_up"), FFN, DIM, 0.3);
        tensor(&mut w, &n("ffn_down"), DIM, FFN, 0.2);
        tensor(&mut w, &n("attn_norm"), 0, DIM, 0.0);
        tensor(&mut w, &n("ffn_norm"), 0, DIM, 0.0);
    }
    tensor(&mut w, "output_norm.weight", 0, DIM, 0.0);
    w.to_bytes()
}

fn softmax(logits: &[f32]) -> Vec<f64> {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f64> = logits.iter().map(|&x| f64::from(x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = GgufFile::parse(tiny_model())?;
    let model = Llama::from_gguf(&file)?;
    let prompt: Vec<u32> = (0..48).map(|i| (i * 7 % VOCAB) as u32).collect();

    let mut exact = DenseCache::new(LAYERS, KV_HEADS, HEAD_DIM, DensePrecision::F16);
    let shape = KvShape::new(LAYERS, KV_HEADS, HEAD_DIM)?;
    let spec: KvSpec = "pq:dsub=2,nbits=4,sinks=2,window=8".parse()?;
    let mut pq = CompressedCache::new(shape, &spec)?;

    // Prefill the prompt, then decode four tokens one at a time.
    let mut a = model.forward(&prompt, &mut exact, Logits::Last)?;
    let mut b = model.forward(&prompt, &mut pq, Logits::Last)?;
    for step in 0..4 {
        let (p, q) = (softmax(&a), softmax(&b));
        let tv: f64 = 0.5 * p.iter().zip(&q).map(|(x, y)| (x - y).abs()).sum::<f64>();
        println!("step {step}: total variation between FP16 and 4-bit PQ next-token distributions = {tv:.4}");
        let next = [step as u32 + 1];
        a = model.forward(&next, &mut exact, Logits::Last)?;
        b = model.forward(&next, &mut pq, Logits::Last)?;
    }
    Ok(())
}
