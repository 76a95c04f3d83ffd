//! Functional runs of one head or one token: data loaded into the banks,
//! programs run in the simulator's functional mode, outputs read back and
//! merged on the host. [`fp16_head_on_pim`] and [`pq_head_on_pim`] run one
//! head cut into any number of slices; [`quantize_on_pim`] runs in-memory
//! quantization of new tokens. The loaders and host-data helpers here also
//! serve `layer_run` (a whole layer under the plan that timing uses).

use aqpim_kvcache::PqHeadView;
use aqpim_pim::{CodeBits, Device, Program, SimOptions, Simulator, Stats};
use aqpim_pq::{CodeFormat, CodeWidth, ProductQuantizer};
use half::f16;

use crate::error::{AttnError, Result};
use crate::pim::layout::{Geom, Part};
use crate::pim::placement::{quantizable, split, RowAlloc};
use crate::pim::program::{self, bank_sel, NewToken, Out, Phase, Rows};
use crate::pim::{merge, Partial, PimKind, PimRun};

pub(crate) fn row_bytes(device: &Device) -> usize {
    device.org.columns * device.org.column_bytes
}

/// Writes `bytes` at byte `at` of a range starting at row `base` (tokens
/// never straddle rows) in bank `b` of channel `ch`.
pub(crate) fn load_slot(
    sim: &mut Simulator,
    device: &Device,
    ch: usize,
    b: usize,
    base: u32,
    at: usize,
    bytes: &[u8],
) -> Result<()> {
    let rb = row_bytes(device);
    let row = base + (at / rb) as u32;
    sim.write_bank(ch, bank_sel(device, b), row, at % rb, bytes)?;
    Ok(())
}

/// Writes the same bytes from the start of row `base` in every bank of `ch`.
pub(crate) fn load_all_banks(
    sim: &mut Simulator,
    device: &Device,
    ch: usize,
    base: u32,
    bytes: &[u8],
) -> Result<()> {
    let rb = row_bytes(device);
    for b in 0..device.org.banks_per_channel {
        for (r, chunk) in bytes.chunks(rb).enumerate() {
            sim.write_bank(ch, bank_sel(device, b), base + r as u32, 0, chunk)?;
        }
    }
    Ok(())
}

pub(crate) fn f16_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values
        .into_iter()
        .flat_map(|v| f16::from_f32(v).to_le_bytes())
        .collect()
}

pub(crate) fn raw_f16_bytes(values: &[f16]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The read log as FP32 values: per (slice, query head) record, `[max,
/// sum]` then `d` outputs.
pub(crate) fn read_records(log: &[u8], records: usize, d: usize) -> Result<Vec<f32>> {
    let vals: Vec<f32> = log
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if vals.len() != records * (2 + d) {
        return Err(AttnError::shape(
            "PIM read log",
            format!("{} values", records * (2 + d)),
            vals.len(),
        ));
    }
    Ok(vals)
}

/// Read-log values of passes of several query heads (`passes[k]` heads in
/// pass `k`: their statistics `[max, sum]` one head after the other, then
/// their `d` outputs likewise) in [`read_records`]'s layout, one record of
/// `2 + d` values per head.
pub(crate) fn regroup_passes(vals: &[f32], passes: &[usize], d: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(vals.len());
    let mut at = 0;
    for &h in passes {
        let (stats, outs) = vals[at..at + h * (2 + d)].split_at(2 * h);
        for i in 0..h {
            out.extend_from_slice(&stats[2 * i..2 * i + 2]);
            out.extend_from_slice(&outs[i * d..(i + 1) * d]);
        }
        at += h * (2 + d);
    }
    out
}

/// Merges records into outputs: record `i` belongs to output `owner[i]`
/// (`d` values each).
pub(crate) fn merge_records(vals: &[f32], owner: &[usize], outputs: usize, d: usize) -> Vec<f32> {
    let per = 2 + d;
    let mut by_out: Vec<Vec<Partial<'_>>> = vec![Vec::new(); outputs];
    for (i, &o) in owner.iter().enumerate() {
        let v = &vals[i * per..(i + 1) * per];
        by_out[o].push(Partial {
            max: v[0],
            sum: v[1],
            out: &v[2..],
        });
    }
    let mut out = vec![0f32; outputs * d];
    for (o, parts) in out.chunks_exact_mut(d).zip(&by_out) {
        merge(parts, o);
    }
    out
}

fn check_queries(queries: &[f32], d: usize, op: &'static str) -> Result<usize> {
    if queries.is_empty() || !queries.len().is_multiple_of(d) {
        return Err(AttnError::shape(
            op,
            format!("g x {d} queries"),
            queries.len(),
        ));
    }
    crate::error::check_queries(queries, queries.len() / d, d)?;
    Ok(queries.len() / d)
}

/// Runs `out`'s program functionally on `sim`, returning its statistics.
fn run(sim: &mut Simulator, out: Out) -> Result<(Program, Stats, Vec<Phase>)> {
    let program = Program::new(out.instrs)?;
    let stats = sim.run(&program)?;
    Ok((program, stats, out.phases))
}

/// FP16 attention of `g` scaled queries (`g x d`) over `n` tokens (`keys`,
/// `values`: `n x d`), run functionally as AttAcc programs on `slices`
/// channels (`MAC` scores, `SFM`, `MAC` values).
pub fn fp16_head_on_pim(
    device: &Device,
    keys: &[f32],
    values: &[f32],
    queries: &[f32],
    d: usize,
    slices: usize,
) -> Result<PimRun> {
    let g = check_queries(queries, d, "fp16_head_on_pim")?;
    if keys.len() != values.len() || keys.is_empty() || !keys.len().is_multiple_of(d) {
        return Err(AttnError::shape(
            "fp16_head_on_pim",
            format!("n x {d} keys and values"),
            format!("{} and {}", keys.len(), values.len()),
        ));
    }
    let n = keys.len() / d;
    let parts = split(n, slices);
    let mut sim = Simulator::new(device, SimOptions::default());
    let mut host = Vec::new();
    for q in queries.chunks_exact(d) {
        host.extend(f16_bytes(q.iter().copied()));
    }
    let host_bytes = host.len();
    sim.set_host_data(host);
    let mut out = Out::default();
    let mut alloc = RowAlloc::new(device);
    let query_at: Vec<u32> = (0..g).map(|h| (h * 2 * d) as u32).collect();
    let (mut owner, mut passes) = (Vec::new(), Vec::new());
    for (i, &(start, len)) in parts.iter().enumerate() {
        let ch = i % device.org.channels;
        let geom = Geom::new(device, PimKind::Fp16, d, len)?;
        let rows = alloc.slice(ch, &geom, 0);
        for t in 0..len {
            let (b, s) = geom.place(t);
            let at = s * geom.k.tb;
            let tok = start + t;
            let k = f16_bytes(keys[tok * d..(tok + 1) * d].iter().copied());
            let v = f16_bytes(values[tok * d..(tok + 1) * d].iter().copied());
            load_slot(&mut sim, device, ch, b, rows.k, at, &k)?;
            load_slot(&mut sim, device, ch, b, rows.v, at, &v)?;
        }
        let (lanes, cw) = (device.pim.lanes, device.org.column_bytes);
        for pass in geom.passes(device, g) {
            let at = &query_at[pass.clone()];
            program::fp16_slice(&mut out, &geom, ch as u8, rows, at, lanes, cw);
            passes.push(pass.len());
            owner.extend(pass);
        }
    }
    let (program, stats, _) = run(&mut sim, out)?;
    let vals = regroup_passes(&read_records(sim.read_log(), owner.len(), d)?, &passes, d);
    Ok(PimRun {
        out: merge_records(&vals, &owner, g, d),
        stats,
        program,
        host_bytes,
    })
}

/// Code bytes of one token as the banks hold them, from one stored row of
/// `M` codes in the store's layout (`width`): 8-bit columns one code per
/// byte, 4-bit columns two per byte (low nibble first). The banks' layout
/// does not follow the store's: 2-bit rows are unpacked into the columns.
pub(crate) fn bank_codes(row: &[u8], width: CodeWidth, bits: CodeBits, m: usize) -> Vec<u8> {
    match (bits, width) {
        (CodeBits::Eight, CodeWidth::Byte) | (CodeBits::Four, CodeWidth::Nibble) => row.to_vec(),
        (CodeBits::Eight, w) => (0..m).map(|s| w.code(row, s)).collect(),
        (CodeBits::Four, w) => (0..m.div_ceil(2))
            .map(|i| {
                let hi = if 2 * i + 1 < m {
                    w.code(row, 2 * i + 1) << 4
                } else {
                    0
                };
                w.code(row, 2 * i) | hi
            })
            .collect(),
    }
}

/// Loads the key and value codes of tokens `start..start + geom.n` of
/// `view` into the slots where `geom` places them, at `rows` of channel `ch`:
/// the one loader of the per-head runs and of `run_layer`.
pub(crate) fn load_code_tokens(
    sim: &mut Simulator,
    device: &Device,
    ch: usize,
    geom: &Geom,
    rows: &Rows,
    view: &PqHeadView<'_>,
    start: usize,
) -> Result<()> {
    let (Some(kp), Some(vp)) = (geom.k.pq, geom.v.pq) else {
        return Err(AttnError::Unsupported(
            "codes loaded into a slice without PQ geometry",
        ));
    };
    for t in 0..geom.n {
        let (b, slot) = geom.place(t);
        let tok = start + t;
        let kc = bank_codes(
            view.key_codes.row(tok),
            view.key_codes.width(),
            kp.bits,
            kp.m,
        );
        let vc = bank_codes(
            view.value_codes.row(tok),
            view.value_codes.width(),
            vp.bits,
            vp.m,
        );
        load_slot(sim, device, ch, b, rows.k, slot * geom.k.tb, &kc)?;
        load_slot(sim, device, ch, b, rows.v, slot * geom.v.tb, &vc)?;
    }
    Ok(())
}

/// The bank format of a key and a value quantizer.
pub(crate) fn pq_kind(key: &ProductQuantizer, value: &ProductQuantizer) -> PimKind {
    let codes =
        |pq: &ProductQuantizer| CodeFormat::new(pq.params().dsub(), pq.params().nbits(), true);
    PimKind::Pq {
        key: codes(key),
        value: codes(value),
    }
}

/// A codebook as the banks and the quantization programs hold it: FP16,
/// subspace-major, centroid-major inside a subspace.
pub(crate) fn codebook_bytes(pq: &ProductQuantizer) -> Vec<u8> {
    let m = pq.params().num_subspaces();
    f16_bytes((0..m).flat_map(|s| pq.subspace_centroids(s).iter().copied()))
}

/// A query head's FP16 lookup table (`M x 2^bits`, zero-padded to the
/// bank's code width).
pub(crate) fn table_bytes(kq: &ProductQuantizer, q: &[f32], geom: &Geom) -> Result<Vec<u8>> {
    let p = geom
        .k
        .pq
        .ok_or(AttnError::Unsupported("a table for FP16 keys"))?;
    let lut = kq.inner_product_table(q)?;
    let mut bytes = Vec::with_capacity(p.m * p.stride * 2);
    for m in 0..p.m {
        let row = &lut.values()[m * p.ksub..(m + 1) * p.ksub];
        bytes.extend(f16_bytes(
            (0..p.stride).map(|j| row.get(j).copied().unwrap_or(0.0)),
        ));
    }
    Ok(bytes)
}

/// The FP16 sink then recent-window tokens of a PQ head view.
pub(crate) fn window_tokens<'a>(view: &PqHeadView<'a>) -> Vec<(&'a [f16], &'a [f16])> {
    view.sink_keys
        .iter()
        .zip(view.sink_values.iter())
        .chain(view.recent_keys.iter().zip(view.recent_values.iter()))
        .collect()
}

/// Refuses views whose attention the PIM programs do not compute.
pub(crate) fn check_view(view: &PqHeadView<'_>) -> Result<()> {
    if view.key_transform.is_some() || view.value_transform.is_some() {
        return Err(AttnError::Unsupported(
            "PIM programs on pre-transformed PQ codes",
        ));
    }
    if !view.outliers.is_empty() {
        return Err(AttnError::Unsupported("PIM programs with outlier tokens"));
    }
    Ok(())
}

/// AQPIM attention of `g` scaled queries (`g x d`) over one PQ head view
/// (sinks, codes, recent window), run functionally: the encoded tokens in
/// `slices` PQ slices on as many channels (`LUTACC`, `SFM`, `HISTACC`,
/// `BINMAC`), the FP16 sink and window tokens in one AttAcc slice, merged
/// on the host.
pub fn pq_head_on_pim(
    device: &Device,
    view: &PqHeadView<'_>,
    queries: &[f32],
    slices: usize,
) -> Result<PimRun> {
    check_view(view)?;
    let d = view.sink_keys.head_dim();
    let g = check_queries(queries, d, "pq_head_on_pim")?;
    let n = view.key_codes.tokens();
    let channels = device.org.channels;
    let mut sim = Simulator::new(device, SimOptions::default());
    let (lanes, cw) = (device.pim.lanes, device.org.column_bytes);
    let mut host = Vec::new();
    let mut out = Out::default();
    let mut alloc = RowAlloc::new(device);
    let mut count = 0;
    // Per record, its query head; per pass over a slice, its heads.
    let (mut owner, mut passes) = (Vec::new(), Vec::new());
    if n > 0 {
        let (Some(kq), Some(vq)) = (view.key_codebook, view.value_codebook) else {
            return Err(AttnError::Unsupported(
                "PQ head with codes but no codebooks",
            ));
        };
        let kind = pq_kind(kq, vq);
        let parts = split(n, slices);
        let probe = Geom::new(device, kind, d, parts[0].1)?;
        let (Some(_), Some(vp)) = (probe.k.pq, probe.v.pq) else {
            unreachable!("a PQ kind has PQ geometry");
        };
        // One FP16 table per query head, stride 2^bits per subspace.
        let mut table_at = Vec::with_capacity(g);
        for q in queries.chunks_exact(d) {
            table_at.push(host.len() as u32);
            host.extend(table_bytes(kq, q, &probe)?);
        }
        let cb = codebook_bytes(vq);
        let mut cb_row = vec![None; channels];
        for (i, &(start, len)) in parts.iter().enumerate() {
            let ch = i % channels;
            let geom = Geom::new(device, kind, d, len)?;
            let cb_at = match cb_row[ch] {
                Some(at) => at,
                None => {
                    let at = alloc.take(ch, vp.cb_rows);
                    load_all_banks(&mut sim, device, ch, at, &cb)?;
                    cb_row[ch] = Some(at);
                    at
                }
            };
            let rows = alloc.slice(ch, &geom, cb_at);
            load_code_tokens(&mut sim, device, ch, &geom, &rows, view, start)?;
            for pass in geom.passes(device, g) {
                let at = &table_at[pass.clone()];
                program::pq_slice(&mut out, &geom, ch as u8, rows, at, lanes, cw);
                passes.push(pass.len());
                owner.extend(pass);
            }
            count += 1;
        }
    }
    // FP16 sinks and recent window: one AttAcc slice on the next channel.
    let fp = window_tokens(view);
    if !fp.is_empty() {
        let ch = count % channels;
        let geom = Geom::new(device, PimKind::Fp16, d, fp.len())?;
        let rows = alloc.slice(ch, &geom, 0);
        for (t, (k, v)) in fp.iter().enumerate() {
            let (b, s) = geom.place(t);
            let at = s * geom.k.tb;
            load_slot(&mut sim, device, ch, b, rows.k, at, &raw_f16_bytes(k))?;
            load_slot(&mut sim, device, ch, b, rows.v, at, &raw_f16_bytes(v))?;
        }
        let mut query_at = Vec::with_capacity(g);
        for q in queries.chunks_exact(d) {
            query_at.push(host.len() as u32);
            host.extend(f16_bytes(q.iter().copied()));
        }
        for pass in geom.passes(device, g) {
            let at = &query_at[pass.clone()];
            program::fp16_slice(&mut out, &geom, ch as u8, rows, at, lanes, cw);
            passes.push(pass.len());
            owner.extend(pass);
        }
        count += 1;
    }
    if count == 0 {
        return Err(AttnError::EmptyCache { layer: 0 });
    }
    let host_bytes = host.len();
    sim.set_host_data(host);
    let (program, stats, _) = run(&mut sim, out)?;
    let vals = regroup_passes(&read_records(sim.read_log(), owner.len(), d)?, &passes, d);
    Ok(PimRun {
        out: merge_records(&vals, &owner, g, d),
        stats,
        program,
        host_bytes,
    })
}

/// Codes of tokens quantized in memory, read back from the banks.
#[derive(Debug, Clone)]
pub struct QuantizeRun {
    /// Key codes, one byte per subspace, token after token.
    pub key_codes: Vec<u8>,
    /// Value codes.
    pub value_codes: Vec<u8>,
    /// The simulator's statistics.
    pub stats: Stats,
    /// The program that ran.
    pub program: Program,
}

/// Quantizes `n` new tokens in memory (`keys`, `values`: `n x d`), all in
/// bank `bank` of channel 0, one pass each: their FP16 keys and values
/// staged in the bank, `ARGMIN` against the codebooks streamed into the
/// buffers, `STC` of the codes into consecutive code slots (tokens that
/// share a code column are stored together, so `n` must fill whole
/// columns); the codes are read back from the bank array.
pub fn quantize_on_pim(
    device: &Device,
    key_codebook: &ProductQuantizer,
    value_codebook: &ProductQuantizer,
    keys: &[f32],
    values: &[f32],
    bank: usize,
) -> Result<QuantizeRun> {
    let params = key_codebook.params();
    if value_codebook.params().dim() != params.dim() {
        return Err(AttnError::shape(
            "quantize_on_pim",
            format!("a value codebook of dimension {}", params.dim()),
            value_codebook.params().dim(),
        ));
    }
    let d = params.dim();
    let n = check_queries(keys, d, "quantize_on_pim keys")?;
    if values.len() != keys.len() {
        return Err(AttnError::shape(
            "quantize_on_pim",
            format!("{} value elements", keys.len()),
            values.len(),
        ));
    }
    check_queries(values, d, "quantize_on_pim values")?;
    if bank >= device.org.banks_per_channel {
        return Err(AttnError::shape(
            "quantize_on_pim bank",
            format!("< {}", device.org.banks_per_channel),
            bank,
        ));
    }
    let geom = Geom::new(device, pq_kind(key_codebook, value_codebook), d, 1)?;
    let tpc = quantizable(&geom)?;
    if !n.is_multiple_of(tpc) {
        return Err(AttnError::Placement(format!(
            "{n} tokens do not fill whole code columns of {tpc} tokens"
        )));
    }
    let (rb, cw) = (row_bytes(device), device.org.column_bytes);
    let stage_cols = 4 * d / cw;
    let per_row = (device.org.columns / stage_cols.max(1)).max(1);
    let rows_per_part = (n * geom.k.tb.max(geom.v.tb)).div_ceil(rb);
    let mut alloc = RowAlloc::new(device);
    let stage_row = alloc.take(0, n.div_ceil(per_row));
    let k_row = alloc.take(0, rows_per_part);
    let v_row = alloc.take(0, rows_per_part);
    let mut host = Vec::new();
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let data = host.len() as u32;
        host.extend(f16_bytes(
            keys[i * d..(i + 1) * d]
                .iter()
                .chain(&values[i * d..(i + 1) * d])
                .copied(),
        ));
        let (ka, va) = (i * geom.k.tb, i * geom.v.tb);
        tokens.push(NewToken {
            bank,
            pass: i,
            stage: (stage_row + (i / per_row) as u32, (i % per_row) * stage_cols),
            store: i.is_multiple_of(tpc),
            k_at: (k_row + (ka / rb) as u32, (ka % rb) / cw),
            v_at: (v_row + (va / rb) as u32, (va % rb) / cw),
            data,
        });
    }
    let books = host.len() as u32;
    host.extend(codebook_bytes(key_codebook));
    host.extend(codebook_bytes(value_codebook));
    let mut sim = Simulator::new(device, SimOptions::default());
    sim.set_host_data(host);
    let mut out = Out::default();
    program::quantize(&mut out, &geom, 0, &tokens, books, device);
    let (program, stats, _) = run(&mut sim, out)?;
    let read = |base: u32, part: &Part| -> Result<Vec<u8>> {
        let p = part
            .pq
            .ok_or(AttnError::Unsupported("FP16 parts hold no codes"))?;
        let mut raw = Vec::with_capacity(n * part.tb);
        for i in 0..n {
            let at = i * part.tb;
            raw.extend(sim.read_bank(
                0,
                bank_sel(device, bank),
                base + (at / rb) as u32,
                at % rb,
                part.tb,
            )?);
        }
        Ok(match p.bits {
            CodeBits::Eight => raw,
            CodeBits::Four => (0..n * p.m)
                .map(|i| (raw[i / 2] >> (4 * (i % 2))) & 15)
                .collect(),
        })
    };
    Ok(QuantizeRun {
        key_codes: read(k_row, &geom.k)?,
        value_codes: read(v_row, &geom.v)?,
        stats,
        program,
    })
}
