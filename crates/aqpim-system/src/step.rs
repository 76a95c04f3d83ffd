//! [`Step`]: one decode step, itemized; the one row type that the CLI's
//! JSON and CSV and `cargo xtask reproduce` share.

use serde::Serialize;

use crate::policy::Policy;
use crate::presets::{ModelSpec, SystemSpec};

/// One decode step, itemized (milliseconds unless named otherwise).
///
/// `total_ms = linear_ms + table_ms + attention_ms + pim_attention_ms +
/// quantize_ms + link_ms + sync_ms + transfer_ms - overlapped_ms`.
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
    /// The KV cache format the policy holds, as a canonical cache spec
    /// (`dense` for FP16).
    pub kv: String,
    /// The format's measured perplexity delta against FP16, a fraction
    /// (0.016 for +1.6 %), from `presets/data/accuracy.toml` (one held-out
    /// text and protocol for every format, `docs/results/accuracy.md`);
    /// `None` when the format was not measured.
    pub ppl_delta: Option<f64>,
    /// Bits per cached element of `kv_bytes`, all counted (codes, scales,
    /// FP16 tokens, codebooks): `8 kv_bytes / (batch ctx layers 2 kv_heads
    /// head_dim)`; 16 for FP16.
    pub kv_bits_per_element: f64,
    /// Sequences decoded together.
    pub batch: usize,
    /// Linear layers and output projection on the GPU: the larger of weight
    /// reads and FLOPs at the sustained compute rate.
    pub linear_ms: f64,
    /// Attention on the GPU (for PIM policies: over the tokens held in GPU
    /// memory or spilled to the host).
    pub attention_ms: f64,
    /// Attention in the PIM stacks (simulated), quantization excluded.
    pub pim_attention_ms: f64,
    /// In-memory quantization of each new token (PIM, `aqpim`).
    pub quantize_ms: f64,
    /// Building the lookup tables on the GPU (`aqpim`): reading the key
    /// codebooks and writing one table per query head.
    pub table_ms: f64,
    /// The GPU<->PIM link: bytes at `link_gbps` plus two transfer latencies
    /// per layer.
    pub link_ms: f64,
    /// GPU kernel boundaries around PIM attention, `layers x pim.sync_ms`.
    pub sync_ms: f64,
    /// KV cache over the host link.
    pub transfer_ms: f64,
    /// Time hidden by overlap: host transfers under compute (offload with
    /// overlap); for PIM policies the link under PIM attention (head
    /// pipelining), GPU attention beside PIM attention, and, with
    /// `pim.overlap_linear`, linear layers under attention.
    pub overlapped_ms: f64,
    /// The step.
    pub total_ms: f64,
    /// Tokens per second over the batch: `batch / total`.
    pub tokens_per_s: f64,
    /// `transfer / total`: the share of the step during which the host link
    /// is busy (with overlap, part of it runs under compute).
    pub transfer_share: f64,
    /// `transfer / (transfer + attention)`: the attention step alone, as the
    /// H100 offload anchors measure it.
    pub transfer_share_of_attention: f64,
    /// `link / total`: the share of the step the GPU<->PIM link is busy.
    pub link_share: f64,
    /// Bytes over the GPU<->PIM link per step.
    pub link_bytes: u64,
    /// Weights, bytes (FP16).
    pub weight_bytes: u64,
    /// KV cache of the batch as stored, bytes (FP16; for `aqpim`, codes, FP16
    /// sinks and window, and codebooks counted at their scope: once per
    /// layer and KV head under `model`, per sequence under `sequence`).
    pub kv_bytes: u64,
    /// Bytes held in GPU memory (weights, KV tokens held there, codebooks
    /// the GPU reads, staged spilled tokens).
    pub gpu_bytes_used: u64,
    /// Bytes held in host memory (for PIM policies: what spilled).
    pub host_bytes_used: u64,
    /// Bytes of the PIM banks the cache occupies: rows used in every layer
    /// and channel times banks per channel times row bytes.
    pub pim_bytes_used: u64,
    /// Bytes of every bank of the PIM stacks (0 without PIM).
    pub pim_capacity_bytes: u64,
    /// Rows of every bank of the fullest channel the cache occupies, over
    /// all layers (layers are rotated across channels).
    pub pim_rows_used: usize,
    /// Rows per bank of the PIM device (0 without PIM).
    pub pim_rows: usize,
    /// Tokens per sequence held in PIM.
    pub ctx_in_pim: usize,
    /// Tokens per sequence held in GPU memory (PIM policies: what the stacks
    /// could not hold, before anything goes to the host).
    pub ctx_on_gpu: usize,
    /// Tokens per sequence spilled to host memory.
    pub ctx_spilled: usize,
    /// Codebook scope of a PQ cache (`model` or `sequence`), empty otherwise.
    pub codebooks: String,
    /// Value codebook copies the PIM banks hold over all layers.
    pub pim_codebook_copies: usize,
    /// PIM energy of the step (attention and quantization), microjoules.
    pub pim_energy_uj: f64,
    /// Estimate: prefill of the batch's `ctx`-token prompts on the GPU at the
    /// compute roofline (reported beside the step, not in it).
    pub prefill_ms: Option<f64>,
    /// Estimate: online k-means of the batch's codebooks after prefill
    /// (`aqpim` with `sequence` codebooks), at the compute roofline.
    pub codebook_training_ms: Option<f64>,
    /// The PIM device this policy runs on (empty without PIM).
    pub pim_device: String,
    /// PIM logic (compute units) per DRAM die of that device, mm^2.
    pub pim_logic_mm2_per_die: f64,
    /// PIM buffers and registers per DRAM die, mm^2.
    pub pim_buffer_mm2_per_die: f64,
    /// PIM logic and buffers per DRAM die, mm^2.
    pub pim_area_mm2_per_die: f64,
    /// `pim_area_mm2_per_die` over the DRAM die's area.
    pub pim_die_share: f64,
    /// Peak PIM power of one stack (the most demanding all-bank command at
    /// its interval on every channel), W.
    pub pim_peak_power_w: f64,
    /// The stack's PIM power budget, W.
    pub pim_power_budget_w: f64,
}

impl Step {
    /// A step with every figure zero (weights filled in).
    pub(crate) fn empty(
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
            kv: aqpim_kvcache::KvSpec::Dense.to_string(),
            ppl_delta: crate::accuracy::ppl_delta(&aqpim_kvcache::KvSpec::Dense),
            kv_bits_per_element: 0.0,
            linear_ms: 0.0,
            attention_ms: 0.0,
            pim_attention_ms: 0.0,
            quantize_ms: 0.0,
            table_ms: 0.0,
            link_ms: 0.0,
            sync_ms: 0.0,
            transfer_ms: 0.0,
            overlapped_ms: 0.0,
            total_ms: 0.0,
            tokens_per_s: 0.0,
            transfer_share: 0.0,
            transfer_share_of_attention: 0.0,
            link_share: 0.0,
            link_bytes: 0,
            weight_bytes: model.weight_bytes(),
            kv_bytes: 0,
            gpu_bytes_used: 0,
            host_bytes_used: 0,
            pim_bytes_used: 0,
            pim_capacity_bytes: 0,
            pim_rows_used: 0,
            pim_rows: 0,
            ctx_in_pim: 0,
            ctx_on_gpu: 0,
            ctx_spilled: 0,
            codebooks: String::new(),
            pim_codebook_copies: 0,
            pim_energy_uj: 0.0,
            prefill_ms: None,
            codebook_training_ms: None,
            pim_device: String::new(),
            pim_logic_mm2_per_die: 0.0,
            pim_buffer_mm2_per_die: 0.0,
            pim_area_mm2_per_die: 0.0,
            pim_die_share: 0.0,
            pim_peak_power_w: 0.0,
            pim_power_budget_w: 0.0,
        }
    }

    /// Sets the format the step holds and its measured perplexity delta.
    pub(crate) fn set_kv(&mut self, spec: &aqpim_kvcache::KvSpec) {
        self.kv = spec.to_string();
        self.ppl_delta = crate::accuracy::ppl_delta(spec);
    }

    /// Fills the PIM device's name, area per DRAM die and peak power.
    pub(crate) fn set_device(&mut self, d: &aqpim_pim::Device) {
        let area = d.area();
        let power = d.power();
        self.pim_device = d.name.clone();
        self.pim_logic_mm2_per_die = area.logic_mm2;
        self.pim_buffer_mm2_per_die = area.buffer_mm2;
        self.pim_area_mm2_per_die = area.total_mm2;
        self.pim_die_share = area.die_share;
        self.pim_peak_power_w = power.peak_w;
        self.pim_power_budget_w = power.budget_w;
    }

    /// Every figure finite (presets are bounded, so a non-finite one is a
    /// bug or an input past the limits): an error naming it, never a
    /// `null` in JSON.
    pub(crate) fn check_finite(&self) -> crate::Result<()> {
        let figures = [
            ("linear_ms", self.linear_ms),
            ("attention_ms", self.attention_ms),
            ("pim_attention_ms", self.pim_attention_ms),
            ("quantize_ms", self.quantize_ms),
            ("table_ms", self.table_ms),
            ("link_ms", self.link_ms),
            ("sync_ms", self.sync_ms),
            ("transfer_ms", self.transfer_ms),
            ("overlapped_ms", self.overlapped_ms),
            ("total_ms", self.total_ms),
            ("tokens_per_s", self.tokens_per_s),
            ("transfer_share", self.transfer_share),
            (
                "transfer_share_of_attention",
                self.transfer_share_of_attention,
            ),
            ("link_share", self.link_share),
            ("pim_energy_uj", self.pim_energy_uj),
            ("prefill_ms", self.prefill_ms.unwrap_or(0.0)),
            (
                "codebook_training_ms",
                self.codebook_training_ms.unwrap_or(0.0),
            ),
        ];
        match figures.iter().find(|(_, v)| !v.is_finite()) {
            Some((name, v)) => Err(crate::SystemError::InvalidArgument {
                name: "system",
                reason: format!(
                    "{name} came out {v} for {} x {} tokens under {}: a preset figure is out of range",
                    self.batch, self.ctx, self.policy
                ),
            }),
            None => Ok(()),
        }
    }

    /// The parts that add up to the step before overlap.
    pub fn parts_ms(&self) -> f64 {
        self.linear_ms
            + self.table_ms
            + self.attention_ms
            + self.pim_attention_ms
            + self.quantize_ms
            + self.link_ms
            + self.sync_ms
            + self.transfer_ms
    }
}
