//! `cargo xtask faiss-compare`: the PQ speed bar, measured side by side.
//!
//! Generates KV-like data with `aqpim pq synth`, then runs `aqpim pq bench` and
//! `scripts/faiss_pq_bench.py` (faiss-cpu, outside the workspace's
//! dependencies) on the same file and machine, one thread each, and prints both
//! JSON objects and the ratios.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Options: `--n N --d D --m M --nbits B --iters I --threads T`.
pub fn run(args: &[String], root: &Path) -> Result<()> {
    let mut opts = [
        ("--n", "65536"),
        ("--d", "128"),
        ("--m", "32"),
        ("--nbits", "8"),
        ("--iters", "25"),
        ("--threads", "1"),
    ]
    .map(|(k, v)| (k, v.to_string()));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let slot = opts
            .iter_mut()
            .find(|(k, _)| k == a)
            .with_context(|| format!("unknown option {a}"))?;
        slot.1 = it
            .next()
            .with_context(|| format!("{a} needs a value"))?
            .clone();
    }
    let get = |k: &str| {
        opts.iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };

    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["build", "--release", "--quiet", "-p", "aqpim"])
        .status()?;
    if !status.success() {
        bail!("building the aqpim binary failed");
    }
    let aqpim = root.join("target/release/aqpim");
    let dir = std::env::temp_dir().join(format!("aqpim-faiss-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("kv.npy");
    let data_s = data.to_str().context("temp path is not UTF-8")?;
    run_ok(Command::new(&aqpim).args([
        "pq",
        "synth",
        "--n",
        get("--n"),
        "--d",
        get("--d"),
        "--out",
        data_s,
    ]))?;

    let common = [
        "--input",
        data_s,
        "--m",
        get("--m"),
        "--nbits",
        get("--nbits"),
        "--iters",
        get("--iters"),
        "--threads",
        get("--threads"),
    ];
    let ours = run_ok(
        Command::new(&aqpim)
            .args(["pq", "bench", "--json", "--init", "random"])
            .args(common),
    )?;
    let theirs = run_ok(
        Command::new("python3")
            .arg(root.join("scripts/faiss_pq_bench.py"))
            .args(common),
    )
    .context("running the faiss script (needs `pip install faiss-cpu numpy`)")?;
    let _ = std::fs::remove_dir_all(&dir);

    let ours: serde_json::Value = serde_json::from_str(&ours)?;
    let theirs: serde_json::Value = serde_json::from_str(&theirs)?;
    println!("aqpim: {ours}");
    println!("faiss: {theirs}");
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "train {:.2} s vs {:.2} s ({:.2}x faster); encode {:.3} s vs {:.3} s; ADC {:.1} vs {:.1} M codes/s; MSE/vector {:.4} vs {:.4} ({:+.2} %)",
        f(&ours, "train_s"),
        f(&theirs, "train_s"),
        f(&theirs, "train_s") / f(&ours, "train_s"),
        f(&ours, "encode_s"),
        f(&theirs, "encode_s"),
        f(&ours, "adc_mcodes_per_s"),
        f(&theirs, "adc_mcodes_per_s"),
        f(&ours, "mse_per_vector"),
        f(&theirs, "mse_per_vector"),
        100.0 * (f(&ours, "mse_per_vector") / f(&theirs, "mse_per_vector") - 1.0),
    );
    Ok(())
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}
