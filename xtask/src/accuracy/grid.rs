//! The grid file of `cargo xtask accuracy`: a TOML list of perplexity rows
//! (text, window, prefill, tokens, `--kv` spec, calibration), with defaults
//! and format x key crosses, resolved into [`Row`]s.
//!
//! ```toml
//! model = "assets/SmolLM2-135M-Instruct.Q4_1.gguf"
//! threads = 1                      # --threads of every aqpim run (optional)
//!
//! [defaults]                       # fields every row takes unless it sets them
//! text = "assets/austen/emma.txt"
//! window = 2048
//! prefill = 128
//! tokens = 2048                    # optional: the whole text without it
//! calib_text = "assets/austen/prideprejudice.txt"
//! calib_tokens = 8192              # default 8192
//! calib_chunk = 2048               # default 2048
//!
//! [[row]]                          # one row; any field of [defaults] may be set
//! kv = "fp16"
//!
//! [[cross]]                        # one row per format and key: `format,key`
//! formats = ["pq:dsub=4,nbits=8"]
//! keys = ["", "scale=true"]        # "" is the format alone
//! ```
//!
//! A `pq:` row is evaluated with codebooks calibrated on `calib_text` for
//! `calib_kv` (default: the row's own `--kv`, as `aqpim pq calibrate`
//! expects), unless it sets `calibrate = false` (codebooks trained online per
//! window). Other rows have no codebooks. Relative paths are taken from the
//! workspace root.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Most rows one grid may hold (each is a perplexity run of minutes).
pub const MAX_ROWS: usize = 10_000;

/// The fields a row may set (all optional here; [`Grid::rows`] checks).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowFields {
    pub text: Option<String>,
    pub window: Option<usize>,
    pub prefill: Option<usize>,
    pub tokens: Option<usize>,
    pub kv: Option<String>,
    pub calibrate: Option<bool>,
    pub calib_kv: Option<String>,
    pub calib_text: Option<String>,
    pub calib_tokens: Option<usize>,
    pub calib_chunk: Option<usize>,
}

impl RowFields {
    /// `self`, with every field it leaves unset taken from `base`.
    fn over(&self, base: &RowFields) -> RowFields {
        RowFields {
            text: self.text.clone().or_else(|| base.text.clone()),
            window: self.window.or(base.window),
            prefill: self.prefill.or(base.prefill),
            tokens: self.tokens.or(base.tokens),
            kv: self.kv.clone().or_else(|| base.kv.clone()),
            calibrate: self.calibrate.or(base.calibrate),
            calib_kv: self.calib_kv.clone().or_else(|| base.calib_kv.clone()),
            calib_text: self.calib_text.clone().or_else(|| base.calib_text.clone()),
            calib_tokens: self.calib_tokens.or(base.calib_tokens),
            calib_chunk: self.calib_chunk.or(base.calib_chunk),
        }
    }
}

/// Formats crossed with keys: one row per pair, in format-major order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cross {
    pub formats: Vec<String>,
    pub keys: Vec<String>,
}

/// A grid file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    pub model: String,
    pub threads: Option<usize>,
    #[serde(default)]
    pub defaults: RowFields,
    #[serde(default, rename = "row")]
    pub rows: Vec<RowFields>,
    #[serde(default, rename = "cross")]
    pub crosses: Vec<Cross>,
}

/// What codebooks a row's `pq:` cache is calibrated for and on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Calibration {
    pub kv: String,
    pub text: PathBuf,
    pub tokens: usize,
    pub chunk: usize,
}

impl Calibration {
    /// One line naming the calibration (the CSV's `calibration` column).
    pub fn describe(&self) -> String {
        format!(
            "{} on {} ({} tokens, chunks {})",
            self.kv,
            file_name(&self.text),
            self.tokens,
            self.chunk
        )
    }
}

/// One perplexity run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub text: PathBuf,
    pub window: usize,
    pub prefill: usize,
    pub tokens: Option<usize>,
    pub kv: String,
    pub calibration: Option<Calibration>,
}

/// The last component of `p`, for tables.
pub fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
}

fn resolve(root: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

impl Grid {
    /// Reads and parses a grid file.
    pub fn load(path: &Path) -> Result<Grid> {
        let s = std::fs::read_to_string(path)
            .with_context(|| format!("reading grid {}", path.display()))?;
        toml::from_str(&s).with_context(|| format!("parsing grid {}", path.display()))
    }

    /// The model path, resolved against `root`.
    pub fn model_path(&self, root: &Path) -> PathBuf {
        resolve(root, &self.model)
    }

    /// Every row, in file order: the `[[row]]` entries, then each cross.
    /// Paths are resolved against `root`; a missing field or a repeated row
    /// is an error naming the row.
    pub fn rows(&self, root: &Path) -> Result<Vec<Row>> {
        let mut fields: Vec<RowFields> = self.rows.iter().map(|r| r.over(&self.defaults)).collect();
        for c in &self.crosses {
            if c.formats.is_empty() || c.keys.is_empty() {
                bail!(
                    "a [[cross]] needs at least one format and one key (\"\" for the format alone)"
                );
            }
            for f in &c.formats {
                for k in &c.keys {
                    let kv = if k.is_empty() {
                        f.clone()
                    } else {
                        format!("{f},{k}")
                    };
                    let row = RowFields {
                        kv: Some(kv),
                        ..RowFields::default()
                    };
                    fields.push(row.over(&self.defaults));
                }
            }
        }
        if fields.len() > MAX_ROWS {
            bail!("the grid has {} rows; at most {MAX_ROWS}", fields.len());
        }
        let mut out: Vec<Row> = Vec::with_capacity(fields.len());
        for (i, f) in fields.iter().enumerate() {
            let n = i + 1;
            let need =
                |what: &str| format!("row {n}: no `{what}` (set it in the row or in [defaults])");
            let kv = f.kv.clone().with_context(|| need("kv"))?;
            let text = resolve(root, f.text.as_deref().with_context(|| need("text"))?);
            let window = f.window.with_context(|| need("window"))?;
            let prefill = f.prefill.unwrap_or(window);
            if window == 0 || prefill == 0 || f.tokens == Some(0) {
                bail!("row {n} ({kv}): window, prefill and tokens must be positive");
            }
            let calibration = if kv.trim_start().starts_with("pq") && f.calibrate != Some(false) {
                let ctext = f.calib_text.as_deref().with_context(|| {
                    format!("row {n} ({kv}): a pq row needs `calib_text` (or `calibrate = false` for online codebooks)")
                })?;
                Some(Calibration {
                    kv: f.calib_kv.clone().unwrap_or_else(|| kv.clone()),
                    text: resolve(root, ctext),
                    tokens: f.calib_tokens.unwrap_or(8192),
                    chunk: f.calib_chunk.unwrap_or(2048),
                })
            } else {
                None
            };
            let row = Row {
                text,
                window,
                prefill,
                tokens: f.tokens,
                kv,
                calibration,
            };
            if let Some(j) = out.iter().position(|r| *r == row) {
                bail!("row {n} ({}) repeats row {}", row.kv, j + 1);
            }
            out.push(row);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_rows_and_crosses_resolve() {
        let g: Grid = toml::from_str(
            r#"
            model = "m.gguf"
            [defaults]
            text = "emma.txt"
            window = 2048
            prefill = 128
            calib_text = "/abs/pp.txt"
            [[row]]
            kv = "fp16"
            [[row]]
            kv = "pq:dsub=4,nbits=8"
            calibrate = false
            window = 512
            [[cross]]
            formats = ["pq:dsub=2,nbits=4", "scalar:bits=2"]
            keys = ["", "outliers=5"]
            "#,
        )
        .unwrap();
        let rows = g.rows(Path::new("/root")).unwrap();
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[0].text, Path::new("/root/emma.txt"));
        assert_eq!(rows[0].calibration, None);
        assert_eq!((rows[1].window, rows[1].calibration.clone()), (512, None));
        assert_eq!(rows[2].kv, "pq:dsub=2,nbits=4");
        assert_eq!(rows[3].kv, "pq:dsub=2,nbits=4,outliers=5");
        let c = rows[3].calibration.clone().unwrap();
        assert_eq!(c.kv, "pq:dsub=2,nbits=4,outliers=5");
        assert_eq!(
            (c.text.as_path(), c.tokens, c.chunk),
            (Path::new("/abs/pp.txt"), 8192, 2048)
        );
        assert_eq!(rows[5].kv, "scalar:bits=2,outliers=5");
        assert_eq!(rows[5].calibration, None);
        assert_eq!(g.model_path(Path::new("/root")), Path::new("/root/m.gguf"));
    }

    #[test]
    fn bad_grids_are_clear_errors() {
        let err = |s: &str| match toml::from_str::<Grid>(s) {
            Err(e) => e.to_string(),
            Ok(g) => format!("{:#}", g.rows(Path::new("/r")).unwrap_err()),
        };
        assert!(err("model = \"m\"\n[[row]]\nkv = \"fp16\"").contains("row 1: no `text`"));
        assert!(
            err("model = \"m\"\n[[row]]\nkv = \"fp16\"\nwindow = 8\ncolour = 1").contains("colour")
        );
        let base = "model = \"m\"\n[defaults]\ntext = \"t\"\nwindow = 8\n";
        assert!(err(&format!("{base}[[row]]\nkv = \"pq:dsub=2\"")).contains("calib_text"));
        assert!(err(&format!(
            "{base}[[row]]\nkv = \"fp16\"\n[[row]]\nkv = \"fp16\""
        ))
        .contains("row 2 (fp16) repeats row 1"));
        assert!(err(&format!("{base}[[row]]\nkv = \"fp16\"\nprefill = 0")).contains("positive"));
        assert!(
            err(&format!("{base}[[cross]]\nformats = []\nkeys = [\"\"]"))
                .contains("at least one format")
        );
    }
}
