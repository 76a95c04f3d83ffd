//! Criterion benchmark: the standard mix (`aqpim_pim::bench::standard_mix`)
//! in timing-only and functional mode; throughput in simulated commands.

#![allow(missing_docs)] // criterion_group! generates undocumented public items

use aqpim_pim::bench::{standard_mix, MIX_HOST_BYTES};
use aqpim_pim::{Device, Mode, SimOptions, Simulator};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn simulate(c: &mut Criterion) {
    let d = Device::preset("hbm3-aqpim-5.2").expect("preset resolves");
    let mut g = c.benchmark_group("standard_mix");
    g.sample_size(10);
    for (name, mode, rows) in [
        ("timing_only", Mode::TimingOnly, 500),
        ("functional", Mode::Functional, 20),
    ] {
        let mix = standard_mix(&d, 16, rows).expect("a valid mix");
        // One simulator, reused: the mix leaves every bank closed, so it can
        // run again; the clock and refresh schedule carry on.
        let mut sim = Simulator::new(
            &d,
            SimOptions {
                mode,
                refresh: true,
                record_trace: false,
            },
        );
        sim.set_host_data(vec![1; MIX_HOST_BYTES]);
        // The benchmark checks its own output: the mix issues at least the
        // commands it was built with (refresh adds more).
        let commands = sim.run(&mix).expect("mix runs").total_commands;
        assert!(commands >= mix.command_count());
        g.throughput(Throughput::Elements(commands));
        g.bench_function(name, |b| {
            b.iter(|| sim.run(&mix).expect("mix runs").total_commands)
        });
    }
    g.finish();
}

criterion_group!(benches, simulate);
criterion_main!(benches);
