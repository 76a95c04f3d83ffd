//! [`PqStore`]: the AQPIM store. Per (layer, KV head): FP16 attention sinks,
//! PQ codes of the middle tokens, and an FP16 recent window; separate K and V
//! codebooks, per layer and head unless shared.

use aqpim_pq::transform::{channel_mean, matmul, permutation_matrix, sym_sqrt};
use aqpim_pq::{CodeWidth, PqParams, PreTransform, ProductQuantizer, TrainOptions};
use half::f16;
use rayon::prelude::*;

use crate::accounting::{account_regions, HeapBytes, MemoryReport, Regions};
use crate::error::{KvError, KvPart, Result};
use crate::persist::{self, Reader};
use crate::shape::KvShape;
use crate::spec::{KeyMetric, KvSpec, PqSpec};
use crate::store::{DenseKv, KvStore};
use crate::tokens::{check_layer_input, extend_f16, extend_f32, round_f16, TokenRing, TokenSlices};

const PARTS: [KvPart; 2] = [KvPart::Keys, KvPart::Values];

fn part_index(part: KvPart) -> usize {
    match part {
        KvPart::Keys => 0,
        KvPart::Values => 1,
    }
}

/// Borrowed PQ codes of one head: `tokens x row_bytes` bytes, contiguous,
/// oldest first, in the layout [`Codes::width`] names. [`CodeWidth::Byte`]:
/// `row_bytes = M`, one code per byte. [`CodeWidth::Nibble`] (`nbits <= 4`,
/// packed): `row_bytes = ceil(M / 2)`, byte `i` holds subspace `2i` in its low
/// nibble and `2i + 1` in its high nibble ([`aqpim_pq::pack_4bit`]).
/// [`CodeWidth::Crumb`] (`nbits <= 2`, packed): `row_bytes = ceil(M / 4)`,
/// byte `i` holds subspace `4i + j` in bits `2j .. 2j + 2`
/// ([`aqpim_pq::pack_2bit`]). Padding bits are zero.
///
/// One-byte and 4-bit codes come with the same codes transposed in whole
/// blocks of 64 tokens as well ([`Codes::blocks`]), for the CPU kernel.
#[derive(Debug, Clone, Copy)]
pub struct Codes<'a> {
    data: &'a [u8],
    blocks: &'a [u8],
    lane_nibbles: bool,
    num_subspaces: usize,
    row_bytes: usize,
    width: CodeWidth,
}

impl<'a> Codes<'a> {
    /// The raw bytes, `tokens x row_bytes`.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
    /// The codes of the first [`Codes::block_tokens`] tokens (whole blocks
    /// of 64) transposed. Keys: one code a byte, block `b` is `M x 64`
    /// bytes, the code of token `64 b + t` in subspace `m` at
    /// `b * M * 64 + m * 64 + t` (the layout of
    /// [`aqpim_pq::transpose_block`]). Values ([`Codes::lane_nibbles`]): two
    /// codes a byte, `M x 32` bytes a block in the layout of
    /// [`aqpim_pq::pack_lane_nibbles`]. Kept by the store for one-byte and
    /// 4-bit key codes and for such value codes of at most 16 centroids;
    /// empty otherwise.
    pub fn blocks(&self) -> &'a [u8] {
        self.blocks
    }
    /// Whether [`Codes::blocks`] holds lane nibbles (values) rather than one
    /// code a byte (keys).
    pub fn lane_nibbles(&self) -> bool {
        self.lane_nibbles
    }
    /// Bytes of one 64-token block of [`Codes::blocks`].
    pub fn block_bytes(&self) -> usize {
        blocks::block_bytes(self.num_subspaces, self.lane_nibbles)
    }
    /// Tokens that [`Codes::blocks`] covers (a multiple of 64).
    pub fn block_tokens(&self) -> usize {
        match self.block_bytes() {
            0 => 0,
            b => self.blocks.len() / b * aqpim_pq::SCAN_BLOCK,
        }
    }
    /// Number of encoded tokens.
    pub fn tokens(&self) -> usize {
        self.data.len() / self.row_bytes
    }
    /// Subspaces per token (M).
    pub fn num_subspaces(&self) -> usize {
        self.num_subspaces
    }
    /// Bytes per token.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }
    /// How the codes are stored: one, two or four per byte.
    pub fn width(&self) -> CodeWidth {
        self.width
    }
    /// The bytes of token `t`. Panics if `t >= tokens()`.
    pub fn row(&self, t: usize) -> &'a [u8] {
        &self.data[t * self.row_bytes..(t + 1) * self.row_bytes]
    }
    /// Code of token `t` in subspace `m`.
    /// Panics if `t >= tokens()` or `m >= M`.
    pub fn code(&self, t: usize, m: usize) -> u8 {
        assert!(
            m < self.num_subspaces,
            "subspace {m} of {}",
            self.num_subspaces
        );
        self.width.code(self.row(t), m)
    }
    /// All codes, one per byte, `tokens x M`.
    pub fn to_u8(&self) -> Vec<u8> {
        match self.width {
            CodeWidth::Byte => self.data.to_vec(),
            w => self
                .data
                .chunks_exact(self.row_bytes)
                .flat_map(|row| (0..self.num_subspaces).map(move |m| w.code(row, m)))
                .collect(),
        }
    }
}

/// An encoded token kept in FP16 as well (an outlier): attention uses these
/// rows instead of its codes.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierToken {
    /// Position among the encoded tokens (`0..encoded`).
    pub index: usize,
    /// Its quantization error (relative, keys plus values), which ranked it.
    pub error: f32,
    /// The FP16 key.
    pub key: Vec<f16>,
    /// The FP16 value.
    pub value: Vec<f16>,
}

/// Everything attention needs of one (layer, KV head), borrowed. Token
/// positions follow [`Regions`]: sinks first, then encoded, then recent.
#[derive(Debug, Clone, Copy)]
pub struct PqHeadView<'a> {
    /// Token counts of the three regions.
    pub regions: Regions,
    /// FP16 sink keys, `sinks x d`.
    pub sink_keys: TokenSlices<'a>,
    /// FP16 sink values, `sinks x d`.
    pub sink_values: TokenSlices<'a>,
    /// Key codes of the encoded tokens.
    pub key_codes: Codes<'a>,
    /// Value codes of the encoded tokens.
    pub value_codes: Codes<'a>,
    /// FP16 recent keys, `recent x d`, oldest first (two parts: a ring).
    pub recent_keys: TokenSlices<'a>,
    /// FP16 recent values.
    pub recent_values: TokenSlices<'a>,
    /// The key codebook, once trained or supplied.
    pub key_codebook: Option<&'a ProductQuantizer>,
    /// The value codebook.
    pub value_codebook: Option<&'a ProductQuantizer>,
    /// The key pre-transform (`None`: identity): codes hold `A (k - mu)`.
    pub key_transform: Option<&'a PreTransform>,
    /// The value pre-transform.
    pub value_transform: Option<&'a PreTransform>,
    /// Outlier tokens, by ascending `index`.
    pub outliers: &'a [OutlierToken],
}

#[derive(Debug, Clone)]
struct PqHead {
    /// `[part]`: sink tokens, `sinks x d`.
    sinks: [Vec<f16>; 2],
    /// `[part]`: codes, `encoded x row_bytes[part]`.
    codes: [Vec<u8>; 2],
    /// `[part]`: the whole 64-token blocks of `codes` transposed (see
    /// [`Codes::blocks`]; empty for parts that keep none).
    blocks: [Vec<u8>; 2],
    /// `[part]`: recent tokens.
    recent: [TokenRing; 2],
    /// Outlier tokens, by ascending index.
    outliers: Vec<OutlierToken>,
}

#[derive(Debug, Clone)]
struct PqLayer {
    regions: Regions,
    heads: Vec<PqHead>,
}

/// The AQPIM store.
///
/// Token life cycle, per layer: the first `S` tokens become FP16 sinks; the
/// others enter the FP16 recent window; when the window holds more than `R`
/// (at the layer's flush points when `flush = B > 1`, see [`PqSpec::flush`]),
/// its oldest tokens are encoded with the current codebooks (of their FP16
/// values, so that encoding does not depend on when it happens). A layer
/// without codebooks trains them (online, one k-means per subspace, K and V
/// apart) the first time a token must be encoded and the layer holds at least
/// `train_min` tokens, on every token it holds; until then the window grows.
/// Codebooks supplied with [`PqStore::set_codebooks`] (offline calibration)
/// skip training. With shared codebooks (`share=heads|layers|all`) the first
/// layer that needs a group's codebook trains it on its own heads of the group.
#[derive(Debug, Clone)]
pub struct PqStore {
    shape: KvShape,
    spec: KvSpec,
    pq: PqSpec,
    /// `[part]`
    params: [PqParams; 2],
    row_bytes: [usize; 2],
    /// `[part]`: how codes are stored (one, two or four per byte).
    widths: [CodeWidth; 2],
    /// `[part][group]`
    codebooks: [Vec<Option<ProductQuantizer>>; 2],
    /// `[part][group]`: pre-transforms (`None`: identity).
    transforms: [Vec<Option<PreTransform>>; 2],
    layers: Vec<PqLayer>,
}

/// The pre-transform that `spec` asks for on `part` (`None`: identity), fit
/// to `data` (`n x d` training rows): `x' = P M (x - mu)` with `mu` the mean
/// (`center`), `M` the per-channel `1 / std` (`scale`) or, for keys under
/// `whiten`, the query metric's square root (`diag`: per-channel RMS of the
/// queries, `full`: `S^(1/2)` of `S = E[q q^T]`, which `query_moment` holds,
/// `d x d` row-major), and `P` the subspace layout's permutation.
pub fn fit_transform(
    spec: &PqSpec,
    part: KvPart,
    data: &[f32],
    d: usize,
    query_moment: Option<&[f64]>,
) -> Result<Option<PreTransform>> {
    if !spec.transforms(part) {
        return Ok(None);
    }
    let dsub = spec.params(d, part)?.dsub();
    let mean = if spec.transforms.center {
        channel_mean(data, d, None)
    } else {
        vec![0.0; d]
    };
    let diag = |v: &[f32]| {
        let mut m = vec![0f32; d * d];
        v.iter().enumerate().for_each(|(i, &x)| m[i * d + i] = x);
        m
    };
    let whiten = part == KvPart::Keys && spec.transforms.whiten != KeyMetric::Euclidean;
    let mut m: Option<Vec<f32>> = None;
    if whiten {
        let s = query_moment.ok_or_else(|| KvError::Incompatible {
            spec: KvSpec::Pq(*spec).to_string(),
            shape: format!("head_dim {d}"),
            reason: "whiten= needs calibration queries (aqpim pq calibrate)".into(),
        })?;
        if s.len() != d * d {
            return Err(KvError::shape("fit_transform", d * d, s.len()));
        }
        m = Some(match spec.transforms.whiten {
            KeyMetric::QueryDiagonal => {
                let top = (0..d).map(|i| s[i * d + i]).fold(0f64, f64::max).max(1e-30);
                diag(
                    &(0..d)
                        .map(|i| s[i * d + i].max(1e-6 * top).sqrt() as f32)
                        .collect::<Vec<_>>(),
                )
            }
            _ => sym_sqrt(s, d, 1e-6),
        });
    } else if spec.transforms.scale {
        let mu = channel_mean(data, d, None);
        let sq: Vec<f32> = data
            .iter()
            .zip(mu.iter().cycle())
            .map(|(x, m)| (x - m) * (x - m))
            .collect();
        let var = channel_mean(&sq, d, None);
        let top = var.iter().cloned().fold(0f32, f32::max).max(1e-30);
        m = Some(diag(
            &var.iter()
                .map(|&v| 1.0 / v.max(1e-6 * top).sqrt())
                .collect::<Vec<_>>(),
        ));
    }
    if spec.transforms.layout != crate::spec::SubspaceLayout::Contiguous {
        let p = permutation_matrix(&spec.transforms.layout.permutation(d, dsub));
        m = Some(match m {
            None => p,
            Some(m) => matmul(&p, &m, d),
        });
    }
    Ok(Some(PreTransform::new(mean, m)?))
}

/// Rounds a codebook's centroids to FP16 (`cb16=true`).
fn round_codebook(pq: ProductQuantizer) -> Result<ProductQuantizer> {
    let c = round_f16(pq.centroids());
    Ok(ProductQuantizer::from_centroids(pq.params(), c)?)
}

impl PqStore {
    /// An empty store.
    pub fn new(shape: KvShape, pq: PqSpec) -> Result<Self> {
        let spec = KvSpec::Pq(pq);
        spec.validate(&shape)?;
        let params = [
            pq.params(shape.head_dim(), KvPart::Keys)?,
            pq.params(shape.head_dim(), KvPart::Values)?,
        ];
        let d = shape.head_dim();
        let head = PqHead {
            sinks: Default::default(),
            codes: Default::default(),
            blocks: Default::default(),
            recent: [TokenRing::new(d), TokenRing::new(d)],
            outliers: Vec::new(),
        };
        let groups = pq.training.share.num_groups(&shape);
        Ok(PqStore {
            shape,
            spec,
            pq,
            params,
            row_bytes: [pq.key.row_bytes(d), pq.value.row_bytes(d)],
            widths: [pq.key.width(), pq.value.width()],
            codebooks: [vec![None; groups], vec![None; groups]],
            transforms: [vec![None; groups], vec![None; groups]],
            layers: vec![
                PqLayer {
                    regions: Regions::default(),
                    heads: vec![head; shape.num_kv_heads()]
                };
                shape.num_layers()
            ],
        })
    }

    /// The PQ parameters.
    pub fn pq_spec(&self) -> &PqSpec {
        &self.pq
    }

    /// PQ shape of the key or value codebooks.
    pub fn params(&self, part: KvPart) -> PqParams {
        self.params[part_index(part)]
    }

    /// The codebook `(layer, head)` encodes `part` with, if trained or supplied.
    pub fn codebook(
        &self,
        layer: usize,
        head: usize,
        part: KvPart,
    ) -> Result<Option<&ProductQuantizer>> {
        Ok(self.codebooks[part_index(part)][self.group(layer, head)?].as_ref())
    }

    /// The codebook and transform group of `(layer, head)`, once the head is checked.
    fn group(&self, layer: usize, head: usize) -> Result<usize> {
        self.shape.check_head(layer, head)?;
        Ok(self.pq.training.share.group_of(&self.shape, layer, head))
    }

    /// Borrowed view of one head: sinks, codes, recent window, codebooks.
    pub fn head(&self, layer: usize, head: usize) -> Result<PqHeadView<'_>> {
        self.shape.check_head(layer, head)?;
        let l = &self.layers[layer];
        let h = &l.heads[head];
        let d = self.shape.head_dim();
        let codes = |p: usize| Codes {
            data: &h.codes[p],
            blocks: &h.blocks[p],
            lane_nibbles: blocks::lane_nibbles(p),
            num_subspaces: self.params[p].num_subspaces(),
            row_bytes: self.row_bytes[p],
            width: self.widths[p],
        };
        let g = self.pq.training.share.group_of(&self.shape, layer, head);
        Ok(PqHeadView {
            regions: l.regions,
            sink_keys: TokenSlices::new(&h.sinks[0], &[], d),
            sink_values: TokenSlices::new(&h.sinks[1], &[], d),
            key_codes: codes(0),
            value_codes: codes(1),
            recent_keys: h.recent[0].slices(),
            recent_values: h.recent[1].slices(),
            key_codebook: self.codebooks[0][g].as_ref(),
            value_codebook: self.codebooks[1][g].as_ref(),
            key_transform: self.transforms[0][g].as_ref(),
            value_transform: self.transforms[1][g].as_ref(),
            outliers: &h.outliers,
        })
    }

    /// The pre-transform of `part` for the group of `(layer, head)`, if any.
    pub fn transform(
        &self,
        layer: usize,
        head: usize,
        part: KvPart,
    ) -> Result<Option<&PreTransform>> {
        Ok(self.transforms[part_index(part)][self.group(layer, head)?].as_ref())
    }

    /// Supplies calibrated pre-transforms for the group of `(layer, head)`
    /// (with [`PqStore::set_codebooks`]; `None` is the identity). Errors if
    /// their dimension is not `head_dim` or if the group already encoded tokens.
    pub fn set_transforms(
        &mut self,
        layer: usize,
        head: usize,
        keys: Option<PreTransform>,
        values: Option<PreTransform>,
    ) -> Result<()> {
        self.shape.check_head(layer, head)?;
        let d = self.shape.head_dim();
        for t in [&keys, &values].into_iter().flatten() {
            if t.dim() != d {
                return Err(KvError::shape("set_transforms", d, t.dim()));
            }
        }
        let g = self.pq.training.share.group_of(&self.shape, layer, head);
        let in_use = self.group_encoded(g);
        if in_use > 0 {
            return Err(KvError::CodebookInUse {
                part: KvPart::Keys,
                layer,
                head,
                tokens: in_use,
            });
        }
        self.transforms[0][g] = keys;
        self.transforms[1][g] = values;
        Ok(())
    }

    /// Encoded tokens of every layer using codebook group `g`.
    fn group_encoded(&self, g: usize) -> usize {
        (0..self.shape.num_layers())
            .filter(|&l| {
                (0..self.shape.num_kv_heads())
                    .any(|h| self.pq.training.share.group_of(&self.shape, l, h) == g)
            })
            .map(|l| self.layers[l].regions.encoded)
            .sum()
    }

    /// Supplies calibrated codebooks for the group of `(layer, head)` (every
    /// pair sharing them, under `share`). Errors if their shape differs from
    /// the spec's, or if the group's current codebooks already encoded tokens.
    pub fn set_codebooks(
        &mut self,
        layer: usize,
        head: usize,
        keys: ProductQuantizer,
        values: ProductQuantizer,
    ) -> Result<()> {
        self.shape.check_head(layer, head)?;
        for (p, pq) in [&keys, &values].into_iter().enumerate() {
            if pq.params() != self.params[p] {
                let show = |x: PqParams| {
                    format!(
                        "d = {}, M = {}, nbits = {}",
                        x.dim(),
                        x.num_subspaces(),
                        x.nbits()
                    )
                };
                return Err(KvError::CodebookShape {
                    part: PARTS[p],
                    layer,
                    head,
                    expected: show(self.params[p]),
                    got: show(pq.params()),
                });
            }
        }
        let g = self.pq.training.share.group_of(&self.shape, layer, head);
        let in_use = self.group_encoded(g);
        if in_use > 0 {
            return Err(KvError::CodebookInUse {
                part: KvPart::Keys,
                layer,
                head,
                tokens: in_use,
            });
        }
        let (keys, values) = if self.pq.training.fp16_codebooks {
            (round_codebook(keys)?, round_codebook(values)?)
        } else {
            (keys, values)
        };
        self.codebooks[0][g] = Some(keys);
        self.codebooks[1][g] = Some(values);
        Ok(())
    }

    /// Whether every head of `layer` has both codebooks.
    fn layer_ready(&self, layer: usize) -> bool {
        (0..self.shape.num_kv_heads()).all(|h| {
            let g = self.pq.training.share.group_of(&self.shape, layer, h);
            self.codebooks[0][g].is_some() && self.codebooks[1][g].is_some()
        })
    }

    /// Trains the missing codebooks of `layer`'s groups on every token the
    /// layer holds plus the `n` new ones (`keys`, `values`: `H x n x d`).
    fn train_layer(&mut self, layer: usize, keys: &[f32], values: &[f32], n: usize) -> Result<()> {
        let (h_count, d) = (self.shape.num_kv_heads(), self.shape.head_dim());
        if self.pq.needs_calibration() {
            return Err(KvError::Incompatible {
                spec: self.spec.to_string(),
                shape: self.shape.to_string(),
                reason: "whiten= and vweight= need calibrated codebooks (aqpim pq calibrate); online training cannot use them".into(),
            });
        }
        let share = self.pq.training.share;
        let mut groups: Vec<usize> = (0..h_count)
            .map(|h| share.group_of(&self.shape, layer, h))
            .collect();
        groups.dedup();
        for g in groups {
            for p in 0..2 {
                if self.codebooks[p][g].is_some() {
                    continue;
                }
                let input = if p == 0 { keys } else { values };
                let mut data = Vec::new();
                for h in (0..h_count).filter(|&h| share.group_of(&self.shape, layer, h) == g) {
                    let head = &self.layers[layer].heads[h];
                    extend_f32(&mut data, &head.sinks[p]);
                    data.extend(head.recent[p].slices().to_f32());
                    data.extend(round_f16(&input[h * n * d..(h + 1) * n * d]));
                }
                let opts = TrainOptions {
                    iterations: self.pq.training.iterations,
                    seed: self.pq.training.seed
                        ^ ((2 * g + p + 1) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    ..TrainOptions::default()
                };
                let xf = fit_transform(&self.pq, PARTS[p], &data, d, None)?;
                let data = match &xf {
                    Some(t) => t.apply(&data)?,
                    None => data,
                };
                let mut pq = ProductQuantizer::train(self.params[p], &data, &opts)?;
                if self.pq.training.fp16_codebooks {
                    pq = round_codebook(pq)?;
                }
                self.codebooks[p][g] = Some(pq);
                self.transforms[p][g] = xf;
            }
        }
        Ok(())
    }

    fn push(&mut self, layer: usize, keys: &[f32], values: &[f32], op: &'static str) -> Result<()> {
        let n = check_layer_input(&self.shape, layer, keys, values, op)?;
        if n == 0 {
            return Ok(());
        }
        let reg = self.layers[layer].regions;
        let to_sinks = self.pq.regions.sinks.saturating_sub(reg.sinks).min(n);
        let to_recent = n - to_sinks;
        let target = self
            .pq
            .encoded_target(reg.total() + n, layer, self.shape.num_layers());
        let need = target.saturating_sub(reg.encoded);
        if need > 0 && !self.layer_ready(layer) && reg.total() + n >= self.pq.train_threshold() {
            self.train_layer(layer, keys, values, n)?;
        }
        let overflow = if need > 0 && self.layer_ready(layer) {
            need
        } else {
            0
        };
        let from_ring = overflow.min(reg.recent);
        let from_new = overflow - from_ring;

        let (shape, share, d) = (self.shape, self.pq.training.share, self.shape.head_dim());
        let spec = self.pq;
        let keep = self.keeps_blocks();
        let PqStore {
            codebooks,
            transforms,
            layers,
            widths,
            ..
        } = self;
        let widths = *widths;
        let (codebooks, transforms) = (&*codebooks, &*transforms);
        let first_encoded = reg.encoded;
        let work = |(h, head): (usize, &mut PqHead)| -> Result<()> {
            let g = share.group_of(&shape, layer, h);
            let mut rows: [Vec<f32>; 2] = Default::default();
            let mut errors = vec![0f32; overflow];
            for p in 0..2 {
                let x = &[keys, values][p][h * n * d..(h + 1) * n * d];
                extend_f16(&mut head.sinks[p], &x[..to_sinks * d]);
                let fresh = &x[to_sinks * d..];
                if overflow > 0 {
                    let pq = codebooks[p][g]
                        .as_ref()
                        .expect("layer_ready checked every group");
                    let mut buf = Vec::with_capacity(overflow * d);
                    head.recent[p].pop_front_f32(from_ring, &mut buf);
                    buf.extend(round_f16(&fresh[..from_new * d]));
                    let xt = match &transforms[p][g] {
                        Some(t) => t.apply(&buf)?,
                        None => buf.clone(),
                    };
                    let codes = encode_append(pq, &xt, widths[p], &mut head.codes[p])?;
                    if keep[p] {
                        let m = pq.params().num_subspaces();
                        let lanes = blocks::lane_nibbles(p);
                        blocks::sync(&head.codes[p], widths[p], m, lanes, &mut head.blocks[p])?;
                    }
                    if spec.regions.outliers_per_mille > 0 {
                        let approx = pq.decode(&codes)?;
                        for ((e, x), a) in errors
                            .iter_mut()
                            .zip(xt.chunks_exact(d))
                            .zip(approx.chunks_exact(d))
                        {
                            let err: f32 = x.iter().zip(a).map(|(u, v)| (u - v) * (u - v)).sum();
                            let norm: f32 = x.iter().map(|u| u * u).sum();
                            *e += err / norm.max(f32::MIN_POSITIVE);
                        }
                    }
                    rows[p] = buf;
                }
                head.recent[p].push_f32(&fresh[from_new * d..]);
            }
            if spec.regions.outliers_per_mille > 0 {
                for (i, &e) in errors.iter().enumerate() {
                    let index = first_encoded + i;
                    let budget = spec.outlier_budget(index + 1);
                    let token = || OutlierToken {
                        index,
                        error: e,
                        key: rows[0][i * d..(i + 1) * d]
                            .iter()
                            .map(|&v| f16::from_f32(v))
                            .collect(),
                        value: rows[1][i * d..(i + 1) * d]
                            .iter()
                            .map(|&v| f16::from_f32(v))
                            .collect(),
                    };
                    if head.outliers.len() < budget {
                        head.outliers.push(token());
                    } else if budget > 0 {
                        let (weakest, _) = head
                            .outliers
                            .iter()
                            .enumerate()
                            .min_by(|a, b| a.1.error.total_cmp(&b.1.error))
                            .expect("budget > 0 and the list is full");
                        if e > head.outliers[weakest].error {
                            head.outliers.remove(weakest);
                            head.outliers.push(token());
                        }
                    }
                }
            }
            Ok(())
        };
        let heads = &mut layers[layer].heads;
        if overflow > 0 {
            // Encoding: nearest-centroid searches, worth spreading over threads.
            heads.par_iter_mut().enumerate().try_for_each(work)?;
        } else {
            // Copies only: cheaper than waking the thread pool.
            heads.iter_mut().enumerate().try_for_each(work)?;
        }
        let r = &mut layers[layer].regions;
        r.sinks += to_sinks;
        r.encoded += overflow;
        r.recent = r.recent - from_ring + (to_recent - from_new);
        Ok(())
    }

    /// Heap bytes of the transposed blocks kept for the CPU kernel
    /// ([`Codes::blocks`]): a derived copy of the codes (as many bytes as
    /// the packed rows of 4-bit values, as many as one-byte key rows),
    /// rebuilt on load and never written, so outside
    /// [`KvStore::heap_bytes`], which holds to the accounting of
    /// [`KvStore::memory_report`].
    pub fn block_bytes(&self) -> HeapBytes {
        let mut b = HeapBytes::default();
        for head in self.layers.iter().flat_map(|l| &l.heads) {
            for blocks in &head.blocks {
                b.add(blocks);
            }
        }
        b
    }

    /// `[part]`: whether the part keeps transposed blocks of its codes
    /// ([`blocks::keeps_blocks`]).
    fn keeps_blocks(&self) -> [bool; 2] {
        [0, 1].map(|p| blocks::keeps_blocks(p, self.widths[p], self.params[p].ksub()))
    }

    /// Whether files of this spec carry transforms and outliers (specs
    /// without them keep the original layout).
    fn has_extras(&self) -> bool {
        self.pq.transforms(KvPart::Keys)
            || self.pq.transforms(KvPart::Values)
            || self.pq.regions.outliers_per_mille > 0
    }

    pub(crate) fn read_body(shape: KvShape, pq: PqSpec, r: &mut Reader<'_>) -> Result<Self> {
        let mut s = PqStore::new(shape, pq)?;
        for p in 0..2 {
            for g in 0..s.codebooks[p].len() {
                match r.u8("codebook flag")? {
                    0 => {}
                    1 => {
                        let c = r.f32s(s.params[p].codebook_len(), "codebook")?;
                        let q = ProductQuantizer::from_centroids(s.params[p], c)
                            .map_err(|e| r.bad(format!("{} codebook {g}: {e}", PARTS[p])))?;
                        s.codebooks[p][g] = Some(q);
                    }
                    f => {
                        return Err(r.bad(format!(
                            "{} codebook {g}: flag {f} is neither 0 nor 1",
                            PARTS[p]
                        )))
                    }
                }
            }
        }
        // Version 1 stored codes of `nbits <= 2` as nibbles (it had no 2-bit
        // layout); they are repacked four per byte as they are read.
        let widths = s.widths.map(|w| match w {
            CodeWidth::Crumb if r.version() < 2 => CodeWidth::Nibble,
            w => w,
        });
        let d = shape.head_dim();
        let keep = s.keeps_blocks();
        if s.has_extras() {
            for p in 0..2 {
                for g in 0..s.transforms[p].len() {
                    let flag = r.u8("transform flag")?;
                    if flag > 2 {
                        return Err(r.bad(format!(
                            "{} transform {g}: flag {flag} is not 0, 1 or 2",
                            PARTS[p]
                        )));
                    }
                    if flag > 0 {
                        let mean = r.f32s(d, "transform mean")?;
                        let a = if flag == 2 {
                            Some(r.f32s(r.mul(d, d, "transform")?, "transform matrix")?)
                        } else {
                            None
                        };
                        let t = PreTransform::new(mean, a)
                            .map_err(|e| r.bad(format!("{} transform {g}: {e}", PARTS[p])))?;
                        s.transforms[p][g] = Some(t);
                    }
                }
            }
        }
        for layer in 0..shape.num_layers() {
            let reg = Regions {
                sinks: r.u64("sink count")?,
                encoded: r.u64("encoded count")?,
                recent: r.u64("recent count")?,
            };
            let total = reg
                .sinks
                .checked_add(reg.encoded)
                .and_then(|t| t.checked_add(reg.recent));
            let ok = total.is_some()
                && reg.sinks <= pq.regions.sinks
                && (reg.sinks == pq.regions.sinks || reg.encoded + reg.recent == 0)
                && (reg.encoded == 0
                    || (reg.encoded
                        == pq.encoded_target(total.unwrap_or(0), layer, shape.num_layers())
                        && s.layer_ready(layer)));
            if !ok {
                return Err(r.bad(format!(
                    "layer {layer}: regions {reg:?} are impossible for `{}`",
                    s.spec
                )));
            }
            for h in 0..shape.num_kv_heads() {
                for p in 0..2 {
                    let sinks = r.f16s(r.mul(reg.sinks, d, "sinks")?, "sink tokens")?;
                    let m = s.params[p].num_subspaces();
                    let bytes = r.take(reg.encoded, widths[p].row_bytes(m), "codes")?;
                    check_codes(bytes, &s.params[p], widths[p]).map_err(|why| {
                        r.bad(format!("layer {layer}, head {h}, {}: {why}", PARTS[p]))
                    })?;
                    let codes = if widths[p] == s.widths[p] {
                        bytes.to_vec()
                    } else {
                        // A version-1 file: 2-bit codes stored as nibbles.
                        let one_per_byte = widths[p].unpack(bytes, m)?;
                        s.widths[p].pack(&one_per_byte, m)?
                    };
                    let recent = r.f16s(r.mul(reg.recent, d, "recent")?, "recent tokens")?;
                    let head = &mut s.layers[layer].heads[h];
                    head.sinks[p] = sinks;
                    head.codes[p] = codes;
                    head.blocks[p].clear();
                    if keep[p] {
                        let (w, lanes) = (s.widths[p], blocks::lane_nibbles(p));
                        blocks::sync(&head.codes[p], w, m, lanes, &mut head.blocks[p])?;
                    }
                    head.recent[p] = TokenRing::from_vec(recent, d);
                }
                if s.has_extras() {
                    let mut outliers = Vec::new();
                    for _ in 0..pq.outlier_budget(reg.encoded) {
                        let index = r.u64("outlier index")?;
                        let error = r.f32s(1, "outlier error")?[0];
                        let key = r.f16s(d, "outlier key")?;
                        let value = r.f16s(d, "outlier value")?;
                        if index >= reg.encoded
                            || outliers
                                .last()
                                .is_some_and(|o: &OutlierToken| o.index >= index)
                        {
                            return Err(r.bad(format!(
                                "layer {layer}, head {h}: outlier index {index} is out of order or range"
                            )));
                        }
                        outliers.push(OutlierToken {
                            index,
                            error,
                            key,
                            value,
                        });
                    }
                    s.layers[layer].heads[h].outliers = outliers;
                }
            }
            s.layers[layer].regions = reg;
        }
        Ok(s)
    }
}

/// Checks that codes read from a file (`width` layout, whole rows) are below
/// `ksub` and that the padding bits of packed rows are zero.
fn check_codes(
    codes: &[u8],
    params: &PqParams,
    width: CodeWidth,
) -> std::result::Result<(), String> {
    let (ksub, m) = (params.ksub(), params.num_subspaces());
    if width == CodeWidth::Byte {
        return match codes.iter().position(|&c| usize::from(c) >= ksub) {
            Some(i) => Err(format!(
                "code {} at {i} is out of range (ksub = {ksub})",
                codes[i]
            )),
            None => Ok(()),
        };
    }
    // When the field is as wide as the codes (`ksub = 2^bits`), every value fits.
    let full = ksub == 1 << width.bits();
    for (t, row) in codes.chunks_exact(width.row_bytes(m)).enumerate() {
        if let Some((byte, bits)) = width.padding_bits(row, m) {
            return Err(format!(
                "token {t}: padding bits {bits:#04x} of byte {byte} are set ({width} codes, M = {m})"
            ));
        }
        if full {
            continue;
        }
        if let Some(s) = (0..m).find(|&s| usize::from(width.code(row, s)) >= ksub) {
            return Err(format!(
                "token {t}, subspace {s}: code {} is out of range (ksub = {ksub})",
                width.code(row, s)
            ));
        }
    }
    Ok(())
}

/// Encodes `data` (`k x d`, FP16-exact) with `pq` and appends the codes to
/// `out` in the `width` layout; returns the codes, one per byte.
fn encode_append(
    pq: &ProductQuantizer,
    data: &[f32],
    width: CodeWidth,
    out: &mut Vec<u8>,
) -> Result<Vec<u8>> {
    let m = pq.params().num_subspaces();
    let k = data.len() / pq.params().dim();
    let codes = if k == 1 {
        let mut c = vec![0u8; m];
        pq.encode_one(data, &mut c)?;
        c
    } else {
        pq.encode(data)?
    };
    width.pack_into(&codes, m, out)?;
    Ok(codes)
}

impl KvStore for PqStore {
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
        Ok(self.layers[layer].regions)
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
        let v = self.head(layer, head)?;
        let mut out = [Vec::new(), Vec::new()];
        let parts = [
            (
                v.sink_keys,
                v.key_codes,
                v.recent_keys,
                v.key_codebook,
                v.key_transform,
            ),
            (
                v.sink_values,
                v.value_codes,
                v.recent_values,
                v.value_codebook,
                v.value_transform,
            ),
        ];
        let d = self.shape.head_dim();
        for (p, (o, (sinks, codes, recent, pq, xf))) in out.iter_mut().zip(parts).enumerate() {
            *o = sinks.to_f32();
            if codes.tokens() > 0 {
                let pq = pq.expect("encoded tokens imply a codebook");
                let mut x = pq.decode(&codes.to_u8())?;
                if let Some(t) = xf {
                    x = t.undo(&x)?;
                }
                for t in v.outliers {
                    let row = if p == 0 { &t.key } else { &t.value };
                    for (dst, &src) in x[t.index * d..(t.index + 1) * d].iter_mut().zip(row) {
                        *dst = src.to_f32();
                    }
                }
                o.extend(x);
            }
            o.extend(recent.to_f32());
        }
        let [keys, values] = out;
        Ok(DenseKv {
            heads: 1,
            tokens: v.regions.total(),
            head_dim: self.shape.head_dim(),
            keys,
            values,
        })
    }
    fn memory_report(&self) -> MemoryReport {
        let layers: Vec<Regions> = self.layers.iter().map(|l| l.regions).collect();
        let count = |p: usize| self.codebooks[p].iter().filter(|c| c.is_some()).count();
        debug_assert!(self.layers.iter().all(|l| l
            .heads
            .iter()
            .all(|h| h.outliers.len() == self.pq.outlier_budget(l.regions.encoded))));
        account_regions(&self.shape, &self.spec, &layers, count(0), count(1))
            .expect("the spec was validated at construction")
    }
    fn heap_bytes(&self) -> HeapBytes {
        let mut b = HeapBytes::default();
        for head in self.layers.iter().flat_map(|l| &l.heads) {
            for p in 0..2 {
                b.add(&head.sinks[p]);
                b.add(&head.codes[p]);
                b.add_raw(head.recent[p].used_bytes(), head.recent[p].capacity_bytes());
            }
            for t in &head.outliers {
                b.add(&t.key);
                b.add(&t.value);
            }
        }
        for pq in self.codebooks.iter().flatten().flatten() {
            // The codebook as held: `M * ksub * dsub` f32 (its capacity is not visible from here).
            b.add_raw(pq.centroids().len() * 4, pq.centroids().len() * 4);
        }
        for t in self.transforms.iter().flatten().flatten() {
            b.add_raw(t.bytes(), t.bytes());
        }
        b
    }
    fn reserve(&mut self, tokens: usize) {
        let (s, r) = (self.pq.regions.sinks, self.pq.regions.window);
        let d = self.shape.head_dim();
        let encoded = tokens.saturating_sub(s + r);
        // The window holds up to `R + B - 1` tokens between flushes.
        let recent = tokens
            .saturating_sub(s)
            .min(r + self.pq.regions.flush.max(1) - 1);
        let rows = self.row_bytes;
        let keep = self.keeps_blocks();
        let m = self.params.map(|p| p.num_subspaces());
        for head in self.layers.iter_mut().flat_map(|l| &mut l.heads) {
            for p in 0..2 {
                let v = &mut head.sinks[p];
                v.reserve_exact((tokens.min(s) * d).saturating_sub(v.len()));
                let c = &mut head.codes[p];
                c.reserve_exact((encoded * rows[p]).saturating_sub(c.len()));
                if keep[p] {
                    let b = &mut head.blocks[p];
                    let block = blocks::block_bytes(m[p], blocks::lane_nibbles(p));
                    b.reserve_exact((encoded / 64 * block).saturating_sub(b.len()));
                }
                head.recent[p].reserve_tokens(recent);
            }
        }
    }
    fn shrink_to_fit(&mut self) {
        for head in self.layers.iter_mut().flat_map(|l| &mut l.heads) {
            for p in 0..2 {
                head.sinks[p].shrink_to_fit();
                head.codes[p].shrink_to_fit();
                head.blocks[p].shrink_to_fit();
                head.recent[p].shrink_to_fit();
            }
        }
    }
    fn to_bytes(&self) -> Vec<u8> {
        let mut w = persist::header(&self.spec, &self.shape);
        for p in 0..2 {
            for cb in &self.codebooks[p] {
                match cb {
                    None => w.u8(0),
                    Some(pq) => {
                        w.u8(1);
                        w.f32s(pq.centroids());
                    }
                }
            }
        }
        if self.has_extras() {
            for t in self.transforms.iter().flatten() {
                match t {
                    None => w.u8(0),
                    Some(t) => {
                        w.u8(1 + u8::from(t.matrix().is_some()));
                        w.f32s(t.mean());
                        if let Some(a) = t.matrix() {
                            w.f32s(a);
                        }
                    }
                }
            }
        }
        for l in &self.layers {
            w.u64(l.regions.sinks);
            w.u64(l.regions.encoded);
            w.u64(l.regions.recent);
            for head in &l.heads {
                for p in 0..2 {
                    w.f16s(&head.sinks[p]);
                    w.bytes(&head.codes[p]);
                    for part in head.recent[p].slices().parts() {
                        w.f16s(part);
                    }
                }
                if self.has_extras() {
                    for t in &head.outliers {
                        w.u64(t.index);
                        w.f32s(&[t.error]);
                        w.f16s(&t.key);
                        w.f16s(&t.value);
                    }
                }
            }
        }
        persist::finish(w)
    }
    fn as_pq(&self) -> Option<&PqStore> {
        Some(self)
    }
    fn as_pq_mut(&mut self) -> Option<&mut PqStore> {
        Some(self)
    }
}

mod blocks;
#[cfg(test)]
mod tests;
