//! Statistics per program region: commands, bytes and energy of the regions
//! (and of the inserted refresh commands) sum to the run's totals, their
//! critical-channel cycles sum to the run's cycles, and the totals equal a
//! plain run's.

use aqpim_pim::bench::{standard_mix, MIX_HOST_BYTES};
use aqpim_pim::{Device, Mode, SimOptions, Simulator};

fn sim(d: &Device) -> Simulator {
    let mut s = Simulator::new(
        d,
        SimOptions {
            mode: Mode::TimingOnly,
            ..SimOptions::default()
        },
    );
    s.set_host_data(vec![0; MIX_HOST_BYTES]);
    s
}

#[test]
fn regions_sum_to_the_run() {
    let d = Device::preset("hbm3-aqpim-5.2").unwrap();
    // Long enough to insert refreshes (the mix runs a few tREFI).
    let p = standard_mix(&d, 3, 400).unwrap();
    let plain = sim(&d).run(&p).unwrap();
    // Three regions in runs of a few instructions.
    let marks: Vec<u16> = (0..p.instrs().len())
        .map(|i| ((i / 7) % 3) as u16)
        .collect();
    let r = sim(&d).run_regions(&p, &marks).unwrap();
    assert_eq!(r.total, plain);
    assert_eq!(r.regions.len(), 3);
    assert!(plain.refreshes > 0, "the run should insert refresh");
    assert_eq!(r.inserted.refreshes, plain.refreshes);
    let parts: Vec<_> = r.regions.iter().chain([&r.inserted]).collect();
    let sum = |f: &dyn Fn(&aqpim_pim::Stats) -> u64| parts.iter().map(|s| f(s)).sum::<u64>();
    assert_eq!(sum(&|s| s.cycles), plain.cycles);
    assert_eq!(sum(&|s| s.total_commands), plain.total_commands);
    assert_eq!(sum(&|s| s.bytes_internal), plain.bytes_internal);
    assert_eq!(sum(&|s| s.bytes_external), plain.bytes_external);
    assert_eq!(sum(&|s| s.bytes_buffer_die), plain.bytes_buffer_die);
    assert_eq!(sum(&|s| s.lane_ops), plain.lane_ops);
    let energy: f64 = parts.iter().map(|s| s.energy.total_pj).sum();
    assert!((energy - plain.energy.total_pj).abs() <= 1e-9 * plain.energy.total_pj);
    for s in &r.regions {
        assert!(s.total_commands > 0 && s.cycles > 0);
    }
}

#[test]
fn marks_must_cover_the_program() {
    let d = Device::preset("hbm3-aqpim-5.2").unwrap();
    let p = standard_mix(&d, 1, 2).unwrap();
    let e = sim(&d).run_regions(&p, &[0]).unwrap_err().to_string();
    assert!(e.contains("region marks"), "{e}");
}
