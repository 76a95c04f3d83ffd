//! Checks a program against a device before it runs: the expanded command
//! count is within [`MAX_PROGRAM_COMMANDS`](crate::MAX_PROGRAM_COMMANDS)
//! and the executed instructions within the run's step limit
//! ([`MAX_PROGRAM_STEPS`](crate::MAX_PROGRAM_STEPS) by default),
//! and every address, with every loop offset it can take, stays inside the
//! organisation, the buffers, the registers, the buffer die and the host
//! data. Which fields are addresses, in which space and under which stride
//! comes from the instruction table; how far each one reaches (its extent)
//! is the instruction's semantics, given here. The run loop then works on
//! programs that cannot go out of range.

use crate::error::{PimError, Result};
use crate::isa::table::{Space, Target};
use crate::isa::{argmin_centroids, Instr, Program};
use crate::resolve::Device;
use crate::units::{missing_unit, UnitKind};

/// A program ready to run: every address checked for every loop offset.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub(crate) instrs: Vec<Instr>,
}

/// The sizes validation checks against, all in elements of their space.
struct Limits {
    banks: i64,
    col_bytes: i64,
    lanes: i64,
    /// Per [`Space`], in its order.
    size: [i64; 6],
    /// Bytes of a bank's parameter latch.
    latch_bytes: i64,
}

impl Limits {
    fn new(d: &Device, host_bytes: usize) -> Limits {
        let o = &d.org;
        let i = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        Limits {
            banks: i(o.banks_per_channel),
            col_bytes: i(o.column_bytes),
            lanes: i(d.pim.lanes),
            size: [
                i(o.rows),
                i(o.columns),
                i(d.pim.buffer_elements()),
                i(d.pim.registers),
                i(host_bytes),
                i(d.pim.buffer_die_elements),
            ],
            latch_bytes: i(d.pim.latch_bytes),
        }
    }

    /// Codes of `bits` bits in one column.
    fn codes(&self, bits: u32) -> i64 {
        self.col_bytes * 8 / i64::from(bits)
    }
}

/// What a space is called in messages.
fn space_name(s: Space) -> &'static str {
    match s {
        Space::Row => "rows",
        Space::Col => "columns",
        Space::Buf => "bank buffer",
        Space::Reg => "registers",
        Space::Data => "host data",
        Space::Die => "buffer die",
    }
}

/// How many elements of its space address field `field` of `ins` covers.
fn extent(ins: &Instr, field: &str, l: &Limits) -> i64 {
    let (banks, lanes) = (l.banks, l.lanes);
    match (*ins, field) {
        (Instr::Wr { .. } | Instr::Wrgb { .. }, "data") => l.col_bytes,
        (Instr::Wrgb { .. }, "buf") => lanes,
        (Instr::Mac { bcast, .. }, "buf") if !bcast => lanes,
        (Instr::Mac { reduce, .. }, "reg") if !reduce => lanes,
        (Instr::LutAcc { bits, group, .. }, "table")
        | (Instr::HistAcc { bits, group, .. }, "reg") => i64::from(group) * bits.table_len() as i64,
        (Instr::LutAcc { bits, group, .. }, "reg")
        | (Instr::HistAcc { bits, group, .. }, "weights") => {
            ceil_div(l.codes(bits.bits()), group.into())
        }
        (Instr::ArgMin { dsub, nbits, .. }, "cb") => {
            argmin_centroids(nbits) as i64 * i64::from(dsub)
        }
        (Instr::Mvd { len, .. }, "die") | (Instr::Red { len, .. }, "src") => banks * i64::from(len),
        (Instr::Mvb { len, broadcast, .. }, "die") if !broadcast => banks * i64::from(len),
        (Instr::Sfm { len, stats, .. }, "die") if stats => i64::from(len) + 2,
        (
            Instr::Mvd { len, .. }
            | Instr::Mvb { len, .. }
            | Instr::Sfm { len, .. }
            | Instr::Clr { len, .. }
            | Instr::Red { len, .. }
            | Instr::Rdd { len, .. },
            _,
        ) => len.into(),
        (Instr::BinMac { dsub, .. }, "bins") => lanes / i64::from(dsub),
        (Instr::BinMac { dsub, .. }, "out") => dsub.into(),
        (Instr::Stc { bits, .. }, "reg") => l.codes(bits.bits()),
        (Instr::QMac { bits, reduce, .. }, "buf") if reduce => l.codes(bits.into()),
        (Instr::QMac { bits, reduce, .. }, "reg") if !reduce => l.codes(bits.into()),
        _ => 1,
    }
}

/// `a / b` rounded up (`a >= 0`, `b > 0`).
fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

/// Constraints between fields and the device that no single address states.
fn constraints(ins: &Instr, l: &Limits) -> std::result::Result<(), String> {
    match *ins {
        Instr::LutAcc { bits, group, .. } | Instr::HistAcc { bits, group, .. }
            if i64::from(group) > l.codes(bits.bits()) =>
        {
            Err(format!(
                "group {group} exceeds the {} codes of a column",
                l.codes(bits.bits())
            ))
        }
        Instr::ArgMin { start, dsub, .. } if i64::from(start) + i64::from(dsub) > l.lanes => {
            Err(format!(
                "lanes {start}..{} exceed the {} lanes of a column",
                start + dsub,
                l.lanes
            ))
        }
        Instr::BinMac { dsub, .. } if l.lanes % i64::from(dsub) != 0 => Err(format!(
            "dsub={dsub} does not divide the {} lanes of a column",
            l.lanes
        )),
        Instr::Ldp { slot, .. } if (i64::from(slot) + 1) * l.col_bytes > l.latch_bytes => {
            Err(format!(
                "latch slot {slot} is past the {} B parameter latch",
                l.latch_bytes
            ))
        }
        Instr::QMac {
            bits,
            group,
            pslot,
            mx,
            ..
        } => {
            let codes = l.codes(bits.into());
            let per = if mx { 1 } else { 4 };
            let end = (i64::from(pslot) + ceil_div(codes, group.into())) * per;
            if i64::from(group) > codes {
                Err(format!(
                    "group {group} exceeds the {codes} codes of a column"
                ))
            } else if end > l.latch_bytes {
                Err(format!(
                    "parameters {pslot}.. reach byte {end} of the {} B parameter latch",
                    l.latch_bytes
                ))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Checks `p` for a run on `d` with `host_bytes` of host data and at most
/// `step_limit` executed instructions.
pub(crate) fn check_program(
    p: &Program,
    d: &Device,
    host_bytes: usize,
    step_limit: u64,
) -> Result<Checked> {
    p.checked_command_count()?;
    p.checked_step_count(step_limit)?;
    let l = Limits::new(d, host_bytes);
    // Offset range of each stride class under the enclosing loops.
    let mut stack: Vec<([i64; 6], [i64; 6])> = Vec::new();
    let (mut lo, mut hi) = ([0i64; 6], [0i64; 6]);
    for (i, ins) in p.instrs().iter().enumerate() {
        let err = |reason: String| PimError::Program {
            index: i,
            instr: ins.to_string(),
            reason,
        };
        // Programs built through `Program::new` are already checked; a
        // deserialized one may not be.
        ins.check_fields().map_err(err)?;
        check_target(ins, d)
            .and_then(|()| check_addresses(ins, &l, &lo, &hi))
            .and_then(|()| constraints(ins, &l))
            .map_err(err)?;
        match ins {
            Instr::Loop { count, strides } => {
                stack.push((lo, hi));
                let n = i64::from(*count) - 1;
                for (k, s) in strides.to_array().iter().enumerate() {
                    let span = n * i64::from(*s);
                    lo[k] += span.min(0);
                    hi[k] += span.max(0);
                }
            }
            Instr::EndLoop => {
                (lo, hi) = stack
                    .pop()
                    .ok_or_else(|| err("ENDLOOP without LOOP".into()))?;
            }
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(PimError::Program {
            index: p.instrs().len(),
            instr: String::new(),
            reason: "LOOP without ENDLOOP".into(),
        });
    }
    Ok(Checked {
        instrs: p.instrs().to_vec(),
    })
}

/// The instruction's channel and bank exist, and the device has the unit its
/// command runs on.
fn check_target(ins: &Instr, d: &Device) -> std::result::Result<(), String> {
    let o = &d.org;
    let Target { ch, bank, .. } = ins.target();
    if let Some(c) = ch.filter(|&c| usize::from(c) >= o.channels) {
        return Err(format!(
            "channel {c} does not exist ({} channels)",
            o.channels
        ));
    }
    if let Some(b) = bank.filter(|&b| o.bank_index(b).is_none()) {
        return Err(format!(
            "bank pc={} sid={} bg={} bank={} is outside {}x{}x{}x{}",
            b.pc, b.sid, b.bg, b.bank, o.pseudo_channels, o.sids, o.bank_groups, o.banks_per_group
        ));
    }
    match ins.spec().command {
        Some(cmd) if UnitKind::of(cmd).is_some_and(|k| d.units.get(k).is_none()) => {
            Err(missing_unit(&d.name, cmd))
        }
        _ => Ok(()),
    }
}

/// Every address of the instruction, from its lowest to its highest loop
/// offset (`lo`, `hi` per space) and over its extent, stays in its space.
fn check_addresses(
    ins: &Instr,
    l: &Limits,
    lo: &[i64; 6],
    hi: &[i64; 6],
) -> std::result::Result<(), String> {
    for (f, base, space) in ins.addresses() {
        let k = space as usize;
        let (off_lo, off_hi) = if f.strided { (lo[k], hi[k]) } else { (0, 0) };
        let base = i64::try_from(base).unwrap_or(i64::MAX);
        let (first, last) = (base + off_lo, base + off_hi);
        let (ext, limit) = (extent(ins, f.name, l), l.size[k]);
        if first < 0 {
            return Err(format!(
                "`{}` goes negative ({first}) under the loop strides",
                f.name
            ));
        }
        if last + ext > limit {
            return Err(format!(
                "`{}` reaches {last} (+{ext}) past the {} ({limit})",
                f.name,
                space_name(space)
            ));
        }
    }
    Ok(())
}
