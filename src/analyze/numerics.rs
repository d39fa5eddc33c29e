//! Numerics shared by `tune`, `frequency` and `align`: ranks and Spearman's ρ, Pearson's r,
//! interleaved k-fold splits, matrix products (the `gemm` crate, already ours for the CPU kernels),
//! a symmetric eigensolver, and ridge regression in the SVD basis of the feature matrix with
//! exact leave-one-out errors for choosing alpha.
//!
//! Invariants:
//! - everything is f64, matrices row-major `Vec<f64>` with their dimensions passed beside them;
//! - folds are interleaved (stimulus i is in fold i mod k), so a stimulus file sorted by value or
//!   condition still gives every fold the whole range (sklearn's `KFold` would extrapolate there);
//! - ridge fits an unpenalized intercept by centering X and Y on the training rows, and picks one
//!   alpha for all targets by the summed squared leave-one-out error: exactly scikit-learn's
//!   `RidgeCV(alphas, fit_intercept=True)` (its default `cv=None` efficient LOO, one alpha shared);
//! - degenerate input (a constant vector, fewer than 3 values) gives NaN, never a panic.

use super::stats::{order, t_two_sided_p};

/// Ranks 1..n, tied values sharing their mean rank (NaN ranks above everything, as `order`).
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| order(x[a], x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i + 1;
        while j < idx.len() && order(x[idx[j]], x[idx[i]]).is_eq() {
            j += 1;
        }
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        idx[i..j].iter().for_each(|&k| r[k] = mean_rank);
        i = j;
    }
    r
}

/// Pearson's r; NaN when either side is constant or has NaN, or fewer than 2 values.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f64::NAN;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (a, b) = (x[i] - mx, y[i] - my);
        sxy += a * b;
        sxx += a * a;
        syy += b * b;
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return f64::NAN;
    }
    (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0)
}

/// Spearman's ρ and its two-sided p as SciPy's `spearmanr` computes it (t = ρ√((n−2)/(1−ρ²))
/// against Student's t with n − 2 df).
pub fn spearman(x: &[f64], y: &[f64]) -> (f64, f64) {
    let rho = pearson(&ranks(x), &ranks(y));
    (rho, rho_p(rho, x.len()))
}

/// Two-sided p of a correlation r over n pairs (the t test of SciPy's `pearsonr`/`spearmanr`).
pub fn rho_p(rho: f64, n: usize) -> f64 {
    if rho.is_nan() || n < 3 {
        return f64::NAN;
    }
    let df = (n - 2) as f64;
    let denom = 1.0 - rho * rho;
    if denom <= 0.0 {
        return 0.0;
    }
    t_two_sided_p(rho * (df / denom).sqrt(), df)
}

/// The test rows of each of `k` interleaved folds over n items (fold f = {i : i mod k = f}).
pub fn folds(n: usize, k: usize) -> Vec<Vec<usize>> {
    let k = k.clamp(1, n.max(1));
    (0..k).map(|f| (f..n).step_by(k).collect()).collect()
}

/// The rows of 0..n not in `test` (which is sorted).
pub fn complement(n: usize, test: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(n - test.len().min(n));
    let mut t = test.iter().peekable();
    for i in 0..n {
        if t.peek() == Some(&&i) {
            t.next();
        } else {
            out.push(i);
        }
    }
    out
}

/// 1 − SSE/SST: the pooled out-of-fold R² (sklearn's `r2_score`); NaN for a constant target.
pub fn r2(y: &[f64], pred: &[f64]) -> f64 {
    let n = y.len() as f64;
    let m = y.iter().sum::<f64>() / n;
    let sst: f64 = y.iter().map(|v| (v - m) * (v - m)).sum();
    let sse: f64 = y.iter().zip(pred).map(|(a, b)| (a - b) * (a - b)).sum();
    if sst <= 0.0 {
        f64::NAN
    } else {
        1.0 - sse / sst
    }
}

#[allow(clippy::too_many_arguments)] // two matrices with shapes and flags: BLAS's own signature
/// `C = op(A)·op(B)` for row-major A [ar x ac] and B [br x bc], each transposed when asked; the
/// result is row-major [m x n].
pub fn matmul(
    a: &[f64],
    ar: usize,
    ac: usize,
    ta: bool,
    b: &[f64],
    br: usize,
    bc: usize,
    tb: bool,
) -> Vec<f64> {
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if tb { (bc, br) } else { (br, bc) };
    assert_eq!(k, k2, "matmul: inner dimensions differ");
    assert!(a.len() >= ar * ac && b.len() >= br * bc);
    let mut c = vec![0.0f64; m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    // Logical element (i, j) of op(A) lives at i·rs + j·cs.
    let (a_rs, a_cs) = if ta {
        (1, ac as isize)
    } else {
        (ac as isize, 1)
    };
    let (b_rs, b_cs) = if tb {
        (1, bc as isize)
    } else {
        (bc as isize, 1)
    };
    let par = match candle_core::utils::get_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    // SAFETY: the slices hold ar·ac, br·bc and m·n elements (checked above), and the strides
    // address exactly the logical [m x k], [k x n] and [m x n] matrices inside them.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    };
    c
}

/// Eigen-decomposition of a symmetric [n x n] matrix (row-major; only its values are read):
/// eigenvalues ascending, and the eigenvectors as the rows of the returned [n x n] matrix.
/// Householder tridiagonalization then the implicit QL algorithm (EISPACK tred2/tql2, as in JAMA).
#[allow(clippy::needless_range_loop)] // EISPACK's index arithmetic, kept recognizable
pub fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    if n == 0 {
        return (vec![], vec![]);
    }
    // v[i][j] with v = a, column-major use below follows JAMA's V[i][j].
    let mut v: Vec<f64> = a[..n * n].to_vec();
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    let at = |i: usize, j: usize| i * n + j;
    // tred2
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for dk in d.iter().take(i) {
            scale += dk.abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for dk in d.iter_mut().take(i) {
                *dk /= scale;
                h += *dk * *dk;
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            e[..i].iter_mut().for_each(|x| *x = 0.0);
            for j in 0..i {
                f = d[j];
                v[at(j, i)] = f;
                g = e[j] + v[at(j, j)] * f;
                for k in j + 1..i {
                    g += v[at(k, j)] * d[k];
                    e[k] += v[at(k, j)] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[at(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[at(k, i + 1)] * v[at(k, j)];
                }
                for k in 0..=i {
                    v[at(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
    // tql2 works on columns of V; transposed, each rotation touches two contiguous rows.
    let mut w = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            w[j * n + i] = v[at(i, j)];
        }
    }
    drop(v);
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            // The iteration count is bounded so that a NaN input cannot loop forever.
            let mut iter = 0;
            loop {
                iter += 1;
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for di in d.iter_mut().skip(l + 2) {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let mut c = 1.0;
                let mut c2 = c;
                let mut c3 = c;
                let el1 = e[l + 1];
                let mut s = 0.0;
                let mut s2 = 0.0;
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    let (lo, hi) = w.split_at_mut((i + 1) * n);
                    let (wi, wi1) = (&mut lo[i * n..], &mut hi[..n]);
                    for k in 0..n {
                        let h = wi1[k];
                        wi1[k] = s * wi[k] + c * h;
                        wi[k] = c * wi[k] - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 || iter > 60 || e[l].is_nan() {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| order(d[a], d[b]));
    let vals: Vec<f64> = idx.iter().map(|&i| d[i]).collect();
    let mut vecs = Vec::with_capacity(n * n);
    for &i in &idx {
        vecs.extend_from_slice(&w[i * n..(i + 1) * n]);
    }
    (vals, vecs)
}

/// The alpha grid ridge searches by default: 10^-2 … 10^8, one step per decade.
pub fn default_alphas() -> Vec<f64> {
    (-2..=8).map(|k| 10f64.powi(k)).collect()
}

/// Ridge regression fitted on one training set: the thin SVD Xc = U S Vᵀ of the centered
/// features, from which every alpha's fit, leave-one-out errors and predictions follow without
/// refactoring. Targets are processed in chunks (`project` then `loo_sse`/`predict`), so a brain of
/// 10⁵ units never needs more than one chunk of them in f64 at a time.
pub struct Ridge {
    n: usize,
    p: usize,
    x_mean: Vec<f64>,
    /// [n x r]
    u: Vec<f64>,
    /// [p x r]
    v: Vec<f64>,
    s: Vec<f64>,
}

impl Ridge {
    /// Fit on X [n x p] (row-major). The SVD comes from the eigen-decomposition of the smaller
    /// Gram matrix (XᵀX or XXᵀ); directions with s² ≤ 1e-12·max s² are dropped (they carry no
    /// signal any alpha would keep).
    pub fn new(x: &[f64], n: usize, p: usize) -> Self {
        let mut x_mean = vec![0.0; p];
        for row in x.chunks(p).take(n) {
            x_mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
        }
        x_mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
        let mut xc = x[..n * p].to_vec();
        for row in xc.chunks_mut(p) {
            row.iter_mut().zip(&x_mean).for_each(|(v, m)| *v -= m);
        }
        let (u, v, s) = if p <= n {
            let g = matmul(&xc, n, p, true, &xc, n, p, false);
            let (vals, vecs) = sym_eigen(&g, p);
            let keep = kept(&vals);
            let r = keep.len();
            let mut v = vec![0.0; p * r];
            let mut s = Vec::with_capacity(r);
            for (c, &k) in keep.iter().enumerate() {
                s.push(vals[k].sqrt());
                for i in 0..p {
                    v[i * r + c] = vecs[k * p + i];
                }
            }
            let mut u = matmul(&xc, n, p, false, &v, p, r, false);
            for row in u.chunks_mut(r.max(1)) {
                row.iter_mut().zip(&s).for_each(|(x, s)| *x /= s);
            }
            (u, v, s)
        } else {
            let g = matmul(&xc, n, p, false, &xc, n, p, true);
            let (vals, vecs) = sym_eigen(&g, n);
            let keep = kept(&vals);
            let r = keep.len();
            let mut u = vec![0.0; n * r];
            let mut s = Vec::with_capacity(r);
            for (c, &k) in keep.iter().enumerate() {
                s.push(vals[k].sqrt());
                for i in 0..n {
                    u[i * r + c] = vecs[k * n + i];
                }
            }
            let mut v = matmul(&xc, n, p, true, &u, n, r, false);
            for row in v.chunks_mut(r.max(1)) {
                row.iter_mut().zip(&s).for_each(|(x, s)| *x /= s);
            }
            (u, v, s)
        };
        Self {
            n,
            p,
            x_mean,
            u,
            v,
            s,
        }
    }

    pub fn rank(&self) -> usize {
        self.s.len()
    }

    /// Center a chunk of targets Y [n x t] on its training means (returned).
    pub fn center(&self, y: &mut [f64], t: usize) -> Vec<f64> {
        let mut m = vec![0.0; t];
        for row in y.chunks(t) {
            m.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
        m.iter_mut().for_each(|a| *a /= self.n as f64);
        for row in y.chunks_mut(t) {
            row.iter_mut().zip(&m).for_each(|(a, b)| *a -= b);
        }
        m
    }

    /// Z = Uᵀ Yc [r x t] for centered targets Yc [n x t].
    pub fn project(&self, yc: &[f64], t: usize) -> Vec<f64> {
        matmul(&self.u, self.n, self.rank(), true, yc, self.n, t, false)
    }

    /// For each alpha, Σ over targets and rows of the squared leave-one-out error: residual
    /// (I − H)y over 1 − H_ii, H = U diag(s²/(s²+α)) Uᵀ + 11ᵀ/n (the intercept unpenalized).
    pub fn loo_sse(&self, yc: &[f64], t: usize, z: &[f64], alphas: &[f64]) -> Vec<f64> {
        let (n, r) = (self.n, self.rank());
        alphas
            .iter()
            .map(|&a| {
                let shrink: Vec<f64> = self.s.iter().map(|s| s * s / (s * s + a)).collect();
                let mut zs = z.to_vec();
                for (k, row) in zs.chunks_mut(t.max(1)).enumerate() {
                    row.iter_mut().for_each(|x| *x *= shrink[k]);
                }
                let fit = matmul(&self.u, n, r, false, &zs, r, t, false);
                let mut sse = 0.0;
                for i in 0..n {
                    let h: f64 = (0..r)
                        .map(|k| self.u[i * r + k].powi(2) * shrink[k])
                        .sum::<f64>()
                        + 1.0 / n as f64;
                    let denom = 1.0 - h;
                    for j in 0..t {
                        let e = (yc[i * t + j] - fit[i * t + j]) / denom;
                        sse += e * e;
                    }
                }
                sse
            })
            .collect()
    }

    /// Predictions for rows X_te [m x p] at `alpha`, from Z = Uᵀ Yc and the training means of Y:
    /// ȳ + (X_te − x̄) V diag(s/(s²+α)) Z.
    pub fn predict(
        &self,
        x_te: &[f64],
        m: usize,
        alpha: f64,
        z: &[f64],
        y_mean: &[f64],
    ) -> Vec<f64> {
        let (p, r, t) = (self.p, self.rank(), y_mean.len());
        let mut xc = x_te[..m * p].to_vec();
        for row in xc.chunks_mut(p) {
            row.iter_mut()
                .zip(&self.x_mean)
                .for_each(|(v, mu)| *v -= mu);
        }
        let mut a = matmul(&xc, m, p, false, &self.v, p, r, false);
        for row in a.chunks_mut(r.max(1)) {
            row.iter_mut()
                .zip(&self.s)
                .for_each(|(x, s)| *x *= s / (s * s + alpha));
        }
        let mut y = matmul(&a, m, r, false, z, r, t, false);
        for row in y.chunks_mut(t.max(1)) {
            row.iter_mut().zip(y_mean).for_each(|(v, mu)| *v += mu);
        }
        y
    }
}

fn kept(vals: &[f64]) -> Vec<usize> {
    let max = vals.iter().cloned().fold(0.0f64, f64::max);
    (0..vals.len())
        .rev()
        .filter(|&k| vals[k] > 1e-12 * max && vals[k] > 0.0)
        .collect()
}

/// Index of the smallest value (the first of ties; NaN never wins).
pub fn argmin(x: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v < x[best] || x[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Out-of-fold ridge predictions of Y [n x t] from X [n x p]: for each interleaved fold, alpha
/// chosen on the training rows by leave-one-out, then the held-out rows predicted. Returns the
/// predictions [n x t] and the alpha of each fold.
pub fn ridge_cv_predict(
    x: &[f64],
    n: usize,
    p: usize,
    y: &[f64],
    t: usize,
    k: usize,
    alphas: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let mut pred = vec![0.0; n * t];
    let mut chosen = Vec::new();
    for test in folds(n, k) {
        let train = complement(n, &test);
        let xtr = rows(x, p, &train);
        let xte = rows(x, p, &test);
        let ridge = Ridge::new(&xtr, train.len(), p);
        let mut ytr = rows(y, t, &train);
        let ym = ridge.center(&mut ytr, t);
        let z = ridge.project(&ytr, t);
        let alpha = alphas[argmin(&ridge.loo_sse(&ytr, t, &z, alphas))];
        chosen.push(alpha);
        let yp = ridge.predict(&xte, test.len(), alpha, &z, &ym);
        for (j, &i) in test.iter().enumerate() {
            pred[i * t..(i + 1) * t].copy_from_slice(&yp[j * t..(j + 1) * t]);
        }
    }
    (pred, chosen)
}

/// The rows `idx` of a row-major matrix with `cols` columns.
pub fn rows(x: &[f64], cols: usize, idx: &[usize]) -> Vec<f64> {
    let mut out = Vec::with_capacity(idx.len() * cols);
    for &i in idx {
        out.extend_from_slice(&x[i * cols..(i + 1) * cols]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn eigen_reconstructs_a_symmetric_matrix() {
        let mut rng = Rng::new(1);
        for n in [1usize, 2, 5, 40] {
            let b: Vec<f64> = (0..n * n).map(|_| rng.normal(1.0) as f64).collect();
            let a = matmul(&b, n, n, false, &b, n, n, true);
            let (vals, vecs) = sym_eigen(&a, n);
            assert!(vals.windows(2).all(|w| w[0] <= w[1]));
            for i in 0..n {
                for j in 0..n {
                    let r: f64 = (0..n)
                        .map(|k| vecs[k * n + i] * vals[k] * vecs[k * n + j])
                        .sum();
                    assert!(
                        (r - a[i * n + j]).abs() < 1e-9 * (1.0 + a[i * n + j].abs()),
                        "n={n}"
                    );
                }
            }
        }
    }

    #[test]
    fn spearman_matches_scipy() {
        // scipy.stats.spearmanr([1,2,3,4,5,6],[2,1,4,3,6,5]) = 0.8285714285714285, p = 0.04156268221574334
        let (rho, p) = spearman(&[1., 2., 3., 4., 5., 6.], &[2., 1., 4., 3., 6., 5.]);
        assert!((rho - 0.828_571_428_571_428_5).abs() < 1e-12);
        assert!((p - 0.041_562_682_215_743_34).abs() < 1e-9, "{p}");
        assert!(spearman(&[1., 1., 1.], &[1., 2., 3.]).0.is_nan());
    }

    #[test]
    fn ridge_with_tiny_alpha_is_least_squares_and_loo_matches_refitting() {
        let mut rng = Rng::new(2);
        let (n, p) = (30, 4);
        let x: Vec<f64> = (0..n * p).map(|_| rng.normal(1.0) as f64).collect();
        let y: Vec<f64> = (0..n)
            .map(|i| 1.0 + 2.0 * x[i * p] - x[i * p + 3] + 0.1 * rng.normal(1.0) as f64)
            .collect();
        {
            let r = Ridge::new(&x, n, p);
            let mut yc = y.clone();
            let ym = r.center(&mut yc, 1);
            let z = r.project(&yc, 1);
            // leave-one-out by refitting equals the closed form
            let alpha = 3.0;
            let mut sse = 0.0;
            for i in 0..n {
                let tr = complement(n, &[i]);
                let ri = Ridge::new(&rows(&x, p, &tr), n - 1, p);
                let mut yt = rows(&y, 1, &tr);
                let m = ri.center(&mut yt, 1);
                let zi = ri.project(&yt, 1);
                let pi = ri.predict(&x[i * p..(i + 1) * p], 1, alpha, &zi, &m);
                sse += (y[i] - pi[0]).powi(2);
            }
            let closed = r.loo_sse(&yc, 1, &z, &[alpha])[0];
            assert!((sse - closed).abs() < 1e-9 * sse, "{sse} vs {closed}");
            let pred = r.predict(&x[..p], 1, 1e-9, &z, &ym);
            assert!((pred[0] - y[0]).abs() < 0.5);
        }
    }
}
