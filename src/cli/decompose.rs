//! `ftri decompose`: semi-NMF of one site's activations into components (see
//! `analyze::decompose`); writes the components F [d, k] to safetensors.

use super::modules::{run_with_bar, CorpusArgs};
use super::ModelArgs;
use crate::analyze::decompose::{decompose, DecomposeRequest, DecomposeResult};
use crate::error::user_error;
use crate::model::Model;
use crate::output::write_safetensors;
use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Args;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct DecomposeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub corpus: CorpusArgs,
    /// The neurons to factor: blocks.L.mlp.hook_post
    #[arg(long)]
    pub site: String,
    /// Components
    #[arg(long, default_value_t = 64)]
    pub k: usize,
    /// At most this many semi-NMF iterations
    #[arg(long, default_value_t = 300)]
    pub iterations: usize,
    /// Converged when an iteration lowers the loss by less than this fraction
    #[arg(long, default_value_t = 1e-5)]
    pub tolerance: f64,
    /// Top tokens per component
    #[arg(long, default_value_t = 8)]
    pub top: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output safetensors: `F` [d, k] (column K is component L.cK)
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: DecomposeArgs) -> Result<()> {
    run_with_bar(&a.model, a.json, |m, p| compute(&a, m, p), print_table)
}

/// The job of `ftri decompose` on a loaded model, its files written (the Python bindings call it
/// too); `progress(stage, done, total)` as the library job's.
pub fn compute(
    a: &DecomposeArgs,
    m: &Model,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<DecomposeResult> {
    let corpus = a.corpus.spec()?;
    if a.iterations == 0 {
        return Err(user_error("--iterations must be at least 1"));
    }
    let site = m.parse_site(&a.site)?;
    let req = DecomposeRequest {
        corpus,
        site,
        k: a.k,
        max_iterations: a.iterations,
        tolerance: a.tolerance,
        top: a.top,
        seed: a.seed,
    };
    let r = decompose(m, &req, progress)?;
    let f = Tensor::from_vec(r.f.clone(), (r.d, r.k), &Device::Cpu)?;
    let meta = HashMap::from([
        ("site".to_string(), r.site.clone()),
        ("model".to_string(), m.id.clone()),
    ]);
    write_safetensors(&a.out, &[("F".to_string(), f)], Some(meta))?;
    Ok(r)
}

fn print_table(r: &DecomposeResult) {
    println!(
        "{} components of {} ({} fit tokens, {} held out): {} iterations ({}), R² fit {:.3}, held-out {:.3} (k-means {:.3}), min G {:.2e}",
        r.k,
        r.site,
        r.fit_tokens,
        r.heldout_tokens,
        r.iterations,
        if r.converged { "converged" } else { "not converged" },
        r.fit_r2,
        r.heldout_r2,
        r.kmeans_heldout_r2,
        r.min_coefficient
    );
    for c in &r.components {
        let top: Vec<String> = c
            .top
            .iter()
            .take(4)
            .map(|t| format!("{:?}", t.token))
            .collect();
        let pro: Vec<String> = c
            .promotes
            .iter()
            .take(4)
            .map(|t| format!("{:?}", t.token))
            .collect();
        println!("{:>8}  {:<40} {}", c.id, top.join(" "), pro.join(" "));
    }
}
