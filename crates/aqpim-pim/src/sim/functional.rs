//! What each instruction computes, on the device's [`Memory`]: the data
//! semantics of every command, bank by bank. Timing never depends on any of
//! it, which is what makes the timing-only mode exact.

use half::f16;

use crate::isa::{argmin_centroids, CodeBits, Instr};
use crate::memory::Memory;

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

/// Code `i` of a column of `bits`-bit codes packed from the low bit of
/// byte 0 (`bits` 2, 4 or 8), unsigned.
#[inline]
fn code_bits_at(col: &[u8], bits: u32, i: usize) -> u32 {
    let bit = i * bits as usize;
    u32::from(col[bit / 8] >> (bit % 8)) & ((1 << bits) - 1)
}

/// An MX element: the `bits`-bit two's-complement code `q` times
/// `2^(e - 127)`.
#[inline]
fn dequantize_mx(q: u32, bits: u32, e: u8) -> f32 {
    let signed = (q << (32 - bits)) as i32 >> (32 - bits);
    signed as f32 * (f32::from(e) - 127.0).exp2()
}

impl Memory {
    /// RD: append column `col` of the open row to the read log.
    pub(crate) fn rd(&mut self, gb: usize, row: u32, col: usize) {
        let c = self.column_bytes;
        let data = self.row(gb, row)[col * c..(col + 1) * c].to_vec();
        self.read_log.extend_from_slice(&data);
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

    /// Runs the data semantics of one concrete instruction (loop offsets
    /// already applied) on its channel, whose banks have the rows `open`
    /// open; `bank` is the channel-local bank of a single-bank instruction
    /// and `host` the host data that WR and WRGB read. STC writes the
    /// column [`Memory::stc_column`] checked; BARRIER, LOOP and ENDLOOP
    /// do nothing.
    pub(crate) fn exec(&mut self, ins: &Instr, bank: usize, open: &[Option<u32>], host: &[u8]) {
        let n = self.column_bytes;
        let gb = |ch: u8| usize::from(ch) * self.banks_per_channel + bank;
        let row = open[bank].unwrap_or(0);
        match *ins {
            Instr::Rd { ch, col, .. } => self.rd(gb(ch), row, col.into()),
            Instr::Wr { ch, col, data, .. } => {
                let data = &host[data as usize..][..n];
                self.wr(gb(ch), row, col.into(), data);
            }
            Instr::Wrgb { ch, buf, data } => {
                let data = &host[data as usize..][..n];
                self.wrgb(ch.into(), buf.into(), data);
            }
            Instr::Mac { .. } => self.mac(ins, open),
            Instr::BinMac { .. } => self.bin_mac(ins, open),
            Instr::LutAcc { .. } => self.lut_acc(ins, open),
            Instr::HistAcc { .. } => self.hist_acc(ins, open),
            Instr::ArgMin { .. } => self.arg_min(ins, open),
            Instr::Clr { .. } => self.clr(ins),
            Instr::Red { .. } => self.red(ins),
            Instr::Rdd { .. } => self.rdd(ins),
            Instr::Mvd { .. } => self.mvd(ins),
            Instr::Mvb { .. } => self.mvb(ins),
            Instr::Sfm { .. } => self.sfm(ins),
            Instr::Ldp { ch, col, slot } => self.ldp(ch, open, col, slot),
            Instr::QMac { .. } => self.qmac(ins, open),
            _ => {}
        }
    }

    /// reg[reg + l] += x[l] * y[l], or reduced reg[reg] += sum_l x[l] * y[l]
    /// (FP16 inputs, FP32 products and sums, lanes in order); with
    /// `bcast` every lane reads buffer element `buf`.
    fn mac(&mut self, ins: &Instr, open: &[Option<u32>]) {
        let Instr::Mac {
            ch,
            col,
            buf,
            reg,
            reduce,
            bcast,
        } = *ins
        else {
            return;
        };
        let lanes = self.lanes;
        let (buf, reg, step) = (usize::from(buf), usize::from(reg), usize::from(!bcast));
        self.each_bank(ch, open, col, |x, y, _, r| {
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
        });
    }

    /// For lanes l ascending, reg[out + l % dsub] += reg[bins + l / dsub] * x[l]
    /// (FP32; x the column's FP16 values widened).
    fn bin_mac(&mut self, ins: &Instr, open: &[Option<u32>]) {
        let Instr::BinMac {
            ch,
            col,
            dsub,
            bins,
            out,
        } = *ins
        else {
            return;
        };
        let lanes = self.lanes;
        let (dsub, bins, out) = (usize::from(dsub), usize::from(bins), usize::from(out));
        self.each_bank(ch, open, col, |x, _, _, r| {
            for l in 0..lanes {
                let w = r[bins + l / dsub];
                r[out + l % dsub] += w * f16_at(x, l);
            }
        });
    }

    /// For code p of the column (p ascending),
    /// reg[reg + p / group] += buffer[table + (p % group) * 2^bits + code_p].
    fn lut_acc(&mut self, ins: &Instr, open: &[Option<u32>]) {
        let Instr::LutAcc {
            ch,
            col,
            bits,
            group,
            table,
            reg,
        } = *ins
        else {
            return;
        };
        let n = self.column_bytes * 8 / bits.bits() as usize;
        let (tlen, group) = (bits.table_len(), usize::from(group));
        let (table, reg) = (usize::from(table), usize::from(reg));
        self.each_bank(ch, open, col, |x, y, _, r| {
            for p in 0..n {
                r[reg + p / group] += f16_at(y, table + (p % group) * tlen + code_at(x, bits, p));
            }
        });
    }

    /// For code p of the column (p ascending),
    /// reg[reg + (p % group) * 2^bits + code_p] += buffer[weights + p / group].
    fn hist_acc(&mut self, ins: &Instr, open: &[Option<u32>]) {
        let Instr::HistAcc {
            ch,
            col,
            bits,
            group,
            weights,
            reg,
        } = *ins
        else {
            return;
        };
        let n = self.column_bytes * 8 / bits.bits() as usize;
        let (tlen, group) = (bits.table_len(), usize::from(group));
        let (weights, reg) = (usize::from(weights), usize::from(reg));
        self.each_bank(ch, open, col, |x, y, _, r| {
            for p in 0..n {
                r[reg + (p % group) * tlen + code_at(x, bits, p)] += f16_at(y, weights + p / group);
            }
        });
    }

    /// x = column lanes start..start + dsub; centroid j is
    /// buffer[cb + j * dsub ..][..dsub]; reg[reg] = argmin_j sum_i (x_i - c_ji)^2
    /// (FP32, i ascending; the lowest j wins ties; NaN distances never win).
    fn arg_min(&mut self, ins: &Instr, open: &[Option<u32>]) {
        let Instr::ArgMin {
            ch,
            col,
            start,
            dsub,
            nbits,
            cb,
            reg,
        } = *ins
        else {
            return;
        };
        let (start, dsub, cb) = (usize::from(start), usize::from(dsub), usize::from(cb));
        let (ksub, reg) = (argmin_centroids(nbits) as usize, usize::from(reg));
        self.each_bank(ch, open, col, |x, y, _, r| {
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
        });
    }

    /// Every bank's reg[off..off + len] = 0, or with `die` the
    /// channel's die[off..off + len] = 0.
    fn clr(&mut self, ins: &Instr) {
        let Instr::Clr { ch, off, len, die } = *ins else {
            return;
        };
        let banks = self.banks_per_channel;
        let (ch, off, len) = (usize::from(ch), usize::from(off), usize::from(len));
        if die {
            if let Some(d) = self.die[ch].as_deref_mut() {
                d[off..off + len].fill(0.0);
            }
            return;
        }
        for gb in ch * banks..(ch + 1) * banks {
            if let Some(r) = self.regs[gb].as_deref_mut() {
                r[off..off + len].fill(0.0);
            }
        }
    }

    /// die[dst + i] = die[src + i] + die[src + len + i] + ... over the
    /// channel's banks in order (FP32, computed before any element is written).
    fn red(&mut self, ins: &Instr) {
        let Instr::Red { ch, src, len, dst } = *ins else {
            return;
        };
        let banks = self.banks_per_channel;
        let (src, len, dst) = (usize::from(src), usize::from(len), usize::from(dst));
        let Some(d) = self.die[usize::from(ch)].as_deref_mut() else {
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

    /// Append die[die..die + len] to the read log as FP32 little-endian bytes.
    fn rdd(&mut self, ins: &Instr) {
        let Instr::Rdd { ch, die, len } = *ins else {
            return;
        };
        let (die, len) = (usize::from(die), usize::from(len));
        match self.die[usize::from(ch)].as_deref() {
            Some(d) => {
                for v in &d[die..die + len] {
                    self.read_log.extend_from_slice(&v.to_le_bytes());
                }
            }
            None => self.read_log.extend(std::iter::repeat_n(0u8, 4 * len)),
        }
    }

    /// die[die + b * len + i] = reg_b[reg + i] for every bank b of the channel.
    fn mvd(&mut self, ins: &Instr) {
        let Instr::Mvd { ch, reg, len, die } = *ins else {
            return;
        };
        let banks = self.banks_per_channel;
        let (ch, reg, len, die) = (
            usize::from(ch),
            usize::from(reg),
            usize::from(len),
            usize::from(die),
        );
        for b in 0..banks {
            let src: Vec<f32> = match &self.regs[ch * banks + b] {
                Some(r) => r[reg..reg + len].to_vec(),
                None => vec![0.0; len],
            };
            self.die_mut(ch)[die + b * len..die + (b + 1) * len].copy_from_slice(&src);
        }
    }

    /// buf_b[buf + i] = f16(die[die + b * len + i]) (or die[die + i] broadcast).
    fn mvb(&mut self, ins: &Instr) {
        let Instr::Mvb {
            ch,
            die,
            len,
            buf,
            broadcast,
        } = *ins
        else {
            return;
        };
        let banks = self.banks_per_channel;
        let (ch, die, len, buf) = (
            usize::from(ch),
            usize::from(die),
            usize::from(len),
            usize::from(buf),
        );
        let src = self.die(ch);
        for b in 0..banks {
            let base = if broadcast { die } else { die + b * len };
            let dst = self.buffer_mut(ch * banks + b);
            for i in 0..len {
                let bits = f16::from_f32(src[base + i]).to_bits().to_le_bytes();
                dst[2 * (buf + i)..2 * (buf + i) + 2].copy_from_slice(&bits);
            }
        }
    }

    /// In place over die[die..die + len]: y_i = x_i * scale, m = max_i y_i,
    /// e_i = exp(y_i - m), x_i = e_i / sum_i e_i (FP32, i ascending).
    /// With `stats`, also die[die + len] = m and die[die + len + 1] = sum_i e_i.
    fn sfm(&mut self, ins: &Instr) {
        let Instr::Sfm {
            ch,
            die,
            len,
            scale,
            stats,
        } = *ins
        else {
            return;
        };
        let (die, len, scale) = (usize::from(die), usize::from(len), scale.to_f32());
        let all = self.die_mut(usize::from(ch));
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

    /// LDP: every bank's latch bytes `slot x column_bytes ..` = column `col`
    /// of its open row.
    fn ldp(&mut self, ch: u8, open: &[Option<u32>], col: u8, slot: u8) {
        let (c, n) = (self.column_bytes, self.latch_bytes);
        let (col, at) = (usize::from(col) * c, usize::from(slot) * c);
        for (b, row) in open.iter().enumerate() {
            let gb = usize::from(ch) * self.banks_per_channel + b;
            let src = self.row(gb, row.unwrap_or(0))[col..col + c].to_vec();
            let latch = self.latches[gb].get_or_insert_with(|| vec![0; n].into_boxed_slice());
            latch[at..at + c].copy_from_slice(&src);
        }
    }

    /// QMAC on every bank of the channel: dequantize the column's codes with
    /// the latch's parameters, then a dot product with the buffer (`reduce`)
    /// or the buffer element times each code into its own register (FP32,
    /// codes ascending). See [`Instr::QMac`].
    fn qmac(&mut self, ins: &Instr, open: &[Option<u32>]) {
        let Instr::QMac {
            ch,
            col,
            buf,
            reg,
            bits,
            group,
            pslot,
            reduce,
            mx,
        } = *ins
        else {
            return;
        };
        let n = self.column_bytes * 8 / usize::from(bits);
        let (buf, reg, group, pslot) = (
            usize::from(buf),
            usize::from(reg),
            usize::from(group),
            usize::from(pslot),
        );
        let bits = u32::from(bits);
        let mut x = vec![0f32; n];
        self.each_bank(ch, open, col, |codes, y, latch, r| {
            for (i, xi) in x.iter_mut().enumerate() {
                let q = code_bits_at(codes, bits, i);
                let p = pslot + i / group;
                *xi = if mx {
                    dequantize_mx(q, bits, latch[p])
                } else {
                    f16_at(latch, 2 * p) + q as f32 * f16_at(latch, 2 * p + 1)
                };
            }
            if reduce {
                let mut acc = 0f32;
                for (i, xi) in x.iter().enumerate() {
                    acc += f16_at(y, buf + i) * xi;
                }
                r[reg] += acc;
            } else {
                let w = f16_at(y, buf);
                for (i, xi) in x.iter().enumerate() {
                    r[reg + i] += w * xi;
                }
            }
        });
    }

    /// Runs `f(column, buffer, latch, registers)` on every bank of channel
    /// `ch` (banks ascending), with `column` the open row's column `col`.
    #[inline]
    fn each_bank(
        &mut self,
        ch: u8,
        open: &[Option<u32>],
        col: u8,
        mut f: impl FnMut(&[u8], &[u8], &[u8], &mut [f32]),
    ) {
        let ch = usize::from(ch);
        for (b, row) in open.iter().enumerate() {
            let gb = ch * self.banks_per_channel + b;
            let (x, y, latch, r) = self.operands(gb, row.unwrap_or(0), col.into());
            f(x, y, latch, r);
        }
    }
}
