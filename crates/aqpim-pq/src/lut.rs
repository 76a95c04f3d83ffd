//! Lookup tables and asymmetric distance computation (ADC) on codes.

use crate::error::{PqError, Result};

/// A query's lookup table: `M * ksub` values, row-major (`T[m][j]` at `m * ksub + j`).
///
/// Scoring a code `c` is `sum_m T[m][c[m]]`: the inner product (or squared
/// distance) between the query and the decoded vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Lut {
    num_subspaces: usize,
    ksub: usize,
    values: Vec<f32>,
}

impl Lut {
    /// Wraps `num_subspaces * ksub` values (`ksub` a power of two up to 256).
    pub fn new(num_subspaces: usize, ksub: usize, values: Vec<f32>) -> Result<Self> {
        if !(ksub.is_power_of_two() && (2..=256).contains(&ksub)) {
            return Err(PqError::OutOfRange { name: "ksub", value: ksub as u64, allowed: "a power of two in 2..=256" });
        }
        if values.len() != num_subspaces * ksub {
            return Err(PqError::shape("lookup table", num_subspaces * ksub, values.len()));
        }
        Ok(Lut { num_subspaces, ksub, values })
    }

    /// Number of subspaces (M).
    pub fn num_subspaces(&self) -> usize {
        self.num_subspaces
    }
    /// Entries per subspace (ksub).
    pub fn ksub(&self) -> usize {
        self.ksub
    }
    /// The `M * ksub` table values, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Score of one code row (`M` codes), summed in subspace order. Codes
    /// `>= ksub` score NaN, so invalid codes never pass for valid scores.
    pub fn score(&self, codes: &[u8]) -> f32 {
        let mut acc = 0.0f32;
        for (row, &c) in self.values.chunks_exact(self.ksub).zip(codes) {
            acc += row.get(usize::from(c)).copied().unwrap_or(f32::NAN);
        }
        acc
    }

    /// Scores `n` code rows stored one byte per code (`codes`: `n * M` bytes,
    /// row-major) into `out` (`n` values).
    pub fn scan_u8(&self, codes: &[u8], out: &mut [f32]) -> Result<()> {
        let m = self.num_subspaces;
        if m == 0 || codes.len() != out.len() * m {
            return Err(PqError::shape("scan_u8", format!("{} codes for {} outputs", out.len() * m, out.len()), codes.len()));
        }
        if self.ksub == 256 {
            let rows: Vec<&[f32; 256]> = self
                .values
                .chunks_exact(256)
                .map(|r| r.try_into().expect("rows of 256"))
                .collect();
            scan_u8_full(&rows, codes, out);
        } else {
            for (row, o) in codes.chunks_exact(m).zip(out.iter_mut()) {
                *o = self.score(row);
            }
        }
        Ok(())
    }

    /// Scores `n` rows of packed 4-bit codes (`n * ceil(M / 2)` bytes, see
    /// [`crate::pack_4bit`]) into `out`. Needs `ksub <= 16`.
    pub fn scan_packed4(&self, packed: &[u8], out: &mut [f32]) -> Result<()> {
        let rows = self.rows16()?;
        let row_bytes = crate::packed_row_bytes(self.num_subspaces);
        if packed.len() != out.len() * row_bytes {
            return Err(PqError::shape("scan_packed4", out.len() * row_bytes, packed.len()));
        }
        let m = self.num_subspaces;
        for (codes, o) in packed.chunks_exact(row_bytes).zip(out.iter_mut()) {
            let mut acc = 0.0f32;
            for (i, &b) in codes.iter().enumerate() {
                acc += rows[2 * i][usize::from(b & 0x0f)];
                if 2 * i + 1 < m {
                    acc += rows[2 * i + 1][usize::from(b >> 4)];
                }
            }
            *o = acc;
        }
        Ok(())
    }

    /// The table with each subspace padded to 16 entries (padding is NaN).
    pub(crate) fn rows16(&self) -> Result<Vec<[f32; 16]>> {
        if self.ksub > 16 {
            return Err(PqError::OutOfRange { name: "ksub", value: self.ksub as u64, allowed: "<= 16 for 4-bit codes" });
        }
        Ok(self
            .values
            .chunks_exact(self.ksub)
            .map(|r| {
                let mut row = [f32::NAN; 16];
                row[..r.len()].copy_from_slice(r);
                row
            })
            .collect())
    }
}

/// 8-bit scan: four independent accumulators per row break the add chain, and
/// `u8` codes index `[f32; 256]` rows without bounds checks.
fn scan_u8_full(rows: &[&[f32; 256]], codes: &[u8], out: &mut [f32]) {
    let m = rows.len();
    let m4 = m / 4 * 4;
    for (code, o) in codes.chunks_exact(m).zip(out.iter_mut()) {
        let mut a = [0.0f32; 4];
        for ((r, c), _) in rows[..m4].chunks_exact(4).zip(code[..m4].chunks_exact(4)).zip(0..) {
            a[0] += r[0][usize::from(c[0])];
            a[1] += r[1][usize::from(c[1])];
            a[2] += r[2][usize::from(c[2])];
            a[3] += r[3][usize::from(c[3])];
        }
        for (r, &c) in rows[m4..].iter().zip(&code[m4..]) {
            a[0] += r[usize::from(c)];
        }
        *o = (a[0] + a[1]) + (a[2] + a[3]);
    }
}
