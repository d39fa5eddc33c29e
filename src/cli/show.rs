//! `ftri show`: one unit of an atlas — statistics and top examples in context — or one expert of
//! a mixture-of-experts atlas (`L.eE`): its routing and the tokens routed to it.

use crate::atlas::experts::expert_view;
use crate::atlas::view::unit_view;
use crate::atlas::Atlas;
use crate::model::{Tokenizer, UnitId};
use crate::output::print_json;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ShowArgs {
    /// Atlas folder written by `ftri record` or `ftri merge`
    #[arg(long)]
    pub atlas: PathBuf,
    /// L.N (neuron N of blocks.L.mlp.hook_post), HOOK:N for other hook points, or L.eE for
    /// expert E of layer L (mixture-of-experts atlases)
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
    let tok = atlas
        .tokenizer_path()
        .and_then(|p| Tokenizer::from_file(&p).ok());
    if let Ok(UnitId::Expert { .. }) = a.neuron.parse::<UnitId>() {
        return show_expert(&atlas, &a, tok.as_ref());
    }
    let (si, u) = atlas.resolve(&a.neuron)?;
    let r = atlas.unit(si, u)?;
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

/// `--neuron L.eE`: an expert's routing and the tokens routed to it with the highest weight.
fn show_expert(atlas: &Atlas, a: &ShowArgs, tok: Option<&Tokenizer>) -> Result<()> {
    let (xi, e) = atlas.resolve_expert(&a.neuron)?;
    let r = atlas.expert(xi, e)?;
    let v = expert_view(atlas, xi, e, &r, tok);
    if a.json {
        return print_json(&v);
    }
    println!(
        "expert {} (layer {}, expert {} of {}, top-{})",
        v.expert, v.layer, v.index, v.experts, v.top_k
    );
    println!(
        "  routed {} of {} tokens  rate {:.4} (even share {:.4})  weight mean {:.4}  std {:.4}  min {}  max {}",
        v.count,
        v.tokens,
        v.rate,
        v.even_rate,
        v.mean_weight,
        v.std_weight,
        v.min_weight.map_or("–".into(), |x| format!("{x:.4}")),
        v.max_weight.map_or("–".into(), |x| format!("{x:.4}")),
    );
    let n = r.hist.len();
    println!(
        "  weight histogram [0, 1): |{}| {} at 1",
        sparkline(&r.hist[1..n - 1]),
        r.hist[n - 1]
    );
    if let Some(nr) = &v.neurons {
        println!(
            "  neurons: {} ({} units, e.g. {})",
            nr.site, nr.units, nr.first
        );
    }
    println!("  top {} tokens by routing weight:", v.top.len());
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
