//! The `record` stage: run a model over a corpus and keep, for every unit of the chosen hook
//! points, mergeable statistics and its top-k examples, without holding the corpus's activations.
//!
//! Memory is the per-unit state (O(units × k)) plus one batch of windows and their activations
//! (and the token ids of the windows read ahead to batch similar lengths together).
//! Writing the state to disk is the caller's job (the atlas stage), through `checkpoint`.
//!
//! Invariants: every token of every recorded document is folded in exactly once; which windows
//! share a forward pass, the batch size and the thread count change nothing but float summation
//! order; at each checkpoint every document below `next_doc` is fully recorded and none above.
//! On a mixture-of-experts model every MoE layer's routing is recorded too, and an expert's hook
//! points are recorded only at the tokens routed to it (`routing`).

mod calibrate;
pub mod routing;
pub mod session;
pub mod state;
pub mod update;

use crate::corpus::{windows, Documents, Skip};
use crate::model::{AttnHook, HookSet, Model, Site, SiteKind};
use anyhow::{anyhow, Result};
use calibrate::{calibrate, Ahead, Stash};
use candle_core::{CpuStorage, DType, Storage};
use routing::{ExpertLayer, Routing};
use state::{HistSpec, SiteState, TopSpec};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};
use update::{update_batches, Row, Rows, SiteBatch};

pub use calibrate::CALIBRATION_WINDOWS;

pub use state::NO_TOKEN;

/// What a recording keeps and how, as its atlas stores it (`manifest.settings`): everything
/// that changes what is recorded, so atlases merge or resume only when these agree.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Recording {
    pub ctx: usize,
    pub top_k: usize,
    pub context_before: usize,
    pub context_after: usize,
    /// The histogram bins. Its range is every site's when `hist_auto` is false (`--hist-range
    /// LO,HI`, and all format 1 atlases); with `hist_auto` each site has its own range in
    /// `sites[i].hist`, and this one spans them all.
    pub hist: HistSpec,
    /// Each site's histogram range was chosen from the first windows of the corpus.
    #[serde(default)]
    pub hist_auto: bool,
    /// `--max-tokens`: where reading the corpus stopped.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Special tokens may be top examples (`--include-special`); by default they count only in
    /// the statistics.
    #[serde(default)]
    pub special_examples: bool,
}

impl Recording {
    pub fn top(&self) -> TopSpec {
        TopSpec {
            k: self.top_k,
            before: self.context_before,
            after: self.context_after,
        }
    }
}

/// How one run records: what it keeps (`recorded`, stored in the atlas) and how it runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Window length, top-k and context, histogram bins and ranges (`hist_auto`: each site's
    /// range from the activations of the corpus's first `CALIBRATION_WINDOWS` windows when the
    /// state has read no document yet; a resumed state keeps its ranges), `max_tokens` (stop
    /// reading new documents once this many tokens were read).
    pub recorded: Recording,
    pub sites: Vec<Site>,
    /// Windows per forward pass.
    pub batch: usize,
    /// `(i, n)`: record only documents with `doc % n == i`.
    pub shard: Option<(usize, usize)>,
    pub checkpoint_every: Duration,
    /// Testing aid: checkpoint and stop once this many documents were recorded (a simulated kill).
    pub stop_after_docs: Option<u64>,
    /// Token ids never offered as top examples (the special tokens, unless kept on request);
    /// their activations still count in every statistic.
    pub not_examples: std::collections::HashSet<u32>,
    /// The model's mixture-of-experts layers, whose routing is recorded (`routing`).
    pub experts: Vec<ExpertLayer>,
}

/// Everything recorded so far, and where in the corpus the next document starts.
#[derive(Debug, Clone)]
pub struct RecordState {
    pub sites: Vec<SiteState>,
    /// One routing state per mixture-of-experts layer (`routing`); empty for dense models.
    pub experts: Vec<SiteState>,
    pub counts: Counters,
}

/// How much of the corpus a recording has read: kept in the state while recording and in the
/// atlas manifest afterwards (the same struct, flattened into the manifest's JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub tokens: u64,
    pub docs: u64,
    pub windows: u64,
    pub skipped_empty: u64,
    pub skipped_not_utf8: u64,
    /// Documents with a lower number are fully recorded (or not in this shard).
    pub next_doc: u64,
}

impl Counters {
    /// The counters of two recordings over other documents of one corpus, together.
    pub fn add(&mut self, o: &Counters) {
        self.tokens += o.tokens;
        self.docs += o.docs;
        self.windows += o.windows;
        self.skipped_empty += o.skipped_empty;
        self.skipped_not_utf8 += o.skipped_not_utf8;
        self.next_doc = self.next_doc.max(o.next_doc);
    }
}

impl RecordState {
    pub fn new(
        sites: &[(String, usize)],
        experts: &[ExpertLayer],
        hist: &HistSpec,
        top: &TopSpec,
    ) -> Self {
        let weights = routing::weight_hist(hist.bins);
        Self {
            sites: sites
                .iter()
                .map(|(n, u)| SiteState::new(n.clone(), *u, hist, top))
                .collect(),
            experts: experts
                .iter()
                .map(|x| SiteState::new(x.name(), x.experts, &weights, top))
                .collect(),
            counts: Counters::default(),
        }
    }

    /// Fold in a state recorded over other documents of the same corpus.
    pub fn merge(&mut self, other: &RecordState, top: &TopSpec) {
        for (a, b) in self.sites.iter_mut().zip(&other.sites) {
            a.merge(b, top);
        }
        for (a, b) in self.experts.iter_mut().zip(&other.experts) {
            a.merge(b, top);
        }
        self.counts.add(&other.counts);
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

/// Sort windows by decreasing length, ties in reading order: the order batches are cut from.
fn longest_first(wins: &mut [Pending]) {
    wins.sort_by(|a, b| {
        b.len
            .cmp(&a.len)
            .then((a.doc, a.start).cmp(&(b.doc, b.start)))
    });
}

/// Windows read ahead per batch: batches are picked among `batch × LOOKAHEAD` queued windows so
/// that windows of similar length run together and little of the forward pass goes to padding.
const LOOKAHEAD: usize = 32;

/// Take the next batch of at most `batch` windows out of `pool`. With `all` (the corpus is done,
/// or the pool is being drained for a checkpoint) the longest windows go first, so that the last
/// batches are the sorted remainder; otherwise the run of `batch` windows of the most similar
/// lengths (least padding), so that windows of unusual length wait for partners. Which windows
/// share a batch never changes the statistics (beyond float summation order): every token is
/// recorded once, and top-k ties are broken by (doc, pos), not by arrival.
fn next_batch(pool: &mut Vec<Pending>, batch: usize, all: bool) -> Vec<Pending> {
    longest_first(pool);
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

fn in_shard(s: &Settings, doc: u64) -> bool {
    s.shard.is_none_or(|(i, n)| doc % n as u64 == i as u64)
}

/// What the main loop knows of a document: its tokens (read ahead) or its text.
enum Body {
    Tokens(std::result::Result<Rc<Vec<u32>>, Skip>),
    Text(std::result::Result<String, Skip>),
}

/// Record `docs` into `state`, resuming after `state.counts.next_doc`. `progress` is called after every
/// batch with the corpus bytes read; `checkpoint` at document boundaries every
/// `checkpoint_every`, with every document below `state.counts.next_doc` fully recorded.
pub fn run(
    model: &Model,
    docs: &mut Documents,
    s: &Settings,
    state: &mut RecordState,
    mut progress: impl FnMut(&RecordState, u64),
    mut checkpoint: impl FnMut(&RecordState) -> Result<()>,
) -> Result<Outcome> {
    let mut ahead: VecDeque<Ahead> = VecDeque::new();
    let mut stash = None;
    if s.recorded.hist_auto && state.counts.next_doc == 0 && state.counts.tokens == 0 {
        stash = calibrate(model, docs, s, state, &mut ahead)?;
    }
    let mut pool: Vec<Pending> = Vec::new();
    let lookahead = s.batch.saturating_mul(LOOKAHEAD);
    let mut tokens_read = state.counts.tokens;
    let mut eof = false;
    let mut stop = false;
    // While draining, no new documents are read, so that the pool empties at a document boundary.
    let mut draining = false;
    let mut last_checkpoint = Instant::now();
    loop {
        while !eof && !draining && pool.len() < lookahead {
            let (index, body) = match ahead.pop_front() {
                Some((index, ids)) => (index, Body::Tokens(ids)),
                None => match docs.next_doc()? {
                    Some(doc) => (doc.index, Body::Text(doc.text)),
                    None => {
                        eof = true;
                        break;
                    }
                },
            };
            if index < state.counts.next_doc {
                continue;
            }
            state.counts.next_doc = index + 1;
            if !in_shard(s, index) {
                continue;
            }
            let ids = match body {
                Body::Tokens(ids) => ids,
                Body::Text(Ok(text)) => Ok(Rc::new(model.tokenizer.encode(&text)?)),
                Body::Text(Err(e)) => Err(e),
            };
            let ids = match ids {
                Ok(ids) if !ids.is_empty() => ids,
                Ok(_) | Err(Skip::Empty) => {
                    state.counts.skipped_empty += 1;
                    continue;
                }
                Err(Skip::NotUtf8) => {
                    state.counts.skipped_not_utf8 += 1;
                    continue;
                }
            };
            tokens_read += ids.len() as u64;
            for w in windows(ids.len(), s.recorded.ctx) {
                if stash
                    .as_ref()
                    .is_some_and(|st: &Stash| st.covers(index, w.start))
                {
                    continue;
                }
                pool.push(Pending {
                    doc: index,
                    start: w.start,
                    len: w.len,
                    tokens: ids.clone(),
                });
            }
            state.counts.docs += 1;
            if s.recorded.max_tokens.is_some_and(|m| tokens_read >= m) {
                eof = true;
            }
            if s.stop_after_docs.is_some_and(|m| state.counts.docs >= m) {
                stop = true;
                draining = true;
            }
        }
        if let Some(st) = &mut stash {
            if st.flush(s, state)? {
                stash = None;
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
        let cap = forward(model, s, &batch)?;
        let all: Vec<(usize, &Pending)> = batch.iter().enumerate().collect();
        record_rows(s, state, &cap, &all)?;
        progress(state, docs.bytes_read());
        if last_checkpoint.elapsed() >= s.checkpoint_every {
            draining = true;
        }
    }
}

/// The captured activations of one forward pass: per site [batch, t_len, dim].
struct Captured {
    sites: Vec<candle_core::Tensor>,
    t_len: usize,
    /// Rows of the pass (batch × t_len).
    n_rows: usize,
    /// Per `Settings::experts` layer: the pass's routing.
    routing: Vec<Routing>,
}

impl Captured {
    /// Call `f` with each site's activations as one flat f32 slice: f32 CPU tensors are read in
    /// place, anything else (other dtypes, devices) is copied.
    fn with_slices<R>(&self, f: impl FnOnce(&[&[f32]]) -> R) -> Result<R> {
        let storages: Vec<_> = self.sites.iter().map(|x| x.storage_and_layout()).collect();
        let in_place = |st: &Storage, layout: &candle_core::Layout| -> bool {
            matches!(st, Storage::Cpu(CpuStorage::F32(_))) && layout.contiguous_offsets().is_some()
        };
        let mut copies = Vec::new();
        for (x, (st, layout)) in self.sites.iter().zip(&storages) {
            if !in_place(st, layout) {
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
        Ok(f(&acts))
    }
}

/// How many units a site has in an atlas: a head per unit for `attn.hook_z` (its output norm),
/// the flattened heads × dims of the other per-token attention sites. Scores and pattern, whose
/// width is the number of tokens, cannot be recorded.
pub(crate) fn recorded_units(m: &Model, site: Site) -> Result<usize> {
    match site {
        Site::Block(_, SiteKind::Attn(AttnHook::Z)) => Ok(m.cfg.n_heads),
        Site::Block(_, SiteKind::Attn(h)) if h.is_pattern_like() => Err(crate::error::user_error(
            format!("{site} has one value per pair of tokens and cannot be recorded per unit (record attn.hook_z for heads)"),
        )),
        s => Ok(m.site_dim(s)),
    }
}

/// Run `batch` through the model and take its activations at the recorded sites.
fn forward(model: &Model, s: &Settings, batch: &[Pending]) -> Result<Captured> {
    let seqs: Vec<Vec<u32>> = batch
        .iter()
        .map(|w| w.tokens[w.start..w.start + w.len].to_vec())
        .collect();
    let b = model.batch(&seqs)?;
    let routing_sites = |x: &ExpertLayer| {
        [SiteKind::ExpertIndices, SiteKind::ExpertWeights].map(|k| Site::Block(x.layer, k))
    };
    let mut hooks = HookSet::capturing(
        s.sites
            .iter()
            .copied()
            .chain(s.experts.iter().flat_map(routing_sites)),
    );
    model.forward(&b, &mut hooks)?;
    // read (not taken) first: the user may record these hook points too
    let mut routing = Vec::with_capacity(s.experts.len());
    for x in &s.experts {
        let [idx, w] = routing_sites(x).map(|site| {
            hooks
                .get(site)
                .ok_or_else(|| anyhow!("hook {site} was not reached"))
                .and_then(|t| Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?))
        });
        routing.push(Routing {
            indices: idx?,
            weights: w?,
        });
    }
    let mut sites = Vec::with_capacity(s.sites.len());
    let mut t_len = 0;
    for site in &s.sites {
        let x = hooks
            .take(*site)
            .ok_or_else(|| anyhow!("hook {site} was not reached"))?;
        let x = crate::model::attention_hooks::per_token_units(*site, x)?;
        t_len = x.dims3()?.1;
        sites.push(x);
    }
    Ok(Captured {
        sites,
        t_len,
        n_rows: seqs.len() * t_len,
        routing,
    })
}

/// Fold the windows `wins` (each with its index in the forward pass that produced `cap`) into
/// the state.
fn record_rows(
    s: &Settings,
    state: &mut RecordState,
    cap: &Captured,
    wins: &[(usize, &Pending)],
) -> Result<()> {
    let mut rows = Vec::with_capacity(wins.iter().map(|w| w.1.len).sum());
    for &(bi, w) in wins {
        for ti in 0..w.len {
            rows.push(Row {
                offset: bi * cap.t_len + ti,
                doc: w.doc,
                pos: w.start + ti,
                doc_tokens: &w.tokens,
                example: !s.not_examples.contains(&w.tokens[w.start + ti]),
            });
        }
    }
    let top = s.recorded.top();
    let routed = s
        .experts
        .iter()
        .zip(&cap.routing)
        .map(|(x, r)| r.split(x, &rows, cap.n_rows))
        .collect::<Result<Vec<_>>>()?;
    // an expert's hook points see only the tokens routed to it
    let site_rows: Vec<&[Row]> = s
        .sites
        .iter()
        .map(|&site| match routing::expert_of(site) {
            Some((l, e)) => s
                .experts
                .iter()
                .position(|x| x.layer == l)
                .map_or(&rows[..0], |i| &routed[i].per_expert[e][..]),
            None => &rows[..],
        })
        .collect();
    cap.with_slices(|acts| {
        let batches: Vec<SiteBatch> = acts
            .iter()
            .zip(&site_rows)
            .map(|(&acts, &rows)| SiteBatch {
                acts,
                rows: Rows::All(rows),
            })
            .collect();
        update_batches(&mut state.sites, &batches, &top);
    })?;
    for (i, x) in s.experts.iter().enumerate() {
        let weights = cap.routing[i].weights(x, &rows, cap.n_rows)?;
        let batch = SiteBatch {
            acts: &weights,
            rows: Rows::PerUnit(&routed[i].per_expert),
        };
        update_batches(std::slice::from_mut(&mut state.experts[i]), &[batch], &top);
    }
    state.counts.tokens += rows.len() as u64;
    state.counts.windows += wins.len() as u64;
    Ok(())
}
