//! The mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE), exactly as transformers
//! computes it: router logits (the gate linear) → softmax over the experts in f32 → top-k →
//! divide the k weights by their sum iff `norm_topk_prob` → each chosen expert's gated MLP on the
//! tokens routed to it, scaled by its weight and summed into the output in expert order; plus
//! Qwen2-MoE's shared expert, scaled by sigmoid(shared gate).
//!
//! Invariants:
//! - An expert runs only on its routed tokens (gather rows, matmul, scatter-add weighted): there
//!   is never a dense pass over all experts. With no hook asking, no per-expert tensor of the
//!   whole sequence is ever built.
//! - Hook points (`SiteKind::RouterLogits`, `ExpertWeights`, `ExpertIndices`, `Expert(e, …)`,
//!   `SharedExpertPost`) are shaped [B, T, ·] like every other site. An expert's hooks are zero
//!   at the tokens not routed to it; interventions there change only routed tokens (the others
//!   never reach the expert).
//! - Interventions on the router logits act before the softmax and the top-k: setting an
//!   expert's logit to −∞ (`Op::Set(-inf)`, what expert switch-off does) removes it from the
//!   choice, the next-best expert takes its place and the weights renormalize as the
//!   architecture does. Interventions on `hook_expert_indices` change which experts run (values
//!   are rounded; out of range is an error).

use super::config::Activation;
use super::hooks::{ExpertHook, HookSet, Site, SiteKind};
use super::layers::{activate, softmax_last, Linear};
use crate::error::user_error;
use anyhow::Result;
use candle_core::{DType, Tensor, D};

/// One expert: a SiLU-gated MLP with its gate and up projections side by side.
pub struct Expert {
    /// [d_model, 2·d_expert]: gate columns, then up columns (transformers' `gate_up_proj`).
    pub gate_up: Linear,
    pub down: Linear,
}

/// Qwen2-MoE's shared expert: a gated MLP every token goes through, scaled by
/// sigmoid(`gate`·x).
pub struct SharedExpert {
    pub mlp: Expert,
    /// [d_model, 1]
    pub gate: Linear,
}

pub struct Moe {
    /// [d_model, n_experts]
    pub router: Linear,
    pub experts: Vec<Expert>,
    pub top_k: usize,
    pub norm_topk_prob: bool,
    pub shared: Option<SharedExpert>,
}

impl Expert {
    pub fn d_expert(&self) -> usize {
        self.down.w.dims()[0]
    }
}

/// The k largest entries of each row of `probs` [n, e] (descending, ties to the lower index).
fn top_k(probs: &[f32], e: usize, k: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(probs.len() / e.max(1) * k);
    for row in probs.chunks(e) {
        let mut order: Vec<usize> = (0..e).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        out.extend_from_slice(&order[..k]);
    }
    out
}

impl Moe {
    /// The hook points of layer `l`'s block, in forward order (they sit before `hook_mlp_out`).
    pub fn sites(&self, l: usize) -> Vec<Site> {
        let mut out: Vec<Site> = SiteKind::ROUTING
            .iter()
            .map(|&k| Site::Block(l, k))
            .collect();
        for e in 0..self.n_experts() {
            out.extend(
                ExpertHook::ALL
                    .iter()
                    .map(|&h| Site::Block(l, SiteKind::Expert(e, h))),
            );
        }
        if self.shared.is_some() {
            out.push(Site::Block(l, SiteKind::SharedExpertPost));
        }
        out
    }

    pub fn n_experts(&self) -> usize {
        self.experts.len()
    }

    pub fn d_expert(&self) -> usize {
        self.experts.first().map_or(0, Expert::d_expert)
    }

    /// The block's output for x [B, T, d_model] (layer `l`, for the hook sites).
    pub fn forward(
        &self,
        l: usize,
        x: &Tensor,
        act: Activation,
        hooks: &mut HookSet,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let (n, e, k) = (b * t, self.n_experts(), self.top_k);
        let diff = hooks.differentiable;
        let dev = x.device().clone();
        let site = |kind| Site::Block(l, kind);
        let xf = x.reshape((n, d))?;

        let logits = self.router.forward(&xf, diff)?.reshape((b, t, e))?;
        let logits = hooks
            .apply(site(SiteKind::RouterLogits), logits)?
            .reshape((n, e))?;
        let probs = softmax_last(&logits.to_dtype(DType::F32)?, diff)?;
        let host: Vec<f32> = probs.detach().flatten_all()?.to_vec1()?;
        if host.iter().any(|p| p.is_nan()) {
            return Err(user_error(format!(
                "blocks.{l}: the router has no expert left to choose (every logit is −∞)"
            )));
        }
        let mut idx = top_k(&host, e, k);
        let idx_t = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            (n, k),
            &dev,
        )?;
        let mut w = probs.gather(&idx_t, 1)?;
        if self.norm_topk_prob {
            w = w.broadcast_div(&w.sum_keepdim(D::Minus1)?)?;
        }
        let w = hooks
            .apply(
                site(SiteKind::ExpertWeights),
                w.to_dtype(x.dtype())?.reshape((b, t, k))?,
            )?
            .reshape(n * k)?;
        let idx_site = site(SiteKind::ExpertIndices);
        if hooks.is_active(idx_site) {
            let f = idx_t.to_dtype(DType::F32)?.reshape((b, t, k))?;
            let f = hooks.apply(idx_site, f)?;
            let v: Vec<f32> = f.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            idx = v
                .iter()
                .map(|&x| {
                    let r = x.round();
                    if r >= 0.0 && (r as usize) < e {
                        Ok(r as usize)
                    } else {
                        Err(user_error(format!(
                            "{idx_site}: expert index {x} out of range (the layer has {e} experts)"
                        )))
                    }
                })
                .collect::<Result<_>>()?;
        }

        // the (token, slot) pairs routed to each expert, in token order
        let mut routed: Vec<(Vec<u32>, Vec<u32>)> = vec![(vec![], vec![]); e];
        for (slot, &ex) in idx.iter().enumerate() {
            routed[ex].0.push((slot / k) as u32);
            routed[ex].1.push(slot as u32);
        }
        let mut out = xf.zeros_like()?;
        for (ei, (expert, (toks, slots))) in self.experts.iter().zip(&routed).enumerate() {
            let hooked = ExpertHook::ALL
                .iter()
                .any(|&h| hooks.is_active(site(SiteKind::Expert(ei, h))));
            if toks.is_empty() {
                if hooked {
                    // nothing routed here: the hooks see zeros (and nothing flows on)
                    let z = Tensor::zeros((b, t, expert.d_expert()), x.dtype(), &dev)?;
                    for h in ExpertHook::ALL {
                        hooks.apply(site(SiteKind::Expert(ei, h)), z.clone())?;
                    }
                }
                continue;
            }
            let m = toks.len();
            let toks = Tensor::from_slice(toks, m, &dev)?;
            let rows = xf.index_select(&toks, 0)?;
            let spread = Spread {
                toks: &toks,
                n,
                bt: (b, t),
            };
            let post = gated(
                &expert.gate_up,
                &rows,
                act,
                hooks,
                |h| site(SiteKind::Expert(ei, h)),
                Some(&spread),
                (b, t),
            )?;
            let y = expert.down.forward(&post, diff)?;
            let wk = w.index_select(&Tensor::from_slice(slots, m, &dev)?, 0)?;
            let y = y.broadcast_mul(&wk.unsqueeze(1)?)?;
            out = out.index_add(&toks, &y, 0)?;
        }
        if let Some(s) = &self.shared {
            let shared_site = site(SiteKind::SharedExpertPost);
            let post = gated(
                &s.mlp.gate_up,
                &xf,
                act,
                hooks,
                |_| shared_site,
                None,
                (b, t),
            )?;
            let y = s.mlp.down.forward(&post.reshape((n, ()))?, diff)?;
            let g = s.gate.forward(&xf, diff)?;
            let sig = (g.neg()?.exp()? + 1.0)?.recip()?;
            out = (out + y.broadcast_mul(&sig)?)?;
        }
        Ok(out.reshape((b, t, d))?)
    }
}

/// Where an expert's rows sit in the whole [B·T] sequence, to show its hooks full-length.
struct Spread<'a> {
    toks: &'a Tensor,
    n: usize,
    bt: (usize, usize),
}

impl Spread<'_> {
    /// rows [m, D] → hook at `site` as [B, T, D] (zeros elsewhere) → the rows back.
    fn hook(&self, hooks: &mut HookSet, site: Site, rows: Tensor) -> Result<Tensor> {
        if !hooks.is_active(site) {
            return Ok(rows);
        }
        let dd = rows.dim(1)?;
        let full = Tensor::zeros((self.n, dd), rows.dtype(), rows.device())?
            .index_add(self.toks, &rows, 0)?;
        let full = hooks.apply(site, full.reshape((self.bt.0, self.bt.1, dd))?)?;
        Ok(full.reshape((self.n, dd))?.index_select(self.toks, 0)?)
    }
}

/// act(gate)·up of a gated MLP on `rows` [m, d_model], with the expert's three hooks (`spread`
/// given) or, for the shared expert (`spread` None, rows = the whole sequence), only its
/// post-activation hook. Returns the neurons [m, d_expert].
fn gated(
    gate_up: &Linear,
    rows: &Tensor,
    act: Activation,
    hooks: &mut HookSet,
    site: impl Fn(ExpertHook) -> Site,
    spread: Option<&Spread>,
    bt: (usize, usize),
) -> Result<Tensor> {
    let diff = hooks.differentiable;
    let gu = gate_up.forward(rows, diff)?;
    let i = gu.dim(1)? / 2;
    let gate = gu.narrow(1, 0, i)?.contiguous()?;
    let up = gu.narrow(1, i, i)?.contiguous()?;
    match spread {
        Some(s) => {
            let gate = s.hook(hooks, site(ExpertHook::Pre), gate)?;
            let up = s.hook(hooks, site(ExpertHook::PreLinear), up)?;
            let post = (activate(&gate, act, diff)? * up)?;
            s.hook(hooks, site(ExpertHook::Post), post)
        }
        None => {
            let post = (activate(&gate, act, diff)? * up)?;
            let s = site(ExpertHook::Post);
            if !hooks.is_active(s) {
                return Ok(post);
            }
            // the shared expert sees every token: its rows are the whole [B·T] sequence
            let (m, dd) = post.dims2()?;
            let out = hooks.apply(s, post.reshape((bt.0, bt.1, dd))?)?;
            Ok(out.reshape((m, dd))?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn top_k_is_descending_with_ties_to_the_lower_index() {
        let p = [0.1, 0.4, 0.4, 0.1, 0.0, 0.7, 0.2, 0.1];
        assert_eq!(top_k(&p, 4, 2), vec![1, 2, 1, 2]);
    }
}
