//! Codes of at most 16 centroids packed two a byte for SIMD lanes: the
//! layout in which the CPU attention kernel reads value codes.
//!
//! A transposed block ([`crate::transpose_block`]: 64 tokens, one code a
//! byte, subspace-major) becomes [`LANE_ROW`] = 32 bytes a subspace. Byte
//! `4 i + j` (`i < 8`, `j < 4`) holds token `16 j + i` in its low nibble and
//! token `16 j + 8 + i` in its high nibble. Read as eight little-endian
//! dwords and broadcast to both halves of a 16-lane register, lane `l < 8`
//! then holds token `16 j + l` at bits `8 j .. 8 j + 4` and lane `l + 8`
//! token `16 j + 8 + l` at bits `8 j + 4 .. 8 j + 8`: one variable shift
//! per 16 tokens puts them in the low four bits, the only ones a
//! `vpermps` index uses. Half the bytes of one code a byte, and no widening.

use crate::error::{PqError, Result};
use crate::qlut::BLOCK;

/// Bytes a subspace takes in a block of 64 tokens.
pub const LANE_ROW: usize = BLOCK / 2;

/// Packs transposed rows (`64` bytes a subspace, codes below 16; higher
/// bits are dropped) into lane rows of [`LANE_ROW`] bytes.
pub fn pack_lane_nibbles(transposed: &[u8], out: &mut [u8]) -> Result<()> {
    if !transposed.len().is_multiple_of(BLOCK) || out.len() != transposed.len() / 2 {
        return Err(PqError::shape(
            "pack_lane_nibbles",
            format!("rows of {BLOCK} bytes into half as many bytes"),
            format!("{} bytes into {}", transposed.len(), out.len()),
        ));
    }
    for (row, o) in transposed
        .chunks_exact(BLOCK)
        .zip(out.chunks_exact_mut(LANE_ROW))
    {
        for i in 0..8 {
            for j in 0..4 {
                o[4 * i + j] = (row[16 * j + i] & 15) | (row[16 * j + 8 + i] & 15) << 4;
            }
        }
    }
    Ok(())
}

/// The code of token `t` (`< 64`) in a lane row. Panics if `row` is
/// shorter than [`LANE_ROW`] or `t >= 64`.
pub fn lane_nibble(row: &[u8], t: usize) -> u8 {
    assert!(t < BLOCK, "token {t} of a {BLOCK}-token block");
    let (j, r) = (t / 16, t % 16);
    let b = row[4 * (r % 8) + j];
    if r < 8 {
        b & 15
    } else {
        b >> 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_comes_back() {
        let rows: Vec<u8> = (0..3 * BLOCK)
            .map(|i| ((i * 7 + i / 5) % 16) as u8)
            .collect();
        let mut packed = vec![0u8; rows.len() / 2];
        pack_lane_nibbles(&rows, &mut packed).unwrap();
        for (row, p) in rows.chunks_exact(BLOCK).zip(packed.chunks_exact(LANE_ROW)) {
            for (t, &c) in row.iter().enumerate() {
                assert_eq!(lane_nibble(p, t), c);
            }
        }
        assert!(pack_lane_nibbles(&rows[1..], &mut packed).is_err());
    }
}
