//! `ftri frequency`: frequency tagging of units by the levels of structured token streams.

use super::ModelArgs;
use crate::analyze::frequency::{frequency, parse_levels, FrequencyRequest, FrequencyTagging};
use crate::analyze::localize::parse_layers;
use crate::error::user_error;
use crate::model::{Model, SiteKind};
use crate::output::{print_json, write_atomic};
use anyhow::Result;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct FrequencyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Levels and their periods in tokens, NAME=PERIOD,...
    #[arg(long, default_value = "syllable=1,word=2,phrase=4,sentence=8")]
    pub levels: String,
    /// Streams, one per line, whose tokens already carry the structure (default: built-in streams
    /// of 2-word phrases, 4-word sentences and 8-word sentence pairs, one token per word)
    #[arg(long)]
    pub stimuli: Option<PathBuf>,
    /// Built-in streams: how many
    #[arg(long, default_value_t = 24)]
    pub streams: usize,
    /// Built-in streams: 8-token cycles per stream
    #[arg(long, default_value_t = 8)]
    pub cycles: usize,
    /// Hook point within each block
    #[arg(long, default_value = "mlp.hook_post")]
    pub site: String,
    /// Layers: `0-5`, `1,3,5` (default: all)
    #[arg(long)]
    pub layers: Option<String>,
    /// False discovery rate: a unit is tagged at a level when q ≤ fdr
    #[arg(long, default_value_t = 0.05)]
    pub fdr: f64,
    /// How many tagged units to list (0: all)
    #[arg(long, default_value_t = 50)]
    pub top: usize,
    /// Seed of the built-in streams and of the shuffled controls
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Also write the listed units as CSV
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: FrequencyArgs) -> Result<()> {
    let r = compute(&a, &a.model.load()?)?;
    if a.json {
        return print_json(&r);
    }
    print_table(&r);
    Ok(())
}

/// The job of `ftri frequency` on a loaded model, `--out` written (the Python bindings call it too).
pub fn compute(a: &FrequencyArgs, model: &Model) -> Result<FrequencyTagging> {
    let levels = parse_levels(&a.levels)?;
    let streams = match &a.stimuli {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| user_error(format!("{}: cannot read: {e}", p.display())))?;
            let lines: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if lines.is_empty() {
                return Err(user_error(format!(
                    "{}: no streams (empty file)",
                    p.display()
                )));
            }
            Some(lines)
        }
    };
    let site = SiteKind::from_suffix(&a.site).ok_or_else(|| {
        user_error(format!(
            "--site `{}` is not a per-block hook point (e.g. mlp.hook_post, hook_resid_post)",
            a.site
        ))
    })?;
    let layers = parse_layers(a.layers.as_deref(), model.cfg.n_layers)?;
    let r = frequency(
        model,
        &FrequencyRequest {
            levels,
            streams,
            n_builtin: a.streams,
            cycles: a.cycles,
            site,
            layers,
            batch: a.batch,
            fdr: a.fdr,
            top: a.top,
            seed: a.seed,
        },
    )?;
    if let Some(out) = &a.out {
        write_csv(out, &r)?;
    }
    Ok(r)
}

fn print_table(r: &FrequencyTagging) {
    println!(
        "{} streams × {} positions (and as many shuffled), {} units of {}, tagged at q ≤ {}",
        r.n_streams, r.n_positions, r.units_tested, r.site, r.fdr
    );
    let names: Vec<&str> = r
        .levels
        .iter()
        .filter(|l| l.testable)
        .map(|l| l.name.as_str())
        .collect();
    print!("\n{:>6}", "layer");
    names.iter().for_each(|n| print!(" {n:>10}"));
    println!();
    for l in &r.layers {
        print!("{:>6}", l.layer);
        names.iter().for_each(|n| {
            print!(
                " {:>9.1}%",
                100.0 * l.tagged.get(*n).copied().unwrap_or(0.0)
            )
        });
        println!();
    }
    println!(
        "\n{:<14} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "neuron", "level", "freq", "snr", "control", "p", "q"
    );
    for u in &r.units {
        println!(
            "{:<14} {:>10} {:>9.4} {:>9.2} {:>9.2} {:>10.2e} {:>10.2e}",
            u.neuron, u.level, u.frequency, u.snr, u.control_snr, u.p, u.q
        );
    }
}

fn write_csv(path: &std::path::Path, r: &FrequencyTagging) -> Result<()> {
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
        writeln!(w, "neuron,layer,index,level,frequency,snr,control_snr,p,q")?;
        for u in &r.units {
            writeln!(
                w,
                "{},{},{},{},{},{},{},{},{}",
                u.neuron,
                u.layer,
                u.index,
                u.level,
                u.frequency,
                f(u.snr),
                f(u.control_snr),
                f(u.p),
                f(u.q)
            )?;
        }
        w.flush()?;
        Ok(())
    })
}
