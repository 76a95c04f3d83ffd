//! What moves the ratio (issue 27): the serving view of `attacc` and `aqpim`
//! on `h100+aqpim` rerun with one setting changed at a time through the
//! CLI's own overrides (`--set`, `--kv`), never a copied preset. The runs
//! write `sensitivity.csv`; the summary's table reads that file alone, so a
//! change of format or figure reaches the table on the next
//! `cargo xtask reproduce`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::rows::Serve;
use super::summary::ctx_label;

/// One setting changed from the preset: a label for the table, the CLI
/// arguments that change it, and where the alternative comes from.
pub struct Variant {
    /// What the row changes.
    pub label: &'static str,
    /// The arguments after the serve run's own (`--set K=V`, `--kv SPEC`).
    pub args: &'static [&'static str],
}

/// The settings the ratio is most sensitive to: codebook scope, the
/// GPU-PIM link (PCIe 5 x16, AttAcc's other option, and PCIe 4 x16), linear
/// layers overlapped with attention, and the other 8-bit format.
pub static VARIANTS: &[Variant] = &[
    Variant {
        label: "as shipped",
        args: &[],
    },
    Variant {
        label: "codebooks per sequence (`pim.codebooks=sequence`)",
        args: &["--set", "pim.codebooks=sequence"],
    },
    Variant {
        label: "link at PCIe 5 x16 (`pim.link_gbps=128`; shipped: NVLink 3, 600)",
        args: &["--set", "pim.link_gbps=128"],
    },
    Variant {
        label: "link at PCIe 4 x16 (`pim.link_gbps=64`)",
        args: &["--set", "pim.link_gbps=64"],
    },
    Variant {
        label: "linear layers overlapped with attention (`pim.overlap_linear=true`)",
        args: &["--set", "pim.overlap_linear=true"],
    },
    Variant {
        label: "format `pq:dsub=4,nbits=8` (`--kv`)",
        args: &["--kv", "pq:dsub=4,nbits=8"],
    },
];

/// Every model and variant into `out/sensitivity.csv`.
pub fn run(aqpim: &Path, out: &Path, models: &[String], ctx: &str) -> Result<Serve> {
    let mut jobs = Vec::new();
    for model in models {
        for v in VARIANTS {
            let mut args =
                super::frontier::serve_args(model, "h100+aqpim", "attacc,aqpim", ctx, "analytic");
            args.extend(v.args);
            jobs.push(args);
        }
    }
    super::frontier::run_parts(aqpim, out, "sensitivity", &jobs)
}

/// Which variant a row ran: its `--set` list (the `overrides` column) and
/// its `--kv` (the CLI appends it to the system's name).
fn variant_of(system: &str, overrides: &str) -> Option<&'static Variant> {
    let kv = system.split_once(" --kv ").map(|(_, kv)| kv);
    VARIANTS.iter().find(|v| match v.args {
        [] => overrides.is_empty() && kv.is_none(),
        ["--set", kv_set] => overrides == *kv_set && kv.is_none(),
        ["--kv", spec] => overrides.is_empty() && kv == Some(*spec),
        _ => false,
    })
}

/// The summary's section: aqpim / attacc per variant, model and context.
pub fn section(s: &Serve) -> String {
    let mut out = String::new();
    let ctxs = s.ctxs();
    let mut models: Vec<&str> = Vec::new();
    for r in &s.0 {
        if !models.contains(&r.step.model.as_str()) {
            models.push(&r.step.model);
        }
    }
    let _ = writeln!(
        out,
        "\n## What moves the ratio\n\n`sensitivity.csv`: `aqpim simulate serve --model M --system \
         h100+aqpim --policy attacc,aqpim --ctx {} --pim-model analytic` with one setting changed \
         per row, by the CLI's `--set` or `--kv` (the row's `overrides` column, or the `--kv` in its \
         `system`). Cells: aqpim tokens/s over attacc tokens/s, each at its best batch with nothing \
         spilled to host memory; `-` where either policy holds no sequence.\n",
        ctxs.iter().map(|&c| ctx_label(c)).collect::<Vec<_>>().join(",")
    );
    let mut head = String::from("| variant |");
    let mut rule = String::from("|---|");
    for m in &models {
        for &c in &ctxs {
            let _ = write!(head, " {m} {} |", ctx_label(c));
            rule.push_str("---:|");
        }
    }
    let _ = writeln!(out, "{head}\n{rule}");
    for v in VARIANTS {
        let mut line = format!("| {} |", v.label);
        for m in &models {
            for &c in &ctxs {
                let get = |p: &str| {
                    s.0.iter().find(|r| {
                        r.step.model == *m
                            && r.step.ctx == c
                            && r.step.policy == p
                            && variant_of(&r.step.system, &r.step.overrides)
                                .is_some_and(|w| std::ptr::eq(w, v))
                    })
                };
                let cell = match (get("attacc"), get("aqpim")) {
                    (Some(a), Some(q)) if a.step.tokens_per_s > 0.0 => {
                        format!("{:.2}x", q.step.tokens_per_s / a.step.tokens_per_s)
                    }
                    _ => "-".into(),
                };
                let _ = write!(line, " {cell} |");
            }
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_is_recognised_from_its_row() {
        for v in VARIANTS {
            let (system, overrides) = match v.args {
                [] => ("h100+aqpim".to_string(), String::new()),
                ["--set", kv] => ("h100+aqpim".to_string(), kv.to_string()),
                ["--kv", spec] => (format!("h100+aqpim --kv {spec}"), String::new()),
                other => panic!("unexpected variant arguments {other:?}"),
            };
            let found = variant_of(&system, &overrides).unwrap();
            assert!(std::ptr::eq(found, v), "{}", v.label);
        }
        assert!(variant_of("h100+aqpim", "pim.link_gbps=7").is_none());
    }
}
