//! The system latency model: what one decode step costs on a GPU, with the KV
//! cache in GPU memory, streamed from host memory, or in PIM stacks.
//!
//! - [`presets`]: model shapes (`configs/models/*.toml`) and systems
//!   (`configs/systems/*.toml`), loaded and validated;
//! - [`policy`]: the decode-step policies (`gpu`, `offload`, `attacc`,
//!   `aqpim`) and their itemized latency;
//! - [`pim`]: the PIM attention cost the PIM policies read, from the lowered
//!   programs of `aqpim_attn::pim` (simulated or closed form, memoized).
//!
//! Every hardware figure comes from a preset file, each with its source (the
//! measured H100 anchors, a paper or a datasheet) or "estimate" beside it.

pub mod pim;
pub mod policy;
pub mod presets;

#[cfg(test)]
mod tests;
