//! Mixture-of-experts routing in a recording: which tokens each expert of each MoE layer saw, and
//! with what weight.
//!
//! Every MoE layer gets a routing state: a [`SiteState`](super::state::SiteState) named
//! `blocks.L.mlp.experts` whose units are the layer's experts and whose "activation" for a token
//! is the routing weight the router gave the expert — counted only at the tokens routed to it.
//! So `count` is the tokens routed to the expert, `mean`/`var`/`min`/`max`/`hist` describe its
//! routing weight over those tokens, and its top examples are the tokens routed to it with the
//! highest weight. Being an ordinary `SiteState`, it is updated, written, merged and resumed by
//! the same code as every hook point's units, so shards merge exactly.
//!
//! The same routing decides which tokens an expert's own hook points (`mlp.experts.E.hook_pre`,
//! `hook_pre_linear`, `hook_post`) are recorded at: they are zero at the tokens not routed to E
//! (the expert never ran there), so those zeros are left out — an expert neuron's count, mean,
//! fire rate, histogram and top examples are over the tokens its expert processed.
//!
//! Invariants: each recorded token adds exactly `top_k` routed (token, expert) pairs per MoE layer
//! (the router's choices are distinct experts), so a layer's counts sum to `top_k × tokens`;
//! rows keep their batch order within each expert, so results do not depend on the thread count.

use super::state::HistSpec;
use super::update::Row;
use crate::error::user_error;
use crate::model::{Site, SiteKind};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// One mixture-of-experts layer as a recording sees it (also `manifest.experts[i]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertLayer {
    pub layer: usize,
    /// Experts in the layer (the units of its routing state).
    pub experts: usize,
    /// Experts chosen per token.
    pub top_k: usize,
}

impl ExpertLayer {
    /// The routing state's name, the prefix of its tensors (`blocks.3.mlp.experts.count`).
    pub fn name(&self) -> String {
        routing_name(self.layer)
    }
}

/// The mixture-of-experts layers of `m`, in layer order (none for a dense model).
pub fn expert_layers(m: &crate::model::Model) -> Vec<ExpertLayer> {
    m.net
        .blocks
        .iter()
        .enumerate()
        .filter_map(|(layer, b)| {
            let moe = b.moe.as_ref()?;
            Some(ExpertLayer {
                layer,
                experts: moe.n_experts(),
                top_k: moe.top_k,
            })
        })
        .collect()
}

/// The default `--sites` (`blocks.*.mlp.hook_post`, "the neurons") on a model with experts also
/// takes the experts' neurons and the shared expert's: every MLP neuron of the model.
pub const DEFAULT_SITES: &str = "blocks.*.mlp.hook_post";
pub const MOE_NEURON_SITES: &str =
    "blocks.*.mlp.hook_post,blocks.*.mlp.experts.*.hook_post,blocks.*.mlp.shared_expert.hook_post";

/// `blocks.L.mlp.experts`: the name of layer L's routing state.
pub fn routing_name(layer: usize) -> String {
    format!("blocks.{layer}.mlp.experts")
}

/// The histogram of routing weights: softmax probabilities (renormalized or not) lie in [0, 1];
/// a weight of exactly 1 (top-1 routing, renormalized) lands in the overflow bin.
pub fn weight_hist(bins: usize) -> HistSpec {
    HistSpec {
        lo: 0.0,
        hi: 1.0,
        bins,
    }
}

/// The MoE layer and expert whose routing decides where `site` is recorded, if any.
pub fn expert_of(site: Site) -> Option<(usize, usize)> {
    match site {
        Site::Block(l, SiteKind::Expert(e, _)) => Some((l, e)),
        _ => None,
    }
}

/// One forward pass's routing at one MoE layer: per (batch·time) row, the `top_k` chosen experts
/// and their weights, flattened.
pub struct Routing {
    pub indices: Vec<f32>,
    pub weights: Vec<f32>,
}

/// A batch's tokens split by expert, for one MoE layer: the rows routed to each expert, in batch
/// order.
pub struct Routed<'a> {
    pub per_expert: Vec<Vec<Row<'a>>>,
}

impl Routing {
    /// Split `rows` (offsets into this pass's `n_rows` rows) by the experts they were routed to.
    pub fn split<'a>(
        &self,
        x: &ExpertLayer,
        rows: &[Row<'a>],
        n_rows: usize,
    ) -> Result<Routed<'a>> {
        self.check(x, n_rows)?;
        let k = x.top_k;
        let mut per_expert: Vec<Vec<Row>> = vec![Vec::new(); x.experts];
        for row in rows {
            for j in 0..k {
                per_expert[self.expert(x, row.offset * k + j)?].push(*row);
            }
        }
        Ok(Routed { per_expert })
    }

    /// [n_rows, experts]: the routing weight of each row's chosen experts, 0 elsewhere (only the
    /// routed entries are ever read). Built one layer at a time, so that a large model's layers
    /// never all hold one at once.
    pub fn weights(&self, x: &ExpertLayer, rows: &[Row], n_rows: usize) -> Result<Vec<f32>> {
        self.check(x, n_rows)?;
        let (e, k) = (x.experts, x.top_k);
        let mut weights = vec![0f32; n_rows * e];
        for row in rows {
            for j in 0..k {
                let i = row.offset * k + j;
                weights[row.offset * e + self.expert(x, i)?] = self.weights[i];
            }
        }
        Ok(weights)
    }

    fn check(&self, x: &ExpertLayer, n_rows: usize) -> Result<()> {
        let k = x.top_k;
        if self.indices.len() != n_rows * k || self.weights.len() != n_rows * k {
            bail!(
                "blocks.{}: routing of {} entries for {n_rows} rows × top-{k}",
                x.layer,
                self.indices.len()
            );
        }
        Ok(())
    }

    /// The expert of routing entry `i`, checked against the layer's expert count.
    fn expert(&self, x: &ExpertLayer, i: usize) -> Result<usize> {
        let ex = self.indices[i];
        if !(ex >= 0.0 && (ex as usize) < x.experts && ex.fract() == 0.0) {
            return Err(user_error(format!(
                "blocks.{}: expert index {ex} out of range (the layer has {} experts)",
                x.layer, x.experts
            )));
        }
        Ok(ex as usize)
    }

    /// Whether row `offset` was routed to expert `e` (top-k of `k`).
    pub fn routed_to(&self, offset: usize, k: usize, e: usize) -> bool {
        self.indices[offset * k..(offset + 1) * k].contains(&(e as f32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sends_each_row_to_its_top_k_experts() {
        let x = ExpertLayer {
            layer: 0,
            experts: 3,
            top_k: 2,
        };
        // 3 rows of a pass; rows 0 and 2 are real tokens
        let r = Routing {
            indices: vec![2.0, 0.0, 1.0, 2.0, 0.0, 1.0],
            weights: vec![0.7, 0.3, 0.6, 0.4, 0.55, 0.45],
        };
        let doc = [5u32, 6, 7];
        let rows: Vec<Row> = [0usize, 2]
            .iter()
            .map(|&o| Row {
                offset: o,
                doc: 0,
                pos: o,
                doc_tokens: &doc,
                example: true,
            })
            .collect();
        let s = r.split(&x, &rows, 3).unwrap();
        let w = r.weights(&x, &rows, 3).unwrap();
        let offs = |e: usize| s.per_expert[e].iter().map(|r| r.offset).collect::<Vec<_>>();
        assert_eq!((offs(0), offs(1), offs(2)), (vec![0, 2], vec![2], vec![0]));
        assert_eq!(w[2], 0.7);
        assert_eq!(w[2 * 3], 0.55);
        assert_eq!(w[3 + 1], 0.0, "row 1 is padding: never read, left 0");
        assert!(r.routed_to(1, 2, 1) && !r.routed_to(1, 2, 0));
        let bad = Routing {
            indices: vec![3.0, 0.0],
            weights: vec![0.5, 0.5],
        };
        assert!(bad.split(&x, &rows[..1], 1).is_err());
        assert!(bad.weights(&x, &rows[..1], 1).is_err());
    }
}
