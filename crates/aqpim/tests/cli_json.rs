//! The output convention (docs/cli.md): every subcommand's `--json` prints
//! exactly one line per result that parses as one JSON object, on small
//! inputs. The model commands run on a tiny generated GGUF model; the real
//! model of `assets/` is used too when it is there (it is not committed).

mod common;
#[path = "../../aqpim-decode/tests/common/mod.rs"]
mod tiny;

use common::{aqpim, json_line, path};

const PROGRAM: &str = "ACTAB ch=0 row=7\nLOOP 32 col=1 reg=1\n  LUTACC ch=0 col=0 bits=8 group=32 table=0 reg=0\nENDLOOP\nPREAB ch=0\n";

#[test]
fn every_json_output_is_one_line_of_one_object() {
    let dir = common::tempdir();
    let x = dir.path().join("x.npy");
    let cb = dir.path().join("x.pqcb");
    let codes = dir.path().join("c.npy");
    let prog = dir.path().join("p.pim");
    std::fs::write(&prog, PROGRAM).unwrap();
    let (xs, cbs, cs) = (path(&x), path(&cb), path(&codes));
    common::assert_ok(
        &aqpim(&["pq", "synth", "--n", "300", "--d", "8", "--out", xs]),
        "synth",
    );
    common::assert_ok(
        &aqpim(&[
            "pq", "train", "--input", xs, "--m", "2", "--nbits", "4", "--iters", "2", "--out", cbs,
        ]),
        "train",
    );
    common::assert_ok(
        &aqpim(&[
            "pq",
            "encode",
            "--codebook",
            cbs,
            "--input",
            xs,
            "--out",
            cs,
        ]),
        "encode",
    );
    let runs: &[&[&str]] = &[
        &[
            "pq", "bench", "--input", xs, "--m", "2", "--nbits", "4", "--iters", "2",
        ],
        &["pq", "info", cbs],
        &["pq", "info", cs],
        &["kv", "stats", "--model", "llama2-7b", "--ctx", "32K"],
        &[
            "kv",
            "stats",
            "--model-shape",
            "2,2,64",
            "--ctx",
            "1K",
            "--kv",
            "fp16",
        ],
        &[
            "kv",
            "bench",
            "--model-shape",
            "2,2,64",
            "--kv",
            "pq:dsub=4,nbits=4,sinks=0,window=8",
            "--prefill",
            "64",
            "--steps",
            "2",
        ],
        &["attn", "sim", "--model-shape", "2,2,64", "--ctx", "1K"],
        &[
            "attn",
            "sim",
            "--model",
            "smollm2-135m",
            "--ctx",
            "2K",
            "--kv",
            "fp16",
        ],
        &[
            "attn",
            "bench",
            "--model-shape",
            "1,2,64",
            "--ctx",
            "512",
            "--reps",
            "1",
            "--kv",
            "pq:dsub=4,nbits=4,sinks=0,window=16,iters=2",
        ],
        &["sim", "run", path(&prog), "--timing-only"],
        &[
            "sim",
            "bench",
            "--device",
            "hbm3-jedec-6.4",
            "--channels",
            "2",
            "--rows",
            "20",
        ],
        &[
            "simulate",
            "--model",
            "llama2-7b",
            "--system",
            "h100",
            "--ctx",
            "4K",
        ],
        &[
            "simulate",
            "serve",
            "--model",
            "llama2-7b",
            "--system",
            "h100",
            "--policy",
            "gpu",
            "--ctx",
            "4K",
        ],
    ];
    for args in runs {
        let mut all = args.to_vec();
        all.push("--json");
        json_line(&aqpim(&all), &all.join(" "));
    }

    // The model commands, on a tiny generated model.
    let model = dir.path().join("tiny.gguf");
    std::fs::write(&model, tiny::tiny_model(1, true)).unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "the and the and the and the and ".repeat(8)).unwrap();
    let (m, t) = (path(&model), path(&text));
    let v = json_line(
        &aqpim(&[
            "eval", "ppl", "--model", m, "--text", t, "--window", "32", "--tokens", "64", "--json",
        ]),
        "eval ppl",
    );
    // The default prefill (at most half a window) leaves at least half of
    // each window to the decode path.
    assert_eq!(v["prefill"], 16);
    assert!(
        v["decode_tokens"].as_u64().unwrap() >= v["prefill_tokens"].as_u64().unwrap(),
        "{v}"
    );
    // The FP16 cache against itself: no divergence, full agreement.
    assert_eq!(
        (&v["kld_mean"], &v["kld_p99"], &v["top1_agreement"]),
        (&0.0.into(), &0.0.into(), &1.0.into()),
        "{v}"
    );
    assert_eq!(v["fp16_perplexity"], v["perplexity"], "{v}");
    let v = json_line(
        &aqpim(&[
            "eval",
            "ppl",
            "--model",
            m,
            "--text",
            t,
            "--window",
            "32",
            "--kv",
            "pq:dsub=4,nbits=4,sinks=0,window=4,train_min=16",
            "--json",
        ]),
        "eval ppl pq",
    );
    // A PQ cache strays from the FP16 reference: a positive divergence, its
    // 99th percentile at least the mean, agreement a share.
    let (mean, p99, top1) = (
        v["kld_mean"].as_f64().unwrap(),
        v["kld_p99"].as_f64().unwrap(),
        v["top1_agreement"].as_f64().unwrap(),
    );
    assert!(
        mean > 0.0 && p99 >= mean && (0.0..=1.0).contains(&top1),
        "{v}"
    );
    let v = json_line(
        &aqpim(&[
            "eval", "ppl", "--model", m, "--text", t, "--window", "32", "--kv", "f32", "--no-kld",
            "--json",
        ]),
        "eval ppl --no-kld",
    );
    assert!(
        v["kld_mean"].is_null() && v["top1_agreement"].is_null(),
        "{v}"
    );
    // Generation through the FP16 cache, then through a PQ cache that never
    // reads a code (three tokens stay in its FP16 window), which says so.
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            m,
            "--prompt",
            "the and",
            "--max-tokens",
            "3",
            "--json",
        ];
        args.extend_from_slice(extra);
        aqpim(&args)
    };
    json_line(&generate(&[]), "generate");
    let out = generate(&["--kv", "pq:dsub=2,nbits=4"]);
    json_line(&out, "generate through an unused PQ cache");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no token was read from codes"), "{err}");

    // The real model, when the repository's ignored assets/ folder has it.
    let real = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/SmolLM2-135M-Instruct.Q4_1.gguf");
    if real.exists() {
        json_line(
            &aqpim(&[
                "generate",
                "--model",
                path(&real),
                "--prompt",
                "Hello",
                "--max-tokens",
                "2",
                "--json",
            ]),
            "generate (real model)",
        );
    } else {
        eprintln!("skipped the real-model run: {} is absent", real.display());
    }
}

#[test]
fn a_compressed_cache_that_decodes_nothing_is_warned_about() {
    let dir = common::tempdir();
    let model = dir.path().join("tiny.gguf");
    std::fs::write(&model, tiny::tiny_model(1, true)).unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "the and the and the and the and ".repeat(8)).unwrap();
    let out = aqpim(&[
        "eval",
        "ppl",
        "--model",
        path(&model),
        "--text",
        path(&text),
        "--window",
        "32",
        "--prefill",
        "64",
        "--kv",
        "pq:dsub=4,nbits=4,sinks=0,window=4,train_min=16",
        "--json",
    ]);
    let v = json_line(&out, "eval ppl --prefill 64");
    assert_eq!(v["decode_tokens"], 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: no token was decoded"), "{err}");
    // The breakdown sums to the total.
    let sum: f64 = [
        "bits_codes",
        "bits_codebooks",
        "bits_fp16_tokens",
        "bits_scales",
    ]
    .iter()
    .map(|k| v[k].as_f64().unwrap())
    .sum();
    assert!(sum > 0.0, "{v}");
}

#[test]
fn eval_layers_splits_the_loss_as_eval_ppl_measures_it() {
    // The tiny model has two layers: `eval layers` must give, for each, what
    // `eval ppl` gives with the other layer kept in FP16, and for FP16 and
    // the whole format what `eval ppl` gives for them.
    let dir = common::tempdir();
    let model = dir.path().join("tiny.gguf");
    std::fs::write(&model, tiny::tiny_model(3, true)).unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "the and the and and the the and ".repeat(8)).unwrap();
    let (m, t) = (path(&model), path(&text));
    let kv = "pq:dsub=4,nbits=4,sinks=0,window=4,train_min=16";
    let common_args = [
        "--model", m, "--text", t, "--window", "32", "--tokens", "64",
    ];
    let ppl = |kv: &str| {
        let mut args = vec!["eval", "ppl", "--kv", kv, "--no-kld", "--json"];
        args.extend_from_slice(&common_args);
        json_line(&aqpim(&args), kv)["perplexity"].as_f64().unwrap()
    };
    let mut args = vec!["eval", "layers", "--kv", kv, "--threads", "2", "--json"];
    args.extend_from_slice(&common_args);
    let v = json_line(&aqpim(&args), "eval layers");
    assert_eq!(v["fp16_perplexity"].as_f64().unwrap(), ppl("fp16"), "{v}");
    assert_eq!(v["all_coded_perplexity"].as_f64().unwrap(), ppl(kv), "{v}");
    let rows = v["layers"].as_array().unwrap();
    assert_eq!(rows.len(), tiny::LAYERS, "{v}");
    for (l, other) in [(0, 1), (1, 0)] {
        assert_eq!(rows[l]["layer"], l);
        let alone = ppl(&format!("{kv},fp16_layers={other}"));
        assert_eq!(
            rows[l]["perplexity"].as_f64().unwrap(),
            alone,
            "layer {l}: {v}"
        );
    }
    // The loss is the format's: a coded layer strays from FP16.
    assert_ne!(v["all_coded_perplexity"], v["fp16_perplexity"], "{v}");
    // One layer by `--layers`; a layer the model lacks, a `--kv` that is not
    // PQ or already names FP16 layers, are refused.
    let mut one = args.clone();
    one.extend_from_slice(&["--layers", "1"]);
    let w = json_line(&aqpim(&one), "eval layers --layers 1");
    assert_eq!(w["layers"].as_array().unwrap().len(), 1);
    assert_eq!(w["layers"][0], rows[1]);
    for (bad, needle) in [
        (
            vec!["--layers", "2"],
            "names layer 2, but the model has 2 layers",
        ),
        (vec!["--layers", "1-0"], "runs backwards"),
    ] {
        let mut a = args.clone();
        a.extend_from_slice(&bad);
        let out = aqpim(&a);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{err}");
    }
    for (bad_kv, needle) in [
        ("fp16", "splits a `pq:` format's loss"),
        ("scalar:bits=4", "splits a `pq:` format's loss"),
        ("pq:dsub=4,fp16_layers=0", "names `fp16_layers`"),
    ] {
        let mut a = vec!["eval", "layers", "--kv", bad_kv, "--json"];
        a.extend_from_slice(&common_args);
        let out = aqpim(&a);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{bad_kv}: {err}");
    }
}
