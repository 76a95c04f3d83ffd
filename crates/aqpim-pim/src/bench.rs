//! The standard benchmark mix and the analytic bandwidth checks, shared by
//! `aqpim sim bench`, the criterion bench and the tests.

use serde::Serialize;

use crate::error::Result;
use crate::isa::{BankSel, CodeBits, Instr, Program, Strides};
use crate::resolve::Device;
use crate::sim::{Mode, SimOptions, Simulator};
use crate::stats::Stats;

/// One line describing [`standard_mix`].
pub const MIX_DESCRIPTION: &str =
    "per channel and row: ACTAB, 32 LUTACC (8-bit), 32 HISTACC (4-bit), \
32 MAC (reduce), PREAB, 4 WRGB, ACT + 8 RD + 1 WR + PRE on one bank, MVD, SFM; refresh on";

/// Host data bytes the mix reads (WRGB and WR operands).
pub const MIX_HOST_BYTES: usize = 4096;

fn s(row: i16, col: i16, buf: i16, reg: i16, data: i16, die: i16) -> Strides {
    Strides::from_array([row, col, buf, reg, data, die])
}

/// The standard mix on the first `channels` channels, `rows` row iterations
/// per channel (115 commands each, before refresh). `rows` outside what a
/// loop may count (zero, or past the ISA's loop limit) is an error; callers
/// bound it by [`crate::limits::MAX_BENCH_ROWS`] first.
pub fn standard_mix(device: &Device, channels: usize, rows: u32) -> Result<Program> {
    let mut v = Vec::new();
    let bank = BankSel {
        pc: 0,
        sid: 0,
        bg: 1,
        bank: 2,
    };
    for c in 0..channels.min(device.org.channels) {
        let ch = c as u8;
        v.push(Instr::Loop {
            count: rows,
            strides: s(1, 0, 0, 0, 0, 0),
        });
        v.push(Instr::ActAb { ch, row: 0 });
        v.push(Instr::Loop {
            count: 32,
            strides: s(0, 1, 0, 1, 0, 0),
        });
        v.push(Instr::LutAcc {
            ch,
            col: 0,
            bits: CodeBits::Eight,
            group: 32,
            table: 0,
            reg: 0,
        });
        v.push(Instr::EndLoop);
        v.push(Instr::Loop {
            count: 32,
            strides: s(0, 1, 0, 0, 0, 0),
        });
        v.push(Instr::HistAcc {
            ch,
            col: 0,
            bits: CodeBits::Four,
            group: 32,
            weights: 8192,
            reg: 512,
        });
        v.push(Instr::EndLoop);
        v.push(Instr::Loop {
            count: 32,
            strides: s(0, 1, 0, 0, 0, 0),
        });
        v.push(Instr::Mac {
            ch,
            col: 0,
            buf: 0,
            reg: 64,
            reduce: true,
            bcast: false,
        });
        v.push(Instr::EndLoop);
        v.push(Instr::PreAb { ch });
        v.push(Instr::Loop {
            count: 4,
            strides: s(0, 0, 16, 0, 32, 0),
        });
        v.push(Instr::Wrgb {
            ch,
            buf: 0,
            data: 0,
        });
        v.push(Instr::EndLoop);
        v.push(Instr::Act { ch, bank, row: 100 });
        v.push(Instr::Loop {
            count: 8,
            strides: s(0, 1, 0, 0, 0, 0),
        });
        v.push(Instr::Rd { ch, bank, col: 0 });
        v.push(Instr::EndLoop);
        v.push(Instr::Wr {
            ch,
            bank,
            col: 9,
            data: 128,
        });
        v.push(Instr::Pre { ch, bank });
        v.push(Instr::Mvd {
            ch,
            reg: 0,
            len: 4,
            die: 0,
        });
        v.push(Instr::Sfm {
            ch,
            die: 0,
            len: 256,
            scale: half::f16::from_f32(0.125),
            stats: false,
        });
        v.push(Instr::EndLoop);
    }
    Program::new(v)
}

/// A bandwidth check: simulated against analytic.
#[derive(Debug, Clone, Serialize)]
pub struct BandwidthCheck {
    /// What was streamed.
    pub what: String,
    /// Simulated bandwidth of one channel, GB/s.
    pub simulated_gbps: f64,
    /// Analytic bandwidth of one channel, GB/s.
    pub analytic_gbps: f64,
    /// `simulated / analytic`.
    pub ratio: f64,
    /// Analytic bandwidth of one stack, GB/s.
    pub analytic_stack_gbps: f64,
    /// Whether the ratio is within 2 %.
    pub within_2_percent: bool,
    /// The run's statistics.
    pub stats: Stats,
}

fn refresh_factor(d: &Device) -> f64 {
    match (d.refresh_interval, d.param("nRFC")) {
        (Some(refi), Some(rfc)) => 1.0 - f64::from(rfc) / f64::from(refi),
        _ => 1.0,
    }
}

fn check(
    d: &Device,
    what: &str,
    program: &Program,
    bytes: fn(&Stats) -> u64,
    analytic: f64,
) -> Result<BandwidthCheck> {
    let mut sim = Simulator::new(
        d,
        SimOptions {
            mode: Mode::TimingOnly,
            refresh: true,
            record_trace: false,
        },
    );
    let stats = sim.run(program)?;
    let simulated = bytes(&stats) as f64 / stats.ns;
    let ratio = simulated / analytic;
    let channels_per_stack = (d.org.channels / d.org.stacks) as f64;
    Ok(BandwidthCheck {
        what: what.to_string(),
        simulated_gbps: simulated,
        analytic_gbps: analytic,
        ratio,
        analytic_stack_gbps: analytic * channels_per_stack,
        within_2_percent: (ratio - 1.0).abs() <= 0.02,
        stats,
    })
}

/// All-bank column reads (MAC) streaming over an open row in every bank of
/// channel 0, against `banks * column_bytes / (interval * tCK)` less refresh
/// (`1 - nRFC / nREFI`), the interval being the MAC's in force
/// ([`Device::pim_interval`]: nCCDAB, the unit's rate, the power limit).
pub fn internal_bandwidth(d: &Device, rows: u32) -> Result<BandwidthCheck> {
    let p = Program::new(vec![
        Instr::ActAb { ch: 0, row: 0 },
        Instr::Loop {
            count: rows,
            strides: Strides::default(),
        },
        Instr::Loop {
            count: d.org.columns as u32,
            strides: s(0, 1, 0, 0, 0, 0),
        },
        Instr::Mac {
            ch: 0,
            col: 0,
            buf: 0,
            reg: 0,
            reduce: true,
            bcast: false,
        },
        Instr::EndLoop,
        Instr::EndLoop,
    ])?;
    let analytic = (d.org.banks_per_channel * d.org.column_bytes) as f64
        / (d.pim_interval(crate::Command::Mac, d.pim.lanes as u64) as f64 * d.t_ck_ns())
        * refresh_factor(d);
    check(
        d,
        "internal: all-bank MAC over open rows, one channel",
        &p,
        |s| s.bytes_internal,
        analytic,
    )
}

/// RD streaming over open rows, alternating pseudo-channels and bank groups
/// on channel 0, against the interface peak
/// `pseudo_channels * dq_bits * data_rate / 8` less refresh.
pub fn external_bandwidth(d: &Device, rows: u32) -> Result<BandwidthCheck> {
    let mut body = Vec::new();
    for bg in 0..d.org.bank_groups as u8 {
        for pc in 0..d.org.pseudo_channels as u8 {
            body.push(Instr::Rd {
                ch: 0,
                bank: BankSel {
                    pc,
                    sid: 0,
                    bg,
                    bank: 0,
                },
                col: 0,
            });
        }
    }
    let mut v = vec![
        Instr::ActAb { ch: 0, row: 0 },
        Instr::Loop {
            count: rows,
            strides: Strides::default(),
        },
        Instr::Loop {
            count: d.org.columns as u32,
            strides: s(0, 1, 0, 0, 0, 0),
        },
    ];
    v.extend(body);
    v.extend([Instr::EndLoop, Instr::EndLoop]);
    let p = Program::new(v)?;
    let o = &d.org;
    let analytic = (o.pseudo_channels * o.dq_bits_per_pseudo_channel) as f64
        * f64::from(d.data_rate_mtps)
        / 8.0
        / 1000.0
        * refresh_factor(d);
    check(
        d,
        "external: RD over open rows, both pseudo-channels, one channel",
        &p,
        |s| s.bytes_external,
        analytic,
    )
}
