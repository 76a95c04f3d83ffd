//! The entry point [`decode_step`]: one itemized decode step, the `gpu` and
//! `offload` policies here and the PIM policies in `pim_step.rs`.
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

use crate::error::{Result, SystemError};
use crate::gpu::{capacity, layer_linear_ms, linear_ms, ms, prefill_ms, sequence_bytes};
use crate::pim::PimTimer;
use crate::policy::Policy;
use crate::presets::{ModelSpec, SystemSpec};
use crate::step::Step;

/// The longest context a step may hold per sequence (16M tokens).
pub const MAX_CTX: usize = 1 << 24;

/// The largest batch a step may decode (65,536 sequences).
pub const MAX_BATCH: usize = 1 << 16;

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
/// PIM policies; `None` builds a simulating [`SimTimer`](crate::SimTimer) on the system's device).
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
    if policy == Policy::GpuQuant {
        let step = finish(model, system, gpu_quant(model, system, ctx, batch)?);
        step.check_finite()?;
        return Ok(step);
    }
    let (transfer_ms, overlapped_ms, gpu_bytes_used, host_bytes_used) = match policy {
        Policy::Attacc | Policy::Aqpim | Policy::ScalarPim | Policy::GpuQuant => {
            unreachable!("handled above")
        }
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
        Policy::Offload { overlap } => offload(
            model,
            system,
            OffloadCache {
                batch,
                ctx,
                kv_layer,
                kv_bytes,
                overlap,
            },
            attention_ms,
        )?,
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

/// The offloaded cache of one decode step.
struct OffloadCache {
    batch: usize,
    ctx: usize,
    /// KV bytes of one layer, every sequence.
    kv_layer: u64,
    /// KV bytes of every layer.
    kv_bytes: u64,
    /// Whether layer `l + 1`'s copy runs under layer `l`'s compute.
    overlap: bool,
}

/// The `offload` policy's link time, the part hidden under compute, and the
/// GPU and host bytes used: the cache lives in host memory and each layer's
/// share crosses the link every step.
fn offload(
    model: &ModelSpec,
    system: &SystemSpec,
    c: OffloadCache,
    attention_ms: f64,
) -> Result<(f64, f64, u64, u64)> {
    let OffloadCache {
        batch,
        ctx,
        kv_layer,
        kv_bytes,
        overlap,
    } = c;
    let (g, layers, weight_bytes) = (&system.gpu, model.layers as f64, model.weight_bytes());
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
        let per_layer_compute = layer_linear_ms(model, system, batch) + attention_ms / layers;
        (layers - 1.0) * per_layer_copy.min(per_layer_compute)
    } else {
        0.0
    };
    Ok((transfer, hidden, weight_bytes + staged, kv_bytes))
}

/// The `gpu-quant` step: weights and the scalar-quantized cache of the
/// system's `[gpu] kv` format in GPU memory, its bytes as `aqpim kv stats`
/// counts them (codes, scales, FP16 sinks and window); attention reads
/// them at `gpu.quant_attn_gbps` after a fixed `gpu.quant_attn_fixed_ms`
/// per layer. Quantizing each new token (a min/max and a rounding per
/// group on the GPU) is left out: a few microseconds per layer.
fn gpu_quant(model: &ModelSpec, system: &SystemSpec, ctx: usize, batch: usize) -> Result<Step> {
    let g = &system.gpu;
    let Some(sc) = g.scalar_spec()? else {
        return Err(SystemError::InvalidArgument {
            name: "system",
            reason: format!(
                "`{}` states no scalar format for the GPU ([gpu] kv = \"scalar:...\"): gpu-quant needs one (try h100+gpu-quant)",
                system.name
            ),
        });
    };
    let (Some(fixed), Some(gbps)) = (g.quant_attn_fixed_ms, g.quant_attn_gbps) else {
        return Err(SystemError::InvalidArgument {
            name: "system",
            reason: format!(
                "`{}` states no gpu.quant_attn_fixed_ms / gpu.quant_attn_gbps: gpu-quant needs the low-bit kernel's rate",
                system.name
            ),
        });
    };
    let spec = aqpim_kvcache::KvSpec::Scalar(sc);
    let per_seq = sequence_bytes(model, &spec, aqpim_kvcache::Regions::nominal(&spec, ctx))?;
    let kv_bytes =
        per_seq
            .checked_mul(batch as u64)
            .ok_or_else(|| SystemError::InvalidArgument {
                name: "ctx/batch",
                reason: format!(
                    "the KV cache of {batch} x {ctx} tokens overflows 64-bit byte counts"
                ),
            })?;
    let weight_bytes = model.weight_bytes();
    capacity(
        format!(
            "{} weights and the {} KV cache of {batch} x {ctx} tokens",
            model.name, spec
        ),
        "GPU memory",
        weight_bytes.saturating_add(kv_bytes),
        g.memory_bytes,
    )?;
    let layers = model.layers as f64;
    let mut step = Step {
        linear_ms: linear_ms(model, system, batch),
        attention_ms: layers * (fixed + ms(kv_bytes / model.layers as u64, gbps)),
        weight_bytes,
        kv_bytes,
        gpu_bytes_used: weight_bytes + kv_bytes,
        ..Step::empty(model, system, Policy::GpuQuant, ctx, batch)
    };
    step.set_kv(&spec);
    Ok(step)
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
    let elements =
        (s.batch * s.ctx * model.layers) as f64 * 2.0 * (model.kv_heads * model.head_dim) as f64;
    s.kv_bits_per_element = 8.0 * s.kv_bytes as f64 / elements;
    s
}
