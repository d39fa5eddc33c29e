//! `ftri atlas`: per-layer summary of an atlas — fire rates, dead units, most selective units.

use crate::atlas::{unit_name, Atlas};
use anyhow::Result;
use clap::Args;
use serde_json::json;
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

/// Mean time of one `Atlas::unit` read over `n` units drawn at random from every site.
pub fn time_lookups(atlas: &Atlas, n: usize) -> Result<serde_json::Value> {
    let sites: Vec<usize> = atlas.manifest.sites.iter().map(|s| s.units).collect();
    let total: usize = sites.iter().sum();
    let mut rng = crate::rng::Rng::new(7);
    let picks: Vec<(usize, usize)> = (0..n.max(1))
        .map(|_| {
            let si = rng.below(sites.len());
            (si, rng.below(sites[si].max(1)))
        })
        .collect();
    let start = std::time::Instant::now();
    let mut checksum = 0f64;
    for &(si, u) in &picks {
        checksum += atlas.unit(si, u)?.mean;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(
        json!({"units": total, "lookups": picks.len(), "microseconds_per_lookup": secs * 1e6 / picks.len() as f64, "checksum": checksum}),
    )
}

pub fn summary(a: &Atlas, top: usize) -> Result<serde_json::Value> {
    let mut sites = Vec::new();
    for (si, info) in a.manifest.sites.iter().enumerate() {
        let fire = a.column_f64(si, "fire")?;
        let var = a.column_f64(si, "var")?;
        let max = a.column_f64(si, "max")?;
        let n = info.units;
        let rates = a.fire_rates(si)?;
        let dead = fire.iter().filter(|&&f| f == 0.0).count();
        let selectivity = a.selectivity(si)?;
        let mut sel: Vec<(usize, f64)> = (0..n)
            .filter(|&u| var[u] > 0.0)
            .map(|u| (u, selectivity[u]))
            .collect();
        sel.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        sites.push(json!({
            "site": info.name,
            "units": n,
            "mean_fire_rate": rates.iter().sum::<f64>() / n.max(1) as f64,
            "dead": dead,
            "selective": sel.iter().take(top).map(|&(u, r)| json!({
                "neuron": unit_name(&info.name, u),
                "max": max[u],
                "std": var[u].sqrt(),
                "max_over_std": r,
            })).collect::<Vec<_>>(),
        }));
    }
    let m = &a.manifest;
    Ok(json!({
        "atlas": a.dir.display().to_string(),
        "model": m.model.id,
        "complete": m.complete,
        "tokens": m.tokens,
        "docs": m.docs,
        "top_k": m.settings.top_k,
        "shard": m.shard,
        "sites": sites,
    }))
}

pub fn run(a: AtlasArgs) -> Result<()> {
    let atlas = Atlas::open(&a.atlas)?;
    if let Some(n) = a.lookups {
        let t = time_lookups(&atlas, n)?;
        println!("{}", serde_json::to_string_pretty(&t)?);
        return Ok(());
    }
    let j = summary(&atlas, a.top)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!(
        "{}: model {}, {} tokens from {} documents, top-{}{}",
        a.atlas.display(),
        j["model"].as_str().unwrap_or(""),
        j["tokens"],
        j["docs"],
        j["top_k"],
        if atlas.manifest.complete {
            ""
        } else {
            " (unfinished)"
        }
    );
    println!(
        "{:<28} {:>6} {:>10} {:>6}  most selective (max/std)",
        "hook point", "units", "fire rate", "dead"
    );
    for s in j["sites"].as_array().into_iter().flatten() {
        let sel: Vec<String> = s["selective"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{} ({:.1})",
                    e["neuron"].as_str().unwrap_or(""),
                    e["max_over_std"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        println!(
            "{:<28} {:>6} {:>10.4} {:>6}  {}",
            s["site"].as_str().unwrap_or(""),
            s["units"].as_u64().unwrap_or(0),
            s["mean_fire_rate"].as_f64().unwrap_or(0.0),
            s["dead"].as_u64().unwrap_or(0),
            sel.join(", ")
        );
    }
    Ok(())
}
