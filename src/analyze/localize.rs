//! The functional localizer: which units respond to a concept or skill. Each stimulus is reduced
//! to one value per unit (`responses`), then target and control sets are compared per unit with
//! Welch's t (or, for matched pairs, the paired t-test and the Wilcoxon signed-rank test), Cohen's
//! d and AUROC; p-values get Benjamini–Hochberg q-values over all units tested.
//!
//! Results are signed. By default (`Direction::Target`) the list holds the units that respond
//! more to the target than to the control, best (largest t) first, and `significant` counts those
//! at q ≤ fdr; `Control` lists the opposite preference; `Both` ranks by |t|. p-values stay
//! two-sided and q-values are computed over every unit, whatever the direction listed.

use super::responses::{unit_values_until, Method, Readout, Stimulus};
use super::stats::{bh_qvalues, order, paired, welch, wilcoxon_p};
use crate::error::user_error;
use crate::model::{AttnHook, Model, Site, SiteKind, UnitId};
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `L.N` for MLP neurons, `HOOK:N` for units of other sites.
    pub neuron: String,
    pub layer: usize,
    pub index: usize,
    /// t, target minus control (Welch's, or paired): the sign says which set the unit prefers.
    pub score: f64,
    /// Cohen's d (of the differences, for pairs).
    pub effect_size: f64,
    pub auroc: f64,
    pub p: f64,
    pub q: f64,
    /// Paired designs: two-sided p of the Wilcoxon signed-rank test.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wilcoxon_p: Option<f64>,
    /// The unit's mean response to the target and to the control stimuli (what a clamp at the
    /// concept's level sets it to, e.g. the demo's steering).
    pub target_mean: f64,
    pub control_mean: f64,
}

/// Which preference a localizer lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Units that respond more to the target (t > 0), largest t first.
    Target,
    /// Units that respond more to the control (t < 0), most negative t first.
    Control,
    /// Every unit, largest |t| first.
    Both,
}

impl Direction {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "target" => Direction::Target,
            "control" => Direction::Control,
            "both" => Direction::Both,
            o => {
                return Err(user_error(format!(
                    "unknown --direction `{o}` (target, control, both)"
                )))
            }
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Direction::Target => "target",
            Direction::Control => "control",
            Direction::Both => "both",
        }
    }
    /// Whether a unit with this t shows the preference listed.
    pub fn admits(self, t: f64) -> bool {
        match self {
            Direction::Target => t > 0.0,
            Direction::Control => t < 0.0,
            Direction::Both => !t.is_nan(),
        }
    }
}

/// Layers from `--layers`: `0-5`, `1,3,5` (all when absent).
pub fn parse_layers(spec: Option<&str>, n_layers: usize) -> Result<Vec<usize>> {
    let Some(spec) = spec else {
        return Ok((0..n_layers).collect());
    };
    let bad = |p: &str| {
        user_error(format!(
            "--layers: `{p}` is not a layer or range (e.g. 0-5 or 1,3)"
        ))
    };
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (
                a.parse::<usize>().map_err(|_| bad(part))?,
                b.parse::<usize>().map_err(|_| bad(part))?,
            ),
            None => {
                let x = part.parse::<usize>().map_err(|_| bad(part))?;
                (x, x)
            }
        };
        if a > b || b >= n_layers {
            return Err(user_error(format!(
                "--layers: `{part}` is outside the model's layers 0-{}",
                n_layers - 1
            )));
        }
        out.extend(a..=b);
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(bad(spec));
    }
    Ok(out)
}

/// What to localize: stimuli, which units (a per-block hook point over some layers), how.
#[derive(Debug, Clone)]
pub struct LocalizeRequest {
    pub target: Vec<Stimulus>,
    pub control: Vec<Stimulus>,
    /// The hook point within each block (`mlp.hook_post` for neurons).
    pub site: SiteKind,
    pub layers: Vec<usize>,
    pub readout: Readout,
    pub direction: Direction,
    /// Target i and control i are a matched pair: paired t-test and Wilcoxon signed-rank test.
    pub paired: bool,
    /// False discovery rate for the Benjamini–Hochberg count.
    pub fdr: f64,
    /// How many findings to keep.
    pub top: usize,
}

/// `ftri localize --json`, the server's `/api/localize` and the demo's concepts.
#[derive(Debug, Clone, Serialize)]
pub struct Localization {
    pub site: String,
    pub method: &'static str,
    pub reduce: &'static str,
    /// `welch` (independent sets) or `paired`.
    pub test: &'static str,
    /// The preference listed: `target`, `control` or `both`.
    pub direction: &'static str,
    pub include_special: bool,
    pub n_target: usize,
    pub n_control: usize,
    pub units_tested: usize,
    pub fdr: f64,
    /// Units showing the listed preference with q ≤ fdr.
    pub significant: usize,
    /// The `top` best findings in the listed direction.
    pub neurons: Vec<Finding>,
}

/// Run both stimulus sets through the model and compare them unit by unit.
pub fn localize(model: &Model, r: &LocalizeRequest) -> Result<Localization> {
    localize_until(model, r, &|| Ok(()))
}

/// `localize`, calling `keep_going` before each batch of stimuli: an error from it stops the job
/// (the server cancels jobs past their time limit or whose client left).
pub fn localize_until(
    model: &Model,
    r: &LocalizeRequest,
    keep_going: &dyn Fn() -> Result<()>,
) -> Result<Localization> {
    if r.paired && r.target.len() != r.control.len() {
        return Err(user_error(format!(
            "--paired needs as many target as control stimuli (got {} and {}): target i and control i form a pair",
            r.target.len(),
            r.control.len()
        )));
    }
    let heads = match r.site {
        SiteKind::Attn(AttnHook::Z) => true,
        SiteKind::Attn(h) => {
            return Err(user_error(format!(
                "--site {}: inside attention only attn.hook_z (each head's output norm, units L.hH) can be localized",
                h.suffix()
            )))
        }
        _ => false,
    };
    let sites: Vec<Site> = r.layers.iter().map(|&l| Site::Block(l, r.site)).collect();
    for s in &sites {
        model.parse_site(&s.to_string())?;
    }
    let t = unit_values_until(model, &r.target, &sites, &r.readout, keep_going)?;
    let c = unit_values_until(model, &r.control, &sites, &r.readout, keep_going)?;
    let width = |s: Site| match heads {
        true => model.cfg.n_heads,
        false => model.site_dim(s),
    };
    let sized: Vec<(Site, usize)> = sites.iter().map(|s| (*s, width(*s))).collect();
    let all = contrast(&sized, &t, &c, r.paired)?;
    let units_tested = all.len();
    let mut findings = rank(all, r.direction);
    let significant = findings.iter().filter(|f| f.q <= r.fdr).count();
    findings.truncate(r.top);
    Ok(Localization {
        site: r.site.suffix().to_string(),
        method: r.readout.method.name(),
        reduce: match r.readout.method {
            Method::Attribution => "sum",
            Method::Contrast => r.readout.reduce.name(),
        },
        test: if r.paired { "paired" } else { "welch" },
        direction: r.direction.name(),
        include_special: r.readout.include_special,
        n_target: r.target.len(),
        n_control: r.control.len(),
        units_tested,
        fdr: r.fdr,
        significant,
        neurons: findings,
    })
}

/// Compare target and control per unit (rows are stimuli, columns units of `sites` in order);
/// findings in unit order, with q-values over all of them.
pub fn contrast(
    sites: &[(Site, usize)],
    target: &[Vec<f32>],
    control: &[Vec<f32>],
    pairs: bool,
) -> Result<Vec<Finding>> {
    let units: usize = sites.iter().map(|(_, n)| n).sum();
    let mut findings = Vec::with_capacity(units);
    let mut col = 0;
    for (site, n) in sites {
        for i in 0..*n {
            let a: Vec<f64> = target.iter().map(|r| r[col] as f64).collect();
            let b: Vec<f64> = control.iter().map(|r| r[col] as f64).collect();
            let c = if pairs {
                paired(&a, &b)?
            } else {
                welch(&a, &b)?
            };
            findings.push(Finding {
                neuron: match site {
                    Site::Block(layer, SiteKind::Attn(AttnHook::Z)) => UnitId::Head {
                        layer: *layer,
                        head: i,
                    },
                    _ => UnitId::Hook {
                        site: *site,
                        index: i,
                    },
                }
                .to_string(),
                layer: site.layer().unwrap_or(0),
                index: i,
                score: c.t,
                effect_size: c.d,
                auroc: c.auroc,
                p: c.p,
                q: 0.0,
                wilcoxon_p: pairs.then(|| wilcoxon_p(&a, &b)),
                target_mean: mean(&a),
                control_mean: mean(&b),
            });
            col += 1;
        }
    }
    let q = bh_qvalues(&findings.iter().map(|f| f.p).collect::<Vec<_>>());
    findings.iter_mut().zip(q).for_each(|(f, q)| f.q = q);
    Ok(findings)
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// The findings that show `direction`'s preference, best first (ties: smaller p, then unit order).
pub fn rank(findings: Vec<Finding>, direction: Direction) -> Vec<Finding> {
    let mut kept: Vec<Finding> = findings
        .into_iter()
        .filter(|f| direction.admits(f.score))
        .collect();
    let key = |f: &Finding| match direction {
        Direction::Target => -f.score,
        Direction::Control => f.score,
        Direction::Both => -f.score.abs(),
    };
    kept.sort_by(|x, y| order(key(x), key(y)).then(order(x.p, y.p)));
    kept
}
