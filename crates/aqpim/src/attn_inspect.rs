//! Inside a PIM run of `aqpim attn sim`: `--breakdown` (time, commands,
//! bytes and energy per phase of the lowered kernel) and `--dump DIR` (the
//! lowered programs as text that `aqpim sim run` takes).

use std::path::Path;

use anyhow::{Context, Result};
use aqpim_attn::pim::{
    lower_layer, simulate_layer_breakdown, simulate_layer_mode, LayerJob, PhaseCost, PimCost,
};
use aqpim_pim::{Device, Mode};
use serde::Serialize;

/// One phase of the step's attention, summed over layers.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRow {
    /// Phase key (`broadcast`, `scoring`, `softmax`, `values`, `histogram`,
    /// `bins_codebook`, `reduction`, `fp16_window`, `quantization`,
    /// `refresh`).
    pub phase: &'static str,
    /// Critical-channel cycles attributed to the phase (they sum to the
    /// step's cycles).
    pub time_cycles: u64,
    pub time_ms: f64,
    /// Share of the step's time.
    pub time_share: f64,
    /// Commands issued, every channel.
    pub commands: u64,
    /// Commands by mnemonic.
    pub command_counts: std::collections::BTreeMap<String, u64>,
    pub internal_bytes: u64,
    pub external_bytes: u64,
    pub buffer_die_bytes: u64,
    pub energy_uj: f64,
    /// Share of the step's energy.
    pub energy_share: f64,
}

/// Runs layers, keeping their per-phase costs when asked to.
#[derive(Debug, Default)]
pub struct Inspector {
    breakdown: bool,
    phases: Vec<PhaseCost>,
}

impl Inspector {
    pub fn new(breakdown: bool) -> Inspector {
        Inspector {
            breakdown,
            phases: Vec::new(),
        }
    }

    /// Simulates one layer (its cost), adding its phases when breaking down.
    pub fn layer(&mut self, device: &Device, job: &LayerJob, mode: Mode) -> Result<PimCost> {
        if !self.breakdown {
            return Ok(simulate_layer_mode(device, job, mode)?);
        }
        let b = simulate_layer_breakdown(device, job, mode)?;
        for p in &b.phases {
            match self.phases.iter_mut().find(|q| q.phase == p.phase) {
                Some(q) => q.add(p),
                None => self.phases.push(p.clone()),
            }
        }
        self.phases.sort_by_key(|p| p.phase);
        Ok(b.total)
    }

    /// The phases so far, as rows (`None` without `--breakdown`).
    pub fn rows(&self) -> Option<Vec<PhaseRow>> {
        if !self.breakdown {
            return None;
        }
        let cycles: u64 = self.phases.iter().map(|p| p.cycles).sum();
        let energy: f64 = self.phases.iter().map(|p| p.energy_pj).sum();
        let share = |x: f64, total: f64| if total > 0.0 { x / total } else { 0.0 };
        Some(
            self.phases
                .iter()
                .map(|p| PhaseRow {
                    phase: p.phase.name(),
                    time_cycles: p.cycles,
                    time_ms: p.ns / 1e6,
                    time_share: share(p.cycles as f64, cycles as f64),
                    commands: p.commands,
                    command_counts: p.command_counts.clone(),
                    internal_bytes: p.bytes_internal,
                    external_bytes: p.bytes_external,
                    buffer_die_bytes: p.bytes_buffer_die,
                    energy_uj: p.energy_pj / 1e6,
                    energy_share: share(p.energy_pj, energy),
                })
                .collect(),
        )
    }
}

/// Prints the phases as a table, with a total line.
pub fn print_phases(rows: &[PhaseRow]) {
    println!();
    println!(
        "{:<24} {:>10} {:>7} {:>12} {:>12} {:>12} {:>7}  top commands",
        "phase", "time us", "time %", "commands", "internal MB", "energy uJ", "energy %"
    );
    let (mut t, mut c, mut b, mut e) = (0f64, 0u64, 0u64, 0f64);
    for r in rows {
        let label = aqpim_attn::pim::Phase::ALL
            .iter()
            .find(|p| p.name() == r.phase)
            .map_or(r.phase, |p| p.label());
        let mut top: Vec<(&String, &u64)> = r.command_counts.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let top: Vec<String> = top
            .iter()
            .take(3)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "{:<24} {:>10.2} {:>7.1} {:>12} {:>12.2} {:>12.1} {:>7.1}  {}",
            label,
            r.time_ms * 1e3,
            100.0 * r.time_share,
            r.commands,
            r.internal_bytes as f64 / 1e6,
            r.energy_uj,
            100.0 * r.energy_share,
            top.join(", ")
        );
        t += r.time_ms;
        c += r.commands;
        b += r.internal_bytes;
        e += r.energy_uj;
    }
    println!(
        "{:<24} {:>10.2} {:>7.1} {:>12} {:>12.2} {:>12.1} {:>7.1}",
        "total",
        t * 1e3,
        100.0,
        c,
        b as f64 / 1e6,
        e,
        100.0
    );
    println!(
        "(time on the channel that finishes last, each cycle charged to the phase whose command pushed its end back; commands, bytes and energy over every channel)"
    );
}

/// Writes one layer's lowered program (`layer.pim`), the program of cache
/// 0 alone (`head.pim`: its slices and query heads, its channels'
/// quantization), and the host data both read (`layer.host`), and says on
/// stderr how to run them.
pub fn dump(device: &Device, job: &LayerJob, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let layer = lower_layer(device, job, None)?;
    let head = lower_layer(device, job, Some(0))?;
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = dir.join(name);
        aqpim_pq::io::write_atomic(&path, bytes)
            .with_context(|| format!("writing {}", path.display()))
    };
    let header = |what: &str| {
        format!(
            "# {what} of `aqpim attn sim` on {}: {:?}\n# Host data (tables, queries, new tokens, codebooks; zeros): layer.host\n#   aqpim sim run FILE --device {} --host-data layer.host --check\n",
            device.name, job, device.name
        )
    };
    let text = |what: &str, p: &aqpim_attn::pim::LayerProgram| header(what) + &p.annotated_text();
    write(
        "layer.pim",
        text("One layer's lowered program", &layer).as_bytes(),
    )?;
    write(
        "head.pim",
        text("Cache 0's part of one layer's lowered program", &head).as_bytes(),
    )?;
    write("layer.host", &layer.host_data)?;
    let commands = layer.program.checked_command_count()?;
    // `out/` and `out` both print as `out/layer.pim`.
    let shown = dir.to_string_lossy();
    let dir = Path::new(shown.trim_end_matches('/'));
    eprintln!(
        "wrote {}/layer.pim ({} instructions, {commands} commands: one layer, every layer runs it), head.pim (cache 0 alone, {} instructions) and layer.host ({} B of host data); run: aqpim sim run {}/head.pim --device {} --host-data {}/layer.host --check --trace trace.jsonl",
        dir.display(),
        layer.program.instrs().len(),
        head.program.instrs().len(),
        layer.host_data.len(),
        dir.display(),
        device.name,
        dir.display(),
    );
    if commands > aqpim_pim::MAX_TRACE_ENTRIES {
        eprintln!(
            "note: layer.pim issues more than the {} commands that `sim run --check`/`--trace` record; check head.pim instead",
            aqpim_pim::MAX_TRACE_ENTRIES
        );
    }
    Ok(())
}
