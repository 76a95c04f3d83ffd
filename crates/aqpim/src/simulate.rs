//! `aqpim simulate`: the itemized latency of one decode step, for one point or
//! a grid of contexts, batches and policies; `aqpim simulate sweep` writes a
//! grid to CSV with a progress bar; `aqpim simulate serve` finds, per
//! context, the batch with the highest tokens/s that fits without host memory.
//!
//! `--set SECTION.KEY=VALUE` overrides a figure of the system or, under
//! `device.`, of its PIM device; every row records the overrides (`overrides`).
//! `sweep --shard I/N` runs 1/N of a grid; `simulate merge` joins the shards.
//!
//! JSON (`--json`) is one object per line; CSV columns are the JSON keys of
//! the same rows (`aqpim_system::Step`, and for `serve` the serving fields
//! before the step's), so the schema is written once, in the struct.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use aqpim_pim::Override;
use aqpim_system::presets::{self, ModelSpec, SystemSpec};
use aqpim_system::{decode_step_with, serve, Policy, ServePoint, Step, SystemError};
use aqpim_system::{PimMode, PimTimer, SimTimer};
use clap::{Args, Subcommand};
use rayon::prelude::*;
use serde_json::Value;

use crate::csv_rows::{write_csv, Shard};

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
    /// Join the CSV files of `sweep --shard I/N` (every I) into one file,
    /// rows in the grid's order: byte for byte the unsharded sweep's file.
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
struct SweepArgs {
    #[command(flatten)]
    grid: GridArgs,
    /// The CSV file to write (atomically). Its first column, `index`, is the
    /// point's place in the grid's order (policies, then batches, then
    /// contexts, each as listed).
    #[arg(long)]
    out: PathBuf,
    /// Run only shard I of N: the points whose index `i` has `i % N == I`
    /// (0/8 to 7/8 for a job array of 8; `simulate merge` joins the files).
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
}

#[derive(Debug, Args)]
struct MergeArgs {
    /// The merged CSV file to write (atomically).
    #[arg(long)]
    out: PathBuf,
    /// The shard files, in any order.
    #[arg(required = true, value_name = "SHARD.csv")]
    files: Vec<PathBuf>,
}

/// `--set`'s help, the same on every command that takes it.
const SET_HELP: &str = "Override a figure of the system preset, as if its TOML file said it \
(repeatable): pim.link_gbps=128, gpu.attn_gbps=3000, pim.codebooks=sequence, pim.kv=pq:dsub=4,nbits=8. \
With device., a figure of the PIM device of every policy of the run ([pim] device and \
attacc_device): device.pim.n_ccdab=6, device.units.mac.ops_per_cycle=16. The value is read \
as TOML (64, 64.0, true, \"x\"); a bare word is a string. Rows record the overrides \
(`overrides`, `;`-separated) and the system name carries them";

fn parse_override(s: &str) -> std::result::Result<Override, String> {
    s.parse()
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
    /// attacc, scalar-pim, aqpim. Default: the design the system is built
    /// for (h100: gpu, h100+host: offload, h100+attacc: attacc,
    /// h100+gpu-quant: gpu-quant, h100+scalar-pim: scalar-pim, h100+aqpim:
    /// aqpim), the same in simulate, sweep and serve.
    #[arg(long)]
    policy: Option<String>,
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
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = parse_override, help = SET_HELP)]
    set: Vec<Override>,
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
    /// attacc, scalar-pim, aqpim. Default: the design the system is built
    /// for (h100: gpu, h100+host: offload, h100+attacc: attacc,
    /// h100+gpu-quant: gpu-quant, h100+scalar-pim: scalar-pim, h100+aqpim:
    /// aqpim), the same in simulate, sweep and serve.
    #[arg(long)]
    policy: Option<String>,
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
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = parse_override, help = SET_HELP)]
    set: Vec<Override>,
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

/// The `--policy` list, or the system's own design when none is given.
fn policies(s: Option<&str>, system: &SystemSpec) -> Result<Vec<Policy>> {
    let Some(s) = s else {
        return Ok(vec![Policy::own(system)]);
    };
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
    /// The points to run, each with its index in the whole grid's order.
    points: Vec<(usize, Policy, usize, usize)>,
    /// Points in the whole grid (a shard runs fewer).
    total: usize,
    /// The `--set` list, `;`-separated, as rows record it.
    overrides: String,
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

/// The system preset or file with the `--set` overrides, then `--kv`.
fn load_system(name: &str, set: &[Override], kv: Option<&str>) -> Result<SystemSpec> {
    let system = presets::system_with(name, set).with_context(|| {
        if set.is_empty() {
            "--system".to_string()
        } else {
            format!("--system with --set {}", Override::list(set))
        }
    })?;
    with_kv(system, kv)
}

impl GridArgs {
    /// The grid, or the points of one shard of it.
    fn load(&self, shard: Option<Shard>) -> Result<Grid> {
        // clap enforces both unless a subcommand is given, which has its own.
        let model = presets::model(self.model.as_deref().unwrap_or_default())?;
        let system = load_system(
            self.system.as_deref().unwrap_or_default(),
            &self.set,
            self.kv.as_deref(),
        )?;
        let policies = policies(self.policy.as_deref(), &system)?;
        let ctxs = counts(&self.ctx, "ctx")?;
        let batches = counts(&self.batch, "batch")?;
        let timers = timers(&system, &policies, &self.pim_model)?;
        let mut points = Vec::new();
        for &p in &policies {
            for &b in &batches {
                for &c in &ctxs {
                    points.push((points.len(), p, c, b));
                }
            }
        }
        let total = points.len();
        if let Some(shard) = shard {
            points.retain(|&(i, ..)| shard.holds(i));
        }
        Ok(Grid {
            model,
            system,
            points,
            total,
            overrides: Override::list(&self.set),
            timers,
        })
    }
}

/// The steps of a grid's points, each with its index in the grid, and a
/// line for each point skipped (does not fit).
type GridRun = (Vec<(usize, Step)>, Vec<String>);

/// Runs every point (in parallel), each step with its index in the grid;
/// points that do not fit are skipped with a message when the grid has more
/// than one point, an error otherwise.
fn run_grid(g: &Grid, bar: Option<&indicatif::ProgressBar>) -> Result<GridRun> {
    let single = g.total == 1;
    let results: Vec<_> = g
        .points
        .par_iter()
        .map(|&(i, p, c, b)| {
            let r = decode_step_with(&g.model, &g.system, p, c, b, g.timers.get(p));
            if let Some(bar) = bar {
                bar.inc(1);
            }
            (i, p, c, b, r)
        })
        .collect();
    let mut steps = Vec::new();
    let mut skipped = Vec::new();
    for (i, p, c, b, r) in results {
        match r {
            Ok(step) => steps.push((i, step)),
            Err(e @ SystemError::Capacity { .. }) if !single => {
                skipped.push(format!("{p} ctx {c} batch {b}: {e}"))
            }
            Err(e) => return Err(e).with_context(|| format!("{p}, ctx {c}, batch {b}")),
        }
    }
    Ok((steps, skipped))
}

/// A step as one row: its fields, then `overrides` (the `--set` list).
fn step_row(s: &Step, overrides: &str) -> Result<Value> {
    let mut v = serde_json::to_value(s)?;
    if let Value::Object(m) = &mut v {
        m.insert("overrides".into(), overrides.into());
    }
    Ok(v)
}

/// A sweep point as one row: its `index` in the grid, then [`step_row`].
fn sweep_row(index: usize, s: &Step, overrides: &str) -> Result<Value> {
    let mut row = serde_json::Map::new();
    row.insert("index".into(), index.into());
    if let Value::Object(m) = step_row(s, overrides)? {
        row.extend(m);
    }
    Ok(Value::Object(row))
}

/// A serving point as one flat row: the serving fields, then the step's
/// (whose `batch` is the best batch), then `overrides`.
fn serve_row(p: &ServePoint, overrides: &str) -> Result<Value> {
    let mut row = serde_json::Map::new();
    row.insert("best_batch".into(), p.best_batch.into());
    row.insert("max_batch".into(), p.max_batch.into());
    row.insert(
        "max_batch_in_pim".into(),
        p.max_batch_in_pim.map_or(Value::Null, Value::from),
    );
    row.insert("batches_timed".into(), p.batches_timed.into());
    if let Value::Object(step) = step_row(&p.step, overrides)? {
        row.extend(step);
    }
    Ok(Value::Object(row))
}

/// A serving point as its JSON line: the point, then `overrides`.
fn serve_json(p: &ServePoint, overrides: &str) -> Result<Value> {
    let mut v = serde_json::to_value(p)?;
    if let Value::Object(m) = &mut v {
        m.insert("overrides".into(), overrides.into());
    }
    Ok(v)
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
        Some(SimulateCommand::Merge(m)) => {
            let n = crate::csv_rows::merge(&m.out, &m.files)?;
            eprintln!(
                "{n} points from {} files written to {}",
                m.files.len(),
                m.out.display()
            );
            return Ok(());
        }
        None => {}
    }
    let g = a.grid.load(None)?;
    let (steps, skipped) = run_grid(&g, None)?;
    let rows = steps
        .iter()
        .map(|(_, s)| step_row(s, &g.overrides))
        .collect::<Result<Vec<_>>>()?;
    if let Some(out) = &a.out {
        write_csv(out, &rows)?;
    }
    let steps: Vec<Step> = steps.into_iter().map(|(_, s)| s).collect();
    let mut o = std::io::stdout().lock();
    if a.json {
        for r in &rows {
            writeln!(o, "{}", serde_json::to_string(r)?)?;
        }
    } else if steps.len() == 1 && g.points.len() == 1 {
        print_point(&mut o, &steps[0])?;
    } else {
        print_table(&mut o, &steps)?;
    }
    if !a.json && !g.overrides.is_empty() {
        writeln!(o, "overrides: {}", g.overrides)?;
    }
    for s in &skipped {
        eprintln!("skipped (does not fit): {s}");
    }
    Ok(())
}

fn run_sweep(a: SweepArgs) -> Result<()> {
    let g = a.grid.load(a.shard)?;
    let bar = indicatif::ProgressBar::new(g.points.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} points, {elapsed} elapsed, ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (steps, skipped) = run_grid(&g, Some(&bar))?;
    bar.finish_and_clear();
    let rows = steps
        .iter()
        .map(|(i, s)| sweep_row(*i, s, &g.overrides))
        .collect::<Result<Vec<_>>>()?;
    write_csv(&a.out, &rows)?;
    let of = a.shard.map_or(String::new(), |s| {
        format!(
            " (shard {}/{}: {} of the grid's {} points)",
            s.index,
            s.count,
            g.points.len(),
            g.total
        )
    });
    eprintln!(
        "{} points written to {}{of}, {} skipped",
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
    let system = load_system(&a.system, &a.set, a.kv.as_deref())?;
    let overrides = Override::list(&a.set);
    let policies = policies(a.policy.as_deref(), &system)?;
    let ctxs = counts(&a.ctx, "ctx")?;
    let timers = timers(&system, &policies, &a.pim_model)?;
    let jobs: Vec<(Policy, usize)> = policies
        .iter()
        .flat_map(|&p| ctxs.iter().map(move |&c| (p, c)))
        .collect();
    let bar = indicatif::ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} contexts searched, {elapsed} elapsed, ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // Redrawn every second: one context's search can take tens of seconds.
    bar.enable_steady_tick(std::time::Duration::from_secs(1));
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
        let rows = points
            .iter()
            .map(|p| serve_row(p, &overrides))
            .collect::<Result<Vec<_>>>()?;
        write_csv(out, &rows)?;
    }
    let mut o = std::io::stdout().lock();
    if a.json {
        for p in &points {
            writeln!(o, "{}", serde_json::to_string(&serve_json(p, &overrides)?)?)?;
        }
        return Ok(());
    }
    // The ratio column when attacc ran at a context: each policy's tokens/s
    // over attacc's there.
    let attacc = |ctx: usize| {
        points
            .iter()
            .find(|q| q.policy == Policy::Attacc && q.ctx == ctx)
            .map(|q| q.tokens_per_s)
    };
    let ratio = points.iter().any(|p| p.policy == Policy::Attacc) && points.len() > 1;
    writeln!(
        o,
        "{:<16} {:>8} {:>6} {:>9} {:>9} {:>11} {:>10} {:>8} {:>13} {:>8}{}",
        "policy",
        "ctx",
        "batch",
        "max batch",
        "in PIM",
        "tokens/s",
        "step ms",
        "link %",
        "on GPU tok/seq",
        "ppl",
        if ratio { "  vs attacc" } else { "" }
    )?;
    for p in &points {
        let vs = match (ratio, attacc(p.ctx)) {
            (true, Some(a)) => format!("  {:>8.2}x", p.tokens_per_s / a),
            (true, None) => format!("  {:>9}", "-"),
            _ => String::new(),
        };
        writeln!(
            o,
            "{:<16} {:>8} {:>6} {:>9} {:>9} {:>11.1} {:>10.3} {:>7.1}% {:>13} {:>8}{vs}",
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
    if !overrides.is_empty() {
        writeln!(o, "overrides: {overrides}")?;
    }
    timers.print_prices(&mut o)?;
    Ok(())
}
