//! Scalar-quantized attention lowered to dequantize-and-MAC programs (a
//! Pimba-style design): a slice's program, row by row, from the geometry of
//! [`super::scalar_geom`] (where codes and group parameters lie, which
//! `LDP`s and `QMAC`s each row issues). The layout and its rationale are in
//! `docs/design/pim-lowering.md` ("Scalar codes").

use aqpim_pim::{Device, Instr};

use crate::pim::layout::Geom;
use crate::pim::program::{reduce_out, softmax, write_heads, Out, Phase, Rows};
use crate::pim::scalar_geom::{Role, RowOp, ScalarPart};

/// The instructions of one part's rows, from row `base`, for a pass of
/// `heads` query heads: each row's `LDP`s once, each of its `QMAC`s once
/// per head, head `i`'s operands `i` times `stride` (buffer, registers)
/// further on.
fn part_rows(
    out: &mut Out,
    device: &Device,
    p: &ScalarPart,
    (n_b, ch, base): (usize, u8, u32),
    heads: usize,
    stride: (usize, usize),
) {
    let total = p.columns(n_b);
    let (bits, mx) = (
        (device.org.column_bytes * 8 / p.n) as u8,
        p.entry_bytes == 1,
    );
    let reduce = p.role == Role::KeysByToken;
    for r in 0..p.rows(n_b) {
        out.push(Instr::ActAb {
            ch,
            row: base + r as u32,
        });
        for op in p.row_ops(device, r, total) {
            match op {
                RowOp::Ldp { col, slot } => out.push(Instr::Ldp {
                    ch,
                    col: col as u8,
                    slot: slot as u8,
                }),
                RowOp::QMac {
                    col,
                    buf,
                    reg,
                    pslot,
                } => {
                    for i in 0..heads {
                        out.push(Instr::QMac {
                            ch,
                            col: col as u8,
                            buf: (buf + i * stride.0) as u16,
                            reg: (reg + i * stride.1) as u16,
                            bits,
                            group: p.qmac_group() as u8,
                            pslot: pslot as u8,
                            reduce,
                            mx,
                        })
                    }
                }
            }
        }
        out.push(Instr::PreAb { ch });
    }
}

/// Scalar-code attention for a pass of query heads whose scaled FP16
/// queries sit in host data at bytes `heads`: `WRGB` the queries, `QMAC`
/// scores over the key rows (with `LDP` of their parameters), softmax on
/// the buffer die, `QMAC bcast` of each value column by its token's weight,
/// cross-bank reduction. Each row is activated and its parameters latched
/// once for the pass, each code column read by one `QMAC` per head: head
/// `i`'s query at buffer `i d`, its scores at registers `i n_b`, its weights
/// at buffer `i n_b`, its outputs at registers `i d`.
pub(crate) fn scalar_slice(
    out: &mut Out,
    device: &Device,
    g: &Geom,
    ch: u8,
    rows: Rows,
    heads: &[u32],
) {
    let Some(sc) = g.sc else {
        unreachable!("scalar_slice on a scalar geometry")
    };
    let (h, n_b, d) = (heads.len(), g.n_b, g.d);
    out.phase(Phase::Broadcast);
    let (lanes, cw) = (device.pim.lanes, device.org.column_bytes);
    write_heads(out, ch, d, heads, lanes, cw);
    out.phase(Phase::Scoring);
    out.push(Instr::Clr {
        ch,
        off: 0,
        len: (h * n_b) as u16,
        die: false,
    });
    part_rows(out, device, &sc.k, (n_b, ch, rows.k), h, (d, n_b));
    out.phase(Phase::Softmax);
    softmax(out, g, ch, h);
    out.phase(Phase::Values);
    out.push(Instr::Clr {
        ch,
        off: 0,
        len: (h * d) as u16,
        die: false,
    });
    part_rows(out, device, &sc.v, (n_b, ch, rows.v), h, (n_b, d));
    out.phase(Phase::Reduction);
    reduce_out(out, g, ch, 0, h);
}
