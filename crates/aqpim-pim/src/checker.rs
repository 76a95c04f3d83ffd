//! The independent trace checker: validates a finished command trace against
//! a device's rules by a different algorithm from the scheduler's. The
//! scheduler keeps incremental per-node ready cycles; the checker replays the
//! bank state itself and, for every command, scans the earlier commands of its
//! channel pairwise against every rule row. A scheduler bug therefore shows up
//! as a checker failure rather than being repeated by it.

use crate::command::{Command, Scope, NUM_COMMANDS};
use crate::error::{PimError, Result};
use crate::resolve::Device;
use crate::sim::TraceEntry;

/// Checks `trace` (in issue order, as [`Simulator::trace`](crate::Simulator::trace)
/// records it, from a fresh device) against `device`: per channel, one command
/// per cycle in increasing cycle order; bank-state prerequisites; no command
/// during an MVD/MVB/SFM/CLR/RED/RDD occupancy; and every timing rule, windowed ones
/// included. Returns the first violation.
pub fn check_trace(device: &Device, trace: &[TraceEntry]) -> Result<()> {
    let o = &device.org;
    let banks = o.banks_per_channel;
    // rules_for[p][f]: indices of the rules relating p to f.
    let mut rules_for = vec![vec![Vec::new(); NUM_COMMANDS]; NUM_COMMANDS];
    for (i, r) in device.rules.iter().enumerate() {
        for p in &r.preceding {
            for f in &r.following {
                rules_for[p.index()][f.index()].push(i);
            }
        }
    }
    let horizon = device
        .rules
        .iter()
        .map(|r| u64::from(r.latency))
        .max()
        .unwrap_or(0);

    // Per channel: indices of its entries so far, open rows, busy-until.
    let mut history: Vec<Vec<usize>> = vec![Vec::new(); o.channels];
    let mut open: Vec<Vec<Option<u32>>> = vec![vec![None; banks]; o.channels];
    let mut busy_until = vec![0u64; o.channels];

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
        if e.cmd.scope() == Scope::Bank && usize::from(e.bank) >= banks {
            return Err(fail(
                "organisation",
                format!("bank {} does not exist", e.bank),
            ));
        }
        if let Some(&prev) = history[ch].last() {
            if trace[prev].cycle >= e.cycle {
                return Err(fail(
                    "command-bus",
                    format!(
                        "entry {prev} issued at cycle {} on the same channel",
                        trace[prev].cycle
                    ),
                ));
            }
        }
        if e.cycle < busy_until[ch] {
            return Err(fail(
                "channel-busy",
                format!("the channel is occupied until cycle {}", busy_until[ch]),
            ));
        }

        // Bank state.
        let st = &mut open[ch];
        let b = usize::from(e.bank);
        match e.cmd {
            Command::Act if st[b].is_some() => {
                return Err(fail("bank-closed", "ACT to an open bank".into()))
            }
            Command::Rd | Command::Wr | Command::Stc if st[b].is_none() => {
                return Err(fail("row-open", "column access to a closed bank".into()))
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

        // Timing rules, pairwise against the channel's recent commands.
        let same_node = |a: &TraceEntry, level: usize| -> bool {
            if level == 0 || a.cmd.scope() == Scope::Channel || e.cmd.scope() == Scope::Channel {
                return true;
            }
            o.bank_path(usize::from(a.bank))[level] == o.bank_path(usize::from(e.bank))[level]
        };
        let mut window_counts = vec![0u32; device.rules.len()];
        for &i in history[ch].iter().rev() {
            let a = &trace[i];
            let gap = e.cycle - a.cycle;
            if gap >= horizon {
                break;
            }
            for &r in &rules_for[a.cmd.index()][e.cmd.index()] {
                let rule = &device.rules[r];
                if gap >= u64::from(rule.latency) || !same_node(a, rule.level as usize) {
                    continue;
                }
                if rule.window <= 1 {
                    return Err(fail(
                        &rule.name,
                        format!(
                            "{} {} cycles earlier (entry {i}); the rule needs {}",
                            a.cmd.name(),
                            gap,
                            rule.latency
                        ),
                    ));
                }
                window_counts[r] += 1;
                if window_counts[r] >= rule.window {
                    return Err(fail(
                        &rule.name,
                        format!(
                            "{} {} commands within {} cycles",
                            window_counts[r],
                            a.cmd.name(),
                            rule.latency
                        ),
                    ));
                }
            }
        }

        // Occupancy of buffer-die commands, recomputed from the operands.
        let len = u64::from(e.len & !TraceEntry::BROADCAST);
        let busy = match e.cmd {
            Command::Mvd => {
                (banks as u64 * len * 4).div_ceil(u64::from(device.pim.mv_bytes_per_cycle))
            }
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
            Command::Red => {
                (banks as u64 * len).div_ceil(u64::from(device.pim.sfm_elements_per_cycle))
            }
            Command::Rdd => (4 * len).div_ceil(device.external_bytes_per_cycle()),
            _ => 0,
        };
        busy_until[ch] = busy_until[ch].max(e.cycle.saturating_add(busy));
        history[ch].push(j);
    }
    Ok(())
}
