//! Tests of the PIM policies: hand-computed figures on a tiny shape with a
//! PIM cost set by hand (a test double for the arithmetic), the placement at
//! its exact boundary (PIM, then GPU memory, then host), codebook scopes,
//! the rotation that balances channels across layers, and end-to-end steps
//! and serving points through the real lowering (`aqpim_attn::pim`).

use aqpim_attn::pim::{Footprint, LayerJob, PimCost};
use aqpim_kvcache::CodebookScope;
use aqpim_pim::Device;

use crate::decode::{decode_step, decode_step_with};
use crate::error::{Result, SystemError};
use crate::pim::{balanced_rows, largest_fitting, PimMode, PimTimer, SimTimer};
use crate::policy::Policy;
use crate::presets::{self, ModelSpec, SystemSpec};
use crate::step::Step;

/// Hand-set PIM costs: a layer takes `1000 ns` per token per cache (FP16
/// tokens included) plus `6400 ns` for a quantization flush; every channel
/// holds `ceil(tokens x caches / 10)` rows per layer; the device has 8 rows
/// per bank. The link carries 100 B per cache in, 10 out, 1000 per flush.
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
    fn footprint(&self, job: &LayerJob) -> Result<Footprint> {
        let rows = ((job.ctx + job.fp_tokens) * job.heads).div_ceil(10);
        Ok(Footprint {
            rows_per_channel: vec![rows; self.device.org.channels],
            codebook_copies: 1,
            channels_used: self.device.org.channels,
            link_in_bytes: 100 * job.heads as u64,
            link_out_bytes: 10 * job.heads as u64,
            link_flush_bytes: 1000,
        })
    }
    fn quantize_block(&self, _job: &LayerJob) -> Result<usize> {
        Ok(64)
    }
}

/// Tiny: 2 layers, 2 query heads on 1 KV head of 4 elements; FP16 weights
/// 2 x 1152 + 2 x 160 = 2624 bytes; FP16 KV 16 B per token and layer.
fn tiny(gpu_memory: u64) -> (ModelSpec, SystemSpec) {
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
        &format!(
            r#"
name = "tiny-pim"
[gpu]
name = "g"
memory_bytes = {gpu_memory}
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
link_gbps = 1.0
link_latency_us = 100.0
kv = "pq:dsub=2,nbits=2,sinks=1,window=2,train_min=4"
"#
        ),
        "tiny-pim",
    )
    .unwrap();
    (m, s)
}

const WEIGHTS: u64 = 2624;

fn step_on(gpu_memory: u64, policy: Policy, ctx: usize, batch: usize) -> Step {
    let (m, s) = tiny(gpu_memory);
    decode_step_with(&m, &s, policy, ctx, batch, Some(&Fake::new())).unwrap()
}

fn step(policy: Policy, ctx: usize, batch: usize) -> Step {
    step_on(100_000, policy, ctx, batch)
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-9, "{a} != {b}");
}

/// Bytes of one row across a channel's 64 banks (1 KB rows).
const CHANNEL_ROW: u64 = 64 * 1024;

#[test]
fn attacc_matches_hand_computed_figures() {
    // Batch 3 at ctx 10: 30 token-caches = 3 rows per channel and layer.
    let s = step(Policy::Attacc, 10, 3);
    assert_eq!((s.ctx_in_pim, s.ctx_on_gpu, s.ctx_spilled), (10, 0, 0));
    let linear_layer = 1152.0 / 2e6;
    close(s.linear_ms, 2.0 * linear_layer + 160.0 / 2e6);
    close(s.pim_attention_ms, 2.0 * 0.03);
    // Link per layer: 330 B at 1 GB/s plus two 100 us latencies.
    // Each direction at half the link: 1 GB/s is 0.5 GB/s each way.
    let link = 330.0 / 0.5e6 + 0.2;
    close(s.link_ms, 2.0 * link);
    assert_eq!(s.link_bytes, 660);
    close(s.sync_ms, 2.0 * 0.25);
    close(
        s.quantize_ms + s.table_ms + s.transfer_ms + s.attention_ms,
        0.0,
    );
    // The link pipelines with PIM attention head by head: of the shorter,
    // 1/2 (2 query heads) stays exposed.
    let layer = linear_layer + (link + 0.03 / 2.0) + 0.25;
    close(s.total_ms, 2.0 * layer + 160.0 / 2e6);
    close(s.overlapped_ms, 2.0 * 0.03 / 2.0);
    close(s.total_ms, s.parts_ms() - s.overlapped_ms);
    // Rows: 3 per channel and layer, 2 layers; bytes = rows x channel rows.
    assert_eq!(s.pim_rows_used, 6);
    assert_eq!(s.pim_bytes_used, 2 * 80 * 3 * CHANNEL_ROW);
    assert_eq!(s.kv_bytes, 10 * 3 * 16 * 2);
    close(s.pim_energy_uj, 2.0 * 30_000.0 / 1e6);
}

#[test]
fn overflow_goes_to_gpu_memory_then_to_the_host() {
    // ctx 13 fits 8 rows (ceil(39 / 10) = 4 per layer), ctx 14 does not.
    for ctx in [12, 13] {
        let s = step(Policy::Attacc, ctx, 3);
        assert_eq!((s.ctx_in_pim, s.ctx_on_gpu, s.ctx_spilled), (ctx, 0, 0));
    }
    // One token per sequence over: 3 sequences x 2 layers x 16 B = 96 B
    // (GPU memory holds 144 B besides the weights).
    let s = step_on(WEIGHTS + 144, Policy::Attacc, 14, 3);
    assert_eq!((s.ctx_in_pim, s.ctx_on_gpu, s.ctx_spilled), (13, 1, 0));
    assert_eq!(s.gpu_bytes_used, WEIGHTS + 96);
    // GPU attention of the 48 B per layer it holds, beside PIM attention.
    close(s.attention_ms, 2.0 * (0.5 + 48.0 / 1e6));
    close(s.transfer_ms, 0.0);
    // Two over (192 B): one stays on the GPU beside one layer of the other
    // (48 B), staged each step from the host, over the host link.
    let s = step_on(WEIGHTS + 144, Policy::Attacc, 15, 3);
    assert_eq!((s.ctx_in_pim, s.ctx_on_gpu, s.ctx_spilled), (13, 1, 1));
    close(s.transfer_ms, 2.0 * 48.0 / 0.5e6);
    close(s.attention_ms, 2.0 * (0.5 + 96.0 / 1e6));
    assert_eq!(s.host_bytes_used, 96);
    assert_eq!(s.gpu_bytes_used, WEIGHTS + 96 + 48);
    // The GPU's part (transfer then attention) is longer than the PIM's.
    let linear_layer = 1152.0 / 2e6;
    let gpu = 48.0 / 0.5e6 + 0.5 + 96.0 / 1e6;
    close(s.total_ms, 2.0 * (linear_layer + gpu + 0.25) + 160.0 / 2e6);
}

#[test]
fn aqpim_counts_codebooks_once_at_model_scope() {
    // pq: sinks 1, window 2 -> ctx 13 has 10 encoded tokens and 3 FP16 ones.
    let (m, sys) = tiny(100_000);
    let s = step(Policy::Aqpim, 13, 3);
    assert_eq!((s.ctx_in_pim, s.ctx_spilled), (13, 0));
    assert_eq!(s.codebooks, "model");
    close(s.pim_attention_ms, 2.0 * 0.039);
    // One 6400 ns flush per layer every 64 steps.
    close(s.quantize_ms, 2.0 * 6400.0 / 64.0 / 1e6);
    // Link: 330 B per step plus the 1000 B flush over 64 steps.
    close(s.link_ms, 2.0 * ((330.0 + 1000.0 / 64.0) / 0.5e6 + 0.2));
    // Tables: the KV head's key codebook (4 centroids x 4 elements FP16 =
    // 32 B) and 3 x 2 tables of 2 subspaces x 16 entries FP16 (64 B).
    close(s.table_ms, 2.0 * (32.0 + 6.0 * 64.0) / 1e6);
    // Bytes: the data of each sequence as `aqpim kv stats` accounts it with
    // no codebooks, times the batch, plus one set of FP16 codebooks
    // (2 layers x 1 head x (32 + 32) B), held on the GPU.
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
    let r = aqpim_kvcache::Regions::nominal(&spec, 13);
    let data = aqpim_kvcache::account_regions(&shape, &spec, &[r, r], 0, 0).unwrap();
    assert_eq!(s.kv_bytes, 3 * data.total_bytes + 128);
    assert_eq!(s.gpu_bytes_used, WEIGHTS + 128);
    assert!(
        s.codebook_training_ms.is_none(),
        "model scope trains nothing"
    );
    let _ = m;
}

#[test]
fn refined_codebooks_are_each_sequences_own_without_training() {
    let (m, mut s) = tiny(100_000);
    let base = decode_step_with(&m, &s, Policy::Aqpim, 13, 3, Some(&Fake::new())).unwrap();
    let pim = s.pim.as_mut().unwrap();
    pim.kv = Some(format!("{},refine=1", pim.kv.as_ref().unwrap()));
    let st = decode_step_with(&m, &s, Policy::Aqpim, 13, 3, Some(&Fake::new())).unwrap();
    // Each sequence holds its own codebooks (3 sets on the GPU), trained by
    // no k-means: they start from the model's.
    assert_eq!(st.codebooks, "sequence");
    assert_eq!(st.gpu_bytes_used, WEIGHTS + 3 * 128);
    assert!(
        st.codebook_training_ms.is_none(),
        "refinement trains nothing"
    );
    // Tables read every sequence's key codebook (3 x 32 B), and refinement
    // reads and writes the named centroids: 3 caches x 2 codebooks x 2
    // (read, write) x 4 elements x 2 B.
    close(
        st.table_ms,
        2.0 * (3.0 * 32.0 + 6.0 * 64.0 + 3.0 * 32.0) / 1e6,
    );
    // Link: per cache the token's codes (2 subspaces of 2 bits, a nibble
    // column each: 1 B per part) back, and 4 FP16 value elements out.
    close(st.link_ms - base.link_ms, 2.0 * 3.0 * (2.0 + 8.0) / 0.5e6);
    // Values alone: key codebooks stay the model's (one set of 32 B on the
    // GPU), value codebooks are each sequence's (3 sets of 32 B); refinement
    // touches the value centroids only (3 caches x 2 x 4 x 2 B), and only
    // the value codes (1 B) come back.
    let pim = s.pim.as_mut().unwrap();
    pim.kv = Some(pim.kv.as_ref().unwrap().replace("refine=1", "vrefine=1"));
    let v = decode_step_with(&m, &s, Policy::Aqpim, 13, 3, Some(&Fake::new())).unwrap();
    assert_eq!(v.codebooks, "keys model, values sequence");
    assert_eq!(v.gpu_bytes_used, WEIGHTS + 2 * (32 + 3 * 32));
    assert!(v.codebook_training_ms.is_none());
    close(v.table_ms, 2.0 * (32.0 + 6.0 * 64.0 + 3.0 * 16.0) / 1e6);
    close(v.link_ms - base.link_ms, 2.0 * 3.0 * (1.0 + 8.0) / 0.5e6);
}

#[test]
fn sequence_scope_multiplies_codebooks_and_charges_training() {
    let (m, mut s) = tiny(100_000);
    s.pim.as_mut().unwrap().codebooks = Some("sequence".into());
    s.gpu.fp16_tflops = Some(1e-9); // 1 FLOP per ms at efficiency 1
    s.gpu.compute_efficiency = Some(1.0);
    let st = decode_step_with(&m, &s, Policy::Aqpim, 13, 3, Some(&Fake::new())).unwrap();
    assert_eq!(st.codebooks, "sequence");
    assert_eq!(st.gpu_bytes_used, WEIGHTS + 3 * 128);
    close(st.table_ms, 2.0 * (3.0 * 32.0 + 6.0 * 64.0) / 1e6);
    // 2 codebooks x 2 layers x 1 head x 3 sequences, 2 n ksub d FLOP x 25
    // iterations, n = 10 encoded tokens.
    let train = 2.0 * (2.0 * 10.0 * 4.0 * 4.0 * 25.0) * (2.0 * 3.0);
    close(st.codebook_training_ms.unwrap(), train);
    // Linear layers at 1 FLOP per ms are compute-bound: 2 x params x batch.
    close(st.linear_ms, 2.0 * 1152.0 * 3.0 + 2.0 * 80.0 * 3.0);
    let bad = {
        let mut s = s.clone();
        s.pim.as_mut().unwrap().codebooks = Some("layer".into());
        s.validate().unwrap_err().to_string()
    };
    assert!(bad.contains("model") && bad.contains("sequence"), "{bad}");
}

#[test]
fn nothing_fits_and_no_link_are_clear_errors() {
    let (m, mut s) = tiny(100_000);
    // 3 FP16 tokens x 30 caches = 9 rows per layer: nothing fits 8 rows.
    let e = decode_step_with(&m, &s, Policy::Aqpim, 13, 30, Some(&Fake::new())).unwrap_err();
    assert!(
        e.to_string().contains("sink, window and outlier tokens"),
        "{e}"
    );
    s.link = None;
    s.host = None;
    s.gpu.memory_bytes = WEIGHTS;
    let e = decode_step_with(&m, &s, Policy::Attacc, 14, 3, Some(&Fake::new())).unwrap_err();
    assert!(matches!(e, SystemError::Capacity { .. }), "{e}");
    assert!(e.to_string().contains("no host link"), "{e}");
    let host = presets::system("h100+host").unwrap();
    let e = decode_step(&m, &host, Policy::Attacc, 10, 1).unwrap_err();
    assert!(e.to_string().contains("no PIM stacks"), "{e}");
    let attacc = presets::system("h100+attacc").unwrap();
    let e = decode_step(&m, &attacc, Policy::Aqpim, 10, 1).unwrap_err();
    assert!(e.to_string().contains("no PQ format"), "{e}");
    for (ctx, batch) in [(0, 1), (1, 0), (usize::MAX, 1), (1, usize::MAX)] {
        let e = decode_step(&m, &attacc, Policy::Gpu, ctx, batch).unwrap_err();
        assert!(e.to_string().contains("must be in 1..="), "{e}");
    }
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
fn rotation_balances_channels_across_layers() {
    // Uniform layers: nothing to balance.
    assert_eq!(balanced_rows(&[3, 3, 3, 3], 5), 15);
    // One double channel out of four: stacking it in every layer would
    // give 4 x 2 = 8; rotated, each channel takes it once: 2 + 3 x 1.
    assert_eq!(balanced_rows(&[2, 1, 1, 1], 4), 5);
    // Never below the average, never above the unrotated stack.
    let v = [7, 0, 3, 3, 1, 9, 2];
    for layers in 1..20 {
        let b = balanced_rows(&v, layers);
        let sum: usize = v.iter().sum();
        assert!(b * v.len() >= sum * layers);
        assert!(b <= 9 * layers);
    }
}

// End to end through the real lowering.

fn real_on(system: &SystemSpec, policy: Policy, model: &str, ctx: usize, batch: usize) -> Step {
    let m = presets::model(model).unwrap();
    decode_step(&m, system, policy, ctx, batch).unwrap()
}

fn real(policy: Policy, model: &str, ctx: usize, batch: usize) -> Step {
    let mut s = presets::system("h100+aqpim").unwrap();
    if presets::model(model).unwrap().head_dim == 64 {
        // In-memory quantization stores a token's key and value codes
        // together: at 64-element heads the shipped 8-bit keys (32 B) and
        // 4-bit values (16 B) tile code columns differently, which the
        // lowering refuses (see the test below); 8-bit codes for both do.
        s.pim.as_mut().unwrap().kv = Some("pq:dsub=2,nbits=8,sinks=4,window=128".into());
    }
    real_on(&s, policy, model, ctx, batch)
}

#[test]
fn formats_that_tile_columns_differently_are_a_clear_error() {
    let m = presets::model("smollm2-135m").unwrap();
    let s = presets::system("h100+aqpim").unwrap();
    let e = decode_step(&m, &s, Policy::Aqpim, 4096, 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("do not share code columns alike"), "{e}");
}

#[test]
fn real_pim_steps_itemize_and_fit() {
    for policy in [Policy::Attacc, Policy::Aqpim] {
        let s = real(policy, "smollm2-135m", 4096, 2);
        assert_eq!((s.ctx_on_gpu, s.ctx_spilled), (0, 0));
        assert!(s.pim_attention_ms > 0.0 && s.sync_ms > 0.0, "{s:?}");
        assert!(s.link_ms > 0.0 && s.link_bytes > 0);
        assert!((s.total_ms - (s.parts_ms() - s.overlapped_ms)).abs() < 1e-9);
        assert!(s.pim_rows_used <= s.pim_rows);
        assert!(s.pim_bytes_used <= s.pim_capacity_bytes);
    }
    let f = real(Policy::Attacc, "smollm2-135m", 4096, 2);
    let q = real(Policy::Aqpim, "smollm2-135m", 4096, 2);
    assert!(q.quantize_ms > 0.0 && f.quantize_ms == 0.0);
    assert!(q.table_ms > 0.0 && f.table_ms == 0.0);
    // 4 bits per element of codes plus FP16 sinks and window: the data is
    // far smaller, though at 4K the banks' rows are mostly padding (each
    // small slice rounds up to whole rows).
    assert!(
        q.kv_bytes * 3 < f.kv_bytes,
        "{} vs {}",
        q.kv_bytes,
        f.kv_bytes
    );
    assert!(q.pim_bytes_used + q.gpu_bytes_used >= q.kv_bytes + q.weight_bytes);
}

#[test]
fn a_cache_that_fits_the_stacks_stays_in_them() {
    // Llama-2-7B at 128K, batch 1: 68.7 GB of FP16 KV in 85.9 GB of banks.
    let s = real(Policy::Attacc, "llama2-7b", 131_072, 1);
    assert_eq!((s.ctx_on_gpu, s.ctx_spilled), (0, 0), "{s:?}");
    assert!(s.pim_rows_used <= s.pim_rows);
}

#[test]
fn nothing_spilled_means_within_capacity() {
    // The invariant over a grid (closed-form PIM cost: the placement is the
    // same as the simulator's).
    let m = presets::model("llama2-7b").unwrap();
    for name in ["h100+attacc", "h100+aqpim"] {
        let s = presets::system(name).unwrap();
        let timer = SimTimer::new(s.pim.as_ref().unwrap().device().unwrap(), PimMode::Analytic);
        let policy = if name.ends_with("attacc") {
            Policy::Attacc
        } else {
            Policy::Aqpim
        };
        for ctx in [4096, 16384, 65536, 131_072] {
            for batch in [1, 4, 16, 64, 256] {
                let st = match decode_step_with(&m, &s, policy, ctx, batch, Some(&timer)) {
                    Ok(st) => st,
                    Err(SystemError::Capacity { .. }) => continue,
                    Err(e) => panic!("{name} {ctx} {batch}: {e}"),
                };
                if st.ctx_spilled == 0 {
                    assert!(
                        st.pim_bytes_used <= st.pim_capacity_bytes,
                        "{name} {ctx} {batch}"
                    );
                    assert!(st.pim_rows_used <= st.pim_rows, "{name} {ctx} {batch}");
                    assert!(
                        st.gpu_bytes_used <= s.gpu.memory_bytes,
                        "{name} {ctx} {batch}"
                    );
                }
            }
        }
    }
}

#[test]
fn serving_search_finds_the_best_fitting_batch() {
    let m = presets::model("llama2-7b").unwrap();
    for (name, policy) in [
        ("h100+attacc", Policy::Attacc),
        ("h100+aqpim", Policy::Aqpim),
    ] {
        let s = presets::system(name).unwrap();
        let timer = SimTimer::new(s.pim.as_ref().unwrap().device().unwrap(), PimMode::Analytic);
        let p = crate::serve(&m, &s, policy, 32768, Some(&timer)).unwrap();
        assert!(p.best_batch <= p.max_batch);
        assert_eq!(p.step.ctx_spilled, 0);
        // One more sequence than the maximum does not fit without the host.
        match decode_step_with(&m, &s, policy, 32768, p.max_batch + 1, Some(&timer)) {
            Ok(st) => assert!(st.ctx_spilled > 0, "{name}"),
            Err(e) => assert!(matches!(e, SystemError::Capacity { .. }), "{e}"),
        }
        // The best beats every power of two that fits.
        let mut b = 1;
        while b <= p.max_batch {
            let st = decode_step_with(&m, &s, policy, 32768, b, Some(&timer)).unwrap();
            assert!(st.tokens_per_s <= p.tokens_per_s, "{name} batch {b}");
            b *= 2;
        }
    }
    let _ = CodebookScope::Model;
}

#[test]
fn analytic_path_holds_within_5_percent_of_the_simulator() {
    let m = presets::model("llama2-7b").unwrap();
    let s = presets::system("h100+aqpim").unwrap();
    let dev = || s.pim.as_ref().unwrap().device().unwrap();
    let sim = SimTimer::new(dev(), PimMode::Simulated);
    let ana = SimTimer::new(dev(), PimMode::Analytic);
    for policy in [Policy::Attacc, Policy::Aqpim] {
        for ctx in [4096, 65536] {
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
    // presets/data/h100_anchors.jsonl: one Llama-2-7B layer, batch 1: linear
    // 0.1874 ms; attention 0.0597 ms (4K), 0.126 ms (16K).
    let m = presets::model("llama2-7b").unwrap();
    for (ctx, attn) in [(4096, 0.0597), (16384, 0.126)] {
        let g = decode_step(&m, &presets::system("h100").unwrap(), Policy::Gpu, ctx, 1).unwrap();
        let per_layer = (g.linear_ms - m.head_weight_bytes() as f64 / 2160e6) / 32.0;
        assert!((per_layer - 0.1874).abs() < 0.05 * 0.1874, "{per_layer}");
        assert!((g.attention_ms / 32.0 - attn).abs() < 0.05 * attn);
        // attacc: the same linear layers; attention in PIM, faster than the GPU's.
        let a = real(Policy::Attacc, "llama2-7b", ctx, 1);
        assert_eq!(a.linear_ms, g.linear_ms);
        assert!(a.pim_attention_ms < g.attention_ms, "{ctx}");
        assert!(a.total_ms > g.linear_ms);
    }
}

#[test]
fn linear_layers_turn_compute_bound_at_large_batch() {
    // h100 (989.4 TFLOP/s x 0.6): a 202M-parameter Llama-2-7B layer reads
    // 405 MB in 0.187 ms; 2 x 202M x batch FLOP exceed that from batch ~330.
    let m = presets::model("llama2-7b").unwrap();
    let s = presets::system("h100+attacc").unwrap();
    let l = |b| crate::gpu::layer_linear_ms(&m, &s, b);
    assert_eq!(l(1), l(64));
    assert!(l(1024) > 2.0 * l(1));
    let params = m.layer_weight_bytes() as f64 / 2.0;
    close(l(1024), 2.0 * params * 1024.0 / (989.4e9 * 0.6));
}

/// `gpu-quant`: the bytes are `aqpim kv stats`'s for the format, attention
/// reads them at the kernel's rate, capacity stops at GPU memory, and the
/// step carries the format's measured delta.
#[test]
fn gpu_quant_reads_the_formats_bytes_at_the_kernels_rate() {
    let model = presets::model("llama2-7b").unwrap();
    let system = presets::system("h100+gpu-quant").unwrap();
    let (ctx, batch) = (32768, 4);
    let s = decode_step(&model, &system, Policy::GpuQuant, ctx, batch).unwrap();
    let spec: aqpim_kvcache::KvSpec = system.gpu.kv.as_deref().unwrap().parse().unwrap();
    let shape = aqpim_kvcache::KvShape::new(32, 32, 128).unwrap();
    let r = aqpim_kvcache::Regions::nominal(&spec, ctx);
    let per_seq = aqpim_kvcache::account_regions(&shape, &spec, &vec![r; 32], 0, 0)
        .unwrap()
        .total_bytes;
    assert_eq!(s.kv_bytes, per_seq * batch as u64);
    // 4-bit codes with FP16 min and scale per 32: about 5 bits per element.
    let fp16 = model.kv_bytes_per_token_layer() * (ctx * batch * 32) as u64;
    let ratio = s.kv_bytes as f64 / fp16 as f64;
    assert!((0.30..0.33).contains(&ratio), "{ratio}");
    let g = &system.gpu;
    let want = 32.0
        * (g.quant_attn_fixed_ms.unwrap()
            + s.kv_bytes as f64 / 32.0 / (g.quant_attn_gbps.unwrap() * 1e6));
    assert!(
        (s.attention_ms - want).abs() < 1e-9,
        "{} {want}",
        s.attention_ms
    );
    assert_eq!(s.kv, spec.to_string());
    assert_eq!(s.ppl_delta, crate::accuracy::ppl_delta(&spec));
    // About three times the FP16 sequences fit.
    let max = |p: Policy| {
        crate::serve::serve(&model, &system, p, ctx, None)
            .unwrap()
            .max_batch
    };
    let (q, f) = (max(Policy::GpuQuant), max(Policy::Gpu));
    assert!(q >= 3 * f && q <= 4 * f, "{q} vs {f}");
    // Without a format or a kernel rate: an error that says so.
    let mut bare = system.clone();
    bare.gpu.kv = None;
    let e = decode_step(&model, &bare, Policy::GpuQuant, ctx, 1).unwrap_err();
    assert!(e.to_string().contains("gpu-quant needs one"), "{e}");
    let mut bare = system.clone();
    bare.gpu.quant_attn_gbps = None;
    let e = decode_step(&model, &bare, Policy::GpuQuant, ctx, 1).unwrap_err();
    assert!(e.to_string().contains("quant_attn_gbps"), "{e}");
}

/// `scalar-pim` through the real lowering: the stacks hold the format's
/// codes (fewer bytes than FP16, so more sequences fit than under
/// `attacc`), the closed form and the simulation agree on the step, the
/// link carries the tokens the GPU requantizes, and a system without a
/// scalar format is refused with a message that says so.
#[test]
fn scalar_pim_holds_codes_in_the_stacks() {
    let model = presets::model("llama2-7b").unwrap();
    let system = presets::system("h100+scalar-pim").unwrap();
    let ctx = 32768;
    let dev = |p| system.pim.as_ref().unwrap().device_for(p).unwrap();
    let sim = SimTimer::new(dev(Policy::ScalarPim), PimMode::Simulated);
    let ana = SimTimer::new(dev(Policy::ScalarPim), PimMode::Analytic);
    let s = decode_step_with(&model, &system, Policy::ScalarPim, ctx, 4, Some(&sim)).unwrap();
    let a = decode_step_with(&model, &system, Policy::ScalarPim, ctx, 4, Some(&ana)).unwrap();
    assert_eq!(s.pim_device, "hbm3-pimba-5.2");
    assert!(s.kv.starts_with("scalar:bits=4"), "{}", s.kv);
    assert!(s.ppl_delta.is_some());
    assert_eq!(s.ctx_in_pim, ctx);
    assert!((s.pim_attention_ms - a.pim_attention_ms).abs() <= 0.05 * s.pim_attention_ms);
    // 4-bit codes with FP16 min and scale: about 5 bits per element.
    assert!(
        (4.8..5.3).contains(&s.kv_bits_per_element),
        "{}",
        s.kv_bits_per_element
    );
    // The link carries, per cache, the query heads' FP16 queries in, their
    // results out, the new token, and the requantized token (FP16 back,
    // codes out).
    assert!(s.link_bytes as usize >= 32 * 4 * 32 * (4 * 128 + 2 * 64));
    let fit = |p: Policy| {
        let t = SimTimer::new(dev(p), PimMode::Analytic);
        crate::serve::serve(&model, &system, p, ctx, Some(&t))
            .unwrap()
            .max_batch_in_pim
            .unwrap()
    };
    let (q, f) = (fit(Policy::ScalarPim), fit(Policy::Attacc));
    assert!(q >= 2 * f, "{q} vs {f}");
    let mut bare = system.clone();
    bare.pim.as_mut().unwrap().kv = None;
    let e = decode_step_with(&model, &bare, Policy::ScalarPim, ctx, 1, Some(&ana)).unwrap_err();
    assert!(e.to_string().contains("scalar-pim needs one"), "{e}");
}

#[test]
fn mixed_formats_are_refused_not_priced_as_coded() {
    // One format for every layer is what the model prices; a spec that keeps
    // some layers in FP16, or codes some in a second format, would be priced
    // as if every layer held the base format.
    for (suffix, needle) in [
        ("fp16_layers=1", "`fp16_layers`"),
        ("wide_layers=1,wide_vbits=8", "`wide_layers`"),
    ] {
        let (m, mut s) = tiny(100_000);
        let pim = s.pim.as_mut().unwrap();
        pim.kv = Some(format!("{},{suffix}", pim.kv.as_ref().unwrap()));
        let e = decode_step_with(&m, &s, Policy::Aqpim, 13, 3, Some(&Fake::new()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle) && e.contains("price"), "{e}");
    }
}
