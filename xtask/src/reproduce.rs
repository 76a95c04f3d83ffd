//! `cargo xtask reproduce [--quick] [--out DIR]`: runs the system-model
//! sweeps with the `aqpim` binary (`aqpim simulate sweep`), then writes their
//! CSV files, a Markdown summary of the claims (`summary.md`) and SVG plots:
//! the latency breakdown against context, the speedup of `aqpim` over
//! `attacc` against context and batch, and the transfer share of offloaded
//! decode.
//!
//! Without `--quick` the outputs go to `docs/results/`; `--quick` runs a small
//! grid (CI runs it) and writes to `target/reproduce-quick/` unless `--out`
//! says otherwise.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

/// One CSV row, by column name.
type Row = BTreeMap<String, String>;

struct Rows(Vec<Row>);

impl Rows {
    fn read(path: &Path) -> Result<Rows> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().context("empty CSV")?.split(',').collect();
        Ok(Rows(
            lines
                .map(|l| {
                    header
                        .iter()
                        .zip(l.split(','))
                        .map(|(h, v)| (h.to_string(), v.to_string()))
                        .collect()
                })
                .collect(),
        ))
    }

    fn get(&self, policy: &str, ctx: usize, batch: usize) -> Option<&Row> {
        self.0.iter().find(|r| {
            r["policy"] == policy && num(r, "ctx") == ctx as f64 && num(r, "batch") == batch as f64
        })
    }

    fn values(&self, col: &str) -> Vec<usize> {
        let mut v: Vec<usize> = self.0.iter().map(|r| num(r, col) as usize).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

fn num(r: &Row, col: &str) -> f64 {
    r.get(col).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

struct Grid {
    ctx: &'static str,
    batch: &'static str,
    offload_ctx: &'static str,
    offload_batch: &'static str,
}

const FULL: Grid = Grid {
    ctx: "4096,8192,16384,32768,65536,131072",
    batch: "1,2,4,8,16,32",
    offload_ctx: "4096,16384,32768",
    offload_batch: "1,2,4,8",
};

const QUICK: Grid = Grid {
    ctx: "4096,65536",
    batch: "1,8",
    offload_ctx: "4096,32768",
    offload_batch: "1,8",
};

/// The measured H100 transfer shares (shared/data/h100_anchors.jsonl,
/// section "offload"): (batch, ctx, share).
const H100_OFFLOAD: [(usize, usize, f64); 6] = [
    (1, 4096, 0.9591),
    (1, 16384, 0.9806),
    (1, 32768, 0.9819),
    (8, 4096, 0.9796),
    (8, 16384, 0.9798),
    (8, 32768, 0.9519),
];

pub fn run(args: &[String], root: &Path) -> Result<()> {
    let mut quick = false;
    let mut out: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => out = Some(it.next().context("--out needs a directory")?.into()),
            other => bail!("reproduce: unknown argument `{other}` (--quick, --out DIR)"),
        }
    }
    let out = out.unwrap_or_else(|| {
        root.join(if quick {
            "target/reproduce-quick"
        } else {
            "docs/results"
        })
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let grid = if quick { QUICK } else { FULL };

    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["build", "--quiet", "-p", "aqpim"])
        .status()?;
    if !status.success() {
        bail!("building the aqpim binary failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let aqpim = target.join("debug/aqpim");

    let sweep =
        |file: &str, system: &str, policy: &str, ctx: &str, batch: &str| -> Result<PathBuf> {
            let path = out.join(file);
            eprintln!(
                "sweep: {system} {policy} ctx {ctx} batch {batch} -> {}",
                path.display()
            );
            let status = Command::new(&aqpim)
                .args([
                    "simulate",
                    "sweep",
                    "--model",
                    "llama2-7b",
                    "--system",
                    system,
                    "--policy",
                    policy,
                    "--ctx",
                    ctx,
                    "--batch",
                    batch,
                    "--out",
                ])
                .arg(&path)
                .status()
                .with_context(|| format!("running {}", aqpim.display()))?;
            if !status.success() {
                bail!("aqpim simulate sweep failed for {file}");
            }
            Ok(path)
        };
    let pim = Rows::read(&sweep(
        "pim.csv",
        "h100+aqpim",
        "gpu,offload,attacc,aqpim",
        grid.ctx,
        grid.batch,
    )?)?;
    let off = Rows::read(&sweep(
        "offload.csv",
        "h100+host",
        "offload,offload-overlap",
        grid.offload_ctx,
        grid.offload_batch,
    )?)?;

    let summary = summarize(&pim, &off, quick);
    std::fs::write(out.join("summary.md"), summary)?;
    plot_breakdown(&pim, &out.join("latency_breakdown.svg"))?;
    plot_speedup(&pim, &out.join("speedup.svg"))?;
    plot_transfer_share(&off, &out.join("transfer_share.svg"))?;
    eprintln!(
        "wrote pim.csv, offload.csv, summary.md, latency_breakdown.svg, speedup.svg, transfer_share.svg to {}",
        out.display()
    );
    Ok(())
}

fn ctx_label(c: usize) -> String {
    if c >= 1024 && c.is_multiple_of(1024) {
        format!("{}K", c / 1024)
    } else {
        c.to_string()
    }
}

/// Axis label at a log2 coordinate: the context at whole powers of two, blank between.
fn log2_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        ctx_label(2f64.powf(x.round()) as usize)
    } else {
        String::new()
    }
}

fn speedup(pim: &Rows, ctx: usize, batch: usize) -> Option<(f64, &Row, &Row)> {
    let a = pim.get("attacc", ctx, batch)?;
    let q = pim.get("aqpim", ctx, batch)?;
    Some((num(a, "total_ms") / num(q, "total_ms"), a, q))
}

fn geomean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

fn summarize(pim: &Rows, off: &Rows, quick: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# System model: results summary{}\n\nGenerated by `cargo xtask reproduce{}` from `pim.csv` (Llama-2-7B on \
         `h100+aqpim`: one H100 for the linear layers, 5 HBM3 PIM stacks, PCIe 5 to host memory) and \
         `offload.csv` (`h100+host`). PIM attention comes from the lowered programs in the simulator's \
         timing-only mode. Do not edit by hand; `docs/results/pim.md` explains the numbers.\n",
        if quick { " (quick grid)" } else { "" },
        if quick { " --quick" } else { "" }
    );

    // Claim 1.
    let shares: Vec<f64> = off
        .0
        .iter()
        .filter(|r| r["policy"] == "offload")
        .map(|r| num(r, "transfer_share_of_attention"))
        .collect();
    let steps: Vec<f64> = off
        .0
        .iter()
        .filter(|r| r["policy"] == "offload")
        .map(|r| num(r, "transfer_share"))
        .collect();
    let range = |v: &[f64]| {
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        format!("{:.1}-{:.1} %", 100.0 * lo, 100.0 * hi)
    };
    let _ = writeln!(
        s,
        "## 1. Transfer share of offloaded decode (ctx {}, batch {})\n\n\
         - copy / (copy + attention): **{}** (H100 measured 95.2-98.2 %)\n\
         - transfer / whole step (linear layers included): **{}** (paper 90-98.5 %)\n",
        off.values("ctx")
            .iter()
            .map(|&c| ctx_label(c))
            .collect::<Vec<_>>()
            .join(", "),
        off.values("batch")
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        if shares.is_empty() {
            "-".into()
        } else {
            range(&shares)
        },
        if steps.is_empty() {
            "-".into()
        } else {
            range(&steps)
        },
    );
    let _ = writeln!(
        s,
        "| batch | ctx | model | H100 measured |\n|---:|---:|---:|---:|"
    );
    for (b, c, m) in H100_OFFLOAD {
        if let Some(r) = off.get("offload", c, b) {
            let _ = writeln!(
                s,
                "| {b} | {} | {:.1} % | {:.1} % |",
                ctx_label(c),
                100.0 * num(r, "transfer_share_of_attention"),
                100.0 * m
            );
        }
    }

    // Claim 2.
    let ctxs = pim.values("ctx");
    let batches = pim.values("batch");
    let _ = writeln!(
        s,
        "\n## 2. Speedup of aqpim over attacc (step time of attacc / step time of aqpim)\n\n\
         `*` attacc spills (FP16 cache past the stacks), `**` both spill, `-` a point that does not fit host memory.\n"
    );
    let _ = write!(s, "| batch |");
    for &c in &ctxs {
        let _ = write!(s, " {} |", ctx_label(c));
    }
    let _ = write!(s, "\n|---:|");
    for _ in &ctxs {
        let _ = write!(s, "---:|");
    }
    s.push('\n');
    let (mut fit, mut spill, mut all) = (vec![], vec![], vec![]);
    let mut crossover = vec![];
    for &b in &batches {
        let _ = write!(s, "| {b} |");
        let mut first_spill = None;
        for &c in &ctxs {
            match speedup(pim, c, b) {
                Some((x, a, q)) => {
                    let (sa, sq) = (num(a, "ctx_spilled") > 0.0, num(q, "ctx_spilled") > 0.0);
                    let mark = match (sa, sq) {
                        (true, true) => "**",
                        (true, false) => "*",
                        _ => "",
                    };
                    all.push(x);
                    if !sa && !sq {
                        fit.push(x);
                    } else {
                        spill.push(x);
                    }
                    if sa && !sq && first_spill.is_none() {
                        first_spill = Some((c, num(a, "ctx_in_pim") as usize));
                    }
                    let _ = write!(s, " {x:.2}x{mark} |");
                }
                None => {
                    let _ = write!(s, " - |");
                }
            }
        }
        s.push('\n');
        crossover.push((b, first_spill));
    }
    let _ = writeln!(
        s,
        "\nGeometric mean: **{:.2}x** over every point, **{:.2}x** where both caches fit the stacks, \
         **{:.1}x** where at least one spills.\n",
        geomean(&all),
        geomean(&fit),
        geomean(&spill)
    );
    let _ = writeln!(s, "Capacity crossover (first context of the grid where the FP16 cache spills and the PQ cache does not):\n");
    for (b, x) in crossover {
        match x {
            Some((c, held)) => {
                let _ = writeln!(
                    s,
                    "- batch {b}: ctx {} (attacc keeps {held} tokens per sequence in PIM)",
                    ctx_label(c)
                );
            }
            None => {
                let _ = writeln!(s, "- batch {b}: none on this grid");
            }
        }
    }
    // Factors, at one representative point where both fit and one where attacc spills.
    let _ = writeln!(s, "\nThe factors, per point (Llama-2-7B):\n");
    let _ = writeln!(
        s,
        "| ctx | batch | KV bytes/token attacc | aqpim | PIM attention ms attacc | aqpim | quantize ms | transfer ms attacc | aqpim | step ms attacc | aqpim |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &b in &batches {
        for &c in &ctxs {
            if let Some((_, a, q)) = speedup(pim, c, b) {
                let per_token = |r: &Row| num(r, "kv_bytes") / (num(r, "ctx") * num(r, "batch"));
                let _ = writeln!(
                    s,
                    "| {} | {b} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {:.1} | {:.1} | {:.2} | {:.2} |",
                    ctx_label(c),
                    per_token(a),
                    per_token(q),
                    num(a, "pim_attention_ms"),
                    num(q, "pim_attention_ms"),
                    num(q, "quantize_ms"),
                    num(a, "transfer_ms"),
                    num(q, "transfer_ms"),
                    num(a, "total_ms"),
                    num(q, "total_ms")
                );
            }
        }
    }

    // Claim 3.
    let _ = writeln!(
        s,
        "\n## 3. Sanity row: small contexts, batch 1 (per layer; H100 measured: linear 0.1874 ms, attention 0.0597 ms at 4K, 0.126 ms at 16K)\n\n\
         | ctx | gpu linear | gpu attention | gpu step | attacc PIM attention + sync | attacc step |\n|---:|---:|---:|---:|---:|---:|"
    );
    for c in [4096, 16384] {
        if let (Some(g), Some(a)) = (pim.get("gpu", c, 1), pim.get("attacc", c, 1)) {
            let _ = writeln!(
                s,
                "| {} | {:.4} ms | {:.4} ms | {:.2} ms | {:.4} ms | {:.2} ms |",
                ctx_label(c),
                num(g, "linear_ms") / 32.0,
                num(g, "attention_ms") / 32.0,
                num(g, "total_ms"),
                (num(a, "pim_attention_ms") + num(a, "sync_ms")) / 32.0,
                num(a, "total_ms")
            );
        }
    }
    s
}

const PARTS: [(&str, &str, RGBColor); 6] = [
    ("linear_ms", "linear (GPU)", RGBColor(90, 90, 90)),
    ("attention_ms", "attention (GPU)", RGBColor(230, 159, 0)),
    ("pim_attention_ms", "attention (PIM)", RGBColor(0, 114, 178)),
    ("quantize_ms", "quantization (PIM)", RGBColor(0, 158, 115)),
    ("sync_ms", "synchronization", RGBColor(204, 121, 167)),
    ("transfer_ms", "transfers (link)", RGBColor(213, 94, 0)),
];

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

/// Share of the step by component, attacc and aqpim side by side per context,
/// at the largest batch of the grid up to 8; the step time is written above
/// each bar.
fn plot_breakdown(pim: &Rows, path: &Path) -> Result<()> {
    let ctxs = pim.values("ctx");
    let batch = pim
        .values("batch")
        .into_iter()
        .filter(|&b| b <= 8)
        .max()
        .unwrap_or(1);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let n = ctxs.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Llama-2-7B decode step by component, batch {batch} (left attacc, right aqpim)"
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..n + 1.0, 0.0..108.0)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("share of the step (%)")
        .y_labels(6)
        .draw()
        .map_err(plot_err)?;
    for (i, &c) in ctxs.iter().enumerate() {
        for (j, policy) in ["attacc", "aqpim"].iter().enumerate() {
            let Some(r) = pim.get(policy, c, batch) else {
                continue;
            };
            let total = num(r, "total_ms");
            let x0 = i as f64 + 0.12 + 0.38 * j as f64;
            let x1 = x0 + 0.34;
            let mut y = 0.0;
            for (col, _, color) in PARTS {
                let h = 100.0 * num(r, col) / total;
                if h > 0.0 {
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(x0, y), (x1, y + h)],
                            color.filled(),
                        )))
                        .map_err(plot_err)?;
                }
                y += h;
            }
            let label = if total >= 100.0 {
                format!("{total:.0}")
            } else {
                format!("{total:.1}")
            };
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{label} ms"),
                    (x0, 104.0 - 3.0 * j as f64),
                    ("sans-serif", 11),
                )))
                .map_err(plot_err)?;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                format!("ctx {}", ctx_label(c)),
                (i as f64 + 0.3, -4.0),
                ("sans-serif", 13),
            )))
            .map_err(plot_err)?;
    }
    for (_, name, color) in PARTS {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, -1.0), (0.0, -1.0)],
                color.filled(),
            )))
            .map_err(plot_err)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 11))
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

const LINE_COLORS: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];

/// Speedup of aqpim over attacc against context, one line per batch (log y).
fn plot_speedup(pim: &Rows, path: &Path) -> Result<()> {
    let ctxs = pim.values("ctx");
    let batches = pim.values("batch");
    let mut lines = Vec::new();
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for &b in &batches {
        let pts: Vec<(f64, f64)> = ctxs
            .iter()
            .filter_map(|&c| speedup(pim, c, b).map(|(x, _, _)| ((c as f64).log2(), x)))
            .collect();
        for &(_, y) in &pts {
            lo = lo.min(y);
            hi = hi.max(y);
        }
        lines.push((b, pts));
    }
    if !lo.is_finite() {
        lo = 0.5;
        hi = 2.0;
    }
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let x0 = (*ctxs.first().unwrap_or(&4096) as f64).log2() - 0.3;
    let x1 = (*ctxs.last().unwrap_or(&131072) as f64).log2() + 0.3;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Llama-2-7B: speedup of aqpim over attacc (same 5 PIM stacks)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            x0..x1,
            ((lo * 0.7).min(0.5)..(hi * 1.5).max(4.0)).log_scale(),
        )
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("context (tokens per sequence)")
        .y_desc("speedup (x)")
        .x_labels(((x1 - x0).ceil() as usize) + 1)
        .x_label_formatter(&log2_label)
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(
            [(x0, 3.4), (x1, 3.4)],
            BLACK.mix(0.4).stroke_width(1),
        ))
        .map_err(plot_err)?
        .label("paper: 3.4x")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.mix(0.4)));
    chart
        .draw_series(LineSeries::new([(x0, 1.0), (x1, 1.0)], BLACK.mix(0.2)))
        .map_err(plot_err)?;
    for (i, (b, pts)) in lines.into_iter().enumerate() {
        let color = LINE_COLORS[i % LINE_COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(format!("batch {b}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Transfer share of offloaded decode against context, one line per batch,
/// with the measured H100 points and the paper's 90-98.5 % band.
fn plot_transfer_share(off: &Rows, path: &Path) -> Result<()> {
    let ctxs = off.values("ctx");
    let batches = off.values("batch");
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let x0 = (*ctxs.first().unwrap_or(&4096) as f64).log2() - 0.3;
    let x1 = (*ctxs.last().unwrap_or(&32768) as f64).log2() + 0.3;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Llama-2-7B offloaded decode: share of the step spent on PCIe transfers",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(x0..x1, 70.0..100.0)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("context (tokens per sequence)")
        .y_desc("transfer share (%)")
        .x_labels(((x1 - x0).ceil() as usize) + 1)
        .x_label_formatter(&log2_label)
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(x0, 90.0), (x1, 98.5)],
            RGBColor(200, 200, 200).mix(0.35).filled(),
        )))
        .map_err(plot_err)?
        .label("paper: 90-98.5 % of the step")
        .legend(|(x, y)| {
            Rectangle::new(
                [(x, y - 5), (x + 14, y + 5)],
                RGBColor(200, 200, 200).filled(),
            )
        });
    for (i, &b) in batches.iter().enumerate() {
        let color = LINE_COLORS[i % LINE_COLORS.len()];
        let step: Vec<(f64, f64)> = ctxs
            .iter()
            .filter_map(|&c| off.get("offload", c, b))
            .map(|r| ((num(r, "ctx")).log2(), 100.0 * num(r, "transfer_share")))
            .collect();
        let attn: Vec<(f64, f64)> = ctxs
            .iter()
            .filter_map(|&c| off.get("offload", c, b))
            .map(|r| {
                (
                    (num(r, "ctx")).log2(),
                    100.0 * num(r, "transfer_share_of_attention"),
                )
            })
            .collect();
        chart
            .draw_series(LineSeries::new(step, color.stroke_width(2)))
            .map_err(plot_err)?
            .label(format!("batch {b}: whole step"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(DashedLineSeries::new(attn, 5, 4, color.stroke_width(1)))
            .map_err(plot_err)?
            .label(format!("batch {b}: copy / (copy + attention)"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color));
    }
    chart
        .draw_series(
            H100_OFFLOAD.iter().map(|&(_, c, m)| {
                Cross::new(((c as f64).log2(), 100.0 * m), 5, BLACK.stroke_width(2))
            }),
        )
        .map_err(plot_err)?
        .label("H100 measured: copy / (copy + attention)")
        .legend(|(x, y)| Cross::new((x + 8, y), 4, BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 11))
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(policy: &str, ctx: usize, batch: usize, total: f64, spilled: usize) -> Row {
        [
            ("policy", policy.to_string()),
            ("ctx", ctx.to_string()),
            ("batch", batch.to_string()),
            ("total_ms", total.to_string()),
            ("ctx_spilled", spilled.to_string()),
            ("ctx_in_pim", (ctx - spilled).to_string()),
            ("kv_bytes", "1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn summary_finds_the_speedup_and_the_crossover() {
        let pim = Rows(vec![
            row("attacc", 4096, 8, 8.0, 0),
            row("aqpim", 4096, 8, 10.0, 0),
            row("attacc", 65536, 8, 1000.0, 100),
            row("aqpim", 65536, 8, 10.0, 0),
        ]);
        let s = summarize(&pim, &Rows(vec![]), true);
        assert!(s.contains("| 8 | 0.80x | 100.00x* |"), "{s}");
        assert!(
            s.contains("batch 8: ctx 64K (attacc keeps 65436 tokens"),
            "{s}"
        );
        // Geometric mean of 0.8 and 100.
        assert!(
            s.contains(&format!("**{:.2}x** over every point", (80f64).sqrt())),
            "{s}"
        );
        assert_eq!(log2_label(&12.0), "4K");
        assert_eq!(log2_label(&12.5), "");
    }
}
