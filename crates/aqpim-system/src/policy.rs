//! The policies: where the KV cache lives and how a decode step uses it.

use serde::Serialize;

use crate::error::{Result, SystemError};

/// Where the KV cache lives and how a step uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Weights and KV cache in GPU memory.
    Gpu,
    /// KV cache in host memory, copied to the GPU layer by layer every step
    /// (FlexGen-style); with `overlap`, layer `l + 1`'s copy runs while layer
    /// `l` computes.
    Offload {
        /// Overlap transfers with compute.
        overlap: bool,
    },
    /// FP16 KV cache in the PIM stacks, attention in PIM (AttAcc); the
    /// part that does not fit spills to host memory.
    Attacc,
    /// The KV cache as PQ codes in the PIM stacks, attention on codes and
    /// quantization of new tokens in PIM (AQPIM); the same spill rule.
    Aqpim,
}

impl Policy {
    /// Every policy, in the order the CLI lists them.
    pub const ALL: [Policy; 5] = [
        Policy::Gpu,
        Policy::Offload { overlap: false },
        Policy::Offload { overlap: true },
        Policy::Attacc,
        Policy::Aqpim,
    ];

    /// Whether the policy runs attention in PIM.
    pub fn uses_pim(self) -> bool {
        matches!(self, Policy::Attacc | Policy::Aqpim)
    }
}

impl std::fmt::Display for Policy {
    /// The name `FromStr` reads back: `gpu`, `offload`, `offload-overlap`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Gpu => "gpu",
            Policy::Offload { overlap: false } => "offload",
            Policy::Offload { overlap: true } => "offload-overlap",
            Policy::Attacc => "attacc",
            Policy::Aqpim => "aqpim",
        })
    }
}

impl Serialize for Policy {
    /// Serialized by name, as the CLI and the CSV write it.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for Policy {
    type Err = SystemError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gpu" => Ok(Policy::Gpu),
            "offload" => Ok(Policy::Offload { overlap: false }),
            "offload-overlap" => Ok(Policy::Offload { overlap: true }),
            "attacc" => Ok(Policy::Attacc),
            "aqpim" => Ok(Policy::Aqpim),
            other => Err(SystemError::InvalidArgument {
                name: "policy",
                reason: format!(
                    "`{other}` is not a policy (gpu, offload, offload-overlap, attacc, aqpim)"
                ),
            }),
        }
    }
}
