//! PIM units as data, with a price: every unit a design adds to its banks or
//! to the buffer die is declared once in the device file (`[units.*]`) with
//! its lanes or ports, its area and process, its energy per operation and the
//! source of each figure. From them [`DeviceSpec::resolve`](crate::DeviceSpec::resolve)
//! derives what the simulator needs (each all-bank command's issue
//! interval, buffer and register sizes) and what a reader asks of a design
//! ([`AreaReport`], [`PowerReport`]).
//!
//! **Issue interval.** An all-bank column command hands every bank one column
//! (`column_bytes`) of work: a MAC `lanes` FP16 products, an 8-bit LUTACC 32
//! table reads (64 for 4-bit codes), a HISTACC as many bin updates, a BINMAC
//! `lanes` products, an ARGMIN `dsub x 2^nbits` distance terms. A unit that
//! completes `ops_per_cycle` operations per cycle (tCK) and serves
//! `banks_per_unit` banks takes `ceil(work x banks_per_unit / ops_per_cycle)`
//! cycles; the command's interval is the larger of that and nCCDAB (the
//! all-bank column command rate). Under the power limit, the interval also
//! stretches until the stack's PIM power stays within its budget:
//! `ceil(E_stack / (budget x tCK))`, `E_stack` the energy of one all-bank
//! command on every channel of a stack (column reads, unit operations,
//! buffer reads).

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::error::{PimError, Result};
use crate::limits::{cut, MAX_ENERGY_PJ, MAX_RULE_LATENCY};

/// A compute unit: per bank (or per group of banks), or on the buffer die.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    /// Banks one unit serves (1: one per bank; 4: one per bank group). For
    /// buffer-die units, 1 (one per channel).
    #[serde(default = "one")]
    pub banks_per_unit: u32,
    /// Operations one unit completes per cycle (tCK): multiply-accumulate
    /// lanes, buffer read ports of a lookup unit, register update ports of a
    /// histogram unit, distance lanes of a nearest-centroid unit, elements per
    /// cycle of the buffer-die vector unit.
    pub ops_per_cycle: u32,
    /// Area of one unit in `process`, mm^2.
    pub area_mm2: f64,
    /// The process the area assumes (`"DRAM 1y nm"`, `"logic 7 nm"`).
    pub process: String,
    /// Energy of one operation (one lane operation), pJ.
    pub energy_pj: f64,
    /// Where the figures come from; "estimate: ..." and how, when derived.
    pub source: String,
}

/// A storage unit (per-bank buffer or registers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    /// Banks that share one physical macro (buffer only; registers are per
    /// bank). A shared buffer holds one copy of what every bank reads alike
    /// (a query, a lookup table, a codebook) and each bank's own softmax
    /// weights side by side, so a slice gets `bytes / banks_per_unit`
    /// weights per bank; its lookup unit is shared at least as widely.
    #[serde(default = "one")]
    pub banks_per_unit: u32,
    /// Bytes per macro: what one bank's commands address.
    pub bytes: u32,
    /// Area per KiB (1024 bytes) in `process`, mm^2, periphery included.
    pub area_mm2_per_kib: f64,
    /// The process the area assumes.
    pub process: String,
    /// Energy per bit read or written, pJ.
    pub energy_pj_per_bit: f64,
    /// Where the figures come from; "estimate: ..." and how, when derived.
    pub source: String,
}

/// The units of a device: what its programs may use, each with a price.
/// A command whose unit is absent is refused before a program runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitsSpec {
    /// FP16 multiply-accumulate (MAC): AttAcc's per-bank unit.
    #[serde(default)]
    pub mac: Option<UnitSpec>,
    /// Table lookup and accumulate (LUTACC): one buffer read and one FP32
    /// add per code.
    #[serde(default)]
    pub lookup: Option<UnitSpec>,
    /// Histogram of softmax weights (HISTACC): one register read-add-write
    /// per code.
    #[serde(default)]
    pub histogram: Option<UnitSpec>,
    /// Bins times a value-codebook column (BINMAC): FP32 multiply-accumulate
    /// lanes.
    #[serde(default)]
    pub binmac: Option<UnitSpec>,
    /// Nearest-centroid search (ARGMIN): distance-term lanes (subtract,
    /// square, accumulate) and a running minimum.
    #[serde(default)]
    pub argmin: Option<UnitSpec>,
    /// Dequantize and multiply-accumulate (QMAC, with LDP filling its
    /// parameter latch): lanes of scalar codes dequantized with their
    /// group's parameters and multiplied into FP32 registers; Pimba's
    /// State-update Processing Unit, shared by two banks.
    #[serde(default)]
    pub dqmac: Option<UnitSpec>,
    /// Per-bank parameter latch of the dequantizer (QMAC's `pslot`, LDP's
    /// `slot`): a few columns of group parameters. Required with `dqmac`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latch: Option<MemorySpec>,
    /// Per-bank buffer (FP16 elements: the query, lookup tables, softmax
    /// weights, codebooks being streamed).
    pub buffer: MemorySpec,
    /// Per-bank FP32 accumulation registers (scores, bins, partial outputs).
    pub registers: MemorySpec,
    /// The buffer die's vector unit (SFM, RED), one per channel.
    pub softmax: UnitSpec,
}

/// The dies the areas are read against and the stack's power budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DieSpec {
    /// DRAM (core) dies per stack; banks are spread evenly over them.
    pub dram_dies_per_stack: u32,
    /// Area of one DRAM die, mm^2.
    pub dram_die_area_mm2: f64,
    /// Source of the die area.
    pub dram_die_source: String,
    /// Power a stack may draw for PIM operation, W.
    pub stack_power_budget_w: f64,
    /// Source of the budget.
    pub power_source: String,
}

fn one() -> u32 {
    1
}

/// The unit kinds a command uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    /// FP16 MAC lanes.
    Mac,
    /// Lookup-accumulate.
    Lookup,
    /// Histogram.
    Histogram,
    /// Bins times codebook.
    Binmac,
    /// Nearest centroid.
    Argmin,
    /// Dequantize and multiply-accumulate scalar codes (Pimba's SPU).
    Dqmac,
}

impl UnitKind {
    /// Every per-bank compute unit kind, in order.
    pub const ALL: [UnitKind; 6] = [
        UnitKind::Mac,
        UnitKind::Lookup,
        UnitKind::Histogram,
        UnitKind::Binmac,
        UnitKind::Argmin,
        UnitKind::Dqmac,
    ];

    /// The unit an all-bank column command runs on.
    pub fn of(cmd: Command) -> Option<UnitKind> {
        match cmd {
            Command::Mac => Some(UnitKind::Mac),
            Command::LutAcc => Some(UnitKind::Lookup),
            Command::HistAcc => Some(UnitKind::Histogram),
            Command::BinMac => Some(UnitKind::Binmac),
            Command::ArgMin => Some(UnitKind::Argmin),
            // LDP fills the dequantizer's latch: it needs the unit too.
            Command::QMac | Command::Ldp => Some(UnitKind::Dqmac),
            _ => None,
        }
    }

    /// The key of the unit in a device file.
    pub fn name(self) -> &'static str {
        match self {
            UnitKind::Mac => "mac",
            UnitKind::Lookup => "lookup",
            UnitKind::Histogram => "histogram",
            UnitKind::Binmac => "binmac",
            UnitKind::Argmin => "argmin",
            UnitKind::Dqmac => "dqmac",
        }
    }

    /// Its command.
    pub fn command(self) -> Command {
        match self {
            UnitKind::Mac => Command::Mac,
            UnitKind::Lookup => Command::LutAcc,
            UnitKind::Histogram => Command::HistAcc,
            UnitKind::Binmac => Command::BinMac,
            UnitKind::Argmin => Command::ArgMin,
            UnitKind::Dqmac => Command::QMac,
        }
    }
}

/// A resolved compute unit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unit {
    /// Banks one unit serves.
    pub banks_per_unit: u32,
    /// Operations per cycle.
    pub ops_per_cycle: u32,
    /// Area of one unit, mm^2.
    pub area_mm2: f64,
    /// Energy per operation, pJ.
    pub energy_pj: f64,
}

impl Unit {
    /// Cycles one unit needs for `work` operations of each of its banks:
    /// `ceil(work x banks_per_unit / ops_per_cycle)`.
    pub fn cycles(&self, work: u64) -> u64 {
        (work * u64::from(self.banks_per_unit)).div_ceil(u64::from(self.ops_per_cycle))
    }
}

/// The resolved units of a device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Units {
    /// Per-bank compute units, indexed by [`UnitKind`] order; `None` where
    /// the device has none.
    pub compute: [Option<Unit>; 6],
    /// The spec, for reports.
    pub spec: UnitsSpec,
    /// The dies.
    pub die: DieSpec,
}

impl Units {
    /// The unit of `kind`, if the device has one.
    pub fn get(&self, kind: UnitKind) -> Option<&Unit> {
        self.compute[kind as usize].as_ref()
    }
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> PimError {
    PimError::Spec {
        field: field.into(),
        reason: reason.into(),
    }
}

fn check_text(field: &str, text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(err(field, "is empty: say where the figure comes from, or \"estimate: ...\" and how it was derived"));
    }
    if text.len() > 1024 {
        return Err(err(field, "is longer than 1024 bytes"));
    }
    Ok(())
}

fn check_figure(field: &str, v: f64, max: f64) -> Result<()> {
    if !v.is_finite() || !(0.0..=max).contains(&v) {
        return Err(err(field, format!("{v} is outside 0..={max}")));
    }
    Ok(())
}

fn unit(field: &str, u: &UnitSpec, banks_per_channel: u32) -> Result<Unit> {
    if u.banks_per_unit == 0
        || u.banks_per_unit > banks_per_channel
        || !banks_per_channel.is_multiple_of(u.banks_per_unit)
    {
        return Err(err(
            format!("{field}.banks_per_unit"),
            format!(
                "{} must divide the {banks_per_channel} banks of a channel",
                u.banks_per_unit
            ),
        ));
    }
    if u.ops_per_cycle == 0 || u.ops_per_cycle > 65536 {
        return Err(err(
            format!("{field}.ops_per_cycle"),
            format!("{} is outside 1..=65536", u.ops_per_cycle),
        ));
    }
    check_figure(&format!("{field}.area_mm2"), u.area_mm2, 1e4)?;
    check_figure(&format!("{field}.energy_pj"), u.energy_pj, MAX_ENERGY_PJ)?;
    check_text(&format!("{field}.process"), &u.process)?;
    check_text(&format!("{field}.source"), &u.source)?;
    Ok(Unit {
        banks_per_unit: u.banks_per_unit,
        ops_per_cycle: u.ops_per_cycle,
        area_mm2: u.area_mm2,
        energy_pj: u.energy_pj,
    })
}

fn memory(field: &str, m: &MemorySpec) -> Result<()> {
    check_figure(
        &format!("{field}.area_mm2_per_kib"),
        m.area_mm2_per_kib,
        1e3,
    )?;
    check_figure(
        &format!("{field}.energy_pj_per_bit"),
        m.energy_pj_per_bit,
        MAX_ENERGY_PJ,
    )?;
    check_text(&format!("{field}.process"), &m.process)?;
    check_text(&format!("{field}.source"), &m.source)
}

impl UnitsSpec {
    /// Checks every figure and resolves the compute units.
    pub(crate) fn resolve(&self, die: &DieSpec, banks_per_channel: u32) -> Result<Units> {
        let specs = [
            &self.mac,
            &self.lookup,
            &self.histogram,
            &self.binmac,
            &self.argmin,
            &self.dqmac,
        ];
        let mut compute: [Option<Unit>; 6] = Default::default();
        for (i, s) in specs.iter().enumerate() {
            if let Some(u) = s {
                compute[i] = Some(unit(
                    &format!("units.{}", UnitKind::ALL[i].name()),
                    u,
                    banks_per_channel,
                )?);
            }
        }
        memory("units.buffer", &self.buffer)?;
        memory("units.registers", &self.registers)?;
        match (&self.dqmac, &self.latch) {
            (Some(_), None) => {
                return Err(err(
                    "units.latch",
                    "a dqmac unit needs its parameter latch: declare [units.latch]",
                ))
            }
            (_, Some(latch)) => {
                memory("units.latch", latch)?;
                if latch.banks_per_unit != 1 {
                    return Err(err(
                        "units.latch.banks_per_unit",
                        "the latch holds each bank's own group parameters: leave it at 1",
                    ));
                }
            }
            (None, None) => {}
        }
        let share = self.buffer.banks_per_unit;
        if share == 0 || share > banks_per_channel || !banks_per_channel.is_multiple_of(share) {
            return Err(err(
                "units.buffer.banks_per_unit",
                format!("{share} must divide the {banks_per_channel} banks of a channel"),
            ));
        }
        if self.registers.banks_per_unit != 1 {
            return Err(err(
                "units.registers.banks_per_unit",
                "registers hold each bank's own scores and bins: leave it at 1",
            ));
        }
        if let Some(l) = &compute[UnitKind::Lookup as usize] {
            if l.banks_per_unit < share {
                return Err(err(
                    "units.lookup.banks_per_unit",
                    format!(
                        "{} banks per lookup unit, fewer than the {share} banks that share a buffer: a shared buffer's reads go through one unit",
                        l.banks_per_unit
                    ),
                ));
            }
        }
        let sfm = unit("units.softmax", &self.softmax, banks_per_channel)?;
        if sfm.banks_per_unit != 1 {
            return Err(err(
                "units.softmax.banks_per_unit",
                "the buffer die has one vector unit per channel: leave it at 1",
            ));
        }
        if die.dram_dies_per_stack == 0 || die.dram_dies_per_stack > 64 {
            return Err(err(
                "die.dram_dies_per_stack",
                format!("{} is outside 1..=64", die.dram_dies_per_stack),
            ));
        }
        check_figure("die.dram_die_area_mm2", die.dram_die_area_mm2, 1e4)?;
        if die.dram_die_area_mm2 == 0.0 {
            return Err(err("die.dram_die_area_mm2", "must be positive"));
        }
        check_figure("die.stack_power_budget_w", die.stack_power_budget_w, 1e4)?;
        if die.stack_power_budget_w == 0.0 {
            return Err(err("die.stack_power_budget_w", "must be positive"));
        }
        check_text("die.dram_die_source", &die.dram_die_source)?;
        check_text("die.power_source", &die.power_source)?;
        Ok(Units {
            compute,
            spec: self.clone(),
            die: die.clone(),
        })
    }
}

/// PIM area of one DRAM die, and of the buffer die's units.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AreaReport {
    /// Banks on one DRAM die.
    pub banks_per_die: u64,
    /// Compute units' area per DRAM die, mm^2, by kind (`mac`, `lookup`, ...).
    pub logic_mm2_by_unit: Vec<(String, f64)>,
    /// All compute units per DRAM die, mm^2.
    pub logic_mm2: f64,
    /// Buffers and registers per DRAM die, mm^2.
    pub buffer_mm2: f64,
    /// Logic plus buffers per DRAM die, mm^2.
    pub total_mm2: f64,
    /// The DRAM die's area, mm^2.
    pub die_mm2: f64,
    /// `total_mm2 / die_mm2`.
    pub die_share: f64,
    /// The buffer die's vector units of one stack, mm^2 (logic process).
    pub buffer_die_mm2: f64,
}

/// Peak PIM power of one stack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerReport {
    /// Power of the most demanding all-bank command at its interval, every
    /// channel of a stack issuing it back to back, W.
    pub peak_w: f64,
    /// The command that draws it.
    pub peak_command: String,
    /// The stack's PIM power budget, W.
    pub budget_w: f64,
    /// Whether the interval in force keeps the peak within the budget (it
    /// always does under the power limit).
    pub within_budget: bool,
}

/// The work one bank does for one all-bank column command of `cmd` with
/// `bits`-bit codes (LUTACC, HISTACC, QMAC; LDP does none) or `dsub x 2^nbits` terms (ARGMIN, via
/// `terms`).
pub fn column_work(cmd: Command, column_bytes: u64, bits: u32, terms: u64) -> u64 {
    match cmd {
        Command::Mac | Command::BinMac => column_bytes / 2,
        Command::LutAcc | Command::HistAcc => column_bytes * 8 / u64::from(bits.max(1)),
        Command::ArgMin => terms,
        Command::QMac => column_bytes * 8 / u64::from(bits.max(1)),
        _ => 0,
    }
}

/// Largest derived interval accepted, cycles.
pub(crate) const MAX_INTERVAL: u64 = MAX_RULE_LATENCY as u64;

/// A unit-interval error for an absurd figure (checked in resolve).
pub(crate) fn interval_too_long(kind: UnitKind, cycles: u64) -> PimError {
    err(
        format!("units.{}", kind.name()),
        format!("a column takes {cycles} cycles on this unit, more than the limit of {MAX_INTERVAL}: give it more ops_per_cycle"),
    )
}

/// A name for errors.
pub(crate) fn missing_unit(device: &str, cmd: Command) -> String {
    match UnitKind::of(cmd) {
        Some(k) => format!(
            "device `{}` has no {} unit for {} (declare [units.{}] in its file, or use a device that has one, such as hbm3-aqpim-5.2)",
            cut(device),
            k.name(),
            cmd.name(),
            k.name()
        ),
        None => format!("{} needs no unit", cmd.name()),
    }
}
