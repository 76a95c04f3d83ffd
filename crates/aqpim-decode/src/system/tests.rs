//! Tests of the PIM policies: hand-computed figures on a tiny shape with a
//! PIM cost set by hand (a test double for the arithmetic), the spill rule at
//! the exact capacity boundary, presets, and end-to-end steps through the
//! real lowering (`aqpim_attn::pim`) on the shipped presets.

use aqpim_attn::pim::{LayerJob, PimCost};
use aqpim_pim::Device;

use crate::error::{DecodeError, Result};
use crate::system::pim::{largest_fitting, PimMode, PimTimer, SimTimer};
use crate::system::policy::{decode_step, decode_step_with, Policy, Step};
use crate::system::presets::{self, ModelSpec, SystemSpec};

/// Hand-set PIM costs: a layer takes `1000 ns` per token per cache (FP16
/// tokens included) plus `6400 ns` for a quantization flush; a bank row holds
/// 10 token-caches; the device has 8 rows per bank.
struct Fake {
    device: Device,
}

impl Fake {
    fn new() -> Fake {
        let mut device = aqpim_pim::DeviceSpec::hbm3_attacc().resolve().unwrap();
        device.org.rows = 8;
        Fake { device }
    }
}

impl PimTimer for Fake {
    fn device(&self) -> &Device {
        &self.device
    }
    fn layer(&self, job: &LayerJob) -> Result<PimCost> {
        let tokens = ((job.ctx + job.fp_tokens) * job.heads) as f64;
        let ns = 1000.0 * tokens + if job.quantize { 6400.0 } else { 0.0 };
        Ok(PimCost {
            ns,
            energy_pj: ns,
            ..PimCost::default()
        })
    }
    fn rows_per_bank(&self, job: &LayerJob) -> Result<usize> {
        Ok(((job.ctx + job.fp_tokens) * job.heads).div_ceil(10))
    }
    fn quantize_block(&self, _job: &LayerJob) -> Result<usize> {
        // One token per bank: the tiny heads have one code column per token.
        Ok(self.device.org.banks_per_channel)
    }
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
name = "tiny-pim"
[gpu]
name = "g"
memory_bytes = 10000
peak_hbm_gbps = 10.0
attn_fixed_ms = 0.5
attn_gbps = 1.0
linear_gbps = 2.0
pq_attn_fixed_ms = 0.1
pq_attn_gbps = 0.2
[link]
name = "l"
gbps = 0.5
[host]
memory_bytes = 100000
[pim]
device = "hbm3-attacc-5.2"
sync_ms = 0.25
kv = "pq:dsub=2,nbits=2,sinks=1,window=2,train_min=4"
"#,
        "tiny-pim",
    )
    .unwrap();
    (m, s)
}

fn step(policy: Policy, ctx: usize, batch: usize) -> Step {
    let (m, s) = tiny();
    decode_step_with(&m, &s, policy, ctx, batch, Some(&Fake::new())).unwrap()
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-12, "{a} != {b}");
}

#[test]
fn attacc_matches_hand_computed_figures() {
    // Batch 3: 3 caches per layer. Rows per layer = ceil(3 n / 10); 2 layers
    // fit 8 rows while ceil(3 n / 10) <= 4, i.e. n <= 13.
    let s = step(Policy::Attacc, 10, 3);
    assert_eq!((s.ctx_in_pim, s.ctx_spilled), (10, 0));
    close(s.linear_ms, 2464.0 / 2e6);
    close(s.pim_attention_ms, 2.0 * 1000.0 * 30.0 / 1e6);
    close(s.sync_ms, 2.0 * 0.25);
    close(s.quantize_ms, 0.0);
    close(s.transfer_ms, 0.0);
    close(s.attention_ms, 0.0);
    close(s.total_ms, s.linear_ms + s.pim_attention_ms + s.sync_ms);
    // 16 B of FP16 KV per token and layer.
    assert_eq!(s.pim_bytes_used, 10 * 3 * 16 * 2);
    assert_eq!(s.pim_rows_used, 2 * 3);
    assert_eq!(s.host_bytes_used, 0);
    assert_eq!(s.energy_check(), 2.0 * 30_000.0 / 1e6);
}

impl Step {
    fn energy_check(&self) -> f64 {
        self.pim_energy_uj
    }
}

#[test]
fn attacc_spill_boundary_is_exact() {
    // One token under and at the boundary: everything in PIM.
    for ctx in [12, 13] {
        let s = step(Policy::Attacc, ctx, 3);
        assert_eq!((s.ctx_in_pim, s.ctx_spilled, s.transfer_ms), (ctx, 0, 0.0));
    }
    // One token over: exactly one token per sequence spills.
    let s = step(Policy::Attacc, 14, 3);
    assert_eq!((s.ctx_in_pim, s.ctx_spilled), (13, 1));
    // 1 token x 3 sequences x 16 B per layer crosses a 0.5 GB/s link, then
    // GPU attention (0.5 ms fixed + 48 B at 1 GB/s) per layer.
    close(s.transfer_ms, 2.0 * 48.0 / 0.5e6);
    close(s.attention_ms, 2.0 * (0.5 + 48.0 / 1e6));
    close(s.pim_attention_ms, 2.0 * 1000.0 * 39.0 / 1e6);
    assert_eq!(s.host_bytes_used, 2 * 48);
    assert_eq!(s.gpu_bytes_used, s.weight_bytes + 48);
    close(
        s.total_ms,
        s.linear_ms + s.attention_ms + s.pim_attention_ms + s.sync_ms + s.transfer_ms,
    );
    close(s.transfer_share, s.transfer_ms / s.total_ms);
}

#[test]
fn aqpim_matches_hand_computed_figures_and_the_kv_accounting() {
    // pq: sinks 1, window 2 -> ctx 13 has 10 encoded tokens and 3 FP16 ones.
    // Rows per layer = ceil(3 (n + 3) / 10) <= 4 while n <= 10.
    let (m, sys) = tiny();
    let s = step(Policy::Aqpim, 13, 3);
    assert_eq!((s.ctx_in_pim, s.ctx_spilled), (13, 0));
    close(s.pim_attention_ms, 2.0 * 1000.0 * 39.0 / 1e6);
    // One 6400 ns flush per layer every 64 steps (64 banks per channel).
    close(s.quantize_ms, 2.0 * 6400.0 / 64.0 / 1e6);
    close(s.sync_ms, 0.5);
    // The bytes in PIM are what `aqpim kv stats` accounts, per sequence.
    let spec: aqpim_kvcache::KvSpec = sys
        .pim
        .as_ref()
        .unwrap()
        .kv
        .as_ref()
        .unwrap()
        .parse()
        .unwrap();
    let shape = aqpim_kvcache::KvShape::new(2, 1, 4).unwrap();
    let rep = aqpim_kvcache::account(&shape, &spec, 13).unwrap();
    assert_eq!(s.pim_bytes_used, 3 * rep.total_bytes);
    // By hand: per layer 3 FP16 tokens x 16 B + 10 tokens x (1 + 1) B of packed
    // codes; 2 x 2 codebooks of 2 x 4 x 2 f32.
    assert_eq!(rep.total_bytes, 2 * (48 + 20) + 4 * 64);
    // Codebook training: 2 codebooks x 2 layers x 1 head x 3 sequences,
    // 2 n ksub d FLOP x 25 iterations, n = 10 encoded tokens.
    let f = 2.0 * 10.0 * 4.0 * 4.0 * 25.0 * 2.0 * 2.0 * 3.0;
    assert!(
        s.codebook_training_ms.is_none(),
        "tiny-pim states no FLOP peak"
    );
    let _ = (f, m);
}

#[test]
fn aqpim_spill_boundary_is_exact() {
    for ctx in [12, 13] {
        let s = step(Policy::Aqpim, ctx, 3);
        assert_eq!((s.ctx_in_pim, s.ctx_spilled), (ctx, 0));
    }
    // ctx 14: 11 encoded tokens, 10 fit: one spills, as codes (1 + 1 B).
    let s = step(Policy::Aqpim, 14, 3);
    assert_eq!((s.ctx_in_pim, s.ctx_spilled), (13, 1));
    close(s.transfer_ms, 2.0 * 6.0 / 0.5e6);
    close(s.attention_ms, 2.0 * (0.1 + 6.0 / 0.2e6));
    assert_eq!(s.host_bytes_used, 12);
    // ctx 20: 17 encoded, 7 spill.
    let s = step(Policy::Aqpim, 20, 3);
    assert_eq!((s.ctx_in_pim, s.ctx_spilled), (13, 7));
    close(s.transfer_ms, 2.0 * 42.0 / 0.5e6);
}

#[test]
fn prefill_and_training_estimates_are_hand_computed() {
    let (m, mut s) = tiny();
    s.gpu.fp16_tflops = Some(1e-9); // 1 FLOP per ms at efficiency 1
    s.gpu.compute_efficiency = Some(1.0);
    let st = decode_step_with(&m, &s, Policy::Aqpim, 13, 3, Some(&Fake::new())).unwrap();
    // Linear params 2 x 576; attention 2 layers x 2 x (2 x 4) x 13^2 per sequence.
    let prefill = 2.0 * 1152.0 * 13.0 * 3.0 + 2.0 * 2.0 * 8.0 * 169.0 * 3.0;
    close(st.prefill_ms.unwrap(), prefill);
    let train = 2.0 * (2.0 * 10.0 * 4.0 * 4.0 * 25.0) * (2.0 * 3.0);
    close(st.codebook_training_ms.unwrap(), train);
}

#[test]
fn nothing_fits_and_no_link_are_clear_errors() {
    let (m, mut s) = tiny();
    // 3 FP16 tokens x 30 caches = 9 rows per layer: nothing fits 8 rows.
    let e = decode_step_with(&m, &s, Policy::Aqpim, 13, 30, Some(&Fake::new())).unwrap_err();
    assert!(e.to_string().contains("sink and window tokens"), "{e}");
    s.link = None;
    s.host = None;
    let e = decode_step_with(&m, &s, Policy::Attacc, 14, 3, Some(&Fake::new())).unwrap_err();
    assert!(matches!(e, DecodeError::Capacity { .. }), "{e}");
    assert!(e.to_string().contains("no host link"), "{e}");
    let host = presets::system("h100+host").unwrap();
    let e = decode_step(&m, &host, Policy::Attacc, 10, 1).unwrap_err();
    assert!(e.to_string().contains("no PIM stacks"), "{e}");
    let attacc = presets::system("h100+attacc").unwrap();
    let e = decode_step(&m, &attacc, Policy::Aqpim, 10, 1).unwrap_err();
    assert!(e.to_string().contains("no PQ format"), "{e}");
}

#[test]
fn largest_fitting_searches_exactly() {
    for limit in [0usize, 1, 7, 99, 100] {
        let r = largest_fitting(100, |n| Ok(n <= limit)).unwrap();
        assert_eq!(r, Some(limit));
    }
    assert_eq!(largest_fitting(5, |_| Ok(false)).unwrap(), None);
}

#[test]
fn pim_presets_load_and_bad_ones_are_clear() {
    for name in ["h100+attacc", "h100+aqpim"] {
        let s = presets::system(name).unwrap();
        let p = s.pim.as_ref().unwrap();
        let d = p.device().unwrap();
        // AttAcc: 5 stacks x 16 GB.
        assert_eq!(d.org.stacks, 5);
        assert_eq!(presets::device_bytes(&d), 5 << 34);
    }
    assert!(presets::system("h100+aqpim")
        .unwrap()
        .pim
        .unwrap()
        .pq_spec()
        .unwrap()
        .is_some());
    let text = presets::SYSTEM_PRESETS
        .iter()
        .find(|(n, _)| *n == "h100+aqpim")
        .unwrap()
        .1;
    let bad = |from: &str, to: &str| {
        presets::parse_system(&text.replace(from, to), "bad")
            .unwrap_err()
            .to_string()
    };
    let e = bad("stacks = 5 ", "stacks = 0 ");
    assert!(e.contains("no capacity"), "{e}");
    let e = bad("device = \"hbm3-attacc-5.2\"", "device = \"hbm9\"");
    assert!(
        e.contains("hbm3-attacc-5.2"),
        "known devices are listed: {e}"
    );
    let e = bad(
        "kv = \"pq:dsub=4,nbits=8,sinks=4,window=128\"",
        "kv = \"scalar:bits=2\"",
    );
    assert!(e.contains("not a pq: spec"), "{e}");
    let e = bad("sync_ms = 0.010", "sync_ms = -1.0");
    assert!(e.contains("pim.sync_ms"), "{e}");
    let e = bad("compute_efficiency = 0.6", "compute_efficiency = 1.5");
    assert!(e.contains("exceeds 1"), "{e}");
}

// End to end through the real lowering.

fn real(policy: Policy, model: &str, ctx: usize, batch: usize) -> Step {
    let m = presets::model(model).unwrap();
    let mut s = presets::system("h100+aqpim").unwrap();
    if m.head_dim == 64 {
        // In-memory quantization writes whole 32 B code columns: 32 one-byte
        // codes per token, so dsub 2 for 64-element heads.
        s.pim.as_mut().unwrap().kv = Some("pq:dsub=2,nbits=8,sinks=4,window=128".into());
    }
    decode_step(&m, &s, policy, ctx, batch).unwrap()
}

#[test]
fn real_pim_steps_itemize_and_fit() {
    for policy in [Policy::Attacc, Policy::Aqpim] {
        let s = real(policy, "smollm2-135m", 4096, 2);
        assert_eq!(s.ctx_spilled, 0);
        assert!(s.pim_attention_ms > 0.0 && s.sync_ms > 0.0, "{s:?}");
        let parts = s.linear_ms
            + s.attention_ms
            + s.pim_attention_ms
            + s.quantize_ms
            + s.sync_ms
            + s.transfer_ms;
        assert!((s.total_ms - parts).abs() < 1e-9);
        assert!(s.pim_rows_used <= s.pim_rows);
        assert!(s.pim_bytes_used <= s.pim_capacity_bytes);
    }
    let f = real(Policy::Attacc, "smollm2-135m", 4096, 2);
    let q = real(Policy::Aqpim, "smollm2-135m", 4096, 2);
    assert!(q.quantize_ms > 0.0 && f.quantize_ms == 0.0);
    // PQ at 4 bits (dsub 2) plus FP16 sinks, window and per-head codebooks
    // (30 layers x 3 heads x 2 x 64 KB per sequence): 2.5 times smaller at 4K.
    assert!(
        q.pim_bytes_used * 2 < f.pim_bytes_used,
        "{} vs {}",
        q.pim_bytes_used,
        f.pim_bytes_used
    );
}

#[test]
fn capacity_crossover_fp16_spills_pq_does_not() {
    // Llama-2-7B, 8 x 64K tokens: 275 GB of FP16 KV against 80 GB of stacks.
    let f = real(Policy::Attacc, "llama2-7b", 65536, 8);
    let q = real(Policy::Aqpim, "llama2-7b", 65536, 8);
    assert!(
        f.ctx_spilled > 0 && q.ctx_spilled == 0,
        "{} {}",
        f.ctx_spilled,
        q.ctx_spilled
    );
    assert!(f.transfer_share > 0.9, "{}", f.transfer_share);
    assert!(q.total_ms * 3.4 < f.total_ms);
    // Where both fit, neither spills.
    let f = real(Policy::Attacc, "llama2-7b", 4096, 1);
    assert_eq!(f.ctx_spilled, 0);
}

#[test]
fn analytic_path_holds_within_5_percent_of_the_simulator() {
    let m = presets::model("llama2-7b").unwrap();
    let s = presets::system("h100+aqpim").unwrap();
    let dev = || s.pim.as_ref().unwrap().device().unwrap();
    let sim = SimTimer::new(dev(), PimMode::Simulated);
    let ana = SimTimer::new(dev(), PimMode::Analytic);
    for policy in [Policy::Attacc, Policy::Aqpim] {
        for ctx in [4096, 16384, 65536] {
            for batch in [1, 8] {
                let a = decode_step_with(&m, &s, policy, ctx, batch, Some(&sim)).unwrap();
                let b = decode_step_with(&m, &s, policy, ctx, batch, Some(&ana)).unwrap();
                let rel = (b.pim_attention_ms - a.pim_attention_ms).abs() / a.pim_attention_ms;
                assert!(
                    rel < 0.05,
                    "{policy} ctx {ctx} batch {batch}: {} vs {}",
                    a.pim_attention_ms,
                    b.pim_attention_ms
                );
                let rel = (b.total_ms - a.total_ms).abs() / a.total_ms;
                assert!(rel < 0.05, "{policy} ctx {ctx} batch {batch}: step");
            }
        }
    }
}

#[test]
fn sanity_row_small_contexts_land_on_the_h100_figures() {
    // shared/data/h100_anchors.jsonl: one Llama-2-7B layer, batch 1: linear
    // 0.1874 ms; attention 0.0597 ms (4K), 0.126 ms (16K).
    let m = presets::model("llama2-7b").unwrap();
    for (ctx, attn) in [(4096, 0.0597), (16384, 0.126)] {
        let g = decode_step(&m, &presets::system("h100").unwrap(), Policy::Gpu, ctx, 1).unwrap();
        let per_layer = (g.linear_ms - m.head_weight_bytes() as f64 / 2160e6) / 32.0;
        assert!((per_layer - 0.1874).abs() < 0.05 * 0.1874, "{per_layer}");
        assert!((g.attention_ms / 32.0 - attn).abs() < 0.05 * attn);
        // attacc: the same measured linear layers; attention in PIM, no faster
        // than the stacks' internal bandwidth allows and no slower than the GPU's.
        let a = real(Policy::Attacc, "llama2-7b", ctx, 1);
        assert_eq!(a.linear_ms, g.linear_ms);
        assert!(a.pim_attention_ms + a.sync_ms < g.attention_ms, "{ctx}");
        assert!(a.total_ms < g.total_ms && a.total_ms > g.linear_ms);
    }
}
