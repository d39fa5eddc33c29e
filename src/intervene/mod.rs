//! The `intervene` stage: which units to act on (neuron sets), what to do to them (ops), and
//! how behaviour changes (evaluation sets, random baselines).

pub mod eval;
pub mod experts;
pub mod heads;
pub mod lesion;

use crate::error::user_error;
use crate::model::{Intervention, ModelConfig, Op, Site, SiteKind, UnitId};
use crate::rng::Rng;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::Path;

/// A neuron `L.N`: index N of `blocks.L.mlp.hook_post`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neuron {
    pub layer: usize,
    pub index: usize,
}

impl std::fmt::Display for Neuron {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.layer, self.index)
    }
}

impl Neuron {
    /// Parse `L.N` and check it against the model's shape.
    pub fn parse(s: &str, cfg: &ModelConfig) -> Result<Neuron> {
        let bad = || {
            user_error(format!(
                "`{s}` is not a neuron id (expected LAYER.INDEX, e.g. 3.17)"
            ))
        };
        let (layer, index) = s
            .parse::<UnitId>()
            .ok()
            .and_then(|u| u.as_neuron())
            .ok_or_else(bad)?;
        let n = Neuron { layer, index };
        if n.layer >= cfg.n_layers {
            return Err(user_error(format!(
                "neuron {n}: layer {} out of range (the model has {} layers)",
                n.layer, cfg.n_layers
            )));
        }
        if cfg.is_moe_layer(n.layer) {
            return Err(user_error(format!(
                "neuron {n}: layer {} is a mixture of experts (its neurons are blocks.{}.mlp.experts.E.hook_post:N; switch experts off with --experts {}.eE)",
                n.layer, n.layer, n.layer
            )));
        }
        if n.index >= cfg.d_mlp {
            return Err(user_error(format!(
                "neuron {n}: index {} out of range (layers have {} neurons)",
                n.index, cfg.d_mlp
            )));
        }
        Ok(n)
    }
}

/// A neuron set: a comma list (`3.17,5.2040`) or a file of ids, `@file` or a bare path (commas, whitespace or newlines;
/// a JSON list of strings, or `localize --json` output, also works).
pub fn parse_neuron_set(spec: &str, cfg: &ModelConfig) -> Result<Vec<Neuron>> {
    // `@file.json` names a file explicitly (the spelling DESIGN.md uses): it must exist.
    let (spec, must_be_file) = match spec.strip_prefix('@') {
        Some(rest) => (rest, true),
        None => (spec, false),
    };
    let path = Path::new(spec);
    if must_be_file && !path.is_file() {
        return Err(user_error(format!("@{spec}: no such file")));
    }
    let text = if path.is_file() {
        let t = std::fs::read_to_string(path)
            .map_err(|e| user_error(format!("{spec}: cannot read: {e}")))?;
        match serde_json::from_str::<serde_json::Value>(&t) {
            Ok(v) => json_neurons(&v).join(","),
            Err(_) => t,
        }
    } else {
        spec.to_string()
    };
    let mut set: Vec<Neuron> = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| Neuron::parse(s, cfg))
        .collect::<Result<_>>()?;
    set.sort();
    set.dedup();
    if set.is_empty() {
        return Err(user_error(format!("`{spec}` names no neurons")));
    }
    Ok(set)
}

fn json_neurons(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a.iter().flat_map(json_neurons).collect(),
        // `members`: a module from `ftri modules` (module-ID.json)
        serde_json::Value::Object(o) => match (o.get("neuron"), o.get("neurons"), o.get("members"))
        {
            (Some(n), _, _) => json_neurons(n),
            (_, Some(ns), _) => json_neurons(ns),
            (_, _, Some(ms)) => json_neurons(ms),
            _ => vec![],
        },
        _ => vec![],
    }
}

/// What to do to the selected neurons.
#[derive(Debug, Clone, PartialEq)]
pub enum OpSpec {
    Zero,
    /// Replace with each neuron's mean activation over a corpus (from an atlas).
    Mean,
    Scale(f32),
    Set(f32),
    Add(f32),
    /// Neuron Adjust on the pre-activations (`mlp.hook_pre`): the forget-skill distribution comes
    /// from the `--atlas`, the retain distribution from the atlas at this path.
    Adjust(std::path::PathBuf),
}

impl OpSpec {
    pub fn parse(s: &str) -> Result<OpSpec> {
        let num = |v: &str| -> Result<f32> {
            v.parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| user_error(format!("--op `{s}`: `{v}` is not a finite number")))
        };
        Ok(match s.split_once('=') {
            None if s == "zero" => OpSpec::Zero,
            None if s == "mean" => OpSpec::Mean,
            Some(("scale", v)) => OpSpec::Scale(num(v)?),
            Some(("set", v)) | Some(("clamp", v)) => OpSpec::Set(num(v)?),
            Some(("add", v)) => OpSpec::Add(num(v)?),
            Some(("adjust", path)) if !path.is_empty() => OpSpec::Adjust(path.into()),
            _ => {
                return Err(user_error(format!(
                    "unknown --op `{s}` (zero, mean, scale=F, set=V, add=V, adjust=RETAIN_ATLAS)"
                )))
            }
        })
    }

    pub fn needs_atlas(&self) -> bool {
        matches!(self, OpSpec::Mean | OpSpec::Adjust(_))
    }
}

impl std::fmt::Display for OpSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpSpec::Zero => write!(f, "zero"),
            OpSpec::Mean => write!(f, "mean"),
            OpSpec::Scale(x) => write!(f, "scale={x}"),
            OpSpec::Set(x) => write!(f, "set={x}"),
            OpSpec::Add(x) => write!(f, "add={x}"),
            OpSpec::Adjust(p) => write!(f, "adjust={}", p.display()),
        }
    }
}

/// The interventions that apply `op` to `neurons` (one per layer), at `positions` (None = all).
/// `means(layer)` gives a layer's per-neuron means, needed by `mean` only.
pub fn interventions(
    neurons: &[Neuron],
    op: &OpSpec,
    positions: Option<&[usize]>,
    d_mlp: usize,
    means: &dyn Fn(usize) -> Result<Vec<f32>>,
) -> Result<Vec<Intervention>> {
    let mut by_layer: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for n in neurons {
        by_layer.entry(n.layer).or_default().push(n.index);
    }
    by_layer
        .into_iter()
        .map(|(layer, units)| {
            let op =
                match op {
                    OpSpec::Zero => Op::Zero,
                    OpSpec::Scale(f) => Op::Scale(*f),
                    OpSpec::Set(v) => Op::Set(*v),
                    OpSpec::Add(v) => Op::Add(*v),
                    OpSpec::Mean => {
                        let m = means(layer)?;
                        if m.len() != d_mlp {
                            return Err(user_error(format!(
                            "the atlas has {} means for layer {layer}, the model {d_mlp} neurons",
                            m.len()
                        )));
                        }
                        Op::SetPerUnit(m)
                    }
                    OpSpec::Adjust(_) => return Err(user_error(
                        "adjust needs the forget and retain atlases (see `adjust_interventions`)",
                    )),
                };
            Ok(Intervention {
                site: Site::Block(layer, SiteKind::MlpPost),
                units: Some(units),
                positions: positions.map(|p| p.to_vec()),
                op,
            })
        })
        .collect()
}

/// A random set shaped like `set`: as many neurons in each layer, none of them in `set`.
pub fn random_like(set: &[Neuron], d_mlp: usize, rng: &mut Rng) -> Vec<Neuron> {
    let mut out: Vec<Neuron> = Vec::with_capacity(set.len());
    for n in set {
        let free = d_mlp
            - set
                .iter()
                .chain(out.iter())
                .filter(|m| m.layer == n.layer)
                .count();
        if free == 0 {
            continue;
        }
        loop {
            let cand = Neuron {
                layer: n.layer,
                index: rng.below(d_mlp),
            };
            if !set.contains(&cand) && !out.contains(&cand) {
                out.push(cand);
                break;
            }
        }
    }
    out.sort();
    out
}

/// One site's per-unit mean and standard deviation from an atlas.
fn site_moments(atlas: &crate::atlas::Atlas, site: Site, d: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let si = atlas.site_index(site).ok_or_else(|| {
        user_error(format!(
            "{}: the atlas did not record {site} (record it with --sites 'blocks.*.mlp.hook_pre')",
            atlas.dir.display()
        ))
    })?;
    let mean = atlas.column_f64(si, crate::atlas::Field::Mean)?;
    let var = atlas.column_f64(si, crate::atlas::Field::Var)?;
    if mean.len() != d {
        return Err(user_error(format!(
            "{}: {site} has {} units, the model {d}",
            atlas.dir.display(),
            mean.len()
        )));
    }
    Ok((
        mean.iter().map(|&x| x as f32).collect(),
        var.iter().map(|&v| v.max(0.0).sqrt() as f32).collect(),
    ))
}

/// Neuron Adjust (effective skill unlearning): for each selected neuron, pre-activations that look
/// like the forget-skill distribution (atlas `forget`) are moved to the retain distribution (atlas
/// `retain`), both read from `blocks.L.mlp.hook_pre` statistics.
pub fn adjust_interventions(
    neurons: &[Neuron],
    forget: &crate::atlas::Atlas,
    retain: &crate::atlas::Atlas,
    positions: Option<&[usize]>,
    d_mlp: usize,
) -> Result<Vec<Intervention>> {
    let mut by_layer: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for n in neurons {
        by_layer.entry(n.layer).or_default().push(n.index);
    }
    by_layer
        .into_iter()
        .map(|(layer, units)| {
            let site = Site::Block(layer, SiteKind::MlpPre);
            let (mu_f, sd_f) = site_moments(forget, site, d_mlp)?;
            let (mu_r, sd_r) = site_moments(retain, site, d_mlp)?;
            let pick = |v: Vec<f32>| -> Vec<f32> { units.iter().map(|&u| v[u]).collect() };
            let (mu_f, sd_f, mu_r, sd_r) = (pick(mu_f), pick(sd_f), pick(mu_r), pick(sd_r));
            Ok(Intervention {
                site: Site::Block(layer, SiteKind::MlpPre),
                units: Some(units),
                positions: positions.map(|p| p.to_vec()),
                op: Op::Adjust {
                    mu_f,
                    sd_f,
                    mu_r,
                    sd_r,
                },
            })
        })
        .collect()
}
