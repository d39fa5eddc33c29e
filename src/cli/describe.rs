//! `ftri describe`: the tokens a neuron promotes, suppresses and reads, from its weights alone.

use super::ModelArgs;
use crate::analyze::describe as d;
use crate::error::user_error;
use crate::output::table::{write_describe_table, TableFormat};
use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// One neuron, LAYER.INDEX (e.g. 3.17)
    #[arg(long, conflicts_with = "all")]
    pub neuron: Option<String>,
    /// Every neuron of every layer, written as a table to --out
    #[arg(long, requires = "out")]
    pub all: bool,
    /// Table for --all: .csv (list cells are JSON arrays) or .parquet
    #[arg(long, requires = "all")]
    pub out: Option<PathBuf>,
    /// Tokens per list
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Neurons per matrix product in --all (bounds memory: chunk × vocab floats)
    #[arg(long, default_value_t = 512)]
    pub chunk: usize,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: DescribeArgs) -> Result<()> {
    if a.top == 0 {
        return Err(user_error("--top must be at least 1"));
    }
    if a.chunk == 0 {
        return Err(user_error("--chunk must be at least 1"));
    }
    match (&a.neuron, &a.out) {
        (Some(n), _) => {
            let m = a.model.load()?;
            let n = crate::intervene::Neuron::parse(n, &m.cfg)?;
            let desc = d::describe_neuron(&m, n.layer, n.index, a.top)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&desc)?);
            } else {
                print!("{}", crate::render::description_table(&desc));
            }
            Ok(())
        }
        (None, Some(out)) if a.all => run_all(&a, out),
        _ => Err(user_error(
            "say which neurons: --neuron L.N, or --all --out FILE",
        )),
    }
}

fn run_all(a: &DescribeArgs, out: &std::path::Path) -> Result<()> {
    let format = TableFormat::from_path(out)?;
    let m = a.model.load()?;
    let total = m.cfg.n_layers * m.cfg.d_mlp;
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} neurons {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t = write_describe_table(&m, out, format, a.top, a.chunk, &mut |done, t| {
        bar.set_position(done as u64);
        bar.set_message(format!("{:.0} GFLOP/s", t.product_gflops));
    })?;
    bar.finish_and_clear();
    // The reference: this machine's plain matmul, measured the way `ftri bench` does.
    let peak = crate::sys::matmul_gflops()?;
    let j = json!({
        "model": m.id,
        "out": out.display().to_string(),
        "unembed": d::unembed_label(&m),
        "top": a.top,
        "chunk": a.chunk,
        "layers": t.layers,
        "neurons": t.neurons,
        "vocab": t.vocab,
        "d_model": t.d_model,
        "gflop": t.flops / 1e9,
        "product_seconds": t.product_seconds,
        "seconds": t.seconds,
        "product_gflops": t.product_gflops,
        "overall_gflops": t.overall_gflops,
        "bench_matmul_gflops": peak,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!(
            "wrote {} ({} neurons, {} layers, top {})",
            out.display(),
            t.neurons,
            t.layers,
            a.top
        );
        println!(
            "products   {:.1} GFLOP in {:.2} s = {:.1} GFLOP/s",
            t.flops / 1e9,
            t.product_seconds,
            t.product_gflops
        );
        println!(
            "overall    {:.2} s = {:.1} GFLOP/s",
            t.seconds, t.overall_gflops
        );
        println!(
            "matmul     {:.1} GFLOP/s (ftri bench); products at {:.0}% of it",
            peak,
            100.0 * t.product_gflops / peak.max(1e-9)
        );
    }
    Ok(())
}
