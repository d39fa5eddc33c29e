//! Model runs over a corpus for the analyses that need every token's activations but keep only
//! aggregates (modules, sparsity): the corpus is read and tokenized once into windows, then run
//! in batches as many times as an analysis needs (a statistics pass, then a top-examples pass).
//!
//! Invariants: every token of every non-empty document is in exactly one window, windows never
//! cross documents and keep reading order, and padding positions of a batch are never handed to
//! an analysis. Memory: the corpus's token ids (4 bytes a token) plus one batch's activations.

use crate::corpus::{windows, Corpus};
use crate::error::user_error;
use crate::model::{HookSet, Model};
use anyhow::Result;
use candle_core::{DType, Tensor, D};
use std::path::PathBuf;
use std::rc::Rc;

/// Tokens `[start, start + len)` of document `doc`.
#[derive(Debug, Clone)]
pub struct Win {
    pub doc: u64,
    pub start: usize,
    pub len: usize,
    /// The whole document's token ids (shared by its windows), for contexts.
    pub tokens: Rc<Vec<u32>>,
}

impl Win {
    pub fn ids(&self) -> &[u32] {
        &self.tokens[self.start..self.start + self.len]
    }
}

/// Where the corpus comes from and how it is cut.
#[derive(Debug, Clone)]
pub struct CorpusSpec {
    pub paths: Vec<PathBuf>,
    pub text_field: String,
    /// Window length (capped at the model's context).
    pub ctx: usize,
    /// Stop reading documents once this many tokens were read.
    pub max_tokens: Option<u64>,
    /// Windows per forward pass.
    pub batch: usize,
}

/// Read and tokenize the corpus into windows; an error (exit 2) when it holds no token.
pub fn read_windows(model: &Model, c: &CorpusSpec) -> Result<Vec<Win>> {
    let corpus = Corpus::open(&c.paths, &c.text_field)?;
    let mut docs = corpus.documents();
    let ctx = c.ctx.min(model.cfg.n_ctx).max(1);
    let mut out = Vec::new();
    let mut total = 0u64;
    while let Some(d) = docs.next_doc()? {
        let Ok(text) = d.text else { continue };
        let ids = Rc::new(model.tokenizer.encode(&text)?);
        total += ids.len() as u64;
        for w in windows(ids.len(), ctx) {
            out.push(Win {
                doc: d.index,
                start: w.start,
                len: w.len,
                tokens: ids.clone(),
            });
        }
        if c.max_tokens.is_some_and(|m| total >= m) {
            break;
        }
    }
    if out.is_empty() {
        return Err(user_error(format!(
            "the corpus ({}) has no text to run",
            c.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(out)
}

/// Tokens in `wins`.
pub fn token_count(wins: &[Win]) -> u64 {
    wins.iter().map(|w| w.len as u64).sum()
}

/// Every `every`-th window (from the last) goes to the held-out part: a fixed, interleaved split,
/// so both parts sample the whole corpus. Returns (fit, held-out); with one window, both get it.
pub fn split_heldout(wins: &[Win], every: usize) -> (Vec<Win>, Vec<Win>) {
    if wins.len() < 2 {
        return (wins.to_vec(), wins.to_vec());
    }
    let every = every.max(2);
    let (mut fit, mut held) = (Vec::new(), Vec::new());
    for (i, w) in wins.iter().enumerate() {
        if (wins.len() - 1 - i).is_multiple_of(every) {
            held.push(w.clone());
        } else {
            fit.push(w.clone());
        }
    }
    (fit, held)
}

/// Run `wins` in batches of `batch`: `hooks()` makes each pass's hook set, `f` gets the batch's
/// windows, the hooks after the pass and the logits (when the hooks asked for them);
/// `progress` the tokens done so far.
pub fn run_batches(
    model: &Model,
    wins: &[Win],
    batch: usize,
    mut hooks: impl FnMut() -> Result<HookSet>,
    mut f: impl FnMut(&[Win], &mut HookSet, Option<Tensor>) -> Result<()>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let mut done = 0u64;
    for chunk in wins.chunks(batch.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|w| w.ids().to_vec()).collect();
        let b = model.batch(&seqs)?;
        let mut h = hooks()?;
        let logits = model.forward(&b, &mut h)?;
        f(chunk, &mut h, logits)?;
        done += chunk.iter().map(|w| w.len as u64).sum::<u64>();
        progress(done);
    }
    Ok(())
}

/// The real (unpadded) rows of a captured [batch, t, dim] activation, as one row-major f32
/// [tokens, dim] buffer in window order.
pub fn valid_rows(x: &Tensor, wins: &[Win]) -> Result<Vec<f32>> {
    let (_, t, d) = x.dims3()?;
    let flat: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut out = Vec::with_capacity(wins.iter().map(|w| w.len).sum::<usize>() * d);
    for (b, w) in wins.iter().enumerate() {
        out.extend_from_slice(&flat[b * t * d..(b * t + w.len) * d]);
    }
    Ok(out)
}

/// Σ of −log p(next token) over each window's positions that have a next token in the window,
/// and how many there are.
pub fn next_token_nll(logits: &Tensor, wins: &[Win]) -> Result<(f64, u64)> {
    let (b, t, _) = logits.dims3()?;
    let mut next = vec![0u32; b * t];
    let mut weight = vec![0f32; b * t];
    let mut n = 0u64;
    for (bi, w) in wins.iter().enumerate() {
        let ids = w.ids();
        for i in 0..w.len.saturating_sub(1) {
            next[bi * t + i] = ids[i + 1];
            weight[bi * t + i] = 1.0;
            n += 1;
        }
    }
    let dev = logits.device();
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let idx = Tensor::from_vec(next, (b, t, 1), dev)?;
    let picked = logp.gather(&idx, D::Minus1)?.squeeze(D::Minus1)?;
    let s = (picked * Tensor::from_vec(weight, (b, t), dev)?)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok((-(s as f64), n))
}
