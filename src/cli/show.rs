//! `ftri show`: one unit of an atlas — statistics and top examples in context.

use crate::atlas::view::unit_view;
use crate::atlas::Atlas;
use crate::model::Tokenizer;
use crate::output::print_json;
use anyhow::Result;
use clap::Args;
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
    let v = unit_view(&atlas, &r, tok.as_ref());
    if a.json {
        return print_json(&v);
    }
    let h = &atlas.hist_spec(si);
    println!("neuron {} ({} unit {})", v.neuron, r.site, r.unit);
    println!(
        "  tokens {}  mean {:.4}  std {:.4}  min {:.4}  max {:.4}  fire rate {:.4}",
        r.count,
        r.mean,
        r.var.sqrt(),
        r.min,
        r.max,
        v.fire_rate
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
    for (i, t) in v.top.iter().enumerate() {
        println!(
            "  {:>3}. {:>9.4}  doc {} pos {} {}",
            i + 1,
            t.activation,
            t.doc,
            t.pos,
            t.context.replace('\n', "⏎")
        );
    }
    Ok(())
}
