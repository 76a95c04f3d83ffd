//! Transform files (`.pqxf`, format in the parent module's docs): version 1
//! for a transform without a matrix or with a dense one, version 2 for a
//! monomial one; both are read.

use std::path::Path;

use super::{find_monomial, Matrix, PreTransform};
use crate::error::{PqError, Result};
use crate::limits::MAX_DIM;
use crate::sealed::Frame;

/// Magic of transform files.
pub const TRANSFORM_MAGIC: &[u8; 8] = b"AQPIMXF\0";
/// The version of files without a matrix or with a dense one (the only
/// version before monomial matrices were held compactly).
const DENSE_VERSION: u32 = 1;
/// The version that adds flag 2, a monomial matrix.
const MONOMIAL_VERSION: u32 = 2;
/// Bytes before the data: magic, version, `d`, flags.
const HEADER: usize = 20;

/// The transform file's frame (magic, version, CRC-32).
const FRAME: Frame = Frame {
    magic: TRANSFORM_MAGIC,
    kind: "aqpim transform",
    versions: DENSE_VERSION..=MONOMIAL_VERSION,
};

/// The flags word: what follows the mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flags {
    MeanOnly = 0,
    Dense = 1,
    Monomial = 2,
}

impl Flags {
    /// The flags of a file of `version`, or why they are wrong.
    fn parse(word: u32, version: u32) -> std::result::Result<Self, String> {
        match (word, version) {
            (0, _) => Ok(Flags::MeanOnly),
            (1, _) => Ok(Flags::Dense),
            (2, MONOMIAL_VERSION..) => Ok(Flags::Monomial),
            (2, _) => Err(format!(
                "flags 2 (a monomial matrix) need format version {MONOMIAL_VERSION}, the file is version {version}"
            )),
            _ => Err(format!("flags {word} (expected 0, 1 or 2)")),
        }
    }

    /// Bytes of data after the header for dimension `d <= MAX_DIM`.
    fn data_bytes(self, d: usize) -> usize {
        4 * d
            + match self {
                Flags::MeanOnly => 0,
                Flags::Dense => 8 * d * d,
                Flags::Monomial => 6 * d,
            }
    }
}

/// `n` little-endian f32 values from the start of `bytes` (which holds them).
fn f32s(bytes: &[u8], n: usize) -> Vec<f32> {
    bytes[..4 * n]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

impl PreTransform {
    /// Serializes the transform (format in the module docs): version 1
    /// unless the matrix is monomial.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (version, flags) = match &self.matrix {
            None => (DENSE_VERSION, Flags::MeanOnly),
            Some(Matrix::Dense { .. }) => (DENSE_VERSION, Flags::Dense),
            Some(Matrix::Monomial { .. }) => (MONOMIAL_VERSION, Flags::Monomial),
        };
        let mut out = FRAME.start();
        out[8..12].copy_from_slice(&version.to_le_bytes());
        for v in [self.dim as u32, flags as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let mut put = |xs: &[f32]| {
            xs.iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()))
        };
        put(&self.mean);
        match &self.matrix {
            None => {}
            Some(Matrix::Dense { a, inv }) => {
                put(a);
                put(inv);
            }
            Some(Matrix::Monomial { perm, diag }) => {
                put(diag);
                perm.iter()
                    .for_each(|p| out.extend_from_slice(&p.to_le_bytes()));
            }
        }
        Frame::seal(out)
    }

    /// Parses a transform of either version; `path` only names the source
    /// in errors. A version-1 dense matrix that is monomial is held compactly.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |reason: String| PqError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let (version, body) = FRAME.open(bytes, HEADER + 4, |_, _| Ok(())).map_err(bad)?;
        let word = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().expect("4 bytes"));
        let d = word(12) as usize;
        if d > MAX_DIM {
            return Err(bad(format!(
                "d = {d} is larger than the {MAX_DIM} this reader accepts"
            )));
        }
        let flags = Flags::parse(word(16), version).map_err(bad)?;
        let data = &body[HEADER..];
        if data.len() != flags.data_bytes(d) {
            return Err(bad(format!(
                "{} bytes of data for d = {d} and flags {} (expected {})",
                data.len(),
                flags as u32,
                flags.data_bytes(d)
            )));
        }
        let mean = f32s(data, d);
        let finite = |v: &[f32], what| {
            crate::check_finite(v, d.max(1), what).map_err(|e| bad(e.to_string()))
        };
        finite(&mean, "transform mean")?;
        let rest = &data[4 * d..];
        let matrix = match flags {
            Flags::MeanOnly => None,
            Flags::Dense => {
                let (a, inv) = (f32s(rest, d * d), f32s(&rest[4 * d * d..], d * d));
                finite(&a, "transform matrix")?;
                finite(&inv, "transform inverse")?;
                if let Some((perm, diag)) = find_monomial(&a, d) {
                    return PreTransform::monomial(mean, perm, diag)
                        .map_err(|e| bad(e.to_string()));
                }
                Some(Matrix::Dense { a, inv })
            }
            Flags::Monomial => {
                let diag = f32s(rest, d);
                let perm = rest[4 * d..]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                return PreTransform::monomial(mean, perm, diag).map_err(|e| bad(e.to_string()));
            }
        };
        Ok(PreTransform {
            dim: d,
            mean,
            matrix,
        })
    }

    /// Writes the transform to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::io::write_atomic(path, &self.to_bytes())
    }

    /// Reads a transform file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_bytes(&crate::io::read_all(path)?, path)
    }
}
