//! Criterion: the stages of PQ attention for one query head over 32,768
//! encoded tokens (d = 128, dsub = 4, nbits = 8): scoring (lookup-table scan),
//! softmax (online, in blocks of 256), and values (per-centroid histogram,
//! then bins times codebook); and the packed 4-bit stages (nbits = 4: scoring
//! by in-register permutes, values binned by whole bytes and folded).
//! Single-threaded.

#![allow(missing_docs)] // criterion_group! generates undocumented public items

use aqpim_attn::stages::{
    add_bins_times_codebook, fold_pair_bins, histogram_u8_full, OnlineSoftmax,
};
use aqpim_pq::pack_4bit;
use aqpim_pq::{PqParams, ProductQuantizer};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};

const N: usize = 32_768;
const M: usize = 32;

fn bench(c: &mut Criterion) {
    let params = PqParams::new(128, M, 8).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let cents = (0..params.codebook_len())
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let pq = ProductQuantizer::from_centroids(params, cents).unwrap();
    let q: Vec<f32> = (0..128).map(|_| rng.gen_range(-0.1f32..0.1)).collect();
    let kcodes: Vec<u8> = (0..N * M).map(|_| rng.gen()).collect();
    let vcodes: Vec<u8> = (0..N * M).map(|_| rng.gen()).collect();
    let lut = pq.inner_product_table(&q).unwrap();
    let mut scores = vec![0f32; N];
    lut.scan_u8(&kcodes, &mut scores).unwrap();
    assert!((scores[5] - lut.score(&kcodes[5 * M..6 * M])).abs() < 1e-4);

    let mut g = c.benchmark_group("pq_attention_stages_32k");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("scoring", |b| {
        b.iter(|| lut.scan_u8(&kcodes, &mut scores).unwrap())
    });
    g.bench_function("softmax", |b| {
        b.iter(|| {
            let mut s = OnlineSoftmax::new();
            let mut w = scores.clone();
            for block in w.chunks_mut(256) {
                s.absorb(block);
            }
            assert!(s.sum > 0.0);
            s.sum
        })
    });
    let weights = vec![1.0f32 / N as f32; N];
    let mut bins = vec![0f32; M * 256];
    // Filled once here so that every bench (also when filtered) sees real bins.
    histogram_u8_full(&vcodes, M, &weights, &mut bins);
    assert!((bins.iter().sum::<f32>() - M as f32).abs() < 1e-2);
    g.bench_function("values_histogram", |b| {
        b.iter(|| {
            bins.iter_mut().for_each(|v| *v = 0.0);
            histogram_u8_full(&vcodes, M, &weights, &mut bins);
        })
    });
    let mut o = vec![0f32; 128];
    g.throughput(Throughput::Elements(1));
    g.bench_function("bins_times_codebook", |b| {
        b.iter(|| add_bins_times_codebook(&bins, &pq, &mut o))
    });
    g.finish();

    // Packed 4-bit: 16 bytes per token.
    let params4 = PqParams::new(128, M, 4).unwrap();
    let cents4 = (0..params4.codebook_len())
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let pq4 = ProductQuantizer::from_centroids(params4, cents4).unwrap();
    let lut4 = pq4.inner_product_table(&q).unwrap();
    let codes4: Vec<u8> = (0..N * M).map(|_| rng.gen_range(0..16u8)).collect();
    let packed = pack_4bit(&codes4, M).unwrap();
    let row_bytes = M / 2;
    let mut g = c.benchmark_group("pq_attention_stages_32k_4bit");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("scoring_packed4", |b| {
        b.iter(|| lut4.scan_packed4(&packed, &mut scores).unwrap())
    });
    let mut pairs = vec![0f32; row_bytes * 256];
    let mut bins4 = vec![0f32; M * 16];
    histogram_u8_full(&packed, row_bytes, &weights, &mut pairs);
    fold_pair_bins(&pairs, M, 16, &mut bins4);
    assert!((bins4.iter().sum::<f32>() - M as f32).abs() < 1e-2);
    g.bench_function("values_byte_bins_and_fold", |b| {
        b.iter(|| {
            pairs.iter_mut().for_each(|v| *v = 0.0);
            histogram_u8_full(&packed, row_bytes, &weights, &mut pairs);
            bins4.iter_mut().for_each(|v| *v = 0.0);
            fold_pair_bins(&pairs, M, 16, &mut bins4);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
