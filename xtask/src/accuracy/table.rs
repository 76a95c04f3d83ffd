//! The results of `cargo xtask accuracy`: one typed CSV record per finished
//! row (the columns are the fields of [`Record`]), and the Markdown table
//! built from them, with each row's perplexity against the FP16 row of the
//! same text and window.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::grid::{file_name, Row};

/// One finished row: what ran and what `aqpim eval ppl --json` reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The evaluated text (its path).
    pub text: String,
    pub window: usize,
    pub prefill: usize,
    /// `--tokens`; empty for the whole text.
    pub tokens: Option<usize>,
    pub kv: String,
    /// The codebooks: a calibration ([`super::grid::Calibration::describe`]),
    /// `online` for a `pq:` row trained per window, `-` for the others.
    pub calibration: String,
    pub perplexity: f64,
    pub nll: f64,
    /// As `eval ppl` reports it: the cache at the end of a window, codebooks
    /// counted per window.
    pub bits_per_element: f64,
    pub scored_tokens: usize,
    pub decode_tokens_per_s: Option<f64>,
    /// Wall time of the `eval ppl` run.
    pub seconds: f64,
    /// Mean KL divergence from the FP16 cache's next-token distributions
    /// (nats); empty in rows written before the column existed.
    #[serde(default)]
    pub kld_mean: Option<f64>,
    /// Its 99th percentile (nats).
    #[serde(default)]
    pub kld_p99: Option<f64>,
    /// Share of tokens whose top-1 next token is FP16's.
    #[serde(default)]
    pub top1_agreement: Option<f64>,
}

/// What identifies a row in the CSV (everything but the measurements).
pub type Key = (String, usize, usize, Option<usize>, String, String);

/// The CSV `calibration` column of `row`.
pub fn calibration_column(row: &Row) -> String {
    match &row.calibration {
        Some(c) => c.describe(),
        None if row.kv.trim_start().starts_with("pq") => "online".into(),
        None => "-".into(),
    }
}

/// The key of `row`.
pub fn row_key(row: &Row) -> Key {
    (
        row.text.display().to_string(),
        row.window,
        row.prefill,
        row.tokens,
        row.kv.clone(),
        calibration_column(row),
    )
}

impl Record {
    /// The key of this record.
    pub fn key(&self) -> Key {
        (
            self.text.clone(),
            self.window,
            self.prefill,
            self.tokens,
            self.kv.clone(),
            self.calibration.clone(),
        )
    }
}

/// The records of `path` (none when it does not exist).
pub fn read_csv(path: &Path) -> Result<Vec<Record>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    r.deserialize()
        .collect::<std::result::Result<Vec<Record>, _>>()
        .with_context(|| format!("reading {} (delete it to start over)", path.display()))
}

/// The CSV header of [`Record`].
const HEADER: &str = "text,window,prefill,tokens,kv,calibration,perplexity,nll,bits_per_element,scored_tokens,decode_tokens_per_s,seconds,kld_mean,kld_p99,top1_agreement";

/// Appends `rec` to the CSV at `path`, writing the header first when the file
/// is new, and flushes it, so that an interrupted grid keeps its rows. A file
/// written with fewer columns (before the KL columns) is rewritten whole
/// with the current header first.
pub fn append_csv(path: &Path, rec: &Record) -> Result<()> {
    let current = std::fs::read_to_string(path).unwrap_or_default();
    let header = current.lines().next().unwrap_or("");
    if !current.is_empty() && header != HEADER {
        let mut all = read_csv(path)?;
        all.push(rec.clone());
        let mut w = csv::Writer::from_path(path)
            .with_context(|| format!("rewriting {}", path.display()))?;
        for r in &all {
            w.serialize(r)?;
        }
        w.flush()?;
        return Ok(());
    }
    let new = current.is_empty();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut w = csv::WriterBuilder::new().has_headers(new).from_writer(file);
    w.serialize(rec)?;
    w.flush()?;
    Ok(())
}

fn is_fp16(kv: &str) -> bool {
    matches!(kv.trim(), "fp16" | "dense")
}

/// The Markdown report: one table per (text, window, prefill, tokens), rows in
/// grid order, each finished row with its perplexity against that group's
/// FP16 row.
pub fn markdown(title: &str, header: &str, rows: &[Row], records: &[Record]) -> String {
    let find = |k: &Key| records.iter().rev().find(|r| r.key() == *k);
    let mut groups: Vec<(String, usize, usize, Option<usize>)> = Vec::new();
    for r in rows {
        let g = (r.text.display().to_string(), r.window, r.prefill, r.tokens);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let done = rows.iter().filter(|r| find(&row_key(r)).is_some()).count();
    let mut s = format!(
        "# {title}\n\n{header}\n\n{done} of {} rows measured.\n",
        rows.len()
    );
    for g in &groups {
        let in_group: Vec<&Row> = rows
            .iter()
            .filter(|r| (r.text.display().to_string(), r.window, r.prefill, r.tokens) == *g)
            .collect();
        let fp16 = in_group
            .iter()
            .filter(|r| is_fp16(&r.kv))
            .find_map(|r| find(&row_key(r)))
            .map(|r| r.perplexity);
        let tokens =
            g.3.map_or("all tokens".to_string(), |t| format!("first {t} tokens"));
        let _ = write!(
            s,
            "\n## {}, W = {}, P = {}, {tokens}\n\n\
             | `--kv` | codebooks | perplexity | vs FP16 | NLL | KL mean | KL p99 | top-1 agreement | bits/element (per window) | decode tokens/s |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
            file_name(Path::new(&g.0)),
            g.1,
            g.2
        );
        for r in in_group {
            let Some(rec) = find(&row_key(r)) else {
                let _ = writeln!(
                    s,
                    "| `{}` | {} | (not run) | | | | | | | |",
                    r.kv,
                    calibration_column(r)
                );
                continue;
            };
            let vs = fp16.map_or("-".to_string(), |f| {
                format!("{:+.2} %", 100.0 * (rec.perplexity / f - 1.0))
            });
            let tps = rec
                .decode_tokens_per_s
                .map_or("-".to_string(), |t| format!("{t:.1}"));
            let opt = |x: Option<f64>, digits: usize| {
                x.map_or("-".to_string(), |v| format!("{v:.digits$}"))
            };
            let _ = writeln!(
                s,
                "| `{}` | {} | {:.3} | {vs} | {:.4} | {} | {} | {} | {:.2} | {tps} |",
                rec.kv,
                rec.calibration,
                rec.perplexity,
                rec.nll,
                opt(rec.kld_mean, 5),
                opt(rec.kld_p99, 4),
                rec.top1_agreement
                    .map_or("-".to_string(), |t| format!("{:.2} %", 100.0 * t)),
                rec.bits_per_element
            );
        }
    }
    s
}

/// The keys of `records`.
pub fn keys(records: &[Record]) -> HashSet<Key> {
    records.iter().map(Record::key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn row(kv: &str, window: usize) -> Row {
        Row {
            text: PathBuf::from("/t/emma.txt"),
            window,
            prefill: 128,
            tokens: Some(2048),
            kv: kv.into(),
            calibration: None,
        }
    }

    fn rec(r: &Row, ppl: f64) -> Record {
        let k = row_key(r);
        Record {
            text: k.0,
            window: k.1,
            prefill: k.2,
            tokens: k.3,
            kv: k.4,
            calibration: k.5,
            perplexity: ppl,
            nll: ppl.ln(),
            bits_per_element: 2.0,
            scored_tokens: 2047,
            decode_tokens_per_s: Some(20.0),
            seconds: 1.0,
            kld_mean: Some(0.01),
            kld_p99: Some(0.1),
            top1_agreement: Some(0.95),
        }
    }

    #[test]
    fn csv_round_trips_and_appends() {
        let dir = std::env::temp_dir().join(format!("xtask-acc-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rows.csv");
        let _ = std::fs::remove_file(&path);
        let (a, b) = (
            rec(&row("fp16", 2048), 30.0),
            rec(&row("pq:dsub=2,nbits=4", 2048), 31.5),
        );
        append_csv(&path, &a).unwrap();
        append_csv(&path, &b).unwrap();
        let back = read_csv(&path).unwrap();
        assert_eq!(back, vec![a.clone(), b.clone()]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert_eq!(text.lines().next(), Some(HEADER));
        // A file from before the KL columns reads with them empty, and the
        // next row rewrites it with the current header.
        let old_header = HEADER.trim_end_matches(",kld_mean,kld_p99,top1_agreement");
        let old_row = "/t/emma.txt,2048,128,2048,fp16,-,30.0,3.4,16.0,2047,20.0,1.0";
        std::fs::write(&path, format!("{old_header}\n{old_row}\n")).unwrap();
        let old = read_csv(&path).unwrap();
        assert_eq!(old[0].kld_mean, None);
        append_csv(&path, &b).unwrap();
        let back = read_csv(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1], b);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().next(),
            Some(HEADER)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn markdown_compares_with_the_fp16_row_of_the_group() {
        let rows = [
            row("fp16", 2048),
            row("pq:dsub=2,nbits=4", 2048),
            row("scalar:bits=2", 512),
            row("fp16", 512),
        ];
        let recs = [
            rec(&rows[0], 30.0),
            rec(&rows[1], 31.5),
            rec(&rows[2], 33.0),
        ];
        let md = markdown("T", "H", &rows, &recs);
        assert!(md.contains("3 of 4 rows measured"), "{md}");
        assert!(
            md.contains("## emma.txt, W = 2048, P = 128, first 2048 tokens"),
            "{md}"
        );
        assert!(
            md.contains("| `pq:dsub=2,nbits=4` | online | 31.500 | +5.00 % |"),
            "{md}"
        );
        // The W = 512 group has no FP16 measurement yet.
        assert!(md.contains("| `scalar:bits=2` | - | 33.000 | - |"), "{md}");
        assert!(md.contains("| `fp16` | - | (not run) |"), "{md}");
    }
}
