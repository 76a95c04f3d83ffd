//! The crate's error type: every way a spec, a program or a run can be wrong.

/// Result with [`PimError`].
pub type Result<T, E = PimError> = std::result::Result<T, E>;

/// Everything that can go wrong in `aqpim-pim`, with the fields a user needs
/// to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PimError {
    /// A device spec is inconsistent or incomplete.
    #[error("device spec `{field}`: {reason}")]
    Spec {
        /// The offending field (dotted path).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A spec file is not valid TOML or does not match the schema.
    #[error("parsing device spec: {0}")]
    Parse(String),
    /// A preset name is unknown.
    #[error("unknown device preset `{name}` (known: {known})")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// The presets that exist.
        known: String,
    },
    /// A device name that is neither a preset nor an existing file.
    #[error(
        "device `{name}`: not a device preset (known: {known}) and no such file (tried {tried})"
    )]
    UnknownDevice {
        /// The name asked for.
        name: String,
        /// The presets that exist.
        known: String,
        /// The path looked up (joined to the working directory when relative).
        tried: String,
    },
    /// A device preset or file that did not load, with what it was taken as.
    #[error("{taken_as}: {reason}")]
    DeviceSource {
        /// "device preset `NAME`" or "device `NAME` (taken as a file path)".
        taken_as: String,
        /// Why it did not load.
        reason: String,
    },
    /// Assembly text is malformed.
    #[error("assembly line {line}: {reason}")]
    Asm {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A binary program is malformed.
    #[error("binary program, word {word}: {reason}")]
    Decode {
        /// 0-based index of the 64-bit word.
        word: usize,
        /// What is wrong.
        reason: String,
    },
    /// A program does not fit the device (an address out of range, a buffer
    /// overrun) or is structurally wrong (unbalanced loops).
    #[error("instruction {index} (`{instr}`): {reason}")]
    Program {
        /// 0-based instruction index.
        index: usize,
        /// The instruction, disassembled.
        instr: String,
        /// What is wrong.
        reason: String,
    },
    /// A command would issue before a timing rule allows it.
    #[error("{cmd} on channel {channel} at cycle {cycle} violates {rule}; earliest legal cycle is {earliest}")]
    Timing {
        /// Command name.
        cmd: &'static str,
        /// Channel index.
        channel: usize,
        /// The cycle asked for.
        cycle: u64,
        /// The rule (a rule name from the spec, `command-bus` or `channel-busy`).
        rule: String,
        /// The earliest cycle at which the command is legal.
        earliest: u64,
    },
    /// A command is illegal in the current bank state (a read from a closed
    /// row, an activate to an open bank).
    #[error("{cmd} on {target} is illegal: {rule} ({reason}){}", earliest_text(*.earliest))]
    State {
        /// Command name.
        cmd: &'static str,
        /// The bank or channel addressed.
        target: String,
        /// The state rule violated (`bank-closed`, `row-open`, `all-banks-open`, `all-banks-closed`).
        rule: &'static str,
        /// What the state is.
        reason: String,
        /// The earliest cycle at which it would be legal, if it can become
        /// legal without another command (never, for state rules).
        earliest: Option<u64>,
    },
    /// A recorded trace violates the spec (found by the independent checker).
    #[error("trace entry {index} ({cmd} on channel {channel} at cycle {cycle}) violates {rule}: {detail}")]
    Trace {
        /// 0-based index of the offending entry.
        index: usize,
        /// Command name.
        cmd: &'static str,
        /// Channel index.
        channel: usize,
        /// Its cycle.
        cycle: u64,
        /// The rule violated.
        rule: String,
        /// Details (the earlier entry involved, the gap and the latency).
        detail: String,
    },
    /// A command met data it cannot process (Functional mode only): an STC
    /// register that does not hold a code.
    #[error("`{instr}` on {target}: {reason}")]
    Data {
        /// The instruction, disassembled with its loop offsets applied.
        instr: String,
        /// The bank addressed.
        target: String,
        /// What is wrong.
        reason: String,
    },
    /// A quantity that sizes time or memory exceeds its documented limit
    /// ([`MAX_PROGRAM_COMMANDS`](crate::MAX_PROGRAM_COMMANDS),
    /// [`MAX_TRACE_ENTRIES`](crate::MAX_TRACE_ENTRIES),
    /// [`MAX_REFRESHES`](crate::MAX_REFRESHES)).
    #[error("{what} exceed the limit of {limit}")]
    Limit {
        /// What was counted (plural).
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// Loader arguments out of range.
    #[error("loader: {0}")]
    Load(String),
}

fn earliest_text(e: Option<u64>) -> String {
    match e {
        Some(c) => format!("; earliest legal cycle is {c}"),
        None => "; it cannot become legal without another command first".to_string(),
    }
}
