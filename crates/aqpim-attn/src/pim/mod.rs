//! Decode attention lowered to PIM programs that `aqpim-pim` runs: a
//! placement of each (sequence, layer, KV head) cache onto a device's
//! channels and banks, program generators for FP16 attention as AttAcc does
//! it and for AQPIM attention on PQ codes, in-memory quantization of a new
//! token, and the per-layer cost the system model reads.
//!
//! A cache is cut into *slices* of consecutive tokens, one channel each
//! (layout in [`layout`](self)); every slice computes a softmax over its own
//! tokens and returns its statistics (max, sum) and normalized output, and
//! the host merges the slices' partial softmaxes ([`merge`]). PQ caches add
//! one FP16 slice for their sink and recent-window tokens. The design, and
//! the ISA additions it needed, are in `docs/design/pim-lowering.md`.
//!
//! Entry points: [`pq_head_on_pim`] and [`fp16_head_on_pim`] run one head
//! functionally and return its output beside the simulator's statistics
//! (tests hold them to the CPU kernels); [`quantize_on_pim`] runs in-memory
//! quantization of one token; [`simulate_layer`] times one layer of a
//! batch in timing-only mode, [`analytic_layer`] is its closed form, and
//! [`layer_rows_per_bank`] is the placement's footprint.

mod analytic;
mod layout;
mod program;

use aqpim_kvcache::PqHeadView;
use aqpim_pim::{BankSel, CodeBits, Device, Instr, Mode, Program, SimOptions, Simulator, Stats};
use aqpim_pq::ProductQuantizer;
use half::f16;
use serde::Serialize;

use crate::error::{AttnError, Result};
use layout::Geom;
use program::{NewToken, Rows};

pub use analytic::analytic_layer;
pub(crate) use layout::Part;

/// What the banks hold for each token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PimKind {
    /// FP16 keys and values (AttAcc).
    Fp16,
    /// PQ codes of keys and values (AQPIM), each part in its own format.
    Pq {
        /// The key codes.
        key: PqCodes,
        /// The value codes.
        value: PqCodes,
    },
}

impl PimKind {
    /// PQ codes in one format for keys and values.
    pub fn pq(dsub: usize, nbits: u32) -> PimKind {
        let c = PqCodes { dsub, nbits };
        PimKind::Pq { key: c, value: c }
    }
}

/// A PQ code format in the banks: `2^nbits` centroids per subspace of
/// `dsub` elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PqCodes {
    /// Sub-vector length.
    pub dsub: usize,
    /// Bits per code (4 or 8).
    pub nbits: u32,
}

/// One layer's decode attention on a PIM device: `heads` independent
/// (sequence, KV head) caches of `ctx` tokens each, every one read by `group`
/// query heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct LayerJob {
    /// What the banks hold per token.
    pub kind: PimKind,
    /// Head dimension.
    pub head_dim: usize,
    /// Caches in the layer: batch x KV heads.
    pub heads: usize,
    /// KV heads per sequence: cache `s * kv_heads + h` is KV head `h` of
    /// sequence `s`; `heads` must be a multiple of it.
    pub kv_heads: usize,
    /// Query heads per KV head (grouped-query attention).
    pub group: usize,
    /// Tokens per cache held in the banks in `kind`'s format (for PQ, the
    /// encoded tokens).
    pub ctx: usize,
    /// FP16 tokens per cache beside the codes (PQ sinks and recent window);
    /// 0 for `Fp16`.
    pub fp_tokens: usize,
    /// Also run one in-memory quantization flush per cache: a block of
    /// [`quantize_block`] tokens (PQ only; amortized over that many steps).
    pub quantize: bool,
    /// Who shares a PQ cache's codebooks, and so how many copies the banks
    /// hold (ignored for `Fp16`).
    pub codebooks: CodebookScope,
}

/// The scope of PQ codebooks: what the placement stores once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CodebookScope {
    /// Calibrated offline, one key and one value codebook per layer and KV
    /// head, shared by every sequence: a channel holds one copy of a KV
    /// head's value codebook for all the caches of that head it serves.
    #[default]
    Model,
    /// Trained online per cache (sequence, layer, KV head): every cache's
    /// value codebook takes its own rows on each channel that holds it.
    Sequence,
}

impl std::fmt::Display for CodebookScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CodebookScope::Model => "model",
            CodebookScope::Sequence => "sequence",
        })
    }
}

impl std::str::FromStr for CodebookScope {
    type Err = AttnError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "model" => Ok(CodebookScope::Model),
            "sequence" => Ok(CodebookScope::Sequence),
            other => Err(AttnError::Placement(format!(
                "`{other}` is not a codebook scope (model, sequence)"
            ))),
        }
    }
}

/// What running a layer's programs cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PimCost {
    /// Device cycles from the first command to the last.
    pub cycles: u64,
    /// The same in nanoseconds.
    pub ns: f64,
    /// Energy in picojoules.
    pub energy_pj: f64,
    /// Bytes read or written in the bank arrays.
    pub bytes_internal: u64,
    /// Bytes over the device's external interface (host writes and reads).
    pub bytes_external: u64,
    /// Bytes moved between banks and buffer dies.
    pub bytes_buffer_die: u64,
    /// Commands issued.
    pub commands: u64,
    /// Channels that hold part of the layer.
    pub channels_used: usize,
}

impl PimCost {
    fn from_stats(s: &Stats, channels_used: usize) -> PimCost {
        PimCost {
            cycles: s.cycles,
            ns: s.ns,
            energy_pj: s.energy.total_pj,
            bytes_internal: s.bytes_internal,
            bytes_external: s.bytes_external,
            bytes_buffer_die: s.bytes_buffer_die,
            commands: s.total_commands,
            channels_used,
        }
    }
}

/// A head's output computed by the simulator, with what it cost.
#[derive(Debug, Clone)]
pub struct PimRun {
    /// `g x d` outputs.
    pub out: Vec<f32>,
    /// The simulator's statistics of the whole run.
    pub stats: Stats,
    /// The program that ran (to re-run it, e.g. in timing-only mode).
    pub program: Program,
    /// Bytes of host data the program reads.
    pub host_bytes: usize,
}

/// One slice's softmax statistics and normalized output, as the read log
/// returns them.
#[derive(Debug, Clone, Copy)]
pub struct Partial<'a> {
    /// Largest (scaled) score of the slice.
    pub max: f32,
    /// `sum_t exp(score_t - max)` over the slice.
    pub sum: f32,
    /// The slice's output, normalized by `sum`.
    pub out: &'a [f32],
}

/// Merges slices' partial softmaxes into `out`:
/// `o = sum_s w_s o_s / sum_s w_s`, `w_s = sum_s exp(max_s - max)`.
pub fn merge(parts: &[Partial<'_>], out: &mut [f32]) {
    let top = parts
        .iter()
        .map(|p| p.max)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0f64;
    let mut acc = vec![0f64; out.len()];
    for p in parts {
        let w = f64::from(p.sum) * f64::from(p.max - top).exp();
        total += w;
        for (a, &o) in acc.iter_mut().zip(p.out) {
            *a += w * f64::from(o);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = (a / total) as f32;
    }
}

fn bank_sel(device: &Device, b: usize) -> BankSel {
    let (pc, sid, bg, bank) = device.org.bank_coords(b);
    BankSel {
        pc: pc as u8,
        sid: sid as u8,
        bg: bg as u8,
        bank: bank as u8,
    }
}

fn row_bytes(device: &Device) -> usize {
    device.org.columns * device.org.column_bytes
}

/// Writes `bytes` for slot `s` of a range starting at `base` (tokens of `tb`
/// bytes, never straddling rows) in bank `b`.
fn load_slot(
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
fn load_all_banks(
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

fn f16_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values
        .into_iter()
        .flat_map(|v| f16::from_f32(v).to_le_bytes())
        .collect()
}

/// Balanced split of `n` tokens into `parts` runs: `(start, len)`.
fn split(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts)
        .map(|i| (i * n / parts, (i + 1) * n / parts - i * n / parts))
        .filter(|&(_, len)| len > 0)
        .collect()
}

/// Reads `[max, sum]` then `d` outputs per (slice, query head) from the
/// read log and merges the slices per query head.
fn collect(log: &[u8], slices: usize, g: usize, d: usize) -> Result<Vec<f32>> {
    let vals: Vec<f32> = log
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let per = 2 + d;
    if vals.len() != slices * g * per {
        return Err(AttnError::shape(
            "PIM read log",
            format!("{} values", slices * g * per),
            vals.len(),
        ));
    }
    let mut out = vec![0f32; g * d];
    for (h, o) in out.chunks_exact_mut(d).enumerate() {
        let parts: Vec<Partial<'_>> = (0..slices)
            .map(|s| {
                let v = &vals[(s * g + h) * per..(s * g + h + 1) * per];
                Partial {
                    max: v[0],
                    sum: v[1],
                    out: &v[2..],
                }
            })
            .collect();
        merge(&parts, o);
    }
    Ok(out)
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
    let mut instrs = Vec::new();
    let mut cursor = vec![0u32; device.org.channels];
    for (i, &(start, len)) in parts.iter().enumerate() {
        let ch = i % device.org.channels;
        let geom = Geom::new(device, PimKind::Fp16, d, len)?;
        let rows = Rows {
            k: cursor[ch],
            v: cursor[ch] + geom.k.rows as u32,
            cb: 0,
        };
        cursor[ch] += geom.rows() as u32;
        for t in 0..len {
            let (b, s) = geom.place(t);
            let at = s * geom.k.tb;
            let tok = start + t;
            load_slot(
                &mut sim,
                device,
                ch,
                b,
                rows.k,
                at,
                &f16_bytes(keys[tok * d..(tok + 1) * d].iter().copied()),
            )?;
            load_slot(
                &mut sim,
                device,
                ch,
                b,
                rows.v,
                at,
                &f16_bytes(values[tok * d..(tok + 1) * d].iter().copied()),
            )?;
        }
        for h in 0..g {
            program::fp16_slice(
                &mut instrs,
                &geom,
                ch as u8,
                rows,
                (h * 2 * d) as u32,
                device.pim.lanes,
                device.org.column_bytes,
            );
        }
    }
    let program = Program::new(instrs)?;
    let stats = sim.run(&program)?;
    let out = collect(sim.read_log(), parts.len(), g, d)?;
    Ok(PimRun {
        out,
        stats,
        program,
        host_bytes,
    })
}

/// Code bytes of one token as the banks hold them: 8-bit codes as they are,
/// 4-bit codes packed two per byte (low nibble first).
fn bank_codes(row: &[u8], packed: bool, bits: CodeBits, m: usize) -> Vec<u8> {
    match bits {
        CodeBits::Eight => row.to_vec(),
        CodeBits::Four if packed => row.to_vec(),
        CodeBits::Four => (0..m.div_ceil(2))
            .map(|i| row[2 * i] | row.get(2 * i + 1).map_or(0, |&c| c << 4))
            .collect(),
    }
}

/// Tokens that share a code column in a slice quantized in memory: both
/// parts must tile columns alike, since one flush stores them together.
fn quantizable(geom: &Geom) -> Result<usize> {
    if geom.k.tpc != geom.v.tpc {
        return Err(AttnError::Placement(format!(
            "in-memory quantization stores key and value codes of the same tokens together: keys of {} B and values of {} B per token do not share code columns alike",
            geom.k.tb, geom.v.tb
        )));
    }
    Ok(geom.k.tpc)
}

/// The bank format of a key and a value quantizer.
fn pq_kind(key: &ProductQuantizer, value: &ProductQuantizer) -> PimKind {
    let codes = |pq: &ProductQuantizer| PqCodes {
        dsub: pq.params().dsub(),
        nbits: pq.params().nbits(),
    };
    PimKind::Pq {
        key: codes(key),
        value: codes(value),
    }
}

/// The value codebook as the banks hold it: FP16, subspace-major,
/// centroid-major inside a subspace.
fn codebook_bytes(pq: &ProductQuantizer) -> Vec<u8> {
    let m = pq.params().num_subspaces();
    f16_bytes((0..m).flat_map(|s| pq.subspace_centroids(s).iter().copied()))
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
    let d = view.sink_keys.head_dim();
    let g = check_queries(queries, d, "pq_head_on_pim")?;
    let n = view.key_codes.tokens();
    let channels = device.org.channels;
    let mut sim = Simulator::new(device, SimOptions::default());
    let mut host = Vec::new();
    let mut instrs = Vec::new();
    let mut cursor = vec![0u32; channels];
    let mut count = 0;
    if n > 0 {
        let (Some(kq), Some(vq)) = (view.key_codebook, view.value_codebook) else {
            return Err(AttnError::Unsupported(
                "PQ head with codes but no codebooks",
            ));
        };
        let kind = pq_kind(kq, vq);
        let parts = split(n, slices);
        let probe = Geom::new(device, kind, d, parts[0].1)?;
        let (Some(p), Some(vp)) = (probe.k.pq, probe.v.pq) else {
            unreachable!("a PQ kind has PQ geometry");
        };
        // One FP16 table per query head, stride 2^bits per subspace.
        let mut table_at = Vec::with_capacity(g);
        for q in queries.chunks_exact(d) {
            let lut = kq.inner_product_table(q)?;
            table_at.push(host.len() as u32);
            for m in 0..p.m {
                let row = &lut.values()[m * p.ksub..(m + 1) * p.ksub];
                host.extend(f16_bytes(
                    (0..p.stride).map(|j| row.get(j).copied().unwrap_or(0.0)),
                ));
            }
        }
        let cb = codebook_bytes(vq);
        let mut cb_row = vec![None; channels];
        for (i, &(start, len)) in parts.iter().enumerate() {
            let ch = i % channels;
            let geom = Geom::new(device, kind, d, len)?;
            let cb_at = match cb_row[ch] {
                Some(at) => at,
                None => {
                    let at = cursor[ch];
                    cursor[ch] += vp.cb_rows as u32;
                    load_all_banks(&mut sim, device, ch, at, &cb)?;
                    cb_row[ch] = Some(at);
                    at
                }
            };
            let rows = Rows {
                k: cursor[ch],
                v: cursor[ch] + geom.k.rows as u32,
                cb: cb_at,
            };
            cursor[ch] += geom.rows() as u32;
            for t in 0..len {
                let (b, s) = geom.place(t);
                let tok = start + t;
                let kc = bank_codes(
                    view.key_codes.row(tok),
                    view.key_codes.is_packed(),
                    p.bits,
                    p.m,
                );
                let vc = bank_codes(
                    view.value_codes.row(tok),
                    view.value_codes.is_packed(),
                    vp.bits,
                    vp.m,
                );
                load_slot(&mut sim, device, ch, b, rows.k, s * geom.k.tb, &kc)?;
                load_slot(&mut sim, device, ch, b, rows.v, s * geom.v.tb, &vc)?;
            }
            for &table in &table_at {
                program::pq_slice(
                    &mut instrs,
                    &geom,
                    ch as u8,
                    rows,
                    table,
                    device.pim.lanes,
                    device.org.column_bytes,
                );
            }
            count += 1;
        }
    }
    // FP16 sinks and recent window: one AttAcc slice on the next channel.
    let fp: Vec<(&[f16], &[f16])> = view
        .sink_keys
        .iter()
        .zip(view.sink_values.iter())
        .chain(view.recent_keys.iter().zip(view.recent_values.iter()))
        .collect();
    if !fp.is_empty() {
        let ch = count % channels;
        let geom = Geom::new(device, PimKind::Fp16, d, fp.len())?;
        let rows = Rows {
            k: cursor[ch],
            v: cursor[ch] + geom.k.rows as u32,
            cb: 0,
        };
        for (t, (k, v)) in fp.iter().enumerate() {
            let (b, s) = geom.place(t);
            let at = s * geom.k.tb;
            let kb: Vec<u8> = k.iter().flat_map(|x| x.to_le_bytes()).collect();
            let vb: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            load_slot(&mut sim, device, ch, b, rows.k, at, &kb)?;
            load_slot(&mut sim, device, ch, b, rows.v, at, &vb)?;
        }
        for q in queries.chunks_exact(d) {
            let at = host.len() as u32;
            host.extend(f16_bytes(q.iter().copied()));
            program::fp16_slice(
                &mut instrs,
                &geom,
                ch as u8,
                rows,
                at,
                device.pim.lanes,
                device.org.column_bytes,
            );
        }
        count += 1;
    }
    if count == 0 {
        return Err(AttnError::EmptyCache { layer: 0 });
    }
    let host_bytes = host.len();
    sim.set_host_data(host);
    let program = Program::new(instrs)?;
    let stats = sim.run(&program)?;
    let out = collect(sim.read_log(), count, g, d)?;
    Ok(PimRun {
        out,
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
    let rb = row_bytes(device);
    let stage_cols = 4 * d / device.org.column_bytes;
    let per_row = (device.org.columns / stage_cols.max(1)).max(1);
    let rows_per_part = (n * geom.k.tb.max(geom.v.tb)).div_ceil(rb) as u32;
    let stage_rows = n.div_ceil(per_row) as u32;
    let (k_row, v_row) = (stage_rows, stage_rows + rows_per_part);
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
        let cw = device.org.column_bytes;
        tokens.push(NewToken {
            bank,
            pass: i,
            stage: ((i / per_row) as u32, (i % per_row) * stage_cols),
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
    let mut instrs = Vec::new();
    program::quantize(
        &mut instrs,
        &geom,
        0,
        &tokens,
        books,
        device.pim.buffer_elements(),
        device.pim.lanes,
        device.org.column_bytes,
        |b| bank_sel(device, b),
    );
    let program = Program::new(instrs)?;
    let stats = sim.run(&program)?;
    let read = |base: u32, part: &Part| -> Result<Vec<u8>> {
        let p = part.pq.expect("PQ geometry");
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

/// One slice of a layer's placement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlacedSlice {
    pub ch: usize,
    pub geom: Geom,
    pub rows: Rows,
}

/// A layer's placement: slices per channel, new tokens to quantize per
/// channel, and the rows every bank of each channel uses.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub slices: Vec<PlacedSlice>,
    /// `(channel, geometry, tokens)` per quantization program.
    pub quantize: Vec<(usize, Geom, Vec<NewToken>)>,
    /// Rows of every bank of channel `c` that the layer occupies.
    pub rows_per_channel: Vec<usize>,
    /// Value codebook copies the banks hold (per channel and KV head under
    /// [`CodebookScope::Model`], per channel and cache under `Sequence`).
    pub codebook_copies: usize,
    pub channels_used: usize,
}

impl Plan {
    /// Rows of every bank of the fullest channel.
    pub fn rows_per_bank(&self) -> usize {
        self.rows_per_channel.iter().copied().max().unwrap_or(0)
    }
}

/// Places one layer of `job` on `device`.
///
/// Caches are ordered by KV head, then sequence; each is cut into `s` equal
/// slices, `s` the larger of what one channel can hold and `channels /
/// caches` (so a small batch still spreads over every channel); the `T`
/// slices in that order go to channels in contiguous blocks (slice `k` to
/// channel `k * C / T`), so that a channel serves few KV heads and keeps few
/// value codebooks. A PQ cache's FP16 sink and window slice goes to the
/// channel of its first slice; its new token is quantized on the channel of
/// its last slice.
pub(crate) fn plan(device: &Device, job: &LayerJob) -> Result<Plan> {
    let d = job.head_dim;
    let caches = job.heads;
    if caches == 0 || job.group == 0 || d == 0 {
        return Err(AttnError::Placement(
            "a layer needs at least one cache, one query head per KV head and a head dimension"
                .into(),
        ));
    }
    let kv_heads = job.kv_heads;
    if kv_heads == 0 || !caches.is_multiple_of(kv_heads) {
        return Err(AttnError::Placement(format!(
            "{caches} caches are not whole sequences of {kv_heads} KV heads"
        )));
    }
    let pq = matches!(job.kind, PimKind::Pq { .. });
    if !pq && job.fp_tokens > 0 {
        return Err(AttnError::Placement(
            "FP16 sink/window tokens only go beside PQ codes".into(),
        ));
    }
    if job.ctx == 0 && job.fp_tokens == 0 {
        return Err(AttnError::Placement("a cache with no tokens".into()));
    }
    let channels = device.org.channels;
    let fp_geom = if job.fp_tokens > 0 {
        Some(Geom::new(device, PimKind::Fp16, d, job.fp_tokens)?)
    } else {
        None
    };
    // Main slices per cache: at least what one channel's budgets require,
    // at most enough to spread a small batch over every channel; among
    // those, the count with the least estimated time (each PQ slice pays
    // its own bins-times-codebook, so splitting is not always faster).
    let per_cache = if job.ctx == 0 {
        0
    } else {
        let max = Geom::max_tokens(device, job.kind, d)?;
        let lo = job.ctx.div_ceil(max).clamp(1, job.ctx);
        let hi = lo.max(channels / caches).min(job.ctx);
        let mut best = (u64::MAX, lo);
        for s in lo..=hi {
            let geom = Geom::new(device, job.kind, d, job.ctx.div_ceil(s))?;
            let waves = (caches * s).div_ceil(channels) as u64;
            let est = waves * analytic::slice_cycles(device, &geom);
            if est < best.0 {
                best = (est, s);
            }
        }
        best.1
    };
    let mut order: Vec<usize> = (0..caches).collect();
    order.sort_by_key(|&c| (c % kv_heads, c / kv_heads));
    let total = caches * per_cache;
    let mut cursor = vec![0u32; channels];
    let mut used = vec![false; channels];
    // (channel, kv head or cache) -> codebook rows.
    let mut books: std::collections::BTreeMap<(usize, usize), u32> = Default::default();
    let mut slices = Vec::new();
    let mut fp_slices = Vec::new();
    let mut last_of: Vec<(usize, usize, PlacedSlice)> = Vec::new();
    let parts = split(job.ctx, per_cache);
    for (ci, &c) in order.iter().enumerate() {
        let head = c % kv_heads;
        let mut first_ch = None;
        let mut last = None;
        for (pi, &(_, len)) in parts.iter().enumerate() {
            let k = ci * per_cache + pi;
            let ch = k * channels / total.max(1);
            let geom = Geom::new(device, job.kind, d, len)?;
            let owner = match job.codebooks {
                CodebookScope::Model => head,
                CodebookScope::Sequence => c,
            };
            let cb = match geom.v.pq {
                Some(p) => *books.entry((ch, owner)).or_insert_with(|| {
                    let at = cursor[ch];
                    cursor[ch] += p.cb_rows as u32;
                    at
                }),
                None => 0,
            };
            let rows = Rows {
                k: cursor[ch],
                v: cursor[ch] + geom.k.rows as u32,
                cb,
            };
            cursor[ch] += geom.rows() as u32;
            used[ch] = true;
            let s = PlacedSlice { ch, geom, rows };
            slices.push(s);
            first_ch.get_or_insert(ch);
            last = Some(s);
        }
        let home = first_ch.unwrap_or(ci * channels / caches);
        if let Some(geom) = fp_geom {
            let rows = Rows {
                k: cursor[home],
                v: cursor[home] + geom.k.rows as u32,
                cb: 0,
            };
            cursor[home] += geom.rows() as u32;
            used[home] = true;
            fp_slices.push(PlacedSlice {
                ch: home,
                geom,
                rows,
            });
        }
        if let (true, Some(s)) = (job.quantize && pq, last) {
            last_of.push((s.ch, head, s));
        }
    }
    slices.extend(fp_slices);
    // New tokens: per (channel, KV head), up to one per bank per program.
    let mut quantize = Vec::new();
    if job.quantize && pq {
        let mut groups: std::collections::BTreeMap<(usize, usize), Vec<PlacedSlice>> =
            Default::default();
        for (ch, head, s) in last_of {
            groups.entry((ch, head)).or_default().push(s);
        }
        let banks = device.org.banks_per_channel;
        let stage_cols = 4 * d / device.org.column_bytes;
        if stage_cols > device.org.columns {
            return Err(AttnError::Placement(format!(
                "a staged FP16 key and value of {d} elements exceed one row"
            )));
        }
        let per_row = device.org.columns / stage_cols;
        for ((ch, _), members) in groups {
            let geom = members[0].geom;
            // Registers per pass: one per key and one per value subspace.
            let m = geom.k.pq.map_or(1, |p| p.m) + geom.v.pq.map_or(1, |p| p.m);
            // A cache flushes `tpc` tokens per bank (whole code columns), one
            // pass each; the passes of one program share the registers.
            let tpc = quantizable(&geom)?;
            // ARGMIN's register field addresses the first 4096 registers
            // (aqpim-pim's 12-bit `reg`), whatever the device has.
            let regs = device.pim.registers.min(program::ARGMIN_REGISTERS);
            let caches_per_program = (regs / (m * tpc)).max(1);
            for chunk in members.chunks(caches_per_program) {
                let passes = chunk.len() * tpc;
                let base = cursor[ch];
                cursor[ch] += passes.div_ceil(per_row) as u32;
                let mut tokens = Vec::with_capacity(passes * banks);
                for (i, s) in chunk.iter().enumerate() {
                    for k in 0..tpc {
                        let pass = i * tpc + k;
                        let stage = (
                            base + (pass / per_row) as u32,
                            (pass % per_row) * stage_cols,
                        );
                        tokens.extend((0..banks).map(|bank| NewToken {
                            bank,
                            pass,
                            stage,
                            store: k == 0,
                            k_at: (s.rows.k, 0),
                            v_at: (s.rows.v, 0),
                            data: 0,
                        }));
                    }
                }
                quantize.push((ch, geom, tokens));
            }
        }
    }
    Ok(Plan {
        slices,
        quantize,
        rows_per_channel: cursor.iter().map(|&r| r as usize).collect(),
        codebook_copies: books.len(),
        channels_used: used.iter().filter(|&&u| u).count(),
    })
}

/// The instructions of a placed layer, channel by channel.
fn layer_program(device: &Device, job: &LayerJob, plan: &Plan) -> Vec<Instr> {
    let lanes = device.pim.lanes;
    let cw = device.org.column_bytes;
    let mut instrs = Vec::new();
    for ch in 0..device.org.channels {
        for s in plan.slices.iter().filter(|s| s.ch == ch) {
            for _ in 0..job.group {
                match s.geom.k.pq {
                    Some(_) => {
                        program::pq_slice(&mut instrs, &s.geom, ch as u8, s.rows, 0, lanes, cw)
                    }
                    None => {
                        program::fp16_slice(&mut instrs, &s.geom, ch as u8, s.rows, 0, lanes, cw)
                    }
                }
            }
        }
        for (_, geom, tokens) in plan.quantize.iter().filter(|q| q.0 == ch) {
            program::quantize(
                &mut instrs,
                geom,
                ch as u8,
                tokens,
                0,
                device.pim.buffer_elements(),
                lanes,
                cw,
                |b| bank_sel(device, b),
            );
        }
    }
    instrs
}

/// Host data large enough for every offset a timing-only layer program uses
/// (all tables, queries, tokens and codebooks read from offset 0).
fn timing_host_data(job: &LayerJob) -> Vec<u8> {
    let d = job.head_dim;
    let bytes = match job.kind {
        PimKind::Fp16 => 4 * d,
        PimKind::Pq { key, value } => {
            // Both codebooks (FP16), or a table of M x 256 entries.
            let book = |c: PqCodes| {
                let m = d / c.dsub.max(1);
                (m, m * (1usize << c.nbits.min(8)) * c.dsub * 2)
            };
            let ((mk, bk), (_, bv)) = (book(key), book(value));
            (bk + bv).max(mk * 256 * 2).max(4 * d)
        }
    };
    vec![0; bytes]
}

/// Tokens per cache that one in-memory quantization flush encodes: one per
/// bank of a channel and pass (the all-bank `ARGMIN` quantizes a pass
/// together), with as many passes as tokens share a code column. A
/// [`LayerJob`] with `quantize` runs one flush per cache, which the store
/// performs once every this many decode steps.
pub fn quantize_block(device: &Device, job: &LayerJob) -> Result<usize> {
    let tpc = match job.kind {
        PimKind::Fp16 => 1,
        kind => quantizable(&Geom::new(device, kind, job.head_dim, 1)?)?,
    };
    Ok(device.org.banks_per_channel * tpc)
}

/// Runs one layer's lowered programs in the simulator's timing-only mode
/// and returns their cost.
pub fn simulate_layer(device: &Device, job: &LayerJob) -> Result<PimCost> {
    simulate_layer_mode(device, job, Mode::TimingOnly)
}

/// [`simulate_layer`] in either mode. `Functional` computes every
/// instruction's data (on zero-filled banks and tables: the work, not a
/// particular answer, which [`pq_head_on_pim`] checks), and times exactly
/// as `TimingOnly`.
pub fn simulate_layer_mode(device: &Device, job: &LayerJob, mode: Mode) -> Result<PimCost> {
    let plan = plan(device, job)?;
    let program = Program::new(layer_program(device, job, &plan))?;
    let mut sim = Simulator::new(
        device,
        SimOptions {
            mode,
            ..SimOptions::default()
        },
    );
    sim.set_host_data(timing_host_data(job));
    let stats = sim.run(&program)?;
    Ok(PimCost::from_stats(&stats, plan.channels_used))
}

/// Rows of every bank that one layer's caches occupy under the placement
/// (codes or FP16 tokens, FP16 window tokens, value codebooks, a staging
/// row for new tokens), on the fullest channel: a model of `L` layers fits
/// when `L` times this is at most the device's rows.
/// An error when one layer alone needs more rows than a bank has.
pub fn layer_rows_per_bank(device: &Device, job: &LayerJob) -> Result<usize> {
    let rows = plan(device, job)?.rows_per_bank();
    if rows > device.org.rows {
        return Err(AttnError::Placement(format!(
            "one layer needs {rows} rows per bank; the banks have {} ({} over)",
            device.org.rows,
            rows - device.org.rows
        )));
    }
    Ok(rows)
}

/// What one layer of a job occupies in the banks and moves over the
/// GPU-PIM link, read off its placement (the same [`plan`] that
/// [`simulate_layer`] times).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Footprint {
    /// Rows of every bank of channel `c` that the layer occupies (codes or
    /// FP16 tokens, FP16 sink and window tokens, value codebooks, staging).
    pub rows_per_channel: Vec<usize>,
    /// Value codebook copies the banks hold.
    pub codebook_copies: usize,
    /// Channels that hold part of the layer.
    pub channels_used: usize,
    /// Bytes the GPU sends per decode step: for every cache and query head
    /// its FP16 lookup table (`M x 2^bits`, PQ slices) and its FP16 query
    /// (FP16 slices, including a PQ cache's sink and window slice), once
    /// per cache whatever its slice count (the device broadcasts a payload
    /// to the channels that need it), plus the new token's FP16 key and
    /// value (`4 d` bytes per cache).
    pub link_in_bytes: u64,
    /// Bytes the GPU reads back per decode step: per slice and query head
    /// the softmax statistics `[max, sum]` and `d` outputs, FP32.
    pub link_out_bytes: u64,
    /// Bytes per in-memory quantization flush: every quantization program
    /// streams the FP16 key and value codebooks into its buffers.
    pub link_flush_bytes: u64,
}

/// The placement's [`Footprint`] of one layer of `job`. Unlike
/// [`layer_rows_per_bank`], a layer that needs more rows than a bank has is
/// not an error here: the caller sums rows over layers and decides.
pub fn layer_footprint(device: &Device, job: &LayerJob) -> Result<Footprint> {
    let plan = plan(device, job)?;
    let d = job.head_dim as u64;
    let group = job.group as u64;
    let caches = job.heads as u64;
    let mut per_query = 0u64;
    let mut flush = 0u64;
    if let PimKind::Pq { .. } = job.kind {
        if job.ctx > 0 {
            let g = Geom::new(device, job.kind, job.head_dim, 1)?;
            let (Some(kp), Some(vp)) = (g.k.pq, g.v.pq) else {
                unreachable!("a PQ kind has PQ geometry");
            };
            per_query += (kp.m * kp.stride * 2) as u64;
            let books = (kp.m * kp.ksub * kp.dsub * 2 + vp.m * vp.ksub * vp.dsub * 2) as u64;
            flush = books * plan.quantize.len() as u64;
        }
        if job.fp_tokens > 0 {
            per_query += 2 * d;
        }
    } else {
        per_query += 2 * d;
    }
    let slices = plan.slices.len() as u64;
    Ok(Footprint {
        link_in_bytes: caches * (group * per_query + 4 * d),
        link_out_bytes: slices * group * (2 + d) * 4,
        link_flush_bytes: flush,
        rows_per_channel: plan.rows_per_channel,
        codebook_copies: plan.codebook_copies,
        channels_used: plan.channels_used,
    })
}
