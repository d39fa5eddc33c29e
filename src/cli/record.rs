//! `ftri record`: run a model over a corpus and write a per-unit atlas (see `record::session`).

use super::ModelArgs;
use crate::output::print_json;
use crate::record::session::{Ended, Event, RecordSession, RecordSettings};
use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Corpus inputs: .txt (a document per line), a folder of .txt files (a document per file),
    /// .jsonl, .parquet
    #[arg(long, num_args = 1.., required = true)]
    pub corpus: Vec<PathBuf>,
    /// Output atlas folder
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub settings: RecordSettings,
    /// Print the summary as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: RecordArgs) -> Result<()> {
    let session = RecordSession::prepare(&a.corpus, &a.out, &a.settings)?;
    let m = a.model.load()?;
    let bar = ProgressBar::new(session.corpus_bytes().max(1));
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {percent:>3}% {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let ended = session.run(&m, &mut |e| match e {
        Event::Resumed {
            checkpoint,
            next_doc,
        } => eprintln!(
            "resuming from {} (document {next_doc})",
            checkpoint.display()
        ),
        Event::NoCheckpoint { expected } => eprintln!(
            "no checkpoint at {}; starting from the beginning",
            expected.display()
        ),
        Event::Progress {
            state,
            bytes,
            tokens_per_s,
        } => {
            bar.set_position(bytes);
            bar.set_message(format!(
                "{} tokens, {tokens_per_s:.0} tokens/s",
                state.counts.tokens
            ));
        }
    })?;
    bar.finish_and_clear();
    let s = match ended {
        Ended::Stopped { docs, checkpoint } => {
            eprintln!(
                "stopped after {docs} documents; checkpoint in {} (continue with --resume)",
                checkpoint.display()
            );
            return Ok(());
        }
        Ended::Finished(s) => s,
    };
    eprintln!(
        "{} tokens from {} documents ({} windows) over {} units of {} hook points in {:.1} s: {:.0} tokens/s, peak RSS {:.0} MiB",
        s.tokens, s.docs, s.windows, s.units, s.sites, s.seconds, s.tokens_per_s, s.peak_rss_mib
    );
    if s.experts > 0 {
        eprintln!("and the routing of {} experts", s.experts);
    }
    if s.skipped_empty + s.skipped_not_utf8 > 0 {
        eprintln!(
            "skipped {} empty and {} non-UTF-8 documents",
            s.skipped_empty, s.skipped_not_utf8
        );
    }
    eprintln!("atlas → {}", a.out.display());
    if a.json {
        print_json(&s)?;
    }
    Ok(())
}
