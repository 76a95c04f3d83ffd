//! Parsing of cache specs (`KvSpec: FromStr`): `kind[:key=value,...]`, each
//! key checked against the keys its store takes, each value against its range.

use std::str::FromStr;

use aqpim_pq::CodeFormat;

use super::{
    CodebookSharing, KeyMetric, KvSpec, LayerSet, PqRegions, PqSpec, PqTraining, PqTransforms,
    ScalarSpec, SubspaceLayout, WideLayers,
};
use crate::error::{KvError, Result};

/// Keys a `scalar:` spec takes.
const SCALAR_KEYS: &[&str] = &["bits", "group", "window", "sinks", "mx"];

/// Keys a `pq:` spec takes (beside [`WIDE_KEYS`]).
const PQ_KEYS: &[&str] = &[
    "dsub",
    "kdsub",
    "vdsub",
    "nbits",
    "kbits",
    "vbits",
    "sinks",
    "window",
    "share",
    "pack",
    "iters",
    "seed",
    "train_min",
    "flush",
    "center",
    "scale",
    "layout",
    "whiten",
    "vweight",
    "outliers",
    "cb16",
    "refine",
    "krefine",
    "vrefine",
    "fp16_layers",
];

/// The keys of a `pq:` spec's wide layers ([`WideLayers`]): the set, then
/// the parts, each defaulting to the base's.
const WIDE_KEYS: [&str; 7] = [
    "wide_layers",
    "wide_kdsub",
    "wide_kbits",
    "wide_vdsub",
    "wide_vbits",
    "wide_krefine",
    "wide_vrefine",
];

/// The largest refinement weight (`refine=`, `wide_vrefine=`, ...).
const MAX_REFINE: u64 = 1 << 20;

/// Token counts (window, sinks, train_min) are bounded by the longest
/// context a cache may hold.
const BIG: u64 = crate::limits::MAX_CTX as u64;

/// The `key=value` items of one spec string, each key at most once.
struct Items<'a> {
    /// The whole spec, for errors.
    spec: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Items<'a> {
    /// Splits `rest` (what follows `kind:`) into items.
    fn parse(spec: &'a str, rest: Option<&'a str>) -> Result<Self> {
        let mut items = Items {
            spec,
            pairs: Vec::new(),
        };
        for item in rest.into_iter().flat_map(|r| r.split(',')) {
            let item = item.trim();
            if item.is_empty() {
                return Err(items.err("empty `key=value` item (stray comma?)".into()));
            }
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| items.err(format!("`{item}` is not `key=value`")))?;
            let (k, v) = (k.trim(), v.trim());
            if items.pairs.iter().any(|(p, _)| *p == k) {
                return Err(items.err(format!("key `{k}` given twice")));
            }
            items.pairs.push((k, v));
        }
        Ok(items)
    }

    fn err(&self, reason: String) -> KvError {
        KvError::Spec {
            spec: crate::limits::cut(self.spec),
            reason,
        }
    }

    /// Fails on the first key that `kind` does not take.
    fn only(&self, kind: &str, allowed: &[&str]) -> Result<()> {
        for (k, _) in &self.pairs {
            if !allowed.contains(k) {
                return Err(if allowed.is_empty() {
                    self.err(format!("`{kind}` takes no parameters, got `{k}`"))
                } else {
                    self.err(format!(
                        "unknown key `{k}` for `{kind}` (expected one of {})",
                        allowed.join(", ")
                    ))
                });
            }
        }
        Ok(())
    }

    fn get(&self, k: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(p, _)| *p == k).map(|(_, v)| *v)
    }

    /// An integer in `min..=max`, if given.
    fn num(&self, k: &str, min: u64, max: u64) -> Result<Option<u64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(self.err(format!(
                    "bad value `{}` for `{k}`: expected an integer in {min}..={max}",
                    crate::limits::cut(v)
                ))),
            },
        }
    }

    /// A count in `min..=max`, or `default`.
    fn count(&self, k: &str, min: u64, max: u64, default: usize) -> Result<usize> {
        Ok(self.num(k, min, max)?.map_or(default, |v| v as usize))
    }

    /// `[keys, values]` refinement weights: `refine=` both, `krefine=` and
    /// `vrefine=` each.
    fn refine(&self, default: [u32; 2]) -> Result<[u32; 2]> {
        let both = self.num("refine", 0, MAX_REFINE)?;
        let mut out = default;
        for (p, k) in ["krefine", "vrefine"].into_iter().enumerate() {
            if let Some(w) = self.num(k, 0, MAX_REFINE)?.or(both) {
                out[p] = w as u32;
            }
        }
        Ok(out)
    }

    fn flag(&self, k: &str, default: bool) -> Result<bool> {
        match self.get(k) {
            None => Ok(default),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(v) => Err(self.err(format!("bad value `{v}` for `{k}`: expected true or false"))),
        }
    }

    /// One of `choices` (`(name, value)`), or `default` when not given.
    fn choice<T: Copy>(
        &self,
        k: &str,
        default: T,
        choices: &[(&str, T)],
        expected: &str,
    ) -> Result<T> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => choices
                .iter()
                .find(|(name, _)| *name == v)
                .map(|(_, t)| *t)
                .ok_or_else(|| self.err(format!("bad value `{v}` for `{k}`: expected {expected}"))),
        }
    }

    fn scalar(&self) -> Result<ScalarSpec> {
        let d = ScalarSpec::default();
        let bits = self.num("bits", 0, BIG)?.map_or(d.bits, |b| b as u32);
        if ![2, 4, 8].contains(&bits) {
            return Err(self.err(format!("bad value `{bits}` for `bits`: expected 2, 4 or 8")));
        }
        Ok(ScalarSpec {
            bits,
            group: self.count("group", 1, 65536, d.group)?,
            window: self.count("window", 0, BIG, d.window)?,
            sinks: self.count("sinks", 0, BIG, d.sinks)?,
            mx: self.flag("mx", d.mx)?,
        })
    }

    /// A set of layers ([`LayerSet`]); empty when the key is absent.
    fn layer_set(&self, key: &str) -> Result<LayerSet> {
        let Some(v) = self.get(key) else {
            return Ok(LayerSet::EMPTY);
        };
        v.parse().map_err(|why| {
            self.err(format!(
                "bad value `{v}` for `{key}`: {why} (expected layer indices 0..127 joined by `+`, ranges `a-b` allowed, e.g. `0+1+28-29`)"
            ))
        })
    }

    fn pq(&self) -> Result<PqSpec> {
        use CodebookSharing as S;
        let d = PqSpec::default();
        let nbits = self.num("nbits", 1, 8)?.map(|b| b as u32);
        let share = self.choice(
            "share",
            d.training.share,
            &[
                ("none", S::None),
                ("head", S::None),
                ("heads", S::Heads),
                ("layers", S::Layers),
                ("all", S::All),
            ],
            "none, heads, layers or all",
        )?;
        let packed = self.flag("pack", d.key.packed)?;
        let layout = self.choice(
            "layout",
            SubspaceLayout::Contiguous,
            &[
                ("contig", SubspaceLayout::Contiguous),
                ("halves", SubspaceLayout::Halves),
            ],
            "contig or halves",
        )?;
        let whiten = self.choice(
            "whiten",
            KeyMetric::Euclidean,
            &[
                ("none", KeyMetric::Euclidean),
                ("diag", KeyMetric::QueryDiagonal),
                ("full", KeyMetric::QueryFull),
            ],
            "none, diag or full",
        )?;
        let dsub = self.num("dsub", 1, 65536)?.map(|v| v as usize);
        let part_dsub = |k: &str, default: usize| -> Result<usize> {
            Ok(self
                .num(k, 1, 65536)?
                .map(|v| v as usize)
                .or(dsub)
                .unwrap_or(default))
        };
        let (key_dsub, value_dsub) = (
            part_dsub("kdsub", d.key.dsub)?,
            part_dsub("vdsub", d.value.dsub)?,
        );
        let part_bits = |k: &str, default: u32| -> Result<u32> {
            Ok(self
                .num(k, 1, 8)?
                .map(|b| b as u32)
                .or(nbits)
                .unwrap_or(default))
        };
        let (key_bits, value_bits) = (
            part_bits("kbits", d.key.nbits)?,
            part_bits("vbits", d.value.nbits)?,
        );
        let iterations = self.count(
            "iters",
            1,
            crate::limits::MAX_KMEANS_ITERATIONS as u64,
            d.training.iterations,
        )?;
        let seed = match self.get("seed") {
            None => d.training.seed,
            Some(v) => v.parse().map_err(|_| {
                self.err(format!(
                    "bad value `{v}` for `seed`: expected an unsigned integer"
                ))
            })?,
        };
        let train_min = self.num("train_min", 1, BIG)?.map(|v| v as usize);
        let (center, scale) = (
            self.flag("center", d.transforms.center)?,
            self.flag("scale", d.transforms.scale)?,
        );
        let value_weighting = self.flag("vweight", d.transforms.value_weighting)?;
        let key = CodeFormat::new(key_dsub, key_bits, packed);
        let value = CodeFormat::new(value_dsub, value_bits, packed);
        let refine = self.refine(d.training.refine)?;
        let wide = self.wide(key, value, refine)?;
        Ok(PqSpec {
            key,
            value,
            regions: self.regions(&d.regions)?,
            training: PqTraining {
                share,
                iterations,
                seed,
                train_min,
                fp16_codebooks: self.flag("cb16", d.training.fp16_codebooks)?,
                refine,
            },
            transforms: PqTransforms {
                center,
                scale,
                layout,
                whiten,
                value_weighting,
            },
            wide,
        })
    }

    /// The FP16 regions beside the codes, each not given `d`'s.
    fn regions(&self, d: &PqRegions) -> Result<PqRegions> {
        Ok(PqRegions {
            sinks: self.count("sinks", 0, BIG, d.sinks)?,
            window: self.count("window", 0, BIG, d.window)?,
            flush: self.count("flush", 1, 65536, d.flush)?,
            outliers_per_mille: self.count("outliers", 0, 1000, d.outliers_per_mille)?,
            fp16_layers: self.layer_set("fp16_layers")?,
        })
    }

    /// The wide layers (`wide_layers=` and the `wide_` parts, each part
    /// not given the base's `key`, `value` or `refine`).
    fn wide(
        &self,
        key: CodeFormat,
        value: CodeFormat,
        refine: [u32; 2],
    ) -> Result<Option<WideLayers>> {
        let layers = self.layer_set(WIDE_KEYS[0])?;
        let parts = &WIDE_KEYS[1..];
        if layers.is_empty() {
            if let Some(k) = parts.iter().find(|k| self.get(k).is_some()) {
                return Err(self.err(format!("`{k}` needs `wide_layers=`")));
            }
            return Ok(None);
        }
        let dsub = |k: &str, base: usize| -> Result<usize> {
            Ok(self.num(k, 1, 65536)?.map_or(base, |v| v as usize))
        };
        let bits = |k: &str, base: u32| -> Result<u32> {
            Ok(self.num(k, 1, 8)?.map_or(base, |v| v as u32))
        };
        Ok(Some(WideLayers {
            layers,
            key: CodeFormat::new(
                dsub(parts[0], key.dsub)?,
                bits(parts[1], key.nbits)?,
                key.packed,
            ),
            value: CodeFormat::new(
                dsub(parts[2], value.dsub)?,
                bits(parts[3], value.nbits)?,
                value.packed,
            ),
            refine: [
                self.num(parts[4], 0, MAX_REFINE)?
                    .map_or(refine[0], |w| w as u32),
                self.num(parts[5], 0, MAX_REFINE)?
                    .map_or(refine[1], |w| w as u32),
            ],
        }))
    }
}

impl FromStr for KvSpec {
    type Err = KvError;

    fn from_str(s: &str) -> Result<Self> {
        let spec = s.trim();
        let (kind, rest) = match spec.split_once(':') {
            Some((k, r)) => (k.trim(), Some(r)),
            None => (spec, None),
        };
        let items = Items::parse(s, rest)?;
        let pq_keys: Vec<&str> = PQ_KEYS.iter().chain(&WIDE_KEYS).copied().collect();
        let allowed: &[&str] = match kind {
            "dense" | "fp16" => &[],
            "scalar" => SCALAR_KEYS,
            "pq" => &pq_keys,
            other => {
                return Err(items.err(format!(
                    "unknown store `{other}` (expected dense, fp16, scalar or pq)"
                )))
            }
        };
        items.only(kind, allowed)?;
        match kind {
            "dense" | "fp16" => Ok(KvSpec::Dense),
            "scalar" => Ok(KvSpec::Scalar(items.scalar()?)),
            _ => Ok(KvSpec::Pq(items.pq()?)),
        }
    }
}
