//! `ftri tune`: tuning curves of units against a numeric stimulus variable.

use super::ModelArgs;
use crate::analyze::localize::parse_layers;
use crate::analyze::responses::{Method, Readout, Reduce};
use crate::analyze::tune::{read_valued_stimuli, tune, TuneRequest, Tuning};
use crate::error::user_error;
use crate::model::{Model, SiteKind};
use crate::output::{print_json, write_atomic};
use anyhow::Result;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL with `text` and a numeric `value` per line, or builtin:years / builtin:durations
    #[arg(long)]
    pub stimuli: String,
    /// Hook point within each block
    #[arg(long, default_value = "mlp.hook_post")]
    pub site: String,
    /// Layers: `0-5`, `1,3,5` (default: all)
    #[arg(long)]
    pub layers: Option<String>,
    /// How a stimulus's tokens reduce to one value per unit: mean, max, last
    #[arg(long, default_value = "mean")]
    pub reduce: String,
    /// Keep special tokens (BOS, [CLS], [SEP]) in the reduction
    #[arg(long)]
    pub include_special: bool,
    /// Cross-validation folds (interleaved: stimulus i is in fold i mod k)
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// How many units (by |ρ|) to list with curves and fits; 0 lists all
    #[arg(long, default_value_t = 50)]
    pub top: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Also write the listed units as CSV (one row per unit)
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: TuneArgs) -> Result<()> {
    let r = compute(&a, &a.model.load()?)?;
    if a.json {
        return print_json(&r);
    }
    print_table(&r);
    Ok(())
}

/// The job of `ftri tune` on a loaded model, `--out` written (the Python bindings call it too).
pub fn compute(a: &TuneArgs, model: &Model) -> Result<Tuning> {
    let reduce = Reduce::parse(&a.reduce)?;
    if a.folds < 2 {
        return Err(user_error("--folds must be at least 2"));
    }
    let stimuli = read_valued_stimuli(&a.stimuli)?;
    let site = SiteKind::from_suffix(&a.site).ok_or_else(|| {
        user_error(format!(
            "--site `{}` is not a per-block hook point (e.g. mlp.hook_post, hook_resid_post)",
            a.site
        ))
    })?;
    let layers = parse_layers(a.layers.as_deref(), model.cfg.n_layers)?;
    let r = tune(
        model,
        &TuneRequest {
            stimuli,
            site,
            layers,
            readout: Readout {
                reduce,
                method: Method::Contrast,
                include_special: a.include_special,
                batch: a.batch,
            },
            folds: a.folds,
            top: a.top,
        },
    )?;
    if let Some(out) = &a.out {
        write_csv(out, &r)?;
    }
    Ok(r)
}

fn print_table(r: &Tuning) {
    println!(
        "{} stimuli, {} distinct values, {} units of {} ({}), {}-fold CV",
        r.n_stimuli,
        r.values.len(),
        r.units_tested,
        r.site,
        r.reduce,
        r.folds
    );
    println!("\npopulation decoding (ridge, CV R²)");
    println!("{:>6} {:>10} {:>12}", "layer", "value", "log value");
    for d in &r.decoding {
        println!(
            "{:>6} {:>10.3} {:>12.3}",
            d.layer, d.r2_value, d.r2_log_value
        );
    }
    println!(
        "\n{:<14} {:>7} {:>10} {:>10} {:>9} {:>8} {:>8} {:>8} {:>10} {:>9}",
        "neuron", "rho", "p", "q", "best", "linear", "log", "gauss", "preferred", "width"
    );
    for u in &r.units {
        let g = &u.fits.gaussian;
        println!(
            "{:<14} {:>7.3} {:>10.2e} {:>10.2e} {:>9} {:>8.3} {:>8.3} {:>8.3} {:>10.4} {:>9.3}",
            u.neuron,
            u.rho,
            u.p,
            u.q,
            u.best_fit.unwrap_or("-"),
            u.fits.linear.cv_r2,
            u.fits.log.cv_r2,
            g.cv_r2,
            g.preferred,
            g.width
        );
    }
}

/// One row per listed unit; empty cells for NaN (pandas reads them as NaN).
fn write_csv(path: &std::path::Path, r: &Tuning) -> Result<()> {
    let f = |x: f64| {
        if x.is_finite() {
            format!("{x}")
        } else {
            String::new()
        }
    };
    write_atomic(path, |tmp| {
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(tmp)
                .map_err(|e| user_error(format!("{}: cannot write: {e}", path.display())))?,
        );
        writeln!(w, "neuron,layer,index,rho,p,q,best_fit,linear_cv_r2,log_cv_r2,gaussian_cv_r2,gaussian_axis,preferred,width,amplitude")?;
        for u in &r.units {
            let g = &u.fits.gaussian;
            writeln!(
                w,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                u.neuron,
                u.layer,
                u.index,
                f(u.rho),
                f(u.p),
                f(u.q),
                u.best_fit.unwrap_or(""),
                f(u.fits.linear.cv_r2),
                f(u.fits.log.cv_r2),
                f(g.cv_r2),
                g.axis,
                f(g.preferred),
                f(g.width),
                f(g.amplitude)
            )?;
        }
        w.flush()?;
        Ok(())
    })
}
