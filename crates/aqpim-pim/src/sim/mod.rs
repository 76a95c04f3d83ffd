//! The simulator: runs a program on a device, issuing every command at its
//! earliest legal cycle (in program order per channel, channels in parallel),
//! inserting refresh, enforcing bank state strictly, computing results in
//! functional mode, and counting everything for [`Stats`].

mod functional;
mod loader;
mod timing;
mod validate;

use serde::{Deserialize, Serialize};

pub use timing::Timer;

use self::functional::Functional;
use self::timing::{ChannelTiming, Tables};
use self::validate::{check_program, Checked, BUF, COL, DATA, DIE, REG, ROW};
use crate::command::{Command, Scope};
use crate::energy::energy;
use crate::error::{PimError, Result};
use crate::isa::{BankSel, Instr, Program};
use crate::resolve::Device;
use crate::stats::{Counters, Stats};

/// What the simulator computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Timing and data.
    Functional,
    /// Timing only: no data is read, written or computed. Cycle counts and
    /// every statistic are identical to [`Mode::Functional`], because no
    /// timing decision depends on data.
    TimingOnly,
}

/// Run options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimOptions {
    /// Functional or timing-only.
    pub mode: Mode,
    /// Insert all-bank refresh every tREFI (when the device enables refresh).
    pub refresh: bool,
    /// Record every issued command in the trace.
    pub record_trace: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            mode: Mode::Functional,
            refresh: true,
            record_trace: false,
        }
    }
}

/// One issued command. `bank` is the channel-local bank index
/// (`((pc * sids + sid) * bank_groups + bg) * banks_per_group + bank`) for
/// single-bank commands and 0 for all-bank ones; `row` is set for ACT and
/// ACTAB, `col` for column commands, `len` for MVD, MVB, SFM, CLR, RED and RDD
/// (elements per bank for MVD/MVB, with `broadcast` MVB recorded as `len` with
/// bit 31 set, and a buffer-die CLR likewise with bit 31 set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEntry {
    /// Issue cycle.
    pub cycle: u64,
    /// Command.
    pub cmd: Command,
    /// Device-wide channel index.
    pub channel: u16,
    /// Channel-local bank index.
    pub bank: u16,
    /// Row (ACT, ACTAB).
    pub row: u32,
    /// Column (column commands).
    pub col: u16,
    /// Length operand (MVD, MVB, SFM, CLR, RED, RDD).
    pub len: u32,
    /// Inserted by the simulator (refresh and the row restores after it).
    pub auto: bool,
}

impl TraceEntry {
    /// Whether an MVB entry was a broadcast.
    pub const BROADCAST: u32 = 1 << 31;
    /// Whether a CLR entry cleared the buffer die (same bit as [`Self::BROADCAST`]).
    pub const DIE: u32 = 1 << 31;
}

#[derive(Debug, Clone)]
struct Channel {
    timing: ChannelTiming,
    open: Vec<Option<u32>>,
    open_count: usize,
    last_issue: Option<u64>,
    /// No command may issue before this cycle (barriers, occupancy).
    floor: u64,
    next_refresh: u64,
    /// One past the last cycle any command of this channel occupies.
    end: u64,
}

/// The simulator of one device.
#[derive(Debug, Clone)]
pub struct Simulator {
    device: Device,
    tables: Tables,
    channels: Vec<Channel>,
    func: Functional,
    opts: SimOptions,
    host_data: Vec<u8>,
    counters: Counters,
    refreshes: u64,
    trace: Vec<TraceEntry>,
}

/// Operand of one scheduled command.
#[derive(Debug, Clone, Copy, Default)]
struct Operand {
    row: u32,
    col: u16,
    len: u32,
    /// Cycles the command occupies the channel after issue (MVD, MVB, SFM,
    /// CLR, RED, RDD).
    busy: u64,
}

impl Simulator {
    /// A fresh device: every bank closed, every array, buffer and register zero.
    pub fn new(device: &Device, opts: SimOptions) -> Simulator {
        let tables = Tables::new(device);
        let interval = device.refresh_interval.map_or(u64::MAX, u64::from);
        let ch = Channel {
            timing: ChannelTiming::new(&tables),
            open: vec![None; device.org.banks_per_channel],
            open_count: 0,
            last_issue: None,
            floor: 0,
            next_refresh: interval,
            end: 0,
        };
        Simulator {
            channels: vec![ch; device.org.channels],
            func: Functional::new(device),
            device: device.clone(),
            tables,
            opts,
            host_data: Vec::new(),
            counters: Counters::default(),
            refreshes: 0,
            trace: Vec::new(),
        }
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The options.
    pub fn options(&self) -> SimOptions {
        self.opts
    }

    /// The recorded trace (every run since creation, when `record_trace`).
    pub fn trace(&self) -> &[TraceEntry] {
        &self.trace
    }

    /// Takes the recorded trace, leaving it empty.
    pub fn take_trace(&mut self) -> Vec<TraceEntry> {
        std::mem::take(&mut self.trace)
    }

    /// The row open in a bank, if any.
    pub fn open_row(&self, ch: usize, bank: BankSel) -> Result<Option<u32>> {
        let b = self.local(ch, bank)?;
        Ok(self.channels[ch].open[b])
    }

    /// Runs a program to completion and returns its statistics. State (open
    /// rows, data, the clock) carries over from earlier runs. On an error the
    /// state is that of the commands before the failing one.
    pub fn run(&mut self, program: &Program) -> Result<Stats> {
        let checked = check_program(program, &self.device, self.host_data.len())?;
        self.counters = Counters::default();
        self.refreshes = 0;
        let start = self.channels.iter().map(|c| c.end).max().unwrap_or(0);
        self.execute(&checked)?;
        Ok(self.stats(start))
    }

    fn execute(&mut self, p: &Checked) -> Result<()> {
        // Loop frames: (index of LOOP, iteration, count, strides).
        let mut frames: Vec<(usize, u32, u32, [i64; 6])> = Vec::new();
        let mut offs = [0i64; 6];
        let mut pc = 0usize;
        while pc < p.instrs.len() {
            match &p.instrs[pc] {
                Instr::Loop { count, strides } => {
                    let s = strides.to_array().map(i64::from);
                    frames.push((pc, 0, *count, s));
                }
                Instr::EndLoop => {
                    let Some(frame) = frames.last_mut() else {
                        unreachable!("validated: balanced loops")
                    };
                    frame.1 += 1;
                    if frame.1 < frame.2 {
                        for (o, s) in offs.iter_mut().zip(frame.3) {
                            *o += s;
                        }
                        pc = frame.0 + 1;
                        continue;
                    }
                    let n = i64::from(frame.2) - 1;
                    for (o, s) in offs.iter_mut().zip(frame.3) {
                        *o -= n * s;
                    }
                    frames.pop();
                }
                Instr::Barrier => self.barrier(),
                ins => self.exec(ins, &offs)?,
            }
            pc += 1;
        }
        Ok(())
    }

    fn barrier(&mut self) {
        let b = self
            .channels
            .iter()
            .map(|c| c.end.max(c.floor).max(c.last_issue.map_or(0, |t| t + 1)))
            .max()
            .unwrap_or(0);
        for c in &mut self.channels {
            c.floor = c.floor.max(b);
        }
    }

    fn bank_of(&self, b: &BankSel) -> usize {
        self.device
            .org
            .local_bank(b.pc.into(), b.sid.into(), b.bg.into(), b.bank.into())
    }

    /// Runs one command instruction with loop offsets `offs`.
    fn exec(&mut self, ins: &Instr, offs: &[i64; 6]) -> Result<()> {
        let f = |base: u32, k: usize| (i64::from(base) + offs[k]) as u32;
        let functional = self.opts.mode == Mode::Functional;
        let banks_per_channel = self.device.org.banks_per_channel;
        let banks = banks_per_channel as u64;
        let col_bytes = self.device.org.column_bytes as u64;
        let lanes = self.device.pim.lanes as u64;
        match *ins {
            Instr::Act { ch, bank, row } => {
                let b = self.bank_of(&bank);
                self.schedule(
                    Command::Act,
                    ch.into(),
                    b,
                    Operand {
                        row: f(row, ROW),
                        ..Default::default()
                    },
                )?;
            }
            Instr::Pre { ch, bank } => {
                let b = self.bank_of(&bank);
                self.schedule(Command::Pre, ch.into(), b, Operand::default())?;
            }
            Instr::ActAb { ch, row } => {
                self.schedule(
                    Command::ActAb,
                    ch.into(),
                    0,
                    Operand {
                        row: f(row, ROW),
                        ..Default::default()
                    },
                )?;
            }
            Instr::PreAb { ch } => {
                self.schedule(Command::PreAb, ch.into(), 0, Operand::default())?;
            }
            Instr::Rd { ch, bank, col } => {
                let (b, col) = (self.bank_of(&bank), f(col.into(), COL));
                self.schedule(
                    Command::Rd,
                    ch.into(),
                    b,
                    Operand {
                        col: col as u16,
                        ..Default::default()
                    },
                )?;
                self.counters.bytes_external += col_bytes;
                if functional {
                    let row = self.channels[usize::from(ch)].open[b].unwrap_or(0);
                    self.func
                        .rd(usize::from(ch) * banks_per_channel + b, row, col as usize);
                }
            }
            Instr::Wr {
                ch,
                bank,
                col,
                data,
            } => {
                let (b, col, data) = (
                    self.bank_of(&bank),
                    f(col.into(), COL),
                    f(data, DATA) as usize,
                );
                self.schedule(
                    Command::Wr,
                    ch.into(),
                    b,
                    Operand {
                        col: col as u16,
                        ..Default::default()
                    },
                )?;
                self.counters.bytes_external += col_bytes;
                if functional {
                    let row = self.channels[usize::from(ch)].open[b].unwrap_or(0);
                    let gb = usize::from(ch) * self.device.org.banks_per_channel + b;
                    let n = self.device.org.column_bytes;
                    self.func
                        .wr(gb, row, col as usize, &self.host_data[data..data + n]);
                }
            }
            Instr::Wrgb { ch, buf, data } => {
                self.schedule(Command::Wrgb, ch.into(), 0, Operand::default())?;
                self.counters.bytes_external += col_bytes;
                self.counters.bytes_buffer += banks * col_bytes;
                if functional {
                    let (buf, data) = (f(buf.into(), BUF) as usize, f(data, DATA) as usize);
                    let n = self.device.org.column_bytes;
                    self.func
                        .wrgb(ch.into(), buf, &self.host_data[data..data + n]);
                }
            }
            Instr::Mac {
                ch,
                col,
                buf,
                reg,
                reduce,
                bcast,
            } => {
                let col = f(col.into(), COL);
                self.schedule(
                    Command::Mac,
                    ch.into(),
                    0,
                    Operand {
                        col: col as u16,
                        ..Default::default()
                    },
                )?;
                self.counters.lane_ops += banks * lanes;
                self.counters.bytes_buffer += banks * if bcast { 2 } else { lanes * 2 };
                if functional {
                    let c = usize::from(ch);
                    self.func.mac(
                        c,
                        &self.channels[c].open,
                        col as usize,
                        f(buf.into(), BUF) as usize,
                        f(reg.into(), REG) as usize,
                        reduce,
                        bcast,
                    );
                }
            }
            Instr::BinMac {
                ch,
                col,
                dsub,
                bins,
                out,
            } => {
                let col = f(col.into(), COL);
                self.schedule(
                    Command::BinMac,
                    ch.into(),
                    0,
                    Operand {
                        col: col as u16,
                        ..Default::default()
                    },
                )?;
                self.counters.lane_ops += banks * lanes;
                if functional {
                    let c = usize::from(ch);
                    self.func.binmac(
                        c,
                        &self.channels[c].open,
                        col as usize,
                        dsub.into(),
                        f(bins.into(), REG) as usize,
                        out.into(),
                    );
                }
            }
            Instr::Clr { ch, off, len, die } => {
                let busy = self.device.clr_cycles(len.into(), die);
                let rec = u32::from(len) | if die { TraceEntry::DIE } else { 0 };
                self.schedule(
                    Command::Clr,
                    ch.into(),
                    0,
                    Operand {
                        len: rec,
                        busy,
                        ..Default::default()
                    },
                )?;
                if functional {
                    let off = f(off.into(), if die { DIE } else { REG }) as usize;
                    self.func.clr(ch.into(), off, len.into(), die);
                }
            }
            Instr::Red { ch, src, len, dst } => {
                let busy = self.device.red_cycles(len.into());
                self.schedule(
                    Command::Red,
                    ch.into(),
                    0,
                    Operand {
                        len: len.into(),
                        busy,
                        ..Default::default()
                    },
                )?;
                self.counters.bytes_buffer_die += 4 * banks * u64::from(len);
                if functional {
                    self.func.red(
                        ch.into(),
                        f(src.into(), DIE) as usize,
                        len.into(),
                        f(dst.into(), DIE) as usize,
                    );
                }
            }
            Instr::Rdd { ch, die, len } => {
                let busy = self.device.rdd_cycles(len.into());
                self.schedule(
                    Command::Rdd,
                    ch.into(),
                    0,
                    Operand {
                        len: len.into(),
                        busy,
                        ..Default::default()
                    },
                )?;
                self.counters.bytes_external += 4 * u64::from(len);
                if functional {
                    self.func
                        .rdd(ch.into(), f(die.into(), DIE) as usize, len.into());
                }
            }
            Instr::Stc {
                ch,
                bank,
                col,
                reg,
                bits,
            } => {
                let (b, col, reg) = (
                    self.bank_of(&bank),
                    f(col.into(), COL),
                    f(reg.into(), REG) as usize,
                );
                let c = usize::from(ch);
                // Check the codes before anything issues, so that on an error
                // the state is that of the commands before this one.
                let data = if functional {
                    self.prerequisite(Command::Stc, c, b)?;
                    let gb = c * banks_per_channel + b;
                    match self.func.stc_column(gb, reg, bits) {
                        Ok(d) => Some(d),
                        Err((r, v)) => {
                            let mut shown = *ins;
                            if let Instr::Stc {
                                col: sc, reg: sr, ..
                            } = &mut shown
                            {
                                *sc = col as u8;
                                *sr = reg as u16;
                            }
                            return Err(PimError::Data {
                                instr: crate::isa::asm::format_instr(&shown),
                                target: self.target_text(Command::Stc, c, b),
                                reason: format!(
                                    "register {r} holds {v}, not a {}-bit code (an integer in 0..{})",
                                    bits.bits(),
                                    bits.table_len()
                                ),
                            });
                        }
                    }
                } else {
                    None
                };
                self.schedule(
                    Command::Stc,
                    c,
                    b,
                    Operand {
                        col: col as u16,
                        ..Default::default()
                    },
                )?;
                if let Some(d) = data {
                    let row = self.channels[c].open[b].unwrap_or(0);
                    self.func
                        .wr(c * banks_per_channel + b, row, col as usize, &d);
                }
            }
            Instr::LutAcc {
                ch,
                col,
                bits,
                group,
                table,
                reg,
            } => {
                let col = f(col.into(), COL);
                self.schedule(
                    Command::LutAcc,
                    ch.into(),
                    0,
                    Operand {
                        col: col as u16,
                        ..Default::default()
                    },
                )?;
                let n = col_bytes * 8 / u64::from(bits.bits());
                self.counters.lane_ops += banks * n;
                self.counters.bytes_buffer += banks * n * 2;
                if functional {
                    let c = usize::from(ch);
                    self.func.lutacc(
                        c,
                        &self.channels[c].open,
                        col as usize,
                        bits,
                        group.into(),
                        f(table.into(), BUF) as usize,
                        f(reg.into(), REG) as usize,
                    );
                }
            }
            Instr::HistAcc {
                ch,
                col,
                bits,
                group,
                weights,
                reg,
            } => {
                let col = f(col.into(), COL);
                self.schedule(
                    Command::HistAcc,
                    ch.into(),
                    0,
                    Operand {
                        col: col as u16,
                        ..Default::default()
                    },
                )?;
                let n = col_bytes * 8 / u64::from(bits.bits());
                self.counters.lane_ops += banks * n;
                self.counters.bytes_buffer += banks * n.div_ceil(group.into()) * 2;
                if functional {
                    let c = usize::from(ch);
                    self.func.histacc(
                        c,
                        &self.channels[c].open,
                        col as usize,
                        bits,
                        group.into(),
                        f(weights.into(), BUF) as usize,
                        f(reg.into(), REG) as usize,
                    );
                }
            }
            Instr::ArgMin {
                ch,
                col,
                start,
                dsub,
                nbits,
                cb,
                reg,
            } => {
                let col = f(col.into(), COL);
                self.schedule(
                    Command::ArgMin,
                    ch.into(),
                    0,
                    Operand {
                        col: col as u16,
                        ..Default::default()
                    },
                )?;
                let work = (1u64 << nbits) * u64::from(dsub);
                self.counters.lane_ops += banks * work;
                self.counters.bytes_buffer += banks * work * 2;
                if functional {
                    let c = usize::from(ch);
                    self.func.argmin(
                        c,
                        &self.channels[c].open,
                        col as usize,
                        start.into(),
                        dsub.into(),
                        1 << nbits,
                        f(cb.into(), BUF) as usize,
                        f(reg.into(), REG) as usize,
                    );
                }
            }
            Instr::Mvd { ch, reg, len, die } => {
                let bytes = banks * u64::from(len) * 4;
                let busy = self.device.mv_cycles(bytes);
                self.schedule(
                    Command::Mvd,
                    ch.into(),
                    0,
                    Operand {
                        len: len.into(),
                        busy,
                        ..Default::default()
                    },
                )?;
                self.counters.bytes_buffer_die += bytes;
                if functional {
                    self.func.mvd(
                        ch.into(),
                        f(reg.into(), REG) as usize,
                        len.into(),
                        f(die.into(), DIE) as usize,
                    );
                }
            }
            Instr::Mvb {
                ch,
                die,
                len,
                buf,
                broadcast,
            } => {
                let bytes = if broadcast {
                    u64::from(len) * 2
                } else {
                    banks * u64::from(len) * 2
                };
                let busy = self.device.mv_cycles(bytes);
                let rec = u32::from(len) | if broadcast { TraceEntry::BROADCAST } else { 0 };
                self.schedule(
                    Command::Mvb,
                    ch.into(),
                    0,
                    Operand {
                        len: rec,
                        busy,
                        ..Default::default()
                    },
                )?;
                self.counters.bytes_buffer_die += bytes;
                self.counters.bytes_buffer += banks * u64::from(len) * 2;
                if functional {
                    self.func.mvb(
                        ch.into(),
                        f(die.into(), DIE) as usize,
                        len.into(),
                        f(buf.into(), BUF) as usize,
                        broadcast,
                    );
                }
            }
            Instr::Sfm {
                ch,
                die,
                len,
                scale,
                stats,
            } => {
                let busy = self.device.sfm_cycles(len.into());
                self.schedule(
                    Command::Sfm,
                    ch.into(),
                    0,
                    Operand {
                        len: len.into(),
                        busy,
                        ..Default::default()
                    },
                )?;
                self.counters.sfm_elements += u64::from(len);
                if functional {
                    self.func.sfm(
                        ch.into(),
                        f(die.into(), DIE) as usize,
                        len.into(),
                        scale.to_f32(),
                        stats,
                    );
                }
            }
            Instr::Barrier | Instr::Loop { .. } | Instr::EndLoop => {
                unreachable!("handled by execute")
            }
        }
        Ok(())
    }

    fn target_text(&self, cmd: Command, ch: usize, bank: usize) -> String {
        match cmd.scope() {
            Scope::Channel => format!("channel {ch}"),
            Scope::Bank => {
                let (pc, sid, bg, b) = self.device.org.bank_coords(bank);
                format!("channel {ch} pc={pc} sid={sid} bg={bg} bank={b}")
            }
        }
    }

    /// State prerequisites: the rules that no amount of waiting satisfies.
    fn prerequisite(&self, cmd: Command, ch: usize, bank: usize) -> Result<()> {
        let c = &self.channels[ch];
        let banks = self.device.org.banks_per_channel;
        let fail = |rule: &'static str, reason: String| PimError::State {
            cmd: cmd.name(),
            target: self.target_text(cmd, ch, bank),
            rule,
            reason,
            earliest: None,
        };
        match cmd {
            Command::Act => {
                if let Some(r) = c.open[bank] {
                    return Err(fail(
                        "bank-closed",
                        format!("row {r} is open; PRE it first"),
                    ));
                }
            }
            Command::ActAb | Command::Ref if c.open_count > 0 => {
                return Err(fail(
                    "all-banks-closed",
                    format!("{} bank(s) are open; PREAB first", c.open_count),
                ));
            }
            Command::Rd | Command::Wr | Command::Stc if c.open[bank].is_none() => {
                return Err(fail(
                    "row-open",
                    "the bank has no open row; ACT first".into(),
                ));
            }
            _ if cmd.is_pim_column() && c.open_count < banks => {
                return Err(fail(
                    "all-banks-open",
                    format!(
                        "{} of {banks} banks have an open row; ACTAB first",
                        c.open_count
                    ),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    #[inline]
    fn earliest(&self, cmd: Command, ch: usize, bank: usize) -> u64 {
        let c = &self.channels[ch];
        let (t, _) = c.timing.earliest(&self.tables, cmd, bank);
        t.max(c.floor).max(c.last_issue.map_or(0, |l| l + 1))
    }

    /// Checks, times and issues one program command; returns its cycle.
    fn schedule(&mut self, cmd: Command, ch: usize, bank: usize, op: Operand) -> Result<u64> {
        self.prerequisite(cmd, ch, bank)?;
        let mut t = self.earliest(cmd, ch, bank);
        if self.opts.refresh && t >= self.channels[ch].next_refresh {
            self.refresh(ch, t);
            t = self.earliest(cmd, ch, bank);
        }
        self.issue(cmd, ch, bank, t, op, false);
        Ok(t)
    }

    /// Inserts the refreshes due by cycle `until` on channel `ch`: close the
    /// open rows (PREAB), REF once per elapsed tREFI, then reopen the rows
    /// (one ACTAB if every bank had the same row open, else one ACT per bank).
    fn refresh(&mut self, ch: usize, until: u64) {
        let interval = self.device.refresh_interval.map_or(u64::MAX, u64::from);
        let snapshot = (self.channels[ch].open_count > 0).then(|| self.channels[ch].open.clone());
        while until >= self.channels[ch].next_refresh {
            let due = self.channels[ch].next_refresh;
            if self.channels[ch].open_count > 0 {
                let t = self.earliest(Command::PreAb, ch, 0).max(due);
                self.issue(Command::PreAb, ch, 0, t, Operand::default(), true);
            }
            let t = self.earliest(Command::Ref, ch, 0).max(due);
            self.issue(Command::Ref, ch, 0, t, Operand::default(), true);
            self.refreshes += 1;
            self.channels[ch].next_refresh = due.saturating_add(interval);
        }
        if let Some(open) = snapshot {
            let uniform = open.iter().all(|r| r.is_some() && *r == open[0]);
            if uniform {
                let row = open[0].unwrap_or(0);
                let t = self.earliest(Command::ActAb, ch, 0);
                self.issue(
                    Command::ActAb,
                    ch,
                    0,
                    t,
                    Operand {
                        row,
                        ..Default::default()
                    },
                    true,
                );
            } else {
                for (b, r) in open.iter().enumerate() {
                    if let Some(row) = *r {
                        let t = self.earliest(Command::Act, ch, b);
                        self.issue(
                            Command::Act,
                            ch,
                            b,
                            t,
                            Operand {
                                row,
                                ..Default::default()
                            },
                            true,
                        );
                    }
                }
            }
        }
    }

    fn issue(&mut self, cmd: Command, ch: usize, bank: usize, t: u64, op: Operand, auto: bool) {
        let banks = self.device.org.banks_per_channel;
        let c = &mut self.channels[ch];
        c.timing.issue(&self.tables, cmd, bank, t);
        c.last_issue = Some(t);
        c.end = c.end.max(t + 1);
        if op.busy > 0 {
            c.floor = c.floor.max(t + op.busy);
            c.end = c.end.max(t + op.busy);
        }
        let k = &mut self.counters;
        k.commands[cmd.index()] += 1;
        match cmd {
            Command::Act => {
                c.open[bank] = Some(op.row);
                c.open_count += 1;
                k.bank_activations += 1;
            }
            Command::Pre if c.open[bank].take().is_some() => {
                c.open_count -= 1;
            }
            Command::ActAb => {
                c.open.iter_mut().for_each(|r| *r = Some(op.row));
                c.open_count = banks;
                k.bank_activations += banks as u64;
            }
            Command::PreAb if c.open_count > 0 => {
                c.open.iter_mut().for_each(|r| *r = None);
                c.open_count = 0;
            }
            Command::Rd | Command::Wr | Command::Stc => k.bank_column_accesses += 1,
            _ if cmd.is_pim_column() => {
                k.bank_column_accesses += banks as u64;
            }
            _ => {}
        }
        if self.opts.record_trace {
            self.trace.push(TraceEntry {
                cycle: t,
                cmd,
                channel: ch as u16,
                bank: if cmd.scope() == Scope::Bank {
                    bank as u16
                } else {
                    0
                },
                row: op.row,
                col: op.col,
                len: op.len,
                auto,
            });
        }
    }

    fn stats(&self, start: u64) -> Stats {
        let end = self.channels.iter().map(|c| c.end).max().unwrap_or(0);
        let cycles = end.saturating_sub(start);
        let ns = cycles as f64 * self.device.t_ck_ns();
        let k = &self.counters;
        let bytes_internal = k.bank_column_accesses * self.device.org.column_bytes as u64;
        let row_misses = k.bank_activations.min(k.bank_column_accesses);
        let gbps = |bytes: u64| if ns > 0.0 { bytes as f64 / ns } else { 0.0 };
        Stats {
            device: self.device.name.clone(),
            cycles,
            ns,
            commands: k.commands_map(),
            total_commands: k.commands.iter().sum(),
            refreshes: self.refreshes,
            bank_activations: k.bank_activations,
            bank_column_accesses: k.bank_column_accesses,
            row_hits: k.bank_column_accesses - row_misses,
            row_misses,
            bytes_internal,
            bytes_external: k.bytes_external,
            bytes_buffer: k.bytes_buffer,
            bytes_buffer_die: k.bytes_buffer_die,
            lane_ops: k.lane_ops,
            internal_gbps: gbps(bytes_internal),
            external_gbps: gbps(k.bytes_external),
            energy: energy(&self.device, k, self.refreshes),
        }
    }
}
