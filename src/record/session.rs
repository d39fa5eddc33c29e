//! A record session: everything `ftri record` does between parsing its flags and printing its
//! summary — checking the output folder, starting fresh or resuming from a checkpoint,
//! checkpointing, writing the finished atlas and cleaning up. `ftri record`, `ftri demo` and the
//! Python bindings share it.
//!
//! Two steps, so that bad settings and an occupied `--out` are reported before a model is loaded:
//! [`RecordSession::prepare`] checks the settings and opens the corpus, [`RecordSession::run`]
//! records with a model. What happens along the way reaches the caller as [`Event`]s.

use super::routing::{self, ExpertLayer};
use super::state::{HistSpec, TopSpec};
use super::{Outcome, RecordState, Recording, Settings};
use crate::atlas::{self, Atlas, CorpusInfo, Manifest, ModelInfo, Shard, SiteInfo};
use crate::corpus::Corpus;
use crate::error::user_error;
use crate::model::hooks::select_sites;
use crate::model::Model;
use crate::user_bail;
use anyhow::Result;
use clap::Args;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a recording keeps and how it runs: the flags of `ftri record` (also built directly by the
/// demo and the bindings; `Default` equals the flags' defaults).
#[derive(Args, Debug, Clone)]
pub struct RecordSettings {
    /// The text field of JSONL records / text column of Parquet files
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Hook points to record (globs over TransformerLens names); the default on a
    /// mixture-of-experts model also records the experts' neurons
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
    /// Let special tokens (BOS, [CLS], [SEP], ...) be top examples; by default they only count in
    /// the statistics
    #[arg(long)]
    pub include_special: bool,
    /// Testing aid: checkpoint and stop after this many documents, as if killed
    #[arg(long, hide = true)]
    pub stop_after_docs: Option<u64>,
}

impl Default for RecordSettings {
    fn default() -> Self {
        Self {
            text_field: "text".into(),
            sites: routing::DEFAULT_SITES.into(),
            top_k: 20,
            ctx: None,
            batch: 8,
            max_tokens: None,
            shard: None,
            context_before: 12,
            context_after: 4,
            hist_bins: 64,
            hist_range: "auto".into(),
            resume: false,
            force: false,
            checkpoint_every: 300,
            include_special: false,
            stop_after_docs: None,
        }
    }
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

/// What a session tells its caller while it runs.
pub enum Event<'a> {
    /// Continuing from a checkpoint, at this document.
    Resumed { checkpoint: &'a Path, next_doc: u64 },
    /// `--resume` without a checkpoint: starting from the beginning.
    NoCheckpoint { expected: &'a Path },
    /// A batch is done: counters so far, corpus bytes read, tokens/s of this run.
    Progress {
        state: &'a RecordState,
        bytes: u64,
        tokens_per_s: f64,
    },
}

/// `ftri record --json`: what a finished session recorded.
#[derive(Debug, Clone, Serialize)]
pub struct RecordSummary {
    pub atlas: String,
    pub tokens: u64,
    pub docs: u64,
    pub windows: u64,
    pub skipped_empty: u64,
    pub skipped_not_utf8: u64,
    pub sites: usize,
    pub units: usize,
    /// Experts whose routing was recorded (all mixture-of-experts layers; 0 for dense models).
    pub experts: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub peak_rss_mib: f64,
}

/// How a session ended.
pub enum Ended {
    Finished(RecordSummary),
    /// Stopped early (`stop_after_docs`) after a checkpoint.
    Stopped {
        docs: u64,
        checkpoint: PathBuf,
    },
}

/// A session whose settings and output folder were checked and whose corpus is open.
pub struct RecordSession {
    corpus_paths: Vec<PathBuf>,
    corpus: Corpus,
    out: PathBuf,
    s: RecordSettings,
    shard: Option<(usize, usize)>,
    hist: HistSpec,
    /// Each site's histogram range chosen from the corpus's first windows.
    hist_auto: bool,
    top: TopSpec,
}

impl RecordSession {
    pub fn prepare(corpus: &[PathBuf], out: &Path, s: &RecordSettings) -> Result<Self> {
        let shard = s.shard.as_deref().map(parse_shard).transpose()?;
        let hist_auto = s.hist_range == "auto";
        let (lo, hi) = if hist_auto {
            super::state::DEFAULT_HIST_RANGE
        } else {
            parse_range(&s.hist_range)?
        };
        if s.top_k == 0 || s.batch == 0 || s.hist_bins == 0 {
            user_bail!("--top-k, --batch and --hist-bins must be at least 1");
        }
        if out.exists() {
            if !s.force {
                user_bail!(
                    "{}: already exists (use --force to replace it)",
                    out.display()
                );
            }
            if !out.join("manifest.json").is_file() {
                user_bail!(
                    "{}: exists and is not an atlas; not replacing it",
                    out.display()
                );
            }
        }
        Ok(Self {
            corpus: Corpus::open(corpus, &s.text_field)?,
            corpus_paths: corpus.to_vec(),
            out: out.to_path_buf(),
            s: s.clone(),
            shard,
            hist_auto,
            hist: HistSpec {
                lo,
                hi,
                bins: s.hist_bins,
            },
            top: TopSpec {
                k: s.top_k,
                before: s.context_before,
                after: s.context_after,
            },
        })
    }

    /// What this session keeps, with windows of `ctx` tokens: the settings its atlas stores.
    fn recording(&self, ctx: usize) -> Recording {
        Recording {
            ctx,
            top_k: self.top.k,
            context_before: self.top.before,
            context_after: self.top.after,
            hist: self.hist,
            hist_auto: self.hist_auto,
            max_tokens: self.s.max_tokens,
            special_examples: self.s.include_special,
        }
    }

    fn manifest(
        &self,
        m: &Model,
        ctx: usize,
        sites: &[SiteInfo],
        experts: &[ExpertLayer],
    ) -> Result<Manifest> {
        Ok(Manifest {
            format: atlas::FORMAT.into(),
            format_version: atlas::FORMAT_VERSION,
            ftri_version: env!("CARGO_PKG_VERSION").into(),
            complete: false,
            model: ModelInfo {
                id: m.id.clone(),
                arch: m.cfg.arch.name().to_string(),
                config_sha256: m.config_sha256()?,
                tokenizer_sha256: m.tokenizer_sha256()?,
                weights_fingerprint: Some(m.fingerprint.clone()),
                dtype: crate::model::dtype_name(m.net.dtype).to_string(),
                n_layers: m.cfg.n_layers,
                d_model: m.cfg.d_model,
                d_mlp: m.cfg.d_mlp,
            },
            corpus: CorpusInfo {
                files: self.corpus.describe()?,
                text_field: self.s.text_field.clone(),
            },
            settings: self.recording(ctx),
            sites: sites.to_vec(),
            experts: experts.to_vec(),
            shard: self.shard.map(|(i, n)| Shard {
                count: n,
                indices: vec![i],
            }),
            counts: Default::default(),
        })
    }

    /// The state to continue from: a checkpoint when resuming (and one is there), else empty.
    fn start_state(
        &self,
        manifest: &Manifest,
        events: &mut dyn FnMut(Event),
    ) -> Result<RecordState> {
        let fresh = || {
            let named: Vec<(String, usize)> = manifest
                .sites
                .iter()
                .map(|s| (s.name.clone(), s.units))
                .collect();
            RecordState::new(&named, &manifest.experts, &self.hist, &self.top)
        };
        if !self.s.resume {
            atlas::remove_checkpoints(&self.out);
            return Ok(fresh());
        }
        let Some(dir) = atlas::find_checkpoint(&self.out) else {
            events(Event::NoCheckpoint {
                expected: &atlas::checkpoint_dir(&self.out),
            });
            return Ok(fresh());
        };
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
        events(Event::Resumed {
            checkpoint: &dir,
            next_doc: cp.manifest.counts.next_doc,
        });
        cp.load_state()
    }

    /// Record the corpus with `m` and write the atlas (or a checkpoint, when stopped early).
    pub fn run(&self, m: &Model, events: &mut dyn FnMut(Event)) -> Result<Ended> {
        let experts = routing::expert_layers(m);
        let globs = match self.s.sites.as_str() {
            routing::DEFAULT_SITES if !experts.is_empty() => routing::MOE_NEURON_SITES,
            g => g,
        };
        let sites = select_sites(&m.sites(), globs)?;
        let ctx = self.s.ctx.unwrap_or(m.cfg.n_ctx.min(1024));
        if ctx == 0 || ctx > m.cfg.n_ctx {
            user_bail!(
                "--ctx {ctx} is outside 1..={} (the model's context)",
                m.cfg.n_ctx
            );
        }
        let infos: Vec<SiteInfo> = sites
            .iter()
            .map(|s| {
                Ok(SiteInfo {
                    name: s.to_string(),
                    units: super::recorded_units(m, *s)?,
                    hist: None,
                })
            })
            .collect::<Result<_>>()?;
        let mut manifest = self.manifest(m, ctx, &infos, &experts)?;
        let mut state = self.start_state(&manifest, events)?;
        let settings = Settings {
            recorded: manifest.settings.clone(),
            sites,
            batch: self.s.batch,
            shard: self.shard,
            checkpoint_every: Duration::from_secs(self.s.checkpoint_every),
            stop_after_docs: self.s.stop_after_docs,
            not_examples: match self.s.include_special {
                true => Default::default(),
                false => m.tokenizer.special_ids().clone(),
            },
            experts,
        };
        let tokenizer_json = m.tokenizer_json()?;
        let start = Instant::now();
        let tokens_before = state.counts.tokens;
        let mut docs = self.corpus.documents();
        let out = &self.out;
        let outcome = super::run(
            m,
            &mut docs,
            &settings,
            &mut state,
            |s, bytes| {
                let secs = start.elapsed().as_secs_f64().max(1e-9);
                events(Event::Progress {
                    state: s,
                    bytes,
                    tokens_per_s: (s.counts.tokens - tokens_before) as f64 / secs,
                })
            },
            |s| {
                let mut cm = manifest.clone();
                cm.set_counts(s);
                atlas::write_checkpoint(out, &cm, s, Some(&tokenizer_json))
            },
        )?;
        if outcome == Outcome::Stopped {
            return Ok(Ended::Stopped {
                docs: state.counts.docs,
                checkpoint: atlas::checkpoint_dir(out),
            });
        }
        if state.counts.tokens == 0 {
            atlas::remove_checkpoints(out);
            user_bail!(
                "{}: no text to record ({} empty and {} non-UTF-8 documents skipped{})",
                self.corpus_paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                state.counts.skipped_empty,
                state.counts.skipped_not_utf8,
                if self.shard.is_some() {
                    " in this shard"
                } else {
                    ""
                }
            );
        }
        manifest.complete = true;
        manifest.set_counts(&state);
        if self.s.force && out.exists() {
            std::fs::remove_dir_all(out)
                .map_err(|e| user_error(format!("{}: cannot replace: {e}", out.display())))?;
        }
        atlas::write(out, &manifest, &state, Some(&tokenizer_json))?;
        atlas::remove_checkpoints(out);
        let secs = start.elapsed().as_secs_f64();
        Ok(Ended::Finished(RecordSummary {
            atlas: out.display().to_string(),
            tokens: state.counts.tokens,
            docs: state.counts.docs,
            windows: state.counts.windows,
            skipped_empty: state.counts.skipped_empty,
            skipped_not_utf8: state.counts.skipped_not_utf8,
            sites: manifest.sites.len(),
            units: manifest.sites.iter().map(|s| s.units).sum(),
            experts: manifest.experts.iter().map(|x| x.experts).sum(),
            seconds: secs,
            tokens_per_s: (state.counts.tokens - tokens_before) as f64 / secs.max(1e-9),
            peak_rss_mib: crate::sys::peak_rss_bytes() as f64 / (1024.0 * 1024.0),
        }))
    }

    /// The corpus size in bytes (for a progress bar).
    pub fn corpus_bytes(&self) -> u64 {
        self.corpus.total_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        s: RecordSettings,
    }

    #[test]
    fn default_settings_equal_the_flag_defaults() {
        let parsed = Flags::parse_from(["record"]).s;
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", RecordSettings::default())
        );
    }
}
