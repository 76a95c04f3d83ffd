//! The figures' shared style: a 720-px-wide canvas with 28 px text, one
//! colour per policy, the legend band below the plot and its marks, axis
//! label formats.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::summary::ctx_label;

pub(super) const W: u32 = 720;
pub(super) const TICK: u32 = 28;
pub(super) const LABEL: u32 = 28;
pub(super) const CAPTION: u32 = 28;
pub(super) const FONT: &str = "sans-serif";

pub(super) const COLORS: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];

/// The colour of a policy, fixed across figures.
pub(super) fn policy_color(p: &str) -> RGBColor {
    match p {
        "gpu" => RGBColor(90, 90, 90),
        "offload" => RGBColor(230, 159, 0),
        "attacc" => RGBColor(0, 114, 178),
        "aqpim" => RGBColor(213, 94, 0),
        "gpu-quant" => RGBColor(204, 121, 167),
        "scalar-pim" => RGBColor(86, 180, 233),
        _ => RGBColor(0, 158, 115),
    }
}

pub(super) fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

/// Axis label at a log2 coordinate: the context at whole powers of two,
/// blank between.
pub fn log2_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        ctx_label(2f64.powf(x.round()) as usize)
    } else {
        String::new()
    }
}

pub(super) fn num_label(y: &f64) -> String {
    let y = *y;
    if y >= 1000.0 {
        format!("{:.0}", y)
    } else if y >= 1.0 {
        format!("{}", (y * 100.0).round() / 100.0)
    } else {
        format!("{y:.2}")
    }
}

/// Tick-sized text in `color`, anchored at (`h`, `v`).
pub(super) fn anchored(color: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle {
        font: (FONT, TICK).into_font(),
        color: color.to_backend_color(),
        pos: Pos::new(h, v),
    }
}

/// How a legend entry is drawn.
#[derive(Clone, Copy)]
pub(super) enum Mark {
    /// A solid line with a filled dot.
    Line(RGBColor),
    /// A dashed line.
    Dashed(RGBColor),
    /// A filled box.
    Block(RGBColor),
    /// A grey box with white diagonal hatching (what-if bars).
    Hatched,
    /// A cross (measured or what-if points).
    Cross(RGBColor),
    /// A hollow circle.
    Hollow(RGBColor),
}

/// Height of a legend band of `n` entries in `cols` columns.
pub(super) fn legend_height(n: usize, cols: usize) -> u32 {
    (n.div_ceil(cols) as u32) * (LABEL + 12) + 16
}

pub(super) fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, Mark)],
    cols: usize,
) -> Result<()> {
    let (w, _) = area.dim_in_pixel();
    let col_w = (w as i32 - 40) / cols as i32;
    for (i, (text, mark)) in entries.iter().enumerate() {
        let x = 30 + (i % cols) as i32 * col_w;
        let y = 14 + (i / cols) as i32 * (LABEL as i32 + 12) + LABEL as i32 / 2;
        match *mark {
            Mark::Line(c) => {
                area.draw(&PathElement::new([(x, y), (x + 44, y)], c.stroke_width(4)))
                    .map_err(plot_err)?;
                area.draw(&Circle::new((x + 22, y), 6, c.filled()))
                    .map_err(plot_err)?;
            }
            Mark::Dashed(c) => {
                for k in 0..3 {
                    area.draw(&PathElement::new(
                        [(x + k * 16, y), (x + k * 16 + 10, y)],
                        c.stroke_width(4),
                    ))
                    .map_err(plot_err)?;
                }
            }
            Mark::Block(c) => {
                area.draw(&Rectangle::new(
                    [(x + 8, y - 12), (x + 36, y + 12)],
                    c.filled(),
                ))
                .map_err(plot_err)?;
            }
            Mark::Hatched => {
                area.draw(&Rectangle::new(
                    [(x + 8, y - 12), (x + 36, y + 12)],
                    RGBColor(90, 90, 90).filled(),
                ))
                .map_err(plot_err)?;
                area.draw(&PathElement::new(
                    [(x + 8, y + 4), (x + 36, y - 4)],
                    WHITE.stroke_width(2),
                ))
                .map_err(plot_err)?;
            }
            Mark::Cross(c) => {
                area.draw(&Cross::new((x + 22, y), 9, c.stroke_width(4)))
                    .map_err(plot_err)?;
            }
            Mark::Hollow(c) => {
                area.draw(&Circle::new((x + 22, y), 9, c.stroke_width(3)))
                    .map_err(plot_err)?;
            }
        }
        area.draw(&Text::new(
            text.clone(),
            (x + 56, y - LABEL as i32 / 2 - 2),
            (FONT, LABEL).into_font(),
        ))
        .map_err(plot_err)?;
    }
    Ok(())
}

/// Splits a canvas into the plot and a legend band below it.
pub(super) fn with_legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    n: usize,
    cols: usize,
) -> (DrawingArea<DB, Shift>, DrawingArea<DB, Shift>) {
    let (_, h) = root.dim_in_pixel();
    root.split_vertically(h - legend_height(n, cols))
}

pub(super) fn log2_range(ctxs: &[usize]) -> (f64, f64) {
    let lo = ctxs.first().copied().unwrap_or(4096).max(1) as f64;
    let hi = ctxs.last().copied().unwrap_or(131072).max(1) as f64;
    (lo.log2() - 0.3, hi.log2() + 0.3)
}

#[cfg(test)]
mod tests {
    #[test]
    fn log2_axis_labels() {
        assert_eq!(super::log2_label(&12.0), "4K");
        assert_eq!(super::log2_label(&12.5), "");
    }
}
