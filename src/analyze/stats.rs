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
mod tests {
    use super::*;

    fn close(got: f64, want: f64, tol: f64) {
        assert!(
            (got - want).abs() <= tol * want.abs().max(1e-300),
            "got {got:e}, want {want:e} (relative tol {tol:e})"
        );
    }

    // Reference numbers from SciPy 1.17.1 (/work/venv-fixtures): stats.ttest_ind(a, b,
    // equal_var=False) for t and p; df from the Welch–Satterthwaite formula in numpy; d as
    // (mean a − mean b)/pooled sd; AUROC as stats.mannwhitneyu(a, b).statistic / (n1·n2).

    #[test]
    fn welch_small_integers_match_hand_and_scipy() {
        // By hand: means 3 and 6, variances 2.5 and 10, se² = 2.5/5 + 10/5 = 2.5, t = −3/√2.5,
        // df = 2.5² / (0.5²/4 + 2²/4) = 6.25/1.0625, pooled sd = √((4·2.5 + 4·10)/8) = 2.5 → d = −1.2,
        // pairs a > b: 4, ties: 2 → AUROC = (4 + 1)/25 = 0.2.
        let c = welch(&[1., 2., 3., 4., 5.], &[2., 4., 6., 8., 10.]).unwrap();
        close(c.t, -3.0 / 2.5f64.sqrt(), 1e-12);
        close(c.t, -1.897_366_596_101_027_5, 1e-9);
        close(c.df, 6.25 / 1.0625, 1e-12);
        close(c.p, 0.107_531_194_930_627_28, 1e-6);
        close(c.d, -1.2, 1e-12);
        close(c.auroc, 0.2, 1e-12);
    }

    #[test]
    fn welch_unequal_sizes_match_scipy() {
        let a = [2.1, 3.4, 1.9, 5.6, 4.4, 3.3, 2.8];
        let b = [6.2, 5.1, 7.7, 4.9, 6.6];
        let c = welch(&a, &b).unwrap();
        close(c.t, -3.862_181_118_714_546, 1e-9);
        close(c.df, 9.420_975_921_345_518, 1e-9);
        close(c.p, 0.003_518_954_691_958_975, 1e-6);
        close(c.d, -2.210_462_334_431_583, 1e-9);
        close(c.auroc, 0.057_142_857_142_857_14, 1e-12);
        // Swapping the groups flips the signs and mirrors the AUROC.
        let s = welch(&b, &a).unwrap();
        close(s.t, -c.t, 1e-12);
        close(s.p, c.p, 1e-12);
        close(s.auroc, 1.0 - c.auroc, 1e-12);
    }

    #[test]
    fn welch_with_ties_and_offset_match_scipy() {
        let c = welch(&[1., 2., 2., 3., 3., 3.], &[2., 3., 3., 4.]).unwrap();
        close(c.t, -1.264_911_064_067_351_5, 1e-9);
        close(c.df, 6.578_947_368_421_054, 1e-9);
        close(c.p, 0.248_862_552_814_483_27, 1e-6);
        close(c.d, -0.816_496_580_927_725_8, 1e-9);
        close(c.auroc, 0.291_666_666_666_666_7, 1e-12);
        // Large offset, small spread: the two-pass variance keeps this exact; a tiny p too.
        let c = welch(&[1000.1, 1000.2, 1000.3], &[0.0, 0.5, 1.0, 0.25]).unwrap();
        close(c.t, 4_520.793_408_057_883, 1e-9);
        close(c.df, 3.427_402_499_970_565_2, 1e-9);
        close(c.p, 9.819_056_218_536_104e-13, 1e-6);
        close(c.auroc, 1.0, 1e-12);
    }

    #[test]
    fn student_t_p_values_match_scipy() {
        // 2·stats.t.sf(t, df)
        for (t, df, want) in [
            (2.0, 3.0, 0.139_325_968_558_843_05),
            (1.0, 1.0, 0.500_000_000_000_000_1),
            (0.5, 100.0, 0.618_173_565_830_886_6),
            (10.0, 2.5, 0.004_441_495_767_307_423_5),
            (3.3, 1e6, 0.000_966_882_079_340_005_1),
            (40.0, 7.0, 1.590_217_998_485_036_4e-9),
        ] {
            close(t_two_sided_p(t, df), want, 1e-6);
            close(t_two_sided_p(-t, df), want, 1e-6);
        }
        assert_eq!(t_two_sided_p(0.0, 5.0), 1.0);
        assert_eq!(t_two_sided_p(f64::INFINITY, 5.0), 0.0);
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut f = 1.0f64;
        for n in 1..30 {
            // Absolute error: ln Γ(1) = ln Γ(2) = 0.
            let (got, want) = (ln_gamma(n as f64), f.ln());
            assert!(
                (got - want).abs() <= 1e-13 * want.abs().max(1.0),
                "n={n}: {got} vs {want}"
            );
            f *= n as f64;
        }
        close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-13);
    }

    #[test]
    fn zero_variance_groups_follow_the_documented_rule() {
        let same = welch(&[2., 2., 2.], &[2., 2.]).unwrap();
        assert_eq!((same.t, same.p, same.d, same.df), (0.0, 1.0, 0.0, 3.0));
        assert_eq!(same.auroc, 0.5);
        let apart = welch(&[3., 3., 3.], &[2., 2.]).unwrap();
        assert_eq!(
            (apart.t, apart.p, apart.d),
            (f64::INFINITY, 0.0, f64::INFINITY)
        );
        assert_eq!(apart.auroc, 1.0);
        let below = welch(&[1., 1.], &[2., 2.]).unwrap();
        assert_eq!(
            (below.t, below.p, below.auroc),
            (f64::NEG_INFINITY, 0.0, 0.0)
        );
        // One constant group: an ordinary finite test, df from the other group only.
        let one = welch(&[1., 1., 1.], &[1., 2., 3.]).unwrap();
        close(one.df, 2.0, 1e-12);
        assert!(one.t.is_finite() && one.p > 0.0 && one.p < 1.0);
    }

    #[test]
    fn too_few_values_is_a_user_error() {
        for (a, b) in [(&[1.0][..], &[1.0, 2.0][..]), (&[1.0, 2.0][..], &[][..])] {
            let e = welch(a, b).unwrap_err();
            assert!(crate::error::is_user_error(&e));
            assert!(e.to_string().contains("at least 2"), "{e}");
        }
    }

    #[test]
    fn nan_propagates_without_error() {
        let c = welch(&[1.0, f64::NAN, 3.0], &[1.0, 2.0]).unwrap();
        assert!(c.t.is_nan() && c.p.is_nan() && c.d.is_nan());
    }

    #[test]
    fn auroc_counts_ties_as_half() {
        // Pairs (a, b): 1 vs {1,2}: tie + loss; 2 vs {1,2}: win + tie; 3 vs {1,2}: 2 wins → 3 + 2·½ = 4 of 6.
        close(auroc(&[1., 2., 3.], &[1., 2.]), 4.0 / 6.0, 1e-12);
        close(auroc(&[5., 5.], &[5., 5., 5.]), 0.5, 1e-12);
        close(auroc(&[0., 10.], &[1., 2., 3.]), 0.5, 1e-12);
        close(auroc(&[4., 5., 6.], &[1., 2., 3.]), 1.0, 1e-12);
    }

    #[test]
    fn auroc_matches_brute_force_on_many_ties() {
        let a: Vec<f64> = (0..37).map(|i| ((i * 7) % 5) as f64).collect();
        let b: Vec<f64> = (0..23)
            .map(|i| ((i * 3) % 6) as f64 - 0.5 * (i % 2) as f64)
            .collect();
        let mut wins = 0.0;
        for x in &a {
            for y in &b {
                wins += if x > y {
                    1.0
                } else if x == y {
                    0.5
                } else {
                    0.0
                };
            }
        }
        close(auroc(&a, &b), wins / (a.len() * b.len()) as f64, 1e-12);
    }

    #[test]
    fn bh_matches_scipy_and_keeps_order() {
        // stats.false_discovery_control(p) (method="bh")
        let q = bh_qvalues(&[0.01, 0.04, 0.03, 0.005]);
        for (g, w) in q.iter().zip([0.02, 0.04, 0.04, 0.02]) {
            close(*g, w, 1e-12);
        }
        let p = [0.5, 0.9, 0.001, 0.2, 0.04, 0.7, 0.04];
        let want = [
            0.7,
            0.9,
            0.007,
            0.35,
            0.093_333_333_333_333_34,
            0.816_666_666_666_666_7,
            0.093_333_333_333_333_34,
        ];
        for (g, w) in bh_qvalues(&p).iter().zip(want) {
            close(*g, w, 1e-12);
        }
    }

    #[test]
    fn bh_is_monotone_capped_and_skips_nan() {
        // Raw p·m/rank would be 1.0, 1.485 and 2.94: all capped at 1.
        assert_eq!(bh_qvalues(&[1.0, 0.99, 0.98]), vec![1.0, 1.0, 1.0]);
        // Step-up: the smallest p's own 0.03·3/1 = 0.09 is lowered to the 0.04·3/2 = 0.06 above it.
        let q = bh_qvalues(&[0.04, 0.03, 0.5]);
        close(q[0], 0.06, 1e-12);
        close(q[1], 0.06, 1e-12);
        close(q[2], 0.5, 1e-12);
        let q = bh_qvalues(&[0.02, f64::NAN, 0.01]);
        assert!(q[1].is_nan());
        close(q[0], 0.02, 1e-12);
        close(q[2], 0.02, 1e-12);
        assert!(bh_qvalues(&[]).is_empty());
        // Monotone in p for a larger random-ish set.
        let p: Vec<f64> = (1..200)
            .map(|i| ((i * 7919) % 1000) as f64 / 1000.0 + 1e-4)
            .collect();
        let q = bh_qvalues(&p);
        let mut idx: Vec<usize> = (0..p.len()).collect();
        idx.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
        for w in idx.windows(2) {
            assert!(q[w[0]] <= q[w[1]]);
            assert!(q[w[0]] >= p[w[0]]);
        }
    }

    #[test]
    fn paired_t_and_wilcoxon_match_scipy() {
        // scipy 1.17.1: stats.ttest_rel(a, b), stats.wilcoxon(a, b)
        let a = [2.1, 3.4, 1.9, 5.6, 4.4, 3.3, 2.8, 4.0];
        let b = [1.8, 3.9, 1.1, 4.2, 4.9, 2.0, 2.5, 3.1];
        let c = paired(&a, &b).unwrap();
        close(c.t, 1.9245008972987523, 1e-12);
        close(c.p, 0.09569378251639978, 1e-9);
        assert_eq!(c.df, 7.0);
        close(wilcoxon_p(&a, &b), 0.1484375, 1e-12);
        // ties and a zero difference, 12 pairs: SciPy's exact permutation distribution
        let a2: Vec<f64> = (1..=12).map(|x| x as f64).collect();
        let b2 = [0., 1., 3., 2., 3., 5., 5., 6., 6., 8., 8., 9.];
        close(wilcoxon_p(&a2, &b2), 0.0009765625, 1e-12);
        // 60 pairs: the normal approximation
        let (a3, b3) = sixty_pairs();
        close(wilcoxon_p(&a3, &b3), 0.00576950931047058, 1e-5);
        assert!(paired(&a, &b[..7]).is_err());
        assert!(wilcoxon_p(&[1.0, 2.0], &[1.0, 2.0]).is_nan());
    }

    #[test]
    fn normal_tail_matches_scipy() {
        close(normal_sf(1.0), 0.15865525393145707, 2e-7);
        close(normal_sf(3.5), 0.00023262907903552502, 2e-7);
        close(normal_sf(-0.5), 0.6914624612740131, 2e-7);
    }

    #[test]
    fn signed_zeros_tie_and_nan_orders_last_whatever_its_sign() {
        // −0.0 and +0.0 are one value: a tie worth ½
        assert_eq!(auroc(&[0.0], &[-0.0]), 0.5);
        assert_eq!(auroc(&[-0.0, 1.0], &[0.0, 0.0]), 0.75);
        let neg_nan = -f64::NAN;
        assert!(neg_nan.is_sign_negative());
        assert_eq!(order(neg_nan, f64::INFINITY), std::cmp::Ordering::Greater);
        assert_eq!(order(neg_nan, f64::NAN), std::cmp::Ordering::Equal);
        // a NaN in the target group ranks above every control value, sign bit or not
        assert_eq!(auroc(&[neg_nan], &[1.0, 2.0]), 1.0);
    }

    fn sixty_pairs() -> (Vec<f64>, Vec<f64>) {
        let a = [
            0.12573, -0.132105, 0.640423, 0.1049, -0.535669, 0.361595, 1.304, 0.947081, -0.703735,
            -1.265421, -0.623274, 0.041326, -2.325031, -0.218792, -1.245911, -0.732267, -0.544259,
            -0.3163, 0.411631, 1.042513, -0.128535, 1.366463, -0.665195, 0.35151, 0.90347,
            0.094012, -0.743499, -0.921725, -0.457726, 0.220195, -1.009618, -0.209176, -0.159225,
            0.540846, 0.214659, 0.355373, -0.653829, -0.129614, 0.783975, 1.493431, -1.259066,
            1.513924, 1.345875, 0.781311, 0.264456, -0.313923, 1.458021, 1.960258, 1.801635,
            1.315104, 0.35738, -1.208319, -0.004454, 0.656475, -1.288361, 0.395122, 0.429864,
            0.696043, -1.184118, -0.661703,
        ];
        let b = [
            -0.010705, -1.001907, 2.679791, -0.091011, 0.0933, 0.403023, 3.187473, 2.567442,
            0.229617, -3.168931, -0.271245, 1.025012, -1.021069, -0.536699, 0.8761, -1.752698,
            -0.905787, 0.91875, 0.760685, 3.344906, 0.359985, 1.033269, -0.742758, -0.439636,
            -0.07421, 1.024424, 0.137667, 0.672833, -0.912332, 2.209303, -0.997006, 1.665233,
            -0.292011, 0.105362, 0.764444, 1.686826, -0.192819, -0.415142, -0.257244, 0.391911,
            -0.456383, 2.803637, 1.481581, 0.006947, 1.437498, -1.294317, 1.044953, 2.881276,
            -0.148506, 2.001473, 0.07574, -0.799039, 0.219844, 1.158589, -0.29419, -0.063248,
            2.150846, 1.722137, -0.040385, 0.803161,
        ];
        (a.to_vec(), b.to_vec())
    }
}
