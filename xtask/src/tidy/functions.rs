//! Function length: no function of library or tool code longer than
//! [`MAX_FN_LINES`] unless [`LONG_FUNCTIONS`] lists it with a reason.
//!
//! The scan is textual, as the rest of tidy: a line that opens an item `fn`
//! at some indent starts a function, the next line that is that indent and
//! a lone `}` ends it. Test code is not read (a file's lines from its first
//! column-0 `#[cfg(test)]`, files named `tests.rs`, and the `tests/`,
//! `benches/` and `examples/` folders).

use std::path::Path;

use anyhow::{Context, Result};

use super::walk;

/// Longest function, in lines from its `fn` line to its closing brace.
/// STYLE asks for functions one can read at a glance, about 100 lines; the
/// rule fails past 120, so that a function near the mark is not split for
/// the sake of a line or two.
pub const MAX_FN_LINES: usize = 120;

/// Functions allowed past [`MAX_FN_LINES`]: `(file, function, reason)`.
/// At most three, each with the reason it reads better whole.
pub const LONG_FUNCTIONS: &[(&str, &str, &str)] = &[];

/// A function of the scanned code: where it starts and how long it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongFn {
    /// Path relative to the workspace root.
    pub file: String,
    /// 1-based line of the `fn`.
    pub line: usize,
    /// The function's name.
    pub name: String,
    /// Lines from the `fn` line to the closing brace, both counted.
    pub lines: usize,
}

/// The name of the function a line opens, and its indent, if it opens one:
/// `[pub[(..)]] [const] [async] [unsafe] [extern "C"] fn NAME`.
fn opens_fn(line: &str) -> Option<(usize, &str)> {
    let indent = line.len() - line.trim_start().len();
    let mut rest = line.trim_start();
    if let Some(r) = rest.strip_prefix("pub") {
        rest = match r.strip_prefix('(') {
            Some(r) => r.split_once(')')?.1,
            None => r,
        };
        rest = rest.trim_start();
    }
    for word in ["const ", "async ", "unsafe ", "extern \"C\" "] {
        if let Some(r) = rest.strip_prefix(word) {
            rest = r.trim_start();
        }
    }
    let rest = rest.strip_prefix("fn ")?;
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    (end > 0).then(|| (indent, &rest[..end]))
}

/// Every function of `text` (the non-test part of one file) longer than
/// `limit` lines, with `file` as its path.
pub fn long_functions_in(file: &str, text: &str, limit: usize) -> Vec<LongFn> {
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((indent, name)) = opens_fn(line) else {
            continue;
        };
        // The signature ends at the first line ending in `{` (a body), `;`
        // (a declaration) or `}` (a body on one line).
        let Some(sig_end) = (i..lines.len()).find(|&j| {
            let t = lines[j].trim_end();
            t.ends_with('{') || t.ends_with(';') || t.ends_with('}')
        }) else {
            continue;
        };
        let t = lines[sig_end].trim_end();
        if !t.ends_with('{') {
            continue;
        }
        let close = format!("{}}}", " ".repeat(indent));
        if let Some(end) = (sig_end + 1..lines.len()).find(|&k| lines[k].trim_end() == close) {
            let n = end - i + 1;
            if n > limit {
                found.push(LongFn {
                    file: file.to_string(),
                    line: i + 1,
                    name: name.to_string(),
                    lines: n,
                });
            }
        }
    }
    found
}

/// Functions under `crates/` and `xtask/` longer than [`MAX_FN_LINES`],
/// listed or not, longest first.
pub fn long_functions(root: &Path) -> Result<Vec<LongFn>> {
    let mut found = Vec::new();
    for dir in ["crates", "xtask"] {
        walk(&root.join(dir), &mut |path| {
            let rel = path.strip_prefix(root).unwrap_or(path);
            let test_code = rel.file_name().is_some_and(|n| n == "tests.rs")
                || rel.components().any(|c| {
                    ["tests", "benches", "examples"].contains(&&*c.as_os_str().to_string_lossy())
                });
            if test_code || path.extension().is_none_or(|e| e != "rs") {
                return Ok(());
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let file = rel.to_string_lossy().replace('\\', "/");
            found.extend(long_functions_in(&file, &text, MAX_FN_LINES));
            Ok(())
        })?;
    }
    found.sort_by(|a, b| b.lines.cmp(&a.lines).then(a.file.cmp(&b.file)));
    Ok(found)
}

/// The problems tidy reports: long functions not listed, listed ones that
/// are gone or short again (so that the list shrinks), and a list longer
/// than three.
pub fn function_problems(root: &Path) -> Result<Vec<String>> {
    let found = long_functions(root)?;
    let mut problems = Vec::new();
    for f in &found {
        if !LONG_FUNCTIONS
            .iter()
            .any(|(file, name, _)| *file == f.file && *name == f.name)
        {
            problems.push(format!(
                "{}:{}: fn {} is {} lines, over {MAX_FN_LINES}: split it by concern, or list it in tidy's LONG_FUNCTIONS with a reason",
                f.file, f.line, f.name, f.lines
            ));
        }
    }
    for (file, name, _) in LONG_FUNCTIONS {
        if !found.iter().any(|f| f.file == *file && f.name == *name) {
            problems.push(format!(
                "{file}: fn {name} is listed in LONG_FUNCTIONS but is no longer over {MAX_FN_LINES} lines: take it off the list"
            ));
        }
    }
    if LONG_FUNCTIONS.len() > 3 {
        problems.push(format!(
            "LONG_FUNCTIONS lists {} functions; at most 3 may be excepted",
            LONG_FUNCTIONS.len()
        ));
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_recognised() {
        assert_eq!(
            opens_fn("    pub(crate) fn read_body<R>("),
            Some((4, "read_body"))
        );
        assert_eq!(opens_fn("pub const unsafe fn f() {}"), Some((0, "f")));
        assert_eq!(opens_fn("        fn g(&self) -> u8;"), Some((8, "g")));
        assert_eq!(opens_fn("    let f = |x| x; // fn h"), None);
        assert_eq!(opens_fn("/// fn doc"), None);
    }

    #[test]
    fn lengths_count_from_fn_to_its_closing_brace() {
        let body = |n: usize| "        x += 1;\n".repeat(n);
        let text = format!(
            "impl A {{\n    pub fn long(\n        x: u8,\n    ) -> u8 {{\n{}    }}\n    fn short() {{}}\n    fn decl(&self);\n}}\n\
             #[cfg(test)]\nmod tests {{\n    fn ignored() {{\n{}    }}\n}}\n",
            body(10),
            body(50)
        );
        let found = long_functions_in("a.rs", &text, 5);
        assert_eq!(
            found,
            vec![LongFn {
                file: "a.rs".into(),
                line: 2,
                name: "long".into(),
                lines: 14
            }]
        );
        assert!(long_functions_in("a.rs", &text, 14).is_empty());
    }

    #[test]
    fn no_function_is_over_the_length_ceiling() {
        let problems = function_problems(&crate::tidy::workspace_root()).unwrap();
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
