//! Criterion benchmark: simulated commands per second on the standard mix.

fn main() {}
