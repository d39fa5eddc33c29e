//! How tokens and contexts read as text, the same in `ftri show`, the demo's report and the
//! browser: the text of each token through the tokenizer, what goes between two tokens, and a
//! context with its example token marked «like this».

use crate::model::Tokenizer;

/// Text of each context token (`None` outside the document); `<id>` without a tokenizer.
pub fn token_texts(tok: Option<&Tokenizer>, ids: &[Option<u32>]) -> Vec<Option<String>> {
    ids.iter()
        .map(|t| {
            t.map(|id| match tok {
                Some(tk) => tk.token_text(id),
                None => format!("<{id}>"),
            })
        })
        .collect()
}

/// What goes between two decoded tokens: nothing for byte-level BPE (tokens carry their spaces),
/// a space for word-level vocabularies, whose decoder joins words with one.
pub fn separator(tok: Option<&Tokenizer>, ids: &[Option<u32>]) -> &'static str {
    let pair: Vec<u32> = ids.iter().flatten().copied().take(2).collect();
    match (tok, pair.as_slice()) {
        (Some(tk), [a, b]) if tk.decode(&[*a, *b]) != tk.token_text(*a) + &tk.token_text(*b) => " ",
        _ => "",
    }
}

/// The context as one string with the example token between « ». WordPiece continuations
/// (`##ing`) join the previous piece, as the tokenizer's decoder would.
pub fn marked(texts: &[Option<String>], at: usize, sep: &str) -> String {
    let mut out = String::new();
    for (i, t) in texts.iter().enumerate() {
        let Some(t) = t else { continue };
        let (joined, piece) = match t.strip_prefix("##") {
            Some(rest) if sep == " " && !out.is_empty() => (true, rest),
            _ => (false, t.as_str()),
        };
        if !out.is_empty() && !joined {
            out.push_str(sep);
        }
        if i == at {
            out.push('«');
            out.push_str(piece);
            out.push('»');
        } else {
            out.push_str(piece);
        }
    }
    out
}
