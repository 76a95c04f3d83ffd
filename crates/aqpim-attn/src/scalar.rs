//! Decode attention over the KIVI-style scalar store: the baseline that PQ
//! must beat at equal bits, read the same way (FP16 sinks and window in the
//! same online softmax), with quantized tokens dequantized block by block
//! into f32 scratch with the store's formula: `x = min + q * scale` (KIVI) or
//! `x = q * 2^(e - 127)` (MX, `mx=true`, `q` signed, `e` the group's E8M0 exponent).

use aqpim_kvcache::{mx, KvSpec, KvStore, ScalarHeadView, ScalarSpec, ScalarStore};

use crate::error::{AttnError, Result};
use crate::stream::{f32_block, finish, fp_tokens, Acc, Scratch, BLOCK};

/// Decode attention over a scalar-quantized cache for one layer: `queries`
/// holds `H x d`, `out` receives `H x d`. Parallel over KV heads.
pub fn attend_scalar(
    store: &ScalarStore,
    layer: usize,
    queries: &[f32],
    out: &mut [f32],
) -> Result<()> {
    crate::stream::for_each_group(
        store.shape(),
        layer,
        store.num_tokens(layer)?,
        queries,
        out,
        |g, qs, outs| scalar_head_attention(store, layer, g, qs, outs),
    )
}

/// Attention of a group of query heads (`queries`: `g x d`, already scaled)
/// over one KV head of a scalar cache, into `out` (`g x d`).
pub fn scalar_head_attention(
    store: &ScalarStore,
    layer: usize,
    kv_head: usize,
    queries: &[f32],
    out: &mut [f32],
) -> Result<()> {
    let KvSpec::Scalar(sc) = store.spec() else {
        return Err(AttnError::Unsupported("scalar store without a scalar spec"));
    };
    let view = store.head(layer, kv_head)?;
    let d = view.sink_keys.head_dim();
    let mut accs = vec![Acc::new(d, 0); queries.len() / d];
    let mut scratch = Scratch::default();
    fp_tokens(
        queries,
        view.sink_keys,
        view.sink_values,
        &mut accs,
        &mut scratch,
    );
    encoded_tokens(&view, queries, d, sc, &mut accs, &mut scratch)?;
    fp_tokens(
        queries,
        view.recent_keys,
        view.recent_values,
        &mut accs,
        &mut scratch,
    );
    finish(&accs, out);
    Ok(())
}

fn encoded_tokens(
    view: &ScalarHeadView<'_>,
    queries: &[f32],
    d: usize,
    sc: &ScalarSpec,
    accs: &mut [Acc],
    scratch: &mut Scratch,
) -> Result<()> {
    let n = view.regions.encoded;
    if n == 0 {
        return Ok(());
    }
    let (bits, group) = (sc.bits, sc.group);
    let row_bytes = (d * bits as usize).div_ceil(8);
    if group == 0 || !d.is_multiple_of(group) {
        return Err(AttnError::shape(
            "scalar head",
            format!("a group dividing head_dim = {d}"),
            group,
        ));
    }
    let groups = d / group;
    let (side, side_len, what) = if sc.mx {
        (
            [view.key_exponents.len(), view.value_exponents.len()],
            n * groups,
            "exponent bytes",
        )
    } else {
        (
            [view.key_params.len(), view.value_params.len()],
            2 * n * groups,
            "value (min, scale) values",
        )
    };
    if view.key_codes.len() != n * row_bytes
        || view.value_codes.len() != n * row_bytes
        || side[1] != side_len
        || (sc.mx && side[0] != side_len)
        || (!sc.mx && view.key_params.len() != n / group * d * 2)
    {
        return Err(AttnError::shape(
            "scalar head",
            format!("{n} tokens x {row_bytes} code bytes, {side_len} {what}"),
            view.key_codes.len(),
        ));
    }
    // Blocks hold whole key groups (KIVI: G tokens share a channel's min and
    // scale; MX: a group lies within one token).
    let tg = sc.token_group();
    let block = (BLOCK / tg).max(1) * tg;
    let mask = ((1u32 << bits) - 1) as u8;
    let code = |row: &[u8], c: usize| {
        let bit = c * bits as usize;
        (row[bit / 8] >> (bit % 8)) & mask
    };
    let mut start = 0;
    while start < n {
        let b = block.min(n - start);
        scratch.keys.resize(b * d, 0.0);
        scratch.values.resize(b * d, 0.0);
        for t in 0..b {
            let tok = start + t;
            let krow = &view.key_codes[tok * row_bytes..(tok + 1) * row_bytes];
            let vrow = &view.value_codes[tok * row_bytes..(tok + 1) * row_bytes];
            let (kout, vout) = (
                &mut scratch.keys[t * d..(t + 1) * d],
                &mut scratch.values[t * d..(t + 1) * d],
            );
            if sc.mx {
                for c in 0..d {
                    let i = tok * groups + c / group;
                    kout[c] = mx::dequantize(code(krow, c), bits, view.key_exponents[i]);
                    vout[c] = mx::dequantize(code(vrow, c), bits, view.value_exponents[i]);
                }
            } else {
                for c in 0..d {
                    let kp = ((tok / group) * d + c) * 2;
                    let vp = (tok * groups + c / group) * 2;
                    kout[c] = view.key_params[kp].to_f32()
                        + f32::from(code(krow, c)) * view.key_params[kp + 1].to_f32();
                    vout[c] = view.value_params[vp].to_f32()
                        + f32::from(code(vrow, c)) * view.value_params[vp + 1].to_f32();
                }
            }
        }
        f32_block(queries, d, accs, scratch);
        start += b;
    }
    Ok(())
}
