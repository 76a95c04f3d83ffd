//! Which lookup tables the CPU kernel scores keys with: exact f32 tables or
//! tables quantized to bytes (a process-wide setting).
//!
//! Quantized tables ([`aqpim_pq::QuantLut`]) are scanned from SIMD registers
//! on transposed blocks of codes, several times faster than the exact tables'
//! gathers, at a bounded score error: at most `M s / 2` a score, with `s`
//! the table's scale (the largest range of a subspace's entries over 255 for
//! [`ScoreTables::U8`], over 65,535 for [`ScoreTables::U16`]); see
//! `docs/results/attn-cpu.md` for what that does to the softmax and to
//! perplexity. The library defaults to [`ScoreTables::Exact`], so that a
//! kernel equals attention on the decoded cache to float rounding; the
//! `aqpim` binary picks [`ScoreTables::U8`] unless told otherwise.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use aqpim_pq::LutPrecision;

/// The key-score tables of the PQ kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ScoreTables {
    /// Exact f32 tables (`M x ksub` floats a query head).
    #[default]
    Exact,
    /// Entries quantized to one byte (one lookup a code).
    U8,
    /// Entries quantized to two bytes (two lookups a code).
    U16,
}

impl ScoreTables {
    /// Every setting, in the order of [`ScoreTables::NAMES`].
    pub const ALL: [ScoreTables; 3] = [ScoreTables::Exact, ScoreTables::U8, ScoreTables::U16];
    /// The names [`FromStr`] accepts.
    pub const NAMES: [&'static str; 3] = ["exact", "u8", "u16"];

    /// The quantization, `None` for exact tables.
    pub fn precision(self) -> Option<LutPrecision> {
        match self {
            ScoreTables::Exact => None,
            ScoreTables::U8 => Some(LutPrecision::U8),
            ScoreTables::U16 => Some(LutPrecision::U16),
        }
    }

    fn index(self) -> u8 {
        match self {
            ScoreTables::Exact => 0,
            ScoreTables::U8 => 1,
            ScoreTables::U16 => 2,
        }
    }
}

impl fmt::Display for ScoreTables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::NAMES[usize::from(self.index())])
    }
}

impl FromStr for ScoreTables {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| Self::ALL[i])
            .ok_or_else(|| {
                format!(
                    "score tables `{s}`: expected one of {}",
                    Self::NAMES.join(", ")
                )
            })
    }
}

static SETTING: AtomicU8 = AtomicU8::new(0);

/// The tables [`crate::attend`] and [`crate::pq_head_attention`] use.
pub fn score_tables() -> ScoreTables {
    ScoreTables::ALL[usize::from(SETTING.load(Ordering::Relaxed)).min(2)]
}

/// Sets the tables for the whole process (every later call of
/// [`crate::attend`] and [`crate::pq_head_attention`]).
pub fn set_score_tables(tables: ScoreTables) {
    SETTING.store(tables.index(), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in ScoreTables::ALL {
            assert_eq!(t.to_string().parse::<ScoreTables>(), Ok(t));
        }
        assert!("u4"
            .parse::<ScoreTables>()
            .unwrap_err()
            .contains("exact, u8, u16"));
    }
}
