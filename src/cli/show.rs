//! `ftri show`: one unit of an atlas — statistics and top examples in context.

use crate::atlas::{unit_name, Atlas, UnitRecord};
use crate::model::Tokenizer;
use anyhow::Result;
use clap::Args;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct ShowArgs {
    /// Atlas folder written by `ftri record` or `ftri merge`
    #[arg(long)]
    pub atlas: PathBuf,
    /// L.N (neuron N of blocks.L.mlp.hook_post) or HOOK:N for other hook points
    #[arg(long)]
    pub neuron: String,
    #[arg(long)]
    pub json: bool,
}

/// Text of each context token (`None` outside the document), through the atlas's tokenizer.
fn token_texts(tok: Option<&Tokenizer>, ids: &[Option<u32>]) -> Vec<Option<String>> {
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
fn separator(tok: Option<&Tokenizer>, ids: &[Option<u32>]) -> &'static str {
    let pair: Vec<u32> = ids.iter().flatten().copied().take(2).collect();
    match (tok, pair.as_slice()) {
        (Some(tk), [a, b]) if tk.decode(&[*a, *b]) != tk.token_text(*a) + &tk.token_text(*b) => " ",
        _ => "",
    }
}

/// The context as one string with the example token between « ». WordPiece continuations
/// (`##ing`) join the previous piece, as the tokenizer's decoder would.
fn marked(texts: &[Option<String>], at: usize, sep: &str) -> String {
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

pub fn unit_json(a: &Atlas, r: &UnitRecord, tok: Option<&Tokenizer>) -> serde_json::Value {
    let before = a.manifest.settings.context_before;
    let hist = &r.hist_spec;
    let n = r.hist.len();
    let top: Vec<_> = r
        .top
        .iter()
        .map(|e| {
            let texts = token_texts(tok, &e.context);
            json!({
                "activation": e.activation,
                "doc": e.doc,
                "pos": e.pos,
                "token": texts[before],
                "token_id": e.context[before],
                "context": marked(&texts, before, separator(tok, &e.context)),
                "context_ids": e.context,
            })
        })
        .collect();
    json!({
        "neuron": unit_name(&r.site, r.unit),
        "site": r.site,
        "unit": r.unit,
        "count": r.count,
        "mean": r.mean,
        "std": r.var.sqrt(),
        "min": r.min,
        "max": r.max,
        "fire_rate": if r.count == 0 { 0.0 } else { r.fire as f64 / r.count as f64 },
        "histogram": {
            "edges": hist.edges(),
            "counts": r.hist[1..n - 1],
            "underflow": r.hist[0],
            "overflow": r.hist[n - 1],
        },
        "top": top,
    })
}

fn sparkline(counts: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                ' '
            } else {
                BARS[((c as f64 / max) * 7.0).round() as usize]
            }
        })
        .collect()
}

pub fn run(a: ShowArgs) -> Result<()> {
    let atlas = Atlas::open(&a.atlas)?;
    let (si, u) = atlas.resolve(&a.neuron)?;
    let r = atlas.unit(si, u)?;
    let tok = atlas
        .tokenizer_path()
        .and_then(|p| Tokenizer::from_file(&p).ok());
    let j = unit_json(&atlas, &r, tok.as_ref());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    let h = &atlas.hist_spec(si);
    println!(
        "neuron {} ({} unit {})",
        j["neuron"].as_str().unwrap_or(""),
        r.site,
        r.unit
    );
    println!(
        "  tokens {}  mean {:.4}  std {:.4}  min {:.4}  max {:.4}  fire rate {:.4}",
        r.count,
        r.mean,
        r.var.sqrt(),
        r.min,
        r.max,
        j["fire_rate"].as_f64().unwrap_or(0.0)
    );
    let n = r.hist.len();
    println!(
        "  histogram [{}, {}): {} below |{}| {} above",
        h.lo,
        h.hi,
        r.hist[0],
        sparkline(&r.hist[1..n - 1]),
        r.hist[n - 1]
    );
    println!("  top {} examples:", r.top.len());
    for (i, t) in j["top"].as_array().into_iter().flatten().enumerate() {
        println!(
            "  {:>3}. {:>9.4}  doc {:<6} pos {:<5} {}",
            i + 1,
            t["activation"].as_f64().unwrap_or(0.0),
            t["doc"],
            t["pos"],
            t["context"].as_str().unwrap_or("").replace('\n', "⏎")
        );
    }
    Ok(())
}
