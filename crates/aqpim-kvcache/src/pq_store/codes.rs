//! Borrowed views of a head's PQ codes ([`Codes`]) and the encoded tokens
//! also kept in FP16 ([`OutlierToken`]).

use aqpim_pq::CodeWidth;
use half::f16;

/// Borrowed PQ codes of one head: `tokens x row_bytes` bytes, contiguous,
/// oldest first, in the layout [`Codes::width`] names. [`CodeWidth::Byte`]:
/// `row_bytes = M`, one code per byte. [`CodeWidth::Nibble`] (`nbits <= 4`,
/// packed): `row_bytes = ceil(M / 2)`, byte `i` holds subspace `2i` in its low
/// nibble and `2i + 1` in its high nibble ([`aqpim_pq::pack_4bit`]).
/// [`CodeWidth::Crumb`] (`nbits <= 2`, packed): `row_bytes = ceil(M / 4)`,
/// byte `i` holds subspace `4i + j` in bits `2j .. 2j + 2`
/// ([`aqpim_pq::pack_2bit`]). Padding bits are zero.
///
/// One-byte and 4-bit codes come with the same codes transposed in whole
/// blocks of 64 tokens as well ([`Codes::blocks`]), for the CPU kernel.
#[derive(Debug, Clone, Copy)]
pub struct Codes<'a> {
    pub(super) data: &'a [u8],
    pub(super) blocks: &'a [u8],
    pub(super) lane_nibbles: bool,
    pub(super) num_subspaces: usize,
    pub(super) row_bytes: usize,
    pub(super) width: CodeWidth,
}

impl<'a> Codes<'a> {
    /// The raw bytes, `tokens x row_bytes`.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
    /// The codes of the first [`Codes::block_tokens`] tokens (whole blocks
    /// of 64) transposed. Keys: one code a byte, block `b` is `M x 64`
    /// bytes, the code of token `64 b + t` in subspace `m` at
    /// `b * M * 64 + m * 64 + t` (the layout of
    /// [`aqpim_pq::transpose_block`]). Values ([`Codes::lane_nibbles`]): two
    /// codes a byte, `M x 32` bytes a block in the layout of
    /// [`aqpim_pq::pack_lane_nibbles`]. Kept by the store for one-byte and
    /// 4-bit key codes and for such value codes of at most 16 centroids;
    /// empty otherwise.
    pub fn blocks(&self) -> &'a [u8] {
        self.blocks
    }
    /// Whether [`Codes::blocks`] holds lane nibbles (values) rather than one
    /// code a byte (keys).
    pub fn lane_nibbles(&self) -> bool {
        self.lane_nibbles
    }
    /// Bytes of one 64-token block of [`Codes::blocks`].
    pub fn block_bytes(&self) -> usize {
        super::blocks::block_bytes(self.num_subspaces, self.lane_nibbles)
    }
    /// Tokens that [`Codes::blocks`] covers (a multiple of 64).
    pub fn block_tokens(&self) -> usize {
        match self.block_bytes() {
            0 => 0,
            b => self.blocks.len() / b * aqpim_pq::SCAN_BLOCK,
        }
    }
    /// Number of encoded tokens.
    pub fn tokens(&self) -> usize {
        self.data.len() / self.row_bytes
    }
    /// Subspaces per token (M).
    pub fn num_subspaces(&self) -> usize {
        self.num_subspaces
    }
    /// Bytes per token.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }
    /// How the codes are stored: one, two or four per byte.
    pub fn width(&self) -> CodeWidth {
        self.width
    }
    /// The bytes of token `t`. Panics if `t >= tokens()`.
    pub fn row(&self, t: usize) -> &'a [u8] {
        &self.data[t * self.row_bytes..(t + 1) * self.row_bytes]
    }
    /// Code of token `t` in subspace `m`.
    /// Panics if `t >= tokens()` or `m >= M`.
    pub fn code(&self, t: usize, m: usize) -> u8 {
        assert!(
            m < self.num_subspaces,
            "subspace {m} of {}",
            self.num_subspaces
        );
        self.width.code(self.row(t), m)
    }
    /// All codes, one per byte, `tokens x M`.
    pub fn to_u8(&self) -> Vec<u8> {
        match self.width {
            CodeWidth::Byte => self.data.to_vec(),
            w => self
                .data
                .chunks_exact(self.row_bytes)
                .flat_map(|row| (0..self.num_subspaces).map(move |m| w.code(row, m)))
                .collect(),
        }
    }
}

/// An encoded token kept in FP16 as well (an outlier): attention uses these
/// rows instead of its codes.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierToken {
    /// Position among the encoded tokens (`0..encoded`).
    pub index: usize,
    /// Its quantization error (relative, keys plus values), which ranked it.
    pub error: f32,
    /// The FP16 key.
    pub key: Vec<f16>,
    /// The FP16 value.
    pub value: Vec<f16>,
}
