//! Blocked layout of 4-bit codes for fast scanning with in-register lookups.
//!
//! Layout: vectors are grouped in blocks of [`FastScanCodes::BLOCK`] = 16.
//! A block holds `ceil(M / 2)` groups of 16 bytes; in group `p`, byte `t`
//! is `code[t][2p] | code[t][2p + 1] << 4` for vector `t` of the block. The
//! last block is padded with zero codes, whose scores are never returned.
//!
//! With AVX-512 a 16-entry table of one subspace fits one register, and one
//! permute looks up 16 vectors' codes at once (faiss's fast-scan idea, on
//! exact f32 tables instead of 8-bit quantized ones). Scores are summed in
//! subspace order, so they equal [`Lut::score`] bit for bit.

use crate::error::{PqError, Result};
use crate::lut::Lut;

/// 4-bit codes in the blocked fast-scan layout (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastScanCodes {
    num_subspaces: usize,
    len: usize,
    blocks: Vec<u8>,
}

impl FastScanCodes {
    /// Vectors per block.
    pub const BLOCK: usize = 16;

    /// An empty store for codes of `M` subspaces.
    pub fn new(num_subspaces: usize) -> Self {
        FastScanCodes {
            num_subspaces,
            len: 0,
            blocks: Vec::new(),
        }
    }

    /// Builds the layout from `n * M` codes, one per byte, each `< 16`.
    pub fn from_codes(codes: &[u8], num_subspaces: usize) -> Result<Self> {
        if num_subspaces == 0 || !codes.len().is_multiple_of(num_subspaces) {
            return Err(PqError::shape(
                "FastScanCodes",
                format!("a multiple of M = {num_subspaces} codes"),
                codes.len(),
            ));
        }
        let mut s = Self::new(num_subspaces);
        for row in codes.chunks_exact(num_subspaces) {
            s.push(row)?;
        }
        Ok(s)
    }

    fn block_bytes(&self) -> usize {
        Self::BLOCK * self.num_subspaces.div_ceil(2)
    }

    /// Appends one vector's `M` codes.
    pub fn push(&mut self, codes: &[u8]) -> Result<()> {
        if codes.len() != self.num_subspaces {
            return Err(PqError::shape(
                "FastScanCodes::push",
                self.num_subspaces,
                codes.len(),
            ));
        }
        if let Some(m) = codes.iter().position(|&c| c >= 16) {
            return Err(PqError::CodeOutOfRange {
                row: self.len,
                subspace: m,
                code: codes[m],
                ksub: 16,
            });
        }
        let t = self.len % Self::BLOCK;
        if t == 0 {
            self.blocks
                .resize(self.blocks.len() + self.block_bytes(), 0);
        }
        let base = self.blocks.len() - self.block_bytes();
        for (p, pair) in codes.chunks(2).enumerate() {
            self.blocks[base + p * Self::BLOCK + t] = pair[0] | pair.get(1).map_or(0, |hi| hi << 4);
        }
        self.len += 1;
        Ok(())
    }

    /// Number of vectors stored.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no vector is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Number of subspaces (M).
    pub fn num_subspaces(&self) -> usize {
        self.num_subspaces
    }
    /// The raw blocked bytes (`ceil(n / 16) * 16 * ceil(M / 2)`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.blocks
    }

    /// Code of vector `i` in subspace `m`.
    pub fn code(&self, i: usize, m: usize) -> u8 {
        let b = self.blocks
            [(i / Self::BLOCK) * self.block_bytes() + (m / 2) * Self::BLOCK + i % Self::BLOCK];
        if m.is_multiple_of(2) {
            b & 0x0f
        } else {
            b >> 4
        }
    }

    /// Scores every stored vector against `lut` (`ksub <= 16`, same `M`) into
    /// `out` (`len()` values).
    pub fn scan(&self, lut: &Lut, out: &mut [f32]) -> Result<()> {
        if lut.num_subspaces() != self.num_subspaces {
            return Err(PqError::shape(
                "FastScanCodes::scan table",
                self.num_subspaces,
                lut.num_subspaces(),
            ));
        }
        if out.len() != self.len {
            return Err(PqError::shape(
                "FastScanCodes::scan output",
                self.len,
                out.len(),
            ));
        }
        let rows = lut.rows16()?;
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is available (checked above), the only
            // feature `avx512::scan` enables.
            unsafe { avx512::scan(self, &rows, out) };
            return Ok(());
        }
        self.scan_portable(&rows, out);
        Ok(())
    }

    fn scan_portable(&self, rows: &[[f32; 16]], out: &mut [f32]) {
        let m = self.num_subspaces;
        for (b, block) in self.blocks.chunks_exact(self.block_bytes()).enumerate() {
            let mut acc = [0.0f32; Self::BLOCK];
            for (p, group) in block.chunks_exact(Self::BLOCK).enumerate() {
                for (a, &byte) in acc.iter_mut().zip(group) {
                    *a += rows[2 * p][usize::from(byte & 0x0f)];
                }
                if 2 * p + 1 < m {
                    for (a, &byte) in acc.iter_mut().zip(group) {
                        *a += rows[2 * p + 1][usize::from(byte >> 4)];
                    }
                }
            }
            let start = b * Self::BLOCK;
            let end = (start + Self::BLOCK).min(self.len);
            out[start..end].copy_from_slice(&acc[..end - start]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::FastScanCodes;
    use std::arch::x86_64::*;

    /// [`FastScanCodes::scan`] with AVX-512: 16 tokens per block, each
    /// subspace's 16-entry table in one register. A safe `#[target_feature]`
    /// function: code compiled without AVX-512F calls it only after
    /// checking for it at run time (its `unsafe` call site). `out` shorter
    /// than `codes.len()` panics.
    #[target_feature(enable = "avx512f")]
    pub(super) fn scan(codes: &FastScanCodes, rows: &[[f32; 16]], out: &mut [f32]) {
        let m = codes.num_subspaces;
        let bb = codes.block_bytes();
        let low = _mm512_set1_epi32(0x0f);
        let tables: Vec<__m512> = rows
            .iter()
            // SAFETY: each row is exactly 16 f32 values, one unaligned load.
            .map(|r| unsafe { _mm512_loadu_ps(r.as_ptr()) })
            .collect();
        let mut tmp = [0.0f32; 16];
        for (b, block) in codes.blocks.chunks_exact(bb).enumerate() {
            let mut acc = _mm512_setzero_ps();
            for (p, group) in block.chunks_exact(16).enumerate() {
                // SAFETY: `group` is exactly 16 bytes.
                let bytes = unsafe { _mm_loadu_si128(group.as_ptr().cast()) };
                let wide = _mm512_cvtepu8_epi32(bytes);
                let lo = _mm512_and_si512(wide, low);
                acc = _mm512_add_ps(acc, _mm512_permutexvar_ps(lo, tables[2 * p]));
                if 2 * p + 1 < m {
                    let hi = _mm512_srli_epi32::<4>(wide);
                    acc = _mm512_add_ps(acc, _mm512_permutexvar_ps(hi, tables[2 * p + 1]));
                }
            }
            let start = b * 16;
            let end = (start + 16).min(codes.len);
            if end - start == 16 {
                let dst = &mut out[start..start + 16];
                // SAFETY: `dst` holds exactly 16 writable f32 values.
                unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), acc) };
            } else {
                // SAFETY: `tmp` holds exactly 16 f32 values.
                unsafe { _mm512_storeu_ps(tmp.as_mut_ptr(), acc) };
                out[start..end].copy_from_slice(&tmp[..end - start]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_equals_row_scores_bit_for_bit() {
        for m in [1usize, 2, 3, 7, 32] {
            for n in [0usize, 1, 15, 16, 17, 40] {
                let codes: Vec<u8> = (0..n * m).map(|i| ((i * 13 + i / 7) % 16) as u8).collect();
                let vals: Vec<f32> = (0..m * 16)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                    .collect();
                let lut = Lut::new(m, 16, vals).unwrap();
                let fs = FastScanCodes::from_codes(&codes, m).unwrap();
                let mut out = vec![0f32; n];
                fs.scan(&lut, &mut out).unwrap();
                let mut portable = vec![0f32; n];
                fs.scan_portable(&lut.rows16().unwrap(), &mut portable);
                for i in 0..n {
                    let want = lut.score(&codes[i * m..(i + 1) * m]);
                    assert_eq!(out[i].to_bits(), want.to_bits(), "m={m} n={n} i={i}");
                    assert_eq!(portable[i].to_bits(), want.to_bits());
                    for s in 0..m {
                        assert_eq!(fs.code(i, s), codes[i * m + s]);
                    }
                }
            }
        }
    }
}
