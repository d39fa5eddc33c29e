//! `ftri lesion`: silence or drive a neuron set and measure what changes on evaluation prompts,
//! next to the same intervention on random sets of the same size and layers.

use super::ModelArgs;
use crate::error::user_error;
use crate::intervene::eval::read_eval;
use crate::intervene::experts::parse_expert_set;
use crate::intervene::heads::parse_head_set;
use crate::intervene::lesion::{lesion, open_atlas, LesionRequest};
use crate::intervene::{parse_neuron_set, OpSpec};
use crate::output::print_json;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct LesionArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Neurons: `3.17,5.2040` or a file of ids (or `localize --json` output)
    #[arg(long, required_unless_present_any = ["experts", "heads"])]
    pub neurons: Option<String>,
    /// Attention heads: `3.h5,7.h1`. `--op zero` zeroes each head's `attn.hook_z` (its output
    /// before the output projection), `--op mean` puts its mean over the evaluation prompts'
    /// tokens there; random baselines act on as many other heads of the same layers
    #[arg(long)]
    pub heads: Option<String>,
    /// Experts to switch off (mixture-of-experts models): `3.e5,7.e1`. Each one's router logit
    /// goes to −∞ before the top-k, so the next-best expert is chosen instead; random baselines
    /// switch off as many random experts in the same layers
    #[arg(long)]
    pub experts: Option<String>,
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

pub fn run(a: LesionArgs) -> Result<()> {
    let op = OpSpec::parse(&a.op)?;
    let positions = parse_positions(a.positions.as_deref())?;
    let eval = read_eval(&a.eval)?;
    let control_eval = a.control_eval.as_deref().map(read_eval).transpose()?;
    let model = a.model.load()?;
    let neurons = match &a.neurons {
        Some(spec) => parse_neuron_set(spec, &model.cfg)?,
        None => vec![],
    };
    let experts = match &a.experts {
        Some(spec) => parse_expert_set(spec, &model.cfg)?,
        None => vec![],
    };
    let heads = match &a.heads {
        Some(spec) => parse_head_set(spec, &model.cfg)?,
        None => vec![],
    };
    // heads' mean comes from the evaluation prompts: an atlas is needed only for neurons' means
    let atlas = match neurons.is_empty() && a.atlas.is_none() {
        true => None,
        false => open_atlas(a.atlas.as_deref(), &model, &op)?,
    };
    let r = lesion(
        &model,
        &LesionRequest {
            neurons,
            experts,
            heads,
            op,
            positions,
            eval,
            control_eval,
            random_baseline: a.random_baseline,
            seed: a.seed,
            atlas,
        },
    )?;
    if a.json {
        return print_json(&r);
    }
    if !r.neurons.is_empty() {
        println!(
            "{} neurons, op {}, {} prompts",
            r.neurons.len(),
            r.op,
            r.n_eval
        );
    }
    if !r.heads.is_empty() {
        println!(
            "{} heads ({}), op {}, {} prompts",
            r.heads.len(),
            r.heads.join(","),
            r.op,
            r.n_eval
        );
    }
    if !r.experts.is_empty() {
        println!(
            "{} experts switched off ({}), {} prompts",
            r.experts.len(),
            r.experts.join(","),
            r.n_eval
        );
    }
    println!("                 mean log p(target)   accuracy");
    for (name, s) in [("baseline", &r.baseline), ("intervened", &r.intervened)] {
        println!("{name:<16} {:>18.4}   {:>8.3}", s.mean_logprob, s.accuracy);
    }
    let d = &r.delta;
    println!(
        "delta            {:>+18.4}   {:>+8.3}",
        d.mean_logprob, d.accuracy
    );
    if let Some(c) = &r.control {
        println!(
            "control delta    {:>+18.4}   {:>+8.3}",
            c.delta.mean_logprob, c.delta.accuracy
        );
    }
    if let Some(b) = &r.random_baseline {
        println!(
            "random sets      {:>+18.4} ± {:.4} (mean ± sd of delta over {} sets; {} as extreme as this set)",
            b.mean_delta.mean_logprob, b.std_delta.mean_logprob, b.sets, b.as_extreme
        );
    }
    Ok(())
}
