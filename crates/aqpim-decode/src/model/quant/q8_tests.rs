//! Tests of the 8-bit activation path: the quantizer against its formulas,
//! every kernel's per-block integer sums equal to the portable reference
//! bit for bit, and every kernel's rows equal to it up to the order of the
//! f32 additions.

use super::*;
use crate::model::quant::f16_at;
use half::f16;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn config(cases: u32, seed: u64) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

const TYPES: [GgmlType; 3] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0];

/// `rows` rows of `blocks` raw blocks of `ty`: random f16 scales (and
/// minimums) and random code bytes, so that every nibble value and, for
/// Q8_0, the byte -128 (which ggml's quantizer never writes but a file may
/// hold) occur.
fn raw_rows(ty: GgmlType, rows: usize, blocks: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let (bb, off) = layout(ty);
    let mut out = Vec::with_capacity(rows * blocks * bb);
    for _ in 0..rows * blocks {
        out.extend_from_slice(
            &f16::from_f32(rng.gen_range(-0.05f32..0.05))
                .to_bits()
                .to_le_bytes(),
        );
        if off == 4 {
            out.extend_from_slice(
                &f16::from_f32(rng.gen_range(-0.5f32..0.5))
                    .to_bits()
                    .to_le_bytes(),
            );
        }
        out.extend((off..bb).map(|_| rng.gen::<u8>()));
    }
    out
}

/// Activations with a scale varying by block, some blocks all zero.
fn activations(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut x = vec![0f32; n];
    for xb in x.chunks_exact_mut(QK) {
        let scale = match rng.gen_range(0..4) {
            0 => 0.0,
            1 => 1e-3,
            2 => 1.0,
            _ => 40.0,
        };
        xb.iter_mut()
            .for_each(|v| *v = scale * rng.gen_range(-1.0f32..1.0));
    }
    x
}

#[test]
fn quantizer_follows_its_formulas() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = activations(8 * QK, &mut rng);
    let q = Q8Activations::quantize(&x).unwrap();
    assert_eq!((q.len(), q.scales().len()), (x.len(), 8));
    for (b, xb) in x.chunks_exact(QK).enumerate() {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        assert_eq!(q.scales()[b], f16::from_f32(d).to_f32());
        let codes = &q.codes()[b * QK..(b + 1) * QK];
        let sum: i32 = codes.iter().map(|&c| c as i32).sum();
        assert_eq!(q.code_sums()[b], sum);
        assert_eq!(q.scaled_sums()[b], f16::from_f32(d * sum as f32).to_f32());
        for (&c, &v) in codes.iter().zip(xb) {
            assert!(c.unsigned_abs() <= 127);
            // Each code is within half a step of x / d.
            assert!((c as f32 * d - v).abs() <= 0.5001 * d, "{c} * {d} vs {v}");
        }
    }
}

#[test]
fn quantizer_rounds_ties_to_even_as_ggml_on_x86() {
    // amax = 127 gives id = 1, so x * id = x exactly.
    let mut x = [0f32; QK];
    x[0] = 127.0;
    x[1..5].copy_from_slice(&[2.5, 3.5, -2.5, -0.5]);
    let q = Q8Activations::quantize(&x).unwrap();
    assert_eq!(&q.codes()[..5], &[127, 2, 4, -2, 0]);
}

#[test]
fn bad_shapes_are_errors() {
    assert!(Q8Activations::quantize(&[0.0; QK + 1]).is_err());
    let x = Q8Activations::quantize(&[0.5; 2 * QK]).unwrap();
    let m = QMatrix::from_f32(GgmlType::Q4_1, 3, 2 * QK, &[0.1; 6 * QK]).unwrap();
    assert!(m.gemv_q8(&x, &mut [0.0; 2]).is_err());
    let short = Q8Activations::quantize(&[0.5; QK]).unwrap();
    assert!(m.gemv_q8(&short, &mut [0.0; 3]).is_err());
    let f = QMatrix::from_f32(GgmlType::F32, 3, 2 * QK, &[0.1; 6 * QK]).unwrap();
    let err = f.gemv_q8(&x, &mut [0.0; 3]).unwrap_err().to_string();
    assert!(err.contains("F32"), "{err}");
    assert!(m.gemv_q8(&x, &mut [0.0; 3]).is_ok());
}

/// `sum |term|` of a row's reference sum: the scale of its f32 rounding.
fn magnitude(ty: GgmlType, row: &[u8], x: &Q8Activations, isums: &[i32]) -> f32 {
    let (bb, _) = layout(ty);
    row.chunks_exact(bb)
        .enumerate()
        .map(|(blk, b)| {
            let m = if ty == GgmlType::Q4_1 {
                (f16_at(b, 2) * x.scaled_sums()[blk]).abs()
            } else {
                0.0
            };
            (f16_at(b, 0) * x.scales()[blk] * isums[blk] as f32).abs() + m
        })
        .sum()
}

/// Every kernel's per-block integer sums equal the portable reference bit
/// for bit; its rows equal the portable rows within `1e-5 * sum |term|`
/// (the kernels add 8 lanes per block in another order: a few rounding
/// errors of f32 over at most a few hundred terms).
fn check_kernels(ty: GgmlType, rows: usize, blocks: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w = raw_rows(ty, rows, blocks, &mut rng);
    let x = Q8Activations::quantize(&activations(blocks * QK, &mut rng)).unwrap();
    let rb = w.len() / rows;
    let variants = all_variants(ty, &w, rb, &x, rows);
    for (r, row) in w.chunks_exact(rb).enumerate() {
        let sums = all_block_isums(ty, row, &x);
        for (name, s) in &sums {
            assert_eq!(s, &sums[0].1, "{ty:?} {name} row {r}: block sums");
        }
        let tol = 1e-5 * magnitude(ty, row, &x, &sums[0].1) + 1e-30;
        let want = variants[0].1[r];
        for (name, y) in &variants {
            assert!(
                (y[r] - want).abs() <= tol,
                "{ty:?} {name} row {r}: {} vs {want} (tol {tol})",
                y[r]
            );
        }
    }
}

proptest! {
    #![proptest_config(config(96, 25))]

    #[test]
    fn kernels_equal_the_portable_reference(
        t in 0usize..3, rows in 1usize..11, blocks in 1usize..9, seed in any::<u64>()
    ) {
        check_kernels(TYPES[t], rows, blocks, seed);
    }
}

#[test]
fn model_shapes_on_every_kernel() {
    // The widths of the model the decode bench runs (576 and 1536).
    for ty in TYPES {
        check_kernels(ty, 9, 18, 7);
        check_kernels(ty, 5, 48, 8);
    }
}

#[test]
fn q8_gemv_is_close_to_the_f32_gemv_on_every_thread_count() {
    let (rows, cols) = (150, 4 * QK);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let x = activations(cols, &mut rng);
    let xq = Q8Activations::quantize(&x).unwrap();
    for ty in TYPES {
        let m = QMatrix::from_f32(ty, rows, cols, &w).unwrap();
        let mut exact = vec![0f32; rows];
        m.gemv(&x, &mut exact);
        // The widest kernel, the one `gemv_q8` dispatches to.
        let (_, want) = all_variants(ty, &m.bytes, m.row_bytes(), &xq, rows)
            .pop()
            .unwrap();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut y = vec![0f32; rows];
            pool.install(|| m.gemv_q8(&xq, &mut y)).unwrap();
            // The dispatched kernel, split into tasks, gives the same rows.
            assert_eq!(y, want, "{ty:?} on {threads} threads");
        }
        // 8-bit activations lose about 1/254 of each block's range per value.
        let xnorm: f32 = x.iter().map(|v| v.abs()).sum();
        let wmax = w.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (a, b) in want.iter().zip(&exact) {
            assert!((a - b).abs() <= 0.02 * wmax * xnorm, "{ty:?}: {a} vs {b}");
        }
    }
}

#[test]
fn simd_quantizer_equals_the_portable_one() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for blocks in [1, 3, 18, 48] {
        let mut x = activations(blocks * QK, &mut rng);
        // Exact ties at amax = 127 (id = 1), both signs.
        x[..4].copy_from_slice(&[127.0, 2.5, -3.5, 0.5]);
        let fast = Q8Activations::quantize(&x).unwrap();
        let mut slow = fast.clone();
        slow.quantize_portable(&x);
        assert_eq!(fast.codes(), slow.codes(), "{blocks} blocks: codes");
        assert_eq!(fast.scales(), slow.scales());
        assert_eq!(fast.scaled_sums(), slow.scaled_sums());
        assert_eq!(fast.code_sums(), slow.code_sums());
    }
}
