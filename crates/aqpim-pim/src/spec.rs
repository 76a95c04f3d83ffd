//! Device specs as they live on disk: serde structs read from the TOML presets
//! in this crate's `presets/` folder (embedded from inside the crate, so that
//! it packages alone), turned into a runtime [`Device`](crate::Device) by
//! [`DeviceSpec::resolve`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::command::Level;
use crate::error::{PimError, Result};
use crate::units::{DieSpec, UnitsSpec};

/// The named presets shipped with the crate: `(name, TOML text)`.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "hbm3-attacc-5.2",
        include_str!("../presets/hbm3-attacc-5.2.toml"),
    ),
    (
        "hbm3-aqpim-5.2",
        include_str!("../presets/hbm3-aqpim-5.2.toml"),
    ),
    (
        "hbm3-aqpim-equal-area",
        include_str!("../presets/hbm3-aqpim-equal-area.toml"),
    ),
    (
        "hbm3-jedec-6.4",
        include_str!("../presets/hbm3-jedec-6.4.toml"),
    ),
    (
        "hbm3-pimba-5.2",
        include_str!("../presets/hbm3-pimba-5.2.toml"),
    ),
];

/// How many `extends` links a device file may follow.
const MAX_EXTENDS_DEPTH: usize = 4;

/// A PIM-enabled HBM device: organisation, clock, timing parameters and
/// rules, refresh, PIM units and energy per operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// Preset name.
    pub name: String,
    /// One line saying what the device is.
    #[serde(default)]
    pub description: String,
    /// Counts at each level of the hierarchy and the column geometry.
    pub organisation: OrganisationSpec,
    /// The command clock and the pin data rate.
    pub clock: ClockSpec,
    /// Named timing parameters (`nRCDRD`, ...), in cycles or nanoseconds.
    pub timing: BTreeMap<String, TimingValue>,
    /// Refresh policy.
    pub refresh: RefreshSpec,
    /// PIM command parameters.
    pub pim: PimSpec,
    /// PIM units, each with its lanes or ports, area, energy and source.
    pub units: UnitsSpec,
    /// The dies the areas are read against and the stack's power budget.
    pub die: DieSpec,
    /// Energy per DRAM operation.
    pub energy: EnergySpec,
    /// Timing rules, one row each.
    pub rules: Vec<RuleSpec>,
}

/// Organisation: counts per level and column geometry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganisationSpec {
    /// HBM stacks.
    pub stacks: u32,
    /// Channels per stack.
    pub channels_per_stack: u32,
    /// Pseudo-channels per channel (at most 4).
    pub pseudo_channels: u32,
    /// Stack IDs (ranks) per pseudo-channel (at most 4).
    pub sids: u32,
    /// Bank groups per SID (at most 16).
    pub bank_groups: u32,
    /// Banks per bank group (at most 16).
    pub banks_per_group: u32,
    /// Rows per bank.
    pub rows: u32,
    /// Columns per row.
    pub columns: u32,
    /// Bytes per column access (one burst).
    pub column_bytes: u32,
    /// Data pins per pseudo-channel.
    pub dq_bits_per_pseudo_channel: u32,
}

/// Clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSpec {
    /// Command clock period (tCK) in picoseconds.
    pub t_ck_ps: u32,
    /// Data rate per pin in mega-transfers per second.
    pub data_rate_mtps: u32,
}

/// A timing parameter: a cycle count, or a time that resolve() rounds up to
/// cycles.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TimingValue {
    /// Command-clock cycles.
    Cycles(u32),
    /// Nanoseconds (`{ ns = 350.0 }`).
    Ns {
        /// The time in nanoseconds.
        ns: f64,
    },
}

/// Refresh policy: an all-bank REF per channel every `interval` cycles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshSpec {
    /// Whether the simulator inserts refresh.
    pub enabled: bool,
    /// Name of the timing parameter that holds the refresh interval (tREFI).
    pub interval: String,
}

/// PIM command parameters. The units themselves (lanes, ports, buffer and
/// register sizes, area, energy) are in [`UnitsSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PimSpec {
    /// FP16 elements of one column; must equal `column_bytes / 2`.
    pub lanes: u32,
    /// Cycles between all-bank column commands (nCCDAB): the command rate
    /// the channel allows whatever the unit. A unit slower than that, or the
    /// power budget, stretches a command's interval further (`units.rs`).
    pub n_ccdab: u32,
    /// Whether the stack's PIM power budget (`[die] stack_power_budget_w`)
    /// limits the all-bank command rate.
    pub power_limited: bool,
    /// Bytes of buffer-die storage per channel (FP32 elements: `/ 4`, at most 65536 elements).
    pub buffer_die_bytes: u32,
    /// Bank-to-buffer-die transfer rate, bytes per cycle (MVD, MVB).
    pub mv_bytes_per_cycle: u32,
    /// Softmax pipeline latency, cycles.
    pub sfm_latency: u32,
}

/// Energy per DRAM operation, in picojoules (the PIM units carry their own
/// in [`UnitsSpec`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnergySpec {
    /// One bank activation (row open and its precharge).
    pub act_pj: f64,
    /// Per bit read from or written to a bank's array (column access).
    pub column_pj_per_bit: f64,
    /// Per bit across the external interface.
    pub io_pj_per_bit: f64,
    /// Per bit moved between banks and the buffer die.
    pub buffer_die_pj_per_bit: f64,
    /// One all-bank refresh of a channel.
    pub refresh_pj: f64,
}

/// One timing rule: `following` may not issue earlier than `latency` cycles
/// after `preceding` at the same node of `level` (with `window > 1`: after the
/// `window`-th most recent `preceding` at that node, as tFAW).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Rule name, used in errors (`tRCDRD`).
    pub name: String,
    /// Level at which the two commands must share a node.
    pub level: Level,
    /// Commands that start the constraint.
    pub preceding: Vec<String>,
    /// Commands that it constrains.
    pub following: Vec<String>,
    /// Latency: a sum of timing parameter names and integers (`nCWL + nBL + nWR`).
    pub latency: String,
    /// Window for rolling-window rules (1 for plain rules).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub window: u32,
}

fn one() -> u32 {
    1
}

fn is_one(w: &u32) -> bool {
    *w == 1
}

impl DeviceSpec {
    /// Parses a spec from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        Self::from_toml_str_with(text, &[])
    }

    /// [`from_toml_str`](Self::from_toml_str) with `overrides` set in the
    /// table (after its `extends` chain is merged) before it is read, so that
    /// an override is checked exactly as the same key in the file would be.
    pub fn from_toml_str_with(text: &str, overrides: &[Override]) -> Result<Self> {
        if text.len() as u64 > crate::limits::MAX_DEVICE_FILE_BYTES {
            return Err(PimError::Parse(format!(
                "{} bytes of TOML, more than the limit of {} for a device file",
                text.len(),
                crate::limits::MAX_DEVICE_FILE_BYTES
            )));
        }
        let mut value = Self::merged_value(text, 0)?;
        for o in overrides {
            o.apply(&mut value).map_err(PimError::Parse)?;
        }
        // toml's messages quote the offending line; keep them short.
        value.try_into().map_err(|e: toml::de::Error| {
            let mut message = shorten_lines(&e.to_string());
            if !overrides.is_empty() {
                message.push_str(&format!(
                    " (with the overrides {})",
                    Override::list(overrides)
                ));
            }
            PimError::Parse(message)
        })
    }

    /// The file's TOML table with its `extends` chain applied: `extends =
    /// "PRESET"` starts from that shipped preset and replaces, table by
    /// table and key by key, what this file sets (arrays, such as `rules`,
    /// are replaced whole). A device that adds units to another keeps its
    /// organisation, timing and rules declared once.
    fn merged_value(text: &str, depth: usize) -> Result<toml::Table> {
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e: toml::de::Error| PimError::Parse(shorten_lines(&e.to_string())))?;
        let Some(base) = table.remove("extends") else {
            return Ok(table);
        };
        let toml::Value::String(base) = base else {
            return Err(PimError::Parse(
                "`extends` must be the name of a device preset".into(),
            ));
        };
        if depth >= MAX_EXTENDS_DEPTH {
            return Err(PimError::Parse(format!(
                "`extends = \"{}\"`: more than {MAX_EXTENDS_DEPTH} presets deep (a cycle?)",
                crate::limits::cut(&base)
            )));
        }
        let Some((_, base_text)) = PRESETS.iter().find(|(n, _)| *n == base) else {
            return Err(PimError::UnknownPreset {
                name: crate::limits::cut(&base),
                known: PRESETS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let mut merged = Self::merged_value(base_text, depth + 1)?;
        merge(&mut merged, table);
        Ok(merged)
    }

    /// Serializes the spec to TOML text.
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| PimError::Parse(e.to_string()))
    }

    /// Reads a spec from a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_file_with(path, &[])
    }

    /// [`from_file`](Self::from_file) with `overrides` (see
    /// [`from_toml_str_with`](Self::from_toml_str_with)).
    pub fn from_file_with(path: &Path, overrides: &[Override]) -> Result<Self> {
        let len = std::fs::metadata(path)
            .map_err(|e| PimError::Parse(format!("reading {}: {e}", path.display())))?
            .len();
        if len > crate::limits::MAX_DEVICE_FILE_BYTES {
            return Err(PimError::Parse(format!(
                "{} has {len} bytes, more than the limit of {} for a device file",
                path.display(),
                crate::limits::MAX_DEVICE_FILE_BYTES
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| PimError::Parse(format!("reading {}: {e}", path.display())))?;
        Self::from_toml_str_with(&text, overrides)
    }

    /// A named preset (`hbm3-attacc-5.2`, `hbm3-jedec-6.4`, `hbm3-pimba-5.2`, ...).
    pub fn preset(name: &str) -> Result<Self> {
        Self::preset_with(name, &[])
    }

    /// [`preset`](Self::preset) with `overrides` (see
    /// [`from_toml_str_with`](Self::from_toml_str_with)).
    pub fn preset_with(name: &str, overrides: &[Override]) -> Result<Self> {
        match PRESETS.iter().find(|(n, _)| *n == name) {
            Some((_, text)) => Self::from_toml_str_with(text, overrides),
            None => Err(PimError::UnknownPreset {
                name: crate::limits::cut(name),
                known: PRESETS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// A device preset by name, or else a device TOML file, with
    /// `overrides` set before it is read. The one resolver of device names:
    /// errors say what the name was taken as, and, for a name that is
    /// neither, the presets that exist and the path that was tried.
    pub fn preset_or_file(name_or_path: &str, overrides: &[Override]) -> Result<Self> {
        let shown = crate::limits::cut(name_or_path);
        let known = || {
            PRESETS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let source = |taken_as: String| {
            move |e: PimError| PimError::DeviceSource {
                taken_as,
                reason: e.to_string(),
            }
        };
        if PRESETS.iter().any(|(n, _)| *n == name_or_path) {
            return Self::preset_with(name_or_path, overrides)
                .map_err(source(format!("device preset `{shown}`")));
        }
        let path = Path::new(name_or_path);
        if path.exists() {
            return Self::from_file_with(path, overrides)
                .map_err(source(format!("device `{shown}` (taken as a file path)")));
        }
        let tried = if path.is_absolute() {
            path.display().to_string()
        } else {
            std::env::current_dir()
                .map(|d| d.join(path).display().to_string())
                .unwrap_or_else(|_| path.display().to_string())
        };
        Err(PimError::UnknownDevice {
            name: shown,
            known: known(),
            tried: crate::limits::cut(&tried),
        })
    }

    /// AttAcc's HBM3 5.2 Gbps device.
    pub fn hbm3_attacc() -> Self {
        Self::preset("hbm3-attacc-5.2").expect("the shipped preset parses (tested)")
    }

    /// AttAcc's HBM3 5.2 Gbps device with AQPIM's units.
    pub fn hbm3_aqpim() -> Self {
        Self::preset("hbm3-aqpim-5.2").expect("the shipped preset parses (tested)")
    }

    /// The JEDEC-derived HBM3 6.4 Gbps device.
    pub fn hbm3_jedec() -> Self {
        Self::preset("hbm3-jedec-6.4").expect("the shipped preset parses (tested)")
    }
}

/// The longest `--set` value taken, in bytes (a device file's figures are
/// short; anything longer is a paste gone wrong).
const MAX_OVERRIDE_BYTES: usize = 4096;

/// How many dotted segments an override key may have (`units.mac.ops_per_cycle`
/// has three).
const MAX_OVERRIDE_DEPTH: usize = 8;

/// One `KEY=VALUE` override of a figure of a TOML preset (`aqpim ... --set`):
/// a dotted key path into the preset's tables (`pim.n_ccdab`), and the value
/// parsed as a TOML value (`64`, `64.0`, `true`, `"sequence"`, `{ ns = 3.5 }`),
/// a bare word that is no TOML value taken as a string (`sequence`,
/// `pq:dsub=2,kbits=8`). Setting a key the preset's schema does not have is
/// the same error as writing it in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The dotted key path, as given.
    pub key: String,
    /// The value, parsed.
    pub value: toml::Value,
    /// The value as given, for messages and records.
    pub text: String,
}

impl std::str::FromStr for Override {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let Some((key, text)) = s.split_once('=') else {
            return Err(format!(
                "`{}`: expected SECTION.KEY=VALUE (pim.link_gbps=64)",
                crate::limits::cut(s)
            ));
        };
        let key = key.trim();
        if text.len() > MAX_OVERRIDE_BYTES {
            return Err(format!(
                "`{}`: a value of {} bytes, more than the limit of {MAX_OVERRIDE_BYTES}",
                crate::limits::cut(key),
                text.len()
            ));
        }
        let segments: Vec<&str> = key.split('.').collect();
        if key.is_empty()
            || segments.len() > MAX_OVERRIDE_DEPTH
            || segments.iter().any(|k| k.trim().is_empty())
        {
            return Err(format!(
                "`{}`: a key is dotted names (pim.link_gbps), at most {MAX_OVERRIDE_DEPTH} deep",
                crate::limits::cut(key)
            ));
        }
        Ok(Self {
            key: key.to_string(),
            value: parse_value(text.trim()),
            text: text.trim().to_string(),
        })
    }
}

impl std::fmt::Display for Override {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key, self.text)
    }
}

impl Override {
    /// The overrides as a record: `key=value` joined by `;` (empty for none).
    pub fn list(overrides: &[Override]) -> String {
        overrides
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(";")
    }

    /// This override with its first key segment removed when it is `prefix`
    /// (`device.pim.n_ccdab` with `device`: `pim.n_ccdab`), else `None`.
    pub fn strip_prefix(&self, prefix: &str) -> Option<Override> {
        let rest = self.key.strip_prefix(prefix)?.strip_prefix('.')?;
        Some(Self {
            key: rest.to_string(),
            ..self.clone()
        })
    }

    /// Sets the value at the key in `table`, creating the tables on the way
    /// that do not exist yet; an error when the way passes through a value
    /// that is not a table (an array or a number).
    pub fn apply(&self, table: &mut toml::Table) -> std::result::Result<(), String> {
        let segments: Vec<&str> = self.key.split('.').map(str::trim).collect();
        let (last, path) = segments
            .split_last()
            .ok_or_else(|| format!("`{self}`: an empty key"))?;
        let mut here = table;
        for (i, seg) in path.iter().enumerate() {
            let entry = here
                .entry(seg.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            here = match entry {
                toml::Value::Table(t) => t,
                other => {
                    return Err(format!(
                        "--set {}: `{}` is a {}, not a table",
                        crate::limits::cut(&self.to_string()),
                        segments[..=i].join("."),
                        other.type_str()
                    ))
                }
            };
        }
        here.insert(last.to_string(), self.value.clone());
        Ok(())
    }
}

/// `text` as a TOML value (`64`, `true`, `"x"`, `[1, 2]`, `{ ns = 3.5 }`),
/// or, when it is none, the string itself.
fn parse_value(text: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(mut t) if t.len() == 1 && !text.contains(['\n', '\r']) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.to_string())),
        _ => toml::Value::String(text.to_string()),
    }
}

/// `over` laid onto `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `message` with every line cut to 160 characters and joined by `; `.
fn shorten_lines(message: &str) -> String {
    message
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(|l| match l.char_indices().nth(160) {
            Some((i, _)) => format!("{}...", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> Override {
        s.parse().unwrap()
    }

    #[test]
    fn override_values_read_as_toml_or_as_a_bare_string() {
        assert_eq!(set("pim.n_ccdab=6").value, toml::Value::Integer(6));
        assert_eq!(set("a.b=64.0").value, toml::Value::Float(64.0));
        assert_eq!(set("a.b=true").value, toml::Value::Boolean(true));
        assert_eq!(set("a=\"x y\"").value, toml::Value::String("x y".into()));
        assert_eq!(
            set("a=sequence").value,
            toml::Value::String("sequence".into())
        );
        let kv = set("pim.kv=pq:dsub=2,kbits=8");
        assert_eq!(kv.value, toml::Value::String("pq:dsub=2,kbits=8".into()));
        assert_eq!(kv.to_string(), "pim.kv=pq:dsub=2,kbits=8");
        for bad in ["novalue", "=3", "a..b=1", ".a=1"] {
            assert!(bad.parse::<Override>().is_err(), "{bad}");
        }
    }

    #[test]
    fn device_overrides_are_checked_as_the_file_is() {
        let text = PRESETS[0].1;
        let base = DeviceSpec::from_toml_str(text).unwrap();
        let d = DeviceSpec::from_toml_str_with(text, &[set("pim.n_ccdab=7")]).unwrap();
        assert_eq!(d.pim.n_ccdab, 7);
        assert_eq!(d.organisation, base.organisation);
        let e = DeviceSpec::from_toml_str_with(text, &[set("pim.n_ccdabb=7")]).unwrap_err();
        assert!(e.to_string().contains("unknown field `n_ccdabb`"), "{e}");
        assert!(e.to_string().contains("pim.n_ccdabb=7"), "{e}");
        let e = DeviceSpec::from_toml_str_with(text, &[set("name.x=1")]).unwrap_err();
        assert!(e.to_string().contains("`name` is a string"), "{e}");
        assert_eq!(
            set("device.pim.x=1").strip_prefix("device"),
            Some(set("pim.x=1"))
        );
        assert_eq!(set("devices.x=1").strip_prefix("device"), None);
    }
}
