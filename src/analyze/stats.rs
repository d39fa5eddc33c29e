//! Statistics for the functional localizer: Welch's t-test (two-sided p from Student's t with
//! Welch–Satterthwaite df), for matched pairs the paired t-test and the Wilcoxon signed-rank test,
//! Cohen's d, AUROC and Benjamini–Hochberg q-values.
//!
//! Everything is our own code in f64: the regularized incomplete beta function (continued fraction,
//! modified Lentz) and log-gamma (Lanczos) are the only special functions needed. Reference values
//! in the tests come from SciPy.
//!
//! Degenerate inputs, decided here once so that every caller behaves the same:
//! - fewer than 2 values in either group is an error (a variance needs two);
//! - zero variance in both groups: t = 0 and p = 1 when the means are equal, t = ±inf and p = 0
//!   otherwise (two constant, different groups are separated perfectly); df is then the pooled
//!   n1 + n2 − 2, the Welch–Satterthwaite formula being 0/0. Cohen's d follows the same rule;
//! - NaN anywhere in a group makes t, p and d NaN (never an error: one broken unit must not stop a
//!   localizer run over thousands); AUROC orders NaN above everything whatever its sign bit, and
//!   −0.0 ties with +0.0 ([`order`]).

use crate::error::user_error;
use anyhow::Result;
use serde::Serialize;

/// One two-sample comparison, `a` (target) against `b` (control). Positive t, d and AUROC > 0.5
/// mean `a` is larger.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Contrast {
    /// Welch's t.
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value from Student's t with `df` degrees of freedom.
    pub p: f64,
    /// Cohen's d with the pooled standard deviation.
    pub d: f64,
    /// P(a > b) + ½ P(a = b) over all pairs: Mann–Whitney U / (n1·n2).
    pub auroc: f64,
}

fn mean_var(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    // Two-pass variance: the one-pass formula loses everything when activations share a large offset.
    let v = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1.0);
    (m, v)
}

/// The order statistics use: numbers as usual with −0.0 equal to +0.0, and NaN (whatever its
/// sign bit) above everything, equal to any other NaN.
pub fn order(a: f64, b: f64) -> std::cmp::Ordering {
    let canon = |x: f64| {
        if x.is_nan() {
            f64::NAN
        } else if x == 0.0 {
            0.0
        } else {
            x
        }
    };
    canon(a).total_cmp(&canon(b))
}

/// The paired t-test on matched pairs (a[i], b[i]): t of the differences with n − 1 df, Cohen's
/// d of the differences (d_z), and `auroc(a, b)`. Errors unless both have the same length ≥ 2.
pub fn paired(a: &[f64], b: &[f64]) -> Result<Contrast> {
    if a.len() != b.len() || a.len() < 2 {
        return Err(user_error(format!(
            "a paired test needs two groups of the same size, at least 2 (got {} and {})",
            a.len(),
            b.len()
        )));
    }
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = diffs.len() as f64;
    let (md, vd) = mean_var(&diffs);
    let sd = vd.sqrt();
    let (t, d) = if sd > 0.0 {
        (md / (sd / n.sqrt()), md / sd)
    } else {
        (degenerate_ratio(md), degenerate_ratio(md))
    };
    let df = n - 1.0;
    Ok(Contrast {
        t,
        df,
        p: t_two_sided_p(t, df),
        d,
        auroc: auroc(a, b),
    })
}

/// Two-sided p of the Wilcoxon signed-rank test of the differences a[i] − b[i], as SciPy's
/// `wilcoxon(a, b)` computes it by default: zero differences dropped, tied |differences| share
/// their mean rank; the exact null distribution of W+ for up to 50 pairs without ties or zeros
/// (and, as SciPy's permutation test does, for up to 13 pairs with them), else the normal
/// approximation with the tie correction and no continuity correction. NaN when a difference is
/// NaN or none is left.
pub fn wilcoxon_p(a: &[f64], b: &[f64]) -> f64 {
    let all: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let diffs: Vec<f64> = all.iter().copied().filter(|d| *d != 0.0).collect();
    if diffs.is_empty() || diffs.iter().any(|d| d.is_nan()) {
        return f64::NAN;
    }
    let n = diffs.len();
    let mut by_size: Vec<(f64, bool)> = diffs.iter().map(|d| (d.abs(), *d > 0.0)).collect();
    by_size.sort_by(|x, y| order(x.0, y.0));
    // Ranks doubled, so that mean ranks of ties (halves) stay integers.
    let mut rank2 = vec![0usize; n];
    let (mut tie_term, mut ties) = (0.0, false);
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && by_size[j].0 == by_size[i].0 {
            j += 1;
        }
        rank2[i..j].iter_mut().for_each(|r| *r = i + 1 + j);
        if j - i > 1 {
            ties = true;
            let t = (j - i) as f64;
            tie_term += t * (t * t - 1.0);
        }
        i = j;
    }
    let w2: usize = (0..n).filter(|&k| by_size[k].1).map(|k| rank2[k]).sum();
    let zeros = all.len() > n;
    if (all.len() <= 50 && !ties && !zeros) || all.len() <= 13 {
        // Null distribution of 2·W+: every sign pattern equally likely.
        let max: usize = rank2.iter().sum();
        let mut count = vec![0f64; max + 1];
        count[0] = 1.0;
        for &r in &rank2 {
            for s in (r..=max).rev() {
                count[s] += count[s - r];
            }
        }
        let total: f64 = count.iter().sum();
        let below = count[..=w2].iter().sum::<f64>() / total;
        let above = count[w2..].iter().sum::<f64>() / total;
        return (2.0 * below.min(above)).min(1.0);
    }
    let nf = n as f64;
    let mean = nf * (nf + 1.0) / 4.0;
    let se = ((nf * (nf + 1.0) * (2.0 * nf + 1.0) - 0.5 * tie_term) / 24.0).sqrt();
    if se == 0.0 {
        return 1.0;
    }
    let z = (w2 as f64 / 2.0 - mean) / se;
    (2.0 * normal_sf(z.abs())).min(1.0)
}

/// P(Z > z) of the standard normal, through erfc (Numerical Recipes' Chebyshev fit, relative
/// error below 1.2e-7).
pub fn normal_sf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    0.5 * if x >= 0.0 { erfc } else { 2.0 - erfc }
}

/// Welch's two-sample t-test with Cohen's d and AUROC. Errors when a group has fewer than 2 values.
pub fn welch(a: &[f64], b: &[f64]) -> Result<Contrast> {
    if a.len() < 2 || b.len() < 2 {
        return Err(user_error(format!(
            "a contrast needs at least 2 values per group (got {} and {})",
            a.len(),
            b.len()
        )));
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (ma, va) = mean_var(a);
    let (mb, vb) = mean_var(b);
    let diff = ma - mb;
    let (sa, sb) = (va / na, vb / nb);
    let se2 = sa + sb;
    let (t, df) = if se2 > 0.0 {
        let df = se2 * se2 / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0));
        (diff / se2.sqrt(), df)
    } else {
        (degenerate_ratio(diff), na + nb - 2.0)
    };
    let pooled = (((na - 1.0) * va + (nb - 1.0) * vb) / (na + nb - 2.0)).sqrt();
    let d = if pooled > 0.0 {
        diff / pooled
    } else {
        degenerate_ratio(diff)
    };
    Ok(Contrast {
        t,
        df,
        p: t_two_sided_p(t, df),
        d,
        auroc: auroc(a, b),
    })
}

/// diff / 0 by the rule in the module docs: 0 for equal means, ±inf otherwise, NaN stays NaN.
fn degenerate_ratio(diff: f64) -> f64 {
    if diff == 0.0 {
        0.0
    } else if diff.is_nan() {
        f64::NAN
    } else {
        diff.signum() * f64::INFINITY
    }
}

/// Two-sided p-value of Student's t: P(|T| ≥ |t|) = I_{df/(df+t²)}(df/2, 1/2).
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if t.is_infinite() {
        return 0.0;
    }
    let t2 = t * t;
    // Both x and 1 − x are formed directly so that small |t| (x near 1) keeps full precision.
    let x = df / (df + t2);
    let one_minus_x = t2 / (df + t2);
    beta_reg(df / 2.0, 0.5, x, one_minus_x).clamp(0.0, 1.0)
}

/// ln Γ(x) for x > 0: Lanczos approximation (g = 7, 9 terms), relative error ~1e-15.
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection keeps the series in the range where it is accurate.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut s = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        s += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + s.ln()
}

/// Regularized incomplete beta I_x(a, b), given x and 1 − x (the caller often knows 1 − x more
/// precisely than 1.0 − x would give).
pub fn beta_reg(a: f64, b: f64, x: f64, one_minus_x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if one_minus_x <= 0.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * one_minus_x.ln();
    let front = ln_front.exp();
    // The continued fraction converges fast only for x < (a+1)/(a+b+2); otherwise use the
    // symmetry I_x(a,b) = 1 − I_{1−x}(b,a).
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, one_minus_x) / b
    }
}

/// Continued fraction for the incomplete beta function, evaluated with the modified Lentz method.
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-16;
    // Convergence takes O(sqrt(max(a, b))) terms; df of a million needs ~1000.
    let max_iter = 200 + (a.max(b).sqrt() * 20.0) as usize;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=max_iter {
        let m = m as f64;
        let m2 = 2.0 * m;
        // Even step.
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        // Odd step.
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// AUROC of `a` against `b`: Mann–Whitney U of `a` over n1·n2, ties counting ½. Ranks the pooled
/// values once (O(n log n)) with tied values sharing their mean rank.
pub fn auroc(a: &[f64], b: &[f64]) -> f64 {
    let (na, nb) = (a.len(), b.len());
    if na == 0 || nb == 0 {
        return f64::NAN;
    }
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|&v| (v, true))
        .chain(b.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|x, y| order(x.0, y.0));
    let mut rank_sum_a = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i + 1;
        while j < all.len() && order(all[j].0, all[i].0).is_eq() {
            j += 1;
        }
        // Ranks are 1-based: positions i..j share the mean of ranks i+1..=j.
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        let in_a = all[i..j].iter().filter(|x| x.1).count();
        rank_sum_a += mean_rank * in_a as f64;
        i = j;
    }
    let u = rank_sum_a - (na * (na + 1)) as f64 / 2.0;
    u / (na as f64 * nb as f64)
}

/// Benjamini–Hochberg q-values, in the order of `p`: q_(i) = min over j ≥ i of p_(j)·m/j, capped
/// at 1 (the step-up adjustment; monotone in p). NaN p-values get NaN q-values and are not counted
/// in m.
pub fn bh_qvalues(p: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let m = order.len() as f64;
    let mut q = vec![f64::NAN; p.len()];
    let mut running = 1.0f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        running = running.min(p[i] * m / (rank + 1) as f64);
        q[i] = running;
    }
    q
}

#[cfg(test)]
#[path = "stats_tests.rs"]
mod tests;
