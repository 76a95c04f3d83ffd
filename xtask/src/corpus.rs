//! The default calibration corpus of `aqpim pq calibrate` (`assets/calibration.txt`):
//! prose and source code interleaved, so that every prefix of it (the
//! calibration takes the first `--tokens`) and every chunk the calibration
//! cuts holds both.
//!
//! It is built from files `cargo xtask fetch-assets` has just verified, none
//! of which any evaluation reads: *Pride and Prejudice* and one module of a
//! Python package other than the held-out one. Segments of about
//! [`SEGMENT_BYTES`] bytes, cut at line ends, alternate between the two,
//! prose first, until the shorter source runs out.

/// Bytes per segment: about 1,500 tokens of prose or 2,000 of Python source
/// with SmolLM2's tokenizer, so a 2,048-token chunk spans a switch.
pub const SEGMENT_BYTES: usize = 6_000;

/// Splits `text` into pieces of at least `size` bytes ending at a line end
/// (the last piece may be shorter).
fn segments(text: &str, size: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let cut = match rest.get(size..).and_then(|tail| tail.find('\n')) {
            Some(i) => size + i + 1,
            None => rest.len(),
        };
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

/// The corpus: segments of `prose` and `code` alternating, prose first,
/// as many pairs as the shorter of the two has segments.
pub fn interleave(prose: &str, code: &str) -> String {
    let (p, c) = (
        segments(prose, SEGMENT_BYTES),
        segments(code, SEGMENT_BYTES),
    );
    let mut out = String::with_capacity(prose.len() + code.len());
    for (a, b) in p.iter().zip(&c) {
        out.push_str(a);
        if !a.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(b);
        if !b.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cut_at_line_ends_and_cover_the_text() {
        let text: String = (0..500)
            .map(|i| format!("line {i} of the text\n"))
            .collect();
        let s = segments(&text, 100);
        assert_eq!(s.concat(), text);
        assert!(s.iter().all(|p| p.ends_with('\n')));
        assert!(s[..s.len() - 1].iter().all(|p| p.len() >= 100));
        assert_eq!(segments("", 10).len(), 0);
        assert_eq!(segments("no newline at all", 4), vec!["no newline at all"]);
    }

    #[test]
    fn corpus_alternates_prose_and_code() {
        let prose: String = (0..2000).map(|i| format!("Prose line {i}.\n")).collect();
        let code: String = (0..900).map(|i| format!("x_{i} = {i}\n")).collect();
        let c = interleave(&prose, &code);
        // Prose first, then code, then prose again.
        assert!(c.starts_with("Prose line 0."));
        let first_code = c.find("x_0 = 0").unwrap();
        assert!(first_code >= SEGMENT_BYTES);
        assert!(c[first_code..].contains("Prose line"));
        // Every line comes from one of the sources, whole.
        assert!(c
            .lines()
            .all(|l| l.starts_with("Prose line ") || l.starts_with("x_")));
        // As many pairs as the shorter source has segments: all the code.
        assert!(c.contains("x_899 = 899\n"));
    }
}
