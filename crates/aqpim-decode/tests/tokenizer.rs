//! The byte-level BPE tokenizer built from GGUF metadata: round trips on
//! varied text, digits split one by one, merges applied, special tokens.

mod common;

use aqpim_decode::gguf::{GgufFile, GgufWriter, MetaValue};
use aqpim_decode::{byte_level_alphabet, Tokenizer};
use common::*;

fn tokenizer() -> Tokenizer {
    let (tokens, merges, types) = vocab();
    Tokenizer::from_parts(&tokens, &merges, &types).unwrap()
}

#[test]
fn round_trips_varied_text() {
    let tok = tokenizer();
    let texts = [
        "",
        "the",
        " and the winning ones",
        "Emma Woodhouse, handsome, clever, and rich,\nwith a comfortable home\n\n",
        "tabs\tand  double  spaces   and trailing   ",
        "Ünïcödé: café, naïve, 日本語, Ελληνικά, emoji 🙂👍🏽",
        "numbers 12345 and 3.14159 and -42, 0x1F",
        "quotes 'single' \"double\" it's we're I'll",
        "control \u{0}\u{1}\u{7f} bytes",
    ];
    for t in texts {
        let ids = tok.encode(t).unwrap();
        assert_eq!(
            tok.decode(&ids).unwrap(),
            t,
            "round trip of {t:?} via {ids:?}"
        );
    }
}

#[test]
fn digits_are_split_one_by_one_and_merges_apply() {
    let tok = tokenizer();
    let id = |s: &str| tok.token_id(s).unwrap();
    // "1 2" is a merge, but digits are split before BPE runs.
    assert_eq!(tok.encode("12").unwrap(), vec![id("1"), id("2")]);
    assert_eq!(tok.encode("2024").unwrap().len(), 4);
    // " the" merges to one token (Ġ is the byte-level space).
    assert_eq!(tok.encode(" the").unwrap(), vec![id("Ġthe")]);
    assert_eq!(tok.encode(" and").unwrap(), vec![id("Ġand")]);
    // "the" at the start has no space: "t" + "he".
    assert_eq!(tok.encode("the").unwrap(), vec![id("t"), id("he")]);
}

#[test]
fn special_tokens_are_matched_whole() {
    let tok = tokenizer();
    let ids = tok.encode("<|im_start|>user").unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(tok.decode(&ids).unwrap(), "<|im_start|>user");
    assert!(tok.decode(&[10_000]).is_err());
}

#[test]
fn byte_level_alphabet_is_a_bijection() {
    let a = byte_level_alphabet();
    assert_eq!(a.len(), 256);
    let mut sorted = a.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 256);
    assert_eq!(a[b' ' as usize], 'Ġ');
    assert_eq!(a[b'\n' as usize], 'Ċ');
    assert_eq!(a[b'A' as usize], 'A');
}

#[test]
fn from_gguf_reads_special_ids_and_rejects_other_models() {
    let file = GgufFile::parse(tiny_model(1, true)).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    assert_eq!((tok.bos, tok.eos, tok.add_bos), (Some(1), Some(0), false));
    assert_eq!(tok.vocab_size(), vocab().0.len());
    let mut w = GgufWriter::new();
    w.meta("tokenizer.ggml.model", MetaValue::String("llama".into()));
    let err = Tokenizer::from_gguf(&GgufFile::parse(w.to_bytes()).unwrap()).unwrap_err();
    assert!(err.to_string().contains("not supported"), "{err}");
    let mut w = GgufWriter::new();
    w.meta("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
    assert!(Tokenizer::from_gguf(&GgufFile::parse(w.to_bytes()).unwrap()).is_err());
}
