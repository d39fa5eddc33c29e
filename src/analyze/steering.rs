//! Causal steering with a semi-NMF component against difference-in-means steering on the same
//! concept (`ftri decompose --concept target.txt control.txt`).
//!
//! Both directions live in neuron space (the site `blocks.L.mlp.hook_post`): the component is
//! F's column K, the concept direction is Δμ = mean hook_post over the target stimuli' tokens −
//! the same over the fit half of the control stimuli. Steering adds a direction *to the MLP
//! output*: the vector r = v · W_down (the down projection without its bias, with a post-MLP
//! norm's gain where the architecture has one) is added to `blocks.L.hook_mlp_out` at every
//! position. Without a post-MLP norm this equals adding v to hook_post (the down projection is
//! linear), so it is exactly "the component's direction added to the MLP output".
//!
//! Same norm: both residual vectors are rescaled to ‖Δμ · W_down‖, so at scale 1 the
//! difference-in-means steer adds exactly what the target text adds on average; scale s
//! multiplies that.
//!
//! The concept's tokens are the model's own, independent of either direction: the `tokens`
//! vocabulary entries whose mean log-probability (over every position) rises most from the
//! control text's fit half to the target text. The effect of a steer is the change of the log of
//! their summed probability, log Σ_t p(t) (nats, averaged over every position of the held-out
//! control half), steered minus unsteered. Invariants: the held-out control prompts are never used to
//! build Δμ or pick the concept tokens; padding positions never enter a mean.

use crate::error::user_error;
use crate::model::{HookSet, Intervention, Model, Op, Site, SiteKind};
use anyhow::{anyhow, Result};
use candle_core::{DType, Device, Tensor, D};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct Steering {
    /// The component steered with (`L.cK`).
    pub component: String,
    /// Cosine between the component's and the difference-in-means direction (neuron space).
    pub cosine: f64,
    /// Multiples of ‖Δμ · W_down‖ added to the MLP output.
    pub scales: Vec<f32>,
    /// Change of log Σ p(concept tokens) (nats, mean over positions) on held-out control prompts, per scale.
    pub component_effect: Vec<f64>,
    pub diff_means_effect: Vec<f64>,
    pub concept_tokens: Vec<String>,
    pub target_prompts: usize,
    pub heldout_prompts: usize,
}

/// Non-empty lines of a stimulus file, tokenized; a user error when it has none.
fn prompts(m: &Model, path: &Path, n_ctx: usize) -> Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| user_error(format!("--concept {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut ids = m.tokenizer.encode(line)?;
        ids.truncate(n_ctx);
        if !ids.is_empty() {
            out.push(ids);
        }
    }
    if out.is_empty() {
        return Err(user_error(format!(
            "--concept {}: no stimulus (one per line)",
            path.display()
        )));
    }
    Ok(out)
}

/// Gets a token's captured site row (when asked for) and its log-probabilities.
type TokenFn<'a> = dyn FnMut(Option<&[f32]>, &[f32]) + 'a;

/// Run `seqs` in batches with `hooks()`; `f` gets each real (unpadded) token's captured row of
/// `site` (when captured) and log-probabilities row.
fn each_token(
    m: &Model,
    seqs: &[Vec<u32>],
    site: Option<Site>,
    hooks: &dyn Fn() -> HookSet,
    f: &mut TokenFn,
) -> Result<()> {
    for chunk in seqs.chunks(8) {
        let mut h = hooks();
        if let Some(s) = site {
            h.capture(s);
        }
        h.want_logits = true;
        let logits = m
            .forward(&m.batch(chunk)?, &mut h)?
            .ok_or_else(|| anyhow!("no logits"))?;
        let lp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
        let (_, t, v) = lp.dims3()?;
        let lp: Vec<f32> = lp.flatten_all()?.to_vec1()?;
        let x: Option<(Vec<f32>, usize)> = match site {
            Some(s) => {
                let x = h.take(s).ok_or_else(|| anyhow!("{s} not captured"))?;
                let d = x.dim(2)?;
                Some((x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?, d))
            }
            None => None,
        };
        for (b, s) in chunk.iter().enumerate() {
            for p in 0..s.len() {
                let row = &lp[(b * t + p) * v..(b * t + p + 1) * v];
                let xr = x
                    .as_ref()
                    .map(|(x, d)| &x[(b * t + p) * d..(b * t + p + 1) * d]);
                f(xr, row);
            }
        }
    }
    Ok(())
}

/// Mean hook_post and mean log-prob rows over every token of `seqs`.
fn means(m: &Model, seqs: &[Vec<u32>], site: Site) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut mx, mut ml, mut n) = (Vec::<f64>::new(), Vec::<f64>::new(), 0f64);
    each_token(m, seqs, Some(site), &HookSet::new, &mut |x, lp| {
        let x = x.unwrap_or(&[]);
        if mx.is_empty() {
            mx = vec![0.0; x.len()];
            ml = vec![0.0; lp.len()];
        }
        mx.iter_mut().zip(x).for_each(|(a, &b)| *a += b as f64);
        ml.iter_mut().zip(lp).for_each(|(a, &b)| *a += b as f64);
        n += 1.0;
    })?;
    mx.iter_mut().chain(ml.iter_mut()).for_each(|a| *a /= n);
    Ok((mx, ml))
}

/// log Σ p(`tokens`), averaged over every position of `seqs`, with `add` added to `mlp_out`.
fn concept_logprob(
    m: &Model,
    seqs: &[Vec<u32>],
    mlp_out: Site,
    add: Option<Vec<f32>>,
    tokens: &[usize],
) -> Result<f64> {
    let hooks = move || {
        let mut h = HookSet::new();
        if let Some(v) = &add {
            h.intervene(Intervention {
                site: mlp_out,
                units: None,
                positions: None,
                op: Op::AddVector(v.clone()),
            });
        }
        h
    };
    let (mut s, mut n) = (0f64, 0f64);
    each_token(m, seqs, None, &hooks, &mut |_, lp| {
        // log Σ p over the set (log-sum-exp), so the tokens the concept really raises dominate
        // and a weak member's fall does not mask them
        let top = tokens
            .iter()
            .map(|&t| lp[t] as f64)
            .fold(f64::MIN, f64::max);
        s += top
            + tokens
                .iter()
                .map(|&t| (lp[t] as f64 - top).exp())
                .sum::<f64>()
                .ln();
        n += 1.0;
    })?;
    Ok(s / n.max(1.0))
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-300)
}

/// Steer with component `component` (or the one most aligned with the concept) and with Δμ.
/// `f` is F [d, k] row-major, `w` the write matrix [d, d_model] of the layer.
#[allow(clippy::too_many_arguments)]
pub fn steer(
    m: &Model,
    layer: usize,
    f: &[f32],
    k: usize,
    w: &Tensor,
    concept: (&Path, &Path),
    component: Option<usize>,
    scales: &[f32],
    n_tokens: usize,
) -> Result<Steering> {
    let post = Site::Block(layer, SiteKind::MlpPost);
    let mlp_out = Site::Block(layer, SiteKind::MlpOut);
    if !m.sites().contains(&mlp_out) {
        return Err(user_error(format!(
            "this model has no hook point {mlp_out}"
        )));
    }
    let target = prompts(m, concept.0, m.cfg.n_ctx)?;
    let control = prompts(m, concept.1, m.cfg.n_ctx)?;
    if control.len() < 2 {
        return Err(user_error(format!(
            "--concept {}: at least 2 control stimuli (half build the direction, half are held out)",
            concept.1.display()
        )));
    }
    // fixed interleaved split: even lines fit, odd lines held out
    let fit: Vec<Vec<u32>> = control.iter().step_by(2).cloned().collect();
    let held: Vec<Vec<u32>> = control.iter().skip(1).step_by(2).cloned().collect();
    let (mt, lt) = means(m, &target, post)?;
    let (mc, lc) = means(m, &fit, post)?;
    let dmu: Vec<f64> = mt.iter().zip(&mc).map(|(a, b)| a - b).collect();
    let d = dmu.len();
    let column = |c: usize| -> Vec<f64> { (0..d).map(|i| f[i * k + c] as f64).collect() };
    let cos: Vec<f64> = (0..k).map(|c| cosine(&column(c), &dmu)).collect();
    let chosen = match component {
        Some(c) if c >= k => {
            return Err(user_error(format!(
                "--component {c}: there are {k} components (0..{k})"
            )))
        }
        Some(c) => c,
        None => (0..k)
            .max_by(|&a, &b| cos[a].total_cmp(&cos[b]))
            .unwrap_or(0),
    };
    let mut delta: Vec<(usize, f64)> = lt.iter().zip(&lc).map(|(a, b)| a - b).enumerate().collect();
    delta.sort_by(|a, b| b.1.total_cmp(&a.1));
    let tokens: Vec<usize> = delta.iter().take(n_tokens.max(1)).map(|t| t.0).collect();

    // residual directions through the down projection, both at ‖Δμ · W‖
    let to_resid = |v: &[f64]| -> Result<Vec<f32>> {
        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        let t = Tensor::from_vec(v, (1, d), &Device::Cpu)?;
        Ok(t.matmul(w)?.flatten_all()?.to_vec1()?)
    };
    let r_mu = to_resid(&dmu)?;
    let r_c = to_resid(&column(chosen))?;
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let target_norm = norm(&r_mu);
    let r_c: Vec<f32> = {
        let s = target_norm / norm(&r_c).max(1e-30);
        r_c.iter().map(|&x| (x as f64 * s) as f32).collect()
    };
    let base = concept_logprob(m, &held, mlp_out, None, &tokens)?;
    let (mut ce, mut de) = (Vec::new(), Vec::new());
    for &s in scales {
        let scaled = |v: &[f32]| v.iter().map(|&x| x * s).collect::<Vec<f32>>();
        ce.push(concept_logprob(m, &held, mlp_out, Some(scaled(&r_c)), &tokens)? - base);
        de.push(concept_logprob(m, &held, mlp_out, Some(scaled(&r_mu)), &tokens)? - base);
    }
    Ok(Steering {
        component: format!("{layer}.c{chosen}"),
        cosine: cos[chosen],
        scales: scales.to_vec(),
        component_effect: ce,
        diff_means_effect: de,
        concept_tokens: tokens
            .iter()
            .map(|&t| m.tokenizer.token_text(t as u32))
            .collect(),
        target_prompts: target.len(),
        heldout_prompts: held.len(),
    })
}
