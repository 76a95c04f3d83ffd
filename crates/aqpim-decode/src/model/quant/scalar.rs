//! Portable dot-product kernels of rows of blocks with an f32 vector: the
//! fallback on every CPU, and the F32/F16 path of the x86 kernels (inlined
//! there, so compiled with their features). Accumulators are arrays of lanes
//! so that the compiler can vectorize without reassociating a scalar sum.

use super::{f16_at, GgmlType, QK};

/// `row . x` for one row of blocks of `ty`; `xsum` holds the sums of `x`
/// per block of [`QK`] (used by the 4-bit types).
#[inline(always)]
pub(super) fn dot_row(ty: GgmlType, row: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
    match ty {
        GgmlType::F32 => {
            let mut acc = [0f32; 16];
            let mut tail = 0f32;
            let mut xc = x.chunks_exact(16);
            let mut rc = row.chunks_exact(64);
            for (xs, rs) in (&mut xc).zip(&mut rc) {
                for j in 0..16 {
                    let w = f32::from_le_bytes([
                        rs[4 * j],
                        rs[4 * j + 1],
                        rs[4 * j + 2],
                        rs[4 * j + 3],
                    ]);
                    acc[j] += w * xs[j];
                }
            }
            for (xv, rs) in xc.remainder().iter().zip(rc.remainder().chunks_exact(4)) {
                tail += f32::from_le_bytes([rs[0], rs[1], rs[2], rs[3]]) * xv;
            }
            acc.iter().sum::<f32>() + tail
        }
        GgmlType::F16 => {
            let mut acc = 0f32;
            for (xv, rs) in x.iter().zip(row.chunks_exact(2)) {
                acc += f16_at(rs, 0) * xv;
            }
            acc
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (off, bb) = if ty == GgmlType::Q4_0 {
                (2, 18)
            } else {
                (4, 20)
            };
            let mut acc = [0f32; 16];
            let mut msum = 0f32;
            for ((b, xb), &xs) in row.chunks_exact(bb).zip(x.chunks_exact(QK)).zip(xsum) {
                let d = f16_at(b, 0);
                // Q4_0 stores (q - 8) d: an offset of -8 d per element.
                let m = if ty == GgmlType::Q4_0 {
                    -8.0 * d
                } else {
                    f16_at(b, 2)
                };
                let qs: &[u8; 16] = b[off..off + 16].try_into().unwrap_or(&[0; 16]);
                let (xlo, xhi) = xb.split_at(16);
                let mut s = [0f32; 16];
                for j in 0..16 {
                    s[j] = (qs[j] & 15) as f32 * xlo[j] + (qs[j] >> 4) as f32 * xhi[j];
                }
                for j in 0..16 {
                    acc[j] += d * s[j];
                }
                msum += m * xs;
            }
            acc.iter().sum::<f32>() + msum
        }
        GgmlType::Q8_0 => {
            let mut acc = [0f32; QK];
            for (b, xb) in row.chunks_exact(34).zip(x.chunks_exact(QK)) {
                let d = f16_at(b, 0);
                let qs = &b[2..34];
                for j in 0..QK {
                    acc[j] += d * ((qs[j] as i8) as f32 * xb[j]);
                }
            }
            acc.iter().sum::<f32>()
        }
    }
}

/// `y[i] = row_i . x` for the rows packed in `rows` (`row_bytes` each).
#[inline(always)]
pub(super) fn dot_rows(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    x: &[f32],
    xsum: &[f32],
    y: &mut [f32],
) {
    for (yi, row) in y.iter_mut().zip(rows.chunks_exact(row_bytes)) {
        *yi = dot_row(ty, row, x, xsum);
    }
}
