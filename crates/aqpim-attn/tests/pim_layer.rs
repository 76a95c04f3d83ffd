//! Whole-layer lowered programs timed and inspected: PQ attention against
//! FP16 at long context, per-phase costs summing to the layer, the program
//! as text running like the timing run, and grouped-query attention reading
//! each row once per pass of query heads.

use aqpim_attn::pim::{
    lower_layer, simulate_layer, simulate_layer_breakdown, LayerJob, Phase, PimKind,
};
use aqpim_kvcache::CodebookScope;
use aqpim_pim::{Device, Mode, SimOptions, Simulator};
use aqpim_pq::CodeFormat;

fn device() -> Device {
    Device::preset("hbm3-aqpim-5.2").unwrap()
}

#[test]
fn pq_attention_is_faster_than_fp16_attention_at_long_context() {
    let dev = device();
    let job = |kind| LayerJob {
        kind,
        head_dim: 128,
        heads: 32,
        kv_heads: 32,
        group: 1,
        ctx: 32768,
        fp_tokens: 0,
        quantize: false,
        codebooks: aqpim_kvcache::CodebookScope::Model,
        placement: aqpim_attn::pim::Placement::Spread,
    };
    let fp = simulate_layer(&dev, &job(PimKind::Fp16)).unwrap();
    let pq = simulate_layer(&dev, &job(PimKind::pq(4, 8))).unwrap();
    assert!(
        pq.cycles < fp.cycles,
        "pq {} vs fp16 {}",
        pq.cycles,
        fp.cycles
    );
    assert!(pq.bytes_internal < fp.bytes_internal);
}

#[test]
fn phases_sum_to_the_layer_within_one_percent() {
    let dev = device();
    let jobs = [
        (PimKind::Fp16, 0, false, 8192),
        (PimKind::pq(4, 8), 132, true, 32768),
        (
            PimKind::Pq {
                key: CodeFormat::new(4, 8, true),
                value: CodeFormat::new(2, 4, true),
            },
            20,
            true,
            4000,
        ),
    ];
    for (kind, fp_tokens, quantize, ctx) in jobs {
        let job = LayerJob {
            kind,
            head_dim: 128,
            heads: 32,
            kv_heads: 32,
            group: 1,
            ctx,
            fp_tokens,
            quantize,
            codebooks: CodebookScope::Model,
            placement: aqpim_attn::pim::Placement::Spread,
        };
        let b = simulate_layer_breakdown(&dev, &job, aqpim_pim::Mode::TimingOnly).unwrap();
        assert_eq!(b.total, simulate_layer(&dev, &job).unwrap());
        let t = &b.total;
        let close = |sum: f64, total: f64| (sum - total).abs() <= 0.01 * total;
        let sum = |f: fn(&aqpim_attn::pim::PhaseCost) -> f64| b.phases.iter().map(f).sum::<f64>();
        assert!(close(sum(|p| p.cycles as f64), t.cycles as f64), "{kind:?}");
        assert!(close(sum(|p| p.ns), t.ns));
        assert!(close(sum(|p| p.energy_pj), t.energy_pj));
        assert!(close(sum(|p| p.commands as f64), t.commands as f64));
        assert!(close(
            sum(|p| p.bytes_internal as f64),
            t.bytes_internal as f64
        ));
        assert!(close(
            sum(|p| p.bytes_external as f64),
            t.bytes_external as f64
        ));
        let has = |p: Phase| b.phases.iter().any(|c| c.phase == p);
        assert!(has(Phase::Broadcast) && has(Phase::Scoring) && has(Phase::Softmax));
        assert!(has(Phase::Reduction));
        if let PimKind::Pq { .. } = kind {
            assert!(has(Phase::Histogram) && has(Phase::BinsCodebook));
            assert!(has(Phase::Fp16Window) && has(Phase::Quantization));
        } else {
            assert!(has(Phase::Values) && !has(Phase::Histogram));
        }
    }
}

#[test]
fn the_lowered_program_as_text_runs_like_the_timing_run() {
    let dev = device();
    let job = LayerJob {
        kind: PimKind::pq(4, 8),
        head_dim: 128,
        heads: 4,
        kv_heads: 4,
        group: 2,
        ctx: 3000,
        fp_tokens: 20,
        quantize: true,
        codebooks: CodebookScope::Model,
        placement: aqpim_attn::pim::Placement::Spread,
    };
    let lowered = lower_layer(&dev, &job, None).unwrap();
    let text = lowered.annotated_text();
    assert!(text.contains("# phase: scoring") && text.contains("# phase: quantization"));
    let back = aqpim_pim::Program::assemble(&text).unwrap();
    assert_eq!(&back, &lowered.program);
    let mut sim = Simulator::new(&dev, SimOptions::default());
    sim.set_host_data(lowered.host_data.clone());
    let stats = sim.run(&back).unwrap();
    assert_eq!(stats.cycles, simulate_layer(&dev, &job).unwrap().cycles);
    // One cache alone: fewer commands, still a whole program.
    let one = lower_layer(&dev, &job, Some(1)).unwrap();
    assert!(one.program.instrs().len() < lowered.program.instrs().len());
    let mut sim = Simulator::new(&dev, SimOptions::default());
    sim.set_host_data(one.host_data);
    sim.run(&one.program).unwrap();
    assert!(lower_layer(&dev, &job, Some(4)).is_err());
}

/// A KV head's rows are activated once per pass over its slices, a pass
/// serving as many query heads of its group as the bank's buffer and
/// registers hold; the column commands stay one per query head. On this
/// device FP16 and 4-bit-key PQ serve a group of 4 in one pass; the shipped
/// 8-bit keys' table (64 x 256 FP16, 32 KB) fills the buffer alone, so
/// that format still reads its rows once per query head.
#[test]
fn a_query_group_reads_each_row_once_per_pass() {
    let dev = device();
    let counts = |kind: PimKind, group: usize| {
        let job = LayerJob {
            kind,
            head_dim: 128,
            heads: 8,
            kv_heads: 8,
            group,
            ctx: 8192,
            fp_tokens: 0,
            quantize: false,
            codebooks: CodebookScope::Model,
            // The fewest slices, whatever the group: the same placement.
            placement: aqpim_attn::pim::Placement::OnePerCache,
        };
        let b = simulate_layer_breakdown(&dev, &job, Mode::TimingOnly).unwrap();
        let mut n = std::collections::BTreeMap::<String, u64>::new();
        for p in b.phases.iter().filter(|p| p.phase != Phase::Refresh) {
            for (k, v) in &p.command_counts {
                *n.entry(k.clone()).or_default() += v;
            }
        }
        n
    };
    let shipped = PimKind::Pq {
        key: CodeFormat::new(2, 8, true),
        value: CodeFormat::new(2, 4, true),
    };
    for (kind, passes, column_ops) in [
        (PimKind::Fp16, 1, &["MAC"][..]),
        (PimKind::pq(2, 4), 1, &["LUTACC", "HISTACC", "BINMAC"][..]),
        (shipped, 4, &["LUTACC", "HISTACC", "BINMAC"][..]),
    ] {
        let (one, four) = (counts(kind, 1), counts(kind, 4));
        assert_eq!(four["ACTAB"], passes * one["ACTAB"], "{kind:?}");
        for op in column_ops {
            assert_eq!(four[*op], 4 * one[*op], "{kind:?} {op}");
        }
        assert_eq!(four["RDD"], 4 * one["RDD"], "{kind:?}");
    }
}
