//! The PIM policies (`attacc`, `scalar-pim`, `aqpim`): where the KV cache
//! goes, what the GPU<->PIM link carries, and how the parts of a step
//! overlap.
//!
//! - **Formats.** `attacc` holds FP16; `aqpim` the stacks' `pq:` spec
//!   (codes in the banks, quantized there); `scalar-pim` the stacks'
//!   `scalar:` spec (codes and group parameters in the banks, attended by
//!   dequantize-and-MAC units; the GPU quantizes each token as it leaves the
//!   FP16 window, reading its FP16 key and value back over the link and
//!   writing its codes).
//!
//! - **Placement.** Each sequence keeps the largest `ctx' <= ctx` tokens in
//!   the stacks for which every channel's rows, summed over the layers, fit a
//!   bank (`aqpim_attn::pim::layer_footprint`; layer `l`'s placement is
//!   rotated by `l x C / L` channels so that no channel is the fullest in
//!   every layer). For `aqpim` the FP16 sinks and window always stay and the
//!   encoded tokens are what may not fit.
//! - **Overflow** goes first to free GPU memory (FP16 for `attacc`, codes for
//!   `aqpim`), attended there at the measured rate (SDPA for FP16, the Triton
//!   kernel on codes for PQ), beside the PIM attention; only what GPU memory
//!   cannot hold spills to host memory, crossing the host link every step.
//!   A spilled point is a what-if: the serving view never picks one.
//! - **Codebooks** are counted at their scope everywhere: `model` scope keeps
//!   one key and one value codebook per layer and KV head (FP16) on the GPU,
//!   for the lookup tables and for in-memory quantization, and one value
//!   codebook copy per channel and KV head in the banks; `sequence` scope
//!   multiplies both by the batch and charges online k-means (beside the step).
//!   A `refine=` spec holds its codebooks at `sequence` scope (each cache
//!   refines its own copy) without k-means unless the preset asks for
//!   `sequence`; each step the GPU reads and writes the centroids the
//!   leaving token names, reads its codes back and sends the refined value
//!   centroids to the banks (estimates, not simulated).
//! - **Link.** Per layer the GPU sends each query head's lookup table
//!   (`aqpim`) or query (`attacc`, and `aqpim`'s FP16 slice) and the new
//!   token, and reads back each slice's statistics and outputs; in-memory
//!   quantization streams the codebooks once per flush (amortized over the
//!   flush's tokens). Each direction has half the link's bandwidth, as
//!   AttAcc's simulator charges its interface: `bytes / (pim.link_gbps / 2)
//!   + 2 x pim.link_latency_us`.
//! - **Flush-pending tokens.** Tokens that left the window and wait for the
//!   next in-memory quantization flush stay FP16 beside the window, placed
//!   and attended as such (half a flush block on average).
//! - **Overlap**, the same for both designs, as AttAcc's simulator models a
//!   decoder block: the link's transfers pipeline with PIM attention head by
//!   head, so of the shorter of the two only `1 / heads` stays exposed;
//!   GPU attention of held tokens runs beside PIM attention; the linear
//!   layers run before attention unless `pim.overlap_linear` (AttAcc's
//!   `--pipeopt`, off by default there and here) pipelines them too.

use aqpim_attn::pim::{
    bank_code_bytes, bank_table_entries, BankFormat, LayerJob, PimCost, PimKind, Placement,
    ScalarCodes, ScalarScale,
};
use aqpim_kvcache::CodebookScope;
use aqpim_kvcache::{KvPart, KvShape, KvSpec, PqSpec, Regions, ScalarSpec};

use crate::error::{Result, SystemError};
use crate::gpu::{capacity, codebook_training_ms, layer_linear_ms, linear_ms, ms, sequence_bytes};
use crate::pim::{balanced_rows, largest_fitting, PimMode, PimTimer, SimTimer};
use crate::policy::Policy;
use crate::presets::{device_bytes, ModelSpec, PimStacksSpec, SystemSpec, FP16_BYTES};
use crate::step::Step;

/// What a PIM policy stores per token and per cache.
struct Format {
    kind: PimKind,
    /// FP16 tokens per cache beside the codes (PQ sinks and window).
    fp_tokens: usize,
    /// Tokens per sequence that may leave the stacks (FP16 tokens for
    /// `attacc`, encoded tokens for `aqpim`).
    movable: usize,
    /// Bytes of one movable token of one sequence in one layer.
    token_bytes: u64,
    pq: Option<Pq>,
    /// The scalar format (`scalar-pim`).
    scalar: Option<ScalarSpec>,
    /// How caches spread over channels (`[pim] placement`).
    placement: Placement,
}

struct Pq {
    spec: PqSpec,
    regions: Regions,
    /// Whose codebooks they are, `[keys, values]`: the preset's scope, or
    /// `sequence` for a part the spec refines (each cache refines its own
    /// copy).
    scope: [CodebookScope; 2],
    /// Online k-means per cache (the preset's `sequence` scope); refinement
    /// alone starts from the model's calibrated codebooks.
    train: bool,
    /// Online refinement of keys and values (`krefine=`, `vrefine=`).
    refine: [bool; 2],
    /// Bytes of one token's codes in the banks, keys and values.
    code_bytes: [u64; 2],
    /// FP16 bytes of one key and one value codebook of one KV head.
    key_book_bytes: u64,
    value_book_bytes: u64,
    /// FP16 bytes of one query head's lookup table.
    table_bytes: u64,
}

fn format(
    model: &ModelSpec,
    stacks: &PimStacksSpec,
    system: &SystemSpec,
    policy: Policy,
    ctx: usize,
) -> Result<Format> {
    let placement = stacks.placement()?;
    if policy == Policy::Attacc {
        return Ok(Format {
            kind: PimKind::Fp16,
            fp_tokens: 0,
            movable: ctx,
            token_bytes: model.kv_bytes_per_token_layer(),
            pq: None,
            scalar: None,
            placement,
        });
    }
    if policy == Policy::ScalarPim {
        return scalar_format(model, stacks, system, ctx, placement);
    }
    let spec = stacks.pq_spec()?.ok_or_else(|| SystemError::InvalidArgument {
        name: "system",
        reason: format!(
            "`{}` states no PQ format for its stacks ([pim] kv = \"pq:...\"): aqpim needs one (try h100+aqpim)",
            system.name
        ),
    })?;
    let pk = spec.params(model.head_dim, KvPart::Keys)?;
    let pv = spec.params(model.head_dim, KvPart::Values)?;
    let bank = BankFormat::of(&KvSpec::Pq(spec), model.head_dim, ctx)?;
    let regions = bank.regions;
    let part_code_bytes = [spec.key, spec.value].map(|c| bank_code_bytes(c, model.head_dim) as u64);
    let code_bytes = part_code_bytes[0] + part_code_bytes[1];
    let stride = bank_table_entries(spec.key);
    let preset_scope = stacks.codebook_scope()?;
    Ok(Format {
        kind: bank.kind,
        // FP16 sinks, window and outlier copies (`outliers=`): one FP16
        // slice per cache. An outlier also keeps its codes; masking their
        // code slots out of the scores is not modelled (a few CLRs).
        fp_tokens: bank.fp_tokens,
        movable: bank.encoded,
        token_bytes: code_bytes * model.kv_heads as u64,
        pq: Some(Pq {
            spec,
            regions,
            scope: spec.training.refine.map(|w| match w {
                0 => preset_scope,
                _ => CodebookScope::Sequence,
            }),
            train: preset_scope == CodebookScope::Sequence,
            refine: spec.training.refine.map(|w| w > 0),
            code_bytes: part_code_bytes,
            key_book_bytes: pk.codebook_len() as u64 * FP16_BYTES,
            value_book_bytes: pv.codebook_len() as u64 * FP16_BYTES,
            table_bytes: (pk.num_subspaces() * stride) as u64 * FP16_BYTES,
        }),
        scalar: None,
        placement,
    })
}

/// The `scalar-pim` format: the stacks' `scalar:` spec in the banks as
/// `PimKind::Scalar` (KIVI-style minimum and scale, or MX-style shared
/// exponents), the FP16 sinks, window and not yet complete key group beside
/// the codes.
fn scalar_format(
    model: &ModelSpec,
    stacks: &PimStacksSpec,
    system: &SystemSpec,
    ctx: usize,
    placement: Placement,
) -> Result<Format> {
    let sc = stacks.scalar_spec()?.ok_or_else(|| SystemError::InvalidArgument {
        name: "system",
        reason: format!(
            "`{}` states no scalar format for its stacks ([pim] kv = \"scalar:...\"): scalar-pim needs one (try h100+scalar-pim)",
            system.name
        ),
    })?;
    let regions = Regions::nominal(&KvSpec::Scalar(sc), ctx);
    Ok(Format {
        kind: PimKind::Scalar(ScalarCodes {
            bits: sc.bits,
            group: sc.group,
            scale: if sc.mx {
                ScalarScale::SharedExp
            } else {
                ScalarScale::MinScale
            },
        }),
        fp_tokens: regions.sinks + regions.recent,
        movable: regions.encoded,
        token_bytes: scalar_token_bytes(model, &sc)?,
        pq: None,
        scalar: Some(sc),
        placement,
    })
}

/// Bytes of one encoded token of every KV head of one layer under a scalar
/// format (codes and group parameters, keys and values), as
/// `aqpim-kvcache` accounts them: a whole key group of `G` encoded tokens,
/// over `G` (KIVI's key parameters are shared by `G` tokens).
fn scalar_token_bytes(model: &ModelSpec, sc: &ScalarSpec) -> Result<u64> {
    let g = sc.group;
    let r = Regions {
        sinks: 0,
        encoded: g,
        recent: 0,
    };
    let bytes = aqpim_kvcache::account_regions(
        &KvShape::new(1, model.kv_heads, model.head_dim)?,
        &KvSpec::Scalar(*sc),
        &[r],
        0,
        0,
    )?
    .total_bytes;
    Ok(bytes.div_ceil(g as u64))
}

/// Tokens that left the recent window but wait for the next in-memory
/// quantization flush (one flush encodes a block of [`quantize_block`]
/// tokens per cache) stay FP16 beside the window, placed and attended as
/// such: on average `(block - 1) / 2` of them, rounded up, at a step.
///
/// [`quantize_block`]: aqpim_attn::pim::quantize_block
fn pending_as_fp16(model: &ModelSpec, f: &mut Format, timer: &dyn PimTimer) -> Result<()> {
    if f.pq.is_none() || f.movable == 0 {
        return Ok(());
    }
    let block = timer.quantize_block(&job(model, f, 1, f.movable, true))?;
    let pending = block.saturating_sub(1).div_ceil(2).min(f.movable);
    f.fp_tokens += pending;
    f.movable -= pending;
    Ok(())
}

/// The layer job of a batch with `n` movable tokens per cache in the stacks.
fn job(model: &ModelSpec, f: &Format, batch: usize, n: usize, quantize: bool) -> LayerJob {
    LayerJob {
        kind: f.kind,
        head_dim: model.head_dim,
        heads: batch * model.kv_heads,
        kv_heads: model.kv_heads,
        group: model.heads / model.kv_heads,
        ctx: n,
        fp_tokens: f.fp_tokens,
        quantize: quantize && f.pq.as_ref().is_some_and(|p| p.regions.encoded > 0),
        // The banks hold value codebooks only.
        codebooks: f.pq.as_ref().map_or(CodebookScope::Model, |p| p.scope[1]),
        placement: f.placement,
    }
}

/// Where a batch's KV cache goes under a PIM policy, before any timing.
pub(crate) struct Placed {
    f: Format,
    /// Movable tokens per sequence in the stacks.
    in_pim: usize,
    footprint: Option<aqpim_attn::pim::Footprint>,
    /// Rows of every bank of the fullest channel over all layers.
    rows_used: usize,
    /// Movable tokens per sequence in GPU memory and in host memory.
    pub(crate) on_gpu: usize,
    pub(crate) spilled: usize,
    /// FP16 codebook bytes the GPU holds.
    gpu_books: u64,
}

impl Placed {
    /// Bytes of the tokens that spill to host memory, over every layer.
    pub(crate) fn spilled_bytes(&self, model: &ModelSpec, batch: usize) -> u64 {
        self.spilled as u64 * batch as u64 * self.f.token_bytes * model.layers as u64
    }
}

fn stacks_of(system: &SystemSpec, policy: Policy) -> Result<&PimStacksSpec> {
    system.pim.as_ref().ok_or_else(|| SystemError::InvalidArgument {
        name: "system",
        reason: format!(
            "`{}` has no PIM stacks: {policy} needs a [pim] section (try h100+attacc or h100+aqpim)",
            system.name
        ),
    })
}

/// Places a batch: the most movable tokens per sequence whose rows fit the
/// banks, then free GPU memory, then host memory.
pub(crate) fn place(
    model: &ModelSpec,
    system: &SystemSpec,
    policy: Policy,
    ctx: usize,
    batch: usize,
    timer: &dyn PimTimer,
) -> Result<Placed> {
    let stacks = stacks_of(system, policy)?;
    let mut f = format(model, stacks, system, policy, ctx)?;
    pending_as_fp16(model, &mut f, timer)?;
    let layers = model.layers;
    let rows = timer.device().org.rows;
    let rows_of = |n: usize| -> Result<usize> {
        if n + f.fp_tokens == 0 {
            return Ok(0);
        }
        let fp = timer.footprint(&job(model, &f, batch, n, true))?;
        Ok(balanced_rows(&fp.rows_per_channel, layers))
    };
    let Some(in_pim) = largest_fitting(f.movable, |n| Ok(rows_of(n)? <= rows))? else {
        let org = &timer.device().org;
        let row_bytes =
            (org.channels * org.banks_per_channel * org.columns * org.column_bytes) as u64;
        let needed = rows_of(0)? as u64 * row_bytes;
        let available = rows as u64 * row_bytes;
        return Err(SystemError::Capacity {
            what: format!(
                "the {} FP16 sink, window and outlier tokens and the codebooks of {batch} sequences",
                f.fp_tokens
            ),
            place: "PIM banks (rows of the fullest channel)",
            needed,
            available,
            over: needed.saturating_sub(available),
        });
    };
    let footprint = if in_pim + f.fp_tokens > 0 {
        Some(timer.footprint(&job(model, &f, batch, in_pim, true))?)
    } else {
        None
    };
    let rows_used = footprint
        .as_ref()
        .map_or(0, |fp| balanced_rows(&fp.rows_per_channel, layers));
    let gpu_books = match &f.pq {
        Some(p) => {
            let sets = |scope| match scope {
                CodebookScope::Model => 1,
                CodebookScope::Sequence => batch as u64,
            };
            (layers * model.kv_heads) as u64
                * (sets(p.scope[0]) * p.key_book_bytes + sets(p.scope[1]) * p.value_book_bytes)
        }
        None => 0,
    };
    let overflow = f.movable - in_pim;
    let per_token = f.token_bytes * batch as u64 * layers as u64;
    let gpu_free = system
        .gpu
        .memory_bytes
        .saturating_sub(model.weight_bytes())
        .saturating_sub(gpu_books);
    let on_gpu = if per_token == 0 {
        0
    } else if overflow as u64 * per_token <= gpu_free {
        overflow
    } else {
        // Some tokens spill: one layer of them is staged on the GPU each
        // step, so the tokens held there leave room for it:
        // `held x per_token + (overflow - held) x per_layer <= free`.
        let per_layer = per_token / layers as u64;
        let room = gpu_free.saturating_sub(overflow as u64 * per_layer);
        let held = room / (per_token - per_layer).max(1);
        usize::try_from(held).unwrap_or(usize::MAX).min(overflow)
    };
    Ok(Placed {
        in_pim,
        footprint,
        rows_used,
        on_gpu,
        spilled: overflow - on_gpu,
        gpu_books,
        f,
    })
}

/// The PIM part of [`crate::decode_step_with`]: placement, overflow, PIM
/// attention, quantization, link, tables, and the overlap of all of them
/// with the linear layers.
pub(crate) fn pim_step(
    model: &ModelSpec,
    system: &SystemSpec,
    policy: Policy,
    ctx: usize,
    batch: usize,
    pim: Option<&dyn PimTimer>,
) -> Result<Step> {
    let stacks = stacks_of(system, policy)?;
    let owned;
    let timer: &dyn PimTimer = match pim {
        Some(t) => t,
        None => {
            owned = SimTimer::new(stacks.device_for(policy)?, PimMode::Simulated);
            &owned
        }
    };
    let placed = place(model, system, policy, ctx, batch, timer)?;
    let mut step = Step::empty(model, system, policy, ctx, batch);
    step.set_device(timer.device());
    if let Some(p) = &placed.f.pq {
        step.set_kv(&KvSpec::Pq(p.spec));
    }
    if let Some(sc) = &placed.f.scalar {
        step.set_kv(&KvSpec::Scalar(*sc));
    }
    memory(&mut step, model, system, timer, &placed)?;
    let mut layer = LayerMs {
        gpu_attention: gpu_attention_layer(system, &placed, batch)?,
        transfer: step.transfer_ms / model.layers as f64,
        ..LayerMs::default()
    };
    if placed.footprint.is_some() {
        pim_costs(&mut step, &mut layer, model, stacks, timer, &placed, batch)?;
    }
    if let Some(p) = &placed.f.pq {
        layer.table = pq_parts(&mut step, model, system, p, batch, placed.gpu_books)?;
    } else if let Some(sc) = &placed.f.scalar {
        let spec = KvSpec::Scalar(*sc);
        step.kv_bytes = sequence_bytes(model, &spec, Regions::nominal(&spec, ctx))? * batch as u64;
    } else {
        step.kv_bytes = model.kv_bytes_per_token_layer() * (ctx * batch * model.layers) as u64;
    }
    overlap(
        &mut step,
        model,
        system,
        stacks,
        &layer,
        placed.footprint.is_some(),
    );
    Ok(step)
}

/// One layer's parts of a PIM step, ms.
#[derive(Debug, Default)]
struct LayerMs {
    pim: f64,
    quantize: f64,
    link: f64,
    table: f64,
    gpu_attention: f64,
    transfer: f64,
}

/// Where the bytes are: PIM rows, GPU memory, host memory (an error when a
/// spill has no host link or host memory is short), and the host-link time
/// of the spilled tokens.
fn memory(
    step: &mut Step,
    model: &ModelSpec,
    system: &SystemSpec,
    timer: &dyn PimTimer,
    placed: &Placed,
) -> Result<()> {
    let (f, layers, batch, ctx) = (&placed.f, model.layers, step.batch, step.ctx);
    let org = &timer.device().org;
    step.pim_rows = org.rows;
    step.pim_capacity_bytes = device_bytes(timer.device());
    step.ctx_in_pim = ctx - (f.movable - placed.in_pim);
    step.pim_rows_used = placed.rows_used;
    if let Some(fp) = &placed.footprint {
        let row_bytes = (org.banks_per_channel * org.columns * org.column_bytes) as u64;
        step.pim_bytes_used =
            layers as u64 * fp.rows_per_channel.iter().map(|&r| r as u64).sum::<u64>() * row_bytes;
        step.pim_codebook_copies = layers * fp.codebook_copies;
    }
    let (on_gpu, spilled) = (placed.on_gpu, placed.spilled);
    step.ctx_on_gpu = on_gpu;
    step.ctx_spilled = spilled;
    let gpu_layer = on_gpu as u64 * batch as u64 * f.token_bytes;
    let spill_layer = spilled as u64 * batch as u64 * f.token_bytes;
    let spill_total = spill_layer * layers as u64;
    if spilled > 0 {
        let (Some(link), Some(host)) = (&system.link, &system.host) else {
            return Err(SystemError::Capacity {
                what: format!(
                    "the KV cache of {batch} x {ctx} tokens ({spilled} tokens per sequence past the PIM stacks and GPU memory; `{}` has no host link to spill to)",
                    system.name
                ),
                place: "PIM banks and GPU memory",
                needed: step.pim_bytes_used + gpu_layer * layers as u64 + spill_total,
                available: step.pim_bytes_used + gpu_layer * layers as u64,
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
        step.host_bytes_used = spill_total;
    }
    let staged = if spilled > 0 { spill_layer } else { 0 };
    let gpu_books = placed.gpu_books;
    let gpu_used = step.weight_bytes + gpu_books + gpu_layer * layers as u64 + staged;
    capacity(
        format!(
            "{} weights, {gpu_books} bytes of codebooks, {on_gpu} tokens per sequence of KV cache and {staged} bytes of staged spilled KV cache",
            model.name
        ),
        "GPU memory",
        gpu_used,
        system.gpu.memory_bytes,
    )?;
    step.gpu_bytes_used = gpu_used;
    Ok(())
}

/// GPU attention of one layer over the tokens the GPU holds or receives:
/// SDPA's measured rate for FP16, the Triton kernel's for PQ codes.
fn gpu_attention_layer(system: &SystemSpec, placed: &Placed, batch: usize) -> Result<f64> {
    let g = &system.gpu;
    let bytes = (placed.on_gpu + placed.spilled) as u64 * batch as u64 * placed.f.token_bytes;
    if bytes == 0 {
        return Ok(0.0);
    }
    if placed.f.scalar.is_some() {
        let (Some(fixed), Some(gbps)) = (g.quant_attn_fixed_ms, g.quant_attn_gbps) else {
            return Err(SystemError::InvalidArgument {
                name: "system",
                reason: format!(
                    "`{}` keeps scalar codes outside the stacks but states no gpu.quant_attn_fixed_ms / gpu.quant_attn_gbps",
                    system.name
                ),
            });
        };
        return Ok(fixed + ms(bytes, gbps));
    }
    if placed.f.pq.is_none() {
        return Ok(g.attn_fixed_ms + ms(bytes, g.attn_gbps));
    }
    let (Some(fixed), Some(gbps)) = (g.pq_attn_fixed_ms, g.pq_attn_gbps) else {
        return Err(SystemError::InvalidArgument {
            name: "system",
            reason: format!(
                "`{}` keeps PQ codes outside the stacks but states no gpu.pq_attn_fixed_ms / gpu.pq_attn_gbps",
                system.name
            ),
        });
    };
    Ok(fixed + ms(bytes, gbps))
}

/// PIM attention, quantization (a flush's share per step), energy, the
/// GPU-PIM link and the kernel boundaries of one layer.
fn pim_costs(
    step: &mut Step,
    layer: &mut LayerMs,
    model: &ModelSpec,
    stacks: &PimStacksSpec,
    timer: &dyn PimTimer,
    placed: &Placed,
    batch: usize,
) -> Result<()> {
    let (f, layers) = (&placed.f, model.layers as f64);
    let Some(fp) = &placed.footprint else {
        return Ok(());
    };
    let cost = timer.layer(&job(model, f, batch, placed.in_pim, false))?;
    layer.pim = cost.ns / 1e6;
    let mut energy = cost.energy_pj;
    let mut flush_share = 0.0;
    if f.pq.as_ref().is_some_and(|p| p.regions.encoded > 0) {
        // Once codebooks exist a token leaves the window each step; the
        // banks quantize a block of them per flush, one flush every
        // `quantize_block` steps: the step pays that share.
        let qjob = job(model, f, batch, placed.in_pim, true);
        let q: PimCost = timer.layer(&qjob)?;
        let block = timer.quantize_block(&qjob)? as f64;
        layer.quantize = (q.ns - cost.ns).max(0.0) / 1e6 / block;
        energy += (q.energy_pj - cost.energy_pj).max(0.0) / block;
        flush_share = fp.link_flush_bytes as f64 / block;
    }
    // scalar-pim: the GPU quantizes the tokens that leave the FP16 window
    // (one per cache and step on average): it reads each one's FP16 key and
    // value back and writes its codes and group parameters.
    let requant = match &f.scalar {
        Some(_) if f.movable > 0 => {
            let caches = (batch * model.kv_heads) as f64;
            caches * (4.0 * model.head_dim as f64 + (f.token_bytes / model.kv_heads as u64) as f64)
        }
        _ => 0.0,
    };
    // refine=: per cache and step, the leaving token's codes of each refined
    // part come back from the banks, and under `vrefine` the value centroids
    // they name (`d` FP16 elements) go to the banks' copies of the value
    // codebook (an estimate of the traffic, one payload per cache as the
    // device broadcasts it).
    let refine = match &f.pq {
        Some(p) if p.regions.encoded > 0 => {
            let caches = (batch * model.kv_heads) as u64;
            let codes: u64 = (0..2)
                .filter(|&i| p.refine[i])
                .map(|i| p.code_bytes[i])
                .sum();
            let values = if p.refine[1] {
                model.head_dim as u64 * FP16_BYTES
            } else {
                0
            };
            (caches * (codes + values)) as f64
        }
        _ => 0.0,
    };
    let bytes = (fp.link_in_bytes + fp.link_out_bytes) as f64 + flush_share + requant + refine;
    // Each direction carries half the link's bandwidth, as AttAcc's
    // simulator charges its interface (`INTERFACE_BW / 2` each way); the
    // inbound tables and the outbound results of a layer follow each other.
    layer.link = bytes / (stacks.link_gbps / 2.0 * 1e6) + 2.0 * stacks.link_latency_us / 1e3;
    step.pim_energy_uj = layers * energy / 1e6;
    step.link_bytes = (layers * bytes).round() as u64;
    step.sync_ms = layers * stacks.sync_ms;
    step.pim_attention_ms = layers * layer.pim;
    step.quantize_ms = layers * layer.quantize;
    step.link_ms = layers * layer.link;
    Ok(())
}

/// The PQ cache's own parts: the lookup tables the GPU builds (returned,
/// ms per layer), the bytes at the codebooks' scope and the k-means estimate.
fn pq_parts(
    step: &mut Step,
    model: &ModelSpec,
    system: &SystemSpec,
    p: &Pq,
    batch: usize,
    gpu_books: u64,
) -> Result<f64> {
    let layers = model.layers;
    step.codebooks = match p.scope {
        [k, v] if k == v => k.to_string(),
        [k, v] => format!("keys {k}, values {v}"),
    };
    let mut table_layer = 0.0;
    if p.regions.encoded > 0 {
        // The GPU reads each KV head's key codebook once per layer (every
        // sequence's under `sequence` scope) and writes one table per
        // query head and cache.
        let books = match p.scope[0] {
            CodebookScope::Model => model.kv_heads as u64,
            CodebookScope::Sequence => (batch * model.kv_heads) as u64,
        } * p.key_book_bytes;
        let tables = (batch * model.heads) as u64 * p.table_bytes;
        table_layer = ms(books + tables, system.gpu.attn_gbps);
    }
    let refined = p.refine.iter().filter(|&&r| r).count() as u64;
    if refined > 0 && p.regions.encoded > 0 {
        // Refinement (an estimate, not simulated): per cache and step the
        // GPU reads and writes the centroids the leaving token's codes name
        // (`d` FP16 elements of each refined codebook), beside the tables.
        let named = refined * 2 * model.head_dim as u64 * FP16_BYTES;
        table_layer += ms(
            (batch * model.kv_heads) as u64 * named,
            system.gpu.attn_gbps,
        );
    }
    step.table_ms = layers as f64 * table_layer;
    step.kv_bytes =
        sequence_bytes(model, &KvSpec::Pq(p.spec), p.regions)? * batch as u64 + gpu_books;
    if p.train {
        step.codebook_training_ms =
            codebook_training_ms(model, system, &p.spec, p.regions.encoded, batch)?;
    }
    Ok(table_layer)
}

/// The step's total from its per-layer parts (see the module docs):
/// the link pipelines with PIM attention head by head; GPU attention of
/// held tokens runs beside PIM attention; linear layers precede attention
/// unless `overlap_linear`. `overlapped_ms` is what the overlap hides.
fn overlap(
    step: &mut Step,
    model: &ModelSpec,
    system: &SystemSpec,
    stacks: &PimStacksSpec,
    l: &LayerMs,
    held: bool,
) {
    let (layers, heads, batch) = (model.layers as f64, model.heads as f64, step.batch);
    step.attention_ms = layers * l.gpu_attention;
    let linear_layer = layer_linear_ms(model, system, batch);
    let pim_busy = l.pim + l.quantize;
    let pim_part = pim_busy.max(l.link) + pim_busy.min(l.link) / heads;
    let gpu_part = l.transfer + l.gpu_attention;
    let attention = if stacks.overlap_linear {
        (linear_layer + gpu_part).max(pim_part) + linear_layer.min(pim_part) / heads
    } else {
        linear_layer + gpu_part.max(pim_part)
    };
    let layer_ms = attention + l.table + if held { stacks.sync_ms } else { 0.0 };
    step.linear_ms = linear_ms(model, system, batch);
    let head_linear = step.linear_ms - layers * linear_layer;
    let total = layers * layer_ms + head_linear;
    step.overlapped_ms = (step.parts_ms() - total).max(0.0);
}

/// Bytes a placement keeps in GPU memory when nothing spills: weights,
/// codebooks and the tokens held there.
pub(crate) fn gpu_bytes(model: &ModelSpec, p: &Placed, batch: usize) -> u64 {
    model.weight_bytes()
        + p.gpu_books
        + p.on_gpu as u64 * batch as u64 * p.f.token_bytes * model.layers as u64
}
