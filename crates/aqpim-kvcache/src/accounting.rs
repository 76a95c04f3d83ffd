//! Exact memory accounting: bytes by component, effective bits per element
//! and the FP16 baseline, from one function used both for a real cache and
//! for a shape that is never allocated (`aqpim kv stats`).
//!
//! What is counted is every byte that holds cache data: codes, codebooks
//! (f32, as held), FP16 tokens, and per-group scales (FP16 `(min, scale)`
//! pairs, or one E8M0 exponent byte per MX group). Fixed bookkeeping (a
//! few integers per layer and per head) is not counted; neither are the
//! nearest-centroid search tables that `aqpim-pq` derives from each codebook
//! in memory (they are rebuilt from the codebook and stored nowhere else).

use crate::error::{KvError, Result};
use crate::shape::KvShape;
use crate::spec::KvSpec;

/// How one layer's tokens are split between storage regions. Every KV head
/// of a layer has the same split. Token positions: sinks `[0, sinks)`,
/// encoded `[sinks, sinks + encoded)`, recent `[sinks + encoded, total)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Regions {
    /// Leading tokens kept in FP16 (attention sinks).
    pub sinks: usize,
    /// Tokens stored compressed (PQ codes or scalar-quantized).
    pub encoded: usize,
    /// Trailing tokens kept in FP16 (the recent window; for the dense store, every token).
    pub recent: usize,
}

impl Regions {
    /// Total tokens.
    pub fn total(&self) -> usize {
        self.sinks + self.encoded + self.recent
    }

    /// The split a freshly built cache of this spec has after `ctx` tokens
    /// (prefilled or appended; online PQ training, no codebooks supplied):
    ///
    /// - dense: every token recent;
    /// - pq: `sinks = min(ctx, S)`; of the rest, all but the last `R` are
    ///   encoded, once the layer holds at least `train_min` tokens (before
    ///   that, codebooks do not exist yet and the rest stays in FP16);
    /// - scalar: `sinks = min(ctx, S)`; of the rest, whole groups of `G`
    ///   tokens that have left the window of `R` are quantized
    ///   (`floor((rest - R) / G) * G`), the others stay in FP16; with
    ///   `mx=true` tokens leave one by one (`rest - R`, see
    ///   [`crate::ScalarSpec::token_group`]).
    ///
    /// This is layer 0's split; with `flush = B > 1` layers flush at
    /// staggered points, see [`Regions::nominal_layer`].
    pub fn nominal(spec: &KvSpec, ctx: usize) -> Regions {
        Self::nominal_layer(spec, ctx, 0, 1)
    }

    /// The split of layer `layer` of `num_layers` after `ctx` tokens; for pq,
    /// `encoded = PqSpec::encoded_target(ctx, layer, num_layers)` once
    /// `ctx >= train_min`.
    pub fn nominal_layer(spec: &KvSpec, ctx: usize, layer: usize, num_layers: usize) -> Regions {
        match spec {
            KvSpec::Dense => Regions {
                sinks: 0,
                encoded: 0,
                recent: ctx,
            },
            KvSpec::Pq(p) => {
                let sinks = ctx.min(p.regions.sinks);
                let rest = ctx - sinks;
                let encoded = if ctx >= p.train_threshold() {
                    p.encoded_target(ctx, layer, num_layers)
                } else {
                    0
                };
                Regions {
                    sinks,
                    encoded,
                    recent: rest - encoded,
                }
            }
            KvSpec::Scalar(s) => {
                let sinks = ctx.min(s.sinks);
                let rest = ctx - sinks;
                let g = s.token_group();
                let encoded = rest.saturating_sub(s.window) / g * g;
                Regions {
                    sinks,
                    encoded,
                    recent: rest - encoded,
                }
            }
        }
    }
}

/// Bytes by component. Keys and values are itemized where they can differ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ComponentBytes {
    /// Key codes (PQ: `tokens x row bytes`; scalar: packed `bits`-bit integers).
    pub key_codes: u64,
    /// Value codes.
    pub value_codes: u64,
    /// Key codebooks: `M * ksub * dsub` f32 values each.
    pub key_codebooks: u64,
    /// Value codebooks.
    pub value_codebooks: u64,
    /// FP16 attention-sink tokens, keys and values.
    pub sinks: u64,
    /// FP16 recent-window tokens, keys and values (dense store: all tokens).
    pub recent: u64,
    /// Per-group minimum and scale (FP16) of the scalar store, or its
    /// per-group E8M0 exponents (one byte) with `mx=true`.
    pub metadata: u64,
    /// FP16 copies of PQ outlier tokens (`outliers=`), keys and values.
    pub outliers: u64,
}

impl ComponentBytes {
    /// Sum of every component.
    pub fn total(&self) -> u64 {
        self.key_codes
            + self.value_codes
            + self.key_codebooks
            + self.value_codebooks
            + self.sinks
            + self.recent
            + self.metadata
            + self.outliers
    }
}

/// Bits per cached element (keys and values together), by component.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct BitsPerElement {
    /// Everything counted: `8 * total_bytes / elements`.
    pub total: f64,
    /// Codes (keys and values).
    pub codes: f64,
    /// Codebooks.
    pub codebooks: f64,
    /// FP16 sink, recent and outlier tokens.
    pub full_precision: f64,
    /// Scales and minima (or MX exponents).
    pub metadata: f64,
}

/// The memory taken by a cache of some shape and spec.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemoryReport {
    /// The spec, canonical form.
    pub spec: String,
    /// The shape.
    pub shape: KvShape,
    /// Tokens of the longest layer (the context length for a uniform cache).
    pub ctx: usize,
    /// Tokens per region, summed over layers.
    pub tokens_by_region: Regions,
    /// Cached elements: `2 * sum over layers of tokens * H_kv * d` (keys and values).
    pub elements: u64,
    /// Bytes by component.
    pub bytes: ComponentBytes,
    /// Sum of `bytes`.
    pub total_bytes: u64,
    /// The same elements in FP16: `2 * elements`.
    pub fp16_bytes: u64,
    /// Bits per element, by component.
    pub bits_per_element: BitsPerElement,
    /// `fp16_bytes / total_bytes`.
    pub compression_ratio: f64,
}

/// The accounting of an (unallocated) cache of `ctx` tokens in every layer,
/// split as [`Regions::nominal_layer`] says, with a codebook present once a
/// (layer, head) using it has encoded a token.
pub fn account(shape: &KvShape, spec: &KvSpec, ctx: usize) -> Result<MemoryReport> {
    spec.validate(shape)?;
    crate::limits::check_ctx("the context", ctx)?;
    let l_count = shape.num_layers();
    let layers: Vec<Regions> = (0..l_count)
        .map(|l| Regions::nominal_layer(spec, ctx, l, l_count))
        .collect();
    // A codebook exists once a (layer, head) using it has encoded a token;
    // it has the format of that layer's class (a group never spans classes).
    let mut books = [0usize; 2];
    if let KvSpec::Pq(p) = spec {
        let mut used = vec![None; p.training.share.num_groups(shape)];
        for (l, r) in layers.iter().enumerate() {
            for h in 0..shape.num_kv_heads() {
                let g = p.training.share.group_of(shape, l, h);
                if r.encoded > 0 {
                    used[g] = Some(p.class_of(l));
                }
            }
        }
        for c in used.into_iter().flatten() {
            books[c] += 1;
        }
    }
    account_regions_by_class(shape, spec, &layers, [books, books])
}

/// The accounting of a cache whose layer `l` is split as `layers[l]`, holding
/// `key_codebooks` K and `value_codebooks` V codebooks. Real stores report
/// their memory through this function.
///
/// Per layer with split `(s, e, r)`, `H = H_kv` heads of `d` elements:
/// - FP16 tokens: `(s + r) * H * d * 2` bytes for keys and again for values;
/// - PQ codes: `e * H * row` with, under `pack=true`, `row = ceil(M / 4)` for
///   `nbits <= 2` (four codes per byte) and `ceil(M / 2)` for `nbits <= 4`
///   (two per byte), and `row = M` otherwise ([`aqpim_pq::CodeFormat::row_bytes`]);
///   codebooks `M * ksub * dsub * 4`
///   each (`* 2` with `cb16=true`), plus their pre-transform if any (`4 d`
///   for `mu`, f32, and for a matrix `6 d` when it is monomial, a `u16`
///   permutation and an f32 diagonal, or `8 d^2` for `A` and `A^-1` under
///   `whiten=full`; see [`crate::PqSpec::transform_bytes`]);
///   outlier tokens (`outliers=`): `floor(e * outliers / 1000) * H * d * 2`
///   bytes for keys and again for values, on top of their codes;
/// - scalar codes: `e * H * ceil(d * bits / 8)` per part; metadata (min and
///   scale, FP16): keys `(e / G) * H * d * 4`, values `e * H * (d / G) * 4`;
///   with `mx=true`, one E8M0 exponent byte per group instead, `e * H * (d / G)`
///   for keys and again for values (`bits + 8 / G` bits per encoded element).
pub fn account_regions(
    shape: &KvShape,
    spec: &KvSpec,
    layers: &[Regions],
    key_codebooks: usize,
    value_codebooks: usize,
) -> Result<MemoryReport> {
    account_regions_by_class(
        shape,
        spec,
        layers,
        [[key_codebooks, 0], [value_codebooks, 0]],
    )
}

/// [`account_regions`] for a spec whose layers differ in format
/// (`wide_layers=`): `books[part][class]` codebooks of each part and format
/// class (0 the base format, 1 the wide layers'; [`crate::PqSpec::class_of`]).
/// `layers[l]` is layer `l`, whose codes take its class's row bytes.
pub fn account_regions_by_class(
    shape: &KvShape,
    spec: &KvSpec,
    layers: &[Regions],
    books: [[usize; 2]; 2],
) -> Result<MemoryReport> {
    spec.validate(shape)?;
    let (h, d) = (shape.num_kv_heads() as u64, shape.head_dim() as u64);
    // Every count below is checked: a shape or context past the limits of
    // `crate::limits` is refused before this point, and a caller-built
    // `layers` that still overflows 64 bits is an error, never a wrapped total.
    let mut b = ComponentBytes::default();
    let mut by_region = Regions::default();
    let mut elements = 0u64;
    for r in layers {
        add_tokens(&mut by_region.sinks, r.sinks)?;
        add_tokens(&mut by_region.encoded, r.encoded)?;
        add_tokens(&mut by_region.recent, r.recent)?;
        let total = (r.sinks as u64)
            .checked_add(r.encoded as u64)
            .and_then(|t| t.checked_add(r.recent as u64))
            .ok_or_else(overflow)?;
        add(&mut elements, mul(&[2, total, h, d])?)?;
        add(&mut b.sinks, mul(&[2, r.sinks as u64, h, d, 2])?)?;
        add(&mut b.recent, mul(&[2, r.recent as u64, h, d, 2])?)?;
    }
    for (l, r) in layers.iter().enumerate() {
        add_encoded(shape, spec, l, r, &mut b)?;
    }
    if let KvSpec::Pq(p) = spec {
        add_codebooks(shape, p, books, &mut b)?;
    }
    [
        b.key_codes,
        b.value_codes,
        b.key_codebooks,
        b.value_codebooks,
        b.sinks,
        b.recent,
        b.metadata,
        b.outliers,
    ]
    .iter()
    .try_fold(0u64, |a, &v| a.checked_add(v))
    .ok_or_else(overflow)?;
    mul(&[2, elements])?;
    Ok(report(shape, spec, layers, by_region, elements, b))
}

fn overflow() -> KvError {
    KvError::BadShape("the cache's size overflows 64 bits".into())
}

/// The product of `factors`, or an error when it overflows 64 bits.
fn mul(factors: &[u64]) -> Result<u64> {
    factors
        .iter()
        .try_fold(1u64, |a, &f| a.checked_mul(f))
        .ok_or_else(overflow)
}

fn add(acc: &mut u64, v: u64) -> Result<()> {
    *acc = acc.checked_add(v).ok_or_else(overflow)?;
    Ok(())
}

fn add_tokens(acc: &mut usize, v: usize) -> Result<()> {
    *acc = acc.checked_add(v).ok_or_else(overflow)?;
    Ok(())
}

/// Adds the bytes of layer `layer`'s encoded tokens (`r.encoded` per head):
/// codes, outlier copies and scalar metadata.
fn add_encoded(
    shape: &KvShape,
    spec: &KvSpec,
    layer: usize,
    r: &Regions,
    b: &mut ComponentBytes,
) -> Result<()> {
    let (h, d) = (shape.num_kv_heads() as u64, shape.head_dim() as u64);
    let e = r.encoded as u64;
    match spec {
        KvSpec::Dense => {}
        KvSpec::Pq(p) => {
            // `account_regions` validated the spec against the shape.
            let row = |part| p.format_at(layer, part).row_bytes(shape.head_dim()) as u64;
            add(&mut b.key_codes, mul(&[e, h, row(crate::KvPart::Keys)])?)?;
            add(
                &mut b.value_codes,
                mul(&[e, h, row(crate::KvPart::Values)])?,
            )?;
            add(
                &mut b.outliers,
                mul(&[2, p.outlier_budget(r.encoded) as u64, h, d, 2])?,
            )?;
        }
        KvSpec::Scalar(s) => {
            let row = mul(&[d, u64::from(s.bits)])?.div_ceil(8);
            add(&mut b.key_codes, mul(&[e, h, row])?)?;
            add(&mut b.value_codes, mul(&[e, h, row])?)?;
            let g = s.group as u64;
            if s.mx {
                add(&mut b.metadata, mul(&[2, e, h, d / g])?)?;
            } else {
                add(&mut b.metadata, mul(&[e / g, h, d, 4])?)?;
                add(&mut b.metadata, mul(&[e, h, d / g, 4])?)?;
            }
        }
    }
    Ok(())
}

/// Sets the bytes of `books[part][class]` codebooks, each with its
/// pre-transform.
fn add_codebooks(
    shape: &KvShape,
    p: &crate::PqSpec,
    books: [[usize; 2]; 2],
    b: &mut ComponentBytes,
) -> Result<()> {
    let len = |class, part| {
        p.class_format(class, part)
            .params(shape.head_dim())
            .map(|x| x.codebook_len())
    };
    let cb = if p.training.fp16_codebooks { 2 } else { 4 };
    let (tk, tv) = (
        p.transform_bytes(crate::KvPart::Keys, shape.head_dim()) as u64,
        p.transform_bytes(crate::KvPart::Values, shape.head_dim()) as u64,
    );
    let book = |n: usize, len: usize, t: u64| -> Result<u64> {
        let one = mul(&[len as u64, cb])?
            .checked_add(t)
            .ok_or_else(overflow)?;
        mul(&[n as u64, one])
    };
    let (k, v) = (crate::KvPart::Keys, crate::KvPart::Values);
    b.key_codebooks = book(books[0][0], len(0, k)?, tk)?
        .checked_add(book(books[0][1], len(1, k)?, tk)?)
        .ok_or_else(overflow)?;
    b.value_codebooks = book(books[1][0], len(0, v)?, tv)?
        .checked_add(book(books[1][1], len(1, v)?, tv)?)
        .ok_or_else(overflow)?;
    Ok(())
}

/// The report of checked totals: bits per element by component and the
/// compression against FP16.
fn report(
    shape: &KvShape,
    spec: &KvSpec,
    layers: &[Regions],
    by_region: Regions,
    elements: u64,
    b: ComponentBytes,
) -> MemoryReport {
    let total = b.total();
    let per = |bytes: u64| {
        if elements == 0 {
            0.0
        } else {
            8.0 * bytes as f64 / elements as f64
        }
    };
    MemoryReport {
        spec: spec.to_string(),
        shape: *shape,
        ctx: layers.iter().map(Regions::total).max().unwrap_or(0),
        tokens_by_region: by_region,
        elements,
        bytes: b,
        total_bytes: total,
        fp16_bytes: 2 * elements,
        bits_per_element: BitsPerElement {
            total: per(total),
            codes: per(b.key_codes + b.value_codes),
            codebooks: per(b.key_codebooks + b.value_codebooks),
            full_precision: per(b.sinks + b.recent + b.outliers),
            metadata: per(b.metadata),
        },
        compression_ratio: if total == 0 {
            0.0
        } else {
            (2 * elements) as f64 / total as f64
        },
    }
}

/// Heap bytes a store actually holds, counted by walking its buffers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HeapBytes {
    /// Bytes of buffer contents (`len * size_of` of every buffer).
    pub used: u64,
    /// Bytes allocated (`capacity * size_of`); equal to `used` after
    /// `shrink_to_fit`, or when growth was reserved exactly.
    pub capacity: u64,
}

impl HeapBytes {
    pub(crate) fn add<T>(&mut self, v: &Vec<T>) {
        self.used += (v.len() * size_of::<T>()) as u64;
        self.capacity += (v.capacity() * size_of::<T>()) as u64;
    }
    pub(crate) fn add_raw(&mut self, used: usize, capacity: usize) {
        self.used += used as u64;
        self.capacity += capacity as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_pq_2_bits_plus_overheads() {
        let spec: KvSpec = "pq:dsub=4,nbits=8,sinks=4,window=128".parse().unwrap();
        let r = account(&KvShape::llama2_7b(), &spec, 128 * 1024).unwrap();
        // M = 32 one-byte codes per 128 elements = 2 bits on encoded tokens.
        let encoded_fraction = (128 * 1024 - 132) as f64 / (128.0 * 1024.0);
        assert!((r.bits_per_element.codes - 2.0 * encoded_fraction).abs() < 1e-12);
        // Codebooks: 2 * 1024 of 32 * 256 * 4 f32.
        assert_eq!(
            r.bytes.key_codebooks + r.bytes.value_codebooks,
            2 * 1024 * 32 * 256 * 4 * 4
        );
        assert_eq!(r.total_bytes, r.bytes.total());
        assert_eq!(r.fp16_bytes, 2 * 2 * 32 * 32 * 128 * 128 * 1024);
        let sum = r.bits_per_element.codes
            + r.bits_per_element.codebooks
            + r.bits_per_element.full_precision;
        assert!((r.bits_per_element.total - sum).abs() < 1e-9);
    }

    #[test]
    fn two_bit_codes_pack_four_per_byte() {
        // Llama-2-7B, dsub = 1: M = 128 subspaces of 2-bit codes, 32 bytes per
        // token and part (128 bytes unpacked, 64 as nibbles before 2-bit packing).
        let shape = KvShape::llama2_7b();
        let ctx = 128 * 1024;
        let packed = account(&shape, &"pq:dsub=1,nbits=2".parse().unwrap(), ctx).unwrap();
        let loose = account(
            &shape,
            &"pq:dsub=1,nbits=2,pack=false".parse().unwrap(),
            ctx,
        )
        .unwrap();
        let e = packed.tokens_by_region.encoded as u64;
        assert_eq!(e, 32 * (ctx as u64 - 132));
        assert_eq!(packed.bytes.key_codes, e * 32 * 32);
        assert_eq!(packed.bytes.value_codes, e * 32 * 32);
        assert_eq!(loose.bytes.key_codes, e * 32 * 128);
        // 2 bits per element of encoded tokens.
        let encoded_fraction = (ctx - 132) as f64 / ctx as f64;
        assert!((packed.bits_per_element.codes - 2.0 * encoded_fraction).abs() < 1e-12);
        // Odd M: ceil(M / 4) bytes (M = 5 of d = 10 -> 2 bytes), nbits = 1 alike.
        let small = KvShape::new(1, 1, 10).unwrap();
        let r = account(
            &small,
            &"pq:dsub=2,kbits=1,vbits=2,sinks=0,window=0"
                .parse()
                .unwrap(),
            7,
        )
        .unwrap();
        assert_eq!((r.bytes.key_codes, r.bytes.value_codes), (14, 14));
    }

    #[test]
    fn dense_is_16_bits_and_scalar_counts_scales() {
        let shape = KvShape::new(2, 4, 64).unwrap();
        let d = account(&shape, &KvSpec::Dense, 1000).unwrap();
        assert_eq!(d.bits_per_element.total, 16.0);
        assert_eq!(d.total_bytes, d.fp16_bytes);
        let s = account(
            &shape,
            &"scalar:bits=2,group=32,window=0".parse().unwrap(),
            64,
        )
        .unwrap();
        // 2 bits + keys' (min, scale) per 32 tokens per channel + values' per 32 channels per token.
        assert!(
            (s.bits_per_element.total - (2.0 + 1.0)).abs() < 1e-12,
            "{}",
            s.bits_per_element.total
        );
    }

    #[test]
    fn mx_counts_one_exponent_byte_per_group() {
        let shape = KvShape::new(2, 4, 64).unwrap();
        for (spec, bits) in [
            ("scalar:bits=4,mx=true,window=0", 4.25),
            ("scalar:bits=2,group=16,mx=true,window=0", 2.5),
        ] {
            let s = account(&shape, &spec.parse().unwrap(), 33).unwrap();
            assert_eq!(s.tokens_by_region.encoded, 2 * 33, "{spec}");
            assert_eq!(s.bits_per_element.total, bits, "{spec}");
        }
        let s = account(
            &shape,
            &"scalar:bits=4,group=32,mx=true,window=0".parse().unwrap(),
            5,
        )
        .unwrap();
        // 2 layers x 5 tokens x 4 heads x 2 groups, keys and values.
        assert_eq!(s.bytes.metadata, 2 * 2 * 5 * 4 * 2);
    }

    #[test]
    fn nominal_regions() {
        let pq: KvSpec = "pq:sinks=4,window=8,nbits=2".parse().unwrap();
        assert_eq!(
            Regions::nominal(&pq, 3),
            Regions {
                sinks: 3,
                encoded: 0,
                recent: 0
            }
        );
        assert_eq!(
            Regions::nominal(&pq, 20),
            Regions {
                sinks: 4,
                encoded: 8,
                recent: 8
            }
        );
        let sc: KvSpec = "scalar:group=4,window=2".parse().unwrap();
        assert_eq!(
            Regions::nominal(&sc, 13),
            Regions {
                sinks: 0,
                encoded: 8,
                recent: 5
            }
        );
        let mx: KvSpec = "scalar:group=4,window=2,sinks=1,mx=true".parse().unwrap();
        assert_eq!(
            Regions::nominal(&mx, 13),
            Regions {
                sinks: 1,
                encoded: 10,
                recent: 2
            }
        );
    }
}
