//! `aqpim simulate`: the itemized latency of one decode step, for one point or
//! a grid of contexts, batches and policies; `aqpim simulate sweep` writes a
//! grid to CSV with a progress bar.

use std::path::PathBuf;

use anyhow::{Context, Result};
use aqpim_decode::system::pim::{PimMode, PimTimer, SimTimer};
use aqpim_decode::system::policy::{decode_step_with, Policy, Step};
use aqpim_decode::system::presets::{self, ModelSpec, SystemSpec};
use clap::{Args, Subcommand};
use rayon::prelude::*;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SimulateArgs {
    #[command(subcommand)]
    command: Option<SimulateCommand>,
    #[command(flatten)]
    grid: GridArgs,
    /// Write every point as CSV to this file (atomically).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print JSON (one object per point, one per line) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum SimulateCommand {
    /// Every point of a grid (policies x batches x contexts) into a CSV file,
    /// with a progress bar; points that do not fit are reported and skipped.
    Sweep(SweepArgs),
}

#[derive(Debug, Args)]
struct SweepArgs {
    #[command(flatten)]
    grid: GridArgs,
    /// The CSV file to write (atomically).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct GridArgs {
    /// Model preset (llama2-7b, llama2-13b, llama2-70b, llama3-8b, llama3-70b,
    /// mistral-7b, smollm2-135m) or a TOML file.
    #[arg(long, required = true)]
    model: Option<String>,
    /// System preset (h100, h100+host, h100+attacc, h100+aqpim) or a TOML file.
    #[arg(long, required = true)]
    system: Option<String>,
    /// Policies, comma-separated: gpu, offload, offload-overlap, attacc, aqpim.
    #[arg(long, default_value = "gpu")]
    policy: String,
    /// Context lengths, comma-separated.
    #[arg(long, default_value = "4096")]
    ctx: String,
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "1")]
    batch: String,
    /// PIM attention cost: `simulated` (the lowered programs in the
    /// simulator's timing-only mode) or `analytic` (their closed form, held
    /// within 5 % of the simulation by aqpim-attn's tests).
    #[arg(long, default_value = "simulated")]
    pim_model: String,
}

fn list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|e| anyhow::anyhow!("--{what} `{v}`: {e}"))
        })
        .collect()
}

const CSV_HEADER: &str = "model,system,policy,ctx,batch,linear_ms,attention_ms,transfer_ms,overlapped_ms,total_ms,tokens_per_s,transfer_share,transfer_share_of_attention,weight_bytes,kv_bytes,gpu_bytes_used,host_bytes_used,pim_attention_ms,quantize_ms,sync_ms,pim_bytes_used,pim_capacity_bytes,pim_rows_used,pim_rows,ctx_in_pim,ctx_spilled,pim_energy_uj,prefill_ms,codebook_training_ms";

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.6}")).unwrap_or_default()
}

fn csv_row(s: &Step) -> String {
    format!(
        "{},{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.3},{:.6},{:.6},{},{},{},{},{:.6},{:.6},{:.6},{},{},{},{},{},{},{:.3},{},{}",
        s.model,
        s.system,
        s.policy,
        s.ctx,
        s.batch,
        s.linear_ms,
        s.attention_ms,
        s.transfer_ms,
        s.overlapped_ms,
        s.total_ms,
        s.tokens_per_s,
        s.transfer_share,
        s.transfer_share_of_attention,
        s.weight_bytes,
        s.kv_bytes,
        s.gpu_bytes_used,
        s.host_bytes_used,
        s.pim_attention_ms,
        s.quantize_ms,
        s.sync_ms,
        s.pim_bytes_used,
        s.pim_capacity_bytes,
        s.pim_rows_used,
        s.pim_rows,
        s.ctx_in_pim,
        s.ctx_spilled,
        s.pim_energy_uj,
        opt(s.prefill_ms),
        opt(s.codebook_training_ms),
    )
}

/// A parsed grid: presets, the points, and the PIM timer they share.
struct Grid {
    model: ModelSpec,
    system: SystemSpec,
    points: Vec<(Policy, usize, usize)>,
    timer: Option<SimTimer>,
}

impl GridArgs {
    fn load(&self) -> Result<Grid> {
        // clap enforces both unless a subcommand is given, which has its own.
        let model = presets::model(self.model.as_deref().unwrap_or_default())?;
        let system = presets::system(self.system.as_deref().unwrap_or_default())?;
        let policies: Vec<Policy> = list(&self.policy, "policy")?;
        let ctxs: Vec<usize> = list(&self.ctx, "ctx")?;
        let batches: Vec<usize> = list(&self.batch, "batch")?;
        let mode: PimMode = self.pim_model.parse()?;
        let timer = match (&system.pim, policies.iter().any(|p| p.uses_pim())) {
            (Some(p), true) => Some(SimTimer::new(p.device()?, mode)),
            _ => None,
        };
        let mut points = Vec::new();
        for &p in &policies {
            for &b in &batches {
                for &c in &ctxs {
                    points.push((p, c, b));
                }
            }
        }
        Ok(Grid {
            model,
            system,
            points,
            timer,
        })
    }
}

/// Runs every point (in parallel); points that do not fit are skipped with a
/// message when the grid has more than one point, an error otherwise.
fn run_grid(g: &Grid, bar: Option<&indicatif::ProgressBar>) -> Result<(Vec<Step>, Vec<String>)> {
    let single = g.points.len() == 1;
    let timer = g.timer.as_ref().map(|t| t as &dyn PimTimer);
    let results: Vec<_> = g
        .points
        .par_iter()
        .map(|&(p, c, b)| {
            let r = decode_step_with(&g.model, &g.system, p, c, b, timer);
            if let Some(bar) = bar {
                bar.inc(1);
            }
            (p, c, b, r)
        })
        .collect();
    let mut steps = Vec::new();
    let mut skipped = Vec::new();
    for (p, c, b, r) in results {
        match r {
            Ok(step) => steps.push(step),
            Err(e @ aqpim_decode::DecodeError::Capacity { .. }) if !single => {
                skipped.push(format!("{p} ctx {c} batch {b}: {e}"))
            }
            Err(e) => return Err(e).with_context(|| format!("{p}, ctx {c}, batch {b}")),
        }
    }
    Ok((steps, skipped))
}

fn write_csv(out: &std::path::Path, steps: &[Step]) -> Result<()> {
    let mut text = format!("{CSV_HEADER}\n");
    for s in steps {
        text.push_str(&csv_row(s));
        text.push('\n');
    }
    aqpim_pq::io::write_atomic(out, text.as_bytes())?;
    Ok(())
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

fn print_point(s: &Step) {
    println!(
        "{} on {}, policy {}, ctx {}, batch {}",
        s.model, s.system, s.policy, s.ctx, s.batch
    );
    let rows = [
        ("linear layers (GPU)", s.linear_ms),
        ("attention (GPU)", s.attention_ms),
        ("attention (PIM)", s.pim_attention_ms),
        ("quantization (PIM)", s.quantize_ms),
        ("synchronization", s.sync_ms),
        ("transfers (link)", s.transfer_ms),
        ("overlapped", -s.overlapped_ms),
    ];
    for (name, v) in rows {
        if v != 0.0 || name.starts_with("linear") || name.starts_with("attention (GPU)") {
            println!("  {name:<24} {v:>12.3} ms {:>6.1}%", 100.0 * v / s.total_ms);
        }
    }
    println!("  {:<24} {:>12.3} ms", "step", s.total_ms);
    println!("  {:<24} {:>12.1}", "tokens/s", s.tokens_per_s);
    println!(
        "  {:<24} {:>12.2} GB (weights {:.2} GB on the GPU)",
        "KV cache",
        gb(s.kv_bytes),
        gb(s.weight_bytes)
    );
    if s.pim_rows > 0 {
        println!(
            "  {:<24} {:>12.2} GB of {:.2} GB; {} of {} rows per bank",
            "PIM capacity used",
            gb(s.pim_bytes_used),
            gb(s.pim_capacity_bytes),
            s.pim_rows_used,
            s.pim_rows
        );
        println!(
            "  {:<24} {:>12} tokens per sequence in PIM, {} spilled ({:.2} GB in host memory)",
            "placement",
            s.ctx_in_pim,
            s.ctx_spilled,
            gb(s.host_bytes_used)
        );
    } else if s.host_bytes_used > 0 {
        println!(
            "  {:<24} {:>12.2} GB",
            "in host memory",
            gb(s.host_bytes_used)
        );
    }
    if let Some(p) = s.prefill_ms {
        println!(
            "  {:<24} {:>12.3} ms (estimate, not in the step)",
            "prefill", p
        );
    }
    if let Some(t) = s.codebook_training_ms {
        println!(
            "  {:<24} {:>12.3} ms (estimate, not in the step)",
            "codebook training", t
        );
    }
}

fn print_table(steps: &[Step]) {
    println!(
        "{:<16} {:>8} {:>6} {:>10} {:>10} {:>10} {:>9} {:>8} {:>11} {:>10} {:>10} {:>9} {:>9}",
        "policy",
        "ctx",
        "batch",
        "linear ms",
        "attn ms",
        "pim ms",
        "quant ms",
        "sync ms",
        "transfer ms",
        "step ms",
        "tokens/s",
        "transfer",
        "spilled"
    );
    for s in steps {
        println!(
            "{:<16} {:>8} {:>6} {:>10.3} {:>10.3} {:>10.3} {:>9.3} {:>8.3} {:>11.3} {:>10.3} {:>10.1} {:>8.1}% {:>9}",
            s.policy.to_string(),
            s.ctx,
            s.batch,
            s.linear_ms,
            s.attention_ms,
            s.pim_attention_ms,
            s.quantize_ms,
            s.sync_ms,
            s.transfer_ms,
            s.total_ms,
            s.tokens_per_s,
            100.0 * s.transfer_share,
            s.ctx_spilled
        );
    }
}

pub fn run(a: SimulateArgs) -> Result<()> {
    if let Some(SimulateCommand::Sweep(s)) = a.command {
        return run_sweep(s);
    }
    let g = a.grid.load()?;
    let (steps, skipped) = run_grid(&g, None)?;
    if let Some(out) = &a.out {
        write_csv(out, &steps)?;
    }
    if a.json {
        for s in &steps {
            println!("{}", serde_json::to_string(s)?);
        }
    } else if steps.len() == 1 && g.points.len() == 1 {
        print_point(&steps[0]);
    } else {
        print_table(&steps);
    }
    for s in &skipped {
        eprintln!("skipped (does not fit): {s}");
    }
    Ok(())
}

fn run_sweep(a: SweepArgs) -> Result<()> {
    let g = a.grid.load()?;
    let bar = indicatif::ProgressBar::new(g.points.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} points {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (steps, skipped) = run_grid(&g, Some(&bar))?;
    bar.finish_and_clear();
    write_csv(&a.out, &steps)?;
    eprintln!(
        "{} points written to {}, {} skipped",
        steps.len(),
        a.out.display(),
        skipped.len()
    );
    for s in &skipped {
        eprintln!("skipped (does not fit): {s}");
    }
    Ok(())
}
