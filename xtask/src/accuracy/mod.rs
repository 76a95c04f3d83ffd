//! `cargo xtask accuracy --grid FILE.toml [--out DIR] [--aqpim BIN]
//! [--dry-run]`: runs a grid of perplexity rows (see [`grid`] for the file)
//! through the release-built `aqpim` binary.
//!
//! Each distinct calibration (`--kv`, text, tokens, chunk, model) runs
//! `aqpim pq calibrate` once, into `OUT/codebooks/<hash>/`, which later rows
//! and later runs reuse (a directory counts once its `done` file exists).
//! Each row runs `aqpim eval ppl --json` and is appended to `OUT/rows.csv` as
//! it finishes; a rerun skips the rows the CSV already holds, so an
//! interrupted grid resumes. `OUT/table.md` is rewritten after every row:
//! one table per text and window, each row against that group's FP16 row.
//! `--dry-run` prints the commands it would run and runs nothing.
//!
//! `OUT` defaults to `target/accuracy/<grid file stem>`; `--aqpim` names a
//! binary to use instead of building `target/release/aqpim`.
//!
//! `--shard I/N` runs the rows whose index in the grid is `I` modulo `N`
//! (a deterministic 1/N), writing its `rows.csv` and `table.md` under
//! `OUT/shards/I-of-N/`; the codebook cache `OUT/codebooks/` is shared, so
//! shards on one file system calibrate each spec once where they do not
//! race, and never corrupt it where they do (each calibrates into its own
//! temporary folder; the first to finish wins). `--merge` joins every
//! shard's rows into `OUT/rows.csv` and `OUT/table.md` in grid order, as an
//! unsharded run writes them (`docs/cluster.md`).

mod grid;
mod shard;
mod table;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use grid::{Calibration, Grid, Row};
use table::Record;

const USAGE: &str = "cargo xtask accuracy --grid FILE.toml [--out DIR] [--aqpim BIN] [--dry-run] \
[--shard I/N | --merge]";

/// The parsed arguments.
#[derive(Debug, Default, PartialEq)]
struct Options {
    grid: Option<PathBuf>,
    out: Option<PathBuf>,
    aqpim: Option<PathBuf>,
    dry_run: bool,
    /// `(I, N)`: run the rows whose grid index is `I` modulo `N`.
    shard: Option<(usize, usize)>,
    merge: bool,
}

/// `I/N` with `I < N`.
fn parse_shard(v: &str) -> Result<(usize, usize)> {
    let bad = || anyhow::anyhow!("--shard `{v}`: expected I/N with 0 <= I < N (for example 0/4)");
    let (i, n) = v.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || match it.next() {
            Some(v) if !v.starts_with("--") => Ok(PathBuf::from(v)),
            _ => Err(anyhow::anyhow!("{a} needs a value\nusage: {USAGE}")),
        };
        match a.as_str() {
            "--grid" => o.grid = Some(value()?),
            "--out" => o.out = Some(value()?),
            "--aqpim" => o.aqpim = Some(value()?),
            "--dry-run" => o.dry_run = true,
            "--merge" => o.merge = true,
            "--shard" => o.shard = Some(parse_shard(&value()?.to_string_lossy())?),
            other => bail!("accuracy: unknown argument `{other}`\nusage: {USAGE}"),
        }
    }
    if o.grid.is_none() {
        bail!("accuracy: --grid FILE.toml is required\nusage: {USAGE}");
    }
    if o.merge && (o.shard.is_some() || o.dry_run) {
        bail!("accuracy: --merge runs nothing; it takes neither --shard nor --dry-run\nusage: {USAGE}");
    }
    Ok(o)
}

/// Everything one grid run needs.
struct Plan {
    /// The grid file's name, for the report.
    name: String,
    grid: Grid,
    model: PathBuf,
    rows: Vec<Row>,
    /// The grid's folder: `codebooks/` lives here.
    out: PathBuf,
    /// Where `rows.csv` and `table.md` go: `out`, or a shard's folder.
    results: PathBuf,
    aqpim: PathBuf,
    dry_run: bool,
}

/// The rows of shard `(i, n)`: those whose index in the grid is `i`
/// modulo `n`, in grid order.
fn shard_rows(rows: Vec<Row>, (i, n): (usize, usize)) -> Vec<Row> {
    rows.into_iter()
        .enumerate()
        .filter(|(k, _)| k % n == i)
        .map(|(_, r)| r)
        .collect()
}

/// A shard's results folder under the grid's.
fn shard_dir(out: &Path, (i, n): (usize, usize)) -> PathBuf {
    out.join("shards").join(format!("{i}-of-{n}"))
}

pub fn run(args: &[String], root: &Path) -> Result<()> {
    let o = parse(args)?;
    let path = o.grid.expect("checked in parse");
    let grid = Grid::load(&path)?;
    let mut rows = grid.rows(root)?;
    let stem = path
        .file_stem()
        .map_or("grid".into(), |s| s.to_string_lossy().into_owned());
    let out = o
        .out
        .unwrap_or_else(|| root.join("target").join("accuracy").join(&stem));
    if o.merge {
        let model = grid.model_path(root);
        return shard::merge(
            &grid::file_name(&path),
            &grid,
            &model,
            &rows,
            &out,
            &mut std::io::stderr(),
        );
    }
    let aqpim = match o.aqpim {
        Some(p) => p,
        None if o.dry_run => root.join("target/release/aqpim"),
        None => build_release(root)?,
    };
    let results = match o.shard {
        Some(shard) => {
            rows = shard_rows(rows, shard);
            shard_dir(&out, shard)
        }
        None => out.clone(),
    };
    let plan = Plan {
        name: grid::file_name(&path),
        model: grid.model_path(root),
        grid,
        rows,
        out,
        results,
        aqpim,
        dry_run: o.dry_run,
    };
    execute(&plan, &mut std::io::stderr())
}

fn build_release(root: &Path) -> Result<PathBuf> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["build", "--release", "--quiet", "-p", "aqpim"])
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building the aqpim binary failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join("aqpim"))
}

/// `args` as one shell line (single-quoting what needs it), for logs.
fn shell_line(program: &Path, args: &[String]) -> String {
    let quote = |s: &str| {
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=,.:/+@%".contains(c))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// The cache directory of a calibration: a hash of everything it depends on.
fn calibration_dir(out: &Path, model: &Path, c: &Calibration) -> PathBuf {
    let mut h = Sha256::new();
    for part in [
        path_arg(model),
        c.kv.clone(),
        path_arg(&c.text),
        c.tokens.to_string(),
        c.chunk.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let hex: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    out.join("codebooks").join(hex)
}

fn calibrate_args(plan: &Plan, c: &Calibration, dir: &Path) -> Vec<String> {
    let mut a: Vec<String> = ["pq", "calibrate", "--model"].map(String::from).into();
    a.push(path_arg(&plan.model));
    a.extend(["--text".into(), path_arg(&c.text)]);
    a.extend(["--tokens".into(), c.tokens.to_string()]);
    a.extend(["--kv".into(), c.kv.clone()]);
    a.extend(["--chunk".into(), c.chunk.to_string()]);
    a.extend(["--out".into(), path_arg(dir)]);
    if let Some(t) = plan.grid.threads {
        a.extend(["--threads".into(), t.to_string()]);
    }
    a
}

fn eval_args(plan: &Plan, row: &Row, books: Option<&Path>) -> Vec<String> {
    let mut a: Vec<String> = ["eval", "ppl", "--model"].map(String::from).into();
    a.push(path_arg(&plan.model));
    a.extend(["--text".into(), path_arg(&row.text)]);
    a.extend(["--window".into(), row.window.to_string()]);
    a.extend(["--prefill".into(), row.prefill.to_string()]);
    if let Some(t) = row.tokens {
        a.extend(["--tokens".into(), t.to_string()]);
    }
    a.extend(["--kv".into(), row.kv.clone()]);
    if let Some(d) = books {
        a.extend(["--codebooks".into(), path_arg(d)]);
    }
    if let Some(t) = plan.grid.threads {
        a.extend(["--threads".into(), t.to_string()]);
    }
    a.push("--json".into());
    a
}

/// The fields of `aqpim eval ppl --json` the CSV keeps.
#[derive(Debug, Deserialize)]
struct PplJson {
    perplexity: f64,
    nll: f64,
    bits_per_element: f64,
    scored_tokens: usize,
    decode_tokens_per_s: Option<f64>,
    #[serde(default)]
    kld_mean: Option<f64>,
    #[serde(default)]
    kld_p99: Option<f64>,
    #[serde(default)]
    top1_agreement: Option<f64>,
}

/// Makes sure the codebooks of `c` exist (calibrating them if not) and
/// returns their directory.
/// A dry run lists each calibration once (`listed` holds those it listed).
fn ensure_codebooks(
    plan: &Plan,
    c: &Calibration,
    listed: &mut Vec<PathBuf>,
    log: &mut dyn Write,
) -> Result<PathBuf> {
    let dir = calibration_dir(&plan.out, &plan.model, c);
    if dir.join("done").exists() || listed.contains(&dir) {
        return Ok(dir);
    }
    // Its own temporary folder: shards sharing the cache may calibrate the
    // same spec at once.
    let tmp = dir.with_extension(format!("partial-{}", std::process::id()));
    let args = calibrate_args(plan, c, &tmp);
    writeln!(
        log,
        "calibrating {}\n  {}",
        c.describe(),
        shell_line(&plan.aqpim, &args)
    )?;
    if plan.dry_run {
        listed.push(dir.clone());
        return Ok(dir);
    }
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    let status = Command::new(&plan.aqpim)
        .args(&args)
        .status()
        .with_context(|| format!("running {}", plan.aqpim.display()))?;
    if !status.success() {
        bail!(
            "calibration failed ({status}): {}",
            shell_line(&plan.aqpim, &args)
        );
    }
    std::fs::create_dir_all(&tmp)?;
    std::fs::write(tmp.join("done"), format!("{}\n", c.describe()))?;
    if dir.join("done").exists() {
        // Another shard finished the same calibration first: use its.
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        return Ok(dir);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("moving codebooks to {}", dir.display()))?;
    Ok(dir)
}

/// Runs one row; returns its record.
fn eval_row(plan: &Plan, row: &Row, books: Option<&Path>) -> Result<Record> {
    let args = eval_args(plan, row, books);
    let t0 = Instant::now();
    let out = Command::new(&plan.aqpim)
        .args(&args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", plan.aqpim.display()))?;
    if !out.status.success() {
        bail!(
            "row failed ({}): {}",
            out.status,
            shell_line(&plan.aqpim, &args)
        );
    }
    let j: PplJson = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "reading the JSON of {} (got {:?})",
            shell_line(&plan.aqpim, &args),
            String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(200)])
        )
    })?;
    let k = table::row_key(row);
    Ok(Record {
        text: k.0,
        window: k.1,
        prefill: k.2,
        tokens: k.3,
        kv: k.4,
        calibration: k.5,
        perplexity: j.perplexity,
        nll: j.nll,
        bits_per_element: j.bits_per_element,
        scored_tokens: j.scored_tokens,
        decode_tokens_per_s: j.decode_tokens_per_s,
        seconds: t0.elapsed().as_secs_f64(),
        kld_mean: j.kld_mean,
        kld_p99: j.kld_p99,
        top1_agreement: j.top1_agreement,
    })
}

/// Writes `dir/table.md` for `rows` from `records`.
fn write_table(
    name: &str,
    grid: &Grid,
    model: &Path,
    rows: &[Row],
    dir: &Path,
    records: &[Record],
) -> Result<()> {
    let header = format!(
        "Written by `cargo xtask accuracy --grid {}` from `rows.csv`: `aqpim eval ppl` of {}{}.",
        name,
        grid::file_name(model),
        grid.threads
            .map_or(String::new(), |t| format!(", `--threads {t}`"))
    );
    let md = table::markdown(&format!("Accuracy grid `{name}`"), &header, rows, records);
    let path = dir.join("table.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))
}

/// Runs (or with `dry_run` lists) every unfinished row of `plan`.
fn execute(plan: &Plan, log: &mut dyn Write) -> Result<()> {
    let csv = plan.results.join("rows.csv");
    let mut records = table::read_csv(&csv)?;
    let done = table::keys(&records);
    let todo: Vec<&Row> = plan
        .rows
        .iter()
        .filter(|r| !done.contains(&table::row_key(r)))
        .collect();
    writeln!(
        log,
        "accuracy grid {}: {} rows, {} already in {}, {} to run{}",
        plan.name,
        plan.rows.len(),
        plan.rows.len() - todo.len(),
        csv.display(),
        todo.len(),
        if plan.dry_run { " (dry run)" } else { "" }
    )?;
    if !plan.dry_run {
        std::fs::create_dir_all(&plan.results)
            .with_context(|| format!("creating {}", plan.results.display()))?;
    }
    let table_md = |records: &[Record]| {
        write_table(
            &plan.name,
            &plan.grid,
            &plan.model,
            &plan.rows,
            &plan.results,
            records,
        )
    };
    let started = Instant::now();
    let mut listed = Vec::new();
    for (i, row) in todo.iter().enumerate() {
        let eta = if i == 0 || plan.dry_run {
            String::new()
        } else {
            let per = started.elapsed().as_secs_f64() / i as f64;
            format!(
                ", about {:.0} min left",
                per * (todo.len() - i) as f64 / 60.0
            )
        };
        writeln!(
            log,
            "[{}/{}{eta}] {} W={} P={}",
            i + 1,
            todo.len(),
            row.kv,
            row.window,
            row.prefill
        )?;
        let books = match &row.calibration {
            Some(c) => Some(ensure_codebooks(plan, c, &mut listed, log)?),
            None => None,
        };
        let args = eval_args(plan, row, books.as_deref());
        writeln!(log, "  {}", shell_line(&plan.aqpim, &args))?;
        if plan.dry_run {
            continue;
        }
        let rec = eval_row(plan, row, books.as_deref())?;
        writeln!(
            log,
            "  perplexity {:.3} in {:.0} s",
            rec.perplexity, rec.seconds
        )?;
        table::append_csv(&csv, &rec)?;
        records.push(rec);
        table_md(&records)?;
    }
    if !plan.dry_run {
        table_md(&records)?;
        writeln!(
            log,
            "wrote {} and {}",
            csv.display(),
            plan.results.join("table.md").display()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_or_fail_clearly() {
        let a = |s: &[&str]| parse(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        let o = a(&["--grid", "g.toml", "--dry-run", "--out", "o"]).unwrap();
        assert_eq!(o.grid, Some(PathBuf::from("g.toml")));
        assert!(o.dry_run);
        assert!(format!("{:#}", a(&[]).unwrap_err()).contains("--grid FILE.toml is required"));
        assert!(format!("{:#}", a(&["--grid"]).unwrap_err()).contains("needs a value"));
        assert!(format!("{:#}", a(&["--grid", "g", "--x"]).unwrap_err()).contains("`--x`"));
        assert_eq!(
            a(&["--grid", "g", "--shard", "2/3"]).unwrap().shard,
            Some((2, 3))
        );
        assert!(a(&["--grid", "g", "--merge"]).unwrap().merge);
        for bad in ["3/3", "1/0", "x/2", "1"] {
            let e = format!("{:#}", a(&["--grid", "g", "--shard", bad]).unwrap_err());
            assert!(e.contains("expected I/N"), "{bad}: {e}");
        }
        assert!(a(&["--grid", "g", "--merge", "--shard", "0/2"]).is_err());
    }

    #[test]
    fn the_shipped_grid_is_the_issue_ablation() {
        let root = crate::tidy::workspace_root();
        let g = Grid::load(&root.join("docs/results/accuracy_grid.toml")).unwrap();
        let rows = g.rows(&root).unwrap();
        let kvs: Vec<&str> = rows.iter().map(|r| r.kv.as_str()).collect();
        for format in [
            "pq:dsub=4,nbits=8",
            "pq:dsub=2,nbits=4",
            "pq:dsub=1,nbits=2",
        ] {
            for key in [
                "",
                "scale=true",
                "whiten=diag",
                "whiten=full",
                "vweight=true",
                "layout=halves",
                "outliers=5",
                "sinks=16",
                "cb16=true",
                "center=true,whiten=full",
            ] {
                let kv = if key.is_empty() {
                    format.to_string()
                } else {
                    format!("{format},{key}")
                };
                assert!(kvs.contains(&kv.as_str()), "{kv} missing");
            }
        }
        for kv in ["fp16", "scalar:bits=2", "scalar:bits=4"] {
            assert!(kvs.contains(&kv), "{kv} missing");
        }
        for r in &rows {
            assert_eq!((r.window, r.prefill), (2048, 128), "{}", r.kv);
            assert!(r.text.ends_with("assets/austen/emma.txt"));
            if r.kv.starts_with("pq") {
                let c = r.calibration.as_ref().expect("pq rows are calibrated");
                assert!(c.text.ends_with("assets/austen/prideprejudice.txt"));
                assert_eq!((c.tokens, c.chunk), (8192, 2048));
            }
        }
    }

    /// A stand-in for `aqpim`: logs each call, makes the calibration
    /// directory and prints a perplexity that depends on the `--kv`.
    #[cfg(unix)]
    pub(super) fn fake_aqpim(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-aqpim");
        let script = r#"#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls.log"
if [ "$1 $2" = "pq calibrate" ]; then
  while [ $# -gt 0 ]; do [ "$1" = "--out" ] && mkdir -p "$2"; shift; done
  exit 0
fi
kv=""; prev=""
for a in "$@"; do [ "$prev" = "--kv" ] && kv="$a"; prev="$a"; done
case "$kv" in fp16) p=30.0;; *fail*) exit 3;; *) p=31.5;; esac
printf '{\n  "perplexity": %s,\n  "nll": 3.4,\n  "bits_per_element": 2.5,\n  "scored_tokens": 2047,\n  "decode_tokens_per_s": 20.0\n}\n' "$p"
"#;
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[cfg(unix)]
    #[test]
    fn rows_run_once_calibrations_are_cached_and_reruns_skip() {
        let dir = std::env::temp_dir().join(format!("xtask-acc-run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let aqpim = fake_aqpim(&dir);
        let toml = |extra: &str| {
            format!(
                "model = \"m.gguf\"\nthreads = 1\n[defaults]\ntext = \"emma.txt\"\nwindow = 2048\nprefill = 128\ntokens = 2048\ncalib_text = \"pp.txt\"\n\
                 [[row]]\nkv = \"fp16\"\n[[row]]\nkv = \"pq:dsub=2,nbits=4,outliers=5\"\ncalib_kv = \"pq:dsub=2,nbits=4\"\n\
                 [[cross]]\nformats = [\"pq:dsub=2,nbits=4\"]\nkeys = [\"\", \"sinks=16\"]\n{extra}"
            )
        };
        let plan = |extra: &str, dry_run: bool| {
            let grid: Grid = toml::from_str(&toml(extra)).unwrap();
            Plan {
                name: "g.toml".into(),
                model: grid.model_path(&dir),
                rows: grid.rows(&dir).unwrap(),
                grid,
                out: dir.join("out"),
                results: dir.join("out"),
                aqpim: aqpim.clone(),
                dry_run,
            }
        };
        let calls = || {
            std::fs::read_to_string(dir.join("calls.log"))
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        // A dry run lists the commands and runs nothing.
        let mut log = Vec::new();
        execute(&plan("", true), &mut log).unwrap();
        let log = String::from_utf8(log).unwrap();
        assert!(log.contains("4 to run (dry run)"), "{log}");
        assert_eq!(log.matches("pq calibrate --model").count(), 2, "{log}");
        assert!(log.contains("eval ppl --model"), "{log}");
        assert!(calls().is_empty() && !dir.join("out").exists());
        // The real run: two calibrations (the outlier row shares the plain
        // format's codebooks; the sinks row has its own spec), four rows.
        execute(&plan("", false), &mut Vec::new()).unwrap();
        let c = calls();
        assert_eq!(
            c.iter().filter(|l| l.starts_with("pq calibrate")).count(),
            2,
            "{c:?}"
        );
        assert_eq!(
            c.iter().filter(|l| l.starts_with("eval ppl")).count(),
            4,
            "{c:?}"
        );
        assert!(c.iter().all(|l| l.contains("--threads 1")));
        let recs = table::read_csv(&dir.join("out/rows.csv")).unwrap();
        assert_eq!(recs.len(), 4);
        let md = std::fs::read_to_string(dir.join("out/table.md")).unwrap();
        assert!(md.contains("4 of 4 rows measured"), "{md}");
        assert!(md.contains("| `pq:dsub=2,nbits=4,sinks=16` | pq:dsub=2,nbits=4,sinks=16 on pp.txt (8192 tokens, chunks 2048) | 31.500 | +5.00 % |"), "{md}");
        // A rerun with one more row runs only that row, reusing codebooks.
        let more =
            "[[row]]\nkv = \"pq:dsub=2,nbits=4,vweight=true\"\ncalib_kv = \"pq:dsub=2,nbits=4\"\n";
        execute(&plan(more, false), &mut Vec::new()).unwrap();
        let c2 = calls();
        assert_eq!(c2.len(), c.len() + 1, "{c2:?}");
        assert!(c2.last().unwrap().contains("vweight=true"));
        assert_eq!(table::read_csv(&dir.join("out/rows.csv")).unwrap().len(), 5);
        // A failing row stops the run with the command in the error; the
        // finished rows stay.
        let bad = "[[row]]\nkv = \"scalar:fail=1\"\n";
        let e = execute(&plan(bad, false), &mut Vec::new()).unwrap_err();
        assert!(format!("{e:#}").contains("scalar:fail=1"), "{e:#}");
        assert_eq!(table::read_csv(&dir.join("out/rows.csv")).unwrap().len(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
