//! A real Llama-family LLM in Rust: GGUF loading, dequantization, the
//! byte-level BPE tokenizer, the forward pass with its KV-cache interface,
//! perplexity and generation.
//!
//! - [`gguf`]: GGUF v2/v3 reader and writer;
//! - [`quant`]: ggml block types (F32, F16, Q4_0, Q4_1, Q8_0) and [`quant::QMatrix`];
//! - [`config`]: architecture metadata ([`config::LlamaConfig`]);
//! - [`tokenizer`]: byte-level BPE from the GGUF metadata;
//! - [`cache`]: the [`cache::KvCache`] interface and the exact dense cache;
//! - [`compressed`]: any `aqpim-kvcache` store behind that interface;
//! - [`calibrate`]: offline codebook calibration on real text;
//! - [`llama`]: the forward pass;
//! - [`eval`]: perplexity, teacher-forced decode, generation.

pub mod cache;
pub mod calibrate;
pub mod compressed;
pub mod config;
pub mod eval;
pub mod gguf;
pub mod llama;
pub mod quant;
pub mod tokenizer;

use std::path::Path;

use crate::error::Result;

/// Loads a model and its tokenizer from a GGUF file.
pub fn load(path: &Path) -> Result<(llama::Llama, tokenizer::Tokenizer)> {
    let file = gguf::GgufFile::open(path)?;
    let model = llama::Llama::from_gguf(&file)?;
    let tok = tokenizer::Tokenizer::from_gguf(&file)?;
    Ok((model, tok))
}
