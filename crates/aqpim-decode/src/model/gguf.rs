//! GGUF (versions 2 and 3) reader and writer.
//!
//! File layout (little-endian throughout; ggml `docs/gguf.md`):
//!
//! ```text
//! magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
//! n_kv x   { key: string, value_type u32, value }
//! n_tensors x { name: string, n_dims u32, dims u64 x n_dims, type u32, offset u64 }
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset (offset aligned)
//! ```
//!
//! A string is a u64 byte length then UTF-8 bytes; an array is an element
//! type u32, a u64 count, then the elements. `dims[0]` varies fastest: a
//! PyTorch `[out, in]` weight has GGUF dims `[in, out]`.
//!
//! The reader validates every count and range against the bytes it has, so a
//! truncated or corrupted file gives an error, never a panic or a huge
//! allocation.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{DecodeError, Result};
use crate::model::limits::MAX_METADATA_BYTES;
use crate::model::quant::{dequantize, GgmlType, QMatrix};

/// GGUF magic, the first four bytes of a file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Default alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8.
    String(String),
    /// Type 9: elements of one type (`element_type` is its code, kept so
    /// that empty arrays round-trip).
    Array {
        /// Type code of the elements.
        element_type: u32,
        /// The elements.
        values: Vec<MetaValue>,
    },
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl MetaValue {
    /// The GGUF type code.
    pub fn type_code(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array { .. } => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }

    /// A name of the type, for messages.
    pub fn type_name(&self) -> &'static str {
        type_name(self.type_code())
    }

    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
}

fn type_name(code: u32) -> &'static str {
    const NAMES: [&str; 13] = [
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64",
        "f64",
    ];
    NAMES.get(code as usize).copied().unwrap_or("unknown")
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dims, fastest-varying first.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Number of elements (product of `dims`).
    pub n_elements: usize,
    /// Bytes of data.
    pub n_bytes: usize,
}

/// A GGUF file held in memory: metadata, tensor infos and the data section.
#[derive(Debug, Clone)]
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// Alignment of the data section and of every tensor.
    pub alignment: u64,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, MetaValue>,
    /// Tensor infos, in file order.
    pub tensors: Vec<TensorInfo>,
    data: Vec<u8>,
    data_start: usize,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Bytes of metadata memory still allowed (see [`MAX_METADATA_BYTES`]).
    budget: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let remaining = (self.buf.len() - self.pos) as u64;
        if n > remaining {
            return Err(DecodeError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                len: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let at = self.pos as u64;
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        self.charge(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Malformed {
            offset: at,
            reason: format!("{} is not valid UTF-8", what()),
        })
    }

    /// Charges `bytes` of parsed-metadata memory, failing once the total
    /// would pass [`MAX_METADATA_BYTES`]; called before allocating them.
    fn charge(&mut self, bytes: u64, what: &dyn Fn() -> String) -> Result<()> {
        match usize::try_from(bytes)
            .ok()
            .and_then(|b| self.budget.checked_sub(b))
        {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(DecodeError::Malformed {
                offset: self.pos as u64,
                reason: format!(
                    "{} would take the metadata past the limit of {MAX_METADATA_BYTES} bytes in memory",
                    what()
                ),
            }),
        }
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    /// Fails unless `count` items of at least `min_size` bytes each can still fit.
    fn check_count(&self, count: u64, min_size: u64, what: &dyn Fn() -> String) -> Result<()> {
        if count.saturating_mul(min_size) > self.remaining() {
            return Err(DecodeError::Malformed {
                offset: self.pos as u64,
                reason: format!(
                    "{} claims {count} items, more than the {} remaining bytes can hold",
                    what(),
                    self.remaining()
                ),
            });
        }
        Ok(())
    }

    fn value(&mut self, code: u32, key: &str, depth: u32) -> Result<MetaValue> {
        let what = || format!("value of `{key}`");
        Ok(match code {
            0 => MetaValue::U8(self.array::<1>(&what)?[0]),
            1 => MetaValue::I8(self.array::<1>(&what)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => MetaValue::U32(self.u32(&what)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => {
                let at = self.pos as u64;
                match self.array::<1>(&what)?[0] {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    b => {
                        return Err(DecodeError::Malformed {
                            offset: at,
                            reason: format!("bool `{key}` holds byte {b}"),
                        })
                    }
                }
            }
            8 => MetaValue::String(self.string(&what)?),
            9 => {
                let at = self.pos as u64;
                if depth > 4 {
                    return Err(DecodeError::Malformed {
                        offset: at,
                        reason: format!("arrays nested too deep in `{key}`"),
                    });
                }
                let element_type = self.u32(&what)?;
                let count = self.u64(&what)?;
                let min = match element_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => {
                        return Err(DecodeError::Malformed {
                            offset: at,
                            reason: format!("array `{key}` has unknown element type {other}"),
                        })
                    }
                };
                self.check_count(count, min, &what)?;
                // Each element costs a parsed value whatever its size on disk
                // (a u8 array of N bytes takes N values): charge it first.
                self.charge(
                    count.saturating_mul(std::mem::size_of::<MetaValue>() as u64),
                    &what,
                )?;
                let mut values = Vec::new();
                values
                    .try_reserve_exact(count as usize)
                    .map_err(|_| DecodeError::Malformed {
                        offset: at,
                        reason: format!("cannot allocate the {count} values of `{key}`"),
                    })?;
                for _ in 0..count {
                    values.push(self.value(element_type, key, depth + 1)?);
                }
                MetaValue::Array {
                    element_type,
                    values,
                }
            }
            10 => MetaValue::U64(self.u64(&what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(DecodeError::Malformed {
                    offset: self.pos as u64 - 4,
                    reason: format!("metadata `{key}` has unknown value type {other}"),
                })
            }
        })
    }
}

/// A tensor's entry in the header: name, dims, type code and data offset.
type RawInfo = (String, Vec<u64>, u32, u64);

/// Reads the header's `n_tensors` tensor entries.
fn read_tensor_infos(c: &mut Cursor<'_>, n_tensors: u64) -> Result<Vec<RawInfo>> {
    c.check_count(n_tensors, 24, &|| "the header's tensor count".into())?;
    let mut infos = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.string(&|| format!("name of tensor {i}"))?;
        let at = c.pos as u64;
        let n_dims = c.u32(&|| format!("dims of tensor `{name}`"))?;
        if n_dims == 0 || n_dims > 4 {
            return Err(DecodeError::Malformed {
                offset: at,
                reason: format!("tensor `{name}` has {n_dims} dims (1..=4 allowed)"),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&|| format!("dims of tensor `{name}`"))?);
        }
        let code = c.u32(&|| format!("type of tensor `{name}`"))?;
        let offset = c.u64(&|| format!("offset of tensor `{name}`"))?;
        infos.push((name, dims, code, offset));
    }
    Ok(infos)
}

/// The file's data alignment: `general.alignment`, a power of two up to
/// 1 MiB, or the default.
fn alignment_of(metadata: &BTreeMap<String, MetaValue>) -> Result<u64> {
    Ok(match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(DecodeError::Malformed {
                    offset: 0,
                    reason: format!("general.alignment is {v:?}, not a power of two"),
                })
            }
        },
    })
}

/// Where the tensor data lies in the file.
struct DataLayout {
    alignment: u64,
    data_start: u64,
    data_len: u64,
    file_len: u64,
}

/// A tensor's entry, checked: a known type, whole blocks per row, no
/// overflow, aligned data inside the file.
fn tensor_info(
    name: String,
    dims: Vec<u64>,
    code: u32,
    offset: u64,
    l: &DataLayout,
) -> Result<TensorInfo> {
    let ty = GgmlType::from_code(code).ok_or_else(|| DecodeError::UnsupportedTensorType {
        tensor: name.clone(),
        code,
        type_name: GgmlType::name_of_code(code),
    })?;
    let bad = |reason: String| DecodeError::BadTensor {
        tensor: name.clone(),
        reason,
    };
    let n_elements = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= u32::MAX as u64 * 64)
        .ok_or_else(|| bad(format!("dims {dims:?} overflow")))? as usize;
    if !(dims[0] as usize).is_multiple_of(ty.block_len()) {
        return Err(bad(format!(
            "row length {} is not a multiple of the {:?} block of {}",
            dims[0],
            ty,
            ty.block_len()
        )));
    }
    let n_bytes = ty
        .bytes_for(n_elements)
        .ok_or_else(|| bad(format!("{n_elements} elements overflow")))?;
    if !offset.is_multiple_of(l.alignment) {
        return Err(bad(format!(
            "data offset {offset} is not aligned to {}",
            l.alignment
        )));
    }
    if offset
        .checked_add(n_bytes as u64)
        .is_none_or(|end| end > l.data_len)
    {
        return Err(DecodeError::Truncated {
            what: format!("data of tensor `{name}`"),
            offset: l.data_start + offset,
            needed: n_bytes as u64,
            len: l.file_len,
        });
    }
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        n_elements,
        n_bytes,
    })
}

impl GgufFile {
    /// Reads and parses a file.
    pub fn open(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).map_err(|source| DecodeError::Io {
            op: "reading",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(data)
    }

    /// Parses a whole file held in memory.
    pub fn parse(data: Vec<u8>) -> Result<Self> {
        let mut c = Cursor {
            buf: &data,
            pos: 0,
            budget: MAX_METADATA_BYTES,
        };
        let magic: [u8; 4] = c.array(&|| "magic".into())?;
        if magic != MAGIC {
            return Err(DecodeError::BadMagic { got: magic });
        }
        let version = c.u32(&|| "version".into())?;
        if !(2..=3).contains(&version) {
            return Err(DecodeError::UnsupportedVersion { version });
        }
        let n_tensors = c.u64(&|| "tensor count".into())?;
        let n_kv = c.u64(&|| "metadata count".into())?;
        // A metadata entry takes at least 8 + 4 + 1 bytes, a tensor info 8 + 4 + 4 + 8.
        c.check_count(n_kv, 13, &|| "the header's metadata count".into())?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("key of metadata entry {i}"))?;
            let code = c.u32(&|| format!("type of metadata `{key}`"))?;
            // The map entry itself: the value and about 64 bytes of node.
            c.charge(64 + std::mem::size_of::<MetaValue>() as u64, &|| {
                format!("metadata entry {i}")
            })?;
            let value = c.value(code, &key, 0)?;
            metadata.insert(key, value);
        }
        let infos = read_tensor_infos(&mut c, n_tensors)?;
        let alignment = alignment_of(&metadata)?;
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let data_len = (data.len() as u64).saturating_sub(data_start);
        let mut tensors = Vec::with_capacity(infos.len());
        let layout = DataLayout {
            alignment,
            data_start,
            data_len,
            file_len: data.len() as u64,
        };
        for (name, dims, code, offset) in infos {
            tensors.push(tensor_info(name, dims, code, offset, &layout)?);
        }
        // No two tensors may share bytes: a tensor whose data aliases
        // another's would load another tensor's weights.
        let mut ranges: Vec<(u64, u64, &str)> = tensors
            .iter()
            .filter(|t| t.n_bytes > 0)
            .map(|t| (t.offset, t.offset + t.n_bytes as u64, t.name.as_str()))
            .collect();
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            let ((_, end, first), (start, _, second)) = (pair[0], pair[1]);
            if start < end {
                return Err(DecodeError::BadTensor {
                    tensor: second.to_string(),
                    reason: format!(
                        "its data at offset {start} overlaps tensor `{first}`, which ends at {end}"
                    ),
                });
            }
        }
        Ok(Self {
            version,
            alignment,
            metadata,
            tensors,
            data,
            data_start: data_start as usize,
        })
    }

    /// The info of a tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (ranges were checked when parsing).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = self.data_start + info.offset as usize;
        &self.data[start..start + info.n_bytes]
    }

    fn require(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name).ok_or_else(|| DecodeError::MissingTensor {
            name: name.to_string(),
        })
    }

    /// A tensor dequantized to f32, checked against the expected dims.
    pub fn tensor_f32(&self, name: &str, dims: &[u64]) -> Result<Vec<f32>> {
        let info = self.require(name)?;
        if info.dims != dims {
            return Err(DecodeError::ShapeMismatch {
                tensor: name.into(),
                expected: dims.to_vec(),
                got: info.dims.clone(),
            });
        }
        let mut out = vec![0f32; info.n_elements];
        dequantize(info.ty, self.tensor_bytes(info), &mut out)?;
        Ok(out)
    }

    /// A 2-D tensor with GGUF dims `[cols, rows]` as a compact [`QMatrix`].
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix> {
        let info = self.require(name)?;
        let dims = [cols as u64, rows as u64];
        if info.dims != dims {
            return Err(DecodeError::ShapeMismatch {
                tensor: name.into(),
                expected: dims.to_vec(),
                got: info.dims.clone(),
            });
        }
        QMatrix::new(info.ty, rows, cols, self.tensor_bytes(info).to_vec())
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// A required unsigned-integer metadata value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self
            .get(key)
            .ok_or_else(|| DecodeError::MissingMetadata { key: key.into() })?;
        v.as_u64().ok_or_else(|| DecodeError::MetadataType {
            key: key.into(),
            expected: "unsigned integer",
            got: v.type_name(),
        })
    }

    /// A required numeric metadata value.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self
            .get(key)
            .ok_or_else(|| DecodeError::MissingMetadata { key: key.into() })?;
        v.as_f64().ok_or_else(|| DecodeError::MetadataType {
            key: key.into(),
            expected: "number",
            got: v.type_name(),
        })
    }

    /// A required string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            Some(MetaValue::String(s)) => Ok(s),
            Some(v) => Err(DecodeError::MetadataType {
                key: key.into(),
                expected: "string",
                got: v.type_name(),
            }),
            None => Err(DecodeError::MissingMetadata { key: key.into() }),
        }
    }

    /// A required array metadata value.
    pub fn get_array(&self, key: &str) -> Result<&[MetaValue]> {
        match self.get(key) {
            Some(MetaValue::Array { values, .. }) => Ok(values),
            Some(v) => Err(DecodeError::MetadataType {
                key: key.into(),
                expected: "array",
                got: v.type_name(),
            }),
            None => Err(DecodeError::MissingMetadata { key: key.into() }),
        }
    }
}

/// Builds a GGUF v3 file in memory (used by tests and tools to write models).
#[derive(Debug, Default, Clone)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry.
    pub fn meta(&mut self, key: &str, value: MetaValue) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor of raw `bytes` in type `ty` with GGUF `dims`.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, bytes: Vec<u8>) -> &mut Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), ty, bytes));
        self
    }

    /// Serializes the file (alignment 32).
    pub fn to_bytes(&self) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        fn value(out: &mut Vec<u8>, v: &MetaValue) {
            match v {
                MetaValue::U8(x) => out.push(*x),
                MetaValue::I8(x) => out.push(*x as u8),
                MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
                MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
                MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
                MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
                MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
                MetaValue::Bool(x) => out.push(*x as u8),
                MetaValue::String(s) => string(out, s),
                MetaValue::Array {
                    element_type,
                    values,
                } => {
                    out.extend_from_slice(&element_type.to_le_bytes());
                    out.extend_from_slice(&(values.len() as u64).to_le_bytes());
                    values.iter().for_each(|e| value(out, e));
                }
                MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
                MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
                MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            }
        }
        let align = DEFAULT_ALIGNMENT as usize;
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            string(&mut out, k);
            out.extend_from_slice(&v.type_code().to_le_bytes());
            value(&mut out, v);
        }
        let mut offset = 0usize;
        for (name, dims, ty, bytes) in &self.tensors {
            string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            dims.iter()
                .for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
            out.extend_from_slice(&ty.code().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += bytes.len().div_ceil(align) * align;
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        for (_, _, _, bytes) in &self.tensors {
            out.extend_from_slice(bytes);
            out.resize(out.len().div_ceil(align) * align, 0);
        }
        out
    }
}

/// A string array value.
pub fn string_array<S: AsRef<str>>(items: &[S]) -> MetaValue {
    MetaValue::Array {
        element_type: 8,
        values: items
            .iter()
            .map(|s| MetaValue::String(s.as_ref().to_string()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.meta("general.architecture", MetaValue::String("llama".into()))
            .meta("a.u8", MetaValue::U8(7))
            .meta("a.i8", MetaValue::I8(-7))
            .meta("a.u16", MetaValue::U16(700))
            .meta("a.i16", MetaValue::I16(-700))
            .meta("a.u32", MetaValue::U32(70000))
            .meta("a.i32", MetaValue::I32(-70000))
            .meta("a.f32", MetaValue::F32(1.5))
            .meta("a.bool", MetaValue::Bool(true))
            .meta("a.u64", MetaValue::U64(1 << 40))
            .meta("a.i64", MetaValue::I64(-(1 << 40)))
            .meta("a.f64", MetaValue::F64(-2.25))
            .meta("a.strs", string_array(&["x", "yz", ""]))
            .meta(
                "a.empty",
                MetaValue::Array {
                    element_type: 5,
                    values: vec![],
                },
            )
            .meta(
                "a.nested",
                MetaValue::Array {
                    element_type: 9,
                    values: vec![MetaValue::Array {
                        element_type: 4,
                        values: vec![MetaValue::U32(3)],
                    }],
                },
            );
        let v: Vec<f32> = (0..64).map(|i| i as f32 * 0.25 - 3.0).collect();
        w.tensor(
            "t.f32",
            &[64],
            GgmlType::F32,
            crate::model::quant::quantize(GgmlType::F32, &v).unwrap(),
        );
        w.tensor(
            "t.q8",
            &[32, 2],
            GgmlType::Q8_0,
            crate::model::quant::quantize(GgmlType::Q8_0, &v).unwrap(),
        );
        w
    }

    #[test]
    fn round_trip_all_value_types() {
        let w = sample();
        let f = GgufFile::parse(w.to_bytes()).unwrap();
        assert_eq!(f.version, 3);
        for (k, v) in &w.metadata {
            assert_eq!(f.get(k), Some(v), "{k}");
        }
        let t = f.tensor_f32("t.f32", &[64]).unwrap();
        assert_eq!(t[5], 5.0 * 0.25 - 3.0);
        let m = f.matrix("t.q8", 2, 32).unwrap();
        assert_eq!(m.rows(), 2);
        assert!(matches!(
            f.matrix("t.q8", 32, 2),
            Err(DecodeError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            f.matrix("nope", 2, 32),
            Err(DecodeError::MissingTensor { .. })
        ));
        assert!(matches!(
            f.get_str("a.u8"),
            Err(DecodeError::MetadataType { .. })
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().to_bytes();
        for len in 0..bytes.len() {
            // Trailing zero padding after the last tensor is not needed.
            let cut = bytes[..len].to_vec();
            if let Ok(f) = GgufFile::parse(cut) {
                let last = f
                    .tensors
                    .iter()
                    .map(|t| t.offset as usize + t.n_bytes)
                    .max()
                    .unwrap_or(0);
                assert!(f.data_start + last <= len, "accepted a file cut at {len}");
            }
        }
    }
}
