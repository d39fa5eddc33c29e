//! Neuron search over the atlas: by the tokens a unit fires on (its top examples' activating
//! tokens), by the tokens it promotes (with a model), by layer, sorted by a statistic.
//!
//! Query grammar (space-separated terms, any order):
//! - `layer:3` or `layer:2-5` — only these layers (MLP neurons `L.N`);
//! - `sort:STAT` — `max`, `fire_rate`, `selectivity`, `mean` or `std` (descending);
//! - any other word — a token: matches a top example whose activating token, trimmed and
//!   lowercased, equals the word or contains it (words of 3+ characters, half weight). Each match
//!   scores its activation over the layer's typical peak (the median of its units' max), so a unit
//!   that fires hard on the word outranks one whose top examples hit it by weak, frequent chance;
//!   with a model, the 20 neurons whose output weights raise the token's logit most also match
//!   (up to 2 points, scaled by the weight).

use super::{AppState, SiteCols, STATS};
use crate::atlas::unit_name;
use crate::error::user_error;
use anyhow::Result;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// (site index, unit, (activating token id, activation) of each top example, best first)
pub type UnitTokens = (usize, usize, Vec<(u32, f32)>);

/// Per query word, the neurons that promote it: (site index, unit, token text, logit weight).
pub type Promoted = (String, Vec<(usize, usize, String, f32)>);

/// The activating token of every top example of every unit.
pub struct Index {
    /// (site index, unit, (activating token id, activation) best first)
    pub units: Vec<UnitTokens>,
    /// Normalized text of every token id that occurs above.
    pub text: HashMap<u32, String>,
}

pub fn normalize(t: &str) -> String {
    let t = t.trim();
    let t = t.strip_prefix("##").unwrap_or(t);
    t.trim_start_matches(['Ġ', '▁']).to_lowercase()
}

pub fn build_index(s: &AppState) -> Result<Index> {
    let before = s.atlas.manifest.settings.context_before;
    let mut units = Vec::new();
    let mut text = HashMap::new();
    for (si, c) in s.cols.iter().enumerate() {
        for u in 0..c.units {
            let r = s.atlas.unit(si, u)?;
            let ids: Vec<(u32, f32)> = r
                .top
                .iter()
                .filter_map(|e| Some((e.context.get(before).copied().flatten()?, e.activation)))
                .collect();
            for &(id, _) in &ids {
                text.entry(id).or_insert_with(|| {
                    normalize(&match &s.tok {
                        Some(t) => t.token_text(id),
                        None => format!("<{id}>"),
                    })
                });
            }
            units.push((si, u, ids));
        }
    }
    Ok(Index { units, text })
}

#[derive(Debug, Default, Serialize)]
pub struct Query {
    pub words: Vec<String>,
    pub layers: Option<(usize, usize)>,
    pub sort: Option<String>,
}

pub fn parse(q: &str) -> Result<Query> {
    let mut out = Query::default();
    for term in q.split_whitespace() {
        if let Some(v) = term.strip_prefix("layer:") {
            let bad = || user_error(format!("`{term}`: expected layer:N or layer:A-B"));
            let (a, b) = match v.split_once('-') {
                Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
                None => {
                    let x: usize = v.parse().map_err(|_| bad())?;
                    (x, x)
                }
            };
            if a > b {
                return Err(bad());
            }
            out.layers = Some((a, b));
        } else if let Some(v) = term.strip_prefix("sort:") {
            if !STATS.contains(&v) {
                return Err(user_error(format!(
                    "`{term}`: unknown statistic (one of {})",
                    STATS.join(", ")
                )));
            }
            out.sort = Some(v.to_string());
        } else {
            out.words.push(normalize(term));
        }
    }
    out.words.retain(|w| !w.is_empty());
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct Match {
    pub word: String,
    /// `activates` (a top example's activating token) or `promotes` (output weights).
    pub kind: &'static str,
    /// How many top examples fire on the word (activates), or the logit weight (promotes).
    pub value: f64,
    pub token: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub neuron: String,
    pub site: String,
    pub unit: usize,
    pub layer: Option<usize>,
    pub score: f64,
    pub max: f64,
    pub fire_rate: f64,
    pub mean: f64,
    pub std: f64,
    pub selectivity: f64,
    pub matches: Vec<Match>,
}

fn hit(c: &SiteCols, u: usize) -> Hit {
    Hit {
        neuron: unit_name(&c.name, u),
        site: c.name.clone(),
        unit: u,
        layer: c.layer,
        score: 0.0,
        max: c.max[u],
        fire_rate: c.fire_rate[u],
        mean: c.mean[u],
        std: c.std[u],
        selectivity: c.selectivity[u],
        matches: vec![],
    }
}

/// Token ids of the model's vocabulary whose normalized text equals `word`.
pub fn vocab_ids(tok: &crate::model::Tokenizer, word: &str) -> Vec<u32> {
    let mut ids: Vec<u32> = [word.to_string(), format!(" {word}"), format!("Ġ{word}")]
        .iter()
        .flat_map(|w| {
            let cap = w
                .char_indices()
                .find(|(_, c)| c.is_alphabetic())
                .map(|(i, c)| format!("{}{}{}", &w[..i], c.to_uppercase(), &w[i + c.len_utf8()..]));
            [Some(w.clone()), cap]
        })
        .flatten()
        .flat_map(|w| {
            let mut v: Vec<u32> = tok.token_to_id(&w).into_iter().collect();
            if let Ok(e) = tok.encode_plain(&w) {
                if e.len() == 1 {
                    v.push(e[0]);
                }
            }
            v
        })
        .filter(|&id| normalize(&tok.token_text(id)) == word)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Run a parsed query. `promoted` holds, per word, (site index, unit, token, weight) of the
/// neurons that promote it (empty without a model).
pub fn run(s: &AppState, idx: &Index, q: &Query, promoted: &[Promoted], limit: usize) -> Vec<Hit> {
    let in_layers = |c: &SiteCols| match q.layers {
        None => true,
        Some((a, b)) => c.layer.is_some_and(|l| l >= a && l <= b),
    };
    let mut hits: Vec<Hit> = Vec::new();
    if q.words.is_empty() {
        for c in s.cols.iter().filter(|c| in_layers(c)) {
            hits.extend((0..c.units).map(|u| hit(c, u)));
        }
    } else {
        // which token ids each word matches, exactly or in part
        let mut exact: Vec<HashSet<u32>> = vec![HashSet::new(); q.words.len()];
        let mut part: Vec<HashSet<u32>> = vec![HashSet::new(); q.words.len()];
        for (&id, t) in &idx.text {
            for (w, word) in q.words.iter().enumerate() {
                if t == word {
                    exact[w].insert(id);
                } else if word.chars().count() >= 3 && t.contains(word.as_str()) {
                    part[w].insert(id);
                }
            }
        }
        let mut by_unit: HashMap<(usize, usize), Hit> = HashMap::new();
        for (si, u, ids) in &idx.units {
            let c = &s.cols[*si];
            if !in_layers(c) {
                continue;
            }
            for (w, word) in q.words.iter().enumerate() {
                let (mut n, mut score, mut shown) = (0, 0.0, None);
                for (id, act) in ids {
                    let weight = if exact[w].contains(id) {
                        1.0
                    } else if part[w].contains(id) {
                        0.5
                    } else {
                        continue;
                    };
                    n += 1;
                    score += weight * (*act as f64 / c.typical_max).max(0.0);
                    shown.get_or_insert(*id);
                }
                if n == 0 {
                    continue;
                }
                let h = by_unit.entry((*si, *u)).or_insert_with(|| hit(c, *u));
                h.score += score;
                h.matches.push(Match {
                    word: word.clone(),
                    kind: "activates",
                    value: n as f64,
                    token: shown
                        .and_then(|i| idx.text.get(&i))
                        .cloned()
                        .unwrap_or_default(),
                });
            }
        }
        for (word, list) in promoted {
            let best = list.iter().map(|x| x.3).fold(0f32, f32::max);
            for (si, u, token, v) in list {
                let c = &s.cols[*si];
                if !in_layers(c) || *u >= c.units {
                    continue;
                }
                let h = by_unit.entry((*si, *u)).or_insert_with(|| hit(c, *u));
                if best > 0.0 {
                    h.score += 2.0 * (*v / best).max(0.0) as f64;
                }
                h.matches.push(Match {
                    word: word.clone(),
                    kind: "promotes",
                    value: *v as f64,
                    token: token.clone(),
                });
            }
        }
        hits = by_unit.into_values().collect();
    }
    let key = |h: &Hit| -> f64 {
        match q.sort.as_deref() {
            Some("fire_rate") => h.fire_rate,
            Some("selectivity") => h.selectivity,
            Some("mean") => h.mean,
            Some("std") => h.std,
            Some(_) => h.max,
            None if q.words.is_empty() => h.max,
            None => h.score,
        }
    };
    hits.sort_by(|a, b| {
        key(b)
            .total_cmp(&key(a))
            .then(b.max.total_cmp(&a.max))
            .then(a.site.cmp(&b.site))
            .then(a.unit.cmp(&b.unit))
    });
    hits.truncate(limit);
    hits
}
