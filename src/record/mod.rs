//! The `record` stage: run a model over a corpus and keep, for every unit of the chosen hook
//! points, mergeable statistics and its top-k examples, without holding the corpus's activations.
//!
//! Memory is the per-unit state (O(units × k)) plus one batch of windows and their activations.
//! Writing the state to disk is the caller's job (the atlas stage), through `checkpoint`.

pub mod state;

use crate::corpus::{windows, Documents, Skip};
use crate::model::{HookSet, Model, Site};
use anyhow::{anyhow, Result};
use candle_core::{CpuStorage, DType, Storage};
use state::{update_sites, HistSpec, Row, SiteState, TopSpec};
use std::rc::Rc;
use std::time::{Duration, Instant};

pub use state::NO_TOKEN;

#[derive(Debug, Clone)]
pub struct Settings {
    pub sites: Vec<Site>,
    /// Window length in tokens.
    pub ctx: usize,
    /// Windows per forward pass.
    pub batch: usize,
    pub top: TopSpec,
    pub hist: HistSpec,
    /// `(i, n)`: record only documents with `doc % n == i`.
    pub shard: Option<(usize, usize)>,
    /// Stop reading new documents once this many tokens were read.
    pub max_tokens: Option<u64>,
    pub checkpoint_every: Duration,
    /// Testing aid: checkpoint and stop once this many documents were recorded (a simulated kill).
    pub stop_after_docs: Option<u64>,
}

/// Everything recorded so far, and where in the corpus the next document starts.
#[derive(Debug, Clone)]
pub struct RecordState {
    pub sites: Vec<SiteState>,
    pub tokens: u64,
    pub docs: u64,
    pub windows: u64,
    pub skipped_empty: u64,
    pub skipped_not_utf8: u64,
    /// Documents with a lower number are fully recorded (or not in this shard).
    pub next_doc: u64,
}

impl RecordState {
    pub fn new(sites: &[(String, usize)], hist: &HistSpec, top: &TopSpec) -> Self {
        Self {
            sites: sites
                .iter()
                .map(|(n, u)| SiteState::new(n.clone(), *u, hist, top))
                .collect(),
            tokens: 0,
            docs: 0,
            windows: 0,
            skipped_empty: 0,
            skipped_not_utf8: 0,
            next_doc: 0,
        }
    }

    /// Fold in a state recorded over other documents of the same corpus.
    pub fn merge(&mut self, other: &RecordState, top: &TopSpec) {
        for (a, b) in self.sites.iter_mut().zip(&other.sites) {
            a.merge(b, top);
        }
        self.tokens += other.tokens;
        self.docs += other.docs;
        self.windows += other.windows;
        self.skipped_empty += other.skipped_empty;
        self.skipped_not_utf8 += other.skipped_not_utf8;
        self.next_doc = self.next_doc.max(other.next_doc);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The corpus (or --max-tokens) is done.
    Finished,
    /// Stopped early on request, after a checkpoint.
    Stopped,
}

struct Pending {
    doc: u64,
    start: usize,
    len: usize,
    tokens: Rc<Vec<u32>>,
}

/// Windows read ahead per batch: batches are picked among `batch × LOOKAHEAD` queued windows so
/// that windows of similar length run together and little of the forward pass goes to padding.
const LOOKAHEAD: usize = 16;

/// Take the next batch of at most `batch` windows out of `pool`. With `all` (the corpus is done,
/// or the pool is being drained for a checkpoint) the longest windows go first, so that the last
/// batches are the sorted remainder; otherwise the run of `batch` windows of the most similar
/// lengths (least padding), so that windows of unusual length wait for partners. Which windows
/// share a batch never changes the statistics (beyond float summation order): every token is
/// recorded once, and top-k ties are broken by (doc, pos), not by arrival.
fn next_batch(pool: &mut Vec<Pending>, batch: usize, all: bool) -> Vec<Pending> {
    pool.sort_by(|a, b| {
        b.len
            .cmp(&a.len)
            .then((a.doc, a.start).cmp(&(b.doc, b.start)))
    });
    let n = batch.min(pool.len());
    let at = if all || pool.len() <= n {
        0
    } else {
        // Sorted by decreasing length, a run's padding is (its first length × n) − its tokens.
        let mut best = (usize::MAX, 0);
        let mut sum: usize = pool[..n].iter().map(|w| w.len).sum();
        for i in 0..=pool.len() - n {
            if i > 0 {
                sum = sum + pool[i + n - 1].len - pool[i - 1].len;
            }
            let waste = pool[i].len * n - sum;
            if waste < best.0 {
                best = (waste, i);
            }
        }
        best.1
    };
    let mut b: Vec<Pending> = pool.drain(at..at + n).collect();
    b.sort_by_key(|w| (w.doc, w.start));
    b
}

/// Record `docs` into `state`, resuming after `state.next_doc`. `progress` is called after every
/// batch with the corpus bytes read; `checkpoint` at document boundaries every
/// `checkpoint_every`, with every document below `state.next_doc` fully recorded.
pub fn run(
    model: &Model,
    docs: &mut Documents,
    s: &Settings,
    state: &mut RecordState,
    mut progress: impl FnMut(&RecordState, u64),
    mut checkpoint: impl FnMut(&RecordState) -> Result<()>,
) -> Result<Outcome> {
    let mut pool: Vec<Pending> = Vec::new();
    let lookahead = s.batch.saturating_mul(LOOKAHEAD);
    let mut tokens_read = state.tokens;
    let mut eof = false;
    let mut stop = false;
    // While draining, no new documents are read, so that the pool empties at a document boundary.
    let mut draining = false;
    let mut last_checkpoint = Instant::now();
    loop {
        while !eof && !draining && pool.len() < lookahead {
            let Some(doc) = docs.next_doc()? else {
                eof = true;
                break;
            };
            if doc.index < state.next_doc {
                continue;
            }
            state.next_doc = doc.index + 1;
            if let Some((i, n)) = s.shard {
                if doc.index % n as u64 != i as u64 {
                    continue;
                }
            }
            let text = match doc.text {
                Ok(t) => t,
                Err(Skip::Empty) => {
                    state.skipped_empty += 1;
                    continue;
                }
                Err(Skip::NotUtf8) => {
                    state.skipped_not_utf8 += 1;
                    continue;
                }
            };
            let ids = model.tokenizer.encode(&text)?;
            if ids.is_empty() {
                state.skipped_empty += 1;
                continue;
            }
            tokens_read += ids.len() as u64;
            let ids = Rc::new(ids);
            for w in windows(ids.len(), s.ctx) {
                pool.push(Pending {
                    doc: doc.index,
                    start: w.start,
                    len: w.len,
                    tokens: ids.clone(),
                });
            }
            state.docs += 1;
            if s.max_tokens.is_some_and(|m| tokens_read >= m) {
                eof = true;
            }
            if s.stop_after_docs.is_some_and(|m| state.docs >= m) {
                stop = true;
                draining = true;
            }
        }
        if pool.is_empty() {
            // At the end the caller writes the finished atlas; a checkpoint then would be wasted.
            if eof && !stop {
                return Ok(Outcome::Finished);
            }
            if draining {
                checkpoint(state)?;
                last_checkpoint = Instant::now();
                draining = false;
                if stop {
                    return Ok(Outcome::Stopped);
                }
            }
            continue;
        }
        let batch = next_batch(&mut pool, s.batch, eof || draining);
        record_batch(model, s, state, &batch)?;
        progress(state, docs.bytes_read());
        if last_checkpoint.elapsed() >= s.checkpoint_every {
            draining = true;
        }
    }
}

fn record_batch(
    model: &Model,
    s: &Settings,
    state: &mut RecordState,
    batch: &[Pending],
) -> Result<()> {
    let seqs: Vec<Vec<u32>> = batch
        .iter()
        .map(|w| w.tokens[w.start..w.start + w.len].to_vec())
        .collect();
    let b = model.batch(&seqs)?;
    let mut hooks = HookSet::capturing(s.sites.iter().copied());
    model.forward(&b, &mut hooks)?;
    let mut captured = Vec::with_capacity(s.sites.len());
    let mut t_len = 0;
    for site in &s.sites {
        let x = hooks
            .take(*site)
            .ok_or_else(|| anyhow!("hook {site} was not reached"))?;
        let (_, t, _) = x.dims3()?;
        t_len = t;
        captured.push(x);
    }
    drop(hooks);
    let mut rows = Vec::with_capacity(batch.iter().map(|w| w.len).sum());
    for (bi, w) in batch.iter().enumerate() {
        for ti in 0..w.len {
            rows.push(Row {
                offset: bi * t_len + ti,
                doc: w.doc,
                pos: w.start + ti,
                doc_tokens: &w.tokens,
            });
        }
    }
    // Read f32 CPU activations in place; anything else (other dtypes, devices) is copied.
    let storages: Vec<_> = captured.iter().map(|x| x.storage_and_layout()).collect();
    let mut copies = Vec::new();
    for (x, (st, layout)) in captured.iter().zip(&storages) {
        let borrowed = match (&**st, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(_)), Some(_)) => true,
            _ => false,
        };
        if !borrowed {
            copies.push(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    let mut copies = copies.iter();
    let acts: Vec<&[f32]> = storages
        .iter()
        .map(|(st, layout)| match (&**st, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(v)), Some((a, z))) => &v[a..z],
            _ => copies.next().map(|c| c.as_slice()).unwrap_or(&[]),
        })
        .collect();
    update_sites(&mut state.sites, &acts, &rows, &s.hist, &s.top);
    state.tokens += rows.len() as u64;
    state.windows += batch.len() as u64;
    Ok(())
}
