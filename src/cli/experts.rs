//! `ftri experts`: rank the experts of a mixture-of-experts model by how differently target and
//! control stimuli are routed to them (routing rate or mean routing weight per stimulus).

use super::ModelArgs;
use crate::analyze::experts::{image_experts, ExpertImaging, ExpertsRequest, Measure};
use crate::analyze::responses::read_stimuli;
use crate::model::Model;
use crate::output::print_json;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ExpertsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Target stimuli: one per line, or JSONL with `text`
    #[arg(long)]
    pub target: PathBuf,
    /// Control stimuli, same format
    #[arg(long)]
    pub control: PathBuf,
    /// rate (fraction of a stimulus's tokens routed to the expert) or weight (its mean routing
    /// weight over the stimulus's tokens, 0 where not routed)
    #[arg(long, default_value = "rate")]
    pub measure: String,
    /// Layers: `0-5`, `1,3,5` (default: every mixture-of-experts layer)
    #[arg(long)]
    pub layers: Option<String>,
    /// False discovery rate for the Benjamini–Hochberg count
    #[arg(long, default_value_t = 0.05)]
    pub fdr: f64,
    /// How many experts to list
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ExpertsArgs) -> Result<()> {
    let r = compute(&a, &a.model.load()?)?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "{} target vs {} control stimuli, routing {} of {} experts, {} preferring the target at q ≤ {}",
        r.n_target, r.n_control, r.measure, r.experts_tested, r.significant, a.fdr
    );
    println!(
        "{:>5}  {:<8} {:>9} {:>8} {:>7} {:>10} {:>10} {:>8} {:>8}",
        "rank", "expert", "t", "d", "AUROC", "p", "q", "target", "control"
    );
    for (i, f) in r.experts.iter().enumerate() {
        println!(
            "{:>5}  {:<8} {:>9.2} {:>8.2} {:>7.3} {:>10.2e} {:>10.2e} {:>8.3} {:>8.3}",
            i + 1,
            f.expert,
            f.score,
            f.effect_size,
            f.auroc,
            f.p,
            f.q,
            f.target_mean,
            f.control_mean
        );
    }
    Ok(())
}

/// The job of `ftri experts` on a loaded model (the Python bindings call it too).
pub fn compute(a: &ExpertsArgs, model: &Model) -> Result<ExpertImaging> {
    let measure = Measure::parse(&a.measure)?;
    let target = read_stimuli(&a.target)?;
    let control = read_stimuli(&a.control)?;
    image_experts(
        model,
        &ExpertsRequest {
            target,
            control,
            measure,
            layers: a.layers.clone(),
            fdr: a.fdr,
            top: a.top,
            batch: a.batch,
        },
    )
}
