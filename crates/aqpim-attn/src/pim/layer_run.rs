//! A whole layer run functionally ([`run_layer`]): real caches loaded where
//! the layer [`plan`] puts them, the very program that
//! [`simulate_layer`](crate::pim::simulate_layer) times (only its
//! host-data offsets differ), outputs merged per query head and new tokens'
//! codes read back from the banks.

use std::collections::BTreeMap;

use aqpim_kvcache::{PqHeadView, TokenSlices};
use aqpim_pim::{CodeBits, Device, Program, SimOptions, Simulator, Stats};

use crate::error::{AttnError, Result};
use crate::pim::functional::{
    check_view, codebook_bytes, f16_bytes, load_all_banks, load_code_tokens, load_slot,
    merge_records, pq_kind, raw_f16_bytes, read_records, regroup_passes, table_bytes,
    window_tokens,
};
use crate::pim::layout::Part;
use crate::pim::placement::{plan, quantize_block, Plan};
use crate::pim::program::bank_sel;
use crate::pim::timing::{layer_program, phase_costs, PhaseCost};
use crate::pim::{LayerJob, PimKind};

/// One cache's contents for [`run_layer`].
#[derive(Debug, Clone, Copy)]
// Borrowed views built once per cache and passed by slice: the size of
// the PQ variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum CacheData<'a> {
    /// FP16 keys and values (`LayerJob::kind` `Fp16`), `ctx` tokens each.
    Fp16 {
        /// Keys, `ctx x d`.
        keys: TokenSlices<'a>,
        /// Values, `ctx x d`.
        values: TokenSlices<'a>,
    },
    /// A PQ head: `ctx` encoded tokens and `fp_tokens` sink and window
    /// tokens.
    Pq(PqHeadView<'a>),
}

/// New tokens of every cache for a job with `quantize`: `heads x block x
/// d` keys and values, `block` = [`quantize_block`] tokens per cache.
#[derive(Debug, Clone, Copy)]
pub struct NewTokens<'a> {
    /// Keys, `heads x block x d`.
    pub keys: &'a [f32],
    /// Values, `heads x block x d`.
    pub values: &'a [f32],
}

/// Codes of one cache's new tokens as the layer's quantization programs
/// stored them, read back from the banks: `block x M`, one byte per code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewCodes {
    /// Key codes.
    pub key_codes: Vec<u8>,
    /// Value codes.
    pub value_codes: Vec<u8>,
}

/// A layer run functionally ([`run_layer`]).
#[derive(Debug, Clone)]
pub struct LayerRun {
    /// Outputs, `heads x group x d` (cache `c`'s query heads at `c * group`).
    pub out: Vec<f32>,
    /// The simulator's statistics of the whole run.
    pub stats: Stats,
    /// The same split by phase.
    pub phases: Vec<PhaseCost>,
    /// The program that ran: [`simulate_layer`](crate::pim::simulate_layer)'s
    /// program with the host-data offsets of this run's tables, queries, new
    /// tokens and codebooks.
    pub program: Program,
    /// Per cache, its new tokens' codes (jobs with `quantize`; else empty).
    pub new_codes: Vec<NewCodes>,
}

/// Checks that cache `c`'s contents have the job's shape and format.
fn check_cache(job: &LayerJob, c: usize, data: &CacheData<'_>) -> Result<()> {
    let d = job.head_dim;
    let want = |what: &str| -> AttnError {
        AttnError::Placement(format!(
            "cache {c}: {what} (the job has {} {:?} tokens of dimension {d} and {} FP16 window tokens)",
            job.ctx, job.kind, job.fp_tokens
        ))
    };
    match (data, job.kind) {
        (CacheData::Fp16 { keys, values }, PimKind::Fp16) => {
            if keys.head_dim() != d || values.head_dim() != d {
                return Err(want("another head dimension"));
            }
            if keys.len() != job.ctx || values.len() != job.ctx {
                return Err(want("another token count"));
            }
        }
        (CacheData::Pq(view), PimKind::Pq { .. }) => {
            check_view(view)?;
            if view.sink_keys.head_dim() != d {
                return Err(want("another head dimension"));
            }
            let window = view.sink_keys.len() + view.recent_keys.len();
            if view.key_codes.tokens() != job.ctx || window != job.fp_tokens {
                return Err(want("another token count"));
            }
            if job.ctx > 0 {
                let (Some(kq), Some(vq)) = (view.key_codebook, view.value_codebook) else {
                    return Err(want("codes without codebooks"));
                };
                if pq_kind(kq, vq) != job.kind {
                    return Err(want("codes in another format"));
                }
            }
        }
        _ => return Err(want("contents of another kind")),
    }
    Ok(())
}

/// Runs one layer functionally under the same placement and the same
/// program as [`simulate_layer`](crate::pim::simulate_layer): every
/// cache's tokens (`caches[c]` for cache `c = s * kv_heads + h`) and value
/// codebooks are loaded where the plan puts them, the host data holds each
/// query head's lookup table (PQ) and FP16 query (FP16 slices), and the
/// read log is merged per query head. `queries` are scaled, `heads x group
/// x d`. Under [`CodebookScope::Model`](aqpim_kvcache::CodebookScope) the
/// caches of one KV head must share their value codebook (the banks hold
/// one copy). A job with `quantize` takes `new` tokens, which its
/// quantization programs encode with the codebooks of their caches (the
/// caches one program serves must share them) and store over the codes of
/// the first slots of each cache's last slice (after that channel's
/// attention has run); their codes are read back into
/// [`LayerRun::new_codes`].
pub fn run_layer(
    device: &Device,
    job: &LayerJob,
    caches: &[CacheData<'_>],
    queries: &[f32],
    new: Option<NewTokens<'_>>,
) -> Result<LayerRun> {
    let mut plan = plan(device, job)?;
    let (d, group) = (job.head_dim, job.group);
    let block = if job.quantize {
        quantize_block(device, job)?
    } else {
        0
    };
    check_inputs(job, caches, queries, new, block)?;
    // Host data: per cache and query head its table (PQ codes) and its
    // FP16 query (FP16 tokens).
    let mut host = Vec::new();
    let mut table_at = vec![0u32; job.heads * group];
    let mut query_at = vec![0u32; job.heads * group];
    let probe = plan.slices.iter().find(|s| !s.window).map(|s| s.geom);
    for (c, data) in caches.iter().enumerate() {
        for q in 0..group {
            let i = c * group + q;
            let query = &queries[i * d..(i + 1) * d];
            if let (CacheData::Pq(view), Some(geom)) = (data, probe) {
                if let Some(kq) = view.key_codebook {
                    table_at[i] = host.len() as u32;
                    host.extend(table_bytes(kq, query, &geom)?);
                }
            }
            if matches!(job.kind, PimKind::Fp16) || job.fp_tokens > 0 {
                query_at[i] = host.len() as u32;
                host.extend(f16_bytes(query.iter().copied()));
            }
        }
    }
    if let Some(n) = new {
        stage_new_tokens(&mut plan, caches, n, block, d, &mut host)?;
    }
    let mut sim = Simulator::new(device, SimOptions::default());
    load_caches(&mut sim, device, job, &plan, caches)?;
    sim.set_host_data(host);
    let lowered = layer_program(device, job, &plan, |s, q| {
        let i = s.cache * group + q;
        if s.geom.k.pq.is_some() {
            table_at[i]
        } else {
            query_at[i]
        }
    });
    let program = Program::new(lowered.out.instrs)?;
    let marks: Vec<u16> = lowered.out.phases.iter().map(|&p| p as u16).collect();
    let regions = sim.run_regions(&program, &marks)?;
    let owner: Vec<usize> = lowered
        .reads
        .iter()
        .map(|&(si, q)| plan.slices[si].cache * group + q)
        .collect();
    let vals = regroup_passes(
        &read_records(sim.read_log(), owner.len(), d)?,
        &lowered.passes,
        d,
    );
    let new_codes = read_new_codes(&sim, device, &plan, block, job.heads)?;
    Ok(LayerRun {
        out: merge_records(&vals, &owner, job.heads * group, d),
        phases: phase_costs(&regions),
        stats: regions.total,
        program,
        new_codes,
    })
}

/// Checks the inputs of [`run_layer`] against the job.
fn check_inputs(
    job: &LayerJob,
    caches: &[CacheData<'_>],
    queries: &[f32],
    new: Option<NewTokens<'_>>,
    block: usize,
) -> Result<()> {
    let (d, group) = (job.head_dim, job.group);
    match (job.quantize, new) {
        (true, None) => {
            return Err(AttnError::Unsupported(
                "a job with quantize needs the new tokens to quantize",
            ))
        }
        (false, Some(_)) => {
            return Err(AttnError::Placement(
                "new tokens for a job without quantize".into(),
            ))
        }
        (true, Some(n)) => {
            for (what, v) in [("keys", n.keys), ("values", n.values)] {
                if v.len() != job.heads * block * d {
                    return Err(AttnError::shape(
                        if what == "keys" {
                            "run_layer new keys"
                        } else {
                            "run_layer new values"
                        },
                        format!("{} x {block} x {d}", job.heads),
                        v.len(),
                    ));
                }
            }
        }
        (false, None) => {}
    }
    if caches.len() != job.heads {
        return Err(AttnError::shape(
            "run_layer caches",
            job.heads.to_string(),
            caches.len(),
        ));
    }
    if queries.len() != job.heads * group * d {
        return Err(AttnError::shape(
            "run_layer queries",
            format!("{} x {group} x {d}", job.heads),
            queries.len(),
        ));
    }
    crate::error::check_queries(queries, job.heads * group, d)?;
    for (c, data) in caches.iter().enumerate() {
        check_cache(job, c, data)?;
    }
    Ok(())
}

/// Host data of the quantization programs: each program's key then value
/// codebook (shared by the caches it serves), then each new token's FP16
/// key and value; the offsets go into the plan.
fn stage_new_tokens(
    plan: &mut Plan,
    caches: &[CacheData<'_>],
    n: NewTokens<'_>,
    block: usize,
    d: usize,
    host: &mut Vec<u8>,
) -> Result<()> {
    for qj in &mut plan.quantize {
        let books = |c: usize| -> Result<(Vec<u8>, Vec<u8>)> {
            match caches[c] {
                CacheData::Pq(PqHeadView {
                    key_codebook: Some(k),
                    value_codebook: Some(v),
                    ..
                }) => Ok((codebook_bytes(k), codebook_bytes(v))),
                _ => Err(AttnError::Unsupported(
                    "in-memory quantization of a cache without codebooks",
                )),
            }
        };
        let first = books(qj.caches[0])?;
        for &c in &qj.caches[1..] {
            if books(c)? != first {
                return Err(AttnError::Placement(format!(
                    "caches {} and {c} are quantized by one program but do not share their codebooks",
                    qj.caches[0]
                )));
            }
        }
        qj.books = host.len() as u32;
        host.extend(first.0);
        host.extend(first.1);
        let tpc = qj.geom.k.tpc;
        for t in &mut qj.tokens {
            let c = qj.caches[t.pass / tpc];
            let i = (c * block + t.bank * tpc + t.pass % tpc) * d;
            t.data = host.len() as u32;
            host.extend(f16_bytes(
                n.keys[i..i + d].iter().chain(&n.values[i..i + d]).copied(),
            ));
        }
    }
    Ok(())
}

/// Loads every cache's tokens, codes and value codebooks where the plan
/// puts them.
fn load_caches(
    sim: &mut Simulator,
    device: &Device,
    job: &LayerJob,
    plan: &Plan,
    caches: &[CacheData<'_>],
) -> Result<()> {
    // (channel, codebook row) -> the codebook loaded there.
    let mut books: BTreeMap<(usize, u32), Vec<u8>> = BTreeMap::new();
    for s in &plan.slices {
        let (ch, geom, rows) = (s.ch, &s.geom, s.rows);
        match caches[s.cache] {
            CacheData::Fp16 { keys, values } => {
                for t in 0..geom.n {
                    let (b, slot) = geom.place(t);
                    let at = slot * geom.k.tb;
                    let tok = s.start + t;
                    load_slot(
                        sim,
                        device,
                        ch,
                        b,
                        rows.k,
                        at,
                        &raw_f16_bytes(keys.token(tok)),
                    )?;
                    load_slot(
                        sim,
                        device,
                        ch,
                        b,
                        rows.v,
                        at,
                        &raw_f16_bytes(values.token(tok)),
                    )?;
                }
            }
            CacheData::Pq(view) if s.window => {
                let fp = window_tokens(&view);
                for t in 0..geom.n {
                    let (b, slot) = geom.place(t);
                    let at = slot * geom.k.tb;
                    let (k, v) = fp[s.start + t];
                    load_slot(sim, device, ch, b, rows.k, at, &raw_f16_bytes(k))?;
                    load_slot(sim, device, ch, b, rows.v, at, &raw_f16_bytes(v))?;
                }
            }
            CacheData::Pq(view) => {
                let (Some(_), Some(_), Some(vq)) = (geom.k.pq, geom.v.pq, view.value_codebook)
                else {
                    unreachable!("checked: PQ slices of PQ caches with codebooks");
                };
                let cb = codebook_bytes(vq);
                match books.get(&(ch, rows.cb)) {
                    Some(held) if *held != cb => {
                        return Err(AttnError::Placement(format!(
                            "cache {} does not share the value codebook that the placement holds once for KV head {} (codebook scope `model`)",
                            s.cache,
                            s.cache % job.kv_heads
                        )))
                    }
                    Some(_) => {}
                    None => {
                        load_all_banks(sim, device, ch, rows.cb, &cb)?;
                        books.insert((ch, rows.cb), cb);
                    }
                }
                load_code_tokens(sim, device, ch, geom, &rows, &view, s.start)?;
            }
        }
    }
    Ok(())
}

/// Reads back the codes that the plan's quantization programs stored,
/// per cache.
fn read_new_codes(
    sim: &Simulator,
    device: &Device,
    plan: &Plan,
    block: usize,
    heads: usize,
) -> Result<Vec<NewCodes>> {
    let mut new_codes = vec![NewCodes::default(); if plan.quantize.is_empty() { 0 } else { heads }];
    for qj in &plan.quantize {
        let geom = &qj.geom;
        let tpc = geom.k.tpc;
        for c in &qj.caches {
            let m = |p: &Part| p.pq.map_or(0, |q| q.m);
            new_codes[*c] = NewCodes {
                key_codes: vec![0; block * m(&geom.k)],
                value_codes: vec![0; block * m(&geom.v)],
            };
        }
        for t in &qj.tokens {
            let c = qj.caches[t.pass / tpc];
            let j = t.bank * tpc + t.pass % tpc;
            for (part, (row, col), key) in [(&geom.k, t.k_at, true), (&geom.v, t.v_at, false)] {
                let p = part
                    .pq
                    .ok_or(AttnError::Unsupported("FP16 parts hold no codes"))?;
                let at = col * device.org.column_bytes + (t.pass % tpc) * part.tb;
                let raw = sim.read_bank(qj.ch, bank_sel(device, t.bank), row, at, part.tb)?;
                let codes: Vec<u8> = match p.bits {
                    CodeBits::Eight => raw,
                    CodeBits::Four => (0..p.m)
                        .map(|i| (raw[i / 2] >> (4 * (i % 2))) & 15)
                        .collect(),
                };
                let dst = if key {
                    &mut new_codes[c].key_codes
                } else {
                    &mut new_codes[c].value_codes
                };
                dst[j * p.m..(j + 1) * p.m].copy_from_slice(&codes);
            }
        }
    }
    Ok(new_codes)
}
