//! Model and system presets: serde structs for the TOML files in this
//! crate's `presets/`, compiled in by name, validated before use.

use aqpim_kvcache::CodebookScope;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SystemError};

/// FP16 bytes per element, for weights and the uncompressed KV cache.
pub const FP16_BYTES: u64 = 2;

/// The largest time (ms), bandwidth (GB/s) or throughput (TFLOP/s) a
/// preset may state: no real part comes near it, and anything larger is a
/// typo that would swamp every sum it enters.
pub const MAX_FIGURE: f64 = 1e6;

/// The largest memory (bytes) a preset may state: 1 PiB.
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;

/// The largest size of a model dimension (layers, heads, hidden, ffn,
/// vocab): products of a few of them stay far inside 64 bits.
pub const MAX_MODEL_DIM: usize = 1 << 20;

/// The shape of a decoder-only transformer (Llama family).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Preset name.
    pub name: String,
    /// Transformer layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// SwiGLU intermediate size.
    pub ffn: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Where the numbers come from.
    pub source: String,
}

impl ModelSpec {
    /// Checks that the shape is a transformer: positive sizes, `heads` dividing
    /// `hidden`, `kv_heads` dividing `heads`.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(SystemError::Preset {
                name: self.name.clone(),
                reason,
            })
        };
        for (field, v) in [
            ("layers", self.layers),
            ("hidden", self.hidden),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("ffn", self.ffn),
            ("vocab", self.vocab),
        ] {
            if v == 0 || v > MAX_MODEL_DIM {
                return bad(format!("{field} = {v} must be in 1..={MAX_MODEL_DIM}"));
            }
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return bad(format!(
                "heads = {} does not divide hidden = {}",
                self.heads, self.hidden
            ));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "kv_heads = {} does not divide heads = {}",
                self.kv_heads, self.heads
            ));
        }
        Ok(())
    }

    /// FP16 weight bytes of one layer: Q and O (`2 * hidden * heads * head_dim`),
    /// K and V (`2 * hidden * kv_heads * head_dim`) and the SwiGLU FFN
    /// (`3 * hidden * ffn`). Norms are negligible and left out.
    pub fn layer_weight_bytes(&self) -> u64 {
        let (h, hd) = (self.hidden as u64, self.head_dim as u64);
        let attn = 2 * h * self.heads as u64 * hd + 2 * h * self.kv_heads as u64 * hd;
        FP16_BYTES * (attn + 3 * h * self.ffn as u64)
    }

    /// FP16 bytes of the output projection (`vocab x hidden`), read once per step.
    pub fn head_weight_bytes(&self) -> u64 {
        FP16_BYTES * self.vocab as u64 * self.hidden as u64
    }

    /// FP16 weight bytes of the whole model (layers, output projection, embeddings).
    pub fn weight_bytes(&self) -> u64 {
        self.layers as u64 * self.layer_weight_bytes() + 2 * self.head_weight_bytes()
    }

    /// FP16 KV bytes of one token in one layer: `2 (K and V) x kv_heads x head_dim x 2 B`.
    pub fn kv_bytes_per_token_layer(&self) -> u64 {
        2 * self.kv_heads as u64 * self.head_dim as u64 * FP16_BYTES
    }
}

/// The GPU of a system, with the measured efficiencies of decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// Product name.
    pub name: String,
    /// Device memory, bytes.
    pub memory_bytes: u64,
    /// Datasheet peak memory bandwidth, GB/s.
    pub peak_hbm_gbps: f64,
    /// Fixed cost of one layer's decode attention, ms.
    pub attn_fixed_ms: f64,
    /// Achieved KV bandwidth of decode attention, GB/s.
    pub attn_gbps: f64,
    /// Achieved weight bandwidth of decode linear layers, GB/s.
    pub linear_gbps: f64,
    /// Fixed cost of one layer's decode attention directly on PQ codes, ms
    /// (used for tokens an `aqpim` system spilled to host memory as codes).
    #[serde(default)]
    pub pq_attn_fixed_ms: Option<f64>,
    /// Achieved code bandwidth of decode attention on PQ codes, GB/s.
    #[serde(default)]
    pub pq_attn_gbps: Option<f64>,
    /// Dense FP16 tensor peak, TFLOP/s (prefill and codebook-training estimates).
    #[serde(default)]
    pub fp16_tflops: Option<f64>,
    /// Share of `fp16_tflops` that prefill and k-means reach (an estimate).
    #[serde(default)]
    pub compute_efficiency: Option<f64>,
    /// The scalar-quantized format the `gpu-quant` policy keeps in GPU
    /// memory: a `scalar:` cache spec (`aqpim kv stats` counts its bytes).
    #[serde(default)]
    pub kv: Option<String>,
    /// Fixed cost of one layer's fused low-bit decode attention, ms.
    #[serde(default)]
    pub quant_attn_fixed_ms: Option<f64>,
    /// Achieved bandwidth of fused low-bit decode attention over the bytes
    /// of the quantized cache (codes, scales, FP16 window), GB/s.
    #[serde(default)]
    pub quant_attn_gbps: Option<f64>,
}

impl GpuSpec {
    /// The scalar spec of `kv`, if any.
    pub fn scalar_spec(&self) -> Result<Option<aqpim_kvcache::ScalarSpec>> {
        scalar_of(self.kv.as_deref(), &self.name, "gpu.kv")
    }
}

/// The scalar spec of an optional `kv` string; `what` names the key.
fn scalar_of(
    kv: Option<&str>,
    name: &str,
    what: &str,
) -> Result<Option<aqpim_kvcache::ScalarSpec>> {
    let Some(kv) = kv else { return Ok(None) };
    let bad = |reason: String| SystemError::Preset {
        name: name.to_string(),
        reason: format!("{what} = `{kv}`: {reason}"),
    };
    match kv.parse::<aqpim_kvcache::KvSpec>() {
        Ok(aqpim_kvcache::KvSpec::Scalar(s)) => Ok(Some(s)),
        Ok(other) => Err(bad(format!(
            "expected a scalar: spec, found a {} spec",
            other.kind()
        ))),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// The host link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Name.
    pub name: String,
    /// Host-to-device bandwidth, GB/s.
    pub gbps: f64,
}

/// Host memory available to the KV cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Bytes.
    pub memory_bytes: u64,
}

/// PIM stacks beside the GPU (AttAcc-style): the GPU runs the linear layers,
/// the stacks hold the KV cache and run attention in their banks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PimStacksSpec {
    /// Device preset (`aqpim-pim`'s presets: `hbm3-attacc-5.2`, ...) or a
    /// TOML file: the device of this system's own design (the `aqpim`
    /// policy's, on a system that states a `kv` format).
    pub device: String,
    /// The device the `attacc` policy runs on, when it is not `device`: a
    /// system of AQPIM's design compares against AttAcc on AttAcc's own
    /// device, carrying only AttAcc's units (`hbm3-attacc-5.2`).
    #[serde(default)]
    pub attacc_device: Option<String>,
    /// Not accepted: the stack count is the device's (`[organisation]
    /// stacks` in the device file), defined in one place. Present only to
    /// refuse it with a message that says where it goes.
    #[serde(default, skip_serializing)]
    pub stacks: Option<u32>,
    /// The compressed format the stacks hold: a `pq:` cache spec for the
    /// `aqpim` policy, a `scalar:` one for `scalar-pim` (`aqpim kv stats`
    /// reads the same). Absent: the system runs FP16 PIM attention only
    /// (`attacc`).
    #[serde(default)]
    pub kv: Option<String>,
    /// GPU kernel boundaries per layer around the PIM attention (the launch
    /// that hands the work over and the one that waits for it), ms.
    pub sync_ms: f64,
    /// Bandwidth of the GPU<->PIM link, GB/s: queries or lookup tables and
    /// new tokens in, partial outputs and softmax statistics out, codebooks
    /// for in-memory quantization.
    pub link_gbps: f64,
    /// Latency of one transfer over the GPU<->PIM link, microseconds (two
    /// per layer: in, then out).
    pub link_latency_us: f64,
    /// Codebook scope under `aqpim`: `model` (calibrated offline, shared by
    /// every sequence; the default) or `sequence` (trained online per cache).
    #[serde(default)]
    pub codebooks: Option<String>,
    /// Overlap the GPU's linear layers with PIM attention (AttAcc's
    /// `--pipeopt`, head-level pipelining). Default off, as in AttAcc's
    /// simulator.
    #[serde(default)]
    pub overlap_linear: bool,
    /// How caches spread over channels, the same rule for every policy:
    /// `spread` (the default: long caches are cut over idle channels) or
    /// `one-per-cache` (AttAcc's simulator's rule, one channel per
    /// sequence and KV head; kept to compare with that simulator).
    #[serde(default)]
    pub placement: Option<String>,
    /// Overrides of the device's figures (`--set device.pim.n_ccdab=6`,
    /// here without the `device.` prefix), applied to the device of every
    /// policy (`device` and `attacc_device`) when it is resolved. Not in the
    /// file: [`system_with`] sets them.
    #[serde(skip)]
    pub device_overrides: Vec<aqpim_pim::Override>,
}

impl PimStacksSpec {
    /// The device of `policy`: `attacc_device` for `attacc` where set,
    /// else `device`; resolved.
    pub fn device_for(&self, policy: crate::Policy) -> Result<aqpim_pim::Device> {
        match (&self.attacc_device, policy) {
            (Some(name), crate::Policy::Attacc) => self.resolve_device(name),
            _ => self.device(),
        }
    }

    /// The device with the stack count applied, resolved.
    pub fn device(&self) -> Result<aqpim_pim::Device> {
        self.resolve_device(&self.device)
    }

    fn resolve_device(&self, name: &str) -> Result<aqpim_pim::Device> {
        let bad = |reason: String| SystemError::Preset {
            name: name.to_string(),
            reason,
        };
        if self.stacks.is_some() {
            return Err(bad(
                "[pim] stacks: the stack count belongs to the device (`[organisation] stacks` in its TOML file); \
                 set it there, in a device file next to the system file (`device = \"mydev.toml\"`)"
                    .into(),
            ));
        }
        let spec = aqpim_pim::DeviceSpec::preset_or_file(name, &self.device_overrides)
            .map_err(|e| bad(e.to_string()))?;
        spec.resolve().map_err(|e| bad(e.to_string()))
    }

    /// The codebook scope (`model` unless the preset says otherwise).
    pub fn codebook_scope(&self) -> Result<CodebookScope> {
        match &self.codebooks {
            None => Ok(CodebookScope::Model),
            Some(s) => s.parse().map_err(|_| SystemError::Preset {
                name: self.device.clone(),
                reason: format!("pim.codebooks = `{s}`: use `model` or `sequence`"),
            }),
        }
    }

    /// The placement rule (`spread` unless the preset says otherwise).
    pub fn placement(&self) -> Result<aqpim_attn::pim::Placement> {
        match &self.placement {
            None => Ok(aqpim_attn::pim::Placement::Spread),
            Some(s) => s.parse().map_err(|_| SystemError::Preset {
                name: self.device.clone(),
                reason: format!("pim.placement = `{s}`: use `spread` or `one-per-cache`"),
            }),
        }
    }

    /// The spec of `kv`, if any: a `pq:` or a `scalar:` spec.
    pub fn kv_spec(&self) -> Result<Option<aqpim_kvcache::KvSpec>> {
        let Some(kv) = &self.kv else { return Ok(None) };
        let bad = |reason: String| SystemError::Preset {
            name: self.device.clone(),
            reason: format!("pim.kv = `{kv}`: {reason}"),
        };
        match kv.parse::<aqpim_kvcache::KvSpec>() {
            Ok(aqpim_kvcache::KvSpec::Pq(p)) if !p.regions.fp16_layers.is_empty() => Err(bad(
                "the system model gives every layer one format; `fp16_layers` (FP16 layers beside coded ones) is an accuracy diagnostic it does not price".into(),
            )),
            Ok(aqpim_kvcache::KvSpec::Pq(p)) if p.wide.is_some() => Err(bad(
                "the system model gives every layer one format; `wide_layers` (a second code format in some layers) is measured for accuracy only, not priced".into(),
            )),
            Ok(s @ (aqpim_kvcache::KvSpec::Pq(_) | aqpim_kvcache::KvSpec::Scalar(_))) => {
                Ok(Some(s))
            }
            Ok(other) => Err(bad(format!(
                "the stacks hold PQ or scalar codes; `{}` is neither a pq: nor a scalar: spec",
                other.kind()
            ))),
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// The PQ spec of `kv`, if it is one.
    pub fn pq_spec(&self) -> Result<Option<aqpim_kvcache::PqSpec>> {
        Ok(match self.kv_spec()? {
            Some(aqpim_kvcache::KvSpec::Pq(p)) => Some(p),
            _ => None,
        })
    }

    /// The scalar spec of `kv`, if it is one.
    pub fn scalar_spec(&self) -> Result<Option<aqpim_kvcache::ScalarSpec>> {
        Ok(match self.kv_spec()? {
            Some(aqpim_kvcache::KvSpec::Scalar(s)) => Some(s),
            _ => None,
        })
    }
}

/// `path` as it was looked up: joined to the working directory when relative.
fn tried(path: &std::path::Path) -> String {
    if path.is_absolute() {
        return path.display().to_string();
    }
    std::env::current_dir()
        .map(|d| d.join(path).display().to_string())
        .unwrap_or_else(|_| path.display().to_string())
}

/// Bytes of every bank of a device: stacks x channels x banks x rows x row bytes.
pub fn device_bytes(d: &aqpim_pim::Device) -> u64 {
    let o = &d.org;
    (o.channels * o.banks_per_channel * o.rows * o.columns * o.column_bytes) as u64
}

/// A system: a GPU, and optionally a host link and host memory, and PIM stacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSpec {
    /// Preset name.
    pub name: String,
    /// The GPU.
    pub gpu: GpuSpec,
    /// The host link, if the KV cache may live in host memory.
    pub link: Option<LinkSpec>,
    /// Host memory.
    pub host: Option<HostSpec>,
    /// PIM stacks holding the KV cache (`attacc`, `aqpim`).
    #[serde(default)]
    pub pim: Option<PimStacksSpec>,
}

impl SystemSpec {
    /// Checks every figure: positive capacities and bandwidths, achieved
    /// bandwidths not above the peak, link and host given together.
    pub fn validate(&self) -> Result<()> {
        self.validate_gpu()?;
        self.validate_host()?;
        if let Some(p) = &self.pim {
            self.validate_pim(p)?;
        }
        Ok(())
    }

    /// A `Preset` error of this system.
    fn bad(&self, reason: String) -> Result<()> {
        Err(SystemError::Preset {
            name: self.name.clone(),
            reason,
        })
    }

    /// `[gpu]`: capacities, bandwidths within the peak, optional figures.
    fn validate_gpu(&self) -> Result<()> {
        let bad = |reason: String| self.bad(reason);
        let g = &self.gpu;
        if g.memory_bytes == 0 || g.memory_bytes > MAX_MEMORY_BYTES {
            return bad(format!(
                "gpu.memory_bytes = {} must be in 1..={MAX_MEMORY_BYTES}",
                g.memory_bytes
            ));
        }
        for (field, v) in [
            ("gpu.peak_hbm_gbps", g.peak_hbm_gbps),
            ("gpu.attn_gbps", g.attn_gbps),
            ("gpu.linear_gbps", g.linear_gbps),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= MAX_FIGURE) {
                return bad(format!(
                    "{field} = {v} must be a positive number up to {MAX_FIGURE}"
                ));
            }
            if v > g.peak_hbm_gbps {
                return bad(format!(
                    "{field} = {v} exceeds the peak {} GB/s",
                    g.peak_hbm_gbps
                ));
            }
        }
        if !(g.attn_fixed_ms.is_finite() && (0.0..=MAX_FIGURE).contains(&g.attn_fixed_ms)) {
            return bad(format!(
                "gpu.attn_fixed_ms = {} must be a number in 0..={MAX_FIGURE}",
                g.attn_fixed_ms
            ));
        }
        for (field, v) in [
            ("gpu.pq_attn_fixed_ms", g.pq_attn_fixed_ms),
            ("gpu.pq_attn_gbps", g.pq_attn_gbps),
            ("gpu.quant_attn_fixed_ms", g.quant_attn_fixed_ms),
            ("gpu.quant_attn_gbps", g.quant_attn_gbps),
            ("gpu.fp16_tflops", g.fp16_tflops),
            ("gpu.compute_efficiency", g.compute_efficiency),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && (0.0..=MAX_FIGURE).contains(&v))
                    || (v == 0.0 && !field.ends_with("_fixed_ms"))
                {
                    return bad(format!(
                        "{field} = {v} must be a positive number up to {MAX_FIGURE}"
                    ));
                }
            }
        }
        if let Some(q) = g.quant_attn_gbps.filter(|&q| q > g.peak_hbm_gbps) {
            return bad(format!(
                "gpu.quant_attn_gbps = {q} exceeds the peak {} GB/s",
                g.peak_hbm_gbps
            ));
        }
        g.scalar_spec()?;
        if let Some(e) = g.compute_efficiency {
            if e > 1.0 {
                return bad(format!("gpu.compute_efficiency = {e} exceeds 1"));
            }
        }
        Ok(())
    }

    /// `[link]` and `[host]`: together or not at all, positive figures.
    fn validate_host(&self) -> Result<()> {
        let bad = |reason: String| self.bad(reason);
        match (&self.link, &self.host) {
            (Some(l), Some(h)) => {
                if !(l.gbps.is_finite() && l.gbps > 0.0 && l.gbps <= MAX_FIGURE) {
                    return bad(format!(
                        "link.gbps = {} must be a positive number up to {MAX_FIGURE}",
                        l.gbps
                    ));
                }
                if h.memory_bytes == 0 || h.memory_bytes > MAX_MEMORY_BYTES {
                    return bad(format!(
                        "host.memory_bytes = {} must be in 1..={MAX_MEMORY_BYTES}",
                        h.memory_bytes
                    ));
                }
            }
            (None, None) => {}
            _ => return bad("[link] and [host] go together".into()),
        }
        Ok(())
    }

    /// `[pim]`: link figures, scopes, devices with capacity, the format.
    fn validate_pim(&self, p: &PimStacksSpec) -> Result<()> {
        let bad = |reason: String| self.bad(reason);
        for (field, v) in [
            ("pim.sync_ms", p.sync_ms),
            ("pim.link_latency_us", p.link_latency_us),
        ] {
            if !(v.is_finite() && (0.0..=MAX_FIGURE).contains(&v)) {
                return bad(format!(
                    "{field} = {v} must be a number in 0..={MAX_FIGURE}"
                ));
            }
        }
        if !(p.link_gbps.is_finite() && p.link_gbps > 0.0 && p.link_gbps <= MAX_FIGURE) {
            return bad(format!(
                "pim.link_gbps = {} must be a positive number up to {MAX_FIGURE}",
                p.link_gbps
            ));
        }
        p.codebook_scope()?;
        p.placement()?;
        let d = p.device().map_err(|e| SystemError::Preset {
            name: self.name.clone(),
            reason: format!("[pim]: {e}"),
        })?;
        p.device_for(crate::Policy::Attacc)
            .map_err(|e| SystemError::Preset {
                name: self.name.clone(),
                reason: format!("[pim] attacc_device: {e}"),
            })?;
        if device_bytes(&d) == 0 {
            return bad(format!("PIM device `{}` has no capacity", d.name));
        }
        p.kv_spec().map_err(|e| SystemError::Preset {
            name: self.name.clone(),
            reason: format!("[pim]: {e}"),
        })?;
        Ok(())
    }
}

/// Model presets by name, from `presets/models/`.
pub const MODEL_PRESETS: &[(&str, &str)] = &[
    (
        "llama2-7b",
        include_str!("../presets/models/llama2-7b.toml"),
    ),
    (
        "llama2-13b",
        include_str!("../presets/models/llama2-13b.toml"),
    ),
    (
        "llama2-70b",
        include_str!("../presets/models/llama2-70b.toml"),
    ),
    (
        "llama3-8b",
        include_str!("../presets/models/llama3-8b.toml"),
    ),
    (
        "llama3-70b",
        include_str!("../presets/models/llama3-70b.toml"),
    ),
    (
        "mistral-7b",
        include_str!("../presets/models/mistral-7b.toml"),
    ),
    (
        "smollm2-135m",
        include_str!("../presets/models/smollm2-135m.toml"),
    ),
];

/// System presets by name, from `presets/systems/`.
pub const SYSTEM_PRESETS: &[(&str, &str)] = &[
    ("h100", include_str!("../presets/systems/h100.toml")),
    (
        "h100+host",
        include_str!("../presets/systems/h100+host.toml"),
    ),
    (
        "h100+attacc",
        include_str!("../presets/systems/h100+attacc.toml"),
    ),
    (
        "h100+aqpim",
        include_str!("../presets/systems/h100+aqpim.toml"),
    ),
    (
        "h100+aqpim-equal-area",
        include_str!("../presets/systems/h100+aqpim-equal-area.toml"),
    ),
    (
        "h100+gpu-quant",
        include_str!("../presets/systems/h100+gpu-quant.toml"),
    ),
    (
        "h100+scalar-pim",
        include_str!("../presets/systems/h100+scalar-pim.toml"),
    ),
];

fn lookup<'a>(table: &'a [(&str, &str)], kind: &str, name: &str) -> Result<&'a str> {
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| SystemError::Preset {
            name: name.to_string(),
            reason: format!(
                "taken as a {kind} preset name (a file path ends in `.toml`): no such preset (known: {})",
                table.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        })
}

/// Parses and validates a model from TOML text; `name` names it in errors.
pub fn parse_model(text: &str, name: &str) -> Result<ModelSpec> {
    let m: ModelSpec = toml::from_str(text).map_err(|e| SystemError::Preset {
        name: name.to_string(),
        reason: e.to_string().trim().to_string(),
    })?;
    m.validate()?;
    Ok(m)
}

/// Parses and validates a system from TOML text; `name` names it in errors.
pub fn parse_system(text: &str, name: &str) -> Result<SystemSpec> {
    parse_system_in(text, name, None, &[])
}

/// [`parse_system`], with a `[pim] device` path that ends in `.toml` taken
/// relative to `dir` (the folder of the system file) unless it is absolute,
/// and `overrides` applied (see [`system_with`]).
fn parse_system_in(
    text: &str,
    name: &str,
    dir: Option<&std::path::Path>,
    overrides: &[aqpim_pim::Override],
) -> Result<SystemSpec> {
    let mut s = read_system(text, name, overrides)?;
    if let (Some(dir), Some(p)) = (dir, s.pim.as_mut()) {
        let dev = std::path::Path::new(&p.device);
        if p.device.ends_with(".toml") && dev.is_relative() {
            p.device = dir.join(dev).to_string_lossy().into_owned();
        }
    }
    s.validate()?;
    Ok(s)
}

/// The system of `text` with the overrides outside `device.` set in its TOML
/// table before it is read (so that each is checked as the same key in the
/// file would be), those under `device.` handed to its stacks, and the
/// overrides appended to its name (`h100+aqpim --set pim.link_gbps=128`).
fn read_system(text: &str, name: &str, overrides: &[aqpim_pim::Override]) -> Result<SystemSpec> {
    let bad = |reason: String| SystemError::Preset {
        name: name.to_string(),
        reason,
    };
    let with = |e: toml::de::Error| {
        let mut reason = e.to_string().trim().to_string();
        if !overrides.is_empty() {
            reason.push_str(&format!(
                " (with the overrides {})",
                aqpim_pim::Override::list(overrides)
            ));
        }
        bad(reason)
    };
    if overrides.is_empty() {
        return toml::from_str(text).map_err(with);
    }
    let mut table: toml::Table = toml::from_str(text).map_err(with)?;
    let mut device = Vec::new();
    for o in overrides {
        match o.strip_prefix("device") {
            Some(d) => device.push(d),
            None => o.apply(&mut table).map_err(bad)?,
        }
    }
    let mut s: SystemSpec = toml::Value::Table(table).try_into().map_err(with)?;
    if !device.is_empty() {
        let Some(p) = s.pim.as_mut() else {
            return Err(bad(
                "--set device.*: this system has no PIM device (no [pim] section) to override"
                    .into(),
            ));
        };
        p.device_overrides = device;
    }
    for o in overrides {
        s.name.push_str(&format!(" --set {o}"));
    }
    Ok(s)
}

/// A model preset by name, or a TOML file path (ending in `.toml`).
pub fn model(name_or_path: &str) -> Result<ModelSpec> {
    if name_or_path.ends_with(".toml") {
        let text = std::fs::read_to_string(name_or_path).map_err(|e| SystemError::Preset {
            name: name_or_path.to_string(),
            reason: format!(
                "taken as a model file path (it ends in `.toml`): reading {}: {e}",
                tried(std::path::Path::new(name_or_path))
            ),
        })?;
        return parse_model(&text, name_or_path);
    }
    parse_model(lookup(MODEL_PRESETS, "model", name_or_path)?, name_or_path)
}

/// A system preset by name, or a TOML file path (ending in `.toml`).
pub fn system(name_or_path: &str) -> Result<SystemSpec> {
    system_with(name_or_path, &[])
}

/// [`system`] with `overrides` (`aqpim ... --set`): a key outside `device.`
/// (`pim.link_gbps`, `gpu.attn_gbps`, `host.memory_bytes`) is set in the
/// system's TOML table before it is read and validated, as if the file said
/// it; a key under `device.` (`device.pim.n_ccdab`) is set in the table of
/// the device of every policy (`[pim] device` and `attacc_device`) before
/// that is read. The system's name records the overrides.
pub fn system_with(name_or_path: &str, overrides: &[aqpim_pim::Override]) -> Result<SystemSpec> {
    if name_or_path.ends_with(".toml") {
        let text = std::fs::read_to_string(name_or_path).map_err(|e| SystemError::Preset {
            name: name_or_path.to_string(),
            reason: format!(
                "taken as a system file path (it ends in `.toml`): reading {}: {e}",
                tried(std::path::Path::new(name_or_path))
            ),
        })?;
        let dir = std::path::Path::new(name_or_path).parent();
        return parse_system_in(&text, name_or_path, dir, overrides);
    }
    parse_system_in(
        lookup(SYSTEM_PRESETS, "system", name_or_path)?,
        name_or_path,
        None,
        overrides,
    )
}
