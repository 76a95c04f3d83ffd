//! PIM attention for the system model: the [`PimTimer`] trait, read by the
//! `attacc` and `aqpim` policies, and its production implementation
//! [`SimTimer`], which runs `aqpim_attn::pim` (the lowered attention programs
//! in the simulator's timing-only mode, or their closed form) and memoizes
//! every job, since sweeps and the serving search repeat them.

use std::collections::HashMap;
use std::sync::Mutex;

use aqpim_attn::pim::{Footprint, LayerJob, PimCost};
use aqpim_pim::Device;

use crate::error::{Result, SystemError};

/// The per-layer PIM attention cost and placement the policies need.
pub trait PimTimer: Sync {
    /// The PIM device (its rows per bank bound what fits).
    fn device(&self) -> &Device;
    /// The cost of one layer's attention over every cache of `job`.
    fn layer(&self, job: &LayerJob) -> Result<PimCost>;
    /// What one layer of `job` occupies per channel and moves over the link.
    fn footprint(&self, job: &LayerJob) -> Result<Footprint>;
    /// Decode steps per in-memory quantization flush: a job with `quantize`
    /// encodes this many tokens per cache at once.
    fn quantize_block(&self, job: &LayerJob) -> Result<usize> {
        Ok(aqpim_attn::pim::quantize_block(self.device(), job)?.max(1))
    }
    /// Whether [`layer`](Self::layer) is already the closed form (the
    /// serving search then ranks batches with this timer itself).
    fn is_closed_form(&self) -> bool {
        false
    }
}

/// How [`SimTimer`] costs a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PimMode {
    /// `aqpim_attn::pim::simulate_layer`: the lowered programs in the
    /// simulator's timing-only mode.
    #[default]
    Simulated,
    /// `aqpim_attn::pim::analytic_layer`: the closed form, which
    /// `aqpim-attn`'s tests hold within 5 % of the simulation.
    Analytic,
}

impl std::str::FromStr for PimMode {
    type Err = SystemError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "simulated" | "sim" => Ok(PimMode::Simulated),
            "analytic" => Ok(PimMode::Analytic),
            other => Err(SystemError::InvalidArgument {
                name: "pim-model",
                reason: format!("`{other}` is not a PIM model (simulated, analytic)"),
            }),
        }
    }
}

/// The production [`PimTimer`]: `aqpim_attn::pim` on a device, memoized.
#[derive(Debug)]
pub struct SimTimer {
    device: Device,
    mode: PimMode,
    costs: Mutex<HashMap<LayerJob, PimCost>>,
    footprints: Mutex<HashMap<LayerJob, Footprint>>,
}

impl SimTimer {
    /// A timer for `device`.
    pub fn new(device: Device, mode: PimMode) -> Self {
        SimTimer {
            device,
            mode,
            costs: Mutex::new(HashMap::new()),
            footprints: Mutex::new(HashMap::new()),
        }
    }

    /// The mode.
    pub fn mode(&self) -> PimMode {
        self.mode
    }
}

impl PimTimer for SimTimer {
    fn device(&self) -> &Device {
        &self.device
    }

    fn is_closed_form(&self) -> bool {
        self.mode == PimMode::Analytic
    }

    fn layer(&self, job: &LayerJob) -> Result<PimCost> {
        if let Some(c) = self.costs.lock().ok().and_then(|m| m.get(job).copied()) {
            return Ok(c);
        }
        let c = match self.mode {
            PimMode::Simulated => aqpim_attn::pim::simulate_layer(&self.device, job),
            PimMode::Analytic => aqpim_attn::pim::analytic_layer(&self.device, job),
        }?;
        if let Ok(mut m) = self.costs.lock() {
            m.insert(*job, c);
        }
        Ok(c)
    }

    fn footprint(&self, job: &LayerJob) -> Result<Footprint> {
        if let Some(f) = self
            .footprints
            .lock()
            .ok()
            .and_then(|m| m.get(job).cloned())
        {
            return Ok(f);
        }
        let f = aqpim_attn::pim::layer_footprint(&self.device, job)?;
        if let Ok(mut m) = self.footprints.lock() {
            m.insert(*job, f.clone());
        }
        Ok(f)
    }
}

/// Rows of every bank of the fullest channel when `layers` layers, each
/// occupying `per_channel[c]` rows of channel `c`, are placed with each
/// layer's channel map rotated: layer by layer, the rotation that leaves the
/// fullest channel least full so far (ties to the smallest rotation), so
/// that the channels one layer's placement loads most are not loaded by
/// every layer. Deterministic; `O(layers x C^2)`.
pub fn balanced_rows(per_channel: &[usize], layers: usize) -> usize {
    let c = per_channel.len();
    if c == 0 || layers == 0 {
        return 0;
    }
    // Rows per channel are the same for every layer, so only the distinct
    // shapes matter; a uniform layer needs no search.
    let max = per_channel.iter().copied().max().unwrap_or(0);
    if per_channel.iter().all(|&r| r == max) {
        return max.saturating_mul(layers);
    }
    let mut total = vec![0usize; c];
    for _ in 0..layers {
        let mut best = (usize::MAX, 0);
        for shift in 0..c {
            let worst = (0..c)
                .map(|ch| total[(ch + shift) % c].saturating_add(per_channel[ch]))
                .max()
                .unwrap_or(0);
            if worst < best.0 {
                best = (worst, shift);
            }
        }
        for (ch, &r) in per_channel.iter().enumerate() {
            let t = &mut total[(ch + best.1) % c];
            *t = t.saturating_add(r);
        }
    }
    total.into_iter().max().unwrap_or(0)
}

/// The largest `n` in `0..=max` for which `fits(n)` holds, assuming `fits`
/// is monotone (true up to some point, false after); `None` when even
/// `fits(0)` fails.
pub fn largest_fitting(
    max: usize,
    mut fits: impl FnMut(usize) -> Result<bool>,
) -> Result<Option<usize>> {
    if fits(max)? {
        return Ok(Some(max));
    }
    if !fits(0)? {
        return Ok(None);
    }
    // fits(lo) holds, fits(hi) fails.
    let (mut lo, mut hi) = (0usize, max);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(lo))
}
