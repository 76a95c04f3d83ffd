//! Decode-step policies and their itemized latency.
//!
//! One decode step produces one token for each of `batch` sequences holding
//! `ctx` tokens each. Per layer: the linear layers read the layer's weights
//! once (`weight bytes / linear bandwidth`, batch-independent while decode is
//! weight-bound, as the H100 anchors show up to batch 64), attention reads
//! the batch's KV cache (`fixed + KV bytes / attention bandwidth`), and under
//! `offload` the KV cache first crosses the host link (`KV bytes / link
//! bandwidth`). The output projection is read once per step.

use serde::Serialize;

use crate::error::{DecodeError, Result};
use crate::system::presets::{ModelSpec, SystemSpec};

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
}

impl std::fmt::Display for Policy {
    /// The name `FromStr` reads back: `gpu`, `offload`, `offload-overlap`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Gpu => "gpu",
            Policy::Offload { overlap: false } => "offload",
            Policy::Offload { overlap: true } => "offload-overlap",
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
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gpu" => Ok(Policy::Gpu),
            "offload" => Ok(Policy::Offload { overlap: false }),
            "offload-overlap" => Ok(Policy::Offload { overlap: true }),
            other => Err(DecodeError::InvalidArgument {
                name: "policy",
                reason: format!("`{other}` is not a policy (gpu, offload, offload-overlap; attacc and aqpim need the PIM attention lowering)"),
            }),
        }
    }
}

/// One decode step, itemized (milliseconds unless named otherwise).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Model preset.
    pub model: String,
    /// System preset.
    pub system: String,
    /// The policy.
    pub policy: Policy,
    /// Tokens per sequence in the cache.
    pub ctx: usize,
    /// Sequences decoded together.
    pub batch: usize,
    /// Linear layers and output projection on the GPU.
    pub linear_ms: f64,
    /// Attention on the GPU.
    pub attention_ms: f64,
    /// KV cache over the host link.
    pub transfer_ms: f64,
    /// Transfer time hidden under compute (offload with overlap).
    pub overlapped_ms: f64,
    /// The step: `linear + attention + transfer - overlapped`.
    pub total_ms: f64,
    /// Tokens per second over the batch: `batch / total`.
    pub tokens_per_s: f64,
    /// `transfer / total`: the share of the step during which the link is busy
    /// (with overlap, part of it runs under compute).
    pub transfer_share: f64,
    /// `transfer / (transfer + attention)`: the attention step alone, as the
    /// H100 offload anchors measure it.
    pub transfer_share_of_attention: f64,
    /// Weights, bytes (FP16).
    pub weight_bytes: u64,
    /// KV cache of the batch, bytes (FP16).
    pub kv_bytes: u64,
    /// Bytes held in GPU memory.
    pub gpu_bytes_used: u64,
    /// Bytes held in host memory.
    pub host_bytes_used: u64,
}

fn capacity(what: String, place: &'static str, needed: u64, available: u64) -> Result<()> {
    if needed > available {
        return Err(DecodeError::Capacity {
            what,
            place,
            needed,
            available,
            over: needed - available,
        });
    }
    Ok(())
}

/// The latency of one decode step of `model` on `system` under `policy`.
pub fn decode_step(
    model: &ModelSpec,
    system: &SystemSpec,
    policy: Policy,
    ctx: usize,
    batch: usize,
) -> Result<Step> {
    if ctx == 0 || batch == 0 {
        return Err(DecodeError::InvalidArgument {
            name: "ctx/batch",
            reason: "context and batch must be positive".into(),
        });
    }
    let g = &system.gpu;
    let layers = model.layers as f64;
    let kv_layer = model.kv_bytes_per_token_layer() * ctx as u64 * batch as u64;
    let kv_bytes = kv_layer * model.layers as u64;
    let weight_bytes = model.weight_bytes();
    // GB/s = bytes / 1e6 per ms.
    let ms = |bytes: u64, gbps: f64| bytes as f64 / (gbps * 1e6);
    let linear_ms = layers * ms(model.layer_weight_bytes(), g.linear_gbps)
        + ms(model.head_weight_bytes(), g.linear_gbps);
    let attention_ms = layers * (g.attn_fixed_ms + ms(kv_layer, g.attn_gbps));
    let (transfer_ms, overlapped_ms, gpu_bytes_used, host_bytes_used) = match policy {
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
                return Err(DecodeError::InvalidArgument {
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
                let per_layer_compute = (linear_ms - ms(model.head_weight_bytes(), g.linear_gbps))
                    / layers
                    + attention_ms / layers;
                (layers - 1.0) * per_layer_copy.min(per_layer_compute)
            } else {
                0.0
            };
            (transfer, hidden, weight_bytes + staged, kv_bytes)
        }
    };
    let total_ms = linear_ms + attention_ms + transfer_ms - overlapped_ms;
    Ok(Step {
        model: model.name.clone(),
        system: system.name.clone(),
        policy,
        ctx,
        batch,
        linear_ms,
        attention_ms,
        transfer_ms,
        overlapped_ms,
        total_ms,
        tokens_per_s: batch as f64 / (total_ms / 1e3),
        transfer_share: transfer_ms / total_ms,
        transfer_share_of_attention: if transfer_ms > 0.0 {
            transfer_ms / (transfer_ms + attention_ms)
        } else {
            0.0
        },
        weight_bytes,
        kv_bytes,
        gpu_bytes_used,
        host_bytes_used,
    })
}
