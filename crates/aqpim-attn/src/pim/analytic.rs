//! The closed-form cost of a placed layer: the same placement and programs
//! as [`super::simulate_layer`], timed phase by phase from the device's
//! parameters instead of command by command ([`super::slice_cost`]). Per
//! channel, the programs run back to back, walked against the refresh
//! deadlines; the layer takes as long as its slowest channel. Tests hold
//! the result within 5 % of the simulator on a grid of shapes.

use aqpim_pim::Device;

use super::placement::plan;
use super::slice_cost::{group_cycles, quantize_cycles, PHASES};
use super::{LayerJob, PimCost};
use crate::error::Result;

/// The closed-form cost of the same programs, for sweeps; tests hold it
/// within 5 % of [`super::simulate_layer`]. Only `cycles`, `ns` and
/// `channels_used` are filled.
pub fn analytic_layer(device: &Device, job: &LayerJob) -> Result<PimCost> {
    let plan = plan(device, job)?;
    let overhead = {
        let p = |name: &str| u64::from(device.param(name).unwrap_or(0));
        p("nRFC") + p("nRP") + p("nRCDRD")
    };
    let refi = device.refresh_interval.map(u64::from);
    let mut cycles = 0u64;
    for ch in 0..device.org.channels {
        PHASES.with(|v| v.borrow_mut().clear());
        for s in plan.slices.iter().filter(|s| s.ch == ch) {
            group_cycles(device, &s.geom, job.group);
        }
        for q in plan.quantize.iter().filter(|q| q.ch == ch) {
            let passes = q.tokens.iter().map(|t| t.pass + 1).max().unwrap_or(0);
            quantize_cycles(device, &q.geom, q.tokens.len(), passes);
        }
        let phases = PHASES.with(|v| std::mem::take(&mut *v.borrow_mut()));
        // Walk the channel's phases against the refresh deadlines.
        let mut t = 0u64;
        let mut row_ready = 0u64;
        let mut next = refi.unwrap_or(u64::MAX);
        for (len, row) in phases {
            if row {
                t = t.max(row_ready);
            }
            let mut end = t + len;
            while end > next {
                if row {
                    end += overhead;
                } else {
                    row_ready = row_ready.max(next + overhead);
                }
                next = next.saturating_add(refi.unwrap_or(u64::MAX));
            }
            t = end;
        }
        cycles = cycles.max(t);
    }
    Ok(PimCost {
        cycles,
        ns: cycles as f64 * device.t_ck_ns(),
        channels_used: plan.channels_used,
        ..PimCost::default()
    })
}
