//! The independent trace checker: validates a finished command trace against
//! a device's rules by a different algorithm from the scheduler's. The
//! scheduler pushes ready cycles forward when a command issues (lifting
//! all-bank rules to the channel node); the checker replays the bank state
//! itself, remembers where and when each command last issued, and for every
//! command evaluates each rule row that names it as the following command
//! against the latest preceding command at the rule's node. A scheduler bug
//! therefore shows up as a checker failure rather than being repeated by it.
//!
//! The work per entry is bounded by the number of rule rows (a windowed rule
//! keeps its last `window` issue cycles per node), so a check takes time
//! linear in the trace whatever the device's timing values are.

use std::collections::VecDeque;

use crate::command::{Command, Scope, NUM_COMMANDS};
use crate::error::{PimError, Result};
use crate::resolve::Device;
use crate::trace::TraceEntry;

/// Checks `trace` (in issue order, as [`Simulator::trace`](crate::Simulator::trace)
/// records it, from a fresh device) against `device`: per channel, one command
/// per cycle in increasing cycle order; bank-state prerequisites (a column
/// access names the open row); no command
/// during an MVD/MVB/SFM/CLR/RED/RDD occupancy; and every timing rule, windowed ones
/// included. Returns the first violation.
pub fn check_trace(device: &Device, trace: &[TraceEntry]) -> Result<()> {
    let o = &device.org;
    let idx = RuleIndex::new(device);
    let mut channels: Vec<Option<ChannelState>> = vec![None; o.channels];
    for (j, e) in trace.iter().enumerate() {
        let ch = usize::from(e.channel);
        let fail = |rule: &str, detail: String| PimError::Trace {
            index: j,
            cmd: e.cmd.name(),
            channel: ch,
            cycle: e.cycle,
            rule: rule.to_string(),
            detail,
        };
        if ch >= o.channels {
            return Err(fail("organisation", format!("channel {ch} does not exist")));
        }
        let bank_scope = e.cmd.scope() == Scope::Bank;
        if bank_scope && usize::from(e.bank) >= o.banks_per_channel {
            return Err(fail(
                "organisation",
                format!("bank {} does not exist", e.bank),
            ));
        }
        let c = channels[ch].get_or_insert_with(|| ChannelState::new(device, idx.windows.len()));
        if let Some((prev, cycle)) = c.last_entry {
            if cycle >= e.cycle {
                return Err(fail(
                    "command-bus",
                    format!("entry {prev} issued at cycle {cycle} on the same channel"),
                ));
            }
        }
        if e.cycle < c.busy_until {
            return Err(fail(
                "channel-busy",
                format!("the channel is occupied until cycle {}", c.busy_until),
            ));
        }
        bank_state(&mut c.open, e, &fail)?;
        timing_rules(device, &idx, c, j, e, &fail)?;
        // The interval of all-bank column commands (their units, the
        // power limit), checked after the rules so that a rule names itself.
        if e.cmd.is_pim_column() {
            if e.cycle < c.pim_free {
                return Err(fail(
                    "unit-interval",
                    format!(
                        "the previous all-bank column command's unit is busy until cycle {}",
                        c.pim_free
                    ),
                ));
            }
            c.pim_free = e.cycle + unit_interval(device, e.cmd, u64::from(e.len));
        }
        c.busy_until = c
            .busy_until
            .max(e.cycle.saturating_add(occupancy(device, e)));
        c.last_entry = Some((j, e.cycle));
    }
    Ok(())
}

/// A violation of the entry being checked: the rule, and what broke it.
type Fail<'a> = dyn Fn(&str, String) -> PimError + 'a;

/// The device's rules indexed by command: which constrain each command as
/// the following one, and the windowed rules (a slot each) by preceding
/// command.
struct RuleIndex {
    /// `following[f]`: indices of the rules that constrain `f`.
    following: Vec<Vec<usize>>,
    /// Slot of each window rule (`usize::MAX` for the others).
    window_slot: Vec<usize>,
    /// `windows_of[p]`: the window rules whose preceding list holds `p`.
    windows_of: Vec<Vec<usize>>,
    /// The window rules, by slot.
    windows: Vec<usize>,
}

impl RuleIndex {
    fn new(device: &Device) -> RuleIndex {
        let mut x = RuleIndex {
            following: vec![Vec::new(); NUM_COMMANDS],
            window_slot: vec![usize::MAX; device.rules.len()],
            windows_of: vec![Vec::new(); NUM_COMMANDS],
            windows: Vec::new(),
        };
        for (i, r) in device.rules.iter().enumerate() {
            for f in &r.following {
                if !x.following[f.index()].contains(&i) {
                    x.following[f.index()].push(i);
                }
            }
            if r.window > 1 {
                x.window_slot[i] = x.windows.len();
                x.windows.push(i);
                for p in &r.preceding {
                    x.windows_of[p.index()].push(i);
                }
            }
        }
        x
    }
}

/// The bank-state prerequisites of `e` against the channel's open rows
/// `st` (a column command reads or writes the row it records, which must be
/// the open one), then `e`'s effect on them.
fn bank_state(st: &mut [Option<u32>], e: &TraceEntry, fail: &Fail<'_>) -> Result<()> {
    let b = usize::from(e.bank);
    match e.cmd {
        Command::Act if st[b].is_some() => {
            return Err(fail("bank-closed", "ACT to an open bank".into()))
        }
        Command::Rd | Command::Wr | Command::Stc if st[b].is_none() => {
            return Err(fail("row-open", "column access to a closed bank".into()))
        }
        Command::Rd | Command::Wr | Command::Stc if st[b] != Some(e.row) => {
            return Err(fail(
                "row-open",
                format!(
                    "column access to row {} while row {} is open",
                    e.row,
                    st[b].unwrap_or_default()
                ),
            ))
        }
        Command::ActAb | Command::Ref if st.iter().any(Option::is_some) => {
            return Err(fail("all-banks-closed", "a bank is open".into()))
        }
        c if c.is_pim_column() && st.iter().any(Option::is_none) => {
            return Err(fail("all-banks-open", "a bank is closed".into()))
        }
        _ => {}
    }
    match e.cmd {
        Command::Act => st[b] = Some(e.row),
        Command::Pre => st[b] = None,
        Command::ActAb => st.iter_mut().for_each(|r| *r = Some(e.row)),
        Command::PreAb => st.iter_mut().for_each(|r| *r = None),
        _ => {}
    }
    Ok(())
}

/// Every timing rule that constrains `e` (entry `j`), against the latest
/// preceding command that shares the rule's node (an all-bank command on
/// either side shares every node); then `e` is remembered where later
/// entries look for it.
fn timing_rules(
    device: &Device,
    idx: &RuleIndex,
    c: &mut ChannelState,
    j: usize,
    e: &TraceEntry,
    fail: &Fail<'_>,
) -> Result<()> {
    let bank_scope = e.cmd.scope() == Scope::Bank;
    let b = usize::from(e.bank);
    let path = if bank_scope {
        device.org.bank_path(b)
    } else {
        [0; 5]
    };
    for &r in &idx.following[e.cmd.index()] {
        let rule = &device.rules[r];
        let level = rule.level as usize;
        if rule.window > 1 {
            let h = &c.windows[idx.window_slot[r]][path[level]];
            let w = rule.window as usize;
            if h.len() >= w && e.cycle - h[h.len() - w] < u64::from(rule.latency) {
                return Err(fail(
                    &rule.name,
                    format!(
                        "{w} {} commands within {} cycles",
                        names(&rule.preceding),
                        rule.latency
                    ),
                ));
            }
            continue;
        }
        // Latest (cycle, entry, command) among the rule's preceding commands.
        let mut latest: Option<(u64, usize, Command)> = None;
        for p in &rule.preceding {
            let last = if p.scope() == Scope::Channel {
                c.last_all_bank[p.index()]
            } else if bank_scope {
                c.last_at[level][path[level]][p.index()]
            } else {
                c.last_at[0][0][p.index()]
            };
            if let Some((t, i)) = last {
                if latest.is_none_or(|(lt, _, _)| t > lt) {
                    latest = Some((t, i, *p));
                }
            }
        }
        if let Some((t, i, p)) = latest {
            let gap = e.cycle - t;
            if gap < u64::from(rule.latency) {
                return Err(fail(
                    &rule.name,
                    format!(
                        "{} {gap} cycles earlier (entry {i}); the rule needs {}",
                        p.name(),
                        rule.latency
                    ),
                ));
            }
        }
    }
    if bank_scope {
        for (level, last) in c.last_at.iter_mut().enumerate() {
            last[path[level]][e.cmd.index()] = Some((e.cycle, j));
        }
        for &r in &idx.windows_of[e.cmd.index()] {
            let rule = &device.rules[r];
            let h = &mut c.windows[idx.window_slot[r]][path[rule.level as usize]];
            h.push_back(e.cycle);
            if h.len() > rule.window as usize {
                h.pop_front();
            }
        }
    } else {
        c.last_all_bank[e.cmd.index()] = Some((e.cycle, j));
    }
    Ok(())
}

/// Cycles a buffer-die command (MVD, MVB, SFM, CLR, RED, RDD) occupies its
/// channel, recomputed from its operands; zero for the others.
fn occupancy(device: &Device, e: &TraceEntry) -> u64 {
    let banks = device.org.banks_per_channel;
    let len = u64::from(e.len & !TraceEntry::BROADCAST);
    match e.cmd {
        Command::Mvd => (banks as u64 * len * 4).div_ceil(u64::from(device.pim.mv_bytes_per_cycle)),
        Command::Mvb => {
            let per = if e.len & TraceEntry::BROADCAST != 0 {
                len
            } else {
                banks as u64 * len
            };
            (per * 2).div_ceil(u64::from(device.pim.mv_bytes_per_cycle))
        }
        Command::Sfm => {
            len.div_ceil(u64::from(device.pim.sfm_elements_per_cycle))
                + u64::from(device.pim.sfm_latency)
        }
        Command::Clr if e.len & TraceEntry::DIE != 0 => {
            (4 * len).div_ceil(u64::from(device.pim.mv_bytes_per_cycle))
        }
        Command::Clr => len.div_ceil(device.pim.lanes as u64),
        Command::Red => (banks as u64 * len).div_ceil(u64::from(device.pim.sfm_elements_per_cycle)),
        Command::Rdd => (4 * len).div_ceil(device.external_bytes_per_cycle()),
        _ => 0,
    }
}

/// Cycles an all-bank column command with `work` operations per bank holds
/// the next one back, recomputed from the device's unit table: `max(nCCDAB,
/// ceil(work x banks_per_unit / ops_per_cycle))`, and under the power limit
/// at least the cycles that keep the stack's power within its budget.
fn unit_interval(device: &Device, cmd: Command, work: u64) -> u64 {
    let mut t = u64::from(device.pim.n_ccdab);
    if let Some(u) = crate::units::UnitKind::of(cmd).and_then(|k| device.units.get(k)) {
        let ops = work * u64::from(u.banks_per_unit);
        t = t.max(ops.div_ceil(u64::from(u.ops_per_cycle)));
    }
    if device.pim.power_limited {
        let per_cycle = device.units.die.stack_power_budget_w * f64::from(device.t_ck_ps);
        let need = (device.stack_op_pj(cmd, work) / per_cycle - 1e-9)
            .ceil()
            .max(1.0);
        t = t.max(need as u64);
    }
    t
}

/// Last issue of a command: `(cycle, trace entry)`.
type Last = Option<(u64, usize)>;

/// What the checker remembers of one channel.
#[derive(Debug, Clone)]
struct ChannelState {
    /// The channel's latest entry: `(trace entry, cycle)`.
    last_entry: Option<(usize, u64)>,
    open: Vec<Option<u32>>,
    busy_until: u64,
    /// Earliest cycle of the next all-bank column command.
    pim_free: u64,
    /// Last issue of each all-bank command.
    last_all_bank: [Last; NUM_COMMANDS],
    /// `last_at[level][node][command]`: last issue of each single-bank
    /// command in each node of each level (level 0: the whole channel).
    last_at: Vec<Vec<[Last; NUM_COMMANDS]>>,
    /// `windows[w][node]`: issue cycles of the last `window` preceding
    /// commands of window rule `w` in each node of its level (at most
    /// `window` each, so bounded by the trace, never by the rule's numbers).
    windows: Vec<Vec<VecDeque<u64>>>,
}

impl ChannelState {
    fn new(device: &Device, windows: usize) -> ChannelState {
        let nodes = device.org.nodes_per_channel();
        ChannelState {
            last_entry: None,
            open: vec![None; device.org.banks_per_channel],
            busy_until: 0,
            pim_free: 0,
            last_all_bank: [None; NUM_COMMANDS],
            last_at: nodes
                .iter()
                .map(|&n| vec![[None; NUM_COMMANDS]; n])
                .collect(),
            windows: device
                .rules
                .iter()
                .filter(|r| r.window > 1)
                .map(|r| vec![VecDeque::new(); nodes[r.level as usize]])
                .take(windows)
                .collect(),
        }
    }
}

/// Command names joined with `/`.
fn names(cmds: &[Command]) -> String {
    cmds.iter().map(|c| c.name()).collect::<Vec<_>>().join("/")
}
