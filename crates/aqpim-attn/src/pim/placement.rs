//! Where a layer's caches live: one row allocator per device, the layer
//! placement ([`plan`]) that both the timing runs and the functional layer
//! runs use, and what it occupies ([`layer_rows_per_bank`],
//! [`layer_footprint`]).

use aqpim_kvcache::CodebookScope;
use std::collections::BTreeMap;

use aqpim_pim::Device;
use serde::Serialize;

use crate::error::{AttnError, Result};
use crate::pim::layout::Geom;
use crate::pim::program::{self, NewToken, Rows};
use crate::pim::slice_cost;
use crate::pim::{LayerJob, PimKind, Placement};

/// Hands out rows of every bank, channel by channel, from row 0 up: the one
/// allocator behind every placement of this module and the functional runs.
#[derive(Debug, Clone)]
pub(crate) struct RowAlloc {
    next: Vec<u32>,
    used: Vec<bool>,
}

impl RowAlloc {
    pub fn new(device: &Device) -> RowAlloc {
        RowAlloc {
            next: vec![0; device.org.channels],
            used: vec![false; device.org.channels],
        }
    }

    /// The first of `rows` fresh rows of every bank of channel `ch`.
    pub fn take(&mut self, ch: usize, rows: usize) -> u32 {
        let at = self.next[ch];
        self.next[ch] += rows as u32;
        self.used[ch] = true;
        at
    }

    /// Key rows then value rows of a slice of `geom` on `ch`, beside the
    /// value codebook at row `cb`.
    pub fn slice(&mut self, ch: usize, geom: &Geom, cb: u32) -> Rows {
        let k = self.take(ch, geom.rows());
        Rows {
            k,
            v: k + geom.k.rows as u32,
            cb,
        }
    }

    /// Rows taken on each channel.
    pub fn rows_per_channel(&self) -> Vec<usize> {
        self.next.iter().map(|&r| r as usize).collect()
    }

    /// Channels with at least one row taken.
    pub fn channels_used(&self) -> usize {
        self.used.iter().filter(|&&u| u).count()
    }
}

/// Balanced split of `n` tokens into `parts` runs: `(start, len)`.
pub(crate) fn split(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts)
        .map(|i| (i * n / parts, (i + 1) * n / parts - i * n / parts))
        .filter(|&(_, len)| len > 0)
        .collect()
}

/// Tokens that share a code column in a slice quantized in memory: both
/// parts must tile columns alike, since one flush stores them together.
pub(crate) fn quantizable(geom: &Geom) -> Result<usize> {
    if geom.k.tpc != geom.v.tpc {
        return Err(AttnError::Placement(format!(
            "in-memory quantization stores key and value codes of the same tokens together: keys of {} B and values of {} B per token do not share code columns alike",
            geom.k.tb, geom.v.tb
        )));
    }
    Ok(geom.k.tpc)
}

/// One slice of a layer's placement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlacedSlice {
    pub ch: usize,
    pub geom: Geom,
    pub rows: Rows,
    /// The cache (`s * kv_heads + h`) it holds tokens of.
    pub cache: usize,
    /// Its first token among the cache's tokens in `kind`'s format, or
    /// among its FP16 sink and window tokens for `window` slices.
    pub start: usize,
    /// A PQ cache's FP16 sink and window slice.
    pub window: bool,
}

/// One in-memory quantization program of a layer.
#[derive(Debug, Clone)]
pub(crate) struct QuantizeJob {
    pub ch: usize,
    pub geom: Geom,
    /// One per bank and pass: cache `caches[pass / tpc]`'s new token
    /// `bank * tpc + pass % tpc`.
    pub tokens: Vec<NewToken>,
    /// The caches whose new tokens the program quantizes, `tpc` passes each.
    pub caches: Vec<usize>,
    /// Host byte of the key then value codebook (0 in timing runs).
    pub books: u32,
}

/// A layer's placement: slices per channel, new tokens to quantize per
/// channel, and the rows every bank of each channel uses.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub slices: Vec<PlacedSlice>,
    pub quantize: Vec<QuantizeJob>,
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

/// Checks a job's shape: an error for what no placement can hold.
fn check_job(job: &LayerJob) -> Result<()> {
    let caches = job.heads;
    if caches == 0 || job.group == 0 || job.head_dim == 0 {
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
    if job.kind == PimKind::Fp16 && job.fp_tokens > 0 {
        return Err(AttnError::Placement(
            "FP16 sink/window tokens only go beside PQ or scalar codes".into(),
        ));
    }
    if job.ctx == 0 && job.fp_tokens == 0 {
        return Err(AttnError::Placement("a cache with no tokens".into()));
    }
    Ok(())
}

/// Main slices per cache: at least what one channel's budgets require;
/// under [`Placement::Spread`] at most enough to keep every channel busy
/// (`4 x channels / caches`, so that the slices of a batch that does not
/// divide the channels still balance to within a quarter of a wave), and
/// among those the count with the least estimated time (each slice pays its
/// own softmax hand-off and, for PQ, its own bins-times-codebook, so
/// splitting is not always faster); under [`Placement::OnePerCache`]
/// exactly the least.
fn slices_per_cache(device: &Device, job: &LayerJob) -> Result<usize> {
    if job.ctx == 0 {
        return Ok(0);
    }
    let (d, channels, caches) = (job.head_dim, device.org.channels, job.heads);
    let max = Geom::max_tokens(device, job.kind, d)?;
    let lo = job.ctx.div_ceil(max).clamp(1, job.ctx);
    let hi = match job.placement {
        Placement::Spread => lo.max((4 * channels).div_ceil(caches)).min(job.ctx),
        Placement::OnePerCache => lo,
    };
    let mut best = (u64::MAX, lo);
    for s in lo..=hi {
        let geom = Geom::new(device, job.kind, d, job.ctx.div_ceil(s))?;
        let waves = (caches * s).div_ceil(channels) as u64;
        let est = waves * slice_cost::group_cycles(device, &geom, job.group);
        if est < best.0 {
            best = (est, s);
        }
    }
    Ok(best.1)
}

/// Places one layer of `job` on `device`.
///
/// Caches are ordered by KV head, then sequence; each is cut into `s` equal
/// slices, `s` the larger of what one channel can hold and `channels /
/// caches` (so a small batch still spreads over every channel); the `T`
/// slices in that order go to channels in contiguous blocks (slice `k` to
/// channel `k * C / T`), so that a channel serves few KV heads and keeps few
/// value codebooks (under [`Placement::OnePerCache`], every slice of a cache
/// on the cache's one channel, `ci * C / caches`, processed one after the
/// other). A PQ cache's FP16 sink and window slice goes to the
/// channel of its first slice; its new token is quantized on the channel of
/// its last slice.
pub(crate) fn plan(device: &Device, job: &LayerJob) -> Result<Plan> {
    check_job(job)?;
    let (d, caches, kv_heads) = (job.head_dim, job.heads, job.kv_heads);
    let pq = matches!(job.kind, PimKind::Pq { .. });
    let channels = device.org.channels;
    let fp_geom = if job.fp_tokens > 0 {
        Some(Geom::new(device, PimKind::Fp16, d, job.fp_tokens)?)
    } else {
        None
    };
    let per_cache = slices_per_cache(device, job)?;
    let mut order: Vec<usize> = (0..caches).collect();
    order.sort_by_key(|&c| (c % kv_heads, c / kv_heads));
    let total = caches * per_cache;
    let mut rows = RowAlloc::new(device);
    // (channel, kv head or cache) -> codebook rows.
    let mut books: BTreeMap<(usize, usize), u32> = BTreeMap::new();
    let mut slices = Vec::new();
    let mut fp_slices = Vec::new();
    let mut last_of: Vec<(usize, usize, PlacedSlice)> = Vec::new();
    let parts = split(job.ctx, per_cache);
    for (ci, &c) in order.iter().enumerate() {
        let head = c % kv_heads;
        let mut first_ch = None;
        let mut last = None;
        for (pi, &(start, len)) in parts.iter().enumerate() {
            let k = ci * per_cache + pi;
            let ch = match job.placement {
                Placement::Spread => k * channels / total.max(1),
                // AttAcc's rule: a cache's slices stay on its one channel.
                Placement::OnePerCache => ci * channels / caches,
            };
            let geom = Geom::new(device, job.kind, d, len)?;
            let owner = match job.codebooks {
                CodebookScope::Model => head,
                CodebookScope::Sequence => c,
            };
            let cb = match geom.v.pq {
                Some(p) => *books
                    .entry((ch, owner))
                    .or_insert_with(|| rows.take(ch, p.cb_rows)),
                None => 0,
            };
            let s = PlacedSlice {
                ch,
                geom,
                rows: rows.slice(ch, &geom, cb),
                cache: c,
                start,
                window: false,
            };
            slices.push(s);
            first_ch.get_or_insert(ch);
            last = Some(s);
        }
        let home = first_ch.unwrap_or(ci * channels / caches);
        if let Some(geom) = fp_geom {
            fp_slices.push(PlacedSlice {
                ch: home,
                geom,
                rows: rows.slice(home, &geom, 0),
                cache: c,
                start: 0,
                window: true,
            });
        }
        if let (true, Some(s)) = (job.quantize && pq, last) {
            last_of.push((s.ch, head, s));
        }
    }
    slices.extend(fp_slices);
    let quantize = if job.quantize && pq {
        place_new_tokens(device, d, last_of, &mut rows)?
    } else {
        Vec::new()
    };
    Ok(Plan {
        slices,
        quantize,
        rows_per_channel: rows.rows_per_channel(),
        codebook_copies: books.len(),
        channels_used: rows.channels_used(),
    })
}

/// New tokens: per (channel, KV head), up to one per bank per program, each
/// program with its staging rows.
fn place_new_tokens(
    device: &Device,
    d: usize,
    last_of: Vec<(usize, usize, PlacedSlice)>,
    rows: &mut RowAlloc,
) -> Result<Vec<QuantizeJob>> {
    let mut groups: BTreeMap<(usize, usize), Vec<PlacedSlice>> = BTreeMap::new();
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
    let mut out = Vec::new();
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
            let base = rows.take(ch, passes.div_ceil(per_row));
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
            out.push(QuantizeJob {
                ch,
                geom,
                tokens,
                caches: chunk.iter().map(|s| s.cache).collect(),
                books: 0,
            });
        }
    }
    Ok(out)
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
/// GPU-PIM link, read off its placement (the same `plan` that
/// [`simulate_layer`](crate::pim::simulate_layer) times).
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
            flush = (kp.book_bytes() + vp.book_bytes()) as u64 * plan.quantize.len() as u64;
        }
        if job.fp_tokens > 0 {
            per_query += 2 * d;
        }
    } else {
        // FP16 and scalar slices (and a scalar cache's window slice) all
        // read the FP16 query, broadcast once.
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
