//! `aqpim eval ppl` and `aqpim generate`: a real model (Llama family; a GGUF
//! file or a Hugging Face checkpoint directory) run through a dense or
//! compressed KV cache; perplexity on a text and streamed generation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use aqpim_decode::eval::{self, PplOptions, Sampling};
use aqpim_decode::CompressedCache;
use aqpim_decode::Tokenizer;
use aqpim_decode::{ActivationPrecision, Llama, Logits};
use aqpim_decode::{AttentionCache, DenseCache, DensePrecision};
use aqpim_kvcache::{KvShape, KvSpec};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::args::count;

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Perplexity of a model on a UTF-8 text, in sliding windows.
    Ppl(PplArgs),
}

#[derive(Debug, Args)]
pub struct PplArgs {
    /// Model (Llama family): a GGUF file, or a Hugging Face checkpoint
    /// directory (config.json, tokenizer.json, *.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// UTF-8 text to score.
    #[arg(long)]
    text: PathBuf,
    /// KV cache: `fp16` (dense, half precision), `f32` (dense, exact), or a
    /// compressed store: `scalar:bits=2,group=32,window=128`,
    /// `pq:dsub=4,nbits=8,sinks=4,window=128` (see `aqpim kv stats`).
    #[arg(long, default_value = "fp16")]
    kv: String,
    /// Calibrated codebooks (a directory written by `aqpim pq calibrate`) for
    /// a `pq:` cache; without it codebooks are trained online per window.
    #[arg(long)]
    codebooks: Option<PathBuf>,
    /// Text tokens per window (W; K/M suffixes).
    #[arg(long, default_value = "512", value_parser = count)]
    window: usize,
    /// Start-to-start distance of windows (default: the window, i.e. disjoint windows).
    #[arg(long, value_parser = count)]
    stride: Option<usize>,
    #[command(flatten)]
    span: Scored,
    /// Token placed before each window: `auto` (the `<|endoftext|>` separator,
    /// or EOS), `none`, or a token id.
    #[arg(long, default_value = "auto")]
    bos_token: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Leave out the FP16 reference pass: `kld_mean`, `kld_p99` and
    /// `top1_agreement` are then null. By default every window also runs
    /// through an FP16 cache and each scored token's next-token distribution
    /// is compared with it (llama.cpp's `--kl-divergence` statistics), which
    /// costs one more FP16 pass for any cache but `fp16`.
    #[arg(long)]
    no_kld: bool,
    /// Arithmetic of the one-token decode steps' matrix products: `f32`
    /// (activations kept in f32) or `q8` (activations quantized to 8 bits
    /// per block of 32, integer block dot products: llama.cpp's CPU
    /// arithmetic). Prefill is f32 either way; `f32` keeps every accuracy
    /// table comparable.
    #[arg(long, default_value = "f32", value_parser = parse_activations)]
    activations: ActivationPrecision,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `eval ppl` and `eval layers` score beside the window: the prefill
/// of each window and the span of the text.
#[derive(Debug, Args)]
pub(crate) struct Scored {
    /// Inputs of each window run as one batched prefill; the rest are decoded
    /// one token at a time through the cache, so that a compressed cache's
    /// error shows (default: 64, and at most half the window).
    #[arg(long, value_parser = count)]
    pub(crate) prefill: Option<usize>,
    /// Score only the text's first N tokens (default: all; K/M suffixes).
    #[arg(long, value_parser = count)]
    pub(crate) tokens: Option<usize>,
    /// Leave out the text's first N tokens (K/M suffixes); `--tokens` then
    /// counts from there (`--skip 8K --tokens 8K`: the text's second 8K tokens).
    #[arg(long, value_parser = count, default_value = "0")]
    pub(crate) skip: usize,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model (Llama family): a GGUF file, or a Hugging Face checkpoint
    /// directory (config.json, tokenizer.json, *.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Prompt text.
    #[arg(long)]
    prompt: String,
    /// Most tokens to generate (K/M suffixes).
    #[arg(long, default_value = "64", value_parser = count)]
    max_tokens: usize,
    /// KV cache: `fp16`, `f32`, `scalar:...` or `pq:...` (as for `aqpim eval ppl`).
    #[arg(long, default_value = "fp16")]
    kv: String,
    /// Calibrated codebooks for a `pq:` cache (from `aqpim pq calibrate`).
    #[arg(long)]
    codebooks: Option<PathBuf>,
    /// Sampling temperature; without it decoding is greedy.
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus mass kept when sampling.
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Wrap the prompt in the ChatML template (`<|im_start|>user ... assistant`).
    #[arg(long)]
    chat: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Arithmetic of the decode steps' matrix products: `q8` (activations
    /// quantized to 8 bits per block of 32, integer block dot products, as
    /// llama.cpp computes) or `f32` (activations kept in f32, as `eval ppl`
    /// by default). The prompt's prefill is f32 either way.
    #[arg(long, default_value = "q8", value_parser = parse_activations)]
    activations: ActivationPrecision,
    /// Print one JSON object on one line (prompt ids, generated ids, text, the
    /// five most likely first tokens with their logits) instead of streaming.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct GenerateOutput {
    prompt_ids: Vec<u32>,
    tokens: Vec<u32>,
    text: String,
    /// The five most likely tokens after the prompt: (id, logit).
    first_top5: Vec<(u32, f32)>,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    /// `--activations` (`f32` or `q8`).
    activations: &'static str,
}

/// `--activations`: `f32` or `q8`.
fn parse_activations(s: &str) -> std::result::Result<ActivationPrecision, String> {
    s.parse()
        .map_err(|e: aqpim_decode::DecodeError| e.to_string())
}

/// The cache a run uses, from `--kv` and `--codebooks`.
#[derive(Debug, Clone)]
// One value per command: the spec's size (a `pq:` spec holds two formats
// under `wide_layers=`) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum CacheChoice {
    /// The model crate's exact dense cache.
    Dense(DensePrecision),
    /// An `aqpim-kvcache` store read through the `aqpim-attn` kernels.
    Store(KvSpec, Option<PathBuf>),
}

pub(crate) fn cache_choice(kv: &str, codebooks: Option<&Path>) -> Result<CacheChoice> {
    let choice = match kv {
        "fp16" => CacheChoice::Dense(DensePrecision::F16),
        "f32" => CacheChoice::Dense(DensePrecision::F32),
        spec => CacheChoice::Store(
            spec.parse()
                .with_context(|| format!("--kv {}", crate::limits::cut(spec)))?,
            codebooks.map(Path::to_path_buf),
        ),
    };
    if codebooks.is_some() && !matches!(&choice, CacheChoice::Store(KvSpec::Pq(_), _)) {
        bail!(
            "--codebooks needs a `pq:` cache, not --kv {}",
            crate::limits::cut(kv)
        );
    }
    Ok(choice)
}

pub(crate) fn make_cache(model: &Llama, choice: &CacheChoice) -> Result<Box<dyn AttentionCache>> {
    let c = model.config();
    Ok(match choice {
        CacheChoice::Dense(p) => {
            Box::new(DenseCache::new(c.n_layers, c.n_kv_heads, c.head_dim, *p))
        }
        CacheChoice::Store(spec, books) => {
            let shape = KvShape::with_query_heads(c.n_layers, c.n_kv_heads, c.n_heads, c.head_dim)?;
            let mut store = aqpim_kvcache::build(shape, spec)?;
            if let Some(dir) = books {
                let pq = store.as_pq_mut().context("--codebooks needs a pq cache")?;
                aqpim_decode::calibrate::load_into(dir, pq)?;
            }
            Box::new(CompressedCache::from_store(store))
        }
    })
}

/// Runs `f` on a worker of a pool of `threads` threads (default: all
/// cores). The model's parallel loops then split work from inside the pool
/// instead of handing every loop over from the main thread and sleeping
/// until it ends, which costs two thread wake-ups per loop (five loops per
/// layer in single-token decode).
pub(crate) fn in_pool<T: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    crate::limits::thread_pool(threads)?.install(f)
}

pub(crate) fn load(path: &Path) -> Result<(Llama, Tokenizer)> {
    let spinner = ProgressBar::new_spinner().with_message(format!("loading {}", path.display()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let out = aqpim_decode::load(path).with_context(|| format!("loading model {}", path.display()));
    spinner.finish_and_clear();
    out
}

#[derive(Debug, Serialize)]
struct PplOutput {
    model: String,
    text: String,
    kv: String,
    /// The calibrated codebooks directory, if any (else codebooks are trained per window).
    codebooks: Option<String>,
    window: usize,
    stride: usize,
    prefill: usize,
    doc_start: Option<u32>,
    /// Text tokens left out before the scored ones (`--skip`).
    skip: usize,
    text_tokens: usize,
    scored_tokens: usize,
    windows: usize,
    perplexity: f64,
    nll: f64,
    cache_bytes: usize,
    bits_per_element: f64,
    /// Bits per element by component, from the accounting of one full
    /// window's cache (`breakdown_tokens` tokens): codes, codebooks, FP16
    /// tokens (sinks, window, outliers; every token of a dense cache) and
    /// scales. `null` for the f32 cache.
    bits_codes: Option<f64>,
    bits_codebooks: Option<f64>,
    bits_fp16_tokens: Option<f64>,
    bits_scales: Option<f64>,
    breakdown_tokens: usize,
    /// The codebooks weigh more than the codes.
    codebooks_dominate: bool,
    prefill_tokens: usize,
    prefill_tokens_per_s: f64,
    decode_tokens: usize,
    decode_tokens_per_s: Option<f64>,
    /// Mean KL divergence (nats) of each scored token's next-token
    /// distribution from the FP16 cache's on the same window: `KL(P_fp16 ||
    /// Q_kv)`. 0 for `--kv fp16`; null with `--no-kld`.
    kld_mean: Option<f64>,
    /// 99th percentile of that per-token KL divergence (nats).
    kld_p99: Option<f64>,
    /// Share of scored tokens whose most likely next token is the FP16 cache's.
    top1_agreement: Option<f64>,
    /// Perplexity of the FP16 reference pass on the same tokens (equal to
    /// `perplexity` for `--kv fp16`; null with `--no-kld`).
    fp16_perplexity: Option<f64>,
    /// `--activations` (`f32` or `q8`).
    activations: &'static str,
    threads: usize,
}

pub fn run_eval(cmd: EvalCommand) -> Result<()> {
    let EvalCommand::Ppl(a) = cmd;
    in_pool(a.threads, || ppl(a))
}

fn ppl(a: PplArgs) -> Result<()> {
    let choice = cache_choice(&a.kv, a.codebooks.as_deref())?;
    let text = std::fs::read_to_string(&a.text)
        .with_context(|| format!("reading text {} (UTF-8 expected)", a.text.display()))?;
    let (mut model, tok) = load(&a.model)?;
    model.set_activations(a.activations);
    let doc_start = doc_start_token(&a.bos_token, &tok)?;
    let tokens = scored_text(&tok, &text, a.span.skip, a.span.tokens)?;
    let opts = ppl_options(&model, a.window, a.stride, a.span.prefill, doc_start)?;
    let bar = token_bar("perplexity");
    let mut cache = || make_cache(&model, &choice).map_err(to_decode);
    // The FP16 reference of the KL divergence: the evaluated cache itself
    // when it is FP16, else a second FP16 pass over the same windows.
    let mut fp16 =
        || make_cache(&model, &CacheChoice::Dense(DensePrecision::F16)).map_err(to_decode);
    let reference = match &choice {
        _ if a.no_kld => eval::Reference::None,
        CacheChoice::Dense(DensePrecision::F16) => eval::Reference::Itself,
        _ => eval::Reference::Cache(&mut fp16),
    };
    let report = eval::perplexity_against(
        &model,
        &tokens,
        &opts,
        &mut cache,
        reference,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    // A non-finite perplexity means non-finite logits: broken weights, not a result.
    if !report.perplexity.is_finite() || !report.nll.is_finite() {
        bail!(
            "the model produced non-finite logits (perplexity {}); its weights are corrupt or out of range",
            report.perplexity
        );
    }
    // The accounting of the largest window's cache: inputs are the window's
    // tokens, less the last, plus the document-start token.
    let lead = usize::from(doc_start.is_some());
    let breakdown_tokens = (a.window.min(tokens.len()) + lead).saturating_sub(1);
    let breakdown = breakdown(&model, &choice, breakdown_tokens)?;
    warn_unread_cache(
        &choice,
        &opts,
        report.decode_tokens,
        breakdown.as_ref(),
        breakdown_tokens,
    );
    let bits = breakdown.as_ref().map(|b| &b.bits_per_element);
    let out = PplOutput {
        model: a.model.display().to_string(),
        text: a.text.display().to_string(),
        kv: a.kv.clone(),
        codebooks: a.codebooks.as_ref().map(|p| p.display().to_string()),
        window: opts.window,
        stride: opts.stride,
        prefill: opts.prefill.min(opts.window),
        doc_start,
        skip: a.span.skip,
        text_tokens: tokens.len(),
        scored_tokens: report.scored_tokens,
        windows: report.windows,
        perplexity: report.perplexity,
        nll: report.nll,
        cache_bytes: report.cache_bytes,
        bits_per_element: report.bits_per_element,
        bits_codes: bits.map(|b| b.codes),
        bits_codebooks: bits.map(|b| b.codebooks),
        bits_fp16_tokens: bits.map(|b| b.full_precision),
        bits_scales: bits.map(|b| b.metadata),
        breakdown_tokens,
        codebooks_dominate: bits.is_some_and(|b| b.codebooks > b.codes),
        prefill_tokens: report.prefill_tokens,
        prefill_tokens_per_s: report.prefill_tokens as f64 / report.prefill_seconds.max(1e-9),
        decode_tokens: report.decode_tokens,
        decode_tokens_per_s: (report.decode_tokens > 0)
            .then(|| report.decode_tokens as f64 / report.decode_seconds.max(1e-9)),
        kld_mean: report.divergence.map(|d| d.kld_mean),
        kld_p99: report.divergence.map(|d| d.kld_p99),
        top1_agreement: report.divergence.map(|d| d.top1_agreement),
        fp16_perplexity: report.divergence.map(|d| d.reference_nll.exp()),
        activations: a.activations.name(),
        threads: rayon::current_num_threads(),
    };
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        print_ppl(&out);
    }
    Ok(())
}

/// The windows of `eval ppl` and `eval layers`: `--window` (within the
/// model's context), `--stride` (default: the window) and `--prefill`
/// (default: [`default_prefill`]).
pub(crate) fn ppl_options(
    model: &Llama,
    window: usize,
    stride: Option<usize>,
    prefill: Option<usize>,
    doc_start: Option<u32>,
) -> Result<PplOptions> {
    let max_window = model.config().context_length - usize::from(doc_start.is_some());
    if window > max_window {
        bail!(
            "--window {} exceeds the model's context of {} tokens",
            window,
            model.config().context_length
        );
    }
    Ok(PplOptions {
        window,
        stride: stride.unwrap_or(window),
        prefill: prefill.unwrap_or_else(|| default_prefill(window)),
        doc_start,
    })
}

/// A progress bar over tokens, redrawn every second (elapsed time and ETA
/// move between tokens too); hidden when stderr is not a terminal, so that
/// `--json` stays one line.
pub(crate) fn token_bar(message: impl Into<std::borrow::Cow<'static, str>>) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} tokens ({per_sec}, {elapsed} elapsed, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(message);
    bar.enable_steady_tick(std::time::Duration::from_secs(1));
    bar
}

/// A cache that could not be built, as the evaluation loop reports it.
pub(crate) fn to_decode(e: anyhow::Error) -> aqpim_decode::DecodeError {
    aqpim_decode::DecodeError::Cache {
        reason: format!("{e:#}"),
    }
}

/// The document-start token of `--bos-token`: `auto` (the tokenizer's
/// `<|endoftext|>`, or its EOS), `none`, or a token id of the vocabulary.
pub(crate) fn doc_start_token(bos: &str, tok: &aqpim_decode::Tokenizer) -> Result<Option<u32>> {
    Ok(match bos {
        "none" => None,
        "auto" => tok.token_id("<|endoftext|>").or(tok.eos),
        id => {
            let id: u32 = id.parse().with_context(|| {
                format!(
                    "--bos-token {}: expected `auto`, `none` or a token id",
                    crate::limits::cut(id)
                )
            })?;
            if id as usize >= tok.vocab_size() {
                bail!(
                    "--bos-token {id} is outside the vocabulary of {} tokens",
                    tok.vocab_size()
                );
            }
            Some(id)
        }
    })
}

/// The tokens `eval ppl` scores: the text's, less the first `skip`, cut to
/// `limit` when given.
pub(crate) fn scored_text(
    tok: &aqpim_decode::Tokenizer,
    text: &str,
    skip: usize,
    limit: Option<usize>,
) -> Result<Vec<u32>> {
    let mut tokens = tok.encode(text).context("tokenizing the text")?;
    if skip > 0 && skip >= tokens.len() {
        bail!("--skip {}: the text has only {} tokens", skip, tokens.len());
    }
    tokens.drain(..skip);
    if let Some(n) = limit {
        if n > tokens.len() {
            bail!(
                "--tokens {n}: the text has only {} tokens{}",
                tokens.len(),
                if skip > 0 { " after --skip" } else { "" }
            );
        }
        tokens.truncate(n);
    }
    Ok(tokens)
}

/// Warns when the evaluated cache was not read: no decoded token, a
/// window that fits in the FP16 regions, or online codebooks that train
/// after the window ends.
fn warn_unread_cache(
    choice: &CacheChoice,
    opts: &PplOptions,
    decode_tokens: usize,
    breakdown: Option<&aqpim_kvcache::MemoryReport>,
    breakdown_tokens: usize,
) {
    let compressed = matches!(choice, CacheChoice::Store(s, _) if !matches!(s, KvSpec::Dense));
    if compressed && decode_tokens == 0 {
        eprintln!(
            "warning: no token was decoded through the compressed cache (--prefill {} covers every window of {} tokens); \
             perplexity then shows prefill attention, not the cache: lower --prefill",
            opts.prefill,
            opts.window
        );
    } else if compressed && breakdown.is_some_and(|b| b.tokens_by_region.encoded == 0) {
        eprintln!(
            "warning: a window of {} tokens fits in the cache's FP16 sinks and recent window; no token is read from codes",
            opts.window
        );
    }
    if let CacheChoice::Store(KvSpec::Pq(p), None) = choice {
        // Online training waits for `train_min` tokens (2^nbits by default);
        // until then every token stays in the FP16 window.
        let threshold = p.train_threshold();
        if decode_tokens > 0 && breakdown_tokens <= threshold + p.regions.sinks + p.regions.window {
            eprintln!(
                "warning: online codebooks train once a layer holds {threshold} tokens, and a window holds {breakdown_tokens}: \
                 few or no decoded tokens are read from codes; use a longer --window, `train_min=` in --kv, or calibrated --codebooks"
            );
        }
    }
}

/// The default `--prefill`: 64 tokens, and at most half the window, so that
/// most of each window is decoded through the cache.
fn default_prefill(window: usize) -> usize {
    64.min(window / 2).max(1)
}

/// The accounting of a cache of `tokens` tokens of `model` in the format of
/// `choice` (`None` for the f32 cache, which `aqpim-kvcache` does not hold).
fn breakdown(
    model: &Llama,
    choice: &CacheChoice,
    tokens: usize,
) -> Result<Option<aqpim_kvcache::MemoryReport>> {
    let spec = match choice {
        CacheChoice::Dense(DensePrecision::F16) => KvSpec::Dense,
        CacheChoice::Dense(_) => return Ok(None),
        CacheChoice::Store(spec, _) => spec.clone(),
    };
    if tokens == 0 {
        return Ok(None);
    }
    let c = model.config();
    let shape = KvShape::with_query_heads(c.n_layers, c.n_kv_heads, c.n_heads, c.head_dim)?;
    Ok(Some(aqpim_kvcache::account(&shape, &spec, tokens)?))
}

fn print_ppl(out: &PplOutput) {
    println!("{:<14} {}", "model", out.model);
    if out.skip > 0 {
        println!(
            "{:<14} {} ({} tokens after the first {})",
            "text", out.text, out.text_tokens, out.skip
        );
    } else {
        println!("{:<14} {} ({} tokens)", "text", out.text, out.text_tokens);
    }
    println!(
        "{:<14} {} x {} tokens, stride {}, prefill {}",
        "windows", out.windows, out.window, out.stride, out.prefill
    );
    println!(
        "{:<14} {} tokens ({} prefilled, {} decoded through the cache)",
        "scored", out.scored_tokens, out.prefill_tokens, out.decode_tokens
    );
    println!(
        "{:<14} {:.4}  (NLL {:.5} nats)",
        "perplexity", out.perplexity, out.nll
    );
    println!(
        "{:<14} {}, {} bytes at most",
        "kv cache", out.kv, out.cache_bytes
    );
    println!(
        "{:<14} {} in decode steps (prefill f32)",
        "activations", out.activations
    );
    match (
        out.bits_codes,
        out.bits_codebooks,
        out.bits_fp16_tokens,
        out.bits_scales,
    ) {
        (Some(codes), Some(books), Some(fp16), Some(scales)) => {
            println!(
                "{:<14} {:.2} (codes {codes:.2} + codebooks {books:.2} + FP16 tokens {fp16:.2} + scales {scales:.2}, at {} tokens)",
                "bits/element", out.bits_per_element, out.breakdown_tokens
            );
            if out.codebooks_dominate && out.codebooks.is_none() {
                println!(
                    "{:<14} codebooks outweigh the codes: each window trains its own f32 codebooks, \
                     amortized over only {} tokens; longer windows or calibrated --codebooks shrink them",
                    "", out.breakdown_tokens
                );
            } else if out.codebooks_dominate {
                println!(
                    "{:<14} codebooks outweigh the codes: f32 codebooks per layer and KV head, counted in one window's cache of {} tokens",
                    "", out.breakdown_tokens
                );
            }
        }
        _ => println!("{:<14} {:.2}", "bits/element", out.bits_per_element),
    }
    if let (Some(mean), Some(p99), Some(top1)) = (out.kld_mean, out.kld_p99, out.top1_agreement) {
        println!(
            "{:<14} mean {mean:.6}, 99th percentile {p99:.6} nats; top-1 agreement {:.2} %",
            "KL vs FP16",
            100.0 * top1
        );
        if let Some(f) = out.fp16_perplexity {
            println!(
                "{:<14} {f:.4} (perplexity {:+.2} % against it)",
                "FP16 ppl",
                100.0 * (out.perplexity / f - 1.0)
            );
        }
    }
    println!("{:<14} {:.1} tokens/s", "prefill", out.prefill_tokens_per_s);
    if let Some(d) = out.decode_tokens_per_s {
        println!(
            "{:<14} {:.1} tokens/s ({} tokens, teacher-forced)",
            "decode", d, out.decode_tokens
        );
    }
}

pub fn run_generate(a: GenerateArgs) -> Result<()> {
    in_pool(a.threads, || generate(a))
}

/// The prompt's token ids (in the chat template with `--chat`, after BOS
/// when the tokenizer adds one), refused when they and `--max-tokens` do
/// not fit in the model's context.
fn prompt_ids(a: &GenerateArgs, model: &Llama, tok: &aqpim_decode::Tokenizer) -> Result<Vec<u32>> {
    let prompt = if a.chat {
        format!(
            "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            a.prompt
        )
    } else {
        a.prompt.clone()
    };
    let mut ids = tok.encode(&prompt)?;
    if tok.add_bos {
        if let Some(b) = tok.bos {
            ids.insert(0, b);
        }
    }
    if ids.is_empty() {
        bail!("the prompt has no tokens");
    }
    // Refuse up front, before any text streams, a run that would pass the
    // model's context (the last token generated is never fed back).
    let context = model.config().context_length;
    if ids.len() > context {
        bail!(
            "the prompt has {} tokens, more than the model's context of {context}",
            ids.len()
        );
    }
    if ids.len().saturating_add(a.max_tokens.saturating_sub(1)) > context {
        bail!(
            "the prompt ({} tokens) and --max-tokens {} exceed the model's context of {context} tokens; use --max-tokens {} or less",
            ids.len(),
            a.max_tokens,
            context - ids.len() + 1
        );
    }
    Ok(ids)
}

fn generate(a: GenerateArgs) -> Result<()> {
    let choice = cache_choice(&a.kv, a.codebooks.as_deref())?;
    let sampling = match a.temperature {
        None => Sampling::Greedy,
        Some(temperature) => Sampling::TopP {
            temperature,
            top_p: a.top_p,
            seed: a.seed,
        },
    };
    let (mut model, tok) = load(&a.model)?;
    model.set_activations(a.activations);
    let ids = prompt_ids(&a, &model, &tok)?;
    let stop: Vec<u32> = tok
        .eos
        .into_iter()
        .chain(tok.token_id("<|im_end|>"))
        .collect();
    let mut cache = make_cache(&model, &choice)?;
    let mut generated = Vec::new();
    let mut printed = 0;
    let stdout = std::io::stdout();
    let start = Instant::now();
    let report = eval::generate(
        &model,
        &ids,
        a.max_tokens,
        sampling,
        &stop,
        cache.as_mut(),
        &mut |t| {
            generated.push(t);
            if a.json {
                return Ok(());
            }
            // Decode everything so far and print the new suffix, so that
            // characters split across tokens come out whole.
            let text = tok.decode(&generated)?;
            if !text.ends_with('\u{FFFD}') && text.len() > printed {
                let mut out = stdout.lock();
                let _ = write!(out, "{}", &text[printed..]);
                let _ = out.flush();
                printed = text.len();
            }
            Ok(())
        },
    )?;
    let text = tok.decode(&generated)?;
    let steps = report.tokens.len().saturating_sub(1).max(1);
    let prefill_tps = ids.len() as f64 / report.prefill_seconds.max(1e-9);
    let decode_tps = steps as f64 / report.decode_seconds.max(1e-9);
    if a.json {
        let logits = model.forward(&ids, make_cache(&model, &choice)?.as_mut(), Logits::Last)?;
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&x, &y| {
            logits[y as usize]
                .total_cmp(&logits[x as usize])
                .then(x.cmp(&y))
        });
        let out = GenerateOutput {
            prompt_ids: ids.clone(),
            tokens: report.tokens.clone(),
            text,
            first_top5: order[..5.min(order.len())]
                .iter()
                .map(|&i| (i, logits[i as usize]))
                .collect(),
            prefill_tokens_per_s: prefill_tps,
            decode_tokens_per_s: decode_tps,
            activations: a.activations.name(),
        };
        println!("{}", serde_json::to_string(&out)?);
        warn_if_no_codes(&model, &choice, ids.len() + report.tokens.len())?;
        return Ok(());
    }
    if text.len() > printed {
        print!("{}", &text[printed..]);
    }
    println!();
    warn_if_no_codes(&model, &choice, ids.len() + report.tokens.len())?;
    eprintln!(
        "[{} prompt tokens, {} generated in {:.2} s; prefill {:.1} tokens/s, decode {:.1} tokens/s]",
        ids.len(),
        report.tokens.len(),
        start.elapsed().as_secs_f64(),
        prefill_tps,
        decode_tps,
    );
    Ok(())
}

/// Warns when a compressed cache read no token from codes over a
/// generation of `tokens` tokens (prompt and output): everything stayed in
/// its FP16 sinks and window, or online codebooks never trained, so the
/// output equals `--kv fp16`'s.
fn warn_if_no_codes(model: &Llama, choice: &CacheChoice, tokens: usize) -> Result<()> {
    let CacheChoice::Store(spec, books) = choice else {
        return Ok(());
    };
    if matches!(spec, KvSpec::Dense) {
        return Ok(());
    }
    let b = breakdown(model, choice, tokens)?;
    if b.as_ref().is_some_and(|b| b.tokens_by_region.encoded == 0) {
        eprintln!(
            "warning: all {tokens} tokens fit in the cache's FP16 sinks and recent window; no token was read from codes (the output is --kv fp16's)"
        );
    } else if let (KvSpec::Pq(p), None) = (spec, books) {
        let threshold = p.train_threshold();
        if tokens <= threshold + p.regions.sinks + p.regions.window {
            eprintln!(
                "warning: online codebooks train once a layer holds {threshold} tokens, and this generation has {tokens}: no token was read from codes (the output is --kv fp16's); pass calibrated --codebooks (aqpim pq calibrate)"
            );
        }
    }
    Ok(())
}
