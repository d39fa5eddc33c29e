//! The experts of an atlas recorded on a mixture-of-experts model, as people read them: one
//! expert's page (`ftri show --neuron 3.e5`, `/api/neuron/3.e5`) and the per-layer routing
//! summary (`ftri atlas`, `/api/experts`, the browser's expert map).
//!
//! Definitions (docs/atlas.md): an expert's `count` is the tokens routed to it (it was among the
//! token's top-k); `rate = count / tokens` (all recorded tokens), so a layer's rates sum to
//! `top_k`; `mean_weight` is the routing weight averaged over the routed tokens only (what the
//! expert's output is scaled by when it runs); its top examples are the routed tokens with the
//! highest weight.

use super::view::{examples, Example, Histogram};
use super::{Atlas, UnitRecord};
use crate::model::{Site, SiteKind, Tokenizer, UnitId};
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ExpertView {
    /// `L.eE`
    pub expert: String,
    pub layer: usize,
    pub index: usize,
    /// Experts in the layer, and chosen per token.
    pub experts: usize,
    pub top_k: usize,
    /// All tokens recorded.
    pub tokens: u64,
    /// Tokens routed to this expert.
    pub count: u64,
    /// count / tokens.
    pub rate: f64,
    /// top_k / experts: the rate of every expert under perfectly even routing.
    pub even_rate: f64,
    /// Routing weight over the routed tokens.
    pub mean_weight: f64,
    pub std_weight: f64,
    pub min_weight: Option<f32>,
    pub max_weight: Option<f32>,
    /// Histogram of the routing weight over the routed tokens (bins over [0, 1]).
    pub weight_histogram: Histogram,
    /// The tokens routed with the highest weight; `activation` is the routing weight.
    pub top: Vec<Example>,
    /// The expert's recorded neuron hook point (`blocks.L.mlp.experts.E.hook_post`), if any.
    pub neurons: Option<ExpertNeurons>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExpertNeurons {
    pub site: String,
    pub units: usize,
    /// The first neuron's id (`HOOK:0`); the others follow by index.
    pub first: String,
}

fn rate(count: u64, tokens: u64) -> f64 {
    if tokens == 0 {
        0.0
    } else {
        count as f64 / tokens as f64
    }
}

/// The view of expert `e` of routing state `xi`; contexts rendered with `tok`.
pub fn expert_view(
    a: &Atlas,
    xi: usize,
    e: usize,
    r: &UnitRecord,
    tok: Option<&Tokenizer>,
) -> ExpertView {
    let x = &a.manifest.experts[xi];
    let tokens = a.manifest.counts.tokens;
    let post = Site::Block(x.layer, SiteKind::Expert(e, crate::model::ExpertHook::Post));
    let neurons = a.site_index(post).map(|si| ExpertNeurons {
        site: post.to_string(),
        units: a.manifest.sites[si].units,
        first: UnitId::Hook {
            site: post,
            index: 0,
        }
        .to_string(),
    });
    let seen = r.count > 0;
    ExpertView {
        expert: UnitId::Expert {
            layer: x.layer,
            expert: e,
        }
        .to_string(),
        layer: x.layer,
        index: e,
        experts: x.experts,
        top_k: x.top_k,
        tokens,
        count: r.count,
        rate: rate(r.count, tokens),
        even_rate: x.top_k as f64 / x.experts.max(1) as f64,
        mean_weight: r.mean,
        std_weight: r.var.sqrt(),
        min_weight: seen.then_some(r.min),
        max_weight: seen.then_some(r.max),
        weight_histogram: Histogram::of(r),
        top: examples(a, r, tok),
        neurons,
    }
}

/// One expert named in a summary.
#[derive(Debug, Clone, Serialize)]
pub struct ExpertUse {
    pub expert: String,
    pub rate: f64,
}

/// How one mixture-of-experts layer routed the corpus.
#[derive(Debug, Clone, Serialize)]
pub struct ExpertLayerSummary {
    pub layer: usize,
    pub experts: usize,
    pub top_k: usize,
    /// Per expert: tokens routed, rate (count / tokens; they sum to top_k), mean routing weight
    /// over the routed tokens.
    pub counts: Vec<u64>,
    pub rates: Vec<f64>,
    pub mean_weights: Vec<f64>,
    pub most_used: ExpertUse,
    pub least_used: ExpertUse,
    /// Experts no token was routed to.
    pub unused: usize,
    /// Normalized entropy of the routing counts: 1 when every expert gets the same share, 0 when
    /// one expert gets them all.
    pub balance: f64,
    /// The busiest expert's count over the mean count (1 = even).
    pub max_over_mean: f64,
}

/// Every mixture-of-experts layer of the atlas (none for a dense model's atlas).
pub fn experts_summary(a: &Atlas) -> Result<Vec<ExpertLayerSummary>> {
    let tokens = a.manifest.counts.tokens;
    let mut out = Vec::new();
    for (xi, x) in a.manifest.experts.iter().enumerate() {
        let counts = a.expert_counts(xi)?;
        let rates: Vec<f64> = counts.iter().map(|&c| rate(c, tokens)).collect();
        let name = |e: usize| {
            UnitId::Expert {
                layer: x.layer,
                expert: e,
            }
            .to_string()
        };
        // first of the busiest / idlest on ties
        let most = (0..counts.len()).fold(0, |b, e| if counts[e] > counts[b] { e } else { b });
        let least = (0..counts.len()).fold(0, |b, e| if counts[e] < counts[b] { e } else { b });
        let total: u64 = counts.iter().sum();
        let n = counts.len().max(1) as f64;
        let entropy: f64 = counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / total as f64;
                -p * p.ln()
            })
            .sum();
        out.push(ExpertLayerSummary {
            layer: x.layer,
            experts: x.experts,
            top_k: x.top_k,
            most_used: ExpertUse {
                expert: name(most),
                rate: rates.get(most).copied().unwrap_or(0.0),
            },
            least_used: ExpertUse {
                expert: name(least),
                rate: rates.get(least).copied().unwrap_or(0.0),
            },
            unused: counts.iter().filter(|&&c| c == 0).count(),
            balance: if total == 0 {
                0.0
            } else if counts.len() < 2 {
                1.0
            } else {
                entropy / n.ln()
            },
            max_over_mean: if total == 0 {
                0.0
            } else {
                counts.iter().copied().max().unwrap_or(0) as f64 / (total as f64 / n)
            },
            mean_weights: a.expert_mean_weights(xi)?,
            counts,
            rates,
        });
    }
    Ok(out)
}
