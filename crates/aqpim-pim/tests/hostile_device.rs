//! Hostile device files: every numeric field of a preset replaced by huge,
//! zero, negative or non-finite values, rule latencies by overflowing
//! expressions, windows by huge counts. Each spec either fails to resolve,
//! with an error, or resolves within the limits of `aqpim_pim::limits` and
//! then simulates a short program in bounded time with finite figures.

use aqpim_pim::bench::{external_bandwidth, internal_bandwidth};
use aqpim_pim::limits::{MAX_RULE_LATENCY, MAX_RULE_WINDOW, MAX_TIMING_CYCLES};
use aqpim_pim::{DeviceSpec, TimingValue};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

const HOSTILE_U32: [u32; 10] = [0, 1, 2, 7, 4096, 65_536, 65_537, 1 << 24, 1 << 31, u32::MAX];
const HOSTILE_F64: [f64; 9] = [
    0.0,
    -1.0,
    0.5,
    350.0,
    1e9,
    1e308,
    f64::INFINITY,
    f64::NAN,
    f64::MIN_POSITIVE,
];
const HOSTILE_LATENCY: [&str; 9] = [
    "9223372036854775807 + 9223372036854775807 + 2",
    "0 - 9223372036854775807 - 9223372036854775807",
    "nRAS + nRAS + nRAS + nRAS",
    "4294967295",
    "99999999999999999999999",
    "nREFI",
    "nRFC - nRFC",
    "",
    "nRAS +",
];

#[derive(Debug, Clone)]
enum Edit {
    Org(usize, u32),
    Clock(usize, u32),
    Timing(usize, u32),
    TimingNs(usize, f64),
    Pim(usize, u32),
    Energy(usize, f64),
    Latency(usize, &'static str),
    Window(usize, u32),
    RefreshOff,
}

fn apply(s: &mut DeviceSpec, e: &Edit) {
    let o = &mut s.organisation;
    match *e {
        Edit::Org(i, v) => {
            let f = [
                &mut o.stacks,
                &mut o.channels_per_stack,
                &mut o.pseudo_channels,
                &mut o.sids,
                &mut o.bank_groups,
                &mut o.banks_per_group,
                &mut o.rows,
                &mut o.columns,
                &mut o.column_bytes,
                &mut o.dq_bits_per_pseudo_channel,
            ];
            let n = f.len();
            *f.into_iter().nth(i % n).unwrap() = v;
        }
        Edit::Clock(i, v) => {
            if i % 2 == 0 {
                s.clock.t_ck_ps = v
            } else {
                s.clock.data_rate_mtps = v
            }
        }
        Edit::Timing(i, v) => {
            let key = s.timing.keys().nth(i % s.timing.len()).unwrap().clone();
            s.timing.insert(key, TimingValue::Cycles(v));
        }
        Edit::TimingNs(i, ns) => {
            let key = s.timing.keys().nth(i % s.timing.len()).unwrap().clone();
            s.timing.insert(key, TimingValue::Ns { ns });
        }
        Edit::Pim(i, v) => {
            let p = &mut s.pim;
            let f = [
                &mut p.lanes,
                &mut s.units.buffer.bytes,
                &mut s.units.registers.bytes,
                &mut p.n_ccdab,
                &mut p.buffer_die_bytes,
                &mut p.mv_bytes_per_cycle,
                &mut s.units.softmax.ops_per_cycle,
                &mut p.sfm_latency,
            ];
            let n = f.len();
            *f.into_iter().nth(i % n).unwrap() = v;
        }
        Edit::Energy(i, v) => {
            let e = &mut s.energy;
            let f = [
                &mut e.act_pj,
                &mut e.column_pj_per_bit,
                &mut e.io_pj_per_bit,
                &mut e.buffer_die_pj_per_bit,
                &mut e.refresh_pj,
            ];
            let n = f.len();
            *f.into_iter().nth(i % n).unwrap() = v;
        }
        Edit::Latency(i, l) => {
            let n = s.rules.len();
            s.rules[i % n].latency = l.to_string();
        }
        Edit::Window(i, w) => {
            let n = s.rules.len();
            s.rules[i % n].window = w;
        }
        Edit::RefreshOff => s.refresh.enabled = false,
    }
}

fn edit() -> impl Strategy<Value = Edit> {
    let u = || prop::sample::select(HOSTILE_U32.to_vec());
    prop_oneof![
        (0usize..10, u()).prop_map(|(i, v)| Edit::Org(i, v)),
        (0usize..2, u()).prop_map(|(i, v)| Edit::Clock(i, v)),
        (0usize..64, u()).prop_map(|(i, v)| Edit::Timing(i, v)),
        (0usize..64, prop::sample::select(HOSTILE_F64.to_vec()))
            .prop_map(|(i, v)| Edit::TimingNs(i, v)),
        (0usize..9, u()).prop_map(|(i, v)| Edit::Pim(i, v)),
        (0usize..8, prop::sample::select(HOSTILE_F64.to_vec()))
            .prop_map(|(i, v)| Edit::Energy(i, v)),
        (0usize..64, prop::sample::select(HOSTILE_LATENCY.to_vec()))
            .prop_map(|(i, v)| Edit::Latency(i, v)),
        (0usize..64, u()).prop_map(|(i, v)| Edit::Window(i, v)),
        Just(Edit::RefreshOff),
    ]
}

#[test]
fn the_issues_device_cases_are_errors() {
    let base = DeviceSpec::hbm3_jedec;
    let mut s = base();
    s.rules[0].latency = "9223372036854775807 + 9223372036854775807 + 2".into();
    let e = s.resolve().unwrap_err().to_string();
    assert!(e.contains("overflows"), "{e}");
    let mut s = base();
    s.rules[0].window = u32::MAX;
    assert!(s.resolve().unwrap_err().to_string().contains("window"));
    let mut s = base();
    s.pim.n_ccdab = u32::MAX;
    assert!(s.resolve().unwrap_err().to_string().contains("n_ccdab"));
    for key in ["nRAS", "nREFI", "nRFC"] {
        let mut s = base();
        s.timing.insert(key.into(), TimingValue::Cycles(u32::MAX));
        assert!(s.resolve().is_err(), "{key}");
    }
    // A refresh interval no longer than some gate would make refresh
    // dominate every wait.
    let mut s = base();
    s.timing.insert("nREFI".into(), TimingValue::Cycles(100));
    let e = s.resolve().unwrap_err().to_string();
    assert!(e.contains("refresh"), "{e}");
    let mut s = base();
    s.energy.act_pj = 1e308;
    assert!(s.resolve().is_err());
}

#[test]
fn oversized_device_files_are_refused() {
    let text = format!(
        "# {}\n{}",
        "x".repeat(aqpim_pim::limits::MAX_DEVICE_FILE_BYTES as usize),
        DeviceSpec::hbm3_jedec().to_toml_string().unwrap()
    );
    let e = DeviceSpec::from_toml_str(&text).unwrap_err().to_string();
    assert!(e.contains("limit"), "{e}");
}

proptest! {
    #![proptest_config(Config {
        cases: 96,
        rng_seed: RngSeed::Fixed(17),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions")
        )),
        ..Config::default()
    })]

    #[test]
    fn hostile_device_specs_resolve_within_limits_or_fail(
        edits in proptest::collection::vec(edit(), 1..4),
        attacc in any::<bool>(),
    ) {
        let mut spec = if attacc { DeviceSpec::hbm3_aqpim() } else { DeviceSpec::hbm3_jedec() };
        for e in &edits {
            apply(&mut spec, e);
        }
        // Through the file format, as a user's file would come.
        let Ok(text) = spec.to_toml_string() else { return Ok(()) };
        let Ok(spec) = DeviceSpec::from_toml_str(&text) else { return Ok(()) };
        let Ok(d) = spec.resolve() else { return Ok(()) };
        prop_assert!(d.params.values().all(|&v| v <= MAX_TIMING_CYCLES));
        prop_assert!(d.rules.iter().all(|r| r.latency <= MAX_RULE_LATENCY && r.window <= MAX_RULE_WINDOW));
        // A short program runs to the end with finite figures.
        for check in [internal_bandwidth(&d, 2), external_bandwidth(&d, 2)] {
            let Ok(c) = check else { continue };
            prop_assert!(c.stats.ns.is_finite() && c.stats.ns > 0.0);
            prop_assert!(c.simulated_gbps.is_finite() && c.analytic_gbps.is_finite());
            prop_assert!(c.stats.energy.total_pj.is_finite());
        }
    }
}
