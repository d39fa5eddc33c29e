//! Planted experts: in a synthetic Mixtral, an expert of known layer and index that the router
//! sends exactly the trigger tokens to, and whose output raises the target token's logit. Ground
//! truth for expert imaging (`ftri experts`) and expert switch-off (`lesion --experts`).
//!
//! Construction, so that every claim in plant.json can be checked exactly:
//! - Each planted expert gets a private identity channel r (as planted neurons do, `plant.rs`):
//!   the embeddings carry +a at r for its trigger tokens and −a for all others, and no attention
//!   projection, router column or expert reads or writes r, so r holds at every layer.
//! - Router: the expert's gate row is `ROUTER_GAIN` at r and 0 elsewhere, so its logit is exactly
//!   ROUTER_GAIN · RMSNorm(x)_r: above +10 at a trigger and below −10 elsewhere (±11–14 in the
//!   tests' 64-wide model), against |logit| ≲ 1 for the random experts (std 0.02 rows against a
//!   unit-RMS input). A trigger is always routed to it
//!   (top-1), any other token never (this needs top-k below the expert count). The other experts'
//!   router rows do not see r, so their logits are those of the unplanted model.
//! - Expert: only its neuron 0 is non-zero — gate reads 8·r, up reads r (silu(8x)·x: large for
//!   +a, ≈ 0 for −a) — and it writes the target's unembedding direction through the down
//!   projection, so its whole output is a positive multiple of that direction at trigger tokens.
//!   The target's unembedding row is enlarged (and kept off the identity channels) so the logit
//!   moves decisively.
//! - All identity channels are set before any expert is written, so a later channel's isolation
//!   never trims an earlier expert's weights.

use super::plant::{mat, set_col, set_identity_channel, set_row, target_direction, token_id};
use super::synth::{SynthArch, SynthSpec, Weights};
use crate::error::user_error;
use anyhow::Result;
use serde::Serialize;

/// Router weight on a planted expert's identity channel (its logit is this × RMSNorm(x)_r).
pub const ROUTER_GAIN: f32 = 4.0;

#[derive(Debug, Clone)]
pub struct PlantedExpert {
    pub layer: usize,
    pub expert: usize,
    /// Tokens the router sends to the expert.
    pub routed: Vec<String>,
    /// The token whose logit the expert raises.
    pub writes: String,
}

/// plant.json's entry for a planted expert.
#[derive(Debug, Clone, Serialize)]
pub struct ExpertRecord {
    /// `L.eE`.
    pub expert: String,
    pub layer: usize,
    pub index: usize,
    /// Exactly these tokens are routed to the expert (top-1), no other token ever is.
    pub routed: Vec<String>,
    pub routed_ids: Vec<usize>,
    pub writes: String,
    pub writes_id: usize,
    /// The identity channel: +a at `routed`, −a elsewhere.
    pub residual_dim: usize,
    /// The expert's router row: this at `residual_dim`, 0 elsewhere.
    pub router_gain: f32,
}

/// Plant `experts` into random `weights` of a Mixtral `spec`, using identity channels below the
/// `channels_used` already taken (by planted neurons). Returns the records for plant.json.
pub fn plant_experts(
    spec: &SynthSpec,
    weights: &mut Weights,
    experts: &[PlantedExpert],
    channels_used: usize,
) -> Result<Vec<ExpertRecord>> {
    if experts.is_empty() {
        return Ok(vec![]);
    }
    let SynthArch::Mixtral {
        experts: n_experts,
        top_k,
    } = spec.arch
    else {
        return Err(user_error(
            "--expert needs a mixture-of-experts checkpoint (--arch mixtral)",
        ));
    };
    if top_k >= n_experts {
        return Err(user_error(format!(
            "--expert: with top-k {top_k} of {n_experts} experts every token reaches every expert; a planted expert needs top-k below the expert count"
        )));
    }
    let d = spec.d_model;
    let channels = channels_used + experts.len();
    if channels >= d / 2 {
        return Err(user_error(format!(
            "at most {} planted units fit a d_model of {d}",
            d / 2 - 1
        )));
    }
    let mut planned = Vec::with_capacity(experts.len());
    for (k, x) in experts.iter().enumerate() {
        if x.layer >= spec.n_layers || x.expert >= n_experts {
            return Err(user_error(format!(
                "planted expert {}.e{} is outside the model ({} layers, {n_experts} experts per layer)",
                x.layer, x.expert, spec.n_layers
            )));
        }
        if experts[..k]
            .iter()
            .any(|o| o.layer == x.layer && o.expert == x.expert)
        {
            return Err(user_error(format!(
                "expert {}.e{} planted twice",
                x.layer, x.expert
            )));
        }
        let routed: Vec<usize> = x
            .routed
            .iter()
            .map(|t| token_id(spec, t))
            .collect::<Result<_>>()?;
        let target = token_id(spec, &x.writes)?;
        if routed.contains(&target) {
            return Err(user_error(format!(
                "`{}` cannot be both a routed token and the written token",
                x.writes
            )));
        }
        let r = d - 1 - channels_used - k;
        set_identity_channel(spec, weights, r, &routed)?;
        planned.push((r, routed, target));
    }
    let mut records = Vec::with_capacity(experts.len());
    for (x, (r, routed, target)) in experts.iter().zip(planned) {
        let dir = target_direction(spec, weights, target, channels)?;
        let b = format!("model.layers.{}.block_sparse_moe", x.layer);
        let mut gate = vec![0f32; d];
        gate[r] = ROUTER_GAIN;
        set_row(weights, &format!("{b}.gate.weight"), x.expert, &gate)?;
        // the expert: neuron 0 alone, reading r and writing the target direction
        let e = format!("{b}.experts.{}", x.expert);
        for w in ["w1", "w3", "w2"] {
            mat(weights, &format!("{e}.{w}.weight"))?
                .0
                .iter_mut()
                .for_each(|v| *v = 0.0);
        }
        let mut read = vec![0f32; d];
        read[r] = 8.0;
        set_row(weights, &format!("{e}.w1.weight"), 0, &read)?;
        read[r] = 1.0;
        set_row(weights, &format!("{e}.w3.weight"), 0, &read)?;
        let write: Vec<f32> = dir.iter().map(|v| v * 0.05).collect();
        set_col(weights, &format!("{e}.w2.weight"), 0, &write)?;
        records.push(ExpertRecord {
            expert: format!("{}.e{}", x.layer, x.expert),
            layer: x.layer,
            index: x.expert,
            routed: x.routed.clone(),
            routed_ids: routed,
            writes: x.writes.clone(),
            writes_id: target,
            residual_dim: r,
            router_gain: ROUTER_GAIN,
        });
    }
    Ok(records)
}
