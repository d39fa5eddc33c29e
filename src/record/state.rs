//! Per-unit streaming statistics and top-k examples: updated batch by batch, merged exactly.
//!
//! Everything a unit keeps has a fixed size (O(K) per unit), so memory does not grow with the
//! corpus. Moments are kept as (count, mean, M2) in f64 and combined with Chan et al.'s pairwise
//! formula, so shards, batches and checkpoints all combine the same way.

use super::update::UnitsMut;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Marks a context slot outside the document (or an empty top-k slot).
pub const NO_TOKEN: u32 = u32::MAX;

/// Units per parallel job: each job updates a run of this many consecutive units of one site.
/// Wide enough that each row's slice is several cache lines (rows are a page or more apart), small
/// enough that the run's per-batch counters stay in the L1 cache.
pub const CHUNK: usize = 256;

/// Fixed histogram bins: `bins` equal bins over [lo, hi), plus an underflow bin first and an
/// overflow bin last. Fixed up front so that histograms of different runs add up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistSpec {
    pub lo: f64,
    pub hi: f64,
    pub bins: usize,
}

/// The histogram range used before per-site ranges, and the fallback when a site's first
/// activations have no finite value.
pub const DEFAULT_HIST_RANGE: (f64, f64) = (-4.0, 12.0);

impl HistSpec {
    /// A range for activations seen between `min` and `max`: widened by a quarter of the span on
    /// each side, then rounded outward to a multiple of a 1-2-5 step about a tenth of the
    /// widened span (so activations in -0.17..3.2 get the range -2..5).
    pub fn around(min: f32, max: f32, bins: usize) -> Self {
        let (min, max) = (min as f64, max as f64);
        let (lo, hi) = if !(min.is_finite() && max.is_finite() && min <= max) {
            DEFAULT_HIST_RANGE
        } else {
            let margin = if max > min {
                0.25 * (max - min)
            } else {
                0.25 * min.abs().max(1.0)
            };
            let (lo, hi) = (min - margin, max + margin);
            // step = d · 10^e with d in {1, 2, 5}, the smallest at least a tenth of the span
            let x = (hi - lo) / 10.0;
            let mut e = x.log10().floor() as i32;
            let f = x / 10f64.powi(e) * (1.0 - 1e-9);
            let d = if f <= 1.0 {
                1.0
            } else if f <= 2.0 {
                2.0
            } else if f <= 5.0 {
                5.0
            } else {
                e += 1;
                1.0
            };
            // m · d · 10^e, written so that decimal steps give the closest double (-0.6, not
            // -0.6000000000000001)
            let at = |m: f64| {
                if e < 0 {
                    m * d / 10f64.powi(-e)
                } else {
                    m * d * 10f64.powi(e)
                }
            };
            let step = at(1.0);
            (at((lo / step).floor()), at((hi / step).ceil()))
        };
        Self { lo, hi, bins }
    }

    /// Counters per unit: the bins plus underflow and overflow.
    pub fn slots(&self) -> usize {
        self.bins + 2
    }

    pub fn edges(&self) -> Vec<f64> {
        let w = (self.hi - self.lo) / self.bins as f64;
        (0..=self.bins)
            .map(|i| {
                if i == self.bins {
                    self.hi
                } else {
                    self.lo + w * i as f64
                }
            })
            .collect()
    }

    /// The counter `x` goes to: 0 below `lo`, 1..=bins for the bins, bins + 1 at or above `hi`
    /// (and NaN). The batch update computes the same thing vectorized.
    #[inline]
    pub fn slot(&self, x: f32) -> usize {
        let scale = self.bins as f64 / (self.hi - self.lo);
        let x = x as f64;
        if x < self.lo {
            0
        } else if x < self.hi {
            1 + (((x - self.lo) * scale) as usize).min(self.bins - 1)
        } else {
            self.bins + 1
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
    /// This site's histogram bins.
    pub spec: HistSpec,
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
            spec: *hist,
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
        debug_assert_eq!(self.spec, other.spec, "histograms of different bins");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::update::{update_sites, Row};

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
        assert_eq!(h.slot(-1.5), 0);
        assert_eq!(h.slot(-1.0), 1);
        assert_eq!(h.slot(-0.01), 2);
        assert_eq!(h.slot(0.0), 3);
        assert_eq!(h.slot(0.99), 4);
        assert_eq!(h.slot(1.0), 5);
        assert_eq!(h.edges(), vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
    }

    #[test]
    fn auto_ranges_are_widened_and_round() {
        let r = |a: f32, b: f32| {
            let h = HistSpec::around(a, b, 8);
            (h.lo, h.hi)
        };
        assert_eq!(r(-0.17, 3.2), (-2.0, 5.0));
        assert_eq!(r(0.0, 1.0), (-0.4, 1.4));
        assert_eq!(r(-120.0, 35.0), (-200.0, 100.0));
        assert_eq!(r(0.0, 0.0), (-0.25, 0.25));
        assert_eq!(r(5.0, 5.0), (3.5, 6.5));
        assert_eq!(r(f32::NAN, 1.0), DEFAULT_HIST_RANGE);
        assert_eq!(r(1.0, f32::INFINITY), DEFAULT_HIST_RANGE);
        for (a, b) in [(-3e-5f32, 7e-4f32), (1e6, 3e6), (-0.5, -0.49)] {
            let (lo, hi) = r(a, b);
            let span = (b - a) as f64;
            assert!(lo <= a as f64 - 0.25 * span && hi >= b as f64 + 0.25 * span);
            assert!(hi - lo < 3.0 * span, "{a} {b}: {lo} {hi}");
        }
    }

    #[test]
    fn batch_update_matches_scalar_definitions() {
        // 70 units (a full chunk and a partial one) × 300 rows, with values on bin edges, at
        // the range ends, far outside, and NaN.
        let h = HistSpec {
            lo: -1.0,
            hi: 3.0,
            bins: 8,
        };
        let top = TopSpec {
            k: 3,
            before: 0,
            after: 0,
        };
        let (units, n) = (70usize, 300usize);
        let mut seed = 99u64;
        let special = [-1.0f32, 3.0, -1.5, 0.5, 2.5, 1e30, -1e30, f32::NAN, 0.0];
        let acts: Vec<f32> = (0..units * n)
            .map(|i| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                if i % 13 == 0 && i % units < 35 {
                    special[(seed >> 40) as usize % special.len()]
                } else {
                    ((seed >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 2.0
                }
            })
            .collect();
        let doc: Vec<u32> = (0..n as u32).collect();
        let rows: Vec<Row> = (0..n)
            .map(|p| Row {
                offset: p,
                doc: 0,
                pos: p,
                doc_tokens: &doc,
                example: true,
            })
            .collect();
        let mut st = SiteState::new("x".into(), units, &h, &top);
        // two batches, so the second one is folded into a running state
        update_sites(
            std::slice::from_mut(&mut st),
            &[&acts[..]],
            &rows[..100],
            &top,
        );
        update_sites(
            std::slice::from_mut(&mut st),
            &[&acts[..]],
            &rows[100..],
            &top,
        );
        for u in 0..units {
            let xs: Vec<f32> = (0..n).map(|r| acts[r * units + u]).collect();
            let mut want = vec![0u64; h.slots()];
            for &x in &xs {
                want[h.slot(x)] += 1;
            }
            assert_eq!(
                &st.hist[u * h.slots()..(u + 1) * h.slots()],
                &want[..],
                "unit {u}"
            );
            let ok: Vec<f64> = xs
                .iter()
                .filter(|x| !x.is_nan())
                .map(|&x| x as f64)
                .collect();
            if ok.len() == n && ok.iter().all(|x| x.abs() < 1e6) {
                let m = ok.iter().sum::<f64>() / n as f64;
                let v = ok.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
                assert!(
                    (st.mean[u] - m).abs() <= 1e-9 * (1.0 + m.abs()),
                    "unit {u} mean"
                );
                assert!((st.var(u) - v).abs() <= 1e-9 * (1.0 + v), "unit {u} var");
            }
            let min = xs
                .iter()
                .copied()
                .filter(|x| !x.is_nan())
                .fold(f32::INFINITY, f32::min);
            let max = xs
                .iter()
                .copied()
                .filter(|x| !x.is_nan())
                .fold(f32::NEG_INFINITY, f32::max);
            assert_eq!((st.min[u], st.max[u]), (min, max), "unit {u}");
            assert_eq!(st.fire[u], xs.iter().filter(|&&x| x > 0.0).count() as u64);
            let mut best: Vec<(f32, usize)> = xs
                .iter()
                .enumerate()
                .filter(|(_, x)| !x.is_nan())
                .map(|(p, &x)| (x, p))
                .collect();
            best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let got: Vec<i64> = st.top_pos[u * 3..u * 3 + 3].to_vec();
            let want: Vec<i64> = best[..3].iter().map(|b| b.1 as i64).collect();
            assert_eq!(got, want, "unit {u} top");
        }
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
                example: true,
            })
            .collect();
        update_sites(std::slice::from_mut(&mut s), &[&acts[..]], &rows, &top);
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
            example: true,
        }];
        update_sites(std::slice::from_mut(&mut t), &[&[0.9][..]], &early, &top);
        s.merge(&t, &top);
        assert_eq!(s.top_doc, vec![1, 5]);
        assert_eq!(s.top_pos, vec![3, 1]);
        assert_eq!(s.count[0], 5);
    }
}
