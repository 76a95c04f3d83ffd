//! The system latency model of LLM decoding (layer 5, beside `aqpim-decode`):
//! what one decode step costs on a GPU with the KV cache in GPU memory,
//! streamed from host memory, or held in PIM stacks that run attention in
//! their banks (FP16 as AttAcc does, or PQ codes as AQPIM does), and the
//! serving view that compares designs at the largest batch each one fits.
//!
//! The API, each item at one path:
//!
//! - [`presets`]: model shapes and systems
//!   ([`presets::ModelSpec`], [`presets::SystemSpec`] and their parts),
//!   the compiled-in preset files (`presets/models/*.toml`,
//!   `presets/systems/*.toml`) and their loaders ([`presets::model`],
//!   [`presets::system`], [`presets::system_with`]);
//! - [`decode_step`] and [`decode_step_with`]: one decode step of a
//!   [`Policy`] at a context and batch, itemized as a [`Step`]
//!   ([`MAX_CTX`], [`MAX_BATCH`] bound them);
//! - [`serve`]: the highest-throughput batch per context with nothing
//!   spilled to host memory, as [`ServePoint`]s;
//! - [`PimTimer`], [`SimTimer`] and [`PimMode`]: where the PIM attention
//!   cost comes from (the simulator or the closed form, memoized);
//! - [`accuracy`]: each format's measured perplexity delta
//!   (`presets/data/accuracy.toml`), printed beside its tokens/s;
//! - [`SystemError`] and [`Result`].
//!
//! Private modules: `policy`, `decode` (the `gpu` and `offload` steps),
//! `gpu` (linear layers on a roofline, the capacity rule, prefill and
//! k-means estimates), `step`, `pim_step` (the PIM policies' placement,
//! link and overlap), `pim` (the PIM attention cost and footprint from the
//! lowered programs of `aqpim_attn::pim`), and `serve`.
//!
//! Every hardware figure comes from a preset file, each with its source (the
//! measured H100 anchors in `presets/data/h100_anchors.jsonl`, a paper or a
//! datasheet) or "estimate" beside it. It never depends on the real-model
//! code of `aqpim-decode`.

#![forbid(unsafe_code)]

pub mod accuracy;
mod decode;
mod error;
mod gpu;
mod pim;
mod pim_step;
mod policy;
pub mod presets;
mod serve;
mod step;

pub use decode::{decode_step, decode_step_with, MAX_BATCH, MAX_CTX};
pub use error::{Result, SystemError};
pub use pim::{PimMode, PimTimer, SimTimer};
pub use policy::Policy;
pub use serve::{serve, ServePoint};
pub use step::Step;

#[cfg(test)]
mod tests;
