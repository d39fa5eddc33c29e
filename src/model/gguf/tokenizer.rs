//! The tokenizer of a GGUF file, built from its `tokenizer.ggml.*` metadata.
//!
//! TEMPORARY PLACEHOLDER (wt-gguf branch only; drop this commit when the real GGUF tokenizer from
//! wt-gtok is merged): a word-level tokenizer over `tokenizer.ggml.tokens`, just enough for the
//! weights/config work to load a GGUF end to end. It does not tokenize like transformers.

use crate::error::user_error;
use anyhow::Result;
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;
use std::path::Path;

pub fn from_metadata(
    metadata: &HashMap<String, Value>,
    file: &Path,
) -> Result<tokenizers::Tokenizer> {
    let tokens = match metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(t)) => t,
        _ => {
            return Err(user_error(format!(
                "{}: missing tokenizer metadata `tokenizer.ggml.tokens`",
                file.display()
            )))
        }
    };
    let mut vocab = HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        if let Value::String(s) = t {
            vocab.entry(s.clone()).or_insert(i as u32);
        }
    }
    let unk = tokens
        .iter()
        .find_map(|t| match t {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let model = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token(unk)
        .build()
        .map_err(|e| user_error(format!("{}: {e}", file.display())))?;
    let mut t = tokenizers::Tokenizer::new(model);
    t.with_pre_tokenizer(Some(
        tokenizers::pre_tokenizers::whitespace::WhitespaceSplit,
    ));
    Ok(t)
}
