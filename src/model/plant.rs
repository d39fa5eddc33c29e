//! Checkpoints with planted neurons: units with a known layer and index that fire only on chosen
//! tokens and write the unembedding direction of a chosen token. Ground truth for testing
//! interpretability methods (a FIND-style benchmark): localize should find them, describe should
//! name their token, lesions and clamps should remove and create their effect.
//!
//! Each planted neuron gets a private residual dimension r. The token embeddings carry +a in r for
//! its trigger tokens and −a for all others (the same magnitude, so normalization statistics do not
//! tell them apart); nothing else reads or writes r (attention, other neurons), so r holds the
//! token's identity at every layer. The neuron reads r and writes the target token's unembedding
//! direction; the target's unembedding row is enlarged so its logit moves decisively.
//!
//! Planted experts (`plant_expert.rs`) use the same identity channels and target directions.

use super::synth::{SynthArch, SynthSpec, Weights};
use crate::error::user_error;
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct PlantedNeuron {
    pub layer: usize,
    pub index: usize,
    /// Tokens the neuron fires on.
    pub fires_on: Vec<String>,
    /// The token whose logit it raises.
    pub writes: String,
}

/// What was planted, in ids as well as names: written beside the checkpoint as plant.json.
#[derive(Debug, Clone, Serialize)]
pub struct PlantRecord {
    pub neuron: String,
    pub layer: usize,
    pub index: usize,
    pub fires_on: Vec<String>,
    pub fires_on_ids: Vec<usize>,
    pub writes: String,
    pub writes_id: usize,
    pub residual_dim: usize,
}

const TRIGGER: f32 = 0.1;
const TARGET_NORM: f32 = 1.5;

pub(super) fn mat<'a>(w: &'a mut Weights, name: &str) -> Result<(&'a mut Vec<f32>, usize, usize)> {
    let (data, shape) = w
        .get_mut(name)
        .ok_or_else(|| anyhow::anyhow!("synthetic weights lack {name}"))?;
    let (r, c) = (shape[0], *shape.get(1).unwrap_or(&1));
    Ok((data, r, c))
}

pub(super) fn zero_row(w: &mut Weights, name: &str, row: usize) -> Result<()> {
    let (d, _, c) = mat(w, name)?;
    d[row * c..(row + 1) * c].iter_mut().for_each(|x| *x = 0.0);
    Ok(())
}

pub(super) fn zero_col(w: &mut Weights, name: &str, col: usize) -> Result<()> {
    let (d, r, c) = mat(w, name)?;
    (0..r).for_each(|i| d[i * c + col] = 0.0);
    Ok(())
}

pub(super) fn set_row(w: &mut Weights, name: &str, row: usize, vals: &[f32]) -> Result<()> {
    let (d, _, c) = mat(w, name)?;
    d[row * c..(row + 1) * c].copy_from_slice(vals);
    Ok(())
}

pub(super) fn set_col(w: &mut Weights, name: &str, col: usize, vals: &[f32]) -> Result<()> {
    let (d, r, c) = mat(w, name)?;
    (0..r).for_each(|i| d[i * c + col] = vals[i]);
    Ok(())
}

pub(super) fn row(w: &mut Weights, name: &str, i: usize) -> Result<Vec<f32>> {
    let (d, _, c) = mat(w, name)?;
    Ok(d[i * c..(i + 1) * c].to_vec())
}

pub(super) fn token_id(spec: &SynthSpec, tok: &str) -> Result<usize> {
    spec.vocab
        .iter()
        .position(|t| t == tok)
        .ok_or_else(|| user_error(format!("token `{tok}` is not in the vocabulary")))
}

fn embedding_names(spec: &SynthSpec) -> (&'static str, &'static str) {
    match spec.arch {
        SynthArch::Gpt2 => ("wte.weight", "wte.weight"),
        _ => ("model.embed_tokens.weight", "lm_head.weight"),
    }
}

/// The identity channel r: +a in the embeddings of `triggers`, −a in all others, and nothing in
/// any layer reads or writes r (attention, MLPs, routers, experts), so r holds at every layer
/// whether the token is a trigger. Planted units then read r alone.
pub(super) fn set_identity_channel(
    spec: &SynthSpec,
    weights: &mut Weights,
    r: usize,
    triggers: &[usize],
) -> Result<()> {
    {
        let (e, v, c) = mat(weights, embedding_names(spec).0)?;
        for t in 0..v {
            e[t * c + r] = if triggers.contains(&t) {
                TRIGGER
            } else {
                -TRIGGER
            };
        }
    }
    for l in 0..spec.n_layers {
        if spec.arch == SynthArch::Gpt2 {
            zero_col(weights, "wpe.weight", r)?;
            zero_row(weights, &format!("h.{l}.attn.c_attn.weight"), r)?;
            zero_col(weights, &format!("h.{l}.attn.c_proj.weight"), r)?;
            zero_row(weights, &format!("h.{l}.mlp.c_fc.weight"), r)?;
            zero_col(weights, &format!("h.{l}.mlp.c_proj.weight"), r)?;
            continue;
        }
        let p = format!("model.layers.{l}");
        for proj in ["q_proj", "k_proj", "v_proj"] {
            zero_col(weights, &format!("{p}.self_attn.{proj}.weight"), r)?;
        }
        zero_row(weights, &format!("{p}.self_attn.o_proj.weight"), r)?;
        match spec.arch {
            SynthArch::Mixtral { experts, .. } => {
                let b = format!("{p}.block_sparse_moe");
                zero_col(weights, &format!("{b}.gate.weight"), r)?;
                for e in 0..experts {
                    zero_col(weights, &format!("{b}.experts.{e}.w1.weight"), r)?;
                    zero_col(weights, &format!("{b}.experts.{e}.w3.weight"), r)?;
                    zero_row(weights, &format!("{b}.experts.{e}.w2.weight"), r)?;
                }
            }
            _ => {
                zero_col(weights, &format!("{p}.mlp.gate_proj.weight"), r)?;
                zero_col(weights, &format!("{p}.mlp.up_proj.weight"), r)?;
                zero_row(weights, &format!("{p}.mlp.down_proj.weight"), r)?;
            }
        }
    }
    Ok(())
}

/// Enlarge `target`'s unembedding row and keep it off the last `channels` identity channels;
/// returns the unit direction a planted unit writes to raise the target's logit.
pub(super) fn target_direction(
    spec: &SynthSpec,
    weights: &mut Weights,
    target: usize,
    channels: usize,
) -> Result<Vec<f32>> {
    let d = spec.d_model;
    let unembed = embedding_names(spec).1;
    let mut u = row(weights, unembed, target)?;
    for j in 0..channels {
        u[d - 1 - j] = 0.0;
    }
    let norm = u.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    u.iter_mut().for_each(|x| *x *= TARGET_NORM / norm);
    let mut urow = u.clone();
    if spec.arch == SynthArch::Gpt2 {
        // tied: the same row is the target's input embedding, which keeps its −a identity
        urow[d - channels] = -TRIGGER;
    }
    set_row(weights, unembed, target, &urow)?;
    Ok(u.iter().map(|x| x / TARGET_NORM).collect())
}

/// Plant `neurons` into random `weights` of `spec`. Returns the records for plant.json.
pub fn plant(
    spec: &SynthSpec,
    weights: &mut Weights,
    neurons: &[PlantedNeuron],
) -> Result<Vec<PlantRecord>> {
    let (d, m) = (spec.d_model, spec.d_mlp);
    let id_of = |tok: &str| token_id(spec, tok);
    if neurons.len() >= d / 2 {
        return Err(user_error(format!(
            "at most {} planted neurons fit a d_model of {d}",
            d / 2 - 1
        )));
    }
    let gpt2 = spec.arch == SynthArch::Gpt2;
    if !neurons.is_empty() && matches!(spec.arch, SynthArch::Mixtral { .. }) {
        return Err(user_error(
            "--neuron: a mixtral checkpoint has experts, not dense MLP neurons (plant --expert)",
        ));
    }
    let mut records = Vec::new();
    for (k, n) in neurons.iter().enumerate() {
        if n.layer >= spec.n_layers || n.index >= m {
            return Err(user_error(format!(
                "planted neuron {}.{} is outside the model ({} layers, {m} neurons per layer)",
                n.layer, n.index, spec.n_layers
            )));
        }
        if neurons[..k]
            .iter()
            .any(|o| o.layer == n.layer && o.index == n.index)
        {
            return Err(user_error(format!(
                "neuron {}.{} planted twice",
                n.layer, n.index
            )));
        }
        let r = d - 1 - k;
        let trigger_ids: Vec<usize> = n.fires_on.iter().map(|t| id_of(t)).collect::<Result<_>>()?;
        let target = id_of(&n.writes)?;
        if trigger_ids.contains(&target) {
            return Err(user_error(format!(
                "`{}` cannot be both a trigger and the written token",
                n.writes
            )));
        }
        set_identity_channel(spec, weights, r, &trigger_ids)?;
        let dir = target_direction(spec, weights, target, k + 1)?;
        // the neuron: reads r, writes the target direction
        let mut read = vec![0f32; d];
        let p = format!("{}", n.layer);
        if gpt2 {
            read[r] = 2.0; // pre-activation = ±2·(normalized r): strongly on or off
            set_col(weights, &format!("h.{p}.mlp.c_fc.weight"), n.index, &read)?;
            if let Some((b, _)) = weights.get_mut(&format!("h.{p}.mlp.c_fc.bias")) {
                b[n.index] = 0.0;
            }
            let write: Vec<f32> = dir.iter().map(|x| x * 0.5).collect();
            set_row(
                weights,
                &format!("h.{p}.mlp.c_proj.weight"),
                n.index,
                &write,
            )?;
        } else {
            // silu(8·x)·x: ≈ 0 for every negative x whatever the residual's scale, large for positive
            read[r] = 8.0;
            set_row(
                weights,
                &format!("model.layers.{p}.mlp.gate_proj.weight"),
                n.index,
                &read,
            )?;
            read[r] = 1.0;
            set_row(
                weights,
                &format!("model.layers.{p}.mlp.up_proj.weight"),
                n.index,
                &read,
            )?;
            let write: Vec<f32> = dir.iter().map(|x| x * 0.05).collect();
            set_col(
                weights,
                &format!("model.layers.{p}.mlp.down_proj.weight"),
                n.index,
                &write,
            )?;
        }
        records.push(PlantRecord {
            neuron: format!("{}.{}", n.layer, n.index),
            layer: n.layer,
            index: n.index,
            fires_on: n.fires_on.clone(),
            fires_on_ids: trigger_ids,
            writes: n.writes.clone(),
            writes_id: target,
            residual_dim: r,
        });
    }
    Ok(records)
}
