//! Text generation with a key/value cache; the hooks (and so any intervention) apply at every
//! step, to the prompt and to each new token.

use super::hooks::{HookSet, Intervention};
use super::transformer::KvCache;
use super::Model;
use crate::error::user_error;
use crate::rng::Rng;
use anyhow::Result;
use candle_core::{DType, D};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax).
    pub temperature: f32,
    pub seed: u64,
}

/// The ids of up to `max_new_tokens` new tokens after `prompt`, stopping at the end-of-text token
/// if the tokenizer has one.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    interventions: &[Intervention],
    opts: &GenerateOptions,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(user_error("the prompt has no tokens"));
    }
    if model.net.unembed.is_none() {
        return Err(user_error(format!(
            "{} has no LM head, so it cannot generate",
            model.id
        )));
    }
    let room = model.cfg.n_ctx.saturating_sub(prompt.len());
    let steps = opts.max_new_tokens.min(room);
    let eos: Vec<u32> = [
        "<|endoftext|>",
        "</s>",
        "<|end_of_text|>",
        "<|im_end|>",
        "<eos>",
        "<end_of_turn>",
    ]
    .iter()
    .filter_map(|t| model.tokenizer.token_to_id(t))
    .collect();
    let mut rng = Rng::new(opts.seed);
    let mut cache = KvCache::default();
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    for _ in 0..steps {
        let mut hooks = HookSet::new();
        for iv in interventions {
            hooks.intervene(iv.clone());
        }
        let batch = model.batch(std::slice::from_ref(&input))?;
        let logits = model
            .net
            .forward_cached(&batch, &mut hooks, Some(&mut cache))?
            .ok_or_else(|| anyhow::anyhow!("forward pass returned no logits"))?;
        let last = logits.get(0)?.get(input.len() - 1)?.to_dtype(DType::F32)?;
        let next = if opts.temperature <= 0.0 {
            last.argmax(D::Minus1)?.to_scalar::<u32>()?
        } else {
            let probs = candle_nn::ops::softmax(&(last / opts.temperature as f64)?, D::Minus1)?
                .to_vec1::<f32>()?;
            sample(&probs, rng.uniform())
        };
        out.push(next);
        if eos.contains(&next) {
            break;
        }
        input = vec![next];
    }
    Ok(out)
}

/// Inverse-CDF sampling from a probability vector with a uniform draw `u` in [0, 1). When
/// rounding leaves the running sum short of `u`, the most probable id, never the last row (which
/// may be a padding row of the embedding).
fn sample(probs: &[f32], u: f32) -> u32 {
    let mut acc = 0f32;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return i as u32;
        }
    }
    most_probable(probs)
}

fn most_probable(probs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, p) in probs.iter().enumerate() {
        if *p > probs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_the_cdf() {
        let p = [0.1, 0.0, 0.6, 0.3];
        assert_eq!(sample(&p, 0.0), 0);
        assert_eq!(sample(&p, 0.0999), 0);
        assert_eq!(sample(&p, 0.1), 2, "a zero-probability id is never drawn");
        assert_eq!(sample(&p, 0.69), 2);
        assert_eq!(sample(&p, 0.71), 3);
    }

    #[test]
    fn a_sum_short_of_the_draw_falls_back_to_the_most_probable_id() {
        // a running sum that stays below the draw (f32 rounding of a softmax does this by a few
        // ulps; here by more, to be plain)
        let mut p = vec![1e-8f32; 1000];
        p[0] = 0.0; // like a padding row
        p[7] = 0.2;
        p[500] = 0.7;
        p[999] = 0.0;
        let u = 1.0 - f32::EPSILON;
        assert!(p.iter().sum::<f32>() < u);
        assert_eq!(sample(&p, u), 500);
        // nothing to choose from: the first id, as argmax would
        assert_eq!(sample(&[0.0, 0.0], 0.5), 0);
    }
}
