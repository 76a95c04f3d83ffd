//! Helpers shared by the `cli_*.rs` tests: run the built binary, temporary
//! folders, paths as flags, one-line errors and one-line JSON.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs the built `aqpim` with `args` and two rayon workers.
pub fn aqpim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aqpim"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("running aqpim")
}

/// A fresh temporary folder, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary folder")
}

/// A path as a flag value.
pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Asserts a run succeeded, showing its stderr otherwise.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A failed run with one `error:` line that mentions `needle`.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure, got success");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "error is not one line: {err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        err.contains(needle),
        "error {err:?} does not mention {needle:?}"
    );
}

/// The stdout of a successful `--json` run: exactly one line, one JSON object.
pub fn json_line(out: &Output, what: &str) -> serde_json::Value {
    assert_ok(out, what);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: not one line: {text}");
    let v: serde_json::Value =
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    assert!(v.is_object(), "{what}: not an object: {text}");
    v
}

/// Writes a `.npy` file by hand (header v1.0), independent of the CLI's writer.
pub fn write_npy(p: &Path, descr: &str, shape: &str, body: &[u8]) {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(body);
    std::fs::write(p, bytes).unwrap();
}

/// A float32 matrix as `.npy`.
pub fn write_npy_f32(p: &Path, rows: usize, cols: usize, data: &[f32]) {
    let body: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(p, "<f4", &format!("({rows}, {cols})"), &body);
}
