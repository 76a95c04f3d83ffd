//! The crate's single error type.

/// Result alias for this crate.
pub type Result<T, E = AttnError> = std::result::Result<T, E>;

/// Everything that can go wrong in `aqpim-attn`.
#[derive(Debug, thiserror::Error)]
pub enum AttnError {
    /// A buffer has the wrong length.
    #[error("shape mismatch in {op}: expected {expected}, got {got}")]
    Shape {
        /// The operation that checked the shape.
        op: &'static str,
        /// What was expected.
        expected: String,
        /// What was given.
        got: String,
    },
    /// A query holds NaN or an infinity.
    #[error("query head {head} has a non-finite value ({value}) at element {index}")]
    NonFiniteQuery {
        /// Query head.
        head: usize,
        /// Element index.
        index: usize,
        /// The value.
        value: f32,
    },
    /// The cache holds no token for this layer.
    #[error("layer {layer} of the cache holds no token: nothing to attend to")]
    EmptyCache {
        /// Layer index.
        layer: usize,
    },
    /// A kind of cache this kernel does not read.
    #[error("no attention kernel for a {0} cache")]
    Unsupported(&'static str),
    /// An error from the KV cache.
    #[error(transparent)]
    Kv(#[from] aqpim_kvcache::KvError),
    /// A cache format the PIM banks do not hold.
    #[error("PIM code format: {0}")]
    PimFormat(String),
    /// A cache (or a slice of it) that does not fit the PIM device.
    #[error("PIM placement: {0}")]
    Placement(String),
    /// An error from the PIM simulator.
    #[error(transparent)]
    Pim(#[from] aqpim_pim::PimError),
    /// An error from the PQ library.
    #[error(transparent)]
    Pq(#[from] aqpim_pq::PqError),
}

impl AttnError {
    pub(crate) fn shape(op: &'static str, expected: impl ToString, got: impl ToString) -> Self {
        AttnError::Shape {
            op,
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}

/// Checks a `heads x head_dim` query block: length and finiteness.
pub(crate) fn check_queries(queries: &[f32], heads: usize, head_dim: usize) -> Result<()> {
    if queries.len() != heads * head_dim {
        return Err(AttnError::shape(
            "queries",
            format!("{heads} heads x {head_dim}"),
            format!("{} values", queries.len()),
        ));
    }
    if let Some(i) = queries.iter().position(|v| !v.is_finite()) {
        return Err(AttnError::NonFiniteQuery {
            head: i / head_dim,
            index: i % head_dim,
            value: queries[i],
        });
    }
    Ok(())
}
