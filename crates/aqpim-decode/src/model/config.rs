//! Llama-family architecture parameters, read from GGUF metadata.

use crate::error::{DecodeError, Result};
use crate::model::gguf::GgufFile;

/// How RoPE pairs the channels of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeMode {
    /// GGUF "normal" mode: adjacent pairs `(x[2i], x[2i+1])`. llama.cpp uses
    /// it for the `llama` architecture, whose converter permutes the rows of
    /// the Q and K weights so that this mode equals Hugging Face's half-split
    /// rotation of the original checkpoint.
    Normal,
    /// GPT-NeoX mode: pairs `(x[i], x[i + n_rot/2])`.
    Neox,
}

/// The arithmetic of a single-token (decode) matrix-vector product, the
/// model's one numerics option (prefill products are f32 either way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ActivationPrecision {
    /// Activations stay f32; the weights' blocks are converted to f32 and
    /// multiplied in f32 (exact up to the order of the sums).
    #[default]
    F32,
    /// llama.cpp's CPU arithmetic: the activation vector is quantized to 8
    /// bits per block of 32 (`d = max|x| / 127`, `q = round(x / d)`, and
    /// for 4-bit weights with a minimum also `s = d * sum(q)`), each
    /// block's dot product is an integer sum and blocks are accumulated in
    /// f32 (`quant::q8`).
    Q8,
}

impl ActivationPrecision {
    /// The name the command line uses (`f32`, `q8`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Q8 => "q8",
        }
    }
}

impl std::str::FromStr for ActivationPrecision {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "q8" => Ok(Self::Q8),
            other => Err(DecodeError::InvalidArgument {
                name: "activations",
                reason: format!(
                    "`{}` is not an activation precision (f32 or q8)",
                    other.chars().take(40).collect::<String>()
                ),
            }),
        }
    }
}

/// Architecture of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Transformer blocks.
    pub n_layers: usize,
    /// Model width (embedding length).
    pub dim: usize,
    /// Hidden width of the SwiGLU feed-forward.
    pub ffn_dim: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (GQA: each serves `n_heads / n_kv_heads` query heads).
    pub n_kv_heads: usize,
    /// Channels per head.
    pub head_dim: usize,
    /// Channels of a head that RoPE rotates (the first `n_rot`).
    pub n_rot: usize,
    /// RoPE base (theta).
    pub rope_base: f64,
    /// RoPE pairing.
    pub rope_mode: RopeMode,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Training context length.
    pub context_length: usize,
    /// Whether the output projection reuses the token embedding.
    pub tied_embeddings: bool,
}

impl LlamaConfig {
    /// Reads the configuration of a `llama`-architecture GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.get_str("general.architecture")?;
        let rope_mode = match arch {
            "llama" | "mistral" => RopeMode::Normal,
            "qwen2" | "olmo2" | "phi3" => RopeMode::Neox,
            other => {
                return Err(DecodeError::InvalidConfig {
                    reason: format!("architecture `{other}` is not a supported Llama-family model"),
                })
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let int = |k: &str| -> Result<usize> {
            let v = file.get_u64(&key(k))?;
            usize::try_from(v).map_err(|_| DecodeError::InvalidConfig {
                reason: format!("{} = {v} is too large", key(k)),
            })
        };
        let dim = int("embedding_length")?;
        let n_heads = int("attention.head_count")?;
        let n_kv_heads = if file.get(&key("attention.head_count_kv")).is_some() {
            int("attention.head_count_kv")?
        } else {
            n_heads
        };
        if n_heads == 0 {
            return Err(DecodeError::InvalidConfig {
                reason: "zero attention heads".into(),
            });
        }
        let head_dim = if file.get(&key("attention.key_length")).is_some() {
            int("attention.key_length")?
        } else {
            dim / n_heads
        };
        let n_rot = if file.get(&key("rope.dimension_count")).is_some() {
            int("rope.dimension_count")?
        } else {
            head_dim
        };
        let vocab_size = match file.get(&key("vocab_size")) {
            Some(_) => int("vocab_size")?,
            None => file.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_base = if file.get(&key("rope.freq_base")).is_some() {
            file.get_f64(&key("rope.freq_base"))?
        } else {
            10000.0
        };
        let tied_embeddings = file.tensor("output.weight").is_none();
        let cfg = Self {
            n_layers: int("block_count")?,
            dim,
            ffn_dim: int("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            n_rot,
            rope_base,
            rope_mode,
            norm_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            vocab_size,
            context_length: int("context_length")?,
            tied_embeddings,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the relations between the fields.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(DecodeError::InvalidConfig { reason });
        use crate::model::limits::*;
        for (name, v, max) in [
            ("layers", self.n_layers, MAX_LAYERS),
            ("hidden size", self.dim, MAX_DIM),
            ("feed-forward size", self.ffn_dim, MAX_FFN_DIM),
            ("attention heads", self.n_heads, MAX_HEADS),
            ("KV heads", self.n_kv_heads, MAX_HEADS),
            ("head size", self.head_dim, MAX_HEAD_DIM),
            ("vocabulary size", self.vocab_size, MAX_VOCAB),
            ("context length", self.context_length, MAX_CONTEXT),
        ] {
            if v > max {
                return bad(format!("{v} {name} is more than the limit of {max}"));
            }
        }
        if self.context_length == 0 {
            return bad("the context length is zero".into());
        }
        if self.n_layers == 0 || self.dim == 0 || self.ffn_dim == 0 || self.vocab_size == 0 {
            return bad(format!("zero-sized model: {self:?}"));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} query heads cannot share {} KV heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0
            || !self.head_dim.is_multiple_of(2)
            || self.n_rot > self.head_dim
            || !self.n_rot.is_multiple_of(2)
        {
            return bad(format!(
                "head_dim {} with n_rot {}",
                self.head_dim, self.n_rot
            ));
        }
        if !self.rope_base.is_finite()
            || self.rope_base <= 0.0
            || !self.norm_eps.is_finite()
            || self.norm_eps < 0.0
        {
            return bad(format!(
                "rope base {} / norm eps {}",
                self.rope_base, self.norm_eps
            ));
        }
        Ok(())
    }

    /// Query heads per KV head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}
