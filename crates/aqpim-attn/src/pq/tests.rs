//! The fast kernel with values of 256 centroids (one-byte codes added from
//! the rows, [`super::rows`]) against a plain f64 reference that scores the
//! encoded tokens with the same quantized tables and weighs the decoded
//! values. Fixed seeds; grouped-query shapes, block tails, chunks of more
//! than one kernel block.

use aqpim_kvcache::{build, KvShape, KvSpec, KvStore, PqHeadView};
use aqpim_pq::QuantLut;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use super::{pq_head_attention_with, value_path, Values};
use crate::reference::relative_error;
use crate::ScoreTables;

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

/// f64 attention of the (scaled) query `q` over one head: FP16 tokens
/// scored exactly, encoded tokens with the quantized tables of `tables`,
/// every value as the cache reconstructs it (`keys`, `values`: `t x d`).
fn reference(
    view: &PqHeadView<'_>,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    tables: ScoreTables,
) -> Vec<f64> {
    let (d, r) = (q.len(), view.regions);
    let lut = view.key_codebook.unwrap().inner_product_table(q).unwrap();
    let quant = QuantLut::new(&lut, tables.precision().unwrap()).unwrap();
    let (codes, m) = (view.key_codes.to_u8(), view.key_codes.num_subspaces());
    let scores: Vec<f64> = (0..r.sinks + r.encoded + r.recent)
        .map(|t| match t.checked_sub(r.sinks) {
            Some(e) if e < r.encoded => f64::from(quant.score(&codes[e * m..(e + 1) * m])),
            _ => (0..d)
                .map(|i| f64::from(q[i]) * f64::from(keys[t * d + i]))
                .sum(),
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
        let v = view.value_codebook.unwrap();
        let rows = matches!(value_path(&view, v, tables), Values::Rows { .. });
        prop_assert!(rows, "{spec}: values not read from the rows");
        let kv = cache.reconstruct(0, head).unwrap();
        let queries: Vec<f32> = (0..per_group * d)
            .map(|_| rng.gen_range(-0.5f32..0.5))
            .collect();
        let mut got = vec![0f32; per_group * d];
        pq_head_attention_with(&view, &queries, &mut got, tables).unwrap();
        for (i, q) in queries.chunks_exact(d).enumerate() {
            let want = reference(&view, q, &kv.keys, &kv.values, tables);
            let err = relative_error(&got[i * d..(i + 1) * d], &want);
            prop_assert!(
                err <= 1e-5,
                "{spec} ctx={ctx} {tables}: {err:e} from the reference"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 12,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x8B175),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions")
        )),
        ..ProptestConfig::default()
    })]
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
fn byte_values_over_more_than_one_kernel_block() {
    let shape = KvShape::with_query_heads(1, 1, 2, 16).unwrap();
    let spec = "pq:dsub=4,nbits=8,sinks=1,window=3,iters=2";
    check(shape, spec, 4096 + 64 + 37 + 4, 5, ScoreTables::U8).unwrap();
}
