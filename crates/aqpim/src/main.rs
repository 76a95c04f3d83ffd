//! The `aqpim` command-line tool: one binary for PQ codebooks, compressed KV
//! caches, PIM simulation and LLM decode experiments.
//!
//! Every subcommand prints a human-readable table by default and one JSON
//! object with `--json`; bad input ends with a one-line error and a non-zero
//! exit status.

mod attn;
mod kv;
mod model;
mod npy;
mod pq;
mod sim;
mod simulate;

use clap::{Parser, Subcommand};

/// Product-quantized KV caches in processing-in-memory: train, compress, simulate, decode.
#[derive(Debug, Parser)]
#[command(name = "aqpim", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Product-quantization codebooks: train, encode, benchmark.
    #[command(subcommand)]
    Pq(pq::PqCommand),
    /// PIM programs: assemble, disassemble, run on an HBM3 device, benchmark the simulator.
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Compressed KV caches: memory accounting, append benchmark.
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// Attention kernels on compressed KV caches: benchmark.
    #[command(subcommand)]
    Attn(attn::AttnCommand),
    /// Evaluate a real model (GGUF or Hugging Face safetensors): perplexity on a text.
    #[command(subcommand)]
    Eval(model::EvalCommand),
    /// Latency of a decode step on a system (GPU, host offload, FP16 PIM, AQPIM), itemized; `sweep` for grids.
    Simulate(simulate::SimulateArgs),
    /// Generate text with a real model (GGUF or Hugging Face safetensors), streaming tokens.
    Generate(model::GenerateArgs),
}

/// Restores the default action of SIGPIPE, so that a reader that closes the
/// pipe (`aqpim ... | head`) ends the program quietly, as it ends any Unix
/// tool, instead of a panic inside `println!` (Rust ignores SIGPIPE by
/// default).
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called first in `main`, before any other thread exists, with
    // the default action, which is valid for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() {
    quiet_on_closed_pipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pq(cmd) => pq::run(cmd),
        Command::Sim(cmd) => sim::run(cmd),
        Command::Kv(cmd) => kv::run(cmd),
        Command::Attn(cmd) => attn::run(cmd),
        Command::Eval(cmd) => model::run_eval(cmd),
        Command::Simulate(args) => simulate::run(args),
        Command::Generate(args) => model::run_generate(args),
    };
    if let Err(e) = result {
        // A reader that closed the pipe (`aqpim ... | head`) ends the program quietly.
        let closed = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if closed {
            std::process::exit(0);
        }
        // One line: the error and its causes, joined.
        eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}
