//! Decode-step policies and the entry point [`decode_step`].
//!
//! One decode step produces one token for each of `batch` sequences holding
//! `ctx` tokens each. Per layer the linear layers take the larger of their
//! weight reads (`weight bytes / linear bandwidth`) and their FLOPs
//! (`2 x parameters x batch` at `gpu.fp16_tflops x gpu.compute_efficiency`);
//! attention reads the batch's KV cache (`fixed + KV bytes / attention
//! bandwidth`), and under `offload` the KV cache first crosses the host link
//! (`KV bytes / link bandwidth`). The output projection is read once per step.
//!
//! The PIM policies (`attacc`, `aqpim`) keep the weights and linear layers on
//! the GPU and the KV cache in the PIM stacks, where attention runs; their
//! placement, link and overlap are in `pim_step.rs`.
//!
//! Prefill and codebook training are reported beside the step, not in it:
//! compute-roofline estimates at `gpu.fp16_tflops x gpu.compute_efficiency`.

use serde::Serialize;

use crate::error::{Result, SystemError};
use crate::pim::PimTimer;
use crate::presets::{ModelSpec, SystemSpec};
use crate::step::Step;

/// The longest context a step may hold per sequence (16M tokens).
pub const MAX_CTX: usize = 1 << 24;

/// The largest batch a step may decode (65,536 sequences).
pub const MAX_BATCH: usize = 1 << 16;

/// Where the KV cache lives and how a step uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Weights and KV cache in GPU memory.
    Gpu,
    /// KV cache in host memory, copied to the GPU layer by layer every step
    /// (FlexGen-style); with `overlap`, layer `l + 1`'s copy runs while layer
    /// `l` computes.
    Offload {
        /// Overlap transfers with compute.
        overlap: bool,
    },
    /// FP16 KV cache in the PIM stacks, attention in PIM (AttAcc); the
    /// part that does not fit spills to host memory.
    Attacc,
    /// The KV cache as PQ codes in the PIM stacks, attention on codes and
    /// quantization of new tokens in PIM (AQPIM); the same spill rule.
    Aqpim,
}

impl Policy {
    /// Every policy, in the order the CLI lists them.
    pub const ALL: [Policy; 5] = [
        Policy::Gpu,
        Policy::Offload { overlap: false },
        Policy::Offload { overlap: true },
        Policy::Attacc,
        Policy::Aqpim,
    ];

    /// Whether the policy runs attention in PIM.
    pub fn uses_pim(self) -> bool {
        matches!(self, Policy::Attacc | Policy::Aqpim)
    }
}

impl std::fmt::Display for Policy {
    /// The name `FromStr` reads back: `gpu`, `offload`, `offload-overlap`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Gpu => "gpu",
            Policy::Offload { overlap: false } => "offload",
            Policy::Offload { overlap: true } => "offload-overlap",
            Policy::Attacc => "attacc",
            Policy::Aqpim => "aqpim",
        })
    }
}

impl Serialize for Policy {
    /// Serialized by name, as the CLI and the CSV write it.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for Policy {
    type Err = SystemError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gpu" => Ok(Policy::Gpu),
            "offload" => Ok(Policy::Offload { overlap: false }),
            "offload-overlap" => Ok(Policy::Offload { overlap: true }),
            "attacc" => Ok(Policy::Attacc),
            "aqpim" => Ok(Policy::Aqpim),
            other => Err(SystemError::InvalidArgument {
                name: "policy",
                reason: format!(
                    "`{other}` is not a policy (gpu, offload, offload-overlap, attacc, aqpim)"
                ),
            }),
        }
    }
}

pub(crate) fn capacity(
    what: String,
    place: &'static str,
    needed: u64,
    available: u64,
) -> Result<()> {
    if needed > available {
        return Err(SystemError::Capacity {
            what,
            place,
            needed,
            available,
            over: needed - available,
        });
    }
    Ok(())
}

/// The latency of one decode step of `model` on `system` under `policy`;
/// the PIM policies simulate their attention on `system`'s PIM device
/// (memoized only within this call: sweeps use [`decode_step_with`]).
pub fn decode_step(
    model: &ModelSpec,
    system: &SystemSpec,
    policy: Policy,
    ctx: usize,
    batch: usize,
) -> Result<Step> {
    decode_step_with(model, system, policy, ctx, batch, None)
}

/// [`decode_step`] with the PIM attention cost taken from `pim` (for the
/// PIM policies; `None` builds a simulating [`SimTimer`] on the system's device).
pub fn decode_step_with(
    model: &ModelSpec,
    system: &SystemSpec,
    policy: Policy,
    ctx: usize,
    batch: usize,
    pim: Option<&dyn PimTimer>,
) -> Result<Step> {
    if ctx == 0 || batch == 0 || ctx > MAX_CTX || batch > MAX_BATCH {
        return Err(SystemError::InvalidArgument {
            name: "ctx/batch",
            reason: format!(
                "context {ctx} and batch {batch}: the context must be in 1..={MAX_CTX} and the batch in 1..={MAX_BATCH}"
            ),
        });
    }
    let g = &system.gpu;
    let layers = model.layers as f64;
    // Below the limits every product here stays far inside 64 bits:
    // 2^24 tokens x 2^16 sequences x 2^(1+20+20+1) bytes per token-layer would
    // not, so the shape's own bytes are checked.
    let kv_layer = model
        .kv_bytes_per_token_layer()
        .checked_mul(ctx as u64)
        .and_then(|b| b.checked_mul(batch as u64))
        .and_then(|b| b.checked_mul(model.layers as u64).map(|_| b))
        .ok_or_else(|| SystemError::InvalidArgument {
            name: "ctx/batch",
            reason: format!(
                "the KV cache of {batch} x {ctx} tokens of {} overflows 64-bit byte counts",
                model.name
            ),
        })?;
    let kv_bytes = kv_layer * model.layers as u64;
    let weight_bytes = model.weight_bytes();
    let linear_ms = linear_ms(model, system, batch);
    let attention_ms = layers * (g.attn_fixed_ms + ms(kv_layer, g.attn_gbps));
    if policy.uses_pim() {
        let step = finish(
            model,
            system,
            crate::pim_step::pim_step(model, system, policy, ctx, batch, pim)?,
        );
        step.check_finite()?;
        return Ok(step);
    }
    let (transfer_ms, overlapped_ms, gpu_bytes_used, host_bytes_used) = match policy {
        Policy::Attacc | Policy::Aqpim => unreachable!("handled above"),
        Policy::Gpu => {
            capacity(
                format!(
                    "{} weights and the KV cache of {batch} x {ctx} tokens",
                    model.name
                ),
                "GPU memory",
                weight_bytes + kv_bytes,
                g.memory_bytes,
            )?;
            (0.0, 0.0, weight_bytes + kv_bytes, 0)
        }
        Policy::Offload { overlap } => {
            let (Some(link), Some(host)) = (&system.link, &system.host) else {
                return Err(SystemError::InvalidArgument {
                    name: "system",
                    reason: format!(
                        "`{}` has no host link: offload needs one (try h100+host)",
                        system.name
                    ),
                });
            };
            // Weights plus one layer's KV cache staged on the GPU (two with overlap).
            let staged = if overlap { 2 * kv_layer } else { kv_layer };
            capacity(
                format!(
                    "{} weights and {staged} bytes of staged KV cache",
                    model.name
                ),
                "GPU memory",
                weight_bytes + staged,
                g.memory_bytes,
            )?;
            capacity(
                format!("the KV cache of {batch} x {ctx} tokens"),
                "host memory",
                kv_bytes,
                host.memory_bytes,
            )?;
            let per_layer_copy = ms(kv_layer, link.gbps);
            let transfer = layers * per_layer_copy;
            let hidden = if overlap {
                // Layer l+1's copy runs under layer l's compute; the first copy is exposed.
                let per_layer_compute =
                    layer_linear_ms(model, system, batch) + attention_ms / layers;
                (layers - 1.0) * per_layer_copy.min(per_layer_compute)
            } else {
                0.0
            };
            (transfer, hidden, weight_bytes + staged, kv_bytes)
        }
    };
    let step = Step {
        linear_ms,
        attention_ms,
        transfer_ms,
        overlapped_ms,
        weight_bytes,
        kv_bytes,
        gpu_bytes_used,
        host_bytes_used,
        ..Step::empty(model, system, policy, ctx, batch)
    };
    let step = finish(model, system, step);
    step.check_finite()?;
    Ok(step)
}

/// Milliseconds to move `bytes` at `gbps` (GB/s = bytes / 1e6 per ms).
pub(crate) fn ms(bytes: u64, gbps: f64) -> f64 {
    bytes as f64 / (gbps * 1e6)
}

/// One layer's linear layers on the GPU for `batch` tokens: the larger of
/// reading its FP16 weights at `gpu.linear_gbps` and its `2 x parameters x
/// batch` FLOPs at the sustained compute rate (when the system states one).
pub fn layer_linear_ms(model: &ModelSpec, system: &SystemSpec, batch: usize) -> f64 {
    let bytes = model.layer_weight_bytes();
    roofline_ms(system, bytes, bytes as f64 / 2.0 * 2.0 * batch as f64)
}

/// The step's linear layers: `layers x` [`layer_linear_ms`] plus the output
/// projection on the same roofline.
pub fn linear_ms(model: &ModelSpec, system: &SystemSpec, batch: usize) -> f64 {
    let head = model.head_weight_bytes();
    model.layers as f64 * layer_linear_ms(model, system, batch)
        + roofline_ms(system, head, head as f64 / 2.0 * 2.0 * batch as f64)
}

fn roofline_ms(system: &SystemSpec, bytes: u64, flops: f64) -> f64 {
    let read = ms(bytes, system.gpu.linear_gbps);
    match flops_per_ms(system) {
        Some(f) => read.max(flops / f),
        None => read,
    }
}

/// Totals, rates, shares and the prefill estimate of an itemized step.
pub(crate) fn finish(model: &ModelSpec, system: &SystemSpec, mut s: Step) -> Step {
    s.total_ms = s.parts_ms() - s.overlapped_ms;
    s.tokens_per_s = s.batch as f64 / (s.total_ms / 1e3);
    s.transfer_share = s.transfer_ms / s.total_ms;
    s.link_share = s.link_ms / s.total_ms;
    let attention = s.attention_ms + s.pim_attention_ms;
    s.transfer_share_of_attention = if s.transfer_ms > 0.0 {
        s.transfer_ms / (s.transfer_ms + attention)
    } else {
        0.0
    };
    s.prefill_ms = prefill_ms(model, system, s.ctx, s.batch);
    s
}

/// Sustained FP16 FLOP per millisecond of the GPU, if the system states it.
fn flops_per_ms(system: &SystemSpec) -> Option<f64> {
    let g = &system.gpu;
    Some(g.fp16_tflops? * g.compute_efficiency? * 1e9)
}

/// Estimate: prefill of `batch` prompts of `ctx` tokens on the GPU, at the
/// compute roofline: `2 x linear parameters x tokens` plus causal attention
/// `2 x layers x heads x head_dim x ctx^2` per sequence, or the weight reads
/// if those take longer. `None` when the system states no compute peak.
pub fn prefill_ms(model: &ModelSpec, system: &SystemSpec, ctx: usize, batch: usize) -> Option<f64> {
    let f = flops_per_ms(system)?;
    let (c, b) = (ctx as f64, batch as f64);
    let params = model.layers as f64 * model.layer_weight_bytes() as f64 / 2.0;
    let attn = model.layers as f64 * 2.0 * (model.heads * model.head_dim) as f64 * c * c;
    let compute = (2.0 * params * c * b + attn * b) / f;
    let weights = model.weight_bytes() as f64 / (system.gpu.linear_gbps * 1e6);
    Some(compute.max(weights))
}

/// Training points per codebook: faiss's default cap of 256 per centroid.
pub const KMEANS_POINTS_PER_CENTROID: usize = 256;

/// Estimate: online k-means of every (sequence, layer, KV head) key and value
/// codebook on `encoded` tokens (at most 256 per centroid), at the GPU's
/// compute roofline: `2 n ksub head_dim` FLOP per iteration per codebook.
pub fn codebook_training_ms(
    model: &ModelSpec,
    system: &SystemSpec,
    spec: &aqpim_kvcache::PqSpec,
    encoded: usize,
    batch: usize,
) -> Result<Option<f64>> {
    let Some(f) = flops_per_ms(system) else {
        return Ok(None);
    };
    let mut flops = 0.0;
    for part in [aqpim_kvcache::KvPart::Keys, aqpim_kvcache::KvPart::Values] {
        let ksub = spec.params(model.head_dim, part)?.ksub();
        let n = encoded.min(KMEANS_POINTS_PER_CENTROID * ksub) as f64;
        flops += 2.0 * n * ksub as f64 * model.head_dim as f64 * spec.iterations as f64;
    }
    Ok(Some(
        flops * (model.layers * model.kv_heads * batch) as f64 / f,
    ))
}
