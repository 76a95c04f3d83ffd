//! `cargo xtask reproduce [--quick] [--out DIR] [--model M] [--system S]
//! [--ctx LIST] [--batch LIST] [--pim-model simulated|analytic]`: builds the
//! `aqpim` CLI and shells out to it for the serving view (`simulate serve`,
//! the headline), the equal-batch sweep (`simulate sweep`) and the offload
//! sweep, then writes their CSV files, a Markdown summary (`summary.md`) and
//! the figures. `cargo xtask plot --serve FILE --sweep FILE --out DIR` draws
//! the same figures from CSV files the CLI wrote (`--offload FILE` for the
//! transfer-share figure; without it, the sweep's offload rows).
//!
//! Without `--quick` the outputs go to `docs/results/` (the CLI built
//! `--release`); `--quick` runs a small grid (CI runs it, debug build) and
//! writes to `target/reproduce-quick/` unless `--out` says otherwise.

mod frontier;
mod grid;
mod plot;
mod rows;
mod style;
mod summary;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use grid::Grid;
use rows::{Serve, Sweep};

const REPRODUCE_USAGE: &str =
    "cargo xtask reproduce [--quick] [--out DIR] [--model M] [--system S] \
[--ctx LIST] [--batch LIST] [--pim-model simulated|analytic] (without --out: docs/results for the \
default grid, target/reproduce-quick for --quick, target/reproduce-custom otherwise)";

const PLOT_USAGE: &str =
    "cargo xtask plot [--serve FILE.csv] [--sweep FILE.csv] [--offload FILE.csv] --out DIR";

/// The parsed arguments of `reproduce`.
#[derive(Debug, Default, PartialEq)]
struct Options {
    quick: bool,
    out: Option<PathBuf>,
    model: Option<String>,
    system: Option<String>,
    ctx: Option<String>,
    batch: Option<String>,
    pim_model: Option<String>,
}

fn value(it: &mut std::slice::Iter<'_, String>, flag: &str, usage: &str) -> Result<String> {
    match it.next() {
        Some(v) if !v.starts_with("--") => Ok(v.clone()),
        _ => bail!("{flag} needs a value\nusage: {usage}"),
    }
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options::default();
    let mut it = args.iter();
    let u = REPRODUCE_USAGE;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--out" => o.out = Some(value(&mut it, a, u)?.into()),
            "--model" => o.model = Some(value(&mut it, a, u)?),
            "--system" => o.system = Some(value(&mut it, a, u)?),
            "--ctx" => o.ctx = Some(value(&mut it, a, u)?),
            "--batch" => o.batch = Some(value(&mut it, a, u)?),
            "--pim-model" => {
                let v = value(&mut it, a, u)?;
                if v != "simulated" && v != "analytic" {
                    bail!("--pim-model `{v}`: expected `simulated` or `analytic`");
                }
                o.pim_model = Some(v);
            }
            other => bail!("reproduce: unknown argument `{other}`\nusage: {u}"),
        }
    }
    Ok(o)
}

impl Options {
    fn grid(&self) -> Grid {
        let mut g = if self.quick {
            Grid::quick()
        } else {
            Grid::full()
        };
        if let Some(m) = &self.model {
            g.model = m.clone();
        }
        if let Some(s) = &self.system {
            g.system = s.clone();
        }
        if let Some(c) = &self.ctx {
            g.ctx = c.clone();
            g.serve_ctx = c.clone();
        }
        if let Some(b) = &self.batch {
            g.batch = b.clone();
        }
        if let Some(p) = &self.pim_model {
            g.pim_model = p.clone();
            g.serve_pim_model = p.clone();
        }
        g
    }

    /// Where the run writes without `--out`: the published `docs/results`
    /// only for the full default grid; `target/reproduce-quick` for
    /// `--quick`; `target/reproduce-custom` for any other model, system,
    /// grid or PIM model, so that such a run never overwrites the published
    /// results.
    fn default_out(&self) -> &'static str {
        if self.quick {
            "target/reproduce-quick"
        } else if self.model.is_some()
            || self.system.is_some()
            || self.ctx.is_some()
            || self.batch.is_some()
            || self.pim_model.is_some()
        {
            "target/reproduce-custom"
        } else {
            "docs/results"
        }
    }

    /// The command line, as the summary quotes it.
    fn command(&self) -> String {
        let mut c = String::from("cargo xtask reproduce");
        if self.quick {
            c.push_str(" --quick");
        }
        for (flag, v) in [
            ("--model", &self.model),
            ("--system", &self.system),
            ("--ctx", &self.ctx),
            ("--batch", &self.batch),
            ("--pim-model", &self.pim_model),
        ] {
            if let Some(v) = v {
                c.push_str(&format!(" {flag} {v}"));
            }
        }
        c
    }
}

/// Builds the CLI and returns the path of its binary.
fn build_cli(root: &Path, release: bool) -> Result<PathBuf> {
    let mut args = vec!["build", "--quiet", "-p", "aqpim"];
    if release {
        args.push("--release");
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(&args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building the aqpim binary failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("aqpim"))
}

/// Runs `aqpim simulate <args> --out <path>`.
fn simulate(aqpim: &Path, args: &[&str], path: &Path) -> Result<()> {
    eprintln!("aqpim simulate {} --out {}", args.join(" "), path.display());
    let status = Command::new(aqpim)
        .arg("simulate")
        .args(args)
        .arg("--out")
        .arg(path)
        .status()
        .with_context(|| format!("running {}", aqpim.display()))?;
    if !status.success() {
        bail!("aqpim simulate {} failed", args.join(" "));
    }
    Ok(())
}

/// Whether two serve rows of attacc agree (same best batch, tokens/s within
/// 1e-9 relative).
fn same_attacc(a: &Serve, b: &Serve) -> bool {
    let pick = |s: &Serve| -> Vec<(usize, usize, f64)> {
        s.0.iter()
            .filter(|r| r.step.policy == "attacc")
            .map(|r| (r.step.ctx, r.serve.best_batch, r.step.tokens_per_s))
            .collect()
    };
    let (x, y) = (pick(a), pick(b));
    x.len() == y.len()
        && x.iter()
            .zip(&y)
            .all(|(p, q)| p.0 == q.0 && p.1 == q.1 && ((p.2 - q.2) / q.2.max(1e-300)).abs() < 1e-9)
}

/// `cargo xtask reproduce`.
pub fn run(args: &[String], root: &Path) -> Result<()> {
    let o = parse(args)?;
    let g = o.grid();
    let out = o.out.clone().unwrap_or_else(|| root.join(o.default_out()));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let aqpim = build_cli(root, !o.quick)?;
    let mut notes = Vec::new();

    // 1. The serving view.
    let serve_path = out.join("serve.csv");
    serve_run(&aqpim, &g, &g.system, grid::POLICIES, &serve_path)?;
    let mut serve = rows::read_serve(&serve_path)?;
    if g.system == "h100+aqpim" {
        let check = out.join("serve_attacc_check.csv");
        serve_run(&aqpim, &g, grid::ATTACC_SYSTEM, "attacc", &check)?;
        let other = rows::read_serve(&check)?;
        if same_attacc(&serve, &other) {
            notes.push(format!(
                "attacc on `{}` (the FP16 PIM baseline on the same stacks) gives the same best batch \
                 and tokens/s as on `{}` at every context of the serve run (checked by this run).",
                g.system,
                grid::ATTACC_SYSTEM
            ));
            std::fs::remove_file(&check)
                .with_context(|| format!("removing {}", check.display()))?;
        } else {
            notes.push(format!(
                "attacc on `{}` differs from attacc on `{}`; the summary and figures use \
                 attacc's rows on `{}` (`serve_attacc.csv`, the baseline's own system).",
                g.system,
                grid::ATTACC_SYSTEM,
                grid::ATTACC_SYSTEM
            ));
            let kept = out.join("serve_attacc.csv");
            std::fs::rename(&check, &kept)
                .with_context(|| format!("renaming {}", check.display()))?;
            serve.0.retain(|r| r.step.policy != "attacc");
            serve.0.extend(other.0);
        }
    }
    // 1b. AQPIM at AttAcc's PIM area per die (the paper's system only).
    let equal_area = if g.system == "h100+aqpim" {
        let path = out.join("serve_equal_area.csv");
        serve_run(&aqpim, &g, grid::EQUAL_AREA_SYSTEM, "aqpim", &path)?;
        Some(rows::read_serve(&path)?)
    } else {
        None
    };
    if g.serve_pim_model == "analytic" {
        notes.push(
            "The serve run uses `--pim-model analytic` (the closed form of the lowered programs) \
             to keep the quick run short; the full run simulates."
                .into(),
        );
    }

    // 2. Equal batch, and 3. offload.
    let pim_path = out.join("pim.csv");
    simulate(
        &aqpim,
        &[
            "sweep",
            "--model",
            &g.model,
            "--system",
            &g.system,
            "--policy",
            grid::POLICIES,
            "--ctx",
            &g.ctx,
            "--batch",
            &g.batch,
            "--pim-model",
            &g.pim_model,
        ],
        &pim_path,
    )?;
    let off_path = out.join("offload.csv");
    simulate(
        &aqpim,
        &[
            "sweep",
            "--model",
            &g.model,
            "--system",
            grid::OFFLOAD_SYSTEM,
            "--policy",
            "offload,offload-overlap",
            "--ctx",
            &g.offload_ctx,
            "--batch",
            &g.offload_batch,
        ],
        &off_path,
    )?;
    let pim = rows::read_steps(&pim_path)?;
    let off = rows::read_steps(&off_path)?;

    // 4. The accuracy-throughput frontier of every design and format.
    let frontier = frontier::run(&aqpim, &out, &g.serve_pim_model, &frontier::MODELS)?;
    // 5. attacc and aqpim across multi-head and grouped-query models.
    let models = frontier::models_run(&aqpim, &out, &g.serve_pim_model, &g.models_ctx)?;

    let header = summary::Header {
        command: o.command(),
        model: g.model.clone(),
        system: g.system.clone(),
        serve_pim_model: g.serve_pim_model.clone(),
        pim_model: g.pim_model.clone(),
        notes,
    };
    std::fs::write(
        out.join("summary.md"),
        summary::summarize(&header, &serve, equal_area.as_ref(), &pim, &off)
            + &frontier::section(&frontier)
            + &frontier::models_section(&models),
    )?;
    let figs = plot::write_all(
        &plot::Figures {
            serve: Some(&serve),
            sweep: Some(&pim),
            offload: Some(&off),
            model: g.model.clone(),
            frontier: Some(&frontier),
        },
        &out,
    )?;
    eprintln!(
        "wrote serve.csv, serve_equal_area.csv, pim.csv, offload.csv, frontier.csv, serve_models.csv, summary.md, {} to {}",
        figs.join(", "),
        out.display()
    );
    Ok(())
}

/// `aqpim simulate serve` of the grid's model and contexts on `system` for
/// `policy`, into `out`.
fn serve_run(aqpim: &Path, g: &grid::Grid, system: &str, policy: &str, out: &Path) -> Result<()> {
    simulate(
        aqpim,
        &[
            "serve",
            "--model",
            &g.model,
            "--system",
            system,
            "--policy",
            policy,
            "--ctx",
            &g.serve_ctx,
            "--pim-model",
            &g.serve_pim_model,
        ],
        out,
    )
}

/// `cargo xtask plot`: the figures from CSV files the CLI wrote.
pub fn plot_cmd(args: &[String]) -> Result<()> {
    let (mut serve, mut sweep, mut offload, mut out) = (None, None, None, None);
    let mut it = args.iter();
    let u = PLOT_USAGE;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--serve" => serve = Some(PathBuf::from(value(&mut it, a, u)?)),
            "--sweep" => sweep = Some(PathBuf::from(value(&mut it, a, u)?)),
            "--offload" => offload = Some(PathBuf::from(value(&mut it, a, u)?)),
            "--out" => out = Some(PathBuf::from(value(&mut it, a, u)?)),
            other => bail!("plot: unknown argument `{other}`\nusage: {u}"),
        }
    }
    let out = out.with_context(|| format!("plot: --out DIR is required\nusage: {u}"))?;
    if serve.is_none() && sweep.is_none() {
        bail!("plot: give --serve FILE.csv, --sweep FILE.csv or both\nusage: {u}");
    }
    let serve: Option<Serve> = serve.as_deref().map(rows::read_serve).transpose()?;
    let sweep: Option<Sweep> = sweep.as_deref().map(rows::read_steps).transpose()?;
    let offload: Option<Sweep> = offload.as_deref().map(rows::read_steps).transpose()?;
    let model = serve
        .as_ref()
        .and_then(|s| s.0.first().map(|r| r.step.model.clone()))
        .or_else(|| {
            sweep
                .as_ref()
                .and_then(|s| s.0.first().map(|r| r.model.clone()))
        })
        .unwrap_or_default();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let figs = plot::write_all(
        &plot::Figures {
            serve: serve.as_ref(),
            sweep: sweep.as_ref(),
            // The transfer-share figure from the offload sweep, else from
            // the sweep's offload rows.
            offload: offload.as_ref().or(sweep.as_ref()),
            model,
            frontier: None,
        },
        &out,
    )?;
    if figs.is_empty() {
        bail!("plot: nothing to draw (a sweep needs attacc and aqpim rows, or offload rows)");
    }
    eprintln!("wrote {} to {}", figs.join(", "), out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_the_default_grid_writes_the_published_results() {
        assert_eq!(parse(&[]).unwrap().default_out(), "docs/results");
        assert_eq!(
            parse(&args(&["--quick"])).unwrap().default_out(),
            "target/reproduce-quick"
        );
        for a in [
            &["--model", "llama2-13b"][..],
            &["--system", "h100+attacc"],
            &["--ctx", "4K"],
            &["--pim-model", "analytic"],
        ] {
            assert_eq!(
                parse(&args(a)).unwrap().default_out(),
                "target/reproduce-custom",
                "{a:?}"
            );
        }
    }

    #[test]
    fn arguments_override_the_paper_grid() {
        let o = parse(&args(&[
            "--model",
            "mistral-7b",
            "--ctx",
            "8K,16K",
            "--batch",
            "2",
            "--pim-model",
            "analytic",
        ]))
        .unwrap();
        let g = o.grid();
        assert_eq!(g.model, "mistral-7b");
        assert_eq!(g.system, "h100+aqpim");
        assert_eq!((g.ctx.as_str(), g.serve_ctx.as_str()), ("8K,16K", "8K,16K"));
        assert_eq!(g.batch, "2");
        assert_eq!(
            (g.pim_model.as_str(), g.serve_pim_model.as_str()),
            ("analytic", "analytic")
        );
        assert_eq!(
            o.command(),
            "cargo xtask reproduce --model mistral-7b --ctx 8K,16K --batch 2 --pim-model analytic"
        );
        assert_eq!(parse(&[]).unwrap().grid(), Grid::full());
        assert_eq!(parse(&args(&["--quick"])).unwrap().grid(), Grid::quick());
    }

    #[test]
    fn bad_arguments_are_errors() {
        for bad in [
            &["--ctx"][..],
            &["--ctx", "--quick"],
            &["--pim-model", "exact"],
            &["--frobnicate"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
        assert!(plot_cmd(&args(&["--out", "x"])).is_err());
        assert!(plot_cmd(&args(&["--serve", "a.csv"])).is_err());
    }
}
