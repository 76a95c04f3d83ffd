//! Run statistics: cycles and time, commands by type, row hits and misses,
//! bytes moved, and energy by component (each component a count times the
//! per-operation figure of the device spec).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{Command, NUM_COMMANDS};
use crate::resolve::Device;
use crate::units::UnitKind;

/// Counters the simulator bumps while it runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    pub(crate) commands: [u64; NUM_COMMANDS],
    pub(crate) bank_activations: u64,
    pub(crate) bank_column_accesses: u64,
    pub(crate) lane_ops: u64,
    /// Lane operations per unit kind ([`crate::UnitKind`] order).
    pub(crate) unit_ops: [u64; 6],
    pub(crate) bytes_external: u64,
    pub(crate) bytes_buffer: u64,
    pub(crate) bytes_buffer_die: u64,
    pub(crate) sfm_elements: u64,
}

/// Energy by component, in picojoules (see `EnergySpec` for each unit cost).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnergyBreakdown {
    /// Row activations: `bank_activations * act_pj`.
    pub activate_pj: f64,
    /// Column accesses in bank arrays: `bytes_internal * 8 * column_pj_per_bit`.
    pub column_pj: f64,
    /// External interface: `bytes_external * 8 * io_pj_per_bit`.
    pub io_pj: f64,
    /// PIM lane operations: each unit's operations times its `energy_pj`.
    pub pim_pj: f64,
    /// Per-bank buffers: `bytes_buffer * 8 * buffer_pj_per_bit`.
    pub buffer_pj: f64,
    /// Buffer die: moves (`bytes_buffer_die * 8 * buffer_die_pj_per_bit`) and softmax.
    pub buffer_die_pj: f64,
    /// Refresh: `refreshes * refresh_pj`.
    pub refresh_pj: f64,
    /// Sum of the above.
    pub total_pj: f64,
}

/// Statistics of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Device name.
    pub device: String,
    /// Cycles from the run's start to the end of its last command on the
    /// slowest channel (channels run in parallel).
    pub cycles: u64,
    /// `cycles * tCK`, in nanoseconds.
    pub ns: f64,
    /// Commands issued, by mnemonic (refresh-inserted PREAB/REF/ACT included).
    pub commands: BTreeMap<String, u64>,
    /// All commands issued.
    pub total_commands: u64,
    /// All-bank refreshes inserted.
    pub refreshes: u64,
    /// Bank activations (an ACT counts one, an ACTAB one per bank).
    pub bank_activations: u64,
    /// Column accesses inside banks (an RD or WR counts one, an all-bank
    /// column operation one per bank).
    pub bank_column_accesses: u64,
    /// Column accesses that found their row already open and used: every
    /// access after the first one following an activation
    /// (`bank_column_accesses - row_misses`).
    pub row_hits: u64,
    /// Column accesses that needed an activation: `min(bank_activations, bank_column_accesses)`.
    pub row_misses: u64,
    /// Bytes read or written in bank arrays: `bank_column_accesses * column_bytes`.
    pub bytes_internal: u64,
    /// Bytes across the external interface (RD, WR, WRGB).
    pub bytes_external: u64,
    /// Bytes read or written in per-bank buffers.
    pub bytes_buffer: u64,
    /// Bytes moved between banks and buffer dies (MVD, MVB).
    pub bytes_buffer_die: u64,
    /// FP16 lane operations in PIM units.
    pub lane_ops: u64,
    /// Internal bandwidth: `bytes_internal / ns`, in GB/s.
    pub internal_gbps: f64,
    /// External bandwidth: `bytes_external / ns`, in GB/s.
    pub external_gbps: f64,
    /// Energy by component.
    pub energy: EnergyBreakdown,
}

/// A run's statistics split by program region (see
/// `Simulator::run_regions`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionStats {
    /// The whole run, as `Simulator::run` returns it.
    pub total: Stats,
    /// One entry per region: the commands, bytes and energy of the commands
    /// its instructions issued, and as `cycles` (and `ns`) the cycles by
    /// which those commands pushed back the end of the *critical channel*
    /// (the one that finishes last), waits for timing constraints and
    /// barriers included. Channels run in parallel, so time is attributed
    /// on one channel: the regions' cycles plus `inserted.cycles` sum to
    /// `total.cycles` for a run that starts on an idle simulator.
    pub regions: Vec<Stats>,
    /// The commands the simulator inserted (refresh, the precharge before it
    /// and the row restores after it), attributed like a region.
    pub inserted: Stats,
}

impl Counters {
    /// Adds `other`'s counts to these.
    pub(crate) fn add(&mut self, other: &Counters) {
        for (a, b) in self.commands.iter_mut().zip(other.commands) {
            *a += b;
        }
        self.bank_activations += other.bank_activations;
        self.bank_column_accesses += other.bank_column_accesses;
        self.lane_ops += other.lane_ops;
        for (a, b) in self.unit_ops.iter_mut().zip(other.unit_ops) {
            *a += b;
        }
        self.bytes_external += other.bytes_external;
        self.bytes_buffer += other.bytes_buffer;
        self.bytes_buffer_die += other.bytes_buffer_die;
        self.sfm_elements += other.sfm_elements;
    }

    pub(crate) fn commands_map(&self) -> BTreeMap<String, u64> {
        Command::ALL
            .iter()
            .filter(|c| self.commands[c.index()] > 0)
            .map(|c| (c.name().to_string(), self.commands[c.index()]))
            .collect()
    }

    /// Statistics of these counters with `refreshes` refreshes over `cycles`.
    pub(crate) fn stats(&self, device: &Device, refreshes: u64, cycles: u64) -> Stats {
        let ns = cycles as f64 * device.t_ck_ns();
        let bytes_internal = self.bank_column_accesses * device.org.column_bytes as u64;
        let row_misses = self.bank_activations.min(self.bank_column_accesses);
        let gbps = |bytes: u64| if ns > 0.0 { bytes as f64 / ns } else { 0.0 };
        Stats {
            device: device.name.clone(),
            cycles,
            ns,
            commands: self.commands_map(),
            total_commands: self.commands.iter().sum(),
            refreshes,
            bank_activations: self.bank_activations,
            bank_column_accesses: self.bank_column_accesses,
            row_hits: self.bank_column_accesses - row_misses,
            row_misses,
            bytes_internal,
            bytes_external: self.bytes_external,
            bytes_buffer: self.bytes_buffer,
            bytes_buffer_die: self.bytes_buffer_die,
            lane_ops: self.lane_ops,
            internal_gbps: gbps(bytes_internal),
            external_gbps: gbps(self.bytes_external),
            energy: self.energy(device, refreshes),
        }
    }

    /// Energy of a run with these counters and `refreshes` all-bank refreshes.
    fn energy(&self, device: &Device, refreshes: u64) -> EnergyBreakdown {
        let e = &device.energy;
        let bits = |bytes: u64| bytes as f64 * 8.0;
        let col_bytes = device.org.column_bytes as u64;
        let mut b = EnergyBreakdown {
            activate_pj: self.bank_activations as f64 * e.act_pj,
            column_pj: bits(self.bank_column_accesses * col_bytes) * e.column_pj_per_bit,
            io_pj: bits(self.bytes_external) * e.io_pj_per_bit,
            pim_pj: UnitKind::ALL
                .iter()
                .map(|&k| {
                    self.unit_ops[k as usize] as f64
                        * device.units.get(k).map_or(0.0, |u| u.energy_pj)
                })
                .sum(),
            buffer_pj: bits(self.bytes_buffer) * device.units.spec.buffer.energy_pj_per_bit,
            buffer_die_pj: bits(self.bytes_buffer_die) * e.buffer_die_pj_per_bit
                + self.sfm_elements as f64 * device.units.spec.softmax.energy_pj,
            refresh_pj: refreshes as f64 * e.refresh_pj,
            total_pj: 0.0,
        };
        b.total_pj = b.activate_pj
            + b.column_pj
            + b.io_pj
            + b.pim_pj
            + b.buffer_pj
            + b.buffer_die_pj
            + b.refresh_pj;
        b
    }
}
