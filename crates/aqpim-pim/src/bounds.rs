//! The work bounds of a run, all decided or enforced by the simulator: the
//! commands a program issues and the instructions it executes (loops
//! expanded, both counted before it runs from the loop counts, with checked
//! arithmetic), the entries a recorded trace holds and the refreshes a run
//! inserts. Each is a design limit with the reason for its size; a program
//! past one is refused with [`PimError::Limit`] naming it. The ceilings on a
//! device file's values are in [`limits`](crate::limits).

use crate::error::{PimError, Result};
use crate::isa::{Instr, Program};

/// Most commands one program may issue when run, loops expanded (2^32). A
/// design limit, sized so that a run ends in minutes: the simulator issues
/// on the order of 10^7 commands per second on one core (`aqpim sim bench`),
/// and a recorded trace is bounded separately by
/// [`MAX_TRACE_ENTRIES`]. Encodable programs may
/// describe more (four nested `LOOP 16777215` describe 2^96); they assemble,
/// decode and disassemble, but [`Program::checked_command_count`] and every
/// run refuse them.
pub const MAX_PROGRAM_COMMANDS: u64 = 1 << 32;

/// Most instructions one run may execute by default, loops expanded: every
/// command, `BARRIER`, `LOOP` and `ENDLOOP`, each time it runs (2^33). The
/// command limit alone leaves loops that issue nothing unbounded (two nested
/// `LOOP 16777215` around a `BARRIER`, or around nothing, run 2.8 x 10^14
/// iterations); this one bounds the work of every run. A program within
/// [`MAX_PROGRAM_COMMANDS`] whose loops all issue commands executes at most
/// about twice as many steps as it issues commands, plus its barriers: the
/// lowered Llama-2-7B layer at 128K, batch 1, shipped PQ format executes
/// 745,280 steps for 405,600 commands (measured: `aqpim attn sim --dump`,
/// then `aqpim sim run --max-steps` bisected), four orders of magnitude
/// inside the limit.
/// [`Simulator::set_step_limit`](crate::Simulator::set_step_limit) (`aqpim
/// sim run --max-steps`) changes it for a run.
pub const MAX_PROGRAM_STEPS: u64 = 1 << 33;

/// Most entries a recorded trace may hold (2^24, about 0.5 GiB of
/// [`TraceEntry`](crate::TraceEntry)s): a run with `record_trace` that would record more is an
/// error, refused before it starts when the program alone issues more. A
/// design limit, sized to keep `sim run --check` within a few GiB.
pub const MAX_TRACE_ENTRIES: u64 = 1 << 24;

/// Most refreshes one run may insert (2^28). Refreshes follow simulated
/// time, not the program, so a device whose timing values stretch time far
/// past its refresh interval could otherwise make a short program run for
/// hours; the limit turns that into an error. A design limit: a one-second
/// run of a 32-channel HBM3 device at tREFI = 3.9 us needs about 2^23.
pub const MAX_REFRESHES: u64 = 1 << 28;

/// The error of a trace that would pass [`MAX_TRACE_ENTRIES`].
pub(crate) fn trace_limit() -> PimError {
    PimError::Limit {
        what: "trace entries (commands and refreshes) recorded",
        limit: MAX_TRACE_ENTRIES,
    }
}

impl Program {
    /// Number of commands the program issues when run (loops expanded;
    /// refresh not counted), saturating at `u64::MAX`. See
    /// [`Program::checked_command_count`] for the bounded count.
    pub fn command_count(&self) -> u64 {
        self.expanded(u64::MAX, issues).unwrap_or(u64::MAX)
    }

    /// Number of commands the program issues when run (loops expanded;
    /// refresh not counted), or an error naming [`MAX_PROGRAM_COMMANDS`]
    /// when it issues more. Computed with checked arithmetic.
    pub fn checked_command_count(&self) -> Result<u64> {
        self.expanded(MAX_PROGRAM_COMMANDS, issues)
            .ok_or(PimError::Limit {
                what: "commands issued by the program (loops expanded)",
                limit: MAX_PROGRAM_COMMANDS,
            })
    }

    /// Number of instructions a run executes (loops expanded: every command,
    /// `BARRIER`, `LOOP` and `ENDLOOP` each time it runs), or an error naming
    /// `limit` when it executes more. Decided before the run, from the loop
    /// counts, with checked arithmetic.
    pub fn checked_step_count(&self, limit: u64) -> Result<u64> {
        self.expanded(limit, |_| true).ok_or(PimError::Limit {
            what: "instructions executed by the program (loops expanded; BARRIER, LOOP and \
                   ENDLOOP counted each time they run)",
            limit,
        })
    }

    /// How many times the instructions that `counted` selects run, loops
    /// expanded (a `LOOP` runs as often as its enclosing body, an `ENDLOOP`
    /// as often as its own); `None` past `limit`. A body that counts nothing
    /// costs nothing however often it repeats: its multiplicity is only
    /// checked when it counts.
    fn expanded(&self, limit: u64, counted: impl Fn(&Instr) -> bool) -> Option<u64> {
        // Multiplicity of the current loop body, per nesting level.
        let mut mult: Vec<u64> = vec![1];
        let mut total = 0u64;
        for ins in self.instrs() {
            let m = mult.last().copied().unwrap_or(1);
            match ins {
                Instr::Loop { count, .. } => mult.push(m.saturating_mul(u64::from(*count))),
                Instr::EndLoop => {
                    mult.pop();
                }
                _ => {}
            }
            if counted(ins) {
                total = total.checked_add(m).filter(|&t| t <= limit)?;
            }
        }
        Some(total)
    }
}

/// Whether an instruction issues a command (its table row names one: all
/// but `BARRIER`, `LOOP` and `ENDLOOP`).
fn issues(ins: &Instr) -> bool {
    ins.spec().command.is_some()
}
