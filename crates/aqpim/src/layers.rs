//! `aqpim eval layers`: where a PQ format's perplexity loss lives. Each
//! layer is coded alone, every other layer kept in FP16 (`fp16_layers=`),
//! on the same windows as `aqpim eval ppl`; beside them the FP16 cache and
//! the format with every layer coded.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use aqpim_decode::eval;
use aqpim_decode::DensePrecision;
use aqpim_kvcache::{KvSpec, LayerSet};
use clap::Args;
use rayon::prelude::*;
use serde::Serialize;

use crate::args::count;
use crate::model::{
    cache_choice, doc_start_token, in_pool, load, make_cache, ppl_options, scored_text, to_decode,
    token_bar, CacheChoice, Scored,
};

#[derive(Debug, Args)]
pub struct LayersArgs {
    /// Model (Llama family): a GGUF file, or a Hugging Face checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// UTF-8 text to score.
    #[arg(long)]
    text: PathBuf,
    /// The PQ format whose loss is split by layer (`pq:...`; it must not
    /// name `fp16_layers` itself).
    #[arg(long)]
    kv: String,
    /// Calibrated codebooks (from `aqpim pq calibrate`); without them
    /// codebooks are trained online per window.
    #[arg(long)]
    codebooks: Option<PathBuf>,
    /// Layers to code alone, `a+b` or ranges `a-b` joined by `+` (default: every layer).
    #[arg(long)]
    layers: Option<String>,
    /// Text tokens per window (W; K/M suffixes).
    #[arg(long, default_value = "512", value_parser = count)]
    window: usize,
    #[command(flatten)]
    span: Scored,
    /// Worker threads (default: all cores). Runs of different layers go
    /// on at once, one a thread.
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// One run: the FP16 cache, the whole format, or the format on one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Fp16,
    AllCoded,
    Layer(usize),
}

#[derive(Debug, Serialize)]
struct LayerRow {
    layer: usize,
    perplexity: f64,
    /// Perplexity against FP16's, percent.
    vs_fp16_pct: f64,
}

#[derive(Debug, Serialize)]
struct LayersOutput {
    model: String,
    text: String,
    kv: String,
    codebooks: Option<String>,
    window: usize,
    prefill: usize,
    skip: usize,
    text_tokens: usize,
    fp16_perplexity: f64,
    /// Every layer coded (what `aqpim eval ppl --kv KV` gives).
    all_coded_perplexity: f64,
    all_coded_vs_fp16_pct: f64,
    /// Each layer coded alone, the others in FP16.
    layers: Vec<LayerRow>,
    /// The layers' percentages summed: close to `all_coded_vs_fp16_pct`
    /// when the layers' losses add up.
    sum_of_layers_pct: f64,
    threads: usize,
}

pub fn run(a: LayersArgs) -> Result<()> {
    in_pool(a.threads, || layers(a))
}

fn layers(a: LayersArgs) -> Result<()> {
    let choice = cache_choice(&a.kv, a.codebooks.as_deref())?;
    let CacheChoice::Store(KvSpec::Pq(pq), books) = &choice else {
        bail!(
            "--kv {}: `aqpim eval layers` splits a `pq:` format's loss by layer",
            crate::limits::cut(&a.kv)
        );
    };
    if !pq.regions.fp16_layers.is_empty() {
        bail!("--kv names `fp16_layers`; give the format alone, every layer coded");
    }
    let text = std::fs::read_to_string(&a.text)
        .with_context(|| format!("reading text {} (UTF-8 expected)", a.text.display()))?;
    let (model, tok) = load(&a.model)?;
    let n_layers = model.config().n_layers;
    if n_layers > LayerSet::LIMIT {
        bail!(
            "the model has {n_layers} layers; `fp16_layers` names layers below {}",
            LayerSet::LIMIT
        );
    }
    let chosen: Vec<usize> = match &a.layers {
        None => (0..n_layers).collect(),
        Some(s) => {
            let set: LayerSet = s
                .parse()
                .map_err(|why| anyhow::anyhow!("--layers {}: {why}", crate::limits::cut(s)))?;
            if let Some(bad) = set.iter().find(|&l| l >= n_layers) {
                bail!("--layers names layer {bad}, but the model has {n_layers} layers");
            }
            set.iter().collect()
        }
    };
    let doc_start = doc_start_token("auto", &tok)?;
    let tokens = scored_text(&tok, &text, a.span.skip, a.span.tokens)?;
    let opts = ppl_options(&model, a.window, None, a.span.prefill, doc_start)?;
    let mut runs = vec![Run::Fp16, Run::AllCoded];
    runs.extend(chosen.iter().map(|&l| Run::Layer(l)));
    let choice_of = |run: Run| -> CacheChoice {
        match run {
            Run::Fp16 => CacheChoice::Dense(DensePrecision::F16),
            Run::AllCoded => choice.clone(),
            Run::Layer(l) => {
                let mut p = *pq;
                p.regions.fp16_layers = LayerSet::all_but(n_layers, l);
                CacheChoice::Store(KvSpec::Pq(p), books.clone())
            }
        }
    };
    let bar = token_bar(format!("{} runs", runs.len()));
    let length = AtomicU64::new(0);
    let ppl: Vec<f64> = runs
        .par_iter()
        .with_max_len(1)
        .map(|&run| -> Result<f64> {
            let c = choice_of(run);
            let mut cache = || make_cache(&model, &c).map_err(to_decode);
            let (mut seen, mut counted) = (0usize, false);
            let report = eval::perplexity_against(
                &model,
                &tokens,
                &opts,
                &mut cache,
                eval::Reference::None,
                &mut |done, total| {
                    if !counted {
                        counted = true;
                        let len = length.fetch_add(total as u64, Ordering::Relaxed);
                        bar.set_length(len + total as u64);
                    }
                    bar.inc(done.saturating_sub(seen) as u64);
                    seen = seen.max(done);
                },
            )?;
            if !report.perplexity.is_finite() {
                bail!(
                    "the model produced non-finite logits (perplexity {}) in the run {run:?}",
                    report.perplexity
                );
            }
            Ok(report.perplexity)
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let fp16 = ppl[0];
    let pct = |p: f64| 100.0 * (p / fp16 - 1.0);
    let rows: Vec<LayerRow> = chosen
        .iter()
        .zip(&ppl[2..])
        .map(|(&layer, &p)| LayerRow {
            layer,
            perplexity: p,
            vs_fp16_pct: pct(p),
        })
        .collect();
    let out = LayersOutput {
        model: a.model.display().to_string(),
        text: a.text.display().to_string(),
        kv: a.kv.clone(),
        codebooks: a.codebooks.as_ref().map(|p| p.display().to_string()),
        window: opts.window,
        prefill: opts.prefill.min(opts.window),
        skip: a.span.skip,
        text_tokens: tokens.len(),
        fp16_perplexity: fp16,
        all_coded_perplexity: ppl[1],
        all_coded_vs_fp16_pct: pct(ppl[1]),
        sum_of_layers_pct: rows.iter().map(|r| r.vs_fp16_pct).sum(),
        layers: rows,
        threads: rayon::current_num_threads(),
    };
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        print_layers(&out);
    }
    Ok(())
}

fn print_layers(out: &LayersOutput) {
    println!("{:<14} {}", "model", out.model);
    println!("{:<14} {} ({} tokens)", "text", out.text, out.text_tokens);
    println!("{:<14} {}", "kv", out.kv);
    println!("{:<14} {:.4}", "fp16", out.fp16_perplexity);
    println!(
        "{:<14} {:.4} ({:+.2} %)",
        "all coded", out.all_coded_perplexity, out.all_coded_vs_fp16_pct
    );
    println!("\nlayer coded alone (the others FP16):");
    println!("{:>6} {:>11} {:>9}", "layer", "perplexity", "vs fp16");
    let mut worst: Vec<&LayerRow> = out.layers.iter().collect();
    worst.sort_by(|x, y| y.vs_fp16_pct.total_cmp(&x.vs_fp16_pct));
    for r in &out.layers {
        println!(
            "{:>6} {:>11.4} {:>+8.2}%",
            r.layer, r.perplexity, r.vs_fp16_pct
        );
    }
    println!(
        "\nsum over layers {:+.2} % (all coded {:+.2} %); costliest: {}",
        out.sum_of_layers_pct,
        out.all_coded_vs_fp16_pct,
        worst
            .iter()
            .take(4)
            .map(|r| format!("{} ({:+.2} %)", r.layer, r.vs_fp16_pct))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
