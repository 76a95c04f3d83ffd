//! The closed-form cycles of one slice's programs (the attention passes and
//! the in-memory quantization), timed phase by phase from the device's
//! parameters instead of command by command; the placement uses them to
//! choose how finely to cut a cache, and [`super::analytic`] adds up a
//! placed layer from them. A slice's program serves its query heads in passes
//! of `g'` (`Geom::passes`): a pass of `h` heads opens each row once with
//! `h` times its column ops, and makes `h` broadcasts, softmax hand-offs
//! and reductions. Within a program:
//!
//! - a row of `k` all-bank column ops (LUTACC, HISTACC, MAC, BINMAC) costs
//!   `max(max(nRCDRD + (k - 1) I + nRTP, nRAS) + nRP, nRC)`, `I` the op's
//!   interval in force (`Device::pim_interval`: nCCDAB, its unit's lanes or
//!   ports, the power limit); a scalar row's `LDP`s and `QMAC`s each hold
//!   the next back by their own interval, so `(k - 1) I` becomes `l I_LDP +
//!   (q - 1) I_QMAC`;
//! - `k` buffer writes (WRGB) cost `k nCCDS`;
//! - a channel-occupying op (MVD, MVB, SFM, CLR, RED, RDD) costs its
//!   occupancy plus one issue cycle; the first one after column ops also
//!   waits `nCL + nBL` (tPIM_MV) from the last op, less the `nRTP + nRP`
//!   already spent closing the row;
//! - refresh: walking each channel's phases against the `nREFI` deadlines, a
//!   refresh due in a row phase adds `nRFC + nRP + nRCDRD`; one due in a
//!   channel-occupying phase only holds back the next row phase until that
//!   overhead has passed.
//!
//! Tests hold the layer's sum within 5 % of the simulator on a grid of
//! shapes.

use std::cell::RefCell;

use aqpim_pim::{column_work, Command, Device};

use super::layout::{Geom, Part};
use super::scalar_geom::{self as scalar, ScalarPart};

struct Params {
    rcd: u64,
    ras: u64,
    rp: u64,
    rc: u64,
    rtp: u64,
    ccds: u64,
    mv_wait: u64,
    wr_gap: u64,
    twr: u64,
}

impl Params {
    fn new(device: &Device) -> Params {
        let p = |name: &str| u64::from(device.param(name).unwrap_or(0));
        Params {
            rcd: p("nRCDRD"),
            ras: p("nRAS"),
            rp: p("nRP"),
            rc: p("nRC"),
            rtp: p("nRTP"),
            ccds: p("nCCDS").max(1),
            mv_wait: (p("nCL") + p("nBL")).saturating_sub(p("nRTP") + p("nRP")),
            wr_gap: p("nCCDL").max(1),
            twr: p("nCWL") + p("nBL") + p("nWR"),
        }
    }

    /// One row of `k` all-bank column ops issued `interval` cycles apart.
    fn row(&self, k: u64, interval: u64) -> u64 {
        if k == 0 {
            return self.rc;
        }
        self.row_span((k - 1) * interval)
    }

    /// One row whose column ops issue over `gaps` cycles, first to last.
    fn row_span(&self, gaps: u64) -> u64 {
        ((self.rcd + gaps + self.rtp).max(self.ras) + self.rp).max(self.rc)
    }
}

/// Cycles of the softmax hand-offs of a slice for `heads` query heads, one
/// after the other (only the first waits for the column ops before it).
fn softmax(device: &Device, p: &Params, g: &Geom, heads: u64) -> u64 {
    p.mv_wait + heads * softmax_one(device, g)
}

fn softmax_one(device: &Device, g: &Geom) -> u64 {
    let banks = g.banks as u64;
    let n_b = g.n_b as u64;
    let n = g.n as u64;
    let mut c = device.mv_cycles(banks * n_b * 4) + 1;
    c += device.sfm_cycles(n) + 1;
    c += device.rdd_cycles(2) + 1;
    if banks * n_b > n {
        c += device.clr_cycles(banks * n_b - n, true) + 1;
    }
    c + device.mv_cycles(banks * n_b * 2) + 1
}

/// Cycles of the cross-bank output reductions of a slice for `heads` query
/// heads, one after the other.
fn reduce(device: &Device, p: &Params, g: &Geom, heads: u64) -> u64 {
    let d = g.d as u64;
    p.mv_wait
        + heads
            * (device.mv_cycles(g.banks as u64 * d * 4)
                + 1
                + device.red_cycles(d)
                + 1
                + device.rdd_cycles(d)
                + 1)
}

thread_local! {
    /// The phases the estimates walked since the last reset, in order:
    /// `(cycles, row phase)`. A refresh due in a row phase delays it by the
    /// refresh overhead; one due in a channel-occupying phase only delays
    /// what follows by what remains of the overhead when the phase ends.
    pub(super) static PHASES: RefCell<Vec<(u64, bool)>> = const { RefCell::new(Vec::new()) };
}

fn row_phase(c: u64) -> u64 {
    PHASES.with(|v| v.borrow_mut().push((c, true)));
    c
}

fn busy(c: u64) -> u64 {
    PHASES.with(|v| v.borrow_mut().push((c, false)));
    c
}

/// Rows of `per_row` slots (or columns) of one part, `ops(slots)` column
/// ops each `interval` cycles apart, over `n_b` slots.
fn rows(p: &Params, g: &Geom, part: &Part, interval: u64, ops: impl Fn(u64) -> u64) -> u64 {
    let spr = part.slots_per_row(g.columns);
    row_phase(
        (0..part.rows)
            .map(|r| {
                let slots = spr.min(g.n_b - r * spr) as u64;
                p.row(ops(slots), interval)
            })
            .sum(),
    )
}

/// The interval of an all-bank column op of `cmd` on `bits`-bit codes.
fn interval(device: &Device, cmd: Command, bits: u32) -> u64 {
    let work = column_work(cmd, device.org.column_bytes as u64, bits, 0);
    device.pim_interval(cmd, work)
}

/// Cycles of a group of `group` query heads over one slice, in the passes
/// the programs make ([`Geom::passes`]).
pub(crate) fn group_cycles(device: &Device, g: &Geom, group: usize) -> u64 {
    g.passes(device, group)
        .into_iter()
        .map(|pass| slice_cycles(device, g, pass.len() as u64))
        .sum()
}

/// Cycles of one pass of `h` query heads over one slice: every row once,
/// `h` column ops per column read, `h` broadcasts, softmaxes and
/// reductions.
fn slice_cycles(device: &Device, g: &Geom, h: u64) -> u64 {
    let p = Params::new(device);
    let lanes = device.pim.lanes as u64;
    let clr = |len: u64| device.clr_cycles(len, false) + 1;
    let d = g.d as u64;
    // Column ops over `slots` slots of a part: one per column of `tpc`
    // tokens, or `cpt` per token.
    let col_ops = |part: &Part| {
        let (tpc, cpt) = (part.tpc as u64, part.cpt as u64);
        move |slots: u64| {
            h * if tpc > 1 {
                slots.div_ceil(tpc)
            } else {
                slots * cpt
            }
        }
    };
    let mac = interval(device, Command::Mac, 16);
    if let Some(sc) = g.sc {
        // Per row, its LDPs then QMACs (interleaved by latch windows; each
        // op holds the next back by its own interval, the last one's aside).
        let ldp = device.pim_interval(Command::Ldp, 0);
        let part_rows = |part: &ScalarPart| {
            let qmac = interval(
                device,
                Command::QMac,
                (device.org.column_bytes * 8 / part.n) as u32,
            );
            let per_row = scalar::row_counts(device, part, g.n_b);
            row_phase(
                per_row
                    .iter()
                    .map(|&(l, q)| p.row_span(l * ldp + (h * q).saturating_sub(1) * qmac))
                    .sum(),
            )
        };
        let mut c = busy(h * (d / lanes) * p.ccds + clr(h * g.n_b as u64));
        c += part_rows(&sc.k);
        c += busy(softmax(device, &p, g, h) + clr(h * d));
        c += part_rows(&sc.v);
        return c + busy(reduce(device, &p, g, h));
    }
    match (g.k.pq, g.v.pq) {
        (Some(kq), Some(q)) => {
            let lut = interval(device, Command::LutAcc, kq.bits.bits());
            let hist = interval(device, Command::HistAcc, q.bits.bits());
            let binmac = interval(device, Command::BinMac, 16);
            let table = (kq.m * kq.stride) as u64 / lanes;
            let mut c = busy(h * table * p.ccds + clr(h * g.n_b as u64));
            c += rows(&p, g, &g.k, lut, col_ops(&g.k));
            c += busy(softmax(device, &p, g, h) + clr(h * d));
            let tpc = g.v.tpc as u64;
            let hist_ops = |slots: u64| h * if tpc > 1 { slots.div_ceil(tpc) } else { slots };
            for chunk in 0..q.chunks {
                c += busy(clr(h * q.bins as u64));
                c += rows(&p, g, &g.v, hist, hist_ops);
                // BINMAC over the chunk's subspaces' codebook columns, row by row.
                let first = chunk * q.group;
                let last = ((chunk + 1) * q.group).min(q.m);
                let (u0, u1) = (first * q.cb_cols_per_sub, last * q.cb_cols_per_sub);
                let mut u = u0;
                while u < u1 {
                    let row_end = (u / g.columns + 1) * g.columns;
                    let k = h * (row_end.min(u1) - u) as u64;
                    c += row_phase(p.row(k, binmac));
                    u = row_end.min(u1);
                }
            }
            c + busy(reduce(device, &p, g, h))
        }
        _ => {
            let mut c = busy(h * (d / lanes) * p.ccds + clr(h * g.n_b as u64));
            c += rows(&p, g, &g.k, mac, col_ops(&g.k));
            c += busy(softmax(device, &p, g, h) + clr(h * d));
            c += rows(&p, g, &g.v, mac, col_ops(&g.v));
            c + busy(reduce(device, &p, g, h))
        }
    }
}

/// Cycles of one in-memory quantization program of `tokens` new tokens in
/// `passes` passes.
pub(super) fn quantize_cycles(device: &Device, g: &Geom, tokens: usize, passes: usize) -> u64 {
    let p = Params::new(device);
    let lanes = device.pim.lanes;
    let cw = device.org.column_bytes;
    let t = tokens as u64;
    let fp_cols = (2 * g.d / cw) as u64;
    // Staging writes, per token: ACT, tRCDWR, the writes tCCDL apart, tWR
    // to its PRE; the next token's bank activates right after.
    let staging = t * (p.rcd + (2 * fp_cols - 1) * p.wr_gap + p.twr + 1);
    let (mut wrgb, mut argmin, mut cpts) = (0u64, 0u64, 0u64);
    for part in [&g.k, &g.v] {
        let q = part.pq.expect("PQ geometry");
        let sub = q.ksub * q.dsub;
        let per_chunk = (device.pim.buffer_elements() / sub).clamp(1, q.m);
        let chunks = q.m.div_ceil(per_chunk) as u64;
        wrgb += (q.m * sub / lanes) as u64 * p.ccds;
        let terms = (q.ksub * q.dsub) as u64;
        argmin +=
            (passes * q.m) as u64 * device.pim_interval(Command::ArgMin, terms) + chunks * p.rcd;
        cpts += part.cpt as u64 - 1;
    }
    // Code stores, per token: key row then value row of the same bank,
    // each ACT, tRCDWR, the STCs, tWR, PRE (tRP before the second ACT).
    let stores = (tokens / g.k.tpc) as u64;
    let store = stores * (2 * (p.rcd + p.twr) + cpts * p.wr_gap + p.rp + 1);
    row_phase(staging + p.rcd + wrgb + argmin + p.rtp + p.rp + store)
}
