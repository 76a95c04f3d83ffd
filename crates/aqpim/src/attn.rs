//! `aqpim attn ...`: decode-attention kernels on real-sized caches.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use aqpim_attn::reference::{attention_f64, relative_error};
use aqpim_kvcache::{build, KvShape, KvSpec};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::args::{count, ShapeArgs};
use crate::limits;

#[derive(Debug, Subcommand)]
pub enum AttnCommand {
    /// Time dense FP16 attention against attention on PQ codes for one decode step of one layer.
    Bench(BenchArgs),
    /// Run the PIM programs of one decode step's attention (every layer, every head) in the simulator.
    Sim(SimArgs),
}

#[derive(Debug, Args)]
pub struct SimArgs {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Sequences decoded together (K/M suffixes).
    #[arg(long, default_value = "1", value_parser = count)]
    batch: usize,
    /// Tokens per sequence (K/M suffixes: 32K = 32768); for `pq:`, the
    /// encoded tokens are these less the spec's FP16 sinks and window.
    #[arg(long, value_parser = count)]
    ctx: usize,
    /// Device preset (crates/aqpim-pim/presets) or TOML file. Default: each
    /// design's own device, `hbm3-attacc-5.2` for `fp16` (AttAcc's units)
    /// and `hbm3-aqpim-5.2` for `pq:` (AQPIM's units).
    #[arg(long, value_name = "NAME|FILE")]
    device: Option<String>,
    /// What the banks hold: `fp16` (AttAcc) or a `pq:` spec (AQPIM; 4- or
    /// 8-bit codes; its sinks and window are FP16 tokens beside the codes).
    #[arg(long, value_name = "SPEC", default_value = "pq:dsub=4,nbits=8")]
    kv: String,
    /// PQ: include one in-memory quantization flush per cache (a block of one token per bank).
    #[arg(long)]
    quantize: bool,
    /// Compute every instruction's data too (slow); timing is identical.
    #[arg(long)]
    functional: bool,
    /// Print one JSON object on one line.
    #[arg(long)]
    json: bool,
    /// Also print time, commands, bytes and energy per phase of the kernel (in JSON: `phases`).
    #[arg(long)]
    breakdown: bool,
    /// Write one layer's lowered programs as text for `aqpim sim run` into DIR.
    #[arg(long, value_name = "DIR")]
    dump: Option<std::path::PathBuf>,
    /// Override a figure of the device (repeatable), as if its TOML file
    /// said it: device.pim.n_ccdab=6, device.units.mac.ops_per_cycle=16
    /// (the `device.` prefix as in `simulate --set`). The value is read as
    /// TOML (64, 64.0, true, "x"); a bare word is a string.
    #[arg(long = "set", value_name = "device.KEY=VALUE", value_parser = device_override)]
    set: Vec<aqpim_pim::Override>,
}

/// A `--set device.KEY=VALUE`, with `device.` removed.
fn device_override(s: &str) -> std::result::Result<aqpim_pim::Override, String> {
    let o: aqpim_pim::Override = s.parse()?;
    o.strip_prefix("device").ok_or_else(|| {
        format!(
            "`{}`: attn sim has no system; only device.KEY=VALUE overrides apply (device.pim.n_ccdab=6)",
            limits::cut(&o.key)
        )
    })
}

#[derive(Debug, Serialize)]
struct SimReport {
    model: String,
    device: String,
    /// The `--set` list (`device.KEY=VALUE`, `;`-separated; empty for none).
    overrides: String,
    /// The cache spec, canonical (`fp16` for the dense cache).
    kv: String,
    /// `fp16` or `pq`.
    kind: &'static str,
    layers: usize,
    kv_heads: usize,
    q_heads: usize,
    head_dim: usize,
    batch: usize,
    /// Tokens per sequence.
    ctx: usize,
    /// Of `ctx`, the tokens held as codes (all of them for `fp16`).
    encoded_tokens: usize,
    /// Of `ctx`, the FP16 sink, window and outlier tokens beside the codes.
    fp_tokens: usize,
    quantize: bool,
    mode: &'static str,
    /// Layers run one after another: the step's attention.
    cycles: u64,
    time_ms: f64,
    energy_uj: f64,
    internal_bytes: u64,
    external_bytes: u64,
    buffer_die_bytes: u64,
    commands: u64,
    channels_used: usize,
    rows_per_bank_per_layer: usize,
    /// The device's PIM area per DRAM die and peak power (`Device::area`,
    /// `Device::power`).
    #[serde(flatten)]
    price: crate::price::DevicePrice,
    /// Wall-clock seconds the simulation took.
    wall_s: f64,
    /// Per phase, summed over layers (`--breakdown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    phases: Option<Vec<crate::attn_inspect::PhaseRow>>,
}

impl SimReport {
    /// The report of `attn sim` before any layer runs: what is simulated,
    /// with every measured total at zero.
    fn empty(
        a: &SimArgs,
        shape: &crate::args::Shape,
        spec: &KvSpec,
        kind: aqpim_attn::pim::PimKind,
        device: &aqpim_pim::Device,
        (encoded, fp_tokens, rows): (usize, usize, usize),
    ) -> Self {
        use aqpim_attn::pim::PimKind;
        let (layers, kv_heads, head_dim) = (shape.layers, shape.kv_heads, shape.head_dim);
        SimReport {
            model: shape.name.clone(),
            device: device.name.clone(),
            overrides: a
                .set
                .iter()
                .map(|o| format!("device.{o}"))
                .collect::<Vec<_>>()
                .join(";"),
            kv: crate::args::kv_name(spec),
            kind: match kind {
                PimKind::Fp16 => "fp16",
                PimKind::Pq { .. } => "pq",
                PimKind::Scalar(_) => "scalar",
            },
            layers,
            kv_heads,
            q_heads: shape.q_heads,
            head_dim,
            batch: a.batch,
            ctx: a.ctx,
            encoded_tokens: encoded,
            fp_tokens,
            quantize: a.quantize,
            mode: if a.functional {
                "functional"
            } else {
                "timing-only"
            },
            cycles: 0,
            time_ms: 0.0,
            energy_uj: 0.0,
            internal_bytes: 0,
            external_bytes: 0,
            buffer_die_bytes: 0,
            commands: 0,
            channels_used: 0,
            rows_per_bank_per_layer: rows,
            price: crate::price::DevicePrice::of(device),
            wall_s: 0.0,
            phases: None,
        }
    }
}

fn sim(a: &SimArgs) -> Result<SimReport> {
    use aqpim_attn::pim::{layer_rows_per_bank, LayerJob, PimKind};
    use aqpim_kvcache::limits::{MAX_CTX, MAX_HEAD_DIM, MAX_KV_HEADS, MAX_LAYERS};
    let shape = a.shape.resolve(None)?;
    let (layers, kv_heads, head_dim) = (shape.layers, shape.kv_heads, shape.head_dim);
    limits::in_range("layers of the model", layers, MAX_LAYERS)?;
    limits::in_range("KV heads of the model", kv_heads, MAX_KV_HEADS)?;
    limits::in_range("head size of the model", head_dim, MAX_HEAD_DIM)?;
    limits::in_range("--batch", a.batch, limits::MAX_BATCH)?;
    limits::in_range(
        "query heads of the model",
        shape.q_heads,
        MAX_KV_HEADS * MAX_KV_HEADS,
    )?;
    if a.ctx > MAX_CTX {
        bail!("--ctx {} is more than the limit of {MAX_CTX}", a.ctx);
    }
    let spec: KvSpec =
        a.kv.parse()
            .with_context(|| format!("--kv `{}`", limits::cut(&a.kv)))?;
    if !matches!(spec, KvSpec::Dense) {
        spec.validate(&KvShape::with_query_heads(
            1,
            kv_heads,
            shape.q_heads,
            head_dim,
        )?)?;
    }
    let bank = aqpim_attn::pim::BankFormat::of(&spec, head_dim, a.ctx)
        .and_then(|b| b.require_column_bits().map(|()| b))
        .with_context(|| format!("--kv {spec}"))?;
    let (kind, fp_tokens, encoded) = (bank.kind, bank.fp_tokens, bank.encoded);
    // At most MAX_BATCH x MAX_KV_HEADS = 2^22 heads: no overflow.
    let heads = a.batch * kv_heads;
    let default_device = match kind {
        PimKind::Fp16 => "hbm3-attacc-5.2",
        PimKind::Pq { .. } => "hbm3-aqpim-5.2",
        PimKind::Scalar(_) => "hbm3-pimba-5.2",
    };
    let device = crate::args::device_spec(a.device.as_deref().unwrap_or(default_device), &a.set)?
        .resolve()?;
    let job = LayerJob {
        kind,
        head_dim,
        heads,
        kv_heads,
        group: shape.q_heads / kv_heads,
        ctx: encoded,
        fp_tokens,
        quantize: a.quantize,
        codebooks: aqpim_kvcache::CodebookScope::Model,
        placement: aqpim_attn::pim::Placement::Spread,
    };
    let rows = layer_rows_per_bank(&device, &job)?;
    let needed = rows.saturating_mul(layers);
    if needed > device.org.rows {
        bail!(
            "{layers} layers need {needed} rows per bank; the device has {} ({} over)",
            device.org.rows,
            needed - device.org.rows
        );
    }
    let mode = if a.functional {
        aqpim_pim::Mode::Functional
    } else {
        aqpim_pim::Mode::TimingOnly
    };
    let bar = indicatif::ProgressBar::new(layers as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("simulating layers [{bar:40}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let mut report = SimReport::empty(a, &shape, &spec, kind, &device, (encoded, fp_tokens, rows));
    if let Some(dir) = &a.dump {
        crate::attn_inspect::dump(&device, &job, dir)?;
    }
    let mut inspector = crate::attn_inspect::Inspector::new(a.breakdown);
    // Every layer's programs run (layers are identical in shape, and each
    // is simulated in full: no sampling, no scaling).
    for _ in 0..layers {
        let c = inspector.layer(&device, &job, mode)?;
        report.cycles += c.cycles;
        report.time_ms += c.ns / 1e6;
        report.energy_uj += c.energy_pj / 1e6;
        report.internal_bytes += c.bytes_internal;
        report.external_bytes += c.bytes_external;
        report.buffer_die_bytes += c.bytes_buffer_die;
        report.commands += c.commands;
        report.channels_used = c.channels_used;
        bar.inc(1);
    }
    bar.finish_and_clear();
    report.wall_s = start.elapsed().as_secs_f64();
    report.phases = inspector.rows();
    Ok(report)
}

impl SimReport {
    fn print_table(&self) {
        println!(
            "{:<22} {} ({} layers, {} KV heads x {}, {} query heads)",
            "model", self.model, self.layers, self.kv_heads, self.head_dim, self.q_heads
        );
        println!(
            "{:<22} {} ({} tokens per sequence: {} encoded, {} fp16)",
            "cache",
            self.kv,
            self.ctx,
            if self.kind == "pq" {
                self.encoded_tokens
            } else {
                0
            },
            if self.kind == "pq" {
                self.fp_tokens
            } else {
                self.ctx
            }
        );
        println!(
            "{:<22} {}, batch {}, {}{}",
            "device",
            self.device,
            self.batch,
            self.mode,
            if self.quantize {
                ", one quantization flush"
            } else {
                ""
            }
        );
        if !self.overrides.is_empty() {
            println!("{:<22} {}", "overrides", self.overrides);
        }
        println!(
            "{:<22} {:>14.3} ms ({} cycles)",
            "time", self.time_ms, self.cycles
        );
        println!("{:<22} {:>14.1} uJ", "energy", self.energy_uj);
        println!("{:<22} {:>14}", "commands", self.commands);
        for (name, b) in [
            ("bytes inside banks", self.internal_bytes),
            ("bytes over interface", self.external_bytes),
            ("bytes to buffer die", self.buffer_die_bytes),
        ] {
            println!("{:<22} {:>14} ({:.3} GB)", name, b, b as f64 / 1e9);
        }
        println!(
            "{:<22} {:>14} rows per bank per layer, {} channels",
            "placement", self.rows_per_bank_per_layer, self.channels_used
        );
        for line in self.price.lines() {
            println!("{:<22} {line}", "");
        }
        println!("{:<22} {:>14.2} s", "wall", self.wall_s);
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Context length: tokens in the cache (K/M suffixes).
    #[arg(long, default_value = "32K", value_parser = count)]
    ctx: usize,
    /// The compressed cache timed against fp16: a `pq:` spec (codebooks are
    /// shared by every head, `share=all`, and trained with `iters=10` unless
    /// the spec says otherwise).
    #[arg(
        long,
        value_name = "SPEC",
        default_value = "pq:dsub=4,nbits=8,sinks=4,window=128"
    )]
    kv: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed repetitions of each kernel (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Print one JSON object on one line instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `aqpim attn bench` measures.
#[derive(Debug, Serialize)]
struct BenchReport {
    model: String,
    kv: String,
    /// The keys where `attn bench`'s expansion of `--kv` differs from every
    /// other command's (`kv stats`, `attn sim`, `eval ppl`), each as
    /// `key=bench (elsewhere: other)`; empty when none.
    kv_differs: String,
    ctx: usize,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    threads: usize,
    reps: usize,
    encoded_tokens: usize,
    /// Median time of the fp16 kernel, one layer, all heads.
    fp16_ms: f64,
    /// Median time of the PQ kernel, one layer, all heads.
    pq_ms: f64,
    speedup: f64,
    /// Query-head x encoded-token codes scored and accumulated per second by the PQ kernel.
    codes_per_s: f64,
    /// Bytes of the PQ cache (codes, FP16 sinks and window) read per second.
    bytes_per_s: f64,
    /// Lookup-table scoring alone, one thread: codes per second (with
    /// quantized tables: transposing the codes and scanning them).
    score_codes_per_s_per_thread: f64,
    /// The key-score tables of the PQ kernel (`--score-tables`).
    score_tables: String,
    /// PQ output with exact tables against f64 attention on the decoded
    /// cache, worst head.
    rel_err_vs_decoded: f64,
    /// PQ output with the timed tables against the same kernel with exact
    /// tables, worst head: the error of quantized tables (0 for exact ones).
    rel_err_vs_exact_tables: f64,
    /// PQ output against f64 attention on the uncompressed cache, mean over heads (the PQ approximation itself).
    rel_err_vs_fp16: f64,
}

impl BenchReport {
    fn print_table(&self) {
        println!(
            "{:<22} {} (one layer: {} query heads, {} KV heads x {})",
            "model", self.model, self.q_heads, self.kv_heads, self.head_dim
        );
        println!(
            "{:<22} {} ({} tokens, {} encoded)",
            "cache", self.kv, self.ctx, self.encoded_tokens
        );
        if !self.kv_differs.is_empty() {
            println!(
                "{:<22} bench defaults {} (give them in --kv to match)",
                "", self.kv_differs
            );
        }
        println!(
            "{:<22} {} threads, median of {} runs",
            "run", self.threads, self.reps
        );
        println!("{:<22} {:>12.3} ms", "fp16 kernel", self.fp16_ms);
        println!("{:<22} {:>12.3} ms", "pq kernel", self.pq_ms);
        println!("{:<22} {:>12.2}x", "speedup", self.speedup);
        println!(
            "{:<22} {:>12.1} M codes/s ({:.2} GB/s of cache read)",
            "pq throughput",
            self.codes_per_s / 1e6,
            self.bytes_per_s / 1e9
        );
        println!(
            "{:<22} {:>12.1} M codes/s per thread",
            "scoring alone",
            self.score_codes_per_s_per_thread / 1e6
        );
        println!(
            "{:<22} {:>12.2e} (worst head, exact tables against the decoded cache)",
            "relative error", self.rel_err_vs_decoded
        );
        println!(
            "{:<22} {:>12.2e} (worst head, {} tables against exact ones)",
            "", self.rel_err_vs_exact_tables, self.score_tables
        );
        println!(
            "{:<22} {:>12.4} (mean over heads, against fp16: the PQ error)",
            "", self.rel_err_vs_fp16
        );
    }
}

pub fn run(cmd: AttnCommand) -> Result<()> {
    match cmd {
        AttnCommand::Sim(args) => {
            let report = sim(&args)?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                report.print_table();
                if let Some(rows) = &report.phases {
                    crate::attn_inspect::print_phases(rows);
                }
            }
            Ok(())
        }
        AttnCommand::Bench(args) => {
            let report = limits::thread_pool(args.threads)?.install(|| bench(&args))?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                report.print_table();
            }
            Ok(())
        }
    }
}

fn median_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Median wall times (ms) of `a` and `b` over `reps` repetitions each, run
/// alternately after one warm-up call of each.
fn interleaved_medians_ms(
    reps: usize,
    mut a: impl FnMut() -> Result<()>,
    mut b: impl FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    a()?;
    b()?;
    let mut ta = Vec::with_capacity(reps);
    let mut tb = Vec::with_capacity(reps);
    let time = |f: &mut dyn FnMut() -> Result<()>, out: &mut Vec<f64>| -> Result<()> {
        let t = Instant::now();
        f()?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
        Ok(())
    };
    for _ in 0..reps.max(1) {
        time(&mut a, &mut ta)?;
        time(&mut b, &mut tb)?;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(ta), median(tb)))
}

/// Scores `codes` with a quantized table as the kernel does: 64 tokens at a
/// time, from the store's transposed blocks (the rows past them
/// transposed here), then scanned.
fn scan_quantized(
    q: &aqpim_pq::QuantLut,
    codes: aqpim_kvcache::Codes<'_>,
    scores: &mut [f32],
) -> Result<()> {
    use aqpim_pq::SCAN_BLOCK;
    let (m, width) = (q.num_subspaces(), codes.width());
    let rb = width.row_bytes(m);
    let cached = match codes.lane_nibbles() {
        true => 0,
        false => codes.block_tokens(),
    };
    let mut block = vec![0u8; m * SCAN_BLOCK];
    let mut tmp = [0f32; SCAN_BLOCK];
    for (i, s) in scores.chunks_mut(SCAN_BLOCK).enumerate() {
        let t0 = i * SCAN_BLOCK;
        let blk = if t0 < cached {
            &codes.blocks()[t0 * m..(t0 + SCAN_BLOCK) * m]
        } else {
            let rows = &codes.data()[t0 * rb..(t0 + s.len()) * rb];
            aqpim_pq::transpose_block(rows, width, m, s.len(), &mut block)?;
            &block
        };
        q.scan_block(blk, &mut tmp)?;
        s.copy_from_slice(&tmp[..s.len()]);
    }
    Ok(())
}

/// The `--kv` spec `attn bench` times, with the keys it sets where the
/// user did not (one codebook for every head, 10 iterations: set-up stays
/// short and the kernel's work does not depend on them), and a note of each.
fn bench_spec(kv: &str) -> Result<(KvSpec, Vec<String>)> {
    let mut differs: Vec<String> = Vec::new();
    let spec = match kv
        .parse::<KvSpec>()
        .with_context(|| format!("--kv `{}`", limits::cut(kv)))?
    {
        KvSpec::Pq(mut p) => {
            if !kv.contains("share=") {
                let elsewhere = p.training.share.name();
                differs.push(format!("share=all (elsewhere: {elsewhere})"));
                p.training.share = aqpim_kvcache::CodebookSharing::All;
            }
            if !kv.contains("iters=") {
                differs.push(format!("iters=10 (elsewhere: {})", p.training.iterations));
                p.training.iterations = 10;
            }
            KvSpec::Pq(p)
        }
        other => bail!("--kv {other}: `attn bench` times a `pq:` cache against fp16"),
    };
    Ok((spec, differs))
}

/// Checks `attn bench`'s outputs: PQ with exact tables against f64
/// attention on the decoded cache (must be float rounding), the timed tables
/// against the exact ones (the table quantization), and the timed output
/// against the uncompressed cache (the PQ error). Returns the three errors:
/// worst against the decoded cache, worst against exact tables, mean
/// against fp16.
fn check_bench_outputs(
    shape: KvShape,
    dense: &dyn aqpim_kvcache::KvStore,
    pq: &dyn aqpim_kvcache::KvStore,
    queries: &[f32],
    out_dense: &[f32],
    out_pq: &[f32],
) -> Result<(f64, f64, f64)> {
    let (h, d) = (shape.num_q_heads(), shape.head_dim());
    let pq_store = pq.as_pq().context("PQ cache")?;
    let tables = aqpim_attn::score_tables();
    let scale = 1.0 / (d as f64).sqrt();
    let (mut worst, mut worst_tables, mut fp_err) = (0f64, 0f64, 0f64);
    let mut out_exact = vec![0f32; h * d];
    aqpim_attn::attend_pq_with(
        pq_store,
        0,
        queries,
        &mut out_exact,
        aqpim_attn::ScoreTables::Exact,
    )?;
    for qh in 0..h {
        let kv = pq.reconstruct(0, shape.kv_head_of(qh))?;
        let q = &queries[qh * d..(qh + 1) * d];
        let exact_tables = &out_exact[qh * d..(qh + 1) * d];
        worst = worst.max(relative_error(
            exact_tables,
            &attention_f64(q, &kv.keys, &kv.values, scale),
        ));
        let exact64: Vec<f64> = exact_tables.iter().map(|&v| f64::from(v)).collect();
        worst_tables = worst_tables.max(relative_error(&out_pq[qh * d..(qh + 1) * d], &exact64));
        let exact = dense.reconstruct(0, shape.kv_head_of(qh))?;
        let want = attention_f64(q, &exact.keys, &exact.values, scale);
        fp_err += relative_error(&out_pq[qh * d..(qh + 1) * d], &want) / h as f64;
        if qh == 0 {
            let dense_err = relative_error(&out_dense[..d], &want);
            if dense_err > 1e-4 {
                bail!("the dense kernel disagrees with the f64 reference (relative error {dense_err:e})");
            }
        }
    }
    if worst > 1e-4 {
        bail!("the PQ kernel disagrees with attention on the decoded cache (relative error {worst:e})");
    }
    // Quantized tables move each score by at most M s / 2 (docs/results/
    // attn-cpu.md); on these synthetic caches that is a relative error of
    // about 1e-3 with one-byte entries. Ten times that is a wrong kernel.
    if worst_tables > 1e-2 {
        bail!("the PQ kernel with {tables} tables disagrees with exact tables (relative error {worst_tables:e})");
    }
    Ok((worst, worst_tables, fp_err))
}

/// Scoring alone, one thread: codes per second of the lookup-table scan
/// over `view`'s key codes with the query `q` (the median of `reps`, at
/// least 5). Zero when the head has no encoded tokens.
fn score_rate(
    view: &aqpim_kvcache::PqHeadView<'_>,
    q: &[f32],
    tables: aqpim_attn::ScoreTables,
    reps: usize,
) -> Result<f64> {
    let encoded = view.key_codes.tokens();
    if encoded == 0 {
        return Ok(0.0);
    }
    let kpq = view.key_codebook.context("codebook")?;
    let lut = kpq.inner_product_table(q)?;
    let mut scores = vec![0f32; encoded];
    let data = view.key_codes.data();
    let width = view.key_codes.width();
    // The kernel scans quantized tables on one-byte and 4-bit codes only.
    let quant = match (tables.precision(), width) {
        (Some(p), aqpim_pq::CodeWidth::Byte | aqpim_pq::CodeWidth::Nibble) => {
            Some(aqpim_pq::QuantLut::new(&lut, p)?)
        }
        _ => None,
    };
    let ms = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()?
        .install(|| {
            median_ms(reps.max(5), || {
                match (quant.as_ref(), width) {
                    (Some(q), _) => scan_quantized(q, view.key_codes, &mut scores)?,
                    (None, aqpim_pq::CodeWidth::Byte) => lut.scan_u8(data, &mut scores)?,
                    (None, aqpim_pq::CodeWidth::Nibble) => lut.scan_packed4(data, &mut scores)?,
                    (None, aqpim_pq::CodeWidth::Crumb) => lut.scan_packed2(data, &mut scores)?,
                }
                Ok(())
            })
        })?;
    Ok(encoded as f64 / (ms / 1e3))
}

fn bench(a: &BenchArgs) -> Result<BenchReport> {
    let model = a.shape.resolve(Some("llama2-7b"))?;
    // One layer is timed: the model's layer count does not enter.
    let shape = KvShape::with_query_heads(1, model.kv_heads, model.q_heads, model.head_dim)?;
    let (g, d, h, ctx) = (model.kv_heads, model.head_dim, model.q_heads, a.ctx);
    // Every size is checked before anything is generated or allocated.
    limits::in_range("--ctx", ctx, aqpim_kvcache::limits::MAX_CTX)?;
    limits::in_range("--reps", a.reps, limits::MAX_REPS)?;
    aqpim_kvcache::limits::product(
        "KV heads x --ctx x head size",
        &[g, ctx, d],
        aqpim_kvcache::limits::MAX_BENCH_ELEMENTS,
    )?;
    let (spec, differs) = bench_spec(&a.kv)?;
    spec.validate(&shape)?;
    let bar =
        indicatif::ProgressBar::new_spinner().with_message("generating KV-like keys and values");
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let keys: Vec<f32> = aqpim_pq::synth::kv_like(g * ctx, d, 1)
        .iter()
        .map(|v| v * 0.15)
        .collect();
    let values = aqpim_pq::synth::kv_like(g * ctx, d, 2);

    bar.set_message("filling the fp16 cache");
    let mut dense = build(shape, &KvSpec::Dense)?;
    dense.reserve(ctx);
    dense.prefill(0, &keys, &values)?;

    bar.set_message("training codebooks and encoding the PQ cache");
    let mut pq = build(shape, &spec)?;
    pq.reserve(ctx);
    pq.prefill(0, &keys, &values)?;
    drop((keys, values));
    bar.finish_and_clear();

    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let queries: Vec<f32> = (0..h * d)
        .map(|_| {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            (rng_state % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    let mut out_dense = vec![0f32; h * d];
    let mut out_pq = vec![0f32; h * d];
    // Dense and PQ repetitions alternate, so that a change in what else the
    // machine is doing (memory traffic from other tenants, clock) weighs on
    // both medians alike.
    let (dense_ms, pq_ms) = interleaved_medians_ms(
        a.reps,
        || {
            Ok(aqpim_attn::attend(
                dense.as_ref(),
                0,
                &queries,
                &mut out_dense,
            )?)
        },
        || Ok(aqpim_attn::attend(pq.as_ref(), 0, &queries, &mut out_pq)?),
    )?;

    let (worst, worst_tables, fp_err) = check_bench_outputs(
        shape,
        dense.as_ref(),
        pq.as_ref(),
        &queries,
        &out_dense,
        &out_pq,
    )?;
    let pq_store = pq.as_pq().context("PQ cache")?;
    let tables = aqpim_attn::score_tables();

    // Scoring alone, one thread: the lookup-table scan over one head's key codes.
    let view = pq_store.head(0, 0)?;
    let encoded = view.key_codes.tokens();
    let score_codes_per_s_per_thread = score_rate(&view, &queries[..d], tables, a.reps)?;
    let report = pq.memory_report();
    if !(dense_ms > 0.0 && pq_ms > 0.0 && dense_ms.is_finite() && pq_ms.is_finite()) {
        bail!("a kernel's median time came out as {dense_ms} / {pq_ms} ms; raise --ctx or --reps");
    }
    if !score_codes_per_s_per_thread.is_finite() {
        bail!("the scoring time was too short to measure; raise --ctx or --reps");
    }
    Ok(BenchReport {
        model: model.name,
        kv: spec.to_string(),
        kv_differs: differs.join(", "),
        ctx,
        q_heads: h,
        kv_heads: g,
        head_dim: d,
        threads: rayon::current_num_threads(),
        reps: a.reps,
        encoded_tokens: encoded,
        fp16_ms: dense_ms,
        pq_ms,
        speedup: dense_ms / pq_ms,
        codes_per_s: (h * encoded) as f64 / (pq_ms / 1e3),
        bytes_per_s: {
            let b = &report.bytes;
            (b.key_codes + b.value_codes + b.sinks + b.recent) as f64 / (pq_ms / 1e3)
        },
        score_codes_per_s_per_thread,
        score_tables: tables.to_string(),
        rel_err_vs_decoded: worst,
        rel_err_vs_exact_tables: worst_tables,
        rel_err_vs_fp16: fp_err,
    })
}
