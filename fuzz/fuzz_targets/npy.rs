//! The CLI's `.npy` reader (compiled from its source file): an error, or a
//! matrix holding exactly rows x cols values.
#![no_main]
#![allow(dead_code)]

#[path = "../../crates/aqpim/src/limits.rs"]
mod limits;
#[path = "../../crates/aqpim/src/npy.rs"]
mod npy;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(m) = npy::parse_matrix(data) {
        assert_eq!(m.data.len(), m.rows * m.cols);
    }
});
