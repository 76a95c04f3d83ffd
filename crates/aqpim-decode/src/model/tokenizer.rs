//! The GPT-2-style byte-level BPE tokenizer that GGUF files of the `gpt2`
//! tokenizer model carry in their metadata (`tokenizer.ggml.tokens`,
//! `tokenizer.ggml.merges`, `tokenizer.ggml.token_type`), built on the
//! `tokenizers` crate.
//!
//! The pipeline matches SmolLM2's `tokenizer.json`: no normalizer; a
//! pre-tokenizer sequence of `Digits(individual_digits = true)` (every digit
//! its own piece) and `ByteLevel(add_prefix_space = false, use_regex = true)`
//! (the GPT-2 split regex, then bytes mapped to printable characters); a BPE
//! model without unknown token; a byte-level decoder. Tokens of type
//! CONTROL (3) or USER_DEFINED (4) are special tokens matched verbatim in the
//! input (`<|im_start|>` and the like).
//!
//! [`Tokenizer::from_file`] reads a Hugging Face `tokenizer.json` instead
//! (the checkpoint-directory path, see [`crate::model::hf`]).

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use crate::error::{DecodeError, Result};
use crate::model::gguf::{GgufFile, MetaValue};

/// A byte-level BPE tokenizer with the special-token ids of its model.
#[derive(Clone)]
pub struct Tokenizer {
    inner: HfTokenizer,
    vocab_size: usize,
    /// `tokenizer.ggml.bos_token_id`, if present.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`, if present.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (false when absent).
    pub add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn tok_err(reason: impl Into<String>) -> DecodeError {
    DecodeError::Tokenizer {
        reason: reason.into(),
    }
}

/// Keeps an error of the `tokenizers` library as the source, with what was
/// being done.
fn lib_err(op: impl Into<String>) -> impl FnOnce(tokenizers::Error) -> DecodeError {
    move |source| DecodeError::TokenizerLib {
        op: op.into(),
        source,
    }
}

impl Tokenizer {
    /// Builds the tokenizer from `tokens` (byte-level strings, index = id),
    /// `merges` ("left right" strings, in priority order) and per-token
    /// types (`3`/`4` = special; empty means none).
    pub fn from_parts(tokens: &[String], merges: &[String], token_types: &[i32]) -> Result<Self> {
        let mut vocab = Vocab::default();
        for (i, t) in tokens.iter().enumerate() {
            // A duplicate string keeps its first id, as the Hugging Face loader does.
            vocab.entry(t.clone()).or_insert(i as u32);
        }
        let mut pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| tok_err(format!("merge {i} `{m}` has no space")))?;
            pairs.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, pairs)
            .build()
            .map_err(lib_err("building the BPE model"))?;
        let mut inner = HfTokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        inner.with_decoder(Some(ByteLevel::new(false, true, true)));
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(token_types)
            .filter(|(_, &ty)| ty == 3 || ty == 4)
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        inner.add_special_tokens(&special);
        Ok(Self {
            inner,
            vocab_size: tokens.len(),
            bos: None,
            eos: None,
            add_bos: false,
        })
    }

    /// Builds the tokenizer of a GGUF file (`tokenizer.ggml.model = "gpt2"`).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let model = file.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(tok_err(format!(
                "tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            file.get_array(key)?
                .iter()
                .map(|v| match v {
                    MetaValue::String(s) => Ok(s.clone()),
                    other => Err(DecodeError::MetadataType {
                        key: key.into(),
                        expected: "string array",
                        got: other.type_name(),
                    }),
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i32> = match file.get("tokenizer.ggml.token_type") {
            Some(_) => file
                .get_array("tokenizer.ggml.token_type")?
                .iter()
                .map(|v| v.as_u64().map_or(0, |x| x as i32))
                .collect(),
            None => Vec::new(),
        };
        let mut tok = Self::from_parts(&tokens, &merges, &types)?;
        let id = |key: &str| -> Result<Option<u32>> {
            match file.get(key) {
                None => Ok(None),
                Some(_) => {
                    let v = file.get_u64(key)?;
                    if v as usize >= tokens.len() {
                        return Err(DecodeError::TokenOutOfRange {
                            id: v as u32,
                            vocab: tokens.len(),
                        });
                    }
                    Ok(Some(v as u32))
                }
            }
        };
        tok.bos = id("tokenizer.ggml.bos_token_id")?;
        tok.eos = id("tokenizer.ggml.eos_token_id")?;
        tok.add_bos = matches!(
            file.get("tokenizer.ggml.add_bos_token"),
            Some(MetaValue::Bool(true))
        );
        Ok(tok)
    }

    /// Loads a Hugging Face `tokenizer.json` (any model the `tokenizers`
    /// crate reads: byte-level BPE, SentencePiece-style BPE with byte
    /// fallback, ...). The vocabulary size counts the added tokens; the
    /// special-token ids and `add_bos` are left for the caller to set (from
    /// `config.json` / `tokenizer_config.json`).
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let inner =
            HfTokenizer::from_file(path).map_err(lib_err(format!("reading {}", path.display())))?;
        let vocab_size = inner.get_vocab_size(true);
        Ok(Self {
            inner,
            vocab_size,
            bos: None,
            eos: None,
            add_bos: false,
        })
    }

    /// Whether the tokenizer's post-processor puts `id` first when asked to
    /// add special tokens (how `tokenizer.json` files say "add BOS").
    pub fn post_processor_prepends(&self, id: u32) -> bool {
        self.inner
            .encode("a", true)
            .is_ok_and(|e| e.get_ids().first() == Some(&id))
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Token ids of `text` (special tokens written in the text are matched;
    /// no BOS is added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(lib_err("encoding text"))?
            .get_ids()
            .to_vec())
    }

    /// The text of `ids` (special tokens included).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&i| i as usize >= self.vocab_size) {
            return Err(DecodeError::TokenOutOfRange {
                id,
                vocab: self.vocab_size,
            });
        }
        self.inner
            .decode(ids, false)
            .map_err(lib_err("decoding token ids"))
    }

    /// The vocabulary string of one token (byte-level form).
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary string.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// The byte-to-character map of GPT-2's byte-level BPE: printable bytes
/// map to themselves, the others to `U+0100 + k` in byte order. Index = byte.
pub fn byte_level_alphabet() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 0u32;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                next += 1;
                char::from_u32(255 + next).unwrap_or('?')
            }
        })
        .collect()
}
