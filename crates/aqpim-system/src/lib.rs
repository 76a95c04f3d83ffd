//! The system latency model of LLM decoding (layer 5, beside `aqpim-decode`):
//! what one decode step costs on a GPU with the KV cache in GPU memory,
//! streamed from host memory, or held in PIM stacks that run attention in
//! their banks (FP16 as AttAcc does, or PQ codes as AQPIM does), and the
//! serving view that compares designs at the largest batch each one fits.
//!
//! - [`presets`]: model shapes and systems (`presets/models/*.toml`,
//!   `presets/systems/*.toml`, compiled in), loaded and validated;
//! - [`policy`]: the policies; [`decode`]: the entry point [`decode_step`]
//!   and the `gpu` and `offload` steps; [`gpu`]: linear layers on a
//!   roofline, the capacity rule, prefill and k-means estimates;
//! - `step.rs`: [`Step`], the itemized step;
//! - [`pim_step`](crate::policy): the PIM policies' placement, link and
//!   overlap (module `pim_step`);
//! - [`pim`]: the PIM attention cost and footprint, from the lowered
//!   programs of `aqpim_attn::pim` (simulated or closed form, memoized);
//! - [`serve`]: the highest-throughput batch per context with nothing
//!   spilled to host memory;
//! - [`accuracy`]: each format's measured perplexity delta, printed beside
//!   its tokens/s.
//!
//! Every hardware figure comes from a preset file, each with its source (the
//! measured H100 anchors in `presets/data/h100_anchors.jsonl`, a paper or a
//! datasheet) or "estimate" beside it. It never depends on the real-model
//! code of `aqpim-decode`.

#![forbid(unsafe_code)]

pub mod accuracy;
pub mod decode;
pub mod error;
pub mod gpu;
pub mod pim;
mod pim_step;
pub mod policy;
pub mod presets;
pub mod serve;
mod step;

pub use decode::{decode_step, decode_step_with, MAX_BATCH, MAX_CTX};
pub use error::{Result, SystemError};
pub use pim::{PimMode, PimTimer, SimTimer};
pub use policy::Policy;
pub use presets::{ModelSpec, SystemSpec};
pub use serve::{serve, ServePoint};
pub use step::Step;

#[cfg(test)]
mod tests;
