//! `aqpim attn sim` end to end: the step's cost is the library's layer cost
//! times the layers, and bad shapes, kinds and placements are one-line errors.

mod common;

use aqpim_attn::pim::{simulate_layer, LayerJob, PimKind};
use aqpim_pim::Device;
use common::aqpim;

#[test]
fn sim_json_is_layers_times_the_library_layer_cost() {
    for (kind, kv) in [
        ("pq", "pq:dsub=4,nbits=8,sinks=0,window=0"),
        ("fp16", "fp16"),
    ] {
        let out = aqpim(&[
            "attn",
            "sim",
            "--model-shape",
            "3,4,64",
            "--ctx",
            "3000",
            "--batch",
            "2",
            "--kv",
            kv,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        let job = LayerJob {
            kind: if kind == "pq" {
                PimKind::pq(4, 8)
            } else {
                PimKind::Fp16
            },
            head_dim: 64,
            heads: 8,
            kv_heads: 4,
            group: 1,
            ctx: 3000,
            fp_tokens: 0,
            quantize: false,
            codebooks: aqpim_kvcache::CodebookScope::Model,
            placement: aqpim_attn::pim::Placement::Spread,
        };
        // Each design's own device by default.
        let device = if kind == "pq" {
            "hbm3-aqpim-5.2"
        } else {
            "hbm3-attacc-5.2"
        };
        let layer = simulate_layer(&Device::preset(device).unwrap(), &job).unwrap();
        assert_eq!(json["cycles"].as_u64(), Some(3 * layer.cycles), "{kind}");
        assert_eq!(json["mode"], "timing-only");
    }
}

#[test]
fn functional_mode_times_like_timing_only() {
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "attn",
            "sim",
            "--model-shape",
            "1,2,128",
            "--ctx",
            "720",
            "--kv",
            "pq:dsub=4,nbits=8,sinks=4,window=16",
            "--quantize",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = aqpim(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let t = run(&[]);
    let f = run(&["--functional"]);
    assert_eq!(t["fp_tokens"], 20);
    assert_eq!(t["encoded_tokens"], 700);
    assert_eq!(t["cycles"], f["cycles"]);
    assert_eq!(t["commands"], f["commands"]);
    assert_eq!(f["mode"], "functional");
}

#[test]
fn model_presets_and_sizes_with_suffixes() {
    // The bar: a preset, `32K`, a `--kv` spec, one JSON line.
    let out = aqpim(&[
        "attn",
        "sim",
        "--model",
        "llama2-7b",
        "--ctx",
        "32K",
        "--kv",
        "pq:dsub=4,nbits=8",
        "--json",
    ]);
    let v = common::json_line(&out, "attn sim --model llama2-7b");
    assert_eq!(v["ctx"], 32768);
    assert_eq!(v["layers"], 32);
    assert_eq!(v["kind"], "pq");
    // The same shape given explicitly gives the same cycles.
    let out = aqpim(&[
        "attn",
        "sim",
        "--model-shape",
        "32,32,128",
        "--ctx",
        "32768",
        "--kv",
        "pq:dsub=4,nbits=8",
        "--json",
    ]);
    assert_eq!(
        common::json_line(&out, "--model-shape")["cycles"],
        v["cycles"]
    );
    // The table names its units.
    let out = aqpim(&["attn", "sim", "--model", "llama2-7b", "--ctx", "4K"]);
    common::assert_ok(&out, "attn sim table");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(" ms ") && table.contains(" uJ"), "{table}");
    // Both shape flags at once, and an unknown preset, are refused.
    let out = aqpim(&[
        "attn",
        "sim",
        "--model",
        "llama2-7b",
        "--model-shape",
        "1,1,64",
        "--ctx",
        "64",
    ]);
    assert!(!out.status.success());
    let out = aqpim(&["attn", "sim", "--model", "llama9", "--ctx", "64"]);
    common::assert_one_line_error(&out, "llama9");
}

#[test]
fn bad_input_is_a_one_line_error() {
    for (args, needle) in [
        (vec!["--model-shape", "32,32", "--ctx", "10"], "L,H,D"),
        (
            vec!["--model-shape", "32,32,128", "--ctx", "10", "--kv", "int8"],
            "int8",
        ),
        (
            vec!["--model-shape", "32,32,12", "--ctx", "10", "--kv", "fp16"],
            "head dimension 12",
        ),
        (
            vec![
                "--model-shape",
                "32,32,128",
                "--ctx",
                "10",
                "--device",
                "nope",
            ],
            "nope",
        ),
        // Llama-2-7B at 128K tokens x 32 sequences in FP16: far beyond the stacks.
        (
            vec![
                "--model-shape",
                "32,32,128",
                "--ctx",
                "131072",
                "--batch",
                "32",
                "--kv",
                "fp16",
            ],
            "over",
        ),
    ] {
        let mut all = vec!["attn", "sim"];
        all.extend(args.iter().copied());
        let out = aqpim(&all);
        assert!(!out.status.success(), "{all:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{all:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{all:?}: {err}");
    }
}
