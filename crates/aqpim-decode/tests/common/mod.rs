//! Shared helpers of the integration tests: a tiny random Llama written as
//! GGUF, a small byte-level BPE vocabulary, and a naive f64 reference forward.

#![allow(dead_code)]

use aqpim_decode::byte_level_alphabet;
use aqpim_decode::gguf::{string_array, GgufFile, GgufWriter, MetaValue};
use aqpim_decode::quant::{quantize, GgmlType};
use aqpim_decode::RopeMode;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Shape of the tiny model.
pub const LAYERS: usize = 2;
pub const DIM: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = 16;
pub const FFN: usize = 96;
pub const CONTEXT: usize = 256;
pub const EPS: f64 = 1e-5;
pub const ROPE_BASE: f64 = 10000.0;

/// Vocabulary of the tiny tokenizer: `<|endoftext|>`, `<|im_start|>`, the 256
/// byte-level characters, then merged tokens.
pub fn vocab() -> (Vec<String>, Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into()];
    tokens.extend(byte_level_alphabet().iter().map(|c| c.to_string()));
    let merges: Vec<String> = [
        "Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "Ġa n", "Ġan d", "1 2", "o n", "Ġ w", "in g",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for m in &merges {
        tokens.push(m.replace(' ', ""));
    }
    let mut types = vec![1; tokens.len()];
    types[0] = 3;
    types[1] = 3;
    (tokens, merges, types)
}

fn rand_vec(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

fn mat(
    w: &mut GgufWriter,
    rng: &mut ChaCha8Rng,
    name: &str,
    rows: usize,
    cols: usize,
    ty: GgmlType,
    scale: f32,
) {
    let v = rand_vec(rng, rows * cols, scale);
    w.tensor(
        name,
        &[cols as u64, rows as u64],
        ty,
        quantize(ty, &v).unwrap(),
    );
}

/// Writes a tiny random Llama as GGUF bytes, its matrices in a mix of storage
/// types (`tied`: no `output.weight`).
pub fn tiny_model(seed: u64, tied: bool) -> Vec<u8> {
    tiny_model_with(seed, tied, false)
}

/// [`tiny_model`], with `uniform`: Q, K, V (and gate, up) in one storage type,
/// as in real files, so that the model stacks them into one matrix.
pub fn tiny_model_with(seed: u64, tied: bool, uniform: bool) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (tokens, merges, types) = vocab();
    let vocab = tokens.len();
    let mut w = GgufWriter::new();
    let u32v = |x: usize| MetaValue::U32(x as u32);
    w.meta("general.architecture", MetaValue::String("llama".into()))
        .meta("llama.block_count", u32v(LAYERS))
        .meta("llama.context_length", u32v(CONTEXT))
        .meta("llama.embedding_length", u32v(DIM))
        .meta("llama.feed_forward_length", u32v(FFN))
        .meta("llama.attention.head_count", u32v(HEADS))
        .meta("llama.attention.head_count_kv", u32v(KV_HEADS))
        .meta("llama.rope.freq_base", MetaValue::F32(ROPE_BASE as f32))
        .meta(
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(EPS as f32),
        )
        .meta("llama.rope.dimension_count", u32v(HEAD_DIM))
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
        .meta("tokenizer.ggml.eos_token_id", MetaValue::U32(0))
        .meta("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));
    mat(
        &mut w,
        &mut rng,
        "token_embd.weight",
        vocab,
        DIM,
        GgmlType::Q8_0,
        1.0,
    );
    for l in 0..LAYERS {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        mat(
            &mut w,
            &mut rng,
            &n("attn_q"),
            HEADS * HEAD_DIM,
            DIM,
            GgmlType::Q4_1,
            0.3,
        );
        mat(
            &mut w,
            &mut rng,
            &n("attn_k"),
            KV_HEADS * HEAD_DIM,
            DIM,
            GgmlType::Q4_1,
            0.3,
        );
        mat(
            &mut w,
            &mut rng,
            &n("attn_v"),
            KV_HEADS * HEAD_DIM,
            DIM,
            if uniform {
                GgmlType::Q4_1
            } else {
                GgmlType::Q8_0
            },
            0.3,
        );
        mat(
            &mut w,
            &mut rng,
            &n("attn_output"),
            DIM,
            HEADS * HEAD_DIM,
            GgmlType::F16,
            0.2,
        );
        mat(
            &mut w,
            &mut rng,
            &n("ffn_gate"),
            FFN,
            DIM,
            GgmlType::Q4_0,
            0.3,
        );
        let up_ty = if uniform {
            GgmlType::Q4_0
        } else {
            GgmlType::F32
        };
        mat(&mut w, &mut rng, &n("ffn_up"), FFN, DIM, up_ty, 0.3);
        mat(
            &mut w,
            &mut rng,
            &n("ffn_down"),
            DIM,
            FFN,
            GgmlType::Q4_1,
            0.2,
        );
        for norm in ["attn_norm", "ffn_norm"] {
            let g: Vec<f32> = rand_vec(&mut rng, DIM, 0.5)
                .iter()
                .map(|x| 1.0 + x)
                .collect();
            w.tensor(
                &n(norm),
                &[DIM as u64],
                GgmlType::F32,
                quantize(GgmlType::F32, &g).unwrap(),
            );
        }
    }
    let fixed: Vec<_> = (0..DIM).map(|i| 1.0 + 0.01 * i as f32).collect();
    w.tensor(
        "output_norm.weight",
        &[DIM as u64],
        GgmlType::F32,
        quantize(GgmlType::F32, &fixed).unwrap(),
    );
    if !tied {
        mat(
            &mut w,
            &mut rng,
            "output.weight",
            vocab,
            DIM,
            GgmlType::Q8_0,
            0.5,
        );
    }
    w.to_bytes()
}

/// Naive f64 forward over the whole sequence (no cache): logits `n x vocab`.
pub fn reference_forward(file: &GgufFile, tokens: &[u32], mode: RopeMode) -> Vec<Vec<f64>> {
    let get = |name: &str| -> Vec<f64> {
        let t = file.tensor(name).unwrap();
        file.tensor_f32(name, &t.dims.clone())
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    };
    // y = W x with W rows x cols row-major.
    let mv = |w: &[f64], x: &[f64]| -> Vec<f64> {
        let cols = x.len();
        w.chunks(cols)
            .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    };
    let norm = |x: &[f64], g: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|a| a * a).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (ms + EPS).sqrt();
        x.iter().zip(g).map(|(a, b)| a * inv * b).collect()
    };
    let rope = |x: &mut [f64], pos: usize| {
        for i in 0..HEAD_DIM / 2 {
            let theta = pos as f64 * ROPE_BASE.powf(-2.0 * i as f64 / HEAD_DIM as f64);
            let (a, b) = match mode {
                RopeMode::Normal => (2 * i, 2 * i + 1),
                RopeMode::Neox => (i, i + HEAD_DIM / 2),
            };
            let (x0, x1) = (x[a], x[b]);
            x[a] = x0 * theta.cos() - x1 * theta.sin();
            x[b] = x0 * theta.sin() + x1 * theta.cos();
        }
    };
    let emb = get("token_embd.weight");
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| emb[t as usize * DIM..(t as usize + 1) * DIM].to_vec())
        .collect();
    let n = tokens.len();
    for l in 0..LAYERS {
        let w = |s: &str| get(&format!("blk.{l}.{s}.weight"));
        let (wq, wk, wv, wo) = (w("attn_q"), w("attn_k"), w("attn_v"), w("attn_output"));
        let (wg, wu, wd) = (w("ffn_gate"), w("ffn_up"), w("ffn_down"));
        let (an, fnorm) = (w("attn_norm"), w("ffn_norm"));
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (p, x) in xs.iter().enumerate() {
            let h = norm(x, &an);
            let mut q = mv(&wq, &h);
            let mut k = mv(&wk, &h);
            q.chunks_mut(HEAD_DIM).for_each(|hd| rope(hd, p));
            k.chunks_mut(HEAD_DIM).for_each(|hd| rope(hd, p));
            qs.push(q);
            ks.push(k);
            vs.push(mv(&wv, &h));
        }
        for p in 0..n {
            let mut o = vec![0f64; HEADS * HEAD_DIM];
            for h in 0..HEADS {
                let g = h / (HEADS / KV_HEADS);
                let q = &qs[p][h * HEAD_DIM..(h + 1) * HEAD_DIM];
                let s: Vec<f64> = (0..=p)
                    .map(|t| {
                        q.iter()
                            .zip(&ks[t][g * HEAD_DIM..(g + 1) * HEAD_DIM])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            / (HEAD_DIM as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for t in 0..=p {
                    let pt = (s[t] - m).exp() / z;
                    for j in 0..HEAD_DIM {
                        o[h * HEAD_DIM + j] += pt * vs[t][g * HEAD_DIM + j];
                    }
                }
            }
            let a = mv(&wo, &o);
            xs[p].iter_mut().zip(&a).for_each(|(x, y)| *x += y);
            let h = norm(&xs[p], &fnorm);
            let gate = mv(&wg, &h);
            let up = mv(&wu, &h);
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let d = mv(&wd, &act);
            xs[p].iter_mut().zip(&d).for_each(|(x, y)| *x += y);
        }
    }
    let on = get("output_norm.weight");
    let out = if file.tensor("output.weight").is_some() {
        get("output.weight")
    } else {
        emb
    };
    xs.iter().map(|x| mv(&out, &norm(x, &on))).collect()
}

/// Random token ids below `vocab`.
pub fn random_tokens(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(0..vocab as u32)).collect()
}

/// A proptest config: `cases` cases from the fixed seed `seed`, no
/// persistence files (so every run is the same run).
pub fn config(cases: u32, seed: u64) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..proptest::test_runner::Config::default()
    }
}
