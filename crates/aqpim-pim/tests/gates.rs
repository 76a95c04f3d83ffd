//! Every timing rule of every preset is a tight gate: the following command
//! is illegal at `t - 1` (with an error naming the earliest legal cycle `t`)
//! and legal at `t`. Each rule is probed in isolation: the following command
//! shares the rule's node but, where the level has children, sits in a
//! different child, so deeper rules do not apply.

use aqpim_pim::{
    BankSel, Command, Device, DeviceSpec, Level, Mode, PimError, Program, Scope, SimOptions,
    Simulator, Timer, PRESETS,
};

const BASE: u64 = 1000;

fn bank_for(level: Level) -> BankSel {
    match level {
        Level::Bank => BankSel {
            pc: 0,
            sid: 0,
            bg: 0,
            bank: 0,
        },
        Level::BankGroup => BankSel {
            pc: 0,
            sid: 0,
            bg: 0,
            bank: 1,
        },
        Level::Sid => BankSel {
            pc: 0,
            sid: 0,
            bg: 1,
            bank: 0,
        },
        Level::PseudoChannel => BankSel {
            pc: 0,
            sid: 1,
            bg: 0,
            bank: 0,
        },
        Level::Channel => BankSel {
            pc: 1,
            sid: 0,
            bg: 0,
            bank: 0,
        },
    }
}

fn sel(cmd: Command, b: BankSel) -> Option<BankSel> {
    (cmd.scope() == Scope::Bank).then_some(b)
}

fn probe(
    d: &Device,
    timer: &Timer,
    f: Command,
    fb: Option<BankSel>,
    gate: u64,
    rule: &str,
    latency: u32,
) {
    match timer.check(f, fb, gate - 1) {
        Err(PimError::Timing {
            earliest,
            rule: named,
            ..
        }) => {
            assert_eq!(
                earliest, gate,
                "{}: {} -> gate {gate}, engine says {earliest}",
                d.name, rule
            );
            let named_latency = d.rules.iter().find(|r| r.name == named).map(|r| r.latency);
            assert!(
                named == rule || named_latency == Some(latency),
                "{}: gate of {rule} attributed to {named}",
                d.name
            );
        }
        other => panic!(
            "{}: {rule}: {} at t-1 = {} should be illegal, got {other:?}",
            d.name,
            f.name(),
            gate - 1
        ),
    }
    timer
        .check(f, fb, gate)
        .unwrap_or_else(|e| panic!("{}: {rule}: {} at t should be legal: {e}", d.name, f.name()));
}

fn check_device(d: &Device) -> usize {
    let mut probes = 0;
    let a = BankSel::default();
    for r in &d.rules {
        if r.window > 1 {
            // Rolling window: `window` preceding commands in distinct bank
            // groups under the node, then the following one in another child.
            for &p in &r.preceding {
                for &f in &r.following {
                    let mut timer = Timer::new(d);
                    let mut first = None;
                    for i in 0..r.window as u8 {
                        let b = BankSel {
                            pc: 0,
                            sid: i / 4,
                            bg: i % 4,
                            bank: 0,
                        };
                        let (at, _) = timer.earliest(p, Some(b)).unwrap();
                        let t = at.max(BASE);
                        timer.issue(p, Some(b), t).unwrap();
                        first.get_or_insert(t);
                    }
                    let fb = BankSel {
                        pc: 0,
                        sid: 1,
                        bg: 3,
                        bank: 1,
                    };
                    let gate = first.unwrap() + u64::from(r.latency);
                    probe(d, &timer, f, Some(fb), gate, &r.name, r.latency);
                    probes += 1;
                }
            }
            continue;
        }
        for &p in &r.preceding {
            for &f in &r.following {
                let mut timer = Timer::new(d);
                timer.issue(p, sel(p, a), BASE).unwrap();
                let fb = sel(f, bank_for(r.level));
                probe(
                    d,
                    &timer,
                    f,
                    fb,
                    BASE + u64::from(r.latency),
                    &r.name,
                    r.latency,
                );
                probes += 1;
            }
        }
    }
    probes
}

#[test]
fn every_rule_of_every_preset_is_a_tight_gate() {
    for (name, _) in PRESETS {
        let d = Device::preset(name).unwrap();
        let n = check_device(&d);
        assert!(n >= 90, "{name}: only {n} probes");
    }
}

#[test]
fn gates_hold_under_the_power_limit() {
    for (name, _) in PRESETS {
        let mut s = DeviceSpec::preset(name).unwrap();
        s.pim.power_limited = true;
        let d = s.resolve().unwrap();
        check_device(&d);
    }
}

/// Issue cycles of two back-to-back all-bank `op`s on channel 0.
fn two_ops(d: &Device, op: &str) -> (u64, u64) {
    let mut sim = Simulator::new(
        d,
        SimOptions {
            mode: Mode::TimingOnly,
            refresh: false,
            record_trace: true,
        },
    );
    let p = Program::assemble(&format!("ACTAB ch=0 row=0\n{op}\n{op}\n")).unwrap();
    sim.run(&p).unwrap();
    let t: Vec<u64> = sim
        .take_trace()
        .iter()
        .filter(|e| e.cmd.is_pim_column())
        .map(|e| e.cycle)
        .collect();
    (t[0], t[1])
}

#[test]
fn unit_intervals_follow_lanes_ports_and_the_power_budget() {
    let ops = [
        ("MAC ch=0 col=0 buf=0 reg=0", Command::Mac, 16),
        (
            "LUTACC ch=0 col=0 bits=8 group=32 table=0 reg=0",
            Command::LutAcc,
            32,
        ),
        (
            "LUTACC ch=0 col=0 bits=4 group=64 table=0 reg=0",
            Command::LutAcc,
            64,
        ),
        (
            "HISTACC ch=0 col=0 bits=4 group=64 weights=0 reg=0",
            Command::HistAcc,
            64,
        ),
        ("BINMAC ch=0 col=0 dsub=2 bins=0 out=0", Command::BinMac, 16),
        (
            "ARGMIN ch=0 col=0 start=0 dsub=2 nbits=8 cb=0 reg=0",
            Command::ArgMin,
            512,
        ),
    ];
    for power_limited in [false, true] {
        let mut s = DeviceSpec::preset("hbm3-aqpim-5.2").unwrap();
        s.pim.power_limited = power_limited;
        let d = s.resolve().unwrap();
        for (op, cmd, work) in ops {
            let unit = d.units.get(aqpim_pim::UnitKind::of(cmd).unwrap()).unwrap();
            // The interval from the structure: the unit's cycles for a
            // column, never less than nCCDAB...
            let mut want = u64::from(d.pim.n_ccdab).max(
                (work * u64::from(unit.banks_per_unit)).div_ceil(u64::from(unit.ops_per_cycle)),
            );
            // ... and under the power limit, what keeps the stack's power in its budget.
            if power_limited {
                let per_cycle = d.units.die.stack_power_budget_w * f64::from(d.t_ck_ps);
                want = want.max((d.stack_op_pj(cmd, work) / per_cycle).ceil() as u64);
            }
            assert_eq!(d.pim_interval(cmd, work), want, "{op}");
            let (a, b) = two_ops(&d, op);
            assert_eq!(b - a, want, "{op}, power limited: {power_limited}");
        }
    }
    // Halving the budget below a command's power stretches its interval.
    let mut s = DeviceSpec::preset("hbm3-aqpim-5.2").unwrap();
    s.pim.power_limited = true;
    let d = s.clone().resolve().unwrap();
    let w = d.stack_op_pj(Command::Mac, 16) / (6.0 * f64::from(d.t_ck_ps));
    s.die.stack_power_budget_w = w;
    let d = s.resolve().unwrap();
    assert_eq!(d.pim_interval(Command::Mac, 16), 6);
    assert!(d.power().within_budget);
}

#[test]
fn timer_rejects_early_issue_and_names_the_rule() {
    let d = Device::preset("hbm3-aqpim-5.2").unwrap();
    let mut t = Timer::new(&d);
    let b = BankSel::default();
    t.issue(Command::Act, Some(b), 0).unwrap();
    let err = t.issue(Command::Rd, Some(b), 10).unwrap_err();
    assert_eq!(
        err,
        PimError::Timing {
            cmd: "RD",
            channel: 0,
            cycle: 10,
            rule: "tRCDRD".into(),
            earliest: 19
        }
    );
    assert!(err.to_string().contains("earliest legal cycle is 19"));
}
