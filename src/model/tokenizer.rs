//! `tokenizer.json` through the `tokenizers` crate, set up to behave like transformers'
//! `tokenizer(text)`: default special tokens on, and no padding/truncation baked into the file
//! (MiniLM's tokenizer.json, for one, pads and truncates to 128).

use crate::error::user_error;
use anyhow::Result;
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Ids of the special tokens (BOS, EOS, [CLS], [SEP], padding, ...).
    special: std::collections::HashSet<u32>,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(user_error(format!(
                "{}: missing tokenizer.json",
                path.display()
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| user_error(format!("{}: cannot load tokenizer: {e}", path.display())))?;
        Ok(Self::from_tokenizer(inner))
    }

    /// Wrap a tokenizer built elsewhere (a GGUF file's, from its metadata), with the same set-up
    /// as `from_file`: no padding or truncation, and its special tokens those it marks special.
    pub fn from_tokenizer(mut inner: tokenizers::Tokenizer) -> Self {
        inner.with_padding(None);
        // Clearing truncation cannot fail: only setting a stride too large for it can.
        let _ = inner.with_truncation(None);
        let special = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        Self { inner, special }
    }

    /// True for a special token ([CLS], [SEP], <s>, <|endoftext|>, ...): one the tokenizer adds
    /// around text rather than a piece of it.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// The ids of every special token.
    pub fn special_ids(&self) -> &std::collections::HashSet<u32> {
        &self.special
    }

    /// Token ids with the tokenizer's default special tokens (BOS for Llama, [CLS]/[SEP] for BERT).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| user_error(format!("cannot tokenize text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a continuation: no special tokens (used for targets appended to a prompt).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| user_error(format!("cannot tokenize text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }

    /// One token's text as the model sees it (`Ġthe` shown as ` the`).
    pub fn token_text(&self, id: u32) -> String {
        self.inner
            .decode(&[id], false)
            .unwrap_or_else(|_| format!("<{id}>"))
    }

    /// The tokenizer as tokenizer.json text (what an atlas of a GGUF model keeps).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| anyhow::anyhow!("cannot serialize the tokenizer: {e}"))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, tok: &str) -> Option<u32> {
        self.inner.token_to_id(tok)
    }

    /// The id used to pad batches: the tokenizer's [PAD]/<pad> if it has one, else 0.
    /// Padded positions are masked, so the choice never changes a real token's activations.
    pub fn pad_id(&self) -> u32 {
        ["[PAD]", "<pad>", "<|padding|>", "<|endoftext|>"]
            .iter()
            .find_map(|t| self.inner.token_to_id(t))
            .unwrap_or(0)
    }
}
