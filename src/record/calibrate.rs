//! Per-site histogram ranges (`Recording::hist_auto`): chosen from the activations of the
//! corpus's first `CALIBRATION_WINDOWS` windows, and those activations kept (when one batch holds
//! them) so that the main loop records them instead of running them again. An expert's hook
//! points take their range from the tokens routed to it, as they are recorded.

use super::routing::expert_of;
use super::state::HistSpec;
use super::{
    forward, in_shard, longest_first, record_rows, Captured, Pending, RecordState, Settings,
};
use crate::corpus::{windows, Documents, Skip};
use crate::model::Model;
use anyhow::Result;
use std::collections::{HashSet, VecDeque};
use std::rc::Rc;

/// Windows whose activations choose the histogram ranges (with `Settings::hist_auto`): the
/// corpus's first, in reading order, whatever `--shard`, `--batch` or the thread count, so that
/// every run over one corpus (each shard, each resume) gets the same ranges and merges exactly.
pub const CALIBRATION_WINDOWS: usize = 8;

/// A document read ahead by the calibration, tokenized.
pub(super) type Ahead = (u64, std::result::Result<Rc<Vec<u32>>, Skip>);

/// The calibration windows' activations, kept when `--batch` holds them all, so that they are
/// recorded from them instead of being run again. A window is recorded once the main loop has
/// reached its document (so checkpoints stay at document boundaries); windows of other shards are
/// never recorded.
pub(super) struct Stash {
    /// The forward passes: their windows (with the index in the pass) and activations.
    parts: Vec<(Vec<(usize, Pending)>, Captured)>,
    /// Per part and window: still to be recorded here.
    todo: Vec<Vec<bool>>,
    keys: HashSet<(u64, usize)>,
}

impl Stash {
    pub(super) fn covers(&self, doc: u64, start: usize) -> bool {
        self.keys.contains(&(doc, start))
    }

    /// Record the windows of documents below `state.counts.next_doc`; true when nothing is left.
    pub(super) fn flush(&mut self, s: &Settings, state: &mut RecordState) -> Result<bool> {
        for ((wins, cap), todo) in self.parts.iter().zip(&mut self.todo) {
            let ready: Vec<usize> = (0..wins.len())
                .filter(|&i| todo[i] && wins[i].1.doc < state.counts.next_doc)
                .collect();
            if !ready.is_empty() {
                let rows: Vec<(usize, &Pending)> =
                    ready.iter().map(|&i| (wins[i].0, &wins[i].1)).collect();
                record_rows(s, state, cap, &rows)?;
                for i in ready {
                    todo[i] = false;
                }
            }
        }
        Ok(!self.todo.iter().flatten().any(|&t| t))
    }
}

/// Split windows sorted by decreasing length into runs of at most `batch` that cost the fewest
/// padded tokens (counting each forward pass as `per_pass` tokens more). Returns the run lengths.
fn split_sorted(lens: &[usize], batch: usize, per_pass: usize) -> Vec<usize> {
    // best[i]: cost of the first i windows; from[i]: where its last run starts
    let n = lens.len();
    let mut best = vec![usize::MAX; n + 1];
    let mut from = vec![0; n + 1];
    best[0] = 0;
    for i in 1..=n {
        for j in i.saturating_sub(batch.max(1))..i {
            let c = best[j] + lens[j] * (i - j) + per_pass;
            if c < best[i] {
                best[i] = c;
                from[i] = j;
            }
        }
    }
    let mut runs = Vec::new();
    let mut i = n;
    while i > 0 {
        runs.push(i - from[i]);
        i = from[i];
    }
    runs.reverse();
    runs
}

/// Choose every site's histogram range from the first `CALIBRATION_WINDOWS` windows of the corpus.
/// The documents read are queued in `ahead` for the main loop.
pub(super) fn calibrate(
    model: &Model,
    docs: &mut Documents,
    s: &Settings,
    state: &mut RecordState,
    ahead: &mut VecDeque<Ahead>,
) -> Result<Option<Stash>> {
    let mut wins: Vec<Pending> = Vec::new();
    while wins.len() < CALIBRATION_WINDOWS {
        let Some(doc) = docs.next_doc()? else {
            break;
        };
        let body = match doc.text {
            Ok(t) => Ok(Rc::new(model.tokenizer.encode(&t)?)),
            Err(e) => Err(e),
        };
        if let Ok(ids) = &body {
            for w in windows(ids.len(), s.recorded.ctx).take(CALIBRATION_WINDOWS - wins.len()) {
                wins.push(Pending {
                    doc: doc.index,
                    start: w.start,
                    len: w.len,
                    tokens: ids.clone(),
                });
            }
        }
        ahead.push_back((doc.index, body));
    }
    // Kept only when all of them fit in one batch, so that calibrating takes no more memory
    // than recording; run in passes of similar lengths, as the main loop does.
    let keep = s.batch >= wins.len();
    longest_first(&mut wins);
    let lens: Vec<usize> = wins.iter().map(|w| w.len).collect();
    let n = state.sites.len();
    let (mut lo, mut hi) = (vec![f32::INFINITY; n], vec![f32::NEG_INFINITY; n]);
    let mut parts: Vec<(Vec<(usize, Pending)>, Captured)> = Vec::new();
    let mut rest = wins.into_iter();
    for run in split_sorted(&lens, s.batch, 16) {
        let chunk: Vec<Pending> = rest.by_ref().take(run).collect();
        let cap = forward(model, s, &chunk)?;
        cap.with_slices(|acts| {
            for (si, a) in acts.iter().enumerate() {
                let dim = state.sites[si].units;
                // an expert's hook points count only where the expert ran (see `routing`)
                let routed = expert_of(s.sites[si]).and_then(|(l, e)| {
                    let i = s.experts.iter().position(|x| x.layer == l)?;
                    Some((&cap.routing[i], s.experts[i].top_k, e))
                });
                for (bi, w) in chunk.iter().enumerate() {
                    let first = bi * cap.t_len;
                    for t in 0..w.len {
                        if routed.is_some_and(|(r, k, e)| !r.routed_to(first + t, k, e)) {
                            continue;
                        }
                        let (l, h) = finite_range(&a[(first + t) * dim..][..dim]);
                        lo[si] = lo[si].min(l);
                        hi[si] = hi[si].max(h);
                    }
                }
            }
        })?;
        if keep {
            parts.push((chunk.into_iter().enumerate().collect(), cap));
        }
    }
    for (si, site) in state.sites.iter_mut().enumerate() {
        site.spec = HistSpec::around(lo[si], hi[si], site.spec.bins);
    }
    if !keep {
        return Ok(None);
    }
    Ok(Some(Stash {
        todo: parts
            .iter()
            .map(|(w, _)| w.iter().map(|(_, w)| in_shard(s, w.doc)).collect())
            .collect(),
        keys: parts
            .iter()
            .flat_map(|(w, _)| w.iter().map(|(_, w)| (w.doc, w.start)))
            .collect(),
        parts,
    }))
}

/// The least and greatest finite values of `x` (±inf when there are none).
fn finite_range(x: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in x {
        // NaN and ±inf fail both tests
        let v_lo = if v.is_finite() { v } else { f32::INFINITY };
        let v_hi = if v.is_finite() { v } else { f32::NEG_INFINITY };
        lo = if v_lo < lo { v_lo } else { lo };
        hi = if v_hi > hi { v_hi } else { hi };
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::split_sorted;

    #[test]
    fn calibration_passes_group_similar_lengths() {
        // the bench corpus's first windows, sorted
        let lens = [128, 128, 128, 128, 54, 47, 24, 9];
        assert_eq!(split_sorted(&lens, 8, 16), vec![4, 2, 2]);
        assert_eq!(split_sorted(&lens, 2, 16), vec![2, 2, 2, 2]);
        assert_eq!(split_sorted(&[5, 5, 5], 8, 16), vec![3]);
        assert_eq!(split_sorted(&[], 8, 16), Vec::<usize>::new());
    }
}
