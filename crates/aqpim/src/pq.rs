//! `aqpim pq ...`: train, encode and benchmark product quantizers on `.npy` data.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aqpim_pq::{FastScanCodes, Init, PqParams, ProductQuantizer, TrainOptions};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use crate::limits;
use crate::npy;

/// Most k-means iterations (`--iters`); faiss's default is 25.
const MAX_ITERS: usize = 100_000;
/// Largest `--max-points-per-centroid` (faiss's default is 256).
const MAX_POINTS_PER_CENTROID: usize = 1 << 20;

#[derive(Debug, Subcommand)]
pub enum PqCommand {
    /// Train a codebook on a 2-D .npy matrix (float32 or float16) and save it.
    Train {
        #[command(flatten)]
        train: TrainArgs,
        /// Codebook file to write (atomically).
        #[arg(long)]
        out: PathBuf,
    },
    /// Encode a .npy matrix with a saved codebook into an n x M uint8 .npy file.
    Encode {
        /// Codebook file written by `aqpim pq train`.
        #[arg(long)]
        codebook: PathBuf,
        /// Vectors to encode (n x d, float32 or float16).
        #[arg(long)]
        input: PathBuf,
        /// Output .npy file of codes (n x M, uint8).
        #[arg(long)]
        out: PathBuf,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Decode a codes file (n x M uint8 .npy, as `encode` writes) with its
    /// codebook into the reconstructed vectors (n x d float32 .npy).
    Decode {
        /// Codebook file written by `aqpim pq train`.
        #[arg(long)]
        codebook: PathBuf,
        /// Codes to decode (n x M, uint8 .npy).
        #[arg(long)]
        codes: PathBuf,
        /// Output .npy file of vectors (n x d, float32).
        #[arg(long)]
        out: PathBuf,
    },
    /// What a codebook or codes file holds: shape, bits, sizes and, for a
    /// codebook, whether its checksum holds.
    Info {
        /// A codebook file (`aqpim pq train`) or a codes .npy file (`aqpim pq encode`).
        file: PathBuf,
        /// Print one JSON object on one line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Export a codebook's centroids as a float32 .npy array of shape
    /// M x ksub x dsub (faiss's `ProductQuantizer.centroids` layout).
    Export {
        /// Codebook file written by `aqpim pq train`.
        #[arg(long)]
        codebook: PathBuf,
        /// Output .npy file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Train, encode and scan on the input itself; report times and errors.
    Bench {
        #[command(flatten)]
        train: TrainArgs,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Calibrate K and V codebooks for every layer and KV head of a model (GGUF or Hugging Face directory)
    /// on a text (post-RoPE keys and values), for `--codebooks` of `aqpim eval ppl`.
    Calibrate {
        /// Model: a GGUF file or a Hugging Face checkpoint directory (Llama family).
        #[arg(long)]
        model: PathBuf,
        /// UTF-8 calibration text. Default: the calibration corpus that `cargo
        /// xtask fetch-assets` writes, `assets/calibration.txt` under the current
        /// directory (Pride and Prejudice interleaved with Python source of another
        /// package than any evaluation reads; docs/model.md).
        #[arg(long)]
        text: Option<PathBuf>,
        /// Calibration tokens taken from the start of the text (K/M suffixes).
        #[arg(long, default_value = "8K", value_parser = crate::args::count)]
        tokens: usize,
        /// The PQ cache the codebooks are for (`pq:dsub=..,nbits=..`; dsub,
        /// kdsub, vdsub, bits, iterations and seed are used, and the accuracy
        /// keys center, scale, layout, whiten and vweight, which save a
        /// transform beside each codebook; vweight also reads sinks and window).
        /// Evaluate with the same keys.
        #[arg(long)]
        kv: String,
        /// Tokens per forward sequence (the text is cut into independent chunks; K/M suffixes).
        /// A list (`2K,8K`) makes one pass over the text per length, so the sample holds keys
        /// at the positions each length reaches. Default: two passes, in chunks of a quarter
        /// of the model's context and of the whole context: keys at every position a cache
        /// can hold (RoPE turns the mid-frequency pairs through angles a short chunk never
        /// reaches; 2K chunks alone cost +5.9 % perplexity at 8K tokens), with the early
        /// positions that every sequence passes through weighted twice (one 8K chunk alone
        /// costs +2.3 % at 2K tokens on a held-out novel; docs/results/accuracy.md).
        #[arg(long, value_parser = crate::args::count, value_delimiter = ',', value_name = "N[,N...]")]
        chunk: Vec<usize>,
        /// Output directory (one codebook file per layer, KV head, K and V).
        #[arg(long)]
        out: PathBuf,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Write KV-like synthetic data (a few large-variance channels) as float32 .npy.
    Synth {
        /// Number of vectors (K/M suffixes).
        #[arg(long, default_value = "64K", value_parser = crate::args::count)]
        n: usize,
        /// Dimension.
        #[arg(long, default_value_t = 128)]
        d: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output .npy file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InitArg {
    /// k-means++ seeding.
    KmeansPlusPlus,
    /// Random distinct training points (faiss's default).
    Random,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training vectors (n x d .npy, float32 or float16).
    #[arg(long)]
    input: PathBuf,
    /// Number of subspaces (M).
    #[arg(long)]
    m: usize,
    /// Bits per code (nbits, 1..=8).
    #[arg(long, default_value_t = 8)]
    nbits: u32,
    /// k-means iterations per subspace.
    #[arg(long, default_value_t = 25)]
    iters: usize,
    /// Random seed.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Initialization of the centroids.
    #[arg(long, value_enum, default_value_t = InitArg::KmeansPlusPlus)]
    init: InitArg,
    /// Sampling cap: at most ksub * this many training points per subspace.
    #[arg(long, default_value_t = 256)]
    max_points_per_centroid: usize,
}

impl TrainArgs {
    fn options(&self) -> Result<TrainOptions> {
        if self.iters > MAX_ITERS {
            bail!(
                "--iters {} is more than the limit of {MAX_ITERS}",
                self.iters
            );
        }
        limits::in_range(
            "--max-points-per-centroid",
            self.max_points_per_centroid,
            MAX_POINTS_PER_CENTROID,
        )?;
        Ok(TrainOptions {
            iterations: self.iters,
            seed: self.seed,
            init: match self.init {
                InitArg::KmeansPlusPlus => Init::KMeansPlusPlus,
                InitArg::Random => Init::RandomSample,
            },
            max_points_per_centroid: self.max_points_per_centroid,
        })
    }
}

pub fn run(cmd: PqCommand) -> Result<()> {
    match cmd {
        PqCommand::Train { train, out } => with_threads(train.threads, || train_cmd(&train, &out)),
        PqCommand::Encode {
            codebook,
            input,
            out,
            threads,
        } => with_threads(threads, || encode(&codebook, &input, &out)),
        PqCommand::Decode {
            codebook,
            codes,
            out,
        } => decode(&codebook, &codes, &out),
        PqCommand::Info { file, json } => {
            let info = info(&file)?;
            if json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                info.print_table();
            }
            Ok(())
        }
        PqCommand::Export { codebook, out } => export(&codebook, &out),
        PqCommand::Bench { train, json } => with_threads(train.threads, || {
            let report = bench(&train)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                report.print_table();
            }
            Ok(())
        }),
        PqCommand::Calibrate {
            model,
            text,
            tokens,
            kv,
            chunk,
            out,
            threads,
        } => with_threads(threads, || {
            calibrate(&model, text, tokens, &kv, chunk, &out)
        }),
        PqCommand::Synth { n, d, seed, out } => synth(n, d, seed, &out),
    }
}

/// `pq train`: a codebook trained on a `.npy` matrix, saved to `out`.
fn train_cmd(train: &TrainArgs, out: &Path) -> Result<()> {
    let x = npy::read_matrix(&train.input)?;
    let params = PqParams::new(x.cols, train.m, train.nbits)?;
    let (pq, secs) = train_with_spinner(params, &x.data, &train.options()?)?;
    pq.save(out)?;
    eprintln!(
        "trained d={} M={} nbits={} on {} vectors in {secs:.2} s -> {}",
        x.cols,
        train.m,
        train.nbits,
        x.rows,
        out.display()
    );
    Ok(())
}

/// `pq encode`: a `.npy` matrix encoded with a saved codebook.
fn encode(codebook: &Path, input: &Path, out: &Path) -> Result<()> {
    let pq = ProductQuantizer::load(codebook)?;
    let x = npy::read_matrix(input)?;
    if x.cols != pq.params().dim() {
        bail!(
            "{}: vectors have d = {}, the codebook expects d = {}",
            input.display(),
            x.cols,
            pq.params().dim()
        );
    }
    let codes = pq.encode(&x.data)?;
    npy::write_u8(out, x.rows, pq.params().num_subspaces(), &codes)?;
    eprintln!(
        "encoded {} vectors of d = {} into {} x {} codes -> {}",
        x.rows,
        x.cols,
        x.rows,
        pq.params().num_subspaces(),
        out.display()
    );
    Ok(())
}

/// `pq decode`: codes decoded with their codebook into vectors.
fn decode(codebook: &Path, codes: &Path, out: &Path) -> Result<()> {
    let pq = ProductQuantizer::load(codebook)?;
    let c = npy::read_codes(codes)?;
    let p = pq.params();
    if c.cols != p.num_subspaces() {
        bail!(
            "{}: codes have M = {} columns, the codebook has M = {}",
            codes.display(),
            c.cols,
            p.num_subspaces()
        );
    }
    if let Some(bad) = c.data.iter().find(|&&v| usize::from(v) >= p.ksub()) {
        bail!(
            "{}: code {bad} is out of range for {}-bit codes (ksub = {})",
            codes.display(),
            p.nbits(),
            p.ksub()
        );
    }
    let x = pq.decode(&c.data)?;
    npy::write_f32(out, c.rows, p.dim(), &x)?;
    eprintln!(
        "decoded {} x {} codes into {} vectors of d = {} -> {}",
        c.rows,
        c.cols,
        c.rows,
        p.dim(),
        out.display()
    );
    Ok(())
}

/// `pq export`: a codebook's centroids as an M x ksub x dsub `.npy` array.
fn export(codebook: &Path, out: &Path) -> Result<()> {
    let pq = ProductQuantizer::load(codebook)?;
    let p = pq.params();
    npy::write_f32_nd(
        out,
        &[p.num_subspaces(), p.ksub(), p.dsub()],
        pq.centroids(),
    )?;
    eprintln!(
        "exported {} x {} x {} centroids (subspaces x centroids x sub-vector) -> {}",
        p.num_subspaces(),
        p.ksub(),
        p.dsub(),
        out.display()
    );
    Ok(())
}

/// `pq synth`: KV-like synthetic vectors as a float32 `.npy` matrix.
fn synth(n: usize, d: usize, seed: u64, out: &Path) -> Result<()> {
    if n == 0 || d == 0 {
        bail!("--n and --d must be positive");
    }
    if d > aqpim_pq::limits::MAX_DIM {
        bail!(
            "--d {d} is larger than the limit of {}",
            aqpim_pq::limits::MAX_DIM
        );
    }
    aqpim_pq::limits::elements(n, d, "--n x --d")?;
    npy::write_f32(out, n, d, &aqpim_pq::synth::kv_like(n, d, seed))?;
    eprintln!(
        "wrote {n} x {d} KV-like float32 vectors (seed {seed}) -> {}",
        out.display()
    );
    Ok(())
}

/// `pq calibrate`: K and V codebooks for every layer and KV head of a model,
/// trained on the keys and values of `tokens` tokens of a text.
fn calibrate(
    model: &Path,
    text: Option<PathBuf>,
    tokens: usize,
    kv: &str,
    chunk: Vec<usize>,
    out: &Path,
) -> Result<()> {
    limits::in_range("--tokens", tokens, aqpim_kvcache::limits::MAX_CTX)?;
    for &c in &chunk {
        limits::in_range("--chunk", c, aqpim_kvcache::limits::MAX_CTX)?;
    }
    let spec = match kv
        .parse::<aqpim_kvcache::KvSpec>()
        .with_context(|| format!("--kv {}", limits::cut(kv)))?
    {
        aqpim_kvcache::KvSpec::Pq(p) => p,
        other => bail!("--kv {other}: calibration trains PQ codebooks; give a `pq:` spec"),
    };
    let (llama, tok) =
        aqpim_decode::load(model).with_context(|| format!("loading model {}", model.display()))?;
    let text = match text {
        Some(t) => t,
        None => default_corpus()?,
    };
    let body = std::fs::read_to_string(&text)
        .with_context(|| format!("reading text {} (UTF-8 expected)", text.display()))?;
    let mut ids = tok.encode(&body)?;
    if ids.len() < tokens {
        bail!(
            "{} holds {} tokens, fewer than --tokens {tokens}",
            text.display(),
            ids.len()
        );
    }
    ids.truncate(tokens);
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} layers, {elapsed} (eta {eta})",
        )
        .expect("valid template"),
    );
    // Redrawn every second: a layer of a long text takes many seconds.
    bar.enable_steady_tick(Duration::from_secs(1));
    let t = Instant::now();
    let chunks = if chunk.is_empty() {
        default_chunks(llama.config().context_length)
    } else {
        chunk
    };
    let books = aqpim_decode::calibrate::calibrate(
        &llama,
        &ids,
        &spec,
        &chunks,
        &mut |what, done, total| {
            bar.set_message(what.to_string());
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    aqpim_decode::calibrate::save(&books, out)?;
    eprintln!(
        "calibrated {} layers x {} KV heads on {tokens} tokens of {} in {:.1} s -> {}",
        books.len(),
        books.first().map_or(0, Vec::len),
        text.display(),
        t.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// Where `pq calibrate` reads its text without `--text`: the corpus of
/// `cargo xtask fetch-assets`, relative to the current directory.
pub(crate) const DEFAULT_CORPUS: &str = "assets/calibration.txt";

fn default_corpus() -> Result<PathBuf> {
    let p = PathBuf::from(DEFAULT_CORPUS);
    if !p.is_file() {
        bail!(
            "no --text given, and the default calibration corpus {DEFAULT_CORPUS} is absent: \
             run `cargo xtask fetch-assets` in the repository (it writes assets/), run from there, \
             or pass --text FILE"
        );
    }
    Ok(p)
}

/// `pq calibrate`'s default chunk lengths for a model of `context` tokens:
/// a quarter of the context, then the whole context (one length when they
/// are equal).
fn default_chunks(context: usize) -> Vec<usize> {
    let quarter = (context / 4).max(1);
    if quarter == context {
        vec![context]
    } else {
        vec![quarter, context]
    }
}

/// Runs `f` on a rayon pool of `threads` workers (all cores when `None`).
fn with_threads<T: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    limits::thread_pool(threads)?.install(f)
}

fn train_with_spinner(
    params: PqParams,
    data: &[f32],
    opts: &TrainOptions,
) -> Result<(ProductQuantizer, f64)> {
    let bar = indicatif::ProgressBar::new_spinner().with_message(format!(
        "training {} k-means of {} centroids",
        params.num_subspaces(),
        params.ksub()
    ));
    bar.enable_steady_tick(Duration::from_millis(120));
    let t = Instant::now();
    let pq = ProductQuantizer::train(params, data, opts);
    let secs = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok((pq?, secs))
}

/// What `aqpim pq bench` measures.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    n: usize,
    d: usize,
    m: usize,
    nbits: u32,
    iters: usize,
    threads: usize,
    train_s: f64,
    encode_s: f64,
    /// ADC scan throughput on the codes' natural layout: one byte per code for
    /// nbits > 4, packed nibbles for nbits <= 4 (millions of codes per second).
    adc_mcodes_per_s: f64,
    /// ADC throughput of the blocked fast-scan layout (nbits <= 4 only).
    fastscan_mcodes_per_s: Option<f64>,
    mse_per_vector: f64,
    rel_mse: f64,
    max_adc_error: f64,
}

impl BenchReport {
    fn print_table(&self) {
        println!("{:<24} {} x {}", "vectors (n x d)", self.n, self.d);
        println!(
            "{:<24} M={} nbits={} iters={} threads={}",
            "quantizer", self.m, self.nbits, self.iters, self.threads
        );
        println!("{:<24} {:.3}", "train (s)", self.train_s);
        println!("{:<24} {:.3}", "encode (s)", self.encode_s);
        println!("{:<24} {:.1}", "ADC (M codes/s)", self.adc_mcodes_per_s);
        if let Some(f) = self.fastscan_mcodes_per_s {
            println!("{:<24} {:.1}", "fast-scan (M codes/s)", f);
        }
        println!("{:<24} {:.6}", "MSE per vector", self.mse_per_vector);
        println!("{:<24} {:.6}", "relative MSE", self.rel_mse);
    }
}

fn bench(args: &TrainArgs) -> Result<BenchReport> {
    let x = npy::read_matrix(&args.input)?;
    let params = PqParams::new(x.cols, args.m, args.nbits)?;
    let (pq, train_s) = train_with_spinner(params, &x.data, &args.options()?)?;

    let t = Instant::now();
    let codes = pq.encode(&x.data)?;
    let encode_s = t.elapsed().as_secs_f64();

    let rec = pq.decode(&codes)?;
    let se: f64 = x
        .data
        .iter()
        .zip(&rec)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    let norms: f64 = x.data.iter().map(|a| f64::from(*a).powi(2)).sum();
    let mse_per_vector = se / x.rows as f64;
    let rel_mse = se / norms.max(f64::MIN_POSITIVE);

    // ADC: the first vector as the query, every code scored; the scores are
    // checked against exact dot products with the decoded vectors.
    let query = &x.data[..x.cols];
    let lut = pq.inner_product_table(query)?;
    let mut scores = vec![0f32; x.rows];
    let (adc_mcodes_per_s, fastscan) = if args.nbits <= 4 {
        let packed = aqpim_pq::pack_4bit(&codes, args.m)?;
        let rate = throughput(x.rows, || lut.scan_packed4(&packed, &mut scores))?;
        let fast = FastScanCodes::from_codes(&codes, args.m)?;
        let mut fs = vec![0f32; x.rows];
        let frate = throughput(x.rows, || fast.scan(&lut, &mut fs))?;
        if fs
            .iter()
            .zip(&scores)
            .any(|(a, b)| (a - b).abs() > 1e-3 * (1.0 + b.abs()))
        {
            bail!("fast-scan scores disagree with the packed scan");
        }
        (rate, Some(frate))
    } else {
        (
            throughput(x.rows, || lut.scan_u8(&codes, &mut scores))?,
            None,
        )
    };
    let mut max_adc_error = 0f64;
    for (i, s) in scores.iter().enumerate() {
        let exact: f64 = query
            .iter()
            .zip(&rec[i * x.cols..(i + 1) * x.cols])
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        max_adc_error = max_adc_error.max((f64::from(*s) - exact).abs() / (1.0 + exact.abs()));
    }
    if max_adc_error > 1e-4 {
        bail!("ADC scores disagree with exact dot products (relative error {max_adc_error:e})");
    }
    Ok(BenchReport {
        n: x.rows,
        d: x.cols,
        m: args.m,
        nbits: args.nbits,
        iters: args.iters,
        threads: rayon::current_num_threads(),
        train_s,
        encode_s,
        adc_mcodes_per_s,
        fastscan_mcodes_per_s: fastscan,
        mse_per_vector,
        rel_mse,
        max_adc_error,
    })
}

/// Codes scanned per second (in millions), repeating the scan for at least 0.3 s.
fn throughput(n: usize, mut scan: impl FnMut() -> aqpim_pq::Result<()>) -> Result<f64> {
    scan()?; // warm-up
    let t = Instant::now();
    let mut reps = 0u64;
    while t.elapsed() < Duration::from_millis(300) {
        scan()?;
        reps += 1;
    }
    Ok(reps as f64 * n as f64 / t.elapsed().as_secs_f64() / 1e6)
}

/// What `aqpim pq info` reports.
#[derive(Debug, Serialize)]
struct Info {
    file: String,
    /// `codebook` or `codes`.
    kind: &'static str,
    file_bytes: u64,
    /// Codebook: vector dimension.
    d: Option<usize>,
    /// Subspaces (a codebook's M, a codes file's columns).
    m: usize,
    /// Codebook: bits per code; codes: the fewest bits that hold the largest code.
    nbits: u32,
    ksub: Option<usize>,
    dsub: Option<usize>,
    /// Codes: vectors encoded.
    vectors: Option<usize>,
    /// Codebook: the bytes of its f32 centroids.
    centroid_bytes: Option<u64>,
    /// Codes: the largest code present.
    max_code: Option<u8>,
    /// `ok`, `mismatch` (the file is corrupt or truncated), or `none` (a
    /// .npy file has no checksum).
    checksum: &'static str,
    /// Why the file does not load, if it does not.
    error: Option<String>,
}

impl Info {
    fn print_table(&self) {
        println!("{:<16} {} ({})", "file", self.file, self.kind);
        println!("{:<16} {} bytes", "size", self.file_bytes);
        if let Some(v) = self.vectors {
            println!("{:<16} {v} x {} codes", "shape", self.m);
        }
        if let (Some(d), Some(k), Some(ds)) = (self.d, self.ksub, self.dsub) {
            println!(
                "{:<16} d={d} M={} nbits={} (ksub {k}, dsub {ds})",
                "quantizer", self.m, self.nbits
            );
        } else {
            println!(
                "{:<16} {} (largest code {:?})",
                "bits needed",
                self.nbits,
                self.max_code.unwrap_or(0)
            );
        }
        if let Some(b) = self.centroid_bytes {
            println!("{:<16} {b} bytes of f32 centroids", "codebook");
        }
        println!("{:<16} {}", "checksum", self.checksum);
        if let Some(e) = &self.error {
            println!("{:<16} {e}", "error");
        }
    }
}

fn info(path: &std::path::Path) -> Result<Info> {
    let bytes = aqpim_pq::io::read_all(path)?;
    let file = path.display().to_string();
    let file_bytes = bytes.len() as u64;
    if bytes.starts_with(aqpim_pq::CODEBOOK_MAGIC) {
        if bytes.len() < 32 {
            bail!("{file}: a truncated codebook ({} bytes)", bytes.len());
        }
        let word = |i: usize| {
            u32::from_le_bytes(bytes[8 + 4 * i..12 + 4 * i].try_into().expect("4 bytes"))
        };
        let (d, m, nbits) = (word(1) as usize, word(2) as usize, word(3));
        let loaded = ProductQuantizer::from_bytes(&bytes, path);
        let error = loaded.as_ref().err().map(|e| e.to_string());
        let checksum = match &error {
            Some(e) if e.contains("checksum") => "mismatch",
            _ => "ok",
        };
        let (ksub, dsub) = match &loaded {
            Ok(pq) => (Some(pq.params().ksub()), Some(pq.params().dsub())),
            Err(_) => (None, None),
        };
        return Ok(Info {
            file,
            kind: "codebook",
            file_bytes,
            d: Some(d),
            m,
            nbits,
            ksub,
            dsub,
            vectors: None,
            centroid_bytes: loaded
                .as_ref()
                .ok()
                .map(|pq| 4 * pq.centroids().len() as u64),
            max_code: None,
            checksum,
            error,
        });
    }
    if bytes.starts_with(b"\x93NUMPY") {
        let c = npy::read_codes(path)?;
        let max = c.data.iter().copied().max().unwrap_or(0);
        return Ok(Info {
            file,
            kind: "codes",
            file_bytes,
            d: None,
            m: c.cols,
            nbits: (u8::BITS - max.leading_zeros()).max(1),
            ksub: None,
            dsub: None,
            vectors: Some(c.rows),
            centroid_bytes: None,
            max_code: Some(max),
            checksum: "none",
            error: None,
        });
    }
    bail!("{file} is neither an aqpim codebook (magic AQPIMCB) nor a .npy file of codes")
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_calibration_passes_are_a_quarter_context_and_the_context() {
        assert_eq!(super::default_chunks(8192), vec![2048, 8192]);
        assert_eq!(super::default_chunks(256), vec![64, 256]);
        assert_eq!(super::default_chunks(3), vec![1, 3]);
        assert_eq!(super::default_chunks(1), vec![1]);
    }
}
