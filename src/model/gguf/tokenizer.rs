//! The tokenizer of a GGUF file, built from its `tokenizer.ggml.*` metadata.
//!
//! A GGUF has no `tokenizer.json`: llama.cpp stores the vocabulary, the merges or scores, the token
//! types and the special token ids as metadata. This module rebuilds from them the tokenizer that
//! transformers builds for `AutoTokenizer.from_pretrained(dir, gguf_file=...)` (transformers 5.x,
//! `integrations/gguf/gguf_tokenizer_mapping.py` and `TokenizersBackend.__init__`), component for
//! component, so that the ids are the same:
//!
//! * the builder is chosen by `tokenizer.ggml.model`, except that a SentencePiece (`llama`)
//!   vocabulary of a Gemma (1-3) or Phi-3 architecture has its own builder:
//!   - `gpt2`: byte-level BPE with the file's merges (`GPT2Tokenizer`); a token not written in the
//!     byte alphabet is respelled byte by byte;
//!   - `llama`: BPE with byte fallback, `Metaspace` (prepend to the first piece), merges from the
//!     file or derived from the scores (`LlamaTokenizer`);
//!   - Gemma: BPE with byte fallback and `<unk>`, spaces replaced by `▁` in a normalizer, merges
//!     derived from the order of the tokens in the file (`GemmaTokenizer`);
//!   - Phi-3: the `llama` one with the `▁` prefix and replacement done in a normalizer;
//!   - `gemma4`: the Gemma shape, merges from the file or the scores, and no BOS.
//! * `tokenizer.ggml.pre` selects a split regex for the names transformers knows (Llama 3, Qwen2,
//!   ...); the pre-tokenizer then becomes that split followed by a regex-less `ByteLevel`;
//! * added tokens: the builder class's default specials, then the control tokens (type 3) as
//!   special, the user-defined ones (type 4) as plain added tokens, then BOS/EOS/UNK/PAD as special
//!   — the order transformers adds them in, since a later add overrides an earlier one's flags;
//! * BOS/EOS around the text from `tokenizer.ggml.add_bos_token` / `add_eos_token` (a SentencePiece
//!   vocabulary adds BOS unless the file says otherwise).
//!
//! Invariants: every id this tokenizer gives is an id of the file's vocabulary (where transformers
//! would append a default special token the vocabulary lacks, past the model's embedding, we leave
//! it out); building never reads anything but the metadata; a file without a usable tokenizer is a
//! user error naming the file.

use crate::error::user_error;
use anyhow::Result;
use candle_core::quantized::gguf_file::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// transformers' `GGUF_PRE_TOKENIZER_SPLITS`: the split regex a `tokenizer.ggml.pre` name stands for.
fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// Which tokenizer the file describes (transformers' `select_tokenizer_builder`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Builder {
    /// `gpt2`: byte-level BPE.
    ByteLevel,
    /// `llama`: SentencePiece BPE, `LlamaTokenizer`'s shape.
    Llama,
    /// `llama` vocabulary of a Gemma 1-3 architecture.
    Gemma,
    /// `llama` vocabulary of Phi-3.
    Phi3,
    /// `gemma4`.
    Gemma4,
}

/// Build the tokenizer of GGUF `file` from its metadata (`file` only names it in errors).
pub fn from_metadata(metadata: &HashMap<String, Value>, file: &Path) -> Result<Tokenizer> {
    let err = |msg: String| user_error(format!("{}: {msg}", file.display()));
    let meta = Meta { metadata, file };

    let Some(tokens) = meta.strings("tokenizer.ggml.tokens")? else {
        return Err(err(
            "no tokenizer in the GGUF metadata (tokenizer.ggml.tokens is missing)".into(),
        ));
    };
    let model = meta.string("tokenizer.ggml.model")?.unwrap_or_default();
    let arch = meta.string("general.architecture")?.unwrap_or_default();
    let builder = match (model, arch) {
        ("llama", "gemma" | "gemma2" | "gemma3") => Builder::Gemma,
        ("llama", "phi3") => Builder::Phi3,
        ("gpt2", _) => Builder::ByteLevel,
        ("llama", _) => Builder::Llama,
        ("gemma4", _) => Builder::Gemma4,
        _ => {
            return Err(err(format!(
                "unsupported tokenizer {model:?} (tokenizer.ggml.model); supported: gpt2, llama, gemma4"
            )))
        }
    };
    let token_types = meta.ints("tokenizer.ggml.token_type")?.unwrap_or_default();
    let file_merges = meta.strings("tokenizer.ggml.merges")?;
    let scores = meta.floats("tokenizer.ggml.scores")?;

    // The vocabulary as the model sees it, and its merges.
    let vocab_tokens: Vec<String> = match builder {
        Builder::ByteLevel => byte_level_spelling(&tokens),
        // A token of spaces only is stored with real spaces, but looked up as `▁`s.
        Builder::Gemma => tokens
            .iter()
            .map(|t| {
                if t.contains(' ') && t.chars().all(py_isspace) {
                    "\u{2581}".repeat(t.chars().count())
                } else {
                    t.to_string()
                }
            })
            .collect(),
        _ => tokens.iter().map(|t| t.to_string()).collect(),
    };
    // Later duplicates win, as in the Python dict the vocabulary goes through.
    let vocab: Vocab = vocab_tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = match (&file_merges, builder) {
        (Some(m), _) => m
            .iter()
            .map(|m| match m.split(' ').collect::<Vec<_>>()[..] {
                [a, b] => Ok((a.to_string(), b.to_string())),
                _ => Err(err(format!(
                    "merge {m:?} in tokenizer.ggml.merges is not two tokens"
                ))),
            })
            .collect::<Result<_>>()?,
        (None, Builder::ByteLevel) => {
            return Err(err(
                "byte-level tokenizer without merges (tokenizer.ggml.merges)".into(),
            ))
        }
        // Gemma's scores do not follow its merge order; the order of the tokens in the file does.
        (None, Builder::Gemma) => derive_merges(&vocab_tokens, &vocab, |index| -(index as f64)),
        (None, _) => {
            let Some(scores) = &scores else {
                return Err(err(
                    "SentencePiece tokenizer with neither merges nor scores (tokenizer.ggml.scores)"
                        .into(),
                ));
            };
            if scores.len() != tokens.len() {
                return Err(err(format!(
                    "{} scores for {} tokens",
                    scores.len(),
                    tokens.len()
                )));
            }
            derive_merges(&vocab_tokens, &vocab, |index| scores[index])
        }
    };

    let gemma_like = matches!(builder, Builder::Gemma | Builder::Gemma4);
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges);
    bpe = match builder {
        Builder::ByteLevel => bpe
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix(String::new())
            .fuse_unk(false),
        _ if gemma_like => bpe
            .unk_token("<unk>".into())
            .fuse_unk(true)
            .byte_fallback(true),
        _ => bpe.fuse_unk(true).byte_fallback(true),
    };
    let bpe = bpe
        .build()
        .map_err(|e| err(format!("cannot build the tokenizer: {e}")))?;
    let mut tok = Tokenizer::new(bpe);

    let (normalizer, pre_tokenizer, decoder): (
        Option<NormalizerWrapper>,
        Option<PreTokenizerWrapper>,
        DecoderWrapper,
    ) = match builder {
        Builder::ByteLevel => (
            None,
            Some(ByteLevel::new(false, true, true).into()),
            ByteLevel::default().into(),
        ),
        Builder::Gemma | Builder::Gemma4 => (
            Some(
                Replace::new(" ", "\u{2581}")
                    .map_err(|e| err(e.to_string()))?
                    .into(),
            ),
            Some(
                Split::new(" ", SplitDelimiterBehavior::MergedWithPrevious, false)
                    .map_err(|e| err(e.to_string()))?
                    .into(),
            ),
            sentencepiece_decoder(false)?,
        ),
        Builder::Llama => (
            None,
            Some(Metaspace::new('\u{2581}', PrependScheme::First, false).into()),
            sentencepiece_decoder(true)?,
        ),
        // Phi-3: the prefix space comes from a normalizer, so text starting with a space keeps it.
        Builder::Phi3 => (
            Some(
                NormalizerSequence::new(vec![
                    Prepend::new("\u{2581}".into()).into(),
                    Replace::new(" ", "\u{2581}")
                        .map_err(|e| err(e.to_string()))?
                        .into(),
                ])
                .into(),
            ),
            None,
            sentencepiece_decoder(true)?,
        ),
    };
    tok.with_normalizer(normalizer)
        .map_err(|e| err(e.to_string()))?;
    tok.with_pre_tokenizer(pre_tokenizer);
    tok.with_decoder(Some(decoder));
    if let Some(split) = meta.string("tokenizer.ggml.pre")?.and_then(split_regex) {
        let split = Split::new(
            SplitPattern::Regex(split.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| err(format!("split regex: {e}")))?;
        tok.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])));
    }

    add_tokens(&mut tok, &meta, builder, &tokens, &token_types)?;
    let post = post_processor(&tok, &meta, model, &tokens)?;
    tok.with_post_processor(Some(post));
    Ok(tok)
}

/// The added tokens, in transformers' order (a later add of the same text overrides its flags).
fn add_tokens(
    tok: &mut Tokenizer,
    meta: &Meta,
    builder: Builder,
    tokens: &[&str],
    token_types: &[i64],
) -> Result<()> {
    // Only a token the model's vocabulary has: transformers would append a missing one past the
    // embedding.
    let special = |tok: &Tokenizer, t: &str| {
        tok.token_to_id(t)
            .map(|_| AddedToken::from(t, true).normalized(false))
    };
    // 1. The defaults of the class transformers builds the tokenizer with.
    let defaults: &[&str] = match builder {
        Builder::ByteLevel => &["<|endoftext|>"],
        Builder::Llama | Builder::Phi3 => &["<s>", "</s>", "<unk>"],
        Builder::Gemma | Builder::Gemma4 => &["<bos>", "<eos>", "<unk>", "<pad>", "<mask>"],
    };
    let first: Vec<AddedToken> = defaults.iter().filter_map(|t| special(tok, t)).collect();
    tok.add_special_tokens(first)
        .map_err(|e| meta.err(e.to_string()))?;

    // 2. Control tokens. In a byte-level vocabulary a control token written outside the byte
    // alphabet is a llama.cpp mislabel (it is no token of the model's vocabulary).
    let byte_level = builder == Builder::ByteLevel;
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(token_types)
        .filter(|(t, &ty)| ty == CONTROL && (!byte_level || t.chars().all(in_byte_alphabet)))
        .map(|(t, _)| AddedToken::from(*t, true).normalized(false))
        .collect();
    tok.add_special_tokens(control)
        .map_err(|e| meta.err(e.to_string()))?;

    // 3. User-defined tokens (`<think>`, Gemma's runs of newlines): matched whole, not special.
    // Those the vocabulary spells otherwise (Gemma's runs of spaces) are left to the model.
    let user: Vec<AddedToken> = tokens
        .iter()
        .zip(token_types)
        .filter(|(t, &ty)| ty == USER_DEFINED && tok.token_to_id(t).is_some())
        .map(|(t, _)| AddedToken::from(*t, false).normalized(false))
        .collect();
    tok.add_tokens(user).map_err(|e| meta.err(e.to_string()))?;

    // 4. The named special tokens of the file (and the Gemma class's mask).
    let mut named: Vec<String> = ["bos", "eos", "unknown", "padding"]
        .iter()
        .filter_map(|k| meta.token_of(k, tokens).ok().flatten())
        .map(str::to_string)
        .collect();
    if matches!(
        meta.string("general.architecture")?,
        Some("gemma" | "gemma2" | "gemma3" | "gemma3_text")
    ) {
        named.push("<mask>".into());
    }
    let last: Vec<AddedToken> = named.iter().filter_map(|t| special(tok, t)).collect();
    tok.add_special_tokens(last)
        .map_err(|e| meta.err(e.to_string()))?;
    Ok(())
}

/// BOS/EOS around the text, as transformers' `update_post_processor` writes them.
fn post_processor(
    tok: &Tokenizer,
    meta: &Meta,
    model: &str,
    tokens: &[&str],
) -> Result<TemplateProcessing> {
    // llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise; Gemma 4's
    // chat template writes `<bos>` itself.
    let mut add_bos = meta
        .bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(model == "llama");
    if model == "gemma4" {
        add_bos = false;
    }
    let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let special = |key: &str, add: bool| -> Result<Option<(String, u32)>> {
        if !add {
            return Ok(None);
        }
        // The id is looked up from the token's text, as transformers does.
        Ok(meta
            .token_of(key, tokens)?
            .and_then(|t| tok.token_to_id(t).map(|id| (t.to_string(), id))))
    };
    let bos = special("bos", add_bos)?;
    let eos = special("eos", add_eos)?;
    let piece =
        |t: &str, type_id: u32| serde_json::json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq =
        |s: &str, type_id: u32| serde_json::json!({"Sequence": {"id": s, "type_id": type_id}});
    let mut single = vec![];
    let mut pair = vec![];
    for (type_id, s, out) in [(0, "A", &mut single), (1, "B", &mut pair)] {
        if let Some((t, _)) = &bos {
            out.push(piece(t, type_id));
        }
        out.push(seq(s, type_id));
        if let Some((t, _)) = &eos {
            out.push(piece(t, type_id));
        }
    }
    let pair: Vec<_> = single.iter().cloned().chain(pair).collect();
    let specials: serde_json::Map<String, serde_json::Value> = bos
        .iter()
        .chain(eos.iter())
        .map(|(t, id)| {
            (
                t.clone(),
                serde_json::json!({"id": t, "ids": [id], "tokens": [t]}),
            )
        })
        .collect();
    // Built through serde so that a token with a space or a colon needs no template parsing.
    serde_json::from_value(serde_json::json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": specials,
    }))
    .map_err(|e| meta.err(format!("post-processor: {e}")))
}

/// `Replace ▁→space, ByteFallback, Fuse`, and for `LlamaTokenizer` the strip of the prefix space.
fn sentencepiece_decoder(strip: bool) -> Result<DecoderWrapper> {
    let mut seq: Vec<DecoderWrapper> = vec![
        Replace::new("\u{2581}", " ")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if strip {
        seq.push(Strip::new(' ', 1, 0).into());
    }
    Ok(DecoderSequence::new(seq).into())
}

/// transformers' `generate_merges(vocab, vocab_scores)`: every split of a token into two tokens of
/// the vocabulary is a merge; merges are ordered by the score of the merged token (highest first),
/// then the longer left piece, then the longer right piece; ties keep vocabulary order, and the
/// splits of one token are ordered by the ids of their pieces. `ids` maps a token to its last id
/// (the Python dict keeps the last), `score(i)` is the score of the token whose last id is `i`.
/// Tokens are visited in first-occurrence order, in parallel: Gemma's 262k tokens have ~2M splits.
fn derive_merges(
    tokens: &[String],
    ids: &Vocab,
    score: impl Fn(usize) -> f64 + Sync,
) -> Vec<(String, String)> {
    use rayon::prelude::*;
    // A repeated token is visited once, where it first occurs (vocabularies rarely repeat one).
    let order: Vec<&str> = if ids.len() == tokens.len() {
        tokens.iter().map(String::as_str).collect()
    } else {
        let mut seen = HashSet::with_capacity(tokens.len());
        tokens
            .iter()
            .map(String::as_str)
            .filter(|t| seen.insert(*t))
            .collect()
    };
    // In chunks, each with one output and one scratch buffer: a buffer per token costs more in
    // malloc than the lookups. `collect` keeps the chunks in order.
    let chunks: Vec<Vec<Merge>> = order
        .par_chunks(4096)
        .map(|chunk| {
            let mut out = Vec::with_capacity(chunk.len() * 2);
            let mut local = vec![];
            for t in chunk {
                splits(t, ids, score(ids[*t] as usize), &mut local);
                out.extend(local.drain(..).map(|(_, _, m)| m));
            }
            out
        })
        .collect();
    let mut merges: Vec<Merge> = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
    for c in chunks {
        merges.extend(c);
    }
    // Stable sort, descending: equal keys keep their order, as with Python's `reverse=True`.
    merges.par_sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    merges
        .into_par_iter()
        .map(|m| (m.left.to_string(), m.right.to_string()))
        .collect()
}

struct Merge<'a> {
    left: &'a str,
    right: &'a str,
    score: f64,
    left_chars: u32,
    right_chars: u32,
}

/// The merges that make token `t` (of score `score`) into `local`, ordered by the ids of their
/// pieces (the ids lead each entry).
fn splits<'a>(t: &'a str, ids: &Vocab, score: f64, local: &mut Vec<(u32, u32, Merge<'a>)>) {
    let n = t.chars().count() as u32;
    for (k, (at, _)) in t.char_indices().enumerate().skip(1) {
        let (left, right) = t.split_at(at);
        let Some(&l) = ids.get(left) else { continue };
        let Some(&r) = ids.get(right) else { continue };
        let merge = Merge {
            left,
            right,
            score,
            left_chars: k as u32,
            right_chars: n - k as u32,
        };
        local.push((l, r, merge));
    }
    local.sort_unstable_by_key(|(l, r, _)| (*l, *r));
}

/// GPT-2's byte alphabet (`bytes_to_unicode`): printable Latin-1 bytes stand for themselves, the
/// other 68 bytes for U+0100..=U+0143.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, 33..=126 | 161..=172 | 174..=255);
    if printable(b) {
        b as char
    } else {
        let n = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).expect("U+0100..U+0143 are chars")
    }
}

fn in_byte_alphabet(c: char) -> bool {
    matches!(c as u32, 33..=126 | 161..=172 | 174..=323)
}

/// The vocabulary in the byte alphabet: a token already written in it is kept, any other is
/// respelled byte by byte (llama.cpp writes some tokens, e.g. control ones, as plain text).
fn byte_level_spelling(tokens: &[&str]) -> Vec<String> {
    let table: Vec<char> = (0..=255u8).map(byte_char).collect();
    tokens
        .iter()
        .map(|t| {
            if t.chars().all(in_byte_alphabet) {
                t.to_string()
            } else {
                t.bytes().map(|b| table[b as usize]).collect()
            }
        })
        .collect()
}

/// Python's `str.isspace` (Rust's `char::is_whitespace` lacks the separators U+001C..U+001F).
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Typed access to the metadata; a key of the wrong type is a user error naming the file.
struct Meta<'a> {
    metadata: &'a HashMap<String, Value>,
    file: &'a Path,
}

impl<'a> Meta<'a> {
    fn err(&self, msg: String) -> anyhow::Error {
        user_error(format!("{}: {msg}", self.file.display()))
    }

    fn bad(&self, key: &str, what: &str) -> anyhow::Error {
        self.err(format!("metadata {key} is not {what}"))
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.bad(key, "a string")),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.bad(key, "a bool")),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(self.bad(key, "an array")),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(a) = self.array(key)? else {
            return Ok(None);
        };
        a.iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(self.bad(key, "an array of strings")),
            })
            .collect::<Result<_>>()
            .map(Some)
    }

    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(a) = self.array(key)? else {
            return Ok(None);
        };
        a.iter()
            .map(|v| int(v).ok_or_else(|| self.bad(key, "an array of integers")))
            .collect::<Result<_>>()
            .map(Some)
    }

    fn floats(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let Some(a) = self.array(key)? else {
            return Ok(None);
        };
        a.iter()
            .map(|v| match v {
                Value::F32(x) => Ok(*x as f64),
                Value::F64(x) => Ok(*x),
                _ => Err(self.bad(key, "an array of floats")),
            })
            .collect::<Result<_>>()
            .map(Some)
    }

    /// The text of special token `tokenizer.ggml.{name}_token_id`, if the file names one.
    fn token_of(&self, name: &str, tokens: &[&'a str]) -> Result<Option<&'a str>> {
        let key = format!("tokenizer.ggml.{name}_token_id");
        let Some(v) = self.metadata.get(&key) else {
            return Ok(None);
        };
        let id = int(v).ok_or_else(|| self.bad(&key, "an integer"))?;
        usize::try_from(id)
            .ok()
            .and_then(|i| tokens.get(i).copied())
            .map(Some)
            .ok_or_else(|| self.err(format!("{key} {id} is not a token id")))
    }
}

fn int(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let chars: Vec<char> = (0..=255u8).map(byte_char).collect();
        assert_eq!(chars[b' ' as usize], 'Ġ');
        assert_eq!(chars[b'\n' as usize], 'Ċ');
        assert_eq!(chars[b'a' as usize], 'a');
        let distinct: HashSet<char> = chars.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert!(chars.iter().all(|&c| in_byte_alphabet(c)));
        assert!(!in_byte_alphabet(' ') && !in_byte_alphabet('\u{144}'));
    }

    #[test]
    fn merges_follow_score_then_lengths() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0];
        let ids: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let m = derive_merges(&tokens, &ids, |i| scores[i]);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        // abc splits as ab+c (longer left first) and a+bc
        assert_eq!(m, [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]);
    }
}
