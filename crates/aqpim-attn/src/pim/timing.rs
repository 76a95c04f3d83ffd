//! A layer's lowered program, timed: the program of a [`plan`], run in the
//! simulator (timing-only by default), its cost in total and per
//! [`Phase`], and the program itself as text for `aqpim sim run`.

use aqpim_pq::CodeFormat;
use std::collections::BTreeMap;

use aqpim_pim::{Device, Mode, Program, RegionStats, SimOptions, Simulator, Stats};
use aqpim_pq::PqParams;
use serde::Serialize;

use crate::error::{AttnError, Result};
use crate::pim::placement::{plan, PlacedSlice, Plan};
use crate::pim::program::{self, Out, Phase};
use crate::pim::scalar;
use crate::pim::{LayerJob, PimCost, PimKind};

/// A layer's generated instructions, the (slice index, query head) of
/// every record its programs leave for the host, in program order, and the
/// heads of each pass in that order: a pass of `h` heads leaves their `h`
/// statistics `[max, sum]`, then their `h` outputs (see
/// [`regroup_passes`](crate::pim::functional::regroup_passes)).
pub(crate) struct Lowered {
    pub out: Out,
    pub reads: Vec<(usize, usize)>,
    pub passes: Vec<usize>,
}

/// The instructions of a placed layer, channel by channel: per slice, its
/// attention program in passes ([`Geom::passes`](crate::pim::layout::Geom)),
/// each serving as many of the group's query heads as the bank's buffer and
/// registers hold (`g'`) in one read of the slice's rows, head `q` reading
/// its table or query from host byte `host_at(slice, q)`; then the
/// channel's quantization programs. A PQ cache's FP16 sink and window
/// slice is marked [`Phase::Fp16Window`] throughout.
pub(crate) fn layer_program(
    device: &Device,
    job: &LayerJob,
    plan: &Plan,
    host_at: impl Fn(&PlacedSlice, usize) -> u32,
) -> Lowered {
    let lanes = device.pim.lanes;
    let cw = device.org.column_bytes;
    let mut out = Out::default();
    let mut reads = Vec::new();
    let mut passes = Vec::new();
    let mut by_channel: Vec<Vec<usize>> = vec![Vec::new(); device.org.channels];
    for (i, s) in plan.slices.iter().enumerate() {
        by_channel[s.ch].push(i);
    }
    for (ch, slices) in by_channel.iter().enumerate() {
        for &si in slices {
            let s = &plan.slices[si];
            out.fixed = s.window.then_some(Phase::Fp16Window);
            for pass in s.geom.passes(device, job.group) {
                let at: Vec<u32> = pass.clone().map(|q| host_at(s, q)).collect();
                match (s.geom.k.pq, s.geom.sc) {
                    (Some(_), _) => {
                        program::pq_slice(&mut out, &s.geom, ch as u8, s.rows, &at, lanes, cw)
                    }
                    (None, Some(_)) => {
                        scalar::scalar_slice(&mut out, device, &s.geom, ch as u8, s.rows, &at)
                    }
                    (None, None) => {
                        program::fp16_slice(&mut out, &s.geom, ch as u8, s.rows, &at, lanes, cw)
                    }
                }
                passes.push(pass.len());
                reads.extend(pass.map(|q| (si, q)));
            }
        }
        out.fixed = None;
        for job in plan.quantize.iter().filter(|q| q.ch == ch) {
            program::quantize(
                &mut out,
                &job.geom,
                ch as u8,
                &job.tokens,
                job.books,
                device,
            );
        }
    }
    Lowered { out, reads, passes }
}

/// Host data large enough for every offset a timing-only layer program uses
/// (all tables, queries, tokens and codebooks read from offset 0).
fn timing_host_data(job: &LayerJob) -> Result<Vec<u8>> {
    let d = job.head_dim;
    let bytes = match job.kind {
        // The FP16 query (and a new token's key and value).
        PimKind::Fp16 | PimKind::Scalar(_) => 4 * d,
        PimKind::Pq { key, value } => {
            // Both codebooks (FP16), or a table of M x 256 entries.
            let book = |c: CodeFormat| -> Result<(usize, usize)> {
                let p = PqParams::with_dsub(d, c.dsub, c.nbits)
                    .map_err(|e| AttnError::Placement(e.to_string()))?;
                Ok((p.num_subspaces(), p.codebook_len() * 2))
            };
            let ((mk, bk), (_, bv)) = (book(key)?, book(value)?);
            (bk + bv).max(mk * 256 * 2).max(4 * d)
        }
    };
    Ok(vec![0; bytes])
}

/// One layer's lowered program as `aqpim sim run` takes it.
#[derive(Debug, Clone)]
pub struct LayerProgram {
    /// The program.
    pub program: Program,
    /// The phase of each instruction.
    pub phases: Vec<Phase>,
    /// Host data the program reads (zeros: tables, queries, new tokens and
    /// codebooks all at offset 0, as the timing runs use them).
    pub host_data: Vec<u8>,
}

impl LayerProgram {
    /// The program as assembly text, a `# phase:` comment before each run
    /// of instructions of one phase.
    pub fn annotated_text(&self) -> String {
        let text = self.program.disassemble();
        let mut out = String::with_capacity(text.len() + 4096);
        let mut last = None;
        for (line, &phase) in text.lines().zip(&self.phases) {
            if last != Some(phase) {
                out.push_str(&format!("# phase: {} ({})\n", phase.name(), phase.label()));
                last = Some(phase);
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// The lowered program of one layer of `job`, or with `cache` of that one
/// cache's slices only (its query heads, its FP16 window slice and its
/// channels' quantization programs): the program [`simulate_layer`] times.
pub fn lower_layer(device: &Device, job: &LayerJob, cache: Option<usize>) -> Result<LayerProgram> {
    let mut plan = plan(device, job)?;
    if let Some(c) = cache {
        if c >= job.heads {
            return Err(AttnError::shape(
                "lower_layer cache",
                format!("< {}", job.heads),
                c,
            ));
        }
        plan.slices.retain(|s| s.cache == c);
        let chans: Vec<usize> = plan.slices.iter().map(|s| s.ch).collect();
        plan.quantize.retain(|q| chans.contains(&q.ch));
    }
    let lowered = layer_program(device, job, &plan, |_, _| 0);
    Ok(LayerProgram {
        program: Program::new(lowered.out.instrs)?,
        phases: lowered.out.phases,
        host_data: timing_host_data(job)?,
    })
}

/// What one phase of a layer's program cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseCost {
    /// The phase.
    pub phase: Phase,
    /// Cycles by which the phase's commands pushed back the end of the
    /// channel that finishes last (waits for timing constraints and
    /// barriers included): the phases' cycles sum to the layer's.
    pub cycles: u64,
    /// The same in nanoseconds.
    pub ns: f64,
    /// Energy of the phase's commands on every channel, in picojoules.
    pub energy_pj: f64,
    /// Bytes read or written in the bank arrays, every channel.
    pub bytes_internal: u64,
    /// Bytes over the device's external interface.
    pub bytes_external: u64,
    /// Bytes moved between banks and buffer dies.
    pub bytes_buffer_die: u64,
    /// Commands issued, every channel.
    pub commands: u64,
    /// Commands by mnemonic.
    pub command_counts: BTreeMap<String, u64>,
}

impl PhaseCost {
    fn new(phase: Phase, s: &Stats) -> PhaseCost {
        PhaseCost {
            phase,
            cycles: s.cycles,
            ns: s.ns,
            energy_pj: s.energy.total_pj,
            bytes_internal: s.bytes_internal,
            bytes_external: s.bytes_external,
            bytes_buffer_die: s.bytes_buffer_die,
            commands: s.total_commands,
            command_counts: s.commands.clone(),
        }
    }

    /// Adds another cost of the same phase (e.g. the next layer's).
    pub fn add(&mut self, o: &PhaseCost) {
        self.cycles += o.cycles;
        self.ns += o.ns;
        self.energy_pj += o.energy_pj;
        self.bytes_internal += o.bytes_internal;
        self.bytes_external += o.bytes_external;
        self.bytes_buffer_die += o.bytes_buffer_die;
        self.commands += o.commands;
        for (k, v) in &o.command_counts {
            *self.command_counts.entry(k.clone()).or_default() += v;
        }
    }
}

/// The phases of a run split by [`Phase`] marks (region `p as u16`), the
/// inserted commands as [`Phase::Refresh`]; phases without commands left
/// out.
pub(crate) fn phase_costs(r: &RegionStats) -> Vec<PhaseCost> {
    let mut out: Vec<PhaseCost> = Phase::ALL
        .iter()
        .zip(&r.regions)
        .map(|(&p, s)| PhaseCost::new(p, s))
        .collect();
    out.push(PhaseCost::new(Phase::Refresh, &r.inserted));
    out.retain(|p| p.commands > 0 || p.cycles > 0);
    out
}

/// A layer's cost in total and per phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerBreakdown {
    /// The whole layer (what [`simulate_layer`] returns).
    pub total: PimCost,
    /// Per phase, in kernel order: cycles, commands, bytes and energy sum
    /// to `total`'s.
    pub phases: Vec<PhaseCost>,
}

/// Runs one layer's lowered programs in the simulator's timing-only mode
/// and returns their cost.
pub fn simulate_layer(device: &Device, job: &LayerJob) -> Result<PimCost> {
    simulate_layer_mode(device, job, Mode::TimingOnly)
}

/// [`simulate_layer`] in either mode. `Functional` computes every
/// instruction's data (on zero-filled banks and tables: the work, not a
/// particular answer, which [`run_layer`](crate::pim::run_layer) checks),
/// and times exactly as `TimingOnly`.
pub fn simulate_layer_mode(device: &Device, job: &LayerJob, mode: Mode) -> Result<PimCost> {
    Ok(simulate_layer_breakdown(device, job, mode)?.total)
}

/// [`simulate_layer_mode`] with the cost split by [`Phase`]: each command
/// counts (commands, bytes, energy) in the phase of the instruction that
/// issued it, refresh in [`Phase::Refresh`]; time is attributed on the
/// channel that finishes last, each cycle to the phase whose command
/// pushed that channel's end back (see `aqpim_pim::RegionStats`), so the
/// phases' cycles sum to the layer's.
pub fn simulate_layer_breakdown(
    device: &Device,
    job: &LayerJob,
    mode: Mode,
) -> Result<LayerBreakdown> {
    let plan = plan(device, job)?;
    let lowered = layer_program(device, job, &plan, |_, _| 0);
    let marks: Vec<u16> = lowered.out.phases.iter().map(|&p| p as u16).collect();
    let program = Program::new(lowered.out.instrs)?;
    let mut sim = Simulator::new(
        device,
        SimOptions {
            mode,
            ..SimOptions::default()
        },
    );
    sim.set_host_data(timing_host_data(job)?);
    let regions = sim.run_regions(&program, &marks)?;
    Ok(LayerBreakdown {
        total: PimCost::from_stats(&regions.total, plan.channels_used),
        phases: phase_costs(&regions),
    })
}
