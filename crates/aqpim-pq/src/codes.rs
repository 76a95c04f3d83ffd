//! Code layouts: one code per byte, 4-bit codes two per byte, 2-bit codes
//! four per byte ([`CodeWidth`]).
//!
//! Packed 4-bit layout: each vector takes `ceil(M / 2)` bytes; byte `i` holds
//! the code of subspace `2i` in its low nibble and of subspace `2i + 1` in its
//! high nibble (zero when `M` is odd and `2i + 1 == M`).
//!
//! Packed 2-bit layout: each vector takes `ceil(M / 4)` bytes; byte `i` holds
//! the code of subspace `4i + j` in bits `2j .. 2j + 2` (`j = 0..4`, low bits
//! first); the bits of subspaces past `M` in the last byte are zero.

use crate::error::{PqError, Result};

/// How many bits one stored code takes: the layout of a row of codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodeWidth {
    /// One code per byte (`M` bytes per vector), any `nbits`.
    Byte,
    /// Two codes per byte (`ceil(M / 2)` bytes), `nbits <= 4`; see [`pack_4bit`].
    Nibble,
    /// Four codes per byte (`ceil(M / 4)` bytes), `nbits <= 2`; see [`pack_2bit`].
    Crumb,
}

impl CodeWidth {
    /// The tightest width that holds codes of `nbits` bits: 2-bit fields for
    /// `nbits <= 2`, nibbles for `nbits <= 4`, whole bytes otherwise.
    pub fn tightest(nbits: u32) -> Self {
        match nbits {
            0..=2 => CodeWidth::Crumb,
            3..=4 => CodeWidth::Nibble,
            _ => CodeWidth::Byte,
        }
    }

    /// Bits per stored code: 8, 4 or 2.
    pub fn bits(self) -> u32 {
        match self {
            CodeWidth::Byte => 8,
            CodeWidth::Nibble => 4,
            CodeWidth::Crumb => 2,
        }
    }

    /// Codes per byte: 1, 2 or 4.
    pub fn codes_per_byte(self) -> usize {
        (8 / self.bits()) as usize
    }

    /// Whether codes of `nbits` bits fit this width.
    pub fn holds(self, nbits: u32) -> bool {
        nbits <= self.bits()
    }

    /// Bytes per vector of `M` codes: `M`, `ceil(M / 2)` or `ceil(M / 4)`.
    pub fn row_bytes(self, num_subspaces: usize) -> usize {
        num_subspaces.div_ceil(self.codes_per_byte())
    }

    /// Code of subspace `m` in one stored row (`row_bytes(M)` bytes).
    /// Panics if `m` is past the row.
    pub fn code(self, row: &[u8], m: usize) -> u8 {
        match self {
            CodeWidth::Byte => row[m],
            CodeWidth::Nibble => (row[m / 2] >> (4 * (m % 2))) & 0x0f,
            CodeWidth::Crumb => (row[m / 4] >> (2 * (m % 4))) & 0x03,
        }
    }

    /// Appends one row of `M` codes (one per byte, each below `2^bits()`,
    /// checked by the caller) to `out` in this layout.
    fn push_row(self, row: &[u8], out: &mut Vec<u8>) {
        match self {
            CodeWidth::Byte => out.extend_from_slice(row),
            _ => {
                let (per, bits) = (self.codes_per_byte(), self.bits());
                out.extend(row.chunks(per).map(|group| {
                    group
                        .iter()
                        .enumerate()
                        .fold(0u8, |b, (j, &c)| b | (c << (bits as usize * j)))
                }));
            }
        }
    }

    /// Packs `n * M` codes (one per byte, each below `2^bits()`) into
    /// `n * row_bytes(M)` bytes.
    pub fn pack(self, codes: &[u8], num_subspaces: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.pack_into(codes, num_subspaces, &mut out)?;
        Ok(out)
    }

    /// [`CodeWidth::pack`], appending to `out` (left unchanged on error).
    pub fn pack_into(self, codes: &[u8], num_subspaces: usize, out: &mut Vec<u8>) -> Result<()> {
        let op = self.op("pack");
        if num_subspaces == 0 || !codes.len().is_multiple_of(num_subspaces) {
            return Err(PqError::shape(
                op,
                format!("a multiple of M = {num_subspaces} codes"),
                codes.len(),
            ));
        }
        let limit = 1usize << self.bits();
        if self != CodeWidth::Byte {
            if let Some(pos) = codes.iter().position(|&c| usize::from(c) >= limit) {
                return Err(PqError::CodeOutOfRange {
                    row: pos / num_subspaces,
                    subspace: pos % num_subspaces,
                    code: codes[pos],
                    ksub: limit,
                });
            }
        }
        out.reserve(codes.len() / num_subspaces * self.row_bytes(num_subspaces));
        for row in codes.chunks_exact(num_subspaces) {
            self.push_row(row, out);
        }
        Ok(())
    }

    /// Unpacks `n * row_bytes(M)` bytes into `n * M` codes, one per byte.
    pub fn unpack(self, packed: &[u8], num_subspaces: usize) -> Result<Vec<u8>> {
        let row_bytes = self.row_bytes(num_subspaces);
        if num_subspaces == 0 || !packed.len().is_multiple_of(row_bytes) {
            return Err(PqError::shape(
                self.op("unpack"),
                format!("a multiple of {} = {row_bytes} bytes", self.row_formula()),
                packed.len(),
            ));
        }
        if self == CodeWidth::Byte {
            return Ok(packed.to_vec());
        }
        let mut out = Vec::with_capacity(packed.len() / row_bytes * num_subspaces);
        for row in packed.chunks_exact(row_bytes) {
            out.extend((0..num_subspaces).map(|m| self.code(row, m)));
        }
        Ok(out)
    }

    /// The first bit set in a row's padding (the fields of subspaces past
    /// `M` in its last byte), as `(byte, mask)`; `None` when the padding is
    /// zero. `row` holds `row_bytes(M)` bytes.
    pub fn padding_bits(self, row: &[u8], num_subspaces: usize) -> Option<(usize, u8)> {
        let used = num_subspaces % self.codes_per_byte();
        if self == CodeWidth::Byte || used == 0 {
            return None;
        }
        let last = self.row_bytes(num_subspaces).checked_sub(1)?;
        let mask = 0xffu8 << (self.bits() as usize * used);
        let set = row.get(last)? & mask;
        (set != 0).then_some((last, set))
    }

    fn op(self, what: &'static str) -> &'static str {
        match (self, what) {
            (CodeWidth::Byte, "pack") => "pack_u8",
            (CodeWidth::Byte, _) => "unpack_u8",
            (CodeWidth::Nibble, "pack") => "pack_4bit",
            (CodeWidth::Nibble, _) => "unpack_4bit",
            (CodeWidth::Crumb, "pack") => "pack_2bit",
            (CodeWidth::Crumb, _) => "unpack_2bit",
        }
    }

    fn row_formula(self) -> &'static str {
        match self {
            CodeWidth::Byte => "M",
            CodeWidth::Nibble => "ceil(M / 2)",
            CodeWidth::Crumb => "ceil(M / 4)",
        }
    }
}

impl std::fmt::Display for CodeWidth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-bit", self.bits())
    }
}

/// Bytes per vector of packed 4-bit codes: `ceil(M / 2)`.
pub fn packed_row_bytes(num_subspaces: usize) -> usize {
    CodeWidth::Nibble.row_bytes(num_subspaces)
}

/// Bytes per vector of packed 2-bit codes: `ceil(M / 4)`.
pub fn packed2_row_bytes(num_subspaces: usize) -> usize {
    CodeWidth::Crumb.row_bytes(num_subspaces)
}

/// Packs `n * M` codes (one per byte, each `< 16`) into `n * ceil(M / 2)` bytes.
pub fn pack_4bit(codes: &[u8], num_subspaces: usize) -> Result<Vec<u8>> {
    CodeWidth::Nibble.pack(codes, num_subspaces)
}

/// Unpacks `n * ceil(M / 2)` bytes into `n * M` codes, one per byte.
pub fn unpack_4bit(packed: &[u8], num_subspaces: usize) -> Result<Vec<u8>> {
    CodeWidth::Nibble.unpack(packed, num_subspaces)
}

/// Packs `n * M` codes (one per byte, each `< 4`) into `n * ceil(M / 4)`
/// bytes: subspace `4i + j` in bits `2j .. 2j + 2` of byte `i`.
pub fn pack_2bit(codes: &[u8], num_subspaces: usize) -> Result<Vec<u8>> {
    CodeWidth::Crumb.pack(codes, num_subspaces)
}

/// Unpacks `n * ceil(M / 4)` bytes into `n * M` codes, one per byte.
pub fn unpack_2bit(packed: &[u8], num_subspaces: usize) -> Result<Vec<u8>> {
    CodeWidth::Crumb.unpack(packed, num_subspaces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_even_and_odd() {
        for m in [1usize, 2, 3, 8, 31, 32] {
            let codes: Vec<u8> = (0..5 * m).map(|i| (i * 7 % 16) as u8).collect();
            let packed = pack_4bit(&codes, m).unwrap();
            assert_eq!(packed.len(), 5 * packed_row_bytes(m));
            assert_eq!(unpack_4bit(&packed, m).unwrap(), codes);
        }
    }

    #[test]
    fn round_trip_2bit_every_remainder() {
        for m in [1usize, 2, 3, 4, 5, 6, 7, 8, 31, 32, 33, 128] {
            let codes: Vec<u8> = (0..5 * m).map(|i| (i * 7 % 4) as u8).collect();
            let packed = pack_2bit(&codes, m).unwrap();
            assert_eq!(packed.len(), 5 * m.div_ceil(4));
            assert_eq!(packed2_row_bytes(m), m.div_ceil(4));
            assert_eq!(unpack_2bit(&packed, m).unwrap(), codes);
            for (r, row) in packed.chunks_exact(m.div_ceil(4)).enumerate() {
                assert_eq!(CodeWidth::Crumb.padding_bits(row, m), None);
                for s in 0..m {
                    assert_eq!(CodeWidth::Crumb.code(row, s), codes[r * m + s]);
                }
            }
        }
    }

    #[test]
    fn the_2bit_layout_is_the_documented_one() {
        // Subspace 4i + j in bits 2j..2j+2 of byte i; padding bits zero.
        assert_eq!(
            pack_2bit(&[1, 2, 3, 0, 3, 1], 6).unwrap(),
            [0b00_11_10_01, 0b01_11]
        );
        assert_eq!(
            unpack_2bit(&[0b00_11_10_01, 0b01_11], 6).unwrap(),
            [1, 2, 3, 0, 3, 1]
        );
        assert_eq!(
            CodeWidth::Crumb.padding_bits(&[0, 0b0100_0011], 6),
            Some((1, 0b0100_0000))
        );
        assert_eq!(CodeWidth::Nibble.padding_bits(&[0x10], 1), Some((0, 0x10)));
        assert_eq!(CodeWidth::Nibble.padding_bits(&[0xff], 2), None);
    }

    #[test]
    fn widths_follow_nbits() {
        let widths: Vec<_> = (1..=8).map(CodeWidth::tightest).collect();
        use CodeWidth::*;
        assert_eq!(
            widths,
            [Crumb, Crumb, Nibble, Nibble, Byte, Byte, Byte, Byte]
        );
        assert!(widths.iter().zip(1..=8).all(|(w, b)| w.holds(b)));
        assert_eq!(Crumb.to_string(), "2-bit");
        assert_eq!(Byte.unpack(&[7, 9], 2).unwrap(), [7, 9]);
    }

    #[test]
    fn rejects_wide_codes() {
        assert!(matches!(
            pack_4bit(&[1, 16], 2),
            Err(PqError::CodeOutOfRange {
                row: 0,
                subspace: 1,
                ..
            })
        ));
        assert!(pack_4bit(&[1, 2, 3], 2).is_err());
        assert!(matches!(
            pack_2bit(&[1, 2, 3, 0, 3, 4], 3),
            Err(PqError::CodeOutOfRange {
                row: 1,
                subspace: 2,
                code: 4,
                ksub: 4
            })
        ));
        assert!(pack_2bit(&[1, 2, 3], 2).is_err());
        assert!(pack_2bit(&[], 0).is_err());
        let err = unpack_2bit(&[0; 3], 5).unwrap_err().to_string();
        assert!(err.contains("ceil(M / 4)"), "{err}");
        assert!(unpack_2bit(&[0; 3], 0).is_err());
    }
}
