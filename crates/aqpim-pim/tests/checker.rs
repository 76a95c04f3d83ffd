//! Random legal programs always pass the independent trace checker; moving
//! any scheduled command one cycle earlier is always caught; random
//! unconstrained programs are accepted exactly when a reference bank-state
//! model says they are legal; streaming reaches the analytic bandwidths.

use aqpim_pim::bench::{external_bandwidth, internal_bandwidth};
use aqpim_pim::{
    check_trace, BankSel, CodeBits, Device, DeviceSpec, Instr, Mode, PimError, Program, SimOptions,
    Simulator, TimingValue, TraceEntry, PRESETS,
};
use half::f16;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn config(cases: u32, seed: u64) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..Config::default()
    }
}

/// The AttAcc preset with a short refresh interval, so that short random
/// programs cross several refreshes.
fn short_refresh(name: &str) -> Device {
    let mut s = DeviceSpec::preset(name).unwrap();
    s.timing.insert("nREFI".into(), TimingValue::Cycles(1200));
    s.resolve().unwrap()
}

/// A few banks spread over pseudo-channels, SIDs and bank groups.
const BANKS: [BankSel; 6] = [
    BankSel {
        pc: 0,
        sid: 0,
        bg: 0,
        bank: 0,
    },
    BankSel {
        pc: 0,
        sid: 0,
        bg: 0,
        bank: 1,
    },
    BankSel {
        pc: 0,
        sid: 0,
        bg: 1,
        bank: 0,
    },
    BankSel {
        pc: 0,
        sid: 1,
        bg: 2,
        bank: 3,
    },
    BankSel {
        pc: 1,
        sid: 0,
        bg: 0,
        bank: 0,
    },
    BankSel {
        pc: 1,
        sid: 1,
        bg: 3,
        bank: 2,
    },
];

fn pim_op(r: &mut ChaCha8Rng, ch: u8) -> Instr {
    let col = r.gen_range(0..32);
    match r.gen_range(0..5) {
        4 => Instr::BinMac {
            ch,
            col,
            dsub: [1, 2, 4, 8, 16][r.gen_range(0..5)],
            bins: r.gen_range(0..64),
            out: 100,
        },
        0 => Instr::Mac {
            ch,
            col,
            buf: r.gen_range(0..64),
            reg: r.gen_range(0..64),
            reduce: r.gen(),
            bcast: r.gen(),
        },
        1 => Instr::LutAcc {
            ch,
            col,
            bits: CodeBits::Eight,
            group: 32,
            table: 0,
            reg: r.gen_range(0..64),
        },
        2 => Instr::HistAcc {
            ch,
            col,
            bits: CodeBits::Four,
            group: 16,
            weights: 0,
            reg: 0,
        },
        _ => Instr::ArgMin {
            ch,
            col,
            start: 0,
            dsub: 4,
            nbits: 4,
            cb: 0,
            reg: 5,
        },
    }
}

fn misc_op(r: &mut ChaCha8Rng, ch: u8) -> Instr {
    match r.gen_range(0..7) {
        4 => Instr::Clr {
            ch,
            off: r.gen_range(0..64),
            len: r.gen_range(1..300),
            die: r.gen(),
        },
        5 => Instr::Red {
            ch,
            src: 0,
            len: r.gen_range(1..8),
            dst: 1024,
        },
        6 => Instr::Rdd {
            ch,
            die: r.gen_range(0..64),
            len: r.gen_range(1..100),
        },
        0 => Instr::Wrgb {
            ch,
            buf: r.gen_range(0..256),
            data: r.gen_range(0..32),
        },
        1 => Instr::Mvd {
            ch,
            reg: 0,
            len: r.gen_range(1..8),
            die: 0,
        },
        2 => Instr::Mvb {
            ch,
            die: 0,
            len: r.gen_range(1..8),
            buf: 512,
            broadcast: r.gen(),
        },
        _ => Instr::Sfm {
            ch,
            die: 0,
            len: r.gen_range(1..300),
            scale: f16::from_f32(0.5),
            stats: r.gen(),
        },
    }
}

/// A random program that is legal by construction on channels 0 and 1.
fn legal_program(seed: u64, len: usize) -> Program {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let banks = 64usize;
    // Per channel: open rows of the BANKS above, and whether everything is open (ACTAB).
    let mut open = [[None::<u32>; 6]; 2];
    let mut all_open = [false; 2];
    let mut v = Vec::new();
    for _ in 0..len {
        let c = r.gen_range(0..2usize);
        let ch = c as u8;
        let roll = r.gen_range(0..100);
        if all_open[c] {
            if roll < 55 {
                v.push(pim_op(&mut r, ch));
            } else if roll < 70 {
                let b = r.gen_range(0..6);
                v.push(Instr::Rd {
                    ch,
                    bank: BANKS[b],
                    col: r.gen_range(0..32),
                });
            } else if roll < 80 {
                v.push(Instr::PreAb { ch });
                all_open[c] = false;
                open[c] = [None; 6];
            } else {
                v.push(misc_op(&mut r, ch));
            }
            continue;
        }
        let any_open = open[c].iter().any(Option::is_some);
        let b = r.gen_range(0..6);
        if roll < 10 && !any_open {
            v.push(Instr::ActAb {
                ch,
                row: r.gen_range(0..8),
            });
            all_open[c] = true;
            open[c] = [Some(0); 6];
        } else if roll < 40 {
            match open[c][b] {
                None => {
                    let row = r.gen_range(0..8);
                    v.push(Instr::Act {
                        ch,
                        bank: BANKS[b],
                        row,
                    });
                    open[c][b] = Some(row);
                }
                Some(_) => v.push(match r.gen_range(0..3) {
                    0 => Instr::Rd {
                        ch,
                        bank: BANKS[b],
                        col: r.gen_range(0..32),
                    },
                    1 => Instr::Wr {
                        ch,
                        bank: BANKS[b],
                        col: r.gen_range(0..32),
                        data: r.gen_range(0..32),
                    },
                    _ => Instr::Stc {
                        ch,
                        bank: BANKS[b],
                        col: r.gen_range(0..32),
                        reg: r.gen_range(0..64),
                        bits: if r.gen() {
                            CodeBits::Eight
                        } else {
                            CodeBits::Four
                        },
                    },
                }),
            }
        } else if roll < 60 {
            if open[c][b].is_some() {
                v.push(Instr::Rd {
                    ch,
                    bank: BANKS[b],
                    col: r.gen_range(0..32),
                });
            }
        } else if roll < 75 {
            v.push(Instr::Pre { ch, bank: BANKS[b] });
            open[c][b] = None;
        } else if roll < 80 {
            v.push(Instr::PreAb { ch });
            open[c] = [None; 6];
        } else {
            v.push(misc_op(&mut r, ch));
        }
    }
    let _ = banks;
    Program::new(v).unwrap()
}

fn run_traced(d: &Device, p: &Program, mode: Mode) -> Result<Vec<TraceEntry>, PimError> {
    let mut s = Simulator::new(
        d,
        SimOptions {
            mode,
            refresh: true,
            record_trace: true,
        },
    );
    s.set_host_data(vec![3; 64]);
    s.run(p)?;
    Ok(s.take_trace())
}

proptest! {
    #![proptest_config(config(48, 0xc4ec))]
    #[test]
    fn legal_programs_pass_the_checker_and_early_moves_are_caught(seed in any::<u64>(), which in 0usize..2, pick in any::<u64>()) {
        let d = short_refresh(["hbm3-aqpim-5.2", "hbm3-jedec-6.4"][which]);
        let p = legal_program(seed, 400);
        let trace = run_traced(&d, &p, Mode::TimingOnly).unwrap();
        prop_assert!(trace.iter().any(|e| e.auto), "the program crosses a refresh");
        check_trace(&d, &trace).unwrap();
        // Any scheduled (non-refresh) command issued after cycle 0 was issued
        // at its earliest legal cycle, so one cycle earlier breaks a rule.
        let movable: Vec<usize> = (0..trace.len()).filter(|&i| !trace[i].auto && trace[i].cycle > 0).collect();
        for k in 0..4 {
            let j = movable[(pick as usize).wrapping_add(k * 7919) % movable.len()];
            let mut bad = trace.clone();
            bad[j].cycle -= 1;
            let res = check_trace(&d, &bad);
            prop_assert!(matches!(res, Err(PimError::Trace { index, .. }) if index <= j + 1), "entry {} moved early: {:?}", j, res);
        }
    }
}

/// Reference legality of a single-channel command sequence: bank state only.
fn model_accepts(p: &Program) -> Option<usize> {
    let mut open = [None::<u32>; 64];
    for (i, ins) in p.instrs().iter().enumerate() {
        let idx = |b: &BankSel| {
            ((b.pc as usize * 2 + b.sid as usize) * 4 + b.bg as usize) * 4 + b.bank as usize
        };
        match ins {
            Instr::Act { bank, row, .. } => {
                if open[idx(bank)].is_some() {
                    return Some(i);
                }
                open[idx(bank)] = Some(*row);
            }
            Instr::Pre { bank, .. } => open[idx(bank)] = None,
            Instr::ActAb { row, .. } => {
                if open.iter().any(Option::is_some) {
                    return Some(i);
                }
                open = [Some(*row); 64];
            }
            Instr::PreAb { .. } => open = [None; 64],
            Instr::Rd { bank, .. } | Instr::Wr { bank, .. } | Instr::Stc { bank, .. }
                if open[idx(bank)].is_none() =>
            {
                return Some(i);
            }
            Instr::Mac { .. }
            | Instr::LutAcc { .. }
            | Instr::HistAcc { .. }
            | Instr::ArgMin { .. }
            | Instr::BinMac { .. }
                if open.iter().any(Option::is_none) =>
            {
                return Some(i);
            }
            _ => {}
        }
    }
    None
}

proptest! {
    #![proptest_config(config(200, 0x111e9a1))]
    #[test]
    fn unconstrained_programs_are_rejected_exactly_when_illegal(seed in any::<u64>()) {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let mut v = Vec::new();
        for _ in 0..r.gen_range(1..40) {
            let b = BANKS[r.gen_range(0..6)];
            v.push(match r.gen_range(0..9) {
                0 | 1 => Instr::Act { ch: 0, bank: b, row: r.gen_range(0..4) },
                2 => Instr::Pre { ch: 0, bank: b },
                3 => Instr::ActAb { ch: 0, row: 1 },
                4 => Instr::PreAb { ch: 0 },
                5 | 6 => Instr::Rd { ch: 0, bank: b, col: 1 },
                7 => pim_op(&mut r, 0),
                _ => misc_op(&mut r, 0),
            });
        }
        let p = Program::new(v).unwrap();
        let d = short_refresh("hbm3-aqpim-5.2");
        match (model_accepts(&p), run_traced(&d, &p, Mode::Functional)) {
            (None, Ok(trace)) => check_trace(&d, &trace).unwrap(),
            (Some(_), Err(PimError::State { .. })) => {}
            (m, res) => prop_assert!(false, "model says {:?}, simulator says {:?}", m, res.map(|t| t.len())),
        }
    }
}

#[test]
fn checker_catches_hand_made_violations() {
    let d = Device::preset("hbm3-aqpim-5.2").unwrap();
    let e = |cycle, cmd, bank, row| TraceEntry {
        cycle,
        cmd,
        channel: 0,
        bank,
        row,
        col: 0,
        len: 0,
        auto: false,
    };
    use aqpim_pim::Command::*;
    let cases: Vec<(Vec<TraceEntry>, &str)> = vec![
        (vec![e(0, Act, 0, 1), e(18, Rd, 0, 1)], "tRCDRD"),
        (
            vec![e(0, Act, 0, 1), e(19, Rd, 0, 1), e(19, Rd, 4, 0)],
            "command-bus",
        ),
        (vec![e(0, Rd, 0, 0)], "row-open"),
        // A column access records the row it reads: it must be the open one.
        (vec![e(0, Act, 0, 1), e(19, Rd, 0, 2)], "row-open"),
        (vec![e(0, Act, 0, 1), e(100, Act, 0, 1)], "bank-closed"),
        (
            vec![
                e(0, Act, 0, 1),
                e(4, Act, 4, 1),
                e(8, Act, 8, 1),
                e(12, Act, 12, 1),
                e(20, Act, 16, 1),
            ],
            "tFAW",
        ),
        (vec![e(0, ActAb, 0, 1), e(30, PreAb, 0, 0)], "tRAS"),
        (
            vec![e(0, ActAb, 0, 1), e(19, Mac, 0, 0), e(22, LutAcc, 0, 0)],
            "tCCDAB",
        ),
    ];
    for (trace, rule) in cases {
        match check_trace(&d, &trace) {
            Err(PimError::Trace { rule: r, .. }) => assert_eq!(r, rule),
            other => panic!("{rule}: expected a violation, got {other:?}"),
        }
    }
    check_trace(&d, &[e(0, Act, 0, 1), e(19, Rd, 0, 1), e(23, Rd, 0, 1)]).unwrap();
}

#[test]
fn streaming_reaches_the_analytic_bandwidth_within_2_percent() {
    for (name, _) in PRESETS {
        for power_limited in [false, true] {
            let mut s = DeviceSpec::preset(name).unwrap();
            s.pim.power_limited = power_limited;
            let d = s.resolve().unwrap();
            let int = internal_bandwidth(&d, 1500).unwrap();
            assert!(
                int.within_2_percent,
                "{name} internal: {} vs {} GB/s",
                int.simulated_gbps, int.analytic_gbps
            );
            assert!(
                int.stats.refreshes >= 20,
                "{name}: {} refreshes",
                int.stats.refreshes
            );
        }
        let d = Device::preset(name).unwrap();
        let ext = external_bandwidth(&d, 300).unwrap();
        assert!(
            ext.within_2_percent,
            "{name} external: {} vs {} GB/s",
            ext.simulated_gbps, ext.analytic_gbps
        );
        assert!(ext.stats.refreshes >= 10);
    }
}

proptest! {
    #![proptest_config(config(1000, 0xbad7ace))]
    #[test]
    fn random_traces_never_panic_the_checker(raw in prop::collection::vec((any::<u64>(), 0usize..aqpim_pim::Command::ALL.len(), 0u16..90, any::<u16>(), any::<u32>(), any::<u32>()), 0..24)) {
        let d = Device::preset("hbm3-aqpim-5.2").unwrap();
        let mut cycle = 0u64;
        let trace: Vec<TraceEntry> = raw
            .into_iter()
            .map(|(dt, c, ch, bank, row, len)| {
                cycle = cycle.saturating_add(dt % 64);
                TraceEntry { cycle, cmd: aqpim_pim::Command::ALL[c], channel: ch % 3, bank: bank % 70, row, col: 0, len, auto: false }
            })
            .collect();
        let _ = check_trace(&d, &trace);
    }
}
