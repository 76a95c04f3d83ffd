//! The PIM instruction set: the [`Instr`] enum, programs, and their checks.
//!
//! Every instruction is one 64-bit word except `LOOP`, which takes two
//! ([`encode`]); an instruction's `Display` is its canonical text, which the
//! crate's assembler (`asm.rs`) reads back. Both, with the field checks, are
//! derived from the instruction table ([`table`]). `docs/pim.md` is the
//! reference for the bit layout and each instruction's semantics.

mod encode;
pub(crate) mod table;

pub use encode::is_binary;
pub use table::MAX_LOOP_COUNT;

use std::fmt;

use half::f16;
use serde::{Deserialize, Serialize};

use self::table::{bank_parts, stride_parts, Kind, BANK_PARTS, STRIDE_NAMES};
use crate::error::{PimError, Result};

/// Maximum nesting depth of `LOOP` (a design choice of this ISA: four levels
/// cover heads x tokens x sub-vectors x columns).
pub const MAX_LOOP_DEPTH: usize = 4;

/// One bank of a channel: `(pseudo-channel, SID, bank group, bank)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct BankSel {
    /// Pseudo-channel (2 bits).
    pub pc: u8,
    /// Stack ID (2 bits).
    pub sid: u8,
    /// Bank group (4 bits).
    pub bg: u8,
    /// Bank within the group (4 bits).
    pub bank: u8,
}

/// Width of a code in a code column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CodeBits {
    /// One code per byte.
    Eight,
    /// Two codes per byte, low nibble first.
    Four,
}

impl CodeBits {
    /// Bits per code (4 or 8).
    pub fn bits(self) -> u32 {
        match self {
            CodeBits::Eight => 8,
            CodeBits::Four => 4,
        }
    }

    /// Entries per table (`2^bits`).
    pub fn table_len(self) -> usize {
        1 << self.bits()
    }
}

/// Per-iteration increments that a `LOOP` adds to the fields of the
/// instructions in its body: on iteration `k` (from 0) each field below gets
/// `k * stride` added, summed over all enclosing loops. Each stride is a
/// signed 10-bit value (`-512..=511`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Strides {
    /// Added to `row` (ACT, ACTAB).
    pub row: i16,
    /// Added to `col` (RD, WR, MAC, LUTACC, HISTACC, ARGMIN, BINMAC, STC).
    pub col: i16,
    /// Added to bank-buffer offsets (WRGB `buf`, MAC `buf`, LUTACC `table`,
    /// HISTACC `weights`, ARGMIN `cb`, MVB `buf`).
    pub buf: i16,
    /// Added to register offsets (`reg` of MAC, LUTACC, HISTACC, ARGMIN, MVD,
    /// STC; BINMAC `bins`; CLR `off` without `die`).
    pub reg: i16,
    /// Added to host-data offsets (`data` of WR, WRGB).
    pub data: i16,
    /// Added to buffer-die offsets (`die` of MVD, MVB, SFM, RDD; RED `src`
    /// and `dst`; CLR `off` with `die`).
    pub die: i16,
}

impl Strides {
    /// As an array in field order `[row, col, buf, reg, data, die]`.
    pub fn to_array(self) -> [i16; 6] {
        [self.row, self.col, self.buf, self.reg, self.data, self.die]
    }

    /// From an array in field order `[row, col, buf, reg, data, die]`.
    pub fn from_array([row, col, buf, reg, data, die]: [i16; 6]) -> Strides {
        Strides {
            row,
            col,
            buf,
            reg,
            data,
            die,
        }
    }
}

/// One instruction. Field widths are those of the binary encoding; `ch` is
/// the device-wide channel index. Offsets into buffers and registers count
/// elements (FP16 for bank buffers, FP32 for registers and the buffer die);
/// host-data offsets count bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Instr {
    /// Open `row` in one bank.
    Act {
        /// Channel.
        ch: u8,
        /// Bank.
        bank: BankSel,
        /// Row (24 bits).
        row: u32,
    },
    /// Close one bank.
    Pre {
        /// Channel.
        ch: u8,
        /// Bank.
        bank: BankSel,
    },
    /// Open `row` in every bank of the channel.
    ActAb {
        /// Channel.
        ch: u8,
        /// Row (24 bits).
        row: u32,
    },
    /// Close every bank of the channel.
    PreAb {
        /// Channel.
        ch: u8,
    },
    /// Read column `col` of the open row to the host (appended to the read log).
    Rd {
        /// Channel.
        ch: u8,
        /// Bank.
        bank: BankSel,
        /// Column.
        col: u8,
    },
    /// Write host data bytes `data..data + column_bytes` to column `col`.
    Wr {
        /// Channel.
        ch: u8,
        /// Bank.
        bank: BankSel,
        /// Column.
        col: u8,
        /// Host-data byte offset (28 bits).
        data: u32,
    },
    /// Write host data bytes `data..data + column_bytes` into every bank's
    /// buffer at FP16 element `buf`.
    Wrgb {
        /// Channel.
        ch: u8,
        /// Buffer element offset.
        buf: u16,
        /// Host-data byte offset (32 bits).
        data: u32,
    },
    /// All-bank FP16 multiply-accumulate: `x = column col` (lanes FP16),
    /// `y = buffer[buf..buf + lanes]`; `reg[reg + l] += x[l] * y[l]`, or with
    /// `reduce`, `reg[reg] += sum_l x[l] * y[l]`. With `bcast`, `y[l] =
    /// buffer[buf]` for every lane.
    Mac {
        /// Channel.
        ch: u8,
        /// Column.
        col: u8,
        /// Buffer element offset.
        buf: u16,
        /// Register offset.
        reg: u16,
        /// Sum the lanes into one register.
        reduce: bool,
        /// One buffer element, `buffer[buf]`, multiplies every lane.
        bcast: bool,
    },
    /// All-bank lookup-table accumulation; see `docs/pim.md`.
    LutAcc {
        /// Channel.
        ch: u8,
        /// Column of codes.
        col: u8,
        /// Code width.
        bits: CodeBits,
        /// Codes per group (tables cycled through, codes summed into one register), 1..=64.
        group: u8,
        /// Buffer element offset of table 0.
        table: u16,
        /// Register of the first group.
        reg: u16,
    },
    /// All-bank histogram accumulation; see `docs/pim.md`.
    HistAcc {
        /// Channel.
        ch: u8,
        /// Column of codes.
        col: u8,
        /// Code width.
        bits: CodeBits,
        /// Codes per group (one weight per group), 1..=64.
        group: u8,
        /// Buffer element offset of the per-group weights.
        weights: u16,
        /// Register of bin 0.
        reg: u16,
    },
    /// All-bank nearest-centroid search; see `docs/pim.md`.
    ArgMin {
        /// Channel.
        ch: u8,
        /// Column holding the sub-vector.
        col: u8,
        /// First lane of the sub-vector (0..=15).
        start: u8,
        /// Sub-vector length (dsub, 1..=16).
        dsub: u8,
        /// log2 of the number of centroids (0..=8).
        nbits: u8,
        /// Buffer element offset of centroid 0 (centroid-major, `2^nbits x dsub`).
        cb: u16,
        /// Register receiving the code (12 bits).
        reg: u16,
    },
    /// Move `len` registers of every bank to the buffer die:
    /// `die[die + b * len + i] = reg_b[reg + i]`.
    Mvd {
        /// Channel.
        ch: u8,
        /// Register offset.
        reg: u16,
        /// Registers per bank (1..=65535).
        len: u16,
        /// Buffer-die element offset.
        die: u16,
    },
    /// Move buffer-die elements into every bank's buffer as FP16:
    /// `buf_b[buf + i] = die[die + b * len + i]`, or with `broadcast`
    /// `die[die + i]` for every bank.
    Mvb {
        /// Channel.
        ch: u8,
        /// Buffer-die element offset.
        die: u16,
        /// Elements per bank (1..=32767).
        len: u16,
        /// Buffer element offset.
        buf: u16,
        /// Same slice to every bank.
        broadcast: bool,
    },
    /// Softmax in place over `die[die..die + len]` with input scale `scale`.
    Sfm {
        /// Channel.
        ch: u8,
        /// Buffer-die element offset.
        die: u16,
        /// Elements (1..=65535).
        len: u16,
        /// Scale applied to the inputs before the softmax (finite FP16).
        scale: f16,
        /// Also write `max_i y_i` to `die[die + len]` and `sum_i exp(y_i - max)`
        /// to `die[die + len + 1]` (encoded as its own opcode).
        stats: bool,
    },
    /// Clear registers of every bank of the channel (`reg[off..off + len] =
    /// 0`), or with `die` the channel's buffer die (`die[off..off + len] = 0`).
    Clr {
        /// Channel.
        ch: u8,
        /// First register (or buffer-die element with `die`).
        off: u16,
        /// Elements (1..=65535).
        len: u16,
        /// Clear the buffer die instead of the registers.
        die: bool,
    },
    /// All-bank bins-times-codebook: `x` = column `col` (lanes FP16); for `l`
    /// ascending, `reg[out + l % dsub] += reg[bins + l / dsub] * x[l]`.
    BinMac {
        /// Channel.
        ch: u8,
        /// Column (lanes / dsub centroids of dsub FP16 values, centroid-major).
        col: u8,
        /// Sub-vector length (1..=16; must divide the lanes).
        dsub: u8,
        /// Register of the first centroid's weight (bin).
        bins: u16,
        /// Register of the first of the dsub outputs.
        out: u16,
    },
    /// Buffer-die reduction across the channel's bank slices:
    /// `die[dst + i] = sum_b die[src + b * len + i]` (b ascending).
    Red {
        /// Channel.
        ch: u8,
        /// Buffer-die element offset of bank 0's slice.
        src: u16,
        /// Elements per slice (1..=65535).
        len: u16,
        /// Buffer-die element offset of the result.
        dst: u16,
    },
    /// Read `die[die..die + len]` to the host (FP32 little-endian bytes,
    /// appended to the read log).
    Rdd {
        /// Channel.
        ch: u8,
        /// Buffer-die element offset.
        die: u16,
        /// Elements (1..=65535).
        len: u16,
    },
    /// Store code registers into column `col` of one bank's open row: code
    /// `p` = `reg[reg + p]`, which must hold an exact integer in `0..2^bits`.
    Stc {
        /// Channel.
        ch: u8,
        /// Bank.
        bank: BankSel,
        /// Column.
        col: u8,
        /// Register of code 0.
        reg: u16,
        /// Code width.
        bits: CodeBits,
    },
    /// All-bank parameter load: column `col` of the open row of every bank
    /// into bytes `slot x column_bytes ..` of its dequantizer's latch.
    Ldp {
        /// Channel.
        ch: u8,
        /// Column.
        col: u8,
        /// Latch column (slot) it fills.
        slot: u8,
    },
    /// All-bank dequantize-and-multiply-accumulate of a column of
    /// `n = column_bytes x 8 / bits` packed scalar codes (code `i` at bits
    /// `i x bits..` from the low bit of byte 0). Code `i` uses parameter
    /// `p = pslot + i / group` of the latch: `x_i = min_p + q_i scale_p`
    /// (`q_i` unsigned; `(min, scale)` FP16 at latch bytes `4p..4p + 4`), or
    /// with `mx` `x_i = q_i 2^(e_p - 127)` (`q_i` signed two's complement,
    /// `e_p` the latch byte `p`). With `reduce`, `reg[reg] += sum_i
    /// buffer[buf + i] x_i`; else (broadcast) `reg[reg + i] += buffer[buf]
    /// x_i`.
    QMac {
        /// Channel.
        ch: u8,
        /// Column of codes.
        col: u8,
        /// Buffer element offset (11 bits).
        buf: u16,
        /// Register offset (11 bits).
        reg: u16,
        /// Bits per code: 2, 4 or 8.
        bits: u8,
        /// Codes per parameter (1..=128).
        group: u8,
        /// Latch parameter of the first group (7 bits).
        pslot: u8,
        /// Dot product into one register (else one register per code).
        reduce: bool,
        /// Shared-exponent (MX) parameters instead of (min, scale).
        mx: bool,
    },
    /// Every later command on every channel issues after every earlier one.
    Barrier,
    /// Repeat the body up to the matching `ENDLOOP` `count` times (1..2^24).
    Loop {
        /// Iterations.
        count: u32,
        /// Per-iteration field increments.
        strides: Strides,
    },
    /// End of a loop body.
    EndLoop,
}

/// Centroids an `ARGMIN` searches: `ksub = 2^nbits` (the ISA's own copy of
/// the PQ symbol; `aqpim-pim` depends on no PQ crate).
pub(crate) fn argmin_centroids(nbits: u8) -> u64 {
    1u64 << nbits
}

impl Instr {
    /// The mnemonic.
    pub fn mnemonic(&self) -> &'static str {
        self.spec().mnemonic
    }

    /// Checks every field against its encoded width and range (the
    /// instruction table's `min..=max` of each field).
    pub fn check_fields(&self) -> std::result::Result<(), String> {
        let spec = self.spec();
        spec.fields
            .iter()
            .zip(&self.values())
            .try_for_each(|(f, &v)| table::check_value(f, v))
    }
}

/// The canonical text of an instruction, as the assembler reads it back:
/// the mnemonic, then operands in table order, strides and flags only when
/// set.
impl fmt::Display for Instr {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = self.spec();
        out.write_str(spec.mnemonic)?;
        for (f, &v) in spec.fields.iter().zip(&self.values()) {
            match f.kind {
                Kind::Uint | Kind::Channel | Kind::CodeBits | Kind::Pow2 => {
                    write!(out, " {}={v}", f.name)
                }
                Kind::Count => write!(out, " {v}"),
                Kind::Flag | Kind::AltOpcode(_) if v != 0 => write!(out, " {}", f.name),
                Kind::Flag | Kind::AltOpcode(_) => Ok(()),
                // f32's Display is the shortest text that parses back to the same
                // f32, and every f16 is exact in f32, so the scale round-trips.
                Kind::Scale => write!(out, " {}={}", f.name, f16::from_bits(v as u16).to_f32()),
                Kind::Bank => BANK_PARTS
                    .iter()
                    .zip(bank_parts(v))
                    .try_for_each(|((name, _, _), part)| write!(out, " {name}={part}")),
                Kind::Strides => STRIDE_NAMES
                    .iter()
                    .zip(stride_parts(v))
                    .filter(|(_, x)| *x != 0)
                    .try_for_each(|(name, x)| write!(out, " {name}={x}")),
            }?;
        }
        Ok(())
    }
}

/// A program: a sequence of instructions whose fields fit their encodings
/// and whose loops are balanced and at most [`MAX_LOOP_DEPTH`] deep.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Program {
    instrs: Vec<Instr>,
}

impl Program {
    /// Checks fields and loop structure.
    pub fn new(instrs: Vec<Instr>) -> Result<Program> {
        let mut depth = 0usize;
        for (i, ins) in instrs.iter().enumerate() {
            let err = |reason: String| PimError::Program {
                index: i,
                instr: ins.to_string(),
                reason,
            };
            ins.check_fields().map_err(err)?;
            match ins {
                Instr::Loop { .. } => {
                    depth += 1;
                    if depth > MAX_LOOP_DEPTH {
                        return Err(err(format!("loops nest deeper than {MAX_LOOP_DEPTH}")));
                    }
                }
                Instr::EndLoop => {
                    if depth == 0 {
                        return Err(err("ENDLOOP without LOOP".into()));
                    }
                    depth -= 1;
                }
                _ => {}
            }
        }
        if depth != 0 {
            return Err(PimError::Program {
                index: instrs.len(),
                instr: String::new(),
                reason: format!("{depth} LOOP(s) without ENDLOOP"),
            });
        }
        Ok(Program { instrs })
    }

    /// The instructions.
    pub fn instrs(&self) -> &[Instr] {
        &self.instrs
    }
}
