//! `--kv` spec strings: parse, validate and account without panicking, and
//! with finite figures when they succeed.
#![no_main]

use aqpim_kvcache::{account, KvShape, KvSpec};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = text.parse::<KvSpec>() else {
        return;
    };
    let shape = KvShape::with_query_heads(32, 8, 32, 128).expect("a valid shape");
    if spec.validate(&shape).is_ok() {
        if let Ok(r) = account(&shape, &spec, 131_072) {
            assert!(r.bits_per_element.total.is_finite());
        }
    }
});
