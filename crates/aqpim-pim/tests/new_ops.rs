//! The instructions added for attention lowering (CLR, BINMAC, MAC bcast,
//! SFM stats, RED, RDD, STC): semantics against plain computations on random
//! data (fixed seeds), channel occupancy against the formulas, range checks,
//! the STC data error, and identical statistics in both modes.

use aqpim_pim::{
    check_trace, BankSel, Device, Mode, PimError, Program, SimOptions, Simulator, TraceEntry,
    PRESETS,
};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Whether the device has every PIM unit these programs use (QMAC's aside,
/// tested in `scalar_ops.rs`), one per bank,
/// and the registers their bins address (the timings below assume it).
fn has_every_unit(d: &Device) -> bool {
    aqpim_pim::UnitKind::ALL
        .iter()
        .filter(|&&k| k != aqpim_pim::UnitKind::Dqmac)
        .all(|&k| d.units.get(k).is_some_and(|u| u.banks_per_unit == 1))
        && d.pim.registers >= 8448
}

fn dev() -> Device {
    Device::preset("hbm3-aqpim-5.2").unwrap()
}

fn sim(d: &Device, mode: Mode) -> Simulator {
    Simulator::new(
        d,
        SimOptions {
            mode,
            refresh: true,
            record_trace: true,
        },
    )
}

fn bank(i: usize, d: &Device) -> BankSel {
    let (pc, sid, bg, b) = d.org.bank_coords(i);
    BankSel {
        pc: pc as u8,
        sid: sid as u8,
        bg: bg as u8,
        bank: b as u8,
    }
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| f16::from_f32(*x).to_bits().to_le_bytes())
        .collect()
}

/// Random FP16-exact values in `-2..2`.
fn values(r: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| f16::from_f32(r.gen_range(-2.0..2.0)).to_f32())
        .collect()
}

/// Row 5 of every bank of channel `ch` gets random FP16 values (32 columns x
/// 16 lanes); returns them per bank.
fn load_rows(s: &mut Simulator, d: &Device, ch: usize, r: &mut ChaCha8Rng) -> Vec<Vec<f32>> {
    (0..d.org.banks_per_channel)
        .map(|i| {
            let v = values(r, 512);
            s.write_bank(ch, bank(i, d), 5, 0, &f16_bytes(&v)).unwrap();
            v
        })
        .collect()
}

#[test]
fn clr_zeroes_registers_of_every_bank_or_the_die() {
    let d = dev();
    let mut s = sim(&d, Mode::Functional);
    for i in 0..d.org.banks_per_channel {
        s.write_registers(1, bank(i, &d), 0, &[1.5; 64]).unwrap();
        s.write_registers(0, bank(i, &d), 0, &[2.5; 64]).unwrap();
    }
    s.write_buffer_die(1, 0, &[3.5; 200]).unwrap();
    let p = Program::assemble(
        "LOOP 2 reg=20\n  CLR ch=1 off=4 len=8\nENDLOOP\nCLR ch=1 off=100 len=20 die\n",
    )
    .unwrap();
    s.run(&p).unwrap();
    for i in [0usize, 33, 63] {
        let r = s.registers(1, bank(i, &d)).unwrap();
        for (k, v) in r[..64].iter().enumerate() {
            let cleared = (4..12).contains(&k) || (24..32).contains(&k);
            assert_eq!(*v, if cleared { 0.0 } else { 1.5 }, "bank {i} reg {k}");
        }
        // Other channels are untouched.
        assert_eq!(s.registers(0, bank(i, &d)).unwrap()[5], 2.5);
    }
    let die = s.buffer_die(1).unwrap();
    for (k, v) in die[..200].iter().enumerate() {
        assert_eq!(*v, if (100..120).contains(&k) { 0.0 } else { 3.5 });
    }
}

#[test]
fn binmac_accumulates_bins_times_codebook() {
    let d = dev();
    let mut s = sim(&d, Mode::Functional);
    let mut r = ChaCha8Rng::seed_from_u64(0xb1);
    let rows = load_rows(&mut s, &d, 2, &mut r);
    // Registers: bins at 1000.., outputs at 8200.. (start non-zero).
    let mut regs0 = Vec::new();
    for i in 0..d.org.banks_per_channel {
        let mut v: Vec<f32> = (0..8448).map(|_| r.gen_range(-1.0..1.0)).collect();
        v[..1000].fill(0.0);
        s.write_registers(2, bank(i, &d), 0, &v).unwrap();
        regs0.push(v);
    }
    // dsub 4: columns 3..6 (loop, bins stride 4 = lanes / dsub), then dsub 16 and dsub 1.
    let p = Program::assemble(
        "ACTAB ch=2 row=5\n\
         LOOP 3 col=1 reg=4\n  BINMAC ch=2 col=3 dsub=4 bins=1000 out=8200\nENDLOOP\n\
         BINMAC ch=2 col=9 dsub=16 bins=1100 out=8300\n\
         BINMAC ch=2 col=10 dsub=1 bins=1200 out=8400\n",
    )
    .unwrap();
    let st = s.run(&p).unwrap();
    assert_eq!(st.commands["BINMAC"], 5);
    assert_eq!(st.lane_ops, 5 * 64 * 16);
    assert_eq!(st.bank_column_accesses, 5 * 64);
    for b in [0usize, 17, 63] {
        let mut want = regs0[b].clone();
        let x = &rows[b];
        let mut step = |col: usize, dsub: usize, bins: usize, out: usize| {
            for l in 0..16 {
                let w = want[bins + l / dsub];
                want[out + l % dsub] += w * x[col * 16 + l];
            }
        };
        for k in 0..3 {
            step(3 + k, 4, 1000 + 4 * k, 8200);
        }
        step(9, 16, 1100, 8300);
        step(10, 1, 1200, 8400);
        assert_eq!(s.registers(2, bank(b, &d)).unwrap(), want, "bank {b}");
    }
}

#[test]
fn mac_bcast_multiplies_every_lane_by_one_buffer_element() {
    let d = dev();
    let mut s = sim(&d, Mode::Functional);
    let mut r = ChaCha8Rng::seed_from_u64(0xbca);
    let rows = load_rows(&mut s, &d, 2, &mut r);
    let mut bufs = Vec::new();
    for i in 0..d.org.banks_per_channel {
        let v = values(&mut r, 64);
        s.write_buffer(2, Some(bank(i, &d)), 0, &f16_bytes(&v))
            .unwrap();
        bufs.push(v);
    }
    let p = Program::assemble(
        "ACTAB ch=2 row=5\n\
         LOOP 4 col=1 buf=1\n  MAC ch=2 col=0 buf=10 reg=0 bcast\nENDLOOP\n\
         MAC ch=2 col=7 buf=20 reg=40 reduce bcast\n",
    )
    .unwrap();
    let st = s.run(&p).unwrap();
    assert_eq!(st.lane_ops, 5 * 64 * 16);
    for b in [1usize, 62] {
        let (x, y) = (&rows[b], &bufs[b]);
        let mut want = [0f32; 41];
        for k in 0..4 {
            for l in 0..16 {
                want[l] += x[k * 16 + l] * y[10 + k];
            }
        }
        let mut sum = 0f32;
        for l in 0..16 {
            sum += x[7 * 16 + l] * y[20];
        }
        want[40] = sum;
        assert_eq!(&s.registers(2, bank(b, &d)).unwrap()[..41], &want[..]);
    }
}

#[test]
fn sfm_stats_appends_max_and_sum() {
    let d = dev();
    let mut s = sim(&d, Mode::Functional);
    let mut r = ChaCha8Rng::seed_from_u64(0x5f);
    let x: Vec<f32> = (0..300).map(|_| r.gen_range(-20.0..20.0)).collect();
    s.write_buffer_die(3, 10, &x).unwrap();
    s.write_buffer_die(3, 310, &[9.0, 9.0, 9.0]).unwrap();
    let p = Program::assemble("SFM ch=3 die=10 len=300 scale=0.5 stats\n").unwrap();
    s.run(&p).unwrap();
    let y: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
    let m = y.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    let mut e = Vec::new();
    for v in &y {
        let t = (v - m).exp();
        sum += t;
        e.push(t);
    }
    let want: Vec<f32> = e.iter().map(|t| t / sum).collect();
    let die = s.buffer_die(3).unwrap();
    assert_eq!(&die[10..310], &want[..]);
    assert_eq!((die[310], die[311], die[312]), (m, sum, 9.0));
    // The two extra elements are range-checked.
    let top = d.pim.buffer_die_elements - 301;
    let p = Program::assemble(&format!("SFM ch=3 die={top} len=300 scale=1 stats\n")).unwrap();
    let e = s.run(&p).unwrap_err();
    assert!(matches!(e, PimError::Program { index: 0, .. }), "{e}");
    let p = Program::assemble(&format!("SFM ch=3 die={} len=300 scale=1\n", top + 1)).unwrap();
    s.run(&p).unwrap();
}

#[test]
fn mvd_then_red_sums_bank_slices_and_rdd_reads_them_out() {
    let d = dev();
    let mut s = sim(&d, Mode::Functional);
    let mut r = ChaCha8Rng::seed_from_u64(0x7ed);
    let banks = d.org.banks_per_channel;
    let mut regs = Vec::new();
    for i in 0..banks {
        let v: Vec<f32> = (0..24).map(|_| r.gen_range(-3.0..3.0)).collect();
        s.write_registers(4, bank(i, &d), 0, &v).unwrap();
        regs.push(v);
    }
    // Two 12-register halves; the second RED overlaps its own source (dst = src).
    let p = Program::assemble(
        "MVD ch=4 reg=0 len=12 die=0\n\
         RED ch=4 src=0 len=12 dst=1000\n\
         MVD ch=4 reg=12 len=12 die=2000\n\
         RED ch=4 src=2000 len=12 dst=2000\n\
         LOOP 2 die=2\n  RDD ch=4 die=1000 len=2\nENDLOOP\n\
         RDD ch=4 die=2000 len=12\n",
    )
    .unwrap();
    let st = s.run(&p).unwrap();
    let sums = |base: usize| -> Vec<f32> {
        (0..12)
            .map(|k| {
                let mut acc = regs[0][base + k];
                for reg in regs.iter().skip(1) {
                    acc += reg[base + k];
                }
                acc
            })
            .collect()
    };
    let (lo, hi) = (sums(0), sums(12));
    let die = s.buffer_die(4).unwrap();
    assert_eq!(&die[1000..1012], &lo[..]);
    assert_eq!(&die[2000..2012], &hi[..]);
    let want: Vec<u8> = lo[..4]
        .iter()
        .chain(&hi)
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(s.read_log(), &want[..]);
    assert_eq!(st.bytes_external, 4 * 16);
    assert_eq!(
        st.bytes_buffer_die,
        2 * (64 * 12 * 4) /* MVD */ + 2 * (4 * 64 * 12) /* RED */
    );
    assert!(st.energy.io_pj > 0.0);
}

#[test]
fn stc_packs_code_registers_into_a_column() {
    let d = dev();
    let mut s = sim(&d, Mode::Functional);
    let mut r = ChaCha8Rng::seed_from_u64(0x57c);
    let b = bank(37, &d);
    let codes8: Vec<u8> = (0..32).map(|_| r.gen()).collect();
    let codes4: Vec<u8> = (0..64).map(|_| r.gen_range(0..16)).collect();
    let as_f32 = |c: &[u8]| c.iter().map(|&v| f32::from(v)).collect::<Vec<_>>();
    s.write_registers(5, b, 100, &as_f32(&codes8)).unwrap();
    s.write_registers(5, b, 200, &as_f32(&codes4)).unwrap();
    s.write_bank(5, b, 9, 0, &[0xEE; 1024]).unwrap();
    let sel = format!("ch=5 pc={} sid={} bg={} bank={}", b.pc, b.sid, b.bg, b.bank);
    let p = Program::assemble(&format!(
        "ACT {sel} row=9\nSTC {sel} col=3 reg=100\nSTC {sel} col=4 reg=200 bits=4\nRD {sel} col=3\n"
    ))
    .unwrap();
    let st = s.run(&p).unwrap();
    let mut packed4 = vec![0u8; 32];
    for (p, &c) in codes4.iter().enumerate() {
        packed4[p / 2] |= c << (4 * (p % 2));
    }
    assert_eq!(s.read_bank(5, b, 9, 96, 32).unwrap(), codes8);
    assert_eq!(s.read_bank(5, b, 9, 128, 32).unwrap(), packed4);
    assert_eq!(s.read_bank(5, b, 9, 160, 32).unwrap(), vec![0xEE; 32]);
    assert_eq!(s.read_log(), &codes8[..]);
    assert_eq!(st.bytes_external, 32, "STC moves no external bytes");
    assert_eq!(st.bytes_internal, 3 * 32);
    // Another bank's row is untouched.
    assert_eq!(
        s.read_bank(5, bank(36, &d), 9, 96, 32).unwrap(),
        vec![0; 32]
    );
}

#[test]
fn stc_rejects_registers_that_are_not_codes_in_functional_mode() {
    let d = dev();
    let b = bank(5, &d);
    let sel = format!("ch=0 pc={} sid={} bg={} bank={}", b.pc, b.sid, b.bg, b.bank);
    for (bad, bits) in [
        (2.5f32, 8),
        (-1.0, 8),
        (256.0, 8),
        (16.0, 4),
        (f32::NAN, 4),
        (f32::INFINITY, 8),
    ] {
        let mut s = sim(&d, Mode::Functional);
        let mut v = vec![1.0f32; 64];
        v[7] = bad;
        s.write_registers(0, b, 0, &v).unwrap();
        let p = Program::assemble(&format!(
            "ACT {sel} row=1\nSTC {sel} col=2 reg=0 bits={bits}\n"
        ))
        .unwrap();
        let e = s.run(&p).unwrap_err();
        match &e {
            PimError::Data { instr, target, .. } => {
                assert!(instr.starts_with("STC"), "{e}");
                assert!(target.contains("bank=1"), "{e}");
                assert!(e.to_string().contains("register 7"), "{e}");
            }
            other => panic!("expected a data error, got {other}"),
        }
        // Nothing was issued or written for the failing STC.
        assert_eq!(s.trace().len(), 1);
        assert_eq!(s.read_bank(0, b, 1, 64, 32).unwrap(), vec![0; 32]);
        // Timing-only mode does not look at data.
        let mut t = sim(&d, Mode::TimingOnly);
        t.write_registers(0, b, 0, &v).unwrap();
        t.run(&p).unwrap();
    }
}

#[test]
fn new_ops_are_range_checked_under_loops() {
    let d = dev();
    let regs = d.pim.registers;
    let die = d.pim.buffer_die_elements;
    for (text, field) in [
        (format!("CLR ch=0 off={} len=2", regs - 1), "off"),
        (format!("CLR ch=0 off={} len=2 die", die - 1), "off"),
        (
            "LOOP 20 reg=500\n CLR ch=0 off=0 len=1\nENDLOOP".into(),
            "off",
        ),
        (
            "ACTAB ch=0 row=0\nBINMAC ch=0 col=0 dsub=3 bins=0 out=0".into(),
            "divide",
        ),
        (
            format!("BINMAC ch=0 col=0 dsub=4 bins=0 out={}", regs - 3),
            "out",
        ),
        (
            format!(
                "LOOP 2 reg=4\nBINMAC ch=0 col=0 dsub=4 bins={} out=0\nENDLOOP",
                regs - 7
            ),
            "bins",
        ),
        (
            "LOOP 2 col=31\nBINMAC ch=0 col=1 dsub=4 bins=0 out=0\nENDLOOP".into(),
            "col",
        ),
        (
            "MAC ch=0 col=0 buf=16383 reg=0 bcast\nMAC ch=0 col=0 buf=16383 reg=0".into(),
            "buf",
        ),
        (format!("RED ch=0 src={} len=1 dst=0", die - 63), "src"),
        (format!("RED ch=0 src=0 len=2 dst={}", die - 1), "dst"),
        (
            "LOOP 2 die=511\nRDD ch=0 die=65000 len=30\nENDLOOP".into(),
            "die",
        ),
        (
            format!(
                "STC ch=0 pc=0 sid=0 bg=0 bank=0 col=0 reg={} bits=4",
                regs - 63
            ),
            "reg",
        ),
        ("STC ch=0 pc=0 sid=0 bg=0 bank=0 col=32 reg=0".into(), "col"),
        ("RDD ch=80 die=0 len=1".into(), "channel"),
    ] {
        let p = Program::assemble(&text).unwrap();
        let e = sim(&d, Mode::TimingOnly).run(&p).unwrap_err();
        assert!(
            matches!(e, PimError::Program { .. }) && e.to_string().contains(field),
            "`{text}`: {e}"
        );
    }
    // The largest in-range forms run.
    let ok = format!(
        "CLR ch=0 off={} len=1\nCLR ch=0 off={} len=1 die\nRED ch=0 src={} len=1 dst={}\n\
         RDD ch=0 die={} len=1\nMAC ch=0 col=0 buf=16383 reg=0 bcast\n",
        regs - 1,
        die - 1,
        die - 64,
        die - 1,
        die - 1
    );
    let p = Program::assemble(&format!("ACTAB ch=0 row=0\n{ok}")).unwrap();
    sim(&d, Mode::TimingOnly).run(&p).unwrap();
}

#[test]
fn state_rules_apply_to_binmac_and_stc() {
    let d = dev();
    let mut s = sim(&d, Mode::Functional);
    let e = s
        .run(&Program::assemble("BINMAC ch=0 col=0 dsub=4 bins=0 out=100").unwrap())
        .unwrap_err();
    assert!(
        matches!(
            e,
            PimError::State {
                rule: "all-banks-open",
                ..
            }
        ),
        "{e}"
    );
    let e = s
        .run(&Program::assemble("STC ch=0 pc=0 sid=0 bg=0 bank=0 col=0 reg=0").unwrap())
        .unwrap_err();
    assert!(
        matches!(
            e,
            PimError::State {
                rule: "row-open",
                ..
            }
        ),
        "{e}"
    );
}

/// A program with every new instruction and flag, on two channels.
const EVERY_NEW_OP: &str = "\
CLR ch=0 off=0 len=8448
CLR ch=1 off=0 len=4096 die
ACTAB ch=0 row=5
LOOP 8 col=1 buf=1
  MAC ch=0 col=0 buf=0 reg=0 bcast
ENDLOOP
MAC ch=0 col=8 buf=0 reg=20 reduce bcast
LOOP 4 col=1 reg=4
  BINMAC ch=0 col=10 dsub=4 bins=100 out=8200
ENDLOOP
MVD ch=0 reg=0 len=16 die=0
CLR ch=0 off=0 len=16
RED ch=0 src=0 len=16 dst=2048
SFM ch=0 die=2048 len=16 scale=0.25 stats
RDD ch=0 die=2048 len=18
PREAB ch=0
ACT ch=0 pc=0 sid=1 bg=2 bank=3 row=9
STC ch=0 pc=0 sid=1 bg=2 bank=3 col=4 reg=300
STC ch=0 pc=0 sid=1 bg=2 bank=3 col=5 reg=300 bits=4
RD ch=0 pc=0 sid=1 bg=2 bank=3 col=4
PRE ch=0 pc=0 sid=1 bg=2 bank=3
ACTAB ch=1 row=0
BINMAC ch=1 col=0 dsub=16 bins=0 out=16
MVD ch=1 reg=0 len=32 die=0
RED ch=1 src=0 len=32 dst=4096
RDD ch=1 die=4096 len=32
";

#[test]
fn timing_only_matches_functional_and_the_checker_accepts_the_trace() {
    for (name, _) in PRESETS {
        let d = Device::preset(name).unwrap();
        if !has_every_unit(&d) {
            continue; // AttAcc's has its MAC only; the equal-area one shares units
        }
        let p = Program::assemble(EVERY_NEW_OP).unwrap();
        let mut runs = Vec::new();
        for mode in [Mode::Functional, Mode::TimingOnly] {
            let mut s = sim(&d, mode);
            let mut r = ChaCha8Rng::seed_from_u64(0x0d);
            load_rows(&mut s, &d, 0, &mut r);
            let st = s.run(&p).unwrap();
            check_trace(&d, s.trace()).unwrap();
            runs.push((st, s.take_trace()));
        }
        assert_eq!(runs[0], runs[1], "{name}");
        let st = &runs[0].0;
        for m in ["CLR", "BINMAC", "RED", "RDD", "STC", "SFM", "MAC"] {
            assert!(st.commands.get(m).copied().unwrap_or(0) > 0, "{name}: {m}");
        }
    }
}

#[test]
fn channel_busy_occupancy_follows_the_formulas() {
    for (name, _) in PRESETS {
        let d = Device::preset(name).unwrap();
        if !has_every_unit(&d) {
            continue; // AttAcc's has its MAC only; the equal-area one shares units
        }
        let banks = d.org.banks_per_channel as u64;
        let lanes = d.pim.lanes as u64;
        let mv = u64::from(d.pim.mv_bytes_per_cycle);
        let sfm = u64::from(d.pim.sfm_elements_per_cycle);
        let ext = (d.org.pseudo_channels * d.org.column_bytes) as u64
            / u64::from(d.param("nBL").unwrap());
        assert_eq!(ext, 32, "{name}: 32 B per cycle");
        assert_eq!(d.external_bytes_per_cycle(), ext);
        for (text, busy) in [
            ("CLR ch=0 off=0 len=8448", 8448u64.div_ceil(lanes)),
            ("CLR ch=0 off=0 len=17", 17u64.div_ceil(lanes)),
            ("CLR ch=0 off=0 len=1000 die", (4 * 1000u64).div_ceil(mv)),
            ("CLR ch=0 off=0 len=3 die", (4 * 3u64).div_ceil(mv)),
            ("RED ch=0 src=0 len=32 dst=4096", (banks * 32).div_ceil(sfm)),
            ("RED ch=0 src=0 len=1 dst=4096", banks.div_ceil(sfm)),
            ("RDD ch=0 die=0 len=100", (4 * 100u64).div_ceil(ext)),
            ("RDD ch=0 die=0 len=7", (4 * 7u64).div_ceil(ext)),
            (
                "SFM ch=0 die=0 len=100 scale=1 stats",
                100u64.div_ceil(sfm) + u64::from(d.pim.sfm_latency),
            ),
        ] {
            let mut s = sim(&d, Mode::TimingOnly);
            let p = Program::assemble(&format!("{text}\nPREAB ch=0\n")).unwrap();
            let st = s.run(&p).unwrap();
            let t = s.trace();
            assert_eq!(t[0].cycle, 0, "{name}: {text}");
            assert_eq!(t[1].cycle, busy, "{name}: `{text}` occupies {busy} cycles");
            assert_eq!(st.cycles, busy + 1, "{name}: {text}");
            // One cycle earlier is a channel-busy violation for the checker.
            if busy > 1 {
                let mut bad = t.to_vec();
                bad[1].cycle -= 1;
                let e = check_trace(&d, &bad).unwrap_err();
                assert!(e.to_string().contains("channel-busy"), "{name}: {e}");
            }
        }
        // CLR without `die` records no die flag; with it, bit 31.
        let mut s = sim(&d, Mode::TimingOnly);
        s.run(&Program::assemble("CLR ch=0 off=0 len=9\nCLR ch=0 off=0 len=9 die").unwrap())
            .unwrap();
        assert_eq!(s.trace()[0].len, 9);
        assert_eq!(s.trace()[1].len, 9 | TraceEntry::DIE);
    }
}

#[test]
fn clr_waits_for_in_flight_pim_ops_and_binmac_stc_time_as_mac_wr() {
    for (name, _) in PRESETS {
        let d = Device::preset(name).unwrap();
        if !has_every_unit(&d) {
            continue; // AttAcc's has its MAC only; the equal-area one shares units
        }
        let pim_mv = d.rules.iter().find(|r| r.name == "tPIM_MV").unwrap();
        let clr = aqpim_pim::Command::from_name("CLR").unwrap();
        assert!(pim_mv.following.contains(&clr), "{name}");
        for r in &d.rules {
            let has = |l: &[aqpim_pim::Command], n: &str| l.iter().any(|c| c.name() == n);
            for l in [&r.preceding, &r.following] {
                assert_eq!(has(l, "MAC"), has(l, "BINMAC"), "{name}: {}", r.name);
                assert_eq!(has(l, "WR"), has(l, "STC"), "{name}: {}", r.name);
            }
        }
        // Same program with MAC / BINMAC and WR / STC times identically.
        let run = |text: &str| {
            let mut s = sim(&d, Mode::TimingOnly);
            s.set_host_data(vec![0; 64]);
            s.run(&Program::assemble(text).unwrap()).unwrap();
            s.trace().iter().map(|e| e.cycle).collect::<Vec<_>>()
        };
        let a = run("ACTAB ch=0 row=1\nMAC ch=0 col=0 buf=0 reg=0\nMAC ch=0 col=1 buf=0 reg=0\nCLR ch=0 off=0 len=1\nPREAB ch=0\nACT ch=0 pc=0 sid=0 bg=0 bank=0 row=1\nWR ch=0 pc=0 sid=0 bg=0 bank=0 col=0 data=0\nWR ch=0 pc=0 sid=0 bg=0 bank=0 col=1 data=0\nPRE ch=0 pc=0 sid=0 bg=0 bank=0\n");
        let b = run("ACTAB ch=0 row=1\nBINMAC ch=0 col=0 dsub=4 bins=0 out=16\nBINMAC ch=0 col=1 dsub=4 bins=0 out=16\nCLR ch=0 off=0 len=1\nPREAB ch=0\nACT ch=0 pc=0 sid=0 bg=0 bank=0 row=1\nSTC ch=0 pc=0 sid=0 bg=0 bank=0 col=0 reg=0\nSTC ch=0 pc=0 sid=0 bg=0 bank=0 col=1 reg=0\nPRE ch=0 pc=0 sid=0 bg=0 bank=0\n");
        assert_eq!(a, b, "{name}");
        let gap = a[3] - a[2];
        assert!(
            gap >= u64::from(pim_mv.latency),
            "{name}: CLR {gap} after MAC"
        );
    }
}
