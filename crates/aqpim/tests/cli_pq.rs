//! The `aqpim pq` commands end to end: real files in, real files out, and a
//! one-line error with a non-zero exit on bad input.

mod common;

use common::{aqpim, assert_one_line_error, path, write_npy, write_npy_f32};

#[test]
fn synth_train_encode_bench_round_trip() {
    let dir = common::tempdir();
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

/// The float32 values of a `.npy` file written by the CLI (header v1).
fn read_f32_body(p: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(p).unwrap();
    let start = 10 + usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    bytes[start..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn decode_info_and_export() {
    let dir = common::tempdir();
    let x = dir.path().join("x.npy");
    let cb = dir.path().join("x.pqcb");
    let codes = dir.path().join("codes.npy");
    let y = dir.path().join("y.npy");
    let e = dir.path().join("centroids.npy");
    let (xs, cbs, cs) = (path(&x), path(&cb), path(&codes));
    common::assert_ok(
        &aqpim(&["pq", "synth", "--n", "300", "--d", "8", "--out", xs]),
        "synth",
    );
    common::assert_ok(
        &aqpim(&[
            "pq", "train", "--input", xs, "--m", "2", "--nbits", "4", "--iters", "3", "--out", cbs,
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
    common::assert_ok(
        &aqpim(&[
            "pq",
            "decode",
            "--codebook",
            cbs,
            "--codes",
            cs,
            "--out",
            path(&y),
        ]),
        "decode",
    );
    common::assert_ok(
        &aqpim(&["pq", "export", "--codebook", cbs, "--out", path(&e)]),
        "export",
    );
    // decode is the library's decode of the library's codes.
    let pq = aqpim_pq::ProductQuantizer::load(&cb).unwrap();
    let data = aqpim_pq::synth::kv_like(300, 8, 1);
    let want = pq.decode(&pq.encode(&data).unwrap()).unwrap();
    assert_eq!(read_f32_body(&y), want);
    // export is the centroids, M x ksub x dsub.
    assert_eq!(read_f32_body(&e), pq.centroids());
    let header = String::from_utf8_lossy(&std::fs::read(&e).unwrap()[..128]).to_string();
    assert!(header.contains("(2, 16, 4"), "{header}");
    // info on both kinds of file, then on a corrupted codebook.
    let v = common::json_line(&aqpim(&["pq", "info", cbs, "--json"]), "info codebook");
    assert_eq!(
        (v["kind"].as_str(), v["m"].as_u64(), v["nbits"].as_u64()),
        (Some("codebook"), Some(2), Some(4))
    );
    assert_eq!(v["checksum"], "ok");
    let v = common::json_line(&aqpim(&["pq", "info", cs, "--json"]), "info codes");
    assert_eq!(
        (v["kind"].as_str(), v["vectors"].as_u64()),
        (Some("codes"), Some(300))
    );
    let mut bytes = std::fs::read(&cb).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&cb, bytes).unwrap();
    let v = common::json_line(&aqpim(&["pq", "info", cbs, "--json"]), "info corrupt");
    assert_eq!(v["checksum"], "mismatch");
    // decode refuses codes of the wrong width.
    let wrong = dir.path().join("wrong.npy");
    write_npy(&wrong, "|u1", "(2, 3)", &[0; 6]);
    let pq_ok = dir.path().join("ok.pqcb");
    pq.save(&pq_ok).unwrap();
    assert_one_line_error(
        &aqpim(&[
            "pq",
            "decode",
            "--codebook",
            path(&pq_ok),
            "--codes",
            path(&wrong),
            "--out",
            path(&y),
        ]),
        "M = 3",
    );
}

#[test]
fn bad_inputs_fail_with_one_line_errors() {
    let dir = common::tempdir();
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
