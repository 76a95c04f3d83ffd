//! The flags every subcommand names the same way (docs/cli.md): a model shape
//! (`--model NAME|FILE` or `--model-shape L,KVH,D` with `--q-heads`), sizes
//! with `K`/`M` suffixes, and devices taken as a preset or a file.

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::limits;

/// A size flag's value: digits with an optional `K` (x1024) or `M`
/// (x1024^2) suffix, for clap's `value_parser`.
pub fn count(v: &str) -> std::result::Result<usize, String> {
    crate::simulate::parse_count(v).map_err(|e| format!("`{}`: {e}", limits::cut(v)))
}

/// The model shape of a command that needs one: a model preset or TOML file,
/// or the explicit shape.
#[derive(Debug, Args)]
pub struct ShapeArgs {
    /// Model: an aqpim-system preset (llama2-7b, llama2-13b, llama2-70b,
    /// llama3-8b, llama3-70b, mistral-7b, smollm2-135m) or a model TOML file.
    #[arg(long, value_name = "NAME|FILE", conflicts_with = "model_shape")]
    model: Option<String>,
    /// The shape instead of --model: layers, KV heads, head size (Llama-2-7B: 32,32,128).
    #[arg(long, value_name = "L,KVH,D")]
    model_shape: Option<String>,
    /// Query heads per layer with --model-shape (grouped-query attention; default: KVH).
    #[arg(long, value_name = "N", requires = "model_shape")]
    q_heads: Option<usize>,
}

/// A resolved model shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The preset or file name, or `L,KVH,D` for an explicit shape.
    pub name: String,
    pub layers: usize,
    pub kv_heads: usize,
    pub q_heads: usize,
    pub head_dim: usize,
}

impl ShapeArgs {
    /// The shape; `default` is the model preset used when neither flag is
    /// given (`None`: one of them is required).
    pub fn resolve(&self, default: Option<&str>) -> Result<Shape> {
        if let Some(text) = &self.model_shape {
            let [layers, kv_heads, head_dim] = limits::model_shape("--model-shape", text)?;
            let q_heads = self.q_heads.unwrap_or(kv_heads);
            if kv_heads == 0 || q_heads == 0 || !q_heads.is_multiple_of(kv_heads) {
                bail!("--q-heads {q_heads}: query heads must be a positive multiple of the {kv_heads} KV heads of --model-shape");
            }
            return Ok(Shape {
                name: format!("{layers},{kv_heads},{head_dim}"),
                layers,
                kv_heads,
                q_heads,
                head_dim,
            });
        }
        let name = match (&self.model, default) {
            (Some(m), _) => m.as_str(),
            (None, Some(d)) => d,
            (None, None) => bail!("give --model NAME|FILE.toml or --model-shape L,KVH,D"),
        };
        // The library's error names the value and how it was taken.
        let m = aqpim_system::presets::model(name).context("--model")?;
        Ok(Shape {
            name: m.name,
            layers: m.layers,
            kv_heads: m.kv_heads,
            q_heads: m.heads,
            head_dim: m.head_dim,
        })
    }
}

/// A PIM device: a preset of `aqpim-pim` by name, or a device TOML file,
/// with `overrides` (`--set device.KEY=VALUE` without `device.`) set in its
/// table before it is read. The error says which it was taken as and what
/// was tried.
pub fn device_spec(
    name_or_path: &str,
    overrides: &[aqpim_pim::Override],
) -> Result<aqpim_pim::DeviceSpec> {
    Ok(aqpim_pim::DeviceSpec::preset_or_file(
        name_or_path,
        overrides,
    )?)
}

/// The name of a cache spec as output shows it: the dense cache is `fp16`.
pub fn kv_name(spec: &aqpim_kvcache::KvSpec) -> String {
    match spec {
        aqpim_kvcache::KvSpec::Dense => "fp16".to_string(),
        other => other.to_string(),
    }
}

/// A duration given in ms, shown in the unit that reads best (ns, us, ms, s).
pub fn duration(ms: f64) -> String {
    if ms < 1e-3 {
        format!("{:.1} ns", ms * 1e6)
    } else if ms < 1.0 {
        format!("{:.3} us", ms * 1e3)
    } else if ms < 1e4 {
        format!("{ms:.3} ms")
    } else {
        format!("{:.2} s", ms / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_pick_their_unit() {
        assert_eq!(duration(0.0000354), "35.4 ns");
        assert_eq!(duration(0.5), "500.000 us");
        assert_eq!(duration(12.0), "12.000 ms");
        assert_eq!(duration(20_000.0), "20.00 s");
    }

    #[test]
    fn sizes_take_k_and_m() {
        assert_eq!(count("32K"), Ok(32768));
        assert_eq!(count("1M"), Ok(1 << 20));
        assert_eq!(count("700"), Ok(700));
        assert!(count("3x").is_err());
    }

    #[test]
    fn devices_say_what_they_were_taken_as() {
        assert!(device_spec("hbm3-attacc-5.2", &[]).is_ok());
        let e = format!("{:#}", device_spec("no-such-device", &[]).unwrap_err());
        assert!(
            e.contains("not a device preset") && e.contains("hbm3-attacc-5.2"),
            "{e}"
        );
        assert!(e.contains("tried"), "{e}");
    }
}
