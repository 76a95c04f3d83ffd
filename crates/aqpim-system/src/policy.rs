//! The policies: where the KV cache lives and how a decode step uses it.

use serde::Serialize;

use crate::error::{Result, SystemError};

/// Where the KV cache lives and how a step uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Weights and KV cache in GPU memory.
    Gpu,
    /// Weights and a scalar-quantized KV cache (KIVI- or MX-style, the
    /// system's `[gpu] kv` format) in GPU memory, attention by a fused
    /// low-bit kernel at `gpu.quant_attn_gbps`.
    GpuQuant,
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
    /// The KV cache as scalar codes (the system's `[pim] kv`, a `scalar:`
    /// format) in the PIM stacks, attention on dequantize-and-MAC units
    /// shared by two banks (Pimba-style); new tokens quantized by the GPU.
    ScalarPim,
}

impl Policy {
    /// Every policy, in the order the CLI lists them.
    pub const ALL: [Policy; 7] = [
        Policy::Gpu,
        Policy::GpuQuant,
        Policy::Offload { overlap: false },
        Policy::Offload { overlap: true },
        Policy::Attacc,
        Policy::ScalarPim,
        Policy::Aqpim,
    ];

    /// Whether the policy runs attention in PIM.
    pub fn uses_pim(self) -> bool {
        matches!(self, Policy::Attacc | Policy::Aqpim | Policy::ScalarPim)
    }

    /// The design a system is built for, the CLI's one default for
    /// `--policy`: PIM stacks holding a `pq:` format run `aqpim`, a
    /// `scalar:` format `scalar-pim`, none `attacc`; without stacks, a
    /// quantized GPU cache (`[gpu] kv`) runs `gpu-quant`, host memory
    /// `offload`, and a GPU alone `gpu`.
    pub fn own(system: &crate::presets::SystemSpec) -> Policy {
        match (&system.pim, &system.gpu.kv, &system.host) {
            // A preset's format was parsed when it loaded; one that does not
            // parse is left to the policy's own error.
            (Some(p), ..) => match p.kv_spec() {
                Ok(Some(aqpim_kvcache::KvSpec::Scalar(_))) => Policy::ScalarPim,
                Ok(None) => Policy::Attacc,
                _ => Policy::Aqpim,
            },
            (None, Some(_), _) => Policy::GpuQuant,
            (None, None, Some(_)) => Policy::Offload { overlap: false },
            (None, None, None) => Policy::Gpu,
        }
    }
}

impl std::fmt::Display for Policy {
    /// The name `FromStr` reads back: `gpu`, `offload`, `offload-overlap`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Gpu => "gpu",
            Policy::GpuQuant => "gpu-quant",
            Policy::Offload { overlap: false } => "offload",
            Policy::Offload { overlap: true } => "offload-overlap",
            Policy::Attacc => "attacc",
            Policy::Aqpim => "aqpim",
            Policy::ScalarPim => "scalar-pim",
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
            "gpu-quant" => Ok(Policy::GpuQuant),
            "scalar-pim" => Ok(Policy::ScalarPim),
            "offload" => Ok(Policy::Offload { overlap: false }),
            "offload-overlap" => Ok(Policy::Offload { overlap: true }),
            "attacc" => Ok(Policy::Attacc),
            "aqpim" => Ok(Policy::Aqpim),
            other => Err(SystemError::InvalidArgument {
                name: "policy",
                reason: format!(
                    "`{other}` is not a policy (gpu, gpu-quant, offload, offload-overlap, attacc, scalar-pim, aqpim)"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Policy;

    /// Every shipped system preset's own design, by hand from its file.
    #[test]
    fn each_system_preset_names_its_own_design() {
        let want = [
            ("h100", "gpu"),
            ("h100+host", "offload"),
            ("h100+attacc", "attacc"),
            ("h100+gpu-quant", "gpu-quant"),
            ("h100+scalar-pim", "scalar-pim"),
            ("h100+aqpim", "aqpim"),
            ("h100+aqpim-equal-area", "aqpim"),
        ];
        assert_eq!(want.len(), crate::presets::SYSTEM_PRESETS.len());
        for (name, policy) in want {
            let s = crate::presets::system(name).unwrap();
            assert_eq!(Policy::own(&s).to_string(), policy, "{name}");
        }
    }
}
