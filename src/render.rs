//! How tokens and contexts read as text, the same in `ftri show`, the demo's report and the
//! browser: the text of each token through the tokenizer, what goes between two tokens, and a
//! context with its example token marked «like this»; and the text tables of results that more
//! than a terminal may show (a neuron's description).

use crate::analyze::describe::{NeuronDescription, TokenScore};
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

fn shown(t: Option<&TokenScore>) -> (String, String) {
    match t {
        // Debug quoting makes leading spaces and newlines in token text visible; a lone byte of a
        // multi-byte character decodes to U+FFFD, so its id tells such tokens apart.
        Some(t) if t.token.contains('\u{fffd}') => (
            format!("{:?} #{}", t.token, t.id),
            format!("{:.4}", t.score),
        ),
        Some(t) => (format!("{:?}", t.token), format!("{:.4}", t.score)),
        None => (String::new(), String::new()),
    }
}

/// `ftri describe`'s table: promoted, suppressed and read tokens side by side.
pub fn description_table(desc: &NeuronDescription) -> String {
    let mut out = String::new();
    out += &format!(
        "neuron {}  (writes decoded with the {})\n",
        desc.neuron, desc.unembed
    );
    out += &format!("reads: {}\n", desc.reads_basis);
    let mut cols: Vec<(&str, &[TokenScore])> = vec![
        ("promotes", &desc.promotes),
        ("suppresses", &desc.suppresses),
        ("reads", &desc.reads),
    ];
    if let Some(up) = &desc.reads_up {
        cols.push(("reads (up)", up));
    }
    let rows = cols.iter().map(|c| c.1.len()).max().unwrap_or(0);
    let cells: Vec<Vec<(String, String)>> = cols
        .iter()
        .map(|(_, v)| (0..rows).map(|r| shown(v.get(r))).collect())
        .collect();
    let widths: Vec<usize> = cells
        .iter()
        .zip(&cols)
        .map(|(c, (h, _))| {
            c.iter()
                .map(|x| x.0.chars().count())
                .max()
                .unwrap_or(0)
                .max(h.len())
        })
        .collect();
    let mut line = format!("{:>4}", "#");
    for ((h, _), w) in cols.iter().zip(&widths) {
        line += &format!("  {h:<w$} {:>9}", "score");
    }
    out += line.trim_end();
    out.push('\n');
    for r in 0..rows {
        let mut line = format!("{:>4}", r + 1);
        for (c, w) in cells.iter().zip(&widths) {
            let pad = w.saturating_sub(c[r].0.chars().count());
            line += &format!("  {}{} {:>9}", c[r].0, " ".repeat(pad), c[r].1);
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}
