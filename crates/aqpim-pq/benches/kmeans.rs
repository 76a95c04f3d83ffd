//! Criterion: one k-means run of the PQ training shape (65,536 points, d=4, K=256),
//! one Lloyd iteration and the full 25, single-threaded.

#![allow(missing_docs)] // criterion_group! generates undocumented public items

use aqpim_pq::{kmeans, Init, KMeansOptions};
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let data = aqpim_pq::synth::kv_like(65_536, 4, 1);
    let mut g = c.benchmark_group("kmeans_65536x4_k256");
    g.sample_size(10);
    for iterations in [1usize, 25] {
        let opts = KMeansOptions {
            iterations,
            init: Init::RandomSample,
            ..Default::default()
        };
        g.bench_function(format!("{iterations}_iterations"), |b| {
            b.iter(|| {
                let r = kmeans(&data, 4, 256, None, &opts).unwrap();
                assert!(r.final_objective.is_finite());
                r
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
