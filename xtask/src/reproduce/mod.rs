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
//! `--check` reruns the default grid into `target/reproduce-check/` and
//! fails naming every published file that differs from the rerun. The
//! Markdown and the figures are a function of the CSV files alone
//! ([`render`]); a test renders them from the published CSV files and
//! compares them with the published ones.

mod frontier;
mod grid;
mod plot;
mod rows;
mod sensitivity;
mod style;
mod summary;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use grid::Grid;
use rows::{Serve, Sweep};

const REPRODUCE_USAGE: &str =
    "cargo xtask reproduce [--quick | --check] [--out DIR] [--model M] [--system S] \
[--ctx LIST] [--batch LIST] [--pim-model simulated|analytic] (without --out: docs/results for the \
default grid, target/reproduce-quick for --quick, target/reproduce-check for --check, \
target/reproduce-custom otherwise)";

const PLOT_USAGE: &str =
    "cargo xtask plot [--serve FILE.csv] [--sweep FILE.csv] [--offload FILE.csv] --out DIR";

/// The parsed arguments of `reproduce`.
#[derive(Debug, Default, PartialEq)]
struct Options {
    quick: bool,
    check: bool,
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
            "--check" => o.check = true,
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
    if o.check && (o.quick || o.custom()) {
        bail!("--check reruns the published default grid: it takes none of --quick, --model, --system, --ctx, --batch, --pim-model\nusage: {u}");
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
            g.sensitivity_models = vec![m.clone()];
        }
        if let Some(s) = &self.system {
            g.system = s.clone();
        }
        if let Some(c) = &self.ctx {
            g.ctx = c.clone();
            g.serve_ctx = c.clone();
            g.sensitivity_ctx = c.clone();
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
        } else if self.check {
            "target/reproduce-check"
        } else if self.custom() {
            "target/reproduce-custom"
        } else {
            "docs/results"
        }
    }

    /// Whether any argument changes the default grid.
    fn custom(&self) -> bool {
        self.model.is_some()
            || self.system.is_some()
            || self.ctx.is_some()
            || self.batch.is_some()
            || self.pim_model.is_some()
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
    // Not `--quiet`: the first build takes minutes, and cargo's progress
    // is the only sign of life.
    let mut args = vec!["build", "-p", "aqpim"];
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
    simulate_all(&aqpim, &g, &out)?;
    let written = render(&o, &g, &out, &out)?;
    eprintln!(
        "wrote serve.csv, serve_equal_area.csv, pim.csv, offload.csv, frontier.csv, serve_models.csv, \
         sensitivity.csv, {} to {}",
        written.join(", "),
        out.display()
    );
    if o.check {
        let published = root.join("docs/results");
        let differ = differing(&out, &published)?;
        if !differ.is_empty() {
            bail!(
                "{} published file(s) differ from the rerun in {}: {}",
                differ.len(),
                out.display(),
                differ.join(", ")
            );
        }
        eprintln!(
            "every file of the rerun equals its published copy in {}",
            published.display()
        );
    }
    Ok(())
}

/// Every `aqpim simulate` run of the grid, each into its CSV file in `out`.
fn simulate_all(aqpim: &Path, g: &Grid, out: &Path) -> Result<()> {
    // 1. The serving view; on the paper's system, attacc checked against
    // its own system (kept as `serve_attacc.csv` only where they differ).
    serve_run(aqpim, g, &g.system, grid::POLICIES, &out.join("serve.csv"))?;
    let kept = out.join("serve_attacc.csv");
    if kept.exists() {
        std::fs::remove_file(&kept).with_context(|| format!("removing {}", kept.display()))?;
    }
    if g.system == "h100+aqpim" {
        let check = out.join("serve_attacc_check.csv");
        serve_run(aqpim, g, grid::ATTACC_SYSTEM, "attacc", &check)?;
        if same_attacc(
            &rows::read_serve(&out.join("serve.csv"))?,
            &rows::read_serve(&check)?,
        ) {
            std::fs::remove_file(&check)
                .with_context(|| format!("removing {}", check.display()))?;
        } else {
            std::fs::rename(&check, &kept)
                .with_context(|| format!("renaming {}", check.display()))?;
        }
        // 1b. AQPIM at AttAcc's PIM area per die.
        let path = out.join("serve_equal_area.csv");
        serve_run(aqpim, g, grid::EQUAL_AREA_SYSTEM, "aqpim", &path)?;
    }
    // 2. Equal batch, and 3. offload.
    simulate(
        aqpim,
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
        &out.join("pim.csv"),
    )?;
    simulate(
        aqpim,
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
        &out.join("offload.csv"),
    )?;
    // 4. The accuracy-throughput frontier of every design and format.
    frontier::run(aqpim, out, &g.serve_pim_model, &frontier::MODELS)?;
    // 5. attacc and aqpim across multi-head and grouped-query models.
    frontier::models_run(aqpim, out, &g.serve_pim_model, &g.models_ctx)?;
    // 6. One setting changed at a time.
    sensitivity::run(aqpim, out, &g.sensitivity_models, &g.sensitivity_ctx)?;
    Ok(())
}

/// `summary.md` and the figures from the CSV files in `input`, written to
/// `output`; returns the names written. Nothing here runs the CLI, so the
/// published Markdown and figures can be checked against the published CSV
/// files alone.
fn render(o: &Options, g: &Grid, input: &Path, output: &Path) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let mut serve = rows::read_serve(&input.join("serve.csv"))?;
    let mut equal_area = None;
    if g.system == "h100+aqpim" {
        let kept = input.join("serve_attacc.csv");
        if kept.exists() {
            notes.push(format!(
                "attacc on `{}` differs from attacc on `{}`; the summary and figures use \
                 attacc's rows on `{}` (`serve_attacc.csv`, the baseline's own system).",
                g.system,
                grid::ATTACC_SYSTEM,
                grid::ATTACC_SYSTEM
            ));
            serve.0.retain(|r| r.step.policy != "attacc");
            serve.0.extend(rows::read_serve(&kept)?.0);
        } else {
            notes.push(format!(
                "attacc on `{}` (the FP16 PIM baseline on the same stacks) gives the same best batch \
                 and tokens/s as on `{}` at every context of the serve run (checked by the run that \
                 wrote `serve.csv`).",
                g.system,
                grid::ATTACC_SYSTEM
            ));
        }
        equal_area = Some(rows::read_serve(&input.join("serve_equal_area.csv"))?);
    }
    if g.serve_pim_model == "analytic" {
        notes.push(
            "The serve run uses `--pim-model analytic` (the closed form of the lowered programs) \
             to keep the quick run short; the full run simulates."
                .into(),
        );
    }
    let pim = rows::read_steps(&input.join("pim.csv"))?;
    let off = rows::read_steps(&input.join("offload.csv"))?;
    let frontier = rows::read_serve(&input.join("frontier.csv"))?;
    let models = rows::read_serve(&input.join("serve_models.csv"))?;
    let sens = rows::read_serve(&input.join("sensitivity.csv"))?;
    let header = summary::Header {
        command: o.command(),
        model: g.model.clone(),
        system: g.system.clone(),
        serve_pim_model: g.serve_pim_model.clone(),
        pim_model: g.pim_model.clone(),
        notes,
    };
    let path = output.join("summary.md");
    std::fs::write(
        &path,
        summary::summarize(&header, &serve, equal_area.as_ref(), &pim, &off)
            + &frontier::section(&frontier)
            + &frontier::models_section(&models)
            + &sensitivity::section(&sens),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    let mut written = vec!["summary.md".to_string()];
    written.extend(plot::write_all(
        &plot::Figures {
            serve: Some(&serve),
            sweep: Some(&pim),
            offload: Some(&off),
            model: g.model.clone(),
            frontier: Some(&frontier),
        },
        output,
    )?);
    Ok(written)
}

/// The files of `rerun` whose published copy in `published` is missing or
/// differs, by name; files only in `published` (hand-written notes) are
/// not compared.
fn differing(rerun: &Path, published: &Path) -> Result<Vec<String>> {
    let mut differ = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(rerun)
        .with_context(|| format!("reading {}", rerun.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let new = std::fs::read(rerun.join(&name))?;
        let old = std::fs::read(published.join(&name)).ok();
        if old.as_deref() != Some(new.as_slice()) {
            differ.push(name.to_string_lossy().into_owned());
        }
    }
    Ok(differ)
}

/// `aqpim simulate serve` of the grid's model and contexts on `system` for
/// `policy`, into `out`.
fn serve_run(aqpim: &Path, g: &grid::Grid, system: &str, policy: &str, out: &Path) -> Result<()> {
    simulate(
        aqpim,
        &frontier::serve_args(&g.model, system, policy, &g.serve_ctx, &g.serve_pim_model),
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

    /// The published Markdown and figures are what the published CSV files
    /// render to: no table or figure in `docs/results` is edited by hand or
    /// left behind by a format change.
    #[test]
    fn published_tables_and_figures_render_from_the_published_csv() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let published = root.join("docs/results");
        let tmp = std::env::temp_dir().join(format!("aqpim-render-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let o = Options::default();
        let written = render(&o, &o.grid(), &published, &tmp).unwrap();
        assert!(written.len() > 3, "{written:?}");
        let differ = differing(&tmp, &published).unwrap();
        std::fs::remove_dir_all(&tmp).unwrap();
        assert!(
            differ.is_empty(),
            "{differ:?} in docs/results differ from what its CSV files render to \
             (rerun `cargo xtask reproduce`)"
        );
    }

    #[test]
    fn check_takes_only_the_default_grid() {
        let o = parse(&args(&["--check"])).unwrap();
        assert_eq!(o.default_out(), "target/reproduce-check");
        assert_eq!(o.grid(), Grid::full());
        for bad in [
            &["--check", "--quick"][..],
            &["--check", "--model", "llama3-8b"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
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
