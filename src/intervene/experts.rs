//! Expert switch-off: which experts of a mixture-of-experts model to take out of the routing, the
//! interventions that do it, and random expert sets of the same layers for baselines.
//!
//! Invariants: a switched-off expert's router logit is −∞ before the softmax and the top-k
//! (`Op::Set(-inf)` on `blocks.L.mlp.hook_router_logits`), so the expert is never chosen, the
//! next-best expert takes its slot and the weights renormalize exactly as the architecture does
//! (see `model/moe.rs`). Every id is checked against the model before anything runs: an expert
//! id on a dense model or a dense layer, a layer or expert out of range, or so many experts off
//! in one layer that fewer than top-k remain, is one clear user error.

use crate::error::user_error;
use crate::model::{Intervention, ModelConfig, Op, Site, SiteKind, UnitId};
use crate::rng::Rng;
use anyhow::Result;
use std::collections::BTreeMap;

/// Expert `expert` of layer `layer` (`L.eE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExpertId {
    pub layer: usize,
    pub expert: usize,
}

impl std::fmt::Display for ExpertId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.e{}", self.layer, self.expert)
    }
}

/// A comma list of `L.eE`, checked against `cfg`; sorted, without duplicates.
pub fn parse_expert_set(spec: &str, cfg: &ModelConfig) -> Result<Vec<ExpertId>> {
    let Some(moe) = &cfg.moe else {
        return Err(user_error(format!(
            "--experts: this {} model has no mixture-of-experts layers",
            cfg.arch.name()
        )));
    };
    let mut set = Vec::new();
    for s in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Ok(UnitId::Expert { layer, expert }) = s.parse::<UnitId>() else {
            return Err(user_error(format!(
                "--experts: `{s}` is not an expert id (expected LAYER.eEXPERT, e.g. 3.e5)"
            )));
        };
        if layer >= cfg.n_layers {
            return Err(user_error(format!(
                "--experts: {s}: layer {layer} out of range (the model has {} layers)",
                cfg.n_layers
            )));
        }
        if !cfg.is_moe_layer(layer) {
            return Err(user_error(format!(
                "--experts: {s}: layer {layer} has a dense MLP, not experts"
            )));
        }
        if expert >= moe.n_experts {
            return Err(user_error(format!(
                "--experts: {s}: expert {expert} out of range (layers have {} experts)",
                moe.n_experts
            )));
        }
        set.push(ExpertId { layer, expert });
    }
    set.sort();
    set.dedup();
    if set.is_empty() {
        return Err(user_error(format!("--experts `{spec}` names no experts")));
    }
    for (layer, n) in per_layer(&set) {
        if n.len() > moe.n_experts - moe.top_k {
            return Err(user_error(format!(
                "--experts: {} experts off in layer {layer} leave fewer than the {} the router chooses (of {})",
                n.len(),
                moe.top_k,
                moe.n_experts
            )));
        }
    }
    Ok(set)
}

fn per_layer(set: &[ExpertId]) -> BTreeMap<usize, Vec<usize>> {
    let mut by_layer: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for e in set {
        by_layer.entry(e.layer).or_default().push(e.expert);
    }
    by_layer
}

/// The interventions that switch `set` off (one per layer) at `positions` (None = all).
pub fn switch_off(set: &[ExpertId], positions: Option<&[usize]>) -> Vec<Intervention> {
    per_layer(set)
        .into_iter()
        .map(|(layer, experts)| Intervention {
            site: Site::Block(layer, SiteKind::RouterLogits),
            units: Some(experts),
            positions: positions.map(|p| p.to_vec()),
            op: Op::Set(f32::NEG_INFINITY),
        })
        .collect()
}

/// A random set shaped like `set`: as many experts in each layer, none of them in `set`.
pub fn random_experts_like(set: &[ExpertId], n_experts: usize, rng: &mut Rng) -> Vec<ExpertId> {
    let mut out: Vec<ExpertId> = Vec::with_capacity(set.len());
    for e in set {
        let taken = |out: &[ExpertId]| {
            set.iter()
                .chain(out.iter())
                .filter(|m| m.layer == e.layer)
                .count()
        };
        if taken(&out) >= n_experts {
            continue;
        }
        loop {
            let cand = ExpertId {
                layer: e.layer,
                expert: rng.below(n_experts),
            };
            if !set.contains(&cand) && !out.contains(&cand) {
                out.push(cand);
                break;
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_sets_keep_layers_and_avoid_the_chosen() {
        let set = [
            ExpertId {
                layer: 0,
                expert: 1,
            },
            ExpertId {
                layer: 2,
                expert: 3,
            },
        ];
        let mut rng = Rng::new(7);
        for _ in 0..20 {
            let r = random_experts_like(&set, 5, &mut rng);
            assert_eq!(r.iter().map(|e| e.layer).collect::<Vec<_>>(), [0, 2]);
            assert!(r.iter().all(|e| !set.contains(e) && e.expert < 5));
        }
    }
}
