//! Functional state and semantics: bank arrays (rows allocated on first
//! write, so a 16 GB stack costs only what a program touches), per-bank
//! buffers and registers, per-channel buffer dies, and what each command
//! computes. Timing never depends on any of it, which is what makes the
//! timing-only mode exact.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use half::f16;

use crate::isa::CodeBits;
use crate::resolve::Device;

/// A fast hasher for the `u64` row keys (a multiply-xorshift; the keys are
/// not adversarial).
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        let h = (v ^ (v >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
}

type RowMap = HashMap<u64, Box<[u8]>, BuildHasherDefault<KeyHasher>>;

/// Functional state of a device.
#[derive(Debug, Clone)]
pub(crate) struct Functional {
    column_bytes: usize,
    row_bytes: usize,
    lanes: usize,
    buffer_bytes: usize,
    registers: usize,
    die_elements: usize,
    banks_per_channel: usize,
    zeros: Vec<u8>,
    /// Rows that were written: key `global_bank << 24 | row`, `row_bytes` each.
    rows: RowMap,
    /// Per global bank: buffer bytes (allocated on first write).
    buffers: Vec<Option<Box<[u8]>>>,
    /// Per global bank: FP32 registers (allocated on first write).
    regs: Vec<Option<Box<[f32]>>>,
    /// Per channel: FP32 buffer-die elements (allocated on first write).
    die: Vec<Option<Box<[f32]>>>,
    /// Bytes returned by RD, in issue order.
    pub(crate) read_log: Vec<u8>,
}

/// A shared zero page as large as any buffer (at most 128 KiB, checked by resolve()).
static ZEROS: [u8; 131072] = [0; 131072];

/// FP16 to FP32 for every bit pattern, built once (exact: every FP16 is an FP32).
fn f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Box<[f32]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|b| f16::from_bits(b).to_f32()).collect())
}

#[inline]
fn f16_at(bytes: &[u8], elem: usize) -> f32 {
    f16_table()[usize::from(u16::from_le_bytes([bytes[2 * elem], bytes[2 * elem + 1]]))]
}

/// Code `p` of a column of `bits`-bit codes (4-bit: low nibble first).
#[inline]
fn code_at(col: &[u8], bits: CodeBits, p: usize) -> usize {
    match bits {
        CodeBits::Eight => col[p] as usize,
        CodeBits::Four => ((col[p / 2] >> (4 * (p % 2))) & 0xF) as usize,
    }
}

impl Functional {
    pub(crate) fn new(device: &Device) -> Self {
        let o = &device.org;
        let banks = o.channels * o.banks_per_channel;
        Functional {
            column_bytes: o.column_bytes,
            row_bytes: o.column_bytes * o.columns,
            lanes: device.pim.lanes,
            buffer_bytes: device.pim.buffer_bytes,
            registers: device.pim.registers,
            die_elements: device.pim.buffer_die_elements,
            banks_per_channel: o.banks_per_channel,
            zeros: vec![0; o.column_bytes * o.columns],
            rows: RowMap::default(),
            buffers: vec![None; banks],
            regs: vec![None; banks],
            die: vec![None; o.channels],
            read_log: Vec::new(),
        }
    }

    fn key(gb: usize, row: u32) -> u64 {
        ((gb as u64) << 24) | u64::from(row)
    }

    /// The whole row (zeros if never written).
    pub(crate) fn row(&self, gb: usize, row: u32) -> &[u8] {
        self.rows
            .get(&Self::key(gb, row))
            .map_or(&self.zeros[..], |r| &r[..])
    }

    pub(crate) fn row_mut(&mut self, gb: usize, row: u32) -> &mut [u8] {
        let n = self.row_bytes;
        self.rows
            .entry(Self::key(gb, row))
            .or_insert_with(|| vec![0; n].into_boxed_slice())
    }

    pub(crate) fn buffer(&self, gb: usize) -> &[u8] {
        self.buffers[gb].as_deref().unwrap_or(self.zeros_buffer())
    }

    fn zeros_buffer(&self) -> &'static [u8] {
        &ZEROS[..self.buffer_bytes]
    }

    pub(crate) fn buffer_mut(&mut self, gb: usize) -> &mut [u8] {
        let n = self.buffer_bytes;
        self.buffers[gb].get_or_insert_with(|| vec![0; n].into_boxed_slice())
    }

    pub(crate) fn registers(&self, gb: usize) -> Vec<f32> {
        self.regs[gb]
            .as_deref()
            .map_or_else(|| vec![0.0; self.registers], <[f32]>::to_vec)
    }

    pub(crate) fn regs_mut(&mut self, gb: usize) -> &mut [f32] {
        let n = self.registers;
        self.regs[gb].get_or_insert_with(|| vec![0.0; n].into_boxed_slice())
    }

    pub(crate) fn die(&self, ch: usize) -> Vec<f32> {
        self.die[ch]
            .as_deref()
            .map_or_else(|| vec![0.0; self.die_elements], <[f32]>::to_vec)
    }

    pub(crate) fn die_mut(&mut self, ch: usize) -> &mut [f32] {
        let n = self.die_elements;
        self.die[ch].get_or_insert_with(|| vec![0.0; n].into_boxed_slice())
    }

    // ---- commands ------------------------------------------------------

    /// RD: append column `col` of the open row to the read log.
    pub(crate) fn rd(&mut self, gb: usize, row: u32, col: usize) {
        let c = self.column_bytes;
        let start = col * c;
        let data = self
            .rows
            .get(&Self::key(gb, row))
            .map(|r| r[start..start + c].to_vec());
        match data {
            Some(d) => self.read_log.extend_from_slice(&d),
            None => self.read_log.extend(std::iter::repeat_n(0u8, c)),
        }
    }

    /// WR: column `col` of the open row = `data` (one column).
    pub(crate) fn wr(&mut self, gb: usize, row: u32, col: usize, data: &[u8]) {
        let c = self.column_bytes;
        self.row_mut(gb, row)[col * c..(col + 1) * c].copy_from_slice(data);
    }

    /// WRGB: every bank's buffer bytes `2 * buf ..` = `data` (one column).
    pub(crate) fn wrgb(&mut self, ch: usize, buf: usize, data: &[u8]) {
        for b in 0..self.banks_per_channel {
            let gb = ch * self.banks_per_channel + b;
            self.buffer_mut(gb)[2 * buf..2 * buf + data.len()].copy_from_slice(data);
        }
    }

    /// MAC: `reg[reg + l] += x[l] * y[l]` or, reduced, `reg[reg] += sum_l x[l] * y[l]`
    /// (FP16 inputs, FP32 products and sums, lanes in order).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mac(
        &mut self,
        ch: usize,
        open: &[Option<u32>],
        col: usize,
        buf: usize,
        reg: usize,
        reduce: bool,
        bcast: bool,
    ) {
        let lanes = self.lanes;
        let c = self.column_bytes;
        // With `bcast`, every lane reads buffer element `buf`.
        let step = usize::from(!bcast);
        for (b, row) in open.iter().enumerate() {
            let gb = ch * self.banks_per_channel + b;
            let (x, y, r) = self.operands(gb, row.unwrap_or(0), col);
            let x = &x[..c];
            if reduce {
                let mut sum = 0f32;
                for l in 0..lanes {
                    sum += f16_at(x, l) * f16_at(y, buf + l * step);
                }
                r[reg] += sum;
            } else {
                for l in 0..lanes {
                    r[reg + l] += f16_at(x, l) * f16_at(y, buf + l * step);
                }
            }
        }
    }

    /// BINMAC: for lanes `l` ascending, `reg[out + l % dsub] += reg[bins + l / dsub] * x[l]`
    /// (FP32; `x` the column's FP16 values widened).
    pub(crate) fn binmac(
        &mut self,
        ch: usize,
        open: &[Option<u32>],
        col: usize,
        dsub: usize,
        bins: usize,
        out: usize,
    ) {
        let lanes = self.lanes;
        for (b, row) in open.iter().enumerate() {
            let gb = ch * self.banks_per_channel + b;
            let (x, _, r) = self.operands(gb, row.unwrap_or(0), col);
            for l in 0..lanes {
                let w = r[bins + l / dsub];
                r[out + l % dsub] += w * f16_at(x, l);
            }
        }
    }

    /// CLR: every bank's `reg[off..off + len] = 0`, or with `die` the
    /// channel's `die[off..off + len] = 0`.
    pub(crate) fn clr(&mut self, ch: usize, off: usize, len: usize, die: bool) {
        if die {
            if let Some(d) = self.die[ch].as_deref_mut() {
                d[off..off + len].fill(0.0);
            }
            return;
        }
        for b in 0..self.banks_per_channel {
            let gb = ch * self.banks_per_channel + b;
            if let Some(r) = self.regs[gb].as_deref_mut() {
                r[off..off + len].fill(0.0);
            }
        }
    }

    /// RED: `die[dst + i] = die[src + i] + die[src + len + i] + ...` over the
    /// channel's banks in order (FP32, computed before any element is written).
    pub(crate) fn red(&mut self, ch: usize, src: usize, len: usize, dst: usize) {
        let banks = self.banks_per_channel;
        let Some(d) = self.die[ch].as_deref_mut() else {
            return; // all zero: the sums are zero too
        };
        let sums: Vec<f32> = (0..len)
            .map(|i| {
                let mut acc = d[src + i];
                for b in 1..banks {
                    acc += d[src + b * len + i];
                }
                acc
            })
            .collect();
        d[dst..dst + len].copy_from_slice(&sums);
    }

    /// RDD: append `die[die..die + len]` to the read log as FP32 little-endian bytes.
    pub(crate) fn rdd(&mut self, ch: usize, die: usize, len: usize) {
        match self.die[ch].as_deref() {
            Some(d) => {
                for v in &d[die..die + len] {
                    self.read_log.extend_from_slice(&v.to_le_bytes());
                }
            }
            None => self.read_log.extend(std::iter::repeat_n(0u8, 4 * len)),
        }
    }

    /// STC, step 1: the column of codes that registers `reg..` of bank `gb`
    /// hold, or the first register that is not a `bits`-bit code (its index
    /// and value).
    pub(crate) fn stc_column(
        &self,
        gb: usize,
        reg: usize,
        bits: CodeBits,
    ) -> Result<Vec<u8>, (usize, f32)> {
        let c = self.column_bytes;
        let n = c * 8 / bits.bits() as usize;
        let limit = bits.table_len() as f32;
        let mut col = vec![0u8; c];
        let Some(r) = self.regs[gb].as_deref() else {
            return Ok(col); // all zero: code 0 everywhere
        };
        for p in 0..n {
            let v = r[reg + p];
            // NaN fails every comparison, so it is rejected here too.
            if !(v >= 0.0 && v < limit && v.fract() == 0.0) {
                return Err((reg + p, v));
            }
            let code = v as u8;
            match bits {
                CodeBits::Eight => col[p] = code,
                CodeBits::Four => col[p / 2] |= code << (4 * (p % 2)),
            }
        }
        Ok(col)
    }

    /// The open row's column `col`, the bank's buffer and its registers, borrowed together.
    #[inline]
    fn operands(&mut self, gb: usize, row: u32, col: usize) -> (&[u8], &[u8], &mut [f32]) {
        let c = self.column_bytes;
        let n = self.registers;
        let x = match self.rows.get(&Self::key(gb, row)) {
            Some(r) => &r[col * c..(col + 1) * c],
            None => &self.zeros[..c],
        };
        let y: &[u8] = match &self.buffers[gb] {
            Some(b) => b,
            None => &ZEROS[..self.buffer_bytes],
        };
        let r = self.regs[gb].get_or_insert_with(|| vec![0.0; n].into_boxed_slice());
        (x, y, r)
    }

    /// LUTACC: for code `p` of the column (p ascending),
    /// `reg[reg + p / group] += buffer[table + (p % group) * 2^bits + code_p]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn lutacc(
        &mut self,
        ch: usize,
        open: &[Option<u32>],
        col: usize,
        bits: CodeBits,
        group: usize,
        table: usize,
        reg: usize,
    ) {
        let n = self.column_bytes * 8 / bits.bits() as usize;
        let tlen = bits.table_len();
        for (b, row) in open.iter().enumerate() {
            let gb = ch * self.banks_per_channel + b;
            let (x, y, r) = self.operands(gb, row.unwrap_or(0), col);
            for p in 0..n {
                r[reg + p / group] += f16_at(y, table + (p % group) * tlen + code_at(x, bits, p));
            }
        }
    }

    /// HISTACC: for code `p` of the column (p ascending),
    /// `reg[reg + (p % group) * 2^bits + code_p] += buffer[weights + p / group]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn histacc(
        &mut self,
        ch: usize,
        open: &[Option<u32>],
        col: usize,
        bits: CodeBits,
        group: usize,
        weights: usize,
        reg: usize,
    ) {
        let n = self.column_bytes * 8 / bits.bits() as usize;
        let tlen = bits.table_len();
        for (b, row) in open.iter().enumerate() {
            let gb = ch * self.banks_per_channel + b;
            let (x, y, r) = self.operands(gb, row.unwrap_or(0), col);
            for p in 0..n {
                r[reg + (p % group) * tlen + code_at(x, bits, p)] += f16_at(y, weights + p / group);
            }
        }
    }

    /// ARGMIN: `x = column lanes start..start + dsub`; centroid `j` is
    /// `buffer[cb + j * dsub ..][..dsub]`; `reg[reg] = argmin_j sum_i (x_i - c_ji)^2`
    /// (FP32, i ascending; the lowest `j` wins ties; NaN distances never win).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn argmin(
        &mut self,
        ch: usize,
        open: &[Option<u32>],
        col: usize,
        start: usize,
        dsub: usize,
        ksub: usize,
        cb: usize,
        reg: usize,
    ) {
        for (b, row) in open.iter().enumerate() {
            let gb = ch * self.banks_per_channel + b;
            let (x, y, r) = self.operands(gb, row.unwrap_or(0), col);
            let mut xs = [0f32; 64];
            for (i, v) in xs.iter_mut().enumerate().take(dsub) {
                *v = f16_at(x, start + i);
            }
            let mut best = 0usize;
            let mut best_d = f32::INFINITY;
            for j in 0..ksub {
                let mut d = 0f32;
                for (i, xv) in xs[..dsub].iter().enumerate() {
                    let t = xv - f16_at(y, cb + j * dsub + i);
                    d += t * t;
                }
                if d < best_d {
                    best_d = d;
                    best = j;
                }
            }
            r[reg] = best as f32;
        }
    }

    /// MVD: `die[die + b * len + i] = reg_b[reg + i]` for every bank `b` of the channel.
    pub(crate) fn mvd(&mut self, ch: usize, reg: usize, len: usize, die: usize) {
        for b in 0..self.banks_per_channel {
            let gb = ch * self.banks_per_channel + b;
            let src: Vec<f32> = match &self.regs[gb] {
                Some(r) => r[reg..reg + len].to_vec(),
                None => vec![0.0; len],
            };
            self.die_mut(ch)[die + b * len..die + (b + 1) * len].copy_from_slice(&src);
        }
    }

    /// MVB: `buf_b[buf + i] = f16(die[die + b * len + i])` (or `die[die + i]` broadcast).
    pub(crate) fn mvb(&mut self, ch: usize, die: usize, len: usize, buf: usize, broadcast: bool) {
        let src = self.die(ch);
        for b in 0..self.banks_per_channel {
            let gb = ch * self.banks_per_channel + b;
            let base = if broadcast { die } else { die + b * len };
            let dst = self.buffer_mut(gb);
            for i in 0..len {
                let bits = f16::from_f32(src[base + i]).to_bits().to_le_bytes();
                dst[2 * (buf + i)..2 * (buf + i) + 2].copy_from_slice(&bits);
            }
        }
    }

    /// SFM: in place over `die[die..die + len]`: `y_i = x_i * scale`,
    /// `m = max_i y_i`, `e_i = exp(y_i - m)`, `x_i = e_i / sum_i e_i` (FP32, i ascending).
    /// With `stats`, also `die[die + len] = m` and `die[die + len + 1] = sum_i e_i`.
    pub(crate) fn sfm(&mut self, ch: usize, die: usize, len: usize, scale: f32, stats: bool) {
        let all = self.die_mut(ch);
        let x = &mut all[die..die + len];
        let m = x
            .iter()
            .map(|v| v * scale)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for v in x.iter_mut() {
            *v = (*v * scale - m).exp();
            sum += *v;
        }
        for v in x.iter_mut() {
            *v /= sum;
        }
        if stats {
            all[die + len] = m;
            all[die + len + 1] = sum;
        }
    }
}
