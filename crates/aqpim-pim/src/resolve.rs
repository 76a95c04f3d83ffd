//! `DeviceSpec::resolve`: from the on-disk spec to the runtime [`Device`]:
//! every time in cycles, every name an integer id, every rule checked.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::command::{Command, Level, Scope};
use crate::error::{PimError, Result};
use crate::isa::BankSel;
use crate::limits::{
    cut, MAX_ENERGY_PJ, MAX_LATCH_BYTES, MAX_RULES, MAX_RULE_LATENCY, MAX_RULE_WINDOW,
    MAX_TIMING_CYCLES, MAX_TIMING_PARAMS,
};
use crate::spec::{DeviceSpec, EnergySpec, RuleSpec, TimingValue};
use crate::units::{interval_too_long, UnitKind, Units, MAX_INTERVAL};

/// Runtime organisation: counts per level and derived sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Organisation {
    /// HBM stacks.
    pub stacks: usize,
    /// Channels in the whole device (stacks x channels per stack).
    pub channels: usize,
    /// Pseudo-channels per channel.
    pub pseudo_channels: usize,
    /// SIDs per pseudo-channel.
    pub sids: usize,
    /// Bank groups per SID.
    pub bank_groups: usize,
    /// Banks per bank group.
    pub banks_per_group: usize,
    /// Banks per channel: `pseudo_channels * sids * bank_groups * banks_per_group`.
    pub banks_per_channel: usize,
    /// Rows per bank.
    pub rows: usize,
    /// Columns per row.
    pub columns: usize,
    /// Bytes per column.
    pub column_bytes: usize,
    /// Data pins per pseudo-channel.
    pub dq_bits_per_pseudo_channel: usize,
}

impl Organisation {
    /// Nodes per channel at each level: `[1, pc, pc*sid, pc*sid*bg, banks]`.
    pub fn nodes_per_channel(&self) -> [usize; 5] {
        let pc = self.pseudo_channels;
        let sid = pc * self.sids;
        let bg = sid * self.bank_groups;
        [1, pc, sid, bg, bg * self.banks_per_group]
    }

    /// Channel-local bank index of `(pc, sid, bg, bank)`, row-major in that order.
    pub fn local_bank(&self, pc: usize, sid: usize, bg: usize, bank: usize) -> usize {
        ((pc * self.sids + sid) * self.bank_groups + bg) * self.banks_per_group + bank
    }

    /// Channel-local index of a bank select, `None` when a part of it is
    /// outside the organisation.
    pub(crate) fn bank_index(&self, b: BankSel) -> Option<usize> {
        let parts = [b.pc, b.sid, b.bg, b.bank].map(usize::from);
        let sizes = [
            self.pseudo_channels,
            self.sids,
            self.bank_groups,
            self.banks_per_group,
        ];
        let [pc, sid, bg, bank] = parts;
        (parts.iter().zip(sizes).all(|(&p, n)| p < n)).then(|| self.local_bank(pc, sid, bg, bank))
    }

    /// Index of a channel-local bank's node at each level (channel-local).
    pub fn bank_path(&self, local_bank: usize) -> [usize; 5] {
        let bg = local_bank / self.banks_per_group;
        let sid = bg / self.bank_groups;
        let pc = sid / self.sids;
        [0, pc, sid, bg, local_bank]
    }

    /// `(pc, sid, bg, bank)` of a channel-local bank index.
    pub fn bank_coords(&self, local_bank: usize) -> (usize, usize, usize, usize) {
        let bank = local_bank % self.banks_per_group;
        let bg_all = local_bank / self.banks_per_group;
        let bg = bg_all % self.bank_groups;
        let sid_all = bg_all / self.bank_groups;
        (sid_all / self.sids, sid_all % self.sids, bg, bank)
    }
}

/// Runtime PIM parameters, read from `[pim]` and the units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PimParams {
    /// FP16 elements per column (`column_bytes / 2`).
    pub lanes: usize,
    /// Buffer bytes per bank (`[units.buffer] bytes`).
    pub buffer_bytes: usize,
    /// Banks that share one buffer macro (`[units.buffer] banks_per_unit`):
    /// each bank's own data (softmax weights) gets `1 / buffer_share` of it.
    pub buffer_share: usize,
    /// FP32 registers per bank (`[units.registers] bytes / 4`).
    pub registers: usize,
    /// nCCDAB: the all-bank column command rate.
    pub n_ccdab: u32,
    /// Whether the stack's power budget limits the command rate.
    pub power_limited: bool,
    /// FP32 elements of buffer die per channel.
    pub buffer_die_elements: usize,
    /// Bank-to-buffer-die bytes per cycle.
    pub mv_bytes_per_cycle: u32,
    /// Softmax elements per cycle (`[units.softmax] ops_per_cycle`).
    pub sfm_elements_per_cycle: u32,
    /// Softmax pipeline latency in cycles.
    pub sfm_latency: u32,
    /// Bytes of the dequantizer's parameter latch per bank (`[units.latch]
    /// bytes`, whole columns); 0 without one.
    pub latch_bytes: usize,
}

impl PimParams {
    /// FP16 elements of buffer per bank.
    pub fn buffer_elements(&self) -> usize {
        self.buffer_bytes / 2
    }
}

/// A resolved timing rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Name from the spec.
    pub name: String,
    /// Level at which the commands share a node.
    pub level: Level,
    /// Preceding commands.
    pub preceding: Vec<Command>,
    /// Following commands.
    pub following: Vec<Command>,
    /// Latency in cycles.
    pub latency: u32,
    /// Rolling window (1 for plain rules).
    pub window: u32,
}

/// A resolved device: what the simulator and the trace checker run on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    /// Preset name.
    pub name: String,
    /// Organisation.
    pub org: Organisation,
    /// Clock period in picoseconds.
    pub t_ck_ps: u32,
    /// Data rate per pin in MT/s.
    pub data_rate_mtps: u32,
    /// Every timing parameter in cycles, including the derived `nCCDAB`.
    pub params: BTreeMap<String, u32>,
    /// Timing rules.
    pub rules: Vec<Rule>,
    /// Refresh interval in cycles, when refresh is enabled.
    pub refresh_interval: Option<u32>,
    /// PIM parameters.
    pub pim: PimParams,
    /// PIM units with their prices.
    pub units: Units,
    /// Energy per DRAM operation.
    pub energy: EnergySpec,
}

fn spec_err(field: impl Into<String>, reason: impl Into<String>) -> PimError {
    PimError::Spec {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Evaluates a latency expression: integers and parameter names joined by `+`
/// and `-`, left to right. A negative result is an error.
pub(crate) fn eval_latency(
    expr: &str,
    params: &BTreeMap<String, u32>,
) -> std::result::Result<u32, String> {
    let shown = crate::limits::cut(expr);
    if expr.chars().count() > crate::limits::MAX_EXPRESSION_CHARS {
        return Err(format!(
            "`{shown}`: the expression is longer than {} characters",
            crate::limits::MAX_EXPRESSION_CHARS
        ));
    }
    let expr_full = expr;
    let expr = shown.as_str();
    let mut total: i64 = 0;
    let mut sign: i64 = 1;
    let mut expect_term = true;
    let mut chars = expr_full.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '+' || c == '-' {
            if expect_term {
                return Err(format!(
                    "`{expr}`: operator `{c}` where a term was expected"
                ));
            }
            sign = if c == '+' { 1 } else { -1 };
            expect_term = true;
            chars.next();
        } else if c.is_ascii_alphanumeric() || c == '_' {
            if !expect_term {
                return Err(format!("`{expr}`: two terms without an operator"));
            }
            let mut end = i;
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let term = &expr_full[i..end];
            let value = if term.as_bytes()[0].is_ascii_digit() {
                term.parse::<i64>().map_err(|_| {
                    format!(
                        "`{expr}`: `{}` is not an integer below 2^63",
                        crate::limits::cut(term)
                    )
                })?
            } else {
                i64::from(*params.get(term).ok_or_else(|| {
                    format!(
                        "`{expr}`: unknown timing parameter `{}`",
                        crate::limits::cut(term)
                    )
                })?)
            };
            total = total
                .checked_add(sign * value)
                .ok_or_else(|| format!("`{expr}` overflows"))?;
            expect_term = false;
        } else {
            return Err(format!("`{expr}`: unexpected character `{c}`"));
        }
    }
    if expect_term {
        return Err(format!(
            "`{expr}`: expression is empty or ends with an operator"
        ));
    }
    u32::try_from(total).map_err(|_| format!("`{expr}` evaluates to {total}, outside 0..=u32::MAX"))
}

impl DeviceSpec {
    /// Resolves the spec into runtime tables, rejecting inconsistent specs.
    pub fn resolve(&self) -> Result<Device> {
        let org = self.resolve_organisation()?;
        if self.clock.t_ck_ps == 0 || self.clock.data_rate_mtps == 0 {
            return Err(spec_err(
                "clock",
                "t_ck_ps and data_rate_mtps must be positive",
            ));
        }

        let mut params = self.resolve_timing()?;
        let (pim, units) = self.resolve_pim(&org)?;
        params.insert("nCCDAB".to_string(), pim.n_ccdab);
        self.check_energy()?;
        let rules = self.resolve_rules(&params)?;
        let refresh_interval = self.refresh_interval(&params, &rules, pim.n_ccdab)?;
        let device = Device {
            name: self.name.clone(),
            org,
            t_ck_ps: self.clock.t_ck_ps,
            data_rate_mtps: self.clock.data_rate_mtps,
            params,
            rules,
            refresh_interval,
            pim,
            units,
            energy: self.energy.clone(),
        };
        // Every unit's interval on its widest column must stay a bounded gate.
        for kind in UnitKind::ALL {
            if device.units.get(kind).is_some() {
                let cycles = device.pim_interval(kind.command(), device.widest_work(kind));
                if cycles > MAX_INTERVAL {
                    return Err(interval_too_long(kind, cycles));
                }
            }
        }
        Ok(device)
    }

    /// The organisation, each count within the ISA's fields.
    fn resolve_organisation(&self) -> Result<Organisation> {
        let o = &self.organisation;
        let limits: [(&str, u32, u32); 10] = [
            ("stacks", o.stacks, 256),
            ("channels_per_stack", o.channels_per_stack, 256),
            ("pseudo_channels", o.pseudo_channels, 4),
            ("sids", o.sids, 4),
            ("bank_groups", o.bank_groups, 16),
            ("banks_per_group", o.banks_per_group, 16),
            ("rows", o.rows, 1 << 24),
            ("columns", o.columns, 256),
            ("column_bytes", o.column_bytes, 128),
            (
                "dq_bits_per_pseudo_channel",
                o.dq_bits_per_pseudo_channel,
                4096,
            ),
        ];
        for (name, v, max) in limits {
            if v == 0 || v > max {
                return Err(spec_err(
                    format!("organisation.{name}"),
                    format!("{v} is outside 1..={max}"),
                ));
            }
        }
        let channels = o.stacks as usize * o.channels_per_stack as usize;
        if channels > 256 {
            return Err(spec_err(
                "organisation",
                format!("{channels} channels in all; the ISA addresses at most 256"),
            ));
        }
        if !o.column_bytes.is_multiple_of(2) || o.column_bytes < 4 {
            return Err(spec_err(
                "organisation.column_bytes",
                "must be even and at least 4 (FP16 lanes)",
            ));
        }
        Ok(Organisation {
            stacks: o.stacks as usize,
            channels,
            pseudo_channels: o.pseudo_channels as usize,
            sids: o.sids as usize,
            bank_groups: o.bank_groups as usize,
            banks_per_group: o.banks_per_group as usize,
            banks_per_channel: (o.pseudo_channels * o.sids * o.bank_groups * o.banks_per_group)
                as usize,
            rows: o.rows as usize,
            columns: o.columns as usize,
            column_bytes: o.column_bytes as usize,
            dq_bits_per_pseudo_channel: o.dq_bits_per_pseudo_channel as usize,
        })
    }

    /// The `[timing]` parameters in whole cycles (`nCCDAB` comes from
    /// `[pim]`: [`DeviceSpec::resolve`] adds it).
    fn resolve_timing(&self) -> Result<BTreeMap<String, u32>> {
        if self.timing.len() > MAX_TIMING_PARAMS {
            return Err(spec_err(
                "timing",
                format!(
                    "{} parameters, more than the limit of {MAX_TIMING_PARAMS}",
                    self.timing.len()
                ),
            ));
        }
        let mut params = BTreeMap::new();
        for (name, v) in &self.timing {
            if name == "nCCDAB" {
                return Err(spec_err(
                    "timing.nCCDAB",
                    "is derived from [pim]; do not set it in [timing]",
                ));
            }
            let cycles = match *v {
                TimingValue::Cycles(c) => c,
                TimingValue::Ns { ns } => {
                    if !ns.is_finite() || !(0.0..=1e9).contains(&ns) {
                        return Err(spec_err(
                            format!("timing.{name}"),
                            format!("{ns} ns is not a valid time"),
                        ));
                    }
                    // Round up to whole cycles, as JEDEC does (tolerate float noise).
                    let c = ns * 1000.0 / f64::from(self.clock.t_ck_ps);
                    let c = (c - 1e-9).ceil().max(0.0);
                    if c > f64::from(MAX_TIMING_CYCLES) {
                        return Err(spec_err(
                            format!("timing.{}", cut(name)),
                            format!(
                                "{ns} ns is {c} cycles, more than the limit of {MAX_TIMING_CYCLES}"
                            ),
                        ));
                    }
                    c as u32
                }
            };
            if cycles > MAX_TIMING_CYCLES {
                return Err(spec_err(
                    format!("timing.{}", cut(name)),
                    format!("{cycles} cycles is more than the limit of {MAX_TIMING_CYCLES}"),
                ));
            }
            params.insert(name.clone(), cycles);
        }
        Ok(params)
    }

    /// The PIM parameters and units, checked against the organisation.
    fn resolve_pim(&self, org: &Organisation) -> Result<(PimParams, Units)> {
        let p = &self.pim;
        for (name, v) in [
            ("n_ccdab", p.n_ccdab),
            ("sfm_latency", p.sfm_latency.max(1)),
        ] {
            if v == 0 || v > MAX_RULE_LATENCY {
                return Err(spec_err(
                    format!("pim.{name}"),
                    format!("{v} cycles is outside 1..={MAX_RULE_LATENCY}"),
                ));
            }
        }
        let n_ccdab = p.n_ccdab;

        if p.lanes as usize * 2 != org.column_bytes {
            return Err(spec_err(
                "pim.lanes",
                format!(
                    "{} FP16 lanes do not match a {} B column",
                    p.lanes, org.column_bytes
                ),
            ));
        }
        let units = self
            .units
            .resolve(&self.die, org.banks_per_channel as u32)?;
        let buffer_bytes = self.units.buffer.bytes;
        if buffer_bytes == 0
            || !buffer_bytes.is_multiple_of(2)
            || buffer_bytes > 131072
            || (buffer_bytes as usize) < org.column_bytes
        {
            return Err(spec_err(
                "units.buffer.bytes",
                "must be even, at least one column and at most 131072 (65536 FP16 elements)",
            ));
        }
        let registers = self.units.registers.bytes / 4;
        if registers == 0 || registers > 65536 || !self.units.registers.bytes.is_multiple_of(4) {
            return Err(spec_err(
                "units.registers.bytes",
                "must be a multiple of 4 in 4..=262144 (1 to 65536 FP32 registers)",
            ));
        }
        let latch_bytes = self.units.latch.as_ref().map_or(0, |l| l.bytes as usize);
        if self.units.latch.is_some()
            && (latch_bytes == 0
                || !latch_bytes.is_multiple_of(org.column_bytes)
                || latch_bytes > MAX_LATCH_BYTES)
        {
            return Err(spec_err(
                "units.latch.bytes",
                format!("must be whole columns, at most {MAX_LATCH_BYTES} (LDP's 8-bit slot)"),
            ));
        }
        if p.buffer_die_bytes < 4
            || !p.buffer_die_bytes.is_multiple_of(4)
            || p.buffer_die_bytes > 262144
        {
            return Err(spec_err(
                "pim.buffer_die_bytes",
                "must be a multiple of 4 in 4..=262144 (65536 FP32 elements)",
            ));
        }
        if p.mv_bytes_per_cycle == 0 {
            return Err(spec_err("pim.mv_bytes_per_cycle", "must be positive"));
        }
        let pim = PimParams {
            lanes: p.lanes as usize,
            buffer_bytes: buffer_bytes as usize,
            buffer_share: self.units.buffer.banks_per_unit as usize,
            registers: registers as usize,
            n_ccdab,
            power_limited: p.power_limited,
            buffer_die_elements: p.buffer_die_bytes as usize / 4,
            mv_bytes_per_cycle: p.mv_bytes_per_cycle,
            sfm_elements_per_cycle: self.units.softmax.ops_per_cycle,
            sfm_latency: p.sfm_latency,
            latch_bytes,
        };
        Ok((pim, units))
    }

    /// Every energy figure finite and within its bound.
    fn check_energy(&self) -> Result<()> {
        let e = &self.energy;
        for (name, v) in [
            ("act_pj", e.act_pj),
            ("column_pj_per_bit", e.column_pj_per_bit),
            ("io_pj_per_bit", e.io_pj_per_bit),
            ("buffer_die_pj_per_bit", e.buffer_die_pj_per_bit),
            ("refresh_pj", e.refresh_pj),
        ] {
            if !v.is_finite() || !(0.0..=MAX_ENERGY_PJ).contains(&v) {
                return Err(spec_err(
                    format!("energy.{name}"),
                    format!("{v} is not an energy in 0..={MAX_ENERGY_PJ} pJ"),
                ));
            }
        }
        Ok(())
    }

    /// The refresh interval in cycles (`None` without refresh), longer than
    /// the refresh latency and every gate.
    fn refresh_interval(
        &self,
        params: &BTreeMap<String, u32>,
        rules: &[Rule],
        n_ccdab: u32,
    ) -> Result<Option<u32>> {
        let p = &self.pim;
        if !self.refresh.enabled {
            return Ok(None);
        }
        let v = *params.get(&self.refresh.interval).ok_or_else(|| {
            spec_err(
                "refresh.interval",
                format!("unknown timing parameter `{}`", self.refresh.interval),
            )
        })?;
        let max_ref_latency = rules
            .iter()
            .filter(|r| r.preceding.contains(&Command::Ref))
            .map(|r| r.latency)
            .max()
            .unwrap_or(0);
        if v <= max_ref_latency {
            return Err(spec_err(
                "refresh.interval",
                format!("{v} cycles is not longer than the refresh latency {max_ref_latency}"),
            ));
        }
        // Longer than every gate: then any wait holds at most one
        // refresh, and the simulator's refresh work stays proportional
        // to the program, not to the device's timing values.
        let longest = rules
            .iter()
            .map(|r| (r.latency, r.name.as_str()))
            .chain([(n_ccdab, "nCCDAB"), (p.sfm_latency, "sfm_latency")])
            .max_by_key(|(l, _)| *l)
            .unwrap_or((0, ""));
        if v <= longest.0 {
            return Err(spec_err(
                "refresh.interval",
                format!(
                    "{v} cycles is not longer than {} ({} cycles); refresh would dominate every wait",
                    cut(longest.1),
                    longest.0
                ),
            ));
        }
        Ok(Some(v))
    }

    fn resolve_rules(&self, params: &BTreeMap<String, u32>) -> Result<Vec<Rule>> {
        if self.rules.len() > MAX_RULES {
            return Err(spec_err(
                "rules",
                format!(
                    "{} rules, more than the limit of {MAX_RULES}",
                    self.rules.len()
                ),
            ));
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(self.rules.len());
        let mut seen = BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let field = format!("rules[{i}] ({})", cut(&r.name));
            if r.name.is_empty() {
                return Err(spec_err(field, "rule has no name"));
            }
            if rules.iter().any(|x| x.name == r.name) {
                return Err(spec_err(field, "duplicate rule name"));
            }
            rules.push(resolve_rule(r, params, &mut seen).map_err(|m| spec_err(field, m))?);
        }
        if rules.len() > usize::from(u16::MAX) {
            return Err(spec_err("rules", "too many rules"));
        }
        Ok(rules)
    }
}

/// One rule row resolved: its commands named, its latency evaluated and
/// within [`MAX_RULE_LATENCY`], its window within [`MAX_RULE_WINDOW`], and
/// each of its (preceding, following) pairs the first at its level (`seen`
/// holds the pairs of the rows before it); what is wrong otherwise.
fn resolve_rule(
    r: &RuleSpec,
    params: &BTreeMap<String, u32>,
    seen: &mut BTreeSet<(Level, Command, Command)>,
) -> std::result::Result<Rule, String> {
    let preceding = rule_commands(&r.preceding, "preceding")?;
    let following = rule_commands(&r.following, "following")?;
    let latency = eval_latency(&r.latency, params)?;
    if latency > MAX_RULE_LATENCY {
        return Err(format!(
            "latency {latency} cycles is more than the limit of {MAX_RULE_LATENCY}"
        ));
    }
    if r.window == 0 || r.window > MAX_RULE_WINDOW {
        return Err(format!(
            "window {} is outside 1..={MAX_RULE_WINDOW}",
            r.window
        ));
    }
    if r.window > 1 {
        let all_bank = preceding
            .iter()
            .chain(&following)
            .find(|c| c.scope() == Scope::Channel);
        if let Some(c) = all_bank {
            return Err(format!(
                "windowed rules may relate single-bank commands only, not `{}`",
                c.name()
            ));
        }
    } else {
        for p in &preceding {
            for f in &following {
                if !seen.insert((r.level, *p, *f)) {
                    return Err(format!(
                        "pair {} -> {} already has a rule at level {}",
                        p.name(),
                        f.name(),
                        r.level.name()
                    ));
                }
            }
        }
    }
    Ok(Rule {
        name: r.name.clone(),
        level: r.level,
        preceding,
        following,
        latency,
        window: r.window,
    })
}

/// The commands a rule lists under `what`: a non-empty list of known
/// commands, each named once.
fn rule_commands(list: &[String], what: &str) -> std::result::Result<Vec<Command>, String> {
    if list.is_empty() {
        return Err(format!("`{what}` is empty"));
    }
    let mut out = Vec::new();
    for n in list {
        let c = Command::from_name(n)
            .ok_or_else(|| format!("unknown command `{}` in `{what}`", cut(n)))?;
        if out.contains(&c) {
            return Err(format!("`{n}` listed twice in `{what}`"));
        }
        out.push(c);
    }
    Ok(out)
}

impl Device {
    /// A named preset, resolved.
    pub fn preset(name: &str) -> Result<Device> {
        DeviceSpec::preset(name)?.resolve()
    }

    /// Clock period in nanoseconds.
    pub fn t_ck_ns(&self) -> f64 {
        f64::from(self.t_ck_ps) / 1000.0
    }

    /// A timing parameter in cycles.
    pub fn param(&self, name: &str) -> Option<u32> {
        self.params.get(name).copied()
    }

    /// Peak bandwidth of the external interface of the whole device in GB/s:
    /// `channels * pseudo_channels * dq_bits * data_rate / 8`.
    pub fn external_peak_gbps(&self) -> f64 {
        let o = &self.org;
        (o.channels * o.pseudo_channels * o.dq_bits_per_pseudo_channel) as f64
            * f64::from(self.data_rate_mtps)
            / 8.0
            / 1000.0
    }

    /// Cycles a buffer-die move of `bytes` occupies the channel:
    /// `ceil(bytes / mv_bytes_per_cycle)`.
    pub fn mv_cycles(&self, bytes: u64) -> u64 {
        bytes.div_ceil(u64::from(self.pim.mv_bytes_per_cycle))
    }

    /// External bytes per cycle of one channel, for RDD: `pseudo_channels *
    /// column_bytes / nBL` (each pseudo-channel moves a column per burst of
    /// `nBL` cycles; 32 B per cycle in both presets), or, without an `nBL`
    /// parameter, `pseudo_channels * dq_bits * data_rate * tCK / 8` rounded
    /// down; at least 1.
    pub fn external_bytes_per_cycle(&self) -> u64 {
        let o = &self.org;
        let b = match self.param("nBL") {
            Some(bl) if bl > 0 => (o.pseudo_channels * o.column_bytes) as u64 / u64::from(bl),
            _ => {
                (o.pseudo_channels * o.dq_bits_per_pseudo_channel) as u64
                    * u64::from(self.data_rate_mtps)
                    * u64::from(self.t_ck_ps)
                    / 8_000_000
            }
        };
        b.max(1)
    }

    /// Cycles a CLR of `len` elements occupies the channel: `ceil(len /
    /// lanes)` for registers (each bank clears `lanes` per cycle), or
    /// `ceil(4 * len / mv_bytes_per_cycle)` for the buffer die.
    pub fn clr_cycles(&self, len: u64, die: bool) -> u64 {
        if die {
            self.mv_cycles(4 * len)
        } else {
            len.div_ceil(self.pim.lanes as u64)
        }
    }

    /// Cycles a RED of `len` elements per bank slice occupies the channel:
    /// `ceil(banks * len / sfm_elements_per_cycle)` (the buffer die's vector unit).
    pub fn red_cycles(&self, len: u64) -> u64 {
        (self.org.banks_per_channel as u64 * len)
            .div_ceil(u64::from(self.pim.sfm_elements_per_cycle))
    }

    /// Cycles an RDD of `len` elements occupies the channel:
    /// `ceil(4 * len / external_bytes_per_cycle)`.
    pub fn rdd_cycles(&self, len: u64) -> u64 {
        (4 * len).div_ceil(self.external_bytes_per_cycle())
    }

    /// Cycles a softmax over `len` elements occupies the channel:
    /// `ceil(len / sfm_elements_per_cycle) + sfm_latency`.
    pub fn sfm_cycles(&self, len: u64) -> u64 {
        len.div_ceil(u64::from(self.pim.sfm_elements_per_cycle)) + u64::from(self.pim.sfm_latency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_expressions() {
        let mut p = BTreeMap::new();
        p.insert("nCL".to_string(), 19);
        p.insert("nBL".to_string(), 2);
        p.insert("nCWL".to_string(), 6);
        assert_eq!(eval_latency("nCL + nBL + 2 - nCWL", &p), Ok(17));
        assert_eq!(eval_latency("7", &p), Ok(7));
        assert!(eval_latency("nCWL - nCL", &p).is_err());
        assert!(eval_latency("nXX", &p).is_err());
        assert!(eval_latency("nCL +", &p).is_err());
        assert!(eval_latency("nCL nBL", &p).is_err());
        assert!(eval_latency("", &p).is_err());
        assert!(eval_latency("nCL * 2", &p).is_err());
    }
}
