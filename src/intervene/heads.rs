//! Attention heads as units (`L.hH`): which heads to act on, the interventions on their
//! `blocks.L.attn.hook_z` (each head's output before the output projection), and random heads of
//! the same layers for baselines.
//!
//! Invariants: a head is the `d_head` consecutive units `H·d_head .. (H+1)·d_head` of hook_z's
//! token-major view (see `model::hooks`), so zeroing them removes exactly that head's write to the
//! residual stream (the output bias stays, as in TransformerLens). `mean` replaces them with their
//! mean over the real tokens of the evaluation prompts (a clean run), the usual mean ablation.
//! Every id is checked against the model before anything runs (layer and head in range).

use super::OpSpec;
use crate::error::user_error;
use crate::model::{
    AttnHook, HookSet, Intervention, Model, ModelConfig, Op, Site, SiteKind, UnitId,
};
use crate::rng::Rng;
use anyhow::Result;
use candle_core::DType;
use std::collections::BTreeMap;

/// Head `head` of layer `layer` (`L.hH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeadId {
    pub layer: usize,
    pub head: usize,
}

impl std::fmt::Display for HeadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.h{}", self.layer, self.head)
    }
}

/// `blocks.L.attn.hook_z`.
pub fn z_site(layer: usize) -> Site {
    Site::Block(layer, SiteKind::Attn(AttnHook::Z))
}

/// A comma list of `L.hH`, checked against `cfg`; sorted, without duplicates.
pub fn parse_head_set(spec: &str, cfg: &ModelConfig) -> Result<Vec<HeadId>> {
    let mut set = Vec::new();
    for s in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Ok(UnitId::Head { layer, head }) = s.parse::<UnitId>() else {
            return Err(user_error(format!(
                "--heads: `{s}` is not a head id (expected LAYER.hHEAD, e.g. 3.h5)"
            )));
        };
        if layer >= cfg.n_layers {
            return Err(user_error(format!(
                "--heads: {s}: layer {layer} out of range (the model has {} layers)",
                cfg.n_layers
            )));
        }
        if head >= cfg.n_heads {
            return Err(user_error(format!(
                "--heads: {s}: head {head} out of range (layers have {} heads)",
                cfg.n_heads
            )));
        }
        set.push(HeadId { layer, head });
    }
    set.sort();
    set.dedup();
    if set.is_empty() {
        return Err(user_error(format!("--heads `{spec}` names no heads")));
    }
    Ok(set)
}

fn per_layer(set: &[HeadId]) -> BTreeMap<usize, Vec<usize>> {
    let mut by_layer: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for h in set {
        by_layer.entry(h.layer).or_default().push(h.head);
    }
    by_layer
}

/// Each layer's mean hook_z `[heads·d_head]` over the real tokens of `seqs` (a clean run): what
/// `--op mean` puts in place of a head.
pub fn eval_means(
    model: &Model,
    seqs: &[Vec<u32>],
    layers: &[usize],
) -> Result<BTreeMap<usize, Vec<f32>>> {
    let width = model.cfg.n_heads * model.cfg.head_dim;
    let mut sums: BTreeMap<usize, Vec<f64>> =
        layers.iter().map(|&l| (l, vec![0f64; width])).collect();
    let mut n = 0usize;
    for chunk in seqs.chunks(16) {
        let mut hooks = HookSet::capturing(layers.iter().map(|&l| z_site(l)));
        let batch = model.batch(chunk)?;
        model.forward(&batch, &mut hooks)?;
        for (&l, sum) in sums.iter_mut() {
            let z = hooks
                .take(z_site(l))
                .ok_or_else(|| anyhow::anyhow!("{} was not reached", z_site(l)))?;
            let (b, t, _, _) = z.dims4()?;
            let z = z.reshape((b, t, width))?.to_dtype(DType::F32)?;
            for (i, &len) in batch.lengths.iter().enumerate() {
                let rows: Vec<Vec<f32>> = z.get(i)?.narrow(0, 0, len)?.to_vec2()?;
                for row in rows {
                    sum.iter_mut().zip(row).for_each(|(s, x)| *s += x as f64);
                }
            }
        }
        n += batch.lengths.iter().sum::<usize>();
    }
    Ok(sums
        .into_iter()
        .map(|(l, s)| {
            (
                l,
                s.into_iter()
                    .map(|x| (x / n.max(1) as f64) as f32)
                    .collect(),
            )
        })
        .collect())
}

/// The interventions that apply `op` (zero or mean) to `set`'s hook_z units, one per layer, at
/// `positions` (None = all). `means` (from [`eval_means`]) must hold every layer of `set` for
/// `mean`.
pub fn head_interventions(
    set: &[HeadId],
    op: &OpSpec,
    positions: Option<&[usize]>,
    d_head: usize,
    means: &BTreeMap<usize, Vec<f32>>,
) -> Result<Vec<Intervention>> {
    per_layer(set)
        .into_iter()
        .map(|(layer, heads)| {
            let units: Vec<usize> = heads
                .iter()
                .flat_map(|h| h * d_head..(h + 1) * d_head)
                .collect();
            let op = match op {
                OpSpec::Zero => Op::Zero,
                OpSpec::Mean => Op::SetPerUnit(
                    means
                        .get(&layer)
                        .cloned()
                        .ok_or_else(|| anyhow::anyhow!("no mean hook_z for layer {layer}"))?,
                ),
                other => {
                    return Err(user_error(format!(
                        "--op {other} does not apply to heads (use zero or mean)"
                    )))
                }
            };
            Ok(Intervention {
                site: z_site(layer),
                units: Some(units),
                positions: positions.map(|p| p.to_vec()),
                op,
            })
        })
        .collect()
}

/// A random set shaped like `set`: as many heads in each layer, none of them in `set` (fewer when
/// a layer has no other heads left).
pub fn random_heads_like(set: &[HeadId], n_heads: usize, rng: &mut Rng) -> Vec<HeadId> {
    let mut out: Vec<HeadId> = Vec::with_capacity(set.len());
    for h in set {
        let taken = set
            .iter()
            .chain(out.iter())
            .filter(|m| m.layer == h.layer)
            .count();
        if taken >= n_heads {
            continue;
        }
        loop {
            let cand = HeadId {
                layer: h.layer,
                head: rng.below(n_heads),
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
    fn random_heads_keep_layers_and_avoid_the_chosen() {
        let set = [HeadId { layer: 1, head: 0 }, HeadId { layer: 3, head: 2 }];
        let mut rng = Rng::new(3);
        for _ in 0..20 {
            let r = random_heads_like(&set, 4, &mut rng);
            assert_eq!(r.iter().map(|h| h.layer).collect::<Vec<_>>(), [1, 3]);
            assert!(r.iter().all(|h| !set.contains(h) && h.head < 4));
        }
        // a layer with every head chosen has no random counterpart
        let full: Vec<HeadId> = (0..2).map(|head| HeadId { layer: 0, head }).collect();
        assert!(random_heads_like(&full, 2, &mut rng).is_empty());
    }
}
