//! [`PqStore`]: the AQPIM store. Per (layer, KV head): FP16 attention sinks,
//! PQ codes of the middle tokens, and an FP16 recent window; separate K and V
//! codebooks, per layer and head unless shared.

use aqpim_pq::{PqParams, ProductQuantizer, TrainOptions};
use half::f16;
use rayon::prelude::*;

use crate::accounting::{account_regions, HeapBytes, MemoryReport, Regions};
use crate::error::{KvError, KvPart, Result};
use crate::persist::{self, Reader};
use crate::shape::KvShape;
use crate::spec::{KvSpec, PqSpec};
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
/// oldest first. Unpacked: `row_bytes = M`, one code per byte. Packed
/// (`nbits <= 4`): `row_bytes = ceil(M / 2)`, byte `i` holds subspace `2i` in
/// its low nibble and `2i + 1` in its high nibble (the layout of
/// [`aqpim_pq::pack_4bit`]).
#[derive(Debug, Clone, Copy)]
pub struct Codes<'a> {
    data: &'a [u8],
    num_subspaces: usize,
    row_bytes: usize,
    packed: bool,
}

impl<'a> Codes<'a> {
    /// The raw bytes, `tokens x row_bytes`.
    pub fn data(&self) -> &'a [u8] {
        self.data
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
    /// Whether two codes share a byte.
    pub fn is_packed(&self) -> bool {
        self.packed
    }
    /// The bytes of token `t`. Panics if `t >= tokens()`.
    pub fn row(&self, t: usize) -> &'a [u8] {
        &self.data[t * self.row_bytes..(t + 1) * self.row_bytes]
    }
    /// Code of token `t` in subspace `m`.
    pub fn code(&self, t: usize, m: usize) -> u8 {
        if self.packed {
            let b = self.row(t)[m / 2];
            if m.is_multiple_of(2) {
                b & 0x0f
            } else {
                b >> 4
            }
        } else {
            self.row(t)[m]
        }
    }
    /// All codes, one per byte, `tokens x M`.
    pub fn to_u8(&self) -> Vec<u8> {
        if self.packed {
            (0..self.tokens())
                .flat_map(|t| (0..self.num_subspaces).map(move |m| (t, m)))
                .map(|(t, m)| self.code(t, m))
                .collect()
        } else {
            self.data.to_vec()
        }
    }
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
}

#[derive(Debug, Clone)]
struct PqHead {
    /// `[part]`: sink tokens, `sinks x d`.
    sinks: [Vec<f16>; 2],
    /// `[part]`: codes, `encoded x row_bytes[part]`.
    codes: [Vec<u8>; 2],
    /// `[part]`: recent tokens.
    recent: [TokenRing; 2],
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
    packed: [bool; 2],
    /// `[part][group]`
    codebooks: [Vec<Option<ProductQuantizer>>; 2],
    layers: Vec<PqLayer>,
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
            recent: [TokenRing::new(d), TokenRing::new(d)],
        };
        let groups = pq.share.num_groups(&shape);
        Ok(PqStore {
            shape,
            spec,
            pq,
            params,
            row_bytes: [pq.code_row_bytes(&params[0]), pq.code_row_bytes(&params[1])],
            packed: [pq.packed(params[0].nbits()), pq.packed(params[1].nbits())],
            codebooks: [vec![None; groups], vec![None; groups]],
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
        self.shape.check_head(layer, head)?;
        Ok(
            self.codebooks[part_index(part)][self.pq.share.group_of(&self.shape, layer, head)]
                .as_ref(),
        )
    }

    /// Borrowed view of one head: sinks, codes, recent window, codebooks.
    pub fn head(&self, layer: usize, head: usize) -> Result<PqHeadView<'_>> {
        self.shape.check_head(layer, head)?;
        let l = &self.layers[layer];
        let h = &l.heads[head];
        let d = self.shape.head_dim();
        let codes = |p: usize| Codes {
            data: &h.codes[p],
            num_subspaces: self.params[p].num_subspaces(),
            row_bytes: self.row_bytes[p],
            packed: self.packed[p],
        };
        let g = self.pq.share.group_of(&self.shape, layer, head);
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
        })
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
        let g = self.pq.share.group_of(&self.shape, layer, head);
        let in_use: usize = (0..self.shape.num_layers())
            .filter(|&l| {
                (0..self.shape.num_kv_heads())
                    .any(|h| self.pq.share.group_of(&self.shape, l, h) == g)
            })
            .map(|l| self.layers[l].regions.encoded)
            .sum();
        if in_use > 0 {
            return Err(KvError::CodebookInUse {
                part: KvPart::Keys,
                layer,
                head,
                tokens: in_use,
            });
        }
        self.codebooks[0][g] = Some(keys);
        self.codebooks[1][g] = Some(values);
        Ok(())
    }

    /// Whether every head of `layer` has both codebooks.
    fn layer_ready(&self, layer: usize) -> bool {
        (0..self.shape.num_kv_heads()).all(|h| {
            let g = self.pq.share.group_of(&self.shape, layer, h);
            self.codebooks[0][g].is_some() && self.codebooks[1][g].is_some()
        })
    }

    /// Trains the missing codebooks of `layer`'s groups on every token the
    /// layer holds plus the `n` new ones (`keys`, `values`: `H x n x d`).
    fn train_layer(&mut self, layer: usize, keys: &[f32], values: &[f32], n: usize) -> Result<()> {
        let (h_count, d) = (self.shape.num_kv_heads(), self.shape.head_dim());
        let share = self.pq.share;
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
                    iterations: self.pq.iterations,
                    seed: self.pq.seed
                        ^ ((2 * g + p + 1) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    ..TrainOptions::default()
                };
                self.codebooks[p][g] = Some(ProductQuantizer::train(self.params[p], &data, &opts)?);
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
        let to_sinks = self.pq.sinks.saturating_sub(reg.sinks).min(n);
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

        let (shape, share, d) = (self.shape, self.pq.share, self.shape.head_dim());
        let PqStore {
            codebooks,
            layers,
            packed,
            ..
        } = self;
        let packed = *packed;
        let codebooks = &*codebooks;
        let work = |(h, head): (usize, &mut PqHead)| -> Result<()> {
            let g = share.group_of(&shape, layer, h);
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
                    encode_append(pq, &buf, packed[p], &mut head.codes[p])?;
                }
                head.recent[p].push_f32(&fresh[from_new * d..]);
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
        let d = shape.head_dim();
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
                && reg.sinks <= pq.sinks
                && (reg.sinks == pq.sinks || reg.encoded + reg.recent == 0)
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
                    let codes = r.take(reg.encoded, s.row_bytes[p], "codes")?.to_vec();
                    check_codes(&codes, &s.params[p], s.packed[p]).map_err(|why| {
                        r.bad(format!("layer {layer}, head {h}, {}: {why}", PARTS[p]))
                    })?;
                    let recent = r.f16s(r.mul(reg.recent, d, "recent")?, "recent tokens")?;
                    let head = &mut s.layers[layer].heads[h];
                    head.sinks[p] = sinks;
                    head.codes[p] = codes;
                    head.recent[p] = TokenRing::from_vec(recent, d);
                }
            }
            s.layers[layer].regions = reg;
        }
        Ok(s)
    }
}

/// Checks that codes read from a file are below `ksub` (and packed padding is zero).
fn check_codes(codes: &[u8], params: &PqParams, packed: bool) -> std::result::Result<(), String> {
    let ksub = params.ksub();
    let m = params.num_subspaces();
    if packed {
        let row = m.div_ceil(2);
        for (i, &b) in codes.iter().enumerate() {
            let (lo, hi) = (usize::from(b & 0x0f), usize::from(b >> 4));
            let pad = m % 2 == 1 && i % row == row - 1;
            if lo >= ksub || (if pad { hi != 0 } else { hi >= ksub }) {
                return Err(format!(
                    "code byte {b:#04x} at {i} is out of range (ksub = {ksub})"
                ));
            }
        }
    } else if let Some(i) = codes.iter().position(|&c| usize::from(c) >= ksub) {
        return Err(format!(
            "code {} at {i} is out of range (ksub = {ksub})",
            codes[i]
        ));
    }
    Ok(())
}

/// Encodes `data` (`k x d`, FP16-exact) with `pq` and appends the codes to `out`.
fn encode_append(
    pq: &ProductQuantizer,
    data: &[f32],
    packed: bool,
    out: &mut Vec<u8>,
) -> Result<()> {
    let m = pq.params().num_subspaces();
    let k = data.len() / pq.params().dim();
    let codes = if k == 1 {
        let mut c = vec![0u8; m];
        pq.encode_one(data, &mut c)?;
        c
    } else {
        pq.encode(data)?
    };
    if packed {
        for row in codes.chunks_exact(m) {
            out.extend(
                row.chunks(2)
                    .map(|pair| pair[0] | pair.get(1).map_or(0, |hi| hi << 4)),
            );
        }
    } else {
        out.extend_from_slice(&codes);
    }
    Ok(())
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
            (v.sink_keys, v.key_codes, v.recent_keys, v.key_codebook),
            (
                v.sink_values,
                v.value_codes,
                v.recent_values,
                v.value_codebook,
            ),
        ];
        for (o, (sinks, codes, recent, pq)) in out.iter_mut().zip(parts) {
            *o = sinks.to_f32();
            if codes.tokens() > 0 {
                let pq = pq.expect("encoded tokens imply a codebook");
                o.extend(pq.decode(&codes.to_u8())?);
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
        }
        for pq in self.codebooks.iter().flatten().flatten() {
            // The codebook as held: `M * ksub * dsub` f32 (its capacity is not visible from here).
            b.add_raw(pq.centroids().len() * 4, pq.centroids().len() * 4);
        }
        b
    }
    fn reserve(&mut self, tokens: usize) {
        let (s, r) = (self.pq.sinks, self.pq.window);
        let d = self.shape.head_dim();
        let encoded = tokens.saturating_sub(s + r);
        // The window holds up to `R + B - 1` tokens between flushes.
        let recent = tokens.saturating_sub(s).min(r + self.pq.flush.max(1) - 1);
        let rows = self.row_bytes;
        for head in self.layers.iter_mut().flat_map(|l| &mut l.heads) {
            for p in 0..2 {
                let v = &mut head.sinks[p];
                v.reserve_exact((tokens.min(s) * d).saturating_sub(v.len()));
                let c = &mut head.codes[p];
                c.reserve_exact((encoded * rows[p]).saturating_sub(c.len()));
                head.recent[p].reserve_tokens(recent);
            }
        }
    }
    fn shrink_to_fit(&mut self) {
        for head in self.layers.iter_mut().flat_map(|l| &mut l.heads) {
            for p in 0..2 {
                head.sinks[p].shrink_to_fit();
                head.codes[p].shrink_to_fit();
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
