//! Transposed copies of the codes' whole 64-token blocks, kept beside the
//! rows for the CPU attention kernel (see [`super::Codes::blocks`]).
//!
//! The kernel's quantized-table scan and its value lanes read codes
//! transposed in blocks of [`SCAN_BLOCK`] tokens, one code a byte
//! ([`aqpim_pq::transpose_block`]). Transposing on every decode step cost
//! about as many instructions as scoring; a block's codes never change once
//! it is whole, so the store transposes each block once, when its last token
//! is encoded, and the kernel transposes only the partial block at the end.
//! Value codes (at most 16 centroids) are kept two a byte in the kernel's
//! lane layout ([`aqpim_pq::pack_lane_nibbles`]), so that the blocks read
//! per token no more bytes than packed 4-bit rows.
//! The rows stay the stored form (files, the PIM loader and the exact
//! kernels read them); the blocks are derived, rebuilt on load and never
//! written.

use aqpim_pq::{CodeWidth, LANE_ROW, SCAN_BLOCK};

use crate::error::Result;

/// Whether a part keeps transposed blocks: one-byte and 4-bit codes of keys
/// (`part` 0), and of values (`part` 1) with at most 16 centroids, the ones
/// the kernel weighs in SIMD lanes (values of more centroids are binned from
/// the rows).
pub(super) fn keeps_blocks(part: usize, width: CodeWidth, ksub: usize) -> bool {
    matches!(width, CodeWidth::Byte | CodeWidth::Nibble) && (part == 0 || ksub <= 16)
}

/// Which layout a part's blocks take: values (`part` 1) in lane nibbles,
/// keys one code a byte.
pub(super) fn lane_nibbles(part: usize) -> bool {
    part == 1
}

/// Bytes of one 64-token block of `m` subspaces in the layout `lanes` names.
pub(super) fn block_bytes(m: usize, lanes: bool) -> usize {
    m * if lanes { LANE_ROW } else { SCAN_BLOCK }
}

/// Brings `blocks` up to date with `rows` (`tokens x row_bytes` codes of
/// `width`, `m` subspaces): for each whole block of 64 tokens, in token
/// order, its `m x 64`-byte transposition ([`aqpim_pq::transpose_block`]),
/// or with `lanes` its `m x 32` bytes of lane nibbles
/// ([`aqpim_pq::pack_lane_nibbles`], codes below 16). Blocks already there
/// are kept (their rows do not change once whole); blocks past the rows
/// (after a shorter load) are dropped.
pub(super) fn sync(
    rows: &[u8],
    width: CodeWidth,
    m: usize,
    lanes: bool,
    blocks: &mut Vec<u8>,
) -> Result<()> {
    let rb = width.row_bytes(m);
    let block = block_bytes(m, lanes);
    if rb == 0 || block == 0 {
        blocks.clear();
        return Ok(());
    }
    let whole = rows.len() / rb / SCAN_BLOCK;
    let have = (blocks.len() / block).min(whole);
    blocks.truncate(have * block);
    let mut tmp = vec![0u8; if lanes { m * SCAN_BLOCK } else { 0 }];
    for b in have..whole {
        let at = blocks.len();
        blocks.resize(at + block, 0);
        let src = &rows[b * SCAN_BLOCK * rb..(b + 1) * SCAN_BLOCK * rb];
        if lanes {
            aqpim_pq::transpose_block(src, width, m, SCAN_BLOCK, &mut tmp)?;
            aqpim_pq::pack_lane_nibbles(&tmp, &mut blocks[at..])?;
        } else {
            aqpim_pq::transpose_block(src, width, m, SCAN_BLOCK, &mut blocks[at..])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_follow_the_rows_as_they_grow_and_shrink() {
        for (width, m, lanes) in [
            (CodeWidth::Byte, 8, false),
            (CodeWidth::Nibble, 6, false),
            (CodeWidth::Nibble, 5, false),
            (CodeWidth::Nibble, 5, true),
            (CodeWidth::Byte, 4, true),
        ] {
            let rb = width.row_bytes(m);
            let ksub = if lanes { 16 } else { 1u32 << width.bits() };
            let row = if lanes { LANE_ROW } else { 64 };
            let codes: Vec<u8> = (0..300 * m)
                .map(|i| ((i * 37 + i / 7) as u32 % ksub) as u8)
                .collect();
            let rows = width.pack(&codes, m).unwrap();
            let mut blocks = Vec::new();
            for tokens in [0, 1, 63, 64, 65, 200, 300, 130, 0, 256] {
                sync(&rows[..tokens * rb], width, m, lanes, &mut blocks).unwrap();
                assert_eq!(
                    blocks.len(),
                    tokens / 64 * m * row,
                    "{width} tokens={tokens}"
                );
                for (b, blk) in blocks.chunks_exact(m * row).enumerate() {
                    for s in 0..m {
                        for t in 0..64 {
                            let got = match lanes {
                                true => aqpim_pq::lane_nibble(&blk[s * row..], t),
                                false => blk[s * 64 + t],
                            };
                            assert_eq!(got, codes[(b * 64 + t) * m + s]);
                        }
                    }
                }
            }
        }
    }
}
