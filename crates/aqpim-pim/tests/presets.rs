//! Preset files load, resolve, and round-trip through serde; inconsistent
//! specs are rejected with an error naming the field.

use aqpim_pim::{Device, DeviceSpec, PimError, TimingValue, UnitKind, PRESETS};

#[test]
fn presets_load_resolve_and_round_trip() {
    assert!(PRESETS.len() >= 2);
    for (name, _) in PRESETS {
        let spec = DeviceSpec::preset(name).unwrap();
        assert_eq!(&spec.name, name);
        let dev = spec.resolve().unwrap();
        assert_eq!(dev.org.banks_per_channel, 64);
        assert_eq!(dev.org.channels, 80);
        assert!(dev.rules.len() >= 20);
        // TOML round trip.
        let text = spec.to_toml_string().unwrap();
        let back = DeviceSpec::from_toml_str(&text).unwrap();
        assert_eq!(back, spec);
        // JSON round trip.
        let json = serde_json::to_string(&spec).unwrap();
        let back: DeviceSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
        assert_eq!(back.resolve().unwrap(), dev);
    }
}

#[test]
fn attacc_figures_resolve_to_the_brief() {
    let d = DeviceSpec::hbm3_attacc().resolve().unwrap();
    let p = |n: &str| d.param(n).unwrap();
    assert_eq!(d.t_ck_ps, 769);
    assert_eq!(
        (p("nCL"), p("nRCDRD"), p("nRP"), p("nRAS"), p("nRC")),
        (19, 19, 19, 45, 63)
    );
    assert_eq!(
        (p("nCCDS"), p("nCCDL"), p("nRRDS"), p("nRRDL"), p("nFAW")),
        (2, 4, 2, 4, 39)
    );
    assert_eq!(p("nREFI"), 5070);
    // 350 ns at 0.769 ns rounds up to 456 cycles.
    assert_eq!(p("nRFC"), 456);
    assert_eq!(p("nCCDAB"), 4);
    // 16 channels x 2 PCs x 32 DQ x 5.2 Gbps = 665.6 GB/s per stack (AttAcc quotes 670.4 at its exact clock).
    assert!((d.external_peak_gbps() / 5.0 - 665.6).abs() < 0.1);
    let j = DeviceSpec::hbm3_jedec().resolve().unwrap();
    assert_eq!(
        (j.param("nRCDRD"), j.param("nRC"), j.param("nREFI")),
        (Some(31), Some(72), Some(6240))
    );
}

#[test]
fn each_design_carries_only_its_units() {
    let a = Device::preset("hbm3-attacc-5.2").unwrap();
    let q = Device::preset("hbm3-aqpim-5.2").unwrap();
    let s = Device::preset("hbm3-pimba-5.2").unwrap();
    for k in UnitKind::ALL {
        assert_eq!(a.units.get(k).is_some(), k == UnitKind::Mac, "attacc {k:?}");
        assert_eq!(
            q.units.get(k).is_some(),
            k != UnitKind::Dqmac,
            "aqpim {k:?}"
        );
        assert_eq!(
            s.units.get(k).is_some(),
            matches!(k, UnitKind::Mac | UnitKind::Dqmac),
            "pimba {k:?}"
        );
    }
    // Pimba's device is AttAcc's with the dequantize-and-MAC unit (one per
    // two banks) and its latch added: a 4-bit column issues at nCCDAB, a
    // 2-bit one in twice that.
    assert_eq!((&a.org, &a.params, &a.rules), (&s.org, &s.params, &s.rules));
    assert_eq!(s.units.get(UnitKind::Dqmac).unwrap().banks_per_unit, 2);
    assert_eq!(s.pim_interval(aqpim_pim::Command::QMac, 64), 4);
    assert_eq!(s.pim_interval(aqpim_pim::Command::QMac, 128), 8);
    assert_eq!(s.pim_interval(aqpim_pim::Command::Ldp, 0), 4);
    assert_eq!(s.pim.latch_bytes, 256);
    let extra = 64.0 * 0.094 + 128.0 * 0.25 * 0.0263;
    assert!((s.area().total_mm2 - a.area().total_mm2 - extra).abs() < 1e-9);
    // AQPIM's device is AttAcc's with units added: the same organisation,
    // timing and rules, declared once (`extends`).
    assert_eq!((&a.org, &a.params, &a.rules), (&q.org, &q.params, &q.rules));
    // The area per DRAM die, from the unit table: AttAcc's 128 GEMV units of
    // 0.0808 mm2 with their 512 B buffer and 1 KiB of registers.
    let area = a.area();
    assert_eq!(area.banks_per_die, 128);
    let per_bank = 0.0808 + 0.5 * 0.0263 + 1.0 * 0.0263;
    assert!((area.total_mm2 - 128.0 * per_bank).abs() < 1e-9, "{area:?}");
    assert!((area.die_share - area.total_mm2 / 121.0).abs() < 1e-12);
    // The buffer die's softmax units, one per channel of a stack.
    assert!(
        (area.buffer_die_mm2 - 16.0 * 0.041).abs() < 1e-9,
        "{area:?}"
    );
    assert!(q.area().total_mm2 > area.total_mm2);
    // AQPIM at equal area fits within AttAcc's PIM area per DRAM die.
    let e = Device::preset("hbm3-aqpim-equal-area").unwrap();
    assert!(e.area().total_mm2 <= area.total_mm2, "{:?}", e.area());
    assert_eq!((&e.org, &e.params, &e.rules), (&a.org, &a.params, &a.rules));
    // Peak power: the most demanding command at its interval, every channel of a stack.
    let p = a.power();
    assert_eq!(p.peak_command, "MAC");
    let want = a.stack_op_pj(aqpim_pim::Command::Mac, 16) / (4.0 * 769.0);
    assert!((p.peak_w - want).abs() < 1e-9, "{p:?}");
}

/// Words that name a source in a preset's comment or `source` field.
const CITED: [&str; 11] = [
    "estimate",
    "AttAcc",
    "Horowitz",
    "ISSCC",
    "JEDEC",
    "Ramulator",
    "O'Connor",
    "HBM3",
    "as hbm3-",
    "brief",
    "Pimba",
];

#[test]
fn every_unit_figure_carries_a_source_or_says_estimate() {
    for (name, text) in PRESETS {
        let d = DeviceSpec::preset(name).unwrap();
        let u = &d.units;
        let mut sources: Vec<(&str, &str)> = vec![
            ("buffer", &u.buffer.source),
            ("registers", &u.registers.source),
            ("softmax", &u.softmax.source),
            ("die area", &d.die.dram_die_source),
            ("power budget", &d.die.power_source),
        ];
        if let Some(l) = &u.latch {
            sources.push(("latch", &l.source));
        }
        for (k, unit) in [
            ("mac", &u.mac),
            ("lookup", &u.lookup),
            ("histogram", &u.histogram),
            ("binmac", &u.binmac),
            ("argmin", &u.argmin),
            ("dqmac", &u.dqmac),
        ] {
            if let Some(unit) = unit {
                sources.push((k, &unit.source));
            }
        }
        for (what, src) in sources {
            assert!(
                CITED.iter().any(|c| src.contains(c)),
                "{name}: the {what} figures' source `{src}` names no source and does not say estimate"
            );
        }
        // Every figure line of the unit, die, PIM and energy tables carries
        // a comment that names its source (or says estimate).
        let mut section = String::new();
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                section = t.to_string();
                continue;
            }
            let priced = ["[pim]", "[energy]", "[die]"].contains(&section.as_str())
                || section.starts_with("[units.");
            let numeric = t
                .split_once('=')
                .is_some_and(|(_, v)| v.trim().starts_with(|c: char| c.is_ascii_digit()));
            if priced && numeric {
                let comment = t.split_once('#').map(|(_, c)| c).unwrap_or("");
                let key = t.split('=').next().unwrap_or("").trim();
                assert!(
                    CITED.iter().any(|c| comment.contains(c)) || key == "banks_per_unit",
                    "{name} {section}: `{t}` has no source comment"
                );
            }
        }
    }
}

fn rejects(mutate: impl FnOnce(&mut DeviceSpec), field_part: &str) {
    let mut s = DeviceSpec::hbm3_attacc();
    mutate(&mut s);
    match s.resolve() {
        Err(PimError::Spec { field, reason }) => {
            assert!(
                field.contains(field_part) || reason.contains(field_part),
                "error `{field}: {reason}` does not mention `{field_part}`"
            )
        }
        other => panic!("expected a spec error mentioning {field_part}, got {other:?}"),
    }
}

#[test]
fn inconsistent_specs_are_rejected() {
    rejects(|s| s.organisation.pseudo_channels = 0, "pseudo_channels");
    rejects(|s| s.organisation.bank_groups = 17, "bank_groups");
    rejects(|s| s.pim.lanes = 8, "lanes");
    // A unit too slow for its widest column (256 centroids of 16 elements
    // for 16 banks through one lane) would be an unbounded gate.
    rejects(
        |s| {
            let mut q = DeviceSpec::hbm3_aqpim();
            let mut a = q.units.argmin.take().unwrap();
            a.ops_per_cycle = 1;
            a.banks_per_unit = 16;
            s.units = q.units;
            s.units.argmin = Some(a);
        },
        "units.argmin",
    );
    rejects(|s| s.pim.n_ccdab = 0, "n_ccdab");
    rejects(|s| s.energy.act_pj = f64::NAN, "act_pj");
    rejects(|s| s.rules[0].latency = "nNOPE".into(), "nNOPE");
    rejects(|s| s.rules[0].latency = "nCWL - nCL".into(), "evaluates");
    rejects(|s| s.rules[0].preceding.push("FOO".into()), "FOO");
    rejects(|s| s.rules[1].name = s.rules[0].name.clone(), "duplicate");
    rejects(|s| s.rules[0].following.clear(), "following");
    rejects(
        |s| {
            let faw = s.rules.iter_mut().find(|r| r.window > 1).unwrap();
            faw.following.push("ACTAB".into());
        },
        "windowed",
    );
    rejects(|s| s.refresh.interval = "nMISSING".into(), "nMISSING");
    rejects(
        |s| {
            s.timing.insert("nREFI".into(), TimingValue::Cycles(10));
        },
        "refresh",
    );
    rejects(
        |s| {
            s.timing.insert("nCCDAB".into(), TimingValue::Cycles(4));
        },
        "derived",
    );
    rejects(
        |s| {
            s.timing.insert("nX".into(), TimingValue::Ns { ns: -1.0 });
        },
        "nX",
    );
}

#[test]
fn duplicate_pair_at_one_level_is_rejected() {
    let mut s = DeviceSpec::hbm3_attacc();
    let mut dup = s.rules[0].clone();
    dup.name = "copy".into();
    s.rules.push(dup);
    assert!(
        matches!(s.resolve(), Err(PimError::Spec { reason, .. }) if reason.contains("already has a rule"))
    );
}

#[test]
fn bad_toml_is_a_parse_error() {
    assert!(matches!(
        DeviceSpec::from_toml_str("name = 3"),
        Err(PimError::Parse(_))
    ));
    assert!(matches!(
        DeviceSpec::preset("nope"),
        Err(PimError::UnknownPreset { .. })
    ));
}
