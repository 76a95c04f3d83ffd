//! The `aqpim pq` commands end to end: real files in, real files out, and a
//! one-line error with a non-zero exit on bad input.

use std::path::Path;
use std::process::{Command, Output};

fn aqpim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aqpim"))
        .args(args)
        .output()
        .expect("running aqpim")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Writes a .npy file by hand (header v1.0), independent of the CLI's writer.
fn write_npy(p: &Path, descr: &str, shape: &str, body: &[u8]) {
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

fn write_npy_f32(p: &Path, rows: usize, cols: usize, data: &[f32]) {
    let body: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(p, "<f4", &format!("({rows}, {cols})"), &body);
}

fn assert_one_line_error(out: &Output, needle: &str) {
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

#[test]
fn synth_train_encode_bench_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.npy");
    let cb = dir.path().join("x.pqcb");
    let codes = dir.path().join("codes.npy");
    let out = aqpim(&["pq", "synth", "--n", "600", "--d", "16", "--out", path(&x)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = aqpim(&[
        "pq",
        "train",
        "--input",
        path(&x),
        "--m",
        "4",
        "--nbits",
        "4",
        "--iters",
        "5",
        "--out",
        path(&cb),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pq = aqpim_pq::ProductQuantizer::load(&cb).unwrap();
    assert_eq!(
        (
            pq.params().dim(),
            pq.params().num_subspaces(),
            pq.params().nbits()
        ),
        (16, 4, 4)
    );

    let out = aqpim(&[
        "pq",
        "encode",
        "--codebook",
        path(&cb),
        "--input",
        path(&x),
        "--out",
        path(&codes),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&codes).unwrap();
    // 600 x 4 uint8 codes after the header, each < 16 and equal to the library's encoding.
    let body = &bytes[bytes.len() - 600 * 4..];
    let data = aqpim_pq::synth::kv_like(600, 16, 1);
    assert_eq!(body, pq.encode(&data).unwrap().as_slice());

    let out = aqpim(&[
        "pq",
        "bench",
        "--input",
        path(&x),
        "--m",
        "4",
        "--nbits",
        "4",
        "--iters",
        "3",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "n",
        "d",
        "m",
        "nbits",
        "train_s",
        "encode_s",
        "adc_mcodes_per_s",
        "mse_per_vector",
        "rel_mse",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["n"], 600);
    assert!(v["rel_mse"].as_f64().unwrap() > 0.0 && v["rel_mse"].as_f64().unwrap() < 1.0);
}

#[test]
fn bad_inputs_fail_with_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cb = dir.path().join("cb");
    let cbs = path(&cb);

    let missing = dir.path().join("missing.npy");
    assert_one_line_error(
        &aqpim(&[
            "pq",
            "train",
            "--input",
            path(&missing),
            "--m",
            "2",
            "--out",
            cbs,
        ]),
        "missing.npy",
    );

    let nan = dir.path().join("nan.npy");
    let mut data = aqpim_pq::synth::kv_like(300, 4, 2);
    data[4 * 17 + 3] = f32::NAN;
    write_npy_f32(&nan, 300, 4, &data);
    assert_one_line_error(
        &aqpim(&[
            "pq",
            "train",
            "--input",
            path(&nan),
            "--m",
            "2",
            "--out",
            cbs,
        ]),
        "row 17, column 3",
    );

    let odd = dir.path().join("odd.npy");
    write_npy_f32(&odd, 300, 5, &aqpim_pq::synth::kv_like(300, 5, 2));
    assert_one_line_error(
        &aqpim(&[
            "pq",
            "train",
            "--input",
            path(&odd),
            "--m",
            "2",
            "--out",
            cbs,
        ]),
        "not divisible",
    );

    let three_d = dir.path().join("3d.npy");
    write_npy(&three_d, "<f4", "(2, 2, 2)", &[0u8; 32]);
    let float64 = dir.path().join("f8.npy");
    write_npy(&float64, "<f8", "(2, 2)", &[0u8; 32]);
    assert_one_line_error(
        &aqpim(&[
            "pq",
            "train",
            "--input",
            path(&float64),
            "--m",
            "2",
            "--out",
            cbs,
        ]),
        "unsupported dtype",
    );
    assert_one_line_error(
        &aqpim(&[
            "pq",
            "train",
            "--input",
            path(&three_d),
            "--m",
            "2",
            "--out",
            cbs,
        ]),
        "2-D",
    );

    let garbage = dir.path().join("garbage.npy");
    std::fs::write(&garbage, b"not an npy file at all").unwrap();
    assert_one_line_error(
        &aqpim(&["pq", "bench", "--input", path(&garbage), "--m", "2"]),
        "garbage.npy",
    );

    // A corrupted codebook is refused.
    let good = dir.path().join("good.npy");
    write_npy_f32(&good, 300, 4, &aqpim_pq::synth::kv_like(300, 4, 3));
    let out = aqpim(&[
        "pq",
        "train",
        "--input",
        path(&good),
        "--m",
        "2",
        "--nbits",
        "2",
        "--iters",
        "2",
        "--out",
        cbs,
    ]);
    assert!(out.status.success());
    let mut cb_bytes = std::fs::read(&cb).unwrap();
    cb_bytes[30] ^= 0x10;
    std::fs::write(&cb, cb_bytes).unwrap();
    let codes = dir.path().join("codes.npy");
    assert_one_line_error(
        &aqpim(&[
            "pq",
            "encode",
            "--codebook",
            cbs,
            "--input",
            path(&good),
            "--out",
            path(&codes),
        ]),
        "checksum mismatch",
    );
    assert!(!codes.exists(), "no output is written on error");
}
