//! The ISA: exact round trips (binary words, binary files, assembly text) on
//! random programs, and random bytes, words and text into the decoder and the
//! assembler never panic (over 10^4 cases in all, fixed seeds).

use aqpim_pim::is_binary;
use aqpim_pim::{BankSel, CodeBits, Instr, PimError, Program, Strides};
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

fn bank(r: &mut ChaCha8Rng) -> BankSel {
    BankSel {
        pc: r.gen_range(0..4),
        sid: r.gen_range(0..4),
        bg: r.gen_range(0..16),
        bank: r.gen_range(0..16),
    }
}

fn bits(r: &mut ChaCha8Rng) -> CodeBits {
    if r.gen() {
        CodeBits::Eight
    } else {
        CodeBits::Four
    }
}

/// A random instruction whose fields fit their encodings (not necessarily a device).
fn random_instr(r: &mut ChaCha8Rng) -> Instr {
    let ch = r.gen();
    match r.gen_range(0..22) {
        0 => Instr::Act {
            ch,
            bank: bank(r),
            row: r.gen_range(0..1 << 24),
        },
        1 => Instr::Pre { ch, bank: bank(r) },
        2 => Instr::ActAb {
            ch,
            row: r.gen_range(0..1 << 24),
        },
        3 => Instr::PreAb { ch },
        4 => Instr::Rd {
            ch,
            bank: bank(r),
            col: r.gen(),
        },
        5 => Instr::Wr {
            ch,
            bank: bank(r),
            col: r.gen(),
            data: r.gen_range(0..1 << 28),
        },
        6 => Instr::Wrgb {
            ch,
            buf: r.gen(),
            data: r.gen(),
        },
        7 => Instr::Mac {
            ch,
            col: r.gen(),
            buf: r.gen(),
            reg: r.gen(),
            reduce: r.gen(),
            bcast: r.gen(),
        },
        8 => Instr::LutAcc {
            ch,
            col: r.gen(),
            bits: bits(r),
            group: r.gen_range(1..=64),
            table: r.gen(),
            reg: r.gen(),
        },
        9 => Instr::HistAcc {
            ch,
            col: r.gen(),
            bits: bits(r),
            group: r.gen_range(1..=64),
            weights: r.gen(),
            reg: r.gen(),
        },
        10 => Instr::ArgMin {
            ch,
            col: r.gen(),
            start: r.gen_range(0..16),
            dsub: r.gen_range(1..=16),
            nbits: r.gen_range(0..=8),
            cb: r.gen(),
            reg: r.gen_range(0..4096),
        },
        11 => Instr::Mvd {
            ch,
            reg: r.gen(),
            len: r.gen_range(1..=u16::MAX),
            die: r.gen(),
        },
        12 => Instr::Mvb {
            ch,
            die: r.gen(),
            len: r.gen_range(1..32768),
            buf: r.gen(),
            broadcast: r.gen(),
        },
        13 => {
            let mut scale = f16::from_bits(r.gen());
            if !scale.is_finite() {
                scale = f16::from_f32(0.125);
            }
            Instr::Sfm {
                ch,
                die: r.gen(),
                len: r.gen_range(1..=u16::MAX),
                scale,
                stats: r.gen(),
            }
        }
        14 => Instr::Clr {
            ch,
            off: r.gen(),
            len: r.gen_range(1..=u16::MAX),
            die: r.gen(),
        },
        15 => Instr::BinMac {
            ch,
            col: r.gen(),
            dsub: r.gen_range(1..=16),
            bins: r.gen(),
            out: r.gen(),
        },
        16 => Instr::Red {
            ch,
            src: r.gen(),
            len: r.gen_range(1..=u16::MAX),
            dst: r.gen(),
        },
        17 => Instr::Rdd {
            ch,
            die: r.gen(),
            len: r.gen_range(1..=u16::MAX),
        },
        18 => Instr::Stc {
            ch,
            bank: bank(r),
            col: r.gen(),
            reg: r.gen(),
            bits: bits(r),
        },
        19 => Instr::Ldp {
            ch,
            col: r.gen(),
            slot: r.gen(),
        },
        20 => Instr::QMac {
            ch,
            col: r.gen(),
            buf: r.gen_range(0..2048),
            reg: r.gen_range(0..2048),
            bits: [2, 4, 8][r.gen_range(0..3)],
            group: r.gen_range(1..=128),
            pslot: r.gen_range(0..128),
            reduce: r.gen(),
            mx: r.gen(),
        },
        _ => Instr::Barrier,
    }
}

fn random_program(seed: u64) -> Program {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut v = Vec::new();
    let mut depth = 0;
    for _ in 0..r.gen_range(0..60) {
        match r.gen_range(0..10) {
            0 if depth < 4 => {
                let mut st = || r.gen_range(-512i16..=511);
                let strides = Strides {
                    row: st(),
                    col: st(),
                    buf: st(),
                    reg: st(),
                    data: st(),
                    die: st(),
                };
                v.push(Instr::Loop {
                    count: r.gen_range(1..1 << 24),
                    strides,
                });
                depth += 1;
            }
            1 if depth > 0 => {
                v.push(Instr::EndLoop);
                depth -= 1;
            }
            _ => v.push(random_instr(&mut r)),
        }
    }
    for _ in 0..depth {
        v.push(Instr::EndLoop);
    }
    Program::new(v).expect("random program is well-formed")
}

proptest! {
    #![proptest_config(config(600, 0x15a))]
    #[test]
    fn programs_round_trip_exactly(seed in any::<u64>()) {
        let p = random_program(seed);
        prop_assert_eq!(&Program::decode(&p.encode()).unwrap(), &p);
        let bytes = p.to_bytes();
        prop_assert!(is_binary(&bytes));
        prop_assert_eq!(&Program::from_bytes(&bytes).unwrap(), &p);
        let text = p.disassemble();
        prop_assert_eq!(&Program::assemble(&text).unwrap(), &p);
        // Re-encoding decoded words gives the same words.
        prop_assert_eq!(Program::decode(&p.encode()).unwrap().encode(), p.encode());
    }
}

proptest! {
    #![proptest_config(config(3000, 0xdec0de))]
    #[test]
    fn random_words_never_panic_the_decoder(words in prop::collection::vec(any::<u64>(), 0..8), op in 0u64..0x19) {
        // Half of the words get a valid opcode so the field decoders are exercised.
        let mut w = words;
        if let Some(first) = w.first_mut() {
            *first = (*first & 0x00FF_FFFF_FFFF_FFFF) | (op << 56);
        }
        if let Ok(p) = Program::decode(&w) {
            // Whatever decodes re-encodes to the same words.
            prop_assert_eq!(p.encode(), w);
        }
    }

    #[test]
    fn random_bytes_never_panic_the_file_reader(bytes in prop::collection::vec(any::<u8>(), 0..64), header in any::<bool>()) {
        let mut b = bytes;
        if header {
            let mut h = b"AQPIMPRG\x01\0\0\0".to_vec();
            h.extend_from_slice(&((b.len() / 8) as u32).to_le_bytes());
            h.extend_from_slice(&b[..b.len() / 8 * 8]);
            b = h;
        }
        let _ = Program::from_bytes(&b);
    }
}

const TOKENS: &[&str] = &[
    "ACT",
    "PRE",
    "ACTAB",
    "PREAB",
    "RD",
    "WR",
    "WRGB",
    "MAC",
    "LUTACC",
    "HISTACC",
    "ARGMIN",
    "MVD",
    "MVB",
    "SFM",
    "CLR",
    "BINMAC",
    "RED",
    "RDD",
    "STC",
    "LDP",
    "QMAC",
    "BARRIER",
    "LOOP",
    "ENDLOOP",
    "ch=",
    "pc=",
    "sid=",
    "bg=",
    "bank=",
    "row=",
    "col=",
    "data=",
    "buf=",
    "reg=",
    "bits=",
    "group=",
    "table=",
    "weights=",
    "start=",
    "dsub=",
    "nbits=",
    "cb=",
    "len=",
    "die=",
    "scale=",
    "off=",
    "bins=",
    "out=",
    "src=",
    "dst=",
    "reduce",
    "bcast",
    "stats",
    "die",
    "0",
    "1",
    "4",
    "8",
    "-3",
    "0x1F",
    "65536",
    "1e9",
    "nan",
    "inf",
    "=",
    "#",
    ";",
    "\n",
    " ",
    "\t",
    "é",
    "\u{0}",
    "99999999999999999999999",
];

proptest! {
    #![proptest_config(config(3000, 0x7e47))]
    #[test]
    fn random_token_text_never_panics_the_assembler(picks in prop::collection::vec(0usize..TOKENS.len(), 0..40)) {
        let text: String = picks.iter().map(|&i| TOKENS[i]).collect::<Vec<_>>().join("");
        if let Ok(p) = Program::assemble(&text) {
            prop_assert_eq!(&Program::assemble(&p.disassemble()).unwrap(), &p);
        }
    }

    #[test]
    fn mutated_programs_never_panic_the_assembler(seed in any::<u64>(), edits in prop::collection::vec((any::<usize>(), any::<char>()), 1..6)) {
        let mut chars: Vec<char> = random_program(seed).disassemble().chars().collect();
        for (pos, c) in edits {
            if chars.is_empty() { break; }
            let i = pos % chars.len();
            chars[i] = c;
        }
        let text: String = chars.into_iter().collect();
        match Program::assemble(&text) {
            Ok(p) => prop_assert_eq!(&Program::assemble(&p.disassemble()).unwrap(), &p),
            Err(e) => {
                let ok = matches!(e, PimError::Asm { .. } | PimError::Program { .. });
                prop_assert!(ok, "unexpected error kind: {}", e);
            }
        }
    }
}

#[test]
fn new_instructions_encode_as_specified() {
    let p = Program::assemble(
        "CLR ch=0 off=0 len=8192\n\
         CLR ch=0 off=100 len=20 die\n\
         BINMAC ch=3 col=5 dsub=4 bins=8192 out=8200\n\
         MAC ch=1 col=2 buf=3 reg=4 bcast\n\
         MAC ch=1 col=2 buf=3 reg=4 reduce bcast\n\
         SFM ch=2 die=10 len=300 scale=0.5 stats\n\
         RED ch=4 src=0 len=32 dst=2048\n\
         RDD ch=5 die=2048 len=32\n\
         STC ch=6 pc=1 sid=0 bg=2 bank=3 col=7 reg=40 bits=4\n\
         STC ch=6 pc=1 sid=0 bg=2 bank=3 col=7 reg=40\n",
    )
    .unwrap();
    let w = p.encode();
    assert_eq!(
        w,
        vec![
            0x12 << 56 | 8192 << 16,
            0x12 << 56 | 100 << 32 | 20 << 16 | 1 << 15,
            0x13 << 56 | 3 << 48 | 5 << 40 | 3 << 36 | 8192 << 20 | 8200 << 4,
            0x08 << 56 | 1 << 48 | 2 << 40 | 3 << 24 | 4 << 8 | 1 << 6,
            0x08 << 56 | 1 << 48 | 2 << 40 | 3 << 24 | 4 << 8 | 1 << 7 | 1 << 6,
            0x14 << 56 | 2 << 48 | 10 << 32 | 300 << 16 | u64::from(f16::from_f32(0.5).to_bits()),
            0x15 << 56 | 4 << 48 | 32 << 16 | 2048,
            0x16 << 56 | 5 << 48 | 2048 << 32 | 32 << 16,
            0x17 << 56 | 6 << 48 | (1 << 10 | 2 << 4 | 3) << 36 | 7 << 28 | 40 << 12 | 1 << 11,
            0x17 << 56 | 6 << 48 | (1 << 10 | 2 << 4 | 3) << 36 | 7 << 28 | 40 << 12,
        ]
    );
    assert_eq!(Program::decode(&w).unwrap(), p);
    assert_eq!(Program::assemble(&p.disassemble()).unwrap(), p);
    assert!(matches!(
        p.instrs()[9],
        Instr::Stc {
            bits: CodeBits::Eight,
            ..
        }
    ));
    // Reserved bits are rejected: CLR bits 14..0, BINMAC 3..0, RDD 15..0, STC 10..0, MAC 5..0.
    for bad in [
        w[0] | 1 << 14,
        w[2] | 1,
        w[7] | 1,
        w[8] | 1 << 10,
        w[3] | 1 << 5,
    ] {
        assert!(Program::decode(&[bad]).is_err(), "{bad:#x}");
    }
    for (text, needle) in [
        ("CLR ch=0 off=0 len=0", "len"),
        ("BINMAC ch=0 col=0 dsub=0 bins=0 out=0", "dsub"),
        ("BINMAC ch=0 col=0 dsub=17 bins=0 out=0", "dsub"),
        ("RED ch=0 src=0 len=0 dst=0", "len"),
        ("RDD ch=0 die=0 len=0", "len"),
        (
            "STC ch=0 pc=0 sid=0 bg=0 bank=0 col=0 reg=0 bits=6",
            "bits=6",
        ),
        ("SFM ch=0 die=0 len=1 scale=1 stat", "stat"),
    ] {
        let e = Program::assemble(text).unwrap_err().to_string();
        assert!(e.contains(needle), "`{text}`: error `{e}` lacks `{needle}`");
    }
}

#[test]
fn assembly_examples() {
    let p = Program::assemble(
        "# one row of scores\n\
         ACTAB ch=0 row=7\n\
         loop 32 col=1 reg=1   ; strides\n\
           LUTACC ch=0 col=0 bits=8 group=32 table=0x0 reg=0\n\
         ENDLOOP\n\
         SFM ch=0 die=0 len=64 scale=0.125\n",
    )
    .unwrap();
    assert_eq!(p.instrs().len(), 5);
    assert_eq!(p.command_count(), 1 + 32 + 1);
    assert!(matches!(
        p.instrs()[1],
        Instr::Loop {
            count: 32,
            strides: Strides { col: 1, reg: 1, .. }
        }
    ));
    for (text, needle) in [
        ("ACT ch=0 pc=0 sid=0 bg=0 row=1", "bank"),
        ("ACT ch=0 pc=4 sid=0 bg=0 bank=0 row=1", "pc=4"),
        ("MAC ch=0 col=0 buf=0 reg=0 reduce extra", "extra"),
        ("LUTACC ch=0 col=0 bits=6 group=1 table=0 reg=0", "bits=6"),
        ("LUTACC ch=0 col=0 bits=8 group=0 table=0 reg=0", "group"),
        ("ENDLOOP", "ENDLOOP without LOOP"),
        ("LOOP 2\nBARRIER", "without ENDLOOP"),
        ("LOOP 0\nENDLOOP", "count"),
        ("FOO ch=1", "FOO"),
        ("SFM ch=0 die=0 len=1 scale=1e9", "finite"),
        ("RD ch=0 ch=1 pc=0 sid=0 bg=0 bank=0 col=0", "twice"),
    ] {
        let e = Program::assemble(text).unwrap_err().to_string();
        assert!(e.contains(needle), "`{text}`: error `{e}` lacks `{needle}`");
    }
}

#[test]
fn qmac_fields_pack_into_one_word() {
    // Every QMAC field at its largest, and at its smallest: the word holds
    // them all (bits as log2(bits / 2), group less one).
    let text = "QMAC ch=1 col=255 buf=2047 reg=2047 bits=8 group=128 pslot=127 reduce mx\n\
                QMAC ch=0 col=0 buf=0 reg=0 bits=2 group=1 pslot=0\n\
                LDP ch=3 col=31 slot=7\n";
    let p = Program::assemble(text).unwrap();
    let w = p.encode();
    // bits=8 is stored as 2 (0b10 at bits 3..2): the only clear bit.
    assert_eq!(w[0], 0x1901_ffff_ffff_fffb);
    assert_eq!(w[1], 0x1900_0000_0000_0000);
    assert_eq!(w[2], 0x1803_1f07_0000_0000);
    assert_eq!(Program::decode(&w).unwrap(), p);
    assert_eq!(Program::assemble(&p.disassemble()).unwrap(), p);
    for (bad, why) in [
        (
            "QMAC ch=0 col=0 buf=0 reg=0 bits=3 group=1 pslot=0",
            "power of two",
        ),
        (
            "QMAC ch=0 col=0 buf=0 reg=0 bits=16 group=1 pslot=0",
            "exceeds",
        ),
        (
            "QMAC ch=0 col=0 buf=2048 reg=0 bits=4 group=1 pslot=0",
            "exceeds",
        ),
        (
            "QMAC ch=0 col=0 buf=0 reg=0 bits=4 group=129 pslot=0",
            "group",
        ),
        (
            "QMAC ch=0 col=0 buf=0 reg=0 bits=4 group=1 pslot=128",
            "pslot",
        ),
    ] {
        let e = Program::assemble(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
}
