//! How units respond to stimuli: each stimulus run through the model and reduced to one value per
//! unit — its mean, max or last-token activation, or for `attribution` the activation × gradient
//! of the stimulus's log-likelihood summed over its tokens. The localizer compares these rows.
//!
//! Special tokens (BOS, [CLS], [SEP], ...) are left out of the mean, max and last reductions by
//! default: in a causal model their activation is the same for every stimulus, so averaging them
//! in only dilutes the mean by a stimulus's length (`include_special` keeps them). Attribution
//! sums over every token: it measures a total effect, and BOS carries part of it.

use crate::error::user_error;
use crate::model::attention_hooks::per_token_units;
use crate::model::{HookSet, Model, Site};
use anyhow::Result;
use candle_core::{DType, Tensor, D};
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

/// How stimuli are read out: the reduction, the method, special tokens, the batch size.
#[derive(Debug, Clone, Copy)]
pub struct Readout {
    pub reduce: Reduce,
    pub method: Method,
    /// Keep special tokens in the mean/max/last reductions.
    pub include_special: bool,
    /// Stimuli per forward pass.
    pub batch: usize,
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
    r: &Readout,
) -> Result<Vec<Vec<f32>>> {
    unit_values_until(model, stimuli, sites, r, &|| Ok(()))
}

/// `unit_values`, calling `keep_going` before each batch: an error from it (a cancelled server
/// job) stops the run there.
pub fn unit_values_until(
    model: &Model,
    stimuli: &[Stimulus],
    sites: &[Site],
    r: &Readout,
    keep_going: &dyn Fn() -> Result<()>,
) -> Result<Vec<Vec<f32>>> {
    let mut rows = Vec::with_capacity(stimuli.len());
    let mut push =
        |per_site: Vec<Tensor>, reduce: &dyn Fn(Tensor) -> Result<Tensor>| -> Result<()> {
            let mut row = Vec::new();
            for x in per_site {
                row.extend(reduce(x.to_dtype(DType::F32)?)?.to_vec1::<f32>()?);
            }
            rows.push(row);
            Ok(())
        };
    match r.method {
        Method::Contrast => {
            let reduce = |x: Tensor| -> Result<Tensor> {
                Ok(match r.reduce {
                    Reduce::Mean => x.mean(0)?,
                    Reduce::Max => x.max(0)?,
                    Reduce::Last => x.get(x.dim(0)? - 1)?,
                })
            };
            captured_rows_until(
                model,
                stimuli,
                sites,
                r.include_special,
                r.batch,
                keep_going,
                &mut |rows| push(rows, &reduce),
            )?;
        }
        Method::Attribution => {
            // activation × gradient of the stimulus's log-likelihood, summed over every token
            let toks = tokenize_all(model, stimuli)?;
            let mut forward = |chunk: &[(Vec<u32>, usize)]| -> Result<Vec<Tensor>> {
                let ids: Vec<Vec<u32>> = chunk.iter().map(|(t, _)| t.clone()).collect();
                let mut hooks = HookSet::new();
                sites.iter().for_each(|s| hooks.track_gradient(*s));
                let logits = model.forward(&model.batch(&ids)?, &mut hooks)?;
                let logits = logits.ok_or_else(|| {
                    user_error(format!(
                        "{} has no LM head: attribution needs next-token log-probabilities",
                        model.id
                    ))
                })?;
                let grads = log_likelihood(&logits, chunk)?.backward()?;
                sites
                    .iter()
                    .map(|s| {
                        let (a, g) = hooks
                            .gradient(*s, &grads)?
                            .ok_or_else(|| anyhow::anyhow!("{s} not reached"))?;
                        let ag = (a * g)?;
                        // a head (hook_z [B, T, H, Dh]) as one unit: its entries' sum
                        Ok(match ag.rank() {
                            4 => ag.sum(3)?,
                            _ => ag,
                        })
                    })
                    .collect()
            };
            let sum = |x: Tensor| -> Result<Tensor> { Ok(x.sum(0)?) };
            in_batches(&toks, r.batch, keep_going, &mut forward, &mut |_, rows| {
                push(rows, &sum)
            })?;
        }
    }
    Ok(rows)
}

/// Each stimulus's activations at `sites`, over the tokens a reduction reads: padding cut off,
/// special tokens left out unless `include_special` (a stimulus of special tokens only keeps them
/// all rather than reducing nothing). `batch` stimuli share a forward pass; `each` receives the
/// stimuli in order, one tensor [kept tokens, ·] per site. `keep_going` is called before each
/// batch, as in [`unit_values_until`].
pub fn captured_rows_until(
    model: &Model,
    stimuli: &[Stimulus],
    sites: &[Site],
    include_special: bool,
    batch: usize,
    keep_going: &dyn Fn() -> Result<()>,
    each: &mut dyn FnMut(Vec<Tensor>) -> Result<()>,
) -> Result<()> {
    let toks = tokenize_all(model, stimuli)?;
    let mut forward = |chunk: &[(Vec<u32>, usize)]| -> Result<Vec<Tensor>> {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|(t, _)| t.clone()).collect();
        let mut hooks = HookSet::capturing(sites.iter().copied());
        model.forward(&model.batch(&ids)?, &mut hooks)?;
        sites
            .iter()
            .map(|s| {
                let x = hooks
                    .take(*s)
                    .ok_or_else(|| anyhow::anyhow!("{s} not captured"))?;
                // hook_z [B, T, H, Dh]: a head as one unit, its output norm per token
                per_token_units(*s, x)
            })
            .collect()
    };
    in_batches(&toks, batch, keep_going, &mut forward, &mut |seq, rows| {
        let kept: Vec<u32> = (0..seq.len() as u32)
            .filter(|&i| include_special || !model.tokenizer.is_special(seq[i as usize]))
            .collect();
        if kept.is_empty() || kept.len() == seq.len() {
            return each(rows);
        }
        let idx = Tensor::new(kept.as_slice(), model.device())?;
        each(
            rows.iter()
                .map(|x| Ok(x.index_select(&idx, 0)?))
                .collect::<Result<_>>()?,
        )
    })
}

fn tokenize_all(model: &Model, stimuli: &[Stimulus]) -> Result<Vec<(Vec<u32>, usize)>> {
    stimuli.iter().map(|s| tokens(model, s)).collect()
}

/// A stimulus's token ids and how many of them are the prompt.
type Tokens = (Vec<u32>, usize);
/// One chunk of stimuli → its per-site tensors [B, T, ·].
type ChunkForward<'a> = dyn FnMut(&[Tokens]) -> Result<Vec<Tensor>> + 'a;
/// One stimulus's token ids and its rows [len, ·] per site.
type EachStimulus<'a> = dyn FnMut(&[u32], Vec<Tensor>) -> Result<()> + 'a;

/// Runs tokenized stimuli `batch` at a time: `forward` computes one chunk's per-site tensors
/// [B, T, ·]; `each` receives every stimulus's token ids and its rows [len, ·] per site (the
/// padding cut off), in order.
fn in_batches(
    toks: &[(Vec<u32>, usize)],
    batch: usize,
    keep_going: &dyn Fn() -> Result<()>,
    forward: &mut ChunkForward<'_>,
    each: &mut EachStimulus<'_>,
) -> Result<()> {
    for chunk in toks.chunks(batch.max(1)) {
        keep_going()?;
        let per_site = forward(chunk)?;
        for (b, (seq, _)) in chunk.iter().enumerate() {
            let rows = per_site
                .iter()
                .map(|t| Ok(t.get(b)?.narrow(0, 0, seq.len())?))
                .collect::<Result<_>>()?;
            each(seq, rows)?;
        }
    }
    Ok(())
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

/// What receives one sequence's activations: (sequence index, [rows x units] values, rows).
pub type TokenSink<'a> = dyn FnMut(usize, &[f32], usize) -> Result<()> + 'a;

/// Per-token activations of `sites` for token sequences (ids as given, special tokens included in
/// the pass): `each(i, acts, rows)` gets sequence i's activations at its non-special positions,
/// [rows x units] row-major, the units of `sites` concatenated in order. The frequency-tagging
/// analysis reads activation over positions rather than one reduced value per stimulus.
pub fn token_activations(
    model: &Model,
    seqs: &[Vec<u32>],
    sites: &[Site],
    batch_size: usize,
    each: &mut TokenSink,
) -> Result<()> {
    let units: usize = sites.iter().map(|s| model.site_dim(*s)).sum();
    let mut done = 0;
    for chunk in seqs.chunks(batch_size.max(1)) {
        let batch = model.batch(chunk)?;
        let mut hooks = HookSet::capturing(sites.iter().copied());
        model.forward(&batch, &mut hooks)?;
        let per_site: Vec<Tensor> = sites
            .iter()
            .map(|s| {
                hooks
                    .take(*s)
                    .ok_or_else(|| anyhow::anyhow!("{s} not captured"))
            })
            .collect::<Result<_>>()?;
        for (b, seq) in chunk.iter().enumerate() {
            let kept: Vec<usize> = (0..seq.len())
                .filter(|&i| !model.tokenizer.is_special(seq[i]))
                .collect();
            let mut acts = vec![0f32; kept.len() * units];
            let mut col = 0;
            for t in &per_site {
                let x = t
                    .get(b)?
                    .narrow(0, 0, seq.len())?
                    .to_dtype(DType::F32)?
                    .to_vec2::<f32>()?;
                let d = x.first().map_or(0, |r| r.len());
                for (r, &pos) in kept.iter().enumerate() {
                    acts[r * units + col..r * units + col + d].copy_from_slice(&x[pos]);
                }
                col += d;
            }
            each(done + b, &acts, kept.len())?;
        }
        done += chunk.len();
    }
    Ok(())
}
