//! `cargo xtask accuracy --grid F --merge`: joins the rows of every shard
//! (`OUT/shards/I-of-N/rows.csv`, written by `--shard I/N`) into
//! `OUT/rows.csv` and `OUT/table.md`, in grid order, as an unsharded run
//! writes them. Only the measured wall times (`seconds`,
//! `decode_tokens_per_s`) can differ from an unsharded run's file.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::grid::{Grid, Row};
use super::table::{self, Record};

/// Merges the shards under `out` for `rows` (the whole grid).
pub fn merge(
    name: &str,
    grid: &Grid,
    model: &Path,
    rows: &[Row],
    out: &Path,
    log: &mut dyn Write,
) -> Result<()> {
    let shards = out.join("shards");
    let mut dirs: Vec<_> = std::fs::read_dir(&shards)
        .with_context(|| format!("reading {} (run the shards first)", shards.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("rows.csv").is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!("no shard in {} has a rows.csv", shards.display());
    }
    let mut found: Vec<Record> = Vec::new();
    for d in &dirs {
        found.extend(table::read_csv(&d.join("rows.csv"))?);
    }
    // Grid order; of a row run twice (a shard rerun), the last record.
    let mut merged = Vec::new();
    let mut missing = 0;
    for r in rows {
        let key = table::row_key(r);
        match found.iter().rev().find(|f| f.key() == key) {
            Some(f) => merged.push(f.clone()),
            None => missing += 1,
        }
    }
    let extra = found
        .iter()
        .filter(|f| !rows.iter().any(|r| table::row_key(r) == f.key()))
        .count();
    let csv = out.join("rows.csv");
    let tmp = out.join(".rows.csv.merging");
    if tmp.exists() {
        std::fs::remove_file(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    for rec in &merged {
        table::append_csv(&tmp, rec)?;
    }
    std::fs::rename(&tmp, &csv).with_context(|| format!("writing {}", csv.display()))?;
    super::write_table(name, grid, model, rows, out, &merged)?;
    writeln!(
        log,
        "merged {} shard(s): {} of {} rows into {} and {}{}{}",
        dirs.len(),
        merged.len(),
        rows.len(),
        csv.display(),
        out.join("table.md").display(),
        if missing > 0 {
            format!("; {missing} row(s) of the grid in no shard yet")
        } else {
            String::new()
        },
        if extra > 0 {
            format!("; {extra} shard row(s) not in this grid left out")
        } else {
            String::new()
        }
    )?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::super::*;
    use super::merge;

    /// The rows of a CSV without the `seconds` column (the one measurement
    /// the stand-in binary cannot fix).
    fn without_seconds(path: &Path) -> Vec<Vec<String>> {
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_path(path)
            .unwrap();
        let all: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
        let col = all[0].iter().position(|c| c == "seconds").unwrap();
        all.iter()
            .map(|rec| {
                rec.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != col)
                    .map(|(_, f)| f.to_string())
                    .collect()
            })
            .collect()
    }

    /// Three shards run at once against one folder (sharing the codebook
    /// cache), merged, give the unsharded run's rows in the same order.
    #[test]
    fn three_shards_merge_into_the_unsharded_rows() {
        let dir = std::env::temp_dir().join(format!("xtask-acc-shard-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let aqpim = tests::fake_aqpim(&dir);
        let toml = "model = \"m.gguf\"\n[defaults]\ntext = \"emma.txt\"\nwindow = 2048\nprefill = 128\n\
                    calib_text = \"pp.txt\"\n[[row]]\nkv = \"fp16\"\n[[row]]\nkv = \"scalar:bits=4\"\n\
                    [[cross]]\nformats = [\"pq:dsub=2,nbits=4\", \"pq:dsub=4,nbits=8\"]\n\
                    keys = [\"\", \"sinks=16\", \"outliers=5\"]\n";
        let plan = |out: &str, shard: Option<(usize, usize)>| {
            let grid: Grid = toml::from_str(toml).unwrap();
            let mut rows = grid.rows(&dir).unwrap();
            let out = dir.join(out);
            let results = match shard {
                Some(shard) => {
                    rows = shard_rows(rows, shard);
                    shard_dir(&out, shard)
                }
                None => out.clone(),
            };
            Plan {
                name: "g.toml".into(),
                model: grid.model_path(&dir),
                rows,
                grid,
                out,
                results,
                aqpim: aqpim.clone(),
                dry_run: false,
            }
        };
        execute(&plan("whole", None), &mut Vec::new()).unwrap();
        std::thread::scope(|s| {
            for i in 0..3 {
                let p = plan("sharded", Some((i, 3)));
                s.spawn(move || execute(&p, &mut Vec::new()).unwrap());
            }
        });
        let grid: Grid = toml::from_str(toml).unwrap();
        let rows = grid.rows(&dir).unwrap();
        assert_eq!(rows.len(), 8);
        let mut log = Vec::new();
        let out = dir.join("sharded");
        merge(
            "g.toml",
            &grid,
            &grid.model_path(&dir),
            &rows,
            &out,
            &mut log,
        )
        .unwrap();
        let log = String::from_utf8(log).unwrap();
        assert!(log.contains("merged 3 shard(s): 8 of 8 rows"), "{log}");
        assert_eq!(
            without_seconds(&out.join("rows.csv")),
            without_seconds(&dir.join("whole/rows.csv"))
        );
        // Every calibration ended in the shared cache, none half-written.
        let books: Vec<_> = std::fs::read_dir(out.join("codebooks"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!books.is_empty());
        assert!(books.iter().all(|b| b.join("done").is_file()), "{books:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
