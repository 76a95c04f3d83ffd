//! Energy from operation counts: each component is a count times the
//! per-operation figure of the device spec.

use crate::resolve::Device;
use crate::stats::{Counters, EnergyBreakdown};

/// Energy of a run with counters `c`, `refreshes` all-bank refreshes.
pub(crate) fn energy(device: &Device, c: &Counters, refreshes: u64) -> EnergyBreakdown {
    let e = &device.energy;
    let bits = |bytes: u64| bytes as f64 * 8.0;
    let col_bytes = device.org.column_bytes as u64;
    let mut b = EnergyBreakdown {
        activate_pj: c.bank_activations as f64 * e.act_pj,
        column_pj: bits(c.bank_column_accesses * col_bytes) * e.column_pj_per_bit,
        io_pj: bits(c.bytes_external) * e.io_pj_per_bit,
        pim_pj: c.lane_ops as f64 * e.mac_pj,
        buffer_pj: bits(c.bytes_buffer) * e.buffer_pj_per_bit,
        buffer_die_pj: bits(c.bytes_buffer_die) * e.buffer_die_pj_per_bit
            + c.sfm_elements as f64 * e.sfm_pj_per_element,
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
