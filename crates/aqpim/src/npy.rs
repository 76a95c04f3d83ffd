//! Reading and writing `.npy` matrices for the CLI (float32 and float16 in, float32 and uint8 out).
//!
//! The reader trusts nothing in the header: it parses the header itself (npyz
//! is used for writing only), computes the element count `rows * cols` with
//! checked arithmetic and bounds it by [`aqpim_pq::limits::MAX_ELEMENTS`],
//! bounds the file size before reading it, and requires the data to hold
//! exactly the bytes the header promises.

use std::io::Cursor;
use std::path::Path;

use anyhow::{bail, Context, Result};
use aqpim_pq::limits::{elements, read_bounded, MAX_ELEMENTS};
use npyz::WriterBuilder;

/// A row-major 2-D matrix read from a `.npy` file, converted to f32.
#[derive(Debug)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// The largest `.npy` file read: `MAX_ELEMENTS` float32 values and a header
/// (numpy pads headers to 64 bytes; 1 MiB is generous).
const MAX_FILE_BYTES: u64 = 4 * MAX_ELEMENTS as u64 + (1 << 20);

/// Reads a 2-D float32 or float16 `.npy` file (C order).
pub fn read_matrix(path: &Path) -> Result<Matrix> {
    let bytes = read_bounded(path, MAX_FILE_BYTES)?;
    parse_matrix(&bytes).with_context(|| path.display().to_string())
}

/// Parses the bytes of a 2-D float32 or float16 `.npy` file (C order).
pub fn parse_matrix(bytes: &[u8]) -> Result<Matrix> {
    let header = Header::parse(bytes)?;
    let data = &bytes[header.data_start..];
    if header.shape.len() != 2 {
        bail!(
            "expected a 2-D array (n x d), got {} dimensions",
            header.shape.len()
        );
    }
    if header.fortran_order {
        bail!("Fortran-ordered arrays are not supported; save with C order");
    }
    let too_large = |v: u64, what: &str| -> Result<usize> {
        usize::try_from(v).with_context(|| format!("{what} = {v} is too large"))
    };
    let (rows, cols) = (
        too_large(header.shape[0], "rows")?,
        too_large(header.shape[1], "columns")?,
    );
    if rows == 0 || cols == 0 {
        bail!("the array is empty ({rows} x {cols})");
    }
    // Checked: a header whose rows x cols wraps in 64 bits is refused here.
    let n = elements(rows, cols, "rows x columns")?;
    let width = match header.descr.as_str() {
        "<f4" => 4,
        "<f2" => 2,
        other => bail!(
            "unsupported dtype '{}'; expected little-endian float32 or float16",
            crate::limits::cut(other)
        ),
    };
    let want = n * width;
    if data.len() != want {
        bail!(
            "the header says {rows} x {cols} values ({want} bytes) but the file holds {} bytes of data",
            data.len()
        );
    }
    let mut out = Vec::new();
    out.try_reserve_exact(n)
        .with_context(|| format!("cannot allocate {n} values"))?;
    if width == 4 {
        out.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    } else {
        out.extend(
            data.chunks_exact(2)
                .map(|b| f32::from(half::f16::from_le_bytes([b[0], b[1]]))),
        );
    }
    Ok(Matrix {
        rows,
        cols,
        data: out,
    })
}

/// A row-major 2-D `uint8` matrix (PQ codes, one byte per code).
#[derive(Debug)]
pub struct Codes {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
}

/// Reads a 2-D uint8 `.npy` file (C order): codes as `aqpim pq encode` writes them.
pub fn read_codes(path: &Path) -> Result<Codes> {
    let bytes = read_bounded(path, MAX_ELEMENTS as u64 + (1 << 20))?;
    parse_codes(&bytes).with_context(|| path.display().to_string())
}

fn parse_codes(bytes: &[u8]) -> Result<Codes> {
    let header = Header::parse(bytes)?;
    let data = &bytes[header.data_start..];
    if header.shape.len() != 2 || header.fortran_order {
        bail!("expected a 2-D C-ordered array of codes (n x M)");
    }
    if !matches!(header.descr.as_str(), "|u1" | "<u1" | ">u1") {
        bail!(
            "unsupported dtype '{}'; codes are uint8 (|u1)",
            crate::limits::cut(&header.descr)
        );
    }
    let rows = usize::try_from(header.shape[0]).context("rows too large")?;
    let cols = usize::try_from(header.shape[1]).context("columns too large")?;
    if rows == 0 || cols == 0 {
        bail!("the array is empty ({rows} x {cols})");
    }
    let n = elements(rows, cols, "rows x columns")?;
    if data.len() != n {
        bail!(
            "the header says {rows} x {cols} codes ({n} bytes) but the file holds {} bytes of data",
            data.len()
        );
    }
    Ok(Codes {
        rows,
        cols,
        data: data.to_vec(),
    })
}

/// The header of a `.npy` file (format versions 1 to 3), parsed here rather
/// than by npyz, whose reader multiplies the shape unchecked (a wrapping
/// product in release builds, an overflow panic in debug ones).
#[derive(Debug)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
    /// Offset of the first data byte.
    data_start: usize,
}

impl Header {
    /// Longest header accepted (numpy writes 64 to a few hundred bytes).
    const MAX_LEN: usize = 1 << 16;

    fn parse(bytes: &[u8]) -> Result<Header> {
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            bail!("not a .npy file (bad magic)");
        }
        let (len, start) = match bytes[6] {
            1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            v => bail!("unsupported .npy format version {v}"),
        };
        if len > Self::MAX_LEN || start + len > bytes.len() {
            bail!(
                "the header claims {len} bytes; the file holds {}",
                bytes.len() - start
            );
        }
        let text =
            std::str::from_utf8(&bytes[start..start + len]).context("the header is not text")?;
        let dict = text
            .trim()
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .context("the header is not a {...} dictionary")?;
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        let mut rest = dict.trim_start();
        while !rest.is_empty() {
            let (key, after) = quoted(rest).context("expected a quoted key in the header")?;
            let after = after
                .trim_start()
                .strip_prefix(':')
                .context("expected `:` after a header key")?
                .trim_start();
            rest = match key {
                "descr" => {
                    let (v, r) = quoted(after).context("descr is not a quoted string")?;
                    descr = Some(v.to_string());
                    r
                }
                "fortran_order" => {
                    if let Some(r) = after.strip_prefix("False") {
                        fortran_order = Some(false);
                        r
                    } else if let Some(r) = after.strip_prefix("True") {
                        fortran_order = Some(true);
                        r
                    } else {
                        bail!("fortran_order is neither True nor False");
                    }
                }
                "shape" => {
                    let inner = after.strip_prefix('(').context("shape is not a tuple")?;
                    let close = inner.find(')').context("shape is not a closed tuple")?;
                    let dims = inner[..close]
                        .split(',')
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                        .map(|d| {
                            d.trim_end_matches('L').parse::<u64>().with_context(|| {
                                format!("shape entry `{}` is not a size", crate::limits::cut(d))
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    shape = Some(dims);
                    &inner[close + 1..]
                }
                other => bail!("unknown header key '{}'", crate::limits::cut(other)),
            }
            .trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
        }
        Ok(Header {
            descr: descr.context("the header has no descr")?,
            fortran_order: fortran_order.context("the header has no fortran_order")?,
            shape: shape.context("the header has no shape")?,
            data_start: start + len,
        })
    }
}

/// The contents of a leading `'...'` or `"..."` and the text after it.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &s[1..];
    let end = body.find(q)?;
    Some((&body[..end], &body[end + 1..]))
}

/// Writes a 2-D array atomically (temporary file, then rename). The data
/// must hold exactly `rows * cols` values: the header never claims more (or
/// fewer) than the file holds.
fn write<T: npyz::Serialize + npyz::AutoSerialize + Copy>(
    path: &Path,
    rows: usize,
    cols: usize,
    data: &[T],
) -> Result<()> {
    write_nd(path, &[rows, cols], data)
}

/// Writes a float32 array of any shape (a codebook: M x ksub x dsub).
pub fn write_f32_nd(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_nd(path, shape, data)
}

fn write_nd<T: npyz::Serialize + npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[usize],
    data: &[T],
) -> Result<()> {
    if shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) != Some(data.len()) {
        bail!(
            "{}: refusing to write a {shape:?} header over {} values",
            path.display(),
            data.len()
        );
    }
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut buf = Cursor::new(Vec::new());
    {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&dims)
            .writer(&mut buf)
            .begin_nd()?;
        w.extend(data.iter().copied())?;
        w.finish()?;
    }
    aqpim_pq::io::write_atomic(path, &buf.into_inner())?;
    Ok(())
}

/// Writes an f32 matrix.
pub fn write_f32(path: &Path, rows: usize, cols: usize, data: &[f32]) -> Result<()> {
    write(path, rows, cols, data)
}

/// Writes a u8 matrix (codes).
pub fn write_u8(path: &Path, rows: usize, cols: usize, data: &[u8]) -> Result<()> {
    write(path, rows, cols, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 `.npy` header for `descr` and `shape`, padded to 64 bytes.
    pub(crate) fn header(descr: &str, shape: &str) -> Vec<u8> {
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        let mut h = dict.into_bytes();
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(b' ');
        }
        h.push(b'\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(&h);
        out
    }

    #[test]
    fn reads_what_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let v: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        write_f32(&p, 3, 4, &v).unwrap();
        let m = read_matrix(&p).unwrap();
        assert_eq!((m.rows, m.cols), (3, 4));
        assert_eq!(m.data, v);
    }

    #[test]
    fn a_header_whose_shape_wraps_is_an_error() {
        // 2^60 x 16 wraps to 0 in 64 bits; 1152921504606848000 x 16 is the case.
        for shape in ["(1152921504606846976, 16)", "(1152921504606848000, 16)"] {
            let e = format!("{:#}", parse_matrix(&header("<f4", shape)).unwrap_err());
            assert!(e.contains("limit of 2147483648"), "{e}");
        }
    }

    #[test]
    fn data_shorter_or_longer_than_the_header_is_an_error() {
        let mut b = header("<f4", "(2, 2)");
        b.extend_from_slice(&[0u8; 12]);
        let e = format!("{:#}", parse_matrix(&b).unwrap_err());
        assert!(e.contains("holds 12 bytes"), "{e}");
        b.extend_from_slice(&[0u8; 8]);
        assert!(parse_matrix(&b).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 256,
            rng_seed: proptest::test_runner::RngSeed::Fixed(17),
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions")
            )),
            ..Default::default()
        })]

        /// Hostile shapes, dtypes and data lengths: an error, or a matrix
        /// that holds exactly rows x cols values.
        #[test]
        fn hostile_npy_files_never_panic(
            rows in proptest::prop_oneof![0u64..8, proptest::prelude::any::<u64>()],
            cols in proptest::prop_oneof![0u64..8, proptest::prelude::any::<u64>()],
            descr in proptest::sample::select(vec!["<f4", "<f2", ">f4", "<u1", "<f8", "|O"]),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            flips in proptest::collection::vec((0usize..128, proptest::prelude::any::<u8>()), 0..3),
        ) {
            let mut b = header(descr, &format!("({rows}, {cols})"));
            b.extend_from_slice(&body);
            for (at, v) in flips {
                if at < b.len() {
                    b[at] = v;
                }
            }
            if let Ok(m) = parse_matrix(&b) {
                proptest::prop_assert_eq!(m.data.len(), m.rows * m.cols);
            }
        }
    }

    #[test]
    fn a_write_never_claims_more_than_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        assert!(write_u8(&p, usize::MAX / 2, 4, &[0u8; 4]).is_err());
        assert!(write_u8(&p, 2, 4, &[0u8; 4]).is_err());
        assert!(!p.exists());
    }
}
