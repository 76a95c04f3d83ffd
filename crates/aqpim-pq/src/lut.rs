//! Lookup tables and asymmetric distance computation (ADC) on codes.

use crate::error::{PqError, Result};

/// A query's lookup table: `M * ksub` values, row-major (`T[m][j]` at `m * ksub + j`).
///
/// Scoring a code `c` is `sum_m T[m][c[m]]`: the inner product (or squared
/// distance) between the query and the decoded vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Lut {
    num_subspaces: usize,
    ksub: usize,
    values: Vec<f32>,
}

impl Lut {
    /// Wraps `num_subspaces * ksub` values (`ksub` a power of two up to 256).
    pub fn new(num_subspaces: usize, ksub: usize, values: Vec<f32>) -> Result<Self> {
        if !(ksub.is_power_of_two() && (2..=256).contains(&ksub)) {
            return Err(PqError::OutOfRange {
                name: "ksub",
                value: ksub as u64,
                allowed: "a power of two in 2..=256",
            });
        }
        if values.len() != num_subspaces * ksub {
            return Err(PqError::shape(
                "lookup table",
                num_subspaces * ksub,
                values.len(),
            ));
        }
        Ok(Lut {
            num_subspaces,
            ksub,
            values,
        })
    }

    /// Number of subspaces (M).
    pub fn num_subspaces(&self) -> usize {
        self.num_subspaces
    }
    /// Entries per subspace (ksub).
    pub fn ksub(&self) -> usize {
        self.ksub
    }
    /// The `M * ksub` table values, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Score of one code row (`M` codes), summed in subspace order. Codes
    /// `>= ksub` score NaN, so invalid codes never pass for valid scores.
    pub fn score(&self, codes: &[u8]) -> f32 {
        let mut acc = 0.0f32;
        for (row, &c) in self.values.chunks_exact(self.ksub).zip(codes) {
            acc += row.get(usize::from(c)).copied().unwrap_or(f32::NAN);
        }
        acc
    }

    /// Scores `n` code rows stored one byte per code (`codes`: `n * M` bytes,
    /// row-major) into `out` (`n` values).
    pub fn scan_u8(&self, codes: &[u8], out: &mut [f32]) -> Result<()> {
        let m = self.num_subspaces;
        if m == 0 || codes.len() != out.len() * m {
            return Err(PqError::shape(
                "scan_u8",
                format!("{} codes for {} outputs", out.len() * m, out.len()),
                codes.len(),
            ));
        }
        if self.ksub == 256 {
            #[cfg(target_arch = "x86_64")]
            if m >= 16 && std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F is available (checked above); the table
                // holds `m * 256` values and every index is `< m * 256`.
                unsafe { avx512::scan_u8_gather(&self.values, m, codes, out) };
                return Ok(());
            }
            let rows: Vec<&[f32; 256]> = self
                .values
                .chunks_exact(256)
                .map(|r| r.try_into().expect("rows of 256"))
                .collect();
            scan_u8_full(&rows, codes, out);
        } else {
            for (row, o) in codes.chunks_exact(m).zip(out.iter_mut()) {
                *o = self.score(row);
            }
        }
        Ok(())
    }

    /// Scores `n` rows of packed 4-bit codes (`n * ceil(M / 2)` bytes, see
    /// [`crate::pack_4bit`]) into `out`. Needs `ksub <= 16`. Equal to
    /// [`Lut::score`] bit for bit, except on the AVX-512 gather path
    /// (`M >= 32` with `ceil(M / 2)` not a multiple of 4), which sums in
    /// lane order and so differs from it by float rounding.
    pub fn scan_packed4(&self, packed: &[u8], out: &mut [f32]) -> Result<()> {
        let rows = self.rows16()?;
        let row_bytes = crate::packed_row_bytes(self.num_subspaces);
        if packed.len() != out.len() * row_bytes {
            return Err(PqError::shape(
                "scan_packed4",
                out.len() * row_bytes,
                packed.len(),
            ));
        }
        let m = self.num_subspaces;
        #[cfg(target_arch = "x86_64")]
        if row_bytes.is_multiple_of(4) && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is available (checked above); `rows` holds `m`
            // tables, `packed` holds `out.len()` rows of `row_bytes`, a
            // multiple of 4.
            let done = unsafe { avx512::scan_packed_permute::<4>(&rows, m, packed, out) };
            scan_packed4_rows(&rows, &packed[done * row_bytes..], &mut out[done..]);
            return Ok(());
        }
        #[cfg(target_arch = "x86_64")]
        if m >= 32 && std::arch::is_x86_feature_detected!("avx512f") {
            let flat: Vec<f32> = rows.iter().flatten().copied().collect();
            // SAFETY: AVX-512F is available (checked above); `flat` holds
            // `m * 16` values and every index is `< m * 16`.
            unsafe { avx512::scan_packed4_gather(&flat, m, packed, out) };
            return Ok(());
        }
        scan_packed4_rows(&rows, packed, out);
        Ok(())
    }

    /// Scores `n` rows of packed 2-bit codes (`n * ceil(M / 4)` bytes, see
    /// [`crate::pack_2bit`]) into `out`. Needs `ksub <= 4`. Each row is summed
    /// in subspace order from zero, so its score equals [`Lut::score`] of the
    /// unpacked codes bit for bit (codes `>= ksub` score NaN).
    pub fn scan_packed2(&self, packed: &[u8], out: &mut [f32]) -> Result<()> {
        let rows = self.rows4()?;
        let row_bytes = crate::packed2_row_bytes(self.num_subspaces);
        if packed.len() != out.len() * row_bytes {
            return Err(PqError::shape(
                "scan_packed2",
                out.len() * row_bytes,
                packed.len(),
            ));
        }
        #[cfg(target_arch = "x86_64")]
        if row_bytes.is_multiple_of(4) && std::arch::is_x86_feature_detected!("avx512f") {
            // Each 4-entry table repeated four times: a permute reads the low
            // 4 bits of its index, two code bits and two bits of the next
            // code, and the repetition makes the latter irrelevant.
            let tiled: Vec<[f32; 16]> = rows
                .iter()
                .map(|r| std::array::from_fn(|i| r[i % 4]))
                .collect();
            // SAFETY: AVX-512F is available (checked above); `tiled` holds
            // `m` tables, `packed` holds `out.len()` rows of `row_bytes`, a
            // multiple of 4.
            let done = unsafe {
                avx512::scan_packed_permute::<2>(&tiled, self.num_subspaces, packed, out)
            };
            scan_packed2_rows(&rows, &packed[done * row_bytes..], &mut out[done..]);
            return Ok(());
        }
        scan_packed2_rows(&rows, packed, out);
        Ok(())
    }

    /// The table with each subspace padded to 4 entries (padding is NaN).
    fn rows4(&self) -> Result<Vec<[f32; 4]>> {
        if self.ksub > 4 {
            return Err(PqError::OutOfRange {
                name: "ksub",
                value: self.ksub as u64,
                allowed: "<= 4 for 2-bit codes",
            });
        }
        Ok(self
            .values
            .chunks_exact(self.ksub)
            .map(|r| {
                let mut row = [f32::NAN; 4];
                row[..r.len()].copy_from_slice(r);
                row
            })
            .collect())
    }

    /// The table with each subspace padded to 16 entries (padding is NaN).
    pub(crate) fn rows16(&self) -> Result<Vec<[f32; 16]>> {
        if self.ksub > 16 {
            return Err(PqError::OutOfRange {
                name: "ksub",
                value: self.ksub as u64,
                allowed: "<= 16 for 4-bit codes",
            });
        }
        Ok(self
            .values
            .chunks_exact(self.ksub)
            .map(|r| {
                let mut row = [f32::NAN; 16];
                row[..r.len()].copy_from_slice(r);
                row
            })
            .collect())
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// 8-bit scan with AVX-512 gathers: the 16 lanes are 16 subspaces of one
    /// vector, lane `m` fetching `T[m][code[m]]` at `m * 256 + code[m]`; one
    /// gather does 16 lookups, and a horizontal sum ends each vector. Subspaces
    /// past the last multiple of 16 are added one by one.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `table.len() == m * 256`,
    /// `codes.len() == out.len() * m`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scan_u8_gather(table: &[f32], m: usize, codes: &[u8], out: &mut [f32]) {
        debug_assert_eq!(table.len(), m * 256);
        let m16 = m / 16 * 16;
        let lane_base = _mm512_setr_epi32(
            0, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 2560, 2816, 3072, 3328, 3584,
            3840,
        );
        for (code, o) in codes.chunks_exact(m).zip(out.iter_mut()) {
            let mut acc = _mm512_setzero_ps();
            let mut s = 0;
            while s < m16 {
                // SAFETY: `code[s..s + 16]` is in bounds (`s + 16 <= m16 <= m`).
                let c =
                    _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(code.as_ptr().add(s).cast()) });
                let idx = _mm512_add_epi32(
                    c,
                    _mm512_add_epi32(lane_base, _mm512_set1_epi32((s * 256) as i32)),
                );
                // SAFETY: every index is `(s + lane) * 256 + code < m * 256`.
                acc = _mm512_add_ps(acc, unsafe {
                    _mm512_i32gather_ps::<4>(idx, table.as_ptr())
                });
                s += 16;
            }
            let mut sum = _mm512_reduce_add_ps(acc);
            for (k, &c) in code[m16..].iter().enumerate() {
                sum += table[(m16 + k) * 256 + usize::from(c)];
            }
            *o = sum;
        }
    }

    /// Packed scan of `BITS`-bit codes (4 or 2) with in-register lookups
    /// (faiss's fast-scan idea on exact f32 tables, over the row-major packed
    /// layout): a subspace's table fills one register (16 entries; 4-bit
    /// tables padded with NaN, 2-bit ones repeated four times), and one
    /// permute looks up 16 tokens at once. Each 16-token group gathers its
    /// 4-byte columns (`32 / BITS` subspaces each, `row_bytes` apart), and
    /// the code of subspace `(32 / BITS) k + i` is column `k` shifted right by
    /// `BITS * i` (a permute reads only the low 4 bits of its index). Four
    /// groups run side by side so that their add chains overlap. Each
    /// token's score is summed in subspace order from 0, so it equals
    /// [`super::Lut::score`] bit for bit. Returns the number of tokens scored
    /// (a multiple of 64); the caller scores the rest.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `BITS` is 2 or 4; `tables.len() == m`,
    /// `ceil(m * BITS / 8)` is a multiple of 4, and
    /// `packed.len() == out.len() * ceil(m * BITS / 8)`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scan_packed_permute<const BITS: usize>(
        tables: &[[f32; 16]],
        m: usize,
        packed: &[u8],
        out: &mut [f32],
    ) -> usize {
        const GROUPS: usize = 4;
        const STEP: usize = 16 * GROUPS;
        debug_assert!(BITS == 2 || BITS == 4);
        let per_col = 32 / BITS;
        let row_bytes = (m * BITS).div_ceil(8);
        debug_assert!(row_bytes.is_multiple_of(4));
        debug_assert_eq!(packed.len(), out.len() * row_bytes);
        let tables: Vec<__m512> = tables
            .iter()
            // SAFETY: each table is 16 floats.
            .map(|r| unsafe { _mm512_loadu_ps(r.as_ptr()) })
            .collect();
        let stride = row_bytes as i32;
        let offsets = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(stride),
        );
        let shifts: [__m512i; 16] = std::array::from_fn(|i| _mm512_set1_epi32((BITS * i) as i32));
        let n = out.len() / STEP * STEP;
        let mut t0 = 0;
        while t0 < n {
            // SAFETY: rows `t0 .. t0 + STEP` are in bounds (`t0 + STEP <= n`).
            let base = unsafe { packed.as_ptr().add(t0 * row_bytes) };
            let mut acc = [_mm512_setzero_ps(); GROUPS];
            for k in 0..row_bytes / 4 {
                let cols: [__m512i; GROUPS] = std::array::from_fn(|g| {
                    // SAFETY: lane `t` reads bytes `4k .. 4k + 4` of row
                    // `t0 + 16 g + t`, inside that row (`4k + 4 <= row_bytes`).
                    unsafe {
                        _mm512_i32gather_epi32::<1>(
                            offsets,
                            base.add(g * 16 * row_bytes + 4 * k).cast(),
                        )
                    }
                });
                let s0 = per_col * k;
                for (i, shift) in shifts.iter().enumerate().take(per_col.min(m - s0)) {
                    let table = tables[s0 + i];
                    for (a, &col) in acc.iter_mut().zip(&cols) {
                        let idx = _mm512_srlv_epi32(col, *shift);
                        *a = _mm512_add_ps(*a, _mm512_permutexvar_ps(idx, table));
                    }
                }
            }
            for (g, a) in acc.iter().enumerate() {
                // SAFETY: `out[t0 + 16 g ..][..16]` is in bounds.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(t0 + 16 * g), *a) };
            }
            t0 += STEP;
        }
        n
    }

    /// Packed 4-bit scan with AVX-512 gathers: 16 bytes hold 32 subspaces'
    /// codes; the low nibbles index the even subspaces' 16-entry rows, the high
    /// nibbles the odd ones'. Bytes past the last multiple of 16 are added one
    /// by one.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `table.len() == m * 16`,
    /// `packed.len() == out.len() * ceil(m / 2)`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scan_packed4_gather(
        table: &[f32],
        m: usize,
        packed: &[u8],
        out: &mut [f32],
    ) {
        debug_assert_eq!(table.len(), m * 16);
        let row_bytes = m.div_ceil(2);
        let full = m / 32 * 16; // bytes covered by whole 32-subspace chunks
        let even = _mm512_setr_epi32(
            0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448, 480,
        );
        let odd = _mm512_add_epi32(even, _mm512_set1_epi32(16));
        let low = _mm512_set1_epi32(0x0f);
        for (code, o) in packed.chunks_exact(row_bytes).zip(out.iter_mut()) {
            let mut acc = _mm512_setzero_ps();
            let mut b = 0;
            while b < full {
                // SAFETY: `code[b..b + 16]` is in bounds (`b + 16 <= full <= row_bytes`).
                let w =
                    _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(code.as_ptr().add(b).cast()) });
                let base = _mm512_set1_epi32((b * 32) as i32);
                let lo = _mm512_add_epi32(_mm512_and_si512(w, low), _mm512_add_epi32(even, base));
                let hi = _mm512_add_epi32(_mm512_srli_epi32::<4>(w), _mm512_add_epi32(odd, base));
                // SAFETY: subspace `2 (b + lane) (+1) < m`, so every index is `< m * 16`.
                acc = _mm512_add_ps(acc, unsafe { _mm512_i32gather_ps::<4>(lo, table.as_ptr()) });
                // SAFETY: as above, for the odd subspaces.
                acc = _mm512_add_ps(acc, unsafe { _mm512_i32gather_ps::<4>(hi, table.as_ptr()) });
                b += 16;
            }
            let mut sum = _mm512_reduce_add_ps(acc);
            for (i, &byte) in code.iter().enumerate().skip(full) {
                sum += table[2 * i * 16 + usize::from(byte & 0x0f)];
                if 2 * i + 1 < m {
                    sum += table[(2 * i + 1) * 16 + usize::from(byte >> 4)];
                }
            }
            *o = sum;
        }
    }
}

/// Packed 4-bit scan, one row at a time, summed in subspace order (the
/// portable path, and the tail of the vector one). `rows` holds the `M`
/// tables padded to 16 entries.
fn scan_packed4_rows(rows: &[[f32; 16]], packed: &[u8], out: &mut [f32]) {
    let m = rows.len();
    let row_bytes = m.div_ceil(2);
    if row_bytes == 0 {
        return;
    }
    for (codes, o) in packed.chunks_exact(row_bytes).zip(out.iter_mut()) {
        let mut acc = 0.0f32;
        for (i, &b) in codes.iter().enumerate() {
            acc += rows[2 * i][usize::from(b & 0x0f)];
            if 2 * i + 1 < m {
                acc += rows[2 * i + 1][usize::from(b >> 4)];
            }
        }
        *o = acc;
    }
}

/// Packed 2-bit scan, one row at a time, summed in subspace order (the
/// portable path, and the tail of the vector one). `rows` holds the `M`
/// tables padded to 4 entries.
fn scan_packed2_rows(rows: &[[f32; 4]], packed: &[u8], out: &mut [f32]) {
    let m = rows.len();
    let row_bytes = m.div_ceil(4);
    if row_bytes == 0 {
        return;
    }
    let (whole, rest) = rows.as_chunks::<4>();
    for (codes, o) in packed.chunks_exact(row_bytes).zip(out.iter_mut()) {
        let mut acc = 0.0f32;
        for (r, &b) in whole.iter().zip(codes) {
            let b = usize::from(b);
            acc += r[0][b & 3];
            acc += r[1][(b >> 2) & 3];
            acc += r[2][(b >> 4) & 3];
            acc += r[3][b >> 6];
        }
        if let Some(&b) = codes.get(whole.len()) {
            for (j, r) in rest.iter().enumerate() {
                acc += r[usize::from(b >> (2 * j)) & 3];
            }
        }
        *o = acc;
    }
}

/// 8-bit scan. Codes are read eight at a time as one little-endian `u64` and
/// split with shifts (one load instead of eight), four independent accumulators
/// break the add chain, and `u8` codes index `[f32; 256]` rows without bounds
/// checks.
fn scan_u8_full(rows: &[&[f32; 256]], codes: &[u8], out: &mut [f32]) {
    let m = rows.len();
    let m8 = m / 8 * 8;
    for (code, o) in codes.chunks_exact(m).zip(out.iter_mut()) {
        let mut a = [0.0f32; 4];
        for (r, c) in rows[..m8].chunks_exact(8).zip(code[..m8].chunks_exact(8)) {
            let w = u64::from_le_bytes(c.try_into().expect("8 codes"));
            let at = |s: u32| usize::from((w >> s) as u8);
            a[0] += r[0][at(0)];
            a[1] += r[1][at(8)];
            a[2] += r[2][at(16)];
            a[3] += r[3][at(24)];
            a[0] += r[4][at(32)];
            a[1] += r[5][at(40)];
            a[2] += r[6][at(48)];
            a[3] += r[7][at(56)];
        }
        for (r, &c) in rows[m8..].iter().zip(&code[m8..]) {
            a[0] += r[usize::from(c)];
        }
        *o = (a[0] + a[1]) + (a[2] + a[3]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_u8_scan_path_equals_row_scores() {
        for (m, n) in [1usize, 7, 8, 15, 16, 17, 32, 33, 40]
            .into_iter()
            .flat_map(|m| [0usize, 5, 16, 23, 40].map(|n| (m, n)))
        {
            let vals: Vec<f32> = (0..m * 256)
                .map(|i| ((i * 7919 % 1009) as f32 - 500.0) / 64.0)
                .collect();
            let lut = Lut::new(m, 256, vals).unwrap();
            let codes: Vec<u8> = (0..n * m).map(|i| (i * 151 % 256) as u8).collect();
            let want: Vec<f32> = codes.chunks_exact(m).map(|c| lut.score(c)).collect();
            let mut out = vec![0f32; n];
            lut.scan_u8(&codes, &mut out).unwrap();
            let rows: Vec<&[f32; 256]> = lut
                .values
                .chunks_exact(256)
                .map(|r| r.try_into().unwrap())
                .collect();
            let mut portable = vec![0f32; n];
            scan_u8_full(&rows, &codes, &mut portable);
            for i in 0..n {
                assert!(
                    (out[i] - want[i]).abs() <= 1e-4 * (1.0 + want[i].abs()),
                    "m={m} i={i}"
                );
                assert!(
                    (portable[i] - want[i]).abs() <= 1e-4 * (1.0 + want[i].abs()),
                    "m={m} i={i}"
                );
            }
        }
    }

    /// A scan of packed rows into scores.
    type PackedScan = fn(&Lut, &[u8], &mut [f32]) -> crate::Result<()>;
    /// The portable scan of the same rows.
    type PortableScan = fn(&Lut, &[u8], &mut [f32]);

    /// Scores `n` deterministic rows of `m` codes below `ksub` with the
    /// packed scan (`scan`) and the portable one (`portable`), and checks
    /// both against `Lut::score` bit for bit.
    fn check_packed_scan(
        m: usize,
        n: usize,
        ksub: usize,
        pack: fn(&[u8], usize) -> crate::Result<Vec<u8>>,
        scan: PackedScan,
        portable: PortableScan,
    ) {
        let vals: Vec<f32> = (0..m * ksub)
            .map(|i| ((i * 7919 % 1009) as f32 - 500.0) / 64.0)
            .collect();
        let lut = Lut::new(m, ksub, vals).unwrap();
        let codes: Vec<u8> = (0..n * m).map(|i| (i * 151 % ksub) as u8).collect();
        let packed = pack(&codes, m).unwrap();
        let want: Vec<f32> = codes.chunks_exact(m).map(|c| lut.score(c)).collect();
        let mut out = vec![0f32; n];
        scan(&lut, &packed, &mut out).unwrap();
        let mut rows = vec![0f32; n];
        portable(&lut, &packed, &mut rows);
        for i in 0..n {
            assert_eq!(out[i].to_bits(), want[i].to_bits(), "m={m} n={n} i={i}");
            assert_eq!(rows[i].to_bits(), want[i].to_bits(), "m={m} n={n} i={i}");
        }
    }

    #[test]
    fn every_packed4_scan_path_equals_row_scores_bit_for_bit() {
        for (m, n) in [1usize, 7, 8, 9, 15, 16, 24, 31, 32, 33, 40, 64]
            .into_iter()
            .flat_map(|m| [0usize, 5, 63, 64, 65, 130].map(|n| (m, n)))
        {
            check_packed_scan(m, n, 16, crate::pack_4bit, Lut::scan_packed4, |l, p, o| {
                scan_packed4_rows(&l.rows16().unwrap(), p, o)
            });
        }
        // Codes past ksub score NaN on the vector path too.
        let lut = Lut::new(8, 4, vec![1.0; 32]).unwrap();
        let mut codes = vec![1u8; 64 * 8];
        codes[3 * 8 + 5] = 9;
        let packed = crate::pack_4bit(&codes, 8).unwrap();
        let mut out = vec![0f32; 64];
        lut.scan_packed4(&packed, &mut out).unwrap();
        assert!(out[3].is_nan());
        assert!(out.iter().enumerate().all(|(i, v)| i == 3 || *v == 8.0));
    }

    #[test]
    fn every_packed2_scan_path_equals_row_scores_bit_for_bit() {
        for (m, n, ksub) in [1usize, 3, 4, 5, 6, 7, 15, 16, 17, 32, 64, 65, 127, 128, 130]
            .into_iter()
            .flat_map(|m| [0usize, 5, 63, 64, 65, 130].map(|n| (m, n)))
            .flat_map(|(m, n)| [2usize, 4].map(|k| (m, n, k)))
        {
            check_packed_scan(
                m,
                n,
                ksub,
                crate::pack_2bit,
                Lut::scan_packed2,
                |l, p, o| scan_packed2_rows(&l.rows4().unwrap(), p, o),
            );
        }
        // Codes past ksub (nbits = 1) score NaN on the vector path too.
        let lut = Lut::new(16, 2, vec![1.0; 32]).unwrap();
        let mut codes = vec![1u8; 64 * 16];
        codes[3 * 16 + 5] = 3;
        let packed = crate::pack_2bit(&codes, 16).unwrap();
        let mut out = vec![0f32; 64];
        lut.scan_packed2(&packed, &mut out).unwrap();
        assert!(out[3].is_nan());
        assert!(out.iter().enumerate().all(|(i, v)| i == 3 || *v == 16.0));
        // Shapes and table widths are checked.
        assert!(lut.scan_packed2(&packed[1..], &mut out).is_err());
        let wide = Lut::new(4, 8, vec![0.0; 32]).unwrap();
        assert!(wide.scan_packed2(&[0], &mut out[..1]).is_err());
    }

    #[test]
    fn invalid_codes_score_nan_and_shapes_are_checked() {
        let lut = Lut::new(2, 4, vec![1.0; 8]).unwrap();
        assert!(lut.score(&[0, 9]).is_nan());
        let mut out = [0f32; 2];
        assert!(lut.scan_u8(&[0, 1, 2], &mut out).is_err());
        assert!(Lut::new(2, 3, vec![0.0; 6]).is_err());
        assert!(Lut::new(2, 4, vec![0.0; 7]).is_err());
        let wide = Lut::new(1, 32, vec![0.0; 32]).unwrap();
        assert!(wide.scan_packed4(&[0], &mut out[..1]).is_err());
    }
}
