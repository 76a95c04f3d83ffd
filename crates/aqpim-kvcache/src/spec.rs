//! Cache specs: which store and its parameters, parsed from strings such as
//! `dense`, `scalar:bits=2,group=32,window=128`, `scalar:bits=4,mx=true` or
//! `pq:dsub=4,nbits=8,sinks=4,window=128` (shared with the CLI's `--kv`).

use std::fmt;

use aqpim_pq::{CodeFormat, PqParams};

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

    /// The name `share=` takes.
    pub fn name(self) -> &'static str {
        match self {
            CodebookSharing::None => "none",
            CodebookSharing::Heads => "heads",
            CodebookSharing::Layers => "layers",
            CodebookSharing::All => "all",
        }
    }
}

/// Whose PQ codebooks they are, across sequences: the other axis of
/// sharing beside [`CodebookSharing`] (which layer and KV-head pairs share
/// within one model). System presets name it in `[pim] codebooks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CodebookScope {
    /// Calibrated offline, one key and one value codebook per layer and KV
    /// head, shared by every sequence: a channel holds one copy of a KV
    /// head's value codebook for all the caches of that head it serves.
    #[default]
    Model,
    /// Trained online per cache (sequence, layer, KV head): every cache's
    /// value codebook takes its own rows on each channel that holds it.
    Sequence,
}

impl fmt::Display for CodebookScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CodebookScope::Model => "model",
            CodebookScope::Sequence => "sequence",
        })
    }
}

impl std::str::FromStr for CodebookScope {
    type Err = KvError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "model" => Ok(CodebookScope::Model),
            "sequence" => Ok(CodebookScope::Sequence),
            other => Err(KvError::Spec {
                spec: crate::limits::cut(other),
                reason: "not a codebook scope (model, sequence)".into(),
            }),
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

/// Parameters of the PQ store: the key and value code formats, then the
/// FP16 regions beside the codes, how codebooks are trained and held, and
/// the pre-transforms of keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PqSpec {
    /// Key codes (`kdsub`/`dsub`, `kbits`/`nbits`, `pack`).
    pub key: CodeFormat,
    /// Value codes (`vdsub`/`dsub`, `vbits`/`nbits`, `pack`). The spec
    /// string has one `pack` for both parts, so both formats pack alike.
    pub value: CodeFormat,
    /// Which tokens stay in FP16 beside the codes.
    pub regions: PqRegions,
    /// How codebooks are trained and held.
    pub training: PqTraining,
    /// Pre-transforms of keys and values before k-means and encoding.
    pub transforms: PqTransforms,
    /// Layers coded in a second, wider format (`wide_layers=`), if any.
    pub wide: Option<WideLayers>,
}

/// The tokens a PQ cache keeps in FP16 beside its codes, and when tokens
/// leave the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PqRegions {
    /// Leading tokens kept in FP16 (attention sinks, S).
    pub sinks: usize,
    /// Most recent tokens kept in FP16 (R).
    pub window: usize,
    /// Tokens leave the window in batches of `B` (`flush=B`, default 1): a
    /// layer encodes only at its flush points, the token counts `n` with
    /// `(n + offset) % B == 0`, `offset = layer * B / num_layers`, so that
    /// layers flush at staggered steps. Each codebook is then read once per
    /// `B` tokens instead of once per token (a decode step's appends are
    /// bound by reading every head's codebook), and the window holds between
    /// `R` and `R + B - 1` tokens.
    pub flush: usize,
    /// Outlier tokens per 1,000 encoded tokens (`outliers=N`, per head): the
    /// encoded tokens with the largest relative quantization error keep an
    /// FP16 copy (keys and values) that attention uses instead of their codes.
    pub outliers_per_mille: usize,
    /// Layers that keep every token in FP16 (`fp16_layers=0+3`): they never
    /// encode, so their tokens all stay in the recent window. A diagnostic of
    /// where a format's loss lives (`docs/results/accuracy.md`), and the
    /// mixed-precision layouts of KV quantization papers that keep the first
    /// layers exact.
    pub fp16_layers: LayerSet,
}

impl PqRegions {
    /// Whether `layer` keeps every token in FP16 (`fp16_layers=`).
    pub fn keeps_fp16(&self, layer: usize) -> bool {
        self.fp16_layers.contains(layer)
    }
}

/// How a PQ cache's codebooks are trained (online, or by `aqpim pq
/// calibrate`) and held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PqTraining {
    /// Codebook sharing across heads or layers.
    pub share: CodebookSharing,
    /// k-means iterations of online training.
    pub iterations: usize,
    /// Seed of online training.
    pub seed: u64,
    /// Online training waits until a layer holds this many tokens (default:
    /// `ksub`, the fewest k-means accepts); until then tokens stay in FP16.
    pub train_min: Option<usize>,
    /// Codebooks held as FP16 (`cb16=true`): centroids rounded to FP16 and
    /// counted at 2 bytes.
    pub fp16_codebooks: bool,
    /// Online refinement, `[keys, values]` (`refine=W` both, `krefine=`,
    /// `vrefine=` each; default 0, off): every token a cache encodes moves
    /// the centroids its codes name toward it, so that each centroid is the
    /// mean of its calibrated (or trained) value, weighted `W`, and of the
    /// cache's tokens assigned to it (MacQueen's online k-means). The
    /// cache's codebooks of that part become its own (one copy per
    /// sequence), and the codes a token gets depend on the tokens encoded
    /// before it.
    pub refine: [u32; 2],
}

/// Pre-transforms of keys and values before k-means and encoding, and how
/// calibration weighs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PqTransforms {
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
}

/// Online refinement unless `refine=` says otherwise: off. `refine=1` (a
/// centroid's calibrated value weighs as much as one token) is the weight
/// measured in `docs/results/accuracy.md`, chosen before the measurement.
const DEFAULT_REFINE: u32 = 0;

impl Default for PqSpec {
    fn default() -> Self {
        PqSpec {
            key: CodeFormat::new(4, 8, true),
            value: CodeFormat::new(4, 8, true),
            regions: PqRegions {
                sinks: 4,
                window: 128,
                flush: 1,
                outliers_per_mille: 0,
                fp16_layers: LayerSet::EMPTY,
            },
            training: PqTraining {
                share: CodebookSharing::None,
                iterations: 25,
                seed: 1234,
                train_min: None,
                fp16_codebooks: false,
                refine: [DEFAULT_REFINE; 2],
            },
            transforms: PqTransforms {
                center: false,
                scale: false,
                layout: SubspaceLayout::Contiguous,
                whiten: KeyMetric::Euclidean,
                value_weighting: false,
            },
            wide: None,
        }
    }
}

impl PqSpec {
    /// The code format of keys (`Keys`) or values.
    pub fn format(&self, part: crate::KvPart) -> CodeFormat {
        match part {
            crate::KvPart::Keys => self.key,
            crate::KvPart::Values => self.value,
        }
    }

    /// PQ parameters of the key (`Keys`) or value codebooks for head size `head_dim`.
    pub fn params(&self, head_dim: usize, part: crate::KvPart) -> Result<PqParams> {
        Ok(self.format(part).params(head_dim)?)
    }

    /// Online refinement weights of `layer`, `[keys, values]`
    /// ([`PqTraining::refine`], or the wide layers' own).
    pub fn refine_at(&self, layer: usize) -> [u32; 2] {
        match self.wide {
            Some(w) if w.layers.contains(layer) => w.refine,
            _ => self.training.refine,
        }
    }

    /// Whether `layer` is coded in the wide format (`wide_layers=`).
    pub fn is_wide(&self, layer: usize) -> bool {
        self.wide.is_some_and(|w| w.layers.contains(layer))
    }

    /// The format class of `layer`: 0 for the base format, 1 for the wide one.
    pub fn class_of(&self, layer: usize) -> usize {
        usize::from(self.is_wide(layer))
    }

    /// The code format of `part` in format class `class` (see [`PqSpec::class_of`]).
    pub fn class_format(&self, class: usize, part: crate::KvPart) -> CodeFormat {
        match (class, self.wide) {
            (1, Some(w)) => match part {
                crate::KvPart::Keys => w.key,
                crate::KvPart::Values => w.value,
            },
            _ => self.format(part),
        }
    }

    /// The code format of `part` in `layer`.
    pub fn format_at(&self, layer: usize, part: crate::KvPart) -> CodeFormat {
        self.class_format(self.class_of(layer), part)
    }

    /// PQ parameters of `part` in `layer`, for head size `head_dim`.
    pub fn params_at(
        &self,
        head_dim: usize,
        layer: usize,
        part: crate::KvPart,
    ) -> Result<PqParams> {
        Ok(self.format_at(layer, part).params(head_dim)?)
    }

    /// The latest flush point of `layer` at or before `n` tokens (see [`PqRegions::flush`]).
    pub fn flush_point(&self, n: usize, layer: usize, num_layers: usize) -> usize {
        let b = self.regions.flush.max(1);
        let offset = layer * b / num_layers.max(1);
        // Before the first flush point (`n < offset`) nothing is due.
        n.saturating_sub((n % b + offset) % b)
    }

    /// Tokens of `layer` that are encoded once it holds `n` tokens and has
    /// codebooks: every token past the sinks and older than the last `R` at
    /// the latest flush point.
    pub fn encoded_target(&self, n: usize, layer: usize, num_layers: usize) -> usize {
        if self.regions.keeps_fp16(layer) {
            return 0;
        }
        self.flush_point(n, layer, num_layers)
            .saturating_sub(self.regions.sinks + self.regions.window)
    }

    /// Whether the spec asks for a pre-transform of `part` (centering,
    /// scaling, a non-contiguous layout or, for keys, a query metric).
    pub fn transforms(&self, part: crate::KvPart) -> bool {
        self.transforms.center || self.transform_matrix(part)
    }

    /// Whether the pre-transform of `part` has a matrix (scaling, a
    /// non-contiguous layout or, for keys, a query metric).
    fn transform_matrix(&self, part: crate::KvPart) -> bool {
        let t = &self.transforms;
        t.scale
            || t.layout != SubspaceLayout::Contiguous
            || (part == crate::KvPart::Keys && t.whiten != KeyMetric::Euclidean)
    }

    /// Whether codebooks must come from calibration (query metric or
    /// attention-weighted values).
    pub fn needs_calibration(&self) -> bool {
        self.transforms.whiten != KeyMetric::Euclidean || self.transforms.value_weighting
    }

    /// Outlier tokens kept in FP16 per head when `encoded` tokens are encoded
    /// (`floor(encoded * outliers / 1000)`).
    pub fn outlier_budget(&self, encoded: usize) -> usize {
        encoded * self.regions.outliers_per_mille / 1000
    }

    /// Bytes of the pre-transform of one `part` codebook, as the store holds
    /// it: `4 d` for the mean, plus, when there is a matrix, `6 d` for a
    /// monomial one or `8 d^2` for a dense one; 0 without a transform.
    /// Scaling, a diagonal metric (`whiten=diag`) and a non-contiguous
    /// layout, alone or together, give `A = D P`, held as a `u16`
    /// permutation and an f32 diagonal (`A^-1` is derived, not stored); the
    /// full metric of keys (`whiten=full`) is held as `A` and `A^-1`, f32.
    pub fn transform_bytes(&self, part: crate::KvPart, d: usize) -> usize {
        if !self.transforms(part) {
            return 0;
        }
        let dense = part == crate::KvPart::Keys && self.transforms.whiten == KeyMetric::QueryFull;
        4 * d
            + match (self.transform_matrix(part), dense) {
                (false, _) => 0,
                (true, false) => 6 * d,
                (true, true) => 8 * d * d,
            }
    }

    /// Tokens a layer must hold before online training runs.
    pub fn train_threshold(&self) -> usize {
        self.training.train_min.unwrap_or(self.max_ksub())
    }

    /// The most centroids any codebook of the spec has.
    fn max_ksub(&self) -> usize {
        let wide = self.wide.map_or(0, |w| w.key.ksub().max(w.value.ksub()));
        self.key.ksub().max(self.value.ksub()).max(wide)
    }

    /// Why the spec cannot hold caches of `shape`, if it cannot.
    fn validate(&self, shape: &KvShape) -> std::result::Result<(), String> {
        check_formats("", self.key, self.value, shape)?;
        if self.key.packed != self.value.packed {
            return Err("keys and values pack alike (one `pack` key)".into());
        }
        if self.regions.flush == 0 {
            return Err("flush must be at least 1".into());
        }
        if self.training.iterations == 0 {
            return Err("iters must be at least 1".into());
        }
        self.regions
            .fp16_layers
            .check_within("fp16_layers", shape)?;
        if self.regions.outliers_per_mille > 1000 {
            return Err(format!(
                "outliers = {} per mille is above 1000",
                self.regions.outliers_per_mille
            ));
        }
        if let Some(w) = &self.wide {
            validate_wide(w, self, shape)?;
        }
        let ksub = self.max_ksub();
        if self.train_threshold() < ksub {
            return Err(format!(
                "train_min = {} is below ksub = {ksub}",
                self.train_threshold()
            ));
        }
        Ok(())
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
            KvSpec::Pq(p) => p.validate(shape).map_err(bad),
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
            KvSpec::Pq(p) => p.fmt(f),
        }
    }
}

impl fmt::Display for PqSpec {
    /// The canonical `pq:` form: formats, regions and training always,
    /// the rest when they differ from the defaults.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (k, v, r, t, x) = (
            &self.key,
            &self.value,
            &self.regions,
            &self.training,
            &self.transforms,
        );
        if k.dsub == v.dsub {
            write!(f, "pq:dsub={},", k.dsub)?;
        } else {
            write!(f, "pq:kdsub={},vdsub={},", k.dsub, v.dsub)?;
        }
        if k.nbits == v.nbits {
            write!(f, "nbits={}", k.nbits)?;
        } else {
            write!(f, "kbits={},vbits={}", k.nbits, v.nbits)?;
        }
        write!(
            f,
            ",sinks={},window={},share={},pack={},iters={},seed={}",
            r.sinks,
            r.window,
            t.share.name(),
            k.packed,
            t.iterations,
            t.seed
        )?;
        if r.flush != 1 {
            write!(f, ",flush={}", r.flush)?;
        }
        if let Some(n) = t.train_min {
            write!(f, ",train_min={n}")?;
        }
        if x.center {
            f.write_str(",center=true")?;
        }
        if x.scale {
            f.write_str(",scale=true")?;
        }
        if x.layout != SubspaceLayout::Contiguous {
            write!(f, ",layout={}", x.layout.name())?;
        }
        if x.whiten != KeyMetric::Euclidean {
            write!(f, ",whiten={}", x.whiten.name())?;
        }
        if x.value_weighting {
            f.write_str(",vweight=true")?;
        }
        if r.outliers_per_mille > 0 {
            write!(f, ",outliers={}", r.outliers_per_mille)?;
        }
        if !r.fp16_layers.is_empty() {
            write!(f, ",fp16_layers={}", r.fp16_layers)?;
        }
        if let Some(w) = &self.wide {
            write!(
                f,
                ",wide_layers={},wide_kdsub={},wide_kbits={},wide_vdsub={},wide_vbits={}",
                w.layers, w.key.dsub, w.key.nbits, w.value.dsub, w.value.nbits
            )?;
            if w.refine != t.refine {
                write!(
                    f,
                    ",wide_krefine={},wide_vrefine={}",
                    w.refine[0], w.refine[1]
                )?;
            }
        }
        match t.refine {
            [k, v] if k == v && k != DEFAULT_REFINE => write!(f, ",refine={k}")?,
            [k, v] if k != v => write!(f, ",krefine={k},vrefine={v}")?,
            _ => {}
        }
        if t.fp16_codebooks {
            f.write_str(",cb16=true")?;
        }
        Ok(())
    }
}

mod layers;
mod parse;

use layers::{check_formats, validate_wide};
pub use layers::{LayerSet, WideLayers};

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
            (
                q.key.nbits,
                q.value.nbits,
                q.training.share,
                q.key.packed,
                q.training.train_min
            ),
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
        assert_eq!((p.key.dsub, p.value.dsub), (2, 4));
        let k = p.params(64, crate::KvPart::Keys).unwrap();
        let v = p.params(64, crate::KvPart::Values).unwrap();
        assert_eq!(
            (k.dsub(), v.dsub(), k.num_subspaces(), v.num_subspaces()),
            (2, 4, 32, 16)
        );
        assert!(
            p.transforms.center && p.needs_calibration() && p.transforms(crate::KvPart::Values)
        );
        assert_eq!(p.outlier_budget(2000), 10);
        // Mean (4 d) for values; mean plus A and A^-1 (8 d^2) for keys
        // under a full metric; mean plus a u16 permutation and an f32
        // diagonal (6 d) for a monomial matrix.
        assert_eq!(p.transform_bytes(crate::KvPart::Values, 64), 256);
        assert_eq!(
            p.transform_bytes(crate::KvPart::Keys, 64),
            256 + 8 * 64 * 64
        );
        for (spec, keys, values) in [
            ("pq:layout=halves,whiten=diag", 256 + 6 * 64, 256 + 6 * 64),
            ("pq:scale=true", 256 + 6 * 64, 256 + 6 * 64),
            ("pq:whiten=diag", 256 + 6 * 64, 0),
            (
                "pq:layout=halves,whiten=full",
                256 + 8 * 64 * 64,
                256 + 6 * 64,
            ),
            ("pq:center=true", 256, 256),
        ] {
            let KvSpec::Pq(p) = spec.parse().unwrap() else {
                panic!("not pq")
            };
            assert_eq!(
                (
                    p.transform_bytes(crate::KvPart::Keys, 64),
                    p.transform_bytes(crate::KvPart::Values, 64)
                ),
                (keys, values),
                "{spec}"
            );
        }
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
        for s in ["dense", "scalar:bits=4,group=64,window=0,sinks=2", "scalar:bits=2,mx=true", "scalar:mx=false", "pq:dsub=2,kbits=4,vbits=3,sinks=0,window=0,share=all,pack=true,iters=5,seed=9,flush=8,train_min=300", "pq", "pq:kdsub=2,vdsub=4,center=true,scale=true,layout=halves,whiten=full,vweight=true,outliers=5,cb16=true", "pq:dsub=2,whiten=diag", "pq:dsub=2,fp16_layers=0+3-5+127"] {
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
            ("pq:fp16_layers=4-2", "runs backwards"),
            ("pq:fp16_layers=128", "`128` is not a layer index below 128"),
            ("pq:fp16_layers=1+x", "`x` is not a layer index"),
            ("pq:fp16_layers=", "`` is not a layer index"),
        ];
        for (spec, needle) in cases {
            let e = spec.parse::<KvSpec>().unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn fp16_layers_never_encode_and_name_real_layers() {
        let KvSpec::Pq(p) = "pq:dsub=2,window=4,sinks=1,fp16_layers=0+2-3"
            .parse::<KvSpec>()
            .unwrap()
        else {
            panic!("not pq")
        };
        assert_eq!(
            (0..5).map(|l| p.regions.keeps_fp16(l)).collect::<Vec<_>>(),
            [true, false, true, true, false]
        );
        assert_eq!(p.encoded_target(100, 0, 5), 0);
        assert_eq!(p.encoded_target(100, 1, 5), 95);
        assert!(p.to_string().ends_with(",fp16_layers=0+2+3"), "{p}");
        let all_but = LayerSet::all_but(5, 2);
        assert_eq!(all_but.iter().collect::<Vec<_>>(), [0, 1, 3, 4]);
        assert_eq!(all_but.to_string(), "0+1+3+4");
        assert_eq!("0-1+3-4".parse::<LayerSet>().unwrap(), all_but);
        assert!(LayerSet::EMPTY.is_empty() && !LayerSet::EMPTY.contains(0));
        assert!(!all_but.contains(LayerSet::LIMIT));
        let e = KvSpec::Pq(p)
            .validate(&KvShape::new(3, 1, 4).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fp16_layers names layer 3, but the model has 3 layers"),
            "{e}"
        );
    }

    #[test]
    fn wide_layers_take_their_own_format_and_name_real_layers() {
        let KvSpec::Pq(p) = "pq:dsub=2,kbits=8,vbits=4,wide_layers=1+3,wide_kdsub=1,wide_vbits=8"
            .parse::<KvSpec>()
            .unwrap()
        else {
            panic!("not pq")
        };
        let w = p.wide.unwrap();
        // Parts not given are the base format's.
        assert_eq!((w.key.dsub, w.key.nbits), (1, 8));
        assert_eq!((w.value.dsub, w.value.nbits), (2, 8));
        assert_eq!(
            (0..5).map(|l| p.class_of(l)).collect::<Vec<_>>(),
            [0, 1, 0, 1, 0]
        );
        assert_eq!(p.format_at(3, crate::KvPart::Keys), w.key);
        assert_eq!(p.format_at(2, crate::KvPart::Keys), p.key);
        assert_eq!(
            p.params_at(8, 1, crate::KvPart::Values).unwrap().ksub(),
            256
        );
        // Canonical, and round-trips.
        let text = p.to_string();
        assert!(
            text.contains(",wide_layers=1+3,wide_kdsub=1,wide_kbits=8,wide_vdsub=2,wide_vbits=8"),
            "{text}"
        );
        assert_eq!(text.parse::<KvSpec>().unwrap(), KvSpec::Pq(p));
        // Refinement: the base's unless the wide layers say otherwise.
        let KvSpec::Pq(r) = "pq:vrefine=8,wide_layers=1,wide_vbits=8,wide_vrefine=0"
            .parse::<KvSpec>()
            .unwrap()
        else {
            panic!("not pq")
        };
        assert_eq!((r.refine_at(0), r.refine_at(1)), ([0, 8], [0, 0]));
        assert!(r
            .to_string()
            .ends_with(",wide_krefine=0,wide_vrefine=0,krefine=0,vrefine=8"));
        assert_eq!(r.to_string().parse::<KvSpec>().unwrap(), KvSpec::Pq(r));
        assert_eq!(p.refine_at(1), p.training.refine);
        let shape = KvShape::new(4, 1, 8).unwrap();
        assert!(KvSpec::Pq(p).validate(&shape).is_ok());
        for (spec, why) in [
            (
                "pq:wide_layers=4",
                "wide_layers names layer 4, but the model has 4 layers",
            ),
            (
                "pq:dsub=2,wide_kbits=4",
                "`wide_kbits` needs `wide_layers=`",
            ),
            (
                "pq:wide_layers=1,wide_kdsub=3",
                "wide_kdsub = 3 does not divide head_dim = 8",
            ),
            (
                "pq:wide_layers=1,share=all",
                "share=none or heads), not share=all",
            ),
            (
                "pq:wide_layers=1,layout=halves",
                "contiguous subspaces, not layout=halves",
            ),
            (
                "pq:wide_layers=1,wide_vbits=9",
                "expected an integer in 1..=8",
            ),
            ("pq:wide_layers=2-1", "runs backwards"),
        ] {
            let e = spec
                .parse::<KvSpec>()
                .and_then(|s| s.validate(&shape))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{spec}: {e}");
        }
        // A wide layer's codebooks count at the wide size: one layer of
        // four, 8-bit keys over 8 subspaces (8 x 256 x 1 f32) against
        // 4 x 256 x 2.
        let r = crate::account(&shape, &KvSpec::Pq(p), 1000).unwrap();
        let plain = crate::account(
            &shape,
            &"pq:dsub=2,kbits=8,vbits=4".parse::<KvSpec>().unwrap(),
            1000,
        )
        .unwrap();
        assert_eq!(r.bytes.key_codebooks, plain.bytes.key_codebooks);
        assert_eq!(
            r.bytes.value_codebooks,
            plain.bytes.value_codebooks + 2 * 4 * (256 - 16) * 2 * 4
        );
        // Codes: keys of layers 1 and 3 take 8 bytes a token, not 4; values 4, not 2.
        let e = r.tokens_by_region.encoded as u64 / 4;
        assert_eq!(r.bytes.key_codes, plain.bytes.key_codes + 2 * e * 4);
        assert_eq!(r.bytes.value_codes, plain.bytes.value_codes + 2 * e * 2);
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
            value: CodeFormat::new(0, 8, true),
            ..PqSpec::default()
        })
        .validate(&shape)
        .is_err());
        assert!(KvSpec::Pq(PqSpec {
            key: CodeFormat::new(2, 9, true),
            value: CodeFormat::new(2, 8, true),
            ..PqSpec::default()
        })
        .validate(&shape)
        .is_err());
    }
}
