//! End-to-end decode harness (layer 5): a real Llama-family model decoding
//! through a pluggable compressed KV cache, for accuracy. The latency side
//! (GPU, links, PIM stacks) is the sibling crate `aqpim-system`.
//!
//! Only the `aqpim` CLI and `xtask` sit above it.
//!
//! [`model`] holds the real model: a GGUF reader, dequantization, the
//! byte-level BPE tokenizer, the Llama forward pass with its KV-cache
//! interface, perplexity evaluation and generation.

pub mod error;
pub mod model;

pub use error::{DecodeError, Result};
pub use model::cache::{AttentionCache, DenseCache, DensePrecision};
pub use model::compressed::CompressedCache;
pub use model::eval::{generate, perplexity, GenerateReport, PplOptions, PplReport, Sampling};
pub use model::llama::{Llama, Logits};
pub use model::load;
pub use model::tokenizer::Tokenizer;
