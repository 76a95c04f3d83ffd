//! The serving view: for one context, the batch with the highest tokens/s
//! among those whose KV cache fits without spilling to host memory (the
//! PIM stacks, then free GPU memory), as a serving scheduler would cap it.
//!
//! The largest such batch is found by doubling then bisection on the
//! placement alone (no timing). Every batch from 1 to it is then a
//! candidate: tokens/s is not single-peaked in the batch (one more sequence
//! can add a wave of slices, or move tokens to the slower GPU path), so none
//! is skipped. For the PIM policies every batch is first timed with the
//! closed form of the PIM programs (`PimMode::Analytic`, which
//! `aqpim-attn`'s tests hold within 5 % of the simulator), and every batch
//! whose estimate is within 10 % of the best estimate is then simulated: a
//! batch further behind cannot be the best, since each of the two figures
//! is within 5 % of its simulation. The best simulated batch is kept.

use serde::Serialize;

use crate::decode::{decode_step_with, MAX_BATCH, MAX_CTX};
use crate::error::{Result, SystemError};
use crate::pim::{PimMode, PimTimer, SimTimer};
use crate::pim_step::place;
use crate::policy::Policy;
use crate::presets::{ModelSpec, SystemSpec};
use crate::step::Step;

/// The best batch of one context under one policy, with its step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServePoint {
    /// Tokens per sequence.
    pub ctx: usize,
    /// The policy.
    pub policy: Policy,
    /// The batch with the highest tokens/s among the candidates.
    pub best_batch: usize,
    /// Tokens per second at `best_batch`.
    pub tokens_per_s: f64,
    /// The format the policy holds (canonical cache spec, `dense` for FP16).
    pub kv: String,
    /// The format's measured perplexity delta against FP16, a fraction
    /// (`crate::accuracy`); `None` when it was not measured.
    pub ppl_delta: Option<f64>,
    /// The largest batch whose cache fits without host memory.
    pub max_batch: usize,
    /// PIM policies: the largest batch held entirely in the PIM stacks
    /// (nothing in GPU memory); `None` otherwise or when not even one
    /// sequence fits there.
    pub max_batch_in_pim: Option<usize>,
    /// Batches timed in full (simulated, for the PIM policies).
    pub batches_timed: usize,
    /// The itemized step at `best_batch`.
    pub step: Step,
}

/// Where a batch's cache would go: `None` when it does not fit without host
/// memory, else whether it is held entirely in the PIM stacks.
fn fit(
    model: &ModelSpec,
    system: &SystemSpec,
    policy: Policy,
    ctx: usize,
    batch: usize,
    timer: Option<&dyn PimTimer>,
) -> Result<Option<bool>> {
    if let (true, Some(t)) = (policy.uses_pim(), timer) {
        return match place(model, system, policy, ctx, batch, t) {
            Ok(p) if p.spilled == 0 => {
                let gpu = crate::pim_step::gpu_bytes(model, &p, batch);
                Ok((gpu <= system.gpu.memory_bytes).then_some(p.on_gpu == 0))
            }
            Ok(_) | Err(SystemError::Capacity { .. }) => Ok(None),
            Err(e) => Err(e),
        };
    }
    if policy.uses_pim() {
        return Err(SystemError::InvalidArgument {
            name: "system",
            reason: format!("{policy} needs a PIM timer"),
        });
    }
    match decode_step_with(model, system, policy, ctx, batch, None) {
        Ok(_) => Ok(Some(false)),
        Err(SystemError::Capacity { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The largest batch in `1..=MAX_BATCH` for which `ok` holds (`ok` is
/// monotone: true up to some batch, false after); `None` if not even 1.
fn largest(mut ok: impl FnMut(usize) -> Result<bool>) -> Result<Option<usize>> {
    if !ok(1)? {
        return Ok(None);
    }
    let mut lo = 1;
    let mut hi = 2;
    while hi <= MAX_BATCH && ok(hi)? {
        lo = hi;
        hi *= 2;
    }
    if hi > MAX_BATCH {
        if ok(MAX_BATCH)? {
            return Ok(Some(MAX_BATCH));
        }
        hi = MAX_BATCH;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if ok(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(lo))
}

/// Share of the best closed-form estimate a batch must reach to be
/// simulated: `0.95 / 1.05`, rounded down, from the 5 % bound of the closed
/// form on the PIM part (the rest of a step is the same formula in both).
const ANALYTIC_MARGIN: f64 = 0.90;

/// The batches to time in full: every batch up to `max_batch` for the
/// policies without PIM; for the PIM policies those whose closed-form
/// tokens/s is within [`ANALYTIC_MARGIN`] of the best closed form.
fn candidates(
    model: &ModelSpec,
    system: &SystemSpec,
    policy: Policy,
    ctx: usize,
    max_batch: usize,
    timer: Option<&dyn PimTimer>,
) -> Result<Vec<usize>> {
    let all: Vec<usize> = (1..=max_batch).collect();
    let Some(t) = timer.filter(|_| policy.uses_pim()) else {
        return Ok(all);
    };
    // A closed-form timer ranks the batches itself (its memo then serves the
    // full timing too); a simulating one gets a closed-form twin.
    let owned;
    let rank: &dyn PimTimer = if t.is_closed_form() {
        t
    } else {
        owned = SimTimer::new(t.device().clone(), PimMode::Analytic);
        &owned
    };
    let mut est = Vec::with_capacity(all.len());
    for &b in &all {
        let step = decode_step_with(model, system, policy, ctx, b, Some(rank))?;
        est.push((b, step.tokens_per_s));
    }
    let top = est.iter().map(|e| e.1).fold(0.0f64, f64::max);
    Ok(est
        .into_iter()
        .filter(|&(_, tps)| tps >= ANALYTIC_MARGIN * top)
        .map(|(b, _)| b)
        .collect())
}

/// Why not even one sequence fits without host memory: the capacity error
/// of batch 1 (placement for the PIM policies, the step for the others),
/// which names the bytes needed and the bytes available.
fn no_room(
    model: &ModelSpec,
    system: &SystemSpec,
    policy: Policy,
    ctx: usize,
    timer: Option<&dyn PimTimer>,
) -> SystemError {
    let tried = match (policy.uses_pim(), timer) {
        (true, Some(t)) => place(model, system, policy, ctx, 1, t).and_then(|p| {
            // Placed, but not without host memory: what GPU memory would have
            // to hold beside the stacks, against what it holds.
            let needed =
                crate::pim_step::gpu_bytes(model, &p, 1) + p.spilled_bytes(model, 1);
            let available = system.gpu.memory_bytes;
            Err(SystemError::Capacity {
                what: format!(
                    "one sequence of {ctx} tokens of {} under {policy} ({} tokens past the PIM stacks)",
                    model.name,
                    p.on_gpu + p.spilled
                ),
                place: "GPU memory beside the PIM stacks",
                needed,
                available,
                over: needed.saturating_sub(available),
            })
        }),
        _ => decode_step_with(model, system, policy, ctx, 1, timer).map(|_| ()),
    };
    match tried {
        Err(e) => e,
        Ok(()) => SystemError::InvalidArgument {
            name: "ctx",
            reason: format!("one sequence of {ctx} tokens fits under {policy}, yet no batch did"),
        },
    }
}

/// The serving view of one context: see the module docs. `timer` is
/// required for the PIM policies.
pub fn serve(
    model: &ModelSpec,
    system: &SystemSpec,
    policy: Policy,
    ctx: usize,
    timer: Option<&dyn PimTimer>,
) -> Result<ServePoint> {
    if ctx == 0 || ctx > MAX_CTX {
        return Err(SystemError::InvalidArgument {
            name: "ctx",
            reason: format!("context {ctx} must be in 1..={MAX_CTX}"),
        });
    }
    let Some(max_batch) = largest(|b| Ok(fit(model, system, policy, ctx, b, timer)?.is_some()))?
    else {
        return Err(no_room(model, system, policy, ctx, timer));
    };
    let in_pim = if policy.uses_pim() {
        largest(|b| Ok(b <= max_batch && fit(model, system, policy, ctx, b, timer)? == Some(true)))?
    } else {
        None
    };
    let candidates = candidates(model, system, policy, ctx, max_batch, timer)?;
    let mut best: Option<Step> = None;
    for &b in &candidates {
        let step = decode_step_with(model, system, policy, ctx, b, timer)?;
        if best
            .as_ref()
            .is_none_or(|s| step.tokens_per_s > s.tokens_per_s)
        {
            best = Some(step);
        }
    }
    let step = best.expect("batch 1 fits, so there is a candidate");
    Ok(ServePoint {
        ctx,
        policy,
        best_batch: step.batch,
        tokens_per_s: step.tokens_per_s,
        kv: step.kv.clone(),
        ppl_delta: step.ppl_delta,
        max_batch,
        max_batch_in_pim: in_pim,
        batches_timed: candidates.len(),
        step,
    })
}
