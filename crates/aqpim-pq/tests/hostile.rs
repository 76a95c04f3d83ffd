//! Hostile codebook files: random bytes, corrupted headers (with the CRC
//! recomputed so the header checks, not the checksum, must catch them) and
//! huge declared sizes. Every one is an error or a valid codebook with
//! finite centroids; none panics or allocates what the header claims.

mod common;

use std::path::Path;

use aqpim_pq::{PqParams, ProductQuantizer, TrainOptions};
use common::config;
use proptest::prelude::*;

fn valid() -> Vec<u8> {
    let params = PqParams::new(8, 2, 2).unwrap();
    let data = aqpim_pq::synth::kv_like(64, 8, 3);
    let opts = TrainOptions {
        iterations: 2,
        ..TrainOptions::default()
    };
    ProductQuantizer::train(params, &data, &opts)
        .unwrap()
        .to_bytes()
}

/// `body` with its CRC trailer recomputed.
fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
    body.truncate(body.len().saturating_sub(4));
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

fn check(bytes: &[u8]) {
    if let Ok(pq) = ProductQuantizer::from_bytes(bytes, Path::new("fuzz.pqcb")) {
        assert!(pq.centroids().iter().all(|c| c.is_finite()));
        assert_eq!(pq.centroids().len(), pq.params().codebook_len());
    }
}

#[test]
fn huge_header_fields_are_errors() {
    let good = valid();
    for (word, value) in [
        (1usize, u32::MAX),
        (2, u32::MAX),
        (3, 9),
        (4, u32::MAX),
        (1, 1 << 20),
    ] {
        let mut b = good.clone();
        b[8 + 4 * word..12 + 4 * word].copy_from_slice(&value.to_le_bytes());
        let e = ProductQuantizer::from_bytes(&with_crc(b), Path::new("x"));
        assert!(e.is_err(), "word {word} = {value} was accepted");
    }
}

#[test]
fn oversized_files_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.pqcb");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(aqpim_pq::limits::MAX_CODEBOOK_FILE_BYTES + 1)
        .unwrap();
    let e = ProductQuantizer::load(&p).unwrap_err().to_string();
    assert!(e.contains("more than the"), "{e}");
}

proptest! {
    #![proptest_config(config(256, 17))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        check(&bytes);
        check(&with_crc(bytes));
    }

    #[test]
    fn corrupted_headers_with_a_valid_crc_never_panic(
        edits in proptest::collection::vec((0usize..40, any::<u8>()), 1..6),
        cut in 0usize..64,
    ) {
        let mut b = valid();
        for (at, v) in edits {
            if at < b.len() {
                b[at] = v;
            }
        }
        check(&with_crc(b.clone()));
        let keep = b.len().saturating_sub(cut);
        check(&with_crc(b[..keep].to_vec()));
    }
}
