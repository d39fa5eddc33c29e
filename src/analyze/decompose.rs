//! Semi-NMF of MLP activations (Shafran, Geiger & Geva, after Ding, Li & Jordan): the
//! activations at one site, X [tokens, d] (Aᵀ in the paper's notation), are factored as
//! X ≈ G Fᵀ with mixed-sign components F [d, k] (directions in neuron space) and non-negative
//! coefficients G [tokens, k] (which tokens use each component). Initialised by k-means (G the
//! cluster indicator + 0.2, as Ding et al.), then alternately F ← Xᵀ G (GᵀG + εI)⁻¹ (closed form)
//! and the multiplicative update G ← G ⊙ sqrt(((XF)⁺ + G(FᵀF)⁻) / ((XF)⁻ + G(FᵀF)⁺ + ε)), which
//! keeps G ≥ 0 and never raises the loss. Held-out text is reconstructed with F fixed (the same
//! G update, from G's least-squares start clipped at 0) and compared with the same-rank k-means
//! baseline (each held-out row replaced by its nearest centre), by R² against the fit mean.
//! *(choice)* No winner-take-all sparsification of F (the authors' code keeps 1 % of each
//! column): plain semi-NMF, whose loss is monotone, so convergence is well defined.
//!
//! Components are units `L.cK`: their top tokens (largest G), and what they promote through the
//! down projection, W_U·diag(g)·W_outᵀ·F[:, k], as `describe` reads a neuron.
//!
//! Memory: the fit activations (tokens × d floats; bound them with `--max-tokens`) plus G.

use super::cluster::solve_spd;
use super::describe::{decoder, select, write_matrix, TokenScore};
use super::pass::{
    read_windows, run_batches, split_heldout, token_count, valid_rows, CorpusSpec, Win,
};
use crate::error::user_error;
use crate::model::{HookSet, Model, Site, SiteKind};
use crate::render;
use anyhow::{anyhow, Result};
use candle_core::{DType, Device, Tensor, D};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct DecomposeRequest {
    pub corpus: CorpusSpec,
    pub site: Site,
    pub k: usize,
    pub max_iterations: usize,
    /// Stop when the loss falls by less than this fraction in an iteration.
    pub tolerance: f64,
    pub top: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentTop {
    pub token: String,
    pub context: String,
    /// G, the component's coefficient at this token.
    pub activation: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Component {
    /// `L.cK`
    pub id: String,
    pub top: Vec<ComponentTop>,
    pub promotes: Vec<TokenScore>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecomposeResult {
    pub k: usize,
    pub site: String,
    pub fit_tokens: usize,
    pub heldout_tokens: usize,
    pub iterations: usize,
    pub converged: bool,
    /// ‖X − G Fᵀ‖² / ‖X − mean‖² on the fit text.
    pub fit_r2: f64,
    pub heldout_r2: f64,
    pub kmeans_heldout_r2: f64,
    pub min_coefficient: f32,
    pub components: Vec<Component>,
    /// Component against difference-in-means steering (`--concept`; filled by the caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steering: Option<super::steering::Steering>,
    /// F [d, k] (column K is component K), for writing.
    #[serde(skip)]
    pub f: Vec<f32>,
    #[serde(skip)]
    pub d: usize,
}

const EPS: f64 = 1e-9;

fn pos(m: &Tensor) -> Result<Tensor> {
    Ok(((m.abs()? + m)? * 0.5)?)
}

fn neg(m: &Tensor) -> Result<Tensor> {
    Ok(((m.abs()? - m)? * 0.5)?)
}

/// (GᵀG + εI)⁻¹ (k × k, by Cholesky), ε a millionth of the mean diagonal.
fn inverse(gtg: &Tensor) -> Result<Tensor> {
    let k = gtg.dim(0)?;
    let mut v: Vec<f64> = gtg.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let scale = (0..k).map(|i| v[i * k + i]).sum::<f64>() / k.max(1) as f64;
    (0..k).for_each(|i| v[i * k + i] += 1e-6 * scale.max(EPS));
    let eye: Vec<f64> = (0..k * k)
        .map(|i| if i / k == i % k { 1.0 } else { 0.0 })
        .collect();
    let inv = solve_spd(&v, &eye, k, k)?;
    let out: Vec<f32> = inv.iter().map(|&x| x as f32).collect();
    Ok(Tensor::from_vec(out, (k, k), gtg.device())?)
}

/// One multiplicative update of G for X ≈ G Fᵀ with F fixed.
fn update_g(x: &Tensor, f: &Tensor, g: &Tensor) -> Result<Tensor> {
    let xf = x.matmul(f)?;
    let ftf = f.t()?.matmul(f)?;
    let num = (pos(&xf)? + g.matmul(&neg(&ftf)?)?)?;
    let den = ((neg(&xf)? + g.matmul(&pos(&ftf)?)?)? + EPS)?;
    Ok((g * (num / den)?.sqrt()?)?)
}

fn sq_err(x: &Tensor, g: &Tensor, f: &Tensor) -> Result<f64> {
    let r = (x - g.matmul(&f.t()?)?)?;
    Ok(r.sqr()?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?)
}

fn total_ss(x: &Tensor, mean: &Tensor) -> Result<f64> {
    Ok(x.broadcast_sub(mean)?
        .sqr()?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?)
}

/// k-means on the rows of x [n, d] (k-means++ seeding, Lloyd with matmul distances):
/// the centres [k, d] and labels.
fn kmeans_rows(x: &Tensor, k: usize, iters: usize, seed: u64) -> Result<(Tensor, Vec<u32>)> {
    let (n, _) = x.dims2()?;
    let norms = x.sqr()?.sum_keepdim(1)?; // [n, 1]
    let mut rng = crate::rng::Rng::new(seed);
    let mut idx = vec![rng.below(n) as u32];
    let mut near: Vec<f32> = vec![f32::INFINITY; n];
    for _ in 1..k {
        let last = x.get(*idx.last().unwrap_or(&0) as usize)?.unsqueeze(0)?;
        let d2: Vec<f32> = x.broadcast_sub(&last)?.sqr()?.sum(1)?.to_vec1()?;
        near.iter_mut().zip(&d2).for_each(|(a, &b)| *a = a.min(b));
        let total: f64 = near.iter().map(|&v| v as f64).sum();
        let mut u = rng.uniform() as f64 * total;
        let mut pick = n - 1;
        for (i, &w) in near.iter().enumerate() {
            if u < w as f64 {
                pick = i;
                break;
            }
            u -= w as f64;
        }
        idx.push(pick as u32);
    }
    let mut c = x.index_select(&Tensor::new(idx.as_slice(), x.device())?, 0)?;
    let mut labels = vec![0u32; n];
    for _ in 0..iters {
        // ‖x − c‖² = ‖x‖² − 2 x·c + ‖c‖²
        let d2 = norms
            .broadcast_sub(&(x.matmul(&c.t()?)? * 2.0)?)?
            .broadcast_add(&c.sqr()?.sum_keepdim(1)?.t()?)?;
        let new: Vec<u32> = d2.argmin(D::Minus1)?.to_vec1()?;
        let changed = new != labels;
        labels = new;
        // centres: means of members (an empty cluster keeps its centre)
        let mut onehot = vec![0f32; n * k];
        labels
            .iter()
            .enumerate()
            .for_each(|(i, &l)| onehot[i * k + l as usize] = 1.0);
        let oh = Tensor::from_vec(onehot, (n, k), x.device())?;
        let counts: Vec<f32> = oh.sum(0)?.to_vec1()?;
        let sums = oh.t()?.matmul(x)?;
        let keep: Vec<f32> = counts
            .iter()
            .map(|&c| if c > 0.0 { 0.0 } else { 1.0 })
            .collect();
        let inv: Vec<f32> = counts
            .iter()
            .map(|&c| if c > 0.0 { 1.0 / c } else { 0.0 })
            .collect();
        let dev = x.device();
        c = (sums.broadcast_mul(&Tensor::from_vec(inv, (k, 1), dev)?)?
            + c.broadcast_mul(&Tensor::from_vec(keep, (k, 1), dev)?)?)?;
        if !changed {
            break;
        }
    }
    Ok((c, labels))
}

/// The fit or held-out activations of `site` as one [tokens, d] tensor, and where each row is.
fn collect(
    m: &Model,
    wins: &[Win],
    site: Site,
    batch: usize,
    stage: &str,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<(Tensor, Vec<(usize, usize)>)> {
    let total = token_count(wins);
    let mut rows: Vec<f32> = Vec::new();
    let mut at = Vec::new();
    let mut base = 0;
    run_batches(
        m,
        wins,
        batch,
        || Ok(HookSet::capturing([site])),
        |chunk, hooks, _| {
            let x = hooks
                .take(site)
                .ok_or_else(|| anyhow!("{site} not captured"))?;
            rows.extend(valid_rows(&x, chunk)?);
            for (bi, w) in chunk.iter().enumerate() {
                (0..w.len).for_each(|p| at.push((base + bi, w.start + p)));
            }
            base += chunk.len();
            Ok(())
        },
        &mut |done| progress(stage, done, total),
    )?;
    let d = m.site_dim(site);
    let n = rows.len() / d.max(1);
    Ok((Tensor::from_vec(rows, (n, d), &Device::Cpu)?, at))
}

pub fn decompose(
    m: &Model,
    req: &DecomposeRequest,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<DecomposeResult> {
    let Site::Block(layer, SiteKind::MlpPost) = req.site else {
        return Err(user_error(format!(
            "--site {}: decompose reads a layer's neurons, blocks.L.mlp.hook_post",
            req.site
        )));
    };
    if !m.sites().contains(&req.site) {
        return Err(user_error(format!(
            "this model has no hook point {}",
            req.site
        )));
    }
    let wins = read_windows(m, &req.corpus)?;
    let (fit, held) = split_heldout(&wins, 5);
    let (x, at) = collect(m, &fit, req.site, req.corpus.batch, "fit", progress)?;
    let (xh, _) = collect(m, &held, req.site, req.corpus.batch, "held-out", progress)?;
    let (n, d) = x.dims2()?;
    let k = req.k;
    if k == 0 || k > n || k > d {
        return Err(user_error(format!(
            "--k {k}: the fit text has {n} tokens and the site {d} units; choose 1..={}",
            n.min(d)
        )));
    }
    let mean = x.mean_keepdim(0)?;
    let sst = total_ss(&x, &mean)?.max(EPS);
    let ssth = total_ss(&xh, &mean)?.max(EPS);

    // k-means: the initialisation and the baseline
    let (centres, labels) = kmeans_rows(&x, k, 100, req.seed)?;
    let dh = xh
        .sqr()?
        .sum_keepdim(1)?
        .broadcast_sub(&(xh.matmul(&centres.t()?)? * 2.0)?)?
        .broadcast_add(&centres.sqr()?.sum_keepdim(1)?.t()?)?;
    let near = dh.min(D::Minus1)?.clamp(0f32, f32::MAX)?;
    let kmeans_heldout_r2 = 1.0 - near.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()? / ssth;

    let mut g0 = vec![0.2f32; n * k];
    labels
        .iter()
        .enumerate()
        .for_each(|(i, &l)| g0[i * k + l as usize] += 1.0);
    let mut g = Tensor::from_vec(g0, (n, k), &Device::Cpu)?;
    let mut f = centres.t()?.contiguous()?;
    let mut last = f64::INFINITY;
    let (mut iterations, mut converged) = (0, false);
    for it in 0..req.max_iterations {
        f = x.t()?.matmul(&g)?.matmul(&inverse(&g.t()?.matmul(&g)?)?)?;
        g = update_g(&x, &f, &g)?;
        iterations = it + 1;
        let loss = sq_err(&x, &g, &f)?;
        progress("semi-NMF", iterations as u64, req.max_iterations as u64);
        if last.is_finite() && (last - loss) <= req.tolerance * last {
            converged = true;
            break;
        }
        last = loss;
    }
    let fit_r2 = 1.0 - sq_err(&x, &g, &f)? / sst;
    // held out: F fixed, G from the clipped least-squares start, then the same updates
    let ftf_inv = inverse(&f.t()?.matmul(&f)?)?;
    let mut gh = xh.matmul(&f)?.matmul(&ftf_inv)?.clamp(1e-4f32, f32::MAX)?;
    for _ in 0..200 {
        gh = update_g(&xh, &f, &gh)?;
    }
    let heldout_r2 = 1.0 - sq_err(&xh, &gh, &f)? / ssth;
    let min_coefficient = g.min_keepdim(0)?.min(1)?.flatten_all()?.to_vec1::<f32>()?[0]
        .min(gh.flatten_all()?.min(0)?.to_scalar::<f32>()?);

    // components as units
    let (dec, _) = decoder(m)?;
    let dec = dec.to_device(&Device::Cpu)?;
    let w = write_matrix(m, layer)?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?; // [d, d_model]
    let dirs = f.t()?.matmul(&w)?; // [k, d_model]
    let scores = dec
        .to_dtype(DType::F32)?
        .matmul(&dirs.t()?)?
        .t()?
        .contiguous()?; // [k, vocab]
    let gv: Vec<f32> = g.t()?.contiguous()?.flatten_all()?.to_vec1()?;
    let mut components = Vec::with_capacity(k);
    for c in 0..k {
        let srow: Vec<f32> = scores.get(c)?.to_vec1()?;
        let promotes = select(&srow, 10, true)
            .into_iter()
            .map(|s| TokenScore {
                token: m.tokenizer.token_text(s.id),
                id: s.id,
                score: s.score,
            })
            .collect();
        let top = select(&gv[c * n..(c + 1) * n], req.top, true)
            .into_iter()
            .map(|s| {
                let (wi, p) = at[s.id as usize];
                let toks = &fit[wi].tokens;
                let lo = p.saturating_sub(8);
                let hi = (p + 5).min(toks.len());
                let ids: Vec<Option<u32>> = toks[lo..hi].iter().map(|&t| Some(t)).collect();
                let texts = render::token_texts(Some(&m.tokenizer), &ids);
                let sep = render::separator(Some(&m.tokenizer), &ids);
                ComponentTop {
                    token: m.tokenizer.token_text(toks[p]),
                    context: render::marked(&texts, p - lo, sep),
                    activation: s.score,
                }
            })
            .collect();
        components.push(Component {
            id: format!("{layer}.c{c}"),
            top,
            promotes,
        });
    }
    Ok(DecomposeResult {
        k,
        site: req.site.to_string(),
        fit_tokens: n,
        heldout_tokens: xh.dim(0)?,
        iterations,
        converged,
        fit_r2,
        heldout_r2,
        kmeans_heldout_r2,
        min_coefficient,
        components,
        steering: None,
        f: f.flatten_all()?.to_vec1()?,
        d,
    })
}

/// G's correlation with one unit's activations: for tests and reports, the Pearson r of each
/// component's coefficients with `unit`'s activation over `x`'s rows.
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut c, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        c += x * y;
        va += x * x;
        vb += y * y;
    }
    c / (va * vb).sqrt().max(1e-300)
}
