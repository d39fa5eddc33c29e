//! The per-batch update of the recording state: every unit's moments, extremes, fire count,
//! histogram and top-k offers, in one pass over a chunk of units at a time (vectorized, with a
//! cheap threshold test before any top-k work). Each unit is updated by one thread in row order,
//! so the result does not depend on the thread count.

use super::state::{chan, HistSpec, SiteState, TopSpec, CHUNK, NO_TOKEN};
use rayon::prelude::*;

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
    pub(super) count: &'a mut [u64],
    pub(super) mean: &'a mut [f64],
    pub(super) m2: &'a mut [f64],
    pub(super) min: &'a mut [f32],
    pub(super) max: &'a mut [f32],
    pub(super) fire: &'a mut [u64],
    pub(super) hist: &'a mut [u64],
    pub(super) top_act: &'a mut [f32],
    pub(super) top_doc: &'a mut [i64],
    pub(super) top_pos: &'a mut [i64],
    pub(super) top_ctx: &'a mut [u32],
}

/// Does example (a, d, p) rank above (b, e, q)? Higher activation first, then earlier (doc, pos).
#[inline]
fn better(a: f32, d: i64, p: i64, b: f32, e: i64, q: i64) -> bool {
    a > b || (a == b && (d, p) < (e, q))
}

impl UnitsMut<'_> {
    /// Offer an example to unit `j`'s top-k; keeps the list sorted best first.
    #[inline]
    pub(super) fn offer(
        &mut self,
        j: usize,
        k: usize,
        act: f32,
        doc: i64,
        pos: i64,
        ctx: &[u32],
    ) -> bool {
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

/// Which tokens of a batch a site's units see.
#[derive(Clone, Copy)]
pub enum Rows<'r, 'a> {
    /// Every unit sees these tokens.
    All(&'r [Row<'a>]),
    /// Unit `u` sees `per_unit[u]` only (a routing state: expert `u` sees its routed tokens).
    PerUnit(&'r [Vec<Row<'a>>]),
}

/// One site's part of a batch: its [rows, dim] activation matrix and which rows its units see.
#[derive(Clone, Copy)]
pub struct SiteBatch<'r, 'a> {
    pub acts: &'r [f32],
    pub rows: Rows<'r, 'a>,
}

/// Update every site's units with one batch, in parallel over runs of `CHUNK` units. `acts[i]` is site
/// i's [rows, dim] matrix. Each unit is updated by one thread in row order, so the result does not
/// depend on the thread count.
pub fn update_sites(sites: &mut [SiteState], acts: &[&[f32]], rows: &[Row], top: &TopSpec) {
    let batches: Vec<SiteBatch> = acts
        .iter()
        .map(|&acts| SiteBatch {
            acts,
            rows: Rows::All(rows),
        })
        .collect();
    update_batches(sites, &batches, top);
}

/// One parallel job of a batch update: a run of units, the site's activations and width, its
/// histogram bins, and the tokens those units see.
type Job<'u, 'r, 'a> = (UnitsMut<'u>, &'r [f32], usize, HistSpec, &'r [Row<'a>]);

/// `update_sites` where each site sees its own tokens ([`Rows`]): the expert neurons of a
/// mixture-of-experts layer see only the tokens routed to their expert, and a routing state's
/// unit (an expert) only its routed tokens. A row a unit does not see changes nothing of it.
pub fn update_batches(sites: &mut [SiteState], batches: &[SiteBatch], top: &TopSpec) {
    let mut jobs: Vec<Job> = Vec::new();
    for (site, b) in sites.iter_mut().zip(batches) {
        let (dim, spec) = (site.units, site.spec);
        match b.rows {
            Rows::All(rows) => {
                for c in site.chunks_mut(CHUNK, top) {
                    jobs.push((c, b.acts, dim, spec, rows));
                }
            }
            Rows::PerUnit(per_unit) => {
                debug_assert_eq!(per_unit.len(), site.units);
                for (c, rows) in site.chunks_mut(1, top).into_iter().zip(per_unit) {
                    jobs.push((c, b.acts, dim, spec, rows));
                }
            }
        }
    }
    jobs.par_iter_mut()
        .for_each_init(Scratch::default, |scratch, (c, a, dim, spec, rows)| {
            c.update(a, *dim, rows, spec, top, scratch)
        });
}
