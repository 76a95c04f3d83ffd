//! The crate's error type: one enum, structured fields; lower crates' errors
//! kept as sources.

use std::path::PathBuf;

/// Everything that can go wrong while loading presets or modelling a step.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// A preset file could not be read.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("reading").
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A model or system preset is malformed or inconsistent.
    #[error("`{name}`: {reason}")]
    Preset {
        /// Preset name or file.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An argument is out of its valid range.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// Argument name.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The workload does not fit the memory a policy may use.
    #[error("{what} needs {needed} bytes but {place} holds {available}: {over} bytes too many")]
    Capacity {
        /// What is being placed.
        what: String,
        /// Where.
        place: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
        /// `needed - available`.
        over: u64,
    },
    /// The KV-cache format or its accounting refused the shape.
    #[error("KV cache format: {0}")]
    Kv(#[from] aqpim_kvcache::KvError),
    /// The PIM lowering (placement, programs) refused the job.
    #[error("PIM lowering: {0}")]
    Attn(#[from] aqpim_attn::AttnError),
    /// The PIM device or simulator refused the job.
    #[error("PIM device: {0}")]
    Pim(#[from] aqpim_pim::PimError),
}

/// The crate's result type.
pub type Result<T, E = SystemError> = std::result::Result<T, E>;
