//! Tidy checks: the workspace's layering invariants and file conventions,
//! run as unit tests (`cargo test -p xtask`) and as `cargo xtask tidy`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The allowed edges between workspace crates, as written in ARCHITECTURE.md
/// ("Architecture invariants"). An edge `(a, b)` means `a` may depend on `b`
/// (normal, dev or build dependency). Any other edge between workspace crates
/// is a layering violation.
pub const ALLOWED_EDGES: &[(&str, &str)] = &[
    ("aqpim-kvcache", "aqpim-pq"),
    ("aqpim-attn", "aqpim-kvcache"),
    ("aqpim-attn", "aqpim-pq"),
    ("aqpim-attn", "aqpim-pim"),
    ("aqpim-decode", "aqpim-attn"),
    ("aqpim-decode", "aqpim-kvcache"),
    ("aqpim-decode", "aqpim-pq"),
    ("aqpim-system", "aqpim-attn"),
    ("aqpim-system", "aqpim-kvcache"),
    ("aqpim-system", "aqpim-pim"),
    ("aqpim", "aqpim-decode"),
    ("aqpim", "aqpim-system"),
    ("aqpim", "aqpim-attn"),
    ("aqpim", "aqpim-kvcache"),
    ("aqpim", "aqpim-pim"),
    ("aqpim", "aqpim-pq"),
];

/// Root of the workspace (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Every dependency edge between workspace members, read from `cargo metadata`.
pub fn workspace_edges(root: &Path) -> Result<Vec<(String, String)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .current_dir(root)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .output()
        .context("running `cargo metadata`")?;
    if !out.status.success() {
        bail!(
            "`cargo metadata` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let packages = meta["packages"]
        .as_array()
        .context("cargo metadata: no `packages` array")?;
    let members: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    let mut edges = Vec::new();
    for p in packages {
        let from = p["name"].as_str().unwrap_or_default().to_string();
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let to = d["name"].as_str().unwrap_or_default();
            if members.contains(to) {
                edges.push((from.clone(), to.to_string()));
            }
        }
    }
    edges.sort();
    edges.dedup();
    Ok(edges)
}

/// Edges that are not in [`ALLOWED_EDGES`].
pub fn forbidden_edges(edges: &[(String, String)]) -> Vec<String> {
    edges
        .iter()
        .filter(|(a, b)| !ALLOWED_EDGES.iter().any(|(x, y)| x == a && y == b))
        .map(|(a, b)| format!("{a} -> {b}"))
        .collect()
}

/// Rust source files under `crates/` and `xtask/` whose first line is not a
/// `//!` module doc.
pub fn files_without_module_doc(root: &Path) -> Result<Vec<PathBuf>> {
    let mut bad = Vec::new();
    for dir in ["crates", "xtask"] {
        walk(&root.join(dir), &mut |path| {
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                if !text.lines().next().unwrap_or("").starts_with("//!") {
                    bad.push(path.strip_prefix(root).unwrap_or(path).to_path_buf());
                }
            }
            Ok(())
        })?;
    }
    bad.sort();
    Ok(bad)
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path) -> Result<()>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                walk(&path, f)?;
            }
        } else {
            f(&path)?;
        }
    }
    Ok(())
}

/// Runs every tidy check and fails with a list of what is wrong.
pub fn run() -> Result<()> {
    let root = workspace_root();
    let mut problems = Vec::new();
    for e in forbidden_edges(&workspace_edges(&root)?) {
        problems.push(format!(
            "dependency edge not allowed by ARCHITECTURE.md: {e}"
        ));
    }
    for f in files_without_module_doc(&root)? {
        problems.push(format!("{}: first line is not a `//!` doc", f.display()));
    }
    if problems.is_empty() {
        println!("tidy: ok");
        Ok(())
    } else {
        bail!(
            "tidy found {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layering_edges_are_all_allowed() {
        let edges = workspace_edges(&workspace_root()).unwrap();
        // The CLI depends on every library crate, so the graph is never empty.
        assert!(
            edges.iter().any(|(a, _)| a == "aqpim"),
            "no edges read: {edges:?}"
        );
        let bad = forbidden_edges(&edges);
        assert!(
            bad.is_empty(),
            "layering violated (see ARCHITECTURE.md): {bad:?}"
        );
    }

    #[test]
    fn pim_depends_on_no_workspace_crate() {
        let edges = workspace_edges(&workspace_root()).unwrap();
        let pim: Vec<_> = edges.iter().filter(|(a, _)| a == "aqpim-pim").collect();
        assert!(pim.is_empty(), "aqpim-pim must stand alone: {pim:?}");
    }

    #[test]
    fn checker_rejects_an_upward_edge() {
        let edges = vec![("aqpim-pq".to_string(), "aqpim-kvcache".to_string())];
        assert_eq!(forbidden_edges(&edges), vec!["aqpim-pq -> aqpim-kvcache"]);
    }

    #[test]
    fn every_source_file_opens_with_a_module_doc() {
        let bad = files_without_module_doc(&workspace_root()).unwrap();
        assert!(bad.is_empty(), "files without a `//!` first line: {bad:?}");
    }
}
