//! Transposed copies of the codes' whole 64-token blocks, kept beside the
//! rows for the CPU attention kernel (see [`super::Codes::blocks`]).
//!
//! The kernel's quantized-table scan and its value lanes read codes
//! transposed in blocks of [`SCAN_BLOCK`] tokens, one code a byte
//! ([`aqpim_pq::transpose_block`]). Transposing on every decode step cost
//! about as many instructions as scoring; a block's codes never change once
//! it is whole, so the store transposes each block once, when its last token
//! is encoded, and the kernel transposes only the partial block at the end.
//! The rows stay the stored form (files, the PIM loader and the exact
//! kernels read them); the blocks are derived, rebuilt on load and never
//! written.

use aqpim_pq::{CodeWidth, SCAN_BLOCK};

use crate::error::Result;

/// Whether a part keeps transposed blocks: one-byte and 4-bit codes of keys
/// (`part` 0), and of values (`part` 1) with at most 16 centroids, the ones
/// the kernel weighs in SIMD lanes (values of more centroids are binned from
/// the rows).
pub(super) fn keeps_blocks(part: usize, width: CodeWidth, ksub: usize) -> bool {
    matches!(width, CodeWidth::Byte | CodeWidth::Nibble) && (part == 0 || ksub <= 16)
}

/// Brings `blocks` up to date with `rows` (`tokens x row_bytes` codes of
/// `width`, `m` subspaces): one `m x 64`-byte transposed block for each
/// whole block of 64 tokens, in token order. Blocks already there are kept
/// (their rows do not change once whole); blocks past the rows (after a
/// shorter load) are dropped.
pub(super) fn sync(rows: &[u8], width: CodeWidth, m: usize, blocks: &mut Vec<u8>) -> Result<()> {
    let rb = width.row_bytes(m);
    let block = m * SCAN_BLOCK;
    if rb == 0 || block == 0 {
        blocks.clear();
        return Ok(());
    }
    let whole = rows.len() / rb / SCAN_BLOCK;
    let have = (blocks.len() / block).min(whole);
    blocks.truncate(have * block);
    for b in have..whole {
        let at = blocks.len();
        blocks.resize(at + block, 0);
        let src = &rows[b * SCAN_BLOCK * rb..(b + 1) * SCAN_BLOCK * rb];
        aqpim_pq::transpose_block(src, width, m, SCAN_BLOCK, &mut blocks[at..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_follow_the_rows_as_they_grow_and_shrink() {
        for (width, m) in [
            (CodeWidth::Byte, 8),
            (CodeWidth::Nibble, 6),
            (CodeWidth::Nibble, 5),
        ] {
            let rb = width.row_bytes(m);
            let ksub = 1u32 << width.bits().min(8);
            let codes: Vec<u8> = (0..300 * m)
                .map(|i| ((i * 37 + i / 7) as u32 % ksub) as u8)
                .collect();
            let rows = width.pack(&codes, m).unwrap();
            let mut blocks = Vec::new();
            for tokens in [0, 1, 63, 64, 65, 200, 300, 130, 0, 256] {
                sync(&rows[..tokens * rb], width, m, &mut blocks).unwrap();
                assert_eq!(
                    blocks.len(),
                    tokens / 64 * m * 64,
                    "{width} tokens={tokens}"
                );
                for (b, blk) in blocks.chunks_exact(m * 64).enumerate() {
                    for s in 0..m {
                        for t in 0..64 {
                            assert_eq!(blk[s * 64 + t], codes[(b * 64 + t) * m + s]);
                        }
                    }
                }
            }
        }
    }
}
