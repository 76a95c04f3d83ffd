//! Decode attention lowered to PIM programs that `aqpim-pim` runs: a
//! placement of each (sequence, layer, KV head) cache onto a device's
//! channels and banks, program generators for FP16 attention as AttAcc does
//! it and for AQPIM attention on PQ codes, in-memory quantization of a new
//! token, and the per-layer cost the system model reads.
//!
//! The design and the ISA it needs are in `docs/design/pim-lowering.md`.

use aqpim_pim::Device;
use serde::Serialize;

use crate::error::{AttnError, Result};

/// What the banks hold for each token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PimKind {
    /// FP16 keys and values (AttAcc).
    Fp16,
    /// PQ codes of keys and values (AQPIM), `2^nbits` centroids per subspace
    /// of `dsub` elements.
    Pq {
        /// Sub-vector length.
        dsub: usize,
        /// Bits per code (4 or 8).
        nbits: u32,
    },
}

/// One layer's decode attention on a PIM device: `heads` independent
/// (sequence, KV head) caches of `ctx` tokens each, every one read by `group`
/// query heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LayerJob {
    /// What the banks hold per token.
    pub kind: PimKind,
    /// Head dimension.
    pub head_dim: usize,
    /// Caches in the layer: batch x KV heads.
    pub heads: usize,
    /// Query heads per KV head (grouped-query attention).
    pub group: usize,
    /// Tokens per cache held in the banks in `kind`'s format (for PQ, the
    /// encoded tokens).
    pub ctx: usize,
    /// FP16 tokens per cache beside the codes (PQ sinks and recent window);
    /// 0 for `Fp16`.
    pub fp_tokens: usize,
    /// Also quantize one new token per cache in memory (PQ only).
    pub quantize: bool,
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

/// Runs one layer's lowered programs in the simulator's timing-only mode
/// and returns their cost.
pub fn simulate_layer(device: &Device, job: &LayerJob) -> Result<PimCost> {
    let _ = (device, job);
    Err(AttnError::Unsupported("PIM lowering (in progress)"))
}

/// The closed-form cost of the same programs, for sweeps; tests hold it
/// within 5 % of [`simulate_layer`].
pub fn analytic_layer(device: &Device, job: &LayerJob) -> Result<PimCost> {
    let _ = (device, job);
    Err(AttnError::Unsupported("PIM lowering (in progress)"))
}

/// Rows of every bank that one layer's caches occupy under the placement
/// (codes or FP16 tokens, FP16 window tokens, value codebooks): a model of
/// `L` layers fits when `L` times this is at most the device's rows.
pub fn layer_rows_per_bank(device: &Device, job: &LayerJob) -> Result<usize> {
    let _ = (device, job);
    Err(AttnError::Unsupported("PIM lowering (in progress)"))
}
