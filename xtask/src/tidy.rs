//! Tidy checks: the workspace's layering invariants and file conventions,
//! run as unit tests (`cargo test -p xtask`) and as `cargo xtask tidy`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod functions;
use functions::function_problems;

/// The allowed edges between workspace crates, read from the table under
/// "Architecture invariants" in ARCHITECTURE.md (one row per crate: the
/// crate in backticks, then the crates it may depend on in backticks, or
/// "every library crate", or none). An edge `(a, b)` means `a` may depend on
/// `b` (normal, dev or build dependency). Any other edge between workspace
/// crates is a layering violation.
pub fn allowed_edges(architecture: &str) -> Result<Vec<(String, String)>> {
    let section = architecture
        .split("## Architecture invariants")
        .nth(1)
        .context("ARCHITECTURE.md has no `## Architecture invariants` section")?;
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let mut rows = Vec::new();
    for line in section.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
        let (Some(krate), Some(deps)) = (cells.first(), cells.get(1)) else {
            continue;
        };
        let Some(name) = ticked(krate).into_iter().next() else {
            continue; // the header and the rule under it
        };
        rows.push((name, deps.trim().to_string()));
    }
    if rows.is_empty() {
        bail!("ARCHITECTURE.md: the allowed-edges table has no rows");
    }
    let libraries: Vec<String> = rows
        .iter()
        .filter(|(n, _)| n != "aqpim" && n != "xtask")
        .map(|(n, _)| n.clone())
        .collect();
    let mut edges = Vec::new();
    for (name, deps) in &rows {
        let to = if deps.starts_with("every library crate") {
            libraries.clone()
        } else {
            ticked(deps)
        };
        edges.extend(to.into_iter().map(|d| (name.clone(), d)));
    }
    Ok(edges)
}

/// The allowed edges of this workspace's ARCHITECTURE.md.
pub fn workspace_allowed_edges(root: &Path) -> Result<Vec<(String, String)>> {
    let path = root.join("ARCHITECTURE.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    allowed_edges(&text)
}

/// Root of the workspace (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The `cargo` that runs us (or the one on the path).
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// `cargo metadata` of the workspace members (no dependencies).
fn metadata(root: &Path) -> Result<serde_json::Value> {
    let cargo = cargo();
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
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Every dependency edge between workspace members, read from `cargo metadata`.
pub fn workspace_edges(root: &Path) -> Result<Vec<(String, String)>> {
    let meta = metadata(root)?;
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

/// Edges that are not in `allowed` (see [`allowed_edges`]).
pub fn forbidden_edges(edges: &[(String, String)], allowed: &[(String, String)]) -> Vec<String> {
    edges
        .iter()
        .filter(|e| !allowed.contains(e))
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

/// Library crates that embed data from outside their folder for now, with
/// the reason. `cargo package` leaves such data out, so each is a known gap.
pub const EMBEDS_OUTSIDE: &[(&str, &str)] = &[];

/// Library crates of the workspace, `(name, folder)`: members with a `lib`
/// target, from `cargo metadata`.
pub fn library_crates(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let meta = metadata(root)?;
    let mut out = Vec::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        let is_lib = p["targets"].as_array().into_iter().flatten().any(|t| {
            t["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k == "lib")
        });
        let (Some(name), Some(manifest)) = (p["name"].as_str(), p["manifest_path"].as_str()) else {
            continue;
        };
        if is_lib {
            let dir = Path::new(manifest).parent().unwrap_or(root).to_path_buf();
            out.push((name.to_string(), dir));
        }
    }
    out.sort();
    Ok(out)
}

/// Files that a crate's sources embed with `include_str!` or
/// `include_bytes!`, resolved against the including file (literal paths
/// only, as every embed in this workspace is).
pub fn embedded_files(crate_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    walk(&crate_dir.join("src"), &mut |path| {
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            for mac in ["include_str!(\"", "include_bytes!(\""] {
                for part in text.split(mac).skip(1) {
                    if let Some(rel) = part.split('"').next() {
                        let base = path.parent().unwrap_or(crate_dir);
                        found.push(normalise(&base.join(rel)));
                    }
                }
            }
        }
        Ok(())
    })?;
    found.sort();
    found.dedup();
    Ok(found)
}

/// `path` with `.` and `..` folded away (lexically).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The files `cargo package -p NAME --list` would ship (offline; no network).
pub fn package_list(root: &Path, name: &str) -> Result<Vec<String>> {
    let out = Command::new(cargo())
        .current_dir(root)
        .args([
            "package",
            "-p",
            name,
            "--list",
            "--offline",
            "--allow-dirty",
        ])
        .output()
        .context("running `cargo package --list`")?;
    if !out.status.success() {
        bail!(
            "`cargo package -p {name} --list` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// What keeps a library crate from packaging alone: data embedded from
/// outside its folder (unless listed in [`EMBEDS_OUTSIDE`]), embedded data
/// or a README that `cargo package --list` leaves out.
pub fn packaging_problems(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for (name, dir) in library_crates(root)? {
        let listed = package_list(root, &name)?;
        let dir = normalise(&dir);
        let mut wanted = vec!["README.md".to_string()];
        for f in embedded_files(&dir)? {
            match f.strip_prefix(&dir) {
                Ok(rel) => wanted.push(rel.to_string_lossy().replace('\\', "/")),
                Err(_) if EMBEDS_OUTSIDE.iter().any(|(n, _)| *n == name) => {}
                Err(_) => problems.push(format!(
                    "{name} embeds {}, outside its folder: `cargo package` leaves it out",
                    f.display()
                )),
            }
        }
        for w in wanted {
            if !listed.contains(&w) {
                problems.push(format!("`cargo package -p {name} --list` lacks {w}"));
            }
        }
    }
    Ok(problems)
}

/// Largest module, in lines before its `#[cfg(test)]` block (STYLE: a few
/// hundred lines each, split well before a thousand).
pub const MAX_MODULE_LINES: usize = 800;

/// Modules allowed past [`MAX_MODULE_LINES`] for now, with the reason.
pub const LARGE_MODULES: &[(&str, &str)] = &[];

/// Rust modules under `crates/` and `xtask/` longer than [`MAX_MODULE_LINES`]
/// outside their tests and not listed in [`LARGE_MODULES`]: `(path, lines)`.
pub fn oversized_modules(root: &Path) -> Result<Vec<(PathBuf, usize)>> {
    let mut big = Vec::new();
    for dir in ["crates", "xtask"] {
        walk(&root.join(dir), &mut |path| {
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let lines = text
                    .lines()
                    .take_while(|l| !l.starts_with("#[cfg(test)]"))
                    .count();
                let rel = path.strip_prefix(root).unwrap_or(path).to_path_buf();
                let listed = LARGE_MODULES
                    .iter()
                    .any(|(p, _)| Path::new(p) == rel.as_path());
                if lines > MAX_MODULE_LINES && !listed {
                    big.push((rel, lines));
                }
            }
            Ok(())
        })?;
    }
    big.sort();
    Ok(big)
}

/// Import cycles between sibling modules, at every level of each crate:
/// module `a` depends on its sibling `b` when a file of `a` names a path
/// through `b` (`crate::b::...`, `use crate::{b, ...}`; one level down
/// `crate::pim::b`, and `super::b` from `a`'s own file). Comments are not
/// read; re-exports at a parent are not followed. Each cycle is `crate
/// path: a -> b -> ... -> a`.
pub fn module_cycles(root: &Path) -> Result<Vec<String>> {
    let mut cycles = Vec::new();
    for dir in ["crates", "xtask"] {
        let base = root.join(dir);
        let crate_dirs: Vec<PathBuf> = if dir == "xtask" {
            vec![base]
        } else {
            std::fs::read_dir(&base)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("src").is_dir())
                .collect()
        };
        for krate in crate_dirs {
            let name = krate.file_name().and_then(|n| n.to_str()).unwrap_or("?");
            sibling_cycles(&krate.join("src"), "crate", name, &mut cycles)?;
        }
    }
    Ok(cycles)
}

/// The cycles among the modules of `dir` (whose path is `path`), then
/// among those of each module folder below it.
fn sibling_cycles(dir: &Path, path: &str, label: &str, cycles: &mut Vec<String>) -> Result<()> {
    let mut modules: Vec<String> = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if !["lib", "main", "mod"].contains(&stem) && (p.is_dir() || stem_is_rs(&p)) {
            modules.push(stem.to_string());
        }
    }
    modules.sort();
    modules.dedup();
    let mut deps: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); modules.len()];
    for (i, m) in modules.iter().enumerate() {
        // (text, whether `super::` in it means `path`)
        let mut texts: Vec<(String, bool)> = Vec::new();
        let file = dir.join(format!("{m}.rs"));
        if file.is_file() {
            texts.push((std::fs::read_to_string(&file)?, true));
        }
        let sub = dir.join(m);
        if sub.is_dir() {
            walk(&sub, &mut |p| {
                if stem_is_rs(p) {
                    let own = p == sub.join("mod.rs");
                    texts.push((std::fs::read_to_string(p)?, own));
                }
                Ok(())
            })?;
        }
        for (text, own) in &texts {
            let code = without_comments(text);
            let mut named = first_segments(&code, path);
            if *own {
                named.extend(first_segments(&code, "super"));
            }
            for (j, other) in modules.iter().enumerate() {
                if j != i && named.contains(other) {
                    deps[i].insert(j);
                }
            }
        }
    }
    let at = if path == "crate" {
        label.to_string()
    } else {
        format!("{label} {}", path.trim_start_matches("crate::"))
    };
    for cycle in find_cycles(&deps) {
        let p: Vec<&str> = cycle.iter().map(|&k| modules[k].as_str()).collect();
        cycles.push(format!("{at}: {} -> {}", p.join(" -> "), p[0]));
    }
    for m in &modules {
        let sub = dir.join(m);
        if sub.is_dir() {
            sibling_cycles(&sub, &format!("{path}::{m}"), label, cycles)?;
        }
    }
    Ok(())
}

/// `text` without its `//` comments (doc comments included).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |k| &l[..k]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names that follow `prefix::` in `code`: the identifier, or each
/// first identifier of a `{...}` group (`prefix::{a, b::c}` gives `a`, `b`).
fn first_segments(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    let pat = format!("{prefix}::");
    let mut at = 0;
    while let Some(k) = code[at..].find(&pat) {
        // Only a path's first segment: not `xcrate::`, not `super::super::`.
        let before = code[..at + k].chars().last();
        let rest = &code[at + k + pat.len()..];
        at += k + pat.len();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    out.insert(ident(item.trim_start()));
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else if depth == 1 {
                    item.push(c);
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.remove("");
    out
}

fn stem_is_rs(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e == "rs")
}

/// One cycle through each strongly connected group of `deps` that has one
/// (depth-first search from each node, nodes in order).
fn find_cycles(deps: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
    let mut found: Vec<Vec<usize>> = Vec::new();
    for start in 0..deps.len() {
        // Shortest cycle through `start` by breadth-first search back to it.
        let mut prev = vec![usize::MAX; deps.len()];
        let mut queue = std::collections::VecDeque::from([start]);
        let mut hit = None;
        while let Some(n) = queue.pop_front() {
            for &m in &deps[n] {
                if m == start {
                    hit = Some(n);
                    break;
                }
                if prev[m] == usize::MAX {
                    prev[m] = n;
                    queue.push_back(m);
                }
            }
            if hit.is_some() {
                break;
            }
        }
        if let Some(mut n) = hit {
            let mut cycle = vec![n];
            while n != start {
                n = prev[n];
                cycle.push(n);
            }
            cycle.reverse();
            let mut key = cycle.clone();
            key.sort();
            if !found.iter().any(|c| {
                let mut k = c.clone();
                k.sort();
                k == key
            }) {
                found.push(cycle);
            }
        }
    }
    found
}

/// Runs every tidy check and fails with a list of what is wrong.
pub fn run() -> Result<()> {
    let root = workspace_root();
    let mut problems = Vec::new();
    let allowed = workspace_allowed_edges(&root)?;
    for e in forbidden_edges(&workspace_edges(&root)?, &allowed) {
        problems.push(format!(
            "dependency edge not allowed by ARCHITECTURE.md: {e}"
        ));
    }
    for f in files_without_module_doc(&root)? {
        problems.push(format!("{}: first line is not a `//!` doc", f.display()));
    }
    for (f, n) in oversized_modules(&root)? {
        problems.push(format!(
            "{}: {n} lines outside tests, over {MAX_MODULE_LINES}: split it or list it with a reason",
            f.display()
        ));
    }
    problems.extend(packaging_problems(&root)?);
    problems.extend(function_problems(&root)?);
    for c in module_cycles(&root)? {
        problems.push(format!("import cycle between modules: {c}"));
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
        let allowed = workspace_allowed_edges(&workspace_root()).unwrap();
        let bad = forbidden_edges(&edges, &allowed);
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
        let allowed = workspace_allowed_edges(&workspace_root()).unwrap();
        let edges = vec![("aqpim-pq".to_string(), "aqpim-kvcache".to_string())];
        assert_eq!(
            forbidden_edges(&edges, &allowed),
            vec!["aqpim-pq -> aqpim-kvcache"]
        );
    }

    #[test]
    fn allowed_edges_are_read_from_the_architecture_table() {
        let text = "# x\n## Architecture invariants\n\n| crate | may depend on |\n|---|---|\n\
                    | `a` | no workspace crate |\n| `b` | `a` |\n| `aqpim` (CLI) | every library crate |\n\
                    | `xtask` | none |\n\nOther text with `c` | `d`.\n";
        let e = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            allowed_edges(text).unwrap(),
            vec![e("b", "a"), e("aqpim", "a"), e("aqpim", "b")]
        );
        // The real table names the layering the crates have today.
        let real = workspace_allowed_edges(&workspace_root()).unwrap();
        assert!(real.contains(&e("aqpim-kvcache", "aqpim-pq")));
        assert!(!real
            .iter()
            .any(|(a, _)| a == "aqpim-pim" || a == "aqpim-pq"));
    }

    #[test]
    fn no_module_is_over_the_size_ceiling() {
        let big = oversized_modules(&workspace_root()).unwrap();
        assert!(
            big.is_empty(),
            "modules over {MAX_MODULE_LINES} lines: {big:?}"
        );
    }

    #[test]
    fn library_crates_package_their_data_and_readme() {
        // `cargo package --list` works offline (no registry access).
        let root = workspace_root();
        let libs = library_crates(&root).unwrap();
        assert!(libs.iter().any(|(n, _)| n == "aqpim-pim"), "{libs:?}");
        let pim = libs.iter().find(|(n, _)| n == "aqpim-pim").unwrap();
        let embedded = embedded_files(&pim.1).unwrap();
        assert!(embedded.len() >= 2, "the device presets: {embedded:?}");
        let problems = packaging_problems(&root).unwrap();
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn no_crate_has_an_import_cycle() {
        let cycles = module_cycles(&workspace_root()).unwrap();
        assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
    }

    #[test]
    fn paths_name_their_first_segment() {
        let code = "use crate::pim::{layout::Geom, scalar_geom::{self, Role}};\n\
                    use super::program; let x = super::super::style::f(); xcrate::a;";
        let names = |p: &str| first_segments(&without_comments(code), p);
        assert_eq!(
            names("crate::pim"),
            ["layout", "scalar_geom"].map(String::from).into()
        );
        assert_eq!(
            names("super"),
            ["program", "super"].map(String::from).into()
        );
        assert!(names("crate").contains("pim") && !names("crate").contains("a"));
        assert!(first_segments(&without_comments("// use crate::b::x;"), "crate").is_empty());
    }

    /// A cycle one level down (`crate::m::a` <-> `crate::m::b`) is found,
    /// through `super::` in a file and a `crate::` path in the other.
    #[test]
    fn nested_cycles_are_found() {
        let dir = std::env::temp_dir().join(format!("tidy-nested-{}", std::process::id()));
        let src = dir.join("crates/k/src");
        std::fs::create_dir_all(src.join("m")).unwrap();
        std::fs::write(src.join("lib.rs"), "mod m;\n").unwrap();
        std::fs::write(src.join("m/mod.rs"), "mod a;\nmod b;\n").unwrap();
        std::fs::write(src.join("m/a.rs"), "use super::b::X;\n").unwrap();
        std::fs::write(src.join("m/b.rs"), "use crate::m::a::Y;\n").unwrap();
        std::fs::create_dir_all(dir.join("xtask/src")).unwrap();
        std::fs::write(dir.join("xtask/src/main.rs"), "").unwrap();
        let cycles = module_cycles(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(cycles, vec!["k m: a -> b -> a".to_string()]);
    }

    #[test]
    fn cycles_are_found() {
        let deps = vec![
            BTreeSet::from([1]),
            BTreeSet::from([2]),
            BTreeSet::from([0]),
            BTreeSet::new(),
        ];
        assert_eq!(find_cycles(&deps), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn every_source_file_opens_with_a_module_doc() {
        let bad = files_without_module_doc(&workspace_root()).unwrap();
        assert!(bad.is_empty(), "files without a `//!` first line: {bad:?}");
    }
}
