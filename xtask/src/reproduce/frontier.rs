//! The accuracy-throughput frontier (issue 23): for each model and context,
//! every design with each of its formats at its best batch
//! (`aqpim simulate serve`), beside the format's measured perplexity delta
//! (`ppl_delta`, from `aqpim-system`'s `presets/data/accuracy.toml`). The
//! runs write `frontier.csv`; the summary names the best design within +1 %
//! and within +2 % perplexity; `frontier.svg` draws tokens/s against the
//! delta at 32K.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::rows::{self, Serve, ServeRow};
use super::style::{
    draw_legend, legend_height, num_label, plot_err, policy_color, with_legend, Mark, CAPTION,
    FONT, LABEL, TICK, W,
};
use super::summary::ctx_label;

/// One design point: a policy on its own system, with a format in place of
/// the system's own (`--kv`) or the system's.
pub struct Design {
    /// The policy.
    pub policy: &'static str,
    /// The system preset it runs on.
    pub system: &'static str,
    /// The format, when not the system's own.
    pub kv: Option<&'static str>,
}

const fn d(policy: &'static str, system: &'static str, kv: Option<&'static str>) -> Design {
    Design { policy, system, kv }
}

/// Every design and format of the frontier: FP16 on the GPU and in PIM
/// (AttAcc); scalar 4- and 2-bit (KIVI-style, and MX-style with a shared
/// exponent) on the GPU and in PIM (Pimba-style); PQ at about 2.1, 2.2,
/// 2.3 and 3.1 bits per element in PIM (AQPIM, the last the shipped format),
/// and the shipped format again on AQPIM's equal-area device.
pub const DESIGNS: &[Design] = &[
    d("gpu", "h100", None),
    d("attacc", "h100+attacc", None),
    d("gpu-quant", "h100+gpu-quant", Some("scalar:bits=4")),
    d("gpu-quant", "h100+gpu-quant", Some("scalar:bits=2")),
    d("scalar-pim", "h100+scalar-pim", Some("scalar:bits=4")),
    d("scalar-pim", "h100+scalar-pim", Some("scalar:bits=2")),
    d("gpu-quant", "h100+gpu-quant", Some("scalar:bits=4,mx=true")),
    d("gpu-quant", "h100+gpu-quant", Some("scalar:bits=2,mx=true")),
    d(
        "scalar-pim",
        "h100+scalar-pim",
        Some("scalar:bits=4,mx=true"),
    ),
    d(
        "scalar-pim",
        "h100+scalar-pim",
        Some("scalar:bits=2,mx=true"),
    ),
    d(
        "scalar-pim",
        "h100+scalar-pim",
        Some("scalar:bits=8,mx=true"),
    ),
    d(
        "aqpim",
        "h100+aqpim",
        Some("pq:kdsub=4,kbits=8,vdsub=2,vbits=4,outliers=5"),
    ),
    d("aqpim", "h100+aqpim", Some("pq:dsub=2,nbits=4,outliers=10")),
    d(
        "aqpim",
        "h100+aqpim",
        Some("pq:dsub=4,nbits=8,layout=halves,whiten=diag,outliers=10"),
    ),
    d("aqpim", "h100+aqpim", None),
    // AQPIM's units cut to AttAcc's PIM area per DRAM die (its registers
    // hold the shipped format's 16-centroid value bins, not the 256 of
    // `dsub=4,nbits=8`, which that device refuses).
    d("aqpim", "h100+aqpim-equal-area", None),
];

/// The models of the frontier: one with multi-head attention, one with
/// grouped-query attention (8 KV heads for 32 query heads).
pub const MODELS: [&str; 2] = ["llama2-7b", "llama3-8b"];

/// Contexts of the frontier runs; the figure draws the first.
pub const CTX: &str = "32K,64K";

/// The context the figure draws.
pub const PLOT_CTX: usize = 32768;

/// Runs every model and design into `out/frontier.csv` (the rows of every
/// run, one header); the per-run files go to a temporary folder beside it
/// and are removed. Designs whose system is not a preset of this build
/// are an error, not a silent gap.
pub fn run(aqpim: &Path, out: &Path, pim_model: &str, models: &[&str]) -> Result<Serve> {
    let mut jobs = Vec::new();
    for model in models {
        for design in DESIGNS {
            let mut args = serve_args(model, design.system, design.policy, CTX, pim_model);
            if let Some(kv) = design.kv {
                args.extend(["--kv", kv]);
            }
            jobs.push(args);
        }
    }
    run_parts(aqpim, out, "frontier", &jobs)
}

/// The models of the cross-model serve run: multi-head (Llama-2 7B and
/// 13B) and grouped-query (Llama-3-8B, Mistral-7B: 8 KV heads for 32 query
/// heads).
pub const SERVE_MODELS: [&str; 4] = ["llama2-7b", "llama2-13b", "llama3-8b", "mistral-7b"];

/// `attacc` and `aqpim` on `h100+aqpim` for each of [`SERVE_MODELS`] at
/// `ctx`, into `out/serve_models.csv`.
pub fn models_run(aqpim: &Path, out: &Path, pim_model: &str, ctx: &str) -> Result<Serve> {
    let jobs: Vec<Vec<&str>> = SERVE_MODELS
        .iter()
        .map(|m| serve_args(m, "h100+aqpim", "attacc,aqpim", ctx, pim_model))
        .collect();
    run_parts(aqpim, out, "serve_models", &jobs)
}

/// The arguments of `aqpim simulate serve` for one model, system, policy
/// list, context list and PIM model.
pub(super) fn serve_args<'a>(
    model: &'a str,
    system: &'a str,
    policy: &'a str,
    ctx: &'a str,
    pim_model: &'a str,
) -> Vec<&'a str> {
    vec![
        "serve",
        "--model",
        model,
        "--system",
        system,
        "--policy",
        policy,
        "--ctx",
        ctx,
        "--pim-model",
        pim_model,
    ]
}

/// Runs each `aqpim simulate` argument list into a part file under
/// `out/<name>.parts`, then joins the parts (one header) into
/// `out/<name>.csv` and removes the parts.
pub(super) fn run_parts(aqpim: &Path, out: &Path, name: &str, jobs: &[Vec<&str>]) -> Result<Serve> {
    let dir = out.join(format!("{name}.parts"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut header: Option<String> = None;
    let mut body = String::new();
    let mut n = 0;
    for (i, args) in jobs.iter().enumerate() {
        let part = dir.join(format!("{i}.csv"));
        super::simulate(aqpim, args, &part)?;
        let text = std::fs::read_to_string(&part)
            .with_context(|| format!("reading {}", part.display()))?;
        let mut lines = text.lines();
        let Some(h) = lines.next() else { continue };
        match &header {
            None => header = Some(h.to_string()),
            Some(prev) if prev != h => bail!(
                "{} has other columns than the first run of {name}",
                part.display()
            ),
            _ => {}
        }
        for l in lines {
            body.push_str(l);
            body.push('\n');
            n += 1;
        }
    }
    let Some(header) = header else {
        bail!("no {name} run wrote a row");
    };
    let path = out.join(format!("{name}.csv"));
    std::fs::write(&path, format!("{header}\n{body}"))
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    eprintln!("{n} rows written to {}", path.display());
    rows::read_serve(&path)
}

/// The cross-model section: aqpim over attacc per model and context.
pub fn models_section(m: &Serve) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Across models\n\n`serve_models.csv`: `aqpim simulate serve --model M --system h100+aqpim \
         --policy attacc,aqpim` for multi-head (Llama-2 7B, 13B) and grouped-query models (Llama-3-8B, \
         Mistral-7B: 4 query heads per KV head), the shipped format.\n\n\
         | model | ctx | attacc tok/s (batch) | aqpim tok/s (batch) | aqpim / attacc |\n|---|---|---|---|---|"
    );
    for model in &models_of(m) {
        for c in m.ctxs() {
            let get = |p: &str| {
                m.0.iter()
                    .find(|r| &r.step.model == model && r.step.ctx == c && r.step.policy == p)
            };
            if let (Some(a), Some(q)) = (get("attacc"), get("aqpim")) {
                let _ = writeln!(
                    s,
                    "| {model} | {} | {:.0} ({}) | {:.0} ({}) | {:.2}x |",
                    ctx_label(c),
                    a.step.tokens_per_s,
                    a.serve.best_batch,
                    q.step.tokens_per_s,
                    q.serve.best_batch,
                    q.step.tokens_per_s / a.step.tokens_per_s
                );
            }
        }
    }
    s
}

/// A format's short name for tables and the figure: `FP16`, `scalar 4b`,
/// `MX 4b`, `PQ 3.1b (K 8b/2, V 4b/2)` (PQ: bits per element all counted,
/// then each part's code bits per sub-vector length).
pub fn short(r: &ServeRow) -> String {
    let kv = &r.step.kv;
    if kv == "dense" || kv.is_empty() {
        return "FP16".into();
    }
    let bits = |k: &str| {
        kv.split([':', ','])
            .find_map(|p| p.strip_prefix(k))
            .unwrap_or("?")
            .to_string()
    };
    if kv.starts_with("scalar:") {
        let mx = kv.contains("mx=true");
        return format!("{} {}b", if mx { "MX" } else { "scalar" }, bits("bits="));
    }
    let (kd, vd) = match bits("dsub=").as_str() {
        "?" => (bits("kdsub="), bits("vdsub=")),
        d => (d.to_string(), d.to_string()),
    };
    let (kb, vb) = match bits("nbits=").as_str() {
        "?" => (bits("kbits="), bits("vbits=")),
        b => (b.to_string(), b.to_string()),
    };
    let codes = if (kd.as_str(), kb.as_str()) == (vd.as_str(), vb.as_str()) {
        format!("{kb}b/{kd}")
    } else {
        format!("K {kb}b/{kd}, V {vb}b/{vd}")
    };
    format!("PQ {:.1}b ({codes})", r.step.kv_bits_per_element)
}

/// The system preset a row ran on, without the `--kv` the CLI appends to
/// its name.
fn system(r: &ServeRow) -> &str {
    r.step.system.split(" --").next().unwrap_or_default()
}

/// The models of the rows, in first-seen order, each once.
fn models_of(f: &Serve) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in &f.0 {
        if !out.contains(&r.step.model) {
            out.push(r.step.model.clone());
        }
    }
    out
}

fn pct(d: Option<f64>) -> String {
    d.map_or("not measured".into(), |d| format!("{:+.2} %", 100.0 * d))
}

/// The best point (highest tokens/s) of `model` at `ctx` whose measured
/// delta is at most `bound`; points with no measured delta never qualify.
pub fn best_within<'a>(f: &'a Serve, model: &str, ctx: usize, bound: f64) -> Option<&'a ServeRow> {
    f.0.iter()
        .filter(|r| r.step.model == model && r.step.ctx == ctx)
        .filter(|r| r.step.ppl_delta.is_some_and(|d| d <= bound + 1e-12))
        .max_by(|a, b| a.step.tokens_per_s.total_cmp(&b.step.tokens_per_s))
}

/// The summary's frontier section: every point, then the best design within
/// +1 % and +2 % per model and context, and aqpim's margin there.
pub fn section(f: &Serve) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Accuracy against throughput\n\n`frontier.csv`: `aqpim simulate serve --model M --system S \
         --policy P [--kv KV] --ctx {CTX}` for each design below (one system preset per policy), \
         each format at its best batch with nothing spilled to host memory. `ppl` is the format's \
         measured perplexity against FP16 (SmolLM2-135M on held-out *Persuasion*, W = 2048, \
         P = 128; `crates/aqpim-system/presets/data/accuracy.toml`, `docs/results/accuracy.md`): \
         the small model's accuracy is the accuracy axis for every model preset alike. Bits are \
         per cached element, all counted at the context (codes, scales, FP16 sinks and window, \
         codebooks). Figure: `frontier.svg` ({}).\n",
        ctx_label(PLOT_CTX)
    );
    let models = models_of(f);
    let ctxs = f.ctxs();
    for model in &models {
        let _ = writeln!(s, "### {model}\n");
        let _ = writeln!(
            s,
            "| ctx | policy | system | format | bits | ppl | best batch | tokens/s | PIM mm2 per die |\n|---|---|---|---|---|---|---|---|---|"
        );
        for &c in &ctxs {
            let mut pts: Vec<&ServeRow> =
                f.0.iter()
                    .filter(|r| &r.step.model == model && r.step.ctx == c)
                    .collect();
            pts.sort_by(|a, b| b.step.tokens_per_s.total_cmp(&a.step.tokens_per_s));
            for r in pts {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.2} | {} | {} | {:.0} | {} |",
                    ctx_label(c),
                    r.step.policy,
                    system(r),
                    short(r),
                    r.step.kv_bits_per_element,
                    pct(r.step.ppl_delta),
                    r.serve.best_batch,
                    r.step.tokens_per_s,
                    if r.step.pim_area_mm2_per_die > 0.0 {
                        format!("{:.1}", r.step.pim_area_mm2_per_die)
                    } else {
                        "-".into()
                    }
                );
            }
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "### Best design within +1 % and +2 % perplexity\n\n| model | ctx | best within +1 % | best within +2 % | aqpim's best within +2 % against the best other |\n|---|---|---|---|---|"
    );
    let name = |r: Option<&ServeRow>| {
        r.map_or("-".into(), |r| {
            format!(
                "{} {} on {} ({}, {:.0} tok/s)",
                r.step.policy,
                short(r),
                system(r),
                pct(r.step.ppl_delta),
                r.step.tokens_per_s
            )
        })
    };
    for model in &models {
        for &c in &ctxs {
            let one = best_within(f, model, c, 0.01);
            let two = best_within(f, model, c, 0.02);
            let within = |pol: &str, other: bool| {
                f.0.iter()
                    .filter(|r| &r.step.model == model && r.step.ctx == c)
                    .filter(|r| (r.step.policy == pol) != other)
                    .filter(|r| r.step.ppl_delta.is_some_and(|d| d <= 0.02 + 1e-12))
                    .max_by(|a, b| a.step.tokens_per_s.total_cmp(&b.step.tokens_per_s))
            };
            let margin = match (within("aqpim", false), within("aqpim", true)) {
                (Some(a), Some(o)) => format!(
                    "{:.2}x ({} against {} {})",
                    a.step.tokens_per_s / o.step.tokens_per_s,
                    short(a),
                    o.step.policy,
                    short(o)
                ),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {model} | {} | {} | {} | {margin} |",
                ctx_label(c),
                name(one),
                name(two)
            );
        }
    }
    s.push('\n');
    s.push_str(&gqa_section(f, &models, &ctxs));
    s
}

/// aqpim over attacc (each on its own system, the shipped format) per model
/// and context, with the model's query heads per KV head: grouped-query
/// attention shrinks the ratio, and the section says why.
fn gqa_section(f: &Serve, models: &[String], ctxs: &[usize]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Grouped-query attention\n\n| model | ctx | attacc tok/s | aqpim tok/s (shipped format) | aqpim / attacc | scalar-pim 4b / attacc |\n|---|---|---|---|---|---|"
    );
    let pick = |model: &str, c: usize, policy: &str, sys: &str, kv: &str| {
        f.0.iter().find(|r| {
            r.step.model == model
                && r.step.ctx == c
                && r.step.policy == policy
                && system(r) == sys
                && r.step.kv.starts_with(kv)
        })
    };
    for model in models {
        for &c in ctxs {
            let a = pick(model, c, "attacc", "h100+attacc", "dense");
            let q = pick(
                model,
                c,
                "aqpim",
                "h100+aqpim",
                "pq:dsub=2,kbits=8,vbits=4,",
            );
            let sp = pick(
                model,
                c,
                "scalar-pim",
                "h100+scalar-pim",
                "scalar:bits=4,group=32,window=128,sinks=0",
            );
            if let (Some(a), Some(q)) = (a, q) {
                let _ = writeln!(
                    s,
                    "| {model} | {} | {:.0} | {:.0} | {:.2}x | {} |",
                    ctx_label(c),
                    a.step.tokens_per_s,
                    q.step.tokens_per_s,
                    q.step.tokens_per_s / a.step.tokens_per_s,
                    sp.filter(|r| !r.step.kv.contains("mx"))
                        .map_or("-".into(), |r| format!(
                            "{:.2}x",
                            r.step.tokens_per_s / a.step.tokens_per_s
                        ))
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\nWith grouped-query attention (Llama-3-8B: 4 query heads per KV head) the cache per token is 4x \
         smaller, so FP16 PIM already holds 4x the sequences, while AQPIM's costs per query head stay: a \
         lookup table over the link and into the banks' buffers, a softmax and value histograms per \
         query head (the shipped format's 32 KB key table fills the buffer, so its lowering cannot read \
         the rows once for several query heads). A scalar design broadcasts a query of `2 d` bytes per \
         query head instead. `docs/results/pim.md` (\"Rivals\") goes through it factor by factor.\n"
    );
    s
}

/// Tokens/s (log) against the perplexity delta (%) at [`PLOT_CTX`], one
/// panel per model, one colour per policy, each point labelled with its
/// format; unmeasured formats are left out (listed in the summary).
pub fn plot<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, f: &Serve) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let policies: Vec<&str> = ["gpu", "gpu-quant", "attacc", "scalar-pim", "aqpim"]
        .into_iter()
        .filter(|p| f.0.iter().any(|r| r.step.policy == *p))
        .collect();
    let entries: Vec<(String, Mark)> = policies
        .iter()
        .map(|p| (p.to_string(), Mark::Line(policy_color(p))))
        .collect();
    let (plots, legend) = with_legend(root, entries.len(), 3);
    let models = models_of(f);
    let panels = plots.split_evenly((models.len().max(1), 1));
    for (model, panel) in models.iter().zip(panels.iter()) {
        let pts: Vec<&ServeRow> =
            f.0.iter()
                .filter(|r| &r.step.model == model && r.step.ctx == PLOT_CTX)
                .filter(|r| r.step.ppl_delta.is_some() && r.step.tokens_per_s > 0.0)
                .collect();
        let xs: Vec<f64> = pts
            .iter()
            .filter_map(|r| r.step.ppl_delta)
            .map(|d| 100.0 * d)
            .collect();
        let ys: Vec<f64> = pts.iter().map(|r| r.step.tokens_per_s).collect();
        let (x0, x1) = (
            xs.iter().cloned().fold(0.0f64, f64::min) - 0.5,
            xs.iter().cloned().fold(1.0f64, f64::max) * 1.15 + 0.5,
        );
        let (y0, y1) = (
            ys.iter().cloned().fold(f64::INFINITY, f64::min).min(1e9) / 1.8,
            ys.iter().cloned().fold(1.0f64, f64::max) * 1.8,
        );
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "{model}, {}: best tokens/s against accuracy",
                    ctx_label(PLOT_CTX)
                ),
                (FONT, CAPTION),
            )
            .margin(16)
            .x_label_area_size(70)
            .y_label_area_size(110)
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(BLACK.mix(0.12))
            .x_desc("perplexity against FP16 (%)")
            .y_desc("best tokens/s")
            .y_label_formatter(&num_label)
            .label_style((FONT, TICK))
            .axis_desc_style((FONT, LABEL))
            .draw()
            .map_err(plot_err)?;
        for bound in [1.0, 2.0] {
            chart
                .draw_series(DashedLineSeries::new(
                    [(bound, y0), (bound, y1)],
                    6,
                    4,
                    BLACK.mix(0.4).stroke_width(2),
                ))
                .map_err(plot_err)?;
        }
        for r in pts {
            let (x, y) = (100.0 * r.step.ppl_delta.unwrap_or(0.0), r.step.tokens_per_s);
            let c = policy_color(&r.step.policy);
            chart
                .draw_series(std::iter::once(Circle::new((x, y), 8, c.filled())))
                .map_err(plot_err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    if system(r).ends_with("equal-area") {
                        format!("{} (equal area)", short(r))
                    } else {
                        short(r)
                    },
                    (x, y),
                    (FONT, TICK - 6).into_font(),
                )))
                .map_err(plot_err)?;
        }
    }
    draw_legend(&legend, &entries, 3)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// The figure's canvas: one 520-px panel per model and the legend band.
pub fn size(f: &Serve, policies: usize) -> (u32, u32) {
    let models = models_of(f).len().max(1) as u32;
    (W, 520 * models + legend_height(policies, 3))
}

#[cfg(test)]
mod tests {
    use super::super::summary::tests::served;
    use super::*;

    fn point(policy: &str, kv: &str, bits: f64, delta: Option<f64>, tps: f64) -> ServeRow {
        let mut r = served(policy, 32768, 4, tps);
        r.step.kv = kv.into();
        r.step.kv_bits_per_element = bits;
        r.step.ppl_delta = delta;
        r
    }

    #[test]
    fn formats_get_short_names() {
        let n = |kv: &str, bits| short(&point("aqpim", kv, bits, None, 1.0));
        assert_eq!(n("dense", 16.0), "FP16");
        assert_eq!(
            n("scalar:bits=4,group=32,window=128,sinks=0", 5.0),
            "scalar 4b"
        );
        assert_eq!(
            n("scalar:bits=2,group=32,window=128,sinks=0,mx=true", 2.3),
            "MX 2b"
        );
        assert_eq!(
            n("pq:dsub=2,kbits=8,vbits=4,sinks=4,window=128", 3.13),
            "PQ 3.1b (K 8b/2, V 4b/2)"
        );
        assert_eq!(n("pq:dsub=4,nbits=8,sinks=4", 2.2), "PQ 2.2b (8b/4)");
        assert_eq!(
            n("pq:kdsub=4,vdsub=2,kbits=8,vbits=4,sinks=4", 2.1),
            "PQ 2.1b (K 8b/4, V 4b/2)"
        );
    }

    #[test]
    fn the_best_within_a_bound_skips_unmeasured_and_worse_formats() {
        let f = Serve(vec![
            point("attacc", "dense", 16.0, Some(0.0), 500.0),
            point("aqpim", "pq:dsub=2,nbits=4", 2.1, Some(0.043), 2500.0),
            point(
                "aqpim",
                "pq:dsub=2,kbits=8,vbits=4",
                3.1,
                Some(0.016),
                1900.0,
            ),
            point("gpu-quant", "scalar:bits=2", 3.0, None, 9000.0),
            point("scalar-pim", "scalar:bits=4", 5.0, Some(0.003), 1200.0),
        ]);
        let one = best_within(&f, "llama2-7b", 32768, 0.01).unwrap();
        assert_eq!(one.step.policy, "scalar-pim");
        let two = best_within(&f, "llama2-7b", 32768, 0.02).unwrap();
        assert_eq!(
            (two.step.policy.as_str(), two.step.tokens_per_s),
            ("aqpim", 1900.0)
        );
        assert!(best_within(&f, "llama2-7b", 65536, 0.02).is_none());
        let s = section(&f);
        assert!(
            s.contains("| llama2-7b | 32K | scalar-pim scalar 4b"),
            "{s}"
        );
        assert!(
            s.contains("1.58x (PQ 3.1b (K 8b/2, V 4b/2) against scalar-pim scalar 4b)"),
            "{s}"
        );
        assert!(s.contains("not measured"), "{s}");
    }
}
