//! The crate's error type: one enum, structured fields, no panics on bad input.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model, tokenizing text or
/// running the forward pass.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// An I/O operation on a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing").
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file ended before a field could be read.
    #[error("truncated GGUF file: {what} needs {needed} bytes at offset {offset}, but the file has {len}")]
    Truncated {
        /// The field being read.
        what: String,
        /// Byte offset of the field.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// Length of the file.
        len: u64,
    },
    /// The file does not start with the GGUF magic.
    #[error("not a GGUF file: magic bytes are {got:?}, expected \"GGUF\"")]
    BadMagic {
        /// The first four bytes of the file.
        got: [u8; 4],
    },
    /// The GGUF version is not one this reader understands.
    #[error("unsupported GGUF version {version} (supported: 2 and 3)")]
    UnsupportedVersion {
        /// The version word of the header.
        version: u32,
    },
    /// A structural field of the file holds an impossible value.
    #[error("malformed GGUF file at offset {offset}: {reason}")]
    Malformed {
        /// Byte offset where the problem was found.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A tensor uses a storage type that this crate cannot dequantize.
    #[error("tensor `{tensor}` has ggml type {type_name} (code {code}), which is not supported (supported: F32, F16, Q4_0, Q4_1, Q8_0)")]
    UnsupportedTensorType {
        /// Tensor name.
        tensor: String,
        /// ggml type code.
        code: u32,
        /// ggml type name, or "unknown".
        type_name: &'static str,
    },
    /// A tensor's shape or data range is inconsistent.
    #[error("tensor `{tensor}`: {reason}")]
    BadTensor {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor that the model needs is absent.
    #[error("tensor `{name}` is missing from the model file")]
    MissingTensor {
        /// Tensor name.
        name: String,
    },
    /// A tensor has a shape other than the one the model configuration implies.
    #[error("tensor `{tensor}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Tensor name.
        tensor: String,
        /// Expected GGUF dims (fastest-varying first).
        expected: Vec<u64>,
        /// Dims in the file.
        got: Vec<u64>,
    },
    /// A metadata key that the model needs is absent.
    #[error("metadata key `{key}` is missing")]
    MissingMetadata {
        /// The key.
        key: String,
    },
    /// A metadata value has the wrong type.
    #[error("metadata key `{key}` has type {got}, expected {expected}")]
    MetadataType {
        /// The key.
        key: String,
        /// Expected type.
        expected: &'static str,
        /// Type in the file.
        got: &'static str,
    },
    /// The model configuration is inconsistent or unsupported.
    #[error("invalid model configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The tokenizer could not be built or failed on its input.
    #[error("tokenizer: {reason}")]
    Tokenizer {
        /// What is wrong.
        reason: String,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange {
        /// The token id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// An argument is out of its valid range.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// Argument name.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The KV cache refused an operation.
    #[error("KV cache: {reason}")]
    Cache {
        /// What is wrong.
        reason: String,
    },
    /// An error from the KV-cache formats and stores (`aqpim-kvcache`).
    #[error(transparent)]
    Kv(#[from] aqpim_kvcache::KvError),
    /// An error from the attention kernels (`aqpim-attn`).
    #[error(transparent)]
    Attn(#[from] aqpim_attn::AttnError),
    /// An error from the product-quantization library (`aqpim-pq`).
    #[error(transparent)]
    Pq(#[from] aqpim_pq::PqError),
    /// Calibrating the codebooks of one `(layer, kv_head)` failed.
    #[error("calibration, layer {layer}, KV head {kv_head}: {source}")]
    Calibration {
        /// The layer.
        layer: usize,
        /// The KV head.
        kv_head: usize,
        /// What failed.
        #[source]
        source: Box<DecodeError>,
    },
    /// Codebooks (or transforms) stored in a directory that cannot be
    /// loaded into the store.
    #[error("codebooks in {dir}: {source}{hint}")]
    Codebooks {
        /// The directory.
        dir: PathBuf,
        /// What to do about it (empty, or a sentence in parentheses).
        hint: String,
        /// What failed.
        #[source]
        source: Box<DecodeError>,
    },
    /// A JSON file (`config.json`, the shard index, `tokenizer_config.json`)
    /// does not parse into what the loader expects.
    #[error("{file}: {source}")]
    Json {
        /// The file (its name or path).
        file: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file's header does not parse.
    #[error("reading safetensors {path}: {source}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// The tokenizer library refused an operation.
    #[error("tokenizer, {op}: {source}")]
    TokenizerLib {
        /// What was being done ("building the BPE model", "encoding text").
        op: String,
        /// The library's error.
        #[source]
        source: tokenizers::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = DecodeError> = std::result::Result<T, E>;
