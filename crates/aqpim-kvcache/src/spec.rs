//! Cache specs: which store and its parameters, parsed from strings such as
//! `dense`, `scalar:bits=2,group=32,window=128`, `scalar:bits=4,mx=true` or
//! `pq:dsub=4,nbits=8,sinks=4,window=128` (shared with the CLI's `--kv`).

use std::fmt;
use std::str::FromStr;

use aqpim_pq::{CodeWidth, PqParams};

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
///
/// With `mx = true` the groups follow the OCP Microscaling (MX) spec v1.0
/// instead, as Pimba (MICRO 2025) computes on them in its PIM units: keys and
/// values alike are grouped as `group` consecutive channels of one token,
/// each group shares one E8M0 exponent (8 bits, scale `2^(e - 127)`), and
/// elements are `bits`-bit two's-complement integers (MXINT-style):
/// `x = q * 2^(e - 127)`. See [`crate::mx`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalarSpec {
    /// Bits per quantized element: 2, 4 or 8.
    pub bits: u32,
    /// Group size (G): tokens per key group and channels per value group
    /// (with `mx`, channels per group for both).
    pub group: usize,
    /// Recent tokens kept in FP16 (R).
    pub window: usize,
    /// Leading tokens kept in FP16 (S).
    pub sinks: usize,
    /// MX-style groups (`mx=true`): per-token channel groups with a shared
    /// 8-bit exponent, signed integer elements.
    pub mx: bool,
}

impl ScalarSpec {
    /// Tokens that leave the FP16 window together: `G` for KIVI keys (a
    /// channel's group spans `G` tokens), 1 with `mx` (every group lies
    /// within one token).
    pub fn token_group(&self) -> usize {
        if self.mx {
            1
        } else {
            self.group
        }
    }
}

impl Default for ScalarSpec {
    fn default() -> Self {
        ScalarSpec {
            bits: 2,
            group: 32,
            window: 128,
            sinks: 0,
            mx: false,
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

/// How a head's channels are grouped into PQ subspaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubspaceLayout {
    /// Subspace `m` holds channels `m * dsub .. (m + 1) * dsub` (`layout=contig`,
    /// the default). For Llama-layout GGUF models (RoPE pairs `(2i, 2i + 1)`) a
    /// 2-element sub-vector is one rotation pair.
    Contiguous,
    /// Subspace `m` holds channels `m, m + d / dsub, m + 2 d / dsub, ...`
    /// (`layout=halves`): with `dsub = 2`, the pairs `(i, i + d / 2)`, the RoPE
    /// pairs of NeoX-layout models (and a misaligned layout for Llama-layout ones).
    Halves,
}

impl SubspaceLayout {
    /// The channel at position `i` of the permuted vector (`perm[i]`).
    pub fn permutation(self, d: usize, dsub: usize) -> Vec<usize> {
        match self {
            SubspaceLayout::Contiguous => (0..d).collect(),
            SubspaceLayout::Halves => {
                let m = d / dsub.max(1);
                (0..d).map(|i| (i % dsub) * m + i / dsub).collect()
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            SubspaceLayout::Contiguous => "contig",
            SubspaceLayout::Halves => "halves",
        }
    }
}

/// The metric key codebooks are trained in (`whiten=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyMetric {
    /// Euclidean (`whiten=none`, the default).
    Euclidean,
    /// Keys scaled per channel by the RMS of the calibration queries
    /// (`whiten=diag`): the diagonal of the score metric.
    QueryDiagonal,
    /// Keys multiplied by `S^(1/2)`, `S = E[q q^T]` over calibration queries
    /// (`whiten=full`): k-means then minimizes `E[(q . (k - k^))^2]`.
    QueryFull,
}

impl KeyMetric {
    fn name(self) -> &'static str {
        match self {
            KeyMetric::Euclidean => "none",
            KeyMetric::QueryDiagonal => "diag",
            KeyMetric::QueryFull => "full",
        }
    }
}

/// Parameters of the PQ store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PqSpec {
    /// Elements per key sub-vector (`kdsub`, or `dsub` for both parts); `M = head_dim / dsub`.
    /// Read it through [`PqSpec::params`].
    pub key_dsub: usize,
    /// Elements per value sub-vector (`vdsub`).
    pub value_dsub: usize,
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
    /// Store codes packed: four per byte for `nbits <= 2`, two per byte
    /// (nibbles) for `nbits <= 4`; otherwise, and with `pack=false`, one byte per code.
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
    /// Mean centering (`center=true`): keys and values minus their
    /// per-channel mean (per codebook group) before k-means and encoding.
    /// Scores drop nothing (the key mean's score `q . mu` is added to every
    /// encoded score); the value mean is added back on the output.
    pub center: bool,
    /// Per-channel scaling (`scale=true`): keys and values divided by their
    /// per-channel standard deviation before k-means and encoding, undone in
    /// the query (keys) and on the output (values).
    pub scale: bool,
    /// Subspace layout (`layout=contig|halves`).
    pub layout: SubspaceLayout,
    /// Key metric (`whiten=none|diag|full`); needs calibration queries
    /// (`aqpim pq calibrate`), not available to online training.
    pub whiten: KeyMetric,
    /// Value codebooks weighted by the attention mass each calibration token
    /// receives (`vweight=true`); calibration only.
    pub value_weighting: bool,
    /// Outlier tokens per 1,000 encoded tokens (`outliers=N`, per head): the
    /// encoded tokens with the largest relative quantization error keep an
    /// FP16 copy (keys and values) that attention uses instead of their codes.
    pub outliers_per_mille: usize,
    /// Codebooks held as FP16 (`cb16=true`): centroids rounded to FP16 and
    /// counted at 2 bytes.
    pub fp16_codebooks: bool,
}

impl Default for PqSpec {
    fn default() -> Self {
        PqSpec {
            key_dsub: 4,
            value_dsub: 4,
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
            center: false,
            scale: false,
            layout: SubspaceLayout::Contiguous,
            whiten: KeyMetric::Euclidean,
            value_weighting: false,
            outliers_per_mille: 0,
            fp16_codebooks: false,
        }
    }
}

impl PqSpec {
    /// PQ parameters of the key (`Keys`) or value codebooks for head size `head_dim`.
    pub fn params(&self, head_dim: usize, part: crate::KvPart) -> Result<PqParams> {
        let (dsub, bits) = match part {
            crate::KvPart::Keys => (self.key_dsub, self.key_bits),
            crate::KvPart::Values => (self.value_dsub, self.value_bits),
        };
        Ok(PqParams::with_dsub(head_dim, dsub, bits)?)
    }

    /// How codes of `nbits` bits are stored: with `pack=true`, the tightest
    /// width ([`CodeWidth::tightest`]: four codes per byte for `nbits <= 2`,
    /// two for `nbits <= 4`); with `pack=false`, one byte per code.
    pub fn code_width(&self, nbits: u32) -> CodeWidth {
        if self.pack {
            CodeWidth::tightest(nbits)
        } else {
            CodeWidth::Byte
        }
    }

    /// Bytes per token of codes with these parameters: `ceil(M / 4)` packed
    /// with `nbits <= 2`, `ceil(M / 2)` packed with `nbits <= 4`, `M` otherwise.
    pub fn code_row_bytes(&self, params: &PqParams) -> usize {
        self.code_width(params.nbits())
            .row_bytes(params.num_subspaces())
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

    /// Whether the spec asks for a pre-transform of `part` (centering,
    /// scaling, a non-contiguous layout or, for keys, a query metric).
    pub fn transforms(&self, part: crate::KvPart) -> bool {
        self.center
            || self.scale
            || self.layout != SubspaceLayout::Contiguous
            || (part == crate::KvPart::Keys && self.whiten != KeyMetric::Euclidean)
    }

    /// Whether codebooks must come from calibration (query metric or
    /// attention-weighted values).
    pub fn needs_calibration(&self) -> bool {
        self.whiten != KeyMetric::Euclidean || self.value_weighting
    }

    /// Outlier tokens kept in FP16 per head when `encoded` tokens are encoded
    /// (`floor(encoded * outliers / 1000)`).
    pub fn outlier_budget(&self, encoded: usize) -> usize {
        encoded * self.outliers_per_mille / 1000
    }

    /// Bytes of the pre-transform of one `part` codebook, as the store holds
    /// it: `4 d` for the mean, plus `8 d^2` for `A` and `A^-1` when there is
    /// a matrix (scaling, a query metric or a non-contiguous layout); 0 without one.
    pub fn transform_bytes(&self, part: crate::KvPart, d: usize) -> usize {
        if !self.transforms(part) {
            return 0;
        }
        let matrix = self.scale
            || self.layout != SubspaceLayout::Contiguous
            || (part == crate::KvPart::Keys && self.whiten != KeyMetric::Euclidean);
        4 * d + if matrix { 8 * d * d } else { 0 }
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
                for (name, dsub) in [("kdsub", p.key_dsub), ("vdsub", p.value_dsub)] {
                    if dsub == 0 || !shape.head_dim().is_multiple_of(dsub) {
                        return Err(bad(format!(
                            "{name} = {dsub} does not divide head_dim = {}",
                            shape.head_dim()
                        )));
                    }
                }
                if p.outliers_per_mille > 1000 {
                    return Err(bad(format!(
                        "outliers = {} per mille is above 1000",
                        p.outliers_per_mille
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
                )?;
                if s.mx {
                    f.write_str(",mx=true")?;
                }
                Ok(())
            }
            KvSpec::Pq(p) => {
                if p.key_dsub == p.value_dsub {
                    write!(f, "pq:dsub={},", p.key_dsub)?;
                } else {
                    write!(f, "pq:kdsub={},vdsub={},", p.key_dsub, p.value_dsub)?;
                }
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
                if p.center {
                    f.write_str(",center=true")?;
                }
                if p.scale {
                    f.write_str(",scale=true")?;
                }
                if p.layout != SubspaceLayout::Contiguous {
                    write!(f, ",layout={}", p.layout.name())?;
                }
                if p.whiten != KeyMetric::Euclidean {
                    write!(f, ",whiten={}", p.whiten.name())?;
                }
                if p.value_weighting {
                    f.write_str(",vweight=true")?;
                }
                if p.outliers_per_mille > 0 {
                    write!(f, ",outliers={}", p.outliers_per_mille)?;
                }
                if p.fp16_codebooks {
                    f.write_str(",cb16=true")?;
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
            spec: crate::limits::cut(s),
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
            "scalar" => &["bits", "group", "window", "sinks", "mx"],
            "pq" => &[
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
                        "bad value `{}` for `{k}`: expected an integer in {min}..={max}",
                        crate::limits::cut(v)
                    ))),
                },
            }
        };
        // Token counts (window, sinks, train_min) are bounded by the longest
        // context a cache may hold.
        const BIG: u64 = crate::limits::MAX_CTX as u64;
        let flag = |k: &str, default: bool| match get(k) {
            None => Ok(default),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(v) => Err(err(format!(
                "bad value `{v}` for `{k}`: expected true or false"
            ))),
        };
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
                    mx: flag("mx", d.mx)?,
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
                let pack = flag("pack", d.pack)?;
                let layout = match get("layout") {
                    None | Some("contig") => SubspaceLayout::Contiguous,
                    Some("halves") => SubspaceLayout::Halves,
                    Some(v) => {
                        return Err(err(format!(
                            "bad value `{v}` for `layout`: expected contig or halves"
                        )))
                    }
                };
                let whiten = match get("whiten") {
                    None | Some("none") => KeyMetric::Euclidean,
                    Some("diag") => KeyMetric::QueryDiagonal,
                    Some("full") => KeyMetric::QueryFull,
                    Some(v) => {
                        return Err(err(format!(
                            "bad value `{v}` for `whiten`: expected none, diag or full"
                        )))
                    }
                };
                let dsub = num("dsub", 1, 65536)?.map(|v| v as usize);
                Ok(KvSpec::Pq(PqSpec {
                    key_dsub: num("kdsub", 1, 65536)?
                        .map(|v| v as usize)
                        .or(dsub)
                        .unwrap_or(d.key_dsub),
                    value_dsub: num("vdsub", 1, 65536)?
                        .map(|v| v as usize)
                        .or(dsub)
                        .unwrap_or(d.value_dsub),
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
                    iterations: num("iters", 1, crate::limits::MAX_KMEANS_ITERATIONS as u64)?
                        .map_or(d.iterations, |v| v as usize),
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
                    center: flag("center", d.center)?,
                    scale: flag("scale", d.scale)?,
                    layout,
                    whiten,
                    value_weighting: flag("vweight", d.value_weighting)?,
                    outliers_per_mille: num("outliers", 0, 1000)?
                        .map_or(d.outliers_per_mille, |v| v as usize),
                    fp16_codebooks: flag("cb16", d.fp16_codebooks)?,
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
                sinks: 0,
                mx: false
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
    fn per_part_dsub_and_accuracy_keys() {
        let KvSpec::Pq(p) = "pq:dsub=2,vdsub=4,nbits=4,center=1,whiten=full,outliers=5"
            .parse()
            .unwrap()
        else {
            panic!("not pq")
        };
        assert_eq!((p.key_dsub, p.value_dsub), (2, 4));
        let k = p.params(64, crate::KvPart::Keys).unwrap();
        let v = p.params(64, crate::KvPart::Values).unwrap();
        assert_eq!(
            (k.dsub(), v.dsub(), k.num_subspaces(), v.num_subspaces()),
            (2, 4, 32, 16)
        );
        assert!(p.center && p.needs_calibration() && p.transforms(crate::KvPart::Values));
        assert_eq!(p.outlier_budget(2000), 10);
        // Mean (4 d) for values; mean plus A and A^-1 (8 d^2) for whitened keys.
        assert_eq!(p.transform_bytes(crate::KvPart::Values, 64), 256);
        assert_eq!(
            p.transform_bytes(crate::KvPart::Keys, 64),
            256 + 8 * 64 * 64
        );
        for (bad, needle) in [
            ("pq:whiten=yes", "`whiten`"),
            ("pq:layout=rope", "`layout`"),
            ("pq:outliers=1001", "`outliers`"),
            ("pq:center=maybe", "`center`"),
        ] {
            let e = bad.parse::<KvSpec>().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        // Halves pair channel i with i + d / 2.
        assert_eq!(
            SubspaceLayout::Halves.permutation(8, 2),
            vec![0, 4, 1, 5, 2, 6, 3, 7]
        );
        assert_eq!(
            SubspaceLayout::Contiguous.permutation(4, 2),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn canonical_form_round_trips() {
        for s in ["dense", "scalar:bits=4,group=64,window=0,sinks=2", "scalar:bits=2,mx=true", "scalar:mx=false", "pq:dsub=2,kbits=4,vbits=3,sinks=0,window=0,share=all,pack=true,iters=5,seed=9,flush=8,train_min=300", "pq", "pq:kdsub=2,vdsub=4,center=true,scale=true,layout=halves,whiten=full,vweight=true,outliers=5,cb16=true", "pq:dsub=2,whiten=diag"] {
            let spec: KvSpec = s.parse().unwrap();
            assert_eq!(spec.to_string().parse::<KvSpec>().unwrap(), spec, "{s}");
        }
    }

    #[test]
    fn mx_shows_only_when_set() {
        let mx: KvSpec = "scalar:bits=4,mx=true".parse().unwrap();
        assert_eq!(
            mx.to_string(),
            "scalar:bits=4,group=32,window=128,sinks=0,mx=true"
        );
        let KvSpec::Scalar(s) = mx else {
            panic!("not scalar")
        };
        assert_eq!((s.mx, s.token_group()), (true, 1));
        let kivi: KvSpec = "scalar:bits=4,mx=false".parse().unwrap();
        assert_eq!(
            kivi.to_string(),
            "scalar:bits=4,group=32,window=128,sinks=0"
        );
        // Groups must divide the head dim, with mx as without.
        let e = "scalar:group=24,mx=true"
            .parse::<KvSpec>()
            .unwrap()
            .validate(&KvShape::new(1, 1, 64).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("group = 24 does not divide head_dim = 64"),
            "{e}"
        );
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
            ("scalar:mx=maybe", "`mx`"),
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
            value_dsub: 0,
            ..PqSpec::default()
        })
        .validate(&shape)
        .is_err());
        assert!(KvSpec::Pq(PqSpec {
            key_dsub: 2,
            value_dsub: 2,
            key_bits: 9,
            ..PqSpec::default()
        })
        .validate(&shape)
        .is_err());
    }
}
