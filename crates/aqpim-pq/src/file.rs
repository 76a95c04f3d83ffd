//! Codebook files: a versioned little-endian binary format with a checksum.
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `AQPIMCB\0` |
//! | 8 | 4 | format version, `u32` (currently 1) |
//! | 12 | 4 | `d`, `u32` |
//! | 16 | 4 | `M`, `u32` |
//! | 20 | 4 | `nbits`, `u32` |
//! | 24 | 4 | `M * ksub * dsub`, `u32` (number of f32 values that follow) |
//! | 28 | 4 * that | centroids, `f32`, in [`ProductQuantizer::centroids`] order |
//! | end - 4 | 4 | CRC-32 (IEEE) of every byte before it, `u32` |
//!
//! The CRC is checked before anything else is trusted, so any single-byte
//! change anywhere in the file is detected. Files are written atomically.

use std::path::Path;

use crate::error::{PqError, Result};
use crate::params::PqParams;
use crate::quantizer::ProductQuantizer;
use crate::sealed::Frame;

/// The 8 bytes every codebook file starts with.
pub const CODEBOOK_MAGIC: &[u8; 8] = b"AQPIMCB\0";
/// The format version this crate writes and reads.
pub const CODEBOOK_VERSION: u32 = 1;
const HEADER: usize = 28;

/// The codebook file's frame (magic, version, CRC-32).
const FRAME: Frame = Frame {
    magic: CODEBOOK_MAGIC,
    kind: "aqpim codebook",
    versions: CODEBOOK_VERSION..=CODEBOOK_VERSION,
};

impl ProductQuantizer {
    /// Serializes the codebook in the format above.
    pub fn to_bytes(&self) -> Vec<u8> {
        let p = self.params();
        let c = self.centroids();
        let mut out = FRAME.start();
        out.reserve(HEADER + 4 * c.len() + 4);
        for v in [
            p.dim() as u32,
            p.num_subspaces() as u32,
            p.nbits(),
            c.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in c {
            out.extend_from_slice(&v.to_le_bytes());
        }
        Frame::seal(out)
    }

    /// Parses a codebook; `path` only names the source in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |reason: String| PqError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let (_, body) = FRAME.open(bytes, HEADER + 4, |_, _| Ok(())).map_err(bad)?;
        let word =
            |i: usize| u32::from_le_bytes(body[8 + 4 * i..12 + 4 * i].try_into().expect("4 bytes"));
        let dim = word(1) as usize;
        if dim > crate::limits::MAX_DIM {
            return Err(bad(format!(
                "d = {dim} is larger than the limit of {}",
                crate::limits::MAX_DIM
            )));
        }
        let params = PqParams::new(dim, word(2) as usize, word(3))
            .map_err(|e| bad(format!("bad shape in header: {e}")))?;
        let count = word(4) as usize;
        if count != params.codebook_len() {
            return Err(bad(format!(
                "header says {count} values, shape needs {}",
                params.codebook_len()
            )));
        }
        let data = &body[HEADER..];
        if data.len() != 4 * count {
            return Err(bad(format!(
                "expected {} bytes of centroids, found {}",
                4 * count,
                data.len()
            )));
        }
        let centroids = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        ProductQuantizer::from_centroids(params, centroids).map_err(|e| bad(e.to_string()))
    }

    /// Writes the codebook to `path` atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::io::write_atomic(path, &self.to_bytes())
    }

    /// Loads and validates a codebook file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::limits::read_bounded(path, crate::limits::MAX_CODEBOOK_FILE_BYTES)?;
        Self::from_bytes(&bytes, path)
    }
}
