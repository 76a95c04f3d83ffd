//! `aqpim attn ...`: decode-attention kernels on real-sized caches.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use aqpim_attn::reference::{attention_f64, relative_error};
use aqpim_kvcache::{build, KvShape, KvSpec};
use clap::{Args, Subcommand};
use serde::Serialize;

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
    /// Model shape: layers, KV heads, head dimension (Llama-2-7B: 32,32,128).
    #[arg(long, value_name = "L,H,D")]
    model_shape: String,
    /// Query heads per KV head (grouped-query attention).
    #[arg(long, default_value_t = 1)]
    group: usize,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Tokens per sequence in PIM (for `pq`, the encoded tokens).
    #[arg(long)]
    ctx: usize,
    /// Device preset (crates/aqpim-pim/presets) or TOML file.
    #[arg(long, default_value = "hbm3-attacc-5.2")]
    device: String,
    /// What the banks hold: fp16 (AttAcc) or pq (AQPIM).
    #[arg(long, default_value = "pq")]
    kind: String,
    /// PQ sub-vector length.
    #[arg(long, default_value_t = 4)]
    dsub: usize,
    /// PQ bits per code (4 or 8).
    #[arg(long, default_value_t = 8)]
    nbits: u32,
    /// PQ: FP16 sink and recent-window tokens per sequence beside the codes.
    #[arg(long, default_value_t = 0)]
    fp_tokens: usize,
    /// PQ: include one in-memory quantization flush per cache (a block of one token per bank).
    #[arg(long)]
    quantize: bool,
    /// Compute every instruction's data too (slow); timing is identical.
    #[arg(long)]
    functional: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Also print time, commands, bytes and energy per phase of the kernel (in JSON: `phases`).
    #[arg(long)]
    breakdown: bool,
    /// Write one layer's lowered programs as text for `aqpim sim run` into DIR.
    #[arg(long, value_name = "DIR")]
    dump: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
struct SimReport {
    device: String,
    kind: aqpim_attn::pim::PimKind,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    group: usize,
    batch: usize,
    ctx: usize,
    fp_tokens: usize,
    quantize: bool,
    mode: &'static str,
    /// Layers run one after another: the step's attention.
    cycles: u64,
    time_us: f64,
    energy_uj: f64,
    bytes_internal: u64,
    bytes_external: u64,
    bytes_buffer_die: u64,
    commands: u64,
    channels_used: usize,
    rows_per_bank_per_layer: usize,
    /// Wall-clock seconds the simulation took.
    wall_s: f64,
    /// Per phase, summed over layers (`--breakdown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    phases: Option<Vec<crate::attn_inspect::PhaseRow>>,
}

fn sim(a: &SimArgs) -> Result<SimReport> {
    use aqpim_attn::pim::{layer_rows_per_bank, LayerJob, PimKind};
    use aqpim_kvcache::limits::{MAX_CTX, MAX_HEAD_DIM, MAX_KV_HEADS, MAX_LAYERS};
    let [layers, kv_heads, head_dim] = limits::model_shape("--model-shape", &a.model_shape)?;
    limits::in_range("layers of --model-shape", layers, MAX_LAYERS)?;
    limits::in_range("KV heads of --model-shape", kv_heads, MAX_KV_HEADS)?;
    limits::in_range("head size of --model-shape", head_dim, MAX_HEAD_DIM)?;
    limits::in_range("--batch", a.batch, limits::MAX_BATCH)?;
    limits::in_range("--group", a.group, MAX_KV_HEADS)?;
    for (flag, v) in [("--ctx", a.ctx), ("--fp-tokens", a.fp_tokens)] {
        if v > MAX_CTX {
            bail!("{flag} {v} is more than the limit of {MAX_CTX}");
        }
    }
    if a.kind == "pq" {
        if a.nbits != 4 && a.nbits != 8 {
            bail!(
                "--nbits {}: the PIM kernels take 4- or 8-bit codes",
                a.nbits
            );
        }
        if a.dsub == 0 || !head_dim.is_multiple_of(a.dsub) {
            bail!(
                "--dsub {} must be a positive divisor of the head size {head_dim}",
                a.dsub
            );
        }
    }
    // At most MAX_BATCH x MAX_KV_HEADS = 2^22 heads: no overflow.
    let heads = a.batch * kv_heads;
    let kind = match a.kind.as_str() {
        "fp16" => PimKind::Fp16,
        "pq" => PimKind::pq(a.dsub, a.nbits),
        other => bail!("--kind `{}`: use fp16 or pq", limits::cut(other)),
    };
    let device = aqpim_pim::DeviceSpec::preset_or_file(&a.device)
        .with_context(|| format!("loading device `{}`", limits::cut(&a.device)))?
        .resolve()?;
    let job = LayerJob {
        kind,
        head_dim,
        heads,
        kv_heads,
        group: a.group,
        ctx: a.ctx,
        fp_tokens: a.fp_tokens,
        quantize: a.quantize,
        codebooks: aqpim_attn::pim::CodebookScope::Model,
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
    let mut report = SimReport {
        device: device.name.clone(),
        kind,
        layers,
        kv_heads,
        head_dim,
        group: a.group,
        batch: a.batch,
        ctx: a.ctx,
        fp_tokens: a.fp_tokens,
        quantize: a.quantize,
        mode: if a.functional {
            "functional"
        } else {
            "timing-only"
        },
        cycles: 0,
        time_us: 0.0,
        energy_uj: 0.0,
        bytes_internal: 0,
        bytes_external: 0,
        bytes_buffer_die: 0,
        commands: 0,
        channels_used: 0,
        rows_per_bank_per_layer: rows,
        wall_s: 0.0,
        phases: None,
    };
    if let Some(dir) = &a.dump {
        crate::attn_inspect::dump(&device, &job, dir)?;
    }
    let mut inspector = crate::attn_inspect::Inspector::new(a.breakdown);
    // Every layer's programs run (layers are identical in shape, and each
    // is simulated in full: no sampling, no scaling).
    for _ in 0..layers {
        let c = inspector.layer(&device, &job, mode)?;
        report.cycles += c.cycles;
        report.time_us += c.ns / 1e3;
        report.energy_uj += c.energy_pj / 1e6;
        report.bytes_internal += c.bytes_internal;
        report.bytes_external += c.bytes_external;
        report.bytes_buffer_die += c.bytes_buffer_die;
        report.commands += c.commands;
        report.channels_used = c.channels_used;
        bar.inc(1);
    }
    bar.finish_and_clear();
    report.wall_s = start.elapsed().as_secs_f64();
    report.phases = inspector.rows();
    Ok(report)
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Context length (tokens in the cache).
    #[arg(long, default_value_t = 32768)]
    ctx: usize,
    /// Query heads (H).
    #[arg(long, default_value_t = 32)]
    heads: usize,
    /// KV heads (G; H must be a multiple).
    #[arg(long, default_value_t = 32)]
    kv_heads: usize,
    /// Head dimension (d).
    #[arg(long, default_value_t = 128)]
    head_dim: usize,
    /// Elements per PQ sub-vector (dsub).
    #[arg(long, default_value_t = 4)]
    dsub: usize,
    /// Bits per PQ code (nbits).
    #[arg(long, default_value_t = 8)]
    nbits: u32,
    /// FP16 attention-sink tokens.
    #[arg(long, default_value_t = 4)]
    sinks: usize,
    /// FP16 recent-window tokens.
    #[arg(long, default_value_t = 128)]
    window: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed repetitions of each kernel (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `aqpim attn bench` measures.
#[derive(Debug, Serialize)]
struct BenchReport {
    ctx: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    dsub: usize,
    nbits: u32,
    threads: usize,
    encoded_tokens: usize,
    /// Median time of the dense FP16 kernel, one layer, all heads.
    dense_ms: f64,
    /// Median time of the PQ kernel, one layer, all heads.
    pq_ms: f64,
    speedup: f64,
    /// Query-head x encoded-token codes scored and accumulated per second by the PQ kernel.
    codes_per_s: f64,
    /// Bytes of the PQ cache (codes, FP16 sinks and window) read per second.
    gb_per_s: f64,
    /// Lookup-table scoring alone, one thread: codes per second.
    score_codes_per_s_per_thread: f64,
    /// PQ output against f64 attention on the decoded cache, worst head.
    rel_err_vs_decoded: f64,
    /// PQ output against f64 attention on the uncompressed cache, mean over heads (the PQ approximation itself).
    rel_err_vs_fp16: f64,
}

pub fn run(cmd: AttnCommand) -> Result<()> {
    match cmd {
        AttnCommand::Sim(args) => {
            let mut report = sim(&args)?;
            let phases = if args.json {
                None
            } else {
                report.phases.take()
            };
            print_report(&report, args.json)?;
            if let Some(rows) = phases {
                crate::attn_inspect::print_phases(&rows);
            }
            Ok(())
        }
        AttnCommand::Bench(args) => {
            let report = limits::thread_pool(args.threads)?.install(|| bench(&args))?;
            print_report(&report, args.json)
        }
    }
}

/// One JSON object, or one `key value` line per field.
fn print_report(report: &impl Serialize, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        for (k, v) in serde_json::to_value(report)?
            .as_object()
            .context("report is an object")?
        {
            println!("{k:<30} {v}");
        }
    }
    Ok(())
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

fn bench(a: &BenchArgs) -> Result<BenchReport> {
    let shape = KvShape::with_query_heads(1, a.kv_heads, a.heads, a.head_dim)?;
    let (g, d, h, ctx) = (a.kv_heads, a.head_dim, a.heads, a.ctx);
    // Every size is checked before anything is generated or allocated.
    limits::in_range("--ctx", ctx, aqpim_kvcache::limits::MAX_CTX)?;
    limits::in_range("--reps", a.reps, limits::MAX_REPS)?;
    for (flag, v) in [("--sinks", a.sinks), ("--window", a.window)] {
        aqpim_kvcache::limits::check_ctx(flag, v)?;
    }
    aqpim_kvcache::limits::product(
        "--kv-heads x --ctx x --head-dim",
        &[g, ctx, d],
        aqpim_kvcache::limits::MAX_BENCH_ELEMENTS,
    )?;
    let bar =
        indicatif::ProgressBar::new_spinner().with_message("generating KV-like keys and values");
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let keys: Vec<f32> = aqpim_pq::synth::kv_like(g * ctx, d, 1)
        .iter()
        .map(|v| v * 0.15)
        .collect();
    let values = aqpim_pq::synth::kv_like(g * ctx, d, 2);

    bar.set_message("filling the dense cache");
    let mut dense = build(shape, &KvSpec::Dense)?;
    dense.reserve(ctx);
    dense.prefill(0, &keys, &values)?;

    // One codebook shared by every head keeps set-up short (a single k-means
    // per subspace); the kernel's work does not depend on the sharing.
    bar.set_message("training codebooks and encoding the PQ cache");
    let spec: KvSpec = format!(
        "pq:dsub={},nbits={},sinks={},window={},share=all,iters=10",
        a.dsub, a.nbits, a.sinks, a.window
    )
    .parse()?;
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

    // Check the outputs: PQ against f64 attention on the decoded cache (must be
    // float rounding), and against the uncompressed cache (the PQ error).
    let scale = 1.0 / (d as f64).sqrt();
    let (mut worst, mut fp_err) = (0f64, 0f64);
    let pq_store = pq.as_pq().context("PQ cache")?;
    for qh in 0..h {
        let kv = pq.reconstruct(0, shape.kv_head_of(qh))?;
        let q = &queries[qh * d..(qh + 1) * d];
        worst = worst.max(relative_error(
            &out_pq[qh * d..(qh + 1) * d],
            &attention_f64(q, &kv.keys, &kv.values, scale),
        ));
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

    // Scoring alone, one thread: the lookup-table scan over one head's key codes.
    let view = pq_store.head(0, 0)?;
    let encoded = view.key_codes.tokens();
    let score_codes_per_s_per_thread = if encoded > 0 {
        let kpq = view.key_codebook.context("codebook")?;
        let lut = kpq.inner_product_table(&queries[..d])?;
        let mut scores = vec![0f32; encoded];
        let data = view.key_codes.data();
        let packed = view.key_codes.is_packed();
        let ms = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()?
            .install(|| {
                median_ms(a.reps.max(5), || {
                    if packed {
                        lut.scan_packed4(data, &mut scores)?;
                    } else {
                        lut.scan_u8(data, &mut scores)?;
                    }
                    Ok(())
                })
            })?;
        encoded as f64 / (ms / 1e3)
    } else {
        0.0
    };
    let report = pq.memory_report();
    if !(dense_ms > 0.0 && pq_ms > 0.0 && dense_ms.is_finite() && pq_ms.is_finite()) {
        bail!("a kernel's median time came out as {dense_ms} / {pq_ms} ms; raise --ctx or --reps");
    }
    if !score_codes_per_s_per_thread.is_finite() {
        bail!("the scoring time was too short to measure; raise --ctx or --reps");
    }
    Ok(BenchReport {
        ctx,
        heads: h,
        kv_heads: g,
        head_dim: d,
        dsub: a.dsub,
        nbits: a.nbits,
        threads: rayon::current_num_threads(),
        encoded_tokens: encoded,
        dense_ms,
        pq_ms,
        speedup: dense_ms / pq_ms,
        codes_per_s: (h * encoded) as f64 / (pq_ms / 1e3),
        gb_per_s: {
            let b = &report.bytes;
            (b.key_codes + b.value_codes + b.sinks + b.recent) as f64 / (pq_ms / 1e3) / 1e9
        },
        score_codes_per_s_per_thread,
        rel_err_vs_decoded: worst,
        rel_err_vs_fp16: fp_err,
    })
}
