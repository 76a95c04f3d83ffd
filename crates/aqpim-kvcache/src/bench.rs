//! Whole-cache measurements shared by `aqpim kv bench` and the criterion
//! benches: the cost of one decode step's appends, and a check that a real
//! cache allocates what the accounting reports.

use std::time::Instant;

use crate::accounting::{account, HeapBytes, MemoryReport};
use crate::error::{KvError, KvPart, Result};
use crate::limits;
use crate::shape::KvShape;
use crate::spec::{KvSpec, PqSpec};
use crate::store::KvStore;
use crate::synth;

/// Appending one token to every layer, timed over `steps` decode steps.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppendBench {
    /// The spec.
    pub spec: String,
    /// The shape.
    pub shape: KvShape,
    /// Tokens per layer before the timed steps.
    pub prefill: usize,
    /// Timed steps.
    pub steps: usize,
    /// rayon worker threads.
    pub threads: usize,
    /// Nearest-centroid searches per step (K and V, every head of every layer, every subspace).
    pub searches_per_step: usize,
    /// Median time of one step (one token appended to every layer), ms.
    pub median_step_ms: f64,
    /// Mean time of one step, ms.
    pub mean_step_ms: f64,
    /// Fastest step, ms.
    pub min_step_ms: f64,
}

/// Times appending one token to every layer of a PQ cache of `shape` with
/// calibrated codebooks (a copy per head), after `prefill` tokens. Checks
/// that the tokens that left the window during the steps were encoded with
/// their head's codebook.
pub fn append_latency(
    shape: KvShape,
    spec: PqSpec,
    prefill: usize,
    steps: usize,
    seed: u64,
) -> Result<AppendBench> {
    if steps == 0 {
        return Err(KvError::BadShape(
            "the benchmark needs at least one step".into(),
        ));
    }
    let total = prefill.saturating_add(steps);
    limits::check_ctx("prefill + steps", total)?;
    limits::product(
        "steps x KV heads x head_dim",
        &[steps, shape.num_kv_heads(), shape.head_dim()],
        limits::MAX_BENCH_ELEMENTS,
    )?;
    check_bench_bytes(&shape, spec, total)?;
    let codebooks = synth::calibrated_codebooks(shape.head_dim(), &spec, 4096, 6, seed)?;
    let mut store = synth::store_with_codebooks(shape, spec, &codebooks)?;
    store.reserve(total);
    for layer in 0..shape.num_layers() {
        synth::fill_layer(&mut store, layer, prefill, 4096, seed + layer as u64)?;
    }
    let (k, v) = synth::layer_tokens(&shape, steps, seed ^ 77);
    let (h, d) = (shape.num_kv_heads(), shape.head_dim());
    let step_token = |x: &[f32], s: usize| -> Vec<f32> {
        (0..h)
            .flat_map(|head| {
                x[(head * steps + s) * d..(head * steps + s + 1) * d]
                    .iter()
                    .copied()
            })
            .collect()
    };
    let inputs: Vec<(Vec<f32>, Vec<f32>)> = (0..steps)
        .map(|s| (step_token(&k, s), step_token(&v, s)))
        .collect();
    let mut times = Vec::with_capacity(steps);
    for (ks, vs) in &inputs {
        let t = Instant::now();
        for layer in 0..shape.num_layers() {
            store.append(layer, ks, vs)?;
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // Self-check: the last token that left the window came from a timed step
    // when `steps > window`; it must decode to its codebook's encoding.
    let reg = store.regions(0)?;
    let last = reg.sinks + reg.encoded;
    if last > prefill.max(spec.regions.sinks) {
        let s = last - 1 - prefill;
        let x = crate::tokens::round_f16(&inputs[s].0[..d]);
        let pq = store
            .codebook(0, 0, KvPart::Keys)?
            .ok_or_else(|| KvError::BadShape("no codebook after the steps".into()))?;
        let mut codes = vec![0u8; pq.params().num_subspaces()];
        pq.encode_one(&x, &mut codes)?;
        let want = pq.decode(&codes)?;
        let got = store.reconstruct(0, 0)?.keys[(last - 1) * d..last * d].to_vec();
        if got != want {
            return Err(KvError::BadShape(
                "benchmark self-check failed: an appended token was not encoded with its codebook"
                    .into(),
            ));
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let m = spec.params(d, KvPart::Keys)?.num_subspaces();
    Ok(AppendBench {
        spec: KvSpec::Pq(spec).to_string(),
        shape,
        prefill,
        steps,
        threads: rayon::current_num_threads(),
        searches_per_step: 2 * shape.num_layers() * h * m,
        median_step_ms: sorted.get(steps / 2).copied().unwrap_or(0.0),
        mean_step_ms: times.iter().sum::<f64>() / steps.max(1) as f64,
        min_step_ms: sorted.first().copied().unwrap_or(0.0),
    })
}

/// A real cache of a few layers compared with the accounting of the full shape.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AllocationCheck {
    /// Layers actually allocated.
    pub layers_allocated: usize,
    /// Heap bytes of the real cache.
    pub heap: HeapBytes,
    /// The real cache's own report (same shape, fewer layers).
    pub report_total_bytes: u64,
    /// The accounting of the full shape, never allocated.
    pub full_shape: MemoryReport,
    /// `heap.used * num_layers / layers_allocated`. With an exact reserve
    /// `heap.capacity == heap.used` too, except for the window's spare
    /// slots when `flush > 1` (up to `B - 1` tokens per head and part).
    pub scaled_heap_bytes: u64,
    /// Whether the scaled bytes held equal the full-shape accounting.
    pub matches: bool,
}

/// Allocates `layers` layers of `shape` at `ctx` tokens (calibrated
/// codebooks, KV-like data, an exact reserve) and compares the bytes held
/// with the accounting of the full shape, scaled by layer count. Per-layer
/// codebooks (`share=none|heads`) scale with layers; shared ones do not, so
/// the check needs one of those.
pub fn allocation_check(
    shape: KvShape,
    spec: PqSpec,
    ctx: usize,
    layers: usize,
    seed: u64,
) -> Result<AllocationCheck> {
    if layers == 0 || layers > shape.num_layers() {
        return Err(KvError::BadShape(format!(
            "layers allocated must be in 1..={}",
            shape.num_layers()
        )));
    }
    limits::check_ctx("the allocated context", ctx)?;
    let small = KvShape::with_query_heads(
        layers,
        shape.num_kv_heads(),
        shape.num_q_heads(),
        shape.head_dim(),
    )?;
    check_bench_bytes(&small, spec, ctx)?;
    let codebooks = synth::calibrated_codebooks(shape.head_dim(), &spec, 2048, 2, seed)?;
    let mut store = synth::store_with_codebooks(small, spec, &codebooks)?;
    store.reserve(ctx);
    for layer in 0..layers {
        synth::fill_layer(&mut store, layer, ctx, 2048, seed + layer as u64)?;
    }
    let heap = store.heap_bytes();
    let full = account(&shape, &KvSpec::Pq(spec), ctx)?;
    let scaled = heap.used * shape.num_layers() as u64 / layers as u64;
    Ok(AllocationCheck {
        layers_allocated: layers,
        heap,
        report_total_bytes: store.memory_report().total_bytes,
        matches: scaled == full.total_bytes,
        scaled_heap_bytes: scaled,
        full_shape: full,
    })
}

/// Refuses a benchmark cache of `shape` at `ctx` tokens whose accounting
/// passes [`limits::MAX_BENCH_BYTES`], before anything is allocated.
fn check_bench_bytes(shape: &KvShape, spec: PqSpec, ctx: usize) -> Result<()> {
    let bytes = account(shape, &KvSpec::Pq(spec), ctx)?.total_bytes;
    if bytes > limits::MAX_BENCH_BYTES {
        return Err(KvError::BadShape(format!(
            "a cache of {ctx} tokens in {} needs {bytes} bytes, more than the benchmark limit of {}",
            shape,
            limits::MAX_BENCH_BYTES
        )));
    }
    Ok(())
}
