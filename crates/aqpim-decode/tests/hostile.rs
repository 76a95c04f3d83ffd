//! Hostile model inputs of issue 17: GGUF headers that declare huge models,
//! metadata that swallows the file, tensors whose data alias each other,
//! hostile metadata values, and corrupted calibrated-codebook folders. Each
//! is an error or a model that loads and runs; none panics or allocates
//! what the file claims.

mod common;

use aqpim_decode::gguf::{GgufFile, GgufWriter, MetaValue};
use aqpim_decode::quant::GgmlType;
use aqpim_decode::DecodeError;
use aqpim_decode::{DenseCache, DensePrecision};
use aqpim_decode::{Llama, Logits};
use common::*;
use proptest::prelude::*;

/// The tiny model rebuilt with `key` set to `value` (added if missing).
fn with_meta(key: &str, value: MetaValue) -> Vec<u8> {
    let f = GgufFile::parse(tiny_model(1, true)).unwrap();
    let mut w = GgufWriter::new();
    let mut found = false;
    for (k, v) in &f.metadata {
        if k == key {
            found = true;
            w.meta(k, value.clone());
        } else {
            w.meta(k, v.clone());
        }
    }
    if !found {
        w.meta(key, value);
    }
    for t in &f.tensors {
        w.tensor(&t.name, &t.dims, t.ty, f.tensor_bytes(t).to_vec());
    }
    w.to_bytes()
}

/// Loads and, when that works, runs two tokens: errors are fine, panics are not.
fn load_and_run(bytes: Vec<u8>) -> Result<(), DecodeError> {
    let f = GgufFile::parse(bytes)?;
    let model = Llama::from_gguf(&f)?;
    let c = model.config();
    let mut cache = DenseCache::new(c.n_layers, c.n_kv_heads, c.head_dim, DensePrecision::F32);
    model.forward(&[1, 2], &mut cache, Logits::Last)?;
    Ok(())
}

#[test]
fn a_block_count_of_two_to_the_31_is_an_error_not_an_abort() {
    let e = load_and_run(with_meta("llama.block_count", MetaValue::U32(1 << 31)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("limit of 1024"), "{e}");
    for key in [
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.context_length",
    ] {
        let e = load_and_run(with_meta(key, MetaValue::U64(u64::MAX))).unwrap_err();
        assert!(
            e.to_string().contains("limit") || e.to_string().contains("large"),
            "{key}: {e}"
        );
    }
}

#[test]
fn metadata_that_swallows_the_file_is_bounded_by_the_limit() {
    // A 12 MiB file whose last metadata value becomes a u8 array that runs
    // to the end: 12 Mi values would take ~400 MB parsed.
    let mut w = GgufWriter::new();
    w.meta("general.architecture", MetaValue::String("llama".into()))
        .meta("last", MetaValue::U8(0));
    w.tensor("pad", &[3 << 20], GgmlType::F32, vec![0u8; 12 << 20]);
    let mut bytes = w.to_bytes();
    // Find the key `last`; its value type follows, then the 1-byte value.
    let key = b"last";
    let at = bytes.windows(4).position(|x| x == key).unwrap() + 4;
    let rest = (bytes.len() - at - 4 - 4 - 8) as u64;
    bytes[at..at + 4].copy_from_slice(&9u32.to_le_bytes()); // array
    let mut tail = 0u32.to_le_bytes().to_vec(); // of u8
    tail.extend_from_slice(&rest.to_le_bytes());
    bytes.splice(at + 4..at + 5, tail.iter().copied().chain([0u8]));
    let e = GgufFile::parse(bytes).unwrap_err().to_string();
    assert!(e.contains("limit of 268435456 bytes"), "{e}");
}

#[test]
fn a_tensor_aliasing_another_is_an_error() {
    let f = GgufFile::parse(tiny_model(1, true)).unwrap();
    let a = f.tensor("blk.0.attn_norm.weight").unwrap().clone();
    let b = f.tensor("blk.0.ffn_norm.weight").unwrap().clone();
    let mut bytes = tiny_model(1, true);
    // The tensor info of `b`: name, n_dims u32, dims u64 x n, type u32, offset u64.
    let name = b.name.as_bytes();
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name);
    let at = bytes
        .windows(needle.len())
        .position(|x| x == needle)
        .unwrap()
        + needle.len()
        + 4
        + 8 * b.dims.len()
        + 4;
    assert_eq!(bytes[at..at + 8], b.offset.to_le_bytes());
    bytes[at..at + 8].copy_from_slice(&a.offset.to_le_bytes());
    let e = GgufFile::parse(bytes).unwrap_err();
    assert!(e.to_string().contains("overlaps"), "{e}");
}

#[test]
fn non_finite_config_values_are_errors() {
    for (key, v) in [
        ("llama.rope.freq_base", MetaValue::F32(f32::INFINITY)),
        ("llama.rope.freq_base", MetaValue::F32(f32::NAN)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F64(f64::INFINITY),
        ),
        ("llama.context_length", MetaValue::U32(0)),
    ] {
        assert!(load_and_run(with_meta(key, v)).is_err(), "{key}");
    }
}

/// A change to one file of a calibrated folder.
type Corruption = Box<dyn Fn(&std::path::Path)>;

#[test]
fn calibrated_folders_with_bad_files_are_errors() {
    use aqpim_decode::calibrate::{load_into, save};
    use aqpim_kvcache::{KvShape, KvSpec, PqStore};
    use aqpim_pq::{PqParams, ProductQuantizer, TrainOptions};
    let shape = KvShape::new(2, 2, 8).unwrap();
    let KvSpec::Pq(spec) = "pq:dsub=4,nbits=2".parse::<KvSpec>().unwrap() else {
        unreachable!()
    };
    let data = aqpim_pq::synth::kv_like(64, 8, 1);
    let opts = TrainOptions {
        iterations: 2,
        ..TrainOptions::default()
    };
    let pq = ProductQuantizer::train(PqParams::new(8, 2, 2).unwrap(), &data, &opts).unwrap();
    let head = aqpim_decode::calibrate::HeadBooks {
        keys: pq.clone(),
        values: pq,
        key_transform: None,
        value_transform: None,
    };
    let books = vec![vec![head; 2]; 2];
    let corruptions: Vec<Corruption> = vec![
        Box::new(|p| std::fs::write(p, b"").unwrap()),
        Box::new(|p| {
            let b = std::fs::read(p).unwrap();
            std::fs::write(p, &b[..b.len() / 2]).unwrap()
        }),
        Box::new(|p| {
            let mut b = std::fs::read(p).unwrap();
            b[20] ^= 0xff;
            std::fs::write(p, b).unwrap()
        }),
        Box::new(|p| std::fs::remove_file(p).unwrap()),
        Box::new(|p| {
            std::fs::remove_file(p).unwrap();
            std::fs::create_dir(p).unwrap()
        }),
        #[cfg(unix)]
        Box::new(|p| {
            // An endless source: the bounded reader stops at its limit.
            std::fs::remove_file(p).unwrap();
            std::os::unix::fs::symlink("/dev/zero", p).unwrap()
        }),
    ];
    for (i, corrupt) in corruptions.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        save(&books, dir.path()).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        corrupt(&files[i % files.len()]);
        let mut store = PqStore::new(shape, spec).unwrap();
        assert!(load_into(dir.path(), &mut store).is_err(), "corruption {i}");
    }
    // A folder made for another shape is an error too.
    let dir = tempfile::tempdir().unwrap();
    save(&books, dir.path()).unwrap();
    let mut store = PqStore::new(KvShape::new(2, 2, 16).unwrap(), spec).unwrap();
    assert!(load_into(dir.path(), &mut store).is_err());
}

const INT_KEYS: [&str; 8] = [
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.rope.dimension_count",
    "llama.attention.key_length",
];

proptest! {
    #![proptest_config(config(48, 17))]

    /// Every size field of the header set to a hostile value: an error, or
    /// a model that loads and runs.
    #[test]
    fn hostile_metadata_values_never_panic(
        key in prop::sample::select(INT_KEYS.to_vec()),
        value in prop::sample::select(vec![0u64, 1, 2, 3, 15, 16, 17, 64, 1 << 20, 1 << 31, u32::MAX as u64, u64::MAX]),
    ) {
        let _ = load_and_run(with_meta(key, MetaValue::U64(value)));
    }

    /// Metadata values replaced by arrays or strings of random length whose
    /// count runs past the end: an error, never a large allocation.
    #[test]
    fn arrays_whose_count_runs_past_the_file_are_errors(
        count in prop_oneof![Just(u64::MAX), Just(1u64 << 40), (1u64 << 20)..(1 << 30)],
        element_type in 0u32..13,
    ) {
        let mut w = GgufWriter::new();
        w.meta("general.architecture", MetaValue::String("llama".into()))
            .meta("last", MetaValue::U8(0));
        let mut bytes = w.to_bytes();
        let at = bytes.windows(4).position(|x| x == b"last").unwrap() + 4;
        bytes[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
        let mut tail = element_type.to_le_bytes().to_vec();
        tail.extend_from_slice(&count.to_le_bytes());
        bytes.splice(at + 4..at + 5, tail);
        prop_assert!(GgufFile::parse(bytes).is_err());
    }
}
