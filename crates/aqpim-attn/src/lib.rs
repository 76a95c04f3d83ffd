//! Attention on compressed KV caches (layer 4): fast CPU kernels that compute
//! decode attention directly on PQ codes (lookup-table scores, per-centroid
//! value histograms), dense baselines, and the lowering of the same
//! computation to PIM programs that `aqpim-pim` executes.
//!
//! Depends on `aqpim-kvcache` (and through it `aqpim-pq`) and on `aqpim-pim`.
