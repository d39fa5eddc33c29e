//! Tests of `stats` against SciPy and hand-checked values.

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
        -0.3163, 0.411631, 1.042513, -0.128535, 1.366463, -0.665195, 0.35151, 0.90347, 0.094012,
        -0.743499, -0.921725, -0.457726, 0.220195, -1.009618, -0.209176, -0.159225, 0.540846,
        0.214659, 0.355373, -0.653829, -0.129614, 0.783975, 1.493431, -1.259066, 1.513924,
        1.345875, 0.781311, 0.264456, -0.313923, 1.458021, 1.960258, 1.801635, 1.315104, 0.35738,
        -1.208319, -0.004454, 0.656475, -1.288361, 0.395122, 0.429864, 0.696043, -1.184118,
        -0.661703,
    ];
    let b = [
        -0.010705, -1.001907, 2.679791, -0.091011, 0.0933, 0.403023, 3.187473, 2.567442, 0.229617,
        -3.168931, -0.271245, 1.025012, -1.021069, -0.536699, 0.8761, -1.752698, -0.905787,
        0.91875, 0.760685, 3.344906, 0.359985, 1.033269, -0.742758, -0.439636, -0.07421, 1.024424,
        0.137667, 0.672833, -0.912332, 2.209303, -0.997006, 1.665233, -0.292011, 0.105362,
        0.764444, 1.686826, -0.192819, -0.415142, -0.257244, 0.391911, -0.456383, 2.803637,
        1.481581, 0.006947, 1.437498, -1.294317, 1.044953, 2.881276, -0.148506, 2.001473, 0.07574,
        -0.799039, 0.219844, 1.158589, -0.29419, -0.063248, 2.150846, 1.722137, -0.040385,
        0.803161,
    ];
    (a.to_vec(), b.to_vec())
}
