//! Packing of 4-bit codes, two per byte.
//!
//! Packed layout: each vector takes `ceil(M / 2)` bytes; byte `i` holds the
//! code of subspace `2i` in its low nibble and of subspace `2i + 1` in its high
//! nibble (zero when `M` is odd and `2i + 1 == M`).

use crate::error::{PqError, Result};

/// Bytes per vector of packed 4-bit codes: `ceil(M / 2)`.
pub fn packed_row_bytes(num_subspaces: usize) -> usize {
    num_subspaces.div_ceil(2)
}

/// Packs `n * M` codes (one per byte, each `< 16`) into `n * ceil(M / 2)` bytes.
pub fn pack_4bit(codes: &[u8], num_subspaces: usize) -> Result<Vec<u8>> {
    if num_subspaces == 0 || !codes.len().is_multiple_of(num_subspaces) {
        return Err(PqError::shape(
            "pack_4bit",
            format!("a multiple of M = {num_subspaces} codes"),
            codes.len(),
        ));
    }
    let row_bytes = packed_row_bytes(num_subspaces);
    let mut out = Vec::with_capacity(codes.len() / num_subspaces * row_bytes);
    for (i, row) in codes.chunks_exact(num_subspaces).enumerate() {
        if let Some(m) = row.iter().position(|&c| c >= 16) {
            return Err(PqError::CodeOutOfRange {
                row: i,
                subspace: m,
                code: row[m],
                ksub: 16,
            });
        }
        for pair in row.chunks(2) {
            out.push(pair[0] | pair.get(1).map_or(0, |hi| hi << 4));
        }
    }
    Ok(out)
}

/// Unpacks `n * ceil(M / 2)` bytes into `n * M` codes, one per byte.
pub fn unpack_4bit(packed: &[u8], num_subspaces: usize) -> Result<Vec<u8>> {
    let row_bytes = packed_row_bytes(num_subspaces);
    if num_subspaces == 0 || !packed.len().is_multiple_of(row_bytes) {
        return Err(PqError::shape(
            "unpack_4bit",
            format!("a multiple of ceil(M / 2) = {row_bytes} bytes"),
            packed.len(),
        ));
    }
    let mut out = Vec::with_capacity(packed.len() / row_bytes * num_subspaces);
    for row in packed.chunks_exact(row_bytes) {
        for m in 0..num_subspaces {
            let b = row[m / 2];
            out.push(if m % 2 == 0 { b & 0x0f } else { b >> 4 });
        }
    }
    Ok(out)
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
    }
}
