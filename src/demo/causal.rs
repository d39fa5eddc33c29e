//! The demo's causal steps on a model with an LM head: lesion a concept's neurons on the
//! concept's evaluation set against random same-layer sets (`intervene::lesion`), and generate
//! with and without the concept's neurons clamped at their level on the concept's stimuli.

use super::data::CONTROL_EVAL;
use crate::analyze::localize::Finding;
use crate::atlas::Atlas;
use crate::intervene::eval::parse_eval;
use crate::intervene::lesion::{lesion, LesionRequest};
use crate::intervene::{Neuron, OpSpec};
use crate::model::generate::{generate, GenerateOptions};
use crate::model::{Intervention, Model, Op, Site, SiteKind};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// A concept's neurons mean-ablated on its evaluation set.
#[derive(Debug, Clone, Serialize)]
pub struct LesionReport {
    pub neurons: Vec<String>,
    /// `mean`: each neuron held at its corpus mean (from the demo's atlas).
    pub op: String,
    pub n_eval: usize,
    /// Mean log-probability of the targets (nats, summed over a target's tokens), intact.
    pub baseline: f64,
    /// Its change with the neurons lesioned.
    pub delta: f64,
    /// The change on plain English continuations (`data/eval/english.jsonl`).
    pub control_delta: f64,
    pub random_sets: usize,
    pub random_mean: f64,
    pub random_sd: f64,
    /// Random sets whose change was at least as large in magnitude.
    pub as_extreme: usize,
    /// The lesion lowered the targets' log-probability further than every random set did.
    pub beyond_every_random: bool,
}

/// Generation with and without a concept's neurons clamped.
#[derive(Debug, Clone, Serialize)]
pub struct SteeringReport {
    pub concept: String,
    /// The neurons clamped, at every position, each at control mean + `gain` × (target mean −
    /// control mean): pushed `gain` times as far from its level on the control stimuli as the
    /// concept pushes it.
    pub neurons: Vec<String>,
    pub gain: f64,
    pub prompt: String,
    /// Greedy continuations of at most this many tokens.
    pub max_new_tokens: usize,
    pub plain: String,
    pub clamped: String,
}

/// Mean-ablate `findings`' neurons (the atlas at `atlas` holds the corpus means) and score the
/// concept's evaluation set `eval` against `random_sets` random same-layer sets.
pub fn lesion_concept(
    m: &Model,
    atlas: &Path,
    findings: &[Finding],
    eval: &str,
    random_sets: usize,
) -> Result<LesionReport> {
    let neurons: Vec<Neuron> = findings
        .iter()
        .map(|f| Neuron {
            layer: f.layer,
            index: f.index,
        })
        .collect();
    let r = lesion(
        m,
        &LesionRequest {
            neurons,
            experts: vec![],
            heads: vec![],
            op: OpSpec::Mean,
            positions: None,
            eval: parse_eval(eval, "the demo's evaluation set")?,
            control_eval: Some(parse_eval(CONTROL_EVAL, "data/eval/english.jsonl")?),
            random_baseline: random_sets,
            seed: 0,
            atlas: Some(Atlas::open(atlas)?),
        },
    )?;
    let rb = r
        .random_baseline
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the lesion ran no random sets"))?;
    // "beyond": lower than the lowest random change (as_extreme counts magnitudes either way)
    let beyond = r.delta.mean_logprob < 0.0 && rb.as_extreme == 0;
    Ok(LesionReport {
        neurons: r.neurons.clone(),
        op: r.op.clone(),
        n_eval: r.n_eval,
        baseline: r.baseline.mean_logprob,
        delta: r.delta.mean_logprob,
        control_delta: r.control.as_ref().map_or(0.0, |c| c.delta.mean_logprob),
        random_sets: rb.sets,
        random_mean: rb.mean_delta.mean_logprob,
        random_sd: rb.std_delta.mean_logprob,
        as_extreme: rb.as_extreme,
        beyond_every_random: beyond,
    })
}

/// Greedy generation from `prompt`, plain and with `findings`' neurons clamped `gain` times as
/// far from their control level as the concept moves them (see `SteeringReport::neurons`).
pub fn steer(
    m: &Model,
    concept: &str,
    findings: &[Finding],
    gain: f64,
    prompt: &str,
    max_new_tokens: usize,
) -> Result<SteeringReport> {
    let mut by_layer: BTreeMap<usize, Vec<&Finding>> = BTreeMap::new();
    for f in findings {
        by_layer.entry(f.layer).or_default().push(f);
    }
    let clamp: Vec<Intervention> = by_layer
        .into_iter()
        .map(|(layer, fs)| {
            let mut values = vec![0f32; m.cfg.d_mlp];
            for f in &fs {
                values[f.index] = (f.control_mean + gain * (f.target_mean - f.control_mean)) as f32;
            }
            Intervention {
                site: Site::Block(layer, SiteKind::MlpPost),
                units: Some(fs.iter().map(|f| f.index).collect()),
                positions: None,
                op: Op::SetPerUnit(values),
            }
        })
        .collect();
    let ids = m.encode(prompt)?;
    let opts = GenerateOptions {
        max_new_tokens,
        temperature: 0.0,
        seed: 0,
    };
    let text = |ivs: &[Intervention]| -> Result<String> {
        Ok(m.tokenizer.decode(&generate(m, &ids, ivs, &opts)?))
    };
    Ok(SteeringReport {
        concept: concept.to_string(),
        neurons: findings.iter().map(|f| f.neuron.clone()).collect(),
        gain,
        prompt: prompt.to_string(),
        max_new_tokens,
        plain: text(&[])?,
        clamped: text(&clamp)?,
    })
}
