//! The `aqpim` command-line tool: one binary for PQ codebooks, compressed KV
//! caches, PIM simulation and LLM decode experiments.
//!
//! Every subcommand prints a human-readable table by default and one JSON
//! object with `--json`; bad input ends with a one-line error and a non-zero
//! exit status.

mod args;
mod attn;
mod attn_inspect;
mod csv_rows;
mod kv;
mod layers;
mod limits;
mod model;
mod npy;
mod pq;
mod presets;
mod price;
mod probe;
mod sim;
mod simulate;

use clap::{Parser, Subcommand};

/// Product-quantized KV caches in processing-in-memory: train, compress, simulate, decode.
#[derive(Debug, Parser)]
#[command(name = "aqpim", version, about, propagate_version = true)]
struct Cli {
    /// Key-score tables of the CPU attention kernel on PQ codes: `u8`
    /// (entries quantized to one byte, scanned from SIMD registers), `u16`
    /// (two bytes), or `exact` (f32 tables, the reference).
    #[arg(long, global = true, default_value = "u8", value_parser = parse_tables)]
    score_tables: aqpim_attn::ScoreTables,
    #[command(subcommand)]
    command: Command,
}

fn parse_tables(s: &str) -> Result<aqpim_attn::ScoreTables, String> {
    s.parse()
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
    /// Evaluate a real model (GGUF or Hugging Face safetensors): perplexity on a text, its loss layer by layer, retrieval probe.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Latency of a decode step on a system (GPU, host offload, FP16 PIM, AQPIM), itemized; `sweep` for grids.
    Simulate(Box<simulate::SimulateArgs>),
    /// Generate text with a real model (GGUF or Hugging Face safetensors), streaming tokens.
    Generate(model::GenerateArgs),
    /// The compiled-in model, system and device presets: list them, print one as TOML.
    #[command(subcommand)]
    Presets(presets::PresetsCommand),
}

/// `aqpim eval`: the model evaluations of `model.rs`, the per-layer loss of
/// `layers.rs` and the retrieval probe.
#[derive(Debug, Subcommand)]
enum EvalCommand {
    #[command(flatten)]
    Model(model::EvalCommand),
    /// Where a PQ format's perplexity loss lives: each layer coded alone,
    /// the others in FP16, on `eval ppl`'s windows.
    Layers(layers::LayersArgs),
    /// Retrieval probe: a number hidden in a novel at a chosen depth, asked for at the end.
    Retrieval(probe::RetrievalArgs),
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
    aqpim_attn::set_score_tables(cli.score_tables);
    let result = match cli.command {
        Command::Pq(cmd) => pq::run(cmd),
        Command::Sim(cmd) => sim::run(cmd),
        Command::Kv(cmd) => kv::run(cmd),
        Command::Attn(cmd) => attn::run(cmd),
        Command::Eval(EvalCommand::Model(cmd)) => model::run_eval(cmd),
        Command::Eval(EvalCommand::Layers(args)) => layers::run(args),
        Command::Eval(EvalCommand::Retrieval(args)) => probe::run(args),
        Command::Simulate(args) => simulate::run(*args),
        Command::Generate(args) => model::run_generate(args),
        Command::Presets(cmd) => presets::run(cmd),
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
        eprintln!("error: {}", error_line(&e));
        std::process::exit(1);
    }
}

/// One line: the error and its causes joined by `: `, a cause left out
/// when an earlier message already says it (an error variant that formats
/// its `#[source]` into its own message), and any overlong token (a pasted
/// spec, an operand) cut to a readable length.
fn error_line(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    one_line(&message)
}

/// `message` on one line, every whitespace-separated word longer than 128
/// characters cut to its first [`limits::MAX_TOKEN_CHARS`] and `...`, and the
/// whole cut at 2000 characters: the backstop for errors that echo input.
fn one_line(message: &str) -> String {
    let mut out = String::new();
    for (i, word) in message.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if word.chars().count() > 128 {
            out.push_str(&limits::cut(word));
        } else {
            out.push_str(word);
        }
        if out.len() > 2000 {
            out.truncate(out.floor_char_boundary_compat(2000));
            out.push_str("...");
            break;
        }
    }
    out
}

/// `str::floor_char_boundary` for the workspace's Rust version.
trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, at: usize) -> usize;
}

impl FloorCharBoundary for String {
    fn floor_char_boundary_compat(&self, mut at: usize) -> usize {
        at = at.min(self.len());
        while !self.is_char_boundary(at) {
            at -= 1;
        }
        at
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_print_on_one_short_line() {
        let long = format!("--kv pq:{}: unknown key\ncaused by: x", "a".repeat(100_000));
        let line = super::one_line(&long);
        assert!(!line.contains('\n'));
        assert!(line.len() < 200, "{line}");
        assert!(line.ends_with("unknown key caused by: x"));
    }

    /// An error whose message already formats its source, as some library
    /// variants do (`reading X: {source}` with `#[source]`).
    #[derive(Debug)]
    struct Reading(std::io::Error);

    impl std::fmt::Display for Reading {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "reading /x.gguf: {}", self.0)
        }
    }

    impl std::error::Error for Reading {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(Reading(io)).context("loading model /x.gguf");
        assert_eq!(
            super::error_line(&e),
            "loading model /x.gguf: reading /x.gguf: No such file"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::error_line(&plain), "outer: inner");
    }
}
