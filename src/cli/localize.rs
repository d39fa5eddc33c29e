//! `ftri localize`: rank units by how differently they respond to target and control stimuli.

use super::ModelArgs;
use crate::analyze::localize::{localize, parse_layers, Direction, LocalizeRequest};
use crate::analyze::responses::{read_stimuli, Method, Readout, Reduce};
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
    /// Which units to list: target (respond more to the target), control, or both (by |t|)
    #[arg(long, default_value = "target")]
    pub direction: String,
    /// Target line i and control line i are a matched pair: paired t-test and Wilcoxon
    /// signed-rank test (the files must have the same number of stimuli)
    #[arg(long)]
    pub paired: bool,
    /// Keep special tokens (BOS, [CLS], [SEP]) in the mean/max/last reductions
    #[arg(long)]
    pub include_special: bool,
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
    let direction = Direction::parse(&a.direction)?;
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
            readout: Readout {
                reduce,
                method,
                include_special: a.include_special,
                batch: a.batch,
            },
            direction,
            paired: a.paired,
            fdr: a.fdr,
            top: a.top,
        },
    )?;
    if a.json {
        return print_json(&r);
    }
    let preferring = match direction {
        Direction::Both => String::new(),
        d => format!(" preferring the {}", d.name()),
    };
    println!(
        "{} target vs {} control stimuli ({}), {} units of {} ({}), {}{preferring} at q ≤ {}",
        r.n_target, r.n_control, r.test, r.units_tested, r.site, r.method, r.significant, r.fdr
    );
    let w = if a.paired {
        format!(" {:>10}", "Wilcoxon p")
    } else {
        String::new()
    };
    println!(
        "{:>5}  {:<14} {:>9} {:>8} {:>7} {:>10} {:>10}{w}",
        "rank", "neuron", "t", "d", "AUROC", "p", "q"
    );
    for (i, f) in r.neurons.iter().enumerate() {
        let w = f
            .wilcoxon_p
            .map(|p| format!(" {p:>10.2e}"))
            .unwrap_or_default();
        println!(
            "{:>5}  {:<14} {:>9.2} {:>8.2} {:>7.3} {:>10.2e} {:>10.2e}{w}",
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
