//! The figures of a reproduction, sized for a paper's single column: a
//! 720-px-wide canvas with 28 px text (9.2 pt when scaled to 3.3 in), the legend
//! in its own band below the plot, what-if points drawn with their own marker
//! and legend entry, reference lines labelled beside the line.
//!
//! - `serve_throughput`: best tokens/s against context, log-log, one line per
//!   policy (`serve.csv`).
//! - `serve_ratio`: aqpim/attacc tokens/s against context with the paper's
//!   3.4x (`serve.csv`).
//! - `speedup`: equal-batch speedup against context, one line per batch
//!   (`pim.csv`).
//! - `latency_breakdown`: the step by component, attacc and aqpim (`pim.csv`).
//! - `transfer_share`: offloaded decode against the H100 measurements
//!   (`offload.csv`).

use std::path::Path;

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::frontier::plot as frontier_plot;
use super::rows::{Serve, StepRow, Sweep};
use super::style::{
    anchored, draw_legend, legend_height, log2_label, log2_range, num_label, plot_err,
    policy_color, with_legend, Mark, CAPTION, COLORS, FONT, LABEL, TICK, W,
};
use super::summary::{ctx_label, speedup, H100_OFFLOAD, PAPER_RATIO};

/// Best tokens/s against context, log-log, one line per policy; a best batch
/// whose cache is partly in GPU memory is a hollow circle.
pub fn serve_throughput<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    serve: &Serve,
    title: &str,
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let ctxs = serve.ctxs();
    let policies: Vec<&str> = ["gpu", "offload", "attacc", "aqpim"]
        .into_iter()
        .filter(|p| serve.0.iter().any(|r| r.step.policy == *p))
        .collect();
    let any_gpu = serve.0.iter().any(|r| r.step.ctx_on_gpu > 0);
    let mut entries: Vec<(String, Mark)> = policies
        .iter()
        .map(|p| (p.to_string(), Mark::Line(policy_color(p))))
        .collect();
    if any_gpu {
        entries.push(("partly on GPU".into(), Mark::Hollow(BLACK)));
    }
    let (plot, legend) = with_legend(root, entries.len(), 2);
    let ys: Vec<f64> = serve
        .0
        .iter()
        .map(|r| r.step.tokens_per_s)
        .filter(|y| *y > 0.0)
        .collect();
    let lo = ys.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = ys.iter().cloned().fold(0.0f64, f64::max);
    let (lo, hi) = if lo.is_finite() {
        (lo / 1.6, hi * 1.6)
    } else {
        (1.0, 10.0)
    };
    let (x0, x1) = log2_range(&ctxs);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, (FONT, CAPTION))
        .margin(16)
        .x_label_area_size(70)
        .y_label_area_size(110)
        .build_cartesian_2d(x0..x1, (lo..hi).log_scale())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .x_desc("context (tokens per sequence)")
        .y_desc("best tokens/s")
        .x_labels(((x1 - x0).ceil() as usize) + 1)
        .x_label_formatter(&log2_label)
        .y_label_formatter(&num_label)
        .label_style((FONT, TICK))
        .axis_desc_style((FONT, LABEL))
        .draw()
        .map_err(plot_err)?;
    for p in &policies {
        let color = policy_color(p);
        let pts: Vec<(f64, f64, bool)> = ctxs
            .iter()
            .filter_map(|&c| serve.get(p, c))
            .map(|r| {
                (
                    (r.step.ctx as f64).log2(),
                    r.step.tokens_per_s,
                    r.step.ctx_on_gpu > 0,
                )
            })
            .collect();
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|&(x, y, _)| (x, y)),
                color.stroke_width(4),
            ))
            .map_err(plot_err)?;
        for (x, y, gpu) in pts {
            if gpu {
                chart
                    .draw_series(std::iter::once(Circle::new((x, y), 11, WHITE.filled())))
                    .map_err(plot_err)?;
                chart
                    .draw_series(std::iter::once(Circle::new(
                        (x, y),
                        11,
                        color.stroke_width(3),
                    )))
                    .map_err(plot_err)?;
            } else {
                chart
                    .draw_series(std::iter::once(Circle::new((x, y), 7, color.filled())))
                    .map_err(plot_err)?;
            }
        }
    }
    draw_legend(&legend, &entries, 2)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// aqpim/attacc tokens/s at the best batch of each, against context (log x),
/// with the paper's 3.4x and parity as labelled reference lines (the values
/// are in the summary's table).
pub fn serve_ratio<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    serve: &Serve,
    title: &str,
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let ctxs = serve.ctxs();
    let pts: Vec<(f64, f64)> = ctxs
        .iter()
        .filter_map(|&c| serve.ratio(c).map(|r| ((c as f64).log2(), r)))
        .collect();
    let entries = vec![
        (
            "aqpim / attacc, best batch of each".to_string(),
            Mark::Line(policy_color("aqpim")),
        ),
        (
            format!("paper: {PAPER_RATIO}x"),
            Mark::Dashed(RGBColor(200, 0, 0)),
        ),
    ];
    let (plot, legend) = with_legend(root, entries.len(), 1);
    let hi = pts.iter().map(|p| p.1).fold(PAPER_RATIO, f64::max) * 1.2;
    let (x0, x1) = log2_range(&ctxs);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, (FONT, CAPTION))
        .margin(16)
        .x_label_area_size(70)
        .y_label_area_size(90)
        .build_cartesian_2d(x0..x1, 0.0..hi)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .x_desc("context (tokens per sequence)")
        .y_desc("tokens/s ratio (x)")
        .x_labels(((x1 - x0).ceil() as usize) + 1)
        .x_label_formatter(&log2_label)
        .y_label_formatter(&|y| format!("{y:.1}"))
        .label_style((FONT, TICK))
        .axis_desc_style((FONT, LABEL))
        .draw()
        .map_err(plot_err)?;
    let red = RGBColor(200, 0, 0);
    chart
        .draw_series(DashedLineSeries::new(
            [(x0, PAPER_RATIO), (x1, PAPER_RATIO)],
            14,
            8,
            red.stroke_width(3),
        ))
        .map_err(plot_err)?;
    chart
        .draw_series(std::iter::once(Text::new(
            format!("paper {PAPER_RATIO}x"),
            (x1 - 0.1, PAPER_RATIO - hi * 0.015),
            anchored(red, HPos::Right, VPos::Top),
        )))
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(
            [(x0, 1.0), (x1, 1.0)],
            BLACK.mix(0.6).stroke_width(2),
        ))
        .map_err(plot_err)?;
    chart
        .draw_series(std::iter::once(Text::new(
            "parity 1x",
            (x1 - 0.1, 1.0 + hi * 0.015),
            anchored(RGBColor(70, 70, 70), HPos::Right, VPos::Bottom),
        )))
        .map_err(plot_err)?;
    let color = policy_color("aqpim");
    chart
        .draw_series(LineSeries::new(pts.clone(), color.stroke_width(4)))
        .map_err(plot_err)?;
    chart
        .draw_series(pts.iter().map(|&p| Circle::new(p, 7, color.filled())))
        .map_err(plot_err)?;
    draw_legend(&legend, &entries, 1)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Equal-batch speedup of aqpim over attacc against context, one line per
/// batch through the points where both caches fit; what-if points are
/// crosses off the lines.
pub fn speedup_plot<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    pim: &Sweep,
    title: &str,
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let ctxs = pim.ctxs();
    let batches = pim.batches();
    let mut lines = Vec::new();
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    let mut any_whatif = false;
    for &b in &batches {
        let pts: Vec<(f64, f64, bool)> = ctxs
            .iter()
            .filter_map(|&c| speedup(pim, c, b).map(|(x, _, _, w)| ((c as f64).log2(), x, w)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        for &(_, y, w) in &pts {
            lo = lo.min(y);
            hi = hi.max(y);
            any_whatif |= w;
        }
        lines.push((b, pts));
    }
    if !lo.is_finite() {
        lo = 0.5;
        hi = 2.0;
    }
    let mut entries: Vec<(String, Mark)> = lines
        .iter()
        .enumerate()
        .map(|(i, (b, _))| (format!("batch {b}"), Mark::Line(COLORS[i % COLORS.len()])))
        .collect();
    entries.push((
        format!("paper: {PAPER_RATIO}x"),
        Mark::Dashed(RGBColor(200, 0, 0)),
    ));
    if any_whatif {
        entries.push(("what-if: off PIM".into(), Mark::Cross(BLACK)));
    }
    let (plot, legend) = with_legend(root, entries.len(), 2);
    let (x0, x1) = log2_range(&ctxs);
    let (ylo, yhi) = ((lo * 0.7).min(0.5), (hi * 1.5).max(5.0));
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, (FONT, CAPTION))
        .margin(16)
        .x_label_area_size(70)
        .y_label_area_size(90)
        .build_cartesian_2d(x0..x1, (ylo..yhi).log_scale())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .x_desc("context (tokens per sequence)")
        .y_desc("speedup at equal batch (x)")
        .x_labels(((x1 - x0).ceil() as usize) + 1)
        .x_label_formatter(&log2_label)
        .y_label_formatter(&num_label)
        .label_style((FONT, TICK))
        .axis_desc_style((FONT, LABEL))
        .draw()
        .map_err(plot_err)?;
    let red = RGBColor(200, 0, 0);
    chart
        .draw_series(DashedLineSeries::new(
            [(x0, PAPER_RATIO), (x1, PAPER_RATIO)],
            14,
            8,
            red.stroke_width(3),
        ))
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(
            [(x0, 1.0), (x1, 1.0)],
            BLACK.mix(0.5).stroke_width(2),
        ))
        .map_err(plot_err)?;
    for (i, (_, pts)) in lines.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let fit: Vec<(f64, f64)> = pts.iter().filter(|p| !p.2).map(|p| (p.0, p.1)).collect();
        chart
            .draw_series(LineSeries::new(fit.clone(), color.stroke_width(4)))
            .map_err(plot_err)?;
        chart
            .draw_series(fit.into_iter().map(|p| Circle::new(p, 7, color.filled())))
            .map_err(plot_err)?;
        chart
            .draw_series(
                pts.iter()
                    .filter(|p| p.2)
                    .map(|p| Cross::new((p.0, p.1), 9, color.stroke_width(4))),
            )
            .map_err(plot_err)?;
    }
    draw_legend(&legend, &entries, 2)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

const PARTS: [(&str, RGBColor); 8] = [
    ("linear (GPU)", RGBColor(90, 90, 90)),
    ("tables (GPU)", RGBColor(170, 170, 170)),
    ("attention (GPU)", RGBColor(230, 159, 0)),
    ("attention (PIM)", RGBColor(0, 114, 178)),
    ("quantize (PIM)", RGBColor(0, 158, 115)),
    ("GPU-PIM link", RGBColor(86, 180, 233)),
    ("synchronization", RGBColor(204, 121, 167)),
    ("host transfers", RGBColor(213, 94, 0)),
];

fn parts(r: &StepRow) -> [f64; 8] {
    [
        r.linear_ms,
        r.table_ms,
        r.attention_ms,
        r.pim_attention_ms,
        r.quantize_ms,
        r.link_ms,
        r.sync_ms,
        r.transfer_ms,
    ]
}

/// The batch the breakdown shows: the largest of the sweep up to 8.
pub fn breakdown_batch(pim: &Sweep) -> usize {
    pim.batches()
        .into_iter()
        .filter(|&b| b <= 8)
        .max()
        .unwrap_or(1)
}

/// Share of the step (before overlap) by component, attacc (left) and aqpim
/// (right) per context; the step time is written above each bar, and a
/// what-if bar is hatched with a `*` over it.
pub fn breakdown<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    pim: &Sweep,
    title: &str,
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let ctxs = pim.ctxs();
    let batch = breakdown_batch(pim);
    let mut entries: Vec<(String, Mark)> = PARTS
        .iter()
        .map(|(n, c)| (n.to_string(), Mark::Block(*c)))
        .collect();
    entries.push(("* what-if: off PIM".into(), Mark::Hatched));
    let (plot, legend) = with_legend(root, entries.len(), 2);
    let n = ctxs.len() as f64;
    // More than three contexts: the step times stand upright above the bars.
    let crowded = ctxs.len() > 3;
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, (FONT, CAPTION))
        .margin(16)
        .x_label_area_size(10)
        .y_label_area_size(90)
        .build_cartesian_2d(0.0..n, -12.0..if crowded { 128.0 } else { 112.0 })
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .x_labels(0)
        .y_desc("share of the step (%)")
        .y_labels(6)
        .y_label_formatter(&|y| {
            if (0.0..=100.0).contains(y) {
                format!("{y:.0}")
            } else {
                String::new()
            }
        })
        .label_style((FONT, TICK))
        .axis_desc_style((FONT, LABEL))
        .draw()
        .map_err(plot_err)?;
    for (i, &c) in ctxs.iter().enumerate() {
        for (j, policy) in ["attacc", "aqpim"].iter().enumerate() {
            let Some(r) = pim.get(policy, c, batch) else {
                continue;
            };
            let ps = parts(r);
            let sum: f64 = ps.iter().sum();
            let x0 = i as f64 + 0.08 + 0.44 * j as f64;
            let x1 = x0 + 0.40;
            let mut y = 0.0;
            for (k, (_, color)) in PARTS.iter().enumerate() {
                let h = 100.0 * ps[k] / sum;
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
            let t = r.total_ms;
            let label = if t >= 100.0 {
                format!("{t:.0}")
            } else {
                format!("{t:.1}")
            };
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{label}{}", if r.outside_pim() { "*" } else { "" }),
                    ((x0 + x1) / 2.0, if crowded { 103.0 } else { 101.0 }),
                    if crowded {
                        TextStyle {
                            font: (FONT, TICK).into_font().transform(FontTransform::Rotate270),
                            color: BLACK.to_backend_color(),
                            pos: Pos::new(HPos::Left, VPos::Center),
                        }
                    } else {
                        anchored(BLACK, HPos::Center, VPos::Bottom)
                    },
                )))
                .map_err(plot_err)?;
            if r.outside_pim() {
                for k in 0..6 {
                    let yy = 8.0 + 15.0 * k as f64;
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            [(x0, yy), (x1, yy + 6.0)],
                            WHITE.stroke_width(2),
                        )))
                        .map_err(plot_err)?;
                }
            }
        }
        chart
            .draw_series(std::iter::once(Text::new(
                ctx_label(c),
                (i as f64 + 0.5, -2.0),
                anchored(BLACK, HPos::Center, VPos::Top),
            )))
            .map_err(plot_err)?;
    }
    draw_legend(&legend, &entries, 2)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Transfer share of offloaded decode against context, one line per batch,
/// with the measured H100 points and the paper's 90-98.5 % band.
pub fn transfer_share<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    off: &Sweep,
    title: &str,
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let ctxs = off.ctxs();
    let batches = off.batches();
    let band = RGBColor(200, 200, 200);
    let mut entries: Vec<(String, Mark)> =
        vec![("paper: 90-98.5 % of the step".into(), Mark::Block(band))];
    for (i, b) in batches.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        entries.push((format!("batch {b}: whole step"), Mark::Line(c)));
        entries.push((format!("batch {b}: copy/(copy+attn)"), Mark::Dashed(c)));
    }
    entries.push(("H100 measured, copy/(copy+attn)".into(), Mark::Cross(BLACK)));
    let (plot, legend) = with_legend(root, entries.len(), 1);
    let (x0, x1) = log2_range(&ctxs);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, (FONT, CAPTION))
        .margin(16)
        .x_label_area_size(70)
        .y_label_area_size(90)
        .build_cartesian_2d(x0..x1, 70.0..100.0)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .x_desc("context (tokens per sequence)")
        .y_desc("transfer share (%)")
        .x_labels(((x1 - x0).ceil() as usize) + 1)
        .x_label_formatter(&log2_label)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FONT, TICK))
        .axis_desc_style((FONT, LABEL))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(x0, 90.0), (x1, 98.5)],
            band.mix(0.45).filled(),
        )))
        .map_err(plot_err)?;
    for (i, &b) in batches.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let rows: Vec<&StepRow> = ctxs
            .iter()
            .filter_map(|&c| off.get("offload", c, b))
            .collect();
        chart
            .draw_series(LineSeries::new(
                rows.iter()
                    .map(|r| ((r.ctx as f64).log2(), 100.0 * r.transfer_share)),
                color.stroke_width(4),
            ))
            .map_err(plot_err)?;
        chart
            .draw_series(DashedLineSeries::new(
                rows.iter()
                    .map(|r| ((r.ctx as f64).log2(), 100.0 * r.transfer_share_of_attention)),
                10,
                6,
                color.stroke_width(3),
            ))
            .map_err(plot_err)?;
    }
    // The measured points in their batch's colour (black if the sweep lacks that batch).
    chart
        .draw_series(H100_OFFLOAD.iter().map(|&(b, c, m)| {
            let color = batches
                .iter()
                .position(|&x| x == b)
                .map_or(BLACK, |i| COLORS[i % COLORS.len()]);
            Cross::new(((c as f64).log2(), 100.0 * m), 10, color.stroke_width(4))
        }))
        .map_err(plot_err)?;
    draw_legend(&legend, &entries, 1)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// A figure's canvas height for a plot of `plot_h` pixels above a legend of
/// `n` entries in `cols` columns.
fn height(plot_h: u32, n: usize, cols: usize) -> u32 {
    plot_h + legend_height(n, cols)
}

/// Which figures there are, their files, and what they need.
pub struct Figures<'a> {
    /// The serve rows, if any.
    pub serve: Option<&'a Serve>,
    /// The equal-batch sweep, if any.
    pub sweep: Option<&'a Sweep>,
    /// The offload sweep, if any.
    pub offload: Option<&'a Sweep>,
    /// Model named in titles.
    pub model: String,
    /// The accuracy-throughput frontier, if run.
    pub frontier: Option<&'a Serve>,
}

/// With the `png` feature: registers a TrueType font for the pure-Rust
/// bitmap backend (and the text layout of both backends): `AQPIM_FONT`, else
/// DejaVu Sans where Debian puts it.
#[cfg(feature = "png")]
fn register_font() -> Result<()> {
    use anyhow::Context as _;
    let path = std::env::var_os("AQPIM_FONT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into());
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "the png feature needs a TrueType font: {} (set AQPIM_FONT to a .ttf file)",
            path.display()
        )
    })?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a TrueType font", path.display()))
}

/// Draws one figure as `<name>.svg` (and `<name>.png` with the `png`
/// feature) and records the file names.
macro_rules! render {
    ($written:expr, $out:expr, $name:expr, $size:expr, $draw:ident, $($arg:expr),*) => {{
        let svg = $out.join(format!("{}.svg", $name));
        $draw(&SVGBackend::new(&svg, $size).into_drawing_area(), $($arg),*)?;
        $written.push(format!("{}.svg", $name));
        #[cfg(feature = "png")]
        {
            let png = $out.join(format!("{}.png", $name));
            $draw(&BitMapBackend::new(&png, $size).into_drawing_area(), $($arg),*)?;
            $written.push(format!("{}.png", $name));
        }
    }};
}

/// Writes every figure the inputs allow into `out`; returns the file names
/// written.
pub fn write_all(f: &Figures<'_>, out: &Path) -> Result<Vec<String>> {
    #[cfg(feature = "png")]
    register_font()?;
    let mut written: Vec<String> = Vec::new();
    let m = &f.model;
    if let Some(serve) = f.serve {
        let n = serve
            .0
            .iter()
            .map(|r| r.step.policy.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            + 1;
        let title = format!("{m}: serving throughput");
        render!(
            written,
            out,
            "serve_throughput",
            (W, height(600, n, 2)),
            serve_throughput,
            serve,
            &title
        );
        let title = format!("{m}: aqpim over attacc, best batch");
        render!(
            written,
            out,
            "serve_ratio",
            (W, height(560, 2, 1)),
            serve_ratio,
            serve,
            &title
        );
    }
    if let Some(pim) = f.sweep {
        if pim.has("attacc") && pim.has("aqpim") {
            let n = pim.batches().len() + 2;
            let title = format!("{m}: equal-batch speedup");
            render!(
                written,
                out,
                "speedup",
                (W, height(600, n, 2)),
                speedup_plot,
                pim,
                &title
            );
            let title = format!(
                "batch {}: attacc | aqpim, step ms on top",
                breakdown_batch(pim)
            );
            render!(
                written,
                out,
                "latency_breakdown",
                (W, height(600, PARTS.len() + 1, 2)),
                breakdown,
                pim,
                &title
            );
        }
    }
    if let Some(fr) = f.frontier.filter(|fr| !fr.0.is_empty()) {
        let n =
            fr.0.iter()
                .map(|r| r.step.policy.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .len();
        render!(
            written,
            out,
            "frontier",
            super::frontier::size(fr, n),
            frontier_plot,
            fr
        );
    }
    if let Some(off) = f.offload.filter(|o| o.has("offload")) {
        let n = 2 * off.batches().len() + 2;
        let title = format!("{m}: offloaded decode on PCIe");
        render!(
            written,
            out,
            "transfer_share",
            (W, height(560, n, 1)),
            transfer_share,
            off,
            &title
        );
    }
    Ok(written)
}
