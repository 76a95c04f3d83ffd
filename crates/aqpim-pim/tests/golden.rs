//! Golden trace: a small program's command trace (cycle by cycle) must match
//! `tests/golden/*.jsonl`. Refresh the files with `AQPIM_BLESS=1 cargo test
//! -p aqpim-pim --test golden` after an intended change, and review the diff.

use std::path::PathBuf;

use aqpim_pim::{check_trace, Device, Mode, Program, SimOptions, Simulator};

const PROGRAM: &str = "\
ACT ch=0 pc=0 sid=0 bg=0 bank=0 row=3
ACT ch=0 pc=0 sid=0 bg=1 bank=0 row=3
ACT ch=0 pc=1 sid=0 bg=0 bank=0 row=3
ACT ch=0 pc=1 sid=1 bg=2 bank=1 row=3
ACT ch=0 pc=0 sid=1 bg=3 bank=3 row=3
RD ch=0 pc=0 sid=0 bg=0 bank=0 col=0
RD ch=0 pc=0 sid=0 bg=0 bank=0 col=1
RD ch=0 pc=0 sid=0 bg=1 bank=0 col=1
WR ch=0 pc=0 sid=0 bg=1 bank=0 col=2 data=0
RD ch=0 pc=0 sid=0 bg=1 bank=0 col=2
PREAB ch=0
ACTAB ch=1 row=9
WRGB ch=1 buf=0 data=0
LOOP 4 col=1 reg=1
  LUTACC ch=1 col=0 bits=8 group=32 table=0 reg=0
ENDLOOP
MVD ch=1 reg=0 len=4 die=0
SFM ch=1 die=0 len=256 scale=0.125
BARRIER
PREAB ch=1
ACTAB ch=0 row=4
MAC ch=0 col=0 buf=0 reg=0 reduce
";

/// The program run on `device` with its trace recorded.
fn traced(d: &Device, refresh: bool) -> Simulator {
    let mut s = Simulator::new(
        d,
        SimOptions {
            mode: Mode::Functional,
            refresh,
            record_trace: true,
        },
    );
    s.set_host_data(vec![5; 64]);
    s.run(&Program::assemble(PROGRAM).unwrap()).unwrap();
    s
}

fn check(device: &str, file: &str) {
    let d = Device::preset(device).unwrap();
    let s = traced(&d, true);
    check_trace(&d, s.trace()).unwrap();
    let text: String = s
        .trace()
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    if std::env::var_os("AQPIM_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with AQPIM_BLESS=1)", path.display()));
    assert_eq!(text, golden, "trace differs from {}", path.display());
}

#[test]
fn aqpim_trace_matches_golden() {
    check("hbm3-aqpim-5.2", "aqpim-small.jsonl");
}

#[test]
fn jedec_trace_matches_golden() {
    check("hbm3-jedec-6.4", "jedec-small.jsonl");
}

/// Column commands record the row open in their bank, not a zero: the
/// program opens row 3 for its RD/WR, row 9 for LUTACC and row 4 for MAC.
#[test]
fn column_commands_record_the_open_row() {
    let s = traced(&Device::preset("hbm3-aqpim-5.2").unwrap(), false);
    let rows = |name: &str| -> Vec<u32> {
        s.trace()
            .iter()
            .filter(|e| e.cmd.name() == name)
            .map(|e| e.row)
            .collect()
    };
    assert_eq!(rows("RD"), vec![3; 4]);
    assert_eq!(rows("WR"), vec![3]);
    assert_eq!(rows("LUTACC"), vec![9; 4]);
    assert_eq!(rows("MAC"), vec![4]);
}
