//! Lazy neurons (Spark Transformer; the activation sparsity of Configurable Foundation Models):
//! per layer, how many MLP neurons (`mlp.hook_post`) are active on a token — above 0, and above ε
//! in magnitude — which neurons never are, and what language modelling loses when each token
//! keeps only its top k % of activations: exact top-k (a sort) against Spark's statistical top-k
//! (keep what is ≥ mean + z·std of the token's vector, z = Φ⁻¹(1 − k/100): linear time, exact
//! only for Gaussian values), with how much the two kept sets agree. *(choice)* Both rules rank
//! magnitudes |a|: a gated MLP's neurons (silu(gate)·up) are signed, and about half of them are
//! negative on every token, so ranking values would drop the large negative half; for GELU/ReLU
//! MLPs (negatives bounded by −0.17 or 0) the largest magnitudes are the largest values anyway.
//!
//! Invariants: counts cover every real token of the corpus once (padding never counts); the loss
//! passes apply the same rule at every chosen layer at once; agreement is measured on the dense
//! model's activations, so it compares the two rules on identical inputs.

use super::pass::{next_token_nll, read_windows, run_batches, token_count, valid_rows, CorpusSpec};
use crate::error::user_error;
use crate::model::{HookSet, Intervention, Model, Op, Site, SiteKind};
use anyhow::{anyhow, Result};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct SparsityRequest {
    pub corpus: CorpusSpec,
    pub layers: Vec<usize>,
    /// |a| above this counts as active in the ε view.
    pub eps: f32,
    /// Percentages of neurons kept per token in the top-k comparison.
    pub keep_percent: Vec<f64>,
}

/// A distribution over tokens of the fraction of a layer's neurons active on the token.
#[derive(Debug, Clone, Serialize)]
pub struct Distribution {
    pub mean: f64,
    pub min: f64,
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
    pub max: f64,
}

/// The two top-k rules on one layer's dense activations.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    pub keep_percent: f64,
    /// Mean over tokens of |exact ∩ statistical| / |exact|.
    pub overlap: f64,
    /// Mean fraction of neurons the statistical rule keeps (the exact rule keeps keep_percent).
    pub statistical_kept: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerSparsity {
    pub layer: usize,
    /// Fraction of neurons with a > 0 per token.
    pub active: Distribution,
    /// Fraction with |a| > ε per token.
    pub active_eps: Distribution,
    /// Neurons never > 0 over the corpus (dead, at threshold 0).
    pub never_active: usize,
    /// Neurons never above ε in magnitude (lazy).
    pub never_active_eps: usize,
    pub agreement: Vec<Agreement>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopKLoss {
    pub keep_percent: f64,
    /// Neurons kept per token by the exact rule.
    pub k: usize,
    /// Φ⁻¹(1 − keep/100), the statistical rule's z.
    pub z: f64,
    pub exact_loss: f64,
    pub statistical_loss: f64,
    /// Mean over layers of the rules' overlap on the dense activations.
    pub overlap: f64,
    pub statistical_kept: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SparsityResult {
    pub tokens: u64,
    pub d_mlp: usize,
    pub eps: f32,
    /// Mean next-token loss (nats) of the dense model; `None` without an LM head.
    pub dense_loss: Option<f64>,
    pub layers: Vec<LayerSparsity>,
    /// Empty without an LM head.
    pub topk: Vec<TopKLoss>,
}

/// Φ⁻¹(p), the standard normal quantile (Acklam's rational approximation, relative error
/// < 1.2e-9), for 0 < p < 1.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Exact quantiles of per-token counts kept as a histogram over 0..=d.
fn distribution(hist: &[u64], d: usize) -> Distribution {
    let n: u64 = hist.iter().sum();
    let q = |f: f64| -> f64 {
        let target = ((f * n as f64).ceil() as u64).max(1);
        let mut acc = 0;
        for (c, &h) in hist.iter().enumerate() {
            acc += h;
            if acc >= target {
                return c as f64 / d as f64;
            }
        }
        1.0
    };
    let mean = hist
        .iter()
        .enumerate()
        .map(|(c, &h)| c as f64 * h as f64)
        .sum::<f64>()
        / n.max(1) as f64
        / d as f64;
    Distribution {
        mean,
        min: q(0.0),
        p10: q(0.1),
        p50: q(0.5),
        p90: q(0.9),
        max: q(1.0),
    }
}

/// Neurons kept per token for `percent` of `d`: at least 1.
pub fn k_of(percent: f64, d: usize) -> usize {
    ((percent / 100.0 * d as f64).round() as usize).clamp(1, d)
}

struct LayerAcc {
    hist0: Vec<u64>,
    hist_eps: Vec<u64>,
    ever0: Vec<bool>,
    ever_eps: Vec<bool>,
    overlap: Vec<f64>,
    stat_kept: Vec<f64>,
}

pub fn sparsity(
    m: &Model,
    req: &SparsityRequest,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<SparsityResult> {
    let sites: Vec<Site> = req
        .layers
        .iter()
        .map(|&l| Site::Block(l, SiteKind::MlpPost))
        .collect();
    let all = m.sites();
    if let Some(s) = sites.iter().find(|s| !all.contains(s)) {
        return Err(user_error(format!(
            "this model has no hook point {s} (a mixture-of-experts layer has no dense neurons)"
        )));
    }
    if let Some(p) = req
        .keep_percent
        .iter()
        .find(|p| !(**p > 0.0 && **p <= 100.0))
    {
        return Err(user_error(format!(
            "--keep {p}: percentages must be in (0, 100]"
        )));
    }
    let d = m.cfg.d_mlp;
    let wins = read_windows(m, &req.corpus)?;
    let total = token_count(&wins);
    let ks: Vec<(usize, f64)> = req
        .keep_percent
        .iter()
        .map(|&p| (k_of(p, d), normal_quantile(1.0 - p / 100.0)))
        .collect();
    let mut acc: Vec<LayerAcc> = sites
        .iter()
        .map(|_| LayerAcc {
            hist0: vec![0; d + 1],
            hist_eps: vec![0; d + 1],
            ever0: vec![false; d],
            ever_eps: vec![false; d],
            overlap: vec![0.0; ks.len()],
            stat_kept: vec![0.0; ks.len()],
        })
        .collect();
    let (mut nll, mut n_nll) = (0.0, 0u64);
    let mut has_head = true;
    let mut sorted = vec![0f32; d];
    run_batches(
        m,
        &wins,
        req.corpus.batch,
        || {
            let mut h = HookSet::capturing(sites.iter().copied());
            h.want_logits = true;
            Ok(h)
        },
        |chunk, hooks, logits| {
            match logits {
                Some(l) => {
                    let (s, n) = next_token_nll(&l, chunk)?;
                    nll += s;
                    n_nll += n;
                }
                None => has_head = false,
            }
            for (site, a) in sites.iter().zip(acc.iter_mut()) {
                let x = hooks
                    .take(*site)
                    .ok_or_else(|| anyhow!("{site} not captured"))?;
                let rows = valid_rows(&x, chunk)?;
                for row in rows.chunks_exact(d) {
                    let (mut c0, mut ce) = (0, 0);
                    for (i, &v) in row.iter().enumerate() {
                        if v > 0.0 {
                            c0 += 1;
                            a.ever0[i] = true;
                        }
                        if v.abs() > req.eps {
                            ce += 1;
                            a.ever_eps[i] = true;
                        }
                    }
                    a.hist0[c0] += 1;
                    a.hist_eps[ce] += 1;
                    // both rules rank magnitudes (see `Op::TopK`)
                    let mean = row.iter().map(|&v| v.abs() as f64).sum::<f64>() / d as f64;
                    let sd = (row
                        .iter()
                        .map(|&v| (v.abs() as f64 - mean).powi(2))
                        .sum::<f64>()
                        / d as f64)
                        .sqrt();
                    sorted.iter_mut().zip(row).for_each(|(s, v)| *s = v.abs());
                    sorted.sort_unstable_by(|p, q| q.total_cmp(p));
                    for (j, &(k, z)) in ks.iter().enumerate() {
                        let kth = sorted[k - 1];
                        let theta = (mean + z * sd) as f32;
                        let (mut exact, mut both, mut stat) = (0usize, 0usize, 0usize);
                        for &v in row {
                            let v = v.abs();
                            let e = v >= kth;
                            let s = v >= theta;
                            exact += e as usize;
                            stat += s as usize;
                            both += (e && s) as usize;
                        }
                        a.overlap[j] += both as f64 / exact.max(1) as f64;
                        a.stat_kept[j] += stat as f64 / d as f64;
                    }
                }
            }
            Ok(())
        },
        &mut |done| progress("dense", done, total),
    )?;
    let layers: Vec<LayerSparsity> = req
        .layers
        .iter()
        .zip(&acc)
        .map(|(&layer, a)| LayerSparsity {
            layer,
            active: distribution(&a.hist0, d),
            active_eps: distribution(&a.hist_eps, d),
            never_active: a.ever0.iter().filter(|e| !**e).count(),
            never_active_eps: a.ever_eps.iter().filter(|e| !**e).count(),
            agreement: req
                .keep_percent
                .iter()
                .enumerate()
                .map(|(j, &p)| Agreement {
                    keep_percent: p,
                    overlap: a.overlap[j] / total.max(1) as f64,
                    statistical_kept: a.stat_kept[j] / total.max(1) as f64,
                })
                .collect(),
        })
        .collect();
    let dense_loss = (has_head && n_nll > 0).then(|| nll / n_nll as f64);
    let mut topk = Vec::new();
    if dense_loss.is_some() {
        for (j, (&p, &(k, z))) in req.keep_percent.iter().zip(&ks).enumerate() {
            let mut loss = |op: Op, stage: &str| -> Result<f64> {
                let (mut s, mut n) = (0.0, 0u64);
                run_batches(
                    m,
                    &wins,
                    req.corpus.batch,
                    || {
                        let mut h = HookSet::new();
                        for site in &sites {
                            h.intervene(Intervention {
                                site: *site,
                                units: None,
                                positions: None,
                                op: op.clone(),
                            });
                        }
                        Ok(h)
                    },
                    |chunk, _, logits| {
                        let l = logits.ok_or_else(|| anyhow!("no logits"))?;
                        let (a, b) = next_token_nll(&l, chunk)?;
                        s += a;
                        n += b;
                        Ok(())
                    },
                    &mut |done| progress(stage, done, total),
                )?;
                Ok(s / n.max(1) as f64)
            };
            let exact_loss = loss(Op::TopK(k), &format!("exact {p}%"))?;
            let statistical_loss = loss(Op::StatTopK(z as f32), &format!("statistical {p}%"))?;
            let nl = layers.len().max(1) as f64;
            topk.push(TopKLoss {
                keep_percent: p,
                k,
                z,
                exact_loss,
                statistical_loss,
                overlap: layers.iter().map(|l| l.agreement[j].overlap).sum::<f64>() / nl,
                statistical_kept: layers
                    .iter()
                    .map(|l| l.agreement[j].statistical_kept)
                    .sum::<f64>()
                    / nl,
            });
        }
    }
    Ok(SparsityResult {
        tokens: total,
        d_mlp: d,
        eps: req.eps,
        dense_loss,
        layers,
        topk,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantile_matches_known_values() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959963984540054),
            (0.95, 1.6448536269514722),
            (0.001, -3.090232306167813),
            (0.92, 1.4050715603096329),
        ] {
            assert!(
                (normal_quantile(p) - z).abs() < 1e-8,
                "{p}: {}",
                normal_quantile(p)
            );
        }
    }

    #[test]
    fn distribution_quantiles_are_exact() {
        // 10 tokens with 0..=9 active of 10 neurons
        let hist = vec![1u64; 10].into_iter().chain([0]).collect::<Vec<_>>();
        let dd = distribution(&hist, 10);
        assert!((dd.mean - 0.45).abs() < 1e-12);
        assert_eq!((dd.min, dd.p50, dd.max), (0.0, 0.4, 0.9));
    }
}
