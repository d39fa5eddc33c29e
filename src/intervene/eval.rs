//! Evaluation sets for lesions: `{"prompt": ..., "target": ...}` per line. The metric is the
//! log-probability of the target's tokens after the prompt (the target tokenized as a
//! continuation, without special tokens) and whether the first target token is the argmax.

use crate::error::user_error;
use crate::model::{HookSet, Intervention, Model};
use anyhow::Result;
use candle_core::{DType, D};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct EvalItem {
    pub prompt: String,
    pub target: String,
}

pub fn read_eval(path: &Path) -> Result<Vec<EvalItem>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| user_error(format!("{}: cannot read: {e}", path.display())))?;
    parse_eval(&text, &path.display().to_string())
}

/// The items of an evaluation set's text; `source` names it in errors (`FILE:LINE: …`).
pub fn parse_eval(text: &str, source: &str) -> Result<Vec<EvalItem>> {
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{source}:{}", i + 1);
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| user_error(format!("{}: not a JSON object: {e}", where_())))?;
        let field = |k: &str| -> Result<String> {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(String::from)
                .ok_or_else(|| user_error(format!("{}: missing string field `{k}`", where_())))
        };
        items.push(EvalItem {
            prompt: field("prompt")?,
            target: field("target")?,
        });
    }
    if items.is_empty() {
        return Err(user_error(format!("{source}: no evaluation lines")));
    }
    Ok(items)
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Score {
    pub mean_logprob: f64,
    pub accuracy: f64,
}

impl Score {
    pub fn minus(&self, o: &Score) -> Score {
        Score {
            mean_logprob: self.mean_logprob - o.mean_logprob,
            accuracy: self.accuracy - o.accuracy,
        }
    }
}

/// Token ids of each item: (prompt ++ target, prompt length).
pub fn tokenize(model: &Model, items: &[EvalItem]) -> Result<Vec<(Vec<u32>, usize)>> {
    items
        .iter()
        .map(|it| {
            let p = model.tokenizer.encode(&it.prompt)?;
            let t = model.tokenizer.encode_plain(&it.target)?;
            if p.is_empty() || t.is_empty() {
                return Err(user_error(format!(
                    "prompt {:?} / target {:?}: both need at least one token",
                    it.prompt, it.target
                )));
            }
            let mut ids = p.clone();
            ids.extend(&t);
            if ids.len() > model.cfg.n_ctx {
                return Err(user_error(format!(
                    "prompt + target {:?} is longer than the model's context",
                    it.prompt
                )));
            }
            Ok((ids, p.len()))
        })
        .collect()
}

/// Mean target log-probability and first-token accuracy over the items, under `ivs`.
pub fn score(model: &Model, seqs: &[(Vec<u32>, usize)], ivs: &[Intervention]) -> Result<Score> {
    const BATCH: usize = 16;
    let (mut total_lp, mut correct) = (0f64, 0usize);
    for chunk in seqs.chunks(BATCH) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|(s, _)| s.clone()).collect();
        let mut hooks = HookSet::new();
        for iv in ivs {
            hooks.intervene(iv.clone());
        }
        let logits = model
            .forward(&model.batch(&ids)?, &mut hooks)?
            .ok_or_else(|| {
                user_error(format!(
                    "{} has no LM head: lesion evaluation needs next-token logits",
                    model.id
                ))
            })?;
        let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
        for (b, (seq, plen)) in chunk.iter().enumerate() {
            let rows = logp.get(b)?;
            for (j, &tok) in seq[*plen..].iter().enumerate() {
                let row = rows.get(plen - 1 + j)?;
                total_lp += row.get(tok as usize)?.to_scalar::<f32>()? as f64;
                if j == 0 && row.argmax(0)?.to_scalar::<u32>()? == tok {
                    correct += 1;
                }
            }
        }
    }
    let n = seqs.len().max(1) as f64;
    Ok(Score {
        mean_logprob: total_lp / n,
        accuracy: correct as f64 / n,
    })
}
