//! `aqpim simulate`: the itemized latency of one decode step, for one point or
//! a grid of contexts, batches and policies; `aqpim simulate sweep` writes a
//! grid to CSV with a progress bar; `aqpim simulate serve` finds, per
//! context, the batch with the highest tokens/s that fits without host memory.
//!
//! JSON (`--json`) is one object per line; CSV columns are the JSON keys of
//! the same rows (`aqpim_system::Step`, and for `serve` the serving fields
//! before the step's), so the schema is written once, in the struct.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use aqpim_system::pim::{PimMode, PimTimer, SimTimer};
use aqpim_system::presets::{self, ModelSpec, SystemSpec};
use aqpim_system::{decode_step_with, serve, Policy, ServePoint, Step, SystemError};
use clap::{Args, Subcommand};
use rayon::prelude::*;
use serde_json::Value;

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
    /// The serving view: per policy and context, the batch with the highest
    /// tokens/s whose KV cache fits without host memory (PIM stacks, then
    /// free GPU memory), and the itemized step there.
    Serve(ServeArgs),
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
struct ServeArgs {
    /// Model preset or a TOML file.
    #[arg(long)]
    model: String,
    /// System preset or a TOML file.
    #[arg(long)]
    system: String,
    /// Policies, comma-separated: gpu, gpu-quant, offload, offload-overlap,
    /// attacc, scalar-pim, aqpim.
    #[arg(long, default_value = "aqpim")]
    policy: String,
    /// Context lengths, comma-separated (K and M suffixes: 32K = 32768).
    #[arg(long, default_value = "32K")]
    ctx: String,
    /// The compressed format instead of the system's own (a cache spec, as
    /// `aqpim kv stats --kv` takes it): a `pq:` spec for aqpim, a `scalar:`
    /// spec for scalar-pim and gpu-quant.
    #[arg(long)]
    kv: Option<String>,
    /// PIM attention cost: `simulated` or `analytic`.
    #[arg(long, default_value = "simulated")]
    pim_model: String,
    /// Write the rows as CSV to this file (atomically).
    #[arg(long)]
    out: Option<PathBuf>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct GridArgs {
    /// Model preset (llama2-7b, llama2-13b, llama2-70b, llama3-8b, llama3-70b,
    /// mistral-7b, smollm2-135m) or a TOML file.
    #[arg(long, required = true)]
    model: Option<String>,
    /// System preset (h100, h100+host, h100+attacc, h100+aqpim,
    /// h100+aqpim-equal-area, h100+gpu-quant, h100+scalar-pim) or a TOML file.
    #[arg(long, required = true)]
    system: Option<String>,
    /// Policies, comma-separated: gpu, gpu-quant, offload, offload-overlap,
    /// attacc, scalar-pim, aqpim.
    #[arg(long, default_value = "gpu")]
    policy: String,
    /// The compressed format instead of the system's own (a cache spec, as
    /// `aqpim kv stats --kv` takes it): a `pq:` spec for aqpim, a `scalar:`
    /// spec for scalar-pim and gpu-quant.
    #[arg(long)]
    kv: Option<String>,
    /// Context lengths, comma-separated (K and M suffixes: 32K = 32768).
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

/// Parses a count with an optional `K` (x1024) or `M` (x1024^2) suffix.
pub fn parse_count(v: &str) -> Result<usize> {
    let v = v.trim();
    let (digits, scale) = match v.char_indices().last() {
        Some((i, 'K' | 'k')) => (&v[..i], 1usize << 10),
        Some((i, 'M' | 'm')) => (&v[..i], 1usize << 20),
        _ => (v, 1),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| anyhow::anyhow!("not a count (digits, optionally with K or M)"))?;
    n.checked_mul(scale)
        .ok_or_else(|| anyhow::anyhow!("too large"))
}

fn shown(v: &str) -> String {
    const MAX: usize = 40;
    if v.chars().count() > MAX {
        format!("{}...", v.chars().take(MAX).collect::<String>())
    } else {
        v.to_string()
    }
}

fn counts(s: &str, what: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|v| parse_count(v).with_context(|| format!("--{what} `{}`", shown(v))))
        .collect()
}

fn policies(s: &str) -> Result<Vec<Policy>> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<Policy>()
                .with_context(|| format!("--policy `{}`", shown(v)))
        })
        .collect()
}

/// `system` with `kv` as its compressed format: a `pq:` spec goes to the
/// stacks (`[pim] kv`), a `scalar:` spec to the stacks and to the GPU
/// (`[gpu] kv`, read by gpu-quant); the result is validated again.
fn with_kv(mut system: SystemSpec, kv: Option<&str>) -> Result<SystemSpec> {
    let Some(kv) = kv else { return Ok(system) };
    let spec: aqpim_kvcache::KvSpec = kv
        .parse()
        .with_context(|| format!("--kv `{}`", shown(kv)))?;
    match spec {
        aqpim_kvcache::KvSpec::Pq(_) => {}
        aqpim_kvcache::KvSpec::Scalar(_) => system.gpu.kv = Some(kv.to_string()),
        aqpim_kvcache::KvSpec::Dense => anyhow::bail!(
            "--kv `{}`: FP16 is what the gpu, offload and attacc policies hold; give a pq: or scalar: spec",
            shown(kv)
        ),
    }
    if let Some(p) = system.pim.as_mut() {
        p.kv = Some(kv.to_string());
    }
    system.name = format!("{} --kv {kv}", system.name);
    system
        .validate()
        .with_context(|| format!("--kv `{}`", shown(kv)))?;
    Ok(system)
}

/// A parsed grid: presets, the points, and the PIM timer they share.
struct Grid {
    model: ModelSpec,
    system: SystemSpec,
    points: Vec<(Policy, usize, usize)>,
    timers: Timers,
}

/// One PIM timer per policy that uses PIM, each on that policy's own device
/// (`[pim] device`, or `attacc_device` for `attacc`).
struct Timers(Vec<(Policy, SimTimer)>);

impl Timers {
    /// Each PIM policy's device with its area per DRAM die and peak power.
    fn print_prices(&self, o: &mut impl Write) -> Result<()> {
        for (p, t) in &self.0 {
            let d = t.device();
            writeln!(o, "{p} runs on {}:", d.name)?;
            for line in crate::price::DevicePrice::of(d).lines() {
                writeln!(o, "  {line}")?;
            }
        }
        Ok(())
    }

    fn get(&self, policy: Policy) -> Option<&dyn PimTimer> {
        self.0
            .iter()
            .find(|(p, _)| *p == policy)
            .map(|(_, t)| t as &dyn PimTimer)
    }
}

fn timers(system: &SystemSpec, policies: &[Policy], mode: &str) -> Result<Timers> {
    let mode: PimMode = mode.parse()?;
    let mut out = Vec::new();
    if let Some(stacks) = &system.pim {
        for &p in policies.iter().filter(|p| p.uses_pim()) {
            if out.iter().all(|(q, _)| *q != p) {
                out.push((p, SimTimer::new(stacks.device_for(p)?, mode)));
            }
        }
    }
    Ok(Timers(out))
}

impl GridArgs {
    fn load(&self) -> Result<Grid> {
        // clap enforces both unless a subcommand is given, which has its own.
        let model = presets::model(self.model.as_deref().unwrap_or_default())?;
        let system = with_kv(
            presets::system(self.system.as_deref().unwrap_or_default())?,
            self.kv.as_deref(),
        )?;
        let policies = policies(&self.policy)?;
        let ctxs = counts(&self.ctx, "ctx")?;
        let batches = counts(&self.batch, "batch")?;
        let timers = timers(&system, &policies, &self.pim_model)?;
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
            timers,
        })
    }
}

/// Runs every point (in parallel); points that do not fit are skipped with a
/// message when the grid has more than one point, an error otherwise.
fn run_grid(g: &Grid, bar: Option<&indicatif::ProgressBar>) -> Result<(Vec<Step>, Vec<String>)> {
    let single = g.points.len() == 1;
    let results: Vec<_> = g
        .points
        .par_iter()
        .map(|&(p, c, b)| {
            let r = decode_step_with(&g.model, &g.system, p, c, b, g.timers.get(p));
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
            Err(e @ SystemError::Capacity { .. }) if !single => {
                skipped.push(format!("{p} ctx {c} batch {b}: {e}"))
            }
            Err(e) => return Err(e).with_context(|| format!("{p}, ctx {c}, batch {b}")),
        }
    }
    Ok((steps, skipped))
}

/// A string as one CSV cell (RFC 4180): bare unless it holds a comma, a
/// quote or a line break, else quoted with quotes doubled (cache specs
/// such as `pq:dsub=2,kbits=8` hold commas).
fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// CSV of rows that serialize as flat JSON objects: the header is the first
/// row's keys, a value is its JSON text (strings bare unless they need
/// quotes, `null` empty).
fn write_csv(out: &std::path::Path, rows: &[Value]) -> Result<()> {
    let mut text = String::new();
    if let Some(Value::Object(first)) = rows.first() {
        text.push_str(&first.keys().cloned().collect::<Vec<_>>().join(","));
        text.push('\n');
    }
    for r in rows {
        let Value::Object(m) = r else {
            anyhow::bail!("a CSV row must be an object");
        };
        let cells: Vec<String> = m
            .values()
            .map(|v| match v {
                Value::Null => String::new(),
                Value::String(s) => csv_cell(s),
                other => other.to_string(),
            })
            .collect();
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    aqpim_pq::io::write_atomic(out, text.as_bytes())?;
    Ok(())
}

fn step_rows(steps: &[Step]) -> Result<Vec<Value>> {
    steps.iter().map(|s| Ok(serde_json::to_value(s)?)).collect()
}

/// A serving point as one flat row: the serving fields, then the step's
/// (whose `batch` is the best batch).
fn serve_row(p: &ServePoint) -> Result<Value> {
    let mut row = serde_json::Map::new();
    row.insert("best_batch".into(), p.best_batch.into());
    row.insert("max_batch".into(), p.max_batch.into());
    row.insert(
        "max_batch_in_pim".into(),
        p.max_batch_in_pim.map_or(Value::Null, Value::from),
    );
    row.insert("batches_timed".into(), p.batches_timed.into());
    if let Value::Object(step) = serde_json::to_value(&p.step)? {
        row.extend(step);
    }
    Ok(Value::Object(row))
}

/// A perplexity delta as `+1.61%`, or `-` when the format was not measured.
fn ppl(delta: Option<f64>) -> String {
    delta.map_or("-".into(), |d| format!("{:+.2}%", 100.0 * d))
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

fn print_point(o: &mut impl Write, s: &Step) -> std::io::Result<()> {
    writeln!(
        o,
        "{} on {}, policy {}, ctx {}, batch {}",
        s.model, s.system, s.policy, s.ctx, s.batch
    )?;
    let rows = [
        ("linear layers (GPU)", s.linear_ms),
        ("lookup tables (GPU)", s.table_ms),
        ("attention (GPU)", s.attention_ms),
        ("attention (PIM)", s.pim_attention_ms),
        ("quantization (PIM)", s.quantize_ms),
        ("GPU-PIM link", s.link_ms),
        ("synchronization", s.sync_ms),
        ("transfers (host link)", s.transfer_ms),
        ("overlapped", -s.overlapped_ms),
    ];
    for (name, v) in rows {
        if v != 0.0 || name.starts_with("linear") || name.starts_with("attention (GPU)") {
            writeln!(
                o,
                "  {name:<24} {v:>12.3} ms {:>6.1}%",
                100.0 * v / s.total_ms
            )?;
        }
    }
    writeln!(o, "  {:<24} {:>12.3} ms", "step", s.total_ms)?;
    writeln!(o, "  {:<24} {:>12.1}", "tokens/s", s.tokens_per_s)?;
    writeln!(
        o,
        "  {:<24} {:>12.2} GB (weights {:.2} GB on the GPU)",
        "KV cache",
        gb(s.kv_bytes),
        gb(s.weight_bytes)
    )?;
    if s.pim_rows > 0 {
        writeln!(
            o,
            "  {:<24} {:>12.2} GB of {:.2} GB; {} of {} rows per bank",
            "PIM capacity used",
            gb(s.pim_bytes_used),
            gb(s.pim_capacity_bytes),
            s.pim_rows_used,
            s.pim_rows
        )?;
        writeln!(
            o,
            "  {:<24} {:>12} tokens per sequence in PIM, {} in GPU memory, {} spilled to the host ({:.2} GB)",
            "placement",
            s.ctx_in_pim,
            s.ctx_on_gpu,
            s.ctx_spilled,
            gb(s.host_bytes_used)
        )?;
        if s.link_bytes > 0 {
            writeln!(
                o,
                "  {:<24} {:>12.2} MB per step ({:.1} % of the step busy)",
                "GPU-PIM link",
                s.link_bytes as f64 / 1e6,
                100.0 * s.link_share
            )?;
        }
    } else if s.host_bytes_used > 0 {
        writeln!(
            o,
            "  {:<24} {:>12.2} GB",
            "in host memory",
            gb(s.host_bytes_used)
        )?;
    }
    if let Some(p) = s.prefill_ms {
        writeln!(
            o,
            "  {:<24} {:>12.3} ms (estimate, not in the step)",
            "prefill", p
        )?;
    }
    if let Some(t) = s.codebook_training_ms {
        writeln!(
            o,
            "  {:<24} {:>12.3} ms (estimate, not in the step)",
            "codebook training", t
        )?;
    }
    Ok(())
}

fn print_table(o: &mut impl Write, steps: &[Step]) -> std::io::Result<()> {
    writeln!(
        o,
        "{:<16} {:>8} {:>6} {:>10} {:>10} {:>10} {:>9} {:>9} {:>11} {:>10} {:>10} {:>9} {:>9}",
        "policy",
        "ctx",
        "batch",
        "linear ms",
        "attn ms",
        "pim ms",
        "quant ms",
        "link ms",
        "transfer ms",
        "step ms",
        "tokens/s",
        "on GPU",
        "spilled"
    )?;
    for s in steps {
        writeln!(
            o,
            "{:<16} {:>8} {:>6} {:>10.3} {:>10.3} {:>10.3} {:>9.3} {:>9.3} {:>11.3} {:>10.3} {:>10.1} {:>9} {:>9}",
            s.policy.to_string(),
            s.ctx,
            s.batch,
            s.linear_ms,
            s.attention_ms,
            s.pim_attention_ms,
            s.quantize_ms,
            s.link_ms,
            s.transfer_ms,
            s.total_ms,
            s.tokens_per_s,
            s.ctx_on_gpu,
            s.ctx_spilled
        )?;
    }
    Ok(())
}

pub fn run(a: SimulateArgs) -> Result<()> {
    match a.command {
        Some(SimulateCommand::Sweep(s)) => return run_sweep(s),
        Some(SimulateCommand::Serve(s)) => return run_serve(s),
        None => {}
    }
    let g = a.grid.load()?;
    let (steps, skipped) = run_grid(&g, None)?;
    if let Some(out) = &a.out {
        write_csv(out, &step_rows(&steps)?)?;
    }
    let mut o = std::io::stdout().lock();
    if a.json {
        for s in &steps {
            writeln!(o, "{}", serde_json::to_string(s)?)?;
        }
    } else if steps.len() == 1 && g.points.len() == 1 {
        print_point(&mut o, &steps[0])?;
    } else {
        print_table(&mut o, &steps)?;
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
    write_csv(&a.out, &step_rows(&steps)?)?;
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

fn run_serve(a: ServeArgs) -> Result<()> {
    let model = presets::model(&a.model)?;
    let system = with_kv(presets::system(&a.system)?, a.kv.as_deref())?;
    let policies = policies(&a.policy)?;
    let ctxs = counts(&a.ctx, "ctx")?;
    let timers = timers(&system, &policies, &a.pim_model)?;
    let jobs: Vec<(Policy, usize)> = policies
        .iter()
        .flat_map(|&p| ctxs.iter().map(move |&c| (p, c)))
        .collect();
    let bar = indicatif::ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} contexts searched {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let results: Vec<_> = jobs
        .par_iter()
        .map(|&(p, c)| {
            let r = serve(&model, &system, p, c, timers.get(p));
            bar.inc(1);
            (p, c, r)
        })
        .collect();
    bar.finish_and_clear();
    // A point where not even one sequence fits is reported and skipped, as
    // `sweep` does; any other error ends the run.
    let mut points = Vec::new();
    for (p, c, r) in results {
        match r {
            Ok(point) => points.push(point),
            Err(e @ SystemError::Capacity { .. }) => {
                eprintln!("skipped (does not fit): {p} ctx {c}: {e}")
            }
            Err(e) => return Err(e).with_context(|| format!("{p}, ctx {c}")),
        }
    }
    if let Some(out) = &a.out {
        let rows = points.iter().map(serve_row).collect::<Result<Vec<_>>>()?;
        write_csv(out, &rows)?;
    }
    let mut o = std::io::stdout().lock();
    if a.json {
        for p in &points {
            writeln!(o, "{}", serde_json::to_string(p)?)?;
        }
        return Ok(());
    }
    writeln!(
        o,
        "{:<16} {:>8} {:>6} {:>9} {:>9} {:>11} {:>10} {:>8} {:>8} {:>8}",
        "policy",
        "ctx",
        "batch",
        "max",
        "max PIM",
        "tokens/s",
        "step ms",
        "link %",
        "on GPU",
        "ppl"
    )?;
    for p in &points {
        writeln!(
            o,
            "{:<16} {:>8} {:>6} {:>9} {:>9} {:>11.1} {:>10.3} {:>7.1}% {:>8} {:>8}",
            p.policy.to_string(),
            p.ctx,
            p.best_batch,
            p.max_batch,
            p.max_batch_in_pim
                .map_or("-".to_string(), |b| b.to_string()),
            p.tokens_per_s,
            p.step.total_ms,
            100.0 * p.step.link_share,
            p.step.ctx_on_gpu,
            ppl(p.ppl_delta)
        )?;
    }
    let mut shown: Vec<(Policy, &str)> = Vec::new();
    for p in &points {
        if !shown.contains(&(p.policy, p.kv.as_str())) {
            shown.push((p.policy, p.kv.as_str()));
            writeln!(o, "{} holds {}", p.policy, p.kv)?;
        }
    }
    writeln!(
        o,
        "ppl: measured perplexity against FP16 of the format (SmolLM2-135M, held-out text; docs/results/accuracy.md); - where not measured"
    )?;
    timers.print_prices(&mut o)?;
    Ok(())
}
