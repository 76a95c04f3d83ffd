//! The lowered PIM programs against the CPU kernels: the simulator's outputs
//! (functional mode) equal `pq_head_attention` / the f64 reference within
//! FP16 tolerance over random shapes, contexts and placements; in-memory
//! quantization picks the nearest FP16 centroid; timing-only runs time
//! exactly like functional ones; the analytic layer cost stays within 5 %
//! of the simulator; placements that do not fit are errors. Whole layers
//! run functionally on real caches under the placement and program that
//! `simulate_layer` times equal the CPU kernels (whole-layer timing checks
//! are in `pim_layer.rs`).

use aqpim_attn::pim::{
    analytic_layer, fp16_head_on_pim, layer_rows_per_bank, pq_head_on_pim, quantize_block,
    quantize_on_pim, run_layer, simulate_layer, CacheData, LayerJob, NewTokens, PimKind,
};
use aqpim_attn::reference::{attention_f64, relative_error};
use aqpim_attn::{dense_head_attention, pq_head_attention};
use aqpim_kvcache::CodebookScope;
use aqpim_kvcache::{build, KvPart, KvShape, KvSpec, KvStore};
use aqpim_pim::{Device, Mode, SimOptions, Simulator};
use aqpim_pq::{CodeFormat, PqParams, ProductQuantizer};
use half::f16;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use rand::{Rng, SeedableRng};

fn config(cases: u32, seed: u64) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..Config::default()
    }
}

fn device() -> Device {
    Device::preset("hbm3-aqpim-5.2").unwrap()
}

/// FP16 tolerance: tables, probabilities, codebooks and tokens are FP16 in
/// the banks (relative rounding 2^-11 each); outputs agree to about 1e-3.
const TOL: f64 = 5e-3;

/// Re-runs a functional run's program in timing-only mode: same cycles.
fn same_timing(run: &aqpim_attn::pim::PimRun) -> Result<(), TestCaseError> {
    let mut sim = Simulator::new(
        &device(),
        SimOptions {
            mode: Mode::TimingOnly,
            ..SimOptions::default()
        },
    );
    sim.set_host_data(vec![0; run.host_bytes]);
    let t = sim.run(&run.program).unwrap();
    prop_assert_eq!(t.cycles, run.stats.cycles);
    prop_assert_eq!(t.total_commands, run.stats.total_commands);
    Ok(())
}

proptest! {
    #![proptest_config(config(12, 0x0000_A77A))]

    #[test]
    fn attacc_program_equals_dense_attention(
        d in prop_oneof![Just(16usize), Just(32), Just(64), Just(128)],
        n in 1usize..=2500,
        g in 1usize..=4,
        slices in 1usize..=3,
        seed in 0u64..10_000,
    ) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let keys: Vec<f32> = (0..n * d).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let values: Vec<f32> = (0..n * d).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let queries: Vec<f32> = (0..g * d).map(|_| rng.gen_range(-0.6f32..0.6)).collect();
        let run = fp16_head_on_pim(&device(), &keys, &values, &queries, d, slices).unwrap();
        // The reference sees the FP16 values the banks hold.
        let r16 = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| f16::from_f32(x).to_f32()).collect() };
        let (k16, v16) = (r16(&keys), r16(&values));
        for h in 0..g {
            let q = r16(&queries[h * d..(h + 1) * d]);
            let want = attention_f64(&q, &k16, &v16, 1.0);
            let err = relative_error(&run.out[h * d..(h + 1) * d], &want);
            prop_assert!(err <= TOL, "d={d} n={n} head {h}: relative error {err:e}");
        }
        prop_assert!(run.stats.cycles > 0);
        same_timing(&run)?;
    }

    #[test]
    fn aqpim_program_equals_attention_on_codes(
        shape in prop_oneof![
            Just((128usize, 4usize, 8u32, 8u32)),
            Just((128, 2, 8, 8)),
            Just((64, 4, 8, 8)),
            Just((64, 2, 4, 4)),
            Just((32, 1, 8, 8)),
            Just((16, 4, 4, 4)),
            Just((128, 8, 4, 4)),
            // Keys and values in their own formats (64 B and 32 B per token;
            // 32 B and 16 B: the values share code columns, the keys not).
            Just((128, 2, 8, 4)),
            Just((64, 2, 8, 4)),
            Just((64, 4, 4, 8)),
        ],
        ctx in 1usize..=2500,
        sinks in 0usize..=4,
        window in 0usize..=40,
        g in 1usize..=4,
        slices in 1usize..=3,
        seed in 0u64..10_000,
    ) {
        let (d, dsub, kbits, vbits) = shape;
        let nbits = (kbits, vbits);
        let kshape = KvShape::with_query_heads(1, 1, g, d).unwrap();
        let spec: KvSpec = format!("pq:dsub={dsub},kbits={kbits},vbits={vbits},sinks={sinks},window={window},iters=4")
            .parse()
            .unwrap();
        let mut cache = build(kshape, &spec).unwrap();
        let keys: Vec<f32> = aqpim_pq::synth::kv_like(ctx, d, seed).iter().map(|v| v * 0.15).collect();
        let values: Vec<f32> = keys.iter().map(|v| -0.5 * v + 0.1).collect();
        cache.prefill(0, &keys, &values).unwrap();
        let view = cache.as_pq().unwrap().head(0, 0).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 1);
        let queries: Vec<f32> = (0..g * d).map(|_| rng.gen_range(-0.5f32..0.5)).collect();
        let mut want = vec![0f32; g * d];
        pq_head_attention(&view, &queries, &mut want).unwrap();
        let run = pq_head_on_pim(&device(), &view, &queries, slices).unwrap();
        for h in 0..g {
            let w: Vec<f64> = want[h * d..(h + 1) * d].iter().map(|&x| f64::from(x)).collect();
            let err = relative_error(&run.out[h * d..(h + 1) * d], &w);
            prop_assert!(
                err <= TOL,
                "d={d} dsub={dsub} nbits={nbits:?} ctx={ctx} sinks={sinks} window={window} slices={slices} head {h}: relative error {err:e}"
            );
        }
        same_timing(&run)?;
    }

    #[test]
    fn in_memory_quantization_picks_the_nearest_fp16_centroid(
        shape in prop_oneof![
            Just((128usize, 4usize, 8u32, 8u32, 1usize)),
            Just((128, 2, 8, 8, 1)),
            Just((64, 2, 8, 8, 1)),
            Just((64, 1, 4, 4, 1)),
            Just((64, 4, 8, 8, 2)),
            Just((128, 8, 4, 4, 4)),
            // Keys at 8 bits, values at 4 (64 B and 32 B of codes per token).
            Just((128, 2, 8, 4, 1)),
        ],
        columns in 1usize..=3,
        bank in 0usize..64,
        seed in 0u64..10_000,
    ) {
        // `tpc` tokens share a code column; quantize whole columns.
        let (d, dsub, kbits, vbits, tpc) = shape;
        let n = tpc * columns;
        let params = PqParams::new(d, d / dsub, kbits).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut book = |bits| {
            let params = PqParams::new(d, d / dsub, bits).unwrap();
            let c: Vec<f32> = (0..params.ksub() * d).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            ProductQuantizer::from_centroids(params, c).unwrap()
        };
        let (kq, vq) = (book(kbits), book(vbits));
        let keys: Vec<f32> = (0..n * d).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let values: Vec<f32> = (0..n * d).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let run = quantize_on_pim(&device(), &kq, &vq, &keys, &values, bank).unwrap();
        // Witness: argmin over FP16-rounded sub-vectors and centroids, f32 sums.
        let nearest = |pq: &ProductQuantizer, x: &[f32]| -> Vec<u8> {
            let r = |v: f32| f16::from_f32(v).to_f32();
            x.chunks_exact(d)
                .flat_map(|x| (0..params.num_subspaces()).map(move |m| (x, m)))
                .map(|(x, m)| {
                    let xs = &x[m * dsub..(m + 1) * dsub];
                    let c = pq.subspace_centroids(m);
                    let mut best = (f32::INFINITY, 0usize);
                    for j in 0..pq.params().ksub() {
                        let dist: f32 = (0..dsub).map(|i| { let e = r(xs[i]) - r(c[j * dsub + i]); e * e }).sum();
                        if dist < best.0 { best = (dist, j); }
                    }
                    best.1 as u8
                })
                .collect()
        };
        prop_assert_eq!(run.key_codes, nearest(&kq, &keys));
        prop_assert_eq!(run.value_codes, nearest(&vq, &values));
    }
}

#[test]
fn analytic_layer_cost_tracks_the_simulator_within_5_percent() {
    let dev = device();
    let mut bad = Vec::new();
    let kinds = [PimKind::Fp16, PimKind::pq(4, 8), PimKind::pq(2, 8)];
    for kind in kinds {
        // Eight KV heads come with four query heads each (Llama-3-8B's
        // group), read in passes of as many as the buffer and registers hold.
        for (heads, kv_heads) in [(8, 8), (32, 8), (32, 32), (96, 32)] {
            for ctx in [1000, 8192, 32768] {
                let pq = matches!(kind, PimKind::Pq { .. });
                let job = LayerJob {
                    kind,
                    head_dim: 128,
                    heads,
                    kv_heads,
                    group: if kv_heads == 8 { 4 } else { 1 },
                    ctx,
                    fp_tokens: if pq { 132 } else { 0 },
                    quantize: pq,
                    codebooks: aqpim_kvcache::CodebookScope::Model,
                    placement: aqpim_attn::pim::Placement::Spread,
                };
                let sim = simulate_layer(&dev, &job).unwrap();
                let ana = analytic_layer(&dev, &job).unwrap();
                let err = (ana.cycles as f64 - sim.cycles as f64) / sim.cycles as f64;
                let line = format!(
                    "{kind:?} heads={heads} ctx={ctx}: analytic {} vs simulated {} cycles ({:+.1} %)",
                    ana.cycles,
                    sim.cycles,
                    100.0 * err
                );
                if std::env::var_os("AQPIM_SHOW").is_some() {
                    eprintln!("{line}");
                }
                if err.abs() > 0.05 {
                    bad.push(line);
                }
                assert_eq!(ana.channels_used, sim.channels_used);
            }
        }
    }
    // SmolLM2's shape: 64-element heads, 16-byte codes (two tokens per code
    // column), three query heads per KV head.
    for (heads, ctx) in [(3, 1000), (3, 8192), (24, 8192)] {
        let job = LayerJob {
            kind: PimKind::pq(4, 8),
            head_dim: 64,
            heads,
            kv_heads: 3,
            group: 3,
            ctx,
            fp_tokens: 132,
            quantize: true,
            codebooks: aqpim_kvcache::CodebookScope::Model,
            placement: aqpim_attn::pim::Placement::Spread,
        };
        let sim = simulate_layer(&dev, &job).unwrap();
        let ana = analytic_layer(&dev, &job).unwrap();
        let err = (ana.cycles as f64 - sim.cycles as f64) / sim.cycles as f64;
        if err.abs() > 0.05 {
            bad.push(format!(
                "d=64 heads={heads} ctx={ctx}: analytic {} vs simulated {} ({:+.1} %)",
                ana.cycles,
                sim.cycles,
                100.0 * err
            ));
        }
    }
    assert!(bad.is_empty(), "beyond 5 %:\n{}", bad.join("\n"));
}

#[test]
fn placements_that_do_not_fit_say_by_how_much() {
    let dev = device();
    // 128K FP16 tokens x 4096 caches of one layer: far beyond 16K rows per bank.
    let job = LayerJob {
        kind: PimKind::Fp16,
        head_dim: 128,
        heads: 4096,
        kv_heads: 32,
        group: 1,
        ctx: 131_072,
        fp_tokens: 0,
        quantize: false,
        codebooks: aqpim_kvcache::CodebookScope::Model,
        placement: aqpim_attn::pim::Placement::Spread,
    };
    let e = layer_rows_per_bank(&dev, &job).unwrap_err().to_string();
    assert!(e.contains("rows per bank") && e.contains("over"), "{e}");
    // A head dimension that does not fill columns.
    let bad = LayerJob {
        head_dim: 12,
        heads: 1,
        kv_heads: 1,
        ctx: 10,
        ..job
    };
    let e = simulate_layer(&dev, &bad).unwrap_err().to_string();
    assert!(e.contains("head dimension 12"), "{e}");
    // Codes too wide for the registers' bins: 4-bit codes are fine, 3-bit are not.
    let e = simulate_layer(
        &dev,
        &LayerJob {
            kind: PimKind::pq(4, 9),
            head_dim: 128,
            ..bad
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("9-bit"), "{e}");
}

#[test]
fn keys_and_values_in_their_own_formats_equal_attention_on_codes() {
    // Every mixed shape at a few fixed points (the property test above
    // samples them among others).
    for (d, dsub, kbits, vbits) in [(128usize, 2usize, 8u32, 4u32), (64, 2, 8, 4), (64, 4, 4, 8)] {
        for (ctx, slices, window) in [(700usize, 1usize, 0usize), (2100, 3, 33)] {
            let kshape = KvShape::with_query_heads(1, 1, 2, d).unwrap();
            let spec: KvSpec = format!(
                "pq:dsub={dsub},kbits={kbits},vbits={vbits},sinks=2,window={window},iters=4"
            )
            .parse()
            .unwrap();
            let mut cache = build(kshape, &spec).unwrap();
            let keys: Vec<f32> = aqpim_pq::synth::kv_like(ctx, d, 7)
                .iter()
                .map(|v| v * 0.15)
                .collect();
            let values: Vec<f32> = keys.iter().map(|v| -0.5 * v + 0.1).collect();
            cache.prefill(0, &keys, &values).unwrap();
            let view = cache.as_pq().unwrap().head(0, 0).unwrap();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
            let queries: Vec<f32> = (0..2 * d).map(|_| rng.gen_range(-0.5f32..0.5)).collect();
            let mut want = vec![0f32; 2 * d];
            pq_head_attention(&view, &queries, &mut want).unwrap();
            let run = pq_head_on_pim(&device(), &view, &queries, slices).unwrap();
            for h in 0..2 {
                let w: Vec<f64> = want[h * d..(h + 1) * d]
                    .iter()
                    .map(|&x| f64::from(x))
                    .collect();
                let err = relative_error(&run.out[h * d..(h + 1) * d], &w);
                assert!(
                    err <= TOL,
                    "d={d} dsub={dsub} k{kbits} v{vbits} ctx={ctx}: {err:e}"
                );
            }
        }
    }
    // A layer in a mixed format: the closed form tracks the simulator, and
    // its bins-times-codebook step costs what the value format costs.
    let dev = device();
    let job = |kind| LayerJob {
        kind,
        head_dim: 128,
        heads: 32,
        kv_heads: 32,
        group: 1,
        ctx: 8192,
        fp_tokens: 132,
        quantize: true,
        codebooks: aqpim_kvcache::CodebookScope::Model,
        placement: aqpim_attn::pim::Placement::Spread,
    };
    let mixed = PimKind::Pq {
        key: CodeFormat::new(4, 8, true),
        value: CodeFormat::new(2, 4, true),
    };
    let sim = simulate_layer(&dev, &job(mixed)).unwrap();
    let ana = analytic_layer(&dev, &job(mixed)).unwrap();
    let err = (ana.cycles as f64 - sim.cycles as f64).abs() / sim.cycles as f64;
    assert!(
        err < 0.05,
        "analytic {} vs simulated {}",
        ana.cycles,
        sim.cycles
    );
    let k8 = simulate_layer(&dev, &job(PimKind::pq(4, 8))).unwrap();
    let v4 = simulate_layer(&dev, &job(PimKind::pq(2, 4))).unwrap();
    assert!(
        v4.cycles <= sim.cycles && sim.cycles < k8.cycles,
        "{} {} {}",
        v4.cycles,
        sim.cycles,
        k8.cycles
    );
}

#[test]
fn two_bit_rows_reach_the_banks_as_unpacked_codes() {
    // The store packs 2-bit codes four per byte; the banks keep their 8-bit
    // columns (PIM layouts hold 4- or 8-bit codes), so the loader unpacks
    // them: the same run as from one byte per code, and the CPU kernel's
    // output within FP16 tolerance.
    let (d, ctx) = (64, 900);
    let mut outs = Vec::new();
    for pack in [true, false] {
        let kshape = KvShape::with_query_heads(1, 1, 2, d).unwrap();
        let spec: KvSpec = format!("pq:dsub=4,nbits=2,sinks=2,window=16,iters=4,pack={pack}")
            .parse()
            .unwrap();
        let mut cache = build(kshape, &spec).unwrap();
        let keys: Vec<f32> = aqpim_pq::synth::kv_like(ctx, d, 5)
            .iter()
            .map(|v| v * 0.15)
            .collect();
        let values: Vec<f32> = keys.iter().map(|v| -0.5 * v + 0.1).collect();
        cache.prefill(0, &keys, &values).unwrap();
        let view = cache.as_pq().unwrap().head(0, 0).unwrap();
        assert_eq!(view.key_codes.row_bytes(), if pack { 4 } else { 16 });
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let queries: Vec<f32> = (0..2 * d).map(|_| rng.gen_range(-0.5f32..0.5)).collect();
        let mut want = vec![0f32; 2 * d];
        pq_head_attention(&view, &queries, &mut want).unwrap();
        let run = pq_head_on_pim(&device(), &view, &queries, 2).unwrap();
        for h in 0..2 {
            let w: Vec<f64> = want[h * d..(h + 1) * d]
                .iter()
                .map(|&x| f64::from(x))
                .collect();
            let err = relative_error(&run.out[h * d..(h + 1) * d], &w);
            assert!(err <= TOL, "pack={pack} head {h}: {err:e}");
        }
        outs.push((run.out, run.stats.cycles));
    }
    assert_eq!(outs[0], outs[1]);
}

/// Per vector of `x` and subspace, the nearest centroid of `pq` by squared
/// distance over FP16-rounded sub-vectors and centroids, summed in f32 (what
/// `ARGMIN` computes).
fn nearest_fp16(pq: &ProductQuantizer, x: &[f32]) -> Vec<u8> {
    let p = pq.params();
    let (d, dsub) = (p.dim(), p.dsub());
    let r = |v: f32| f16::from_f32(v).to_f32();
    x.chunks_exact(d)
        .flat_map(|x| (0..p.num_subspaces()).map(move |m| (x, m)))
        .map(|(x, m)| {
            let xs = &x[m * dsub..(m + 1) * dsub];
            let c = pq.subspace_centroids(m);
            let mut best = (f32::INFINITY, 0usize);
            for j in 0..p.ksub() {
                let dist: f32 = (0..dsub)
                    .map(|i| {
                        let e = r(xs[i]) - r(c[j * dsub + i]);
                        e * e
                    })
                    .sum();
                if dist < best.0 {
                    best = (dist, j);
                }
            }
            best.1 as u8
        })
        .collect()
}

/// Caches of `batch` sequences of `kv_heads` heads (`tokens` each, random
/// KV-like data), PQ in `spec` or FP16 when `spec` is `None`. Under
/// `share_books` every sequence uses the first one's codebooks (calibrated
/// per layer and KV head, as `CodebookScope::Model` places them).
fn caches(
    batch: usize,
    shape: KvShape,
    tokens: usize,
    spec: &KvSpec,
    share_books: bool,
    seed: u64,
) -> Vec<Box<dyn KvStore>> {
    let (kv_heads, d) = (shape.num_kv_heads(), shape.head_dim());
    let mut out: Vec<Box<dyn KvStore>> = Vec::new();
    for s in 0..batch {
        let mut cache = build(shape, spec).unwrap();
        if let (true, Some(first)) = (share_books, out.first().and_then(|f| f.as_pq())) {
            for h in 0..kv_heads {
                let k = first.codebook(0, h, KvPart::Keys).unwrap().unwrap().clone();
                let v = first
                    .codebook(0, h, KvPart::Values)
                    .unwrap()
                    .unwrap()
                    .clone();
                cache
                    .as_pq_mut()
                    .unwrap()
                    .set_codebooks(0, h, k, v)
                    .unwrap();
            }
        }
        let keys: Vec<f32> = aqpim_pq::synth::kv_like(kv_heads * tokens, d, seed + s as u64)
            .iter()
            .map(|v| v * 0.15)
            .collect();
        let values: Vec<f32> = keys.iter().map(|v| -0.5 * v + 0.1).collect();
        cache.prefill(0, &keys, &values).unwrap();
        out.push(cache);
    }
    out
}

/// One layer's shape for [`check_layer`]: the code format (`None` for FP16,
/// else `(dsub, key bits, value bits)`), head dimension, sequences, KV
/// heads, query heads per KV head, tokens, sinks, window, codebooks per
/// sequence, seed.
#[derive(Debug, Clone, Copy)]
struct LayerCase {
    format: Option<(usize, u32, u32)>,
    d: usize,
    batch: usize,
    kv_heads: usize,
    group: usize,
    tokens: usize,
    sinks: usize,
    window: usize,
    sequence_books: bool,
    seed: u64,
}

/// `run_layer` on real caches of `case` against the CPU kernels, and its
/// cycles and commands against `simulate_layer`'s.
fn check_layer(case: LayerCase) -> Result<(), TestCaseError> {
    let LayerCase {
        format,
        d,
        batch,
        kv_heads,
        group,
        tokens,
        sinks,
        window,
        sequence_books,
        seed,
    } = case;
    let dev = device();
    let spec: KvSpec = match format {
        None => KvSpec::Dense,
        Some((dsub, kbits, vbits)) => format!(
            "pq:dsub={dsub},kbits={kbits},vbits={vbits},sinks={sinks},window={window},iters=4"
        )
        .parse()
        .unwrap(),
    };
    let scope = if sequence_books {
        CodebookScope::Sequence
    } else {
        CodebookScope::Model
    };
    let caches = caches(
        batch,
        KvShape::with_query_heads(1, kv_heads, kv_heads * group, d).unwrap(),
        tokens,
        &spec,
        !sequence_books,
        seed,
    );
    let heads = batch * kv_heads;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 99);
    let queries: Vec<f32> = (0..heads * group * d)
        .map(|_| rng.gen_range(-0.5f32..0.5))
        .collect();
    let mut want = vec![0f32; heads * group * d];
    let mut data = Vec::new();
    for c in 0..heads {
        let (s, h) = (c / kv_heads, c % kv_heads);
        let (q, o) = (
            &queries[c * group * d..(c + 1) * group * d],
            &mut want[c * group * d..(c + 1) * group * d],
        );
        if let Some(store) = caches[s].as_pq() {
            let view = store.head(0, h).unwrap();
            pq_head_attention(&view, q, o).unwrap();
            data.push(CacheData::Pq(view));
        } else {
            let store = caches[s].as_dense().unwrap();
            dense_head_attention(store, 0, h, q, o).unwrap();
            data.push(CacheData::Fp16 {
                keys: store.keys(0, h).unwrap(),
                values: store.values(0, h).unwrap(),
            });
        }
    }
    let (kind, ctx, fp_tokens) = match (format, &data[0]) {
        (Some((dsub, kbits, vbits)), CacheData::Pq(v)) => (
            PimKind::Pq {
                key: CodeFormat::new(dsub, kbits, true),
                value: CodeFormat::new(dsub, vbits, true),
            },
            v.key_codes.tokens(),
            v.sink_keys.len() + v.recent_keys.len(),
        ),
        _ => (PimKind::Fp16, tokens, 0),
    };
    // In-memory quantization of a block of new tokens per cache where
    // one program's caches share codebooks and both parts tile columns
    // alike.
    let quantize = matches!(format, Some((_, k, v)) if k == v) && !sequence_books;
    let job = LayerJob {
        kind,
        head_dim: d,
        heads,
        kv_heads,
        group,
        ctx,
        fp_tokens,
        quantize,
        codebooks: scope,
        placement: aqpim_attn::pim::Placement::Spread,
    };
    let block = if quantize {
        quantize_block(&dev, &job).unwrap()
    } else {
        0
    };
    let new_keys: Vec<f32> = (0..heads * block * d)
        .map(|_| rng.gen_range(-0.3f32..0.3))
        .collect();
    let new_values: Vec<f32> = (0..heads * block * d)
        .map(|_| rng.gen_range(-0.3f32..0.3))
        .collect();
    let new = quantize.then_some(NewTokens {
        keys: &new_keys,
        values: &new_values,
    });
    let run = run_layer(&dev, &job, &data, &queries, new).unwrap();
    if quantize {
        for (c, codes) in run.new_codes.iter().enumerate() {
            let CacheData::Pq(view) = data[c] else {
                unreachable!()
            };
            let at = c * block * d..(c + 1) * block * d;
            prop_assert_eq!(
                &codes.key_codes,
                &nearest_fp16(view.key_codebook.unwrap(), &new_keys[at.clone()])
            );
            prop_assert_eq!(
                &codes.value_codes,
                &nearest_fp16(view.value_codebook.unwrap(), &new_values[at])
            );
        }
    }
    for i in 0..heads * group {
        let w: Vec<f64> = want[i * d..(i + 1) * d]
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        let err = relative_error(&run.out[i * d..(i + 1) * d], &w);
        prop_assert!(
            err <= TOL,
            "{job:?}: query head {i}: relative error {err:e}"
        );
    }
    // The same program as the timing run: the same cycles and commands.
    let timed = simulate_layer(&dev, &job).unwrap();
    prop_assert_eq!(run.stats.cycles, timed.cycles);
    prop_assert_eq!(run.stats.total_commands, timed.commands);
    prop_assert_eq!(
        run.phases.iter().map(|p| p.cycles).sum::<u64>(),
        run.stats.cycles
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(10, 0x1A7E_4F00))]

    #[test]
    fn layer_program_on_real_caches_equals_the_cpu_kernels(
        format in prop_oneof![
            Just(None),
            Just(Some((4usize, 8u32, 8u32))),
            Just(Some((2, 4, 4))),
            Just(Some((2, 8, 4))),
        ],
        d in prop_oneof![Just(64usize), Just(128)],
        batch in 1usize..=2,
        kv_heads in 1usize..=3,
        group in prop_oneof![Just(1usize), Just(2), Just(4)],
        tokens in 200usize..=1500,
        sinks in 0usize..=4,
        window in 0usize..=40,
        sequence_books in any::<bool>(),
        seed in 0u64..10_000,
    ) {
        check_layer(LayerCase { format, d, batch, kv_heads, group, tokens, sinks, window, sequence_books, seed })?;
    }
}

/// Llama-3-8B's group of four query heads per KV head, for each kind: FP16
/// and 4-bit-key PQ read a slice's rows once for the four (one pass), the
/// shipped 8-bit keys (dsub 2, 4-bit values) once per head (their table
/// fills the buffer), 8-bit dsub 4 likewise; at d = 64, 4-bit codes of 2
/// elements put two tokens in a code column.
#[test]
fn a_group_of_four_on_real_caches_equals_the_cpu_kernels() {
    for (i, (format, d)) in [
        (None, 128),
        (Some((2usize, 4u32, 4u32)), 128),
        (Some((2, 8, 4)), 128),
        (Some((4, 8, 8)), 128),
        (Some((2, 4, 4)), 64),
    ]
    .into_iter()
    .enumerate()
    {
        let case = LayerCase {
            format,
            d,
            batch: 1,
            kv_heads: 2,
            group: 4,
            tokens: 1200,
            sinks: 4,
            window: 16,
            sequence_books: false,
            seed: 40 + i as u64,
        };
        if let Err(e) = check_layer(case) {
            panic!("{case:?}: {e}");
        }
    }
}

#[test]
fn model_scope_needs_one_value_codebook_per_kv_head() {
    let spec: KvSpec = "pq:dsub=4,nbits=4,sinks=0,window=0,iters=2"
        .parse()
        .unwrap();
    // One-head sequences that trained their own codebooks, more than the
    // channels: two of them share channel 0 and its one codebook copy.
    let n = device().org.channels + 4;
    let caches = caches(
        n,
        KvShape::with_query_heads(1, 1, 1, 64).unwrap(),
        64,
        &spec,
        false,
        3,
    );
    let data: Vec<CacheData<'_>> = caches
        .iter()
        .map(|c| CacheData::Pq(c.as_pq().unwrap().head(0, 0).unwrap()))
        .collect();
    let job = LayerJob {
        kind: PimKind::pq(4, 4),
        head_dim: 64,
        heads: n,
        kv_heads: 1,
        group: 1,
        ctx: 64,
        fp_tokens: 0,
        quantize: false,
        codebooks: CodebookScope::Model,
        placement: aqpim_attn::pim::Placement::Spread,
    };
    let queries = vec![0.1f32; n * 64];
    let e = match run_layer(&device(), &job, &data, &queries, None) {
        Ok(_) => panic!("caches with their own codebooks ran under the model scope"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("value codebook"), "{e}");
    // Per-sequence codebooks: every cache gets its own copy.
    let own = LayerJob {
        codebooks: CodebookScope::Sequence,
        placement: aqpim_attn::pim::Placement::Spread,
        ..job
    };
    run_layer(&device(), &own, &data, &queries, None).unwrap();
    let e = run_layer(
        &device(),
        &LayerJob { ctx: 63, ..own },
        &data,
        &queries,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("token count"), "{e}");
    let quantize = LayerJob {
        quantize: true,
        ..own
    };
    let e = run_layer(&device(), &quantize, &data, &queries, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("new tokens"), "{e}");
    // One program quantizes the new tokens of caches that share channel 0
    // with one pair of codebooks: theirs differ.
    let block = quantize_block(&device(), &quantize).unwrap();
    let x = vec![0.1f32; n * block * 64];
    let new = Some(NewTokens {
        keys: &x,
        values: &x,
    });
    let e = match run_layer(&device(), &quantize, &data, &queries, new) {
        Ok(_) => panic!("one quantization program with two pairs of codebooks"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("share their codebooks"), "{e}");
}
