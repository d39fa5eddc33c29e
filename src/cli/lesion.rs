//! `ftri lesion`: silence or drive a neuron set and measure what changes on evaluation prompts,
//! next to the same intervention on random sets of the same size and layers.

use super::ModelArgs;
use crate::atlas::Atlas;
use crate::error::user_error;
use crate::intervene::eval::{read_eval, score, tokenize, Score};
use crate::intervene::{
    adjust_interventions, interventions, parse_neuron_set, random_like, Neuron, OpSpec,
};
use crate::model::synth::Rng;
use crate::model::{Intervention, Model};
use anyhow::Result;
use clap::Args;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct LesionArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Neurons: `3.17,5.2040` or a file of ids (or `localize --json` output)
    #[arg(long)]
    pub neurons: String,
    /// zero, mean (needs --atlas), scale=F, set=V, add=V, or adjust=RETAIN_ATLAS (Neuron Adjust:
    /// --atlas holds the forget-skill data's `mlp.hook_pre` statistics, RETAIN_ATLAS the retained)
    #[arg(long, default_value = "zero")]
    pub op: String,
    /// JSONL of {"prompt": ..., "target": ...}
    #[arg(long)]
    pub eval: PathBuf,
    /// A second evaluation set the lesion should leave alone
    #[arg(long)]
    pub control_eval: Option<PathBuf>,
    /// Also run the intervention on R random sets of the same size and layers
    #[arg(long, default_value_t = 0)]
    pub random_baseline: usize,
    /// Token positions to intervene at (comma list; default all)
    #[arg(long)]
    pub positions: Option<String>,
    /// Atlas with the corpus means (for --op mean)
    #[arg(long)]
    pub atlas: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

pub fn parse_positions(s: Option<&str>) -> Result<Option<Vec<usize>>> {
    s.map(|s| {
        s.split(',')
            .map(|p| {
                p.trim()
                    .parse::<usize>()
                    .map_err(|_| user_error(format!("--positions: `{p}` is not a position")))
            })
            .collect()
    })
    .transpose()
}

/// Per-layer corpus means of the neurons, read from an atlas recorded on the same model.
pub fn atlas_means(atlas: Option<&Path>, model: &Model, op: &OpSpec) -> Result<Option<Atlas>> {
    match (atlas, op.needs_atlas()) {
        (None, true) => Err(user_error(format!(
            "--op {op} needs --atlas (an atlas of this model from `ftri record`)"
        ))),
        (Some(p), _) => {
            let a = Atlas::open(p)?;
            if a.manifest.model.d_mlp != model.cfg.d_mlp
                || a.manifest.model.n_layers != model.cfg.n_layers
            {
                return Err(user_error(format!(
                    "{}: recorded on a model of another shape than {}",
                    p.display(),
                    model.id
                )));
            }
            Ok(Some(a))
        }
        (None, false) => Ok(None),
    }
}

pub fn build(
    model: &Model,
    set: &[Neuron],
    op: &OpSpec,
    positions: Option<&[usize]>,
    atlas: Option<&Atlas>,
) -> Result<Vec<Intervention>> {
    if let OpSpec::Adjust(retain) = op {
        let forget = atlas
            .ok_or_else(|| user_error("--op adjust needs --atlas (the forget-skill atlas)"))?;
        let retain = Atlas::open(retain)?;
        return adjust_interventions(set, forget, &retain, positions, model.cfg.d_mlp);
    }
    let means = |layer: usize| -> Result<Vec<f32>> {
        let a = atlas.ok_or_else(|| user_error("--op mean needs --atlas"))?;
        let name = format!("blocks.{layer}.mlp.hook_post");
        let site = a
            .manifest
            .sites
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| {
                user_error(format!(
                    "{}: the atlas did not record {name}",
                    a.dir.display()
                ))
            })?;
        Ok(a.column_f64(site, "mean")?
            .into_iter()
            .map(|x| x as f32)
            .collect())
    };
    interventions(set, op, positions, model.cfg.d_mlp, &means)
}

fn score_json(s: &Score) -> serde_json::Value {
    json!({"mean_logprob": s.mean_logprob, "accuracy": s.accuracy})
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = if xs.len() > 1 {
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, v.sqrt())
}

pub fn run(a: LesionArgs) -> Result<()> {
    let op = OpSpec::parse(&a.op)?;
    let positions = parse_positions(a.positions.as_deref())?;
    let items = read_eval(&a.eval)?;
    let control = a.control_eval.as_deref().map(read_eval).transpose()?;
    let model = a.model.load()?;
    let set = parse_neuron_set(&a.neurons, &model.cfg)?;
    let atlas = atlas_means(a.atlas.as_deref(), &model, &op)?;
    let ivs = build(&model, &set, &op, positions.as_deref(), atlas.as_ref())?;
    let seqs = tokenize(&model, &items)?;
    let base = score(&model, &seqs, &[])?;
    let hit = score(&model, &seqs, &ivs)?;
    let delta = hit.minus(&base);
    let control_json = match &control {
        Some(c) => {
            let cs = tokenize(&model, c)?;
            let (b, h) = (score(&model, &cs, &[])?, score(&model, &cs, &ivs)?);
            json!({"baseline": score_json(&b), "intervened": score_json(&h), "delta": score_json(&h.minus(&b))})
        }
        None => serde_json::Value::Null,
    };
    let random_json = if a.random_baseline > 0 {
        let mut rng = Rng::new(a.seed);
        let mut d_lp = Vec::new();
        let mut d_acc = Vec::new();
        for _ in 0..a.random_baseline {
            let r = random_like(&set, model.cfg.d_mlp, &mut rng);
            let rivs = build(&model, &r, &op, positions.as_deref(), atlas.as_ref())?;
            let d = score(&model, &seqs, &rivs)?.minus(&base);
            d_lp.push(d.mean_logprob);
            d_acc.push(d.accuracy);
        }
        let ((mlp, slp), (macc, sacc)) = (mean_std(&d_lp), mean_std(&d_acc));
        // how many random sets moved the metric at least as far as the chosen set did
        let as_extreme = d_lp
            .iter()
            .filter(|d| d.abs() >= delta.mean_logprob.abs())
            .count();
        json!({
            "sets": a.random_baseline,
            "mean_delta": {"mean_logprob": mlp, "accuracy": macc},
            "std_delta": {"mean_logprob": slp, "accuracy": sacc},
            "as_extreme": as_extreme,
        })
    } else {
        serde_json::Value::Null
    };
    let out = json!({
        "neurons": set.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "op": op.to_string(),
        "n_eval": items.len(),
        "baseline": score_json(&base),
        "intervened": score_json(&hit),
        "delta": score_json(&delta),
        "control": control_json,
        "random_baseline": random_json,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{} neurons, op {}, {} prompts", set.len(), op, items.len());
    println!("                 mean log p(target)   accuracy");
    println!(
        "baseline         {:>18.4}   {:>8.3}",
        base.mean_logprob, base.accuracy
    );
    println!(
        "intervened       {:>18.4}   {:>8.3}",
        hit.mean_logprob, hit.accuracy
    );
    println!(
        "delta            {:>+18.4}   {:>+8.3}",
        delta.mean_logprob, delta.accuracy
    );
    if let Some(c) = out["control"].as_object() {
        println!(
            "control delta    {:>+18.4}   {:>+8.3}",
            c["delta"]["mean_logprob"].as_f64().unwrap_or(f64::NAN),
            c["delta"]["accuracy"].as_f64().unwrap_or(f64::NAN)
        );
    }
    if let Some(r) = out["random_baseline"].as_object() {
        println!(
            "random sets      {:>+18.4} ± {:.4} (mean ± sd of delta over {} sets; {} as extreme as this set)",
            r["mean_delta"]["mean_logprob"].as_f64().unwrap_or(f64::NAN),
            r["std_delta"]["mean_logprob"].as_f64().unwrap_or(f64::NAN),
            a.random_baseline,
            r["as_extreme"]
        );
    }
    Ok(())
}
