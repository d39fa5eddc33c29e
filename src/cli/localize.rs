//! `ftri localize`: rank units by how differently they respond to target and control stimuli.

use super::ModelArgs;
use crate::analyze::localize::{
    localize, parse_layers, read_stimuli, LocalizeRequest, Method, Reduce,
};
use crate::error::user_error;
use crate::model::SiteKind;
use crate::output::print_json;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct LocalizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Target stimuli: one per line, or JSONL with `text` (and `target` continuations)
    #[arg(long)]
    pub target: PathBuf,
    /// Control stimuli, same format
    #[arg(long)]
    pub control: PathBuf,
    /// Hook point within each block
    #[arg(long, default_value = "mlp.hook_post")]
    pub site: String,
    /// Layers: `0-5`, `1,3,5` (default: all)
    #[arg(long)]
    pub layers: Option<String>,
    /// How a stimulus's tokens reduce to one value per unit (contrast): mean, max, last
    #[arg(long, default_value = "mean")]
    pub reduce: String,
    /// contrast (activations) or attribution (activation × gradient of the log-likelihood)
    #[arg(long, default_value = "contrast")]
    pub method: String,
    /// False discovery rate for the Benjamini–Hochberg count
    #[arg(long, default_value_t = 0.05)]
    pub fdr: f64,
    /// How many units to list
    #[arg(long, default_value_t = 50)]
    pub top: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: LocalizeArgs) -> Result<()> {
    let reduce = Reduce::parse(&a.reduce)?;
    let method = Method::parse(&a.method)?;
    let target = read_stimuli(&a.target)?;
    let control = read_stimuli(&a.control)?;
    let model = a.model.load()?;
    let site = SiteKind::from_suffix(&a.site).ok_or_else(|| {
        user_error(format!(
            "--site `{}` is not a per-block hook point (e.g. mlp.hook_post, hook_resid_post)",
            a.site
        ))
    })?;
    let layers = parse_layers(a.layers.as_deref(), model.cfg.n_layers)?;
    let r = localize(
        &model,
        &LocalizeRequest {
            target,
            control,
            site,
            layers,
            reduce,
            method,
            fdr: a.fdr,
            top: a.top,
            batch: a.batch,
        },
    )?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "{} target vs {} control stimuli, {} units of {} ({}), {} at q ≤ {}",
        r.n_target, r.n_control, r.units_tested, r.site, r.method, r.significant, r.fdr
    );
    println!(
        "{:>5}  {:<14} {:>9} {:>8} {:>7} {:>10} {:>10}",
        "rank", "neuron", "t", "d", "AUROC", "p", "q"
    );
    for (i, f) in r.neurons.iter().enumerate() {
        println!(
            "{:>5}  {:<14} {:>9.2} {:>8.2} {:>7.3} {:>10.2e} {:>10.2e}",
            i + 1,
            f.neuron,
            f.score,
            f.effect_size,
            f.auroc,
            f.p,
            f.q
        );
    }
    Ok(())
}
