//! `ftri moefy`: MoEfication of the dense FFNs and its loss-vs-experts curve (see
//! `analyze::moefy`); writes `DIR/moefy.json` and `DIR/experts.json` (each layer's experts).

use super::modules::{run_with_bar, CorpusArgs};
use super::ModelArgs;
use crate::analyze::localize::parse_layers;
use crate::analyze::moefy::{moefy, Method, MoefyRequest, MoefyResult};
use crate::error::user_error;
use crate::model::Model;
use crate::output::{to_pretty_json, write_atomic};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct MoefyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub corpus: CorpusArgs,
    /// Experts per layer (equal sizes)
    #[arg(long)]
    pub experts: usize,
    /// keys (balanced k-means on the neurons' input weights) or coactivation
    #[arg(long, default_value = "keys")]
    pub method: String,
    /// Layers (`0-5`, `1,3`; default all)
    #[arg(long)]
    pub layers: Option<String>,
    /// Experts per token to evaluate (comma list; default 1..K, or powers of two and K for K > 16)
    #[arg(long)]
    pub r: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder: moefy.json and experts.json
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: MoefyArgs) -> Result<()> {
    run_with_bar(&a.model, a.json, |m, p| compute(&a, m, p), print_table)
}

/// The job of `ftri moefy` on a loaded model, its files written (the Python bindings call it
/// too); `progress(stage, done, total)` as the library job's.
pub fn compute(
    a: &MoefyArgs,
    m: &Model,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<MoefyResult> {
    let corpus = a.corpus.spec()?;
    let method = Method::parse(&a.method)?;
    let r_values =
        a.r.as_deref()
            .map(|s| {
                s.split(',')
                    .map(|p| {
                        p.trim()
                            .parse::<usize>()
                            .map_err(|_| user_error(format!("--r: `{p}` is not a number")))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
    let layers = parse_layers(a.layers.as_deref(), m.cfg.n_layers)?;
    let req = MoefyRequest {
        corpus,
        layers,
        experts: a.experts,
        method,
        r_values,
        seed: a.seed,
    };
    let r = moefy(m, &req, progress)?;
    std::fs::create_dir_all(&a.out)
        .map_err(|e| user_error(format!("{}: cannot create: {e}", a.out.display())))?;
    let put = |name: &str, text: String| {
        write_atomic(&a.out.join(name), |tmp| {
            std::fs::write(tmp, text)?;
            Ok(())
        })
    };
    put(
        "experts.json",
        to_pretty_json(&serde_json::json!({
            "experts": r.experts,
            "method": r.method,
            "layers": r.partition,
        }))?,
    )?;
    put("moefy.json", to_pretty_json(&r)?)?;
    Ok(r)
}

fn print_table(r: &MoefyResult) {
    println!(
        "{} experts per layer ({}), layers {:?}; fit {} tokens, held-out {} tokens; dense loss {:.4}",
        r.experts, r.method, r.layers, r.fit_tokens, r.heldout_tokens, r.dense_loss
    );
    println!(
        "{:>4} {:>9} {:>10} {:>10}",
        "r", "active", "oracle", "fitted"
    );
    for pair in r.curve.chunks(2) {
        println!(
            "{:>4} {:>8.1}% {:>10.4} {:>10.4}",
            pair[0].r,
            100.0 * pair[0].active_fraction,
            pair[0].loss,
            pair.get(1).map(|p| p.loss).unwrap_or(f64::NAN)
        );
    }
    let r2: Vec<String> = r
        .partition
        .iter()
        .map(|l| format!("{}: {:.2}", l.layer, l.router_r2))
        .collect();
    println!("fitted router R² per layer: {}", r2.join(", "));
}
