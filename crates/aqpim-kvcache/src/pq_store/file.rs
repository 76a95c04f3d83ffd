//! A [`PqStore`] as a file: the body after the header that
//! [`crate::persist`] writes and checks (codebooks, transforms, then every
//! layer's regions and heads), and the checks on what is read back.

use aqpim_pq::transform::PreTransform;
use aqpim_pq::{CodeWidth, PqParams, ProductQuantizer};

use super::{blocks, OutlierToken, PqStore, PARTS};
use crate::accounting::Regions;
use crate::error::Result;
use crate::persist::{self, Reader};
use crate::shape::KvShape;
use crate::spec::PqSpec;
use crate::tokens::TokenRing;

impl PqStore {
    /// Reads the codebooks: per part and group, a flag and the centroids.
    fn read_codebooks(&mut self, r: &mut Reader<'_>) -> Result<()> {
        for p in 0..2 {
            for g in 0..self.codebooks[p].len() {
                match r.u8("codebook flag")? {
                    0 => {}
                    1 => {
                        let params = self.params[self.group_class(g)][p];
                        let c = r.f32s(params.codebook_len(), "codebook")?;
                        let q = ProductQuantizer::from_centroids(params, c)
                            .map_err(|e| r.bad(format!("{} codebook {g}: {e}", PARTS[p])))?;
                        self.codebooks[p][g] = Some(q);
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
        Ok(())
    }

    /// Reads the pre-transforms: per part and group, a flag (0 none, 1 a
    /// mean, 2 a mean and a matrix, `d x d` f32) and its data. A monomial
    /// matrix (a layout, a scaling, a diagonal metric) is held compactly
    /// again ([`PreTransform::new`]), as it was before it was saved.
    fn read_transforms(&mut self, r: &mut Reader<'_>) -> Result<()> {
        let d = self.shape.head_dim();
        for p in 0..2 {
            for g in 0..self.transforms[p].len() {
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
                    self.transforms[p][g] = Some(t);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn read_body(shape: KvShape, pq: PqSpec, r: &mut Reader<'_>) -> Result<Self> {
        let mut s = PqStore::new(shape, pq)?;
        s.read_codebooks(r)?;
        // Version 1 stored codes of `nbits <= 2` as nibbles (it had no 2-bit
        // layout); they are repacked four per byte as they are read.
        let all_widths = s.widths.map(|c| {
            c.map(|w| match w {
                CodeWidth::Crumb if r.version() < 2 => CodeWidth::Nibble,
                w => w,
            })
        });
        let d = shape.head_dim();
        if s.has_extras() {
            s.read_transforms(r)?;
        }
        for layer in 0..shape.num_layers() {
            let c = s.class(layer);
            let (widths, keep, params) = (all_widths[c], s.keeps_blocks(c), s.params[c]);
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
                    let m = params[p].num_subspaces();
                    let bytes = r.take(reg.encoded, widths[p].row_bytes(m), "codes")?;
                    check_codes(bytes, &params[p], widths[p]).map_err(|why| {
                        r.bad(format!("layer {layer}, head {h}, {}: {why}", PARTS[p]))
                    })?;
                    let codes = if widths[p] == s.widths[c][p] {
                        bytes.to_vec()
                    } else {
                        // A version-1 file: 2-bit codes stored as nibbles.
                        let one_per_byte = widths[p].unpack(bytes, m)?;
                        s.widths[c][p].pack(&one_per_byte, m)?
                    };
                    let recent = r.f16s(r.mul(reg.recent, d, "recent")?, "recent tokens")?;
                    let head = &mut s.layers[layer].heads[h];
                    head.sinks[p] = sinks;
                    head.codes[p] = codes;
                    head.blocks[p].clear();
                    if keep[p] {
                        let (w, lanes) = (s.widths[c][p], blocks::lane_nibbles(p));
                        blocks::sync(&head.codes[p], w, m, lanes, &mut head.blocks[p])?;
                    }
                    head.recent[p] = TokenRing::from_vec(recent, d);
                }
                if s.has_extras() {
                    let budget = pq.outlier_budget(reg.encoded);
                    s.layers[layer].heads[h].outliers =
                        read_outliers(r, budget, reg.encoded, d, (layer, h))?;
                }
            }
            s.layers[layer].regions = reg;
        }
        Ok(s)
    }

    /// The store as a file ([`KvStore::to_bytes`]): header, codebooks,
    /// transforms, then every layer's regions and heads.
    pub(super) fn write_body(&self) -> Vec<u8> {
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
                        // The file holds `A` dense whatever its form in
                        // memory; reading it back recognises a monomial `A`.
                        if let Some(a) = t.matrix() {
                            w.f32s(&a);
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
}

/// Reads `budget` outlier tokens of head `(layer, h)`, which holds
/// `encoded` encoded tokens, in ascending index order.
fn read_outliers(
    r: &mut Reader<'_>,
    budget: usize,
    encoded: usize,
    d: usize,
    (layer, h): (usize, usize),
) -> Result<Vec<OutlierToken>> {
    let mut outliers: Vec<OutlierToken> = Vec::new();
    for _ in 0..budget {
        let index = r.u64("outlier index")?;
        let error = r.f32s(1, "outlier error")?[0];
        let key = r.f16s(d, "outlier key")?;
        let value = r.f16s(d, "outlier value")?;
        if index >= encoded || outliers.last().is_some_and(|o| o.index >= index) {
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
    Ok(outliers)
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
