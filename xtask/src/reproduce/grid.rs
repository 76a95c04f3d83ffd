//! Which runs `cargo xtask reproduce` makes: the serving view (one
//! `aqpim simulate serve` per context list), the equal-batch sweep of every
//! policy on the PIM system, and the offload sweep on the host system. The
//! defaults are the paper's (Llama-2-7B on `h100+aqpim`); `--quick` is a small
//! grid for CI.

/// The grids of one reproduction, as the CLI's comma-separated lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grid {
    /// Model preset or TOML file.
    pub model: String,
    /// System preset or TOML file of the serve run and the equal-batch sweep.
    pub system: String,
    /// Contexts of the serve run.
    pub serve_ctx: String,
    /// Contexts of the equal-batch sweep.
    pub ctx: String,
    /// Batches of the equal-batch sweep.
    pub batch: String,
    /// Contexts of the offload sweep (on `h100+host`).
    pub offload_ctx: String,
    /// Batches of the offload sweep.
    pub offload_batch: String,
    /// PIM attention cost of the sweeps: `simulated` or `analytic`.
    pub pim_model: String,
    /// PIM attention cost of the serve run.
    pub serve_pim_model: String,
    /// Contexts of the cross-model serve run.
    pub models_ctx: String,
    /// Models of the sensitivity runs (one setting changed at a time).
    pub sensitivity_models: Vec<String>,
    /// Contexts of the sensitivity runs.
    pub sensitivity_ctx: String,
}

/// The policies of the serve run and the equal-batch sweep, in plot order.
pub const POLICIES: &str = "gpu,offload,attacc,aqpim";

/// The system whose offload transfer share is compared with the H100
/// measurements.
pub const OFFLOAD_SYSTEM: &str = "h100+host";

/// The paper's system with the FP16 PIM baseline on the same stacks, used to
/// check that `attacc` on `h100+aqpim` is the same design.
pub const ATTACC_SYSTEM: &str = "h100+attacc";

/// The paper's system with AQPIM's units cut to AttAcc's PIM area per DRAM
/// die: the serve run's second design point for `aqpim`.
pub const EQUAL_AREA_SYSTEM: &str = "h100+aqpim-equal-area";

impl Grid {
    /// The full grid: contexts 4K-128K, batches 1-256 (linear layers turn
    /// compute-bound past about 64).
    pub fn full() -> Grid {
        Grid {
            model: "llama2-7b".into(),
            system: "h100+aqpim".into(),
            serve_ctx: "4K,8K,16K,32K,64K,128K".into(),
            ctx: "4K,8K,16K,32K,64K,128K".into(),
            batch: "1,4,16,64,256".into(),
            offload_ctx: "4K,16K,32K".into(),
            offload_batch: "1,2,4,8".into(),
            pim_model: "simulated".into(),
            serve_pim_model: "simulated".into(),
            models_ctx: "8K,32K,128K".into(),
            sensitivity_models: vec!["llama2-7b".into(), "llama3-8b".into()],
            sensitivity_ctx: "4K,32K,64K".into(),
        }
    }

    /// The quick grid (CI): two contexts, two batches, the analytic PIM model
    /// for the serve run (its batch search times many points).
    pub fn quick() -> Grid {
        Grid {
            serve_ctx: "4K,32K".into(),
            ctx: "4K,64K".into(),
            batch: "1,8".into(),
            offload_ctx: "4K,32K".into(),
            offload_batch: "1,8".into(),
            serve_pim_model: "analytic".into(),
            models_ctx: "32K".into(),
            sensitivity_models: vec!["llama2-7b".into()],
            sensitivity_ctx: "32K".into(),
            ..Grid::full()
        }
    }
}
