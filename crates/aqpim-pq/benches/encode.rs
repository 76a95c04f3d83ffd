//! Criterion: encoding 65,536 KV-like vectors (d=128, M=32, nbits=8), and one
//! vector at a time (the decode-time append path), single-threaded.

#![allow(missing_docs)] // criterion_group! generates undocumented public items

use aqpim_pq::{PqParams, ProductQuantizer, TrainOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let data = aqpim_pq::synth::kv_like(65_536, 128, 2);
    let params = PqParams::new(128, 32, 8).unwrap();
    let opts = TrainOptions {
        iterations: 4,
        ..Default::default()
    };
    let pq =
        pool.install(|| ProductQuantizer::train(params, &data[..16_384 * 128], &opts).unwrap());
    let mut g = c.benchmark_group("encode_d128_m32_nbits8");
    g.sample_size(10);
    g.throughput(Throughput::Elements(65_536));
    g.bench_function("batch_65536", |b| {
        b.iter(|| pool.install(|| pq.encode(&data).unwrap()))
    });
    g.throughput(Throughput::Elements(1));
    let mut codes = vec![0u8; 32];
    g.bench_function("one_vector", |b| {
        b.iter(|| pq.encode_one(&data[..128], &mut codes).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
