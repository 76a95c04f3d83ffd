//! Compressed KV-cache storage (layer 2): a model's keys and values held as
//! product-quantization codes with their codebooks, plus full-precision
//! attention-sink and recent-window tokens, with exact memory accounting and
//! safe persistence.
//!
//! This crate depends on `aqpim-pq` only. It owns *how* a cache is stored, not
//! where it lives (CPU memory or PIM banks) nor how attention reads it.
//!
//! Every cache implements [`KvStore`]; three stores exist, chosen by a
//! [`KvSpec`] (parsed from the strings the CLI's `--kv` takes):
//!
//! | spec | store | what it keeps |
//! |---|---|---|
//! | `dense` / `fp16` | [`DenseStore`] | every token in FP16 (exact baseline) |
//! | `scalar:bits=2,group=32,window=128` | [`ScalarStore`] | KIVI: keys per channel, values per token, FP16 window |
//! | `scalar:bits=4,group=32,mx=true` | [`ScalarStore`] | MX-style: per-token channel groups with a shared E8M0 exponent ([`mx`]), FP16 window |
//! | `pq:dsub=4,nbits=8,sinks=4,window=128` | [`PqStore`] | PQ codes, K and V codebooks, FP16 sinks and window |
//!
//! [`account`] gives the memory of a cache from its shape, spec and context
//! length without allocating it; real stores report through the same code
//! ([`KvStore::memory_report`]). The on-disk format, the accounting formulas
//! and the buffer layouts are in `docs/kvcache.md`.
//!
//! ```
//! use aqpim_kvcache::{KvShape, KvSpec, KvStore};
//! let shape = KvShape::new(2, 2, 16).unwrap();
//! let spec: KvSpec = "pq:dsub=4,nbits=4,sinks=2,window=8".parse().unwrap();
//! let mut cache = aqpim_kvcache::build(shape, &spec).unwrap();
//! let prompt = aqpim_pq::synth::kv_like(2 * 64, 16, 1); // 2 heads x 64 tokens x 16
//! for layer in 0..2 {
//!     cache.prefill(layer, &prompt, &prompt).unwrap();
//! }
//! let view = cache.as_pq().unwrap().head(0, 1).unwrap();
//! assert_eq!(view.key_codes.tokens(), 64 - 2 - 8);
//! assert_eq!(cache.memory_report().total_bytes, cache.heap_bytes().used);
//! ```

// Keys and values live in parallel `[_; 2]` arrays indexed by part; index loops read best.
#![allow(clippy::needless_range_loop)]
#![forbid(unsafe_code)]

mod accounting;
pub mod bench;
mod dense;
mod error;
pub mod limits;
pub mod mx;
mod persist;
mod pq_store;
mod scalar;
mod shape;
mod spec;
mod store;
pub mod synth;
mod tokens;

pub use accounting::{
    account, account_regions, account_regions_by_class, BitsPerElement, ComponentBytes, HeapBytes,
    MemoryReport, Regions,
};
pub use dense::DenseStore;
pub use error::{KvError, KvPart, Result};
pub use persist::{KV_MAGIC, KV_MIN_VERSION, KV_VERSION};
pub use pq_store::{fit_transform, Codes, OutlierToken, PqHeadView, PqStore};
pub use scalar::{ScalarHeadView, ScalarStore};
pub use shape::KvShape;
pub use spec::{
    CodebookScope, CodebookSharing, KeyMetric, KvSpec, LayerSet, PqRegions, PqSpec, PqTraining,
    PqTransforms, ScalarSpec, SubspaceLayout, WideLayers,
};
pub use store::{build, from_bytes, load, DenseKv, KvStore};
pub use tokens::TokenSlices;
