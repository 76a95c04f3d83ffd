//! PIM ISA and bank simulator (layer 3): HBM3 organisation and timing as data,
//! an instruction set with a binary encoding and an assembly text format, and a
//! functional and cycle-accurate simulator that reports cycles, bytes moved and
//! energy.
//!
//! The simulator executes programs; it knows nothing of product quantization or
//! language models, and it depends on no other workspace crate.
//!
//! The flow: a [`DeviceSpec`] (a TOML preset in the crate's `presets/` folder) is
//! [`resolve`](DeviceSpec::resolve)d into a [`Device`] (cycles, integer ids,
//! rule tables); a [`Program`] (assembled from text or decoded from 64-bit
//! words) runs on a [`Simulator`] for that device, which issues every command
//! at its earliest legal cycle and returns [`Stats`]. The untimed loader
//! methods of [`Simulator`] place data in banks, buffers and registers before a
//! run and read results after it. [`check_trace`] validates a recorded command
//! trace against the device's rules by a separate code path. `docs/pim.md` is
//! the ISA reference.
//!
//! # API
//!
//! Everything is exported here, at the root, once; the modules are private
//! but for [`bench`](mod@bench) and [`limits`].
//!
//! - Devices: [`DeviceSpec`] (with its sections [`OrganisationSpec`],
//!   [`ClockSpec`], [`RefreshSpec`], [`PimSpec`], [`EnergySpec`],
//!   [`RuleSpec`], [`TimingValue`], and [`Override`]; the presets
//!   [`PRESETS`]) resolved into a [`Device`] ([`Organisation`],
//!   [`PimParams`], [`Rule`]); the levels and commands of the timing model,
//!   [`Level`], [`Command`], [`Scope`].
//! - Units and their price: [`UnitsSpec`], [`UnitSpec`], [`MemorySpec`],
//!   [`DieSpec`], resolved into [`Units`] of [`Unit`]s by [`UnitKind`];
//!   [`column_work`]; the reports [`AreaReport`] and [`PowerReport`].
//! - Programs: [`Instr`] (with [`BankSel`], [`CodeBits`], [`Strides`]) and
//!   [`Program`] (assemble, disassemble, encode, decode, the binary file form
//!   and [`is_binary`]); the bounds [`MAX_LOOP_DEPTH`], [`MAX_LOOP_COUNT`],
//!   [`MAX_PROGRAM_COMMANDS`] and [`MAX_PROGRAM_STEPS`].
//! - Running: [`Simulator`] with [`SimOptions`] and [`Mode`]; its results
//!   [`Stats`], [`RegionStats`], [`EnergyBreakdown`]; its trace of
//!   [`TraceEntry`]s, bounded by [`MAX_TRACE_ENTRIES`], and its refreshes by
//!   [`MAX_REFRESHES`].
//! - Checking: [`check_trace`] (a whole trace) and [`Timer`] (the timing
//!   rules of one channel, probed command by command).
//! - Errors: [`PimError`] and [`Result`].
//! - [`bench`](mod@bench): the standard benchmark mix and the analytic bandwidths;
//!   [`limits`]: the ceilings on a device file's values.
//!
//! ```
//! use aqpim_pim::{BankSel, Device, Program, SimOptions, Simulator};
//! use half::f16;
//!
//! let device = Device::preset("hbm3-aqpim-5.2")?;
//! let mut sim = Simulator::new(&device, SimOptions::default());
//! // Untimed loader: one column of 8-bit codes in row 7 of every bank of
//! // channel 0, and a table of 32 x 256 FP16 entries (all 0.5) in every buffer.
//! for b in 0..device.org.banks_per_channel {
//!     let (pc, sid, bg, bank) = device.org.bank_coords(b);
//!     let sel = BankSel { pc: pc as u8, sid: sid as u8, bg: bg as u8, bank: bank as u8 };
//!     sim.write_bank(0, sel, 7, 0, &[3u8; 32])?;
//! }
//! let half = f16::from_f32(0.5).to_bits().to_le_bytes();
//! sim.write_buffer(0, None, 0, &half.repeat(32 * 256))?;
//! let program = Program::assemble(
//!     "ACTAB ch=0 row=7\n\
//!      LUTACC ch=0 col=0 bits=8 group=32 table=0 reg=0\n\
//!      PREAB ch=0\n",
//! )?;
//! let stats = sim.run(&program)?;
//! assert_eq!(sim.registers(0, BankSel::default())?[0], 16.0); // 32 codes x 0.5
//! assert_eq!(stats.commands["LUTACC"], 1);
//! assert!(stats.cycles >= u64::from(device.param("nRCDRD").unwrap()));
//! # Ok::<(), aqpim_pim::PimError>(())
//! ```

#![forbid(unsafe_code)]

mod asm;
mod banks;
pub mod bench;
mod bounds;
mod checker;
mod command;
mod error;
mod isa;
pub mod limits;
mod memory;
mod pricing;
mod resolve;
mod sim;
mod spec;
mod stats;
mod timing;
mod trace;
mod units;

pub use bounds::{MAX_PROGRAM_COMMANDS, MAX_PROGRAM_STEPS, MAX_REFRESHES, MAX_TRACE_ENTRIES};
pub use checker::check_trace;
pub use command::{Command, Level, Scope};
pub use error::{PimError, Result};
pub use isa::{is_binary, BankSel, CodeBits, Instr, Program, Strides};
pub use isa::{MAX_LOOP_COUNT, MAX_LOOP_DEPTH};
pub use resolve::{Device, Organisation, PimParams, Rule};
pub use sim::{Mode, SimOptions, Simulator};
pub use spec::{
    ClockSpec, DeviceSpec, EnergySpec, OrganisationSpec, Override, PimSpec, RefreshSpec, RuleSpec,
    TimingValue, PRESETS,
};
pub use stats::{EnergyBreakdown, RegionStats, Stats};
pub use timing::Timer;
pub use trace::TraceEntry;
pub use units::{
    column_work, AreaReport, DieSpec, MemorySpec, PowerReport, Unit, UnitKind, UnitSpec, Units,
    UnitsSpec,
};
