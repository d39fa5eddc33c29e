//! Tuning curves: how each unit's response follows a numeric stimulus variable (a year, a count,
//! a duration), as number and time neurons are characterized in neuroscience (*The Other Mind*'s
//! temporal neurons, Weber–Fechner log coding).
//!
//! Each stimulus (`text`, `value`) is reduced to one value per unit (`responses`). Per unit: the
//! tuning curve (mean ± sem of the response at each distinct value), Spearman's ρ with the value
//! (SciPy's p, Benjamini–Hochberg q over every unit tested), and three models compared by
//! cross-validated R² on interleaved folds: linear (a + b·v), logarithmic (a + b·log v) and a
//! Gaussian bump (a + b·exp(−(x−μ)²/2σ²)) on the linear or the log axis, μ and σ chosen by grid
//! search on each training fold. Per layer, the population view: ridge decoding of `value` and of
//! `log value` from all the layer's units (CV R²), which says whether the code is log-compressed.
//!
//! Invariants: units are listed by |ρ| (NaN last), their fits computed for the listed units only
//! (`top`; ρ, p and q for all); the log axis is ln v when every value is positive, else
//! ln(v − min + 1) *(choice)*; ties between fits go to the simpler model (linear, log, Gaussian).

use super::numerics::{complement, default_alphas, folds, r2, ridge_cv_predict, spearman};
use super::responses::{unit_values, Readout, Stimulus};
use super::stats::{bh_qvalues, order};
use crate::error::user_error;
use crate::model::{Model, Site, SiteKind, UnitId};
use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;
use std::path::Path;

/// A stimulus and the numeric value it carries.
#[derive(Debug, Clone)]
pub struct ValuedStimulus {
    pub text: String,
    pub value: f64,
}

/// The built-in stimulus sets (`builtin:NAME`), written for ftri.
pub const BUILTIN: &[(&str, &str)] = &[
    ("years", include_str!("../../data/stimuli/tune_years.jsonl")),
    (
        "durations",
        include_str!("../../data/stimuli/tune_durations.jsonl"),
    ),
];

/// `builtin:NAME` or a JSONL file of `{"text": ..., "value": number}` lines.
pub fn read_valued_stimuli(spec: &str) -> Result<Vec<ValuedStimulus>> {
    let (name, text) = if let Some(b) = spec.strip_prefix("builtin:") {
        let t = BUILTIN
            .iter()
            .find(|(n, _)| *n == b)
            .map(|(_, t)| t.to_string())
            .ok_or_else(|| {
                let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                user_error(format!(
                    "--stimuli {spec}: no such built-in set (available: builtin:{})",
                    names.join(", builtin:")
                ))
            })?;
        (spec.to_string(), t)
    } else {
        let p = Path::new(spec);
        let t = std::fs::read_to_string(p)
            .map_err(|e| user_error(format!("{}: cannot read: {e}", p.display())))?;
        (p.display().to_string(), t)
    };
    parse_valued(&name, &text)
}

fn parse_valued(name: &str, text: &str) -> Result<Vec<ValuedStimulus>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |what: &str| user_error(format!("{name}:{}: {what}", i + 1));
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| bad(&format!("not a JSON object with `text` and `value`: {e}")))?;
        let text = v
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| bad("missing string field `text`"))?;
        let value = match v.get("value") {
            Some(serde_json::Value::Number(n)) => n.as_f64(),
            Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|x| x.is_finite())
        .ok_or_else(|| bad("missing or non-numeric field `value`"))?;
        out.push(ValuedStimulus {
            text: text.to_string(),
            value,
        });
    }
    if out.len() < 3 {
        return Err(user_error(format!(
            "{name}: {} stimuli; tuning needs at least 3 (one JSON object per line with `text` and `value`)",
            out.len()
        )));
    }
    let first = out[0].value;
    if out.iter().all(|s| s.value == first) {
        return Err(user_error(format!(
            "{name}: every stimulus has the value {first}; tuning needs at least two values"
        )));
    }
    Ok(out)
}

/// What to tune: stimuli, which units, how.
#[derive(Debug, Clone)]
pub struct TuneRequest {
    pub stimuli: Vec<ValuedStimulus>,
    pub site: SiteKind,
    pub layers: Vec<usize>,
    pub readout: Readout,
    /// Cross-validation folds (interleaved).
    pub folds: usize,
    /// How many units to list with their fits (0: all).
    pub top: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    pub value: f64,
    pub n: usize,
    pub mean: f64,
    /// Standard error of the mean (NaN → null for a single stimulus).
    pub sem: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct CvFit {
    pub cv_r2: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct GaussianFit {
    pub cv_r2: f64,
    /// μ in value units (on the log axis: the value whose log is μ).
    pub preferred: f64,
    /// σ on the fit's axis: value units for `linear`, natural-log units for `log`.
    pub width: f64,
    /// Which axis the bump lives on: `linear` or `log` (the better by CV R²).
    pub axis: &'static str,
    /// b: positive for a peak at `preferred`, negative for a trough.
    pub amplitude: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Fits {
    pub linear: CvFit,
    pub log: CvFit,
    pub gaussian: GaussianFit,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnitTuning {
    pub neuron: String,
    pub layer: usize,
    pub index: usize,
    pub rho: f64,
    pub p: f64,
    pub q: f64,
    /// `linear`, `log` or `gaussian`; null for a constant unit.
    pub best_fit: Option<&'static str>,
    pub fits: Fits,
    pub curve: Vec<CurvePoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerDecoding {
    pub layer: usize,
    /// CV R² of ridge decoding `value` from the layer's units.
    pub r2_value: f64,
    /// The same for log value: higher than `r2_value` suggests a log-compressed code.
    pub r2_log_value: f64,
}

/// `ftri tune --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Tuning {
    pub site: String,
    pub reduce: &'static str,
    pub folds: usize,
    pub n_stimuli: usize,
    /// The distinct values, ascending.
    pub values: Vec<f64>,
    pub units_tested: usize,
    pub units: Vec<UnitTuning>,
    pub decoding: Vec<LayerDecoding>,
}

/// The log axis: ln v when all values are positive, else ln(v − min + 1).
pub fn log_axis(values: &[f64]) -> Vec<f64> {
    let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
    if min > 0.0 {
        values.iter().map(|v| v.ln()).collect()
    } else {
        values.iter().map(|v| (v - min + 1.0).ln()).collect()
    }
}

/// Inverse of `log_axis` for a point of that axis.
fn from_log_axis(values: &[f64], x: f64) -> f64 {
    let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
    if min > 0.0 {
        x.exp()
    } else {
        x.exp() + min - 1.0
    }
}

/// Mean ± sem of `y` at each distinct value, ascending.
pub fn curve(values: &[f64], y: &[f64]) -> Vec<CurvePoint> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| order(values[a], values[b]));
    let mut out = Vec::new();
    let mut i = 0;
    while i < idx.len() {
        let mut j = i + 1;
        while j < idx.len() && values[idx[j]] == values[idx[i]] {
            j += 1;
        }
        let ys: Vec<f64> = idx[i..j].iter().map(|&k| y[k]).collect();
        let n = ys.len();
        let mean = ys.iter().sum::<f64>() / n as f64;
        let sem = if n > 1 {
            let var = ys.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            (var / n as f64).sqrt()
        } else {
            f64::NAN
        };
        out.push(CurvePoint {
            value: values[idx[i]],
            n,
            mean,
            sem,
        });
        i = j;
    }
    out
}

/// Least squares y ≈ a + b·g over `rows`; (a, b), b = 0 when g is constant there.
fn ols(g: &[f64], y: &[f64], rows: &[usize]) -> (f64, f64) {
    let n = rows.len() as f64;
    let mg = rows.iter().map(|&i| g[i]).sum::<f64>() / n;
    let my = rows.iter().map(|&i| y[i]).sum::<f64>() / n;
    let (mut sgy, mut sgg) = (0.0, 0.0);
    for &i in rows {
        sgy += (g[i] - mg) * (y[i] - my);
        sgg += (g[i] - mg) * (g[i] - mg);
    }
    let b = if sgg > 1e-300 { sgy / sgg } else { 0.0 };
    (my - b * mg, b)
}

/// Out-of-fold R² of y ≈ a + b·g.
fn cv_r2_of(g: &[f64], y: &[f64], k: usize) -> f64 {
    let n = y.len();
    let mut pred = vec![0.0; n];
    for test in folds(n, k) {
        let (a, b) = ols(g, y, &complement(n, &test));
        test.iter().for_each(|&i| pred[i] = a + b * g[i]);
    }
    r2(y, &pred)
}

/// Candidate (μ, σ) pairs on an axis: μ at up to 24 quantiles of the distinct values, σ on a
/// geometric grid from 1/40 of the range to the whole range.
fn gaussian_grid(x: &[f64]) -> Vec<(f64, f64)> {
    let mut d: Vec<f64> = x.to_vec();
    d.sort_by(|a, b| order(*a, *b));
    d.dedup();
    let range = d[d.len() - 1] - d[0];
    if range <= 0.0 {
        return vec![];
    }
    let mus: Vec<f64> = if d.len() <= 24 {
        d.clone()
    } else {
        (0..24).map(|i| d[i * (d.len() - 1) / 23]).collect()
    };
    let sigmas: Vec<f64> = (0..8)
        .map(|i| range / 40.0 * (40f64).powf(i as f64 / 7.0))
        .collect();
    mus.iter()
        .flat_map(|&m| sigmas.iter().map(move |&s| (m, s)))
        .collect()
}

/// The basis exp(−(x−μ)²/2σ²) of every grid point, [grid x n].
fn bumps(x: &[f64], grid: &[(f64, f64)]) -> Vec<Vec<f64>> {
    grid.iter()
        .map(|&(m, s)| {
            x.iter()
                .map(|v| (-(v - m) * (v - m) / (2.0 * s * s)).exp())
                .collect()
        })
        .collect()
}

/// The grid point whose bump explains most of y's variance over `rows`.
fn best_bump(g: &[Vec<f64>], y: &[f64], rows: &[usize]) -> usize {
    let n = rows.len() as f64;
    let my = rows.iter().map(|&i| y[i]).sum::<f64>() / n;
    let mut best = (0, f64::NEG_INFINITY);
    for (c, gc) in g.iter().enumerate() {
        let mg = rows.iter().map(|&i| gc[i]).sum::<f64>() / n;
        let (mut sgy, mut sgg) = (0.0, 0.0);
        for &i in rows {
            sgy += (gc[i] - mg) * (y[i] - my);
            sgg += (gc[i] - mg) * (gc[i] - mg);
        }
        let explained = if sgg > 1e-300 { sgy * sgy / sgg } else { 0.0 };
        if explained > best.1 {
            best = (c, explained);
        }
    }
    best.0
}

/// Precomputed per-axis Gaussian bases, shared by all units of a run.
pub struct GaussianBasis {
    grid: Vec<(f64, f64)>,
    g: Vec<Vec<f64>>,
}

impl GaussianBasis {
    pub fn new(x: &[f64]) -> Self {
        let grid = gaussian_grid(x);
        let g = bumps(x, &grid);
        Self { grid, g }
    }

    /// (CV R², μ, σ, b of the fit on all rows).
    fn fit(&self, y: &[f64], k: usize) -> (f64, f64, f64, f64) {
        let n = y.len();
        if self.grid.is_empty() {
            return (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
        }
        let mut pred = vec![0.0; n];
        for test in folds(n, k) {
            let train = complement(n, &test);
            let c = best_bump(&self.g, y, &train);
            let (a, b) = ols(&self.g[c], y, &train);
            test.iter().for_each(|&i| pred[i] = a + b * self.g[c][i]);
        }
        let all: Vec<usize> = (0..n).collect();
        let c = best_bump(&self.g, y, &all);
        let (_, b) = ols(&self.g[c], y, &all);
        (r2(y, &pred), self.grid[c].0, self.grid[c].1, b)
    }
}

/// The axes of a stimulus set, prepared once for every unit's fits.
pub struct Axes {
    values: Vec<f64>,
    log: Vec<f64>,
    lin_basis: GaussianBasis,
    log_basis: GaussianBasis,
}

impl Axes {
    pub fn new(values: &[f64]) -> Self {
        let log = log_axis(values);
        Self {
            values: values.to_vec(),
            lin_basis: GaussianBasis::new(values),
            log_basis: GaussianBasis::new(&log),
            log,
        }
    }
}

/// Linear, log and Gaussian fits of one unit's responses `y` (one per stimulus), and the best.
pub fn fit_unit(axes: &Axes, y: &[f64], k: usize) -> (Fits, Option<&'static str>) {
    let lin = cv_r2_of(&axes.values, y, k);
    let log = cv_r2_of(&axes.log, y, k);
    let (gl, ml, sl, bl) = axes.lin_basis.fit(y, k);
    let (gg, mg, sg, bg) = axes.log_basis.fit(y, k);
    let gaussian = if gg > gl || (gl.is_nan() && !gg.is_nan()) {
        GaussianFit {
            cv_r2: gg,
            preferred: from_log_axis(&axes.values, mg),
            width: sg,
            axis: "log",
            amplitude: bg,
        }
    } else {
        GaussianFit {
            cv_r2: gl,
            preferred: ml,
            width: sl,
            axis: "linear",
            amplitude: bl,
        }
    };
    let mut best: Option<(&'static str, f64)> = None;
    for (name, v) in [("linear", lin), ("log", log), ("gaussian", gaussian.cv_r2)] {
        // strictly better only: ties go to the simpler model listed first
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b + 1e-12) {
            best = Some((name, v));
        }
    }
    (
        Fits {
            linear: CvFit { cv_r2: lin },
            log: CvFit { cv_r2: log },
            gaussian,
        },
        best.map(|b| b.0),
    )
}

/// Run the stimuli through the model and characterize every unit's tuning.
pub fn tune(model: &Model, r: &TuneRequest) -> Result<Tuning> {
    if r.stimuli.len() < r.folds.max(3) {
        return Err(user_error(format!(
            "{} stimuli for {} folds: give at least as many stimuli as folds (and 3)",
            r.stimuli.len(),
            r.folds
        )));
    }
    let sites: Vec<Site> = r.layers.iter().map(|&l| Site::Block(l, r.site)).collect();
    for s in &sites {
        model.parse_site(&s.to_string())?;
    }
    let stims: Vec<Stimulus> = r
        .stimuli
        .iter()
        .map(|s| Stimulus {
            text: s.text.clone(),
            target: None,
        })
        .collect();
    let rows = unit_values(model, &stims, &sites, &r.readout)?;
    let sized: Vec<(Site, usize)> = sites.iter().map(|s| (*s, model.site_dim(*s))).collect();
    let values: Vec<f64> = r.stimuli.iter().map(|s| s.value).collect();
    tune_rows(&sized, &values, &rows, r.folds, r.top, r.site, r.readout)
}

/// `tune` on responses already computed: rows are stimuli, columns the units of `sites` in order.
pub fn tune_rows(
    sites: &[(Site, usize)],
    values: &[f64],
    rows: &[Vec<f32>],
    k: usize,
    top: usize,
    site: SiteKind,
    readout: Readout,
) -> Result<Tuning> {
    let n = values.len();
    let units: usize = sites.iter().map(|(_, d)| d).sum();
    let column = |c: usize| -> Vec<f64> { rows.iter().map(|r| r[c] as f64).collect() };
    let mut ids = Vec::with_capacity(units);
    for (s, d) in sites {
        for i in 0..*d {
            ids.push((*s, i));
        }
    }
    let rp: Vec<(f64, f64)> = (0..units)
        .into_par_iter()
        .map(|c| spearman(values, &column(c)))
        .collect();
    let q = bh_qvalues(&rp.iter().map(|x| x.1).collect::<Vec<_>>());
    let mut order_idx: Vec<usize> = (0..units).collect();
    order_idx.sort_by(|&a, &b| order(-rp[a].0.abs(), -rp[b].0.abs()).then(a.cmp(&b)));
    if top > 0 {
        order_idx.truncate(top);
    }
    let axes = Axes::new(values);
    let listed: Vec<UnitTuning> = order_idx
        .par_iter()
        .map(|&c| {
            let y = column(c);
            let (fits, best_fit) = fit_unit(&axes, &y, k);
            let (s, i) = ids[c];
            UnitTuning {
                neuron: UnitId::Hook { site: s, index: i }.to_string(),
                layer: s.layer().unwrap_or(0),
                index: i,
                rho: rp[c].0,
                p: rp[c].1,
                q: q[c],
                best_fit,
                fits,
                curve: curve(values, &y),
            }
        })
        .collect();
    // Population decoding, one layer (site) at a time.
    let logv = log_axis(values);
    let alphas = default_alphas();
    let mut decoding = Vec::new();
    let mut col = 0;
    for (s, d) in sites {
        let mut x = Vec::with_capacity(n * d);
        for r in rows {
            x.extend(r[col..col + d].iter().map(|v| *v as f64));
        }
        col += d;
        let dec = |y: &[f64]| {
            let (pred, _) = ridge_cv_predict(&x, n, *d, y, 1, k, &alphas);
            r2(y, &pred)
        };
        decoding.push(LayerDecoding {
            layer: s.layer().unwrap_or(0),
            r2_value: dec(values),
            r2_log_value: dec(&logv),
        });
    }
    let mut distinct = values.to_vec();
    distinct.sort_by(|a, b| order(*a, *b));
    distinct.dedup();
    Ok(Tuning {
        site: site.suffix().to_string(),
        reduce: readout.reduce.name(),
        folds: k,
        n_stimuli: n,
        values: distinct,
        units_tested: units,
        units: listed,
        decoding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn noisy(x: &[f64], f: impl Fn(f64) -> f64, sd: f32, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        x.iter().map(|v| f(*v) + rng.normal(sd) as f64).collect()
    }

    /// 1..1000 log-spaced, each value three times.
    fn log_spaced() -> Vec<f64> {
        (0..60)
            .map(|i| 10f64.powf((i / 3) as f64 * 3.0 / 19.0).round())
            .collect()
    }

    #[test]
    fn a_log_coding_unit_prefers_the_log_fit() {
        let x = log_spaced();
        let y = noisy(&x, |v| 0.5 + 0.3 * v.ln(), 0.05, 1);
        let (fits, best) = fit_unit(&Axes::new(&x), &y, 5);
        assert_eq!(best, Some("log"), "{fits:?}");
        assert!(fits.log.cv_r2 > 0.95 && fits.linear.cv_r2 < 0.8, "{fits:?}");
    }

    #[test]
    fn a_linear_unit_prefers_the_linear_fit() {
        let x: Vec<f64> = (0..60).map(|i| (1 + i % 20) as f64).collect();
        let y = noisy(&x, |v| 2.0 - 0.1 * v, 0.05, 2);
        let (fits, best) = fit_unit(&Axes::new(&x), &y, 5);
        assert_eq!(best, Some("linear"), "{fits:?}");
    }

    #[test]
    fn a_tuned_unit_prefers_the_gaussian_and_finds_its_preferred_value() {
        let x: Vec<f64> = (0..80).map(|i| (1800 + 10 * (i % 24)) as f64).collect();
        let y = noisy(
            &x,
            |v| (-(v - 1900.0).powi(2) / (2.0 * 20f64.powi(2))).exp(),
            0.05,
            3,
        );
        let (fits, best) = fit_unit(&Axes::new(&x), &y, 5);
        assert_eq!(best, Some("gaussian"), "{fits:?}");
        let g = fits.gaussian;
        assert!((g.preferred - 1900.0).abs() <= 10.0, "{g:?}");
        assert!(g.amplitude > 0.5 && g.cv_r2 > 0.9, "{g:?}");
    }

    #[test]
    fn curves_and_constant_units() {
        let c = curve(&[2.0, 1.0, 2.0], &[4.0, 1.0, 6.0]);
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[1].value, c[1].n, c[1].mean, c[1].sem),
            (2.0, 2, 5.0, 1.0)
        );
        assert!(c[0].sem.is_nan());
        let (_, best) = fit_unit(&Axes::new(&[1.0, 2.0, 3.0, 4.0]), &[1.0; 4], 2);
        assert_eq!(best, None);
        assert!(parse_valued("x", "{\"text\":\"a\"}").is_err());
        assert!(parse_valued("x", "").is_err());
    }
}
