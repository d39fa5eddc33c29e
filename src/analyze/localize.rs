//! The functional localizer: which units respond to a concept or skill. Each stimulus is reduced
//! to one value per unit (its mean, max or last-token activation; or, for `attribution`, the
//! activation × gradient of the stimulus's log-likelihood summed over its tokens), then target
//! and control sets are compared per unit with Welch's t, Cohen's d and AUROC; p-values get
//! Benjamini–Hochberg q-values over all units tested.

use super::stats::{bh_qvalues, welch};
use crate::error::user_error;
use crate::model::{HookSet, Model, Site, SiteKind};
use anyhow::Result;
use candle_core::{DType, Tensor, D};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Stimulus {
    pub text: String,
    /// A continuation whose log-probability is the attribution metric (JSONL `target`).
    pub target: Option<String>,
}

/// One stimulus per line, or JSONL objects with `text` (and optionally `target`).
pub fn read_stimuli(path: &Path) -> Result<Vec<Stimulus>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| user_error(format!("{}: cannot read: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                user_error(format!(
                    "{}:{}: not a JSON object: {e}",
                    path.display(),
                    i + 1
                ))
            })?;
            let text = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                user_error(format!(
                    "{}:{}: missing string field `text`",
                    path.display(),
                    i + 1
                ))
            })?;
            let target = v.get("target").and_then(|t| t.as_str()).map(String::from);
            out.push(Stimulus {
                text: text.to_string(),
                target,
            });
        } else {
            out.push(Stimulus {
                text: line.to_string(),
                target: None,
            });
        }
    }
    if out.len() < 2 {
        return Err(user_error(format!(
            "{}: {} stimuli; a contrast needs at least 2 per set",
            path.display(),
            out.len()
        )));
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    Mean,
    Max,
    Last,
}

impl Reduce {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "mean" => Reduce::Mean,
            "max" => Reduce::Max,
            "last" => Reduce::Last,
            o => {
                return Err(user_error(format!(
                    "unknown --reduce `{o}` (mean, max, last)"
                )))
            }
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Reduce::Mean => "mean",
            Reduce::Max => "max",
            Reduce::Last => "last",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Contrast,
    Attribution,
}

impl Method {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "contrast" => Method::Contrast,
            "attribution" => Method::Attribution,
            o => {
                return Err(user_error(format!(
                    "unknown --method `{o}` (contrast, attribution)"
                )))
            }
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Method::Contrast => "contrast",
            Method::Attribution => "attribution",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `L.N` for MLP neurons, `HOOK:N` for units of other sites.
    pub neuron: String,
    pub layer: usize,
    pub index: usize,
    /// Welch's t, target minus control: the sign says which set the unit prefers.
    pub score: f64,
    /// Cohen's d.
    pub effect_size: f64,
    pub auroc: f64,
    pub p: f64,
    pub q: f64,
}

/// Token ids of a stimulus and how many of them are the prompt (the rest is the target).
fn tokens(model: &Model, s: &Stimulus) -> Result<(Vec<u32>, usize)> {
    let mut ids = model.tokenizer.encode(&s.text)?;
    let prompt = ids.len();
    if prompt == 0 {
        return Err(user_error(format!("stimulus {:?} has no tokens", s.text)));
    }
    if let Some(t) = &s.target {
        ids.extend(model.tokenizer.encode_plain(t)?);
    }
    if ids.is_empty() {
        return Err(user_error(format!("stimulus {:?} has no tokens", s.text)));
    }
    if ids.len() > model.cfg.n_ctx {
        return Err(user_error(format!(
            "stimulus {:?} is longer than the model's context",
            s.text
        )));
    }
    Ok((ids, prompt))
}

/// One row per stimulus, one column per unit of `sites` (in order).
pub fn unit_values(
    model: &Model,
    stimuli: &[Stimulus],
    sites: &[Site],
    reduce: Reduce,
    method: Method,
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    let toks: Vec<(Vec<u32>, usize)> = stimuli
        .iter()
        .map(|s| tokens(model, s))
        .collect::<Result<_>>()?;
    let mut rows = Vec::with_capacity(stimuli.len());
    for chunk in toks.chunks(batch_size.max(1)) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|(t, _)| t.clone()).collect();
        let batch = model.batch(&ids)?;
        let mut hooks = match method {
            Method::Contrast => HookSet::capturing(sites.iter().copied()),
            Method::Attribution => {
                let mut h = HookSet::new();
                sites.iter().for_each(|s| h.track_gradient(*s));
                h
            }
        };
        let logits = model.forward(&batch, &mut hooks)?;
        let per_site: Vec<Tensor> = match method {
            Method::Contrast => sites
                .iter()
                .map(|s| {
                    hooks
                        .take(*s)
                        .ok_or_else(|| anyhow::anyhow!("{s} not captured"))
                })
                .collect::<Result<_>>()?,
            Method::Attribution => {
                let logits = logits.ok_or_else(|| {
                    user_error(format!(
                        "{} has no LM head: attribution needs next-token log-probabilities",
                        model.id
                    ))
                })?;
                let metric = log_likelihood(&logits, chunk)?;
                let grads = metric.backward()?;
                sites
                    .iter()
                    .map(|s| {
                        let (a, g) = hooks
                            .gradient(*s, &grads)?
                            .ok_or_else(|| anyhow::anyhow!("{s} not reached"))?;
                        Ok((a * g)?)
                    })
                    .collect::<Result<_>>()?
            }
        };
        for (b, (seq, _)) in chunk.iter().enumerate() {
            let len = seq.len();
            let mut row = Vec::new();
            for t in &per_site {
                let x = t.get(b)?.narrow(0, 0, len)?.to_dtype(DType::F32)?;
                let v = match (method, reduce) {
                    (Method::Attribution, _) => x.sum(0)?,
                    (_, Reduce::Mean) => x.mean(0)?,
                    (_, Reduce::Max) => x.max(0)?,
                    (_, Reduce::Last) => x.get(len - 1)?,
                };
                row.extend(v.to_vec1::<f32>()?);
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Σ over each sequence of log p(next token): over the target's tokens when the stimulus has
/// one, else over all its tokens after the first.
pub fn log_likelihood(logits: &Tensor, chunk: &[(Vec<u32>, usize)]) -> Result<Tensor> {
    let (b, t, _) = logits.dims3()?;
    let mut next = vec![0u32; b * t];
    let mut weight = vec![0f32; b * t];
    for (bi, (seq, prompt)) in chunk.iter().enumerate() {
        let first = if *prompt < seq.len() { prompt - 1 } else { 0 };
        for i in first..seq.len().saturating_sub(1) {
            next[bi * t + i] = seq[i + 1];
            weight[bi * t + i] = 1.0;
        }
    }
    let dev = logits.device();
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let idx = Tensor::from_vec(next, (b, t, 1), dev)?;
    let picked = logp.gather(&idx, D::Minus1)?.squeeze(D::Minus1)?;
    Ok((picked * Tensor::from_vec(weight, (b, t), dev)?)?.sum_all()?)
}

/// Compare target and control per unit; findings sorted by |t|, largest first.
pub fn contrast(
    sites: &[(Site, usize)],
    target: &[Vec<f32>],
    control: &[Vec<f32>],
) -> Result<Vec<Finding>> {
    let units: usize = sites.iter().map(|(_, n)| n).sum();
    let mut findings = Vec::with_capacity(units);
    let mut col = 0;
    for (site, n) in sites {
        for i in 0..*n {
            let a: Vec<f64> = target.iter().map(|r| r[col] as f64).collect();
            let b: Vec<f64> = control.iter().map(|r| r[col] as f64).collect();
            let c = welch(&a, &b)?;
            let (layer, name) = match site {
                Site::Block(l, SiteKind::MlpPost) => (*l, format!("{l}.{i}")),
                other => (other.layer().unwrap_or(0), format!("{other}:{i}")),
            };
            findings.push(Finding {
                neuron: name,
                layer,
                index: i,
                score: c.t,
                effect_size: c.d,
                auroc: c.auroc,
                p: c.p,
                q: 0.0,
            });
            col += 1;
        }
    }
    let q = bh_qvalues(&findings.iter().map(|f| f.p).collect::<Vec<_>>());
    findings.iter_mut().zip(q).for_each(|(f, q)| f.q = q);
    findings.sort_by(|x, y| {
        y.score
            .abs()
            .partial_cmp(&x.score.abs())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(x.p.total_cmp(&y.p))
    });
    Ok(findings)
}
