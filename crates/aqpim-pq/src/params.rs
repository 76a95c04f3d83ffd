//! The shape of a product quantizer: `d`, `M`, `nbits`, and what follows from them.

use crate::error::{PqError, Result};

/// Shape of a product quantizer. Derived values (`dsub`, `ksub`) are computed
/// here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PqParams {
    dim: usize,
    num_subspaces: usize,
    nbits: u32,
}

impl PqParams {
    /// Validates and builds the parameters: `dim` (d) and `num_subspaces` (M)
    /// positive with `d % M == 0`, `nbits` in `1..=8`.
    pub fn new(dim: usize, num_subspaces: usize, nbits: u32) -> Result<Self> {
        if dim == 0 {
            return Err(PqError::OutOfRange {
                name: "d",
                value: 0,
                allowed: "d >= 1",
            });
        }
        if num_subspaces == 0 {
            return Err(PqError::OutOfRange {
                name: "M",
                value: 0,
                allowed: "M >= 1",
            });
        }
        if !(1..=8).contains(&nbits) {
            return Err(PqError::OutOfRange {
                name: "nbits",
                value: u64::from(nbits),
                allowed: "1..=8",
            });
        }
        if !dim.is_multiple_of(num_subspaces) {
            return Err(PqError::DimNotDivisible { dim, num_subspaces });
        }
        Ok(PqParams {
            dim,
            num_subspaces,
            nbits,
        })
    }

    /// Builds the parameters from `d` and the sub-vector length `dsub`
    /// (`M = d / dsub`).
    pub fn with_dsub(dim: usize, dsub: usize, nbits: u32) -> Result<Self> {
        if dsub == 0 || !dim.is_multiple_of(dsub) {
            return Err(PqError::OutOfRange {
                name: "dsub",
                value: dsub as u64,
                allowed: "a positive divisor of d",
            });
        }
        Self::new(dim, dim / dsub, nbits)
    }

    /// Vector dimension (d).
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of subspaces (M).
    pub fn num_subspaces(&self) -> usize {
        self.num_subspaces
    }
    /// Bits per code (nbits).
    pub fn nbits(&self) -> u32 {
        self.nbits
    }
    /// Elements per sub-vector (dsub = d / M).
    pub fn dsub(&self) -> usize {
        self.dim / self.num_subspaces
    }
    /// Centroids per subspace (ksub = 2^nbits).
    pub fn ksub(&self) -> usize {
        1 << self.nbits
    }
    /// Number of f32 values in the codebook: `M * ksub * dsub`.
    pub fn codebook_len(&self) -> usize {
        self.num_subspaces * self.ksub() * self.dsub()
    }
    /// Bytes per encoded vector when codes are stored one per byte (`M`).
    pub fn code_bytes_u8(&self) -> usize {
        self.num_subspaces
    }
    /// Bytes per encoded vector in the tightest layout this crate offers
    /// ([`crate::CodeWidth::tightest`]): 2-bit fields (`ceil(M / 4)`) for
    /// `nbits <= 2`, packed nibbles (`ceil(M / 2)`) for `nbits <= 4`, one byte
    /// per code otherwise.
    pub fn code_bytes_packed(&self) -> usize {
        self.code_width().row_bytes(self.num_subspaces)
    }
    /// The tightest code layout for `nbits` (see [`crate::CodeWidth::tightest`]).
    pub fn code_width(&self) -> crate::CodeWidth {
        crate::CodeWidth::tightest(self.nbits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_code_bytes_follow_the_tightest_width() {
        // (M, nbits) -> bytes: 2-bit fields, nibbles, bytes.
        for (m, nbits, want) in [
            (128, 1, 32),
            (128, 2, 32),
            (5, 2, 2),
            (64, 3, 32),
            (64, 4, 32),
            (5, 4, 3),
            (32, 5, 32),
            (32, 8, 32),
        ] {
            let p = PqParams::new(m * 2, m, nbits).unwrap();
            assert_eq!(p.code_bytes_packed(), want, "M={m} nbits={nbits}");
        }
    }
}
