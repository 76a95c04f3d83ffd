//! [`ScalarStore`]: the KIVI-style baseline (Liu et al., "KIVI: A Tuning-Free
//! Asymmetric 2bit Quantization for KV Cache", ICML 2024): keys quantized per
//! channel, values per token, asymmetric min/scale quantization in groups, an
//! FP16 recent window; or, with `mx=true`, MX-style groups (OCP Microscaling
//! spec v1.0, as Pimba, MICRO 2025, computes on them): `G` channels of one
//! token share an E8M0 exponent, elements are signed integers (see [`crate::mx`]).

use half::f16;

use crate::accounting::{account_regions, HeapBytes, MemoryReport, Regions};
use crate::error::{KvError, Result};
use crate::persist::{self, Reader};
use crate::shape::KvShape;
use crate::spec::{KvSpec, ScalarSpec};
use crate::store::{DenseKv, KvStore};
use crate::tokens::{check_layer_input, extend_f16, round_f16, TokenRing, TokenSlices};

/// Borrowed view of one (layer, KV head) of the scalar store.
///
/// Codes are `encoded x ceil(d * bits / 8)` bytes, element `c` of a token at
/// bits `[c * bits, (c + 1) * bits)` counted from the low bit of byte 0.
///
/// KIVI (`mx=false`): quantized element `x` is `min + q * scale` with `q` an
/// unsigned `bits`-bit integer. Key groups: `G` consecutive tokens of one
/// channel share `(min, scale)`, stored `(encoded / G) x d x 2` (FP16,
/// `[min, scale]`). Value groups: `G` consecutive channels of one token share
/// them, stored `encoded x (d / G) x 2`. The exponent slices are empty.
///
/// MX (`mx=true`): `x = q * 2^(e - 127)` with `q` a `bits`-bit two's-complement
/// integer ([`crate::mx::signed_code`]) and `e` the group's E8M0 exponent byte
/// ([`crate::mx::e8m0_scale`]). Keys and values alike: `G` consecutive
/// channels of one token share `e`, stored `encoded x (d / G)` bytes (token
/// `t`, channel `c` at `t * (d / G) + c / G`). The params slices are empty.
#[derive(Debug, Clone, Copy)]
pub struct ScalarHeadView<'a> {
    /// Token counts of the three regions.
    pub regions: Regions,
    /// FP16 sink keys.
    pub sink_keys: TokenSlices<'a>,
    /// FP16 sink values.
    pub sink_values: TokenSlices<'a>,
    /// Key codes.
    pub key_codes: &'a [u8],
    /// Key `(min, scale)` per (token group, channel).
    pub key_params: &'a [f16],
    /// Value codes.
    pub value_codes: &'a [u8],
    /// Value `(min, scale)` per (token, channel group).
    pub value_params: &'a [f16],
    /// MX key exponents (E8M0) per (token, channel group).
    pub key_exponents: &'a [u8],
    /// MX value exponents (E8M0) per (token, channel group).
    pub value_exponents: &'a [u8],
    /// FP16 recent keys.
    pub recent_keys: TokenSlices<'a>,
    /// FP16 recent values.
    pub recent_values: TokenSlices<'a>,
}

#[derive(Debug, Clone)]
struct ScalarHead {
    sinks: [Vec<f16>; 2],
    /// `[part]` codes.
    codes: [Vec<u8>; 2],
    /// `[part]` `(min, scale)` pairs (KIVI).
    params: [Vec<f16>; 2],
    /// `[part]` E8M0 exponents (MX).
    exponents: [Vec<u8>; 2],
    recent: [TokenRing; 2],
}

/// The KIVI-style scalar-quantized cache. Token life cycle per layer: the
/// first `S` tokens stay FP16 (sinks, default 0); the others enter the FP16
/// window, and whenever at least `G` tokens have left the last `R`, the
/// oldest whole groups of `G` are quantized (keys need whole groups of tokens).
/// With `mx=true` every group lies within one token, so tokens leave the
/// window one by one (`G` is replaced by 1 in this paragraph, see
/// [`ScalarSpec::token_group`]).
///
/// The window's buffer is sized for the most it holds, `R + G - 1` tokens,
/// so beside the bytes [`KvStore::memory_report`] counts, a full-length cache
/// carries up to `G - 1` empty token slots per head and part (released by
/// [`KvStore::shrink_to_fit`]).
#[derive(Debug, Clone)]
pub struct ScalarStore {
    shape: KvShape,
    spec: KvSpec,
    sc: ScalarSpec,
    row_bytes: usize,
    layers: Vec<(Regions, Vec<ScalarHead>)>,
}

/// `(min, scale)` of a group, rounded to FP16, and the codes of its values.
fn quantize_group(
    x: impl Iterator<Item = f32> + Clone,
    bits: u32,
) -> (f16, f16, impl Iterator<Item = u8>) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for v in x.clone() {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let qmax = ((1u32 << bits) - 1) as f32;
    let (min_h, scale_h) = (f16::from_f32(lo), f16::from_f32((hi - lo) / qmax));
    let (mn, sc) = (min_h.to_f32(), scale_h.to_f32());
    let codes = x.map(move |v| {
        if sc > 0.0 {
            ((v - mn) / sc).round().clamp(0.0, qmax) as u8
        } else {
            0
        }
    });
    (min_h, scale_h, codes)
}

fn set_code(row: &mut [u8], c: usize, bits: u32, q: u8) {
    let bit = c * bits as usize;
    row[bit / 8] |= q << (bit % 8);
}

fn get_code(row: &[u8], c: usize, bits: u32) -> u8 {
    let bit = c * bits as usize;
    let mask = ((1u32 << bits) - 1) as u8;
    (row[bit / 8] >> (bit % 8)) & mask
}

impl ScalarStore {
    /// An empty store.
    pub fn new(shape: KvShape, sc: ScalarSpec) -> Result<Self> {
        let spec = KvSpec::Scalar(sc);
        spec.validate(&shape)?;
        let d = shape.head_dim();
        let head = ScalarHead {
            sinks: Default::default(),
            codes: Default::default(),
            params: Default::default(),
            exponents: Default::default(),
            recent: [TokenRing::new(d), TokenRing::new(d)],
        };
        Ok(ScalarStore {
            shape,
            spec,
            sc,
            row_bytes: (d * sc.bits as usize).div_ceil(8),
            layers: vec![
                (Regions::default(), vec![head; shape.num_kv_heads()]);
                shape.num_layers()
            ],
        })
    }

    /// Borrowed view of one head.
    pub fn head(&self, layer: usize, head: usize) -> Result<ScalarHeadView<'_>> {
        self.shape.check_head(layer, head)?;
        let (regions, heads) = &self.layers[layer];
        let h = &heads[head];
        let d = self.shape.head_dim();
        Ok(ScalarHeadView {
            regions: *regions,
            sink_keys: TokenSlices::new(&h.sinks[0], &[], d),
            sink_values: TokenSlices::new(&h.sinks[1], &[], d),
            key_codes: &h.codes[0],
            key_params: &h.params[0],
            value_codes: &h.codes[1],
            value_params: &h.params[1],
            key_exponents: &h.exponents[0],
            value_exponents: &h.exponents[1],
            recent_keys: h.recent[0].slices(),
            recent_values: h.recent[1].slices(),
        })
    }

    /// Quantizes `k x d` tokens (`k` a multiple of [`ScalarSpec::token_group`]),
    /// appending codes and params (KIVI) or exponents (MX).
    fn quantize(&self, data: &[f32], part: usize, head: &mut ScalarHead) {
        let (codes, params) = (&mut head.codes[part], &mut head.params[part]);
        if self.sc.mx {
            self.quantize_mx(data, codes, &mut head.exponents[part]);
            return;
        }
        let (d, g, bits, rb) = (
            self.shape.head_dim(),
            self.sc.group,
            self.sc.bits,
            self.row_bytes,
        );
        let k = data.len() / d;
        let base = codes.len();
        codes.resize(base + k * rb, 0);
        let out = &mut codes[base..];
        if part == 0 {
            // Keys: per channel, over each group of `g` tokens.
            for blk in 0..k / g {
                for c in 0..d {
                    let col = (0..g).map(|t| data[(blk * g + t) * d + c]);
                    let (mn, sc, q) = quantize_group(col, bits);
                    params.extend([mn, sc]);
                    for (t, q) in q.enumerate() {
                        set_code(&mut out[(blk * g + t) * rb..][..rb], c, bits, q);
                    }
                }
            }
        } else {
            // Values: per token, over each group of `g` channels.
            for t in 0..k {
                for cg in 0..d / g {
                    let (mn, sc, q) = quantize_group(
                        data[t * d + cg * g..t * d + (cg + 1) * g].iter().copied(),
                        bits,
                    );
                    params.extend([mn, sc]);
                    for (i, q) in q.enumerate() {
                        set_code(&mut out[t * rb..][..rb], cg * g + i, bits, q);
                    }
                }
            }
        }
    }

    /// MX groups: per token, over each group of `G` channels, keys and values alike.
    fn quantize_mx(&self, data: &[f32], codes: &mut Vec<u8>, exponents: &mut Vec<u8>) {
        let (d, g, bits, rb) = (
            self.shape.head_dim(),
            self.sc.group,
            self.sc.bits,
            self.row_bytes,
        );
        let k = data.len() / d;
        let base = codes.len();
        codes.resize(base + k * rb, 0);
        let out = &mut codes[base..];
        for t in 0..k {
            for cg in 0..d / g {
                let x = &data[t * d + cg * g..t * d + (cg + 1) * g];
                let (e, q) = crate::mx::quantize_group(x.iter().copied(), bits);
                exponents.push(e);
                for (i, q) in q.enumerate() {
                    set_code(&mut out[t * rb..][..rb], cg * g + i, bits, q);
                }
            }
        }
    }

    /// Dequantizes every encoded token of one part: `encoded x d`.
    fn dequantize(&self, head: &ScalarHead, part: usize) -> Vec<f32> {
        let (codes, params) = (&head.codes[part], &head.params[part]);
        let (d, g, bits, rb) = (
            self.shape.head_dim(),
            self.sc.group,
            self.sc.bits,
            self.row_bytes,
        );
        let k = codes.len() / rb;
        let mut out = Vec::with_capacity(k * d);
        for t in 0..k {
            for c in 0..d {
                let p = if part == 0 {
                    ((t / g) * d + c) * 2
                } else {
                    (t * (d / g) + c / g) * 2
                };
                let q = get_code(&codes[t * rb..(t + 1) * rb], c, bits);
                out.push(if self.sc.mx {
                    crate::mx::dequantize(q, bits, head.exponents[part][t * (d / g) + c / g])
                } else {
                    params[p].to_f32() + f32::from(q) * params[p + 1].to_f32()
                });
            }
        }
        out
    }

    fn push(&mut self, layer: usize, keys: &[f32], values: &[f32], op: &'static str) -> Result<()> {
        let n = check_layer_input(&self.shape, layer, keys, values, op)?;
        let reg = self.layers[layer].0;
        let (s_max, r_max, g) = (self.sc.sinks, self.sc.window, self.sc.token_group());
        let to_sinks = s_max.saturating_sub(reg.sinks).min(n);
        let to_recent = n - to_sinks;
        let overflow = (reg.recent + to_recent).saturating_sub(r_max) / g * g;
        let from_ring = overflow.min(reg.recent);
        let from_new = overflow - from_ring;
        let d = self.shape.head_dim();
        let mut heads = std::mem::take(&mut self.layers[layer].1);
        for (h, head) in heads.iter_mut().enumerate() {
            for p in 0..2 {
                let x = &[keys, values][p][h * n * d..(h + 1) * n * d];
                extend_f16(&mut head.sinks[p], &x[..to_sinks * d]);
                let fresh = &x[to_sinks * d..];
                if overflow > 0 {
                    let mut buf = Vec::with_capacity(overflow * d);
                    head.recent[p].pop_front_f32(from_ring, &mut buf);
                    buf.extend(round_f16(&fresh[..from_new * d]));
                    self.quantize(&buf, p, head);
                }
                head.recent[p].push_f32(&fresh[from_new * d..]);
            }
        }
        let (r, slot) = &mut self.layers[layer];
        *slot = heads;
        r.sinks += to_sinks;
        r.encoded += overflow;
        r.recent = r.recent - from_ring + (to_recent - from_new);
        Ok(())
    }

    /// FP16 values of `(min, scale)` pairs for `encoded` tokens of `part` (0 with `mx`).
    fn params_len(&self, encoded: usize, part: usize) -> usize {
        let (d, g) = (self.shape.head_dim(), self.sc.group);
        if self.sc.mx {
            0
        } else if part == 0 {
            encoded / g * d * 2
        } else {
            encoded * (d / g) * 2
        }
    }

    /// Exponent bytes for `encoded` tokens of one part: `encoded * d / G` with `mx`, else 0.
    fn exponents_len(&self, encoded: usize) -> usize {
        if self.sc.mx {
            encoded * (self.shape.head_dim() / self.sc.group)
        } else {
            0
        }
    }

    pub(crate) fn read_body(shape: KvShape, sc: ScalarSpec, r: &mut Reader<'_>) -> Result<Self> {
        let mut s = ScalarStore::new(shape, sc)?;
        let d = shape.head_dim();
        if sc.mx && r.version() < persist::MX_VERSION {
            return Err(r.bad(format!(
                "`{}` needs format version {} or later, the file has {}",
                s.spec,
                persist::MX_VERSION,
                r.version()
            )));
        }
        let tg = sc.token_group();
        for layer in 0..shape.num_layers() {
            let reg = Regions {
                sinks: r.u64("sink count")?,
                encoded: r.u64("encoded count")?,
                recent: r.u64("recent count")?,
            };
            let ok = reg.sinks <= sc.sinks
                && (reg.sinks == sc.sinks || reg.encoded + reg.recent == 0)
                && reg.encoded.is_multiple_of(tg)
                && (reg.encoded == 0 || (reg.recent >= sc.window && reg.recent < sc.window + tg))
                && reg.recent < sc.window.saturating_add(tg);
            if !ok {
                return Err(r.bad(format!(
                    "layer {layer}: regions {reg:?} are impossible for `{}`",
                    s.spec
                )));
            }
            for h in 0..shape.num_kv_heads() {
                for p in 0..2 {
                    let sinks = r.f16s(r.mul(reg.sinks, d, "sinks")?, "sink tokens")?;
                    let codes = r.take(reg.encoded, s.row_bytes, "codes")?.to_vec();
                    let params = r.f16s(s.params_len(reg.encoded, p), "scales")?;
                    let exponents = r
                        .take(s.exponents_len(reg.encoded), 1, "exponents")?
                        .to_vec();
                    if let Some(e) = exponents.iter().position(|e| *e == 255) {
                        return Err(
                            r.bad(format!("exponent {e} of layer {layer} is 255, NaN in E8M0"))
                        );
                    }
                    let recent = r.f16s(r.mul(reg.recent, d, "recent")?, "recent tokens")?;
                    let head = &mut s.layers[layer].1[h];
                    head.sinks[p] = sinks;
                    head.codes[p] = codes;
                    head.params[p] = params;
                    head.exponents[p] = exponents;
                    head.recent[p] = TokenRing::from_vec(recent, d);
                }
            }
            s.layers[layer].0 = reg;
        }
        Ok(s)
    }
}

impl KvStore for ScalarStore {
    fn shape(&self) -> &KvShape {
        &self.shape
    }
    fn spec(&self) -> &KvSpec {
        &self.spec
    }
    fn num_tokens(&self, layer: usize) -> Result<usize> {
        Ok(self.regions(layer)?.total())
    }
    fn regions(&self, layer: usize) -> Result<Regions> {
        self.shape.check_layer(layer)?;
        Ok(self.layers[layer].0)
    }
    fn prefill(&mut self, layer: usize, keys: &[f32], values: &[f32]) -> Result<()> {
        self.push(layer, keys, values, "prefill")
    }
    fn append(&mut self, layer: usize, key: &[f32], value: &[f32]) -> Result<()> {
        if key.len() != self.shape.token_elems() {
            return Err(KvError::shape(
                "append",
                format!("KV heads x head_dim = {} values", self.shape.token_elems()),
                key.len(),
            ));
        }
        self.push(layer, key, value, "append")
    }
    fn reconstruct(&self, layer: usize, head: usize) -> Result<DenseKv> {
        self.shape.check_head(layer, head)?;
        let (reg, heads) = &self.layers[layer];
        let h = &heads[head];
        let mut out = [Vec::new(), Vec::new()];
        for (p, o) in out.iter_mut().enumerate() {
            *o = TokenSlices::new(&h.sinks[p], &[], self.shape.head_dim()).to_f32();
            o.extend(self.dequantize(h, p));
            o.extend(h.recent[p].slices().to_f32());
        }
        let [keys, values] = out;
        Ok(DenseKv {
            heads: 1,
            tokens: reg.total(),
            head_dim: self.shape.head_dim(),
            keys,
            values,
        })
    }
    fn memory_report(&self) -> MemoryReport {
        let layers: Vec<Regions> = self.layers.iter().map(|l| l.0).collect();
        account_regions(&self.shape, &self.spec, &layers, 0, 0)
            .expect("the spec was validated at construction")
    }
    fn heap_bytes(&self) -> HeapBytes {
        let mut b = HeapBytes::default();
        for head in self.layers.iter().flat_map(|l| &l.1) {
            for p in 0..2 {
                b.add(&head.sinks[p]);
                b.add(&head.codes[p]);
                b.add(&head.params[p]);
                b.add(&head.exponents[p]);
                b.add_raw(head.recent[p].used_bytes(), head.recent[p].capacity_bytes());
            }
        }
        b
    }
    fn reserve(&mut self, tokens: usize) {
        let n = Regions::nominal(&self.spec, tokens);
        let d = self.shape.head_dim();
        let rb = self.row_bytes;
        let plen = [self.params_len(n.encoded, 0), self.params_len(n.encoded, 1)];
        let elen = self.exponents_len(n.encoded);
        // The window fills up to `R + G - 1` tokens before a group of `G` leaves it.
        let ring = (tokens - n.sinks).min(self.sc.window + self.sc.token_group() - 1);
        for head in self.layers.iter_mut().flat_map(|l| &mut l.1) {
            for p in 0..2 {
                let v = &mut head.sinks[p];
                v.reserve_exact((n.sinks * d).saturating_sub(v.len()));
                let c = &mut head.codes[p];
                c.reserve_exact((n.encoded * rb).saturating_sub(c.len()));
                let q = &mut head.params[p];
                q.reserve_exact(plen[p].saturating_sub(q.len()));
                let e = &mut head.exponents[p];
                e.reserve_exact(elen.saturating_sub(e.len()));
                head.recent[p].reserve_tokens(ring);
            }
        }
    }
    fn shrink_to_fit(&mut self) {
        for head in self.layers.iter_mut().flat_map(|l| &mut l.1) {
            for p in 0..2 {
                head.sinks[p].shrink_to_fit();
                head.codes[p].shrink_to_fit();
                head.params[p].shrink_to_fit();
                head.exponents[p].shrink_to_fit();
                head.recent[p].shrink_to_fit();
            }
        }
    }
    fn to_bytes(&self) -> Vec<u8> {
        let mut w = persist::header(&self.spec, &self.shape);
        for (reg, heads) in &self.layers {
            w.u64(reg.sinks);
            w.u64(reg.encoded);
            w.u64(reg.recent);
            for head in heads {
                for p in 0..2 {
                    w.f16s(&head.sinks[p]);
                    w.bytes(&head.codes[p]);
                    w.f16s(&head.params[p]);
                    w.bytes(&head.exponents[p]);
                    for part in head.recent[p].slices().parts() {
                        w.f16s(part);
                    }
                }
            }
        }
        persist::finish(w)
    }
    fn as_scalar(&self) -> Option<&ScalarStore> {
        Some(self)
    }
}
