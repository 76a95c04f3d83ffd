//! Device TOML: an error, or a device within the documented limits.
#![no_main]

use aqpim_pim::limits::{MAX_RULE_LATENCY, MAX_TIMING_CYCLES};
use aqpim_pim::DeviceSpec;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = DeviceSpec::from_toml_str(text).and_then(|s| s.resolve()) {
        assert!(d.params.values().all(|&v| v <= MAX_TIMING_CYCLES));
        assert!(d.rules.iter().all(|r| r.latency <= MAX_RULE_LATENCY));
    }
});
