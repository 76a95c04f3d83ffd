//! `aqpim kv ...`: memory accounting of compressed KV caches, and the append benchmark.

use anyhow::{bail, Context, Result};
use aqpim_kvcache::{account, bench, KvShape, KvSpec, MemoryReport};
use clap::{Args, Subcommand};

use crate::args::{count, ShapeArgs};
use crate::limits;

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Memory of a cache (bytes by component, bits per element, FP16 baseline), without allocating it.
    Stats {
        #[command(flatten)]
        cache: CacheArgs,
        /// Tokens per sequence (the context length; K/M suffixes: 128K = 131072).
        #[arg(long, value_parser = count)]
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
        /// Tokens per sequence before the timed steps (at least sinks + window, so that appends encode; K/M suffixes).
        #[arg(long, default_value = "256", value_parser = count)]
        prefill: usize,
        /// Timed decode steps.
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Also allocate this many tokens on `--alloc-layers` layers and compare the bytes with the report (K/M suffixes).
        #[arg(long, value_parser = count)]
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
    /// The model shape (default: --model llama2-7b).
    #[command(flatten)]
    shape: ShapeArgs,
    /// Cache spec: `fp16` (dense), `scalar:bits=2,group=32,window=128`, `pq:dsub=4,nbits=8,sinks=4,window=128`, ...
    #[arg(
        long,
        value_name = "SPEC",
        default_value = "pq:dsub=4,nbits=8,sinks=4,window=128"
    )]
    kv: String,
}

impl CacheArgs {
    fn resolve(&self) -> Result<(KvShape, KvSpec)> {
        let m = self.shape.resolve(Some("llama2-7b"))?;
        let shape = KvShape::with_query_heads(m.layers, m.kv_heads, m.q_heads, m.head_dim)?;
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
            let mut report = account(&shape, &spec, ctx)?;
            // The dense cache is called `fp16` in every output.
            report.spec = crate::args::kv_name(&spec);
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
    let layers = r.shape.num_layers() as u64;
    let t = &r.tokens_by_region;
    println!("{:<26} {}", "cache", r.spec);
    println!("{:<26} {}", "shape", r.shape);
    println!("{:<26} {}", "tokens per sequence", r.ctx);
    if r.spec != "fp16" {
        // Regions are summed over layers: token-layers, named as such.
        println!(
            "{:<26} {} sinks, {} encoded, {} recent window ({} token-layers in all, over {layers} layers)",
            "token-layers by region",
            t.sinks,
            t.encoded,
            t.recent,
            t.sinks + t.encoded + t.recent,
        );
    }
    let dense = r.spec == "fp16";
    let rows = [
        ("key codes", b.key_codes),
        ("value codes", b.value_codes),
        ("key codebooks", b.key_codebooks),
        ("value codebooks", b.value_codebooks),
        ("FP16 sinks", b.sinks),
        (
            if dense {
                "FP16 keys and values"
            } else {
                "FP16 recent window"
            },
            b.recent,
        ),
        (
            // MX-style groups hold one E8M0 exponent each, not a (min, scale) pair.
            if matches!(r.spec.parse(), Ok(KvSpec::Scalar(s)) if s.mx) {
                "shared exponents (E8M0)"
            } else {
                "scales and minima"
            },
            b.metadata,
        ),
        ("total", r.total_bytes),
        ("FP16 baseline", r.fp16_bytes),
    ];
    for (name, bytes) in rows {
        if bytes == 0 && name != "total" {
            continue;
        }
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
