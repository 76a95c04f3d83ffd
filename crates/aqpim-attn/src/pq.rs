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
//! and weighed in SIMD lanes into the output ([`crate::lanes`]), so step 4
//! has no bins to multiply.
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
    // Packed 4-bit values are binned by whole bytes (pairs of subspaces, 256
    // bins each), then folded into per-subspace bins at the end.
    let value_bins = |v: &ProductQuantizer| match view.value_codes.width() {
        CodeWidth::Nibble => view.value_codes.row_bytes() * 256,
        CodeWidth::Byte | CodeWidth::Crumb => v.params().num_subspaces() * v.params().ksub(),
    };
    // With the fast kernels, values of at most 16 centroids (one-byte or
    // 4-bit codes, no value transform) are weighed in SIMD lanes straight
    // into the output; the others go through per-centroid bins.
    let lanes = match codebooks {
        Some((_, v))
            if tables.precision().is_some()
                && v.params().ksub() <= 16
                && view.value_transform.is_none()
                && matches!(
                    view.value_codes.width(),
                    CodeWidth::Byte | CodeWidth::Nibble
                ) =>
        {
            let (m, dsub) = (v.params().num_subspaces(), v.params().dsub());
            Some(Lanes {
                cols: crate::lanes::centroid_columns(m, v.params().ksub(), dsub, |s| {
                    v.subspace_centroids(s)
                }),
                dsub,
            })
        }
        _ => None,
    };
    let bins = match (codebooks, &lanes) {
        (Some((_, v)), None) => value_bins(v),
        _ => 0,
    };
    let mut accs = vec![Acc::new(d, bins); queries.len() / d];
    // The block buffers are reused across calls on this thread: a decode
    // step calls the kernel once per (layer, KV head), and allocating and
    // clearing the transposed blocks each time showed in profiles.
    let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));

    fp_tokens(
        queries,
        view.sink_keys,
        view.sink_values,
        &mut accs,
        &mut scratch,
    );
    if let Some((kpq, vpq)) = codebooks {
        let mut luts = Vec::with_capacity(accs.len());
        let mut offsets = Vec::with_capacity(accs.len());
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
                // A non-finite table (from a non-finite query) keeps the
                // exact tables, whose scores carry the NaN through.
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
        encoded_tokens(
            &scorer,
            &offsets,
            Exact {
                queries,
                d,
                outliers: view.outliers,
            },
            view.key_codes,
            view.value_codes,
            vpq.params().ksub(),
            lanes.as_ref(),
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

    if let (Some((_, vpq)), None) = (codebooks, &lanes) {
        let (m, ksub) = (vpq.params().num_subspaces(), vpq.params().ksub());
        let mut folded = Vec::new();
        for acc in &mut accs {
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
                    let mut s = vec![0f32; d];
                    add_bins_times_codebook(bins, vpq, &mut s)?;
                    // Every encoded token adds its weight once per subspace.
                    let w: f32 = bins[..ksub].iter().sum();
                    t.undo_sum(&s, w, &mut acc.o)?;
                }
            }
        }
    }
    finish(&accs, out);
    SCRATCH.with(|s| *s.borrow_mut() = scratch);
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

/// Values weighed in SIMD lanes ([`crate::lanes`]): the value codebook as
/// centroid columns and its `dsub`.
struct Lanes {
    cols: Vec<f32>,
    dsub: usize,
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

/// Streams the encoded tokens block by block: scores from the lookup tables
/// (plus each query's offset), online softmax, weights into per-centroid
/// bins; outlier tokens are scored on their FP16 keys and their weights go to
/// their FP16 values.
#[allow(clippy::too_many_arguments)]
fn encoded_tokens(
    scorer: &Scorer,
    offsets: &[f32],
    exact: Exact<'_>,
    kcodes: Codes<'_>,
    vcodes: Codes<'_>,
    ksub_v: usize,
    lanes: Option<&Lanes>,
    accs: &mut [Acc],
    scratch: &mut Scratch,
) -> Result<()> {
    let n = kcodes.tokens();
    let (kb, vb) = (kcodes.row_bytes(), vcodes.row_bytes());
    scratch.scores.resize(CODE_BLOCK.min(n), 0.0);
    // The store keeps whole 64-token blocks transposed (`Codes::blocks`,
    // keys one code a byte, values in lane nibbles): chunks end where those
    // blocks end, so that a chunk reads either the store's blocks or its
    // own transposition (only the partial block at the end, normally).
    let kcached = match scorer.transposed() && !kcodes.lane_nibbles() {
        true => kcodes.block_tokens(),
        false => 0,
    };
    let vcached = match lanes.is_some() && vcodes.lane_nibbles() {
        true => vcodes.block_tokens(),
        false => 0,
    };
    let Scratch {
        codes: kscratch,
        vbytes,
        vcodes: vscratch,
        scores: score_buf,
        weights,
        ..
    } = scratch;
    let mut start = 0;
    while start < n {
        let mut b = CODE_BLOCK.min(n - start);
        for cached in [kcached, vcached] {
            if start < cached {
                b = b.min(cached - start);
            }
        }
        let kblock = &kcodes.data()[start * kb..(start + b) * kb];
        let vblock = &vcodes.data()[start * vb..(start + b) * vb];
        let lo = exact.outliers.partition_point(|o| o.index < start);
        let hi = exact.outliers.partition_point(|o| o.index < start + b);
        let block_outliers = &exact.outliers[lo..hi];
        let kprep: &[u8] = match scorer.transposed() {
            false => &[],
            true if start + b <= kcached => cached_blocks(kcodes, start, b),
            true => {
                transpose_rows(kblock, kcodes, b, kscratch)?;
                kscratch
            }
        };
        let vprep: &[u8] = match lanes.is_some() {
            false => &[],
            true if start + b <= vcached => cached_blocks(vcodes, start, b),
            true => {
                transpose_rows(vblock, vcodes, b, vbytes)?;
                vscratch.resize(vbytes.len() / 2, 0);
                aqpim_pq::pack_lane_nibbles(vbytes, vscratch)?;
                vscratch
            }
        };
        for (i, (acc, &off)) in accs.iter_mut().zip(offsets).enumerate().take(scorer.len()) {
            let scores = &mut score_buf[..b];
            scorer.scores(i, kblock, kcodes.width(), kprep, scores)?;
            if off != 0.0 {
                scores.iter_mut().for_each(|s| *s += off);
            }
            let q = &exact.queries[i * exact.d..(i + 1) * exact.d];
            for o in block_outliers {
                scores[o.index - start] = dot_f16(q, &o.key);
            }
            let f = acc.softmax.absorb(scores);
            acc.rescale(f);
            for o in block_outliers {
                let w = std::mem::take(&mut scores[o.index - start]);
                for (a, v) in acc.o.iter_mut().zip(&o.value) {
                    *a += w * v.to_f32();
                }
            }
            let m = vcodes.num_subspaces();
            if let Some(l) = lanes {
                let w = &mut *weights;
                w.clear();
                w.extend_from_slice(scores);
                w.resize(b.div_ceil(SCAN_BLOCK) * SCAN_BLOCK, 0.0);
                crate::lanes::accumulate_values(vprep, m, l.dsub, &l.cols, w, &mut acc.o);
                continue;
            }
            match vcodes.width() {
                // One byte holds two subspaces' codes: bin the byte.
                CodeWidth::Nibble => histogram_u8_full(vblock, vb, scores, &mut acc.w),
                CodeWidth::Crumb => histogram_packed2(vblock, m, ksub_v, scores, &mut acc.w),
                CodeWidth::Byte if ksub_v == 256 => {
                    histogram_u8_full(vblock, m, scores, &mut acc.w)
                }
                CodeWidth::Byte => histogram_u8(vblock, m, ksub_v, scores, &mut acc.w),
            }
        }
        start += b;
    }
    Ok(())
}

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
