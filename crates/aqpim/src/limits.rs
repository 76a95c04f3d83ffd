//! Ceilings on the CLI's numeric flags, and the helpers that check them.
//!
//! Sizes that reach a library are checked there too (each library crate has
//! its own `limits` module); these are the ones only the CLI sees: worker
//! threads, repetitions, and what the benchmarks generate before they time.
//! Every check runs before anything is allocated or started, and names the
//! flag and the limit.

use anyhow::{bail, Context, Result};

/// Most worker threads a `--threads` flag accepts. A pool this size already
/// costs ~2 GiB of reserved stacks; more only adds context switches.
pub const MAX_THREADS: usize = 1024;

/// Most timed repetitions (`--reps`).
pub const MAX_REPS: usize = 10_000;

/// Most sequences `attn sim --batch` simulates together (AttAcc's largest
/// batch is 256; 4096 leaves room for sweeps and keeps heads = batch x KV
/// heads far below the simulator's limits).
pub const MAX_BATCH: usize = 4096;

/// Longest an offending token is echoed in an error message.
pub const MAX_TOKEN_CHARS: usize = 64;

/// `s`, cut to [`MAX_TOKEN_CHARS`] characters with `...` when longer, so that
/// an error echoing user input stays one readable line.
pub fn cut(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match one_line.char_indices().nth(MAX_TOKEN_CHARS) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    }
}

/// Checks `value` of `flag` against `1..=max`.
pub fn in_range(flag: &str, value: usize, max: usize) -> Result<usize> {
    if value == 0 || value > max {
        bail!("{flag} {value} is outside 1..={max}");
    }
    Ok(value)
}

/// A rayon pool of `threads` workers (all cores when `None`), with
/// `--threads` checked against `1..=`[`MAX_THREADS`].
pub fn thread_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(t) = threads {
        builder = builder.num_threads(in_range("--threads", t, MAX_THREADS)?);
    }
    builder.build().context("starting the thread pool")
}

/// Parses `L,H,D` (a model shape flag) into three positive integers.
pub fn model_shape(flag: &str, text: &str) -> Result<[usize; 3]> {
    let bad = || {
        format!(
            "{flag} `{}`: expected L,H,D (three positive integers)",
            cut(text)
        )
    };
    let dims: Vec<usize> = text
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(bad)?;
    let [l, h, d] = dims[..] else {
        bail!(bad());
    };
    Ok([l, h, d])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_tokens_are_cut() {
        assert_eq!(cut("short"), "short");
        let long = "x".repeat(100_000);
        assert_eq!(cut(&long).len(), MAX_TOKEN_CHARS + 3);
        assert_eq!(cut("a\nb"), "a b");
        // Multi-byte characters are cut on a character boundary.
        assert_eq!(cut(&"é".repeat(70)).chars().count(), MAX_TOKEN_CHARS + 3);
    }

    #[test]
    fn thread_counts_are_bounded() {
        assert!(thread_pool(Some(0)).is_err());
        assert!(thread_pool(Some(100_000)).is_err());
        assert_eq!(thread_pool(Some(2)).unwrap().current_num_threads(), 2);
    }

    #[test]
    fn model_shapes_parse_or_fail_in_one_short_line() {
        assert_eq!(model_shape("--s", "32, 8,128").unwrap(), [32, 8, 128]);
        let e = format!("{:#}", model_shape("--s", &"9".repeat(1000)).unwrap_err());
        assert!(e.len() < 300 && !e.contains('\n'), "{e}");
        assert!(model_shape("--s", "1,2").is_err());
    }
}
