//! Helpers shared by the integration tests of this crate.

/// A proptest config: `cases` cases from the fixed seed `seed`, no
/// persistence files (so every run is the same run).
pub fn config(cases: u32, seed: u64) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..proptest::test_runner::Config::default()
    }
}
