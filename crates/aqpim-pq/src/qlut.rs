//! Lookup tables quantized to bytes (faiss's fast-scan idea, carried to
//! 256-entry tables as in Quicker ADC) and the scans of transposed code
//! blocks that resolve them in SIMD registers, without gathers.
//!
//! # Quantization
//!
//! A table `T` (`M x ksub`, see [`Lut`]) becomes integers
//! `Q[m][j] = round((T[m][j] - b_m) / s)` in `0 ..= q_max`, with a bias per
//! subspace `b_m = min_j T[m][j]` and one scale for all subspaces
//! `s = max_m (max_j T[m][j] - b_m) / q_max` (one scale, as faiss does, so
//! that the integer entries of different subspaces add up). A code row
//! scores `B + s * sum_m Q[m][c[m]]` with `B = sum_m b_m`. Each entry is off
//! by at most `s / 2`, so a score is off by at most `M s / 2`
//! ([`QuantLut::error_bound`]) plus f32 rounding.
//!
//! [`LutPrecision::U8`] keeps one byte an entry (`q_max = 255`, one lookup a
//! code); [`LutPrecision::U16`] keeps two (`q_max = 65535`, two byte planes,
//! two lookups a code, an error 257 times smaller).
//!
//! # Effect on the softmax
//!
//! If every score is off by at most `E`, every softmax weight
//! `p_t = exp(s_t) / sum_u exp(s_u)` is off by a factor within
//! `[exp(-2E), exp(2E)]`, and an attention output (a convex combination of
//! values) by at most `(exp(2E) - 1) max_t |v_t|`. The bound is loose: the
//! errors of different subspaces are independent roundings, so a score's
//! error is about `s sqrt(M / 12)`, not `M s / 2`.
//!
//! # Blocks
//!
//! Scans read codes transposed in blocks of [`BLOCK`] = 64 tokens, one code a
//! byte: the code of token `t` in subspace `m` at `m * 64 + t` (see
//! [`transpose_block`]). One 64-byte register then holds a subspace's codes
//! for 64 tokens, and a table lookup gives 64 entries at once: `vpermb` for
//! tables of up to 64 entries, two `vpermi2b` on the two 128-byte halves of a
//! 256-entry table plus a select on bit 7 otherwise (AVX-512 VBMI); nibble
//! `pshufb` lookups with AVX2; a plain loop elsewhere. Entries add up in
//! 16-bit lanes, widened to 32 bits every 256 subspaces, before they could
//! overflow. Every path returns the same integer sums, so the same scores bit
//! for bit.

use crate::error::{PqError, Result};
use crate::lut::Lut;

/// Tokens per transposed code block.
pub const BLOCK: usize = 64;

/// Subspaces whose byte entries (at most 255 each) add up in a 16-bit lane
/// before the lane is widened: `256 * 255 < 65536`.
const FLUSH_EVERY: usize = 256;

/// Bits kept of each table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LutPrecision {
    /// One byte an entry, one lookup a code (`q_max = 255`).
    U8,
    /// Two bytes an entry, two byte planes, two lookups a code
    /// (`q_max = 65535`).
    U16,
}

impl LutPrecision {
    /// Byte planes of a table.
    pub fn planes(self) -> usize {
        match self {
            LutPrecision::U8 => 1,
            LutPrecision::U16 => 2,
        }
    }
    /// The largest quantized entry (`q_max`).
    pub fn max_entry(self) -> u32 {
        match self {
            LutPrecision::U8 => 255,
            LutPrecision::U16 => 65_535,
        }
    }
}

/// Which instructions a scan uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScanKernel {
    /// AVX-512 VBMI byte permutes (`vpermb`, `vpermi2b`).
    Vbmi,
    /// AVX2 nibble shuffles (`pshufb`).
    Avx2,
    /// A plain loop.
    Portable,
}

impl ScanKernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> ScanKernel {
        *ScanKernel::available()
            .first()
            .unwrap_or(&ScanKernel::Portable)
    }

    /// Every kernel this CPU runs, fastest first (always ends with
    /// [`ScanKernel::Portable`]).
    pub fn available() -> Vec<ScanKernel> {
        let mut v = Vec::with_capacity(3);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512vbmi")
                && std::arch::is_x86_feature_detected!("avx512bw")
            {
                v.push(ScanKernel::Vbmi);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                v.push(ScanKernel::Avx2);
            }
        }
        v.push(ScanKernel::Portable);
        v
    }
}

/// A query's lookup table quantized to integers (see the module docs).
///
/// Layout: `planes x M x row` bytes, `row` = 64 entries a subspace for
/// `ksub <= 64` and 256 otherwise (padding is zero); plane 0 holds the low
/// byte of each entry, plane 1 (for [`LutPrecision::U16`]) the high byte.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantLut {
    num_subspaces: usize,
    ksub: usize,
    precision: LutPrecision,
    row: usize,
    bytes: Vec<u8>,
    scale: f32,
    bias: f32,
    kernel: ScanKernel,
}

impl QuantLut {
    /// Quantizes `lut` to `precision`. Fails on a non-finite entry (a table
    /// made from a non-finite query), naming the subspace and entry.
    pub fn new(lut: &Lut, precision: LutPrecision) -> Result<Self> {
        let (m, ksub) = (lut.num_subspaces(), lut.ksub());
        if let Some(pos) = lut.values().iter().position(|v| !v.is_finite()) {
            return Err(PqError::NonFinite {
                what: "lookup table to quantize",
                row: pos / ksub,
                col: pos % ksub,
                value: lut.values()[pos],
            });
        }
        let mins = row_minima(lut.values(), ksub);
        let span = lut
            .values()
            .chunks_exact(ksub)
            .zip(&mins)
            .map(|(r, &lo)| r.iter().copied().fold(lo, f32::max) - lo)
            .fold(0.0f32, f32::max);
        if !span.is_finite() {
            return Err(PqError::NonFinite {
                what: "lookup table range (max - min of a subspace)",
                row: 0,
                col: 0,
                value: span,
            });
        }
        let q_max = precision.max_entry();
        // A zero span (every subspace constant) keeps every entry at 0 and
        // the scale at 0: the scores are exact. (An infinite span, from
        // finite entries that overflow when subtracted, is refused above as
        // a non-finite entry would be.)
        let scale = span / q_max as f32;
        let row = if ksub <= 64 { 64 } else { 256 };
        let planes = precision.planes();
        let mut bytes = vec![0u8; planes * m * row];
        // Multiplying by the inverse scale and truncating `x + 0.5` (x >= 0)
        // rounds to nearest like `round`, without its library call, so that
        // the loop vectorizes.
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let (low, high) = bytes.split_at_mut(m * row);
        for (s, (values, &lo)) in lut.values().chunks_exact(ksub).zip(&mins).enumerate() {
            let (low, high) = (&mut low[s * row..s * row + ksub], &mut high[..]);
            let high = if planes == 2 {
                Some(&mut high[s * row..s * row + ksub])
            } else {
                None
            };
            quantize_row(values, lo, inv, q_max, low, high);
        }
        let bias = mins.iter().sum();
        Ok(QuantLut {
            num_subspaces: m,
            ksub,
            precision,
            row,
            bytes,
            scale,
            bias,
            kernel: ScanKernel::detect(),
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
    /// Bits kept of each entry.
    pub fn precision(&self) -> LutPrecision {
        self.precision
    }
    /// The scale `s`: one integer step of an entry.
    pub fn scale(&self) -> f32 {
        self.scale
    }
    /// The sum of the per-subspace biases (`B`).
    pub fn bias(&self) -> f32 {
        self.bias
    }
    /// The largest distance between a score and the exact table's, before
    /// f32 rounding: `M s / 2`.
    pub fn error_bound(&self) -> f32 {
        self.num_subspaces as f32 * self.scale / 2.0
    }
    /// The kernel [`QuantLut::scan_block`] uses.
    pub fn kernel(&self) -> ScanKernel {
        self.kernel
    }
    /// Uses `kernel` from now on. Fails if this CPU does not run it.
    pub fn set_kernel(&mut self, kernel: ScanKernel) -> Result<()> {
        if !ScanKernel::available().contains(&kernel) {
            return Err(PqError::OutOfRange {
                name: "scan kernel",
                value: kernel as u64,
                allowed: "a kernel this CPU runs (ScanKernel::available)",
            });
        }
        self.kernel = kernel;
        Ok(())
    }

    /// The quantized entry `Q[m][j]` (`m < M`, `j < ksub`).
    pub fn entry(&self, m: usize, j: usize) -> u32 {
        let plane = self.num_subspaces * self.row;
        (0..self.precision.planes())
            .map(|p| u32::from(self.bytes[p * plane + m * self.row + j]) << (8 * p))
            .sum()
    }

    /// The score of an integer sum of entries: `B + s * sum`.
    pub fn score_of_sum(&self, sum: u32) -> f32 {
        self.bias + self.scale * sum as f32
    }

    /// The reference: the score of one code row (`M` codes, one a byte, each
    /// `< ksub`), its entries summed as integers. Every scan equals it bit
    /// for bit.
    pub fn score(&self, codes: &[u8]) -> f32 {
        let sum: u32 = codes
            .iter()
            .take(self.num_subspaces)
            .enumerate()
            .map(|(m, &c)| self.entry(m, usize::from(c) % self.row))
            .sum();
        self.score_of_sum(sum)
    }

    /// Scores one transposed block (`codes`: `M x 64` bytes, see
    /// [`transpose_block`]; every code `< ksub`) into `out` (64 scores;
    /// padding tokens score as code 0 would). Codes `>= ksub` give
    /// unspecified, finite scores.
    pub fn scan_block(&self, codes: &[u8], out: &mut [f32; BLOCK]) -> Result<()> {
        let mut sums = [0u32; BLOCK];
        self.sum_block(codes, &mut sums)?;
        for (o, &s) in out.iter_mut().zip(&sums) {
            *o = self.score_of_sum(s);
        }
        Ok(())
    }

    /// The integer sums of [`QuantLut::scan_block`]: `out[t] = sum_m
    /// Q[m][codes[m * 64 + t]]`.
    pub fn sum_block(&self, codes: &[u8], out: &mut [u32; BLOCK]) -> Result<()> {
        let m = self.num_subspaces;
        if codes.len() != m * BLOCK {
            return Err(PqError::shape(
                "QuantLut::sum_block",
                m * BLOCK,
                codes.len(),
            ));
        }
        out.fill(0);
        let plane_len = m * self.row;
        for (p, plane) in self.bytes.chunks_exact(plane_len).enumerate() {
            let mut sums = [0u32; BLOCK];
            match self.kernel {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `set_kernel` and `detect` only choose kernels this
                // CPU runs; `plane` holds `m` rows of `row` bytes and `codes`
                // `m * 64` bytes.
                ScanKernel::Vbmi => unsafe { vbmi::sum_plane(plane, self.row, codes, &mut sums) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                ScanKernel::Avx2 => unsafe {
                    avx2::sum_plane(plane, self.row, self.ksub, codes, &mut sums)
                },
                _ => sum_plane_portable(plane, self.row, codes, &mut sums),
            }
            for (o, s) in out.iter_mut().zip(sums) {
                *o += s << (8 * p);
            }
        }
        Ok(())
    }
}

/// The smallest entry of each row of `ksub` values.
fn row_minima(values: &[f32], ksub: usize) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if ksub.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available (checked above).
        return values
            .chunks_exact(ksub)
            .map(|r| unsafe { vbmi::row_min(r) })
            .collect();
    }
    values
        .chunks_exact(ksub)
        .map(|r| r.iter().copied().fold(f32::INFINITY, f32::min))
        .collect()
}

/// Quantizes one row: `q = min(trunc((v - lo) * inv + 0.5), q_max)`, its low
/// bytes into `low` and, for two-byte entries, its high bytes into `high`.
/// The vector path computes the same f32 operations, so the same bytes.
fn quantize_row(
    values: &[f32],
    lo: f32,
    inv: f32,
    q_max: u32,
    low: &mut [u8],
    high: Option<&mut [u8]>,
) {
    #[cfg(target_arch = "x86_64")]
    if values.len().is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available (checked above).
        unsafe { vbmi::quantize_row(values, lo, inv, q_max, low, high) };
        return;
    }
    quantize_row_portable(values, lo, inv, q_max, low, high);
}

/// [`quantize_row`] one entry at a time.
fn quantize_row_portable(
    values: &[f32],
    lo: f32,
    inv: f32,
    q_max: u32,
    low: &mut [u8],
    high: Option<&mut [u8]>,
) {
    let q = values
        .iter()
        .map(|&v| (((v - lo) * inv + 0.5) as u32).min(q_max));
    match high {
        None => low.iter_mut().zip(q).for_each(|(b, q)| *b = q as u8),
        Some(high) => {
            for ((b, h), q) in low.iter_mut().zip(high.iter_mut()).zip(q) {
                *b = q as u8;
                *h = (q >> 8) as u8;
            }
        }
    }
}

/// The plain loop: `sums[t] = sum_m plane[m * row + codes[m * 64 + t] % row]`.
fn sum_plane_portable(plane: &[u8], row: usize, codes: &[u8], sums: &mut [u32; BLOCK]) {
    for (table, block) in plane.chunks_exact(row).zip(codes.chunks_exact(BLOCK)) {
        for (s, &c) in sums.iter_mut().zip(block) {
            *s += u32::from(table[usize::from(c) % row]);
        }
    }
}

/// Transposes `tokens <= 64` code rows (`rows`: `tokens x row_bytes` bytes in
/// `width`'s layout, see [`crate::CodeWidth`]) into one block: `out[m * 64 +
/// t]` = code of token `t` in subspace `m`, one a byte, `M x 64` bytes;
/// tokens past `tokens` get code 0. Full blocks of one-byte or 4-bit codes
/// whose rows are a multiple of 4 bytes go through AVX-512 VBMI where the
/// CPU has it (plain loads, 16 x 16 dword transposes, a byte permute and a 4 x 4 transpose of
/// 128-bit lanes); the rest one code at a time. Both give the same bytes.
pub fn transpose_block(
    rows: &[u8],
    width: crate::CodeWidth,
    num_subspaces: usize,
    tokens: usize,
    out: &mut [u8],
) -> Result<()> {
    let row_bytes = width.row_bytes(num_subspaces);
    if tokens > BLOCK || rows.len() != tokens * row_bytes || out.len() != num_subspaces * BLOCK {
        return Err(PqError::shape(
            "transpose_block",
            format!(
                "<= {BLOCK} rows of {row_bytes} bytes into {} bytes",
                num_subspaces * BLOCK
            ),
            format!("{} bytes into {}", rows.len(), out.len()),
        ));
    }
    #[cfg(target_arch = "x86_64")]
    if tokens == BLOCK
        && row_bytes.is_multiple_of(4)
        && matches!(width, crate::CodeWidth::Byte | crate::CodeWidth::Nibble)
        && ScanKernel::detect() == ScanKernel::Vbmi
    {
        // SAFETY: AVX-512 VBMI and BW are available (checked above); `rows`
        // holds 64 rows of `row_bytes`, a multiple of 4, and `out` `M x 64`
        // bytes.
        unsafe { vbmi::transpose(rows, width, num_subspaces, out) };
        return Ok(());
    }
    transpose_block_portable(rows, width, num_subspaces, tokens, out);
    Ok(())
}

/// [`transpose_block`] one code at a time.
fn transpose_block_portable(
    rows: &[u8],
    width: crate::CodeWidth,
    m: usize,
    tokens: usize,
    out: &mut [u8],
) {
    out.fill(0);
    let row_bytes = width.row_bytes(m);
    for (t, row) in rows.chunks_exact(row_bytes).take(tokens).enumerate() {
        for s in 0..m {
            out[s * BLOCK + t] = width.code(row, s);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vbmi {
    use super::{BLOCK, FLUSH_EVERY};
    use std::arch::x86_64::*;

    /// Adds the 16-bit lanes `even` (tokens `0, 2, .., 62`) and `odd`
    /// (`1, 3, .., 63`) into 32-bit accumulators in the same order. `words`
    /// sums whole words (even byte + 256 x odd byte, modulo 2^16): taking
    /// the odd part off leaves the even bytes' sum (below 2^16) exactly.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn flush(words: __m512i, odd: __m512i, wide: &mut [__m512i; 4]) {
        let even = _mm512_sub_epi16(words, _mm512_slli_epi16::<8>(odd));
        let parts = [
            _mm512_extracti64x4_epi64::<0>(even),
            _mm512_extracti64x4_epi64::<1>(even),
            _mm512_extracti64x4_epi64::<0>(odd),
            _mm512_extracti64x4_epi64::<1>(odd),
        ];
        for (w, p) in wide.iter_mut().zip(parts) {
            *w = _mm512_add_epi32(*w, _mm512_cvtepu16_epi32(p));
        }
    }

    /// `sums[t] = sum_m plane[m * row + codes[m * 64 + t]]` with byte
    /// permutes: a 64-entry row is one register and one `vpermb`; a
    /// 256-entry row is four, two `vpermi2b` (entries `0..128` and
    /// `128..256`, each indexed by the low 7 bits) and a select on bit 7.
    /// Even and odd tokens add up in separate 16-bit lanes (no shuffle to
    /// widen a byte), flushed to 32 bits every 256 subspaces; even tokens as
    /// whole words, whose odd part `flush` subtracts (faiss's trick).
    ///
    /// A safe `#[target_feature]` function: code compiled without these
    /// features calls it only after checking for them at run time (its
    /// `unsafe` call site). Needs `row` 64 or 256, `plane.len() == M * row`
    /// and `codes.len() == M * 64`; panics otherwise.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) fn sum_plane(plane: &[u8], row: usize, codes: &[u8], sums: &mut [u32; BLOCK]) {
        let m = codes.len() / BLOCK;
        assert!(plane.len() == m * row && (row == 64 || row == 256));
        let load = |s: &[u8]| {
            let s: &[u8; 64] = s.try_into().expect("64 bytes");
            // SAFETY: `s` holds exactly 64 readable bytes.
            unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
        };
        let mut wide = [_mm512_setzero_si512(); 4];
        let mut even = _mm512_setzero_si512();
        let mut odd = _mm512_setzero_si512();
        for (s, (table, block)) in plane
            .chunks_exact(row)
            .zip(codes.chunks_exact(BLOCK))
            .enumerate()
        {
            let c = load(block);
            let v = if row == 64 {
                _mm512_permutexvar_epi8(c, load(table))
            } else {
                let lo = _mm512_permutex2var_epi8(load(&table[..64]), c, load(&table[64..128]));
                let hi = _mm512_permutex2var_epi8(load(&table[128..192]), c, load(&table[192..]));
                _mm512_mask_blend_epi8(_mm512_movepi8_mask(c), lo, hi)
            };
            even = _mm512_add_epi16(even, v);
            odd = _mm512_add_epi16(odd, _mm512_srli_epi16::<8>(v));
            if (s + 1) % FLUSH_EVERY == 0 {
                flush(even, odd, &mut wide);
                even = _mm512_setzero_si512();
                odd = _mm512_setzero_si512();
            }
        }
        flush(even, odd, &mut wide);
        let mut lanes = [[0u32; 16]; 4];
        for (l, w) in lanes.iter_mut().zip(wide) {
            // SAFETY: `l` holds 16 writable u32 values.
            unsafe { _mm512_storeu_si512(l.as_mut_ptr().cast(), w) };
        }
        for i in 0..32 {
            sums[2 * i] += lanes[i / 16][i % 16];
            sums[2 * i + 1] += lanes[2 + i / 16][i % 16];
        }
    }

    /// The smallest of `r` (a multiple of 16 finite values). A safe
    /// `#[target_feature]` function: code compiled without AVX-512F calls it
    /// only after checking for it at run time (its `unsafe` call site).
    #[target_feature(enable = "avx512f")]
    pub(super) fn row_min(r: &[f32]) -> f32 {
        let mut m = _mm512_set1_ps(f32::INFINITY);
        for c in r.chunks_exact(16) {
            let c: &[f32; 16] = c.try_into().expect("16 floats");
            // SAFETY: `c` holds exactly 16 readable floats.
            m = _mm512_min_ps(m, unsafe { _mm512_loadu_ps(c.as_ptr()) });
        }
        _mm512_reduce_min_ps(m)
    }

    /// [`super::quantize_row`], 16 entries a step: the same subtraction,
    /// multiplication and addition in f32, a truncating conversion and a
    /// minimum, then the low (and high) bytes narrowed out.
    ///
    /// A safe `#[target_feature]` function: code compiled without AVX-512F
    /// calls it only after checking for it at run time (its `unsafe` call
    /// site). Needs `values.len()` a multiple of 16 and `low` (and `high`)
    /// as long; panics otherwise.
    #[target_feature(enable = "avx512f")]
    pub(super) fn quantize_row(
        values: &[f32],
        lo: f32,
        inv: f32,
        q_max: u32,
        low: &mut [u8],
        mut high: Option<&mut [u8]>,
    ) {
        let (lo, inv, half) = (_mm512_set1_ps(lo), _mm512_set1_ps(inv), _mm512_set1_ps(0.5));
        let q_max = _mm512_set1_epi32(q_max as i32);
        for (i, c) in values.chunks_exact(16).enumerate() {
            let c: &[f32; 16] = c.try_into().expect("16 floats");
            // SAFETY: `c` holds exactly 16 readable floats.
            let v = unsafe { _mm512_loadu_ps(c.as_ptr()) };
            let x = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(v, lo), inv), half);
            let q = _mm512_min_epu32(_mm512_cvttps_epu32(x), q_max);
            let dst: &mut [u8; 16] = (&mut low[16 * i..16 * i + 16]).try_into().expect("16");
            // SAFETY: `dst` holds exactly 16 writable bytes.
            unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(q)) };
            if let Some(h) = high.as_deref_mut() {
                let dst: &mut [u8; 16] = (&mut h[16 * i..16 * i + 16]).try_into().expect("16");
                let hq = _mm512_srli_epi32::<8>(q);
                // SAFETY: `dst` holds exactly 16 writable bytes.
                unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(hq)) };
            }
        }
    }

    /// The 4 x 16-byte chunks of a register swapped as a 4 x 4 matrix of
    /// 128-bit lanes: `out[s]` lane `g` = `regs[g]` lane `s`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose_lanes(r: [__m512i; 4]) -> [__m512i; 4] {
        let t0 = _mm512_shuffle_i64x2::<0x44>(r[0], r[1]);
        let t1 = _mm512_shuffle_i64x2::<0x44>(r[2], r[3]);
        let t2 = _mm512_shuffle_i64x2::<0xEE>(r[0], r[1]);
        let t3 = _mm512_shuffle_i64x2::<0xEE>(r[2], r[3]);
        [
            _mm512_shuffle_i64x2::<0x88>(t0, t1),
            _mm512_shuffle_i64x2::<0xDD>(t0, t1),
            _mm512_shuffle_i64x2::<0x88>(t2, t3),
            _mm512_shuffle_i64x2::<0xDD>(t2, t3),
        ]
    }

    /// A 16 x 16 matrix of dwords transposed: `out[c]` lane `t` = `r[t]`
    /// lane `c` (unpacks of dwords, then of qwords, then the 4 x 4
    /// transpose of 128-bit lanes).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
        let a: [__m512i; 16] = std::array::from_fn(|i| {
            let (x, y) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_epi32(x, y)
            } else {
                _mm512_unpackhi_epi32(x, y)
            }
        });
        // `b[4i + c]` lane `L` = column `4L + c` of rows `4i .. 4i + 4`.
        let b: [__m512i; 16] = std::array::from_fn(|j| {
            let (i, c) = (j / 4, j % 4);
            let (x, y) = (a[4 * i + c / 2], a[4 * i + 2 + c / 2]);
            if c % 2 == 0 {
                _mm512_unpacklo_epi64(x, y)
            } else {
                _mm512_unpackhi_epi64(x, y)
            }
        });
        let mut out = [_mm512_setzero_si512(); 16];
        for c in 0..4 {
            let t = transpose_lanes([b[c], b[4 + c], b[8 + c], b[12 + c]]);
            for (l, v) in t.into_iter().enumerate() {
                out[4 * l + c] = v;
            }
        }
        out
    }

    /// [`super::transpose_block`] of 64 full rows (`row_bytes` a multiple of
    /// 4, one-byte or 4-bit codes). Per 4-byte column: four registers of 16
    /// rows each (lane `t` = bytes `4k .. 4k + 4` of row `t`, from plain
    /// loads and 16 x 16 dword transposes; gathers were slower), a `vpermb` that
    /// groups each register's bytes by column byte, and a 4 x 4 transpose
    /// of 128-bit lanes that leaves one register a column byte (64 tokens).
    /// A 4-bit byte then splits into its two subspaces.
    ///
    /// A safe `#[target_feature]` function: code compiled without these
    /// features calls it only after checking for them at run time (its
    /// `unsafe` call site). Needs `rows.len() == 64 * row_bytes`,
    /// `row_bytes % 4 == 0`, `out.len() == M * 64`; panics otherwise.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) fn transpose(rows: &[u8], width: crate::CodeWidth, m: usize, out: &mut [u8]) {
        let row_bytes = width.row_bytes(m);
        let nibbles = width == crate::CodeWidth::Nibble;
        assert!(
            rows.len() == BLOCK * row_bytes
                && row_bytes.is_multiple_of(4)
                && out.len() == m * BLOCK
                && (nibbles || width == crate::CodeWidth::Byte)
        );
        // Byte `4t + b` (row `t`, column byte `b`) to `16b + t`.
        let group: [u8; 64] = std::array::from_fn(|i| ((i % 16) * 4 + i / 16) as u8);
        // SAFETY: `group` holds 64 bytes.
        let group = unsafe { _mm512_loadu_si512(group.as_ptr().cast()) };
        let low = _mm512_set1_epi8(0x0f);
        let mut store = |s: usize, v: __m512i| {
            if s < m {
                let dst: &mut [u8; 64] = (&mut out[s * BLOCK..(s + 1) * BLOCK])
                    .try_into()
                    .expect("64 bytes");
                // SAFETY: `dst` holds exactly 64 writable bytes.
                unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), v) };
            }
        };
        let dwords = row_bytes / 4;
        // 16 dword columns at a time: `cols[c][g]` holds dword column
        // `k0 + c` of rows `16 g .. 16 g + 16`, a row a lane (plain loads
        // and 16 x 16 dword transposes).
        for k0 in (0..dwords).step_by(16) {
            let width = (dwords - k0).min(16);
            let mask: __mmask16 = if width == 16 {
                0xffff
            } else {
                (1u16 << width) - 1
            };
            // `by_group[g][c]`: dword column `k0 + c` of rows `16 g ..`.
            let by_group: [[__m512i; 16]; 4] = std::array::from_fn(|g| {
                transpose16(std::array::from_fn(|t| {
                    // SAFETY: the mask keeps dwords `k0 .. k0 + width` of row
                    // `16 g + t < 64`, inside `rows`; masked-off lanes are not
                    // read.
                    unsafe {
                        _mm512_maskz_loadu_epi32(
                            mask,
                            rows.as_ptr().add((16 * g + t) * row_bytes + 4 * k0).cast(),
                        )
                    }
                }))
            });
            let cols: [[__m512i; 4]; 16] = std::array::from_fn(|c| by_group.map(|g| g[c]));
            for (c, col) in cols.iter().enumerate().take(width) {
                let k = k0 + c;
                let grouped = col.map(|v| _mm512_permutexvar_epi8(group, v));
                for (b, v) in transpose_lanes(grouped).into_iter().enumerate() {
                    if nibbles {
                        let byte = 4 * k + b;
                        store(2 * byte, _mm512_and_si512(v, low));
                        store(
                            2 * byte + 1,
                            _mm512_and_si512(_mm512_srli_epi16::<4>(v), low),
                        );
                    } else {
                        store(4 * k + b, v);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::BLOCK;
    use std::arch::x86_64::*;

    /// `sums[t] = sum_m plane[m * row + codes[m * 64 + t]]` with `pshufb`,
    /// 32 tokens a register: a row is read as 16-entry chunks (one for
    /// `ksub <= 16`), each looked up by the low nibble of the codes and kept
    /// where the high nibble names it. Bytes add up in 16-bit lanes (even
    /// and odd tokens apart), flushed to 32 bits every 256 subspaces.
    ///
    /// A safe `#[target_feature]` function: code compiled without AVX2 calls
    /// it only after checking for it at run time (its `unsafe` call site).
    /// Needs `plane.len() == M * row` (`row` 64 or 256, `ksub <= row`) and
    /// `codes.len() == M * 64`; panics otherwise.
    #[target_feature(enable = "avx2")]
    pub(super) fn sum_plane(
        plane: &[u8],
        row: usize,
        ksub: usize,
        codes: &[u8],
        sums: &mut [u32; BLOCK],
    ) {
        let m = codes.len() / BLOCK;
        assert!(plane.len() == m * row && ksub <= row);
        let chunks = ksub.div_ceil(16);
        let low = _mm256_set1_epi8(0x0f);
        let low_byte = _mm256_set1_epi16(0x00ff);
        let load = |s: &[u8]| {
            let s: &[u8; 32] = s.try_into().expect("32 bytes");
            // SAFETY: `s` holds exactly 32 readable bytes.
            unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
        };
        let chunk = |table: &[u8], j: usize| {
            let s: &[u8; 16] = table[16 * j..16 * j + 16].try_into().expect("16 bytes");
            // SAFETY: `s` holds exactly 16 readable bytes.
            _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(s.as_ptr().cast()) })
        };
        // [half][even/odd]: 16-bit lanes, and their 32-bit flushes
        // ([half][even/odd][low/high 8 lanes]).
        let mut acc = [[_mm256_setzero_si256(); 2]; 2];
        let mut wide = [[[0u32; 16]; 2]; 2];
        let flush = |acc: &mut [[__m256i; 2]; 2], wide: &mut [[[u32; 16]; 2]; 2]| {
            for (a, w) in acc.iter_mut().zip(wide.iter_mut()) {
                for (x, ww) in a.iter_mut().zip(w.iter_mut()) {
                    let mut lanes = [0u16; 16];
                    // SAFETY: `lanes` holds 16 writable u16 values.
                    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), *x) };
                    for (d, l) in ww.iter_mut().zip(lanes) {
                        *d += u32::from(l);
                    }
                    *x = _mm256_setzero_si256();
                }
            }
        };
        for (s, (table, block)) in plane
            .chunks_exact(row)
            .zip(codes.chunks_exact(BLOCK))
            .enumerate()
        {
            for (h, a) in acc.iter_mut().enumerate() {
                let c = load(&block[32 * h..32 * h + 32]);
                let lo = _mm256_and_si256(c, low);
                let v = if chunks == 1 {
                    _mm256_shuffle_epi8(chunk(table, 0), lo)
                } else {
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(c), low);
                    let mut v = _mm256_setzero_si256();
                    for j in 0..chunks {
                        let hit = _mm256_cmpeq_epi8(hi, _mm256_set1_epi8(j as i8));
                        let e = _mm256_shuffle_epi8(chunk(table, j), lo);
                        v = _mm256_or_si256(v, _mm256_and_si256(hit, e));
                    }
                    v
                };
                a[0] = _mm256_add_epi16(a[0], _mm256_and_si256(v, low_byte));
                a[1] = _mm256_add_epi16(a[1], _mm256_srli_epi16::<8>(v));
            }
            if (s + 1) % super::FLUSH_EVERY == 0 {
                flush(&mut acc, &mut wide);
            }
        }
        flush(&mut acc, &mut wide);
        for (h, w) in wide.iter().enumerate() {
            for i in 0..16 {
                sums[32 * h + 2 * i] += w[0][i];
                sums[32 * h + 2 * i + 1] += w[1][i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CodeWidth;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    fn table(m: usize, ksub: usize, seed: u64) -> Lut {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        // Subspaces of very different ranges, as keys with outlier channels.
        let values = (0..m * ksub)
            .map(|i| rng.gen_range(-1.0f32..1.0) * (1 + (i / ksub) % 5) as f32)
            .collect();
        Lut::new(m, ksub, values).unwrap()
    }

    fn check_block(m: usize, ksub: usize, seed: u64) {
        let lut = table(m, ksub, seed);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x55);
        let rows: Vec<u8> = (0..BLOCK * m)
            .map(|_| rng.gen_range(0..ksub) as u8)
            .collect();
        let mut block = vec![0u8; m * BLOCK];
        transpose_block(&rows, CodeWidth::Byte, m, BLOCK, &mut block).unwrap();
        for precision in [LutPrecision::U8, LutPrecision::U16] {
            let mut q = QuantLut::new(&lut, precision).unwrap();
            let want: Vec<f32> = rows.chunks_exact(m).map(|r| q.score(r)).collect();
            for kernel in ScanKernel::available() {
                q.set_kernel(kernel).unwrap();
                let mut out = [0f32; BLOCK];
                q.scan_block(&block, &mut out).unwrap();
                for t in 0..BLOCK {
                    assert_eq!(
                        out[t].to_bits(),
                        want[t].to_bits(),
                        "m={m} ksub={ksub} {precision:?} {kernel:?} t={t}"
                    );
                }
            }
            // The quantized score is within the stated bound of the exact one.
            let slack = 1e-5 * (1.0 + lut.values().iter().map(|v| v.abs()).sum::<f32>());
            for r in rows.chunks_exact(m) {
                let (got, exact) = (q.score(r), lut.score(r));
                assert!(
                    (got - exact).abs() <= q.error_bound() + slack,
                    "{got} vs {exact}: bound {}",
                    q.error_bound()
                );
            }
        }
    }

    #[test]
    fn every_kernel_equals_the_reference_bit_for_bit() {
        for m in [1, 2, 16, 32, 64, 300] {
            for ksub in [2, 4, 16, 32, 64, 128, 256] {
                check_block(m, ksub, (m * 1000 + ksub) as u64);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 48,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5CA7),
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions")
            )),
            ..ProptestConfig::default()
        })]
        #[test]
        fn kernels_agree_on_random_tables(
            m in 1usize..80,
            nbits in 1u32..=8,
            seed in 0u64..1_000_000,
        ) {
            check_block(m, 1 << nbits, seed);
        }

        #[test]
        fn transposition_paths_agree(
            m in 1usize..80,
            tokens in 0usize..=64,
            nibble in any::<bool>(),
            seed in 0u64..1_000_000,
        ) {
            let width = if nibble { CodeWidth::Nibble } else { CodeWidth::Byte };
            let ksub = if nibble { 16 } else { 256 };
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let codes: Vec<u8> = (0..tokens * m).map(|_| rng.gen_range(0..ksub) as u8).collect();
            let rows = width.pack(&codes, m).unwrap();
            let mut fast = vec![0xAAu8; m * BLOCK];
            transpose_block(&rows, width, m, tokens, &mut fast).unwrap();
            let mut plain = vec![0u8; m * BLOCK];
            transpose_block_portable(&rows, width, m, tokens, &mut plain);
            prop_assert_eq!(&fast, &plain);
            for t in 0..BLOCK {
                for s in 0..m {
                    let want = if t < tokens { codes[t * m + s] } else { 0 };
                    prop_assert_eq!(plain[s * BLOCK + t], want);
                }
            }
        }
    }

    #[test]
    fn vector_quantization_equals_the_plain_loop() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
        for (q_max, two) in [(255, false), (65_535, true)] {
            for _ in 0..50 {
                let values: Vec<f32> = (0..256).map(|_| rng.gen_range(-3.0f32..5.0)).collect();
                let lo = row_minima(&values, 256)[0];
                assert_eq!(lo, values.iter().copied().fold(f32::INFINITY, f32::min));
                let inv = q_max as f32 / 8.0;
                let (mut a, mut b) = (vec![0u8; 512], vec![0u8; 512]);
                let (al, ah) = a.split_at_mut(256);
                quantize_row(&values, lo, inv, q_max, al, two.then_some(ah));
                let (bl, bh) = b.split_at_mut(256);
                quantize_row_portable(&values, lo, inv, q_max, bl, two.then_some(bh));
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn wide_rows_transpose_like_the_plain_loop() {
        // Rows of more than 16 dwords take several 16 x 16 transposes.
        for (m, width) in [
            (64, CodeWidth::Byte),
            (68, CodeWidth::Byte),
            (200, CodeWidth::Byte),
            (128, CodeWidth::Nibble),
            (136, CodeWidth::Nibble),
        ] {
            let codes: Vec<u8> = (0..BLOCK * m)
                .map(|i| ((i * 7 + i / 13) % if width == CodeWidth::Byte { 256 } else { 16 }) as u8)
                .collect();
            let rows = width.pack(&codes, m).unwrap();
            let mut fast = vec![0u8; m * BLOCK];
            transpose_block(&rows, width, m, BLOCK, &mut fast).unwrap();
            let mut plain = vec![0u8; m * BLOCK];
            transpose_block_portable(&rows, width, m, BLOCK, &mut plain);
            assert_eq!(fast, plain, "m={m} {width:?}");
        }
    }

    #[test]
    fn constant_and_non_finite_tables() {
        let flat = Lut::new(3, 4, vec![2.5; 12]).unwrap();
        let q = QuantLut::new(&flat, LutPrecision::U8).unwrap();
        assert_eq!(q.score(&[0, 1, 3]), 7.5);
        assert_eq!(q.error_bound(), 0.0);
        let mut bad = vec![0.0; 8];
        bad[5] = f32::NAN;
        let e = QuantLut::new(&Lut::new(2, 4, bad).unwrap(), LutPrecision::U8).unwrap_err();
        assert!(e.to_string().contains("lookup table"), "{e}");
        let mut out = [0f32; BLOCK];
        assert!(q.scan_block(&[0; 10], &mut out).is_err());
        assert!(transpose_block(&[0; 3], CodeWidth::Byte, 3, 2, &mut [0; 192]).is_err());
    }
}
