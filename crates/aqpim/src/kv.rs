//! `aqpim kv ...`: memory accounting of compressed KV caches, and the append benchmark.

use anyhow::{bail, Context, Result};
use aqpim_kvcache::{account, bench, KvShape, KvSpec, MemoryReport};
use clap::{Args, Subcommand};

use crate::limits;

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Memory of a cache (bytes by component, bits per element, FP16 baseline), without allocating it.
    Stats {
        #[command(flatten)]
        cache: CacheArgs,
        /// Tokens per layer (context length).
        #[arg(long)]
        ctx: usize,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Time appending one token to every layer of a PQ cache (calibrated codebooks,
    /// KV-like data), and optionally check a real allocation against the accounting.
    Bench {
        #[command(flatten)]
        cache: CacheArgs,
        /// Tokens per layer before the timed steps (at least sinks + window, so that appends encode).
        #[arg(long, default_value_t = 256)]
        prefill: usize,
        /// Timed decode steps.
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Also allocate this many tokens on `--alloc-layers` layers and compare the bytes with the report.
        #[arg(long)]
        alloc_ctx: Option<usize>,
        /// Layers allocated for the allocation check.
        #[arg(long, default_value_t = 1)]
        alloc_layers: usize,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Seed of the synthetic data.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Model shape `L,H,D`: layers, KV heads, head size (Llama-2-7B: 32,32,128).
    #[arg(long, default_value = "32,32,128")]
    model_shape: String,
    /// Query heads per layer (grouped-query attention; default: as many as KV heads).
    #[arg(long)]
    q_heads: Option<usize>,
    /// Cache spec: `dense`, `scalar:bits=2,group=32,window=128`, `pq:dsub=4,nbits=8,sinks=4,window=128`, ...
    #[arg(long, default_value = "pq:dsub=4,nbits=8,sinks=4,window=128")]
    kv: String,
}

impl CacheArgs {
    fn resolve(&self) -> Result<(KvShape, KvSpec)> {
        let [l, h, d] = limits::model_shape("--model-shape", &self.model_shape)?;
        let shape = KvShape::with_query_heads(l, h, self.q_heads.unwrap_or(h), d)?;
        let spec: KvSpec = self
            .kv
            .parse()
            .with_context(|| format!("--kv `{}`", limits::cut(&self.kv)))?;
        spec.validate(&shape)?;
        Ok((shape, spec))
    }
}

pub fn run(cmd: KvCommand) -> Result<()> {
    match cmd {
        KvCommand::Stats { cache, ctx, json } => {
            let (shape, spec) = cache.resolve()?;
            let report = account(&shape, &spec, ctx)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_report(&report);
            }
            Ok(())
        }
        KvCommand::Bench {
            cache,
            prefill,
            steps,
            alloc_ctx,
            alloc_layers,
            threads,
            seed,
            json,
        } => {
            let (shape, spec) = cache.resolve()?;
            let KvSpec::Pq(pq) = spec else {
                bail!("`aqpim kv bench` times the PQ store; --kv must be a `pq:...` spec");
            };
            if steps == 0 {
                bail!("--steps must be at least 1");
            }
            if let Some(c) = alloc_ctx {
                aqpim_kvcache::limits::check_ctx("--alloc-ctx", c)?;
            }
            if alloc_layers == 0 || alloc_layers > shape.num_layers() {
                bail!("--alloc-layers must be in 1..={}", shape.num_layers());
            }
            let pool = limits::thread_pool(threads)?;
            let (append, alloc) = pool.install(|| -> Result<_> {
                let append = bench::append_latency(shape, pq, prefill, steps, seed)?;
                let alloc = alloc_ctx
                    .map(|ctx| bench::allocation_check(shape, pq, ctx, alloc_layers, seed))
                    .transpose()?;
                Ok((append, alloc))
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "append": append, "allocation": alloc })
                );
            } else {
                println!("{:<28} {}", "cache", append.spec);
                println!("{:<28} {}", "shape", append.shape);
                println!(
                    "{:<28} {} (prefill {}, {} threads)",
                    "steps", append.steps, append.prefill, append.threads
                );
                println!("{:<28} {}", "searches per step", append.searches_per_step);
                println!(
                    "{:<28} {:.3} (mean {:.3}, min {:.3})",
                    "step, all layers (ms)",
                    append.median_step_ms,
                    append.mean_step_ms,
                    append.min_step_ms
                );
                if let Some(a) = alloc {
                    println!(
                        "{:<28} {} layers, {} bytes held, {} allocated",
                        "allocated", a.layers_allocated, a.heap.used, a.heap.capacity
                    );
                    println!(
                        "{:<28} {} (scaled) vs {} (report): {}",
                        "full shape (bytes)",
                        a.scaled_heap_bytes,
                        a.full_shape.total_bytes,
                        if a.matches { "match" } else { "MISMATCH" }
                    );
                }
            }
            Ok(())
        }
    }
}

fn print_report(r: &MemoryReport) {
    const MIB: f64 = 1024.0 * 1024.0;
    let b = &r.bytes;
    println!("{:<26} {}", "cache", r.spec);
    println!("{:<26} {}", "shape", r.shape);
    println!(
        "{:<26} {} (sinks {}, encoded {}, recent {} token-layers)",
        "tokens per layer",
        r.ctx,
        r.tokens_by_region.sinks,
        r.tokens_by_region.encoded,
        r.tokens_by_region.recent
    );
    let rows = [
        ("key codes", b.key_codes),
        ("value codes", b.value_codes),
        ("key codebooks", b.key_codebooks),
        ("value codebooks", b.value_codebooks),
        ("FP16 sinks", b.sinks),
        ("FP16 recent window", b.recent),
        ("scales and minima", b.metadata),
        ("total", r.total_bytes),
        ("FP16 baseline", r.fp16_bytes),
    ];
    for (name, bytes) in rows {
        println!(
            "{:<26} {:>16} bytes {:>12.2} MiB",
            name,
            bytes,
            bytes as f64 / MIB
        );
    }
    let bits = &r.bits_per_element;
    println!(
        "{:<26} {:.4} (codes {:.4} + codebooks {:.4} + FP16 tokens {:.4} + scales {:.4})",
        "bits per element",
        bits.total,
        bits.codes,
        bits.codebooks,
        bits.full_precision,
        bits.metadata
    );
    println!("{:<26} {:.2}x", "compression vs FP16", r.compression_ratio);
}
