//! [`PqStore`]: the AQPIM store. Per (layer, KV head): FP16 attention sinks,
//! PQ codes of the middle tokens, and an FP16 recent window; separate K and V
//! codebooks, per layer and head unless shared.

use aqpim_pq::transform::PreTransform;
use aqpim_pq::{CodeWidth, PqParams, ProductQuantizer};
use half::f16;

use crate::accounting::{account_regions_by_class, HeapBytes, MemoryReport, Regions};
use crate::error::{KvError, KvPart, Result};
use crate::shape::KvShape;
use crate::spec::{CodebookSharing, KvSpec, PqSpec};
use crate::store::{DenseKv, KvStore};
use crate::tokens::{TokenRing, TokenSlices};

const PARTS: [KvPart; 2] = [KvPart::Keys, KvPart::Values];

fn part_index(part: KvPart) -> usize {
    match part {
        KvPart::Keys => 0,
        KvPart::Values => 1,
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
/// (at the layer's flush points when `flush = B > 1`, see [`PqRegions::flush`](crate::PqRegions::flush)),
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
    /// `[class][part]`, class 0 the base format and 1 the wide layers'
    /// ([`PqSpec::class_of`]; both the base format's without `wide_layers`).
    params: [[PqParams; 2]; 2],
    /// `[class][part]`: how codes are stored (one, two or four per byte).
    widths: [[CodeWidth; 2]; 2],
    /// `[part][group]`
    codebooks: [Vec<Option<ProductQuantizer>>; 2],
    /// `[part][group]`: pre-transforms (`None`: identity).
    transforms: [Vec<Option<PreTransform>>; 2],
    /// `[part][group]`: each centroid's weight under `refine=` (`M * ksub`;
    /// empty until the group's first refinement).
    refine_counts: [Vec<Vec<f32>>; 2],
    layers: Vec<PqLayer>,
}

impl PqStore {
    /// An empty store.
    pub fn new(shape: KvShape, pq: PqSpec) -> Result<Self> {
        let spec = KvSpec::Pq(pq);
        spec.validate(&shape)?;
        let d = shape.head_dim();
        let format = |c: usize, p: usize| pq.class_format(c, PARTS[p]);
        let at = |c: usize, p: usize| format(c, p).params(d);
        let params = [[at(0, 0)?, at(0, 1)?], [at(1, 0)?, at(1, 1)?]];
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
            widths: [0, 1].map(|c| [0, 1].map(|p| format(c, p).width())),
            codebooks: [vec![None; groups], vec![None; groups]],
            transforms: [vec![None; groups], vec![None; groups]],
            refine_counts: [vec![Vec::new(); groups], vec![Vec::new(); groups]],
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

    /// PQ shape of the key or value codebooks (of the layers not in
    /// `wide_layers`; [`PqStore::params_at`] for any layer).
    pub fn params(&self, part: KvPart) -> PqParams {
        self.params[0][part_index(part)]
    }

    /// PQ shape of `layer`'s key or value codebooks.
    pub fn params_at(&self, layer: usize, part: KvPart) -> Result<PqParams> {
        self.shape.check_layer(layer)?;
        Ok(self.params[self.class(layer)][part_index(part)])
    }

    /// The format class of `layer` (0 the base format, 1 `wide_layers`).
    fn class(&self, layer: usize) -> usize {
        self.pq.class_of(layer)
    }

    /// The format class of codebook group `g`: a group never spans classes,
    /// since wide layers share codebooks only within a layer.
    fn group_class(&self, g: usize) -> usize {
        match self.pq.training.share {
            CodebookSharing::None => self.class(g / self.shape.num_kv_heads()),
            CodebookSharing::Heads => self.class(g),
            CodebookSharing::Layers | CodebookSharing::All => 0,
        }
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
        let c = self.class(layer);
        let codes = |p: usize| Codes {
            data: &h.codes[p],
            blocks: &h.blocks[p],
            lane_nibbles: blocks::lane_nibbles(p),
            num_subspaces: self.params[c][p].num_subspaces(),
            row_bytes: self.row_bytes(c, p),
            width: self.widths[c][p],
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

    /// Bytes of one token's codes of `part` in format class `c`, as its
    /// code width stores them.
    fn row_bytes(&self, c: usize, part: usize) -> usize {
        self.widths[c][part].row_bytes(self.params[c][part].num_subspaces())
    }

    /// `[part]`: whether the part keeps transposed blocks of its codes in
    /// format class `c` ([`blocks::keeps_blocks`]).
    fn keeps_blocks(&self, c: usize) -> [bool; 2] {
        [0, 1].map(|p| blocks::keeps_blocks(p, self.widths[c][p], self.params[c][p].ksub()))
    }

    /// Whether files of this spec carry transforms and outliers (specs
    /// without them keep the original layout).
    fn has_extras(&self) -> bool {
        self.pq.transforms(KvPart::Keys)
            || self.pq.transforms(KvPart::Values)
            || self.pq.regions.outliers_per_mille > 0
    }
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
        let count = |p: usize, c: usize| {
            (0..self.codebooks[p].len())
                .filter(|&g| self.codebooks[p][g].is_some() && self.group_class(g) == c)
                .count()
        };
        debug_assert!(self.layers.iter().all(|l| l
            .heads
            .iter()
            .all(|h| h.outliers.len() == self.pq.outlier_budget(l.regions.encoded))));
        let books = [[count(0, 0), count(0, 1)], [count(1, 0), count(1, 1)]];
        account_regions_by_class(&self.shape, &self.spec, &layers, books)
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
        let keep = [0, 1].map(|c| self.keeps_blocks(c));
        let m = self.params.map(|c| c.map(|p| p.num_subspaces()));
        let row_bytes = [0, 1].map(|c| [0, 1].map(|p| self.row_bytes(c, p)));
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let c = self.pq.class_of(l);
            let (rows, keep, m) = (row_bytes[c], keep[c], m[c]);
            for head in &mut layer.heads {
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
        self.write_body()
    }
    fn as_pq(&self) -> Option<&PqStore> {
        Some(self)
    }
    fn as_pq_mut(&mut self) -> Option<&mut PqStore> {
        Some(self)
    }
}

mod blocks;
mod codes;
mod file;
mod push;
#[cfg(test)]
mod tests;
mod train;

pub use codes::{Codes, OutlierToken};
pub use train::fit_transform;
