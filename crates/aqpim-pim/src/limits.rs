//! Ceilings on every input-derived quantity of a device file, and on the
//! simulator benchmark's size.
//!
//! [`DeviceSpec::resolve`](crate::DeviceSpec::resolve) checks each before a
//! simulator is built, and a value past it is an error that names the limit.
//! They are design limits, not measurements: every real HBM timing is far
//! below them (the longest in the shipped presets is tREFI, 5070 and 6240
//! cycles; the widest window is tFAW's 4 activations), and they keep the
//! simulator's work proportional to the program: with the refresh interval
//! longer than every rule latency, at most one refresh falls in any wait.

/// Largest parameter latch accepted, bytes: 256 columns of 32 B, what LDP's
/// 8-bit `slot` addresses on the shipped organisation.
pub const MAX_LATCH_BYTES: usize = 8192;

/// Largest `[timing]` value, in cycles (2^16; tREFI at 3.9 us is 6240 cycles at 6.4 Gbps).
pub const MAX_TIMING_CYCLES: u32 = 1 << 16;

/// Largest rule latency, `n_ccdab` or `sfm_latency`, in cycles (2^13; the
/// longest real gate, tRFC at 350 ns, is 456 to 560 cycles). The trace
/// checker scans the commands of the last `max latency` cycles for each
/// command, so this bounds its work per command.
pub const MAX_RULE_LATENCY: u32 = 1 << 13;

/// Largest rolling window of a rule (tFAW relates 4 activations).
pub const MAX_RULE_WINDOW: u32 = 64;

/// Most rules in a device file (the shipped presets have about 40).
pub const MAX_RULES: usize = 1024;

/// Most `[timing]` parameters in a device file.
pub const MAX_TIMING_PARAMS: usize = 1024;

/// Largest device file read (the shipped presets take about 8 KB).
pub const MAX_DEVICE_FILE_BYTES: u64 = 1 << 20;

/// Longest latency expression, in characters.
pub const MAX_EXPRESSION_CHARS: usize = 256;

/// Most row iterations per channel of `aqpim sim bench`'s standard mix
/// (115 commands each): 16 channels x 100000 rows is 184 M commands, tens of
/// seconds of simulation.
pub const MAX_BENCH_ROWS: u32 = 100_000;

/// Largest energy per event or per bit, in pJ (1 mJ; an HBM row activation
/// is about 900 pJ, an all-bank refresh about 0.1 uJ), so that energy totals
/// stay finite.
pub const MAX_ENERGY_PJ: f64 = 1e9;

/// `s` cut to 64 characters with `...`, for errors that echo input.
pub fn cut(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}
