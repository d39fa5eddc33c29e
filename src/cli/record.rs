//! `ftri record`: run a model over a corpus and write a per-unit atlas.

use super::ModelArgs;
use crate::atlas::{self, Atlas, CorpusInfo, Manifest, ModelInfo, Shard, SiteInfo};
use crate::corpus::{sha256_file, Corpus};
use crate::error::user_error;
use crate::record::state::{HistSpec, TopSpec};
use crate::record::{self, Outcome, RecordState};
use crate::user_bail;
use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Corpus inputs: .txt (a document per line), a folder of .txt files (a document per file),
    /// .jsonl, .parquet
    #[arg(long, num_args = 1.., required = true)]
    pub corpus: Vec<PathBuf>,
    /// The text field of JSONL records / text column of Parquet files
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Output atlas folder
    #[arg(long)]
    pub out: PathBuf,
    /// Hook points to record (globs over TransformerLens names)
    #[arg(long, default_value = "blocks.*.mlp.hook_post")]
    pub sites: String,
    /// Examples kept per unit
    #[arg(long, default_value_t = 20)]
    pub top_k: usize,
    /// Window length in tokens (default: the model's context, at most 1024)
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Windows per forward pass
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Stop reading documents once this many tokens were read
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// Record only shard i of n (documents with doc % n == i); combine shards with `ftri merge`
    #[arg(long)]
    pub shard: Option<String>,
    /// Context tokens kept before each top example
    #[arg(long, default_value_t = 12)]
    pub context_before: usize,
    /// Context tokens kept after each top example
    #[arg(long, default_value_t = 4)]
    pub context_after: usize,
    /// Histogram bins (plus an underflow and an overflow bin)
    #[arg(long, default_value_t = 64)]
    pub hist_bins: usize,
    /// Histogram range LO,HI for every site, or `auto`: each site's from the corpus's first windows
    #[arg(long, default_value = "auto", allow_hyphen_values = true)]
    pub hist_range: String,
    /// Continue from the checkpoint OUT.partial of an interrupted run
    #[arg(long)]
    pub resume: bool,
    /// Replace an existing atlas at --out
    #[arg(long)]
    pub force: bool,
    /// Seconds between checkpoints
    #[arg(long, default_value_t = 300)]
    pub checkpoint_every: u64,
    /// Print the summary as JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// Testing aid: checkpoint and stop after this many documents, as if killed
    #[arg(long, hide = true)]
    pub stop_after_docs: Option<u64>,
}

pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || {
        user_error(format!(
            "bad --shard `{s}` (use i/n with 0 <= i < n, e.g. 0/4)"
        ))
    };
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

fn parse_range(s: &str) -> Result<(f64, f64)> {
    let bad = || {
        user_error(format!(
            "bad --hist-range `{s}` (use auto, or LO,HI with LO < HI, e.g. -4,12)"
        ))
    };
    let (a, b) = s.split_once(',').ok_or_else(bad)?;
    let (lo, hi): (f64, f64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if lo >= hi || !lo.is_finite() || !hi.is_finite() {
        return Err(bad());
    }
    Ok((lo, hi))
}

pub fn run(a: RecordArgs) -> Result<()> {
    let shard = a.shard.as_deref().map(parse_shard).transpose()?;
    let hist_auto = a.hist_range == "auto";
    let (lo, hi) = if hist_auto {
        record::state::DEFAULT_HIST_RANGE
    } else {
        parse_range(&a.hist_range)?
    };
    if a.top_k == 0 || a.batch == 0 || a.hist_bins == 0 {
        user_bail!("--top-k, --batch and --hist-bins must be at least 1");
    }
    if a.out.exists() {
        if !a.force {
            user_bail!(
                "{}: already exists (use --force to replace it)",
                a.out.display()
            );
        }
        if !a.out.join("manifest.json").is_file() {
            user_bail!(
                "{}: exists and is not an atlas; not replacing it",
                a.out.display()
            );
        }
    }
    let corpus = Corpus::open(&a.corpus, &a.text_field)?;
    let files = corpus.describe()?;
    let m = a.model.load()?;
    let sites = super::trace::select_sites(&m.sites(), &a.sites)?;
    let ctx = a.ctx.unwrap_or(m.cfg.n_ctx.min(1024));
    if ctx == 0 || ctx > m.cfg.n_ctx {
        user_bail!(
            "--ctx {ctx} is outside 1..={} (the model's context)",
            m.cfg.n_ctx
        );
    }
    let hist = HistSpec {
        lo,
        hi,
        bins: a.hist_bins,
    };
    let top = TopSpec {
        k: a.top_k,
        before: a.context_before,
        after: a.context_after,
    };
    let tokenizer_path = m.dir.join("tokenizer.json");
    let mut manifest = Manifest {
        format: atlas::FORMAT.into(),
        format_version: atlas::FORMAT_VERSION,
        ftri_version: env!("CARGO_PKG_VERSION").into(),
        complete: false,
        model: ModelInfo {
            id: m.id.clone(),
            arch: m.cfg.arch.name().to_string(),
            config_sha256: sha256_file(&m.dir.join("config.json"))?.1,
            tokenizer_sha256: sha256_file(&tokenizer_path)?.1,
            n_layers: m.cfg.n_layers,
            d_model: m.cfg.d_model,
            d_mlp: m.cfg.d_mlp,
        },
        corpus: CorpusInfo {
            files,
            text_field: a.text_field.clone(),
        },
        settings: atlas::Settings {
            ctx,
            top_k: a.top_k,
            context_before: a.context_before,
            context_after: a.context_after,
            hist,
            hist_auto,
        },
        sites: sites
            .iter()
            .map(|s| SiteInfo {
                name: s.to_string(),
                units: m.site_dim(*s),
                hist: None,
            })
            .collect(),
        shard: shard.map(|(i, n)| Shard {
            count: n,
            indices: vec![i],
        }),
        tokens: 0,
        docs: 0,
        windows: 0,
        skipped_empty: 0,
        skipped_not_utf8: 0,
        next_doc: 0,
    };
    let fresh = || {
        let named: Vec<(String, usize)> = manifest
            .sites
            .iter()
            .map(|s| (s.name.clone(), s.units))
            .collect();
        RecordState::new(&named, &hist, &top)
    };
    let mut state = match (a.resume, atlas::find_checkpoint(&a.out)) {
        (true, Some(dir)) => {
            let cp = Atlas::open(&dir)?;
            if let Some(why) = manifest.incompatibility(&cp.manifest) {
                user_bail!("cannot resume from {}: {why}", dir.display());
            }
            if cp.manifest.shard != manifest.shard {
                user_bail!(
                    "cannot resume from {}: it records another --shard",
                    dir.display()
                );
            }
            eprintln!(
                "resuming from {} (document {})",
                dir.display(),
                cp.manifest.next_doc
            );
            cp.load_state()?
        }
        (true, None) => {
            eprintln!(
                "no checkpoint at {}; starting from the beginning",
                atlas::checkpoint_dir(&a.out).display()
            );
            fresh()
        }
        (false, _) => {
            atlas::remove_checkpoints(&a.out);
            fresh()
        }
    };
    let settings = record::Settings {
        sites: sites.clone(),
        ctx,
        batch: a.batch,
        top,
        hist,
        hist_auto,
        shard,
        max_tokens: a.max_tokens,
        checkpoint_every: Duration::from_secs(a.checkpoint_every),
        stop_after_docs: a.stop_after_docs,
    };

    let bar = ProgressBar::new(corpus.total_bytes().max(1));
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {percent:>3}% {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let tokens_before = state.tokens;
    let mut docs = corpus.documents();
    let outcome = record::run(
        &m,
        &mut docs,
        &settings,
        &mut state,
        |s, bytes| {
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(bytes);
            bar.set_message(format!(
                "{} tokens, {:.0} tokens/s",
                s.tokens,
                (s.tokens - tokens_before) as f64 / secs
            ));
        },
        |s| {
            let mut cm = manifest.clone();
            cm.set_counts(s);
            atlas::write_checkpoint(&a.out, &cm, s, Some(&tokenizer_path))
        },
    )?;
    bar.finish_and_clear();
    if outcome == Outcome::Stopped {
        eprintln!(
            "stopped after {} documents; checkpoint in {} (continue with --resume)",
            state.docs,
            atlas::checkpoint_dir(&a.out).display()
        );
        return Ok(());
    }
    if state.tokens == 0 {
        atlas::remove_checkpoints(&a.out);
        user_bail!(
            "{}: no text to record ({} empty and {} non-UTF-8 documents skipped{})",
            a.corpus
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            state.skipped_empty,
            state.skipped_not_utf8,
            if shard.is_some() {
                " in this shard"
            } else {
                ""
            }
        );
    }
    manifest.complete = true;
    manifest.set_counts(&state);
    if a.force && a.out.exists() {
        std::fs::remove_dir_all(&a.out)
            .map_err(|e| user_error(format!("{}: cannot replace: {e}", a.out.display())))?;
    }
    atlas::write(&a.out, &manifest, &state, Some(&tokenizer_path))?;
    atlas::remove_checkpoints(&a.out);
    let secs = start.elapsed().as_secs_f64();
    let run_tokens = state.tokens - tokens_before;
    let rss = super::bench::peak_rss_bytes() as f64 / (1024.0 * 1024.0);
    let units: usize = manifest.sites.iter().map(|s| s.units).sum();
    let summary = json!({
        "atlas": a.out.display().to_string(),
        "tokens": state.tokens,
        "docs": state.docs,
        "windows": state.windows,
        "skipped_empty": state.skipped_empty,
        "skipped_not_utf8": state.skipped_not_utf8,
        "sites": manifest.sites.len(),
        "units": units,
        "seconds": secs,
        "tokens_per_s": run_tokens as f64 / secs.max(1e-9),
        "peak_rss_mib": rss,
    });
    eprintln!(
        "{} tokens from {} documents ({} windows) over {} units of {} hook points in {:.1} s: {:.0} tokens/s, peak RSS {:.0} MiB",
        state.tokens,
        state.docs,
        state.windows,
        units,
        manifest.sites.len(),
        secs,
        summary["tokens_per_s"].as_f64().unwrap_or(0.0),
        rss
    );
    if state.skipped_empty + state.skipped_not_utf8 > 0 {
        eprintln!(
            "skipped {} empty and {} non-UTF-8 documents",
            state.skipped_empty, state.skipped_not_utf8
        );
    }
    eprintln!("atlas → {}", a.out.display());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}
