//! Per-layer parts of a `pq:` spec: [`LayerSet`] (the layers that
//! `fp16_layers=` and `wide_layers=` name) and [`WideLayers`] (the second
//! code format of `wide_layers=`), with the checks of the latter.

use std::fmt;

use aqpim_pq::CodeFormat;

use super::{CodebookSharing, KvShape, PqSpec, SubspaceLayout};

/// Layers whose keys and values are coded in their own format
/// (`wide_layers=18,wide_kdsub=1,wide_vbits=8`; every `wide_` part not
/// given is the base format's): a per-layer bit allocation, more bits where
/// a layer's codes cost the most accuracy (`docs/results/accuracy.md`,
/// "Where the loss on code lives"). Codebooks of those layers have the wide
/// shape, so sharing stays within a layer (`share=none|heads`) and the
/// subspaces stay contiguous. A layer also in `fp16_layers` stays FP16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WideLayers {
    /// The layers.
    pub layers: LayerSet,
    /// Their key codes (`wide_kdsub`, `wide_kbits`).
    pub key: CodeFormat,
    /// Their value codes (`wide_vdsub`, `wide_vbits`).
    pub value: CodeFormat,
    /// Their online refinement, `[keys, values]` (`wide_krefine`,
    /// `wide_vrefine`; the base's `refine` unless given). Refining the
    /// 256-centroid value codebooks of four wide layers gained at most 0.15
    /// points of held-out perplexity, and costs each sequence its own
    /// copies in PIM (`docs/results/accuracy.md`, "Wide layers").
    pub refine: [u32; 2],
}

/// A set of layer indices below [`LayerSet::LIMIT`], written `a+b` or with
/// inclusive ranges `a-b` joined by `+` (`0+1+28-29`); `Display` writes
/// every index, `+`-joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerSet(u128);

impl LayerSet {
    /// Layer indices a set can hold: `0..LIMIT`.
    pub const LIMIT: usize = 128;

    /// The empty set.
    pub const EMPTY: LayerSet = LayerSet(0);

    /// Every layer of `0..n` but `layer` (`n` at most [`LayerSet::LIMIT`]).
    pub fn all_but(n: usize, layer: usize) -> LayerSet {
        (0..n.min(Self::LIMIT))
            .filter(|&l| l != layer)
            .fold(LayerSet::EMPTY, |s, l| LayerSet(s.0 | 1 << l))
    }

    /// Whether `layer` is in the set.
    pub fn contains(&self, layer: usize) -> bool {
        layer < Self::LIMIT && self.0 >> layer & 1 == 1
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// Why the set, named `key` in errors, names a layer `shape` lacks, if it does.
    pub(super) fn check_within(
        &self,
        key: &str,
        shape: &KvShape,
    ) -> std::result::Result<(), String> {
        match self.iter().find(|&l| l >= shape.num_layers()) {
            Some(l) => Err(format!(
                "{key} names layer {l}, but the model has {} layers",
                shape.num_layers()
            )),
            None => Ok(()),
        }
    }

    /// The layers, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..Self::LIMIT).filter(|&l| self.contains(l))
    }
}

impl std::str::FromStr for LayerSet {
    type Err = String;

    /// Parses `a+b` and inclusive ranges `a-b` joined by `+`; the error says
    /// which item is wrong.
    fn from_str(v: &str) -> std::result::Result<Self, String> {
        let index = |t: &str| -> std::result::Result<usize, String> {
            t.trim()
                .parse::<usize>()
                .ok()
                .filter(|&l| l < Self::LIMIT)
                .ok_or_else(|| format!("`{}` is not a layer index below {}", t.trim(), Self::LIMIT))
        };
        let mut set = LayerSet::EMPTY;
        for item in v.split('+') {
            let (a, b) = match item.split_once('-') {
                Some((a, b)) => (index(a)?, index(b)?),
                None => (index(item)?, index(item)?),
            };
            if a > b {
                return Err(format!("the range `{}` runs backwards", item.trim()));
            }
            for l in a..=b {
                set.0 |= 1 << l;
            }
        }
        Ok(set)
    }
}

impl fmt::Display for LayerSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{l}")?;
        }
        Ok(())
    }
}

/// Why a key and a value format (named `{prefix}kbits`, `{prefix}kdsub`, ...
/// in errors) cannot code heads of `shape`, if they cannot: bits in
/// `1..=8`, each dsub a divisor of the head.
pub(super) fn check_formats(
    prefix: &str,
    key: CodeFormat,
    value: CodeFormat,
    shape: &KvShape,
) -> std::result::Result<(), String> {
    for (part, f) in [("k", key), ("v", value)] {
        if !(1..=8).contains(&f.nbits) {
            return Err(format!("{prefix}{part}bits = {} is not in 1..=8", f.nbits));
        }
    }
    for (part, f) in [("k", key), ("v", value)] {
        if f.dsub == 0 || !shape.head_dim().is_multiple_of(f.dsub) {
            return Err(format!(
                "{prefix}{part}dsub = {} does not divide head_dim = {}",
                f.dsub,
                shape.head_dim()
            ));
        }
    }
    Ok(())
}

/// Why the wide layers `w` of `p` cannot hold caches of `shape`, if they cannot.
pub(super) fn validate_wide(
    w: &WideLayers,
    p: &PqSpec,
    shape: &KvShape,
) -> std::result::Result<(), String> {
    check_formats("wide_", w.key, w.value, shape)?;
    if w.key.packed != p.key.packed || w.value.packed != p.key.packed {
        return Err("wide layers pack as the others do (one `pack` key)".into());
    }
    if w.layers.is_empty() {
        return Err("wide_layers names no layer".into());
    }
    w.layers.check_within("wide_layers", shape)?;
    if matches!(
        p.training.share,
        CodebookSharing::Layers | CodebookSharing::All
    ) {
        return Err(format!(
            "wide_layers needs codebooks of their own per layer (share=none or heads), not share={}",
            p.training.share.name()
        ));
    }
    if p.transforms.layout != SubspaceLayout::Contiguous {
        return Err(format!(
            "wide_layers needs contiguous subspaces, not layout={} (its permutation depends on dsub)",
            p.transforms.layout.name()
        ));
    }
    Ok(())
}
