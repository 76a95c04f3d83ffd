//! `cargo xtask`: project chores for the aqpim workspace.
//!
//! Tasks shell out to the release-built `aqpim` binary for heavy work, so this
//! crate keeps few dependencies and depends on no workspace library.

mod tidy;

use anyhow::{bail, Result};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  tidy             check the layering invariants and file conventions";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("tidy") => tidy::run(),
        Some("-h" | "--help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown task `{other}`\n\n{USAGE}"),
    }
}
