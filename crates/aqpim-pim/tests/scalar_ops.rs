//! The scalar-code instructions (LDP, QMAC) on the Pimba-style device:
//! semantics against a plain dequantize-then-multiply on random data (fixed
//! seeds), their issue interval from the shared unit's lanes, the trace
//! checker's agreement, and their refusal on a device without the unit.

use aqpim_pim::{check_trace, BankSel, Command, Device, Mode, Program, SimOptions, Simulator};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn dev() -> Device {
    Device::preset("hbm3-pimba-5.2").unwrap()
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

/// `n` random FP16-exact values in `lo..hi`.
fn values(r: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| f16::from_f32(r.gen_range(lo..hi)).to_f32())
        .collect()
}

/// A column of `bits`-bit codes packed from the low bit, and the codes.
fn codes(r: &mut ChaCha8Rng, bits: u32) -> (Vec<u8>, Vec<u32>) {
    let n = 256 / bits as usize;
    let q: Vec<u32> = (0..n).map(|_| r.gen_range(0..1u32 << bits)).collect();
    let mut col = vec![0u8; 32];
    for (i, &v) in q.iter().enumerate() {
        let bit = i * bits as usize;
        col[bit / 8] |= (v as u8) << (bit % 8);
    }
    (col, q)
}

/// Per bank: row 5 holds 4-bit codes (column 0), their (min, scale) pairs
/// (column 1, 8 pairs), 2-bit codes (column 2) and their MX exponents
/// (column 3); the buffer holds 128 random elements. Then LDP both
/// parameter columns, and QMAC broadcast, reduce and MX reduce.
#[test]
fn qmac_dequantizes_with_latched_parameters() {
    let d = dev();
    let mut r = ChaCha8Rng::seed_from_u64(0x5ca1);
    let mut s = sim(&d, Mode::Functional);
    let banks = d.org.banks_per_channel;
    let mut want = Vec::new();
    for b in 0..banks {
        let (c4, q4) = codes(&mut r, 4);
        let params = values(&mut r, 16, -1.0, 1.0);
        let (c2, q2) = codes(&mut r, 2);
        let exps: Vec<u8> = (0..32).map(|_| r.gen_range(120..134)).collect();
        let buf = values(&mut r, 128, -2.0, 2.0);
        let mut row = c4.clone();
        row.extend(f16_bytes(&params));
        row.extend(&c2);
        row.extend(&exps);
        s.write_bank(1, bank(b, &d), 5, 0, &row).unwrap();
        s.write_buffer(1, Some(bank(b, &d)), 0, &f16_bytes(&buf))
            .unwrap();
        // group 16: code i uses pair 4 + i / 16 (pslot 4 counts pairs; the
        // latch's slot 0 holds the pairs, slot 1 the exponents).
        let x4: Vec<f32> = (0..64)
            .map(|i| {
                let p = 4 + i / 16;
                params[2 * p] + q4[i] as f32 * params[2 * p + 1]
            })
            .collect();
        // MX: 2-bit two's complement, exponents 32.. of the latch, group 32.
        let x2: Vec<f32> = (0..128)
            .map(|i| {
                let q = if q2[i] >= 2 {
                    q2[i] as i32 - 4
                } else {
                    q2[i] as i32
                };
                q as f32 * (f32::from(exps[3 + i / 32]) - 127.0).exp2()
            })
            .collect();
        let bcast: Vec<f32> = x4.iter().map(|x| buf[7] * x).collect();
        let dot4: f32 = x4.iter().zip(&buf).map(|(x, y)| x * y).sum();
        let dot2: f32 = x2.iter().zip(&buf).map(|(x, y)| x * y).sum();
        want.push((bcast, dot4, dot2));
    }
    let p = Program::assemble(
        "ACTAB ch=1 row=5\n\
         LDP ch=1 col=1 slot=0\n\
         LDP ch=1 col=3 slot=1\n\
         QMAC ch=1 col=0 buf=7 reg=0 bits=4 group=16 pslot=4\n\
         QMAC ch=1 col=0 buf=0 reg=100 bits=4 group=16 pslot=4 reduce\n\
         QMAC ch=1 col=2 buf=0 reg=101 bits=2 group=32 pslot=35 reduce mx\n\
         PREAB ch=1\n",
    )
    .unwrap();
    let st = s.run(&p).unwrap();
    assert_eq!(st.commands["QMAC"], 3);
    assert_eq!(st.commands["LDP"], 2);
    assert_eq!(st.bank_column_accesses, 5 * banks as u64);
    for b in [0usize, 1, 30, banks - 1] {
        let regs = s.registers(1, bank(b, &d)).unwrap();
        let (bcast, dot4, dot2) = &want[b];
        for (i, w) in bcast.iter().enumerate() {
            assert!(
                (regs[i] - w).abs() <= 1e-6 * w.abs().max(1.0),
                "bank {b} reg {i}"
            );
        }
        assert!(
            (regs[100] - dot4).abs() <= 1e-4 * dot4.abs().max(1.0),
            "bank {b}"
        );
        assert!(
            (regs[101] - dot2).abs() <= 1e-4 * dot2.abs().max(1.0),
            "bank {b}"
        );
    }
    check_trace(&d, s.trace()).unwrap();
}

/// Two QMACs back to back: the shared unit takes `ceil(codes x 2 / 32)`
/// cycles per column (8 for 2-bit codes), never less than nCCDAB (4-bit and
/// 8-bit codes); the checker recomputes the same interval.
#[test]
fn qmac_interval_follows_the_shared_lanes() {
    let d = dev();
    for (bits, want) in [(2u32, 8u64), (4, 4), (8, 4)] {
        let op = format!("QMAC ch=0 col=0 buf=0 reg=0 bits={bits} group=32 pslot=0");
        let mut s = sim(&d, Mode::TimingOnly);
        let p = Program::assemble(&format!(
            "ACTAB ch=0 row=0\n{op}\n{op}\nLDP ch=0 col=1 slot=0\n"
        ))
        .unwrap();
        s.run(&p).unwrap();
        let t: Vec<u64> = s
            .trace()
            .iter()
            .filter(|e| e.cmd.is_pim_column())
            .map(|e| e.cycle)
            .collect();
        assert_eq!(t[1] - t[0], want, "{bits}-bit");
        assert_eq!(t[2] - t[1], want, "LDP after a {bits}-bit QMAC");
        assert_eq!(d.pim_interval(Command::QMac, 256 / u64::from(bits)), want);
        check_trace(&d, s.trace()).unwrap();
        // One cycle early is refused by the checker.
        let mut early = s.trace().to_vec();
        let i = early.iter().rposition(|e| e.cmd == Command::QMac).unwrap();
        early[i].cycle -= 1;
        assert!(check_trace(&d, &early).is_err());
    }
}

#[test]
fn scalar_ops_are_refused_without_the_unit_or_past_the_latch() {
    let a = Device::preset("hbm3-attacc-5.2").unwrap();
    for op in [
        "QMAC ch=0 col=0 buf=0 reg=0 bits=4 group=32 pslot=0",
        "LDP ch=0 col=0 slot=0",
    ] {
        let p = Program::assemble(&format!("ACTAB ch=0 row=0\n{op}\n")).unwrap();
        let e = sim(&a, Mode::TimingOnly).run(&p).unwrap_err().to_string();
        assert!(e.contains("no dqmac unit"), "{e}");
    }
    let d = dev();
    for (op, why) in [
        ("LDP ch=0 col=0 slot=8", "latch"),
        // 64 codes in groups of 16: pairs 61..65 pass the 64 pairs of 256 B.
        (
            "QMAC ch=0 col=0 buf=0 reg=0 bits=4 group=16 pslot=61",
            "latch",
        ),
        ("QMAC ch=0 col=0 buf=0 reg=0 bits=4 group=16 pslot=60", ""),
        (
            "QMAC ch=0 col=0 buf=0 reg=250 bits=4 group=16 pslot=0",
            "registers",
        ),
        (
            "QMAC ch=0 col=0 buf=250 reg=0 bits=8 group=16 pslot=0 reduce",
            "buffer",
        ),
        (
            "QMAC ch=0 col=0 buf=0 reg=0 bits=8 group=64 pslot=0",
            "group",
        ),
    ] {
        let p = Program::assemble(&format!("ACTAB ch=0 row=0\n{op}\n")).unwrap();
        let r = sim(&d, Mode::TimingOnly).run(&p);
        if why.is_empty() {
            r.unwrap();
        } else {
            let e = r.unwrap_err().to_string();
            assert!(e.contains(why), "{op}: {e}");
        }
    }
}
