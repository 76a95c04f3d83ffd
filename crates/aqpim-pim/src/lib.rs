//! PIM ISA and bank simulator (layer 3): HBM3 organisation and timing as data,
//! an instruction set with a binary encoding and an assembly text format, and a
//! functional and cycle-accurate simulator that reports cycles, bytes moved and
//! energy.
//!
//! The simulator executes programs; it knows nothing of product quantization or
//! language models, and it depends on no other workspace crate.
//!
//! The flow: a [`DeviceSpec`] (a TOML preset in `configs/devices/`) is
//! [`resolve`](DeviceSpec::resolve)d into a [`Device`] (cycles, integer ids,
//! rule tables); a [`Program`] (assembled from text or decoded from 64-bit
//! words) runs on a [`Simulator`] for that device, which issues every command
//! at its earliest legal cycle and returns [`Stats`]. The untimed loader
//! methods of [`Simulator`] place data in banks, buffers and registers before a
//! run and read results after it. [`check_trace`] validates a recorded command
//! trace against the device's rules by a separate code path. `docs/pim.md` is
//! the ISA reference.

pub mod bench;
mod checker;
mod command;
mod energy;
mod error;
pub mod isa;
mod resolve;
mod sim;
mod spec;
mod stats;

pub use checker::check_trace;
pub use command::{Command, Level, Scope};
pub use error::{PimError, Result};
pub use isa::{BankSel, CodeBits, Instr, Program, Strides};
pub use resolve::{Device, Organisation, PimParams, Rule};
pub use sim::{Mode, SimOptions, Simulator, Timer, TraceEntry};
pub use spec::{
    ClockSpec, DeviceSpec, EnergySpec, OrganisationSpec, PimSpec, RefreshSpec, RuleSpec,
    TimingValue, PRESETS,
};
pub use stats::{EnergyBreakdown, Stats};
