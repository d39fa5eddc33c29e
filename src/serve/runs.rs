//! What the server asks of the model: one unit's activation per token, the next-token
//! distribution with and without an intervention, and which neurons write a token. Plain
//! functions over `&Model`; the API runs them on the blocking pool (`super::jobs`).

use super::jobs::Cancel;
use crate::atlas::Atlas;
use crate::error::user_error;
use crate::intervene::{Neuron, OpSpec};
use crate::model::{HookSet, Model, Site, SiteKind, UnitId};
use anyhow::Result;
use candle_core::{DType, Tensor, D};
use serde::Serialize;

/// `L.N` (neuron of `blocks.L.mlp.hook_post`) or `HOOK:N`, checked against the model.
pub fn model_unit(model: &Model, spec: &str) -> Result<(Site, usize)> {
    spec.parse::<UnitId>()
        .map_err(|e| user_error(e.to_string()))?
        .on_model(model)
}

/// Activation of `unit` at `site` for every token of each sequence.
pub fn unit_activations(
    model: &Model,
    seqs: &[Vec<u32>],
    site: Site,
    unit: usize,
) -> Result<Vec<Vec<f32>>> {
    if seqs.is_empty() {
        return Ok(vec![]);
    }
    let batch = model.batch(seqs)?;
    let mut hooks = HookSet::capturing([site]);
    model.forward(&batch, &mut hooks)?;
    let x = hooks
        .take(site)
        .ok_or_else(|| anyhow::anyhow!("{site} was not captured"))?;
    // a recorded head (hook_z) is its output norm, as the atlas holds it
    let x = crate::model::attention_hooks::per_token_units(site, x)?;
    let col = x.narrow(D::Minus1, unit, 1)?.squeeze(D::Minus1)?;
    let rows = col.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .into_iter()
        .zip(seqs)
        .map(|(r, s)| r[..s.len()].to_vec())
        .collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenProb {
    pub token: String,
    pub id: u32,
    pub p: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub neuron: String,
    pub op: String,
    pub tokens: Vec<String>,
    /// The neuron's activation at each token, before the intervention.
    pub activations: Vec<f32>,
    pub before: Vec<TokenProb>,
    pub after: Vec<TokenProb>,
    /// KL(before ‖ after) of the next-token distribution, in nats.
    pub kl: f64,
    /// The intervened distribution's probability of each `before` token.
    pub after_of_before: Vec<f64>,
}

fn last_probs(model: &Model, ids: &[u32], hooks: &mut HookSet) -> Result<Vec<f64>> {
    let batch = model.batch(&[ids.to_vec()])?;
    let logits: Tensor = model.forward(&batch, hooks)?.ok_or_else(|| {
        user_error(format!(
            "{} has no LM head: no next-token distribution to compare",
            model.id
        ))
    })?;
    let t = ids.len();
    let last = logits
        .get(0)?
        .get(t - 1)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    let m = last.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = last.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    Ok(e.into_iter().map(|x| x / z).collect())
}

fn top(model: &Model, p: &[f64], k: usize) -> Vec<TokenProb> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.into_iter()
        .take(k)
        .map(|i| TokenProb {
            token: model.tokenizer.token_text(i as u32),
            id: i as u32,
            p: p[i],
        })
        .collect()
}

/// The next-token top 10 of `ids` as is and with `op` applied to neuron `n` at every position.
pub fn compare(
    model: &Model,
    atlas: &Atlas,
    ids: &[u32],
    n: Neuron,
    op: &OpSpec,
    cancel: &Cancel,
) -> Result<Comparison> {
    let ivs = crate::intervene::lesion::build(model, &[n], op, None, Some(atlas))?;
    let site = Site::Block(n.layer, SiteKind::MlpPost);
    let mut base = HookSet::new();
    base.capture(site);
    let before = last_probs(model, ids, &mut base)?;
    let activations = match base.take(site) {
        Some(x) => x
            .get(0)?
            .narrow(D::Minus1, n.index, 1)?
            .squeeze(D::Minus1)?
            .to_dtype(DType::F32)?
            .to_vec1()?,
        None => vec![],
    };
    cancel.check()?;
    let mut hit = HookSet::new();
    for iv in ivs {
        hit.intervene(iv);
    }
    let after = last_probs(model, ids, &mut hit)?;
    let kl = before
        .iter()
        .zip(&after)
        .filter(|(p, _)| **p > 0.0)
        .map(|(p, q)| p * (p.ln() - q.max(1e-300).ln()))
        .sum::<f64>()
        .max(0.0);
    let before_top = top(model, &before, 10);
    Ok(Comparison {
        neuron: n.to_string(),
        op: op.to_string(),
        tokens: ids.iter().map(|&i| model.tokenizer.token_text(i)).collect(),
        activations,
        after_of_before: before_top.iter().map(|t| after[t.id as usize]).collect(),
        before: before_top,
        after: top(model, &after, 10),
        kl,
    })
}

/// The neurons whose direct effect on the logits raises token `id` most, over all layers:
/// (layer, index, W_U[id] · (g ⊙ W_out[:, i])), best first. The same score `describe` ranks
/// tokens by, read along the other axis.
pub fn promoters(model: &Model, ids: &[u32], k: usize) -> Result<Vec<(usize, usize, u32, f32)>> {
    let (dec, _) = crate::analyze::describe::decoder(model)?;
    let rows = dec.dim(0)? as u32;
    let ids: Vec<u32> = ids.iter().copied().filter(|&i| i < rows).collect();
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let sel = dec
        .index_select(&Tensor::new(ids.as_slice(), dec.device())?, 0)?
        .to_dtype(DType::F32)?;
    let mut all = Vec::new();
    for l in 0..model.net.blocks.len() {
        // [d_mlp, d_model]
        let w = crate::analyze::describe::write_matrix(model, l)?.to_dtype(DType::F32)?;
        let s = w.matmul(&sel.t()?)?.to_vec2::<f32>()?; // [d_mlp, n_ids]
        for (i, row) in s.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                if v.is_finite() {
                    all.push((l, i, ids[j], v));
                }
            }
        }
    }
    all.sort_by(|a, b| b.3.total_cmp(&a.3));
    all.truncate(k);
    Ok(all)
}
