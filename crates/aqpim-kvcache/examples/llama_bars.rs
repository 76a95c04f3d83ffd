//! The two Llama-2-7B bars in one run (release build):
//! the cost of one decode step's appends (32 layers x 32 KV heads x 128,
//! `pq:dsub=4,nbits=8,sinks=4,window=128`, per-head codebooks) and a real
//! 128K-token allocation of one layer compared with the accounting of all 32.
//!
//! `cargo run --release -p aqpim-kvcache --example llama_bars [ALLOC_CTX] [ALLOC_LAYERS]`
//! prints one JSON object (`ALLOC_CTX = 0` skips the allocation check), as
//! `aqpim kv bench --alloc-ctx 131072 --json` does, plus the same step with
//! `flush=16`.

use aqpim_kvcache::{bench, KvShape, KvSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let ctx: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(131_072);
    let layers: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1);
    let shape = KvShape::llama2_7b();
    let KvSpec::Pq(spec) = "pq:dsub=4,nbits=8,sinks=4,window=128".parse::<KvSpec>()? else {
        unreachable!("a pq spec")
    };
    let append = bench::append_latency(shape, spec, 256, 64, 1)?;
    eprintln!(
        "append, flush=1: median {:.2} ms per step",
        append.median_step_ms
    );
    let mut flushed = spec;
    flushed.regions.flush = 16;
    let batched = bench::append_latency(shape, flushed, 256, 64, 1)?;
    eprintln!(
        "append, flush=16: median {:.2} ms per step",
        batched.median_step_ms
    );
    let alloc = if ctx > 0 {
        Some(bench::allocation_check(shape, spec, ctx, layers, 1)?)
    } else {
        None
    };
    println!(
        "{}",
        serde_json::json!({ "append": append, "append_flush16": batched, "allocation": alloc })
    );
    Ok(())
}
