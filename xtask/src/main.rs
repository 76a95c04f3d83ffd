//! `cargo xtask`: project chores for the aqpim workspace.
//!
//! Tasks shell out to the release-built `aqpim` binary for heavy work, so this
//! crate keeps few dependencies and depends on no workspace library.

#![forbid(unsafe_code)]

mod accuracy;
mod corpus;
mod faiss_compare;
mod fetch_assets;
mod rdata;
mod reproduce;
mod tidy;

use anyhow::{bail, Result};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  tidy             check the layering invariants and file conventions
  accuracy         a grid of `aqpim eval ppl` rows (calibrating each codebook spec once)
                   into a CSV and a Markdown table; reruns skip finished rows
                   --grid FILE.toml [--out DIR] [--aqpim BIN] [--dry-run]
                   [--shard I/N (the rows whose index is I mod N, into OUT/shards/I-of-N)]
                   [--merge (every shard's rows into OUT/rows.csv and OUT/table.md)]
  faiss-compare    PQ train/encode/ADC speed and MSE against faiss, same data and machine
                   [--n 65536 --d 128 --m 32 --nbits 8 --iters 25 --threads 1]
  fetch-assets     SmolLM2-135M-Instruct (GGUF) and the Jane Austen novels into assets/
                   [--model FILE.gguf|FILE.whl] [--text-deb FILE.deb | --rdata DIR] [--out DIR]
  reproduce        the serving view and system-model sweeps into docs/results: CSV,
                   summary.md, figures [--quick (a small grid, into target/reproduce-quick)]
                   [--out DIR] [--model M] [--system S] [--ctx LIST] [--batch LIST]
                   [--pim-model simulated|analytic]
                   [--check (rerun the default grid into target/reproduce-check and fail
                   naming every published file that differs)]
  plot             the reproduce figures from CSV files `aqpim simulate serve|sweep` wrote
                   [--serve FILE.csv] [--sweep FILE.csv] [--offload FILE.csv] --out DIR";

/// Runs the task; a user error is one line (with its causes) on stderr and
/// exit status 1, never a backtrace.
fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo xtask TASK --help` (or -h anywhere): the usage, whatever the task.
    if args.iter().skip(1).any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    match args.first().map(String::as_str) {
        Some("tidy") => tidy::run(),
        Some("accuracy") => accuracy::run(&args[1..], &tidy::workspace_root()),
        Some("fetch-assets") => fetch_assets::run(&args[1..]),
        Some("reproduce") => reproduce::run(&args[1..], &tidy::workspace_root()),
        Some("plot") => reproduce::plot_cmd(&args[1..]),
        Some("faiss-compare") => faiss_compare::run(&args[1..], &tidy::workspace_root()),
        Some("-h" | "--help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown task `{other}`\n\n{USAGE}"),
    }
}
