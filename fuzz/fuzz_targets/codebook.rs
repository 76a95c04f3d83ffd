//! Codebook files: an error, or a codebook of finite centroids.
#![no_main]

use aqpim_pq::ProductQuantizer;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Both as given and with the CRC trailer made valid, so the header
    // checks (not only the checksum) meet the input.
    let mut fixed = data.to_vec();
    if fixed.len() >= 4 {
        fixed.truncate(fixed.len() - 4);
        let crc = crc32fast_hash(&fixed);
        fixed.extend_from_slice(&crc.to_le_bytes());
    }
    for bytes in [data, &fixed[..]] {
        if let Ok(pq) = ProductQuantizer::from_bytes(bytes, std::path::Path::new("fuzz")) {
            assert!(pq.centroids().iter().all(|c| c.is_finite()));
        }
    }
});

/// CRC-32 (IEEE), bitwise: the fuzz crate needs no extra dependency for it.
fn crc32fast_hash(bytes: &[u8]) -> u32 {
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
