//! CSV of result rows (the JSON keys of the same rows as columns), the
//! `--shard I/N` split of a sweep grid, and `aqpim simulate merge`, which
//! joins shard files back into the grid's order, byte for byte the file an
//! unsharded sweep writes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The most shards a grid may be cut into (a cluster job array larger than
/// this is a typo).
pub const MAX_SHARDS: usize = 1 << 16;

/// The largest shard file `merge` reads, in bytes: a sweep row is under
/// 1 KB, so this holds millions of points.
const MAX_SHARD_FILE_BYTES: u64 = 4 << 30;

/// `--shard I/N`: this run takes the points whose index `i` in the grid's
/// order has `i % count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// `I`, in `0..count`.
    pub index: usize,
    /// `N`, in `1..=MAX_SHARDS`.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let shown = crate::limits::cut(s);
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{shown}`: expected I/N (0/8 is the first of 8 shards)"))?;
        let (Ok(index), Ok(count)) = (i.trim().parse::<usize>(), n.trim().parse::<usize>()) else {
            return Err(format!("`{shown}`: I and N must be whole numbers (0/8)"));
        };
        if count == 0 || count > MAX_SHARDS {
            return Err(format!("`{shown}`: N must be in 1..={MAX_SHARDS}"));
        }
        if index >= count {
            return Err(format!(
                "`{shown}`: I counts from 0 and must be below N (0/{count} to {}/{count})",
                count - 1
            ));
        }
        Ok(Self { index, count })
    }
}

impl Shard {
    /// Whether the point at `index` of the grid's order is this shard's.
    pub fn holds(&self, index: usize) -> bool {
        index % self.count == self.index
    }
}

/// A string as one CSV cell (RFC 4180): bare unless it holds a comma, a
/// quote or a line break, else quoted with quotes doubled (cache specs
/// such as `pq:dsub=2,kbits=8` hold commas).
fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// CSV of rows that serialize as flat JSON objects: the header is the first
/// row's keys, a value is its JSON text (strings bare unless they need
/// quotes, `null` empty). No rows: an empty file.
pub fn write_csv(out: &Path, rows: &[Value]) -> Result<()> {
    let mut text = String::new();
    if let Some(Value::Object(first)) = rows.first() {
        text.push_str(&first.keys().cloned().collect::<Vec<_>>().join(","));
        text.push('\n');
    }
    for r in rows {
        let Value::Object(m) = r else {
            bail!("a CSV row must be an object");
        };
        let cells: Vec<String> = m
            .values()
            .map(|v| match v {
                Value::Null => String::new(),
                Value::String(s) => csv_cell(s),
                other => other.to_string(),
            })
            .collect();
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    aqpim_pq::io::write_atomic(out, text.as_bytes())?;
    Ok(())
}

/// `text` cut into records, each with its line break: a line break inside a
/// quoted cell does not end a record.
fn records(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '\n' if !quoted => {
                out.push(&text[start..=i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// The `index` cell (the first) of a sweep record.
fn record_index(record: &str) -> Option<usize> {
    record.split(',').next()?.trim_end().parse().ok()
}

/// Joins shard files of one sweep (`--shard I/N` for every `I`) into `out`:
/// one header (every file's must be the same, starting with `index`), the
/// rows in the order of their `index` column, the grid's order. A file with
/// no rows (a shard whose points all did not fit) is allowed; an index in two
/// files, or rows that are not of one shard per file, is an error.
pub fn merge(out: &Path, files: &[PathBuf]) -> Result<usize> {
    for (k, f) in files.iter().enumerate() {
        if files[..k].contains(f) {
            bail!("{} is given twice: each shard once, please", f.display());
        }
    }
    let mut texts = Vec::new();
    for f in files {
        let len = std::fs::metadata(f)
            .with_context(|| format!("reading {}", f.display()))?
            .len();
        if len > MAX_SHARD_FILE_BYTES {
            bail!(
                "{}: {len} bytes, more than the limit of {MAX_SHARD_FILE_BYTES} for a shard file",
                f.display()
            );
        }
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        texts.push((f, text));
    }
    let mut header: Option<(&str, &PathBuf)> = None;
    let mut rows: Vec<(usize, &str, &PathBuf)> = Vec::new();
    for (f, text) in &texts {
        let recs = records(text);
        let Some((&h, body)) = recs.split_first() else {
            continue;
        };
        if !h.starts_with("index,") {
            bail!(
                "{}: not a sweep file (its header does not start with `index`)",
                f.display()
            );
        }
        match header {
            None => header = Some((h, f)),
            Some((first, from)) if first != h => bail!(
                "{} and {} have different headers: not shards of one sweep",
                from.display(),
                f.display()
            ),
            Some(_) => {}
        }
        for (line, r) in body.iter().enumerate() {
            let i = record_index(r).with_context(|| {
                format!(
                    "{}: record {} has no point index in its first cell",
                    f.display(),
                    line + 2
                )
            })?;
            rows.push((i, r, f));
        }
    }
    check_one_shard_each(&rows, files.len())?;
    rows.sort_by_key(|&(i, _, _)| i);
    for w in rows.windows(2) {
        if w[0].0 == w[1].0 {
            bail!(
                "point {} is in {} and in {}: each shard once, please",
                w[0].0,
                w[0].2.display(),
                w[1].2.display()
            );
        }
    }
    let mut text = String::new();
    if let Some((h, _)) = header {
        text.push_str(h);
    }
    for (_, r, _) in &rows {
        text.push_str(r);
        if !r.ends_with('\n') {
            text.push('\n');
        }
    }
    aqpim_pq::io::write_atomic(out, text.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(rows.len())
}

/// Checks that the rows are those of `count` shards (`--shard I/count`, each
/// `I` once): every file's indices leave one remainder modulo `count`, and
/// no two files the same one. A missing or extra shard file fails here
/// instead of merging into a grid with holes.
fn check_one_shard_each(rows: &[(usize, &str, &PathBuf)], count: usize) -> Result<()> {
    let mut seen: Vec<(usize, &PathBuf, usize)> = Vec::new();
    for &(i, _, f) in rows {
        match seen.iter().find(|(_, g, _)| *g == f) {
            Some(&(first, _, r)) if i % count != r => bail!(
                "{}: points {first} and {i} are not of one shard of {count} (one per file given): \
                 give merge every shard's file of one `--shard I/{count}` sweep, and only those",
                f.display()
            ),
            Some(_) => {}
            None => {
                if let Some((_, g, _)) = seen.iter().find(|(_, g, r)| *g != f && *r == i % count) {
                    bail!(
                        "{} and {} hold points of the same shard ({} of {count}): each shard once, please",
                        g.display(),
                        f.display(),
                        i % count
                    );
                }
                seen.push((i, f, i % count));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition() {
        let s: Shard = "1/3".parse().unwrap();
        assert_eq!(s, Shard { index: 1, count: 3 });
        assert!((0..9).filter(|&i| s.holds(i)).eq([1, 4, 7]));
        for bad in ["3/3", "0/0", "1", "a/2", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn records_keep_quoted_line_breaks() {
        let text = "index,a\n0,\"x\ny\"\n1,z";
        assert_eq!(records(text), ["index,a\n", "0,\"x\ny\"\n", "1,z"]);
        assert_eq!(record_index("12,\"a,b\"\n"), Some(12));
    }
}
