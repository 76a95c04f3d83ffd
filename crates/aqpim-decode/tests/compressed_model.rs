//! The tiny random Llama decoding through compressed caches: an `fp16` store
//! behind the adapter scores like the model's own FP16 cache, PQ caches with
//! online or calibrated codebooks run end to end, and calibrated codebooks
//! survive a save and load (a corrupted file is refused), MX-style scalar
//! caches decode with an error that grows as bits fall.

mod common;

use aqpim_decode::calibrate;
use aqpim_decode::eval::{self, PplOptions, PplReport};
use aqpim_decode::gguf::GgufFile;
use aqpim_decode::CompressedCache;
use aqpim_decode::Llama;
use aqpim_decode::{AttentionCache, DenseCache, DensePrecision};
use aqpim_kvcache::{build, KvShape, KvSpec};
use common::*;

fn shape() -> KvShape {
    KvShape::with_query_heads(LAYERS, KV_HEADS, HEADS, HEAD_DIM).unwrap()
}

fn ppl(
    model: &Llama,
    tokens: &[u32],
    new_cache: &mut dyn FnMut() -> aqpim_decode::Result<Box<dyn AttentionCache>>,
) -> PplReport {
    // Windows of 96 tokens, 64 prefilled exactly, 32 decoded through the cache.
    let opts = PplOptions {
        window: 96,
        stride: 32,
        prefill: 64,
        doc_start: Some(0),
    };
    eval::perplexity(model, tokens, &opts, new_cache, &mut |_, _| {}).unwrap()
}

#[test]
fn compressed_caches_decode_the_tiny_model() {
    let file = GgufFile::parse(tiny_model(11, true)).unwrap();
    let model = Llama::from_gguf(&file).unwrap();
    let tokens = random_tokens(12, 160, model.config().vocab_size);

    let dense = ppl(&model, &tokens, &mut || {
        Ok(Box::new(DenseCache::new(
            LAYERS,
            KV_HEADS,
            HEAD_DIM,
            DensePrecision::F16,
        )) as Box<dyn AttentionCache>)
    });
    let fp16 = ppl(&model, &tokens, &mut || {
        Ok(Box::new(CompressedCache::new(shape(), &KvSpec::Dense)?) as Box<dyn AttentionCache>)
    });
    // Same FP16 storage; the adapter's prefill attention is exact f32.
    assert!(
        (dense.nll - fp16.nll).abs() < 2e-3,
        "{} vs {}",
        dense.nll,
        fp16.nll
    );
    assert_eq!(dense.scored_tokens, fp16.scored_tokens);
    assert!(fp16.decode_tokens > 0);

    // 4-bit PQ with online codebooks (trained on each window's 64-token prefill).
    let spec: KvSpec = "pq:dsub=4,nbits=4,sinks=2,window=8".parse().unwrap();
    let online = ppl(&model, &tokens, &mut || {
        Ok(Box::new(CompressedCache::new(shape(), &spec)?) as Box<dyn AttentionCache>)
    });
    assert!(online.nll.is_finite() && online.bits_per_element < 16.0);
    assert_ne!(online.nll, fp16.nll, "PQ must change something");

    // Calibrated codebooks: trained on other text, saved, loaded into every window's store.
    let KvSpec::Pq(pq_spec) = spec else {
        unreachable!()
    };
    let calib = random_tokens(13, 200, model.config().vocab_size);
    let books = calibrate::calibrate(&model, &calib, &pq_spec, &[100], &mut |_, _, _| {}).unwrap();
    assert_eq!((books.len(), books[0].len()), (LAYERS, KV_HEADS));
    let dir = tempfile::tempdir().unwrap();
    calibrate::save(&books, dir.path()).unwrap();
    let calibrated = ppl(&model, &tokens, &mut || {
        let mut store = build(shape(), &spec).unwrap();
        calibrate::load_into(dir.path(), store.as_pq_mut().unwrap())?;
        Ok(Box::new(CompressedCache::from_store(store)) as Box<dyn AttentionCache>)
    });
    assert!(calibrated.nll.is_finite());
    assert_ne!(calibrated.nll, online.nll);

    // Calibration with the accuracy keys (query metric, attention-weighted
    // values, centering) saves a transform per codebook; the store folds them.
    let acc: KvSpec = "pq:dsub=4,nbits=4,sinks=2,window=8,center=true,whiten=full,vweight=true"
        .parse()
        .unwrap();
    let KvSpec::Pq(acc_pq) = acc else {
        unreachable!()
    };
    let books = calibrate::calibrate(&model, &calib, &acc_pq, &[100], &mut |_, _, _| {}).unwrap();
    assert!(books[0][0].key_transform.is_some() && books[0][0].value_transform.is_some());
    let adir = tempfile::tempdir().unwrap();
    calibrate::save(&books, adir.path()).unwrap();
    let folded = ppl(&model, &tokens, &mut || {
        let mut store = build(shape(), &acc).unwrap();
        calibrate::load_into(adir.path(), store.as_pq_mut().unwrap())?;
        Ok(Box::new(CompressedCache::from_store(store)) as Box<dyn AttentionCache>)
    });
    assert!(folded.nll.is_finite());
    // Codebooks calibrated with transforms do not load into a spec without them.
    let mut store = build(shape(), &spec).unwrap();
    let e = calibrate::load_into(adir.path(), store.as_pq_mut().unwrap()).unwrap_err();
    assert!(e.to_string().contains("another spec"), "{e}");

    // A corrupted codebook file is an error naming it, not a panic.
    let victim = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    let mut store = build(shape(), &spec).unwrap();
    let e = calibrate::load_into(dir.path(), store.as_pq_mut().unwrap()).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
}

#[test]
fn calibration_does_not_depend_on_the_thread_count() {
    let file = GgufFile::parse(tiny_model(21, true)).unwrap();
    let model = Llama::from_gguf(&file).unwrap();
    let calib = random_tokens(22, 300, model.config().vocab_size);
    let spec: KvSpec = "pq:dsub=2,kbits=4,vbits=2,iters=5".parse().unwrap();
    let KvSpec::Pq(pq_spec) = spec else {
        unreachable!()
    };
    // Two passes whose chunks share a start (the 100-token pass's first chunk
    // is the first 256-token chunk's prefix; the context caps 300 at 256), as the default calibration's do.
    let files = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let books = pool
            .install(|| {
                calibrate::calibrate(&model, &calib, &pq_spec, &[100, 300], &mut |_, _, _| {})
            })
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        calibrate::save(&books, dir.path()).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect::<Vec<_>>()
    };
    let one = files(1);
    assert_eq!(one.len(), 2 * LAYERS * KV_HEADS);
    assert_eq!(one, files(2));
    assert_eq!(one, files(3));
}

#[test]
fn mx_scalar_caches_decode_the_tiny_model() {
    let file = GgufFile::parse(tiny_model(11, true)).unwrap();
    let model = Llama::from_gguf(&file).unwrap();
    let tokens = random_tokens(12, 160, model.config().vocab_size);
    let run = |spec: &str| {
        let spec: KvSpec = spec.parse().unwrap();
        ppl(&model, &tokens, &mut || {
            Ok(Box::new(CompressedCache::new(shape(), &spec)?) as Box<dyn AttentionCache>)
        })
    };
    let fp16 = run("fp16");
    // Groups of 8 channels of one token (head_dim 16), window of 4 FP16 tokens.
    let mx8 = run("scalar:bits=8,group=8,window=4,mx=true");
    let mx2 = run("scalar:bits=2,group=8,window=4,mx=true");
    for r in [&mx8, &mx2] {
        assert!(r.nll.is_finite() && r.bits_per_element < 16.0, "{r:?}");
        assert_eq!(r.scored_tokens, fp16.scored_tokens);
    }
    // 8-bit MX is close to FP16; 2 bits move the loss more than 8 bits do.
    let (d8, d2) = ((mx8.nll - fp16.nll).abs(), (mx2.nll - fp16.nll).abs());
    assert!(d8 < 0.02 && d8 < d2, "8 bits {d8}, 2 bits {d2}");
}

#[test]
fn wide_layers_calibrate_in_their_own_format() {
    // Layer 1 with 4-bit values beside the others' 2-bit ones: calibration
    // trains that layer's codebooks in the wide shape and every other layer's
    // exactly as the base spec does (same data, same seed); the codebooks of
    // one spec do not load into the other; the cache decodes end to end.
    let file = GgufFile::parse(tiny_model(31, true)).unwrap();
    let model = Llama::from_gguf(&file).unwrap();
    let calib = random_tokens(32, 200, model.config().vocab_size);
    let pq = |s: &str| match s.parse::<KvSpec>().unwrap() {
        KvSpec::Pq(p) => p,
        other => panic!("{other} is not pq"),
    };
    let base = "pq:dsub=2,kbits=4,vbits=2,iters=5,window=8";
    let wide = format!("{base},wide_layers=1,wide_vbits=4");
    let dirs = [base, wide.as_str()].map(|spec| {
        let books =
            calibrate::calibrate(&model, &calib, &pq(spec), &[200], &mut |_, _, _| {}).unwrap();
        let dir = tempfile::tempdir().unwrap();
        calibrate::save(&books, dir.path()).unwrap();
        dir
    });
    let read = |d: &tempfile::TempDir, l: usize, part: &str| {
        std::fs::read(d.path().join(format!("layer{l:03}_head00_{part}.pqcb"))).unwrap()
    };
    for l in 0..LAYERS {
        assert_eq!(
            read(&dirs[0], l, "k"),
            read(&dirs[1], l, "k"),
            "layer {l} keys"
        );
        assert_eq!(
            l != 1,
            read(&dirs[0], l, "v") == read(&dirs[1], l, "v"),
            "layer {l}"
        );
    }
    let spec = KvSpec::Pq(pq(&wide));
    let mut store = build(shape(), &spec).unwrap();
    let e = calibrate::load_into(dirs[0].path(), store.as_pq_mut().unwrap()).unwrap_err();
    assert!(format!("{e:#}").contains("layer 1"), "{e:#}");
    let tokens = random_tokens(33, 160, model.config().vocab_size);
    let r = ppl(&model, &tokens, &mut || {
        let mut store = build(shape(), &spec)?;
        calibrate::load_into(dirs[1].path(), store.as_pq_mut().unwrap())?;
        Ok(Box::new(CompressedCache::from_store(store)) as Box<dyn AttentionCache>)
    });
    assert!(r.nll.is_finite() && r.bits_per_element < 16.0, "{r:?}");
    // A wide layer the model lacks is refused before the forward pass.
    let e = calibrate::calibrate(
        &model,
        &calib,
        &pq(&format!("{base},wide_layers={LAYERS}")),
        &[200],
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("wide_layers names layer"), "{e}");
}
