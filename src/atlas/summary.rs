//! Per-site summary of an atlas: fire rates, dead units, the most selective units, and the
//! experts' routing per mixture-of-experts layer. `ftri atlas`
//! prints it and the server's `/api/layers` serializes it. Also the lookup timing behind
//! `ftri atlas --lookups`.

use super::{unit_name, Atlas, Shard};
use crate::rng::Rng;
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Selective {
    pub neuron: String,
    pub max: f64,
    pub std: f64,
    pub max_over_std: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SiteSummary {
    pub site: String,
    pub units: usize,
    pub mean_fire_rate: f64,
    /// Units that never fired (activation > 0) on the corpus.
    pub dead: usize,
    /// The `top` units with the largest max / std.
    pub selective: Vec<Selective>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AtlasSummary {
    pub atlas: String,
    pub model: String,
    pub complete: bool,
    pub tokens: u64,
    pub docs: u64,
    pub top_k: usize,
    pub shard: Option<Shard>,
    pub sites: Vec<SiteSummary>,
    /// Per mixture-of-experts layer: routing rates, most and least used expert, load balance.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub experts: Vec<super::experts::ExpertLayerSummary>,
}

pub fn summary(a: &Atlas, top: usize) -> Result<AtlasSummary> {
    let mut sites = Vec::new();
    for (si, info) in a.manifest.sites.iter().enumerate() {
        let fire = a.column_f64(si, crate::atlas::Field::Fire)?;
        let var = a.column_f64(si, crate::atlas::Field::Var)?;
        let max = a.column_f64(si, crate::atlas::Field::Max)?;
        let n = info.units;
        let rates = a.fire_rates(si)?;
        let selectivity = a.selectivity(si)?;
        let mut sel: Vec<(usize, f64)> = (0..n)
            .filter(|&u| var[u] > 0.0)
            .map(|u| (u, selectivity[u]))
            .collect();
        sel.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        sites.push(SiteSummary {
            site: info.name.clone(),
            units: n,
            mean_fire_rate: rates.iter().sum::<f64>() / n.max(1) as f64,
            dead: fire.iter().filter(|&&f| f == 0.0).count(),
            selective: sel
                .iter()
                .take(top)
                .map(|&(u, r)| Selective {
                    neuron: unit_name(&info.name, u),
                    max: max[u],
                    std: var[u].sqrt(),
                    max_over_std: r,
                })
                .collect(),
        });
    }
    let m = &a.manifest;
    Ok(AtlasSummary {
        atlas: a.dir.display().to_string(),
        model: m.model.id.clone(),
        complete: m.complete,
        tokens: m.counts.tokens,
        docs: m.counts.docs,
        top_k: m.settings.top_k,
        shard: m.shard.clone(),
        sites,
        experts: super::experts::experts_summary(a)?,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct LookupTiming {
    pub units: usize,
    pub lookups: usize,
    pub microseconds_per_lookup: f64,
    /// Sum of the units' means read, so the reads cannot be optimized away.
    pub checksum: f64,
}

/// Mean time of one `Atlas::unit` read over `n` units drawn at random from every site.
pub fn time_lookups(atlas: &Atlas, n: usize) -> Result<LookupTiming> {
    let sites: Vec<usize> = atlas.manifest.sites.iter().map(|s| s.units).collect();
    let mut rng = Rng::new(7);
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
    Ok(LookupTiming {
        units: sites.iter().sum(),
        lookups: picks.len(),
        microseconds_per_lookup: secs * 1e6 / picks.len() as f64,
        checksum,
    })
}
