//! Compressed KV-cache storage (layer 2): a model's keys and values held as
//! product-quantization codes with their codebooks, plus full-precision
//! attention-sink and recent-window tokens, with exact memory accounting and
//! safe persistence.
//!
//! This crate depends on `aqpim-pq` only. It owns *how* a cache is stored, not
//! where it lives (CPU memory or PIM banks) nor how attention reads it.
