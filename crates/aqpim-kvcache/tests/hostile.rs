//! Hostile inputs for every reader of this crate: cache files with their
//! length and CRC fixed up (so the body parser, not the checksum, meets the
//! corruption), `--kv` spec strings, and shapes and contexts at and past the
//! limits. Each is an error or a consistent result with finite figures;
//! none panics or allocates what the input claims.

mod common;

use std::path::Path;

use aqpim_kvcache::limits::{MAX_CTX, MAX_HEAD_DIM, MAX_KV_HEADS, MAX_LAYERS};
use aqpim_kvcache::{account, build, from_bytes, KvShape, KvSpec};
use common::config;
use proptest::prelude::*;

const SPECS: [&str; 5] = [
    "dense",
    "scalar:bits=2,group=4,window=3,sinks=1",
    "scalar:bits=4,group=4,window=3,sinks=1,mx=true",
    "pq:dsub=2,nbits=4,sinks=2,window=3,flush=3,iters=3",
    "pq:dsub=4,kbits=3,vbits=2,sinks=0,window=2,pack=false,share=heads,iters=3",
];

/// A saved cache of 2 layers x 2 KV heads x d = 8 and 12 tokens.
fn saved(spec: &str) -> Vec<u8> {
    let shape = KvShape::with_query_heads(2, 2, 4, 8).unwrap();
    let mut store = build(shape, &spec.parse::<KvSpec>().unwrap()).unwrap();
    let n = 12;
    for layer in 0..2 {
        let (k, v) = aqpim_kvcache::synth::layer_tokens(&shape, n, layer as u64);
        store.prefill(layer, &k, &v).unwrap();
    }
    store.to_bytes()
}

/// `bytes` with the length field (offset 12) and the CRC trailer made valid.
fn fix_up(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() < 24 {
        return bytes;
    }
    bytes.truncate(bytes.len() - 4);
    let len = (bytes.len() + 4) as u64;
    bytes[12..20].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

fn check_load(bytes: &[u8]) {
    if let Ok(store) = from_bytes(bytes, Path::new("fuzz.kv")) {
        let r = store.memory_report();
        assert!(r.bits_per_element.total.is_finite());
        for layer in 0..store.shape().num_layers() {
            for head in 0..store.shape().num_kv_heads() {
                let kv = store.reconstruct(layer, head).unwrap();
                assert!(kv.keys.iter().chain(&kv.values).all(|x| x.is_finite()));
            }
        }
    }
}

#[test]
fn shapes_and_contexts_past_the_limits_are_errors() {
    assert!(KvShape::new(MAX_LAYERS + 1, 1, 128).is_err());
    assert!(KvShape::new(1, MAX_KV_HEADS + 1, 128).is_err());
    assert!(KvShape::new(1, 1, MAX_HEAD_DIM + 1).is_err());
    assert!(KvShape::new(4_294_967_295, 1, 128).is_err());
    let big = KvShape::new(MAX_LAYERS, MAX_KV_HEADS, MAX_HEAD_DIM).unwrap();
    for spec in SPECS {
        let spec: KvSpec = spec.parse().unwrap();
        // At every limit at once the byte counts still fit in 64 bits.
        if spec.validate(&big).is_ok() {
            let r = account(&big, &spec, MAX_CTX).unwrap();
            assert!(r.total_bytes > 0 && r.bits_per_element.total.is_finite());
        }
        let small = KvShape::new(1, 1, 8).unwrap();
        if spec.validate(&small).is_ok() {
            let e = account(&small, &spec, usize::MAX).unwrap_err().to_string();
            assert!(e.contains("limit of 16777216"), "{e}");
        }
    }
}

#[test]
fn a_dense_cache_of_the_issue_is_sixteen_bits_not_a_wrapped_total() {
    let r = account(&KvShape::llama2_7b(), &KvSpec::Dense, MAX_CTX).unwrap();
    assert_eq!(r.bits_per_element.total, 16.0);
    assert_eq!(r.total_bytes, 2 * 2 * 32 * 32 * 128 * MAX_CTX as u64);
}

#[test]
fn benchmark_sizes_past_the_limits_are_errors_before_allocating() {
    let shape = KvShape::llama2_7b();
    let KvSpec::Pq(pq) = "pq:dsub=4,nbits=8".parse::<KvSpec>().unwrap() else {
        unreachable!()
    };
    for (prefill, steps) in [
        (1_000_000_000_000, 1),
        (0, usize::MAX),
        (usize::MAX, 1),
        (10, 0),
    ] {
        assert!(aqpim_kvcache::bench::append_latency(shape, pq, prefill, steps, 1).is_err());
    }
    // 16 M tokens of Llama-2-7B at 2 bits is far past the 8 GiB bench limit.
    let e = aqpim_kvcache::bench::append_latency(shape, pq, MAX_CTX - 1, 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("benchmark limit"), "{e}");
    assert!(aqpim_kvcache::bench::allocation_check(shape, pq, usize::MAX, 1, 1).is_err());
    assert!(aqpim_kvcache::bench::allocation_check(shape, pq, 10, 0, 1).is_err());
}

#[test]
fn long_spec_strings_in_cache_files_are_refused() {
    let mut b = saved("dense");
    // Spec length 2^31: past the limit, whatever follows.
    b[20..24].copy_from_slice(&(1u32 << 31).to_le_bytes());
    let e = from_bytes(&fix_up(b), Path::new("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("limit"), "{e}");
}

proptest! {
    #![proptest_config(config(192, 17))]

    /// Byte edits anywhere, with a valid length and CRC, and truncations.
    #[test]
    fn corrupted_cache_files_never_panic(
        which in 0usize..4,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        wide in proptest::option::of((any::<prop::sample::Index>(), any::<u64>())),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut b = saved(SPECS[which]);
        for (at, v) in edits {
            let i = at.index(b.len());
            b[i] = v;
        }
        if let Some((at, v)) = wide {
            // A whole count or size field overwritten with a huge value.
            let i = at.index(b.len() - 8);
            b[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        if let Some(c) = cut {
            let keep = c.index(b.len());
            b.truncate(keep);
        }
        check_load(&b);
        check_load(&fix_up(b));
    }

    /// `--kv` strings: random text, and valid specs with fields replaced by
    /// huge, zero or junk values. Parsing and validating never panic, and a
    /// spec that validates accounts to finite figures.
    #[test]
    fn hostile_kv_specs_never_panic(
        junk in "[a-z0-9:=,.+-]{0,80}",
        which in 1usize..4,
        field in prop::sample::select(vec!["dsub", "nbits", "kbits", "vbits", "bits", "group", "window", "sinks", "flush", "iters", "seed", "share", "pack", "train"]),
        value in prop::sample::select(vec!["0", "1", "3", "255", "256", "4294967295", "18446744073709551615", "18446744073709551616", "-1", "x", "", "1e9"]),
        ctx in prop_oneof![0usize..1000, Just(MAX_CTX), Just(usize::MAX)],
    ) {
        let shape = KvShape::with_query_heads(4, 8, 32, 128).unwrap();
        let mut spec = SPECS[which].to_string();
        spec.push_str(&format!(",{field}={value}"));
        for text in [junk.as_str(), spec.as_str()] {
            if let Ok(s) = text.parse::<KvSpec>() {
                if s.validate(&shape).is_ok() {
                    if let Ok(r) = account(&shape, &s, ctx) {
                        prop_assert!(r.bits_per_element.total.is_finite());
                        prop_assert!(r.compression_ratio.is_finite());
                    }
                }
            }
        }
    }
}

#[test]
fn spec_counts_are_bounded_and_echoes_are_cut() {
    for (spec, limit) in [
        ("pq:iters=4294967295", "1..=1000"),
        ("pq:window=4294967295", "0..=16777216"),
        ("pq:sinks=99999999999", "0..=16777216"),
        ("pq:train_min=16777217", "1..=16777216"),
    ] {
        let e = spec
            .parse::<aqpim_kvcache::KvSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains(limit), "{spec}: {e}");
    }
    let long = format!("pq:window={}", "9".repeat(10_000));
    let e = long
        .parse::<aqpim_kvcache::KvSpec>()
        .unwrap_err()
        .to_string();
    assert!(e.len() < 400 && e.contains("..."), "{} chars", e.len());
}
