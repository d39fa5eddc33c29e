//! `ftri patch`: activation patching and causal tracing (`analyze::patch`): parse the flags, run
//! the library job, print a layer × position grid per site (per-head `z` cells: a head ×
//! position grid per layer), `--json`, or a CSV file.

use super::ModelArgs;
use crate::analyze::localize::parse_layers;
use crate::analyze::patch::{
    parse_sites, patch, Align, Corruption, Metric, PatchMethod, PatchRequest, Patching, HEAD_SITE,
};
use crate::error::user_error;
use crate::model::Model;
use crate::output::{print_json, write_atomic};
use anyhow::Result;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct PatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The clean prompt (the behaviour to explain), e.g. "The Eiffel Tower is in"
    #[arg(long)]
    pub clean: String,
    /// The corrupted prompt, e.g. "The Colosseum is in" (or use --noise)
    #[arg(long, required_unless_present = "noise", conflicts_with = "noise")]
    pub corrupt: Option<String>,
    /// The continuation whose first token the metric reads, e.g. " Paris" (mind the space)
    #[arg(long)]
    pub target: String,
    /// logit_diff's other token (default: the corrupted run's top token other than the target)
    #[arg(long)]
    pub foil: Option<String>,
    /// Per-block sites patched: resid_pre, attn_out, mlp_out, resid_mid, resid_post, mlp_post
    #[arg(long, default_value = "resid_pre,attn_out,mlp_out")]
    pub sites: String,
    /// Also patch every attention head: one cell per layer × head × position, restoring that
    /// head's output (its slice of blocks.L.attn.hook_z) at that position; site `z`
    #[arg(long)]
    pub heads: bool,
    /// Layers patched: `0-5`, `1,3,5` (default: all)
    #[arg(long)]
    pub layers: Option<String>,
    /// logit_diff (target − foil) or logprob (log p of the target's first token)
    #[arg(long, default_value = "logit_diff")]
    pub metric: String,
    /// exact, or attribution (exact plus the gradient estimate of every cell, side by side)
    #[arg(long, default_value = "exact")]
    pub method: String,
    /// For prompts of different token lengths: left (pair positions from the start) or right
    /// (pair them from the end)
    #[arg(long)]
    pub align: Option<String>,
    /// ROME-style causal tracing: corrupt the clean prompt with Gaussian noise of SIGMA × the
    /// embeddings' std on the subject tokens (ROME uses 3)
    #[arg(long, value_name = "SIGMA")]
    pub noise: Option<f64>,
    /// The subject whose tokens get the noise (default: every token but the last)
    #[arg(long, requires = "noise")]
    pub subject: Option<String>,
    /// Noise draws averaged
    #[arg(long, default_value_t = 5)]
    pub seeds: usize,
    /// Seed of the first noise draw
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the cells as CSV (site, layer, position, head, recovered[, attribution])
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PatchArgs) -> Result<()> {
    let model = a.model.load()?;
    let started = std::time::Instant::now();
    let r = compute(&a, &model)?;
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        return print_json(&r);
    }
    print_grids(&r, secs);
    if let Some(out) = &a.out {
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// The job of `ftri patch` on a loaded model, `--out` written (the Python bindings call it too).
pub fn compute(a: &PatchArgs, model: &Model) -> Result<Patching> {
    let metric = Metric::parse(&a.metric)?;
    let method = PatchMethod::parse(&a.method)?;
    let mut sites = parse_sites(&a.sites)?;
    if a.heads && !sites.contains(&HEAD_SITE) {
        sites.push(HEAD_SITE);
    }
    let align = a.align.as_deref().map(Align::parse).transpose()?;
    if a.target.is_empty() {
        return Err(user_error("--target is empty"));
    }
    if let Some(out) = a.out.as_ref().filter(|o| o.is_dir()) {
        return Err(user_error(format!("{}: is a directory", out.display())));
    }
    let corruption = match (&a.corrupt, a.noise) {
        (Some(c), None) => Corruption::Prompt(c.clone()),
        (None, Some(sigma)) => Corruption::Noise {
            sigma,
            subject: a.subject.clone(),
            seeds: a.seeds,
            seed: a.seed,
        },
        _ => return Err(user_error("give either --corrupt or --noise")),
    };
    let layers = a
        .layers
        .as_deref()
        .map(|l| parse_layers(Some(l), model.cfg.n_layers))
        .transpose()?;
    let mut req = PatchRequest::new(&a.clean, corruption, &a.target);
    req.foil = a.foil.clone();
    req.sites = sites;
    req.layers = layers;
    req.metric = metric;
    req.method = method;
    req.align = align.unwrap_or(Align::Strict);
    let r = patch(model, &req)?;
    if let Some(out) = &a.out {
        write_csv(out, &r)?;
    }
    Ok(r)
}

/// The cells as CSV, one row each, in the JSON's order; empty `head` for none.
pub fn write_csv(path: &Path, r: &Patching) -> Result<()> {
    let attribution = r.cells.iter().any(|c| c.attribution.is_some());
    write_atomic(path, |tmp| {
        let f = std::fs::File::create(tmp)
            .map_err(|e| user_error(format!("{}: cannot write: {e}", path.display())))?;
        let mut w = std::io::BufWriter::new(f);
        write!(w, "site,layer,position,head,recovered")?;
        writeln!(w, "{}", if attribution { ",attribution" } else { "" })?;
        for c in &r.cells {
            let head = c.head.map(|h| h.to_string()).unwrap_or_default();
            write!(
                w,
                "{},{},{},{head},{}",
                c.site, c.layer, c.position, c.recovered
            )?;
            match c.attribution {
                Some(x) if attribution => writeln!(w, ",{x}")?,
                _ if attribution => writeln!(w, ",")?,
                _ => writeln!(w)?,
            }
        }
        w.flush()?;
        Ok(())
    })
}

/// A token as a column header: visible spaces, at most 8 characters.
fn header(t: &str) -> String {
    let t = t.replace(' ', "·").replace('\n', "⏎");
    let n = t.chars().count();
    if n <= 8 {
        t
    } else {
        t.chars().take(7).chain(std::iter::once('…')).collect()
    }
}

fn print_grids(r: &Patching, secs: f64) {
    let what = match &r.foil {
        Some(f) => format!("logit({:?}) − logit({f:?})", r.target),
        None => format!("log p({:?})", r.target),
    };
    println!(
        "{} = {what}: clean {:.4}, corrupted {:.4}{}",
        r.metric,
        r.clean_metric,
        r.corrupt_metric,
        match &r.noise {
            Some(n) => format!(
                " (noise σ = {} × embedding std = {:.4} on positions {:?}, mean of {} seeds)",
                n.sigma, n.std, n.positions, n.seeds
            ),
            None => String::new(),
        }
    );
    println!(
        "recovered = (patched − corrupted) / (clean − corrupted); {} patched forward passes in {secs:.2} s",
        r.forwards
    );
    let mut positions: Vec<usize> = r.cells.iter().map(|c| c.position).collect();
    positions.sort();
    positions.dedup();
    let mut sites: Vec<&str> = Vec::new();
    for c in &r.cells {
        if !sites.contains(&c.site.as_str()) {
            sites.push(&c.site);
        }
    }
    let grids: &[(&str, bool)] =
        if r.correlation.is_some() || r.cells.iter().any(|c| c.attribution.is_some()) {
            &[("exact", false), ("attribution", true)]
        } else {
            &[("", false)]
        };
    for site in sites {
        if site == "z" {
            print_head_grids(r, grids, &positions);
            continue;
        }
        for &(label, attr) in grids {
            println!();
            println!(
                "{site}{}{}",
                if label.is_empty() { "" } else { " · " },
                label
            );
            print!("{:>6}", "layer");
            for &p in &positions {
                print!(
                    " {:>8}",
                    header(r.tokens.get(p).map(String::as_str).unwrap_or("?"))
                );
            }
            println!();
            let mut layers: Vec<usize> = r
                .cells
                .iter()
                .filter(|c| c.site == site)
                .map(|c| c.layer)
                .collect();
            layers.dedup();
            for l in layers {
                print!("{l:>6}");
                for &p in &positions {
                    let v = r
                        .cells
                        .iter()
                        .find(|c| c.site == site && c.layer == l && c.position == p)
                        .and_then(|c| {
                            if attr {
                                c.attribution
                            } else {
                                Some(c.recovered)
                            }
                        });
                    match v {
                        Some(v) => print!(" {v:>8.3}"),
                        None => print!(" {:>8}", "–"),
                    }
                }
                println!();
            }
        }
    }
    if let Some(c) = r.correlation {
        println!();
        println!(
            "correlation of attribution with exact over {} cells: {c:.4}",
            r.cells.len()
        );
    }
}

/// Per-head cells (site `z`): a head × position grid per layer.
fn print_head_grids(r: &Patching, grids: &[(&str, bool)], positions: &[usize]) {
    let mut layers: Vec<usize> = r
        .cells
        .iter()
        .filter(|c| c.site == "z")
        .map(|c| c.layer)
        .collect();
    layers.dedup();
    for l in layers {
        for &(label, attr) in grids {
            println!();
            println!(
                "z (heads) · layer {l}{}{}",
                if label.is_empty() { "" } else { " · " },
                label
            );
            print!("{:>6}", "head");
            for &p in positions {
                print!(
                    " {:>8}",
                    header(r.tokens.get(p).map(String::as_str).unwrap_or("?"))
                );
            }
            println!();
            let mut heads: Vec<usize> = r
                .cells
                .iter()
                .filter(|c| c.site == "z" && c.layer == l)
                .filter_map(|c| c.head)
                .collect();
            heads.dedup();
            for h in heads {
                print!("{:>6}", format!("{l}.h{h}"));
                for &p in positions {
                    let v = r
                        .cells
                        .iter()
                        .find(|c| {
                            c.site == "z" && c.layer == l && c.head == Some(h) && c.position == p
                        })
                        .and_then(|c| {
                            if attr {
                                c.attribution
                            } else {
                                Some(c.recovered)
                            }
                        });
                    match v {
                        Some(v) => print!(" {v:>8.3}"),
                        None => print!(" {:>8}", "–"),
                    }
                }
                println!();
            }
        }
    }
}
