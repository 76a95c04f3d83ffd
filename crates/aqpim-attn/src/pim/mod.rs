//! Decode attention lowered to PIM programs that `aqpim-pim` runs: a
//! placement of each (sequence, layer, KV head) cache onto a device's
//! channels and banks, program generators for FP16 attention as AttAcc does
//! it, for AQPIM attention on PQ codes and for scalar codes on
//! dequantize-and-MAC units (a Pimba-style design), in-memory quantization
//! of a new token, and the per-layer cost the system model reads.
//!
//! A cache is cut into *slices* of consecutive tokens, one channel each
//! (layout in [`layout`](self)); every slice computes a softmax over its own
//! tokens and returns its statistics (max, sum) and normalized output, and
//! the host merges the slices' partial softmaxes ([`merge`]). PQ caches add
//! one FP16 slice for their sink and recent-window tokens. The design, and
//! the ISA additions it needed, are in `docs/design/pim-lowering.md`.
//!
//! Modules: [`layout`](self) (where a slice's tokens lie in a channel's
//! banks), `placement` (one row allocator and the layer [`plan`](self) that
//! timing and functional layer runs share, with [`layer_rows_per_bank`]
//! and [`layer_footprint`]), `program` (the instruction generators, each
//! instruction marked with its [`Phase`]; a slice's rows are read once per
//! pass of as many query heads of a group as a bank's buffer and registers
//! hold), `functional` (one head, one token), `layer_run` (a whole layer functionally) and `timing`.
//!
//! Entry points: [`run_layer`] runs a layer functionally on real caches
//! under the placement and program that [`simulate_layer`] times (tests
//! hold it to the CPU kernels); [`pq_head_on_pim`] and [`fp16_head_on_pim`]
//! run one head cut into any number of slices, [`scalar_head_on_pim`] and
//! [`kivi_head_on_pim`] one head of scalar codes (`PimKind::Scalar`, on
//! `LDP`/`QMAC` units: `scalar`'s layout); [`quantize_on_pim`] runs
//! in-memory quantization of new tokens; [`simulate_layer`] times one layer
//! of a batch in timing-only mode, [`simulate_layer_breakdown`] splits that
//! cost by phase, [`lower_layer`] returns the program as `aqpim sim run`
//! takes it, and [`analytic_layer`] is the closed form.

mod analytic;
mod format;
mod functional;
mod layer_run;
mod layout;
mod placement;
mod program;
mod scalar;
mod scalar_geom;
mod scalar_run;
mod slice_cost;
mod timing;

use aqpim_kvcache::CodebookScope;
use aqpim_pim::Stats;
use aqpim_pq::CodeFormat;
use serde::Serialize;

use crate::error::{AttnError, Result};

pub use analytic::analytic_layer;
pub use format::{bank_code_bytes, bank_table_entries, BankFormat, PIM_CODE_BITS};
pub use functional::{fp16_head_on_pim, pq_head_on_pim, quantize_on_pim, QuantizeRun};
pub use layer_run::{run_layer, CacheData, LayerRun, NewCodes, NewTokens};
pub use placement::{layer_footprint, layer_rows_per_bank, quantize_block, Footprint};
pub use program::Phase;
pub use scalar_run::{kivi_head_on_pim, scalar_head_on_pim, ScalarHead};
pub use timing::{
    lower_layer, simulate_layer, simulate_layer_breakdown, simulate_layer_mode, LayerBreakdown,
    LayerProgram, PhaseCost,
};

/// What the banks hold for each token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PimKind {
    /// FP16 keys and values (AttAcc).
    Fp16,
    /// PQ codes of keys and values (AQPIM), each part in its own format.
    Pq {
        /// The key codes (the banks read `dsub` and `nbits`, 4 or 8).
        key: CodeFormat,
        /// The value codes.
        value: CodeFormat,
    },
    /// Scalar codes of keys and values with their group parameters,
    /// attended by dequantize-and-MAC units (a Pimba-style design: `QMAC`,
    /// `LDP`). New tokens are quantized by the GPU, which writes their codes:
    /// a job's `quantize` is ignored for this kind.
    Scalar(ScalarCodes),
}

/// A scalar code format in the banks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ScalarCodes {
    /// Bits per element: 2, 4 or 8.
    pub bits: u32,
    /// Elements per group sharing its parameters.
    pub group: usize,
    /// How a group's parameters scale its codes.
    pub scale: ScalarScale,
}

/// How a group's parameters scale its codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScalarScale {
    /// KIVI (the project's `scalar:` store): FP16 minimum and scale per group,
    /// x = min + q * scale, q unsigned; keys grouped over `group` tokens of
    /// one channel, values over `group` channels of one token.
    MinScale,
    /// MX-style: one 8-bit shared exponent per group of `group` channels of
    /// one token, for keys and values; x = q * 2^(e - 127) with q a signed
    /// two's-complement `bits`-bit integer.
    SharedExp,
}

impl PimKind {
    /// PQ codes in one format for keys and values (packed: the banks hold
    /// 4-bit codes two a column byte).
    pub fn pq(dsub: usize, nbits: u32) -> PimKind {
        let c = CodeFormat::new(dsub, nbits, true);
        PimKind::Pq { key: c, value: c }
    }
}

/// One layer's decode attention on a PIM device: `heads` independent
/// (sequence, KV head) caches of `ctx` tokens each, every one read by `group`
/// query heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerJob {
    /// What the banks hold per token.
    pub kind: PimKind,
    /// Head dimension.
    pub head_dim: usize,
    /// Caches in the layer: batch x KV heads.
    pub heads: usize,
    /// KV heads per sequence: cache `s * kv_heads + h` is KV head `h` of
    /// sequence `s`; `heads` must be a multiple of it.
    pub kv_heads: usize,
    /// Query heads per KV head (grouped-query attention).
    pub group: usize,
    /// Tokens per cache held in the banks in `kind`'s format (for PQ, the
    /// encoded tokens).
    pub ctx: usize,
    /// FP16 tokens per cache beside the codes (PQ or scalar sinks and
    /// recent window); 0 for `Fp16`.
    pub fp_tokens: usize,
    /// Also run one in-memory quantization flush per cache: a block of
    /// [`quantize_block`] tokens (PQ only; amortized over that many steps;
    /// ignored for `Scalar`, whose new tokens the GPU quantizes).
    pub quantize: bool,
    /// Who shares a PQ cache's codebooks, and so how many copies the banks
    /// hold (ignored for `Fp16`).
    pub codebooks: CodebookScope,
    /// How caches are spread over channels.
    pub placement: Placement,
}

/// How a layer's caches are spread over a device's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Every channel works: each cache is cut into as many slices as the
    /// least estimated time asks for, up to enough to keep every channel
    /// busy (`4 x channels / caches`), whatever the batch; the partial
    /// softmaxes are merged on the host (their statistics and outputs
    /// cross the link, one set per slice).
    #[default]
    Spread,
    /// AttAcc's simulator's rule: each (sequence, KV head) cache on one
    /// channel (more only where one channel cannot hold it), the caches
    /// dealt to channels in rounds; channels beyond the caches stay idle.
    OnePerCache,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placement::Spread => "spread",
            Placement::OnePerCache => "one-per-cache",
        })
    }
}

impl std::str::FromStr for Placement {
    type Err = AttnError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "spread" => Ok(Placement::Spread),
            "one-per-cache" => Ok(Placement::OnePerCache),
            other => Err(AttnError::Placement(format!(
                "`{other}` is not a placement (spread, one-per-cache)"
            ))),
        }
    }
}

/// What running a layer's programs cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PimCost {
    /// Device cycles from the first command to the last.
    pub cycles: u64,
    /// The same in nanoseconds.
    pub ns: f64,
    /// Energy in picojoules.
    pub energy_pj: f64,
    /// Bytes read or written in the bank arrays.
    pub bytes_internal: u64,
    /// Bytes over the device's external interface (host writes and reads).
    pub bytes_external: u64,
    /// Bytes moved between banks and buffer dies.
    pub bytes_buffer_die: u64,
    /// Commands issued.
    pub commands: u64,
    /// Channels that hold part of the layer.
    pub channels_used: usize,
}

impl PimCost {
    pub(crate) fn from_stats(s: &Stats, channels_used: usize) -> PimCost {
        PimCost {
            cycles: s.cycles,
            ns: s.ns,
            energy_pj: s.energy.total_pj,
            bytes_internal: s.bytes_internal,
            bytes_external: s.bytes_external,
            bytes_buffer_die: s.bytes_buffer_die,
            commands: s.total_commands,
            channels_used,
        }
    }
}

/// A head's output computed by the simulator, with what it cost.
#[derive(Debug, Clone)]
pub struct PimRun {
    /// `g x d` outputs.
    pub out: Vec<f32>,
    /// The simulator's statistics of the whole run.
    pub stats: Stats,
    /// The program that ran (to re-run it, e.g. in timing-only mode).
    pub program: aqpim_pim::Program,
    /// Bytes of host data the program reads.
    pub host_bytes: usize,
}

/// One slice's softmax statistics and normalized output, as the read log
/// returns them.
#[derive(Debug, Clone, Copy)]
pub struct Partial<'a> {
    /// Largest (scaled) score of the slice.
    pub max: f32,
    /// `sum_t exp(score_t - max)` over the slice.
    pub sum: f32,
    /// The slice's output, normalized by `sum`.
    pub out: &'a [f32],
}

/// Merges slices' partial softmaxes into `out`:
/// `o = sum_s w_s o_s / sum_s w_s`, `w_s = sum_s exp(max_s - max)`.
pub fn merge(parts: &[Partial<'_>], out: &mut [f32]) {
    let top = parts
        .iter()
        .map(|p| p.max)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0f64;
    let mut acc = vec![0f64; out.len()];
    for p in parts {
        let w = f64::from(p.sum) * f64::from(p.max - top).exp();
        total += w;
        for (a, &o) in acc.iter_mut().zip(p.out) {
            *a += w * f64::from(o);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = (a / total) as f32;
    }
}
