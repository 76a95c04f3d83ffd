//! The untimed host-side loader: places data in bank arrays, buffers,
//! registers and buffer dies without simulated time, and reads results back
//! after a run. Every argument is range-checked; nothing here can panic on
//! user input.

use super::Simulator;
use crate::error::{PimError, Result};
use crate::isa::BankSel;

impl Simulator {
    pub(super) fn local(&self, ch: usize, bank: BankSel) -> Result<usize> {
        let b = self.device.org.bank_index(bank);
        b.filter(|_| ch < self.device.org.channels).ok_or_else(|| {
            PimError::Load(format!(
                "channel {ch} bank {bank:?} is outside the organisation"
            ))
        })
    }

    fn global(&self, ch: usize, bank: BankSel) -> Result<usize> {
        Ok(ch * self.device.org.banks_per_channel + self.local(ch, bank)?)
    }

    /// The global bank of `(ch, bank)` when `len` bytes from byte `offset`
    /// of its row `row` exist.
    fn row_range(
        &self,
        ch: usize,
        bank: BankSel,
        row: u32,
        offset: usize,
        len: usize,
    ) -> Result<usize> {
        let gb = self.global(ch, bank)?;
        let o = &self.device.org;
        if row as usize >= o.rows || offset.saturating_add(len) > o.columns * o.column_bytes {
            return Err(PimError::Load(format!(
                "row {row}, bytes {offset}..{} exceed the bank",
                offset.saturating_add(len)
            )));
        }
        Ok(gb)
    }

    /// Sets the host data that WR and WRGB read (`data` operands are byte offsets into it).
    pub fn set_host_data(&mut self, data: Vec<u8>) {
        self.host_data = data;
    }

    /// Sets the most instructions a run may execute, loops expanded
    /// ([`MAX_PROGRAM_STEPS`](crate::MAX_PROGRAM_STEPS) by default): a run
    /// past it is refused before it starts, with
    /// [`PimError::Limit`](crate::PimError::Limit).
    pub fn set_step_limit(&mut self, steps: u64) {
        self.step_limit = steps;
    }

    /// Writes `bytes` into a bank's row starting at byte `offset` (untimed).
    pub fn write_bank(
        &mut self,
        ch: usize,
        bank: BankSel,
        row: u32,
        offset: usize,
        bytes: &[u8],
    ) -> Result<()> {
        let gb = self.row_range(ch, bank, row, offset, bytes.len())?;
        self.func.row_mut(gb, row)[offset..offset + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    /// Reads `len` bytes of a bank's row from byte `offset` (untimed).
    pub fn read_bank(
        &self,
        ch: usize,
        bank: BankSel,
        row: u32,
        offset: usize,
        len: usize,
    ) -> Result<Vec<u8>> {
        let gb = self.row_range(ch, bank, row, offset, len)?;
        Ok(self.func.row(gb, row)[offset..offset + len].to_vec())
    }

    /// Writes `bytes` into the buffer of one bank, or of every bank of the
    /// channel when `bank` is `None`, at byte `offset` (untimed).
    pub fn write_buffer(
        &mut self,
        ch: usize,
        bank: Option<BankSel>,
        offset: usize,
        bytes: &[u8],
    ) -> Result<()> {
        if offset.saturating_add(bytes.len()) > self.device.pim.buffer_bytes {
            return Err(PimError::Load(format!(
                "buffer bytes {offset}..{} exceed {}",
                offset.saturating_add(bytes.len()),
                self.device.pim.buffer_bytes
            )));
        }
        let targets: Vec<usize> = match bank {
            Some(b) => vec![self.global(ch, b)?],
            None => {
                if ch >= self.device.org.channels {
                    return Err(PimError::Load(format!("channel {ch} does not exist")));
                }
                let n = self.device.org.banks_per_channel;
                (ch * n..(ch + 1) * n).collect()
            }
        };
        for gb in targets {
            self.func.buffer_mut(gb)[offset..offset + bytes.len()].copy_from_slice(bytes);
        }
        Ok(())
    }

    /// A bank's buffer bytes.
    pub fn buffer(&self, ch: usize, bank: BankSel) -> Result<Vec<u8>> {
        Ok(self.func.buffer(self.global(ch, bank)?).to_vec())
    }

    /// Writes registers of a bank from index `index` (untimed).
    pub fn write_registers(
        &mut self,
        ch: usize,
        bank: BankSel,
        index: usize,
        values: &[f32],
    ) -> Result<()> {
        let gb = self.global(ch, bank)?;
        if index.saturating_add(values.len()) > self.device.pim.registers {
            return Err(PimError::Load(format!(
                "registers {index}..{} exceed {}",
                index.saturating_add(values.len()),
                self.device.pim.registers
            )));
        }
        self.func.regs_mut(gb)[index..index + values.len()].copy_from_slice(values);
        Ok(())
    }

    /// A bank's registers (all of them).
    pub fn registers(&self, ch: usize, bank: BankSel) -> Result<Vec<f32>> {
        Ok(self.func.registers(self.global(ch, bank)?))
    }

    /// Writes buffer-die elements of a channel from `index` (untimed).
    pub fn write_buffer_die(&mut self, ch: usize, index: usize, values: &[f32]) -> Result<()> {
        if ch >= self.device.org.channels
            || index.saturating_add(values.len()) > self.device.pim.buffer_die_elements
        {
            return Err(PimError::Load(format!(
                "channel {ch} buffer die {index}..{} out of range",
                index.saturating_add(values.len())
            )));
        }
        self.func.die_mut(ch)[index..index + values.len()].copy_from_slice(values);
        Ok(())
    }

    /// A channel's buffer-die elements (all of them).
    pub fn buffer_die(&self, ch: usize) -> Result<Vec<f32>> {
        if ch >= self.device.org.channels {
            return Err(PimError::Load(format!("channel {ch} does not exist")));
        }
        Ok(self.func.die(ch))
    }

    /// Bytes returned by RD commands, `column_bytes` per RD, in issue order.
    pub fn read_log(&self) -> &[u8] {
        &self.func.read_log
    }

    /// Empties the read log.
    pub fn clear_read_log(&mut self) {
        self.func.read_log.clear();
    }
}
