//! Energy from operation counts: each component is a count times the
//! per-operation figure of the device spec.

use crate::resolve::Device;
use crate::stats::{Counters, EnergyBreakdown};
use crate::units::UnitKind;

/// Energy of a run with counters `c`, `refreshes` all-bank refreshes.
pub(crate) fn energy(device: &Device, c: &Counters, refreshes: u64) -> EnergyBreakdown {
    let e = &device.energy;
    let bits = |bytes: u64| bytes as f64 * 8.0;
    let col_bytes = device.org.column_bytes as u64;
    let mut b = EnergyBreakdown {
        activate_pj: c.bank_activations as f64 * e.act_pj,
        column_pj: bits(c.bank_column_accesses * col_bytes) * e.column_pj_per_bit,
        io_pj: bits(c.bytes_external) * e.io_pj_per_bit,
        pim_pj: UnitKind::ALL
            .iter()
            .map(|&k| {
                c.unit_ops[k as usize] as f64 * device.units.get(k).map_or(0.0, |u| u.energy_pj)
            })
            .sum(),
        buffer_pj: bits(c.bytes_buffer) * device.units.spec.buffer.energy_pj_per_bit,
        buffer_die_pj: bits(c.bytes_buffer_die) * e.buffer_die_pj_per_bit
            + c.sfm_elements as f64 * device.units.spec.softmax.energy_pj,
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
