//! Decode attention directly on PQ codes.
//!
//! For each query head (already scaled by `1 / sqrt(d)`):
//!
//! 1. the FP16 sink tokens stream through the shared full-precision path;
//! 2. the encoded tokens, in blocks: scores `sum_m LUT[m][kcode_t[m]]` from the
//!    query's lookup table (`M x ksub`, built once per query head), softmax
//!    weights against the running maximum, and the weights added into
//!    per-centroid bins `W[m][vcode_t[m]]` (`M x ksub`). Packed 4-bit
//!    values are binned by whole bytes (`ceil(M / 2) x 256`, one store per
//!    pair of subspaces) and folded into `W` at the end; packed 2-bit values
//!    (four per byte) go straight into `W`, in token order like one-byte
//!    codes, so that packing changes no output bit;
//! 3. the FP16 recent tokens, through the full-precision path;
//! 4. `o = (o_fp + sum_m W[m] x C_V[m]) / sum`, with `C_V[m]` the value
//!    codebook of subspace `m` (`ksub x dsub`).
//!
//! Codes are read once; nothing is decoded. Blocks of codes are shared by the
//! query heads of a group while they are in cache.
//!
//! With quantized score tables ([`ScoreTables::U8`], [`ScoreTables::U16`]),
//! step 2 changes for one-byte and 4-bit codes: key codes are read in
//! transposed 64-token blocks (the store's [`Codes::blocks`]; the partial
//! block at the end is transposed here, once for the group) and scored with
//! tables of byte entries resolved in registers ([`aqpim_pq::QuantLut`]);
//! values of at most 16 centroids are read from the store's lane nibbles
//! and weighed in SIMD lanes into the output ([`crate::lanes`]), and values
//! of 256 centroids (one-byte codes) are added centroid by centroid from the
//! rows into register accumulators ([`rows`]), so step 4 has no bins to
//! multiply. Without a value transform only; other value codes keep the
//! bins ([`bins`]).
//!
//! Pre-transforms (`x' = A (x - mu)`, see [`aqpim_pq::transform::PreTransform`]) fold
//! away: a key transform builds the lookup table from `A^-T q` and adds
//! `q . mu` to every encoded score; a value transform turns step 4's sum into
//! `A^-1 (sum_m W[m] x C_V[m]) + w mu`, `w` the encoded tokens' weight. Outlier
//! tokens (FP16 copies of some encoded tokens) replace their codes: their
//! scores are computed exactly, and their weights go to their FP16 values
//! instead of the bins.

use aqpim_kvcache::{Codes, KvStore, OutlierToken, PqHeadView, PqStore};
use aqpim_pq::{CodeWidth, Lut, ProductQuantizer, QuantLut, SCAN_BLOCK};
use half::f16;

use crate::error::{AttnError, Result};
use crate::stream::{finish, fp_tokens, Acc, Scratch};
use crate::tables::{score_tables, ScoreTables};

mod bins;
mod rows;
#[cfg(test)]
mod tests;

pub use bins::{
    add_bins_times_codebook, fold_pair_bins, histogram_packed2, histogram_packed4, histogram_u8,
    histogram_u8_full,
};

/// Decode attention over a PQ cache for one layer: `queries` holds `H x d`,
/// `out` receives `H x d` (query head `h` reads KV head `h / (H / G)`).
/// Parallel over KV heads.
pub fn attend_pq(store: &PqStore, layer: usize, queries: &[f32], out: &mut [f32]) -> Result<()> {
    attend_pq_with(store, layer, queries, out, score_tables())
}

/// [`attend_pq`] with the key scores read from `tables` (see
/// [`pq_head_attention_with`]).
pub fn attend_pq_with(
    store: &PqStore,
    layer: usize,
    queries: &[f32],
    out: &mut [f32],
    tables: ScoreTables,
) -> Result<()> {
    crate::stream::for_each_group(
        store.shape(),
        layer,
        store.num_tokens(layer)?,
        queries,
        out,
        |g, qs, outs| pq_head_attention_with(&store.head(layer, g)?, qs, outs, tables),
    )
}

/// Attention of a group of query heads (`queries`: `g x d`, already scaled)
/// over one PQ head view, into `out` (`g x d`), with the process's
/// [`score_tables`] setting.
pub fn pq_head_attention(view: &PqHeadView<'_>, queries: &[f32], out: &mut [f32]) -> Result<()> {
    pq_head_attention_with(view, queries, out, score_tables())
}

/// [`pq_head_attention`] with the key scores read from `tables`: the exact
/// f32 lookup tables, or tables quantized to bytes and scanned from SIMD
/// registers ([`aqpim_pq::QuantLut`]; one-byte and 4-bit key codes only,
/// other widths and non-finite tables use the exact ones).
pub fn pq_head_attention_with(
    view: &PqHeadView<'_>,
    queries: &[f32],
    out: &mut [f32],
    tables: ScoreTables,
) -> Result<()> {
    let d = check_head_shapes(view, queries, out)?;
    let codebooks = codebooks(view)?;
    let values = match codebooks {
        Some((_, v)) => value_path(view, v, tables),
        None => Values::Bins,
    };
    let bins = match (codebooks, &values) {
        (Some((_, v)), Values::Bins) => bin_count(view, v),
        _ => 0,
    };
    let mut accs = vec![Acc::new(d, bins); queries.len() / d];
    // The block buffers are reused across calls on this thread: a decode
    // step calls the kernel once per (layer, KV head), and allocating and
    // clearing the transposed blocks each time showed in profiles.
    let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));

    let (sk, sv) = (view.sink_keys, view.sink_values);
    fp_tokens(queries, sk, sv, &mut accs, &mut scratch);
    if let Some((kpq, vpq)) = codebooks {
        let (scorer, offsets) = scorer(view, kpq, queries, d, tables)?;
        let exact = Exact {
            queries,
            d,
            outliers: view.outliers,
        };
        let codes = [view.key_codes, view.value_codes];
        let ksub_v = vpq.params().ksub();
        encoded_tokens(
            &scorer,
            &offsets,
            exact,
            codes,
            ksub_v,
            &values,
            &mut accs,
            &mut scratch,
        )?;
    }
    let (rk, rv) = (view.recent_keys, view.recent_values);
    fp_tokens(queries, rk, rv, &mut accs, &mut scratch);
    if let (Some((_, vpq)), Values::Bins) = (codebooks, &values) {
        bins_into_outputs(view, vpq, &mut accs)?;
    }
    finish(&accs, out);
    SCRATCH.with(|s| *s.borrow_mut() = scratch);
    Ok(())
}

/// The head dimension `d`, after checking that `queries` and `out` both
/// hold `g x d` values (`g >= 1`).
fn check_head_shapes(view: &PqHeadView<'_>, queries: &[f32], out: &[f32]) -> Result<usize> {
    let d = view.sink_keys.head_dim();
    if queries.len() != out.len() || !queries.len().is_multiple_of(d) || queries.is_empty() {
        return Err(AttnError::shape(
            "pq_head_attention",
            format!("g x {d} queries and outputs"),
            format!("{} and {}", queries.len(), out.len()),
        ));
    }
    Ok(d)
}

/// The key and value codebooks of a view that holds encoded tokens (`None`
/// without encoded tokens); an error if it holds codes but no codebooks.
fn codebooks<'a>(
    view: &PqHeadView<'a>,
) -> Result<Option<(&'a ProductQuantizer, &'a ProductQuantizer)>> {
    match (view.key_codebook, view.value_codebook) {
        (_, _) if view.key_codes.tokens() == 0 => Ok(None),
        (Some(k), Some(v)) => Ok(Some((k, v))),
        _ => Err(AttnError::Unsupported(
            "PQ head with codes but no codebooks",
        )),
    }
}

/// How the encoded tokens' values reach the outputs.
enum Values<'a> {
    /// Per-centroid bins `W` ([`bins`]), multiplied by the value codebook at
    /// the end ([`bins_into_outputs`]).
    Bins,
    /// Weighed in SIMD lanes from the store's lane nibbles ([`crate::lanes`]):
    /// the value codebook as centroid columns and its `dsub`.
    Lanes { cols: Vec<f32>, dsub: usize },
    /// Centroids read by their one-byte codes from the rows and added
    /// ([`rows`]): the value codebook (`M x 256 x dsub`) and its `dsub`.
    Rows { centroids: &'a [f32], dsub: usize },
}

/// The value path of the fast kernels (quantized score tables), without a
/// value transform: lanes for one-byte or 4-bit codes of at most 16
/// centroids, rows for one-byte codes of 256 centroids; bins otherwise and
/// with exact tables.
fn value_path<'a>(
    view: &PqHeadView<'_>,
    v: &'a ProductQuantizer,
    tables: ScoreTables,
) -> Values<'a> {
    let (m, ksub, dsub) = (
        v.params().num_subspaces(),
        v.params().ksub(),
        v.params().dsub(),
    );
    if tables.precision().is_none() || view.value_transform.is_some() {
        return Values::Bins;
    }
    match view.value_codes.width() {
        CodeWidth::Byte | CodeWidth::Nibble if ksub <= 16 => Values::Lanes {
            cols: crate::lanes::centroid_columns(m, ksub, dsub, |s| v.subspace_centroids(s)),
            dsub,
        },
        CodeWidth::Byte if ksub == 256 => Values::Rows {
            centroids: v.centroids(),
            dsub,
        },
        _ => Values::Bins,
    }
}

/// Bins a query head needs: packed 4-bit values are binned by whole bytes
/// (pairs of subspaces, 256 bins each) and folded into per-subspace bins at
/// the end; other widths have `M x ksub`.
fn bin_count(view: &PqHeadView<'_>, v: &ProductQuantizer) -> usize {
    match view.value_codes.width() {
        CodeWidth::Nibble => view.value_codes.row_bytes() * 256,
        CodeWidth::Byte | CodeWidth::Crumb => v.params().num_subspaces() * v.params().ksub(),
    }
}

/// The lookup tables of the group's query heads (from `A^-T q` under a key
/// transform) and each query's score offset (`q . mu`, zero without one),
/// quantized when `tables` asks for it and the key codes allow it.
fn scorer(
    view: &PqHeadView<'_>,
    kpq: &ProductQuantizer,
    queries: &[f32],
    d: usize,
    tables: ScoreTables,
) -> Result<(Scorer, Vec<f32>)> {
    let mut luts = Vec::with_capacity(queries.len() / d);
    let mut offsets = Vec::with_capacity(queries.len() / d);
    for q in queries.chunks_exact(d) {
        match view.key_transform {
            Some(t) => {
                let (tq, off) = t.query(q)?;
                luts.push(kpq.inner_product_table(&tq)?);
                offsets.push(off);
            }
            None => {
                luts.push(kpq.inner_product_table(q)?);
                offsets.push(0.0);
            }
        }
    }
    let scorer = match tables.precision() {
        Some(p) if matches!(view.key_codes.width(), CodeWidth::Byte | CodeWidth::Nibble) => {
            // A non-finite table (from a non-finite query) keeps the exact
            // tables, whose scores carry the NaN through.
            match luts
                .iter()
                .map(|l| QuantLut::new(l, p))
                .collect::<aqpim_pq::Result<Vec<_>>>()
            {
                Ok(q) => Scorer::Quantized(q),
                Err(_) => Scorer::Exact(luts),
            }
        }
        _ => Scorer::Exact(luts),
    };
    Ok((scorer, offsets))
}

/// Step 4 with bins: `o += sum_m W[m] x C_V[m]` for every query head (packed
/// 4-bit bins folded first), through the value transform's inverse if any.
fn bins_into_outputs(
    view: &PqHeadView<'_>,
    vpq: &ProductQuantizer,
    accs: &mut [Acc],
) -> Result<()> {
    let (m, ksub) = (vpq.params().num_subspaces(), vpq.params().ksub());
    let mut folded = Vec::new();
    for acc in accs {
        let bins = if view.value_codes.width() == CodeWidth::Nibble {
            folded.clear();
            folded.resize(m * ksub, 0.0);
            fold_pair_bins(&acc.w, m, ksub, &mut folded);
            &folded
        } else {
            &acc.w
        };
        match view.value_transform {
            None => add_bins_times_codebook(bins, vpq, &mut acc.o)?,
            Some(t) => {
                let mut s = vec![0f32; acc.o.len()];
                add_bins_times_codebook(bins, vpq, &mut s)?;
                // Every encoded token adds its weight once per subspace.
                let w: f32 = bins[..ksub].iter().sum();
                t.undo_sum(&s, w, &mut acc.o)?;
            }
        }
    }
    Ok(())
}

thread_local! {
    /// Scratch buffers of the last call on this thread.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Encoded tokens per block: long enough that the running maximum rarely
/// moves between blocks (each move rescales all `M x ksub` bins), short
/// enough that a block's codes (`CODE_BLOCK x M` bytes each for keys and
/// values) stay in cache while the group's query heads read them.
const CODE_BLOCK: usize = 4096;

/// Transposes `b` rows of `codes`'s layout (`rows`) into `ceil(b / 64)`
/// blocks of `M x 64` bytes (see [`aqpim_pq::transpose_block`]) in `out`.
fn transpose_rows(rows: &[u8], codes: Codes<'_>, b: usize, out: &mut Vec<u8>) -> Result<()> {
    let (m, rb) = (codes.num_subspaces(), codes.row_bytes());
    let block = m * SCAN_BLOCK;
    out.resize(b.div_ceil(SCAN_BLOCK) * block, 0);
    for (i, o) in out.chunks_exact_mut(block).enumerate() {
        let t0 = i * SCAN_BLOCK;
        let n = SCAN_BLOCK.min(b - t0);
        aqpim_pq::transpose_block(&rows[t0 * rb..(t0 + n) * rb], codes.width(), m, n, o)?;
    }
    Ok(())
}

/// The store's transposed blocks of tokens `start .. start + b` of `codes`
/// (`start` a multiple of 64, `start + b <= codes.block_tokens()`).
fn cached_blocks<'a>(codes: Codes<'a>, start: usize, b: usize) -> &'a [u8] {
    let block = codes.block_bytes();
    &codes.blocks()[start / SCAN_BLOCK * block..(start + b).div_ceil(SCAN_BLOCK) * block]
}

/// The lookup tables of a group's query heads.
enum Scorer {
    /// Exact f32 tables, scanned on the stored rows.
    Exact(Vec<Lut>),
    /// Quantized tables, scanned on transposed blocks of 64 tokens.
    Quantized(Vec<QuantLut>),
}

impl Scorer {
    /// Whether [`Scorer::scores`] reads transposed blocks.
    fn transposed(&self) -> bool {
        matches!(self, Scorer::Quantized(_))
    }

    /// Scores of query head `i` for the `scores.len()` tokens of the block
    /// `rows` (`prepared`: the same tokens transposed, when
    /// [`Scorer::transposed`]).
    fn scores(
        &self,
        i: usize,
        rows: &[u8],
        width: CodeWidth,
        prepared: &[u8],
        scores: &mut [f32],
    ) -> Result<()> {
        match self {
            Scorer::Exact(luts) => match width {
                CodeWidth::Byte => luts[i].scan_u8(rows, scores)?,
                CodeWidth::Nibble => luts[i].scan_packed4(rows, scores)?,
                CodeWidth::Crumb => luts[i].scan_packed2(rows, scores)?,
            },
            Scorer::Quantized(q) => {
                let q = &q[i];
                let block = q.num_subspaces() * SCAN_BLOCK;
                let mut tmp = [0f32; SCAN_BLOCK];
                for (codes, s) in prepared
                    .chunks_exact(block)
                    .zip(scores.chunks_mut(SCAN_BLOCK))
                {
                    q.scan_block(codes, &mut tmp)?;
                    s.copy_from_slice(&tmp[..s.len()]);
                }
            }
        }
        Ok(())
    }

    /// Number of query heads.
    fn len(&self) -> usize {
        match self {
            Scorer::Exact(l) => l.len(),
            Scorer::Quantized(q) => q.len(),
        }
    }
}

/// What outlier tokens need: the (scaled) queries and the FP16 copies.
struct Exact<'a> {
    queries: &'a [f32],
    d: usize,
    outliers: &'a [OutlierToken],
}

fn dot_f16(q: &[f32], k: &[f16]) -> f32 {
    q.iter().zip(k).map(|(a, b)| a * b.to_f32()).sum()
}

/// What the value side reads of one chunk of encoded tokens, `start ..
/// start + b`: the stored rows of its value codes, the same tokens in lane
/// nibbles (empty when the values do not go through lanes), its outlier
/// tokens, and what the next chunk reads first (its key codes as the scorer
/// reads them and its value rows), for the value side to prefetch.
#[derive(Clone, Copy)]
struct Chunk<'a> {
    start: usize,
    vrows: &'a [u8],
    vprep: &'a [u8],
    outliers: &'a [OutlierToken],
    ahead: [&'a [u8]; 2],
}

/// Streams the encoded tokens chunk by chunk (`codes`: keys and values):
/// scores from the lookup tables (plus each query's offset), online softmax,
/// weights into the outputs along `values`; outlier tokens are scored on
/// their FP16 keys and their weights go to their FP16 values.
#[allow(clippy::too_many_arguments)]
fn encoded_tokens(
    scorer: &Scorer,
    offsets: &[f32],
    exact: Exact<'_>,
    codes: [Codes<'_>; 2],
    ksub_v: usize,
    values: &Values<'_>,
    accs: &mut [Acc],
    scratch: &mut Scratch,
) -> Result<()> {
    let [kcodes, vcodes] = codes;
    let n = kcodes.tokens();
    let (kb, vb) = (kcodes.row_bytes(), vcodes.row_bytes());
    scratch.scores.resize(CODE_BLOCK.min(n), 0.0);
    // The store keeps whole 64-token blocks transposed (`Codes::blocks`,
    // keys one code a byte, values in lane nibbles): chunks end where those
    // blocks end, so that a chunk reads either the store's blocks or its
    // own transposition (only the partial block at the end, normally).
    let lanes = matches!(values, Values::Lanes { .. });
    let kcached = match scorer.transposed() && !kcodes.lane_nibbles() {
        true => kcodes.block_tokens(),
        false => 0,
    };
    let vcached = match lanes && vcodes.lane_nibbles() {
        true => vcodes.block_tokens(),
        false => 0,
    };
    let Scratch {
        codes: kscratch,
        vbytes,
        vcodes: vscratch,
        scores,
        weights,
        ..
    } = scratch;
    // Chunks end where the store's blocks end (see above).
    let chunk_len = |start: usize| {
        let mut b = CODE_BLOCK.min(n - start);
        for cached in [kcached, vcached] {
            if start < cached {
                b = b.min(cached - start);
            }
        }
        b
    };
    // The key codes the scorer reads of tokens `start .. start + b`.
    let kread = |start: usize, b: usize| match scorer.transposed() && start + b <= kcached {
        true => cached_blocks(kcodes, start, b),
        false => &kcodes.data()[start * kb..(start + b) * kb],
    };
    // The value codes the value side reads: lane nibbles or rows.
    let vread = |start: usize, b: usize| match lanes && start + b <= vcached {
        true => cached_blocks(vcodes, start, b),
        false => &vcodes.data()[start * vb..(start + b) * vb],
    };
    let mut start = 0;
    while start < n {
        let b = chunk_len(start);
        let ahead = match start + b < n {
            true => {
                let (next, nb) = (start + b, chunk_len(start + b));
                [kread(next, nb), vread(next, nb)]
            }
            false => [&[][..]; 2],
        };
        let kblock = &kcodes.data()[start * kb..(start + b) * kb];
        let vblock = &vcodes.data()[start * vb..(start + b) * vb];
        let lo = exact.outliers.partition_point(|o| o.index < start);
        let hi = exact.outliers.partition_point(|o| o.index < start + b);
        let kprep: &[u8] = match scorer.transposed() {
            false => &[],
            true if start + b <= kcached => cached_blocks(kcodes, start, b),
            true => {
                transpose_rows(kblock, kcodes, b, kscratch)?;
                kscratch
            }
        };
        let vprep: &[u8] = match lanes {
            false => &[],
            true if start + b <= vcached => cached_blocks(vcodes, start, b),
            true => {
                transpose_rows(vblock, vcodes, b, vbytes)?;
                vscratch.resize(vbytes.len() / 2, 0);
                aqpim_pq::pack_lane_nibbles(vbytes, vscratch)?;
                vscratch
            }
        };
        let chunk = Chunk {
            start,
            vrows: vblock,
            vprep,
            outliers: &exact.outliers[lo..hi],
            ahead,
        };
        for (i, (acc, &off)) in accs.iter_mut().zip(offsets).enumerate().take(scorer.len()) {
            let q = &exact.queries[i * exact.d..(i + 1) * exact.d];
            let scores = &mut scores[..b];
            scorer.scores(i, kblock, kcodes.width(), kprep, scores)?;
            // The group's first query head prefetches the next chunk.
            let chunk = match i {
                0 => chunk,
                _ => Chunk {
                    ahead: [&[][..]; 2],
                    ..chunk
                },
            };
            head_chunk(q, off, &chunk, codes, ksub_v, values, scores, weights, acc);
        }
        start += b;
    }
    Ok(())
}

/// One query head `q` over one chunk whose (table) scores are in `scores`:
/// the score offset, the outliers' exact scores, the online softmax, the
/// outliers' FP16 values, then the other tokens' values along `values`
/// (`weights`: scratch for the lanes' zero-padded weights).
#[allow(clippy::too_many_arguments)]
fn head_chunk(
    q: &[f32],
    off: f32,
    chunk: &Chunk<'_>,
    codes: [Codes<'_>; 2],
    ksub_v: usize,
    values: &Values<'_>,
    scores: &mut [f32],
    weights: &mut Vec<f32>,
    acc: &mut Acc,
) {
    let (start, b) = (chunk.start, scores.len());
    if off != 0.0 {
        scores.iter_mut().for_each(|s| *s += off);
    }
    for o in chunk.outliers {
        scores[o.index - start] = dot_f16(q, &o.key);
    }
    let f = acc.softmax.absorb(scores);
    acc.rescale(f);
    for o in chunk.outliers {
        let w = std::mem::take(&mut scores[o.index - start]);
        for (a, v) in acc.o.iter_mut().zip(&o.value) {
            *a += w * v.to_f32();
        }
    }
    let vcodes = codes[1];
    let (m, vblock) = (vcodes.num_subspaces(), chunk.vrows);
    match values {
        Values::Lanes { cols, dsub } => {
            weights.clear();
            weights.extend_from_slice(scores);
            weights.resize(b.div_ceil(SCAN_BLOCK) * SCAN_BLOCK, 0.0);
            let (vprep, ahead) = (chunk.vprep, chunk.ahead);
            crate::lanes::accumulate_values(vprep, m, *dsub, cols, weights, ahead, &mut acc.o);
        }
        Values::Rows { centroids, dsub } => {
            rows::accumulate_rows(vblock, m, *dsub, centroids, scores, chunk.ahead, &mut acc.o)
        }
        Values::Bins => match vcodes.width() {
            // One byte holds two subspaces' codes: bin the byte.
            CodeWidth::Nibble => histogram_u8_full(vblock, vcodes.row_bytes(), scores, &mut acc.w),
            CodeWidth::Crumb => histogram_packed2(vblock, m, ksub_v, scores, &mut acc.w),
            CodeWidth::Byte if ksub_v == 256 => histogram_u8_full(vblock, m, scores, &mut acc.w),
            CodeWidth::Byte => histogram_u8(vblock, m, ksub_v, scores, &mut acc.w),
        },
    }
}
