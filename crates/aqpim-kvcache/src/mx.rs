//! MX-style block quantization (OCP Microscaling Formats (MX) Specification
//! v1.0, 2023): a group of elements shares one 8-bit exponent in the E8M0
//! format (scale `2^(e - 127)`, `e` in `0..=254`, 255 being NaN), and each
//! element is a `bits`-bit two's-complement integer `q` (MXINT-style), so
//! `x = q * 2^(e - 127)`. Pimba (MICRO 2025) runs MX arithmetic in its PIM
//! units; `scalar:...,mx=true` stores the KV cache this way.
//!
//! The exponent is the smallest one at which every element of the group fits
//! the integer range without clipping: `-2^(bits-1) <= x / scale <= 2^(bits-1) - 1`
//! for the group's most negative and most positive elements. Elements are
//! then rounded to the nearest integer (ties away from zero) and clamped, so
//! an element is off by at most half a step, `scale / 2`. (The spec's own
//! conversion, its section 6.3, takes `floor(log2(max |x|)) - emax_elem` and
//! clamps the elements that then overflow; the rule here never clips, at the
//! price of a scale up to twice as coarse for some groups. The two agree
//! except when the largest magnitude lies between the largest code and the
//! next power of two, in code units.)

/// The E8M0 exponent that encodes NaN; never produced.
const E8M0_NAN: u8 = 255;
/// E8M0 bias: exponent byte `e` means `2^(e - 127)`.
const E8M0_BIAS: i32 = 127;

/// The scale `2^(e - 127)` of an E8M0 exponent byte, exact in f32 (`e = 0`
/// is the subnormal `2^-127`). `e = 255` (NaN in E8M0) gives NaN.
pub fn e8m0_scale(e: u8) -> f32 {
    match e {
        0 => f32::from_bits(0x0040_0000),
        E8M0_NAN => f32::NAN,
        _ => f32::from_bits(u32::from(e) << 23),
    }
}

/// The signed value of a `bits`-bit two's-complement code held in the low
/// bits of `q` (the bits above are zero).
pub fn signed_code(q: u8, bits: u32) -> i8 {
    let shift = 8 - bits;
    ((q << shift) as i8) >> shift
}

/// The shared exponent of a group and its codes (each a `bits`-bit two's
/// complement integer in the low bits of a byte), for `bits` in 2..=8.
///
/// The exponent is the smallest `e` in `0..=254` with
/// `max(x) <= (2^(bits-1) - 1) * 2^(e-127)` and
/// `min(x) >= -2^(bits-1) * 2^(e-127)`; an all-zero group gets `e = 0`.
pub fn quantize_group(
    x: impl Iterator<Item = f32> + Clone,
    bits: u32,
) -> (u8, impl Iterator<Item = u8>) {
    let (mut lo, mut hi) = (0f32, 0f32);
    for v in x.clone() {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let qmax = ((1i32 << (bits - 1)) - 1) as f32;
    let qmin = -((1i32 << (bits - 1)) as f32);
    let fits = |e: u8| {
        let s = e8m0_scale(e);
        hi <= qmax * s && lo >= qmin * s
    };
    // A first guess from the float exponent of the largest ratio, then the
    // exact condition settles it (the guess is off by at most one or two).
    let need = (hi / qmax).max(lo / qmin);
    let mut e = if need > 0.0 {
        (need.log2().ceil() as i32 + E8M0_BIAS).clamp(0, 254) as u8
    } else {
        0
    };
    while e > 0 && fits(e - 1) {
        e -= 1;
    }
    while e < 254 && !fits(e) {
        e += 1;
    }
    let s = e8m0_scale(e);
    let mask = ((1u32 << bits) - 1) as u8;
    let codes = x.map(move |v| (((v / s).round().clamp(qmin, qmax) as i32) as u8) & mask);
    (e, codes)
}

/// Dequantizes one element: `signed_code(q, bits) * 2^(e - 127)`.
pub fn dequantize(q: u8, bits: u32, e: u8) -> f32 {
    f32::from(signed_code(q, bits)) * e8m0_scale(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_scales_are_exact_powers_of_two() {
        assert_eq!(e8m0_scale(127), 1.0);
        assert_eq!(e8m0_scale(128), 2.0);
        assert_eq!(e8m0_scale(120), 2f32.powi(-7));
        assert_eq!(e8m0_scale(1), 2f32.powi(-126));
        assert_eq!(e8m0_scale(0), 2f32.powi(-127));
        assert_eq!(e8m0_scale(254), 2f32.powi(127));
        assert!(e8m0_scale(255).is_nan());
    }

    #[test]
    fn signed_codes_sign_extend() {
        assert_eq!(signed_code(0b01, 2), 1);
        assert_eq!(signed_code(0b10, 2), -2);
        assert_eq!(signed_code(0b11, 2), -1);
        assert_eq!(signed_code(0x7, 4), 7);
        assert_eq!(signed_code(0x8, 4), -8);
        assert_eq!(signed_code(0xff, 8), -1);
        assert_eq!(signed_code(0x80, 8), -128);
    }

    #[test]
    fn exponent_is_the_smallest_that_fits() {
        // 4 bits: q in -8..=7. Largest 7.0 fits 7 * 2^0 exactly.
        let (e, q) = quantize_group([7.0f32, -3.0, 0.5].into_iter(), 4);
        assert_eq!(e, 127);
        assert_eq!(
            q.map(|q| signed_code(q, 4)).collect::<Vec<_>>(),
            vec![7, -3, 1]
        );
        // -8.0 fits -8 * 2^0; 7.5 does not fit 7 * 2^0, so 2^1.
        assert_eq!(quantize_group([-8.0f32, 1.0].into_iter(), 4).0, 127);
        assert_eq!(quantize_group([7.5f32, 1.0].into_iter(), 4).0, 128);
        // Zeros: the smallest exponent, codes 0.
        let (e, q) = quantize_group([0.0f32; 4].into_iter(), 2);
        assert_eq!((e, q.collect::<Vec<_>>()), (0, vec![0; 4]));
        // 2 bits: q in -2..=1; 0.75 needs scale 1 (1 * 2^-1 < 0.75).
        let (e, q) = quantize_group([0.75f32, -0.75, 0.2].into_iter(), 2);
        assert_eq!(e, 127);
        let back: Vec<f32> = q.map(|q| dequantize(q, 2, e)).collect();
        assert_eq!(back, vec![1.0, -1.0, 0.0]);
    }

    #[test]
    fn error_is_at_most_half_a_step() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for bits in [2, 4, 8] {
            for _ in 0..200 {
                let g: Vec<f32> = (0..32)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * 40.0
                    })
                    .collect();
                let (e, q) = quantize_group(g.iter().copied(), bits);
                let s = e8m0_scale(e);
                for (x, q) in g.iter().zip(q) {
                    let y = dequantize(q, bits, e);
                    assert!(
                        (x - y).abs() <= 0.5 * s,
                        "{bits} bits: {x} -> {y} (scale {s})"
                    );
                }
            }
        }
    }
}
