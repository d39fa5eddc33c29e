//! MoEfication: split each dense FFN into K equal experts by partitioning its neurons, each
//! expert keeping its neurons' input and output weights, so that all experts together are the
//! dense layer exactly; then route each token to r of them and measure language modelling loss
//! on held-out text for r = 1..K against the dense model.
//!
//! Partition (MoEfication's ParamSplit, or co-activation): balanced k-means on the neurons' key
//! vectors (W_in columns, the gate's for gated MLPs, scaled to unit length), or on the rows of
//! their correlation matrix over the fit text. Routing, at every chosen layer at once, on
//! `mlp.hook_post`: the oracle keeps the r experts whose activations have the largest norm on the
//! token (MoEfication's ground-truth selection); the fitted router predicts each expert's norm
//! linearly from the residual stream that enters the block's MLP (`hook_resid_mid`, or
//! `hook_resid_pre` for parallel blocks), least squares with a small ridge on the fit text's
//! dense activations *(choice: MoEfication trains an MLP router with BCE; a linear least-squares
//! router is its simplest form, and needs no training loop)*.
//!
//! Invariants: experts of a layer differ in size by at most one neuron; with r = K nothing is
//! zeroed and the output is the dense model's bit for bit; the fit text (4 windows in 5) and the
//! held-out text (every 5th) share no window.

use super::cluster::{balanced_kmeans, solve_spd, CoStats};
use super::pass::{
    next_token_nll, read_windows, run_batches, split_heldout, token_count, valid_rows, CorpusSpec,
    Win,
};
use crate::error::user_error;
use crate::model::{HookSet, Intervention, Model, Op, Route, Router, Site, SiteKind};
use anyhow::{anyhow, Result};
use candle_core::{DType, Tensor};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Keys,
    Coactivation,
}

impl Method {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "keys" => Ok(Method::Keys),
            "coactivation" => Ok(Method::Coactivation),
            o => Err(user_error(format!(
                "unknown --method `{o}` (keys, coactivation)"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Method::Keys => "keys",
            Method::Coactivation => "coactivation",
        }
    }
}

#[derive(Debug, Clone)]
pub struct MoefyRequest {
    pub corpus: CorpusSpec,
    pub layers: Vec<usize>,
    pub experts: usize,
    pub method: Method,
    /// Experts per token to evaluate; `None`: 1..=K when K ≤ 16, else powers of two and K.
    pub r_values: Option<Vec<usize>>,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    pub r: usize,
    pub router: &'static str,
    /// Mean next-token loss (nats) on the held-out text.
    pub loss: f64,
    /// Fraction of each routed FFN's neurons (and parameters) computed per token: r/K.
    pub active_fraction: f64,
}

/// One layer's experts, as neuron ids.
#[derive(Debug, Clone, Serialize)]
pub struct LayerExperts {
    pub layer: usize,
    pub experts: Vec<Vec<String>>,
    /// Fraction of the variance of the experts' norms the fitted router explains (fit text).
    pub router_r2: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MoefyResult {
    pub experts: usize,
    pub method: &'static str,
    pub layers: Vec<usize>,
    pub fit_tokens: u64,
    pub heldout_tokens: u64,
    pub dense_loss: f64,
    pub curve: Vec<CurvePoint>,
    pub partition: Vec<LayerExperts>,
}

/// The r values evaluated by default.
fn default_r(k: usize) -> Vec<usize> {
    if k <= 16 {
        return (1..=k).collect();
    }
    let mut v: Vec<usize> = (0..).map(|i| 1usize << i).take_while(|&r| r < k).collect();
    v.push(k);
    v
}

/// The site whose value enters block `l`'s MLP (before its norm).
fn router_input(m: &Model, l: usize) -> Site {
    let mid = Site::Block(l, SiteKind::ResidMid);
    if m.sites().contains(&mid) {
        mid
    } else {
        Site::Block(l, SiteKind::ResidPre)
    }
}

/// The interventions that route every chosen layer with `r` experts per token.
pub fn routing(
    parts: &[(Site, Vec<u32>)],
    k: usize,
    r: usize,
    routers: Option<&[Router]>,
) -> Vec<Intervention> {
    parts
        .iter()
        .enumerate()
        .map(|(i, (site, groups))| Intervention {
            site: *site,
            units: None,
            positions: None,
            op: Op::Route(Route {
                groups: groups.clone(),
                n_experts: k,
                r,
                router: routers.map(|rs| rs[i].clone()),
            }),
        })
        .collect()
}

fn loss_with(
    m: &Model,
    wins: &[Win],
    batch: usize,
    ivs: &[Intervention],
    stage: &str,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<f64> {
    let total = token_count(wins);
    let (mut s, mut n) = (0.0, 0u64);
    run_batches(
        m,
        wins,
        batch,
        || {
            let mut h = HookSet::new();
            ivs.iter().for_each(|iv| h.intervene(iv.clone()));
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
    if n == 0 {
        return Err(user_error(
            "the held-out text has no token with a next token in its window; give more text",
        ));
    }
    Ok(s / n as f64)
}

pub fn moefy(
    m: &Model,
    req: &MoefyRequest,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<MoefyResult> {
    if m.net.unembed.is_none() {
        return Err(user_error(format!(
            "{} has no LM head: moefy measures language modelling loss",
            m.id
        )));
    }
    let d = m.cfg.d_mlp;
    let k = req.experts;
    if k == 0 || k > d {
        return Err(user_error(format!(
            "--experts {k}: a layer has {d} neurons; choose 1..={d}"
        )));
    }
    let sites: Vec<Site> = req
        .layers
        .iter()
        .map(|&l| Site::Block(l, SiteKind::MlpPost))
        .collect();
    let all = m.sites();
    if let Some(s) = sites.iter().find(|s| !all.contains(s)) {
        return Err(user_error(format!(
            "this model has no hook point {s} (a mixture-of-experts layer is already experts)"
        )));
    }
    let r_values = match &req.r_values {
        Some(v) => {
            if let Some(r) = v.iter().find(|&&r| r == 0 || r > k) {
                return Err(user_error(format!("--r {r}: choose 1..={k}")));
            }
            v.clone()
        }
        None => default_r(k),
    };
    let wins = read_windows(m, &req.corpus)?;
    let (fit, held) = split_heldout(&wins, 5);
    let inputs: Vec<Site> = req.layers.iter().map(|&l| router_input(m, l)).collect();

    // Partition.
    let mut parts: Vec<(Site, Vec<u32>)> = Vec::new();
    let co = if req.method == Method::Coactivation {
        let mut stats: Vec<CoStats> = sites.iter().map(|_| CoStats::new(d)).collect();
        let total = token_count(&fit);
        run_batches(
            m,
            &fit,
            req.corpus.batch,
            || Ok(HookSet::capturing(sites.iter().copied())),
            |chunk, hooks, _| {
                for (site, st) in sites.iter().zip(stats.iter_mut()) {
                    let x = hooks
                        .take(*site)
                        .ok_or_else(|| anyhow!("{site} not captured"))?;
                    st.add(&valid_rows(&x, chunk)?)?;
                }
                Ok(())
            },
            &mut |done| progress("co-activation", done, total),
        )?;
        Some(stats)
    } else {
        None
    };
    for (i, (&l, site)) in req.layers.iter().zip(&sites).enumerate() {
        let (points, dim) = match &co {
            Some(stats) => (stats[i].correlations(), d),
            None => {
                let keys = m.net.blocks[l].mlp.pre.w.t()?.to_dtype(DType::F64)?;
                let dm = keys.dim(1)?;
                let mut v: Vec<f64> = keys.flatten_all()?.to_vec1()?;
                for row in v.chunks_exact_mut(dm) {
                    let n = row.iter().map(|x| x * x).sum::<f64>().sqrt();
                    if n > 0.0 {
                        row.iter_mut().for_each(|x| *x /= n);
                    }
                }
                (v, dm)
            }
        };
        let c = balanced_kmeans(&points, dim, k, req.seed);
        parts.push((*site, c.labels.iter().map(|&g| g as u32).collect()));
    }
    drop(co);

    // Routers: least squares from the MLP's input stream to each expert's norm, fit text.
    let mut xtx: Vec<Vec<f64>> = Vec::new();
    let mut xty: Vec<Vec<f64>> = Vec::new();
    let mut yy: Vec<(Vec<f64>, Vec<f64>)> = Vec::new(); // Σy, Σy² per expert
    let mut n_fit = 0u64;
    let onehots: Vec<Tensor> = parts
        .iter()
        .map(|(_, g)| {
            let mut o = vec![0f32; d * k];
            g.iter()
                .enumerate()
                .for_each(|(i, &e)| o[i * k + e as usize] = 1.0);
            Tensor::from_vec(o, (d, k), m.device())
        })
        .collect::<candle_core::Result<_>>()?;
    let fit_total = token_count(&fit);
    run_batches(
        m,
        &fit,
        req.corpus.batch,
        || Ok(HookSet::capturing(sites.iter().chain(&inputs).copied())),
        |chunk, hooks, _| {
            for (i, (site, input)) in sites.iter().zip(&inputs).enumerate() {
                let a = hooks
                    .take(*site)
                    .ok_or_else(|| anyhow!("{site} not captured"))?;
                let x = hooks
                    .take(*input)
                    .ok_or_else(|| anyhow!("{input} not captured"))?;
                let din = x.dim(2)?;
                let xr = valid_rows(&x, chunk)?;
                let ar = valid_rows(&a, chunk)?;
                let n = xr.len() / din;
                let dev = m.device();
                let y = Tensor::from_vec(ar, (n, d), dev)?
                    .sqr()?
                    .matmul(&onehots[i])?
                    .sqrt()?;
                let x1 = Tensor::cat(
                    &[
                        Tensor::from_vec(xr, (n, din), dev)?,
                        Tensor::ones((n, 1), DType::F32, dev)?,
                    ],
                    1,
                )?;
                let g: Vec<f32> = x1.t()?.matmul(&x1)?.flatten_all()?.to_vec1()?;
                let c: Vec<f32> = x1.t()?.matmul(&y)?.flatten_all()?.to_vec1()?;
                let yv: Vec<f32> = y.flatten_all()?.to_vec1()?;
                if xtx.len() <= i {
                    xtx.push(vec![0.0; g.len()]);
                    xty.push(vec![0.0; c.len()]);
                    yy.push((vec![0.0; k], vec![0.0; k]));
                }
                xtx[i].iter_mut().zip(&g).for_each(|(a, &b)| *a += b as f64);
                xty[i].iter_mut().zip(&c).for_each(|(a, &b)| *a += b as f64);
                for row in yv.chunks_exact(k) {
                    for (e, &v) in row.iter().enumerate() {
                        yy[i].0[e] += v as f64;
                        yy[i].1[e] += (v as f64).powi(2);
                    }
                }
                if i == 0 {
                    n_fit += n as u64;
                }
            }
            Ok(())
        },
        &mut |done| progress("fit routers", done, fit_total),
    )?;
    let mut routers = Vec::new();
    let mut r2s = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let p = (xtx[i].len() as f64).sqrt() as usize;
        // ridge: 1e-4 of the mean diagonal, on the weights only, keeps the solve well posed
        let lam = 1e-4 * (0..p - 1).map(|j| xtx[i][j * p + j]).sum::<f64>() / (p - 1).max(1) as f64;
        let mut a = xtx[i].clone();
        (0..p - 1).for_each(|j| a[j * p + j] += lam.max(1e-9));
        // the bias row: a tiny ridge too, so a constant input column cannot make it singular
        a[(p - 1) * p + p - 1] += 1e-9;
        let wv64 = solve_spd(&a, &xty[i], p, k)?;
        let w = |r: usize, c: usize| wv64[r * k + c];
        // R² = 1 − SSE/SST, SSE = Σy² − 2 wᵀXᵀy + wᵀXᵀXw per expert
        let mut r2 = 0.0;
        for e in 0..k {
            let (sy, syy) = (yy[i].0[e], yy[i].1[e]);
            let nf = n_fit.max(1) as f64;
            let sst = syy - sy * sy / nf;
            let mut wxy = 0.0;
            let mut wxxw = 0.0;
            for r in 0..p {
                wxy += w(r, e) * xty[i][r * k + e];
                for c in 0..p {
                    wxxw += w(r, e) * xtx[i][r * p + c] * w(c, e);
                }
            }
            let sse = syy - 2.0 * wxy + wxxw;
            r2 += if sst > 0.0 { 1.0 - sse / sst } else { 0.0 };
        }
        r2s.push(r2 / k as f64);
        let wv: Vec<f32> = wv64.iter().map(|&x| x as f32).collect();
        routers.push(Router {
            input: *input,
            w: Tensor::from_vec(wv, (p, k), m.device())?,
        });
    }

    // Loss on the held-out text.
    let dense_loss = loss_with(m, &held, req.corpus.batch, &[], "dense", progress)?;
    let mut curve = Vec::new();
    for &r in &r_values {
        for (name, rs) in [("oracle", None), ("fitted", Some(routers.as_slice()))] {
            let ivs = routing(&parts, k, r, rs);
            let loss = loss_with(
                m,
                &held,
                req.corpus.batch,
                &ivs,
                &format!("r={r} {name}"),
                progress,
            )?;
            curve.push(CurvePoint {
                r,
                router: name,
                loss,
                active_fraction: r as f64 / k as f64,
            });
        }
    }
    let partition = req
        .layers
        .iter()
        .zip(&parts)
        .zip(&r2s)
        .map(|((&layer, (_, g)), &router_r2)| {
            let mut experts = vec![Vec::new(); k];
            g.iter()
                .enumerate()
                .for_each(|(i, &e)| experts[e as usize].push(format!("{layer}.{i}")));
            LayerExperts {
                layer,
                experts,
                router_r2,
            }
        })
        .collect();
    Ok(MoefyResult {
        experts: k,
        method: req.method.name(),
        layers: req.layers.clone(),
        fit_tokens: fit_total,
        heldout_tokens: token_count(&held),
        dense_loss,
        curve,
        partition,
    })
}
