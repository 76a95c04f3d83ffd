//! Decode attention directly on PQ codes.
//!
//! For each query head (already scaled by `1 / sqrt(d)`):
//!
//! 1. the FP16 sink tokens stream through the shared full-precision path;
//! 2. the encoded tokens, in blocks: scores `sum_m LUT[m][kcode_t[m]]` from the
//!    query's lookup table (`M x ksub`, built once per query head), softmax
//!    weights against the running maximum, and the weights added into
//!    per-centroid bins `W[m][vcode_t[m]]` (`M x ksub`);
//! 3. the FP16 recent tokens, through the full-precision path;
//! 4. `o = (o_fp + sum_m W[m] x C_V[m]) / sum`, with `C_V[m]` the value
//!    codebook of subspace `m` (`ksub x dsub`).
//!
//! Codes are read once; nothing is decoded. Blocks of codes are shared by the
//! query heads of a group while they are in cache.

use aqpim_kvcache::{Codes, KvStore, PqHeadView, PqStore};
use aqpim_pq::{Lut, ProductQuantizer};

use crate::dense::{finish, fp_tokens, Acc, Scratch, BLOCK};
use crate::error::{AttnError, Result};

/// Decode attention over a PQ cache for one layer: `queries` holds `H x d`,
/// `out` receives `H x d` (query head `h` reads KV head `h / (H / G)`).
/// Parallel over KV heads.
pub fn attend_pq(store: &PqStore, layer: usize, queries: &[f32], out: &mut [f32]) -> Result<()> {
    crate::layer::for_each_group(
        store.shape(),
        layer,
        store.num_tokens(layer)?,
        queries,
        out,
        |g, qs, outs| pq_head_attention(&store.head(layer, g)?, qs, outs),
    )
}

/// Attention of a group of query heads (`queries`: `g x d`, already scaled)
/// over one PQ head view, into `out` (`g x d`).
pub fn pq_head_attention(view: &PqHeadView<'_>, queries: &[f32], out: &mut [f32]) -> Result<()> {
    let d = view.sink_keys.head_dim();
    if queries.len() != out.len() || !queries.len().is_multiple_of(d) || queries.is_empty() {
        return Err(AttnError::shape(
            "pq_head_attention",
            format!("g x {d} queries and outputs"),
            format!("{} and {}", queries.len(), out.len()),
        ));
    }
    let encoded = view.key_codes.tokens();
    let codebooks = match (view.key_codebook, view.value_codebook) {
        (Some(k), Some(v)) if encoded > 0 => Some((k, v)),
        (_, _) if encoded > 0 => {
            return Err(AttnError::Unsupported(
                "PQ head with codes but no codebooks",
            ))
        }
        _ => None,
    };
    let bins = codebooks.map_or(0, |(_, v)| v.params().num_subspaces() * v.params().ksub());
    let mut accs = vec![Acc::new(d, bins); queries.len() / d];
    let mut scratch = Scratch::default();

    fp_tokens(
        queries,
        view.sink_keys,
        view.sink_values,
        &mut accs,
        &mut scratch,
    );
    if let Some((kpq, vpq)) = codebooks {
        let luts = queries
            .chunks_exact(d)
            .map(|q| kpq.inner_product_table(q))
            .collect::<Result<Vec<Lut>, _>>()?;
        encoded_tokens(
            &luts,
            view.key_codes,
            view.value_codes,
            vpq.params().ksub(),
            &mut accs,
            &mut scratch,
        )?;
    }
    fp_tokens(
        queries,
        view.recent_keys,
        view.recent_values,
        &mut accs,
        &mut scratch,
    );

    if let Some((_, vpq)) = codebooks {
        for acc in &mut accs {
            add_bins_times_codebook(&acc.w, vpq, &mut acc.o);
        }
    }
    finish(&accs, out);
    Ok(())
}

/// Streams the encoded tokens block by block: scores from the lookup tables,
/// online softmax, weights into per-centroid bins.
fn encoded_tokens(
    luts: &[Lut],
    kcodes: Codes<'_>,
    vcodes: Codes<'_>,
    ksub_v: usize,
    accs: &mut [Acc],
    scratch: &mut Scratch,
) -> Result<()> {
    let n = kcodes.tokens();
    let (kb, vb) = (kcodes.row_bytes(), vcodes.row_bytes());
    scratch.scores.resize(BLOCK, 0.0);
    let mut start = 0;
    while start < n {
        let b = BLOCK.min(n - start);
        let kblock = &kcodes.data()[start * kb..(start + b) * kb];
        let vblock = &vcodes.data()[start * vb..(start + b) * vb];
        for (lut, acc) in luts.iter().zip(accs.iter_mut()) {
            let scores = &mut scratch.scores[..b];
            if kcodes.is_packed() {
                lut.scan_packed4(kblock, scores)?;
            } else {
                lut.scan_u8(kblock, scores)?;
            }
            let f = acc.softmax.absorb(scores);
            acc.rescale(f);
            if vcodes.is_packed() {
                histogram_packed4(vblock, vcodes.num_subspaces(), scores, &mut acc.w);
            } else if ksub_v == 256 {
                histogram_u8_full(vblock, vcodes.num_subspaces(), scores, &mut acc.w);
            } else {
                histogram_u8(vblock, vcodes.num_subspaces(), ksub_v, scores, &mut acc.w);
            }
        }
        start += b;
    }
    Ok(())
}

/// `W[m][code_t[m]] += p_t` for one-byte codes with `ksub = 256`
/// (`bins`: `M x 256`, flat). With AVX-512 and `M` a multiple of 16, each
/// token's bins are updated 16 subspaces at a time by a gather, an add and a
/// scatter: a token's 16 indices `m * 256 + code` are distinct, and tokens
/// go in order, so every bin receives the same additions in the same order
/// as the scalar loop (bit-identical results).
pub fn histogram_u8_full(codes: &[u8], m: usize, weights: &[f32], bins: &mut [f32]) {
    let bins = &mut bins[..m * 256];
    let tokens = (codes.len() / m.max(1)).min(weights.len());
    #[cfg(target_arch = "x86_64")]
    if m > 0 && m.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available (checked above); the callee reads
        // `tokens * m` code bytes and `tokens` weights, and touches only
        // bins `j * 256 + code < m * 256`.
        unsafe { histogram_u8_full_avx512(&codes[..tokens * m], m, &weights[..tokens], bins) };
        return;
    }
    histogram_u8_full_portable(codes, m, weights, bins);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn histogram_u8_full_avx512(codes: &[u8], m: usize, weights: &[f32], bins: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(codes.len() == weights.len() * m && bins.len() == m * 256);
    let b = bins.as_mut_ptr();
    let lane_base = _mm512_setr_epi32(
        0, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 2560, 2816, 3072, 3328, 3584, 3840,
    );
    for (row, &p) in codes.chunks_exact(m).zip(weights) {
        let pv = _mm512_set1_ps(p);
        for (g, chunk) in row.chunks_exact(16).enumerate() {
            // SAFETY: `chunk` holds 16 bytes; indices are below `m * 256`.
            unsafe {
                let c = _mm512_cvtepu8_epi32(_mm_loadu_si128(chunk.as_ptr().cast()));
                let idx = _mm512_add_epi32(
                    _mm512_add_epi32(c, lane_base),
                    _mm512_set1_epi32((g * 4096) as i32),
                );
                let old = _mm512_i32gather_ps::<4>(idx, b.cast_const());
                _mm512_i32scatter_ps::<4>(b, idx, _mm512_add_ps(old, pv));
            }
        }
    }
}

fn histogram_u8_full_portable(codes: &[u8], m: usize, weights: &[f32], bins: &mut [f32]) {
    for (row, &p) in codes.chunks_exact(m).zip(weights) {
        for (j, &c) in row.iter().enumerate() {
            bins[j * 256 + usize::from(c)] += p;
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

/// `W[m][code_t[m]] += p_t` for packed 4-bit codes (`ksub <= 16`; bins rows of
/// `ksub`, codes validated by the store).
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

/// `o[m * dsub + j] += sum_c W[m][c] C_V[m][c][j]`: the bins times the value
/// codebook, subspace by subspace.
pub fn add_bins_times_codebook(bins: &[f32], vpq: &ProductQuantizer, o: &mut [f32]) {
    let (ksub, dsub) = (vpq.params().ksub(), vpq.params().dsub());
    for (m, (w, om)) in bins
        .chunks_exact(ksub)
        .zip(o.chunks_exact_mut(dsub))
        .enumerate()
    {
        for (&wc, c) in w.iter().zip(vpq.subspace_centroids(m).chunks_exact(dsub)) {
            if wc != 0.0 {
                for (x, y) in om.iter_mut().zip(c) {
                    *x += wc * y;
                }
            }
        }
    }
}

#[cfg(test)]
mod histogram_tests {
    use rand::{Rng, SeedableRng};

    use super::{histogram_u8_full, histogram_u8_full_portable};

    #[test]
    fn vector_histogram_is_bit_identical_to_the_scalar_one() {
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
                histogram_u8_full_portable(&codes, m, &weights, &mut b);
                assert!(
                    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "m={m} tokens={tokens}"
                );
            }
        }
    }
}
