//! Cache specs: which store and its parameters, parsed from strings such as
//! `dense`, `scalar:bits=2,group=32,window=128` or
//! `pq:dsub=4,nbits=8,sinks=4,window=128` (shared with the CLI's `--kv`).

use std::fmt;
use std::str::FromStr;

use aqpim_pq::PqParams;

use crate::error::{KvError, Result};
use crate::shape::KvShape;

/// Which store holds the cache, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvSpec {
    /// Every key and value in FP16 (the exact baseline).
    Dense,
    /// KIVI-style asymmetric scalar quantization.
    Scalar(ScalarSpec),
    /// Product quantization (the AQPIM store).
    Pq(PqSpec),
}

/// Parameters of the KIVI-style scalar store (Liu et al., "KIVI", ICML 2024):
/// keys quantized per channel over groups of `group` tokens, values per token
/// over groups of `group` channels, `bits` bits per element with a per-group
/// FP16 minimum and scale; the first `sinks` and the last `window` tokens (plus
/// the tokens of a key group not yet complete) stay in FP16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalarSpec {
    /// Bits per quantized element: 2, 4 or 8.
    pub bits: u32,
    /// Group size (G): tokens per key group and channels per value group.
    pub group: usize,
    /// Recent tokens kept in FP16 (R).
    pub window: usize,
    /// Leading tokens kept in FP16 (S).
    pub sinks: usize,
}

impl Default for ScalarSpec {
    fn default() -> Self {
        ScalarSpec {
            bits: 2,
            group: 32,
            window: 128,
            sinks: 0,
        }
    }
}

/// Which (layer, KV head) pairs share a codebook. Keys and values always
/// have separate codebooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodebookSharing {
    /// One codebook per layer and KV head (the default; `share=none`).
    None,
    /// One codebook per layer, shared by its KV heads (`share=heads`).
    Heads,
    /// One codebook per KV-head index, shared by all layers (`share=layers`).
    Layers,
    /// One codebook for the whole model (`share=all`).
    All,
}

impl CodebookSharing {
    /// Number of codebooks (per part, K or V) for a shape.
    pub fn num_groups(self, shape: &KvShape) -> usize {
        match self {
            CodebookSharing::None => shape.num_layers() * shape.num_kv_heads(),
            CodebookSharing::Heads => shape.num_layers(),
            CodebookSharing::Layers => shape.num_kv_heads(),
            CodebookSharing::All => 1,
        }
    }

    /// The codebook group of `(layer, head)`, in `0..num_groups`.
    pub fn group_of(self, shape: &KvShape, layer: usize, head: usize) -> usize {
        match self {
            CodebookSharing::None => layer * shape.num_kv_heads() + head,
            CodebookSharing::Heads => layer,
            CodebookSharing::Layers => head,
            CodebookSharing::All => 0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CodebookSharing::None => "none",
            CodebookSharing::Heads => "heads",
            CodebookSharing::Layers => "layers",
            CodebookSharing::All => "all",
        }
    }
}

/// Parameters of the PQ store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PqSpec {
    /// Elements per sub-vector (dsub); `M = head_dim / dsub`.
    pub dsub: usize,
    /// Bits per key code (nbits of the K codebooks), 1..=8.
    pub key_bits: u32,
    /// Bits per value code (nbits of the V codebooks), 1..=8.
    pub value_bits: u32,
    /// Leading tokens kept in FP16 (attention sinks, S).
    pub sinks: usize,
    /// Most recent tokens kept in FP16 (R).
    pub window: usize,
    /// Codebook sharing across heads or layers.
    pub share: CodebookSharing,
    /// Store codes of `nbits <= 4` two per byte (packed nibbles); otherwise one byte per code.
    pub pack: bool,
    /// k-means iterations of online training.
    pub iterations: usize,
    /// Seed of online training.
    pub seed: u64,
    /// Online training waits until a layer holds this many tokens (default:
    /// `ksub`, the fewest k-means accepts); until then tokens stay in FP16.
    pub train_min: Option<usize>,
    /// Tokens leave the window in batches of `B` (`flush=B`, default 1): a
    /// layer encodes only at its flush points, the token counts `n` with
    /// `(n + offset) % B == 0`, `offset = layer * B / num_layers`, so that
    /// layers flush at staggered steps. Each codebook is then read once per
    /// `B` tokens instead of once per token (a decode step's appends are
    /// bound by reading every head's codebook), and the window holds between
    /// `R` and `R + B - 1` tokens.
    pub flush: usize,
}

impl Default for PqSpec {
    fn default() -> Self {
        PqSpec {
            dsub: 4,
            key_bits: 8,
            value_bits: 8,
            sinks: 4,
            window: 128,
            share: CodebookSharing::None,
            pack: true,
            iterations: 25,
            seed: 1234,
            train_min: None,
            flush: 1,
        }
    }
}

impl PqSpec {
    /// PQ parameters of the key (`Keys`) or value codebooks for head size `head_dim`.
    pub fn params(&self, head_dim: usize, part: crate::KvPart) -> Result<PqParams> {
        let bits = match part {
            crate::KvPart::Keys => self.key_bits,
            crate::KvPart::Values => self.value_bits,
        };
        Ok(PqParams::with_dsub(head_dim, self.dsub, bits)?)
    }

    /// Whether codes of `nbits` bits are stored packed (two per byte).
    pub fn packed(&self, nbits: u32) -> bool {
        self.pack && nbits <= 4
    }

    /// Bytes per token of codes with these parameters: `ceil(M / 2)` packed, `M` otherwise.
    pub fn code_row_bytes(&self, params: &PqParams) -> usize {
        if self.packed(params.nbits()) {
            aqpim_pq::packed_row_bytes(params.num_subspaces())
        } else {
            params.num_subspaces()
        }
    }

    /// The latest flush point of `layer` at or before `n` tokens (see [`PqSpec::flush`]).
    pub fn flush_point(&self, n: usize, layer: usize, num_layers: usize) -> usize {
        let b = self.flush.max(1);
        let offset = layer * b / num_layers.max(1);
        // Before the first flush point (`n < offset`) nothing is due.
        n.saturating_sub((n % b + offset) % b)
    }

    /// Tokens of `layer` that are encoded once it holds `n` tokens and has
    /// codebooks: every token past the sinks and older than the last `R` at
    /// the latest flush point.
    pub fn encoded_target(&self, n: usize, layer: usize, num_layers: usize) -> usize {
        self.flush_point(n, layer, num_layers)
            .saturating_sub(self.sinks + self.window)
    }

    /// Tokens a layer must hold before online training runs.
    pub fn train_threshold(&self) -> usize {
        self.train_min
            .unwrap_or(1 << self.key_bits.max(self.value_bits))
    }
}

impl KvSpec {
    /// Checks that the spec can hold caches of this shape.
    pub fn validate(&self, shape: &KvShape) -> Result<()> {
        let bad = |reason: String| KvError::Incompatible {
            spec: self.to_string(),
            shape: shape.to_string(),
            reason,
        };
        match self {
            KvSpec::Dense => Ok(()),
            KvSpec::Scalar(s) => {
                if ![2, 4, 8].contains(&s.bits) {
                    return Err(bad(format!("bits = {} is not 2, 4 or 8", s.bits)));
                }
                if s.group == 0 || !shape.head_dim().is_multiple_of(s.group) {
                    return Err(bad(format!(
                        "group = {} does not divide head_dim = {}",
                        s.group,
                        shape.head_dim()
                    )));
                }
                Ok(())
            }
            KvSpec::Pq(p) => {
                for (name, bits) in [("kbits", p.key_bits), ("vbits", p.value_bits)] {
                    if !(1..=8).contains(&bits) {
                        return Err(bad(format!("{name} = {bits} is not in 1..=8")));
                    }
                }
                if p.flush == 0 {
                    return Err(bad("flush must be at least 1".into()));
                }
                if p.iterations == 0 {
                    return Err(bad("iters must be at least 1".into()));
                }
                if p.dsub == 0 || !shape.head_dim().is_multiple_of(p.dsub) {
                    return Err(bad(format!(
                        "dsub = {} does not divide head_dim = {}",
                        p.dsub,
                        shape.head_dim()
                    )));
                }
                let ksub = 1usize << p.key_bits.max(p.value_bits);
                if p.train_threshold() < ksub {
                    return Err(bad(format!(
                        "train_min = {} is below ksub = {ksub}",
                        p.train_threshold()
                    )));
                }
                Ok(())
            }
        }
    }

    /// Short name of the store: `dense`, `scalar` or `pq`.
    pub fn kind(&self) -> &'static str {
        match self {
            KvSpec::Dense => "dense",
            KvSpec::Scalar(_) => "scalar",
            KvSpec::Pq(_) => "pq",
        }
    }
}

impl fmt::Display for KvSpec {
    /// The canonical form, which parses back to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvSpec::Dense => f.write_str("dense"),
            KvSpec::Scalar(s) => {
                write!(
                    f,
                    "scalar:bits={},group={},window={},sinks={}",
                    s.bits, s.group, s.window, s.sinks
                )
            }
            KvSpec::Pq(p) => {
                write!(f, "pq:dsub={},", p.dsub)?;
                if p.key_bits == p.value_bits {
                    write!(f, "nbits={}", p.key_bits)?;
                } else {
                    write!(f, "kbits={},vbits={}", p.key_bits, p.value_bits)?;
                }
                write!(
                    f,
                    ",sinks={},window={},share={},pack={},iters={},seed={}",
                    p.sinks,
                    p.window,
                    p.share.name(),
                    p.pack,
                    p.iterations,
                    p.seed
                )?;
                if p.flush != 1 {
                    write!(f, ",flush={}", p.flush)?;
                }
                if let Some(t) = p.train_min {
                    write!(f, ",train_min={t}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for KvSpec {
    type Err = KvError;

    fn from_str(s: &str) -> Result<Self> {
        let spec = s.trim();
        let err = |reason: String| KvError::Spec {
            spec: s.to_string(),
            reason,
        };
        let (kind, rest) = match spec.split_once(':') {
            Some((k, r)) => (k.trim(), Some(r)),
            None => (spec, None),
        };
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if let Some(rest) = rest {
            for item in rest.split(',') {
                let item = item.trim();
                if item.is_empty() {
                    return Err(err("empty `key=value` item (stray comma?)".into()));
                }
                let (k, v) = item
                    .split_once('=')
                    .ok_or_else(|| err(format!("`{item}` is not `key=value`")))?;
                let (k, v) = (k.trim(), v.trim());
                if pairs.iter().any(|(p, _)| *p == k) {
                    return Err(err(format!("key `{k}` given twice")));
                }
                pairs.push((k, v));
            }
        }
        let allowed: &[&str] = match kind {
            "dense" | "fp16" => &[],
            "scalar" => &["bits", "group", "window", "sinks"],
            "pq" => &[
                "dsub",
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
            ],
            other => {
                return Err(err(format!(
                    "unknown store `{other}` (expected dense, fp16, scalar or pq)"
                )))
            }
        };
        for (k, _) in &pairs {
            if !allowed.contains(k) {
                return Err(if allowed.is_empty() {
                    err(format!("`{kind}` takes no parameters, got `{k}`"))
                } else {
                    err(format!(
                        "unknown key `{k}` for `{kind}` (expected one of {})",
                        allowed.join(", ")
                    ))
                });
            }
        }
        let get = |k: &str| pairs.iter().find(|(p, _)| *p == k).map(|(_, v)| *v);
        let num = |k: &str, min: u64, max: u64| -> Result<Option<u64>> {
            match get(k) {
                None => Ok(None),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                    _ => Err(err(format!(
                        "bad value `{v}` for `{k}`: expected an integer in {min}..={max}"
                    ))),
                },
            }
        };
        const BIG: u64 = u32::MAX as u64;
        match kind {
            "dense" | "fp16" => Ok(KvSpec::Dense),
            "scalar" => {
                let d = ScalarSpec::default();
                let bits = num("bits", 0, BIG)?.map_or(d.bits, |b| b as u32);
                if ![2, 4, 8].contains(&bits) {
                    return Err(err(format!(
                        "bad value `{bits}` for `bits`: expected 2, 4 or 8"
                    )));
                }
                Ok(KvSpec::Scalar(ScalarSpec {
                    bits,
                    group: num("group", 1, 65536)?.map_or(d.group, |v| v as usize),
                    window: num("window", 0, BIG)?.map_or(d.window, |v| v as usize),
                    sinks: num("sinks", 0, BIG)?.map_or(d.sinks, |v| v as usize),
                }))
            }
            _ => {
                let d = PqSpec::default();
                let nbits = num("nbits", 1, 8)?.map(|b| b as u32);
                let share = match get("share") {
                    None => d.share,
                    Some("none" | "head") => CodebookSharing::None,
                    Some("heads") => CodebookSharing::Heads,
                    Some("layers") => CodebookSharing::Layers,
                    Some("all") => CodebookSharing::All,
                    Some(v) => {
                        return Err(err(format!(
                            "bad value `{v}` for `share`: expected none, heads, layers or all"
                        )))
                    }
                };
                let pack = match get("pack") {
                    None => d.pack,
                    Some("true" | "1" | "yes") => true,
                    Some("false" | "0" | "no") => false,
                    Some(v) => {
                        return Err(err(format!(
                            "bad value `{v}` for `pack`: expected true or false"
                        )))
                    }
                };
                Ok(KvSpec::Pq(PqSpec {
                    dsub: num("dsub", 1, 65536)?.map_or(d.dsub, |v| v as usize),
                    key_bits: num("kbits", 1, 8)?
                        .map(|b| b as u32)
                        .or(nbits)
                        .unwrap_or(d.key_bits),
                    value_bits: num("vbits", 1, 8)?
                        .map(|b| b as u32)
                        .or(nbits)
                        .unwrap_or(d.value_bits),
                    sinks: num("sinks", 0, BIG)?.map_or(d.sinks, |v| v as usize),
                    window: num("window", 0, BIG)?.map_or(d.window, |v| v as usize),
                    share,
                    pack,
                    iterations: num("iters", 1, 100_000)?.map_or(d.iterations, |v| v as usize),
                    seed: match get("seed") {
                        None => d.seed,
                        Some(v) => v.parse().map_err(|_| {
                            err(format!(
                                "bad value `{v}` for `seed`: expected an unsigned integer"
                            ))
                        })?,
                    },
                    train_min: num("train_min", 1, BIG)?.map(|v| v as usize),
                    flush: num("flush", 1, 65536)?.map_or(d.flush, |v| v as usize),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!("dense".parse::<KvSpec>().unwrap(), KvSpec::Dense);
        assert_eq!("fp16".parse::<KvSpec>().unwrap(), KvSpec::Dense);
        let s: KvSpec = "scalar:bits=2,group=32,window=128".parse().unwrap();
        assert_eq!(
            s,
            KvSpec::Scalar(ScalarSpec {
                bits: 2,
                group: 32,
                window: 128,
                sinks: 0
            })
        );
        let p: KvSpec = "pq:dsub=4,nbits=8,sinks=4,window=128".parse().unwrap();
        assert_eq!(p, KvSpec::Pq(PqSpec::default()));
        let q: KvSpec = " pq : kbits=4, vbits=2, share=layers, pack=false, train_min=512 "
            .parse()
            .unwrap();
        let KvSpec::Pq(q) = q else { panic!("not pq") };
        assert_eq!(
            (q.key_bits, q.value_bits, q.share, q.pack, q.train_min),
            (4, 2, CodebookSharing::Layers, false, Some(512))
        );
    }

    #[test]
    fn canonical_form_round_trips() {
        for s in ["dense", "scalar:bits=4,group=64,window=0,sinks=2", "pq:dsub=2,kbits=4,vbits=3,sinks=0,window=0,share=all,pack=true,iters=5,seed=9,flush=8,train_min=300", "pq"] {
            let spec: KvSpec = s.parse().unwrap();
            assert_eq!(spec.to_string().parse::<KvSpec>().unwrap(), spec, "{s}");
        }
    }

    #[test]
    fn errors_name_the_bad_key_or_value() {
        let cases = [
            ("pq:dsub=4,nbit=8", "`nbit`"),
            ("pq:nbits=9", "`nbits`"),
            ("pq:dsub=x", "`x`"),
            ("pq:dsub=4,,nbits=8", "stray comma"),
            ("pq:dsub", "`dsub` is not `key=value`"),
            ("pq:dsub=4,dsub=2", "twice"),
            ("scalar:bits=3", "expected 2, 4 or 8"),
            ("scalar:group=0", "`group`"),
            ("dense:window=4", "takes no parameters"),
            ("kivi:bits=2", "unknown store `kivi`"),
            ("pq:share=some", "`share`"),
        ];
        for (spec, needle) in cases {
            let e = spec.parse::<KvSpec>().unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn validate_checks_divisibility() {
        let shape = KvShape::new(1, 1, 6).unwrap();
        assert!("pq:dsub=4"
            .parse::<KvSpec>()
            .unwrap()
            .validate(&shape)
            .is_err());
        assert!("pq:dsub=3"
            .parse::<KvSpec>()
            .unwrap()
            .validate(&shape)
            .is_ok());
        assert!("scalar:group=4"
            .parse::<KvSpec>()
            .unwrap()
            .validate(&shape)
            .is_err());
        assert!("pq:dsub=3,train_min=10"
            .parse::<KvSpec>()
            .unwrap()
            .validate(&shape)
            .is_err());
        // Specs built in code, not parsed, are checked too.
        let bad_scalar = KvSpec::Scalar(ScalarSpec {
            group: 0,
            ..ScalarSpec::default()
        });
        assert!(bad_scalar.validate(&shape).is_err());
        assert!(KvSpec::Scalar(ScalarSpec {
            bits: 3,
            group: 2,
            ..ScalarSpec::default()
        })
        .validate(&shape)
        .is_err());
        assert!(KvSpec::Pq(PqSpec {
            dsub: 0,
            ..PqSpec::default()
        })
        .validate(&shape)
        .is_err());
        assert!(KvSpec::Pq(PqSpec {
            dsub: 2,
            key_bits: 9,
            ..PqSpec::default()
        })
        .validate(&shape)
        .is_err());
    }
}
