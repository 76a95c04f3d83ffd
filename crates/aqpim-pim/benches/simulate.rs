//! Criterion benchmark: the standard mix (`aqpim_pim::bench::standard_mix`)
//! in timing-only and functional mode; throughput in simulated commands.

use aqpim_pim::bench::{standard_mix, MIX_HOST_BYTES};
use aqpim_pim::{Device, Mode, SimOptions, Simulator};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn simulate(c: &mut Criterion) {
    let d = Device::preset("hbm3-attacc-5.2").expect("preset resolves");
    let mix = standard_mix(&d, 4, 100);
    let mut g = c.benchmark_group("standard_mix");
    for (name, mode) in [("timing_only", Mode::TimingOnly), ("functional", Mode::Functional)] {
        // The benchmark checks its own output: the mix issues at least the
        // commands it was built with (refresh adds more).
        let mut probe = Simulator::new(&d, SimOptions { mode, refresh: true, record_trace: false });
        probe.set_host_data(vec![1; MIX_HOST_BYTES]);
        let commands = probe.run(&mix).expect("mix runs").total_commands;
        assert!(commands >= mix.command_count());
        g.throughput(Throughput::Elements(commands));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut s = Simulator::new(&d, SimOptions { mode, refresh: true, record_trace: false });
                s.set_host_data(vec![1; MIX_HOST_BYTES]);
                s.run(&mix).expect("mix runs").total_commands
            })
        });
    }
    g.finish();
}

criterion_group!(benches, simulate);
criterion_main!(benches);
