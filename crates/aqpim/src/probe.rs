//! `aqpim eval retrieval`: a needle-in-a-haystack probe of a KV cache. A
//! sentence with a random number is hidden in a span of a novel, a question
//! asks for it at the end, and the model answers greedily through the cache;
//! the score is exact match of the number, per context length and overall.
//!
//! One trial, for a context length `D` (a `--depths` entry) and a seed:
//!
//! - a ChaCha8 generator seeded with `--seed + seed index` draws a 5-digit
//!   number, the filler's start in the text (a fraction of the room left) and
//!   the needle's relative depth, stratified over the seeds: seed `s` of `S`
//!   draws it from `[s/S, (s+1)/S)`, so a few seeds still cover the context;
//! - the prompt is `head + filler[..j] + needle + filler[j..] + question`,
//!   where `j` is the sentence end (a token ending in `.`, `!` or `?`) nearest
//!   to the drawn depth, the needle is ` The secret number is N.`, and the
//!   filler is as long as makes the prompt plus all but the last answer token
//!   exactly `D` tokens (the last token generated is never fed back);
//! - `chat` form (ChatML, when the model has `<|im_start|>` and `<|im_end|>`):
//!   head `<|im_start|>user\n`, question `\n\nWhat is the secret number?<|im_end|>\n<|im_start|>assistant\nThe secret number is`;
//!   `plain` form: head the document-start token (`<|endoftext|>`, or EOS, as
//!   `eval ppl` uses), question `\n\nWhat is the secret number? The secret number is`;
//! - everything before the question runs as one prefill block (exact within
//!   itself, then stored: for a compressed cache, encoded into the store);
//!   the question and the answer are decoded one token at a time through
//!   the cache, so every answer token attends over the stored context;
//! - the answer is correct when its first run of digits is exactly `N`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use aqpim_decode::eval::{self, Sampling};
use aqpim_decode::Tokenizer;
use aqpim_decode::{Llama, Logits};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::model::{cache_choice, in_pool, load, make_cache};

/// Most `--seeds` per context length.
pub const MAX_SEEDS: usize = 1000;
/// Most `--depths` entries.
pub const MAX_DEPTHS: usize = 64;
/// Most `--answer-tokens` (a 5-digit number takes at most 7 tokens with its
/// space and full stop in a byte-level BPE vocabulary).
pub const MAX_ANSWER_TOKENS: usize = 64;

/// The hidden sentence, before the number.
const NEEDLE: &str = " The secret number is";

#[derive(Debug, Args)]
pub struct RetrievalArgs {
    /// Model (Llama family): a GGUF file, or a Hugging Face checkpoint
    /// directory (config.json, tokenizer.json, *.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// UTF-8 text the filler is taken from (a novel).
    #[arg(long)]
    text: PathBuf,
    /// Context lengths in tokens (the whole prompt and answer), comma-separated,
    /// with an optional `K` (x1024); each at most the model's context.
    #[arg(long, default_value = "1K,2K,4K,8K")]
    depths: String,
    /// Trials per context length (needle depth, filler offset and number
    /// drawn per seed).
    #[arg(long, default_value_t = 5)]
    seeds: usize,
    /// First seed; trial `s` uses `seed + s`.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// KV cache: `fp16`, `f32`, `scalar:...` or `pq:...` (as for `aqpim eval ppl`).
    #[arg(long, default_value = "fp16")]
    kv: String,
    /// Calibrated codebooks for a `pq:` cache (from `aqpim pq calibrate`).
    #[arg(long)]
    codebooks: Option<PathBuf>,
    /// Prompt form: `chat` (ChatML), `plain`, or `auto` (chat when the model
    /// has the ChatML tokens).
    #[arg(long, default_value = "auto")]
    prompt: String,
    /// Tokens generated greedily for the answer.
    #[arg(long, default_value_t = 8)]
    answer_tokens: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object on one line instead of a table.
    #[arg(long)]
    json: bool,
}

/// How the prompt is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptForm {
    /// ChatML: the text and question as the user's turn, the answer primed
    /// in the assistant's.
    Chat,
    /// The text and question as plain continuation after a document start.
    Plain,
}

/// The fixed token pieces of a prompt form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptParts {
    /// The form.
    pub form: PromptForm,
    /// Tokens before the filler.
    pub head: Vec<u32>,
    /// Tokens after the filler: the question and the primed answer.
    pub question: Vec<u32>,
    /// Tokens that end an answer.
    pub stop: Vec<u32>,
}

impl PromptParts {
    /// The pieces of `form` (`auto`, `chat` or `plain`) for `tok`.
    pub fn new(tok: &Tokenizer, form: &str) -> Result<Self> {
        let chatml = tok.token_id("<|im_start|>").zip(tok.token_id("<|im_end|>"));
        let form = match (form, chatml) {
            ("chat", None) => {
                bail!("--prompt chat: the model has no `<|im_start|>`/`<|im_end|>` tokens")
            }
            ("chat" | "auto", Some(_)) => PromptForm::Chat,
            ("plain" | "auto", _) => PromptForm::Plain,
            (other, _) => bail!(
                "--prompt {}: expected `auto`, `chat` or `plain`",
                crate::limits::cut(other)
            ),
        };
        let (head, question) = match form {
            PromptForm::Chat => (
                tok.encode("<|im_start|>user\n")?,
                tok.encode(
                    "\n\nWhat is the secret number?<|im_end|>\n<|im_start|>assistant\nThe secret number is",
                )?,
            ),
            PromptForm::Plain => (
                tok.token_id("<|endoftext|>")
                    .or(tok.eos)
                    .into_iter()
                    .collect(),
                tok.encode("\n\nWhat is the secret number? The secret number is")?,
            ),
        };
        let stop = tok
            .eos
            .into_iter()
            .chain(tok.token_id("<|im_end|>"))
            .collect();
        Ok(Self {
            form,
            head,
            question,
            stop,
        })
    }

    /// The prompt of `form` with `{text}` for the filler (for reports).
    pub fn template(&self) -> &'static str {
        match self.form {
            PromptForm::Chat => {
                "<|im_start|>user\n{text}\n\nWhat is the secret number?<|im_end|>\n<|im_start|>assistant\nThe secret number is"
            }
            PromptForm::Plain => {
                "<|endoftext|>{text}\n\nWhat is the secret number? The secret number is"
            }
        }
    }
}

/// One trial's prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    /// Context length (prompt and answer tokens but the last).
    pub depth: usize,
    /// Seed of the trial's generator.
    pub seed: u64,
    /// The hidden number.
    pub number: u32,
    /// Filler tokens.
    pub filler_tokens: usize,
    /// Where the needle starts, as a fraction of the filler.
    pub needle_depth: f64,
    /// Prompt tokens.
    pub prompt: Vec<u32>,
    /// How many leading prompt tokens run as one prefill block (everything
    /// before the question).
    pub prefill: usize,
}

/// Positions `j` in `0..=filler.len()` where a needle may go: the start, the
/// end, and after every token whose text ends a sentence.
fn sentence_ends(tok: &Tokenizer, filler: &[u32]) -> Result<Vec<usize>> {
    let mut out = vec![0];
    for (i, &t) in filler.iter().enumerate() {
        let s = tok.decode(&[t])?;
        if s.trim_end().ends_with(['.', '!', '?']) {
            out.push(i + 1);
        }
    }
    out.push(filler.len());
    Ok(out)
}

/// Which trial of a context length: its generator's seed, and its index
/// among the `count` trials (the stratum of its needle depth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    /// Seed of the trial's ChaCha8 generator.
    pub seed: u64,
    /// Index of the trial, `0..count`.
    pub index: usize,
    /// Trials per context length.
    pub count: usize,
}

/// Builds the prompt of trial `draw` at context length `depth` over the
/// tokenized `text` (see the module docs).
pub fn build_trial(
    tok: &Tokenizer,
    parts: &PromptParts,
    text: &[u32],
    depth: usize,
    answer_tokens: usize,
    draw: Draw,
) -> Result<Trial> {
    let seed = draw.seed;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let number: u32 = rng.gen_range(10_000..100_000);
    let start_frac: f64 = rng.gen();
    let depth_frac = (draw.index as f64 + rng.gen::<f64>()) / draw.count.max(1) as f64;
    let needle = tok.encode(&format!("{NEEDLE} {number}."))?;
    let fixed = parts.head.len() + needle.len() + parts.question.len() + answer_tokens - 1;
    if depth <= fixed {
        bail!(
            "--depths {depth}: the prompt's fixed part (template, needle, question and answer) takes {fixed} tokens; use more than that"
        );
    }
    let filler_len = depth - fixed;
    if filler_len > text.len() {
        bail!(
            "--depths {depth} needs {filler_len} tokens of filler; the text has only {}",
            text.len()
        );
    }
    let start = ((text.len() - filler_len) as f64 * start_frac) as usize;
    let filler = &text[start..start + filler_len];
    let target = depth_frac * filler_len as f64;
    let at = sentence_ends(tok, filler)?
        .into_iter()
        .min_by(|&a, &b| {
            (a as f64 - target)
                .abs()
                .total_cmp(&(b as f64 - target).abs())
        })
        .unwrap_or(0);
    let mut prompt = Vec::with_capacity(depth);
    prompt.extend_from_slice(&parts.head);
    prompt.extend_from_slice(&filler[..at]);
    prompt.extend_from_slice(&needle);
    prompt.extend_from_slice(&filler[at..]);
    let prefill = prompt.len();
    prompt.extend_from_slice(&parts.question);
    debug_assert_eq!(prompt.len() + answer_tokens - 1, depth);
    Ok(Trial {
        depth,
        seed,
        number,
        filler_tokens: filler_len,
        needle_depth: at as f64 / filler_len as f64,
        prompt,
        prefill,
    })
}

/// Whether `answer`'s first run of ASCII digits is exactly `number`.
pub fn is_correct(answer: &str, number: u32) -> bool {
    let digits: String = answer
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits == number.to_string()
}

/// Parses `--depths` and checks every entry against the model's context.
pub fn parse_depths(text: &str, context: usize) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for item in text.split(',') {
        let d = crate::simulate::parse_count(item)
            .with_context(|| format!("--depths `{}`", crate::limits::cut(item.trim())))?;
        if d == 0 {
            bail!("--depths: a context length must be at least 1 token");
        }
        if d > context {
            bail!(
                "--depths {}: {d} tokens exceed the model's context of {context} tokens",
                crate::limits::cut(item.trim())
            );
        }
        out.push(d);
    }
    if out.len() > MAX_DEPTHS {
        bail!("--depths lists {} entries; at most {MAX_DEPTHS}", out.len());
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
struct TrialOutput {
    depth_tokens: usize,
    seed: u64,
    number: u32,
    needle_depth: f64,
    answer: String,
    correct: bool,
}

#[derive(Debug, Serialize)]
struct DepthOutput {
    depth_tokens: usize,
    trials: usize,
    correct: usize,
    accuracy: f64,
}

#[derive(Debug, Serialize)]
struct RetrievalOutput {
    model: String,
    text: String,
    kv: String,
    prompt: PromptForm,
    template: &'static str,
    answer_tokens: usize,
    seeds: usize,
    depths: Vec<DepthOutput>,
    trials: usize,
    correct: usize,
    accuracy: f64,
    bits_per_element: f64,
    seconds: f64,
    threads: usize,
    runs: Vec<TrialOutput>,
}

pub fn run(a: RetrievalArgs) -> Result<()> {
    in_pool(a.threads, || retrieval(a))
}

/// Runs one trial through a fresh cache; returns the answer text and the
/// cache's bits per element.
fn answer(
    model: &Llama,
    tok: &Tokenizer,
    trial: &Trial,
    parts: &PromptParts,
    answer_tokens: usize,
    mut cache: Box<dyn aqpim_decode::AttentionCache>,
) -> Result<(String, f64)> {
    let (prefix, question) = trial.prompt.split_at(trial.prefill);
    model.forward(prefix, cache.as_mut(), Logits::Last)?;
    let (last, teacher) = question
        .split_last()
        .context("the question has no tokens")?;
    for &t in teacher {
        model.forward(&[t], cache.as_mut(), Logits::Last)?;
    }
    let report = eval::generate(
        model,
        &[*last],
        answer_tokens,
        Sampling::Greedy,
        &parts.stop,
        cache.as_mut(),
        &mut |_| Ok(()),
    )?;
    Ok((tok.decode(&report.tokens)?, cache.bits_per_element()))
}

fn retrieval(a: RetrievalArgs) -> Result<()> {
    crate::limits::in_range("--seeds", a.seeds, MAX_SEEDS)?;
    crate::limits::in_range("--answer-tokens", a.answer_tokens, MAX_ANSWER_TOKENS)?;
    let choice = cache_choice(&a.kv, a.codebooks.as_deref())?;
    let text = std::fs::read_to_string(&a.text)
        .with_context(|| format!("reading text {} (UTF-8 expected)", a.text.display()))?;
    let (model, tok) = load(&a.model)?;
    let depths = parse_depths(&a.depths, model.config().context_length)?;
    let parts = PromptParts::new(&tok, &a.prompt)?;
    let tokens = tok.encode(&text).context("tokenizing the text")?;
    // Build every prompt first, so that a bad depth fails before any run.
    let mut trials = Vec::new();
    for &depth in &depths {
        for s in 0..a.seeds {
            let seed = a.seed.wrapping_add(s as u64);
            trials.push(build_trial(
                &tok,
                &parts,
                &tokens,
                depth,
                a.answer_tokens,
                Draw {
                    seed,
                    index: s,
                    count: a.seeds,
                },
            )?);
        }
    }
    let total: u64 = trials.iter().map(|t| t.depth as u64).sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} tokens ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut runs = Vec::new();
    let mut bits = 0.0;
    for t in &trials {
        bar.set_message(format!("retrieval D={} seed {}", t.depth, t.seed));
        let (text, b) = answer(
            &model,
            &tok,
            t,
            &parts,
            a.answer_tokens,
            make_cache(&model, &choice)?,
        )
        .with_context(|| format!("trial at depth {} seed {}", t.depth, t.seed))?;
        bits = b;
        runs.push(TrialOutput {
            depth_tokens: t.depth,
            seed: t.seed,
            number: t.number,
            needle_depth: t.needle_depth,
            correct: is_correct(&text, t.number),
            answer: text,
        });
        bar.inc(t.depth as u64);
        if bar.is_hidden() {
            // No terminal (a log file): one line per trial instead of the bar.
            let r = &runs[runs.len() - 1];
            eprintln!(
                "[{}/{} {:.0} s] D={} seed {}: {:?} for {} ({})",
                runs.len(),
                trials.len(),
                started.elapsed().as_secs_f64(),
                r.depth_tokens,
                r.seed,
                r.answer,
                r.number,
                if r.correct { "correct" } else { "wrong" }
            );
        }
    }
    bar.finish_and_clear();
    let per_depth = per_depth(&depths, &runs);
    let correct = runs.iter().filter(|r| r.correct).count();
    let out = RetrievalOutput {
        model: a.model.display().to_string(),
        text: a.text.display().to_string(),
        kv: a.kv.clone(),
        prompt: parts.form,
        template: parts.template(),
        answer_tokens: a.answer_tokens,
        seeds: a.seeds,
        trials: runs.len(),
        correct,
        accuracy: correct as f64 / runs.len().max(1) as f64,
        depths: per_depth,
        bits_per_element: bits,
        seconds: started.elapsed().as_secs_f64(),
        threads: rayon::current_num_threads(),
        runs,
    };
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    print_retrieval(&out, tokens.len())?;
    eprintln!("[{:.1} s]", out.seconds);
    Ok(())
}

/// Accuracy per depth, depths in the order given.
fn per_depth(depths: &[usize], runs: &[TrialOutput]) -> Vec<DepthOutput> {
    depths
        .iter()
        .map(|&d| {
            let of: Vec<&TrialOutput> = runs.iter().filter(|r| r.depth_tokens == d).collect();
            let correct = of.iter().filter(|r| r.correct).count();
            DepthOutput {
                depth_tokens: d,
                trials: of.len(),
                correct,
                accuracy: correct as f64 / of.len().max(1) as f64,
            }
        })
        .collect()
}

/// The human-readable report: the setup, accuracy per depth, every trial.
fn print_retrieval(out: &RetrievalOutput, text_tokens: usize) -> Result<()> {
    println!("model     {}", out.model);
    println!("text      {} ({} tokens)", out.text, text_tokens);
    println!(
        "kv cache  {} ({:.2} bits/element at the last trial's end)",
        out.kv, out.bits_per_element
    );
    println!(
        "prompt    {}: {:?}",
        serde_json::to_value(out.prompt)?.as_str().unwrap_or("?"),
        out.template
    );
    println!();
    println!("| depth (tokens) | trials | correct | accuracy |");
    println!("|---|---|---|---|");
    for d in &out.depths {
        println!(
            "| {} | {} | {} | {:.1} % |",
            d.depth_tokens,
            d.trials,
            d.correct,
            100.0 * d.accuracy
        );
    }
    println!(
        "| all | {} | {} | {:.1} % |",
        out.trials,
        out.correct,
        100.0 * out.accuracy
    );
    println!();
    println!("| depth | seed | needle at | number | answer | correct |");
    println!("|---|---|---|---|---|---|");
    for r in &out.runs {
        println!(
            "| {} | {} | {:.2} | {} | {:?} | {} |",
            r.depth_tokens,
            r.seed,
            r.needle_depth,
            r.number,
            r.answer,
            if r.correct { "yes" } else { "no" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aqpim_decode::byte_level_alphabet;

    /// A byte-level tokenizer with the ChatML and document-start tokens and
    /// no merges: one token per byte, so token counts are byte counts.
    fn tokenizer(chatml: bool) -> Tokenizer {
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into()];
        if chatml {
            tokens.extend(["<|im_start|>".into(), "<|im_end|>".into()]);
        }
        let specials = tokens.len();
        tokens.extend(byte_level_alphabet().iter().map(|c| c.to_string()));
        let mut types = vec![1; tokens.len()];
        types[..specials].iter_mut().for_each(|t| *t = 3);
        Tokenizer::from_parts(&tokens, &[], &types).unwrap()
    }

    fn draw(seed: u64, index: usize, count: usize) -> Draw {
        Draw { seed, index, count }
    }

    const TEXT: &str = "It was a fine day. She walked out! Did he see? Then all was quiet. ";

    #[test]
    fn prompts_hold_the_needle_at_a_sentence_end_and_fill_the_depth() {
        for chatml in [false, true] {
            let tok = tokenizer(chatml);
            let parts = PromptParts::new(&tok, "auto").unwrap();
            assert_eq!(
                parts.form,
                if chatml {
                    PromptForm::Chat
                } else {
                    PromptForm::Plain
                }
            );
            let text = tok.encode(&TEXT.repeat(20)).unwrap();
            for depth in [200, 300, 500] {
                for s in 0..4 {
                    let t = build_trial(&tok, &parts, &text, depth, 8, draw(7 + s as u64, s, 4))
                        .unwrap();
                    // The prompt and all answer tokens but the last fill the depth.
                    assert_eq!(t.prompt.len() + 7, depth);
                    assert!((10_000..100_000).contains(&t.number));
                    // Stratified: seed s of 4 lands in its quarter, up to the
                    // snap to a sentence end (at most one sentence away).
                    assert!((t.needle_depth - (s as f64 + 0.5) / 4.0).abs() <= 0.24);
                    let s_text = tok.decode(&t.prompt).unwrap();
                    let needle = format!("{NEEDLE} {}.", t.number);
                    let at = s_text.find(&needle).expect("the needle is in the prompt");
                    let before = s_text[..at].trim_end();
                    assert!(
                        before.is_empty()
                            || before.ends_with(['.', '!', '?'])
                            || before.ends_with("user"),
                        "{before:?}"
                    );
                    assert!(s_text.ends_with("The secret number is"));
                    assert_eq!(t.prefill + parts.question.len(), t.prompt.len());
                    assert_eq!(t.prompt[t.prefill..], parts.question[..]);
                    if chatml {
                        assert!(s_text.starts_with("<|im_start|>user\n"));
                    } else {
                        assert!(s_text.starts_with("<|endoftext|>"));
                    }
                    // The same seed builds the same prompt.
                    let again =
                        build_trial(&tok, &parts, &text, depth, 8, draw(7 + s as u64, s, 4))
                            .unwrap();
                    assert_eq!(again, t);
                }
            }
        }
    }

    #[test]
    fn bounds_are_clear_errors() {
        let tok = tokenizer(true);
        let parts = PromptParts::new(&tok, "chat").unwrap();
        let text = tok.encode(TEXT).unwrap();
        // Shorter than the fixed part of the prompt.
        let e = build_trial(&tok, &parts, &text, 50, 8, draw(1, 0, 1)).unwrap_err();
        assert!(format!("{e:#}").contains("fixed part"), "{e:#}");
        // More filler than the text has.
        let e = build_trial(&tok, &parts, &text, 4000, 8, draw(1, 0, 1)).unwrap_err();
        assert!(format!("{e:#}").contains("the text has only"), "{e:#}");
        // Depths past the model's context, malformed or empty.
        let e = parse_depths("1K,16K", 8192).unwrap_err();
        assert!(
            format!("{e:#}").contains("exceed the model's context of 8192"),
            "{e:#}"
        );
        assert_eq!(
            parse_depths("1K, 2K,8192", 8192).unwrap(),
            vec![1024, 2048, 8192]
        );
        assert!(parse_depths("1X", 8192).is_err());
        assert!(parse_depths("0", 8192).is_err());
        assert!(parse_depths("", 8192).is_err());
        // A chat prompt needs the ChatML tokens; unknown forms are refused.
        let plain = tokenizer(false);
        assert!(PromptParts::new(&plain, "chat").is_err());
        assert!(PromptParts::new(&plain, "fancy").is_err());
        assert_eq!(
            PromptParts::new(&plain, "plain").unwrap().form,
            PromptForm::Plain
        );
    }

    #[test]
    fn answers_score_on_their_first_number() {
        assert!(is_correct(" 48213.", 48213));
        assert!(is_correct("48213", 48213));
        assert!(is_correct(" **48213**, of course", 48213));
        assert!(!is_correct(" 4821", 48213));
        assert!(!is_correct(" 482130", 48213));
        assert!(!is_correct(" 12345 or 48213", 48213));
        assert!(!is_correct(" unknown", 48213));
        assert!(!is_correct("", 48213));
    }
}
