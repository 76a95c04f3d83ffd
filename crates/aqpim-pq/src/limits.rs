//! Ceilings on every input-derived size this crate (and the CLI's `.npy` reader) accepts.
//!
//! Each is checked, with checked arithmetic, before anything is allocated, and
//! a value past it is an error that names the limit. They are design limits,
//! not measurements: each is far above what the workspace's models need
//! (head size 64 to 256, hidden size up to 16384) and low enough that the
//! work it allows ends in bounded memory.

use std::io::Read;
use std::path::Path;

use crate::error::{PqError, Result};

/// Largest vector dimension `d` (Llama-family hidden sizes are at most 16384).
pub const MAX_DIM: usize = 65_536;

/// Largest number of `f32` values in one input matrix (`n * d`): 2^31, 8 GiB.
pub const MAX_ELEMENTS: usize = 1 << 31;

/// Largest codebook file: the header, `d * 256` centroids of `MAX_DIM` and the CRC.
pub const MAX_CODEBOOK_FILE_BYTES: u64 = 28 + 4 * (MAX_DIM as u64) * 256 + 4;

/// `rows * cols`, checked against [`MAX_ELEMENTS`]; `what` names the matrix in the error.
pub fn elements(rows: usize, cols: usize, what: &'static str) -> Result<usize> {
    rows.checked_mul(cols)
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or(PqError::TooLarge {
            what,
            rows,
            cols,
            limit: MAX_ELEMENTS,
        })
}

/// Reads a whole file of at most `max` bytes. The size is checked before
/// reading and the buffer is reserved fallibly, so a huge file is an error,
/// never an out-of-memory abort.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let io = |op: &'static str| {
        move |source: std::io::Error| PqError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let file = std::fs::File::open(path).map_err(io("opening"))?;
    let len = file.metadata().map_err(io("reading"))?.len();
    if len > max {
        return Err(PqError::Io {
            op: "reading",
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the file has {len} bytes, more than the {max} this reader accepts"),
            ),
        });
    }
    let mut buf = Vec::new();
    buf.try_reserve_exact(len as usize)
        .map_err(|_| PqError::Io {
            op: "reading",
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("cannot allocate {len} bytes"),
            ),
        })?;
    // `take` bounds the read even if the file grows meanwhile.
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(io("reading"))?;
    if buf.len() as u64 > max {
        return Err(PqError::Io {
            op: "reading",
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the file grew past the {max} bytes this reader accepts"),
            ),
        });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_counts_that_wrap_or_pass_the_limit_are_errors() {
        assert_eq!(elements(1000, 128, "x").unwrap(), 128_000);
        assert!(elements(usize::MAX, 2, "x").is_err());
        assert!(elements(1 << 20, 1 << 12, "x").is_err());
        assert!(elements(MAX_ELEMENTS, 1, "x").is_ok());
    }

    #[test]
    fn bounded_reads_refuse_files_over_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, [7u8; 100]).unwrap();
        assert_eq!(read_bounded(&p, 100).unwrap().len(), 100);
        let e = read_bounded(&p, 99).unwrap_err().to_string();
        assert!(e.contains("more than the 99"), "{e}");
    }
}
