//! Programs are bounded by design: the expanded command count, the
//! instructions a run executes, the loop nesting and a recorded trace each
//! have a documented limit, checked with checked arithmetic before anything
//! runs.

use aqpim_pim::{
    Device, Mode, PimError, Program, SimOptions, Simulator, MAX_LOOP_DEPTH, MAX_PROGRAM_COMMANDS,
    MAX_PROGRAM_STEPS, MAX_TRACE_ENTRIES,
};

fn opts(record_trace: bool) -> SimOptions {
    SimOptions {
        mode: Mode::TimingOnly,
        refresh: true,
        record_trace,
    }
}

fn nested(counts: &[u32], body: &str) -> String {
    let mut text = String::new();
    for c in counts {
        text.push_str(&format!("LOOP {c}\n"));
    }
    text.push_str(body);
    text.push('\n');
    for _ in counts {
        text.push_str("ENDLOOP\n");
    }
    text
}

#[test]
fn four_nested_maximal_loops_are_refused_naming_the_limit() {
    let p = Program::assemble(&nested(&[16_777_215; 4], "PREAB ch=0")).unwrap();
    // The legacy count saturates; the checked one is an error naming the limit.
    assert_eq!(p.command_count(), u64::MAX);
    let e = p.checked_command_count().unwrap_err();
    assert!(
        matches!(e, PimError::Limit { limit, .. } if limit == MAX_PROGRAM_COMMANDS),
        "{e}"
    );
    assert!(
        e.to_string().contains(&MAX_PROGRAM_COMMANDS.to_string()),
        "{e}"
    );
    let d = Device::preset("hbm3-aqpim-5.2").unwrap();
    let e = Simulator::new(&d, opts(false)).run(&p).unwrap_err();
    assert!(matches!(e, PimError::Limit { .. }), "{e}");
}

#[test]
fn the_command_limit_is_exact() {
    // 65536 x 65536 = 2^32 commands is allowed, one more is not.
    let at = Program::assemble(&nested(&[65_536, 65_536], "PREAB ch=0")).unwrap();
    assert_eq!(at.checked_command_count().unwrap(), MAX_PROGRAM_COMMANDS);
    let over = Program::assemble(&format!(
        "{}PREAB ch=0\n",
        nested(&[65_536, 65_536], "PREAB ch=0")
    ))
    .unwrap();
    assert!(over.checked_command_count().is_err());
    // A loop whose body issues nothing costs nothing.
    let empty = Program::assemble(&nested(&[16_777_215; 4], "BARRIER")).unwrap();
    assert_eq!(empty.checked_command_count().unwrap(), 0);
}

#[test]
fn loops_nest_at_most_the_documented_depth() {
    let ok = nested(&[2; MAX_LOOP_DEPTH], "PREAB ch=0");
    assert!(Program::assemble(&ok).is_ok());
    let deep = nested(&[2; MAX_LOOP_DEPTH + 1], "PREAB ch=0");
    let e = Program::assemble(&deep).unwrap_err().to_string();
    assert!(e.contains(&format!("deeper than {MAX_LOOP_DEPTH}")), "{e}");
}

#[test]
fn a_recorded_trace_is_bounded() {
    let d = Device::preset("hbm3-aqpim-5.2").unwrap();
    // Twice as many commands as the trace may hold: refused before running.
    let n = u32::try_from(MAX_TRACE_ENTRIES / 2).unwrap();
    let p = Program::assemble(&nested(
        &[2, n],
        "PREAB ch=0
PREAB ch=0",
    ))
    .unwrap();
    let e = Simulator::new(&d, opts(true)).run(&p).unwrap_err();
    assert!(
        matches!(e, PimError::Limit { limit, .. } if limit == MAX_TRACE_ENTRIES),
        "{e}"
    );
}

/// Loops that issue no command are bounded too: two nested maximal loops
/// around a BARRIER, or around nothing, are refused before they run (they
/// used to run for hours: the command limit counts none of their steps).
#[test]
fn loops_that_issue_nothing_are_refused_before_they_run() {
    let d = Device::preset("hbm3-aqpim-5.2").unwrap();
    for body in ["BARRIER", ""] {
        let p = Program::assemble(&nested(&[16_777_215; 2], body)).unwrap();
        assert_eq!(p.checked_command_count().unwrap(), 0);
        let e = Simulator::new(&d, opts(false)).run(&p).unwrap_err();
        assert!(
            matches!(e, PimError::Limit { limit, .. } if limit == MAX_PROGRAM_STEPS),
            "{body:?}: {e}"
        );
    }
}

/// The step count by hand: LOOP 4 (runs once), LOOP 3 (4 times), BARRIER
/// (12), the inner ENDLOOP (12), the outer ENDLOOP (4): 33 steps; a limit
/// of 33 runs it, 32 refuses it.
#[test]
fn the_step_limit_is_exact_and_settable() {
    let p = Program::assemble(&nested(&[4, 3], "BARRIER")).unwrap();
    assert_eq!(p.checked_step_count(u64::MAX).unwrap(), 33);
    let d = Device::preset("hbm3-aqpim-5.2").unwrap();
    let mut s = Simulator::new(&d, opts(false));
    s.set_step_limit(32);
    let e = s.run(&p).unwrap_err();
    assert!(matches!(e, PimError::Limit { limit: 32, .. }), "{e}");
    s.set_step_limit(33);
    s.run(&p).unwrap();
}
