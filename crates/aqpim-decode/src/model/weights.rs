//! Where the forward pass's weights come from: the tensors of a Llama-family
//! model named independently of the file format, and the [`WeightSource`]
//! trait that GGUF files and Hugging Face checkpoints implement.

use crate::error::Result;
use crate::model::gguf::GgufFile;
use crate::model::quant::QMatrix;

/// One weight tensor of a Llama-family model (layer index where per layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Weight {
    /// Token embedding, `vocab x dim`.
    TokenEmbd,
    /// Output projection, `vocab x dim` (absent when tied).
    Output,
    /// Final RMSNorm gain, `dim`.
    OutputNorm,
    /// RMSNorm gain before attention, `dim`.
    AttnNorm(usize),
    /// Query projection, `n_heads * head_dim x dim`.
    Q(usize),
    /// Key projection, `n_kv_heads * head_dim x dim`.
    K(usize),
    /// Value projection, `n_kv_heads * head_dim x dim`.
    V(usize),
    /// Attention output projection, `dim x n_heads * head_dim`.
    AttnOutput(usize),
    /// RMSNorm gain before the feed-forward, `dim`.
    FfnNorm(usize),
    /// SwiGLU gate projection, `ffn_dim x dim`.
    Gate(usize),
    /// SwiGLU up projection, `ffn_dim x dim`.
    Up(usize),
    /// SwiGLU down projection, `dim x ffn_dim`.
    Down(usize),
}

impl Weight {
    /// The tensor's name in a GGUF file (llama.cpp's naming).
    pub fn gguf_name(self) -> String {
        let blk = |l: usize, s: &str| format!("blk.{l}.{s}.weight");
        match self {
            Self::TokenEmbd => "token_embd.weight".into(),
            Self::Output => "output.weight".into(),
            Self::OutputNorm => "output_norm.weight".into(),
            Self::AttnNorm(l) => blk(l, "attn_norm"),
            Self::Q(l) => blk(l, "attn_q"),
            Self::K(l) => blk(l, "attn_k"),
            Self::V(l) => blk(l, "attn_v"),
            Self::AttnOutput(l) => blk(l, "attn_output"),
            Self::FfnNorm(l) => blk(l, "ffn_norm"),
            Self::Gate(l) => blk(l, "ffn_gate"),
            Self::Up(l) => blk(l, "ffn_up"),
            Self::Down(l) => blk(l, "ffn_down"),
        }
    }

    /// The tensor's name in a Hugging Face `LlamaForCausalLM` checkpoint.
    pub fn hf_name(self) -> String {
        let layer = |l: usize, s: &str| format!("model.layers.{l}.{s}.weight");
        match self {
            Self::TokenEmbd => "model.embed_tokens.weight".into(),
            Self::Output => "lm_head.weight".into(),
            Self::OutputNorm => "model.norm.weight".into(),
            Self::AttnNorm(l) => layer(l, "input_layernorm"),
            Self::Q(l) => layer(l, "self_attn.q_proj"),
            Self::K(l) => layer(l, "self_attn.k_proj"),
            Self::V(l) => layer(l, "self_attn.v_proj"),
            Self::AttnOutput(l) => layer(l, "self_attn.o_proj"),
            Self::FfnNorm(l) => layer(l, "post_attention_layernorm"),
            Self::Gate(l) => layer(l, "mlp.gate_proj"),
            Self::Up(l) => layer(l, "mlp.up_proj"),
            Self::Down(l) => layer(l, "mlp.down_proj"),
        }
    }
}

/// A source of model weights, checked against the shapes the configuration
/// implies (errors name the tensor, the expected and the actual shape).
pub trait WeightSource {
    /// A `rows x cols` matrix (`y = W x`) in a compact storage type.
    fn matrix(&self, w: Weight, rows: usize, cols: usize) -> Result<QMatrix>;
    /// A vector of `len` values, as f32.
    fn vector(&self, w: Weight, len: usize) -> Result<Vec<f32>>;
}

impl WeightSource for GgufFile {
    fn matrix(&self, w: Weight, rows: usize, cols: usize) -> Result<QMatrix> {
        GgufFile::matrix(self, &w.gguf_name(), rows, cols)
    }

    fn vector(&self, w: Weight, len: usize) -> Result<Vec<f32>> {
        self.tensor_f32(&w.gguf_name(), &[len as u64])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_both_conventions() {
        assert_eq!(Weight::Q(3).gguf_name(), "blk.3.attn_q.weight");
        assert_eq!(
            Weight::Q(3).hf_name(),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            Weight::FfnNorm(0).hf_name(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(Weight::Output.hf_name(), "lm_head.weight");
        assert_eq!(Weight::TokenEmbd.gguf_name(), "token_embd.weight");
    }
}
