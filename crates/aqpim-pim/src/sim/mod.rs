//! The simulator: runs a program on a device, issuing every command at its
//! earliest legal cycle (in program order per channel, channels in parallel),
//! inserting refresh, enforcing bank state strictly, computing results in
//! functional mode, and counting everything for [`Stats`].

mod functional;
mod loader;
mod validate;

use serde::{Deserialize, Serialize};

use self::validate::{check_program, Checked};
use crate::banks::Banks;
use crate::bounds::{trace_limit, MAX_PROGRAM_STEPS, MAX_REFRESHES, MAX_TRACE_ENTRIES};
use crate::command::{Command, Scope};
use crate::error::{PimError, Result};
use crate::isa::table::Target;
use crate::isa::{argmin_centroids, BankSel, CodeBits, Instr, Program};
use crate::memory::Memory;
use crate::resolve::Device;
use crate::stats::{Counters, RegionStats, Stats};
use crate::timing::{ChannelTiming, Tables};
use crate::trace::TraceEntry;
use crate::units::{column_work, UnitKind};

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

#[derive(Debug, Clone)]
struct Channel {
    timing: ChannelTiming,
    banks: Banks,
    last_issue: Option<u64>,
    /// No command may issue before this cycle (barriers, occupancy).
    floor: u64,
    next_refresh: u64,
    /// One past the last cycle any command of this channel occupies.
    end: u64,
    /// No all-bank column command may issue before this cycle: the previous
    /// one's interval (its unit's work, nCCDAB, the power limit).
    pim_free: u64,
}

/// The simulator of one device.
#[derive(Debug, Clone)]
pub struct Simulator {
    device: Device,
    tables: Tables,
    channels: Vec<Channel>,
    func: Memory,
    opts: SimOptions,
    host_data: Vec<u8>,
    /// Most instructions one run may execute ([`MAX_PROGRAM_STEPS`] unless
    /// [`Simulator::set_step_limit`] says otherwise).
    step_limit: u64,
    /// Counters of the current run per region (see [`Simulator::run_regions`]),
    /// the last one for the commands the simulator inserts.
    counters: Vec<Counters>,
    /// Region of the instruction being run.
    region: usize,
    /// Cycles by which each region's commands pushed back each channel's
    /// end, `[region][channel]`.
    advance: Vec<Vec<u64>>,
    refreshes: u64,
    trace: Vec<TraceEntry>,
    /// Set when an entry could not be recorded ([`MAX_TRACE_ENTRIES`]).
    trace_full: bool,
}

/// Operand and cost of one scheduled command: what its trace entry
/// records, how long it holds the channel, and what it adds to the counters.
#[derive(Debug, Clone, Copy, Default)]
struct Operand {
    row: u32,
    col: u16,
    len: u32,
    /// Cycles the command occupies the channel after issue (MVD, MVB, SFM,
    /// CLR, RED, RDD).
    busy: u64,
    /// All-bank column commands: cycles until the next one may issue
    /// ([`Device::pim_interval`]); 0 otherwise.
    pim_busy: u64,
    /// Operations each bank's unit performs (all-bank column commands).
    work: u64,
    /// Bytes across the external interface, through the bank buffers, and
    /// between the banks and the buffer die.
    bytes: [u64; 3],
}

/// The work one bank does for an all-bank column instruction of command
/// `cmd` ([`column_work`]): lanes for MAC and BINMAC, codes per column for
/// LUTACC, HISTACC and QMAC (none for LDP), `dsub x 2^nbits` distance terms
/// for ARGMIN.
fn unit_work(d: &Device, cmd: Command, ins: &Instr) -> u64 {
    let (bits, terms) = match *ins {
        Instr::LutAcc { bits, .. } | Instr::HistAcc { bits, .. } => (bits.bits(), 0),
        Instr::QMac { bits, .. } => (bits.into(), 0),
        Instr::ArgMin { dsub, nbits, .. } => (0, argmin_centroids(nbits) * u64::from(dsub)),
        _ => (16, 0),
    };
    column_work(cmd, d.org.column_bytes as u64, bits, terms)
}

impl Simulator {
    /// A fresh device: every bank closed, every array, buffer and register zero.
    pub fn new(device: &Device, opts: SimOptions) -> Simulator {
        let tables = Tables::new(device);
        let interval = device.refresh_interval.map_or(u64::MAX, u64::from);
        let ch = Channel {
            timing: ChannelTiming::new(&tables),
            banks: Banks::new(device.org.banks_per_channel),
            last_issue: None,
            floor: 0,
            next_refresh: interval,
            end: 0,
            pim_free: 0,
        };
        Simulator {
            channels: vec![ch; device.org.channels],
            func: Memory::new(device),
            device: device.clone(),
            tables,
            opts,
            host_data: Vec::new(),
            step_limit: MAX_PROGRAM_STEPS,
            counters: Vec::new(),
            region: 0,
            advance: Vec::new(),
            refreshes: 0,
            trace: Vec::new(),
            trace_full: false,
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
        self.trace_full = false;
        std::mem::take(&mut self.trace)
    }

    /// The row open in a bank, if any.
    pub fn open_row(&self, ch: usize, bank: BankSel) -> Result<Option<u32>> {
        let b = self.local(ch, bank)?;
        Ok(self.channels[ch].banks.open()[b])
    }

    /// Runs a program to completion and returns its statistics. State (open
    /// rows, data, the clock) carries over from earlier runs. On an error the
    /// state is that of the commands before the failing one.
    pub fn run(&mut self, program: &Program) -> Result<Stats> {
        Ok(self.run_inner(program, None)?.total)
    }

    /// [`Simulator::run`], with the statistics also split by region:
    /// `region_of[i]` names the region of instruction `i` (every command a
    /// loop body issues belongs to its instruction's region). See
    /// [`RegionStats`] for how time is attributed.
    pub fn run_regions(&mut self, program: &Program, region_of: &[u16]) -> Result<RegionStats> {
        if region_of.len() != program.instrs().len() {
            return Err(PimError::Program {
                index: region_of.len().min(program.instrs().len()),
                instr: String::new(),
                reason: format!(
                    "{} region marks for {} instructions",
                    region_of.len(),
                    program.instrs().len()
                ),
            });
        }
        self.run_inner(program, Some(region_of))
    }

    fn run_inner(&mut self, program: &Program, region_of: Option<&[u16]>) -> Result<RegionStats> {
        let checked = check_program(program, &self.device, self.host_data.len(), self.step_limit)?;
        if self.opts.record_trace {
            let commands = program.checked_command_count()?;
            if (self.trace.len() as u64).saturating_add(commands) > MAX_TRACE_ENTRIES {
                return Err(trace_limit());
            }
        }
        let regions = region_of
            .and_then(|r| r.iter().max())
            .map_or(1, |&m| usize::from(m) + 1);
        // Regions, then one for inserted commands.
        self.counters = vec![Counters::default(); regions + 1];
        self.advance = vec![vec![0; self.channels.len()]; regions + 1];
        self.region = 0;
        self.refreshes = 0;
        let start = self.channels.iter().map(|c| c.end).max().unwrap_or(0);
        self.execute(&checked, region_of)?;
        Ok(self.region_stats(start))
    }

    fn execute(&mut self, p: &Checked, region_of: Option<&[u16]>) -> Result<()> {
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
                ins => {
                    if let Some(r) = region_of {
                        self.region = usize::from(r[pc]);
                    }
                    self.exec(ins, &offs)?
                }
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

    /// Runs one command instruction under loop offsets `offs`: the
    /// concrete instruction (offsets applied) is checked, timed, issued,
    /// counted and, in functional mode, computed.
    fn exec(&mut self, ins: &Instr, offs: &[i64; 6]) -> Result<()> {
        let concrete = ins.offset_by(offs).ok_or_else(|| PimError::Program {
            index: 0,
            instr: ins.to_string(),
            reason: "an address leaves its field under the loop strides".into(),
        })?;
        let ins = &concrete;
        let target = ins.target();
        let (Some(cmd), Some(ch)) = (ins.spec().command, target.ch) else {
            return Ok(()); // BARRIER, LOOP and ENDLOOP are handled by `execute`
        };
        let ch = usize::from(ch);
        let bank = target
            .bank
            .and_then(|b| self.device.org.bank_index(b))
            .unwrap_or(0);
        let functional = self.opts.mode == Mode::Functional;
        // STC checks its codes before anything issues, so that on an error
        // the state is that of the commands before this one.
        let codes = match *ins {
            Instr::Stc { reg, bits, .. } if functional => {
                self.prerequisite(cmd, ch, bank)?;
                Some(self.stc_codes(ins, ch, bank, reg.into(), bits)?)
            }
            _ => None,
        };
        let op = self.operand(cmd, ins, &target);
        self.schedule(cmd, ch, bank, op)?;
        if functional {
            let open = self.channels[ch].banks.open();
            match (codes, *ins) {
                (Some(d), Instr::Stc { col, .. }) => {
                    let gb = ch * self.device.org.banks_per_channel + bank;
                    self.func.wr(gb, open[bank].unwrap_or(0), col.into(), &d);
                }
                _ => self.func.exec(ins, bank, open, &self.host_data),
            }
        }
        Ok(())
    }

    /// STC's column: the codes that registers `reg..` of the bank hold, or
    /// an error naming the first register that is not a `bits`-bit code.
    fn stc_codes(
        &self,
        ins: &Instr,
        ch: usize,
        bank: usize,
        reg: usize,
        bits: CodeBits,
    ) -> Result<Vec<u8>> {
        let gb = ch * self.device.org.banks_per_channel + bank;
        self.func
            .stc_column(gb, reg, bits)
            .map_err(|(r, v)| PimError::Data {
                instr: ins.to_string(),
                target: self.target_text(Command::Stc, ch, bank),
                reason: format!(
                    "register {r} holds {v}, not a {}-bit code (an integer in 0..{})",
                    bits.bits(),
                    bits.table_len()
                ),
            })
    }

    /// The operand and cost of a concrete instruction. All-bank column
    /// commands record their work per bank in `len` (the operations their
    /// unit performs for one column); MVB's `broadcast` and CLR's `die` set
    /// bit 31 of it.
    fn operand(&self, cmd: Command, ins: &Instr, target: &Target) -> Operand {
        let d = &self.device;
        let (banks, cb) = (d.org.banks_per_channel as u64, d.org.column_bytes as u64);
        let work = unit_work(d, cmd, ins);
        let flagged = |len: u16, flag: bool| u64::from(len) | if flag { 1 << 31 } else { 0 };
        // (trace len, busy cycles, bytes [external, buffer, buffer die])
        let (len, busy, bytes) = match *ins {
            Instr::Rd { .. } | Instr::Wr { .. } => (0, 0, [cb, 0, 0]),
            Instr::Wrgb { .. } => (0, 0, [cb, banks * cb, 0]),
            Instr::Mac { bcast, .. } => (work, 0, [0, banks * if bcast { 2 } else { 2 * work }, 0]),
            Instr::LutAcc { .. } | Instr::ArgMin { .. } => (work, 0, [0, banks * work * 2, 0]),
            Instr::HistAcc { group, .. } => {
                (work, 0, [0, banks * work.div_ceil(group.into()) * 2, 0])
            }
            Instr::QMac { reduce, .. } => {
                (work, 0, [0, banks * if reduce { 2 * work } else { 2 }, 0])
            }
            Instr::BinMac { .. } | Instr::Ldp { .. } => (work, 0, [0; 3]),
            Instr::Mvd { len, .. } => {
                let to_die = banks * u64::from(len) * 4;
                (len.into(), d.mv_cycles(to_die), [0, 0, to_die])
            }
            Instr::Mvb { len, broadcast, .. } => {
                let from_die = if broadcast { 1 } else { banks } * u64::from(len) * 2;
                let to_banks = banks * u64::from(len) * 2;
                (
                    flagged(len, broadcast),
                    d.mv_cycles(from_die),
                    [0, to_banks, from_die],
                )
            }
            Instr::Sfm { len, .. } => (len.into(), d.sfm_cycles(len.into()), [0; 3]),
            Instr::Clr { len, die, .. } => {
                (flagged(len, die), d.clr_cycles(len.into(), die), [0; 3])
            }
            Instr::Red { len, .. } => {
                let bytes = [0, 0, 4 * banks * u64::from(len)];
                (len.into(), d.red_cycles(len.into()), bytes)
            }
            Instr::Rdd { len, .. } => (
                len.into(),
                d.rdd_cycles(len.into()),
                [4 * u64::from(len), 0, 0],
            ),
            _ => (0, 0, [0; 3]),
        };
        let pim_busy = if cmd.is_pim_column() {
            d.pim_interval(cmd, work)
        } else {
            0
        };
        Operand {
            row: target.row,
            col: target.col,
            len: len as u32,
            busy,
            pim_busy,
            work,
            bytes,
        }
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
        let state = self.channels[ch].banks.prerequisite(cmd, bank);
        state.map_err(|(rule, reason)| PimError::State {
            cmd: cmd.name(),
            target: self.target_text(cmd, ch, bank),
            rule,
            reason,
            earliest: None,
        })
    }

    #[inline]
    fn earliest(&self, cmd: Command, ch: usize, bank: usize) -> u64 {
        let c = &self.channels[ch];
        let (t, _) = c.timing.earliest(&self.tables, cmd, bank);
        let t = t.max(c.floor).max(c.last_issue.map_or(0, |l| l + 1));
        if cmd.is_pim_column() {
            t.max(c.pim_free)
        } else {
            t
        }
    }

    /// Checks, times and issues one program command; returns its cycle.
    fn schedule(&mut self, cmd: Command, ch: usize, bank: usize, op: Operand) -> Result<u64> {
        self.prerequisite(cmd, ch, bank)?;
        let mut t = self.earliest(cmd, ch, bank);
        if self.opts.refresh && t >= self.channels[ch].next_refresh {
            self.refresh(ch, t)?;
            t = self.earliest(cmd, ch, bank);
        }
        self.issue(cmd, ch, bank, t, op, false);
        if self.trace_full {
            return Err(trace_limit());
        }
        Ok(t)
    }

    /// Inserts the refreshes due by cycle `until` on channel `ch`: close the
    /// open rows (PREAB), REF once per elapsed tREFI, then reopen the rows
    /// (one ACTAB if every bank had the same row open, else one ACT per bank).
    fn refresh(&mut self, ch: usize, until: u64) -> Result<()> {
        let interval = self.device.refresh_interval.map_or(u64::MAX, u64::from);
        let banks = &self.channels[ch].banks;
        let snapshot = banks.any_open().then(|| banks.open().to_vec());
        while until >= self.channels[ch].next_refresh {
            let due = self.channels[ch].next_refresh;
            if self.channels[ch].banks.any_open() {
                let t = self.earliest(Command::PreAb, ch, 0).max(due);
                self.issue(Command::PreAb, ch, 0, t, Operand::default(), true);
            }
            let t = self.earliest(Command::Ref, ch, 0).max(due);
            self.issue(Command::Ref, ch, 0, t, Operand::default(), true);
            self.refreshes += 1;
            if self.refreshes > MAX_REFRESHES {
                return Err(PimError::Limit {
                    what: "refreshes inserted in one run",
                    limit: MAX_REFRESHES,
                });
            }
            self.channels[ch].next_refresh = due.saturating_add(interval);
        }
        if let Some(open) = snapshot {
            // One ACTAB when every bank had the same row open, else one ACT
            // per open bank.
            let uniform = open.iter().all(|r| r.is_some() && *r == open[0]);
            let (cmd, n) = if uniform {
                (Command::ActAb, 1)
            } else {
                (Command::Act, open.len())
            };
            for (b, r) in open.iter().enumerate().take(n) {
                if let Some(row) = *r {
                    let t = self.earliest(cmd, ch, b);
                    let op = Operand {
                        row,
                        ..Default::default()
                    };
                    self.issue(cmd, ch, b, t, op, true);
                }
            }
        }
        Ok(())
    }

    /// Issues `cmd` at cycle `t`: the channel's timing, occupancy and bank
    /// state move on, the command is counted (in the inserted commands'
    /// region when `auto`) and recorded in the trace.
    fn issue(&mut self, cmd: Command, ch: usize, bank: usize, t: u64, op: Operand, auto: bool) {
        let region = if auto {
            self.counters.len() - 1
        } else {
            self.region
        };
        let c = &mut self.channels[ch];
        c.timing.issue(&self.tables, cmd, bank, t);
        c.last_issue = Some(t);
        let before = c.end;
        c.end = c.end.max(t + 1);
        if op.busy > 0 {
            c.floor = c.floor.max(t + op.busy);
            c.end = c.end.max(t + op.busy);
        }
        if op.pim_busy > 0 {
            c.pim_free = c.pim_free.max(t + op.pim_busy);
        }
        self.advance[region][ch] += c.end - before;
        let row = c.banks.apply(cmd, bank, op.row);
        self.count(region, cmd, &op);
        if self.opts.record_trace {
            if self.trace.len() as u64 >= MAX_TRACE_ENTRIES {
                self.trace_full = true;
                return;
            }
            let bank = if cmd.scope() == Scope::Bank {
                bank as u16
            } else {
                0
            };
            self.trace.push(TraceEntry {
                cycle: t,
                cmd,
                channel: ch as u16,
                bank,
                row,
                col: op.col,
                len: op.len,
                auto,
            });
        }
    }

    /// Adds an issued command to region `region`'s counters: the command,
    /// the bank activations and column accesses it makes, its units'
    /// operations and the bytes it moves.
    fn count(&mut self, region: usize, cmd: Command, op: &Operand) {
        let banks = self.device.org.banks_per_channel as u64;
        let k = &mut self.counters[region];
        k.commands[cmd.index()] += 1;
        match cmd {
            Command::Act => k.bank_activations += 1,
            Command::ActAb => k.bank_activations += banks,
            Command::Rd | Command::Wr | Command::Stc => k.bank_column_accesses += 1,
            _ if cmd.is_pim_column() => k.bank_column_accesses += banks,
            _ => {}
        }
        if let Some(kind) = UnitKind::of(cmd) {
            k.lane_ops += banks * op.work;
            k.unit_ops[kind as usize] += banks * op.work;
        }
        k.bytes_external += op.bytes[0];
        k.bytes_buffer += op.bytes[1];
        k.bytes_buffer_die += op.bytes[2];
        if cmd == Command::Sfm {
            k.sfm_elements += u64::from(op.len);
        }
    }

    /// The run's statistics: the whole run from `start`, and per region on
    /// the critical channel.
    fn region_stats(&self, start: u64) -> RegionStats {
        let end = self.channels.iter().map(|c| c.end).max().unwrap_or(0);
        // The first channel among those that finish last.
        let critical = self.channels.iter().position(|c| c.end == end).unwrap_or(0);
        let mut all = Counters::default();
        for k in &self.counters {
            all.add(k);
        }
        let inserted = self.counters.len() - 1;
        let regions = (0..inserted)
            .map(|r| self.counters[r].stats(&self.device, 0, self.advance[r][critical]))
            .collect();
        RegionStats {
            total: all.stats(&self.device, self.refreshes, end.saturating_sub(start)),
            regions,
            inserted: self.counters[inserted].stats(
                &self.device,
                self.refreshes,
                self.advance[inserted][critical],
            ),
        }
    }
}
