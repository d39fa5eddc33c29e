//! `ftri decompose`: semi-NMF of one site's activations into components (see
//! `analyze::decompose`); writes the components F [d, k] to safetensors and the report (components
//! as units, steering) as JSON next to it (`F.json`), which `serve --decomposition` reads.
//! `--concept` adds component against difference-in-means steering (`analyze::steering`).

use super::modules::{run_with_bar, CorpusArgs};
use super::ModelArgs;
use crate::analyze::decompose::{decompose, DecomposeRequest, DecomposeResult};
use crate::analyze::describe::write_matrix;
use crate::analyze::steering::steer;
use crate::error::user_error;
use crate::model::Model;
use crate::output::{to_pretty_json, write_atomic, write_safetensors};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
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
    /// Steer with a component and with difference-in-means on a concept: target and control
    /// stimuli files, one per line (see README: decompose)
    #[arg(long, num_args = 2, value_names = ["TARGET", "CONTROL"])]
    pub concept: Option<Vec<PathBuf>>,
    /// The component to steer with (default: the one most aligned with the concept)
    #[arg(long)]
    pub component: Option<usize>,
    /// Steering scales, multiples of the concept's mean MLP-output difference
    #[arg(long, value_delimiter = ',', default_values_t = vec![1.0f32, 2.0, 4.0, 8.0])]
    pub scales: Vec<f32>,
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
    if a.scales.is_empty() || a.scales.iter().any(|s| !s.is_finite()) {
        return Err(user_error("--scales: finite numbers, comma separated"));
    }
    // a missing stimulus file is found before the (long) fit, not after
    for p in a.concept.iter().flatten() {
        if !p.is_file() {
            return Err(user_error(format!(
                "--concept {}: no such file",
                p.display()
            )));
        }
    }
    if a.component.is_some() && a.concept.is_none() {
        return Err(user_error("--component needs --concept TARGET CONTROL"));
    }
    let mut r = decompose(m, &req, progress)?;
    if let (Some(c), Some(layer)) = (&a.concept, site.layer()) {
        let w = write_matrix(m, layer)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        r.steering = Some(steer(
            m,
            layer,
            &r.f,
            r.k,
            &w,
            (&c[0], &c[1]),
            a.component,
            &a.scales,
            5,
        )?);
    }
    let f = Tensor::from_vec(r.f.clone(), (r.d, r.k), &Device::Cpu)?;
    let meta = HashMap::from([
        ("site".to_string(), r.site.clone()),
        ("model".to_string(), m.id.clone()),
    ]);
    write_safetensors(&a.out, &[("F".to_string(), f)], Some(meta))?;
    // the components as units (top contexts, promotes) next to F, for `serve --decomposition`
    let text = to_pretty_json(&r)?;
    write_atomic(&a.out.with_extension("json"), |tmp| {
        std::fs::write(tmp, &text)?;
        Ok(())
    })?;
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
    if let Some(s) = &r.steering {
        println!(
            "steering toward {:?} on {} held-out control prompts: component {} (cosine with diff-in-means {:.3})",
            s.concept_tokens, s.heldout_prompts, s.component, s.cosine
        );
        println!(
            "{:>8}  {:>12}  {:>14}",
            "scale", "component", "diff-in-means"
        );
        for ((sc, c), d) in s
            .scales
            .iter()
            .zip(&s.component_effect)
            .zip(&s.diff_means_effect)
        {
            println!("{sc:>8}  {c:>+12.3}  {d:>+14.3}");
        }
    }
}
