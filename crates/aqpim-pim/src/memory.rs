//! The device's data: bank rows (allocated on first write, so a 16 GB
//! stack costs only what a program touches), per-bank buffers, registers
//! and parameter latches, per-channel buffer dies, and the bytes read out to
//! the host. It knows sizes, not instructions: the simulator's loader
//! (`sim/loader.rs`) places and reads data in it, and the instruction
//! semantics (`sim/functional.rs`) compute on it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

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

/// The data of a device, lazily allocated. The instruction semantics read
/// and write the `pub(crate)` fields directly; the loader goes through the
/// methods, which allocate on first write and read zeros before it.
#[derive(Debug, Clone)]
pub(crate) struct Memory {
    pub(crate) column_bytes: usize,
    row_bytes: usize,
    pub(crate) lanes: usize,
    buffer_bytes: usize,
    registers: usize,
    die_elements: usize,
    pub(crate) banks_per_channel: usize,
    zeros: Vec<u8>,
    /// Rows that were written: key `global_bank << 24 | row`, `row_bytes` each.
    rows: RowMap,
    /// Per global bank: buffer bytes (allocated on first write).
    buffers: Vec<Option<Box<[u8]>>>,
    /// Per global bank: FP32 registers (allocated on first write).
    pub(crate) regs: Vec<Option<Box<[f32]>>>,
    /// Per channel: FP32 buffer-die elements (allocated on first write).
    pub(crate) die: Vec<Option<Box<[f32]>>>,
    /// Bytes of each bank's parameter latch.
    pub(crate) latch_bytes: usize,
    /// Per global bank: the dequantizer's parameter latch (allocated on
    /// first LDP).
    pub(crate) latches: Vec<Option<Box<[u8]>>>,
    /// Bytes returned by RD, in issue order.
    pub(crate) read_log: Vec<u8>,
}

/// One bank's operands of a column command: `(column, buffer, latch,
/// registers)`.
pub(crate) type Operands<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a mut [f32]);

/// A shared zero page as large as any buffer (at most 128 KiB, checked by resolve()).
static ZEROS: [u8; 131072] = [0; 131072];

/// A copy of lazily allocated FP32 state (`n` zeros when never written).
fn copied(slot: &Option<Box<[f32]>>, n: usize) -> Vec<f32> {
    slot.as_deref()
        .map_or_else(|| vec![0.0; n], <[f32]>::to_vec)
}

/// Lazily allocated FP32 state, allocated (zeroed, `n` long) on first use.
fn allocated(slot: &mut Option<Box<[f32]>>, n: usize) -> &mut [f32] {
    slot.get_or_insert_with(|| vec![0.0; n].into_boxed_slice())
}

impl Memory {
    pub(crate) fn new(device: &Device) -> Self {
        let o = &device.org;
        let banks = o.channels * o.banks_per_channel;
        Memory {
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
            latch_bytes: device.pim.latch_bytes,
            latches: vec![None; banks],
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
        copied(&self.regs[gb], self.registers)
    }

    pub(crate) fn regs_mut(&mut self, gb: usize) -> &mut [f32] {
        allocated(&mut self.regs[gb], self.registers)
    }

    pub(crate) fn die(&self, ch: usize) -> Vec<f32> {
        copied(&self.die[ch], self.die_elements)
    }

    pub(crate) fn die_mut(&mut self, ch: usize) -> &mut [f32] {
        allocated(&mut self.die[ch], self.die_elements)
    }

    /// Bank `gb`'s operands of a column command, borrowed together: column
    /// `col` of row `row`, the buffer, the parameter latch and the registers.
    #[inline]
    pub(crate) fn operands(&mut self, gb: usize, row: u32, col: usize) -> Operands<'_> {
        let (c, n) = (self.column_bytes, self.registers);
        let x = match self.rows.get(&Self::key(gb, row)) {
            Some(r) => &r[col * c..(col + 1) * c],
            None => &self.zeros[..c],
        };
        let y = self.buffers[gb]
            .as_deref()
            .unwrap_or(&ZEROS[..self.buffer_bytes]);
        let latch = self.latches[gb]
            .as_deref()
            .unwrap_or(&ZEROS[..self.latch_bytes]);
        let r = self.regs[gb].get_or_insert_with(|| vec![0.0; n].into_boxed_slice());
        (x, y, latch, r)
    }
}
