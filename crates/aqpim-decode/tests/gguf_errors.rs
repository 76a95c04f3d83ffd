//! The GGUF reader on truncated, corrupted and unsupported files: clear
//! errors, never a panic.

mod common;

use aqpim_decode::gguf::{GgufFile, GgufWriter, MetaValue};
use aqpim_decode::quant::GgmlType;
use aqpim_decode::DecodeError;
use aqpim_decode::Llama;
use common::*;
use proptest::prelude::*;

fn parse(bytes: Vec<u8>) -> Result<GgufFile, DecodeError> {
    GgufFile::parse(bytes)
}

#[test]
fn truncated_files_are_errors() {
    let bytes = tiny_model(1, true);
    let full = parse(bytes.clone()).unwrap();
    let data_end = bytes.len();
    for len in (0..data_end)
        .step_by(997)
        .chain([0, 3, 4, 8, 23, 24, data_end - 1])
    {
        match parse(bytes[..len].to_vec()) {
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(f) => panic!(
                "a file cut at {len} of {data_end} bytes parsed with {} tensors (full: {})",
                f.tensors.len(),
                full.tensors.len()
            ),
        }
    }
    let err = parse(bytes[..data_end - 1].to_vec()).unwrap_err();
    assert!(matches!(err, DecodeError::Truncated { .. }), "{err}");
}

#[test]
fn bad_headers_are_clear_errors() {
    let mut bytes = tiny_model(1, true);
    bytes[0] = b'X';
    assert!(matches!(
        parse(bytes).unwrap_err(),
        DecodeError::BadMagic { .. }
    ));
    let mut bytes = tiny_model(1, true);
    bytes[4] = 9;
    let err = parse(bytes).unwrap_err();
    assert!(err.to_string().contains("version 9"), "{err}");
    // A tensor count far beyond the file.
    let mut bytes = tiny_model(1, true);
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        parse(bytes).unwrap_err(),
        DecodeError::Malformed { .. }
    ));
    // An unknown metadata value type.
    let mut w = GgufWriter::new();
    w.meta("k", MetaValue::U32(1));
    let mut bytes = w.to_bytes();
    let at = 24 + 8 + 1; // header, key length, key "k"
    bytes[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
    let err = parse(bytes).unwrap_err();
    assert!(err.to_string().contains("unknown value type 77"), "{err}");
}

#[test]
fn unsupported_tensor_types_are_named() {
    let mut w = GgufWriter::new();
    w.tensor(
        "blk.0.attn_q.weight",
        &[256, 1],
        GgmlType::Q8_0,
        vec![0; 8 * 34],
    );
    let mut bytes = w.to_bytes();
    // Rewrite the type code (after name, n_dims and two dims) to Q4_K (12).
    let at = 24 + 8 + "blk.0.attn_q.weight".len() + 4 + 16;
    bytes[at..at + 4].copy_from_slice(&12u32.to_le_bytes());
    let err = parse(bytes).unwrap_err();
    assert!(
        matches!(err, DecodeError::UnsupportedTensorType { code: 12, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("Q4_K"), "{err}");
}

#[test]
fn inconsistent_tensors_are_errors() {
    // A row length that is not whole blocks.
    let mut w = GgufWriter::new();
    w.tensor("t", &[33, 1], GgmlType::Q8_0, vec![0; 34]);
    assert!(matches!(
        parse(w.to_bytes()).unwrap_err(),
        DecodeError::BadTensor { .. }
    ));
    // A model missing one tensor, or with a wrong shape.
    let full = parse(tiny_model(2, true)).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &full.metadata {
        w.meta(k, v.clone());
    }
    for t in &full.tensors {
        if t.name != "blk.1.ffn_up.weight" {
            let dims = if t.name == "blk.0.attn_k.weight" {
                vec![t.dims[1], t.dims[0]]
            } else {
                t.dims.clone()
            };
            let bytes = full.tensor_bytes(t).to_vec();
            // Keep the byte count consistent with the dims.
            w.tensor(&t.name, &dims, t.ty, bytes);
        }
    }
    let file = parse(w.to_bytes());
    match file {
        Err(e) => assert!(matches!(e, DecodeError::BadTensor { .. }), "{e}"),
        Ok(f) => {
            let err = Llama::from_gguf(&f).unwrap_err();
            assert!(
                matches!(
                    err,
                    DecodeError::ShapeMismatch { .. } | DecodeError::MissingTensor { .. }
                ),
                "{err}"
            );
        }
    }
    // Missing architecture metadata.
    let mut w = GgufWriter::new();
    w.meta("general.architecture", MetaValue::String("gpt-j".into()));
    let err = Llama::from_gguf(&parse(w.to_bytes()).unwrap()).unwrap_err();
    assert!(err.to_string().contains("gpt-j"), "{err}");
}

proptest! {
    #![proptest_config(config(64, 7))]

    /// Random byte corruptions never panic: the reader either rejects the
    /// file or returns one whose tensor ranges all lie inside it.
    #[test]
    fn corruptions_never_panic(flips in proptest::collection::vec((0usize..4096, any::<u8>()), 1..8)) {
        let mut bytes = tiny_model(3, true);
        for (i, b) in flips {
            let i = i % 4096.min(bytes.len());
            bytes[i] ^= b;
        }
        if let Ok(f) = GgufFile::parse(bytes) {
            for t in &f.tensors {
                prop_assert_eq!(f.tensor_bytes(t).len(), t.n_bytes);
            }
            let _ = Llama::from_gguf(&f);
        }
    }
}
