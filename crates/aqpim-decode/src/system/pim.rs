//! PIM attention latency for the system model: the [`PimTimer`] trait, read
//! by the `attacc` and `aqpim` policies, and its production implementation
//! [`SimTimer`], which runs `aqpim_attn::pim` (the lowered attention programs
//! in the simulator's timing-only mode, or their closed form) and memoizes
//! every job, since sweeps repeat them.

use std::collections::HashMap;
use std::sync::Mutex;

use aqpim_attn::pim::{LayerJob, PimCost, PimKind};
use aqpim_pim::Device;

use crate::error::{DecodeError, Result};

/// The per-layer PIM attention cost and placement the policies need.
pub trait PimTimer: Sync {
    /// The PIM device (its rows per bank bound what fits).
    fn device(&self) -> &Device;
    /// The cost of one layer's attention over every cache of `job`.
    fn layer(&self, job: &LayerJob) -> Result<PimCost>;
    /// Rows of every bank that one layer of `job` occupies; `usize::MAX`
    /// when one layer alone overflows the banks.
    fn rows_per_bank(&self, job: &LayerJob) -> Result<usize>;
    /// Decode steps per in-memory quantization flush: a job with `quantize`
    /// encodes this many tokens per cache at once.
    fn quantize_block(&self, job: &LayerJob) -> Result<usize> {
        Ok(aqpim_attn::pim::quantize_block(self.device(), job)
            .map_err(pim_err)?
            .max(1))
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
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "simulated" | "sim" => Ok(PimMode::Simulated),
            "analytic" => Ok(PimMode::Analytic),
            other => Err(DecodeError::InvalidArgument {
                name: "pim-model",
                reason: format!("`{other}` is not a PIM model (simulated, analytic)"),
            }),
        }
    }
}

type Key = (
    u8,
    usize,
    u32,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    bool,
);

fn key(j: &LayerJob) -> Key {
    let (tag, dsub, nbits) = match j.kind {
        PimKind::Fp16 => (0, 0, 0),
        PimKind::Pq { dsub, nbits } => (1, dsub, nbits),
    };
    (
        tag,
        dsub,
        nbits,
        j.head_dim,
        j.heads,
        j.kv_heads,
        j.group,
        j.ctx,
        j.fp_tokens,
        j.quantize,
    )
}

fn pim_err(e: aqpim_attn::AttnError) -> DecodeError {
    DecodeError::Pim {
        reason: e.to_string(),
    }
}

/// The production [`PimTimer`]: `aqpim_attn::pim` on a device, memoized.
#[derive(Debug)]
pub struct SimTimer {
    device: Device,
    mode: PimMode,
    costs: Mutex<HashMap<Key, PimCost>>,
    rows: Mutex<HashMap<Key, usize>>,
}

impl SimTimer {
    /// A timer for `device`.
    pub fn new(device: Device, mode: PimMode) -> Self {
        SimTimer {
            device,
            mode,
            costs: Mutex::new(HashMap::new()),
            rows: Mutex::new(HashMap::new()),
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

    fn layer(&self, job: &LayerJob) -> Result<PimCost> {
        let k = key(job);
        if let Some(c) = self.costs.lock().ok().and_then(|m| m.get(&k).copied()) {
            return Ok(c);
        }
        let c = match self.mode {
            PimMode::Simulated => aqpim_attn::pim::simulate_layer(&self.device, job),
            PimMode::Analytic => aqpim_attn::pim::analytic_layer(&self.device, job),
        }
        .map_err(pim_err)?;
        if let Ok(mut m) = self.costs.lock() {
            m.insert(k, c);
        }
        Ok(c)
    }

    fn rows_per_bank(&self, job: &LayerJob) -> Result<usize> {
        let k = key(job);
        if let Some(r) = self.rows.lock().ok().and_then(|m| m.get(&k).copied()) {
            return Ok(r);
        }
        let r = match aqpim_attn::pim::layer_rows_per_bank(&self.device, job) {
            Ok(r) => r,
            // The placement refuses a layer that needs more rows than a bank has.
            Err(aqpim_attn::AttnError::Placement(_)) if job.ctx + job.fp_tokens > 0 => usize::MAX,
            Err(e) => return Err(pim_err(e)),
        };
        if let Ok(mut m) = self.rows.lock() {
            m.insert(k, r);
        }
        Ok(r)
    }
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
