//! Functional semantics of every data instruction against a reference
//! computed here, the untimed loader, strict state errors, program checks,
//! and timing-only runs matching functional ones exactly.

use aqpim_pim::bench::{standard_mix, MIX_HOST_BYTES};
use aqpim_pim::{BankSel, Device, Mode, PimError, Program, SimOptions, Simulator};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn dev() -> Device {
    Device::preset("hbm3-aqpim-5.2").unwrap()
}

fn sim(d: &Device) -> Simulator {
    Simulator::new(d, SimOptions::default())
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

fn f16s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
        .collect()
}

#[test]
fn wr_then_rd_round_trips_host_data_and_loader() {
    let d = dev();
    let mut s = sim(&d);
    let host: Vec<u8> = (0..64u8).collect();
    s.set_host_data(host.clone());
    let b = BankSel {
        pc: 1,
        sid: 1,
        bg: 3,
        bank: 2,
    };
    s.write_bank(3, b, 9, 64, &[7; 32]).unwrap();
    let p = Program::assemble(
        "ACT ch=3 pc=1 sid=1 bg=3 bank=2 row=9\n\
         WR ch=3 pc=1 sid=1 bg=3 bank=2 col=5 data=32\n\
         RD ch=3 pc=1 sid=1 bg=3 bank=2 col=5\n\
         RD ch=3 pc=1 sid=1 bg=3 bank=2 col=2\n\
         RD ch=3 pc=1 sid=1 bg=3 bank=2 col=0\n",
    )
    .unwrap();
    let st = s.run(&p).unwrap();
    assert_eq!(&s.read_log()[..32], &host[32..64]);
    assert_eq!(&s.read_log()[32..64], &[7; 32]);
    assert_eq!(&s.read_log()[64..96], &[0; 32]);
    assert_eq!(
        s.read_bank(3, b, 9, 160, 32).unwrap(),
        host[32..64].to_vec()
    );
    assert_eq!(st.commands["RD"], 3);
    assert_eq!(st.bytes_external, 4 * 32);
    assert_eq!((st.row_misses, st.row_hits), (1, 3));
}

#[test]
fn lazily_allocated_arrays_reach_the_last_row_of_the_last_channel() {
    let d = dev();
    let mut s = sim(&d);
    let last_ch = d.org.channels - 1;
    let b = bank(d.org.banks_per_channel - 1, &d);
    let last_row = d.org.rows as u32 - 1;
    s.write_bank(last_ch, b, last_row, 992, &[0xAB; 32])
        .unwrap();
    let text = format!(
        "ACT ch={last_ch} pc={} sid={} bg={} bank={} row={last_row}\nRD ch={last_ch} pc={} sid={} bg={} bank={} col=31\n",
        b.pc, b.sid, b.bg, b.bank, b.pc, b.sid, b.bg, b.bank
    );
    s.run(&Program::assemble(&text).unwrap()).unwrap();
    assert_eq!(s.read_log(), &[0xAB; 32]);
    assert!(s.write_bank(last_ch + 1, b, 0, 0, &[1]).is_err());
    assert!(s.write_bank(0, b, last_row + 1, 0, &[1]).is_err());
}

/// Loads codes into row 5 of every bank of channel 2 and a random FP16 table
/// into every buffer; returns (codes per bank, buffer values per bank).
fn load_codes_and_tables(
    s: &mut Simulator,
    d: &Device,
    seed: u64,
) -> (Vec<Vec<u8>>, Vec<Vec<f32>>) {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut codes = Vec::new();
    let mut bufs = Vec::new();
    for i in 0..d.org.banks_per_channel {
        let row: Vec<u8> = (0..1024).map(|_| r.gen()).collect();
        s.write_bank(2, bank(i, d), 5, 0, &row).unwrap();
        codes.push(row);
        let vals: Vec<f32> = (0..16384)
            .map(|_| f16::from_f32(r.gen_range(-2.0..2.0)).to_f32())
            .collect();
        s.write_buffer(2, Some(bank(i, d)), 0, &f16_bytes(&vals))
            .unwrap();
        bufs.push(vals);
    }
    (codes, bufs)
}

#[test]
fn lutacc_adds_addressed_table_entries_8_and_4_bit() {
    let d = dev();
    let mut s = sim(&d);
    let (codes, bufs) = load_codes_and_tables(&mut s, &d, 1);
    // 8-bit: columns 0..3, 32 codes per token (group 32), one token per column.
    // 4-bit: columns 4..5, 64 codes per column, group 16 -> 4 tokens per column.
    let p = Program::assemble(
        "ACTAB ch=2 row=5\n\
         LOOP 3 col=1 reg=1\n  LUTACC ch=2 col=0 bits=8 group=32 table=0 reg=0\nENDLOOP\n\
         LOOP 2 col=1 reg=4\n  LUTACC ch=2 col=4 bits=4 group=16 table=8192 reg=100\nENDLOOP\n",
    )
    .unwrap();
    s.run(&p).unwrap();
    for b in [0usize, 17, 63] {
        let regs = s.registers(2, bank(b, &d)).unwrap();
        let row = &codes[b];
        let lut = &bufs[b];
        for t in 0..3 {
            let mut acc = 0f32;
            for p in 0..32 {
                acc += lut[p * 256 + row[t * 32 + p] as usize];
            }
            assert_eq!(regs[t], acc, "bank {b} token {t}");
        }
        let mut expect = [0f32; 8];
        for c in 0..2 {
            let col = &row[(4 + c) * 32..(5 + c) * 32];
            for p in 0..64 {
                let code = ((col[p / 2] >> (4 * (p % 2))) & 15) as usize;
                expect[c * 4 + p / 16] += lut[8192 + (p % 16) * 16 + code];
            }
        }
        assert_eq!(&regs[100..108], &expect[..], "bank {b} 4-bit");
    }
}

#[test]
fn histacc_adds_weights_into_bins() {
    let d = dev();
    let mut s = sim(&d);
    let (codes, bufs) = load_codes_and_tables(&mut s, &d, 2);
    let p = Program::assemble(
        "ACTAB ch=2 row=5\n\
         LOOP 4 col=1 buf=1\n  HISTACC ch=2 col=0 bits=8 group=32 weights=100 reg=0\nENDLOOP\n\
         HISTACC ch=2 col=7 bits=4 group=8 weights=200 reg=8000\n",
    )
    .unwrap();
    s.run(&p).unwrap();
    for b in [3usize, 40] {
        let regs = s.registers(2, bank(b, &d)).unwrap();
        let (row, w) = (&codes[b], &bufs[b]);
        let mut bins = vec![0f32; 32 * 256];
        for c in 0..4 {
            for p in 0..32 {
                bins[p * 256 + row[c * 32 + p] as usize] += w[100 + c];
            }
        }
        // The 4-bit bins (8 groups x 16) land on registers 8000..8128, on top of the 8-bit ones.
        let col = &row[7 * 32..8 * 32];
        for p in 0..64 {
            let code = ((col[p / 2] >> (4 * (p % 2))) & 15) as usize;
            bins[8000 + (p % 8) * 16 + code] += w[200 + p / 8];
        }
        let first_diff = regs[..8192].iter().zip(&bins).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "bank {b}");
    }
}

#[test]
fn histacc_bins_past_the_registers_are_rejected_before_running() {
    let d = dev();
    let mut s = sim(&d);
    let p = Program::assemble(
        "ACTAB ch=2 row=5\nHISTACC ch=2 col=0 bits=8 group=32 weights=0 reg=257\n",
    )
    .unwrap();
    let e = s.run(&p).unwrap_err();
    assert!(matches!(e, PimError::Program { index: 1, .. }), "{e}");
}

#[test]
fn mac_lanes_and_reduce() {
    let d = dev();
    let mut s = sim(&d);
    let (codes, bufs) = load_codes_and_tables(&mut s, &d, 3);
    let p = Program::assemble(
        "ACTAB ch=2 row=5\nMAC ch=2 col=3 buf=32 reg=10\nMAC ch=2 col=3 buf=32 reg=10\nMAC ch=2 col=4 buf=0 reg=40 reduce\n",
    )
    .unwrap();
    s.run(&p).unwrap();
    for b in [0usize, 63] {
        let regs = s.registers(2, bank(b, &d)).unwrap();
        let x = f16s(&codes[b][96..128]);
        let y = &bufs[b][32..48];
        for l in 0..16 {
            let prod = x[l] * y[l];
            assert_eq!(regs[10 + l], prod + prod);
        }
        let x = f16s(&codes[b][128..160]);
        let dot: f32 = (0..16).map(|l| x[l] * bufs[b][l]).sum();
        assert_eq!(regs[40], dot);
    }
}

#[test]
fn argmin_writes_the_nearest_centroid() {
    let d = dev();
    let mut s = sim(&d);
    let mut r = ChaCha8Rng::seed_from_u64(4);
    // Column 0 of row 1: 16 FP16 values; sub-vector lanes 4..8 (dsub 4).
    let x: Vec<f32> = (0..16)
        .map(|_| f16::from_f32(r.gen_range(-1.0..1.0)).to_f32())
        .collect();
    let cents: Vec<f32> = (0..256 * 4)
        .map(|_| f16::from_f32(r.gen_range(-1.0..1.0)).to_f32())
        .collect();
    for i in 0..d.org.banks_per_channel {
        s.write_bank(0, bank(i, &d), 1, 0, &f16_bytes(&x)).unwrap();
    }
    s.write_buffer(0, None, 2 * 1000, &f16_bytes(&cents))
        .unwrap();
    s.run(
        &Program::assemble(
            "ACTAB ch=0 row=1\nARGMIN ch=0 col=0 start=4 dsub=4 nbits=8 cb=1000 reg=7\n",
        )
        .unwrap(),
    )
    .unwrap();
    let mut best = (f32::INFINITY, 0);
    for j in 0..256 {
        let dist: f32 = (0..4).map(|i| (x[4 + i] - cents[j * 4 + i]).powi(2)).sum();
        if dist < best.0 {
            best = (dist, j);
        }
    }
    for i in [0, 31, 63] {
        assert_eq!(s.registers(0, bank(i, &d)).unwrap()[7], best.1 as f32);
    }
}

#[test]
fn mvd_sfm_mvb_move_and_normalise() {
    let d = dev();
    let mut s = sim(&d);
    for i in 0..d.org.banks_per_channel {
        s.write_registers(1, bank(i, &d), 20, &[i as f32 * 0.1, -(i as f32) * 0.05])
            .unwrap();
    }
    s.set_host_data((0..64).collect());
    let p = Program::assemble(
        "MVD ch=1 reg=20 len=2 die=0\nSFM ch=1 die=0 len=128 scale=0.5\nMVB ch=1 die=0 len=2 buf=10\nMVB ch=1 die=0 len=3 buf=100 bcast\nWRGB ch=1 buf=200 data=32\n",
    )
    .unwrap();
    let st = s.run(&p).unwrap();
    let mut x: Vec<f32> = (0..64)
        .flat_map(|i| [i as f32 * 0.1 * 0.5, -(i as f32) * 0.05 * 0.5])
        .collect();
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in &mut x {
        *v = (*v - m).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
    let die = s.buffer_die(1).unwrap();
    assert_eq!(&die[..128], &x[..]);
    for i in [0usize, 9, 63] {
        let buf = s.buffer(1, bank(i, &d)).unwrap();
        let got = f16s(&buf[20..24]);
        assert_eq!(
            got,
            vec![
                f16::from_f32(x[2 * i]).to_f32(),
                f16::from_f32(x[2 * i + 1]).to_f32()
            ]
        );
        let got = f16s(&buf[200..206]);
        assert_eq!(
            got,
            x[..3]
                .iter()
                .map(|v| f16::from_f32(*v).to_f32())
                .collect::<Vec<_>>()
        );
        assert_eq!(&buf[400..432], &(32..64).collect::<Vec<u8>>()[..]);
    }
    // Occupancy: MVD moves 64 banks x 2 x 4 B = 512 B at 64 B/cycle = 8 cycles.
    assert!(st.cycles >= 8 + d.sfm_cycles(128));
    assert_eq!(st.bytes_buffer_die, 512 + 64 * 2 * 2 + 3 * 2);
}

#[test]
fn illegal_states_are_errors_naming_the_rule() {
    let d = dev();
    let cases = [
        ("RD ch=0 pc=0 sid=0 bg=0 bank=0 col=0", "row-open"),
        ("ACT ch=0 pc=0 sid=0 bg=0 bank=0 row=1\nACT ch=0 pc=0 sid=0 bg=0 bank=0 row=2", "bank-closed"),
        ("ACT ch=0 pc=0 sid=0 bg=0 bank=0 row=1\nACTAB ch=0 row=2", "all-banks-closed"),
        ("ACT ch=0 pc=0 sid=0 bg=0 bank=0 row=1\nMAC ch=0 col=0 buf=0 reg=0", "all-banks-open"),
        ("ACTAB ch=0 row=1\nPRE ch=0 pc=1 sid=0 bg=0 bank=0\nLUTACC ch=0 col=0 bits=8 group=32 table=0 reg=0", "all-banks-open"),
    ];
    for (text, rule) in cases {
        let mut s = sim(&d);
        match s.run(&Program::assemble(text).unwrap()) {
            Err(PimError::State {
                rule: r,
                earliest: None,
                ..
            }) => assert_eq!(r, rule, "{text}"),
            other => panic!("`{text}`: expected a state error, got {other:?}"),
        }
    }
    let e = sim(&d)
        .run(&Program::assemble(cases[0].0).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("row-open") && e.contains("cannot become legal"),
        "{e}"
    );
}

#[test]
fn out_of_range_programs_are_rejected_before_running() {
    let d = dev();
    for (text, needle) in [
        ("ACTAB ch=80 row=0", "channel 80"),
        ("ACTAB ch=0 row=16384", "row"),
        ("LOOP 40 row=500\nACTAB ch=0 row=1\nENDLOOP", "row"),
        ("LOOP 2 row=-1\nACTAB ch=0 row=0\nENDLOOP", "negative"),
        ("WR ch=0 pc=0 sid=0 bg=0 bank=0 col=0 data=0", "host data"),
        (
            "LUTACC ch=0 col=0 bits=8 group=32 table=8193 reg=0",
            "table",
        ),
        ("MVD ch=0 reg=0 len=1025 die=0", "die"),
        (
            "ARGMIN ch=0 col=0 start=14 dsub=4 nbits=2 cb=0 reg=0",
            "lanes",
        ),
        ("RD ch=0 pc=2 sid=0 bg=0 bank=0 col=0", "outside"),
    ] {
        let e = sim(&d).run(&Program::assemble(text).unwrap()).unwrap_err();
        assert!(
            matches!(e, PimError::Program { .. }) && e.to_string().contains(needle),
            "`{text}`: {e}"
        );
    }
}

#[test]
fn timing_only_mode_matches_functional_mode_exactly() {
    let d = dev();
    let mix = standard_mix(&d, 3, 60).unwrap();
    let mut stats = Vec::new();
    for mode in [Mode::Functional, Mode::TimingOnly] {
        let mut s = Simulator::new(
            &d,
            SimOptions {
                mode,
                refresh: true,
                record_trace: true,
            },
        );
        s.set_host_data(vec![1; MIX_HOST_BYTES]);
        let st = s.run(&mix).unwrap();
        stats.push((st, s.take_trace()));
    }
    assert!(stats[0].0.refreshes > 0);
    assert_eq!(stats[0].0, stats[1].0);
    assert_eq!(stats[0].1, stats[1].1);
    aqpim_pim::check_trace(&d, &stats[0].1).unwrap();
}

#[test]
fn channels_run_in_parallel_and_barriers_join_them() {
    let d = dev();
    let one = Program::assemble(
        "ACTAB ch=0 row=0\nLOOP 32 col=1\nMAC ch=0 col=0 buf=0 reg=0 reduce\nENDLOOP\n",
    )
    .unwrap();
    let mut text = String::new();
    for ch in 0..16 {
        text.push_str(&format!(
            "ACTAB ch={ch} row=0\nLOOP 32 col=1\nMAC ch={ch} col=0 buf=0 reg=0 reduce\nENDLOOP\n"
        ));
    }
    let opts = SimOptions {
        mode: Mode::TimingOnly,
        refresh: false,
        record_trace: false,
    };
    let c1 = Simulator::new(&d, opts).run(&one).unwrap().cycles;
    let c16 = Simulator::new(&d, opts)
        .run(&Program::assemble(&text).unwrap())
        .unwrap()
        .cycles;
    assert_eq!(c1, c16);
    // ACTAB at 0, first MAC at nRCDRD, then one every nCCDAB.
    assert_eq!(c1, 19 + 31 * 4 + 1);
    let joined = text.replace("ACTAB ch=1 ", "BARRIER\nACTAB ch=1 ");
    let cj = Simulator::new(&d, opts)
        .run(&Program::assemble(&joined).unwrap())
        .unwrap()
        .cycles;
    assert_eq!(cj, 2 * c1);
}

#[test]
fn energy_components_follow_the_counts() {
    let d = dev();
    let mut s = sim(&d);
    s.set_host_data(vec![0; 64]);
    let st = s
        .run(&Program::assemble("ACTAB ch=0 row=0\nLOOP 32 col=1\nMAC ch=0 col=0 buf=0 reg=0\nENDLOOP\nPREAB ch=0\nWRGB ch=0 buf=0 data=0\n").unwrap())
        .unwrap();
    let e = &d.energy;
    assert_eq!(st.bank_activations, 64);
    assert!((st.energy.activate_pj - 64.0 * e.act_pj).abs() < 1e-6);
    assert!((st.energy.column_pj - (64 * 32 * 32 * 8) as f64 * e.column_pj_per_bit).abs() < 1e-3);
    let mac_pj = d.units.get(aqpim_pim::UnitKind::Mac).unwrap().energy_pj;
    assert!((st.energy.pim_pj - (64 * 32 * 16) as f64 * mac_pj).abs() < 1e-6);
    assert!((st.energy.io_pj - 256.0 * e.io_pj_per_bit).abs() < 1e-9);
    let sum = st.energy.activate_pj
        + st.energy.column_pj
        + st.energy.io_pj
        + st.energy.pim_pj
        + st.energy.buffer_pj
        + st.energy.buffer_die_pj
        + st.energy.refresh_pj;
    assert!((st.energy.total_pj - sum).abs() < 1e-6);
    assert_eq!(st.row_misses, 64);
    assert_eq!(st.row_hits, 64 * 31);
    let json = serde_json::to_string(&st).unwrap();
    let back: aqpim_pim::Stats = serde_json::from_str(&json).unwrap();
    assert_eq!(back, st);
}

#[test]
fn deserialized_programs_are_checked_before_running() {
    let d = dev();
    // Serde bypasses `Program::new`; the run still rejects bad fields and structure.
    for json in [
        r#"{"instrs":[{"ArgMin":{"ch":0,"col":0,"start":0,"dsub":4,"nbits":200,"cb":0,"reg":0}}]}"#,
        r#"{"instrs":[{"Loop":{"count":0,"strides":{"row":0,"col":0,"buf":0,"reg":0,"data":0,"die":0}}},"EndLoop"]}"#,
        r#"{"instrs":["EndLoop"]}"#,
        r#"{"instrs":[{"Loop":{"count":2,"strides":{"row":0,"col":0,"buf":0,"reg":0,"data":0,"die":0}}}]}"#,
    ] {
        let p: Program = serde_json::from_str(json).unwrap();
        assert!(
            matches!(sim(&d).run(&p), Err(PimError::Program { .. })),
            "{json}"
        );
    }
}

#[test]
fn loader_rejects_out_of_range_without_panicking() {
    let d = dev();
    let mut s = sim(&d);
    let b = BankSel::default();
    assert!(s.write_bank(0, b, 0, usize::MAX, &[1]).is_err());
    assert!(s.read_bank(0, b, 0, usize::MAX, 2).is_err());
    assert!(s.write_buffer(0, None, usize::MAX, &[1]).is_err());
    assert!(s.write_buffer(99, None, 0, &[1]).is_err());
    assert!(s.write_registers(0, b, usize::MAX, &[1.0]).is_err());
    assert!(s.write_buffer_die(0, usize::MAX, &[1.0]).is_err());
    assert!(s.registers(0, BankSel { pc: 3, ..b }).is_err());
    assert!(s.buffer_die(80).is_err());
}
