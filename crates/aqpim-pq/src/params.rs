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

/// A code format: sub-vector length `dsub`, bits per code `nbits` and
/// whether codes are stored packed, independent of the vector dimension.
/// With a dimension `d` it gives the quantizer's shape ([`CodeFormat::params`])
/// and the stored row ([`CodeFormat::row_bytes`]); every derived value is
/// computed here or in [`PqParams`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodeFormat {
    /// Elements per sub-vector (`M = d / dsub`).
    pub dsub: usize,
    /// Bits per code, `1..=8`.
    pub nbits: u32,
    /// Codes stored in the tightest width (four a byte for `nbits <= 2`, two
    /// for `nbits <= 4`); otherwise one byte a code.
    pub packed: bool,
}

impl CodeFormat {
    /// A format of `dsub` elements per sub-vector and `nbits` bits per code.
    pub fn new(dsub: usize, nbits: u32, packed: bool) -> Self {
        CodeFormat {
            dsub,
            nbits,
            packed,
        }
    }

    /// The quantizer's shape for vectors of `dim` elements (`M = dim / dsub`).
    pub fn params(&self, dim: usize) -> Result<PqParams> {
        PqParams::with_dsub(dim, self.dsub, self.nbits)
    }

    /// Centroids per subspace, `2^nbits` (as [`PqParams::ksub`]).
    pub fn ksub(&self) -> usize {
        1 << self.nbits
    }

    /// How codes are stored: the tightest width when packed
    /// ([`crate::CodeWidth::tightest`]), one byte a code otherwise.
    pub fn width(&self) -> crate::CodeWidth {
        if self.packed {
            crate::CodeWidth::tightest(self.nbits)
        } else {
            crate::CodeWidth::Byte
        }
    }

    /// Bytes of one stored row of codes of a `dim`-element vector:
    /// `ceil(M / 4)` packed with `nbits <= 2`, `ceil(M / 2)` packed with
    /// `nbits <= 4`, `M` otherwise.
    pub fn row_bytes(&self, dim: usize) -> usize {
        self.width().row_bytes(dim / self.dsub.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_derive_what_params_derive() {
        for (dsub, nbits, packed) in [(2, 8, true), (2, 4, true), (4, 2, true), (4, 4, false)] {
            let f = CodeFormat::new(dsub, nbits, packed);
            let p = f.params(128).unwrap();
            assert_eq!((p.dsub(), p.nbits(), p.ksub()), (dsub, nbits, f.ksub()));
            let width = if packed {
                p.code_width()
            } else {
                crate::CodeWidth::Byte
            };
            assert_eq!(f.row_bytes(128), width.row_bytes(p.num_subspaces()));
        }
        assert!(CodeFormat::new(3, 8, true).params(128).is_err());
    }

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
