//! The `aqpim kv` commands end to end: `stats` prints the library's
//! accounting, bad shapes and specs end with a one-line error naming them.

mod common;

use aqpim_kvcache::{account, KvShape, KvSpec};
use common::aqpim;

#[test]
fn stats_json_is_the_library_accounting() {
    for spec in [
        "dense",
        "scalar:bits=2,group=32,window=128",
        "pq:dsub=4,nbits=8,sinks=4,window=128",
    ] {
        let out = aqpim(&[
            "kv",
            "stats",
            "--model-shape",
            "32,32,128",
            "--ctx",
            "131072",
            "--kv",
            spec,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{spec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        let want = account(
            &KvShape::llama2_7b(),
            &spec.parse::<KvSpec>().unwrap(),
            131_072,
        )
        .unwrap();
        assert_eq!(
            json["total_bytes"].as_u64(),
            Some(want.total_bytes),
            "{spec}"
        );
        assert_eq!(json["fp16_bytes"].as_u64(), Some(want.fp16_bytes), "{spec}");
        assert_eq!(
            json["bits_per_element"]["total"].as_f64(),
            Some(want.bits_per_element.total),
            "{spec}"
        );
    }
    // The table form, with grouped-query heads.
    let out = aqpim(&[
        "kv",
        "stats",
        "--model-shape",
        "30,3,64",
        "--q-heads",
        "9",
        "--ctx",
        "4096",
        "--kv",
        "pq:dsub=4,nbits=4",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("bits per element"));
}

#[test]
fn presets_suffixes_and_wording() {
    // `--model` and `--ctx 128K` give what the explicit shape gives.
    let preset = aqpim(&[
        "kv",
        "stats",
        "--model",
        "llama2-7b",
        "--ctx",
        "128K",
        "--kv",
        "fp16",
        "--json",
    ]);
    let v = common::json_line(&preset, "kv stats --model");
    let explicit = aqpim(&[
        "kv",
        "stats",
        "--model-shape",
        "32,32,128",
        "--ctx",
        "131072",
        "--kv",
        "dense",
        "--json",
    ]);
    assert_eq!(v, common::json_line(&explicit, "kv stats --model-shape"));
    // The dense cache is called fp16 in output.
    assert_eq!(v["spec"], "fp16");
    let table = aqpim(&[
        "kv",
        "stats",
        "--model",
        "llama2-7b",
        "--ctx",
        "4K",
        "--kv",
        "fp16",
    ]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("tokens per sequence") && text.contains("fp16"),
        "{text}"
    );
    assert!(!text.contains("recent window"), "{text}");
    let table = aqpim(&["kv", "stats", "--model", "llama2-7b", "--ctx", "4K"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("token-layers"), "{text}");
}

#[test]
fn bad_input_is_one_line_and_names_it() {
    for (args, needle) in [
        (
            vec!["--model-shape", "32,32", "--ctx", "8", "--kv", "dense"],
            "--model-shape",
        ),
        (
            vec![
                "--model-shape",
                "32,32,128",
                "--ctx",
                "8",
                "--kv",
                "pq:dsub=4,nbitz=8",
            ],
            "`nbitz`",
        ),
        (
            vec![
                "--model-shape",
                "32,32,128",
                "--ctx",
                "8",
                "--kv",
                "pq:dsub=3",
            ],
            "dsub = 3",
        ),
        (
            vec![
                "--model-shape",
                "4,3,64",
                "--q-heads",
                "8",
                "--ctx",
                "8",
                "--kv",
                "dense",
            ],
            "query heads",
        ),
    ] {
        let mut all = vec!["kv", "stats"];
        all.extend(args);
        let out = aqpim(&all);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error: ")
                && err.trim_end().lines().count() == 1
                && err.contains(needle),
            "{err}"
        );
    }
}

#[test]
fn wide_layers_are_counted_and_refused_where_unpriced() {
    // One layer of 32 with 8-bit values beside 4-bit ones: every encoded
    // token of that layer takes 64 value-code bytes a head, not 32.
    let stats = |kv: &str| {
        let out = aqpim(&[
            "kv",
            "stats",
            "--model",
            "llama2-7b",
            "--ctx",
            "32K",
            "--kv",
            kv,
            "--json",
        ]);
        common::json_line(&out, "kv stats")
    };
    let base = "pq:dsub=2,kbits=8,vbits=4";
    let (plain, wide) = (
        stats(base),
        stats(&format!("{base},wide_layers=18,wide_vbits=8")),
    );
    assert!(
        wide["spec"]
            .as_str()
            .unwrap()
            .contains("wide_layers=18,wide_kdsub=2,wide_kbits=8,wide_vdsub=2,wide_vbits=8"),
        "{wide}"
    );
    let encoded = plain["tokens_by_region"]["encoded"].as_u64().unwrap() / 32;
    let codes = |v: &serde_json::Value| v["bytes"]["value_codes"].as_u64().unwrap();
    assert_eq!(codes(&wide) - codes(&plain), encoded * 32 * 32);
    // The system model prices one format per cache and says so.
    let out = aqpim(&[
        "simulate",
        "--model",
        "llama2-7b",
        "--system",
        "h100+aqpim",
        "--policy",
        "aqpim",
        "--ctx",
        "4K",
        "--batch",
        "1",
        "--kv",
        &format!("{base},wide_layers=18,wide_vbits=8"),
        "--pim-model",
        "analytic",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wide_layers") && err.lines().count() == 1,
        "{err}"
    );
}
