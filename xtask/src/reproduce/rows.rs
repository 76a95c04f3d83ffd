//! Typed rows of the CSV files `aqpim simulate sweep` and `aqpim simulate
//! serve` write: the columns are the JSON keys of `aqpim_system::Step` (and,
//! for `serve`, the serving fields before them). A missing or misspelt column
//! is an error naming the file; columns this crate does not read are ignored.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

/// The columns of one decode step that the summary and the plots read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StepRow {
    /// Model preset.
    pub model: String,
    /// Policy name (`gpu`, `offload`, `offload-overlap`, `attacc`, `aqpim`).
    pub policy: String,
    /// Tokens per sequence.
    pub ctx: usize,
    /// Sequences decoded together (for a serve row: the best batch).
    pub batch: usize,
    /// Linear layers on the GPU.
    pub linear_ms: f64,
    /// Building lookup tables on the GPU.
    pub table_ms: f64,
    /// Attention on the GPU.
    pub attention_ms: f64,
    /// Attention in PIM.
    pub pim_attention_ms: f64,
    /// Quantization in PIM.
    pub quantize_ms: f64,
    /// The GPU-PIM link.
    pub link_ms: f64,
    /// Kernel boundaries around PIM attention.
    pub sync_ms: f64,
    /// Host-link transfers.
    pub transfer_ms: f64,
    /// Time hidden by overlap.
    pub overlapped_ms: f64,
    /// The step.
    pub total_ms: f64,
    /// Tokens per second over the batch.
    pub tokens_per_s: f64,
    /// Host-link transfer / step.
    pub transfer_share: f64,
    /// Host-link transfer / (transfer + attention).
    pub transfer_share_of_attention: f64,
    /// GPU-PIM link / step.
    pub link_share: f64,
    /// KV cache of the batch as stored, bytes.
    pub kv_bytes: u64,
    /// Bytes of the PIM banks the cache occupies.
    pub pim_bytes_used: u64,
    /// Bytes of every bank of the PIM stacks.
    pub pim_capacity_bytes: u64,
    /// Tokens per sequence held in PIM.
    pub ctx_in_pim: usize,
    /// Tokens per sequence held in GPU memory (PIM policies).
    pub ctx_on_gpu: usize,
    /// Tokens per sequence spilled to host memory.
    pub ctx_spilled: usize,
    /// The PIM device of the policy (empty without PIM; absent in CSV files
    /// written before devices were per design).
    #[serde(default)]
    pub pim_device: String,
    /// PIM logic and buffers per DRAM die, mm^2.
    #[serde(default)]
    pub pim_area_mm2_per_die: f64,
    /// That area over the DRAM die's.
    #[serde(default)]
    pub pim_die_share: f64,
    /// System preset (absent in CSV files written before issue 23).
    #[serde(default)]
    pub system: String,
    /// The `--set` overrides the row ran with, `;`-separated (empty: none;
    /// absent in CSV files written before issue 27).
    #[serde(default)]
    pub overrides: String,
    /// The format the policy holds (canonical cache spec).
    #[serde(default)]
    pub kv: String,
    /// The format's measured perplexity delta, a fraction (empty: not
    /// measured).
    #[serde(default)]
    pub ppl_delta: Option<f64>,
    /// Bits per cached element, all counted.
    #[serde(default)]
    pub kv_bits_per_element: f64,
    /// Peak PIM power of a stack, W.
    #[serde(default)]
    pub pim_peak_power_w: f64,
    /// The stack's PIM power budget, W.
    #[serde(default)]
    pub pim_power_budget_w: f64,
}

impl StepRow {
    /// Whether the point is a what-if: part of a PIM policy's cache is held
    /// outside the stacks (in GPU memory or spilled to the host).
    pub fn outside_pim(&self) -> bool {
        self.ctx_spilled > 0 || self.ctx_on_gpu > 0
    }

    /// KV bytes per token per sequence, as stored.
    pub fn kv_bytes_per_token(&self) -> f64 {
        self.kv_bytes as f64 / (self.ctx as f64 * self.batch as f64)
    }
}

/// The serving fields of a `simulate serve` row.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ServeFields {
    /// The batch with the highest tokens/s.
    pub best_batch: usize,
    /// The largest batch that fits without host memory.
    pub max_batch: usize,
    /// PIM policies: the largest batch held entirely in the stacks.
    pub max_batch_in_pim: Option<usize>,
    /// Batches timed.
    pub batches_timed: usize,
}

/// One `simulate serve` row: the serving fields and the step at the best
/// batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeRow {
    /// The serving fields.
    pub serve: ServeFields,
    /// The step at `best_batch`.
    pub step: StepRow,
}

/// Every record of a CSV source, with its header.
fn records<R: std::io::Read>(
    mut r: csv::Reader<R>,
    what: &str,
) -> Result<(csv::StringRecord, Vec<csv::StringRecord>)> {
    let headers = r
        .headers()
        .with_context(|| format!("reading the header of {what}"))?
        .clone();
    let rows = r
        .records()
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("reading {what}"))?;
    Ok((headers, rows))
}

fn parse<T: for<'de> Deserialize<'de>>(
    headers: &csv::StringRecord,
    rows: &[csv::StringRecord],
    what: &str,
) -> Result<Vec<T>> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            r.deserialize(Some(headers))
                .with_context(|| format!("{what}, line {}", i + 2))
        })
        .collect()
}

/// Parses the rows of a `simulate sweep` CSV; `what` names the source in errors.
pub fn steps_from<R: std::io::Read>(source: R, what: &str) -> Result<Vec<StepRow>> {
    let (h, rows) = records(csv::Reader::from_reader(source), what)?;
    parse(&h, &rows, what)
}

/// Parses the rows of a `simulate serve` CSV; `what` names the source in errors.
pub fn serve_from<R: std::io::Read>(source: R, what: &str) -> Result<Vec<ServeRow>> {
    let (h, rows) = records(csv::Reader::from_reader(source), what)?;
    let serve: Vec<ServeFields> = parse(&h, &rows, what)?;
    let steps: Vec<StepRow> = parse(&h, &rows, what)?;
    Ok(serve
        .into_iter()
        .zip(steps)
        .map(|(serve, step)| ServeRow { serve, step })
        .collect())
}

fn open(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads a `simulate sweep` CSV.
pub fn read_steps(path: &Path) -> Result<Sweep> {
    Ok(Sweep(steps_from(open(path)?, &path.display().to_string())?))
}

/// Reads a `simulate serve` CSV.
pub fn read_serve(path: &Path) -> Result<Serve> {
    Ok(Serve(serve_from(open(path)?, &path.display().to_string())?))
}

/// The rows of one sweep, looked up by policy, context and batch.
pub struct Sweep(pub Vec<StepRow>);

impl Sweep {
    /// The row of `policy` at `ctx` and `batch`, if the sweep has it.
    pub fn get(&self, policy: &str, ctx: usize, batch: usize) -> Option<&StepRow> {
        self.0
            .iter()
            .find(|r| r.policy == policy && r.ctx == ctx && r.batch == batch)
    }

    /// The distinct contexts, ascending.
    pub fn ctxs(&self) -> Vec<usize> {
        distinct(self.0.iter().map(|r| r.ctx))
    }

    /// The distinct batches, ascending.
    pub fn batches(&self) -> Vec<usize> {
        distinct(self.0.iter().map(|r| r.batch))
    }

    /// Whether any row has this policy.
    pub fn has(&self, policy: &str) -> bool {
        self.0.iter().any(|r| r.policy == policy)
    }
}

/// The rows of one serve run, looked up by policy and context.
pub struct Serve(pub Vec<ServeRow>);

impl Serve {
    /// The row of `policy` at `ctx`.
    pub fn get(&self, policy: &str, ctx: usize) -> Option<&ServeRow> {
        self.0
            .iter()
            .find(|r| r.step.policy == policy && r.step.ctx == ctx)
    }

    /// The distinct contexts, ascending.
    pub fn ctxs(&self) -> Vec<usize> {
        distinct(self.0.iter().map(|r| r.step.ctx))
    }

    /// aqpim's tokens/s over attacc's at `ctx`, when both are present.
    pub fn ratio(&self, ctx: usize) -> Option<f64> {
        let a = self.get("attacc", ctx)?;
        let q = self.get("aqpim", ctx)?;
        Some(q.step.tokens_per_s / a.step.tokens_per_s)
    }
}

fn distinct(it: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut v: Vec<usize> = it.collect();
    v.sort_unstable();
    v.dedup();
    v
}
