//! FP16 token buffers: borrowed views ([`TokenSlices`]), the recent-window
//! ring buffer, and f32 <-> f16 conversion with input checks.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::error::{KvError, KvPart, Result};
use crate::shape::KvShape;

/// A borrowed run of FP16 tokens of one head, oldest first, in at most two
/// contiguous parts (a ring buffer's two halves; the second part is empty for
/// linear buffers). Each token is `head_dim` values.
#[derive(Debug, Clone, Copy)]
pub struct TokenSlices<'a> {
    parts: [&'a [f16]; 2],
    head_dim: usize,
}

impl<'a> TokenSlices<'a> {
    pub(crate) fn new(first: &'a [f16], second: &'a [f16], head_dim: usize) -> Self {
        TokenSlices {
            parts: [first, second],
            head_dim,
        }
    }
    /// The two contiguous parts, oldest tokens first (`tokens_i x head_dim` each).
    pub fn parts(&self) -> [&'a [f16]; 2] {
        self.parts
    }
    /// Elements per token (d).
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// Number of tokens.
    pub fn len(&self) -> usize {
        (self.parts[0].len() + self.parts[1].len()) / self.head_dim
    }
    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Token `i` (0 = oldest), `head_dim` values. Panics if `i >= len()`.
    pub fn token(&self, i: usize) -> &'a [f16] {
        let d = self.head_dim;
        let n0 = self.parts[0].len() / d;
        if i < n0 {
            &self.parts[0][i * d..(i + 1) * d]
        } else {
            &self.parts[1][(i - n0) * d..(i - n0 + 1) * d]
        }
    }
    /// Tokens oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &'a [f16]> + 'a {
        let d = self.head_dim;
        let [a, b] = self.parts;
        a.chunks_exact(d).chain(b.chunks_exact(d))
    }
    /// All tokens as f32, `len() x head_dim`, oldest first.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len() * self.head_dim);
        extend_f32(&mut out, self.parts[0]);
        extend_f32(&mut out, self.parts[1]);
        out
    }
}

pub(crate) fn extend_f32(out: &mut Vec<f32>, src: &[f16]) {
    let at = out.len();
    out.resize(at + src.len(), 0.0);
    src.convert_to_f32_slice(&mut out[at..]);
}

pub(crate) fn extend_f16(out: &mut Vec<f16>, src: &[f32]) {
    let at = out.len();
    out.resize(at + src.len(), f16::ZERO);
    out[at..].convert_from_f32_slice(src);
}

/// Rounds `src` to FP16 and back: the values the cache actually keeps.
pub(crate) fn round_f16(src: &[f32]) -> Vec<f32> {
    src.iter().map(|&v| f16::from_f32(v).to_f32()).collect()
}

/// Checks a `heads x tokens x head_dim` input of one layer (keys and values),
/// returning the token count. Every value must be finite and within the FP16
/// range (the full-precision tokens are stored in FP16).
pub(crate) fn check_layer_input(
    shape: &KvShape,
    layer: usize,
    keys: &[f32],
    values: &[f32],
    op: &'static str,
) -> Result<usize> {
    shape.check_layer(layer)?;
    let per_token = shape.token_elems();
    if keys.len() != values.len() {
        return Err(KvError::shape(
            op,
            format!("as many values as keys ({})", keys.len()),
            format!("{} values", values.len()),
        ));
    }
    if !keys.len().is_multiple_of(per_token) {
        return Err(KvError::shape(
            op,
            format!("KV heads x tokens x head_dim with {} KV heads and head_dim {}: a multiple of {per_token} values", shape.num_kv_heads(), shape.head_dim()),
            format!("{} values", keys.len()),
        ));
    }
    let n = keys.len() / per_token;
    for (part, data) in [(KvPart::Keys, keys), (KvPart::Values, values)] {
        if let Some(pos) = data
            .iter()
            .position(|v| !v.is_finite() || v.abs() > f16::MAX.to_f32())
        {
            let d = shape.head_dim();
            let value = data[pos];
            return Err(KvError::NonFinite {
                part,
                layer,
                head: pos / d / n,
                token: pos / d % n,
                channel: pos % d,
                value,
                why: if value.is_finite() {
                    "outside the FP16 range"
                } else {
                    "not finite"
                },
            });
        }
    }
    Ok(n)
}

/// A FIFO of FP16 tokens stored in one `Vec`, used as a ring once full.
///
/// `buf` holds `cap` token slots (`buf.len() == cap * d`); the `len` live
/// tokens start at slot `start` and wrap around. Pushing into a full ring
/// grows it (after rotating it linear), so a ring filled up to the window
/// size `R` and then used with one pop and one push per step has exactly
/// `R * d` elements and never reallocates.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenRing {
    buf: Vec<f16>,
    start: usize,
    len: usize,
    d: usize,
}

impl TokenRing {
    pub(crate) fn new(d: usize) -> Self {
        TokenRing {
            buf: Vec::new(),
            start: 0,
            len: 0,
            d,
        }
    }

    /// A linear ring holding `data` (`tokens x d`).
    pub(crate) fn from_vec(data: Vec<f16>, d: usize) -> Self {
        let len = data.len() / d;
        TokenRing {
            buf: data,
            start: 0,
            len,
            d,
        }
    }

    fn cap(&self) -> usize {
        self.buf.len() / self.d
    }

    /// Makes the live tokens contiguous from slot 0.
    fn linearize(&mut self) {
        if self.start != 0 {
            self.buf.rotate_left(self.start * self.d);
            self.start = 0;
        }
    }

    /// Appends tokens given as f32 (`k x d`), rounding them to FP16.
    pub(crate) fn push_f32(&mut self, tokens: &[f32]) {
        let d = self.d;
        for t in tokens.chunks_exact(d) {
            let cap = self.cap();
            if self.len < cap {
                let slot = (self.start + self.len) % cap;
                self.buf[slot * d..(slot + 1) * d].convert_from_f32_slice(t);
            } else {
                self.linearize();
                extend_f16(&mut self.buf, t);
            }
            self.len += 1;
        }
    }

    /// Removes the `k` oldest tokens, appending them as f32 to `out`.
    pub(crate) fn pop_front_f32(&mut self, k: usize, out: &mut Vec<f32>) {
        debug_assert!(k <= self.len);
        let d = self.d;
        let cap = self.cap();
        for _ in 0..k {
            extend_f32(out, &self.buf[self.start * d..(self.start + 1) * d]);
            self.start = (self.start + 1) % cap;
            self.len -= 1;
        }
        if self.len == 0 {
            self.start = 0;
        }
    }

    /// Drops slots not holding tokens and releases spare capacity, so that
    /// the buffer is exactly `len * d` elements.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.linearize();
        self.buf.truncate(self.len * self.d);
        self.buf.shrink_to_fit();
    }

    /// Reserves slots for up to `tokens` live tokens (exactly).
    pub(crate) fn reserve_tokens(&mut self, tokens: usize) {
        if tokens > self.cap() {
            self.linearize();
            self.buf.truncate(self.len * self.d);
            self.buf.reserve_exact(tokens * self.d - self.buf.len());
        }
    }

    pub(crate) fn slices(&self) -> TokenSlices<'_> {
        let d = self.d;
        let cap = self.cap();
        if self.start + self.len <= cap {
            TokenSlices::new(
                &self.buf[self.start * d..(self.start + self.len) * d],
                &[],
                d,
            )
        } else {
            let wrap = self.start + self.len - cap;
            TokenSlices::new(&self.buf[self.start * d..], &self.buf[..wrap * d], d)
        }
    }

    /// Bytes of the live tokens.
    pub(crate) fn used_bytes(&self) -> usize {
        self.len * self.d * 2
    }
    /// Bytes allocated.
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.buf.capacity() * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_fifo_and_stays_exact() {
        let mut r = TokenRing::new(2);
        r.push_f32(&[0., 0., 1., 1., 2., 2.]);
        r.shrink_to_fit();
        let mut out = Vec::new();
        for step in 3..10 {
            out.clear();
            r.pop_front_f32(1, &mut out);
            assert_eq!(out, vec![(step - 3) as f32; 2]);
            r.push_f32(&[step as f32; 2]);
            assert_eq!(r.capacity_bytes(), r.used_bytes());
            let all: Vec<f32> = r.slices().to_f32();
            assert_eq!(
                all,
                [step - 2, step - 2, step - 1, step - 1, step, step].map(|x| x as f32)
            );
        }
        // Growing a wrapped ring keeps the order.
        r.push_f32(&[10., 10.]);
        assert_eq!(r.slices().to_f32(), [7., 7., 8., 8., 9., 9., 10., 10.]);
        r.shrink_to_fit();
        assert_eq!(r.capacity_bytes(), r.used_bytes());
    }

    #[test]
    fn input_errors_say_where() {
        let shape = KvShape::new(2, 2, 4).unwrap();
        let mut k = vec![0.0f32; 2 * 3 * 4];
        let v = k.clone();
        k[(3 + 2) * 4 + 1] = f32::NAN; // head 1, token 2, channel 1
        let e = check_layer_input(&shape, 1, &k, &v, "prefill").unwrap_err();
        assert!(
            matches!(
                e,
                KvError::NonFinite {
                    part: KvPart::Keys,
                    layer: 1,
                    head: 1,
                    token: 2,
                    channel: 1,
                    ..
                }
            ),
            "{e}"
        );
        k[(3 + 2) * 4 + 1] = 1e6;
        assert!(check_layer_input(&shape, 1, &k, &v, "prefill")
            .unwrap_err()
            .to_string()
            .contains("FP16 range"));
        assert!(matches!(
            check_layer_input(&shape, 0, &k[1..], &v[1..], "prefill"),
            Err(KvError::Shape { .. })
        ));
        assert!(matches!(
            check_layer_input(&shape, 2, &v, &v, "prefill"),
            Err(KvError::LayerOutOfRange { .. })
        ));
    }
}
