//! KV-cache files: an error, or a store whose every head reconstructs to
//! finite values. The length field and CRC are fixed up so the body parser
//! meets the input.
#![no_main]

use aqpim_kvcache::{from_bytes, KvStore};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut fixed = data.to_vec();
    if fixed.len() >= 24 {
        fixed.truncate(fixed.len() - 4);
        let len = (fixed.len() + 4) as u64;
        fixed[12..20].copy_from_slice(&len.to_le_bytes());
        let crc = crc(&fixed);
        fixed.extend_from_slice(&crc.to_le_bytes());
    }
    for bytes in [data, &fixed[..]] {
        if let Ok(store) = from_bytes(bytes, std::path::Path::new("fuzz")) {
            check(store.as_ref());
        }
    }
});

fn check(store: &dyn KvStore) {
    let shape = *store.shape();
    for layer in 0..shape.num_layers() {
        for head in 0..shape.num_kv_heads() {
            let kv = store
                .reconstruct(layer, head)
                .expect("a loaded store reconstructs");
            assert!(kv.keys.iter().chain(&kv.values).all(|x| x.is_finite()));
        }
    }
}

fn crc(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
