//! GGUF files: an error, or a file whose configuration loads (or fails)
//! without panicking; memory is bounded by the reader's metadata limit.
#![no_main]

use aqpim_decode::model::config::LlamaConfig;
use aqpim_decode::model::gguf::GgufFile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(f) = GgufFile::parse(data.to_vec()) {
        for t in &f.tensors {
            assert_eq!(f.tensor_bytes(t).len(), t.n_bytes);
        }
        let _ = LlamaConfig::from_gguf(&f);
    }
});
