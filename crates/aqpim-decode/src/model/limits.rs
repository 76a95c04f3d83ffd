//! Ceilings on what a model file may declare: architecture sizes, context,
//! and the memory the GGUF reader spends on metadata.
//!
//! [`LlamaConfig::validate`](crate::model::config::LlamaConfig::validate)
//! checks the sizes before any buffer is sized by them, and the GGUF reader
//! charges every metadata value against [`MAX_METADATA_BYTES`] before
//! allocating it. They are design limits, far above the Llama-family models
//! this workspace runs (at most 126 layers, hidden size 16384, 128 heads,
//! head size 256, vocabularies of 256K, contexts of 128K tokens).

/// Most transformer layers.
pub const MAX_LAYERS: usize = 1024;
/// Largest hidden size (`dim`).
pub const MAX_DIM: usize = 65_536;
/// Largest feed-forward size.
pub const MAX_FFN_DIM: usize = 1 << 20;
/// Most attention heads (query or KV) per layer.
pub const MAX_HEADS: usize = 1024;
/// Largest head size.
pub const MAX_HEAD_DIM: usize = 4096;
/// Largest vocabulary.
pub const MAX_VOCAB: usize = 1 << 22;
/// Longest context a model may declare (2^24 tokens).
pub const MAX_CONTEXT: usize = 1 << 24;
/// Most memory the GGUF reader spends on metadata (parsed values, strings
/// and arrays), whatever the file declares: 256 MiB. A file's metadata can
/// cost at most this, and never more than its own bytes times the size of
/// one parsed value.
pub const MAX_METADATA_BYTES: usize = 256 << 20;
/// Largest JSON file (config, shard index) read from a checkpoint directory.
pub const MAX_JSON_BYTES: u64 = 64 << 20;
