//! The system latency model: what one decode step costs on a GPU, with the KV
//! cache in GPU memory or streamed from host memory.
//!
//! - [`presets`]: model shapes (`configs/models/*.toml`) and systems
//!   (`configs/systems/*.toml`), loaded and validated;
//! - [`policy`]: the decode-step policies and their itemized latency.
//!
//! Every hardware figure comes from a preset file, each with its source (the
//! measured H100 anchors or a datasheet) beside it. The PIM policies (`attacc`,
//! `aqpim`) join once attention on codes is lowered to PIM programs
//! (`docs/design/pim-lowering.md`).

pub mod policy;
pub mod presets;
