//! Reading and writing `.npy` matrices for the CLI (float32 and float16 in, float32 and uint8 out).

use std::io::Cursor;
use std::path::Path;

use anyhow::{bail, Context, Result};
use npyz::WriterBuilder;

/// A row-major 2-D matrix read from a `.npy` file, converted to f32.
#[derive(Debug)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// Reads a 2-D float32 or float16 `.npy` file (C order).
pub fn read_matrix(path: &Path) -> Result<Matrix> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let npy = npyz::NpyFile::new(Cursor::new(bytes))
        .with_context(|| format!("{}: not a valid .npy file", path.display()))?;
    let shape = npy.shape().to_vec();
    if shape.len() != 2 {
        bail!(
            "{}: expected a 2-D array (n x d), got shape {shape:?}",
            path.display()
        );
    }
    if npy.order() != npyz::Order::C {
        bail!(
            "{}: Fortran-ordered arrays are not supported; save with C order",
            path.display()
        );
    }
    let (rows, cols) = (shape[0] as usize, shape[1] as usize);
    let dtype = npy.dtype().descr();
    let data: Vec<f32> = match dtype.as_str() {
        "'<f4'" => npy
            .into_vec::<f32>()
            .with_context(|| format!("{}: reading float32 data", path.display()))?,
        "'<f2'" => npy
            .into_vec::<half::f16>()
            .with_context(|| format!("{}: reading float16 data", path.display()))?
            .into_iter()
            .map(f32::from)
            .collect(),
        other => bail!(
            "{}: unsupported dtype {other}; expected little-endian float32 or float16",
            path.display()
        ),
    };
    if data.len() != rows * cols {
        bail!(
            "{}: shape {rows} x {cols} but {} values",
            path.display(),
            data.len()
        );
    }
    Ok(Matrix { rows, cols, data })
}

/// Writes a 2-D array atomically (temporary file, then rename).
fn write<T: npyz::Serialize + npyz::AutoSerialize + Copy>(
    path: &Path,
    rows: usize,
    cols: usize,
    data: &[T],
) -> Result<()> {
    let mut buf = Cursor::new(Vec::new());
    {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[rows as u64, cols as u64])
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
