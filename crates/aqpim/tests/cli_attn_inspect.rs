//! `aqpim attn sim --breakdown` and `--dump DIR`: the phases (one JSON line)
//! sum to the step within 1 %, the table names them, and the dumped
//! programs run under `aqpim sim run --check --trace` with the cycles the
//! step reports per layer.

mod common;

use common::aqpim;
use std::process::Output;

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The step's job, less its shape.
const JOB: &[&str] = &[
    "attn",
    "sim",
    "--ctx",
    "3020",
    "--kv",
    "pq:dsub=4,nbits=8,sinks=4,window=16",
    "--quantize",
];

#[test]
fn breakdown_phases_sum_to_the_step_on_one_json_line() {
    let mut args = JOB.to_vec();
    args.extend(["--model-shape", "2,4,128", "--breakdown", "--json"]);
    let text = ok(&aqpim(&args));
    assert_eq!(text.trim_end().lines().count(), 1, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let phases = json["phases"].as_array().expect("a phases array");
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    for want in [
        "broadcast",
        "scoring",
        "softmax",
        "histogram",
        "bins_codebook",
        "reduction",
        "fp16_window",
        "quantization",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let sum = |key: &str| phases.iter().map(|p| p[key].as_f64().unwrap()).sum::<f64>();
    let close = |a: f64, b: f64| (a - b).abs() <= 0.01 * b;
    assert!(close(sum("time_cycles"), json["cycles"].as_f64().unwrap()));
    assert!(close(sum("time_ms"), json["time_ms"].as_f64().unwrap()));
    assert!(close(sum("energy_uj"), json["energy_uj"].as_f64().unwrap()));
    assert!(close(sum("commands"), json["commands"].as_f64().unwrap()));
    assert!(close(
        sum("internal_bytes"),
        json["internal_bytes"].as_f64().unwrap()
    ));
    // Without --breakdown the key is absent; the totals are the same.
    let mut plain = JOB.to_vec();
    plain.extend(["--model-shape", "2,4,128", "--json"]);
    let p: serde_json::Value = serde_json::from_str(&ok(&aqpim(&plain))).unwrap();
    assert!(p.get("phases").is_none());
    assert_eq!(p["cycles"], json["cycles"]);
    // The table.
    let mut table = JOB.to_vec();
    table.extend(["--model-shape", "2,4,128", "--breakdown"]);
    let text = ok(&aqpim(&table));
    assert!(
        text.contains("bins x codebook") && text.contains("time us"),
        "{text}"
    );
}

#[test]
fn dumped_programs_run_and_check_in_sim_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("dump");
    let mut args = JOB.to_vec();
    args.extend(["--model-shape", "1,4,128", "--json", "--dump"]);
    args.push(d.to_str().unwrap());
    let step: serde_json::Value = serde_json::from_str(&ok(&aqpim(&args))).unwrap();
    let host = d.join("layer.host");
    let trace = dir.path().join("trace.jsonl");
    for file in ["layer.pim", "head.pim"] {
        let out = aqpim(&[
            "sim",
            "run",
            d.join(file).to_str().unwrap(),
            "--host-data",
            host.to_str().unwrap(),
            "--check",
            "--trace",
            trace.to_str().unwrap(),
            "--json",
        ]);
        let run: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
        assert_eq!(run["trace_checked"], true);
        let lines = std::fs::read_to_string(&trace).unwrap().lines().count() as u64;
        assert_eq!(Some(lines), run["stats"]["total_commands"].as_u64());
        if file == "layer.pim" {
            // One layer: the step's cycles (layers = 1), functional mode included.
            assert_eq!(run["stats"]["cycles"], step["cycles"]);
        }
    }
    let text = std::fs::read_to_string(d.join("layer.pim")).unwrap();
    assert!(text.contains("# phase: bins_codebook"), "{}", &text[..400]);
}
