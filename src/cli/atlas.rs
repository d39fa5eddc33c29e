//! `ftri atlas`: per-layer summary of an atlas — fire rates, dead units, most selective units, and
//! for mixture-of-experts atlases each layer's routing (most/least used expert, load balance).

use crate::atlas::summary::{summary, time_lookups};
use crate::atlas::Atlas;
use crate::output::print_json;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct AtlasArgs {
    /// Atlas folder
    #[arg(long)]
    pub atlas: PathBuf,
    /// Most selective units listed per hook point
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    #[arg(long)]
    pub json: bool,
    /// Instead of the summary, time N one-unit lookups at random (what `show` and the UI do)
    #[arg(long)]
    pub lookups: Option<usize>,
}

pub fn run(a: AtlasArgs) -> Result<()> {
    let atlas = Atlas::open(&a.atlas)?;
    if let Some(n) = a.lookups {
        return print_json(&time_lookups(&atlas, n)?);
    }
    let j = summary(&atlas, a.top)?;
    if a.json {
        return print_json(&j);
    }
    println!(
        "{}: model {}, {} tokens from {} documents, top-{}{}",
        a.atlas.display(),
        j.model,
        j.tokens,
        j.docs,
        j.top_k,
        if j.complete { "" } else { " (unfinished)" }
    );
    println!(
        "{:<28} {:>6} {:>10} {:>6}  most selective (max/std)",
        "hook point", "units", "fire rate", "dead"
    );
    for s in &j.sites {
        let sel: Vec<String> = s
            .selective
            .iter()
            .map(|e| format!("{} ({:.1})", e.neuron, e.max_over_std))
            .collect();
        println!(
            "{:<28} {:>6} {:>10.4} {:>6}  {}",
            s.site,
            s.units,
            s.mean_fire_rate,
            s.dead,
            sel.join(", ")
        );
    }
    if !j.experts.is_empty() {
        println!(
            "{:<28} {:>7} {:>5}  {:<18} {:<18} {:>6} {:>7} {:>8}",
            "experts (routing rate)",
            "experts",
            "top-k",
            "most used",
            "least used",
            "unused",
            "balance",
            "max/mean"
        );
        for x in &j.experts {
            println!(
                "{:<28} {:>7} {:>5}  {:<18} {:<18} {:>6} {:>7.3} {:>8.2}",
                format!("blocks.{}.mlp.experts", x.layer),
                x.experts,
                x.top_k,
                format!("{} ({:.3})", x.most_used.expert, x.most_used.rate),
                format!("{} ({:.3})", x.least_used.expert, x.least_used.rate),
                x.unused,
                x.balance,
                x.max_over_mean
            );
        }
    }
    Ok(())
}
