//! End-to-end decode harness (layer 5): a real Llama-family model decoding
//! through a pluggable compressed KV cache, for accuracy. The latency side
//! (GPU, links, PIM stacks) is the sibling crate `aqpim-system`.
//!
//! Only the `aqpim` CLI and `xtask` sit above it.
//!
//! The API, each item at one path. At the root: the model ([`load`],
//! [`Llama`], [`Logits`], [`LlamaConfig`], [`RopeMode`], [`Tokenizer`],
//! [`byte_level_alphabet`], [`Weight`], [`WeightSource`]), its KV-cache interface
//! ([`AttentionCache`], [`DenseCache`], [`DensePrecision`],
//! [`CompressedCache`]) and [`DecodeError`]. As namespaces:
//!
//! - [`eval`]: perplexity (with the KL divergence against an FP16 pass) and
//!   generation;
//! - [`calibrate`]: PQ codebooks calibrated on a model's keys and values;
//! - [`divergence`]: KL divergence, percentiles and top-1 agreement of
//!   next-token distributions;
//! - [`gguf`] and [`hf`]: the GGUF reader and Hugging Face checkpoints;
//! - [`quant`]: the GGML block formats and their dequantization.
//!
//! The private `model` module holds the implementation (the forward pass,
//! `causal` attention, the spin pool, limits).

mod error;
mod model;

pub use error::{DecodeError, Result};
pub use model::cache::{AttentionCache, DenseCache, DensePrecision};
pub use model::compressed::CompressedCache;
pub use model::config::{ActivationPrecision, LlamaConfig, RopeMode};
pub use model::llama::{Llama, Logits};
pub use model::load;
pub use model::tokenizer::{byte_level_alphabet, Tokenizer};
pub use model::weights::{Weight, WeightSource};
pub use model::{calibrate, divergence, eval, gguf, hf, quant};
