//! `generate` and `eval ppl` on a tiny model file: a `--max-tokens` past the
//! model's context is refused before any text streams, and a model file
//! whose tensors alias each other is refused at load instead of printing a
//! NaN perplexity. `pq calibrate` takes a list of chunk lengths (one pass
//! per length) and refuses an empty or zero one; `eval ppl --skip` refuses
//! to skip past the text; `pq calibrate` without `--text` reads the default corpus
//! under the current directory, or says how to fetch it.

mod common;
#[path = "../../aqpim-decode/tests/common/mod.rs"]
mod tiny;

use common::{aqpim, assert_one_line_error, json_line, path};

#[test]
fn max_tokens_past_the_context_is_refused_before_streaming() {
    let dir = common::tempdir();
    let model = dir.path().join("tiny.gguf");
    std::fs::write(&model, tiny::tiny_model(1, true)).unwrap();
    let m = model.to_str().unwrap();
    let out = aqpim(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "the and",
        "--max-tokens",
        "1000",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "text streamed before the error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("context of 256 tokens"), "{err}");
    // Within the context it runs.
    let out = aqpim(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "the and",
        "--max-tokens",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_model_whose_tensors_alias_is_refused() {
    use aqpim_decode::gguf::GgufFile;
    let dir = common::tempdir();
    let bytes = tiny::tiny_model(1, true);
    let f = GgufFile::parse(bytes.clone()).unwrap();
    let (a, b) = (
        f.tensor("blk.0.attn_norm.weight").unwrap(),
        f.tensor("blk.1.attn_norm.weight").unwrap(),
    );
    let mut needle = (b.name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(b.name.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|x| x == needle)
        .unwrap()
        + needle.len()
        + 4
        + 8 * b.dims.len()
        + 4;
    let mut bad = bytes.clone();
    bad[at..at + 8].copy_from_slice(&a.offset.to_le_bytes());
    let model = dir.path().join("alias.gguf");
    std::fs::write(&model, bad).unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "the and the and the and the and ".repeat(8)).unwrap();
    let out = aqpim(&[
        "eval",
        "ppl",
        "--model",
        model.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--window",
        "16",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("overlaps"), "{err}");
}

#[test]
fn calibration_makes_one_pass_per_chunk_length() {
    let dir = common::tempdir();
    let model = dir.path().join("tiny.gguf");
    std::fs::write(&model, tiny::tiny_model(1, true)).unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "the and the and the and the and ".repeat(16)).unwrap();
    let (m, t) = (path(&model), path(&text));
    let spec = "pq:dsub=4,nbits=4,sinks=0,window=4";
    let calibrate = |chunk: &str, out: &std::path::Path| {
        aqpim(&[
            "pq",
            "calibrate",
            "--model",
            m,
            "--text",
            t,
            "--tokens",
            "96",
            "--kv",
            spec,
            "--chunk",
            chunk,
            "--threads",
            "1",
            "--out",
            path(out),
        ])
    };
    for bad in ["0", "32,0"] {
        assert_one_line_error(
            &calibrate(bad, &dir.path().join("bad")),
            "--chunk 0 is outside",
        );
    }
    // An empty entry is clap's error (which ends with a usage hint).
    let out = calibrate("32,,64", &dir.path().join("bad"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a count"));
    assert!(
        !dir.path().join("bad").exists(),
        "a refused --chunk wrote codebooks"
    );
    let books = dir.path().join("books");
    let out = calibrate("32,96", &books);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_line(
        &aqpim(&[
            "eval",
            "ppl",
            "--model",
            m,
            "--text",
            t,
            "--window",
            "64",
            "--prefill",
            "8",
            "--tokens",
            "128",
            "--kv",
            spec,
            "--codebooks",
            path(&books),
            "--json",
        ]),
        "eval ppl with two-length codebooks",
    );
    assert!(v["perplexity"].as_f64().unwrap().is_finite(), "{v}");
    // `--skip` scores a later part of the text, and is refused past its end.
    let eval_skip = |skip: &str| {
        aqpim(&[
            "eval", "ppl", "--model", m, "--text", t, "--window", "32", "--skip", skip, "--tokens",
            "64", "--json",
        ])
    };
    let v = json_line(&eval_skip("64"), "eval ppl --skip 64");
    assert_eq!(
        (v["skip"].as_u64(), v["text_tokens"].as_u64()),
        (Some(64), Some(64))
    );
    assert_one_line_error(&eval_skip("100K"), "--skip 102400: the text has only");
    // An empty text without --skip is refused for what it is, not for --skip.
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let out = aqpim(&[
        "eval",
        "ppl",
        "--model",
        m,
        "--text",
        path(&empty),
        "--window",
        "32",
    ]);
    assert_one_line_error(&out, "the text has 0 tokens");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("--skip"));
}

#[test]
fn calibrate_without_text_reads_the_default_corpus() {
    let dir = common::tempdir();
    let model = dir.path().join("tiny.gguf");
    std::fs::write(&model, tiny::tiny_model(1, true)).unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_aqpim"))
            .args([
                "pq",
                "calibrate",
                "--model",
                path(&model),
                "--tokens",
                "64",
                "--kv",
                "pq:dsub=4,nbits=4",
                "--threads",
                "1",
                "--out",
                "books",
            ])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    // No corpus under the current directory: a message that says how to get it.
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("default calibration corpus assets/calibration.txt is absent")
            && err.contains("cargo xtask fetch-assets"),
        "{err}"
    );
    std::fs::create_dir_all(dir.path().join("assets")).unwrap();
    std::fs::write(
        dir.path().join("assets/calibration.txt"),
        "the and the and the and the and ".repeat(16),
    )
    .unwrap();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("tokens of assets/calibration.txt"), "{err}");
    assert!(dir.path().join("books/layer000_head00_k.pqcb").exists());
}
