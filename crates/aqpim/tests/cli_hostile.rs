//! The hostile inputs of issue 17 against the built binary: each command
//! exits non-zero with one clear line (or succeeds with correct figures),
//! under a memory limit and a hang guard; none panics, aborts or hangs.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aqpim_pim::{DeviceSpec, TimingValue};

/// Hang guard: far above the few milliseconds these commands take; a run
/// past it is a hang, not a slow machine.
const HANG_GUARD: Duration = Duration::from_secs(120);
/// Address-space limit of each run, in KiB (the issue's bar: 1 GB).
const MEMORY_KIB: u64 = 1 << 20;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` under `ulimit -v` (Unix) and the hang guard,
/// two rayon workers (a pool per core would reserve more address space on a
/// many-core CI machine than the limit allows).
fn run(args: &[&str]) -> Run {
    let dir = common::tempdir();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let bin = env!("CARGO_BIN_EXE_aqpim");
    let mut cmd = if cfg!(unix) {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("ulimit -v {MEMORY_KIB} && exec \"$0\" \"$@\""))
            .arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let mut child = cmd
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("running aqpim");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            panic!("aqpim {args:?} hung (still running after {HANG_GUARD:?})");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// Exit status 1 (not a panic's 101, not a signal) with one `error:` line
/// that mentions `needle` and stays short (600 characters: room for the
/// list of valid keys, with every echoed token cut).
fn refused(args: &[&str], needle: &str) {
    let r = run(args);
    assert_eq!(
        r.code,
        Some(1),
        "aqpim {args:?}: expected a clean error, got {:?}\nstderr: {}\nstdout: {}",
        r.code,
        r.stderr,
        r.stdout
    );
    let err = r.stderr.trim_end();
    assert_eq!(
        err.lines().count(),
        1,
        "aqpim {args:?}: not one line: {err}"
    );
    assert!(err.starts_with("error: "), "aqpim {args:?}: {err}");
    assert!(
        err.len() <= 600,
        "aqpim {args:?}: {} chars: {err}",
        err.len()
    );
    assert!(
        err.contains(needle),
        "aqpim {args:?}: error {err:?} does not mention {needle:?}"
    );
    assert!(
        !err.contains("panicked"),
        "aqpim {args:?}: a panic, not an error: {err}"
    );
}

use common::path as p;

const MAX: &str = "18446744073709551615";

#[test]
fn size_flags_past_their_limits_are_refused() {
    let cases: &[(&[&str], &str)] = &[
        (&["sim", "bench", "--rows", "0"], "1..=100000"),
        (&["sim", "bench", "--rows", "16777216"], "1..=100000"),
        (&["sim", "bench", "--rows", "4294967295"], "1..=100000"),
        (
            &[
                "attn",
                "sim",
                "--model-shape",
                "32,32,128",
                "--ctx",
                "1024",
                "--batch",
                MAX,
            ],
            "--batch",
        ),
        (
            &["attn", "sim", "--model-shape", "32,32,128", "--ctx", MAX],
            "--ctx",
        ),
        (
            &[
                "attn",
                "sim",
                "--model-shape",
                "32,32,128",
                "--ctx",
                "1024",
                "--kv",
                "pq:dsub=4,nbits=3",
            ],
            "4- or 8-bit",
        ),
        (&["attn", "bench", "--ctx", MAX], "--ctx"),
        (&["attn", "bench", "--ctx", "1000000000000"], "--ctx"),
        (
            &[
                "attn",
                "bench",
                "--model-shape",
                "1,1048576,128",
                "--q-heads",
                "1048576",
            ],
            "limit of 1024",
        ),
        (&["attn", "bench", "--ctx", "64", "--reps", "0"], "--reps"),
        (&["attn", "bench", "--threads", "100000"], "--threads"),
        (&["kv", "bench", "--alloc-ctx", MAX], "--alloc-ctx"),
        (&["kv", "bench", "--steps", MAX], "limit"),
        (&["kv", "bench", "--prefill", "1000000000000"], "limit"),
        (&["kv", "bench", "--threads", "100000"], "--threads"),
        (
            &[
                "kv",
                "stats",
                "--ctx",
                "4096",
                "--model-shape",
                "4294967295,1,128",
            ],
            "limit of 1024",
        ),
        (
            &["kv", "stats", "--ctx", MAX, "--kv", "dense"],
            "limit of 16777216",
        ),
    ];
    for (args, needle) in cases {
        refused(args, needle);
    }
}

#[test]
fn synth_and_train_refuse_sizes_past_their_limits() {
    let dir = common::tempdir();
    let out = dir.path().join("x.npy");
    for n in [MAX, "1000000000000"] {
        refused(
            &["pq", "synth", "--n", n, "--d", "1", "--out", p(&out)],
            "limit of 2147483648",
        );
    }
    refused(
        &[
            "pq",
            "synth",
            "--n",
            "100",
            "--d",
            "100000",
            "--out",
            p(&out),
        ],
        "--d",
    );
    assert!(!out.exists());
    let r = run(&["pq", "synth", "--n", "300", "--d", "8", "--out", p(&out)]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    refused(
        &[
            "pq",
            "train",
            "--input",
            p(&out),
            "--m",
            "2",
            "--threads",
            "100000",
            "--out",
            p(&dir.path().join("c")),
        ],
        "--threads",
    );
    refused(
        &[
            "pq",
            "train",
            "--input",
            p(&out),
            "--m",
            "2",
            "--iters",
            MAX,
            "--out",
            p(&dir.path().join("c")),
        ],
        "--iters",
    );
}

#[test]
fn npy_headers_that_wrap_or_overstate_are_refused() {
    let dir = common::tempdir();
    let x = dir.path().join("x.npy");
    let cb = dir.path().join("c.pqcb");
    // 1152921504606848000 x 16 wraps to a small number in 64 bits.
    for shape in [
        "(1152921504606848000, 16)",
        "(1152921504606846976, 16)",
        "(4, 16)",
    ] {
        common::write_npy(&x, "<f4", shape, &[0u8; 64]);
        for cmd in ["train", "bench"] {
            let mut args = vec!["pq", cmd, "--input", p(&x), "--m", "4", "--nbits", "1"];
            if cmd == "train" {
                args.extend(["--out", p(&cb)]);
            }
            refused(&args, "x.npy");
        }
    }
    assert!(!cb.exists());
}

#[test]
fn encode_never_writes_an_npy_that_claims_more_than_it_holds() {
    let dir = common::tempdir();
    let (x, cb, codes) = (
        dir.path().join("x.npy"),
        dir.path().join("c.pqcb"),
        dir.path().join("codes.npy"),
    );
    let r = run(&["pq", "synth", "--n", "300", "--d", "8", "--out", p(&x)]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = run(&[
        "pq",
        "train",
        "--input",
        p(&x),
        "--m",
        "2",
        "--nbits",
        "4",
        "--out",
        p(&cb),
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = run(&[
        "pq",
        "encode",
        "--codebook",
        p(&cb),
        "--input",
        p(&x),
        "--out",
        p(&codes),
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // The codes file holds exactly what its header claims: 300 x 2 bytes.
    let bytes = std::fs::read(&codes).unwrap();
    let header_len = 10 + usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let header = String::from_utf8_lossy(&bytes[10..header_len]);
    assert!(header.contains("(300, 2"), "{header}");
    assert_eq!(bytes.len() - header_len, 600);
    // An input whose header claims 2^62 rows over 300 rows of data is
    // refused, and nothing is written.
    std::fs::remove_file(&codes).unwrap();
    let data = std::fs::read(&x).unwrap();
    let body = &data[data.len() - 300 * 8 * 4..];
    common::write_npy(&x, "<f4", "(4611686018427387904, 8)", body);
    refused(
        &[
            "pq",
            "encode",
            "--codebook",
            p(&cb),
            "--input",
            p(&x),
            "--out",
            p(&codes),
        ],
        "x.npy",
    );
    assert!(!codes.exists());
}

/// A change to a preset.
type Edit = Box<dyn FnOnce(&mut DeviceSpec)>;

fn device_file(dir: &Path, edit: impl FnOnce(&mut DeviceSpec)) -> std::path::PathBuf {
    let mut spec = DeviceSpec::preset("hbm3-jedec-6.4").unwrap();
    edit(&mut spec);
    let path = dir.join("device.toml");
    std::fs::write(&path, spec.to_toml_string().unwrap()).unwrap();
    path
}

#[test]
fn device_files_with_huge_timings_are_refused_at_load() {
    let dir = common::tempdir();
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|s| {
                s.timing
                    .insert("nRAS".into(), TimingValue::Cycles(u32::MAX));
            }),
            "limit of 65536",
        ),
        (
            Box::new(|s| {
                s.timing
                    .insert("nREFI".into(), TimingValue::Cycles(u32::MAX));
            }),
            "limit of 65536",
        ),
        (Box::new(|s| s.pim.n_ccdab = u32::MAX), "n_ccdab"),
        (Box::new(|s| s.rules[0].window = u32::MAX), "window"),
        (
            Box::new(|s| {
                s.rules[0].latency = "9223372036854775807 + 9223372036854775807 + 2".into()
            }),
            "overflows",
        ),
        (
            Box::new(|s| s.rules[0].latency = "1".repeat(100_000)),
            "...",
        ),
    ];
    for (edit, needle) in cases {
        let dev = device_file(dir.path(), edit);
        refused(
            &["sim", "bench", "--device", p(&dev), "--rows", "1"],
            needle,
        );
        refused(
            &[
                "attn",
                "sim",
                "--device",
                p(&dev),
                "--model-shape",
                "1,1,128",
                "--ctx",
                "256",
            ],
            needle,
        );
    }
}

#[test]
fn long_tokens_are_cut_in_errors() {
    let long_kv = format!("pq:dsub=4,{}=1", "x".repeat(100_000));
    refused(&["kv", "stats", "--ctx", "10", "--kv", &long_kv], "...");
    let long_device = "d".repeat(100_000);
    refused(&["sim", "bench", "--device", &long_device], "...");
    refused(
        &[
            "kv",
            "stats",
            "--ctx",
            "10",
            "--model-shape",
            &"9".repeat(100_000),
        ],
        "...",
    );
}

#[cfg(unix)]
#[test]
fn outputs_never_write_through_a_symlink() {
    let dir = common::tempdir();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let out = dir.path().join("x.npy");
    std::os::unix::fs::symlink(&victim, &out).unwrap();
    // Symlinks under the old predictable temporary names, too.
    for pid in 0..64 {
        let _ = std::os::unix::fs::symlink(&victim, dir.path().join(format!(".x.npy.tmp-{pid}")));
    }
    let r = run(&["pq", "synth", "--n", "10", "--d", "4", "--out", p(&out)]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!std::fs::symlink_metadata(&out).unwrap().is_symlink());
}

#[cfg(target_os = "linux")]
#[test]
fn stale_temporaries_of_killed_writers_are_cleaned_and_reported() {
    let dir = common::tempdir();
    // PID 4294967295 never runs: the temporary of a killed writer.
    let stale = dir
        .path()
        .join(".x.npy.aqpim-tmp-4294967295-0123456789abcdef");
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();
    let out = dir.path().join("x.npy");
    let r = run(&["pq", "synth", "--n", "10", "--d", "4", "--out", p(&out)]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!stale.exists());
    assert!(r.stderr.contains("removed"), "{}", r.stderr);
}

/// Nested maximal loops that issue no command (around a BARRIER, or around
/// nothing) are refused before they run, naming the step limit and the flag
/// that raises it; `--max-steps` lets a small one through.
#[test]
fn loops_that_issue_nothing_are_refused() {
    let dir = common::tempdir();
    for (name, body) in [("barrier", "BARRIER\n"), ("empty", "")] {
        let f = dir.path().join(format!("{name}.pim"));
        std::fs::write(
            &f,
            format!("LOOP 16777215\nLOOP 16777215\n{body}ENDLOOP\nENDLOOP\n"),
        )
        .unwrap();
        refused(&["sim", "run", p(&f)], "--max-steps");
    }
    let f = dir.path().join("small.pim");
    std::fs::write(&f, "LOOP 4\nLOOP 3\nBARRIER\nENDLOOP\nENDLOOP\n").unwrap();
    refused(&["sim", "run", p(&f), "--max-steps", "32"], "limit of 32");
    assert_eq!(
        run(&["sim", "run", p(&f), "--max-steps", "33"]).code,
        Some(0)
    );
}
