//! The PQ kernel with quantized score tables equals a plain f64 reference
//! that scores the encoded tokens with the same quantized tables
//! (`QuantLut::score` on each token's codes) and the FP16 tokens exactly,
//! within float rounding; and it stays within the stated bound of the kernel
//! with exact tables. Fixed seeds; one-byte, 4-bit and 2-bit key codes
//! (2-bit codes keep the exact tables), values of 16 centroids (weighed in
//! lanes) and of 256 (added from the codebook's rows), grouped-query shapes,
//! block tails.

mod common;

use aqpim_attn::reference::relative_error;
use aqpim_attn::{pq_head_attention_with, ScoreTables};
use aqpim_kvcache::{build, KvShape, KvSpec, KvStore, PqHeadView};
use aqpim_pq::{CodeWidth, QuantLut};
use common::config;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// A one-layer cache of `spec` holding `ctx` tokens (prefill only).
fn filled(shape: KvShape, spec: &str, ctx: usize, seed: u64) -> Box<dyn KvStore> {
    let (g, d) = (shape.num_kv_heads(), shape.head_dim());
    let mut cache = build(shape, &spec.parse::<KvSpec>().unwrap()).unwrap();
    let keys: Vec<f32> = aqpim_pq::synth::kv_like(g * ctx, d, seed)
        .iter()
        .map(|v| v * 0.15)
        .collect();
    let values = aqpim_pq::synth::kv_like(g * ctx, d, seed + 7);
    cache.prefill(0, &keys, &values).unwrap();
    cache
}

/// f64 attention of the (scaled) query `q` over one head: FP16 tokens scored
/// exactly, encoded tokens with `tables` (exact f32 tables when `None`),
/// values decoded (`decoded`: the head's `t x d` values).
fn reference(
    view: &PqHeadView<'_>,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    tables: ScoreTables,
) -> Vec<f64> {
    let d = q.len();
    let r = view.regions;
    let kpq = view.key_codebook.unwrap();
    let lut = kpq.inner_product_table(q).unwrap();
    let quant = match (tables.precision(), view.key_codes.width()) {
        (Some(p), CodeWidth::Byte | CodeWidth::Nibble) => Some(QuantLut::new(&lut, p).unwrap()),
        _ => None,
    };
    let codes = view.key_codes.to_u8();
    let m = view.key_codes.num_subspaces();
    let scores: Vec<f64> = (0..r.sinks + r.encoded + r.recent)
        .map(|t| {
            if t >= r.sinks && t < r.sinks + r.encoded {
                let row = &codes[(t - r.sinks) * m..(t - r.sinks + 1) * m];
                f64::from(match &quant {
                    Some(ql) => ql.score(row),
                    None => lut.score(row),
                })
            } else {
                let k = &keys[t * d..(t + 1) * d];
                q.iter()
                    .zip(k)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum()
            }
        })
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = w.iter().sum();
    let mut o = vec![0f64; d];
    for (wt, v) in w.iter().zip(values.chunks_exact(d)) {
        for (a, b) in o.iter_mut().zip(v) {
            *a += wt * f64::from(*b) / sum;
        }
    }
    o
}

fn check(
    shape: KvShape,
    spec: &str,
    ctx: usize,
    seed: u64,
    tables: ScoreTables,
) -> Result<(), TestCaseError> {
    let cache = filled(shape, spec, ctx, seed);
    let pq = cache.as_pq().unwrap();
    let (g, d) = (shape.num_kv_heads(), shape.head_dim());
    let per_group = shape.num_q_heads() / g;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 1);
    for head in 0..g {
        let view = pq.head(0, head).unwrap();
        let kv = cache.reconstruct(0, head).unwrap();
        let queries: Vec<f32> = (0..per_group * d)
            .map(|_| rng.gen_range(-0.5f32..0.5))
            .collect();
        let mut got = vec![0f32; per_group * d];
        pq_head_attention_with(&view, &queries, &mut got, tables).unwrap();
        let mut exact = vec![0f32; per_group * d];
        pq_head_attention_with(&view, &queries, &mut exact, ScoreTables::Exact).unwrap();
        for (i, q) in queries.chunks_exact(d).enumerate() {
            let want = reference(&view, q, &kv.keys, &kv.values, tables);
            let err = relative_error(&got[i * d..(i + 1) * d], &want);
            prop_assert!(
                err <= 1e-4,
                "{spec} ctx={ctx} {tables}: {err:e} from the reference"
            );
            // Against exact tables: the table quantization alone, a few
            // parts in a thousand with one-byte entries at most.
            let exact64: Vec<f64> = exact[i * d..(i + 1) * d]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let err = relative_error(&got[i * d..(i + 1) * d], &exact64);
            let bound = match tables {
                ScoreTables::Exact => 0.0,
                ScoreTables::U8 => 2e-2,
                ScoreTables::U16 => 1e-4,
            };
            prop_assert!(
                err <= bound,
                "{spec} ctx={ctx} {tables}: {err:e} from exact tables"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(12, 0x7AB1E5))]
    #[test]
    fn quantized_tables_equal_their_reference(
        kbits in prop::sample::select(vec![8u32, 4, 2]),
        dsub in prop::sample::select(vec![1usize, 2, 4]),
        ctx in 40usize..400,
        gqa in any::<bool>(),
        u16 in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let shape = if gqa {
            KvShape::with_query_heads(1, 2, 6, 16).unwrap()
        } else {
            KvShape::new(1, 2, 16).unwrap()
        };
        let spec = format!("pq:dsub={dsub},kbits={kbits},vbits=4,sinks=2,window=8,iters=4");
        let tables = if u16 { ScoreTables::U16 } else { ScoreTables::U8 };
        check(shape, &spec, ctx, seed, tables)?;
    }

    #[test]
    fn byte_values_equal_their_reference(
        dsub in prop::sample::select(vec![1usize, 2, 4, 8]),
        ctx in 300usize..700,
        gqa in any::<bool>(),
        u16 in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let shape = if gqa {
            KvShape::with_query_heads(1, 2, 6, 16).unwrap()
        } else {
            KvShape::new(1, 2, 16).unwrap()
        };
        let spec = format!("pq:dsub={dsub},nbits=8,sinks=2,window=8,iters=4");
        let tables = if u16 { ScoreTables::U16 } else { ScoreTables::U8 };
        check(shape, &spec, ctx, seed, tables)?;
    }
}

#[test]
fn blocks_longer_than_the_kernel_block() {
    // More than one kernel block (4,096 tokens) and a tail of 64-token blocks.
    let shape = KvShape::with_query_heads(1, 1, 2, 8).unwrap();
    check(
        shape,
        "pq:dsub=2,kbits=8,vbits=4,sinks=1,window=3,iters=2",
        4096 + 64 + 37 + 4,
        5,
        ScoreTables::U8,
    )
    .unwrap();
}

#[test]
fn byte_values_over_more_than_one_kernel_block() {
    let shape = KvShape::with_query_heads(1, 1, 2, 16).unwrap();
    let spec = "pq:dsub=4,nbits=8,sinks=1,window=3,iters=2";
    check(shape, spec, 4096 + 64 + 37 + 4, 5, ScoreTables::U8).unwrap();
}
