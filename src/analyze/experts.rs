//! Expert imaging (the fTRI of MoTE): which experts of a mixture-of-experts model a kind of
//! input is routed to. Each stimulus is reduced, per layer and expert, to one number — its
//! routing rate (the fraction of its tokens whose top-k includes the expert) or its mean routing
//! weight (the weight the router gives the expert, 0 at tokens not routed to it, averaged over the
//! stimulus's tokens) — and target and control sets are compared per expert exactly as the
//! localizer compares neurons: Welch's t, Cohen's d, AUROC, two-sided p, Benjamini–Hochberg q
//! over every expert tested.
//!
//! Invariants:
//! - Routing is read at the hook points `blocks.L.mlp.hook_expert_indices` / `hook_expert_weights`
//!   of the normal forward pass, batched like `localize`; padding never counts, and special
//!   tokens (BOS, …) are left out as the localizer leaves them out — their routing is the same for
//!   every stimulus and would only dilute a rate by the stimulus's length.
//! - Rates of one stimulus in one layer sum to top-k; weights sum to 1 where the architecture
//!   renormalizes (Mixtral always, others iff `norm_topk_prob`).
//! - The list holds every expert tested, largest t first (target-preferring experts first, those
//!   preferring the control last); `significant` counts target-preferring experts at q ≤ fdr.
//! - Layers must be mixture-of-experts layers; a dense model or a dense layer is a user error.

use super::localize::{contrast, parse_layers};
use super::responses::{captured_rows_until, Stimulus};
use super::stats::order;
use crate::error::user_error;
use crate::model::{Model, Site, SiteKind};
use anyhow::Result;
use candle_core::{DType, Tensor};
use serde::Serialize;

/// What a stimulus's routing is reduced to, per expert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Fraction of the stimulus's tokens routed to the expert (top-k includes it).
    Rate,
    /// Mean routing weight of the expert over the stimulus's tokens (0 where not routed).
    Weight,
}

impl Measure {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "rate" => Ok(Measure::Rate),
            "weight" => Ok(Measure::Weight),
            o => Err(user_error(format!(
                "unknown --measure `{o}` (rate, weight)"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Measure::Rate => "rate",
            Measure::Weight => "weight",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExpertsRequest {
    pub target: Vec<Stimulus>,
    pub control: Vec<Stimulus>,
    pub measure: Measure,
    /// Layers to image (`None`: every mixture-of-experts layer).
    pub layers: Option<String>,
    /// False discovery rate for the Benjamini–Hochberg count.
    pub fdr: f64,
    /// How many experts to list.
    pub top: usize,
    /// Stimuli per forward pass.
    pub batch: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExpertFinding {
    /// `L.eE`.
    pub expert: String,
    pub layer: usize,
    pub index: usize,
    /// Welch's t, target minus control.
    pub score: f64,
    /// Cohen's d.
    pub effect_size: f64,
    pub auroc: f64,
    pub p: f64,
    pub q: f64,
    pub target_mean: f64,
    pub control_mean: f64,
}

/// `ftri experts --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ExpertImaging {
    pub measure: &'static str,
    pub n_target: usize,
    pub n_control: usize,
    pub experts_tested: usize,
    /// Target-preferring experts at q ≤ fdr.
    pub significant: usize,
    pub experts: Vec<ExpertFinding>,
}

/// The mixture-of-experts layers among `spec` (all of them when `None`), and the expert count.
fn moe_layers(model: &Model, spec: Option<&str>) -> Result<(Vec<usize>, usize)> {
    let cfg = &model.cfg;
    let Some(moe) = &cfg.moe else {
        return Err(user_error(format!(
            "{}: this {} model has no mixture-of-experts layers to image",
            model.id,
            cfg.arch.name()
        )));
    };
    let layers = match spec {
        None => (0..cfg.n_layers).filter(|&l| cfg.is_moe_layer(l)).collect(),
        Some(s) => parse_layers(Some(s), cfg.n_layers)?,
    };
    if let Some(l) = layers.iter().find(|&&l| !cfg.is_moe_layer(l)) {
        return Err(user_error(format!(
            "--layers: layer {l} has a dense MLP, not experts"
        )));
    }
    if layers.is_empty() {
        return Err(user_error(format!(
            "{}: no mixture-of-experts layer",
            model.id
        )));
    }
    Ok((layers, moe.n_experts))
}

/// Rows (one per stimulus) of `measure` for every expert of `layers`, layer by layer.
fn routing_rows(
    model: &Model,
    stimuli: &[Stimulus],
    layers: &[usize],
    n_experts: usize,
    r: &ExpertsRequest,
) -> Result<Vec<Vec<f32>>> {
    let mut sites = Vec::with_capacity(2 * layers.len());
    for &l in layers {
        sites.push(Site::Block(l, SiteKind::ExpertIndices));
        if r.measure == Measure::Weight {
            sites.push(Site::Block(l, SiteKind::ExpertWeights));
        }
    }
    let per_layer = sites.len() / layers.len();
    let mut rows = Vec::with_capacity(stimuli.len());
    let host = |t: &Tensor| -> Result<Vec<Vec<f32>>> { Ok(t.to_dtype(DType::F32)?.to_vec2()?) };
    captured_rows_until(
        model,
        stimuli,
        &sites,
        false,
        r.batch,
        &|| Ok(()),
        &mut |captured| {
            let mut row = vec![0f32; layers.len() * n_experts];
            for (li, group) in captured.chunks(per_layer).enumerate() {
                let idx = host(&group[0])?;
                let w = group.get(1).map(host).transpose()?;
                let acc = &mut row[li * n_experts..(li + 1) * n_experts];
                for (t, chosen) in idx.iter().enumerate() {
                    for (slot, &e) in chosen.iter().enumerate() {
                        // indices travel as f32 (exact for any expert count)
                        acc[e.round() as usize] += w.as_ref().map_or(1.0, |w| w[t][slot]);
                    }
                }
                let n = idx.len().max(1) as f32;
                acc.iter_mut().for_each(|v| *v /= n);
            }
            rows.push(row);
            Ok(())
        },
    )?;
    Ok(rows)
}

/// Route both stimulus sets through the model and compare them expert by expert.
pub fn image_experts(model: &Model, r: &ExpertsRequest) -> Result<ExpertImaging> {
    let (layers, n_experts) = moe_layers(model, r.layers.as_deref())?;
    let t = routing_rows(model, &r.target, &layers, n_experts, r)?;
    let c = routing_rows(model, &r.control, &layers, n_experts, r)?;
    // one block of n_experts columns per layer, compared as the localizer compares units
    let sized: Vec<(Site, usize)> = layers
        .iter()
        .map(|&l| (Site::Block(l, SiteKind::ExpertIndices), n_experts))
        .collect();
    let mut experts: Vec<ExpertFinding> = contrast(&sized, &t, &c, false)?
        .into_iter()
        .map(|f| ExpertFinding {
            expert: format!("{}.e{}", f.layer, f.index),
            layer: f.layer,
            index: f.index,
            score: f.score,
            effect_size: f.effect_size,
            auroc: f.auroc,
            p: f.p,
            q: f.q,
            target_mean: f.target_mean,
            control_mean: f.control_mean,
        })
        .collect();
    let experts_tested = experts.len();
    let significant = experts
        .iter()
        .filter(|f| f.score > 0.0 && f.q <= r.fdr)
        .count();
    experts.sort_by(|x, y| order(-x.score, -y.score).then(order(x.p, y.p)));
    experts.truncate(r.top);
    Ok(ExpertImaging {
        measure: r.measure.name(),
        n_target: r.target.len(),
        n_control: r.control.len(),
        experts_tested,
        significant,
        experts,
    })
}
