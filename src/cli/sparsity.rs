//! `ftri sparsity`: lazy neurons per layer and the loss of exact against statistical top-k
//! (see `analyze::sparsity`).

use super::modules::{run_with_bar, CorpusArgs};
use super::ModelArgs;
use crate::analyze::localize::parse_layers;
use crate::analyze::sparsity::{sparsity, SparsityRequest, SparsityResult};
use crate::error::user_error;
use crate::model::Model;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct SparsityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub corpus: CorpusArgs,
    /// Layers (`0-5`, `1,3`; default all)
    #[arg(long)]
    pub layers: Option<String>,
    /// |activation| above this is active in the ε view
    #[arg(long, default_value_t = 0.01)]
    pub eps: f32,
    /// Percentages of each token's neurons kept in the top-k comparison
    #[arg(long, default_value = "5,10,25,50")]
    pub keep: String,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: SparsityArgs) -> Result<()> {
    run_with_bar(&a.model, a.json, |m, p| compute(&a, m, p), print_table)
}

/// The job of `ftri sparsity` on a loaded model, its files written (the Python bindings call it
/// too); `progress(stage, done, total)` as the library job's.
pub fn compute(
    a: &SparsityArgs,
    m: &Model,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<SparsityResult> {
    let corpus = a.corpus.spec()?;
    let keep_percent: Vec<f64> = a
        .keep
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<f64>()
                .map_err(|_| user_error(format!("--keep: `{p}` is not a percentage")))
        })
        .collect::<Result<_>>()?;
    if a.eps.is_nan() || a.eps < 0.0 {
        return Err(user_error("--eps must be ≥ 0"));
    }
    let layers = parse_layers(a.layers.as_deref(), m.cfg.n_layers)?;
    let req = SparsityRequest {
        corpus,
        layers,
        eps: a.eps,
        keep_percent,
    };
    let r = sparsity(m, &req, progress)?;
    Ok(r)
}

fn print_table(r: &SparsityResult) {
    println!(
        "{} tokens, {} neurons per layer; active = a > 0, ε-active = |a| > {}",
        r.tokens, r.d_mlp, r.eps
    );
    println!(
        "{:>5} {:>8} {:>8} {:>8} {:>10} {:>6} {:>8}",
        "layer", "active", "p10", "p90", "ε-active", "dead", "ε-dead"
    );
    for l in &r.layers {
        println!(
            "{:>5} {:>7.1}% {:>7.1}% {:>7.1}% {:>9.1}% {:>6} {:>8}",
            l.layer,
            100.0 * l.active.mean,
            100.0 * l.active.p10,
            100.0 * l.active.p90,
            100.0 * l.active_eps.mean,
            l.never_active,
            l.never_active_eps
        );
    }
    match r.dense_loss {
        None => println!("no LM head: no loss comparison"),
        Some(dl) => {
            println!("dense loss {dl:.4} nats");
            println!(
                "{:>6} {:>6} {:>11} {:>11} {:>8} {:>10}",
                "keep", "k", "exact", "statistical", "overlap", "stat kept"
            );
            for t in &r.topk {
                println!(
                    "{:>5}% {:>6} {:>11.4} {:>11.4} {:>7.1}% {:>9.1}%",
                    t.keep_percent,
                    t.k,
                    t.exact_loss,
                    t.statistical_loss,
                    100.0 * t.overlap,
                    100.0 * t.statistical_kept
                );
            }
        }
    }
}
