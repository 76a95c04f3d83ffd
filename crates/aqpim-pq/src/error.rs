//! The crate's single error type.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = PqError> = std::result::Result<T, E>;

/// Everything that can go wrong in `aqpim-pq`, with the fields needed to say
/// what and where.
#[derive(Debug, thiserror::Error)]
pub enum PqError {
    /// The vector dimension is not a multiple of the number of subspaces.
    #[error("dimension d = {dim} is not divisible by the number of subspaces M = {num_subspaces}")]
    DimNotDivisible {
        /// `d`
        dim: usize,
        /// `M`
        num_subspaces: usize,
    },
    /// A parameter is zero or out of its allowed range.
    #[error("{name} = {value} is out of range ({allowed})")]
    OutOfRange {
        /// Parameter name.
        name: &'static str,
        /// Value given.
        value: u64,
        /// The allowed range, in words.
        allowed: &'static str,
    },
    /// A matrix larger than `limits::MAX_ELEMENTS` (or one whose
    /// element count overflows).
    #[error("{what}: {rows} x {cols} values is more than the limit of {limit}")]
    TooLarge {
        /// Which matrix or flags.
        what: &'static str,
        /// Rows declared.
        rows: usize,
        /// Columns declared.
        cols: usize,
        /// The limit on rows x cols.
        limit: usize,
    },
    /// Fewer training points than centroids.
    #[error("k-means needs at least ksub = {needed} training points, got {got}")]
    TooFewPoints {
        /// Centroids to train (`ksub`).
        needed: usize,
        /// Points given.
        got: usize,
    },
    /// A NaN or infinite value in an input matrix.
    #[error("{what} contains a non-finite value ({value}) at row {row}, column {col}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Row (vector) index.
        row: usize,
        /// Column (element) index.
        col: usize,
        /// The value found.
        value: f32,
    },
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
    /// A code is not smaller than `ksub`.
    #[error("code {code} at vector {row}, subspace {subspace} is out of range (ksub = {ksub})")]
    CodeOutOfRange {
        /// Vector index.
        row: usize,
        /// Subspace index.
        subspace: usize,
        /// The code found.
        code: u8,
        /// Number of centroids.
        ksub: usize,
    },
    /// A codebook file is malformed.
    #[error("codebook file {path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An I/O error, with the path involved.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl PqError {
    pub(crate) fn shape(op: &'static str, expected: impl ToString, got: impl ToString) -> Self {
        PqError::Shape {
            op,
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}
