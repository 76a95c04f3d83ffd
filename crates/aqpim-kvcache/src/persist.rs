//! The cache file format: header, per-store body, CRC-32 trailer.
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `AQPIMKV\0` |
//! | 8 | 4 | format version, `u32` (3; 1 and 2 are still read) |
//! | 12 | 8 | file length in bytes, `u64` (trailer included) |
//! | 20 | 4 | spec length `n`, `u32` |
//! | 24 | n | spec, UTF-8, canonical form (`pq:dsub=4,nbits=8,...`) |
//! | 24 + n | 16 | shape: layers, KV heads, query heads, head_dim, `u32` each |
//! | 40 + n | ... | body (per store, see `docs/kvcache.md`) |
//! | end - 4 | 4 | CRC-32 (IEEE) of every byte before it |
//!
//! Everything is little-endian. The length and the CRC are checked before the
//! body is read, so truncation and any single-byte change are detected; the
//! body is then parsed with bounds checks on every read, so even a file with
//! a valid checksum but inconsistent contents gives an error, not a panic.
//!
//! Versions: 3 adds the MX-style scalar store (`scalar:...,mx=true`), whose
//! body holds one E8M0 exponent byte per group where KIVI holds FP16
//! `(min, scale)` pairs; nothing else differs from 2, and a version-3 file
//! with any other spec has the bytes version 2 had. 2 stores PQ codes of
//! `nbits <= 2` four per byte under `pack=true`; 1 stored them as nibbles,
//! two per byte, and a version-1 file loads (its 2-bit codes are repacked).

use std::path::{Path, PathBuf};

use aqpim_pq::sealed::Frame;
use half::f16;

use crate::error::{KvError, Result};
use crate::shape::KvShape;
use crate::spec::KvSpec;

/// The 8 bytes every cache file starts with.
pub const KV_MAGIC: &[u8; 8] = b"AQPIMKV\0";
/// The format version this crate writes (it reads this one and every
/// version from [`KV_MIN_VERSION`]).
pub const KV_VERSION: u32 = 3;
/// The first format version that can hold an MX-style scalar store.
pub(crate) const MX_VERSION: u32 = 3;
/// The oldest format version this crate reads.
pub const KV_MIN_VERSION: u32 = 1;
const FIXED_HEADER: usize = 24;

/// The cache file's frame (magic, version, CRC-32).
const FRAME: Frame = Frame {
    magic: KV_MAGIC,
    kind: "aqpim KV-cache",
    versions: KV_MIN_VERSION..=KV_VERSION,
};
/// Longest spec string a cache file may hold.
const MAX_SPEC_BYTES: usize = 1024;

/// A little-endian byte writer for the body.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) out: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    pub(crate) fn u64(&mut self, v: usize) {
        self.out.extend_from_slice(&(v as u64).to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.out.extend_from_slice(v);
    }
    pub(crate) fn f16s(&mut self, v: &[f16]) {
        self.out.reserve(2 * v.len());
        for x in v {
            self.out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
    }
    pub(crate) fn f32s(&mut self, v: &[f32]) {
        self.out.reserve(4 * v.len());
        for x in v {
            self.out.extend_from_slice(&x.to_le_bytes());
        }
    }
}

/// Starts a file: header for `spec` and `shape`; the body follows; [`finish`] seals it.
pub(crate) fn header(spec: &KvSpec, shape: &KvShape) -> Writer {
    let mut w = Writer::default();
    let s = spec.to_string();
    w.out = FRAME.start();
    w.u64(0); // length, patched by `finish`
    w.bytes(&(s.len() as u32).to_le_bytes());
    w.bytes(s.as_bytes());
    for v in [
        shape.num_layers(),
        shape.num_kv_heads(),
        shape.num_q_heads(),
        shape.head_dim(),
    ] {
        w.bytes(&(v as u32).to_le_bytes());
    }
    w
}

/// Patches the length field and appends the CRC.
pub(crate) fn finish(mut w: Writer) -> Vec<u8> {
    let len = (w.out.len() + 4) as u64;
    w.out[12..20].copy_from_slice(&len.to_le_bytes());
    Frame::seal(w.out)
}

/// A bounds-checked reader over a file's body.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of `data[0]` in the file, for error messages.
    base: usize,
    path: PathBuf,
    /// The file's format version (`KV_MIN_VERSION..=KV_VERSION`).
    version: u32,
}

impl<'a> Reader<'a> {
    /// The file's format version.
    pub(crate) fn version(&self) -> u32 {
        self.version
    }

    pub(crate) fn bad(&self, reason: impl Into<String>) -> KvError {
        KvError::BadFile {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// `count * size` bytes, for `what`.
    pub(crate) fn take(&mut self, count: usize, size: usize, what: &str) -> Result<&'a [u8]> {
        let at = self.base + self.pos;
        let n = count
            .checked_mul(size)
            .filter(|n| *n <= self.data.len() - self.pos)
            .ok_or_else(|| {
                self.bad(format!(
                    "at offset {at}: {what} needs {count} x {size} bytes, only {} remain",
                    self.data.len() - self.pos
                ))
            })?;
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, 1, what)?[0])
    }
    pub(crate) fn u64(&mut self, what: &str) -> Result<usize> {
        let b = self.take(1, 8, what)?;
        let v = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        usize::try_from(v).map_err(|_| self.bad(format!("{what} = {v} is too large")))
    }
    /// `count` FP16 values, every one finite: a cache never stores a NaN
    /// or an infinity (its inputs are checked), so one in a file is corruption.
    pub(crate) fn f16s(&mut self, count: usize, what: &str) -> Result<Vec<f16>> {
        let at = self.base + self.pos;
        let b = self.take(count, 2, what)?;
        let v: Vec<f16> = b
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
            .collect();
        match v.iter().position(|x| !x.is_finite()) {
            Some(i) => Err(self.bad(format!(
                "at offset {}: {what} hold a non-finite value ({})",
                at + 2 * i,
                v[i]
            ))),
            None => Ok(v),
        }
    }
    /// `count` f32 values, every one finite (see [`Reader::f16s`]).
    pub(crate) fn f32s(&mut self, count: usize, what: &str) -> Result<Vec<f32>> {
        let at = self.base + self.pos;
        let b = self.take(count, 4, what)?;
        let v: Vec<f32> = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        match v.iter().position(|x| !x.is_finite()) {
            Some(i) => Err(self.bad(format!(
                "at offset {}: {what} hold a non-finite value ({})",
                at + 4 * i,
                v[i]
            ))),
            None => Ok(v),
        }
    }
    /// Checks that the whole body was read.
    pub(crate) fn finish(self) -> Result<()> {
        if self.pos != self.data.len() {
            return Err(self.bad(format!(
                "{} unexpected bytes after the body",
                self.data.len() - self.pos
            )));
        }
        Ok(())
    }
    /// Checked product of sizes, for allocation sizes read from the file.
    pub(crate) fn mul(&self, a: usize, b: usize, what: &str) -> Result<usize> {
        a.checked_mul(b)
            .ok_or_else(|| self.bad(format!("{what}: {a} x {b} overflows")))
    }
}

/// Validates the header, length and checksum; returns the spec, the shape and a reader over the body.
pub(crate) fn open<'a>(bytes: &'a [u8], path: &Path) -> Result<(KvSpec, KvShape, Reader<'a>)> {
    let bad = |reason: String| KvError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let length_field = |_: u32, bytes: &[u8]| {
        let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        if len != bytes.len() as u64 {
            return Err(format!(
                "the header says {len} bytes but the file has {}: truncated or corrupted",
                bytes.len()
            ));
        }
        Ok(())
    };
    let (version, body) = FRAME
        .open(bytes, FIXED_HEADER + 4, length_field)
        .map_err(bad)?;
    let mut r = Reader {
        data: &body[FIXED_HEADER - 4..],
        pos: 0,
        base: FIXED_HEADER - 4,
        path: path.to_path_buf(),
        version,
    };
    let spec_len =
        u32::from_le_bytes(r.take(1, 4, "spec length")?.try_into().expect("4 bytes")) as usize;
    // Canonical specs are a few dozen bytes; a longer one is corruption.
    if spec_len > MAX_SPEC_BYTES {
        return Err(bad(format!(
            "the spec takes {spec_len} bytes, more than the limit of {MAX_SPEC_BYTES}"
        )));
    }
    let spec_bytes = r.take(spec_len, 1, "spec")?;
    let spec_str =
        std::str::from_utf8(spec_bytes).map_err(|_| bad("the spec is not UTF-8".into()))?;
    let spec: KvSpec = spec_str
        .parse()
        .map_err(|e: KvError| bad(format!("bad spec: {}", cut(&e.to_string()))))?;
    let mut dims = [0usize; 4];
    for d in dims.iter_mut() {
        *d = u32::from_le_bytes(r.take(1, 4, "shape")?.try_into().expect("4 bytes")) as usize;
    }
    let shape = KvShape::with_query_heads(dims[0], dims[1], dims[2], dims[3])
        .map_err(|e| bad(e.to_string()))?;
    spec.validate(&shape).map_err(|e| bad(e.to_string()))?;
    Ok((spec, shape, r))
}

/// `s` cut to 200 characters with `...`, for errors that echo file contents.
fn cut(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}
