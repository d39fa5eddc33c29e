//! `ftri bench`: throughput and peak memory of capturing hook points, and the machine's matmul
//! speed measured the same way, so figures can be set side by side with a PyTorch run
//! (bench/reference_forward.py) on the same checkpoint.

use super::ModelArgs;
use crate::model::HookSet;
use crate::rng::Rng;
use anyhow::Result;
use clap::Args;
use serde_json::json;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sequences per batch
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Timed batches (after one warm-up batch)
    #[arg(long, default_value_t = 8)]
    pub batches: usize,
    /// Hook points to capture (globs, as in `trace`); default `blocks.*.mlp.hook_post`, and on a
    /// mixture-of-experts model every expert's neurons, `blocks.*.mlp.experts.*.hook_post`
    #[arg(long)]
    pub hooks: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let m = a.model.load()?;
    let hooks = a.hooks.clone().unwrap_or_else(|| {
        match m.cfg.moe {
            Some(_) => "blocks.*.mlp.experts.*.hook_post",
            None => "blocks.*.mlp.hook_post",
        }
        .to_string()
    });
    let sites = crate::model::hooks::select_sites(&m.sites(), &hooks)?;
    let mut rng = Rng::new(1);
    let vocab = m.cfg.vocab_size.min(m.tokenizer.vocab_size().max(1));
    let mut make_batch = || -> Result<_> {
        let seqs: Vec<Vec<u32>> = (0..a.batch)
            .map(|_| (0..a.seq).map(|_| rng.below(vocab) as u32).collect())
            .collect();
        m.batch(&seqs)
    };
    let run_one = |batch| -> Result<usize> {
        let mut hooks = HookSet::capturing(sites.iter().copied());
        m.forward(&batch, &mut hooks)?;
        // make sure every capture is materialised, as a consumer would read it
        let captured = hooks.take_all();
        Ok(captured.values().map(|t| t.elem_count()).sum())
    };
    run_one(make_batch()?)?;
    let start = Instant::now();
    let mut values = 0;
    for _ in 0..a.batches {
        values += run_one(make_batch()?)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let tokens = a.batches * a.batch * a.seq;
    let gflops = crate::sys::matmul_gflops()?;
    let j = json!({
        "model": m.id,
        "hooks": sites.len(),
        "batch": a.batch,
        "seq": a.seq,
        "batches": a.batches,
        "tokens": tokens,
        "seconds": secs,
        "tokens_per_s": tokens as f64 / secs,
        "captured_values": values,
        "peak_rss_mib": crate::sys::peak_rss_bytes() as f64 / (1024.0 * 1024.0),
        "matmul_gflops": gflops,
        "threads": rayon_threads(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!(
            "{} tokens in {:.2} s: {:.0} tokens/s, peak RSS {:.0} MiB, {} hook points; matmul {:.0} GFLOP/s ({} threads)",
            tokens,
            secs,
            tokens as f64 / secs,
            j["peak_rss_mib"].as_f64().unwrap_or(0.0),
            sites.len(),
            gflops,
            j["threads"]
        );
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}
