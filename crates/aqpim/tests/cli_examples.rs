//! Every program shipped under `examples/pim/` runs under `aqpim sim run
//! --check` (with its `.host` data file when it has one), and assembles to a
//! binary that runs the same.

mod common;

use common::aqpim;
use std::path::PathBuf;

fn examples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/pim");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pim"))
        .collect();
    files.sort();
    files
}

fn cycles(program: &std::path::Path, host: Option<&PathBuf>) -> u64 {
    let mut args = vec!["sim", "run", program.to_str().unwrap(), "--check", "--json"];
    if let Some(h) = host {
        args.extend(["--host-data", h.to_str().unwrap()]);
    }
    let out = aqpim(&args);
    assert!(
        out.status.success(),
        "{}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["trace_checked"], true);
    json["stats"]["cycles"].as_u64().unwrap()
}

#[test]
fn every_shipped_example_runs_and_checks() {
    let files = examples();
    assert!(files.len() >= 3, "{files:?}");
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        let host = f.with_extension("host");
        let host = host.exists().then_some(host);
        let text = cycles(&f, host.as_ref());
        assert!(text > 0);
        let bin = dir.path().join("p.pimb");
        let out = aqpim(&[
            "sim",
            "asm",
            f.to_str().unwrap(),
            "--out",
            bin.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(cycles(&bin, host.as_ref()), text, "{}", f.display());
    }
}
