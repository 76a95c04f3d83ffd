//! Hugging Face checkpoints: a directory with `config.json`, `tokenizer.json`
//! and the weights as `model.safetensors` or as shards listed in
//! `model.safetensors.index.json` (`LlamaForCausalLM` / `MistralForCausalLM`
//! tensor names).
//!
//! - Tensors of dtype F32 and F16 keep their storage type; BF16 becomes F16
//!   (rounded to nearest; a matrix with a value beyond F16's range stays
//!   exact as F32); other dtypes are refused, naming the tensor.
//! - RoPE: Hugging Face Llama checkpoints rotate the two halves of each head
//!   (`(x[i], x[i + head_dim/2])`) with unpermuted Q/K weights, so the model
//!   runs in [`RopeMode::Neox`] on the weights as stored. (llama.cpp's
//!   converter instead permutes the rows of `q_proj`/`k_proj` per head so
//!   that GGUF files use the adjacent-pair [`RopeMode::Normal`]; both give the
//!   same logits.)
//! - Shard files are memory-mapped and checked by the `safetensors` crate
//!   (header, offsets covering the file exactly) before any tensor is read.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::{DecodeError, Result};
use crate::model::config::{LlamaConfig, RopeMode};
use crate::model::llama::Llama;
use crate::model::quant::{GgmlType, QMatrix};
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::{Weight, WeightSource};

/// The model configuration file of a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// The tokenizer file of a checkpoint directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The optional tokenizer settings (special tokens, `add_bos_token`).
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The weights of an unsharded checkpoint.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint (`weight_map`: tensor name -> shard file).
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// `bos_token_id` / `eos_token_id`: one id, a list of ids, or null.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn first(&self) -> Option<u32> {
        match self {
            Self::One(id) => Some(*id),
            Self::Many(ids) => ids.first().copied(),
        }
    }
}

/// The fields of `config.json` this loader reads (others are ignored).
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    vocab_size: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    max_position_embeddings: usize,
    bos_token_id: Option<TokenIds>,
    eos_token_id: Option<TokenIds>,
    rope_scaling: Option<serde_json::Value>,
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    sliding_window: Option<usize>,
}

/// What `config.json` says: the architecture and the special-token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    /// The architecture, in [`RopeMode::Neox`].
    pub llama: LlamaConfig,
    /// `bos_token_id` (the first, when a list).
    pub bos: Option<u32>,
    /// `eos_token_id` (the first, when a list).
    pub eos: Option<u32>,
}

fn invalid(reason: String) -> DecodeError {
    DecodeError::InvalidConfig { reason }
}

impl HfConfig {
    /// Parses the text of a Llama-family `config.json`.
    pub fn parse(json: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(json).map_err(|source| DecodeError::Json {
            file: CONFIG_FILE.to_string(),
            source,
        })?;
        match raw.model_type.as_deref() {
            Some("llama" | "mistral") => {}
            Some(other) => {
                return Err(invalid(format!(
                "{CONFIG_FILE}: model_type `{other}` is not supported (supported: llama, mistral)"
            )))
            }
            None => {
                return Err(invalid(format!(
                    "{CONFIG_FILE}: no model_type (supported: llama, mistral)"
                )))
            }
        }
        if let Some(scaling) = &raw.rope_scaling {
            return Err(invalid(format!(
                "{CONFIG_FILE}: rope_scaling {scaling} is not supported (only plain RoPE)"
            )));
        }
        if let Some(act) = raw.hidden_act.as_deref().filter(|&a| a != "silu") {
            return Err(invalid(format!(
                "{CONFIG_FILE}: hidden_act `{act}` is not supported (only silu)"
            )));
        }
        if raw.attention_bias || raw.mlp_bias {
            return Err(invalid(format!(
                "{CONFIG_FILE}: attention_bias / mlp_bias are not supported"
            )));
        }
        if raw.num_attention_heads == 0 {
            return Err(invalid(format!("{CONFIG_FILE}: zero attention heads")));
        }
        let head_dim = raw
            .head_dim
            .unwrap_or(raw.hidden_size / raw.num_attention_heads);
        // Within its window, sliding-window attention (Mistral) is full
        // attention: the usable context is the smaller of the two.
        let context_length = raw.sliding_window.map_or(raw.max_position_embeddings, |w| {
            w.min(raw.max_position_embeddings)
        });
        let llama = LlamaConfig {
            n_layers: raw.num_hidden_layers,
            dim: raw.hidden_size,
            ffn_dim: raw.intermediate_size,
            n_heads: raw.num_attention_heads,
            n_kv_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            head_dim,
            n_rot: head_dim,
            rope_base: raw.rope_theta.unwrap_or(10000.0),
            rope_mode: RopeMode::Neox,
            norm_eps: raw.rms_norm_eps,
            vocab_size: raw.vocab_size,
            context_length,
            tied_embeddings: raw.tie_word_embeddings,
        };
        llama.validate()?;
        Ok(Self {
            llama,
            bos: raw.bos_token_id.as_ref().and_then(TokenIds::first),
            eos: raw.eos_token_id.as_ref().and_then(TokenIds::first),
        })
    }
}

/// Where one tensor's bytes lie.
#[derive(Debug, Clone)]
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range in the shard file.
    start: usize,
    end: usize,
}

/// A memory-mapped shard file.
#[derive(Debug)]
struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// An opened checkpoint directory: its configuration and its (validated,
/// memory-mapped) safetensors files.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    config: HfConfig,
    shards: Vec<Shard>,
    tensors: HashMap<String, Entry>,
}

fn missing_file(dir: &Path, what: &str) -> DecodeError {
    DecodeError::InvalidArgument {
        name: "model",
        reason: format!(
            "{} has no {what}; a Hugging Face checkpoint directory needs {CONFIG_FILE}, \
             {TOKENIZER_FILE} and {WEIGHTS_FILE} (or {INDEX_FILE} with its shards)",
            dir.display()
        ),
    }
}

fn read_text(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path).map_or(0, |m| m.len());
    if len > crate::model::limits::MAX_JSON_BYTES {
        return Err(invalid(format!(
            "{} has {len} bytes, more than the limit of {} for a JSON file",
            path.display(),
            crate::model::limits::MAX_JSON_BYTES
        )));
    }
    std::fs::read_to_string(path).map_err(|source| DecodeError::Io {
        op: "reading",
        path: path.to_path_buf(),
        source,
    })
}

fn malformed(path: &Path, source: safetensors::SafeTensorError) -> DecodeError {
    DecodeError::Safetensors {
        path: path.to_path_buf(),
        source,
    }
}

/// `model.safetensors.index.json`: only `weight_map` is read.
#[derive(Debug, Deserialize)]
struct Index {
    weight_map: HashMap<String, String>,
}

impl Checkpoint {
    /// Opens a checkpoint directory: reads `config.json`, maps and checks
    /// every weight file. Errors name a missing file.
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        if !config_path.is_file() {
            return Err(missing_file(dir, CONFIG_FILE));
        }
        let config = HfConfig::parse(&read_text(&config_path)?)?;
        let single = dir.join(WEIGHTS_FILE);
        let index_path = dir.join(INDEX_FILE);
        let (files, weight_map) = if single.is_file() {
            (vec![WEIGHTS_FILE.to_string()], None)
        } else if index_path.is_file() {
            let index: Index =
                serde_json::from_str(&read_text(&index_path)?).map_err(|source| {
                    DecodeError::Json {
                        file: index_path.display().to_string(),
                        source,
                    }
                })?;
            let mut files: Vec<String> = index.weight_map.values().cloned().collect();
            files.sort();
            files.dedup();
            if let Some(bad) = files
                .iter()
                .find(|f| f.contains(['/', '\\']) || *f == ".." || f.is_empty())
            {
                return Err(invalid(format!(
                    "{INDEX_FILE} names shard `{bad}`, which is not a file name in the directory"
                )));
            }
            (files, Some(index.weight_map))
        } else {
            return Err(missing_file(
                dir,
                &format!("{WEIGHTS_FILE} (nor {INDEX_FILE})"),
            ));
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut tensors = HashMap::new();
        for (i, name) in files.iter().enumerate() {
            let path = dir.join(name);
            if !path.is_file() {
                return Err(missing_file(
                    dir,
                    &format!("{name} (a shard named in {INDEX_FILE})"),
                ));
            }
            let file = File::open(&path).map_err(|source| DecodeError::Io {
                op: "opening",
                path: path.clone(),
                source,
            })?;
            // SAFETY: the map is only read. Like every memory-mapped reader,
            // it assumes that no other process truncates or rewrites the
            // file while the model loads; the bytes are copied into the
            // model's own buffers before `Checkpoint` is dropped.
            let map = unsafe { Mmap::map(&file) }.map_err(|source| DecodeError::Io {
                op: "mapping",
                path: path.clone(),
                source,
            })?;
            let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| malformed(&path, e))?;
            let data_start = 8 + n;
            for (tname, info) in meta.tensors() {
                let entry = Entry {
                    shard: i,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                };
                if tensors.insert(tname.clone(), entry).is_some() {
                    return Err(DecodeError::BadTensor {
                        tensor: tname,
                        reason: format!("appears in more than one shard (again in {name})"),
                    });
                }
            }
            shards.push(Shard { path, map });
        }
        if let Some(map) = weight_map {
            for (tname, file) in &map {
                let found = tensors.get(tname).map(|e| files[e.shard].as_str());
                if found != Some(file.as_str()) {
                    return Err(DecodeError::BadTensor {
                        tensor: tname.clone(),
                        reason: format!(
                            "{INDEX_FILE} puts it in {file}, but it is {}",
                            found.map_or("in no shard".to_string(), |f| format!("in {f}"))
                        ),
                    });
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            shards,
            tensors,
        })
    }

    /// What `config.json` says.
    pub fn config(&self) -> &HfConfig {
        &self.config
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Names of all tensors in the weight files.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// A tensor's entry, checked against the expected shape and dtype.
    fn entry(&self, name: &str, shape: &[usize]) -> Result<(&Entry, &[u8])> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| DecodeError::MissingTensor { name: name.into() })?;
        if e.shape != shape {
            return Err(DecodeError::ShapeMismatch {
                tensor: name.into(),
                expected: shape.iter().map(|&d| d as u64).collect(),
                got: e.shape.iter().map(|&d| d as u64).collect(),
            });
        }
        if !matches!(e.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(DecodeError::BadTensor {
                tensor: name.into(),
                reason: format!(
                    "dtype {} is not supported (supported: F32, F16, BF16) in {}",
                    e.dtype,
                    self.shards[e.shard].path.display()
                ),
            });
        }
        // Ranges were validated against the file by `read_metadata`.
        Ok((e, &self.shards[e.shard].map[e.start..e.end]))
    }
}

fn u16s(bytes: &[u8]) -> impl IndexedParallelIterator<Item = u16> + '_ {
    bytes
        .par_chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
}

fn f32s_to_bytes(values: impl IndexedParallelIterator<Item = f32>) -> Vec<u8> {
    let v: Vec<[u8; 4]> = values.map(f32::to_le_bytes).collect();
    v.into_iter().flatten().collect()
}

/// The elements of an F32 / F16 / BF16 tensor as f32.
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F16 => u16s(bytes).map(|b| f16::from_bits(b).to_f32()).collect(),
        Dtype::BF16 => u16s(bytes).map(|b| bf16::from_bits(b).to_f32()).collect(),
        _ => bytes
            .par_chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}

/// Converts BF16 little-endian bytes to the storage the model keeps: F16
/// bytes when every finite value is within F16's range, else F32 bytes.
pub fn bf16_storage(bytes: &[u8]) -> (GgmlType, Vec<u8>) {
    let max = f16::MAX.to_f32();
    let fits = u16s(bytes).all(|b| {
        let v = bf16::from_bits(b).to_f32();
        !v.is_finite() || v.abs() <= max
    });
    if fits {
        let v: Vec<[u8; 2]> = u16s(bytes)
            .map(|b| f16::from_f32(bf16::from_bits(b).to_f32()).to_le_bytes())
            .collect();
        (GgmlType::F16, v.into_iter().flatten().collect())
    } else {
        (
            GgmlType::F32,
            f32s_to_bytes(u16s(bytes).map(|b| bf16::from_bits(b).to_f32())),
        )
    }
}

impl WeightSource for Checkpoint {
    fn matrix(&self, w: Weight, rows: usize, cols: usize) -> Result<QMatrix> {
        let name = w.hf_name();
        let (e, bytes) = self.entry(&name, &[rows, cols])?;
        let (ty, data) = match e.dtype {
            Dtype::F32 => (GgmlType::F32, bytes.to_vec()),
            Dtype::F16 => (GgmlType::F16, bytes.to_vec()),
            _ => bf16_storage(bytes),
        };
        QMatrix::new(ty, rows, cols, data)
    }

    fn vector(&self, w: Weight, len: usize) -> Result<Vec<f32>> {
        let name = w.hf_name();
        let (e, bytes) = self.entry(&name, &[len])?;
        Ok(to_f32(e.dtype, bytes))
    }
}

/// The checkpoint's tokenizer: `tokenizer.json`, with BOS/EOS ids from
/// `config.json`, else from `tokenizer_config.json`'s `bos_token` /
/// `eos_token`; `add_bos` from `tokenizer_config.json`'s `add_bos_token`,
/// else from whether `tokenizer.json`'s post-processor prepends BOS.
pub fn tokenizer(dir: &Path, config: &HfConfig) -> Result<Tokenizer> {
    let path = dir.join(TOKENIZER_FILE);
    if !path.is_file() {
        return Err(missing_file(dir, TOKENIZER_FILE));
    }
    let mut tok = Tokenizer::from_file(&path)?;
    let extra: serde_json::Value = {
        let p = dir.join(TOKENIZER_CONFIG_FILE);
        if p.is_file() {
            serde_json::from_str(&read_text(&p)?).map_err(|source| DecodeError::Json {
                file: p.display().to_string(),
                source,
            })?
        } else {
            serde_json::Value::Null
        }
    };
    // `"bos_token": "<s>"` or `{"content": "<s>", ...}`.
    let named = |key: &str| -> Option<u32> {
        let v = &extra[key];
        let s = v.as_str().or_else(|| v["content"].as_str())?;
        tok.token_id(s)
    };
    let bos = config.bos.or_else(|| named("bos_token"));
    let eos = config.eos.or_else(|| named("eos_token"));
    for id in [bos, eos].into_iter().flatten() {
        if id as usize >= tok.vocab_size() {
            return Err(DecodeError::TokenOutOfRange {
                id,
                vocab: tok.vocab_size(),
            });
        }
    }
    tok.add_bos = match extra["add_bos_token"].as_bool() {
        Some(b) => b,
        None => bos.is_some_and(|b| tok.post_processor_prepends(b)),
    };
    tok.bos = bos;
    tok.eos = eos;
    Ok(tok)
}

/// Loads the model and tokenizer of a checkpoint directory.
pub fn load(dir: &Path) -> Result<(Llama, Tokenizer)> {
    let ckpt = Checkpoint::open(dir)?;
    let tok = tokenizer(dir, ckpt.config())?;
    let model = Llama::from_weights(&ckpt, ckpt.config().llama.clone())?;
    Ok((model, tok))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "vocab_size": 300, "max_position_embeddings": 256,
        "bos_token_id": 1, "eos_token_id": [2, 7], "rope_scaling": null
    }"#;

    /// `BASE` with the fields of the JSON object `{extra}` set.
    fn with(extra: &str) -> String {
        let mut base: serde_json::Value = serde_json::from_str(BASE).unwrap();
        let extra: serde_json::Value = serde_json::from_str(&format!("{{{extra}}}")).unwrap();
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base.to_string()
    }

    #[test]
    fn config_defaults_and_mapping() {
        let c = HfConfig::parse(BASE).unwrap();
        assert_eq!(c.llama.head_dim, 16);
        assert_eq!(c.llama.n_rot, 16);
        assert_eq!(c.llama.n_kv_heads, 2);
        assert_eq!(c.llama.rope_base, 10000.0);
        assert_eq!(c.llama.rope_mode, RopeMode::Neox);
        assert!(!c.llama.tied_embeddings);
        assert_eq!(c.llama.context_length, 256);
        assert_eq!((c.bos, c.eos), (Some(1), Some(2)));
        let c = HfConfig::parse(&with(
            r#""head_dim": 32, "rope_theta": 500000.0, "tie_word_embeddings": true, "eos_token_id": 5, "sliding_window": 128"#,
        ))
        .unwrap();
        assert_eq!(c.llama.head_dim, 32);
        assert_eq!(c.llama.rope_base, 500000.0);
        assert!(c.llama.tied_embeddings);
        assert_eq!(c.eos, Some(5));
        assert_eq!(c.llama.context_length, 128);
    }

    #[test]
    fn config_errors_are_clear() {
        let e = HfConfig::parse(&with(
            r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rope_scaling") && e.contains("not supported"),
            "{e}"
        );
        let e = HfConfig::parse(&BASE.replace("\"llama\"", "\"gpt2\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model_type `gpt2`"), "{e}");
        let e = HfConfig::parse(&BASE.replace("\"hidden_size\": 64,", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size"), "{e}");
        let e = HfConfig::parse(&with(r#""hidden_act": "gelu""#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gelu"), "{e}");
        let e = HfConfig::parse(
            &BASE.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("KV heads"), "{e}");
    }

    #[test]
    fn bf16_becomes_f16_or_f32() {
        let vals = [1.0f32, -0.5, 3.0e-3, 1000.0];
        let bytes: Vec<u8> = vals
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        let (ty, out) = bf16_storage(&bytes);
        assert_eq!(ty, GgmlType::F16);
        assert_eq!(out.len(), 8);
        let back: Vec<f32> = out
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        for (a, b) in vals.iter().zip(&back) {
            assert!((a - b).abs() <= 1e-2 * a.abs(), "{a} {b}");
        }
        let big: Vec<u8> = [1.0f32, 1.0e6]
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        let (ty, out) = bf16_storage(&big);
        assert_eq!(ty, GgmlType::F32);
        assert_eq!(
            f32::from_le_bytes([out[4], out[5], out[6], out[7]]),
            bf16::from_f32(1.0e6).to_f32()
        );
    }
}
