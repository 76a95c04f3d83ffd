//! Product quantization for KV caches (layer 1): per-subspace k-means training,
//! encoding and decoding of batches, lookup tables and asymmetric distance
//! computation (ADC) on 8-bit, packed 4-bit and packed 2-bit codes (see
//! [`CodeWidth`]), and versioned codebook files.
//!
//! Symbols follow faiss and the AQPIM paper:
//!
//! | symbol | name here | meaning |
//! |---|---|---|
//! | `d` | [`PqParams::dim`] | vector dimension |
//! | `M` | [`PqParams::num_subspaces`] | number of subspaces (sub-quantizers) |
//! | `dsub` | [`PqParams::dsub`] | `d / M`, elements per sub-vector |
//! | `nbits` | [`PqParams::nbits`] | bits per code, `1..=8` |
//! | `ksub` | [`PqParams::ksub`] | `2^nbits`, centroids per subspace |
//!
//! The entry point is [`ProductQuantizer`]: train it with
//! [`ProductQuantizer::train`], encode and decode with
//! [`ProductQuantizer::encode`] / [`ProductQuantizer::decode`], build a query's
//! lookup table with [`ProductQuantizer::inner_product_table`] and score codes
//! with [`Lut::scan_u8`], [`Lut::scan_packed4`] or [`Lut::scan_packed2`] (or the blocked
//! [`FastScanCodes`] layout for 4-bit codes). Codebooks persist with
//! [`ProductQuantizer::save`] and [`ProductQuantizer::load`].
//!
//! ```
//! use aqpim_pq::{PqParams, ProductQuantizer, TrainOptions};
//! let params = PqParams::new(8, 4, 4).unwrap(); // d = 8, M = 4, nbits = 4
//! let data = aqpim_pq::synth::kv_like(512, 8, 7);
//! let pq = ProductQuantizer::train(params, &data, &TrainOptions::default()).unwrap();
//! let codes = pq.encode(&data).unwrap();
//! let approx = pq.decode(&codes).unwrap();
//! assert_eq!(approx.len(), data.len());
//! ```

mod codes;
mod error;
mod fastscan;
mod file;
pub mod io;
mod kmeans;
mod lanes;
pub mod limits;
mod lut;
mod nearest;
mod params;
mod qlut;
mod quantizer;
pub mod sealed;
pub mod synth;
pub mod transform;

pub use codes::{
    pack_2bit, pack_4bit, packed2_row_bytes, packed_row_bytes, unpack_2bit, unpack_4bit, CodeWidth,
};
pub use error::{PqError, Result};
pub use fastscan::FastScanCodes;
pub use file::{CODEBOOK_MAGIC, CODEBOOK_VERSION};
pub use kmeans::{kmeans, Init, KMeansOptions, KMeansResult};
pub use lanes::{lane_nibble, pack_lane_nibbles, LANE_ROW};
pub use lut::Lut;
pub use nearest::nearest_centroids;
pub use params::{CodeFormat, PqParams};
pub use qlut::{transpose_block, LutPrecision, QuantLut, ScanKernel, BLOCK as SCAN_BLOCK};
pub use quantizer::{ProductQuantizer, TrainOptions};

/// Checks that every value of a row-major `rows x cols` matrix is finite.
///
/// Returns [`PqError::NonFinite`] naming the first offending row and column.
pub fn check_finite(data: &[f32], cols: usize, what: &'static str) -> Result<()> {
    if let Some(pos) = data.iter().position(|v| !v.is_finite()) {
        return Err(PqError::NonFinite {
            what,
            row: pos / cols.max(1),
            col: pos % cols.max(1),
            value: data[pos],
        });
    }
    Ok(())
}
