//! ggml tensor storage types: block layouts, dequantization to f32, a
//! reference quantizer (for writing test models), and [`QMatrix`], a weight
//! matrix kept in its compact block form with multi-threaded products.
//!
//! Block layouts (ggml `ggml-common.h`; `d` and `m` are IEEE f16, little-endian):
//!
//! | type | elements per block | bytes | layout | value of element `j` |
//! |---|---|---|---|---|
//! | F32  | 1  | 4  | f32 | `x` |
//! | F16  | 1  | 2  | f16 | `x` |
//! | Q4_0 | 32 | 18 | `d`, `qs[16]` | `(q_j - 8) d` |
//! | Q4_1 | 32 | 20 | `d`, `m`, `qs[16]` | `q_j d + m` |
//! | Q8_0 | 32 | 34 | `d`, `qs[32]` (i8) | `q_j d` |
//!
//! In the 4-bit types `q_j` for `j < 16` is the low nibble of `qs[j]` and
//! `q_{j+16}` its high nibble.
//!
//! The dot-product kernels of [`QMatrix::gemv`] live in their own files:
//! `scalar` (portable), `avx2` and `avx512` (hand-written, picked at run
//! time), with what the two x86 kernels share in `x86`. Those of
//! [`QMatrix::gemv_q8`] (8-bit activations, integer block dot products as
//! llama.cpp computes them) are in `q8` (quantizer, portable reference),
//! `vnni` (AVX-512 VNNI) and `q8_avx2`.

use half::f16;
use rayon::prelude::*;

use crate::error::{DecodeError, Result};

/// Elements per block of the block-quantized types.
pub const QK: usize = 32;

/// A ggml storage type this crate can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// 4-bit blocks with one f16 scale, offset 8.
    Q4_0,
    /// 4-bit blocks with an f16 scale and an f16 minimum.
    Q4_1,
    /// 8-bit blocks with one f16 scale.
    Q8_0,
}

impl GgmlType {
    /// The type for a ggml type code, or `None` where unsupported.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            _ => return None,
        })
    }

    /// The ggml type code.
    pub fn code(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
        }
    }

    /// ggml's name of a type code (also for unsupported codes), for messages.
    pub fn name_of_code(code: u32) -> &'static str {
        const NAMES: [&str; 31] = [
            "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
            "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
            "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
            "BF16",
        ];
        NAMES.get(code as usize).copied().unwrap_or("unknown")
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => QK,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// Bytes taken by `n` elements (`n` a multiple of [`block_len`](Self::block_len)).
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantizes `bytes` (whole blocks of `ty`) into `out`, one f32 per element.
///
/// Fails when `bytes` does not hold exactly `out.len()` elements.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let expected = ty.bytes_for(out.len());
    if expected != Some(bytes.len()) {
        return Err(DecodeError::InvalidArgument {
            name: "bytes",
            reason: format!(
                "{} bytes do not hold {} elements of {:?} (need {:?})",
                bytes.len(),
                out.len(),
                ty,
                expected
            ),
        });
    }
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(18)) {
                let d = f16_at(b, 0);
                for j in 0..16 {
                    let q = b[2 + j];
                    o[j] = ((q & 15) as i32 - 8) as f32 * d;
                    o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(20)) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for j in 0..16 {
                    let q = b[4 + j];
                    o[j] = (q & 15) as f32 * d + m;
                    o[j + 16] = (q >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for j in 0..QK {
                    o[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
    }
    Ok(())
}

/// Quantizes `values` to `ty` the way ggml's reference quantizers do
/// (Q8_0: `d = max|x| / 127`; Q4_0: `d = x_maxabs / -8`; Q4_1:
/// `d = (max - min) / 15`, `m = min`; codes rounded to nearest). Used to write
/// test models and tools; fails when `values.len()` is not a whole number of
/// blocks.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>> {
    let n_bytes = ty
        .bytes_for(values.len())
        .ok_or_else(|| DecodeError::InvalidArgument {
            name: "values",
            reason: format!("{} elements are not whole blocks of {:?}", values.len(), ty),
        })?;
    let mut out = Vec::with_capacity(n_bytes);
    let push_f16 = |out: &mut Vec<u8>, x: f32| {
        out.extend_from_slice(&f16::from_f32(x).to_bits().to_le_bytes())
    };
    match ty {
        GgmlType::F32 => values
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        GgmlType::F16 => values.iter().for_each(|&x| push_f16(&mut out, x)),
        GgmlType::Q8_0 => {
            for blk in values.chunks_exact(QK) {
                let amax = blk.iter().fold(0f32, |a, x| a.max(x.abs()));
                let d = amax / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                push_f16(&mut out, d);
                out.extend(
                    blk.iter()
                        .map(|x| (x * id).round().clamp(-127.0, 127.0) as i8 as u8),
                );
            }
        }
        GgmlType::Q4_0 => {
            for blk in values.chunks_exact(QK) {
                let max = blk
                    .iter()
                    .fold(0f32, |a, &x| if x.abs() > a.abs() { x } else { a });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                push_f16(&mut out, d);
                let q = |x: f32| ((x * id + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(blk[j]) | (q(blk[j + 16]) << 4)));
            }
        }
        GgmlType::Q4_1 => {
            for blk in values.chunks_exact(QK) {
                let min = blk.iter().fold(f32::INFINITY, |a, &x| a.min(x));
                let max = blk.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                let d = (max - min) / 15.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                push_f16(&mut out, d);
                push_f16(&mut out, min);
                let q = |x: f32| (((x - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(blk[j]) | (q(blk[j + 16]) << 4)));
            }
        }
    }
    Ok(out)
}

/// A weight matrix of `rows x cols` elements kept in its ggml storage type,
/// row-major (each row is `cols / block_len` whole blocks), as `W` in
/// `y = W x`. GGUF dims of such a tensor are `[cols, rows]`.
#[derive(Debug, Clone)]
pub struct QMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
}

/// Rows per parallel task in the products.
const ROW_CHUNK: usize = 64;
/// Fewest rows per parallel task in [`QMatrix::gemv`].
const GEMV_MIN_ROWS: usize = 64;

impl QMatrix {
    /// Wraps `bytes` as a `rows x cols` matrix of type `ty`.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Self> {
        let row_bytes = ty
            .bytes_for(cols)
            .ok_or_else(|| DecodeError::InvalidArgument {
                name: "cols",
                reason: format!("{cols} columns are not whole blocks of {ty:?}"),
            })?;
        if rows.checked_mul(row_bytes) != Some(bytes.len()) {
            return Err(DecodeError::InvalidArgument {
                name: "bytes",
                reason: format!(
                    "{} bytes do not hold {rows} x {cols} elements of {ty:?}",
                    bytes.len()
                ),
            });
        }
        Ok(Self {
            ty,
            rows,
            cols,
            bytes,
        })
    }

    /// Quantizes a row-major f32 matrix.
    pub fn from_f32(ty: GgmlType, rows: usize, cols: usize, values: &[f32]) -> Result<Self> {
        if rows.checked_mul(cols) != Some(values.len()) {
            return Err(DecodeError::InvalidArgument {
                name: "values",
                reason: format!("{} values for a {rows} x {cols} matrix", values.len()),
            });
        }
        Self::new(ty, rows, cols, quantize(ty, values)?)
    }

    /// The matrices stacked by rows (`[A; B; ...]`), when they share a
    /// storage type and a column count.
    pub fn concat_rows(parts: &[&QMatrix]) -> Option<QMatrix> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|m| m.ty != first.ty || m.cols != first.cols)
        {
            return None;
        }
        let bytes = parts.iter().flat_map(|m| m.bytes.iter().copied()).collect();
        Some(QMatrix {
            ty: first.ty,
            rows: parts.iter().map(|m| m.rows).sum(),
            cols: first.cols,
            bytes,
        })
    }

    /// Storage type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Number of rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of weight storage.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    fn row_bytes(&self) -> usize {
        self.bytes.len() / self.rows.max(1)
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        if r >= self.rows || out.len() != self.cols {
            return Err(DecodeError::InvalidArgument {
                name: "row",
                reason: format!(
                    "row {r} of {} (out has {} of {} values)",
                    self.rows,
                    out.len(),
                    self.cols
                ),
            });
        }
        let rb = self.row_bytes();
        dequantize(self.ty, &self.bytes[r * rb..(r + 1) * rb], out)
    }

    /// Dequantizes the whole matrix, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        // Sizes were validated in `new`, so dequantization cannot fail.
        let rb = self.row_bytes();
        out.par_chunks_mut(self.cols.max(1))
            .enumerate()
            .for_each(|(r, o)| {
                let _ = dequantize(self.ty, &self.bytes[r * rb..(r + 1) * rb], o);
            });
        out
    }

    /// `y = W x`: `x` has `cols` values, `y` gets `rows`; rows are split
    /// across threads, each row's dot product is computed in one fixed order
    /// (so results do not depend on the thread count).
    pub fn gemv(&self, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), self.cols, "gemv input length");
        assert_eq!(y.len(), self.rows, "gemv output length");
        // Per-block sums of x, shared by every row of the 4-bit types:
        // sum_j (q_j d + m) x_j = d sum_j q_j x_j + m sum_j x_j.
        let xsum: Vec<f32> = x.chunks(QK).map(|c| c.iter().sum()).collect();
        let rb = self.row_bytes();
        let chunk = self.gemv_rows_per_task();
        super::spin::for_each_chunk_mut(y, chunk, &|c, yc| {
            let r0 = c * chunk;
            let rows = &self.bytes[r0 * rb..(r0 + yc.len()) * rb];
            dot_rows(self.ty, rows, rb, x, &xsum, yc);
        });
    }

    /// Rows per parallel task of a GEMV: a few tasks per thread (multiples
    /// of 4 rows for the 4-row kernels), fewer and larger than in `matmul`,
    /// since a GEMV is only tens of microseconds of work and task hand-offs
    /// would dominate.
    fn gemv_rows_per_task(&self) -> usize {
        let threads = rayon::current_num_threads().max(1);
        self.rows
            .div_ceil(4 * threads)
            .next_multiple_of(4)
            .max(GEMV_MIN_ROWS)
    }

    /// `Y = X W^T` for `n` input rows: `x` is `n x cols` row-major, the
    /// result `n x rows` row-major. For `n <= 2` this runs [`gemv`](Self::gemv)
    /// per row; from 256 rows (`LONG_BLOCK_TOKENS`) `W^T` is dequantized once
    /// into panels and blocks of rows of `X` run in parallel (`long.rs`);
    /// in between, chunks of rows of `W` are dequantized to f32 and
    /// multiplied with a blocked SGEMM (matrixmultiply), chunks in parallel.
    /// Each row of the result is the same bits on either of the last two.
    pub fn matmul(&self, x: &[f32], n: usize) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "matmul input shape");
        if n >= LONG_BLOCK_TOKENS {
            return self.matmul_long(x, n, &[self.rows]).remove(0);
        }
        let mut out = vec![0f32; n * self.rows];
        if n <= 2 {
            for (xi, oi) in x
                .chunks_exact(self.cols)
                .zip(out.chunks_exact_mut(self.rows))
            {
                self.gemv(xi, oi);
            }
            return out;
        }
        // out^T (rows x n): contiguous chunks of rows of W give contiguous
        // chunks of out^T, which threads can own. X^T is formed once, row
        // major (k x n), so that every chunk's SGEMM packs it from contiguous
        // rows instead of gathering columns of X (the same packed panels, so
        // the same result bit for bit).
        let mut out_t = vec![0f32; self.rows * n];
        let rb = self.row_bytes();
        let k = self.cols;
        let xt = transpose(x, n, k);
        out_t
            .par_chunks_mut(ROW_CHUNK * n)
            .enumerate()
            .for_each(|(c, oc)| {
                let r0 = c * ROW_CHUNK;
                let m = oc.len() / n;
                let mut w = vec![0f32; m * k];
                for (i, wr) in w.chunks_exact_mut(k).enumerate() {
                    let r = r0 + i;
                    let _ = dequantize(self.ty, &self.bytes[r * rb..(r + 1) * rb], wr);
                }
                // SAFETY: `w` is m x k row-major (strides k, 1), `x` viewed as
                // X^T is k x n (strides 1, k), `oc` is m x n row-major (strides
                // n, 1); all three buffers hold exactly those elements and `oc`
                // does not alias the inputs.
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        k,
                        n,
                        1.0,
                        w.as_ptr(),
                        k as isize,
                        1,
                        xt.as_ptr(),
                        n as isize,
                        1,
                        0.0,
                        oc.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
            });
        transpose_into(&out_t, self.rows, n, &mut out);
        out
    }
}

impl QMatrix {
    /// [`matmul`](Self::matmul) of a matrix stacked by rows from parts of
    /// `parts[i]` rows each (summing to `rows`), result `i` being `X W_i^T`
    /// (`n x parts[i]`): each part's columns of the one product. From
    /// 256 rows (`LONG_BLOCK_TOKENS`) they are written straight into the parts.
    pub fn matmul_parts(&self, x: &[f32], n: usize, parts: &[usize]) -> Vec<Vec<f32>> {
        assert_eq!(
            parts.iter().sum::<usize>(),
            self.rows,
            "parts of the stacked rows"
        );
        if n >= LONG_BLOCK_TOKENS {
            return self.matmul_long(x, n, parts);
        }
        split_columns(&self.matmul(x, n), parts)
    }
}

/// The rows of `all` (each `parts` values summed, row major) cut by
/// columns into one row-major matrix per part.
pub(crate) fn split_columns(all: &[f32], parts: &[usize]) -> Vec<Vec<f32>> {
    let total: usize = parts.iter().sum();
    let mut start = 0;
    parts
        .iter()
        .map(|&w| {
            let out = all
                .chunks_exact(total.max(1))
                .flat_map(|r| &r[start..start + w])
                .copied()
                .collect();
            start += w;
            out
        })
        .collect()
}

/// The transpose of `a` (`rows x cols`, row major): `cols x rows`.
fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; a.len()];
    transpose_into(a, rows, cols, &mut t);
    t
}

/// Writes the transpose of `a` (`rows x cols`) into `t` (`cols x rows`), in
/// 32 x 32 tiles so that reads and writes both stay within a few cache lines.
/// Bands of 32 rows of `t` run in parallel for a large matrix (a weight
/// matrix's transpose would otherwise be a serial step of every long
/// product).
fn transpose_into(a: &[f32], rows: usize, cols: usize, t: &mut [f32]) {
    const TILE: usize = 32;
    /// Elements from which bands run in parallel.
    const PAR_ELEMENTS: usize = 1 << 16;
    assert!(a.len() == rows * cols && t.len() == a.len());
    if rows == 0 || cols == 0 {
        return;
    }
    let band = |b: usize, tb: &mut [f32]| {
        let c0 = b * TILE;
        let c1 = (c0 + TILE).min(cols);
        for r0 in (0..rows).step_by(TILE) {
            let r1 = (r0 + TILE).min(rows);
            for (r, row) in a[r0 * cols..r1 * cols].chunks_exact(cols).enumerate() {
                for (c, &v) in row[c0..c1].iter().enumerate() {
                    tb[c * rows + r0 + r] = v;
                }
            }
        }
    };
    if a.len() >= PAR_ELEMENTS {
        t.par_chunks_mut(TILE * rows)
            .enumerate()
            .for_each(|(b, tb)| band(b, tb));
    } else {
        t.chunks_mut(TILE * rows)
            .enumerate()
            .for_each(|(b, tb)| band(b, tb));
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub(crate) mod gemm;
mod long;
use long::LONG_BLOCK_TOKENS;
mod q8;
#[cfg(target_arch = "x86_64")]
mod q8_avx2;
mod q8_gemv;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod vnni;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use q8::Q8Activations;

/// `y[i] = row_i . x` for the rows packed in `rows` (`row_bytes` each), by
/// the widest kernel this CPU runs.
fn dot_rows(ty: GgmlType, rows: &[u8], row_bytes: usize, x: &[f32], xsum: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_avx512() {
            // SAFETY: the CPU supports every feature the kernel enables
            // (`has_avx512`).
            unsafe { avx512::dot_rows(ty, rows, row_bytes, x, xsum, y) };
            return;
        }
        if x86::has_avx2() {
            // SAFETY: the CPU supports every feature the kernel enables
            // (`has_avx2`).
            unsafe { avx2::dot_rows(ty, rows, row_bytes, x, xsum, y) };
            return;
        }
    }
    scalar::dot_rows(ty, rows, row_bytes, x, xsum, y)
}

/// Every kernel this CPU can run, for tests: `(name, y)` pairs, the portable
/// one first.
#[cfg(test)]
fn all_variants(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    x: &[f32],
    xsum: &[f32],
    n: usize,
) -> Vec<(&'static str, Vec<f32>)> {
    let mut out = Vec::new();
    let mut y = vec![0f32; n];
    scalar::dot_rows(ty, rows, row_bytes, x, xsum, &mut y);
    out.push(("portable", y.clone()));
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_avx2() {
            // SAFETY: the CPU supports every feature the kernel enables.
            unsafe { avx2::dot_rows(ty, rows, row_bytes, x, xsum, &mut y) };
            out.push(("avx2", y.clone()));
        }
        if x86::has_avx512() {
            // SAFETY: the CPU supports every feature the kernel enables.
            unsafe { avx512::dot_rows(ty, rows, row_bytes, x, xsum, &mut y) };
            out.push(("avx512", y.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn transpose_moves_every_element_serial_and_parallel() {
        // Small (serial), large (parallel bands), ragged tiles both ways.
        for (rows, cols) in [(1, 1), (3, 70), (333, 257), (1000, 70)] {
            let a: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transpose(&a, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        a[r * cols + c],
                        "{rows} x {cols}: ({r}, {c})"
                    );
                }
            }
        }
    }

    fn randv(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn q4_1_layout_low_nibbles_first() {
        // d = 0.5, m = -1.0; qs[j] = low j, high 15 - j.
        let mut b = Vec::new();
        b.extend_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        b.extend_from_slice(&f16::from_f32(-1.0).to_bits().to_le_bytes());
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q4_1, &b, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], j as f32 * 0.5 - 1.0);
            assert_eq!(out[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
    }

    #[test]
    fn q8_0_layout() {
        let mut b = Vec::new();
        b.extend_from_slice(&f16::from_f32(0.25).to_bits().to_le_bytes());
        b.extend((0..32i8).map(|j| (j - 16) as u8));
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q8_0, &b, &mut out).unwrap();
        for (j, o) in out.iter().enumerate() {
            assert_eq!(*o, (j as f32 - 16.0) * 0.25);
        }
    }

    #[test]
    fn quantize_round_trip_error_is_bounded() {
        let x = randv(32 * 8, 1);
        for (ty, tol) in [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, 1e-3),
            (GgmlType::Q8_0, 1.0 / 127.0),
            (GgmlType::Q4_1, 2.0 / 15.0),
            (GgmlType::Q4_0, 2.0 / 8.0),
        ] {
            let q = quantize(ty, &x).unwrap();
            assert_eq!(q.len(), ty.bytes_for(x.len()).unwrap());
            let mut y = vec![0f32; x.len()];
            dequantize(ty, &q, &mut y).unwrap();
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() <= tol, "{ty:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn dispatched_kernels_equal_portable_kernels() {
        let (rows, cols) = (9, 128);
        let w = randv(rows * cols, 5);
        let x = randv(cols, 6);
        let xsum: Vec<f32> = x.chunks(QK).map(|c| c.iter().sum()).collect();
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
        ] {
            let q = quantize(ty, &w).unwrap();
            let rb = q.len() / rows;
            let variants = all_variants(ty, &q, rb, &x, &xsum, rows);
            let reference = &variants[0].1;
            for (name, y) in &variants {
                for (p, r) in y.iter().zip(reference) {
                    assert!(
                        (p - r).abs() < 1e-4 * (1.0 + r.abs()),
                        "{ty:?} {name}: {p} vs {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let mut out = [0f32; 32];
        assert!(dequantize(GgmlType::Q4_1, &[0u8; 19], &mut out).is_err());
        assert!(quantize(GgmlType::Q8_0, &[0f32; 31]).is_err());
        assert!(QMatrix::new(GgmlType::Q8_0, 2, 32, vec![0; 67]).is_err());
        assert!(QMatrix::new(GgmlType::Q8_0, 2, 33, vec![0; 68]).is_err());
    }

    #[test]
    fn gemv_and_matmul_equal_dequantized_products() {
        let (rows, cols) = (150, 96);
        let w = randv(rows * cols, 2);
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
        ] {
            let m = QMatrix::from_f32(ty, rows, cols, &w).unwrap();
            let wd = m.to_f32();
            for n in [
                1usize,
                2,
                5,
                LONG_BLOCK_TOKENS + 44,
                long::LONG_TASK_TOKENS + 44,
            ] {
                let x = randv(n * cols, 3 + n as u64);
                let y = m.matmul(&x, n);
                if n >= LONG_BLOCK_TOKENS {
                    // The long path gives each row what the row-chunk path
                    // gives it, bit for bit.
                    let few = m.matmul(&x[..5 * cols], 5);
                    assert_eq!(few, y[..5 * rows], "{ty:?}: long and short paths");
                }
                for t in 0..n {
                    for r in 0..rows {
                        let want: f64 = (0..cols)
                            .map(|c| wd[r * cols + c] as f64 * x[t * cols + c] as f64)
                            .sum();
                        let got = y[t * rows + r] as f64;
                        assert!(
                            (want - got).abs() < 1e-4,
                            "{ty:?} n={n} t={t} r={r}: {want} vs {got}"
                        );
                    }
                }
            }
        }
    }
}
