//! `aqpim eval retrieval` on a tiny random model: the plumbing (trials per
//! depth, one-line JSON, the prompt form chosen) and its bounds (a depth past
//! the model's context, a prompt form the model lacks), not accuracy.

#[path = "../../aqpim-decode/tests/common/mod.rs"]
mod common;

use std::process::Command;

fn aqpim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aqpim"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("running aqpim")
}

fn files() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    std::fs::write(&model, common::tiny_model(1, true)).unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(
        &text,
        "the wing and the thing. on the 12 and the ring! ".repeat(40),
    )
    .unwrap();
    let (m, t) = (
        model.to_str().unwrap().to_string(),
        text.to_str().unwrap().to_string(),
    );
    (dir, m, t)
}

#[test]
fn trials_run_per_depth_and_seed() {
    let (_dir, m, t) = files();
    for kv in ["fp16", "pq:dsub=2,nbits=4,sinks=2,window=8"] {
        let out = aqpim(&[
            "eval",
            "retrieval",
            "--model",
            &m,
            "--text",
            &t,
            "--depths",
            "128,200",
            "--seeds",
            "2",
            "--answer-tokens",
            "4",
            "--kv",
            kv,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.trim_end().lines().count(), 1, "{stdout}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        // The tiny vocabulary has `<|im_start|>` but no `<|im_end|>`: plain form.
        assert_eq!(v["prompt"], "plain");
        assert_eq!(v["trials"], 4);
        let depths = v["depths"].as_array().unwrap();
        assert_eq!(depths.len(), 2);
        assert_eq!(depths[0]["depth_tokens"], 128);
        assert_eq!(depths[1]["trials"], 2);
        let acc = v["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        let runs = v["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 4);
        for r in runs {
            let n = r["number"].as_u64().unwrap();
            assert!((10_000..100_000).contains(&n));
            let correct = r["correct"].as_bool().unwrap();
            let answer = r["answer"].as_str().unwrap();
            let digits: String = answer
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(char::is_ascii_digit)
                .collect();
            assert_eq!(correct, digits == n.to_string(), "{r}");
        }
    }
}

#[test]
fn depths_past_the_context_and_missing_templates_are_refused() {
    let (_dir, m, t) = files();
    let base = ["eval", "retrieval", "--model", &m, "--text", &t];
    for (extra, needle) in [
        (
            &["--depths", "128,1K"][..],
            "1024 tokens exceed the model's context of 256 tokens",
        ),
        (&["--depths", "20"][..], "fixed part"),
        (&["--depths", "12Q"][..], "--depths `12Q`"),
        (
            &["--depths", "128", "--prompt", "chat"][..],
            "no `<|im_start|>`/`<|im_end|>` tokens",
        ),
        (&["--depths", "128", "--seeds", "0"][..], "--seeds 0"),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = aqpim(&args);
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
}
