//! `ftri merge`: combine atlases recorded as shards of one run into one atlas.

use crate::atlas;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct MergeArgs {
    /// Atlases to combine (shards i/n of the same model, corpus and settings)
    #[arg(required = true, num_args = 2..)]
    pub atlases: Vec<PathBuf>,
    /// Output atlas folder
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: MergeArgs) -> Result<()> {
    let (manifest, state, tokenizer) = atlas::merge(&a.atlases)?;
    atlas::write(&a.out, &manifest, &state, tokenizer.as_deref())?;
    let shards = match &manifest.shard {
        Some(s) => format!("shards {:?} of {}", s.indices, s.count),
        None => "the whole corpus".into(),
    };
    eprintln!(
        "merged {} atlases ({}; {} tokens, {} documents) → {}",
        a.atlases.len(),
        shards,
        manifest.counts.tokens,
        manifest.counts.docs,
        a.out.display()
    );
    Ok(())
}
