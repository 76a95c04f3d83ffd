//! The crate's single error type.

use std::path::PathBuf;

use aqpim_pq::PqError;

/// Result alias for this crate.
pub type Result<T, E = KvError> = std::result::Result<T, E>;

/// Keys or values: which half of the cache an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum KvPart {
    /// The keys (K).
    Keys,
    /// The values (V).
    Values,
}

impl std::fmt::Display for KvPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvPart::Keys => "keys",
            KvPart::Values => "values",
        })
    }
}

/// Everything that can go wrong in `aqpim-kvcache`, with the fields needed to
/// say what and where.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// A buffer has the wrong length for the shape it should hold.
    #[error("shape mismatch in {op}: expected {expected}, got {got}")]
    Shape {
        /// The operation that checked the shape.
        op: &'static str,
        /// What was expected, in words.
        expected: String,
        /// What was given, in words.
        got: String,
    },
    /// A layer index past the model's last layer.
    #[error("layer {layer} is out of range (the cache has {num_layers} layers)")]
    LayerOutOfRange {
        /// Layer asked for.
        layer: usize,
        /// Number of layers.
        num_layers: usize,
    },
    /// A KV-head index past the last KV head.
    #[error("KV head {head} is out of range (the cache has {num_kv_heads} KV heads)")]
    HeadOutOfRange {
        /// Head asked for.
        head: usize,
        /// Number of KV heads.
        num_kv_heads: usize,
    },
    /// A NaN, an infinity, or a value too large for FP16 in keys or values.
    #[error("{part} of layer {layer}, KV head {head}, token {token} (of this call), channel {channel}: {value} is {why}")]
    NonFinite {
        /// Keys or values.
        part: KvPart,
        /// Layer.
        layer: usize,
        /// KV head.
        head: usize,
        /// Token index within the call's input.
        token: usize,
        /// Channel (element of the head vector).
        channel: usize,
        /// The value found.
        value: f32,
        /// "not finite" or "outside the FP16 range".
        why: &'static str,
    },
    /// A codebook whose shape does not match the cache's spec.
    #[error("{part} codebook for layer {layer}, KV head {head}: expected {expected}, got {got}")]
    CodebookShape {
        /// Keys or values.
        part: KvPart,
        /// Layer.
        layer: usize,
        /// KV head.
        head: usize,
        /// The expected `d, M, nbits`, in words.
        expected: String,
        /// What was given.
        got: String,
    },
    /// Replacing a codebook that already encoded tokens would silently change them.
    #[error("{part} codebook for layer {layer}, KV head {head} already encoded {tokens} tokens; it cannot be replaced")]
    CodebookInUse {
        /// Keys or values.
        part: KvPart,
        /// Layer.
        layer: usize,
        /// KV head.
        head: usize,
        /// Tokens encoded with it.
        tokens: usize,
    },
    /// A malformed cache spec string (`pq:dsub=4,...`).
    #[error("bad KV-cache spec `{spec}`: {reason}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong, naming the key or value.
        reason: String,
    },
    /// A spec that cannot hold the given model shape (say `dsub` not dividing `head_dim`).
    #[error("KV-cache spec `{spec}` does not fit the shape {shape}: {reason}")]
    Incompatible {
        /// The spec (canonical form).
        spec: String,
        /// The shape, in words.
        shape: String,
        /// Why.
        reason: String,
    },
    /// A bad model shape (zero sizes, query heads not a multiple of KV heads).
    #[error("bad model shape: {0}")]
    BadShape(String),
    /// A malformed, corrupted or truncated cache file.
    #[error("KV-cache file {path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An error from the PQ layer (training, encoding, file I/O).
    #[error(transparent)]
    Pq(#[from] PqError),
}

impl KvError {
    pub(crate) fn shape(op: &'static str, expected: impl ToString, got: impl ToString) -> Self {
        KvError::Shape {
            op,
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}
