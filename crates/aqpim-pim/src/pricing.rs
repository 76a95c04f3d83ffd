//! What a resolved device's units do and cost: the issue interval of each
//! all-bank command (from its unit's ports and sharing, and under the power
//! limit from its energy and the stack's budget), the energy of one such
//! command on a stack, the PIM area per DRAM die and the peak power per
//! stack. The formulas are in `units.rs`'s module docs.

use crate::command::Command;
use crate::isa::argmin_centroids;
use crate::resolve::Device;
use crate::units::{column_work, AreaReport, PowerReport, UnitKind};

/// What a resolved device's units do and cost: intervals, energy per
/// all-bank command, area per die and peak power.
impl Device {
    /// Cycles between an all-bank column command of `cmd` that gives every
    /// bank `work` operations and the next such command on its channel: the
    /// largest of nCCDAB, the unit's `ceil(work x banks_per_unit /
    /// ops_per_cycle)` and, under the power limit, the cycles that keep the
    /// stack within its power budget (`units.rs`). nCCDAB for a command
    /// without a unit (validation refuses those before a run).
    pub fn pim_interval(&self, cmd: Command, work: u64) -> u64 {
        let base = u64::from(self.pim.n_ccdab);
        let Some(unit) = UnitKind::of(cmd).and_then(|k| self.units.get(k)) else {
            return base;
        };
        let mut cycles = base.max(unit.cycles(work));
        if self.pim.power_limited {
            let budget_pj_per_cycle = self.units.die.stack_power_budget_w * f64::from(self.t_ck_ps);
            let need = (self.stack_op_pj(cmd, work) / budget_pj_per_cycle - 1e-9).ceil();
            cycles = cycles.max(need.max(1.0) as u64);
        }
        cycles
    }

    /// Energy of one all-bank column command of `cmd` (`work` operations
    /// per bank) on every channel of one stack, pJ: per bank the column
    /// read, the unit's operations, the buffer bytes it reads, and its share
    /// of the row activation (one per `columns` commands).
    pub fn stack_op_pj(&self, cmd: Command, work: u64) -> f64 {
        let o = &self.org;
        let e = &self.energy;
        let col_bits = (o.column_bytes * 8) as f64;
        let unit_pj = UnitKind::of(cmd)
            .and_then(|k| self.units.get(k))
            .map_or(0.0, |u| u.energy_pj);
        let buffer_bytes = match cmd {
            Command::Mac => o.column_bytes as u64,
            // QMAC: a `reduce` reads one buffer element per code (a `bcast`
            // one in all; the bound is what the power limit must allow).
            Command::LutAcc | Command::ArgMin | Command::QMac => 2 * work,
            Command::HistAcc => 2,
            _ => 0,
        };
        let per_bank = col_bits * e.column_pj_per_bit
            + work as f64 * unit_pj
            + (buffer_bytes * 8) as f64 * self.units.spec.buffer.energy_pj_per_bit
            + e.act_pj / o.columns as f64;
        let channels_per_stack = (o.channels / o.stacks.max(1)) as f64;
        per_bank * o.banks_per_channel as f64 * channels_per_stack
    }

    /// The most work one column gives a bank on `kind`'s unit: 4-bit codes
    /// for LUTACC and HISTACC, 2-bit codes for QMAC, 256 centroids of a whole column's `lanes`
    /// elements for ARGMIN (its largest `dsub`).
    pub fn widest_work(&self, kind: UnitKind) -> u64 {
        let cb = self.org.column_bytes as u64;
        match kind {
            UnitKind::Lookup | UnitKind::Histogram => column_work(kind.command(), cb, 4, 0),
            UnitKind::Argmin => argmin_centroids(8) * self.pim.lanes as u64,
            UnitKind::Dqmac => column_work(Command::QMac, cb, 2, 0),
            _ => column_work(kind.command(), cb, 16, 0),
        }
    }

    /// The work of a typical column per unit kind, for the power report:
    /// 8-bit codes for LUTACC, 4-bit for HISTACC (the shipped format's
    /// keys and values) and QMAC, 256 centroids of 2 elements for ARGMIN.
    fn typical_work(&self, kind: UnitKind) -> u64 {
        let cb = self.org.column_bytes as u64;
        match kind {
            UnitKind::Lookup => column_work(Command::LutAcc, cb, 8, 0),
            UnitKind::Histogram => column_work(Command::HistAcc, cb, 4, 0),
            UnitKind::Argmin => argmin_centroids(8) * 2,
            UnitKind::Dqmac => column_work(Command::QMac, cb, 4, 0),
            _ => column_work(kind.command(), cb, 16, 0),
        }
    }

    /// PIM area per DRAM die: each per-bank unit times the units on a die
    /// (banks per die / banks per unit), buffers and registers by their
    /// bytes; the buffer die's vector units per stack.
    pub fn area(&self) -> AreaReport {
        let o = &self.org;
        let u = &self.units;
        let banks_per_stack = (o.channels / o.stacks.max(1) * o.banks_per_channel) as u64;
        let banks_per_die = banks_per_stack / u64::from(u.die.dram_dies_per_stack).max(1);
        let mut by_unit = Vec::new();
        for kind in UnitKind::ALL {
            if let Some(unit) = u.get(kind) {
                let n = banks_per_die.div_ceil(u64::from(unit.banks_per_unit));
                by_unit.push((kind.name().to_string(), n as f64 * unit.area_mm2));
            }
        }
        let logic_mm2 = by_unit.iter().map(|(_, a)| a).sum::<f64>();
        let kib = |bytes: u32| f64::from(bytes) / 1024.0;
        let buffers = banks_per_die.div_ceil(u64::from(u.spec.buffer.banks_per_unit));
        let buffer_mm2 = buffers as f64 * kib(u.spec.buffer.bytes) * u.spec.buffer.area_mm2_per_kib
            + banks_per_die as f64
                * kib(u.spec.registers.bytes)
                * u.spec.registers.area_mm2_per_kib
            + u.spec.latch.as_ref().map_or(0.0, |l| {
                banks_per_die as f64 * kib(l.bytes) * l.area_mm2_per_kib
            });
        let total_mm2 = logic_mm2 + buffer_mm2;
        let die_mm2 = u.die.dram_die_area_mm2;
        AreaReport {
            banks_per_die,
            logic_mm2_by_unit: by_unit,
            logic_mm2,
            buffer_mm2,
            total_mm2,
            die_mm2,
            die_share: total_mm2 / die_mm2,
            buffer_die_mm2: (o.channels / o.stacks.max(1)) as f64 * u.spec.softmax.area_mm2,
        }
    }

    /// Peak PIM power of a stack: the most demanding all-bank command of the
    /// device's units, at its typical work and its interval in force, on
    /// every channel at once (background and refresh power aside).
    pub fn power(&self) -> PowerReport {
        let mut peak = (0.0f64, String::new());
        for kind in UnitKind::ALL {
            if self.units.get(kind).is_none() {
                continue;
            }
            let cmd = kind.command();
            let work = self.typical_work(kind);
            let cycles = self.pim_interval(cmd, work) as f64;
            let w = self.stack_op_pj(cmd, work) / (cycles * f64::from(self.t_ck_ps));
            if w > peak.0 {
                peak = (w, cmd.name().to_string());
            }
        }
        let budget_w = self.units.die.stack_power_budget_w;
        PowerReport {
            peak_w: peak.0,
            peak_command: peak.1,
            budget_w,
            within_budget: peak.0 <= budget_w * (1.0 + 1e-9),
        }
    }
}
