//! `aqpim sim ...`: assemble and disassemble PIM programs, run them on a
//! device preset, and benchmark the simulator.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use aqpim_pim::bench::{
    external_bandwidth, internal_bandwidth, standard_mix, BandwidthCheck, MIX_DESCRIPTION,
    MIX_HOST_BYTES,
};
use aqpim_pim::is_binary;
use aqpim_pim::limits::MAX_BENCH_ROWS;
use aqpim_pim::{check_trace, Device, Mode, PimError, Program, SimOptions, Simulator, Stats};
use clap::Subcommand;
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Assemble a text program into the binary form (magic AQPIMPRG, 64-bit words).
    Asm {
        /// Assembly text (see docs/pim.md).
        file: PathBuf,
        /// Output file (default: FILE with extension .pimb).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Disassemble a binary program to text (stdout, or --out).
    Disasm {
        /// Binary program.
        file: PathBuf,
        /// Output file (default: stdout).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Run a program (text or binary) on a device and print its statistics.
    Run(RunArgs),
    /// Simulated commands per second on the standard mix, and the analytic bandwidth checks.
    Bench {
        /// Device preset name or TOML spec file.
        #[arg(long, default_value = "hbm3-attacc-5.2")]
        device: String,
        /// Apply the stack's PIM power budget: each all-bank command's
        /// interval stretches until its power fits (the device's `[die]`).
        #[arg(long)]
        power_limited: bool,
        /// Channels the mix runs on.
        #[arg(long, default_value_t = 16)]
        channels: usize,
        /// Row iterations per channel (115 commands each).
        #[arg(long, default_value_t = 2000)]
        rows: u32,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `aqpim sim run`'s arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Program file, assembly text or binary.
    program: PathBuf,
    /// Device preset name (hbm3-aqpim-5.2, with every PIM unit;
    /// hbm3-attacc-5.2, AttAcc's MAC only; hbm3-aqpim-equal-area;
    /// hbm3-jedec-6.4) or a TOML spec file.
    #[arg(long, default_value = "hbm3-aqpim-5.2")]
    device: String,
    /// Apply the stack's PIM power budget: each all-bank command's
    /// interval stretches until its power fits (the device's `[die]`).
    #[arg(long)]
    power_limited: bool,
    /// Host data file that WR and WRGB read (their `data` operands are byte offsets).
    #[arg(long)]
    host_data: Option<PathBuf>,
    /// Skip functional work (identical cycle counts).
    #[arg(long)]
    timing_only: bool,
    /// Do not insert refresh.
    #[arg(long)]
    no_refresh: bool,
    /// Validate the command trace with the independent checker.
    #[arg(long)]
    check: bool,
    /// Write the command trace as JSON lines (one TraceEntry per line).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Most instructions the run may execute, loops expanded (every
    /// command, BARRIER, LOOP and ENDLOOP each time it runs); a program past
    /// it is refused before it runs. Default: aqpim-pim's MAX_PROGRAM_STEPS
    /// (2^33).
    #[arg(long)]
    pub max_steps: Option<u64>,
}

pub fn run(cmd: SimCommand) -> Result<()> {
    match cmd {
        SimCommand::Asm { file, out } => asm(&file, out),
        SimCommand::Disasm { file, out } => disasm(&file, out),
        SimCommand::Run(a) => run_program(a),
        SimCommand::Bench {
            device,
            power_limited,
            channels,
            rows,
            json,
        } => bench(&device, power_limited, channels, rows, json),
    }
}

fn device(name: &str, power_limited: bool) -> Result<Device> {
    let mut spec = crate::args::device_spec(name, &[])?;
    spec.pim.power_limited |= power_limited;
    Ok(spec.resolve()?)
}

fn load_program(path: &Path) -> Result<Program> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if is_binary(&bytes) {
        Ok(Program::from_bytes(&bytes).with_context(|| format!("decoding {}", path.display()))?)
    } else {
        let text = String::from_utf8(bytes).with_context(|| {
            format!(
                "{} is neither a binary program nor UTF-8 text",
                path.display()
            )
        })?;
        Ok(Program::assemble(&text).with_context(|| format!("assembling {}", path.display()))?)
    }
}

fn asm(file: &Path, out: Option<PathBuf>) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let p = Program::assemble(&text).with_context(|| format!("assembling {}", file.display()))?;
    // Refused before anything is written: such a program could never run.
    let commands = p
        .checked_command_count()
        .with_context(|| format!("assembling {}", file.display()))?;
    let out = out.unwrap_or_else(|| file.with_extension("pimb"));
    let bytes = p.to_bytes();
    aqpim_pq::io::write_atomic(&out, &bytes)?;
    println!(
        "{}: {} instructions, {} words, {} commands when run -> {}",
        file.display(),
        p.instrs().len(),
        p.encode().len(),
        commands,
        out.display()
    );
    Ok(())
}

fn disasm(file: &Path, out: Option<PathBuf>) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if !is_binary(&bytes) {
        bail!(
            "{} is not a binary PIM program (no AQPIMPRG magic)",
            file.display()
        );
    }
    let p = Program::from_bytes(&bytes).with_context(|| format!("decoding {}", file.display()))?;
    let text = p.disassemble();
    match out {
        Some(o) => aqpim_pq::io::write_atomic(&o, text.as_bytes())?,
        None => print!("{text}"),
    }
    Ok(())
}

/// `aqpim sim run --json`: the totals under the CLI's unit rule, then the
/// simulator's own statistics (`stats`, in its units: `ns`, `_pj`).
#[derive(Serialize)]
struct RunReport {
    program: String,
    device: String,
    /// `functional` or `timing-only`.
    mode: &'static str,
    refresh: bool,
    trace_checked: bool,
    cycles: u64,
    time_ms: f64,
    energy_uj: f64,
    commands: u64,
    internal_bytes: u64,
    external_bytes: u64,
    wall_s: f64,
    stats: Stats,
}

/// The mode as output names it.
fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Functional => "functional",
        Mode::TimingOnly => "timing-only",
    }
}

fn print_stats(s: &Stats) {
    println!("{:<26} {}", "device", s.device);
    println!(
        "{:<26} {} ({})",
        "cycles",
        s.cycles,
        crate::args::duration(s.ns / 1e6)
    );
    println!(
        "{:<26} {} ({} refreshes)",
        "commands", s.total_commands, s.refreshes
    );
    for (k, v) in &s.commands {
        println!("  {k:<24} {v}");
    }
    println!(
        "{:<26} {} / {}",
        "row hits / misses", s.row_hits, s.row_misses
    );
    println!(
        "{:<26} {} B ({:.1} GB/s)",
        "bytes inside banks", s.bytes_internal, s.internal_gbps
    );
    println!(
        "{:<26} {} B ({:.1} GB/s)",
        "bytes across interface", s.bytes_external, s.external_gbps
    );
    println!("{:<26} {} B", "bytes bank buffers", s.bytes_buffer);
    println!(
        "{:<26} {} B",
        "bytes to/from buffer die", s.bytes_buffer_die
    );
    let e = &s.energy;
    println!("{:<26} {:.3} uJ", "energy", e.total_pj / 1e6);
    for (k, v) in [
        ("activate", e.activate_pj),
        ("column", e.column_pj),
        ("io", e.io_pj),
        ("pim", e.pim_pj),
        ("buffer", e.buffer_pj),
        ("buffer die", e.buffer_die_pj),
        ("refresh", e.refresh_pj),
    ] {
        println!("  {k:<24} {:.3} uJ", v / 1e6);
    }
}

fn run_program(a: RunArgs) -> Result<()> {
    let RunArgs {
        program: path,
        device: device_name,
        power_limited,
        host_data,
        timing_only,
        no_refresh,
        check,
        trace,
        json,
        max_steps,
    } = a;
    let path = path.as_path();
    let d = device(&device_name, power_limited)?;
    let p = load_program(path)?;
    let mode = if timing_only {
        Mode::TimingOnly
    } else {
        Mode::Functional
    };
    let record = check || trace.is_some();
    let mut sim = Simulator::new(
        &d,
        SimOptions {
            mode,
            refresh: !no_refresh,
            record_trace: record,
        },
    );
    if let Some(h) = host_data {
        sim.set_host_data(std::fs::read(&h).with_context(|| format!("reading {}", h.display()))?);
    }
    if let Some(n) = max_steps {
        sim.set_step_limit(n);
    }
    let t0 = Instant::now();
    let stats = sim
        .run(&p)
        .map_err(|e| match e {
            PimError::Limit { what, .. } if what.starts_with("instructions executed") => {
                anyhow::anyhow!("{e} (--max-steps N raises the limit)")
            }
            e => e.into(),
        })
        .with_context(|| format!("running {}", path.display()))?;
    let wall_s = t0.elapsed().as_secs_f64();
    if check {
        check_trace(&d, sim.trace()).context("the independent trace checker rejected the run")?;
    }
    if let Some(t) = trace {
        let mut text = String::new();
        for e in sim.trace() {
            text.push_str(&serde_json::to_string(e)?);
            text.push('\n');
        }
        aqpim_pq::io::write_atomic(&t, text.as_bytes())?;
    }
    if json {
        let r = RunReport {
            program: path.display().to_string(),
            device: stats.device.clone(),
            mode: mode_name(mode),
            refresh: !no_refresh,
            trace_checked: check,
            cycles: stats.cycles,
            time_ms: stats.ns / 1e6,
            energy_uj: stats.energy.total_pj / 1e6,
            commands: stats.total_commands,
            internal_bytes: stats.bytes_internal,
            external_bytes: stats.bytes_external,
            wall_s,
            stats,
        };
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_stats(&stats);
        if check {
            println!("{:<26} passed", "trace checker");
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct BenchReport {
    device: String,
    mix: String,
    channels: usize,
    rows_per_channel: u32,
    commands: u64,
    timing_only_s: f64,
    timing_only_mcmds_per_s: f64,
    functional_commands: u64,
    functional_s: f64,
    functional_mcmds_per_s: f64,
    simulated_cycles: u64,
    simulated_ms: f64,
    bandwidth: Vec<BandwidthCheck>,
}

fn bench(
    device_name: &str,
    power_limited: bool,
    channels: usize,
    rows: u32,
    json: bool,
) -> Result<()> {
    if rows == 0 || rows > MAX_BENCH_ROWS {
        bail!("--rows {rows} is outside 1..={MAX_BENCH_ROWS}");
    }
    if channels == 0 {
        bail!("--channels must be at least 1");
    }
    let d = device(device_name, power_limited)?;
    let run_mix = |mix: &Program, mode: Mode| -> Result<(f64, Stats)> {
        let mut sim = Simulator::new(
            &d,
            SimOptions {
                mode,
                refresh: true,
                record_trace: false,
            },
        );
        sim.set_host_data(vec![0x3c; MIX_HOST_BYTES]);
        let t0 = Instant::now();
        let stats = sim.run(mix)?;
        Ok((t0.elapsed().as_secs_f64(), stats))
    };
    // Timing-only on the full mix; both modes on a twentieth of it (the
    // functional mode does the arithmetic of every bank), which must agree.
    let mix = standard_mix(&d, channels, rows)?;
    let (timing_s, st) = run_mix(&mix, Mode::TimingOnly)?;
    let small = standard_mix(&d, channels, (rows / 20).max(1))?;
    let (_, small_timing) = run_mix(&small, Mode::TimingOnly)?;
    let (functional_s, small_functional) = run_mix(&small, Mode::Functional)?;
    // The benchmark checks its own output: both modes agree, and the mix
    // issued what it was built to issue.
    if small_timing != small_functional {
        bail!("timing-only and functional statistics differ");
    }
    let expected = mix.command_count();
    if st.total_commands < expected {
        bail!(
            "the mix issued {} commands, expected at least {expected}",
            st.total_commands
        );
    }
    let bandwidth = vec![internal_bandwidth(&d, 4000)?, external_bandwidth(&d, 1000)?];
    let r = BenchReport {
        device: d.name.clone(),
        mix: MIX_DESCRIPTION.to_string(),
        channels: channels.min(d.org.channels),
        rows_per_channel: rows,
        commands: st.total_commands,
        timing_only_s: timing_s,
        timing_only_mcmds_per_s: st.total_commands as f64 / timing_s / 1e6,
        functional_commands: small_functional.total_commands,
        functional_s,
        functional_mcmds_per_s: small_functional.total_commands as f64 / functional_s / 1e6,
        simulated_cycles: st.cycles,
        simulated_ms: st.ns / 1e6,
        bandwidth,
    };
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("{:<28} {}", "device", r.device);
        println!("{:<28} {}", "mix", r.mix);
        println!(
            "{:<28} {} channels x {} rows = {} commands",
            "size", r.channels, r.rows_per_channel, r.commands
        );
        println!(
            "{:<28} {:.1} M commands/s ({:.3} s)",
            "timing-only", r.timing_only_mcmds_per_s, r.timing_only_s
        );
        println!(
            "{:<28} {:.1} M commands/s ({:.3} s)",
            "functional", r.functional_mcmds_per_s, r.functional_s
        );
        println!(
            "{:<28} {} cycles ({:.1} us)",
            "simulated",
            r.simulated_cycles,
            r.simulated_ms * 1e3
        );
        for b in &r.bandwidth {
            println!(
                "{:<28} simulated {:.1} GB/s, analytic {:.1} GB/s per channel, ratio {:.4} ({}); {:.1} GB/s per stack",
                b.what.split(':').next().unwrap_or(""),
                b.simulated_gbps,
                b.analytic_gbps,
                b.ratio,
                if b.within_2_percent { "within 2 %" } else { "OUTSIDE 2 %" },
                b.analytic_stack_gbps
            );
        }
    }
    if r.bandwidth.iter().any(|b| !b.within_2_percent) {
        bail!("a bandwidth check is outside 2 %");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROGRAM: &str = "ACTAB ch=0 row=7\nLOOP 32 col=1 reg=1\n  LUTACC ch=0 col=0 bits=8 group=32 table=0 reg=0\nENDLOOP\nPREAB ch=0\n";

    #[test]
    fn asm_disasm_run_round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("p.pim");
        std::fs::write(&text, PROGRAM).unwrap();
        asm(&text, None).unwrap();
        let bin = dir.path().join("p.pimb");
        let back = dir.path().join("back.pim");
        disasm(&bin, Some(back.clone())).unwrap();
        assert_eq!(std::fs::read_to_string(&back).unwrap(), PROGRAM);
        assert_eq!(load_program(&bin).unwrap(), load_program(&text).unwrap());
        let trace = dir.path().join("t.jsonl");
        let args =
            |device: &str, power_limited: bool, check: bool, trace: Option<PathBuf>| RunArgs {
                program: bin.clone(),
                device: device.into(),
                power_limited,
                host_data: None,
                timing_only: false,
                no_refresh: false,
                check,
                trace,
                json: true,
                max_steps: None,
            };
        run_program(args("hbm3-aqpim-5.2", true, true, Some(trace.clone()))).unwrap();
        assert_eq!(std::fs::read_to_string(&trace).unwrap().lines().count(), 34);
        // Errors: unknown device, text that is not a program, disasm of text.
        assert!(run_program(args("no-such-device", false, false, None)).is_err());
        std::fs::write(&text, "FOO ch=0").unwrap();
        assert!(load_program(&text).is_err());
        assert!(disasm(&text, None).is_err());
    }

    #[test]
    fn bench_checks_its_output_on_a_small_mix() {
        bench("hbm3-jedec-6.4", false, 2, 20, true).unwrap();
    }
}
