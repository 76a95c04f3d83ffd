//! `generate` and `eval ppl` on a tiny model file: a `--max-tokens` past the
//! model's context is refused before any text streams, and a model file
//! whose tensors alias each other is refused at load instead of printing a
//! NaN perplexity.

mod common;
#[path = "../../aqpim-decode/tests/common/mod.rs"]
mod tiny;

use common::aqpim;

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
    use aqpim_decode::model::gguf::GgufFile;
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
