//! `aqpim simulate` end to end: one point as JSON, a grid as CSV (points that
//! do not fit skipped), and clear one-line errors.

mod common;

use common::aqpim;

#[test]
fn one_point_and_a_grid() {
    let out = aqpim(&[
        "simulate",
        "--model",
        "llama2-7b",
        "--system",
        "h100+host",
        "--policy",
        "offload",
        "--ctx",
        "16384",
        "--batch",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let share = v["transfer_share_of_attention"].as_f64().unwrap();
    assert!(share > 0.9 && share < 1.0, "{v}");
    let total = v["total_ms"].as_f64().unwrap();
    let parts = v["linear_ms"].as_f64().unwrap()
        + v["attention_ms"].as_f64().unwrap()
        + v["transfer_ms"].as_f64().unwrap();
    assert!((total - parts).abs() < 1e-9);

    let dir = common::tempdir();
    let csv = dir.path().join("grid.csv");
    let out = aqpim(&[
        "simulate",
        "--model",
        "llama2-7b",
        "--system",
        "h100",
        "--policy",
        "gpu",
        "--ctx",
        "4096,262144",
        "--batch",
        "1,8",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    // 4 points; 262,144 tokens need 137 GB of KV alone, more than 79.2 GiB,
    // at either batch: header + 2 rows.
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.starts_with("model,system,policy,ctx,kv,"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not fit"));
}

#[test]
fn bad_requests_are_one_line_errors() {
    for (args, needle) in [
        (
            vec![
                "simulate",
                "--model",
                "llama2-7b",
                "--system",
                "h100",
                "--ctx",
                "1000000",
                "--batch",
                "8",
            ],
            "bytes too many",
        ),
        (
            vec!["simulate", "--model", "gpt-9", "--system", "h100"],
            "taken as a model preset name",
        ),
        (
            vec![
                "simulate",
                "--model",
                "llama2-7b",
                "--system",
                "h100",
                "--policy",
                "attacc",
            ],
            "no PIM stacks",
        ),
        (
            vec![
                "simulate",
                "--model",
                "llama2-7b",
                "--system",
                "h100",
                "--policy",
                "attac",
            ],
            "not a policy",
        ),
        (
            vec![
                "simulate",
                "--model",
                "llama2-7b",
                "--system",
                "h100",
                "--policy",
                "offload",
            ],
            "no host link",
        ),
        (
            vec![
                "simulate",
                "--model",
                "llama2-7b",
                "--system",
                "h100",
                "--ctx",
                "12x",
            ],
            "--ctx",
        ),
    ] {
        let out = aqpim(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn pim_point_and_sweep() {
    let out = aqpim(&[
        "simulate",
        "--model",
        "llama2-7b",
        "--system",
        "h100+aqpim",
        "--policy",
        "aqpim",
        "--ctx",
        "32768",
        "--batch",
        "16",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["policy"], "aqpim");
    let parts: f64 = [
        "linear_ms",
        "table_ms",
        "attention_ms",
        "pim_attention_ms",
        "quantize_ms",
        "link_ms",
        "sync_ms",
        "transfer_ms",
    ]
    .iter()
    .map(|k| v[k].as_f64().unwrap())
    .sum();
    let overlapped = v["overlapped_ms"].as_f64().unwrap();
    assert!(
        (v["total_ms"].as_f64().unwrap() - (parts - overlapped)).abs() < 1e-9,
        "{v}"
    );
    assert!(v["link_ms"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["pim_bytes_used"].as_u64().unwrap() > 0);
    assert!(v["pim_bytes_used"].as_u64().unwrap() <= v["pim_capacity_bytes"].as_u64().unwrap());
    assert_eq!(v["ctx_spilled"], 0);
    // h100+aqpim's format refines its value codebooks, so they are each
    // sequence's own; key codebooks stay the model's.
    assert_eq!(v["codebooks"], "keys model, values sequence");

    let dir = common::tempdir();
    let csv = dir.path().join("sweep.csv");
    let out = aqpim(&[
        "simulate",
        "sweep",
        "--model",
        "llama2-7b",
        "--system",
        "h100+aqpim",
        "--policy",
        "gpu,offload,attacc,aqpim",
        "--ctx",
        "4096,65536",
        "--batch",
        "1,8",
        "--pim-model",
        "analytic",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    // 16 points; gpu at 64K x 8 does not fit: header + 15 rows.
    assert_eq!(text.lines().count(), 16, "{text}");
    // The capacity crossover: the FP16 cache spills, the PQ cache does not.
    // Cells hold quoted commas (kv specs, "keys model, values sequence"):
    // read the rows as CSV.
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().unwrap().clone();
    let at = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (policy_col, ctx_col, batch_col, spilled_col) =
        (at("policy"), at("ctx"), at("batch"), at("ctx_spilled"));
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let spilled = |policy: &str| -> usize {
        let row = rows
            .iter()
            .find(|r| r[policy_col] == *policy && &r[ctx_col] == "65536" && &r[batch_col] == "8")
            .unwrap_or_else(|| panic!("no {policy} row at 64K x 8 in {text}"));
        row[spilled_col].parse().unwrap()
    };
    assert!(spilled("attacc") > 0);
    assert_eq!(spilled("aqpim"), 0);
    // A sweep needs --out.
    let out = aqpim(&[
        "simulate",
        "sweep",
        "--model",
        "llama2-7b",
        "--system",
        "h100",
    ]);
    assert!(!out.status.success());
}

#[test]
fn serve_finds_a_best_batch_per_context() {
    let dir = common::tempdir();
    let csv = dir.path().join("serve.csv");
    let out = aqpim(&[
        "simulate",
        "serve",
        "--model",
        "llama2-7b",
        "--system",
        "h100+aqpim",
        "--policy",
        "attacc,aqpim",
        "--ctx",
        "32K,64K",
        "--pim-model",
        "analytic",
        "--json",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    for r in &rows {
        let best = r["best_batch"].as_u64().unwrap();
        assert!(best >= 1 && best <= r["max_batch"].as_u64().unwrap(), "{r}");
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(r["step"]["batch"].as_u64().unwrap(), best);
        assert_eq!(r["step"]["ctx_spilled"], 0);
    }
    assert_eq!(rows[0]["ctx"], 32768);
    // CSV: the serving fields, then the step's columns, one row per point.
    let csv = std::fs::read_to_string(&csv).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(
        header.starts_with("best_batch,max_batch,max_batch_in_pim,batches_timed,model,"),
        "{header}"
    );
    assert_eq!(csv.lines().count(), 5);
}

#[test]
fn a_closed_pipe_ends_the_program_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    // Thousands of rows: far more than a pipe buffers.
    let ctx: Vec<String> = (1..=400).map(|c| (c * 16).to_string()).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aqpim"))
        .args([
            "simulate",
            "--model",
            "llama2-7b",
            "--system",
            "h100",
            "--policy",
            "gpu",
            "--batch",
            "1,2,3,4,5,6,7,8",
            "--ctx",
            &ctx.join(","),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with("policy"), "{first}");
    drop(out);
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.trim().is_empty(), "{err}");
}

#[test]
fn config_files_resolve_next_to_themselves_and_say_what_they_were_taken_as() {
    let dir = common::tempdir();
    let preset = |table: &[(&str, &str)], name: &str| -> String {
        table
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
            .to_string()
    };
    // A device of 2 stacks, and a system that names it by a relative path.
    // AQPIM's device extends AttAcc's; a file that extends it in turn sets
    // only what it changes.
    let dev = format!(
        "{}\n[organisation]\nstacks = 2\n",
        preset(aqpim_pim::PRESETS, "hbm3-aqpim-5.2")
    );
    std::fs::write(dir.path().join("mydev.toml"), dev).unwrap();
    let sys = preset(aqpim_system::presets::SYSTEM_PRESETS, "h100+aqpim")
        .replace("device = \"hbm3-aqpim-5.2\"", "device = \"mydev.toml\"");
    assert!(sys.contains("mydev.toml"), "the preset's device line moved");
    let sys_path = dir.path().join("mysys.toml");
    std::fs::write(&sys_path, &sys).unwrap();
    let run = |system: &str, cwd: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_aqpim"))
            .args([
                "simulate",
                "--model",
                "llama2-7b",
                "--system",
                system,
                "--policy",
                "aqpim",
                "--ctx",
                "4K",
                "--pim-model",
                "analytic",
                "--json",
            ])
            .current_dir(cwd)
            .output()
            .unwrap()
    };
    // From another working directory, the device next to the system file loads.
    let elsewhere = common::tempdir();
    let v = common::json_line(
        &run(common::path(&sys_path), elsewhere.path()),
        "mysys.toml",
    );
    let base = common::json_line(&run("h100+aqpim", elsewhere.path()), "h100+aqpim");
    assert!(
        v["pim_capacity_bytes"].as_u64().unwrap() * 5
            == base["pim_capacity_bytes"].as_u64().unwrap() * 2,
        "{v}\n{base}"
    );
    // Stacks are the device's: a system file that sets them is refused, saying where they go.
    let stacked = dir.path().join("stacked.toml");
    std::fs::write(&stacked, sys.replace("[pim]\n", "[pim]\nstacks = 3\n")).unwrap();
    common::assert_one_line_error(
        &run(common::path(&stacked), elsewhere.path()),
        "[organisation] stacks",
    );
    // Errors say whether a name was taken as a preset or a path, and what was tried.
    common::assert_one_line_error(
        &run("h100+nope", elsewhere.path()),
        "taken as a system preset name",
    );
    let missing = run("missing.toml", elsewhere.path());
    common::assert_one_line_error(&missing, "taken as a system file path");
    common::assert_one_line_error(&missing, "missing.toml");
    let bad_dev = dir.path().join("baddev.toml");
    std::fs::write(
        &bad_dev,
        sys.replace("device = \"mydev.toml\"", "device = \"nodev.toml\""),
    )
    .unwrap();
    common::assert_one_line_error(
        &run(common::path(&bad_dev), elsewhere.path()),
        "no such file (tried",
    );
}

/// `serve` reports a point where not even one sequence fits, naming the
/// bytes, skips it and gives the other rows.
#[test]
fn serve_skips_what_does_not_fit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aqpim"))
        .args([
            "simulate",
            "serve",
            "--model",
            "llama2-13b",
            "--system",
            "h100+aqpim",
            "--policy",
            "gpu,aqpim",
            "--ctx",
            "128K",
            "--pim-model",
            "analytic",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("skipped (does not fit): gpu ctx 131072")
            && err.contains("133405081600 bytes"),
        "{err}"
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["policy"], "aqpim");
}

/// `--policy` has one default in every command: the design the system is
/// built for.
#[test]
fn policy_defaults_to_the_systems_own_design() {
    for (cmd, system, want) in [
        (vec!["simulate"], "h100+attacc", "attacc"),
        (vec!["simulate"], "h100+host", "offload"),
        (vec!["simulate", "serve"], "h100+gpu-quant", "gpu-quant"),
        (vec!["simulate", "serve"], "h100", "gpu"),
    ] {
        let mut args = cmd.clone();
        args.extend([
            "--model",
            "llama2-7b",
            "--system",
            system,
            "--ctx",
            "4K",
            "--pim-model",
            "analytic",
            "--json",
        ]);
        let out = aqpim(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["policy"], want, "{args:?}: {v}");
    }
}
