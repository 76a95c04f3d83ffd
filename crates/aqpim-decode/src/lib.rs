//! End-to-end decode harness (layer 5): a real Llama-family model decoding
//! through a pluggable compressed KV cache (for accuracy), and a system model of
//! GPU, PCIe link, host memory and PIM stacks (for latency), comparing GPU-only,
//! host offload, FP16 PIM and AQPIM.
//!
//! This is the top library crate; only the `aqpim` CLI and `xtask` sit above it.
//!
//! [`model`] holds the real model: a GGUF reader, dequantization, the
//! byte-level BPE tokenizer, the Llama forward pass with its KV-cache
//! interface, perplexity evaluation and generation. [`system`] holds the
//! latency model: model and system presets (`configs/models`,
//! `configs/systems`) and the decode-step policies.

pub mod error;
pub mod model;
pub mod system;

pub use error::{DecodeError, Result};
