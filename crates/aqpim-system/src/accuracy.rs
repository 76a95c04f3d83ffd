//! The accuracy axis beside the latency model: the measured perplexity delta
//! of each KV cache format against FP16, read from
//! `presets/data/accuracy.toml` (every row measured with one protocol and
//! recorded in `docs/results/accuracy.md`). A format is looked up by its
//! canonical spec (`KvSpec`'s `Display`), so `pq:dsub=2,kbits=8,vbits=4`
//! and `pq:kdsub=2,vdsub=2,kbits=8,vbits=4,sinks=4` are the same row. A
//! format without a row has no delta: never a guess.

use aqpim_kvcache::KvSpec;
use serde::Deserialize;

use crate::error::{Result, SystemError};

const DATA: &str = include_str!("../presets/data/accuracy.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    text: String,
    fp16_ppl: f64,
    format: Vec<Row>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    kv: String,
    ppl: f64,
    #[serde(default)]
    calibration: Option<String>,
    source: String,
}

/// One measured format.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// The format's canonical spec.
    pub kv: String,
    /// Its perplexity on the table's text.
    pub ppl: f64,
    /// `ppl / fp16_ppl - 1`: 0.016 for +1.6 %.
    pub delta: f64,
    /// The text and protocol.
    pub text: String,
    /// How PQ codebooks were calibrated, when the format has any.
    pub calibration: Option<String>,
    /// Where the row is recorded.
    pub source: String,
}

/// The parsed table, once per process (every step of a serving search looks
/// its format up); a parse error is kept as its message.
fn parsed() -> &'static std::result::Result<Vec<Measured>, String> {
    static TABLE: std::sync::OnceLock<std::result::Result<Vec<Measured>, String>> =
        std::sync::OnceLock::new();
    TABLE.get_or_init(|| parse_table().map_err(|e| e.to_string()))
}

/// Every measured format of `presets/data/accuracy.toml`, canonical specs.
pub fn table() -> Result<Vec<Measured>> {
    parsed()
        .clone()
        .map_err(|reason| SystemError::InvalidArgument {
            name: "accuracy table",
            reason,
        })
}

/// The row of `spec`, if measured (none when the table does not parse:
/// `table()` reports that, and a test holds it parsing).
fn lookup(spec: &KvSpec) -> Option<&'static Measured> {
    let key = spec.to_string();
    parsed().as_ref().ok()?.iter().find(|m| m.kv == key)
}

fn parse_table() -> Result<Vec<Measured>> {
    let bad = |reason: String| SystemError::Preset {
        name: "presets/data/accuracy.toml".into(),
        reason,
    };
    let t: Table = toml::from_str(DATA).map_err(|e| bad(e.to_string()))?;
    if !(t.fp16_ppl.is_finite() && t.fp16_ppl > 0.0) {
        return Err(bad(format!("fp16_ppl = {} must be positive", t.fp16_ppl)));
    }
    t.format
        .into_iter()
        .map(|r| {
            let spec: KvSpec =
                r.kv.parse()
                    .map_err(|e| bad(format!("kv = `{}`: {e}", r.kv)))?;
            if !(r.ppl.is_finite() && r.ppl > 0.0) {
                return Err(bad(format!("{}: ppl = {} must be positive", r.kv, r.ppl)));
            }
            Ok(Measured {
                kv: spec.to_string(),
                ppl: r.ppl,
                delta: r.ppl / t.fp16_ppl - 1.0,
                text: t.text.clone(),
                calibration: r.calibration,
                source: r.source,
            })
        })
        .collect()
}

/// The measured row of `spec`, if there is one.
pub fn measured(spec: &KvSpec) -> Option<Measured> {
    lookup(spec).cloned()
}

/// The measured perplexity delta of `spec` (a fraction), if there is one.
pub fn ppl_delta(spec: &KvSpec) -> Option<f64> {
    lookup(spec).map(|m| m.delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses_and_fp16_is_zero() {
        let t = table().unwrap();
        assert!(t.len() >= 5);
        assert_eq!(ppl_delta(&KvSpec::Dense), Some(0.0));
    }

    #[test]
    fn a_format_is_found_by_its_canonical_spec() {
        // The headline format, written as the h100+aqpim preset writes it,
        // and the same format without refinement, each its own row.
        let headline: KvSpec = "pq:dsub=2,kbits=8,vbits=4,sinks=4,window=128,outliers=5,vrefine=8"
            .parse()
            .unwrap();
        let d = ppl_delta(&headline).unwrap();
        assert!((d - (33.372 / 32.941 - 1.0)).abs() < 1e-12, "{d}");
        let plain: KvSpec = "pq:kdsub=2,vdsub=2,kbits=8,vbits=4,window=128,outliers=5"
            .parse()
            .unwrap();
        let d = ppl_delta(&plain).unwrap();
        assert!((d - (33.471 / 32.941 - 1.0)).abs() < 1e-12, "{d}");
    }

    #[test]
    fn an_unmeasured_format_has_no_delta() {
        let s: KvSpec = "pq:dsub=2,nbits=4,window=64".parse().unwrap();
        assert_eq!(ppl_delta(&s), None);
    }

    #[test]
    fn every_row_is_distinct() {
        let t = table().unwrap();
        let mut kvs: Vec<_> = t.iter().map(|m| m.kv.clone()).collect();
        kvs.sort();
        kvs.dedup();
        assert_eq!(kvs.len(), t.len(), "two rows with the same canonical spec");
    }
}
