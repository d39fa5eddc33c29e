//! Model–brain alignment: how well each layer's representation of a stimulus set matches
//! recorded brain responses to the same stimuli (one brain row per stimulus).
//!
//! Per layer (features: a site reduced per stimulus, by default the residual stream after the
//! block, mean over non-special tokens):
//! - **ridge encoding**: each brain unit predicted from the layer's features; outer k-fold on
//!   interleaved folds, alpha from a log grid chosen on each training fold by exact leave-one-out
//!   (one alpha for all units, as scikit-learn's `RidgeCV`); per unit the Pearson r and R² of the
//!   pooled held-out predictions; mean and median over units, and r over the noise ceiling when
//!   repeats are given (split-half reliability of odd vs even repeats, Spearman–Brown corrected;
//!   ceiling on r = √reliability);
//! - **RSA**: RDMs by correlation distance (1 − Pearson r between stimuli), Spearman's ρ between
//!   their upper triangles, one-sided permutation p over stimulus labels ((1 + #ρ_perm ≥ ρ) / (1 + P));
//! - **CKA**: linear CKA with the debiased HSIC estimator (Kornblith et al.'s `cka(..., debiased=True)`).
//!
//! Scale: the brain matrix stays f32 in memory and is streamed in chunks of units; ridge works in
//! the SVD basis of each training fold's features (one eigen-decomposition per fold and layer),
//! accumulating per-unit sums for r and R², so memory is O(units) beyond the brain itself. For
//! more than 4096 units, alpha is chosen on 4096 evenly spaced units *(choice: the LOO error of all
//! units costs one n×r×units product per alpha)*; the fits then use all units.

use super::numerics::{
    argmin, complement, default_alphas, folds, matmul, pearson, ranks, rows, Ridge,
};
use super::responses::{unit_values, Readout, Stimulus};
use crate::error::user_error;
use crate::model::{Model, Site, SiteKind};
use crate::rng::Rng;
use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;

/// Units per chunk when streaming the brain matrix.
const CHUNK: usize = 2048;
/// Units on which alpha is chosen when there are more.
const ALPHA_UNITS: usize = 4096;

/// A brain response matrix, [n_stimuli x units] row-major f32.
#[derive(Debug, Clone)]
pub struct Brain {
    pub n: usize,
    pub units: usize,
    pub data: Vec<f32>,
}

#[derive(Debug, Clone, Copy)]
pub struct Methods {
    pub ridge: bool,
    pub rsa: bool,
    pub cka: bool,
}

impl Methods {
    pub fn parse(s: &str) -> Result<Self> {
        let mut m = Methods {
            ridge: false,
            rsa: false,
            cka: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "ridge" => m.ridge = true,
                "rsa" => m.rsa = true,
                "cka" => m.cka = true,
                o => {
                    return Err(user_error(format!(
                        "--methods: unknown method `{o}` (ridge, rsa, cka)"
                    )))
                }
            }
        }
        if !(m.ridge || m.rsa || m.cka) {
            return Err(user_error(
                "--methods: name at least one of ridge, rsa, cka",
            ));
        }
        Ok(m)
    }
}

#[derive(Debug, Clone)]
pub struct AlignOptions {
    pub methods: Methods,
    pub folds: usize,
    pub alphas: Vec<f64>,
    pub permutations: usize,
    pub seed: u64,
}

impl Default for AlignOptions {
    fn default() -> Self {
        Self {
            methods: Methods {
                ridge: true,
                rsa: true,
                cka: true,
            },
            folds: 5,
            alphas: default_alphas(),
            permutations: 1000,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RidgeScore {
    pub mean_r: f64,
    pub median_r: f64,
    pub mean_r2: f64,
    pub median_r2: f64,
    /// Mean of r / ceiling over units with a positive ceiling (with repeats only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_r_normalized: Option<f64>,
    /// The alpha chosen on each outer fold.
    pub alphas: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RsaScore {
    pub rho: f64,
    pub p: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerAlignment {
    pub layer: usize,
    pub site: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ridge: Option<RidgeScore>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rsa: Option<RsaScore>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cka: Option<f64>,
    /// Per brain unit held-out r and R² (for `--out`; not in the JSON).
    #[serde(skip)]
    pub unit_r: Vec<f64>,
    #[serde(skip)]
    pub unit_r2: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Best {
    pub ridge: Option<usize>,
    pub rsa: Option<usize>,
    pub cka: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NoiseCeiling {
    pub mean: f64,
    pub median: f64,
}

/// `ftri align --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Alignment {
    pub n_stimuli: usize,
    pub n_brain_units: usize,
    pub folds: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_ceiling: Option<NoiseCeiling>,
    pub layers: Vec<LayerAlignment>,
    pub best: Best,
    /// Per unit ceiling on r (for `--out`).
    #[serde(skip)]
    pub unit_ceiling: Option<Vec<f64>>,
}

/// One layer's features: [n x p] row-major f64.
pub struct Features {
    pub layer: usize,
    pub site: String,
    pub p: usize,
    pub x: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn nan_mean(v: &[f64]) -> f64 {
    let (s, c) = v
        .iter()
        .filter(|x| !x.is_nan())
        .fold((0.0, 0usize), |(s, c), x| (s + x, c + 1));
    if c == 0 {
        f64::NAN
    } else {
        s / c as f64
    }
}

impl Brain {
    /// Columns c0..c1 of rows `idx`, as f64 [idx.len() x (c1 − c0)].
    fn block(&self, idx: &[usize], c0: usize, c1: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(idx.len() * (c1 - c0));
        for &i in idx {
            out.extend(
                self.data[i * self.units + c0..i * self.units + c1]
                    .iter()
                    .map(|v| *v as f64),
            );
        }
        out
    }
}

#[allow(clippy::needless_range_loop)] // per-unit sums kept in parallel arrays, indexed by unit
/// Ridge encoding of every brain unit from X: per unit (r, R²) of the pooled out-of-fold
/// predictions, and the alpha of each fold.
pub fn ridge_encode(
    x: &[f64],
    n: usize,
    p: usize,
    brain: &Brain,
    k: usize,
    alphas: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let u = brain.units;
    // per unit Σŷ, Σŷ², Σyŷ, Σ(y−ŷ)² over every held-out row
    let mut sp = vec![0.0; u];
    let mut spp = vec![0.0; u];
    let mut syp = vec![0.0; u];
    let mut sse = vec![0.0; u];
    let mut chosen = Vec::new();
    let alpha_units: Vec<usize> = if u <= ALPHA_UNITS {
        (0..u).collect()
    } else {
        (0..ALPHA_UNITS).map(|i| i * u / ALPHA_UNITS).collect()
    };
    for test in folds(n, k) {
        let train = complement(n, &test);
        let ridge = Ridge::new(&rows(x, p, &train), train.len(), p);
        let xte = rows(x, p, &test);
        // alpha: summed LOO error over the alpha units, in chunks
        let mut loo = vec![0.0; alphas.len()];
        for chunk in alpha_units.chunks(CHUNK) {
            let mut y = Vec::with_capacity(train.len() * chunk.len());
            for &i in &train {
                y.extend(chunk.iter().map(|&c| brain.data[i * u + c] as f64));
            }
            let t = chunk.len();
            ridge.center(&mut y, t);
            let z = ridge.project(&y, t);
            for (a, s) in loo.iter_mut().zip(ridge.loo_sse(&y, t, &z, alphas)) {
                *a += s;
            }
        }
        let alpha = alphas[argmin(&loo)];
        chosen.push(alpha);
        for c0 in (0..u).step_by(CHUNK) {
            let c1 = (c0 + CHUNK).min(u);
            let t = c1 - c0;
            let mut y = brain.block(&train, c0, c1);
            let ym = ridge.center(&mut y, t);
            let z = ridge.project(&y, t);
            let pred = ridge.predict(&xte, test.len(), alpha, &z, &ym);
            for (j, &i) in test.iter().enumerate() {
                for c in 0..t {
                    let (yv, pv) = (brain.data[i * u + c0 + c] as f64, pred[j * t + c]);
                    sp[c0 + c] += pv;
                    spp[c0 + c] += pv * pv;
                    syp[c0 + c] += yv * pv;
                    sse[c0 + c] += (yv - pv) * (yv - pv);
                }
            }
        }
    }
    // Σy and Σy² over all rows
    let mut sy = vec![0.0; u];
    let mut syy = vec![0.0; u];
    for row in brain.data.chunks(u).take(n) {
        for ((s, ss), v) in sy.iter_mut().zip(syy.iter_mut()).zip(row) {
            let v = *v as f64;
            *s += v;
            *ss += v * v;
        }
    }
    let nf = n as f64;
    let mut r = vec![f64::NAN; u];
    let mut r2 = vec![f64::NAN; u];
    for c in 0..u {
        let vy = syy[c] - sy[c] * sy[c] / nf;
        let vp = spp[c] - sp[c] * sp[c] / nf;
        let cov = syp[c] - sy[c] * sp[c] / nf;
        if vy > 0.0 && vp > 0.0 {
            r[c] = (cov / (vy * vp).sqrt()).clamp(-1.0, 1.0);
        }
        if vy > 0.0 {
            r2[c] = 1.0 - sse[c] / vy;
        }
    }
    (r, r2, chosen)
}

/// Gram matrix of rows after centering and normalizing each row (stimulus) across its columns:
/// the stimulus × stimulus Pearson correlations. `cols` of `get(i, c)`, read in chunks.
fn row_correlations(n: usize, cols: usize, get: &dyn Fn(usize, usize) -> f64) -> Vec<f64> {
    let mut mean = vec![0.0; n];
    for (i, m) in mean.iter_mut().enumerate() {
        *m = (0..cols).map(|c| get(i, c)).sum::<f64>() / cols as f64;
    }
    let mut g = vec![0.0; n * n];
    for c0 in (0..cols).step_by(CHUNK) {
        let c1 = (c0 + CHUNK).min(cols);
        let t = c1 - c0;
        let mut z = Vec::with_capacity(n * t);
        for (i, m) in mean.iter().enumerate() {
            z.extend((c0..c1).map(|c| get(i, c) - m));
        }
        let part = matmul(&z, n, t, false, &z, n, t, true);
        g.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    let norm: Vec<f64> = (0..n).map(|i| g[i * n + i].sqrt()).collect();
    for i in 0..n {
        for j in 0..n {
            let d = norm[i] * norm[j];
            g[i * n + j] = if d > 0.0 { g[i * n + j] / d } else { f64::NAN };
        }
    }
    g
}

/// Upper triangle (i < j) of 1 − correlation.
fn rdm_vector(corr: &[f64], n: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(n * (n - 1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            v.push(1.0 - corr[i * n + j]);
        }
    }
    v
}

/// Spearman's ρ between two RDMs (upper triangles) and the one-sided permutation p over
/// stimulus labels of the second.
pub fn rsa(a: &[f64], b: &[f64], n: usize, permutations: usize, seed: u64) -> RsaScore {
    let ra = ranks(a);
    let rb = ranks(b);
    let rho = pearson(&ra, &rb);
    if rho.is_nan() || permutations == 0 {
        return RsaScore { rho, p: f64::NAN };
    }
    // Ranks of a permuted RDM are the permuted ranks, so each permutation is one dot product.
    let m = ra.len() as f64;
    let mean = (m + 1.0) / 2.0;
    let ca: Vec<f64> = ra.iter().map(|x| x - mean).collect();
    let cb: Vec<f64> = rb.iter().map(|x| x - mean).collect();
    let (na, nb) = (
        ca.iter().map(|x| x * x).sum::<f64>().sqrt(),
        cb.iter().map(|x| x * x).sum::<f64>().sqrt(),
    );
    let idx = |i: usize, j: usize| -> usize {
        let (i, j) = if i < j { (i, j) } else { (j, i) };
        i * n - i * (i + 1) / 2 + (j - i - 1)
    };
    let mut rng = Rng::new(seed);
    let perms: Vec<Vec<usize>> = (0..permutations)
        .map(|_| {
            let mut p: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                p.swap(i, rng.below(i + 1));
            }
            p
        })
        .collect();
    let hits: usize = perms
        .par_iter()
        .map(|p| {
            let mut s = 0.0;
            let mut k = 0;
            for i in 0..n {
                for j in i + 1..n {
                    s += ca[k] * cb[idx(p[i], p[j])];
                    k += 1;
                }
            }
            usize::from(s / (na * nb) >= rho - 1e-12)
        })
        .sum();
    RsaScore {
        rho,
        p: (1 + hits) as f64 / (1 + permutations) as f64,
    }
}

#[allow(clippy::needless_range_loop)] // the reference's index form, kept comparable
/// Kornblith et al.'s `center_gram(gram, unbiased=True)`.
fn center_gram_unbiased(g: &mut [f64], n: usize) {
    for i in 0..n {
        g[i * n + i] = 0.0;
    }
    let mut means: Vec<f64> = (0..n)
        .map(|j| (0..n).map(|i| g[i * n + j]).sum::<f64>() / (n as f64 - 2.0))
        .collect();
    let total = means.iter().sum::<f64>() / (2.0 * (n as f64 - 1.0));
    means.iter_mut().for_each(|m| *m -= total);
    for i in 0..n {
        for j in 0..n {
            g[i * n + j] -= means[i] + means[j];
        }
    }
    for i in 0..n {
        g[i * n + i] = 0.0;
    }
}

/// Debiased linear CKA from two linear Gram matrices (consumed).
pub fn cka(mut gx: Vec<f64>, mut gy: Vec<f64>, n: usize) -> f64 {
    if n < 4 {
        return f64::NAN;
    }
    center_gram_unbiased(&mut gx, n);
    center_gram_unbiased(&mut gy, n);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let (xy, xx, yy) = (dot(&gx, &gy), dot(&gx, &gx), dot(&gy, &gy));
    if xx <= 0.0 || yy <= 0.0 {
        f64::NAN
    } else {
        xy / (xx.sqrt() * yy.sqrt())
    }
}

/// Per unit ceiling on r from repeats [R x n x units]: √ of the Spearman–Brown-corrected
/// correlation of the mean of even and of odd repeats (0 when that is not positive).
pub fn noise_ceiling(rep: &[f32], r: usize, n: usize, units: usize) -> Vec<f64> {
    (0..units)
        .into_par_iter()
        .map(|c| {
            let half = |parity: usize| -> Vec<f64> {
                (0..n)
                    .map(|i| {
                        let (s, k) = (0..r)
                            .filter(|q| q % 2 == parity)
                            .fold((0.0, 0), |(s, k), q| {
                                (s + rep[(q * n + i) * units + c] as f64, k + 1)
                            });
                        s / k as f64
                    })
                    .collect()
            };
            let rh = pearson(&half(0), &half(1));
            let sb = 2.0 * rh / (1.0 + rh);
            if sb.is_nan() {
                f64::NAN
            } else {
                sb.max(0.0).sqrt()
            }
        })
        .collect()
}

/// Every method for every layer's features against the brain.
pub fn align_features(
    layers: &[Features],
    brain: &Brain,
    repeats: Option<(&[f32], usize)>,
    o: &AlignOptions,
) -> Result<Alignment> {
    let n = brain.n;
    if n < o.folds.max(4) {
        return Err(user_error(format!(
            "{n} stimuli: alignment needs at least 4 and at least as many as --folds ({})",
            o.folds
        )));
    }
    let ceiling = repeats.map(|(rep, r)| noise_ceiling(rep, r, n, brain.units));
    let u = brain.units;
    let get = |i: usize, c: usize| brain.data[i * u + c] as f64;
    let brain_rdm = o
        .methods
        .rsa
        .then(|| rdm_vector(&row_correlations(n, u, &get), n));
    let brain_gram = o.methods.cka.then(|| {
        let mut g = vec![0.0; n * n];
        let all: Vec<usize> = (0..n).collect();
        for c0 in (0..u).step_by(CHUNK) {
            let c1 = (c0 + CHUNK).min(u);
            let y = brain.block(&all, c0, c1);
            let part = matmul(&y, n, c1 - c0, false, &y, n, c1 - c0, true);
            g.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
        g
    });
    let mut out = Vec::new();
    for f in layers {
        let ridge = o.methods.ridge.then(|| {
            let (r, r2, alphas) = ridge_encode(&f.x, n, f.p, brain, o.folds, &o.alphas);
            let normalized = ceiling.as_ref().map(|ce| {
                let v: Vec<f64> = r
                    .iter()
                    .zip(ce)
                    .filter(|(_, c)| **c > 0.0)
                    .map(|(r, c)| r / c)
                    .collect();
                nan_mean(&v)
            });
            (
                RidgeScore {
                    mean_r: nan_mean(&r),
                    median_r: median(&r),
                    mean_r2: nan_mean(&r2),
                    median_r2: median(&r2),
                    mean_r_normalized: normalized,
                    alphas,
                },
                r,
                r2,
            )
        });
        let rsa_score = brain_rdm.as_ref().map(|b| {
            let get = |i: usize, c: usize| f.x[i * f.p + c];
            let a = rdm_vector(&row_correlations(n, f.p, &get), n);
            rsa(&a, b, n, o.permutations, o.seed)
        });
        let cka_score = brain_gram.as_ref().map(|gy| {
            let gx = matmul(&f.x, n, f.p, false, &f.x, n, f.p, true);
            cka(gx, gy.clone(), n)
        });
        let (ridge, unit_r, unit_r2) = match ridge {
            Some((s, r, r2)) => (Some(s), r, r2),
            None => (None, vec![], vec![]),
        };
        out.push(LayerAlignment {
            layer: f.layer,
            site: f.site.clone(),
            ridge,
            rsa: rsa_score,
            cka: cka_score,
            unit_r,
            unit_r2,
        });
    }
    let best_by = |score: &dyn Fn(&LayerAlignment) -> Option<f64>| -> Option<usize> {
        out.iter()
            .filter_map(|l| score(l).filter(|v| !v.is_nan()).map(|v| (l.layer, v)))
            .fold(None, |best: Option<(usize, f64)>, (l, v)| match best {
                Some((_, b)) if b >= v => best,
                _ => Some((l, v)),
            })
            .map(|b| b.0)
    };
    let best = Best {
        ridge: best_by(&|l: &LayerAlignment| l.ridge.as_ref().map(|r| r.mean_r)),
        rsa: best_by(&|l: &LayerAlignment| l.rsa.as_ref().map(|r| r.rho)),
        cka: best_by(&|l: &LayerAlignment| l.cka),
    };
    Ok(Alignment {
        n_stimuli: n,
        n_brain_units: u,
        folds: o.folds,
        noise_ceiling: ceiling.as_ref().map(|c| NoiseCeiling {
            mean: nan_mean(c),
            median: median(c),
        }),
        layers: out,
        best,
        unit_ceiling: ceiling,
    })
}

/// What to align: stimuli, brain, which features, how.
pub struct AlignRequest {
    pub stimuli: Vec<String>,
    pub brain: Brain,
    /// Repeats [R x n x units] and R.
    pub repeats: Option<(Vec<f32>, usize)>,
    pub site: SiteKind,
    pub layers: Vec<usize>,
    pub readout: Readout,
    pub options: AlignOptions,
}

/// The per-layer features of the stimuli, [n x site dim] f64 each.
pub fn layer_features(
    model: &Model,
    stimuli: &[String],
    site: SiteKind,
    layers: &[usize],
    readout: &Readout,
) -> Result<Vec<Features>> {
    let sites: Vec<Site> = layers.iter().map(|&l| Site::Block(l, site)).collect();
    for s in &sites {
        model.parse_site(&s.to_string())?;
    }
    let stims: Vec<Stimulus> = stimuli
        .iter()
        .map(|t| Stimulus {
            text: t.clone(),
            target: None,
        })
        .collect();
    let values = unit_values(model, &stims, &sites, readout)?;
    let mut col = 0;
    Ok(sites
        .iter()
        .map(|s| {
            let p = model.site_dim(*s);
            let x: Vec<f64> = values
                .iter()
                .flat_map(|r| r[col..col + p].iter().map(|v| *v as f64))
                .collect();
            col += p;
            Features {
                layer: s.layer().unwrap_or(0),
                site: s.to_string(),
                p,
                x,
            }
        })
        .collect())
}

/// Run the stimuli through the model and align every layer with the brain.
pub fn align(model: &Model, r: &AlignRequest) -> Result<Alignment> {
    let feats = layer_features(model, &r.stimuli, r.site, &r.layers, &r.readout)?;
    align_features(
        &feats,
        &r.brain,
        r.repeats.as_ref().map(|(d, k)| (d.as_slice(), *k)),
        &r.options,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cka_of_a_representation_with_itself_is_one_and_rsa_is_perfect() {
        let mut rng = Rng::new(4);
        let n = 12;
        let x: Vec<f64> = (0..n * 5).map(|_| rng.normal(1.0) as f64).collect();
        let g = matmul(&x, n, 5, false, &x, n, 5, true);
        assert!((cka(g.clone(), g, n) - 1.0).abs() < 1e-12);
        let get = |i: usize, c: usize| x[i * 5 + c];
        let a = rdm_vector(&row_correlations(n, 5, &get), n);
        let s = rsa(&a, &a, n, 200, 1);
        assert!((s.rho - 1.0).abs() < 1e-12 && s.p < 0.02, "{s:?}");
    }

    #[test]
    fn methods_parse() {
        assert!(Methods::parse("ridge,cka").unwrap().cka);
        assert!(Methods::parse("ridge,foo").is_err());
        assert!(Methods::parse("").is_err());
    }
}
