//! The GPU's side of a step: linear layers on a roofline (weight reads or
//! FLOPs, whichever is longer), the capacity rule, and the prefill and
//! k-means estimates reported beside a step.

use crate::error::{Result, SystemError};
use crate::presets::{ModelSpec, SystemSpec};

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

/// Bytes of one sequence's cache in `spec` with `regions` in every layer,
/// as `aqpim-kvcache` accounts them (`aqpim kv stats`): codes, scales and
/// FP16 tokens; codebooks are counted by the caller at their scope.
pub(crate) fn sequence_bytes(
    model: &ModelSpec,
    spec: &aqpim_kvcache::KvSpec,
    regions: aqpim_kvcache::Regions,
) -> Result<u64> {
    let shape = aqpim_kvcache::KvShape::new(model.layers, model.kv_heads, model.head_dim)?;
    Ok(
        aqpim_kvcache::account_regions(&shape, spec, &vec![regions; model.layers], 0, 0)?
            .total_bytes,
    )
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
        flops += 2.0 * n * ksub as f64 * model.head_dim as f64 * spec.training.iterations as f64;
    }
    Ok(Some(
        flops * (model.layers * model.kv_heads * batch) as f64 / f,
    ))
}
