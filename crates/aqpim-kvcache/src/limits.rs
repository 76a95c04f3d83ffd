//! Ceilings on every input-derived size of a KV cache: shape, context, and
//! what the benchmarks allocate.
//!
//! Each is checked before anything is allocated, and a value past it is an
//! error that names the limit. They are design limits, not measurements:
//! far above the models this workspace targets (Llama-family: at most 126
//! layers, 128 query heads, head size 256, contexts of 128K tokens) and low
//! enough that every byte count of the accounting fits in 64 bits
//! (`2 * 2 * MAX_CTX * MAX_LAYERS * MAX_KV_HEADS * MAX_HEAD_DIM = 2^62`).

use crate::error::{KvError, Result};

/// Most layers (L) of a cache shape.
pub const MAX_LAYERS: usize = 1024;
/// Most KV heads (and query heads) per layer.
pub const MAX_KV_HEADS: usize = 1024;
/// Largest head size (d).
pub const MAX_HEAD_DIM: usize = 4096;
/// Most tokens per layer (2^24, 16.7 M): the context of `kv stats`, the
/// prefill and steps of `kv bench`, the tokens a cache reserves or loads.
pub const MAX_CTX: usize = 1 << 24;
/// Most `f32` values a benchmark generates for one batch of tokens
/// (`tokens * H_kv * d`, keys or values): 2^29, 2 GiB.
pub const MAX_BENCH_ELEMENTS: usize = 1 << 29;

/// Most bytes a benchmark's cache may hold (its accounting's total): 8 GiB.
pub const MAX_BENCH_BYTES: u64 = 1 << 33;

/// Checks a token count against [`MAX_CTX`]; `what` names it (a flag, a field).
pub fn check_ctx(what: &str, tokens: usize) -> Result<()> {
    if tokens > MAX_CTX {
        return Err(KvError::BadShape(format!(
            "{what} = {tokens} tokens is more than the limit of {MAX_CTX}"
        )));
    }
    Ok(())
}

/// `a * b * c`, checked against `max`; `what` names the product in the error.
pub fn product(what: &str, factors: &[usize], max: usize) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .filter(|&n| n <= max)
        .ok_or_else(|| {
            KvError::BadShape(format!(
                "{what} ({}) is more than the limit of {max}",
                factors
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(" x ")
            ))
        })
}

/// The most k-means iterations a `pq:` spec may ask for (`iters=`): faiss
/// uses 25; a thousand is far past convergence and still bounded in time.
pub const MAX_KMEANS_ITERATIONS: usize = 1000;

/// The most characters of a user's token echoed in an error message.
pub const MAX_ECHO_CHARS: usize = 64;

/// `token`, cut to [`MAX_ECHO_CHARS`] characters (with `...`) for an error
/// message.
pub fn cut(token: &str) -> String {
    if token.chars().count() > MAX_ECHO_CHARS {
        format!(
            "{}...",
            token.chars().take(MAX_ECHO_CHARS).collect::<String>()
        )
    } else {
        token.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_that_wrap_or_pass_the_limit_are_errors() {
        assert_eq!(product("x", &[2, 3, 4], 24).unwrap(), 24);
        assert!(product("x", &[2, 3, 4], 23).is_err());
        assert!(product("x", &[usize::MAX, 2], usize::MAX).is_err());
        assert!(check_ctx("ctx", MAX_CTX).is_ok());
        assert!(check_ctx("ctx", usize::MAX).is_err());
    }
}
