//! Criterion: ADC scans (inner-product lookup tables) over 65,536 codes of
//! M=32 subspaces: one-byte 8-bit codes, packed 4-bit codes, packed 2-bit
//! codes, and the blocked 4-bit fast-scan layout. Every scan's output is checked once against
//! `Lut::score` before timing.

#![allow(missing_docs)] // criterion_group! generates undocumented public items

use aqpim_pq::{pack_2bit, pack_4bit, FastScanCodes, Lut, PqParams, ProductQuantizer};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};

const N: usize = 65_536;
const M: usize = 32;

fn setup(nbits: u32) -> (Lut, Vec<u8>) {
    let params = PqParams::new(128, M, nbits).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let cents = (0..params.codebook_len())
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let pq = ProductQuantizer::from_centroids(params, cents).unwrap();
    let q: Vec<f32> = (0..128).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let codes = (0..N * M)
        .map(|_| rng.gen_range(0..params.ksub()) as u8)
        .collect();
    (pq.inner_product_table(&q).unwrap(), codes)
}

fn check(lut: &Lut, codes: &[u8], out: &[f32]) {
    for i in (0..N).step_by(997) {
        let want = lut.score(&codes[i * M..(i + 1) * M]);
        assert!(
            (out[i] - want).abs() <= 1e-4 * (1.0 + want.abs()),
            "scan output {i} is wrong"
        );
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("adc_m32");
    g.throughput(Throughput::Elements(N as u64));
    let mut out = vec![0f32; N];

    let (lut8, codes8) = setup(8);
    lut8.scan_u8(&codes8, &mut out).unwrap();
    check(&lut8, &codes8, &out);
    g.bench_function("u8_nbits8", |b| {
        b.iter(|| lut8.scan_u8(&codes8, &mut out).unwrap())
    });

    let (lut4, codes4) = setup(4);
    let packed = pack_4bit(&codes4, M).unwrap();
    lut4.scan_packed4(&packed, &mut out).unwrap();
    check(&lut4, &codes4, &out);
    g.bench_function("packed_nbits4", |b| {
        b.iter(|| lut4.scan_packed4(&packed, &mut out).unwrap())
    });

    let (lut2, codes2) = setup(2);
    let packed2 = pack_2bit(&codes2, M).unwrap();
    lut2.scan_packed2(&packed2, &mut out).unwrap();
    check(&lut2, &codes2, &out);
    g.bench_function("packed_nbits2", |b| {
        b.iter(|| lut2.scan_packed2(&packed2, &mut out).unwrap())
    });

    let fast = FastScanCodes::from_codes(&codes4, M).unwrap();
    fast.scan(&lut4, &mut out).unwrap();
    check(&lut4, &codes4, &out);
    g.bench_function("fastscan_nbits4", |b| {
        b.iter(|| fast.scan(&lut4, &mut out).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
