//! The default calibration corpus of `aqpim pq calibrate` (`assets/calibration.txt`):
//! prose and source code interleaved, so that every prefix of it (the
//! calibration takes the first `--tokens`) and every chunk the calibration
//! cuts holds both.
//!
//! It is built from files `cargo xtask fetch-assets` has just verified, none
//! of which any evaluation reads: *Pride and Prejudice* and one module of a
//! Python package other than the held-out ones. Segments of about
//! [`SEGMENT_BYTES`] bytes, cut at line ends, follow each other in groups of
//! one prose segment and [`CODE_PER_PROSE`] code segments, until either
//! source runs out: a third of the corpus is prose, two thirds code.

/// Bytes per segment: about 1,500 tokens of prose or 2,000 of Python source
/// with SmolLM2's tokenizer, so a 2,048-token chunk spans a switch.
pub const SEGMENT_BYTES: usize = 6_000;

/// Code segments after each prose segment. Two, not one: of the corpora
/// measured, 1:2 is the one whose worse held-out code file is best, with
/// the shipped format +1.54 % on `requests/models.py` and +1.90 % on
/// `dateutil/parser/_parser.py` against +2.12 % and +1.53 % for 1:1
/// (`docs/results/accuracy.md`, "The default corpus").
pub const CODE_PER_PROSE: usize = 2;

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

/// The corpus: one segment of `prose`, then [`CODE_PER_PROSE`] of `code`,
/// and again, until either runs out (the last group may hold fewer code
/// segments).
pub fn interleave(prose: &str, code: &str) -> String {
    let (p, c) = (
        segments(prose, SEGMENT_BYTES),
        segments(code, SEGMENT_BYTES),
    );
    let mut out = String::with_capacity(prose.len() + code.len());
    let mut push = |s: &str| {
        out.push_str(s);
        if !s.ends_with('\n') {
            out.push('\n');
        }
    };
    for (a, group) in p.iter().zip(c.chunks(CODE_PER_PROSE)) {
        push(a);
        group.iter().for_each(|b| push(b));
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
    fn corpus_is_one_prose_segment_then_two_of_code() {
        let prose: String = (0..2000).map(|i| format!("Prose line {i}.\n")).collect();
        let code: String = (0..3000).map(|i| format!("x_{i} = {i}\n")).collect();
        let c = interleave(&prose, &code);
        // Every line comes from one of the sources, whole.
        assert!(c
            .lines()
            .all(|l| l.starts_with("Prose line ") || l.starts_with("x_")));
        // Runs of prose and code lines, each with its length in bytes.
        let mut runs: Vec<(bool, usize)> = Vec::new();
        for l in c.lines() {
            let is_code = l.starts_with("x_");
            match runs.last_mut() {
                Some((k, n)) if *k == is_code => *n += l.len() + 1,
                _ => runs.push((is_code, l.len() + 1)),
            }
        }
        // Prose first; a prose run is one segment, a code run two (the
        // last group may hold one).
        assert!(!runs[0].0);
        for (k, n) in &runs[..runs.len() - 1] {
            let want = if *k { CODE_PER_PROSE } else { 1 };
            assert_eq!(n / SEGMENT_BYTES, want, "run of {n} bytes");
        }
        // The code (seven segments) runs out in the fourth group, whole; the
        // prose is cut there.
        assert_eq!(segments(&code, SEGMENT_BYTES).len(), 7);
        assert!(c.ends_with("x_2999 = 2999\n"));
        assert_eq!(runs.iter().filter(|r| r.0).count(), 4);
        assert!(!c.contains("Prose line 1999."));
    }
}
