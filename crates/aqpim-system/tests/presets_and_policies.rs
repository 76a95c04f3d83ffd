//! System model tests through the public API: every preset loads, bad presets are clear errors, the policies give hand-computed
//! figures on a tiny shape, the capacity rule is exact, and the offload model
//! lands on the measured H100 transfer shares.

use aqpim_system::presets::{self, ModelSpec, SystemSpec, MODEL_PRESETS, SYSTEM_PRESETS};
use aqpim_system::SystemError;
use aqpim_system::{decode_step, Policy};

#[test]
fn every_preset_loads_and_validates() {
    for (name, _) in MODEL_PRESETS {
        let m = presets::model(name).unwrap();
        assert_eq!(&m.name, name);
    }
    for (name, _) in SYSTEM_PRESETS {
        assert_eq!(&presets::system(name).unwrap().name, name);
    }
    let l7 = presets::model("llama2-7b").unwrap();
    // The H100 anchors measured 404,750,336 weight bytes per Llama-2-7B layer.
    assert_eq!(l7.layer_weight_bytes(), 404_750_336);
    assert_eq!(l7.kv_bytes_per_token_layer(), 2 * 32 * 128 * 2);
    let smol = presets::model("smollm2-135m").unwrap();
    assert_eq!(
        (smol.layers, smol.heads, smol.kv_heads, smol.head_dim),
        (30, 9, 3, 64)
    );
    // Round trip through serde.
    let text = toml::to_string(&l7).unwrap();
    assert_eq!(presets::parse_model(&text, "x").unwrap(), l7);
}

#[test]
fn bad_presets_are_clear_errors() {
    let model = |patch: &str| {
        let text = MODEL_PRESETS[0]
            .1
            .lines()
            .filter(|l| !l.starts_with(patch.split(' ').next().unwrap()))
            .collect::<Vec<_>>()
            .join("\n");
        presets::parse_model(&format!("{text}\n{patch}"), "bad")
    };
    let e = model("heads = 30").unwrap_err();
    assert!(
        e.to_string()
            .contains("heads = 30 does not divide hidden = 4096"),
        "{e}"
    );
    let e = model("kv_heads = 5").unwrap_err();
    assert!(e.to_string().contains("does not divide heads"), "{e}");
    let e = model("layers = 0").unwrap_err();
    assert!(e.to_string().contains("layers = 0 must be in 1..="), "{e}");
    let e = model("layers = 4294967296").unwrap_err();
    assert!(e.to_string().contains("must be in 1..="), "{e}");
    assert!(presets::parse_model("name = \"x\"\nlayers = 1", "bad").is_err());
    let e =
        presets::parse_model(&format!("{}\ncolour = 3", MODEL_PRESETS[0].1), "bad").unwrap_err();
    assert!(e.to_string().contains("colour"), "{e}");

    let system =
        |from: &str, to: &str| presets::parse_system(&SYSTEM_PRESETS[1].1.replace(from, to), "bad");
    let e = system("memory_bytes = 85039980544", "memory_bytes = 0").unwrap_err();
    assert!(e.to_string().contains("gpu.memory_bytes = 0"), "{e}");
    // Figures past any real part are refused, not carried into sums.
    let e = system("attn_fixed_ms = 0.0378", "attn_fixed_ms = 1e308").unwrap_err();
    assert!(e.to_string().contains("gpu.attn_fixed_ms"), "{e}");
    let e = system("linear_gbps = 2160.0", "linear_gbps = 9000.0").unwrap_err();
    assert!(e.to_string().contains("exceeds the peak"), "{e}");
    let e = system("gbps = 54.9", "gbps = -1.0").unwrap_err();
    assert!(e.to_string().contains("link.gbps"), "{e}");
    let e = presets::model("gpt-5").unwrap_err();
    assert!(
        e.to_string().contains("llama2-7b"),
        "known presets are listed: {e}"
    );
    assert!(
        e.to_string().contains("taken as a model preset name"),
        "the error says how the name was taken: {e}"
    );
    // A missing file: taken as a path, and the path tried is named.
    let e = presets::system("missing.toml").unwrap_err();
    assert!(matches!(e, SystemError::Preset { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("taken as a system file path") && text.contains("missing.toml"),
        "{text}"
    );
    // Stacks are the device's: a system file that sets them is refused.
    let stacked = SYSTEM_PRESETS
        .iter()
        .find(|(n, _)| *n == "h100+aqpim")
        .unwrap()
        .1
        .replace("[pim]\n", "[pim]\nstacks = 3\n");
    let e = presets::parse_system(&stacked, "stacked").unwrap_err();
    assert!(e.to_string().contains("[organisation] stacks"), "{e}");
}

fn tiny() -> (ModelSpec, SystemSpec) {
    let m = ModelSpec {
        name: "tiny".into(),
        layers: 2,
        hidden: 8,
        heads: 2,
        kv_heads: 1,
        head_dim: 4,
        ffn: 16,
        vocab: 10,
        source: "test".into(),
    };
    let s = presets::parse_system(
        r#"
name = "tiny-sys"
[gpu]
name = "g"
memory_bytes = 10000
peak_hbm_gbps = 10.0
attn_fixed_ms = 0.5
attn_gbps = 1.0
linear_gbps = 2.0
[link]
name = "l"
gbps = 0.5
[host]
memory_bytes = 100000
"#,
        "tiny-sys",
    )
    .unwrap();
    (m, s)
}

#[test]
fn policies_match_hand_computed_figures() {
    let (m, s) = tiny();
    // Per layer: Q,O 2*8*2*4 = 128, K,V 2*8*1*4 = 64, FFN 3*8*16 = 384 -> 576 params = 1152 B.
    assert_eq!(m.layer_weight_bytes(), 1152);
    assert_eq!(m.head_weight_bytes(), 160);
    assert_eq!(m.weight_bytes(), 2 * 1152 + 2 * 160);
    // KV: 2 * 1 * 4 * 2 B = 16 B per token and layer; ctx 10, batch 3 -> 480 B per layer.
    let step = decode_step(&m, &s, Policy::Gpu, 10, 3).unwrap();
    // GB/s = 1e6 B/ms: linear (2 * 1152 + 160) B / 2e6 = 1.232e-3 ms.
    assert!((step.linear_ms - 2464.0 / 2e6).abs() < 1e-12);
    // attention: 2 * (0.5 + 480 / 1e6) ms.
    assert!((step.attention_ms - 2.0 * (0.5 + 480.0 / 1e6)).abs() < 1e-12);
    assert_eq!(step.transfer_ms, 0.0);
    assert_eq!(step.kv_bytes, 960);
    assert!((step.tokens_per_s - 3.0 / (step.total_ms / 1e3)).abs() < 1e-9);

    let off = decode_step(&m, &s, Policy::Offload { overlap: false }, 10, 3).unwrap();
    // 2 layers x 480 B / 0.5e6 B/ms.
    assert!((off.transfer_ms - 2.0 * 480.0 / 0.5e6).abs() < 1e-12);
    assert!((off.total_ms - (off.linear_ms + off.attention_ms + off.transfer_ms)).abs() < 1e-12);
    assert_eq!(
        (off.host_bytes_used, off.gpu_bytes_used),
        (960, m.weight_bytes() + 480)
    );
    // With overlap, one layer's copy hides under the other's compute.
    let ov = decode_step(&m, &s, Policy::Offload { overlap: true }, 10, 3).unwrap();
    let per_layer_copy = 480.0 / 0.5e6;
    let per_layer_compute = 1152.0 / 2e6 + 0.5 + 480.0 / 1e6;
    assert!((ov.overlapped_ms - f64::min(per_layer_copy, per_layer_compute)).abs() < 1e-12);
    assert!(ov.total_ms < off.total_ms);
    // The GPU-only system cannot offload.
    let gpu_only = presets::system("h100").unwrap();
    assert!(decode_step(&m, &gpu_only, Policy::Offload { overlap: false }, 10, 1).is_err());
    assert!("attac".parse::<Policy>().is_err());
}

#[test]
fn gpu_capacity_boundary_is_exact() {
    let (m, s) = tiny();
    // weights 2624 B; 32 B of KV per token (2 layers x 16 B); 10000 B of memory.
    let fits = (10_000 - m.weight_bytes()) / 32;
    assert!(decode_step(&m, &s, Policy::Gpu, fits as usize, 1).is_ok());
    match decode_step(&m, &s, Policy::Gpu, fits as usize + 1, 1) {
        Err(SystemError::Capacity {
            needed,
            available,
            over,
            ..
        }) => {
            assert_eq!(
                (needed, available),
                (m.weight_bytes() + 32 * (fits + 1), 10_000)
            );
            assert_eq!(over, needed - available);
        }
        other => panic!("expected a capacity error, got {other:?}"),
    }
}

#[test]
fn offload_lands_on_the_measured_h100_transfer_shares() {
    let m = presets::model("llama2-7b").unwrap();
    let s = presets::system("h100+host").unwrap();
    // crates/aqpim-system/presets/data/h100_anchors.jsonl, section "offload" (Llama-2-7B, one layer:
    // copy the KV cache from pinned host memory, then attention): copy share.
    for (batch, ctx, measured) in [
        (1, 4096, 0.9591),
        (1, 16384, 0.9806),
        (1, 32768, 0.9819),
        (8, 4096, 0.9796),
        (8, 16384, 0.9798),
        (8, 32768, 0.9519),
    ] {
        let step = decode_step(&m, &s, Policy::Offload { overlap: false }, ctx, batch).unwrap();
        let share = step.transfer_share_of_attention;
        assert!(
            (share - measured).abs() < 0.03,
            "batch {batch} ctx {ctx}: model {share:.4}, measured {measured}"
        );
    }
    // The GPU sanity row: batch 1, 4K context attention within 5 % of the measured 0.0597 ms per layer.
    let gpu = decode_step(&m, &presets::system("h100").unwrap(), Policy::Gpu, 4096, 1).unwrap();
    let per_layer = gpu.attention_ms / 32.0;
    assert!((per_layer - 0.0597).abs() < 0.05 * 0.0597, "{per_layer}");
}

#[test]
fn policy_names_round_trip() {
    for name in ["gpu", "offload", "offload-overlap", "attacc", "aqpim"] {
        let p: Policy = name.parse().unwrap();
        assert_eq!(p.to_string(), name);
    }
}

/// The serving search finds the true best batch: with the closed form as
/// the timer, the best of every batch up to capacity, by brute force.
#[test]
fn serve_finds_the_best_batch_of_all() {
    use aqpim_system::{PimMode, SimTimer};
    let model = presets::model("llama2-7b").unwrap();
    let system = presets::system("h100+aqpim").unwrap();
    for policy in [Policy::Attacc, Policy::Aqpim] {
        let stacks = system.pim.as_ref().unwrap();
        let timer = SimTimer::new(stacks.device_for(policy).unwrap(), PimMode::Analytic);
        let p = aqpim_system::serve(&model, &system, policy, 32768, Some(&timer)).unwrap();
        let best = (1..=p.max_batch)
            .map(|b| {
                let s =
                    aqpim_system::decode_step_with(&model, &system, policy, 32768, b, Some(&timer))
                        .unwrap();
                (s.tokens_per_s, b)
            })
            .fold((0.0, 0), |a, x| if x.0 > a.0 { x } else { a });
        assert_eq!(p.best_batch, best.1, "{policy}");
        assert_eq!(p.step.pim_device, stacks.device_for(policy).unwrap().name);
    }
}

#[test]
fn every_pq_preset_has_a_measured_format_and_the_headline_refines_its_values() {
    for (name, _) in SYSTEM_PRESETS {
        let s = presets::system(name).unwrap();
        let Some(pim) = s.pim.as_ref() else { continue };
        let Some(spec) = pim.pq_spec().unwrap() else {
            continue;
        };
        let kv = aqpim_kvcache::KvSpec::Pq(spec);
        // The accuracy axis beside tokens/s: a preset's format is measured
        // (presets/data/accuracy.toml), never a format without a row.
        let delta = aqpim_system::accuracy::ppl_delta(&kv)
            .unwrap_or_else(|| panic!("{name}: `{kv}` has no row in accuracy.toml"));
        assert!(delta < 0.02, "{name}: `{kv}` is {delta} over FP16");
    }
    // The headline format holds held-out prose within +2 % only with its
    // value codebooks refined online (docs/results/accuracy.md).
    for name in ["h100+aqpim", "h100+aqpim-equal-area"] {
        let s = presets::system(name).unwrap();
        let spec = s.pim.as_ref().unwrap().pq_spec().unwrap().unwrap();
        assert_eq!(spec.training.refine, [0, 8], "{name}");
    }
}
