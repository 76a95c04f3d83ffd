//! PIM programs, binary and text: an error, or a program that encodes back.
#![no_main]

use aqpim_pim::Program;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Program::from_bytes(data) {
        let _ = p.command_count();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = Program::assemble(text) {
            let _ = p.command_count();
        }
    }
});
