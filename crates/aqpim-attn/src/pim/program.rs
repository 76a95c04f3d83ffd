//! Program generators: one slice's attention for a pass of query heads of
//! one group, FP16 (AttAcc) or on PQ codes (AQPIM), and in-memory
//! quantization of new tokens. Each appends instructions for one channel;
//! channels run in parallel, so a layer's program is the concatenation of
//! its channels'.
//!
//! A pass activates each of the slice's rows once and issues, per column,
//! one command per head of the pass, each head's operands at its own buffer
//! and register offsets (`Geom::heads_per_pass` says how many heads fit).
//! It leaves in the read log, per head, the softmax statistics `[max, sum]`
//! of its tokens, then, per head, its `d` outputs (normalized within the
//! slice): the host merges slices as partial softmaxes (see
//! [`crate::pim::merge`]).
//!
//! Generators mark each instruction with the [`Phase`] of the kernel it
//! belongs to, so that a run's statistics can be split by phase.

use aqpim_pim::{BankSel, Device, Instr, Strides};
use half::f16;
use serde::Serialize;

use crate::pim::layout::{Geom, Part};

/// A phase of the lowered attention kernel: what a run of instructions
/// computes. Every instruction of a layer's program belongs to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `WRGB` of a query head's FP16 lookup table (PQ) or FP16 query
    /// (AttAcc) into every bank's buffer.
    #[default]
    Broadcast,
    /// Scores in the banks: `LUTACC` over key codes (PQ), `MAC reduce`
    /// over FP16 keys or `QMAC` (with `LDP`) over scalar key codes, with the
    /// row activations and register clears.
    Scoring,
    /// Scores to the buffer die, `SFM`, statistics to the host, weights
    /// back to the banks' buffers.
    Softmax,
    /// The weighted sum of values: AttAcc's `MAC bcast` over FP16 values,
    /// or `QMAC bcast` over scalar value codes.
    Values,
    /// Per-centroid weight histograms over value codes (`HISTACC`).
    Histogram,
    /// Bins times the value codebook (`BINMAC` over the codebook rows).
    BinsCodebook,
    /// Partial outputs summed across banks on the buffer die (`RED`) and
    /// read by the host.
    Reduction,
    /// Every phase of a PQ cache's FP16 sink and recent-window slice.
    Fp16Window,
    /// In-memory quantization of new tokens (`WR` staging, codebooks
    /// streamed by `WRGB`, `ARGMIN`, `STC`).
    Quantization,
    /// Commands the simulator inserts: refresh, the precharge before it
    /// and the row restores after it.
    Refresh,
}

impl Phase {
    /// Every phase, in kernel order.
    pub const ALL: [Phase; 10] = [
        Phase::Broadcast,
        Phase::Scoring,
        Phase::Softmax,
        Phase::Values,
        Phase::Histogram,
        Phase::BinsCodebook,
        Phase::Reduction,
        Phase::Fp16Window,
        Phase::Quantization,
        Phase::Refresh,
    ];

    /// The phase's key (as in JSON).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Broadcast => "broadcast",
            Phase::Scoring => "scoring",
            Phase::Softmax => "softmax",
            Phase::Values => "values",
            Phase::Histogram => "histogram",
            Phase::BinsCodebook => "bins_codebook",
            Phase::Reduction => "reduction",
            Phase::Fp16Window => "fp16_window",
            Phase::Quantization => "quantization",
            Phase::Refresh => "refresh",
        }
    }

    /// A short human description.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Broadcast => "table/query broadcast",
            Phase::Scoring => "scoring",
            Phase::Softmax => "softmax",
            Phase::Values => "weighted values (FP16)",
            Phase::Histogram => "histogram",
            Phase::BinsCodebook => "bins x codebook",
            Phase::Reduction => "reduction",
            Phase::Fp16Window => "FP16 sinks + window",
            Phase::Quantization => "quantization",
            Phase::Refresh => "refresh (inserted)",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Instructions being generated, each with its phase.
#[derive(Debug, Clone, Default)]
pub(crate) struct Out {
    pub instrs: Vec<Instr>,
    /// The phase of each instruction.
    pub phases: Vec<Phase>,
    phase: Phase,
    /// When set, every instruction goes to this phase whatever the
    /// generator marks (a PQ cache's FP16 slice).
    pub fixed: Option<Phase>,
}

impl Out {
    pub fn push(&mut self, ins: Instr) {
        self.instrs.push(ins);
        self.phases.push(self.fixed.unwrap_or(self.phase));
    }

    /// Marks the instructions that follow.
    pub fn phase(&mut self, p: Phase) {
        self.phase = p;
    }
}

/// The all-bank selector of channel-local bank `b`.
pub(crate) fn bank_sel(device: &Device, b: usize) -> BankSel {
    let (pc, sid, bg, bank) = device.org.bank_coords(b);
    BankSel {
        pc: pc as u8,
        sid: sid as u8,
        bg: bg as u8,
        bank: bank as u8,
    }
}

/// Registers an `ARGMIN` can write: its `reg` field has 12 bits.
pub(crate) const ARGMIN_REGISTERS: usize = 4096;

/// First rows of a slice's keys, values and (PQ) value codebook in every bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rows {
    /// Key rows (codes or FP16).
    pub k: u32,
    /// Value rows.
    pub v: u32,
    /// Value codebook rows (PQ).
    pub cb: u32,
}

/// Appends `body` run `count` times with `strides` (nothing for 0, the body
/// alone for 1).
fn looped(out: &mut Out, count: usize, strides: Strides, body: impl FnOnce(&mut Out)) {
    match count {
        0 => {}
        1 => body(out),
        _ => {
            out.push(Instr::Loop {
                count: count as u32,
                strides,
            });
            body(out);
            out.push(Instr::EndLoop);
        }
    }
}

fn strides(col: i16, buf: i16, reg: i16, data: i16) -> Strides {
    Strides {
        col,
        buf,
        reg,
        data,
        ..Strides::default()
    }
}

/// Streams `elements / lanes` 32-byte column writes of host data from
/// `data` into every bank's buffer from element `buf`.
pub(crate) fn write_buffer(
    out: &mut Out,
    ch: u8,
    (elements, buf): (usize, usize),
    lanes: usize,
    cw: usize,
    data: u32,
) {
    let buf = buf as u16;
    looped(
        out,
        elements / lanes,
        strides(0, lanes as i16, 0, cw as i16),
        |o| o.push(Instr::Wrgb { ch, buf, data }),
    );
}

/// Every head's operand (`elements` FP16 each: its query or lookup table)
/// from its host byte in `heads` into every bank's buffer, head `i` from
/// element `i * elements`.
pub(crate) fn write_heads(
    out: &mut Out,
    ch: u8,
    elements: usize,
    heads: &[u32],
    lanes: usize,
    cw: usize,
) {
    for (i, &data) in heads.iter().enumerate() {
        write_buffer(out, ch, (elements, i * elements), lanes, cw, data);
    }
}

/// For each row of a slice's key or value range: `ACTAB`, the row's work
/// (given the row index, its first slot and the slots or columns it holds),
/// `PREAB`.
fn rows_of(
    out: &mut Out,
    g: &Geom,
    part: &Part,
    ch: u8,
    base: u32,
    mut row: impl FnMut(&mut Out, usize, usize),
) {
    let spr = part.slots_per_row(g.columns);
    for r in 0..part.rows {
        let first = r * spr;
        let slots = spr.min(g.n_b - first);
        out.push(Instr::ActAb {
            ch,
            row: base + r as u32,
        });
        row(out, first, slots);
        out.push(Instr::PreAb { ch });
    }
}

/// Per head `i` of a pass of `heads`: its scores in every bank's registers
/// `i n_b..(i + 1) n_b` -> softmax over the slice on the buffer die
/// (statistics to the host) -> its weights in every bank's buffer `i
/// n_b..(i + 1) n_b` (padding slots zero).
pub(crate) fn softmax(out: &mut Out, g: &Geom, ch: u8, heads: usize) {
    for i in 0..heads {
        softmax_one(out, g, ch, (i * g.n_b) as u16);
    }
}

/// [`softmax`] of one head whose scores sit at register `at` and whose
/// weights go to buffer element `at`.
fn softmax_one(out: &mut Out, g: &Geom, ch: u8, at: u16) {
    let n = g.n as u16;
    out.push(Instr::Mvd {
        ch,
        reg: at,
        len: g.n_b as u16,
        die: 0,
    });
    out.push(Instr::Sfm {
        ch,
        die: 0,
        len: n,
        scale: f16::ONE,
        stats: true,
    });
    out.push(Instr::Rdd { ch, die: n, len: 2 });
    let padded = g.banks * g.n_b;
    if padded > g.n {
        out.push(Instr::Clr {
            ch,
            off: n,
            len: (padded - g.n) as u16,
            die: true,
        });
    }
    out.push(Instr::Mvb {
        ch,
        die: 0,
        len: g.n_b as u16,
        buf: at,
        broadcast: false,
    });
}

/// Per head `i` of a pass of `heads`: its partial outputs in every bank's
/// registers `reg + i d..reg + (i + 1) d` -> summed over the banks on the
/// buffer die -> to the host.
pub(crate) fn reduce_out(out: &mut Out, g: &Geom, ch: u8, reg: usize, heads: usize) {
    for i in 0..heads {
        reduce_one(out, g, ch, (reg + i * g.d) as u16);
    }
}

fn reduce_one(out: &mut Out, g: &Geom, ch: u8, reg: u16) {
    let d = g.d as u16;
    let dst = (g.banks * g.d) as u16;
    out.push(Instr::Mvd {
        ch,
        reg,
        len: d,
        die: 0,
    });
    out.push(Instr::Red {
        ch,
        src: 0,
        len: d,
        dst,
    });
    out.push(Instr::Rdd {
        ch,
        die: dst,
        len: d,
    });
}

/// FP16 attention as AttAcc computes it, for a pass of query heads whose
/// scaled FP16 queries sit in host data at bytes `heads`: `MAC reduce`
/// scores over the key rows, softmax on the buffer die, `MAC bcast` of each
/// value token by its weight, cross-bank reduction. Each row is activated
/// once for the pass and each of its columns read by one `MAC` per head:
/// head `i`'s query at buffer `i d`, its scores at registers `i n_b`, its
/// weights at buffer `i n_b`, its outputs at registers `i d`.
pub(crate) fn fp16_slice(
    out: &mut Out,
    g: &Geom,
    ch: u8,
    rows: Rows,
    heads: &[u32],
    lanes: usize,
    cw: usize,
) {
    let (h, n_b, d) = (heads.len(), g.n_b, g.d);
    out.phase(Phase::Broadcast);
    write_heads(out, ch, d, heads, lanes, cw);
    out.phase(Phase::Scoring);
    out.push(Instr::Clr {
        ch,
        off: 0,
        len: (h * n_b) as u16,
        die: false,
    });
    let cpt = g.k.cpt;
    rows_of(out, g, &g.k, ch, rows.k, |o, first, slots| {
        looped(o, slots, strides(cpt as i16, 0, 1, 0), |o| {
            looped(o, cpt, strides(1, lanes as i16, 0, 0), |o| {
                for i in 0..h {
                    o.push(Instr::Mac {
                        ch,
                        col: 0,
                        buf: (i * d) as u16,
                        reg: (i * n_b + first) as u16,
                        reduce: true,
                        bcast: false,
                    })
                }
            })
        })
    });
    out.phase(Phase::Softmax);
    softmax(out, g, ch, h);
    out.phase(Phase::Values);
    out.push(Instr::Clr {
        ch,
        off: 0,
        len: (h * d) as u16,
        die: false,
    });
    rows_of(out, g, &g.v, ch, rows.v, |o, first, slots| {
        looped(o, slots, strides(cpt as i16, 1, 0, 0), |o| {
            looped(o, cpt, strides(1, 0, lanes as i16, 0), |o| {
                for i in 0..h {
                    o.push(Instr::Mac {
                        ch,
                        col: 0,
                        buf: (i * n_b + first) as u16,
                        reg: (i * d) as u16,
                        reduce: false,
                        bcast: true,
                    })
                }
            })
        })
    });
    out.phase(Phase::Reduction);
    reduce_out(out, g, ch, 0, h);
}

/// `LUTACC` over a slice's key-code rows for `h` heads: head `i`'s table at
/// buffer `i table_len`, its scores at registers `i n_b`.
fn pq_scores(out: &mut Out, g: &Geom, ch: u8, k_row: u32, h: usize, table_len: usize) {
    let Some(kp) = g.k.pq else {
        unreachable!("pq_scores on a PQ geometry")
    };
    let (n_b, tpc, cpt, bits, group) = (g.n_b, g.k.tpc, g.k.cpt, kp.bits, kp.group as u8);
    rows_of(out, g, &g.k, ch, k_row, |o, first, slots| {
        if tpc > 1 {
            looped(o, slots.div_ceil(tpc), strides(1, 0, tpc as i16, 0), |o| {
                for i in 0..h {
                    o.push(Instr::LutAcc {
                        ch,
                        col: 0,
                        bits,
                        group,
                        table: (i * table_len) as u16,
                        reg: (i * n_b + first) as u16,
                    })
                }
            })
        } else {
            looped(o, slots, strides(cpt as i16, 0, 1, 0), |o| {
                for j in 0..cpt {
                    for i in 0..h {
                        o.push(Instr::LutAcc {
                            ch,
                            col: j as u8,
                            bits,
                            group,
                            table: (i * table_len + j * kp.group * kp.stride) as u16,
                            reg: (i * n_b + first) as u16,
                        });
                    }
                }
            })
        }
    });
}

/// `BINMAC` of chunk `chunk`'s subspaces for `h` heads: each codebook row
/// (from `cb_row`) activated once, head `i`'s bins at registers `i bins`,
/// its outputs at registers `out_reg + i d`.
fn pq_bins_codebook(
    out: &mut Out,
    g: &Geom,
    ch: u8,
    (cb_row, chunk): (u32, usize),
    (h, lanes): (usize, usize),
    out_reg: usize,
) {
    let Some(p) = g.v.pq else {
        unreachable!("pq_bins_codebook on a PQ geometry")
    };
    let per_col = lanes / p.dsub;
    let subspaces = chunk * p.group..((chunk + 1) * p.group).min(p.m);
    let mut open: Option<usize> = None;
    for m in subspaces {
        let local = m - chunk * p.group;
        let start = m * p.cb_cols_per_sub;
        let end = start + p.cb_cols_per_sub;
        let mut u = start;
        while u < end {
            let (row, col) = (u / g.columns, u % g.columns);
            let seg = (end - u).min(g.columns - col);
            if open != Some(row) {
                if open.is_some() {
                    out.push(Instr::PreAb { ch });
                }
                out.push(Instr::ActAb {
                    ch,
                    row: cb_row + row as u32,
                });
                open = Some(row);
            }
            let bins = local * p.stride + (u - start) * per_col;
            looped(out, seg, strides(1, 0, per_col as i16, 0), |o| {
                for i in 0..h {
                    o.push(Instr::BinMac {
                        ch,
                        col: col as u8,
                        dsub: p.dsub as u8,
                        bins: (i * p.bins + bins) as u16,
                        out: (out_reg + i * g.d + m * p.dsub) as u16,
                    })
                }
            });
            u += seg;
        }
    }
    if open.is_some() {
        out.push(Instr::PreAb { ch });
    }
}

/// AQPIM attention on codes for a pass of query heads whose FP16 lookup
/// tables (`M x 2^bits`, subspace-major) sit in host data at bytes `heads`:
/// `WRGB` the tables, `LUTACC` scores, softmax, per chunk of subspaces
/// `HISTACC` bins and `BINMAC` bins times the value codebook, cross-bank
/// reduction. Each row (codes or codebook) is activated once for the pass
/// and each of its columns read by one command per head: head `i`'s table
/// at buffer `i T` (`T = M x 2^bits`), its scores at registers `i n_b`, its
/// weights at buffer `i n_b`, its bins at registers `i bins` and its
/// outputs at registers `h bins + i d` for a pass of `h` heads.
pub(crate) fn pq_slice(
    out: &mut Out,
    g: &Geom,
    ch: u8,
    rows: Rows,
    heads: &[u32],
    lanes: usize,
    cw: usize,
) {
    let (Some(kp), Some(p)) = (g.k.pq, g.v.pq) else {
        unreachable!("pq_slice on a PQ geometry")
    };
    let (h, n_b) = (heads.len(), g.n_b);
    let table_len = kp.m * kp.stride;
    out.phase(Phase::Broadcast);
    write_heads(out, ch, table_len, heads, lanes, cw);
    out.phase(Phase::Scoring);
    out.push(Instr::Clr {
        ch,
        off: 0,
        len: (h * n_b) as u16,
        die: false,
    });
    pq_scores(out, g, ch, rows.k, h, table_len);
    out.phase(Phase::Softmax);
    softmax(out, g, ch, h);
    out.phase(Phase::Histogram);
    let out_reg = h * p.bins;
    out.push(Instr::Clr {
        ch,
        off: out_reg as u16,
        len: (h * g.d) as u16,
        die: false,
    });
    // The values in their own code format.
    let (tpc, cpt, bits, group) = (g.v.tpc, g.v.cpt, p.bits, p.group as u8);
    for chunk in 0..p.chunks {
        out.phase(Phase::Histogram);
        out.push(Instr::Clr {
            ch,
            off: 0,
            len: (h * p.bins) as u16,
            die: false,
        });
        rows_of(out, g, &g.v, ch, rows.v, |o, first, slots| {
            let (count, step) = if tpc > 1 {
                (slots.div_ceil(tpc), strides(1, tpc as i16, 0, 0))
            } else {
                (slots, strides(cpt as i16, 1, 0, 0))
            };
            let col = if tpc > 1 { 0 } else { chunk as u8 };
            looped(o, count, step, |o| {
                for i in 0..h {
                    o.push(Instr::HistAcc {
                        ch,
                        col,
                        bits,
                        group,
                        weights: (i * n_b + first) as u16,
                        reg: (i * p.bins) as u16,
                    })
                }
            })
        });
        out.phase(Phase::BinsCodebook);
        pq_bins_codebook(out, g, ch, (rows.cb, chunk), (h, lanes), out_reg);
    }
    out.phase(Phase::Reduction);
    reduce_out(out, g, ch, out_reg, h);
}

/// Where one new token goes and where its FP16 key and value are staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NewToken {
    /// Bank (channel-local index).
    pub bank: usize,
    /// Pass: tokens of one pass sit in different banks at the same staging
    /// place and are quantized by the same all-bank `ARGMIN`s.
    pub pass: usize,
    /// Staging row and first column of the pass (key, then value: `4 d`
    /// bytes).
    pub stage: (u32, usize),
    /// Whether this token's `STC` writes its code columns: tokens that
    /// share a column (`tpc > 1`) sit in consecutive passes of one bank and
    /// the first of them stores the column for all.
    pub store: bool,
    /// Row and first column of its key codes.
    pub k_at: (u32, usize),
    /// Row and first column of its value codes.
    pub v_at: (u32, usize),
    /// Host-data byte offset of its FP16 key, then value (`4 d` bytes).
    pub data: u32,
}

/// In-memory quantization of new tokens under one pair of codebooks, in
/// passes of at most one token per bank: each token's FP16 key and value
/// are written (`WR`) to its pass's staging place in its bank; each
/// codebook is streamed into the buffers in chunks of whole subspaces
/// (`WRGB` from host data at `codebooks`: key codebook then value codebook,
/// FP16, centroid-major per subspace), and per chunk and pass `ARGMIN` finds
/// every subspace's nearest centroid in every bank at once (pass `p`'s key
/// codes to registers `Mp..Mp+M`, its value codes to `M(P+p)..` for `P`
/// passes, so the codes of consecutive passes are adjacent); `STC` writes
/// the code columns in place, one column for the tokens that share it.
pub(crate) fn quantize(
    out: &mut Out,
    g: &Geom,
    ch: u8,
    tokens: &[NewToken],
    codebooks: u32,
    device: &Device,
) {
    let buffer_elements = device.pim.buffer_elements();
    let (lanes, cw) = (device.pim.lanes, device.org.column_bytes);
    let bank_sel = |b| bank_sel(device, b);
    let (Some(kp), Some(vp)) = (g.k.pq, g.v.pq) else {
        unreachable!("quantize on a PQ geometry")
    };
    out.phase(Phase::Quantization);
    let fp_cols = 2 * g.d / cw;
    for t in tokens {
        let bank = bank_sel(t.bank);
        out.push(Instr::Act {
            ch,
            bank,
            row: t.stage.0,
        });
        looped(out, 2 * fp_cols, strides(1, 0, 0, cw as i16), |o| {
            o.push(Instr::Wr {
                ch,
                bank,
                col: t.stage.1 as u8,
                data: t.data,
            })
        });
        out.push(Instr::Pre { ch, bank });
    }
    let npasses = tokens.iter().map(|t| t.pass + 1).max().unwrap_or(0);
    let mut passes: Vec<(usize, (u32, usize))> = tokens.iter().map(|t| (t.pass, t.stage)).collect();
    passes.sort_unstable();
    passes.dedup();
    // Part `i` (keys, then values): its geometry, its first register (pass
    // `p`'s codes at `base + p M_i`) and its codebook's first host byte.
    let parts = [
        (kp, g.k.cpt, 0, codebooks),
        (
            vp,
            g.v.cpt,
            npasses * kp.m,
            codebooks + kp.book_bytes() as u32,
        ),
    ];
    let mut open: Option<u32> = None;
    for (part, &(p, _, base, books)) in parts.iter().enumerate() {
        let sub_elems = p.ksub * p.dsub;
        let per_chunk = (buffer_elements / sub_elems).clamp(1, p.m);
        let nbits = p.ksub.trailing_zeros() as u8;
        let mut m0 = 0;
        while m0 < p.m {
            let subs = per_chunk.min(p.m - m0);
            let data = books + (m0 * sub_elems * 2) as u32;
            write_buffer(out, ch, (subs * sub_elems, 0), lanes, cw, data);
            for &(pass, (row, col0)) in &passes {
                if open != Some(row) {
                    if open.is_some() {
                        out.push(Instr::PreAb { ch });
                    }
                    out.push(Instr::ActAb { ch, row });
                    open = Some(row);
                }
                for m in m0..m0 + subs {
                    let lane = m * p.dsub;
                    out.push(Instr::ArgMin {
                        ch,
                        col: (col0 + part * fp_cols + lane / lanes) as u8,
                        start: (lane % lanes) as u8,
                        dsub: p.dsub as u8,
                        nbits,
                        cb: ((m - m0) * sub_elems) as u16,
                        reg: (base + pass * p.m + m) as u16,
                    });
                }
            }
            m0 += subs;
        }
    }
    if open.is_some() {
        out.push(Instr::PreAb { ch });
    }
    for t in tokens.iter().filter(|t| t.store) {
        let bank = bank_sel(t.bank);
        for (&(p, cpt, base, _), (row, col)) in parts.iter().zip([t.k_at, t.v_at]) {
            let codes_per_col = cw * 8 / p.bits.bits() as usize;
            out.push(Instr::Act { ch, bank, row });
            for j in 0..cpt {
                out.push(Instr::Stc {
                    ch,
                    bank,
                    col: (col + j) as u8,
                    reg: (base + t.pass * p.m + j * codes_per_col) as u16,
                    bits: p.bits,
                });
            }
            out.push(Instr::Pre { ch, bank });
        }
    }
}
