//! Per-centroid value bins `W[m][j] = sum_{t: vcode_t[m] = j} p_t` (the
//! paper's `HISTACC`), their folding for packed 4-bit codes, and the bins
//! times the value codebook: the value side of the exact kernel, and of the
//! fast kernels for the code widths they do not weigh directly.

use aqpim_pq::ProductQuantizer;

use crate::error::Result;

/// `W[m][code_t[m]] += p_t` for one-byte codes with `ksub = 256`
/// (`bins`: `M x 256`, flat). Each subspace's row is a `[f32; 256]`, so a
/// byte code indexes it without a bounds check; tokens go in order, so
/// every bin receives its additions in token order. (A 16-lane AVX-512
/// gather/add/scatter version was no faster on the project machine, 0-15 %
/// slower in isolation: a scatter costs about as much as the 16 scalar
/// stores it replaces.)
pub fn histogram_u8_full(codes: &[u8], m: usize, weights: &[f32], bins: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is available (checked above).
        unsafe { histogram_u8_full_vex(codes, m, weights, bins) };
        return;
    }
    histogram_u8_full_body(codes, m, weights, bins);
}

/// The same loop compiled with VEX-encoded scalar instructions, which do not
/// stall when the vector kernels before it leave the upper register halves
/// in use.
///
/// A safe `#[target_feature]` function: code compiled without AVX2
/// calls it only after checking for it at run time (its `unsafe` call site).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn histogram_u8_full_vex(codes: &[u8], m: usize, weights: &[f32], bins: &mut [f32]) {
    histogram_u8_full_body(codes, m, weights, bins);
}

#[inline(always)]
fn histogram_u8_full_body(codes: &[u8], m: usize, weights: &[f32], bins: &mut [f32]) {
    if m == 0 {
        return;
    }
    let (rows, _) = bins.as_chunks_mut::<256>();
    let keep = m.min(rows.len());
    let rows = &mut rows[..keep];
    for (code, &p) in codes.chunks_exact(m).zip(weights) {
        for (row, &c) in rows.iter_mut().zip(code) {
            row[usize::from(c)] += p;
        }
    }
}

/// `W[m][code_t[m]] += p_t` for one-byte codes with `ksub < 256` (codes were
/// validated by the store; an out-of-range code is skipped, never a panic).
pub fn histogram_u8(codes: &[u8], m: usize, ksub: usize, weights: &[f32], bins: &mut [f32]) {
    for (row, &p) in codes.chunks_exact(m).zip(weights) {
        for (bin_row, &c) in bins.chunks_exact_mut(ksub).zip(row) {
            if let Some(b) = bin_row.get_mut(usize::from(c)) {
                *b += p;
            }
        }
    }
}

/// Folds byte bins of packed 4-bit codes into per-subspace bins: byte `b`
/// holds subspace `2b`'s code in its low nibble and `2b + 1`'s in its high
/// nibble, so `W[2b][lo] += sum_hi P[b][hi * 16 + lo]` and
/// `W[2b + 1][hi] += sum_lo P[b][hi * 16 + lo]` (`pairs`: `ceil(M / 2) x 256`,
/// `bins`: `M x ksub`, `ksub <= 16`). Nibbles past `ksub` (never written for
/// validated codes) are ignored.
pub fn fold_pair_bins(pairs: &[f32], m: usize, ksub: usize, bins: &mut [f32]) {
    let ksub = ksub.min(16);
    if ksub == 0 {
        return;
    }
    let (rows, _) = pairs.as_chunks::<256>();
    let mut subspaces = bins.chunks_exact_mut(ksub);
    for pair in rows.iter().take(m.div_ceil(2)) {
        let grid: &[[f32; 16]; 16] = pair.as_chunks::<16>().0.try_into().expect("256 = 16 x 16");
        if let Some(even) = subspaces.next() {
            for row in &grid[..ksub] {
                for (w, &v) in even.iter_mut().zip(row) {
                    *w += v;
                }
            }
        }
        if let Some(odd) = subspaces.next() {
            for (w, row) in odd.iter_mut().zip(&grid[..ksub]) {
                *w += row[..ksub].iter().sum::<f32>();
            }
        }
    }
}

/// `W[m][code_t[m]] += p_t` for packed 4-bit codes (`ksub <= 16`; bins rows of
/// `ksub`, codes validated by the store): the direct loop, which the kernel
/// replaces by byte bins and [`fold_pair_bins`].
pub fn histogram_packed4(codes: &[u8], m: usize, weights: &[f32], bins: &mut [f32]) {
    let ksub = bins.len() / m;
    let row_bytes = m.div_ceil(2);
    for (row, &p) in codes.chunks_exact(row_bytes).zip(weights) {
        for (i, &byte) in row.iter().enumerate() {
            if let Some(b) = bins.get_mut(2 * i * ksub + usize::from(byte & 0x0f)) {
                *b += p;
            }
            if 2 * i + 1 < m {
                if let Some(b) = bins.get_mut((2 * i + 1) * ksub + usize::from(byte >> 4)) {
                    *b += p;
                }
            }
        }
    }
}

/// `W[m][code_t[m]] += p_t` for packed 2-bit codes (`ceil(M / 4)` bytes a
/// token, subspace `4i + j` in bits `2j .. 2j + 2` of byte `i`; bins rows of
/// `ksub <= 4`). Every bin receives its additions in token order, as with
/// one-byte codes ([`histogram_u8`]), so both layouts give the same bins bit
/// for bit. Codes were validated by the store; one past `ksub` is skipped,
/// never a panic.
///
/// With AVX-512, groups of 16 subspaces keep their bins in registers (one
/// register per code value, a lane per subspace) and each token adds its
/// weight under a mask of the lanes whose code matches. Scattered scalar
/// updates of so few bins stall instead: consecutive tokens often hit the
/// same bin, and each load waits for (or is replayed after) the store
/// before it, about 5x slower on the project machine for `M = 128`.
pub fn histogram_packed2(codes: &[u8], m: usize, ksub: usize, weights: &[f32], bins: &mut [f32]) {
    let row_bytes = m.div_ceil(4);
    if row_bytes == 0 || ksub == 0 {
        return;
    }
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if m >= 16 && bins.len() >= m * ksub && std::arch::is_x86_feature_detected!("avx512f") {
        match ksub {
            // SAFETY: AVX-512F is available (checked above).
            2 => unsafe { histogram_packed2_avx512::<2>(codes, m, weights, bins) },
            // SAFETY: as above.
            4 => unsafe { histogram_packed2_avx512::<4>(codes, m, weights, bins) },
            _ => {}
        }
        if ksub == 2 || ksub == 4 {
            done = m / 16 * 16;
        }
    }
    // The subspaces past the vector groups (all of them without AVX-512).
    for (code, &p) in codes.chunks_exact(row_bytes).zip(weights) {
        for (s, row) in bins.chunks_exact_mut(ksub).enumerate().take(m).skip(done) {
            if let Some(b) = row.get_mut(usize::from(code[s / 4] >> (2 * (s % 4))) & 3) {
                *b += p;
            }
        }
    }
}

/// The vector part of [`histogram_packed2`] for `KSUB` (2 or 4) bins a
/// subspace: subspaces `0 .. M / 16 * 16`, 16 at a time (bytes
/// `4g .. 4g + 4` of each row hold group `g`'s codes). Each lane adds the
/// weights of the tokens whose code matches, in token order, with the same
/// f32 additions as the scalar loop; the `KSUB` accumulators stay in
/// registers (a constant count, so that the loops unroll).
///
/// A safe `#[target_feature]` function: code compiled without AVX-512F
/// calls it only after checking for it at run time (its `unsafe` call site).
/// Needs `bins.len() >= M * KSUB`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn histogram_packed2_avx512<const KSUB: usize>(
    codes: &[u8],
    m: usize,
    weights: &[f32],
    bins: &mut [f32],
) {
    use std::arch::x86_64::*;
    let row_bytes = m.div_ceil(4);
    let shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let three = _mm512_set1_epi32(3);
    let values: [__m512i; KSUB] = std::array::from_fn(|c| _mm512_set1_epi32(c as i32));
    for g in 0..m / 16 {
        let lane = |i: usize, c: usize| (16 * g + i) * KSUB + c;
        let mut acc: [__m512; KSUB] = std::array::from_fn(|c| {
            let v: [f32; 16] = std::array::from_fn(|i| bins[lane(i, c)]);
            // SAFETY: `v` holds 16 floats.
            unsafe { _mm512_loadu_ps(v.as_ptr()) }
        });
        for (row, &p) in codes.chunks_exact(row_bytes).zip(weights) {
            // `16 (g + 1) <= M`, so `4g + 4 <= ceil(M / 4)`: inside the row.
            let w =
                u32::from_le_bytes([row[4 * g], row[4 * g + 1], row[4 * g + 2], row[4 * g + 3]]);
            let code = _mm512_and_si512(
                _mm512_srlv_epi32(_mm512_set1_epi32(w as i32), shifts),
                three,
            );
            let pv = _mm512_set1_ps(p);
            for c in 0..KSUB {
                let hit = _mm512_cmpeq_epi32_mask(code, values[c]);
                acc[c] = _mm512_mask_add_ps(acc[c], hit, acc[c], pv);
            }
        }
        for (c, a) in acc.iter().enumerate() {
            let mut v = [0f32; 16];
            // SAFETY: `v` holds 16 floats.
            unsafe { _mm512_storeu_ps(v.as_mut_ptr(), *a) };
            for (i, x) in v.into_iter().enumerate() {
                bins[lane(i, c)] = x;
            }
        }
    }
}

/// `o[m * dsub + j] += sum_c W[m][c] C_V[m][c][j]`: the bins times the value
/// codebook, subspace by subspace (bins: `M x ksub`, `o`: `M x dsub`).
pub fn add_bins_times_codebook(bins: &[f32], vpq: &ProductQuantizer, o: &mut [f32]) -> Result<()> {
    let (ksub, dsub) = (vpq.params().ksub(), vpq.params().dsub());
    for (m, (w, om)) in bins
        .chunks_exact(ksub)
        .zip(o.chunks_exact_mut(dsub))
        .enumerate()
    {
        vpq.add_weighted_centroids(m, w, om)?;
    }
    Ok(())
}

#[cfg(test)]
mod histogram_tests {
    use rand::{Rng, SeedableRng};

    use super::{
        fold_pair_bins, histogram_packed2, histogram_packed4, histogram_u8, histogram_u8_full,
    };

    #[test]
    fn histogram_equals_the_indexed_loop_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for m in [1, 15, 16, 32, 48, 64] {
            for tokens in [0, 1, 17, 300] {
                // Few distinct codes: repeated bins across consecutive tokens.
                let codes: Vec<u8> = (0..tokens * m)
                    .map(|_| rng.gen_range(0..4u8) * 61)
                    .collect();
                let weights: Vec<f32> = (0..tokens).map(|_| rng.gen_range(0.0f32..1.0)).collect();
                let mut a = vec![0.5f32; m * 256];
                let mut b = a.clone();
                histogram_u8_full(&codes, m, &weights, &mut a);
                for (row, &p) in codes.chunks_exact(m).zip(&weights) {
                    for (j, &c) in row.iter().enumerate() {
                        b[j * 256 + usize::from(c)] += p;
                    }
                }
                assert!(
                    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "m={m} tokens={tokens}"
                );
            }
        }
    }

    #[test]
    fn packed2_histogram_equals_one_byte_codes_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        for m in [1, 2, 3, 4, 5, 7, 8, 31, 32, 128] {
            for ksub in [2, 4] {
                for tokens in [0, 1, 17, 300] {
                    let codes: Vec<u8> = (0..tokens * m)
                        .map(|_| rng.gen_range(0..ksub as u8))
                        .collect();
                    let packed = aqpim_pq::pack_2bit(&codes, m).unwrap();
                    // Arbitrary weights: the order of additions must match.
                    let weights: Vec<f32> =
                        (0..tokens).map(|_| rng.gen_range(0.0f32..1.0)).collect();
                    let mut a = vec![0.25f32; m * ksub];
                    let mut b = a.clone();
                    histogram_packed2(&packed, m, ksub, &weights, &mut a);
                    histogram_u8(&codes, m, ksub, &weights, &mut b);
                    assert!(
                        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "m={m} ksub={ksub} tokens={tokens}"
                    );
                }
            }
        }
        // A code past ksub (3 with ksub = 2) is skipped, not a panic.
        let mut bins = vec![0f32; 4];
        histogram_packed2(&[0b11_01], 2, 2, &[1.0], &mut bins);
        assert_eq!(bins, [0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn byte_bins_folded_equal_the_packed_histogram() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for m in [1, 2, 7, 8, 31, 32] {
            for ksub in [2, 4, 16] {
                let tokens = 300;
                let codes: Vec<u8> = (0..tokens * m)
                    .map(|_| rng.gen_range(0..ksub as u8))
                    .collect();
                let packed = aqpim_pq::pack_4bit(&codes, m).unwrap();
                // Weights that are multiples of 2^-10: every sum is exact, so
                // the two orders of addition agree bit for bit.
                let weights: Vec<f32> = (0..tokens)
                    .map(|_| f32::from(rng.gen_range(0..1024u16)) / 1024.0)
                    .collect();
                let mut direct = vec![0f32; m * ksub];
                histogram_packed4(&packed, m, &weights, &mut direct);
                let row_bytes = m.div_ceil(2);
                let mut pairs = vec![0f32; row_bytes * 256];
                histogram_u8_full(&packed, row_bytes, &weights, &mut pairs);
                let mut folded = vec![0f32; m * ksub];
                fold_pair_bins(&pairs, m, ksub, &mut folded);
                assert_eq!(folded, direct, "m={m} ksub={ksub}");
            }
        }
    }
}
