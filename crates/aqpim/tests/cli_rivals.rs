//! The four designs of the serving view, one system preset each
//! (`h100+attacc`, `h100+scalar-pim`, `h100+gpu-quant`, `h100+aqpim`):
//! every row names the format it holds and its measured perplexity delta,
//! `--kv` swaps the format, and a format that cannot go where asked is a
//! one-line error.

mod common;

use common::aqpim;

fn serve(system: &str, policy: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec![
        "simulate",
        "serve",
        "--model",
        "llama3-8b",
        "--system",
        system,
        "--policy",
        policy,
        "--ctx",
        "32K",
        "--pim-model",
        "analytic",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = aqpim(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn each_design_reports_its_format_and_its_accuracy() {
    for (system, policy, kv) in [
        ("h100+attacc", "attacc", "dense"),
        ("h100+scalar-pim", "scalar-pim", "scalar:bits=4,"),
        ("h100+gpu-quant", "gpu-quant", "scalar:bits=4,"),
        ("h100+aqpim", "aqpim", "pq:dsub=2,kbits=8,vbits=4,"),
    ] {
        let rows = serve(system, policy, &[]);
        assert_eq!(rows.len(), 1, "{rows:?}");
        let r = &rows[0];
        assert_eq!(r["policy"], policy);
        assert!(r["kv"].as_str().unwrap().starts_with(kv), "{r}");
        let d = r["ppl_delta"].as_f64().unwrap();
        assert!((0.0..0.02).contains(&d), "{system}: {d}");
        assert!(r["best_batch"].as_u64().unwrap() >= 1);
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn kv_swaps_the_format_and_an_unmeasured_one_has_no_delta() {
    let r = &serve(
        "h100+aqpim",
        "aqpim",
        &["--kv", "pq:kdsub=4,kbits=8,vdsub=2,vbits=4,outliers=5"],
    )[0];
    assert!(
        r["kv"].as_str().unwrap().starts_with("pq:kdsub=4,vdsub=2"),
        "{r}"
    );
    assert!(
        (r["ppl_delta"].as_f64().unwrap() - 0.0431).abs() < 5e-4,
        "{r}"
    );
    let r = &serve(
        "h100+gpu-quant",
        "gpu-quant",
        &["--kv", "scalar:bits=4,window=64"],
    )[0];
    assert!(r["ppl_delta"].is_null(), "{r}");

    let out = aqpim(&[
        "simulate",
        "serve",
        "--model",
        "llama3-8b",
        "--system",
        "h100+aqpim",
        "--policy",
        "aqpim",
        "--kv",
        "dense",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kv `dense`"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
