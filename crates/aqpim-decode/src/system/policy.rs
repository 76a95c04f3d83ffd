//! Decode-step policies and their itemized latency.
//!
//! One decode step produces one token for each of `batch` sequences holding
//! `ctx` tokens each. Per layer: the linear layers read the layer's weights
//! once (`weight bytes / linear bandwidth`, batch-independent while decode is
//! weight-bound, as the H100 anchors show up to batch 64), attention reads
//! the batch's KV cache (`fixed + KV bytes / attention bandwidth`), and under
//! `offload` the KV cache first crosses the host link (`KV bytes / link
//! bandwidth`). The output projection is read once per step.
//!
//! The PIM policies keep the weights and linear layers on the GPU and the KV
//! cache in the PIM stacks of `[pim]`, where attention runs (AttAcc):
//!
//! - `attacc`: FP16 keys and values; the step's PIM attention is `layers x`
//!   the simulated cost of one layer ([`crate::system::pim::PimTimer`]);
//! - `aqpim`: PQ codes of keys and values plus FP16 sink and window tokens
//!   and per-(sequence, layer, head) codebooks, as `aqpim-kvcache` accounts
//!   them; attention on codes and the in-memory quantization of each new
//!   token run in the banks (quantization itemized as the difference of the
//!   layer's cost with and without one flush, divided by the tokens a flush
//!   encodes: the banks quantize a block of tokens at once);
//! - **spill rule** (both): every sequence keeps the largest `ctx' <= ctx`
//!   tokens in PIM for which `layers x rows_per_bank(ctx') <= rows`
//!   (for `aqpim`, the sinks and window always stay and the encoded tokens
//!   spill); the other `ctx - ctx'` tokens live in host memory and cross the
//!   link each step, one layer at a time, and their attention runs on the GPU
//!   (merged with the PIM part through the softmax's running max and sum, a
//!   negligible cost). `attacc` spills FP16 (GPU attention at the measured
//!   SDPA efficiency); `aqpim` spills codes, already quantized in the banks
//!   before they were evicted (GPU attention on codes at the measured Triton
//!   kernel's efficiency). Transfers, GPU attention and PIM attention are
//!   not overlapped: a conservative, hand-checkable step;
//! - synchronization: `pim.sync_ms` per layer (query or lookup table in,
//!   outputs back).
//!
//! Prefill and codebook training are reported beside the step, not in it:
//! compute-roofline estimates at `gpu.fp16_tflops x gpu.compute_efficiency`.

use serde::Serialize;

use aqpim_attn::pim::{LayerJob, PimCost, PimKind};
use aqpim_kvcache::{KvShape, KvSpec, Regions};

use crate::error::{DecodeError, Result};
use crate::system::pim::{largest_fitting, PimMode, PimTimer, SimTimer};
use crate::system::presets::{device_bytes, ModelSpec, SystemSpec};

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
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gpu" => Ok(Policy::Gpu),
            "offload" => Ok(Policy::Offload { overlap: false }),
            "offload-overlap" => Ok(Policy::Offload { overlap: true }),
            "attacc" => Ok(Policy::Attacc),
            "aqpim" => Ok(Policy::Aqpim),
            other => Err(DecodeError::InvalidArgument {
                name: "policy",
                reason: format!(
                    "`{other}` is not a policy (gpu, offload, offload-overlap, attacc, aqpim)"
                ),
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
    /// Attention on the GPU (for PIM policies: over the spilled tokens).
    pub attention_ms: f64,
    /// Attention in the PIM stacks (simulated), quantization excluded.
    pub pim_attention_ms: f64,
    /// In-memory quantization of each new token (PIM, `aqpim`).
    pub quantize_ms: f64,
    /// GPU<->PIM handoffs, `layers x pim.sync_ms`.
    pub sync_ms: f64,
    /// KV cache over the host link.
    pub transfer_ms: f64,
    /// Transfer time hidden under compute (offload with overlap).
    pub overlapped_ms: f64,
    /// The step: `linear + attention + pim_attention + quantize + sync +
    /// transfer - overlapped`.
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
    /// KV cache of the batch, bytes, as stored (FP16; for `aqpim`, codes,
    /// codebooks and FP16 sinks and window in PIM plus spilled codes).
    pub kv_bytes: u64,
    /// Bytes held in GPU memory.
    pub gpu_bytes_used: u64,
    /// Bytes held in host memory (for PIM policies: what spilled).
    pub host_bytes_used: u64,
    /// KV bytes held in the PIM stacks.
    pub pim_bytes_used: u64,
    /// Bytes of every bank of the PIM stacks (0 without PIM).
    pub pim_capacity_bytes: u64,
    /// Rows of every bank the cache occupies (`layers x rows per layer`).
    pub pim_rows_used: usize,
    /// Rows per bank of the PIM device (0 without PIM).
    pub pim_rows: usize,
    /// Tokens per sequence held in PIM.
    pub ctx_in_pim: usize,
    /// Tokens per sequence spilled to host memory.
    pub ctx_spilled: usize,
    /// PIM energy of the step (attention and quantization), microjoules.
    pub pim_energy_uj: f64,
    /// Estimate: prefill of the batch's `ctx`-token prompts on the GPU at the
    /// compute roofline (reported beside the step, not in it).
    pub prefill_ms: Option<f64>,
    /// Estimate: online k-means of the batch's codebooks after prefill
    /// (`aqpim`), at the compute roofline.
    pub codebook_training_ms: Option<f64>,
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
    if policy.uses_pim() {
        let mut step = pim_step(model, system, policy, ctx, batch, pim)?;
        step.linear_ms = linear_ms;
        return Ok(finish(model, system, step));
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
    Ok(finish(model, system, step))
}

impl Step {
    fn empty(
        model: &ModelSpec,
        system: &SystemSpec,
        policy: Policy,
        ctx: usize,
        batch: usize,
    ) -> Step {
        Step {
            model: model.name.clone(),
            system: system.name.clone(),
            policy,
            ctx,
            batch,
            linear_ms: 0.0,
            attention_ms: 0.0,
            pim_attention_ms: 0.0,
            quantize_ms: 0.0,
            sync_ms: 0.0,
            transfer_ms: 0.0,
            overlapped_ms: 0.0,
            total_ms: 0.0,
            tokens_per_s: 0.0,
            transfer_share: 0.0,
            transfer_share_of_attention: 0.0,
            weight_bytes: model.weight_bytes(),
            kv_bytes: 0,
            gpu_bytes_used: 0,
            host_bytes_used: 0,
            pim_bytes_used: 0,
            pim_capacity_bytes: 0,
            pim_rows_used: 0,
            pim_rows: 0,
            ctx_in_pim: 0,
            ctx_spilled: 0,
            pim_energy_uj: 0.0,
            prefill_ms: None,
            codebook_training_ms: None,
        }
    }
}

/// Totals, rates, shares and the prefill estimate of an itemized step.
fn finish(model: &ModelSpec, system: &SystemSpec, mut s: Step) -> Step {
    s.total_ms = s.linear_ms
        + s.attention_ms
        + s.pim_attention_ms
        + s.quantize_ms
        + s.sync_ms
        + s.transfer_ms
        - s.overlapped_ms;
    s.tokens_per_s = s.batch as f64 / (s.total_ms / 1e3);
    s.transfer_share = s.transfer_ms / s.total_ms;
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
) -> Option<f64> {
    let f = flops_per_ms(system)?;
    let mut flops = 0.0;
    for bits in [spec.key_bits, spec.value_bits] {
        let ksub = 1usize << bits;
        let n = encoded.min(KMEANS_POINTS_PER_CENTROID * ksub) as f64;
        flops += 2.0 * n * ksub as f64 * model.head_dim as f64 * spec.iterations as f64;
    }
    Some(flops * (model.layers * model.kv_heads * batch) as f64 / f)
}

/// The PIM part of [`decode_step_with`]: placement, spill, PIM attention,
/// quantization, synchronization, and the spilled tokens over the link and
/// on the GPU. Leaves `linear_ms` at 0 for the caller.
fn pim_step(
    model: &ModelSpec,
    system: &SystemSpec,
    policy: Policy,
    ctx: usize,
    batch: usize,
    pim: Option<&dyn PimTimer>,
) -> Result<Step> {
    let stacks = system.pim.as_ref().ok_or_else(|| DecodeError::InvalidArgument {
        name: "system",
        reason: format!(
            "`{}` has no PIM stacks: {policy} needs a [pim] section (try h100+attacc or h100+aqpim)",
            system.name
        ),
    })?;
    let owned;
    let timer: &dyn PimTimer = match pim {
        Some(t) => t,
        None => {
            owned = SimTimer::new(stacks.device()?, PimMode::Simulated);
            &owned
        }
    };
    let g = &system.gpu;
    let ms = |bytes: u64, gbps: f64| bytes as f64 / (gbps * 1e6);
    let layers = model.layers;
    let rows = timer.device().org.rows;
    let heads = batch * model.kv_heads;
    let group = model.heads / model.kv_heads;
    let mut step = Step::empty(model, system, policy, ctx, batch);
    step.pim_rows = rows;
    step.pim_capacity_bytes = device_bytes(timer.device());
    // Per policy: the job for `n` tokens in PIM, the most tokens that may
    // spill, the tokens always held, and the spilled bytes per token per
    // sequence per layer.
    let (kind, fp_tokens, spillable, spill_token_bytes, pq) = match policy {
        Policy::Attacc => (
            PimKind::Fp16,
            0,
            ctx,
            model.kv_bytes_per_token_layer(),
            None,
        ),
        _ => {
            let spec = stacks.pq_spec()?.ok_or_else(|| DecodeError::InvalidArgument {
                name: "system",
                reason: format!(
                    "`{}` states no PQ format for its stacks ([pim] kv = \"pq:...\"): aqpim needs one (try h100+aqpim)",
                    system.name
                ),
            })?;
            if spec.key_bits != spec.value_bits {
                return Err(DecodeError::InvalidArgument {
                    name: "pim.kv",
                    reason: format!(
                        "keys at {} bits and values at {}: the PIM lowering takes one nbits for both",
                        spec.key_bits, spec.value_bits
                    ),
                });
            }
            let r = Regions::nominal(&KvSpec::Pq(spec), ctx);
            let pk = spec
                .params(model.head_dim, aqpim_kvcache::KvPart::Keys)
                .map_err(kv_err)?;
            let pv = spec
                .params(model.head_dim, aqpim_kvcache::KvPart::Values)
                .map_err(kv_err)?;
            let code_bytes = (spec.code_row_bytes(&pk) + spec.code_row_bytes(&pv)) as u64
                * model.kv_heads as u64;
            (
                PimKind::Pq {
                    dsub: pk.dsub(),
                    nbits: spec.key_bits,
                },
                r.sinks + r.recent,
                r.encoded,
                code_bytes,
                Some((spec, r)),
            )
        }
    };
    let job = |n: usize, quantize: bool| LayerJob {
        kind,
        head_dim: model.head_dim,
        heads,
        kv_heads: model.kv_heads,
        group,
        ctx: n,
        fp_tokens,
        quantize,
    };
    let in_pim = largest_fitting(spillable, |n| {
        if n + fp_tokens == 0 {
            return Ok(true);
        }
        Ok(layers.saturating_mul(timer.rows_per_bank(&job(n, false))?) <= rows)
    })?
    .ok_or_else(|| DecodeError::Pim {
        reason: format!(
            "the {fp_tokens} FP16 sink and window tokens and the codebooks of {batch} sequences alone need more than the {rows} rows of every bank"
        ),
    })?;
    let spilled = spillable - in_pim;
    step.ctx_spilled = spilled;
    step.ctx_in_pim = ctx - spilled;
    step.pim_rows_used = if in_pim + fp_tokens > 0 {
        layers * timer.rows_per_bank(&job(in_pim, false))?
    } else {
        0
    };
    // PIM attention, quantization, energy.
    if in_pim + fp_tokens > 0 {
        let cost = timer.layer(&job(in_pim, false))?;
        step.pim_attention_ms = layers as f64 * cost.ns / 1e6;
        let mut energy = cost.energy_pj;
        if let Some((_, r)) = &pq {
            // Once codebooks exist a token leaves the window each step; the
            // banks quantize a block of them per flush, one flush every
            // `quantize_block` steps: the step pays that share.
            if r.encoded > 0 {
                let q: PimCost = timer.layer(&job(in_pim, true))?;
                let block = timer.quantize_block(&job(in_pim, true))? as f64;
                step.quantize_ms = layers as f64 * (q.ns - cost.ns).max(0.0) / 1e6 / block;
                energy += (q.energy_pj - cost.energy_pj).max(0.0) / block;
            }
        }
        step.pim_energy_uj = layers as f64 * energy / 1e6;
        step.sync_ms = layers as f64 * stacks.sync_ms;
    }
    // Bytes in PIM.
    step.pim_bytes_used = match &pq {
        None => in_pim as u64 * batch as u64 * model.kv_bytes_per_token_layer() * layers as u64,
        Some((spec, r)) => {
            let shape = KvShape::new(layers, model.kv_heads, model.head_dim).map_err(kv_err)?;
            let split = Regions {
                sinks: r.sinks,
                encoded: in_pim,
                recent: r.recent,
            };
            let books = if r.encoded > 0 {
                layers * model.kv_heads
            } else {
                0
            };
            let rep = aqpim_kvcache::account_regions(
                &shape,
                &KvSpec::Pq(*spec),
                &vec![split; layers],
                books,
                books,
            )
            .map_err(kv_err)?;
            rep.total_bytes * batch as u64
        }
    };
    // The spilled tokens: over the link, then attention on the GPU.
    let spill_layer = spilled as u64 * batch as u64 * spill_token_bytes;
    let spill_total = spill_layer * layers as u64;
    if spilled > 0 {
        let (Some(link), Some(host)) = (&system.link, &system.host) else {
            return Err(DecodeError::Capacity {
                what: format!(
                    "the KV cache of {batch} x {ctx} tokens ({spilled} tokens per sequence past the PIM stacks; `{}` has no host link to spill to)",
                    system.name
                ),
                place: "PIM banks",
                needed: step.pim_bytes_used + spill_total,
                available: step.pim_bytes_used,
                over: spill_total,
            });
        };
        capacity(
            format!("the spilled KV cache ({spilled} tokens x {batch} sequences)"),
            "host memory",
            spill_total,
            host.memory_bytes,
        )?;
        step.transfer_ms = layers as f64 * ms(spill_layer, link.gbps);
        step.attention_ms = layers as f64
            * match &pq {
                None => g.attn_fixed_ms + ms(spill_layer, g.attn_gbps),
                Some(_) => {
                    let (Some(fixed), Some(gbps)) = (g.pq_attn_fixed_ms, g.pq_attn_gbps) else {
                        return Err(DecodeError::InvalidArgument {
                            name: "system",
                            reason: format!(
                                "`{}` spills PQ codes but states no gpu.pq_attn_fixed_ms / gpu.pq_attn_gbps",
                                system.name
                            ),
                        });
                    };
                    fixed + ms(spill_layer, gbps)
                }
            };
        step.host_bytes_used = spill_total;
    }
    let staged = if spilled > 0 { spill_layer } else { 0 };
    capacity(
        format!(
            "{} weights and {staged} bytes of staged spilled KV cache",
            model.name
        ),
        "GPU memory",
        step.weight_bytes + staged,
        g.memory_bytes,
    )?;
    step.gpu_bytes_used = step.weight_bytes + staged;
    step.kv_bytes = step.pim_bytes_used + spill_total;
    if let Some((spec, r)) = &pq {
        step.codebook_training_ms = codebook_training_ms(model, system, spec, r.encoded, batch);
    }
    Ok(step)
}

fn kv_err(e: aqpim_kvcache::KvError) -> DecodeError {
    DecodeError::Cache {
        reason: e.to_string(),
    }
}
