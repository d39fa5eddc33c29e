//! Per-unit streaming statistics and top-k examples: updated batch by batch, merged exactly.
//!
//! Everything a unit keeps has a fixed size (O(K) per unit), so memory does not grow with the
//! corpus. Moments are kept as (count, mean, M2) in f64 and combined with Chan et al.'s pairwise
//! formula, so shards, batches and checkpoints all combine the same way.

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

/// One token of a batch: where its activations start and where it sits in its document.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// Index of the token in the flattened [batch, time] activation tensor.
    pub offset: usize,
    pub doc: u64,
    pub pos: usize,
    pub doc_tokens: &'a [u32],
    /// Whether this token may become a top example (special tokens may not, by default).
    pub example: bool,
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
    /// `rows` lists the real (unpadded) tokens, in any order (the result does not depend on it
    /// beyond float summation order).
    pub fn update(
        &mut self,
        acts: &[f32],
        dim: usize,
        rows: &[Row],
        hist: &HistSpec,
        top: &TopSpec,
        scratch: &mut Scratch,
    ) {
        if rows.is_empty() || self.count.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { self.update_avx512(acts, dim, rows, hist, top, scratch) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: as above.
                return unsafe { self.update_avx2(acts, dim, rows, hist, top, scratch) };
            }
        }
        self.update_generic(acts, dim, rows, hist, top, scratch)
    }

    /// `update_generic` compiled for AVX-512 (chosen at run time): the per-row loop over the
    /// chunk's units vectorizes 8–16 wide.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
    unsafe fn update_avx512(
        &mut self,
        acts: &[f32],
        dim: usize,
        rows: &[Row],
        hist: &HistSpec,
        top: &TopSpec,
        scratch: &mut Scratch,
    ) {
        self.update_generic(acts, dim, rows, hist, top, scratch)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn update_avx2(
        &mut self,
        acts: &[f32],
        dim: usize,
        rows: &[Row],
        hist: &HistSpec,
        top: &TopSpec,
        scratch: &mut Scratch,
    ) {
        self.update_generic(acts, dim, rows, hist, top, scratch)
    }

    /// One pass over the batch. Per row, everything but the histogram increments and the rare
    /// top-k offers is a branch-free loop over the chunk's units, kept in local arrays.
    #[inline(always)]
    fn update_generic(
        &mut self,
        acts: &[f32],
        dim: usize,
        rows: &[Row],
        hist: &HistSpec,
        top: &TopSpec,
        scratch: &mut Scratch,
    ) {
        let n = self.count.len();
        assert!(n <= CHUNK);
        let (k, s) = (top.k, hist.slots());
        let (lo, hi) = (hist.lo, hist.hi);
        let scale = hist.bins as f64 / (hi - lo);
        let last = (hist.bins - 1) as f64;
        let over = hist.bins as u32 + 1;
        // Batch moments about a shift near the mean (the running mean, or the batch's first value
        // for a unit not seen yet), so one pass suffices without the cancellation of raw sums.
        let first = &acts[rows[0].offset * dim + self.first..][..n];
        let mut shift = [0f64; CHUNK];
        let mut s1 = [0f64; CHUNK];
        let mut s2 = [0f64; CHUNK];
        let mut mn = [0f32; CHUNK];
        let mut mx = [0f32; CHUNK];
        let mut fire = [0u32; CHUNK];
        let mut thr = [0f32; CHUNK];
        let mut slot = [0u32; CHUNK];
        for j in 0..n {
            shift[j] = if self.count[j] > 0 {
                self.mean[j]
            } else {
                first[j] as f64
            };
            mn[j] = self.min[j];
            mx[j] = self.max[j];
            thr[j] = self.threshold(j, k);
        }
        // Histogram counts of this batch in u16, so that the chunk's counters stay in the L1
        // cache; added to the u64 totals at the end (and before they could overflow).
        scratch.hist.clear();
        scratch.hist.resize(n * s, 0);
        let counts = &mut scratch.hist[..];
        let flush = |hist: &mut [u64], counts: &mut [u16]| {
            for (h, c) in hist.iter_mut().zip(counts.iter_mut()) {
                *h += *c as u64;
                *c = 0;
            }
        };
        let mut pending = 0usize;
        for (r, row) in rows.iter().enumerate() {
            // Rows are `dim` floats apart, each in its own page: the hardware does not see the
            // stream coming, so ask for the row PREFETCH rows ahead.
            if let Some(ahead) = rows.get(r + PREFETCH) {
                prefetch(&acts[ahead.offset * dim + self.first..][..n]);
            }
            let base = row.offset * dim + self.first;
            let x = &acts[base..base + n];
            let mut hit = false;
            for j in 0..n {
                let v = x[j];
                let d = v as f64 - shift[j];
                s1[j] += d;
                s2[j] += d * d;
                mn[j] = if v < mn[j] { v } else { mn[j] };
                mx[j] = if v > mx[j] { v } else { mx[j] };
                fire[j] += (v > 0.0) as u32;
                // The same f64 arithmetic as `HistSpec::slot`, clamped before the conversion.
                let xf = v as f64;
                let t = ((xf - lo) * scale).max(0.0).min(last);
                // SAFETY: t is finite and within [0, bins - 1] (a NaN became 0 in `max`); the
                // unchecked conversion is what lets this loop vectorize.
                let t = unsafe { t.to_int_unchecked::<i32>() } as u32;
                slot[j] = if xf < lo {
                    0
                } else if xf < hi {
                    1 + t
                } else {
                    over
                };
                // Most tokens fall below the k-th best so far: one comparison and no more.
                hit |= v >= thr[j];
            }
            for j in 0..n {
                counts[j * s + slot[j] as usize] += 1;
            }
            pending += 1;
            if pending == u16::MAX as usize {
                flush(self.hist, counts);
                pending = 0;
            }
            if hit && row.example {
                // Find the units that hit 16 at a time (a vector compare and a bit scan).
                for b in (0..n).step_by(16) {
                    let e = (b + 16).min(n);
                    let mut m = 0u32;
                    for j in b..e {
                        m |= ((x[j] >= thr[j]) as u32) << (j - b);
                    }
                    while m != 0 {
                        let j = b + m.trailing_zeros() as usize;
                        m &= m - 1;
                        context(row, top, &mut scratch.ctx);
                        let ctx = &scratch.ctx;
                        if self.offer(j, k, x[j], row.doc as i64, row.pos as i64, ctx) {
                            thr[j] = self.threshold(j, k);
                        }
                    }
                }
            }
        }
        flush(self.hist, counts);
        let nb = rows.len() as u64;
        for j in 0..n {
            self.min[j] = mn[j];
            self.max[j] = mx[j];
            self.fire[j] += fire[j] as u64;
            let d = s1[j] / nb as f64;
            let m2 = (s2[j] - s1[j] * d).max(0.0);
            let (c, m, q) = chan(
                (self.count[j], self.mean[j], self.m2[j]),
                (nb, shift[j] + d, m2),
            );
            self.count[j] = c;
            self.mean[j] = m;
            self.m2[j] = q;
        }
    }
}

/// Per-thread buffers of `update`.
#[derive(Default)]
pub struct Scratch {
    ctx: Vec<u32>,
    hist: Vec<u16>,
}

/// How many rows ahead `update` prefetches.
const PREFETCH: usize = 4;

/// Hint the CPU to bring `x` into the cache.
#[inline(always)]
fn prefetch(x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in x.chunks(16) {
        // SAFETY: a prefetch is only a hint; the pointer is into a live slice.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                line.as_ptr() as *const i8,
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
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

/// Update every site's units with one batch, in parallel over runs of `CHUNK` units. `acts[i]` is site
/// i's [rows, dim] matrix. Each unit is updated by one thread in row order, so the result does not
/// depend on the thread count.
pub fn update_sites(sites: &mut [SiteState], acts: &[&[f32]], rows: &[Row], top: &TopSpec) {
    let mut jobs: Vec<(UnitsMut, &[f32], usize, HistSpec)> = Vec::new();
    for (site, a) in sites.iter_mut().zip(acts) {
        let (dim, spec) = (site.units, site.spec);
        for c in site.chunks_mut(CHUNK, top) {
            jobs.push((c, a, dim, spec));
        }
    }
    jobs.par_iter_mut()
        .for_each_init(Scratch::default, |scratch, (c, a, dim, spec)| {
            c.update(a, *dim, rows, spec, top, scratch)
        });
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
