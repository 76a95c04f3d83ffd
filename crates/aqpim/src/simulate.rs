//! `aqpim simulate`: the itemized latency of one decode step, for one point or
//! a grid of contexts, batches and policies.

use std::path::PathBuf;

use anyhow::{Context, Result};
use aqpim_decode::system::policy::{decode_step, Policy, Step};
use aqpim_decode::system::presets;
use clap::Args;

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Model preset (llama2-7b, llama2-13b, llama2-70b, llama3-8b, llama3-70b,
    /// mistral-7b, smollm2-135m) or a TOML file.
    #[arg(long)]
    model: String,
    /// System preset (h100, h100+host) or a TOML file.
    #[arg(long)]
    system: String,
    /// Policies, comma-separated: gpu, offload, offload-overlap.
    #[arg(long, default_value = "gpu")]
    policy: String,
    /// Context lengths, comma-separated.
    #[arg(long, default_value = "4096")]
    ctx: String,
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "1")]
    batch: String,
    /// Write every point as CSV to this file (atomically).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print JSON (one object per point, one per line) instead of a table.
    #[arg(long)]
    json: bool,
}

fn list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|e| anyhow::anyhow!("--{what} `{v}`: {e}"))
        })
        .collect()
}

const CSV_HEADER: &str = "model,system,policy,ctx,batch,linear_ms,attention_ms,transfer_ms,overlapped_ms,total_ms,tokens_per_s,transfer_share,transfer_share_of_attention,weight_bytes,kv_bytes,gpu_bytes_used,host_bytes_used";

fn csv_row(s: &Step) -> String {
    format!(
        "{},{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.3},{:.6},{:.6},{},{},{},{}",
        s.model,
        s.system,
        s.policy,
        s.ctx,
        s.batch,
        s.linear_ms,
        s.attention_ms,
        s.transfer_ms,
        s.overlapped_ms,
        s.total_ms,
        s.tokens_per_s,
        s.transfer_share,
        s.transfer_share_of_attention,
        s.weight_bytes,
        s.kv_bytes,
        s.gpu_bytes_used,
        s.host_bytes_used
    )
}

pub fn run(a: SimulateArgs) -> Result<()> {
    let model = presets::model(&a.model)?;
    let system = presets::system(&a.system)?;
    let policies: Vec<Policy> = list(&a.policy, "policy")?;
    let ctxs: Vec<usize> = list(&a.ctx, "ctx")?;
    let batches: Vec<usize> = list(&a.batch, "batch")?;
    let single = policies.len() * ctxs.len() * batches.len() == 1;
    let mut steps = Vec::new();
    // In a grid, points that do not fit are reported and skipped; a single
    // point that does not fit is an error.
    let mut skipped = Vec::new();
    for &p in &policies {
        for &b in &batches {
            for &c in &ctxs {
                match decode_step(&model, &system, p, c, b) {
                    Ok(step) => steps.push(step),
                    Err(e @ aqpim_decode::DecodeError::Capacity { .. }) if !single => {
                        skipped.push(format!("{p} ctx {c} batch {b}: {e}"))
                    }
                    Err(e) => return Err(e).with_context(|| format!("ctx {c}, batch {b}")),
                }
            }
        }
    }
    if let Some(out) = &a.out {
        let mut text = format!("{CSV_HEADER}\n");
        for s in &steps {
            text.push_str(&csv_row(s));
            text.push('\n');
        }
        aqpim_pq::io::write_atomic(out, text.as_bytes())?;
    }
    if a.json {
        for s in &steps {
            println!("{}", serde_json::to_string(s)?);
        }
    } else {
        println!(
            "{:<16} {:>8} {:>6} {:>10} {:>10} {:>11} {:>10} {:>10} {:>9}",
            "policy",
            "ctx",
            "batch",
            "linear ms",
            "attn ms",
            "transfer ms",
            "step ms",
            "tokens/s",
            "transfer"
        );
        for s in &steps {
            println!(
                "{:<16} {:>8} {:>6} {:>10.3} {:>10.3} {:>11.3} {:>10.3} {:>10.1} {:>8.1}%",
                s.policy.to_string(),
                s.ctx,
                s.batch,
                s.linear_ms,
                s.attention_ms,
                s.transfer_ms,
                s.total_ms,
                s.tokens_per_s,
                100.0 * s.transfer_share
            );
        }
    }
    for s in &skipped {
        eprintln!("skipped (does not fit): {s}");
    }
    Ok(())
}
