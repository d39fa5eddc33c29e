//! Shared math of the module analyses: streamed co-activation statistics (a Gram matrix grown by
//! one matrix product per batch), Pearson correlations from them, k-means (k-means++ seeding,
//! Lloyd iterations, restarts; balanced), spectral clustering (Ng–Jordan–Weiss on a non-negative
//! affinity, k given or chosen by the largest eigengap), and the little dense linear algebra they
//! need (symmetric eigenpairs by Jacobi and subspace iteration, Cholesky solves), written here on
//! top of the gemm kernels rather than adding a linear-algebra crate and its build.
//!
//! Invariants: `CoStats` holds O(d²) numbers whatever the number of tokens, never an activation
//! row; every random choice comes from a seeded `Rng`, so a run is reproducible.

use crate::rng::Rng;
use anyhow::{bail, Result};

/// Co-activation statistics of `d` units: count, sums and the Gram matrix of the activations
/// minus a fixed shift (the first batch's means). Shifting by any constant leaves covariances
/// unchanged; shifting by a value near the mean keeps the Gram's entries small, so that
/// cov = G/n − s sᵀ/n² does not cancel catastrophically when means are large against spreads.
#[derive(Debug, Clone)]
pub struct CoStats {
    pub d: usize,
    pub n: u64,
    pub shift: Vec<f32>,
    /// Σ (x − shift), f64.
    pub sum: Vec<f64>,
    /// Σ (x − shift)(x − shift)ᵀ, row-major d × d, f64 (each batch's product is f32, then added
    /// here, so rounding does not grow with the corpus).
    pub gram: Vec<f64>,
    scratch: Vec<f32>,
    rows: Vec<f32>,
    /// Floating-point operations spent in the Gram products (2·n·d²).
    pub flops: f64,
    /// Seconds spent in them.
    pub seconds: f64,
}

impl CoStats {
    pub fn new(d: usize) -> Self {
        Self {
            d,
            n: 0,
            shift: Vec::new(),
            sum: vec![0.0; d],
            gram: vec![0.0; d * d],
            scratch: Vec::new(),
            rows: Vec::new(),
            flops: 0.0,
            seconds: 0.0,
        }
    }

    /// Fold in `x`, row-major [n, d].
    pub fn add(&mut self, x: &[f32]) -> Result<()> {
        let d = self.d;
        if d == 0 || x.is_empty() {
            return Ok(());
        }
        if !x.len().is_multiple_of(d) {
            bail!("co-activation rows of {} values for {d} units", x.len());
        }
        let n = x.len() / d;
        if self.shift.is_empty() {
            self.shift = (0..d)
                .map(|j| {
                    (x.iter().skip(j).step_by(d).map(|&v| v as f64).sum::<f64>() / n as f64) as f32
                })
                .collect();
        }
        self.rows.clear();
        self.rows.extend(
            x.chunks_exact(d)
                .flat_map(|r| r.iter().zip(&self.shift).map(|(v, s)| v - s)),
        );
        for r in self.rows.chunks_exact(d) {
            for (a, &v) in self.sum.iter_mut().zip(r) {
                *a += v as f64;
            }
        }
        self.scratch.resize(d * d, 0.0);
        let t = std::time::Instant::now();
        gram_into(&mut self.scratch, &self.rows, n, d);
        self.seconds += t.elapsed().as_secs_f64();
        self.flops += 2.0 * (n * d * d) as f64;
        for (g, &s) in self.gram.iter_mut().zip(&self.scratch) {
            *g += s as f64;
        }
        self.n += n as u64;
        Ok(())
    }

    /// Means and (population) standard deviations of the units.
    pub fn moments(&self) -> (Vec<f64>, Vec<f64>) {
        let n = self.n.max(1) as f64;
        let d = self.d;
        let mut mean = vec![0.0; d];
        let mut sd = vec![0.0; d];
        for i in 0..d {
            let m = self.sum[i] / n;
            mean[i] = self.shift.get(i).copied().unwrap_or(0.0) as f64 + m;
            sd[i] = (self.gram[i * d + i] / n - m * m).max(0.0).sqrt();
        }
        (mean, sd)
    }

    /// Pearson correlations, row-major d × d; a unit with (numerically) no spread correlates 0
    /// with everything, itself included.
    pub fn correlations(&self) -> Vec<f64> {
        let n = self.n.max(1) as f64;
        let d = self.d;
        let m: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let (_, sd) = self.moments();
        let mut r = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                let denom = sd[i] * sd[j];
                if is_constant(sd[i]) || is_constant(sd[j]) || denom <= 0.0 {
                    continue;
                }
                let cov = self.gram[i * d + j] / n - m[i] * m[j];
                r[i * d + j] = (cov / denom).clamp(-1.0, 1.0);
            }
        }
        r
    }
}

/// A spread this small is a unit that does not vary over the corpus.
pub fn is_constant(sd: f64) -> bool {
    sd.is_nan() || sd <= 1e-7
}

/// dst [d, d] = xᵀ x for x row-major [n, d], through gemm (the machine's matmul speed).
pub fn gram_into(dst: &mut [f32], x: &[f32], n: usize, d: usize) {
    assert!(dst.len() == d * d && x.len() == n * d, "gram shapes");
    let threads = match candle_core::utils::get_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    // SAFETY: lengths checked above. lhs = xᵀ [d, n]: element (i, k) at x[k·d + i], so column
    // stride d and row stride 1; rhs = x [n, d]: element (k, j) at x[k·d + j]; dst [d, d]
    // row-major. read_dst = false: dst's old contents are never read.
    unsafe {
        gemm::gemm(
            d,
            d,
            n,
            dst.as_mut_ptr(),
            1,
            d as isize,
            false,
            x.as_ptr(),
            d as isize,
            1,
            x.as_ptr(),
            1,
            d as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            threads,
        )
    };
}

/// A clustering: a label per point and each cluster's centre.
#[derive(Debug, Clone)]
pub struct Clusters {
    pub labels: Vec<usize>,
    pub k: usize,
    /// Sum of squared distances to the assigned centres.
    pub inertia: f64,
}

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// k-means on `points` (row-major [n, dim]): k-means++ seeding, Lloyd iterations until no label
/// changes (at most 300), best of `restarts` seeds. An empty cluster is re-seeded at the point
/// farthest from its centre, so every cluster of the result has a member when n ≥ k.
pub fn kmeans(points: &[f64], dim: usize, k: usize, restarts: usize, seed: u64) -> Clusters {
    let n = points.len() / dim.max(1);
    let k = k.min(n).max(1);
    let row = |i: usize| &points[i * dim..(i + 1) * dim];
    let mut best: Option<Clusters> = None;
    let mut rng = Rng::new(seed);
    for _ in 0..restarts.max(1) {
        // k-means++ seeding
        let mut centres: Vec<f64> = Vec::with_capacity(k * dim);
        centres.extend_from_slice(row(rng.below(n)));
        let mut near: Vec<f64> = (0..n).map(|i| dist2(row(i), &centres[..dim])).collect();
        for c in 1..k {
            let total: f64 = near.iter().sum();
            let pick = if total <= 0.0 {
                rng.below(n)
            } else {
                let mut u = rng.uniform() as f64 * total;
                let mut p = n - 1;
                for (i, &w) in near.iter().enumerate() {
                    if u < w {
                        p = i;
                        break;
                    }
                    u -= w;
                }
                p
            };
            centres.extend_from_slice(row(pick));
            for (i, nr) in near.iter_mut().enumerate() {
                *nr = nr.min(dist2(row(i), &centres[c * dim..(c + 1) * dim]));
            }
        }
        let mut labels = vec![usize::MAX; n];
        for _ in 0..300 {
            let mut changed = false;
            for (i, l) in labels.iter_mut().enumerate() {
                let (mut bl, mut bd) = (0, f64::INFINITY);
                for c in 0..k {
                    let dd = dist2(row(i), &centres[c * dim..(c + 1) * dim]);
                    if dd < bd {
                        (bl, bd) = (c, dd);
                    }
                }
                if *l != bl {
                    *l = bl;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
            recentre(points, dim, &labels, k, &mut centres);
        }
        let inertia: f64 = (0..n)
            .map(|i| dist2(row(i), &centres[labels[i] * dim..(labels[i] + 1) * dim]))
            .sum();
        if best.as_ref().is_none_or(|b| inertia < b.inertia) {
            best = Some(Clusters { labels, k, inertia });
        }
    }
    best.expect("at least one restart")
}

/// Centres as the means of their members; an empty cluster takes the point farthest from its
/// own centre (which then leaves its old cluster on the next assignment).
fn recentre(points: &[f64], dim: usize, labels: &[usize], k: usize, centres: &mut [f64]) {
    let n = labels.len();
    let mut count = vec![0usize; k];
    centres.iter_mut().for_each(|c| *c = 0.0);
    for i in 0..n {
        count[labels[i]] += 1;
        for j in 0..dim {
            centres[labels[i] * dim + j] += points[i * dim + j];
        }
    }
    for c in 0..k {
        if count[c] > 0 {
            for j in 0..dim {
                centres[c * dim + j] /= count[c] as f64;
            }
        }
    }
    for c in 0..k {
        if count[c] == 0 {
            let far = (0..n)
                .max_by(|&a, &b| {
                    let da = dist2(
                        &points[a * dim..(a + 1) * dim],
                        &centres[labels[a] * dim..(labels[a] + 1) * dim],
                    );
                    let db = dist2(
                        &points[b * dim..(b + 1) * dim],
                        &centres[labels[b] * dim..(labels[b] + 1) * dim],
                    );
                    da.total_cmp(&db)
                })
                .unwrap_or(0);
            centres[c * dim..(c + 1) * dim].copy_from_slice(&points[far * dim..(far + 1) * dim]);
        }
    }
}

/// Balanced k-means: k clusters of sizes differing by at most one (MoEfication's equal experts).
/// Lloyd iterations whose assignment step fills clusters greedily by increasing distance over all
/// (point, centre) pairs, each cluster up to its capacity; seeded by plain k-means.
pub fn balanced_kmeans(points: &[f64], dim: usize, k: usize, seed: u64) -> Clusters {
    let n = points.len() / dim.max(1);
    let k = k.min(n).max(1);
    let plain = kmeans(points, dim, k, 3, seed);
    let mut centres = vec![0.0; k * dim];
    recentre(points, dim, &plain.labels, k, &mut centres);
    let cap: Vec<usize> = (0..k).map(|c| n / k + usize::from(c < n % k)).collect();
    let mut labels = vec![usize::MAX; n];
    for _ in 0..50 {
        let mut pairs: Vec<(f64, usize, usize)> = Vec::with_capacity(n * k);
        for i in 0..n {
            for c in 0..k {
                pairs.push((
                    dist2(
                        &points[i * dim..(i + 1) * dim],
                        &centres[c * dim..(c + 1) * dim],
                    ),
                    i,
                    c,
                ));
            }
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        let mut new = vec![usize::MAX; n];
        let mut fill = vec![0usize; k];
        for (_, i, c) in pairs {
            if new[i] == usize::MAX && fill[c] < cap[c] {
                new[i] = c;
                fill[c] += 1;
            }
        }
        let changed = new != labels;
        labels = new;
        recentre(points, dim, &labels, k, &mut centres);
        if !changed {
            break;
        }
    }
    let inertia = (0..n)
        .map(|i| {
            dist2(
                &points[i * dim..(i + 1) * dim],
                &centres[labels[i] * dim..(labels[i] + 1) * dim],
            )
        })
        .sum();
    Clusters { labels, k, inertia }
}

/// How many clusters spectral clustering makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KChoice {
    Fixed(usize),
    /// The k in 2..=max with the largest gap λ_k − λ_{k+1} between consecutive eigenvalues of the
    /// normalized affinity (largest first).
    Eigengap {
        max: usize,
    },
}

/// A spectral clustering and the spectrum it was cut from.
#[derive(Debug, Clone)]
pub struct Spectral {
    pub clusters: Clusters,
    /// The largest eigenvalues of D^-1/2 A D^-1/2, largest first (as many as were computed).
    pub eigenvalues: Vec<f64>,
}

/// Ng–Jordan–Weiss spectral clustering of `n` points with the symmetric non-negative affinity
/// `a` (row-major n × n, diagonal ignored): the k leading eigenvectors of D^-1/2 A D^-1/2, rows
/// scaled to unit length, clustered by k-means. A point with no affinity to any other gets a tiny
/// degree rather than a division by zero, and lands wherever k-means puts a zero row.
pub fn spectral(a: &[f64], n: usize, k: KChoice, seed: u64) -> Result<Spectral> {
    if n == 0 || a.len() != n * n {
        bail!(
            "spectral clustering of {n} points with {} affinities",
            a.len()
        );
    }
    let deg: Vec<f64> = (0..n)
        .map(|i| {
            (0..n)
                .filter(|&j| j != i)
                .map(|j| a[i * n + j].max(0.0))
                .sum::<f64>()
                .max(1e-12)
        })
        .collect();
    let inv: Vec<f64> = deg.iter().map(|d| 1.0 / d.sqrt()).collect();
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            if i != j {
                m[i * n + j] = a[i * n + j].max(0.0) * inv[i] * inv[j];
            }
        }
    }
    let want = match k {
        KChoice::Fixed(k) => k.clamp(1, n),
        KChoice::Eigengap { max } => (max + 1).min(n),
    };
    let (vals, vecs, p) = top_eigen(&m, n, want, seed)?;
    let k = match k {
        KChoice::Fixed(k) => k.clamp(1, n),
        KChoice::Eigengap { max } => {
            let max = max.min(n.saturating_sub(1)).max(2);
            if n <= 2 {
                n
            } else {
                (2..=max)
                    .max_by(|&x, &y| {
                        (vals[x - 1] - vals[x])
                            .total_cmp(&(vals[y - 1] - vals[y]))
                            // equal gaps: the smaller k
                            .then(y.cmp(&x))
                    })
                    .unwrap_or(2)
            }
        }
    };
    let mut emb = vec![0.0; n * k];
    for i in 0..n {
        for c in 0..k {
            emb[i * k + c] = vecs[i * p + c];
        }
        let norm = emb[i * k..(i + 1) * k]
            .iter()
            .map(|x| x * x)
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            emb[i * k..(i + 1) * k].iter_mut().for_each(|x| *x /= norm);
        }
    }
    let clusters = kmeans(&emb, k, k, 8, seed);
    Ok(Spectral {
        clusters,
        eigenvalues: vals,
    })
}

/// c [n, p] = a [n, m] · b [m, p], row-major f64, through gemm.
pub fn matmul_f64(a: &[f64], b: &[f64], n: usize, m: usize, p: usize) -> Vec<f64> {
    assert!(a.len() == n * m && b.len() == m * p, "matmul shapes");
    let mut c = vec![0.0; n * p];
    if n == 0 || p == 0 {
        return c;
    }
    let threads = match candle_core::utils::get_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    // SAFETY: lengths checked above; all three matrices row-major (column stride 1, row stride
    // their column count); read_dst = false.
    unsafe {
        gemm::gemm(
            n,
            p,
            m,
            c.as_mut_ptr(),
            1,
            p as isize,
            false,
            a.as_ptr(),
            1,
            m as isize,
            b.as_ptr(),
            1,
            p as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            threads,
        )
    };
    c
}

/// Eigen-decomposition of a small symmetric matrix (row-major n × n) by cyclic Jacobi rotations:
/// eigenvalues largest first and the eigenvectors as the columns of a row-major n × n matrix.
/// Exact to rounding; O(n³) per sweep, for n up to a few hundred.
pub fn jacobi_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
    for _ in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-14 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| a[y * n + y].total_cmp(&a[x * n + x]));
    let vals = order.iter().map(|&i| a[i * n + i]).collect();
    let mut vecs = vec![0.0; n * n];
    for (c, &o) in order.iter().enumerate() {
        for r in 0..n {
            vecs[r * n + c] = v[r * n + o];
        }
    }
    (vals, vecs)
}

/// Orthonormalize the columns of v (row-major n × p) in place, modified Gram–Schmidt; a column
/// that collapses is replaced by a fresh random one.
fn orthonormalize(v: &mut [f64], n: usize, p: usize, rng: &mut Rng) {
    for c in 0..p {
        for _ in 0..2 {
            for b in 0..c {
                let dot: f64 = (0..n).map(|r| v[r * p + b] * v[r * p + c]).sum();
                (0..n).for_each(|r| v[r * p + c] -= dot * v[r * p + b]);
            }
            let norm = (0..n)
                .map(|r| v[r * p + c] * v[r * p + c])
                .sum::<f64>()
                .sqrt();
            if norm > 1e-10 {
                (0..n).for_each(|r| v[r * p + c] /= norm);
                break;
            }
            (0..n).for_each(|r| v[r * p + c] = rng.normal(1.0) as f64);
        }
    }
}

/// The `want` largest eigenpairs of a symmetric matrix m (row-major n × n) whose eigenvalues
/// lie in [−1, 1] (a normalized affinity). Small matrices (n ≤ 320) are decomposed whole by
/// Jacobi; larger ones by subspace iteration on m + I (so the largest eigenvalues are also the
/// largest in magnitude) with p = want + 16 vectors and a Rayleigh–Ritz step, until the wanted
/// Ritz values move by less than 1e-9 (at most 1000 iterations). Returns the values largest
/// first, the vectors as columns of a row-major n × p matrix, and p (≥ want).
pub fn top_eigen(
    m: &[f64],
    n: usize,
    want: usize,
    seed: u64,
) -> Result<(Vec<f64>, Vec<f64>, usize)> {
    if n <= 320 {
        let (vals, vecs) = jacobi_eigen(m, n);
        return Ok((vals, vecs, n));
    }
    let p = (want + 16).min(n);
    let mut shifted = m.to_vec();
    (0..n).for_each(|i| shifted[i * n + i] += 1.0);
    let mut rng = Rng::new(seed ^ 0xE16E);
    let mut v: Vec<f64> = (0..n * p).map(|_| rng.normal(1.0) as f64).collect();
    orthonormalize(&mut v, n, p, &mut rng);
    let mut last: Vec<f64> = vec![f64::INFINITY; want];
    let ritz = |v: &[f64]| -> (Vec<f64>, Vec<f64>) {
        let mv = matmul_f64(&shifted, v, n, n, p);
        let vt: Vec<f64> = (0..p * n).map(|i| v[(i % n) * p + i / n]).collect();
        let h = matmul_f64(&vt, &mv, p, n, p);
        jacobi_eigen(&h, p)
    };
    for it in 0..1000 {
        v = matmul_f64(&shifted, &v, n, n, p);
        orthonormalize(&mut v, n, p, &mut rng);
        if it % 10 == 9 {
            let (vals, _) = ritz(&v);
            let moved = vals
                .iter()
                .zip(&last)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            last = vals[..want].to_vec();
            if moved < 1e-9 {
                break;
            }
        }
    }
    let (vals, q) = ritz(&v);
    let vecs = matmul_f64(&v, &q, n, p, p);
    Ok((vals.into_iter().map(|x| x - 1.0).collect(), vecs, p))
}

/// Solve a x = b for a symmetric positive definite a (row-major n × n) and b (n × m) by
/// Cholesky; an error when a is not positive definite.
pub fn solve_spd(a: &[f64], b: &[f64], n: usize, m: usize) -> Result<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    bail!("matrix is not positive definite (pivot {i}: {s})");
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    let mut x = b.to_vec();
    for c in 0..m {
        for i in 0..n {
            let s: f64 = x[i * m + c] - (0..i).map(|k| l[i * n + k] * x[k * m + c]).sum::<f64>();
            x[i * m + c] = s / l[i * n + i];
        }
        for i in (0..n).rev() {
            let s: f64 =
                x[i * m + c] - (i + 1..n).map(|k| l[k * n + i] * x[k * m + c]).sum::<f64>();
            x[i * m + c] = s / l[i * n + i];
        }
    }
    Ok(x)
}

/// Jaccard index of two sets.
pub fn jaccard<T: Ord + Clone>(a: &[T], b: &[T]) -> f64 {
    let a: std::collections::BTreeSet<T> = a.iter().cloned().collect();
    let b: std::collections::BTreeSet<T> = b.iter().cloned().collect();
    let union = a.union(&b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(&b).count() as f64 / union as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costats_match_a_direct_computation() {
        let mut rng = Rng::new(7);
        let (n, d) = (300, 5);
        let x: Vec<f32> = (0..n * d).map(|_| 100.0 + rng.normal(1.0)).collect();
        let mut s = CoStats::new(d);
        for part in x.chunks(7 * d) {
            s.add(part).unwrap();
        }
        let r = s.correlations();
        let col = |j: usize| -> Vec<f64> { (0..n).map(|i| x[i * d + j] as f64).collect() };
        for i in 0..d {
            for j in 0..d {
                let (a, b) = (col(i), col(j));
                let (ma, mb) = (
                    a.iter().sum::<f64>() / n as f64,
                    b.iter().sum::<f64>() / n as f64,
                );
                let cov: f64 = a.iter().zip(&b).map(|(p, q)| (p - ma) * (q - mb)).sum();
                let va: f64 = a.iter().map(|p| (p - ma).powi(2)).sum();
                let vb: f64 = b.iter().map(|q| (q - mb).powi(2)).sum();
                let want = cov / (va * vb).sqrt();
                assert!(
                    (r[i * d + j] - want).abs() < 1e-5,
                    "{i},{j}: {} vs {want}",
                    r[i * d + j]
                );
            }
        }
    }

    #[test]
    fn spectral_separates_two_blocks_and_eigengap_finds_two() {
        let n = 10;
        let mut a = vec![0.05; n * n];
        for i in 0..n {
            for j in 0..n {
                if (i < 5) == (j < 5) {
                    a[i * n + j] = 0.9;
                }
            }
        }
        let s = spectral(&a, n, KChoice::Eigengap { max: 5 }, 1).unwrap();
        assert_eq!(s.clusters.k, 2);
        let l = &s.clusters.labels;
        assert!(l[..5].iter().all(|&x| x == l[0]) && l[5..].iter().all(|&x| x == l[5]));
        assert_ne!(l[0], l[5]);
    }

    #[test]
    fn balanced_kmeans_gives_equal_sizes() {
        let mut rng = Rng::new(3);
        let pts: Vec<f64> = (0..40 * 2)
            .map(|i| rng.normal(0.1) as f64 + if i < 60 { 0.0 } else { 5.0 })
            .collect();
        let c = balanced_kmeans(&pts, 2, 4, 0);
        let mut size = [0; 4];
        c.labels.iter().for_each(|&l| size[l] += 1);
        assert_eq!(size, [10; 4]);
    }
}
