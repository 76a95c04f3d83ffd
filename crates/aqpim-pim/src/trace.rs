//! The command trace: one entry per issued command, as the
//! [`Simulator`](crate::Simulator) records it (with
//! [`SimOptions::record_trace`](crate::SimOptions::record_trace)) and
//! [`check_trace`](crate::check_trace) reads it back. `docs/pim.md` documents
//! the format; [`MAX_TRACE_ENTRIES`](crate::MAX_TRACE_ENTRIES) bounds it.

use serde::{Deserialize, Serialize};

use crate::command::Command;

/// One issued command. `bank` is the channel-local bank index
/// (`((pc * sids + sid) * bank_groups + bg) * banks_per_group + bank`) for
/// single-bank commands and 0 for all-bank ones; `row` is set for ACT and
/// ACTAB, `col` for column commands, `len` for MVD, MVB, SFM, CLR, RED and RDD
/// (elements per bank for MVD/MVB, with `broadcast` MVB recorded as `len` with
/// bit 31 set, and a buffer-die CLR likewise with bit 31 set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEntry {
    /// Issue cycle.
    pub cycle: u64,
    /// Command.
    pub cmd: Command,
    /// Device-wide channel index.
    pub channel: u16,
    /// Channel-local bank index.
    pub bank: u16,
    /// Row: the one opened (ACT, ACTAB) or the open one a column command
    /// reads or writes (RD, WR, STC, the PIM column commands).
    pub row: u32,
    /// Column (column commands).
    pub col: u16,
    /// Length operand (MVD, MVB, SFM, CLR, RED, RDD).
    pub len: u32,
    /// Inserted by the simulator (refresh and the row restores after it).
    pub auto: bool,
}

impl TraceEntry {
    /// Whether an MVB entry was a broadcast.
    pub const BROADCAST: u32 = 1 << 31;
    /// Whether a CLR entry cleared the buffer die (same bit as [`Self::BROADCAST`]).
    pub const DIE: u32 = 1 << 31;
}
