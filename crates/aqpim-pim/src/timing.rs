//! DRAM timing: the rule engine of one channel, Ramulator 2 style. Every
//! node of every level keeps, per command, the earliest cycle at which that
//! command may issue there; issuing a command raises those cycles along the
//! rule rows. It knows commands, banks and a device's rule rows, nothing of
//! instructions or programs: the simulator (`sim/`) asks it when each
//! command may issue, and [`Timer`] exposes it alone for gate tests. The
//! trace checker (`checker.rs`) evaluates the same rows by its own algorithm.
//!
//! All-bank (channel-scope) commands act on every bank of the channel, so:
//! a rule whose preceding command is all-bank raises the channel node (the
//! constraint holds in every bank below it), and a rule whose following
//! command is all-bank is lifted to the channel node (the command must wait
//! for the slowest bank). Both are exact because readiness only ever grows.
//! Rolling-window rules (tFAW) relate single-bank commands only (resolve()
//! enforces it) and keep, per node, the issue cycles of the last `window`
//! preceding commands.

use std::collections::VecDeque;

use crate::command::{Command, Scope, NUM_COMMANDS};
use crate::error::{PimError, Result};
use crate::isa::BankSel;
use crate::resolve::Device;

#[derive(Debug, Clone, Copy)]
struct Edge {
    following: u8,
    latency: u32,
    rule: u16,
}

#[derive(Debug, Clone)]
struct WindowRule {
    level: usize,
    following: Vec<u8>,
    latency: u32,
    window: usize,
    rule: u16,
}

/// Rule tables compiled for fast lookup, shared by every channel.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    level_offset: [usize; 5],
    total_nodes: usize,
    /// Per channel-local bank: node index (into the flat node array) at each level.
    bank_nodes: Vec<[u32; 5]>,
    /// Single-bank preceding commands: edges per (level, command).
    bank_edges: Vec<Vec<Edge>>,
    /// Channel-scope preceding commands: merged edges per command.
    ab_edges: Vec<Vec<Edge>>,
    windows: Vec<WindowRule>,
    /// Window rules whose preceding list holds the command.
    window_of: Vec<Vec<usize>>,
    channel_scope: [bool; NUM_COMMANDS],
    pub(crate) rule_names: Vec<String>,
}

impl Tables {
    pub(crate) fn new(device: &Device) -> Tables {
        let o = &device.org;
        let counts = o.nodes_per_channel();
        let mut level_offset = [0usize; 5];
        let mut total = 0;
        for l in 0..5 {
            level_offset[l] = total;
            total += counts[l];
        }
        let bank_nodes = (0..o.banks_per_channel)
            .map(|b| {
                let p = o.bank_path(b);
                let mut n = [0u32; 5];
                for l in 0..5 {
                    n[l] = (level_offset[l] + p[l]) as u32;
                }
                n
            })
            .collect();
        let mut channel_scope = [false; NUM_COMMANDS];
        for c in Command::ALL {
            channel_scope[c.index()] = c.scope() == Scope::Channel;
        }
        let mut bank_edges = vec![Vec::new(); 5 * NUM_COMMANDS];
        let mut ab_edges: Vec<Vec<Edge>> = vec![Vec::new(); NUM_COMMANDS];
        let mut windows = Vec::new();
        let mut window_of = vec![Vec::new(); NUM_COMMANDS];
        for (ri, r) in device.rules.iter().enumerate() {
            let rule = ri as u16;
            let level = r.level as usize;
            if r.window > 1 {
                let w = windows.len();
                windows.push(WindowRule {
                    level,
                    following: r.following.iter().map(|c| c.index() as u8).collect(),
                    latency: r.latency,
                    window: r.window as usize,
                    rule,
                });
                for p in &r.preceding {
                    window_of[p.index()].push(w);
                }
                continue;
            }
            for p in &r.preceding {
                for f in &r.following {
                    let e = Edge {
                        following: f.index() as u8,
                        latency: r.latency,
                        rule,
                    };
                    if p.scope() == Scope::Channel {
                        let list = &mut ab_edges[p.index()];
                        match list.iter_mut().find(|x| x.following == e.following) {
                            Some(x) if x.latency < e.latency => *x = e,
                            Some(_) => {}
                            None => list.push(e),
                        }
                    } else {
                        bank_edges[level * NUM_COMMANDS + p.index()].push(e);
                    }
                }
            }
        }
        Tables {
            level_offset,
            total_nodes: total,
            bank_nodes,
            bank_edges,
            ab_edges,
            windows,
            window_of,
            channel_scope,
            rule_names: device.rules.iter().map(|r| r.name.clone()).collect(),
        }
    }
}

/// Timing state of one channel.
#[derive(Debug, Clone)]
pub(crate) struct ChannelTiming {
    ready: Vec<[u64; NUM_COMMANDS]>,
    why: Vec<[u16; NUM_COMMANDS]>,
    /// `history[w][node]`: issue cycles of the last `window` preceding commands.
    history: Vec<Vec<VecDeque<u64>>>,
}

impl ChannelTiming {
    pub(crate) fn new(t: &Tables) -> Self {
        ChannelTiming {
            ready: vec![[0; NUM_COMMANDS]; t.total_nodes],
            why: vec![[0; NUM_COMMANDS]; t.total_nodes],
            history: t
                .windows
                .iter()
                .map(|w| {
                    let n = if w.level + 1 < 5 {
                        t.level_offset[w.level + 1] - t.level_offset[w.level]
                    } else {
                        t.total_nodes - t.level_offset[4]
                    };
                    vec![VecDeque::new(); n]
                })
                .collect(),
        }
    }

    /// Earliest cycle the rules allow `cmd` (at `bank`, for single-bank
    /// commands), and the rule that sets it (`None` if no rule constrains it).
    #[inline]
    pub(crate) fn earliest(&self, t: &Tables, cmd: Command, bank: usize) -> (u64, Option<u16>) {
        let c = cmd.index();
        if t.channel_scope[c] {
            let at = self.ready[0][c];
            return (at, (at > 0).then(|| self.why[0][c]));
        }
        let mut best = 0u64;
        let mut why = None;
        for &n in &t.bank_nodes[bank] {
            let at = self.ready[n as usize][c];
            if at > best {
                best = at;
                why = Some(self.why[n as usize][c]);
            }
        }
        (best, why)
    }

    #[inline]
    fn raise(&mut self, node: usize, f: usize, at: u64, rule: u16) {
        let slot = &mut self.ready[node][f];
        if at > *slot {
            *slot = at;
            self.why[node][f] = rule;
        }
    }

    /// Records `cmd` issued at `clk` (the caller has checked legality).
    #[inline]
    pub(crate) fn issue(&mut self, t: &Tables, cmd: Command, bank: usize, clk: u64) {
        let c = cmd.index();
        if t.channel_scope[c] {
            for e in &t.ab_edges[c] {
                let (f, at, rule) = (e.following as usize, clk + u64::from(e.latency), e.rule);
                self.raise(0, f, at, rule);
            }
            return;
        }
        let nodes = t.bank_nodes[bank];
        for (level, &node) in nodes.iter().enumerate() {
            for e in &t.bank_edges[level * NUM_COMMANDS + c] {
                let f = e.following as usize;
                let target = if t.channel_scope[f] { 0 } else { node as usize };
                let (at, rule) = (clk + u64::from(e.latency), e.rule);
                self.raise(target, f, at, rule);
            }
        }
        for &w in &t.window_of[c] {
            let wr = &t.windows[w];
            let node = nodes[wr.level] as usize;
            let h = &mut self.history[w][node - t.level_offset[wr.level]];
            h.push_back(clk);
            if h.len() > wr.window {
                h.pop_front();
            }
            if h.len() == wr.window {
                let at = h[0] + u64::from(wr.latency);
                for &f in &wr.following {
                    self.raise(node, f as usize, at, wr.rule);
                }
            }
        }
    }
}

/// The timing rules of one channel as a stand-alone, strict engine: no bank
/// state, no command bus, no refresh; just the rule rows of a device. The
/// simulator uses the same engine per channel; tests probe it at `t - 1`
/// and `t`.
#[derive(Debug, Clone)]
pub struct Timer {
    tables: Tables,
    state: ChannelTiming,
    org: crate::resolve::Organisation,
}

impl Timer {
    /// A fresh channel of `device`.
    pub fn new(device: &Device) -> Timer {
        let tables = Tables::new(device);
        let state = ChannelTiming::new(&tables);
        Timer {
            tables,
            state,
            org: device.org.clone(),
        }
    }

    fn bank_index(&self, cmd: Command, bank: Option<BankSel>) -> Result<usize> {
        match (cmd.scope(), bank) {
            (Scope::Channel, _) => Ok(0),
            (Scope::Bank, Some(b)) => self
                .org
                .bank_index(b)
                .ok_or_else(|| PimError::Load(format!("bank {b:?} is outside the organisation"))),
            (Scope::Bank, None) => Err(PimError::Load(format!("{} needs a bank", cmd.name()))),
        }
    }

    /// The earliest cycle the rules allow, and the name of the rule that sets it.
    pub fn earliest(&self, cmd: Command, bank: Option<BankSel>) -> Result<(u64, Option<&str>)> {
        let b = self.bank_index(cmd, bank)?;
        let (at, why) = self.state.earliest(&self.tables, cmd, b);
        Ok((at, why.map(|r| self.tables.rule_names[r as usize].as_str())))
    }

    /// Ok if `cmd` may issue at `clk`; otherwise the violated rule and the earliest legal cycle.
    pub fn check(&self, cmd: Command, bank: Option<BankSel>, clk: u64) -> Result<()> {
        let b = self.bank_index(cmd, bank)?;
        let (at, why) = self.state.earliest(&self.tables, cmd, b);
        if clk < at {
            return Err(PimError::Timing {
                cmd: cmd.name(),
                channel: 0,
                cycle: clk,
                rule: why.map_or_else(String::new, |r| self.tables.rule_names[r as usize].clone()),
                earliest: at,
            });
        }
        Ok(())
    }

    /// Issues `cmd` at `clk` after [`Timer::check`]ing it.
    pub fn issue(&mut self, cmd: Command, bank: Option<BankSel>, clk: u64) -> Result<()> {
        self.check(cmd, bank, clk)?;
        let b = self.bank_index(cmd, bank)?;
        self.state.issue(&self.tables, cmd, b, clk);
        Ok(())
    }
}
