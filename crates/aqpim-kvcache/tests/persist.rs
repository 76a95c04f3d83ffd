//! Persistence: save/load round trips, append after load equals append
//! without the save, every single-byte corruption and truncation detected.

mod common;

use std::path::Path;

use aqpim_kvcache::{build, from_bytes, load, KvError, KvShape, KvSpec, KvStore};
use common::{layer_input, tokens};

const SPECS: [&str; 9] = [
    "dense",
    "scalar:bits=2,group=4,window=3,sinks=1",
    "scalar:bits=2,group=4,window=3,sinks=1,mx=true",
    "scalar:bits=8,group=8,window=0,mx=true",
    "pq:dsub=2,nbits=4,sinks=2,window=3,flush=3,iters=3",
    "pq:dsub=4,kbits=3,vbits=2,sinks=0,window=2,pack=false,share=heads,iters=3",
    // 2-bit codes four per byte: M = 8 (2 bytes a row), and M = 2 / 1 with padding.
    "pq:dsub=1,nbits=2,sinks=1,window=2,iters=3",
    "pq:kdsub=4,vdsub=8,kbits=2,vbits=1,sinks=0,window=2,iters=3,outliers=100",
    "pq:kdsub=2,vdsub=4,nbits=4,sinks=1,window=2,iters=3,center=true,scale=true,layout=halves,outliers=100,cb16=true",
];

/// A small filled cache: 2 layers x 2 KV heads (4 query heads) x d = 8, `n` tokens.
/// Keys and values of one layer, `H x tokens x d` each.
type LayerInput = (Vec<f32>, Vec<f32>);

fn small(spec: &str, n: usize) -> (Box<dyn KvStore>, Vec<LayerInput>) {
    let shape = KvShape::with_query_heads(2, 2, 4, 8).unwrap();
    let mut store = build(shape, &spec.parse::<KvSpec>().unwrap()).unwrap();
    let total = n + 10;
    let inputs: Vec<_> = (0..2).map(|l| layer_input(&shape, total, 40 + l)).collect();
    for (layer, (k, v)) in inputs.iter().enumerate() {
        feed_range(store.as_mut(), layer, k, v, total, 0, n.min(20));
        feed_range(store.as_mut(), layer, k, v, total, n.min(20), n);
    }
    (store, inputs)
}

/// Feeds tokens `[t0, t1)` of a `total`-token input: one prefill when `t0 == 0`, appends otherwise.
fn feed_range(
    store: &mut dyn KvStore,
    layer: usize,
    k: &[f32],
    v: &[f32],
    total: usize,
    t0: usize,
    t1: usize,
) {
    let (h, d) = (2, 8);
    if t0 == 0 {
        if t1 > 0 {
            store
                .prefill(
                    layer,
                    &tokens(k, h, total, d, 0, t1),
                    &tokens(v, h, total, d, 0, t1),
                )
                .unwrap();
        }
    } else {
        for t in t0..t1 {
            store
                .append(
                    layer,
                    &tokens(k, h, total, d, t, t + 1),
                    &tokens(v, h, total, d, t, t + 1),
                )
                .unwrap();
        }
    }
}

#[test]
fn save_load_append_equals_append() {
    let dir = tempfile::tempdir().unwrap();
    for spec in SPECS {
        for n in [0, 1, 5, 30] {
            let (mut store, inputs) = small(spec, n);
            let path = dir.path().join("cache.kv");
            store.save(&path).unwrap();
            let mut loaded = load(&path).unwrap();
            assert_eq!(
                loaded.to_bytes(),
                store.to_bytes(),
                "{spec} n={n}: load(save(x)) != x"
            );
            assert_eq!(loaded.spec(), store.spec());
            assert_eq!(loaded.memory_report(), store.memory_report());
            for (layer, (k, v)) in inputs.iter().enumerate() {
                feed_range(store.as_mut(), layer, k, v, n + 10, n, n + 10);
                feed_range(loaded.as_mut(), layer, k, v, n + 10, n, n + 10);
            }
            assert_eq!(
                loaded.to_bytes(),
                store.to_bytes(),
                "{spec} n={n}: append after load differs"
            );
            for layer in 0..2 {
                assert_eq!(
                    loaded.dense_view(layer).unwrap(),
                    store.dense_view(layer).unwrap()
                );
            }
        }
    }
}

#[test]
fn every_single_byte_corruption_is_detected() {
    for spec in SPECS {
        let (store, _) = small(spec, 24);
        let bytes = store.to_bytes();
        assert!(from_bytes(&bytes, Path::new("ok.kv")).is_ok());
        let mut copy = bytes.clone();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                copy[i] ^= flip;
                match from_bytes(&copy, Path::new("bad.kv")) {
                    Err(KvError::BadFile { .. }) => {}
                    other => panic!("{spec}: byte {i} ^ {flip:#x} not detected: {other:?}"),
                }
                copy[i] ^= flip;
            }
        }
        for len in 0..bytes.len() {
            let e = from_bytes(&bytes[..len], Path::new("short.kv")).unwrap_err();
            assert!(
                matches!(e, KvError::BadFile { .. }),
                "{spec}: truncation to {len} bytes: {e}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(from_bytes(&longer, Path::new("long.kv")).is_err());
    }
}

#[test]
fn inconsistent_contents_with_a_valid_checksum_are_errors() {
    // Rewrite a dense file's first token count to a huge value and reseal it.
    let (store, _) = small("dense", 3);
    let mut bytes = store.to_bytes();
    let spec_len = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
    let at = 24 + spec_len + 16;
    bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let n = bytes.len();
    let crc = crc32(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    let e = from_bytes(&bytes, Path::new("crafted.kv")).unwrap_err();
    assert!(e.to_string().contains("crafted.kv"), "{e}");

    let e = load(Path::new("/nonexistent/dir/cache.kv")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/dir/cache.kv"), "{e}");
}

/// `bytes` relabelled as format version `v`, CRC resealed.
fn as_version(mut bytes: Vec<u8>, v: u32) -> Vec<u8> {
    bytes[8..12].copy_from_slice(&v.to_le_bytes());
    let n = bytes.len();
    let crc = crc32(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[test]
fn version_2_scalar_files_load_and_mx_needs_version_3() {
    assert_eq!(aqpim_kvcache::KV_VERSION, 3);
    // Without `mx`, version 3 writes the bytes version 2 wrote.
    for spec in ["scalar:bits=2,group=4,window=3,sinks=1", "dense"] {
        let (store, _) = small(spec, 30);
        let loaded = from_bytes(&as_version(store.to_bytes(), 2), Path::new("v2.kv")).unwrap();
        assert_eq!(loaded.to_bytes(), store.to_bytes(), "{spec}");
    }
    let (store, _) = small("scalar:bits=4,group=4,window=3,mx=true", 30);
    let e = from_bytes(&as_version(store.to_bytes(), 2), Path::new("v2.kv")).unwrap_err();
    assert!(e.to_string().contains("needs format version 3"), "{e}");
    // An exponent byte of 255 (NaN in E8M0) is corruption: the first one
    // follows layer 0's region counts and head 0's key codes.
    let mut bytes = store.to_bytes();
    let spec_len = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
    let row = 8 * 4 / 8;
    let at = 24 + spec_len + 16 + 24 + 27 * row;
    bytes[at] = 255;
    let e = from_bytes(&as_version(bytes, 3), Path::new("nan.kv")).unwrap_err();
    assert!(e.to_string().contains("NaN in E8M0"), "{e}");
}

/// CRC-32 (IEEE), bit by bit: an independent reference for the trailer.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
