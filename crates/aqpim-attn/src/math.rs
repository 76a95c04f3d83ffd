//! Vectorizable numeric building blocks: `exp` over a slice, dot products,
//! and the running-maximum (online) softmax state.
//!
//! Each slice routine is written once as plain Rust and compiled twice: as is,
//! and inside an AVX-512 `#[target_feature]` wrapper chosen at run time, so the
//! compiler vectorizes the same code 16 lanes wide where the CPU allows.

/// `exp(x)` for every `x` in place. Cephes-style: `x = n ln 2 + r`,
/// `|r| <= ln 2 / 2`, a degree-6 polynomial for `e^r`, and `2^n` built in the
/// exponent bits. Relative error below 3e-7 on `[-87, 88]`; inputs below -87
/// give about 1e-38 instead of a smaller number or zero.
#[cfg(test)]
pub(crate) fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available (checked above).
        unsafe { exp_avx512(xs) };
        return;
    }
    exp_body(xs);
}

/// A safe `#[target_feature]` function: code compiled without AVX-512F
/// calls it only after checking for it at run time (its `unsafe` call site).
#[cfg(all(test, target_arch = "x86_64"))]
#[target_feature(enable = "avx512f")]
fn exp_avx512(xs: &mut [f32]) {
    exp_body(xs);
}

#[cfg(test)]
#[inline(always)]
fn exp_body(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x = exp_scalar(*x);
    }
}

#[inline(always)]
fn exp_scalar(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut y = 1.987_569_1e-4f32;
    y = y * r + 1.398_199_9e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 1.666_666_5e-1;
    y = y * r + 0.5;
    y = y * r * r + r + 1.0;
    // A NaN input stays NaN through `r`; `n` is made 0 for it so that the
    // conversion below is always in range.
    let n = if n.is_nan() { 0.0 } else { n };
    // SAFETY: `n` is an integer in [-126, 127] (the clamp above) or 0, so the
    // conversion is exact and in range; unlike a saturating `as`, it compiles
    // to one vector instruction.
    let n_int: i32 = unsafe { n.to_int_unchecked() };
    let pow2n = f32::from_bits(((n_int + 127) as u32) << 23);
    y * pow2n
}

/// Converts FP16 values to f32 (`dst.len() == src.len()`): 16 per
/// instruction with AVX-512, `half`'s conversion elsewhere.
#[inline]
pub(crate) fn f16_to_f32(src: &[half::f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available (checked above).
        unsafe { f16_to_f32_avx512(src, dst) };
        return;
    }
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
}

/// A safe `#[target_feature]` function: code compiled without AVX-512F
/// calls it only after checking for it at run time (its `unsafe` call site).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn f16_to_f32_avx512(src: &[half::f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: `i + 16 <= n` for both slices; f16 is 2 bytes.
        unsafe {
            let h = _mm256_loadu_si256(src.as_ptr().add(i).cast());
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
        }
        i += 16;
    }
    for (d, s) in dst[i..n].iter_mut().zip(&src[i..n]) {
        *d = s.to_f32();
    }
}

/// Dot product in 16 lanes (vectorizes under the AVX-512 wrapper).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += alpha * x`.
#[inline(always)]
pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// Largest value of a slice (`-inf` for an empty one), in 16 lanes.
#[inline(always)]
/// Sum in 16 interleaved lanes (vectorizes; not the serial order).
pub(crate) fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

pub(crate) fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for l in 0..16 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// Running state of a softmax computed block by block: the maximum score so
/// far and the sum of `exp(score - max)` so far.
#[derive(Debug, Clone, Copy)]
pub struct OnlineSoftmax {
    /// Largest score so far.
    pub max: f32,
    /// Sum of `exp(score - max)` so far.
    pub sum: f32,
}

impl Default for OnlineSoftmax {
    fn default() -> Self {
        Self::new()
    }
}

impl OnlineSoftmax {
    /// No score seen yet.
    pub fn new() -> Self {
        OnlineSoftmax {
            max: f32::NEG_INFINITY,
            sum: 0.0,
        }
    }

    /// Turns a block of scores into weights `exp(score - max)` in place,
    /// raising the running maximum if the block exceeds it. Returns the factor
    /// `exp(old_max - new_max)` by which every accumulator built so far must be
    /// multiplied (1 when the maximum did not move).
    pub fn absorb(&mut self, scores: &mut [f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is available (checked above).
            return unsafe { self.absorb_avx512(scores) };
        }
        self.absorb_body(scores)
    }

    /// [`absorb`](Self::absorb) with every loop vectorized 16 lanes wide
    /// (the same operations in the same order, so the same results).
    ///
    /// A safe `#[target_feature]` function: code compiled without AVX-512F
    /// calls it only after checking for it at run time (its `unsafe` call site).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn absorb_avx512(&mut self, scores: &mut [f32]) -> f32 {
        self.absorb_body(scores)
    }

    #[inline(always)]
    fn absorb_body(&mut self, scores: &mut [f32]) -> f32 {
        let block_max = max(scores);
        let factor = if block_max > self.max {
            let f = if self.max == f32::NEG_INFINITY {
                0.0
            } else {
                (self.max - block_max).exp()
            };
            self.max = block_max;
            self.sum *= f;
            f
        } else {
            1.0
        };
        let m = self.max;
        for s in scores.iter_mut() {
            *s = exp_scalar(*s - m);
        }
        self.sum += sum(scores);
        factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut xs: Vec<f32> = (0..20001)
            .map(|i| -87.0 + 175.0 * i as f32 / 20000.0)
            .collect();
        let want: Vec<f64> = xs.iter().map(|&x| f64::from(x).exp()).collect();
        exp_in_place(&mut xs);
        let mut portable: Vec<f32> = (0..20001)
            .map(|i| -87.0 + 175.0 * i as f32 / 20000.0)
            .collect();
        exp_body(&mut portable);
        for ((g, p), w) in xs.iter().zip(&portable).zip(&want) {
            assert!((f64::from(*g) - w).abs() <= 3e-7 * w, "{g} vs {w}");
            assert!((f64::from(*p) - w).abs() <= 3e-7 * w, "{p} vs {w}");
        }
        let mut tiny = [-1000.0f32, 0.0];
        exp_in_place(&mut tiny);
        assert!(tiny[0] < 1e-37 && tiny[1] == 1.0);
    }

    #[test]
    fn online_softmax_equals_two_pass() {
        let scores: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 3.0)
            .collect();
        let mut state = OnlineSoftmax::new();
        let mut acc = 0f32; // sum of weights times a value (here: the index)
        for (b, block) in scores.chunks(64).enumerate() {
            let mut w = block.to_vec();
            let f = state.absorb(&mut w);
            acc *= f;
            acc += w
                .iter()
                .enumerate()
                .map(|(i, p)| p * (b * 64 + i) as f32)
                .sum::<f32>();
        }
        let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let total: f64 = scores.iter().map(|s| f64::from(s - m).exp()).sum();
        let want: f64 = scores
            .iter()
            .enumerate()
            .map(|(i, s)| f64::from(s - m).exp() * i as f64)
            .sum::<f64>()
            / total;
        assert!(
            (f64::from(acc / state.sum) - want).abs() < 1e-4 * want,
            "{} vs {want}",
            acc / state.sum
        );
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        assert_eq!(dot(&[1.0; 33], &[2.0; 33]), 66.0);
        let h: Vec<half::f16> = (0..37)
            .map(|i| half::f16::from_f32(i as f32 * 0.37 - 5.0))
            .collect();
        let mut f = vec![0f32; 37];
        f16_to_f32(&h, &mut f);
        assert!(h.iter().zip(&f).all(|(a, b)| a.to_f32() == *b));
    }
}
