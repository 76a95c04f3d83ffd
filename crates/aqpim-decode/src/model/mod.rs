//! A real Llama-family LLM in Rust: GGUF loading, dequantization, the
//! byte-level BPE tokenizer, the forward pass with its KV-cache interface,
//! perplexity and generation.
//!
//! - [`gguf`]: GGUF v2/v3 reader and writer;
//! - [`hf`]: Hugging Face checkpoint directories (`config.json`,
//!   `tokenizer.json`, safetensors weights);
//! - [`weights`]: the tensors of the model, named per format, and the
//!   [`weights::WeightSource`] trait both formats implement;
//! - [`quant`]: ggml block types (F32, F16, Q4_0, Q4_1, Q8_0) and [`quant::QMatrix`];
//! - [`config`]: architecture metadata ([`config::LlamaConfig`]);
//! - [`tokenizer`]: byte-level BPE from the GGUF metadata;
//! - [`cache`]: the [`cache::AttentionCache`] interface and the exact dense cache;
//! - [`compressed`]: any `aqpim-kvcache` store behind that interface;
//! - [`calibrate`]: offline codebook calibration on real text;
//! - [`causal`]: blocked causal self-attention of a whole sequence (calibration's forward);
//! - [`llama`]: the forward pass;
//! - [`eval`]: perplexity, teacher-forced decode, generation;
//! - [`divergence`]: KL divergence and top-1 agreement against a reference cache.

pub mod cache;
pub mod calibrate;
pub mod causal;
pub mod compressed;
pub mod config;
pub mod divergence;
pub mod eval;
pub mod gguf;
pub mod hf;
pub mod limits;
pub mod llama;
pub mod quant;
mod spin;
pub mod tokenizer;
pub mod weights;

use std::path::Path;

use crate::error::Result;

/// Loads a model and its tokenizer from a GGUF file, or from a Hugging Face
/// checkpoint directory when `path` is a directory (or a `config.json` /
/// `*.safetensors` file in one; see [`hf`]).
pub fn load(path: &Path) -> Result<(llama::Llama, tokenizer::Tokenizer)> {
    if path.is_dir() {
        return hf::load(path);
    }
    let hf_file = path.file_name().is_some_and(|n| n == hf::CONFIG_FILE)
        || path.extension().is_some_and(|e| e == "safetensors");
    if let Some(dir) = path.parent().filter(|_| hf_file && path.is_file()) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        return hf::load(dir);
    }
    let file = gguf::GgufFile::open(path)?;
    let model = llama::Llama::from_gguf(&file)?;
    let tok = tokenizer::Tokenizer::from_gguf(&file)?;
    Ok((model, tok))
}
