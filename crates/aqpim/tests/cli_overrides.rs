//! `--set` overrides, printed presets and sharded sweeps, end to end: an
//! override equals the same figure edited in a copied preset file, a printed
//! preset loads back to the same results, and shards run as separate
//! processes merge into the unsharded sweep's bytes.

mod common;

use common::{aqpim, assert_ok, path, tempdir};
use serde_json::Value;

/// The JSON lines of a successful run.
fn json_lines(out: &std::process::Output, what: &str) -> Vec<Value> {
    assert_ok(out, what);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: {e}: {l}")))
        .collect()
}

/// Rows with the keys that name the run (`system`, `overrides`) removed:
/// what is left are the figures.
fn figures(rows: Vec<Value>) -> Vec<Value> {
    rows.into_iter()
        .map(|mut r| {
            let m = r.as_object_mut().expect("a JSON object");
            m.remove("system");
            m.remove("overrides");
            r
        })
        .collect()
}

/// `simulate` of attacc and aqpim at one small point, analytic PIM cost.
fn point(system: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "simulate",
        "--model",
        "llama2-7b",
        "--system",
        system,
        "--policy",
        "attacc,aqpim",
        "--ctx",
        "4K",
        "--batch",
        "4",
        "--pim-model",
        "analytic",
        "--json",
    ];
    args.extend_from_slice(extra);
    json_lines(&aqpim(&args), system)
}

fn show(name: &str) -> String {
    let out = aqpim(&["presets", "show", name]);
    assert_ok(&out, name);
    String::from_utf8(out.stdout).expect("utf-8 TOML")
}

#[test]
fn an_override_equals_the_edited_file() {
    let dir = tempdir();
    let text = show("h100+aqpim");
    assert!(text.contains("link_gbps = 600.0"), "{text}");
    let file = dir.path().join("pcie5.toml");
    std::fs::write(&file, text.replace("link_gbps = 600.0", "link_gbps = 128")).unwrap();

    let set = point("h100+aqpim", &["--set", "pim.link_gbps=128"]);
    let edited = point(path(&file), &[]);
    let plain = point("h100+aqpim", &[]);
    assert_eq!(set.len(), 2);
    assert_eq!(set[1]["overrides"], "pim.link_gbps=128");
    assert_eq!(set[1]["system"], "h100+aqpim --set pim.link_gbps=128");
    assert_eq!(plain[1]["overrides"], "");
    assert_eq!(figures(set.clone()), figures(edited));
    // The link is slower: aqpim's step is longer than on the shipped preset.
    let ms = |rows: &[Value]| rows[1]["total_ms"].as_f64().unwrap();
    assert!(ms(&set) > ms(&plain), "{} <= {}", ms(&set), ms(&plain));
}

#[test]
fn device_overrides_reach_every_policy_and_are_checked() {
    let plain = point("h100+aqpim", &[]);
    let slow = point("h100+aqpim", &["--set", "device.pim.n_ccdab=16"]);
    for (p, s) in plain.iter().zip(&slow) {
        let (a, b) = (
            p["pim_attention_ms"].as_f64().unwrap(),
            s["pim_attention_ms"].as_f64().unwrap(),
        );
        assert!(b > a, "{}: {b} <= {a}", p["policy"]);
    }
    for (set, needle) in [
        ("pim.link_gbsp=128", "unknown field `link_gbsp`"),
        ("pim.link_gbps=-1", "pim.link_gbps = -1"),
        ("pim.link_gbps=fast", "invalid type: string \"fast\""),
        ("device.pim.n_ccdabb=6", "unknown field `n_ccdabb`"),
        ("gpu.name.x=1", "`gpu.name` is a string, not a table"),
    ] {
        let out = aqpim(&[
            "simulate",
            "--model",
            "llama2-7b",
            "--system",
            "h100+aqpim",
            "--set",
            set,
        ]);
        common::assert_one_line_error(&out, needle);
    }
    let out = aqpim(&[
        "simulate",
        "--model",
        "llama2-7b",
        "--system",
        "h100",
        "--set",
        "device.pim.n_ccdab=6",
    ]);
    common::assert_one_line_error(&out, "no PIM device");
}

#[test]
fn a_printed_preset_loads_to_the_same_results() {
    let dir = tempdir();
    let system = dir.path().join("h100+aqpim.toml");
    std::fs::write(&system, show("h100+aqpim")).unwrap();
    let model = dir.path().join("llama2-7b.toml");
    std::fs::write(&model, show("llama2-7b")).unwrap();
    let device = dir.path().join("dev.toml");
    std::fs::write(&device, show("hbm3-aqpim-5.2")).unwrap();
    assert_eq!(point(path(&system), &[]), point("h100+aqpim", &[]));
    let out = aqpim(&[
        "simulate",
        "--model",
        path(&model),
        "--system",
        "h100",
        "--json",
    ]);
    let from_file = json_lines(&out, "model file");
    let out = aqpim(&[
        "simulate",
        "--model",
        "llama2-7b",
        "--system",
        "h100",
        "--json",
    ]);
    let mut named = json_lines(&out, "model preset");
    named[0]["model"] = from_file[0]["model"].clone();
    assert_eq!(from_file, named);
    // A device that extends another loads from its printed text.
    let sim = |dev: &str| {
        let out = aqpim(&[
            "attn",
            "sim",
            "--model-shape",
            "2,2,128",
            "--ctx",
            "1K",
            "--device",
            dev,
            "--json",
        ]);
        let mut v = common::json_line(&out, dev);
        v.as_object_mut().unwrap().remove("wall_s");
        v
    };
    assert_eq!(sim(path(&device)), sim("hbm3-aqpim-5.2"));
    let list = aqpim(&["presets", "list"]);
    assert_ok(&list, "presets list");
    let text = String::from_utf8_lossy(&list.stdout);
    for name in ["llama2-7b", "h100+aqpim", "hbm3-aqpim-5.2"] {
        assert!(text.contains(name), "{text}");
    }
}

#[test]
fn shards_merge_into_the_unsharded_bytes() {
    let dir = tempdir();
    // 12 points; gpu at 256K does not fit at either batch and is skipped.
    let grid = [
        "simulate",
        "sweep",
        "--model",
        "llama2-7b",
        "--system",
        "h100+aqpim",
        "--policy",
        "gpu,attacc,aqpim",
        "--ctx",
        "4K,256K",
        "--batch",
        "1,8",
        "--pim-model",
        "analytic",
        "--set",
        "pim.kv=pq:dsub=2,kbits=8,vbits=4",
    ];
    let whole = dir.path().join("whole.csv");
    let mut args = grid.to_vec();
    args.extend(["--out", path(&whole)]);
    assert_ok(&aqpim(&args), "unsharded sweep");
    let mut shards = Vec::new();
    for i in 0..3 {
        let f = dir.path().join(format!("shard-{i}.csv"));
        let shard = format!("{i}/3");
        let mut args = grid.to_vec();
        args.extend(["--shard", &shard, "--out", path(&f)]);
        assert_ok(&aqpim(&args), &shard);
        shards.push(f);
    }
    let merged = dir.path().join("merged.csv");
    let mut args = vec!["simulate", "merge", "--out", path(&merged)];
    // In reverse, to show that the order of the files does not matter.
    args.extend(shards.iter().rev().map(|f| path(f)));
    assert_ok(&aqpim(&args), "merge");
    let whole = std::fs::read(&whole).unwrap();
    let text = String::from_utf8_lossy(&whole);
    assert!(text.starts_with("index,model,system,"), "{text}");
    assert!(text.contains(",\"pq:dsub=2,kbits=8,vbits=4\"") || text.contains("pim.kv="));
    assert_eq!(text.lines().count(), 1 + 10, "{text}");
    assert_eq!(std::fs::read(&merged).unwrap(), whole);

    // A shard given twice, or one missing, is refused.
    let mut args = vec!["simulate", "merge", "--out", path(&merged)];
    args.extend([path(&shards[0]), path(&shards[0])]);
    common::assert_one_line_error(&aqpim(&args), "each shard once");
    let mut args = vec!["simulate", "merge", "--out", path(&merged)];
    args.extend([path(&shards[0]), path(&shards[1])]);
    common::assert_one_line_error(&aqpim(&args), "not of one shard of 2");
}
