//! Per-unit streaming statistics and top-k examples: updated batch by batch, merged exactly.
//!
//! Everything a unit keeps has a fixed size (O(K) per unit), so memory does not grow with the
//! corpus. Moments are kept as (count, mean, M2) in f64 and combined with Chan et al.'s pairwise
//! formula, so shards, batches and checkpoints all combine the same way.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Marks a context slot outside the document (or an empty top-k slot).
pub const NO_TOKEN: u32 = u32::MAX;

/// Fixed histogram bins: `bins` equal bins over [lo, hi), plus an underflow bin first and an
/// overflow bin last. Fixed up front so that histograms of different runs add up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistSpec {
    pub lo: f64,
    pub hi: f64,
    pub bins: usize,
}

impl HistSpec {
    /// Counters per unit: the bins plus underflow and overflow.
    pub fn slots(&self) -> usize {
        self.bins + 2
    }

    pub fn edges(&self) -> Vec<f64> {
        let w = (self.hi - self.lo) / self.bins as f64;
        (0..=self.bins).map(|i| self.lo + w * i as f64).collect()
    }

    #[inline]
    fn slot(&self, x: f32, scale: f64) -> usize {
        let x = x as f64;
        if x < self.lo {
            0
        } else if x >= self.hi || x.is_nan() {
            self.bins + 1
        } else {
            1 + (((x - self.lo) * scale) as usize).min(self.bins - 1)
        }
    }
}

/// Top-k size and the context kept around each example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopSpec {
    pub k: usize,
    pub before: usize,
    pub after: usize,
}

impl TopSpec {
    pub fn ctx_len(&self) -> usize {
        self.before + 1 + self.after
    }
}

/// All units of one hook point, as structure-of-arrays (the same layout as the atlas tensors).
#[derive(Debug, Clone)]
pub struct SiteState {
    pub name: String,
    pub units: usize,
    pub count: Vec<u64>,
    pub mean: Vec<f64>,
    pub m2: Vec<f64>,
    pub min: Vec<f32>,
    pub max: Vec<f32>,
    /// Tokens with activation > 0.
    pub fire: Vec<u64>,
    /// [units, hist.slots()]
    pub hist: Vec<u64>,
    /// [units, k], best first; empty slots have doc −1 and activation −inf.
    pub top_act: Vec<f32>,
    pub top_doc: Vec<i64>,
    pub top_pos: Vec<i64>,
    /// [units, k, ctx_len] token ids; the example's own token is at index `before`.
    pub top_ctx: Vec<u32>,
}

impl SiteState {
    pub fn new(name: String, units: usize, hist: &HistSpec, top: &TopSpec) -> Self {
        let k = top.k;
        Self {
            name,
            units,
            count: vec![0; units],
            mean: vec![0.0; units],
            m2: vec![0.0; units],
            min: vec![f32::INFINITY; units],
            max: vec![f32::NEG_INFINITY; units],
            fire: vec![0; units],
            hist: vec![0; units * hist.slots()],
            top_act: vec![f32::NEG_INFINITY; units * k],
            top_doc: vec![-1; units * k],
            top_pos: vec![-1; units * k],
            top_ctx: vec![NO_TOKEN; units * k * top.ctx_len()],
        }
    }

    /// Population variance (ddof = 0).
    pub fn var(&self, u: usize) -> f64 {
        if self.count[u] == 0 {
            0.0
        } else {
            self.m2[u] / self.count[u] as f64
        }
    }

    /// Views of `chunk` consecutive units each, for updating them in parallel.
    pub fn chunks_mut(&mut self, chunk: usize, top: &TopSpec) -> Vec<UnitsMut<'_>> {
        let (k, l) = (top.k, top.ctx_len());
        let s = self.hist.len() / self.units.max(1);
        let mut out = Vec::new();
        let mut first = 0;
        let it = self
            .count
            .chunks_mut(chunk)
            .zip(self.mean.chunks_mut(chunk))
            .zip(self.m2.chunks_mut(chunk))
            .zip(self.min.chunks_mut(chunk))
            .zip(self.max.chunks_mut(chunk))
            .zip(self.fire.chunks_mut(chunk))
            .zip(self.hist.chunks_mut(chunk * s))
            .zip(self.top_act.chunks_mut(chunk * k))
            .zip(self.top_doc.chunks_mut(chunk * k))
            .zip(self.top_pos.chunks_mut(chunk * k))
            .zip(self.top_ctx.chunks_mut(chunk * k * l));
        for ((((((((((count, mean), m2), min), max), fire), hist), act), doc), pos), ctx) in it {
            let n = count.len();
            out.push(UnitsMut {
                first,
                count,
                mean,
                m2,
                min,
                max,
                fire,
                hist,
                top_act: act,
                top_doc: doc,
                top_pos: pos,
                top_ctx: ctx,
            });
            first += n;
        }
        out
    }

    /// Fold `other` (the same site, disjoint tokens) into `self`.
    pub fn merge(&mut self, other: &SiteState, top: &TopSpec) {
        for u in 0..self.units {
            let (n, mean, m2) = chan(
                (self.count[u], self.mean[u], self.m2[u]),
                (other.count[u], other.mean[u], other.m2[u]),
            );
            self.count[u] = n;
            self.mean[u] = mean;
            self.m2[u] = m2;
            self.min[u] = self.min[u].min(other.min[u]);
            self.max[u] = self.max[u].max(other.max[u]);
            self.fire[u] += other.fire[u];
        }
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            *a += b;
        }
        let (k, l) = (top.k, top.ctx_len());
        let mut chunks = self.chunks_mut(64, top);
        chunks.par_iter_mut().for_each(|c| {
            for j in 0..c.count.len() {
                let u = c.first + j;
                for r in 0..k {
                    let i = u * k + r;
                    if other.top_doc[i] < 0 {
                        break;
                    }
                    c.offer(
                        j,
                        k,
                        other.top_act[i],
                        other.top_doc[i],
                        other.top_pos[i],
                        &other.top_ctx[i * l..(i + 1) * l],
                    );
                }
            }
        });
    }
}

/// Combine two (count, mean, M2) summaries of disjoint samples (Chan, Golub & LeVeque).
#[inline]
pub fn chan(a: (u64, f64, f64), b: (u64, f64, f64)) -> (u64, f64, f64) {
    let (na, ma, m2a) = a;
    let (nb, mb, m2b) = b;
    if nb == 0 {
        return a;
    }
    if na == 0 {
        return b;
    }
    let n = na + nb;
    let (naf, nbf, nf) = (na as f64, nb as f64, n as f64);
    let delta = mb - ma;
    (
        n,
        ma + delta * nbf / nf,
        m2a + m2b + delta * delta * naf * nbf / nf,
    )
}

/// One token of a batch: where its activations start and where it sits in its document.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// Index of the token in the flattened [batch, time] activation tensor.
    pub offset: usize,
    pub doc: u64,
    pub pos: usize,
    pub doc_tokens: &'a [u32],
}

/// Mutable view of a run of units of one site.
pub struct UnitsMut<'a> {
    pub first: usize,
    count: &'a mut [u64],
    mean: &'a mut [f64],
    m2: &'a mut [f64],
    min: &'a mut [f32],
    max: &'a mut [f32],
    fire: &'a mut [u64],
    hist: &'a mut [u64],
    top_act: &'a mut [f32],
    top_doc: &'a mut [i64],
    top_pos: &'a mut [i64],
    top_ctx: &'a mut [u32],
}

/// Does example (a, d, p) rank above (b, e, q)? Higher activation first, then earlier (doc, pos).
#[inline]
fn better(a: f32, d: i64, p: i64, b: f32, e: i64, q: i64) -> bool {
    a > b || (a == b && (d, p) < (e, q))
}

impl UnitsMut<'_> {
    /// Offer an example to unit `j`'s top-k; keeps the list sorted best first.
    #[inline]
    fn offer(&mut self, j: usize, k: usize, act: f32, doc: i64, pos: i64, ctx: &[u32]) -> bool {
        let base = j * k;
        let act_s = &self.top_act[base..base + k];
        let doc_s = &self.top_doc[base..base + k];
        let pos_s = &self.top_pos[base..base + k];
        let Some(at) =
            (0..k).find(|&r| doc_s[r] < 0 || better(act, doc, pos, act_s[r], doc_s[r], pos_s[r]))
        else {
            return false;
        };
        let l = ctx.len();
        self.top_act[base + at..base + k].rotate_right(1);
        self.top_doc[base + at..base + k].rotate_right(1);
        self.top_pos[base + at..base + k].rotate_right(1);
        self.top_ctx[(base + at) * l..(base + k) * l].rotate_right(l);
        self.top_act[base + at] = act;
        self.top_doc[base + at] = doc;
        self.top_pos[base + at] = pos;
        self.top_ctx[(base + at) * l..(base + at + 1) * l].copy_from_slice(ctx);
        true
    }

    /// The activation a candidate must reach to enter unit `j`'s top-k.
    #[inline]
    fn threshold(&self, j: usize, k: usize) -> f32 {
        if self.top_doc[j * k + k - 1] < 0 {
            f32::NEG_INFINITY
        } else {
            self.top_act[j * k + k - 1]
        }
    }

    /// Fold one batch into these units. `acts` is the site's [batch·time, dim] activation matrix;
    /// `rows` lists the real (unpadded) tokens, in (doc, pos) order.
    pub fn update(
        &mut self,
        acts: &[f32],
        dim: usize,
        rows: &[Row],
        hist: &HistSpec,
        top: &TopSpec,
        scratch: &mut Vec<u32>,
    ) {
        let n = self.count.len();
        if rows.is_empty() {
            return;
        }
        let (k, s) = (top.k, hist.slots());
        let scale = hist.bins as f64 / (hist.hi - hist.lo);
        let mut sum = [0f64; 64];
        let mut thr = [0f32; 64];
        debug_assert!(n <= 64);
        for (j, t) in thr.iter_mut().enumerate().take(n) {
            *t = self.threshold(j, k);
        }
        for row in rows {
            let x = &acts[row.offset * dim + self.first..row.offset * dim + self.first + n];
            for (j, &v) in x.iter().enumerate() {
                sum[j] += v as f64;
                if v < self.min[j] {
                    self.min[j] = v;
                }
                if v > self.max[j] {
                    self.max[j] = v;
                }
                self.fire[j] += (v > 0.0) as u64;
                self.hist[j * s + hist.slot(v, scale)] += 1;
                // Most tokens fall below the k-th best so far: one comparison and no more.
                if v >= thr[j] {
                    context(row, top, scratch);
                    if self.offer(j, k, v, row.doc as i64, row.pos as i64, scratch) {
                        thr[j] = self.threshold(j, k);
                    }
                }
            }
        }
        // Exact batch moments (two-pass), then one Chan merge per unit.
        let nb = rows.len() as u64;
        let mut m2 = [0f64; 64];
        let mut mb = [0f64; 64];
        for j in 0..n {
            mb[j] = sum[j] / nb as f64;
        }
        for row in rows {
            let x = &acts[row.offset * dim + self.first..row.offset * dim + self.first + n];
            for (j, &v) in x.iter().enumerate() {
                let d = v as f64 - mb[j];
                m2[j] += d * d;
            }
        }
        for j in 0..n {
            let (c, m, q) = chan(
                (self.count[j], self.mean[j], self.m2[j]),
                (nb, mb[j], m2[j]),
            );
            self.count[j] = c;
            self.mean[j] = m;
            self.m2[j] = q;
        }
    }
}

/// The token ids around `row`, `NO_TOKEN` where the window leaves the document.
fn context(row: &Row, top: &TopSpec, out: &mut Vec<u32>) {
    out.clear();
    let start = row.pos as isize - top.before as isize;
    for i in 0..top.ctx_len() as isize {
        let p = start + i;
        out.push(if p >= 0 && (p as usize) < row.doc_tokens.len() {
            row.doc_tokens[p as usize]
        } else {
            NO_TOKEN
        });
    }
}

/// Update every site's units with one batch, in parallel over runs of 64 units. `acts[i]` is site
/// i's [rows, dim] matrix. Each unit is updated by one thread in row order, so the result does not
/// depend on the thread count.
pub fn update_sites(
    sites: &mut [SiteState],
    acts: &[Vec<f32>],
    rows: &[Row],
    hist: &HistSpec,
    top: &TopSpec,
) {
    let mut jobs: Vec<(UnitsMut, &[f32], usize)> = Vec::new();
    for (site, a) in sites.iter_mut().zip(acts) {
        let dim = site.units;
        for c in site.chunks_mut(64, top) {
            jobs.push((c, a.as_slice(), dim));
        }
    }
    jobs.par_iter_mut().for_each_init(
        || Vec::with_capacity(top.ctx_len()),
        |scratch, (c, a, dim)| c.update(a, *dim, rows, hist, top, scratch),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chan_matches_direct_moments() {
        let xs = [1.0f64, 4.0, -2.0, 7.5, 0.25, 3.0, 3.0];
        let direct = |v: &[f64]| {
            let n = v.len() as f64;
            let m = v.iter().sum::<f64>() / n;
            (
                v.len() as u64,
                m,
                v.iter().map(|x| (x - m) * (x - m)).sum::<f64>(),
            )
        };
        let (a, b) = xs.split_at(3);
        let got = chan(direct(a), direct(b));
        let want = direct(&xs);
        assert_eq!(got.0, want.0);
        assert!((got.1 - want.1).abs() < 1e-12);
        assert!((got.2 - want.2).abs() < 1e-12);
        assert_eq!(chan((0, 0.0, 0.0), direct(b)), direct(b));
    }

    #[test]
    fn hist_slots_cover_range_and_tails() {
        let h = HistSpec {
            lo: -1.0,
            hi: 1.0,
            bins: 4,
        };
        let sc = h.bins as f64 / (h.hi - h.lo);
        assert_eq!(h.slot(-1.5, sc), 0);
        assert_eq!(h.slot(-1.0, sc), 1);
        assert_eq!(h.slot(-0.01, sc), 2);
        assert_eq!(h.slot(0.0, sc), 3);
        assert_eq!(h.slot(0.99, sc), 4);
        assert_eq!(h.slot(1.0, sc), 5);
        assert_eq!(h.edges(), vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
    }

    #[test]
    fn topk_keeps_best_and_breaks_ties_by_position() {
        let top = TopSpec {
            k: 2,
            before: 1,
            after: 0,
        };
        let hist = HistSpec {
            lo: 0.0,
            hi: 1.0,
            bins: 1,
        };
        let mut s = SiteState::new("x".into(), 1, &hist, &top);
        let doc = [10u32, 11, 12, 13];
        // activations of unit 0 at positions 0..4 of doc 5
        let acts = [0.5f32, 0.9, 0.5, 0.9];
        let rows: Vec<Row> = (0..4)
            .map(|p| Row {
                offset: p,
                doc: 5,
                pos: p,
                doc_tokens: &doc,
            })
            .collect();
        update_sites(
            std::slice::from_mut(&mut s),
            &[acts.to_vec()],
            &rows,
            &hist,
            &top,
        );
        assert_eq!(s.top_pos, vec![1, 3]);
        assert_eq!(s.top_ctx, vec![10, 11, 12, 13]);
        assert_eq!(s.count[0], 4);
        assert!((s.mean[0] - 0.7).abs() < 1e-7);
        assert_eq!(s.fire[0], 4);
        // the same tie offered from an earlier document wins
        let mut t = SiteState::new("x".into(), 1, &hist, &top);
        let early: Vec<Row> = vec![Row {
            offset: 0,
            doc: 1,
            pos: 3,
            doc_tokens: &doc,
        }];
        update_sites(
            std::slice::from_mut(&mut t),
            &[vec![0.9]],
            &early,
            &hist,
            &top,
        );
        s.merge(&t, &top);
        assert_eq!(s.top_doc, vec![1, 5]);
        assert_eq!(s.top_pos, vec![3, 1]);
        assert_eq!(s.count[0], 5);
    }
}
