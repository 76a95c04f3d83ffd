//! Hugging Face checkpoint directories: a tiny random Llama written by the
//! test both as GGUF (Q/K rows permuted the llama.cpp way, adjacent-pair
//! RoPE) and as `config.json` + safetensors (weights as stored, half-split
//! RoPE) gives the same logits; shards load the same; bad directories give
//! clear errors.

mod common;

use std::collections::HashMap;
use std::path::Path;

use aqpim_decode::gguf::{string_array, GgufWriter, MetaValue};
use aqpim_decode::hf::Checkpoint;
use aqpim_decode::quant::{quantize, GgmlType};
use aqpim_decode::RopeMode;
use aqpim_decode::Weight;
use aqpim_decode::{DenseCache, DensePrecision};
use aqpim_decode::{Llama, Logits};
use common::{random_tokens, vocab, CONTEXT, DIM, EPS, FFN, HEADS, HEAD_DIM, KV_HEADS, LAYERS};
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

const ROPE_THETA: f64 = 10000.0;

/// One weight: its HF name, shape (`[rows, cols]` or `[len]`) and values.
struct Tensor {
    w: Weight,
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// Random values that F16 and BF16 both hold exactly, so that every dtype
/// stores the same model: `offset + scale * k / 128` with `|k| < 128`, for
/// `scale` a power of two and `offset` 0, or 1 with `scale` 1 (at most 8
/// significant bits either way).
fn values(rng: &mut ChaCha8Rng, n: usize, scale: f32, offset: f32) -> Vec<f32> {
    (0..n)
        .map(|_| offset + scale * rng.gen_range(-127i32..128) as f32 / 128.0)
        .collect()
}

/// The weights of the tiny model (`tied`: no output projection).
fn weights(seed: u64, tied: bool) -> Vec<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n_vocab = vocab().0.len();
    let mut out = Vec::new();
    let mut mat = |rng: &mut ChaCha8Rng, w: Weight, rows: usize, cols: usize, scale: f32| {
        out.push(Tensor {
            w,
            shape: vec![rows, cols],
            values: values(rng, rows * cols, scale, 0.0),
        });
    };
    mat(&mut rng, Weight::TokenEmbd, n_vocab, DIM, 1.0);
    for l in 0..LAYERS {
        mat(&mut rng, Weight::Q(l), HEADS * HEAD_DIM, DIM, 0.5);
        mat(&mut rng, Weight::K(l), KV_HEADS * HEAD_DIM, DIM, 0.5);
        mat(&mut rng, Weight::V(l), KV_HEADS * HEAD_DIM, DIM, 0.25);
        mat(&mut rng, Weight::AttnOutput(l), DIM, HEADS * HEAD_DIM, 0.25);
        mat(&mut rng, Weight::Gate(l), FFN, DIM, 0.25);
        mat(&mut rng, Weight::Up(l), FFN, DIM, 0.25);
        mat(&mut rng, Weight::Down(l), DIM, FFN, 0.25);
    }
    if !tied {
        mat(&mut rng, Weight::Output, n_vocab, DIM, 0.5);
    }
    for l in 0..LAYERS {
        for w in [Weight::AttnNorm(l), Weight::FfnNorm(l)] {
            let v = values(&mut rng, DIM, 1.0, 1.0);
            out.push(Tensor {
                w,
                shape: vec![DIM],
                values: v,
            });
        }
    }
    out.push(Tensor {
        w: Weight::OutputNorm,
        shape: vec![DIM],
        values: values(&mut rng, DIM, 1.0, 1.0),
    });
    out
}

/// llama.cpp's `permute` of Q/K rows: within each head, row `2i + j` of the
/// result is row `j * head_dim/2 + i` of the Hugging Face weight.
fn permute_rows(values: &[f32], heads: usize) -> Vec<f32> {
    let half = HEAD_DIM / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let dst = h * HEAD_DIM + 2 * i + j;
                let src = h * HEAD_DIM + j * half + i;
                out[dst * DIM..(dst + 1) * DIM]
                    .copy_from_slice(&values[src * DIM..(src + 1) * DIM]);
            }
        }
    }
    out
}

/// The model as GGUF bytes: matrices F16, norms F32, Q/K rows permuted.
fn gguf_bytes(tensors: &[Tensor]) -> Vec<u8> {
    let (tokens, merges, types) = vocab();
    let u32v = |x: usize| MetaValue::U32(x as u32);
    let mut w = GgufWriter::new();
    w.meta("general.architecture", MetaValue::String("llama".into()))
        .meta("llama.block_count", u32v(LAYERS))
        .meta("llama.context_length", u32v(CONTEXT))
        .meta("llama.embedding_length", u32v(DIM))
        .meta("llama.feed_forward_length", u32v(FFN))
        .meta("llama.attention.head_count", u32v(HEADS))
        .meta("llama.attention.head_count_kv", u32v(KV_HEADS))
        .meta("llama.rope.freq_base", MetaValue::F32(ROPE_THETA as f32))
        .meta(
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(EPS as f32),
        )
        .meta("tokenizer.ggml.model", MetaValue::String("gpt2".into()))
        .meta("tokenizer.ggml.tokens", string_array(&tokens))
        .meta("tokenizer.ggml.merges", string_array(&merges))
        .meta(
            "tokenizer.ggml.token_type",
            MetaValue::Array {
                element_type: 5,
                values: types.iter().map(|&t| MetaValue::I32(t)).collect(),
            },
        )
        .meta("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
        .meta("tokenizer.ggml.eos_token_id", MetaValue::U32(0));
    for t in tensors {
        let values = match t.w {
            Weight::Q(_) => permute_rows(&t.values, HEADS),
            Weight::K(_) => permute_rows(&t.values, KV_HEADS),
            _ => t.values.clone(),
        };
        let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        let ty = if t.shape.len() == 2 {
            GgmlType::F16
        } else {
            GgmlType::F32
        };
        w.tensor(&t.w.gguf_name(), &dims, ty, quantize(ty, &values).unwrap());
    }
    w.to_bytes()
}

/// Little-endian bytes of `values` in `dtype` (F32, F16 or BF16).
fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        other => panic!("no encoder for {other}"),
    }
}

/// Serializes `(name, dtype, shape, bytes)` with the safetensors crate.
fn safetensors_bytes(items: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = items
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// The HF items of the model, all in `dtype`.
fn hf_items(tensors: &[Tensor], dtype: Dtype) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    tensors
        .iter()
        .map(|t| {
            (
                t.w.hf_name(),
                dtype,
                t.shape.clone(),
                encode(&t.values, dtype),
            )
        })
        .collect()
}

fn config_json(tied: bool, extra: &str) -> String {
    format!(
        r#"{{
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "hidden_size": {DIM},
  "intermediate_size": {FFN},
  "num_hidden_layers": {LAYERS},
  "num_attention_heads": {HEADS},
  "num_key_value_heads": {KV_HEADS},
  "rms_norm_eps": {EPS},
  "rope_theta": {ROPE_THETA},
  "vocab_size": {vocab},
  "max_position_embeddings": {CONTEXT},
  "tie_word_embeddings": {tied},
  "bos_token_id": 1,
  "eos_token_id": [0, 1],
  "hidden_act": "silu",
  "torch_dtype": "bfloat16"{extra}
}}"#,
        vocab = vocab().0.len()
    )
}

/// The test's byte-level BPE (same vocabulary as the GGUF one) as a
/// `tokenizer.json`.
fn write_tokenizer(dir: &Path) {
    let (tokens, merges, types) = vocab();
    let mut v = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        v.entry(t.clone()).or_insert(i as u32);
    }
    let pairs = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect();
    let bpe = BPE::builder().vocab_and_merges(v, pairs).build().unwrap();
    let mut tok = HfTokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tok.with_decoder(Some(ByteLevel::new(false, true, true)));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &ty)| ty == 3)
        .map(|(t, _)| AddedToken::from(t.clone(), true))
        .collect();
    tok.add_special_tokens(&special);
    tok.save(dir.join("tokenizer.json"), false).unwrap();
}

/// Writes an HF checkpoint directory: config, tokenizer, one weight file.
fn write_hf(dir: &Path, tensors: &[Tensor], dtype: Dtype, tied: bool) {
    std::fs::write(dir.join("config.json"), config_json(tied, "")).unwrap();
    write_tokenizer(dir);
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes(&hf_items(tensors, dtype)),
    )
    .unwrap();
}

fn logits(model: &Llama, tokens: &[u32]) -> Vec<f32> {
    let c = model.config();
    let mut cache = DenseCache::new(c.n_layers, c.n_kv_heads, c.head_dim, DensePrecision::F32);
    model.forward(tokens, &mut cache, Logits::All).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn load_err(dir: &Path) -> String {
    match aqpim_decode::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn hf_and_gguf_copies_give_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for (seed, tied) in [(11u64, false), (12, true)] {
        let tensors = weights(seed, tied);
        let gguf = tmp.path().join(format!("m{seed}.gguf"));
        std::fs::write(&gguf, gguf_bytes(&tensors)).unwrap();
        let (g_model, g_tok) = aqpim_decode::load(&gguf).unwrap();
        assert_eq!(g_model.config().rope_mode, RopeMode::Normal);
        let tokens = random_tokens(seed, 40, g_model.config().vocab_size);
        let want = logits(&g_model, &tokens);
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(scale > 1.0, "logits too flat to tell: {scale}");
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            let dir = tmp.path().join(format!("hf{seed}-{dtype}"));
            std::fs::create_dir(&dir).unwrap();
            write_hf(&dir, &tensors, dtype, tied);
            let (model, tok) = aqpim_decode::load(&dir).unwrap();
            assert_eq!(model.config().rope_mode, RopeMode::Neox);
            assert_eq!(model.config().tied_embeddings, tied);
            assert_eq!(
                (tok.bos, tok.eos, tok.add_bos),
                (Some(1), Some(0), false),
                "special tokens from config.json"
            );
            let text = "the cat and 12 things<|im_start|>";
            assert_eq!(tok.encode(text).unwrap(), g_tok.encode(text).unwrap());
            assert_eq!(tok.vocab_size(), g_tok.vocab_size());
            let got = logits(&model, &tokens);
            let d = max_diff(&got, &want);
            assert!(
                d <= 1e-4 * scale,
                "{dtype} tied={tied}: max logit difference {d} (scale {scale})"
            );
            // The same weights under the wrong pairing differ clearly: the
            // test does see the RoPE convention.
            let ckpt = Checkpoint::open(&dir).unwrap();
            let mut wrong = ckpt.config().llama.clone();
            wrong.rope_mode = RopeMode::Normal;
            let bad = logits(&Llama::from_weights(&ckpt, wrong).unwrap(), &tokens);
            assert!(
                max_diff(&bad, &want) > 1e-2 * scale,
                "{dtype}: RoPE mode has no effect"
            );
        }
    }
}

#[test]
fn sharded_checkpoint_loads_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors = weights(21, false);
    let single = tmp.path().join("single");
    let sharded = tmp.path().join("sharded");
    std::fs::create_dir(&single).unwrap();
    std::fs::create_dir(&sharded).unwrap();
    write_hf(&single, &tensors, Dtype::BF16, false);
    std::fs::write(sharded.join("config.json"), config_json(false, "")).unwrap();
    write_tokenizer(&sharded);
    let items = hf_items(&tensors, Dtype::BF16);
    let (a, b) = items.split_at(items.len() / 2);
    let mut map = HashMap::new();
    for (i, part) in [a, b].iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        std::fs::write(sharded.join(&file), safetensors_bytes(part)).unwrap();
        for (name, ..) in part.iter() {
            map.insert(name.clone(), file.clone());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let tokens = random_tokens(5, 24, vocab().0.len());
    let (m1, _) = aqpim_decode::load(&single).unwrap();
    let (m2, _) = aqpim_decode::load(&sharded).unwrap();
    assert_eq!(logits(&m1, &tokens), logits(&m2, &tokens));
    // A file of the directory stands for the directory.
    let (m3, _) = aqpim_decode::load(&sharded.join("config.json")).unwrap();
    assert_eq!(logits(&m1, &tokens), logits(&m3, &tokens));

    // A shard named in the index but absent is named in the error.
    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(&sharded);
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

/// A fresh valid directory (F16), then `edit` applied to it.
fn broken(tmp: &Path, name: &str, edit: impl FnOnce(&Path)) -> String {
    let dir = tmp.join(name);
    std::fs::create_dir(&dir).unwrap();
    write_hf(&dir, &weights(31, false), Dtype::F16, false);
    edit(&dir);
    load_err(&dir)
}

/// Rewrites `model.safetensors` with `f` applied to the items.
fn rewrite(dir: &Path, f: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let mut items = hf_items(&weights(31, false), Dtype::F16);
    f(&mut items);
    std::fs::write(dir.join("model.safetensors"), safetensors_bytes(&items)).unwrap();
}

#[test]
fn bad_directories_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    let e = broken(t, "no-config", |d| {
        std::fs::remove_file(d.join("config.json")).unwrap()
    });
    assert!(e.contains("has no config.json"), "{e}");

    let e = broken(t, "no-tokenizer", |d| {
        std::fs::remove_file(d.join("tokenizer.json")).unwrap()
    });
    assert!(e.contains("has no tokenizer.json"), "{e}");

    let e = broken(t, "no-weights", |d| {
        std::fs::remove_file(d.join("model.safetensors")).unwrap()
    });
    assert!(
        e.contains("has no model.safetensors") && e.contains("model.safetensors.index.json"),
        "{e}"
    );

    let e = broken(t, "missing-tensor", |d| {
        rewrite(d, |items| {
            items.retain(|(n, ..)| n != "model.layers.1.mlp.up_proj.weight")
        })
    });
    assert!(
        e.contains("`model.layers.1.mlp.up_proj.weight` is missing"),
        "{e}"
    );

    let e = broken(t, "missing-lm-head", |d| {
        rewrite(d, |items| items.retain(|(n, ..)| n != "lm_head.weight"))
    });
    assert!(e.contains("`lm_head.weight` is missing"), "{e}");

    let e = broken(t, "wrong-shape", |d| {
        rewrite(d, |items| {
            let k = items
                .iter_mut()
                .find(|(n, ..)| n == "model.layers.0.self_attn.k_proj.weight")
                .unwrap();
            k.2 = vec![DIM, KV_HEADS * HEAD_DIM];
        })
    });
    assert!(
        e.contains("model.layers.0.self_attn.k_proj.weight")
            && e.contains("shape [64, 32], expected [32, 64]"),
        "{e}"
    );

    let e = broken(t, "int8", |d| {
        rewrite(d, |items| {
            let v = items
                .iter_mut()
                .find(|(n, ..)| n == "model.layers.1.self_attn.v_proj.weight")
                .unwrap();
            v.1 = Dtype::I8;
            v.3 = vec![1u8; KV_HEADS * HEAD_DIM * DIM];
        })
    });
    assert!(
        e.contains("model.layers.1.self_attn.v_proj.weight")
            && e.contains("dtype I8 is not supported"),
        "{e}"
    );

    let e = broken(t, "truncated", |d| {
        let p = d.join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    });
    assert!(
        e.contains("model.safetensors") && e.contains("incomplete metadata"),
        "{e}"
    );

    let e = broken(t, "empty", |d| {
        std::fs::write(d.join("model.safetensors"), b"").unwrap()
    });
    assert!(
        e.contains("model.safetensors") && e.contains("header too small"),
        "{e}"
    );

    let e = broken(t, "rope-scaling", |d| {
        let extra = r#", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#;
        std::fs::write(d.join("config.json"), config_json(false, extra)).unwrap()
    });
    assert!(
        e.contains("rope_scaling") && e.contains("is not supported"),
        "{e}"
    );

    let e = broken(t, "qwen", |d| {
        let text = config_json(false, "").replace("\"llama\"", "\"qwen2\"");
        std::fs::write(d.join("config.json"), text).unwrap()
    });
    assert!(e.contains("model_type `qwen2` is not supported"), "{e}");

    let e = broken(t, "bad-json", |d| {
        std::fs::write(d.join("config.json"), "{\"model_type\": \"llama\"}").unwrap()
    });
    assert!(
        e.contains("config.json") && e.contains("hidden_size"),
        "{e}"
    );
}
