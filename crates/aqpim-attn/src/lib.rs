//! Attention on compressed KV caches (layer 4): fast CPU kernels that compute
//! decode attention directly on PQ codes (lookup-table scores, per-centroid
//! value histograms), dense baselines, and the lowering of the same
//! computation to PIM programs that `aqpim-pim` executes.
//!
//! Depends on `aqpim-kvcache` (and through it `aqpim-pq`) and on `aqpim-pim`.
//!
//! Decode attention of one query token, for query head `h` reading KV head
//! `g = h / (H / G)` (grouped-query attention), with scale `s = 1 / sqrt(d)`:
//!
//! ```text
//! o_h = sum_t softmax_t(s q_h . k_t) v_t
//! ```
//!
//! On a PQ cache the encoded tokens enter the same softmax as the FP16 sink
//! and recent tokens: their scores are `sum_m LUT[m][code_t[m]]` with
//! `LUT[m][j] = s q_m . C_K[m][j]`, and their values are accumulated as
//! per-centroid weights `W[m][j] = sum_{t: vcode_t[m] = j} p_t`, then
//! `o += sum_m W[m] C_V[m]`. Kernels stream tokens in blocks with an online
//! (running-maximum) softmax, so every token is read once.
//!
//! Entry points: [`attend`] (any [`aqpim_kvcache::KvStore`]), the per-store
//! kernels [`attend_dense`], [`attend_pq`] and [`attend_scalar`], and the plain f64
//! [`reference`](mod@reference) that tests hold them to.

mod dense;
mod error;
mod lanes;
mod layer;
pub(crate) mod math;
pub mod pim;
mod pq;
pub mod reference;
mod scalar;
mod stream;
mod tables;

pub use dense::{attend_dense, dense_head_attention};
pub use error::{AttnError, Result};
pub use layer::{attend, attend_head};
pub use pq::{attend_pq, attend_pq_with, pq_head_attention, pq_head_attention_with};
pub use scalar::{attend_scalar, scalar_head_attention};
pub use tables::{score_tables, set_score_tables, ScoreTables};

/// The stages of the PQ kernel, public for benchmarks and for checking the
/// PIM programs stage by stage.
pub mod stages {
    pub use crate::pq::{
        add_bins_times_codebook, fold_pair_bins, histogram_packed4, histogram_u8, histogram_u8_full,
    };

    /// Turns a block of scores into softmax weights relative to a running
    /// maximum; see [`OnlineSoftmax::absorb`].
    pub use crate::math::OnlineSoftmax;
}
