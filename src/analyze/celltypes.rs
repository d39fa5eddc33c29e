//! Functional cell types after Most Discriminative Stimuli (Burg et al.): units are grouped by
//! the stimuli that drive them most, and each type is defined by one stimulus. Our stimuli are
//! tokens and the responses come from an atlas: unit u's response to token s is the share of its
//! top examples whose token is s, each weighted by its activation over the unit's largest
//! (r[u][s] in [0, 1]). EM as in the paper, with the discrete stimulus pool replacing gradient
//! ascent: the M-step gives each type the token that most separates its units' mean response
//! from the other units' (the most discriminative stimulus); the E-step moves each unit to the
//! type whose stimulus excites it most; repeat until no unit moves. Types start from the k tokens
//! that are most often a unit's strongest top example.
//!
//! Invariants: every unit with a top example responds to at least one pool token; a unit that
//! responds to no type's stimulus stays unassigned (counted), never forced into a type.

use crate::atlas::{unit_name, Atlas};
use crate::error::user_error;
use crate::model::Tokenizer;
use anyhow::Result;
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize)]
pub struct Stimulus {
    pub token: String,
    pub id: u32,
    /// Mean response of the type's units minus that of the other units.
    pub contrast: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CellType {
    pub id: usize,
    pub size: usize,
    /// The most discriminative stimulus, then the next best.
    pub stimuli: Vec<Stimulus>,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CelltypesResult {
    pub k: usize,
    pub sites: Vec<String>,
    pub units: usize,
    pub unassigned: usize,
    pub iterations: usize,
    pub converged: bool,
    pub types: Vec<CellType>,
}

/// Cluster the units of the atlas's `mlp.hook_post` sites (every site when it has none).
pub fn celltypes(atlas: &Atlas, tok: Option<&Tokenizer>, k: usize) -> Result<CelltypesResult> {
    if k == 0 {
        return Err(user_error("--k must be at least 1"));
    }
    let before = atlas.manifest.settings.top().before;
    let mut sites: Vec<usize> = (0..atlas.manifest.sites.len())
        .filter(|&i| atlas.manifest.sites[i].name.ends_with("mlp.hook_post"))
        .collect();
    if sites.is_empty() {
        sites = (0..atlas.manifest.sites.len()).collect();
    }
    // sparse responses: per unit, (pool index, response)
    let mut pool: Vec<u32> = Vec::new();
    let mut index: HashMap<u32, usize> = HashMap::new();
    let mut names = Vec::new();
    let mut resp: Vec<Vec<(usize, f64)>> = Vec::new();
    let mut strongest: Vec<Option<usize>> = Vec::new();
    for &si in &sites {
        let info = &atlas.manifest.sites[si];
        for u in 0..info.units {
            let rec = atlas.unit(si, u)?;
            let max = rec
                .top
                .iter()
                .map(|t| t.activation)
                .fold(f32::NEG_INFINITY, f32::max);
            let mut r: HashMap<usize, f64> = HashMap::new();
            let mut best: Option<(f32, usize)> = None;
            for t in &rec.top {
                let Some(Some(id)) = t.context.get(before).copied() else {
                    continue;
                };
                let p = *index.entry(id).or_insert_with(|| {
                    pool.push(id);
                    pool.len() - 1
                });
                // activations relative to the unit's largest; a unit whose largest is not
                // positive counts each example once
                let w = if max > 0.0 {
                    (t.activation / max).max(0.0) as f64
                } else {
                    1.0
                };
                *r.entry(p).or_default() += w / rec.top.len() as f64;
                if best.is_none_or(|b| t.activation > b.0) {
                    best = Some((t.activation, p));
                }
            }
            names.push(unit_name(&info.name, u));
            let mut r: Vec<(usize, f64)> = r.into_iter().collect();
            r.sort_by_key(|e| e.0);
            resp.push(r);
            strongest.push(best.map(|b| b.1));
        }
    }
    let n = names.len();
    if pool.is_empty() {
        return Err(user_error(format!(
            "{}: no unit has a top example to define types by",
            atlas.dir.display()
        )));
    }
    let k = k.min(pool.len());
    // start: the k tokens most often a unit's strongest example
    let mut freq = vec![0usize; pool.len()];
    strongest.iter().flatten().for_each(|&p| freq[p] += 1);
    let mut order: Vec<usize> = (0..pool.len()).collect();
    order.sort_by(|&a, &b| freq[b].cmp(&freq[a]).then(a.cmp(&b)));
    let mut stim: Vec<usize> = order[..k].to_vec();
    let response = |u: usize, p: usize| -> f64 {
        resp[u]
            .binary_search_by_key(&p, |e| e.0)
            .map(|i| resp[u][i].1)
            .unwrap_or(0.0)
    };
    let assign = |stim: &[usize]| -> Vec<Option<usize>> {
        (0..n)
            .map(|u| {
                let (mut best, mut bv) = (None, 0.0);
                for (c, &p) in stim.iter().enumerate() {
                    let v = response(u, p);
                    if v > bv {
                        (best, bv) = (Some(c), v);
                    }
                }
                best
            })
            .collect()
    };
    let mut labels = assign(&stim);
    let (mut iterations, mut converged) = (0, false);
    let mut contrasts: Vec<Vec<(usize, f64)>> = vec![Vec::new(); k];
    for it in 0..100 {
        iterations = it + 1;
        // M-step: each type's most discriminative stimulus
        let mut total = vec![0.0; pool.len()];
        for r in &resp {
            r.iter().for_each(|&(p, v)| total[p] += v);
        }
        for c in 0..k {
            let members: Vec<usize> = (0..n).filter(|&u| labels[u] == Some(c)).collect();
            if members.is_empty() {
                continue;
            }
            let mut inside = vec![0.0; pool.len()];
            for &u in &members {
                resp[u].iter().for_each(|&(p, v)| inside[p] += v);
            }
            let (m, rest) = (members.len() as f64, (n - members.len()).max(1) as f64);
            let mut score: Vec<(usize, f64)> = (0..pool.len())
                .map(|p| (p, inside[p] / m - (total[p] - inside[p]) / rest))
                .collect();
            score.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            score.truncate(5);
            stim[c] = score[0].0;
            contrasts[c] = score;
        }
        // E-step
        let new = assign(&stim);
        if new == labels {
            converged = true;
            break;
        }
        labels = new;
    }
    let text = |id: u32| match tok {
        Some(t) => t.token_text(id),
        None => format!("<{id}>"),
    };
    let mut types: Vec<CellType> = (0..k)
        .map(|c| {
            let members: Vec<String> = (0..n)
                .filter(|&u| labels[u] == Some(c))
                .map(|u| names[u].clone())
                .collect();
            CellType {
                id: c,
                size: members.len(),
                stimuli: contrasts[c]
                    .iter()
                    .map(|&(p, contrast)| Stimulus {
                        token: text(pool[p]),
                        id: pool[p],
                        contrast,
                    })
                    .collect(),
                members,
            }
        })
        .filter(|t| t.size > 0)
        .collect();
    types.sort_by(|a, b| b.size.cmp(&a.size).then(a.id.cmp(&b.id)));
    types.iter_mut().enumerate().for_each(|(i, t)| t.id = i);
    Ok(CelltypesResult {
        k: types.len(),
        sites: sites
            .iter()
            .map(|&i| atlas.manifest.sites[i].name.clone())
            .collect(),
        units: n,
        unassigned: labels.iter().filter(|l| l.is_none()).count(),
        iterations,
        converged,
        types,
    })
}
