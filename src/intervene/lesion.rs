//! The lesion job: apply an op to a neuron set and/or switch experts off, score evaluation prompts
//! before and after, score a control set, and repeat the same on random same-layer sets (neurons
//! and experts) as a baseline. `ftri lesion`, the
//! server's intervene endpoint and the bindings call this; they only parse and print.

use super::eval::{score, tokenize, EvalItem, Score};
use super::experts::{random_experts_like, switch_off, ExpertId};
use super::heads::{eval_means, head_interventions, random_heads_like, HeadId};
use super::{adjust_interventions, interventions, random_like, Neuron, OpSpec};
use crate::atlas::Atlas;
use crate::error::user_error;
use crate::model::{Intervention, Model, Site, SiteKind};
use crate::rng::Rng;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// What to lesion and how to measure it.
pub struct LesionRequest {
    pub neurons: Vec<Neuron>,
    /// Experts to switch off (router logit → −∞ before the top-k); `op` does not apply to them.
    pub experts: Vec<ExpertId>,
    /// Attention heads to act on (their `attn.hook_z`): `op` zero or mean (the mean over the
    /// evaluation prompts' tokens, which needs no atlas).
    pub heads: Vec<HeadId>,
    pub op: OpSpec,
    /// Token positions to act on (`None` = all).
    pub positions: Option<Vec<usize>>,
    pub eval: Vec<EvalItem>,
    /// A second evaluation set the lesion should leave alone.
    pub control_eval: Option<Vec<EvalItem>>,
    /// How many random same-layer sets to run the op on.
    pub random_baseline: usize,
    pub seed: u64,
    /// The atlas that `mean` and `adjust` read (see [`open_atlas`]).
    pub atlas: Option<Atlas>,
}

/// Scores of one evaluation set before and after.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub baseline: Score,
    pub intervened: Score,
    pub delta: Score,
}

#[derive(Debug, Clone, Serialize)]
pub struct RandomBaseline {
    pub sets: usize,
    pub mean_delta: Score,
    pub std_delta: Score,
    /// Random sets that moved the mean log-probability at least as far as the chosen set.
    pub as_extreme: usize,
}

/// `ftri lesion --json`.
#[derive(Debug, Clone, Serialize)]
pub struct LesionResult {
    pub neurons: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub experts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub heads: Vec<String>,
    pub op: String,
    pub n_eval: usize,
    pub baseline: Score,
    pub intervened: Score,
    pub delta: Score,
    pub control: Option<Change>,
    pub random_baseline: Option<RandomBaseline>,
}

/// Open the atlas an op needs (`mean`: corpus means; `adjust`: the forget-skill statistics),
/// checking that it was recorded on a model of this shape.
pub fn open_atlas(path: Option<&Path>, model: &Model, op: &OpSpec) -> Result<Option<Atlas>> {
    match (path, op.needs_atlas()) {
        (None, true) => Err(user_error(format!(
            "--op {op} needs --atlas (an atlas of this model from `ftri record`)"
        ))),
        (Some(p), _) => {
            let a = Atlas::open(p)?;
            a.check_model(model, &format!("--op {op} needs its statistics"))?;
            Ok(Some(a))
        }
        (None, false) => Ok(None),
    }
}

/// The interventions that apply `op` to `set`; `mean` reads each layer's neuron means from
/// `atlas`, `adjust` the forget (`atlas`) and retain statistics.
pub fn build(
    model: &Model,
    set: &[Neuron],
    op: &OpSpec,
    positions: Option<&[usize]>,
    atlas: Option<&Atlas>,
) -> Result<Vec<Intervention>> {
    if let OpSpec::Adjust(retain) = op {
        let forget = atlas
            .ok_or_else(|| user_error("--op adjust needs --atlas (the forget-skill atlas)"))?;
        let retain = Atlas::open(retain)?;
        retain.check_model(model, "the retain atlas of --op adjust")?;
        return adjust_interventions(set, forget, &retain, positions, model.cfg.d_mlp);
    }
    let means = |layer: usize| -> Result<Vec<f32>> {
        let a = atlas.ok_or_else(|| user_error("--op mean needs --atlas"))?;
        let site = Site::Block(layer, SiteKind::MlpPost);
        let si = a.site_index(site).ok_or_else(|| {
            user_error(format!(
                "{}: the atlas did not record {site}",
                a.dir.display()
            ))
        })?;
        Ok(a.column_f64(si, crate::atlas::Field::Mean)?
            .into_iter()
            .map(|x| x as f32)
            .collect())
    };
    interventions(set, op, positions, model.cfg.d_mlp, &means)
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = if xs.len() > 1 {
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, v.sqrt())
}

/// The neuron interventions (none for an empty set), the expert switch-offs and the head
/// ablations of one set; `head_means` as [`eval_means`] gives them (for `--op mean` on heads).
fn build_all(
    model: &Model,
    r: &LesionRequest,
    (neurons, experts, heads): (&[Neuron], &[ExpertId], &[HeadId]),
    head_means: &BTreeMap<usize, Vec<f32>>,
) -> Result<Vec<Intervention>> {
    let positions = r.positions.as_deref();
    let mut ivs = match neurons.is_empty() {
        true => vec![],
        false => build(model, neurons, &r.op, positions, r.atlas.as_ref())?,
    };
    ivs.extend(switch_off(experts, positions));
    if !heads.is_empty() {
        ivs.extend(head_interventions(
            heads,
            &r.op,
            positions,
            model.cfg.head_dim,
            head_means,
        )?);
    }
    Ok(ivs)
}

pub fn lesion(model: &Model, r: &LesionRequest) -> Result<LesionResult> {
    let set = &r.neurons;
    if set.is_empty() && r.experts.is_empty() && r.heads.is_empty() {
        return Err(user_error(
            "nothing to lesion: give neurons, heads or experts",
        ));
    }
    let heads_take_op = !r.heads.is_empty() && matches!(r.op, OpSpec::Zero | OpSpec::Mean);
    if set.is_empty() && r.op != OpSpec::Zero && !heads_take_op {
        return Err(user_error(format!(
            "--op {} applies to neurons (heads take zero or mean); experts are switched off",
            r.op
        )));
    }
    let seqs = tokenize(model, &r.eval)?;
    let head_means = match (r.op == OpSpec::Mean, r.heads.is_empty()) {
        (true, false) => {
            let mut layers: Vec<usize> = (0..model.cfg.n_layers).collect();
            layers.retain(|l| r.heads.iter().any(|h| h.layer == *l));
            let ids: Vec<Vec<u32>> = seqs.iter().map(|(s, _)| s.clone()).collect();
            eval_means(model, &ids, &layers)?
        }
        _ => BTreeMap::new(),
    };
    let ivs = build_all(model, r, (set, &r.experts, &r.heads), &head_means)?;
    let base = score(model, &seqs, &[])?;
    let hit = score(model, &seqs, &ivs)?;
    let delta = hit.minus(&base);
    let control = match &r.control_eval {
        Some(c) => {
            let cs = tokenize(model, c)?;
            let (b, h) = (score(model, &cs, &[])?, score(model, &cs, &ivs)?);
            Some(Change {
                baseline: b,
                intervened: h,
                delta: h.minus(&b),
            })
        }
        None => None,
    };
    let random_baseline = if r.random_baseline > 0 {
        let mut rng = Rng::new(r.seed);
        let (mut d_lp, mut d_acc) = (Vec::new(), Vec::new());
        for _ in 0..r.random_baseline {
            let rs = random_like(set, model.cfg.d_mlp, &mut rng);
            let n_experts = model.cfg.moe.as_ref().map_or(0, |m| m.n_experts);
            let re = random_experts_like(&r.experts, n_experts, &mut rng);
            let rh = random_heads_like(&r.heads, model.cfg.n_heads, &mut rng);
            let rivs = build_all(model, r, (&rs, &re, &rh), &head_means)?;
            let d = score(model, &seqs, &rivs)?.minus(&base);
            d_lp.push(d.mean_logprob);
            d_acc.push(d.accuracy);
        }
        let ((mlp, slp), (macc, sacc)) = (mean_std(&d_lp), mean_std(&d_acc));
        Some(RandomBaseline {
            sets: r.random_baseline,
            mean_delta: Score {
                mean_logprob: mlp,
                accuracy: macc,
            },
            std_delta: Score {
                mean_logprob: slp,
                accuracy: sacc,
            },
            as_extreme: d_lp
                .iter()
                .filter(|d| d.abs() >= delta.mean_logprob.abs())
                .count(),
        })
    } else {
        None
    };
    Ok(LesionResult {
        neurons: set.iter().map(|n| n.to_string()).collect(),
        experts: r.experts.iter().map(|e| e.to_string()).collect(),
        heads: r.heads.iter().map(|h| h.to_string()).collect(),
        op: r.op.to_string(),
        n_eval: r.eval.len(),
        baseline: base,
        intervened: hit,
        delta,
        control,
        random_baseline,
    })
}
