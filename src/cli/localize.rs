//! `ftri localize`: rank units by how differently they respond to target and control stimuli.

use super::ModelArgs;
use crate::analyze::localize::{contrast, read_stimuli, unit_values, Method, Reduce};
use crate::error::user_error;
use crate::model::{Site, SiteKind};
use anyhow::Result;
use clap::Args;
use serde_json::json;
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

pub fn run(a: LocalizeArgs) -> Result<()> {
    let reduce = Reduce::parse(&a.reduce)?;
    let method = Method::parse(&a.method)?;
    let target = read_stimuli(&a.target)?;
    let control = read_stimuli(&a.control)?;
    let model = a.model.load()?;
    let kind = SiteKind::from_suffix(&a.site).ok_or_else(|| {
        user_error(format!(
            "--site `{}` is not a per-block hook point (e.g. mlp.hook_post, hook_resid_post)",
            a.site
        ))
    })?;
    let layers = parse_layers(a.layers.as_deref(), model.cfg.n_layers)?;
    let sites: Vec<Site> = layers.iter().map(|&l| Site::Block(l, kind)).collect();
    for s in &sites {
        model.parse_site(&s.to_string())?;
    }
    let t = unit_values(&model, &target, &sites, reduce, method, a.batch)?;
    let c = unit_values(&model, &control, &sites, reduce, method, a.batch)?;
    let sized: Vec<(Site, usize)> = sites.iter().map(|s| (*s, model.site_dim(*s))).collect();
    let findings = contrast(&sized, &t, &c)?;
    let significant = findings.iter().filter(|f| f.q <= a.fdr).count();
    let shown = &findings[..a.top.min(findings.len())];
    if a.json {
        let out = json!({
            "site": a.site,
            "method": method.name(),
            "reduce": if method == Method::Attribution { "sum" } else { reduce.name() },
            "n_target": target.len(),
            "n_control": control.len(),
            "units_tested": findings.len(),
            "fdr": a.fdr,
            "significant": significant,
            "neurons": shown,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} target vs {} control stimuli, {} units of {} ({}), {} at q ≤ {}",
        target.len(),
        control.len(),
        findings.len(),
        a.site,
        method.name(),
        significant,
        a.fdr
    );
    println!(
        "{:>5}  {:<14} {:>9} {:>8} {:>7} {:>10} {:>10}",
        "rank", "neuron", "t", "d", "AUROC", "p", "q"
    );
    for (i, f) in shown.iter().enumerate() {
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
